//! What filter factories see of a config (orgs, roles, users, keys and the policy sections), its
//! cross-reference checks, and the factory trait. Errors are [`crate::config`]'s.
//!
//! The engine parses the TOML file; the sections that are policy (who may call, how often, what
//! is scanned and recorded) are typed here so that filters and embedders share them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ConfigErrors, Sections};
use crate::spend::{BudgetSpec, Price};
use crate::{Filter, Permission, Shared};

/// A rate limit at one level (`[[orgs]]`, `[[users]]`, `[[keys]]`). Every field is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct RateLimitSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Capacity of the request bucket (defaults to `requests_per_minute`): how many requests
    /// may arrive at once after a quiet period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Capacity of the token bucket (defaults to `tokens_per_minute`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_burst: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OrgConfig {
    pub name: String,
    pub rate_limit: Option<RateLimitSpec>,
    /// SPEC §15.
    pub budget: Option<BudgetSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RoleConfig {
    pub name: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub agents: Vec<String>,
    /// `server:tool` globs of the MCP tools the role may call (SPEC §16).
    #[serde(default)]
    pub mcp: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserConfig {
    pub name: String,
    pub org: String,
    pub role: String,
    pub rate_limit: Option<RateLimitSpec>,
    /// SPEC §15.
    pub budget: Option<BudgetSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct KeyConfig {
    pub id: String,
    pub user: String,
    /// Hex SHA-256 of the full key.
    pub sha256: String,
    pub models: Option<Vec<String>>,
    pub rate_limit: Option<RateLimitSpec>,
    #[serde(default)]
    pub disabled: bool,
    /// Optional: narrows the role's `mcp` globs, never widens them.
    #[serde(default)]
    pub mcp: Option<Vec<String>>,
    /// SPEC §15.
    #[serde(default)]
    pub budget: Option<BudgetSpec>,
}

/// The policy sections of one config, as filter factories see them.
#[derive(Clone)]
pub struct Policy<'a> {
    pub orgs: &'a [OrgConfig],
    pub roles: &'a [RoleConfig],
    pub users: &'a [UserConfig],
    pub keys: &'a [KeyConfig],
    /// Each filter's own section (`[rate_limit]`, `[dlp]`, `[audit]` …), by type.
    pub sections: Sections<'a>,
    /// The configured model names, in order.
    pub models: &'a [String],
    /// The configured agent ids, in order.
    pub agents: &'a [String],
    /// The price of each priced model (SPEC §15); [`crate::spend::no_prices`] for none.
    pub prices: &'a std::collections::HashMap<String, Price>,
}

/// What checking a policy parsed: each role's permissions and each key's SHA-256. A policy is
/// checked by [`Policy::check`], the one place its checks and their messages live, once per
/// load; the auth filter makes its identities from this instead of checking again.
#[derive(Default)]
pub struct CheckedPolicy {
    /// Each role's permissions (parallel to `roles`).
    pub(crate) permissions: Vec<Vec<Permission>>,
    /// Each key's SHA-256 (parallel to `keys`).
    pub(crate) digests: Vec<[u8; 32]>,
}

impl CheckedPolicy {
    /// Whether this could be the check of `policy` (an embedder's may not be).
    pub(crate) fn fits(&self, policy: &Policy<'_>) -> bool {
        self.permissions.len() == policy.roles.len() && self.digests.len() == policy.keys.len()
    }
}

/// Counts only: a digest has no business in logs.
impl std::fmt::Debug for CheckedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedPolicy")
            .field("roles", &self.permissions.len())
            .field("keys", &self.digests.len())
            .finish()
    }
}

