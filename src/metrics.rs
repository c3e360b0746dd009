//! The engine's Prometheus metrics (SPEC §7), on a registry the gateway owns.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry,
};

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
        registry.register(Box::new(m.config_reloads.clone()))?;
        Ok(m)
    }
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
