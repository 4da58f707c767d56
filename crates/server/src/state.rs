//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use hfms_engine::manager::ModelManager;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    /// Most inputs in one embeddings request.
    pub max_embedding_inputs: usize,
    /// Largest `n` accepted.
    pub max_n: usize,
    /// How long a request may take before it is cancelled (504).
    pub request_timeout: std::time::Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 8 << 20,
            max_embedding_inputs: 2048,
            max_n: 16,
            request_timeout: std::time::Duration::from_secs(600),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    manager: Arc<ModelManager>,
    hardware: Option<hfms_hardware::HardwareReport>,
    config: ServerConfig,
    started: Instant,
    ready: AtomicBool,
}

impl AppState {
    /// `hardware`: the start-up detection report, shown in /status.
    pub fn new(
        manager: Arc<ModelManager>,
        config: ServerConfig,
        hardware: Option<hfms_hardware::HardwareReport>,
    ) -> Self {
        AppState {
            inner: Arc::new(Inner {
                manager,
                hardware,
                config,
                started: Instant::now(),
                ready: AtomicBool::new(false),
            }),
        }
    }

    pub fn hardware(&self) -> Option<&hfms_hardware::HardwareReport> {
        self.inner.hardware.as_ref()
    }

    pub fn manager(&self) -> &Arc<ModelManager> {
        &self.inner.manager
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub fn uptime_seconds(&self) -> f64 {
        self.inner.started.elapsed().as_secs_f64()
    }

    /// Start-up work (preloading) is done.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }
}
