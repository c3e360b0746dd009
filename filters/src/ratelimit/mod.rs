//! The `rate_limit` filter: request and token buckets per org, user and key.

use serde::Deserialize;

use crate::policy::{ConfigError, Policy};

/// `[rate_limit]`.
#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    #[serde(default)]
    pub backend: Backend,
    pub redis_url: Option<String>,
    #[serde(default)]
    pub on_backend_error: OnBackendError,
    /// Completion tokens reserved when a request gives no `max_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// Prefix of every Redis key.
    #[serde(default = "default_prefix")]
    pub redis_key_prefix: String,
    /// How long a Redis call may take before it counts as a backend error.
    #[serde(default = "default_redis_timeout")]
    pub redis_timeout_ms: u64,
}

fn default_max_tokens() -> u64 {
    4096
}
fn default_prefix() -> String {
    "sluice:rl".into()
}
fn default_redis_timeout() -> u64 {
    250
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            backend: Backend::Local,
            redis_url: None,
            on_backend_error: OnBackendError::Allow,
            default_max_tokens: default_max_tokens(),
            redis_key_prefix: default_prefix(),
            redis_timeout_ms: default_redis_timeout(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendError {
    #[default]
    Allow,
    Deny,
}

impl RateLimitSettings {
    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        if self.backend == Backend::Redis {
            match &self.redis_url {
                None => errs.push(ConfigError::new(
                    "rate_limit.redis_url",
                    "required when backend = \"redis\"",
                )),
                Some(u) if !(u.starts_with("redis://") || u.starts_with("rediss://")) => {
                    errs.push(ConfigError::new(
                        "rate_limit.redis_url",
                        format!("`{u}` is not a redis:// URL"),
                    ))
                }
                _ => {}
            }
        }
    }
}

#[allow(dead_code)]
fn _uses(_p: &Policy<'_>) {}
