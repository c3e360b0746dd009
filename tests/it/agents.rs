//! `POST /v1/agents/{agentId}/run` and `GET /v1/agents/{agentId}/runs/{runId}` through a real
//! gateway with auth on.

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};

const ALICE: &str = "sk-sluice-ALICEaliceALICEaliceALICEaliceALICEalice";
const BOB: &str = "sk-sluice-BOBbobBOBbobBOBbobBOBbobBOBbobBOBbobBOBb";
const CAROL: &str = "sk-sluice-CAROLcarolCAROLcarolCAROLcarolCAROLcarol";

fn config(slow_port: u16) -> String {
    format!(
        r#"{MOCK}
[[upstreams]]
name = "slow"
url = "http://127.0.0.1:{slow_port}"
[[models]]
name = "slow-echo"
upstream = "slow"
upstream_model = "echo"

[agent_runs]
max_in_flight = 1

[[agents]]
id = "daily-scan"
model = "mock-echo"
instructions = "You are a security analyst."
max_tokens = 64
[[agents]]
id = "slow-scan"
model = "slow-echo"
instructions = "Take your time."
[[agents]]
id = "secret-agent"
model = "mock-echo"
instructions = "Classified."

{directory}"#,
        directory = Directory::role("analyst", &["chat", "models:list", "agents:run"], &["*"])
            .agents(&["daily-*", "slow-*"])
            .also_role("chatter", &["chat"], &["*"])
            .agents(&["*"])
            .org("globex")
            .user("bob", "globex", "analyst")
            .user("carol", "acme", "chatter")
            .key("alice-key", ALICE)
            .key_of("bob", "bob-key", BOB, "")
            .key_of("carol", "carol-key", CAROL, "")
            .filters(&["auth"])
            .toml(),
    )
}

struct Slow {
    port: u16,
    _rt: tokio::runtime::Runtime,
    _stop: tokio::sync::watch::Sender<bool>,
}

fn slow_mock() -> Slow {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let opts = sluice::mock::MockOptions {
        latency_ms: 1500,
        chunk_delay_ms: 0,
    };
    let addr = rt
        .block_on(sluice::mock::spawn(
            "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
            opts,
            rx,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    Slow {
        port: addr.port(),
        _rt: rt,
        _stop: tx,
    }
}

fn run(
    gw: &sluice::Gateway,
    key: Option<&str>,
    agent: &str,
    body: Value,
) -> reqwest::blocking::Response {
    let mut req = client()
        .post(url(gw, &format!("/v1/agents/{agent}/run")))
        .json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn synchronous_and_streamed_runs() {
    let slow = slow_mock();
    let gw = start(&config(slow.port));
    let r = run(
        &gw,
        Some(ALICE),
        "daily-scan",
        json!({"input": "Run the daily security scan"}),
    );
    assert_eq!(r.status().as_u16(), 200);
    let v = json_of(r);
    assert_eq!(v["object"], "agent.run");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["agent_id"], "daily-scan");
    assert_eq!(v["output"], "Run the daily security scan");
    assert!(v["id"].as_str().is_some_and(|i| i.starts_with("run_")));
    assert!(v["created"].as_u64().is_some());
    // The system message (instructions) was sent too: the mock counts its words as prompt.
    assert_eq!(v["usage"]["prompt_tokens"], 5 + 5);
    assert_eq!(v["usage"]["completion_tokens"], 5);

    let r = run(
        &gw,
        Some(ALICE),
        "daily-scan",
        json!({"input": "stream this please", "stream": true}),
    );
    assert_eq!(r.status().as_u16(), 200);
    let (text, _, done) = collect_stream(r);
    assert_eq!(text, "stream this please");
    assert!(done);
}

#[test]
fn errors_in_the_contract_shape() {
    let slow = slow_mock();
    let gw = start(&config(slow.port));
    assert_eq!(
        error_code(run(&gw, None, "daily-scan", json!({"input": "x"})), 401),
        "missing_api_key"
    );
    assert_eq!(
        error_code(run(&gw, Some(ALICE), "nope", json!({"input": "x"})), 404),
        "agent_not_found"
    );
    assert_eq!(
        error_code(
            run(&gw, Some(ALICE), "secret-agent", json!({"input": "x"})),
            403
        ),
        "agent_not_allowed"
    );
    assert_eq!(
        error_code(
            run(&gw, Some(CAROL), "daily-scan", json!({"input": "x"})),
            403
        ),
        "permission_denied"
    );
    assert_eq!(
        error_code(
            run(&gw, Some(ALICE), "daily-scan", json!({"prompt": "x"})),
            400
        ),
        "missing_input"
    );
    let r = client()
        .post(url(&gw, "/v1/agents/daily-scan/run"))
        .bearer_auth(ALICE)
        .body("not json")
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 400), "invalid_json");
    // The internal execution path is not a way in.
    let r = client()
        .post(url(&gw, "/v1/agents/daily-scan/run"))
        .header("x-sluice-internal-run", "00000000000000000000000000000000")
        .json(&json!({"input": "x"}))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 401), "invalid_api_key");
}

