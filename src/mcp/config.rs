//! `[[mcp_servers]]` and the `mcp` globs of roles and keys: the entries and their checks.
//! Read by the config (which holds the entries) and by [`super::McpServers`] (which builds
//! them); it names neither, so the config does not reach back into the MCP transport.

use std::borrow::Cow;

use serde::Deserialize;
use sluice_filters::policy::{KeyConfig, RoleConfig};
use sluice_filters::ConfigError;

use crate::config::upstream_url::CheckedUpstream;

/// One `[[mcp_servers]]` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct McpServerConfig {
    /// The `{server}` of `/mcp/{server}` and of the role globs `server:tool`.
    pub name: String,
    /// The server's Streamable HTTP endpoint (http:// or https://).
    pub url: String,
    /// Sent as `Authorization: Bearer …`; the client's credential never is.
    pub api_key_env: Option<String>,
    /// Kept for budgets (the spend feature): what one `tools/call` costs.
    pub price_per_call_usd: Option<f64>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Also the longest silence of a server stream (`GET`) before Sluice ends it.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
}

fn default_connect_timeout_ms() -> u64 {
    2000
}

fn default_read_timeout_ms() -> u64 {
    300_000
}

/// Checks `[[mcp_servers]]` (names, URLs, env names, prices) without touching the network
/// beyond resolving each URL's host, as `[[upstreams]]` do, and the `mcp` globs of roles and
/// keys (each `server:tool`, naming a configured server unless the server part is a glob).
/// `checked[i]` is server `i`'s URL as loading parsed and resolved it.
pub fn validate(
    servers: &[McpServerConfig],
    checked: &[Cow<'_, CheckedUpstream>],
    (roles, keys): (&[RoleConfig], &[KeyConfig]),
    errs: &mut Vec<ConfigError>,
) {
    validate_servers(servers, checked, errs);
    let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    for (i, r) in roles.iter().enumerate() {
        validate_globs(&r.mcp, &format!("roles[{i}].mcp"), &names, errs);
    }
    for (i, k) in keys.iter().enumerate() {
        if let Some(globs) = &k.mcp {
            validate_globs(globs, &format!("keys[{i}].mcp"), &names, errs);
        }
    }
}

fn validate_globs(globs: &[String], path: &str, servers: &[&str], errs: &mut Vec<ConfigError>) {
    for (j, g) in globs.iter().enumerate() {
        let Some((server, tool)) = g.split_once(':') else {
            errs.push(ConfigError::new(
                format!("{path}[{j}]"),
                format!("`{g}` must be `server:tool` (globs allowed, e.g. `github:search_*`)"),
            ));
            continue;
        };
        let literal = !server.contains(['*', '?']);
        if server.is_empty() || tool.is_empty() || (literal && !servers.contains(&server)) {
            errs.push(ConfigError::new(
                format!("{path}[{j}]"),
                format!("`{g}` names no server of [[mcp_servers]]"),
            ));
        }
    }
}

fn validate_servers(
    servers: &[McpServerConfig],
    checked: &[Cow<'_, CheckedUpstream>],
    errs: &mut Vec<ConfigError>,
) {
    let mut seen = std::collections::HashSet::new();
    for (i, s) in servers.iter().enumerate() {
        let p = format!("mcp_servers[{i}]");
        if !seen.insert(s.name.as_str()) {
            errs.push(ConfigError::new(
                format!("{p}.name"),
                format!("duplicate MCP server `{}`", s.name),
            ));
        }
        let name_ok = !s.name.is_empty()
            && s.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            errs.push(ConfigError::new(
                format!("{p}.name"),
                "use letters, digits, `-`, `_` and `.` only (it is a path segment)",
            ));
        }
        if let Some(Err(m)) = checked.get(i).and_then(|c| c.target.as_ref()) {
            errs.push(ConfigError::new(format!("{p}.url"), m.as_str()));
        }
        if let Some(env) = &s.api_key_env {
            if env.is_empty() || !env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                errs.push(ConfigError::new(
                    format!("{p}.api_key_env"),
                    "must be an environment variable name",
                ));
            }
        }
        if s.price_per_call_usd
            .is_some_and(|v| !v.is_finite() || v < 0.0)
        {
            errs.push(ConfigError::new(
                format!("{p}.price_per_call_usd"),
                "must be a non-negative number",
            ));
        }
        for (field, v) in [
            ("connect_timeout_ms", s.connect_timeout_ms),
            ("read_timeout_ms", s.read_timeout_ms),
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
