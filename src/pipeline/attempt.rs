//! The attempts of a request (SPEC §11): the first target once the chain admitted it, and after
//! each failed attempt whether to try another one — before any byte of an answer reached the
//! client only, for the failures `routing.retry_on` lists, on a target not yet tried, at most
//! `routing.retries` times.
//!
//! The chain ran once: a retried request is not authenticated, rate limited or scanned again
//! (its tokens were reserved once), and the body it produced is sent again unchanged but for
//! `model`, which each target may name differently.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use sluice_filters::JsonBody;

use super::response::Refused;
use super::{Call, FailKind};
use crate::upstream::config::RetryOn;
use crate::upstream::{AttemptResult, ModelTargets, Pick};

/// Whose targets a request may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetsOf {
    /// The model at this index of `config.models`.
    Model(usize),
    /// A request that names no model: the first upstream.
    FirstUpstream,
}

/// Where the request goes and how its attempts went: changed here only.
#[derive(Default)]
pub(crate) struct Attempt {
    /// Whose targets the request may go to, once routed.
    targets_of: Option<TargetsOf>,
    /// The current attempt's upstream (index in `snap.upstreams`).
    upstream: Option<usize>,
    attempts: crate::upstream::Attempts,
    /// The current attempt's response status (0: none yet).
    status: u16,
    /// The exact body to send upstream, when Sluice holds it.
    body: Option<Bytes>,
}

impl Attempt {
    /// The current attempt's upstream (index in `snap.upstreams`).
    pub(crate) fn upstream(&self) -> Option<usize> {
        self.upstream
    }

    /// The current attempt's upstream answered with this status.
    pub(crate) fn answered(&mut self, status: StatusCode) {
        self.status = status.as_u16();
    }
}

impl Call {
    /// The upstream this request goes to.
    pub fn upstream_rt(&self) -> Option<&crate::upstream::UpstreamRt> {
        self.attempt
            .upstream
            .and_then(|i| self.snap.upstreams.get(i))
    }

    /// The body to send upstream, when Sluice holds (and may have rewritten) it.
    pub fn held_body(&self) -> Option<&Bytes> {
        self.attempt.body.as_ref()
    }

    /// The current attempt's response status (0: none yet).
    pub fn upstream_status(&self) -> u16 {
        self.attempt.status
    }

    /// Routes the request to a model's targets (`None`: it names no model).
    pub(crate) fn route_to(&mut self, model: Option<usize>) {
        self.attempt.targets_of = Some(match model {
            Some(i) => TargetsOf::Model(i),
            None => TargetsOf::FirstUpstream,
        });
    }

