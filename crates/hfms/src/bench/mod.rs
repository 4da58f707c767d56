//! `hfms bench`: a load generator for any OpenAI-compatible base URL.
//!
//! Modes: `chat` (streaming chat completions at several concurrency levels:
//! TTFT, inter-token latency, end-to-end latency, output tokens/s),
//! `embeddings` (batch sizes × concurrency: inputs/s, tokens/s, latency) and
//! `swap` (requests alternating between models: the cost of reloads under a
//! memory budget that holds one). Results: an aligned table, and JSON lines
//! (`--json FILE`, or `--json -` for stdout, the table then going to stderr).
//!
//! The client runs on one thread (a current-thread tokio runtime) so it takes
//! as little as possible from the server it measures on the same machine.

mod chat;
mod embeddings;
mod http;
mod report;
mod sse;
mod stats;
mod swap;
mod workload;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{ArgAction, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use self::http::Http;
use self::report::Output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Streaming chat completions at each `--concurrency` level.
    Chat,
    /// Embeddings at each `--batch-sizes` × `--embed-concurrency` level.
    Embeddings,
    /// Requests alternating between the `--swap-models`.
    Swap,
    /// chat, embeddings, and swap when `--swap-models` is given.
    All,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The OpenAI-compatible base URL (the part before `/chat/completions`).
    #[arg(long, env = "HFMS_BENCH_BASE_URL", default_value = "http://127.0.0.1:8000/v1")]
    pub base_url: String,

    /// Allow a base URL whose host is not loopback (127.0.0.0/8, ::1,
    /// localhost). Off by default so bench traffic never reaches another
    /// machine by accident.
    #[arg(long, env = "HFMS_BENCH_ALLOW_REMOTE")]
    pub allow_remote: bool,

    /// Sent as `Authorization: Bearer KEY` (servers that require one).
    #[arg(long, env = "HFMS_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// What to measure (several allowed: `--mode chat,embeddings`).
    #[arg(
        long,
        env = "HFMS_BENCH_MODE",
        value_enum,
        value_delimiter = ',',
        default_value = "all"
    )]
    pub mode: Vec<Mode>,

    /// Chat model (id or alias).
    #[arg(long, env = "HFMS_BENCH_MODEL", default_value = "smollm2")]
    pub model: String,

    /// Chat concurrency levels: requests in flight at once.
    #[arg(
        long,
        env = "HFMS_BENCH_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,4,8,16"
    )]
    pub concurrency: Vec<usize>,

    /// Requests per level, every mode. Default: chat max(2×concurrency, 4),
    /// embeddings max(4×concurrency, 32), swap max(4×models, 8); with only
    /// `--duration` given, no request limit.
    #[arg(long, env = "HFMS_BENCH_REQUESTS")]
    pub requests: Option<usize>,

    /// Seconds per level: no request starts after this (those in flight
    /// finish). With `--requests` too, whichever comes first.
    #[arg(long, env = "HFMS_BENCH_DURATION")]
    pub duration: Option<f64>,

    /// `max_tokens` of each chat request.
    #[arg(long, env = "HFMS_BENCH_MAX_TOKENS", default_value_t = 128)]
    pub max_tokens: u32,

    /// Approximate prompt length in tokens (words of a fixed list; each
    /// request's words are its own). The chat template adds a few more; the
    /// measured mean is reported.
    #[arg(long, env = "HFMS_BENCH_PROMPT_TOKENS", default_value_t = 128)]
    pub prompt_tokens: usize,

    /// Words prepended to every chat prompt, the same in each request, to
    /// measure prefix caching. 0: prompts share nothing but the template.
    #[arg(long, env = "HFMS_BENCH_SHARED_PREFIX", default_value_t = 0)]
    pub shared_prefix: usize,

    /// Send `"ignore_eos": true` (vLLM / llama.cpp / hfms extension) so each
    /// request generates exactly `--max-tokens`. `--ignore-eos false` to
    /// leave it out.
    #[arg(long, env = "HFMS_BENCH_IGNORE_EOS", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub ignore_eos: bool,

    /// Let the server answer from its response cache (by default requests
    /// carry `Cache-Control: no-store`, so the models are measured; with
    /// this flag, repeated deterministic requests measure cache hits).
    #[arg(long, env = "HFMS_BENCH_USE_CACHE")]
    pub use_cache: bool,

    /// Sampling temperature of chat requests.
    #[arg(long, env = "HFMS_BENCH_TEMPERATURE", default_value_t = 0.0)]
    pub temperature: f64,

    /// Unmeasured requests before the first level of chat and embeddings
    /// (loads the model, warms caches).
    #[arg(long, env = "HFMS_BENCH_WARMUP", default_value_t = 1)]
    pub warmup: usize,

    /// Embedding model (id or alias).
    #[arg(long, env = "HFMS_BENCH_EMBED_MODEL", default_value = "all-minilm")]
    pub embed_model: String,

    /// Inputs per embeddings request, one level each.
    #[arg(long, env = "HFMS_BENCH_BATCH_SIZES", value_delimiter = ',', default_value = "1,32")]
    pub batch_sizes: Vec<usize>,

    /// Embeddings requests in flight at once, one level each (× batch sizes).
    #[arg(
        long,
        env = "HFMS_BENCH_EMBED_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1"
    )]
    pub embed_concurrency: Vec<usize>,

    /// Models to alternate between in swap mode (at least two): chat with
    /// max_tokens 8 for generation models, one input for embedding models.
    #[arg(long, env = "HFMS_BENCH_SWAP_MODELS", value_delimiter = ',')]
    pub swap_models: Vec<String>,

    /// Seconds one request may take before it counts as an error.
    #[arg(long, env = "HFMS_BENCH_TIMEOUT", default_value_t = 300.0)]
    pub timeout: f64,

    /// Write JSON lines (one object per level) to FILE; `-` for stdout (the
    /// table then goes to stderr).
    #[arg(long, env = "HFMS_BENCH_JSON", value_name = "FILE")]
    pub json: Option<String>,

    /// A tag copied into every JSON line (e.g. which server this was).
    #[arg(long, env = "HFMS_BENCH_LABEL")]
    pub label: Option<String>,

    /// Print the first N embedding sentences, one per line, and exit (to
    /// feed a peer exactly the inputs hfms bench sends).
    #[arg(long, value_name = "N")]
    pub print_sentences: Option<usize>,
}

