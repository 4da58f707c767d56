//! hfms-server: the HTTP face of hfms (axum + tower). Handlers turn OpenAI
//! requests into engine requests; `error.rs` renders every failure as the
//! OpenAI error envelope.

pub mod admin;
pub mod auth;
pub mod breaker;
pub mod cache;
pub mod dashboard;
pub mod downloads;
pub mod error;
pub mod extract;
pub mod health;
pub mod management;
pub mod metrics;
pub mod middleware;
pub mod openai;
pub mod openapi;
pub mod state;

#[cfg(test)]
mod parse_fuzz;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use error::{ApiError, ApiResult};
pub use state::{AppState, ServerConfig};

/// Every route, with the middleware stack (outermost first): request id,
/// trace context and request log → HTTP metrics and error tracking → panic
/// catcher → authentication and per-key request limits → `Host` allow-list
/// → CORS → body limit.
pub fn router(state: AppState) -> Router {
    let limit = state.config().max_body_bytes;
    let cors = middleware::cors::layer(&state.config().cors_allow_origins);
    let routes = Router::new()
        .route("/v1/chat/completions", post(openai::chat::create))
        .route("/v1/completions", post(openai::completions::create))
        .route("/v1/embeddings", post(openai::embeddings::create))
        .route("/v1/classify", post(openai::classify::classify))
        .route("/v1/rerank", post(openai::classify::rerank))
        .route("/rerank", post(openai::classify::tei_rerank))
        .route("/v1/models", get(openai::models::list))
        .route("/v1/models/{*id}", get(openai::models::get))
        .route("/admin/keys", post(admin::create).get(admin::list))
        .route(
            "/admin/keys/{id}",
            get(admin::show).patch(admin::update).delete(admin::revoke),
        )
        .route("/admin/keys/{id}/rotate", post(admin::rotate))
        .route("/admin/usage", get(admin::usage))
        .route("/admin", get(dashboard::index))
        .route("/admin/", get(dashboard::index))
        .route("/admin/assets/{*path}", get(dashboard::asset))
        .route(
            "/admin/session",
            get(dashboard::current)
                .post(dashboard::sign_in)
                .delete(dashboard::sign_out),
        )
        .route("/models/load", post(management::load))
        .route("/models/unload", post(management::unload))
        .route("/models/pull", post(downloads::pull))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/status", get(health::status))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::scrape))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit));
    let routes = match cors {
        Some(cors) => routes.layer(cors),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::host::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::auth::layer,
        ))
        .layer(middleware::catch_panic::layer())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::metrics::layer,
        ))
        .layer(axum::middleware::from_fn(middleware::trace::layer))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("Unknown path {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{method} is not allowed on {}.", uri.path()),
    )
    .with_code("method_not_allowed")
}
