//! Profile helper: embed batches with a sentence-transformers folder.
//! `cargo run --profile fast -p hfms-engine --example embed_profile -- MODEL_DIR [threads] [batch] [iters] [f32|f16|bf16]`

use std::sync::Arc;
use std::time::Instant;

use hfms_engine::compute::ComputePool;
use hfms_engine::embed::{EmbedInput, EmbeddingModel, Pooling};
use hfms_engine::skills::bert::BertModel;
use hfms_engine::skills::hf::HfFolder;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("model dir"));
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let batch: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let iters: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(20);
    let weights = args.get(5).map_or(Ok(Default::default()), |s| s.parse()).unwrap();
    let meta = HfFolder::read(&dir).unwrap();
    let bert = BertModel::from_safetensors(&dir, &meta.config)
        .unwrap()
        .with_layer_weights(weights)
        .unwrap();
    let m = EmbeddingModel {
        encoder: Arc::new(bert),
        tokenizer: Arc::new(meta.tokenizer(Some(256)).unwrap()),
        pooling: Pooling::from_model_dir(&dir).unwrap(),
        normalize: true,
        head: None,
        max_tokens: 256,
        shortening: Default::default(),
    };
    let pool = ComputePool::new(threads).unwrap();
    let inputs: Vec<EmbedInput> = (0..batch)
        .map(|i| EmbedInput::Text(format!("The quick brown fox number {i} jumps over the lazy dog.")))
        .collect();
    let ids = m.tokenize(&inputs).unwrap();
    let tokens: usize = ids.iter().map(|v| v.len()).sum();
    m.embed_tokens(&ids, None, &pool).unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        m.embed_tokens(&ids, None, &pool).unwrap();
    }
    let dt = t.elapsed().as_secs_f64() / iters as f64;
    println!(
        "batch {batch} ({tokens} tokens): {:.2} ms = {:.0} sentences/s",
        dt * 1e3,
        batch as f64 / dt
    );
}
