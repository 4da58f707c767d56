//! The response cache: deterministic requests (temperature 0 or a seed for
//! chat and completions; embeddings always) are answered from a cache keyed
//! by a hash of the normalised request — the endpoint, the resolved model
//! and its revision (file size and modification time), and every field but
//! `user`, `stream`, `stream_options` and `keep_alive`. A hit returns the
//! stored result with a fresh id and `created`, as JSON or replayed as
//! server-sent events, with `x-cache: hit` and the original `usage`; it does
//! no engine work. `Cache-Control: no-cache` skips the lookup (the answer is
//! still stored), `no-store` skips both.
//!
//! Backends: in memory (moka, bounded by bytes and TTL), or Redis shared by
//! replicas. A Redis that is down or slow costs at most `--cache-timeout-ms`
//! per operation: the request is served without the cache, a warning is
//! logged and `hfms_response_cache_errors_total` counts it — never an error
//! to the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use hfms_engine::discover::ModelDescription;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;

/// Settings (each a `hfms serve` flag).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheConfig {
    pub enabled: bool,
    pub ttl: Duration,
    /// Memory backend: the most bytes of stored responses.
    pub max_bytes: u64,
    /// `redis://…`: the shared backend (None: memory).
    #[serde(skip)]
    pub redis_url: Option<String>,
    /// The longest a Redis operation may take before the request goes on
    /// without the cache.
    pub timeout: Duration,
}

impl CacheConfig {
    pub const DEFAULT: CacheConfig = CacheConfig {
        enabled: true,
        ttl: Duration::from_secs(3600),
        max_bytes: 256 << 20,
        redis_url: None,
        timeout: Duration::from_millis(50),
    };
}

/// What the cache says about one request.
pub enum Lookup {
    /// Not cacheable (cache off, not deterministic, unknown model).
    Skip,
    /// A stored answer.
    Hit(Bytes),
    /// Not found (or the client said `no-cache`): store the answer under
    /// this key, unless the client said `no-store`.
    Miss { key: String, store: bool },
}

impl Lookup {
    /// Where to store the computed answer, if anywhere.
    pub fn store_key(&self) -> Option<String> {
        match self {
            Lookup::Miss { key, store: true } => Some(key.clone()),
            _ => None,
        }
    }
}

enum Backend {
    Memory(moka::future::Cache<String, Bytes>),
    Redis(Redis),
}

pub struct ResponseCache {
    backend: Option<Backend>,
    metrics: Arc<Metrics>,
}

impl ResponseCache {
    /// Fails only on a malformed Redis URL; a Redis that cannot be reached
    /// now is connected to later.
    pub fn new(config: CacheConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let backend = if !config.enabled {
            None
        } else if let Some(url) = &config.redis_url {
            let client = redis::Client::open(url.as_str()).map_err(|e| format!("--cache-url: {e}"))?;
            Some(Backend::Redis(Redis {
                client,
                conn: tokio::sync::Mutex::new(None),
                timeout: config.timeout,
                ttl: config.ttl,
            }))
        } else {
            let cache = moka::future::Cache::builder()
                .max_capacity(config.max_bytes)
                .weigher(|k: &String, v: &Bytes| (k.len() + v.len()).min(u32::MAX as usize) as u32)
                .time_to_live(config.ttl)
                .build();
            Some(Backend::Memory(cache))
        };
        Ok(ResponseCache { backend, metrics })
    }

