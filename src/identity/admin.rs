//! The users directory on the admin listener (SPEC §13): `GET /admin/v1/users`,
//! `GET /admin/v1/users/{name}`, `PUT /admin/v1/users/{name}` with `{"disabled": bool}`.
//! The admin token is required as for `/admin/v1/keys`; every change is an audit record.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_filters::auth::AuthMethod;
use sluice_filters::{Cx, Exchange, Identity, Outcome, Reply};

use crate::keys::admin::{check_token, AdminRequest, TokenCheck};
use crate::state::{EngineState, Snapshot};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    disabled: bool,
}

fn error(status: u16, code: &'static str, msg: impl Into<String>) -> Reply {
    Reply::error(status, code, msg)
}

/// Answers `/admin/v1/users[/{name}]`.
pub async fn handle(state: &EngineState, req: AdminRequest<'_>) -> Reply {
    let snap = state.snapshot.load_full();
    match check_token(&snap.config, req.headers) {
        TokenCheck::Granted => {}
        TokenCheck::NotConfigured => {
            return error(403, "permission_denied",
                "The admin API is off: set server.admin_token_env to the name of an environment variable holding the admin token.")
        }
        TokenCheck::Refused(r) => return r,
    }
    let rest = req.path.strip_prefix("/admin/v1/users").unwrap_or_default();
    let name = rest
        .strip_prefix('/')
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .map(percent_decode);
    match (req.method, rest, name) {
        (&Method::GET, "" | "/", _) => {
            let data: Vec<Value> = directory(state, &snap).into_values().collect();
            Reply::json(200, &json!({"object": "list", "data": data}))
        }
        (&Method::GET, _, Some(name)) => match directory(state, &snap).remove(&name) {
            Some(u) => Reply::json(200, &u),
            None => not_found(&name),
        },
        (&Method::PUT, _, Some(name)) => update(state, &snap, &req, &name).await,
        (_, "" | "/", _) => {
            error(405, "method_not_allowed", "This route takes GET.").with_header("allow", "GET")
        }
        (_, _, Some(_)) => error(405, "method_not_allowed", "This route takes GET, PUT.")
            .with_header("allow", "GET, PUT"),
        _ => error(404, "not_found", "No such admin route."),
    }
}

fn not_found(name: &str) -> Reply {
    let name: String = name.chars().take(128).collect();
    error(
        404,
        "not_found",
        format!("No user `{name}` in the config or the store's directory."),
    )
}

/// `%40` and friends in a path segment (user names are often e-mail addresses).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every user: the config's, then the store's, by name.
pub fn directory(state: &EngineState, snap: &Snapshot) -> BTreeMap<String, Value> {
    let dir = state.store.users().table();
    let keys = state.store.keys().table();
    let count = |user: &str| {
        keys.iter().filter(|k| k.user == user).count()
            + snap.config.keys.iter().filter(|k| k.user == user).count()
    };
    let mut out = BTreeMap::new();
    for u in &snap.config.users {
        let stored = dir.get(&u.name);
        out.insert(
            u.name.clone(),
            json!({
                "object": "user",
                "name": u.name,
                "source": "config",
                "org": u.org,
                "role": u.role,
                "disabled": stored.is_some_and(|s| s.disabled),
                "last_seen": stored.and_then(|s| s.last_seen),
                "keys": count(&u.name),
            }),
        );
    }
    for u in dir.iter() {
        if out.contains_key(&u.name) {
            continue;
        }
        out.insert(
            u.name.clone(),
            json!({
                "object": "user",
                "name": u.name,
                "source": u.source,
                "org": u.org,
                "role": u.role,
                "disabled": u.disabled,
                "last_seen": u.last_seen,
                "keys": count(&u.name),
            }),
        );
    }
    out
}

async fn update(state: &EngineState, snap: &Snapshot, req: &AdminRequest<'_>, name: &str) -> Reply {
    let body: Update = match crate::keys::parse_body(req.body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    set_disabled(state, snap, req, name, body.disabled).await
}

/// Disables or enables a user of the directory (the admin API and the console's admin page):
/// the store first, then this instance's table, then the audit record.
pub async fn set_disabled(
    state: &EngineState,
    snap: &Snapshot,
    req: &AdminRequest<'_>,
    name: &str,
    disabled: bool,
) -> Reply {
    let body = Update { disabled };
    let config_user = snap.config.users.iter().any(|u| u.name == name);
    if !config_user && state.store.users().table().get(name).is_none() {
        return not_found(name);
    }
    let source = if config_user { "config" } else { "oidc" };
    if let Some(e) = state.store.known_outage() {
        state.store.change_failed(&e);
        return Reply::error(
            503,
            "store_unavailable",
            format!("The store cannot take this change: {e}. Retry shortly."),
        )
        .with_header("retry-after", "1");
    }
    match state
        .store
        .store()
        .set_user_disabled(name, source, body.disabled)
        .await
    {
        Ok(user) => {
            state.store.put_user(user);
            audit(snap, req, name).await;
            tracing::info!(user = %name, disabled = body.disabled, "directory: user updated");
            match directory(state, snap).remove(name) {
                Some(u) => Reply::json(200, &u),
                None => not_found(name),
            }
        }
        Err(e) => {
            state.store.change_failed(&e);
            Reply::error(
                503,
                "store_unavailable",
                format!("The store cannot take this change: {e}. Retry shortly."),
            )
            .with_header("retry-after", "1")
        }
    }
}

/// The change as an audit record: the changed user, outcome `ok`.
async fn audit(snap: &Snapshot, req: &AdminRequest<'_>, name: &str) {
    let mut cx = Cx::new(
        req.request_id.to_string(),
        req.method.clone(),
        req.path.to_string(),
    );
    cx.client_ip = req.client_ip;
    cx.user_agent = req
        .headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect());
    let user = snap.config.users.iter().find(|u| u.name == name);
    cx.identity = Some(Identity {
        key_id: Arc::from("admin"),
        user: Arc::from(name),
        org: Arc::from(user.map(|u| u.org.as_str()).unwrap_or_default()),
        role: Arc::from(user.map(|u| u.role.as_str()).unwrap_or_default()),
        grants: Arc::default(),
        ancestors: Arc::from([]),
    });
    cx.extensions.insert(AuthMethod::Key);
    let ex = Exchange {
        status: 200,
        outcome: Outcome::Ok,
        latency: cx.started.elapsed(),
        upstream_latency: None,
        error_code: None,
    };
    snap.chain.on_event(&cx, &ex).await;
}
