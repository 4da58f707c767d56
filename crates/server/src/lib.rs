//! hfms-server: the HTTP face of hfms (axum + tower). Handlers turn OpenAI
//! requests into engine requests; `error.rs` renders every failure as the
//! OpenAI error envelope.

pub mod error;
pub mod extract;
pub mod health;
pub mod management;
pub mod middleware;
pub mod openai;
pub mod state;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use error::{ApiError, ApiResult};
pub use state::{AppState, ServerConfig};

/// Every route, with the middleware stack.
pub fn router(state: AppState) -> Router {
    let limit = state.config().max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(openai::chat::create))
        .route("/v1/completions", post(openai::completions::create))
        .route("/v1/embeddings", post(openai::embeddings::create))
        .route("/v1/models", get(openai::models::list))
        .route("/v1/models/{*id}", get(openai::models::get))
        .route("/models/load", post(management::load))
        .route("/models/unload", post(management::unload))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/status", get(health::status))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(middleware::request_id::layer))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("Unknown path {}", uri.path()))
}
