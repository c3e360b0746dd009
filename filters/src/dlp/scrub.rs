//! [`FieldScrubber`]: what the audit trail and the logs may keep of a field the client chose
//! (path, query, agent id, model, user agent, request id): the field with every DLP finding
//! redacted, whatever the configured actions and whether or not the `dlp` filter ran (a request
//! refused before it — 401, 403, 404, 429 — is recorded too).

use std::sync::Arc;

use super::json::JsonScan;
use super::{Action, Scanner};

/// Redacts findings in client-chosen fields: the detectors of `[dlp]`, with the `secrets` pack
/// always among them (a key pasted into a URL is a key, even where DLP is off). Made by
/// [`super::Dlp`], from the detectors it compiled.
pub struct FieldScrubber {
    scanner: Arc<Scanner>,
    redact: Vec<Action>,
}

impl FieldScrubber {
    pub(super) fn over(scanner: Arc<Scanner>) -> FieldScrubber {
        let redact = vec![Action::Redact; scanner.len()];
        FieldScrubber { scanner, redact }
    }

    /// The scanner it redacts with (the `dlp` filter's, when `[dlp]` lists `secrets`).
    pub fn scanner(&self) -> &Arc<Scanner> {
        &self.scanner
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
    use crate::config::Section;
    use crate::dlp::DlpSettings;

    #[test]
    fn secrets_are_redacted_even_when_the_packs_leave_them_out() {
        let settings = DlpSettings {
            packs: vec!["pii".into()],
            ..DlpSettings::default()
        };
        let dlp = settings.build().unwrap_or_else(|e| panic!("{e}"));
        let s = dlp.scrubber();
        assert!(!std::sync::Arc::ptr_eq(s.scanner(), dlp.scanner()));
        let out = s.redact("/v1/AKIAIOSFODNN7EXAMPLE/x").unwrap_or_default();
        assert_eq!(out, "/v1/[REDACTED:aws_access_key]/x");
        assert!(s.finds("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"));
        assert!(s.redact("/v1/chat/completions").is_none());
        assert!(!s.finds("req_0123"));
    }

    #[test]
    fn the_scrubber_shares_the_filters_scanner_when_secrets_are_scanned() {
        let dlp = DlpSettings::default()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(std::sync::Arc::ptr_eq(
            dlp.scrubber().scanner(),
            dlp.scanner()
        ));
    }

    #[test]
    fn allow_rules_keep_naming_their_detectors_in_the_scrubber() {
        let settings: DlpSettings = toml::from_str(
            "packs = [\"pii\"]\n[[allow]]\nvalue = \"jane@example.com\"\ndetectors = [\"email\"]",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let dlp = settings.build().unwrap_or_else(|e| panic!("{e}"));
        let s = dlp.scrubber();
        assert!(!s.finds("jane@example.com"));
        assert!(s.finds("john@example.com"));
        assert!(s.finds("AKIAIOSFODNN7EXAMPLE"));
    }
}
