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
use hfms_access::usage::{Period, Price, UsageRecord, UsageWriter};
use hfms_access::{ApiKey, Decision, KeySettings, KeyStore, RateLimiter, Scope, SessionStore};
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
    /// Where usage records the database cannot take by shutdown are kept
    /// for the next start.
    pub usage_spill: Option<std::path::PathBuf>,
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
    /// Dashboard sessions (in the key database, so replicas share them).
    sessions: SessionStore,
    /// SHA-256 of a session token → whom it signs in, for a few seconds.
    signed_in: moka::future::Cache<[u8; 32], Caller>,
    /// What each key with a budget spent this day and month: read from the
    /// usage records, then kept current with this replica's own records
    /// (other replicas' spending shows when the entry is read again).
    spent: Mutex<HashMap<String, Spent>>,
    /// How long a key's spending is trusted before the records are read
    /// again (other replicas' spending shows then).
    spent_ttl: Duration,
    /// Requests whose usage is still held (a stream's producer may outlive
    /// its connection): shutdown waits for them before the last commit.
    live_usage: std::sync::atomic::AtomicUsize,
    /// Last `last_used_at` written per key (written at most once a minute).
    touched: Mutex<HashMap<String, i64>>,
    /// Taken at shutdown to commit what is queued.
    usage: Mutex<Option<UsageWriter>>,
    prices: HashMap<String, Price>,
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// How long a dashboard session lasts.
pub const SESSION_SECONDS: i64 = 12 * 3600;

/// 429 `insufficient_quota` when a key spent its daily or monthly budget
/// (`Retry-After`: the period's end).
fn over_budget(key: &ApiKey, s: &Spent, now: i64) -> Option<ApiError> {
    let (_, day_end) = Period::Day.bounds(now);
    let (_, month_end) = Period::Month.bounds(now);
    for (budget, spent, what, end) in [
        (key.budget_daily, s.day, "daily", day_end),
        (key.budget_monthly, s.month, "monthly", month_end),
    ] {
        if let Some(b) = budget
            && spent >= b
        {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                format!("This API key has used its {what} budget ({spent:.4} of {b})."),
            )
            .with_code("insufficient_quota");
            e.retry_after = Some((end - now).max(1) as u64);
            return Some(e);
        }
    }
    None
}

