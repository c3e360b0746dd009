//! Auth and RBAC through a real gateway: keys by hash, roles, narrowing, `sluice keys new`,
//! reloads.

use std::process::Command;

use crate::support::*;
use serde_json::json;

const ALICE: &str = "sk-sluice-ALICEaliceALICEaliceALICEaliceALICEalice";
const NARROW: &str = "sk-sluice-NARROWnarrowNARROWnarrowNARROWnarrowNARR";
const OFF: &str = "sk-sluice-OFFoffOFFoffOFFoffOFFoffOFFoffOFFoffOFFo";
const CHATONLY: &str = "sk-sluice-CHATchatCHATchatCHATchatCHATchatCHATchat";

fn sha(k: &str) -> String {
    sluice::filters::auth::key_sha256_hex(k)
}

fn policy() -> String {
    format!(
        r#"{MOCK}
[[models]]
name = "mock-other"
upstream = "mock"
upstream_model = "echo"
[[models]]
name = "gpt-4o-mini"
upstream = "mock"
upstream_model = "echo"

{directory}"#,
        directory = Directory::role("analyst", &["chat", "models:list"], &["mock-*"])
            .also_role("chatter", &["chat"], &["*"])
            .user("carol", "acme", "chatter")
            .key("alice-laptop", ALICE)
            .key_with(
                "alice-narrow",
                NARROW,
                "models = [\"mock-echo\", \"gpt-4o-mini\"]"
            )
            .key_with("alice-old", OFF, "disabled = true")
            .key_of("carol", "carol-key", CHATONLY, "")
            .filters(&["auth"])
            .toml(),
    )
}

fn chat_as(gw: &sluice::Gateway, auth: Option<&str>, model: &str) -> reqwest::blocking::Response {
    let mut req = client().post(url(gw, "/v1/chat/completions")).json(&json!({
        "model": model, "messages": [{"role": "user", "content": "hi"}]
    }));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().unwrap_or_else(|e| panic!("{e}"))
}

fn model_ids(gw: &sluice::Gateway, key: &str) -> Vec<String> {
    let v = json_of(
        client()
            .get(url(gw, "/v1/models"))
            .bearer_auth(key)
            .send()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn keys_are_resolved_by_hash_and_refusals_are_401() {
    let gw = start(&policy());
    let bearer = |k: &str| format!("Bearer {k}");
    assert_eq!(
        chat_as(&gw, Some(&bearer(ALICE)), "mock-echo")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        chat_as(&gw, Some(&format!("bearer {ALICE}")), "mock-echo")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        error_code(chat_as(&gw, None, "mock-echo"), 401),
        "missing_api_key"
    );
    assert_eq!(
        error_code(chat_as(&gw, Some("Bearer "), "mock-echo"), 401),
        "missing_api_key"
    );
    let unknown = "sk-sluice-UNKNOWNunknownUNKNOWNunknownUNKNOWNunknownU";
    assert_eq!(
        error_code(chat_as(&gw, Some(&bearer(unknown)), "mock-echo"), 401),
        "invalid_api_key"
    );
    assert_eq!(
        error_code(chat_as(&gw, Some(&bearer(OFF)), "mock-echo"), 401),
        "invalid_api_key"
    );
    assert_eq!(
        error_code(
            chat_as(&gw, Some(&format!("Basic {ALICE}")), "mock-echo"),
            401
        ),
        "invalid_api_key"
    );
    let huge = format!("Bearer {}", "x".repeat(10_000));
    assert_eq!(
        error_code(chat_as(&gw, Some(&huge), "mock-echo"), 401),
        "invalid_api_key"
    );
    // The refusal never echoes the key.
    let body = chat_as(&gw, Some(&bearer(unknown)), "mock-echo")
        .text()
        .unwrap_or_default();
    assert!(!body.contains(unknown));
}

#[test]
fn roles_and_key_narrowing_decide_models_and_permissions() {
    let gw = start(&policy());
    let b = |k: &str| format!("Bearer {k}");
    // Role allows mock-*, not gpt-4o-mini.
    assert_eq!(
        chat_as(&gw, Some(&b(ALICE)), "mock-other")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        error_code(chat_as(&gw, Some(&b(ALICE)), "gpt-4o-mini"), 403),
        "model_not_allowed"
    );
    // The key narrows to mock-echo; naming gpt-4o-mini cannot widen the role.
    assert_eq!(
        chat_as(&gw, Some(&b(NARROW)), "mock-echo")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        error_code(chat_as(&gw, Some(&b(NARROW)), "mock-other"), 403),
        "model_not_allowed"
    );
    assert_eq!(
        error_code(chat_as(&gw, Some(&b(NARROW)), "gpt-4o-mini"), 403),
        "model_not_allowed"
    );
    // /v1/models shows only what the key may use; others are 404.
    assert_eq!(model_ids(&gw, ALICE), vec!["mock-echo", "mock-other"]);
    assert_eq!(model_ids(&gw, NARROW), vec!["mock-echo"]);
    let r = client()
        .get(url(&gw, "/v1/models/mock-other"))
        .bearer_auth(NARROW)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 404), "model_not_found");
    let r = client()
        .get(url(&gw, "/v1/models/mock-echo"))
        .bearer_auth(NARROW)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);
    // A role without models:list; without passthrough.
    let r = client()
        .get(url(&gw, "/v1/models"))
        .bearer_auth(CHATONLY)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 403), "permission_denied");
    let r = client()
        .get(url(&gw, "/v1/mock/echo"))
        .bearer_auth(ALICE)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 403), "permission_denied");
    let r = client()
        .post(url(&gw, "/v1/embeddings"))
        .bearer_auth(ALICE)
        .json(&json!({"model": "mock-echo", "input": "x"}))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 403), "permission_denied");
}

