//! Budgets shared through the rate limiter's Redis (`backend = "redis"`, SPEC §15): every
//! instance reserves and settles in Redis, so together they enforce one budget.
//!
//! One `EVALSHA` of `budget.lua` per operation, atomic like the buckets' `admit.lua`: a
//! reservation checks every budget of the caller (the period's spend + the reservations in
//! flight of every instance + this cost ≤ the budget) and takes all or none; a settlement drops
//! the reservation and adds the real cost to the period's counter.
//!
//! ## Keys
//!
//! With the rate limiter's prefix and its `{<org>}` hash tag (see `redis_store.rs`):
//! `<prefix>:{<org>}:spend:<level>:<name>:<period>:<start>` holds what the period has spent
//! (µ$), expiring a day after the period ends (`total` never); `…:held:<level>:<name>` (hash
//! id → µ$, plus their `sum`) and `…:held-by:<level>:<name>` (the ids by deadline) hold the
//! reservations in flight. A reservation its instance never settles (it died) is dropped by the
//! next script touching the budget after [`RESERVATION_TTL_SECS`].
//!
//! ## Durability
//!
//! Redis only holds the shared period totals: each instance still writes its per-day rows to
//! its own store (the usage API reads those), through this process's ledger. A counter Redis
//! lost (a flush, a restart without persistence) is re-created from the spend of the period
//! that the first instance to touch it knows, which is its own store's rows: the other
//! instances' spend of the period is forgotten until it resets.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::redis_store::{escape, RedisStore};
use crate::spend::{
    Charge, Ledger, RedisBackend, Reserve, RowKey, RowSums, SpendBackend, Standing,
};

static BUDGET: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("budget.lua")));

/// How long a reservation holds budget when its request never settles (as `PgBudgets`').
pub const RESERVATION_TTL_SECS: i64 = 3600;

/// A spend counter outlives its period by this much, so an instance whose clock is a little
/// behind still finds it.
const COUNTER_GRACE_SECS: i64 = 86_400;

/// The Redis [`SpendBackend`].
pub(crate) struct RedisBudgets {
    pub store: RedisStore,
    pub prefix: String,
    /// This process's ledger: what this instance knows was spent, to re-create a lost counter.
    pub ledger: Arc<Ledger>,
    /// [`RESERVATION_TTL_SECS`] (shorter in tests).
    pub ttl_secs: i64,
}

/// The budgets' backend on the filter's Redis store, for [`crate::spend::SpendGate`].
pub(crate) fn backend(
    store: &RedisStore,
    prefix: &str,
    shared: &crate::Shared,
    settings: &super::RateLimitSettings,
    metrics: &super::report::Metrics,
) -> RedisBackend {
    RedisBackend {
        backend: Arc::new(RedisBudgets {
            store: RedisStore {
                conn: Arc::clone(&store.conn),
                timeout: store.timeout,
                connect_timeout: store.connect_timeout,
            },
            prefix: prefix.to_string(),
            ledger: Ledger::in_shared(shared),
            ttl_secs: RESERVATION_TTL_SECS,
        }),
        deny: settings.on_backend_error == super::OnBackendError::Deny,
        errors: (
            metrics.backend_errors_check.clone(),
            metrics.backend_errors_reconcile.clone(),
        ),
    }
}

impl RedisBudgets {
    fn keys(&self, org: &str, c: &Charge, now: OffsetDateTime) -> [String; 3] {
        let (tag, level, name) = (escape(org), c.level.label(), escape(&c.name));
        let key = |kind: &str| format!("{}:{{{tag}}}:{kind}:{level}:{name}", self.prefix);
        let period = match c.budget.period.start(now.date()) {
            Some(start) => format!(
                "{}:{:04}-{:02}-{:02}",
                c.budget.period.as_str(),
                start.year(),
                u8::from(start.month()),
                start.day()
            ),
            None => "total".to_string(),
        };
        [
            format!("{}:{period}", key("spend")),
            key("held"),
            key("held-by"),
        ]
    }

