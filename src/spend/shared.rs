//! Budgets shared through a PostgreSQL store: each reservation is a row of
//! `spend_reservations`, made in a transaction that first locks the budgets' accounts
//! (`pg_advisory_xact_lock`, in a fixed order) and then reads their spend (`spend_daily`) and
//! the reservations in flight of every instance. Settling drops the reservation and adds the
//! request's usage row in one transaction under the same locks, so no instance ever sees the
//! money neither reserved nor spent.
//!
//! A reservation left by an instance that died expires after [`RESERVATION_TTL_SECS`].

use async_trait::async_trait;
use sluice_filters::spend::{Charge, Level, Reserve, RowKey, RowSums, SpendBackend, Standing};
use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;

use crate::store::Store;

/// How long a reservation holds budget when its request never settles (its instance died).
pub const RESERVATION_TTL_SECS: i64 = 3600;

/// An arbitrary class for the advisory locks of budget accounts.
const LOCK_CLASS: i32 = 0x5350;

/// The PostgreSQL [`SpendBackend`].
pub struct PgBudgets {
    pool: PgPool,
}

impl PgBudgets {
    /// `None` unless the store is PostgreSQL.
    pub fn new(store: &Store) -> Option<PgBudgets> {
        store.pg_pool().cloned().map(|pool| PgBudgets { pool })
    }
}

fn account(c: &Charge) -> String {
    format!("{}:{}", c.level.label(), c.name)
}

fn column(level: Level) -> &'static str {
    match level {
        Level::Org => "org",
        Level::User => "user_name",
        Level::Key => "key_id",
    }
}

fn day(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Locks every account of `charges`, in a fixed order (no two transactions wait on each other).
async fn lock(tx: &mut Transaction<'_, Postgres>, charges: &[Charge]) -> Result<(), sqlx::Error> {
    let mut accounts: Vec<String> = charges.iter().map(account).collect();
    accounts.sort();
    accounts.dedup();
    for a in accounts {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(a)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn standing(
    tx: &mut Transaction<'_, Postgres>,
    c: &Charge,
    now: OffsetDateTime,
) -> Result<Standing, sqlx::Error> {
    let since = c
        .budget
        .period
        .start(now.date())
        .map(day)
        .unwrap_or_default();
    let spent_sql = format!(
        "SELECT COALESCE(CAST(SUM(cost_micros) AS BIGINT), 0) FROM spend_daily \
         WHERE {} = $1 AND day >= $2",
        column(c.level)
    );
    let spent: i64 = sqlx::query_scalar(&spent_sql)
        .bind(&*c.name)
        .bind(since)
        .fetch_one(&mut **tx)
        .await?;
    let reserved: i64 = sqlx::query_scalar(
        "SELECT COALESCE(CAST(SUM(micros) AS BIGINT), 0) FROM spend_reservations \
         WHERE account = $1 AND expires > $2",
    )
    .bind(account(c))
    .bind(now.unix_timestamp())
    .fetch_one(&mut **tx)
    .await?;
    Ok(Standing {
        limit: c.budget.micros(),
        spent,
        reserved,
    })
}

#[async_trait]
impl SpendBackend for PgBudgets {
    async fn reserve(
        &self,
        id: &str,
        _org: &str,
        charges: &[Charge],
        cost: i64,
        now: OffsetDateTime,
    ) -> Result<Reserve, String> {
        let result: Result<Reserve, sqlx::Error> = async {
            let mut tx = self.pool.begin().await?;
            lock(&mut tx, charges).await?;
            let mut remaining = i64::MAX;
            for (index, c) in charges.iter().enumerate() {
                let s = standing(&mut tx, c, now).await?;
                if cost > 0 && s.remaining() < cost {
                    return Ok(Reserve::Refused { index, standing: s });
                }
                remaining = remaining.min(s.remaining() - cost);
            }
            for c in charges {
                sqlx::query(
                    "INSERT INTO spend_reservations (id, account, micros, expires) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(account(c))
                .bind(cost)
                .bind(now.unix_timestamp() + RESERVATION_TTL_SECS)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Reserve::Reserved { remaining })
        }
        .await;
        result.map_err(|e| e.to_string())
    }

    async fn settle(
        &self,
        id: &str,
        _org: &str,
        charges: &[Charge],
        row: Option<(RowKey, RowSums)>,
    ) -> Result<(), String> {
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.pool.begin().await?;
            lock(&mut tx, charges).await?;
            sqlx::query("DELETE FROM spend_reservations WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if let Some((k, v)) = row {
                crate::store::spend::upsert(&mut tx, &k, &v).await?;
            }
            // Expired reservations of dead instances go with the next settlement.
            sqlx::query("DELETE FROM spend_reservations WHERE expires <= $1")
                .bind(OffsetDateTime::now_utc().unix_timestamp())
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        result.map_err(|e| e.to_string())
    }
}
