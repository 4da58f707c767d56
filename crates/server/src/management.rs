//! Model management: `POST /models/load` and `POST /models/unload`.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult, PostErrors};
use crate::extract::ApiJson;
use crate::openai::off_async;
use crate::openai::params::parse_keep_alive;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoadRequest {
    pub model: String,
    /// How long to keep it after its last request (Ollama's forms).
    #[serde(default)]
    #[schema(value_type = Option<crate::openai::types::KeepAliveValue>)]
    pub keep_alive: Option<Value>,
    /// Load it on this device ("cpu", "cuda:1"); placement decides if absent.
    #[serde(default)]
    pub device: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(post, path = "/models/load", tag = "Management",
    request_body = LoadRequest,
    responses((status = 200, description = "The model and its state", body = Object), PostErrors))]
pub async fn load(
    State(state): State<AppState>,
    ApiJson(req, _): ApiJson<LoadRequest>,
) -> ApiResult<axum::Json<Value>> {
    let manager = state.manager().clone();
    let desc = manager
        .resolve(&req.model)
        .ok_or_else(|| ApiError::model_not_found(&req.model))?;
    let id = desc.id.clone();
    crate::middleware::metrics::note_model(&id);
    let keep_alive = parse_keep_alive(req.keep_alive.as_ref())?;
    let device: Option<hfms_hardware::DeviceId> = req
        .device
        .as_deref()
        .map(|d| {
            d.parse()
                .map_err(|e| ApiError::invalid(Some("device".into()), format!("device {d:?}: {e}")))
        })
        .transpose()?;
    // A device this machine does not have is the client's mistake (a 400);
    // a device without room for the model is the server's (503).
    if let Some(d) = device {
        let devices = manager.devices();
        if !devices.iter().any(|x| x.device == d) {
            let known: Vec<String> = devices.iter().map(|x| x.device.to_string()).collect();
            return Err(ApiError::invalid(
                Some("device".into()),
                format!(
                    "device {d} is not present on this server (devices: {}).",
                    known.join(", ")
                ),
            ));
        }
    }
    let name = id.clone();
    // An operator's explicit load goes through an open circuit: it is how a
    // fixed model comes back (success closes the circuit).
    let lease = state
        .bounded(off_async(move || Ok(manager.acquire(&name, keep_alive, device))))
        .await?
        .map_err(|e| state.breakers().on_load_error(&id, e))?;
    state.breakers().reset(&id);
    // The lease ends here: with keep_alive 0 the model goes right away, as
    // Ollama's load-then-unload does.
    drop(lease);
    Ok(axum::Json(json!({"model": id, "status": model_status(&state, &id)})))
}

/// Unload a model now if idle, or as soon as its requests finish.
#[utoipa::path(post, path = "/models/unload", tag = "Management",
    request_body = UnloadRequest,
    responses((status = 200, description = "The model and the state it is in now", body = Object), PostErrors))]
pub async fn unload(
    State(state): State<AppState>,
    ApiJson(req, _): ApiJson<UnloadRequest>,
) -> ApiResult<axum::Json<Value>> {
    let manager = state.manager().clone();
    let id = manager
        .resolve(&req.model)
        .ok_or_else(|| ApiError::model_not_found(&req.model))?
        .id
        .clone();
    let name = id.clone();
    let after = off_async(move || Ok(manager.unload(&name)?)).await?;
    Ok(axum::Json(
        json!({"model": id, "state": after, "status": model_status(&state, &id)}),
    ))
}
