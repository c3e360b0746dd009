//! The Pingora adapter: turns each phase of a proxied request into calls on the filter chain.
//!
//! Request path: `request_filter` reads and parses the whole body (bounded), routes by model,
//! runs the chain and prepares the exact bytes to send upstream; the body is then handed to
//! Pingora through `request_body_filter`. Response path: `upstream_response_filter` chooses how
//! the body is handled (passed through, held whole for scanning, or framed as SSE events) and
//! `response_body_filter` does it, chunk by chunk, without ever holding a whole stream.
//!
//! Why the body is read in `request_filter`: the upstream depends on the body's `model`, and
//! Pingora picks the upstream before it reads the body. Pingora forwards a body consumed early
//! only through its retry buffer (64 KiB, filled by reads made while it is enabled), so the
//! buffer is enabled for the last ≤ 64 KiB of a `Content-Length` body; that makes Pingora call
//! `request_body_filter` once, where the held (possibly rewritten) body replaces it. A chunked
//! body larger than 64 KiB cannot take that path and is refused with 411.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Method};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use serde_json::{json, Value};
use sluice_filters::{
    Cx, Exchange, JsonBody, Outcome, Reply, Request, RequestHead, ResponseHead, Route, StreamEvent,
    Usage, Verdict,
};

use crate::gateway::{EngineState, InflightGuard, Snapshot};
use crate::routes;
use crate::sse::{RawEvent, SseFramer};

/// The header of the start-up probe (see `gateway::wait_until_accepting`).
pub const PROBE_HEADER: &str = "x-sluice-probe";

/// Pingora's retry buffer size (`BODY_BUF_LIMIT` in pingora-core).
const RETRY_BUFFER: usize = 64 * 1024;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus the
/// proxy's own credentials.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

pub struct SluiceProxy {
    state: Arc<EngineState>,
}

impl SluiceProxy {
    pub fn new(state: Arc<EngineState>) -> SluiceProxy {
        SluiceProxy { state }
    }
}

/// How the response body is handled.
enum RespMode {
    /// Forwarded as it comes (errors, non-JSON, or nothing to do).
    Pass,
    /// A non-streamed 2xx JSON body held whole (bounded) for filters and usage.
    Hold(BytesMut),
    /// A streamed 2xx body framed into SSE events.
    Sse(SseFramer),
}

/// A reply Sluice produced itself (or an error it turned into one).
struct LocalDone {
    outcome: Outcome,
    code: Option<&'static str>,
}

pub struct ReqCtx {
    snap: Arc<Snapshot>,
    cx: Cx,
    _inflight: InflightGuard,
    upstream: Option<usize>,
    /// The exact body to send upstream.
    body: Option<Bytes>,
    /// Path to request upstream when it differs from the client's (agent runs).
    upstream_path: Option<String>,
    agent_response: bool,
    local: Option<LocalDone>,
    failure: Option<(Outcome, &'static str)>,
    mode: RespMode,
    upstream_status: u16,
    t_upstream_start: Option<Instant>,
    t_upstream_end: Option<Instant>,
    /// Overhead accounting (see [`ReqCtx::overhead`]): when the request's head had been read,
    /// time spent waiting for the client's body or for a new upstream connection, when the
    /// request was handed to the upstream, and Sluice's own hook time after that instant.
    t_start: Instant,
    waited: Duration,
    t_peer: Option<Instant>,
    t_req_sent: Option<Instant>,
    t_failed: Option<Instant>,
    t_resp_head: Option<Instant>,
    span_hooks: Duration,
    first_sent: bool,
    stream_counted: bool,
    completed: bool,
    /// The gateway's own start-up probe: answered 204, never logged or audited.
    probe: bool,
}

impl ReqCtx {
    /// What `sluice_overhead_seconds` observes: the time from the request's head having been
    /// read to the end of the exchange, less the time Sluice waited: for the client's body, for
    /// a new upstream connection, and for the upstream — from handing it the request until its
    /// response head arrived (or it failed), and for a stream until its last byte, minus the
    /// time Sluice's own hooks ran meanwhile. So it is what Sluice adds to a request's latency:
    /// its hooks and filters, Pingora's HTTP handling, the syscalls on both sides. Not in it:
    /// Pingora reading and parsing the request head (before the first hook), writing the
    /// request body upstream (inside the wait), and for streams Pingora's forwarding of each
    /// chunk between two hooks.
    fn overhead(&self) -> Duration {
        let total = self.t_start.elapsed();
        let upstream = match self.t_req_sent {
            Some(sent) => {
                let (end, hooks) = if self.cx.stream {
                    (self.t_upstream_end.or(self.t_failed), self.span_hooks)
                } else {
                    (self.t_resp_head.or(self.t_failed), Duration::ZERO)
                };
                end.unwrap_or_else(Instant::now)
                    .saturating_duration_since(sent)
                    .saturating_sub(hooks)
            }
            None => Duration::ZERO,
        };
        total.saturating_sub(self.waited).saturating_sub(upstream)
    }
}

#[async_trait]
impl ProxyHttp for SluiceProxy {
    type CTX = ReqCtx;

