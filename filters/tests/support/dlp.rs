//! Helpers shared by the DLP tests: a filter, a context, an SSE
//! framer standing in for the engine's, and a client's view of a stream.
#![allow(dead_code)]

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use sluice_filters::dlp::{DlpFilter, DlpSettings};
use sluice_filters::{Cx, Filter, JsonBody, Shared, StreamEvent};

pub fn shared() -> Shared {
    Shared::new(prometheus::Registry::new())
}

pub fn filter_with(settings: &DlpSettings) -> DlpFilter {
    DlpFilter::new(settings, &shared()).expect("dlp filter builds")
}

pub fn filter() -> DlpFilter {
    filter_with(&DlpSettings::default())
}

/// A chat completions request's context.
pub fn cx() -> Cx {
    let mut cx = Cx::new("req-1".into(), Method::POST, "/v1/chat/completions".into());
    cx.api = &sluice_filters::api::CHAT;
    cx
}

/// A chat completion chunk with one choice.
pub fn chunk(index: u64, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764300000,
        "model": "echo",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}]
    })
}

/// An upstream stream answering `pieces` as content deltas of choice 0.
pub fn content_stream(pieces: &[&str]) -> Vec<Value> {
    let mut evs = vec![chunk(0, json!({"role": "assistant", "content": ""}), None)];
    for p in pieces {
        evs.push(chunk(0, json!({ "content": p }), None));
    }
    evs.push(chunk(0, json!({}), Some("stop")));
    evs
}

/// The SSE bytes of events, `[DONE]` included.
pub fn sse(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(e.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

/// Splits SSE bytes into events as they arrive, like the engine's framer.
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<StreamEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(p) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = self.buf.drain(..p + 2).collect();
            let data: Vec<&[u8]> = raw
                .split(|&b| b == b'\n')
                .filter_map(|l| l.strip_prefix(b"data:"))
                .map(|d| d.strip_prefix(b" ").unwrap_or(d))
                .collect();
            let joined = data.join(&b'\n');
            let has = !data.is_empty();
            out.push(StreamEvent::received(
                Bytes::from(raw),
                has.then_some(joined.as_slice()),
            ));
        }
        out
    }
}

/// Feeds `reads` (the upstream's bytes as they arrive) through the filter; returns the bytes
/// the client receives. `end_alone`: the engine signals the end with an empty batch rather than
/// with the last read.
pub fn run_reads(f: &dyn Filter, cx: &mut Cx, reads: &[&[u8]], end_alone: bool) -> Vec<u8> {
    let mut framer = Framer::default();
    let mut out = Vec::new();
    for (i, r) in reads.iter().enumerate() {
        let last = i + 1 == reads.len();
        let mut evs = framer.push(r);
        f.on_stream_events(&mut evs, last && !end_alone, cx);
        for e in &evs {
            out.extend_from_slice(&e.to_bytes());
        }
    }
    if end_alone || reads.is_empty() {
        let mut evs = Vec::new();
        f.on_stream_events(&mut evs, true, cx);
        for e in &evs {
            out.extend_from_slice(&e.to_bytes());
        }
    }
    out
}

/// Streams `events` through the filter in one read per event.
pub fn run_events(f: &dyn Filter, cx: &mut Cx, events: &[Value]) -> Vec<u8> {
    let bytes = sse(events);
    let mut reads: Vec<&[u8]> = Vec::new();
    let mut rest = bytes.as_slice();
    while let Some(p) = rest.windows(2).position(|w| w == b"\n\n") {
        reads.push(&rest[..p + 2]);
        rest = &rest[p + 2..];
    }
    run_reads(f, cx, &reads, false)
}

/// What a client makes of a stream.
#[derive(Debug, Default)]
pub struct ClientView {
    pub content: Vec<String>,
    pub finish: Vec<Option<String>>,
    pub tool_args: Vec<String>,
    pub done: bool,
    pub usage: bool,
    pub errors: Vec<Value>,
    /// Events after a choice's finish_reason, for that choice.
    pub after_finish: usize,
}

pub fn client_view(bytes: &[u8]) -> ClientView {
    let text = std::str::from_utf8(bytes).expect("the client receives UTF-8");
    let mut v = ClientView::default();
    for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = ev
            .strip_prefix("data: ")
            .expect("every event is a data event");
        if data == "[DONE]" {
            v.done = true;
            continue;
        }
        let j: Value = serde_json::from_str(data).expect("every data event is JSON");
        if j.get("error").is_some() {
            v.errors.push(j);
            continue;
        }
        if j.get("usage").is_some_and(|u| !u.is_null()) {
            v.usage = true;
        }
        for c in j["choices"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap_or(0) as usize;
            if v.content.len() <= i {
                v.content.resize(i + 1, String::new());
                v.finish.resize(i + 1, None);
                v.tool_args.resize(i + 1, String::new());
            }
            if v.finish[i].is_some() {
                v.after_finish += 1;
            }
            if let Some(s) = c["delta"]["content"].as_str() {
                v.content[i].push_str(s);
            }
            for tc in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                if let Some(a) = tc["function"]["arguments"].as_str() {
                    v.tool_args[i].push_str(a);
                }
            }
            if let Some(f) = c["finish_reason"].as_str() {
                v.finish[i] = Some(f.to_string());
            }
        }
    }
    v
}

/// The non-streamed answer with `content`, through the filter: (content, finish_reason).
pub fn non_streamed(f: &dyn Filter, content: &str) -> (String, String) {
    let v = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1764300000, "model": "echo",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    });
    let mut body = JsonBody::parsed(Bytes::from(v.to_string()), v);
    let mut c = cx();
    f.on_response_body(&mut body, &mut c);
    let out: Value = serde_json::from_slice(&body.to_bytes()).expect("valid JSON");
    (
        out["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        out["choices"][0]["finish_reason"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Char-boundary offsets of a string.
pub fn boundaries(s: &str) -> Vec<usize> {
    (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect()
}

/// Deterministic pseudo-random numbers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Splits a text into pieces of 1..=max chars, like a tokenizer's deltas.
pub fn pieces(s: &str, max: usize, rng: &mut Rng) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let n = 1 + rng.below(max);
        let j = (i + n).min(chars.len());
        out.push(chars[i..j].iter().collect());
        i = j;
    }
    out
}
