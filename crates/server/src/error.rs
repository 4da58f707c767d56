//! The one error type of the HTTP layer, rendered in one place as the OpenAI
//! error envelope: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hfms_engine::EngineError;
use serde::Serialize;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: invalid_request_error, server_error, …
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, for 503s.
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 invalid_request_error about one parameter.
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = param.into();
        e
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// A request that ran past the server's time limit (it was cancelled).
    pub fn timeout(limit: std::time::Duration) -> Self {
        let mut e = Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            format!(
                "The request timed out after {} seconds and was cancelled.",
                limit.as_secs()
            ),
        );
        e.code = Some("request_timeout");
        e
    }

    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_overloaded", message);
        e.retry_after = Some(retry_after);
        e
    }

    /// The envelope as JSON (also used inside SSE streams).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or(serde_json::Value::Null)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), error = %self.message, "request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), error = %self.message, "request rejected");
        }
        let mut resp = (self.status, axum::Json(self.to_json())).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidRequest { message, param } => ApiError::invalid(param.map(str::to_string), message),
            EngineError::ModelNotFound(m) => ApiError::model_not_found(&m),
            EngineError::Unservable { .. } | EngineError::UnsupportedArchitecture { .. } => {
                ApiError::invalid(Some("model".to_string()), e.to_string()).with_code("model_not_supported")
            }
            EngineError::WrongTask(msg) => ApiError::invalid(Some("model".to_string()), msg),
            EngineError::Template(msg) => ApiError::invalid(
                Some("messages".to_string()),
                format!("the chat template could not render these messages: {msg}"),
            ),
            EngineError::Tokenizer(msg) => ApiError::invalid(None, format!("tokenization failed: {msg}")),
            EngineError::Unavailable(msg) => ApiError::unavailable(msg, 1),
            EngineError::Overloaded(msg) => ApiError::unavailable(msg, 1),
            EngineError::Placement { .. } => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e.to_string());
                e.code = Some("model_placement_failed");
                e
            }
            EngineError::Cancelled => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "request cancelled")
            }
            EngineError::LoadFailed { .. }
            | EngineError::Io { .. }
            | EngineError::Format(_)
            | EngineError::Internal(_) => ApiError::internal(e.to_string()),
        }
    }
}