    /// Look a request up. `endpoint` names the API ("chat", "completions",
    /// "embeddings"); `raw` is its body as sent.
    pub async fn lookup(
        &self,
        headers: &HeaderMap,
        endpoint: &str,
        tenant: &str,
        model: Option<&ModelDescription>,
        raw: &[u8],
        deterministic: bool,
    ) -> Lookup {
        let (Some(backend), Some(model), true) = (&self.backend, model, deterministic) else {
            return Lookup::Skip;
        };
        let control = headers
            .get_all(axum::http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase();
        let no_store = control.contains("no-store");
        let no_cache = control.contains("no-cache");
        let Some(key) = request_key(endpoint, tenant, &model.id, &model.path, model.size_bytes, raw) else {
            return Lookup::Skip;
        };
        if no_store || no_cache {
            self.metrics.cache_request(&model.id, "bypass");
            return Lookup::Miss { key, store: !no_store };
        }
        let found = match backend {
            Backend::Memory(c) => c.get(&key).await,
            Backend::Redis(r) => match r.get(&key).await {
                Ok(v) => v.map(Bytes::from),
                Err(e) => {
                    self.metrics.cache_error("redis", "get");
                    tracing::warn!(error = %e, "response cache: Redis lookup failed; serving without the cache");
                    None
                }
            },
        };
        match found {
            Some(b) => {
                self.metrics.cache_request(&model.id, "hit");
                Lookup::Hit(b)
            }
            None => {
                self.metrics.cache_request(&model.id, "miss");
                Lookup::Miss { key, store: true }
            }
        }
    }

    /// Store an answer (in the background: the client does not wait).
    pub fn store(self: &Arc<Self>, key: String, body: Bytes) {
        let Some(backend) = &self.backend else { return };
        match backend {
            Backend::Memory(c) => {
                let c = c.clone();
                tokio::spawn(async move {
                    c.insert(key, body).await;
                    // Keeps the size gauge current (moka counts lazily).
                    c.run_pending_tasks().await;
                });
            }
            Backend::Redis(_) => {
                let me = self.clone();
                tokio::spawn(async move {
                    if let Some(Backend::Redis(r)) = &me.backend
                        && let Err(e) = r.set(&key, &body).await
                    {
                        me.metrics.cache_error("redis", "set");
                        tracing::warn!(error = %e, "response cache: Redis store failed");
                    }
                });
            }
        }
    }

    /// Bytes held (memory backend; the gauge).
    pub fn bytes(&self) -> Option<u64> {
        match &self.backend {
            Some(Backend::Memory(c)) => Some(c.weighted_size()),
            _ => None,
        }
    }
}

/// The key of a request: SHA-256 over the endpoint, the model's id and
/// revision, and the request's JSON with its keys sorted, less the fields
/// that do not change the answer. None when the body is not a JSON object.
/// `tenant`: whose answers these are (an API key's id; "" without keys):
/// one tenant must not learn from a hit what another asked.
pub fn request_key(
    endpoint: &str,
    tenant: &str,
    id: &str,
    path: &std::path::Path,
    size: u64,
    raw: &[u8],
) -> Option<String> {
    let mut v: Value = serde_json::from_slice(raw).ok()?;
    let obj = v.as_object_mut()?;
    for k in ["user", "stream", "stream_options", "keep_alive", "model"] {
        obj.remove(k);
    }
    let revision = std::fs::metadata(path)
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(format!("hfms-cache-v1\0{endpoint}\0{tenant}\0{id}\0{size}\0{revision}\0").as_bytes());
    h.update(canonical(&v).as_bytes());
    Some(format!("hfms:cache:v1:{:x}", h.finalize()))
}

/// JSON with object keys sorted at every level.
fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: std::collections::BTreeMap<&String, Value> = m.iter().map(|(k, x)| (k, sort(x))).collect();
                Value::Object(sorted.into_iter().map(|(k, x)| (k.clone(), x)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

/// Redis, connected on first use; after a failed connection, attempts are
/// at most one a second.
struct Redis {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<(Option<redis::aio::ConnectionManager>, Instant)>>,
    timeout: Duration,
    ttl: Duration,
}

impl Redis {
    async fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        let mut slot = self.conn.lock().await;
        match &*slot {
            Some((Some(c), _)) => return Ok(c.clone()),
            Some((None, failed)) if failed.elapsed() < Duration::from_secs(1) => {
                return Err("Redis is unreachable (retrying every second)".into());
            }
            _ => {}
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        match tokio::time::timeout(self.timeout * 4, self.client.get_connection_manager_with_config(config)).await {
            Ok(Ok(c)) => {
                *slot = Some((Some(c.clone()), Instant::now()));
                Ok(c)
            }
            Ok(Err(e)) => {
                *slot = Some((None, Instant::now()));
                Err(e.to_string())
            }
            Err(_) => {
                *slot = Some((None, Instant::now()));
                Err("connecting to Redis timed out".into())
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut c = self.connection().await?;
        let cmd = redis::cmd("GET").arg(key).to_owned();
        match tokio::time::timeout(self.timeout, cmd.query_async::<Option<Vec<u8>>>(&mut c)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("GET took over {} ms", self.timeout.as_millis())),
        }
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let mut c = self.connection().await?;
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(self.ttl.as_secs().max(1))
            .to_owned();
        match tokio::time::timeout(self.timeout, cmd.query_async::<()>(&mut c)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("SET took over {} ms", self.timeout.as_millis())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_what_does_not_change_the_answer() {
        let dir = std::env::temp_dir();
        let key =
            |endpoint: &str, body: &Value| request_key(endpoint, "", "org/m", &dir, 1, body.to_string().as_bytes());
        let k = |body: Value| key("chat", &body).unwrap();
        let base = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
        let mut same = serde_json::json!({"temperature": 0, "user": "u1", "stream": true, "keep_alive": "5m",
                                          "messages": [{"content": "hi", "role": "user"}], "model": "alias"});
        assert_eq!(
            k(base.clone()),
            k(same.clone()),
            "order, user, stream, keep_alive, alias"
        );
        same["temperature"] = serde_json::json!(0.5);
        assert_ne!(k(base.clone()), k(same), "sampling fields count");
        assert_ne!(key("chat", &base), key("completions", &base));
        assert!(request_key("chat", "", "org/m", &dir, 1, b"[1,2]").is_none());
    }
}
