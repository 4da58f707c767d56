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

pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if open_path(path) || req.method() == Method::OPTIONS {
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
    let request = RequestAccess::new(caller, access);
    let mut resp = request.clone().scope(next.run(req)).await;
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
    match slot {
        // The slot is held until the body (a stream) ends.
        Some(slot) => resp.map(|body| Body::new(GuardedBody::new(body, slot))),
        None => resp,
    }
}
