//! Every route governed, through a real gateway: the Responses API, legacy completions,
//! embeddings and passthrough endpoints are authenticated, limited in tokens, scanned both ways
//! and audited with their model, stream flag and usage; a body's `model` routes it whatever its
//! `Content-Type`.

use std::path::Path;

use crate::support::scripted::scripted_upstream;
use crate::support::*;
use serde_json::{json, Value};

const ALICE: &str = "sk-sluice-ALICEaliceALICEaliceALICEaliceALICEalice";
const TIGHT: &str = "sk-sluice-TIGHTtightTIGHTtightTIGHTtightTIGHTtigh";
const EMAIL: &str = "jane.doe@example.com";

fn config(raw_port: u16, audit: &Path, response_action: &str) -> String {
    format!(
        r#"{MOCK}
[[upstreams]]
name = "raw"
url = "http://127.0.0.1:{raw_port}"
[[models]]
name = "raw-model"
upstream = "raw"
[[models]]
name = "secret-model"
upstream = "raw"

{directory}
[dlp]
request_action = "monitor"
response_action = "{response_action}"

[audit]
path = "{audit}"
fsync = "always"

"#,
        directory = Directory::role(
            "analyst",
            &["chat", "embeddings", "passthrough"],
            &["mock-*", "raw-*"]
        )
        .key("alice-key", ALICE)
        .key_with(
            "tight-key",
            TIGHT,
            "rate_limit = { tokens_per_minute = 1000 }"
        )
        .filters(&["auth", "rate_limit", "dlp", "audit"])
        .toml(),
        audit = audit.display(),
    )
}

