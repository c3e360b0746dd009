//! What chat completions and legacy completions share: answers as `choices`, streams as chunks
//! of `choices[i]` ending with `finish_reason`, usage in an extra chunk on request
//! (`stream_options.include_usage`), and `data: [DONE]`.
//!
//! A block ends only its choice (`finish_reason: "content_filter"`); the others go on.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    span_of, splice, Api, BlockScope, Delta, DeltaKey, EventView, Finish, FinishReasons, Loc, Memo,
    RequestFacts,
};
use crate::{JsonBody, Reply, StreamEvent, Usage};

/// An API of the family: one [`Api`] for both, told apart by what its member module gives.
pub struct ChoicesApi {
    pub(super) name: &'static str,
    pub(super) shape: Shape,
    /// Reads the member's request (its own required field and token ceiling).
    pub(super) read_request: fn(&Value) -> Result<RequestFacts, Reply>,
    pub(super) prompt_tokens: fn(&JsonBody) -> u64,
}

impl Api for ChoicesApi {
    fn name(&self) -> &'static str {
        self.name
    }

    fn read_request(&self, body: &Value) -> Result<RequestFacts, Reply> {
        (self.read_request)(body)
    }

    fn prepare_upstream(
        &self,
        body: &mut Map<String, Value>,
        facts: &RequestFacts,
        upstream_model: Option<&str>,
    ) {
        if let Some(m) = upstream_model {
            body.insert("model".into(), Value::String(m.to_string()));
        }
        ask_stream_usage(body, facts);
    }

    fn rewrites_upstream(&self, facts: &RequestFacts, upstream_model: Option<&str>) -> bool {
        upstream_model.is_some() || (facts.stream && !facts.client_wants_stream_usage)
    }

    fn prompt_tokens(&self, body: &JsonBody) -> u64 {
        (self.prompt_tokens)(body)
    }

    fn answer_groups(&self) -> Option<&'static str> {
        Some("choices")
    }

    fn end_answer(&self, choice: &mut Value, held_block: &dyn Fn(&Value) -> bool) {
        end_answer(choice, held_block);
    }

    fn stream_usage(
        &self,
        ev: &mut StreamEvent,
        client_asked: bool,
        usage: &mut Option<Usage>,
    ) -> bool {
        stream_usage(ev, client_asked, usage)
    }

    fn finish_reasons(&self, answer: &[u8], out: &mut FinishReasons) {
        super::finish::choices_answer(answer, out);
    }

    fn stream_finish_reasons(&self, ev: &StreamEvent, out: &mut FinishReasons) {
        super::finish::choices_event(ev, out);
    }

    fn read_event<'e>(&self, ev: &'e StreamEvent, memo: &mut Memo) -> EventView<'e> {
        read_event(self.shape, ev, memo)
    }

    fn write_delta(&self, ev: &mut StreamEvent, at: Loc, text: &str) {
        write_delta(self.shape, ev, at, text);
    }

    fn delta_event(&self, key: DeltaKey, text: &str, memo: &Memo) -> Option<StreamEvent> {
        Some(delta_event(self.shape, key, text, memo))
    }

    fn block_scope(&self) -> BlockScope {
        BlockScope::Group
    }

    fn end_stream(
        &self,
        ev: Option<&mut StreamEvent>,
        group: Option<u64>,
        memo: &Memo,
        out: &mut Vec<StreamEvent>,
    ) {
        end_stream(self.shape, ev, group, memo, out);
    }

    fn withhold(&self, ev: &mut StreamEvent, closed: &[u64]) -> bool {
        withhold(ev, closed)
    }

    fn passes_after_end(&self, ev: &StreamEvent) -> bool {
        ev.is_done()
    }
}

/// Where a choice's text lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `choices[i].delta.{content, refusal, reasoning…}`, `delta.tool_calls[j].function.arguments`.
    Chat,
    /// `choices[i].text`.
    Completions,
}

/// The incremental text fields of a chat chunk's `delta`, by [`DeltaKey::field`].
pub(crate) const CHAT_FIELDS: [&str; 4] = ["content", "refusal", "reasoning_content", "reasoning"];
/// [`DeltaKey::field`] of a tool call's arguments (`part` is the call's index).
pub(crate) const TOOL_ARGS: u8 = 4;
/// [`DeltaKey::field`] of the legacy `function_call.arguments`.
pub(crate) const FUNCTION_ARGS: u8 = 5;

