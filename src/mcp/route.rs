//! The `/mcp/{server}` route on the public listener: authentication and the chain as every
//! route, then `POST` (one JSON-RPC message), `GET` (the server's stream) and `DELETE` (end
//! of a session) relayed to the server with the message-level governance of [`super::relay`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde_json::Value;
use sluice_filters::mcp::{self, Message, ToolAccess};
use sluice_filters::{JsonBody, Outcome, Permission, Reply, Request, Route, Verdict};

use super::metadata;
use super::relay::{self, Governed, Governor};
use super::upstream::{self, Exchange};
use super::{McpMetrics, ServerRt};
use crate::pipeline::{Call, FailKind, Head, LocalDone};
use crate::proxy::{read_body, BodyFail};
use crate::state::{EngineState, Snapshot};

/// The `[identity]` issuer named as authorization server in the metadata documents.
fn identity_issuer(snap: &Snapshot) -> Option<&str> {
    snap.config.identity.as_ref().map(|i| i.issuer.as_str())
}

/// Handles the request when it is an MCP one (`/mcp/{server}` or its metadata document);
/// `Ok(false)`: it is not, the proxy goes on as usual.
pub async fn serve(
    state: &Arc<EngineState>,
    session: &mut Session,
    call: &mut Call,
) -> Result<bool> {
    let ours = match crate::routes::normalize(session.req_header().uri.path()) {
        Ok(p) => metadata::is_metadata_path(&p).is_some() || super::server_of(&p).is_some(),
        Err(_) => false,
    };
    if !ours {
        return Ok(false);
    }
    let uri = session.req_header().uri.clone();
    let raw_path = uri.path();
    let Ok(path) = crate::routes::normalize(raw_path) else {
        return Ok(false);
    };
    let meta = metadata::is_metadata_path(&path);
    if meta.is_none() && super::server_of(&path).is_none() {
        return Ok(false);
    }
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let base = metadata::base_url(&session.req_header().headers, tls);
    if let Some(server) = meta {
        let snap = call.snap.clone();
        let doc = metadata::document(&base, server, identity_issuer(&snap));
        call.cx.path = path.to_string();
        call.cx.method = session.req_header().method.clone();
        let reply = match snap.mcp.get(server) {
            Some(_) => Reply::json(200, &doc),
            None => not_found(server),
        };
        respond(session, call, reply, false).await?;
        return Ok(true);
    }
    let Some(server) = super::server_of(&path).map(str::to_string) else {
        return Ok(false);
    };
    let req = session.req_header();
    let (method, headers) = (req.method.clone(), req.headers.clone());
    let head = Head {
        method: &method,
        path: raw_path,
        query: uri.query(),
        headers: &headers,
        client_ip: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        listen: session.server_addr().and_then(|a| a.as_inet()).copied(),
    };
    if let Some(mut reply) = call.begin(&head).await {
        if reply.status == 401 {
            reply = reply.with_header("www-authenticate", metadata::challenge(&base, &server));
        }
        let unread = !session.is_body_done();
        respond(session, call, reply, unread).await?;
        return Ok(true);
    }
    let may = call
        .cx
        .identity
        .as_ref()
        .map(|i| i.grants.has(Permission::Mcp));
    if call.cx.route != Route::Mcp || may == Some(false) {
        let reply = Reply::error(
            403,
            "permission_denied",
            "Your key's role may not use MCP servers: it lacks the `mcp` permission. Ask your administrator to add `mcp` to the role's permissions.",
        );
        respond(session, call, reply, true).await?;
        return Ok(true);
    }
    let snap = call.snap.clone();
    let Some(rt) = snap.mcp.get(&server) else {
        respond(session, call, not_found(&server), true).await?;
        return Ok(true);
    };
    call.cx.upstream = Some(server.clone());
    let cx = Ctx {
        state,
        snap: &snap,
        rt,
        headers: &headers,
    };
    match method {
        Method::POST => post(&cx, session, call, &head).await?,
        Method::GET | Method::DELETE => relay(&cx, session, call, &method, None, None).await?,
        _ => {
            let reply = Reply::error(
                405,
                "method_not_allowed",
                "MCP's Streamable HTTP transport uses POST, GET and DELETE.",
            )
            .with_header("allow", "POST, GET, DELETE");
            respond(session, call, reply, true).await?;
        }
    }
    Ok(true)
}