#[test]
fn a_key_from_sluice_keys_new_works_after_pasting_and_reload_tracks_keys() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("sluice.toml");
    let base = format!("{}{}", server_section(), policy());
    std::fs::write(&path, &base).unwrap_or_else(|e| panic!("{e}"));
    let gw = sluice::GatewayBuilder::new()
        .config_file(&path)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));

    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["keys", "new", "--user", "carol", "--id", "carol-new"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("sk-sluice-"))
        .unwrap_or_else(|| panic!("no key in {text}"))
        .to_string();
    assert_eq!(key.len(), "sk-sluice-".len() + 40);
    assert!(key["sk-sluice-".len()..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric()));
    let entry = &text[text
        .find("[[keys]]")
        .unwrap_or_else(|| panic!("no entry in {text}"))..];
    assert!(!entry.contains(&key), "the entry holds only the hash");
    assert!(entry.contains(&sha(&key)));

    assert_eq!(
        error_code(
            chat_as(&gw, Some(&format!("Bearer {key}")), "mock-echo"),
            401
        ),
        "invalid_api_key"
    );
    std::fs::write(&path, format!("{base}\n{entry}")).unwrap_or_else(|e| panic!("{e}"));
    gw.reload().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        chat_as(&gw, Some(&format!("Bearer {key}")), "mock-echo")
            .status()
            .as_u16(),
        200
    );

    // Disabled, then removed, by reload.
    let disabled = format!("{base}\n{entry}disabled = true\n");
    std::fs::write(&path, disabled).unwrap_or_else(|e| panic!("{e}"));
    gw.reload().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        error_code(
            chat_as(&gw, Some(&format!("Bearer {key}")), "mock-echo"),
            401
        ),
        "invalid_api_key"
    );
    std::fs::write(&path, base.replace(&sha(ALICE), &sha("sk-sluice-gone")))
        .unwrap_or_else(|e| panic!("{e}"));
    gw.reload().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        error_code(
            chat_as(&gw, Some(&format!("Bearer {ALICE}")), "mock-echo"),
            401
        ),
        "invalid_api_key"
    );
}

#[test]
fn identity_never_reaches_labels_or_upstream_as_a_key() {
    let gw = start(&policy());
    let _ = chat_as(&gw, Some(&format!("Bearer {ALICE}")), "mock-echo").text();
    let _ = chat_as(&gw, Some("Bearer sk-sluice-wrong"), "mock-echo").text();
    // Requests are counted in their logging phase, just after the response went out.
    let m = wait_metric_at_least(
        &gw,
        "sluice_requests_total",
        &["outcome=\"denied_auth\"", "status=\"401\""],
        1.0,
    );
    assert!(!m.contains("sk-sluice"), "no key in metrics");
    assert!(
        metric_sum(&m, "sluice_auth_failures_total", &["reason=\"invalid\""]) >= 1.0,
        "{m}"
    );
}
