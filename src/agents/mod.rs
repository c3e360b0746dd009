//! Agent runs (SPEC §5): a configured agent is a model, instructions and parameters; a run is a
//! chat completion built from them and sent through the same chain as any other request.
//!
//! `"async": true` answers `202` with a queued run at once. The run itself is then executed by
//! the gateway as a request to its own public listener, on behalf of the caller: it carries a
//! single-use token (128 random bits, loopback only) that the engine exchanges for the caller's
//! identity, so auth, rate limits, DLP and audit apply to the execution exactly as to a
//! synchronous run (the audit trail holds two records: the accepted request, `202`, and the
//! execution, with its usage). `GET /v1/agents/{agentId}/runs/{runId}` returns the run to the
//! org that started it, until `agent_runs.retention_seconds` after it finished.
//!
//! Runs are kept in memory and, so that any instance sharing the store can answer for a run
//! another one started, in the store too (`agent_runs`: queued, running, then the final
//! object; a late write never replaces a later state). The store is written off the hot path
//! (the queued state before the `202`, bounded by `store.timeout_ms`); if it fails the run goes
//! on and stays readable on the instance that runs it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_filters::clock::unix_secs;
use sluice_filters::{Cx, Identity, Reply};

use crate::store::{RunRow, StoreRuntime};

// `[agent_runs]` by itself, so the config file's types need nothing else of this module.
pub mod config;
// What the request pipeline calls for the agent routes.
pub mod execute;
pub mod route;
pub use config::AgentRunsConfig;

/// The header carrying an internal run's token; never accepted from outside the loopback
/// execution and never forwarded upstream.
pub const INTERNAL_RUN_HEADER: &str = "x-sluice-internal-run";

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(128).collect()
}

pub(crate) fn new_run_id() -> String {
    format!("run_{:024x}", rand::random::<u128>() >> 32)
}

struct RunEntry {
    agent_id: String,
    org: Option<Arc<str>>,
    object: Value,
    finished_at: Option<Instant>,
}

struct Pending {
    run_id: String,
    agent_id: String,
    identity: Option<Identity>,
}

#[derive(Default)]
struct Runs {
    entries: HashMap<String, RunEntry>,
    finished: VecDeque<String>,
    pending: HashMap<String, Pending>,
    in_flight: usize,
}

/// Runs started with `"async": true`, kept until they expire.
#[derive(Default)]
pub struct AgentRuns {
    inner: Mutex<Runs>,
    store: Option<Arc<StoreRuntime>>,
}

/// The `rank` of each state in the store: a write never replaces a later state.
const RANK_QUEUED: i64 = 0;
const RANK_RUNNING: i64 = 1;
const RANK_FINISHED: i64 = 2;

/// What the background execution needs.
pub struct Started {
    pub run_id: String,
    pub token: String,
    pub queued: Value,
}

impl AgentRuns {
    /// Runs kept in memory and in `store`.
    pub fn new(store: Arc<StoreRuntime>) -> AgentRuns {
        AgentRuns {
            inner: Mutex::default(),
            store: Some(store),
        }
    }

    /// Writes a run's state to the store (logged, never fatal: the run goes on).
    async fn persist(&self, run_id: &str, org: Option<&str>, object: &Value, rank: i64, ttl: u64) {
        let Some(rt) = &self.store else { return };
        let row = RunRow {
            id: run_id.to_string(),
            agent_id: object["agent_id"].as_str().unwrap_or_default().to_string(),
            org: org.map(str::to_string),
            object: object.clone(),
            rank,
            expires: crate::store::now_secs().saturating_add(ttl.min(i64::MAX as u64) as i64),
        };
        if let Err(e) = rt.store().put_run(&row).await {
            rt.runs_failed();
            tracing::warn!(run_id, error = %e, "agent run not stored: only this instance can answer for it");
        }
    }

