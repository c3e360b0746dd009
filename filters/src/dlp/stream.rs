//! Streamed responses: each text of the answer is scanned as it flows, for every API.
//!
//! The route's [`Api`] splits each event into keyed deltas ([`DeltaKey`]: a chat choice's
//! content or a tool call's arguments, a Responses item's content part, an Anthropic content
//! block …). Each key is a [`Channel`]: its pieces are appended, decided with [`step`], and what
//! is decided is released in the same event; only the bytes that could still become (part of) a
//! match stay behind, usually the last partial word. They are released with a later piece, or
//! in an event of their own when the key finishes (the API says which event finishes it), or
//! when the upstream's stream ends. So the concatenated deltas a client receives equal the
//! redacted whole text. Events that repeat a whole text (the Responses API's `*.done` events)
//! and events the API does not split are scanned whole, each on its own.
//!
//! A `block` match ends the answer the API's way ([`Api::end_stream`]): the text before the
//! match is released, and everything the upstream sends afterwards for that choice (or, for
//! APIs whose answer ends whole, for the whole answer) is dropped.

use super::json::JsonScan;
use super::redact::step;
use super::scanner::{Match, Scanner};
use super::Action;
use crate::api::{Api, BlockScope, DeltaKey, Loc, Memo};
use crate::StreamEvent;

/// Look-behind kept before the undecided part of a channel (word boundaries, trigger checks,
/// validators).
const CONTEXT: usize = 2 * super::validate::LOOK_BEHIND;

#[derive(Debug, Clone)]
struct Channel {
    key: DeltaKey,
    /// Context, then the undecided text from `from` on.
    buf: Vec<u8>,
    from: usize,
}

/// What a piece of text released.
struct Released {
    text: String,
    blocked: bool,
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
            blocked: o.blocked.is_some(),
        }
    }

    fn pending(&self) -> bool {
        self.buf.len() > self.from
    }
}

/// Where a block was found: the group it ends (`None`: the whole answer), and whether it was in
/// text scanned whole (that event is withheld).
#[derive(Clone, Copy)]
struct Block {
    group: Option<u64>,
    whole_event: bool,
}

impl Block {
    fn at(group: Option<u64>) -> Block {
        Block {
            group,
            whole_event: false,
        }
    }
}

/// The per-request state of a streamed response.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamState {
    channels: Vec<Channel>,
    /// Groups a block ended.
    closed: Vec<u64>,
    /// The whole answer was ended by a block.
    ended: bool,
    /// The API's own memory of the stream, for the events it adds.
    memo: Memo,
    /// Set once the stream's content encoding made it unscannable.
    pub(crate) failed: bool,
    /// Recorded matches not yet handed to the request context.
    pub(crate) found: Vec<(usize, Action)>,
}

/// The scanner and actions of one direction, with the route's API.
pub(crate) struct Scan<'a> {
    pub(crate) api: &'a dyn Api,
    pub(crate) sc: &'a Scanner,
    pub(crate) actions: &'a [Action],
}

impl StreamState {
    /// Handles one batch of events; `end` is true after the upstream's last byte.
    pub(crate) fn on_events(&mut self, s: &Scan<'_>, events: &mut Vec<StreamEvent>, end: bool) {
        let mut out = Vec::with_capacity(events.len() + 1);
        for ev in events.drain(..) {
            self.event(s, ev, &mut out);
        }
        if end && !self.ended {
            if let Some(g) = self.flush(s, |_| true, &mut out) {
                // Cut off after the text that blocked: end it without an event to patch.
                self.end(s, None, Block::at(Some(g)), &mut out);
            }
        }
        *events = out;
    }

    fn event(&mut self, s: &Scan<'_>, mut ev: StreamEvent, out: &mut Vec<StreamEvent>) {
        if self.ended {
            if s.api.passes_after_end(&ev) {
                out.push(ev);
            }
            return;
        }
        let mut memo = std::mem::take(&mut self.memo);
        let view = s.api.read_event(&ev, &mut memo);
        self.memo = memo;
        let whole_scope = s.api.block_scope() == BlockScope::Whole;
        let mut changes: Vec<(Loc, String)> = Vec::new();
        let mut block: Option<Block> = None;
        for d in &view.deltas {
            let g = d.key.group;
            let after_block = block.is_some_and(|b| whole_scope || b.group == Some(g));
            if after_block || self.closed.contains(&g) {
                changes.push((d.at, String::new()));
                continue;
            }
            let fin = view.finishes.iter().any(|f| f.covers(d.key));
            let r = self.push(s, d.key, &d.text, fin);
            if r.blocked {
                block = Some(Block {
                    group: Some(g),
                    whole_event: false,
                });
            }
            if r.text != d.text {
                changes.push((d.at, r.text));
            }
            if fin || r.blocked {
                self.channels.retain(|c| c.key != d.key);
            }
        }
        let finishes = view.finishes.clone();
        let (scan_whole, group) = (view.scan_whole, view.group);
        drop(view);
        let mut pre = Vec::new();
        if block.is_none() {
            for f in finishes {
                if let Some(g) = self.flush(s, |k| f.covers(k), &mut pre) {
                    // An event that repeats the text must not go out after a block in it.
                    block = Some(Block {
                        group: Some(g),
                        whole_event: scan_whole,
                    });
                    break;
                }
            }
        }
        for (at, text) in changes {
            s.api.write_delta(&mut ev, at, &text);
        }
        if scan_whole && block.is_none() && self.scan_whole_event(s, &mut ev) {
            block = Some(Block {
                group,
                whole_event: true,
            });
        }
        out.append(&mut pre);
        match block {
            None => {
                if self.closed.is_empty() || s.api.withhold(&mut ev, &self.closed) {
                    out.push(ev);
                }
            }
            Some(b) => self.end(s, Some(ev), b, out),
        }
    }

