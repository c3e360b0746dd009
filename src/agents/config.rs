//! `[[agents]]` and `[agent_runs]` (the bounds of asynchronous agent runs), and their checks.

use std::collections::HashSet;

use serde::Deserialize;
use sluice_filters::ConfigError;

/// One `[[agents]]` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentConfig {
    pub id: String,
    pub model: String,
    pub instructions: String,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub description: Option<String>,
}

/// `[agent_runs]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentRunsConfig {
    /// Asynchronous runs queued or running at once; more answer 429.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// How long a finished run stays readable.
    #[serde(default = "default_retention")]
    pub retention_seconds: u64,
    /// Finished runs kept at most (oldest dropped first).
    #[serde(default = "default_max_stored")]
    pub max_stored: usize,
    /// Bound on one asynchronous run's execution.
    #[serde(default = "default_run_timeout")]
    pub timeout_seconds: u64,
}

fn default_in_flight() -> usize {
    16
}
fn default_retention() -> u64 {
    3600
}
fn default_max_stored() -> usize {
    10_000
}
fn default_run_timeout() -> u64 {
    600
}

impl Default for AgentRunsConfig {
    fn default() -> Self {
        AgentRunsConfig {
            max_in_flight: default_in_flight(),
            retention_seconds: default_retention(),
            max_stored: default_max_stored(),
            timeout_seconds: default_run_timeout(),
        }
    }
}

/// Checks `[[agents]]` (unique ids usable in a path, a configured model: `models` are the
/// `[[models]]` names) and `[agent_runs]`.
pub fn validate(
    agents: &[AgentConfig],
    models: &[String],
    runs: &AgentRunsConfig,
    errs: &mut Vec<ConfigError>,
) {
    let mut seen = HashSet::new();
    for (i, a) in agents.iter().enumerate() {
        if !seen.insert(a.id.as_str()) {
            errs.push(ConfigError::new(
                format!("agents[{i}].id"),
                format!("duplicate agent `{}`", a.id),
            ));
        }
        if a.id.is_empty()
            || !a
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            errs.push(ConfigError::new(
                format!("agents[{i}].id"),
                "use letters, digits, `-`, `_` and `.` only",
            ));
        }
        if !models.contains(&a.model) {
            errs.push(ConfigError::new(
                format!("agents[{i}].model"),
                format!("no model named `{}` in [[models]]", a.model),
            ));
        }
    }
    let ar = runs;
    for (field, v) in [
        ("max_in_flight", ar.max_in_flight as u64),
        ("retention_seconds", ar.retention_seconds),
        ("max_stored", ar.max_stored as u64),
        ("timeout_seconds", ar.timeout_seconds),
    ] {
        if v == 0 {
            errs.push(ConfigError::new(
                format!("agent_runs.{field}"),
                "must be at least 1",
            ));
        }
    }
}
