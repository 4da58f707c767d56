//! What every handler shares: the model manager, the settings of the HTTP
//! layer, and the server's lifecycle (starting, ready, draining).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hfms_engine::manager::ModelManager;
use tokio_util::sync::CancellationToken;

/// What one request may ask for. Each bound is a setting of `hfms serve`
/// (its flags name these defaults) and a 400 naming the flag when exceeded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestLimits {
    /// Most inputs in one embeddings request.
    pub max_embedding_inputs: usize,
    /// Most tokens (after truncation) in one embeddings request.
    pub max_embedding_tokens: usize,
    /// Largest `n`.
    pub max_n: usize,
    /// Most choices in one completions request (prompts × n).
    pub max_choices: usize,
    /// Longest stop sequence, in bytes.
    pub max_stop_bytes: usize,
    /// Most `logit_bias` entries.
    pub max_logit_bias: usize,
    /// Most tokens one choice may generate (None: the rest of the context).
    pub max_completion_tokens: Option<usize>,
}

impl RequestLimits {
    pub const DEFAULT: RequestLimits = RequestLimits {
        // OpenAI's own limits for embeddings.
        max_embedding_inputs: 2048,
        max_embedding_tokens: 300_000,
        max_n: 16,
        max_choices: 128,
        max_stop_bytes: 1024,
        max_logit_bias: 1024,
        max_completion_tokens: None,
    };
}

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    pub limits: RequestLimits,
    /// How long a request may take before it is cancelled (504).
    pub request_timeout: Duration,
    /// How long a streamed response may wait for its client to read before
    /// the request is cancelled (a client that stopped reading).
    pub write_timeout: Duration,
    /// Origins allowed to call the API from a browser (CORS); empty: none.
    /// `*` allows any.
    pub cors_allow_origins: Vec<String>,
    /// `Host` header names accepted (DNS-rebinding protection); None: any.
    pub allowed_hosts: Option<Vec<String>>,
    pub breaker: crate::breaker::BreakerConfig,
    pub cache: crate::cache::CacheConfig,
    pub downloads: crate::downloads::DownloadConfig,
    /// Serve the dashboard's files from this folder instead of the copies
    /// in the binary (for working on the UI without rebuilding).
    pub admin_assets_dir: Option<std::path::PathBuf>,
}

