//! The `audit` filter: one hash-chained JSON Lines record per request, whatever its outcome.
//!
//! # Records
//!
//! Every request gets exactly one line in the log — served, refused by auth, permissions, rate
//! limits or DLP, malformed, failed upstream, abandoned by the client — with the fields of
//! SPEC §6 in this order, absent fields left out:
//!
//! `ts` (arrival, RFC 3339 UTC with milliseconds), `request_id`, `key_id`, `user`, `org`,
//! `role`, `client_ip`, `method`, `path`, `model`, `agent_id`, `stream`, `status` (absent when
//! the client received none), `outcome`, `latency_ms`, `upstream_ms`, `upstream` (the one that
//! answered, or the last tried), `attempts` (upstream attempts, retries included), `usage`
//! (`prompt_tokens`, `completion_tokens`), `dlp` (`[{detector, direction, action, count}]`),
//! `user_agent`, then `prev` and `hash`.
//!
//! A record never holds a key (only the key's configured id), a body, or text a DLP detector
//! matched. Client-controlled strings are cut to [`MAX_FIELD_BYTES`]. Numbers are integers; no
//! floats, so that every language serializes them alike. Records are in the order they were
//! completed, so `ts` (the arrival time) is not monotonic.
//!
//! # Canonical JSON and the hash chain
//!
//! The *canonical JSON* of a record is the JSON object of its fields in the order above, with
//! no whitespace, strings escaped as `serde_json` escapes them (`"` `\` and control characters
//! only: `\b \f \n \r \t`, others as `\u00XX` in lowercase hex; everything else, non-ASCII
//! included, as raw UTF-8) — which is exactly Python's
//! `json.dumps(obj, separators=(",", ":"), ensure_ascii=False)` on the parsed object.
//!
//! `hash = hex(sha256(prev + canonical JSON of the record without "hash"))`, where `prev` is the
//! previous record's `hash` (64 zeros for the first record of a log) and appears both as the
//! hash input's prefix and as the record's own `prev` field. Each line is the canonical JSON of
//! the record *with* `hash` (always the last field), then `\n`. An auditor can re-implement
//! `sluice audit verify` without Sluice:
//!
//! ```python
//! import hashlib, json, sys
//! prev, n = "0" * 64, 0
//! for name in sys.argv[1:]:                      # oldest rotated file first
//!     for i, line in enumerate(open(name, "rb"), 1):
//!         try: rec = json.loads(line)
//!         except ValueError: print(f"{name}:{i}: torn line, skipped"); continue
//!         h = rec.pop("hash")
//!         canon = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)
//!         assert hashlib.sha256((rec["prev"] + canon).encode()).hexdigest() == h, f"{name}:{i}: edited"
//!         assert rec["prev"] == prev, f"{name}:{i}: deleted, inserted or reordered"
//!         prev, n = h, n + 1
//! print(f"ok: {n} records")
//! ```
//!
//! [`verify`] does the same and reports, for the first bad line, why: an edited record (hash
//! mismatch), a deleted, inserted or reordered one (prev mismatch), a missing head (the first
//! record does not start at 64 zeros). A line that is not JSON is a record torn by a crash
//! mid-write: it is reported as a warning and skipped, and the records around it must still
//! chain; a torn last line therefore still verifies (exit 0). What a chain cannot show alone is
//! the removal of the *last* records: keep the reported last hash elsewhere (a ticket, another
//! system's log) to anchor it.
//!
//! # Durability
//!
//! One writer thread per log owns the file, fed by a bounded queue ([`AuditWriter`]). It takes
//! everything queued at once, chains and writes it with one `write`, and syncs per
//! [`Fsync`]:
//!
//! - `always`: one `fdatasync` per batch (group commit). The record is written in
//!   [`Filter::on_response_complete`], which the engine calls just before the last bytes of a
//!   response (or a local reply) go out: the filter queues the record and waits — up to
//!   `write_timeout_ms` — for the writer to confirm it is on disk. A client that has a complete
//!   response therefore has a durable record, even if the process is killed the next instant.
//!   (We chose this over write-ahead "begin" records: one record per request, and the wait is
//!   shared by every request in the batch.) If the confirmation does not come in time the
//!   response still goes out — it is already formed — and the miss is logged and counted
//!   (`kind="durability_timeout"`); the writer still holds the record. Requests that never
//!   complete (the client went away) are written from `on_log`. So that `on_log` does not write
//!   a second record, the filter marks the request in `on_request_head`, and for requests an
//!   earlier filter refused from the headers (this filter's `on_request_head` never ran) it
//!   relies on [`Cx::response_completed`](crate::Cx::response_completed), which the engine
//!   sets after running `on_response_complete`.
//! - `interval`: each batch is written as it comes and synced at most `fsync_interval_ms`
//!   after its first unsynced line: a crash of the machine loses at most that interval (a crash
//!   of the process alone loses only what was still queued: the writer lets records gather for
//!   up to 1 ms before writing a batch, 5 ms while busy, never longer than the interval, so
//!   about that much).
//! - `never`: written as it comes; syncing is left to the OS.
//!
//! Every mode syncs on rotation and at shutdown: [`Filter::shutdown`] (after the engine drained
//! in-flight requests on SIGTERM) writes and syncs everything queued.
//!
//! # Back-pressure and failures
//!
//! A full queue makes the request path wait, up to `write_timeout_ms`; records are never
//! dropped to make room. A record still not accepted after that (or one that arrives after
//! shutdown) is logged in full at level error on the process log (target `sluice::audit`) and
//! counted, never dropped silently.
//!
//! When the log cannot be written (cannot be created or opened, a write or fsync fails, another
//! process holds its lock), the writer keeps every record it accepted, retries every 250 ms and
//! reports itself unhealthy. Meanwhile, with `on_error = "fail_closed"` (the default), new
//! requests are answered `503` with code `audit_unavailable`: Sluice does not serve calls it
//! cannot record. With `"fail_open"` they are served. Both count
//! `sluice_audit_write_errors_total{kind="unavailable"}`. Once the log is writable again the
//! held records are written in order, the chain intact. (After a failed `fsync`, Linux may have
//! dropped the unsynced pages; the writer cannot know, and the next successful sync is trusted.)
//!
//! # Restarts, torn lines, locking
//!
//! On startup the writer continues the chain from the last complete record of the active file
//! (or, if that holds none, of the newest rotated file). A torn last line left by a crash is
//! never truncated — it is evidence — the next record starts on a new line, and verify reports
//! it. A lock on `<dir>/.<file>.lock` keeps a second process from writing the same log (which
//! would fork the chain); a second writer waits, unhealthy, until the first exits.
//!
//! # Rotation
//!
//! With `max_file_bytes`, the active file is rotated before a record would make it larger:
//! synced, renamed to `<path>.000001`, `.000002`, … (numbers only grow and are never reused, so a
//! shell glob lists them in order) and a new file started whose first record's `prev` is the
//! last hash of the previous file. Verify the whole log with
//! `sluice audit verify audit/audit.jsonl.* audit/audit.jsonl`. A file verified alone, without
//! its predecessors, reports a missing head (exit 1): its records are intact, but what came
//! before cannot be checked; [`ChainStart::After`] (the last hash of an earlier verification)
//! verifies a newer file on its own. A record larger than `max_file_bytes` gets a file to itself.
//!
//! # stdout
//!
//! `path = "-"` writes to stdout (and a pipe or device path is written as a stream): the chain
//! is computed the same way but starts afresh at each start of the process, there is no
//! rotation and syncing means flushing. The process log must then go to stderr.
//!
//! # Metrics
//!
//! `sluice_audit_records_total` (records written), `sluice_audit_queue_depth` (records
//! waiting), `sluice_audit_queue_capacity` (`queue_capacity`, for a "queue filling" alert),
//! `sluice_audit_write_errors_total{kind}` (see [`metrics::error_kind`]).

