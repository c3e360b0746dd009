//! The console's audit records: one per console request (static assets and the bare sign-in
//! page aside), written by the chain's audit filter on the same hash chain as the API's, with
//! `auth: "session"`, the user, the console path (never its query or body), the outcome, and
//! the key: the one created or revoked by the action, else the key the session was opened with.

use sluice_filters::{Cx, Exchange, Identity, Outcome};

use super::session::Session;
use super::Ctx;

/// Puts a console request on the audit trail. `changed_key`: the key an action created or
/// revoked (its id, never the key).
pub async fn record(
    cx: &Ctx<'_>,
    s: Option<&Session>,
    changed_key: Option<&str>,
    status: u16,
    outcome: Outcome,
) {
    let identity = s.map(|s| &s.identity);
    record_as(cx, identity, changed_key, status, outcome).await;
}

/// As [`record`], for an identity without a session yet (a sign-in).
pub async fn record_as(
    cx: &Ctx<'_>,
    identity: Option<&Identity>,
    changed_key: Option<&str>,
    status: u16,
    outcome: Outcome,
) {
    let req = cx.req;
    let mut acx = Cx::new(
        cx.request_id.clone(),
        req.method.clone(),
        req.path.chars().take(256).collect(),
    );
    acx.auth = Some("session");
    acx.client_ip = req.client_ip;
    acx.user_agent = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect());
    acx.identity = identity.map(|i| {
        let mut i = i.clone();
        if let Some(k) = changed_key {
            i.key_id = k.into();
        }
        i
    });
    let ex = Exchange {
        status,
        outcome,
        latency: acx.started.elapsed(),
        upstream_latency: None,
        error_code: None,
    };
    cx.snap.chain.on_event(&acx, &ex).await;
}
