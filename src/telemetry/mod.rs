//! OpenTelemetry traces (`[telemetry]`, SPEC §7): a server span per request, named after its
//! route, with the GenAI attributes, and two children: `chain` (the request-phase filters) and
//! `upstream` (from the upstream request to the end of its answer). A client's W3C
//! `traceparent` is continued; the upstream receives one whose parent is the `upstream` span.
//!
//! ```text
//!  request path                       off it
//!  Call ── spans (SDK) ── on_end ──►  bounded queue ─► batch processor thread ─► OTLP/HTTP
//!                                     (drops, counted)   (protobuf, retries)      on the control
//!                                                                                 runtime (hyper)
//! ```
//!
//! Without `[telemetry]`, `EngineState::telemetry` is `None`, `Call::trace` stays `None` and
//! each hook is one untaken branch; `traceparent` and `tracestate` then pass upstream as the
//! client sent them, like any other header. No attribute carries a prompt, an answer, a key or
//! a path: only configured names (route, model, upstream, org), counts, codes and the request
//! id. `[telemetry]` is read at start; a reload that changes it says so and keeps the old one.

mod call;
mod config;
mod export;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanExporter,
};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounterVec, Opts, Registry};

pub use call::CallTrace;
pub use config::TelemetryConfig;

/// How long one export may take (its retries included) before its spans are given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the batch processor exports what has ended.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The largest batch one export request carries.
const MAX_BATCH: usize = 512;

/// The tracer provider of a running gateway: built once at start, flushed at shutdown.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// What it was started with (a reload cannot change it).
    pub config: TelemetryConfig,
}

impl Telemetry {
    /// Starts exporting to `cfg.otlp_endpoint`; HTTP requests run on `rt`. Registers
    /// `sluice_trace_spans_dropped_total` in `registry`.
    pub fn start(
        cfg: &TelemetryConfig,
        rt: tokio::runtime::Handle,
        registry: &Registry,
    ) -> Result<Telemetry, String> {
        let url = cfg.traces_url()?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "sluice_trace_spans_dropped_total",
                "Spans not exported: the export queue was full, or the collector did not take them",
            ),
            &["reason"],
        )
        .map_err(|e| format!("telemetry metrics: {e}"))?;
        registry
            .register(Box::new(dropped.clone()))
            .map_err(|e| format!("telemetry metrics: {e}"))?;
        for reason in ["queue_full", "export_failed"] {
            dropped.with_label_values(&[reason]);
        }
        let client = export::RuntimeClient {
            inner: opentelemetry_http::hyper::HyperClient::with_default_connector(
                EXPORT_TIMEOUT,
                None,
            ),
            rt,
        };
        let otlp = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
        let queue = Arc::new(export::Queue::default());
        let exporter = export::Counted {
            inner: otlp,
            queue: queue.clone(),
            dropped: dropped.clone(),
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(cfg.max_queue_spans)
            .with_max_export_batch_size(MAX_BATCH.min(cfg.max_queue_spans))
            .with_scheduled_delay(EXPORT_INTERVAL)
            .build();
        let processor = export::BoundedBatch {
            inner: BatchSpanProcessor::new(exporter, batch),
            queue,
            capacity: cfg.max_queue_spans,
            dropped,
        };
        tracing::info!(endpoint = %url, sample_ratio = cfg.sample_ratio, "exporting traces");
        Ok(Telemetry::build(cfg, processor))
    }

    /// A provider exporting each span as it ends to `exporter` (tests, embedders).
    pub fn with_exporter(
        cfg: &TelemetryConfig,
        exporter: impl SpanExporter + 'static,
    ) -> Telemetry {
        let processor = opentelemetry_sdk::trace::SimpleSpanProcessor::new(exporter);
        Telemetry::build(cfg, processor)
    }

    fn build(
        cfg: &TelemetryConfig,
        processor: impl opentelemetry_sdk::trace::SpanProcessor + 'static,
    ) -> Telemetry {
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.trim().to_string())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let scope = opentelemetry::InstrumentationScope::builder("sluice")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = provider.tracer_with_scope(scope);
        Telemetry {
            provider,
            tracer,
            config: cfg.clone(),
        }
    }

    /// Exports what is still queued and stops (blocking, bounded by the export timeout). Call
    /// it off the control runtime's threads: the export runs there.
    pub fn shutdown(&self) {
        if let Err(e) = self
            .provider
            .shutdown_with_timeout(EXPORT_TIMEOUT + Duration::from_secs(1))
        {
            tracing::warn!(error = %e, "traces: the last spans may not have been exported");
        }
    }
}

#[cfg(test)]
mod tests;
