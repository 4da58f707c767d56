//! Chat mode: streaming `/chat/completions` at each concurrency level.
//!
//! Per request: TTFT (request sent → first chunk with content), end-to-end
//! latency (→ `data: [DONE]`), completion tokens (the final usage chunk;
//! content chunks when the server sends no usage), and the mean inter-token
//! latency `(e2e − ttft) / (completion_tokens − 1)` — a chunk may carry
//! several tokens, so gaps between chunks are not token gaps.

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use super::http::{Http, describe, envelope_message, truncate};
use super::report::{Output, fmt_count, fmt_rate, fmt_triple, ms};
use super::sse::Decoder;
use super::stats::Summary;
use super::{BenchArgs, Bounds, progress, run_level, warm_up, workload};

/// One successful streamed request.
#[derive(Debug, Clone)]
pub struct ChatSample {
    /// Seconds to the first content; `None` when no content came at all.
    pub ttft: Option<f64>,
    /// Seconds to the end of the stream.
    pub e2e: f64,
    pub completion_tokens: u64,
    pub prompt_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens`: prompt tokens served
    /// from a prefix cache, when the server says.
    pub cached_tokens: Option<u64>,
    /// Whether the server sent a usage chunk (else tokens = content chunks).
    pub usage: bool,
}

impl ChatSample {
    /// Mean seconds between tokens after the first.
    pub fn itl(&self) -> Option<f64> {
        let ttft = self.ttft?;
        (self.completion_tokens > 1).then(|| (self.e2e - ttft) / (self.completion_tokens - 1) as f64)
    }
}

/// The request body for chat request number `seq`.
pub fn body(args: &BenchArgs, seq: u64, max_tokens: u32) -> Value {
    let mut b = json!({
        "model": args.model,
        "messages": [{"role": "user", "content": workload::chat_prompt(seq, args.prompt_tokens, args.shared_prefix)}],
        "max_tokens": max_tokens,
        "temperature": args.temperature,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if args.ignore_eos {
        b["ignore_eos"] = json!(true);
    }
    b
}

/// What the events of one stream added up to so far.
#[derive(Default)]
struct StreamState {
    ttft: Option<f64>,
    content_chunks: u64,
    completion_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    done: Option<f64>,
}

impl StreamState {
    /// One event's `data` arriving `at` seconds after the request was sent.
    fn event(&mut self, data: &str, at: f64) -> Result<(), String> {
        if data.trim() == "[DONE]" {
            self.done = Some(at);
            return Ok(());
        }
        let v: Value =
            serde_json::from_str(data).map_err(|e| truncate(format!("stream event is not JSON ({e}): {data}")))?;
        if let Some(message) = envelope_message(&v) {
            return Err(truncate(format!("error in stream: {message}")));
        }
        let has_content = v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("delta"))
            .any(|d| {
                ["content", "reasoning_content"]
                    .iter()
                    .any(|k| d.get(k).and_then(Value::as_str).is_some_and(|s| !s.is_empty()))
            });
        if has_content {
            self.ttft.get_or_insert(at);
            self.content_chunks += 1;
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.completion_tokens = u.get("completion_tokens").and_then(Value::as_u64);
            self.prompt_tokens = u.get("prompt_tokens").and_then(Value::as_u64);
            self.cached_tokens = u
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64);
        }
        Ok(())
    }
}

/// One streamed chat completion, measured.
pub async fn stream_chat(http: &Http, body: &Value) -> Result<ChatSample, String> {
    let start = Instant::now();
    let mut resp = http.post("/chat/completions", body).await?;
    let mut decoder = Decoder::new();
    let mut state = StreamState::default();
    while state.done.is_none() {
        match resp.chunk().await.map_err(describe)? {
            Some(bytes) => {
                let at = start.elapsed().as_secs_f64();
                for data in decoder.feed(&bytes) {
                    state.event(&data, at)?;
                }
            }
            None => {
                if let Some(data) = decoder.finish() {
                    state.event(&data, start.elapsed().as_secs_f64())?;
                }
                break;
            }
        }
    }
    let Some(e2e) = state.done else {
        return Err("stream ended without data: [DONE]".into());
    };
    Ok(ChatSample {
        ttft: state.ttft,
        e2e,
        completion_tokens: state.completion_tokens.unwrap_or(state.content_chunks),
        prompt_tokens: state.prompt_tokens,
        cached_tokens: state.cached_tokens,
        usage: state.completion_tokens.is_some(),
    })
}

/// Runs every concurrency level; returns how many requests failed.
pub async fn run(args: &BenchArgs, http: &Http, out: &mut Output) -> Result<usize> {
    let timeout = Duration::from_secs_f64(args.timeout);
    // Request numbers run on across warm-up and levels: no two prompts of a
    // run are the same, so no server can answer one from a prompt cache.
    let seq = Cell::new(0u64);
    let next_seq = || {
        let s = seq.get();
        seq.set(s + 1);
        s
    };
    warm_up("chat", args.warmup, timeout, |_| {
        let b = body(args, next_seq(), args.max_tokens.min(8));
        async move { stream_chat(http, &b).await.map(|_| ()) }
    })
    .await;

    let mut rows = Vec::new();
    let mut failed = 0;
    for &concurrency in &args.concurrency {
        let bounds = Bounds::of(args, (2 * concurrency).max(4));
        let pb = progress(format!("chat c={concurrency}"), bounds);
        out.level_start();
        let level = run_level(concurrency, bounds, timeout, &pb, |_| {
            let b = body(args, next_seq(), args.max_tokens);
            async move { stream_chat(http, &b).await }
        })
        .await;
        pb.finish_and_clear();
        failed += level.errors();

        let ok: Vec<&ChatSample> = level.ok().collect();
        let wall = level.wall.as_secs_f64();
        let ttft = Summary::of(ok.iter().filter_map(|s| s.ttft).collect()).scaled(1e3);
        let itl = Summary::of(ok.iter().filter_map(|s| s.itl()).collect()).scaled(1e3);
        let e2e = Summary::of(ok.iter().map(|s| s.e2e).collect()).scaled(1e3);
        let tokens: u64 = ok.iter().map(|s| s.completion_tokens).sum();
        let prompt: Vec<u64> = ok.iter().filter_map(|s| s.prompt_tokens).collect();
        let mean = |v: &[u64]| (!v.is_empty()).then(|| v.iter().sum::<u64>() as f64 / v.len() as f64);
        let prompt_mean = mean(&prompt);
        let cached: Vec<u64> = ok.iter().filter_map(|s| s.cached_tokens).collect();
        let tok_s = tokens as f64 / wall;
        let req_s = ok.len() as f64 / wall;
        let mut record = out.record("chat", &args.model);
        record.extend([
            ("concurrency".into(), json!(concurrency)),
            ("requests".into(), json!(level.results.len())),
            ("errors".into(), json!(level.errors())),
            ("first_error".into(), json!(level.first_error())),
            ("max_tokens".into(), json!(args.max_tokens)),
            ("prompt_tokens_target".into(), json!(args.prompt_tokens)),
            ("shared_prefix_words".into(), json!(args.shared_prefix)),
            ("ignore_eos".into(), json!(args.ignore_eos)),
            ("temperature".into(), json!(args.temperature)),
            ("prompt_tokens_mean".into(), json!(prompt_mean)),
            ("cached_prompt_tokens_mean".into(), json!(mean(&cached))),
            ("completion_tokens_total".into(), json!(tokens)),
            (
                "completion_tokens_min".into(),
                json!(ok.iter().map(|s| s.completion_tokens).min()),
            ),
            (
                "completion_tokens_max".into(),
                json!(ok.iter().map(|s| s.completion_tokens).max()),
            ),
            ("usage_reported".into(), json!(ok.iter().filter(|s| s.usage).count())),
            ("wall_s".into(), json!(wall)),
            ("stopped_by_duration".into(), json!(level.stopped_by_duration)),
            ("output_tokens_per_s".into(), json!(tok_s)),
            ("requests_per_s".into(), json!(req_s)),
        ]);
        record.extend(ms("ttft", &ttft));
        record.extend(ms("itl", &itl));
        record.extend(ms("e2e", &e2e));
        out.write(record)?;
        rows.push((
            vec![
                concurrency.to_string(),
                level.results.len().to_string(),
                level.errors().to_string(),
                match (prompt_mean, mean(&cached)) {
                    (Some(p), Some(c)) if c > 0.0 => format!("{p:.0} ({c:.0} cached)"),
                    (Some(p), _) => format!("{p:.0}"),
                    (None, _) => "-".into(),
                },
                fmt_triple(&ttft),
                fmt_triple(&itl),
                fmt_triple(&e2e),
                fmt_count(tokens),
                fmt_rate(tok_s),
                fmt_rate(req_s),
            ],
            level.first_error().map(|e| format!("c={concurrency}: {e}")),
        ));
    }
    let prompt_note = match args.shared_prefix {
        0 => format!("~{} prompt words", args.prompt_tokens),
        n => format!("{n} shared + ~{} prompt words", args.prompt_tokens),
    };
    out.table(
        &format!(
            "chat: {} at {}  (max_tokens {}, {prompt_note}, ignore_eos {}, streaming)",
            args.model, http.base, args.max_tokens, args.ignore_eos
        ),
        &[
            "conc",
            "requests",
            "errors",
            "prompt tok",
            "TTFT ms p50/p90/p99",
            "ITL ms p50/p90/p99",
            "e2e ms p50/p90/p99",
            "out tokens",
            "out tok/s",
            "req/s",
        ],
        rows,
        &[],
    )?;
    Ok(failed)
}
