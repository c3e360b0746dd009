//! Slow clients, bounded: a request head must arrive within `server.header_timeout_ms`, and an
//! idle connection (before a request's first byte) is closed after
//! `server.keepalive_idle_seconds`.
//!
//! Pingora 0.9 bounds each *read* of a request head (60 s), not the head as a whole: a client
//! sending one header line every few seconds holds a connection forever. Its hooks run only once
//! the head is parsed, so the bound is kept below them: every accepted connection's stream is
//! wrapped ([`Guarded`]) by a thin [`ServerApp`] in front of Pingora's HTTP proxy
//! ([`EdgeApp`]). The wrapper watches the bytes Pingora reads until the blank line that ends a
//! head, with a timer armed at the head's first byte; when it fires, the read fails as timed
//! out and Pingora drops the connection. Between requests the idle timer closes the connection
//! (a clean end of stream). The body's own bound (`server.body_timeout_ms`) is kept where the
//! body is read (`proxy.rs`). The same wrapper checks a chunked body's framing strictly
//! ([`chunked`]), which Pingora's parser does not.

mod chunked;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, ALPN};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::state::EngineState;

/// The bounds a connection is held to, read from the current config at each connection (and
/// each reuse), so a reload changes them for the next ones.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    pub head: Duration,
    pub idle: Duration,
}

impl EdgeLimits {
    fn current(state: &EngineState) -> EdgeLimits {
        let s = &state.snapshot.load().config.server;
        EdgeLimits {
            head: Duration::from_millis(s.header_timeout_ms),
            idle: Duration::from_secs(s.keepalive_idle_seconds),
        }
    }
}

/// Pingora's HTTP proxy behind the slow-client bounds.
pub struct EdgeApp<A> {
    inner: Arc<A>,
    state: Arc<EngineState>,
}

