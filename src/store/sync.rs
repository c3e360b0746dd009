//! Keeps the in-memory key table ([`RuntimeKeys`]) in step with the store, writes last uses
//! in batches and purges expired runs — all on the control runtime, never on the request path.
//!
//! - A change made here is patched into the table at once, after its commit
//!   ([`StoreRuntime::patch`]); the patch stays applied until a reload has read the store at
//!   (or after) the change's own version, so that a reload which read the store just before the
//!   commit cannot undo it, even briefly.
//! - Other instances' changes: the change counter is read every `store.poll_interval_ms`
//!   (PostgreSQL's `NOTIFY` wakes the loop at once) and the whole table reloaded when it moved,
//!   on a task beside the poll (bounded by `store.timeout_ms`), so that the poll, which is also
//!   the outage detector, never waits behind a reload that waits for a pool connection.
//! - The store down: requests go on being served from the table in memory; reads are retried
//!   every poll; `sluice_store_up` is 0 and the transition is logged once each way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Opts};
use sluice_filters::auth::{RuntimeKeys, StoreKeyTable};
use sluice_filters::Shared;
use tokio::sync::{watch, Notify};

use super::{KeyRow, Store, StoreError, CHANNEL};

/// How often uses are written, and how often other instances' uses are read.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const READ_USES_EVERY: Duration = Duration::from_secs(10);
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// A change this instance made, kept applied until a reload includes it.
#[derive(Debug, Clone)]
pub enum Patch {
    Put(Box<KeyRow>),
    Remove(String),
}

#[derive(Default)]
struct SyncState {
    /// The change counter of the last full load.
    version: u64,
    loaded: bool,
    pending: Vec<(u64, Patch)>,
}

struct StoreMetrics {
    up: IntGauge,
    keys: IntGauge,
    errors: IntCounterVec,
}

impl StoreMetrics {
    fn register(shared: &Shared) -> prometheus::Result<StoreMetrics> {
        let up = shared.metric("sluice_store_up", || {
            IntGauge::new(
                "sluice_store_up",
                "1 while the store (keys made through the API) answers, else 0.",
            )
        })?;
        let keys = shared.metric("sluice_store_keys", || {
            IntGauge::new(
                "sluice_store_keys",
                "Live API keys of the store in this instance's memory.",
            )
        })?;
        let errors = shared.metric("sluice_store_errors_total", || {
            IntCounterVec::new(
                Opts::new(
                    "sluice_store_errors_total",
                    "Failed store operations, by op (sync, last_used, change, runs).",
                ),
                &["op"],
            )
        })?;
        for op in ["sync", "last_used", "change", "runs", "spend"] {
            errors.with_label_values(&[op]);
        }
        Ok(StoreMetrics {
            up: (*up).clone(),
            keys: (*keys).clone(),
            errors: (*errors).clone(),
        })
    }
}

/// The store and the memory that serves it, shared by the engine's admin and key API.
pub struct StoreRuntime {
    store: Store,
    keys: Arc<RuntimeKeys>,
    /// The users directory (SPEC §13), reloaded with the keys.
    users: Arc<sluice_filters::auth::RuntimeUsers>,
    state: Mutex<SyncState>,
    wake: Notify,
    up: AtomicBool,
    poll: Duration,
    /// How long a reload may take (`store.timeout_ms`): it runs beside the poll, never in it.
    reload_limit: Duration,
    /// A reload is running (at most one at a time).
    reloading: AtomicBool,
    metrics: StoreMetrics,
    /// Spend, written behind and read back (SPEC §15).
    spend: Arc<crate::spend::SpendSync>,
}

impl StoreRuntime {
    /// Loads every key once (start-up waits for it) and returns the runtime; [`spawn`] keeps
    /// it current.
    ///
    /// [`spawn`]: StoreRuntime::spawn
    pub async fn start(
        store: Store,
        shared: &Shared,
        poll: Duration,
        reload_limit: Duration,
    ) -> Result<Arc<StoreRuntime>, StoreError> {
        let metrics = StoreMetrics::register(shared)
            .map_err(|e| StoreError::Incompatible(format!("store metrics: {e}")))?;
        let spend = crate::spend::SpendSync::start(store.clone(), shared).await?;
        if let Some(pg) = crate::spend::shared::PgBudgets::new(&store) {
            // Several instances share budgets: reservations go to the database (SPEC §15).
            sluice_filters::spend::BackendSlot::in_shared(shared).set(std::sync::Arc::new(pg));
        }
        let rt = Arc::new(StoreRuntime {
            spend,
            store,
            keys: RuntimeKeys::in_shared(shared),
            users: sluice_filters::auth::RuntimeUsers::in_shared(shared),
            state: Mutex::new(SyncState::default()),
            wake: Notify::new(),
            up: AtomicBool::new(true),
            poll,
            reload_limit,
            reloading: AtomicBool::new(false),
            metrics,
        });
        rt.reload().await?;
        if let Ok(uses) = rt.store.load_last_used().await {
            rt.keys.merge_recorded(uses);
        }
        rt.metrics.up.set(1);
        Ok(rt)
    }

