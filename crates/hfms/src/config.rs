//! Configuration: one struct per command, every setting a flag with an
//! `HFMS_*` environment variable, and an optional TOML file (`--config`) for
//! anything not given on the command line or in the environment.
//! Precedence: flag > environment > file > built-in default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;

/// Where models come from (shared by `serve` and `discover`).
#[derive(Debug, Clone, Args, Default)]
pub struct ModelArgs {
    /// Folders to scan for models (`org/name/` layout, .gguf files).
    /// Default: ./models
    #[arg(long = "models-dir", env = "HFMS_MODELS_DIR", value_delimiter = ',')]
    pub models_dirs: Vec<PathBuf>,

    /// The Hugging Face hub cache to scan. Default: $HF_HUB_CACHE, else
    /// $HF_HOME/hub, else ~/.cache/huggingface/hub.
    #[arg(long, env = "HFMS_HF_CACHE")]
    pub hf_cache: Option<PathBuf>,

    /// Do not scan the Hugging Face hub cache.
    #[arg(long, env = "HFMS_NO_HF_CACHE")]
    pub no_hf_cache: bool,

    /// Serve a model file or folder explicitly: `PATH` or `ID=PATH`.
    #[arg(long = "model", env = "HFMS_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,

    /// Another name for a model: `ALIAS=ID` (smollm2 and all-minilm are
    /// built in).
    #[arg(long = "alias", env = "HFMS_ALIASES", value_delimiter = ',')]
    pub aliases: Vec<String>,

    /// TOML configuration file.
    #[arg(long, env = "HFMS_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub models: ModelArgs,

    /// Address to listen on. Default: 127.0.0.1
    #[arg(long, env = "HFMS_HOST")]
    pub host: Option<String>,

    /// Port to listen on (0 picks a free one). Default: 8000
    #[arg(long, env = "HFMS_PORT")]
    pub port: Option<u16>,

    /// Compute threads for model maths (0 = one per available core).
    #[arg(long, env = "HFMS_THREADS")]
    pub threads: Option<usize>,

    /// KV cache per generation model, in MiB. Default: 512
    #[arg(long, env = "HFMS_KV_CACHE_MB")]
    pub kv_cache_mb: Option<usize>,

    /// Most tokens in one model step (prefill chunk + decodes). Default: 512
    #[arg(long, env = "HFMS_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,

    /// Most sequences generating at once per model. Default: 64
    #[arg(long, env = "HFMS_MAX_RUNNING")]
    pub max_running: Option<usize>,

    /// Largest request body, in MiB. Default: 8
    #[arg(long, env = "HFMS_MAX_BODY_MB")]
    pub max_body_mb: Option<usize>,

    /// Models to load at start-up (ids or aliases; `all` for every
    /// servable model). /ready answers 200 once they are loaded.
    #[arg(long = "preload", env = "HFMS_PRELOAD", value_delimiter = ',')]
    pub preload: Vec<String>,

    /// Log format: auto (JSON unless stderr is a terminal), json, text.
    #[arg(long, env = "HFMS_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// Run a model on a given device: `MODEL=DEVICE` (e.g.
    /// `smollm2=cuda:1`, `all-minilm=cpu`); loading fails clearly if that
    /// device cannot take it.
    #[arg(long = "device", env = "HFMS_DEVICES", value_delimiter = ',')]
    pub devices: Vec<String>,

    /// Platforms no model may use (cuda, rocm, metal, openvino, qnn).
    #[arg(long = "forbid-platform", env = "HFMS_FORBID_PLATFORMS", value_delimiter = ',')]
    pub forbid_platforms: Vec<String>,

    /// How long a model stays loaded after its last request: a duration
    /// ("5m", "1h") or seconds; 0 unloads after each request; negative
    /// keeps models loaded (memory pressure still evicts the least
    /// recently used idle ones). Requests may override it per model
    /// (`keep_alive`). Default: -1.
    #[arg(long, env = "HFMS_KEEP_ALIVE", allow_hyphen_values = true)]
    pub keep_alive: Option<String>,

