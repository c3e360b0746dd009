//! [`FieldScrubber`]: what the audit trail and the logs may keep of a field the client chose
//! (path, query, agent id, model, user agent, request id): the field with every DLP finding
//! redacted, whatever the configured actions and whether or not the `dlp` filter ran (a request
//! refused before it — 401, 403, 404, 429 — is recorded too).

use super::json::JsonScan;
use super::{Action, DlpSettings, Scanner};

/// Redacts findings in client-chosen fields: the detectors of `[dlp]`, with the `secrets` pack
/// always among them (a key pasted into a URL is a key, even where DLP is off).
pub struct FieldScrubber {
    scanner: Scanner,
    redact: Vec<Action>,
}

impl FieldScrubber {
    pub fn new(settings: &DlpSettings) -> FieldScrubber {
        let mut with_secrets = settings.clone();
        if !with_secrets.packs.iter().any(|p| p == "secrets") {
            with_secrets.packs.push("secrets".to_string());
        }
        // A config whose rules do not compile is refused at load; only `sluice check`-style
        // callers reach the fallback, which still knows every built-in detector.
        let scanner = Scanner::from_settings(&with_secrets)
            .or_else(|_| Scanner::from_settings(&DlpSettings::default()))
            .unwrap_or_else(|_| Scanner::new(Vec::new()));
        let redact = vec![Action::Redact; scanner.len()];
        FieldScrubber { scanner, redact }
    }

    /// `text` with its findings redacted, when it holds any.
    pub fn redact(&self, text: &str) -> Option<String> {
        let mut js = JsonScan::new(&self.scanner, &self.redact);
        js.text(text)
    }

    /// Whether `text` holds a finding.
    pub fn finds(&self, text: &str) -> bool {
        !self.scanner.find_all(text.as_bytes()).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_even_when_the_packs_leave_them_out() {
        let settings = DlpSettings {
            packs: vec!["pii".into()],
            ..DlpSettings::default()
        };
        let s = FieldScrubber::new(&settings);
        let out = s.redact("/v1/AKIAIOSFODNN7EXAMPLE/x").unwrap_or_default();
        assert_eq!(out, "/v1/[REDACTED:aws_access_key]/x");
        assert!(s.finds("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"));
        assert!(s.redact("/v1/chat/completions").is_none());
        assert!(!s.finds("req_0123"));
    }
}
