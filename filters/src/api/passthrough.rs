//! Any other `/v1/*` endpoint: a shape Sluice does not know. Its `model` routes it when the body
//! names one; every string of a JSON answer is scanned, and each event of a stream on its own
//! (not held across events); a block replaces the event with an error event and ends the
//! stream. Usage is read in any of the known shapes, and the token reservation counts every
//! string of the body, so no endpoint is a way around a token limit.

use serde_json::Value;

use super::{
    estimate, read_ceiling, read_choices, read_model, Api, ApiRoute, Models, RequestFacts,
};
use crate::{JsonBody, Permission, Reply};

/// The rules of [`crate::Route::Passthrough`] (any other `/v1/*`: matched by the engine after
/// every governed route, so it is not in [`super::GOVERNED`] and `path` is unused).
pub static ROUTE: ApiRoute = ApiRoute {
    path: "",
    post_only: false,
    label: "passthrough",
    api: &super::PASSTHROUGH,
    permission: Permission::Passthrough,
    action: "call this endpoint",
    models: Models::IfNamedElseEvery,
    operation: None,
    anthropic: false,
    usage_row: true,
};

pub struct Passthrough;

impl Api for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }

    fn needs_json(&self) -> bool {
        false
    }

    fn read_request(&self, body: &Value) -> Result<RequestFacts, Reply> {
        Ok(RequestFacts {
            model: read_model(body, false)?,
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            client_wants_stream_usage: true,
            max_tokens: read_ceiling(
                body,
                &["max_tokens", "max_completion_tokens", "max_output_tokens"],
            )?,
            choices: read_choices(body),
        })
    }

    fn prompt_tokens(&self, body: &JsonBody) -> u64 {
        estimate::every_string(body)
    }
}