    /// Models that are never evicted or expired (ids or aliases).
    #[arg(long = "pin", env = "HFMS_PIN", value_delimiter = ',')]
    pub pin: Vec<String>,

    /// Memory models may use per device, in MiB: `cpu=8000,cuda:0=40000`.
    /// Devices not named get `--memory-fraction` of what was free at start.
    #[arg(long = "memory-budget", env = "HFMS_MEMORY_BUDGET", value_delimiter = ',')]
    pub memory_budget: Vec<String>,

    /// Fraction of each device's free memory (at start) models may use when
    /// no budget is given. Default: 0.8
    #[arg(long, env = "HFMS_MEMORY_FRACTION")]
    pub memory_fraction: Option<f64>,

    /// Embeddings: most tokens in one encoder pass (requests are batched
    /// together up to this). Default: 8192
    #[arg(long, env = "HFMS_EMBED_MAX_BATCH_TOKENS")]
    pub embed_max_batch_tokens: Option<usize>,

    /// Embeddings: how long (ms) a batch's first request waits for others.
    /// Default: 0 (a batch takes what is queued when the encoder is free;
    /// under load that is many requests, and a quiet server adds no wait)
    #[arg(long, env = "HFMS_EMBED_MAX_WAIT_MS")]
    pub embed_max_wait_ms: Option<u64>,

    /// Requests that may wait per generation model before new ones get 503
    /// server_overloaded. Default: 256
    #[arg(long, env = "HFMS_MAX_WAITING")]
    pub max_waiting: Option<usize>,

    /// Seconds a request may take before it is cancelled with 504.
    /// Default: 600
    #[arg(long, env = "HFMS_REQUEST_TIMEOUT")]
    pub request_timeout: Option<u64>,

    /// Quantise activations once (8-bit, as llama.cpp does) instead of
    /// twice (~16-bit, the default): faster prefill, logits less exact.
    #[arg(long, env = "HFMS_FAST_ACTIVATIONS")]
    pub fast_activations: bool,

    /// Hold the f32 layer weights of encoders (embedding models) as f16:
    /// a quarter less memory for all-MiniLM-L6-v2 and ~15% lower
    /// single-sentence latency on the CPU; vectors stay within cosine
    /// 0.99999 of f32. Products still accumulate in f32.
    #[arg(long, env = "HFMS_ENCODER_F16")]
    pub encoder_f16: bool,

    /// Exit when standard input closes: lets a supervising process (a test
    /// harness) end the server by simply going away.
    #[arg(long, env = "HFMS_EXIT_ON_STDIN_EOF", hide = true)]
    pub exit_on_stdin_eof: bool,
}

/// The TOML file: the same settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub threads: Option<usize>,
    pub kv_cache_mb: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub max_running: Option<usize>,
    pub max_body_mb: Option<usize>,
    pub preload: Option<Vec<String>>,
    pub log_format: Option<String>,
    pub models_dirs: Option<Vec<PathBuf>>,
    pub hf_cache: Option<PathBuf>,
    pub no_hf_cache: Option<bool>,
    /// id → path
    #[serde(default)]
    pub models: BTreeMap<String, PathBuf>,
    /// alias → id
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// model id or alias → device ("cuda:1", "cpu")
    #[serde(default)]
    pub devices: BTreeMap<String, String>,
    pub forbid_platforms: Option<Vec<String>>,
    pub fast_activations: Option<bool>,
    pub encoder_f16: Option<bool>,
    pub keep_alive: Option<String>,
    pub pin: Option<Vec<String>>,
    /// device → MiB
    #[serde(default)]
    pub memory_budget: BTreeMap<String, u64>,
    pub memory_fraction: Option<f64>,
    pub max_waiting: Option<usize>,
    pub request_timeout: Option<u64>,
    pub embed_max_batch_tokens: Option<usize>,
    pub embed_max_wait_ms: Option<u64>,
}