/// What every phase of one MCP request needs.
struct Ctx<'a> {
    state: &'a Arc<EngineState>,
    snap: &'a Snapshot,
    rt: &'a ServerRt,
    headers: &'a HeaderMap,
}

impl Ctx<'_> {
    /// The caller's tool grants (`None`: no identity, as with an empty chain: no RBAC).
    fn access(&self, call: &Call) -> Option<ToolAccess<'_>> {
        let id = call.cx.identity.as_ref()?;
        let cfg = &self.snap.config;
        let role = cfg
            .roles
            .iter()
            .find(|r| *r.name == *id.role)
            .map(|r| r.mcp.as_slice())
            .unwrap_or(&[]);
        let key = cfg
            .keys
            .iter()
            .find(|k| *k.id == *id.key_id)
            .and_then(|k| k.mcp.as_deref());
        Some(ToolAccess { role, key })
    }

    fn count(&self, tool: Option<&str>, outcome: Outcome) {
        if let (Some(tool), Some(m)) = (tool, McpMetrics::of(&self.state.shared)) {
            m.call(&self.rt.name, tool, outcome.as_str());
        }
    }
}

fn not_found(server: &str) -> Reply {
    let name: String = server.chars().take(64).collect();
    Reply::error(
        404,
        "not_found",
        format!("No MCP server named `{name}` is configured ([[mcp_servers]])."),
    )
}

/// `POST`: one JSON-RPC message, governed, then relayed.
async fn post(cx: &Ctx<'_>, session: &mut Session, call: &mut Call, head: &Head<'_>) -> Result<()> {
    let server = &cx.snap.config.server;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(server.body_timeout_ms);
    let raw = match read_body(session, server.max_request_body_bytes, deadline).await {
        Ok(b) => b,
        Err(BodyFail::Reply(r)) => return respond(session, call, r, true).await,
        Err(BodyFail::Gone) => {
            call.client_failed(FailKind::ClientClosed);
            return Error::e_explain(ErrorType::ConnectionClosed, "the client went away");
        }
    };
    let Some(mut msg) = relay::parse_object(&raw) else {
        let r = Reply::error(
            400,
            "invalid_json",
            "The body must be one JSON-RPC message (a JSON object).",
        );
        return respond(session, call, r, false).await;
    };
    let (audit, id, method) = match Message::read(&msg) {
        Ok(m) => (m.audit(), m.id.cloned(), m.method.map(str::to_string)),
        Err(why) => {
            let r = Reply::error(
                400,
                "invalid_request",
                format!("Not a JSON-RPC message: {why}."),
            );
            return respond(session, call, r, false).await;
        }
    };
    let tool = audit.tool.clone();
    call.cx.extensions.insert(audit);
    if method.as_deref() == Some("tools/call") {
        let tool_name = tool.as_deref().unwrap_or("");
        if !cx
            .access(call)
            .is_none_or(|a| a.allows(&cx.rt.name, tool_name))
        {
            cx.count(tool.as_deref(), Outcome::DeniedPermission);
            let message = format!(
                "Your role may not call the tool `{tool_name}` of the MCP server `{}` (role `mcp` globs).",
                cx.rt.name
            );
            let body = mcp::refusal(id.as_ref(), "permission_denied", &message);
            return rpc_answer(
                session,
                call,
                &body,
                Outcome::DeniedPermission,
                "permission_denied",
            )
            .await;
        }
        if let Some(micros) = cx.rt.price_micros {
            call.cx.extensions.insert(sluice_filters::spend::CallPrice {
                micros,
                label: Arc::from(format!("mcp:{}", cx.rt.name)),
            });
        }
        if let Some(reply) = govern_call(cx, call, head, &mut msg).await {
            let outcome = reply.outcome;
            cx.count(tool.as_deref(), outcome);
            if reply.code == Some("dlp_blocked") {
                let message = reply
                    .error_info
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default();
                let body = mcp::refusal(id.as_ref(), "dlp_blocked", &message);
                return rpc_answer(session, call, &body, Outcome::DlpBlocked, "dlp_blocked").await;
            }
            return respond(session, call, reply, false).await;
        }
    }
    let body = Bytes::from(msg.to_string());
    relay(
        cx,
        session,
        call,
        &Method::POST,
        Some(body),
        method.as_deref(),
    )
    .await
}

