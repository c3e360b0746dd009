//! The engine through real sockets: routing, streaming, errors, upstream hygiene, admin.

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use crate::support::*;
use serde_json::json;

const AUTHLESS: &str = "";

#[test]
fn chat_completion_is_proxied_with_the_upstream_model_name() {
    let gw = start(&format!("{MOCK}{AUTHLESS}"));
    let resp = post_chat(&gw, &chat_body("hello big world", false));
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    let v = json_of(resp);
    assert_eq!(v["choices"][0]["message"]["content"], "hello big world");
    // The mock answers with the model it received: the configured rename.
    assert_eq!(v["model"], "echo");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[test]
fn stream_is_forwarded_event_by_event_and_hides_the_usage_chunk() {
    let gw = start(MOCK);
    let resp = post_chat(&gw, &chat_body("one two three four", true));
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let (text, chunks, done) = collect_stream(resp);
    assert_eq!(text, "one two three four");
    assert!(done, "stream ends with [DONE]");
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage chunk unless asked"
    );
    assert_eq!(
        chunks
            .last()
            .and_then(|c| c.pointer("/choices/0/finish_reason")),
        Some(&json!("stop"))
    );

    // Asked for: delivered.
    let mut body = chat_body("one two", true);
    body["stream_options"] = json!({"include_usage": true});
    let (_, chunks, _) = collect_stream(post_chat(&gw, &body));
    let usage: Vec<_> = chunks.iter().filter_map(|c| c.get("usage")).collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["completion_tokens"], 2);
}

#[test]
fn client_holds_the_first_chunk_while_the_upstream_is_still_generating() {
    let gw = start(MOCK);
    // The mock waits a minute between chunks: a gateway that buffered the stream could not
    // deliver anything before the client's 20 s read timeout.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = client
        .post(url(&gw, "/v1/chat/completions"))
        .header("x-mock-chunk-delay-ms", "60000")
        .json(&chat_body("first second third", true))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 200);
    let mut events = Events::new(resp);
    let first = events
        .next_data()
        .unwrap_or_else(|| panic!("no first event"));
    let v: serde_json::Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
    assert!(
        v["choices"][0]["finish_reason"].is_null(),
        "the answer is not finished"
    );
}

#[test]
fn models_are_served_from_the_config() {
    let gw = start(MOCK);
    let v = json_of(
        client()
            .get(url(&gw, "/v1/models"))
            .send()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "mock-echo");
    assert_eq!(v["data"][0]["object"], "model");
    let m = json_of(
        client()
            .get(url(&gw, "/v1/models/mock-echo"))
            .send()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(m["id"], "mock-echo");
    let r = client()
        .get(url(&gw, "/v1/models/nope"))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 404), "model_not_found");
}

#[test]
fn bad_requests_get_contract_errors() {
    let gw = start(MOCK);
    let c = client();
    let send = |body: &str| {
        c.post(url(&gw, "/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(error_code(send("{not json"), 400), "invalid_json");
    assert_eq!(error_code(send("[1,2]"), 400), "invalid_json");
    let invalid_utf8 = c
        .post(url(&gw, "/v1/chat/completions"))
        .body(vec![b'{', 0xff, 0xfe, b'}'])
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(invalid_utf8, 400), "invalid_json");
    assert_eq!(error_code(send(r#"{"messages":[]}"#), 400), "missing_model");
    assert_eq!(
        error_code(send(r#"{"model":"mock-echo"}"#), 400),
        "missing_messages"
    );
    assert_eq!(
        error_code(
            send(r#"{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}"#),
            404
        ),
        "model_not_found"
    );
    let r = c
        .get(url(&gw, "/somewhere"))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 404), "not_found");
}

#[test]
fn oversized_body_is_refused_and_never_forwarded() {
    let tripwire = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    tripwire
        .set_nonblocking(true)
        .unwrap_or_else(|e| panic!("{e}"));
    let port = tripwire.local_addr().map(|a| a.port()).unwrap_or(0);
    let gw = start(&format!(
        "[[upstreams]]\nname = \"trip\"\nurl = \"http://127.0.0.1:{port}\"\n[[models]]\nname = \"m\"\nupstream = \"trip\"\n"
    ));
    // The `[server]` section is generated: lower the limit through a reload.
    let mut cfg = parse(&format!(
        "[server]\nlisten = \"{}\"\nadmin_listen = \"{}\"\nmax_request_body_bytes = 1024\n[[upstreams]]\nname = \"trip\"\nurl = \"http://127.0.0.1:{port}\"\n[[models]]\nname = \"m\"\nupstream = \"trip\"\n",
        gw.listen_addr(),
        gw.admin_addr()
    ));
    cfg.server.max_request_body_bytes = 1024;
    gw.reload_with(cfg).unwrap_or_else(|e| panic!("{e}"));
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(4000)}]});
    let r = client()
        .post(url(&gw, "/v1/chat/completions"))
        .json(&big)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 413), "request_too_large");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        tripwire.accept().is_err(),
        "the upstream must not have been contacted"
    );
}

