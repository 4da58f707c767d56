//! Loaded models: which exist (the catalog from discovery), which are in
//! memory, and loading on first use. Loads are single-flight: concurrent
//! requests for a model that is not loaded cause one load, and the others
//! wait for it. Calls block; async callers run them on a blocking thread.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hfms_hardware::{DeviceId, DeviceLoad, DeviceState, InFlightGuard, ModelFootprint, PlacementRequest, Platform};

use crate::compute::ComputePool;
use crate::discover::ModelDescription;
use crate::error::{EngineError, Result};
use crate::generate::SchedulerConfig;
use crate::skills::{LoadContext, LoadedModel, Registry, Task};

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub scheduler: SchedulerConfig,
    /// Devices as detected at start-up (capacity and free memory then);
    /// what this process has placed since is tracked by the manager.
    pub devices: Vec<DeviceState>,
    /// Model id → the device it must run on.
    pub pins: BTreeMap<String, DeviceId>,
    /// Platforms no model may use.
    pub forbidden: BTreeSet<Platform>,
}

impl ManagerConfig {
    /// CPU only, default scheduling: tests and tools.
    pub fn cpu(scheduler: SchedulerConfig) -> Self {
        ManagerConfig {
            scheduler,
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
        }
    }
}

/// A loaded model held for the length of a request: while any lease is
/// alive the request counts as in flight on the model's device.
pub struct ModelLease {
    pub id: String,
    pub device: DeviceId,
    pub model: Arc<LoadedModel>,
    _in_flight: InFlightGuard,
}

impl std::ops::Deref for ModelLease {
    type Target = LoadedModel;
    fn deref(&self) -> &LoadedModel {
        &self.model
    }
}

