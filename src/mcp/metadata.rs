//! MCP authorization discovery: the `WWW-Authenticate` challenge of an unauthenticated
//! request and the OAuth 2.0 Protected Resource Metadata document (RFC 9728) it points to, so
//! that an MCP client that implements MCP's authorization finds the identity provider.

use http::HeaderMap;
use serde_json::{json, Value};

/// Where the metadata documents live: `{PREFIX}/mcp/{server}`.
pub const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// The server of a metadata path (`/.well-known/oauth-protected-resource/mcp/{server}`).
pub fn is_metadata_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(METADATA_PREFIX)?;
    super::server_of(rest)
}

/// The gateway's base URL as the client reached it: the scheme of the listener and the
/// client's `Host` (only ever reflected to that client).
pub fn base_url(headers: &HeaderMap, tls: bool) -> String {
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// The `WWW-Authenticate` value of a `401` on `/mcp/{server}`.
pub fn challenge(base: &str, server: &str) -> String {
    format!("Bearer resource_metadata=\"{base}{METADATA_PREFIX}/mcp/{server}\"")
}

/// The RFC 9728 document of `/mcp/{server}`. `issuer`: the `[identity]` provider, when one is
/// configured (its tokens are accepted on `/mcp/*`).
pub fn document(base: &str, server: &str, issuer: Option<&str>) -> Value {
    let mut doc = json!({
        "resource": format!("{base}/mcp/{server}"),
        "bearer_methods_supported": ["header"],
        "resource_name": format!("Sluice MCP gateway: {server}"),
    });
    if let Some(iss) = issuer {
        doc["authorization_servers"] = json!([iss]);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_and_document() {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, "127.0.0.1:8080".parse().unwrap());
        let base = base_url(&h, false);
        assert_eq!(base, "http://127.0.0.1:8080");
        assert_eq!(
            challenge(&base, "github"),
            "Bearer resource_metadata=\"http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp/github\""
        );
        let d = document(
            &base,
            "github",
            Some("https://login.example.com/realms/acme"),
        );
        assert_eq!(d["resource"], "http://127.0.0.1:8080/mcp/github");
        assert_eq!(
            d["authorization_servers"][0],
            "https://login.example.com/realms/acme"
        );
        assert!(document(&base, "github", None)
            .get("authorization_servers")
            .is_none());
        h.insert(http::header::HOST, "evil\"host".parse().unwrap());
        assert_eq!(base_url(&h, true), "https://localhost");
        assert_eq!(
            is_metadata_path("/.well-known/oauth-protected-resource/mcp/github"),
            Some("github")
        );
        assert_eq!(
            is_metadata_path("/.well-known/oauth-protected-resource"),
            None
        );
    }
}
