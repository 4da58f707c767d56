//! Answers from the response cache: the stored JSON body with a fresh id and
//! `created`, as JSON or replayed as the server-sent events a live stream
//! would have sent (one chunk with each choice's whole text), with
//! `x-cache: hit`. The usage is the original request's.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{now_unix, sse_done, sse_json};
use crate::error::{ApiError, ApiResult};

/// The header that says whether an answer came from the cache.
pub const X_CACHE: &str = "x-cache";

pub fn with_x_cache(mut resp: Response, value: &'static str) -> Response {
    resp.headers_mut().insert(X_CACHE, HeaderValue::from_static(value));
    resp
}

fn stored(bytes: &Bytes) -> ApiResult<Value> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::internal(format!("a cached answer is not JSON: {e}")))
}

/// A stored answer made fresh: a new `id` (with the API's prefix) and
/// `created`, where the answer has them.
fn refreshed(bytes: &Bytes, id_prefix: &str) -> ApiResult<Value> {
    let mut v = stored(bytes)?;
    if let Some(o) = v.as_object_mut() {
        if o.contains_key("id") {
            o.insert(
                "id".into(),
                format!("{id_prefix}-{}", uuid::Uuid::new_v4().simple()).into(),
            );
        }
        if o.contains_key("created") {
            o.insert("created".into(), now_unix().into());
        }
    }
    Ok(v)
}

/// A JSON answer from the cache.
pub fn json(bytes: &Bytes, id_prefix: &str) -> ApiResult<Response> {
    let v = refreshed(bytes, id_prefix)?;
    let resp = ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response();
    Ok(with_x_cache(resp, "hit"))
}

fn sse(events: Vec<Event>) -> Response {
    let stream = futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
    with_x_cache(Sse::new(stream).into_response(), "hit")
}

/// One replayed chunk of the stored answer `v`: its id, created, model and
/// fingerprint, these `choices`, and `usage` when the client asked for it.
fn chunk(v: &Value, object: &str, choices: Value, usage: Option<Value>) -> Event {
    let mut c = json!({
        "id": v["id"], "object": object, "created": v["created"],
        "model": v["model"], "system_fingerprint": v["system_fingerprint"], "choices": choices,
    });
    if let Some(u) = usage {
        c["usage"] = u;
    }
    sse_json(&c)
}

/// A cached chat completion replayed as `chat.completion.chunk` events.
pub fn chat_stream(bytes: &Bytes, include_usage: bool) -> ApiResult<Response> {
    let v = refreshed(bytes, "chatcmpl")?;
    let usage_null = if include_usage { Some(Value::Null) } else { None };
    let chunk = |choices: Value, usage: Option<Value>| chunk(&v, "chat.completion.chunk", choices, usage);
    let mut events = Vec::new();
    let choices = v["choices"].as_array().cloned().unwrap_or_default();
    for c in &choices {
        events.push(chunk(
            json!([{"index": c["index"], "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            usage_null.clone(),
        ));
    }
    for c in &choices {
        let mut delta = json!({"content": c["message"]["content"]});
        if let Some(calls) = c["message"]["tool_calls"].as_array() {
            // Streamed calls carry their position.
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    call["index"] = json!(i);
                    call
                })
                .collect();
            delta["tool_calls"] = Value::Array(calls);
        }
        events.push(chunk(
            json!([{"index": c["index"], "delta": delta, "logprobs": c["logprobs"], "finish_reason": null}]),
            usage_null.clone(),
        ));
        events.push(chunk(
            json!([{"index": c["index"], "delta": {}, "logprobs": null, "finish_reason": c["finish_reason"]}]),
            usage_null.clone(),
        ));
    }
    if include_usage {
        events.push(chunk(json!([]), Some(v["usage"].clone())));
    }
    events.push(sse_done());
    Ok(sse(events))
}

/// A cached text completion replayed as `text_completion` events.
pub fn completions_stream(bytes: &Bytes, include_usage: bool) -> ApiResult<Response> {
    let v = refreshed(bytes, "cmpl")?;
    let usage_null = if include_usage { Some(Value::Null) } else { None };
    let chunk = |choices: Value, usage: Option<Value>| chunk(&v, "text_completion", choices, usage);
    let mut events = Vec::new();
    for c in v["choices"].as_array().cloned().unwrap_or_default() {
        events.push(chunk(
            json!([{"index": c["index"], "text": c["text"], "logprobs": c["logprobs"], "finish_reason": null}]),
            usage_null.clone(),
        ));
        events.push(chunk(
            json!([{"index": c["index"], "text": "", "logprobs": null, "finish_reason": c["finish_reason"]}]),
            usage_null.clone(),
        ));
    }
    if include_usage {
        events.push(chunk(json!([]), Some(v["usage"].clone())));
    }
    events.push(sse_done());
    Ok(sse(events))
}
