//! gemma-3-270m (GGUF Q4_K_M, from `make models-extra`) against transformers
//! on the same file dequantised (`tests/reference/gemma3_greedy_hf.json`,
//! made by `scripts/make-gemma3-reference.py`): the tokenizer's ids, and,
//! teacher-forced along transformers' greedy tokens, the same top token
//! wherever transformers' margin is clear and the top log-probability within
//! 0.1.

mod common;

use std::path::PathBuf;

use hfms_engine::compute::ComputePool;
use hfms_engine::formats::gguf::GgufFile;
use hfms_engine::kv::{KvPool, SeqKv};
use hfms_engine::skills::llama::{CausalLm, LlamaModel, LogitsWanted, StepItem};
use hfms_engine::skills::{Format, ModelSource, Registry};
use hfms_engine::tokenizer::Tokenizer;

fn gemma_gguf() -> PathBuf {
    let p = common::workspace().join("models-extra/google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf");
    assert!(p.exists(), "{} is missing: run make models-extra", p.display());
    p
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn log_softmax_at(logits: &[f32], id: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    logits[id] - max - sum.ln() as f32
}

#[test]
fn gemma3_matches_transformers() {
    let path = gemma_gguf();
    let registry = Registry::builtin();
    let source = ModelSource {
        format: Format::Gguf,
        path: path.clone(),
    };
    assert_eq!(registry.for_source(&source).unwrap().info().name, "gemma3");
    let g = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let m = LlamaModel::from_gguf(&g).unwrap();
    let cfg = m.config();
    assert_eq!((cfg.layers, cfg.head_dim, cfg.kv_heads), (18, 256, 1));
    assert_eq!(cfg.window(0), Some(512));
    assert_eq!(cfg.window(5), None, "every sixth layer is global");
    let r = common::reference("gemma3_greedy_hf.json");
    let pool = ComputePool::new(2).unwrap();
    let (mut compared, mut clear) = (0, 0);
    for p in r["prompts"].as_array().unwrap() {
        let text = p["prompt"].as_str().unwrap();
        let want_ids = u32s(&p["ids"]);
        assert_eq!(tok.encode(text, true).unwrap(), want_ids, "ids of {text:?}");
        let greedy: Vec<u32> = p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["token"].as_u64().unwrap() as u32)
            .collect();
        // The prompt and transformers' tokens but the last, in one pass:
        // row i predicts greedy[i].
        let mut seq_ids = want_ids.clone();
        seq_ids.extend(&greedy[..greedy.len() - 1]);
        let mut kv = KvPool::new(m.kv_layout(16), 64 << 20);
        let mut seq = SeqKv::default();
        seq.reserve(&mut kv, seq_ids.len()).unwrap();
        let logits = m
            .forward(
                &[StepItem {
                    tokens: &seq_ids,
                    start: 0,
                    kv: &seq,
                    logits: LogitsWanted::All,
                }],
                &mut kv,
                &pool,
            )
            .unwrap();
        let vocab = logits.len() / seq_ids.len();
        for (i, s) in p["steps"].as_array().unwrap().iter().enumerate() {
            let row = &logits[(want_ids.len() - 1 + i) * vocab..(want_ids.len() + i) * vocab];
            let want = s["token"].as_u64().unwrap() as usize;
            let lp = log_softmax_at(row, want);
            let want_lp = s["logprob"].as_f64().unwrap() as f32;
            assert!(
                (lp - want_lp).abs() < 0.1,
                "{text:?} step {i}: log-prob of transformers' token {lp} vs {want_lp}"
            );
            compared += 1;
            if s["margin"].as_f64().unwrap() > 0.5 {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
                assert_eq!(best, want, "{text:?} step {i}: top token");
                clear += 1;
            }
        }
    }
    assert!(compared == 48 && clear >= 30, "{compared} steps, {clear} clear");
}
