//! The engine's shared state: one config generation ([`Snapshot`]: the config, its chain and
//! its routing tables) and what outlives generations ([`EngineState`]: metrics, the filters'
//! shared resources, agent runs, the drain counters).
//!
//! Each request snapshots the current [`Snapshot`] (`ArcSwap`), so a reload never changes a
//! request mid-flight. This module imports neither the start-up code nor the proxy: both build
//! on it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_filters::{ConfigError, Shared};

use crate::agents::AgentRuns;
use crate::chain::{Chain, FilterTypes};
use crate::config::{Config, ConfigErrors};
use crate::metrics::EngineMetrics;
use crate::upstream::UpstreamRt;

/// One config generation: the config, its chain and its routing tables.
pub struct Snapshot {
    pub config: Config,
    pub chain: Chain,
    pub upstreams: Vec<UpstreamRt>,
    /// Model name → index in `config.models` and `routes`.
    pub models: HashMap<String, usize>,
    /// Each model's targets (parallel to `config.models`).
    pub routes: Vec<crate::upstream::ModelTargets>,
    /// Prices finished requests and counts their spend (SPEC §15).
    pub spend: sluice_filters::spend::SpendMetrics,
    /// Where a request that names no model goes: the first upstream.
    pub default_route: crate::upstream::ModelTargets,
    /// Redacts findings in the fields a client chose before anything records them.
    pub scrubber: Arc<sluice_filters::dlp::FieldScrubber>,
    /// The `[[mcp_servers]]`, resolved (SPEC §16).
    pub mcp: crate::mcp::McpServers,
}

impl Snapshot {
    pub(crate) fn build(
        mut config: Config,
        types: &FilterTypes,
        shared: &Shared,
        mock_addr: Option<SocketAddr>,
    ) -> Result<Snapshot, ConfigErrors> {
        // Built when the config was loaded; again only if an embedder changed them since.
        config.refresh_sections()?;
        let Some(scrubber) = config.dlp_built().map(|d| d.scrubber().clone()) else {
            return Err(ConfigErrors::one("dlp", "not built"));
        };
        let mut errs: Vec<ConfigError> = Vec::new();
        let board = crate::upstream::board(shared)
            .map_err(|m| ConfigErrors(vec![ConfigError::new("upstreams", m)]))?;
        let mut upstreams = Vec::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            // Parsed, resolved and read when the config was loaded: not again here.
            let checked = config.checked_upstream(i);
            let health = board.health_for(&u.name);
            let at = format!("upstreams[{i}]");
            if let Some(rt) = UpstreamRt::build(&at, u, &checked, mock_addr, health, &mut errs) {
                upstreams.push(rt);
            }
        }
        let mut models = HashMap::new();
        let mut routes = Vec::with_capacity(config.models.len());
        for (i, m) in config.models.iter().enumerate() {
            let route = crate::upstream::ModelTargets::build(&m.target_list(), &upstreams);
            if !route.targets.is_empty() {
                models.insert(m.name.clone(), i);
            }
            routes.push(route);
        }
        let default_route = crate::upstream::ModelTargets::first_upstream(&upstreams);
        let mcp = crate::mcp::McpServers::build(&config, &mut errs);
        let chain = match Chain::build(&config, types, shared) {
            Ok(c) => Some(c),
            Err(e) => {
                errs.extend(e);
                None
            }
        };
        let orgs: Vec<&str> = config.orgs.iter().map(|o| o.name.as_str()).collect();
        let names: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
        let spend =
            sluice_filters::spend::SpendMetrics::register(shared, &orgs, &config.prices, &names)
                .map_err(|e| ConfigError::new("models", format!("spend metrics: {e}")));
        let spend = match spend {
            Ok(s) => Some(s),
            Err(e) => {
                errs.push(e);
                None
            }
        };
        match (chain, spend) {
            (Some(chain), Some(spend)) if errs.is_empty() => {
                board.install(&upstreams);
                Ok(Snapshot {
                    scrubber,
                    config,
                    chain,
                    upstreams,
                    models,
                    routes,
                    spend,
                    default_route,
                    mcp,
                })
            }
            _ => Err(ConfigErrors(errs)),
        }
    }
}

/// What the proxy and the admin listener share.
pub struct EngineState {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: EngineMetrics,
    pub shared: Arc<Shared>,
    pub types: FilterTypes,
    pub mock_addr: Option<SocketAddr>,
    pub config_path: Option<PathBuf>,
    pub inflight: AtomicUsize,
    pub draining: AtomicBool,
    /// Set once the gateway has fully started (signal handlers included).
    pub ready: AtomicBool,
    /// A random token that lets `start` recognise its own listener.
    pub probe_token: String,
    pub runs: AgentRuns,
    /// The key store and the memory that serves it (`[store]`).
    pub store: Arc<crate::store::StoreRuntime>,
    /// Traces (`[telemetry]`), as started; `None`: off.
    pub telemetry: Option<crate::telemetry::Telemetry>,
}

impl EngineState {
    /// The state of a gateway that serves no listener: one config generation, its metrics, the
    /// agent runs and the key store, for driving the request pipeline directly (its unit tests,
    /// the fuzz targets, an embedder's own front end).
    pub async fn offline(config: Config, types: FilterTypes) -> Result<Arc<EngineState>, String> {
        let registry = prometheus::Registry::new();
        let metrics = EngineMetrics::register(&registry).map_err(|e| format!("metrics: {e}"))?;
        let shared = Arc::new(Shared::new(registry));
        let snap = Snapshot::build(config, &types, &shared, None).map_err(|e| e.to_string())?;
        metrics.preinit(&snap.config);
        let store = crate::store::StoreRuntime::open(&snap.config.store, &shared)
            .await
            .map_err(|e| format!("store.url: {e}"))?;
        Ok(Arc::new(EngineState {
            snapshot: ArcSwap::from_pointee(snap),
            metrics,
            shared,
            types,
            mock_addr: None,
            config_path: None,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(true),
            probe_token: String::new(),
            runs: AgentRuns::new(store.clone()),
            store,
            telemetry: None,
        }))
    }

