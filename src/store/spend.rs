//! The spend queries (SPEC §15): one row per day, org, user, key and model, added to as
//! requests finish (written behind by [`crate::spend::SpendSync`]), summed for budgets and the
//! usage APIs.

use std::sync::Arc;

use sluice_filters::spend::{Level, RowKey, RowSums, StoredSpend};
use time::Date;

use super::{with_pool, Store, StoreError};

/// Adds to a row, creating it when missing (the same statement on SQLite and PostgreSQL).
const UPSERT: &str = "INSERT INTO spend_daily \
    (day, org, user_name, key_id, model, requests, prompt_tokens, completion_tokens, cost_micros) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (day, org, user_name, key_id, model) DO UPDATE SET \
    requests = spend_daily.requests + excluded.requests, \
    prompt_tokens = spend_daily.prompt_tokens + excluded.prompt_tokens, \
    completion_tokens = spend_daily.completion_tokens + excluded.completion_tokens, \
    cost_micros = spend_daily.cost_micros + excluded.cost_micros";

/// Binds one row (`RowKey`, `RowSums`) to [`UPSERT`]'s parameters, in their order. A macro, as
/// the query's database type differs by backend.
macro_rules! bind_row {
    ($query:expr, $k:expr, $v:expr) => {
        $query
            .bind(day($k.date))
            .bind(&*$k.org)
            .bind(&*$k.user)
            .bind(&*$k.key)
            .bind(&*$k.model)
            .bind($v.requests)
            .bind($v.prompt_tokens)
            .bind($v.completion_tokens)
            .bind($v.cost_micros)
    };
}

/// One row of the per-day table, as the console and the usage APIs read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyRow {
    pub date: String,
    pub org: String,
    pub user: String,
    pub key: String,
    pub model: String,
    pub sums: RowSums,
}

/// What `GET /admin/v1/usage` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Org,
    User,
    Key,
    Model,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "org" => GroupBy::Org,
            "user" => GroupBy::User,
            "key" => GroupBy::Key,
            "model" => GroupBy::Model,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            GroupBy::Org => "org",
            GroupBy::User => "user",
            GroupBy::Key => "key",
            GroupBy::Model => "model",
        }
    }
}

type Sums = (i64, i64, i64, i64);
const SUMS: &str = "CAST(SUM(requests) AS BIGINT), CAST(SUM(prompt_tokens) AS BIGINT), \
    CAST(SUM(completion_tokens) AS BIGINT), CAST(SUM(cost_micros) AS BIGINT)";

fn sums((requests, prompt_tokens, completion_tokens, cost_micros): Sums) -> RowSums {
    RowSums {
        requests,
        prompt_tokens,
        completion_tokens,
        cost_micros,
    }
}

fn day(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn parse_day(s: &str) -> Option<Date> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, &fmt).ok()
}

/// Adds one row in a PostgreSQL transaction (the shared budgets settle with it).
pub(crate) async fn upsert(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    k: &RowKey,
    v: &RowSums,
) -> Result<(), sqlx::Error> {
    bind_row!(sqlx::query(UPSERT), k, v)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// Adds every row in one transaction.
    pub async fn add_spend(&self, rows: &[(RowKey, RowSums)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql = self.sql(UPSERT);
        let result: Result<(), sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            for (k, v) in rows {
                bind_row!(sqlx::query(&sql), k, v)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }.await);
        result.map_err(|e| self.fail(e))
    }

    /// Every org's, user's and key's spend per day since `since`, and all time.
    pub async fn load_spend(&self, since: Date) -> Result<StoredSpend, StoreError> {
        let mut out = StoredSpend::default();
        let since = day(since);
        for (level, col) in [
            (Level::Org, "org"),
            (Level::User, "user_name"),
            (Level::Key, "key_id"),
        ] {
            let recent = format!(
                "SELECT {col}, day, CAST(SUM(cost_micros) AS BIGINT) FROM spend_daily \
                 WHERE day >= $1 GROUP BY {col}, day"
            );
            let total = format!(
                "SELECT {col}, CAST(SUM(cost_micros) AS BIGINT) FROM spend_daily GROUP BY {col}"
            );
            let recent = self.sql_owned(recent);
            let rows: Vec<(String, String, i64)> = with_pool!(self, pool => sqlx::query_as(&recent)
                .bind(&since)
                .fetch_all(pool)
                .await)
            .map_err(|e| self.fail(e))?;
            for (name, d, micros) in rows {
                if let Some(d) = parse_day(&d) {
                    out.recent.push((level, name, d, micros));
                }
            }
            let totals: Vec<(String, i64)> =
                with_pool!(self, pool => sqlx::query_as(&total).fetch_all(pool).await)
                    .map_err(|e| self.fail(e))?;
            out.totals
                .extend(totals.into_iter().map(|(n, m)| (level, n, m)));
        }
        Ok(out)
    }

    /// The per-day rows from `from` to `to` (inclusive), of one user or of everyone: what the
    /// console's usage page and `GET /v1/usage` read.
    pub async fn daily_spend(
        &self,
        user: Option<&str>,
        from: Date,
        to: Date,
    ) -> Result<Vec<DailyRow>, StoreError> {
        let sql = self.sql_owned(format!(
            "SELECT day, org, user_name, key_id, model, {SUMS} FROM spend_daily \
             WHERE day >= $1 AND day <= $2 AND ($3 = '' OR user_name = $3) \
             GROUP BY day, org, user_name, key_id, model ORDER BY day, model, key_id"
        ));
        type Raw = (String, String, String, String, String, i64, i64, i64, i64);
        let rows: Vec<Raw> = with_pool!(self, pool => sqlx::query_as(&sql)
            .bind(day(from))
            .bind(day(to))
            .bind(user.unwrap_or(""))
            .fetch_all(pool)
            .await)
        .map_err(|e| self.fail(e))?;
        Ok(rows
            .into_iter()
            .map(|(date, org, user, key, model, r, p, c, m)| DailyRow {
                date,
                org,
                user,
                key,
                model,
                sums: sums((r, p, c, m)),
            })
            .collect())
    }

    /// Sums from `from` to `to` (inclusive) by org, user, key or model.
    pub async fn grouped_spend(
        &self,
        by: GroupBy,
        from: Date,
        to: Date,
    ) -> Result<Vec<(Arc<str>, RowSums)>, StoreError> {
        let col = match by {
            GroupBy::Org => "org",
            GroupBy::User => "user_name",
            GroupBy::Key => "key_id",
            GroupBy::Model => "model",
        };
        let sql = self.sql_owned(format!(
            "SELECT {col}, {SUMS} FROM spend_daily WHERE day >= $1 AND day <= $2 \
             GROUP BY {col} ORDER BY {col}"
        ));
        let rows: Vec<(String, i64, i64, i64, i64)> = with_pool!(self, pool => sqlx::query_as(&sql)
            .bind(day(from))
            .bind(day(to))
            .fetch_all(pool)
            .await)
        .map_err(|e| self.fail(e))?;
        Ok(rows
            .into_iter()
            .map(|(n, r, p, c, m)| (Arc::from(n), sums((r, p, c, m))))
            .collect())
    }
}
