//! Requests and non-streamed responses: decoded JSON strings, structure-preserving rewrites,
//! actions per direction and per rule, failing closed, findings and metrics.

use crate::support::dlp::*;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use sluice_filters::dlp::{Action, DlpFilter, DlpSettings, RuleSettings};
use sluice_filters::{Filter, JsonBody, Outcome, Request, ResponseHead, Shared, Verdict};

/// The body as the engine hands it over: raw bytes, parsed when they are JSON.
fn body_of(raw: &str) -> JsonBody {
    match serde_json::from_str::<Value>(raw) {
        Ok(v) => JsonBody::parsed(Bytes::from(raw.to_string()), v),
        Err(_) => JsonBody::raw(Bytes::from(raw.to_string())),
    }
}

async fn send(
    f: &DlpFilter,
    body: &mut JsonBody,
    headers: &HeaderMap,
) -> (Verdict, sluice_filters::Cx) {
    let mut c = cx();
    let mut req = Request {
        method: &Method::POST,
        path: "/v1/chat/completions",
        headers,
        body,
    };
    let v = f.on_request(&mut req, &mut c).await;
    (v, c)
}

fn settings(request_action: Action) -> DlpSettings {
    DlpSettings {
        request_action,
        ..DlpSettings::default()
    }
}

fn sent(body: &JsonBody) -> Value {
    serde_json::from_slice(&body.to_bytes()).expect("the forwarded body is valid JSON")
}

#[tokio::test]
async fn escaped_secrets_are_found_and_blocked_without_echoing_them() {
    let f = filter();
    let raw = r#"{"model":"m","messages":[{"role":"user","content":"use \u0041KIAIOSFODNN7EXAMPLE and \u006aohn@example.com"}]}"#;
    let mut body = body_of(raw);
    let (v, c) = send(&f, &mut body, &HeaderMap::new()).await;
    let Verdict::Respond(reply) = v else {
        panic!("not blocked")
    };
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.outcome, Outcome::DlpBlocked);
    let err: Value = serde_json::from_slice(&reply.body).expect("JSON error");
    assert_eq!(err["error"]["type"], "dlp_violation");
    assert_eq!(err["error"]["code"], "dlp_blocked");
    assert!(err["error"]["param"].is_null());
    let msg = err["error"]["message"].as_str().expect("message");
    assert!(
        msg.contains("aws_access_key") && msg.contains("email"),
        "{msg}"
    );
    assert!(!msg.contains("AKIA") && !msg.contains("john"), "{msg}");
    let mut got: Vec<(&str, &str, &str, u32)> = c
        .dlp
        .iter()
        .map(|d| (d.detector.as_str(), d.direction, d.action, d.count))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("aws_access_key", "request", "block", 1),
            ("email", "request", "block", 1)
        ]
    );
}

#[tokio::test]
async fn every_string_is_scanned_and_the_structure_kept() {
    let f = filter_with(&settings(Action::Redact));
    let request = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Ops contact: ops@example.com"},
            {"role": "user", "content": [
                {"type": "text", "text": "my card 4111 1111 1111 1111"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "deploy", "arguments": "{\"key\": \"\\u0041KIAIOSFODNN7EXAMPLE\", \"region\": \"eu-west-1\"}"}
            }]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok, from 81.2.69.160"}
        ],
        "temperature": 0.2,
        "metadata": {"john@example.com": "owner", "account": 4111111111111111u64},
        "stream": false
    });
    let mut body = body_of(&request.to_string());
    let (v, c) = send(&f, &mut body, &HeaderMap::new()).await;
    assert!(matches!(v, Verdict::Continue));
    assert!(body.is_changed());
    let out = sent(&body);
    assert_eq!(
        out["messages"][0]["content"],
        "Ops contact: [REDACTED:email]"
    );
    assert_eq!(
        out["messages"][1]["content"][0]["text"],
        "my card [REDACTED:credit_card]"
    );
    assert_eq!(
        out["messages"][1]["content"][1],
        request["messages"][1]["content"][1]
    );
    let args: Value = serde_json::from_str(
        out["messages"][2]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .expect("arguments stay a string"),
    )
    .expect("arguments stay JSON");
    assert_eq!(
        args,
        json!({"key": "[REDACTED:aws_access_key]", "region": "eu-west-1"})
    );
    assert_eq!(out["messages"][3]["content"], "ok, from [REDACTED:ipv4]");
    assert_eq!(
        out["metadata"],
        json!({"[REDACTED:email]": "owner", "account": "[REDACTED:credit_card]"})
    );
    // Everything else is untouched, in order.
    assert_eq!(out["model"], "gpt-4o-mini");
    assert_eq!(out["temperature"], 0.2);
    assert_eq!(out["stream"], false);
    let keys: Vec<&String> = out.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        ["model", "messages", "temperature", "metadata", "stream"]
    );
    assert_eq!(out["messages"].as_array().map(Vec::len), Some(4));
    let total: u32 = c.dlp.iter().map(|d| d.count).sum();
    assert_eq!(total, 6);
    assert!(c
        .dlp
        .iter()
        .all(|d| d.direction == "request" && d.action == "redact"));
}

