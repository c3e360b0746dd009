//! The audit writer's thread: takes queued records in batches, seals them into the chain,
//! writes and syncs them, and recovers the chain's head after a failure.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::{wait_timeout, Core, State, Tunables, KEEP_BUFFER_BYTES, RETRY_DELAY};
use crate::audit::metrics::error_kind;
use crate::audit::record::seal;
use crate::audit::sink::{RecoverError, Sink};
use crate::audit::Fsync;

/// Sealed lines not yet (completely) written, in one contiguous buffer so that a batch goes out
/// in one `write`.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// For each line not completely written: where it ends in `buf`, and its seq.
    lines: VecDeque<(usize, u64)>,
    /// Bytes of `buf` already written.
    written: usize,
    /// Where the first line of `lines` starts.
    line_start: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn clear(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > KEEP_BUFFER_BYTES {
            self.buf = Vec::new();
        }
        self.lines.clear();
        self.written = 0;
        self.line_start = 0;
    }
}

/// The writer thread's own state.
pub(super) struct Worker {
    core: Arc<Core>,
    sink: Sink,
    path: String,
    /// The chain's head: the hash the next record's `prev` takes. `None` until recovered.
    last_hash: Option<String>,
    /// The log's chain cannot be continued; only shutdown ends this.
    pub(super) fatal: bool,
    /// The log is failing; try again at this instant.
    retry_at: Option<Instant>,
    pending: Pending,
    next_seq: u64,
    written_through: u64,
    synced_through: u64,
    /// Lines were written after the last sync, the first of them at this instant.
    unsynced_since: Option<Instant>,
    /// The last batch had records: wait a moment before waiting as idle.
    linger: bool,
    /// The last batch had at least [`BUSY_BATCH`] records: gather for [`COALESCE_BUSY`].
    busy: bool,
}

/// How long the writer lets records gather before writing a batch (fsync = interval | never;
/// never longer than the fsync interval). Under load this turns one wake-up and one `write` per
/// record into one per batch; the price is that a crash of the process can lose this much more
/// of what was queued (still within the interval that `fsync = "interval"` promises).
const COALESCE: Duration = Duration::from_millis(1);

/// The same, after a batch of at least [`BUSY_BATCH`] records: at 10 k req/s, 5 ms batches cost
/// the writer 3.8 µs of CPU per record against 5.0 µs for 1 ms ones (fewer wake-ups and `write`
/// calls; benches/overhead.sh's load runs, proxy on one core). Light traffic keeps the 1 ms
/// pause, so a record reaches the log about a millisecond after its request ends.
const COALESCE_BUSY: Duration = Duration::from_millis(5);
const BUSY_BATCH: usize = 4;

impl Worker {
    pub(super) fn new(core: Arc<Core>, path: &str) -> Worker {
        Worker {
            core,
            sink: Sink::new(path),
            path: path.to_string(),
            last_hash: None,
            fatal: false,
            retry_at: None,
            pending: Pending::default(),
            next_seq: 1,
            written_through: 0,
            synced_through: 0,
            unsynced_since: None,
            linger: false,
            busy: false,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let (closing, gathered) = self.wait_for_work();
            // Group commit: unless every record must be on disk before its request completes,
            // let a few more records join this batch (one write and one wake-up for all of them
            // instead of one per request).
            let coalesce = {
                let st = self.core.lock();
                (closing.is_none()
                    && !gathered
                    && st.tun.fsync != Fsync::Always
                    && st.sync_wanted <= self.synced_through)
                    .then(|| COALESCE.min(st.tun.interval))
            };
            if let Some(pause) = coalesce {
                std::thread::sleep(pause);
            }
            if self.last_hash.is_none() && !self.fatal {
                if let Err(e) = self.recover() {
                    self.publish_error(e);
                    if self.finish_if_closing(closing) {
                        return;
                    }
                    continue;
                }
            }
            let (tun, force_sync) = self.take_batch();
            let result = if self.fatal {
                Err("the log's hash chain cannot be continued".to_string())
            } else {
                self.write_and_sync(&tun, force_sync || closing.is_some())
                    .map_err(|e| format!("{}: {e}", self.path))
            };
            match result {
                Ok(()) => self.publish_ok(),
                Err(e) => self.publish_error(e),
            }
            if self.finish_if_closing(closing) {
                return;
            }
        }
    }

