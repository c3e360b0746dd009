//! The mock's Anthropic Messages API: `POST /v1/messages` (plain and streamed, with its named
//! events) and `POST /v1/messages/count_tokens`.

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::{
    content_text, json_response, last_user_text, mock_id, model_of, named_event, not_json, parse,
    stream, words, words_with_space, Body, Pace,
};

/// The prompt's words: the system prompt and every message.
fn prompt(req: &Value) -> (String, usize) {
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (text, n) = last_user_text(&messages);
    (text, n + words(&content_text(req.get("system"))))
}

/// `POST /v1/messages`.
pub(super) fn messages(body: &[u8], pace: Pace) -> Response<Body> {
    let Some(req) = parse(body) else {
        return not_json();
    };
    let (text, input_tokens) = prompt(&req);
    let output_tokens = words(&text);
    let id = mock_id("msg_");
    let message = |content: Value, stop: Value, output: usize| {
        json!({
            "id": id, "type": "message", "role": "assistant", "model": model_of(&req),
            "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output},
        })
    };
    let streams = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !streams {
        return json_response(
            StatusCode::OK,
            &message(
                json!([{"type": "text", "text": text}]),
                json!("end_turn"),
                output_tokens,
            ),
        );
    }
    let mut events = vec![
        named_event(
            "message_start",
            &json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)}),
        ),
        named_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        named_event("ping", &json!({"type": "ping"})),
    ];
    for w in words_with_space(&text) {
        events.push(named_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": w}}),
        ));
    }
    events.push(named_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(named_event(
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(named_event(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    stream(events, pace)
}

/// `POST /v1/messages/count_tokens`.
pub(super) fn count_tokens(body: &[u8]) -> Response<Body> {
    let Some(req) = parse(body) else {
        return not_json();
    };
    let (_, input_tokens) = prompt(&req);
    json_response(StatusCode::OK, &json!({ "input_tokens": input_tokens }))
}
