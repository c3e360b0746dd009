//! Headers that never cross Sluice: hop-by-hop headers (RFC 9110 §7.6.1) and the client's
//! credentials.

use http::{HeaderMap, HeaderName};

/// Headers that describe one connection, never forwarded, plus the proxy's own credentials.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Where a client may put its key: all removed before a request goes upstream (the upstream's
/// own key replaces them).
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "x-api-key", "api-key"];

/// Query parameters that carry a key (`?api_key=`, `?key=` as Google's APIs use).
pub const CREDENTIAL_PARAMS: [&str; 2] = ["api_key", "key"];

/// The hop-by-hop headers present in `headers`, including those named by `Connection`. Most
/// requests have none (or only `Connection`): one pass over the few names present is cheaper
/// than looking up (hence parsing) each of the nine.
pub fn hop_by_hop_present(headers: &HeaderMap) -> Vec<HeaderName> {
    strip_present(headers, &[])
}

/// The headers of a request that must not reach an upstream: hop-by-hop ones and those named
/// in `also` (the client's credentials), found in one pass over the names present.
pub fn strip_present(headers: &HeaderMap, also: &[&str]) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(&n.as_str()) || also.contains(&n.as_str()))
        .cloned()
        .collect();
    for v in headers.get_all(http::header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for name in s.split(',') {
                if let Ok(n) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    if headers.contains_key(&n) && !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
        }
    }
    out
}

/// The query string without credential parameters; `None` when nothing is left.
pub fn strip_credential_params(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('=').next().unwrap_or("");
            !CREDENTIAL_PARAMS
                .iter()
                .any(|c| name.eq_ignore_ascii_case(c) || percent_decoded_is(name, c))
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Whether a query parameter name spelled with escapes (`api%5Fkey`) is `want`.
fn percent_decoded_is(name: &str, want: &str) -> bool {
    if !name.contains('%') {
        return false;
    }
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&name[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out.eq_ignore_ascii_case(want.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "close, X-Trace-Hop, keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-trace-hop", "1"),
            ("te", "trailers"),
            ("content-type", "application/json"),
            ("x-kept", "1"),
        ] {
            h.insert(
                HeaderName::from_static(n),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let mut got: Vec<String> = hop_by_hop_present(&h)
            .iter()
            .map(|n| n.as_str().to_string())
            .collect();
        got.sort();
        assert_eq!(got, ["connection", "keep-alive", "te", "x-trace-hop"]);
        assert!(hop_by_hop_present(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn credential_params_are_removed() {
        assert_eq!(strip_credential_params("api_key=sk-1"), None);
        assert_eq!(
            strip_credential_params("beta=true&key=AIza&x=1").as_deref(),
            Some("beta=true&x=1")
        );
        assert_eq!(
            strip_credential_params("API_KEY=1&a=2").as_deref(),
            Some("a=2")
        );
        assert_eq!(
            strip_credential_params("api%5Fkey=1&a=2").as_deref(),
            Some("a=2")
        );
        assert_eq!(strip_credential_params("keys=1").as_deref(), Some("keys=1"));
    }
}
