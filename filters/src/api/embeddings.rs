//! OpenAI embeddings (`POST /v1/embeddings`): `input` in, vectors out. The answer holds no text
//! (thousands of floats), so only the request is scanned; usage is `usage.prompt_tokens`.

use serde_json::Value;

use super::{estimate, input_request, Api, ApiRoute, Models, RequestFacts, TokenCost};
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
        input_request(body, true, "a string or an array of strings or token ids")
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