/// The chain's request phase for a `tools/call`: rate limits, and DLP on its `arguments`
/// (rewritten in place by `redact`/`mask`). `Some`: the refusal.
async fn govern_call(
    cx: &Ctx<'_>,
    call: &mut Call,
    head: &Head<'_>,
    msg: &mut Value,
) -> Option<Reply> {
    let args = msg
        .pointer_mut("/params/arguments")
        .map(std::mem::take)
        .unwrap_or(Value::Null);
    let mut body = JsonBody::parsed(Bytes::from(args.to_string()), args);
    let path = call.cx.path.clone();
    let mut request = Request {
        method: head.method,
        path: &path,
        headers: cx.headers,
        body: &mut body,
    };
    let verdict = cx.snap.chain.on_request(&mut request, &mut call.cx).await;
    if let Some(slot) = msg.pointer_mut("/params/arguments") {
        *slot = body.json().cloned().unwrap_or(Value::Null);
    }
    match verdict {
        Verdict::Respond(r) => Some(r),
        Verdict::Continue => None,
    }
}

/// Sends a request to the server and relays its answer, governed.
async fn relay(
    cx: &Ctx<'_>,
    session: &mut Session,
    call: &mut Call,
    method: &Method,
    body: Option<Bytes>,
    rpc_method: Option<&str>,
) -> Result<()> {
    let tool = call
        .cx
        .extensions
        .get::<mcp::McpCall>()
        .and_then(|m| m.tool.clone());
    call.upstream_contacted();
    call.cx.attempts = 1;
    let ex = match upstream::open(&cx.snap.mcp, cx.rt, method, cx.headers, body).await {
        Ok(ex) => ex,
        Err(reply) => {
            call.t.upstream_end = Some(Instant::now());
            cx.count(tool.as_deref(), reply.outcome);
            return respond(session, call, reply, false).await;
        }
    };
    let sse = ex
        .head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.trim_start().starts_with("text/event-stream"));
    let access = cx.access(call);
    let mut gov = Governor {
        chain: &cx.snap.chain,
        server: &cx.rt.name,
        method: rpc_method,
        access,
        listed: Vec::new(),
        blocked: false,
        answered: false,
    };
    let outcome = if sse {
        relay_sse(cx, session, call, ex, &mut gov).await?
    } else {
        relay_whole(cx, session, call, ex, &mut gov).await?
    };
    if !gov.listed.is_empty() {
        if let Some(m) = McpMetrics::of(&cx.state.shared) {
            m.listed(&cx.rt.name, std::mem::take(&mut gov.listed));
        }
    }
    if rpc_method == Some("tools/call") {
        cx.count(tool.as_deref(), outcome);
    }
    Ok(())
}

/// The response head the client receives: the server's status and MCP headers.
fn relay_head(call: &Call, ex: &Exchange, length: Option<usize>) -> Result<Box<ResponseHeader>> {
    let mut h = ResponseHeader::build(ex.head.status, Some(8))?;
    for name in upstream::RETURNED {
        if let Some(v) = ex.head.headers.get(name) {
            h.insert_header(name, v.clone())?;
        }
    }
    match length {
        Some(n) => h.insert_header("content-length", n.to_string())?,
        None => h.insert_header("transfer-encoding", "chunked")?,
    }
    h.insert_header("x-request-id", call.request_id())?;
    for (n, v) in call.response_headers() {
        h.insert_header(n.clone(), v.clone())?;
    }
    Ok(Box::new(h))
}

