//! Token-bucket arithmetic, the request plan both stores admit, and what they report back.
//!
//! A bucket holds at most `capacity` units and refills continuously at `per_minute / 60 s`.
//! A request is admitted when every bucket it touches holds at least its cost; then all of them
//! are charged together. A bucket's level may go below zero, but only through reconciliation
//! (an upstream that used more tokens than were reserved): that debt is paid back by refill
//! before anything else fits.
//!
//! The Redis store runs the same arithmetic in Lua (`admit.lua`); the two must stay in step.

use std::sync::Arc;
use std::time::Duration;

use crate::policy::RateLimitSpec;

/// The three levels a request is limited at, in the order their buckets are locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Level {
    Org,
    User,
    Key,
}

impl Level {
    /// The `level` label of `sluice_rate_limited_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Level::Org => "org",
            Level::User => "user",
            Level::Key => "key",
        }
    }
}

/// What a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Requests,
    Tokens,
}

/// One configured bucket: its capacity and refill rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BucketSpec {
    pub capacity: u64,
    pub per_minute: u64,
}

const NANOS_PER_MINUTE: f64 = 60e9;

impl BucketSpec {
    /// How long the bucket needs to go from `level` to `target`, rounded up to the nanosecond.
    /// (Multiplying before dividing keeps whole-unit waits exact: 1 request at 2 per minute is
    /// 30 s, not 30 s and a rounding error.)
    pub(crate) fn time_to(&self, level: f64, target: f64) -> Duration {
        if level >= target {
            return Duration::ZERO;
        }
        let nanos = ((target - level) * NANOS_PER_MINUTE / self.per_minute as f64).ceil();
        // A wait longer than u64 nanoseconds (584 years) only arises from absurd configs.
        Duration::from_nanos(if nanos >= u64::MAX as f64 {
            u64::MAX
        } else {
            nanos as u64
        })
    }
}

/// The buckets one level of one org, user or key has; either may be absent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Limits {
    pub requests: Option<BucketSpec>,
    pub tokens: Option<BucketSpec>,
}

impl Limits {
    pub(crate) fn from_spec(spec: &RateLimitSpec) -> Limits {
        let bucket = |per_minute: Option<u64>, burst: Option<u64>| {
            per_minute.map(|per_minute| BucketSpec {
                capacity: burst.unwrap_or(per_minute),
                per_minute,
            })
        };
        Limits {
            requests: bucket(spec.requests_per_minute, spec.burst),
            tokens: bucket(spec.tokens_per_minute, spec.token_burst),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

/// One org, user or key with limits, resolved at build time.
#[derive(Debug)]
pub(crate) struct Entity {
    pub level: Level,
    pub name: Arc<str>,
    pub limits: Limits,
    /// Where its buckets live in Redis (see `redis_store.rs` for the key scheme).
    pub redis_key: String,
}

/// A bucket's stored state: its level at the instant `at` (nanoseconds on the store's clock).
/// A bucket that was never charged, or that has refilled completely, is simply full and needs no
/// state at all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket {
    pub level: f64,
    pub at: u64,
}

impl Bucket {
    /// The level at `now`, refilled since `at` and capped at the capacity (which may have been
    /// lowered by a reload since the bucket was written).
    pub(crate) fn level_at(state: Option<Bucket>, spec: &BucketSpec, now: u64) -> f64 {
        let cap = spec.capacity as f64;
        match state {
            None => cap,
            Some(b) => {
                let elapsed = now.saturating_sub(b.at) as f64;
                (b.level + elapsed * spec.per_minute as f64 / NANOS_PER_MINUTE).min(cap)
            }
        }
    }
}

/// One level of a request: the entity and what this request costs in each of its buckets.
#[derive(Debug, Clone)]
pub(crate) struct PlanItem {
    pub entity: Arc<Entity>,
    /// 1 when the entity has a request bucket, else 0.
    pub requests: u64,
    /// The token reservation when the entity has a token bucket and the route consumes tokens,
    /// else 0.
    pub tokens: u64,
}

impl Decision {
    /// The buckets as the decision saw them.
    pub(crate) fn buckets(&self) -> &[BucketView] {
        match self {
            Decision::Admitted(b) | Decision::Limited { buckets: b, .. } => b,
        }
    }
}

impl PlanItem {
    /// The buckets this item touches, with their cost.
    pub(crate) fn charges(&self) -> impl Iterator<Item = (Kind, BucketSpec, u64)> + '_ {
        let l = &self.entity.limits;
        let req = l
            .requests
            .filter(|_| self.requests > 0)
            .map(|s| (Kind::Requests, s, self.requests));
        let tok = l
            .tokens
            .filter(|_| self.tokens > 0)
            .map(|s| (Kind::Tokens, s, self.tokens));
        req.into_iter().chain(tok)
    }
}

/// Every bucket one request must fit, ordered org, user, key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub items: Vec<PlanItem>,
}