    /// Sleeps until there is something to do; returns the shutdown deadline if closing, and
    /// whether the records queued have had their time to gather already (a linger).
    fn wait_for_work(&mut self) -> (Option<Instant>, bool) {
        let core = self.core.clone();
        let mut st = core.lock();
        let mut lingered = false;
        loop {
            st.writer_idle = false;
            let now = Instant::now();
            if self.fatal {
                if st.closing.is_some() {
                    return (st.closing, lingered);
                }
                st = idle_wait(&core, st, None);
                continue;
            }
            if let Some(retry_at) = self.retry_at {
                // Failing: retry on schedule, whatever arrives meanwhile.
                if now >= retry_at {
                    return (st.closing, lingered);
                }
                st = idle_wait(&core, st, Some(retry_at - now));
                continue;
            }
            if !st.queue.is_empty() || st.closing.is_some() || st.sync_wanted > self.synced_through
            {
                return (st.closing, lingered);
            }
            if std::mem::take(&mut self.linger) {
                // Busy: rather than have the next submitter wake this thread (a futex call on
                // the request path, a cross-thread wake-up), look again in a moment. Flushes
                // and shutdown still wake it at once.
                let gather = if self.busy { COALESCE_BUSY } else { COALESCE };
                let mut pause = gather.min(st.tun.interval);
                if let Some(d) = self.sync_deadline(&st.tun) {
                    pause = pause.min(d.saturating_duration_since(now));
                }
                st = wait_timeout(&core.work, st, pause);
                lingered = true;
                continue;
            }
            lingered = false;
            match self.sync_deadline(&st.tun) {
                Some(d) if now >= d => return (st.closing, lingered),
                Some(d) => st = idle_wait(&core, st, Some(d - now)),
                None => st = idle_wait(&core, st, None),
            }
        }
    }

    /// When the next fsync of written lines is due. (Under `always` it is due at once: lines
    /// left unsynced by another mode before a reload switched to `always`.)
    fn sync_deadline(&self, tun: &Tunables) -> Option<Instant> {
        match tun.fsync {
            Fsync::Interval => self.unsynced_since.map(|t| t + tun.interval),
            Fsync::Always => self.unsynced_since,
            Fsync::Never => None,
        }
    }

    /// Takes everything queued (unless earlier lines are still unwritten) and seals it into the
    /// chain.
    fn take_batch(&mut self) -> (Tunables, bool) {
        let (batch, tun, force_sync, space_waiters) = {
            let mut st = self.core.lock();
            let batch = if self.pending.is_empty() && !self.fatal && self.last_hash.is_some() {
                std::mem::take(&mut st.queue)
            } else {
                VecDeque::new()
            };
            (
                batch,
                st.tun,
                st.sync_wanted > self.synced_through,
                st.space_waiters > 0,
            )
        };
        // After records, linger before sleeping as idle (see `wait_for_work`).
        self.linger = !batch.is_empty() && tun.fsync != Fsync::Always;
        self.busy = batch.len() >= BUSY_BATCH;
        if !batch.is_empty() {
            self.core.metrics.queue_add(-(batch.len() as i64));
            if space_waiters {
                self.core.space.notify_all();
            }
            self.core.space_async.notify_waiters();
        }
        let Some(mut prev) = self.last_hash.take() else {
            return (tun, force_sync);
        };
        for body in batch {
            let seq = self.next_seq;
            self.next_seq += 1;
            match seal(&body, &prev, &mut self.pending.buf) {
                Ok(hash) => prev = hash,
                // Bodies are checked when they are submitted; this cannot happen, but if it
                // did the record must still not vanish silently.
                Err(e) => {
                    tracing::error!(
                        target: "sluice::audit",
                        record = %String::from_utf8_lossy(&body),
                        "audit record could not be sealed ({e}); it is kept here instead"
                    );
                    self.core.metrics.write_error(error_kind::ENCODE);
                }
            }
            self.pending.lines.push_back((self.pending.buf.len(), seq));
        }
        self.last_hash = Some(prev);
        (tun, force_sync)
    }

    pub(super) fn recover(&mut self) -> Result<(), String> {
        match self.sink.recover() {
            Ok(r) => {
                if r.torn_tail {
                    tracing::warn!(
                        target: "sluice::audit",
                        path = %self.path,
                        "the audit log ends with a torn record (the process stopped mid-write); \
                         it is kept as evidence and `sluice audit verify` reports it; the next \
                         record starts on a new line"
                    );
                }
                self.last_hash = Some(r.last_hash);
                self.retry_at = None;
                Ok(())
            }
            Err(RecoverError::Io(e)) => Err(format!("{}: {e}", self.path)),
            Err(RecoverError::Fatal(e)) => {
                self.fatal = true;
                Err(e.0)
            }
        }
    }

    fn write_and_sync(&mut self, tun: &Tunables, force_sync: bool) -> io::Result<()> {
        if !self.sink.is_open() {
            self.sink.reopen()?;
        }
        if let Err(e) = self.write_pending(tun.max_file_bytes) {
            // The next attempt reopens the file: it may have been replaced or its disk
            // remounted. The sealed lines are kept and written from where the last write
            // stopped, so the bytes of the log stay exactly the chain's.
            self.sink.close();
            return Err(e);
        }
        let due = match (self.unsynced_since, tun.fsync) {
            (None, _) => false,
            (Some(_), Fsync::Always) => true,
            (Some(t), Fsync::Interval) => force_sync || t.elapsed() >= tun.interval,
            (Some(_), Fsync::Never) => force_sync,
        };
        if due {
            self.sink.sync()?;
            self.synced_through = self.written_through;
            self.unsynced_since = None;
        }
        Ok(())
    }

