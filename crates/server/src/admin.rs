//! The key administration API (scope `admin`): `POST/GET /admin/keys`,
//! `GET/PATCH/DELETE /admin/keys/{id}`, `POST /admin/keys/{id}/rotate`.
//! A secret appears once, in the answer that made it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hfms_access::{ApiKey, KeySettings};
use serde_json::{Value, json};

use crate::auth::access_error;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::state::AppState;

fn with_secret(key: &ApiKey, secret: String) -> Value {
    let mut v = serde_json::to_value(key).unwrap_or(Value::Null);
    v["secret"] = Value::String(secret);
    v
}

fn no_such_key(id: &str) -> ApiError {
    ApiError::not_found(format!("No API key with id `{id}`.")).with_code("key_not_found")
}

/// Ids are 12 base62 characters; anything else cannot name a key.
fn check_id(id: &str) -> ApiResult<()> {
    if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(no_such_key(&id.chars().take(64).collect::<String>()))
    }
}

pub async fn create(State(state): State<AppState>, ApiJson(settings, _): ApiJson<KeySettings>) -> ApiResult<Response> {
    let (key, secret) = state.access().create(settings).await?;
    tracing::info!(key_id = %key.id, name = %key.name, "API key created");
    Ok((StatusCode::CREATED, Json(with_secret(&key, secret))).into_response())
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let keys = state.access().store().list().await.map_err(access_error)?;
    Ok(Json(json!({"object": "list", "data": keys})))
}

pub async fn show(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ApiKey>> {
    check_id(&id)?;
    let key = state.access().store().get(&id).await.map_err(access_error)?;
    key.map(Json).ok_or_else(|| no_such_key(&id))
}

pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(settings, _): ApiJson<KeySettings>,
) -> ApiResult<Json<ApiKey>> {
    check_id(&id)?;
    let key = state
        .access()
        .store()
        .update(&id, settings)
        .await
        .map_err(access_error)?;
    state.access().key_changed();
    let key = key.ok_or_else(|| no_such_key(&id))?;
    tracing::info!(key_id = %key.id, "API key changed");
    Ok(Json(key))
}

pub async fn revoke(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    check_id(&id)?;
    if !state.access().store().revoke(&id).await.map_err(access_error)? {
        return Err(no_such_key(&id));
    }
    state.access().key_changed();
    tracing::info!(key_id = %id, "API key revoked");
    Ok(Json(json!({"id": id, "revoked": true})))
}

pub async fn rotate(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    check_id(&id)?;
    let rotated = state.access().store().rotate(&id).await.map_err(access_error)?;
    state.access().key_changed();
    let (key, secret) = rotated.ok_or_else(|| no_such_key(&id))?;
    tracing::info!(key_id = %key.id, "API key rotated");
    Ok(Json(with_secret(&key, secret)))
}
