//! DLP through a real gateway: requests blocked or rewritten, answers redacted whole and as
//! streams — with the secret split between deltas at every offset and the SSE bytes split at
//! arbitrary points by a raw upstream — findings in metrics and the audit trail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

use crate::support::scripted::write_cut;
use crate::support::*;
use serde_json::{json, Value};

const AWS: &str = "AKIAIOSFODNN7EXAMPLE";

fn dlp(request_action: &str, response_action: &str, raw_port: u16) -> String {
    format!(
        r#"{MOCK}
[[upstreams]]
name = "raw"
url = "http://127.0.0.1:{raw_port}"
[[models]]
name = "raw-model"
upstream = "raw"

[[agents]]
id = "echo-agent"
model = "mock-echo"
instructions = "Repeat."

[dlp]
packs = ["secrets", "pii"]
request_action = "{request_action}"
response_action = "{response_action}"
[[dlp.rules]]
name = "codenames"
keywords = ["BLUEBIRD"]
action = "block"
[[dlp.rules]]
name = "employee_id"
regex = 'EMP-[0-9]{{6}}'
action = "redact"

[[filters]]
type = "dlp"
"#
    )
}

/// A raw upstream: answers every request with an SSE stream of chat chunks whose deltas come
/// from the `x-deltas` header (a JSON array), writing the bytes in pieces cut at the offsets of
/// `x-cuts` (comma-separated), each piece flushed on its own.
fn raw_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_raw(stream));
        }
    });
    port
}

fn serve_raw(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut deltas: Vec<String> = Vec::new();
    let mut cuts: Vec<usize> = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-deltas:") {
            deltas = serde_json::from_str(l["x-deltas:".len()..].trim()).unwrap_or_default();
        }
        if let Some(v) = lower.strip_prefix("x-cuts:") {
            cuts = v.split(',').filter_map(|c| c.trim().parse().ok()).collect();
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let mut sse = String::new();
    for d in &deltas {
        let ev = json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "raw",
                        "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": null}]});
        sse.push_str(&format!("data: {ev}\n\n"));
    }
    let fin = json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "raw",
                     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    sse.push_str(&format!("data: {fin}\n\ndata: [DONE]\n\n"));
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    write_cut(&mut stream, sse.as_bytes(), &cuts);
}

fn stream_raw(gw: &sluice::Gateway, deltas: &[&str], cuts: &[usize]) -> (String, Vec<Value>) {
    let cuts: Vec<String> = cuts.iter().map(|c| c.to_string()).collect();
    let r = client()
        .post(url(gw, "/v1/chat/completions"))
        .header("x-deltas", serde_json::to_string(deltas).unwrap_or_default())
        .header("x-cuts", cuts.join(","))
        .json(&json!({"model": "raw-model", "stream": true, "messages": [{"role": "user", "content": "go"}]}))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);
    let (text, chunks, done) = collect_stream(r);
    assert!(done, "stream completes");
    (text, chunks)
}

fn echo(gw: &sluice::Gateway, text: &str, stream: bool) -> reqwest::blocking::Response {
    post_chat(gw, &chat_body(text, stream))
}

