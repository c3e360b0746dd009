//! The admin key API on the admin listener: `GET/POST /admin/v1/keys`,
//! `GET/PUT/DELETE /admin/v1/keys/{id}`, for any user, with `Authorization: Bearer <admin
//! token>` (the token is read from the environment variable `server.admin_token_env` names;
//! without one these routes answer 403). The listener has already refused foreign `Origin` and
//! `Host` headers (`crate::admin`).

use std::net::IpAddr;

use http::{HeaderMap, Method};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sluice_filters::Reply;

use super::{
    check_fields, create, error, expiry_from_days, find, list, new_id, not_found, parse_body,
    revoke, store_object, unavailable, ApiRateLimit, Event,
};
use crate::config::Config;
use crate::state::EngineState;
use crate::store::sync::Patch;
use crate::store::{KeyPatch, KeyRow};

/// What the admin token check found.
pub enum TokenCheck {
    /// The request carries the configured token.
    Granted,
    /// `server.admin_token_env` is not set: there is no token to require.
    NotConfigured,
    Refused(Reply),
}

/// Checks `Authorization: Bearer <token>` against the configured admin token, in constant time
/// (both sides are hashed, and the digests compared with `subtle`).
pub fn check_token(config: &Config, headers: &HeaderMap) -> TokenCheck {
    let Some(env) = &config.server.admin_token_env else {
        return TokenCheck::NotConfigured;
    };
    let token = match std::env::var(env) {
        Ok(t) if !t.is_empty() => t,
        _ => {
            return TokenCheck::Refused(error(
                403,
                "permission_denied",
                format!("The admin token is not configured: the environment variable `{env}` (server.admin_token_env) is not set."),
                None,
            ))
        }
    };
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(presented) = presented.filter(|p| !p.is_empty()) else {
        return TokenCheck::Refused(error(
            401,
            "missing_api_key",
            "Admin routes need `Authorization: Bearer <admin token>`.",
            None,
        ));
    };
    let (a, b) = (
        Sha256::digest(presented.as_bytes()),
        Sha256::digest(token.as_bytes()),
    );
    if bool::from(subtle::ConstantTimeEq::ct_eq(a.as_slice(), b.as_slice())) {
        TokenCheck::Granted
    } else {
        TokenCheck::Refused(error(
            401,
            "invalid_api_key",
            "Incorrect admin token.",
            None,
        ))
    }
}

/// One admin request, as the listener read it (body bounded).
pub struct AdminRequest<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateFor {
    user: String,
    id: Option<String>,
    name: Option<String>,
    models: Option<Vec<String>>,
    rate_limit: Option<ApiRateLimit>,
    #[serde(default)]
    disabled: bool,
    expires_in_days: Option<u64>,
    expires: Option<i64>,
    budget: Option<serde_json::Value>,
}

/// `PUT`: absent fields stay, `null` clears.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    name: Option<String>,
    #[serde(default, deserialize_with = "some")]
    models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "some")]
    rate_limit: Option<Option<ApiRateLimit>>,
    disabled: Option<bool>,
    #[serde(default, deserialize_with = "some")]
    expires: Option<Option<i64>>,
    #[serde(default, deserialize_with = "some")]
    budget: Option<serde_json::Value>,
}

/// A present field, `null` included, is `Some`.
fn some<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Answers `/admin/v1/keys[/{id}]`.
pub async fn handle(state: &EngineState, req: AdminRequest<'_>) -> Reply {
    let snap = state.snapshot.load_full();
    match check_token(&snap.config, req.headers) {
        TokenCheck::Granted => {}
        TokenCheck::NotConfigured => {
            return error(403, "permission_denied",
                "The admin key API is off: set server.admin_token_env to the name of an environment variable holding the admin token.", None)
        }
        TokenCheck::Refused(r) => return r,
    }
    let ev = Event {
        request_id: req.request_id,
        method: req.method,
        path: req.path,
        client_ip: req.client_ip,
        user_agent: req.headers.get("user-agent").and_then(|v| v.to_str().ok()),
    };
    let rest = req.path.strip_prefix("/admin/v1/keys").unwrap_or_default();
    let id = rest
        .strip_prefix('/')
        .filter(|s| !s.is_empty() && !s.contains('/'));
    match (req.method, rest, id) {
        (&Method::GET, "" | "/", _) => {
            let user = query_param(req.query, "user");
            Reply::json(200, &list(state, &snap, user.as_deref()))
        }
        (&Method::POST, "" | "/", _) => create_for(state, &snap, &ev, req.body).await,
        (&Method::GET, _, Some(id)) => match find(state, &snap, id, None) {
            Some((obj, _)) => Reply::json(200, &obj),
            None => not_found(id),
        },
        (&Method::PUT, _, Some(id)) => update(state, &snap, &ev, id, req.body).await,
        (&Method::DELETE, _, Some(id)) => revoke(state, &snap, &ev, id, None).await,
        (_, "" | "/", _) => error(
            405,
            "method_not_allowed",
            "This route takes GET, POST.",
            None,
        )
        .with_header("allow", "GET, POST"),
        (_, _, Some(_)) => error(
            405,
            "method_not_allowed",
            "This route takes GET, PUT, DELETE.",
            None,
        )
        .with_header("allow", "GET, PUT, DELETE"),
        _ => error(404, "not_found", "No such admin route.", None),
    }
}

