//! `backend = "redis"` with `on_backend_error = "allow"`: while Redis is away, each instance
//! enforces the same limits on local buckets of its own (SPEC §2 `[rate_limit]`), rather than
//! no limit at all.
//!
//! The local buckets shadow Redis while it is up: a request Redis admits is charged to them too
//! (a few uncontended mutexes), so that when Redis goes away mid-minute this instance's traffic
//! of that minute still counts — a 20/min limit refuses this instance's 21st call, not its
//! 41st. While Redis is away, each instance sees only its own traffic: with N instances a limit
//! can admit up to N times its rate until Redis is back. Every request asks Redis first, so the
//! first one after Redis returns is counted there again.

use std::sync::Arc;

use super::bucket::{Decision, Plan};
use super::local::LocalStore;
use super::redis_store::BackendError;
use super::RateLimitFilter;

impl RateLimitFilter {
    /// Admits `plan` on the store; when the store fails and a fallback is configured, on the
    /// local buckets instead (the failure is still counted and logged).
    pub(super) async fn admit(&self, plan: &Plan) -> Result<Decision, BackendError> {
        let decision = self.store.admit(plan).await;
        let Some(local) = &self.fallback else {
            return decision;
        };
        match decision {
            Ok(Decision::Admitted(views)) => {
                // Shadow charge; the store's answer is the one that counts.
                let _ = local.admit(plan);
                Ok(Decision::Admitted(views))
            }
            Ok(limited) => Ok(limited),
            Err(e) => {
                self.note_backend_error("check", &e);
                Ok(local.admit(plan))
            }
        }
    }

    /// Reconciles a reservation on the store, and on the local buckets that shadow it.
    pub(super) async fn adjust(&self, plan: &Plan, delta: i64) -> Result<(), BackendError> {
        if let Some(local) = &self.fallback {
            local.adjust_tokens(plan, delta);
        }
        self.store.adjust_tokens(plan, delta).await
    }
}

/// The process's fallback buckets (kept across reloads in [`crate::Shared`]).
pub(super) fn local_buckets(shared: &crate::Shared) -> Arc<LocalStore> {
    shared
        .get_or_try_init("ratelimit:fallback", || {
            Ok::<_, std::convert::Infallible>(LocalStore::new())
        })
        .unwrap_or_else(|never| match never {})
}
