//! Estimated prompt tokens of a request, before it is sent (the rate limiter reserves them).
//!
//! It only has to be a fair upper-bound guess: the upstream's real `usage` replaces it
//! afterwards.
//!
//! The prompt estimate needs no tokenizer (none would match every upstream anyway):
//! - every text string the model reads counts `ceil(UTF-8 bytes / 4)` tokens. For English that is
//!   the usual ~4 characters per token; for scripts that need 2–3 bytes per character (CJK,
//!   Cyrillic) it counts roughly one token per 1–2 characters, which is closer to real tokenizers
//!   than a character count would be;
//! - each chat message adds 4 tokens of framing (role and separators), the reply's priming 3,
//!   as in OpenAI's published counting recipe;
//! - an image part counts 85 tokens (OpenAI's low-detail price); its URL or base64 data is not
//!   text and is not counted;
//! - tool and function definitions count by the size of their JSON;
//! - an agent run arrives already rewritten by the engine into a chat completion (its
//!   instructions as the system message, `input` as the user message) and counts as one; a
//!   bare `{"input": …}` body counts its input as one message;
//! - token-id arrays (`prompt: [1, 2, 3]`) count one token per id;
//! - a body that is not JSON counts by its size;
//! - an endpoint Sluice does not know counts every string of its body ([`every_string`]).

use serde_json::Value;

use crate::JsonBody;

const PER_MESSAGE: u64 = 4;
const REPLY_PRIMING: u64 = 3;
const PER_IMAGE: u64 = 85;

/// A chat-style request: `messages` (OpenAI and Anthropic), `system`, `input`, `prompt`,
/// `instructions`, tool definitions.
pub fn chat(body: &JsonBody) -> u64 {
    let Some(doc) = body.json() else {
        return text_len(body.bytes().len());
    };
    let mut total = 0u64;
    if let Some(messages) = doc.get("messages").and_then(Value::as_array) {
        for m in messages {
            total = total.saturating_add(PER_MESSAGE).saturating_add(message(m));
        }
        total = total.saturating_add(REPLY_PRIMING);
    }
    for field in ["input", "prompt", "instructions", "system"] {
        if let Some(v) = doc.get(field) {
            total = total.saturating_add(content(v));
        }
    }
    if doc.get("input").is_some() && doc.get("messages").is_none() {
        total = total.saturating_add(PER_MESSAGE + REPLY_PRIMING);
    }
    for field in ["tools", "functions", "response_format"] {
        if let Some(v) = doc.get(field) {
            total = total.saturating_add(json_len(v));
        }
    }
    total
}

/// A legacy completion's `prompt` (and `suffix`): no message framing.
pub fn completion_prompt(body: &JsonBody) -> u64 {
    let Some(doc) = body.json() else {
        return text_len(body.bytes().len());
    };
    ["prompt", "suffix"]
        .iter()
        .filter_map(|f| doc.get(*f))
        .fold(0u64, |n, v| n.saturating_add(content(v)))
}

/// Every string of a body (and one token per integer in an array, for token ids): for
/// endpoints whose shape Sluice does not know, so that none is a way around a token limit.
pub fn every_string(body: &JsonBody) -> u64 {
    fn walk(v: &Value) -> u64 {
        match v {
            Value::String(s) => text(s),
            Value::Array(items) => items.iter().fold(0u64, |n, i| {
                n.saturating_add(if i.is_number() { 1 } else { walk(i) })
            }),
            Value::Object(m) => m.values().fold(0u64, |n, i| n.saturating_add(walk(i))),
            _ => 0,
        }
    }
    match body.json() {
        Some(doc) => walk(doc),
        None => text_len(body.bytes().len()),
    }
}

/// One chat message: its content, name, refusal and tool calls.
fn message(m: &Value) -> u64 {
    let mut n = 0u64;
    if let Some(c) = m.get("content") {
        n = n.saturating_add(content(c));
    }
    for field in ["name", "refusal"] {
        if let Some(s) = m.get(field).and_then(Value::as_str) {
            n = n.saturating_add(text(s));
        }
    }
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            if let Some(f) = call.get("function") {
                n = n.saturating_add(content(f.get("name").unwrap_or(&Value::Null)));
                n = n.saturating_add(content(f.get("arguments").unwrap_or(&Value::Null)));
            }
        }
    }
    if let Some(f) = m.get("function_call") {
        n = n.saturating_add(json_len(f));
    }
    n
}

/// A content value: a string, or an array of strings or typed parts.
fn content(c: &Value) -> u64 {
    match c {
        Value::String(s) => text(s),
        Value::Array(parts) => parts.iter().fold(0u64, |n, p| n.saturating_add(part(p))),
        Value::Object(_) => part(c),
        _ => 0,
    }
}

fn part(p: &Value) -> u64 {
    match p {
        Value::String(s) => text(s),
        // A token id (legacy completions and embeddings accept arrays of them).
        Value::Number(_) => 1,
        Value::Object(o) => {
            let kind = o.get("type").and_then(Value::as_str).unwrap_or("");
            if kind.starts_with("image") || o.contains_key("image_url") {
                PER_IMAGE
            } else if let Some(t) = o.get("text").and_then(Value::as_str) {
                text(t)
            } else if let Some(t) = o.get("thinking").and_then(Value::as_str) {
                text(t)
            } else if let Some(i) = o.get("input") {
                // An Anthropic tool_use block.
                json_len(i)
            } else if let Some(c) = o.get("content") {
                content(c)
            } else {
                0
            }
        }
        _ => 0,
    }
}

fn text(s: &str) -> u64 {
    text_len(s.len())
}

fn text_len(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

fn json_len(v: &Value) -> u64 {
    text_len(serde_json::to_string(v).map(|s| s.len()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;

    fn body(v: Value) -> JsonBody {
        JsonBody::parsed(Bytes::from(v.to_string()), v)
    }

    #[test]
    fn chat_messages() {
        let b = body(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "12345678"},
                {"role": "user", "content": [
                    {"type": "text", "text": "123"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]}
            ]
        }));
        // 4 + 2, 4 + 1 + 85, priming 3.
        assert_eq!(chat(&b), 99);
    }

    #[test]
    fn unknown_shapes_count_every_string_and_token_ids() {
        let b = body(json!({"model": "m", "x": {"y": ["abcd", "abcdefgh"]}, "ids": [1, 2, 3]}));
        assert_eq!(every_string(&b), 1 + 1 + 2 + 3);
        let b = body(json!({"prompt": [1, 2, 3, 4], "suffix": "abcd"}));
        assert_eq!(completion_prompt(&b), 4 + 1);
    }

    #[test]
    fn agent_input_and_raw_bodies() {
        let b = body(json!({"input": "abcdefgh"}));
        assert_eq!(chat(&b), 2 + 7);
        let raw = JsonBody::raw(Bytes::from_static(b"not json at all"));
        assert_eq!(chat(&raw), 4);
    }

    #[test]
    fn non_latin_text_counts_more_per_character() {
        let b = body(json!({"messages": [{"role": "user", "content": "日本語の文章です"}]}));
        // 8 characters, 24 bytes: 6 tokens, not 2.
        assert_eq!(chat(&b), 4 + 6 + 3);
    }
}
