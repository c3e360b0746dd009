//! The Pingora adapter: each hook of a proxied request hands what the session holds to the
//! request's [`Call`] (the Pingora-free pipeline) and applies what it decides.
//!
//! Why the body is read in `request_filter`: the upstream depends on the body's `model`, and
//! Pingora picks the upstream before it reads the body. Pingora forwards a body consumed early
//! only through its retry buffer (64 KiB, filled by reads made while it is enabled), so the
//! buffer is enabled for the last ≤ 64 KiB of a `Content-Length` body; that makes Pingora call
//! `request_body_filter` once, where the held (possibly rewritten) body replaces it. A chunked
//! body larger than 64 KiB cannot take that path and is refused with 411.
//!
//! Retries (SPEC §11) run in Pingora's own retry loop: `fail_to_connect` and
//! `error_while_proxy` ask the request's [`Call`] whether the failed attempt goes again
//! (`crate::upstream` decides, and picks the next target) and set `Error::set_retry`
//! accordingly; Pingora then asks `upstream_peer` for the next attempt's peer and hands the held
//! body to `request_body_filter` again (from its retry buffer, which the held body replaces).
//! A status to retry on is an error returned from `upstream_response_filter` before anything
//! reached the client, which takes the same path (Pingora 0.9 has no hook for it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_error::RetryType;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use sluice_filters::Reply;

use crate::held_head::HeldHead;
use crate::pipeline::{Call, FailAction, FailKind, Head, Step};
use crate::state::EngineState;

/// The header of the start-up probe (see `gateway::wait_until_accepting`).
pub const PROBE_HEADER: &str = "x-sluice-probe";

/// Pingora's retry buffer size (`BODY_BUF_LIMIT` in pingora-core).
const RETRY_BUFFER: usize = 64 * 1024;

pub struct SluiceProxy {
    state: Arc<EngineState>,
}

impl SluiceProxy {
    pub fn new(state: Arc<EngineState>) -> SluiceProxy {
        SluiceProxy { state }
    }

    fn is_probe(&self, session: &Session) -> bool {
        let req = session.req_header();
        req.uri.path() == "/"
            && req
                .headers
                .get(PROBE_HEADER)
                .is_some_and(|v| v.as_bytes() == self.state.probe_token.as_bytes())
    }

    /// The request phases; `Ok(Some(reply))` answers locally (`bool`: the body was left unread).
    async fn handle(
        &self,
        session: &mut Session,
        call: &mut Call,
    ) -> Result<Option<(Reply, bool)>> {
        let req = session.req_header();
        let (method, uri, headers) = (req.method.clone(), req.uri.clone(), req.headers.clone());
        let head = Head {
            method: &method,
            path: uri.path(),
            query: uri.query(),
            headers: &headers,
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            listen: session.server_addr().and_then(|a| a.as_inet()).copied(),
        };
        if let Some(r) = call.begin(&head).await {
            return Ok(Some((r, !session.is_body_done())));
        }
        let t_body = Instant::now();
        let server = &call.snap.config.server;
        let limit = server.max_request_body_bytes;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(server.body_timeout_ms);
        let raw = match read_body(session, limit, deadline).await {
            Ok(b) => b,
            Err(BodyFail::Reply(reply)) => return Ok(Some((reply, true))),
            Err(BodyFail::Gone) => {
                call.client_failed(FailKind::ClientClosed);
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "the client went away while sending its body",
                )
                .map_err(|mut e| {
                    e.esource = ErrorSource::Downstream;
                    e
                });
            }
        };
        call.waited(t_body.elapsed());
        match call.on_body(&head, raw).await {
            Step::Reply(r) => Ok(Some((r, false))),
            Step::Forward => {
                if call.held_body().is_some()
                    && session.get_retry_buffer().is_none()
                    && !session.is_body_empty()
                {
                    return Ok(Some((
                        Reply::error(
                            411,
                            "length_required",
                            "Chunked request bodies over 64 KiB are not supported; send a Content-Length.",
                        ),
                        false,
                    )));
                }
                Ok(None)
            }
        }
    }

    /// Writes a local reply. `close`: the connection is not reused afterwards (the request body
    /// was left unread, or Pingora will drop it).
    async fn respond(
        &self,
        session: &mut Session,
        call: &mut Call,
        reply: Reply,
        close: bool,
    ) -> Result<()> {
        if !call.replied(&reply) {
            // A success whose record is not durable: the client gets none of it (SPEC §6).
            session.set_keepalive(None);
            return Error::e_explain(ErrorType::Custom("audit_unavailable"), "record not durable");
        }
        crate::reply::write(session, call, &reply, close).await
    }
}