fn poll(gw: &sluice::Gateway, key: &str, agent: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client()
            .get(url(gw, &format!("/v1/agents/{agent}/runs/{id}")))
            .bearer_auth(key)
            .send()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status().as_u16(), 200);
        let v = json_of(r);
        if v["status"] == "completed" || v["status"] == "failed" || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn asynchronous_runs_are_queued_polled_bounded_and_private_to_their_org() {
    let slow = slow_mock();
    let gw = start(&config(slow.port));
    let r = run(
        &gw,
        Some(ALICE),
        "daily-scan",
        json!({"input": "later please", "async": true}),
    );
    assert_eq!(r.status().as_u16(), 202);
    let q = json_of(r);
    assert_eq!(q["status"], "queued");
    assert_eq!(q["object"], "agent.run");
    let id = q["id"].as_str().unwrap_or_default().to_string();
    let done = poll(&gw, ALICE, "daily-scan", &id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], "later please");
    assert_eq!(done["id"], q["id"]);
    assert!(done["usage"]["completion_tokens"].as_u64().is_some());

    // Another org cannot see it; nor through another agent's path.
    let r = client()
        .get(url(&gw, &format!("/v1/agents/daily-scan/runs/{id}")))
        .bearer_auth(BOB)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 404), "not_found");
    let r = client()
        .get(url(&gw, &format!("/v1/agents/slow-scan/runs/{id}")))
        .bearer_auth(ALICE)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 404), "not_found");

    // max_in_flight = 1: a slow run holds the only place; the next is refused with 429.
    let r = run(
        &gw,
        Some(ALICE),
        "slow-scan",
        json!({"input": "slow one", "async": true}),
    );
    assert_eq!(r.status().as_u16(), 202);
    let slow_id = json_of(r)["id"].as_str().unwrap_or_default().to_string();
    let r = run(
        &gw,
        Some(ALICE),
        "daily-scan",
        json!({"input": "one more", "async": true}),
    );
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(error_code(r, 429), "rate_limit_exceeded");
    let done = poll(&gw, ALICE, "slow-scan", &slow_id);
    assert_eq!(done["output"], "slow one");
    // With the place free again, runs are accepted.
    let r = run(
        &gw,
        Some(ALICE),
        "daily-scan",
        json!({"input": "again", "async": true}),
    );
    assert_eq!(r.status().as_u16(), 202);

    let m = metrics(&gw);
    assert!(
        metric_sum(
            &m,
            "sluice_agent_runs_total",
            &["agent=\"daily-scan\"", "status=\"completed\""]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &m,
            "sluice_agent_runs_total",
            &["agent=\"slow-scan\"", "status=\"queued\""]
        ) >= 1.0
    );
}