    /// Ends the answer (or a group of it) on a block found in `ev` (withheld when the block was
    /// in text it carries whole).
    fn end(&mut self, s: &Scan<'_>, ev: Option<StreamEvent>, b: Block, out: &mut Vec<StreamEvent>) {
        let mut tail = Vec::new();
        let memo = std::mem::take(&mut self.memo);
        match ev {
            Some(_) if b.whole_event => s.api.end_stream(None, b.group, &memo, &mut tail),
            None => s.api.end_stream(None, b.group, &memo, &mut tail),
            Some(mut ev) => {
                s.api.end_stream(Some(&mut ev), b.group, &memo, &mut tail);
                let others: Vec<u64> = self
                    .closed
                    .iter()
                    .copied()
                    .filter(|g| Some(*g) != b.group)
                    .collect();
                if others.is_empty() || s.api.withhold(&mut ev, &others) {
                    out.push(ev);
                }
            }
        }
        self.memo = memo;
        out.append(&mut tail);
        match b.group {
            Some(g) if s.api.block_scope() == BlockScope::Group => {
                self.channels.retain(|c| c.key.group != g);
                if !self.closed.contains(&g) {
                    self.closed.push(g);
                }
            }
            _ => {
                self.channels.clear();
                self.ended = true;
            }
        }
    }

    /// Releases what the channels `which` selects hold back, in events of their own; returns
    /// the group of a block this ran into (the flushing stops there).
    fn flush(
        &mut self,
        s: &Scan<'_>,
        which: impl Fn(DeltaKey) -> bool,
        out: &mut Vec<StreamEvent>,
    ) -> Option<u64> {
        let keys: Vec<DeltaKey> = self
            .channels
            .iter()
            .filter(|c| which(c.key))
            .map(|c| c.key)
            .collect();
        for key in keys {
            let pending = self.channels.iter().any(|c| c.key == key && c.pending());
            let r = if pending {
                self.push(s, key, "", true)
            } else {
                Released {
                    text: String::new(),
                    blocked: false,
                }
            };
            self.channels.retain(|c| c.key != key);
            if !r.text.is_empty() {
                if let Some(ev) = s.api.delta_event(key, &r.text, &self.memo) {
                    out.push(ev);
                }
            }
            if r.blocked {
                return Some(key.group);
            }
        }
        None
    }

    fn push(&mut self, s: &Scan<'_>, key: DeltaKey, piece: &str, fin: bool) -> Released {
        let i = match self.channels.iter().position(|c| c.key == key) {
            Some(i) => i,
            None => {
                self.channels.push(Channel {
                    key,
                    buf: Vec::new(),
                    from: 0,
                });
                self.channels.len() - 1
            }
        };
        let mut found = std::mem::take(&mut self.found);
        let r = self.channels[i].push(s.sc, s.actions, piece, fin, &mut found);
        self.found = found;
        r
    }

    /// Scans every string of an event on its own (its bytes, when it is not JSON); true when
    /// a `block` matched (the event is then withheld).
    fn scan_whole_event(&mut self, s: &Scan<'_>, ev: &mut StreamEvent) -> bool {
        let mut js = JsonScan::new(s.sc, s.actions);
        if ev.json().is_some() {
            let new = ev.json().and_then(|v| js.value(v));
            self.found.append(&mut js.found);
            if !js.blocked.is_empty() {
                return true;
            }
            if let (Some(n), Some(slot)) = (new, ev.json_mut()) {
                *slot = n;
            }
            return false;
        }
        let raw = ev.to_bytes();
        if raw.is_empty() || ev.is_done() {
            return false;
        }
        let new = js.bytes(&raw);
        self.found.append(&mut js.found);
        if !js.blocked.is_empty() {
            return true;
        }
        if let Some(mut b) = new {
            // A match that ran into the event's blank line must not take the framing along.
            if raw.ends_with(b"\n\n") && !b.ends_with(b"\n\n") {
                b.extend_from_slice(b"\n\n");
            }
            *ev = StreamEvent::received(bytes::Bytes::from(b), None);
        }
        false
    }
}
