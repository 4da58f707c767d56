//! Swap mode: requests one at a time, alternating between `--swap-models`,
//! to measure what reloading costs when the memory budget holds one model.
//!
//! Generation models get a chat completion with `max_tokens` 8, embedding
//! models one input. Which a model is comes from `GET /models/{id}`'s `task`
//! (hfms gives it); otherwise a one-token chat request is tried, and a 400
//! means an embedding model.
//!
//! Before alternating, each model gets one request (which loads it) and
//! [`WARM_SAMPLES`] more back to back: their median is its warm latency.
//! Reported: latency percentiles over the alternating requests, how many
//! were slow — more than [`SLOW_FACTOR`] × the median of the fastest
//! quartile of all of them, and more than [`SLOW_FACTOR`] × their own
//! model's warm latency (the better test when the models differ in cost, or
//! when every alternating request reloads) — and per model the p50, the
//! warm latency and the difference: what a swap costs.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use super::http::{Http, describe, status_error};
use super::report::{Output, fmt_ms, fmt_triple, ms};
use super::stats::{Summary, slow_outliers};
use super::{BenchArgs, Bounds, embeddings, progress, run_level, workload};

pub const SLOW_FACTOR: f64 = 5.0;
const WARM_SAMPLES: usize = 3;
const SWAP_MAX_TOKENS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Embed,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Embed => "embeddings",
        }
    }
}

fn chat_body(args: &BenchArgs, model: &str, seq: u64, max_tokens: u32) -> Value {
    let mut b = json!({
        "model": model,
        "messages": [{"role": "user", "content": workload::short_prompt(seq)}],
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    if args.ignore_eos {
        b["ignore_eos"] = json!(true);
    }
    b
}

/// POST a chat request: Ok, or the HTTP status (0: no answer) and the error.
async fn chat(http: &Http, body: &Value) -> Result<(), (u16, String)> {
    let resp = http
        .client
        .post(http.url("/chat/completions"))
        .json(body)
        .send()
        .await
        .map_err(|e| (0, describe(e)))?;
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        return Err((status, status_error(resp).await));
    }
    let bytes = resp.bytes().await.map_err(|e| (status, describe(e)))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| (status, format!("response is not JSON: {e}")))?;
    if v.pointer("/choices/0/message").is_none() {
        return Err((status, "response has no choices[0].message".into()));
    }
    Ok(())
}

/// What `model` serves, and how that was found out.
async fn detect(args: &BenchArgs, http: &Http, model: &str) -> (Kind, String) {
    if let Ok((200, Some(v))) = http.get_json(&format!("/models/{model}")).await {
        match v.get("task").and_then(Value::as_str) {
            Some("generate" | "chat" | "text-generation") => return (Kind::Chat, "GET /models task".into()),
            Some("embed" | "embedding" | "embeddings" | "feature-extraction") => {
                return (Kind::Embed, "GET /models task".into());
            }
            _ => {}
        }
    }
    match chat(http, &chat_body(args, model, 0, 1)).await {
        Ok(()) => (Kind::Chat, "chat probe".into()),
        Err((400, _)) => match embeddings::embed(http, model, embeddings::inputs(0, 1)).await {
            Ok(_) => (Kind::Embed, "chat probe 400, embeddings probe".into()),
            Err(e) => (Kind::Chat, format!("probes failed: {e}")),
        },
        Err((_, e)) => (Kind::Chat, format!("chat probe failed: {e}")),
    }
}

/// One request to `model`, timed (milliseconds).
async fn timed(args: &BenchArgs, http: &Http, model: &str, kind: Kind, seq: usize) -> Result<f64, String> {
    let start = Instant::now();
    match kind {
        Kind::Chat => chat(http, &chat_body(args, model, seq as u64, SWAP_MAX_TOKENS))
            .await
            .map_err(|(_, e)| e)?,
        Kind::Embed => embeddings::embed(http, model, embeddings::inputs(seq, 1))
            .await
            .map(|_| ())?,
    }
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// The model's latency when nothing has to be loaded: one request that
/// loads it, then [`WARM_SAMPLES`] back to back; their median (ms).
async fn warm_latency(args: &BenchArgs, http: &Http, model: &str, kind: Kind, timeout: Duration) -> Option<f64> {
    let mut samples = Vec::new();
    for i in 0..=WARM_SAMPLES {
        match tokio::time::timeout(timeout, timed(args, http, model, kind, 1_000_000 + i)).await {
            Ok(Ok(ms)) if i > 0 => samples.push(ms),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                eprintln!("hfms bench: swap: warm request to {model} failed: {e}");
                return None;
            }
            Err(_) => {
                eprintln!("hfms bench: swap: warm request to {model} timed out");
                return None;
            }
        }
    }
    Summary::of(samples).p50
}