/// A JSON (or empty, or other) answer: read whole (bounded), governed, sent.
async fn relay_whole(
    cx: &Ctx<'_>,
    session: &mut Session,
    call: &mut Call,
    mut ex: Exchange,
    gov: &mut Governor<'_>,
) -> Result<Outcome> {
    let limit = cx.snap.config.server.max_response_body_bytes;
    let mut buf = Vec::new();
    loop {
        match ex.next().await {
            Ok(Some(b)) if buf.len() + b.len() <= limit => buf.extend_from_slice(&b),
            Ok(Some(_)) => {
                let r = Reply::error(
                    502,
                    "upstream_unavailable",
                    "The MCP server's answer is larger than server.max_response_body_bytes; nothing was delivered.",
                );
                respond(session, call, r, false).await?;
                return Ok(Outcome::UpstreamError);
            }
            Ok(None) => break,
            Err(()) => {
                let r = Reply::error(
                    502,
                    "upstream_unavailable",
                    "The MCP server dropped the connection before its answer was complete.",
                );
                respond(session, call, r, false).await?;
                return Ok(Outcome::UpstreamError);
            }
        }
    }
    call.t.upstream_end = Some(Instant::now());
    let mut body = Bytes::from(buf);
    if !body.is_empty() {
        match relay::parse_object(&body) {
            Some(mut v) => {
                if gov.message(&mut v, &mut call.cx) != Governed::Same {
                    body = Bytes::from(v.to_string());
                }
            }
            None => {
                // Not one JSON object (an error page, text): scanned as an answer too.
                let mut doc = JsonBody::raw(body.clone());
                cx.snap.chain.on_response_body(&mut doc, &mut call.cx);
                body = doc.to_bytes();
            }
        }
    }
    let mut h = relay_head(call, &ex, Some(body.len()))?;
    let status = h.status.as_u16();
    let outcome = relayed_outcome(status, gov.blocked);
    if !finish(call, status, outcome) {
        ex.release(&cx.snap.mcp).await;
        write_reply(session, call, &withheld(), true).await?;
        return Ok(Outcome::AuditUnavailable);
    }
    // Priced by `finish`, before the head goes out: a paid call's real cost (SPEC §15).
    if let Some(c) = call.cx.extensions.get::<sluice_filters::spend::Cost>() {
        let usd = sluice_filters::spend::usd_string(i64::try_from(c.micros).unwrap_or(i64::MAX));
        h.insert_header("x-sluice-cost-usd", usd)?;
    }
    session.write_response_header(h, false).await?;
    session.write_response_body(Some(body), true).await?;
    ex.release(&cx.snap.mcp).await;
    Ok(outcome)
}

/// An SSE answer: events passed on as each completes, each governed.
async fn relay_sse(
    cx: &Ctx<'_>,
    session: &mut Session,
    call: &mut Call,
    mut ex: Exchange,
    gov: &mut Governor<'_>,
) -> Result<Outcome> {
    call.cx.stream = true;
    let h = relay_head(call, &ex, None)?;
    let status = h.status.as_u16();
    session.write_response_header(h, false).await?;
    let mut framer = crate::sse::SseFramer::new(cx.snap.config.server.max_sse_event_bytes);
    let mut events = Vec::new();
    // A client that goes away ends the exchange at once, not when the server next speaks (a
    // `GET` stream may stay silent for minutes).
    let mut watch_client = true;
    loop {
        let chunk = if watch_client {
            tokio::select! {
                c = ex.next() => c,
                r = session.as_downstream_mut().read_body_or_idle(true) => {
                    if r.is_err() {
                        call.t.upstream_end = Some(Instant::now());
                        if gov.answered {
                            // SDKs close the stream once they hold the response they waited for.
                            let outcome = relayed_outcome(status, gov.blocked);
                            if !finish(call, status, outcome) {
                                return Ok(Outcome::AuditUnavailable);
                            }
                            return Ok(outcome);
                        }
                        call.failure = Some((Outcome::ClientClosed, "client_closed"));
                        return Ok(Outcome::ClientClosed);
                    }
                    watch_client = false;
                    continue;
                }
            }
        } else {
            ex.next().await
        };
        let end = !matches!(chunk, Ok(Some(_)));
        match &chunk {
            Ok(Some(b)) => {
                if framer.push(b, &mut events).is_err() {
                    return end_stream_with_error(
                        session,
                        call,
                        status,
                        "An MCP server event grew past server.max_sse_event_bytes.",
                    )
                    .await;
                }
            }
            Ok(None) => framer.finish(&mut events),
            Err(()) => {
                return end_stream_with_error(
                    session,
                    call,
                    status,
                    "The MCP server's stream failed before it was complete.",
                )
                .await;
            }
        }
        let mut out = bytes::BytesMut::new();
        for ev in events.drain(..) {
            let Some(mut msg) = ev.data.as_deref().and_then(relay::parse_object) else {
                out.extend_from_slice(&ev.raw);
                continue;
            };
            match gov.message(&mut msg, &mut call.cx) {
                Governed::Same => out.extend_from_slice(&ev.raw),
                Governed::Changed => out.extend_from_slice(&relay::rebuild_event(&ev.raw, &msg)),
                Governed::Dropped => {}
            }
        }
        if end {
            call.t.upstream_end = Some(Instant::now());
            let outcome = relayed_outcome(status, gov.blocked);
            if !finish(call, status, outcome) {
                ex.release(&cx.snap.mcp).await;
                return withhold_stream(session).await;
            }
            session
                .write_response_body(Some(out.freeze()), true)
                .await?;
            ex.release(&cx.snap.mcp).await;
            return Ok(outcome);
        }
        if !out.is_empty() {
            session
                .write_response_body(Some(out.freeze()), false)
                .await?;
        }
    }
}