pub fn load_file(path: Option<&PathBuf>) -> Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Everything discovery needs, resolved.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub discover: hfms_engine::discover::DiscoverConfig,
}

fn parse_device(s: &str) -> Result<hfms_hardware::DeviceId> {
    s.parse().map_err(|e| anyhow::anyhow!("device {s:?}: {e}"))
}

fn split_pair(s: &str, what: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.trim().to_string(), b.trim().to_string())),
        _ => bail!("{what} must look like NAME=VALUE, got {s:?}"),
    }
}

impl ModelArgs {
    pub fn resolve(&self, file: &FileConfig) -> Result<ModelSettings> {
        let models_dirs = if !self.models_dirs.is_empty() {
            self.models_dirs.clone()
        } else {
            file.models_dirs
                .clone()
                .unwrap_or_else(|| vec![PathBuf::from("models")])
        };
        let no_cache = self.no_hf_cache || file.no_hf_cache.unwrap_or(false);
        let hf_cache = if no_cache {
            None
        } else {
            self.hf_cache
                .clone()
                .or_else(|| file.hf_cache.clone())
                .or_else(hfms_engine::discover::default_hf_cache)
        };
        let mut extra: Vec<(Option<String>, PathBuf)> = Vec::new();
        for m in &self.models {
            match m.split_once('=') {
                Some((id, path)) => extra.push((Some(id.to_string()), PathBuf::from(path))),
                None => extra.push((None, PathBuf::from(m))),
            }
        }
        for (id, path) in &file.models {
            extra.push((Some(id.clone()), path.clone()));
        }
        for (_, p) in &extra {
            if !p.exists() {
                bail!("model path {} does not exist", p.display());
            }
        }
        let mut aliases = hfms_engine::discover::builtin_aliases();
        aliases.extend(file.aliases.clone());
        for a in &self.aliases {
            let (name, id) = split_pair(a, "--alias")?;
            aliases.insert(name, id);
        }
        Ok(ModelSettings {
            discover: hfms_engine::discover::DiscoverConfig {
                models_dirs,
                hf_cache,
                extra,
                aliases,
            },
        })
    }
}

/// `serve` settings, resolved.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    pub threads: usize,
    pub kv_cache_bytes: usize,
    pub max_batch_tokens: usize,
    pub max_running: usize,
    pub max_body_bytes: usize,
    pub preload: Vec<String>,
    pub log_format: String,
    pub exit_on_stdin_eof: bool,
    pub fast_activations: bool,
    pub encoder_f16: bool,
    pub keep_alive: hfms_engine::manager::KeepAlive,
    /// ids or aliases
    pub pin: Vec<String>,
    /// device → bytes
    pub memory_budget: BTreeMap<hfms_hardware::DeviceId, u64>,
    pub memory_fraction: f64,
    pub max_waiting: usize,
    pub request_timeout: std::time::Duration,
    pub embed_max_batch_tokens: usize,
    pub embed_max_wait: std::time::Duration,
    /// model id or alias → device
    pub pins: BTreeMap<String, hfms_hardware::DeviceId>,
    pub forbidden: std::collections::BTreeSet<hfms_hardware::Platform>,
    pub models: ModelSettings,
}