mod filter;
pub mod metrics;
mod record;
mod sink;
mod verify;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, ConfigErrors, Section};
use crate::policy::Policy;
use crate::{Filter, Shared};

pub use filter::AuditFilter;
pub use metrics::AuditMetrics;
pub use record::{
    chain_hash, seal, AuditRecord, RecordDlp, RecordUsage, SealError, GENESIS_PREV, MAX_FIELD_BYTES,
};
pub use verify::{verify, verify_with, ChainStart, Finding, Problem, VerifyOptions, VerifyReport};
pub use writer::{AuditWriter, StartError, SubmitError, WaitError, WriterOptions};

/// `[audit]`.
///
/// Unknown keys are reported by the engine's config loader (with their field path), as for every
/// section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuditSettings {
    /// The active log file, or `-` for stdout.
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub fsync: Fsync,
    /// `fsync = "interval"`: the longest a written record waits for its fsync.
    #[serde(default = "default_interval")]
    pub fsync_interval_ms: u64,
    /// Rotate the active file before it grows past this (at least 4096). No rotation when absent.
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
    /// Records that may wait for the writer before requests have to wait.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// How long a request may wait for the writer: for room in the queue, and under
    /// `fsync = "always"` for its record's fsync.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_ms: u64,
    /// What requests get while the log cannot be written.
    #[serde(default)]
    pub on_error: OnError,
}

