//! DLP on a streamed chat completion: upstream bytes cut into arbitrary reads, framed by the
//! SSE framer, scanned by the DLP filter as they flow.
//!
//! Input: see [`split`]; the corpus holds answers with secrets split across deltas.
//!
//! Checks the contract of SPEC §4: whatever the text and however it is cut into deltas and
//! reads, the concatenated deltas a client receives equal the redacted full text
//! (`Scanner::apply`), so a secret split across chunks is caught and nothing else changes.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sluice::filters::dlp::Action;
use sluice::filters::{Cx, Filter, StreamEvent};
use sluice::sse::SseFramer;
use sluice_fuzz::redacting_dlp;

/// The first byte sets the size of the upstream's reads; the rest, UTF-8, is the answer's text
/// with `|` between its deltas.
fn split(data: &[u8]) -> Option<(usize, Vec<String>)> {
    let (&read, text) = data.split_first()?;
    let text = std::str::from_utf8(text).ok()?;
    Some((
        usize::from(read) + 1,
        text.split('|').map(str::to_string).collect(),
    ))
}

fn upstream_bytes(deltas: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut event = |v: Value| out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
    for d in deltas {
        event(json!({"id": "c1", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": null}]}));
    }
    event(json!({"id": "c1", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

/// Runs the stream through framer and filter as the engine does; returns what the client gets.
fn through_dlp(bytes: &[u8], read: usize) -> Vec<u8> {
    let mut framer = SseFramer::new(1 << 20);
    let mut cx = Cx::new(
        "req_fuzz".into(),
        Method::POST,
        "/v1/chat/completions".into(),
    );
    cx.stream = true;
    cx.api = &sluice::filters::api::CHAT;
    let mut sent = Vec::new();
    let mut deliver = |raw: Vec<sluice::sse::RawEvent>, end: bool, cx: &mut Cx| {
        let mut events: Vec<StreamEvent> = raw
            .into_iter()
            .map(|e| StreamEvent::lazy(e.raw, e.data))
            .collect();
        redacting_dlp().on_stream_events(&mut events, end, cx);
        for e in &events {
            sent.extend_from_slice(&e.to_bytes());
        }
    };
    let mut rest = bytes;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(read.min(rest.len()));
        rest = later;
        let mut raw = Vec::new();
        if framer.push(now, &mut raw).is_err() {
            return sent;
        }
        deliver(raw, false, &mut cx);
    }
    let mut raw = Vec::new();
    framer.finish(&mut raw);
    deliver(raw, true, &mut cx);
    sent
}

/// The concatenated `delta.content` of choice 0, and whether the stream still ends with [DONE].
fn client_text(sent: &[u8]) -> (String, bool) {
    let mut framer = SseFramer::new(usize::MAX);
    let mut events = Vec::new();
    let _ = framer.push(sent, &mut events);
    framer.finish(&mut events);
    let mut text = String::new();
    let mut done = false;
    for e in events {
        let Some(data) = e.data else { continue };
        if &data[..] == b"[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_slice(&data).unwrap_or_else(|err| {
            panic!(
                "the client got an event that is not JSON ({err}): {:?}",
                data
            )
        });
        if let Some(c) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            text.push_str(c);
        }
    }
    (text, done)
}

fuzz_target!(|data: &[u8]| {
    let Some((read, deltas)) = split(data) else {
        return;
    };
    let full: String = deltas.concat();
    let sent = through_dlp(&upstream_bytes(&deltas), read);
    let (got, done) = client_text(&sent);
    assert!(done, "the stream ends with [DONE]");
    let want = redacting_dlp().scanner().apply(&full, Action::Redact);
    assert_eq!(
        got, want,
        "the client's text is not the redacted full text of {full:?}"
    );
});
