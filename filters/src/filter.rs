//! The [`Filter`] trait: one method per phase, each with a no-op default.

use async_trait::async_trait;
use http::{HeaderMap, Method, StatusCode};

use crate::{Cx, Exchange, JsonBody, Reply, StreamEvent};

/// What a filter asks the engine to do for it. The engine does this work once per request, and
/// not at all when no filter in the chain asks for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Hold a whole non-streamed 2xx response body and hand it to
    /// [`Filter::on_response_body`] (bounded by the engine's response limit).
    pub response_body: bool,
    /// Frame streamed responses into SSE events, parse their JSON and hand them to
    /// [`Filter::on_stream_events`].
    pub stream_events: bool,
}

impl Needs {
    pub fn union(self, other: Needs) -> Needs {
        Needs {
            response_body: self.response_body || other.response_body,
            stream_events: self.stream_events || other.stream_events,
        }
    }
}

/// A filter's decision in a request phase.
#[derive(Debug)]
pub enum Verdict {
    /// Go on with the next filter, then the upstream.
    Continue,
    /// Answer the client with this reply; the upstream is never contacted.
    Respond(Reply),
}

/// The request line and headers, before the body is read.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The path without the query string.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestHead<'_> {
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The whole request once its body has been read (bounded by `max_request_body_bytes`).
///
/// Filters may rewrite the body (`body.json_mut()`); the engine re-encodes it and fixes the
/// upstream framing.
pub struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a mut JsonBody,
}

/// The upstream's response status and headers, before they reach the client. Headers to add
/// go through [`Cx::set_response_header`].
pub struct ResponseHead<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
}

/// A stage of the gateway's chain.
///
/// Request phases run in chain order, response phases in reverse order, and
/// [`Filter::on_log`] runs for every request whatever its outcome (local replies, errors, client
/// disconnects included), in chain order.
///
/// A filter keeps its per-request state in [`Cx::extensions`]; its configuration and long-lived
/// state in itself. One instance serves all requests concurrently.
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    /// The filter's name, as in logs (`auth`, `rate_limit`, …).
    fn name(&self) -> &str;

    /// What the engine must prepare for this filter on the response side.
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// Runs before the body is read: cheap checks that need only headers (authentication).
    async fn on_request_head(&self, _head: &RequestHead<'_>, _cx: &mut Cx) -> Verdict {
        Verdict::Continue
    }

    /// Runs once the body has been read and the route, model and stream flag are known
    /// (`cx.route`, `cx.model`, `cx.stream`): permissions, rate limits, body scanning.
    async fn on_request(&self, _req: &mut Request<'_>, _cx: &mut Cx) -> Verdict {
        Verdict::Continue
    }

    /// The upstream's response headers (any status). Runs in reverse chain order.
    fn on_response_head(&self, _resp: &ResponseHead<'_>, _cx: &mut Cx) {}

    /// A whole non-streamed 2xx JSON response body (only when [`Needs::response_body`]).
    fn on_response_body(&self, _body: &mut JsonBody, _cx: &mut Cx) {}

    /// The SSE events of a streamed 2xx response that arrived in one read, in order (only when
    /// [`Needs::stream_events`]). A filter may rewrite, remove or insert events; `end` is true
    /// once, after the upstream's last byte, so that held-back data can be flushed (insert it
    /// before a trailing `[DONE]`).
    fn on_stream_events(&self, _events: &mut Vec<StreamEvent>, _end: bool, _cx: &mut Cx) {}

    /// Runs synchronously just before the last bytes of a response go to the client (an
    /// upstream's answer or a local reply). A filter that must make something durable before
    /// the client can hold a complete response (audit with `fsync = "always"`) does it here and
    /// may block (bounded); [`Filter::on_log`] still runs afterwards. Not called when the
    /// request fails before its response completes. `Err` (why): what had to be made durable
    /// is not; the engine then withholds the response's last byte (closes the connection, or
    /// ends a stream with an error event), so that no client holds an answer it should not.
    fn on_response_complete(&self, _ex: &Exchange, _cx: &Cx) -> Result<(), String> {
        Ok(())
    }

    /// Whether [`Filter::on_response_complete`] may refuse: the engine then keeps the last
    /// byte of a response back until the hook ran.
    fn gates_completion(&self) -> bool {
        false
    }

    /// `Err` (why) while this filter refuses every request anyway (the audit trail cannot be
    /// written and fails closed): `/readyz` answers 503 so that a load balancer moves traffic
    /// elsewhere.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    /// Runs after the response was delivered or the request failed, for every outcome.
    async fn on_log(&self, _ex: &Exchange, _cx: &Cx) {}

    /// Records something that belongs on the record but is not a request's own exchange: a
    /// change made through the admin API, or the key a request created or revoked. `cx`
    /// describes it like a request (request id, method, path, client; the changed key as the
    /// identity), `ex` how it ended. The audit filter writes it as a record of its own on the
    /// same hash chain (durably first under `fsync = "always"`); other filters ignore it.
    async fn on_event(&self, _cx: &Cx, _ex: &Exchange) {}

    /// Runs once when the gateway stops (after draining): flush what must not be lost.
    async fn shutdown(&self) {}
}

/// A reply for the common case of a filter refusing a request.
impl From<Reply> for Verdict {
    fn from(r: Reply) -> Self {
        Verdict::Respond(r)
    }
}