fn default_path() -> String {
    "audit/audit.jsonl".into()
}
fn default_interval() -> u64 {
    100
}
fn default_queue_capacity() -> usize {
    8192
}
fn default_write_timeout() -> u64 {
    5000
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            path: default_path(),
            fsync: Fsync::Interval,
            fsync_interval_ms: default_interval(),
            max_file_bytes: None,
            queue_capacity: default_queue_capacity(),
            write_timeout_ms: default_write_timeout(),
            on_error: OnError::FailClosed,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Always,
    #[default]
    Interval,
    Never,
}

/// `audit.on_error`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Answer 503 `audit_unavailable`: no unaudited calls.
    #[default]
    FailClosed,
    /// Serve, and count the failure.
    FailOpen,
}

/// Smallest `max_file_bytes`: a few records per file at least.
const MIN_FILE_BYTES: u64 = 4096;
const MAX_QUEUE_CAPACITY: usize = 1 << 20;
const MAX_INTERVAL_MS: u64 = 60_000;
const MAX_WRITE_TIMEOUT_MS: u64 = 600_000;

/// `[audit]` built: the writer's options and what requests do while it cannot write, checked.
#[derive(Debug, Clone)]
pub struct Audit {
    pub writer: WriterOptions,
    pub on_error: OnError,
    pub write_timeout: Duration,
    /// The log's writer in [`Shared`]: one per file, however the path names it.
    writer_key: String,
}

impl Section for AuditSettings {
    const NAME: &'static str = "audit";
    type Built = Audit;

    fn build(&self) -> Result<Audit, ConfigErrors> {
        let mut errs = Vec::new();
        self.check(&mut errs);
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        Ok(Audit {
            writer: self.writer_options(),
            on_error: self.on_error,
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            writer_key: format!("audit:{}", writer_key(&self.path)),
        })
    }
}

impl AuditSettings {
    fn check(&self, errs: &mut Vec<ConfigError>) {
        let mut err = |field: &str, msg: String| {
            errs.push(ConfigError::new(format!("audit.{field}"), msg));
        };
        if self.path.trim().is_empty() {
            err(
                "path",
                "must name the log file, or be \"-\" for stdout".into(),
            );
        } else if self.path.ends_with('/') {
            err(
                "path",
                format!(
                    "`{}` is a directory; name the log file in it (e.g. `{}audit.jsonl`)",
                    self.path, self.path
                ),
            );
        }
        if !(1..=MAX_INTERVAL_MS).contains(&self.fsync_interval_ms) {
            err(
                "fsync_interval_ms",
                format!(
                    "must be between 1 and {MAX_INTERVAL_MS} (a crash loses at most this much)"
                ),
            );
        }
        if let Some(max) = self.max_file_bytes {
            if self.path == "-" {
                err(
                    "max_file_bytes",
                    "rotation needs a log file; stdout (`path = \"-\"`) cannot rotate".into(),
                );
            } else if max < MIN_FILE_BYTES {
                err(
                    "max_file_bytes",
                    format!("must be at least {MIN_FILE_BYTES}"),
                );
            }
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&self.queue_capacity) {
            err(
                "queue_capacity",
                format!("must be between 1 and {MAX_QUEUE_CAPACITY}"),
            );
        }
        if !(1..=MAX_WRITE_TIMEOUT_MS).contains(&self.write_timeout_ms) {
            err(
                "write_timeout_ms",
                format!("must be between 1 and {MAX_WRITE_TIMEOUT_MS}"),
            );
        }
    }

