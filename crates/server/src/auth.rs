//! Who is calling and what they may still do: API-key authentication (keys
//! in `hfms_access::KeyStore`, a bootstrap admin key from the operator),
//! scopes, model allow-lists, and per-key limits: requests and tokens per
//! minute (`hfms_access::RateLimiter`, in process or Redis) and concurrent
//! requests (in process).
//!
//! Auth is on when an admin key is configured or any key exists. Off, the
//! server serves everyone (the CLI refuses that on a non-loopback address
//! without `--no-auth`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use hfms_access::usage::{Price, UsageRecord, UsageWriter};
use hfms_access::{ApiKey, Decision, KeySettings, KeyStore, RateLimiter, Scope};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ApiResult};

/// Settings of the access layer (no `Debug`: it holds the admin key).
#[derive(Clone)]
pub struct AccessConfig {
    /// `sqlite://PATH` or `postgres://…`.
    pub database_url: String,
    /// The bootstrap admin key (from a file or the environment).
    pub admin_key: Option<String>,
    /// Rate-limit buckets in Redis (shared by replicas); in process if None.
    pub redis_url: Option<String>,
    pub redis_timeout: Duration,
    /// When Redis fails: admit (true) or refuse.
    pub allow_on_redis_error: bool,
    /// How long a verified key is trusted before it is read again (a key
    /// revoked through another replica stops working within this).
    pub key_cache_ttl: Duration,
    /// Usage records are committed together at this interval.
    pub usage_commit_interval: Duration,
    /// Prices per model id.
    pub prices: HashMap<String, Price>,
    /// Whether callers without a key may use `/admin/*` while auth is off:
    /// true on loopback; false for a `--no-auth` server on the network,
    /// where anyone could otherwise make themselves an admin key.
    pub keyless_admin: bool,
}

/// Who is making a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Auth is off (`admin`: whether the admin API is open to it).
    Anyone {
        admin: bool,
    },
    /// The bootstrap admin key.
    Operator,
    Key(Arc<ApiKey>),
}

impl Caller {
    fn has(&self, scope: Scope) -> bool {
        match self {
            Caller::Anyone { admin } => *admin || scope != Scope::Admin,
            Caller::Operator => true,
            Caller::Key(k) => k.has_scope(scope),
        }
    }

    pub fn key(&self) -> Option<&Arc<ApiKey>> {
        match self {
            Caller::Key(k) => Some(k),
            _ => None,
        }
    }
}

pub struct Access {
    store: KeyStore,
    limiter: RateLimiter,
    admin_hash: Option<[u8; 32]>,
    required: AtomicBool,
    keyless_admin: bool,
    /// While auth is off: when the database was last asked whether a key
    /// appeared (made by the CLI or another replica).
    checked: Mutex<std::time::Instant>,
    recheck: Duration,
    /// Bumped when a key changes: a verification that started before must
    /// not cache what it read.
    generation: std::sync::atomic::AtomicU64,
    /// SHA-256 of a presented secret → the key it verified as, for a few
    /// seconds (a database read per request would cost more than the rest
    /// of auth together).
    verified: moka::future::Cache<[u8; 32], Arc<ApiKey>>,
    /// SHA-256 of secrets that matched no key, for as long: a flood of
    /// made-up keys costs no database reads.
    unknown: moka::future::Cache<[u8; 32], ()>,
    in_flight: Mutex<HashMap<String, u64>>,
    /// Last `last_used_at` written per key (written at most once a minute).
    touched: Mutex<HashMap<String, i64>>,
    /// Taken at shutdown to commit what is queued.
    usage: Mutex<Option<UsageWriter>>,
    prices: HashMap<String, Price>,
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Access {
    pub async fn open(c: &AccessConfig) -> Result<Access, String> {
        let store = KeyStore::open(&c.database_url).await.map_err(|e| e.to_string())?;
        let limiter = match &c.redis_url {
            Some(url) => RateLimiter::redis(url, c.redis_timeout, c.allow_on_redis_error).await?,
            None => RateLimiter::in_memory(),
        };
        let keys = store.any().await.map_err(|e| e.to_string())?;
        Ok(Access {
            limiter,
            admin_hash: c.admin_key.as_deref().map(sha256),
            required: AtomicBool::new(c.admin_key.is_some() || keys),
            keyless_admin: c.keyless_admin,
            checked: Mutex::new(std::time::Instant::now()),
            recheck: c.key_cache_ttl.max(Duration::from_secs(1)),
            generation: std::sync::atomic::AtomicU64::new(0),
            // A zero TTL means every request reads the database.
            verified: moka::future::Cache::builder()
                .max_capacity(if c.key_cache_ttl.is_zero() { 0 } else { 100_000 })
                .time_to_live(c.key_cache_ttl.max(Duration::from_millis(1)))
                .build(),
            unknown: moka::future::Cache::builder()
                .max_capacity(if c.key_cache_ttl.is_zero() { 0 } else { 100_000 })
                .time_to_live(c.key_cache_ttl.max(Duration::from_millis(1)))
                .build(),
            in_flight: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
            usage: Mutex::new(Some(UsageWriter::start(store.pool().clone(), c.usage_commit_interval))),
            prices: c.prices.clone(),
            store,
        })
    }

    /// Queue a request's usage record, priced.
    pub fn record_usage(&self, mut r: UsageRecord) {
        if let Some(p) = self.prices.get(&r.model) {
            r.cost = p.cost(r.prompt_tokens, r.cached_tokens, r.completion_tokens);
        }
        if let Some(w) = self.usage.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            w.record(r);
        }
    }

