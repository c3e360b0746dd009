//! `[telemetry]`: where traces go, under which service name, and how many of them.

use serde::Deserialize;
use sluice_filters::ConfigError;

/// `[telemetry]`. Absent: no traces, and nothing of them on the request path.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector's base URL (`http://127.0.0.1:4318`); spans are posted to
    /// `{otlp_endpoint}/v1/traces` as protobuf.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of traces started here that are recorded (0 to 1). A client's `traceparent`
    /// decides for its own trace: sampled or not, as it says.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// Ended spans waiting for export; past this they are dropped (and counted in
    /// `sluice_trace_spans_dropped_total{reason="queue_full"}`), never waited for.
    #[serde(default = "default_queue")]
    pub max_queue_spans: usize,
}

fn default_service_name() -> String {
    "sluice".into()
}
fn default_ratio() -> f64 {
    1.0
}
fn default_queue() -> usize {
    2048
}

impl TelemetryConfig {
    /// The URL spans are posted to.
    pub fn traces_url(&self) -> Result<String, String> {
        let Some(raw) = self.otlp_endpoint.as_deref().map(str::trim) else {
            return Err(
                "required: the OTLP/HTTP collector's address, e.g. http://127.0.0.1:4318".into(),
            );
        };
        if raw.starts_with("https://") {
            return Err(format!(
                "`{raw}`: https is not supported; export to a collector or agent on http:// \
                 next to Sluice (e.g. http://127.0.0.1:4318)"
            ));
        }
        let Some(rest) = raw.strip_prefix("http://") else {
            return Err(format!("`{raw}` must start with http://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("`{raw}` has no usable host"));
        }
        if path.contains(['?', '#']) {
            return Err(format!("`{raw}` must not have a query or a fragment"));
        }
        let base = path.trim_end_matches('/');
        let path = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        let url = format!("http://{authority}{path}");
        match url.parse::<http::Uri>() {
            Ok(u) if u.host().is_some_and(|h| !h.is_empty()) => Ok(url),
            _ => Err(format!("`{raw}` is not a valid URL")),
        }
    }

    pub fn validate(&self, errs: &mut Vec<ConfigError>) {
        if let Err(m) = self.traces_url() {
            errs.push(ConfigError::new("telemetry.otlp_endpoint", m));
        }
        let name = self.service_name.trim();
        if name.is_empty() || name.len() > 255 {
            errs.push(ConfigError::new(
                "telemetry.service_name",
                "must be 1 to 255 characters",
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            errs.push(ConfigError::new(
                "telemetry.sample_ratio",
                "must be between 0 and 1",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_queue_spans) {
            errs.push(ConfigError::new(
                "telemetry.max_queue_spans",
                "must be between 1 and 1000000",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoint: Option<&str>) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: endpoint.map(str::to_string),
            service_name: default_service_name(),
            sample_ratio: 1.0,
            max_queue_spans: default_queue(),
        }
    }

    #[test]
    fn traces_url() {
        let url = |e| cfg(Some(e)).traces_url();
        assert_eq!(
            url("http://127.0.0.1:4318").as_deref(),
            Ok("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            url("http://collector:4318/").as_deref(),
            Ok("http://collector:4318/v1/traces")
        );
        assert_eq!(
            url("http://h/otlp/v1/traces").as_deref(),
            Ok("http://h/otlp/v1/traces")
        );
        assert_eq!(
            url("http://h/otlp").as_deref(),
            Ok("http://h/otlp/v1/traces")
        );
        for bad in [
            "https://h:4318",
            "h:4318",
            "http://",
            "http://u@h",
            "http://h/?x=1",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
        assert!(cfg(None).traces_url().is_err());
    }
}
