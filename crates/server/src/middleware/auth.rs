//! Authentication and per-key request limits, one layer: the caller is
//! identified (401), its scope checked against the path (`/v1/*` needs
//! `inference`, everything else but `/health`, `/ready` and
//! `/openapi.json` needs `admin`; 403), then — for `/v1/*` — its budget,
//! concurrent-request and requests-per-minute limits are checked (429). A
//! dashboard session cookie identifies an admin outside `/v1/*`
//! (`Access::identify`). The caller is available to
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

/// Paths anyone may call: probes, the API description, and the dashboard's
/// page, files and sign-in (which checks keys itself).
fn open_path(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/ready" | "/openapi.json" | "/admin" | "/admin/" | "/admin/session"
    ) || path.starts_with("/admin/assets/")
}

/// The requests that get a usage record.
fn metered(method: &Method, path: &str) -> bool {
    method == Method::POST
        && matches!(
            path,
            "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" | "/v1/classify" | "/v1/rerank" | "/rerank"
        )
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
    let scope = if auth::inference_path(path) {
        Scope::Inference
    } else {
        Scope::Admin
    };
    let caller = match access.identify(req.headers(), req.method(), path).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = auth::check(scope, &caller) {
        return e.into_response();
    }
    let mut slot = None;
    let mut requests = None;
    // Limits and budgets are for the OpenAI API: the admin endpoints (the
    // dashboard polls them) are not metered.
    if let Caller::Key(key) = &caller
        && scope == Scope::Inference
    {
        if let Err(e) = access.check_budget(key).await {
            state.metrics().rate_limited("budget");
            return e.into_response();
        }
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
    let request = RequestAccess::new(caller, access.clone());
    if metered(req.method(), path) {
        request.expect_record(auth::PendingRecord {
            started,
            endpoint: path.to_string(),
            request_id: req
                .extensions()
                .get::<crate::middleware::trace::RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            status: crate::openai::CLIENT_CLOSED,
            cut_short: false,
            metrics: state.metrics().clone(),
        });
    }
    let mut resp = request.clone().scope(next.run(req)).await;
    request.set_status(resp.status().as_u16());
    if let Some(d) = &requests {
        auth::set_headers(resp.headers_mut(), "requests", d);
    }
    if request.budget_refused() {
        state.metrics().rate_limited("budget");
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
    // The slot is held, and the request's usage kept for its record, until
    // the body (a stream) ends.
    resp.map(|body| Body::new(GuardedBody::new(body, (slot, request))))
}
