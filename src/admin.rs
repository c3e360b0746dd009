//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `GET /admin/upstreams` (each
//! upstream's state, read-only), `POST /admin/reload` and the admin key API
//! (`/admin/v1/keys`). Never served on the public listener.
//!
//! Routes that change state (`POST /admin/reload`, every `/admin/v1/*`) refuse, with 403, a
//! request whose `Host` is not this listener's own address or whose `Origin` (when present:
//! curl sends none) is not `http://` + that address, so that a web page a browser shows can
//! neither drive them nor read them through DNS rebinding; and they require the admin token
//! when `server.admin_token_env` is set (the key API always does).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::EngineState;

pub async fn spawn(
    addr: SocketAddr,
    state: Arc<EngineState>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => return,
            };
            let Ok((stream, peer)) = accepted else {
                continue;
            };
            let own = stream.local_addr().unwrap_or(local);
            let state = state.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let svc = hyper::service::service_fn(move |req| {
                    handle(req, state.clone(), own, peer.ip())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok(local)
}

/// The largest request body an admin route reads.
const MAX_ADMIN_BODY: usize = 64 * 1024;

async fn handle(
    req: Request<Incoming>,
    state: Arc<EngineState>,
    own: SocketAddr,
    peer: std::net::IpAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/admin/reload" || path.starts_with("/admin/v1/") || path == "/admin/v1" {
        let snap = state.snapshot.load();
        let refused = match same_origin(req.headers(), own) {
            Err(r) => Some(r),
            Ok(()) => match crate::keys::admin::check_token(&snap.config, req.headers()) {
                crate::keys::admin::TokenCheck::Refused(r) => Some(r),
                _ => None,
            },
        };
        if let Some(r) = refused {
            crate::admin_audit::refused(&state, req.method(), &path, req.headers(), peer, &r).await;
            return Ok(reply_response(r, None));
        }
    }
    if path.starts_with("/admin/v1/keys") || path.starts_with("/admin/v1/users") {
        return Ok(admin_keys(req, &state, peer).await);
    }
    if path == "/admin/v1/usage" {
        return Ok(admin_usage(req, &state).await);
    }
    let resp = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => text(StatusCode::OK, "ok\n"),
        ("GET", "/readyz") => {
            if state.draining.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if !state.ready.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            } else if state.snapshot.load().chain.ready().is_err() {
                // Every request would be refused (the audit trail fails closed); the log and
                // sluice_audit_write_errors_total say why.
                text(StatusCode::SERVICE_UNAVAILABLE, "audit unavailable\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        ("GET", "/metrics") => {
            let body = crate::metrics::render(state.shared.registry());
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default()
        }
        ("GET", "/admin/upstreams") => json(
            StatusCode::OK,
            &crate::upstream::admin_view(&state.snapshot.load()),
        ),
        ("POST", "/admin/reload") => {
            let s = state.clone();
            match tokio::task::spawn_blocking(move || s.reload(None)).await {
                Ok(Ok(())) => json(StatusCode::OK, &serde_json::json!({"status": "reloaded"})),
                Ok(Err(e)) => {
                    let errors: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
                    json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"status": "rejected", "errors": errors}),
                    )
                }
                Err(_) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"status": "failed"}),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// Refuses a `Host` other than the listener's own address (`localhost` for a loopback one),
/// and an `Origin` other than `http://` + that address.
fn same_origin(headers: &hyper::HeaderMap, own: SocketAddr) -> Result<(), sluice_filters::Reply> {
    let mut allowed = vec![own.to_string()];
    if own.ip().is_loopback() {
        allowed.push(format!("localhost:{}", own.port()));
    }
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok());
    if !host.is_some_and(|h| allowed.iter().any(|a| a.eq_ignore_ascii_case(h))) {
        return Err(sluice_filters::Reply::error(
            403,
            "permission_denied",
            format!(
                "Admin routes answer only requests addressed to this listener ({}): the Host header says otherwise.",
                allowed.join(" or ")
            ),
        ));
    }
    if let Some(origin) = headers.get(hyper::header::ORIGIN) {
        let ok = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
        if !ok {
            return Err(sluice_filters::Reply::error(
                403,
                "permission_denied",
                "Admin routes refuse requests from web pages of another origin.",
            ));
        }
    }
    Ok(())
}

/// `GET /admin/v1/usage` (SPEC §15), behind the admin token like `/admin/v1/keys`.
async fn admin_usage(req: Request<Incoming>, state: &EngineState) -> Response<Full<Bytes>> {
    let request_id = crate::request_id::from_headers(req.headers());
    let snap = state.snapshot.load();
    if let crate::keys::admin::TokenCheck::Refused(r) =
        crate::keys::admin::check_token(&snap.config, req.headers())
    {
        return reply_response(r, Some(&request_id));
    }
    let reply = if req.method() == hyper::Method::GET {
        crate::spend::usage::admin_usage(state, req.uri().query()).await
    } else {
        sluice_filters::Reply::error(405, "method_not_allowed", "Use GET on /admin/v1/usage.")
    };
    reply_response(reply, Some(&request_id))
}

/// `/admin/v1/keys…` and `/admin/v1/users…`: reads the body (bounded) and hands it to the key
/// API or the users directory.
async fn admin_keys(
    req: Request<Incoming>,
    state: &EngineState,
    peer: std::net::IpAddr,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let request_id = crate::request_id::from_headers(&parts.headers);
    let body = match http_body_util::Limited::new(body, MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let r = sluice_filters::Reply::error(
                413,
                "request_too_large",
                format!("Admin request bodies are limited to {MAX_ADMIN_BODY} bytes."),
            );
            return reply_response(r, Some(&request_id));
        }
    };
    let users = parts.uri.path().starts_with("/admin/v1/users");
    let request = crate::keys::admin::AdminRequest {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        body: &body,
        client_ip: Some(peer),
        request_id: &request_id,
    };
    let reply = if users {
        crate::identity::admin::handle(state, request).await
    } else {
        crate::keys::admin::handle(state, request).await
    };
    reply_response(reply, Some(&request_id))
}

/// A local reply as a hyper response.
fn reply_response(r: sluice_filters::Reply, request_id: Option<&str>) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(r.status)
        .header("content-type", r.content_type);
    if let Some(id) = request_id {
        b = b.header("x-request-id", id);
    }
    for (n, v) in r.headers {
        b = b.header(n, v);
    }
    b.body(Full::new(r.body)).unwrap_or_default()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap_or_default()
}