/// Asks the upstream for usage in a stream when the client did not.
pub(crate) fn ask_stream_usage(body: &mut Map<String, Value>, facts: &RequestFacts) {
    if !facts.stream || facts.client_wants_stream_usage {
        return;
    }
    let opts = body.entry("stream_options").or_insert_with(|| json!({}));
    match opts {
        Value::Object(o) => {
            o.insert("include_usage".into(), Value::Bool(true));
        }
        other => *other = json!({"include_usage": true}),
    }
}

pub(crate) fn client_wants_stream_usage(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Reads the usage chunk; hides it (or its `usage`) from a client that did not ask for it.
pub(crate) fn stream_usage(
    ev: &mut StreamEvent,
    client_asked: bool,
    usage: &mut Option<Usage>,
) -> bool {
    let Some(data) = ev.data() else { return true };
    if memchr::memmem::find(data, b"\"usage\"").is_none() {
        return true;
    }
    let Some(u) = ev
        .json()
        .and_then(|v| v.get("usage"))
        .and_then(Usage::from_json)
    else {
        return true;
    };
    *usage = Some(u);
    if client_asked {
        return true;
    }
    let only_usage = ev
        .json()
        .and_then(|v| v.get("choices"))
        .and_then(Value::as_array)
        .is_none_or(|c| c.is_empty());
    if only_usage {
        return false;
    }
    if let Some(Value::Object(o)) = ev.json_mut() {
        o.remove("usage");
    }
    true
}

/// Splits a chunk into its choices' deltas.
pub(crate) fn read_event<'e>(shape: Shape, ev: &'e StreamEvent, memo: &mut Memo) -> EventView<'e> {
    if ev.is_done() {
        return EventView {
            finishes: vec![Finish::All],
            ..EventView::default()
        };
    }
    if !memo.is_empty() {
        if let Some(view) = fast(shape, ev) {
            return view;
        }
    }
    let Some(v) = ev.json() else {
        return EventView::whole();
    };
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return EventView::whole();
    };
    remember_template(memo, v);
    let mut view = EventView::default();
    for (pos, c) in choices.iter().enumerate() {
        let idx = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
        let p = pos as u32;
        match shape {
            Shape::Chat => chat_deltas(c.get("delta"), idx, p, &mut view.deltas),
            Shape::Completions => {
                if let Some(Value::String(t)) = c.get("text") {
                    view.deltas.push(delta(idx, 0, 0, t, Loc::Path(p, 0, 0)));
                }
            }
        }
        if c.get("finish_reason").is_some_and(|f| !f.is_null()) {
            view.finishes.push(Finish::Group(idx));
        }
    }
    view
}

fn delta(group: u64, part: u64, field: u8, text: &str, at: Loc) -> Delta<'_> {
    Delta {
        key: DeltaKey { group, part, field },
        text: Cow::Borrowed(text),
        at,
    }
}

fn chat_deltas<'e>(d: Option<&'e Value>, idx: u64, pos: u32, out: &mut Vec<Delta<'e>>) {
    let Some(d) = d else { return };
    for (f, name) in CHAT_FIELDS.iter().enumerate() {
        if let Some(Value::String(t)) = d.get(*name) {
            out.push(delta(idx, 0, f as u8, t, Loc::Path(pos, f as u32, 0)));
        }
    }
    let calls = d.get("tool_calls").and_then(Value::as_array);
    for (cpos, call) in calls.into_iter().flatten().enumerate() {
        let Some(t) = call.pointer("/function/arguments").and_then(Value::as_str) else {
            continue;
        };
        let ti = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(cpos as u64);
        let at = Loc::Path(pos, u32::from(TOOL_ARGS), cpos as u32);
        out.push(delta(idx, ti, TOOL_ARGS, t, at));
    }
    if let Some(t) = d
        .pointer("/function_call/arguments")
        .and_then(Value::as_str)
    {
        let at = Loc::Path(pos, u32::from(FUNCTION_ARGS), 0);
        out.push(delta(idx, 0, FUNCTION_ARGS, t, at));
    }
}

