//! The key API (SPEC §12): self-service on the public listener ([`self_service`], after the
//! chain's request phase), and the admin API on the admin listener ([`admin::handle`]).
//!
//! Both make keys the same way: a fresh `sk-sluice-` key shown once in the `201`, only its
//! SHA-256 stored; every change is committed to the store, put in force on this instance at
//! once ([`StoreRuntime::patch`]) and put on the audit trail as a record of its own
//! ([`Chain::on_event`]: outcome `ok`, the changed key's id, never the key).
//!
//! [`Chain::on_event`]: crate::chain::Chain::on_event

pub mod admin;
mod bootstrap;
mod budget;
mod narrow;
mod public;

use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use sluice_filters::policy::{validate_spec, RateLimitSpec};
use sluice_filters::{Cx, Exchange, Identity, Outcome, Reply};

use crate::state::{EngineState, Snapshot};
use crate::store::sync::Patch;
use crate::store::{KeyRow, StoreError};

pub use bootstrap::create_in_store;
pub use public::self_service;

/// Longest key name, model pattern and list the API accepts.
const MAX_NAME: usize = 128;
const MAX_MODELS: usize = 32;
const MAX_EXPIRY_DAYS: u64 = 3650;

/// An error in the contract's shape with `param` naming the offending field.
pub(crate) fn error(
    status: u16,
    code: &'static str,
    msg: impl Into<String>,
    param: Option<&str>,
) -> Reply {
    let r = Reply::error(status, code, msg);
    match param {
        Some(p) => r.with_param(p),
        None => r,
    }
}

fn not_found(id: &str) -> Reply {
    let id: String = id.chars().take(MAX_NAME).collect();
    error(
        404,
        "not_found",
        format!("No API key `{id}` is known to you (revoked keys are gone)."),
        None,
    )
}

fn unavailable(state: &EngineState, e: &StoreError) -> Reply {
    state.store.change_failed(e);
    tracing::warn!(error = %e, "key change refused: the store is unavailable");
    Reply::error(503, "store_unavailable", format!(
        "The key store cannot take this change: {e}. Keys already issued keep working; retry shortly."))
    .with_header("retry-after", "1")
}

/// `rate_limit` as the API spells it: unknown limits are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiRateLimit {
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
    burst: Option<u64>,
    token_burst: Option<u64>,
}

impl ApiRateLimit {
    fn into_spec(self) -> Result<RateLimitSpec, Reply> {
        let spec = RateLimitSpec {
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            burst: self.burst,
            token_burst: self.token_burst,
        };
        let mut errs = Vec::new();
        validate_spec(&spec, "rate_limit", &mut errs);
        match errs.first() {
            Some(e) => Err(error(400, "invalid_request", e.to_string(), Some(&e.path))),
            None => Ok(spec),
        }
    }
}

/// Parses a JSON body into `T`, answering the contract's 400s (unknown fields name the field).
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, Reply> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}").map_err(|e| bad_json(&e));
    }
    serde_json::from_slice(raw).map_err(|e| bad_json(&e))
}

fn bad_json(e: &serde_json::Error) -> Reply {
    let msg = e.to_string();
    if let Some(field) = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        let field = field.chars().take(MAX_NAME).collect::<String>();
        return error(
            400,
            "unknown_parameter",
            format!("Unknown parameter: `{field}`. {msg}."),
            Some(&field),
        );
    }
    let code = if e.is_syntax() || e.is_eof() {
        "invalid_json"
    } else {
        "invalid_request"
    };
    error(
        400,
        code,
        format!("The request body is not what this route takes: {msg}."),
        None,
    )
}

/// Checks a name and a model list.
fn check_fields(name: Option<&str>, models: Option<&[String]>) -> Result<(), Reply> {
    if let Some(n) = name {
        if n.chars().count() > MAX_NAME || n.chars().any(char::is_control) {
            return Err(error(
                400,
                "invalid_request",
                format!("`name` must be at most {MAX_NAME} printable characters."),
                Some("name"),
            ));
        }
    }
    if let Some(m) = models {
        let bad = m.iter().any(|p| {
            p.is_empty()
                || p.len() > MAX_NAME
                || p.chars().any(|c| c.is_control() || c.is_whitespace())
        });
        if m.len() > MAX_MODELS || bad {
            return Err(error(400, "invalid_request", format!(
                "`models` must be at most {MAX_MODELS} model names or globs (`*`, `?`), each 1 to {MAX_NAME} characters without spaces."), Some("models")));
        }
    }
    Ok(())
}