    /// Opens `[store]` (creating and migrating it) and loads its keys, bounded by
    /// `store.timeout_ms`.
    pub async fn open(
        cfg: &super::StoreConfig,
        shared: &Shared,
    ) -> Result<Arc<StoreRuntime>, StoreError> {
        let timeout = Duration::from_millis(cfg.timeout_ms) * 3;
        let opened = async {
            let store = Store::open(cfg).await?;
            let poll = Duration::from_millis(cfg.poll_interval_ms);
            let reload_limit = Duration::from_millis(cfg.timeout_ms);
            StoreRuntime::start(store, shared, poll, reload_limit).await
        };
        tokio::time::timeout(timeout, opened)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                )))
            })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn keys(&self) -> &Arc<RuntimeKeys> {
        &self.keys
    }

    /// Spend (SPEC §15).
    pub fn spend(&self) -> &Arc<crate::spend::SpendSync> {
        &self.spend
    }

    /// The users directory as this instance knows it.
    pub fn users(&self) -> &Arc<sluice_filters::auth::RuntimeUsers> {
        &self.users
    }

    /// Puts a directory change this instance committed in force at once (keys re-resolved
    /// too), and wakes the loop so that the next reload reads it back.
    pub fn put_user(&self, user: sluice_filters::auth::StoreUser) {
        let _state = self.lock();
        self.users.publish(self.users.table().with(user));
        let current = self.keys.table();
        self.keys.publish(current.with_all(current.version()));
        drop(_state);
        self.wake.notify_one();
    }

    /// Counts a failed change (the caller answers 503). A change that found the store
    /// unreachable makes the outage known, so that the next ones are refused at once.
    pub fn change_failed(&self, e: &StoreError) {
        self.metrics.errors.with_label_values(&["change"]).inc();
        if matches!(e, StoreError::Unavailable(_)) {
            self.set_up(false, Some(e));
        }
    }

    /// The outage the sync loop already knows of (SPEC §12: a change then answers 503 at once,
    /// without waiting out `store.timeout_ms`); `None` while the store is believed up. The loop
    /// reads the store every `poll_interval_ms`, so a change works again within one poll of the
    /// store coming back.
    pub fn known_outage(&self) -> Option<StoreError> {
        (!self.up.load(Ordering::SeqCst)).then(|| {
            StoreError::Unavailable(
                "the database was unreachable at the last sync (retried every poll)".into(),
            )
        })
    }

    /// Counts a failed run read or write.
    pub fn runs_failed(&self) {
        self.metrics.errors.with_label_values(&["runs"]).inc();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every key and puts the table in force (with this instance's newer patches).
    async fn reload(&self) -> Result<(), StoreError> {
        let (version, rows) = self.store.load_keys().await?;
        // Users first: the key table published next resolves provider users' keys with them.
        let users = self.store.load_users().await?;
        self.users
            .publish(sluice_filters::auth::StoreUserTable::new(users));
        self.install(version, rows);
        Ok(())
    }

    fn install(&self, version: u64, rows: Vec<KeyRow>) {
        let mut state = self.lock();
        if state.loaded && version < state.version {
            return;
        }
        state.pending.retain(|(v, _)| *v > version);
        let keys = rows.iter().filter_map(|r| self.checked(r)).collect();
        let mut table = StoreKeyTable::new(version, keys);
        for (_, p) in &state.pending {
            table = apply(&table, p, version);
        }
        state.version = version;
        state.loaded = true;
        self.metrics.keys.set(table.len() as i64);
        self.keys.publish(table);
    }

    fn checked(&self, row: &KeyRow) -> Option<sluice_filters::auth::StoreKey> {
        let k = row.to_store_key();
        if k.is_none() {
            tracing::error!(key_id = %row.id, "store: a key row's sha256 is not a SHA-256; the key is ignored");
        }
        k
    }

    /// Applies a change this instance committed at `version`, at once.
    pub fn patch(&self, version: u64, patch: Patch) {
        let mut state = self.lock();
        if version > state.version {
            let current = self.keys.table();
            let table = apply(&current, &patch, current.version());
            state.pending.push((version, patch));
            self.metrics.keys.set(table.len() as i64);
            self.keys.publish(table);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Starts the loop that keeps the table current, the housekeeping loop (uses, spend,
    /// purges) and, on PostgreSQL, the listener. They end when `stop` changes; housekeeping
    /// writes the last uses first.
    pub fn spawn(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        tokio::spawn(self.clone().run(stop.clone()));
        tokio::spawn(self.clone().housekeeping(stop.clone()));
        let errors = self.metrics.errors.with_label_values(&["spend"]);
        self.spend.spawn(stop.clone(), move || errors.inc());
        if let Some(pool) = self.store.pg_pool().cloned() {
            tokio::spawn(self.clone().listen(pool, stop));
        }
    }

    /// The poll, alone: it is the outage detector, so it never waits behind a write that
    /// waits out `store.timeout_ms` for a pool connection.
    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
            self.poll_once().await;
        }
    }

    /// Writes uses and spend every second, reads other instances' uses, purges old runs.
    async fn housekeeping(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut read_uses, mut purged) = (Instant::now(), Instant::now());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {
                    self.flush_uses().await;
                    return;
                }
            }
            self.flush_uses().await;
            if read_uses.elapsed() >= READ_USES_EVERY {
                read_uses = Instant::now();
                if let Ok(uses) = self.store.load_last_used().await {
                    self.keys.merge_recorded(uses);
                }
            }
            if purged.elapsed() >= PURGE_EVERY {
                purged = Instant::now();
                if self.store.purge_runs().await.is_err() {
                    self.runs_failed();
                }
            }
        }
    }

    /// Reads the change counter; reloads when it moved.
    async fn poll_once(self: &Arc<Self>) {
        // The poll is the outage detector: a read of the change counter that the store does not
        // answer within a few polls means it is down, even while the pool would go on trying to
        // connect for the whole `store.timeout_ms` (other tasks may have taken the idle
        // connections a dead server fails at once).
        let probe = (self.poll * 10).max(Duration::from_secs(2));
        let version = match tokio::time::timeout(probe, self.store.version()).await {
            Ok(v) => v,
            Err(_) => Err(StoreError::Unavailable(format!(
                "the change counter was not read within {} ms",
                probe.as_millis()
            ))),
        };
        match version {
            // The reload decides whether the store counts as up.
            Ok(v) if v > self.lock().version => self.spawn_reload(),
            Ok(_) => self.set_up(true, None),
            Err(e) => self.sync_failed(&e),
        }
    }

    /// Reloads on a task of its own, bounded by `store.timeout_ms`: a reload that began as the
    /// server went away waits that long for a pool connection, and the poll must go on
    /// detecting the outage meanwhile. One at a time; the next poll starts another if needed.
    fn spawn_reload(self: &Arc<Self>) {
        if self.reloading.swap(true, Ordering::SeqCst) {
            return;
        }
        let rt = self.clone();
        tokio::spawn(async move {
            let limit = rt.reload_limit;
            let result = match tokio::time::timeout(limit, rt.reload()).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "the keys were not read within store.timeout_ms ({} ms)",
                    limit.as_millis()
                ))),
            };
            rt.reloading.store(false, Ordering::SeqCst);
            match result {
                Ok(()) => rt.set_up(true, None),
                Err(e) => rt.sync_failed(&e),
            }
        });
    }

    fn sync_failed(&self, e: &StoreError) {
        self.metrics.errors.with_label_values(&["sync"]).inc();
        self.set_up(false, Some(e));
    }

    fn set_up(&self, up: bool, why: Option<&StoreError>) {
        if self.up.swap(up, Ordering::SeqCst) == up {
            return;
        }
        self.metrics.up.set(i64::from(up));
        match why {
            Some(e) => tracing::warn!(store = %self.store.label(), error = %e,
                "store unreachable: keys are served from memory, key changes fail with 503 until it is back"),
            None => tracing::info!(store = %self.store.label(), "store reachable again"),
        }
    }

    /// Writes the uses recorded since the last flush (kept for the next one if that fails).
    pub async fn flush_uses(&self) {
        if self.spend.flush().await.is_err() {
            self.metrics.errors.with_label_values(&["spend"]).inc();
        }
        let batch = self.keys.take_unrecorded();
        if batch.is_empty() {
            return;
        }
        if self.store.record_last_used(&batch).await.is_err() {
            self.metrics.errors.with_label_values(&["last_used"]).inc();
            self.keys.untake(&batch);
        }
    }

    /// Wakes the loop whenever another instance announces a change.
    async fn listen(self: Arc<Self>, pool: sqlx::PgPool, mut stop: watch::Receiver<bool>) {
        loop {
            let connected = async {
                let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let listener = tokio::select! {
                l = connected => l,
                _ = stop.changed() => return,
            };
            if let Ok(mut listener) = listener {
                loop {
                    tokio::select! {
                        n = listener.recv() => match n {
                            Ok(_) => self.wake.notify_one(),
                            Err(_) => break,
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
            // The poll covers the gap; try again shortly.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// `table` with `patch` applied, at `version`.
fn apply(table: &StoreKeyTable, patch: &Patch, version: u64) -> StoreKeyTable {
    match patch {
        Patch::Put(row) => match row.to_store_key() {
            Some(k) => table.with(version, k),
            None => table.without(version, &row.id),
        },
        Patch::Remove(id) => table.without(version, id),
    }
}

/// The live keys of one user, by id (for listing).
/// The live keys of `user` (every user's when `None`), oldest first.
pub fn keys_of(
    table: &StoreKeyTable,
    user: Option<&str>,
) -> Vec<Arc<sluice_filters::auth::StoreKey>> {
    let mut keys: Vec<_> = table
        .iter()
        .filter(|k| user.is_none_or(|u| k.user == u))
        .cloned()
        .collect();
    keys.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    keys
}
