//! The key queries. Every change runs in one transaction that first bumps the change counter
//! (so the write lock is taken before anything is read) and, on PostgreSQL, notifies
//! [`CHANNEL`] at commit.

use std::sync::Arc;

use super::records::parse_json;
use super::{now_secs, with_pool, KeyPatch, KeyRow, Store, StoreError, CHANNEL};

/// A revocation: the change counter it made, the key's user and the keys revoked with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub version: u64,
    pub owner: String,
    pub descendants: Vec<String>,
}

/// A key row as the database returns it, columns in [`COLUMNS`] order.
type RawKey = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    bool,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
);

const COLUMNS: &str =
    "id, user_name, name, sha256, models, rate_limit, disabled, created, expires, parent, budget";

const BUMP: &str = "UPDATE store_version SET version = version + 1 WHERE id = 1 RETURNING version";

fn to_row(raw: RawKey) -> Result<KeyRow, StoreError> {
    let (id, user, name, sha256, models, rate_limit, disabled, created, expires, parent, budget) =
        raw;
    let budget = parse_json("budget", &id, budget).map_err(StoreError::Incompatible)?;
    let models = parse_json("models", &id, models).map_err(StoreError::Incompatible)?;
    let rate_limit = parse_json("rate_limit", &id, rate_limit).map_err(StoreError::Incompatible)?;
    Ok(KeyRow {
        id,
        user,
        name,
        sha256,
        models,
        rate_limit,
        disabled,
        created,
        expires,
        parent,
        budget,
    })
}

/// Begins a write transaction: `BEGIN IMMEDIATE` on SQLite (the write lock now, waiting up
/// to the busy timeout, rather than failing when a read turns into a write).
macro_rules! begin_write {
    ($store:expr, $pool:expr) => {
        if $store.is_postgres() {
            $pool.begin().await
        } else {
            $pool.begin_with("BEGIN IMMEDIATE").await
        }
    };
}

/// Bumps the change counter in `$tx` and, on PostgreSQL, announces the new version.
macro_rules! bump {
    ($store:expr, $tx:expr) => {{
        let v: i64 = sqlx::query_scalar(&$store.sql(BUMP))
            .fetch_one(&mut *$tx)
            .await?;
        if $store.is_postgres() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(v.to_string())
                .execute(&mut *$tx)
                .await?;
        }
        v.max(0) as u64
    }};
}

