//! HTTP metrics and error tracking, one layer: requests by method, route
//! (the route template, so ids in paths do not explode the label set) and
//! status, timed until the response body ends or is dropped (a stream is
//! counted when it ends or its client leaves); error responses counted by
//! type, code and model, and kept among the last 50 for `/status`.

use std::cell::RefCell;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ErrorInfo;
use crate::metrics::{ErrorRecord, HttpTimer, unix_now};
use crate::middleware::GuardedBody;
use crate::middleware::trace::RequestId;
use crate::state::AppState;

tokio::task_local! {
    /// The model a request resolved to (set by the handler), for labels.
    static REQUEST_MODEL: RefCell<Option<String>>;
}

/// Name the model the current request uses (no-op outside a request).
pub fn note_model(id: &str) {
    let _ = REQUEST_MODEL.try_with(|m| *m.borrow_mut() = Some(id.to_string()));
    // And for its usage record.
    if let Some(r) = crate::auth::current() {
        r.note_model(id);
    }
}

/// The model the current request uses, if it named one yet.
pub fn current_model() -> Option<String> {
    REQUEST_MODEL.try_with(|m| m.borrow().clone()).ok().flatten()
}

pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let (resp, model) = REQUEST_MODEL
        .scope(RefCell::new(None), async move {
            let resp = next.run(req).await;
            (resp, current_model())
        })
        .await;
    let metrics = state.metrics().clone();
    let status = resp.status().as_u16();
    let info = resp.extensions().get::<ErrorInfo>();
    if let Some(m) = &model {
        // The model's circuit breaker hears every outcome but load answers
        // and cache hits (which never reached the model).
        let hit = resp.headers().get("x-cache").is_some_and(|v| v == "hit");
        match info {
            Some(i) if i.counts_against_the_model => state.breakers().record(m, Some(&i.message)),
            Some(_) => state.breakers().neutral(m),
            None if hit => {}
            None => state.breakers().record(m, None),
        }
    }
    if let Some(info) = info {
        metrics.error(ErrorRecord {
            time: unix_now(),
            request_id,
            status,
            kind: info.kind.to_string(),
            code: info.code.map(str::to_string),
            model,
            message: info.message.clone(),
        });
    }
    let timer = HttpTimer {
        metrics,
        method,
        route,
        status,
        started,
    };
    resp.map(|body| Body::new(GuardedBody::new(body, timer)))
}