impl ServerConfig {
    pub const DEFAULT: ServerConfig = ServerConfig {
        max_body_bytes: 8 << 20,
        limits: RequestLimits::DEFAULT,
        request_timeout: Duration::from_secs(600),
        write_timeout: Duration::from_secs(30),
        cors_allow_origins: Vec::new(),
        allowed_hosts: None,
        breaker: crate::breaker::BreakerConfig::DEFAULT,
        cache: crate::cache::CacheConfig::DEFAULT,
        downloads: crate::downloads::DownloadConfig::DEFAULT,
        admin_assets_dir: None,
    };
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where the server is in its life, for `/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Starting,
    Ready,
    Draining,
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    manager: Arc<ModelManager>,
    metrics: Arc<crate::metrics::Metrics>,
    breakers: crate::breaker::Breakers,
    cache: Arc<crate::cache::ResponseCache>,
    downloads: crate::downloads::Downloads,
    access: Arc<crate::auth::Access>,
    hardware: Option<hfms_hardware::HardwareReport>,
    config: ServerConfig,
    started: Instant,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Models whose preload failed, with the error.
    preload_failures: Mutex<Vec<(String, String)>>,
    /// Fired when the shutdown grace period is over: work still running
    /// ends with an error.
    cancel: CancellationToken,
}

impl AppState {
    /// `hardware`: the start-up detection report, shown in /status.
    /// `metrics`: the registry the manager's observers report to. Fails
    /// only on a malformed cache URL.
    pub fn new(
        manager: Arc<ModelManager>,
        config: ServerConfig,
        hardware: Option<hfms_hardware::HardwareReport>,
        metrics: Arc<crate::metrics::Metrics>,
        access: Arc<crate::auth::Access>,
    ) -> Result<Self, String> {
        metrics.attach(&manager);
        let cache = Arc::new(crate::cache::ResponseCache::new(config.cache.clone(), metrics.clone())?);
        metrics.attach_cache(&cache);
        Ok(AppState {
            inner: Arc::new(Inner {
                downloads: crate::downloads::Downloads::new(config.downloads.clone(), manager.clone()),
                manager,
                cache,
                access,
                breakers: crate::breaker::Breakers::new(config.breaker.clone(), metrics.clone()),
                metrics,
                hardware,
                config,
                started: Instant::now(),
                ready: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                preload_failures: Mutex::new(Vec::new()),
                cancel: CancellationToken::new(),
            }),
        })
    }

    pub fn hardware(&self) -> Option<&hfms_hardware::HardwareReport> {
        self.inner.hardware.as_ref()
    }

    pub fn manager(&self) -> &Arc<ModelManager> {
        &self.inner.manager
    }

    pub fn cache(&self) -> &Arc<crate::cache::ResponseCache> {
        &self.inner.cache
    }

    pub fn downloads(&self) -> &crate::downloads::Downloads {
        &self.inner.downloads
    }

    pub fn access(&self) -> &Arc<crate::auth::Access> {
        &self.inner.access
    }

    pub fn breakers(&self) -> &crate::breaker::Breakers {
        &self.inner.breakers
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.inner.metrics
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub fn limits(&self) -> &RequestLimits {
        &self.inner.config.limits
    }

    pub fn uptime_seconds(&self) -> f64 {
        self.inner.started.elapsed().as_secs_f64()
    }

    /// Start-up work (preloading) is done.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    /// A model named for preloading failed to load.
    pub fn preload_failed(&self, model: &str, error: &str) {
        let mut f = self.inner.preload_failures.lock().unwrap_or_else(|p| p.into_inner());
        f.push((model.to_string(), error.to_string()));
    }

    /// Preload failures of models that are still not loaded (a model loaded
    /// since, e.g. by `/models/load` after its file was fixed, no longer
    /// counts).
    pub fn preload_failures(&self) -> Vec<(String, String)> {
        let failed = self
            .inner
            .preload_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if failed.is_empty() {
            return failed;
        }
        let loaded = self.inner.manager.loaded();
        failed
            .into_iter()
            .filter(|(m, _)| !loaded.iter().any(|(id, _)| id == m))
            .collect()
    }

    pub fn readiness(&self) -> Readiness {
        if self.inner.draining.load(Ordering::Acquire) {
            Readiness::Draining
        } else if self.inner.ready.load(Ordering::Acquire) {
            Readiness::Ready
        } else {
            Readiness::Starting
        }
    }

    pub fn is_ready(&self) -> bool {
        self.readiness() == Readiness::Ready
    }

    /// Shutdown began: `/ready` says so; requests in flight go on.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// The grace period is over: everything still running is cancelled.
    pub fn cancel_all(&self) {
        self.inner.cancel.cancel();
    }

    /// Resolves when `cancel_all` is called.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.cancel.clone().cancelled_owned()
    }

    /// Run a request's work under its time limit and the server's shutdown:
    /// 504 past `--request-timeout`, 503 once shutdown cancels it. Dropping
    /// the work cancels it (receivers dropped → sequences and batches
    /// dropped at their next step).
    pub async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = crate::ApiResult<T>>,
    ) -> crate::ApiResult<T> {
        let limit = self.config().request_timeout;
        tokio::select! {
            r = tokio::time::timeout(limit, work) => match r {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(seconds = limit.as_secs(), "request timed out; cancelling it");
                    Err(crate::ApiError::timeout(limit))
                }
            },
            _ = self.cancelled() => Err(crate::ApiError::shutting_down()),
        }
    }
}
