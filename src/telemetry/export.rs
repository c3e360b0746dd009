//! How ended spans leave the process: the SDK's batch processor (its own thread), behind a
//! bounded queue of ours that counts what it drops, exporting through the OTLP/HTTP exporter
//! whose requests run on the control runtime.
//!
//! The request path only ever does `on_end`: two atomic operations and a non-blocking channel
//! send. A collector that is slow or down holds up the exporter's thread, never a request.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::IntCounterVec;

/// Sends the exporter's HTTP requests on a tokio runtime (the control runtime): the batch
/// processor's thread blocks on the result, the runtime does the I/O.
pub(crate) struct RuntimeClient {
    pub(crate) inner: opentelemetry_http::hyper::HyperClient,
    pub(crate) rt: tokio::runtime::Handle,
}

impl fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RuntimeClient")
    }
}

#[async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.inner.clone();
        self.rt
            .spawn(async move { client.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as HttpError)?
    }
}

/// Spans handed to the batch processor and not yet taken by an export.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pending: AtomicUsize,
}

/// The batch processor behind a bound of ours: a span over it is dropped and counted here, so
/// the processor's own queue (as large) never fills.
#[derive(Debug)]
pub(crate) struct BoundedBatch {
    pub(crate) inner: BatchSpanProcessor,
    pub(crate) queue: Arc<Queue>,
    pub(crate) capacity: usize,
    pub(crate) dropped: IntCounterVec,
}

impl SpanProcessor for BoundedBatch {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queue.pending.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queue.pending.fetch_sub(1, Ordering::AcqRel);
            self.dropped.with_label_values(&["queue_full"]).inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, releasing the queue's places as batches leave it and counting the spans
/// of batches the collector did not take (after the exporter's own retries).
#[derive(Debug)]
pub(crate) struct Counted<E> {
    pub(crate) inner: E,
    pub(crate) queue: Arc<Queue>,
    pub(crate) dropped: IntCounterVec,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.queue.pending.fetch_sub(n, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.dropped
                .with_label_values(&["export_failed"])
                .inc_by(n as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
