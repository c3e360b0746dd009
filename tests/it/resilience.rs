//! Failover and retries (SPEC §11) through real gateways, against upstreams of the test's own
//! that refuse, reset, hang (connect and response head), answer 5xx/429, or die mid-stream —
//! and one real `sluice mock` process killed in the middle of a stream.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::fleet::*;
use crate::support::*;
use serde_json::{json, Value};

fn audit_section(path: &Path) -> String {
    format!(
        "[audit]\npath = \"{}\"\nfsync = \"always\"\n[[filters]]\ntype = \"audit\"\n",
        path.display()
    )
}

/// The one audit record of `request_id` (waits for it).
fn record_for(path: &Path, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["request_id"] == request_id)
            .collect();
        if let [r] = found.as_slice() {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "no record for {request_id}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send_with_id(gw: &sluice::Gateway, id: &str, body: &Value) -> reqwest::blocking::Response {
    client()
        .post(url(gw, "/v1/chat/completions"))
        .header("x-request-id", id)
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("request failed: {e}"))
}

fn without_model(body: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("model");
    }
    v
}

#[test]
fn refused_reset_and_5xx_fail_over_with_each_targets_model_name() {
    let (a, b, c, d) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
        Upstream::start("d"),
    );
    a.kill();
    b.set(Mode::Reset);
    c.set(Mode::Status(500, None));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let audit = dir.path().join("audit.jsonl");
    let cfg = format!(
        r#"{ups}
[[models]]
name = "m"
targets = [
  {{ upstream = "a", upstream_model = "model-a" }},
  {{ upstream = "b", upstream_model = "model-b", priority = 2 }},
  {{ upstream = "c", upstream_model = "model-c", priority = 3 }},
  {{ upstream = "d", priority = 4 }},
]
[routing]
retries = 3
{audit}"#,
        ups = upstreams_toml(&[
            ("a", a.url(), ""),
            ("b", b.url(), ""),
            ("c", c.url(), ""),
            ("d", d.url(), "")
        ]),
        audit = audit_section(&audit),
    );
    let gw = start(&cfg);
    let resp = send_with_id(&gw, "failover-1", &chat_request("m", false));
    assert_eq!(resp.status().as_u16(), 200);
    let v = json_of(resp);
    assert_eq!(answer_text(&v), "from d");
    // d has no upstream_model: it gets the model's own name back.
    assert_eq!(v["model"], "m");

    // The body the chain produced, sent again unchanged but for each target's model name.
    let (bb, cb, db) = (b.bodies(), c.bodies(), d.bodies());
    assert_eq!((bb.len(), cb.len(), db.len()), (1, 1, 1));
    let model_of =
        |body: &[u8]| serde_json::from_slice::<Value>(body).unwrap_or_default()["model"].clone();
    assert_eq!(model_of(&bb[0]), "model-b");
    assert_eq!(model_of(&cb[0]), "model-c");
    assert_eq!(model_of(&db[0]), "m");
    assert_eq!(without_model(&bb[0]), without_model(&db[0]));
    assert_eq!(without_model(&cb[0]), without_model(&db[0]));

    let rec = record_for(&audit, "failover-1");
    assert_eq!(rec["upstream"], "d", "{rec}");
    assert_eq!(rec["attempts"], 4, "{rec}");
    assert_eq!(rec["outcome"], "ok");

    let text = wait_metric(
        &gw,
        "sluice_upstream_attempts_total",
        &["upstream=\"d\"", "result=\"ok\""],
        1.0,
    );
    for (up, result) in [("a", "connect"), ("b", "reset"), ("c", "5xx")] {
        let labels = [format!("upstream=\"{up}\""), format!("result=\"{result}\"")];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(
            metric_sum(&text, "sluice_upstream_attempts_total", &labels),
            1.0,
            "{up} {result}"
        );
    }
    assert_eq!(
        metric_sum(
            &text,
            "sluice_upstream_errors_total",
            &["upstream=\"a\"", "kind=\"connect\""]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "sluice_upstream_errors_total",
            &["upstream=\"b\"", "kind=\"reset\""]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "sluice_requests_total",
            &["model=\"m\"", "status=\"200\"", "outcome=\"ok\""]
        ),
        1.0
    );
}

