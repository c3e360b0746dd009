//! The admin listener's refusals on the audit trail (SPEC §7): a wrong or missing admin token
//! (`denied_auth`, also counted in `sluice_auth_failures_total`) and a foreign `Host` or
//! `Origin` (`denied_permission`), each with its path and client address, never the token.

use std::net::IpAddr;

use http::{HeaderMap, Method};
use sluice_filters::{Cx, Exchange, Reply};

use crate::state::EngineState;

/// Records one refused admin request.
pub(crate) async fn refused(
    state: &EngineState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    peer: IpAddr,
    reply: &Reply,
) {
    let snap = state.snapshot.load_full();
    let request_id = crate::request_id::from_headers(headers);
    let request_id = if snap.scrubber.finds(&request_id) {
        crate::request_id::new()
    } else {
        request_id
    };
    let path: String = path.chars().take(256).collect();
    let path = snap.scrubber.redact(&path).unwrap_or(path);
    let mut cx = Cx::new(request_id, method.clone(), path);
    cx.client_ip = Some(peer);
    cx.user_agent = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect::<String>())
        .map(|ua| snap.scrubber.redact(&ua).unwrap_or(ua));
    let ex = Exchange {
        status: reply.status.as_u16(),
        outcome: reply.outcome,
        latency: cx.started.elapsed(),
        upstream_latency: None,
        error_code: reply.code,
    };
    if reply.status == 401 {
        let reason = if reply.code == Some("missing_api_key") {
            "missing"
        } else {
            "invalid"
        };
        if let Ok(m) = sluice_filters::auth::failures_metric(&state.shared) {
            m.with_label_values(&[reason]).inc();
        }
    }
    tracing::info!(target: "sluice::admin", request_id = %cx.request_id, path = %cx.path,
        client_ip = %peer, status = ex.status, "admin request refused");
    snap.chain.on_event(&cx, &ex).await;
}
