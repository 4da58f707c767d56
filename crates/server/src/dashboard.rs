//! The admin dashboard: `GET /admin` and its assets, embedded in the binary
//! (no CDN), and its sign-in session — `POST /admin/session` trades an
//! admin-scoped key for a session cookie (HttpOnly, SameSite=Strict),
//! `GET` says who is signed in and gives the CSRF token that every
//! state-changing request made with the cookie must carry in
//! `x-csrf-token`, `DELETE` signs out. The pages call the same admin API
//! as any client (`/admin/keys`, `/admin/usage`, `/status`, `/metrics`,
//! `/models/*`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, Caller, SESSION_SECONDS};
use crate::error::{ApiError, ApiResult, GetErrors, PostErrors};
use crate::extract::ApiJson;
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "hfms_session";

/// The embedded files: path under `/admin/assets/`, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/admin/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/admin/app.css"),
    ),
    (
        "vendor/uplot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/admin/vendor/uplot.iife.min.js"),
    ),
    (
        "vendor/uplot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/admin/vendor/uplot.min.css"),
    ),
];
const INDEX: &[u8] = include_bytes!("../assets/admin/index.html");

/// Pages run only their own scripts and styles: an injected string cannot
/// run, and no other site may frame them.
const CSP: &str =
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";

async fn file(state: &AppState, path: &str, content_type: &str, embedded: &'static [u8]) -> Response {
    // A UI developer's copy on disk, read on every request.
    let body = match &state.config().admin_assets_dir {
        Some(dir) => match tokio::fs::read(dir.join(path)).await {
            Ok(b) => axum::body::Body::from(b),
            Err(_) => return ApiError::not_found(format!("No dashboard file {path}")).into_response(),
        },
        None => axum::body::Body::from(embedded),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain")),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

pub async fn index(State(state): State<AppState>) -> Response {
    file(&state, "index.html", "text/html; charset=utf-8", INDEX).await
}

pub async fn asset(State(state): State<AppState>, Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((p, ct, bytes)) => file(&state, p, ct, bytes).await,
        None => ApiError::not_found(format!(
            "No dashboard file {}",
            path.chars().take(64).collect::<String>()
        ))
        .into_response(),
    }
}

/// The session tokens a request's cookies carry: a few, since a cookie
/// planted by another site of the same host (another port, a narrower
/// path) is sent too, and must not lock the real session out.
pub fn session_tokens(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
        .take(4)
        .collect()
}

fn cookie(headers: &HeaderMap, token: &str, max_age: i64) -> HeaderValue {
    // Behind a TLS-terminating proxy the cookie is also `Secure`.
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let value = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    // The token is base62: always a valid header value.
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("hfms_session=; Max-Age=0; Path=/"))
}

fn who(caller: &Caller) -> serde_json::Value {
    match caller {
        Caller::Key(k) => json!({"id": k.id, "name": k.name}),
        Caller::Operator => json!({"id": null, "name": "admin key"}),
        Caller::Anyone { .. } => serde_json::Value::Null,
    }
}

fn signed_in(caller: &Caller, token: &str) -> serde_json::Value {
    json!({"auth": true, "csrf_token": auth::csrf_token(token), "key": who(caller)})
}

/// Without keys the admin API is open on loopback (nothing to sign in
/// to), and closed to a `--no-auth` server's network callers.
async fn open_server(state: &AppState) -> ApiResult<Option<Response>> {
    if state.access().refresh_required().await {
        return Ok(None);
    }
    if !state.access().keyless_admin() {
        return Err(auth::insufficient_scope(hfms_access::Scope::Admin));
    }
    Ok(Some(
        Json(json!({"auth": false, "csrf_token": "", "key": null})).into_response(),
    ))
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn session_ended() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "Not signed in, or the session has ended: sign in with an admin key.",
    )
    .with_code("invalid_api_key")
}

#[utoipa::path(get, path = "/admin/session", tag = "Admin",
    responses((status = 200, description = "Who the session cookie signs in, and its CSRF token", body = Object), GetErrors))]
pub async fn current(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(open) = open_server(&state).await? {
        return Ok(open);
    }
    let (caller, token) = state.access().session_of(&headers).await?.ok_or_else(session_ended)?;
    Ok(no_store(Json(signed_in(&caller, token)).into_response()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An admin-scoped API key, or the bootstrap admin key.
    key: String,
}

#[utoipa::path(post, path = "/admin/session", tag = "Admin",
    request_body = SignIn,
    responses((status = 200, description = "Signed in: the session cookie is set; the body has the CSRF token", body = Object), PostErrors))]
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body, _): ApiJson<SignIn>,
) -> ApiResult<Response> {
    if let Some(open) = open_server(&state).await? {
        return Ok(open);
    }
    let (caller, token) = state.access().sign_in(&body.key).await?;
    tracing::info!(
        key_id = caller.key().map(|k| k.id.as_str()).unwrap_or("admin key"),
        "dashboard sign-in"
    );
    let mut resp = no_store(Json(signed_in(&caller, &token)).into_response());
    resp.headers_mut()
        .insert(SET_COOKIE, cookie(&headers, &token, SESSION_SECONDS));
    Ok(resp)
}

#[utoipa::path(delete, path = "/admin/session", tag = "Admin",
    responses((status = 204, description = "Signed out; the cookie is cleared"), GetErrors))]
pub async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some((_, token)) = state.access().session_of(&headers).await? {
        auth::check_csrf(&headers, token)?;
        state.access().sign_out(token).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(SET_COOKIE, cookie(&headers, "", 0));
    Ok(resp)
}
