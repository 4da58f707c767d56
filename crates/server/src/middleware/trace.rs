//! The request's identity and span, one layer.
//!
//! - `x-request-id`: honoured when the client sends a sane one, generated
//!   otherwise, echoed on the response.
//! - W3C trace context: a valid `traceparent` (and its `tracestate`) makes
//!   the request's span a child of the caller's; otherwise a new trace
//!   starts. The response's `traceresponse` (Trace Context Level 2) names
//!   the trace and the request's span.
//! - The `request` span wraps the request until its response body ends (a
//!   stream until its last event or its client leaving). It carries the
//!   request id and the trace id, so every log line of the request does;
//!   with `--otlp-endpoint` it is exported with its children (queue,
//!   prefill, decode, embed, model_load).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceFlags, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::GuardedBody;

pub const REQUEST_ID: &str = "x-request-id";
pub const TRACE_RESPONSE: &str = "traceresponse";

/// The id of the request being handled (an extension).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Where the request's span sits in its trace.
struct TracePosition {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
}

/// Join the caller's trace, if it sent a valid `traceparent`, and say
/// where the span sits. With the OpenTelemetry layer installed the
/// exporter's ids are the ones; without it (no `--otlp-endpoint`) the ids
/// are made here, so logs still carry the caller's trace id.
fn join_trace(span: &tracing::Span, headers: &HeaderMap) -> TracePosition {
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let remote = parent.span().span_context().clone();
    if remote.is_valid() {
        // Fails only when no OpenTelemetry layer is installed.
        let _ = span.set_parent(parent);
    }
    let own = span.context().span().span_context().clone();
    if own.is_valid() {
        return TracePosition {
            trace_id: own.trace_id(),
            span_id: own.span_id(),
            sampled: own.is_sampled(),
        };
    }
    let ids = RandomIdGenerator::default();
    TracePosition {
        trace_id: if remote.is_valid() {
            remote.trace_id()
        } else {
            ids.new_trace_id()
        },
        span_id: ids.new_span_id(),
        sampled: !remote.is_valid() || remote.is_sampled(),
    }
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_string)
        .unwrap_or_else(|| format!("req-{}", uuid::Uuid::new_v4().simple()));
    req.extensions_mut().insert(RequestId(id.clone()));
    // The route template, not the path, names the span: paths with ids
    // would make every span name different.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", req.method()),
        otel.kind = "server",
        otel.status_code = Empty,
        request_id = %id,
        trace_id = Empty,
        method = %req.method(),
        path = %req.uri().path(),
        status = Empty,
    );
    let position = join_trace(&span, req.headers());
    span.record("trace_id", tracing::field::display(position.trace_id));
    let started = Instant::now();
    let mut resp = async move {
        let resp = next.run(req).await;
        tracing::info!(
            status = resp.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "request done"
        );
        resp
    }
    .instrument(span.clone())
    .await;
    span.record("status", resp.status().as_u16());
    if resp.status().is_server_error() {
        span.record("otel.status_code", "error");
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let flags = if position.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let traceresponse = format!("00-{}-{}-{:02x}", position.trace_id, position.span_id, flags.to_u8());
    if let Ok(v) = HeaderValue::from_str(&traceresponse) {
        resp.headers_mut().insert(TRACE_RESPONSE, v);
    }
    resp.map(|body| Body::new(GuardedBody::new(body, SpanEnd(span))))
}

/// Ends the request's span when the response body is done. An exported
/// span ends at its last exit, which without this would be when the
/// handler returned, before a streamed body is sent.
struct SpanEnd(tracing::Span);

impl Drop for SpanEnd {
    fn drop(&mut self) {
        let _entered = self.0.enter();
    }
}
