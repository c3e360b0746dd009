//! The request path, without Pingora: what Sluice does with one request, phase by phase.
//!
//! A [`Call`] is one request's state. The Pingora adapter (`proxy.rs`) feeds it what the
//! session holds and applies what it decides:
//!
//! ```text
//! begin(head)            route, request id, auth from the headers    → read the body, or reply
//! on_body(head, bytes)   parse, read the route's API facts, route by
//!                        model, run the chain, answer local routes    → forward, or reply
//! upstream_head()        what the upstream request's head becomes
//! on_response_head(..)   how the answer is handled (passed, held, framed as SSE)
//! on_response_body(..)   chunk by chunk: scanning, usage, redaction
//! on_failure(..) / log() every outcome: errors in the route's API shape, metrics, audit
//! ```
//!
//! Between the body phase and the log, `attempt.rs` runs the attempts: the first target is
//! picked once the chain admitted the request, and each failed attempt asks it whether (and
//! where) to go again (`crate::upstream` decides).
//!
//! So the whole pipeline — filters, APIs, routing — is unit-tested without a socket, and the
//! adapter stays a thin translation of Pingora's hooks.
//!
//! Who changes what: the request's state is in pieces, each a struct with private fields in the
//! file that changes it; the other files read it through methods, or ask its owner for a change
//! by name (`self.end.fail(..)`, `self.t.upstream_ended(..)`).
//!
//! ```text
//! request.rs   Routing   path ids, raw path, upstream path, the route's Reshape (agent runs)
//! attempt.rs   Attempt   targets, current upstream, attempts, upstream status, body sent
//! response.rs  Answer    passed / held / SSE, first byte sent, counted as an active stream
//! finish.rs    End       local reply, failure, completion hook ran
//! timing.rs    Timing    where the time went (overhead, upstream latency)
//! gate.rs      Gate      what is kept back until the completion hook ran
//! ```
//!
//! The request's facts (model, stream, output ceiling …) live in `cx`, where filters read them.
//! Agent runs are a route module (`crate::agents::route`): the pipeline calls it and holds the
//! [`crate::agents::route::Reshape`] it returns, and has no agent flags.

mod attempt;
mod finish;
mod gate;
mod passthrough;
mod request;
mod response;
mod scrub;
mod timing;
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method};
use sluice_filters::{Cx, Reply};

pub use attempt::TargetsOf;
pub use finish::{FailAction, FailKind};
pub use response::{HeadPlan, Refused, RespMode};
pub use upstream::UpstreamHead;

use crate::state::{EngineState, InflightGuard, Snapshot};
use timing::Timing;

/// The request line and headers, and where the request came in.
pub struct Head<'a> {
    pub method: &'a Method,
    /// The path as received (not yet normalized), without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: Option<IpAddr>,
    /// The listener's own address (asynchronous agent runs call it).
    pub listen: Option<SocketAddr>,
}

/// What the request phase decided.
pub enum Step {
    /// Send the request upstream.
    Forward,
    /// Answer locally.
    Reply(Reply),
}

/// One request's state, from its head to its log.
pub struct Call {
    pub(crate) state: Arc<EngineState>,
    pub(crate) snap: Arc<Snapshot>,
    pub cx: Cx,
    _inflight: InflightGuard,
    /// Where the request goes, and its attempts (`attempt.rs`).
    pub(crate) attempt: attempt::Attempt,
    /// What the request line routed it to (`request.rs`).
    pub(crate) routing: request::Routing,
    /// How the request ends (`finish.rs`).
    pub(crate) end: finish::End,
    /// How the answer is handled (`response.rs`).
    pub(crate) answer: response::Answer,
    /// Where the time went (`timing.rs`).
    pub(crate) t: Timing,
    /// A completion hook may refuse (audit under `fsync = "always"`): what is kept back of the
    /// answer until it ran (`gate.rs`).
    pub(crate) gate: Option<gate::Gate>,
    /// The gateway's own start-up probe: answered 204, never logged or audited.
    pub probe: bool,
    /// A console request (`crate::console`): answered and audited by the console itself.
    pub console: bool,
    /// The client-chosen fields were redacted for the record (set by `scrub.rs` only).
    pub(crate) scrubbed: bool,
    /// This request's spans, when traces are on (`crate::telemetry`).
    pub(crate) trace: Option<Box<crate::telemetry::CallTrace>>,
}

impl Call {
    pub fn new(state: &Arc<EngineState>) -> Call {
        Call {
            snap: state.snapshot.load_full(),
            cx: Cx::new(String::new(), Method::GET, String::new()),
            _inflight: InflightGuard::new(state),
            state: state.clone(),
            attempt: attempt::Attempt::default(),
            routing: request::Routing::default(),
            end: finish::End::default(),
            answer: response::Answer::default(),
            t: Timing::new(),
            gate: None,
            probe: false,
            console: false,
            scrubbed: false,
            trace: None,
        }
    }

    /// A reply's body in the route's API shape (errors are built in OpenAI's).
    pub fn render(&self, reply: &Reply) -> Bytes {
        match &reply.error_info {
            Some(e) => self.cx.api.error_body(e),
            None => reply.body.clone(),
        }
    }
}

#[cfg(test)]
mod evasion_tests;
#[cfg(test)]
mod tests;
