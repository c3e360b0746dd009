//! The request phases: route and authenticate from the head, then parse the body, read the
//! route's API facts, route by model, run the chain and answer the routes Sluice serves.

use std::borrow::Cow;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{json, Value};
use sluice_filters::api::{Api, RequestFacts};
use sluice_filters::{JsonBody, Reply, Request, RequestHead, Route, Verdict};

use super::{Call, Head, Step};
use crate::agents::route::Reshape;
use crate::{agents, routes};

/// What the request line routed the request to: set by the head and body phases here only.
#[derive(Default)]
pub(crate) struct Routing {
    /// The ids in the request path (model or agent; run).
    ids: (Option<String>, Option<String>),
    /// The received path is the normalized one (`cx.path`).
    path_is_raw: bool,
    /// The path to request upstream when it differs from the client's (agent runs, governed
    /// routes spelled differently).
    upstream_path: Option<Cow<'static, str>>,
    /// The route builds the upstream request and the client's answer itself (agent runs).
    reshape: Option<&'static dyn Reshape>,
}

impl Routing {
    /// The path to request upstream when it differs from the client's.
    pub(crate) fn upstream_path(&self) -> Option<&str> {
        self.upstream_path.as_deref()
    }

    /// How the route reshapes the exchange, if it does.
    pub(crate) fn reshape(&self) -> Option<&'static dyn Reshape> {
        self.reshape
    }
}

impl Call {
    /// The head phase: request id, route, the internal run token, and the chain's header checks
    /// (authentication). `Some` is the reply to send without reading the body.
    pub async fn begin(&mut self, head: &Head<'_>) -> Option<Reply> {
        self.trace_begin(head.headers);
        let cx = &mut self.cx;
        cx.request_id = crate::request_id::from_headers(head.headers);
        cx.method = head.method.clone();
        cx.user_agent = head
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect());
        cx.client_ip = head.client_ip;
        cx.query = head.query.map(str::to_string);
        self.scrub_head();
        let cx = &mut self.cx;
        let path = match routes::normalize(head.path) {
            Ok(p) => p,
            Err(reply) => {
                cx.path = head.path.chars().take(256).collect();
                return Some(reply);
            }
        };
        // Usually the path is already normal: filters then read the received one, uncopied.
        self.routing.path_is_raw = matches!(path, Cow::Borrowed(_));
        let m = routes::match_route(head.method, &path);
        cx.route = m.route;
        cx.api = m.api;
        self.routing.ids = (m.id.map(str::to_string), m.run_id.map(str::to_string));
        self.routing.upstream_path = m.canonical.map(Cow::Owned);
        cx.path = path.into_owned();
        if cx.route == Route::Root {
            return Some(Reply::json(200, &json!({"service": "sluice"})));
        }
        let id = self.routing.ids.0.as_deref();
        if let Some(reply) = agents::route::begin(&self.state, &mut self.cx, id, head.headers) {
            return Some(reply);
        }
        let normalized = (!self.routing.path_is_raw).then(|| self.cx.path.clone());
        let rh = RequestHead {
            method: head.method,
            path: normalized.as_deref().unwrap_or(head.path),
            headers: head.headers,
        };
        let snap = self.snap.clone();
        self.trace_chain(true);
        if let Verdict::Respond(r) = snap.chain.on_request_head(&rh, &mut self.cx).await {
            self.trace_chain(false);
            return Some(r);
        }
        if self.cx.route == Route::Unknown {
            let path: String = self.cx.path.chars().take(128).collect();
            return Some(Reply::error(
                404,
                "not_found",
                format!(
                    "No route for {} {path}; the API lives under /v1/.",
                    head.method
                ),
            ));
        }
        None
    }

    /// The body phase: `raw` is the whole request body (bounded by the adapter).
    pub async fn on_body(&mut self, head: &Head<'_>, raw: Bytes) -> Step {
        let api = self.cx.api;
        let mut body = match parse_body(api, head.headers, raw) {
            Ok(b) => b,
            Err(r) => return Step::Reply(r),
        };
        let mut async_input = None;
        if self.cx.route == Route::AgentRun {
            let agent = self.routing.ids.0.as_deref().unwrap_or_default();
            match agents::route::prepare(&self.snap, &mut self.cx, agent, &mut body) {
                Ok(run) => {
                    async_input = run.async_input;
                    self.route_to(Some(run.model));
                    self.routing.upstream_path = Some(Cow::Borrowed(run.upstream_path));
                    self.routing.reshape = Some(run.reshape);
                }
                Err(reply) => return Step::Reply(reply),
            }
        } else if self.cx.route.reaches_model() {
            if let Some(r) = self.read_facts(api, &body) {
                return Step::Reply(r);
            }
            if let Some(r) = self.unnamed_model_refusal() {
                return Step::Reply(r);
            }
        }
        let normalized = (!self.routing.path_is_raw).then(|| self.cx.path.clone());
        let mut request = Request {
            method: head.method,
            path: normalized.as_deref().unwrap_or(head.path),
            headers: head.headers,
            body: &mut body,
        };
        let snap = self.snap.clone();
        let verdict = snap.chain.on_request(&mut request, &mut self.cx).await;
        self.trace_chain(false);
        if let Verdict::Respond(r) = verdict {
            return Step::Reply(r);
        }
        if let Some(reply) = self.local_route(head, async_input, &body).await {
            return Step::Reply(reply);
        }
        if !self.first_attempt(&mut body) {
            return Step::Reply(Reply::error(
                500,
                "internal_error",
                "No upstream was chosen.",
            ));
        }
        Step::Forward
    }

    /// Reads the route's facts from the body through its API and routes by model.
    fn read_facts(&mut self, api: &dyn Api, body: &JsonBody) -> Option<Reply> {
        let facts = match body.json() {
            Some(v) => match api.read_request(v) {
                Ok(f) => f,
                Err(r) => return Some(r),
            },
            None => RequestFacts::default(),
        };
        // The facts' one home is `cx` (filters read them there): moved, not copied.
        let RequestFacts {
            model,
            stream,
            client_wants_stream_usage,
            max_tokens,
            choices,
        } = facts;
        let cx = &mut self.cx;
        cx.stream = stream;
        cx.client_wants_stream_usage = client_wants_stream_usage;
        cx.max_tokens = max_tokens;
        cx.choices = choices;
        let snap = self.snap.clone();
        match model {
            Some(m) => match snap.models.get(&m) {
                Some(&i) => {
                    self.cx.model = Some(m);
                    self.route_to(Some(i));
                }
                None => {
                    // Recorded (redacted when it holds a finding), never a metric label.
                    self.cx.unknown_model = Some(m.chars().take(256).collect());
                    return Some(model_not_found(&m));
                }
            },
            None if snap.upstreams.is_empty() => {
                return Some(Reply::error(
                    502,
                    "upstream_unavailable",
                    "No upstream is configured.",
                ))
            }
            None => self.route_to(None),
        }
        None
    }

    /// The routes Sluice answers itself, once the chain admitted the request. Their futures
    /// (store queries, agent runs) are boxed: inline they would enlarge every request's future.
    async fn local_route(
        &mut self,
        head: &Head<'_>,
        async_input: Option<Value>,
        body: &JsonBody,
    ) -> Option<Reply> {
        let identity = self.cx.identity.as_ref();
        match self.cx.route {
            Route::ListModels => Some(Reply::json(
                200,
                &routes::list_models(&self.snap.config, identity),
            )),
            Route::GetModel => {
                let id = self.routing.ids.0.as_deref().unwrap_or_default();
                Some(match routes::get_model(&self.snap.config, identity, id) {
                    Some(m) => Reply::json(200, &m),
                    None => model_not_found(id),
                })
            }
            Route::AgentRunStatus => {
                let (agent, run) = (self.routing.ids.0.as_deref(), self.routing.ids.1.as_deref());
                Some(Box::pin(agents::route::status(&self.state, &self.cx, agent, run)).await)
            }
            Route::Keys | Route::Key => Some(
                Box::pin(crate::keys::self_service(
                    &self.state,
                    &self.snap,
                    &self.cx,
                    head.method,
                    self.routing.ids.0.as_deref(),
                    body,
                ))
                .await,
            ),
            Route::Usage => Some(
                Box::pin(crate::spend::usage::own_usage(
                    &self.state,
                    &self.snap.config,
                    &self.cx,
                    head.query,
                ))
                .await,
            ),
            Route::AgentRun => {
                let input = async_input?;
                let (state, snap) = (&self.state, &self.snap);
                let start = agents::route::start_async(state, snap, &self.cx, head.listen, input);
                match Box::pin(start).await {
                    Ok(queued) => {
                        // Not this acceptance: its execution is a run of its own.
                        self.routing.reshape = None;
                        Some(queued)
                    }
                    Err(refused) => Some(refused),
                }
            }
            _ => None,
        }
    }
}

