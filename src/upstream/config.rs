//! The `[[upstreams]]` and `[[models]]` entries and the resilience part of the config (SPEC §2,
//! §11): a model's `targets`, `[routing]`, and an upstream's `health_check`, with their
//! validation (every error names its field path).
//!
//! A model has one `upstream` (the short form, with an optional `upstream_model`) or a list of
//! `targets`; [`ModelConfig::target_list`] reads either as one list, so the rest of the engine
//! knows a single shape.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::Deserialize;
use sluice_filters::ConfigError;

use crate::config::upstream_url::CheckedUpstream;

/// The most targets a model may have (selection scans them per request).
pub const MAX_TARGETS: usize = 32;
/// The most retries `[routing]` may ask for: with the first attempt and one retry of a stale
/// pooled connection, Pingora's retry loop must allow `MAX_RETRIES + 2` attempts.
pub const MAX_RETRIES: u32 = 10;
/// An ejection lasts at most this long, however often it doubled (SPEC §11).
pub const MAX_EJECT_SECONDS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: Option<String>,
    /// `"mock"`: the in-process mock upstream.
    pub builtin: Option<String>,
    /// How the upstream takes its key: `openai` (default, `Authorization: Bearer`) or
    /// `anthropic` (`x-api-key`, with `anthropic-version` kept or set).
    #[serde(default)]
    pub api: UpstreamApi,
    pub api_key_env: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout")]
    pub read_timeout_ms: u64,
    /// PEM file of CA certificates to trust for this upstream instead of the system's.
    pub ca_file: Option<String>,
    /// Idle pooled connections are closed after this (keep it below the upstream's own).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// An active check: while it fails, the upstream is out of service (SPEC §11).
    pub health_check: Option<HealthCheckConfig>,
}

/// An upstream's API family, for its credentials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamApi {
    #[default]
    Openai,
    Anthropic,
}

fn default_connect_timeout() -> u64 {
    2000
}
fn default_read_timeout() -> u64 {
    300_000
}
fn default_idle_timeout() -> u64 {
    30_000
}

/// A model: one `upstream` (and `upstream_model`), or several `targets` (this module validates
/// both forms and reads them as one list).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    pub name: String,
    pub upstream: Option<String>,
    pub upstream_model: Option<String>,
    pub targets: Option<Vec<TargetConfig>>,
    #[serde(default = "default_owned_by")]
    pub owned_by: String,
    /// USD per million tokens (SPEC §15); absent: the model costs 0.
    pub price: Option<sluice_filters::spend::PriceSpec>,
}

fn default_owned_by() -> String {
    "sluice".into()
}

/// One deployment that can serve a model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TargetConfig {
    pub upstream: String,
    /// The model name this upstream knows it by (the body's `model` is rewritten per attempt).
    pub upstream_model: Option<String>,
    /// Share of the traffic among the targets of the same priority that are in service.
    #[serde(default = "one")]
    pub weight: u32,
    /// Lower first: a target of priority 2 is used only while every target of priority 1 is out
    /// of service (or already tried for this request).
    #[serde(default = "one")]
    pub priority: u32,
}

fn one() -> u32 {
    1
}

/// `[routing]`: retries, what is retried, passive ejection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoutingConfig {
    /// Other targets tried after an attempt fails before any byte reached the client.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// What makes an attempt fail over: `connect`, `timeout`, `5xx`, `429`.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    /// Consecutive failed attempts that take a target out of service (0: never).
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    /// How long the first ejection lasts; it doubles while the target keeps failing, up to
    /// [`MAX_EJECT_SECONDS`].
    #[serde(default = "default_eject_seconds")]
    pub eject_seconds: u64,
}

impl Default for RoutingConfig {
    fn default() -> RoutingConfig {
        RoutingConfig {
            retries: default_retries(),
            retry_on: default_retry_on(),
            eject_after: default_eject_after(),
            eject_seconds: default_eject_seconds(),
        }
    }
}

fn default_retries() -> u32 {
    2
}
fn default_retry_on() -> Vec<String> {
    RetryOn::NAMES.iter().map(|s| s.to_string()).collect()
}
fn default_eject_after() -> u32 {
    3
}
fn default_eject_seconds() -> u64 {
    30
}

/// The failures `retry_on` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection could not be made (refused, unreachable, TLS), or was reset or closed
    /// before the response head.
    pub connect: bool,
    /// Connect or response-head timeout.
    pub timeout: bool,
    pub status_5xx: bool,
    pub status_429: bool,
}

