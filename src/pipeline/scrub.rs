//! The fields a client chose, kept out of the audit trail, the logs and the traces when they
//! hold a secret (SPEC §6): its request id, user agent, path, query, agent id and the model it
//! named. Done by the engine, not the `dlp` filter, so that it holds on every outcome —
//! refusals before the filter ran (401, 403, 400, 404, 429) and chains without it included.
//!
//! - At the head: an `x-request-id` holding a finding is replaced by a fresh id (the client
//!   gets that one back); the user agent is kept redacted.
//! - Before the first record is written ([`Call::scrub_record`]): the path, agent id and model
//!   are redacted. The request has been forwarded by then (with the path the `dlp` filter
//!   judged), so nothing upstream changes.

use super::Call;

impl Call {
    /// The head's client-chosen headers (see the module docs).
    pub(crate) fn scrub_head(&mut self) {
        let sc = self.snap.scrubber.clone();
        if sc.finds(&self.cx.request_id) {
            // A fresh one: the client's is dropped, not redacted, so ids stay unique.
            self.cx.request_id = crate::request_id::new();
        }
        if let Some(ua) = self.cx.user_agent.as_deref().and_then(|u| sc.redact(u)) {
            self.cx.user_agent = Some(ua);
        }
    }

    /// Redacts the path, agent id and named model before anything records them; once.
    pub(crate) fn scrub_record(&mut self) {
        if self.scrubbed {
            return;
        }
        self.scrubbed = true;
        let sc = self.snap.scrubber.clone();
        let cx = &mut self.cx;
        if let Some(p) = sc.redact(&cx.path) {
            cx.path = p;
        }
        for field in [&mut cx.agent_id, &mut cx.unknown_model, &mut cx.model] {
            if let Some(v) = field.as_deref().and_then(|v| sc.redact(v)) {
                *field = Some(v);
            }
        }
    }

    /// What Pingora's own log lines say of the request: its method, path and query with their
    /// findings redacted (Pingora's default prints the URI and `Host` as received).
    pub fn log_summary(&self, method: &str, path_and_query: &str) -> String {
        let line = format!("{method} {path_and_query}");
        let line = self.snap.scrubber.redact(&line).unwrap_or(line);
        format!("{line}, request id {}", self.cx.request_id)
    }
}