impl<A> EdgeApp<A> {
    pub fn new(inner: A, state: Arc<EngineState>) -> EdgeApp<A> {
        EdgeApp {
            inner: Arc::new(inner),
            state,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for EdgeApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = EdgeLimits::current(&self.state);
        // A reused connection comes back wrapped: re-arm it for its next request.
        let guarded: Box<Guarded> = if stream.as_any().is::<Guarded>() {
            match stream.into_any().downcast::<Guarded>() {
                Ok(mut g) => {
                    g.rearm(limits);
                    g
                }
                Err(_) => return None,
            }
        } else {
            Box::new(Guarded::new(stream, limits))
        };
        self.inner.process_new(guarded, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's first byte (the idle bound applies).
    Idle,
    /// Reading a request head (the head bound applies).
    Head,
    /// The head is in: the body and the answer are bounded elsewhere.
    Open,
}

/// A connection's stream with the head and idle bounds.
pub struct Guarded {
    inner: Stream,
    limits: EdgeLimits,
    phase: Phase,
    /// When the current phase's bound runs out.
    deadline: tokio::time::Instant,
    /// Made only when a read has to wait: most heads arrive in one read, and a timer per
    /// request would cost more than all the rest of this wrapper.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the bytes read so far end a line (so the next line ending ends the head).
    line_start: bool,
    /// The head read so far (bounded: Pingora refuses longer heads anyway).
    head: Vec<u8>,
    /// The framing check of a chunked body, once its head said so.
    chunked: Option<chunked::ChunkedCheck>,
    /// The framing broke after the bytes already handed to Pingora: its next read fails.
    /// Handing over the valid bytes first (the head among them) lets Pingora parse the head,
    /// so the request is answered `400` rather than dropped (SPEC §3).
    bad_framing: bool,
}

/// Longer heads are refused by Pingora; what is kept of one to read its framing.
const MAX_HEAD: usize = 64 * 1024;

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Guarded {
    fn new(inner: Stream, limits: EdgeLimits) -> Guarded {
        let mut g = Guarded {
            inner,
            limits,
            phase: Phase::Idle,
            deadline: tokio::time::Instant::now(),
            timer: None,
            line_start: false,
            head: Vec::new(),
            chunked: None,
            bad_framing: false,
        };
        g.rearm(limits);
        g
    }

    fn rearm(&mut self, limits: EdgeLimits) {
        self.limits = limits;
        self.phase = Phase::Idle;
        self.line_start = false;
        self.head.clear();
        self.chunked = None;
        self.deadline = tokio::time::Instant::now() + limits.idle;
        self.timer = None;
    }

    /// Follows the head's bytes; where the head ends (just past its blank line), once it did.
    /// Jumps from line end to line end (the head is read in one pass or two, at memchr speed).
    fn head_ends_in(&mut self, bytes: &[u8]) -> Option<usize> {
        let only_cr = |s: &[u8]| s.iter().all(|&b| b == b'\r');
        let mut line_from = 0;
        let mut continues = self.line_start;
        for pos in memchr::memchr_iter(b'\n', bytes) {
            let empty = only_cr(&bytes[line_from..pos]);
            if empty && (continues || line_from > 0) {
                return Some(pos + 1);
            }
            continues = false;
            line_from = pos + 1;
        }
        let tail = &bytes[line_from..];
        self.line_start = if line_from > 0 {
            only_cr(tail)
        } else {
            self.line_start && only_cr(tail)
        };
        None
    }

    /// Bytes of the request, as Pingora read them: the head's end arms the body's framing
    /// check, which then sees every byte of a chunked body.
    fn observe(&mut self, new: &[u8]) -> Result<(), usize> {
        let mut body = new;
        if self.phase != Phase::Open {
            if self.phase == Phase::Idle {
                self.phase = Phase::Head;
                self.deadline = tokio::time::Instant::now() + self.limits.head;
                self.timer = None;
            }
            let end = self.head_ends_in(new);
            let upto = end.unwrap_or(new.len());
            let Some(end) = end else {
                // The head spans reads (rare): keep what came so far.
                let room = MAX_HEAD.saturating_sub(self.head.len());
                self.head.extend_from_slice(&new[..upto.min(room)]);
                return Ok(());
            };
            self.phase = Phase::Open;
            self.timer = None;
            let is_chunked = if self.head.is_empty() {
                chunked::head_is_chunked(&new[..end])
            } else {
                let room = MAX_HEAD.saturating_sub(self.head.len());
                self.head.extend_from_slice(&new[..end.min(room)]);
                let c = chunked::head_is_chunked(&self.head);
                self.head = Vec::new();
                c
            };
            if is_chunked {
                self.chunked = Some(chunked::ChunkedCheck::default());
            }
            body = &new[end..];
        }
        if let Some(check) = self.chunked.as_mut() {
            let skipped = new.len() - body.len();
            check.feed_until_bad(body).map_err(|i| skipped + i)?;
            if check.done() {
                self.chunked = None;
            }
        }
        Ok(())
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.bad_framing {
            return Poll::Ready(Err(bad_framing()));
        }
        if this.phase == Phase::Open && this.chunked.is_none() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let continuing = this.phase == Phase::Head;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if continuing && tokio::time::Instant::now() >= this.deadline {
                    // A head trickling in without a pause long enough to wait on.
                    return Poll::Ready(Err(head_timed_out()));
                }
                let filled = buf.filled().len();
                if filled == before {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(match this.observe(&buf.filled()[before..filled]) {
                    Ok(()) => Ok(()),
                    // Nothing valid to hand over (an empty read would be the end of stream).
                    Err(0) => Err(bad_framing()),
                    Err(valid) => {
                        buf.set_filled(before + valid);
                        this.bad_framing = true;
                        Ok(())
                    }
                })
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.phase == Phase::Open => Poll::Pending,
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(timer.as_mut().poll(cx));
                this.timer = None;
                Poll::Ready(match this.phase {
                    // An idle connection ends: no request was under way.
                    Phase::Idle => Ok(()),
                    _ => Err(head_timed_out()),
                })
            }
        }
    }
}

/// A chunked body's framing broke: the edge fails the read (see `proxy::body_error`).
fn bad_framing() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, chunked::BAD_FRAMING)
}

fn head_timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "request head not received within server.header_timeout_ms",
    )
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_blank_line_whatever_the_line_endings() {
        let limits = EdgeLimits {
            head: Duration::from_secs(1),
            idle: Duration::from_secs(1),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let _g = rt.enter();
        let stream: Stream = Box::new(tokio_test_stream());
        let mut g = Guarded::new(stream, limits);
        assert_eq!(g.head_ends_in(b"GET / HTTP/1.1\r\nhost: x\r\n"), None);
        assert_eq!(g.head_ends_in(b"\r\n"), Some(2));
        g.rearm(limits);
        assert_eq!(g.head_ends_in(b"GET / HTTP/1.1\nhost: x"), None);
        assert_eq!(g.head_ends_in(b"\n\nbody"), Some(2));
        g.rearm(limits);
        assert_eq!(g.head_ends_in(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(g.head_ends_in(b"x: \r"), None);
        assert_eq!(g.head_ends_in(b"\n\r\n"), Some(3));
        // A chunked body's framing is followed from the head's end, in the same read or later.
        g.rearm(limits);
        let head = b"POST /v1/x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel";
        assert!(g.observe(head).is_ok());
        assert!(g.observe(b"lo\r\n0;bad\next\r\n\r\n").is_err());
    }

    fn tokio_test_stream() -> pingora_core::protocols::l4::stream::Stream {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        let _ = a.set_nonblocking(true);
        let a = tokio::net::UnixStream::from_std(a).unwrap_or_else(|e| panic!("{e}"));
        pingora_core::protocols::l4::stream::Stream::from(a)
    }
}
