//! `/health` (the process answers), `/ready` (it can serve), `/status`
//! (models, their state and device, scheduler queues, versions).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hfms_engine::skills::LoadedModel;
use serde_json::{Value, json};

use crate::error::{GetErrors, OpenGetErrors};
use crate::state::{AppState, Readiness};

/// The process answers.
#[utoipa::path(get, path = "/health", tag = "Health",
    responses((status = 200, description = "Alive", body = HealthStatus), OpenGetErrors))]
pub async fn health() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

/// `/ready`'s body.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ReadyStatus {
    /// ready or not_ready
    status: String,
    /// Servable models (when ready).
    models: Option<usize>,
    /// Why not ready: starting up, shutting down, a failed preload…
    reason: Option<String>,
}

/// `/health`'s body.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct HealthStatus {
    /// ok
    status: String,
}

/// 200 once start-up preloading finished and every preloaded model is in
/// memory; 503 with the reason while starting, after a failed preload (until
/// that model loads), and while shutting down.
#[utoipa::path(get, path = "/ready", tag = "Health",
    responses(
        (status = 200, description = "Ready to serve", body = ReadyStatus),
        (status = 503, description = "Not ready, with the reason", body = ReadyStatus),
        (status = 403, description = "The Host header is not allowed", body = crate::error::Envelope),
        (status = 405, description = "Method not allowed", body = crate::error::Envelope),
    ))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let servable = state.manager().catalog().iter().filter(|d| d.servable()).count();
    let failures = state.preload_failures();
    let reason = match state.readiness() {
        Readiness::Draining => Some("shutting down".to_string()),
        Readiness::Starting => Some("starting up".to_string()),
        // With --allow-download an empty server is ready: requests bring
        // their models.
        Readiness::Ready if servable == 0 && !state.downloads().on_demand() => {
            Some("no servable model was found".to_string())
        }
        Readiness::Ready if !failures.is_empty() => Some(
            failures
                .iter()
                .map(|(m, e)| format!("preloading {m} failed: {e}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Readiness::Ready => None,
    };
    match reason {
        None => (
            StatusCode::OK,
            axum::Json(json!({"status": "ready", "models": servable})),
        )
            .into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready", "reason": why})),
        )
            .into_response(),
    }
}

/// Models, their state, device and queues; devices; hardware; versions.
#[utoipa::path(get, path = "/status", tag = "Health",
    responses((status = 200, description = "The server's state", body = Object), GetErrors))]
pub async fn status(State(state): State<AppState>) -> axum::Json<Value> {
    let m = state.manager();
    let loaded = m.loaded();
    let catalog = m.catalog();
    let models: Vec<Value> = m
        .status()
        .into_iter()
        .map(|s| {
            let desc = catalog.iter().find(|d| d.id == s.id);
            let sched = loaded
                .iter()
                .find(|(id, _)| *id == s.id)
                .map(|(_, lm)| match lm.as_ref() {
                    LoadedModel::Generation(g) => {
                        let st = g.generator.stats();
                        json!({
                            "waiting": st.waiting.load(Ordering::Relaxed),
                            "running": st.running.load(Ordering::Relaxed),
                            "kv_blocks_used": st.kv_used_blocks.load(Ordering::Relaxed),
                            "kv_blocks_total": st.kv_total_blocks.load(Ordering::Relaxed),
                            "steps": st.steps.load(Ordering::Relaxed),
                            "prompt_tokens": st.prompt_tokens.load(Ordering::Relaxed),
                            "generated_tokens": st.generated_tokens.load(Ordering::Relaxed),
                            "preemptions": st.preemptions.load(Ordering::Relaxed),
                            "cancelled": st.cancelled.load(Ordering::Relaxed),
                            "rejected": st.rejected.load(Ordering::Relaxed),
                            "prefix_cache": {
                                "queried_blocks": st.prefix_queried_blocks.load(Ordering::Relaxed),
                                "hit_blocks": st.prefix_hit_blocks.load(Ordering::Relaxed),
                                "cached_blocks": st.prefix_cached_blocks.load(Ordering::Relaxed),
                            },
                        })
                    }
                    LoadedModel::Embedding(b) => {
                        let st = b.stats();
                        json!({
                            "waiting": st.waiting.load(Ordering::Relaxed),
                            "batches": st.batches.load(Ordering::Relaxed),
                            "requests": st.requests.load(Ordering::Relaxed),
                            "inputs": st.inputs.load(Ordering::Relaxed),
                            "tokens": st.tokens.load(Ordering::Relaxed),
                            "rejected": st.rejected.load(Ordering::Relaxed),
                            "cancelled": st.cancelled.load(Ordering::Relaxed),
                        })
                    }
                });
            let mut v = serde_json::to_value(&s).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                o.insert("aliases".into(), json!(desc.map(|d| d.aliases.clone())));
                o.insert("task".into(), json!(desc.and_then(|d| d.task)));
                o.insert("error".into(), json!(desc.and_then(|d| d.error.clone())));
                o.insert("scheduler".into(), json!(sched));
            }
            v
        })
        .collect();
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.uptime_seconds(),
        "ready": state.is_ready() && state.preload_failures().is_empty(),
        "draining": state.readiness() == Readiness::Draining,
        "compute": {
            "threads": m.pool().threads(),
            "kernels": hfms_engine::quant::kernels().name,
        },
        "models": models,
        "devices": m.devices(),
        "manager": m.counters(),
        "errors": state.metrics().last_errors(),
        "circuits": state.breakers().status(),
        "hardware": state.hardware().map(|h| {
            h.platforms
                .iter()
                .map(|p| json!({
                    "platform": p.platform,
                    "present": p.present,
                    "devices": p.devices.iter().map(|d| json!({
                        "id": d.id,
                        "name": d.name,
                        "total_bytes": d.total_bytes,
                        "free_bytes": d.free_bytes,
                    })).collect::<Vec<_>>(),
                    "build_supports": p.build_supports,
                    "reason": p.reason,
                }))
                .collect::<Vec<_>>()
        }),
    }))
}
