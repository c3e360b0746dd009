//! The store: runtime state that must outlive a restart — API keys made through the key API
//! (SPEC §12), their last use, and asynchronous agent runs — in an embedded SQLite file
//! (default) or in PostgreSQL (several instances share it).
//!
//! One interface, two backends: [`Store`] holds an `sqlx` pool of either kind and every query
//! is written once (`$1`-style placeholders, rewritten to SQLite's `?1`), so the two cannot
//! drift apart. Sluice creates and migrates the schema itself at start ([`schema`], a versioned
//! migrations table, applied under a lock so that instances starting together do not race).
//!
//! The request path never reads the database: keys are served from memory
//! ([`sluice_filters::auth::RuntimeKeys`]), which [`sync`] keeps in step with the store. Every
//! change bumps one change counter in the same transaction (`store_version`), which every
//! instance polls a few times a second; PostgreSQL also notifies (`LISTEN sluice_keys`) so that
//! the others usually reload at once. Plaintext keys are never stored: a key row holds the
//! key's SHA-256, like `[[keys]].sha256`.
//!
//! SQLite runs in WAL mode with `synchronous = FULL`: a change that was answered is on disk,
//! whatever happens to the process (`kill -9`) or the machine.

mod config;
mod keys;
mod records;
mod runs;
mod schema;
mod sessions;
pub mod spend;
pub mod sync;
mod users;

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use config::{StoreConfig, StoreUrl};
pub use keys::Revoked;
pub use records::{KeyPatch, KeyRow, RunRow};
pub use sessions::SessionRow;
pub use sync::StoreRuntime;
pub use users::Sighting;

/// The PostgreSQL channel changes are announced on.
pub(crate) const CHANNEL: &str = "sluice_keys";

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database cannot be reached or refused the operation; the message says why (never
    /// a password or a key).
    Unavailable(String),
    /// A unique field (`id`) is taken.
    Conflict(&'static str),
    /// The schema is of a newer Sluice, or a row cannot be read.
    Incompatible(String),
    /// The user already holds this many live keys (`store.max_keys_per_user`).
    TooMany(u64),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "the store is unavailable: {m}"),
            StoreError::Conflict(field) => write!(f, "a key with this {field} already exists"),
            StoreError::Incompatible(m) => write!(f, "{m}"),
            StoreError::TooMany(n) => write!(f, "the user already holds {n} live keys"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A short reason for a database error, for logs and 503 answers.
pub(crate) fn describe(e: sqlx::Error, timeout: Duration) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut => StoreError::Unavailable(format!(
            "no database connection within {} ms (is the database running and reachable?)",
            timeout.as_millis()
        )),
        sqlx::Error::Io(e) => StoreError::Unavailable(format!("cannot reach the database: {e}")),
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict("id"),
        sqlx::Error::Database(d) => {
            StoreError::Unavailable(format!("the database refused: {}", d.message()))
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Incompatible(format!("a stored row cannot be read: {e}"))
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A handle on the store; cheap to clone (a pool).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    timeout: Duration,
    label: String,
}

/// Runs `$body` once with `$pool` bound to the backend's pool, whichever it is: the body is
/// compiled for each backend, so both run the same queries.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite($pool) => $body,
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

impl Store {
    /// Connects (creating a SQLite file and its directory when missing) and migrates the
    /// schema. Bounded by `store.timeout_ms` for PostgreSQL's first connection.
    pub async fn open(cfg: &StoreConfig) -> Result<Store, StoreError> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let url = cfg.parsed_url().map_err(StoreError::Incompatible)?;
        let backend = match &url {
            StoreUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let opts = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(timeout.max(Duration::from_secs(5)));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(timeout)
                    .connect_with(opts)
                    .await
                    .map_err(|e| describe(e, timeout))?;
                Backend::Sqlite(pool)
            }
            StoreUrl::Postgres(url) => {
                let opts = PgConnectOptions::from_str(url).map_err(|e| {
                    StoreError::Incompatible(format!("not a PostgreSQL URL: {}", e))
                })?;
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(timeout)
                    .connect_with(opts)
                    .await
                    .map_err(|e| describe(e, timeout))?;
                Backend::Postgres(pool)
            }
        };
        let store = Store {
            backend,
            timeout,
            label: cfg.display_url(),
        };
        schema::migrate(&store).await?;
        Ok(store)
    }

    /// The URL without its password.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// `sql` with the backend's placeholders (`$1` for PostgreSQL, `?1` for SQLite).
    pub(crate) fn sql(&self, sql: &'static str) -> Cow<'static, str> {
        match self.backend {
            Backend::Postgres(_) => Cow::Borrowed(sql),
            Backend::Sqlite(_) => Cow::Owned(sql.replace('$', "?")),
        }
    }

    /// [`Store::sql`] for a statement built at run time.
    pub(crate) fn sql_owned(&self, sql: String) -> String {
        if self.is_postgres() {
            sql
        } else {
            sql.replace('$', "?")
        }
    }

    pub(crate) fn fail(&self, e: sqlx::Error) -> StoreError {
        describe(e, self.timeout)
    }

    /// The change counter: bumped by every change of the keys.
    pub async fn version(&self) -> Result<u64, StoreError> {
        let sql = self.sql("SELECT version FROM store_version WHERE id = 1");
        let v: i64 = with_pool!(self, pool => sqlx::query_scalar(&sql).fetch_one(pool).await)
            .map_err(|e| self.fail(e))?;
        Ok(v.max(0) as u64)
    }

    /// A PostgreSQL pool, to listen for notifications.
    pub(crate) fn pg_pool(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Postgres(p) => Some(p),
            Backend::Sqlite(_) => None,
        }
    }

    /// Closes every connection (at shutdown).
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }
}

/// Unix seconds now, as the store's columns hold them (signed 64-bit).
pub fn now_secs() -> i64 {
    i64::try_from(sluice_filters::clock::unix_secs()).unwrap_or(i64::MAX)
}