/// The usual chunk, read from its bytes without building its document: one choice carrying
/// only its text (escape-free), not finishing, no usage, on one `data:` line. Anything else
/// takes the general path.
fn fast(shape: Shape, ev: &StreamEvent) -> Option<EventView<'_>> {
    if ev.is_changed() {
        return None;
    }
    ev.data_span()?;
    let data = ev.data()?;
    if memchr::memchr2(b'\n', b'\r', data).is_some()
        || memchr::memmem::find(data, b"\"tool_calls\"").is_some()
    {
        return None;
    }
    let (idx, piece) = match shape {
        Shape::Chat => {
            let chunk: FastChunk<'_> = serde_json::from_slice(data).ok()?;
            let [c] = chunk.choices.as_slice() else {
                return None;
            };
            let d = c.delta.as_ref()?;
            let clean = chunk.usage.is_none()
                && c.finish_reason.is_none()
                && d.refusal.is_none()
                && d.reasoning_content.is_none()
                && d.reasoning.is_none()
                && d.tool_calls.is_none()
                && d.function_call.is_none();
            (clean.then_some(c.index.unwrap_or(0))?, d.content?)
        }
        Shape::Completions => {
            let chunk: FastText<'_> = serde_json::from_slice(data).ok()?;
            let [c] = chunk.choices.as_slice() else {
                return None;
            };
            let clean = chunk.usage.is_none() && c.finish_reason.is_none();
            (clean.then_some(c.index.unwrap_or(0))?, c.text?)
        }
    };
    let (start, end) = span_of(data, piece)?;
    Some(EventView {
        deltas: vec![delta(idx, 0, 0, piece, Loc::Span(start, end))],
        ..EventView::default()
    })
}

#[derive(Deserialize)]
struct FastChunk<'a> {
    #[serde(borrow)]
    choices: Vec<FastChoice<'a>>,
    usage: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct FastChoice<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    delta: Option<FastDelta<'a>>,
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct FastDelta<'a> {
    /// Borrowed: a string with escapes fails the parse, and the event takes the general path.
    #[serde(borrow)]
    content: Option<&'a str>,
    refusal: Option<IgnoredAny>,
    reasoning_content: Option<IgnoredAny>,
    reasoning: Option<IgnoredAny>,
    tool_calls: Option<IgnoredAny>,
    function_call: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct FastText<'a> {
    #[serde(borrow)]
    choices: Vec<FastTextChoice<'a>>,
    usage: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct FastTextChoice<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    text: Option<&'a str>,
    finish_reason: Option<IgnoredAny>,
}

/// Replaces a delta's text.
pub(crate) fn write_delta(shape: Shape, ev: &mut StreamEvent, at: Loc, text: &str) {
    let (pos, f, cpos) = match at {
        Loc::Span(s, e) => return splice(ev, s, e, text),
        Loc::Path(pos, f, cpos) => (pos as usize, f, cpos as usize),
    };
    let Some(choice) = ev
        .json_mut()
        .and_then(|v| v.get_mut("choices"))
        .and_then(|c| c.get_mut(pos))
    else {
        return;
    };
    let slot = match (shape, f) {
        (Shape::Completions, _) => choice.get_mut("text"),
        (Shape::Chat, 4) => {
            choice.pointer_mut(&format!("/delta/tool_calls/{cpos}/function/arguments"))
        }
        (Shape::Chat, 5) => choice.pointer_mut("/delta/function_call/arguments"),
        (Shape::Chat, f) => CHAT_FIELDS
            .get(f as usize)
            .and_then(|name| choice.get_mut("delta").and_then(|d| d.get_mut(*name))),
    };
    if let Some(slot) = slot {
        *slot = Value::String(text.to_string());
    }
}

