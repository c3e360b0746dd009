//! An asynchronous run's execution: a request to the gateway's own listener with the run's
//! token (so the whole chain applies to it), its result stored. Request-level, like
//! [`super::route`]: it reads the engine's state, which [`super::AgentRuns`] (held by that
//! state) must not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};

use super::{Started, INTERNAL_RUN_HEADER};
use crate::state::EngineState;

/// Executes an asynchronous run: a request to the gateway's own listener carrying the run's
/// token, so the whole chain applies. Stores the result.
pub async fn execute(
    runs: Arc<EngineState>,
    listen: SocketAddr,
    agent_id: String,
    started: Started,
    input: Value,
) {
    let cfg = runs.snapshot.load().config.agent_runs.clone();
    let org = runs.runs.org_of(&started.run_id);
    runs.runs
        .persist_running(&cfg, &started, org.as_deref())
        .await;
    let body = json!({"input": input}).to_string();
    let call = call_self(listen, &agent_id, &started.token, body);
    let result = tokio::time::timeout(Duration::from_secs(cfg.timeout_seconds), call).await;
    // The execution request is counted by the proxy like any run; count here only what never
    // reached it.
    if !matches!(result, Ok(Ok(_))) {
        runs.metrics
            .agent_runs
            .with_label_values(&[agent_id.as_str(), "failed"])
            .inc();
    }
    let mut object = match result {
        Ok(Ok((200, v))) if v.get("object").and_then(Value::as_str) == Some("agent.run") => v,
        Ok(Ok((status, v))) => json!({
            "status": "failed",
            "error": v.get("error").cloned().unwrap_or_else(|| json!({"message": format!("the run answered {status}")})),
        }),
        Ok(Err(e)) => {
            json!({"status": "failed", "error": {"message": format!("the run could not be executed: {e}"), "type": "server_error", "code": "internal_error", "param": null}})
        }
        Err(_) => {
            json!({"status": "failed", "error": {"message": "the run timed out", "type": "server_error", "code": "run_timeout", "param": null}})
        }
    };
    let queued = started.queued;
    if let (Value::Object(o), Value::Object(q)) = (&mut object, &queued) {
        for k in ["id", "object", "agent_id", "created"] {
            if let Some(v) = q.get(k) {
                o.insert(k.into(), v.clone());
            }
        }
        if !o.contains_key("model") {
            if let Some(m) = q.get("model") {
                o.insert("model".into(), m.clone());
            }
        }
    }
    runs.runs.finish(&cfg, &started.run_id, object).await;
}

async fn call_self(
    listen: SocketAddr,
    agent_id: &str,
    token: &str,
    body: String,
) -> Result<(u16, Value), String> {
    let addr = if listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("/v1/agents/{agent_id}/run"))
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .header("user-agent", "sluice-agent-runner")
        .header(INTERNAL_RUN_HEADER, token)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = Limited::new(resp.into_body(), 64 << 20)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, v))
}
