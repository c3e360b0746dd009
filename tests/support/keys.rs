//! What the key API tests share: a config with users who may manage keys, their config keys,
//! and small request helpers. Part of `tests/support`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice::Gateway;

use super::{client, url, Directory};

pub const ALICE: &str = "sk-sluice-ALICEaliceALICEaliceALICEaliceALICEali";
pub const ALICE_NARROW: &str = "sk-sluice-NARROWnarrowNARROWnarrowNARROWnarrowNA";
pub const BOB: &str = "sk-sluice-BOBbobBOBbobBOBbobBOBbobBOBbobBOBbobBO";
pub const CAROL: &str = "sk-sluice-CAROLcarolCAROLcarolCAROLcarolCAROLcar";

/// Everything but `[server]`: alice and bob (role `dev`, with `keys:manage`), carol (role
/// `viewer`, without); alice's second key is narrowed to `mock-echo` at 100 requests/minute.
/// `store` is the store URL, `audit` the audit log's path.
pub fn config(store: &str, audit: &str, admin_token_env: Option<&str>) -> String {
    let admin = admin_token_env
        .map(|e| format!("admin_token_env = \"{e}\"\n"))
        .unwrap_or_default();
    format!(
        r#"{admin}
[[upstreams]]
name = "mock"
builtin = "mock"

[[models]]
name = "mock-echo"
upstream = "mock"
upstream_model = "echo"

[[models]]
name = "mock-other"
upstream = "mock"
upstream_model = "echo"

[[agents]]
id = "daily-scan"
model = "mock-echo"
instructions = "Summarise."

{directory}
[store]
url = "{store}"
poll_interval_ms = 100

[audit]
path = "{audit}"

"#,
        directory = Directory::role(
            "dev",
            &["chat", "models:list", "agents:run", "keys:manage"],
            &["mock-*"]
        )
        .agents(&["*"])
        .also_role("viewer", &["chat", "models:list"], &["mock-*"])
        .user("bob", "acme", "dev")
        .user("carol", "acme", "viewer")
        .key("alice-key", ALICE)
        .key_with(
            "alice-narrow",
            ALICE_NARROW,
            "models = [\"mock-echo\"]\nrate_limit = { requests_per_minute = 100 }"
        )
        .key_of("bob", "bob-key", BOB, "")
        .key_of("carol", "carol-key", CAROL, "")
        .filters(&["auth", "rate_limit", "audit"])
        .toml(),
    )
}

/// `POST /v1/keys` as `key`: the status and the JSON answer.
pub fn create(gw: &Gateway, key: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(url(gw, "/v1/keys"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .unwrap_or_else(|e| panic!("POST /v1/keys: {e}"));
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// A new key of `key`'s user, with no narrowing of its own.
pub fn new_key(gw: &Gateway, key: &str) -> (String, String) {
    let (status, v) = create(gw, key, json!({"name": "test"}));
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().unwrap_or_default().to_string(),
        v["key"].as_str().unwrap_or_default().to_string(),
    )
}

/// `DELETE /v1/keys/{id}` as `key`.
pub fn revoke(gw: &Gateway, key: &str, id: &str) -> reqwest::blocking::Response {
    client()
        .delete(url(gw, &format!("/v1/keys/{id}")))
        .bearer_auth(key)
        .send()
        .unwrap_or_else(|e| panic!("DELETE /v1/keys/{id}: {e}"))
}

/// The status of a chat completion made with `key`.
pub fn chat_status(gw: &Gateway, key: &str) -> u16 {
    client()
        .post(url(gw, "/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Waits (up to 10 s) until `f` holds; panics with `what` otherwise.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("not within 10 s: {what}");
}
