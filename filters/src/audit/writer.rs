//! [`AuditWriter`]: the one thread that owns the log, fed by a bounded queue.
//!
//! Request paths serialize their record (in parallel) and push it on the queue; the writer
//! thread takes *everything* queued at once, chains and hashes it (the chain is sequential by
//! definition, so this is the one place it can be done), writes the batch with as few `write`
//! calls as rotation allows and, depending on [`Fsync`], syncs once per batch (group commit),
//! once per interval, or never. Progress is published as sequence numbers: a record's `seq` is
//! its position among all accepted records, and `written`/`synced` say how far the log got.
//!
//! The writer never drops a record it accepted. When the log cannot be written it keeps the
//! sealed lines, stops taking new batches (so the queue fills and the request path sees it),
//! marks itself unhealthy and retries; a record that cannot even be queued is handed back to
//! the caller, which puts it in the process log.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::metrics::AuditMetrics;
use super::Fsync;
use worker::Worker;

mod worker;

/// How long a failing writer waits before it tries the log again.
const RETRY_DELAY: Duration = Duration::from_millis(250);

/// Above this, the batch buffer's memory is given back after the batch is written.
const KEEP_BUFFER_BYTES: usize = 4 << 20;

/// What an [`AuditWriter`] writes, where and how durably.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// A file path, or `-` for stdout.
    pub path: String,
    pub fsync: Fsync,
    pub fsync_interval: Duration,
    /// Rotate the active file before it would grow past this many bytes.
    pub max_file_bytes: Option<u64>,
    /// Records that may wait for the writer before the request path has to wait.
    pub queue_capacity: usize,
}

/// The writer could not start; retrying will not help.
#[derive(Debug, Clone)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A record the writer did not accept; it is handed back so the caller can keep it elsewhere.
#[derive(Debug)]
pub enum SubmitError {
    /// The queue stayed full for the whole wait (or the writer is failing and cannot drain it).
    Full(Vec<u8>),
    /// The writer has shut down.
    Closed(Vec<u8>),
    /// The body is not a serialized record (a non-empty JSON object).
    Invalid(Vec<u8>),
}

impl SubmitError {
    pub fn into_body(self) -> Vec<u8> {
        match self {
            SubmitError::Full(b) | SubmitError::Closed(b) | SubmitError::Invalid(b) => b,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            SubmitError::Full(_) => "the audit queue stayed full",
            SubmitError::Closed(_) => "the audit writer has shut down",
            SubmitError::Invalid(_) => "not a serialized audit record",
        }
    }
}

/// Why a record's durability could not be confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// Not durable within the wait; the writer still holds it and will write it.
    Timeout,
    /// The log cannot be written right now; the writer holds the record and retries.
    Failing(String),
    /// The writer stopped before the record was written (it went to the process log).
    Closed,
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::Timeout => f.write_str("not durable within the wait"),
            WaitError::Failing(e) => write!(f, "the audit log cannot be written: {e}"),
            WaitError::Closed => f.write_str("the audit writer stopped first"),
        }
    }
}

/// Settings a config reload may change on a running writer.
#[derive(Debug, Clone, Copy)]
struct Tunables {
    fsync: Fsync,
    interval: Duration,
    max_file_bytes: Option<u64>,
    capacity: usize,
}

impl From<&WriterOptions> for Tunables {
    fn from(o: &WriterOptions) -> Self {
        Tunables {
            fsync: o.fsync,
            interval: o.fsync_interval.max(Duration::from_millis(1)),
            max_file_bytes: o.max_file_bytes,
            capacity: o.queue_capacity.max(1),
        }
    }
}

struct State {
    queue: VecDeque<Vec<u8>>,
    /// Records accepted so far; the last one's seq.
    accepted: u64,
    /// Every record with `seq <= written` is in the log (handed to the OS).
    written: u64,
    /// Every record with `seq <= synced` is durable (fsynced; flushed for streams).
    synced: u64,
    /// A flush asked for `synced >= sync_wanted`.
    sync_wanted: u64,
    /// Why the log cannot be written right now.
    error: Option<String>,
    /// Shutdown was asked for; give up on an unwritable log at this instant.
    closing: Option<Instant>,
    /// The writer thread has exited.
    finished: bool,
    tun: Tunables,
    /// The writer thread waits on `work` for new records: the next submitter must wake it.
    /// While it gathers or writes a batch it is not woken (it looks at the queue again before
    /// it waits), so a busy log costs no cross-thread wake-up per record.
    writer_idle: bool,
    /// Threads waiting on `space` / `progress`: nobody is woken (a futex call each) when
    /// nobody waits.
    space_waiters: u32,
    progress_waiters: u32,
}

