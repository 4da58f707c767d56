//! The model manager: placement on devices (with a stand-in GPU backend that
//! runs the native engine, so placement and backend selection are tested
//! without a GPU), device accounting, pins, in-flight counting.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hfms_engine::EngineError;
use hfms_engine::compute::ComputePool;
use hfms_engine::discover::{DiscoverConfig, discover};
use hfms_engine::manager::{ManagerConfig, ModelManager};
use hfms_engine::skills::bert::{BertModel, Encoder};
use hfms_engine::skills::hf::HfFolder;
use hfms_engine::skills::llama::{CausalLm, LlamaModel};
use hfms_engine::skills::{DeviceBackend, Family, ModelSource, Registry};
use hfms_hardware::{DeviceId, DeviceState, Platform};

fn tiny(name: &str) -> PathBuf {
    common::workspace().join("tests/fixtures/tiny").join(name)
}

/// A "GPU" backend that runs the CPU engine, counting its loads.
struct StandIn {
    loads: AtomicUsize,
}

impl DeviceBackend for StandIn {
    fn name(&self) -> &'static str {
        "stand-in"
    }
    fn platform(&self) -> Platform {
        Platform::Cuda
    }
    fn families(&self) -> &[Family] {
        &[Family::Llama, Family::Bert]
    }
    fn load_causal_lm(&self, source: &ModelSource, _device: DeviceId) -> hfms_engine::Result<Arc<dyn CausalLm>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let meta = HfFolder::read(&source.path)?;
        Ok(Arc::new(LlamaModel::from_safetensors(&source.path, &meta.config)?))
    }
    fn load_encoder(&self, source: &ModelSource, _device: DeviceId) -> hfms_engine::Result<Arc<dyn Encoder>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let meta = HfFolder::read(&source.path)?;
        Ok(Arc::new(BertModel::from_safetensors(&source.path, &meta.config)?))
    }
}

fn device(id: &str, free_mib: u64, build_supported: bool) -> DeviceState {
    DeviceState {
        id: id.parse().unwrap(),
        total_bytes: free_mib << 20,
        free_bytes: free_mib << 20,
        build_supported,
        resident_models: 0,
        reserved_bytes: 0,
        in_flight: 0,
    }
}

fn manager(
    registry: Registry,
    devices: Vec<DeviceState>,
    pins: &[(&str, &str)],
    forbidden: &[Platform],
) -> ModelManager {
    let cfg = DiscoverConfig {
        extra: vec![
            (Some("tiny-llama".into()), tiny("llama-f32")),
            (Some("tiny-encoder".into()), tiny("xlm-roberta-f32")),
        ],
        ..Default::default()
    };
    let catalog = discover(&registry, &cfg);
    let mut config = ManagerConfig::cpu(hfms_engine::generate::SchedulerConfig {
        kv_budget_bytes: 4 << 20,
        ..Default::default()
    });
    config.devices = devices;
    config.pins = pins
        .iter()
        .map(|(m, d)| (m.to_string(), d.parse().unwrap()))
        .collect::<BTreeMap<_, _>>();
    config.forbidden = forbidden.iter().copied().collect::<BTreeSet<_>>();
    ModelManager::new(registry, catalog, BTreeMap::new(), ComputePool::new(1).unwrap(), config)
}

#[test]
fn a_gpu_without_a_backend_in_this_build_falls_back_to_the_cpu() {
    let m = manager(
        Registry::builtin(),
        vec![device("cuda:0", 80_000, false), device("cpu", 16_000, true)],
        &[],
        &[],
    );
    let lease = m.get("tiny-llama").unwrap();
    assert_eq!(lease.device, DeviceId::CPU);
    let devs = m.devices();
    let cpu = devs.iter().find(|d| d.device == DeviceId::CPU).unwrap();
    assert_eq!(cpu.resident_models, 1);
    assert!(cpu.resident_bytes > 4 << 20, "weights + KV budget + workspace");
    assert_eq!(cpu.in_flight, 1, "the lease counts as a request in flight");
    drop(lease);
    assert_eq!(
        m.devices()
            .iter()
            .find(|d| d.device == DeviceId::CPU)
            .unwrap()
            .in_flight,
        0
    );
    assert_eq!(
        m.unload("tiny-llama").unwrap(),
        hfms_engine::manager::ModelState::Unloaded
    );
    let cpu = m.devices().into_iter().find(|d| d.device == DeviceId::CPU).unwrap();
    assert_eq!((cpu.resident_models, cpu.resident_bytes), (0, 0));
}

