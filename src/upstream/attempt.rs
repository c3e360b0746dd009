//! One request's attempts: which targets it tried, how each ended, and the trial and in-flight
//! bookkeeping of the current one.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;

use super::config::{RetryOn, RoutingConfig};
use super::health::{InFlight, TargetHealth, Verdict};
use super::select::Pick;

/// How one attempt ended: the `result` label of `sluice_upstream_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// Answered with a status Sluice does not count as a failure (2xx–4xx but 429).
    Ok,
    Status5xx,
    Status429,
    /// The connection could not be made (refused, unreachable).
    Connect,
    Tls,
    /// Connect or response-head timeout.
    Timeout,
    /// Reset or closed before the response head.
    Reset,
    /// Failed after the client had received the response head.
    MidStream,
    /// Ended for a reason that says nothing about the upstream: the client left, Sluice
    /// refused the answer (unscannable, over a bound), an internal error.
    Aborted,
}

impl AttemptResult {
    pub const ALL: [AttemptResult; 9] = [
        AttemptResult::Ok,
        AttemptResult::Status5xx,
        AttemptResult::Status429,
        AttemptResult::Connect,
        AttemptResult::Tls,
        AttemptResult::Timeout,
        AttemptResult::Reset,
        AttemptResult::MidStream,
        AttemptResult::Aborted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AttemptResult::Ok => "ok",
            AttemptResult::Status5xx => "5xx",
            AttemptResult::Status429 => "429",
            AttemptResult::Connect => "connect",
            AttemptResult::Tls => "tls",
            AttemptResult::Timeout => "timeout",
            AttemptResult::Reset => "reset",
            AttemptResult::MidStream => "mid_stream",
            AttemptResult::Aborted => "aborted",
        }
    }

    pub fn from_status(status: u16) -> AttemptResult {
        match status {
            429 => AttemptResult::Status429,
            500..=599 => AttemptResult::Status5xx,
            _ => AttemptResult::Ok,
        }
    }

    /// What it says about the upstream's health (failures count towards ejection).
    pub fn verdict(self) -> Verdict {
        match self {
            AttemptResult::Ok => Verdict::Success,
            AttemptResult::Aborted => Verdict::Neutral,
            r => Verdict::Failure(r.label()),
        }
    }

    /// Whether `retry_on` lets an attempt that ended so be tried again elsewhere (only ever
    /// before the client received anything: the caller checks that).
    pub fn retryable(self, on: RetryOn) -> bool {
        match self {
            AttemptResult::Connect | AttemptResult::Tls | AttemptResult::Reset => on.connect,
            AttemptResult::Timeout => on.timeout,
            AttemptResult::Status5xx => on.status_5xx,
            AttemptResult::Status429 => on.status_429,
            AttemptResult::Ok | AttemptResult::MidStream | AttemptResult::Aborted => false,
        }
    }
}

/// The attempt in progress.
struct Current {
    target: usize,
    upstream: usize,
    trial: bool,
    health: Arc<TargetHealth>,
    _in_flight: InFlight,
    retry_after: Option<(u16, Duration)>,
}

impl Drop for Current {
    fn drop(&mut self) {
        // Dropped unrecorded (the request ended first): give the trial to another request.
        if self.trial {
            self.health.release_trial();
        }
    }
}

/// What an ended attempt reports (see [`Attempts::end`]).
pub struct Ended {
    pub upstream: usize,
}

/// One request's attempts.
#[derive(Default)]
pub struct Attempts {
    /// Attempts started (what the audit record's `attempts` says).
    count: u32,
    /// Indices in the model's targets, in the order tried.
    tried: Vec<usize>,
    current: Option<Current>,
    /// A pooled connection turned out closed and the request went again on a new one.
    pub stale_retry_used: bool,
    /// The attempt was abandoned on its status and the next one is chosen: the adapter's error
    /// hook must tell Pingora to retry.
    pub retry_pending: bool,
    /// The `model` the held body carries, when it is a JSON body naming one (rewritten per
    /// target).
    pub body_model: Option<String>,
}

impl Attempts {
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn tried(&self) -> &[usize] {
        &self.tried
    }

    /// Whether an attempt is in progress (started, not yet ended).
    pub fn in_progress(&self) -> bool {
        self.current.is_some()
    }

    /// The current attempt's target index in the model's targets.
    pub fn current_target(&self) -> Option<usize> {
        self.current.as_ref().map(|c| c.target)
    }

    /// Starts an attempt on `pick`, which is the model's target on upstream `upstream`.
    pub fn begin(&mut self, pick: Pick, upstream: usize, health: &Arc<TargetHealth>) {
        self.current = Some(Current {
            target: pick.index,
            upstream,
            trial: pick.trial,
            health: health.clone(),
            _in_flight: health.enter(),
            retry_after: None,
        });
        self.count += 1;
        self.tried.push(pick.index);
    }

    /// The upstream answered 429 or 503 with this `Retry-After`.
    pub fn set_retry_after(&mut self, status: u16, d: Duration) {
        if let Some(c) = &mut self.current {
            c.retry_after = Some((status, d));
        }
    }

    /// Ends the current attempt with `result`, recording it in the upstream's health.
    pub fn end(&mut self, result: AttemptResult, routing: &RoutingConfig) -> Option<Ended> {
        let mut c = self.current.take()?;
        let trial = std::mem::replace(&mut c.trial, false);
        c.health.record(
            result.verdict(),
            trial,
            c.retry_after,
            routing,
            Instant::now(),
        );
        Some(Ended {
            upstream: c.upstream,
        })
    }
}

/// An upstream's `Retry-After` (delta-seconds or an HTTP-date), when it is in the future.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    at.duration_since(SystemTime::now()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", http::HeaderValue::from_static("12"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(12)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(
            "retry-after",
            http::HeaderValue::from_str(&later).unwrap_or_else(|e| panic!("{e}")),
        );
        let d = retry_after(&h).map(|d| d.as_secs()).unwrap_or(0);
        assert!((100..=120).contains(&d), "{d}");
        h.insert("retry-after", http::HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn only_failures_before_an_answer_and_listed_statuses_are_retryable() {
        let on = RetryOn::parse(&["connect".into(), "5xx".into()]);
        assert!(AttemptResult::Reset.retryable(on));
        assert!(AttemptResult::Status5xx.retryable(on));
        assert!(!AttemptResult::Timeout.retryable(on));
        assert!(!AttemptResult::Status429.retryable(on));
        assert!(!AttemptResult::MidStream.retryable(RetryOn::parse(&[
            "connect".into(),
            "timeout".into(),
            "5xx".into(),
            "429".into()
        ])));
    }
}