    /// Records dropped because the database did not keep up.
    pub fn usage_dropped(&self) -> u64 {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, UsageWriter::dropped)
    }

    /// Commit every queued usage record (graceful shutdown).
    pub async fn shutdown(&self) {
        let writer = self.usage.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer {
            w.shutdown().await;
        }
        self.store.close().await;
    }

    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    /// Whether requests must present a key.
    pub fn required(&self) -> bool {
        self.required.load(Ordering::Relaxed)
    }

    /// A key was created: from now on every request needs one.
    pub fn key_created(&self) {
        self.required.store(true, Ordering::Relaxed);
    }

    /// A key changed or was revoked: forget what was verified.
    pub fn key_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.verified.invalidate_all();
    }

    /// While auth is off, ask the database now and then whether a key
    /// appeared: a key made by `hfms keys` or another replica turns auth
    /// on here too, within --auth-cache-seconds (at least a second).
    async fn refresh_required(&self) -> bool {
        if self.required() {
            return true;
        }
        {
            let mut at = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            if at.elapsed() < self.recheck {
                return false;
            }
            *at = std::time::Instant::now();
        }
        match self.store.any().await {
            Ok(true) => {
                tracing::info!("an API key exists: authentication is on");
                self.key_created();
                true
            }
            Ok(false) => false,
            // Cannot tell: refuse rather than serve openly by mistake.
            Err(e) => {
                tracing::error!(error = %e, "the key store failed");
                true
            }
        }
    }

    /// The caller a request's headers name (`Authorization: Bearer` or
    /// `x-api-key`).
    pub async fn authenticate(&self, headers: &HeaderMap) -> ApiResult<Caller> {
        if !self.refresh_required().await {
            return Ok(Caller::Anyone {
                admin: self.keyless_admin,
            });
        }
        let presented = presented_key(headers)
            .ok_or_else(|| invalid_key("No API key given: send `Authorization: Bearer sk-hfms-…` or `x-api-key`."))?;
        let digest = sha256(presented);
        if let Some(admin) = &self.admin_hash
            && bool::from(digest.ct_eq(admin))
        {
            return Ok(Caller::Operator);
        }
        let key = match self.verified.get(&digest).await {
            Some(k) => k,
            None => {
                if self.unknown.contains_key(&digest) {
                    return Err(invalid_key("Incorrect API key provided."));
                }
                let generation = self.generation.load(Ordering::SeqCst);
                let found = self.store.verify(presented).await.map_err(|e| {
                    tracing::error!(error = %e, "the key store failed");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "The key store is unavailable.",
                    )
                    .with_code("key_store_unavailable")
                })?;
                let Some(k) = found else {
                    self.unknown.insert(digest, ()).await;
                    return Err(invalid_key("Incorrect API key provided."));
                };
                let k = Arc::new(k);
                // A key changed meanwhile: what was read may be stale.
                if self.generation.load(Ordering::SeqCst) == generation {
                    self.verified.insert(digest, k.clone()).await;
                }
                k
            }
        };
        let now = hfms_access::keys::unix_now();
        if !key.active(now) {
            return Err(invalid_key(if key.revoked_at.is_some() {
                "This API key has been revoked."
            } else {
                "This API key has expired."
            }));
        }
        self.touch(&key.id, now);
        Ok(Caller::Key(key))
    }

    /// Write `last_used_at`, at most once a minute per key, in the background.
    fn touch(&self, id: &str, now: i64) {
        {
            let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            if t.get(id).is_some_and(|&at| now - at < 60) {
                return;
            }
            t.insert(id.to_string(), now);
        }
        let (store, id) = (self.store.clone(), id.to_string());
        tokio::spawn(async move {
            if let Err(e) = store.touch(&id, now).await {
                tracing::warn!(error = %e, "recording a key's last use failed");
            }
        });
    }

    /// Take one request from the key's per-minute budget.
    pub async fn take_request(&self, key: &ApiKey) -> Option<Decision> {
        let rpm = key.rpm?;
        // The limit is part of the bucket: a changed limit starts afresh.
        Some(
            self.limiter
                .take(&format!("{}:requests:{rpm}", key.id), rpm, 1, false)
                .await,
        )
    }

    /// Take `tokens` from the key's per-minute token budget; `force`
    /// charges them even past it (tokens already spent).
    pub async fn take_tokens(&self, key: &ApiKey, tokens: u64, force: bool) -> Option<Decision> {
        let tpm = key.tpm?;
        Some(
            self.limiter
                .take(&format!("{}:tokens:{tpm}", key.id), tpm, tokens, force)
                .await,
        )
    }

    /// A slot among the key's concurrent requests, released on drop; None
    /// when all are taken.
    pub fn enter(self: &Arc<Self>, key: &ApiKey) -> Result<Option<InFlight>, u64> {
        let Some(max) = key.max_concurrent else {
            return Ok(None);
        };
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.id.clone()).or_insert(0);
        if *n >= max {
            return Err(max);
        }
        *n += 1;
        Ok(Some(InFlight {
            access: self.clone(),
            id: key.id.clone(),
        }))
    }

    /// Create a key (the admin API and the CLI's store share this rule).
    pub async fn create(&self, s: KeySettings) -> ApiResult<(ApiKey, String)> {
        let created = self.store.create(s).await.map_err(access_error)?;
        self.key_created();
        Ok(created)
    }
}

