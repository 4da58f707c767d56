//! Configuration: one struct per command, and each setting one field with
//! its flag, its `HFMS_*` environment variable, its default and its help in
//! one place (defaults the engine and server also use are their constants).
//! An optional TOML file (`--config`) holds the same settings under the
//! same names; it fills whatever the command line and the environment left
//! at its default. Precedence: flag > environment > file > default.
//! `hfms serve --print-config` shows the effective settings.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use clap::parser::{ArgMatches, ValueSource};
use hfms_engine::embed::batcher::BatcherConfig;
use hfms_engine::generate::SchedulerConfig;
use hfms_server::breaker::BreakerConfig;
use hfms_server::cache::CacheConfig;
use hfms_server::downloads::DownloadConfig;
use hfms_server::state::{RequestLimits, ServerConfig};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Where models come from (shared by `serve` and `discover`).
#[derive(Debug, Clone, Args, Default, Serialize, Deserialize)]
pub struct ModelArgs {
    /// Folders to scan for models (`org/name/` layout, .gguf files).
    #[arg(
        long = "models-dir",
        env = "HFMS_MODELS_DIR",
        value_delimiter = ',',
        default_value = "models"
    )]
    pub models_dirs: Vec<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    pub cache: HubCacheArgs,

    /// Do not scan the Hugging Face hub cache.
    #[arg(long, env = "HFMS_NO_HF_CACHE")]
    pub no_hf_cache: bool,

    /// Serve a model file or folder explicitly: `PATH` or `ID=PATH` (in the
    /// TOML file, a table `[models]` of id = path).
    #[arg(long = "model", env = "HFMS_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,

    /// Another name for a model: `ALIAS=ID` (smollm2 and all-minilm are
    /// built in; in the TOML file, a table `[aliases]`).
    #[arg(long = "alias", env = "HFMS_ALIASES", value_delimiter = ',')]
    pub aliases: Vec<String>,

    /// TOML configuration file.
    #[arg(long, env = "HFMS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The Hugging Face hub cache (shared by `serve`, `discover`, `pull`, `ls`
/// and `rm`).
#[derive(Debug, Clone, Args, Default, Serialize, Deserialize)]
pub struct HubCacheArgs {
    /// The Hugging Face hub cache to scan and pull into [default:
    /// $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub].
    #[arg(long, env = "HFMS_HF_CACHE")]
    pub hf_cache: Option<PathBuf>,
}

impl HubCacheArgs {
    pub fn dir(&self) -> Result<PathBuf> {
        self.hf_cache
            .clone()
            .or_else(hfms_engine::discover::default_hf_cache)
            .context("no hub cache folder: set --hf-cache, HF_HUB_CACHE or HF_HOME")
    }
}

/// Limits on what pulls keep on disk (shared by `serve` and `pull`).
#[derive(Debug, Clone, Args, Default, Serialize, Deserialize)]
pub struct DownloadArgs {
    /// Keep the hub cache under this many GB (10^9 bytes): before a pull,
    /// the least recently used repos are removed (`serve` never removes one
    /// it has loaded or pinned; `hfms pull` cannot know what a running
    /// server has loaded). No limit when not given.
    #[arg(long, env = "HFMS_MAX_CACHE_GB", value_parser = parse_cache_gb)]
    pub max_cache_gb: Option<f64>,
}

fn parse_cache_gb(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e6 => Ok(v),
        _ => Err(format!("{s:?}: a number of GB above 0 (at most 1000000)")),
    }
}

impl DownloadArgs {
    pub fn max_cache_bytes(&self) -> Option<u64> {
        self.max_cache_gb.map(|g| (g * 1e9) as u64)
    }
}

/// Where keys (and, later, usage) are kept (shared by `serve` and `keys`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct StoreArgs {
    /// Folder for local state: the default SQLite database.
    #[arg(long, env = "HFMS_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// The database of API keys: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB`
    /// (replicas share one Postgres) [default: sqlite://DATA_DIR/hfms.db].
    #[arg(long, env = "HFMS_DATABASE_URL")]
    pub database_url: Option<String>,
}

