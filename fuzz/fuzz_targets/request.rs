//! A client's request through what reads it before any upstream is involved: route matching
//! (`sluice::routes::match_route`), the header map, the JSON body parse as the engine does it,
//! and the policy chain (auth → rate_limit → dlp) in its head and body phases.
//!
//! Input: a request as text, `METHOD PATH`, header lines `name: value`, a blank line, the body
//! (any bytes). The corpus holds requests with the key the config knows.
//!
//! Checks: nothing panics; a refusal is a contract error (`{"error": {"code", …}}` with the
//! reply's code and a 4xx/5xx status); a body DLP rewrote is still JSON when it was JSON.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sluice::filters::{Cx, JsonBody, Request, RequestHead, Verdict};
use sluice_fuzz::{chain, config, run, DEMO_KEY};

struct Input<'a> {
    method: Method,
    path: &'a str,
    headers: HeaderMap,
    body: &'a [u8],
}

/// Splits the text format; lines that are no header (bad name or value) are left out, as a
/// server's parser would refuse them before Sluice.
fn split(data: &[u8]) -> Option<Input<'_>> {
    let head_end = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let head = std::str::from_utf8(&data[..head_end]).ok()?;
    let body = data.get(head_end + 2..).unwrap_or(&[]);
    let mut lines = head.split('\n');
    let (method, target) = lines.next()?.split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let path = target.split('?').next().unwrap_or("");
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(n, v);
        }
    }
    Some(Input {
        method,
        path,
        headers,
        body,
    })
}

/// The body as the engine holds it: parsed when it is a JSON object.
fn body(raw: &[u8]) -> JsonBody {
    let raw = Bytes::copy_from_slice(raw);
    match serde_json::from_slice::<Value>(&raw) {
        Ok(v) if v.is_object() => JsonBody::parsed(raw, v),
        _ => JsonBody::raw(raw),
    }
}

fn check_reply(v: Verdict) {
    if let Verdict::Respond(r) = v {
        assert!(
            r.status.is_client_error() || r.status.is_server_error(),
            "{r:?}"
        );
        let doc: Value =
            serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("reply not JSON: {e}"));
        assert_eq!(
            doc["error"]["code"].as_str(),
            r.code,
            "the reply's code is in its body"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = split(data) else {
        return;
    };
    let (method, path, headers) = (&input.method, input.path, &input.headers);
    let (route, _, _) = sluice::routes::match_route(method, path);
    let mut cx = Cx::new("req_fuzz".into(), method.clone(), path.to_string());
    cx.route = route;
    let head = RequestHead {
        method,
        path,
        headers,
    };
    let verdict = run(chain().on_request_head(&head, &mut cx));
    // Exactly one `Authorization: Bearer <the known key>` (several are refused on purpose).
    let auth: Vec<&HeaderValue> = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .collect();
    let known_key =
        matches!(auth[..], [v] if v.as_bytes() == format!("Bearer {DEMO_KEY}").as_bytes());
    if let Verdict::Respond(r) = &verdict {
        assert!(
            !(known_key && r.status == 401),
            "the known key was refused: {r:?}"
        );
        return check_reply(verdict);
    }
    // The chain has auth: whatever passes it has an identity.
    assert!(
        cx.identity.is_some(),
        "a request passed auth without an identity"
    );
    let mut body = body(input.body);
    if let Some(doc) = body.json() {
        let model = doc.get("model").and_then(Value::as_str);
        if let Some(m) = model.filter(|m| config().models.iter().any(|c| c.name == *m)) {
            cx.model = Some(m.to_string());
        }
        cx.stream = doc.get("stream").and_then(Value::as_bool).unwrap_or(false);
        cx.max_tokens = doc.get("max_tokens").and_then(Value::as_u64);
    }
    let was_json = body.json().is_some();
    let mut req = Request {
        method,
        path,
        headers,
        body: &mut body,
    };
    let verdict = run(chain().on_request(&mut req, &mut cx));
    if matches!(verdict, Verdict::Respond(_)) {
        return check_reply(verdict);
    }
    if body.is_changed() && was_json {
        let out = body.to_bytes();
        assert!(
            serde_json::from_slice::<Value>(&out).is_ok(),
            "a rewritten JSON body is JSON"
        );
    }
});