/// One of a key's concurrent requests.
pub struct InFlight {
    access: Arc<Access>,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut m = self.access.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        })
        .map(str::trim);
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim))
        .filter(|k| !k.is_empty())
}

fn invalid_key(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message).with_code("invalid_api_key")
}

pub fn insufficient_scope(scope: Scope) -> ApiError {
    let what = match scope {
        Scope::Inference => "the OpenAI API (scope `inference`)",
        Scope::Admin => "this endpoint (scope `admin`)",
    };
    ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_request_error",
        format!("This API key may not use {what}."),
    )
    .with_code("insufficient_scope")
}

/// The access crate's errors as HTTP errors.
pub fn access_error(e: hfms_access::AccessError) -> ApiError {
    match e {
        hfms_access::AccessError::Invalid { param, message } => ApiError::invalid(Some(param.to_string()), message),
        other => {
            tracing::error!(error = %other, "the key store failed");
            ApiError::internal("The key store failed; the server's log has the details.")
        }
    }
}

/// 429 for a limit the key reached.
pub fn limited(what: &'static str, d: &Decision) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        what,
        format!(
            "Rate limit reached: {} {what} per minute. Retry in {}.",
            d.limit,
            go_duration(d.retry_after)
        ),
    )
    .with_code("rate_limit_exceeded");
    e.retry_after = Some(d.retry_after.as_secs_f64().ceil().max(1.0) as u64);
    e
}

