//! Trust holes a hostile tenant found (issue 23), on raw sockets against a real `sluice run`
//! (its logs captured) and a recording upstream: secrets in client-chosen fields never reach
//! the audit trail or the logs, the query string is scanned, hop headers stay on their hop,
//! passthrough is authorized by its model, error and unparseable answers are scanned, and the
//! admin listener's refusals leave a trace.

use crate::support::trust;
use serde_json::{json, Value};
use trust::*;

#[test]
fn secrets_in_client_chosen_fields_never_reach_the_audit_trail_or_the_logs() {
    let up = Recorder::start();
    let gw = start(up.port, "block", "");
    let h = hostile_headers();
    let q = format!("?note={AWS}");
    let passthrough = format!("/v1/{AWS}/x{q}");
    let cases: Vec<(&str, u16, Vec<u8>)> = vec![
        ("401 path", 401, post(&passthrough, "", &h, "{}")),
        (
            "401 chat",
            401,
            post(
                &format!("/v1/chat/completions{q}"),
                "",
                &h,
                &chat("m", "hi"),
            ),
        ),
        (
            "401 agent",
            401,
            post(&format!("/v1/agents/{GHP}/run"), "", &h, "{}"),
        ),
        ("403 path", 403, post(&passthrough, NOCHAT, &h, "{}")),
        (
            "403 chat",
            403,
            post("/v1/chat/completions", NOCHAT, &h, &chat("m", "hi")),
        ),
        (
            "404 agent, no permission",
            404,
            post(&format!("/v1/agents/{GHP}/run"), NOCHAT, &h, "{}"),
        ),
        (
            "400 invalid_json",
            400,
            post(&passthrough, KEY, &h, "{oops"),
        ),
        (
            "404 agent",
            404,
            post(&format!("/v1/agents/{GHP}/run"), KEY, &h, "{}"),
        ),
        (
            "404 model",
            404,
            post("/v1/chat/completions", KEY, &h, &chat(AWS, "hi")),
        ),
        ("dlp path", 400, post(&passthrough, KEY, &h, "{}")),
        (
            "dlp body",
            400,
            post("/v1/chat/completions", KEY, &h, &chat("m", AWS)),
        ),
        (
            "429 first",
            200,
            post("/v1/chat/completions", ONE, "", &chat("m", "hi")),
        ),
        (
            "429",
            429,
            post(&format!("/v1/{AWS}{q}"), ONE, &h, "{\"model\":\"m\"}"),
        ),
    ];
    for (name, want, req) in &cases {
        let resp = raw(gw.addr, req);
        assert_eq!(status(&resp), *want, "{name}: {resp}\n{}", log_text(&gw));
        let rid = resp
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-request-id: ")
                    .map(str::to_string)
            })
            .unwrap_or_default();
        assert!(
            !rid.is_empty() && !rid.contains("sk-sluice"),
            "{name}: {resp}"
        );
    }
    let recs = wait_records(&gw, cases.len());
    assert_eq!(recs.len(), cases.len(), "{recs:?}");
    let audit = audit_text(&gw);
    let log = log_text(&gw);
    for secret in [AWS, GHP, SLUICE_ID, "IDidIDid"] {
        assert!(
            !audit.contains(secret),
            "{secret} in the audit trail: {audit}"
        );
        assert!(!log.contains(secret), "{secret} in the logs: {log}");
    }
    // The fields are kept, redacted.
    assert!(
        recs.iter().any(|r| r["agent_id"]
            .as_str()
            .is_some_and(|a| a.contains("[REDACTED"))),
        "{audit}"
    );
    assert!(
        recs.iter()
            .any(|r| r["model"].as_str().is_some_and(|a| a.contains("[REDACTED"))),
        "the unknown model is recorded, redacted: {audit}"
    );
    assert!(up.requests().iter().all(|r| !r.contains(AWS)));
}

#[test]
fn an_unknown_model_is_audited_with_the_name_it_gave() {
    let up = Recorder::start();
    let gw = start(up.port, "block", "");
    let resp = raw(
        gw.addr,
        &post(
            "/v1/chat/completions",
            KEY,
            "",
            &chat("no-such-model", "hi"),
        ),
    );
    assert_eq!(status(&resp), 404, "{resp}");
    let recs = wait_records(&gw, 1);
    assert_eq!(recs[0]["model"], "no-such-model", "{recs:?}");
}

#[test]
fn the_query_string_is_scanned_like_the_body() {
    let up = Recorder::start();
    let gw = start(up.port, "block", "");
    let resp = raw(
        gw.addr,
        &post(
            &format!("/v1/files?note={AWS}"),
            KEY,
            "",
            "{\"model\":\"m\"}",
        ),
    );
    assert_eq!(status(&resp), 400, "{resp}");
    assert!(resp.contains("dlp_blocked"), "{resp}");
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    drop(gw);
    for action in ["redact", "mask"] {
        up.clear();
        let gw = start(up.port, action, "");
        let path = format!("/v1/chat/completions?note={AWS}&x=1");
        let resp = raw(gw.addr, &post(&path, KEY, "", &chat("m", "hi")));
        assert_eq!(status(&resp), 200, "{resp}");
        let seen = up.requests();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let line = seen[0].lines().next().unwrap_or_default();
        assert!(!line.contains(AWS), "{action}: {line}");
        assert!(line.contains("x=1"), "{action}: {line}");
    }
}

