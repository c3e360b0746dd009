//! Streamed responses: each choice's text is scanned as it flows.
//!
//! A chat completion stream carries, per choice, a few texts that arrive piece by piece: the
//! `content`, a `refusal`, reasoning text, and each tool call's `arguments`. Each is a
//! [`Channel`]: the pieces are appended, decided with [`step`], and what is decided is released
//! in the same event; only the bytes that could still become (part of) a match stay behind,
//! usually the last partial word. They are released with a later piece, or when the choice
//! finishes (`finish_reason`), or when the upstream's stream ends.
//!
//! A `block` match ends its choice the OpenAI way: the text before the match is released, the
//! event gets `finish_reason: "content_filter"`, and everything the upstream sends for that
//! choice afterwards is dropped.

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::json::JsonScan;
use super::redact::step;
use super::scanner::{Match, Scanner};
use super::Action;
use crate::StreamEvent;

/// Look-behind kept before the undecided part of a channel (word boundaries, trigger checks,
/// validators).
const CONTEXT: usize = 2 * super::validate::LOOK_BEHIND;

/// The incremental text fields of a chat completion chunk's `delta`.
const TEXT_FIELDS: [&str; 4] = ["content", "refusal", "reasoning_content", "reasoning"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Field(usize),
    Tool(u64),
}

#[derive(Debug, Clone)]
struct Channel {
    choice: u64,
    key: Key,
    /// Context, then the undecided text from `from` on.
    buf: Vec<u8>,
    from: usize,
}

/// What a piece of text released.
struct Released {
    text: String,
    blocked: Option<usize>,
}

impl Channel {
    fn push(
        &mut self,
        sc: &Scanner,
        actions: &[Action],
        piece: &str,
        fin: bool,
        found: &mut Vec<(usize, Action)>,
    ) -> Released {
        self.buf.extend_from_slice(piece.as_bytes());
        let mut ms: Vec<Match> = Vec::new();
        let o = step(sc, &self.buf, self.from, fin, actions, true, &mut ms);
        found.extend(o.found.iter().copied());
        let bytes = match o.text {
            Some(t) => t,
            None => self.buf[self.from..o.upto].to_vec(),
        };
        self.from = o.upto;
        if self.from > CONTEXT {
            self.buf.drain(..self.from - CONTEXT);
            self.from = CONTEXT;
        }
        let text = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        Released {
            text,
            blocked: o.blocked,
        }
    }
}

/// The per-request state of a streamed response.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamState {
    channels: Vec<Channel>,
    /// Choices ended by a `block` or by their own `finish_reason`.
    closed: Vec<u64>,
    /// The identifying fields of the last chunk, for the events this filter adds.
    template: Map<String, Value>,
    /// Set once the stream's content encoding made it unscannable.
    pub(crate) failed: bool,
    /// Recorded matches not yet handed to the request context.
    pub(crate) found: Vec<(usize, Action)>,
}

impl StreamState {
    fn channel(&mut self, choice: u64, key: Key) -> &mut Channel {
        let pos = self
            .channels
            .iter()
            .position(|c| c.choice == choice && c.key == key);
        let i = match pos {
            Some(i) => i,
            None => {
                self.channels.push(Channel {
                    choice,
                    key,
                    buf: Vec::new(),
                    from: 0,
                });
                self.channels.len() - 1
            }
        };
        &mut self.channels[i]
    }

    /// Handles one batch of events; `end` is true after the upstream's last byte.
    pub(crate) fn on_events(
        &mut self,
        sc: &Scanner,
        actions: &[Action],
        events: &mut Vec<StreamEvent>,
        end: bool,
    ) {
        let mut out = Vec::with_capacity(events.len() + 1);
        let mut flushed = false;
        for mut ev in events.drain(..) {
            if ev.is_done() {
                self.flush_all(sc, actions, &mut out);
                flushed = true;
                out.push(ev);
                continue;
            }
            match self.fast_content(sc, actions, &ev) {
                Fast::No => {}
                Fast::Keep => {
                    out.push(ev);
                    continue;
                }
                Fast::Splice(new) => {
                    out.push(new);
                    continue;
                }
                Fast::Patch(p) => {
                    if let Some(v) = ev.json_mut() {
                        if !apply(v, vec![p]) {
                            continue;
                        }
                    }
                    out.push(ev);
                    continue;
                }
            }
            let Some(v) = ev.json() else {
                if let Some(ev) = self.opaque_event(sc, actions, ev) {
                    out.push(ev);
                }
                continue;
            };
            let Some(choices) = v.get("choices").and_then(Value::as_array) else {
                if let Some(ev) = self.other_event(sc, actions, ev) {
                    out.push(ev);
                }
                continue;
            };
            remember_template(&mut self.template, v);
            // Decide from the event as received; rewrite it only when something changed, so an
            // event whose text passes as it came keeps its bytes.
            let patches: Vec<Patch> = choices
                .iter()
                .enumerate()
                .filter_map(|(pos, c)| self.choice(sc, actions, pos, c))
                .collect();
            if patches.is_empty() {
                out.push(ev);
                continue;
            }
            if let Some(v) = ev.json_mut() {
                if !apply(v, patches) {
                    continue;
                }
            }
            out.push(ev);
        }
        if end && !flushed {
            self.flush_all(sc, actions, &mut out);
        }
        *events = out;
    }

