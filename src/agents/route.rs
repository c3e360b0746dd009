//! The agent routes as the request pipeline sees them (SPEC §5): the internal run token of an
//! asynchronous execution, a run turned into a chat completion, the `202` of an asynchronous
//! run, the run object built from the model's answer, and the status route. The pipeline calls
//! these and holds a [`Reshape`]; it has no agent flags of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{json, Value};
use sluice_filters::clock::unix_secs;
use sluice_filters::{Cx, JsonBody, Outcome, PreAuthenticated, Reply, Route};

use super::INTERNAL_RUN_HEADER;
use crate::metrics::EngineMetrics;
use crate::state::{EngineState, Snapshot};

/// A route that stands in for another API: Sluice builds the upstream request itself (a JSON
/// `POST`) and the client's answer from the upstream's, which is therefore held whole (never
/// passed through as it comes) and sent as JSON. Agent runs are the one such route ([`RUN`]).
pub trait Reshape: Sync {
    /// The client's answer, from the upstream's (its JSON document, if it parsed).
    fn answer(&self, cx: &Cx, upstream: Option<&Value>) -> Bytes;
    /// The request ended with `outcome` (its metrics).
    fn count(&self, cx: &Cx, outcome: Outcome, metrics: &EngineMetrics);
}

/// A synchronous agent run (or an asynchronous one's execution): the run object replaces the
/// chat completion.
pub struct RunAnswer;

/// The one [`RunAnswer`].
pub static RUN: RunAnswer = RunAnswer;

impl Reshape for RunAnswer {
    fn answer(&self, cx: &Cx, upstream: Option<&Value>) -> Bytes {
        run_object(cx, upstream).to_string().into()
    }

    fn count(&self, cx: &Cx, outcome: Outcome, metrics: &EngineMetrics) {
        let agent = cx.agent_id.as_deref().unwrap_or("");
        let status = if outcome == Outcome::Ok {
            "completed"
        } else {
            "failed"
        };
        metrics.agent_runs.with_label_values(&[agent, status]).inc();
    }
}

/// The head phase: on the agent routes, the agent id from the path (`id`); on any route, the
/// internal run token of an asynchronous execution, which stands for the caller who started it
/// (loopback only). `Some`: the refusal of a token that is not one.
pub fn begin(
    state: &EngineState,
    cx: &mut Cx,
    id: Option<&str>,
    headers: &HeaderMap,
) -> Option<Reply> {
    if matches!(cx.route, Route::AgentRun | Route::AgentRunStatus) {
        cx.agent_id = id.map(str::to_string);
    }
    let token = headers.get(INTERNAL_RUN_HEADER)?;
    let claimed = match (cx.route, id, token.to_str()) {
        (Route::AgentRun, Some(agent), Ok(t)) => state.runs.claim(t, agent),
        _ => None,
    };
    let loopback = cx.client_ip.is_some_and(|ip| ip.is_loopback());
    match claimed {
        Some((_run, identity)) if loopback => {
            cx.identity = identity;
            cx.extensions.insert(PreAuthenticated);
            None
        }
        _ => Some(Reply::error(
            401,
            "invalid_api_key",
            "Unknown or used internal run token.",
        )),
    }
}

/// Where a prepared run goes and how it runs.
pub struct Prepared {
    /// The agent's model: its index in `config.models`, whose targets the run goes to.
    pub model: usize,
    /// The path the run's chat completion is sent to upstream.
    pub upstream_path: &'static str,
    /// How the upstream's answer becomes the client's.
    pub reshape: &'static dyn Reshape,
    /// `Some(input)` for `"async": true`: answered here ([`start_async`]) once the chain
    /// admitted it.
    pub async_input: Option<Value>,
}