#[test]
fn upstream_failures_map_to_502_504_and_stream_error_events() {
    let closed = free_port();
    let gw = start(&format!(
        r#"{MOCK}
[[upstreams]]
name = "dead"
url = "http://127.0.0.1:{closed}"
[[upstreams]]
name = "slow"
builtin = "mock"
read_timeout_ms = 300
[[models]]
name = "dead-model"
upstream = "dead"
[[models]]
name = "slow-model"
upstream = "slow"
"#
    ));
    let c = client();
    let mut body = chat_body("x", false);
    body["model"] = json!("dead-model");
    let r = c
        .post(url(&gw, "/v1/chat/completions"))
        .json(&body)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 502), "upstream_unavailable");

    body["model"] = json!("slow-model");
    let r = c
        .post(url(&gw, "/v1/chat/completions"))
        .header("x-mock-latency-ms", "3000")
        .json(&body)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 504), "upstream_timeout");

    // Upstream errors pass through unchanged.
    let r = c
        .post(url(&gw, "/v1/chat/completions"))
        .header("x-mock-status", "503")
        .json(&chat_body("x", false))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(json_of(r)["error"]["type"], "mock_error");

    // Dying mid-stream: the client gets an error event, not a silent truncation.
    let r = c
        .post(url(&gw, "/v1/chat/completions"))
        .header("x-mock-die-after", "3")
        .json(&chat_body("a b c d e f g", true))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);
    let mut raw = Vec::new();
    let _ = r.take(1 << 20).read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains("\"content\":\"a\""),
        "got the first chunks: {text}"
    );
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or("");
    assert!(
        last.starts_with("data: {\"error\""),
        "ends with an error event: {text}"
    );
    assert!(!text.contains("[DONE]"));

    let m = wait_metric_at_least(
        &gw,
        "sluice_upstream_errors_total",
        &["upstream=\"dead\""],
        1.0,
    );
    assert!(
        metric_sum(
            &m,
            "sluice_upstream_errors_total",
            &["upstream=\"slow\"", "kind=\"timeout\""]
        ) >= 1.0
    );
}

#[test]
fn upstream_hygiene() {
    std::env::set_var("SLUICE_TEST_UPSTREAM_KEY", "upstream-secret-1");
    let gw = start(
        r#"
[[upstreams]]
name = "mock"
builtin = "mock"
api_key_env = "SLUICE_TEST_UPSTREAM_KEY"
[[models]]
name = "mock-echo"
upstream = "mock"
"#,
    );
    let r = client()
        .post(url(&gw, "/v1/mock/echo"))
        .header("authorization", "Bearer client-secret")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("x-keep-me", "yes")
        .header("x-request-id", "test-req-42")
        .json(&json!({"model": "mock-echo", "input": "x"}))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("test-req-42")
    );
    let v = json_of(r);
    let h = &v["headers"];
    assert_eq!(h["authorization"], "Bearer upstream-secret-1");
    for gone in ["proxy-authorization", "x-drop-me", "keep-alive", "te"] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["x-keep-me"], "yes");
    assert_eq!(h["x-request-id"], "test-req-42");
    assert!(!v.to_string().contains("client-secret"));
}

