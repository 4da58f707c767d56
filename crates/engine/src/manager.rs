//! Loaded models: which exist (the catalog from discovery), which are in
//! memory, and loading on first use. Loads are single-flight: concurrent
//! requests for a model that is not loaded cause one load, and the others
//! wait for it. Calls block; async callers run them on a blocking thread.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::compute::ComputePool;
use crate::discover::ModelDescription;
use crate::error::{EngineError, Result};
use crate::generate::SchedulerConfig;
use crate::skills::{LoadContext, LoadedModel, Registry};

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub scheduler: SchedulerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    Unloaded,
    Loading,
    Loaded,
}

/// One model's state for `/status` and `/v1/models`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelStatus {
    pub id: String,
    pub state: ModelState,
    pub device: Option<String>,
    /// Weight bytes while loaded.
    pub bytes: Option<usize>,
    /// Unix seconds of the last request.
    pub last_used: Option<u64>,
    pub loads: u64,
    pub last_load_seconds: Option<f64>,
    pub last_error: Option<String>,
}

enum Slot {
    Loading,
    Loaded(Arc<LoadedModel>),
}

#[derive(Default)]
struct Record {
    slot: Option<Slot>,
    last_used: Option<SystemTime>,
    loads: u64,
    last_load: Option<Duration>,
    last_error: Option<String>,
}

pub struct ModelManager {
    registry: Registry,
    catalog: Vec<ModelDescription>,
    aliases: BTreeMap<String, String>,
    records: Mutex<HashMap<String, Record>>,
    changed: Condvar,
    pool: ComputePool,
    config: ManagerConfig,
}

impl ModelManager {
    pub fn new(
        registry: Registry,
        catalog: Vec<ModelDescription>,
        aliases: BTreeMap<String, String>,
        pool: ComputePool,
        config: ManagerConfig,
    ) -> Self {
        ModelManager {
            registry,
            catalog,
            aliases,
            records: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            pool,
            config,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn pool(&self) -> &ComputePool {
        &self.pool
    }

    /// Every model known, servable or not.
    pub fn catalog(&self) -> &[ModelDescription] {
        &self.catalog
    }

    /// A model by id or alias.
    pub fn resolve(&self, name: &str) -> Option<&ModelDescription> {
        let id = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.catalog.iter().find(|d| d.id == id)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Record>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The loaded model, loading it first if needed (single-flight).
    pub fn get(&self, name: &str) -> Result<Arc<LoadedModel>> {
        let desc = self
            .resolve(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?
            .clone();
        if let Some(err) = &desc.error {
            return Err(EngineError::Unservable {
                model: desc.id.clone(),
                reason: err.clone(),
            });
        }
        let mut records = self.lock();
        loop {
            let rec = records.entry(desc.id.clone()).or_default();
            match &rec.slot {
                Some(Slot::Loaded(m)) => {
                    rec.last_used = Some(SystemTime::now());
                    return Ok(m.clone());
                }
                Some(Slot::Loading) => {
                    records = self.changed.wait(records).unwrap_or_else(|p| p.into_inner());
                }
                None => {
                    rec.slot = Some(Slot::Loading);
                    break;
                }
            }
        }
        drop(records);

        // Load outside the lock; others wait on the condvar.
        let started = Instant::now();
        tracing::info!(model = %desc.id, path = %desc.path.display(), "loading model");
        let result = self.registry.for_source(&desc.source()).and_then(|skill| {
            let ctx = LoadContext {
                pool: self.pool.clone(),
                scheduler: self.config.scheduler.clone(),
                name: short_name(&desc.id),
            };
            // A panic in a loader is a bug; it must not wedge the slot.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| skill.load(&desc.source(), &ctx)))
                .unwrap_or_else(|_| Err(EngineError::internal("model loader panicked")))
        });
        let elapsed = started.elapsed();
        let mut records = self.lock();
        let rec = records.entry(desc.id.clone()).or_default();
        let out = match result {
            Ok(m) => {
                let m = Arc::new(m);
                tracing::info!(model = %desc.id, seconds = elapsed.as_secs_f64(), bytes = m.weight_bytes(), "model loaded");
                rec.slot = Some(Slot::Loaded(m.clone()));
                rec.loads += 1;
                rec.last_load = Some(elapsed);
                rec.last_used = Some(SystemTime::now());
                rec.last_error = None;
                Ok(m)
            }
            Err(e) => {
                tracing::error!(model = %desc.id, error = %e, "model failed to load");
                rec.slot = None;
                rec.last_error = Some(e.to_string());
                Err(EngineError::LoadFailed {
                    model: desc.id.clone(),
                    reason: e.to_string(),
                })
            }
        };
        drop(records);
        self.changed.notify_all();
        out
    }

    /// Drop a loaded model. Requests already holding it finish first (they
    /// hold their own reference).
    pub fn unload(&self, name: &str) -> Result<bool> {
        let desc = self
            .resolve(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        let mut records = self.lock();
        let Some(rec) = records.get_mut(&desc.id) else {
            return Ok(false);
        };
        let was = matches!(rec.slot, Some(Slot::Loaded(_)));
        if was {
            rec.slot = None;
            tracing::info!(model = %desc.id, "model unloaded");
        }
        Ok(was)
    }

    pub fn status(&self) -> Vec<ModelStatus> {
        let records = self.lock();
        self.catalog
            .iter()
            .map(|d| {
                let rec = records.get(&d.id);
                let (state, bytes) = match rec.and_then(|r| r.slot.as_ref()) {
                    Some(Slot::Loaded(m)) => (ModelState::Loaded, Some(m.weight_bytes())),
                    Some(Slot::Loading) => (ModelState::Loading, None),
                    None => (ModelState::Unloaded, None),
                };
                ModelStatus {
                    id: d.id.clone(),
                    state,
                    device: (state == ModelState::Loaded).then(|| "cpu".to_string()),
                    bytes,
                    last_used: rec
                        .and_then(|r| r.last_used)
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    loads: rec.map_or(0, |r| r.loads),
                    last_load_seconds: rec.and_then(|r| r.last_load).map(|d| d.as_secs_f64()),
                    last_error: rec.and_then(|r| r.last_error.clone()),
                }
            })
            .collect()
    }

    /// Models currently in memory, with their handles (for stats).
    pub fn loaded(&self) -> Vec<(String, Arc<LoadedModel>)> {
        let records = self.lock();
        records
            .iter()
            .filter_map(|(id, r)| match &r.slot {
                Some(Slot::Loaded(m)) => Some((id.clone(), m.clone())),
                _ => None,
            })
            .collect()
    }
}

/// A short thread-name-safe label for a model id.
fn short_name(id: &str) -> String {
    id.rsplit('/').next().unwrap_or(id).chars().take(12).collect()
}
