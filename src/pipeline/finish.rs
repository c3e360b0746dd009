//! How a request ends: failures in the route's API shape, the filters' completion hook, the
//! metrics and the chain's log phase.

use bytes::Bytes;
use sluice_filters::api::ErrorInfo;
use sluice_filters::{Exchange, Outcome, Reply};

use super::Call;

/// How a request ends: changed here only (and by the MCP route, through these methods).
#[derive(Default)]
pub(crate) struct End {
    /// A reply Sluice produced itself (or an error it turned into one): its outcome and code.
    local: Option<(Outcome, Option<&'static str>)>,
    /// What went wrong, when something did: it is the outcome logged.
    failure: Option<(Outcome, &'static str)>,
    /// The completion hook ran (the client is being sent a complete answer).
    completed: bool,
}

impl End {
    /// Records a failure (the last one recorded is the outcome).
    pub(crate) fn fail(&mut self, outcome: Outcome, code: &'static str) {
        self.failure = Some((outcome, code));
    }

    /// Records a failure unless one is recorded already.
    fn fail_first(&mut self, outcome: Outcome, code: &'static str) {
        self.failure.get_or_insert((outcome, code));
    }

    /// The failure recorded, if any.
    pub(crate) fn failure(&self) -> Option<(Outcome, &'static str)> {
        self.failure
    }

    /// Sluice answered the request itself, with this outcome.
    pub(crate) fn answered(&mut self, outcome: Outcome, code: Option<&'static str>) {
        self.local = Some((outcome, code));
    }

    /// Marks the answer complete. `false`: it was already.
    pub(crate) fn complete(&mut self) -> bool {
        !std::mem::replace(&mut self.completed, true)
    }
}

/// A failure, as the adapter classifies its proxy's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The client went away or stopped sending (its body, or reading the answer).
    ClientClosed,
    /// The client was too slow (head, body).
    ClientTimeout,
    /// The client sent something HTTP does not allow (bad framing).
    ClientBad,
    UpstreamTimeout,
    UpstreamConnect,
    UpstreamTls,
    /// The upstream reset or closed the connection.
    UpstreamReset,
    /// Sluice refused the answer (unscannable, too large): already recorded in `failure`.
    Refused,
    Internal,
}

/// What the adapter must do about a failure.
pub enum FailAction {
    /// Nothing can be sent (the client is gone, or a body was already being sent and holds no
    /// events).
    Nothing,
    /// The stream started: end it with this event.
    StreamError(Bytes),
    /// Nothing was sent yet: answer this.
    Reply(Reply),
}

impl Call {
    pub(crate) fn exchange(
        &self,
        status: u16,
        outcome: Outcome,
        code: Option<&'static str>,
    ) -> Exchange {
        Exchange {
            status,
            outcome,
            latency: self.cx.started.elapsed(),
            upstream_latency: self.t.upstream_latency(),
            error_code: code,
        }
    }

    /// Marks a local reply as sent: its outcome for the log, and the filters' durability hook.
    /// `false`: a success whose record is not durable, which must not be sent (the adapter
    /// closes the connection instead).
    pub fn replied(&mut self, reply: &Reply) -> bool {
        self.end.answered(reply.outcome, reply.code);
        if self.cx.route == sluice_filters::Route::Root {
            // Not an API call: no chain, no record (SPEC §3).
            self.end.complete();
            return true;
        }
        self.scrub_record();
        let ex = self.exchange(reply.status.as_u16(), reply.outcome, reply.code);
        // Priced now (SPEC §15): under `fsync = "always"` the record is written here.
        let snap = self.snap.clone();
        snap.spend
            .price_request(&snap.config.prices, &ex, &mut self.cx);
        let done = self.snap.chain.on_response_complete(&ex, &self.cx);
        self.cx.response_completed = true;
        self.end.complete();
        if done.is_ok() || !reply.status.is_success() {
            // A refusal goes out even so: it hands the client nothing the trail lacks.
            return true;
        }
        self.end
            .fail(Outcome::AuditUnavailable, "audit_unavailable");
        false
    }