    fn write_pending(&mut self, max_file_bytes: Option<u64>) -> io::Result<()> {
        while let Some(&(first_end, _)) = self.pending.lines.front() {
            let p = &self.pending;
            let start = p.written;
            let mut end = first_end;
            match self.sink.room(max_file_bytes) {
                Some(room) => {
                    let at_boundary = start == p.line_start;
                    if at_boundary && !self.sink.is_empty() && (first_end - start) as u64 > room {
                        self.sink.rotate()?;
                        // Rotation syncs the old file, which holds every line written so far.
                        self.synced_through = self.written_through;
                        self.unsynced_since = None;
                        continue;
                    }
                    for &(e, _) in p.lines.iter().skip(1) {
                        if (e - start) as u64 > room {
                            break;
                        }
                        end = e;
                    }
                }
                None => end = p.buf.len(),
            }
            let n = match self.sink.write(&p.buf[start..end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.pending.written += n;
            if self.unsynced_since.is_none() {
                self.unsynced_since = Some(Instant::now());
            }
            let mut done = 0;
            while let Some(&(e, seq)) = self.pending.lines.front() {
                if e > self.pending.written {
                    break;
                }
                self.pending.lines.pop_front();
                self.pending.line_start = e;
                self.written_through = seq;
                done += 1;
            }
            self.core.metrics.record_written(done);
        }
        self.pending.clear();
        Ok(())
    }

    fn publish_ok(&mut self) {
        self.retry_at = None;
        let mut st = self.core.lock();
        st.written = self.written_through;
        st.synced = self.synced_through;
        if let Some(old) = st.error.take() {
            tracing::info!(target: "sluice::audit", path = %self.path, previous_error = %old,
                "the audit log can be written again");
        }
        self.core.healthy.store(true, Ordering::Release);
        let waiters = st.progress_waiters > 0;
        drop(st);
        if waiters {
            self.core.progress.notify_all();
        }
    }

    pub(super) fn publish_error(&mut self, e: String) {
        self.retry_at = Some(Instant::now() + RETRY_DELAY);
        self.core.metrics.write_error(error_kind::IO);
        let mut st = self.core.lock();
        st.written = self.written_through;
        st.synced = self.synced_through;
        if st.error.as_deref() != Some(e.as_str()) {
            tracing::error!(target: "sluice::audit", error = %e,
                "the audit log cannot be written; records are held and retried");
        }
        st.error = Some(e);
        self.core.healthy.store(false, Ordering::Release);
        drop(st);
        self.core.progress.notify_all();
        // Blocking submitters must not wait out their timeout on a writer that cannot drain.
        self.core.space.notify_all();
        self.core.space_async.notify_waiters();
    }

    /// Ends the thread once shutting down and everything is written, or the deadline passed.
    fn finish_if_closing(&mut self, closing: Option<Instant>) -> bool {
        let Some(deadline) = closing else {
            return false;
        };
        let mut st = self.core.lock();
        let drained = st.queue.is_empty()
            && self.pending.is_empty()
            && self.synced_through == self.written_through
            && st.error.is_none();
        if !drained && Instant::now() < deadline && !self.fatal {
            return false;
        }
        if !drained {
            // Nothing may vanish silently: what could not be written goes to the process log.
            let mut lost = 0u64;
            let unwritten =
                &self.pending.buf[self.pending.line_start.min(self.pending.buf.len())..];
            for line in unwritten.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                tracing::error!(target: "sluice::audit", record = %String::from_utf8_lossy(line),
                    "audit record could not be written before shutdown; it is kept here instead");
                lost += 1;
            }
            for body in st.queue.drain(..) {
                tracing::error!(target: "sluice::audit", record = %String::from_utf8_lossy(&body),
                    "audit record could not be written before shutdown; it is kept here instead");
                lost += 1;
                self.core.metrics.queue_add(-1);
            }
            self.core.metrics.write_errors(error_kind::CLOSED, lost);
        }
        st.written = self.written_through;
        st.synced = self.synced_through;
        st.finished = true;
        drop(st);
        self.core.progress.notify_all();
        self.core.space.notify_all();
        self.core.space_async.notify_waiters();
        true
    }
}

/// Waits on `work` as the idle writer: the next submitted record wakes it.
fn idle_wait<'a>(
    core: &Core,
    mut st: MutexGuard<'a, State>,
    timeout: Option<Duration>,
) -> MutexGuard<'a, State> {
    st.writer_idle = true;
    match timeout {
        Some(d) => wait_timeout(&core.work, st, d),
        None => core.work.wait(st).unwrap_or_else(|p| p.into_inner()),
    }
}