/// Turns `{"input": …}` into the agent's chat completion request (in `body`) and fills the
/// context (model, stream, max_tokens).
pub fn prepare(
    snap: &Snapshot,
    cx: &mut Cx,
    agent_id: &str,
    body: &mut JsonBody,
) -> Result<Prepared, Reply> {
    let Some(agent) = snap.config.agents.iter().find(|a| a.id == agent_id) else {
        return Err(Reply::error(
            404,
            "agent_not_found",
            format!(
                "No agent `{}` is configured on this gateway.",
                super::truncate(agent_id)
            ),
        ));
    };
    cx.agent_id = Some(agent.id.clone());
    let req = body.json().cloned().unwrap_or(Value::Null);
    let input = match req.get("input") {
        Some(Value::String(s)) if !s.is_empty() => Value::String(s.clone()),
        Some(Value::Array(parts)) if !parts.is_empty() => Value::Array(parts.clone()),
        _ => {
            return Err(Reply::error(
                400,
                "missing_input",
                "The request needs `input`: the text the agent should work on.",
            ))
        }
    };
    let flag = |name: &str| -> Result<bool, Reply> {
        match req.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(Reply::error(
                400,
                "invalid_request",
                format!("`{name}` must be true or false."),
            )),
        }
    };
    let stream = flag("stream")?;
    let is_async = flag("async")?;
    if stream && is_async {
        return Err(Reply::error(
            400,
            "invalid_request",
            "`stream` and `async` cannot be combined: poll an asynchronous run instead.",
        ));
    }
    let Some(&model) = snap.models.get(&agent.model) else {
        return Err(Reply::error(
            500,
            "internal_error",
            "The agent's model is not routable.",
        ));
    };
    let mut chat = json!({
        "model": agent.model,
        "messages": [
            {"role": "system", "content": agent.instructions},
            {"role": "user", "content": input},
        ],
        "stream": stream,
    });
    if let Value::Object(o) = &mut chat {
        if let Some(m) = agent.max_tokens {
            o.insert("max_tokens".into(), json!(m));
        }
        if let Some(t) = agent.temperature {
            o.insert("temperature".into(), json!(t));
        }
        if let Some(p) = agent.top_p {
            o.insert("top_p".into(), json!(p));
        }
    }
    match body.json_mut() {
        Some(v) => *v = chat,
        None => {
            *body = JsonBody::parsed(body.bytes().clone(), chat);
            let _ = body.json_mut();
        }
    }
    cx.model = Some(agent.model.clone());
    cx.stream = stream;
    cx.max_tokens = agent.max_tokens;
    Ok(Prepared {
        model,
        upstream_path: "/v1/chat/completions",
        reshape: &RUN,
        async_input: is_async.then_some(input),
    })
}

/// The run object for a finished (non-streamed) run, from the upstream's chat completion.
fn run_object(cx: &Cx, completion: Option<&Value>) -> Value {
    let output = completion
        .and_then(|c| c.pointer("/choices/0/message/content"))
        .cloned();
    let finish = completion
        .and_then(|c| c.pointer("/choices/0/finish_reason"))
        .cloned();
    let status = if output.is_some() {
        "completed"
    } else {
        "failed"
    };
    let mut run = json!({
        "id": super::new_run_id(),
        "object": "agent.run",
        "agent_id": cx.agent_id,
        "status": status,
        "output": output.unwrap_or(Value::Null),
        "model": cx.model,
        "created": unix_secs(),
    });
    if let Value::Object(o) = &mut run {
        if let Some(u) = completion.and_then(|c| c.get("usage")) {
            o.insert("usage".into(), u.clone());
        }
        if let Some(f) = finish {
            o.insert("finish_reason".into(), f);
        }
    }
    run
}

/// `"async": true`, once the chain admitted the run: `Ok` is the `202` with the queued run,
/// which executes in the background (counted when that execution finishes, not here); `Err`
/// the refusal to queue it.
pub async fn start_async(
    state: &Arc<EngineState>,
    snap: &Snapshot,
    cx: &Cx,
    listen: Option<SocketAddr>,
    input: Value,
) -> Result<Reply, Reply> {
    let cfg = &snap.config.agent_runs;
    let started = state.runs.start(cfg, cx).await?;
    let agent = cx.agent_id.clone().unwrap_or_default();
    state
        .metrics
        .agent_runs
        .with_label_values(&[agent.as_str(), "queued"])
        .inc();
    let queued = Reply::json(202, &started.queued);
    match listen {
        Some(addr) => {
            tokio::spawn(super::execute::execute(
                state.clone(),
                addr,
                agent,
                started,
                input,
            ));
        }
        None => {
            let failed = json!({"status": "failed", "error": {"message": "no listener address"}});
            state.runs.finish(cfg, &started.run_id, failed).await;
        }
    }
    Ok(queued)
}

/// `GET /v1/agents/{agentId}/runs/{runId}`.
pub async fn status(state: &EngineState, cx: &Cx, agent: Option<&str>, run: Option<&str>) -> Reply {
    state
        .runs
        .status(
            agent.unwrap_or_default(),
            run.unwrap_or_default(),
            cx.identity.as_ref(),
        )
        .await
}
