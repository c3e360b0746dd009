//! Budgets shared by several instances: reservations made in a shared backend (the engine's
//! PostgreSQL store, or the `rate_limit` filter's Redis) instead of this process's
//! [`super::Ledger`], so that every instance sees the others' reservations at once.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::ledger::{Charge, Reserve, RowKey, RowSums};

/// A shared place to reserve and settle budgets. Implemented by the engine.
#[async_trait]
pub trait SpendBackend: Send + Sync + 'static {
    /// Reserves `cost` under `id` against every charge, or none (as [`super::Ledger::reserve`]).
    /// `org` is the caller's (every charge belongs to it).
    async fn reserve(
        &self,
        id: &str,
        org: &str,
        charges: &[Charge],
        cost: i64,
        now: OffsetDateTime,
    ) -> Result<Reserve, String>;

    /// Drops the reservation `id` (made against `charges`) and adds the request's usage row
    /// (its cost to the budgets, and the row itself when [`SpendBackend::keeps_rows`]), at once.
    async fn settle(
        &self,
        id: &str,
        org: &str,
        charges: &[Charge],
        row: Option<(RowKey, RowSums)>,
    ) -> Result<(), String>;

    /// Whether [`SpendBackend::settle`] stores the usage row itself; else the caller records
    /// it in this process's ledger, which writes it behind to the store.
    fn keeps_rows(&self) -> bool {
        true
    }
}

/// Where the engine puts its [`SpendBackend`] (in [`crate::Shared`] under
/// [`BackendSlot::SHARED_KEY`]); empty: budgets are this process's alone.
#[derive(Default)]
pub struct BackendSlot(OnceLock<Arc<dyn SpendBackend>>);

impl BackendSlot {
    pub const SHARED_KEY: &'static str = "spend:backend";

    /// Installs the backend (the first one stays).
    pub fn set(&self, backend: Arc<dyn SpendBackend>) {
        let _ = self.0.set(backend);
    }

    pub fn get(&self) -> Option<&Arc<dyn SpendBackend>> {
        self.0.get()
    }

    /// The slot of a [`crate::Shared`].
    pub fn in_shared(shared: &crate::Shared) -> Arc<BackendSlot> {
        shared
            .get_or_try_init(Self::SHARED_KEY, || {
                Ok::<_, std::convert::Infallible>(BackendSlot::default())
            })
            .unwrap_or_else(|never| match never {})
    }
}