#[test]
fn prompts_with_secrets_are_blocked_and_the_message_names_only_detectors() {
    let gw = start(&dlp("block", "redact", free_port()));
    for text in [
        format!("my key is {AWS} thanks"),
        "card 4111 1111 1111 1111 please".to_string(),
        "project BLUEBIRD launches".to_string(),
    ] {
        let r = echo(&gw, &text, false);
        assert_eq!(r.status().as_u16(), 400);
        let v = json_of(r);
        assert_eq!(v["error"]["code"], "dlp_blocked");
        assert_eq!(v["error"]["type"], "dlp_violation");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !msg.contains(AWS) && !msg.contains("4111") && !msg.contains("BLUEBIRD"),
            "{msg}"
        );
    }
    // A JSON escape hides nothing: the body is scanned as decoded strings.
    let r = client()
        .post(url(&gw, "/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"mock-echo","messages":[{"role":"user","content":"key \u0041KIAIOSFODNN7EXAMPLE"}]}"#)
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(error_code(r, 400), "dlp_blocked");
    // Clean text passes.
    let r = echo(
        &gw,
        "version 1.2.3 of uuid 123e4567-e89b-12d3-a456-426614174000 costs $4.99",
        false,
    );
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn redacted_prompts_reach_the_upstream_as_valid_json() {
    let gw = start(&dlp("redact", "monitor", free_port()));
    let r = client()
        .post(url(&gw, "/v1/mock/echo"))
        .json(&json!({"model": "mock-echo", "messages": [
            {"role": "system", "content": "id EMP-123456"},
            {"role": "user", "content": [{"type": "text", "text": format!("key {AWS}")}]}
        ], "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    let v = json_of(r);
    let body: Value = serde_json::from_str(v["body"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["messages"][0]["content"], "id [REDACTED:employee_id]");
    assert_eq!(
        body["messages"][1]["content"][0]["text"],
        "key [REDACTED:aws_access_key]"
    );
    assert_eq!(body["tools"][0]["function"]["name"], "f");
}

#[test]
fn answers_are_redacted_whole_and_streamed_alike() {
    let gw = start(&dlp("monitor", "redact", free_port()));
    let text = format!("alpha {AWS} beta mail bob@example.com end");
    let whole = json_of(echo(&gw, &text, false));
    let redacted = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        redacted,
        "alpha [REDACTED:aws_access_key] beta mail [REDACTED:email] end"
    );
    let (streamed, _, done) = collect_stream(echo(&gw, &text, true));
    assert!(done);
    assert_eq!(streamed, redacted);
    // Agent streams go through the same scanning.
    let r = client()
        .post(url(&gw, "/v1/agents/echo-agent/run"))
        .json(&json!({"input": text, "stream": true}))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    let (agent_text, _, _) = collect_stream(r);
    assert_eq!(agent_text, redacted);
}

#[test]
fn a_secret_split_between_deltas_at_every_offset_never_reaches_the_client() {
    let port = raw_upstream();
    let gw = start(&dlp("monitor", "redact", port));
    let full = format!("prefix {AWS} suffix");
    let expected = "prefix [REDACTED:aws_access_key] suffix";
    let start_at = "prefix ".len();
    for cut in start_at..=start_at + AWS.len() {
        let (a, b) = full.split_at(cut);
        let (text, _) = stream_raw(&gw, &[a, b], &[]);
        assert_eq!(text, expected, "split at {cut}");
        assert!(
            !text.contains("AKIA") && !text.contains("EXAMPLE"),
            "split at {cut}: {text}"
        );
    }
    // Three pieces, and a card number split across digits.
    let (text, _) = stream_raw(&gw, &["pay 4111 11", "11 1111 ", "1111 now"], &[]);
    assert_eq!(text, "pay [REDACTED:credit_card] now");
}

#[test]
fn sse_bytes_split_at_arbitrary_points_change_nothing() {
    let port = raw_upstream();
    let gw = start(&dlp("monitor", "redact", port));
    let deltas = ["alpha ", "AKIAIOSF", "ODNN7EXAMPLE", " omega"];
    let expected = "alpha [REDACTED:aws_access_key] omega";
    // The SSE body is ~4 events of ~150 bytes: cut it everywhere in steps, and in pairs.
    for c in (1..700).step_by(7) {
        let (text, _) = stream_raw(&gw, &deltas, &[c]);
        assert_eq!(text, expected, "cut at {c}");
    }
    for (a, b) in [(5, 6), (150, 151), (149, 300), (1, 2), (200, 205)] {
        let (text, _) = stream_raw(&gw, &deltas, &[a, b]);
        assert_eq!(text, expected, "cuts at {a},{b}");
    }
}

#[test]
fn a_blocked_answer_ends_with_content_filter() {
    let port = raw_upstream();
    let gw = start(&dlp("monitor", "block", port));
    let (text, chunks) = stream_raw(
        &gw,
        &["safe start ", "then AKIAIOSFODNN7EX", "AMPLE and more"],
        &[],
    );
    assert!(!text.contains("AKIA"), "{text}");
    assert!(text.starts_with("safe start"), "{text}");
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(
        finish.first().copied(),
        Some(&json!("content_filter")),
        "{chunks:?}"
    );
    let whole = json_of(echo(&gw, "leak AKIAIOSFODNN7EXAMPLE now", false));
    assert_eq!(whole["choices"][0]["finish_reason"], "content_filter");
    assert!(!whole.to_string().contains("AKIA"));
}

#[test]
fn findings_are_counted_without_values() {
    let gw = start(&dlp("block", "redact", free_port()));
    let _ = echo(&gw, &format!("k {AWS}"), false).text();
    let m = wait_metric_at_least(
        &gw,
        "sluice_requests_total",
        &["outcome=\"dlp_blocked\""],
        1.0,
    );
    assert!(
        metric_sum(
            &m,
            "sluice_dlp_findings_total",
            &[
                "detector=\"aws_access_key\"",
                "direction=\"request\"",
                "action=\"block\""
            ]
        ) >= 1.0,
        "{m}"
    );
    assert!(!m.contains(AWS));
}

#[test]
fn unscannable_bodies_are_not_forwarded() {
    // A body over dlp.max_scan_bytes is refused, never forwarded unscanned.
    let cfg =
        dlp("block", "redact", free_port()).replace("[dlp]\n", "[dlp]\nmax_scan_bytes = 1024\n");
    let gw = start(&cfg);
    let r = echo(&gw, &"word ".repeat(1000), false);
    assert!(
        r.status().is_client_error() || r.status().is_server_error(),
        "{}",
        r.status()
    );
    let _ = r.text();
    let r = echo(&gw, "short and clean", false);
    assert_eq!(r.status().as_u16(), 200);
    let _ = r.text();
}
