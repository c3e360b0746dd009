//! The messages of a 429: which bucket refused, by how much, and when to come back.

use std::time::Duration;

use super::{BucketView, Kind, Level, Plan};
use crate::{Cx, JsonBody};

/// The wait a never-fitting request is told: any retry will be refused just the same, but the
/// contract requires `Retry-After` on every 429, and a full minute is the bucket's own period.
pub(super) const NEVER_FITS_RETRY_AFTER_SECS: u64 = 60;

/// The message of a 429 for a request whose token reservation exceeds a token bucket's
/// capacity: it would be refused forever, so it says so instead of naming a wait.
pub(super) fn never_fits(
    plan: &Plan,
    body: &JsonBody,
    cx: &Cx,
    default_max_tokens: u64,
) -> Option<(Level, String)> {
    let (item, spec) = plan.items.iter().find_map(|i| {
        let spec = i.entity.limits.tokens?;
        (i.tokens > spec.capacity).then_some((i, spec))
    })?;
    let prompt = cx.api.prompt_tokens(body);
    let msg = format!(
        "This request can never fit the rate limit: it reserves {} tokens (about {} for the \
         prompt and {} for the completion: max_tokens, or {} when the request sets none, times \
         n), but the {} `{}` allows at most {} tokens at once ({} tokens per minute). Lower \
         max_tokens or shorten the prompt.",
        item.tokens,
        prompt,
        item.tokens.saturating_sub(prompt),
        default_max_tokens,
        item.entity.level.label(),
        item.entity.name,
        spec.capacity,
        spec.per_minute,
    );
    Some((item.entity.level, msg))
}

/// `Retry-After`: whole seconds, rounded up, at least 1.
pub(super) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

pub(super) fn limited_message(
    level: Level,
    kind: Kind,
    buckets: &[BucketView],
    tokens: u64,
    secs: u64,
) -> String {
    // A key and the keys it was made from share the key level: name the emptiest bucket.
    let same = buckets
        .iter()
        .filter(|b| b.level == level && b.kind == kind);
    let Some(b) = same.min_by_key(|b| b.remaining) else {
        return format!(
            "Rate limit exceeded at the {} level. Retry after {secs} s.",
            level.label()
        );
    };
    let burst = if b.spec.capacity != b.spec.per_minute {
        format!(", bursts of up to {}", b.spec.capacity)
    } else {
        String::new()
    };
    match kind {
        Kind::Requests => format!(
            "Rate limit exceeded: the {} `{}` allows {} requests per minute{burst}. Retry after \
             {secs} s.",
            level.label(),
            b.name,
            b.spec.per_minute,
        ),
        Kind::Tokens => format!(
            "Rate limit exceeded: the {} `{}` allows {} tokens per minute{burst}, and this \
             request reserves {tokens} tokens (estimated prompt plus max_tokens) while {} are \
             available. Retry after {secs} s, or lower max_tokens.",
            level.label(),
            b.name,
            b.spec.per_minute,
            b.remaining.max(0),
        ),
    }
}
