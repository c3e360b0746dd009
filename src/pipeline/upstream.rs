//! What the upstream request's head becomes: the client's credentials and hop-by-hop headers
//! out, the upstream's own key in, the normalized path under the upstream's base path.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use super::Call;
use crate::headers::{hop_by_hop_present, strip_credential_params, CREDENTIAL_HEADERS};

/// Changes to the upstream request's head.
#[derive(Debug, Default)]
pub struct UpstreamHead {
    pub remove: Vec<HeaderName>,
    pub insert: Vec<(HeaderName, HeaderValue)>,
    pub uri: Option<Uri>,
    pub method: Option<Method>,
}

impl UpstreamHead {
    fn set(&mut self, name: &'static str, value: HeaderValue) {
        self.insert.push((HeaderName::from_static(name), value));
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
            remove: hop_by_hop_present(headers),
            ..UpstreamHead::default()
        };
        for name in CREDENTIAL_HEADERS
            .iter()
            .copied()
            .chain([crate::agents::INTERNAL_RUN_HEADER])
        {
            if headers.contains_key(name) {
                h.remove.push(HeaderName::from_static(name));
            }
        }
        if let Some((name, value)) = &u.credential {
            h.insert.push((name.clone(), value.clone()));
        }
        if u.anthropic && !headers.contains_key("anthropic-version") {
            h.set("anthropic-version", HeaderValue::from_static("2023-06-01"));
        }
        let host = HeaderValue::from_str(&u.host_header).map_err(|e| e.to_string())?;
        h.set("host", host);
        let id = HeaderValue::from_str(&self.cx.request_id).map_err(|e| e.to_string())?;
        h.set("x-request-id", id);
        let query = uri.query();
        let stripped = query.map(strip_credential_params);
        let query_changed =
            matches!((&stripped, query), (Some(s), Some(q)) if s.as_deref() != Some(q));
        let rewrite = !u.base_path.is_empty()
            || self.upstream_path.is_some()
            || uri.scheme().is_some()
            || uri.path() != self.cx.path
            || query_changed;
        if rewrite {
            let path = self.upstream_path.as_deref().unwrap_or(&self.cx.path);
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
        if let Some(body) = &self.body {
            h.remove.push(http::header::TRANSFER_ENCODING);
            let len = HeaderValue::from(body.len());
            h.set("content-length", len);
            if self.agent_response {
                h.method = Some(Method::POST);
                h.set("content-type", HeaderValue::from_static("application/json"));
            }
        }
        // Filters and the usage reader read response bodies; a compressed one could not be read.
        h.set("accept-encoding", HeaderValue::from_static("identity"));
        // Until the body is handed over, or now if there is none.
        self.request_sent();
        Ok(h)
    }
}
