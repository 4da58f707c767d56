//! Loaded models: which exist (the catalog from discovery), which are in
//! memory, where they are placed, and how long they stay.
//!
//! - Loads are single-flight: concurrent requests for a model that is not
//!   loaded cause one load; the others wait for it.
//! - Placement asks `hfms_hardware::place` for a device; when nothing has
//!   room, the least-recently-used idle models are evicted until the new one
//!   fits. A model with requests in flight, or pinned, is never evicted.
//! - `keep_alive` has Ollama's meaning: how long a model stays loaded after
//!   its last request (a default for all, overridden per request): 0 unloads
//!   it when its last request ends, negative keeps it forever.
//!
//! Calls block; async callers run them on a blocking thread.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hfms_hardware::{DeviceId, DeviceLoad, DeviceState, InFlightGuard, ModelFootprint, PlacementRequest, Platform};

use crate::compute::ComputePool;
use crate::discover::ModelDescription;
use crate::error::{EngineError, Result};
use crate::generate::SchedulerConfig;
use crate::observe::UnloadCause;
use crate::skills::{LoadContext, LoadedModel, Registry, Task};

/// How long a model stays loaded after its last request. Shown (JSON) as
/// seconds, with Ollama's -1 for forever and 0 for "until idle".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Never unloaded for idleness (memory pressure may still evict it).
    Forever,
    /// Unloaded this long after the last request ends.
    For(Duration),
    /// Unloaded as soon as its last request ends (`keep_alive: 0`).
    UntilIdle,
}

impl KeepAlive {
    /// Longer than this is forever: Ollama clients send huge values
    /// ("99999h", 1e19) to mean "never unload", and a deadline that far
    /// out would overflow clock arithmetic.
    pub const FOREVER_AFTER: Duration = Duration::from_secs(100 * 365 * 86_400);

    /// Ollama's forms: a number of seconds (negative: forever, 0: unload
    /// now) or a duration string ("5m", "1h30m", "30s", "-1", "0").
    /// Non-finite numbers are an error; anything past `FOREVER_AFTER`
    /// (including durations too large to represent) is `Forever`.
    pub fn parse(v: &serde_json::Value) -> std::result::Result<Self, String> {
        match v {
            serde_json::Value::Number(n) => {
                let secs = n.as_f64().ok_or("keep_alive must be a number or a duration string")?;
                Self::from_secs(secs)
            }
            serde_json::Value::String(s) => Self::parse_str(s),
            _ => Err("keep_alive must be a number of seconds or a duration like \"5m\"".into()),
        }
    }

    pub fn parse_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<f64>() {
            return Self::from_secs(secs);
        }
        let bad = |e: humantime::DurationError| {
            format!("{s:?} is not a duration ({e}); use e.g. 30s, 5m, 1h, or a number of seconds")
        };
        if let Some(rest) = s.strip_prefix('-') {
            return match humantime::parse_duration(rest) {
                Ok(_) | Err(humantime::DurationError::NumberOverflow) => Ok(KeepAlive::Forever),
                Err(e) => Err(bad(e)),
            };
        }
        match humantime::parse_duration(s) {
            Ok(d) => Ok(Self::from_duration(d)),
            Err(humantime::DurationError::NumberOverflow) => Ok(KeepAlive::Forever),
            Err(e) => Err(bad(e)),
        }
    }

    fn from_secs(secs: f64) -> std::result::Result<Self, String> {
        if !secs.is_finite() {
            return Err(format!("keep_alive must be a finite number of seconds, got {secs}"));
        }
        Ok(if secs < 0.0 || secs >= Self::FOREVER_AFTER.as_secs_f64() {
            KeepAlive::Forever
        } else {
            Self::from_duration(Duration::from_secs_f64(secs))
        })
    }

    fn from_duration(d: Duration) -> Self {
        if d.is_zero() {
            KeepAlive::UntilIdle
        } else if d >= Self::FOREVER_AFTER {
            KeepAlive::Forever
        } else {
            KeepAlive::For(d)
        }
    }

    fn expired(self, idle_since: Instant, now: Instant) -> bool {
        match self {
            KeepAlive::Forever => false,
            KeepAlive::UntilIdle => true,
            KeepAlive::For(d) => now.saturating_duration_since(idle_since) >= d,
        }
    }
}

