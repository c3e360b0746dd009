//! OpenAI embeddings (`POST /v1/embeddings`): `input` in, vectors out. The answer holds no text
//! (thousands of floats), so only the request is scanned; usage is `usage.prompt_tokens`.

use serde_json::Value;

use super::{estimate, read_model, Api, ApiRoute, Models, RequestFacts, TokenCost};
use crate::{JsonBody, Permission, Reply};

/// `POST /v1/embeddings` (any method reaches it, as ever).
pub static ROUTE: ApiRoute = ApiRoute {
    path: "embeddings",
    post_only: false,
    label: "embeddings",
    api: &super::EMBEDDINGS,
    permission: Permission::Embeddings,
    action: "create embeddings",
    models: Models::IfNamed,
    operation: Some("embeddings"),
    anthropic: false,
    usage_row: true,
};

pub struct Embeddings;

impl Api for Embeddings {
    fn name(&self) -> &'static str {
        "embeddings"
    }

    fn read_request(&self, body: &Value) -> Result<RequestFacts, Reply> {
        let model = read_model(body, true)?;
        if body.get("input").is_none_or(Value::is_null) {
            return Err(Reply::error(
                400,
                "missing_input",
                "The request needs `input` (a string or an array of strings or token ids).",
            ));
        }
        Ok(RequestFacts {
            model,
            ..RequestFacts::default()
        })
    }

    fn prompt_tokens(&self, body: &JsonBody) -> u64 {
        estimate::chat(body)
    }

    fn token_cost(&self) -> TokenCost {
        TokenCost::PromptOnly
    }

    fn scans_answer(&self) -> bool {
        false
    }
}
