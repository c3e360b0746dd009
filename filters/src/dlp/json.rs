//! Scanning a JSON document as the strings it holds.
//!
//! Every string is scanned *decoded* (serde has already turned `\u0041KIA…` into `AKIA…`),
//! object keys and integers included. A string that is itself a JSON document (tool-call
//! `arguments`) is parsed and scanned the same way, so escapes one level down hide nothing
//! either. The document is rebuilt copy-on-write: untouched subtrees are not cloned, and a
//! rewritten document is still valid JSON with the same structure.

use serde_json::{Map, Value};

use super::redact::whole;
use super::scanner::{Match, Scanner};
use super::Action;

/// How many levels of JSON-inside-a-string are parsed.
const MAX_NESTED: usize = 3;

pub(crate) struct JsonScan<'a> {
    sc: &'a Scanner,
    actions: &'a [Action],
    ms: Vec<Match>,
    /// One entry per recorded match.
    pub found: Vec<(usize, Action)>,
    /// The detectors of `block` matches.
    pub blocked: Vec<usize>,
    /// Whether a `block` match ends the string it is in (responses: the rest is withheld), or
    /// scanning goes on past it (requests: refused whole, every detector named).
    stop_at_block: bool,
}

impl<'a> JsonScan<'a> {
    pub(crate) fn new(sc: &'a Scanner, actions: &'a [Action]) -> JsonScan<'a> {
        JsonScan {
            sc,
            actions,
            ms: Vec::new(),
            found: Vec::new(),
            blocked: Vec::new(),
            stop_at_block: true,
        }
    }

    pub(crate) fn scan_past_blocks(mut self) -> Self {
        self.stop_at_block = false;
        self
    }

    pub(crate) fn scanner(&self) -> &'a Scanner {
        self.sc
    }

    pub(crate) fn actions(&self) -> &'a [Action] {
        self.actions
    }

    /// Scans a text; returns its replacement when it changed.
    pub(crate) fn text(&mut self, s: &str) -> Option<String> {
        self.bytes(s.as_bytes())
            .map(|t| match String::from_utf8(t) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            })
    }

    /// Scans raw bytes; returns their replacement when they changed.
    pub(crate) fn bytes(&mut self, b: &[u8]) -> Option<Vec<u8>> {
        if self.sc.is_known_clean(b) {
            return None;
        }
        let w = whole(self.sc, b, self.actions, self.stop_at_block, &mut self.ms);
        self.blocked.extend(
            w.found
                .iter()
                .filter(|(_, a)| *a == Action::Block)
                .map(|(d, _)| *d),
        );
        self.found.extend(w.found);
        w.text
    }

    /// Scans every string of a document; returns the rewritten document when it changed.
    pub(crate) fn value(&mut self, v: &Value) -> Option<Value> {
        self.value_at(v, 0)
    }

    fn value_at(&mut self, v: &Value, depth: usize) -> Option<Value> {
        match v {
            Value::String(s) => {
                if depth < MAX_NESTED {
                    if let Some(inner) = nested_document(s) {
                        return self
                            .value_at(&inner, depth + 1)
                            .map(|n| Value::String(n.to_string()));
                    }
                }
                self.text(s).map(Value::String)
            }
            // Integers can be card or account numbers; floats are left alone (an embedding is
            // thousands of them, none sensitive).
            Value::Number(n) if n.is_u64() || n.is_i64() => {
                self.text(&n.to_string()).map(Value::String)
            }
            Value::Array(items) => {
                let mut out: Option<Vec<Value>> = None;
                for (i, item) in items.iter().enumerate() {
                    if let Some(new) = self.value_at(item, depth) {
                        out.get_or_insert_with(|| items.clone())[i] = new;
                    }
                }
                out.map(Value::Array)
            }
            Value::Object(map) => self.object(map, depth).map(Value::Object),
            _ => None,
        }
    }

    fn object(&mut self, map: &Map<String, Value>, depth: usize) -> Option<Map<String, Value>> {
        let mut changes: Vec<(usize, Option<String>, Option<Value>)> = Vec::new();
        for (i, (k, v)) in map.iter().enumerate() {
            let nk = self.text(k);
            let nv = self.value_at(v, depth);
            if nk.is_some() || nv.is_some() {
                changes.push((i, nk, nv));
            }
        }
        if changes.is_empty() {
            return None;
        }
        let mut out = Map::with_capacity(map.len());
        let mut next = changes.into_iter().peekable();
        for (i, (k, v)) in map.iter().enumerate() {
            let (mut key, value) = match next.peek() {
                Some((j, _, _)) if *j == i => {
                    let (_, nk, nv) = next.next().unwrap_or((i, None, None));
                    (
                        nk.unwrap_or_else(|| k.clone()),
                        nv.unwrap_or_else(|| v.clone()),
                    )
                }
                _ => (k.clone(), v.clone()),
            };
            // Two keys redacted to the same marker must not overwrite each other.
            let mut n = 2;
            while out.contains_key(&key) {
                key = format!("{key}#{n}");
                n += 1;
            }
            out.insert(key, value);
        }
        Some(out)
    }
}

/// The document inside a string that holds a JSON object or array.
fn nested_document(s: &str) -> Option<Value> {
    let t = s.trim_start();
    if !(t.starts_with('{') || t.starts_with('[')) {
        return None;
    }
    serde_json::from_str::<Value>(s)
        .ok()
        .filter(|v| v.is_object() || v.is_array())
}
