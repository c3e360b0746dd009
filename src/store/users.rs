//! The users directory (SPEC §13): users first seen through the identity provider, and the
//! `disabled` flag of any user. A change that others must see (a new user, another org or
//! role, `disabled`) bumps the change counter like a key change; `last_seen` alone does not.

use sluice_filters::auth::StoreUser;

use super::{now_secs, with_pool, Store, StoreError, CHANNEL};

type RawUser = (
    String,
    String,
    Option<String>,
    Option<String>,
    bool,
    Option<i64>,
);

const BUMP: &str = "UPDATE store_version SET version = version + 1 WHERE id = 1 RETURNING version";

/// A provider user seen with a token or at sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub name: String,
    pub org: String,
    pub role: String,
    /// Unix seconds.
    pub at: i64,
    /// New, or another org or role than the directory holds: other instances must reload.
    pub changed: bool,
}

fn to_user(raw: RawUser) -> StoreUser {
    let (name, source, org, role, disabled, last_seen) = raw;
    StoreUser {
        name,
        source,
        org,
        role,
        disabled,
        last_seen: last_seen.map(|t| t.max(0) as u64),
    }
}

impl Store {
    /// Every user of the directory.
    pub async fn load_users(&self) -> Result<Vec<StoreUser>, StoreError> {
        let sql = "SELECT name, source, org, role, disabled, last_seen FROM users";
        let raw: Vec<RawUser> = with_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)
            .map_err(|e| self.fail(e))?;
        Ok(raw.into_iter().map(to_user).collect())
    }

    /// Records provider users seen (inserted with `source = "oidc"`, else org, role and
    /// `last_seen` refreshed), in one transaction; bumps the change counter when one changed.
    pub async fn record_sightings(&self, batch: &[Sighting]) -> Result<(), StoreError> {
        let upsert = self.sql(
            "INSERT INTO users (name, source, org, role, disabled, first_seen, last_seen, updated) \
             VALUES ($1, 'oidc', $2, $3, FALSE, $4, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET org = excluded.org, role = excluded.role, \
             last_seen = excluded.last_seen, updated = excluded.updated",
        );
        let bump = self.sql(BUMP);
        let changed = batch.iter().any(|s| s.changed);
        let pg = self.is_postgres();
        let result: Result<(), sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = if pg { pool.begin().await? } else { pool.begin_with("BEGIN IMMEDIATE").await? };
            for s in batch {
                sqlx::query(&upsert)
                    .bind(&s.name)
                    .bind(&s.org)
                    .bind(&s.role)
                    .bind(s.at)
                    .bind(now_secs())
                    .execute(&mut *tx)
                    .await?;
            }
            if changed {
                let v: i64 = sqlx::query_scalar(&bump).fetch_one(&mut *tx).await?;
                if pg {
                    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(v.to_string()).execute(&mut *tx).await?;
                }
            }
            tx.commit().await
        }.await);
        result.map_err(|e| self.fail(e))
    }

    /// Sets `disabled` for `name` (a row of `source` is made when the directory has none);
    /// returns the user as stored.
    pub async fn set_user_disabled(
        &self,
        name: &str,
        source: &str,
        disabled: bool,
    ) -> Result<StoreUser, StoreError> {
        let upsert = self.sql(
            "INSERT INTO users (name, source, disabled, first_seen, updated) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (name) DO UPDATE SET disabled = excluded.disabled, updated = excluded.updated",
        );
        let read = self
            .sql("SELECT name, source, org, role, disabled, last_seen FROM users WHERE name = $1");
        let bump = self.sql(BUMP);
        let pg = self.is_postgres();
        let result: Result<RawUser, sqlx::Error> = with_pool!(self, pool => async {
            let mut tx = if pg { pool.begin().await? } else { pool.begin_with("BEGIN IMMEDIATE").await? };
            let v: i64 = sqlx::query_scalar(&bump).fetch_one(&mut *tx).await?;
            sqlx::query(&upsert).bind(name).bind(source).bind(disabled).bind(now_secs())
                .execute(&mut *tx).await?;
            let row: RawUser = sqlx::query_as(&read).bind(name).fetch_one(&mut *tx).await?;
            if pg {
                sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(v.to_string()).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(row)
        }.await);
        result.map(to_user).map_err(|e| self.fail(e))
    }
}