    /// Stores the `running` state of a run this instance executes.
    pub async fn persist_running(
        &self,
        cfg: &AgentRunsConfig,
        started: &Started,
        org: Option<&str>,
    ) {
        let mut object = started.queued.clone();
        object["status"] = json!("running");
        let ttl = cfg.timeout_seconds + cfg.retention_seconds;
        self.persist(&started.run_id, org, &object, RANK_RUNNING, ttl)
            .await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Runs> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a run (in memory, then in the store), or refuses (429) when `max_in_flight` runs
    /// are already queued or running.
    pub async fn start(&self, cfg: &AgentRunsConfig, cx: &Cx) -> Result<Started, Reply> {
        let started = self.start_in_memory(cfg, cx)?;
        let org = cx.identity.as_ref().map(|i| &*i.org);
        let ttl = cfg.timeout_seconds + cfg.retention_seconds;
        self.persist(&started.run_id, org, &started.queued, RANK_QUEUED, ttl)
            .await;
        Ok(started)
    }

    fn start_in_memory(&self, cfg: &AgentRunsConfig, cx: &Cx) -> Result<Started, Reply> {
        let mut runs = self.lock();
        purge(&mut runs, cfg);
        if runs.in_flight >= cfg.max_in_flight {
            return Err(Reply::error(
                429,
                "rate_limit_exceeded",
                format!(
                    "{} asynchronous agent runs are already in flight; retry shortly.",
                    runs.in_flight
                ),
            )
            .with_header("retry-after", "1"));
        }
        let agent_id = cx.agent_id.clone().unwrap_or_default();
        let run_id = new_run_id();
        let token = format!("{:032x}", rand::random::<u128>());
        let queued = json!({
            "id": run_id, "object": "agent.run", "agent_id": agent_id, "status": "queued",
            "output": null, "model": cx.model, "created": unix_secs(),
        });
        runs.in_flight += 1;
        runs.entries.insert(
            run_id.clone(),
            RunEntry {
                agent_id: agent_id.clone(),
                org: cx.identity.as_ref().map(|i| i.org.clone()),
                object: queued.clone(),
                finished_at: None,
            },
        );
        runs.pending.insert(
            token.clone(),
            Pending {
                run_id: run_id.clone(),
                agent_id,
                identity: cx.identity.clone(),
            },
        );
        Ok(Started {
            run_id,
            token,
            queued,
        })
    }

    /// The org that started a run held here.
    pub fn org_of(&self, run_id: &str) -> Option<String> {
        let runs = self.lock();
        runs.entries
            .get(run_id)
            .and_then(|e| e.org.as_deref().map(str::to_string))
    }

    /// Exchanges an internal token (once) for its run id and the caller's identity, if the
    /// token is for this agent. Marks the run `running`.
    pub fn claim(&self, token: &str, agent_id: &str) -> Option<(String, Option<Identity>)> {
        let mut runs = self.lock();
        let p = runs.pending.remove(token)?;
        if p.agent_id != agent_id {
            return None;
        }
        if let Some(e) = runs.entries.get_mut(&p.run_id) {
            e.object["status"] = json!("running");
        }
        Some((p.run_id, p.identity))
    }

    /// Stores a run's final object (in memory, then in the store).
    pub async fn finish(&self, cfg: &AgentRunsConfig, run_id: &str, object: Value) {
        let org = {
            let mut runs = self.lock();
            runs.in_flight = runs.in_flight.saturating_sub(1);
            runs.pending.retain(|_, p| p.run_id != run_id);
            let org = runs.entries.get_mut(run_id).map(|e| {
                e.object = object.clone();
                e.finished_at = Some(Instant::now());
                e.org.clone()
            });
            if org.is_some() {
                runs.finished.push_back(run_id.to_string());
            }
            purge(&mut runs, cfg);
            org.flatten()
        };
        self.persist(
            run_id,
            org.as_deref(),
            &object,
            RANK_FINISHED,
            cfg.retention_seconds,
        )
        .await;
    }

    /// `GET /v1/agents/{agentId}/runs/{runId}`: only the org that started a run may read it.
    /// A run this instance does not hold is looked up in the store (another instance may have
    /// started it).
    pub async fn status(&self, agent_id: &str, run_id: &str, identity: Option<&Identity>) -> Reply {
        let local = {
            let runs = self.lock();
            runs.entries.get(run_id).map(|e| {
                (
                    e.agent_id.clone(),
                    e.org.as_deref().map(str::to_string),
                    e.object.clone(),
                )
            })
        };
        let found = match (local, &self.store) {
            (Some(l), _) => Some(l),
            (None, None) => None,
            (None, Some(rt)) => match rt.store().get_run(run_id).await {
                Ok(row) => row.map(|r| (r.agent_id, r.org, r.object)),
                Err(e) => {
                    rt.runs_failed();
                    return Reply::error(
                        503,
                        "store_unavailable",
                        format!("This run is not on this instance and {e}. Retry shortly."),
                    )
                    .with_header("retry-after", "1");
                }
            },
        };
        let visible = found.filter(|(agent, org, _)| {
            agent == agent_id
                && match (org, identity) {
                    (Some(org), Some(i)) => **org == *i.org,
                    (None, _) => true,
                    (Some(_), None) => false,
                }
        });
        match visible {
            Some((_, _, object)) => Reply::json(200, &object),
            None => Reply::error(
                404,
                "not_found",
                format!(
                    "No run `{}` of agent `{}` is known (finished runs expire).",
                    truncate(run_id),
                    truncate(agent_id)
                ),
            ),
        }
    }
}

fn purge(runs: &mut Runs, cfg: &AgentRunsConfig) {
    let retention = Duration::from_secs(cfg.retention_seconds);
    while let Some(id) = runs.finished.front().cloned() {
        let expired = runs
            .entries
            .get(&id)
            .and_then(|e| e.finished_at)
            .is_none_or(|t| t.elapsed() >= retention);
        if expired || runs.finished.len() > cfg.max_stored {
            runs.finished.pop_front();
            runs.entries.remove(&id);
        } else {
            break;
        }
    }
}
