//! A client's request through the whole request pipeline before any upstream is involved
//! (`sluice::pipeline::Call`): path normalization and the route table, the head phase (auth),
//! the body parse, the route's API facts, routing by model, the policy chain (auth →
//! rate_limit → dlp), the local routes, and the upstream request's head.
//!
//! Input: a request as text, `METHOD TARGET`, header lines `name: value`, a blank line, the
//! body (any bytes). The corpus holds requests with the key the config knows.
//!
//! Checks: nothing panics; a refusal is a contract error (its code in `error.code`, in the
//! route's API shape, a 4xx/5xx status); a body DLP rewrote is still JSON when it was JSON; the
//! known key alone is never refused as invalid; no client credential reaches the upstream head.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sluice::pipeline::{Call, Head, Step};
use sluice_fuzz::{run, state, DEMO_KEY};

struct Input<'a> {
    method: Method,
    target: &'a str,
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
        target,
        headers,
        body,
    })
}

fn check_reply(call: &Call, r: &sluice::filters::Reply) {
    if call.cx.route == sluice::filters::Route::Root {
        // `GET /` and `HEAD /` are answered 200 without a key (SPEC §3): the only local success.
        assert_eq!(r.status.as_u16(), 200, "{r:?}");
        return;
    }
    assert!(
        r.status.is_client_error() || r.status.is_server_error(),
        "{r:?}"
    );
    let body = call.render(r);
    let doc: Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("reply not JSON: {e}"));
    assert_eq!(
        doc["error"]["code"].as_str(),
        r.code,
        "the reply's code is in its body"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = split(data) else {
        return;
    };
    // Pingora hands over only targets that parse as a URI.
    let Ok(uri) = input.target.parse::<Uri>() else {
        return;
    };
    let headers = &input.headers;
    let head = Head {
        method: &input.method,
        path: uri.path(),
        query: uri.query(),
        headers,
        client_ip: None,
        listen: None,
    };
    let mut call = Call::new(state());
    // Exactly one `Authorization: Bearer <the known key>` and no other credential.
    let auth: Vec<&HeaderValue> = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .collect();
    let known_key = matches!(auth[..], [v] if v.as_bytes() == format!("Bearer {DEMO_KEY}").as_bytes())
        && !headers.contains_key("x-api-key");
    if let Some(r) = run(call.begin(&head)) {
        assert!(
            !(known_key && r.code == Some("invalid_api_key")),
            "the known key was refused: {r:?}"
        );
        return check_reply(&call, &r);
    }
    let was_json = serde_json::from_slice::<Value>(input.body).is_ok_and(|v| v.is_object());
    match run(call.on_body(&head, Bytes::copy_from_slice(input.body))) {
        Step::Reply(r) => {
            if r.error_info.is_some() {
                check_reply(&call, &r);
            }
        }
        Step::Forward => {
            if let (true, Some(sent)) = (was_json, call.held_body()) {
                assert!(
                    serde_json::from_slice::<Value>(sent).is_ok(),
                    "a JSON body left DLP as invalid JSON"
                );
            }
            let up = call
                .upstream_head(headers, &uri)
                .unwrap_or_else(|e| panic!("upstream head: {e}"));
            for name in ["authorization", "x-api-key", "api-key"] {
                assert!(
                    !headers.contains_key(name) || up.remove.iter().any(|n| n == name),
                    "{name} would reach the upstream"
                );
            }
            let query = match &up.uri {
                Some(u) => u.query(),
                None => uri.query(),
            };
            for param in query.unwrap_or("").split('&') {
                let name = param.split('=').next().unwrap_or("");
                assert!(
                    !name.eq_ignore_ascii_case("api_key") && !name.eq_ignore_ascii_case("key"),
                    "a key in the query would reach the upstream"
                );
            }
        }
    }
});
