//! DLP's JSON scanning and redaction (`filters/src/dlp/json.rs`, through the public
//! `DlpFilter` and `Scanner`) on arbitrary bodies, as requests and as whole answers.
//!
//! Checks: nothing panics; a redacted JSON document is JSON of the same shape (objects keep
//! their number of members, arrays their length, only scalars change); a text the scanner finds
//! nothing in comes back unchanged; each string of an answer, redacted or left alone, is that
//! string redacted on its own.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sluice::filters::dlp::Action;
use sluice::filters::{Cx, Filter, JsonBody, Request, Verdict};
use sluice_fuzz::{config_dlp, redacting_dlp, run};

fn body(raw: &[u8]) -> JsonBody {
    let raw = Bytes::copy_from_slice(raw);
    match serde_json::from_slice::<Value>(&raw) {
        Ok(v) => JsonBody::parsed(raw, v),
        Err(_) => JsonBody::raw(raw),
    }
}

fn same_shape(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.values().zip(y.values()).all(|(p, q)| same_shape(p, q))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_shape(p, q))
        }
        (Value::Object(_) | Value::Array(_), _) | (_, Value::Object(_) | Value::Array(_)) => false,
        _ => true,
    }
}

/// Every string of the redacted document is the redacted string of the original (strings that
/// hold a JSON document are scanned as that document, and keys may gain a `#n` suffix: both
/// left out here). Integers are scanned as their digits.
fn strings_redacted(before: &Value, after: &Value) {
    let scanner = redacting_dlp().scanner();
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    };
    match (before, after) {
        (Value::Object(x), Value::Object(y)) => x
            .values()
            .zip(y.values())
            .for_each(|(p, q)| strings_redacted(p, q)),
        (Value::Array(x), Value::Array(y)) => {
            x.iter().zip(y).for_each(|(p, q)| strings_redacted(p, q))
        }
        (b, a) => {
            let (Some(tb), Some(ta)) = (text(b), text(a)) else {
                return;
            };
            let t = tb.trim_start();
            if t.starts_with('{') || t.starts_with('[') {
                return;
            }
            assert_eq!(ta, scanner.apply(&tb, Action::Redact), "the string {tb:?}");
        }
    }
}

fn cx() -> Cx {
    let mut cx = Cx::new(
        "req_fuzz".into(),
        Method::POST,
        "/v1/chat/completions".into(),
    );
    cx.api = &sluice::filters::api::CHAT;
    cx
}

fuzz_target!(|data: &[u8]| {
    // A whole answer, redacted.
    let mut answer = body(data);
    let before = answer.json().cloned();
    redacting_dlp().on_response_body(&mut answer, &mut cx());
    if let Some(before) = &before {
        // An answer left alone must hold nothing to redact (the filter may decide that from
        // the bytes, without the document).
        let after: Value = match answer.is_changed() {
            true => serde_json::from_slice(&answer.to_bytes())
                .unwrap_or_else(|e| panic!("a redacted answer is not JSON: {e}")),
            false => before.clone(),
        };
        assert!(
            same_shape(before, &after),
            "redaction changed the shape:\n{before}\n{after}"
        );
        strings_redacted(before, &after);
    }

    // A request under block, redact and mask rules.
    let mut request = body(data);
    let headers = HeaderMap::new();
    let mut req = Request {
        method: &Method::POST,
        path: "/v1/chat/completions",
        headers: &headers,
        body: &mut request,
    };
    let mut rcx = cx();
    match run(config_dlp().on_request(&mut req, &mut rcx)) {
        Verdict::Respond(r) => {
            assert!(r.code == Some("dlp_blocked") || r.code == Some("request_too_large"))
        }
        Verdict::Continue => {
            if request.is_changed() && request.json().is_some() {
                assert!(serde_json::from_slice::<Value>(&request.to_bytes()).is_ok());
            }
        }
    }

    // Plain text.
    if let Ok(text) = std::str::from_utf8(data) {
        let scanner = redacting_dlp().scanner();
        let out = scanner.apply(text, Action::Redact);
        if scanner.find_all(text.as_bytes()).is_empty() {
            assert_eq!(out, text, "a clean text is released unchanged");
        }
    }
});