    async fn run(
        &self,
        mode: &str,
        id: &str,
        org: &str,
        charges: &[Charge],
        micros: i64,
        now: OffsetDateTime,
    ) -> Result<Vec<i64>, String> {
        let mut call = BUDGET.prepare_invoke();
        call.arg(mode).arg(id).arg(micros.max(0)).arg(self.ttl_secs);
        for c in charges {
            for k in self.keys(org, c, now) {
                call.key(k);
            }
            let expire_at = c
                .budget
                .period
                .resets_at(now)
                .map_or(0, |t| t.unix_timestamp() + COUNTER_GRACE_SECS);
            let seed = self.ledger.standing(c, now.date()).spent.max(0);
            call.arg(c.budget.micros()).arg(seed).arg(expire_at);
        }
        self.store.invoke(&call).await.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl SpendBackend for RedisBudgets {
    async fn reserve(
        &self,
        id: &str,
        org: &str,
        charges: &[Charge],
        cost: i64,
        now: OffsetDateTime,
    ) -> Result<Reserve, String> {
        let out = self.run("reserve", id, org, charges, cost, now).await?;
        match out[..] {
            [1, remaining] => Ok(Reserve::Reserved { remaining }),
            [0, index, spent, reserved] => {
                let index = usize::try_from(index)
                    .ok()
                    .filter(|i| *i < charges.len())
                    .ok_or("unexpected answer from the budget script")?;
                Ok(Reserve::Refused {
                    index,
                    standing: Standing {
                        limit: charges[index].budget.micros(),
                        spent,
                        reserved,
                    },
                })
            }
            _ => Err("unexpected answer from the budget script".to_string()),
        }
    }

    async fn settle(
        &self,
        id: &str,
        org: &str,
        charges: &[Charge],
        row: Option<(RowKey, RowSums)>,
    ) -> Result<(), String> {
        let cost = row.as_ref().map_or(0, |(_, s)| s.cost_micros);
        let now = OffsetDateTime::now_utc();
        self.run("settle", id, org, charges, cost, now)
            .await
            .map(|_| ())
    }

    /// Rows go to this instance's store through its ledger.
    fn keeps_rows(&self) -> bool {
        false
    }
}

/// A real `redis-server` for the tests (as `filters/tests/ratelimit.rs` uses).
#[cfg(test)]
#[path = "../../tests/support/redis_server.rs"]
mod redis_server;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::{BudgetSpec, Level, Period};

    #[test]
    fn keys_carry_the_org_tag_and_the_period_start() {
        let budgets = RedisBudgets {
            store: RedisStore {
                conn: Arc::new(super::super::redis_store::RedisConn::new(
                    redis::Client::open("redis://127.0.0.1:1").unwrap(),
                )),
                timeout: std::time::Duration::from_millis(1),
                connect_timeout: std::time::Duration::from_millis(1),
            },
            prefix: "sluice:rl".into(),
            ledger: Arc::new(Ledger::default()),
            ttl_secs: RESERVATION_TTL_SECS,
        };
        let charge = |period| Charge {
            level: Level::User,
            name: Arc::from("a:b"),
            budget: BudgetSpec { usd: 1.0, period },
        };
        // Thursday 2026-12-10.
        let now = time::macros::datetime!(2026-12-10 13:00 UTC);
        assert_eq!(
            budgets.keys("acme", &charge(Period::Weekly), now),
            [
                "sluice:rl:{acme}:spend:user:a%3Ab:weekly:2026-12-07",
                "sluice:rl:{acme}:held:user:a%3Ab",
                "sluice:rl:{acme}:held-by:user:a%3Ab",
            ]
        );
        assert_eq!(
            budgets.keys("", &charge(Period::Total), now)[0],
            "sluice:rl:{}:spend:user:a%3Ab:total"
        );
    }

    /// Against a real `redis-server`: all or none, settling, a dead instance's reservation
    /// expiring, and a flushed counter re-created from this instance's ledger.
    #[test]
    fn reservations_settle_expire_and_survive_a_flush() {
        let redis = super::redis_server::RedisServer::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let budgets = RedisBudgets {
                store: RedisStore {
                    conn: Arc::new(super::super::redis_store::RedisConn::new(redis::Client::open(redis.url()).unwrap())),
                    timeout: std::time::Duration::from_secs(5),
                    connect_timeout: std::time::Duration::from_secs(5),
                },
                prefix: "t".into(),
                ledger: Arc::new(Ledger::default()),
                ttl_secs: 1,
            };
            let org = |usd| Charge {
                level: Level::Org,
                name: Arc::from("acme"),
                budget: BudgetSpec { usd, period: Period::Daily },
            };
            let user = Charge {
                level: Level::User,
                name: Arc::from("alice"),
                budget: BudgetSpec { usd: 1.0, period: Period::Daily },
            };
            let charges = [org(10.0), user.clone()];
            let now = OffsetDateTime::now_utc();
            let r = budgets.reserve("a", "acme", &charges, 600_000, now).await;
            assert_eq!(r, Ok(Reserve::Reserved { remaining: 400_000 }));
            // The user's budget cannot hold a second one: nothing is reserved, not even the org's.
            let r = budgets.reserve("b", "acme", &charges, 600_000, now).await;
            assert!(
                matches!(r, Ok(Reserve::Refused { index: 1, standing }) if standing.reserved == 600_000),
                "{r:?}"
            );
            let r = budgets.reserve("c", "acme", &[org(10.0)], 0, now).await;
            assert_eq!(r, Ok(Reserve::Reserved { remaining: 9_400_000 }));
            // `a` settles at a real cost of $0.5.
            let key = RowKey {
                date: now.date(),
                org: Arc::from("acme"),
                user: Arc::from("alice"),
                key: Arc::from("k"),
                model: Arc::from("m"),
            };
            let sums = RowSums { requests: 1, cost_micros: 500_000, ..RowSums::default() };
            budgets.settle("a", "acme", &charges, Some((key.clone(), sums))).await.unwrap();
            let r = budgets.reserve("d", "acme", &charges, 400_000, now).await;
            assert_eq!(r, Ok(Reserve::Reserved { remaining: 100_000 }));
            // `d`'s instance dies: its reservation expires, the spend stays.
            tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
            let r = budgets.reserve("e", "acme", &charges, 500_000, now).await;
            assert_eq!(r, Ok(Reserve::Reserved { remaining: 0 }));
            budgets.settle("e", "acme", &charges, None).await.unwrap();
            // Redis forgets everything: the counter restarts from this instance's ledger.
            let mut conn = redis::Client::open(redis.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
            budgets.ledger.record(key, RowSums { cost_micros: 700_000, ..sums });
            let r = budgets.reserve("f", "acme", &charges, 400_000, now).await;
            assert!(
                matches!(r, Ok(Reserve::Refused { index: 1, standing }) if standing.spent == 700_000),
                "{r:?}"
            );
        });
    }
}
