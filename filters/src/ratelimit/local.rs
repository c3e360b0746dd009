//! `backend = "local"`: buckets in this process.
//!
//! One small mutex per org, user and key, found through a sharded map (`DashMap`): requests of
//! different callers never wait for each other, and there is no global lock on the request path.
//! A request locks the mutexes of its levels in the fixed order org → user → key (one entity per
//! level), checks every bucket and charges them only if all fit, then unlocks. The fixed order
//! makes the multi-level check atomic without any chance of deadlock.
//!
//! The store is kept in [`crate::Shared`], so a config reload keeps every bucket's level.
//!
//! Memory: a bucket that has refilled completely carries no information (a missing bucket is a
//! full one), so entries that are full and not in use are swept out whenever the map has doubled
//! since the last sweep (and has at least 1024 entries). Entries only ever exist for orgs, users and keys named in a config, so
//! the map is bounded by the configs' size even before sweeping.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use dashmap::DashMap;
use smallvec::SmallVec;

use super::bucket::{self, Bucket, Decision, Level, Plan};

/// A monotonic clock in nanoseconds. Injectable so that bucket arithmetic can be tested
/// without sleeping.
pub(crate) trait Clock: Send + Sync + 'static {
    fn now_nanos(&self) -> u64;
}

/// The process's monotonic clock.
pub(crate) struct MonotonicClock {
    origin: Instant,
}

impl Clock for MonotonicClock {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The request and token buckets of one org, user or key.
#[derive(Debug, Default)]
struct SlotState {
    buckets: [Option<Bucket>; 2],
    /// When every bucket of the slot will have refilled completely (on the store's clock): from
    /// then on the slot carries no information and may be swept.
    full_at: u64,
}

type Slot = Arc<Mutex<SlotState>>;

/// One item per level of a plan: org, user, key and (rarely) the keys a key was made from. Kept
/// inline, so that checking a request allocates nothing here.
type Levels<T> = SmallVec<[T; 4]>;

/// The smallest map size at which a sweep is considered.
const MIN_SWEEP_LEN: usize = 1024;

pub(crate) struct LocalStore {
    /// foldhash, seeded per process: the keys are org, user and key names from the config and
    /// the key store (never a client's text), and SipHash was ~5 % of a rate-limit check.
    buckets: DashMap<(Level, Arc<str>), Slot, foldhash::fast::RandomState>,
    clock: Box<dyn Clock>,
    /// The map size that triggers the next sweep.
    sweep_at: AtomicUsize,
}

impl LocalStore {
    pub(crate) fn new() -> LocalStore {
        LocalStore::with_clock(Box::new(MonotonicClock {
            origin: Instant::now(),
        }))
    }

    pub(crate) fn with_clock(clock: Box<dyn Clock>) -> LocalStore {
        LocalStore {
            buckets: DashMap::default(),
            clock,
            sweep_at: AtomicUsize::new(MIN_SWEEP_LEN),
        }
    }

    pub(crate) fn admit(&self, plan: &Plan) -> Decision {
        self.decide(plan, true)
    }

    /// What [`LocalStore::admit`] would decide, without charging.
    pub(crate) fn peek(&self, plan: &Plan) -> Decision {
        self.decide(plan, false)
    }

    fn decide(&self, plan: &Plan, charge: bool) -> Decision {
        let slots = self.slots(plan);
        let decision = {
            let now = self.clock.now_nanos();
            let mut guards: Levels<MutexGuard<'_, SlotState>> =
                slots.iter().map(|s| lock(s)).collect();
            let mut states: Levels<&mut [Option<Bucket>; 2]> =
                guards.iter_mut().map(|g| &mut g.buckets).collect();
            let decision = bucket::admit(plan, &mut states, now, charge);
            drop(states);
            if charge && matches!(decision, Decision::Admitted(_)) {
                note_full_at(plan, &mut guards, now);
            }
            decision
        };
        drop(slots);
        self.maybe_sweep();
        decision
    }

    pub(crate) fn adjust_tokens(&self, plan: &Plan, delta: i64) {
        let slots = self.slots(plan);
        let now = self.clock.now_nanos();
        let mut guards: Levels<MutexGuard<'_, SlotState>> = slots.iter().map(|s| lock(s)).collect();
        let mut states: Levels<&mut [Option<Bucket>; 2]> =
            guards.iter_mut().map(|g| &mut g.buckets).collect();
        bucket::adjust_tokens(plan, &mut states, delta, now);
        drop(states);
        note_full_at(plan, &mut guards, now);
    }

    /// The mutex of every level of `plan`, in plan order (org, user, key), created when missing.
    fn slots(&self, plan: &Plan) -> Levels<Slot> {
        plan.items
            .iter()
            .map(|item| {
                let key = (item.entity.level, item.entity.name.clone());
                if let Some(s) = self.buckets.get(&key) {
                    return s.clone();
                }
                self.buckets.entry(key).or_default().clone()
            })
            .collect()
    }

