//! The schema, as numbered migrations recorded in `sluice_migrations`.
//!
//! Each migration runs once, in order, in one transaction with the row that records it, under
//! a lock (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock), so that
//! instances starting at the same time apply it once. A store migrated by a newer Sluice (a
//! version this one does not know) is refused rather than used with a schema it does not
//! understand. The DDL is the subset SQLite and PostgreSQL share (`TEXT`, `BIGINT`, `BOOLEAN`).

use super::{now_secs, with_pool, Store, StoreError};

/// An arbitrary constant naming Sluice's migration lock in `pg_advisory_xact_lock`.
const PG_LOCK: i64 = 0x0005_1c1c_e570;

struct Migration {
    version: i64,
    name: &'static str,
    statements: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "api keys",
        statements: &[
            "CREATE TABLE store_version (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL)",
            "INSERT INTO store_version (id, version) VALUES (1, 0)",
            "CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                user_name TEXT NOT NULL,
                name TEXT NOT NULL,
                sha256 TEXT NOT NULL UNIQUE,
                models TEXT,
                rate_limit TEXT,
                disabled BOOLEAN NOT NULL DEFAULT FALSE,
                created BIGINT NOT NULL,
                expires BIGINT,
                revoked BIGINT,
                updated BIGINT NOT NULL
            )",
            "CREATE INDEX api_keys_user ON api_keys (user_name)",
            "CREATE TABLE key_last_used (key_id TEXT PRIMARY KEY, at BIGINT NOT NULL)",
        ],
    },
    Migration {
        version: 2,
        name: "agent runs",
        statements: &[
            "CREATE TABLE agent_runs (
                id TEXT PRIMARY KEY,
                agent_id TEXT NOT NULL,
                org TEXT,
                object TEXT NOT NULL,
                rank BIGINT NOT NULL,
                expires BIGINT NOT NULL
            )",
            "CREATE INDEX agent_runs_expires ON agent_runs (expires)",
        ],
    },
    Migration {
        version: 3,
        name: "key ancestry",
        statements: &[
            // The key that made this one (a store key's id or a config key's); NULL for keys
            // made by an administrator or `sluice keys new --store`.
            "ALTER TABLE api_keys ADD COLUMN parent TEXT",
            "CREATE INDEX api_keys_parent ON api_keys (parent)",
        ],
    },
    Migration {
        version: 4,
        name: "users directory",
        statements: &[
            "CREATE TABLE users (
                name TEXT PRIMARY KEY,
                source TEXT NOT NULL,
                org TEXT,
                role TEXT,
                disabled BOOLEAN NOT NULL DEFAULT FALSE,
                first_seen BIGINT NOT NULL,
                last_seen BIGINT,
                updated BIGINT NOT NULL
            )",
        ],
    },
    Migration {
        version: 5,
        name: "console sessions",
        statements: &[
            // `id_sha256`: the SHA-256 of the cookie's random id, so that a copy of the
            // database holds no usable session.
            "CREATE TABLE console_sessions (
                id_sha256 TEXT PRIMARY KEY,
                user_name TEXT NOT NULL,
                key_id TEXT,
                auth TEXT NOT NULL,
                csrf TEXT NOT NULL,
                created BIGINT NOT NULL,
                last_seen BIGINT NOT NULL,
                expires BIGINT NOT NULL
            )",
            "CREATE INDEX console_sessions_user ON console_sessions (user_name)",
            "CREATE INDEX console_sessions_expires ON console_sessions (expires)",
        ],
    },
    Migration {
        version: 6,
        name: "spend per day",
        statements: &[
            "CREATE TABLE spend_daily (
                day TEXT NOT NULL,
                org TEXT NOT NULL,
                user_name TEXT NOT NULL,
                key_id TEXT NOT NULL,
                model TEXT NOT NULL,
                requests BIGINT NOT NULL,
                prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL,
                cost_micros BIGINT NOT NULL,
                PRIMARY KEY (day, org, user_name, key_id, model)
            )",
            "CREATE INDEX spend_daily_user ON spend_daily (user_name, day)",
            "CREATE INDEX spend_daily_org ON spend_daily (org, day)",
            "CREATE INDEX spend_daily_key ON spend_daily (key_id, day)",
            // Budget reservations in flight, shared by instances on PostgreSQL.
            "CREATE TABLE spend_reservations (
                id TEXT NOT NULL,
                account TEXT NOT NULL,
                micros BIGINT NOT NULL,
                expires BIGINT NOT NULL,
                PRIMARY KEY (id, account)
            )",
            "CREATE INDEX spend_reservations_account ON spend_reservations (account, expires)",
            // A store key's budget (JSON, like rate_limit).
            "ALTER TABLE api_keys ADD COLUMN budget TEXT",
        ],
    },
];

/// The newest schema version this Sluice knows.
pub fn latest() -> i64 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

/// Brings the schema to [`latest`].
pub(super) async fn migrate(store: &Store) -> Result<(), StoreError> {
    let create = "CREATE TABLE IF NOT EXISTS sluice_migrations \
                  (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied BIGINT NOT NULL)";
    let applied_sql = store.sql("SELECT version FROM sluice_migrations");
    let record =
        store.sql("INSERT INTO sluice_migrations (version, name, applied) VALUES ($1, $2, $3)");
    let postgres = store.is_postgres();
    let result: Result<(), sqlx::Error> = with_pool!(store, pool => async {
        let mut tx = if postgres {
            pool.begin().await?
        } else {
            pool.begin_with("BEGIN IMMEDIATE").await?
        };
        if postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PG_LOCK).execute(&mut *tx).await?;
        }
        sqlx::query(create).execute(&mut *tx).await?;
        // Every migration not recorded yet runs, not only those above the highest recorded one:
        // branches number their migrations ahead of time, so a store may hold 4 before 3.
        let applied: Vec<i64> = sqlx::query_scalar(&applied_sql).fetch_all(&mut *tx).await?;
        let current = applied.iter().copied().max().unwrap_or(0);
        if applied.iter().any(|v| !MIGRATIONS.iter().any(|m| m.version == *v)) {
            return Err(sqlx::Error::Protocol(format!(
                "the store's schema is version {current}, newer than this Sluice's {}: \
                 run the newer Sluice, or point store.url at another database",
                latest()
            )));
        }
        // Every known migration not yet applied, in order: a store made by a build that had
        // a later number but not an earlier one (parallel features merged apart) still gets it.
        for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
            for statement in m.statements {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query(&record).bind(m.version).bind(m.name).bind(now_secs()).execute(&mut *tx).await?;
            tracing::info!(version = m.version, name = m.name, "store: schema migrated");
        }
        tx.commit().await
    }.await);
    result.map_err(|e| match e {
        sqlx::Error::Protocol(m) => StoreError::Incompatible(m),
        e => store.fail(e),
    })
}
