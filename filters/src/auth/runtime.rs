//! Keys made at runtime (through the key API, kept in the gateway's store), as the request path
//! sees them.
//!
//! The engine's store sync publishes a whole [`StoreKeyTable`] whenever the store changes (this
//! instance's own change at once, other instances' within a poll). The auth and rate-limit
//! filters read it with one atomic load per request and derive their own views from it
//! ([`Derived`]), rebuilt once per published table: the request path never waits on a database.
//!
//! Like the config, the table holds only the SHA-256 of each key, never a key; a digest is
//! never printed (`Debug` leaves it out).
//!
//! It also collects when each key was last used ([`RuntimeKeys::touch`], at most once per key
//! and second), which the engine writes to the store in batches, off the request path.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::key::KeyDigest;
use crate::policy::RateLimitSpec;
use crate::Shared;

/// Where [`RuntimeKeys`] lives in [`Shared`].
const SHARED_KEY: &str = "auth:runtime_keys";

/// A key of the store, with what authenticating it needs.
pub struct StoreKey {
    pub id: Arc<str>,
    pub user: String,
    pub name: String,
    /// Narrows the user's role, as `[[keys]].models` does.
    pub models: Option<Vec<String>>,
    pub rate_limit: Option<RateLimitSpec>,
    pub disabled: bool,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; from then on the key is refused.
    pub expires: Option<u64>,
    /// The key (of the store or the config) that made this one: its limits, expiry and
    /// revocation bind this key too.
    pub parent: Option<Arc<str>>,
    /// SPEC §15.
    pub budget: Option<crate::spend::BudgetSpec>,
    digest: KeyDigest,
}

/// The fields of a [`StoreKey`] besides its digest.
pub struct StoreKeyFields {
    pub id: String,
    pub user: String,
    pub name: String,
    pub models: Option<Vec<String>>,
    pub rate_limit: Option<RateLimitSpec>,
    pub disabled: bool,
    pub created: u64,
    pub expires: Option<u64>,
    pub parent: Option<String>,
    pub budget: Option<crate::spend::BudgetSpec>,
}

impl StoreKey {
    /// `None` when `sha256_hex` is not 64 hex digits.
    pub fn new(fields: StoreKeyFields, sha256_hex: &str) -> Option<StoreKey> {
        let digest = KeyDigest::from_hex(sha256_hex).filter(|_| sha256_hex.len() == 64)?;
        Some(StoreKey {
            id: Arc::from(fields.id),
            user: fields.user,
            name: fields.name,
            models: fields.models,
            rate_limit: fields.rate_limit,
            disabled: fields.disabled,
            created: fields.created,
            expires: fields.expires,
            parent: fields.parent.map(Arc::from),
            budget: fields.budget,
            digest,
        })
    }

    /// Whether the key has expired at `now` (Unix seconds).
    pub fn is_expired_at(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    pub(crate) fn digest(&self) -> &KeyDigest {
        &self.digest
    }
}

/// Never shows the digest.
impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKey")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("disabled", &self.disabled)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Every live (not revoked) key of the store at one store version.
#[derive(Debug, Default)]
pub struct StoreKeyTable {
    version: u64,
    /// Set when published, so that derived views know they are stale.
    serial: u64,
    by_id: HashMap<Arc<str>, Arc<StoreKey>>,
}

impl StoreKeyTable {
    /// The table of the store at `version` (its change counter).
    pub fn new(version: u64, keys: Vec<StoreKey>) -> StoreKeyTable {
        StoreKeyTable {
            version,
            serial: 0,
            by_id: keys
                .into_iter()
                .map(|k| (k.id.clone(), Arc::new(k)))
                .collect(),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<StoreKey>> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<StoreKey>> {
        self.by_id.values()
    }

    /// This table at `version`, with `key` added or replaced.
    pub fn with(&self, version: u64, key: StoreKey) -> StoreKeyTable {
        let mut by_id = self.by_id.clone();
        by_id.insert(key.id.clone(), Arc::new(key));
        StoreKeyTable {
            version,
            serial: 0,
            by_id,
        }
    }

    /// This table at `version`, without the key `id`.
    pub fn without(&self, version: u64, id: &str) -> StoreKeyTable {
        let mut by_id = self.by_id.clone();
        by_id.remove(id);
        StoreKeyTable {
            version,
            serial: 0,
            by_id,
        }
    }

    /// A copy of this table at `version` (republishing it makes every derived view rebuild,
    /// e.g. after the users directory changed).
    pub fn with_all(&self, version: u64) -> StoreKeyTable {
        StoreKeyTable {
            version,
            serial: 0,
            by_id: self.by_id.clone(),
        }
    }

    pub(crate) fn serial(&self) -> u64 {
        self.serial
    }
}

/// When a key was last used, and whether the store has heard of it yet.
#[derive(Clone, Copy)]
struct Use {
    at: u64,
    dirty: bool,
}

/// The store's keys as this process knows them, shared by the engine (which publishes) and the
/// filters (which read). One per process, in [`Shared`].
#[derive(Default)]
pub struct RuntimeKeys {
    table: ArcSwap<StoreKeyTable>,
    serial: AtomicU64,
    used: Mutex<HashMap<Arc<str>, Use>>,
}

impl RuntimeKeys {
    /// The process's instance, created empty the first time.
    pub fn in_shared(shared: &Shared) -> Arc<RuntimeKeys> {
        shared
            .get_or_try_init(SHARED_KEY, || {
                Ok::<_, std::convert::Infallible>(RuntimeKeys::default())
            })
            .unwrap_or_else(|never| match never {})
    }

    /// The table in force.
    pub fn table(&self) -> Arc<StoreKeyTable> {
        self.table.load_full()
    }

    /// Puts `table` in force. The publisher (the engine's store sync) decides the order: a
    /// table read before one of its own changes must not undo it.
    pub fn publish(&self, mut table: StoreKeyTable) {
        table.serial = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
        self.table.store(Arc::new(table));
    }

    /// Records that the key `id` was used at `now` (Unix seconds).
    pub fn touch(&self, id: &Arc<str>, now: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let entry = used.entry(id.clone()).or_insert(Use {
            at: 0,
            dirty: false,
        });
        if now > entry.at {
            *entry = Use {
                at: now,
                dirty: true,
            };
        }
    }

    /// When the key `id` was last used, as far as this process knows.
    pub fn last_used(&self, id: &str) -> Option<u64> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.get(id).map(|u| u.at)
    }

    /// The uses the store has not recorded yet; they count as recorded from now on (give them
    /// back with [`RuntimeKeys::untake`] if writing them failed).
    pub fn take_unrecorded(&self) -> Vec<(Arc<str>, u64)> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (id, u) in used.iter_mut().filter(|(_, u)| u.dirty) {
            u.dirty = false;
            out.push((id.clone(), u.at));
        }
        out
    }

