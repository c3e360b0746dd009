//! The engine's Prometheus metrics (SPEC §7), on a registry the gateway owns.
//!
//! Every labelled series of a configured value exists from the first scrape, at zero
//! ([`EngineMetrics::preinit`]): a counter that appears only with its first event is invisible
//! to `rate()` and `increase()` for that event, so a dashboard shows "no data" and an alert on
//! the first upstream error never fires.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry,
};
use sluice_filters::{glob_match, Outcome, Route};

use crate::config::Config;

/// The `kind` label values of `sluice_upstream_errors_total`.
pub mod upstream_error_kind {
    /// Connect, response-head or body read/write timed out.
    pub const TIMEOUT: &str = "timeout";
    /// Connection refused, no route, or another connect failure.
    pub const CONNECT: &str = "connect";
    /// TLS handshake or certificate verification failed.
    pub const TLS: &str = "tls";
    /// The upstream failed after the client had received part of the answer.
    pub const MID_STREAM: &str = "mid_stream";
    /// The connection was reset or closed before an answer.
    pub const RESET: &str = "reset";

    pub const ALL: [&str; 5] = [TIMEOUT, CONNECT, TLS, MID_STREAM, RESET];
}

/// The `kind` label values of `sluice_tokens_total`.
pub mod token_kind {
    pub const PROMPT: &str = "prompt";
    pub const COMPLETION: &str = "completion";
    pub const ALL: [&str; 2] = [PROMPT, COMPLETION];
}

/// The `status` and `outcome` pairs of `sluice_requests_total` pre-initialised for every
/// configured model on each route that carries one: the answers a model's requests commonly
/// end with.
const MODEL_ANSWERS: [(&str, Outcome); 9] = [
    ("200", Outcome::Ok),
    ("200", Outcome::ClientClosed),
    ("400", Outcome::BadRequest),
    ("400", Outcome::DlpBlocked),
    ("403", Outcome::DeniedPermission),
    ("429", Outcome::RateLimited),
    ("500", Outcome::InternalError),
    ("502", Outcome::UpstreamError),
    ("504", Outcome::UpstreamError),
];

/// The pairs pre-initialised with an empty `model` on every route: what is answered before a
/// model is known (no key, a bad body, an unknown model or route).
const UNROUTED_ANSWERS: [(&str, Outcome); 5] = [
    ("200", Outcome::Ok),
    ("400", Outcome::BadRequest),
    ("401", Outcome::DeniedAuth),
    ("404", Outcome::BadRequest),
    ("500", Outcome::InternalError),
];

/// The `status` label values of `sluice_agent_runs_total`.
const AGENT_RUN_STATUSES: [&str; 3] = ["completed", "failed", "queued"];

/// Engine metrics. Labels are bounded: routes and outcomes are enums, models and orgs come from
/// the config (anything else is `other`), upstreams are configured names.
#[derive(Clone)]
pub struct EngineMetrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub overhead: Histogram,
    pub ttft: HistogramVec,
    pub tokens: IntCounterVec,
    pub active_streams: IntGauge,
    pub upstream_errors: IntCounterVec,
    /// Every upstream attempt by how it ended (`crate::upstream::AttemptResult`); the
    /// `sluice_upstream_in_service` gauge is computed at scrape time by `crate::upstream`.
    pub upstream_attempts: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub agent_runs: IntCounterVec,
}

impl EngineMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<EngineMetrics> {
        let latency = exponential_buckets(0.001, 2.0, 16)?;
        let fine = exponential_buckets(0.000_005, 2.0, 20)?;
        let m = EngineMetrics {
            requests: IntCounterVec::new(
                Opts::new("sluice_requests_total", "Requests by route, model, status and outcome"),
                &["route", "model", "status", "outcome"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new("sluice_request_duration_seconds", "Time from request arrival to last byte sent")
                    .buckets(latency.clone()),
                &["route"],
            )?,
            upstream_duration: HistogramVec::new(
                HistogramOpts::new("sluice_upstream_duration_seconds", "Time from upstream request to its last byte")
                    .buckets(latency.clone()),
                &["upstream"],
            )?,
            overhead: Histogram::with_opts(
                HistogramOpts::new(
                    "sluice_overhead_seconds",
                    "Time spent in Sluice itself: before the upstream request is sent plus response processing",
                )
                .buckets(fine),
            )?,
            ttft: HistogramVec::new(
                HistogramOpts::new("sluice_time_to_first_token_seconds", "Time from request arrival to the first streamed event sent")
                    .buckets(latency),
                &["model"],
            )?,
            tokens: IntCounterVec::new(
                Opts::new("sluice_tokens_total", "Tokens reported by upstreams"),
                &["model", "org", "kind"],
            )?,
            active_streams: IntGauge::new("sluice_active_streams", "Streamed responses in flight")?,
            upstream_errors: IntCounterVec::new(
                Opts::new("sluice_upstream_errors_total", "Upstream failures by kind"),
                &["upstream", "kind"],
            )?,
            upstream_attempts: IntCounterVec::new(
                Opts::new(
                    "sluice_upstream_attempts_total",
                    "Upstream attempts by how they ended (a retried request counts each attempt)",
                ),
                &["upstream", "result"],
            )?,
            config_reloads: IntCounterVec::new(
                Opts::new("sluice_config_reloads_total", "Config reloads by result"),
                &["result"],
            )?,
            agent_runs: IntCounterVec::new(
                Opts::new("sluice_agent_runs_total", "Agent runs by agent and status"),
                &["agent", "status"],
            )?,
        };
        registry.register(Box::new(m.agent_runs.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.upstream_duration.clone()))?;
        registry.register(Box::new(m.overhead.clone()))?;
        registry.register(Box::new(m.ttft.clone()))?;
        registry.register(Box::new(m.tokens.clone()))?;
        registry.register(Box::new(m.active_streams.clone()))?;
        registry.register(Box::new(m.upstream_errors.clone()))?;
        registry.register(Box::new(m.upstream_attempts.clone()))?;
        registry.register(Box::new(m.config_reloads.clone()))?;
        Ok(m)
    }
}

