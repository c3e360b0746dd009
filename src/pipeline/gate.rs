//! The completion gate: under a filter whose completion hook may refuse (audit with
//! `fsync = "always"`, SPEC §6), no client may hold a complete answer before the hook said yes.
//!
//! So a little of each answer is kept back until the upstream's last byte, when the hook runs:
//! - passed through (or held whole): the last byte; without it a `Content-Length` or chunked
//!   body is not complete, and a refusal closes the connection;
//! - a stream: its terminal event (`data: [DONE]`, `message_stop`, `response.completed` …) and
//!   whatever follows it in the same read; a refusal replaces them by an error event.
//!
//! What is kept back is at most one byte, or the terminal event and what follows it, which the
//! SSE framer already bounds by `max_sse_event_bytes` per event.

use bytes::{Bytes, BytesMut};
use sluice_filters::api::ErrorInfo;
use sluice_filters::StreamEvent;

use super::{Call, Refused};

/// What is kept back of the answer until its completion hook ran.
#[derive(Default)]
pub(crate) struct Gate {
    held: Option<Bytes>,
}

/// The events that say a stream is complete, by name or by their JSON `type`.
const TERMINAL: [&str; 5] = [
    "message_stop",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "response.done",
];

fn is_terminal(ev: &StreamEvent) -> bool {
    if ev.is_done() {
        return true;
    }
    let named = |n: &[u8]| TERMINAL.iter().any(|t| t.as_bytes() == n);
    if ev.name().is_some_and(named) {
        return true;
    }
    ev.json()
        .and_then(|v| v.get("type"))
        .and_then(|t| t.as_str())
        .is_some_and(|t| named(t.as_bytes()))
}

fn join(a: Option<Bytes>, b: Bytes) -> Bytes {
    match a {
        None => b,
        Some(a) if b.is_empty() => a,
        Some(a) if a.is_empty() => b,
        Some(a) => {
            let mut out = BytesMut::with_capacity(a.len() + b.len());
            out.extend_from_slice(&a);
            out.extend_from_slice(&b);
            out.freeze()
        }
    }
}

impl Call {
    /// Sets the gate up for a new answer (each attempt's answer starts afresh).
    pub(crate) fn gate_answer(&mut self) {
        self.gate = self.snap.chain.gates_completion().then(Gate::default);
    }

    /// A chunk about to go out as it is (passed through, or a held body at its end): keeps its
    /// last byte back until `end`, when the completion hook decides.
    pub(crate) fn gate_bytes(
        &mut self,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<(), Refused> {
        let Some(gate) = self.gate.as_mut() else {
            return if end { self.complete() } else { Ok(()) };
        };
        let mut out = join(gate.held.take(), body.take().unwrap_or_default());
        if end {
            self.complete()?;
        } else if !out.is_empty() {
            gate.held = Some(out.split_off(out.len() - 1));
        }
        *body = Some(out);
        Ok(())
    }

    /// A stream's events about to go out: from its terminal event on, they are kept back until
    /// `end`, when the completion hook decides.
    pub(crate) fn gate_events(
        &mut self,
        events: &[StreamEvent],
        end: bool,
    ) -> Result<Bytes, Refused> {
        let bound = self.snap.config.server.max_sse_event_bytes;
        let Some(gate) = self.gate.as_mut() else {
            if end {
                self.complete()?;
            }
            return Ok(encode(events));
        };
        if end {
            let out = join(gate.held.take(), encode(events));
            self.complete()?;
            return Ok(out);
        }
        if gate.held.is_some() {
            // The terminal event is kept back already: so is everything after it (bounded).
            let held = join(gate.held.take(), encode(events));
            if held.len() > bound {
                return Err(Refused {
                    status: 502,
                    why: "the upstream went on sending after its stream's end",
                });
            }
            gate.held = Some(held);
            return Ok(Bytes::new());
        }
        let split = events.iter().position(is_terminal).unwrap_or(events.len());
        if split < events.len() {
            gate.held = Some(encode(&events[split..]));
        }
        Ok(encode(&events[..split]))
    }

    /// The error a withheld answer ends with, when its record was not durable.
    pub(crate) fn audit_failure_info(&self) -> Option<ErrorInfo> {
        match self.end.failure() {
            Some((_, "audit_unavailable")) => Some(ErrorInfo {
                status: 503,
                kind: "server_error",
                code: "audit_unavailable",
                message: "The audit record of this answer could not be made durable, so the \
                          answer is withheld. Retry later; operators: see the gateway's logs \
                          and the audit path's disk."
                    .into(),
                param: None,
            }),
            _ => None,
        }
    }
}

fn encode(events: &[StreamEvent]) -> Bytes {
    let mut out = BytesMut::new();
    for ev in events {
        out.extend_from_slice(&ev.to_bytes());
    }
    out.freeze()
}