impl serde::Serialize for KeepAlive {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            KeepAlive::Forever => s.serialize_i64(-1),
            KeepAlive::UntilIdle => s.serialize_i64(0),
            KeepAlive::For(d) => s.serialize_f64(d.as_secs_f64()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub scheduler: SchedulerConfig,
    pub batcher: crate::embed::batcher::BatcherConfig,
    /// Devices as detected at start-up, with `free_bytes` already capped by
    /// the memory budget for models on each device.
    pub devices: Vec<DeviceState>,
    /// Model id → the device it must run on.
    pub pins: BTreeMap<String, DeviceId>,
    /// Platforms no model may use.
    pub forbidden: BTreeSet<Platform>,
    /// Default keep-alive for every model.
    pub keep_alive: KeepAlive,
    /// Model ids that are never evicted or expired.
    pub pinned: BTreeSet<String>,
    /// How CPU encoders hold their f32 layer weights (`LoadContext`).
    pub encoder_weights: crate::skills::bert::EncoderWeights,
    /// Operator chat templates (Jinja source) by model id: replace the
    /// model's own.
    pub chat_templates: BTreeMap<String, Arc<str>>,
    /// The operator's chat template for generation models without one.
    pub default_chat_template: Option<Arc<str>>,
    /// Metrics hooks for every model and for loads and unloads.
    pub observers: Arc<dyn crate::observe::Observers>,
}

impl ManagerConfig {
    /// CPU only, default scheduling: tests and tools.
    pub fn cpu(scheduler: SchedulerConfig) -> Self {
        ManagerConfig {
            scheduler,
            batcher: Default::default(),
            devices: vec![DeviceState {
                id: DeviceId::CPU,
                total_bytes: u64::MAX / 4,
                free_bytes: u64::MAX / 4,
                build_supported: true,
                resident_models: 0,
                reserved_bytes: 0,
                in_flight: 0,
            }],
            pins: BTreeMap::new(),
            forbidden: BTreeSet::new(),
            keep_alive: KeepAlive::Forever,
            pinned: BTreeSet::new(),
            encoder_weights: Default::default(),
            chat_templates: BTreeMap::new(),
            default_chat_template: None,
            observers: Arc::new(crate::observe::Nothing),
        }
    }
}

/// A loaded model held for the length of a request: while any lease is
/// alive the request counts as in flight on the model (which is then never
/// evicted) and on its device.
pub struct ModelLease {
    pub id: String,
    pub device: DeviceId,
    pub model: Arc<LoadedModel>,
    inner: Arc<Inner>,
    _in_flight: InFlightGuard,
}

impl std::ops::Deref for ModelLease {
    type Target = LoadedModel;
    fn deref(&self) -> &LoadedModel {
        &self.model
    }
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        self.inner.request_ended(&self.id);
    }
}

/// One device's capacity and load, for `/status` and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceStatus {
    pub device: DeviceId,
    pub total_bytes: u64,
    /// What models may use there (free at start-up, capped by the budget).
    pub budget_bytes: u64,
    pub build_supported: bool,
    pub resident_bytes: u64,
    pub resident_models: usize,
    pub in_flight: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    Unloaded,
    Loading,
    Loaded,
    Unloading,
}