impl SluiceProxy {
    /// A console request (`crate::console`): its body read (bounded), answered by the console;
    /// the chain does not run (the console audits itself) and nothing goes upstream.
    async fn console(&self, session: &mut Session, call: &mut Call, path: &str) -> Result<bool> {
        call.console = true;
        let timeout = Duration::from_millis(call.snap.config.server.body_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let page = match read_body(session, crate::console::MAX_BODY, deadline).await {
            Ok(body) => {
                let req = session.req_header();
                let client_ip = session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip());
                let request = crate::console::ConsoleRequest {
                    method: &req.method,
                    path,
                    query: req.uri.query(),
                    headers: &req.headers,
                    body,
                    client_ip,
                };
                crate::console::handle(&self.state, &request).await
            }
            Err(BodyFail::Reply(r)) => {
                session.set_keepalive(None);
                crate::console::unread_body(r.status.as_u16())
            }
            Err(BodyFail::Gone) => return Ok(true),
        };
        let mut h = ResponseHeader::build(page.status, Some(8))?;
        for (n, v) in page.all_headers() {
            h.append_header(n, v)?;
        }
        h.insert_header("content-length", page.body.len().to_string())?;
        session.write_response_header(Box::new(h), false).await?;
        session.write_response_body(Some(page.body), true).await?;
        Ok(true)
    }
}

/// The normalized path of a console request (see `crate::console::claims`).
fn console_path(raw: &str) -> Option<String> {
    let path = crate::routes::normalize(raw).ok()?;
    crate::console::claims(&path).then(|| path.into_owned())
}