    fn route<'a>(&self, snap: &'a crate::state::Snapshot) -> Option<&'a ModelTargets> {
        match self.attempt.targets_of? {
            TargetsOf::Model(i) => snap.routes.get(i),
            TargetsOf::FirstUpstream => Some(&snap.default_route),
        }
    }

    /// Picks the first target (the chain admitted the request) and holds the body it is sent,
    /// as the chain left it. `false`: no upstream was chosen.
    pub(crate) fn first_attempt(&mut self, body: &mut JsonBody) -> bool {
        if let Some(p) = self.pick_target(true) {
            self.begin_attempt(p);
        }
        self.rewrite_for_upstream(body);
        let out = body.to_bytes();
        self.attempt.body = if out.is_empty() && !body.is_changed() {
            None
        } else {
            Some(out)
        };
        self.attempt.upstream.is_some()
    }

    /// The first target's own model name, and usage in streams (as the route's API asks for
    /// it). A retry on another target rewrites `model` again (`rebody`).
    fn rewrite_for_upstream(&mut self, body: &mut JsonBody) {
        let Some(model) = self.cx.model.as_deref().filter(|_| body.json().is_some()) else {
            return;
        };
        let rename = self.target_model().map(str::to_string);
        self.attempt.attempts.body_model = Some(rename.as_deref().unwrap_or(model).to_string());
        let api = self.cx.api;
        let facts = super::request::stream_facts(&self.cx);
        if !api.rewrites_upstream(&facts, rename.as_deref()) {
            return;
        }
        if let Some(Value::Object(obj)) = body.json_mut() {
            api.prepare_upstream(obj, &facts, rename.as_deref());
        }
    }

    fn set_upstream(&mut self, up: usize) {
        self.attempt.upstream = Some(up);
        self.cx.upstream = self.snap.upstreams.get(up).map(|u| u.name.clone());
    }

    /// The current target's own name for the model, when it has one.
    pub(crate) fn target_model(&self) -> Option<&str> {
        let route = self.route(&self.snap)?;
        let t = route.targets.get(self.attempt.attempts.current_target()?)?;
        t.upstream_model.as_deref()
    }

    fn pick_target(&self, fallback: bool) -> Option<Pick> {
        let route = self.route(&self.snap)?;
        crate::upstream::pick(
            &route.targets,
            self.attempt.attempts.tried(),
            Instant::now(),
            fallback,
        )
    }

    /// A retry's target (see [`crate::upstream::pick_retry`]).
    fn pick_retry(&self) -> Option<Pick> {
        let route = self.route(&self.snap)?;
        crate::upstream::pick_retry(
            &route.targets,
            self.attempt.attempts.tried(),
            Instant::now(),
        )
    }

    fn begin_attempt(&mut self, p: Pick) {
        let snap = self.snap.clone();
        let Some(t) = self.route(&snap).and_then(|r| r.targets.get(p.index)) else {
            return;
        };
        self.attempt.attempts.begin(p, t.upstream, &t.health);
        self.set_upstream(t.upstream);
        self.cx.attempts = self.attempt.attempts.count();
    }

    /// An attempt failed (the adapter's error hooks). `started`: the client already has the
    /// response head; `stale`: it failed on a pooled connection the upstream had closed.
    /// Returns whether to try again (Pingora then asks for the peer of the next attempt).
    pub fn attempt_failed(&mut self, kind: FailKind, started: bool, stale: bool) -> bool {
        if std::mem::take(&mut self.attempt.attempts.retry_pending) {
            return true;
        }
        if !self.attempt.attempts.in_progress() {
            return false;
        }
        use crate::metrics::upstream_error_kind as k;
        if stale
            && !started
            && kind == FailKind::UpstreamReset
            && !self.attempt.attempts.stale_retry_used
        {
            // A pooled connection the upstream had closed: tried again once, whatever the
            // retry budget — on another target when there is one (the upstream that closed it
            // may be gone; never back to it), else on the only one over a new connection (as
            // Pingora does by default; then not counted as an attempt).
            self.attempt.attempts.stale_retry_used = true;
            if let Some(next) = self.pick_retry() {
                self.record_attempt(AttemptResult::Reset, Some(k::RESET));
                self.begin_attempt(next);
                self.next_attempt_timing();
                self.rebody();
                return true;
            }
            self.next_attempt_timing();
            return true;
        }
        let (result, error_kind) = match kind {
            FailKind::UpstreamTimeout if started => (AttemptResult::MidStream, Some(k::TIMEOUT)),
            FailKind::UpstreamTimeout => (AttemptResult::Timeout, Some(k::TIMEOUT)),
            FailKind::UpstreamConnect => (AttemptResult::Connect, Some(k::CONNECT)),
            FailKind::UpstreamTls => (AttemptResult::Tls, Some(k::TLS)),
            FailKind::UpstreamReset if started => (AttemptResult::MidStream, Some(k::MID_STREAM)),
            FailKind::UpstreamReset => (AttemptResult::Reset, Some(k::RESET)),
            FailKind::ClientClosed | FailKind::ClientTimeout | FailKind::ClientBad
                if self.attempt.status != 0 =>
            {
                (AttemptResult::from_status(self.attempt.status), None)
            }
            _ => (AttemptResult::Aborted, None),
        };
        self.record_attempt(result, error_kind);
        let retry_on = RetryOn::parse(&self.snap.config.routing.retry_on);
        if started || !result.retryable(retry_on) {
            return false;
        }
        self.next_attempt()
    }

    /// The upstream's response head, before anything else looks at it: an answer whose status
    /// `retry_on` lists is abandoned for another target when there is one left to try (`Some`:
    /// the adapter aborts the attempt, and Pingora retries). Otherwise it is the answer.
    pub(crate) fn retry_on_status(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<Refused> {
        let code = status.as_u16();
        if matches!(code, 429 | 503) {
            if let Some(d) = crate::upstream::retry_after(headers) {
                self.attempt.attempts.set_retry_after(code, d);
            }
        }
        let result = AttemptResult::from_status(code);
        let retry_on = RetryOn::parse(&self.snap.config.routing.retry_on);
        if result == AttemptResult::Ok || !result.retryable(retry_on) {
            return None;
        }
        if self.attempt.attempts.count() > self.snap.config.routing.retries {
            return None;
        }
        // An ejected target is tried before the request fails (SPEC §11).
        let next = self.pick_retry()?;
        self.record_attempt(result, None);
        self.begin_attempt(next);
        self.next_attempt_timing();
        self.rebody();
        self.attempt.attempts.retry_pending = true;
        Some(Refused {
            status: 502,
            why: "upstream status retried on another target",
        })
    }

    /// The log phase: ends the attempt still in progress (one that was answered).
    pub(crate) fn end_attempt(&mut self, error: Option<FailKind>) {
        if !self.attempt.attempts.in_progress() {
            return;
        }
        let result = match (self.attempt.status, error) {
            (0, _) => AttemptResult::Aborted,
            (s, None | Some(FailKind::ClientClosed | FailKind::ClientTimeout)) => {
                AttemptResult::from_status(s)
            }
            (
                _,
                Some(
                    FailKind::UpstreamTimeout
                    | FailKind::UpstreamReset
                    | FailKind::UpstreamConnect
                    | FailKind::UpstreamTls,
                ),
            ) => AttemptResult::MidStream,
            (_, Some(_)) => AttemptResult::Aborted,
        };
        self.record_attempt(result, None);
    }

    fn record_attempt(&mut self, result: AttemptResult, error_kind: Option<&'static str>) {
        let snap = self.snap.clone();
        let Some(ended) = self.attempt.attempts.end(result, &snap.config.routing) else {
            return;
        };
        let Some(u) = snap.upstreams.get(ended.upstream) else {
            return;
        };
        let m = &self.state.metrics;
        m.upstream_attempts
            .with_label_values(&[u.name.as_str(), result.label()])
            .inc();
        if let Some(kind) = error_kind {
            m.upstream_errors
                .with_label_values(&[u.name.as_str(), kind])
                .inc();
        }
    }

    /// After a failure: another target, if the budget and the route allow one.
    fn next_attempt(&mut self) -> bool {
        if self.attempt.attempts.count() > self.snap.config.routing.retries {
            return false;
        }
        // An ejected target is tried before the request fails (SPEC §11).
        let Some(next) = self.pick_retry() else {
            return false;
        };
        self.begin_attempt(next);
        self.next_attempt_timing();
        self.rebody();
        true
    }

    /// The failed attempt's time was the upstream's (for `sluice_overhead_seconds`); the next
    /// one's upstream time starts afresh.
    fn next_attempt_timing(&mut self) {
        self.t.next_attempt();
        self.attempt.status = 0;
    }

    /// Puts the current target's model name into the held body when it carries another one.
    fn rebody(&mut self) {
        let Some(carried) = self.attempt.attempts.body_model.as_deref() else {
            return;
        };
        let Some(want) = self.target_model().or(self.cx.model.as_deref()) else {
            return;
        };
        if want == carried {
            return;
        }
        let want = want.to_string();
        let Some(body) = &self.attempt.body else {
            return;
        };
        let Ok(Value::Object(mut obj)) = serde_json::from_slice(body) else {
            return;
        };
        let facts = super::request::stream_facts(&self.cx);
        self.cx.api.prepare_upstream(&mut obj, &facts, Some(&want));
        if let Ok(out) = serde_json::to_vec(&obj) {
            self.attempt.body = Some(out.into());
            self.attempt.attempts.body_model = Some(want);
        }
    }
}

#[cfg(test)]
#[path = "attempt_tests.rs"]
mod tests;