impl RetryOn {
    pub const NAMES: [&'static str; 4] = ["connect", "timeout", "5xx", "429"];

    /// Reads `retry_on`; unknown names were refused by validation and are ignored here.
    pub fn parse(names: &[String]) -> RetryOn {
        let mut r = RetryOn::default();
        for n in names {
            match n.as_str() {
                "connect" => r.connect = true,
                "timeout" => r.timeout = true,
                "5xx" => r.status_5xx = true,
                "429" => r.status_429 = true,
                _ => {}
            }
        }
        r
    }
}

/// `health_check = { path, interval_ms, timeout_ms }` on an upstream: a `GET` of `path` (under
/// the upstream URL's own path, with the upstream's key) that must answer 2xx in time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_check_timeout")]
    pub timeout_ms: u64,
}

fn default_interval() -> u64 {
    5000
}
fn default_check_timeout() -> u64 {
    1000
}

impl ModelConfig {
    /// The model's targets, whichever form the config used (the short form is one target of
    /// weight 1, priority 1).
    pub fn target_list(&self) -> Vec<TargetConfig> {
        match (&self.targets, &self.upstream) {
            (Some(t), _) => t.clone(),
            (None, Some(u)) => vec![TargetConfig {
                upstream: u.clone(),
                upstream_model: self.upstream_model.clone(),
                weight: 1,
                priority: 1,
            }],
            (None, None) => Vec::new(),
        }
    }
}

/// Checks `models[i]`'s upstream or targets against `[[upstreams]]`.
pub fn validate_model(
    i: usize,
    m: &ModelConfig,
    upstreams: &[UpstreamConfig],
    errs: &mut Vec<ConfigError>,
) {
    let p = format!("models[{i}]");
    let known = |name: &str| upstreams.iter().any(|u| u.name == name);
    let missing = |name: &str| format!("no upstream named `{name}` in [[upstreams]]");
    match (&m.upstream, &m.targets) {
        (Some(_), Some(_)) => errs.push(ConfigError::new(
            p,
            "set either `upstream` (one upstream) or `targets` (several), not both",
        )),
        (None, None) => errs.push(ConfigError::new(
            p,
            "needs `upstream = \"…\"` or `targets = [{ upstream = \"…\" }, …]`",
        )),
        (Some(u), None) => {
            if !known(u) {
                errs.push(ConfigError::new(format!("{p}.upstream"), missing(u)));
            }
        }
        (None, Some(targets)) => {
            if m.upstream_model.is_some() {
                errs.push(ConfigError::new(
                    format!("{p}.upstream_model"),
                    "with `targets`, give each target its own `upstream_model`",
                ));
            }
            if targets.is_empty() {
                errs.push(ConfigError::new(
                    format!("{p}.targets"),
                    "must hold at least one target",
                ));
            }
            if targets.len() > MAX_TARGETS {
                errs.push(ConfigError::new(
                    format!("{p}.targets"),
                    format!("at most {MAX_TARGETS} targets"),
                ));
            }
            for (j, t) in targets.iter().enumerate() {
                let tp = format!("{p}.targets[{j}]");
                if !known(&t.upstream) {
                    errs.push(ConfigError::new(
                        format!("{tp}.upstream"),
                        missing(&t.upstream),
                    ));
                } else if targets[..j].iter().any(|o| o.upstream == t.upstream) {
                    errs.push(ConfigError::new(
                        format!("{tp}.upstream"),
                        format!(
                            "`{}` is already a target of this model (health and ejection are kept per upstream)",
                            t.upstream
                        ),
                    ));
                }
                if !(1..=1000).contains(&t.weight) {
                    errs.push(ConfigError::new(
                        format!("{tp}.weight"),
                        "must be between 1 and 1000",
                    ));
                }
                if !(1..=100).contains(&t.priority) {
                    errs.push(ConfigError::new(
                        format!("{tp}.priority"),
                        "must be between 1 (first) and 100",
                    ));
                }
                if t.upstream_model.as_deref() == Some("") {
                    errs.push(ConfigError::new(
                        format!("{tp}.upstream_model"),
                        "must not be empty (leave it out to keep the model's name)",
                    ));
                }
            }
        }
    }
}

/// Checks `[routing]`.
pub fn validate_routing(r: &RoutingConfig, errs: &mut Vec<ConfigError>) {
    if r.retries > MAX_RETRIES {
        errs.push(ConfigError::new(
            "routing.retries",
            format!("must be between 0 and {MAX_RETRIES}"),
        ));
    }
    for (i, n) in r.retry_on.iter().enumerate() {
        if !RetryOn::NAMES.contains(&n.as_str()) {
            errs.push(ConfigError::new(
                format!("routing.retry_on[{i}]"),
                format!(
                    "unknown failure `{n}` (known: {})",
                    RetryOn::NAMES.join(", ")
                ),
            ));
        }
    }
    if !(1..=MAX_EJECT_SECONDS).contains(&r.eject_seconds) {
        errs.push(ConfigError::new(
            "routing.eject_seconds",
            format!("must be between 1 and {MAX_EJECT_SECONDS}"),
        ));
    }
    if r.eject_after > 1000 {
        errs.push(ConfigError::new(
            "routing.eject_after",
            "must be between 0 (never eject) and 1000",
        ));
    }
}

