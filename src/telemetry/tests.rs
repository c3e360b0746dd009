//! The spans of requests driven through the pipeline without a socket, exported to memory:
//! what the integration tests cannot reach cheaply (an upstream that fails, a streamed
//! Anthropic answer read event by event).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use opentelemetry::trace::Status;
use opentelemetry::{Array, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use serde_json::json;

use super::{Telemetry, TelemetryConfig};
use crate::chain::FilterTypes;
use crate::config::Config;
use crate::pipeline::{Call, FailKind, Head, Step};
use crate::state::EngineState;

/// Keeps what it exports.
#[derive(Debug, Clone, Default)]
struct Memory(Arc<std::sync::Mutex<Vec<SpanData>>>);

impl SpanExporter for Memory {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if let Ok(mut v) = self.0.lock() {
            v.extend(batch);
        }
        Ok(())
    }
}

async fn traced(dir: &std::path::Path) -> (Arc<EngineState>, Memory) {
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:1"
admin_listen = "127.0.0.1:2"
[store]
url = "sqlite://{dir}/keys.db"
[[upstreams]]
name = "claude"
url = "http://127.0.0.1:9"
api = "anthropic"
[[models]]
name = "claude-x"
upstream = "claude"
[telemetry]
otlp_endpoint = "http://127.0.0.1:4318"
"#,
        dir = dir.display()
    );
    let config = Config::parse(&toml).unwrap_or_else(|e| panic!("{e}"));
    let tcfg: TelemetryConfig = config.telemetry.clone().unwrap_or_else(|| panic!());
    let mut st = EngineState::offline(config, FilterTypes::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let exporter = Memory::default();
    let Some(state) = Arc::get_mut(&mut st) else {
        panic!("the offline state is shared")
    };
    state.telemetry = Some(Telemetry::with_exporter(&tcfg, exporter.clone()));
    (st, exporter)
}

async fn forwarded(st: &Arc<EngineState>, stream: bool) -> Call {
    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let mut call = Call::new(st);
    let head = Head {
        method: &Method::POST,
        path: "/v1/messages",
        query: None,
        headers: &h,
        client_ip: None,
        listen: None::<SocketAddr>,
    };
    assert!(call.begin(&head).await.is_none());
    let body = json!({"model": "claude-x", "max_tokens": 16, "stream": stream,
                      "messages": [{"role": "user", "content": "a secret prompt"}]});
    assert!(matches!(
        call.on_body(&head, Bytes::from(body.to_string())).await,
        Step::Forward
    ));
    call.upstream_contacted();
    let uri: Uri = "/v1/messages".parse().unwrap_or_else(|e| panic!("{e}"));
    let up = call
        .upstream_head(&h, &uri)
        .unwrap_or_else(|e| panic!("{e}"));
    let tp = up
        .insert
        .iter()
        .find(|(n, _)| *n == "traceparent")
        .map(|(_, v)| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    call
}

fn spans(exporter: &Memory) -> Vec<SpanData> {
    exporter.0.lock().map(|v| v.clone()).unwrap_or_default()
}

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn named<'a>(all: &'a [SpanData], name: &str) -> &'a SpanData {
    all.iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} span in {all:?}"))
}

#[tokio::test]
async fn a_streamed_message_reads_usage_and_stop_reason_from_its_events() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (st, exporter) = traced(dir.path()).await;
    let mut call = forwarded(&st, true).await;
    let mut h = HeaderMap::new();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    assert!(call.on_response_head(StatusCode::OK, &h).is_ok());
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"stop_reason\":null,\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"an answer\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":16}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let (a, b) = stream.split_at(120);
    for (piece, end) in [(a, false), (b, true)] {
        let mut body = Some(Bytes::from(piece));
        assert!(call.on_response_body(&mut body, end).is_ok());
    }
    call.log(200, None).await;
    let all = spans(&exporter);
    let req = named(&all, "messages");
    assert_eq!(
        attr(req, "gen_ai.response.finish_reasons"),
        Some(&Value::Array(Array::String(vec!["max_tokens".into()])))
    );
    assert_eq!(attr(req, "gen_ai.usage.input_tokens"), Some(&Value::I64(7)));
    assert_eq!(
        attr(req, "gen_ai.usage.output_tokens"),
        Some(&Value::I64(16))
    );
    assert_eq!(attr(req, "gen_ai.operation.name"), Some(&"chat".into()));
    for s in &all {
        for kv in &s.attributes {
            let v = kv.value.as_str();
            assert!(
                !v.contains("secret prompt") && !v.contains("an answer"),
                "{kv:?}"
            );
        }
    }
}

#[tokio::test]
async fn an_upstream_timeout_marks_the_upstream_span_and_the_request_span() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (st, exporter) = traced(dir.path()).await;
    let mut call = forwarded(&st, false).await;
    let _ = call.on_failure(FailKind::UpstreamTimeout, false);
    call.log(504, Some(FailKind::UpstreamTimeout)).await;
    let all = spans(&exporter);
    let up = named(&all, "upstream");
    assert_eq!(attr(up, "error.type"), Some(&"timeout".into()));
    assert_eq!(attr(up, "sluice.upstream"), Some(&"claude".into()));
    assert!(matches!(up.status, Status::Error { .. }));
    let req = named(&all, "messages");
    assert_eq!(up.parent_span_id, req.span_context.span_id());
    assert_eq!(attr(req, "sluice.outcome"), Some(&"upstream_error".into()));
    assert_eq!(
        attr(req, "http.response.status_code"),
        Some(&Value::I64(504))
    );
    assert!(matches!(req.status, Status::Error { .. }));
    let chain = named(&all, "chain");
    assert_eq!(chain.parent_span_id, req.span_context.span_id());
    assert_eq!(
        format!("{:016x}", req.parent_span_id),
        "00f067aa0ba902b7",
        "the client's span is the parent"
    );
}
