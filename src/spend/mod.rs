//! The engine's half of spend (SPEC §15): the ledger written behind to the store and read back
//! from it ([`SpendSync`]), and the usage APIs ([`usage`]). Costs and budgets themselves are
//! policy, in `sluice_filters::spend`.

pub mod shared;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use sluice_filters::spend::{history_start, Ledger};
use sluice_filters::Shared;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::store::{Store, StoreError};

/// How often the ledger's new rows are written and the store's spend read back: a crash loses
/// at most this much spend (plus one write), and instances sharing a store see each other's
/// spend this late.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

/// Keeps the in-memory [`Ledger`] and the store's `spend_daily` table in step.
pub struct SpendSync {
    store: Store,
    ledger: Arc<Ledger>,
    /// Held across a write and the read after it, so that no read misses rows being written
    /// (the usage API writes too).
    busy: tokio::sync::Mutex<()>,
}

/// The process's ledger (the one the `rate_limit` filter charges).
pub fn ledger(shared: &Shared) -> Arc<Ledger> {
    shared
        .get_or_try_init(Ledger::SHARED_KEY, || {
            Ok::<_, std::convert::Infallible>(Ledger::default())
        })
        .unwrap_or_else(|never| match never {})
}

impl SpendSync {
    /// Loads the store's spend into the ledger (start-up waits for it).
    pub async fn start(store: Store, shared: &Shared) -> Result<Arc<SpendSync>, StoreError> {
        let sync = Arc::new(SpendSync {
            store,
            ledger: ledger(shared),
            busy: tokio::sync::Mutex::new(()),
        });
        sync.load().await?;
        Ok(sync)
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Writes the rows recorded since the last write (kept for the next one if it fails).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _busy = self.busy.lock().await;
        self.write().await
    }

    async fn write(&self) -> Result<(), StoreError> {
        let rows = self.ledger.take_pending();
        if rows.is_empty() {
            return Ok(());
        }
        let result = self.store.add_spend(&rows).await;
        if result.is_err() {
            self.ledger.untake(rows);
        }
        result
    }

    /// Reads every instance's written spend back into the ledger.
    async fn load(&self) -> Result<(), StoreError> {
        let today = OffsetDateTime::now_utc().date();
        let stored = self.store.load_spend(history_start(today)).await?;
        self.ledger.install(stored);
        Ok(())
    }

    /// Writes and reads every [`SYNC_EVERY`] until `stop` changes, then writes a last time.
    pub fn spawn(
        self: &Arc<Self>,
        mut stop: watch::Receiver<bool>,
        failed: impl Fn() + Send + 'static,
    ) {
        let sync = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => {
                        if sync.flush().await.is_err() {
                            failed();
                        }
                        return;
                    }
                }
                // Written before read: the read then holds this instance's spend too.
                let busy = sync.busy.lock().await;
                let ok = sync.write().await.is_ok() && sync.load().await.is_ok();
                drop(busy);
                if !ok {
                    failed();
                }
            }
        });
    }
}
