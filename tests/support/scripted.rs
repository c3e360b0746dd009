//! A scripted upstream on a raw socket: it answers each request with a stream in one API's
//! shape whose text deltas the request chose, so a test controls exactly where a secret is
//! split. Headers: `x-kind` (the API and delta kind, see [`Kind`]), `x-deltas` (a JSON array of
//! strings), `x-cuts` (byte offsets where the written bytes are split, each piece flushed on its
//! own). Without `x-kind` it answers `x-body` (a JSON value) as `application/json`, `x-text` as
//! `text/plain`, or echoes
//! what it received (`/echo`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

/// The delta kinds a scripted stream can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ChatContent,
    ChatToolArgs,
    Completions,
    ResponsesText,
    ResponsesArgs,
    ResponsesSummary,
    MessagesText,
    MessagesJson,
    MessagesThinking,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::ChatContent,
        Kind::ChatToolArgs,
        Kind::Completions,
        Kind::ResponsesText,
        Kind::ResponsesArgs,
        Kind::ResponsesSummary,
        Kind::MessagesText,
        Kind::MessagesJson,
        Kind::MessagesThinking,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::ChatContent => "chat-content",
            Kind::ChatToolArgs => "chat-tool-args",
            Kind::Completions => "completions",
            Kind::ResponsesText => "responses-text",
            Kind::ResponsesArgs => "responses-args",
            Kind::ResponsesSummary => "responses-summary",
            Kind::MessagesText => "messages-text",
            Kind::MessagesJson => "messages-json",
            Kind::MessagesThinking => "messages-thinking",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The route a client calls for this kind.
    pub fn path(self) -> &'static str {
        match self {
            Kind::ChatContent | Kind::ChatToolArgs => "/v1/chat/completions",
            Kind::Completions => "/v1/completions",
            Kind::ResponsesText | Kind::ResponsesArgs | Kind::ResponsesSummary => "/v1/responses",
            Kind::MessagesText | Kind::MessagesJson | Kind::MessagesThinking => "/v1/messages",
        }
    }

    /// A streamed request body for this kind's route.
    pub fn request(self, model: &str) -> Value {
        match self {
            Kind::ChatContent | Kind::ChatToolArgs => {
                json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "go"}]})
            }
            Kind::Completions => json!({"model": model, "stream": true, "prompt": "go"}),
            Kind::ResponsesText | Kind::ResponsesArgs | Kind::ResponsesSummary => {
                json!({"model": model, "stream": true, "input": "go"})
            }
            _ => json!({"model": model, "stream": true, "max_tokens": 64,
                        "messages": [{"role": "user", "content": "go"}]}),
        }
    }
}

/// Starts the upstream; returns its port.
pub fn scripted_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    port
}

fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let (mut kind, mut deltas, mut cuts, mut body_json) = (None, Vec::new(), Vec::new(), None);
    let mut length = 0usize;
    let mut head_lines = Vec::new();
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end().to_string();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').unwrap_or((&l, ""));
        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_string());
        match name.as_str() {
            "content-length" => length = value.parse().unwrap_or(0),
            "x-kind" => kind = Kind::parse(&value),
            "x-deltas" => deltas = serde_json::from_str(&value).unwrap_or_default(),
            "x-cuts" => cuts = value.split(',').filter_map(|c| c.parse().ok()).collect(),
            "x-body" => body_json = serde_json::from_str::<Value>(&value).ok(),
            "x-text" => body_json = Some(Value::String(value.clone())),
            _ => {}
        }
        head_lines.push(json!([name, value]));
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let (ctype, payload) = match (kind, body_json) {
        (Some(k), _) => ("text/event-stream", sse(k, &deltas)),
        (None, Some(Value::String(t))) => ("text/plain", t),
        (None, Some(v)) => ("application/json", v.to_string()),
        (None, None) => {
            let seen = json!({"request_line": request_line.trim_end(), "headers": head_lines,
                              "body": String::from_utf8_lossy(&body)});
            ("application/json", seen.to_string())
        }
    };
    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\nconnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    write_cut(&mut stream, payload.as_bytes(), &cuts);
}

