//! Bodies and SSE events, parsed once and re-encoded only when a filter changed them.

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;

/// A request or response body: the bytes as received and, when they are JSON, the parsed
/// document (parsed once, perhaps only when first read). [`JsonBody::json_mut`] marks the body
/// changed so the engine re-encodes it.
#[derive(Debug, Clone, Default)]
pub struct JsonBody {
    raw: Bytes,
    /// The document: given, or parsed (duplicate keys refused) when first asked for.
    json: OnceLock<Option<Value>>,
    dirty: bool,
}

impl JsonBody {
    /// A body whose bytes were not (or could not be) parsed as JSON.
    pub fn raw(raw: Bytes) -> JsonBody {
        JsonBody {
            raw,
            json: OnceLock::from(None),
            dirty: false,
        }
    }

    /// A body with its parsed JSON document.
    pub fn parsed(raw: Bytes, json: Value) -> JsonBody {
        JsonBody {
            raw,
            json: OnceLock::from(Some(json)),
            dirty: false,
        }
    }

    /// A body parsed only when [`JsonBody::json`] or [`JsonBody::json_mut`] first asks (as
    /// [`crate::strict_json::parse`] does: a document with a duplicate key is no document): a
    /// filter that can decide from the bytes spares building the document.
    pub fn lazy(raw: Bytes) -> JsonBody {
        JsonBody {
            raw,
            json: OnceLock::new(),
            dirty: false,
        }
    }

    /// The bytes as received (before any rewrite).
    pub fn bytes(&self) -> &Bytes {
        &self.raw
    }

    pub fn json(&self) -> Option<&Value> {
        self.json
            .get_or_init(|| crate::strict_json::parse(&self.raw).ok())
            .as_ref()
    }

    /// The document, only if it was already parsed (or given): never parses.
    pub fn json_if_parsed(&self) -> Option<&Value> {
        self.json.get().and_then(Option::as_ref)
    }

    /// The JSON document for rewriting; the body will be re-encoded.
    pub fn json_mut(&mut self) -> Option<&mut Value> {
        if self.json().is_some() {
            self.dirty = true;
        }
        self.json.get_mut().and_then(Option::as_mut)
    }

    /// Replaces a non-JSON body's bytes (e.g. redacted text).
    pub fn set_raw(&mut self, raw: Bytes) {
        self.raw = raw;
        self.json = OnceLock::from(None);
        self.dirty = true;
    }

    pub fn is_changed(&self) -> bool {
        self.dirty
    }

    /// The bytes to send on: the original ones, or the re-encoded document when changed.
    pub fn to_bytes(&self) -> Bytes {
        match (self.json.get(), self.dirty) {
            (Some(Some(v)), true) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            _ => self.raw.clone(),
        }
    }
}

/// One server-sent event of a streamed response.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    /// The event as received, with its trailing blank line (empty for a synthesized event).
    raw: Bytes,
    kind: EventKind,
    dirty: bool,
}

#[derive(Debug, Clone)]
enum EventKind {
    /// `data: {json}`.
    Json(Value),
    /// A `data:` payload parsed only when a filter asks for its JSON ([`StreamEvent::lazy`]).
    Lazy(Bytes, OnceLock<Option<Value>>),
    /// `data: [DONE]`.
    Done,
    /// Anything else (comments, other fields, unparsable data): passed on untouched.
    Other,
}

impl StreamEvent {
    /// An event as received, its JSON parsed now. `data` is the joined `data:` field, when
    /// there was one.
    pub fn received(raw: Bytes, data: Option<&[u8]>) -> StreamEvent {
        let mut ev = StreamEvent::lazy(raw, data.map(Bytes::copy_from_slice));
        if let EventKind::Lazy(d, _) = &ev.kind {
            ev.kind = match serde_json::from_slice::<Value>(d) {
                Ok(v) => EventKind::Json(v),
                Err(_) => EventKind::Other,
            };
        }
        ev
    }

    /// An event as received, its `data` parsed as JSON only when [`StreamEvent::json`] or
    /// [`StreamEvent::json_mut`] first asks: a filter that can decide from the bytes
    /// ([`StreamEvent::raw`]) spares the parse, and one that leaves the event alone sends it on
    /// byte for byte either way.
    pub fn lazy(raw: Bytes, data: Option<Bytes>) -> StreamEvent {
        let kind = match data {
            Some(d) if d.trim_ascii() == b"[DONE]" => EventKind::Done,
            Some(d) => EventKind::Lazy(d, OnceLock::new()),
            None => EventKind::Other,
        };
        StreamEvent {
            raw,
            kind,
            dirty: false,
        }
    }

    /// The event's bytes as received (empty for an event a filter added).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// An event received but not parsed (no filter needs its JSON).
    pub fn opaque(raw: Bytes) -> StreamEvent {
        StreamEvent {
            raw,
            kind: EventKind::Other,
            dirty: false,
        }
    }