/// `?user=NAME` (no percent-decoding beyond what names need: names are plain).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.replace("%40", "@").replace('+', " "))
}

pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

async fn create_for(
    state: &EngineState,
    snap: &crate::state::Snapshot,
    ev: &Event<'_>,
    body: &[u8],
) -> Reply {
    let req: CreateFor = match parse_body(body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    // Provider users of the store's directory (SPEC §13) may hold keys too.
    let in_directory = state.store.users().table().get(&req.user).is_some();
    if !snap.config.users.iter().any(|u| u.name == req.user) && !in_directory {
        return error(
            400,
            "unknown_user",
            format!(
                "No user `{}` in the config's [[users]] or the users directory.",
                req.user.chars().take(128).collect::<String>()
            ),
            Some("user"),
        );
    }
    if let Some(id) = req.id.as_deref().filter(|id| !valid_id(id)) {
        let _ = id;
        return error(
            400,
            "invalid_request",
            "`id` must be 1 to 64 letters, digits, `-`, `_` or `.`.",
            Some("id"),
        );
    }
    if let Err(r) = check_fields(req.name.as_deref(), req.models.as_deref()) {
        return r;
    }
    let rate_limit = match req.rate_limit.map(ApiRateLimit::into_spec).transpose() {
        Ok(l) => l,
        Err(r) => return r,
    };
    let budget = match req.budget.as_ref().map(super::budget::parse).transpose() {
        Ok(b) => b,
        Err(r) => return r,
    };
    let expires = match (req.expires, expiry_from_days(req.expires_in_days)) {
        (_, Err(r)) => return r,
        (Some(_), Ok(Some(_))) => {
            return error(
                400,
                "invalid_request",
                "Give `expires` or `expires_in_days`, not both.",
                Some("expires"),
            )
        }
        (Some(e), Ok(None)) => Some(e),
        (None, Ok(d)) => d,
    };
    let expires = match (
        expires,
        crate::identity::key_expiry_cap(&snap.config, &req.user),
    ) {
        (Some(e), Some(cap)) => Some(e.min(cap)),
        (None, cap) => cap,
        (e, None) => e,
    };
    let row = KeyRow {
        id: req.id.unwrap_or_else(new_id),
        user: req.user,
        name: req.name.unwrap_or_default(),
        sha256: String::new(),
        models: req.models,
        rate_limit,
        disabled: req.disabled,
        created: crate::store::now_secs(),
        expires,
        parent: None,
        budget,
    };
    create(state, snap, ev, row).await
}

async fn update(
    state: &EngineState,
    snap: &crate::state::Snapshot,
    ev: &Event<'_>,
    id: &str,
    body: &[u8],
) -> Reply {
    let req: Update = match parse_body(body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some((_, true)) = find(state, snap, id, None) {
        return error(
            409,
            "config_key",
            format!(
                "The key `{id}` is in the gateway's config file; change it there (then reload)."
            ),
            None,
        );
    }
    let models = req.models.as_ref().and_then(|m| m.as_deref());
    if let Err(r) = check_fields(req.name.as_deref(), models) {
        return r;
    }
    let rate_limit = match req
        .rate_limit
        .map(|r| r.map(ApiRateLimit::into_spec).transpose())
        .transpose()
    {
        Ok(l) => l,
        Err(r) => return r,
    };
    let budget = match super::budget::parse_patch(req.budget.as_ref()) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let patch = KeyPatch {
        name: req.name,
        models: req.models,
        rate_limit,
        disabled: req.disabled,
        expires: req.expires,
        budget,
    };
    if let Some(e) = state.store.known_outage() {
        return unavailable(state, &e);
    }
    match state.store.store().update_key(id, None, &patch).await {
        Ok(Some((version, row))) => {
            state
                .store
                .patch(version, Patch::Put(Box::new(row.clone())));
            super::audit(snap, ev, &row.id, &row.user, 200).await;
            tracing::info!(key_id = %row.id, user = %row.user, "API key updated");
            Reply::json(200, &store_object(&row, state.store.keys().last_used(id)))
        }
        Ok(None) => not_found(id),
        Err(e) => unavailable(state, &e),
    }
}
