//! The audit log's metrics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

use crate::Shared;

/// The `kind` label values of `sluice_audit_write_errors_total`.
pub mod error_kind {
    /// A write, fsync, open or rotation of the log failed (counted per attempt; the writer
    /// retries while it keeps the records).
    pub const IO: &str = "io";
    /// A record was not accepted within `write_timeout_ms` because the queue stayed full; it
    /// went to the process log (tracing, level error) instead.
    pub const QUEUE_FULL: &str = "queue_full";
    /// `fsync = "always"`: a record was accepted but not confirmed durable within
    /// `write_timeout_ms` before its response completed.
    pub const DURABILITY_TIMEOUT: &str = "durability_timeout";
    /// A request arrived while the log could not be written (answered 503 under
    /// `on_error = "fail_closed"`, served under `"fail_open"`).
    pub const UNAVAILABLE: &str = "unavailable";
    /// A record arrived after shutdown, or could still not be written when shutdown gave up; it
    /// went to the process log instead.
    pub const CLOSED: &str = "closed";
    /// A record could not be serialized (not expected: records hold only strings and numbers).
    pub const ENCODE: &str = "encode";

    pub const ALL: [&str; 6] = [
        IO,
        QUEUE_FULL,
        DURABILITY_TIMEOUT,
        UNAVAILABLE,
        CLOSED,
        ENCODE,
    ];
}

/// `sluice_audit_records_total`, `sluice_audit_queue_depth`, `sluice_audit_queue_capacity`,
/// `sluice_audit_write_errors_total{kind}`.
#[derive(Clone)]
pub struct AuditMetrics {
    records: IntCounter,
    queue_depth: IntGauge,
    queue_capacity: IntGauge,
    write_errors: IntCounterVec,
}

impl AuditMetrics {
    /// The metrics registered in the engine's registry (once per process: a reload gets the same
    /// ones back).
    pub fn register(shared: &Shared) -> prometheus::Result<AuditMetrics> {
        let m = AuditMetrics::detached()?;
        let records = shared.metric("sluice_audit_records_total", || Ok(m.records))?;
        let queue_depth = shared.metric("sluice_audit_queue_depth", || Ok(m.queue_depth))?;
        let queue_capacity =
            shared.metric("sluice_audit_queue_capacity", || Ok(m.queue_capacity))?;
        let write_errors =
            shared.metric("sluice_audit_write_errors_total", || Ok(m.write_errors))?;
        Ok(AuditMetrics {
            records: (*records).clone(),
            queue_depth: (*queue_depth).clone(),
            queue_capacity: (*queue_capacity).clone(),
            write_errors: (*write_errors).clone(),
        })
    }

    /// Metrics not registered anywhere (benchmarks, embedders that export their own).
    pub fn detached() -> prometheus::Result<AuditMetrics> {
        let write_errors = IntCounterVec::new(
            Opts::new(
                "sluice_audit_write_errors_total",
                "Audit log failures: I/O errors of the writer, and records that could not be \
                 queued or confirmed durable in time",
            ),
            &["kind"],
        )?;
        for kind in error_kind::ALL {
            write_errors.with_label_values(&[kind]);
        }
        Ok(AuditMetrics {
            records: IntCounter::new(
                "sluice_audit_records_total",
                "Audit records written to the log",
            )?,
            queue_depth: IntGauge::new(
                "sluice_audit_queue_depth",
                "Audit records waiting for the writer",
            )?,
            queue_capacity: IntGauge::new(
                "sluice_audit_queue_capacity",
                "Records the audit queue holds before requests wait for room (audit.queue_capacity)",
            )?,
            write_errors,
        })
    }

    pub(crate) fn set_queue_capacity(&self, n: usize) {
        self.queue_capacity
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn record_written(&self, n: u64) {
        self.records.inc_by(n);
    }

    pub(crate) fn queue_add(&self, n: i64) {
        self.queue_depth.add(n);
    }

    pub(crate) fn write_error(&self, kind: &str) {
        self.write_errors.with_label_values(&[kind]).inc();
    }

    pub(crate) fn write_errors(&self, kind: &str, n: u64) {
        self.write_errors.with_label_values(&[kind]).inc_by(n);
    }
}
