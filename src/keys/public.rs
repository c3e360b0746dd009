//! Self-service on the public listener: `POST /v1/keys`, `GET /v1/keys`, `GET` and `DELETE
//! /v1/keys/{id}`, for a caller whose role has `keys:manage` (the chain has authenticated,
//! authorised, rate-limited and scanned the request already; audit records it like any
//! request, and each change once more as a record of its own).

use http::Method;
use serde::Deserialize;
use sluice_filters::{Cx, Identity, JsonBody, Reply};

use super::{
    check_fields, create, error, expiry_from_days, find, list, narrow, new_id, not_found,
    parse_body, revoke, ApiRateLimit, Event,
};
use crate::state::{EngineState, Snapshot};
use crate::store::KeyRow;

/// `POST /v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOwn {
    name: Option<String>,
    models: Option<Vec<String>>,
    expires_in_days: Option<u64>,
    rate_limit: Option<ApiRateLimit>,
    /// SPEC §15: may only narrow the calling key's (same period, no more dollars).
    budget: Option<sluice_filters::spend::BudgetSpec>,
}

/// Answers a `/v1/keys` route (`id`: the `{id}` of `/v1/keys/{id}`).
pub async fn self_service(
    state: &EngineState,
    snap: &Snapshot,
    cx: &Cx,
    method: &Method,
    id: Option<&str>,
    body: &JsonBody,
) -> Reply {
    let Some(caller) = cx.identity.as_ref() else {
        // Only without an auth filter in the chain: there is nobody whose keys these are.
        return error(
            403,
            "permission_denied",
            "Managing API keys needs an authenticated caller: this gateway's chain has no auth filter.",
            None,
        );
    };
    let ev = Event {
        request_id: &cx.request_id,
        method,
        path: &cx.path,
        client_ip: cx.client_ip,
        user_agent: cx.user_agent.as_deref(),
    };
    match (method, id) {
        (&Method::GET, None) => Reply::json(200, &list(state, snap, Some(&caller.user))),
        (&Method::POST, None) => create_own(state, snap, &ev, caller, body).await,
        (&Method::GET, Some(id)) => match find(state, snap, id, Some(&caller.user)) {
            Some((obj, _)) => Reply::json(200, &obj),
            None => not_found(id),
        },
        (&Method::DELETE, Some(id)) => revoke(state, snap, &ev, id, Some(&caller.user)).await,
        (_, None) => not_allowed("GET, POST"),
        (_, Some(_)) => not_allowed("GET, DELETE"),
    }
}

fn not_allowed(allow: &'static str) -> Reply {
    error(
        405,
        "method_not_allowed",
        format!("This route takes {allow}."),
        None,
    )
    .with_header("allow", allow)
}

/// The caller's own key: its rate limit and expiry, which a key it makes may only tighten.
fn caller_key(
    state: &EngineState,
    snap: &Snapshot,
    caller: &Identity,
) -> (Option<sluice_filters::policy::RateLimitSpec>, Option<i64>) {
    if let Some(k) = snap.config.keys.iter().find(|k| *k.id == *caller.key_id) {
        return (k.rate_limit.clone(), None);
    }
    match state.store.keys().table().get(&caller.key_id) {
        Some(k) => (k.rate_limit.clone(), k.expires.map(|e| e as i64)),
        None => (None, None),
    }
}

/// The caller's own key's budget (SPEC §15), which a key it makes may only narrow.
fn caller_budget(
    state: &EngineState,
    snap: &Snapshot,
    caller: &Identity,
) -> Option<sluice_filters::spend::BudgetSpec> {
    match snap.config.keys.iter().find(|k| *k.id == *caller.key_id) {
        Some(k) => k.budget,
        None => state
            .store
            .keys()
            .table()
            .get(&caller.key_id)
            .and_then(|k| k.budget),
    }
}

async fn create_own(
    state: &EngineState,
    snap: &Snapshot,
    ev: &Event<'_>,
    caller: &Identity,
    body: &JsonBody,
) -> Reply {
    let raw = match body.json() {
        Some(v) => v.to_string().into_bytes(),
        None => body.to_bytes().to_vec(),
    };
    let req: CreateOwn = match parse_body(&raw) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    if let Err(r) = check_fields(req.name.as_deref(), req.models.as_deref()) {
        return r;
    }
    let requested_limit = match req.rate_limit.map(ApiRateLimit::into_spec).transpose() {
        Ok(l) => l,
        Err(r) => return r,
    };
    let requested_expiry = match expiry_from_days(req.expires_in_days) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let (own_limit, own_expiry) = caller_key(state, snap, caller);
    let denied = |what: String, param: &str| {
        error(
            403,
            "permission_denied",
            format!(
                "A key you make may only narrow the key `{}` you call with: {what}.",
                caller.key_id
            ),
            Some(param),
        )
    };
    let models = match narrow::models(&caller.grants, req.models) {
        Ok(m) => m,
        Err(p) => {
            return denied(
                format!("`{p}` is wider than the models your key may use"),
                "models",
            )
        }
    };
    let rate_limit = match narrow::rate_limit(own_limit.as_ref(), requested_limit) {
        Ok(l) => l,
        Err(field) => {
            return denied(
                format!("its `rate_limit.{field}` would be looser than your key's"),
                "rate_limit",
            )
        }
    };
    let expires = match narrow::expires(own_expiry, requested_expiry) {
        Ok(e) => e,
        Err(_) => {
            return denied(
                "it would outlive your key's own expiry".into(),
                "expires_in_days",
            )
        }
    };
    // A provider user's keys expire within identity.key_max_days (SPEC §13).
    let expires = match (
        expires,
        crate::identity::key_expiry_cap(&snap.config, &caller.user),
    ) {
        (Some(e), Some(cap)) => Some(e.min(cap)),
        (None, cap) => cap,
        (e, None) => e,
    };
    let budget = match (caller_budget(state, snap, caller), req.budget) {
        (own, None) => own,
        (own, Some(b)) => {
            let mut errs = Vec::new();
            b.validate("budget", &mut errs);
            if let Some(e) = errs.first() {
                return error(400, "invalid_parameter", e.to_string(), Some("budget"));
            }
            if own.is_some_and(|o| !b.narrows(&o)) {
                return denied(
                    "its `budget` must have your key's period and no more dollars".into(),
                    "budget",
                );
            }
            Some(b)
        }
    };
    let row = KeyRow {
        budget,
        id: new_id(),
        user: caller.user.to_string(),
        name: req.name.unwrap_or_default(),
        sha256: String::new(),
        models,
        rate_limit,
        disabled: false,
        created: crate::store::now_secs(),
        expires,
        parent: made_by_key(state, snap, &caller.key_id),
    };
    create(state, snap, ev, row).await
}

/// The key a new key is made from: the caller's own key, when it authenticated with one (a
/// provider token or a console session of a provider user has none, and its keys no parent).
fn made_by_key(state: &EngineState, snap: &Snapshot, key_id: &str) -> Option<String> {
    let is_key = snap.config.keys.iter().any(|k| k.id == key_id)
        || state.store.keys().table().get(key_id).is_some();
    is_key.then(|| key_id.to_string())
}