impl EngineMetrics {
    /// Creates, at zero, the series of every configured value: routes (all of [`Route::all`]),
    /// models on the routes that carry one, upstreams with each error kind and attempt result, the models each
    /// org may use, agents, and reload results. Called at start and after each reload (series
    /// of values a reload removed stay, frozen, as Prometheus expects of a counter).
    ///
    /// Bounded by the config: `sluice_requests_total` holds at most
    /// `routes × (9 × models + 5)` pre-initialised series.
    pub fn preinit(&self, config: &Config) {
        self.preinit_requests(config);
        for m in &config.models {
            self.ttft.with_label_values(&[&m.name]);
        }
        for u in &config.upstreams {
            self.upstream_duration.with_label_values(&[&u.name]);
            for kind in upstream_error_kind::ALL {
                self.upstream_errors.with_label_values(&[&u.name, kind]);
            }
            for result in crate::upstream::AttemptResult::ALL {
                self.upstream_attempts
                    .with_label_values(&[&u.name, result.label()]);
            }
        }
        for (model, org) in token_series(config) {
            for kind in token_kind::ALL {
                self.tokens.with_label_values(&[model, org, kind]);
            }
        }
        for a in &config.agents {
            for status in AGENT_RUN_STATUSES {
                self.agent_runs.with_label_values(&[&a.id, status]);
            }
        }
        for result in ["ok", "error"] {
            self.config_reloads.with_label_values(&[result]);
        }
    }

    fn preinit_requests(&self, config: &Config) {
        for route in Route::all() {
            let label = route.label();
            self.request_duration.with_label_values(&[label]);
            for (status, outcome) in UNROUTED_ANSWERS {
                self.requests
                    .with_label_values(&[label, "", status, outcome.as_str()]);
            }
            for model in route_models(config, route) {
                for (status, outcome) in MODEL_ANSWERS {
                    self.requests
                        .with_label_values(&[label, model, status, outcome.as_str()]);
                }
            }
        }
    }
}

/// The configured models a route's requests can carry: none for the routes that reach no
/// model ([`Route::reaches_model`]), the agents' models for agent runs, every model otherwise.
fn route_models(config: &Config, route: Route) -> Vec<&str> {
    match route {
        _ if !route.reaches_model() => Vec::new(),
        Route::AgentRun => {
            let mut models: Vec<&str> = config.agents.iter().map(|a| a.model.as_str()).collect();
            models.sort_unstable();
            models.dedup();
            models
        }
        _ => config.models.iter().map(|m| m.name.as_str()).collect(),
    }
}

/// The `(model, org)` pairs of `sluice_tokens_total` that can occur: with an `auth` filter,
/// each org with the models its users' roles may use; without one, every model with an empty
/// org (requests carry no identity).
fn token_series(config: &Config) -> Vec<(&str, &str)> {
    let has_auth = config
        .filters
        .iter()
        .any(|f| f.get("type").and_then(|t| t.as_str()) == Some("auth"));
    if !has_auth {
        return config
            .models
            .iter()
            .map(|m| (m.name.as_str(), ""))
            .collect();
    }
    let mut out = Vec::new();
    for org in &config.orgs {
        let roles: Vec<&str> = config
            .users
            .iter()
            .filter(|u| u.org == org.name)
            .map(|u| u.role.as_str())
            .collect();
        let globs: Vec<&str> = config
            .roles
            .iter()
            .filter(|r| roles.contains(&r.name.as_str()))
            .flat_map(|r| r.models.iter().map(String::as_str))
            .collect();
        for m in &config.models {
            if globs.iter().any(|g| glob_match(g, &m.name)) {
                out.push((m.name.as_str(), org.name.as_str()));
            }
        }
    }
    out
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every engine route is in [`Route::ENGINE`]: the match is exhaustive, so a variant added
    /// to the enum does not compile here until it is listed there (and its series are
    /// pre-initialised).
    fn engine_position(route: Route) -> Option<usize> {
        let i = match route {
            Route::Api(_) => return None,
            Route::ListModels => 0,
            Route::GetModel => 1,
            Route::AgentRun => 2,
            Route::AgentRunStatus => 3,
            Route::Passthrough => 4,
            Route::Unknown => 5,
            Route::Keys => 6,
            Route::Key => 7,
            Route::Root => 8,
            Route::Mcp => 9,
            Route::Usage => 10,
        };
        Some(i)
    }

    #[test]
    fn route_all_lists_every_route_once_with_its_own_label() {
        for (i, route) in Route::ENGINE.into_iter().enumerate() {
            assert_eq!(engine_position(route), Some(i), "{route:?}");
        }
        let labels: std::collections::BTreeSet<&str> = Route::all().map(|r| r.label()).collect();
        let count = Route::all().count();
        assert_eq!(labels.len(), count);
        assert_eq!(
            count,
            Route::ENGINE.len() + sluice_filters::api::GOVERNED.len()
        );
    }
}
