//! Route matching and the routes Sluice answers itself.

use http::Method;
use serde_json::{json, Value};
use sluice_filters::{Identity, Route};

use crate::config::Config;

/// The route of a request, and the id in its path when it has one.
pub fn match_route<'p>(
    method: &Method,
    path: &'p str,
) -> (Route, Option<&'p str>, Option<&'p str>) {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return (Route::Unknown, None, None);
    };
    let segs: Vec<&str> = rest.split('/').collect();
    match (method, segs.as_slice()) {
        (&Method::POST, ["chat", "completions"]) => (Route::ChatCompletions, None, None),
        (&Method::GET, ["models"]) => (Route::ListModels, None, None),
        (&Method::GET, ["models", id @ ..])
            if !id.is_empty() && !id.iter().any(|s| s.is_empty()) =>
        {
            // Model ids may contain `/` (`meta-llama/Llama-3`): the id is the rest of the path.
            (Route::GetModel, Some(&rest["models/".len()..]), None)
        }
        (&Method::POST, ["agents", id, "run"]) if !id.is_empty() => {
            (Route::AgentRun, Some(*id), None)
        }
        (&Method::GET, ["agents", id, "runs", run]) if !id.is_empty() && !run.is_empty() => {
            (Route::AgentRunStatus, Some(*id), Some(*run))
        }
        (_, ["embeddings"]) => (Route::Embeddings, None, None),
        (_, ["keys"] | ["keys", ""]) => (Route::Keys, None, None),
        (_, ["keys", id] | ["keys", id, ""]) => (Route::Key, Some(*id), None),
        _ => (Route::Passthrough, None, None),
    }
}

/// Whether the caller may see a model (no identity: no auth filter, everything is visible).
pub fn visible(identity: Option<&Identity>, model: &str) -> bool {
    identity.is_none_or(|i| i.grants.may_use_model(model))
}

fn model_object(name: &str, owned_by: &str) -> Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": owned_by})
}

/// `GET /v1/models`: the configured models the caller may use.
pub fn list_models(config: &Config, identity: Option<&Identity>) -> Value {
    let data: Vec<Value> = config
        .models
        .iter()
        .filter(|m| visible(identity, &m.name))
        .map(|m| model_object(&m.name, &m.owned_by))
        .collect();
    json!({"object": "list", "data": data})
}

/// `GET /v1/models/{id}`: the model, when it exists and the caller may use it.
pub fn get_model(config: &Config, identity: Option<&Identity>, id: &str) -> Option<Value> {
    config
        .models
        .iter()
        .find(|m| m.name == id && visible(identity, &m.name))
        .map(|m| model_object(&m.name, &m.owned_by))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            match_route(&Method::POST, "/v1/chat/completions").0,
            Route::ChatCompletions
        );
        assert_eq!(match_route(&Method::GET, "/v1/models").0, Route::ListModels);
        assert_eq!(
            match_route(&Method::GET, "/v1/models/a/b"),
            (Route::GetModel, Some("a/b"), None)
        );
        assert_eq!(
            match_route(&Method::POST, "/v1/agents/x/run"),
            (Route::AgentRun, Some("x"), None)
        );
        assert_eq!(
            match_route(&Method::GET, "/v1/agents/x/runs/r1"),
            (Route::AgentRunStatus, Some("x"), Some("r1"))
        );
        assert_eq!(
            match_route(&Method::POST, "/v1/embeddings").0,
            Route::Embeddings
        );
        assert_eq!(
            match_route(&Method::POST, "/v1/audio/speech").0,
            Route::Passthrough
        );
        assert_eq!(match_route(&Method::GET, "/healthz").0, Route::Unknown);
        assert_eq!(match_route(&Method::POST, "/v1/keys").0, Route::Keys);
        assert_eq!(
            match_route(&Method::DELETE, "/v1/keys/key_1"),
            (Route::Key, Some("key_1"), None)
        );
    }
}