/// One model's state for `/status` and `/v1/models`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelStatus {
    pub id: String,
    pub state: ModelState,
    pub device: Option<String>,
    /// Weight bytes while loaded.
    pub bytes: Option<usize>,
    /// Bytes reserved on the device (weights, KV budget, working set).
    pub reserved_bytes: Option<u64>,
    /// Unix seconds of the last request.
    pub last_used: Option<u64>,
    pub in_flight: usize,
    pub pinned: bool,
    pub keep_alive: KeepAlive,
    /// Unix seconds when it will be unloaded for idleness, if it will.
    pub expires_at: Option<u64>,
    pub loads: u64,
    pub evictions: u64,
    pub last_load_seconds: Option<f64>,
    pub last_error: Option<String>,
}

/// Counters across all models.
#[derive(Debug, Default, serde::Serialize)]
pub struct ManagerCounters {
    pub loads: AtomicU64,
    pub load_failures: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub unloads: AtomicU64,
}

enum Slot {
    Loading,
    Loaded {
        model: Arc<LoadedModel>,
        device: DeviceId,
        /// Bytes reserved on the device for it.
        reserved: u64,
    },
    Unloading,
}

#[derive(Default)]
struct Record {
    slot: Option<Slot>,
    in_flight: usize,
    last_used: Option<SystemTime>,
    /// When the last request ended (or the load finished): the LRU clock
    /// and the keep-alive clock.
    idle_since: Option<Instant>,
    /// Set by the latest request or load call; None: the default.
    keep_alive: Option<KeepAlive>,
    /// An unload was asked for while requests were in flight: the last
    /// one to end unloads it. Cleared by the unload, so it never outlives
    /// that model instance (a later load keeps its keep-alive).
    unload_when_idle: bool,
    loads: u64,
    evictions: u64,
    last_load: Option<Duration>,
    last_error: Option<String>,
}

struct Inner {
    registry: Registry,
    /// Grows when a model is pulled from the Hub while serving; readers
    /// take a snapshot.
    catalog: std::sync::RwLock<Arc<Vec<ModelDescription>>>,
    aliases: BTreeMap<String, String>,
    records: Mutex<HashMap<String, Record>>,
    changed: Condvar,
    pool: ComputePool,
    config: ManagerConfig,
    load: DeviceLoad,
    counters: ManagerCounters,
    stop: AtomicBool,
}

pub struct ModelManager {
    inner: Arc<Inner>,
}

impl Drop for ModelManager {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.changed.notify_all();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Record>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep_alive_of(&self, id: &str, rec: &Record) -> KeepAlive {
        if self.config.pinned.contains(id) {
            return KeepAlive::Forever;
        }
        rec.keep_alive.unwrap_or(self.config.keep_alive)
    }

    fn request_ended(&self, id: &str) {
        let mut records = self.lock();
        let Some(rec) = records.get_mut(id) else { return };
        rec.in_flight = rec.in_flight.saturating_sub(1);
        let now = Instant::now();
        rec.idle_since = Some(now);
        rec.last_used = Some(SystemTime::now());
        if rec.in_flight == 0 && (rec.unload_when_idle || self.keep_alive_of(id, rec) == KeepAlive::UntilIdle) {
            let taken = take_for_unload(rec);
            drop(records);
            if let Some(t) = taken {
                self.finish_unload(id, t, UnloadCause::Request);
            }
        }
    }

