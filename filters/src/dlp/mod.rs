//! The `dlp` filter: secrets and personal data in both directions, streams included.

use serde::Deserialize;

use crate::policy::ConfigError;

/// `[dlp]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DlpSettings {
    #[serde(default)]
    pub packs: Vec<String>,
    #[serde(default = "default_request_action")]
    pub request_action: Action,
    #[serde(default = "default_response_action")]
    pub response_action: Action,
    #[serde(default)]
    pub rules: Vec<RuleSettings>,
}

fn default_request_action() -> Action {
    Action::Block
}
fn default_response_action() -> Action {
    Action::Redact
}

/// `[[dlp.rules]]`: a custom detector.
#[derive(Debug, Clone, Deserialize)]
pub struct RuleSettings {
    pub name: String,
    pub regex: Option<String>,
    pub keywords: Option<Vec<String>>,
    /// Overrides the direction's action for this rule.
    pub action: Option<Action>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Block,
    Redact,
    Mask,
    Monitor,
}

impl DlpSettings {
    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        let _ = errs;
    }
}
