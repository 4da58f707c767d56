//! Prometheus metrics: `GET /metrics` in Prometheus' text format, or
//! OpenMetrics when the scraper asks for it (`Accept`). Names follow vLLM's
//! set and meaning with an `hfms_` prefix and a `model` label.
//!
//! Three sources, one registry (prometheus-client):
//! - the engine's hooks (`hfms_engine::observe`), implemented here with
//!   per-model handles resolved once per load, so the per-token path does
//!   no label lookup;
//! - gauges read from the loaded models and the devices when scraped (a
//!   collector);
//! - the HTTP layer: requests by route, method and status and their
//!   duration (a streamed response is counted when its body ends or the
//!   client leaves), errors by type and model, the last 50 errors.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hfms_engine::manager::ModelManager;
use hfms_engine::observe::{EmbeddingObserver, FinishedSequence, GenerationObserver, Observers, UnloadCause};
use hfms_engine::skills::LoadedModel;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

// vLLM's buckets.
const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: [f64; 19] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
const REQUEST_BUCKETS: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];
/// Short things: queue waits, HTTP requests, embedding batches, loads.
const SHORT_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Counts: tokens per step or request, sequences or inputs per batch.
const COUNT_BUCKETS: [f64; 14] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];

fn ttft_histogram() -> Histogram {
    Histogram::new(TTFT_BUCKETS)
}
fn itl_histogram() -> Histogram {
    Histogram::new(ITL_BUCKETS)
}
fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}
fn short_histogram() -> Histogram {
    Histogram::new(SHORT_BUCKETS)
}
fn count_histogram() -> Histogram {
    Histogram::new(COUNT_BUCKETS)
}

