//! OpenTelemetry traces (SPEC §7) from a real gateway to a real OTLP/HTTP receiver: one server
//! span per request named after its route, with the GenAI attributes; `chain` and `upstream`
//! children; the client's trace continued and a `traceparent` sent upstream; sampling; refused
//! requests; streams; and never a prompt, an answer or a key in what is exported.

use crate::support::otlp;
use crate::support::*;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use otlp::{all_strings, int_attr, str_attr, strings_attr, Received, Receiver};
use serde_json::{json, Value};

const TIGHT: &str = "sk-sluice-TIGHTtightTIGHTtightTIGHTtightTIGHTtigh";
/// A prompt no attribute may carry (the mock echoes it back as the answer, too).
const PROMPT: &str = "zebra-quartz-marmalade 7731 confidential";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn config(telemetry: &str) -> String {
    format!(
        r#"{MOCK}
{directory}
{telemetry}
"#,
        directory = Directory::role(
            "analyst",
            &["chat", "embeddings", "passthrough"],
            &["mock-*"]
        )
        .key("demo", DEMO_KEY)
        .key_with(
            "tight",
            TIGHT,
            "rate_limit = { requests_per_minute = 1, burst = 1 }"
        )
        .filters(&["auth", "rate_limit"])
        .toml(),
    )
}

fn telemetry(rx: &Receiver, ratio: f64) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"sluice-test\"\nsample_ratio = {ratio}\n",
        rx.endpoint()
    )
}

fn traceparent(flags: &str) -> String {
    format!("00-{TRACE_ID}-{CLIENT_SPAN}-{flags}")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The server span of the trace `trace` named `name`, and its children.
fn request_span<'a>(spans: &'a [Received], trace: &str, name: &str) -> Option<&'a Received> {
    spans.iter().find(|r| {
        hex(&r.span.trace_id) == trace
            && r.span.name == name
            && r.span.kind == SpanKind::Server as i32
    })
}

fn children<'a>(spans: &'a [Received], parent: &Received) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|r| r.span.parent_span_id == parent.span.span_id && !parent.span.span_id.is_empty())
        .collect()
}

