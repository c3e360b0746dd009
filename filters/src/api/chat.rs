//! OpenAI chat completions (`POST /v1/chat/completions`): what sets it apart in the `choices`
//! family (its request and its prompt estimate); the rest is [`ChoicesApi`]'s.

use serde_json::Value;

use super::choices::{self, ChoicesApi, Shape};
use super::{
    estimate, read_ceiling, read_choices, read_model, read_stream, ApiRoute, Models, RequestFacts,
};
use crate::{Permission, Reply};

/// `POST /v1/chat/completions`.
pub static ROUTE: ApiRoute = ApiRoute {
    path: "chat/completions",
    post_only: true,
    label: "chat_completions",
    api: &super::CHAT,
    permission: Permission::Chat,
    action: "create chat completions",
    models: Models::Required,
    operation: Some("chat"),
    anthropic: false,
    usage_row: true,
};

pub(super) const API: ChoicesApi = ChoicesApi {
    name: "chat",
    shape: Shape::Chat,
    read_request,
    prompt_tokens: estimate::chat,
};

fn read_request(body: &Value) -> Result<RequestFacts, Reply> {
    let model = read_model(body, true)?;
    if !body.get("messages").is_some_and(Value::is_array) {
        return Err(Reply::error(
            400,
            "missing_messages",
            "The request needs `messages` (an array).",
        ));
    }
    Ok(RequestFacts {
        model,
        stream: read_stream(body)?,
        client_wants_stream_usage: choices::client_wants_stream_usage(body),
        max_tokens: read_ceiling(body, &["max_completion_tokens", "max_tokens"])?,
        choices: read_choices(body),
    })
}
