//! Profile helper: time prefill and decode steps of a GGUF decoder, then
//! decode steps of `batch` sequences at once (what the server's scheduler
//! runs at concurrency `batch`).
//! `cargo run --profile fast -p hfms-engine --example decode_profile -- MODEL.gguf [threads] [steps] [batch]`
//! (`FAST=1` for 8-bit activations, `PROMPT=N` for the first prompt's length;
//! the timed prefill follows an untimed one, as llama-bench's warm-up run)

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
    let batch: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(8);
    // `FAST=1`: 8-bit activations, as the server's --fast-activations.
    if std::env::var_os("FAST").is_some() {
        hfms_engine::quant::set_precise_activations(false);
    }
    // Step buffers reused across forwards, as on the scheduler's thread.
    let _keep = hfms_engine::compute::scratch::keep();
    let g = GgufFile::open(std::path::Path::new(path)).unwrap();
    let m = LlamaModel::from_gguf(&g).unwrap();
    let pool = ComputePool::new(threads).unwrap();
    let mut kv = KvPool::new(m.kv_layout(16), 256 << 20);
    // `PROMPT=N`: the first prompt's length (512).
    let prompt_len: usize = std::env::var("PROMPT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
        .max(128);
    let prompt: Vec<u32> = (0..prompt_len).map(|i| (i * 7 % 1000 + 100) as u32).collect();
    // One untimed prefill first, as llama-bench's warm-up run: the timed
    // one then finds the step buffers and the pages it touches in place.
    let mut warm = SeqKv::default();
    warm.reserve(&mut kv, prompt.len()).unwrap();
    let item = StepItem {
        tokens: &prompt,
        start: 0,
        kv: &warm,
        logits: LogitsWanted::Last,
    };
    hfms_engine::compute::scratch::give_back(m.forward(&[item], &mut kv, &pool).unwrap());
    warm.free(&mut kv);
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
        hfms_engine::compute::scratch::give_back(l);
    }
    let d = t.elapsed().as_secs_f64();
    println!(
        "decode {steps} steps: {:.2} ms/token = {:.1} tok/s",
        d * 1e3 / steps as f64,
        steps as f64 / d
    );

    // `batch` sequences, each after its own 128-token prompt, decoded together.
    let prompt = &prompt[..128];
    let seqs: Vec<SeqKv> = (0..batch)
        .map(|_| {
            let mut s = SeqKv::default();
            s.reserve(&mut kv, prompt.len() + steps + 1).unwrap();
            s
        })
        .collect();
    let mut toks = vec![0u32; batch];
    for (b, seq) in seqs.iter().enumerate() {
        let l = m
            .forward(
                &[StepItem {
                    tokens: prompt,
                    start: 0,
                    kv: seq,
                    logits: LogitsWanted::Last,
                }],
                &mut kv,
                &pool,
            )
            .unwrap();
        toks[b] = hfms_engine::generate::sampling::argmax(&l);
    }
    let vocab = m.config().vocab;
    let t = Instant::now();
    for i in 0..steps {
        let singles: Vec<[u32; 1]> = toks.iter().map(|&x| [x]).collect();
        let items: Vec<StepItem<'_>> = seqs
            .iter()
            .zip(&singles)
            .map(|(seq, tok)| StepItem {
                tokens: tok,
                start: prompt.len() + i,
                kv: seq,
                logits: LogitsWanted::Last,
            })
            .collect();
        let l = m.forward(&items, &mut kv, &pool).unwrap();
        for (b, tok) in toks.iter_mut().enumerate() {
            *tok = hfms_engine::generate::sampling::argmax(&l[b * vocab..(b + 1) * vocab]);
        }
        hfms_engine::compute::scratch::give_back(l);
    }
    let d = t.elapsed().as_secs_f64();
    println!(
        "decode {steps} steps of {batch} sequences: {:.2} ms/step = {:.1} tok/s",
        d * 1e3 / steps as f64,
        (steps * batch) as f64 / d
    );
}
