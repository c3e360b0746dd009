//! Embedding Sluice as a library, with a filter type of your own.
//!
//! `RequireHeader` refuses requests that lack a header (say, a cost-centre tag your finance team
//! wants on every LLM call). Register it under a type name, then use it in the config like a
//! built-in:
//!
//! ```toml
//! [[filters]]
//! type = "require_header"
//! header = "x-cost-center"
//! ```
//!
//! Run: `cargo run --example require_header -- conf/sluice.toml`

use std::sync::Arc;

use async_trait::async_trait;
use sluice::filters::{ConfigErrors, Cx, Filter, Policy, Reply, RequestHead, Shared, Verdict};
use sluice::GatewayBuilder;

/// Refuses requests without a given header (400 `missing_header`).
pub struct RequireHeader {
    header: http::HeaderName,
}

#[async_trait]
impl Filter for RequireHeader {
    fn name(&self) -> &str {
        "require_header"
    }

    async fn on_request_head(&self, head: &RequestHead<'_>, _cx: &mut Cx) -> Verdict {
        if head.headers.contains_key(&self.header) {
            return Verdict::Continue;
        }
        Reply::error(
            400,
            "missing_header",
            format!(
                "This gateway requires the `{}` header on every request.",
                self.header
            ),
        )
        .into()
    }
}

/// The factory: reads `header` from the filter's `[[filters]]` table.
pub fn build_require_header(
    _policy: &Policy<'_>,
    options: &toml::Table,
    path: &str,
    _shared: &Shared,
) -> Result<Arc<dyn Filter>, ConfigErrors> {
    let mut errors = Vec::new();
    for key in options.keys().filter(|k| k.as_str() != "header") {
        errors.push(sluice::filters::ConfigError::new(
            format!("{path}.{key}"),
            "unknown key",
        ));
    }
    let header = match options.get("header").and_then(|v| v.as_str()) {
        Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                errors.push(sluice::filters::ConfigError::new(
                    format!("{path}.header"),
                    "not a valid header name",
                ));
                None
            }
        },
        None => {
            errors.push(sluice::filters::ConfigError::new(
                format!("{path}.header"),
                "required: the header to require",
            ));
            None
        }
    };
    match header {
        Some(header) if errors.is_empty() => Ok(Arc::new(RequireHeader { header })),
        _ => Err(ConfigErrors(errors)),
    }
}

/// A gateway builder that knows the `require_header` filter type.
pub fn builder() -> GatewayBuilder {
    GatewayBuilder::new().filter_type("require_header", build_require_header)
}

#[allow(dead_code)]
fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "conf/sluice.toml".into());
    match builder().config_file(&path).handle_signals(true).start() {
        Ok(gw) => {
            eprintln!(
                "serving on {} (admin {})",
                gw.listen_addr(),
                gw.admin_addr()
            );
            gw.wait();
        }
        Err(e) => {
            eprintln!("cannot start: {e}");
            std::process::exit(2);
        }
    }
}
