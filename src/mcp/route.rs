//! The `/mcp/{server}` route on the public listener: authentication and the chain as every
//! route, then `POST` (one JSON-RPC message), `GET` (the server's stream) and `DELETE` (end
//! of a session) relayed to the server with the message-level governance of [`super::relay`].
//! This is the request side; the server's answer is relayed by [`super::answer`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::Session;
use serde_json::Value;
use sluice_filters::mcp::{self, Message, ToolAccess};
use sluice_filters::{JsonBody, Outcome, Permission, Reply, Request, Route, Verdict};

use super::answer::{self, withheld};
use super::metadata;
use super::relay;
use super::{McpMetrics, ServerRt};
use crate::pipeline::{Call, FailKind, Head};
use crate::proxy::{read_body, BodyFail};
use crate::state::{EngineState, Snapshot};

/// The `[identity]` issuer named as authorization server in the metadata documents.
fn identity_issuer(snap: &Snapshot) -> Option<&str> {
    snap.config.identity.as_ref().map(|i| i.issuer.as_str())
}

/// Whether a request path is an MCP one (`/mcp/{server}` or its metadata document): the cheap
/// test the proxy makes before it builds [`serve`]'s future (a large one, boxed).
pub fn claims(raw_path: &str) -> bool {
    match crate::routes::normalize(raw_path) {
        Ok(p) => metadata::is_metadata_path(&p).is_some() || super::server_of(&p).is_some(),
        Err(_) => false,
    }
}

/// Handles the request when it is an MCP one (`/mcp/{server}` or its metadata document);
/// `Ok(false)`: it is not, the proxy goes on as usual. The proxy asks [`claims`] first, so
/// that other requests never build this future; the checks below decide on their own.
pub async fn serve(
    state: &Arc<EngineState>,
    session: &mut Session,
    call: &mut Call,
) -> Result<bool> {
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
        Method::GET | Method::DELETE => {
            answer::relay(&cx, session, call, &method, None, None).await?
        }
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
pub(super) struct Ctx<'a> {
    pub(super) state: &'a Arc<EngineState>,
    pub(super) snap: &'a Snapshot,
    pub(super) rt: &'a ServerRt,
    pub(super) headers: &'a HeaderMap,
}

impl Ctx<'_> {
    /// The caller's tool grants (`None`: no identity, as with an empty chain: no RBAC).
    pub(super) fn access(&self, call: &Call) -> Option<ToolAccess<'_>> {
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

    pub(super) fn count(&self, tool: Option<&str>, outcome: Outcome) {
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
    answer::relay(
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

/// Writes a local reply (an error in section 3's shape, or a JSON-RPC answer), once the chain's
/// durability hook ran; a 2xx whose record is not durable is withheld (SPEC §6).
pub(super) async fn respond(
    session: &mut Session,
    call: &mut Call,
    reply: Reply,
    close: bool,
) -> Result<()> {
    if call.replied(&reply) {
        crate::reply::write(session, call, &reply, close).await
    } else {
        crate::reply::write(session, call, &withheld(), true).await
    }
}