impl<'a> Policy<'a> {
    /// Checks the references between orgs, roles, users and keys and the shape of each entry,
    /// reporting every problem with its field path.
    pub fn check(&self) -> Result<CheckedPolicy, ConfigErrors> {
        let mut errs = Vec::new();
        let checked = self.check_into(&mut errs);
        if errs.is_empty() {
            Ok(checked)
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// The policy checked (when the engine gave it, as it does for every load), else checked
    /// here.
    pub fn checked(&self) -> Result<Arc<CheckedPolicy>, ConfigErrors> {
        match self.sections.get::<Arc<CheckedPolicy>>() {
            Some(c) if c.fits(self) => Ok(c.clone()),
            _ => self.check().map(Arc::new),
        }
    }

    /// This filter type's own section `[name]` as written (see [`FilterFactory::section`]);
    /// [`crate::config::parse_section`] reads it into the filter's settings.
    pub fn section_table(&self, name: &str) -> Option<&'a toml::Value> {
        self.sections.table(name)
    }

    fn check_into(&self, errs: &mut Vec<ConfigError>) -> CheckedPolicy {
        CHECKS.with(|c| c.set(c.get() + 1));
        let mut checked = CheckedPolicy::default();
        let mut seen = std::collections::HashSet::new();
        for (i, o) in self.orgs.iter().enumerate() {
            if !seen.insert(o.name.as_str()) {
                errs.push(ConfigError::new(
                    format!("orgs[{i}].name"),
                    format!("duplicate org `{}`", o.name),
                ));
            }
            if let Some(rl) = &o.rate_limit {
                validate_spec(rl, &format!("orgs[{i}].rate_limit"), errs);
            }
            if let Some(b) = &o.budget {
                b.validate(&format!("orgs[{i}].budget"), errs);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.roles.iter().enumerate() {
            if !seen.insert(r.name.as_str()) {
                errs.push(ConfigError::new(
                    format!("roles[{i}].name"),
                    format!("duplicate role `{}`", r.name),
                ));
            }
            let mut permissions = Vec::with_capacity(r.permissions.len());
            for (j, p) in r.permissions.iter().enumerate() {
                if let Some(p) = Permission::parse(p) {
                    permissions.push(p);
                } else {
                    let all: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
                    errs.push(ConfigError::new(
                        format!("roles[{i}].permissions[{j}]"),
                        format!("unknown permission `{p}` (known: {})", all.join(", ")),
                    ));
                }
            }
            checked.permissions.push(permissions);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if !seen.insert(u.name.as_str()) {
                errs.push(ConfigError::new(
                    format!("users[{i}].name"),
                    format!("duplicate user `{}`", u.name),
                ));
            }
            if !self.orgs.iter().any(|o| o.name == u.org) {
                errs.push(ConfigError::new(
                    format!("users[{i}].org"),
                    format!("no org named `{}` in [[orgs]]", u.org),
                ));
            }
            if !self.roles.iter().any(|r| r.name == u.role) {
                errs.push(ConfigError::new(
                    format!("users[{i}].role"),
                    format!("no role named `{}` in [[roles]]", u.role),
                ));
            }
            if let Some(rl) = &u.rate_limit {
                validate_spec(rl, &format!("users[{i}].rate_limit"), errs);
            }
            if let Some(b) = &u.budget {
                b.validate(&format!("users[{i}].budget"), errs);
            }
        }
        let mut ids = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            if !ids.insert(k.id.as_str()) {
                errs.push(ConfigError::new(
                    format!("keys[{i}].id"),
                    format!("duplicate key id `{}`", k.id),
                ));
            }
            if !self.users.iter().any(|u| u.name == k.user) {
                errs.push(ConfigError::new(
                    format!("keys[{i}].user"),
                    format!("no user named `{}` in [[users]]", k.user),
                ));
            }
            let mut digest = [0u8; 32];
            let ok_hex =
                k.sha256.len() == 64 && hex::decode_to_slice(&k.sha256, &mut digest).is_ok();
            checked.digests.push(digest);
            if !ok_hex {
                errs.push(ConfigError::new(
                    format!("keys[{i}].sha256"),
                    "must be the 64 hex digits of the key's SHA-256 (see `sluice keys new`)",
                ));
            } else if !hashes.insert(k.sha256.to_ascii_lowercase()) {
                errs.push(ConfigError::new(
                    format!("keys[{i}].sha256"),
                    "the same key hash appears twice",
                ));
            }
            if let Some(rl) = &k.rate_limit {
                validate_spec(rl, &format!("keys[{i}].rate_limit"), errs);
            }
            if let Some(b) = &k.budget {
                b.validate(&format!("keys[{i}].budget"), errs);
            }
        }
        checked
    }
}

thread_local! {
    static CHECKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many policies were checked on this thread: lets a test show that one config load checks
/// its policy once (a thread's own count, undisturbed by tests running alongside).
#[doc(hidden)]
pub fn checks_on_this_thread() -> u64 {
    CHECKS.with(std::cell::Cell::get)
}

/// Checks one `rate_limit` table (every limit at least 1), naming `path` in errors.
pub fn validate_spec(rl: &RateLimitSpec, path: &str, errs: &mut Vec<ConfigError>) {
    for (name, v) in [
        ("requests_per_minute", rl.requests_per_minute),
        ("tokens_per_minute", rl.tokens_per_minute),
        ("burst", rl.burst),
        ("token_burst", rl.token_burst),
    ] {
        if v == Some(0) {
            errs.push(ConfigError::new(
                format!("{path}.{name}"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
    }
}

/// Builds a filter from the config. `options` is the filter's `[[filters]]` table without
/// `type`; `path` is its field path (`filters[2]`) for errors.
///
/// Implemented for closures, so an embedder registers a custom filter type with one function.
pub trait FilterFactory: Send + Sync + 'static {
    fn build(
        &self,
        policy: &Policy<'_>,
        options: &toml::Table,
        path: &str,
        shared: &Shared,
    ) -> Result<Arc<dyn Filter>, ConfigErrors>;

    /// The top-level section this filter type owns (`quota` for `[quota]`), if any: the engine
    /// hands it over as written ([`Policy::section_table`]) and reports a section that no
    /// registered type owns as an unknown key. A section the engine itself reads (`[dlp]`,
    /// `[audit]`, `[rate_limit]`, `[server]` …) is never handed over this way.
    fn section(&self) -> Option<&str> {
        None
    }
}

/// A factory that owns a section of its own: `WithSection::new("quota", build)` makes `build`
/// (a function or closure) the factory of a filter type whose settings live in `[quota]`.
pub struct WithSection<F> {
    section: String,
    factory: F,
}

impl<F: FilterFactory> WithSection<F> {
    pub fn new(section: impl Into<String>, factory: F) -> WithSection<F> {
        WithSection {
            section: section.into(),
            factory,
        }
    }
}

impl<F: FilterFactory> FilterFactory for WithSection<F> {
    fn build(
        &self,
        policy: &Policy<'_>,
        options: &toml::Table,
        path: &str,
        shared: &Shared,
    ) -> Result<Arc<dyn Filter>, ConfigErrors> {
        self.factory.build(policy, options, path, shared)
    }

    fn section(&self) -> Option<&str> {
        Some(&self.section)
    }
}

impl<F> FilterFactory for F
where
    F: Fn(&Policy<'_>, &toml::Table, &str, &Shared) -> Result<Arc<dyn Filter>, ConfigErrors>
        + Send
        + Sync
        + 'static,
{
    fn build(
        &self,
        policy: &Policy<'_>,
        options: &toml::Table,
        path: &str,
        shared: &Shared,
    ) -> Result<Arc<dyn Filter>, ConfigErrors> {
        self(policy, options, path, shared)
    }
}
