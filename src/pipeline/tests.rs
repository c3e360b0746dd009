//! The pipeline without a socket: a real config generation (chain, routing tables, SQLite
//! store in a temp dir), requests fed phase by phase as the adapter would feed them.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::{json, Value};
use sluice_filters::Route;

use super::{Call, FailAction, FailKind, Head, Step};
use crate::chain::FilterTypes;
use crate::config::Config;
use crate::state::EngineState;

const KEY: &str = "sk-sluice-PIPEpipePIPEpipePIPEpipePIPEpipePIPEpipe";

async fn state(dir: &std::path::Path) -> Arc<EngineState> {
    let sha = sluice_filters::auth::key_sha256_hex(KEY);
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:1"
admin_listen = "127.0.0.1:2"
[store]
url = "sqlite://{dir}/keys.db"
[[upstreams]]
name = "openai"
url = "http://127.0.0.1:9/base"
[[upstreams]]
name = "claude"
url = "http://127.0.0.1:9"
api = "anthropic"
[[models]]
name = "gpt"
upstream = "openai"
upstream_model = "gpt-real"
[[models]]
name = "claude-x"
upstream = "claude"
[[orgs]]
name = "o"
[[roles]]
name = "r"
permissions = ["chat", "passthrough"]
models = ["*"]
[[users]]
name = "u"
org = "o"
role = "r"
[[keys]]
id = "k"
user = "u"
sha256 = "{sha}"
[[filters]]
type = "auth"
[[filters]]
type = "dlp"
"#,
        dir = dir.display()
    );
    let config = Config::parse(&toml).unwrap_or_else(|e| panic!("{e}"));
    EngineState::offline(config, FilterTypes::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(*n, HeaderValue::from_static(v));
    }
    h
}

/// Runs the request phases; returns the call and what they decided.
async fn request(
    st: &Arc<EngineState>,
    path: &str,
    h: &HeaderMap,
    body: Value,
) -> (Call, Option<sluice_filters::Reply>) {
    let mut call = Call::new(st);
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let head = Head {
        method: &Method::POST,
        path,
        query,
        headers: h,
        client_ip: None,
        listen: None::<SocketAddr>,
    };
    if let Some(r) = call.begin(&head).await {
        return (call, Some(r));
    }
    match call.on_body(&head, Bytes::from(body.to_string())).await {
        Step::Forward => (call, None),
        Step::Reply(r) => (call, Some(r)),
    }
}

fn json_of(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_chat_request_is_routed_rewritten_and_stripped_of_client_credentials() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let st = state(dir.path()).await;
    let h = headers(&[
        (
            "authorization",
            "Bearer sk-sluice-PIPEpipePIPEpipePIPEpipePIPEpipePIPEpipe",
        ),
        (
            "x-api-key",
            "sk-sluice-PIPEpipePIPEpipePIPEpipePIPEpipePIPEpipe",
        ),
        (
            "api-key",
            "sk-sluice-PIPEpipePIPEpipePIPEpipePIPEpipePIPEpipe",
        ),
        ("connection", "keep-alive"),
    ]);
    let body =
        json!({"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (mut call, reply) = request(&st, "/v1/Chat/Completions/?api_key=sk-1&x=2", &h, body).await;
    assert!(reply.is_none(), "forwarded");
    assert_eq!(call.cx.route, Route::Api(&sluice_filters::api::chat::ROUTE));
    assert_eq!(call.upstream_rt().map(|u| u.name.as_str()), Some("openai"));
    let sent = json_of(call.held_body().unwrap_or(&Bytes::new()));
    assert_eq!(sent["model"], "gpt-real");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let uri: Uri = "/v1/Chat/Completions/?api_key=sk-1&x=2"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let up = call
        .upstream_head(&h, &uri)
        .unwrap_or_else(|e| panic!("{e}"));
    let removed: Vec<&str> = up.remove.iter().map(|n| n.as_str()).collect();
    for n in ["authorization", "x-api-key", "api-key", "connection"] {
        assert!(removed.contains(&n), "{n} removed: {removed:?}");
    }
    assert_eq!(
        up.uri.map(|u| u.to_string()).as_deref(),
        Some("/base/v1/chat/completions?x=2")
    );
    assert!(up.insert.iter().any(|(n, _)| *n == "accept-encoding"));
}

#[tokio::test]
async fn bad_paths_are_refused_and_errors_take_the_routes_shape() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let st = state(dir.path()).await;
    let auth = headers(&[(
        "x-api-key",
        "sk-sluice-PIPEpipePIPEpipePIPEpipePIPEpipePIPEpipe",
    )]);
    let (call, reply) = request(&st, "/v1/../../etc", &auth, json!({})).await;
    let reply = reply.unwrap_or_else(|| panic!("refused"));
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(&call.render(&reply))["error"]["code"],
        "invalid_path"
    );

    // The Messages API: the key as x-api-key, an unknown model answered in Anthropic's shape.
    let body = json!({"model": "nope", "max_tokens": 5, "messages": []});
    let (call, reply) = request(&st, "/v1/messages", &auth, body).await;
    let reply = reply.unwrap_or_else(|| panic!("refused"));
    let v = json_of(&call.render(&reply));
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert_eq!(v["error"]["code"], "model_not_found");
    // Outside the Anthropic routes, x-api-key is not a credential.
    let (call, reply) = request(
        &st,
        "/v1/chat/completions",
        &auth,
        json!({"model": "gpt", "messages": []}),
    )
    .await;
    let reply = reply.unwrap_or_else(|| panic!("refused"));
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(&call.render(&reply))["error"]["type"],
        "authentication_error"
    );
}

