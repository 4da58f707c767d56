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
    assert!(m.unload("tiny-llama").unwrap());
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