/// Writes `bytes` in pieces split at the offsets `cuts` (each flushed, 3 ms apart), as an
/// upstream whose events arrive in several TCP reads.
pub fn write_cut(stream: &mut impl Write, bytes: &[u8], cuts: &[usize]) {
    let mut at = 0;
    for &c in cuts.iter().filter(|&&c| c > 0 && c < bytes.len()) {
        if c <= at {
            continue;
        }
        let _ = stream.write_all(&bytes[at..c]);
        let _ = stream.flush();
        std::thread::sleep(Duration::from_millis(3));
        at = c;
    }
    let _ = stream.write_all(&bytes[at..]);
    let _ = stream.flush();
}

fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn named(v: &Value) -> String {
    format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or(""))
}

/// The whole text the deltas spell.
fn joined(deltas: &[String]) -> String {
    deltas.concat()
}

/// The stream of `kind` carrying `deltas`, in the API's own event sequence.
pub fn sse(kind: Kind, deltas: &[String]) -> String {
    let mut out = String::new();
    match kind {
        Kind::ChatContent | Kind::ChatToolArgs => {
            let chunk = |delta: Value, finish: Value| {
                data(
                    &json!({"id": "c", "object": "chat.completion.chunk", "created": 0,
                             "model": "raw", "choices": [{"index": 0, "delta": delta,
                             "finish_reason": finish}]}),
                )
            };
            if kind == Kind::ChatToolArgs {
                out += &chunk(
                    json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1",
                        "type": "function", "function": {"name": "f", "arguments": ""}}]}),
                    Value::Null,
                );
            }
            for d in deltas {
                let delta = match kind {
                    Kind::ChatContent => json!({ "content": d }),
                    _ => json!({"tool_calls": [{"index": 0, "function": {"arguments": d}}]}),
                };
                out += &chunk(delta, Value::Null);
            }
            let finish = if kind == Kind::ChatContent {
                "stop"
            } else {
                "tool_calls"
            };
            out += &chunk(json!({}), json!(finish));
            out += &data(
                &json!({"id": "c", "object": "chat.completion.chunk", "created": 0,
                                 "model": "raw", "choices": [],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 5}}),
            );
            out += "data: [DONE]\n\n";
        }
        Kind::Completions => {
            for d in deltas {
                out += &data(
                    &json!({"id": "c", "object": "text_completion", "model": "raw",
                    "choices": [{"index": 0, "text": d, "finish_reason": null}]}),
                );
            }
            out += &data(
                &json!({"id": "c", "object": "text_completion", "model": "raw",
                "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}),
            );
            out += "data: [DONE]\n\n";
        }
        Kind::ResponsesText | Kind::ResponsesArgs | Kind::ResponsesSummary => {
            out += &responses(kind, deltas);
        }
        Kind::MessagesText | Kind::MessagesJson | Kind::MessagesThinking => {
            out += &messages(kind, deltas);
        }
    }
    out
}