#[tokio::test]
async fn clean_requests_are_left_byte_for_byte() {
    let f = filter();
    let raw = r#"{"model":"m","messages":[{"role":"user","content":"Explain Kubernetes pod security in 3 points, v1.29.2."}],"max_tokens":512}"#;
    let mut body = body_of(raw);
    let (v, c) = send(&f, &mut body, &HeaderMap::new()).await;
    assert!(matches!(v, Verdict::Continue));
    assert!(!body.is_changed());
    assert_eq!(body.to_bytes(), raw.as_bytes());
    assert!(c.dlp.is_empty());
}

#[tokio::test]
async fn mask_and_monitor() {
    let raw = r#"{"messages":[{"role":"user","content":"SSN 536-22-1234"}]}"#;
    let f = filter_with(&settings(Action::Mask));
    let mut body = body_of(raw);
    send(&f, &mut body, &HeaderMap::new()).await;
    assert_eq!(sent(&body)["messages"][0]["content"], "SSN *******1234");

    let f = filter_with(&settings(Action::Monitor));
    let mut body = body_of(raw);
    let (v, c) = send(&f, &mut body, &HeaderMap::new()).await;
    assert!(matches!(v, Verdict::Continue));
    assert!(!body.is_changed(), "monitor never rewrites");
    assert_eq!(c.dlp[0].detector, "us_ssn");
    assert_eq!(c.dlp[0].action, "monitor");
}

