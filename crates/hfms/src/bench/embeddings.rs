//! Embeddings mode: `/embeddings` at each batch size × concurrency level.
//!
//! Request `i` of a level with batch size `b` embeds sentences
//! `i·b … i·b + b − 1` of [`workload::sentence`] (`hfms bench
//! --print-sentences N` prints them), so a peer measured in-process can be
//! given exactly the same inputs.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use super::http::Http;
use super::report::{Output, fmt_count, fmt_rate, fmt_triple, ms};
use super::stats::Summary;
use super::{BenchArgs, Bounds, progress, run_level, warm_up, workload};

/// One successful request.
#[derive(Debug, Clone, Copy)]
pub struct EmbedSample {
    /// Seconds from sending to the whole answer read.
    pub latency: f64,
    pub inputs: usize,
    /// `usage.prompt_tokens`, when the server reports it.
    pub prompt_tokens: Option<u64>,
}

pub fn inputs(first: usize, n: usize) -> Vec<String> {
    (first..first + n).map(workload::sentence).collect()
}

/// One `/embeddings` request, checked: one embedding per input.
pub async fn embed(http: &Http, model: &str, input: Vec<String>) -> Result<EmbedSample, String> {
    let n = input.len();
    let body = json!({"model": model, "input": input});
    let start = Instant::now();
    let v = http.post_json("/embeddings", &body).await?;
    let latency = start.elapsed().as_secs_f64();
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or("response has no data array")?;
    if data.len() != n {
        return Err(format!("{n} inputs sent, {} embeddings received", data.len()));
    }
    if let Some(bad) = data.iter().position(|d| match d.get("embedding") {
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::String(s)) => s.is_empty(),
        _ => true,
    }) {
        return Err(format!("data[{bad}] has no embedding"));
    }
    Ok(EmbedSample {
        latency,
        inputs: n,
        prompt_tokens: v.pointer("/usage/prompt_tokens").and_then(Value::as_u64),
    })
}

/// Runs every batch size × concurrency level; returns how many requests failed.
pub async fn run(args: &BenchArgs, http: &Http, out: &mut Output) -> Result<usize> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let model = args.embed_model.as_str();
    let warm_batch = args.batch_sizes.iter().copied().max().unwrap_or(1);
    warm_up("embeddings", args.warmup, timeout, |i| {
        let input = inputs(i * warm_batch, warm_batch);
        async move { embed(http, model, input).await.map(|_| ()) }
    })
    .await;

    let mut rows = Vec::new();
    let mut failed = 0;
    for &batch in &args.batch_sizes {
        for &concurrency in &args.embed_concurrency {
            let bounds = Bounds::of(args, (4 * concurrency).max(32));
            let pb = progress(format!("embeddings b={batch} c={concurrency}"), bounds);
            out.level_start();
            let level = run_level(concurrency, bounds, timeout, &pb, |i| {
                let input = inputs(i * batch, batch);
                async move { embed(http, model, input).await }
            })
            .await;
            pb.finish_and_clear();
            failed += level.errors();

            let ok: Vec<&EmbedSample> = level.ok().collect();
            let wall = level.wall.as_secs_f64();
            let latency = Summary::of(ok.iter().map(|s| s.latency).collect()).scaled(1e3);
            let n_inputs: usize = ok.iter().map(|s| s.inputs).sum();
            let reported = ok.iter().all(|s| s.prompt_tokens.is_some()) && !ok.is_empty();
            let tokens: u64 = ok.iter().filter_map(|s| s.prompt_tokens).sum();
            let inputs_s = n_inputs as f64 / wall;
            let tokens_s = reported.then(|| tokens as f64 / wall);
            let req_s = ok.len() as f64 / wall;
            let mut record = out.record("embeddings", model);
            record.extend([
                ("batch_size".into(), json!(batch)),
                ("concurrency".into(), json!(concurrency)),
                ("requests".into(), json!(level.results.len())),
                ("errors".into(), json!(level.errors())),
                ("first_error".into(), json!(level.first_error())),
                ("inputs_total".into(), json!(n_inputs)),
                ("prompt_tokens_total".into(), json!(reported.then_some(tokens))),
                ("wall_s".into(), json!(wall)),
                ("stopped_by_duration".into(), json!(level.stopped_by_duration)),
                ("inputs_per_s".into(), json!(inputs_s)),
                ("tokens_per_s".into(), json!(tokens_s)),
                ("requests_per_s".into(), json!(req_s)),
            ]);
            record.extend(ms("latency", &latency));
            out.write(record)?;
            rows.push((
                vec![
                    batch.to_string(),
                    concurrency.to_string(),
                    level.results.len().to_string(),
                    level.errors().to_string(),
                    fmt_triple(&latency),
                    fmt_count(n_inputs as u64),
                    fmt_rate(inputs_s),
                    tokens_s.map(fmt_rate).unwrap_or_else(|| "-".into()),
                    fmt_rate(req_s),
                ],
                level
                    .first_error()
                    .map(|e| format!("batch {batch} c={concurrency}: {e}")),
            ));
        }
    }
    out.table(
        &format!("embeddings: {model} at {}", http.base),
        &[
            "batch",
            "conc",
            "requests",
            "errors",
            "latency ms p50/p90/p99",
            "inputs",
            "inputs/s",
            "tokens/s",
            "req/s",
        ],
        rows,
        &[],
    )?;
    Ok(failed)
}