    /// The writer options these settings describe.
    pub fn writer_options(&self) -> WriterOptions {
        WriterOptions {
            path: self.path.clone(),
            fsync: self.fsync,
            fsync_interval: Duration::from_millis(self.fsync_interval_ms),
            max_file_bytes: self.max_file_bytes,
            queue_capacity: self.queue_capacity,
        }
    }
}

/// Builds the `audit` filter for `[[filters]] type = "audit"` from `[audit]`.
///
/// The writer is kept in `shared` under the log's absolute path, so a reload that keeps the path
/// keeps the writer, its queue and its chain (and applies the new fsync mode, interval, rotation
/// size and queue capacity to it).
pub fn build(
    policy: &Policy<'_>,
    options: &toml::Table,
    path: &str,
    shared: &Shared,
) -> Result<Arc<dyn Filter>, ConfigErrors> {
    let errs = crate::config::no_options(
        options,
        path,
        "unknown option: the audit filter takes none (it is configured in [audit])",
    );
    let audit = crate::config::together(errs, policy.sections.built::<AuditSettings>(path))?;
    let metrics = AuditMetrics::register(shared)
        .map_err(|e| ConfigErrors::one(path, format!("cannot register the audit metrics: {e}")))?;
    let opts = &audit.writer;
    let writer = shared
        .get_or_try_init(&audit.writer_key, || {
            AuditWriter::start(opts.clone(), metrics.clone())
        })
        .map_err(|e| ConfigErrors::one("audit.path", e.0))?;
    writer.reconfigure(opts);
    metrics.set_queue_capacity(opts.queue_capacity);
    Ok(Arc::new(AuditFilter {
        writer,
        all_writers: shared.all::<AuditWriter>(),
        fsync: opts.fsync,
        on_error: audit.on_error,
        write_timeout: audit.write_timeout,
        metrics,
        missed: std::sync::atomic::AtomicU64::new(0),
    }))
}

/// One writer per log: the same file named two ways (`audit.jsonl`, `./audit.jsonl`) must map
/// to the same writer.
fn writer_key(path: &str) -> String {
    if path == "-" {
        return "-".into();
    }
    std::path::absolute(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(s: &AuditSettings) -> Vec<String> {
        let errs = s.build().err().unwrap_or_default().0;
        errs.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(errors(&AuditSettings::default()).is_empty());
        let parsed: AuditSettings = toml::from_str("").unwrap();
        assert_eq!(parsed.queue_capacity, 8192);
        assert_eq!(parsed.on_error, OnError::FailClosed);
        assert_eq!(parsed.fsync, Fsync::Interval);
    }

    #[test]
    fn every_bad_field_is_named() {
        let s = AuditSettings {
            path: "-".into(),
            fsync_interval_ms: 0,
            max_file_bytes: Some(10_000),
            queue_capacity: 0,
            write_timeout_ms: 0,
            ..AuditSettings::default()
        };
        let errs = errors(&s);
        for field in [
            "audit.fsync_interval_ms:",
            "audit.max_file_bytes:",
            "audit.queue_capacity:",
            "audit.write_timeout_ms:",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(field)),
                "{field} in {errs:?}"
            );
        }
        let s = AuditSettings {
            path: "logs/".into(),
            max_file_bytes: Some(100),
            ..AuditSettings::default()
        };
        let errs = errors(&s);
        assert!(
            errs.iter().any(|e| e.starts_with("audit.path:")),
            "{errs:?}"
        );
        assert!(errs
            .iter()
            .any(|e| e.starts_with("audit.max_file_bytes: must be at least")));
    }

    #[test]
    fn unknown_values_are_rejected() {
        assert!(toml::from_str::<AuditSettings>("on_error = \"ignore\"").is_err());
        let s: AuditSettings =
            toml::from_str("on_error = \"fail_open\"\nfsync = \"always\"").unwrap();
        assert_eq!((s.on_error, s.fsync), (OnError::FailOpen, Fsync::Always));
    }
}