impl StoreArgs {
    pub fn database_url(&self) -> Result<String> {
        let url = match &self.database_url {
            Some(u) => u.trim().to_string(),
            None => format!("sqlite://{}", self.data_dir.join("hfms.db").display()),
        };
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("--database-url: sqlite://PATH or postgres://… expected");
        }
        Ok(url)
    }
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub models: ModelArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub store: StoreArgs,

    /// The bootstrap admin key (any string of 16 characters or more). Prefer
    /// the environment variable or --admin-key-file to a flag, which other
    /// users of the machine can see. With it, or once any API key exists,
    /// every request but /health and /ready needs a key.
    #[arg(long, env = "HFMS_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// A file holding the bootstrap admin key (surrounding whitespace ignored).
    #[arg(long, env = "HFMS_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,

    /// Serve a non-loopback address without API keys. Without this, hfms
    /// refuses to start open to the network.
    #[arg(long, env = "HFMS_NO_AUTH")]
    pub no_auth: bool,

    /// A Redis for per-key rate limits (`redis://[:PASSWORD@]HOST:PORT[/DB]`),
    /// so that replicas enforce one limit; in process when not given.
    #[arg(long, env = "HFMS_REDIS_URL")]
    pub redis_url: Option<String>,

    /// When Redis cannot answer a rate-limit decision within
    /// --rate-limit-timeout-ms: allow the request (with a warning and
    /// `hfms_rate_limit_store_errors_total`) or deny it (429).
    #[arg(long, env = "HFMS_RATE_LIMIT_ON_REDIS_ERROR", default_value = "allow",
          value_parser = ["allow", "deny"])]
    pub rate_limit_on_redis_error: String,

    /// Milliseconds a Redis rate-limit decision may take.
    #[arg(long, env = "HFMS_RATE_LIMIT_TIMEOUT_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub rate_limit_timeout_ms: u64,

    /// Seconds a verified key is trusted before the database is read again
    /// (a key revoked on another replica stops working within this).
    #[arg(long, env = "HFMS_AUTH_CACHE_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub auth_cache_seconds: u64,

    /// Milliseconds between commits of usage records (one transaction
    /// each); a crash loses at most this much, a graceful stop nothing.
    #[arg(long, env = "HFMS_USAGE_COMMIT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub usage_commit_ms: u64,

    /// A model's prices in currency units per million tokens:
    /// `MODEL=INPUT,CACHED_INPUT,OUTPUT` (e.g. `smollm2=0.1,0.05,0.2`);
    /// usage records carry the cost (0 for models without a price). In the
    /// TOML file, a table `[prices]` of model = "INPUT,CACHED,OUTPUT".
    #[arg(long = "price", env = "HFMS_PRICES", value_delimiter = ';')]
    pub prices: Vec<String>,

    /// Address to listen on.
    #[arg(long, env = "HFMS_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "HFMS_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Compute threads for model maths (0 = one per available core).
    #[arg(long, env = "HFMS_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// KV cache per generation model, in MiB.
    #[arg(long, env = "HFMS_KV_CACHE_MB", default_value_t = (SchedulerConfig::DEFAULT.kv_budget_bytes >> 20) as u32,
          value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    pub kv_cache_mb: u32,

    /// Most tokens in one model step (prefill chunk + decodes).
    #[arg(long, env = "HFMS_MAX_BATCH_TOKENS", default_value_t = SchedulerConfig::DEFAULT.max_batch_tokens,
          value_parser = positive)]
    pub max_batch_tokens: usize,

    /// Most sequences generating at once per model.
    #[arg(long, env = "HFMS_MAX_RUNNING", default_value_t = SchedulerConfig::DEFAULT.max_running,
          value_parser = positive)]
    pub max_running: usize,

    /// Requests that may wait per model before new ones get 503
    /// server_overloaded.
    #[arg(long, env = "HFMS_MAX_WAITING", default_value_t = SchedulerConfig::DEFAULT.max_waiting,
          value_parser = positive)]
    pub max_waiting: usize,

    /// Largest request body, in MiB.
    #[arg(long, env = "HFMS_MAX_BODY_MB", default_value_t = (ServerConfig::DEFAULT.max_body_bytes >> 20) as u32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_body_mb: u32,

    /// Most inputs in one embeddings request.
    #[arg(long, env = "HFMS_MAX_EMBEDDING_INPUTS", default_value_t = RequestLimits::DEFAULT.max_embedding_inputs,
          value_parser = positive)]
    pub max_embedding_inputs: usize,

    /// Most tokens (after truncation to the model's length) in one
    /// embeddings request.
    #[arg(long, env = "HFMS_MAX_EMBEDDING_TOKENS", default_value_t = RequestLimits::DEFAULT.max_embedding_tokens,
          value_parser = positive)]
    pub max_embedding_tokens: usize,

    /// Largest `n` (choices per prompt).
    #[arg(long, env = "HFMS_MAX_N", default_value_t = RequestLimits::DEFAULT.max_n, value_parser = positive)]
    pub max_n: usize,

    /// Most choices in one completions request (prompts × n).
    #[arg(long, env = "HFMS_MAX_CHOICES", default_value_t = RequestLimits::DEFAULT.max_choices,
          value_parser = positive)]
    pub max_choices: usize,

    /// Longest stop sequence, in bytes.
    #[arg(long, env = "HFMS_MAX_STOP_BYTES", default_value_t = RequestLimits::DEFAULT.max_stop_bytes,
          value_parser = positive)]
    pub max_stop_bytes: usize,

    /// Most `logit_bias` entries in one request.
    #[arg(long, env = "HFMS_MAX_LOGIT_BIAS", default_value_t = RequestLimits::DEFAULT.max_logit_bias)]
    pub max_logit_bias: usize,

    /// Most tokens one choice may generate [default: the rest of the
    /// model's context].
    #[arg(long, env = "HFMS_MAX_COMPLETION_TOKENS", value_parser = positive)]
    pub max_completion_tokens: Option<usize>,

    /// Models to load at start-up (ids or aliases; `all` for every
    /// servable model). /ready answers 200 once they are loaded, 503 with
    /// the reason if one fails.
    #[arg(long = "preload", env = "HFMS_PRELOAD", value_delimiter = ',')]
    pub preload: Vec<String>,

    /// Log format: auto (JSON unless stderr is a terminal), json, text.
    #[arg(long, env = "HFMS_LOG_FORMAT", default_value = "auto",
          value_parser = ["auto", "json", "text"])]
    pub log_format: String,

    /// Export traces (request, queue, prefill, decode, embed, model_load
    /// spans) over OTLP/HTTP to this collector, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is added unless the URL ends with it). Off when not
    /// given. OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
    /// OTEL_EXPORTER_OTLP_HEADERS and OTEL_BSP_* are honoured.
    #[arg(long, env = "HFMS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Fraction of new traces exported, 0 to 1. A request with a
    /// `traceparent` follows its caller's sampling decision.
    #[arg(long, env = "HFMS_OTLP_SAMPLE_RATIO", default_value_t = 1.0, value_parser = probability)]
    pub otlp_sample_ratio: f64,

    /// Run a model on a given device: `MODEL=DEVICE` (e.g.
    /// `smollm2=cuda:1`, `all-minilm=cpu`); loading fails clearly if that
    /// device cannot take it. In the TOML file, a table `[devices]`.
    #[arg(long = "device", env = "HFMS_DEVICES", value_delimiter = ',')]
    pub devices: Vec<String>,

    /// A Jinja chat template file for a generation model: `MODEL=FILE`
    /// replaces that model's own template; a bare `FILE` serves every
    /// generation model that has none (a base model such as gpt2), which
    /// otherwise answers chat requests with a 400. Rendered as transformers
    /// renders `apply_chat_template` (messages, add_generation_prompt,
    /// bos_token, eos_token). Checked at start: readable UTF-8, at most 1
    /// MiB, compiles. In the TOML file, a table `[chat_templates]` (with
    /// `"*"` for the bare one; `*=FILE` on the command line too, for a path
    /// that holds `=`; a path with `,` cannot be given here).
    #[arg(long = "chat-template", env = "HFMS_CHAT_TEMPLATES", value_delimiter = ',')]
    pub chat_templates: Vec<String>,

    /// Platforms no model may use (cuda, rocm, metal, openvino, qnn).
    #[arg(long = "forbid-platform", env = "HFMS_FORBID_PLATFORMS", value_delimiter = ',')]
    pub forbid_platforms: Vec<String>,

    /// How long a model stays loaded after its last request: a duration
    /// ("5m", "1h") or seconds; 0 unloads after each request; negative (or
    /// over 100 years) keeps models loaded (memory pressure still evicts the
    /// least recently used idle ones). Requests may override it per model
    /// (`keep_alive`).
    #[arg(long, env = "HFMS_KEEP_ALIVE", allow_hyphen_values = true, default_value = "-1")]
    pub keep_alive: String,

    /// Models that are never evicted or expired (ids or aliases).
    #[arg(long = "pin", env = "HFMS_PIN", value_delimiter = ',')]
    pub pin: Vec<String>,

    /// Memory models may use per device, in MiB: `cpu=8000,cuda:0=40000`
    /// (in the TOML file, a table `[memory_budget]`). Devices not named
    /// get `--memory-fraction` of what was free at start.
    #[arg(long = "memory-budget", env = "HFMS_MEMORY_BUDGET", value_delimiter = ',')]
    pub memory_budget: Vec<String>,

    /// Fraction of each device's free memory (at start) models may use when
    /// no budget is given.
    #[arg(long, env = "HFMS_MEMORY_FRACTION", default_value_t = 0.8, value_parser = fraction)]
    pub memory_fraction: f64,

    /// Embeddings: most tokens in one encoder pass (requests are batched
    /// together up to this; a larger request is spread over several).
    #[arg(long, env = "HFMS_EMBED_MAX_BATCH_TOKENS", default_value_t = BatcherConfig::DEFAULT.max_batch_tokens,
          value_parser = positive)]
    pub embed_max_batch_tokens: usize,

    /// Embeddings: how long (ms) a batch's first request waits for others
    /// (0: a batch takes what is queued when the encoder is free; under load
    /// that is many requests, and a quiet server adds no wait).
    #[arg(long, env = "HFMS_EMBED_MAX_WAIT_MS", default_value_t = BatcherConfig::DEFAULT.max_wait.as_millis() as u64)]
    pub embed_max_wait_ms: u64,

    /// A request for a model that is not on disk, named `org/name` (or
    /// `org/name:QUANT`), pulls it from the Hugging Face Hub into the hub
    /// cache, then loads it. Off by default: anyone who may call the API
    /// could otherwise fill the disk.
    #[arg(long, env = "HFMS_ALLOW_DOWNLOAD")]
    pub allow_download: bool,

    /// Seconds a request waits for its model's download (--allow-download)
    /// before a 503 with the progress; the download goes on.
    #[arg(long, env = "HFMS_DOWNLOAD_TIMEOUT", default_value_t = DownloadConfig::DEFAULT.wait.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub download_timeout: u64,

    #[command(flatten)]
    #[serde(flatten)]
    pub download: DownloadArgs,

    /// Seconds a request may take before it is cancelled with 504.
    #[arg(long, env = "HFMS_REQUEST_TIMEOUT", default_value_t = ServerConfig::DEFAULT.request_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub request_timeout: u64,

    /// Seconds a streamed response waits for a client that stopped reading
    /// before its work is cancelled.
    #[arg(long, env = "HFMS_WRITE_TIMEOUT", default_value_t = ServerConfig::DEFAULT.write_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub write_timeout: u64,

    /// Seconds requests in flight may take to finish after SIGTERM/SIGINT;
    /// then they are cancelled (streams get an error event) and the
    /// process exits.
    #[arg(long, env = "HFMS_SHUTDOWN_GRACE", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub shutdown_grace: u64,

    /// Turn the response cache off (deterministic requests — temperature
    /// 0 or a seed, and embeddings — are otherwise answered from it).
    #[arg(long, env = "HFMS_NO_RESPONSE_CACHE")]
    pub no_response_cache: bool,

    /// Seconds a cached answer lives.
    #[arg(long, env = "HFMS_CACHE_TTL", default_value_t = CacheConfig::DEFAULT.ttl.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub cache_ttl: u64,

    /// In-memory cache: the most MiB of stored answers (least recently used
    /// go first).
    #[arg(long, env = "HFMS_CACHE_MAX_MB", default_value_t = CacheConfig::DEFAULT.max_bytes >> 20,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub cache_max_mb: u64,

    /// A Redis to share the cache between replicas (`redis://[:PASSWORD@]HOST:PORT[/DB]`);
    /// in-memory when not given.
    #[arg(long, env = "HFMS_CACHE_URL")]
    pub cache_url: Option<String>,

    /// Milliseconds a Redis operation may take before the request goes on
    /// without the cache.
    #[arg(long, env = "HFMS_CACHE_TIMEOUT_MS", default_value_t = CacheConfig::DEFAULT.timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub cache_timeout_ms: u64,

    /// Circuit breakers: server failures of a model (engine errors,
    /// timeouts) within --breaker-window that open its circuit (503
    /// model_unavailable until a probe succeeds); a failed load opens it
    /// at once. 0 turns breakers off.
    #[arg(long, env = "HFMS_BREAKER_FAILURES", default_value_t = BreakerConfig::DEFAULT.failures)]
    pub breaker_failures: usize,

    /// Seconds of outcomes the breaker counts failures over.
    #[arg(long, env = "HFMS_BREAKER_WINDOW", default_value_t = BreakerConfig::DEFAULT.window.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub breaker_window: u64,

    /// Seconds an opened circuit waits before a probe; doubles at each
    /// reopening, up to --breaker-max-open-seconds.
    #[arg(long, env = "HFMS_BREAKER_OPEN_SECONDS", default_value_t = BreakerConfig::DEFAULT.open_for.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub breaker_open_seconds: u64,

    #[arg(long, env = "HFMS_BREAKER_MAX_OPEN_SECONDS", default_value_t = BreakerConfig::DEFAULT.max_open_for.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub breaker_max_open_seconds: u64,

    /// Origins allowed to call the API from a browser (CORS), e.g.
    /// `https://app.example.com`; `*` for any. Off when empty.
    #[arg(long = "cors-allow-origin", env = "HFMS_CORS_ALLOW_ORIGINS", value_delimiter = ',')]
    pub cors_allow_origins: Vec<String>,

    /// `Host` names requests may carry (DNS-rebinding protection); `*` for
    /// any [default: when bound to a loopback address, localhost,
    /// 127.0.0.1 and [::1]; otherwise any].
    #[arg(long = "allowed-host", env = "HFMS_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Quantise activations once (8-bit, as llama.cpp does) instead of
    /// twice (~16-bit, the default): faster prefill, logits less exact.
    #[arg(long, env = "HFMS_FAST_ACTIVATIONS")]
    pub fast_activations: bool,

    /// How CPU encoders (embedding models) hold their f32 layer weights:
    /// f32; f16 (a quarter less memory for all-MiniLM-L6-v2, faster single
    /// sentences, products in f32); bf16 (the same memory, activations
    /// rounded to bf16 too: with AVX512_BF16 ~1.7x the f32 GEMM on batches,
    /// slower than f32 without it). all-MiniLM-L6-v2 against
    /// sentence-transformers: worst cosine 0.99999 (f32, f16), 0.99997 (bf16).
    #[arg(long, env = "HFMS_ENCODER_WEIGHTS", default_value = "f32",
          value_parser = ["f32", "f16", "bf16"])]
    pub encoder_weights: String,

    /// Serve the admin dashboard's files from this folder (re-read on every
    /// request) instead of the copies built into the binary: for working
    /// on the UI (`crates/server/assets/admin`).
    #[arg(long, env = "HFMS_ADMIN_ASSETS_DIR", hide = true)]
    pub admin_assets_dir: Option<PathBuf>,

    /// Print the effective settings (flags, environment, file, defaults;
    /// secrets redacted) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Exit when standard input closes: lets a supervising process (a test
    /// harness) end the server by simply going away.
    #[arg(long, env = "HFMS_EXIT_ON_STDIN_EOF", hide = true)]
    pub exit_on_stdin_eof: bool,
}

