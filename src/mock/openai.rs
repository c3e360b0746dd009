//! The mock's OpenAI APIs: chat completions, legacy completions, the Responses API,
//! embeddings and moderations.

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sluice_filters::clock::unix_secs;

use super::{
    content_text, data_event, error, json_response, last_user_text, mock_id, model_of, named_event,
    not_json, parse, stream, words, words_with_space, Body, Pace,
};

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

fn include_usage(req: &Value) -> bool {
    req.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn streams(req: &Value) -> bool {
    req.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// `POST /v1/chat/completions`.
pub(super) fn chat(body: &[u8], pace: Pace) -> Response<Body> {
    let Some(req) = parse(body) else {
        return not_json();
    };
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (text, prompt) = last_user_text(&messages);
    let usage = usage(prompt, words(&text));
    let model = model_of(&req);
    let id = mock_id("chatcmpl-");
    let created = unix_secs();
    if !streams(&req) {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop", "logprobs": null}],
                "usage": usage,
            }),
        );
    }
    let chunk = |delta: Value, finish: Value| -> Bytes {
        data_event(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        }))
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for word in words_with_space(&text) {
        events.push(chunk(json!({ "content": word }), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage(&req) {
        events.push(data_event(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage,
        })));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    stream(events, pace)
}

/// `POST /v1/completions`: the prompt (its last string, when an array) echoed back.
pub(super) fn completions(body: &[u8], pace: Pace) -> Response<Body> {
    let Some(req) = parse(body) else {
        return not_json();
    };
    let text = match req.get("prompt") {
        Some(Value::Array(items)) => items
            .iter()
            .rev()
            .find_map(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        other => content_text(other),
    };
    let usage = usage(words(&text), words(&text));
    let model = model_of(&req);
    let id = mock_id("cmpl-");
    let created = unix_secs();
    let object = |choice: Value| {
        json!({"id": id, "object": "text_completion", "created": created, "model": model,
               "choices": [choice]})
    };
    if !streams(&req) {
        let mut v = object(json!({"index": 0, "text": text, "finish_reason": "stop",
                                  "logprobs": null}));
        v["usage"] = usage;
        return json_response(StatusCode::OK, &v);
    }
    let mut events: Vec<Bytes> = words_with_space(&text)
        .into_iter()
        .map(|w| {
            data_event(&object(
                json!({"index": 0, "text": w, "finish_reason": null, "logprobs": null}),
            ))
        })
        .collect();
    events.push(data_event(&object(
        json!({"index": 0, "text": "", "finish_reason": "stop", "logprobs": null}),
    )));
    if include_usage(&req) {
        events.push(data_event(&json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [], "usage": usage,
        })));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    stream(events, pace)
}

/// The text of a Responses API `input`: a string, or the last user item's content.
fn responses_input(req: &Value) -> (String, usize) {
    match req.get("input") {
        Some(Value::String(s)) => (s.clone(), words(s)),
        Some(Value::Array(items)) => {
            let as_messages: Vec<Value> = items
                .iter()
                .map(|i| match i {
                    Value::String(s) => json!({"role": "user", "content": s}),
                    i => i.clone(),
                })
                .collect();
            last_user_text(&as_messages)
        }
        _ => (String::new(), 0),
    }
}

/// `POST /v1/responses`: the OpenAI Responses API, with its typed event stream.
pub(super) fn responses(body: &[u8], pace: Pace) -> Response<Body> {
    let Some(req) = parse(body) else {
        return not_json();
    };
    let (text, input_tokens) = responses_input(&req);
    let output_tokens = words(&text);
    let usage = json!({"input_tokens": input_tokens, "output_tokens": output_tokens,
                       "total_tokens": input_tokens + output_tokens,
                       "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens_details": {"reasoning_tokens": 0}});
    let id = mock_id("resp_");
    let msg_id = mock_id("msg_");
    let response = |status: &str, output: Value| {
        json!({
            "id": id, "object": "response", "created_at": unix_secs(), "status": status,
            "model": model_of(&req), "output": output, "error": null,
            "incomplete_details": null, "instructions": req.get("instructions"),
            "metadata": {}, "parallel_tool_calls": true, "temperature": 1.0,
            "tool_choice": "auto", "tools": [], "top_p": 1.0,
        })
    };
    let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": []});
    let item = |status: &str, content: Value| {
        json!({"id": msg_id, "type": "message", "status": status, "role": "assistant",
               "content": content})
    };
    let done_item = item("completed", json!([part(&text)]));
    if !streams(&req) {
        let mut v = response("completed", json!([done_item]));
        v["usage"] = usage;
        return json_response(StatusCode::OK, &v);
    }
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut push = |kind: &str, mut v: Value| {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(seq);
        seq += 1;
        events.push(named_event(kind, &v));
    };
    push(
        "response.created",
        json!({"response": response("in_progress", json!([]))}),
    );
    push(
        "response.in_progress",
        json!({"response": response("in_progress", json!([]))}),
    );
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": item("in_progress", json!([]))}),
    );
    let at = json!({"item_id": msg_id, "output_index": 0, "content_index": 0});
    let with = |extra: Value| {
        let mut v = at.clone();
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    };
    push(
        "response.content_part.added",
        with(json!({"part": part("")})),
    );
    for w in words_with_space(&text) {
        push(
            "response.output_text.delta",
            with(json!({"delta": w, "logprobs": []})),
        );
    }
    push(
        "response.output_text.done",
        with(json!({"text": text, "logprobs": []})),
    );
    push(
        "response.content_part.done",
        with(json!({"part": part(&text)})),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": done_item}),
    );
    let mut completed = response("completed", json!([done_item]));
    completed["usage"] = usage;
    push("response.completed", json!({ "response": completed }));
    stream(events, pace)
}

/// `POST /v1/embeddings`: a small deterministic vector per input (8 floats from its SHA-256),
/// as floats or, when asked (`encoding_format: "base64"`, what the OpenAI SDKs ask for),
/// little-endian f32 in base64.
pub(super) fn embeddings(body: &[u8]) -> Response<Body> {
    let Some(req) = parse(body) else {
        return not_json();
    };
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(v @ Value::Array(_)) => vec![v.to_string()],
        _ => return error(StatusCode::BAD_REQUEST, "embeddings need `input`"),
    };
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = vector(text);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    bytes
                ))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let prompt: usize = inputs.iter().map(|t| words(t)).sum();
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "model": model_of(&req),
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}),
    )
}

/// `POST /v1/moderations`: one result per input string (or part), flagged as `violence` when
/// the text holds the word `attack` (deterministic, so tests can tell both answers apart).
pub(super) fn moderations(body: &[u8]) -> Response<Body> {
    let Some(req) = parse(body) else {
        return not_json();
    };
    let texts: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| content_text(Some(&Value::Array(vec![i.clone()]))))
            .collect(),
        _ => return error(StatusCode::BAD_REQUEST, "moderations need `input`"),
    };
    let results: Vec<Value> = texts
        .iter()
        .map(|t| {
            let violent = t.split_whitespace().any(|w| w == "attack");
            let score = if violent { 0.9 } else { 0.01 };
            json!({"flagged": violent, "categories": {"violence": violent},
                   "category_scores": {"violence": score}})
        })
        .collect();
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("omni-moderation-latest");
    json_response(
        StatusCode::OK,
        &json!({"id": mock_id("modr-"), "model": model, "results": results}),
    )
}

fn vector(text: &str) -> Vec<f32> {
    Sha256::digest(text.as_bytes())
        .chunks(4)
        .take(8)
        .map(|c| {
            let n = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            (n as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}