    /// Marks uses as not recorded again.
    pub fn untake(&self, batch: &[(Arc<str>, u64)]) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        for (id, at) in batch {
            if let Some(u) = used.get_mut(id) {
                if u.at <= *at {
                    u.dirty = true;
                }
            }
        }
    }

    /// Merges last uses read from the store (other instances' included).
    pub fn merge_recorded(&self, recorded: impl IntoIterator<Item = (String, u64)>) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        for (id, at) in recorded {
            match used.get_mut(id.as_str()) {
                Some(u) if u.at >= at => {}
                Some(u) => *u = Use { at, dirty: false },
                None => {
                    used.insert(Arc::from(id), Use { at, dirty: false });
                }
            }
        }
    }
}

/// A view a filter derives from the table in force (resolved identities, rate-limit entities),
/// rebuilt once per published table, on the first request that needs it.
pub(crate) struct Derived<T> {
    cell: ArcSwapOption<(u64, T)>,
    building: Mutex<()>,
}

impl<T> Default for Derived<T> {
    fn default() -> Self {
        Derived {
            cell: ArcSwapOption::empty(),
            building: Mutex::new(()),
        }
    }
}

impl<T> Derived<T> {
    pub(crate) fn get(
        &self,
        table: &StoreKeyTable,
        build: impl FnOnce(&StoreKeyTable) -> T,
    ) -> Arc<(u64, T)> {
        if let Some(d) = self.cell.load_full().filter(|d| d.0 == table.serial()) {
            return d;
        }
        let _one_build = self.building.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = self.cell.load_full().filter(|d| d.0 == table.serial()) {
            return d;
        }
        let d = Arc::new((table.serial(), build(table)));
        self.cell.store(Some(d.clone()));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, n: u8) -> StoreKey {
        let fields = StoreKeyFields {
            id: id.into(),
            user: "alice".into(),
            name: "laptop".into(),
            models: None,
            rate_limit: None,
            disabled: false,
            created: 1,
            expires: Some(100),
            parent: None,
            budget: None,
        };
        StoreKey::new(fields, &format!("{n:02x}").repeat(32)).expect("valid digest")
    }

    #[test]
    fn tables_are_copied_on_write() {
        let rk = RuntimeKeys::default();
        rk.publish(StoreKeyTable::new(3, vec![key("a", 1)]));
        let before = rk.table();
        rk.publish(before.without(4, "a"));
        assert_eq!(before.len(), 1);
        assert!(rk.table().is_empty());
        assert_eq!(rk.table().version(), 4);
        rk.publish(rk.table().with(5, key("b", 2)));
        assert!(rk.table().get("b").is_some());
    }

    #[test]
    fn digests_stay_out_of_debug_and_expiry_is_inclusive() {
        let k = key("a", 0xab);
        assert!(!format!("{k:?}").contains("abab"));
        assert!(!k.is_expired_at(99));
        assert!(k.is_expired_at(100));
        assert!(StoreKey::new(
            StoreKeyFields {
                id: "x".into(),
                user: "u".into(),
                name: String::new(),
                models: None,
                rate_limit: None,
                disabled: false,
                created: 0,
                expires: None,
                parent: None,
                budget: None,
            },
            "abc"
        )
        .is_none());
    }

    #[test]
    fn uses_are_taken_once_and_given_back_on_failure() {
        let rk = RuntimeKeys::default();
        let id: Arc<str> = Arc::from("a");
        rk.touch(&id, 10);
        rk.touch(&id, 9);
        assert_eq!(rk.last_used("a"), Some(10));
        let batch = rk.take_unrecorded();
        assert_eq!(batch.len(), 1);
        assert!(rk.take_unrecorded().is_empty());
        rk.untake(&batch);
        assert_eq!(rk.take_unrecorded().len(), 1);
        rk.merge_recorded([("a".to_string(), 20), ("b".to_string(), 5)]);
        assert_eq!(rk.last_used("a"), Some(20));
        assert_eq!(rk.last_used("b"), Some(5));
        assert!(rk.take_unrecorded().is_empty());
    }

    #[test]
    fn derived_views_are_rebuilt_once_per_table() {
        let rk = RuntimeKeys::default();
        let d: Derived<usize> = Derived::default();
        rk.publish(StoreKeyTable::new(1, vec![key("a", 1)]));
        let mut builds = 0;
        for _ in 0..3 {
            let t = rk.table();
            d.get(&t, |t| {
                builds += 1;
                t.len()
            });
        }
        assert_eq!(builds, 1);
        rk.publish(rk.table().with(2, key("b", 2)));
        let v = d.get(&rk.table(), |t| t.len());
        assert_eq!(v.1, 2);
    }
}