    fn new_ctx(&self) -> ReqCtx {
        ReqCtx {
            snap: self.state.snapshot.load_full(),
            cx: Cx::new(String::new(), Method::GET, String::new()),
            _inflight: InflightGuard::new(&self.state),
            upstream: None,
            body: None,
            upstream_path: None,
            agent_response: false,
            local: None,
            failure: None,
            mode: RespMode::Pass,
            upstream_status: 0,
            t_upstream_start: None,
            t_upstream_end: None,
            t_start: Instant::now(),
            waited: Duration::ZERO,
            t_peer: None,
            t_req_sent: None,
            t_failed: None,
            t_resp_head: None,
            span_hooks: Duration::ZERO,
            first_sent: false,
            stream_counted: false,
            completed: false,
            probe: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut ReqCtx) -> Result<bool> {
        if self.is_probe(session) {
            ctx.probe = true;
            let h = ResponseHeader::build(204, Some(1))?;
            session.set_keepalive(None);
            session.write_response_header(Box::new(h), true).await?;
            return Ok(true);
        }
        let result = self.handle_request(session, ctx).await;
        match result {
            Ok(Step::Forward) => Ok(false),
            Ok(Step::Reply(reply, body_unread)) => {
                self.respond(session, ctx, reply, body_unread).await?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut ReqCtx,
    ) -> Result<Box<HttpPeer>> {
        let idx = ctx
            .upstream
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream chosen"))?;
        let u = ctx.snap.upstreams.get(idx).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "upstream index out of range")
        })?;
        let mut peer = HttpPeer::new(u.addr, u.tls, u.host.clone());
        peer.group_key = u.pool_key;
        peer.options.connection_timeout = Some(u.connect_timeout);
        peer.options.read_timeout = Some(u.read_timeout);
        peer.options.idle_timeout = Some(u.idle_timeout);
        peer.options.write_timeout = Some(u.read_timeout);
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        if let Some(ca) = &u.ca {
            peer.options.ca = Some(ca.clone());
        }
        let now = Instant::now();
        ctx.t_upstream_start.get_or_insert(now);
        ctx.t_peer = Some(now);
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        if !reused {
            // Connecting (and the TLS handshake) is the upstream's time, not Sluice's.
            if let Some(t) = ctx.t_peer {
                ctx.waited += t.elapsed();
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        let Some(u) = ctx.upstream.and_then(|i| ctx.snap.upstreams.get(i)) else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        for n in hop_by_hop_present(&req.headers) {
            req.remove_header(n.as_str());
        }
        req.remove_header("authorization");
        req.remove_header(crate::agents::INTERNAL_RUN_HEADER);
        if let Some(auth) = &u.authorization {
            req.insert_header("authorization", auth.clone())?;
        }
        req.insert_header("host", u.host_header.as_str())?;
        req.insert_header("x-request-id", ctx.cx.request_id.as_str())?;
        let rewrite = !u.base_path.is_empty()
            || ctx.upstream_path.is_some()
            || req.uri.scheme().is_some()
            || req.uri.path() != ctx.cx.path;
        if rewrite {
            let path = ctx.upstream_path.as_deref().unwrap_or(&ctx.cx.path);
            let query = req.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            let full = format!("{}{}{}", u.base_path, path, query);
            let uri: http::Uri = full.parse().map_err(|_| {
                Error::explain(ErrorType::InternalError, "upstream path is not a valid URI")
            })?;
            req.set_uri(uri);
        }
        if let Some(body) = &ctx.body {
            req.remove_header("transfer-encoding");
            req.insert_header("content-length", body.len().to_string())?;
            if ctx.agent_response {
                req.set_method(Method::POST);
                req.insert_header("content-type", "application/json")?;
            }
        }
        if matches!(ctx.cx.route, Route::ChatCompletions | Route::AgentRun) {
            // Filters read response bodies; a compressed one could not be scanned.
            req.insert_header("accept-encoding", "identity")?;
        }
        // Until the body is handed over (request_body_filter), or now if there is none.
        ctx.t_req_sent = Some(Instant::now());
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        if end_of_stream {
            ctx.t_req_sent = Some(Instant::now());
        }
        if let Some(held) = &ctx.body {
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
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        let t0 = Instant::now();
        ctx.t_resp_head.get_or_insert(t0);
        ctx.upstream_status = resp.status.as_u16();
        for n in hop_by_hop_present(&resp.headers) {
            resp.remove_header(n.as_str());
        }
        let ok = resp.status.is_success();
        let ctype = resp
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let is_sse = ctype.starts_with("text/event-stream");
        let is_json = ctype.contains("json");
        let encoded = resp
            .headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.eq_ignore_ascii_case("identity"));
        let llm_route = matches!(ctx.cx.route, Route::ChatCompletions | Route::AgentRun);
        let server = &ctx.snap.config.server;
        ctx.mode = if ok && llm_route && is_sse && ctx.cx.stream {
            RespMode::Sse(SseFramer::new(server.max_sse_event_bytes))
        } else if ok && llm_route && (is_json || ctx.agent_response) && !ctx.cx.stream {
            RespMode::Hold(BytesMut::new())
        } else {
            RespMode::Pass
        };
        let needs = ctx.snap.chain.needs();
        if !matches!(ctx.mode, RespMode::Pass)
            && encoded
            && (needs.response_body || needs.stream_events)
        {
            // Fail closed: a body the filters cannot read is not delivered.
            ctx.failure = Some((Outcome::UpstreamError, "upstream_unscannable"));
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                "upstream sent a compressed body although identity was requested",
            );
        }
        // A held body keeps the upstream's Content-Length when nothing can change it (no filter
        // reads response bodies and it is not an agent run): Pingora then sends the header and
        // the body in one write. Without a length it flushes the header alone, then the body as
        // a chunk, then the last-chunk marker: three sends, each a wake-up of the client.
        let length_kept = matches!(ctx.mode, RespMode::Hold(_))
            && !needs.response_body
            && !ctx.agent_response
            && resp.headers.contains_key("content-length");
        if !matches!(ctx.mode, RespMode::Pass) && !length_kept {
            resp.remove_header("content-length");
        }
        if matches!(ctx.mode, RespMode::Sse(_)) {
            self.state.metrics.active_streams.inc();
            ctx.stream_counted = true;
        }
        let head = ResponseHead {
            status: resp.status,
            headers: &resp.headers,
        };
        let snap = ctx.snap.clone();
        snap.chain.on_response_head(&head, &mut ctx.cx);
        ctx.span_hooks += t0.elapsed();
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        resp.insert_header("x-request-id", ctx.cx.request_id.as_str())?;
        for (n, v) in &ctx.cx.response_headers {
            resp.insert_header(n.clone(), v.clone())?;
        }
        if ctx.agent_response && matches!(ctx.mode, RespMode::Hold(_)) {
            resp.insert_header("content-type", "application/json")?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut ReqCtx,
    ) -> Result<Option<Duration>> {
        let t0 = Instant::now();
        if end_of_stream {
            ctx.t_upstream_end = Some(t0);
        }
        let snap = ctx.snap.clone();
        let mut mode = std::mem::replace(&mut ctx.mode, RespMode::Pass);
        let result = match &mut mode {
            RespMode::Pass => {
                if ctx.cx.stream && !ctx.first_sent && body.as_ref().is_some_and(|b| !b.is_empty())
                {
                    self.first_sent(ctx);
                }
                if end_of_stream {
                    self.complete(ctx);
                }
                Ok(())
            }
            RespMode::Hold(buf) => self.hold_body(&snap, ctx, buf, body, end_of_stream),
            RespMode::Sse(framer) => self.frame_events(&snap, ctx, framer, body, end_of_stream),
        };
        ctx.mode = mode;
        if !end_of_stream {
            // Inside the upstream's span; the last call's time comes after it.
            ctx.span_hooks += t0.elapsed();
        }
        result.map(|()| None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut ReqCtx,
    ) -> FailToProxy {
        ctx.t_failed.get_or_insert_with(Instant::now);
        let upstream_name = ctx
            .upstream
            .and_then(|i| ctx.snap.upstreams.get(i))
            .map(|u| u.name.clone());
        let started = session.response_written().is_some();
        let timeout = matches!(
            e.etype(),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        let source = e.esource().clone();
        if source == ErrorSource::Upstream {
            if let Some(name) = &upstream_name {
                let kind = match e.etype() {
                    ErrorType::ConnectTimedout
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout => "timeout",
                    ErrorType::ConnectRefused
                    | ErrorType::ConnectError
                    | ErrorType::ConnectNoRoute => "connect",
                    ErrorType::TLSHandshakeFailure
                    | ErrorType::InvalidCert
                    | ErrorType::TLSHandshakeTimedout => "tls",
                    _ if started => "mid_stream",
                    _ => "reset",
                };
                self.state
                    .metrics
                    .upstream_errors
                    .with_label_values(&[name.as_str(), kind])
                    .inc();
            }
        }
        if started {
            // The client already has a status line: end a stream with an error event rather
            // than a silent truncation.
            let code = if timeout {
                "upstream_timeout"
            } else {
                "upstream_unavailable"
            };
            let outcome = match source {
                ErrorSource::Downstream => Outcome::ClientClosed,
                ErrorSource::Upstream => Outcome::UpstreamError,
                _ => Outcome::InternalError,
            };
            ctx.failure.get_or_insert((outcome, code));
            if outcome != Outcome::ClientClosed && matches!(ctx.mode, RespMode::Sse(_)) {
                let msg = if timeout {
                    "The upstream stopped sending before the answer was complete (timeout)."
                } else {
                    "The upstream connection failed before the answer was complete."
                };
                let ev = json!({"error": {"message": msg, "type": "upstream_error", "code": code, "param": null}});
                let _ = session
                    .write_response_body(Some(Bytes::from(format!("data: {ev}\n\n"))), true)
                    .await;
            }
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let reply = match (source, e.etype()) {
            (_, ErrorType::HTTPStatus(502)) if ctx.failure.is_some() => Reply::error(
                502,
                "upstream_unavailable",
                "The upstream sent a compressed body that Sluice cannot scan; nothing was delivered.",
            ),
            (ErrorSource::Downstream, ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed) => {
                ctx.failure = Some((Outcome::ClientClosed, "client_closed"));
                return FailToProxy { error_code: 0, can_reuse_downstream: false };
            }
            (ErrorSource::Downstream, ErrorType::ReadTimedout) => {
                ctx.failure = Some((Outcome::ClientClosed, "client_timeout"));
                return FailToProxy { error_code: 0, can_reuse_downstream: false };
            }
            (ErrorSource::Downstream, _) => Reply::error(400, "invalid_request", "The request could not be parsed."),
            (ErrorSource::Upstream, _) if timeout => Reply::error(
                504,
                "upstream_timeout",
                format!("The upstream `{}` did not answer in time.", upstream_name.as_deref().unwrap_or("?")),
            ),
            (ErrorSource::Upstream, _) => Reply::error(
                502,
                "upstream_unavailable",
                format!(
                    "The upstream `{}` refused or dropped the connection before answering.",
                    upstream_name.as_deref().unwrap_or("?")
                ),
            ),
            _ => {
                tracing::error!(request_id = %ctx.cx.request_id, error = %e, "internal error");
                Reply::error(500, "internal_error", "Sluice failed to handle this request; see the logs with its x-request-id.")
            }
        };
        let status = reply.status.as_u16();
        // Pingora closes the connection after a proxy failure: say so, so that no client
        // reuses it for its next request.
        match self.respond(session, ctx, reply, true).await {
            Ok(()) => FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            },
            Err(_) => FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            },
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut ReqCtx) {
        if ctx.probe {
            return;
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let (outcome, code) = match (&ctx.local, &ctx.failure, e) {
            (_, Some((o, c)), _) => (*o, Some(*c)),
            (Some(l), _, _) => (l.outcome, l.code),
            (None, None, Some(err)) => match err.esource() {
                ErrorSource::Downstream => (Outcome::ClientClosed, None),
                ErrorSource::Upstream => (Outcome::UpstreamError, None),
                _ => (Outcome::InternalError, None),
            },
            (None, None, None) => match ctx.upstream_status {
                200..=399 => (Outcome::Ok, None),
                400..=499 => (Outcome::BadRequest, None),
                _ => (Outcome::UpstreamError, None),
            },
        };
        let ex = self.exchange(ctx, status, outcome, code);
        let m = &self.state.metrics;
        let route = ctx.cx.route.label();
        let model = ctx.cx.model.as_deref().unwrap_or("");
        let status_s = status.to_string();
        m.requests
            .with_label_values(&[route, model, status_s.as_str(), outcome.as_str()])
            .inc();
        m.request_duration
            .with_label_values(&[route])
            .observe(ex.latency.as_secs_f64());
        if let (Some(up), Some(d)) = (
            ctx.upstream.and_then(|i| ctx.snap.upstreams.get(i)),
            ex.upstream_latency,
        ) {
            m.upstream_duration
                .with_label_values(&[up.name.as_str()])
                .observe(d.as_secs_f64());
        }
        m.overhead.observe(ctx.overhead().as_secs_f64());
        if let Some(u) = ctx.cx.usage {
            let org = ctx.cx.identity.as_ref().map(|i| &*i.org).unwrap_or("");
            m.tokens
                .with_label_values(&[model, org, "prompt"])
                .inc_by(u.prompt_tokens);
            m.tokens
                .with_label_values(&[model, org, "completion"])
                .inc_by(u.completion_tokens);
        }
        if ctx.agent_response {
            let agent = ctx.cx.agent_id.as_deref().unwrap_or("");
            let status = if outcome == Outcome::Ok {
                "completed"
            } else {
                "failed"
            };
            m.agent_runs.with_label_values(&[agent, status]).inc();
        }
        if ctx.stream_counted {
            m.active_streams.dec();
            ctx.stream_counted = false;
        }
        let snap = ctx.snap.clone();
        snap.chain.on_log(&ex, &ctx.cx).await;
    }
}

/// What `handle_request` decided.
enum Step {
    Forward,
    /// Answer locally; `true` when the request body was left unread.
    Reply(Reply, bool),
}

impl SluiceProxy {
    fn is_probe(&self, session: &Session) -> bool {
        let req = session.req_header();
        req.uri.path() == "/"
            && req
                .headers
                .get(PROBE_HEADER)
                .is_some_and(|v| v.as_bytes() == self.state.probe_token.as_bytes())
    }

    async fn handle_request(&self, session: &mut Session, ctx: &mut ReqCtx) -> Result<Step> {
        let snap = ctx.snap.clone();
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        ctx.cx.request_id = request_id(&req.headers);
        ctx.cx.method = method.clone();
        ctx.cx.path = path.clone();
        ctx.cx.user_agent = req
            .headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect());
        ctx.cx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let (route, id, run_id) = routes::match_route(&method, &path);
        ctx.cx.route = route;
        if route == Route::AgentRun {
            ctx.cx.agent_id = id.map(str::to_string);
        }
        let headers = req.headers.clone();
        if let Some(token) = headers.get(crate::agents::INTERNAL_RUN_HEADER) {
            let claimed = match (route, id, token.to_str()) {
                (Route::AgentRun, Some(agent), Ok(t)) => self.state.runs.claim(t, agent),
                _ => None,
            };
            let loopback = ctx.cx.client_ip.is_some_and(|ip| ip.is_loopback());
            match claimed {
                Some((_run, identity)) if loopback => {
                    ctx.cx.identity = identity;
                    ctx.cx.extensions.insert(sluice_filters::PreAuthenticated);
                }
                _ => {
                    return Ok(Step::Reply(
                        Reply::error(
                            401,
                            "invalid_api_key",
                            "Unknown or used internal run token.",
                        ),
                        !session.is_body_done(),
                    ))
                }
            }
        }
        let head = RequestHead {
            method: &method,
            path: &path,
            headers: &headers,
        };
        if let Verdict::Respond(r) = snap.chain.on_request_head(&head, &mut ctx.cx).await {
            return Ok(Step::Reply(r, !session.is_body_done()));
        }
        if route == Route::Unknown {
            return Ok(Step::Reply(
                Reply::error(
                    404,
                    "not_found",
                    format!("No route for {method} {path}; the API lives under /v1/."),
                ),
                !session.is_body_done(),
            ));
        }

        // The body, bounded.
        let t_body = Instant::now();
        let raw = match read_body(session, snap.config.server.max_request_body_bytes).await? {
            Ok(b) => b,
            Err(reply) => return Ok(Step::Reply(reply, true)),
        };
        ctx.waited += t_body.elapsed();

        let declared_json = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.contains("json"));
        let needs_json = matches!(
            route,
            Route::ChatCompletions | Route::AgentRun | Route::Embeddings
        );
        let mut body = if raw.is_empty() && !needs_json {
            JsonBody::raw(raw)
        } else if needs_json || declared_json {
            match serde_json::from_slice::<Value>(&raw) {
                Ok(v) if v.is_object() => JsonBody::parsed(raw, v),
                Ok(_) => {
                    return Ok(Step::Reply(
                        Reply::error(
                            400,
                            "invalid_json",
                            "The request body must be a JSON object.",
                        ),
                        false,
                    ))
                }
                Err(e) => {
                    let why = if std::str::from_utf8(&raw).is_err() {
                        "it is not valid UTF-8".to_string()
                    } else {
                        e.to_string()
                    };
                    return Ok(Step::Reply(
                        Reply::error(
                            400,
                            "invalid_json",
                            format!("The request body is not valid JSON: {why}."),
                        ),
                        false,
                    ));
                }
            }
        } else {
            JsonBody::raw(raw)
        };

        // What the route needs from the body, and where it goes.
        let mut async_input = None;
        match route {
            Route::ChatCompletions | Route::Embeddings => {
                if let Some(r) =
                    self.read_chat_fields(&snap, ctx, &body, route == Route::ChatCompletions)
                {
                    return Ok(Step::Reply(r, false));
                }
            }
            Route::Passthrough => {
                let model = body
                    .json()
                    .and_then(|v| v.get("model"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                match model {
                    Some(m) => match snap.models.get(&m) {
                        Some(&(_, up)) => {
                            ctx.upstream = Some(up);
                            ctx.cx.upstream = snap.upstreams.get(up).map(|u| u.name.clone());
                            ctx.cx.model = Some(m);
                        }
                        None => return Ok(Step::Reply(model_not_found(&m), false)),
                    },
                    None if snap.upstreams.is_empty() => {
                        return Ok(Step::Reply(
                            Reply::error(502, "upstream_unavailable", "No upstream is configured."),
                            false,
                        ))
                    }
                    None => {
                        ctx.upstream = Some(0);
                        ctx.cx.upstream = snap.upstreams.first().map(|u| u.name.clone());
                    }
                }
            }
            Route::AgentRun => {
                let agent_id = id.unwrap_or_default();
                match crate::agents::prepare(&snap, &mut ctx.cx, agent_id, &mut body) {
                    Ok(prep) => {
                        async_input = prep.async_input;
                        ctx.upstream = Some(prep.upstream);
                        ctx.cx.upstream = snap.upstreams.get(prep.upstream).map(|u| u.name.clone());
                        ctx.upstream_path = Some("/v1/chat/completions".into());
                        ctx.agent_response = true;
                    }
                    Err(reply) => return Ok(Step::Reply(reply, false)),
                }
            }
            Route::AgentRunStatus => {
                ctx.cx.agent_id = id.map(str::to_string);
            }
            Route::ListModels | Route::GetModel | Route::Keys | Route::Key | Route::Unknown => {}
        }

        let mut request = Request {
            method: &method,
            path: &path,
            headers: &headers,
            body: &mut body,
        };
        if let Verdict::Respond(r) = snap.chain.on_request(&mut request, &mut ctx.cx).await {
            return Ok(Step::Reply(r, false));
        }

        match route {
            Route::ListModels => {
                let list = routes::list_models(&snap.config, ctx.cx.identity.as_ref());
                return Ok(Step::Reply(Reply::json(200, &list), false));
            }
            Route::GetModel => {
                let id = id.unwrap_or_default();
                return Ok(Step::Reply(
                    match routes::get_model(&snap.config, ctx.cx.identity.as_ref(), id) {
                        Some(m) => Reply::json(200, &m),
                        None => model_not_found(id),
                    },
                    false,
                ));
            }
            Route::AgentRun if async_input.is_some() => {
                let cfg = &snap.config.agent_runs;
                let started = match self.state.runs.start(cfg, &ctx.cx).await {
                    Ok(s) => s,
                    Err(r) => return Ok(Step::Reply(r, false)),
                };
                let agent = ctx.cx.agent_id.clone().unwrap_or_default();
                self.state
                    .metrics
                    .agent_runs
                    .with_label_values(&[agent.as_str(), "queued"])
                    .inc();
                let queued = Reply::json(202, &started.queued);
                // The execution is counted when it finishes, not this acceptance.
                ctx.agent_response = false;
                let listen = session.server_addr().and_then(|a| a.as_inet()).copied();
                match listen {
                    Some(addr) => {
                        let input = async_input.take().unwrap_or_default();
                        tokio::spawn(crate::agents::execute(
                            self.state.clone(),
                            addr,
                            agent,
                            started,
                            input,
                        ));
                    }
                    None => {
                        let failed = json!({"status": "failed", "error": {"message": "no listener address"}});
                        self.state.runs.finish(cfg, &started.run_id, failed).await;
                    }
                }
                return Ok(Step::Reply(queued, false));
            }
            Route::Keys | Route::Key => {
                let reply =
                    crate::keys::self_service(&self.state, &snap, &ctx.cx, &method, id, &body)
                        .await;
                return Ok(Step::Reply(reply, false));
            }
            Route::AgentRunStatus => {
                let reply = self
                    .state
                    .runs
                    .status(
                        id.unwrap_or_default(),
                        run_id.unwrap_or_default(),
                        ctx.cx.identity.as_ref(),
                    )
                    .await;
                return Ok(Step::Reply(reply, false));
            }
            _ => {}
        }

        if body.json().is_some() && ctx.cx.model.is_some() {
            self.rewrite_for_upstream(&snap, ctx, &mut body);
        }
        let out = body.to_bytes();
        ctx.body = if out.is_empty() && !body.is_changed() {
            None
        } else {
            Some(out)
        };
        if ctx.body.is_some() && session.get_retry_buffer().is_none() && !session.is_body_empty() {
            return Ok(Step::Reply(
                Reply::error(
                    411,
                    "length_required",
                    "Chunked request bodies over 64 KiB are not supported; send a Content-Length.",
                ),
                false,
            ));
        }
        if ctx.upstream.is_none() {
            return Ok(Step::Reply(
                Reply::error(500, "internal_error", "No upstream was chosen."),
                false,
            ));
        }
        Ok(Step::Forward)
    }

    /// Validates a chat/embeddings body and routes by its model.
    fn read_chat_fields(
        &self,
        snap: &Snapshot,
        ctx: &mut ReqCtx,
        body: &JsonBody,
        chat: bool,
    ) -> Option<Reply> {
        let v = body.json()?;
        let model = match v.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => {
                return Some(Reply::error(
                    400,
                    "missing_model",
                    "The request needs a `model` (a string); GET /v1/models lists the ones you may use.",
                ))
            }
        };
        if chat {
            if !v.get("messages").is_some_and(Value::is_array) {
                return Some(Reply::error(
                    400,
                    "missing_messages",
                    "The request needs `messages` (an array).",
                ));
            }
            match v.get("stream") {
                None | Some(Value::Null) => {}
                Some(Value::Bool(b)) => ctx.cx.stream = *b,
                Some(_) => {
                    return Some(Reply::error(
                        400,
                        "invalid_stream",
                        "`stream` must be true or false.",
                    ))
                }
            }
            ctx.cx.client_wants_stream_usage = v
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            ctx.cx.max_tokens = v
                .get("max_completion_tokens")
                .or_else(|| v.get("max_tokens"))
                .and_then(Value::as_u64);
        }
        let Some(&(_, up)) = snap.models.get(&model) else {
            return Some(model_not_found(&model));
        };
        ctx.upstream = Some(up);
        ctx.cx.upstream = snap.upstreams.get(up).map(|u| u.name.clone());
        ctx.cx.model = Some(model);
        None
    }

    /// The upstream's own model name, and usage in streams.
    fn rewrite_for_upstream(&self, snap: &Snapshot, ctx: &ReqCtx, body: &mut JsonBody) {
        let rename = ctx
            .cx
            .model
            .as_ref()
            .and_then(|m| snap.models.get(m))
            .and_then(|&(i, _)| snap.config.models.get(i))
            .and_then(|m| m.upstream_model.clone());
        let ask_usage = ctx.cx.stream && !ctx.cx.client_wants_stream_usage;
        if rename.is_none() && !ask_usage {
            return;
        }
        let Some(Value::Object(obj)) = body.json_mut() else {
            return;
        };
        if let Some(r) = rename {
            obj.insert("model".into(), Value::String(r));
        }
        if ask_usage {
            let opts = obj.entry("stream_options").or_insert_with(|| json!({}));
            if let Value::Object(o) = opts {
                o.insert("include_usage".into(), Value::Bool(true));
            } else {
                *opts = json!({"include_usage": true});
            }
        }
    }

    /// Writes a local reply. `close`: the connection is not reused afterwards (the request body
    /// was left unread, or Pingora will drop it).
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
        reply: Reply,
        close: bool,
    ) -> Result<()> {
        let mut h = ResponseHeader::build(reply.status, Some(8))?;
        h.insert_header("content-type", reply.content_type)?;
        h.insert_header("content-length", reply.body.len().to_string())?;
        h.insert_header("x-request-id", ctx.cx.request_id.as_str())?;
        for (n, v) in &ctx.cx.response_headers {
            h.insert_header(n.clone(), v.clone())?;
        }
        for (n, v) in reply.headers {
            h.insert_header(n, v)?;
        }
        let status = reply.status.as_u16();
        ctx.local = Some(LocalDone {
            outcome: reply.outcome,
            code: reply.code,
        });
        let ex = self.exchange(ctx, status, reply.outcome, reply.code);
        ctx.snap.chain.on_response_complete(&ex, &ctx.cx);
        ctx.cx.response_completed = true;
        ctx.completed = true;
        if close {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(h), false).await?;
        session.write_response_body(Some(reply.body), true).await?;
        Ok(())
    }

    fn exchange(
        &self,
        ctx: &ReqCtx,
        status: u16,
        outcome: Outcome,
        code: Option<&'static str>,
    ) -> Exchange {
        let upstream_latency = ctx
            .t_upstream_start
            .map(|s| ctx.t_upstream_end.unwrap_or_else(Instant::now) - s);
        Exchange {
            status,
            outcome,
            latency: ctx.cx.started.elapsed(),
            upstream_latency,
            error_code: code,
        }
    }

    fn first_sent(&self, ctx: &mut ReqCtx) {
        ctx.first_sent = true;
        let model = ctx.cx.model.as_deref().unwrap_or("");
        self.state
            .metrics
            .ttft
            .with_label_values(&[model])
            .observe(ctx.cx.started.elapsed().as_secs_f64());
    }

    /// Just before the last bytes go out: the filters' durability hook.
    fn complete(&self, ctx: &mut ReqCtx) {
        if ctx.completed {
            return;
        }
        ctx.completed = true;
        let outcome = match ctx.upstream_status {
            200..=399 => Outcome::Ok,
            400..=499 => Outcome::BadRequest,
            _ => Outcome::UpstreamError,
        };
        let ex = self.exchange(ctx, ctx.upstream_status, outcome, None);
        ctx.snap.chain.on_response_complete(&ex, &ctx.cx);
        ctx.cx.response_completed = true;
    }

    fn hold_body(
        &self,
        snap: &Snapshot,
        ctx: &mut ReqCtx,
        buf: &mut BytesMut,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<()> {
        if let Some(b) = body.take() {
            if buf.len() + b.len() > snap.config.server.max_response_body_bytes {
                // Fail closed: an answer too large to scan is not delivered.
                ctx.failure = Some((Outcome::UpstreamError, "response_too_large"));
                return Error::e_explain(
                    ErrorType::Custom("response_too_large"),
                    "upstream response over max_response_body_bytes",
                );
            }
            buf.extend_from_slice(&b);
        }
        if !end {
            return Ok(());
        }
        let raw = std::mem::take(buf).freeze();
        if !snap.chain.needs().response_body && !ctx.agent_response {
            // No filter reads the body (and its Content-Length was kept): only its usage is
            // needed, read without building the whole document.
            #[derive(serde::Deserialize)]
            struct UsageOnly {
                usage: Option<Value>,
            }
            if let Some(u) = serde_json::from_slice::<UsageOnly>(&raw)
                .ok()
                .and_then(|d| d.usage)
                .as_ref()
                .and_then(Usage::from_json)
            {
                ctx.cx.usage = Some(u);
            }
            self.complete(ctx);
            *body = Some(raw);
            return Ok(());
        }
        let mut jb = match serde_json::from_slice::<Value>(&raw) {
            Ok(v) => JsonBody::parsed(raw, v),
            Err(_) => JsonBody::raw(raw),
        };
        if let Some(u) = jb
            .json()
            .and_then(|v| v.get("usage"))
            .and_then(Usage::from_json)
        {
            ctx.cx.usage = Some(u);
        }
        snap.chain.on_response_body(&mut jb, &mut ctx.cx);
        let out = if ctx.agent_response {
            crate::agents::run_object(&ctx.cx, jb.json())
                .to_string()
                .into()
        } else {
            jb.to_bytes()
        };
        self.complete(ctx);
        *body = Some(out);
        Ok(())
    }

    fn frame_events(
        &self,
        snap: &Snapshot,
        ctx: &mut ReqCtx,
        framer: &mut SseFramer,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<()> {
        let mut raw_events: Vec<RawEvent> = Vec::new();
        if let Some(b) = body.take() {
            if framer.push(&b, &mut raw_events).is_err() {
                ctx.failure = Some((Outcome::UpstreamError, "event_too_large"));
                return Error::e_explain(
                    ErrorType::Custom("event_too_large"),
                    "SSE event over max_sse_event_bytes",
                );
            }
        }
        if end {
            framer.finish(&mut raw_events);
        }
        if raw_events.is_empty() && !end {
            return Ok(());
        }
        let mut events: Vec<StreamEvent> = Vec::with_capacity(raw_events.len());
        for ev in raw_events {
            let has_usage = ev
                .data
                .as_deref()
                .is_some_and(|d| contains(d, b"\"usage\""));
            // Parsed only if a filter asks for the JSON (or for the usage chunk, below).
            let mut se = StreamEvent::lazy(ev.raw, ev.data);
            if !has_usage {
                events.push(se);
                continue;
            }
            // The usage chunk: read it, and hide it when the client did not ask for it.
            let usage = se
                .json()
                .and_then(|v| v.get("usage"))
                .and_then(Usage::from_json);
            if let Some(u) = usage {
                ctx.cx.usage = Some(u);
                if !ctx.cx.client_wants_stream_usage {
                    let only_usage = se
                        .json()
                        .and_then(|v| v.get("choices"))
                        .and_then(Value::as_array)
                        .is_none_or(|c| c.is_empty());
                    if only_usage {
                        continue;
                    }
                    if let Some(Value::Object(o)) = se.json_mut() {
                        o.remove("usage");
                    }
                }
            }
            events.push(se);
        }
        snap.chain.on_stream_events(&mut events, end, &mut ctx.cx);
        let mut out = BytesMut::new();
        for ev in &events {
            out.extend_from_slice(&ev.to_bytes());
        }
        if !out.is_empty() && !ctx.first_sent {
            self.first_sent(ctx);
        }
        if end {
            self.complete(ctx);
        }
        *body = Some(out.freeze());
        Ok(())
    }
}

fn model_not_found(model: &str) -> Reply {
    Reply::error(
        404,
        "model_not_found",
        format!("The model `{model}` does not exist or you do not have access to it; GET /v1/models lists yours."),
    )
}

/// The client's `x-request-id` when it is sane (≤ 128 printable, no spaces), else a new one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        if !v.is_empty()
            && v.len() <= 128
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return v.to_string();
        }
    }
    format!("req_{:032x}", rand::random::<u128>())
}

/// The hop-by-hop headers present in `headers`, including those named by `Connection`. Most
/// requests have none (or only `Connection`): one pass over the few names present is cheaper
/// than looking up (hence parsing) each of the nine, or than cloning the map and removing them
/// all, which Pingora does in both its header maps.
fn hop_by_hop_present(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(&n.as_str()))
        .cloned()
        .collect();
    for v in headers.get_all(http::header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for name in s.split(',') {
                if let Ok(n) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    if headers.contains_key(&n) && !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
        }
    }
    out
}

/// Reads the whole request body, refusing more than `limit` bytes (413, nothing forwarded).
async fn read_body(
    session: &mut Session,
    limit: usize,
) -> Result<std::result::Result<Bytes, Reply>> {
    let too_large = || {
        Reply::error(
            413,
            "request_too_large",
            format!("The request body is larger than this gateway accepts ({limit} bytes)."),
        )
    };
    if session.is_body_empty() {
        return Ok(Ok(Bytes::new()));
    }
    let declared: Option<usize> = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(Err(too_large()));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get("expect")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await?;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(8192).min(limit));
    // See the module docs: the retry buffer must see the last ≤ 64 KiB, and only those.
    let mut buffering = false;
    loop {
        let remaining_small = match declared {
            Some(n) => n.saturating_sub(buf.len()) <= RETRY_BUFFER,
            None => buf.is_empty(),
        };
        if !buffering && remaining_small {
            session.as_downstream_mut().enable_retry_buffering();
            buffering = true;
        }
        match session.read_request_body().await? {
            Some(chunk) => {
                if buf.len() + chunk.len() > limit {
                    return Ok(Err(too_large()));
                }
                buf.extend_from_slice(&chunk);
            }
            None => break,
        }
    }
    Ok(Ok(buf.freeze()))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "close, X-Trace-Hop, keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-trace-hop", "1"),
            ("te", "trailers"),
            ("content-type", "application/json"),
            ("x-kept", "1"),
        ] {
            h.insert(
                HeaderName::from_static(n),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let mut got: Vec<String> = hop_by_hop_present(&h)
            .iter()
            .map(|n| n.as_str().to_string())
            .collect();
        got.sort();
        assert_eq!(got, ["connection", "keep-alive", "te", "x-trace-hop"]);
        assert!(hop_by_hop_present(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(
            "x-request-id",
            HeaderValue::from_static("bad id with spaces"),
        );
        assert!(request_id(&h).starts_with("req_"));
        assert!(request_id(&HeaderMap::new()).starts_with("req_"));
    }
}
