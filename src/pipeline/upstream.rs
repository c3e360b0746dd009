//! What the upstream request's head becomes: the client's credentials and hop-by-hop headers
//! out, the upstream's own key in, the normalized path under the upstream's base path.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use super::Call;
use crate::headers::{strip_credential_params, strip_present, CREDENTIAL_HEADERS};

/// Never forwarded: the client's credentials, the engine's own run token, and the headers of
/// the client's own hop (its cookies, and what it claims about proxies before Sluice; every
/// `x-forwarded-*` too, see [`client_hop_headers`]).
const STRIPPED: [&str; 7] = [
    CREDENTIAL_HEADERS[0],
    CREDENTIAL_HEADERS[1],
    CREDENTIAL_HEADERS[2],
    crate::agents::INTERNAL_RUN_HEADER,
    "cookie",
    "forwarded",
    "x-real-ip",
];

/// The client's `x-forwarded-*` headers (a client can claim any address or host in them).
fn client_hop_headers(headers: &HeaderMap, out: &mut Vec<HeaderName>) {
    for n in headers.keys() {
        if n.as_str().starts_with("x-forwarded-") && !out.contains(n) {
            out.push(n.clone());
        }
    }
}

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// Changes to the upstream request's head. Names Sluice sets are static strings, which Pingora
/// takes without copying.
#[derive(Debug, Default)]
pub struct UpstreamHead {
    pub remove: Vec<HeaderName>,
    pub insert: Vec<(&'static str, HeaderValue)>,
    pub uri: Option<Uri>,
    pub method: Option<Method>,
}

impl UpstreamHead {
    fn set(&mut self, name: &'static str, value: HeaderValue) {
        self.insert.push((name, value));
    }
}

impl Call {
    /// The upstream request's head, from the client's (`headers`, `uri`).
    pub fn upstream_head(
        &mut self,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<UpstreamHead, String> {
        let u = self.upstream_rt().ok_or("no upstream chosen")?;
        let mut h = UpstreamHead {
            remove: strip_present(headers, &STRIPPED),
            insert: Vec::with_capacity(6),
            ..UpstreamHead::default()
        };
        client_hop_headers(headers, &mut h.remove);
        if self.snap.config.server.forward_client_ip {
            if let Some(ip) = self.cx.client_ip {
                let v = HeaderValue::from_str(&ip.to_string()).map_err(|e| e.to_string())?;
                h.set("x-forwarded-for", v);
            }
        }
        if let Some((name, value)) = &u.credential {
            h.insert.push((name, value.clone()));
        }
        if u.anthropic && !headers.contains_key(ANTHROPIC_VERSION) {
            h.set("anthropic-version", HeaderValue::from_static("2023-06-01"));
        }
        h.set("host", u.host_value.clone());
        let id = HeaderValue::from_str(&self.cx.request_id).map_err(|e| e.to_string())?;
        h.set("x-request-id", id);
        // The query as the `dlp` filter left it (it may have redacted it), less credentials.
        let stripped = self.cx.query.as_deref().map(strip_credential_params);
        let query_changed = stripped.clone().flatten().as_deref() != uri.query();
        let rewrite = !u.base_path.is_empty()
            || self.routing.upstream_path().is_some()
            || uri.scheme().is_some()
            || uri.path() != self.cx.path
            || query_changed;
        if rewrite {
            let path = self.routing.upstream_path().unwrap_or(&self.cx.path);
            let q = match stripped.flatten() {
                Some(q) => format!("?{q}"),
                None => String::new(),
            };
            let full = format!("{}{}{}", u.base_path, path, q);
            h.uri = Some(
                full.parse()
                    .map_err(|_| "upstream path is not a valid URI")?,
            );
        }
        if let Some(body) = self.held_body() {
            h.remove.push(http::header::TRANSFER_ENCODING);
            let len = HeaderValue::from(body.len());
            h.set("content-length", len);
            if self.routing.reshape().is_some() {
                // The route built this body itself.
                h.method = Some(Method::POST);
                h.set("content-type", HeaderValue::from_static("application/json"));
            }
        }
        // Filters and the usage reader read response bodies; a compressed one could not be read.
        h.set("accept-encoding", HeaderValue::from_static("identity"));
        self.trace_upstream(&mut h, headers);
        // Until the body is handed over, or now if there is none.
        self.request_sent();
        Ok(h)
    }
}
