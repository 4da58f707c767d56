//! `/health` (the process answers), `/ready` (it can serve), `/status`
//! (models, their state and device, scheduler queues, versions).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hfms_engine::skills::LoadedModel;
use serde_json::{Value, json};

use crate::state::AppState;

pub async fn health() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> Response {
    let servable = state.manager().catalog().iter().filter(|d| d.servable()).count();
    if state.is_ready() && servable > 0 {
        (
            StatusCode::OK,
            axum::Json(json!({"status": "ready", "models": servable})),
        )
            .into_response()
    } else {
        let why = if servable == 0 {
            "no servable model was found"
        } else {
            "starting up"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready", "reason": why})),
        )
            .into_response()
    }
}

pub async fn status(State(state): State<AppState>) -> axum::Json<Value> {
    let m = state.manager();
    let loaded = m.loaded();
    let models: Vec<Value> = m
        .status()
        .into_iter()
        .map(|s| {
            let desc = m.catalog().iter().find(|d| d.id == s.id);
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
        "ready": state.is_ready(),
        "compute": {
            "threads": m.pool().threads(),
            "kernels": hfms_engine::quant::kernels().name,
        },
        "models": models,
        "devices": m.devices(),
        "manager": m.counters(),
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
