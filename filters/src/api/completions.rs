//! OpenAI legacy completions (`POST /v1/completions`): `prompt` in, `choices[i].text` out. What
//! sets it apart in the `choices` family (its request and its prompt estimate); the rest is
//! [`ChoicesApi`]'s.

use serde_json::Value;

use super::choices::{self, ChoicesApi, Shape};
use super::{
    estimate, read_ceiling, read_choices, read_model, read_stream, ApiRoute, Models, RequestFacts,
};
use crate::{Permission, Reply};

/// `POST /v1/completions`.
pub static ROUTE: ApiRoute = ApiRoute {
    path: "completions",
    post_only: true,
    label: "completions",
    api: &super::COMPLETIONS,
    permission: Permission::Chat,
    action: "create chat completions",
    models: Models::Required,
    operation: Some("text_completion"),
    anthropic: false,
    usage_row: true,
};

pub(super) const API: ChoicesApi = ChoicesApi {
    name: "completions",
    shape: Shape::Completions,
    read_request,
    prompt_tokens: estimate::completion_prompt,
};

fn read_request(body: &Value) -> Result<RequestFacts, Reply> {
    let model = read_model(body, true)?;
    if body.get("prompt").is_none_or(Value::is_null) {
        return Err(Reply::error(
            400,
            "missing_prompt",
            "The request needs a `prompt` (a string or an array of strings).",
        ));
    }
    // `best_of` answers are generated and scored upstream even when only `n` are returned.
    let best_of = body.get("best_of").and_then(Value::as_u64).unwrap_or(1);
    Ok(RequestFacts {
        model,
        stream: read_stream(body)?,
        client_wants_stream_usage: choices::client_wants_stream_usage(body),
        max_tokens: read_ceiling(body, &["max_tokens"])?,
        choices: read_choices(body).max(best_of.clamp(1, 128)),
    })
}
