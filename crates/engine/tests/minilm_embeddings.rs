//! all-MiniLM-L6-v2 against sentence-transformers
//! (`tests/reference/minilm_st.json`): cosine ≥ 0.9999 per string and equal
//! token counts, including truncation at max_seq_length = 256.

mod common;

use common::cosine;

use std::sync::Arc;

use hfms_engine::compute::ComputePool;
use hfms_engine::embed::batcher::{BatcherConfig, EmbedBatcher};
use hfms_engine::embed::{EmbedInput, EmbeddingModel, Pooling};
use hfms_engine::skills::bert::{BertModel, EncoderInput};
use hfms_engine::tokenizer::Tokenizer;

fn model() -> EmbeddingModel {
    model_with(|b| b)
}

fn model_with(weights: impl FnOnce(BertModel) -> BertModel) -> EmbeddingModel {
    let dir = common::minilm_dir();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let bert = weights(BertModel::from_safetensors(&dir, &cfg).unwrap());
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), Some(256)).unwrap();
    EmbeddingModel {
        encoder: Arc::new(bert),
        tokenizer: Arc::new(tok),
        pooling: Pooling::from_model_dir(&dir).unwrap(),
        normalize: true,
        head: None,
        max_tokens: 256,
        shortening: Default::default(),
    }
}

#[test]
fn embeddings_match_sentence_transformers() {
    check_against_reference(&model(), 0.9999);
}

/// The half-precision panel kernels (the path of f16 checkpoints), on the
/// same weights rounded to f16: rounding costs little accuracy.
#[test]
fn half_precision_weights_stay_close() {
    let half = model_with(|b| b.into_f16().unwrap());
    let full = model();
    // The layers halve; the token embedding table (about half) stays f32.
    assert!(half.encoder.weight_bytes() < full.encoder.weight_bytes() * 8 / 10);
    check_against_reference(&half, 0.9999);
}

/// bf16 layer weights, with activations rounded to bf16 in each product
/// (the `vdpbf16ps` path where the CPU has it, else its portable twin):
/// the fidelity that `--encoder-weights bf16` trades for speed.
#[test]
fn bf16_weights_and_activations_stay_close() {
    let bf16 = model_with(|b| {
        b.with_layer_weights(hfms_engine::skills::bert::EncoderWeights::Bf16)
            .unwrap()
    });
    assert!(bf16.encoder.weight_bytes() < model().encoder.weight_bytes() * 8 / 10);
    let worst = check_against_reference(&bf16, 0.9999);
    eprintln!("bf16: worst cosine {worst}");
}

