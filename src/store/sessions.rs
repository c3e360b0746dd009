//! The console's sessions (SPEC §14), schema version 5.
//!
//! A row is found by the SHA-256 of the session's random id (the cookie holds the id, the
//! store only its hash), so a copy of the database cannot be replayed as a cookie. Sessions
//! do not touch the keys' change counter: every console request reads its row, so a sign-out
//! on one instance ends the session on all of them at once.

use super::{with_pool, Store, StoreError};

/// One console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Lowercase hex SHA-256 of the cookie's id.
    pub id_sha256: String,
    pub user: String,
    /// The key the session was opened with (key sign-in): its permissions bound the session.
    pub key_id: Option<String>,
    /// How the user signed in: `key` or `oidc`.
    pub auth: String,
    /// The session's CSRF token (one per session).
    pub csrf: String,
    /// Unix seconds.
    pub created: i64,
    pub last_seen: i64,
    /// The absolute end (`console.max_hours` after `created`).
    pub expires: i64,
}

type RawSession = (
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    i64,
    i64,
);

const COLUMNS: &str = "id_sha256, user_name, key_id, auth, csrf, created, last_seen, expires";

impl Store {
    /// Stores a new session, dropping sessions that ended more than a day ago.
    pub async fn create_session(&self, s: &SessionRow) -> Result<(), StoreError> {
        let insert = self.sql(
            "INSERT INTO console_sessions (id_sha256, user_name, key_id, auth, csrf, created, \
             last_seen, expires) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        );
        let purge = self.sql("DELETE FROM console_sessions WHERE expires < $1");
        let result: Result<(), sqlx::Error> = with_pool!(self, pool => async {
            sqlx::query(&purge).bind(s.created - 86_400).execute(pool).await?;
            sqlx::query(&insert)
                .bind(&s.id_sha256)
                .bind(&s.user)
                .bind(&s.key_id)
                .bind(&s.auth)
                .bind(&s.csrf)
                .bind(s.created)
                .bind(s.last_seen)
                .bind(s.expires)
                .execute(pool)
                .await?;
            Ok(())
        }.await);
        result.map_err(|e| self.fail(e))
    }

    /// The session whose id hashes to `id_sha256`, if any (expired ones included: the caller
    /// decides, so that it can say why).
    pub async fn session(&self, id_sha256: &str) -> Result<Option<SessionRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM console_sessions WHERE id_sha256 = $1");
        let sql = self.sql_owned(sql);
        let raw: Option<RawSession> = with_pool!(self, pool => sqlx::query_as(&sql)
            .bind(id_sha256)
            .fetch_optional(pool)
            .await)
        .map_err(|e| self.fail(e))?;
        Ok(raw.map(
            |(id_sha256, user, key_id, auth, csrf, created, last_seen, expires)| SessionRow {
                id_sha256,
                user,
                key_id,
                auth,
                csrf,
                created,
                last_seen,
                expires,
            },
        ))
    }

    /// Notes a session's activity (its idle timeout restarts).
    pub async fn touch_session(&self, id_sha256: &str, now: i64) -> Result<(), StoreError> {
        let sql = self.sql("UPDATE console_sessions SET last_seen = $1 WHERE id_sha256 = $2");
        with_pool!(self, pool => sqlx::query(&sql).bind(now).bind(id_sha256).execute(pool).await.map(|_| ()))
            .map_err(|e| self.fail(e))
    }

    /// Ends a session (sign-out, timeout).
    pub async fn end_session(&self, id_sha256: &str) -> Result<(), StoreError> {
        let sql = self.sql("DELETE FROM console_sessions WHERE id_sha256 = $1");
        with_pool!(self, pool => sqlx::query(&sql).bind(id_sha256).execute(pool).await.map(|_| ()))
            .map_err(|e| self.fail(e))
    }

    /// Ends every session of a user (a disabled user); returns how many there were.
    pub async fn end_sessions_of(&self, user: &str) -> Result<u64, StoreError> {
        let sql = self.sql("DELETE FROM console_sessions WHERE user_name = $1");
        with_pool!(self, pool => sqlx::query(&sql).bind(user).execute(pool).await
            .map(|r| r.rows_affected()))
        .map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    async fn open(dir: &std::path::Path) -> Store {
        let cfg = StoreConfig {
            url: format!("sqlite://{}", dir.join("s.db").display()),
            ..StoreConfig::default()
        };
        Store::open(&cfg).await.expect("store")
    }

    fn row(id: &str, user: &str) -> SessionRow {
        SessionRow {
            id_sha256: id.into(),
            user: user.into(),
            key_id: Some("k".into()),
            auth: "key".into(),
            csrf: "t".into(),
            created: 1000,
            last_seen: 1000,
            expires: 2000,
        }
    }

    #[tokio::test]
    async fn sessions_are_made_read_touched_and_ended() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        store.create_session(&row("a", "alice")).await.unwrap();
        store.create_session(&row("b", "alice")).await.unwrap();
        store.create_session(&row("c", "bob")).await.unwrap();
        assert_eq!(store.session("a").await.unwrap(), Some(row("a", "alice")));
        store.touch_session("a", 1500).await.unwrap();
        assert_eq!(store.session("a").await.unwrap().unwrap().last_seen, 1500);
        store.end_session("a").await.unwrap();
        assert_eq!(store.session("a").await.unwrap(), None);
        assert_eq!(store.end_sessions_of("alice").await.unwrap(), 1);
        assert!(store.session("c").await.unwrap().is_some());
    }

    /// Migrations are applied by version, not above the highest: a store that lacks an earlier
    /// version (branches merged in another order) gets it when it is opened again.
    #[tokio::test]
    async fn a_missing_earlier_migration_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        with_pool!(store, pool => async {
            sqlx::query("DROP TABLE agent_runs").execute(pool).await.unwrap();
            sqlx::query("DELETE FROM sluice_migrations WHERE version = 2").execute(pool).await.unwrap();
        }.await);
        store.close().await;
        let store = open(dir.path()).await;
        let versions: Vec<i64> = with_pool!(store, pool => sqlx::query_scalar(
            "SELECT version FROM sluice_migrations ORDER BY version").fetch_all(pool).await)
        .unwrap();
        assert!(
            versions.starts_with(&[1, 2]) && versions.contains(&5),
            "{versions:?}"
        );
        let runs: i64 = with_pool!(store, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM agent_runs").fetch_one(pool).await)
        .unwrap();
        assert_eq!(runs, 0);
    }
}