#[tokio::test]
async fn rule_actions_override_the_direction() {
    let settings = DlpSettings {
        request_action: Action::Redact,
        rules: vec![
            RuleSettings {
                name: "codenames".into(),
                regex: None,
                keywords: Some(vec!["BLUEBIRD".into(), "NIGHTJAR".into()]),
                action: Some(Action::Block),
                request_action: None,
                response_action: None,
            },
            RuleSettings {
                name: "employee_id".into(),
                regex: Some("EMP-[0-9]{6}".into()),
                keywords: None,
                action: Some(Action::Monitor),
                request_action: None,
                response_action: None,
            },
        ],
        ..DlpSettings::default()
    };
    let f = filter_with(&settings);
    let mut body = body_of(r#"{"messages":[{"role":"user","content":"status of nightjar?"}]}"#);
    let (v, _) = send(&f, &mut body, &HeaderMap::new()).await;
    let Verdict::Respond(reply) = v else {
        panic!("keyword rule blocks")
    };
    let err: Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("codenames"));

    let mut body =
        body_of(r#"{"messages":[{"role":"user","content":"EMP-123456 mailed a@example.com"}]}"#);
    let (v, c) = send(&f, &mut body, &HeaderMap::new()).await;
    assert!(matches!(v, Verdict::Continue));
    assert_eq!(
        sent(&body)["messages"][0]["content"],
        "EMP-123456 mailed [REDACTED:email]"
    );
    let monitor = c
        .dlp
        .iter()
        .find(|d| d.detector == "employee_id")
        .expect("recorded");
    assert_eq!(monitor.action, "monitor");
}

#[tokio::test]
async fn non_json_bodies_are_scanned_as_bytes() {
    let f = filter_with(&settings(Action::Redact));
    let mut body = JsonBody::raw(Bytes::from_static(
        b"plain text with AKIAIOSFODNN7EXAMPLE\xff\xfe inside",
    ));
    let (v, _) = send(&f, &mut body, &HeaderMap::new()).await;
    assert!(matches!(v, Verdict::Continue));
    assert_eq!(
        body.to_bytes(),
        Bytes::from_static(b"plain text with [REDACTED:aws_access_key]\xff\xfe inside")
    );
    let f = filter();
    let mut body = JsonBody::raw(Bytes::from_static(b"key=AKIAIOSFODNN7EXAMPLE"));
    let (v, _) = send(&f, &mut body, &HeaderMap::new()).await;
    assert!(matches!(v, Verdict::Respond(_)));
}

#[tokio::test]
async fn undecodable_and_oversized_bodies_fail_closed() {
    let f = filter();
    let mut headers = HeaderMap::new();
    headers.insert("content-encoding", HeaderValue::from_static("gzip"));
    let mut body = JsonBody::raw(Bytes::from_static(b"\x1f\x8b\x08\x00compressed"));
    let (v, c) = send(&f, &mut body, &headers).await;
    let Verdict::Respond(reply) = v else {
        panic!("a compressed body must not be forwarded")
    };
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code, Some("dlp_blocked"));
    assert_eq!(c.dlp[0].detector, "unscannable_body");

    let small = DlpSettings {
        max_scan_bytes: 64,
        ..DlpSettings::default()
    };
    let f = filter_with(&small);
    let mut body =
        body_of(&json!({"messages": [{"role": "user", "content": "x".repeat(100)}]}).to_string());
    let (v, _) = send(&f, &mut body, &HeaderMap::new()).await;
    let Verdict::Respond(reply) = v else {
        panic!("an oversized body must not be forwarded")
    };
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn findings_reach_the_metric() {
    let shared = Shared::new(prometheus::Registry::new());
    let f = DlpFilter::new(&settings(Action::Redact), &shared).expect("builds");
    for _ in 0..3 {
        let mut body =
            body_of(r#"{"messages":[{"role":"user","content":"a@example.com b@example.com"}]}"#);
        send(&f, &mut body, &HeaderMap::new()).await;
    }
    // A reload builds a new filter on the same registry.
    let again = DlpFilter::new(&settings(Action::Redact), &shared).expect("rebuilds");
    let mut body = body_of(r#"{"messages":[{"role":"user","content":"c@example.com"}]}"#);
    send(&again, &mut body, &HeaderMap::new()).await;
    let families = shared.registry().gather();
    let fam = families
        .iter()
        .find(|m| m.get_name() == "sluice_dlp_findings_total")
        .expect("metric registered");
    let labels = |m: &prometheus::proto::Metric| -> Vec<(String, String)> {
        m.get_label()
            .iter()
            .map(|l| (l.get_name().to_string(), l.get_value().to_string()))
            .collect()
    };
    let email = [
        ("action", "redact"),
        ("detector", "email"),
        ("direction", "request"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    // Every detector's series exists from the start (at zero); only the e-mail one counted.
    for m in fam.get_metric() {
        let want = if labels(m) == email { 7.0 } else { 0.0 };
        assert_eq!(m.get_counter().get_value(), want, "{:?}", labels(m));
    }
    assert!(fam.get_metric().iter().any(|m| labels(m) == email));
}

fn completion(message: Value) -> JsonBody {
    let v = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]
    });
    JsonBody::parsed(Bytes::from(v.to_string()), v)
}

#[test]
fn response_bodies_redact_and_block() {
    let f = filter();
    let mut body = completion(json!({"role": "assistant", "content": "mail john@example.com"}));
    let mut c = cx();
    f.on_response_body(&mut body, &mut c);
    let out = sent(&body);
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "mail [REDACTED:email]"
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        (c.dlp[0].direction, c.dlp[0].action),
        ("response", "redact")
    );

    let f = filter_with(&DlpSettings {
        response_action: Action::Block,
        ..DlpSettings::default()
    });
    let mut body = completion(json!({
        "role": "assistant", "content": "Calling the tool.",
        "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "f", "arguments": "{\"k\":\"AKIAIOSFODNN7EXAMPLE\"}"}}]
    }));
    f.on_response_body(&mut body, &mut cx());
    let out = sent(&body);
    assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(out["choices"][0]["message"]["content"], "Calling the tool.");
    assert!(out["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(out["id"], "chatcmpl-1");
}

#[test]
fn compressed_responses_are_not_forwarded() {
    let f = filter();
    let mut c = cx();
    let mut headers = HeaderMap::new();
    headers.insert("content-encoding", HeaderValue::from_static("br"));
    f.on_response_head(
        &ResponseHead {
            status: StatusCode::OK,
            headers: &headers,
        },
        &mut c,
    );
    let mut body = JsonBody::raw(Bytes::from_static(b"\x8b\x00binary"));
    f.on_response_body(&mut body, &mut c);
    let out = sent(&body);
    assert_eq!(out["error"]["code"], "dlp_blocked");
    assert_eq!(c.dlp[0].detector, "unscannable_body");

    // The same for a stream: one error event, nothing else.
    let mut c = cx();
    let mut headers = HeaderMap::new();
    headers.insert("content-encoding", HeaderValue::from_static("gzip"));
    f.on_response_head(
        &ResponseHead {
            status: StatusCode::OK,
            headers: &headers,
        },
        &mut c,
    );
    let out = run_reads(&f, &mut c, &[b"\x1f\x8b garbage\n\n", b"more\n\n"], true);
    let v = client_view(&out);
    assert_eq!(v.errors.len(), 1);
    assert!(v.content.is_empty());
}

#[tokio::test]
async fn a_rule_can_act_differently_per_direction() {
    let settings: DlpSettings = toml::from_str(
        r#"
        request_action = "redact"
        [[rules]]
        name = "codenames"
        keywords = ["NIGHTJAR"]
        request_action = "block"
        response_action = "redact"
        "#,
    )
    .expect("parses");
    let f = filter_with(&settings);
    let mut body = body_of(r#"{"messages":[{"role":"user","content":"about nightjar"}]}"#);
    let (v, _) = send(&f, &mut body, &HeaderMap::new()).await;
    assert!(matches!(v, Verdict::Respond(_)), "blocked in requests");
    let mut resp = completion(json!({"role": "assistant", "content": "Nightjar is on track."}));
    let mut c = cx();
    f.on_response_body(&mut resp, &mut c);
    assert_eq!(
        sent(&resp)["choices"][0]["message"]["content"],
        "[REDACTED:codenames] is on track."
    );
    assert_eq!(c.dlp[0].action, "redact");
}

/// The scanner skips the field names and values every request repeats (`role`, `user`, …)
/// only when its own detectors find nothing in them: a rule that matches one still fires.
#[tokio::test]
async fn a_rule_on_a_common_field_name_still_fires() {
    let with_rule = DlpSettings {
        request_action: Action::Redact,
        rules: vec![RuleSettings {
            name: "odd_rule".into(),
            regex: Some("assistant|max_tokens".into()),
            keywords: None,
            action: Some(Action::Monitor),
            request_action: None,
            response_action: None,
        }],
        ..DlpSettings::default()
    };
    let f = filter_with(&with_rule);
    let mut body =
        body_of(r#"{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":"hi"}]}"#);
    let (v, c) = send(&f, &mut body, &HeaderMap::new()).await;
    assert!(matches!(v, Verdict::Continue));
    let hits = c
        .dlp
        .iter()
        .find(|d| d.detector == "odd_rule")
        .map(|d| d.count);
    assert_eq!(
        hits,
        Some(2),
        "the key `max_tokens` and the value `assistant`"
    );

    // Without the rule the same body is clean.
    let f = filter_with(&settings(Action::Redact));
    let mut body =
        body_of(r#"{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":"hi"}]}"#);
    let (_, c) = send(&f, &mut body, &HeaderMap::new()).await;
    assert!(c.dlp.is_empty());
}