/// What a route's API reads of the request to shape its upstream body: how the answer
/// streams. Built from `cx`, the facts' one home; the model is not copied (the APIs are handed
/// the target's model name on its own).
pub(crate) fn stream_facts(cx: &sluice_filters::Cx) -> RequestFacts {
    RequestFacts {
        model: None,
        stream: cx.stream,
        client_wants_stream_usage: cx.client_wants_stream_usage,
        max_tokens: cx.max_tokens,
        choices: cx.choices,
    }
}

/// Parses a request body. A governed API needs a JSON object; on any route, a body that is a
/// JSON object is parsed whatever its `Content-Type` says (many upstreams parse JSON without
/// looking at it), and one that only looks like one (it starts with `{`) but does not parse is
/// refused rather than forwarded unread.
fn parse_body(api: &dyn Api, headers: &HeaderMap, raw: Bytes) -> Result<JsonBody, Reply> {
    let needs_json = api.needs_json();
    if raw.is_empty() && !needs_json {
        return Ok(JsonBody::raw(raw));
    }
    let declared_json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    let looks_json = raw.trim_ascii_start().first() == Some(&b'{');
    if !(needs_json || declared_json || looks_json) {
        return Ok(JsonBody::raw(raw));
    }
    match sluice_filters::strict_json::parse(&raw) {
        Ok(v) if v.is_object() => Ok(JsonBody::parsed(raw, v)),
        Ok(_) if !needs_json && !declared_json => Ok(JsonBody::raw(raw)),
        Ok(_) => Err(Reply::error(
            400,
            "invalid_json",
            "The request body must be a JSON object.",
        )),
        Err(e) => {
            let why = if std::str::from_utf8(&raw).is_err() {
                "it is not valid UTF-8".to_string()
            } else {
                e.to_string()
            };
            Err(Reply::error(
                400,
                "invalid_json",
                format!("The request body is not valid JSON: {why}."),
            ))
        }
    }
}

pub(crate) fn model_not_found(model: &str) -> Reply {
    let model: String = model.chars().take(128).collect();
    Reply::error(
        404,
        "model_not_found",
        format!("The model `{model}` does not exist or you do not have access to it; GET /v1/models lists yours."),
    )
}