    /// The usual chunk, decided from its bytes without building its JSON document: one choice
    /// whose `delta` carries only `content` (without escapes), not finishing, no usage, on a
    /// `data: {json}` line. Its text goes through the same channel as in [`Self::choice`]; a
    /// changed text is spliced into the event's bytes in place of the old string, so the rest
    /// of the event stays byte for byte. Anything else, and the first chunk (whose identifying
    /// fields the events this filter adds copy), takes the general path.
    fn fast_content(&mut self, sc: &Scanner, actions: &[Action], ev: &StreamEvent) -> Fast {
        if self.template.is_empty() || ev.is_changed() {
            return Fast::No;
        }
        let raw = ev.raw();
        let Some(data) = raw
            .strip_prefix(b"data: ")
            .and_then(|r| r.strip_suffix(b"\n\n"))
        else {
            return Fast::No;
        };
        // Multi-line data, and tool-call chunks (which the general path handles), are told from
        // the bytes before any parse.
        if memchr::memchr2(b'\n', b'\r', data).is_some()
            || memchr::memmem::find(data, b"\"tool_calls\"").is_some()
        {
            return Fast::No;
        }
        let Ok(chunk) = serde_json::from_slice::<FastChunk<'_>>(data) else {
            return Fast::No;
        };
        let [choice] = chunk.choices.as_slice() else {
            return Fast::No;
        };
        let Some(delta) = &choice.delta else {
            return Fast::No;
        };
        let Some(piece) = delta.content else {
            return Fast::No;
        };
        let idx = choice.index.unwrap_or(0);
        if chunk.usage.is_some()
            || choice.finish_reason.is_some()
            || delta.refusal.is_some()
            || delta.reasoning_content.is_some()
            || delta.reasoning.is_some()
            || delta.tool_calls.is_some()
            || self.closed.contains(&idx)
        {
            return Fast::No;
        }
        // Where the string sits in `data`: a borrowed string is the bytes between its quotes.
        let start = (piece.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
        let end = start + piece.len();
        if start == 0 || end >= data.len() || data[start - 1] != b'"' || data[end] != b'"' {
            return Fast::No;
        }
        let r = self.push(sc, actions, idx, Key::Field(0), piece, false);
        if r.blocked.is_some() {
            let mut p = Patch::new(0);
            if r.text != piece {
                p.fields.push((TEXT_FIELDS[0], Some(r.text)));
            }
            p.finish = true;
            self.close(idx);
            return Fast::Patch(p);
        }
        if r.text == piece {
            return Fast::Keep;
        }
        let mut out = Vec::with_capacity(raw.len() + r.text.len() + 8);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&data[..start - 1]);
        // Serializing a string cannot fail.
        let _ = serde_json::to_writer(&mut out, &r.text);
        out.extend_from_slice(&data[end + 1..]);
        let data_len = out.len() - 6;
        out.extend_from_slice(b"\n\n");
        let raw = Bytes::from(out);
        let data = raw.slice(6..6 + data_len);
        Fast::Splice(StreamEvent::lazy(raw, Some(data)))
    }

    /// A JSON event that is not a chat completion chunk (another API's stream through the
    /// passthrough route): each of its strings is scanned on its own, as a whole. A secret split
    /// across two such events is not seen; one within an event is.
    fn other_event(
        &mut self,
        sc: &Scanner,
        actions: &[Action],
        mut ev: StreamEvent,
    ) -> Option<StreamEvent> {
        let mut js = JsonScan::new(sc, actions);
        let new = ev.json().and_then(|v| js.value(v));
        self.found.append(&mut js.found);
        if let Some(n) = new {
            if let Some(slot) = ev.json_mut() {
                *slot = n;
            }
        }
        Some(ev)
    }

    /// An event whose data is not JSON: its bytes are scanned as a whole; one with a `block`
    /// finding is dropped.
    fn opaque_event(
        &mut self,
        sc: &Scanner,
        actions: &[Action],
        ev: StreamEvent,
    ) -> Option<StreamEvent> {
        if ev.to_bytes().is_empty() {
            return Some(ev);
        }
        let mut js = JsonScan::new(sc, actions);
        let new = js.bytes(&ev.to_bytes());
        self.found.append(&mut js.found);
        if !js.blocked.is_empty() {
            return None;
        }
        match new {
            Some(mut b) => {
                // A match that ran into the event's blank line must not take the framing along.
                if ev.to_bytes().ends_with(b"\n\n") && !b.ends_with(b"\n\n") {
                    b.extend_from_slice(b"\n\n");
                }
                Some(StreamEvent::received(Bytes::from(b), None))
            }
            None => Some(ev),
        }
    }

    /// Scans one choice of a chunk; returns how to rewrite it, when it must change.
    fn choice(
        &mut self,
        sc: &Scanner,
        actions: &[Action],
        pos: usize,
        choice: &Value,
    ) -> Option<Patch> {
        let idx = choice
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(pos as u64);
        let mut p = Patch::new(pos);
        if self.closed.contains(&idx) {
            p.remove = true;
            return Some(p);
        }
        let finishing = choice.get("finish_reason").is_some_and(|f| !f.is_null());
        let delta = choice.get("delta");
        let mut blocked = false;
        for (f, name) in TEXT_FIELDS.iter().enumerate() {
            let Some(Value::String(piece)) = delta.and_then(|d| d.get(*name)) else {
                continue;
            };
            if blocked {
                p.fields.push((name, None));
                continue;
            }
            let r = self.push(sc, actions, idx, Key::Field(f), piece, false);
            blocked = r.blocked.is_some();
            if r.text != *piece {
                p.fields.push((name, Some(r.text)));
            }
        }
        let calls = delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array);
        for (cpos, call) in calls.into_iter().flatten().enumerate() {
            let Some(piece) = call.pointer("/function/arguments").and_then(Value::as_str) else {
                continue;
            };
            if blocked {
                p.tool_args.push((cpos, String::new()));
                continue;
            }
            let ti = call
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(cpos as u64);
            let r = self.push(sc, actions, idx, Key::Tool(ti), piece, false);
            blocked = r.blocked.is_some();
            if r.text != piece {
                p.tool_args.push((cpos, r.text));
            }
        }
        if !blocked && finishing {
            let mut extra = Map::new();
            blocked = self.flush_choice(sc, actions, idx, &mut extra);
            if !extra.is_empty() {
                p.flush = Some(extra);
            }
        }
        if blocked {
            p.finish = true;
            self.close(idx);
        } else if finishing {
            self.close(idx);
        }
        (!p.is_noop()).then_some(p)
    }

    fn push(
        &mut self,
        sc: &Scanner,
        actions: &[Action],
        idx: u64,
        key: Key,
        piece: &str,
        fin: bool,
    ) -> Released {
        let mut found = std::mem::take(&mut self.found);
        let r = self
            .channel(idx, key)
            .push(sc, actions, piece, fin, &mut found);
        self.found = found;
        r
    }

    /// Releases everything a choice holds back into `delta`; true when that hit a block.
    fn flush_choice(
        &mut self,
        sc: &Scanner,
        actions: &[Action],
        idx: u64,
        delta: &mut Map<String, Value>,
    ) -> bool {
        let keys: Vec<Key> = self
            .channels
            .iter()
            .filter(|c| c.choice == idx && c.buf.len() > c.from)
            .map(|c| c.key)
            .collect();
        for key in keys {
            let r = self.push(sc, actions, idx, key, "", true);
            match key {
                Key::Field(f) => {
                    delta.insert(TEXT_FIELDS[f].to_string(), Value::String(r.text));
                }
                Key::Tool(ti) => append_tool_args(delta, ti, &r.text),
            }
            if r.blocked.is_some() {
                return true;
            }
        }
        false
    }

    fn close(&mut self, idx: u64) {
        self.channels.retain(|c| c.choice != idx);
        if !self.closed.contains(&idx) {
            self.closed.push(idx);
        }
    }

    /// At the end of the stream: releases what every open choice holds, in added events.
    fn flush_all(&mut self, sc: &Scanner, actions: &[Action], out: &mut Vec<StreamEvent>) {
        let mut open: Vec<u64> = self.channels.iter().map(|c| c.choice).collect();
        open.sort_unstable();
        open.dedup();
        for idx in open {
            let mut delta = Map::new();
            let blocked = self.flush_choice(sc, actions, idx, &mut delta);
            self.close(idx);
            let has_text = delta.values().any(|v| match v {
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => false,
            });
            if !has_text && !blocked {
                continue;
            }
            let mut ev = self.template.clone();
            let finish = if blocked {
                json!("content_filter")
            } else {
                Value::Null
            };
            ev.insert(
                "choices".into(),
                json!([{"index": idx, "delta": Value::Object(delta), "finish_reason": finish}]),
            );
            out.push(StreamEvent::json_event(Value::Object(ev)));
        }
    }
}