#[test]
fn connect_and_head_timeouts_fail_over_and_retry_on_is_honoured() {
    let hole = blackhole();
    let (b, c) = (Upstream::start("b"), Upstream::start("c"));
    b.set(Mode::Hang);
    let cfg = |retry_on: &str| {
        format!(
            r#"[[upstreams]]
name = "a"
url = "http://127.0.0.1:{hole}"
connect_timeout_ms = 300
{ups}
[[models]]
name = "m"
targets = [{{ upstream = "a" }}, {{ upstream = "b", priority = 2 }}, {{ upstream = "c", priority = 3 }}]
[routing]
retry_on = {retry_on}
"#,
            hole = hole.port,
            ups = upstreams_toml(&[("b", b.url(), "read_timeout_ms = 400"), ("c", c.url(), ""),]),
        )
    };
    let gw = start(&cfg(r#"["connect", "timeout", "5xx", "429"]"#));
    // Streamed: the whole stream comes from c.
    let resp = send_chat(&gw, &chat_request("m", true));
    assert_eq!(resp.status().as_u16(), 200);
    let (text, _, done) = collect_stream(resp);
    assert!(text.starts_with("from c") && done, "{text}");
    assert_eq!((b.hits(), c.hits()), (1, 1));
    let m = wait_metric(
        &gw,
        "sluice_upstream_attempts_total",
        &["upstream=\"c\"", "result=\"ok\""],
        1.0,
    );
    assert_eq!(
        metric_sum(
            &m,
            "sluice_upstream_attempts_total",
            &["upstream=\"a\"", "result=\"timeout\""]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "sluice_upstream_attempts_total",
            &["upstream=\"b\"", "result=\"timeout\""]
        ),
        1.0
    );
    drop(gw);

    // Without `timeout` in retry_on, the first timeout is the answer: 504, nothing else tried.
    let gw = start(&cfg(r#"["connect"]"#));
    let resp = send_chat(&gw, &chat_request("m", false));
    assert_eq!(error_code(resp, 504), "upstream_timeout");
    assert_eq!(c.hits(), 1, "c was not tried");
}

#[test]
fn a_stream_that_dies_after_its_first_bytes_is_never_retried() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    a.set(Mode::DieMidStream(3));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let audit = dir.path().join("audit.jsonl");
    let cfg = format!(
        "{}[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"a\" }}, {{ upstream = \"b\", priority = 2 }}]\n{}",
        upstreams_toml(&[("a", a.url(), ""), ("b", b.url(), "")]),
        audit_section(&audit)
    );
    let gw = start(&cfg);
    let resp = send_with_id(&gw, "dies-1", &chat_request("m", true));
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.text().unwrap_or_default();
    assert!(body.contains("from a") && body.contains(" w2"), "{body}");
    let last = body.trim_end().rsplit("\n\n").next().unwrap_or("");
    assert!(
        last.contains("\"error\""),
        "ends with an error event: {body}"
    );
    assert_eq!(b.hits(), 0, "never retried once bytes reached the client");
    let rec = record_for(&audit, "dies-1");
    assert_eq!(
        (rec["attempts"].clone(), rec["upstream"].clone()),
        (json!(1), json!("a"))
    );
    assert_eq!(rec["outcome"], "upstream_error");
    wait_metric(
        &gw,
        "sluice_upstream_attempts_total",
        &["upstream=\"a\"", "result=\"mid_stream\""],
        1.0,
    );
}

/// A real upstream process, killed while it streams.
#[test]
fn a_mock_process_killed_mid_stream_is_not_retried() {
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "mock",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--chunk-delay-ms",
            "200",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("mock: {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mock never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = Upstream::start("b");
    let cfg = format!(
        "[[upstreams]]\nname = \"proc\"\nurl = \"http://127.0.0.1:{port}\"\n{}[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"proc\", upstream_model = \"echo\" }}, {{ upstream = \"b\", priority = 2 }}]\n",
        upstreams_toml(&[("b", b.url(), "")])
    );
    let gw = start(&cfg);
    let mut body = chat_request("m", true);
    body["messages"][0]["content"] = json!("one two three four five six seven eight nine ten");
    let resp = send_chat(&gw, &body);
    assert_eq!(resp.status().as_u16(), 200);
    let mut events = Events::new(resp);
    let first = events.next_data().unwrap_or_default();
    assert!(first.contains("chat.completion.chunk"), "{first}");
    let _ = child.kill();
    let _ = child.wait();
    let mut last = String::new();
    while let Some(d) = events.next_data() {
        last = d;
    }
    assert!(
        last.contains("\"error\""),
        "the stream ends with an error event: {last}"
    );
    assert_eq!(b.hits(), 0, "not retried after the first byte");
}

#[test]
fn a_large_body_is_replayed_whole() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    a.set(Mode::Reset);
    let cfg = format!(
        "{}[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"a\" }}, {{ upstream = \"b\", priority = 2 }}]\n",
        upstreams_toml(&[("a", a.url(), ""), ("b", b.url(), "")])
    );
    let gw = start(&cfg);
    // Over Pingora's 64 KiB retry buffer: Sluice holds the body and sends it again itself.
    let big: String = (0..60_000).map(|i| format!("{} ", i % 10)).collect();
    let mut body = chat_request("m", false);
    body["messages"][0]["content"] = json!(big);
    let resp = send_chat(&gw, &body);
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(answer_text(&json_of(resp)), "from b");
    let (ab, bb) = (a.bodies(), b.bodies());
    assert_eq!((ab.len(), bb.len()), (1, 1));
    assert!(bb[0].len() > 100_000, "{}", bb[0].len());
    assert_eq!(ab[0], bb[0], "the same bytes both times");
}

#[test]
fn the_client_sees_the_last_attempts_answer() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    a.set(Mode::Status(500, None));
    b.set(Mode::Status(502, None));
    let cfg = |retries: u32| {
        format!(
            "{}[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"a\" }}, {{ upstream = \"b\", priority = 2 }}]\n[routing]\nretries = {retries}\neject_after = 0\n",
            upstreams_toml(&[("a", a.url(), ""), ("b", b.url(), "")])
        )
    };
    let gw = start(&cfg(1));
    let resp = send_chat(&gw, &chat_request("m", false));
    assert_eq!(resp.status().as_u16(), 502);
    // Upstream errors are passed through unchanged.
    assert_eq!(json_of(resp)["error"]["message"], "b says 502");
    drop(gw);
    let gw = start(&cfg(0));
    let resp = send_chat(&gw, &chat_request("m", false));
    assert_eq!(resp.status().as_u16(), 500);
    assert_eq!(json_of(resp)["error"]["message"], "a says 500");
    assert_eq!((a.hits(), b.hits()), (2, 1));
}

#[test]
fn a_retried_request_passes_the_chain_once() {
    const KEY: &str = "sk-sluice-RETRYretryRETRYretryRETRYretryRETRYretr";
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    a.set(Mode::Reset);
    let cfg = format!(
        r#"{ups}
[[models]]
name = "m"
targets = [{{ upstream = "a" }}, {{ upstream = "b", priority = 2 }}]
[routing]
eject_after = 0
{directory}"#,
        ups = upstreams_toml(&[("a", a.url(), ""), ("b", b.url(), "")]),
        directory = Directory::role("r", &["chat"], &["*"])
            .key_with("k", KEY, "rate_limit = { requests_per_minute = 2 }")
            .filters(&["auth", "rate_limit"])
            .toml(),
    );
    let gw = start(&cfg);
    let send = || {
        client()
            .post(url(&gw, "/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&chat_request("m", false))
            .send()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // Two requests of two attempts each fit a limit of two requests: one reservation each.
    for _ in 0..2 {
        let resp = send();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(answer_text(&json_of(resp)), "from b");
    }
    assert_eq!((a.hits(), b.hits()), (2, 2));
    assert_eq!(error_code(send(), 429), "rate_limit_exceeded");
    // The client's key never reached either upstream, on any attempt.
    for body in a.bodies().iter().chain(b.bodies().iter()) {
        assert!(!String::from_utf8_lossy(body).contains(KEY));
    }
}
