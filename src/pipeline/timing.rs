//! Where a request's time goes, for `sluice_overhead_seconds` and the upstream's latency: the
//! events of the exchange, each recorded here and nowhere else.

use std::time::{Duration, Instant};

use super::Call;

/// Overhead accounting (see [`Timing::overhead`]).
pub(crate) struct Timing {
    /// When the request's head had been read.
    start: Instant,
    /// Time spent waiting for the client's body or for a new upstream connection.
    waited: Duration,
    upstream_start: Option<Instant>,
    upstream_end: Option<Instant>,
    peer: Option<Instant>,
    /// When the request was handed to the upstream.
    req_sent: Option<Instant>,
    failed: Option<Instant>,
    resp_head: Option<Instant>,
    /// Sluice's own hook time while the upstream streamed.
    span_hooks: Duration,
}

impl Timing {
    pub(crate) fn new() -> Timing {
        Timing {
            start: Instant::now(),
            waited: Duration::ZERO,
            upstream_start: None,
            upstream_end: None,
            peer: None,
            req_sent: None,
            failed: None,
            resp_head: None,
            span_hooks: Duration::ZERO,
        }
    }

    /// What `sluice_overhead_seconds` observes: the time from the request's head having been
    /// read to the end of the exchange, less the time Sluice waited: for the client's body, for
    /// a new upstream connection, and for the upstream — from handing it the request until its
    /// response head arrived (or it failed), and for a stream until its last byte, minus the
    /// time Sluice's own hooks ran meanwhile. So it is what Sluice adds to a request's latency.
    pub(crate) fn overhead(&self, stream: bool) -> Duration {
        let total = self.start.elapsed();
        let upstream = match self.req_sent {
            Some(sent) => {
                let (end, hooks) = if stream {
                    (self.upstream_end.or(self.failed), self.span_hooks)
                } else {
                    (self.resp_head.or(self.failed), Duration::ZERO)
                };
                end.unwrap_or_else(Instant::now)
                    .saturating_duration_since(sent)
                    .saturating_sub(hooks)
            }
            None => Duration::ZERO,
        };
        total.saturating_sub(self.waited).saturating_sub(upstream)
    }

    fn waited(&mut self, d: Duration) {
        self.waited += d;
    }

    /// A peer was chosen: the upstream's time starts (the first attempt's, for its latency).
    fn contacted(&mut self) {
        let now = Instant::now();
        self.upstream_start.get_or_insert(now);
        self.peer = Some(now);
    }

    /// The request was handed to the upstream.
    fn sent(&mut self) {
        self.req_sent = Some(Instant::now());
    }

    /// The exchange failed (the first failure counts).
    pub(crate) fn failed(&mut self) {
        self.failed.get_or_insert_with(Instant::now);
    }

    /// The upstream's response head arrived (the first attempt's that got one counts).
    pub(crate) fn response_head(&mut self, at: Instant) {
        self.resp_head.get_or_insert(at);
    }

    /// Sluice's own hooks ran for `d` while the upstream streamed.
    pub(crate) fn hooks(&mut self, d: Duration) {
        self.span_hooks += d;
    }

    /// The upstream's last byte arrived (or the exchange with it ended).
    pub(crate) fn upstream_ended(&mut self, at: Instant) {
        self.upstream_end = Some(at);
    }

    /// When the current attempt's upstream was first contacted.
    pub(crate) fn upstream_started(&self) -> Option<Instant> {
        self.upstream_start
    }

    /// When the upstream's part ended: its last byte, else the failure.
    pub(crate) fn upstream_done(&self) -> Option<Instant> {
        self.upstream_end.or(self.failed)
    }

    /// The upstream's latency, once it was contacted.
    pub(crate) fn upstream_latency(&self) -> Option<Duration> {
        self.upstream_start
            .map(|s| self.upstream_end.unwrap_or_else(Instant::now) - s)
    }

    /// The failed attempt's time was the upstream's (for `sluice_overhead_seconds`); the next
    /// one's upstream time starts afresh.
    pub(crate) fn next_attempt(&mut self) {
        if let Some(since) = self.req_sent.or(self.peer) {
            self.waited += since.elapsed();
        }
        self.upstream_start = None;
        self.peer = None;
        self.req_sent = None;
        self.resp_head = None;
        self.upstream_end = None;
    }
}

impl Call {
    /// Records the time spent waiting for the client's body or a new upstream connection.
    pub fn waited(&mut self, d: Duration) {
        self.t.waited(d);
    }

    /// Marks the upstream as contacted (a peer was chosen).
    pub fn upstream_contacted(&mut self) {
        self.t.contacted();
    }

    /// A new connection was made (connecting is the upstream's time, not Sluice's).
    pub fn connected(&mut self, reused: bool) {
        if !reused {
            if let Some(t) = self.t.peer {
                self.t.waited(t.elapsed());
            }
        }
    }

    /// The request (head, or its last body byte) was handed to the upstream.
    pub fn request_sent(&mut self) {
        self.t.sent();
    }
}