#[test]
fn semicolon_paths_and_odd_ceilings_are_refused() {
    let up = Recorder::start();
    let gw = start(up.port, "block", "");
    for path in [
        "/v1/chat/completions;x",
        "/v1/chat/completions%3Bx",
        "/v1/chat%3bx/completions",
    ] {
        let resp = raw(gw.addr, &post(path, KEY, "", &chat("m", "hi")));
        assert_eq!(status(&resp), 400, "{path}: {resp}");
        assert!(resp.contains("invalid_path"), "{path}: {resp}");
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    let odd: [(&str, Value); 5] = [
        ("max_tokens", json!(100000.0)),
        ("max_tokens", json!("100000")),
        ("max_tokens", json!(-1)),
        ("max_completion_tokens", json!(1.5)),
        ("max_output_tokens", json!(true)),
    ];
    for (field, v) in odd {
        let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        b[field] = v.clone();
        let path = if field == "max_output_tokens" {
            "/v1/responses"
        } else {
            "/v1/chat/completions"
        };
        if field == "max_output_tokens" {
            b = json!({"model": "m", "input": "hi", field: v});
        }
        let resp = raw(gw.addr, &post(path, KEY, "", &b.to_string()));
        assert_eq!(status(&resp), 400, "{field}={v}: {resp}");
        assert_eq!(body_of(&resp)["error"]["param"], field, "{resp}");
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    // The largest ceiling is reserved: 100000 tokens do not fit a 1000 tokens/minute key.
    let b = json!({"model": "m", "max_completion_tokens": 0, "max_tokens": 100000,
        "messages": [{"role": "user", "content": "hi"}]});
    let resp = raw(
        gw.addr,
        &post("/v1/chat/completions", ONE, "", &b.to_string()),
    );
    assert_eq!(status(&resp), 429, "{resp}");
}

#[test]
fn hop_headers_stay_on_their_hop() {
    let up = Recorder::start();
    let gw = start(
        up.port,
        "block",
        "hide_response_headers = [\"x-internal-trace\"]",
    );
    let extra = "cookie: session=abc\r\nforwarded: for=6.6.6.6\r\nx-forwarded-for: 6.6.6.6\r\nx-forwarded-host: evil.example\r\nx-real-ip: 6.6.6.6\r\n";
    let resp = raw(
        gw.addr,
        &post("/v1/chat/completions", KEY, extra, &chat("m", "hi")),
    );
    assert_eq!(status(&resp), 200, "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(!lower.contains("secret-upstream"), "{resp}");
    assert!(!lower.contains("x-internal-trace"), "{resp}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let head = seen[0].to_ascii_lowercase();
    for h in [
        "cookie:",
        "forwarded:",
        "x-forwarded-for:",
        "x-forwarded-host:",
        "6.6.6.6",
    ] {
        assert!(!head.contains(h), "{h} went upstream: {head}");
    }
    drop(gw);
    up.clear();
    let gw = start(up.port, "block", "forward_client_ip = true");
    let resp = raw(
        gw.addr,
        &post("/v1/chat/completions", KEY, extra, &chat("m", "hi")),
    );
    assert_eq!(status(&resp), 200, "{resp}");
    let head = up.requests().concat().to_ascii_lowercase();
    assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    assert!(!head.contains("6.6.6.6"), "{head}");
}

#[test]
fn passthrough_is_authorized_by_the_model() {
    let up = Recorder::start();
    let gw = start(up.port, "block", "");
    let multipart =
        "--b\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nsecret-model\r\n--b--\r\n";
    let json_type = "application/json";
    let unreadable: Vec<(&str, &str, &str, String)> = vec![
        (
            "multipart",
            "/v1/audio/transcriptions",
            "multipart/form-data; boundary=b",
            multipart.into(),
        ),
        (
            "form",
            "/v1/x",
            "application/x-www-form-urlencoded",
            "model=secret-model".into(),
        ),
        (
            "nested",
            "/v1/batches",
            json_type,
            r#"{"requests":[{"params":{"model":"secret-model"}}]}"#.into(),
        ),
        ("null", "/v1/x", json_type, r#"{"model":null}"#.into()),
        (
            "query",
            "/v1/x?model=secret-model",
            "text/plain",
            String::new(),
        ),
        (
            "bom",
            "/v1/x",
            "text/plain",
            "\u{feff}{\"model\":\"secret-model\"}".into(),
        ),
        (
            "array",
            "/v1/x",
            "text/plain",
            r#"[{"model":"secret-model"}]"#.into(),
        ),
    ];
    let send = |path: &str, key: &str, ctype: &str, body: &str| {
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        raw(gw.addr, req.as_bytes())
    };
    for (name, path, ctype, body) in &unreadable {
        let resp = send(path, NARROW, ctype, body);
        assert_eq!(status(&resp), 403, "{name}: {resp}");
        assert_eq!(
            body_of(&resp)["error"]["code"],
            "model_not_allowed",
            "{name}: {resp}"
        );
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    // Named and allowed: forwarded; a caller allowed every model of the upstream: forwarded.
    let resp = raw(gw.addr, &post("/v1/x", NARROW, "", r#"{"model":"m"}"#));
    assert_eq!(status(&resp), 200, "{resp}");
    let resp = raw(
        gw.addr,
        &post("/v1/x", NARROW, "", r#"{"model":"secret-model"}"#),
    );
    assert_eq!(status(&resp), 403, "{resp}");
    for (name, path, ctype, body) in &unreadable {
        let resp = send(path, KEY, ctype, body);
        assert_eq!(status(&resp), 200, "{name}: {resp}");
    }
}

#[test]
fn error_bodies_and_unparseable_answers_are_scanned() {
    let up = Recorder::start();
    let gw = start(up.port, "monitor", "");
    let resp = raw(
        gw.addr,
        &post("/v1/chat/completions", KEY, "", &chat("m", "ECHO-ERROR")),
    );
    assert_eq!(status(&resp), 400, "{resp}");
    assert!(!resp.contains(AWS), "{resp}");
    for path in ["/v1/chat/completions", "/v1/responses"] {
        let body = if path == "/v1/responses" {
            json!({"model": "m", "input": "TRUNCATED"}).to_string()
        } else {
            chat("m", "TRUNCATED")
        };
        let resp = raw(gw.addr, &post(path, KEY, "", &body));
        assert!(!resp.contains("KIAIOSFODNN7EXAMPLE"), "{path}: {resp}");
        // The head may be on its way already: the body is replaced by an error in the
        // route's shape (as for any answer DLP cannot scan), never the text.
        assert!(resp.contains("dlp_blocked"), "{path}: {resp}");
    }
}

#[test]
fn the_admin_listeners_refusals_are_audited_and_counted() {
    let up = Recorder::start();
    let gw = start(up.port, "block", "");
    let before = metric(&gw, "sluice_auth_failures_total", "");
    for token in ["wrong-1", "wrong-2", ""] {
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("authorization: Bearer {token}\r\n")
        };
        let req = format!(
            "GET /admin/v1/keys HTTP/1.1\r\nhost: {}\r\n{auth}connection: close\r\n\r\n",
            gw.admin
        );
        assert_eq!(status(&raw(gw.admin, req.as_bytes())), 401);
    }
    let foreign = format!(
        "GET /admin/v1/keys HTTP/1.1\r\nhost: evil.example\r\nauthorization: Bearer {ADMIN_TOKEN}\r\nconnection: close\r\n\r\n"
    );
    assert_eq!(status(&raw(gw.admin, foreign.as_bytes())), 403);
    let recs = wait_records(&gw, 4);
    let denied_auth = recs
        .iter()
        .filter(|r| r["outcome"] == "denied_auth" && r["path"] == "/admin/v1/keys")
        .count();
    assert_eq!(denied_auth, 3, "{recs:?}");
    assert!(
        recs.iter().any(|r| r["outcome"] == "denied_permission"
            && r["path"] == "/admin/v1/keys"
            && r["client_ip"] == "127.0.0.1"),
        "{recs:?}"
    );
    assert!(!audit_text(&gw).contains("wrong-1"));
    assert_eq!(metric(&gw, "sluice_auth_failures_total", "") - before, 3.0);
}

#[test]
fn the_root_answers_without_a_key_and_v1_still_needs_one() {
    let up = Recorder::start();
    let gw = start(up.port, "block", "");
    let resp = raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status(&resp), 200, "{resp}");
    assert_eq!(body_of(&resp), json!({"service": "sluice"}));
    let resp = raw(
        gw.addr,
        b"HEAD / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status(&resp), 200, "{resp}");
    let resp = raw(
        gw.addr,
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status(&resp), 401, "{resp}");
    let recs = wait_records(&gw, 1);
    assert_eq!(recs.len(), 1, "only /v1/models is audited: {recs:?}");
    assert!(metric(&gw, "sluice_requests_total", "route=\"root\"") >= 2.0);
    // An Anthropic client is told about x-api-key.
    let req = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: sk-sluice-nope\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
    let resp = raw(gw.addr, req);
    assert_eq!(status(&resp), 401, "{resp}");
    let msg = body_of(&resp)["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("x-api-key"), "{msg}");
    assert!(!msg.contains("Bearer"), "{msg}");
}

#[test]
fn framing_errors_get_a_400() {
    let up = Recorder::start();
    let gw = start(up.port, "block", "");
    let body = chat("m", "hi");
    let cases = [
        ("bare LF in a chunk extension", format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ntransfer-encoding: chunked\r\n\r\n{:x};ext\nswallowed\r\n{body}\r\n0\r\n\r\n", body.len())),
        ("a bad chunk size", format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")),
    ];
    for (name, req) in cases {
        let resp = raw(gw.addr, req.as_bytes());
        assert_eq!(status(&resp), 400, "{name}: {resp}");
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
}
