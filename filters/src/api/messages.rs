//! Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`), which the
//! Anthropic SDKs and Claude Code speak.
//!
//! A stream is named events: `message_start` (with the input usage), per content block
//! `content_block_start`, `content_block_delta` (`text_delta`, `input_json_delta`,
//! `thinking_delta`) and `content_block_stop`, then `message_delta` (stop reason, output usage)
//! and `message_stop`. Text is keyed by the block's `index`. A block ends the whole message:
//! `message_delta` with `stop_reason: "refusal"`, then `message_stop`.
//!
//! Errors are in Anthropic's shape, `{"type":"error","error":{"type","message"}}`, with
//! Anthropic's type names, so its SDKs raise the right exception.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    estimate, read_head, read_model, read_stream, span_of, splice, Api, ApiRoute, BlockScope,
    Delta, DeltaKey, ErrorInfo, EventView, Finish, Loc, Memo, Models, RequestFacts, TokenCost,
};
use crate::{JsonBody, Permission, Reply, StreamEvent};

/// `POST /v1/messages`.
pub static ROUTE: ApiRoute = ApiRoute {
    path: "messages",
    post_only: true,
    label: "messages",
    api: &super::MESSAGES,
    permission: Permission::Chat,
    action: "create chat completions",
    models: Models::Required,
    operation: Some("chat"),
    anthropic: true,
    usage_row: true,
};

/// `POST /v1/messages/count_tokens`: no model runs, and it is no request of usage.
pub static COUNT_TOKENS_ROUTE: ApiRoute = ApiRoute {
    path: "messages/count_tokens",
    post_only: true,
    label: "count_tokens",
    api: &super::COUNT_TOKENS,
    permission: Permission::Chat,
    action: "create chat completions",
    models: Models::Required,
    operation: None,
    anthropic: true,
    usage_row: false,
};

pub struct Messages;

/// The delta types that carry text, by [`DeltaKey::field`], with the field holding it.
const DELTA_TYPES: [(&str, &str); 3] = [
    ("text_delta", "text"),
    ("input_json_delta", "partial_json"),
    ("thinking_delta", "thinking"),
];

