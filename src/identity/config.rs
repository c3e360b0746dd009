//! `[identity]` (SPEC §13): the organisation's OpenID Connect provider.

use std::net::IpAddr;

use serde::Deserialize;
use sluice_filters::policy::{OrgConfig, RoleConfig};
use sluice_filters::ConfigError;

/// `[identity]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct IdentityConfig {
    /// `https://…` (plain `http://` only on a loopback address); discovery is at
    /// `{issuer}/.well-known/openid-configuration`, and tokens' `iss` must equal it exactly.
    pub issuer: String,
    pub client_id: String,
    /// The environment variable holding the client secret (the console's sign-in).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Accepted `aud` of access tokens on the API.
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Keys made by a provider user expire at most this many days after they are made.
    #[serde(default = "default_key_max_days")]
    pub key_max_days: u64,
    /// Group → org and role, first match wins.
    #[serde(default)]
    pub roles: Vec<RoleRule>,
}

/// `[[identity.roles]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RoleRule {
    /// A glob over the token's groups; `*` matches any signed-in member, groups or not.
    pub group: String,
    pub org: String,
    pub role: String,
}

fn default_username_claim() -> String {
    "email".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_key_max_days() -> u64 {
    90
}

/// The longest `key_max_days` (as the key API's own bound).
const MAX_KEY_DAYS: u64 = 3650;

impl IdentityConfig {
    /// Offline checks, each with its field path; `orgs` and `roles` are the config's own.
    pub fn validate(&self, orgs: &[OrgConfig], roles: &[RoleConfig], errs: &mut Vec<ConfigError>) {
        if let Err(m) = check_issuer(&self.issuer) {
            errs.push(ConfigError::new("identity.issuer", m));
        }
        if self.client_id.trim().is_empty() {
            errs.push(ConfigError::new("identity.client_id", "must not be empty"));
        }
        if let Some(env) = &self.client_secret_env {
            if env.is_empty() || !env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                errs.push(ConfigError::new(
                    "identity.client_secret_env",
                    "must name an environment variable (letters, digits, `_`)",
                ));
            }
        }
        if self.audiences.is_empty() {
            errs.push(ConfigError::new(
                "identity.audiences",
                "must list at least one accepted `aud` (often the client id or the API's identifier)",
            ));
        }
        for (i, a) in self.audiences.iter().enumerate() {
            if a.is_empty() {
                errs.push(ConfigError::new(
                    format!("identity.audiences[{i}]"),
                    "must not be empty",
                ));
            }
        }
        for (field, v) in [
            ("username_claim", &self.username_claim),
            ("groups_claim", &self.groups_claim),
        ] {
            if v.is_empty() {
                errs.push(ConfigError::new(
                    format!("identity.{field}"),
                    "must name a claim",
                ));
            }
        }
        if !(1..=MAX_KEY_DAYS).contains(&self.key_max_days) {
            errs.push(ConfigError::new(
                "identity.key_max_days",
                format!("must be between 1 and {MAX_KEY_DAYS}"),
            ));
        }
        if self.roles.is_empty() {
            errs.push(ConfigError::new(
                "identity.roles",
                "must hold at least one [[identity.roles]] rule (group, org, role): without one \
                 every provider user is refused",
            ));
        }
        for (i, r) in self.roles.iter().enumerate() {
            if r.group.is_empty() {
                errs.push(ConfigError::new(
                    format!("identity.roles[{i}].group"),
                    "must not be empty",
                ));
            }
            if !orgs.iter().any(|o| o.name == r.org) {
                errs.push(ConfigError::new(
                    format!("identity.roles[{i}].org"),
                    format!("no org named `{}` in [[orgs]]", r.org),
                ));
            }
            if !roles.iter().any(|x| x.name == r.role) {
                errs.push(ConfigError::new(
                    format!("identity.roles[{i}].role"),
                    format!("no role named `{}` in [[roles]]", r.role),
                ));
            }
        }
    }

    /// The discovery document's URL.
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }
}

/// `https://`, or `http://` on a loopback host.
pub fn check_issuer(issuer: &str) -> Result<(), String> {
    if issuer.starts_with("https://") && issuer.len() > "https://".len() {
        return Ok(());
    }
    let Some(rest) = issuer.strip_prefix("http://") else {
        return Err("must be an https:// URL (the provider's issuer identifier)".into());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err("must be https:// (plain http:// only for a provider on a loopback address)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_must_be_https_except_on_loopback() {
        assert!(check_issuer("https://login.example.com/realms/acme").is_ok());
        assert!(check_issuer("http://127.0.0.1:8080").is_ok());
        assert!(check_issuer("http://localhost:3000/x").is_ok());
        assert!(check_issuer("http://[::1]:3000").is_ok());
        assert!(check_issuer("http://login.example.com").is_err());
        assert!(check_issuer("http://127.0.0.1.evil.com").is_err());
        assert!(check_issuer("ftp://x").is_err());
    }
}