/// Command-line switches that are not settings: never read from the file,
/// never printed.
const NOT_SETTINGS: [&str; 3] = ["config", "print_config", "exit_on_stdin_eof"];

fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(e.to_string()),
    }
}

fn probability(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        Ok(f) => Err(format!("must be between 0 and 1, got {f}")),
        Err(e) => Err(e.to_string()),
    }
}

fn fraction(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        Ok(f) => Err(format!("must be in (0, 1], got {f}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Fill every setting of `args` that the command line and the environment
/// left at its default from the TOML file at `path` (same names as the
/// fields). A table where a list of `NAME=VALUE` is expected becomes that
/// list. Unknown names are an error, as are values of the wrong type.
/// Each value also passes its flag's own parser (ranges, allowed values), as
/// it would on the command line.
/// `elsewhere`: names of another command's settings, ignored here.
pub fn with_file<T: Args + Serialize + DeserializeOwned>(
    args: T,
    matches: &ArgMatches,
    path: Option<&Path>,
    elsewhere: &[String],
) -> Result<T> {
    let Some(path) = path else { return Ok(args) };
    let cmd = T::augment_args(clap::Command::new("settings"));
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut current = serde_json::to_value(&args)?;
    let fields = current.as_object_mut().context("settings are not a table")?;
    for (key, value) in table {
        let slot = match fields.get(&key) {
            Some(slot) if !NOT_SETTINGS.contains(&key.as_str()) => slot,
            None if elsewhere.contains(&key) => continue,
            _ => bail!("{}: unknown setting {key:?}", path.display()),
        };
        let given = matches!(
            matches.value_source(&key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let mut v = serde_json::to_value(value)?;
        if let (serde_json::Value::Array(_), serde_json::Value::Object(map)) = (slot, &v) {
            v = serde_json::Value::Array(
                map.iter()
                    .map(|(k, x)| match x {
                        serde_json::Value::String(s) => format!("{k}={s}").into(),
                        other => format!("{k}={other}").into(),
                    })
                    .collect(),
            );
        }
        check_with_flag_parser(&cmd, &key, &v).with_context(|| format!("{}: setting {key}", path.display()))?;
        // Each value alone must fit its field's type, so an error names it.
        let mut alone = serde_json::to_value(&args)?;
        alone[&key] = v.clone();
        serde_json::from_value::<T>(alone)
            .with_context(|| format!("{}: setting {key} has the wrong type", path.display()))?;
        fields.insert(key, v);
    }
    serde_json::from_value(current).with_context(|| format!("{}: a setting has the wrong type", path.display()))
}

/// Run a file's value for setting `key` (each element of a list) through
/// the parser its flag has on the command line: a file must not get past a
/// check the flag enforces. Switches (flags without a value) have none.
fn check_with_flag_parser(cmd: &clap::Command, key: &str, v: &serde_json::Value) -> Result<()> {
    use serde_json::Value;
    let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == key) else {
        return Ok(());
    };
    if !arg.get_action().takes_values() {
        return Ok(());
    }
    let text = |x: &Value| match x {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(x.to_string()),
        // Left to the type check that follows (nested lists, tables).
        _ => None,
    };
    let values: Vec<String> = match v {
        Value::Array(items) => items.iter().filter_map(text).collect(),
        other => text(other).into_iter().collect(),
    };
    // A one-flag command with only this flag's parser (its relations to
    // other flags do not apply to a single value).
    let flag = format!("--{}", arg.get_long().unwrap_or(key));
    let probe = clap::Command::new("settings").no_binary_name(true).arg(
        clap::Arg::new("value")
            .long("value")
            .value_parser(arg.get_value_parser().clone())
            .action(clap::ArgAction::Set),
    );
    for value in values {
        probe
            .clone()
            .try_get_matches_from([format!("--value={value}")])
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim().replace("--value <value>", &flag)))?;
    }
    Ok(())
}

/// The names of a command's settings (its argument ids).
pub fn setting_names<A: Args>() -> Vec<String> {
    A::augment_args(clap::Command::new("settings"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect()
}

/// Setting names whose values are secrets (printed redacted).
fn is_secret(name: &str) -> bool {
    ["key", "secret", "password", "token"]
        .iter()
        .any(|w| name.ends_with(w) || name.contains(&format!("{w}_")))
}

/// `scheme://user:password@host` → `scheme://user:<redacted>@host`.
pub fn redact_url(s: &str) -> String {
    if let Some((scheme, rest)) = s.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:<redacted>@{host}");
    }
    s.to_string()
}

/// The settings as TOML, secrets redacted: what `--print-config` shows
/// (and a file `--config` accepts back, minus the redactions).
pub fn to_toml<T: Serialize>(args: &T) -> Result<String> {
    let mut v = serde_json::to_value(args)?;
    if let Some(fields) = v.as_object_mut() {
        fields.retain(|name, x| !x.is_null() && !NOT_SETTINGS.contains(&name.as_str()));
        for (name, x) in fields.iter_mut() {
            if is_secret(name) {
                *x = "<redacted>".into();
            } else if let serde_json::Value::String(s) = x {
                *s = redact_url(s);
            } else if let serde_json::Value::Array(items) = x {
                for i in items.iter_mut() {
                    if let serde_json::Value::String(s) = i {
                        *s = redact_url(s);
                    }
                }
            }
        }
    }
    Ok(toml::to_string(&v)?)
}

fn parse_device(s: &str) -> Result<hfms_hardware::DeviceId> {
    s.parse().map_err(|e| anyhow::anyhow!("device {s:?}: {e}"))
}

fn split_pair<'a>(s: &'a str, what: &str) -> Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() => Ok((a.trim(), b.trim())),
        _ => bail!("{what} must look like NAME=VALUE, got {s:?}"),
    }
}