    /// Release a model taken out of its slot (outside the lock: dropping a
    /// model stops its scheduler thread and unmaps its weights).
    fn finish_unload(
        &self,
        id: &str,
        (model, device, reserved): (Arc<LoadedModel>, DeviceId, u64),
        cause: UnloadCause,
    ) {
        drop(model);
        if let Err(e) = self.load.release(device, reserved) {
            tracing::warn!(model = %id, error = %e, "device accounting was off at unload");
        }
        let counter = match cause {
            UnloadCause::Request => &self.counters.unloads,
            UnloadCause::Expired => &self.counters.expirations,
            UnloadCause::Evicted => &self.counters.evictions,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut records = self.lock();
        if let Some(rec) = records.get_mut(id) {
            if matches!(rec.slot, Some(Slot::Unloading)) {
                rec.slot = None;
            }
            // A keep-alive belongs to the instance it was set on: the next
            // load starts from the default again.
            rec.unload_when_idle = false;
            rec.keep_alive = None;
            if matches!(cause, UnloadCause::Evicted) {
                rec.evictions += 1;
            }
        }
        drop(records);
        self.config.observers.model_unloaded(id, cause);
        tracing::info!(model = %id, %device, cause = cause.as_str(), "model unloaded");
        self.changed.notify_all();
    }

    /// Unload idle models whose keep-alive has run out.
    fn reap(&self) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut records = self.lock();
            let ids: Vec<String> = records.keys().cloned().collect();
            for id in ids {
                let Some(rec) = records.get_mut(&id) else { continue };
                if rec.in_flight > 0 || !matches!(rec.slot, Some(Slot::Loaded { .. })) {
                    continue;
                }
                let ka = self.keep_alive_of(&id, rec);
                if rec.idle_since.is_some_and(|t| ka.expired(t, now))
                    && let Some(t) = take_for_unload(rec)
                {
                    due.push((id, t));
                }
            }
        }
        for (id, t) in due {
            self.finish_unload(&id, t, UnloadCause::Expired);
        }
    }

    /// Evict the least-recently-used idle, unpinned model other than
    /// `except`. False when there is none.
    fn evict_one(&self, except: &str) -> bool {
        let victim = {
            let mut records = self.lock();
            let pick = records
                .iter()
                .filter(|(id, r)| {
                    id.as_str() != except
                        && r.in_flight == 0
                        && !self.config.pinned.contains(id.as_str())
                        && matches!(r.slot, Some(Slot::Loaded { .. }))
                })
                .min_by_key(|(_, r)| r.idle_since)
                .map(|(id, _)| id.clone());
            pick.and_then(|id| {
                let rec = records.get_mut(&id)?;
                take_for_unload(rec).map(|t| (id, t))
            })
        };
        match victim {
            Some((id, t)) => {
                tracing::info!(model = %id, for_model = %except, "evicting the least recently used idle model to make room");
                self.finish_unload(&id, t, UnloadCause::Evicted);
                true
            }
            None => false,
        }
    }
}

/// Take a loaded model out of its record, leaving it `Unloading`.
fn take_for_unload(rec: &mut Record) -> Option<(Arc<LoadedModel>, DeviceId, u64)> {
    match rec.slot.take() {
        Some(Slot::Loaded {
            model,
            device,
            reserved,
        }) => {
            rec.slot = Some(Slot::Unloading);
            Some((model, device, reserved))
        }
        other => {
            rec.slot = other;
            None
        }
    }
}

