//! Asynchronous agent runs, so that a run started on one instance can be read on any other
//! sharing the store.

use super::{now_secs, with_pool, RunRow, Store, StoreError};

impl Store {
    /// Stores a run's state, unless a later state (a higher `rank`) is already stored.
    pub async fn put_run(&self, run: &RunRow) -> Result<(), StoreError> {
        let sql = self.sql(
            "INSERT INTO agent_runs (id, agent_id, org, object, rank, expires) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET object = excluded.object, rank = excluded.rank, \
             expires = excluded.expires WHERE excluded.rank >= agent_runs.rank",
        );
        let object = run.object.to_string();
        with_pool!(self, pool => sqlx::query(&sql)
            .bind(&run.id)
            .bind(&run.agent_id)
            .bind(&run.org)
            .bind(&object)
            .bind(run.rank)
            .bind(run.expires)
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(|e| self.fail(e))
    }

    /// A run that has not expired.
    pub async fn get_run(&self, id: &str) -> Result<Option<RunRow>, StoreError> {
        let sql = self.sql(
            "SELECT id, agent_id, org, object, rank, expires FROM agent_runs \
             WHERE id = $1 AND expires > $2",
        );
        type Raw = (String, String, Option<String>, String, i64, i64);
        let raw: Option<Raw> = with_pool!(self, pool => sqlx::query_as(&sql)
            .bind(id)
            .bind(now_secs())
            .fetch_optional(pool)
            .await)
        .map_err(|e| self.fail(e))?;
        let Some((id, agent_id, org, object, rank, expires)) = raw else {
            return Ok(None);
        };
        let object = serde_json::from_str(&object).map_err(|e| {
            StoreError::Incompatible(format!("agent_runs `{id}`: object is not JSON: {e}"))
        })?;
        Ok(Some(RunRow {
            id,
            agent_id,
            org,
            object,
            rank,
            expires,
        }))
    }

    /// Deletes expired runs; returns how many.
    pub async fn purge_runs(&self) -> Result<u64, StoreError> {
        let sql = self.sql("DELETE FROM agent_runs WHERE expires <= $1");
        with_pool!(self, pool => sqlx::query(&sql)
            .bind(now_secs())
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| self.fail(e))
    }
}
