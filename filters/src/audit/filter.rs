//! [`AuditFilter`]: builds each request's record and hands it to the writer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::metrics::{error_kind, AuditMetrics};
use super::record::AuditRecord;
use super::writer::{AuditWriter, SubmitError};
use super::{Fsync, OnError};
use crate::{Cx, Exchange, Filter, Reply, RequestHead, Verdict};

/// The shortest time shutdown gives the writer to flush a log that is failing.
const MIN_SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Set in `cx.extensions` by [`AuditFilter::on_request_head`] under `fsync = "always"`;
/// [`AuditFilter::on_response_complete`] sets it once it has handled the record, so that
/// `on_log` does not write a second one.
#[derive(Clone)]
struct Handled(Arc<AtomicBool>);

/// The `audit` filter of the chain.
pub struct AuditFilter {
    pub(super) writer: Arc<AuditWriter>,
    /// Every audit writer of the process (a reload may have moved the log): shutdown flushes
    /// them all.
    pub(super) all_writers: Vec<Arc<AuditWriter>>,
    pub(super) fsync: Fsync,
    pub(super) on_error: OnError,
    pub(super) write_timeout: Duration,
    pub(super) metrics: AuditMetrics,
    /// Under `fsync = "always"`: the last record not made durable in time (0: none). Until the
    /// writer has synced it, the trail counts as failing (a stalled disk is not reported as an
    /// error by the writer: it never returns).
    pub(super) missed: AtomicU64,
}

impl AuditFilter {
    /// The writer this filter feeds.
    pub fn writer(&self) -> &Arc<AuditWriter> {
        &self.writer
    }

    fn body(&self, cx: &Cx, ex: &Exchange) -> Option<Vec<u8>> {
        match AuditRecord::from_request(cx, ex).to_body() {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(target: "sluice::audit", request_id = %cx.request_id,
                    "audit record could not be serialized: {e}");
                self.metrics.write_error(error_kind::ENCODE);
                None
            }
        }
    }

    /// Queues a record and waits (up to `write_timeout_ms`, without starving the runtime)
    /// until the writer says it is durable. `Err`: it is not (why).
    fn write_durably(&self, body: Vec<u8>, cx: &Cx) -> Result<(), String> {
        let started = Instant::now();
        run_blocking(
            || match self.writer.submit_blocking(body, self.write_timeout) {
                Ok(seq) => {
                    let left = self.write_timeout.saturating_sub(started.elapsed());
                    self.writer.wait_durable(seq, left).map_err(|e| {
                        tracing::error!(target: "sluice::audit", request_id = %cx.request_id,
                            "audit record not durable in time; the response is not completed: {e}");
                        self.metrics.write_error(error_kind::DURABILITY_TIMEOUT);
                        self.missed.fetch_max(seq, Ordering::AcqRel);
                        e.to_string()
                    })
                }
                Err(e) => {
                    let why = e.reason().to_string();
                    self.keep_elsewhere(e);
                    Err(why)
                }
            },
        )
    }

    /// Why the trail cannot take records now, if it cannot: the writer is failing, or a record
    /// it took is still not durable after `write_timeout_ms` (a stalled disk).
    fn trail_error(&self) -> Option<String> {
        if !self.writer.is_healthy() {
            return Some(
                self.writer
                    .error()
                    .unwrap_or_else(|| "the audit log cannot be written".into()),
            );
        }
        let missed = self.missed.load(Ordering::Acquire);
        if missed == 0 {
            return None;
        }
        if self.writer.is_durable(missed) {
            // Caught up: forget it, unless a newer miss replaced it meanwhile.
            let _ = self
                .missed
                .compare_exchange(missed, 0, Ordering::AcqRel, Ordering::Acquire);
            return None;
        }
        Some(format!(
            "audit records are not durable within write_timeout_ms ({} ms)",
            self.write_timeout.as_millis()
        ))
    }

    /// A record the writer would not take goes to the process log, so that it is never lost
    /// silently (records hold no secrets, by construction).
    fn keep_elsewhere(&self, e: SubmitError) {
        let kind = match e {
            SubmitError::Full(_) => error_kind::QUEUE_FULL,
            SubmitError::Closed(_) => error_kind::CLOSED,
            SubmitError::Invalid(_) => error_kind::ENCODE,
        };
        let reason = e.reason();
        let body = e.into_body();
        tracing::error!(target: "sluice::audit", record = %String::from_utf8_lossy(&body),
            "audit record could not be queued ({reason}); it is kept here instead");
        self.metrics.write_error(kind);
    }
}