#[test]
fn client_key_is_removed_when_the_upstream_has_none() {
    let gw = start(MOCK);
    let v = json_of(
        client()
            .get(url(&gw, "/v1/mock/echo"))
            .header("authorization", "Bearer client-secret")
            .send()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert!(v["headers"].get("authorization").is_none(), "{v}");
    let id = v["headers"]["x-request-id"].as_str().unwrap_or_default();
    assert!(id.starts_with("req_"), "a request id is created: {id}");
}

#[test]
fn admin_routes_are_only_on_the_admin_listener() {
    let gw = start(MOCK);
    let _ = post_chat(&gw, &chat_body("warm up", true)).text();
    let _ = post_chat(&gw, &chat_body("warm up", false)).text();
    let c = client();
    for p in ["/healthz", "/readyz", "/metrics"] {
        let admin = c
            .get(admin_url(&gw, p))
            .send()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(admin.status().as_u16(), 200, "{p}");
        let public = c.get(url(&gw, p)).send().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(public.status().as_u16(), 404, "{p} must not be public");
    }
    let m = wait_metric(
        &gw,
        "sluice_requests_total",
        &["route=\"chat_completions\"", "outcome=\"ok\""],
        2.0,
    );
    for name in [
        "sluice_requests_total",
        "sluice_request_duration_seconds",
        "sluice_upstream_duration_seconds",
        "sluice_overhead_seconds",
        "sluice_time_to_first_token_seconds",
        "sluice_active_streams",
        "sluice_tokens_total",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metric_sum(
            &m,
            "sluice_requests_total",
            &["route=\"chat_completions\"", "outcome=\"ok\""]
        ) >= 2.0
    );
    assert!(metric_sum(&m, "sluice_overhead_seconds_count", &[]) >= 2.0);
    assert_eq!(metric_sum(&m, "sluice_active_streams", &[]), 0.0);
}

/// `sluice_overhead_seconds` is the time Sluice adds, not the time the upstream takes: a slow
/// answer and a slow stream are in the request duration but not in the overhead.
#[test]
fn overhead_excludes_the_upstreams_time() {
    let gw = start(MOCK);
    let c = client();
    let slow = |header: &str, ms: &str, text: &str, stream: bool| {
        let r = c
            .post(url(&gw, "/v1/chat/completions"))
            .bearer_auth(DEMO_KEY)
            .header(header, ms)
            .json(&chat_body(text, stream))
            .send()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status().as_u16(), 200);
        r.text().unwrap_or_default()
    };
    slow("x-mock-latency-ms", "600", "a slow answer", false);
    let streamed = slow("x-mock-chunk-delay-ms", "200", "a slow stream", true);
    assert!(streamed.contains("[DONE]"));
    let m = wait_metric(&gw, "sluice_overhead_seconds_count", &[], 2.0);
    assert_eq!(metric_sum(&m, "sluice_overhead_seconds_count", &[]), 2.0);
    // 0.6 s of answer and 1 s of stream (5 gaps of 0.2 s) went by while Sluice waited.
    let total = metric_sum(&m, "sluice_request_duration_seconds_sum", &[]);
    let overhead = metric_sum(&m, "sluice_overhead_seconds_sum", &[]);
    assert!(total >= 1.2, "request durations: {total}");
    assert!(overhead > 0.0, "some overhead is measured");
    assert!(
        overhead < 0.3,
        "the upstream's time is not overhead: {overhead} s of {total} s"
    );
}

#[test]
fn reload_swaps_valid_configs_and_keeps_the_old_one_on_errors() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("sluice.toml");
    let base = format!("{}{}", server_section(), MOCK);
    std::fs::write(&path, &base).unwrap_or_else(|e| panic!("{e}"));
    let gw = sluice::GatewayBuilder::new()
        .config_file(&path)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let ids = |gw: &sluice::Gateway| -> Vec<String> {
        let v = json_of(
            client()
                .get(url(gw, "/v1/models"))
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
    };
    assert_eq!(ids(&gw), vec!["mock-echo"]);
    std::fs::write(
        &path,
        format!("{base}\n[[models]]\nname = \"second\"\nupstream = \"mock\"\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = client()
        .post(admin_url(&gw, "/admin/reload"))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(ids(&gw), vec!["mock-echo", "second"]);
    std::fs::write(
        &path,
        format!("{base}\n[[models]]\nname = \"third\"\nupstream = \"nowhere\"\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = client()
        .post(admin_url(&gw, "/admin/reload"))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 400);
    let v = json_of(r);
    assert!(v.to_string().contains("models[1].upstream"), "{v}");
    assert_eq!(
        ids(&gw),
        vec!["mock-echo", "second"],
        "the last valid config stays"
    );
}
