//! The attempt decisions without a socket: what is retried, where, with which body.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};

use super::super::{Call, FailKind, Head, Step};
use crate::chain::FilterTypes;
use crate::config::Config;
use crate::state::EngineState;

async fn state(dir: &std::path::Path, routing: &str) -> Arc<EngineState> {
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:1"
admin_listen = "127.0.0.1:2"
[store]
url = "sqlite://{dir}/keys.db"
[[upstreams]]
name = "a"
url = "http://127.0.0.1:9"
[[upstreams]]
name = "b"
url = "http://127.0.0.1:9/b"
[[upstreams]]
name = "c"
url = "http://127.0.0.1:9/c"
[[models]]
name = "m"
targets = [
  {{ upstream = "a", upstream_model = "model-a" }},
  {{ upstream = "b", priority = 2 }},
  {{ upstream = "c", upstream_model = "model-c", priority = 3 }},
]
[routing]
{routing}
"#,
        dir = dir.display()
    );
    let config = Config::parse(&toml).unwrap_or_else(|e| panic!("{e}"));
    EngineState::offline(config, FilterTypes::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn forwarded(st: &Arc<EngineState>) -> Call {
    let mut call = Call::new(st);
    let h = HeaderMap::new();
    let head = Head {
        method: &Method::POST,
        path: "/v1/chat/completions",
        query: None,
        headers: &h,
        client_ip: None,
        listen: None::<SocketAddr>,
    };
    assert!(call.begin(&head).await.is_none());
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    match call.on_body(&head, Bytes::from(body.to_string())).await {
        Step::Forward => call,
        Step::Reply(r) => panic!("replied {}", r.status),
    }
}

fn upstream(call: &Call) -> &str {
    call.upstream_rt().map(|u| u.name.as_str()).unwrap_or("")
}

fn sent_model(call: &Call) -> Value {
    let b = call.held_body().cloned().unwrap_or_default();
    serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null)["model"].clone()
}

#[tokio::test]
async fn each_retry_goes_to_the_next_target_with_its_model_name() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let st = state(dir.path(), "retries = 2").await;
    let mut call = forwarded(&st).await;
    assert_eq!(
        (upstream(&call), sent_model(&call)),
        ("a", json!("model-a"))
    );
    assert_eq!(call.cx.attempts, 1);

    // A 503 before anything reached the client: abandoned for b, which knows the model as `m`.
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static("30"));
    assert!(call
        .on_response_head(StatusCode::SERVICE_UNAVAILABLE, &h)
        .is_err());
    assert!(
        call.attempt_failed(FailKind::Refused, false, false),
        "the hook retries"
    );
    assert_eq!((upstream(&call), sent_model(&call)), ("b", json!("m")));
    let a = &call.snap.upstreams[0].health;
    assert_eq!(a.view(std::time::Instant::now()).why, Some("retry_after"));

    // b refuses the connection: c, the last retry.
    assert!(call.attempt_failed(FailKind::UpstreamConnect, false, false));
    assert_eq!(
        (upstream(&call), sent_model(&call)),
        ("c", json!("model-c"))
    );
    assert_eq!(call.cx.attempts, 3);
    // The budget is spent: c's failure is the answer.
    assert!(!call.attempt_failed(FailKind::UpstreamReset, false, false));
    // c's 500 would now pass through as the answer.
    assert!(call
        .on_response_head(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new())
        .is_ok());
}

#[tokio::test]
async fn nothing_is_retried_once_the_client_has_the_head_or_outside_retry_on() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let st = state(dir.path(), "retry_on = [\"connect\"]").await;
    let mut call = forwarded(&st).await;
    assert!(!call.attempt_failed(FailKind::UpstreamReset, true, false));
    assert_eq!(upstream(&call), "a");

    let mut call = forwarded(&st).await;
    assert!(!call.attempt_failed(FailKind::UpstreamTimeout, false, false));
    let mut call = forwarded(&st).await;
    assert!(call
        .on_response_head(StatusCode::BAD_GATEWAY, &HeaderMap::new())
        .is_ok());
    assert_eq!(call.cx.attempts, 1);
    // The client left: not the upstream's failure, nothing to retry.
    let mut call = forwarded(&st).await;
    assert!(!call.attempt_failed(FailKind::ClientClosed, false, false));
}

#[tokio::test]
async fn a_closed_pooled_connection_goes_once_to_another_target_never_back() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let st = state(dir.path(), "retries = 0").await;
    let mut call = forwarded(&st).await;
    assert!(call.attempt_failed(FailKind::UpstreamReset, false, true));
    assert_eq!((upstream(&call), call.cx.attempts), ("b", 2));
    assert!(!call.attempt_failed(FailKind::UpstreamReset, false, true));
    let a = &call.snap.upstreams[0].health;
    assert_eq!(a.view(std::time::Instant::now()).consecutive_failures, 1);
}