impl ModelArgs {
    /// The hub cache to scan and pull into; None with --no-hf-cache.
    pub fn hub_cache(&self) -> Option<PathBuf> {
        if self.no_hf_cache { None } else { self.cache.dir().ok() }
    }

    /// What discovery needs.
    pub fn discover_config(&self) -> Result<hfms_engine::discover::DiscoverConfig> {
        let hf_cache = self.hub_cache();
        let mut extra: Vec<(Option<String>, PathBuf)> = Vec::new();
        for m in &self.models {
            let (id, path) = match m.split_once('=') {
                Some((id, path)) => (Some(id.to_string()), PathBuf::from(path)),
                None => (None, PathBuf::from(m)),
            };
            if !path.exists() {
                bail!("model path {} does not exist", path.display());
            }
            extra.push((id, path));
        }
        let mut aliases = hfms_engine::discover::builtin_aliases();
        for a in &self.aliases {
            let (name, id) = split_pair(a, "--alias")?;
            aliases.insert(name.to_string(), id.to_string());
        }
        Ok(hfms_engine::discover::DiscoverConfig {
            models_dirs: self.models_dirs.clone(),
            hf_cache,
            extra,
            aliases,
        })
    }
}

impl ServeArgs {
    pub fn listen(&self) -> Result<SocketAddr> {
        let (host, port) = (&self.host, self.port);
        format!("{host}:{port}")
            .parse()
            .or_else(|_| format!("[{host}]:{port}").parse())
            .with_context(|| format!("invalid listen address {host}:{port}"))
    }

