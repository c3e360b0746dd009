//! What the rate limiter reports: OpenAI's `x-ratelimit-*` response headers and its Prometheus
//! metrics.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

use super::bucket::{BucketView, Kind, Level};
use crate::{Cx, Shared};

const H_LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const H_REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const H_RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const H_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const H_REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const H_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// Sets OpenAI's `x-ratelimit-*` headers for the tightest request bucket and, when one applies,
/// the tightest token bucket.
///
/// Tightest: the fewest whole units remaining; on a tie the smaller capacity, then the narrower
/// level (key before user before org). `limit` is the bucket's capacity (`burst`, which defaults
/// to the per-minute rate), so `remaining` never exceeds it; `reset` is the time until the bucket
/// is full again, in OpenAI's format (`1s`, `6m0s`, `20ms`).
pub(super) fn set_headers(cx: &mut Cx, buckets: &[BucketView]) {
    for (kind, [limit, remaining, reset]) in [
        (
            Kind::Requests,
            [H_LIMIT_REQUESTS, H_REMAINING_REQUESTS, H_RESET_REQUESTS],
        ),
        (
            Kind::Tokens,
            [H_LIMIT_TOKENS, H_REMAINING_TOKENS, H_RESET_TOKENS],
        ),
    ] {
        let tightest = buckets
            .iter()
            .filter(|b| b.kind == kind)
            .min_by_key(|b| (b.remaining, b.spec.capacity, std::cmp::Reverse(b.level)));
        let Some(b) = tightest else { continue };
        cx.set_response_header(limit, HeaderValue::from(b.spec.capacity));
        cx.set_response_header(remaining, HeaderValue::from(b.remaining.max(0)));
        if let Ok(v) = HeaderValue::from_str(&openai_duration(b.reset)) {
            cx.set_response_header(reset, v);
        }
    }
}

/// A duration as OpenAI's rate-limit headers spell it (Go's `time.Duration` format, to the
/// nearest millisecond): `0s`, `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3.5s`.
pub(super) fn openai_duration(d: Duration) -> String {
    let ms = (d.as_nanos() + 500_000) / 1_000_000;
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// The filter's Prometheus metrics, registered once per [`Shared`] (reloads reuse them).
pub(super) struct Metrics {
    limited: [IntCounter; 3],
    pub(super) backend_errors_check: IntCounter,
    pub(super) backend_errors_reconcile: IntCounter,
    check_local: Histogram,
    check_redis: Histogram,
    pub(super) charged: IntCounter,
    pub(super) returned: IntCounter,
}

impl Metrics {
    pub(super) fn register(shared: &Shared) -> prometheus::Result<Arc<Metrics>> {
        let limited = shared.metric("sluice_rate_limited_total", || {
            IntCounterVec::new(
                Opts::new(
                    "sluice_rate_limited_total",
                    "Requests refused with 429 by the rate_limit filter, by the level whose \
                     bucket needed the longest to fit",
                ),
                &["level"],
            )
        })?;
        let errors = shared.metric("sluice_rate_limit_backend_errors_total", || {
            IntCounterVec::new(
                Opts::new(
                    "sluice_rate_limit_backend_errors_total",
                    "Rate-limit store calls that failed or timed out (the request was then \
                     answered per on_backend_error), by operation",
                ),
                &["op"],
            )
        })?;
        let check = shared.metric("sluice_rate_limit_check_duration_seconds", || {
            HistogramVec::new(
                HistogramOpts::new(
                    "sluice_rate_limit_check_duration_seconds",
                    "Time one admission check took, by backend",
                )
                .buckets(vec![
                    0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
                    0.025, 0.05, 0.1, 0.25,
                ]),
                &["backend"],
            )
        })?;
        let tokens = shared.metric("sluice_rate_limit_reconciled_tokens_total", || {
            IntCounterVec::new(
                Opts::new(
                    "sluice_rate_limit_reconciled_tokens_total",
                    "Tokens moved by reconciling reservations with the upstream's usage: \
                     `charged` beyond the reservation, `returned` unused or released",
                ),
                &["direction"],
            )
        })?;
        Ok(Arc::new(Metrics {
            limited: [Level::Org, Level::User, Level::Key]
                .map(|l| limited.with_label_values(&[l.label()])),
            backend_errors_check: errors.with_label_values(&["check"]),
            backend_errors_reconcile: errors.with_label_values(&["reconcile"]),
            check_local: check.with_label_values(&["local"]),
            check_redis: check.with_label_values(&["redis"]),
            charged: tokens.with_label_values(&["charged"]),
            returned: tokens.with_label_values(&["returned"]),
        }))
    }

    pub(super) fn limited(&self, level: Level) -> &IntCounter {
        match level {
            Level::Org => &self.limited[0],
            Level::User => &self.limited[1],
            Level::Key => &self.limited[2],
        }
    }

    pub(super) fn check_seconds(&self, backend: &str, d: Duration) {
        let h = if backend == "redis" {
            &self.check_redis
        } else {
            &self.check_local
        };
        h.observe(d.as_secs_f64());
    }
}