struct Env {
    gw: sluice::Gateway,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn env(response_action: &str) -> Env {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let audit = dir.path().join("audit.jsonl");
    let gw = start(&config(scripted_upstream(), &audit, response_action));
    Env {
        gw,
        audit,
        _dir: dir,
    }
}

fn post(env: &Env, key: &str, path: &str, body: &Value) -> reqwest::blocking::Response {
    client()
        .post(url(&env.gw, path))
        .bearer_auth(key)
        .header("x-request-id", format!("t-{}", rand_id()))
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// The audit record of a request, once it is written.
fn record(env: &Env, request_id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&env.audit).unwrap_or_default();
        if let Some(r) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["request_id"] == request_id)
        {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit record {request_id}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn rid(r: &reqwest::blocking::Response) -> String {
    r.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn responses_are_redacted_whole_and_streamed_and_audited() {
    let env = env("redact");
    let input = format!("write to {EMAIL} please");
    let expected = "write to [REDACTED:email] please";
    let r = post(
        &env,
        ALICE,
        "/v1/responses",
        &json!({"model": "mock-echo", "input": input}),
    );
    assert_eq!(r.status().as_u16(), 200);
    let id = rid(&r);
    let v = json_of(r);
    assert_eq!(v["output"][0]["content"][0]["text"], expected, "{v}");
    let rec = record(&env, &id);
    assert_eq!(rec["model"], "mock-echo");
    assert_eq!(rec["stream"], false);
    assert_eq!(
        rec["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 4})
    );
    assert_eq!(rec["dlp"][0]["detector"], "email");

    let body = json!({"model": "mock-echo", "input": [{"role": "user", "content": input}], "stream": true});
    let r = post(&env, ALICE, "/v1/responses", &body);
    let id = rid(&r);
    let text = r.text().unwrap_or_default();
    assert!(!text.contains(EMAIL), "{text}");
    let mut deltas = String::new();
    let mut done = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let ev: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        match ev["type"].as_str().unwrap_or("") {
            "response.output_text.delta" => deltas.push_str(ev["delta"].as_str().unwrap_or("")),
            "response.output_text.done" => done.push(ev["text"].clone()),
            "response.completed" => {
                done.push(ev["response"]["output"][0]["content"][0]["text"].clone())
            }
            _ => {}
        }
    }
    assert_eq!(deltas, expected);
    assert_eq!(done, [json!(expected), json!(expected)]);
    let rec = record(&env, &id);
    assert_eq!(rec["stream"], true);
    assert_eq!(rec["model"], "mock-echo");
    assert_eq!(
        rec["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 4})
    );
}

#[test]
fn a_blocked_response_is_incomplete() {
    let env = env("block");
    let r = post(
        &env,
        ALICE,
        "/v1/responses",
        &json!({"model": "mock-echo", "input": format!("mail {EMAIL} now")}),
    );
    let v = json_of(r);
    assert_eq!(v["status"], "incomplete", "{v}");
    assert_eq!(v["incomplete_details"]["reason"], "content_filter");
    assert!(!v.to_string().contains("example.com"), "{v}");
}

#[test]
fn completions_and_embeddings_are_governed() {
    let env = env("redact");
    let r = post(
        &env,
        ALICE,
        "/v1/completions",
        &json!({"model": "mock-echo", "prompt": format!("hi {EMAIL}")}),
    );
    let id = rid(&r);
    let v = json_of(r);
    assert_eq!(v["choices"][0]["text"], "hi [REDACTED:email]");
    let rec = record(&env, &id);
    assert_eq!(
        rec["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 2})
    );

    let body = json!({"model": "mock-echo", "prompt": format!("hi {EMAIL} bye"), "stream": true});
    let r = post(&env, ALICE, "/v1/completions", &body);
    let id = rid(&r);
    let text = r.text().unwrap_or_default();
    let joined: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/text")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    assert_eq!(joined, "hi [REDACTED:email] bye");
    assert!(
        !text.contains("\"usage\""),
        "the usage Sluice asked for is hidden: {text}"
    );
    let rec = record(&env, &id);
    assert_eq!(rec["stream"], true);
    assert_eq!(
        rec["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 3})
    );

    let r = post(
        &env,
        ALICE,
        "/v1/embeddings",
        &json!({"model": "mock-echo", "input": ["one two", "three"]}),
    );
    let id = rid(&r);
    let v = json_of(r);
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
    let rec = record(&env, &id);
    assert_eq!(rec["model"], "mock-echo");
    assert_eq!(
        rec["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 0})
    );
}

#[test]
fn passthrough_answers_are_scanned_in_every_shape() {
    let env = env("redact");
    let call = |header: &str, value: String| {
        client()
            .post(url(&env.gw, "/v1/custom/thing"))
            .bearer_auth(ALICE)
            .header(header, value)
            .json(&json!({"model": "raw-model"}))
            .send()
            .unwrap_or_else(|e| panic!("{e}"))
            .text()
            .unwrap_or_default()
    };
    let json_answer = call(
        "x-body",
        json!({"note": format!("mail {EMAIL}")}).to_string(),
    );
    assert_eq!(
        serde_json::from_str::<Value>(&json_answer).unwrap_or(Value::Null)["note"],
        "mail [REDACTED:email]"
    );
    let text_answer = call("x-text", format!("plain {EMAIL} text"));
    assert_eq!(text_answer, "plain [REDACTED:email] text");
    let sse = call("x-kind", "chat-content".into());
    assert!(sse.contains("data: [DONE]"), "{sse}");
}

#[test]
fn a_blocked_passthrough_stream_ends_with_an_error_event() {
    let env = env("block");
    let r = client()
        .post(url(&env.gw, "/v1/custom/stream"))
        .bearer_auth(ALICE)
        .header("x-kind", "chat-content")
        .header(
            "x-deltas",
            json!(["ok ", format!("mail {EMAIL}"), " later"]).to_string(),
        )
        .json(&json!({"model": "raw-model"}))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = r.text().unwrap_or_default();
    assert!(!text.contains(EMAIL) && !text.contains("later"), "{text}");
    let last = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_default();
    let v: Value = serde_json::from_str(last).unwrap_or(Value::Null);
    assert_eq!(v["error"]["code"], "dlp_blocked", "{text}");
}

#[test]
fn the_model_is_read_whatever_the_content_type() {
    let env = env("redact");
    let send = |body: &str, ctype: Option<&str>| {
        let mut req = client()
            .post(url(&env.gw, "/v1/custom/echo"))
            .bearer_auth(ALICE)
            .body(body.to_string());
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        req.send().unwrap_or_else(|e| panic!("{e}"))
    };
    // Reaches the scripted upstream (it echoes what it received), not the first upstream.
    for ctype in [Some("text/plain"), None] {
        let r = send(r#"{"model": "raw-model", "x": 1}"#, ctype);
        assert_eq!(r.status().as_u16(), 200);
        let v = json_of(r);
        assert!(
            v["request_line"]
                .as_str()
                .unwrap_or("")
                .contains("/v1/custom/echo"),
            "{v}"
        );
    }
    // RBAC follows it: a model the role does not allow is refused.
    let r = send(r#"{"model": "secret-model"}"#, Some("text/plain"));
    assert_eq!(error_code(r, 403), "model_not_allowed");
    // A body that looks like JSON but does not parse is refused, not forwarded unread.
    let r = send(r#"{"model": "secret-model", "x": NaN}"#, Some("text/plain"));
    assert_eq!(error_code(r, 400), "invalid_json");
}

#[test]
fn token_limits_hold_on_every_route() {
    let env = env("redact");
    let huge = "word ".repeat(60_000);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "mock-echo", "messages": [{"role": "user", "content": huge}]}),
        ),
        (
            "/v1/chat/completions/",
            json!({"model": "mock-echo", "messages": [{"role": "user", "content": huge}]}),
        ),
        (
            "/v1/completions",
            json!({"model": "mock-echo", "prompt": huge}),
        ),
        (
            "/v1/responses",
            json!({"model": "mock-echo", "input": huge}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "mock-echo", "input": huge}),
        ),
        (
            "/v1/moderations",
            json!({"model": "mock-echo", "input": huge}),
        ),
        (
            "/v1/custom/anything",
            json!({"model": "raw-model", "text": huge}),
        ),
        ("/v1/custom/anything", json!({"text": huge})),
    ];
    for (path, body) in cases {
        let r = post(&env, TIGHT, path, &body);
        assert_eq!(error_code(r, 429), "rate_limit_exceeded", "{path}");
    }
    // A request that fits is charged its real usage afterwards.
    let r = post(
        &env,
        TIGHT,
        "/v1/responses",
        &json!({"model": "mock-echo", "input": "two words", "max_output_tokens": 10}),
    );
    assert_eq!(r.status().as_u16(), 200);
    let remaining: u64 = r
        .headers()
        .get("x-ratelimit-remaining-tokens")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(remaining < 1000, "{remaining}");
}

/// `POST /v1/moderations`, added as its `api/` module and one registration line: forwarded,
/// scanned both ways (a secret in `input` blocks it), audited and counted as `moderations`,
/// under passthrough's rules (a request naming no model goes to the first upstream).
#[test]
fn moderations_are_a_governed_route() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let audit = dir.path().join("audit.jsonl");
    let toml = config(scripted_upstream(), &audit, "redact").replace(
        r#"request_action = "monitor""#,
        r#"request_action = "block""#,
    );
    let env = Env {
        gw: start(&toml),
        audit,
        _dir: dir,
    };
    let body = json!({"model": "mock-echo", "input": ["a calm day", "attack now"]});
    let r = post(&env, ALICE, "/v1/moderations", &body);
    assert_eq!(r.status().as_u16(), 200);
    let id = rid(&r);
    let v = json_of(r);
    assert_eq!(v["model"], "echo", "{v}");
    assert_eq!(v["results"][0]["flagged"], false, "{v}");
    assert_eq!(v["results"][1]["flagged"], true, "{v}");
    let rec = record(&env, &id);
    assert_eq!(rec["path"], "/v1/moderations", "{rec}");
    assert_eq!(rec["model"], "mock-echo", "{rec}");
    assert_eq!(rec["outcome"], "ok", "{rec}");

    // No model: the first upstream, for a caller allowed every model of it.
    let r = post(&env, ALICE, "/v1/moderations", &json!({"input": "hello"}));
    assert_eq!(json_of(r)["model"], "omni-moderation-latest");

    // A secret in `input` (a text part) never reaches the upstream.
    let secret = json!([{"type": "text", "text": "key AKIAIOSFODNN7EXAMPLE"}]);
    let body = json!({"model": "mock-echo", "input": secret});
    let r = post(&env, ALICE, "/v1/moderations", &body);
    let id = rid(&r);
    assert_eq!(error_code(r, 400), "dlp_blocked");
    assert_eq!(record(&env, &id)["outcome"], "dlp_blocked");

    // The answer's strings are scanned too.
    let answer = json!({"id": "modr-1", "model": "raw-model",
        "results": [{"flagged": false, "note": format!("mail {EMAIL}")}]});
    let r = client()
        .post(url(&env.gw, "/v1/moderations"))
        .bearer_auth(ALICE)
        .header("x-body", answer.to_string())
        .json(&json!({"model": "raw-model", "input": "hi"}))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_of(r)["results"][0]["note"], "mail [REDACTED:email]");

    let route = r#"route="moderations""#;
    wait_metric(
        &env.gw,
        "sluice_requests_total",
        &[route, r#"outcome="ok""#],
        3.0,
    );
    let text = wait_metric(
        &env.gw,
        "sluice_requests_total",
        &[route, r#"outcome="dlp_blocked""#],
        1.0,
    );
    let by_model = [route, r#"model="mock-echo""#, r#"outcome="ok""#];
    assert_eq!(metric_sum(&text, "sluice_requests_total", &by_model), 1.0);
}