/// A key's spending in the current day and month (cost units).
#[derive(Debug, Clone, Copy)]
pub struct Spent {
    day_start: i64,
    month_start: i64,
    day: f64,
    month: f64,
    read_at: std::time::Instant,
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
            sessions: SessionStore::new(store.pool().clone()),
            signed_in: moka::future::Cache::builder()
                .max_capacity(if c.key_cache_ttl.is_zero() { 0 } else { 10_000 })
                .time_to_live(c.key_cache_ttl.max(Duration::from_millis(1)))
                .build(),
            spent: Mutex::new(HashMap::new()),
            spent_ttl: c.key_cache_ttl.max(Duration::from_secs(1)),
            live_usage: std::sync::atomic::AtomicUsize::new(0),
            touched: Mutex::new(HashMap::new()),
            usage: Mutex::new(Some(UsageWriter::start(
                store.pool().clone(),
                c.usage_commit_interval,
                c.usage_spill.clone(),
            ))),
            prices: c.prices.clone(),
            store,
        })
    }

    /// Set a usage record's cost from the price table.
    pub fn price(&self, r: &mut UsageRecord) {
        if let Some(p) = self.prices.get(&r.model) {
            r.cost = p.cost(r.prompt_tokens, r.cached_tokens, r.completion_tokens);
        }
    }

    /// Add to what a key spent this period (its budgets see it at once).
    fn spend(&self, key_id: &str, cost: f64) {
        if cost != 0.0
            && let Some(s) = self.spent.lock().unwrap_or_else(|p| p.into_inner()).get_mut(key_id)
        {
            s.day += cost;
            s.month += cost;
        }
    }

    /// The cost of `prompt_tokens` of a model (what admission reserves
    /// against a budget).
    fn prompt_cost(&self, model: &str, prompt_tokens: u64) -> f64 {
        self.prices.get(model).map_or(0.0, |p| p.cost(prompt_tokens, 0, 0))
    }

    /// Queue a priced usage record; its cost (less what admission
    /// reserved) counts against its key's budget at once.
    pub fn record_usage(&self, r: UsageRecord, reserved: f64) {
        if let Some(id) = &r.key_id {
            self.spend(id, r.cost - reserved);
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

    /// Commit every queued usage record (graceful shutdown), after the
    /// requests still holding theirs (streams whose producers have not yet
    /// noticed their end) let go, for up to five seconds.
    pub async fn shutdown(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.live_usage.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
        self.signed_in.invalidate_all();
    }

    /// While auth is off, ask the database now and then whether a key
    /// appeared: a key made by `hfms keys` or another replica turns auth
    /// on here too, within --auth-cache-seconds (at least a second).
    pub async fn refresh_required(&self) -> bool {
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

    /// Whether keyless callers may use the admin API while auth is off.
    pub fn keyless_admin(&self) -> bool {
        self.keyless_admin
    }

    /// The caller of a request: its key, or — outside the inference API,
    /// when it sends none — its dashboard session cookie (state-changing
    /// methods must then carry the session's CSRF token).
    pub async fn identify(&self, headers: &HeaderMap, method: &axum::http::Method, path: &str) -> ApiResult<Caller> {
        if !inference_path(path)
            && presented_key(headers).is_none()
            && !crate::dashboard::session_tokens(headers).is_empty()
            && self.refresh_required().await
        {
            let (caller, token) = self
                .session_of(headers)
                .await?
                .ok_or_else(|| invalid_key("The dashboard session has ended: sign in again with an admin key."))?;
            if !method.is_safe() {
                check_csrf(headers, token)?;
            }
            return Ok(caller);
        }
        self.authenticate(headers).await
    }

    /// The first live session among a request's session cookies, and its
    /// token.
    pub async fn session_of<'h>(&self, headers: &'h HeaderMap) -> ApiResult<Option<(Caller, &'h str)>> {
        for token in crate::dashboard::session_tokens(headers) {
            if let Some(caller) = self.session(token).await? {
                return Ok(Some((caller, token)));
            }
        }
        Ok(None)
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
        self.authenticate_secret(presented).await
    }

    /// The caller a presented secret names (auth is on).
    async fn authenticate_secret(&self, presented: &str) -> ApiResult<Caller> {
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
                let found = self.store.verify(presented).await.map_err(store_unavailable)?;
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

    /// Whom the bootstrap admin key's sessions name: a fingerprint of it,
    /// so that a changed admin key ends them.
    fn operator_subject(&self) -> Option<String> {
        self.admin_hash.map(|h| {
            let fp = Sha256::digest(h);
            format!(
                "operator:{}",
                fp[..12].iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        })
    }

    /// Sign in to the dashboard with an admin-scoped secret: a session
    /// token for the cookie.
    pub async fn sign_in(&self, presented: &str) -> ApiResult<(Caller, String)> {
        let presented = presented.trim();
        if presented.is_empty() || presented.len() > 1024 {
            return Err(invalid_key("Incorrect API key provided."));
        }
        let caller = self.authenticate_secret(presented).await?;
        let caller = match caller {
            // Read the key afresh, not from the verified-secret cache: a
            // secret rotated through another replica must not sign in.
            Caller::Key(_) => match self.store.verify(presented).await.map_err(store_unavailable)? {
                Some(k) if k.active(hfms_access::keys::unix_now()) => Caller::Key(Arc::new(k)),
                _ => return Err(invalid_key("Incorrect API key provided.")),
            },
            other => other,
        };
        check(Scope::Admin, &caller)?;
        // A key's sessions name the secret they were made with: rotating
        // it ends them.
        let subject = match &caller {
            Caller::Key(k) => format!("{}:{}", k.id, k.secret_version),
            _ => self.operator_subject().unwrap_or_default(),
        };
        let token = self
            .sessions
            .create(&subject, SESSION_SECONDS)
            .await
            .map_err(store_unavailable)?;
        Ok((caller, token))
    }

    /// The admin a session token signs in, if it is live and its key still
    /// may administer.
    pub async fn session(&self, token: &str) -> ApiResult<Option<Caller>> {
        let digest = sha256(token);
        if let Some(c) = self.signed_in.get(&digest).await {
            return Ok(Some(c));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let Some(session) = self.sessions.get(token).await.map_err(store_unavailable)? else {
            return Ok(None);
        };
        let caller = if session.subject.starts_with("operator:") {
            if Some(&session.subject) != self.operator_subject().as_ref() {
                return Ok(None);
            }
            Caller::Operator
        } else {
            let Some((id, version)) = session.subject.split_once(':') else {
                return Ok(None);
            };
            let key = self.store.get(id).await.map_err(store_unavailable)?;
            match key {
                Some(k)
                    if k.secret_version == version
                        && k.active(hfms_access::keys::unix_now())
                        && k.has_scope(Scope::Admin) =>
                {
                    Caller::Key(Arc::new(k))
                }
                _ => return Ok(None),
            }
        };
        if self.generation.load(Ordering::SeqCst) == generation {
            self.signed_in.insert(digest, caller.clone()).await;
        }
        Ok(Some(caller))
    }

    pub async fn sign_out(&self, token: &str) -> ApiResult<()> {
        self.signed_in.invalidate(&sha256(token)).await;
        self.sessions.delete(token).await.map_err(store_unavailable)
    }

    /// Refuse a key that spent its daily or monthly budget (429
    /// `insufficient_quota`, retry when the period ends).
    pub async fn check_budget(&self, key: &ApiKey) -> ApiResult<()> {
        if key.budget_daily.is_none() && key.budget_monthly.is_none() {
            return Ok(());
        }
        let now = hfms_access::keys::unix_now();
        let (day_start, _) = Period::Day.bounds(now);
        let (month_start, _) = Period::Month.bounds(now);
        let known = self
            .spent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key.id)
            .copied();
        let s = match known {
            Some(s) if s.day_start == day_start && s.read_at.elapsed() < self.spent_ttl => s,
            _ => {
                let pool = self.store.pool();
                let day = hfms_access::usage::spent_since(pool, &key.id, day_start)
                    .await
                    .map_err(store_unavailable)?;
                let month = hfms_access::usage::spent_since(pool, &key.id, month_start)
                    .await
                    .map_err(store_unavailable)?;
                let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
                let e = spent.entry(key.id.clone()).or_insert(Spent {
                    day_start,
                    month_start,
                    day,
                    month,
                    read_at: std::time::Instant::now(),
                });
                // The records lag this replica's own spending (queued, not
                // yet committed): a fresh read never lowers what is known.
                let same_day = e.day_start == day_start;
                let same_month = e.month_start == month_start;
                *e = Spent {
                    day_start,
                    month_start,
                    day: if same_day { day.max(e.day) } else { day },
                    month: if same_month { month.max(e.month) } else { month },
                    read_at: std::time::Instant::now(),
                };
                *e
            }
        };
        over_budget(key, &s, now).map_or(Ok(()), Err)
    }

    /// Add a request's prompt cost to its key's spending at admission,
    /// unless the budget is already spent (requests admitted together then
    /// see each other: the overshoot is at most one prompt plus the
    /// completions in flight).
    fn reserve(&self, key: &ApiKey, cost: f64) -> ApiResult<()> {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = spent.get_mut(&key.id) else {
            return Ok(());
        };
        if let Some(e) = over_budget(key, s, hfms_access::keys::unix_now()) {
            return Err(e);
        }
        s.day += cost;
        s.month += cost;
        Ok(())
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

fn store_unavailable(e: hfms_access::AccessError) -> ApiError {
    tracing::error!(error = %e, "the key store failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "The key store is unavailable.",
    )
    .with_code("key_store_unavailable")
}

/// The dashboard's CSRF token for a session: derived from the session
/// token, which only the cookie holds, so a page of another site can
/// neither read nor guess it.
pub fn csrf_token(session_token: &str) -> String {
    let d = Sha256::digest(format!("hfms-csrf:{session_token}").as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A cookie-authenticated request that changes something must carry the
/// session's CSRF token (a cross-site form cannot set headers).
pub fn check_csrf(headers: &HeaderMap, session_token: &str) -> ApiResult<()> {
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if bool::from(sent.as_bytes().ct_eq(csrf_token(session_token).as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "Missing or wrong x-csrf-token for a request signed in by the dashboard's session cookie.",
        )
        .with_code("csrf_failed"))
    }
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
    /// The model's id, once the handler resolved it.
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub finish_reason: Option<&'static str>,
    pub ttft_ms: Option<f64>,
    pub cache_hit: bool,
    /// Whether the generation settled (ended and was counted).
    pub settled: bool,
    /// Tokens generated so far, per choice: what a request cut short
    /// (client gone, handler dropped) is charged and recorded.
    pub progress: Vec<usize>,
    /// Cost added to the key's spending at admission (its prompt), so
    /// that requests admitted together see each other against a budget.
    pub reserved: f64,
}

/// The usage record a metered request gets; written when the last holder
/// of the request's usage lets go — after the response body has ended
/// (or the client left) and after a stream's producer has settled its
/// tokens.
pub struct PendingRecord {
    pub started: std::time::Instant,
    pub endpoint: String,
    pub request_id: String,
    /// The response's status; 499 until there is one (the client left
    /// before an answer).
    pub status: u16,
    /// A stream ended early: `status` says how, whatever its head said.
    pub cut_short: bool,
    pub metrics: Arc<crate::metrics::Metrics>,
}

struct UsageState {
    note: Mutex<UsageNote>,
    record: Mutex<Option<PendingRecord>>,
    access: Arc<Access>,
    key: Option<Arc<ApiKey>>,
}

impl Drop for UsageState {
    fn drop(&mut self) {
        self.access.live_usage.fetch_sub(1, Ordering::SeqCst);
        let note = std::mem::take(self.note.get_mut().unwrap_or_else(|p| p.into_inner()));
        let generated: usize = note.progress.iter().sum();
        let completion = if note.settled {
            note.completion_tokens
        } else {
            // Cut short: what was generated still counts against the key.
            if generated > 0
                && let Some(key) = self.key.clone()
                && key.tpm.is_some()
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                let access = self.access.clone();
                rt.spawn(async move {
                    access.take_tokens(&key, generated as u64, true).await;
                });
            }
            generated as u64
        };
        let pending = self.record.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        let (Some(mut p), Some(model)) = (pending, note.model) else {
            if let Some(key) = &self.key {
                self.access.spend(&key.id, -note.reserved);
            }
            return;
        };
        // Dropped while a handler panicked: the client got a 500.
        if std::thread::panicking() {
            p.status = 500;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut record = UsageRecord {
            time_ms: now_ms,
            request_id: p.request_id,
            key_id: self.key.as_ref().map(|k| k.id.clone()),
            model,
            endpoint: p.endpoint,
            status: p.status,
            prompt_tokens: note.prompt_tokens,
            cached_tokens: note.cached_tokens,
            completion_tokens: completion,
            latency_ms: p.started.elapsed().as_secs_f64() * 1e3,
            ttft_ms: note.ttft_ms,
            finish_reason: note.finish_reason.map(str::to_string),
            cache_hit: note.cache_hit,
            cost: 0.0,
        };
        self.access.price(&mut record);
        p.metrics.key_usage(&record);
        self.access.record_usage(record, note.reserved);
    }
}

#[derive(Clone)]
pub struct RequestAccess {
    pub caller: Caller,
    tokens: Arc<Mutex<Option<Decision>>>,
    /// Refused at admission for its key's budget (for the metric).
    budget_refused: Arc<AtomicBool>,
    usage: Arc<UsageState>,
}

impl RequestAccess {
    pub fn new(caller: Caller, access: Arc<Access>) -> Self {
        let key = caller.key().cloned();
        access.live_usage.fetch_add(1, Ordering::SeqCst);
        RequestAccess {
            caller,
            tokens: Arc::new(Mutex::new(None)),
            budget_refused: Arc::new(AtomicBool::new(false)),
            usage: Arc::new(UsageState {
                note: Mutex::new(UsageNote::default()),
                record: Mutex::new(None),
                access,
                key,
            }),
        }
    }

    pub fn access(&self) -> &Arc<Access> {
        &self.usage.access
    }

    pub fn usage(&self) -> UsageNote {
        self.usage.note.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn note(&self, f: impl FnOnce(&mut UsageNote)) {
        f(&mut self.usage.note.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// This request gets a usage record (see `PendingRecord`).
    pub fn expect_record(&self, r: PendingRecord) {
        *self.usage.record.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    /// The status its record will carry: the response's.
    pub fn set_status(&self, status: u16) {
        if let Some(r) = self.usage.record.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
            && !r.cut_short
        {
            r.status = status;
        }
    }

    /// A stream ended early (the client left: 499; an error: its status).
    pub fn cut_short(&self, status: u16) {
        if let Some(r) = self.usage.record.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            r.status = status;
            r.cut_short = true;
        }
    }

    /// Choice `index` has generated `tokens` so far.
    pub fn progress(&self, index: usize, tokens: usize) {
        self.note(|u| {
            if u.progress.len() <= index {
                u.progress.resize(index + 1, 0);
            }
            u.progress[index] = u.progress[index].max(tokens);
        });
    }

    /// The model the request resolved to.
    pub fn note_model(&self, id: &str) {
        self.note(|u| u.model = Some(id.to_string()));
    }

    /// Run `f` as this request.
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }

    /// Whether admission refused it for its key's budget.
    pub fn budget_refused(&self) -> bool {
        self.budget_refused.load(Ordering::Relaxed)
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
            && let Some(model) = self.request.usage().model
        {
            let cost = self.request.access().prompt_cost(&model, prompt_tokens as u64);
            if let Err(e) = self.request.access().reserve(key, cost) {
                self.request.budget_refused.store(true, Ordering::Relaxed);
                return Err(e);
            }
            // Released by the record (a refused prompt is not billed).
            self.request.note(|u| u.reserved = cost);
        }
        if let Some(key) = self.request.caller.key()
            && let Some(d) = self
                .request
                .access()
                .take_tokens(key, prompt_tokens as u64, false)
                .await
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

    /// The generation ended (whole, or cut short by an error, the time
    /// limit or the client): its completion tokens are recorded and
    /// charged — the finished choices' counts, or what the choices cut
    /// short had generated, whichever is more.
    pub async fn settle(&self, s: Settled) {
        let mut completion = 0;
        self.request.note(|u| {
            completion = s.completion_tokens.max(u.progress.iter().sum());
            u.completion_tokens = completion as u64;
            u.cached_tokens = s.cached_tokens as u64;
            u.finish_reason = s.finish_reason;
            u.ttft_ms = s.ttft.map(|t| t * 1e3);
        });
        if completion > 0
            && let Some(key) = self.request.caller.key()
        {
            self.request.access().take_tokens(key, completion as u64, true).await;
        }
        // Only now: dropped during the charge, the request is charged by
        // its usage's drop instead.
        self.request.note(|u| u.settled = true);
    }
}

/// The inference API: the OpenAI paths, and TEI's `/rerank` beside them.
pub fn inference_path(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/rerank"
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
        u.settled = true;
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
