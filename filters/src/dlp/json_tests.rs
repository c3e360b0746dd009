//! [`document_is_clean`] against the exact scan, on generated documents: whenever it says
//! clean, scanning the document string by string finds nothing.

use bytes::Bytes;
use serde_json::Value;

use super::{document_is_clean, JsonScan};
use crate::dlp::{Action, DlpSettings, Scanner};
use crate::JsonBody;

/// Values a detector matches, values it nearly matches, and plain text.
const PIECES: &[&str] = &[
    "AKIAIOSFODNN7EXAMPLE",
    "AKIAIOSFODNN7EXAMPL",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "jane.doe@acme-corp.io",
    "jane.doe@",
    "@acme-corp.io",
    "4111 1111 1111 1111",
    "4111111111111111",
    "(415) 555-2671",
    "+44 20 7946 0958",
    "192.168.7.23",
    "DE89 3704 0044 0532 0130 00",
    "password=hunter2hunter2",
    "password",
    "hunter2hunter2",
    "TKT-482913",
    "TKT-",
    "Project Nightingale",
    "nightingale",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow==\n-----END RSA PRIVATE KEY-----",
    "http://user:pass@host/x",
    "mailto:jane@acme-corp.io",
    "lorem ipsum dolor sit amet",
    "the quick brown fox",
    "12",
    "v1.2.3.4",
    "",
    " ",
    "é ü ✓ 𝄞",
];

/// A small deterministic generator (xorshift).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn text(&mut self) -> String {
        let mut s = String::new();
        for _ in 0..1 + self.below(3) {
            if !s.is_empty() {
                s.push([' ', '\n', '"', '/', ':', '\t'][self.below(6)]);
            }
            s.push_str(PIECES[self.below(PIECES.len())]);
        }
        s
    }

    fn value(&mut self, depth: usize) -> Value {
        match self.below(if depth >= 3 { 4 } else { 7 }) {
            0 => Value::from([4111111111111111u64, 5551234567, 4155552671, 7, 2024][self.below(5)]),
            1 => Value::from([0.5, 4111111111111111.0, 1e-7][self.below(3)]),
            2 | 3 => Value::String(self.text()),
            // A string that holds a document (tool-call arguments).
            4 => Value::String(self.value(depth + 1).to_string()),
            5 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
            _ => Value::Object(
                (0..self.below(4))
                    .map(|_| (self.text(), self.value(depth + 1)))
                    .collect(),
            ),
        }
    }

    /// JSON text of `v`, with characters of strings escaped at random (`\u0041`, `\/`).
    fn write(&mut self, v: &Value, out: &mut String) {
        match v {
            Value::String(s) => self.write_str(s, out),
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str([",", ", ", ",\n  "][self.below(3)]);
                    }
                    self.write(x, out);
                }
                out.push(']');
            }
            Value::Object(m) => {
                out.push('{');
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.write_str(k, out);
                    out.push_str([":", ": "][self.below(2)]);
                    self.write(x, out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }

    fn write_str(&mut self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' if self.chance(30) => out.push_str("\\/"),
                c if (c as u32) < 0x20 || self.chance(4) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{:04X}", u));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

fn scanner(extra: &str) -> Scanner {
    let settings: DlpSettings = toml::from_str(&format!(
        r#"packs = ["secrets", "pii"]
        [[rules]]
        name = "ticket"
        regex = 'TKT-[0-9]{{6}}'
        [[rules]]
        name = "codename"
        keywords = ["Project Nightingale"]
        {extra}"#
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    Scanner::from_settings(&settings).unwrap_or_else(|e| panic!("{e}"))
}

/// The verdict on a body as the engine hands it over (parsed when first read).
fn clean(sc: &Scanner, raw: &str) -> bool {
    document_is_clean(sc, &JsonBody::lazy(Bytes::from(raw.to_string())))
}

/// Whether the exact scan (the document's strings, or the bytes as text) finds anything.
fn exact_finds(sc: &Scanner, raw: &[u8]) -> bool {
    let actions = vec![Action::Redact; sc.len()];
    let mut js = JsonScan::new(sc, &actions).scan_past_blocks();
    match crate::strict_json::parse(raw) {
        Ok(v) => {
            js.value(&v);
        }
        Err(_) => {
            js.bytes(raw);
        }
    }
    !js.found.is_empty()
}

#[test]
fn a_clean_verdict_is_never_wrong() {
    let sc = scanner("");
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let (mut clean_docs, mut said_clean) = (0, 0);
    for _ in 0..20_000 {
        let v = g.value(0);
        let mut raw = String::new();
        g.write(&v, &mut raw);
        let exact = exact_finds(&sc, raw.as_bytes());
        let fast = clean(&sc, &raw);
        assert!(
            !(fast && exact),
            "said clean, but the exact scan finds: {raw}"
        );
        clean_docs += usize::from(!exact);
        said_clean += usize::from(fast);
    }
    // Not vacuous: most clean documents are recognised as such.
    assert!(clean_docs > 2_000, "{clean_docs} clean documents");
    assert!(
        said_clean * 2 > clean_docs,
        "{said_clean} of {clean_docs} said clean"
    );
}

#[test]
fn escapes_nested_documents_and_text_are_judged_decoded() {
    let sc = scanner("");
    for raw in [
        r#"{"a":"\u0041KIAIOSFODNN7EXAMPLE"}"#,
        r#"{"a":"jane.doe\u0040acme-corp.io"}"#,
        r#"{"args":"{\"k\":\"\\u0041KIAIOSFODNN7EXAMPLE\"}"}"#,
        r#"{"a":"TKT\u002D482913"}"#,
        r#"{"AKIAIOSFODNN7EXAMPLE":1}"#,
        r#"{"n":4111111111111111}"#,
        "not json: AKIAIOSFODNN7EXAMPLE",
    ] {
        assert!(exact_finds(&sc, raw.as_bytes()), "{raw}");
        assert!(!clean(&sc, raw), "{raw}");
    }
    for raw in [
        r#"{"a":"lorem ipsum","n":[1,2,3],"f":0.5}"#,
        r#"{"a":"line one\nline two \u00e9","b":"{\"k\":\"v\"}"}"#,
        "plain text",
    ] {
        assert!(clean(&sc, raw), "{raw}");
    }
}

#[test]
fn a_document_that_does_not_hold_every_string_takes_the_exact_scan() {
    // Read leniently, the second `k` replaces the first: the strings no longer line up.
    let sc = scanner("");
    let raw = r#"{"k":"a\nAKIAIOSFODNN7EXAMPLE","k":"b\nc"}"#;
    let lenient: Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{e}"));
    let body = JsonBody::parsed(Bytes::from(raw), lenient);
    assert!(!document_is_clean(&sc, &body));
    assert!(!clean(&sc, raw), "strictly, it is no document");
}

#[test]
fn a_line_anchored_rule_always_takes_the_exact_scan() {
    let sc = scanner(
        r#"[[rules]]
        name = "line"
        regex = '(?m)^ref:'"#,
    );
    assert!(exact_finds(&sc, br#"{"a":"ref: 1"}"#));
    assert!(!clean(&sc, r#"{"a":"lorem ipsum"}"#));
}