impl ServeArgs {
    pub fn resolve(&self) -> Result<ServeSettings> {
        let file = load_file(self.models.config.as_ref())?;
        let host = self
            .host
            .clone()
            .or(file.host.clone())
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = self.port.or(file.port).unwrap_or(8000);
        let listen: SocketAddr = format!("{host}:{port}")
            .parse()
            .or_else(|_| format!("[{host}]:{port}").parse())
            .with_context(|| format!("invalid listen address {host}:{port}"))?;
        let positive = |v: usize, name: &str| -> Result<usize> {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
            Ok(v)
        };
        Ok(ServeSettings {
            listen,
            threads: self.threads.or(file.threads).unwrap_or(0),
            kv_cache_bytes: positive(self.kv_cache_mb.or(file.kv_cache_mb).unwrap_or(512), "kv_cache_mb")? << 20,
            max_batch_tokens: positive(
                self.max_batch_tokens.or(file.max_batch_tokens).unwrap_or(512),
                "max_batch_tokens",
            )?,
            max_running: positive(self.max_running.or(file.max_running).unwrap_or(64), "max_running")?,
            max_body_bytes: positive(self.max_body_mb.or(file.max_body_mb).unwrap_or(8), "max_body_mb")? << 20,
            preload: if self.preload.is_empty() {
                file.preload.clone().unwrap_or_default()
            } else {
                self.preload.clone()
            },
            log_format: self
                .log_format
                .clone()
                .or(file.log_format.clone())
                .unwrap_or_else(|| "auto".into()),
            exit_on_stdin_eof: self.exit_on_stdin_eof,
            fast_activations: self.fast_activations || file.fast_activations.unwrap_or(false),
            encoder_f16: self.encoder_f16 || file.encoder_f16.unwrap_or(false),
            keep_alive: match self.keep_alive.clone().or(file.keep_alive.clone()) {
                Some(k) => {
                    hfms_engine::manager::KeepAlive::parse_str(&k).map_err(|e| anyhow::anyhow!("--keep-alive: {e}"))?
                }
                None => hfms_engine::manager::KeepAlive::Forever,
            },
            pin: if self.pin.is_empty() {
                file.pin.clone().unwrap_or_default()
            } else {
                self.pin.clone()
            },
            memory_budget: {
                let mut b = BTreeMap::new();
                for (d, mib) in &file.memory_budget {
                    b.insert(parse_device(d)?, mib << 20);
                }
                for entry in &self.memory_budget {
                    let (d, mib) = split_pair(entry, "--memory-budget")?;
                    let mib: u64 = mib
                        .parse()
                        .with_context(|| format!("--memory-budget {entry}: MiB must be a number"))?;
                    b.insert(parse_device(&d)?, mib << 20);
                }
                b
            },
            memory_fraction: {
                let f = self.memory_fraction.or(file.memory_fraction).unwrap_or(0.8);
                if !(f > 0.0 && f <= 1.0) {
                    bail!("--memory-fraction must be in (0, 1], got {f}");
                }
                f
            },
            max_waiting: positive(self.max_waiting.or(file.max_waiting).unwrap_or(256), "max_waiting")?,
            embed_max_batch_tokens: positive(
                self.embed_max_batch_tokens
                    .or(file.embed_max_batch_tokens)
                    .unwrap_or(8192),
                "embed_max_batch_tokens",
            )?,
            embed_max_wait: std::time::Duration::from_millis(
                self.embed_max_wait_ms.or(file.embed_max_wait_ms).unwrap_or(0),
            ),
            request_timeout: std::time::Duration::from_secs(positive(
                self.request_timeout.or(file.request_timeout).unwrap_or(600) as usize,
                "request_timeout",
            )? as u64),
            pins: {
                let mut pins = BTreeMap::new();
                for (model, dev) in &file.devices {
                    pins.insert(model.clone(), parse_device(dev)?);
                }
                for d in &self.devices {
                    let (model, dev) = split_pair(d, "--device")?;
                    pins.insert(model, parse_device(&dev)?);
                }
                pins
            },
            forbidden: {
                let names = if self.forbid_platforms.is_empty() {
                    file.forbid_platforms.clone().unwrap_or_default()
                } else {
                    self.forbid_platforms.clone()
                };
                names
                    .iter()
                    .map(|p| {
                        p.parse::<hfms_hardware::Platform>()
                            .map_err(|e| anyhow::anyhow!("--forbid-platform {p}: {e}"))
                    })
                    .collect::<Result<_>>()?
            },
            models: self.models.resolve(&file)?,
        })
    }
}
