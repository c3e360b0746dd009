//! `/mcp/{server}`: MCP's Streamable HTTP transport to the `[[mcp_servers]]`, governed like
//! model calls (SPEC §16).
//!
//! Sluice keeps no MCP session state: `Mcp-Session-Id` and `MCP-Protocol-Version` travel
//! unchanged between client and server, so consecutive requests of one session may land on
//! any instance. Each `POST` carries one JSON-RPC message; the answer keeps its framing (JSON
//! stays JSON, SSE stays SSE) while each message in it is governed:
//!
//! - `tools/list` results list only the tools the caller may call (role `mcp` globs over
//!   `server:tool`, narrowed by the key's own);
//! - a `tools/call` of any other tool is answered with a JSON-RPC error (`-32001`,
//!   `data.type` `permission_denied`) and never forwarded;
//! - a `tools/call` runs the chain's request phase (rate limits, DLP on its `arguments`), and
//!   its result the chain's answer phase (DLP on `content[]`, `structuredContent`, resource
//!   contents), per SSE event once it is whole;
//! - the server's own credential (`api_key_env`) is sent, the client's never.
//!
//! The JSON-RPC reading lives in `sluice_filters::mcp`; this module is the transport.

mod answer;
pub mod config;
mod metadata;
mod metrics;
mod relay;
mod route;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderValue;
use sluice_filters::ConfigError;

pub use config::McpServerConfig;
pub use metadata::{is_metadata_path, METADATA_PREFIX};
pub use metrics::McpMetrics;
pub use route::{claims, serve};

/// An MCP server ready for the request path.
pub struct ServerRt {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: bool,
    /// SNI and certificate name.
    pub host: String,
    pub host_value: HeaderValue,
    /// The endpoint's path (`/mcp`), never empty.
    pub path: String,
    /// `Bearer …` from `api_key_env`, marked sensitive.
    pub credential: Option<HeaderValue>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// `price_per_call_usd` in micro-dollars: what one `tools/call` costs against budgets.
    pub price_micros: Option<i64>,
}

/// The MCP servers of one config generation, and the connection pool to them.
pub struct McpServers {
    servers: HashMap<String, ServerRt>,
    connector: pingora_core::connectors::http::Connector,
}

impl Default for McpServers {
    fn default() -> Self {
        McpServers {
            servers: HashMap::new(),
            connector: pingora_core::connectors::http::Connector::new(None),
        }
    }
}

impl McpServers {
    /// Takes each server's address as loading resolved it (DNS never runs on the request path,
    /// nor twice per load) and reads its credential; every problem is reported with its field
    /// path.
    pub fn build(config: &crate::config::Config, errs: &mut Vec<ConfigError>) -> McpServers {
        let mut out = McpServers::default();
        for (i, s) in config.mcp_servers.iter().enumerate() {
            let p = format!("mcp_servers[{i}]");
            let target = match &config.checked_mcp_server(i).target {
                Some(Ok(t)) => t.clone(),
                Some(Err(m)) => {
                    errs.push(ConfigError::new(format!("{p}.url"), m.as_str()));
                    continue;
                }
                None => continue,
            };
            let Some(addr) = target.addr else { continue };
            let credential = match &s.api_key_env {
                Some(env) => match std::env::var(env) {
                    Ok(key) if !key.is_empty() => {
                        match HeaderValue::from_str(&format!("Bearer {key}")) {
                            Ok(mut v) => {
                                v.set_sensitive(true);
                                Some(v)
                            }
                            Err(_) => {
                                errs.push(ConfigError::new(
                                    format!("{p}.api_key_env"),
                                    format!("${env} holds characters a header cannot carry"),
                                ));
                                continue;
                            }
                        }
                    }
                    _ => {
                        errs.push(ConfigError::new(
                            format!("{p}.api_key_env"),
                            format!("environment variable {env} is not set"),
                        ));
                        continue;
                    }
                },
                None => None,
            };
            let default_port = if target.tls { 443 } else { 80 };
            let host_header = if addr.port() == default_port {
                target.host.clone()
            } else if target.host.contains(':') {
                format!("[{}]:{}", target.host, addr.port())
            } else {
                format!("{}:{}", target.host, addr.port())
            };
            let Ok(host_value) = HeaderValue::from_str(&host_header) else {
                errs.push(ConfigError::new(
                    format!("{p}.url"),
                    "the host is not a valid header",
                ));
                continue;
            };
            let path = if target.base_path.is_empty() {
                "/".to_string()
            } else {
                target.base_path
            };
            out.servers.insert(
                s.name.clone(),
                ServerRt {
                    name: s.name.clone(),
                    addr,
                    tls: target.tls,
                    host: target.host,
                    host_value,
                    path,
                    credential,
                    connect_timeout: Duration::from_millis(s.connect_timeout_ms),
                    read_timeout: Duration::from_millis(s.read_timeout_ms),
                    price_micros: s.price_per_call_usd.map(|p| {
                        i64::try_from(sluice_filters::spend::micros(p)).unwrap_or(i64::MAX)
                    }),
                },
            );
        }
        out
    }

    pub fn get(&self, name: &str) -> Option<&ServerRt> {
        self.servers.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.servers.keys().map(String::as_str)
    }
}

/// The server named by a normalized `/mcp/{server}` path (a trailing slash allowed).
pub fn server_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/mcp/")?;
    let name = rest.strip_suffix('/').unwrap_or(rest);
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_paths() {
        assert_eq!(server_of("/mcp/github"), Some("github"));
        assert_eq!(server_of("/mcp/github/"), Some("github"));
        assert_eq!(server_of("/mcp/"), None);
        assert_eq!(server_of("/mcp/a/b"), None);
        assert_eq!(server_of("/v1/mcp/a"), None);
    }
}