#[test]
fn a_gpu_with_a_backend_takes_the_model_and_uses_the_backend() {
    let backend = Arc::new(StandIn {
        loads: AtomicUsize::new(0),
    });
    let registry = Registry::builtin().with_backend(backend.clone());
    let m = manager(
        registry,
        vec![
            device("cuda:0", 80_000, true),
            device("cuda:1", 80_000, true),
            device("cpu", 16_000, true),
        ],
        &[],
        &[],
    );
    let a = m.get("tiny-llama").unwrap();
    assert_eq!(a.device.platform, Platform::Cuda);
    assert_eq!(backend.loads.load(Ordering::SeqCst), 1);
    // The second model goes to the other, less loaded GPU.
    let b = m.get("tiny-encoder").unwrap();
    assert_eq!(b.device.platform, Platform::Cuda);
    assert_ne!(a.device, b.device, "ties go to the least-loaded device");
    assert_eq!(backend.loads.load(Ordering::SeqCst), 2);
    let status = m.status();
    assert!(
        status
            .iter()
            .all(|s| s.device.as_deref().is_some_and(|d| d.starts_with("cuda:")))
    );
}

#[test]
fn a_full_gpu_sends_the_model_to_the_cpu() {
    let backend = Arc::new(StandIn {
        loads: AtomicUsize::new(0),
    });
    let registry = Registry::builtin().with_backend(backend.clone());
    // 4 MiB of KV budget alone does not fit in 2 MiB.
    let m = manager(
        registry,
        vec![device("cuda:0", 2, true), device("cpu", 16_000, true)],
        &[],
        &[],
    );
    assert_eq!(m.get("tiny-llama").unwrap().device, DeviceId::CPU);
    assert_eq!(backend.loads.load(Ordering::SeqCst), 0);
}

#[test]
fn pins_and_forbidden_platforms() {
    let backend = Arc::new(StandIn {
        loads: AtomicUsize::new(0),
    });
    let registry = Registry::builtin().with_backend(backend.clone());
    // Pinned to the CPU although a GPU would be preferred.
    let m = manager(
        registry,
        vec![device("cuda:0", 80_000, true), device("cpu", 16_000, true)],
        &[("tiny-llama", "cpu")],
        &[],
    );
    assert_eq!(m.get("tiny-llama").unwrap().device, DeviceId::CPU);
    // Forbidding CUDA keeps the encoder off it too.
    let registry = Registry::builtin().with_backend(backend);
    let m = manager(
        registry,
        vec![device("cuda:0", 80_000, true), device("cpu", 16_000, true)],
        &[],
        &[Platform::Cuda],
    );
    assert_eq!(m.get("tiny-encoder").unwrap().device, DeviceId::CPU);
}

#[test]
fn a_pin_that_cannot_be_met_is_a_clear_error() {
    let m = manager(
        Registry::builtin(),
        vec![device("cpu", 16_000, true)],
        &[("tiny-llama", "cuda:1")],
        &[],
    );
    match m.get("tiny-llama") {
        Err(EngineError::Placement { model, reason }) => {
            assert_eq!(model, "tiny-llama");
            assert!(reason.contains("cuda:1"), "{reason}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a missing pinned device must fail the load"),
    }
    // Nothing was reserved by the failed load.
    assert!(m.devices().iter().all(|d| d.resident_models == 0));
    // A device that exists but is too small for the pin.
    let m = manager(
        Registry::builtin(),
        vec![device("cpu", 3, true)],
        &[("tiny-llama", "cpu")],
        &[],
    );
    let err = m.get("tiny-llama").err().unwrap().to_string();
    assert!(err.contains("cpu") && err.contains("free"), "{err}");
}

// ---- lifecycle: single-flight, LRU eviction, keep-alive, pins ----------------

use hfms_engine::manager::{KeepAlive, ModelState};
use std::time::Duration;

/// A CPU-only manager over three tiny models with room for `fit` of the
/// decoder footprints (weights + 4 MiB KV + working set).
fn lifecycle_manager(fit: f64, keep_alive: KeepAlive, pinned: &[&str]) -> ModelManager {
    let registry = Registry::builtin();
    let cfg = DiscoverConfig {
        extra: vec![
            (Some("a".into()), tiny("llama-f32")),
            (Some("b".into()), tiny("qwen3-f32")),
            (Some("c".into()), tiny("mistral-f16")),
        ],
        ..Default::default()
    };
    let catalog = discover(&registry, &cfg);
    let footprint: u64 = catalog
        .iter()
        .map(|d| d.memory_bytes + (4 << 20) + (64 << 20) + d.memory_bytes / 50)
        .max()
        .unwrap();
    let mut config = ManagerConfig::cpu(hfms_engine::generate::SchedulerConfig {
        kv_budget_bytes: 4 << 20,
        ..Default::default()
    });
    config.devices = vec![device("cpu", 0, true)];
    config.devices[0].free_bytes = (footprint as f64 * fit) as u64;
    config.devices[0].total_bytes = config.devices[0].free_bytes;
    config.keep_alive = keep_alive;
    config.pinned = pinned.iter().map(|s| s.to_string()).collect();
    ModelManager::new(registry, catalog, BTreeMap::new(), ComputePool::new(1).unwrap(), config)
}

fn state(m: &ModelManager, id: &str) -> ModelState {
    m.status().into_iter().find(|s| s.id == id).unwrap().state
}

#[test]
fn concurrent_first_requests_cause_one_load() {
    let m = Arc::new(lifecycle_manager(3.5, KeepAlive::Forever, &[]));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || m.get("a").map(|l| l.id.clone()))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap(), "a");
    }
    let s = m.status().into_iter().find(|s| s.id == "a").unwrap();
    assert_eq!(s.loads, 1, "eight concurrent first requests, one load");
    assert_eq!(m.counters().loads.load(Ordering::Relaxed), 1);
}