/// A chat completion of `PROMPT` in the trace `TRACE_ID` (sampled), answered 200.
fn traced_chat(gw: &sluice::Gateway, stream: bool) -> reqwest::blocking::Response {
    let resp = client()
        .post(url(gw, "/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .header("traceparent", traceparent("01"))
        .json(&chat_body(PROMPT, stream))
        .send()
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(resp.status().as_u16(), 200);
    resp
}

fn assert_clean(spans: &[Received]) {
    for r in spans {
        for s in all_strings(r) {
            for secret in [PROMPT, "zebra-quartz", DEMO_KEY, TIGHT] {
                assert!(
                    !s.contains(secret),
                    "span {} carries {secret:?} in {s:?}",
                    r.span.name
                );
            }
        }
    }
}

#[test]
fn a_chat_completion_is_one_server_span_with_genai_attributes_and_two_children() {
    let rx = Receiver::start();
    let gw = start(&config(&telemetry(&rx, 1.0)));
    let resp = traced_chat(&gw, false);
    let answer = json_of(resp);
    let spans = rx.wait("chat_completions span", |s| {
        request_span(s, TRACE_ID, "chat_completions").is_some()
    });
    let req = request_span(&spans, TRACE_ID, "chat_completions").unwrap_or_else(|| panic!());
    let s = &req.span;
    // The client's trace continues: same trace id, its span is the parent.
    assert_eq!(hex(&s.parent_span_id), CLIENT_SPAN);
    assert_eq!(str_attr(s, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(str_attr(s, "gen_ai.request.model"), Some("mock-echo"));
    let usage = &answer["usage"];
    assert_eq!(
        int_attr(s, "gen_ai.usage.input_tokens"),
        usage["prompt_tokens"].as_i64()
    );
    assert_eq!(
        int_attr(s, "gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64()
    );
    assert!(int_attr(s, "gen_ai.usage.output_tokens").is_some_and(|n| n > 0));
    assert_eq!(
        strings_attr(s, "gen_ai.response.finish_reasons"),
        Some(vec!["stop".to_string()])
    );
    assert_eq!(int_attr(s, "http.response.status_code"), Some(200));
    assert_eq!(str_attr(s, "sluice.outcome"), Some("ok"));
    assert_eq!(str_attr(s, "sluice.auth"), Some("key"));
    assert_eq!(str_attr(s, "sluice.upstream"), Some("mock"));
    assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    let service = req
        .resource
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref());
    assert!(
        matches!(service, Some(otlp::Any::StringValue(n)) if n == "sluice-test"),
        "{service:?}"
    );

    let kids = children(&spans, req);
    let chain = kids.iter().find(|r| r.span.name == "chain");
    let upstream = kids.iter().find(|r| r.span.name == "upstream");
    let (Some(chain), Some(upstream)) = (chain, upstream) else {
        panic!("children of the request span: {kids:?}");
    };
    assert_eq!(chain.span.kind, SpanKind::Internal as i32);
    assert_eq!(upstream.span.kind, SpanKind::Client as i32);
    assert_eq!(str_attr(&upstream.span, "sluice.upstream"), Some("mock"));
    assert_eq!(
        int_attr(&upstream.span, "http.response.status_code"),
        Some(200)
    );
    for c in [chain, upstream] {
        assert_eq!(c.span.trace_id, s.trace_id);
        assert!(c.span.start_time_unix_nano >= s.start_time_unix_nano);
        assert!(c.span.end_time_unix_nano <= s.end_time_unix_nano);
    }
    assert!(chain.span.end_time_unix_nano <= upstream.span.start_time_unix_nano);
    let (path, ctype) = rx.requests().first().cloned().unwrap_or_default();
    assert_eq!(path, "/v1/traces");
    assert_eq!(ctype, "application/x-protobuf");
    assert_eq!(
        answer
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str),
        Some(PROMPT),
        "the mock echoes the prompt: the answer holds it too"
    );
    assert_clean(&spans);
}

#[test]
fn every_model_route_names_its_operation_and_finish_reasons_streamed_or_not() {
    let rx = Receiver::start();
    let gw = start(&config(&telemetry(&rx, 1.0)));
    let cases = [
        (
            "/v1/responses",
            json!({"model": "mock-echo", "input": PROMPT}),
            "responses",
            "chat",
            Some("completed"),
        ),
        (
            "/v1/completions",
            json!({"model": "mock-echo", "prompt": PROMPT}),
            "completions",
            "text_completion",
            Some("stop"),
        ),
        (
            "/v1/messages",
            json!({"model": "mock-echo", "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]}),
            "messages",
            "chat",
            Some("end_turn"),
        ),
        (
            "/v1/embeddings",
            json!({"model": "mock-echo", "input": PROMPT}),
            "embeddings",
            "embeddings",
            None,
        ),
    ];
    let mut expected = Vec::new();
    for (i, (path, body, name, op, reason)) in cases.iter().enumerate() {
        for stream in [false, true] {
            if reason.is_none() && stream {
                continue;
            }
            let trace = format!("{:032x}", 0xabc000 + i * 2 + usize::from(stream));
            let mut body = body.clone();
            if stream {
                body["stream"] = json!(true);
            }
            let resp = client()
                .post(url(&gw, path))
                .bearer_auth(DEMO_KEY)
                .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-01"))
                .json(&body)
                .send()
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(resp.status().as_u16(), 200, "{path}");
            assert!(!resp.text().unwrap_or_default().is_empty(), "{path}");
            expected.push((trace, *name, *op, *reason, stream));
        }
    }
    let spans = rx.wait("a span per route", |s| {
        expected
            .iter()
            .all(|(t, name, ..)| request_span(s, t, name).is_some())
    });
    for (trace, name, op, reason, stream) in &expected {
        let s = &request_span(&spans, trace, name)
            .unwrap_or_else(|| panic!())
            .span;
        let what = format!("{name} (stream: {stream})");
        assert_eq!(str_attr(s, "gen_ai.operation.name"), Some(*op), "{what}");
        assert_eq!(
            str_attr(s, "gen_ai.request.model"),
            Some("mock-echo"),
            "{what}"
        );
        assert!(
            int_attr(s, "gen_ai.usage.input_tokens").is_some_and(|n| n > 0),
            "{what}"
        );
        assert_eq!(
            strings_attr(s, "gen_ai.response.finish_reasons"),
            reason.map(|r| vec![r.to_string()]),
            "{what}"
        );
    }
    assert_clean(&spans);
}

#[test]
fn the_upstream_gets_a_traceparent_whose_parent_is_the_upstream_span() {
    let rx = Receiver::start();
    let gw = start(&config(&telemetry(&rx, 1.0)));
    let echoed = json_of(
        client()
            .post(url(&gw, "/v1/mock/echo"))
            .bearer_auth(DEMO_KEY)
            .header("traceparent", traceparent("01"))
            .header("tracestate", "vendor=blue")
            .json(&json!({"note": PROMPT}))
            .send()
            .unwrap_or_else(|e| panic!("request: {e}")),
    );
    let headers = &echoed["headers"];
    let sent = headers["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(
        parts.len(),
        4,
        "traceparent upstream: {sent:?} in {headers}"
    );
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], TRACE_ID, "the client's trace continues upstream");
    assert_ne!(parts[2], CLIENT_SPAN);
    assert_eq!(parts[3], "01");
    assert_eq!(headers["tracestate"], "vendor=blue");

    let spans = rx.wait("passthrough span", |s| {
        request_span(s, TRACE_ID, "passthrough").is_some()
    });
    let req = request_span(&spans, TRACE_ID, "passthrough").unwrap_or_else(|| panic!());
    let up = children(&spans, req)
        .into_iter()
        .find(|r| r.span.name == "upstream")
        .unwrap_or_else(|| panic!("no upstream span"));
    assert_eq!(hex(&up.span.span_id), parts[2]);
    // Not a model call: no GenAI operation.
    assert_eq!(str_attr(&req.span, "gen_ai.operation.name"), None);
    assert_clean(&spans);
}

#[test]
fn a_request_without_traceparent_starts_a_trace_the_upstream_continues() {
    let rx = Receiver::start();
    let gw = start(&config(&telemetry(&rx, 1.0)));
    let echoed = json_of(
        client()
            .get(url(&gw, "/v1/mock/echo"))
            .bearer_auth(DEMO_KEY)
            .send()
            .unwrap_or_else(|e| panic!("request: {e}")),
    );
    let sent = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let trace = sent.split('-').nth(1).unwrap_or_default().to_string();
    assert_eq!(trace.len(), 32, "{sent:?}");
    let spans = rx.wait("a new trace", |s| {
        request_span(s, &trace, "passthrough").is_some()
    });
    let req = request_span(&spans, &trace, "passthrough").unwrap_or_else(|| panic!());
    assert!(req.span.parent_span_id.is_empty(), "a root span");
}

#[test]
fn a_streamed_answer_ends_its_span_with_the_stream_and_carries_its_usage() {
    let rx = Receiver::start();
    let gw = start(&config(&telemetry(&rx, 1.0)));
    let resp = traced_chat(&gw, true);
    let (text, _, done) = collect_stream(resp);
    assert!(done && text == PROMPT, "{text:?}");
    let spans = rx.wait("stream span", |s| {
        request_span(s, TRACE_ID, "chat_completions").is_some()
    });
    let req = request_span(&spans, TRACE_ID, "chat_completions").unwrap_or_else(|| panic!());
    let s = &req.span;
    // Usage arrives in the stream's last chunk: the span ended after it.
    assert!(int_attr(s, "gen_ai.usage.input_tokens").is_some_and(|n| n > 0));
    assert!(int_attr(s, "gen_ai.usage.output_tokens").is_some_and(|n| n > 0));
    assert_eq!(
        strings_attr(s, "gen_ai.response.finish_reasons"),
        Some(vec!["stop".to_string()])
    );
    assert_eq!(
        otlp::attr(s, "sluice.stream"),
        Some(&otlp::Any::BoolValue(true))
    );
    let up = children(&spans, req)
        .into_iter()
        .find(|r| r.span.name == "upstream")
        .unwrap_or_else(|| panic!("no upstream span"));
    assert!(up.span.end_time_unix_nano > up.span.start_time_unix_nano);
    assert!(s.end_time_unix_nano >= up.span.end_time_unix_nano);
    assert_clean(&spans);
}

#[test]
fn refused_requests_have_their_span_with_the_outcome() {
    let rx = Receiver::start();
    let gw = start(&config(&telemetry(&rx, 1.0)));
    let send = |key: &str, flags: &str| {
        client()
            .post(url(&gw, "/v1/chat/completions"))
            .bearer_auth(key)
            .header(
                "traceparent",
                format!("00-{TRACE_ID}-{CLIENT_SPAN}-{flags}"),
            )
            .json(&chat_body(PROMPT, false))
            .send()
            .unwrap_or_else(|e| panic!("request: {e}"))
            .status()
            .as_u16()
    };
    assert_eq!(
        send("sk-sluice-wrongwrongwrongwrongwrongwrongwrong0", "01"),
        401
    );
    assert_eq!(send(TIGHT, "01"), 200);
    assert_eq!(send(TIGHT, "01"), 429);
    let spans = rx.wait("three spans", |s| {
        s.iter()
            .filter(|r| r.span.name == "chat_completions")
            .count()
            >= 3
    });
    let outcome = |o: &str| {
        spans
            .iter()
            .find(|r| str_attr(&r.span, "sluice.outcome") == Some(o))
            .unwrap_or_else(|| panic!("no span with outcome {o}"))
    };
    let denied = outcome("denied_auth");
    assert_eq!(
        int_attr(&denied.span, "http.response.status_code"),
        Some(401)
    );
    assert_eq!(
        str_attr(&denied.span, "error.type"),
        Some("invalid_api_key")
    );
    assert_eq!(str_attr(&denied.span, "gen_ai.request.model"), None);
    assert!(children(&spans, denied)
        .iter()
        .all(|r| r.span.name != "upstream"));
    let limited = outcome("rate_limited");
    assert_eq!(
        int_attr(&limited.span, "http.response.status_code"),
        Some(429)
    );
    assert_eq!(
        str_attr(&limited.span, "gen_ai.request.model"),
        Some("mock-echo")
    );
    assert!(children(&spans, limited)
        .iter()
        .any(|r| r.span.name == "chain"));
    assert_clean(&spans);
}

#[test]
fn sample_ratio_zero_exports_nothing_but_a_sampled_client_trace() {
    let rx = Receiver::start();
    let gw = start(&config(&telemetry(&rx, 0.0)));
    let echo = |tp: Option<String>| {
        let mut rq = client()
            .get(url(&gw, "/v1/mock/echo"))
            .bearer_auth(DEMO_KEY);
        if let Some(tp) = tp {
            rq = rq.header("traceparent", tp);
        }
        json_of(rq.send().unwrap_or_else(|e| panic!("request: {e}")))["headers"]["traceparent"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for _ in 0..5 {
        let sent = echo(None);
        assert!(sent.ends_with("-00"), "unsampled upstream: {sent:?}");
    }
    let sent = echo(Some(traceparent("00")));
    assert!(
        sent.starts_with(&format!("00-{TRACE_ID}-")) && sent.ends_with("-00"),
        "{sent}"
    );
    let other = "0af7651916cd43dd8448eb211c80319c";
    let sent = echo(Some(format!("00-{other}-b7ad6b7169203331-01")));
    assert!(
        sent.ends_with("-01"),
        "the client's sampled flag is respected: {sent}"
    );
    // Shutting down exports everything queued.
    gw.shutdown();
    let spans = rx.spans();
    assert!(
        spans.iter().all(|r| hex(&r.span.trace_id) == other),
        "only the client-sampled trace: {:?}",
        spans
            .iter()
            .map(|r| hex(&r.span.trace_id))
            .collect::<Vec<_>>()
    );
    assert!(request_span(&spans, other, "passthrough").is_some());
}

#[test]
fn without_telemetry_trace_headers_pass_unchanged() {
    let gw = start(&config(""));
    let echoed = json_of(
        client()
            .get(url(&gw, "/v1/mock/echo"))
            .bearer_auth(DEMO_KEY)
            .header("traceparent", traceparent("01"))
            .header("tracestate", "vendor=blue")
            .send()
            .unwrap_or_else(|e| panic!("request: {e}")),
    );
    assert_eq!(echoed["headers"]["traceparent"], traceparent("01").as_str());
    assert_eq!(echoed["headers"]["tracestate"], "vendor=blue");
    assert!(!metrics(&gw).contains("sluice_trace_spans_dropped_total"));
}

#[test]
fn a_collector_that_is_down_fails_no_request() {
    let port = free_port();
    let tel = format!("[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n");
    let gw = start(&config(&tel));
    for _ in 0..3 {
        let r = post_chat(&gw, &chat_body("hello", false));
        assert_eq!(r.status().as_u16(), 200);
    }
    // The export is retried off the request path, then given up and counted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let failed = loop {
        let text = metrics(&gw);
        let n = metric_sum(
            &text,
            "sluice_trace_spans_dropped_total",
            &["export_failed"],
        );
        if n >= 1.0 || std::time::Instant::now() > deadline {
            assert!(text.contains("sluice_trace_spans_dropped_total{reason=\"queue_full\"} 0"));
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(failed >= 1.0, "export failures counted: {failed}");
}

#[test]
fn a_collector_that_never_answers_holds_no_request_and_the_full_queue_drops() {
    // Accepts, reads, never answers: each export waits for its timeout.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = hang.local_addr().map(|a| a.port()).unwrap_or_default();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hang.incoming().flatten() {
            held.push(c);
        }
    });
    let tel =
        format!("[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\nmax_queue_spans = 1\n");
    let gw = start(&config(&tel));
    for _ in 0..5 {
        let r = post_chat(&gw, &chat_body("hello", false));
        assert_eq!(r.status().as_u16(), 200);
    }
    // Five requests end 15 spans; one export at a time is stuck and the queue holds one.
    // The last spans end in the logging phase, just after the response went out.
    wait_metric_at_least(
        &gw,
        "sluice_trace_spans_dropped_total",
        &["queue_full"],
        10.0,
    );
}

#[test]
fn telemetry_config_errors_name_their_field() {
    let bad = |section: &str| {
        let text = format!("{}{}\n[telemetry]\n{section}\n", server_section(), MOCK);
        match sluice::Config::parse(&text) {
            Ok(_) => panic!("accepted: {section}"),
            Err(e) => e.to_string(),
        }
    };
    assert!(
        bad("otlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 1.5")
            .contains("telemetry.sample_ratio: must be between 0 and 1")
    );
    assert!(bad("otlp_endpoint = \"ftp://x\"").contains("telemetry.otlp_endpoint: "));
    assert!(bad("sample_ratio = 0.5").contains("telemetry.otlp_endpoint: required"));
    assert!(bad("otlp_endpoint = \"https://collector:4318\"").contains("telemetry.otlp_endpoint: "));
    assert!(
        bad("otlp_endpoint = \"http://127.0.0.1:4318\"\nsample_rate = 0.5")
            .contains("telemetry.sample_rate: unknown key")
    );
    assert!(
        bad("otlp_endpoint = \"http://127.0.0.1:4318\"\nservice_name = \"\"")
            .contains("telemetry.service_name: ")
    );
    let ok = format!(
        "{}{}\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n",
        server_section(),
        MOCK
    );
    let cfg = sluice::Config::parse(&ok).unwrap_or_else(|e| panic!("{e}"));
    let t = cfg.telemetry.unwrap_or_else(|| panic!("no telemetry"));
    assert_eq!((t.service_name.as_str(), t.sample_ratio), ("sluice", 1.0));
}
