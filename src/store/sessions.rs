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

    fn sql_owned(&self, sql: String) -> String {
        if self.is_postgres() {
            sql
        } else {
            sql.replace('$', "?")
        }
    }
}