/// Checks `upstreams[i].health_check` (`p` is `upstreams[i]`).
pub fn validate_health_check(p: &str, hc: &HealthCheckConfig, errs: &mut Vec<ConfigError>) {
    let p = format!("{p}.health_check");
    let path_ok = hc.path.starts_with('/')
        && hc.path.len() <= 1024
        && hc.path.parse::<http::uri::PathAndQuery>().is_ok();
    if !path_ok {
        errs.push(ConfigError::new(
            format!("{p}.path"),
            "must be a path starting with `/` (e.g. \"/v1/models\")",
        ));
    }
    if !(100..=3_600_000).contains(&hc.interval_ms) {
        errs.push(ConfigError::new(
            format!("{p}.interval_ms"),
            "must be between 100 and 3600000",
        ));
    }
    if hc.timeout_ms == 0 || hc.timeout_ms > hc.interval_ms.max(1) {
        errs.push(ConfigError::new(
            format!("{p}.timeout_ms"),
            "must be at least 1 and at most interval_ms",
        ));
    }
}

/// Checks `[[upstreams]]`: unique names, a `url` or the built-in mock, the URL and CA file as
/// loading parsed, resolved and read them (`checked[i]` is upstream `i`'s), credentials' env
/// names, health checks and timeouts.
pub fn validate_upstreams(
    upstreams: &[UpstreamConfig],
    checked: &[Cow<'_, CheckedUpstream>],
    errs: &mut Vec<ConfigError>,
) {
    let mut names = HashSet::new();
    for (i, u) in upstreams.iter().enumerate() {
        let p = format!("upstreams[{i}]");
        if !names.insert(u.name.as_str()) {
            errs.push(ConfigError::new(
                format!("{p}.name"),
                format!("duplicate upstream `{}`", u.name),
            ));
        }
        match (&u.url, &u.builtin) {
            (Some(_), Some(_)) => errs.push(ConfigError::new(
                p.clone(),
                "set either `url` or `builtin`, not both",
            )),
            (None, None) => errs.push(ConfigError::new(
                p.clone(),
                "needs `url` (http:// or https://) or `builtin = \"mock\"`",
            )),
            (None, Some(b)) if b != "mock" => errs.push(ConfigError::new(
                format!("{p}.builtin"),
                format!("unknown builtin `{b}` (known: mock)"),
            )),
            (Some(_), None) => {
                let checked = &checked[i];
                let found = match &checked.target {
                    Some(Ok(t)) if t.addr.is_none() => Err("no address"),
                    Some(Err(m)) => Err(m.as_str()),
                    _ => Ok(()),
                };
                if let Err(m) = found {
                    errs.push(ConfigError::new(format!("{p}.url"), m));
                }
            }
            _ => {}
        }
        if let Some(env) = &u.api_key_env {
            if env.is_empty() || !env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                errs.push(ConfigError::new(
                    format!("{p}.api_key_env"),
                    "must be an environment variable name",
                ));
            }
        }
        if let Some(Err(m)) = &checked[i].ca {
            errs.push(ConfigError::new(format!("{p}.ca_file"), m.as_str()));
        }
        if let Some(hc) = &u.health_check {
            crate::upstream::config::validate_health_check(&p, hc, errs);
        }
        for (field, v) in [
            ("connect_timeout_ms", u.connect_timeout_ms),
            ("read_timeout_ms", u.read_timeout_ms),
        ] {
            if v == 0 {
                errs.push(ConfigError::new(
                    format!("{p}.{field}"),
                    "must be at least 1",
                ));
            }
        }
    }
}

/// Checks `[[models]]`: unique names, and each one's upstream or targets.
pub fn validate_models(
    models: &[ModelConfig],
    upstreams: &[UpstreamConfig],
    errs: &mut Vec<ConfigError>,
) {
    let mut seen = HashSet::new();
    for (i, m) in models.iter().enumerate() {
        if !seen.insert(m.name.as_str()) {
            errs.push(ConfigError::new(
                format!("models[{i}].name"),
                format!("duplicate model `{}`", m.name),
            ));
        }
        validate_model(i, m, upstreams, errs);
    }
}
