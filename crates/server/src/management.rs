//! Model management: `POST /models/load` and `POST /models/unload`.

use axum::extract::State;
use hfms_engine::manager::KeepAlive;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct LoadRequest {
    pub model: String,
    /// How long to keep it after its last request (Ollama's forms).
    #[serde(default)]
    pub keep_alive: Option<Value>,
    /// Load it on this device ("cpu", "cuda:1"); placement decides if absent.
    #[serde(default)]
    pub device: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct UnloadRequest {
    pub model: String,
}

fn model_status(state: &AppState, id: &str) -> Value {
    state
        .manager()
        .status()
        .into_iter()
        .find(|s| s.id == id)
        .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
        .unwrap_or(Value::Null)
}

/// Load a model (waiting for it) and report its state.
pub async fn load(State(state): State<AppState>, ApiJson(req): ApiJson<LoadRequest>) -> ApiResult<axum::Json<Value>> {
    let manager = state.manager().clone();
    let desc = manager
        .resolve(&req.model)
        .ok_or_else(|| ApiError::model_not_found(&req.model))?;
    let id = desc.id.clone();
    let keep_alive = req
        .keep_alive
        .as_ref()
        .filter(|v| !v.is_null())
        .map(|v| KeepAlive::parse(v).map_err(|e| ApiError::invalid(Some("keep_alive".into()), e)))
        .transpose()?;
    let device = req
        .device
        .as_deref()
        .map(|d| {
            d.parse()
                .map_err(|e| ApiError::invalid(Some("device".into()), format!("device {d:?}: {e}")))
        })
        .transpose()?;
    let span = tracing::Span::current();
    let name = id.clone();
    let lease = tokio::task::spawn_blocking(move || span.in_scope(|| manager.acquire(&name, keep_alive, device)))
        .await
        .map_err(|e| ApiError::internal(format!("model load task failed: {e}")))??;
    // The lease ends here: with keep_alive 0 the model goes right away, as
    // Ollama's load-then-unload does.
    drop(lease);
    Ok(axum::Json(json!({"model": id, "status": model_status(&state, &id)})))
}

/// Unload a model now if idle, or as soon as its requests finish.
pub async fn unload(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<UnloadRequest>,
) -> ApiResult<axum::Json<Value>> {
    let manager = state.manager().clone();
    let id = manager
        .resolve(&req.model)
        .ok_or_else(|| ApiError::model_not_found(&req.model))?
        .id
        .clone();
    let name = id.clone();
    let after = tokio::task::spawn_blocking(move || manager.unload(&name))
        .await
        .map_err(|e| ApiError::internal(format!("unload task failed: {e}")))??;
    Ok(axum::Json(
        json!({"model": id, "state": after, "status": model_status(&state, &id)}),
    ))
}
