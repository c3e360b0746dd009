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
use crate::JsonBody;

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

/// Whether scanning a body finds nothing — string by string as a JSON document
/// ([`JsonScan::value`]), or whole as text ([`JsonScan::bytes`]) when it is not one — decided
/// mostly from its bytes: most bodies are clean, and a scan of the bytes costs a fraction of
/// the scan of each string. A body without escapes is scanned whole, and its document is never
/// built; in one with escapes the strings that hold them are scanned decoded, from the
/// document, and the bytes between them whole.
///
/// Why that is enough. A string without escapes is in the bytes verbatim, between quotes, and
/// an integer between JSON's punctuation. No detector reads a quote or that punctuation other
/// than it reads the edge of a text (word boundaries, the look-behind of start states and
/// validators, e-mail local parts, number runs: none takes them as part of a match), unless a
/// rule anchors to lines — then this answers no. So a match in such a string is a match in the
/// bytes, in the stretch between two strings with escapes too (it holds that string and its
/// quotes); the bytes scanned can hold only more (across strings, in floats, in values that
/// allow rules exempt: they are not applied here), which sends the body to the exact scan.
pub(crate) fn document_is_clean(sc: &Scanner, body: &JsonBody) -> bool {
    if body.is_changed() || sc.anchors_to_lines() {
        return false;
    }
    let (raw, mut ms) = (body.bytes(), Vec::new());
    if memchr::memchr(b'\\', raw).is_none() {
        return !sc.any_match(raw, &mut ms);
    }
    let Some(doc) = body.json() else {
        return false;
    };
    let Some((escaped, total)) = escaped_strings(sc, raw, &mut ms) else {
        return false;
    };
    // The document's strings in the order of the bytes (keys before their values; a strict
    // parse kept every key, in order: the counts agree), the ones with escapes scanned.
    let mut k = 0;
    let mut next = escaped.iter().peekable();
    let clean = each_string(doc, &mut |s| {
        let hit = next.next_if_eq(&&k).is_some();
        k += 1;
        !hit || clean_text(sc, s, &mut ms)
    });
    clean && k == total
}

/// Scans the bytes between the strings that hold escapes; returns those strings' ordinals among
/// all strings of the document and how many strings it has, or `None` when a match was found
/// (or the bytes are no JSON).
fn escaped_strings(sc: &Scanner, raw: &[u8], ms: &mut Vec<Match>) -> Option<(Vec<usize>, usize)> {
    // Outside strings valid JSON has no `\`, and a `"` opens a string.
    let (mut i, mut stretch, mut ordinal) = (0, 0, 0);
    let mut escaped = Vec::new();
    while let Some(q) = memchr::memchr(b'"', &raw[i..]) {
        let open = i + q;
        let mut j = open + 1;
        let mut has_escape = false;
        let close = loop {
            let k = memchr::memchr2(b'"', b'\\', raw.get(j..)?)?;
            if raw[j + k] == b'"' {
                break j + k;
            }
            has_escape = true;
            j += k + 2;
        };
        if has_escape {
            if sc.any_match(&raw[stretch..=open], ms) {
                return None;
            }
            escaped.push(ordinal);
            stretch = close;
        }
        ordinal += 1;
        i = close + 1;
    }
    (!sc.any_match(&raw[stretch..], ms)).then_some((escaped, ordinal))
}

/// Calls `f` on every string of `v` (keys too) in document order, while it returns true.
fn each_string(v: &Value, f: &mut impl FnMut(&str) -> bool) -> bool {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().all(|x| each_string(x, f)),
        Value::Object(map) => map.iter().all(|(k, x)| f(k) && each_string(x, f)),
        _ => true,
    }
}

/// A decoded string is clean: as text, and as the document it may hold (the exact scan parses
/// those); one with escapes of its own is left to the exact scan.
fn clean_text(sc: &Scanner, s: &str, ms: &mut Vec<Match>) -> bool {
    let nested = matches!(s.trim_start().as_bytes().first(), Some(b'{' | b'['));
    if nested && memchr::memchr(b'\\', s.as_bytes()).is_some() {
        return false;
    }
    !sc.any_match(s.as_bytes(), ms)
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

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