    /// Just before the last bytes go out: the filters' durability hook. `Err`: the answer must
    /// not complete (its record is not durable); the failure is recorded as the audit's.
    pub(crate) fn complete(&mut self) -> Result<(), super::Refused> {
        if !self.end.complete() {
            return Ok(());
        }
        self.scrub_record();
        let outcome = status_outcome(self.upstream_status());
        let ex = self.exchange(self.upstream_status(), outcome, None);
        // Priced now (SPEC §15): under `fsync = "always"` the record is written here.
        let snap = self.snap.clone();
        snap.spend
            .price_request(&snap.config.prices, &ex, &mut self.cx);
        let done = self.snap.chain.on_response_complete(&ex, &self.cx);
        self.cx.response_completed = true;
        done.map_err(|_| {
            self.end
                .fail(Outcome::AuditUnavailable, "audit_unavailable");
            super::Refused {
                status: 503,
                why: "the audit record of this answer is not durable",
            }
        })
    }

    /// Records a failure the client caused while its request was read (the reply, if any, is
    /// sent by the caller): audited as `bad_request` or `client_closed`, never Sluice's own.
    pub fn client_failed(&mut self, kind: FailKind) {
        match kind {
            FailKind::ClientBad => self.end.fail(Outcome::BadRequest, "bad_request"),
            _ => self.end.fail(Outcome::ClientClosed, "client_closed"),
        }
    }

    /// Decides the answer to a failure. `started`: the client already has a status line.
    pub fn on_failure(&mut self, kind: FailKind, started: bool) -> FailAction {
        self.t.failed();
        // Each failed attempt was counted (sluice_upstream_errors_total) as it failed.
        let upstream = self.upstream_rt().map(|u| u.name.clone());
        let timeout = kind == FailKind::UpstreamTimeout;
        if matches!(kind, FailKind::ClientClosed | FailKind::ClientTimeout) {
            self.end.fail_first(Outcome::ClientClosed, "client_closed");
            return match (kind, started) {
                (FailKind::ClientTimeout, false) => FailAction::Reply(Reply::error(
                    408,
                    "request_timeout",
                    "The request did not arrive in time.",
                )),
                _ => FailAction::Nothing,
            };
        }
        if started {
            // The client already has a status line: end a stream with an error event rather
            // than a silent truncation.
            let code = if timeout {
                "upstream_timeout"
            } else {
                "upstream_unavailable"
            };
            let outcome = match kind {
                FailKind::Internal => Outcome::InternalError,
                FailKind::ClientBad => Outcome::BadRequest,
                _ => Outcome::UpstreamError,
            };
            self.end.fail_first(outcome, code);
            if !self.is_streamed() {
                return FailAction::Nothing;
            }
            if let Some(info) = self.audit_failure_info() {
                return FailAction::StreamError(self.cx.api.stream_error_event(&info).to_bytes());
            }
            let message = if timeout {
                "The upstream stopped sending before the answer was complete (timeout)."
            } else {
                "The upstream connection failed before the answer was complete."
            };
            let info = ErrorInfo {
                status: if timeout { 504 } else { 502 },
                kind: "upstream_error",
                code,
                message: message.into(),
                param: None,
            };
            return FailAction::StreamError(self.cx.api.stream_error_event(&info).to_bytes());
        }
        let name = upstream.as_deref().unwrap_or("?");
        if let Some(info) = self.audit_failure_info() {
            return FailAction::Reply(Reply::error(503, info.code, info.message));
        }
        let reply = match kind {
            FailKind::Refused => Reply::error(
                502,
                "upstream_unavailable",
                "The upstream's answer could not be scanned (compressed, or over the size \
                 bound); nothing was delivered.",
            ),
            FailKind::ClientBad => {
                self.end.fail(Outcome::BadRequest, "bad_request");
                Reply::error(
                    400,
                    "bad_request",
                    "The request could not be parsed (its framing is not valid HTTP/1.1).",
                )
            }
            FailKind::UpstreamTimeout => Reply::error(
                504,
                "upstream_timeout",
                format!("The upstream `{name}` did not answer in time."),
            ),
            FailKind::UpstreamConnect | FailKind::UpstreamTls | FailKind::UpstreamReset => {
                Reply::error(
                    502,
                    "upstream_unavailable",
                    format!(
                        "The upstream `{name}` refused or dropped the connection before answering."
                    ),
                )
            }
            _ => {
                tracing::error!(request_id = %self.cx.request_id, "internal error");
                Reply::error(
                    500,
                    "internal_error",
                    "Sluice failed to handle this request; see the logs with its x-request-id.",
                )
            }
        };
        FailAction::Reply(reply)
    }