    /// Drops the entries that are full and that no request holds, once the map has doubled.
    fn maybe_sweep(&self) {
        let len = self.buckets.len();
        if len < self.sweep_at.load(Ordering::Relaxed) {
            return;
        }
        self.sweep();
        let after = self.buckets.len();
        self.sweep_at
            .store((after * 2).max(MIN_SWEEP_LEN), Ordering::Relaxed);
    }

    /// Removes full, unused entries. `retain` holds each shard's write lock while it visits it,
    /// so nobody can take a new reference to an entry meanwhile: a strong count of 1 proves no
    /// request is between finding the slot and charging it.
    pub(crate) fn sweep(&self) {
        let now = self.clock.now_nanos();
        self.buckets.retain(|_, slot| {
            if Arc::strong_count(slot) > 1 {
                return true;
            }
            match slot.try_lock() {
                Ok(state) => state.full_at > now,
                Err(_) => true,
            }
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// Moves each slot's `full_at` to when the buckets this plan touched will be full again. The
/// later of the old and new times is kept: a bucket the plan did not touch is still as empty as
/// it was, and sweeping late is harmless while sweeping early would forget a charge.
fn note_full_at(plan: &Plan, guards: &mut [MutexGuard<'_, SlotState>], now: u64) {
    for (item, g) in plan.items.iter().zip(guards.iter_mut()) {
        for (kind, spec, _) in item.charges() {
            let level = Bucket::level_at(g.buckets[bucket::slot(kind)], &spec, now);
            let wait = spec.time_to(level, spec.capacity as f64);
            let at = now.saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
            g.full_at = g.full_at.max(at);
        }
    }
}

/// A poisoned mutex only means another request panicked while holding it; bucket state is a
/// pair of numbers that is never left half-written, so it is safe to go on.
fn lock(m: &Mutex<SlotState>) -> MutexGuard<'_, SlotState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use super::*;
    use crate::policy::RateLimitSpec;
    use crate::ratelimit::bucket::{Entity, Kind, Limits, PlanItem};

    struct ManualClock(Arc<AtomicU64>);
    impl Clock for ManualClock {
        fn now_nanos(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn entity(level: Level, name: &str, rpm: u64) -> Arc<Entity> {
        Arc::new(Entity {
            level,
            name: Arc::from(name),
            limits: Limits::from_spec(&RateLimitSpec {
                requests_per_minute: Some(rpm),
                ..Default::default()
            }),
            redis_key: String::new(),
        })
    }

    fn plan(es: &[Arc<Entity>]) -> Plan {
        Plan {
            items: es
                .iter()
                .map(|e| PlanItem {
                    entity: e.clone(),
                    requests: 1,
                    tokens: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn levels_are_shared_between_plans_and_refill_with_the_clock() {
        let t = Arc::new(AtomicU64::new(0));
        let store = LocalStore::with_clock(Box::new(ManualClock(t.clone())));
        let org = entity(Level::Org, "acme", 3);
        let a = plan(&[org.clone(), entity(Level::Key, "a", 100)]);
        let b = plan(&[org.clone(), entity(Level::Key, "b", 100)]);
        assert!(matches!(store.admit(&a), Decision::Admitted(_)));
        assert!(matches!(store.admit(&b), Decision::Admitted(_)));
        assert!(matches!(store.admit(&a), Decision::Admitted(_)));
        match store.admit(&b) {
            Decision::Limited {
                level, kind, wait, ..
            } => {
                assert_eq!((level, kind), (Level::Org, Kind::Requests));
                assert_eq!(wait, Duration::from_secs(20));
            }
            d => panic!("{d:?}"),
        }
        t.store(20_000_000_000, Ordering::SeqCst);
        assert!(matches!(store.admit(&b), Decision::Admitted(_)));
    }

    #[test]
    fn sweep_frees_idle_entries_only() {
        let t = Arc::new(AtomicU64::new(0));
        let store = LocalStore::with_clock(Box::new(ManualClock(t.clone())));
        let busy = plan(&[entity(Level::Key, "busy", 10)]);
        let idle = plan(&[entity(Level::Key, "idle", 10)]);
        store.admit(&idle);
        // 10 per minute: one request's worth refills in 6 s.
        t.store(6_000_000_000, Ordering::SeqCst);
        store.admit(&busy);
        assert_eq!(store.len(), 2);
        store.sweep();
        assert_eq!(store.len(), 1);
        // The busy key kept its charge.
        for _ in 0..9 {
            assert!(matches!(store.admit(&busy), Decision::Admitted(_)));
        }
        assert!(matches!(store.admit(&busy), Decision::Limited { .. }));
    }
}