/// One device's capacity and load, for `/status` and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceStatus {
    pub device: DeviceId,
    pub total_bytes: u64,
    pub free_bytes_at_start: u64,
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
    Loaded {
        model: Arc<LoadedModel>,
        device: DeviceId,
        /// Bytes reserved on the device for it.
        reserved: u64,
    },
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
    load: DeviceLoad,
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
            load: DeviceLoad::new(),
        }
    }

    /// Memory a model will take on its device: the weights (file size),
    /// the KV cache budget for generation models, and a working-set
    /// estimate for activations and logits.
    fn footprint(&self, d: &ModelDescription) -> ModelFootprint {
        let weights = d.size_bytes;
        let (kv, workspace) = match d.task {
            Some(Task::Generate) => (self.config.scheduler.kv_budget_bytes as u64, (64 << 20) + weights / 50),
            _ => (0, (32 << 20) + weights / 50),
        };
        ModelFootprint {
            weights_bytes: weights,
            kv_cache_bytes: kv,
            workspace_bytes: workspace,
        }
    }

    /// Choose a device for a model (placement policy of hfms-hardware).
    fn place(&self, d: &ModelDescription, footprint: ModelFootprint) -> Result<hfms_hardware::Placement> {
        let skill = self.registry.for_source(&d.source())?;
        let mut request = PlacementRequest::new(footprint, self.registry.platforms(skill.info()));
        request.pin = self.config.pins.get(&d.id).copied();
        for p in &self.config.forbidden {
            request = request.forbid(*p);
        }
        let mut devices = self.config.devices.clone();
        self.load.apply(&mut devices);
        hfms_hardware::place(&request, &devices).map_err(|e| EngineError::Placement {
            model: d.id.clone(),
            reason: e.to_string(),
        })
    }

    /// Capacity and load of every device.
    pub fn devices(&self) -> Vec<DeviceStatus> {
        let snap = self.load.snapshot();
        self.config
            .devices
            .iter()
            .map(|d| {
                let l = snap.iter().find(|s| s.device == d.id);
                DeviceStatus {
                    device: d.id,
                    total_bytes: d.total_bytes,
                    free_bytes_at_start: d.free_bytes,
                    build_supported: d.build_supported,
                    resident_bytes: l.map_or(0, |l| l.resident_bytes),
                    resident_models: l.map_or(0, |l| l.resident_models),
                    in_flight: l.map_or(0, |l| l.in_flight),
                }
            })
            .collect()
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

    /// The loaded model, loading it first if needed (single-flight), held
    /// for one request.
    pub fn get(&self, name: &str) -> Result<ModelLease> {
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
                Some(Slot::Loaded { model, device, .. }) => {
                    rec.last_used = Some(SystemTime::now());
                    return Ok(ModelLease {
                        id: desc.id.clone(),
                        device: *device,
                        model: model.clone(),
                        _in_flight: self.load.request_started(*device),
                    });
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
        let footprint = self.footprint(&desc);
        let result = self.place(&desc, footprint).and_then(|placement| {
            tracing::info!(
                model = %desc.id,
                path = %desc.path.display(),
                device = %placement.device,
                needed_bytes = placement.needed_bytes,
                available_bytes = placement.available_bytes,
                skipped = ?placement.skipped,
                "loading model"
            );
            let skill = self.registry.for_source(&desc.source())?;
            let ctx = LoadContext {
                pool: self.pool.clone(),
                scheduler: self.config.scheduler.clone(),
                name: short_name(&desc.id),
                device: placement.device,
                backend: self
                    .registry
                    .backend_for(skill.info().family, placement.device.platform),
            };
            // A panic in a loader is a bug; it must not wedge the slot.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| skill.load(&desc.source(), &ctx)))
                .unwrap_or_else(|_| Err(EngineError::internal("model loader panicked")))
                .map(|m| (m, placement.device))
        });
        let elapsed = started.elapsed();
        let mut records = self.lock();
        let rec = records.entry(desc.id.clone()).or_default();
        let out = match result {
            Ok((m, device)) => {
                let m = Arc::new(m);
                let reserved = footprint.total_bytes();
                self.load.reserve(device, reserved);
                tracing::info!(model = %desc.id, %device, seconds = elapsed.as_secs_f64(), bytes = m.weight_bytes(), "model loaded");
                rec.slot = Some(Slot::Loaded {
                    model: m.clone(),
                    device,
                    reserved,
                });
                rec.loads += 1;
                rec.last_load = Some(elapsed);
                rec.last_used = Some(SystemTime::now());
                rec.last_error = None;
                Ok(ModelLease {
                    id: desc.id.clone(),
                    device,
                    model: m,
                    _in_flight: self.load.request_started(device),
                })
            }
            Err(e) => {
                tracing::error!(model = %desc.id, error = %e, "model failed to load");
                rec.slot = None;
                rec.last_error = Some(e.to_string());
                Err(match e {
                    placement @ EngineError::Placement { .. } => placement,
                    other => EngineError::LoadFailed {
                        model: desc.id.clone(),
                        reason: other.to_string(),
                    },
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
        match rec.slot {
            Some(Slot::Loaded { device, reserved, .. }) => {
                rec.slot = None;
                if let Err(e) = self.load.release(device, reserved) {
                    tracing::warn!(model = %desc.id, error = %e, "device accounting was off at unload");
                }
                tracing::info!(model = %desc.id, %device, "model unloaded");
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub fn status(&self) -> Vec<ModelStatus> {
        let records = self.lock();
        self.catalog
            .iter()
            .map(|d| {
                let rec = records.get(&d.id);
                let (state, bytes, device) = match rec.and_then(|r| r.slot.as_ref()) {
                    Some(Slot::Loaded { model, device, .. }) => {
                        (ModelState::Loaded, Some(model.weight_bytes()), Some(device.to_string()))
                    }
                    Some(Slot::Loading) => (ModelState::Loading, None, None),
                    None => (ModelState::Unloaded, None, None),
                };
                ModelStatus {
                    id: d.id.clone(),
                    state,
                    device,
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
