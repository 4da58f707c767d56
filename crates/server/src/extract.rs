//! A JSON body extractor whose every failure is an OpenAI-style error:
//! a body that is not JSON by its Content-Type → 415 (a browser can send a
//! cross-site `text/plain` POST without asking, never an `application/json`
//! one, so this also keeps web pages from driving a local server), an
//! oversized body → 413, unreadable or mistyped JSON → 400 naming the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The parsed body, and the body as sent (the response cache keys on it).
pub struct ApiJson<T>(pub T, pub Bytes);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send + 'static,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("(not text)").to_string());
        if !content_type.as_deref().is_some_and(is_json) {
            return Err(ApiError::unsupported_media_type(content_type.as_deref()));
        }
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
        // Parsing megabytes is CPU work: off the async threads.
        if bytes.len() > OFF_ASYNC_BYTES {
            let span = tracing::Span::current();
            return tokio::task::spawn_blocking(move || {
                span.in_scope(|| parse_json(&bytes).map(|v| ApiJson(v, bytes)))
            })
            .await
            .map_err(|e| ApiError::internal(format!("a blocking task failed: {e}")))?;
        }
        parse_json(&bytes).map(|v| ApiJson(v, bytes))
    }
}

/// Bodies larger than this are parsed on the blocking pool.
const OFF_ASYNC_BYTES: usize = 64 << 10;

/// `application/json`, `application/json; charset=utf-8`, or any
/// `application/*+json`.
pub(crate) fn is_json(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// `query` from serde's "missing field `query` at line 1 column 9".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
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
        // serde names a missing field only in its message: name it as the
        // `param` too, under the object it is missing from.
        let param = match (missing_field(&inner.to_string()), param) {
            (Some(field), Some(p)) => Some(format!("{p}.{field}")),
            (Some(field), None) => Some(field.to_string()),
            (None, param) => param,
        };
        ApiError::invalid(param, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        text: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        query: String,
        #[serde(default)]
        doc: Option<Inner>,
    }

    #[test]
    fn a_missing_field_is_the_param() {
        let e = parse_json::<Body>(br#"{"doc": null}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("query"), "{}", e.message);
        assert!(
            e.message.starts_with("Invalid request: missing field `query`"),
            "{}",
            e.message
        );
        let e = parse_json::<Body>(br#"{"query": "q", "doc": {}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("doc.text"), "{}", e.message);
        let e = parse_json::<Body>(br#"{"query": 1}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("query"), "{}", e.message);
    }
}
