//! Spend tests' shared pieces: a config with prices and budgets, requests, usage.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::{client, Directory};
use serde_json::{json, Value};

pub const ALICE: &str = "sk-sluice-ALICEspendALICEspendALICEspendALICEsp01";
pub const BOB: &str = "sk-sluice-BOBspendBOBspendBOBspendBOBspendBOBspe01";
pub const CALIB: &str = "sk-sluice-CALIBspendCALIBspendCALIBspendCALIBsp01";

/// `$1` per token in and out: a request's cost in dollars is its token count.
pub fn config(store: &str, audit: &str, alice_budget: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "mock"
builtin = "mock"
[[upstreams]]
name = "mock-anthropic"
builtin = "mock"
api = "anthropic"

[[models]]
name = "mock-echo"
upstream = "mock"
upstream_model = "echo"
price = {{ input_per_mtok = 1000000, output_per_mtok = 1000000, cached_input_per_mtok = 500000 }}
[[models]]
name = "mock-free"
upstream = "mock"
upstream_model = "echo"
[[models]]
name = "claude-test"
upstream = "mock-anthropic"
upstream_model = "echo"
price = {{ input_per_mtok = 1000000, output_per_mtok = 1000000 }}

{directory}
[store]
url = "{store}"
poll_interval_ms = 100
[audit]
path = "{audit}"
"#,
        directory = Directory::role(
            "dev",
            &["chat", "models:list", "embeddings", "keys:manage"],
            &["*"]
        )
        .alice_fields(&format!("budget = {alice_budget}"))
        .user("bob", "acme", "dev")
        .user_with(
            "calib",
            "acme",
            "dev",
            r#"budget = { usd = 1000000, period = "total" }"#
        )
        .key("alice-key", ALICE)
        .key_of("bob", "bob-key", BOB, "")
        .key_of("calib", "calib-key", CALIB, "")
        .filters(&["auth", "rate_limit", "audit"])
        .toml(),
    )
}

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tmp"),
        }
    }
    pub fn store(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("sluice.db").display())
    }
    pub fn audit(&self) -> String {
        self.dir.path().join("audit.jsonl").display().to_string()
    }
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.audit())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
    /// The audit records of `request_id`, once written.
    pub fn record(&self, request_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self
                .records()
                .into_iter()
                .find(|r| r["request_id"] == request_id)
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no audit record for {request_id}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn words(n: usize) -> String {
    vec!["spend"; n].join(" ")
}

pub fn chat(
    base: &str,
    key: &str,
    model: &str,
    text: &str,
    max_tokens: u64,
    id: &str,
) -> reqwest::blocking::Response {
    client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-request-id", id)
        .header("x-mock-latency-ms", "300")
        .json(&json!({"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}]}))
        .send()
        .expect("request")
}

pub fn header(r: &reqwest::blocking::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub fn usage(base: &str, key: &str) -> Value {
    let r = client()
        .get(format!("{base}/v1/usage"))
        .bearer_auth(key)
        .send()
        .expect("usage");
    assert_eq!(r.status().as_u16(), 200);
    r.json().expect("usage JSON")
}

pub fn spent(u: &Value) -> f64 {
    u["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|r| r["cost_usd"].as_f64()).sum())
        .unwrap_or(0.0)
}

/// The reservation of `text`/`max_tokens` as the gateway computes it: read from the remaining
/// budget of a caller with nothing else in flight.
pub fn reservation(base: &str, text: &str, max_tokens: u64) -> f64 {
    let r = chat(base, CALIB, "mock-echo", text, max_tokens, "calibration");
    assert_eq!(r.status().as_u16(), 200);
    let remaining: f64 = header(&r, "x-sluice-budget-remaining-usd")
        .expect("remaining")
        .parse()
        .expect("decimal");
    let _ = r.text();
    1_000_000.0 - remaining
}

/// One answer of [`fire`]: its status, its `Retry-After` and its body.
pub type Answer = (u16, Option<String>, Value);

/// Sends `n` chat requests at once (ALICE's key, the prompt `text`, `max_tokens` 20), the i-th to
/// `bases[i % bases.len()]` with request id `{tag}-{i}`, and returns their answers in order.
/// Each must be a 200 or a 429 `budget_exceeded`. Returns the answers and how many were admitted.
pub fn fire(bases: &[String], text: &str, n: usize, tag: &str) -> (Vec<Answer>, usize) {
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let base = &bases[i % bases.len()];
                s.spawn(move || {
                    let r = chat(base, ALICE, "mock-echo", text, 20, &format!("{tag}-{i}"));
                    let status = r.status().as_u16();
                    let retry = header(&r, "retry-after");
                    (status, retry, r.json().unwrap_or(Value::Null))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let refused = answers.iter().filter(|a| a.0 == 429).count();
    assert_eq!(ok + refused, n, "only 200 and 429: {answers:?}");
    for (status, _, body) in &answers {
        if *status == 429 {
            assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
        }
    }
    (answers, ok)
}