/// What [`StreamState::fast_content`] decided.
enum Fast {
    /// Not the usual chunk: take the general path.
    No,
    /// Send the event as it came.
    Keep,
    /// Send this instead.
    Splice(StreamEvent),
    /// A block ended the choice: apply this to the event's document.
    Patch(Patch),
}

/// The parts of a chunk the fast path reads; the rest is skipped unparsed.
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
}

/// How one choice of a chunk must change.
struct Patch {
    /// Its position in the chunk's `choices`.
    pos: usize,
    /// The choice is withheld (its answer was ended by a block, or had finished).
    remove: bool,
    /// Text fields of `delta` to replace (`None`: remove).
    fields: Vec<(&'static str, Option<String>)>,
    /// Tool calls (by position in `delta.tool_calls`) whose arguments to replace.
    tool_args: Vec<(usize, String)>,
    /// Held-back text released at the choice's end, to append to its `delta`.
    flush: Option<Map<String, Value>>,
    /// Set `finish_reason: "content_filter"`.
    finish: bool,
}

impl Patch {
    fn new(pos: usize) -> Patch {
        Patch {
            pos,
            remove: false,
            fields: Vec::new(),
            tool_args: Vec::new(),
            flush: None,
            finish: false,
        }
    }

    fn is_noop(&self) -> bool {
        !self.remove
            && self.fields.is_empty()
            && self.tool_args.is_empty()
            && self.flush.is_none()
            && !self.finish
    }
}

/// Applies patches to a chunk; false when nothing of it is left to send.
fn apply(v: &mut Value, patches: Vec<Patch>) -> bool {
    let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
        return true;
    };
    let mut removed = Vec::new();
    for p in patches {
        if p.remove {
            removed.push(p.pos);
            continue;
        }
        let Some(choice) = choices.get_mut(p.pos).and_then(Value::as_object_mut) else {
            continue;
        };
        if p.finish {
            choice.insert("finish_reason".into(), json!("content_filter"));
        }
        let delta = choice
            .entry("delta")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(delta) = delta.as_object_mut() else {
            continue;
        };
        for (name, text) in p.fields {
            match text {
                Some(t) => {
                    delta.insert(name.to_string(), Value::String(t));
                }
                None => {
                    delta.remove(name);
                }
            }
        }
        for (cpos, text) in p.tool_args {
            if let Some(a) = delta
                .get_mut("tool_calls")
                .and_then(|c| c.get_mut(cpos))
                .and_then(|c| c.pointer_mut("/function/arguments"))
            {
                *a = Value::String(text);
            }
        }
        for (k, add) in p.flush.into_iter().flatten() {
            match (k.as_str(), add) {
                ("tool_calls", Value::Array(calls)) => {
                    for c in calls {
                        let ti = c.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let text = c
                            .pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        append_tool_args(delta, ti, text);
                    }
                }
                (_, Value::String(add)) => {
                    let before = delta.get(&k).and_then(Value::as_str).unwrap_or_default();
                    let text = format!("{before}{add}");
                    delta.insert(k, Value::String(text));
                }
                _ => {}
            }
        }
    }
    let had_choices = !choices.is_empty();
    for pos in removed.into_iter().rev() {
        if pos < choices.len() {
            choices.remove(pos);
        }
    }
    // A chunk whose only choices were withheld goes too, unless it carries something else the
    // client needs (a usage report).
    !(had_choices && choices.is_empty() && v.get("usage").is_none_or(Value::is_null))
}

fn append_tool_args(delta: &mut Map<String, Value>, ti: u64, text: &str) {
    let calls = delta
        .entry("tool_calls")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(calls) = calls.as_array_mut() else {
        return;
    };
    let existing = calls
        .iter_mut()
        .find(|c| c.get("index").and_then(Value::as_u64) == Some(ti))
        .and_then(|c| c.pointer_mut("/function/arguments"));
    match existing {
        Some(Value::String(s)) => s.push_str(text),
        _ => calls.push(json!({"index": ti, "function": {"arguments": text}})),
    }
}

fn remember_template(t: &mut Map<String, Value>, chunk: &Value) {
    if !t.is_empty() {
        return;
    }
    for k in ["id", "object", "created", "model", "system_fingerprint"] {
        if let Some(v) = chunk.get(k) {
            t.insert(k.to_string(), v.clone());
        }
    }
}