fn responses(kind: Kind, deltas: &[String]) -> String {
    let full = joined(deltas);
    let resp = |status: &str, output: Value| {
        json!({"id": "resp_1", "object": "response", "created_at": 0, "status": status,
               "model": "raw", "output": output})
    };
    let (item, delta_type, done) = match kind {
        Kind::ResponsesText => (
            json!({"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": full, "annotations": []}]}),
            "response.output_text.delta",
            json!({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
                   "content_index": 0, "text": full}),
        ),
        Kind::ResponsesArgs => (
            json!({"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f",
                   "arguments": full, "status": "completed"}),
            "response.function_call_arguments.delta",
            json!({"type": "response.function_call_arguments.done", "item_id": "fc_1",
                   "output_index": 0, "arguments": full}),
        ),
        _ => (
            json!({"id": "rs_1", "type": "reasoning",
                   "summary": [{"type": "summary_text", "text": full}]}),
            "response.reasoning_summary_text.delta",
            json!({"type": "response.reasoning_summary_text.done", "item_id": "rs_1",
                   "output_index": 0, "summary_index": 0, "text": full}),
        ),
    };
    let id = item["id"].clone();
    // The item as it starts: no text yet.
    let mut added = item.clone();
    for (field, empty) in [
        ("content", json!([])),
        ("arguments", json!("")),
        ("summary", json!([])),
    ] {
        if added.get(field).is_some() {
            added[field] = empty;
        }
    }
    let mut evs = vec![
        json!({"type": "response.created", "response": resp("in_progress", json!([]))}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
    ];
    for d in deltas {
        let mut ev = json!({"type": delta_type, "item_id": id, "output_index": 0, "delta": d});
        match kind {
            Kind::ResponsesText => ev["content_index"] = json!(0),
            Kind::ResponsesSummary => ev["summary_index"] = json!(0),
            _ => {}
        }
        evs.push(ev);
    }
    evs.push(done);
    evs.push(json!({"type": "response.output_item.done", "output_index": 0, "item": item}));
    let mut completed = resp("completed", json!([item]));
    completed["usage"] = json!({"input_tokens": 3, "output_tokens": 5, "total_tokens": 8});
    evs.push(json!({"type": "response.completed", "response": completed}));
    let mut out = String::new();
    for (i, mut ev) in evs.into_iter().enumerate() {
        ev["sequence_number"] = json!(i);
        out += &named(&ev);
    }
    out
}

fn messages(kind: Kind, deltas: &[String]) -> String {
    let (block, delta_type, field) = match kind {
        Kind::MessagesText => (json!({"type": "text", "text": ""}), "text_delta", "text"),
        Kind::MessagesJson => (
            json!({"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}),
            "input_json_delta",
            "partial_json",
        ),
        _ => (
            json!({"type": "thinking", "thinking": "", "signature": ""}),
            "thinking_delta",
            "thinking",
        ),
    };
    let mut evs = vec![
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
               "role": "assistant", "model": "raw", "content": [], "stop_reason": null,
               "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": block}),
    ];
    for d in deltas {
        evs.push(json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": delta_type, field: d}}));
    }
    evs.push(json!({"type": "content_block_stop", "index": 0}));
    evs.push(
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                    "stop_sequence": null}, "usage": {"output_tokens": 5}}),
    );
    evs.push(json!({"type": "message_stop"}));
    evs.iter().map(named).collect()
}

/// What a client reads from a stream of `kind`: the concatenated delta text, every event's
/// JSON, and whether it ended the API's way.
pub fn read_stream(kind: Kind, body: &str) -> (String, Vec<Value>, bool) {
    let mut text = String::new();
    let mut events = Vec::new();
    let mut ended = false;
    for block in body.split("\n\n") {
        let Some(d) = block
            .lines()
            .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        else {
            continue;
        };
        if d == "[DONE]" {
            ended = true;
            continue;
        }
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("bad event {d}: {e}"));
        let piece = match kind {
            Kind::ChatContent => v.pointer("/choices/0/delta/content"),
            Kind::ChatToolArgs => v.pointer("/choices/0/delta/tool_calls/0/function/arguments"),
            Kind::Completions => v.pointer("/choices/0/text"),
            Kind::ResponsesText | Kind::ResponsesArgs | Kind::ResponsesSummary => {
                let t = v["type"].as_str().unwrap_or("");
                if t.ends_with(".delta") {
                    v.get("delta")
                } else {
                    if matches!(t, "response.completed" | "response.incomplete") {
                        ended = true;
                    }
                    None
                }
            }
            _ => {
                if v["type"] == "message_stop" {
                    ended = true;
                }
                v.pointer("/delta/text")
                    .or_else(|| v.pointer("/delta/partial_json"))
                    .or_else(|| v.pointer("/delta/thinking"))
            }
        };
        if let Some(s) = piece.and_then(Value::as_str) {
            text.push_str(s);
        }
        events.push(v);
    }
    (text, events, ended)
}
