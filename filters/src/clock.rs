//! The wall clock in the one unit tokens, keys, runs and wire payloads share: whole seconds since
//! the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Whole seconds since the Unix epoch now; 0 on a clock set before 1970 (never a panic on a
/// request path).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
