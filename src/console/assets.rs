//! The console's stylesheet and script, embedded in the binary: no CDN, no build step, and
//! nothing inline (the Content-Security-Policy allows only the console's own files).

use bytes::Bytes;
use http::Method;

use super::Page;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// `GET /console/assets/{name}`.
pub fn serve(method: &Method, name: &str) -> Page {
    let (body, content_type) = match name {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => ("Not found.\n", "text/plain; charset=utf-8"),
    };
    let status = if body.starts_with("Not found") {
        404
    } else {
        200
    };
    let status = if method == Method::GET || method == Method::HEAD {
        status
    } else {
        405
    };
    Page {
        status,
        headers: vec![
            ("content-type", content_type.into()),
            ("cache-control", "max-age=300".into()),
        ],
        body: Bytes::from_static(body.as_bytes()),
    }
}
