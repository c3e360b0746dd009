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

use serde_json::{json, Map, Value};

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
        let o = step(sc, &self.buf, self.from, fin, actions, &mut ms);
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
            let Some(v) = ev.json() else {
                out.push(ev);
                continue;
            };
            if !v.get("choices").is_some_and(Value::is_array) {
                out.push(ev);
                continue;
            }
            let mut v = v.clone();
            remember_template(&mut self.template, &v);
            let keep = self.chunk(sc, actions, &mut v);
            if keep {
                if let Some(slot) = ev.json_mut() {
                    *slot = v;
                }
                out.push(ev);
            }
        }
        if end && !flushed {
            self.flush_all(sc, actions, &mut out);
        }
        *events = out;
    }

    /// Rewrites one chunk in place; false when nothing of it is left to send.
    fn chunk(&mut self, sc: &Scanner, actions: &[Action], v: &mut Value) -> bool {
        let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
            return true;
        };
        let had_choices = !choices.is_empty();
        let mut kept = Vec::with_capacity(choices.len());
        for (pos, mut choice) in choices.drain(..).enumerate() {
            let idx = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            if self.closed.contains(&idx) {
                continue;
            }
            self.choice(sc, actions, idx, &mut choice);
            kept.push(choice);
        }
        *choices = kept;
        let empty = choices.is_empty();
        // A chunk whose only choices were withheld goes too, unless it carries something else
        // the client needs (a usage report).
        !(had_choices && empty && v.get("usage").is_none_or(Value::is_null))
    }

    fn choice(&mut self, sc: &Scanner, actions: &[Action], idx: u64, choice: &mut Value) {
        let finishing = choice
            .get("finish_reason")
            .is_some_and(|f| !f.is_null());
        let Some(obj) = choice.as_object_mut() else {
            return;
        };
        let delta = obj
            .entry("delta")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(delta) = delta.as_object_mut() else {
            return;
        };
        let mut blocked = false;
        for (f, name) in TEXT_FIELDS.iter().enumerate() {
            if blocked {
                delta.remove(*name);
                continue;
            }
            if let Some(Value::String(piece)) = delta.get(*name) {
                let piece = piece.clone();
                let r = self.push(sc, actions, idx, Key::Field(f), &piece, false);
                delta.insert((*name).to_string(), Value::String(r.text));
                blocked = r.blocked.is_some();
            }
        }
        if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
            if blocked {
                calls.clear();
            }
            for (pos, call) in calls.iter_mut().enumerate() {
                let ti = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(pos as u64);
                let Some(args) = call
                    .pointer_mut("/function/arguments")
                    .filter(|a| a.is_string())
                else {
                    continue;
                };
                if blocked {
                    *args = Value::String(String::new());
                    continue;
                }
                let piece = args.as_str().unwrap_or_default().to_string();
                let r = self.push(sc, actions, idx, Key::Tool(ti), &piece, false);
                *args = Value::String(r.text);
                blocked = r.blocked.is_some();
            }
        }
        if !blocked && finishing {
            blocked = self.flush_choice(sc, actions, idx, delta);
        }
        if blocked {
            obj.insert("finish_reason".into(), json!("content_filter"));
            self.close(idx);
        } else if finishing {
            self.close(idx);
        }
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
        let r = self.channel(idx, key).push(sc, actions, piece, fin, &mut found);
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
                    let name = TEXT_FIELDS[f];
                    let before = delta.get(name).and_then(Value::as_str).unwrap_or_default();
                    let text = format!("{before}{}", r.text);
                    delta.insert(name.to_string(), Value::String(text));
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
