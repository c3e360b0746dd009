//! Agent runs (SPEC §5): a configured agent is a model, instructions and parameters; a run is a
//! chat completion built from them and sent through the same chain as any other.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sluice_filters::{Cx, Identity, JsonBody, Reply};

use crate::gateway::Snapshot;

/// Where a prepared run goes.
pub struct Prepared {
    pub upstream: usize,
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
            format!("No agent `{agent_id}` is configured on this gateway."),
        ));
    };
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
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Reply::error(
                400,
                "invalid_stream",
                "`stream` must be true or false.",
            ))
        }
    };
    let Some(&(_, upstream)) = snap.models.get(&agent.model) else {
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
    if let Some(v) = body.json_mut() {
        *v = chat;
    } else {
        *body = JsonBody::parsed(body.bytes().clone(), chat);
        let _ = body.json_mut();
    }
    cx.model = Some(agent.model.clone());
    cx.agent_id = Some(agent.id.clone());
    cx.stream = stream;
    cx.max_tokens = agent.max_tokens;
    Ok(Prepared { upstream })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The run object for a finished (non-streamed) run, from the upstream's chat completion.
pub fn run_object(cx: &Cx, completion: Option<&Value>) -> Value {
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
        "id": format!("run_{:024x}", rand::random::<u128>() >> 32),
        "object": "agent.run",
        "agent_id": cx.agent_id,
        "status": status,
        "output": output.unwrap_or(Value::Null),
        "model": cx.model,
        "created": now_secs(),
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

/// Runs started with `"async": true`, kept until they expire.
#[derive(Default)]
pub struct AgentRuns {}

impl AgentRuns {
    pub fn status(&self, agent_id: &str, run_id: &str, _identity: Option<&Identity>) -> Reply {
        Reply::error(
            404,
            "not_found",
            format!(
                "No run `{run_id}` of agent `{agent_id}` is known (runs expire after a while)."
            ),
        )
    }
}
