//! A JSON body extractor whose every failure is an OpenAI-style error:
//! oversized body → 413, unreadable or mistyped JSON → 400 naming the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "The request body is larger than this server accepts.",
                )
                .with_code("request_too_large")
            } else {
                ApiError::invalid(None, format!("could not read the request body: {rej}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parse with the failing field's path in the error (`param`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::invalid(
            None,
            "The request body is empty; send a JSON object (Content-Type: application/json).",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let param = (path != "." && !path.is_empty()).then(|| path.clone());
        let message = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("The request body is not valid JSON: {inner}")
            }
            _ => match &param {
                Some(p) => format!("Invalid value for '{p}': {inner}"),
                None => format!("Invalid request: {inner}"),
            },
        };
        ApiError::invalid(param, message)
    })
}