pub fn check(allowed: Scope, caller: &Caller) -> ApiResult<()> {
    if caller.has(allowed) {
        Ok(())
    } else {
        Err(insufficient_scope(allowed))
    }
}

/// OpenAI's rate-limit headers for one kind (`requests` or `tokens`).
pub fn set_headers(headers: &mut HeaderMap, kind: &str, d: &Decision) {
    for (name, value) in [
        (format!("x-ratelimit-limit-{kind}"), d.limit.to_string()),
        (format!("x-ratelimit-remaining-{kind}"), d.remaining.to_string()),
        (format!("x-ratelimit-reset-{kind}"), go_duration(d.reset)),
    ] {
        if let (Ok(n), Ok(v)) = (axum::http::HeaderName::try_from(name), HeaderValue::from_str(&value)) {
            headers.insert(n, v);
        }
    }
}

/// A duration as OpenAI writes it in rate-limit headers: `20ms`, `1s`,
/// `6m0s`, `1.5s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (m, s) = (ms / 60_000, (ms % 60_000) as f64 / 1000.0);
    let secs = format!("{s:.3}");
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

tokio::task_local! {
    /// The caller of the request being handled, with its token decision
    /// (for the response headers).
    static CURRENT: RequestAccess;
}

/// What a request used, as its handler learns it (for its usage record).
#[derive(Debug, Clone, Default)]
pub struct UsageNote {
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub finish_reason: Option<&'static str>,
    pub ttft_ms: Option<f64>,
    pub cache_hit: bool,
}

#[derive(Clone)]
pub struct RequestAccess {
    pub caller: Caller,
    access: Arc<Access>,
    tokens: Arc<Mutex<Option<Decision>>>,
    usage: Arc<Mutex<UsageNote>>,
}

impl RequestAccess {
    pub fn new(caller: Caller, access: Arc<Access>) -> Self {
        RequestAccess {
            caller,
            access,
            tokens: Arc::new(Mutex::new(None)),
            usage: Arc::new(Mutex::new(UsageNote::default())),
        }
    }

    pub fn access(&self) -> &Arc<Access> {
        &self.access
    }

    pub fn usage(&self) -> UsageNote {
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn note(&self, f: impl FnOnce(&mut UsageNote)) {
        f(&mut self.usage.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Run `f` as this request.
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }

    /// The last token decision (for headers).
    pub fn token_decision(&self) -> Option<Decision> {
        *self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The current request's caller and access (None outside a request).
pub fn current() -> Option<RequestAccess> {
    CURRENT.try_with(|c| c.clone()).ok()
}

/// Whether the current caller's key may use a model (listings show only
/// those; OpenAI answers 404 for a model a key cannot see).
pub fn may_use(d: &hfms_engine::discover::ModelDescription) -> bool {
    current()
        .and_then(|c| c.caller.key().cloned())
        .is_none_or(|k| k.allows_model(d.names()))
}

/// Refuse a model the caller's key may not use. `names`: the model's id
/// and aliases when it is known, else what the client asked for (the
/// patterns are matched against these, never against a requested name that
/// resolved to something else).
pub fn check_model(requested: &str, names: &[&str]) -> ApiResult<()> {
    let Some(key) = current().and_then(|c| c.caller.key().cloned()) else {
        return Ok(());
    };
    let allowed = if names.is_empty() {
        key.allows_model([requested])
    } else {
        key.allows_model(names.iter().copied())
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            format!("This API key may not use the model `{requested}`."),
        )
        .with_code("model_not_allowed"))
    }
}

/// How a generation ended, for its usage record and token limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settled {
    pub completion_tokens: usize,
    pub cached_tokens: usize,
    pub finish_reason: Option<&'static str>,
    /// Seconds from submission to the first token (the earliest choice's).
    pub ttft: Option<f64>,
}

/// The tokens of one request: noted for its usage record and, when its key
/// has a token limit, charged to it (the prompt when admitted, refused past
/// the limit; the completion when it ends).
#[derive(Clone)]
pub struct TokenMeter {
    request: RequestAccess,
}

impl TokenMeter {
    async fn admit(&self, prompt_tokens: usize) -> ApiResult<()> {
        if let Some(key) = self.request.caller.key()
            && let Some(d) = self.request.access.take_tokens(key, prompt_tokens as u64, false).await
        {
            *self.request.tokens.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
            if !d.allowed {
                // Refused: nothing was processed, nothing is billed.
                return Err(limited("tokens", &d));
            }
        }
        self.request.note(|u| u.prompt_tokens = prompt_tokens as u64);
        Ok(())
    }

