//! The administration API (scope `admin`): keys — `POST/GET /admin/keys`,
//! `GET/PATCH/DELETE /admin/keys/{id}`, `POST /admin/keys/{id}/rotate` (a
//! secret appears once, in the answer that made it) — and usage,
//! `GET /admin/usage`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hfms_access::usage::{GroupBy, UsageQuery, summarize, to_csv};
use hfms_access::{ApiKey, KeySettings};
use serde_json::{Value, json};

use crate::auth::access_error;
use crate::error::{ApiError, ApiResult, GetErrors, PostErrors};
use crate::extract::ApiJson;
use crate::state::AppState;

/// A key with its secret, which no cache may keep.
fn with_secret(status: StatusCode, key: &ApiKey, secret: String) -> Response {
    let mut v = serde_json::to_value(key).unwrap_or(Value::Null);
    v["secret"] = Value::String(secret);
    (status, [(axum::http::header::CACHE_CONTROL, "no-store")], Json(v)).into_response()
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

#[utoipa::path(post, path = "/admin/keys", tag = "Admin",
    request_body = KeySettings,
    responses((status = 201, description = "The key and its `secret`, shown only here", body = ApiKey), PostErrors))]
pub async fn create(State(state): State<AppState>, ApiJson(settings, _): ApiJson<KeySettings>) -> ApiResult<Response> {
    let (key, secret) = state.access().create(settings).await?;
    tracing::info!(key_id = %key.id, name = %key.name, "API key created");
    Ok(with_secret(StatusCode::CREATED, &key, secret))
}

#[utoipa::path(get, path = "/admin/keys", tag = "Admin",
    responses((status = 200, description = "Every key, newest first (`data`)", body = Object), GetErrors))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let keys = state.access().store().list().await.map_err(access_error)?;
    Ok(Json(json!({"object": "list", "data": keys})))
}

#[utoipa::path(get, path = "/admin/keys/{id}", tag = "Admin",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The key", body = ApiKey), GetErrors))]
pub async fn show(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ApiKey>> {
    check_id(&id)?;
    let key = state.access().store().get(&id).await.map_err(access_error)?;
    key.map(Json).ok_or_else(|| no_such_key(&id))
}

#[utoipa::path(patch, path = "/admin/keys/{id}", tag = "Admin",
    params(("id" = String, Path, description = "The key's id")),
    request_body(content = KeySettings, description = "The fields to change; `null` clears a limit"),
    responses((status = 200, description = "The key as changed", body = ApiKey), PostErrors))]
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

#[utoipa::path(delete, path = "/admin/keys/{id}", tag = "Admin",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "`{id, revoked: true}`", body = Object), GetErrors))]
pub async fn revoke(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    check_id(&id)?;
    if !state.access().store().revoke(&id).await.map_err(access_error)? {
        return Err(no_such_key(&id));
    }
    state.access().key_changed();
    tracing::info!(key_id = %id, "API key revoked");
    Ok(Json(json!({"id": id, "revoked": true})))
}

#[utoipa::path(post, path = "/admin/keys/{id}/rotate", tag = "Admin",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "The key and its new `secret`, shown only here", body = ApiKey), PostErrors))]
pub async fn rotate(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    check_id(&id)?;
    let rotated = state.access().store().rotate(&id).await.map_err(access_error)?;
    state.access().key_changed();
    let (key, secret) = rotated.ok_or_else(|| no_such_key(&id))?;
    tracing::info!(key_id = %key.id, "API key rotated");
    Ok(with_secret(StatusCode::OK, &key, secret))
}

/// `GET /admin/usage?key=&model=&from=&to=&group_by=hour|day|model|key&format=json|csv`:
/// totals of the usage records (`from`/`to`: Unix seconds or RFC 3339).
#[utoipa::path(get, path = "/admin/usage", tag = "Admin",
    params(
        ("key" = Option<String>, Query, description = "Only this key id"),
        ("model" = Option<String>, Query, description = "Only this model (id or alias)"),
        ("from" = Option<String>, Query, description = "From this time on: Unix seconds or RFC 3339"),
        ("to" = Option<String>, Query, description = "Before this time: Unix seconds or RFC 3339"),
        ("group_by" = Option<String>, Query, description = "hour, day, model or key"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
    ),
    responses(
        (status = 200, description = "Totals per group (`data`), or CSV with `format=csv`",
            content((Object = "application/json"), (String = "text/csv"))),
        (status = 400, description = "An unknown or invalid query parameter", body = crate::error::Envelope),
        GetErrors))]
pub async fn usage(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query.map_err(|e| ApiError::invalid(None, format!("the query string: {e}")))?;
    for name in q.keys() {
        if !["key", "model", "from", "to", "group_by", "format"].contains(&name.as_str()) {
            return Err(ApiError::invalid(
                Some(name.chars().take(64).collect::<String>()),
                "unknown parameter",
            ));
        }
    }
    let time = |name: &'static str| -> ApiResult<Option<i64>> {
        let Some(v) = q.get(name) else { return Ok(None) };
        let secs = match v.parse::<i64>() {
            Ok(s) => s,
            Err(_) => humantime::parse_rfc3339_weak(v)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok())
                .ok_or_else(|| {
                    ApiError::invalid(Some(name.to_string()), "Unix seconds or an RFC 3339 time expected")
                })?,
        };
        secs.checked_mul(1000)
            .filter(|ms| *ms >= 0)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(Some(name.to_string()), "out of range"))
    };
    let group_by = match q.get("group_by") {
        None => None,
        Some(g) => Some(
            GroupBy::parse(g)
                .ok_or_else(|| ApiError::invalid(Some("group_by".into()), "one of hour, day, model, key"))?,
        ),
    };
    let csv = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::invalid(Some("format".into()), "json or csv")),
    };
    // A model may be named by an alias; records hold ids.
    let model = q
        .get("model")
        .map(|m| state.manager().resolve(m).map_or_else(|| m.clone(), |d| d.id.clone()));
    let query = UsageQuery {
        key: q.get("key").cloned(),
        model,
        from_ms: time("from")?,
        to_ms: time("to")?,
        group_by,
    };
    let rows = summarize(state.access().store().pool(), &query)
        .await
        .map_err(access_error)?;
    Ok(if csv {
        (
            [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&rows),
        )
            .into_response()
    } else {
        Json(json!({"object": "list", "data": rows})).into_response()
    })
}
