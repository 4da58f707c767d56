//! `GET /v1/models` and `GET /v1/models/{id}`: OpenAI's four fields, plus
//! hfms' own (task, state, format, aliases…) beside them.

use axum::extract::{Path, State};
use hfms_engine::discover::ModelDescription;
use hfms_engine::manager::ModelStatus;
use serde_json::json;

use super::types::{ModelList, ModelObject};
use crate::error::{ApiError, ApiResult, GetErrors};
use crate::state::AppState;

fn created(d: &ModelDescription) -> u64 {
    std::fs::metadata(&d.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn object(d: &ModelDescription, status: Option<&ModelStatus>) -> ModelObject {
    let owned_by =
        d.id.split_once('/')
            .map(|(o, _)| o.to_string())
            .unwrap_or_else(|| "hfms".into());
    ModelObject {
        id: d.id.clone(),
        object: "model",
        created: created(d),
        owned_by,
        extra: json!({
            "aliases": d.aliases,
            "task": d.task,
            "format": d.format,
            "architecture": d.architecture,
            "skill": d.skill,
            "parameters": d.parameters,
            "size_bytes": d.size_bytes,
            "dtype": d.dtype,
            "context_length": d.context_length,
            "state": status.map(|s| s.state),
            "device": status.and_then(|s| s.device.clone()),
            "bytes": status.and_then(|s| s.bytes),
            "last_used": status.and_then(|s| s.last_used),
            "in_flight": status.map(|s| s.in_flight),
            "pinned": status.map(|s| s.pinned),
            "keep_alive": status.map(|s| s.keep_alive),
            "expires_at": status.and_then(|s| s.expires_at),
        }),
    }
}

/// Every servable model, with its state.
#[utoipa::path(get, path = "/v1/models", tag = "OpenAI",
    responses((status = 200, description = "The models", body = ModelList), GetErrors))]
pub async fn list(State(state): State<AppState>) -> axum::Json<ModelList> {
    let m = state.manager();
    let status = m.status();
    let data = m
        .catalog()
        .iter()
        .filter(|d| d.servable() && crate::auth::may_use(d))
        .map(|d| object(d, status.iter().find(|s| s.id == d.id)))
        .collect();
    axum::Json(ModelList { object: "list", data })
}

/// One model, by id or alias.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "OpenAI",
    params(("id" = String, Path, description = "A model id (may contain `/`) or alias")),
    responses((status = 200, description = "The model", body = ModelObject), GetErrors))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<axum::Json<ModelObject>> {
    let m = state.manager();
    let d = m
        .resolve(&id)
        .filter(|d| d.servable() && crate::auth::may_use(d))
        .ok_or_else(|| ApiError::model_not_found(&id))?;
    let status = m.status();
    Ok(axum::Json(object(&d, status.iter().find(|s| s.id == d.id))))
}