impl ModelManager {
    pub fn new(
        registry: Registry,
        catalog: Vec<ModelDescription>,
        aliases: BTreeMap<String, String>,
        pool: ComputePool,
        config: ManagerConfig,
    ) -> Self {
        let inner = Arc::new(Inner {
            registry,
            catalog: std::sync::RwLock::new(Arc::new(catalog)),
            aliases,
            records: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            pool,
            config,
            load: DeviceLoad::new(),
            counters: ManagerCounters::default(),
            stop: AtomicBool::new(false),
        });
        // The reaper holds only a weak reference: dropping the manager ends it.
        let weak = Arc::downgrade(&inner);
        let spawned = std::thread::Builder::new().name("hfms-reaper".into()).spawn(move || {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if inner.stop.load(Ordering::Relaxed) {
                    return;
                }
                inner.reap();
                let guard = inner.lock();
                let _ = inner.changed.wait_timeout(guard, Duration::from_millis(500));
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the keep-alive reaper; models will not expire");
        }
        ModelManager { inner }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn pool(&self) -> &ComputePool {
        &self.inner.pool
    }

    pub fn counters(&self) -> &ManagerCounters {
        &self.inner.counters
    }

    /// Every model known, servable or not.
    pub fn catalog(&self) -> Arc<Vec<ModelDescription>> {
        self.inner.catalog.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Add a model found after start (pulled from the Hub), or replace the
    /// description of one with the same id that is not loaded.
    pub fn add_model(&self, desc: ModelDescription) -> Result<()> {
        let loaded = self.inner.lock().get(&desc.id).is_some_and(|r| r.slot.is_some());
        let mut guard = self.inner.catalog.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<ModelDescription> = guard.as_ref().clone();
        match next.iter_mut().find(|d| d.id == desc.id) {
            Some(_) if loaded => {
                return Err(EngineError::InvalidRequest {
                    message: format!("model {} is loaded; unload it before replacing it", desc.id),
                    param: Some("model"),
                });
            }
            Some(d) => *d = desc,
            None => next.push(desc),
        }
        *guard = Arc::new(next);
        Ok(())
    }

    /// Forget the models whose files were under `dir` (a hub cache repo
    /// removed to keep the cache under its budget); loaded ones stay.
    pub fn remove_models_under(&self, dir: &std::path::Path) -> Vec<String> {
        let records = self.inner.lock();
        let mut guard = self.inner.catalog.write().unwrap_or_else(|e| e.into_inner());
        let (gone, kept): (Vec<ModelDescription>, Vec<ModelDescription>) = guard
            .iter()
            .cloned()
            .partition(|d| d.path.starts_with(dir) && records.get(&d.id).is_none_or(|r| r.slot.is_none()));
        *guard = Arc::new(kept);
        gone.into_iter().map(|d| d.id).collect()
    }

    /// A model by id or alias.
    pub fn resolve(&self, name: &str) -> Option<ModelDescription> {
        let id = self.inner.aliases.get(name).map(String::as_str).unwrap_or(name);
        let catalog = self.catalog();
        catalog
            .iter()
            .find(|d| d.id == id)
            .or_else(|| catalog.iter().find(|d| d.aliases.iter().any(|a| a == name)))
            .cloned()
    }

    /// Memory a model will take on its device: the weights (as the CPU
    /// engine lays them out: repacked quants are larger than the file), the
    /// KV cache budget for generation models, and a working-set estimate for
    /// activations and logits.
    fn footprint(&self, d: &ModelDescription) -> ModelFootprint {
        let weights = d.memory_bytes;
        let (kv, workspace) = match d.task {
            Some(Task::Generate) => (
                self.inner.config.scheduler.kv_budget_bytes as u64,
                (64 << 20) + weights / 50,
            ),
            _ => (0, (32 << 20) + weights / 50),
        };
        ModelFootprint {
            weights_bytes: weights,
            kv_cache_bytes: kv,
            workspace_bytes: workspace,
        }
    }

    /// Choose a device for a model (placement policy of hfms-hardware).
    fn place(
        &self,
        d: &ModelDescription,
        platforms: &[Platform],
        footprint: ModelFootprint,
        pin: Option<DeviceId>,
    ) -> std::result::Result<hfms_hardware::Placement, hfms_hardware::HardwareError> {
        let mut request = PlacementRequest::new(footprint, platforms.iter().copied());
        request.pin = pin.or_else(|| self.inner.config.pins.get(&d.id).copied());
        for p in &self.inner.config.forbidden {
            request = request.forbid(*p);
        }
        let mut devices = self.inner.config.devices.clone();
        self.inner.load.apply(&mut devices);
        hfms_hardware::place(&request, &devices)
    }

    /// Capacity and load of every device.
    pub fn devices(&self) -> Vec<DeviceStatus> {
        let snap = self.inner.load.snapshot();
        self.inner
            .config
            .devices
            .iter()
            .map(|d| {
                let l = snap.iter().find(|s| s.device == d.id);
                DeviceStatus {
                    device: d.id,
                    total_bytes: d.total_bytes,
                    budget_bytes: d.free_bytes,
                    build_supported: d.build_supported,
                    resident_bytes: l.map_or(0, |l| l.resident_bytes),
                    resident_models: l.map_or(0, |l| l.resident_models),
                    in_flight: l.map_or(0, |l| l.in_flight),
                }
            })
            .collect()
    }

    /// The loaded model, loading it first if needed (single-flight), held
    /// for one request.
    pub fn get(&self, name: &str) -> Result<ModelLease> {
        self.acquire(name, None, None)
    }

    /// `get` with a keep-alive for this model from now on (Ollama's
    /// per-request `keep_alive`) and a one-off device for a load.
    pub fn acquire(&self, name: &str, keep_alive: Option<KeepAlive>, device: Option<DeviceId>) -> Result<ModelLease> {
        let desc = self
            .resolve(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        if let Some(err) = &desc.error {
            return Err(EngineError::Unservable {
                model: desc.id.clone(),
                reason: err.clone(),
            });
        }
        let inner = &self.inner;
        let mut records = inner.lock();
        loop {
            let rec = records.entry(desc.id.clone()).or_default();
            match &rec.slot {
                Some(Slot::Loaded { model, device, .. }) => {
                    rec.in_flight += 1;
                    rec.last_used = Some(SystemTime::now());
                    if keep_alive.is_some() {
                        rec.keep_alive = keep_alive;
                    }
                    return Ok(ModelLease {
                        id: desc.id.clone(),
                        device: *device,
                        model: model.clone(),
                        inner: inner.clone(),
                        _in_flight: inner.load.request_started(*device),
                    });
                }
                Some(Slot::Loading) | Some(Slot::Unloading) => {
                    records = inner.changed.wait(records).unwrap_or_else(|p| p.into_inner());
                }
                None => {
                    rec.slot = Some(Slot::Loading);
                    break;
                }
            }
        }
        drop(records);

        // Load outside the lock; others wait on the condvar. The span is a
        // child of the request that triggered the load, if one did.
        let span = tracing::info_span!("model_load", model = %desc.id, device = tracing::field::Empty,
            otel.status_code = tracing::field::Empty);
        let result = span.in_scope(|| self.load_now(&desc, device));
        match &result {
            Ok((_, device, ..)) => span.record("device", device.to_string()),
            Err(_) => span.record("otel.status_code", "error"),
        };
        let mut records = inner.lock();
        let rec = records.entry(desc.id.clone()).or_default();
        let out = match result {
            Ok((m, device, reserved, elapsed)) => {
                rec.slot = Some(Slot::Loaded {
                    model: m.clone(),
                    device,
                    reserved,
                });
                rec.loads += 1;
                rec.last_load = Some(elapsed);
                rec.last_used = Some(SystemTime::now());
                rec.idle_since = Some(Instant::now());
                rec.last_error = None;
                rec.in_flight += 1;
                if keep_alive.is_some() {
                    rec.keep_alive = keep_alive;
                }
                inner.counters.loads.fetch_add(1, Ordering::Relaxed);
                inner
                    .config
                    .observers
                    .model_loaded(&desc.id, &device.to_string(), elapsed.as_secs_f64());
                Ok(ModelLease {
                    id: desc.id.clone(),
                    device,
                    model: m,
                    inner: inner.clone(),
                    _in_flight: inner.load.request_started(device),
                })
            }
            Err(e) => {
                tracing::error!(parent: &span, model = %desc.id, error = %e, "model failed to load");
                rec.slot = None;
                rec.last_error = Some(e.to_string());
                inner.counters.load_failures.fetch_add(1, Ordering::Relaxed);
                inner.config.observers.model_load_failed(&desc.id);
                Err(e)
            }
        };
        drop(records);
        inner.changed.notify_all();
        out
    }

    /// Place (evicting idle models while nothing fits) and load.
    fn load_now(
        &self,
        desc: &ModelDescription,
        pin: Option<DeviceId>,
    ) -> Result<(Arc<LoadedModel>, DeviceId, u64, Duration)> {
        let inner = &self.inner;
        let footprint = self.footprint(desc);
        let skill = inner.registry.for_source(&desc.source())?;
        let platforms = inner.registry.platforms(skill.info());
        let placement = loop {
            match self.place(desc, &platforms, footprint, pin) {
                Ok(p) => break p,
                // A missing pinned device does not get better by evicting.
                Err(e @ hfms_hardware::HardwareError::PinnedDeviceMissing { .. }) => {
                    return Err(EngineError::Placement {
                        model: desc.id.clone(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => {
                    if !inner.evict_one(&desc.id) {
                        return Err(EngineError::Placement {
                            model: desc.id.clone(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
        };
        tracing::info!(
            model = %desc.id,
            path = %desc.path.display(),
            device = %placement.device,
            needed_bytes = placement.needed_bytes,
            available_bytes = placement.available_bytes,
            skipped = ?placement.skipped,
            "loading model"
        );
        // Reserve first so concurrent loads see the space as taken.
        let reserved = footprint.total_bytes();
        inner.load.reserve(placement.device, reserved);
        let started = Instant::now();
        let loaded = {
            let ctx = LoadContext {
                pool: inner.pool.clone(),
                scheduler: inner.config.scheduler.clone(),
                batcher: inner.config.batcher.clone(),
                name: short_name(&desc.id),
                device: placement.device,
                encoder_weights: inner.config.encoder_weights,
                chat_template: crate::skills::ChatTemplateSource {
                    replace: inner.config.chat_templates.get(&desc.id).cloned(),
                    if_missing: inner.config.default_chat_template.clone(),
                },
                model_id: desc.id.clone(),
                observers: inner.config.observers.clone(),
                backend: inner
                    .registry
                    .backend_for(skill.info().family, placement.device.platform),
            };
            // A panic in a loader is a bug; it must not wedge the slot.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| skill.load(&desc.source(), &ctx)))
                .unwrap_or_else(|_| Err(EngineError::internal("model loader panicked")))
        };
        let elapsed = started.elapsed();
        match loaded {
            Ok(m) => {
                let m = Arc::new(m);
                tracing::info!(
                    model = %desc.id,
                    device = %placement.device,
                    seconds = elapsed.as_secs_f64(),
                    bytes = m.weight_bytes(),
                    "model loaded"
                );
                Ok((m, placement.device, reserved, elapsed))
            }
            Err(e) => {
                let _ = inner.load.release(placement.device, reserved);
                Err(EngineError::LoadFailed {
                    model: desc.id.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Unload a model: now when idle, else when its last request ends.
    /// Returns the state it is in afterwards.
    pub fn unload(&self, name: &str) -> Result<ModelState> {
        let desc = self
            .resolve(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        let id = desc.id.clone();
        let mut records = self.inner.lock();
        let Some(rec) = records.get_mut(&id) else {
            return Ok(ModelState::Unloaded);
        };
        if rec.in_flight > 0 {
            // Requests in flight finish first; the last one unloads it.
            rec.unload_when_idle = true;
            return Ok(ModelState::Unloading);
        }
        let taken = take_for_unload(rec);
        drop(records);
        match taken {
            Some(t) => {
                self.inner.finish_unload(&id, t, UnloadCause::Request);
                Ok(ModelState::Unloaded)
            }
            None => Ok(self.state_of(&id)),
        }
    }

    fn state_of(&self, id: &str) -> ModelState {
        match self.inner.lock().get(id).and_then(|r| r.slot.as_ref()) {
            Some(Slot::Loaded { .. }) => ModelState::Loaded,
            Some(Slot::Loading) => ModelState::Loading,
            Some(Slot::Unloading) => ModelState::Unloading,
            None => ModelState::Unloaded,
        }
    }

    pub fn status(&self) -> Vec<ModelStatus> {
        let records = self.inner.lock();
        let to_unix = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs());
        self.catalog()
            .iter()
            .map(|d| {
                let rec = records.get(&d.id);
                let (state, bytes, device, reserved) = match rec.and_then(|r| r.slot.as_ref()) {
                    Some(Slot::Loaded {
                        model,
                        device,
                        reserved,
                    }) => (
                        ModelState::Loaded,
                        Some(model.weight_bytes()),
                        Some(device.to_string()),
                        Some(*reserved),
                    ),
                    Some(Slot::Loading) => (ModelState::Loading, None, None, None),
                    Some(Slot::Unloading) => (ModelState::Unloading, None, None, None),
                    None => (ModelState::Unloaded, None, None, None),
                };
                let keep_alive = rec.map(|r| self.inner.keep_alive_of(&d.id, r)).unwrap_or(
                    if self.inner.config.pinned.contains(&d.id) {
                        KeepAlive::Forever
                    } else {
                        self.inner.config.keep_alive
                    },
                );
                let in_flight = rec.map_or(0, |r| r.in_flight);
                let expires_at = match (state, keep_alive, in_flight) {
                    (ModelState::Loaded, KeepAlive::For(dur), 0) => {
                        // checked: a stored state must never fail to render.
                        rec.and_then(|r| r.last_used)
                            .and_then(|t| t.checked_add(dur))
                            .and_then(to_unix)
                    }
                    _ => None,
                };
                ModelStatus {
                    id: d.id.clone(),
                    state,
                    device,
                    bytes,
                    reserved_bytes: reserved,
                    last_used: rec.and_then(|r| r.last_used).and_then(to_unix),
                    in_flight,
                    pinned: self.inner.config.pinned.contains(&d.id),
                    keep_alive,
                    expires_at,
                    loads: rec.map_or(0, |r| r.loads),
                    evictions: rec.map_or(0, |r| r.evictions),
                    last_load_seconds: rec.and_then(|r| r.last_load).map(|d| d.as_secs_f64()),
                    last_error: rec.and_then(|r| r.last_error.clone()),
                }
            })
            .collect()
    }

    /// Models currently in memory, with their handles (for stats).
    pub fn loaded(&self) -> Vec<(String, Arc<LoadedModel>)> {
        let records = self.inner.lock();
        records
            .iter()
            .filter_map(|(id, r)| match &r.slot {
                Some(Slot::Loaded { model, .. }) => Some((id.clone(), model.clone())),
                _ => None,
            })
            .collect()
    }
}

/// A short thread-name-safe label for a model id.
fn short_name(id: &str) -> String {
    id.rsplit('/').next().unwrap_or(id).chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_forms() {
        use serde_json::json;
        assert_eq!(KeepAlive::parse(&json!(-1)).unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse(&json!(0)).unwrap(), KeepAlive::UntilIdle);
        assert_eq!(
            KeepAlive::parse(&json!(30)).unwrap(),
            KeepAlive::For(Duration::from_secs(30))
        );
        assert_eq!(
            KeepAlive::parse(&json!("5m")).unwrap(),
            KeepAlive::For(Duration::from_secs(300))
        );
        assert_eq!(
            KeepAlive::parse(&json!("1h30m")).unwrap(),
            KeepAlive::For(Duration::from_secs(5400))
        );
        assert_eq!(KeepAlive::parse(&json!("-1m")).unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse(&json!("0")).unwrap(), KeepAlive::UntilIdle);
        assert_eq!(KeepAlive::parse(&json!("0s")).unwrap(), KeepAlive::UntilIdle);
        assert!(KeepAlive::parse(&json!("soon")).is_err());
        assert!(KeepAlive::parse(&json!("5 parsecs")).is_err());
        assert!(KeepAlive::parse(&json!(true)).is_err());
    }
}