    /// The log phase, for every outcome: metrics, then the chain's `on_log` (audit, usage
    /// reconciliation). `status`: what the client received (0: nothing); `error`: the proxy
    /// failed for this reason.
    pub async fn log(&mut self, status: u16, error: Option<FailKind>) {
        if self.probe || self.console {
            return;
        }
        self.end_attempt(error);
        let (outcome, code) = match (self.end.local, self.end.failure, error) {
            (_, Some((o, c)), _) => (o, Some(c)),
            (Some(l), _, _) => l,
            (None, None, Some(FailKind::ClientClosed | FailKind::ClientTimeout)) => {
                (Outcome::ClientClosed, None)
            }
            (None, None, Some(FailKind::ClientBad)) => (Outcome::BadRequest, None),
            (None, None, Some(FailKind::Internal)) => (Outcome::InternalError, None),
            (None, None, Some(_)) => (Outcome::UpstreamError, None),
            (None, None, None) => (status_outcome(self.upstream_status()), None),
        };
        let ex = self.exchange(status, outcome, code);
        let snap = self.snap.clone();
        // The cost (SPEC §15) before the chain's on_log: audit and budgets read it.
        snap.spend
            .price_request(&snap.config.prices, &ex, &mut self.cx);
        self.record_metrics(&ex);
        if self.cx.route == sluice_filters::Route::Root {
            self.trace_finish(&ex, error);
            return;
        }
        self.scrub_record();
        self.trace_finish(&ex, error);
        snap.chain.on_log(&ex, &self.cx).await;
    }

    /// `sluice_requests_total` moves last: a scrape that counts a request sees its duration,
    /// tokens and stream end too.
    fn record_metrics(&mut self, ex: &Exchange) {
        let m = &self.state.metrics;
        let route = self.cx.route.label();
        let model = self.cx.model.as_deref().unwrap_or("");
        m.request_duration
            .with_label_values(&[route])
            .observe(ex.latency.as_secs_f64());
        if let (Some(up), Some(d)) = (self.upstream_rt(), ex.upstream_latency) {
            m.upstream_duration
                .with_label_values(&[up.name.as_str()])
                .observe(d.as_secs_f64());
        }
        m.overhead
            .observe(self.t.overhead(self.cx.stream).as_secs_f64());
        if let Some(u) = self.cx.usage {
            let org = self.cx.identity.as_ref().map(|i| &*i.org).unwrap_or("");
            m.tokens
                .with_label_values(&[model, org, "prompt"])
                .inc_by(u.prompt_tokens);
            m.tokens
                .with_label_values(&[model, org, "completion"])
                .inc_by(u.completion_tokens);
        }
        if let Some(r) = self.routing.reshape() {
            r.count(&self.cx, ex.outcome, m);
        }
        self.answer.ended(m);
        // `StatusCode` spells its three digits from a table: no allocation per request.
        let code = http::StatusCode::from_u16(ex.status);
        let other;
        let status = match &code {
            Ok(code) => code.as_str(),
            Err(_) => {
                other = ex.status.to_string();
                other.as_str()
            }
        };
        m.requests
            .with_label_values(&[route, model, status, ex.outcome.as_str()])
            .inc();
    }
}

fn status_outcome(status: u16) -> Outcome {
    match status {
        200..=399 => Outcome::Ok,
        400..=499 => Outcome::BadRequest,
        _ => Outcome::UpstreamError,
    }
}