    /// Loads the config again (from its file, or `next` when given) and swaps it in when valid.
    pub fn reload(&self, next: Option<Config>) -> Result<(), ConfigErrors> {
        let config = match next {
            Some(c) => c,
            None => match &self.config_path {
                Some(p) => match Config::load_owned(p, &|s| self.types.claims(s)) {
                    Ok(c) => c,
                    Err(e) => return Err(self.rejected(e)),
                },
                None => {
                    return Err(ConfigErrors(vec![ConfigError::new(
                        "config",
                        "this gateway was built from a value, not a file",
                    )]))
                }
            },
        };
        let old = self.snapshot.load();
        if config.store != old.config.store {
            tracing::warn!("store settings take effect only after a restart");
        }
        if config.identity != old.config.identity {
            tracing::warn!("[identity] settings take effect only after a restart");
        }
        let traced = self.telemetry.as_ref().map(|t| &t.config);
        if config.telemetry.as_ref() != traced {
            tracing::warn!("telemetry settings take effect only after a restart");
        }
        if config.server.listen != old.config.server.listen
            || config.server.admin_listen != old.config.server.admin_listen
        {
            tracing::warn!(
                "server.listen and server.admin_listen take effect only after a restart"
            );
        }
        match Snapshot::build(config, &self.types, &self.shared, self.mock_addr) {
            Ok(s) => {
                // The new config's series exist before its first request is counted.
                self.metrics.preinit(&s.config);
                self.snapshot.store(Arc::new(s));
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!("config reloaded");
                Ok(())
            }
            Err(e) => Err(self.rejected(e)),
        }
    }

    /// Logs and counts a rejected reload; the running config stays.
    fn rejected(&self, e: ConfigErrors) -> ConfigErrors {
        self.metrics
            .config_reloads
            .with_label_values(&["error"])
            .inc();
        for err in &e.0 {
            tracing::error!(error = %err, "config reload rejected; keeping the running config");
        }
        e
    }
}

/// Counts a request as in flight for the graceful drain.
pub struct InflightGuard(Arc<EngineState>);

impl InflightGuard {
    pub fn new(state: &Arc<EngineState>) -> InflightGuard {
        state.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(state.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_filters::dlp::compiles_on_this_thread;
    use sluice_filters::policy::checks_on_this_thread;

    const CONFIG: &str = r#"
[server]
[[upstreams]]
name = "up"
url = "http://127.0.0.1:9"
[[orgs]]
name = "o"
[[roles]]
name = "r"
permissions = ["chat"]
[[users]]
name = "u"
org = "o"
role = "r"
[[keys]]
id = "k"
user = "u"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
[[filters]]
type = "auth"
[[filters]]
type = "rate_limit"
[[dlp.rules]]
name = "ticket"
regex = "TICKET-[0-9]{6}"
[[dlp.allow]]
value = "TICKET-000000"
[[filters]]
type = "dlp"
"#;

    fn snapshot(config: Config) -> Snapshot {
        let shared = Shared::new(prometheus::Registry::new());
        Snapshot::build(config, &FilterTypes::default(), &shared, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `[dlp]` is compiled by loading (its check) and nowhere else: the `dlp` filter and the
    /// field scrubber of the snapshot take what the load compiled. The policy likewise is
    /// checked once, and the auth filter takes that check.
    #[test]
    fn one_load_builds_each_section_once() {
        let (compiles, checks) = (compiles_on_this_thread(), checks_on_this_thread());
        let config = Config::parse(CONFIG).unwrap_or_else(|e| panic!("{e}"));
        let snap = snapshot(config);
        assert_eq!(compiles_on_this_thread() - compiles, 1);
        assert_eq!(checks_on_this_thread() - checks, 1);
        let built = snap.config.dlp_built().unwrap_or_else(|| panic!("built"));
        assert!(Arc::ptr_eq(snap.scrubber.scanner(), built.scanner()));
        assert!(snap.scrubber.finds("see TICKET-123456"));
        assert!(!snap.scrubber.finds("see TICKET-000000"));
    }

    /// An embedder that changes a loaded config's section gets it built again, once.
    #[test]
    fn a_changed_section_is_built_again() {
        let mut config = Config::parse(CONFIG).unwrap_or_else(|e| panic!("{e}"));
        config.dlp.rules.clear();
        config.dlp.allow.clear();
        config.roles[0].permissions.push("embeddings".into());
        let (compiles, checks) = (compiles_on_this_thread(), checks_on_this_thread());
        let snap = snapshot(config);
        assert_eq!(compiles_on_this_thread() - compiles, 1);
        assert_eq!(checks_on_this_thread() - checks, 1);
        assert!(!snap.scrubber.finds("see TICKET-123456"));

        let mut config = Config::parse(CONFIG).unwrap_or_else(|e| panic!("{e}"));
        config.dlp.rules[0].regex = Some("[".into());
        let err = Snapshot::build(
            config,
            &FilterTypes::default(),
            &Shared::new(prometheus::Registry::new()),
            None,
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("dlp.rules[0].regex: unclosed character class")
        );
    }
}