/// A bucket's state as a decision saw it (after the charge when admitted), for the
/// `x-ratelimit-*` headers and the 429's message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BucketView {
    pub level: Level,
    pub kind: Kind,
    pub name: Arc<str>,
    pub spec: BucketSpec,
    /// Whole units left (negative while in debt).
    pub remaining: i64,
    /// How long until the bucket is full again.
    pub reset: Duration,
}

/// What a store decided for a plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Every bucket was charged.
    Admitted(Vec<BucketView>),
    /// Nothing was charged. `level`/`kind` name the bucket that needs the longest to fit; after
    /// `wait` every bucket holds the request's cost (absent other traffic).
    Limited {
        level: Level,
        kind: Kind,
        wait: Duration,
        buckets: Vec<BucketView>,
    },
}

/// The in-process admission: every bucket of `plan` refilled to `now`, checked, and — when
/// `charge` is set — charged, only if all fit. `states[i]` holds the request and token buckets
/// of `plan.items[i]`.
pub(crate) fn admit(
    plan: &Plan,
    states: &mut [&mut [Option<Bucket>; 2]],
    now: u64,
    charge: bool,
) -> Decision {
    // The longest wait over every bucket that does not hold its cost yet.
    let mut worst: Option<(Level, Kind, Duration)> = None;
    for (item, state) in plan.items.iter().zip(states.iter()) {
        for (kind, spec, cost) in item.charges() {
            let level = Bucket::level_at(state[slot(kind)], &spec, now);
            let wait = spec.time_to(level, cost as f64);
            if !wait.is_zero() && worst.is_none_or(|(_, _, w)| wait > w) {
                worst = Some((item.entity.level, kind, wait));
            }
        }
    }
    let admitted = worst.is_none() && charge;
    let mut views = Vec::with_capacity(plan.items.len() * 2);
    for (item, state) in plan.items.iter().zip(states.iter_mut()) {
        for (kind, spec, cost) in item.charges() {
            let mut level = Bucket::level_at(state[slot(kind)], &spec, now);
            if admitted {
                level -= cost as f64;
                state[slot(kind)] = Some(Bucket { level, at: now });
            }
            views.push(view(&item.entity, kind, spec, level));
        }
    }
    match worst {
        None => Decision::Admitted(views),
        Some((level, kind, wait)) => Decision::Limited {
            level,
            kind,
            wait,
            buckets: views,
        },
    }
}

/// Adds `delta` tokens of cost (negative: a refund) to the token buckets of `plan`,
/// unconditionally: the upstream already did the work.
pub(crate) fn adjust_tokens(
    plan: &Plan,
    states: &mut [&mut [Option<Bucket>; 2]],
    delta: i64,
    now: u64,
) {
    for (item, state) in plan.items.iter().zip(states.iter_mut()) {
        if item.tokens == 0 {
            continue;
        }
        if let Some(spec) = item.entity.limits.tokens {
            let level = Bucket::level_at(state[1], &spec, now);
            let level = (level - delta as f64).min(spec.capacity as f64);
            state[1] = Some(Bucket { level, at: now });
        }
    }
}