    /// A new `data: {json}` event.
    pub fn json_event(v: Value) -> StreamEvent {
        StreamEvent {
            raw: Bytes::new(),
            kind: EventKind::Json(v),
            dirty: true,
        }
    }

    /// A new `event: {name}` + `data: {json}` event (the typed events of the Responses and
    /// Messages APIs, whose clients dispatch on the event name).
    pub fn named_json_event(name: &str, v: Value) -> StreamEvent {
        let mut raw = Vec::with_capacity(name.len() + 8);
        raw.extend_from_slice(b"event: ");
        raw.extend_from_slice(name.as_bytes());
        raw.push(b'\n');
        StreamEvent {
            raw: Bytes::from(raw),
            kind: EventKind::Json(v),
            dirty: true,
        }
    }

    /// The event's `data` payload as received (before any parse), when it has one.
    pub fn data(&self) -> Option<&Bytes> {
        match &self.kind {
            EventKind::Lazy(d, _) => Some(d),
            _ => None,
        }
    }

    /// Where the `data` payload sits in [`StreamEvent::raw`], when it is one slice of it (a
    /// single `data:` line): the bytes a string inside it can be spliced at.
    pub fn data_span(&self) -> Option<(usize, usize)> {
        if self.dirty {
            return None;
        }
        let d = self.data()?;
        let start = (d.as_ptr() as usize).checked_sub(self.raw.as_ptr() as usize)?;
        let end = start + d.len();
        (end <= self.raw.len()).then_some((start, end))
    }

    /// The `event:` field's value, when the event has one.
    pub fn name(&self) -> Option<&[u8]> {
        event_name(&self.raw)
    }

    /// A new `data: [DONE]` event.
    pub fn done() -> StreamEvent {
        StreamEvent {
            raw: Bytes::from_static(b"data: [DONE]\n\n"),
            kind: EventKind::Done,
            dirty: false,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.kind, EventKind::Done)
    }

    pub fn json(&self) -> Option<&Value> {
        match &self.kind {
            EventKind::Json(v) => Some(v),
            EventKind::Lazy(d, cell) => cell
                .get_or_init(|| serde_json::from_slice::<Value>(d).ok())
                .as_ref(),
            _ => None,
        }
    }

    /// The JSON payload for rewriting; the event will be re-encoded.
    pub fn json_mut(&mut self) -> Option<&mut Value> {
        if let EventKind::Lazy(d, cell) = &mut self.kind {
            let parsed = match cell.take() {
                Some(v) => v,
                None => serde_json::from_slice::<Value>(d).ok(),
            };
            self.kind = match parsed {
                Some(v) => EventKind::Json(v),
                None => EventKind::Other,
            };
        }
        match &mut self.kind {
            EventKind::Json(v) => {
                self.dirty = true;
                Some(v)
            }
            _ => None,
        }
    }

    pub fn is_changed(&self) -> bool {
        self.dirty
    }

    /// The bytes to send: the original event, or `data: {json}\n\n` when changed (after the
    /// original `event:` line, when it had one).
    pub fn to_bytes(&self) -> Bytes {
        match (&self.kind, self.dirty) {
            (EventKind::Json(v), true) => {
                let mut out = Vec::with_capacity(self.raw.len() + 16);
                if let Some(name) = event_name(&self.raw) {
                    out.extend_from_slice(b"event: ");
                    out.extend_from_slice(name);
                    out.push(b'\n');
                }
                out.extend_from_slice(b"data: ");
                // Serializing a Value cannot fail.
                let _ = serde_json::to_writer(&mut out, v);
                out.extend_from_slice(b"\n\n");
                Bytes::from(out)
            }
            _ => self.raw.clone(),
        }
    }
}

/// The value of an event's `event:` field (its first line, as the typed streams send it).
fn event_name(raw: &[u8]) -> Option<&[u8]> {
    let rest = raw.strip_prefix(b"event:")?;
    let end = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
    let v = &rest[..end];
    Some(v.strip_prefix(b" ").unwrap_or(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_event_keeps_its_name() {
        let raw = Bytes::from_static(b"event: message_start\ndata: {\"a\":1}\n\n");
        let data = raw.slice(27..34);
        let mut ev = StreamEvent::lazy(raw, Some(data));
        assert_eq!(ev.name(), Some(&b"message_start"[..]));
        assert_eq!(ev.data_span(), Some((27, 34)));
        if let Some(v) = ev.json_mut() {
            v["a"] = Value::from(2);
        }
        assert_eq!(
            &ev.to_bytes()[..],
            b"event: message_start\ndata: {\"a\":2}\n\n"
        );
        let named = StreamEvent::named_json_event("ping", serde_json::json!({}));
        assert_eq!(&named.to_bytes()[..], b"event: ping\ndata: {}\n\n");
    }
}
