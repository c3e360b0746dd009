//! Why the model stopped, as each API reports it: `choices[].finish_reason` (chat, completions),
//! `stop_reason` (Anthropic), `status` and `incomplete_details.reason` (Responses). Read for
//! traces (`gen_ai.response.finish_reasons`) only when they are on, so the work costs nothing
//! otherwise; from a whole answer's bytes, and from the events that finish a stream.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use crate::StreamEvent;

/// At most this many reasons are kept (OpenAI allows `n` up to 128).
pub const MAX_REASONS: usize = 128;
/// A reason longer than this, or not an identifier, is kept as `other`: an upstream's value
/// never carries free text into a trace.
const MAX_REASON_LEN: usize = 64;

/// The finish reasons of one answer, in the order the upstream reported them; bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishReasons(Vec<String>);

impl FinishReasons {
    pub fn push(&mut self, reason: &str) {
        if self.0.len() >= MAX_REASONS {
            return;
        }
        let identifier = !reason.is_empty()
            && reason.len() <= MAX_REASON_LEN
            && reason
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
        self.0
            .push(if identifier { reason } else { "other" }.to_string());
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

#[derive(Deserialize)]
struct ChoicesAnswer<'a> {
    #[serde(borrow, default)]
    choices: Vec<ChoiceReason<'a>>,
}

#[derive(Deserialize)]
struct ChoiceReason<'a> {
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StopAnswer<'a> {
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StatusAnswer<'a> {
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    incomplete_details: Option<Details<'a>>,
}

#[derive(Deserialize)]
struct Details<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

/// `choices[].finish_reason` of a whole answer (chat completions, legacy completions).
pub(crate) fn choices_answer(answer: &[u8], out: &mut FinishReasons) {
    if let Ok(a) = serde_json::from_slice::<ChoicesAnswer<'_>>(answer) {
        for r in a.choices.iter().filter_map(|c| c.finish_reason.as_deref()) {
            out.push(r);
        }
    }
}

/// `stop_reason` of a whole Anthropic message.
pub(crate) fn stop_answer(answer: &[u8], out: &mut FinishReasons) {
    if let Ok(StopAnswer {
        stop_reason: Some(r),
    }) = serde_json::from_slice(answer)
    {
        out.push(&r);
    }
}

/// A Responses object's reason: `incomplete_details.reason` when it has one, else its `status`.
pub(crate) fn status_answer(answer: &[u8], out: &mut FinishReasons) {
    if let Ok(a) = serde_json::from_slice::<StatusAnswer<'_>>(answer) {
        let reason = a.incomplete_details.and_then(|d| d.reason);
        if let Some(r) = reason.or(a.status) {
            out.push(&r);
        }
    }
}

/// Whether `key` occurs in `data` with a string value (`"key": "…"`): most chunks of a stream
/// carry `"finish_reason": null`, and only the finishing ones are worth parsing.
fn has_string_value(data: &[u8], key: &[u8]) -> bool {
    memchr::memmem::find_iter(data, key).any(|at| {
        let rest = &data[at + key.len()..];
        let mut it = rest.iter().skip_while(|b| b.is_ascii_whitespace());
        it.next() == Some(&b':') && it.find(|b| !b.is_ascii_whitespace()) == Some(&b'"')
    })
}

/// The finish reasons of a chunk (`choices[].finish_reason`).
pub(crate) fn choices_event(ev: &StreamEvent, out: &mut FinishReasons) {
    let Some(data) = ev.data() else { return };
    if !has_string_value(data, b"\"finish_reason\"") {
        return;
    }
    let choices = ev
        .json()
        .and_then(|v| v.get("choices"))
        .and_then(Value::as_array);
    for c in choices.into_iter().flatten() {
        if let Some(r) = c.get("finish_reason").and_then(Value::as_str) {
            out.push(r);
        }
    }
}

/// `message_delta`'s `delta.stop_reason`.
pub(crate) fn stop_event(ev: &StreamEvent, out: &mut FinishReasons) {
    let Some(data) = ev.data() else { return };
    if !has_string_value(data, b"\"stop_reason\"") {
        return;
    }
    let Some(v) = ev.json() else { return };
    if v.get("type").and_then(Value::as_str) != Some("message_delta") {
        return;
    }
    if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
        out.push(r);
    }
}

/// The response's reason in the events that end a Responses stream.
pub(crate) fn status_event(ev: &StreamEvent, out: &mut FinishReasons) {
    let Some(v) = ev.json() else { return };
    let terminal = matches!(
        v.get("type").and_then(Value::as_str),
        Some("response.completed" | "response.incomplete" | "response.failed")
    );
    if !terminal {
        return;
    }
    let reason = v
        .pointer("/response/incomplete_details/reason")
        .and_then(Value::as_str)
        .or_else(|| v.pointer("/response/status").and_then(Value::as_str));
    if let Some(r) = reason {
        out.push(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(data: &str) -> StreamEvent {
        let raw = Bytes::from(format!("data: {data}\n\n"));
        let d = raw.slice(6..6 + data.len());
        StreamEvent::lazy(raw, Some(d))
    }

    #[test]
    fn answers() {
        let mut r = FinishReasons::default();
        choices_answer(
            br#"{"choices":[{"index":0,"message":{"content":"hi"},"finish_reason":"stop"},{"finish_reason":"length"},{"finish_reason":null}]}"#,
            &mut r,
        );
        stop_answer(br#"{"content":[],"stop_reason":"end_turn"}"#, &mut r);
        status_answer(br#"{"status":"completed"}"#, &mut r);
        status_answer(
            br#"{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"}}"#,
            &mut r,
        );
        stop_answer(br#"{"stop_reason":"a prompt, with spaces"}"#, &mut r);
        choices_answer(b"not json", &mut r);
        assert_eq!(
            r.as_slice(),
            [
                "stop",
                "length",
                "end_turn",
                "completed",
                "max_output_tokens",
                "other"
            ]
        );
    }

    #[test]
    fn stream_events() {
        let mut r = FinishReasons::default();
        choices_event(
            &event(r#"{"choices":[{"delta":{"content":"finish_reason"},"finish_reason":null}]}"#),
            &mut r,
        );
        assert!(r.is_empty(), "{r:?}");
        choices_event(
            &event(r#"{"choices":[{"delta":{},"finish_reason" : "stop"}]}"#),
            &mut r,
        );
        stop_event(
            &event(r#"{"type":"message_start","message":{"stop_reason":null}}"#),
            &mut r,
        );
        stop_event(
            &event(r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"}}"#),
            &mut r,
        );
        status_event(
            &event(r#"{"type":"response.output_text.delta","delta":"x"}"#),
            &mut r,
        );
        status_event(
            &event(r#"{"type":"response.completed","response":{"status":"completed"}}"#),
            &mut r,
        );
        assert_eq!(r.as_slice(), ["stop", "max_tokens", "completed"]);
    }

    #[test]
    fn bounded() {
        let mut r = FinishReasons::default();
        for _ in 0..MAX_REASONS + 5 {
            r.push("stop");
        }
        assert_eq!(r.as_slice().len(), MAX_REASONS);
    }
}