    pub async fn settle(&self, s: Settled) {
        self.request.note(|u| {
            u.completion_tokens = s.completion_tokens as u64;
            u.cached_tokens = s.cached_tokens as u64;
            u.finish_reason = s.finish_reason;
            u.ttft_ms = s.ttft.map(|t| t * 1e3);
        });
        if s.completion_tokens > 0
            && let Some(key) = self.request.caller.key()
        {
            self.request
                .access
                .take_tokens(key, s.completion_tokens as u64, true)
                .await;
        }
    }
}

/// Note a request's prompt tokens and charge them to its key's token
/// limit; the meter settles the completion.
pub async fn admit_tokens(prompt_tokens: usize) -> ApiResult<Option<TokenMeter>> {
    let Some(request) = current() else {
        return Ok(None);
    };
    let m = TokenMeter { request };
    m.admit(prompt_tokens).await?;
    Ok(Some(m))
}

/// A request answered from the response cache: its record carries the
/// stored answer's usage and no engine work.
pub fn note_cache_hit(stored: &[u8]) {
    #[derive(serde::Deserialize, Default)]
    struct Stored {
        #[serde(default)]
        usage: Option<StoredUsage>,
    }
    #[derive(serde::Deserialize, Default)]
    struct StoredUsage {
        #[serde(default)]
        prompt_tokens: u64,
        #[serde(default)]
        completion_tokens: u64,
        #[serde(default)]
        prompt_tokens_details: Option<Details>,
    }
    #[derive(serde::Deserialize, Default)]
    struct Details {
        #[serde(default)]
        cached_tokens: u64,
    }
    let Some(request) = current() else {
        return;
    };
    let usage = serde_json::from_slice::<Stored>(stored)
        .ok()
        .and_then(|s| s.usage)
        .unwrap_or_default();
    request.note(|u| {
        u.cache_hit = true;
        u.prompt_tokens = usage.prompt_tokens;
        u.completion_tokens = usage.completion_tokens;
        u.cached_tokens = usage.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_openais() {
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(61_250)), "1m1.25s");
    }

    #[test]
    fn without_keys_the_admin_api_is_open_only_on_loopback() {
        let local = Caller::Anyone { admin: true };
        let network = Caller::Anyone { admin: false };
        assert!(local.has(Scope::Admin) && local.has(Scope::Inference));
        assert!(!network.has(Scope::Admin) && network.has(Scope::Inference));
        assert!(check(Scope::Admin, &network).is_err());
    }

    #[test]
    fn keys_come_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("sk-hfms-a"));
        assert_eq!(presented_key(&h), Some("sk-hfms-a"));
        h.insert("authorization", HeaderValue::from_static("Bearer  sk-hfms-b "));
        assert_eq!(presented_key(&h), Some("sk-hfms-b"));
        h.insert("authorization", HeaderValue::from_static("BEARER sk-hfms-c"));
        assert_eq!(presented_key(&h), Some("sk-hfms-c"));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_key(&h), Some("sk-hfms-a"));
        h.insert("x-api-key", HeaderValue::from_static(""));
        assert_eq!(presented_key(&h), None);
    }
}
