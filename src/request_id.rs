//! Request ids: the client's `x-request-id` when it is sane, else a new random one. Every
//! route (proxied, admin, console) names its requests the same way.

use http::{HeaderMap, HeaderName};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's `x-request-id` when it is sane (1–128 of `[A-Za-z0-9-_.:]`), else a new one.
pub fn from_headers(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        if !v.is_empty()
            && v.len() <= 128
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return v.to_string();
        }
    }
    new()
}

/// A new id: `req_` and 32 hex digits of a random 128-bit number (written without the
/// formatting machinery: it runs for every request).
pub fn new() -> String {
    let mut id = [0u8; 36];
    id[..4].copy_from_slice(b"req_");
    let _ = hex::encode_to_slice(rand::random::<u128>().to_be_bytes(), &mut id[4..]);
    String::from_utf8_lossy(&id).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_others_replaced() {
        let id = new();
        assert!(id.len() == 36 && id.starts_with("req_"), "{id}");
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(new(), id);
        let mut h = HeaderMap::new();
        h.insert(
            X_REQUEST_ID,
            http::HeaderValue::from_static("trace-1:a.b_c"),
        );
        assert_eq!(from_headers(&h), "trace-1:a.b_c");
        for bad in ["has space", "semi;colon", ""] {
            h.insert(X_REQUEST_ID, http::HeaderValue::from_static(bad));
            assert!(from_headers(&h).starts_with("req_"), "{bad}");
        }
        let long = "a".repeat(129);
        if let Ok(v) = http::HeaderValue::from_str(&long) {
            h.insert(X_REQUEST_ID, v);
        }
        assert!(from_headers(&h).starts_with("req_"));
    }
}
