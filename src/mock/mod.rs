//! The mock upstream (SPEC §8): a server that answers like the real APIs, echoing the last user
//! text back (model `echo`) with usage counted as whitespace-separated words — OpenAI's chat
//! completions, legacy completions, Responses API and embeddings ([`openai`]), and Anthropic's
//! Messages API ([`anthropic`]). `stream: true` sends one word per chunk or delta event in each
//! API's own event sequence.
//!
//! It serves `sluice mock` and upstreams with `builtin = "mock"` (started in-process on a
//! loopback port), so a newcomer, the tests and the benchmarks need no provider account.
//!
//! Besides the contract, the mock obeys a few request headers so tests can make it misbehave
//! the way real upstreams do (they pass through Sluice like any other header):
//! `x-mock-status: 503` (answer that error), `x-mock-latency-ms: N` (wait before answering),
//! `x-mock-chunk-delay-ms: N`, `x-mock-die-after: N` (drop the connection after N stream
//! chunks). `GET|POST /v1/mock/echo` answers the request it received (method, path, headers,
//! body) so tests can see exactly what Sluice sent upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Timing of the mock's answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct MockOptions {
    /// Delay before any answer.
    pub latency_ms: u64,
    /// Delay between stream chunks.
    pub chunk_delay_ms: u64,
}

mod anthropic;
mod openai;

type Body = BoxBody<Bytes, std::io::Error>;

/// How a stream is sent: the delay between events, and the event after which the mock dies.
#[derive(Debug, Clone, Copy)]
struct Pace {
    chunk_delay: u64,
    die_after: Option<u64>,
}

/// Sends `events` as a `text/event-stream`, paced, dying where the request asked it to.
fn stream(events: Vec<Bytes>, pace: Pace) -> Response<Body> {
    let Pace {
        chunk_delay,
        die_after,
    } = pace;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        for (i, ev) in events.into_iter().enumerate() {
            if die_after.is_some_and(|n| i as u64 >= n) {
                // Die while "generating": after the events sent so far reached the client.
                tokio::time::sleep(Duration::from_millis(chunk_delay.max(100))).await;
                let _ = tx
                    .send(Err(std::io::Error::other("mock upstream dies mid-stream")))
                    .await;
                return;
            }
            if i > 0 && chunk_delay > 0 {
                tokio::time::sleep(Duration::from_millis(chunk_delay)).await;
            }
            if tx.send(Ok(Frame::data(ev))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(body))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "response build failed"))
}

/// A `data: {json}` event.
fn data_event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// An `event: {name}` + `data: {json}` event (the typed streams).
fn named_event(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

/// The request's JSON.
fn parse(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// The 400 the real APIs answer a body that is not JSON.
fn not_json() -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "body is not JSON")
}

/// Counts as the mock counts tokens: whitespace-separated words.
fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

fn model_of(req: &Value) -> String {
    req.get("model")
        .and_then(Value::as_str)
        .unwrap_or("echo")
        .to_string()
}

fn mock_id(prefix: &str) -> String {
    format!("{prefix}mock{:x}", rand::random::<u64>())
}

/// Serves the mock on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, opts: MockOptions, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req| handle(req, opts));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// Binds `addr` and serves the mock in the background on the current runtime.
pub async fn spawn(
    addr: SocketAddr,
    opts: MockOptions,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, opts, shutdown));
    Ok(local)
}

async fn handle(req: Request<Incoming>, opts: MockOptions) -> Result<Response<Body>, Infallible> {
    let header_u64 = |name: &str| -> Option<u64> {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let latency = header_u64("x-mock-latency-ms").unwrap_or(opts.latency_ms);
    let chunk_delay = header_u64("x-mock-chunk-delay-ms").unwrap_or(opts.chunk_delay_ms);
    let die_after = header_u64("x-mock-die-after");
    let fail_status = header_u64("x-mock-status").and_then(|s| StatusCode::from_u16(s as u16).ok());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let body = match Limited::new(req.into_body(), 64 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large")),
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some(status) = fail_status {
        return Ok(error(status, "mock failure requested by x-mock-status"));
    }
    let pace = Pace {
        chunk_delay,
        die_after,
    };
    let resp = match (method.as_str(), path.as_str()) {
        ("POST", "/v1/chat/completions") => openai::chat(&body, pace),
        ("POST", "/v1/completions") => openai::completions(&body, pace),
        ("POST", "/v1/responses") => openai::responses(&body, pace),
        ("POST", "/v1/embeddings") => openai::embeddings(&body),
        ("POST", "/v1/moderations") => openai::moderations(&body),
        ("POST", "/v1/messages") => anthropic::messages(&body, pace),
        ("POST", "/v1/messages/count_tokens") => anthropic::count_tokens(&body),
        ("GET", "/v1/models") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [{"id": "echo", "object": "model", "created": 0, "owned_by": "sluice-mock"}]}),
        ),
        (_, "/v1/mock/echo") => json_response(
            StatusCode::OK,
            &json!({"method": method.as_str(), "path": path, "headers": headers,
                    "body": String::from_utf8_lossy(&body)}),
        ),
        _ => error(StatusCode::NOT_FOUND, "the mock does not serve this path"),
    };
    Ok(resp)
}

/// The text of a `content` value: a string, or the `text` parts of an array.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                p => p.get("text").and_then(Value::as_str),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The last user message's text, and the words of every message (the prompt's "tokens").
fn last_user_text(messages: &[Value]) -> (String, usize) {
    let text = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default();
    let prompt = messages
        .iter()
        .map(|m| words(&content_text(m.get("content"))))
        .sum();
    (text, prompt)
}

/// Splits text into words, each keeping the whitespace before it, so the pieces concatenate
/// back to the exact text.
fn words_with_space(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if in_word {
                out.push(std::mem::take(&mut cur));
                in_word = false;
            }
            cur.push(c);
        } else {
            in_word = true;
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(v.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap_or_else(|_| {
            Response::new(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed(),
            )
        })
}

fn error(status: StatusCode, msg: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"message": msg, "type": "mock_error", "code": status.as_u16().to_string(), "param": null}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_concatenate_back() {
        for t in ["hello world", "  lead and trail  ", "one", "", "a\n\tb"] {
            assert_eq!(words_with_space(t).concat(), t);
        }
        assert_eq!(words_with_space("a b c").len(), 3);
    }
}
