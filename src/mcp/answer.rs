//! The MCP server's answer relayed to the client: a JSON answer read whole (bounded), an SSE
//! answer event by event, each governed ([`super::relay`]), and held back whole when its audit
//! record cannot be made durable (SPEC §6). The request side is [`super::route`]'s.

use std::time::Instant;

use bytes::Bytes;
use http::Method;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use sluice_filters::{mcp, JsonBody, Outcome, Reply};

use super::relay::{self, Governed, Governor};
use super::route::{respond, Ctx};
use super::upstream::{self, Exchange};
use super::McpMetrics;
use crate::pipeline::Call;

/// Sends a request to the server and relays its answer, governed.
pub(super) async fn relay(
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
            call.t.upstream_ended(Instant::now());
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
    call.t.upstream_ended(Instant::now());
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
        crate::reply::write(session, call, &withheld(), true).await?;
        return Ok(Outcome::AuditUnavailable);
    }
    // Priced by `finish`, before the head goes out: a paid call's real cost (SPEC §15).
    if let Some(c) = call.cx.extensions.get::<sluice_filters::spend::Cost>() {
        let (name, value) = c.header();
        h.insert_header(name, value)?;
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
                        call.t.upstream_ended(Instant::now());
                        if gov.answered {
                            // SDKs close the stream once they hold the response they waited for.
                            let outcome = relayed_outcome(status, gov.blocked);
                            if !finish(call, status, outcome) {
                                return Ok(Outcome::AuditUnavailable);
                            }
                            return Ok(outcome);
                        }
                        call.end.fail(Outcome::ClientClosed, "client_closed");
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
            call.t.upstream_ended(Instant::now());
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
    call.t.upstream_ended(Instant::now());
    call.end
        .fail(Outcome::UpstreamError, "upstream_unavailable");
    // An error event either way: the stream does not end as a success.
    let _ = finish(call, status, Outcome::UpstreamError);
    let ev = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "error", "logger": "sluice", "data": message}});
    let bytes = Bytes::from(format!("data: {ev}\n\n"));
    session.write_response_body(Some(bytes), true).await?;
    Ok(Outcome::UpstreamError)
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
    let code = call.end.failure().map(|(_, c)| c);
    call.end.answered(outcome, code);
    let ex = call.exchange(status, outcome, code);
    let snap = call.snap.clone();
    // A paid `tools/call` costs its price (SPEC §15): in the record written here, if any.
    snap.spend
        .price_request(&snap.config.prices, &ex, &mut call.cx);
    let durable = snap.chain.on_response_complete(&ex, &call.cx).is_ok();
    call.cx.response_completed = true;
    call.end.complete();
    if !durable {
        call.end
            .fail(Outcome::AuditUnavailable, "audit_unavailable");
    }
    durable
}

/// The refusal sent instead of an answer whose record is not durable.
pub(super) fn withheld() -> Reply {
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