#[async_trait]
impl ProxyHttp for SluiceProxy {
    /// Boxed: Pingora moves the context by value several times per request (into and within
    /// its request future), and `Call` is a few KiB; a box moves as one pointer.
    type CTX = Box<Call>;

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        // Not Pingora's default (its response compression, disabled): Sluice never compresses.
        HeldHead::register(modules);
    }

    fn new_ctx(&self) -> Box<Call> {
        Box::new(Call::new(&self.state))
    }

    async fn request_filter(&self, session: &mut Session, call: &mut Box<Call>) -> Result<bool> {
        if self.is_probe(session) {
            call.probe = true;
            let h = ResponseHeader::build(204, Some(1))?;
            session.set_keepalive(None);
            session.write_response_header(Box::new(h), true).await?;
            return Ok(true);
        }
        // Idle keep-alive connections are closed after `server.keepalive_idle_seconds` (the edge
        // closes them too; this keeps Pingora's own keep-alive bound the same).
        session.set_keepalive(Some(call.snap.config.server.keepalive_idle_seconds));
        // The console's and MCP's futures are boxed, and built only for their own paths: held
        // inline they would make this hook's future (which Pingora boxes and moves, whole, for
        // every request) several KiB larger.
        if let Some(path) = console_path(session.req_header().uri.path()) {
            return Box::pin(self.console(session, call, &path)).await;
        }
        if crate::mcp::claims(session.req_header().uri.path())
            && Box::pin(crate::mcp::serve(&self.state, session, call)).await?
        {
            return Ok(true);
        }
        match self.handle(session, call).await? {
            None => Ok(false),
            Some((reply, body_unread)) => {
                self.respond(session, call, reply, body_unread).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        call: &mut Box<Call>,
    ) -> Result<Box<HttpPeer>> {
        let u = call
            .upstream_rt()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream chosen"))?;
        let peer = u.peer();
        call.upstream_contacted();
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        call: &mut Box<Call>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = call.attempt_failed(classify(&e), false, false);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        call: &mut Box<Call>,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let started = session.response_written().is_some();
        // Pingora marks what failed on a reused (pooled) connection before an answer.
        let stale = client_reused && matches!(e.retry, RetryType::ReusedOnly);
        let retry = call.attempt_failed(classify(&e), started, stale);
        e.set_retry(retry);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        call: &mut Box<Call>,
    ) -> Result<()> {
        call.connected(reused);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        call: &mut Box<Call>,
    ) -> Result<()> {
        let plan = call
            .upstream_head(&req.headers, &req.uri)
            .map_err(|m| Error::explain(ErrorType::InternalError, m))?;
        for n in &plan.remove {
            req.remove_header(n);
        }
        for (n, v) in plan.insert {
            req.insert_header(n, v)?;
        }
        if let Some(uri) = plan.uri {
            req.set_uri(uri);
        }
        if let Some(m) = plan.method {
            req.set_method(m);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        call: &mut Box<Call>,
    ) -> Result<()> {
        if end_of_stream {
            call.request_sent();
        }
        if let Some(held) = call.held_body() {
            // Never `None` before the end: that would end the upstream body early.
            *body = Some(if end_of_stream {
                held.clone()
            } else {
                Bytes::new()
            });
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        call: &mut Box<Call>,
    ) -> Result<()> {
        match call.on_response_head(resp.status, &resp.headers) {
            Ok(plan) => {
                for n in &plan.remove {
                    resp.remove_header(n);
                }
                if plan.json_content_type {
                    resp.insert_header("content-type", "application/json")?;
                }
                Ok(())
            }
            Err(r) => Error::e_explain(ErrorType::HTTPStatus(r.status), r.why),
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        call: &mut Box<Call>,
    ) -> Result<()> {
        resp.insert_header("x-request-id", call.request_id())?;
        for (n, v) in call.response_headers() {
            resp.insert_header(n.clone(), v.clone())?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        call: &mut Box<Call>,
    ) -> Result<Option<Duration>> {
        match call.on_response_body(body, end_of_stream) {
            Ok(()) => {
                if end_of_stream && call.is_held() {
                    let len = body.as_ref().map_or(0, Bytes::len);
                    HeldHead::complete(session, call.upstream_status(), len, call.late_header());
                }
                Ok(None)
            }
            Err(r) => Error::e_explain(ErrorType::Custom("response_refused"), r.why),
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        call: &mut Box<Call>,
    ) -> FailToProxy {
        let started = session.response_written().is_some();
        let kind = if call.end.failure().is_some() && !started {
            FailKind::Refused
        } else {
            classify(e)
        };
        let nothing = FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
        match call.on_failure(kind, started) {
            FailAction::Nothing => nothing,
            FailAction::StreamError(ev) => {
                let _ = session.write_response_body(Some(ev), true).await;
                nothing
            }
            FailAction::Reply(reply) => {
                let status = reply.status.as_u16();
                // Pingora closes the connection after a proxy failure: say so, so that no client
                // reuses it for its next request.
                match self.respond(session, call, reply, true).await {
                    Ok(()) => FailToProxy {
                        error_code: status,
                        can_reuse_downstream: false,
                    },
                    Err(_) => nothing,
                }
            }
        }
    }

    fn request_summary(&self, session: &Session, call: &Box<Call>) -> String {
        let req = session.req_header();
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        call.log_summary(req.method.as_str(), pq)
    }

    fn suppress_error_log(&self, _session: &Session, _call: &Box<Call>, e: &Error) -> bool {
        // A client's mistake or departure is not Sluice's failure: a WARN, never an ERROR.
        let client = matches!(
            classify(e),
            FailKind::ClientClosed | FailKind::ClientTimeout | FailKind::ClientBad
        );
        if client {
            tracing::warn!(error = %e, "client error");
        }
        client
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, call: &mut Box<Call>) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        call.log(status, e.map(classify)).await;
    }
}

/// Who caused a proxy error, and how.
fn classify(e: &Error) -> FailKind {
    let t = e.etype();
    match e.esource() {
        ErrorSource::Downstream => match t {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => FailKind::ClientTimeout,
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                FailKind::ClientClosed
            }
            _ => FailKind::ClientBad,
        },
        ErrorSource::Upstream => match t {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                FailKind::UpstreamTimeout
            }
            ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute => {
                FailKind::UpstreamConnect
            }
            ErrorType::TLSHandshakeFailure
            | ErrorType::InvalidCert
            | ErrorType::TLSHandshakeTimedout => FailKind::UpstreamTls,
            _ => FailKind::UpstreamReset,
        },
        _ => match t {
            ErrorType::HTTPStatus(_) | ErrorType::Custom(_) => FailKind::Refused,
            _ => FailKind::Internal,
        },
    }
}

/// Why a request body was not read whole.
pub(crate) enum BodyFail {
    /// A reply to send (413; 400 for bad framing; 408 for a body too slow).
    Reply(Reply),
    /// The client went away: nothing can be sent.
    Gone,
}

/// Reads the whole request body, refusing more than `limit` bytes (413, nothing forwarded),
/// within `deadline`. A body that breaks HTTP's framing, stops arriving or is cut off is the
/// client's failure, never Sluice's.
pub(crate) async fn read_body(
    session: &mut Session,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<Bytes, BodyFail> {
    let too_large = || {
        BodyFail::Reply(Reply::error(
            413,
            "request_too_large",
            format!("The request body is larger than this gateway accepts ({limit} bytes)."),
        ))
    };
    if session.is_body_empty() {
        return Ok(Bytes::new());
    }
    let declared: Option<usize> = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(|_| BodyFail::Gone)?;
    }
    // A body that arrives in one chunk (the usual case) is kept as it came, uncopied.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    // See the module docs: the retry buffer must see the last ≤ 64 KiB, and only those.
    let mut buffering = false;
    loop {
        let have = first.as_ref().map_or(0, Bytes::len) + buf.len();
        let remaining_small = match declared {
            Some(n) => n.saturating_sub(have) <= RETRY_BUFFER,
            None => have == 0,
        };
        if !buffering && remaining_small {
            session.as_downstream_mut().enable_retry_buffering();
            buffering = true;
        }
        // Lazy: no timer is made while the body is already there (the usual case).
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let read = pingora_timeout::timeout(left, session.read_request_body()).await;
        match read {
            Ok(Ok(Some(chunk))) => {
                if have + chunk.len() > limit {
                    return Err(too_large());
                }
                if have == 0 {
                    first = Some(chunk);
                    continue;
                }
                if let Some(head) = first.take() {
                    buf.reserve(declared.unwrap_or(have + chunk.len()).min(limit));
                    buf.extend_from_slice(&head);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(body_error(&e)),
            Err(_) => return Err(slow_body()),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

fn slow_body() -> BodyFail {
    BodyFail::Reply(Reply::error(
        408,
        "request_timeout",
        "The request body did not arrive within server.body_timeout_ms.",
    ))
}

/// A failed body read, as the client's failure.
fn body_error(e: &Error) -> BodyFail {
    // The edge's strict framing check fails the read with `InvalidData` (see `edge::chunked`).
    let bad_framing = e
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData);
    if bad_framing {
        return BodyFail::Reply(Reply::error(
            400,
            "bad_request",
            "The request body's chunked framing is not valid HTTP/1.1 (RFC 9112 §7.1).",
        ));
    }
    match e.etype() {
        ErrorType::ReadTimedout => slow_body(),
        ErrorType::ReadError | ErrorType::ConnectionClosed => BodyFail::Gone,
        _ => BodyFail::Reply(Reply::error(
            400,
            "bad_request",
            "The request body's framing is not valid HTTP/1.1 (chunked encoding).",
        )),
    }
}
