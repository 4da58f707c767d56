//! What the model manager adds to a request, and what a cold load costs, on
//! the two test models (`scripts/fetch-models.sh`).
//!
//!     cargo bench -p hfms-engine --bench manager
//!
//! - `lease/*`: `ModelManager::get` of a loaded model and the lease's drop —
//!   what every request pays to find its model and count itself in flight.
//! - `embed_one_sentence/*`: one sentence through the engine alone
//!   (`EmbeddingModel::embed_tokens`), and through the manager and the
//!   batcher as the server runs it (lease, queue, batcher thread, reply).
//!   Their difference is the manager's and the batcher's cost per request.
//! - `cold_load/*`: unload, then the `get` that loads the model again (file
//!   pages already in the page cache, as after an eviction).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use hfms_engine::compute::ComputePool;
use hfms_engine::discover::{DiscoverConfig, discover};
use hfms_engine::embed::EmbedInput;
use hfms_engine::generate::scheduler::SchedulerConfig;
use hfms_engine::manager::{ManagerConfig, ModelManager};
use hfms_engine::skills::{LoadedModel, Registry};

const SMOL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
const MINI: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn manager() -> ModelManager {
    let models = std::env::var_os("HFMS_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let registry = Registry::builtin();
    let catalog = discover(
        &registry,
        &DiscoverConfig {
            models_dirs: vec![models.clone()],
            hf_cache: None,
            extra: Vec::new(),
            aliases: BTreeMap::new(),
        },
    );
    for id in [SMOL, MINI] {
        assert!(
            catalog.iter().any(|d| d.id == id && d.error.is_none()),
            "{id} is not in {}: run scripts/fetch-models.sh",
            models.display()
        );
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(2);
    ModelManager::new(
        registry,
        catalog,
        BTreeMap::new(),
        ComputePool::new(threads).unwrap(),
        ManagerConfig::cpu(SchedulerConfig::default()),
    )
}

fn bench(c: &mut Criterion) {
    let manager = manager();
    let lease = manager.get(MINI).unwrap();
    let LoadedModel::Embedding(batcher) = &*lease.model else {
        panic!("{MINI} is not an embedding model")
    };
    let batcher = batcher.clone();
    drop(lease);
    let model = batcher.model().clone();
    let ids = model
        .tokenize(&[EmbedInput::Text("The quick brown fox jumps over the lazy dog.".into())])
        .unwrap();

    let mut g = c.benchmark_group("lease");
    g.bench_function("get_loaded_model_and_release", |b| {
        b.iter(|| drop(std::hint::black_box(manager.get(MINI).unwrap())))
    });
    g.finish();

    let mut g = c.benchmark_group("embed_one_sentence");
    g.bench_function("engine", |b| {
        b.iter(|| model.embed_tokens(&ids, None, manager.pool()).unwrap())
    });
    g.bench_function("manager_and_batcher", |b| {
        b.iter(|| {
            let lease = manager.get(MINI).unwrap();
            let LoadedModel::Embedding(batcher) = &*lease.model else {
                unreachable!()
            };
            let rx = batcher.submit(ids.clone(), None).unwrap();
            rx.blocking_recv().unwrap().unwrap()
        })
    });
    g.finish();
    drop(batcher);

    let mut g = c.benchmark_group("cold_load");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for (name, id) in [("smollm2_q4_1_gguf", SMOL), ("all_minilm_l6_v2_safetensors", MINI)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    manager.unload(id).unwrap();
                    let started = Instant::now();
                    let lease = manager.get(id).unwrap();
                    total += started.elapsed();
                    drop(lease);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