/// Which modes run, in order, `all` expanded.
fn modes(args: &BenchArgs) -> Result<Vec<Mode>> {
    let mut out = Vec::new();
    for m in &args.mode {
        let expanded: &[Mode] = match m {
            Mode::All if args.swap_models.is_empty() => &[Mode::Chat, Mode::Embeddings],
            Mode::All => &[Mode::Chat, Mode::Embeddings, Mode::Swap],
            m => std::slice::from_ref(m),
        };
        for m in expanded {
            if !out.contains(m) {
                out.push(*m);
            }
        }
    }
    if out.contains(&Mode::Swap) && args.swap_models.len() < 2 {
        bail!("--mode swap needs --swap-models with at least two models (e.g. --swap-models smollm2,all-minilm)");
    }
    Ok(out)
}

fn validate(args: &BenchArgs) -> Result<()> {
    let positive = |name: &str, v: &[usize]| -> Result<()> {
        if v.is_empty() || v.contains(&0) {
            bail!("{name} needs one or more numbers above 0");
        }
        Ok(())
    };
    positive("--concurrency", &args.concurrency)?;
    positive("--batch-sizes", &args.batch_sizes)?;
    positive("--embed-concurrency", &args.embed_concurrency)?;
    if args.requests == Some(0) {
        bail!("--requests must be above 0");
    }
    if args.duration.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    if args.max_tokens == 0 {
        bail!("--max-tokens must be above 0");
    }
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be 0 or more");
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(n) = args.print_sentences {
        let mut out = std::io::stdout().lock();
        for i in 0..n {
            writeln!(out, "{}", workload::sentence(i))?;
        }
        return Ok(());
    }
    validate(&args)?;
    let modes = modes(&args)?;
    let http = Http::new(
        &args.base_url,
        args.allow_remote,
        args.api_key.as_deref(),
        args.use_cache,
    )?;
    let mut output = Output::open(args.json.as_deref(), &args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let failed = runtime.block_on(async {
        eprintln!("hfms bench: server {}", server_compute(&http).await);
        let mut failed = 0;
        for mode in modes {
            failed += match mode {
                Mode::Chat => chat::run(&args, &http, &mut output).await?,
                Mode::Embeddings => embeddings::run(&args, &http, &mut output).await?,
                Mode::Swap => swap::run(&args, &http, &mut output).await?,
                Mode::All => 0,
            };
        }
        anyhow::Ok(failed)
    })?;
    output.finish()?;
    if failed > 0 {
        bail!("{failed} request(s) failed (the reports above give the first error of each level)");
    }
    Ok(())
}

/// What the server computes with, from an hfms server's `/status` (kernel
/// set and threads), so that a figure says which kernels produced it. A
/// peer server (llama-server, the sentence-transformers script) has none;
/// with API keys on, `/status` needs an admin key.
async fn server_compute(http: &Http) -> String {
    match http.get_root_json("/status").await {
        Ok((_, Some(v))) if v["compute"]["kernels"].is_string() => format!(
            "hfms {}: kernels {}, {} threads",
            v["version"].as_str().unwrap_or("?"),
            v["compute"]["kernels"].as_str().unwrap_or("?"),
            v["compute"]["threads"]
        ),
        Ok((status, _)) => format!("kernel set unknown (GET /status: {status}, no hfms compute section)"),
        Err(e) => format!("kernel set unknown (GET /status: {e})"),
    }
}

/// When a level stops.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub requests: Option<usize>,
    pub duration: Option<Duration>,
}

