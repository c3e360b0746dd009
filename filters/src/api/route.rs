//! What makes a governed API a route: its path, metric label, permission, how its model is
//! authorized, its OpenTelemetry operation. Each API's module defines its [`ApiRoute`] next to
//! its shape, and [`super::GOVERNED`] lists them: the engine's route table, RBAC, metrics,
//! traces and the usage rows read everything route-specific from there.

use std::fmt;
use std::hash::{Hash, Hasher};

use super::Api;
use crate::Permission;

/// One governed API route.
pub struct ApiRoute {
    /// Its path under `/v1/`, matched whatever its letter case and with or without a trailing
    /// slash, and forwarded spelled as here.
    pub path: &'static str,
    /// Only `POST` reaches it (other methods on its path are passthrough). False: any method.
    pub post_only: bool,
    /// Its `route` label in metrics, audit records and traces (unique among routes).
    pub label: &'static str,
    /// The shape of its bodies, answers, streams and errors.
    pub api: &'static dyn Api,
    /// The role permission it needs.
    pub permission: Permission,
    /// What a caller lacking [`ApiRoute::permission`] is told they may not do (`create chat
    /// completions`).
    pub action: &'static str,
    pub models: Models,
    /// OpenTelemetry's `gen_ai.operation.name` (`chat`, `embeddings`, …); `None`: no model runs.
    pub operation: Option<&'static str>,
    /// Its clients are Anthropic's: they send their key as `x-api-key`, and a refusal names it.
    pub anthropic: bool,
    /// A request is a model call, one request of the caller's usage (SPEC §15). False for token
    /// counting, which costs nothing.
    pub usage_row: bool,
}

/// How a route's model is authorized (the role's and the key's model globs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Models {
    /// The request must name a model the caller may use (`400 missing_model` otherwise).
    Required,
    /// A model the request names must be one the caller may use.
    IfNamed,
    /// As [`Models::IfNamed`]; a request naming none Sluice can read goes to the first upstream
    /// and is forwarded only for a caller allowed every model of it (SPEC §3, passthrough).
    IfNamedElseEvery,
}

// Routes are told apart by their label (unique, checked by the engine's metrics tests): a
// `&dyn Api` has no equality of its own.
impl PartialEq for ApiRoute {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other) || self.label == other.label
    }
}

impl Eq for ApiRoute {}

impl Hash for ApiRoute {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.label.hash(state);
    }
}

impl fmt::Debug for ApiRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label)
    }
}
