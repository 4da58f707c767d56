//! Authentication and per-key request limits, one layer: the caller is
//! identified (401), its scope checked against the path (`/v1/*` needs
//! `inference`, everything else but `/health`, `/ready` and
//! `/openapi.json` needs `admin`; 403), then its concurrent-request and
//! requests-per-minute limits are taken (429). The caller is available to
//! handlers (`auth::current`) for model allow-lists and token limits, and
//! the response carries OpenAI's `x-ratelimit-*` headers.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hfms_access::Scope;

use super::GuardedBody;
use crate::auth::{self, Caller, RequestAccess};
use crate::error::ApiError;
use crate::state::AppState;

fn open_path(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/openapi.json")
}

/// The requests that get a usage record.
fn metered(method: &Method, path: &str) -> bool {
    method == Method::POST && matches!(path, "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings")
}

pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let path = req.uri().path();
    // CORS preflights carry no credentials (the CORS layer answers them).
    let preflight = req.method() == Method::OPTIONS && req.headers().contains_key("access-control-request-method");
    if open_path(path) || preflight {
        return next.run(req).await;
    }
    let access = state.access().clone();
    let scope = if path.starts_with("/v1/") {
        Scope::Inference
    } else {
        Scope::Admin
    };
    let caller = match access.authenticate(req.headers()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = auth::check(scope, &caller) {
        return e.into_response();
    }
    let mut slot = None;
    let mut requests = None;
    if let Caller::Key(key) = &caller {
        slot = match access.enter(key) {
            Ok(slot) => slot,
            Err(max) => {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    format!("This API key already has {max} requests in flight, its limit."),
                )
                .with_code("rate_limit_exceeded");
                e.retry_after = Some(1);
                state.metrics().rate_limited("concurrency");
                return e.into_response();
            }
        };
        requests = access.take_request(key).await;
        if let Some(d) = &requests {
            if d.backend_error {
                state.metrics().rate_limit_store_error();
            }
            if !d.allowed {
                state.metrics().rate_limited("requests");
                let mut resp = auth::limited("requests", d).into_response();
                auth::set_headers(resp.headers_mut(), "requests", d);
                return resp;
            }
        }
    }
    let metered = metered(req.method(), path).then(|| {
        (
            path.to_string(),
            req.extensions()
                .get::<crate::middleware::trace::RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
        )
    });
    let request = RequestAccess::new(caller, access.clone());
    let mut resp = request.clone().scope(next.run(req)).await;
    // The model the handler resolved (none: refused before one was named).
    let model = crate::middleware::metrics::current_model();
    if let Some(d) = &requests {
        auth::set_headers(resp.headers_mut(), "requests", d);
    }
    if let Some(d) = request.token_decision() {
        if !d.allowed {
            state.metrics().rate_limited("tokens");
        }
        if d.backend_error {
            state.metrics().rate_limit_store_error();
        }
        auth::set_headers(resp.headers_mut(), "tokens", &d);
    }
    let usage = match (metered, model) {
        (Some((endpoint, request_id)), Some(model)) => Some(UsageOnEnd {
            request,
            started,
            endpoint,
            request_id,
            model,
            status: resp.status().as_u16(),
        }),
        _ => None,
    };
    // The slot is held, and the record written, when the body (a stream)
    // ends.
    resp.map(|body| Body::new(GuardedBody::new(body, (slot, usage))))
}

/// Writes a request's usage record when its response body is dropped.
struct UsageOnEnd {
    request: RequestAccess,
    started: std::time::Instant,
    endpoint: String,
    request_id: String,
    model: String,
    status: u16,
}

impl Drop for UsageOnEnd {
    fn drop(&mut self) {
        let u = self.request.usage();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.request.access().record_usage(hfms_access::usage::UsageRecord {
            time_ms: now_ms,
            request_id: std::mem::take(&mut self.request_id),
            key_id: self.request.caller.key().map(|k| k.id.clone()),
            model: std::mem::take(&mut self.model),
            endpoint: std::mem::take(&mut self.endpoint),
            status: self.status,
            prompt_tokens: u.prompt_tokens,
            cached_tokens: u.cached_tokens,
            completion_tokens: u.completion_tokens,
            latency_ms: self.started.elapsed().as_secs_f64() * 1e3,
            ttft_ms: u.ttft_ms,
            finish_reason: u.finish_reason.map(str::to_string),
            cache_hit: u.cache_hit,
            cost: 0.0,
        });
    }
}
