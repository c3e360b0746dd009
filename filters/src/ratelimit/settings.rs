//! `[rate_limit]`: the settings and their checks.

use serde::Deserialize;

use crate::config::{ConfigError, ConfigErrors, Section};

/// `[rate_limit]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// How long one attempt to connect to Redis may take. Requests never wait longer than
    /// `redis_timeout_ms` for it; the attempt goes on in the background.
    #[serde(default = "default_redis_connect_timeout")]
    pub redis_connect_timeout_ms: u64,
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
fn default_redis_connect_timeout() -> u64 {
    2000
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
            redis_connect_timeout_ms: default_redis_connect_timeout(),
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

/// `[rate_limit]` built: its settings, checked, and the Redis client its URL makes.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub settings: RateLimitSettings,
    /// `backend = "redis"`: the client of `redis_url` (not yet connected).
    pub redis: Option<redis::Client>,
}

impl Section for RateLimitSettings {
    const NAME: &'static str = "rate_limit";
    type Built = RateLimit;

    /// Checks `[rate_limit]`; errors name their field (`rate_limit.redis_url`). Never contacts
    /// Redis.
    fn build(&self) -> Result<RateLimit, ConfigErrors> {
        let mut errs = Vec::new();
        let redis = self.check(&mut errs);
        if errs.is_empty() {
            Ok(RateLimit {
                settings: self.clone(),
                redis,
            })
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

impl RateLimitSettings {
    fn check(&self, errs: &mut Vec<ConfigError>) -> Option<redis::Client> {
        let mut client = None;
        if self.backend == Backend::Redis {
            match &self.redis_url {
                None => errs.push(ConfigError::new(
                    "rate_limit.redis_url",
                    "required when backend = \"redis\"",
                )),
                // The URL may hold a password: never echo it. The redis crate's parse errors
                // describe the problem without quoting the URL.
                Some(u) => match redis::Client::open(u.as_str()) {
                    Ok(c) => client = Some(c),
                    Err(e) => errs.push(ConfigError::new(
                        "rate_limit.redis_url",
                        format!(
                            "not a usable Redis URL ({e}); expected e.g. \
                                 redis://127.0.0.1:6379 or redis://:password@host:6379/0"
                        ),
                    )),
                },
            }
        }
        if self.redis_timeout_ms == 0 {
            errs.push(ConfigError::new(
                "rate_limit.redis_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.redis_connect_timeout_ms == 0 {
            errs.push(ConfigError::new(
                "rate_limit.redis_connect_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.redis_key_prefix.is_empty() || self.redis_key_prefix.contains(['{', '}']) {
            errs.push(ConfigError::new(
                "rate_limit.redis_key_prefix",
                "must be non-empty and free of `{` and `}` (Sluice puts the org in the key's hash tag)",
            ));
        }
        client
    }
}