impl Store {
    /// Every live key and the change counter they are current for, read together.
    pub async fn load_keys(&self) -> Result<(u64, Vec<KeyRow>), StoreError> {
        let version_sql = self.sql("SELECT version FROM store_version WHERE id = 1");
        let rows_sql = format!("SELECT {COLUMNS} FROM api_keys WHERE revoked IS NULL");
        let pg = self.is_postgres();
        let (version, raw): (i64, Vec<RawKey>) = with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            if pg {
                // One snapshot for both reads.
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx)
                    .await?;
            }
            let v: i64 = sqlx::query_scalar(&version_sql).fetch_one(&mut *tx).await?;
            let rows: Vec<RawKey> = sqlx::query_as(&rows_sql).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>((v, rows))
        }.await)
        .map_err(|e| self.fail(e))?;
        let rows = raw.into_iter().map(to_row).collect::<Result<_, _>>()?;
        Ok((version.max(0) as u64, rows))
    }

    /// Stores a new key; returns the change counter it made.
    pub async fn create_key(&self, row: &KeyRow) -> Result<u64, StoreError> {
        self.create_key_within(row, None).await
    }

    /// Stores a new key unless its user already holds `limit` live (not revoked, not expired)
    /// store keys ([`StoreError::TooMany`]); counted in the same write transaction, so
    /// concurrent requests cannot both take the last place.
    pub async fn create_key_within(
        &self,
        row: &KeyRow,
        limit: Option<u64>,
    ) -> Result<u64, StoreError> {
        let sql = self.sql(
            "INSERT INTO api_keys (id, user_name, name, sha256, models, rate_limit, disabled, \
             created, expires, updated, parent, budget) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        );
        let count_sql = self.sql(
            "SELECT COUNT(*) FROM api_keys WHERE user_name = $1 AND revoked IS NULL \
             AND (expires IS NULL OR expires > $2)",
        );
        let result: Result<Option<u64>, sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = begin_write!(self, pool)?;
            let v = bump!(self, tx);
            if let Some(limit) = limit {
                let held: i64 = sqlx::query_scalar(&count_sql)
                    .bind(&row.user)
                    .bind(now_secs())
                    .fetch_one(&mut *tx)
                    .await?;
                if held.max(0) as u64 >= limit {
                    tx.rollback().await?;
                    return Ok(None);
                }
            }
            sqlx::query(&sql)
                .bind(&row.id)
                .bind(&row.user)
                .bind(&row.name)
                .bind(&row.sha256)
                .bind(row.models_json())
                .bind(row.rate_limit_json())
                .bind(row.disabled)
                .bind(row.created)
                .bind(row.expires)
                .bind(now_secs())
                .bind(&row.parent)
                .bind(row.budget_json())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(v))
        }.await);
        match result.map_err(|e| self.fail(e))? {
            Some(v) => Ok(v),
            None => Err(StoreError::TooMany(limit.unwrap_or(0))),
        }
    }

    /// Changes a live key (of `user` only, when given); `None` when there is no such key.
    pub async fn update_key(
        &self,
        id: &str,
        user: Option<&str>,
        patch: &KeyPatch,
    ) -> Result<Option<(u64, KeyRow)>, StoreError> {
        let sql = self.sql(
            "UPDATE api_keys SET \
               name = CASE WHEN $1 THEN $2 ELSE name END, \
               models = CASE WHEN $3 THEN $4 ELSE models END, \
               rate_limit = CASE WHEN $5 THEN $6 ELSE rate_limit END, \
               disabled = CASE WHEN $7 THEN $8 ELSE disabled END, \
               expires = CASE WHEN $9 THEN $10 ELSE expires END, \
               budget = CASE WHEN $14 THEN $15 ELSE budget END, \
               updated = $11 \
             WHERE id = $12 AND revoked IS NULL AND ($13 IS NULL OR user_name = $13) \
             RETURNING id, user_name, name, sha256, models, rate_limit, disabled, created, expires, \
             parent, budget",
        );
        let models = patch
            .models
            .as_ref()
            .map(|m| m.as_ref().and_then(|m| serde_json::to_string(m).ok()));
        let rate_limit = patch
            .rate_limit
            .as_ref()
            .map(|r| r.as_ref().and_then(|r| serde_json::to_string(r).ok()));
        let budget = patch
            .budget
            .as_ref()
            .map(|b| b.as_ref().and_then(|b| serde_json::to_string(b).ok()));
        let result: Result<Option<(u64, RawKey)>, sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = begin_write!(self, pool)?;
            let v = bump!(self, tx);
            let raw: Option<RawKey> = sqlx::query_as(&sql)
                .bind(patch.name.is_some())
                .bind(patch.name.clone())
                .bind(models.is_some())
                .bind(models.clone().flatten())
                .bind(rate_limit.is_some())
                .bind(rate_limit.clone().flatten())
                .bind(patch.disabled.is_some())
                .bind(patch.disabled.unwrap_or(false))
                .bind(patch.expires.is_some())
                .bind(patch.expires.flatten())
                .bind(now_secs())
                .bind(id)
                .bind(user)
                .bind(budget.is_some())
                .bind(budget.clone().flatten())
                .fetch_optional(&mut *tx)
                .await?;
            match raw {
                Some(raw) => {
                    tx.commit().await?;
                    Ok(Some((v, raw)))
                }
                None => {
                    tx.rollback().await?;
                    Ok(None)
                }
            }
        }.await);
        match result.map_err(|e| self.fail(e))? {
            Some((v, raw)) => Ok(Some((v, to_row(raw)?))),
            None => Ok(None),
        }
    }

    /// Revokes a live key (of `user` only, when given) and every key made from it, at any
    /// depth: from then on they authenticate nobody. Returns the change counter, the key's user
    /// and the ids of the descendants revoked with it; `None` when there is no such key.
    pub async fn revoke_key(
        &self,
        id: &str,
        user: Option<&str>,
    ) -> Result<Option<Revoked>, StoreError> {
        let sql = self.sql(
            "UPDATE api_keys SET revoked = $1, updated = $1 \
             WHERE id = $2 AND revoked IS NULL AND ($3 IS NULL OR user_name = $3) \
             RETURNING user_name",
        );
        let children_sql = self.sql(
            "UPDATE api_keys SET revoked = $1, updated = $1 \
             WHERE parent = $2 AND revoked IS NULL RETURNING id",
        );
        let result: Result<Option<Revoked>, sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = begin_write!(self, pool)?;
            let v = bump!(self, tx);
            let now = now_secs();
            let owner: Option<String> = sqlx::query_scalar(&sql)
                .bind(now)
                .bind(id)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(owner) = owner else {
                tx.rollback().await?;
                return Ok(None);
            };
            // Breadth first down the tree; a key is revoked once, so this ends.
            let mut descendants = Vec::new();
            let mut next = vec![id.to_string()];
            while let Some(parent) = next.pop() {
                let children: Vec<String> = sqlx::query_scalar(&children_sql)
                    .bind(now)
                    .bind(&parent)
                    .fetch_all(&mut *tx)
                    .await?;
                next.extend(children.iter().cloned());
                descendants.extend(children);
            }
            tx.commit().await?;
            Ok(Some(Revoked { version: v, owner, descendants }))
        }.await);
        result.map_err(|e| self.fail(e))
    }

    /// Records when keys were last used (never moving a time back). Not a change: the counter
    /// stays.
    pub async fn record_last_used(&self, batch: &[(Arc<str>, u64)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let sql = self.sql(
            "INSERT INTO key_last_used (key_id, at) VALUES ($1, $2) \
             ON CONFLICT (key_id) DO UPDATE SET at = excluded.at WHERE excluded.at > key_last_used.at",
        );
        let result: Result<(), sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            for (id, at) in batch {
                sqlx::query(&sql)
                    .bind(&**id)
                    .bind(*at as i64)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }.await);
        result.map_err(|e| self.fail(e))
    }

    /// When each key was last used, as every instance recorded it.
    pub async fn load_last_used(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let sql = self.sql("SELECT key_id, at FROM key_last_used");
        let rows: Vec<(String, i64)> =
            with_pool!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await)
                .map_err(|e| self.fail(e))?;
        Ok(rows
            .into_iter()
            .map(|(id, at)| (id, at.max(0) as u64))
            .collect())
    }
}
