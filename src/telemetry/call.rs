//! One request's spans, driven by the pipeline's phases (`Call::trace_*`). Each hook returns
//! at once when `[telemetry]` is off (`Call::trace` is `None`) and records nothing for a
//! request that is not sampled (its span does not record) beyond what propagation needs.

use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::Span;
use sluice_filters::api::FinishReasons;
use sluice_filters::{Exchange, Outcome, Route, StreamEvent};

use crate::pipeline::{Call, FailKind, UpstreamHead};

const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The spans of one request.
pub struct CallTrace {
    request: Span,
    /// When the request-phase filters started and gave their verdict.
    chain: (Option<Instant>, Option<Instant>),
    /// The current upstream attempt.
    upstream: Option<Span>,
    finish_reasons: FinishReasons,
}

/// `gen_ai.operation.name` of a route (OpenTelemetry's GenAI conventions): the Responses API
/// and Anthropic's Messages are chat-style inference (`chat`); an agent run is `invoke_agent`.
/// Routes that run no model (model lists, keys, token counting, passthrough) have none.
fn operation(route: Route) -> Option<&'static str> {
    match route {
        Route::Api(r) => r.operation,
        Route::AgentRun => Some("invoke_agent"),
        _ => None,
    }
}

/// `http.request.method`: the known methods, else `_OTHER` (a method is client text).
fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// `error.type` of a failed upstream attempt.
fn upstream_error(kind: FailKind) -> Option<&'static str> {
    match kind {
        FailKind::UpstreamTimeout => Some("timeout"),
        FailKind::UpstreamConnect => Some("connect"),
        FailKind::UpstreamTls => Some("tls"),
        FailKind::UpstreamReset => Some("reset"),
        _ => None,
    }
}

/// Writes the trace context into the upstream request's head.
struct HeadInjector<'a>(&'a mut UpstreamHead, bool);

impl Injector for HeadInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            "traceparent" => "traceparent",
            "tracestate" => {
                self.1 = true;
                "tracestate"
            }
            _ => return,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.0.insert.push((name, v));
        }
    }
}

impl Call {
    /// The wall-clock time of a monotonic instant of this request.
    fn wall(&self, at: Instant) -> SystemTime {
        self.cx.started_at + at.saturating_duration_since(self.cx.started)
    }

    /// Starts the request's server span, continuing the client's `traceparent`.
    pub(crate) fn trace_begin(&mut self, headers: &HeaderMap) {
        let Some(tel) = &self.state.telemetry else {
            return;
        };
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let request = tel
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .with_start_time(self.cx.started_at)
            .start_with_context(&tel.tracer, &parent);
        self.trace = Some(Box::new(CallTrace {
            request,
            chain: (None, None),
            upstream: None,
            finish_reasons: FinishReasons::default(),
        }));
    }

    /// The request-phase filters start (`true`) or have given their verdict (`false`).
    pub(crate) fn trace_chain(&mut self, start: bool) {
        if let Some(tr) = self.trace.as_mut() {
            let now = Some(Instant::now());
            if start {
                tr.chain.0 = tr.chain.0.or(now);
            } else {
                tr.chain.1 = now;
            }
        }
    }

    /// Starts the `upstream` span and sends its context upstream as `traceparent` (replacing
    /// the client's, whose trace it continues). Not sampled: the request's own context goes,
    /// flagged unsampled, so the upstream does not record either.
    pub(crate) fn trace_upstream(&mut self, head: &mut UpstreamHead, client: &HeaderMap) {
        let Some(tel) = &self.state.telemetry else {
            return;
        };
        let Some(tr) = self.trace.as_mut() else {
            return;
        };
        let now = Instant::now();
        let start = self.cx.started_at
            + self
                .t
                .upstream_started()
                .unwrap_or(now)
                .saturating_duration_since(self.cx.started);
        let sent: SpanContext = if tr.request.is_recording() {
            if let Some(mut previous) = tr.upstream.take() {
                // Another attempt: the previous one ended now.
                previous.set_status(Status::error("attempt replaced"));
                previous.end_with_timestamp(
                    self.cx.started_at + now.saturating_duration_since(self.cx.started),
                );
            }
            let parent = Context::new().with_remote_span_context(tr.request.span_context().clone());
            let mut attrs = Vec::with_capacity(3);
            if let Some(u) = self
                .attempt
                .upstream()
                .and_then(|i| self.snap.upstreams.get(i))
            {
                attrs.push(KeyValue::new("sluice.upstream", u.name.clone()));
                attrs.push(KeyValue::new("server.address", u.host.clone()));
                attrs.push(KeyValue::new("server.port", i64::from(u.addr.port())));
            }
            let span = tel
                .tracer
                .span_builder("upstream")
                .with_kind(SpanKind::Client)
                .with_start_time(start)
                .with_attributes(attrs)
                .start_with_context(&tel.tracer, &parent);
            let sc = span.span_context().clone();
            tr.upstream = Some(span);
            sc
        } else {
            tr.request.span_context().clone()
        };
        let cx = Context::new().with_remote_span_context(sent);
        let mut inj = HeadInjector(head, false);
        TraceContextPropagator::new().inject_context(&cx, &mut inj);
        if !inj.1 && client.contains_key(TRACESTATE) {
            head.remove.push(TRACESTATE);
        }
    }

