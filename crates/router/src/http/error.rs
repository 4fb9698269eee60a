//! Errors as OpenAI error bodies, and JSON bodies parsed so that every mistake is a 400 naming the field.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::error::RouterError;
use crate::openai::{ErrorDetail, ErrorResponse};

/// An HTTP error with OpenAI's error body.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The offending request field, when known.
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), param: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub(super) fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "invalid_request_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::METHOD_NOT_ALLOWED => "invalid_request_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable_error",
            _ => "server_error",
        }
    }

    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind().to_string(),
                param: self.param.clone(),
                code: self.status.as_u16(),
            },
        }
    }
}

impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> Self {
        let status = match e {
            RouterError::InvalidRequest(_) | RouterError::Prompt(_) => StatusCode::BAD_REQUEST,
            RouterError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            RouterError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RouterError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// Deserializes a JSON body, naming the field at fault in the error.
pub(super) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => {
                ApiError::bad_request(format!("the request body is not valid JSON: {inner}"))
            }
            serde_json::error::Category::Data if path == "." || path.is_empty() => {
                ApiError::bad_request(format!("invalid request body: {inner}"))
            }
            serde_json::error::Category::Data => {
                ApiError::bad_request(format!("invalid value for `{path}`: {inner}")).with_param(path)
            }
        }
    })?;
    de.end().map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{ChatCompletionRequest, CompletionRequest};

    #[test]
    fn body_errors_name_the_field() {
        let e = parse_body::<CompletionRequest>(br#"{"prompt": "x", "max_tokens": "abc"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("max_tokens"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = parse_body::<CompletionRequest>(b"{\"prompt\": ").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse_body::<CompletionRequest>(b"{}").unwrap_err();
        assert!(e.message.contains("missing field `prompt`"), "{}", e.message);
        let e = parse_body::<CompletionRequest>(b"{\"prompt\": \"x\"} x").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse_body::<ChatCompletionRequest>(br#"{"messages": [{"role": "user", "content": 3}]}"#).unwrap_err();
        assert!(e.message.contains("messages[0].content"), "{}", e.message);
    }

    #[test]
    fn router_errors_map_to_statuses() {
        let cases = [
            (RouterError::InvalidRequest("x".into()), 400, "invalid_request_error"),
            (RouterError::QueueFull(3), 429, "rate_limit_error"),
            (RouterError::Unavailable("x".into()), 503, "service_unavailable_error"),
            (RouterError::Internal("x".into()), 500, "server_error"),
        ];
        for (e, code, kind) in cases {
            let body = ApiError::from(e).body();
            assert_eq!(body.error.code, code);
            assert_eq!(body.error.kind, kind);
        }
    }
}