/// Ends a started stream with an error event (never a silent truncation).
async fn end_stream_with_error(
    session: &mut Session,
    call: &mut Call,
    status: u16,
    message: &str,
) -> Result<Outcome> {
    call.t.upstream_end = Some(Instant::now());
    call.failure = Some((Outcome::UpstreamError, "upstream_unavailable"));
    // An error event either way: the stream does not end as a success.
    let _ = finish(call, status, Outcome::UpstreamError);
    let ev = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "error", "logger": "sluice", "data": message}});
    let bytes = Bytes::from(format!("data: {ev}\n\n"));
    session.write_response_body(Some(bytes), true).await?;
    Ok(Outcome::UpstreamError)
}

/// A JSON-RPC answer Sluice makes itself (a refused `tools/call`): HTTP 200, as MCP carries
/// JSON-RPC errors.
async fn rpc_answer(
    session: &mut Session,
    call: &mut Call,
    body: &Value,
    outcome: Outcome,
    code: &'static str,
) -> Result<()> {
    let mut reply = Reply::json(200, body);
    reply.outcome = outcome;
    reply.code = Some(code);
    respond(session, call, reply, false).await
}

/// The outcome of an answer relayed from the server.
fn relayed_outcome(status: u16, blocked: bool) -> Outcome {
    match status {
        _ if blocked => Outcome::DlpBlocked,
        500.. => Outcome::UpstreamError,
        400.. => Outcome::BadRequest,
        _ => Outcome::Ok,
    }
}

/// Marks the answer as complete, before its last bytes go out: its outcome for the log, and
/// the filters' durability hook (the audit record is made durable there).
/// False when the record could not be made durable (`fsync = "always"`): the answer must then
/// be withheld (SPEC §6).
fn finish(call: &mut Call, status: u16, outcome: Outcome) -> bool {
    let code = call.failure.map(|(_, c)| c);
    call.local = Some(LocalDone { outcome, code });
    let ex = call.exchange(status, outcome, code);
    let snap = call.snap.clone();
    // A paid `tools/call` costs its price (SPEC §15): in the record written here, if any.
    snap.spend
        .price_request(&snap.config.prices, &ex, &mut call.cx);
    let durable = snap.chain.on_response_complete(&ex, &call.cx).is_ok();
    call.cx.response_completed = true;
    call.completed = true;
    if !durable {
        call.failure = Some((Outcome::AuditUnavailable, "audit_unavailable"));
    }
    durable
}

/// The refusal sent instead of an answer whose record is not durable.
fn withheld() -> Reply {
    Reply::error(
        503,
        "audit_unavailable",
        "The audit record of this call could not be made durable, so its answer is withheld. \
         Retry later; operators: see the gateway's logs and the audit path's disk.",
    )
}

/// The end of a started stream whose record is not durable: an error event, never its end.
async fn withhold_stream(session: &mut Session) -> Result<Outcome> {
    let ev = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "error", "logger": "sluice", "data": "The audit record of this call could not be made durable; the rest of the answer is withheld."}});
    let bytes = Bytes::from(format!("data: {ev}\n\n"));
    session.set_keepalive(None);
    session.write_response_body(Some(bytes), true).await?;
    Ok(Outcome::AuditUnavailable)
}

/// Writes a local reply (an error in section 3's shape, or a JSON-RPC answer), once the chain's
/// durability hook ran; a 2xx whose record is not durable is withheld (SPEC §6).
async fn respond(session: &mut Session, call: &mut Call, reply: Reply, close: bool) -> Result<()> {
    if call.replied(&reply) {
        write_reply(session, call, &reply, close).await
    } else {
        write_reply(session, call, &withheld(), true).await
    }
}

async fn write_reply(
    session: &mut Session,
    call: &mut Call,
    reply: &Reply,
    close: bool,
) -> Result<()> {
    let body = call.render(reply);
    let mut h = ResponseHeader::build(reply.status, Some(8))?;
    h.insert_header("content-type", reply.content_type)?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("x-request-id", call.request_id())?;
    for (n, v) in call.response_headers() {
        h.insert_header(n.clone(), v.clone())?;
    }
    for (n, v) in &reply.headers {
        h.insert_header(n.clone(), v.clone())?;
    }
    if close {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
