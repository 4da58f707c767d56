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

/// OpenAI's error envelope: every error response of hfms.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorEnvelope)]
pub struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorBody)]
struct Body<'a> {
    message: &'a str,
    /// invalid_request_error, server_error, server_overloaded, timeout_error
    #[serde(rename = "type")]
    kind: &'a str,
    /// The request field at fault, when one is.
    param: Option<&'a str>,
    /// model_not_found, context_length_exceeded, unsupported_media_type…
    code: Option<&'a str>,
}

type Responses = std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>>;

/// Error responses as /openapi.json documents them.
fn error_responses(which: &[&str]) -> Responses {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    [
        (
            "400",
            "Invalid request: bad JSON, a wrong type, a value out of range, a limit exceeded",
        ),
        (
            "401",
            "No API key, or an unknown, revoked or expired one (when keys are in use)",
        ),
        (
            "403",
            "The key lacks the scope or may not use the model, a dashboard request lacks its CSRF token, or the Host header is not allowed",
        ),
        ("404", "Unknown model or path"),
        ("405", "Method not allowed on this path"),
        ("413", "The body is larger than --max-body-mb"),
        ("415", "The body is not JSON by its Content-Type"),
        (
            "429",
            "The key's requests, tokens or concurrent requests per its limits, or its budget, are used up; see Retry-After",
        ),
        ("500", "An internal error (never caused by request content)"),
        (
            "503",
            "Overloaded, shutting down, the model's circuit is open, or no device can take it; see Retry-After",
        ),
        ("504", "The request ran past --request-timeout and was cancelled"),
    ]
    .into_iter()
    .filter(|(code, _)| which.contains(code))
    .map(|(code, what)| {
        let response = ResponseBuilder::new()
            .description(what)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                    .build(),
            )
            .build();
        (code.to_string(), response.into())
    })
    .collect()
}

/// What a POST endpoint may answer besides success.
pub struct PostErrors;

impl utoipa::IntoResponses for PostErrors {
    fn responses() -> Responses {
        error_responses(&[
            "400", "401", "403", "404", "405", "413", "415", "429", "500", "503", "504",
        ])
    }
}

/// What an open GET endpoint (no key needed: probes, this API's
/// description) may answer besides success.
pub struct OpenGetErrors;

impl utoipa::IntoResponses for OpenGetErrors {
    fn responses() -> Responses {
        error_responses(&["403", "404", "405", "500"])
    }
}

/// What a GET endpoint may answer besides success.
pub struct GetErrors;

impl utoipa::IntoResponses for GetErrors {
    fn responses() -> Responses {
        error_responses(&["401", "403", "404", "405", "429", "500"])
    }
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

    /// The server is shutting down and cancelled the request.
    pub fn shutting_down() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "The server is shutting down; the request was cancelled. Retry on another replica or later.",
        );
        e.code = Some("server_shutting_down");
        e.retry_after = Some(1);
        e
    }

    /// A model whose circuit breaker is open: its recent failures were the
    /// server's; nothing is queued until the back-off ends.
    pub fn model_unavailable(model: &str, retry_after: u64, last_failure: &str) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!(
                "The model `{model}` is unavailable after repeated failures (last: {last_failure}); retry in {retry_after} s."
            ),
        );
        e.code = Some("model_unavailable");
        e.retry_after = Some(retry_after);
        e
    }

    /// A POST body that is not JSON by its Content-Type.
    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        let mut e = Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            match got {
                Some(ct) => format!("Content-Type must be application/json, got {ct:?}."),
                None => "Content-Type must be application/json; the request has none.".to_string(),
            },
        );
        e.code = Some("unsupported_media_type");
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

/// What the metrics layer learns of an error response (a response
/// extension): counted by type and code, kept among the last errors.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub message: String,
    pub status: u16,
    /// A server failure of the request's model (its circuit breaker).
    pub counts_against_the_model: bool,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), error = %self.message, "request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), error = %self.message, "request rejected");
        }
        let mut resp = (self.status, axum::Json(self.to_json())).into_response();
        resp.extensions_mut().insert(ErrorInfo {
            kind: self.kind,
            code: self.code,
            message: self.message.clone(),
            status: self.status.as_u16(),
            counts_against_the_model: crate::openai::counts_against_the_model(&self),
        });
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
            EngineError::LoadFailed { .. } => ApiError::internal(e.to_string()).with_code("model_load_failed"),
            EngineError::Io { .. } | EngineError::Format(_) | EngineError::Internal(_) => {
                ApiError::internal(e.to_string())
            }
        }
    }
}