impl Api for Messages {
    fn name(&self) -> &'static str {
        "messages"
    }

    fn read_request(&self, body: &Value) -> Result<RequestFacts, Reply> {
        let model = read_model(body, true)?;
        require_messages(body)?;
        let Some(max_tokens) = body.get("max_tokens").and_then(Value::as_u64) else {
            return Err(Reply::error(
                400,
                "missing_max_tokens",
                "The request needs `max_tokens` (a positive integer), as the Messages API requires.",
            ));
        };
        Ok(RequestFacts {
            model,
            stream: read_stream(body)?,
            client_wants_stream_usage: true,
            max_tokens: Some(max_tokens),
            choices: 1,
        })
    }

    fn prompt_tokens(&self, body: &JsonBody) -> u64 {
        estimate::chat(body)
    }

    fn end_answer(&self, answer: &mut Value, held_block: &dyn Fn(&Value) -> bool) {
        let Some(doc) = answer.as_object_mut() else {
            return;
        };
        if let Some(Value::Array(blocks)) = doc.get_mut("content") {
            // A tool call whose input was cut is of no use: withheld whole.
            blocks.retain(|b| {
                let tool = b.get("type").and_then(Value::as_str) == Some("tool_use");
                !(tool && held_block(b))
            });
        }
        doc.insert("stop_reason".into(), json!("refusal"));
    }

    fn finish_reasons(&self, answer: &[u8], out: &mut super::FinishReasons) {
        super::finish::stop_answer(answer, out);
    }

    fn stream_finish_reasons(&self, ev: &StreamEvent, out: &mut super::FinishReasons) {
        super::finish::stop_event(ev, out);
    }

    fn read_event<'e>(&self, ev: &'e StreamEvent, memo: &mut Memo) -> EventView<'e> {
        let whole = EventView::whole();
        let Some((data, head)) = read_head::<Head<'_>>(ev) else {
            return whole;
        };
        let index = head.index.unwrap_or(0);
        match head.kind {
            "content_block_delta" => {
                let Some(d) = head.delta else { return whole };
                let Some(field) = DELTA_TYPES.iter().position(|(t, _)| *t == d.kind) else {
                    // `signature_delta` and the like: no text a person reads.
                    return EventView::default();
                };
                let text = match field {
                    0 => d.text,
                    1 => d.partial_json,
                    _ => d.thinking,
                };
                let Some(text) = text else { return whole };
                let at = match (&text, ev.data_span()) {
                    (Cow::Borrowed(s), Some(_)) => match span_of(data, s) {
                        Some((a, b)) => Loc::Span(a, b),
                        None => Loc::Path(field as u32, 0, 0),
                    },
                    _ => Loc::Path(field as u32, 0, 0),
                };
                EventView {
                    deltas: vec![Delta {
                        key: DeltaKey {
                            group: index,
                            part: 0,
                            field: field as u8,
                        },
                        text,
                        at,
                    }],
                    ..EventView::default()
                }
            }
            "content_block_start" => {
                memo.insert("open".into(), json!(index));
                EventView {
                    group: Some(index),
                    ..whole
                }
            }
            "content_block_stop" => {
                memo.remove("open");
                EventView {
                    finishes: vec![Finish::Group(index)],
                    ..EventView::default()
                }
            }
            "message_stop" => EventView {
                finishes: vec![Finish::All],
                ..EventView::default()
            },
            "ping" => EventView::default(),
            _ => whole,
        }
    }

    fn write_delta(&self, ev: &mut StreamEvent, at: Loc, text: &str) {
        match at {
            Loc::Span(s, e) => splice(ev, s, e, text),
            Loc::Path(field, ..) => {
                let name = DELTA_TYPES.get(field as usize).map_or("text", |(_, f)| *f);
                if let Some(v) = ev.json_mut().and_then(|v| v.get_mut("delta")) {
                    v[name] = Value::String(text.to_string());
                }
            }
        }
    }

    fn delta_event(&self, key: DeltaKey, text: &str, _memo: &Memo) -> Option<StreamEvent> {
        let (kind, field) = *DELTA_TYPES.get(usize::from(key.field))?;
        let v = json!({
            "type": "content_block_delta",
            "index": key.group,
            "delta": {"type": kind, field: text},
        });
        Some(StreamEvent::named_json_event("content_block_delta", v))
    }

    fn block_scope(&self) -> BlockScope {
        BlockScope::Whole
    }

    fn end_stream(
        &self,
        _ev: Option<&mut StreamEvent>,
        _group: Option<u64>,
        memo: &Memo,
        out: &mut Vec<StreamEvent>,
    ) {
        // The block still open (started, not stopped) is closed first.
        if let Some(index) = memo.get("open").and_then(Value::as_u64) {
            out.push(StreamEvent::named_json_event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        out.push(StreamEvent::named_json_event(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": "refusal", "stop_sequence": null},
                "usage": {"output_tokens": 0},
            }),
        ));
        out.push(StreamEvent::named_json_event(
            "message_stop",
            json!({"type": "message_stop"}),
        ));
    }

    fn error_body(&self, e: &ErrorInfo) -> Bytes {
        Bytes::from(anthropic_error(e).to_string())
    }

    fn stream_error_event(&self, e: &ErrorInfo) -> StreamEvent {
        StreamEvent::named_json_event("error", anthropic_error(e))
    }
}

/// `POST /v1/messages/count_tokens`: the same request shape (without `max_tokens`), answered
/// `{"input_tokens": N}`. It generates nothing, so it costs no tokens.
pub struct CountTokens;

impl Api for CountTokens {
    fn name(&self) -> &'static str {
        "count_tokens"
    }

    fn read_request(&self, body: &Value) -> Result<RequestFacts, Reply> {
        let model = read_model(body, true)?;
        require_messages(body)?;
        Ok(RequestFacts {
            model,
            ..RequestFacts::default()
        })
    }

    fn token_cost(&self) -> TokenCost {
        TokenCost::Free
    }

    fn scans_answer(&self) -> bool {
        false
    }

    fn usage(&self, _usage: &Value) -> Option<crate::Usage> {
        None
    }

    fn error_body(&self, e: &ErrorInfo) -> Bytes {
        Bytes::from(anthropic_error(e).to_string())
    }

    fn stream_error_event(&self, e: &ErrorInfo) -> StreamEvent {
        StreamEvent::named_json_event("error", anthropic_error(e))
    }
}

fn require_messages(body: &Value) -> Result<(), Reply> {
    if body.get("messages").is_some_and(Value::is_array) {
        return Ok(());
    }
    Err(Reply::error(
        400,
        "missing_messages",
        "The request needs `messages` (an array).",
    ))
}

/// Anthropic's error shape, with Sluice's code in `error.code`.
pub fn anthropic_error(e: &ErrorInfo) -> Value {
    json!({
        "type": "error",
        "error": {"type": anthropic_type(e.status), "message": e.message, "code": e.code},
    })
}

/// Anthropic's error type for a status.
pub fn anthropic_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    index: Option<u64>,
    #[serde(borrow)]
    delta: Option<HeadDelta<'a>>,
}

#[derive(Deserialize)]
struct HeadDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: &'a str,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking: Option<Cow<'a, str>>,
}