/// Runs the alternating requests; returns how many failed.
pub async fn run(args: &BenchArgs, http: &Http, out: &mut Output) -> Result<usize> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let models = &args.swap_models;
    let mut kinds = Vec::new();
    let mut warm = Vec::new();
    for m in models {
        let kind = detect(args, http, m).await;
        warm.push(warm_latency(args, http, m, kind.0, timeout).await);
        kinds.push(kind);
    }
    let bounds = Bounds::of(args, (4 * models.len()).max(8));
    let pb = progress("swap".into(), bounds);
    out.level_start();
    // The last model warmed is the one loaded: request 0 (model 0) swaps.
    let level = run_level(1, bounds, timeout, &pb, |i| {
        let m = i % models.len();
        let (model, kind) = (models[m].as_str(), kinds[m].0);
        async move { timed(args, http, model, kind, i).await.map(|ms| (m, ms)) }
    })
    .await;
    pb.finish_and_clear();

    let ok: Vec<(usize, f64)> = level.ok().copied().collect();
    let all_ms: Vec<f64> = ok.iter().map(|(_, v)| *v).collect();
    let latency = Summary::of(all_ms.clone());
    let (fast_median, threshold, slow) = match slow_outliers(&all_ms, SLOW_FACTOR) {
        Some((f, t, n)) => (Some(f), Some(t), n),
        None => (None, None, 0),
    };
    let mut slow_vs_warm = 0;
    let mut per_model = serde_json::Map::new();
    let mut model_cells = Vec::new();
    for (m, name) in models.iter().enumerate() {
        let mine: Vec<f64> = ok.iter().filter(|(k, _)| *k == m).map(|(_, v)| *v).collect();
        let s = Summary::of(mine.clone());
        let model_slow = warm[m].map_or(0, |w| mine.iter().filter(|v| **v > SLOW_FACTOR * w).count());
        slow_vs_warm += model_slow;
        model_cells.push(format!(
            "{name}: p50 {} ms, warm {} ms, {model_slow} > {SLOW_FACTOR}× warm",
            fmt_ms(s.p50),
            fmt_ms(warm[m]),
        ));
        per_model.insert(
            name.clone(),
            json!({
                "task": kinds[m].0.as_str(),
                "detected_by": kinds[m].1,
                "requests": mine.len(),
                "latency_p50_ms": s.p50,
                "latency_max_ms": mine.iter().copied().reduce(f64::max),
                "warm_p50_ms": warm[m],
                "swap_overhead_p50_ms": s.p50.zip(warm[m]).map(|(p, w)| p - w),
                "slow_vs_warm_requests": model_slow,
            }),
        );
    }
    let wall = level.wall.as_secs_f64();
    let mut record = out.record("swap", &models.join(","));
    record.extend([
        ("models".into(), json!(models)),
        ("requests".into(), json!(level.results.len())),
        ("errors".into(), json!(level.errors())),
        ("first_error".into(), json!(level.first_error())),
        ("wall_s".into(), json!(wall)),
        ("stopped_by_duration".into(), json!(level.stopped_by_duration)),
        ("chat_max_tokens".into(), json!(SWAP_MAX_TOKENS)),
        ("slow_factor".into(), json!(SLOW_FACTOR)),
        ("fast_quartile_median_ms".into(), json!(fast_median)),
        ("slow_threshold_ms".into(), json!(threshold)),
        ("slow_requests".into(), json!(slow)),
        ("slow_vs_warm_requests".into(), json!(slow_vs_warm)),
        ("per_model".into(), Value::Object(per_model)),
        ("latencies_ms".into(), json!(all_ms)),
    ]);
    record.extend(ms("latency", &latency));
    out.write(record)?;

    let tasks: Vec<String> = models
        .iter()
        .zip(&kinds)
        .map(|(m, (k, _))| format!("{m} ({})", k.as_str()))
        .collect();
    out.table(
        &format!("swap: {} at {}, one request at a time", tasks.join(" <-> "), http.base),
        &[
            "requests",
            "errors",
            "latency ms p50/p90/p99",
            "fastest-quartile median ms",
            &format!("slow (> {SLOW_FACTOR}×)"),
            &format!("slow (> {SLOW_FACTOR}× warm)"),
        ],
        vec![(
            vec![
                level.results.len().to_string(),
                level.errors().to_string(),
                fmt_triple(&latency),
                fmt_ms(fast_median),
                slow.to_string(),
                slow_vs_warm.to_string(),
            ],
            level.first_error().map(|e| format!("swap: {e}")),
        )],
        &model_cells,
    )?;
    Ok(level.errors())
}