type Hist = Family<ModelLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishLabels {
    model: String,
    finished_reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnloadLabels {
    model: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    /// OpenAI's error `type`.
    r#type: String,
    code: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    model: String,
    /// hit, miss, bypass
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    /// requests, tokens, concurrency
    kind: String,
}

/// Usage per API key: its id (never its name: ids are bounded and carry
/// nothing a client chose), `-` for requests without a key.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    key_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyRequestLabels {
    key_id: String,
    /// success or error (status >= 400)
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyTokenLabels {
    key_id: String,
    /// prompt, cached (of the prompt) or completion
    kind: String,
}

/// Keys with their own series; the rest are summed under `other`.
const MAX_KEY_SERIES: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheErrorLabels {
    backend: String,
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

/// One error, as `/status` lists the last ones (never prompts or keys).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorRecord {
    /// Unix seconds.
    pub time: f64,
    pub request_id: String,
    pub status: u16,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
    pub model: Option<String>,
    pub message: String,
}

const LAST_ERRORS: usize = 50;

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    // Generation.
    ttft: Hist,
    itl: Hist,
    e2e: Hist,
    queue: Hist,
    prefill: Hist,
    decode: Hist,
    request_prompt_tokens: Hist,
    request_generation_tokens: Hist,
    step_tokens: Hist,
    step_sequences: Hist,
    success: Family<FinishLabels, Counter>,
    prompt_tokens: Family<ModelLabels, Counter>,
    generation_tokens: Family<ModelLabels, Counter>,
    preemptions: Family<ModelLabels, Counter>,
    prefix_queries: Family<ModelLabels, Counter>,
    prefix_hits: Family<ModelLabels, Counter>,
    // Embeddings.
    embed_requests: Family<ModelLabels, Counter>,
    embed_inputs: Family<ModelLabels, Counter>,
    embed_tokens: Family<ModelLabels, Counter>,
    embed_cancelled: Family<ModelLabels, Counter>,
    embed_batch_inputs: Hist,
    embed_batch_tokens: Hist,
    embed_batch_seconds: Hist,
    embed_queue: Hist,
    // Manager.
    loads: Family<ModelLabels, Counter>,
    load_failures: Family<ModelLabels, Counter>,
    load_seconds: Hist,
    unloads: Family<UnloadLabels, Counter>,
    // HTTP and errors.
    cache_requests: Family<CacheLabels, Counter>,
    cache_errors: Family<CacheErrorLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    rate_limit_store_errors: Family<LimitLabels, Counter>,
    key_requests: Family<KeyRequestLabels, Counter>,
    key_tokens: Family<KeyTokenLabels, Counter>,
    key_cost: Family<KeyLabels, Counter<f64, AtomicU64>>,
    /// The key ids that have their own series.
    key_series: Mutex<std::collections::HashSet<String>>,
    /// Set once the cache exists (bytes held, memory backend).
    cache_bytes: Arc<OnceLock<Weak<crate::cache::ResponseCache>>>,
    circuit: Family<ModelLabels, Gauge>,
    circuit_opened: Family<ModelLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
    last_errors: Mutex<VecDeque<ErrorRecord>>,
    /// Set once the manager exists (the manager is built with these
    /// metrics as its observers).
    manager: Arc<OnceLock<Weak<ModelManager>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut r = Registry::default();
        fn hist(r: &mut Registry, name: &str, help: &str, make: fn() -> Histogram) -> Hist {
            let f = Hist::new_with_constructor(make);
            r.register(name, help, f.clone());
            f
        }
        fn counter<L>(r: &mut Registry, name: &str, help: &str) -> Family<L, Counter>
        where
            L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
        {
            let f = Family::<L, Counter>::default();
            r.register(name, help, f.clone());
            f
        }
        let http_seconds = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            short_histogram as fn() -> Histogram,
        );
        r.register(
            "hfms_http_request_duration_seconds",
            "HTTP request duration, until the last byte of the body (streams included)",
            http_seconds.clone(),
        );
        let manager = Arc::new(OnceLock::new());
        let cache_bytes = Arc::new(OnceLock::new());
        r.register_collector(Box::new(Gauges {
            manager: manager.clone(),
            cache: cache_bytes.clone(),
        }));
        Arc::new(Metrics {
            ttft: hist(
                &mut r,
                "hfms_time_to_first_token_seconds",
                "Time from submission to the first generated token",
                ttft_histogram,
            ),
            itl: hist(
                &mut r,
                "hfms_inter_token_latency_seconds",
                "Time between consecutive generated tokens of a request",
                itl_histogram,
            ),
            e2e: hist(
                &mut r,
                "hfms_e2e_request_latency_seconds",
                "Time from submission to the end of a generation request",
                request_histogram,
            ),
            queue: hist(
                &mut r,
                "hfms_request_queue_time_seconds",
                "Time a generation request waited before its first step",
                request_histogram,
            ),
            prefill: hist(
                &mut r,
                "hfms_request_prefill_time_seconds",
                "Time from a request's first step to its first token",
                request_histogram,
            ),
            decode: hist(
                &mut r,
                "hfms_request_decode_time_seconds",
                "Time from a request's first token to its end",
                request_histogram,
            ),
            request_prompt_tokens: hist(
                &mut r,
                "hfms_request_prompt_tokens",
                "Prompt tokens per generation request",
                count_histogram,
            ),
            request_generation_tokens: hist(
                &mut r,
                "hfms_request_generation_tokens",
                "Generated tokens per request",
                count_histogram,
            ),
            step_tokens: hist(
                &mut r,
                "hfms_iteration_tokens",
                "Tokens (prefill and decode) per model step",
                count_histogram,
            ),
            step_sequences: hist(&mut r, "hfms_batch_size", "Sequences per model step", count_histogram),
            success: counter(
                &mut r,
                "hfms_request_success",
                "Generation requests ended, by finished_reason (stop, length, abort, error)",
            ),
            prompt_tokens: counter(&mut r, "hfms_prompt_tokens", "Prompt tokens computed (prefill)"),
            generation_tokens: counter(&mut r, "hfms_generation_tokens", "Tokens generated"),
            preemptions: counter(
                &mut r,
                "hfms_num_preemptions",
                "Sequences preempted for lack of KV cache",
            ),
            prefix_queries: counter(
                &mut r,
                "hfms_prefix_cache_queries",
                "Prompt KV blocks looked up in the prefix cache",
            ),
            prefix_hits: counter(
                &mut r,
                "hfms_prefix_cache_hits",
                "Prompt KV blocks found in the prefix cache",
            ),
            embed_requests: counter(&mut r, "hfms_embedding_requests", "Embedding requests answered"),
            embed_inputs: counter(&mut r, "hfms_embedding_inputs", "Inputs embedded"),
            embed_tokens: counter(&mut r, "hfms_embedding_tokens", "Tokens embedded"),
            embed_cancelled: counter(
                &mut r,
                "hfms_embedding_cancelled",
                "Embedding requests dropped because their client left",
            ),
            embed_batch_inputs: hist(
                &mut r,
                "hfms_embedding_batch_inputs",
                "Inputs per encoder batch",
                count_histogram,
            ),
            embed_batch_tokens: hist(
                &mut r,
                "hfms_embedding_batch_tokens",
                "Tokens per encoder batch",
                count_histogram,
            ),
            embed_batch_seconds: hist(
                &mut r,
                "hfms_embedding_batch_seconds",
                "Compute time of one encoder batch",
                short_histogram,
            ),
            embed_queue: hist(
                &mut r,
                "hfms_embedding_queue_time_seconds",
                "Time an embedding request waited for its first batch",
                short_histogram,
            ),
            loads: counter(&mut r, "hfms_model_loads", "Models loaded"),
            load_failures: counter(&mut r, "hfms_model_load_failures", "Model loads that failed"),
            load_seconds: hist(
                &mut r,
                "hfms_model_load_seconds",
                "Time to load a model",
                short_histogram,
            ),
            unloads: counter(
                &mut r,
                "hfms_model_unloads",
                "Models unloaded, by cause (request, expired, evicted)",
            ),
            cache_requests: counter(
                &mut r,
                "hfms_response_cache_requests",
                "Cacheable requests by result: hit, miss, bypass (Cache-Control)",
            ),
            cache_errors: counter(
                &mut r,
                "hfms_response_cache_errors",
                "Response cache operations that failed or timed out (served without the cache)",
            ),
            rate_limited: counter(
                &mut r,
                "hfms_rate_limited_requests",
                "Requests refused (429) by a key's limit, by kind (requests, tokens, concurrency, budget)",
            ),
            key_requests: counter(
                &mut r,
                "hfms_key_requests",
                "Inference requests per API key id (`-`: no key; `other`: past 1000 keys) and outcome",
            ),
            key_tokens: counter(
                &mut r,
                "hfms_key_tokens",
                "Tokens per API key id, by kind: prompt, cached (part of prompt), completion",
            ),
            key_cost: {
                let f = Family::<KeyLabels, Counter<f64, AtomicU64>>::default();
                r.register("hfms_key_cost", "Cost per API key id, priced by --price", f.clone());
                f
            },
            key_series: Mutex::new(std::collections::HashSet::new()),
            rate_limit_store_errors: counter(
                &mut r,
                "hfms_rate_limit_store_errors",
                "Rate-limit decisions Redis failed to make in time (--rate-limit-on-redis-error decided)",
            ),
            cache_bytes,
            circuit: {
                let f = Family::<ModelLabels, Gauge>::default();
                r.register(
                    "hfms_circuit_state",
                    "Circuit breaker per model: 0 closed, 1 half-open, 2 open",
                    f.clone(),
                );
                f
            },
            circuit_opened: counter(&mut r, "hfms_circuit_opened", "Times a model's circuit opened"),
            http_requests: counter(
                &mut r,
                "hfms_http_requests",
                "HTTP requests by method, route and status",
            ),
            http_seconds,
            errors: counter(
                &mut r,
                "hfms_errors",
                "Error responses and stream errors by type, code and model",
            ),
            last_errors: Mutex::new(VecDeque::with_capacity(LAST_ERRORS)),
            manager,
            registry: r,
        })
    }

    /// The manager whose models and devices the gauges describe.
    pub fn attach(&self, manager: &Arc<ModelManager>) {
        let _ = self.manager.set(Arc::downgrade(manager));
    }

    /// The registry in the OpenMetrics text format.
    pub fn openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The registry in Prometheus' classic text format (0.0.4).
    pub fn prometheus_text(&self) -> String {
        to_prometheus_text(&self.openmetrics())
    }

    pub fn attach_cache(&self, cache: &Arc<crate::cache::ResponseCache>) {
        let _ = self.cache_bytes.set(Arc::downgrade(cache));
    }

    pub fn cache_request(&self, model: &str, result: &str) {
        self.cache_requests
            .get_or_create(&CacheLabels {
                model: model.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn rate_limited(&self, kind: &str) {
        self.rate_limited
            .get_or_create(&LimitLabels { kind: kind.to_string() })
            .inc();
    }

    /// A request's usage, per key.
    pub fn key_usage(&self, r: &hfms_access::usage::UsageRecord) {
        let id = r.key_id.as_deref().unwrap_or("-");
        let key_id = {
            let mut seen = self.key_series.lock().unwrap_or_else(|p| p.into_inner());
            if seen.contains(id) || (seen.len() < MAX_KEY_SERIES && seen.insert(id.to_string())) {
                id.to_string()
            } else {
                "other".to_string()
            }
        };
        let outcome = if r.status >= 400 { "error" } else { "success" };
        self.key_requests
            .get_or_create(&KeyRequestLabels {
                key_id: key_id.clone(),
                outcome: outcome.to_string(),
            })
            .inc();
        for (kind, n) in [
            ("prompt", r.prompt_tokens),
            ("cached", r.cached_tokens),
            ("completion", r.completion_tokens),
        ] {
            self.key_tokens
                .get_or_create(&KeyTokenLabels {
                    key_id: key_id.clone(),
                    kind: kind.to_string(),
                })
                .inc_by(n);
        }
        if r.cost > 0.0 {
            self.key_cost.get_or_create(&KeyLabels { key_id }).inc_by(r.cost);
        }
    }

    pub fn rate_limit_store_error(&self) {
        self.rate_limit_store_errors
            .get_or_create(&LimitLabels {
                kind: "redis".to_string(),
            })
            .inc();
    }

    pub fn cache_error(&self, backend: &str, op: &str) {
        self.cache_errors
            .get_or_create(&CacheErrorLabels {
                backend: backend.to_string(),
                op: op.to_string(),
            })
            .inc();
    }

    pub fn circuit_state(&self, model: &str, level: i64) {
        self.circuit
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .set(level);
    }

    pub fn circuit_opened(&self, model: &str) {
        self.circuit_opened
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .inc();
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// An error response or stream error: counted, and kept among the
    /// last 50 for `/status`.
    pub fn error(&self, record: ErrorRecord) {
        self.errors
            .get_or_create(&ErrorLabels {
                r#type: record.kind.clone(),
                code: record.code.clone().unwrap_or_default(),
                model: record.model.clone().unwrap_or_default(),
            })
            .inc();
        let mut last = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() == LAST_ERRORS {
            last.pop_front();
        }
        last.push_back(record);
    }

    /// The last errors, newest last.
    pub fn last_errors(&self) -> Vec<ErrorRecord> {
        self.last_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// `GET /metrics`: OpenMetrics when the scraper accepts it (Prometheus asks
/// for it first), else Prometheus' classic text format.
#[utoipa::path(get, path = "/metrics", tag = "Health",
    responses((status = 200, description = "Prometheus metrics (text format 0.0.4, or OpenMetrics 1.0.0 on Accept)",
               content((String = "text/plain"), (String = "application/openmetrics-text"))),
              crate::error::GetErrors))]
pub async fn scrape(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let accepts_om = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let m = state.metrics();
    if accepts_om {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            m.openmetrics(),
        )
            .into_response()
    } else {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            m.prometheus_text(),
        )
            .into_response()
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// OpenMetrics → Prometheus text: counter families are named after their
/// samples (`x_total`), and `# EOF` and `# UNIT` lines go.
pub fn to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<&str> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(h) = pending_help.take() {
                out.push_str(h);
                out.push('\n');
            }
            pending_help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let counter = kind == "counter";
            if let Some(h) = pending_help.take() {
                match (counter, h.strip_prefix("# HELP ").and_then(|r| r.split_once(' '))) {
                    (true, Some((hname, text))) if hname == name => {
                        out.push_str(&format!("# HELP {name}_total {text}\n"));
                    }
                    _ => {
                        out.push_str(h);
                        out.push('\n');
                    }
                }
            }
            if counter {
                out.push_str(&format!("# TYPE {name}_total counter\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        if let Some(h) = pending_help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(h) = pending_help {
        out.push_str(h);
        out.push('\n');
    }
    out
}

// ---- the engine's hooks ---------------------------------------------------------

/// One generation model's metric handles.
struct GenerationMetrics {
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    prefill: Histogram,
    decode: Histogram,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
    step_tokens: Histogram,
    step_sequences: Histogram,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    preemptions: Counter,
    prefix_queries: Counter,
    prefix_hits: Counter,
    success: Family<FinishLabels, Counter>,
    model: String,
}

impl GenerationObserver for GenerationMetrics {
    fn step(&self, sequences: usize, tokens: usize) {
        self.step_sequences.observe(sequences as f64);
        self.step_tokens.observe(tokens as f64);
    }

    fn prompt_tokens(&self, n: usize) {
        self.prompt_tokens.inc_by(n as u64);
    }

    fn token(&self, since_previous: Option<Duration>) {
        self.generation_tokens.inc();
        if let Some(d) = since_previous {
            self.itl.observe(d.as_secs_f64());
        }
    }

    fn first_token(&self, ttft: Duration) {
        self.ttft.observe(ttft.as_secs_f64());
    }

    fn finished(&self, s: &FinishedSequence) {
        self.success
            .get_or_create(&FinishLabels {
                model: self.model.clone(),
                finished_reason: s.finish.as_str().to_string(),
            })
            .inc();
        self.e2e.observe(s.e2e.as_secs_f64());
        for (h, d) in [
            (&self.queue, s.queue),
            (&self.prefill, s.prefill),
            (&self.decode, s.decode),
        ] {
            if let Some(d) = d {
                h.observe(d.as_secs_f64());
            }
        }
        self.request_prompt_tokens.observe(s.prompt_tokens as f64);
        self.request_generation_tokens.observe(s.generation_tokens as f64);
    }

    fn preempted(&self) {
        self.preemptions.inc();
    }

    fn prefix_lookup(&self, queried: u64, hit: u64) {
        self.prefix_queries.inc_by(queried);
        self.prefix_hits.inc_by(hit);
    }
}

/// One embedding model's metric handles.
struct EmbeddingMetrics {
    requests: Counter,
    inputs: Counter,
    tokens: Counter,
    cancelled: Counter,
    batch_inputs: Histogram,
    batch_tokens: Histogram,
    batch_seconds: Histogram,
    queue: Histogram,
}

impl EmbeddingObserver for EmbeddingMetrics {
    fn batch(&self, inputs: usize, tokens: usize, seconds: f64) {
        self.batch_inputs.observe(inputs as f64);
        self.batch_tokens.observe(tokens as f64);
        self.batch_seconds.observe(seconds);
    }

    fn request(&self, inputs: usize, tokens: usize, queue: Duration) {
        self.requests.inc();
        self.inputs.inc_by(inputs as u64);
        self.tokens.inc_by(tokens as u64);
        self.queue.observe(queue.as_secs_f64());
    }

    fn cancelled(&self) {
        self.cancelled.inc();
    }
}

impl Observers for Metrics {
    fn generation(&self, model: &str) -> Arc<dyn GenerationObserver> {
        let l = ModelLabels {
            model: model.to_string(),
        };
        let h = |f: &Hist| f.get_or_create(&l).clone();
        let c = |f: &Family<ModelLabels, Counter>| f.get_or_create(&l).clone();
        Arc::new(GenerationMetrics {
            ttft: h(&self.ttft),
            itl: h(&self.itl),
            e2e: h(&self.e2e),
            queue: h(&self.queue),
            prefill: h(&self.prefill),
            decode: h(&self.decode),
            request_prompt_tokens: h(&self.request_prompt_tokens),
            request_generation_tokens: h(&self.request_generation_tokens),
            step_tokens: h(&self.step_tokens),
            step_sequences: h(&self.step_sequences),
            prompt_tokens: c(&self.prompt_tokens),
            generation_tokens: c(&self.generation_tokens),
            preemptions: c(&self.preemptions),
            prefix_queries: c(&self.prefix_queries),
            prefix_hits: c(&self.prefix_hits),
            success: self.success.clone(),
            model: model.to_string(),
        })
    }

    fn embedding(&self, model: &str) -> Arc<dyn EmbeddingObserver> {
        let l = ModelLabels {
            model: model.to_string(),
        };
        let h = |f: &Hist| f.get_or_create(&l).clone();
        let c = |f: &Family<ModelLabels, Counter>| f.get_or_create(&l).clone();
        Arc::new(EmbeddingMetrics {
            requests: c(&self.embed_requests),
            inputs: c(&self.embed_inputs),
            tokens: c(&self.embed_tokens),
            cancelled: c(&self.embed_cancelled),
            batch_inputs: h(&self.embed_batch_inputs),
            batch_tokens: h(&self.embed_batch_tokens),
            batch_seconds: h(&self.embed_batch_seconds),
            queue: h(&self.embed_queue),
        })
    }

    fn model_loaded(&self, model: &str, _device: &str, seconds: f64) {
        let l = ModelLabels {
            model: model.to_string(),
        };
        self.loads.get_or_create(&l).inc();
        self.load_seconds.get_or_create(&l).observe(seconds);
    }

    fn model_load_failed(&self, model: &str) {
        self.load_failures
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .inc();
    }

    fn model_unloaded(&self, model: &str, cause: UnloadCause) {
        self.unloads
            .get_or_create(&UnloadLabels {
                model: model.to_string(),
                cause: cause.as_str().to_string(),
            })
            .inc();
    }
}

// ---- gauges, read when scraped ------------------------------------------------------

struct Gauges {
    manager: Arc<OnceLock<Weak<ModelManager>>>,
    cache: Arc<OnceLock<Weak<crate::cache::ResponseCache>>>,
}

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gauges")
    }
}

/// A gauge family filled at scrape time.
fn gauge_family<L>(encoder: &mut DescriptorEncoder, name: &str, help: &str, values: &[(L, f64)]) -> std::fmt::Result
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    let family = Family::<L, Gauge<f64, AtomicU64>>::default();
    for (labels, v) in values {
        family.get_or_create(labels).set(*v);
    }
    let metric = encoder.encode_descriptor(name, help, None, family.metric_type())?;
    family.encode(metric)
}

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        if let Some(bytes) = self.cache.get().and_then(Weak::upgrade).and_then(|c| c.bytes()) {
            let g = Gauge::<f64, AtomicU64>::default();
            g.set(bytes as f64);
            let metric = encoder.encode_descriptor(
                "hfms_response_cache_bytes",
                "Bytes of responses the in-memory cache holds",
                None,
                g.metric_type(),
            )?;
            g.encode(metric)?;
        }
        let Some(manager) = self.manager.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let (mut running, mut waiting, mut kv, mut cached, mut loaded) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, m) in manager.loaded() {
            let l = ModelLabels { model: id };
            loaded.push((l.clone(), 1.0));
            match m.as_ref() {
                LoadedModel::Generation(g) => {
                    let st = g.generator.stats();
                    running.push((l.clone(), st.running.load(Ordering::Relaxed) as f64));
                    waiting.push((l.clone(), st.waiting.load(Ordering::Relaxed) as f64));
                    let total = st.kv_total_blocks.load(Ordering::Relaxed).max(1) as f64;
                    kv.push((l.clone(), st.kv_used_blocks.load(Ordering::Relaxed) as f64 / total));
                    cached.push((l, st.prefix_cached_blocks.load(Ordering::Relaxed) as f64));
                }
                LoadedModel::Embedding(b) => {
                    waiting.push((l, b.stats().waiting.load(Ordering::Relaxed) as f64));
                }
            }
        }
        gauge_family(
            &mut encoder,
            "hfms_num_requests_running",
            "Sequences in the running batch",
            &running,
        )?;
        gauge_family(
            &mut encoder,
            "hfms_num_requests_waiting",
            "Requests waiting to start (generation) or be batched (embeddings)",
            &waiting,
        )?;
        gauge_family(
            &mut encoder,
            "hfms_kv_cache_usage_ratio",
            "Share of the KV cache blocks held by sequences (0-1)",
            &kv,
        )?;
        gauge_family(
            &mut encoder,
            "hfms_prefix_cache_blocks",
            "KV blocks the prefix cache holds",
            &cached,
        )?;
        gauge_family(&mut encoder, "hfms_model_loaded", "1 for each model in memory", &loaded)?;
        let devices = manager.devices();
        let per = |f: fn(&hfms_engine::manager::DeviceStatus) -> f64| -> Vec<(DeviceLabels, f64)> {
            devices
                .iter()
                .map(|d| {
                    (
                        DeviceLabels {
                            device: d.device.to_string(),
                        },
                        f(d),
                    )
                })
                .collect()
        };
        gauge_family(
            &mut encoder,
            "hfms_device_resident_bytes",
            "Bytes reserved by the models on a device",
            &per(|d| d.resident_bytes as f64),
        )?;
        gauge_family(
            &mut encoder,
            "hfms_device_budget_bytes",
            "Bytes models may use on a device",
            &per(|d| d.budget_bytes as f64),
        )?;
        gauge_family(
            &mut encoder,
            "hfms_device_resident_models",
            "Models on a device",
            &per(|d| d.resident_models as f64),
        )?;
        gauge_family(
            &mut encoder,
            "hfms_device_requests_in_flight",
            "Requests holding a model on a device",
            &per(|d| d.in_flight as f64),
        )?;
        Ok(())
    }
}

