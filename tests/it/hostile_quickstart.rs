//! The quick start (`conf/sluice.toml` as shipped, on free ports and temporary paths) against
//! what coding tools send (issue 23 item 4): personal data in a prompt — Claude Code's own
//! instructions carry an e-mail address — is redacted before it goes upstream, not refused;
//! a secret is still refused. (The real Claude Code and Codex CLIs are driven in `tests/cli`.)

use crate::support::{client, error_code, json_of, parse, server_section, url, DEMO_KEY};
use serde_json::json;

/// The quick start with its `[server]` on free ports and its files in `dir`.
fn quick_start(dir: &std::path::Path) -> sluice::Gateway {
    let shipped = include_str!("../../conf/sluice.toml");
    let (before, rest) = shipped
        .split_once("[server]")
        .unwrap_or_else(|| panic!("the quick start has no [server]"));
    // Drop the shipped [server] table (up to the next table) for one on free ports.
    let after = &rest[rest.find("\n[").unwrap_or(rest.len())..];
    let toml = format!(
        "{before}{}{after}\n[store]\nurl = \"sqlite://{}\"\n",
        server_section(),
        dir.join("data/sluice.db").display()
    )
    .replace(
        "path = \"audit/audit.jsonl\"",
        &format!("path = \"{}\"", dir.join("audit.jsonl").display()),
    );
    sluice::GatewayBuilder::new()
        .config(parse(&toml))
        .start()
        .unwrap_or_else(|e| panic!("quick start did not start: {e}"))
}

fn messages(gw: &sluice::Gateway, system: &str, text: &str) -> reqwest::blocking::Response {
    client()
        .post(url(gw, "/v1/messages"))
        .header("x-api-key", DEMO_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({
            "model": "claude-sonnet-4-5-20250929", "max_tokens": 64, "system": system,
            "messages": [{"role": "user", "content": text}],
        }))
        .send()
        .expect("POST /v1/messages")
}

#[test]
fn the_quick_start_redacts_personal_data_in_prompts_and_still_blocks_secrets() {
    let dir = tempfile::tempdir().expect("tmp");
    let gw = quick_start(dir.path());
    let system = "When committing, add Co-Authored-By: Claude <noreply@anthropic.com>.";

    // A tool's own instructions with an e-mail address: answered, the address redacted.
    let r = messages(&gw, system, "mail ops@example.com the summary");
    assert_eq!(r.status().as_u16(), 200);
    let answer = json_of(r);
    let text = answer["content"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(text, "mail [REDACTED:email] the summary", "{answer}");

    // The same on the OpenAI route.
    let r = client()
        .post(url(&gw, "/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(&json!({"model": "mock-echo", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "call +1 415 555 0100 or ops@example.com"}]}))
        .send()
        .expect("chat");
    assert_eq!(r.status().as_u16(), 200);
    let v = json_of(r);
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(!text.contains("ops@example.com"), "{text}");
    assert!(text.contains("[REDACTED:email]"), "{text}");

    // A secret is still refused, on both routes.
    let r = messages(&gw, system, "deploy with AKIAIOSFODNN7EXAMPLE please");
    assert_eq!(r.status().as_u16(), 400);
    let v = json_of(r);
    assert_eq!(v["error"]["code"], "dlp_blocked", "{v}");
    let r = client()
        .post(url(&gw, "/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(&json!({"model": "mock-echo", "messages": [
            {"role": "user", "content": "my key is AKIAIOSFODNN7EXAMPLE"}]}))
        .send()
        .expect("chat");
    assert_eq!(error_code(r, 400), "dlp_blocked");
    drop(gw);

    // The audit trail records the redaction and the block, never the values.
    let trail = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
    assert!(trail.contains(r#""detector":"email","direction":"request","action":"redact""#));
    assert!(trail.contains(r#""outcome":"dlp_blocked""#));
    for secret in [
        "ops@example.com",
        "AKIAIOSFODNN7EXAMPLE",
        "noreply@anthropic.com",
    ] {
        assert!(!trail.contains(secret), "the audit trail holds {secret}");
    }
}