pub(crate) fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Requests => 0,
        Kind::Tokens => 1,
    }
}

pub(crate) fn view(entity: &Entity, kind: Kind, spec: BucketSpec, level: f64) -> BucketView {
    view_from_parts(
        entity,
        kind,
        spec,
        level.floor() as i64,
        spec.time_to(level, spec.capacity as f64),
    )
}

pub(crate) fn view_from_parts(
    entity: &Entity,
    kind: Kind,
    spec: BucketSpec,
    remaining: i64,
    reset: Duration,
) -> BucketView {
    BucketView {
        level: entity.level,
        kind,
        name: entity.name.clone(),
        spec,
        remaining,
        reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn entity(level: Level, rpm: Option<u64>, tpm: Option<u64>) -> Arc<Entity> {
        Arc::new(Entity {
            level,
            name: Arc::from(level.label()),
            limits: Limits::from_spec(&RateLimitSpec {
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
                burst: None,
                token_burst: None,
            }),
            redis_key: String::new(),
        })
    }

    fn plan(items: &[(Arc<Entity>, u64)]) -> Plan {
        Plan {
            items: items
                .iter()
                .map(|(e, t)| PlanItem {
                    entity: e.clone(),
                    requests: u64::from(e.limits.requests.is_some()),
                    tokens: if e.limits.tokens.is_some() { *t } else { 0 },
                })
                .collect(),
        }
    }

    fn run(p: &Plan, st: &mut [[Option<Bucket>; 2]], now: u64) -> Decision {
        let mut refs: Vec<&mut [Option<Bucket>; 2]> = st.iter_mut().collect();
        admit(p, &mut refs, now, true)
    }

    #[test]
    fn refills_continuously_and_caps() {
        let spec = BucketSpec {
            capacity: 10,
            per_minute: 60,
        };
        let b = Some(Bucket { level: 0.0, at: 0 });
        assert_eq!(Bucket::level_at(b, &spec, SEC / 2), 0.5);
        assert_eq!(Bucket::level_at(b, &spec, 3 * SEC), 3.0);
        assert_eq!(Bucket::level_at(b, &spec, 3600 * SEC), 10.0);
        assert_eq!(Bucket::level_at(None, &spec, 0), 10.0);
        // A clock that went backwards refills nothing rather than draining.
        let later = Some(Bucket {
            level: 2.0,
            at: 5 * SEC,
        });
        assert_eq!(Bucket::level_at(later, &spec, SEC), 2.0);
    }

    #[test]
    fn burst_is_capacity_rate_is_per_minute() {
        let l = Limits::from_spec(&RateLimitSpec {
            requests_per_minute: Some(60),
            tokens_per_minute: Some(1000),
            burst: Some(5),
            token_burst: None,
        });
        assert_eq!(
            l.requests,
            Some(BucketSpec {
                capacity: 5,
                per_minute: 60
            })
        );
        assert_eq!(
            l.tokens,
            Some(BucketSpec {
                capacity: 1000,
                per_minute: 1000
            })
        );
    }

    #[test]
    fn all_levels_must_admit_and_none_is_charged_on_refusal() {
        let org = entity(Level::Org, Some(100), None);
        let key = entity(Level::Key, Some(2), None);
        let p = plan(&[(org, 0), (key, 0)]);
        let mut st = [[None; 2], [None; 2]];
        assert!(matches!(run(&p, &mut st, 0), Decision::Admitted(_)));
        assert!(matches!(run(&p, &mut st, 0), Decision::Admitted(_)));
        let before = st;
        match run(&p, &mut st, 0) {
            Decision::Limited {
                level, kind, wait, ..
            } => {
                assert_eq!(level, Level::Key);
                assert_eq!(kind, Kind::Requests);
                // 2 per minute: one request's worth takes 30 s.
                assert_eq!(wait, Duration::from_secs(30));
            }
            d => panic!("expected a refusal, got {d:?}"),
        }
        // The org bucket was not charged for the refused request.
        assert_eq!(st, before);
        assert_eq!(st[0][0].map(|b| b.level), Some(98.0));
    }

    #[test]
    fn wait_is_until_every_bucket_fits() {
        // The org needs 10 s for one request, the key 30 s: the request fits after 30 s.
        let org = entity(Level::Org, Some(6), None);
        let key = entity(Level::Key, Some(2), None);
        let p = plan(&[(org, 0), (key, 0)]);
        let mut st = [
            [Some(Bucket { level: 0.0, at: 0 }), None],
            [Some(Bucket { level: 0.0, at: 0 }), None],
        ];
        match run(&p, &mut st, 0) {
            Decision::Limited {
                level,
                wait,
                buckets,
                ..
            } => {
                assert_eq!(level, Level::Key);
                assert_eq!(wait, Duration::from_secs(30));
                assert_eq!(buckets.len(), 2);
                assert_eq!(buckets[0].reset, Duration::from_secs(60));
            }
            d => panic!("expected a refusal, got {d:?}"),
        }
        assert!(matches!(run(&p, &mut st, 30 * SEC), Decision::Admitted(_)));
    }

    #[test]
    fn token_reservation_and_reconcile() {
        // 600 tokens per minute = 10 per second.
        let user = entity(Level::User, Some(1000), Some(600));
        let p = plan(&[(user, 500)]);
        let mut st = [[None; 2]];
        match run(&p, &mut st, 0) {
            Decision::Admitted(v) => {
                let tok = v.iter().find(|b| b.kind == Kind::Tokens).unwrap();
                assert_eq!(tok.remaining, 100);
                assert_eq!(tok.reset, Duration::from_secs(50));
            }
            d => panic!("{d:?}"),
        }
        // The second reservation does not fit: 400 more tokens at 10/s = 40 s.
        match run(&p, &mut st, 0) {
            Decision::Limited { kind, wait, .. } => {
                assert_eq!(kind, Kind::Tokens);
                assert_eq!(wait, Duration::from_secs(40));
            }
            d => panic!("{d:?}"),
        }
        // The call used 100 tokens: 400 come back.
        {
            let mut refs: Vec<&mut [Option<Bucket>; 2]> = st.iter_mut().collect();
            adjust_tokens(&p, &mut refs, 100 - 500, 0);
        }
        assert_eq!(st[0][1].map(|b| b.level), Some(500.0));
        // A call that used more than reserved leaves the bucket in debt.
        {
            let mut refs: Vec<&mut [Option<Bucket>; 2]> = st.iter_mut().collect();
            adjust_tokens(&p, &mut refs, 800, 0);
        }
        assert_eq!(st[0][1].map(|b| b.level), Some(-300.0));
        match run(&p, &mut st, 0) {
            Decision::Limited { wait, buckets, .. } => {
                assert_eq!(wait, Duration::from_secs(80));
                let tok = buckets.iter().find(|b| b.kind == Kind::Tokens).unwrap();
                assert_eq!(tok.remaining, -300);
            }
            d => panic!("{d:?}"),
        }
        // Refunds never overfill.
        {
            let mut refs: Vec<&mut [Option<Bucket>; 2]> = st.iter_mut().collect();
            adjust_tokens(&p, &mut refs, -100_000, 0);
        }
        assert_eq!(st[0][1].map(|b| b.level), Some(600.0));
    }

    #[test]
    fn time_to_rounds_up() {
        let spec = BucketSpec {
            capacity: 3,
            per_minute: 7,
        };
        let d = spec.time_to(0.0, 1.0);
        // 60/7 s = 8.571428571… s, never rounded down.
        assert!(d >= Duration::from_nanos(8_571_428_571));
        assert!(d <= Duration::from_nanos(8_571_428_572));
        assert_eq!(spec.time_to(2.0, 1.0), Duration::ZERO);
    }
}
