//! The `audit` filter: one hash-chained JSON Lines record per request.

use serde::Deserialize;

use crate::policy::ConfigError;

/// `[audit]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditSettings {
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub fsync: Fsync,
    #[serde(default = "default_interval")]
    pub fsync_interval_ms: u64,
}

fn default_path() -> String {
    "audit/audit.jsonl".into()
}
fn default_interval() -> u64 {
    100
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            path: default_path(),
            fsync: Fsync::Interval,
            fsync_interval_ms: default_interval(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Always,
    #[default]
    Interval,
    Never,
}

impl AuditSettings {
    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        let _ = errs;
    }
}