    /// A whole answer's finish reasons (its bytes as the upstream sent them).
    pub(crate) fn trace_answer(&mut self, answer: &[u8]) {
        if let Some(tr) = self.trace.as_mut().filter(|t| t.request.is_recording()) {
            self.cx.api.finish_reasons(answer, &mut tr.finish_reasons);
        }
    }

    /// A stream event's finish reasons.
    pub(crate) fn trace_event(&mut self, ev: &StreamEvent) {
        if let Some(tr) = self.trace.as_mut().filter(|t| t.request.is_recording()) {
            self.cx
                .api
                .stream_finish_reasons(ev, &mut tr.finish_reasons);
        }
    }

    /// Ends the spans: `chain` and `upstream` at the times they ended, the request now, with
    /// what the request came to.
    pub(crate) fn trace_finish(&mut self, ex: &Exchange, error: Option<FailKind>) {
        let Some(tr) = self.trace.take() else {
            return;
        };
        let CallTrace {
            mut request,
            chain,
            upstream,
            finish_reasons,
        } = *tr;
        if !request.is_recording() {
            return;
        }
        let now = Instant::now();
        if let (Some(tel), Some(start)) = (&self.state.telemetry, chain.0) {
            let parent = Context::new().with_remote_span_context(request.span_context().clone());
            let mut span = tel
                .tracer
                .span_builder("chain")
                .with_kind(SpanKind::Internal)
                .with_start_time(self.wall(start))
                .start_with_context(&tel.tracer, &parent);
            span.end_with_timestamp(self.wall(chain.1.unwrap_or(now)));
        }
        if let Some(mut span) = upstream {
            self.end_upstream(&mut span, error, now);
        }
        request.update_name(self.cx.route.label());
        request.set_attributes(self.request_attributes(ex, finish_reasons));
        if matches!(ex.outcome, Outcome::UpstreamError | Outcome::InternalError) {
            request.set_status(Status::error(ex.error_code.unwrap_or(ex.outcome.as_str())));
        }
        request.end_with_timestamp(SystemTime::now());
    }

    fn end_upstream(&self, span: &mut Span, error: Option<FailKind>, now: Instant) {
        let status = self.upstream_status();
        if status != 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        let failed = error.and_then(upstream_error).or_else(|| {
            self.end
                .failure()
                .filter(|(o, _)| *o == Outcome::UpstreamError)
                .map(|(_, code)| code)
        });
        match failed {
            Some(kind) => {
                span.set_attribute(KeyValue::new("error.type", kind));
                span.set_status(Status::error(kind));
            }
            None if status >= 400 => {
                span.set_attribute(KeyValue::new("error.type", status.to_string()));
                span.set_status(Status::error(status.to_string()));
            }
            None => {}
        }
        let end = self.t.upstream_done().unwrap_or(now);
        span.end_with_timestamp(self.wall(end));
    }

    fn request_attributes(&self, ex: &Exchange, reasons: FinishReasons) -> Vec<KeyValue> {
        let cx = &self.cx;
        let mut a = Vec::with_capacity(14);
        a.push(KeyValue::new("sluice.route", cx.route.label()));
        a.push(KeyValue::new("sluice.outcome", ex.outcome.as_str()));
        a.push(KeyValue::new("sluice.request_id", cx.request_id.clone()));
        a.push(KeyValue::new(
            "http.request.method",
            method_name(&cx.method),
        ));
        if ex.status != 0 {
            a.push(KeyValue::new(
                "http.response.status_code",
                i64::from(ex.status),
            ));
        }
        if ex.outcome != Outcome::Ok {
            let kind = ex.error_code.unwrap_or(ex.outcome.as_str());
            a.push(KeyValue::new("error.type", kind));
        }
        if let Some(op) = operation(cx.route) {
            a.push(KeyValue::new("gen_ai.operation.name", op));
            a.push(KeyValue::new("sluice.stream", cx.stream));
        }
        // Set only once routed: a configured model, never a name the client made up.
        if let Some(m) = &cx.model {
            a.push(KeyValue::new("gen_ai.request.model", m.clone()));
        }
        if let Some(u) = cx.usage {
            a.push(KeyValue::new(
                "gen_ai.usage.input_tokens",
                i64::try_from(u.prompt_tokens).unwrap_or(i64::MAX),
            ));
            a.push(KeyValue::new(
                "gen_ai.usage.output_tokens",
                i64::try_from(u.completion_tokens).unwrap_or(i64::MAX),
            ));
        }
        if !reasons.is_empty() {
            let values: Vec<StringValue> = reasons
                .into_vec()
                .into_iter()
                .map(StringValue::from)
                .collect();
            a.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(values)),
            ));
        }
        if let Some(up) = &cx.upstream {
            a.push(KeyValue::new("sluice.upstream", up.clone()));
        }
        if let Some(id) = &cx.identity {
            a.push(KeyValue::new("sluice.org", id.org.to_string()));
            // How the caller authenticated (SPEC §13): key, jwt or session.
            let method = cx.extensions.get::<sluice_filters::auth::AuthMethod>();
            a.push(KeyValue::new(
                "sluice.auth",
                method.map_or("key", |m| m.as_str()),
            ));
        }
        a
    }
}