impl State {
    /// Whether a submitter must wake the writer (and marks it woken).
    fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.writer_idle)
    }
}

struct Core {
    state: Mutex<State>,
    /// Wakes the writer thread (work, flush, shutdown, reconfiguration).
    work: Condvar,
    /// Wakes blocking submitters when the writer has emptied the queue.
    space: Condvar,
    /// The same, for async submitters.
    space_async: Notify,
    /// Wakes durability waiters, flushes and shutdown when `written`/`synced`/`error` change.
    progress: Condvar,
    healthy: AtomicBool,
    metrics: AuditMetrics,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters more than losing the audit trail would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_push(&self, body: Vec<u8>) -> Result<u64, SubmitError> {
        let mut st = self.lock();
        if st.closing.is_some() || st.finished {
            return Err(SubmitError::Closed(body));
        }
        if st.queue.len() >= st.tun.capacity {
            return Err(SubmitError::Full(body));
        }
        st.queue.push_back(body);
        st.accepted += 1;
        let seq = st.accepted;
        let wake = st.take_wake();
        drop(st);
        self.metrics.queue_add(1);
        if wake {
            // The writer waits for work only when the queue is empty.
            self.work.notify_one();
        }
        Ok(seq)
    }
}

/// The writer of one audit log. Cheap to share (`Arc`); one per log file per process, kept
/// across config reloads in [`crate::Shared`].
pub struct AuditWriter {
    core: Arc<Core>,
    path: String,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AuditWriter {
    /// Opens the log (creating its directory), locks it against a second writer, finds where
    /// its chain ends (the last complete record's `hash`, in the active file or the newest
    /// rotated one) and starts the writer thread.
    ///
    /// A log that cannot be opened now (a missing mount, a full disk, another process holding
    /// the lock) is not an error: the writer starts unhealthy and keeps trying, and the audit
    /// filter answers 503 meanwhile. A log whose chain cannot be continued is an error.
    pub fn start(opts: WriterOptions, metrics: AuditMetrics) -> Result<AuditWriter, StartError> {
        let tun = Tunables::from(&opts);
        let core = Arc::new(Core {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                accepted: 0,
                written: 0,
                synced: 0,
                sync_wanted: 0,
                error: None,
                closing: None,
                finished: false,
                tun,
                writer_idle: false,
                space_waiters: 0,
                progress_waiters: 0,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            space_async: Notify::new(),
            progress: Condvar::new(),
            healthy: AtomicBool::new(true),
            metrics,
        });
        let mut worker = Worker::new(core.clone(), &opts.path);
        // The first attempt runs here so that a caller sees the log's state as soon as this
        // returns (and a chain that cannot be continued fails the build).
        if let Err(e) = worker.recover() {
            if worker.fatal {
                return Err(StartError(e));
            }
            worker.publish_error(e);
        }
        let handle = std::thread::Builder::new()
            .name("sluice-audit".into())
            .spawn(move || worker.run())
            .map_err(|e| StartError(format!("cannot start the audit writer thread: {e}")))?;
        Ok(AuditWriter {
            core,
            path: opts.path,
            thread: Mutex::new(Some(handle)),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the log can be written (the last attempt succeeded).
    pub fn is_healthy(&self) -> bool {
        self.core.healthy.load(Ordering::Acquire)
    }

    /// Why the log cannot be written, when it cannot.
    pub fn error(&self) -> Option<String> {
        self.core.lock().error.clone()
    }

    /// Records waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.core.lock().queue.len()
    }

    /// Applies a reloaded config's fsync mode, interval, rotation size and queue capacity.
    pub fn reconfigure(&self, opts: &WriterOptions) {
        let mut st = self.core.lock();
        st.tun = Tunables::from(opts);
        drop(st);
        self.core.work.notify_one();
        self.core.space.notify_all();
        self.core.space_async.notify_waiters();
    }

    /// Queues a serialized record (see [`super::AuditRecord::to_body`]), waiting up to
    /// `timeout` for room. Returns its sequence number, for [`AuditWriter::wait_durable`].
    ///
    /// Needs a Tokio runtime with timers (the engine's). When the writer is failing and the
    /// queue is full it does not wait: the queue cannot drain until the log comes back.
    pub async fn submit(&self, body: Vec<u8>, timeout: Duration) -> Result<u64, SubmitError> {
        if !is_object(&body) {
            return Err(SubmitError::Invalid(body));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut body = body;
        loop {
            let mut notified = std::pin::pin!(self.core.space_async.notified());
            // Registered before the attempt, so a wake-up between the attempt and the wait is
            // not lost.
            notified.as_mut().enable();
            match self.core.try_push(body) {
                Ok(seq) => return Ok(seq),
                Err(SubmitError::Full(b)) if self.is_healthy() => body = b,
                Err(e) => return Err(e),
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.core.try_push(body);
            }
        }
    }

    /// [`AuditWriter::submit`] for synchronous callers: blocks the thread up to `timeout`.
    pub fn submit_blocking(&self, body: Vec<u8>, timeout: Duration) -> Result<u64, SubmitError> {
        if !is_object(&body) {
            return Err(SubmitError::Invalid(body));
        }
        let deadline = Instant::now() + timeout;
        let mut st = self.core.lock();
        loop {
            if st.closing.is_some() || st.finished {
                return Err(SubmitError::Closed(body));
            }
            if st.queue.len() < st.tun.capacity {
                st.queue.push_back(body);
                st.accepted += 1;
                let seq = st.accepted;
                let wake = st.take_wake();
                drop(st);
                self.core.metrics.queue_add(1);
                if wake {
                    self.core.work.notify_one();
                }
                return Ok(seq);
            }
            let now = Instant::now();
            if st.error.is_some() || now >= deadline {
                return Err(SubmitError::Full(body));
            }
            st.space_waiters += 1;
            st = wait_timeout(&self.core.space, st, deadline - now);
            st.space_waiters -= 1;
        }
    }

    /// Whether the record `seq` is durable (fsynced), without waiting.
    pub fn is_durable(&self, seq: u64) -> bool {
        self.core.lock().synced >= seq
    }

    /// Blocks until the record `seq` is durable (fsynced), up to `timeout`.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> Result<(), WaitError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.core.lock();
        loop {
            if st.synced >= seq {
                return Ok(());
            }
            if st.finished {
                return Err(WaitError::Closed);
            }
            if let Some(e) = &st.error {
                return Err(WaitError::Failing(e.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout);
            }
            st.progress_waiters += 1;
            st = wait_timeout(&self.core.progress, st, deadline - now);
            st.progress_waiters -= 1;
        }
    }

    /// Writes and syncs every record accepted so far, whatever the fsync mode; blocks up to
    /// `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), WaitError> {
        let target = {
            let mut st = self.core.lock();
            st.sync_wanted = st.sync_wanted.max(st.accepted);
            st.accepted
        };
        self.core.work.notify_one();
        self.wait_durable(target, timeout)
    }

    /// Stops accepting records, writes and syncs everything queued, and stops the thread.
    /// Returns whether every accepted record made it to the log; after `timeout` on a log that
    /// cannot be written, the writer gives up and puts the remaining records in the process log
    /// (tracing, level error). Idempotent.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        {
            let mut st = self.core.lock();
            if st.closing.is_none() {
                st.closing = Some(deadline);
            }
        }
        self.core.work.notify_one();
        self.core.space.notify_all();
        self.core.space_async.notify_waiters();
        // The thread gives up on its own at the deadline; the extra second covers its last
        // retry. A thread stuck in a write that never returns (a pipe nobody reads) is left
        // behind rather than hanging the process.
        let give_up = deadline + RETRY_DELAY * 4;
        let mut st = self.core.lock();
        while !st.finished {
            let now = Instant::now();
            if now >= give_up {
                break;
            }
            st.progress_waiters += 1;
            st = wait_timeout(&self.core.progress, st, give_up - now);
            st.progress_waiters -= 1;
        }
        let finished = st.finished;
        let complete = st.synced == st.accepted;
        drop(st);
        if finished {
            let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
        finished && complete
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        // An embedder (or a test) that never called shutdown still gets its records written.
        self.shutdown(Duration::from_secs(5));
    }
}

fn wait_timeout<'a>(
    cv: &Condvar,
    guard: MutexGuard<'a, State>,
    d: Duration,
) -> MutexGuard<'a, State> {
    match cv.wait_timeout(guard, d) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}

fn is_object(body: &[u8]) -> bool {
    body.len() > 2 && body.first() == Some(&b'{') && body.last() == Some(&b'}')
}