/// A chunk carrying text held back for `key`.
pub(crate) fn delta_event(shape: Shape, key: DeltaKey, text: &str, memo: &Memo) -> StreamEvent {
    let mut choice = Map::new();
    choice.insert("index".into(), json!(key.group));
    match (shape, key.field) {
        (Shape::Completions, _) => {
            choice.insert("text".into(), json!(text));
        }
        (Shape::Chat, TOOL_ARGS) => {
            let call = json!({"index": key.part, "function": {"arguments": text}});
            choice.insert("delta".into(), json!({"tool_calls": [call]}));
        }
        (Shape::Chat, FUNCTION_ARGS) => {
            choice.insert(
                "delta".into(),
                json!({"function_call": {"arguments": text}}),
            );
        }
        (Shape::Chat, f) => {
            let name = CHAT_FIELDS
                .get(usize::from(f))
                .copied()
                .unwrap_or("content");
            choice.insert("delta".into(), json!({ name: text }));
        }
    }
    choice.insert("finish_reason".into(), Value::Null);
    chunk(memo, Value::Object(choice))
}

fn chunk(memo: &Memo, choice: Value) -> StreamEvent {
    let mut ev = memo.clone();
    ev.insert("choices".into(), json!([choice]));
    StreamEvent::json_event(Value::Object(ev))
}

/// Ends a choice on a block: `finish_reason: "content_filter"` on the chunk the block was found
/// in, or a chunk of its own.
pub(crate) fn end_stream(
    shape: Shape,
    ev: Option<&mut StreamEvent>,
    group: Option<u64>,
    memo: &Memo,
    out: &mut Vec<StreamEvent>,
) {
    let g = group.unwrap_or(0);
    if let Some(ev) = ev {
        let choice = ev
            .json_mut()
            .and_then(|v| v.get_mut("choices"))
            .and_then(Value::as_array_mut)
            .and_then(|cs| {
                cs.iter_mut().enumerate().find(|(pos, c)| {
                    c.get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(*pos as u64)
                        == g
                })
            })
            .and_then(|(_, c)| c.as_object_mut());
        if let Some(c) = choice {
            c.insert("finish_reason".into(), json!("content_filter"));
            return;
        }
    }
    let empty = match shape {
        Shape::Chat => ("delta", json!({})),
        Shape::Completions => ("text", json!("")),
    };
    let mut choice = Map::new();
    choice.insert("index".into(), json!(g));
    choice.insert(empty.0.into(), empty.1);
    choice.insert("finish_reason".into(), json!("content_filter"));
    out.push(chunk(memo, Value::Object(choice)));
}

/// Removes the choices a block ended; false when the chunk has nothing left to send.
pub(crate) fn withhold(ev: &mut StreamEvent, closed: &[u64]) -> bool {
    let touches = ev
        .json()
        .and_then(|v| v.get("choices"))
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().enumerate().any(|(pos, c)| {
                closed.contains(&c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64))
            })
        });
    if !touches {
        return true;
    }
    let Some(v) = ev.json_mut() else { return true };
    if let Some(cs) = v.get_mut("choices").and_then(Value::as_array_mut) {
        let mut pos = 0u64;
        cs.retain(|c| {
            let idx = c.get("index").and_then(Value::as_u64).unwrap_or(pos);
            pos += 1;
            !closed.contains(&idx)
        });
        if !cs.is_empty() {
            return true;
        }
    }
    v.get("usage").is_some_and(|u| !u.is_null())
}

/// Ends one choice of a non-streamed answer: `finish_reason: "content_filter"`, and its tool
/// calls withheld whole when they held the blocked data (a cut argument is of no use).
pub(crate) fn end_answer(choice: &mut Value, held_block: &dyn Fn(&Value) -> bool) {
    if let Some(m) = choice.get_mut("message").and_then(Value::as_object_mut) {
        for field in ["tool_calls", "function_call"] {
            if m.get(field).is_some_and(held_block) {
                m.remove(field);
            }
        }
    }
    if let Some(c) = choice.as_object_mut() {
        c.insert("finish_reason".into(), json!("content_filter"));
    }
}

fn remember_template(memo: &mut Memo, chunk: &Value) {
    if !memo.is_empty() {
        return;
    }
    for k in ["id", "object", "created", "model", "system_fingerprint"] {
        if let Some(v) = chunk.get(k) {
            memo.insert(k.to_string(), v.clone());
        }
    }
    if memo.is_empty() {
        // Nothing to copy: still mark the template as taken, so the fast path applies.
        memo.insert("object".into(), json!("chat.completion.chunk"));
    }
}