#[tokio::test]
async fn an_anthropic_upstream_gets_its_key_as_x_api_key_and_a_version() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let st = state(dir.path()).await;
    let h = headers(&[(
        "authorization",
        "Bearer sk-sluice-PIPEpipePIPEpipePIPEpipePIPEpipePIPEpipe",
    )]);
    let body = json!({"model": "claude-x", "max_tokens": 5, "messages": []});
    let (mut call, reply) = request(&st, "/v1/messages?beta=true", &h, body).await;
    assert!(reply.is_none());
    let uri: Uri = "/v1/messages?beta=true"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let up = call
        .upstream_head(&h, &uri)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(up.uri.is_none(), "path and query kept as they are");
    assert!(up
        .insert
        .iter()
        .any(|(n, v)| *n == "anthropic-version" && v == "2023-06-01"));
    assert!(up.remove.iter().any(|n| n == "authorization"));
}

#[tokio::test]
async fn a_stream_is_framed_its_usage_read_and_hidden_and_a_failure_ends_it_in_shape() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let st = state(dir.path()).await;
    let h = headers(&[(
        "authorization",
        "Bearer sk-sluice-PIPEpipePIPEpipePIPEpipePIPEpipePIPEpipe",
    )]);
    let body =
        json!({"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (mut call, _) = request(&st, "/v1/chat/completions", &h, body).await;
    let rh = headers(&[("content-type", "text/event-stream")]);
    let plan = call
        .on_response_head(StatusCode::OK, &rh)
        .unwrap_or_else(|r| panic!("{}", r.why));
    assert!(plan.remove.iter().any(|n| n == "content-length"));
    let sse = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hel\"}}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}\n\n",
        "data: [DONE]\n\n"
    );
    let mut chunk = Some(Bytes::from_static(sse.as_bytes()));
    call.on_response_body(&mut chunk, true)
        .unwrap_or_else(|r| panic!("{}", r.why));
    let out = String::from_utf8_lossy(chunk.as_deref().unwrap_or_default()).to_string();
    assert!(
        !out.contains("usage"),
        "the usage Sluice asked for is hidden: {out}"
    );
    let text: String = out
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "hello", "{out}");
    assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
    let u = call.cx.usage.unwrap_or_default();
    assert_eq!((u.prompt_tokens, u.completion_tokens), (2, 1));
    match call.on_failure(FailKind::UpstreamReset, true) {
        FailAction::StreamError(ev) => {
            let text = String::from_utf8_lossy(&ev).to_string();
            assert!(text.starts_with("data: {\"error\""), "{text}");
        }
        _ => panic!("a started stream ends with an error event"),
    }
}

#[tokio::test]
async fn client_failures_are_the_clients() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let st = state(dir.path()).await;
    let mut call = Call::new(&st);
    match call.on_failure(FailKind::ClientTimeout, false) {
        FailAction::Reply(r) => assert_eq!(r.status.as_u16(), 408),
        _ => panic!("a slow client is answered 408"),
    }
    let mut call = Call::new(&st);
    match call.on_failure(FailKind::ClientBad, false) {
        FailAction::Reply(r) => {
            assert_eq!(r.status.as_u16(), 400);
            assert_eq!(r.code, Some("bad_request"));
        }
        _ => panic!("bad framing is answered 400"),
    }
    assert!(matches!(
        call.on_failure(FailKind::ClientClosed, false),
        FailAction::Nothing
    ));
}