    pub fn keep_alive(&self) -> Result<hfms_engine::manager::KeepAlive> {
        hfms_engine::manager::KeepAlive::parse_str(&self.keep_alive).map_err(|e| anyhow::anyhow!("--keep-alive: {e}"))
    }

    /// device → bytes
    pub fn memory_budget(&self) -> Result<BTreeMap<hfms_hardware::DeviceId, u64>> {
        let mut b = BTreeMap::new();
        for entry in &self.memory_budget {
            let (d, mib) = split_pair(entry, "--memory-budget")?;
            let mib: u64 = mib
                .parse()
                .with_context(|| format!("--memory-budget {entry}: MiB must be a whole number"))?;
            let bytes = mib
                .checked_mul(1 << 20)
                .with_context(|| format!("--memory-budget {entry}: too large"))?;
            b.insert(parse_device(d)?, bytes);
        }
        Ok(b)
    }

    /// `--chat-template`: model name (id or alias) → template source, and
    /// the template for models without one. Each file is read and compiled
    /// here, so a bad one fails at start naming its flag.
    pub fn chat_templates(&self) -> Result<(BTreeMap<String, String>, Option<String>)> {
        const MAX_BYTES: u64 = 1 << 20;
        let read = |path: &str| -> Result<String> {
            let path = Path::new(path);
            let size = std::fs::metadata(path)
                .with_context(|| format!("--chat-template {}", path.display()))?
                .len();
            if size > MAX_BYTES {
                bail!("--chat-template {}: {size} bytes, more than 1 MiB", path.display());
            }
            let bytes = std::fs::read(path).with_context(|| format!("--chat-template {}", path.display()))?;
            let source = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("--chat-template {}: not UTF-8 text", path.display()))?;
            hfms_engine::tokenizer::chat_template::ChatTemplate::new(&source, "", "")
                .with_context(|| format!("--chat-template {}", path.display()))?;
            Ok(source)
        };
        let (mut by_model, mut default) = (BTreeMap::new(), None);
        for entry in &self.chat_templates {
            // `FILE` and `*=FILE` (the TOML table's form) are the fallback.
            let fallback = match entry.split_once('=') {
                None => Some(entry.trim()),
                Some((model, file)) if model.trim() == "*" => Some(file.trim()),
                Some(_) => None,
            };
            match fallback {
                Some("") => bail!("--chat-template: empty value {entry:?}"),
                Some(file) => {
                    if default.replace(read(file)?).is_some() {
                        bail!("--chat-template: more than one template for models without one");
                    }
                }
                None => {
                    let (model, file) = split_pair(entry, "--chat-template")?;
                    if by_model.insert(model.to_string(), read(file)?).is_some() {
                        bail!("--chat-template: two templates for {model}");
                    }
                }
            }
        }
        Ok((by_model, default))
    }

    /// model id or alias → device
    pub fn device_pins(&self) -> Result<BTreeMap<String, hfms_hardware::DeviceId>> {
        let mut pins = BTreeMap::new();
        for d in &self.devices {
            let (model, dev) = split_pair(d, "--device")?;
            pins.insert(model.to_string(), parse_device(dev)?);
        }
        Ok(pins)
    }

    pub fn forbidden(&self) -> Result<BTreeSet<hfms_hardware::Platform>> {
        self.forbid_platforms
            .iter()
            .map(|p| {
                p.parse::<hfms_hardware::Platform>()
                    .map_err(|e| anyhow::anyhow!("--forbid-platform {p}: {e}"))
            })
            .collect()
    }

    pub fn scheduler(&self) -> SchedulerConfig {
        SchedulerConfig {
            max_batch_tokens: self.max_batch_tokens,
            max_running: self.max_running,
            max_waiting: self.max_waiting,
            kv_budget_bytes: (self.kv_cache_mb as usize) << 20,
            ..SchedulerConfig::DEFAULT
        }
    }

    pub fn batcher(&self) -> BatcherConfig {
        BatcherConfig {
            max_batch_tokens: self.embed_max_batch_tokens,
            max_wait: Duration::from_millis(self.embed_max_wait_ms),
            max_waiting: self.max_waiting,
            ..BatcherConfig::DEFAULT
        }
    }

    /// The HTTP layer's settings (`listen`: where the server is bound, for
    /// the default `Host` allow-list).
    pub fn server(&self, listen: SocketAddr) -> ServerConfig {
        let allowed_hosts = if self.allowed_hosts.iter().any(|h| h == "*") {
            None
        } else if !self.allowed_hosts.is_empty() {
            Some(self.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect())
        } else if listen.ip().is_loopback() {
            Some(vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()])
        } else {
            None
        };
        ServerConfig {
            max_body_bytes: (self.max_body_mb as usize) << 20,
            limits: RequestLimits {
                max_embedding_inputs: self.max_embedding_inputs,
                max_embedding_tokens: self.max_embedding_tokens,
                max_n: self.max_n,
                max_choices: self.max_choices,
                max_stop_bytes: self.max_stop_bytes,
                max_logit_bias: self.max_logit_bias,
                max_completion_tokens: self.max_completion_tokens,
            },
            request_timeout: Duration::from_secs(self.request_timeout),
            write_timeout: Duration::from_secs(self.write_timeout),
            cors_allow_origins: self.cors_allow_origins.clone(),
            allowed_hosts,
            admin_assets_dir: self.admin_assets_dir.clone(),
            downloads: DownloadConfig {
                hub: self.models.hub_cache().map(hfms_hub::HubConfig::from_env),
                on_demand: self.allow_download,
                wait: Duration::from_secs(self.download_timeout),
                max_cache_bytes: self.download.max_cache_bytes(),
            },
            cache: CacheConfig {
                enabled: !self.no_response_cache,
                ttl: Duration::from_secs(self.cache_ttl),
                max_bytes: self.cache_max_mb << 20,
                redis_url: self.cache_url.clone(),
                timeout: Duration::from_millis(self.cache_timeout_ms),
            },
            breaker: BreakerConfig {
                failures: self.breaker_failures,
                window: Duration::from_secs(self.breaker_window),
                open_for: Duration::from_secs(self.breaker_open_seconds),
                max_open_for: Duration::from_secs(self.breaker_max_open_seconds.max(self.breaker_open_seconds)),
                ..BreakerConfig::DEFAULT
            },
        }
    }

    /// Check every setting that is parsed later, so a bad one fails at
    /// start-up with its flag named.
    pub fn validate(&self) -> Result<()> {
        if self.allow_download && self.models.hub_cache().is_none() {
            bail!(
                "--allow-download pulls into the hub cache: it cannot go with --no-hf-cache (or name one with --hf-cache)"
            );
        }
        self.listen()?;
        self.keep_alive()?;
        self.memory_budget()?;
        self.device_pins()?;
        self.chat_templates()?;
        self.forbidden()?;
        self.models.discover_config()?;
        self.otlp()?;
        // Model names are checked when the catalog exists (serve).
        self.access(&|name| Some(name.to_string()))?;
        Ok(())
    }

    /// Prices by model name, as given.
    pub fn prices(&self) -> Result<Vec<(String, hfms_access::usage::Price)>> {
        self.prices
            .iter()
            .map(|p| {
                let (model, v) = split_pair(p, "--price")?;
                let parts: Vec<f64> = v
                    .split(',')
                    .map(|x| x.trim().parse::<f64>())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("--price {p:?}: {e}"))?;
                if parts.len() != 3 || parts.iter().any(|x| !x.is_finite() || *x < 0.0 || *x > 1e9) {
                    bail!("--price {p:?}: MODEL=INPUT,CACHED_INPUT,OUTPUT with three prices from 0 to 1e9 expected");
                }
                Ok((
                    model.to_string(),
                    hfms_access::usage::Price {
                        input: parts[0],
                        cached_input: parts[1],
                        output: parts[2],
                    },
                ))
            })
            .collect()
    }

    /// The access layer's settings (keys, auth, rate limits, usage);
    /// `resolve` turns a model name into its id (None: unknown).
    pub fn access(&self, resolve: &dyn Fn(&str) -> Option<String>) -> Result<hfms_server::auth::AccessConfig> {
        let mut prices = std::collections::HashMap::new();
        for (name, price) in self.prices()? {
            let id = resolve(&name).with_context(|| format!("--price {name}: no such model (see `hfms discover`)"))?;
            prices.insert(id, price);
        }
        let from_file = match &self.admin_key_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("--admin-key-file {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let admin_key = match (&self.admin_key, from_file) {
            (Some(_), Some(_)) => bail!("give the admin key once: --admin-key (HFMS_ADMIN_KEY) or --admin-key-file"),
            (k, f) => k.clone().map(|k| k.trim().to_string()).or(f),
        };
        if let Some(k) = &admin_key
            && (k.chars().count() < 16 || k.len() > 1024 || k.chars().any(char::is_control))
        {
            bail!("the admin key must be 16 to 1024 printable characters");
        }
        Ok(hfms_server::auth::AccessConfig {
            database_url: self.store.database_url()?,
            admin_key,
            redis_url: self.redis_url.clone(),
            redis_timeout: Duration::from_millis(self.rate_limit_timeout_ms),
            allow_on_redis_error: self.rate_limit_on_redis_error == "allow",
            key_cache_ttl: Duration::from_secs(self.auth_cache_seconds),
            usage_commit_interval: Duration::from_millis(self.usage_commit_ms),
            usage_spill: Some(self.store.data_dir.join("usage-unwritten.jsonl")),
            prices,
            // Without keys, the admin API is for whoever is on this machine.
            keyless_admin: self.listen()?.ip().is_loopback(),
        })
    }

    /// Trace export settings, when an endpoint is given.
    pub fn otlp(&self) -> Result<Option<crate::telemetry::OtlpSettings>> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        // The file's value skips the flag's parser.
        probability(&self.otlp_sample_ratio.to_string()).map_err(|e| anyhow::anyhow!("otlp_sample_ratio {e}"))?;
        let mut url = reqwest::Url::parse(endpoint.trim())
            .with_context(|| format!("--otlp-endpoint {endpoint:?} is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!("--otlp-endpoint {endpoint:?}: an http:// or https:// URL with a host is needed (OTLP/HTTP)");
        }
        if !url.path().ends_with("/v1/traces") {
            let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        Ok(Some(crate::telemetry::OtlpSettings {
            traces_url: url.to_string(),
            sample_ratio: self.otlp_sample_ratio,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str], file: Option<&str>) -> Result<ServeArgs> {
        let matches = Cli::command().try_get_matches_from(std::iter::once("hfms").chain(args.iter().copied()))?;
        let cli = Cli::from_arg_matches(&matches)?;
        let dir = std::env::temp_dir().join(format!("hfms-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = file.map(|text| {
            let p = dir.join(format!("{}.toml", text.len()));
            std::fs::write(&p, text).unwrap();
            p
        });
        with_file(cli.serve, &matches, path.as_deref(), &[])
    }

    #[test]
    fn defaults_come_from_the_engine_and_server_constants() {
        let a = parse(&[], None).unwrap();
        assert_eq!(a.max_waiting, SchedulerConfig::DEFAULT.max_waiting);
        assert_eq!(a.batcher().max_waiting, a.scheduler().max_waiting);
        assert_eq!(a.scheduler().kv_budget_bytes, SchedulerConfig::DEFAULT.kv_budget_bytes);
        assert_eq!(a.max_body_mb as usize, ServerConfig::DEFAULT.max_body_bytes >> 20);
        assert_eq!(a.port, 8000);
        assert_eq!(a.models.models_dirs, vec![PathBuf::from("models")]);
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let file = "port = 9000\nthreads = 3\nmax_n = 4\n[aliases]\nfoo = \"org/foo\"\n[memory_budget]\ncpu = 100\n";
        let a = parse(&["--port", "9100"], Some(file)).unwrap();
        assert_eq!(a.port, 9100, "the flag wins");
        assert_eq!(a.threads, 3, "the file fills a default");
        assert_eq!(a.max_n, 4);
        assert_eq!(a.models.aliases, vec!["foo=org/foo".to_string()]);
        assert_eq!(
            a.memory_budget().unwrap().get(&hfms_hardware::DeviceId::CPU),
            Some(&(100 << 20))
        );
    }

    #[test]
    fn bad_files_and_values_are_errors() {
        assert!(parse(&[], Some("no_such_setting = 1\n")).is_err());
        assert!(parse(&[], Some("port = \"eighty\"\n")).is_err());
        assert!(parse(&["--max-batch-tokens", "0"], None).is_err());
        assert!(parse(&["--memory-fraction", "1.5"], None).is_err());
        assert!(parse(&["--memory-fraction", "NaN"], None).is_err());
        assert!(parse(&["--kv-cache-mb", "-3"], None).is_err());
        assert!(parse(&["--request-timeout", "0"], None).is_err());
        let a = parse(&["--keep-alive", "nan"], None).unwrap();
        assert!(a.validate().is_err());
        let a = parse(&["--memory-budget", "cpu=99999999999999999"], None).unwrap();
        assert!(a.validate().is_err());
    }

    #[test]
    fn otlp_endpoints_get_the_traces_path_and_bad_ones_are_refused() {
        let url = |args: &[&str]| parse(args, None)?.otlp().map(|o| o.map(|o| o.traces_url));
        assert_eq!(url(&[]).unwrap(), None);
        for (given, want) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            ("https://otel.example/prefix/", "https://otel.example/prefix/v1/traces"),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ] {
            assert_eq!(
                url(&["--otlp-endpoint", given]).unwrap().as_deref(),
                Some(want),
                "{given}"
            );
        }
        for bad in [
            "",
            "collector:4318",
            "ftp://c/",
            "grpc://c:4317",
            "http://",
            "not a url",
            "file:///tmp/x",
        ] {
            assert!(url(&["--otlp-endpoint", bad]).is_err(), "{bad:?}");
        }
        for bad in ["NaN", "-0.1", "1.5", "inf", "x", ""] {
            assert!(parse(&["--otlp-sample-ratio", bad], None).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse(&["--otlp-sample-ratio", "0"], None).unwrap().otlp_sample_ratio,
            0.0
        );
        // The file skips the flag's parser; validation catches it.
        for ratio in ["nan", "7.0", "-1.0", "\"half\""] {
            let file = format!("otlp_endpoint = \"http://c:4318\"\notlp_sample_ratio = {ratio}\n");
            assert!(parse(&[], Some(&file)).and_then(|a| a.validate()).is_err(), "{ratio}");
        }
    }

    #[test]
    fn print_config_round_trips_and_redacts() {
        let a = parse(&["--port", "1234", "--alias", "x=org/x"], None).unwrap();
        let text = to_toml(&a).unwrap();
        assert!(text.contains("port = 1234"), "{text}");
        let b = parse(&[], Some(&text)).unwrap();
        assert_eq!(b.port, 1234);
        assert_eq!(b.models.aliases, a.models.aliases);
        assert_eq!(
            redact_url("redis://user:hunter2@127.0.0.1:6379/0"),
            "redis://user:<redacted>@127.0.0.1:6379/0"
        );
        assert!(is_secret("admin_key") && is_secret("api_key_file") && !is_secret("keep_alive"));
    }

    #[test]
    fn loopback_servers_check_the_host_by_default() {
        let a = parse(&[], None).unwrap();
        let local = a.server("127.0.0.1:8000".parse().unwrap());
        assert!(local.allowed_hosts.unwrap().contains(&"localhost".to_string()));
        assert!(a.server("0.0.0.0:8000".parse().unwrap()).allowed_hosts.is_none());
        let any = parse(&["--allowed-host", "*"], None).unwrap();
        assert!(any.server("127.0.0.1:8000".parse().unwrap()).allowed_hosts.is_none());
    }
}
