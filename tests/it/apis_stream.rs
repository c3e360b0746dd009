//! DLP on the streams of every governed API, through a real gateway and a scripted upstream:
//! a secret split between two deltas at every offset never reaches the client, for every delta
//! kind (chat content and tool-call arguments, completions text, Responses output text,
//! function-call arguments and reasoning summaries, Anthropic text, input JSON and thinking);
//! the events that repeat the whole text carry the redacted text; a block ends each API's
//! stream its own way.

use crate::support::scripted::{read_stream, scripted_upstream, Kind};
use crate::support::*;
use serde_json::Value;

const AWS: &str = "AKIAIOSFODNN7EXAMPLE";
const REDACTED: &str = "[REDACTED:aws_access_key]";

fn config(port: u16, response_action: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "raw"
url = "http://127.0.0.1:{port}"
[[upstreams]]
name = "raw-anthropic"
url = "http://127.0.0.1:{port}"
api = "anthropic"
[[models]]
name = "raw-model"
upstream = "raw"
[[models]]
name = "raw-claude"
upstream = "raw-anthropic"

[dlp]
request_action = "monitor"
response_action = "{response_action}"

[[filters]]
type = "dlp"
"#
    )
}

fn model(kind: Kind) -> &'static str {
    if kind.path() == "/v1/messages" {
        "raw-claude"
    } else {
        "raw-model"
    }
}

/// Streams `deltas` through the gateway as `kind`; returns the raw body the client read.
fn stream(gw: &sluice::Gateway, kind: Kind, deltas: &[&str], cuts: &[usize]) -> String {
    let cuts: Vec<String> = cuts.iter().map(|c| c.to_string()).collect();
    let r = client()
        .post(url(gw, kind.path()))
        .header("x-kind", kind.name())
        .header(
            "x-deltas",
            serde_json::to_string(deltas).unwrap_or_default(),
        )
        .header("x-cuts", cuts.join(","))
        .json(&kind.request(model(kind)))
        .send()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200, "{kind:?}");
    r.text().unwrap_or_default()
}

/// The texts of the events that repeat the whole answer (Responses' `*.done`, the completed
/// response's output), which must carry the text the deltas spelled.
fn repeated_texts(events: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for ev in events {
        let t = ev["type"].as_str().unwrap_or("");
        for ptr in [
            "/text",
            "/arguments",
            "/item/content/0/text",
            "/item/arguments",
        ] {
            if t.ends_with(".done") {
                if let Some(s) = ev.pointer(ptr).and_then(Value::as_str) {
                    out.push(s.to_string());
                }
            }
        }
        if t == "response.completed" {
            for ptr in [
                "/response/output/0/content/0/text",
                "/response/output/0/arguments",
                "/response/output/0/summary/0/text",
            ] {
                if let Some(s) = ev.pointer(ptr).and_then(Value::as_str) {
                    out.push(s.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn a_secret_split_at_every_offset_never_reaches_the_client_in_any_api() {
    let gw = start(&config(scripted_upstream(), "redact"));
    let full = format!("prefix {AWS} suffix");
    let expected = format!("prefix {REDACTED} suffix");
    let from = "prefix ".len();
    for kind in Kind::ALL {
        for cut in from..=from + AWS.len() {
            let (a, b) = full.split_at(cut);
            let body = stream(&gw, kind, &[a, b], &[]);
            let (text, events, ended) = read_stream(kind, &body);
            assert!(ended, "{kind:?} split at {cut}: the stream ends: {body}");
            assert_eq!(text, expected, "{kind:?} split at {cut}");
            assert!(
                !body.contains("IOSFODNN7"),
                "{kind:?} split at {cut}: a piece of the secret reached the client: {body}"
            );
            for t in repeated_texts(&events) {
                assert_eq!(t, expected, "{kind:?} split at {cut}: a repeated text");
            }
        }
    }
}

#[test]
fn three_pieces_one_byte_deltas_and_split_sse_bytes() {
    let gw = start(&config(scripted_upstream(), "redact"));
    let text = format!("key {AWS} and mail jane.doe@example.com ok");
    let expected = format!("key {REDACTED} and mail [REDACTED:email] ok");
    let bytes: Vec<String> = text.chars().map(|c| c.to_string()).collect();
    let ones: Vec<&str> = bytes.iter().map(String::as_str).collect();
    for kind in Kind::ALL {
        let (got, _, _) = read_stream(kind, &stream(&gw, kind, &ones, &[]));
        assert_eq!(got, expected, "{kind:?}, one-character deltas");
        let pieces = [&text[..10], &text[10..30], &text[30..]];
        let cuts: Vec<usize> = (1..40).map(|i| i * 37).collect();
        let (got, _, _) = read_stream(kind, &stream(&gw, kind, &pieces, &cuts));
        assert_eq!(got, expected, "{kind:?}, SSE bytes cut in pieces");
    }
}

#[test]
fn a_block_ends_each_api_its_own_way() {
    let gw = start(&config(scripted_upstream(), "block"));
    let a = format!("before {}", &AWS[..8]);
    let b = format!("{} after", &AWS[8..]);
    for kind in Kind::ALL {
        let body = stream(&gw, kind, &[&a, &b, " more text"], &[]);
        let (text, events, _) = read_stream(kind, &body);
        assert!(!body.contains("IOSFODNN7"), "{kind:?}: {body}");
        assert!(
            !body.contains("more text"),
            "{kind:?}: text after the block: {body}"
        );
        assert_eq!(
            text, "before ",
            "{kind:?}: the text before the match is released"
        );
        let last = events.last().cloned().unwrap_or(Value::Null);
        match kind.path() {
            "/v1/chat/completions" | "/v1/completions" => {
                let finishes: Vec<&Value> = events
                    .iter()
                    .filter_map(|e| e.pointer("/choices/0/finish_reason"))
                    .filter(|f| !f.is_null())
                    .collect();
                assert_eq!(
                    finishes,
                    [&Value::from("content_filter")],
                    "{kind:?}: {body}"
                );
                assert!(body.ends_with("data: [DONE]\n\n"), "{kind:?}");
            }
            "/v1/responses" => {
                assert_eq!(last["type"], "response.incomplete", "{kind:?}: {body}");
                assert_eq!(
                    last["response"]["incomplete_details"]["reason"],
                    "content_filter"
                );
                assert!(
                    !events.iter().any(|e| e["type"] == "response.completed"),
                    "{kind:?}"
                );
            }
            _ => {
                assert_eq!(last["type"], "message_stop", "{kind:?}: {body}");
                let stop = events
                    .iter()
                    .rev()
                    .find(|e| e["type"] == "message_delta")
                    .cloned()
                    .unwrap_or(Value::Null);
                assert_eq!(stop["delta"]["stop_reason"], "refusal", "{kind:?}: {body}");
                let stops = events
                    .iter()
                    .filter(|e| e["type"] == "message_stop")
                    .count();
                assert_eq!(stops, 1, "{kind:?}: one message_stop");
                assert!(body.contains("event: message_stop\n"), "named events");
            }
        }
    }
}