#[test]
fn least_recently_used_idle_model_is_evicted_first() {
    let m = lifecycle_manager(2.5, KeepAlive::Forever, &[]);
    drop(m.get("a").unwrap());
    std::thread::sleep(Duration::from_millis(5));
    drop(m.get("b").unwrap());
    std::thread::sleep(Duration::from_millis(5));
    // a is used again: b is now the least recently used.
    drop(m.get("a").unwrap());
    drop(m.get("c").unwrap());
    assert_eq!(state(&m, "b"), ModelState::Unloaded, "b was least recently used");
    assert_eq!(state(&m, "a"), ModelState::Loaded);
    assert_eq!(state(&m, "c"), ModelState::Loaded);
    assert_eq!(m.counters().evictions.load(Ordering::Relaxed), 1);
    assert_eq!(m.status().into_iter().find(|s| s.id == "b").unwrap().evictions, 1);
}

#[test]
fn a_model_with_requests_in_flight_is_never_evicted() {
    let m = lifecycle_manager(2.5, KeepAlive::Forever, &[]);
    let held = m.get("a").unwrap(); // a request in flight on a (the oldest)
    std::thread::sleep(Duration::from_millis(5));
    drop(m.get("b").unwrap());
    drop(m.get("c").unwrap());
    assert_eq!(
        state(&m, "a"),
        ModelState::Loaded,
        "in flight: not evicted although least recent"
    );
    assert_eq!(state(&m, "b"), ModelState::Unloaded);
    drop(held);
    // With everything in flight, a load that does not fit fails clearly.
    let _c = m.get("c").unwrap();
    let _a = m.get("a").unwrap();
    match m.get("b") {
        Err(EngineError::Placement { reason, .. }) => assert!(reason.contains("needs"), "{reason}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("nothing idle to evict: the load must fail"),
    }
}

#[test]
fn pinned_models_are_never_evicted() {
    let m = lifecycle_manager(2.5, KeepAlive::Forever, &["a"]);
    drop(m.get("a").unwrap());
    std::thread::sleep(Duration::from_millis(5));
    drop(m.get("b").unwrap());
    drop(m.get("c").unwrap());
    assert_eq!(state(&m, "a"), ModelState::Loaded, "pinned");
    assert_eq!(state(&m, "b"), ModelState::Unloaded);
    assert!(m.status().into_iter().find(|s| s.id == "a").unwrap().pinned);
}

#[test]
fn keep_alive_zero_unloads_when_the_request_ends_and_ttl_expires() {
    let m = lifecycle_manager(3.5, KeepAlive::Forever, &[]);
    let lease = m.acquire("a", Some(KeepAlive::UntilIdle), None).unwrap();
    assert_eq!(state(&m, "a"), ModelState::Loaded);
    drop(lease);
    assert_eq!(
        state(&m, "a"),
        ModelState::Unloaded,
        "keep_alive 0: gone with its last request"
    );
    // A short TTL: the reaper unloads it once idle that long.
    drop(
        m.acquire("b", Some(KeepAlive::For(Duration::from_millis(200))), None)
            .unwrap(),
    );
    assert_eq!(state(&m, "b"), ModelState::Loaded);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while state(&m, "b") != ModelState::Unloaded {
        assert!(std::time::Instant::now() < deadline, "b did not expire");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(m.counters().expirations.load(Ordering::Relaxed), 1);
    // Unload of a busy model waits for its requests.
    let busy = m.get("c").unwrap();
    assert_eq!(m.unload("c").unwrap(), ModelState::Unloading);
    assert_eq!(state(&m, "c"), ModelState::Loaded);
    drop(busy);
    assert_eq!(state(&m, "c"), ModelState::Unloaded);
}