fn expiry_from_days(days: Option<u64>) -> Result<Option<i64>, Reply> {
    match days {
        None => Ok(None),
        Some(d) if (1..=MAX_EXPIRY_DAYS).contains(&d) => {
            Ok(Some(crate::store::now_secs() + (d as i64) * 86_400))
        }
        Some(_) => Err(error(
            400,
            "invalid_request",
            format!("`expires_in_days` must be between 1 and {MAX_EXPIRY_DAYS}."),
            Some("expires_in_days"),
        )),
    }
}

/// A fresh key id: `key_` and 24 hex digits (96 random bits).
fn new_id() -> String {
    format!("key_{:024x}", rand::random::<u128>() >> 32)
}

/// A store key as the API shows it: never the key, never its hash.
fn store_object(row: &KeyRow, last_used: Option<u64>) -> Value {
    json!({
        "id": row.id, "object": "api_key", "name": row.name, "user": row.user,
        "models": row.models, "rate_limit": row.rate_limit, "disabled": row.disabled,
        "created": row.created, "expires": row.expires, "last_used": last_used,
        "budget": row.budget, "source": "store", "parent": row.parent,
    })
}

fn store_key_object(k: &sluice_filters::auth::StoreKey, last_used: Option<u64>) -> Value {
    json!({
        "id": &*k.id, "object": "api_key", "name": k.name, "user": k.user,
        "models": k.models, "rate_limit": k.rate_limit, "disabled": k.disabled,
        "created": k.created, "expires": k.expires, "last_used": last_used,
        "budget": k.budget, "source": "store", "parent": k.parent.as_deref(),
    })
}

fn config_object(k: &sluice_filters::policy::KeyConfig, last_used: Option<u64>) -> Value {
    json!({
        "id": k.id, "object": "api_key", "name": null, "user": k.user,
        "models": k.models, "rate_limit": k.rate_limit, "disabled": k.disabled,
        "created": null, "expires": null, "last_used": last_used,
        "budget": k.budget, "source": "config",
    })
}

/// Every key of `user` (every user's when `None`): the config's, then the store's.
pub(crate) fn list(state: &EngineState, snap: &Snapshot, user: Option<&str>) -> Value {
    let used = |id: &str| state.store.keys().last_used(id);
    let mut data: Vec<Value> = snap
        .config
        .keys
        .iter()
        .filter(|k| user.is_none_or(|u| k.user == u))
        .map(|k| config_object(k, used(&k.id)))
        .collect();
    let table = state.store.keys().table();
    for k in crate::store::sync::keys_of(&table, user) {
        data.push(store_key_object(&k, used(&k.id)));
    }
    json!({"object": "list", "data": data})
}

/// One key, the config's or the store's, if it belongs to `user` (any user's when `None`).
fn find(
    state: &EngineState,
    snap: &Snapshot,
    id: &str,
    user: Option<&str>,
) -> Option<(Value, bool)> {
    let mine = |u: &str| user.is_none_or(|want| want == u);
    let used = state.store.keys().last_used(id);
    if let Some(k) = snap
        .config
        .keys
        .iter()
        .find(|k| k.id == id && mine(&k.user))
    {
        return Some((config_object(k, used), true));
    }
    let table = state.store.keys().table();
    table
        .get(id)
        .filter(|k| mine(&k.user))
        .map(|k| (store_key_object(k, used), false))
}

/// What a change is, for the audit record and the answer.
pub(crate) struct Event<'a> {
    pub request_id: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
}

