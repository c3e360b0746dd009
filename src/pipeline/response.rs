//! The response phases: how an answer is handled (passed through, held whole, framed as SSE
//! events), then each chunk of it.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, StatusCode};
use sluice_filters::{JsonBody, Outcome, ResponseHead, Route, StreamEvent};

use super::Call;
use crate::sse::{RawEvent, SseFramer};

/// How the response body is handled.
pub enum RespMode {
    /// Forwarded as it comes (errors, or nothing to read).
    Pass,
    /// A non-streamed 2xx body held whole (bounded) for filters and usage.
    Hold(BytesMut),
    /// A streamed 2xx body framed into SSE events.
    Sse(SseFramer),
}

/// How the answer is handled: changed here only.
pub(crate) struct Answer {
    mode: RespMode,
    /// The first bytes of a stream went out (time to first token observed).
    first_sent: bool,
    /// The answer is counted in `sluice_active_streams`.
    stream_counted: bool,
}

impl Answer {
    /// The answer ended: it no longer counts as an active stream.
    pub(crate) fn ended(&mut self, metrics: &crate::metrics::EngineMetrics) {
        if std::mem::take(&mut self.stream_counted) {
            metrics.active_streams.dec();
        }
    }
}

impl Default for Answer {
    fn default() -> Answer {
        Answer {
            mode: RespMode::Pass,
            first_sent: false,
            stream_counted: false,
        }
    }
}

/// What the upstream response head becomes.
#[derive(Debug, Default)]
pub struct HeadPlan {
    pub remove: Vec<HeaderName>,
    /// Set `content-type: application/json` (the route reshaped the answer, see
    /// [`crate::agents::route::Reshape`]).
    pub json_content_type: bool,
}

/// Why a response could not be delivered (the adapter turns it into a Pingora error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub why: &'static str,
}

impl Call {
    /// The upstream's response head: chooses the body's handling, runs the chain's response
    /// head phase.
    pub fn on_response_head(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<HeadPlan, Refused> {
        if let Some(retry) = self.retry_on_status(status, headers) {
            return Err(retry);
        }
        let t0 = Instant::now();
        self.t.response_head(t0);
        self.attempt.answered(status);
        let mut plan = HeadPlan {
            remove: crate::headers::hop_by_hop_present(headers),
            json_content_type: false,
        };
        self.hide_upstream_headers(headers, &mut plan.remove);
        let header = |n: http::header::HeaderName| {
            headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("")
        };
        let ctype = header(http::header::CONTENT_TYPE);
        let is_sse = ctype.starts_with("text/event-stream");
        let is_json = ctype.contains("json");
        let enc = header(http::header::CONTENT_ENCODING);
        let encoded = !enc.is_empty() && !enc.eq_ignore_ascii_case("identity");
        let needs = self.snap.chain.needs();
        let server = &self.snap.config.server;
        let reshaped = self.routing.reshape().is_some();
        self.answer.mode = if self.cx.route == Route::Unknown {
            RespMode::Pass
        } else if !status.is_success() {
            // Error bodies are scanned like answers (an upstream may echo the prompt).
            if needs.response_body && !reshaped && !is_sse {
                RespMode::Hold(BytesMut::new())
            } else {
                RespMode::Pass
            }
        } else if is_sse {
            RespMode::Sse(SseFramer::new(server.max_sse_event_bytes))
        } else if reshaped || needs.response_body || is_json {
            RespMode::Hold(BytesMut::new())
        } else {
            RespMode::Pass
        };
        let reads = needs.response_body || needs.stream_events || reshaped;
        if !matches!(self.answer.mode, RespMode::Pass) && encoded && reads {
            // Fail closed: a body the filters cannot read is not delivered.
            self.end
                .fail(Outcome::UpstreamError, "upstream_unscannable");
            return Err(Refused {
                status: 502,
                why: "upstream sent a compressed body although identity was requested",
            });
        }
        if matches!(self.answer.mode, RespMode::Hold(_)) && encoded {
            // Only usage was to be read, and it cannot be: pass the body as it is.
            self.answer.mode = RespMode::Pass;
        }
        // A held body keeps the upstream's Content-Length when nothing can change it (no filter
        // reads response bodies and the route does not reshape it): Pingora then sends the
        // header and the body in one write.
        let length_kept = matches!(self.answer.mode, RespMode::Hold(_))
            && !needs.response_body
            && !reshaped
            && headers.contains_key("content-length");
        if !matches!(self.answer.mode, RespMode::Pass) && !length_kept {
            plan.remove.push(http::header::CONTENT_LENGTH);
        }
        if matches!(self.answer.mode, RespMode::Sse(_)) {
            self.state.metrics.active_streams.inc();
            self.answer.stream_counted = true;
        }
        plan.json_content_type = reshaped && matches!(self.answer.mode, RespMode::Hold(_));
        self.gate_answer();
        let head = ResponseHead { status, headers };
        let snap = self.snap.clone();
        snap.chain.on_response_head(&head, &mut self.cx);
        self.t.hooks(t0.elapsed());
        Ok(plan)
    }

    /// The upstream's `Server` and `server.hide_response_headers` never reach the client.
    fn hide_upstream_headers(&self, headers: &HeaderMap, remove: &mut Vec<HeaderName>) {
        if headers.contains_key(http::header::SERVER) {
            remove.push(http::header::SERVER);
        }
        for name in &self.snap.config.server.hide_response_headers {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                if headers.contains_key(&n) && !remove.contains(&n) {
                    remove.push(n);
                }
            }
        }
    }

    /// Whether the answer is framed as SSE events (a failure can still end it with one).
    pub(crate) fn is_streamed(&self) -> bool {
        matches!(self.answer.mode, RespMode::Sse(_))
    }