/// Checks every reference sentence; the worst cosine.
fn check_against_reference(m: &EmbeddingModel, min_cosine: f64) -> f64 {
    let mut worst = 1f64;
    assert_eq!(m.pooling, Pooling::Mean);
    let r = common::reference("minilm_st.json");
    let sentences: Vec<String> = r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let inputs: Vec<EmbedInput> = sentences.iter().cloned().map(EmbedInput::Text).collect();
    let ids = m.tokenize(&inputs).unwrap();
    let pool = ComputePool::new(2).unwrap();
    // All 24 in one flattened batch.
    let embs = m.embed_tokens(&ids, None, &pool).unwrap();
    for (i, s) in sentences.iter().enumerate() {
        let want_ids: Vec<u32> = r["token_ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids[i].ids, want_ids, "token ids of {s:?}");
        assert_eq!(ids[i].len() as u64, r["token_counts"][i].as_u64().unwrap());
        let want: Vec<f64> = r["embeddings"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let c = cosine(&embs[i], &want);
        assert!(c >= min_cosine, "{s:?}: cosine {c}");
        worst = worst.min(c);
        if i == 0 {
            eprintln!("cosine of {s:?}: {c}");
        }
        let norm: f32 = embs[i].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    // One at a time gives the same vectors as the batch.
    for (i, one) in ids.iter().enumerate().take(4) {
        let e = m.embed_tokens(std::slice::from_ref(one), None, &pool).unwrap();
        let d: f32 = e[0]
            .iter()
            .zip(&embs[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "batch vs single differ by {d}");
    }
    worst
}

#[test]
fn dimensions_truncate_and_renormalise() {
    let m = model();
    let pool = ComputePool::new(2).unwrap();
    let ids = m.tokenize(&[EmbedInput::Text("Hello, world!".into())]).unwrap();
    let full = m.embed_tokens(&ids, None, &pool).unwrap();
    let short = m.embed_tokens(&ids, Some(64), &pool).unwrap();
    assert_eq!(short[0].len(), 64);
    let norm: f32 = short[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    let scale = short[0][0] / full[0][0];
    for (a, b) in short[0].iter().zip(&full[0]) {
        assert!((a - b * scale).abs() < 1e-5);
    }
    assert!(m.embed_tokens(&ids, Some(0), &pool).is_err());
    assert!(m.embed_tokens(&ids, Some(385), &pool).is_err());
}

/// The model, a pool, and a batcher over them.
fn batcher(config: BatcherConfig) -> (Arc<EmbeddingModel>, ComputePool, EmbedBatcher) {
    let m = Arc::new(model());
    let pool = ComputePool::new(2).unwrap();
    let b = EmbedBatcher::spawn(m.clone(), pool.clone(), config, "test").unwrap();
    (m, pool, b)
}

#[test]
fn concurrent_requests_are_batched_and_answered_in_order() {
    use std::sync::atomic::Ordering;
    let (m, pool, b) = batcher(BatcherConfig {
        max_wait: std::time::Duration::from_millis(50),
        ..Default::default()
    });
    let texts: Vec<Vec<String>> = (0..8)
        .map(|i| {
            (0..=i % 3)
                .map(|j| format!("request {i} input {j}: {}", "word ".repeat(i + j)))
                .collect()
        })
        .collect();
    let receivers: Vec<_> = texts
        .iter()
        .map(|t| {
            let ids = m
                .tokenize(&t.iter().cloned().map(EmbedInput::Text).collect::<Vec<_>>())
                .unwrap();
            (ids.clone(), b.submit(ids, Some(128)).unwrap())
        })
        .collect();
    for (ids, rx) in receivers {
        let got = rx.blocking_recv().unwrap().unwrap();
        let want = m.embed_tokens(&ids, Some(128), &pool).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), 128);
            let d = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(d < 1e-5, "batched and alone differ by {d}");
        }
    }
    let batches = b.stats().batches.load(Ordering::Relaxed);
    assert!(batches < 8, "8 concurrent requests ran in {batches} batches");
    assert_eq!(b.stats().requests.load(Ordering::Relaxed), 8);
    assert!(
        b.submit(vec![EncoderInput::single(vec![101, 102])], Some(999)).is_err(),
        "dimensions are checked up front"
    );
}

/// A request larger than one batch is spread over several (memory per
/// batch stays bounded), its vectors equal those computed at once, a small
/// request behind it is not held up, and a request whose client is gone is
/// dropped before its next batch.
#[test]
fn a_large_request_is_split_into_batches_and_can_be_cancelled() {
    use std::sync::atomic::Ordering;
    let (m, pool, b) = batcher(BatcherConfig {
        max_batch_tokens: 256,
        ..Default::default()
    });
    let texts: Vec<EmbedInput> = (0..40)
        .map(|i| EmbedInput::Text(format!("sentence {i}: {}", "lorem ipsum dolor ".repeat(1 + i % 7))))
        .collect();
    let ids = m.tokenize(&texts).unwrap();
    let total: usize = ids.iter().map(EncoderInput::len).sum();
    assert!(total > 4 * 256, "{total} tokens");
    let big = b.submit(ids.clone(), None).unwrap();
    let small_ids = m.tokenize(&[EmbedInput::Text("a small request".into())]).unwrap();
    let small = b.submit(small_ids.clone(), None).unwrap();
    let small_got = small.blocking_recv().unwrap().unwrap();
    let big_got = big.blocking_recv().unwrap().unwrap();
    let batches = b.stats().batches.load(Ordering::Relaxed);
    assert!(batches >= (total / 256) as u64, "{total} tokens in {batches} batches");
    let want = m.embed_tokens(&ids, None, &pool).unwrap();
    assert_eq!(big_got.len(), want.len());
    for (g, w) in big_got.iter().zip(&want) {
        let d = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(d < 1e-5, "split and whole differ by {d}");
    }
    let small_want = m.embed_tokens(&small_ids, None, &pool).unwrap();
    let d = small_got[0]
        .iter()
        .zip(&small_want[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-5, "small request differs by {d}");

    // Cancelled: submit a large request and drop its receiver at once.
    let before = b.stats().inputs.load(Ordering::Relaxed);
    let many: Vec<EncoderInput> = (0..20).flat_map(|_| ids.clone()).collect();
    drop(b.submit(many.clone(), None).unwrap());
    let after_cancel = b.submit(small_ids.clone(), None).unwrap();
    after_cancel.blocking_recv().unwrap().unwrap();
    let done = b.stats().inputs.load(Ordering::Relaxed) - before;
    assert!(
        done < many.len() as u64 / 4,
        "{done} of {} inputs of a cancelled request were computed",
        many.len()
    );
    assert_eq!(b.stats().cancelled.load(Ordering::Relaxed), 1);
    assert_eq!(b.stats().waiting.load(Ordering::Relaxed), 0);
}
