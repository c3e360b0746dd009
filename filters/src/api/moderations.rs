//! OpenAI moderations (`POST /v1/moderations`): `input` (a string, strings, or text and image
//! parts) in, `{"id", "model", "results": [...]}` out. The request's strings and the answer's
//! are scanned. The answer carries no usage and generates nothing: the estimate of `input` is
//! reserved (as embeddings reserve their prompt) and, with no usage to reconcile it, stands as
//! the charge, so this endpoint is no way around a token limit (as when it was passthrough).
//!
//! Its rules are passthrough's, as before it was governed (SPEC §3, "any other `/v1/*`"):
//! permission `passthrough`, and `model` is optional — a request naming none goes to the first
//! upstream, for a caller allowed every model of it — so no caller gains or loses access.

use serde_json::Value;

use super::{estimate, input_request, Api, ApiRoute, Models, RequestFacts, TokenCost};
use crate::{JsonBody, Permission, Reply};

/// `POST /v1/moderations`.
pub static ROUTE: ApiRoute = ApiRoute {
    path: "moderations",
    post_only: true,
    label: "moderations",
    api: &Moderations,
    permission: Permission::Passthrough,
    action: "call this endpoint",
    models: Models::IfNamedElseEvery,
    operation: None,
    anthropic: false,
    usage_row: true,
};

pub struct Moderations;

impl Api for Moderations {
    fn name(&self) -> &'static str {
        "moderations"
    }

    fn read_request(&self, body: &Value) -> Result<RequestFacts, Reply> {
        input_request(
            body,
            false,
            "a string, an array of strings, or an array of text and image parts",
        )
    }

    fn prompt_tokens(&self, body: &JsonBody) -> u64 {
        estimate::chat(body)
    }

    fn token_cost(&self) -> TokenCost {
        TokenCost::PromptOnly
    }

    fn usage(&self, _usage: &Value) -> Option<crate::Usage> {
        None
    }
}
