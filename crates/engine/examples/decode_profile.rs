//! Profile helper: time prefill and decode steps of a GGUF decoder.
//! `cargo run --profile fast -p hfms-engine --example decode_profile -- MODEL.gguf [threads] [steps]`

use std::time::Instant;

use hfms_engine::compute::ComputePool;
use hfms_engine::formats::gguf::GgufFile;
use hfms_engine::kv::{KvPool, SeqKv};
use hfms_engine::skills::llama::{CausalLm, LlamaModel, LogitsWanted, StepItem};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("model path");
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let steps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let g = GgufFile::open(std::path::Path::new(path)).unwrap();
    let m = LlamaModel::from_gguf(&g).unwrap();
    let pool = ComputePool::new(threads).unwrap();
    let mut kv = KvPool::new(m.kv_layout(16), 256 << 20);
    let prompt: Vec<u32> = (0..512).map(|i| (i * 7 % 1000 + 100) as u32).collect();
    let mut seq = SeqKv::default();
    seq.reserve(&mut kv, prompt.len() + steps + 1).unwrap();
    let t = Instant::now();
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
    let pre = t.elapsed().as_secs_f64();
    println!(
        "prefill {} tokens: {:.3} s = {:.1} tok/s",
        prompt.len(),
        pre,
        prompt.len() as f64 / pre
    );
    let mut tok = hfms_engine::generate::sampling::argmax(&logits);
    let t = Instant::now();
    for i in 0..steps {
        let toks = [tok];
        let l = m
            .forward(
                &[StepItem {
                    tokens: &toks,
                    start: prompt.len() + i,
                    kv: &seq,
                    logits: LogitsWanted::Last,
                }],
                &mut kv,
                &pool,
            )
            .unwrap();
        tok = hfms_engine::generate::sampling::argmax(&l);
    }
    let d = t.elapsed().as_secs_f64();
    println!(
        "decode {steps} steps: {:.2} ms/token = {:.1} tok/s",
        d * 1e3 / steps as f64,
        steps as f64 / d
    );
}
