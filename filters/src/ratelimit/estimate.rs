//! How many tokens a request reserves before it is sent.
//!
//! The reservation is `prompt estimate + n × max_tokens` (`max_tokens` or
//! `max_completion_tokens` from the request, else `[rate_limit] default_max_tokens`). It only has
//! to be a fair upper-bound guess: the upstream's real `usage` replaces it afterwards.
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
//! - a body that is not JSON counts by its size.

use serde_json::Value;

use crate::JsonBody;

const PER_MESSAGE: u64 = 4;
const REPLY_PRIMING: u64 = 3;
const PER_IMAGE: u64 = 85;
/// OpenAI accepts at most 128 choices per request.
const MAX_CHOICES: u64 = 128;

/// The tokens to reserve for a request.
pub(crate) fn reservation(body: &JsonBody, max_tokens: Option<u64>, default_max: u64) -> u64 {
    let completion = max_tokens.unwrap_or(default_max);
    let choices = body
        .json()
        .and_then(|v| v.get("n"))
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, MAX_CHOICES);
    prompt_tokens(body).saturating_add(completion.saturating_mul(choices))
}

/// The estimated prompt tokens of a request body.
pub(crate) fn prompt_tokens(body: &JsonBody) -> u64 {
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
    for field in ["input", "prompt", "instructions"] {
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
        _ => 0,
    }
}

fn part(p: &Value) -> u64 {
    match p {
        Value::String(s) => text(s),
        Value::Object(o) => {
            let kind = o.get("type").and_then(Value::as_str).unwrap_or("");
            if kind.starts_with("image") || o.contains_key("image_url") {
                PER_IMAGE
            } else if let Some(t) = o.get("text").and_then(Value::as_str) {
                text(t)
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
        assert_eq!(prompt_tokens(&b), 99);
    }

    #[test]
    fn reservation_adds_completion_per_choice() {
        let b = body(json!({"messages": [{"role": "user", "content": "abcd"}], "n": 3}));
        assert_eq!(reservation(&b, Some(100), 4096), 8 + 300);
        let b = body(json!({"messages": [{"role": "user", "content": "abcd"}]}));
        assert_eq!(reservation(&b, None, 50), 8 + 50);
        assert_eq!(reservation(&b, Some(u64::MAX), 50), u64::MAX);
    }

    #[test]
    fn agent_input_and_raw_bodies() {
        let b = body(json!({"input": "abcdefgh"}));
        assert_eq!(prompt_tokens(&b), 2 + 7);
        let raw = JsonBody::raw(Bytes::from_static(b"not json at all"));
        assert_eq!(prompt_tokens(&raw), 4);
    }

    #[test]
    fn non_latin_text_counts_more_per_character() {
        let b = body(json!({"messages": [{"role": "user", "content": "日本語の文章です"}]}));
        // 8 characters, 24 bytes: 6 tokens, not 2.
        assert_eq!(prompt_tokens(&b), 4 + 6 + 3);
    }
}