    /// Whether the answer's body is held whole (the last chunk carries all of it).
    pub fn is_held(&self) -> bool {
        matches!(self.answer.mode, RespMode::Hold(_))
    }

    /// What a held answer's head gains once its body is read: `x-sluice-cost-usd`, the real
    /// cost the request was priced at when it completed (0 for an unpriced model).
    pub fn late_header(&self) -> Option<(HeaderName, http::HeaderValue)> {
        if !(200..300).contains(&self.upstream_status()) {
            return None;
        }
        let cost = self.cx.extensions.get::<sluice_filters::spend::Cost>()?;
        Some(cost.header())
    }

    /// The request id every response carries as `x-request-id`.
    pub fn request_id(&self) -> &str {
        &self.cx.request_id
    }

    /// The other headers every response to this request carries (rate limits).
    pub fn response_headers(&self) -> &[(HeaderName, http::HeaderValue)] {
        &self.cx.response_headers
    }

    /// One chunk of the upstream's body (`end`: its last). Rewrites `body` in place.
    pub fn on_response_body(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<(), Refused> {
        let t0 = Instant::now();
        if end {
            self.t.upstream_ended(t0);
        }
        let mut mode = std::mem::replace(&mut self.answer.mode, RespMode::Pass);
        let result = match &mut mode {
            RespMode::Pass => {
                if self.cx.stream
                    && !self.answer.first_sent
                    && body.as_ref().is_some_and(|b| !b.is_empty())
                {
                    self.first_sent();
                }
                self.gate_bytes(body, end)
            }
            RespMode::Hold(buf) => self.hold_body(buf, body, end),
            RespMode::Sse(framer) => self.frame_events(framer, body, end),
        };
        self.answer.mode = mode;
        if !end {
            // Inside the upstream's span; the last call's time comes after it.
            self.t.hooks(t0.elapsed());
        }
        result
    }

    fn hold_body(
        &mut self,
        buf: &mut BytesMut,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<(), Refused> {
        if let Some(b) = body.take() {
            if buf.len() + b.len() > self.snap.config.server.max_response_body_bytes {
                // Fail closed: an answer too large to scan is not delivered.
                self.end.fail(Outcome::UpstreamError, "response_too_large");
                return Err(Refused {
                    status: 502,
                    why: "upstream response over max_response_body_bytes",
                });
            }
            buf.extend_from_slice(&b);
        }
        if !end {
            return Ok(());
        }
        let raw = std::mem::take(buf).freeze();
        self.trace_answer(&raw);
        let snap = self.snap.clone();
        if !snap.chain.needs().response_body && self.routing.reshape().is_none() {
            // No filter reads the body (and its Content-Length was kept).
            self.read_usage(answer_usage(&raw));
            *body = Some(raw);
            return self.gate_bytes(body, true);
        }
        // Parsed only if a filter (or the route's reshape) asks for the document.
        let mut jb = JsonBody::lazy(raw.clone());
        snap.chain.on_response_body(&mut jb, &mut self.cx);
        // The usage, after the filters (none reads it): from the document if one of them had it
        // parsed and left it as it was, else read alone from the bytes as received.
        let usage = match jb.json_if_parsed() {
            Some(doc) if !jb.is_changed() => doc.get("usage").cloned(),
            _ => answer_usage(&raw),
        };
        self.read_usage(usage);
        let out = match self.routing.reshape() {
            Some(r) => r.answer(&self.cx, jb.json()),
            None => jb.to_bytes(),
        };
        *body = Some(out);
        self.gate_bytes(body, true)
    }

    fn read_usage(&mut self, usage: Option<serde_json::Value>) {
        if let Some(u) = usage.and_then(|u| self.cx.api.usage(&u)) {
            self.cx.usage = Some(u);
        }
    }

    fn frame_events(
        &mut self,
        framer: &mut SseFramer,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<(), Refused> {
        let mut raw_events: Vec<RawEvent> = Vec::new();
        if let Some(b) = body.take() {
            if framer.push(&b, &mut raw_events).is_err() {
                self.end.fail(Outcome::UpstreamError, "event_too_large");
                return Err(Refused {
                    status: 502,
                    why: "SSE event over max_sse_event_bytes",
                });
            }
        }
        if end {
            framer.finish(&mut raw_events);
        }
        if raw_events.is_empty() && !end {
            return Ok(());
        }
        let api = self.cx.api;
        let asked = self.cx.client_wants_stream_usage;
        let mut events: Vec<StreamEvent> = Vec::with_capacity(raw_events.len());
        for ev in raw_events {
            // Parsed only if a filter (or the usage reader) asks for the JSON.
            let mut se = StreamEvent::lazy(ev.raw, ev.data);
            if api.stream_usage(&mut se, asked, &mut self.cx.usage) {
                self.trace_event(&se);
                events.push(se);
            }
        }
        let snap = self.snap.clone();
        snap.chain.on_stream_events(&mut events, end, &mut self.cx);
        let out = self.gate_events(&events, end)?;
        if !out.is_empty() && !self.answer.first_sent {
            self.first_sent();
        }
        *body = Some(out);
        Ok(())
    }

    fn first_sent(&mut self) {
        self.answer.first_sent = true;
        let model = self.cx.model.as_deref().unwrap_or("");
        self.state
            .metrics
            .ttft
            .with_label_values(&[model])
            .observe(self.cx.started.elapsed().as_secs_f64());
    }
}

/// An answer's top-level `usage` object, read without building the rest of the document.
fn answer_usage(raw: &[u8]) -> Option<serde_json::Value> {
    #[derive(serde::Deserialize)]
    struct UsageOnly {
        usage: Option<serde_json::Value>,
    }
    serde_json::from_slice::<UsageOnly>(raw).ok()?.usage
}