impl Bounds {
    /// `--requests` / `--duration`, with `default` requests when neither is given.
    fn of(args: &BenchArgs, default: usize) -> Bounds {
        let duration = args.duration.map(Duration::from_secs_f64);
        let requests = match (args.requests, duration) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(default),
        };
        Bounds { requests, duration }
    }
}

/// What one level produced: each request's outcome in request order.
pub struct LevelRun<T> {
    pub results: Vec<Result<T, String>>,
    pub wall: Duration,
    /// `--duration` ended the level before `--requests` did.
    pub stopped_by_duration: bool,
}

impl<T> LevelRun<T> {
    pub fn ok(&self) -> impl Iterator<Item = &T> {
        self.results.iter().filter_map(|r| r.as_ref().ok())
    }

    pub fn errors(&self) -> usize {
        self.results.iter().filter(|r| r.is_err()).count()
    }

    pub fn first_error(&self) -> Option<&str> {
        self.results.iter().find_map(|r| r.as_ref().err().map(String::as_str))
    }
}

/// Runs requests `0, 1, 2, …` with `concurrency` in flight until the bounds
/// say stop; each gets `timeout`, after which it is an error.
pub async fn run_level<T, F, Fut>(
    concurrency: usize,
    bounds: Bounds,
    timeout: Duration,
    progress: &ProgressBar,
    request: F,
) -> LevelRun<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let next = Cell::new(0usize);
    let stopped_by_duration = Cell::new(false);
    let results = RefCell::new(Vec::new());
    let start = Instant::now();
    let (next, stopped_by_duration, results, request) = (&next, &stopped_by_duration, &results, &request);
    let worker = || async move {
        loop {
            let i = next.get();
            if bounds.requests.is_some_and(|n| i >= n) {
                break;
            }
            if bounds.duration.is_some_and(|d| start.elapsed() >= d) {
                stopped_by_duration.set(true);
                break;
            }
            next.set(i + 1);
            let outcome = match tokio::time::timeout(timeout, request(i)).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {} s", timeout.as_secs_f64())),
            };
            results.borrow_mut().push((i, outcome));
            progress.inc(1);
        }
    };
    futures::future::join_all((0..concurrency).map(|_| worker())).await;
    let wall = start.elapsed();
    let mut results = results.take();
    results.sort_by_key(|(i, _)| *i);
    LevelRun {
        results: results.into_iter().map(|(_, r)| r).collect(),
        wall,
        stopped_by_duration: stopped_by_duration.get(),
    }
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
pub fn progress(label: String, bounds: Bounds) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = match bounds.requests {
        Some(n) => {
            let pb = ProgressBar::new(n as u64);
            pb.set_style(
                ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} requests  {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            pb
        }
        None => {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{prefix:>24} {spinner} {pos} requests  {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb
        }
    };
    pb.set_prefix(label);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Runs `n` unmeasured requests one after another; a failure is reported on
/// stderr (the measured levels will count the same failure as errors).
pub async fn warm_up<Fut>(what: &str, n: usize, timeout: Duration, request: impl Fn(usize) -> Fut)
where
    Fut: Future<Output = Result<(), String>>,
{
    for i in 0..n {
        let outcome = match tokio::time::timeout(timeout, request(i)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {} s", timeout.as_secs_f64())),
        };
        if let Err(e) = outcome {
            eprintln!("hfms bench: {what} warm-up request failed: {e}");
            return;
        }
    }
}
