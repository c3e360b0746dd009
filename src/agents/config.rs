//! `[agent_runs]`: the bounds of asynchronous agent runs.

use serde::Deserialize;

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
