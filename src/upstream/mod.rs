//! Upstream resilience (SPEC §11): the one place that decides which upstream an attempt goes
//! to.
//!
//! ```text
//! config.rs   a model's `targets` (or the short `upstream =`), `[routing]`, `health_check`
//! select.rs   the draw: lowest priority in service, then weight; all out → soonest back
//! attempt.rs  one request's attempts: results, what is retried, the trial after an ejection
//! health.rs   per upstream, across reloads: failures in a row, ejection, Retry-After, checks
//! probe.rs    active health checks (pingora-load-balancing's HttpHealthCheck)
//! admin.rs    GET /admin/upstreams
//! ```
//!
//! The request path (`crate::pipeline`) asks this module for a target, tells it how each
//! attempt ended and learns whether to try again; the Pingora adapter only translates that
//! into Pingora's retry loop (`fail_to_connect` / `error_while_proxy` with `set_retry`).
//!
//! The health of upstreams outlives config generations: it is kept in the [`Board`], one of the
//! engine's shared resources ([`sluice_filters::Shared`], like the rate-limit buckets), by
//! upstream name. Each generation's `UpstreamRt` holds its upstream's [`TargetHealth`], so a
//! request keeps its own generation's targets while reporting to the state that the next
//! generation sees too.

pub mod config;

mod admin;
mod attempt;
mod health;
mod probe;
mod runtime;
mod select;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use sluice_filters::Shared;

pub use admin::view as admin_view;
pub use attempt::{retry_after, AttemptResult, Attempts};
pub use health::{Avail, HealthView, InFlight, TargetHealth, Verdict};
pub use runtime::UpstreamRt;
pub use select::{pick, pick_retry, Pick};

use config::TargetConfig;

/// The most attempts Pingora's retry loop must allow for one request: the first, every retry,
/// and one more on a fresh connection when a pooled one turned out to be closed.
pub const MAX_ATTEMPTS: usize = config::MAX_RETRIES as usize + 2;

/// One target of a model, resolved against its generation's upstreams.
#[derive(Clone)]
pub struct Target {
    /// Index in `Snapshot::upstreams`.
    pub upstream: usize,
    /// That upstream's health (the same as `Snapshot::upstreams[upstream].health`).
    pub health: Arc<TargetHealth>,
    pub upstream_model: Option<String>,
    pub weight: u32,
    pub priority: u32,
}

/// A model's targets, lowest priority first (config order within a priority).
#[derive(Clone, Default)]
pub struct ModelTargets {
    pub targets: Vec<Target>,
}

impl ModelTargets {
    pub fn build(list: &[TargetConfig], upstreams: &[UpstreamRt]) -> ModelTargets {
        let mut targets: Vec<Target> = list
            .iter()
            .filter_map(|t| {
                let (upstream, u) = upstreams
                    .iter()
                    .enumerate()
                    .find(|(_, u)| u.name == t.upstream)?;
                Some(Target {
                    upstream,
                    health: u.health.clone(),
                    upstream_model: t.upstream_model.clone(),
                    weight: t.weight.max(1),
                    priority: t.priority,
                })
            })
            .collect();
        targets.sort_by_key(|t| t.priority);
        ModelTargets { targets }
    }

    /// The route of a request that names no model: the first upstream.
    pub fn first_upstream(upstreams: &[UpstreamRt]) -> ModelTargets {
        let targets = upstreams
            .first()
            .map(|u| Target {
                upstream: 0,
                health: u.health.clone(),
                upstream_model: None,
                weight: 1,
                priority: 1,
            })
            .into_iter()
            .collect();
        ModelTargets { targets }
    }
}

/// The upstreams' health, by name, across config generations; and their active checks.
pub struct Board {
    /// The current generation's upstreams, in config order.
    installed: Arc<Mutex<Vec<Arc<TargetHealth>>>>,
    probes: probe::Probes,
    runtime: OnceLock<tokio::runtime::Handle>,
}

const BOARD_KEY: &str = "sluice.upstream.board";

/// The engine's board (made, with its `sluice_upstream_in_service` gauge, on first use).
pub fn board(shared: &Shared) -> Result<Arc<Board>, String> {
    shared.get_or_try_init(BOARD_KEY, || {
        let installed = Arc::new(Mutex::new(Vec::new()));
        let gauge = IntGaugeVec::new(
            Opts::new(
                "sluice_upstream_in_service",
                "1 while an upstream takes requests; 0 while it is ejected, held back by its Retry-After, failing its health check or awaiting its trial request",
            ),
            &["upstream"],
        )
        .map_err(|e| e.to_string())?;
        let collector = InServiceGauge {
            installed: installed.clone(),
            gauge,
            lock: Mutex::new(()),
        };
        shared
            .registry()
            .register(Box::new(collector))
            .map_err(|e| format!("sluice_upstream_in_service: {e}"))?;
        Ok(Board {
            installed,
            probes: probe::Probes::default(),
            runtime: OnceLock::new(),
        })
    })
}

impl Board {
    /// Lets the board run active health checks on `handle` (the gateway's control runtime).
    /// Without it (`sluice check`, an offline engine) none runs.
    pub fn attach_runtime(&self, handle: tokio::runtime::Handle) {
        let _ = self.runtime.set(handle);
    }

    /// The health of the upstream called `name`: the current generation's, or a fresh one.
    pub fn health_for(&self, name: &str) -> Arc<TargetHealth> {
        let installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        match installed.iter().find(|h| h.name() == name) {
            Some(h) => h.clone(),
            None => Arc::new(TargetHealth::new(name)),
        }
    }

    /// Makes a generation's upstreams the current ones (for the gauge) and starts, keeps or
    /// stops their active checks.
    pub fn install(&self, upstreams: &[UpstreamRt]) {
        {
            let mut installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
            *installed = upstreams.iter().map(|u| u.health.clone()).collect();
        }
        self.probes.sync(self.runtime.get(), upstreams);
    }
}

/// `sluice_upstream_in_service`, computed at each scrape from the installed upstreams' state,
/// so that the end of an ejection or of a `Retry-After` shows without an event, and an upstream
/// a reload removed disappears instead of staying frozen at its last value.
struct InServiceGauge {
    installed: Arc<Mutex<Vec<Arc<TargetHealth>>>>,
    gauge: IntGaugeVec,
    lock: Mutex<()>,
}

impl Collector for InServiceGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.gauge.reset();
        let now = Instant::now();
        let installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        for h in installed.iter() {
            let up = h.availability(now) == Avail::In;
            self.gauge.with_label_values(&[h.name()]).set(i64::from(up));
        }
        drop(installed);
        self.gauge.collect()
    }
}