/// Puts a change on the audit trail: the changed key's id and owner, never the key.
async fn audit(snap: &Snapshot, ev: &Event<'_>, key_id: &str, owner: &str, status: u16) {
    let mut cx = Cx::new(
        ev.request_id.to_string(),
        ev.method.clone(),
        ev.path.to_string(),
    );
    cx.client_ip = ev.client_ip;
    cx.user_agent = ev.user_agent.map(|s| s.chars().take(256).collect());
    let user = snap.config.users.iter().find(|u| u.name == owner);
    cx.identity = Some(Identity {
        key_id: Arc::from(key_id),
        user: Arc::from(owner),
        org: Arc::from(user.map(|u| u.org.as_str()).unwrap_or_default()),
        role: Arc::from(user.map(|u| u.role.as_str()).unwrap_or_default()),
        grants: Arc::default(),
        ancestors: Arc::from([]),
    });
    let ex = Exchange {
        status,
        outcome: Outcome::Ok,
        latency: cx.started.elapsed(),
        upstream_latency: None,
        error_code: None,
    };
    snap.chain.on_event(&cx, &ex).await;
}

/// Stores a new key and answers `201` with it (the only time it is shown).
async fn create(state: &EngineState, snap: &Snapshot, ev: &Event<'_>, mut row: KeyRow) -> Reply {
    let key = sluice_filters::auth::generate_key();
    row.sha256 = sluice_filters::auth::key_sha256_hex(&key);
    if snap.config.keys.iter().any(|k| k.id == row.id) {
        return error(
            409,
            "key_exists",
            format!("The id `{}` is a configured key's.", row.id),
            Some("id"),
        );
    }
    if let Some(e) = state.store.known_outage() {
        return unavailable(state, &e);
    }
    // The user's config keys count too; the store counts its own in the write transaction.
    let max = snap.config.store.max_keys_per_user;
    let in_config = snap
        .config
        .keys
        .iter()
        .filter(|k| k.user == row.user)
        .count() as u64;
    let limit = max.saturating_sub(in_config);
    match state
        .store
        .store()
        .create_key_within(&row, Some(limit))
        .await
    {
        Ok(version) => {
            state
                .store
                .patch(version, Patch::Put(Box::new(row.clone())));
            audit(snap, ev, &row.id, &row.user, 201).await;
            tracing::info!(key_id = %row.id, user = %row.user, "API key created");
            let mut obj = store_object(&row, None);
            obj["key"] = Value::String(key);
            Reply::json(201, &obj)
        }
        Err(StoreError::TooMany(_)) => error(
            409,
            "key_limit_reached",
            format!(
                "The user `{}` already holds {max} API keys, the most this gateway allows \
                 (store.max_keys_per_user): revoke one (DELETE /v1/keys/{{id}}) first.",
                row.user
            ),
            None,
        ),
        Err(StoreError::Conflict(_)) => error(
            409,
            "key_exists",
            format!("A key with the id `{}` already exists.", row.id),
            Some("id"),
        ),
        Err(e) => unavailable(state, &e),
    }
}

/// Revokes a store key of `user` (any user's when `None`).
pub(crate) async fn revoke(
    state: &EngineState,
    snap: &Snapshot,
    ev: &Event<'_>,
    id: &str,
    user: Option<&str>,
) -> Reply {
    if let Some((_, true)) = find(state, snap, id, user) {
        return error(409, "config_key", format!(
            "The key `{id}` is in the gateway's config file; remove or disable it there (then reload)."), None);
    }
    if let Some(e) = state.store.known_outage() {
        return unavailable(state, &e);
    }
    match state.store.store().revoke_key(id, user).await {
        Ok(Some(crate::store::Revoked {
            version,
            owner,
            descendants,
        })) => {
            state.store.patch(version, Patch::Remove(id.to_string()));
            audit(snap, ev, id, &owner, 200).await;
            tracing::info!(key_id = %id, user = %owner, "API key revoked");
            // The keys made from it go with it: one record each, like any revocation.
            for child in &descendants {
                state.store.patch(version, Patch::Remove(child.clone()));
                audit(snap, ev, child, &owner, 200).await;
                tracing::info!(key_id = %child, user = %owner, parent = %id, "API key revoked with the key it was made from");
            }
            Reply::json(
                200,
                &json!({"id": id, "object": "api_key", "deleted": true}),
            )
        }
        Ok(None) => not_found(id),
        Err(e) => unavailable(state, &e),
    }
}
