//! `[store]`: where runtime state lives.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use sluice_filters::ConfigError;

/// `[store]`.
#[derive(Clone, Deserialize, PartialEq)]
pub struct StoreConfig {
    /// `sqlite://PATH` (relative to the working directory, like `audit.path`; the directory is
    /// created) or `postgres://user:password@host:port/database` for several instances.
    #[serde(default = "default_url")]
    pub url: String,
    /// How often the store's change counter is read: other instances' changes reach this one
    /// within this (PostgreSQL also notifies at once).
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    /// How long a change (or a bootstrap read) may wait for the database before it fails.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// The most keys one user may hold (config keys included); past it, making a key through
    /// the API answers `409 key_limit_reached`.
    #[serde(default = "default_max_keys")]
    pub max_keys_per_user: u64,
}

fn default_url() -> String {
    "sqlite://data/sluice.db".into()
}
fn default_poll() -> u64 {
    250
}
fn default_timeout() -> u64 {
    2000
}
fn default_max_keys() -> u64 {
    50
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: default_url(),
            poll_interval_ms: default_poll(),
            timeout_ms: default_timeout(),
            max_keys_per_user: default_max_keys(),
        }
    }
}

/// What `store.url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreConfig {
    pub fn parsed_url(&self) -> Result<StoreUrl, String> {
        let url = self.url.trim();
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(
                    "names no file: use sqlite://PATH, e.g. sqlite://data/sluice.db".into(),
                );
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_string()));
        }
        Err(format!(
            "`{}` is neither sqlite://PATH nor postgres://…",
            redact(url)
        ))
    }

    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        if let Err(m) = self.parsed_url() {
            errs.push(ConfigError::new("store.url", m));
        }
        if !(10..=1000).contains(&self.poll_interval_ms) {
            errs.push(ConfigError::new(
                "store.poll_interval_ms",
                "must be between 10 and 1000 (changes must reach every instance within 1 s)",
            ));
        }
        if !(100..=60_000).contains(&self.timeout_ms) {
            errs.push(ConfigError::new(
                "store.timeout_ms",
                "must be between 100 and 60000",
            ));
        }
        if !(1..=100_000).contains(&self.max_keys_per_user) {
            errs.push(ConfigError::new(
                "store.max_keys_per_user",
                "must be between 1 and 100000",
            ));
        }
    }

    /// The URL without its password, for logs and errors.
    pub fn display_url(&self) -> String {
        redact(&self.url)
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

/// Never prints a password.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.display_url())
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_keys_per_user", &self.max_keys_per_user)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            ..StoreConfig::default()
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            StoreConfig::default().parsed_url(),
            Ok(StoreUrl::Sqlite("data/sluice.db".into()))
        );
        assert_eq!(
            with_url("sqlite:///var/lib/sluice/k.db").parsed_url(),
            Ok(StoreUrl::Sqlite("/var/lib/sluice/k.db".into()))
        );
        assert!(with_url("sqlite://").parsed_url().is_err());
        assert!(with_url("mysql://x").parsed_url().is_err());
        assert!(matches!(
            with_url("postgres://u:p@h:5432/db").parsed_url(),
            Ok(StoreUrl::Postgres(_))
        ));
    }

    #[test]
    fn passwords_never_show() {
        let c = with_url("postgres://sluice:hunter2@db:5432/sluice");
        assert_eq!(c.display_url(), "postgres://sluice:***@db:5432/sluice");
        assert!(!format!("{c:?}").contains("hunter2"));
        let mut errs = Vec::new();
        with_url("pg://a:hunter2@b").validate(&mut errs);
        assert!(!errs[0].to_string().contains("hunter2"), "{}", errs[0]);
        assert!(errs[0].to_string().starts_with("store.url:"));
    }
}
