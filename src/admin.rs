//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `POST /admin/reload`.
//! Never served on the public listener.

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
            let Ok((stream, _)) = accepted else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let svc = hyper::service::service_fn(move |req| handle(req, state.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok(local)
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<EngineState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let resp = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => text(StatusCode::OK, "ok\n"),
        ("GET", "/readyz") => {
            if state.draining.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if !state.ready.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
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