/// A request's timing for the HTTP metrics, finished when the response body
/// ends or is dropped (the client left).
pub struct HttpTimer {
    pub metrics: Arc<Metrics>,
    pub method: String,
    pub route: String,
    pub status: u16,
    pub started: Instant,
}

impl Drop for HttpTimer {
    fn drop(&mut self) {
        self.metrics.http_request(
            &self.method,
            &self.route,
            self.status,
            self.started.elapsed().as_secs_f64(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_after_their_samples() {
        let m = Metrics::new();
        m.http_request("GET", "/health", 200, 0.001);
        let om = m.openmetrics();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE hfms_http_requests counter"), "{om}");
        let text = m.prometheus_text();
        assert!(!text.contains("# EOF"));
        assert!(text.contains("# TYPE hfms_http_requests_total counter"), "{text}");
        assert!(text.contains("# HELP hfms_http_requests_total HTTP requests"), "{text}");
        assert!(
            text.contains("hfms_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE hfms_http_request_duration_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn the_last_errors_are_bounded() {
        let m = Metrics::new();
        for i in 0..120 {
            m.error(ErrorRecord {
                time: 0.0,
                request_id: format!("r{i}"),
                status: 400,
                kind: "invalid_request_error".into(),
                code: None,
                model: Some("m".into()),
                message: "bad".into(),
            });
        }
        let last = m.last_errors();
        assert_eq!(last.len(), LAST_ERRORS);
        assert_eq!(last.last().unwrap().request_id, "r119");
        assert!(
            m.prometheus_text()
                .contains("hfms_errors_total{type=\"invalid_request_error\",code=\"\",model=\"m\"} 120")
        );
    }
}