#[async_trait]
impl Filter for AuditFilter {
    fn name(&self) -> &str {
        "audit"
    }

    async fn on_request_head(&self, _head: &RequestHead<'_>, cx: &mut Cx) -> Verdict {
        if self.fsync == Fsync::Always {
            cx.extensions
                .insert(Handled(Arc::new(AtomicBool::new(false))));
        }
        if self.trail_error().is_none() {
            return Verdict::Continue;
        }
        self.metrics.write_error(error_kind::UNAVAILABLE);
        match self.on_error {
            OnError::FailOpen => Verdict::Continue,
            OnError::FailClosed => Reply::error(
                503,
                "audit_unavailable",
                "The audit log cannot be written, and this gateway does not serve calls it \
                 cannot record. Retry later; operators: see the gateway's logs and the audit \
                 path's disk.",
            )
            .with_header("retry-after", "1")
            .into(),
        }
    }

    /// Under `fsync = "always"`: writes the record and waits (up to `write_timeout_ms`) until
    /// it is durable, before the client can hold a complete response. If it is not durable in
    /// time, `Err`: the engine withholds the response's last byte. The miss is logged and
    /// counted as `sluice_audit_write_errors_total{kind="durability_timeout"}`; the writer still
    /// holds the record (it reaches the log once the disk takes it again).
    fn on_response_complete(&self, ex: &Exchange, cx: &Cx) -> Result<(), String> {
        if self.fsync != Fsync::Always {
            return Ok(());
        }
        if let Some(h) = cx.extensions.get::<Handled>() {
            // The engine calls this hook once; a second call must not write a second record.
            if h.0.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
        }
        match self.body(cx, ex) {
            Some(body) => self.write_durably(body, cx),
            None => Err("the audit record could not be serialized".into()),
        }
    }

    fn gates_completion(&self) -> bool {
        self.fsync == Fsync::Always
    }

    fn ready(&self) -> Result<(), String> {
        match (self.on_error, self.trail_error()) {
            (OnError::FailClosed, Some(why)) => Err(why),
            _ => Ok(()),
        }
    }

    async fn on_log(&self, ex: &Exchange, cx: &Cx) {
        if self.fsync == Fsync::Always {
            let handled = match cx.extensions.get::<Handled>() {
                Some(h) => h.0.load(Ordering::Acquire),
                // This filter's on_request_head did not run (an earlier filter answered from
                // the headers): the engine's flag says whether on_response_complete ran.
                None => cx.response_completed,
            };
            if handled {
                return;
            }
        }
        let Some(body) = self.body(cx, ex) else {
            return;
        };
        if let Err(e) = self.writer.submit(body, self.write_timeout).await {
            self.keep_elsewhere(e);
        }
    }

    async fn on_event(&self, cx: &Cx, ex: &Exchange) {
        let Some(body) = self.body(cx, ex) else {
            return;
        };
        if self.fsync == Fsync::Always {
            // An event (a key change) is already done; a miss is logged and counted.
            let _ = self.write_durably(body, cx);
        } else if let Err(e) = self.writer.submit(body, self.write_timeout).await {
            self.keep_elsewhere(e);
        }
    }

    async fn shutdown(&self) {
        let wait = self.write_timeout.max(MIN_SHUTDOWN_WAIT);
        for w in &self.all_writers {
            let complete = run_blocking(|| w.shutdown(wait));
            if !complete {
                tracing::error!(target: "sluice::audit", path = %w.path(),
                    "audit log not completely flushed at shutdown; the records that could not \
                     be written are in this process log");
            }
        }
    }
}

/// Runs a blocking wait without starving the async runtime: on a multi-thread Tokio runtime
/// (Pingora's default) the worker hands its other tasks off first; elsewhere (a current-thread
/// runtime, or no runtime) it simply blocks, which is all that can be done.
fn run_blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
