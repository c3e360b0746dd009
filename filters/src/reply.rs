//! Local replies. Errors are built in OpenAI's shape; the engine renders them in the route's
//! own API shape ([`crate::api::Api::error_body`]) from [`Reply::error_info`].

use bytes::Bytes;
use http::StatusCode;

use crate::api::ErrorInfo;
use crate::Outcome;

/// A response Sluice produces itself, without the upstream.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    /// Extra headers (`retry-after`, …). `content-type` and `content-length` are set by the
    /// engine.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub content_type: &'static str,
    pub body: Bytes,
    /// The audit outcome this reply stands for.
    pub outcome: Outcome,
    /// The contract's error code (`invalid_api_key`, …) when this is an error.
    pub code: Option<&'static str>,
    /// The error, for rendering it in another API's shape.
    pub error_info: Option<Box<ErrorInfo>>,
}

impl Reply {
    /// An error in OpenAI's shape: `{"error":{"message","type","code","param":null}}`.
    /// The type is derived from the status (and `dlp_blocked`), as in the contract's table.
    pub fn error(status: u16, code: &'static str, message: impl Into<String>) -> Reply {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let info = ErrorInfo {
            status: status.as_u16(),
            kind: error_type(status, code),
            code,
            message: message.into(),
            param: None,
        };
        Reply {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            body: crate::api::openai_error(&info),
            outcome: Outcome::for_error(status, code),
            code: Some(code),
            error_info: Some(Box::new(info)),
        }
    }

    /// A successful JSON answer produced by Sluice (the models list, an agent run).
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            headers: Vec::new(),
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
            outcome: Outcome::Ok,
            code: None,
            error_info: None,
        }
    }

    /// Names the request field an error is about (`param`).
    pub fn with_param(mut self, param: &str) -> Reply {
        if let Some(e) = self.error_info.as_mut() {
            e.param = Some(param.to_string());
            self.body = crate::api::openai_error(e);
        }
        self
    }

    pub fn with_header(mut self, name: &'static str, value: impl AsRef<str>) -> Reply {
        if let Ok(v) = http::HeaderValue::from_str(value.as_ref()) {
            self.headers.push((http::HeaderName::from_static(name), v));
        }
        self
    }
}

/// The `type` field of an error, from the contract's table.
pub fn error_type(status: StatusCode, code: &str) -> &'static str {
    match (status.as_u16(), code) {
        (_, "dlp_blocked") => "dlp_violation",
        (_, "budget_exceeded") => "insufficient_quota",
        (401, _) => "authentication_error",
        (403, _) => "permission_error",
        (429, _) => "rate_limit_error",
        (502 | 504, _) => "upstream_error",
        (503, _) => "server_error",
        (500..=599, _) => "server_error",
        _ => "invalid_request_error",
    }
}
