//! The continuous-batching scheduler with SmolLM2: batch invariance,
//! preemption under a tiny KV budget, the bounded queue, prefix caching.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hfms_engine::EngineError;
use hfms_engine::compute::ComputePool;
use hfms_engine::formats::gguf::GgufFile;
use hfms_engine::generate::{GenEvent, GenUsage, GenerateRequest, Generator, SamplingParams, SchedulerConfig};
use hfms_engine::skills::llama::LlamaModel;
use hfms_engine::tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedReceiver;

fn generator(config: SchedulerConfig) -> Generator {
    let g = GgufFile::open(&common::smollm2_gguf()).unwrap();
    Generator::spawn(
        Arc::new(LlamaModel::from_gguf(&g).unwrap()),
        Arc::new(Tokenizer::from_gguf(&g).unwrap()),
        ComputePool::new(2).unwrap(),
        config,
        "test",
    )
    .unwrap()
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            top_logprobs: Some(0),
            ..Default::default()
        },
        stop: vec![],
        stop_token_ids: vec![],
        ignore_eos: true,
        prompt_logprobs: None,
        constraint: None,
        tag: "test".into(),
    }
}

/// The generated token ids and usage of one sequence.
fn tokens(mut rx: UnboundedReceiver<GenEvent>) -> (Vec<u32>, GenUsage) {
    let mut ids = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            GenEvent::Delta { logprobs, .. } => ids.extend(logprobs.iter().map(|l| l.id)),
            GenEvent::Done { usage, .. } => return (ids, usage),
            GenEvent::Error(e) => panic!("{e}"),
            GenEvent::Prompt(_) => {}
        }
    }
    panic!("no Done event");
}

fn prompt(tok: &Tokenizer, i: usize) -> Vec<u32> {
    let topics = [
        "the sea",
        "a red fox",
        "mountains",
        "Paris",
        "bread",
        "the moon",
        "trains",
        "music",
    ];
    let text = format!(
        "<|im_start|>user\nWrite one sentence about {} number {i}.<|im_end|>\n<|im_start|>assistant\n",
        topics[i % topics.len()]
    );
    tok.encode(&text, false).unwrap()
}

#[test]
fn greedy_output_does_not_depend_on_the_batch() {
    let g = generator(SchedulerConfig::default());
    let tok = g.tokenizer().clone();
    let target = prompt(&tok, 0);
    let (alone, _) = tokens(g.submit(request(target.clone(), 24)).unwrap());
    // The same request among 16 others, submitted together so they share
    // steps (prefills and decodes of different lengths interleave).
    let mut rxs = vec![g.submit(request(target.clone(), 24)).unwrap()];
    for i in 1..=16 {
        rxs.push(g.submit(request(prompt(&tok, i), 8 + i)).unwrap());
    }
    let mut outs: Vec<Vec<u32>> = rxs.into_iter().map(|rx| tokens(rx).0).collect();
    assert_eq!(outs.remove(0), alone, "same tokens alone and among 16 others");
    assert!(g.stats().steps.load(Ordering::Relaxed) > 0);
}

#[test]
fn preemption_under_a_tiny_kv_budget_still_completes_every_request() {
    preemption_completes_every_request(false);
}

/// With the prefix cache, a preempted sequence finds its own blocks cached
/// when it is considered for readmission: it must not hold them while it
/// waits (they would shrink the pool under the running sequences until one
/// alone could not fit — it used to fail with "needs more KV cache").
#[test]
fn preemption_with_the_prefix_cache_still_completes_every_request() {
    preemption_completes_every_request(true);
}

fn preemption_completes_every_request(prefix_caching: bool) {
    const MAX_TOKENS: usize = 80;
    let g = generator(SchedulerConfig {
        // 16 blocks of 16 positions: ~2.5 sequences of ~30 + 80 tokens.
        kv_budget_bytes: 16 * 16 * 30 * 2 * 3 * 64 * 4,
        prefix_caching,
        ..Default::default()
    });
    let tok = g.tokenizer().clone();
    // Distinct prompts: a preempted sequence's cached blocks are its own.
    let n = 8;
    let rxs: Vec<_> = (0..n)
        .map(|i| g.submit(request(prompt(&tok, i), MAX_TOKENS)).unwrap())
        .collect();
    let together: Vec<Vec<u32>> = rxs
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let (ids, usage) = tokens(rx);
            assert_eq!(usage.completion_tokens, MAX_TOKENS, "request {i} completed");
            ids
        })
        .collect();
    assert!(
        g.stats().preemptions.load(Ordering::Relaxed) > 0,
        "the budget forced preemption"
    );
    // Recomputed after preemption, the greedy output is unchanged.
    for i in [0, n - 1] {
        let (alone, _) = tokens(g.submit(request(prompt(&tok, i), MAX_TOKENS)).unwrap());
        assert_eq!(together[i], alone, "request {i}");
    }
    // Every block comes back (stats are published right after the step that
    // sent the last tokens; blocks only the prefix cache holds do not count).
    let deadline = Instant::now() + Duration::from_secs(5);
    while g.stats().kv_used_blocks.load(Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "KV blocks were not freed");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_full_queue_refuses_new_requests() {
    let g = generator(SchedulerConfig {
        max_running: 1,
        max_waiting: 2,
        ..Default::default()
    });
    let tok = g.tokenizer().clone();
    let long = g.submit(request(prompt(&tok, 0), 400)).unwrap();
    // Wait until it runs, so the queue holds only what comes next.
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.stats().running.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let a = g.submit(request(prompt(&tok, 1), 4)).unwrap();
    let b = g.submit(request(prompt(&tok, 2), 4)).unwrap();
    match g.submit(request(prompt(&tok, 3), 4)) {
        Err(EngineError::Overloaded(msg)) => assert!(msg.contains("queue is full"), "{msg}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a third waiting request must be refused"),
    }
    assert_eq!(g.stats().rejected.load(Ordering::Relaxed), 1);
    drop(long); // cancel: the queue drains
    assert_eq!(tokens(a).1.completion_tokens, 4);
    assert_eq!(tokens(b).1.completion_tokens, 4);
}

#[test]
fn a_shared_prompt_prefix_is_computed_once() {
    let g = generator(SchedulerConfig::default());
    let tok = g.tokenizer().clone();
    let system = "You are a careful assistant. Answer briefly and precisely. ".repeat(8);
    let p = |q: &str| {
        tok.encode(
            &format!(
                "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
            ),
            false,
        )
        .unwrap()
    };
    let first = p("What is 2+2?");
    let (a, ua) = tokens(g.submit(request(first.clone(), 12)).unwrap());
    assert_eq!(ua.cached_tokens, 0);
    // Same system prompt, another question: the shared blocks are reused.
    let (_, ub) = tokens(g.submit(request(p("Name a color."), 12)).unwrap());
    assert!(
        ub.cached_tokens >= 16 * ((system.len() / 8) / 16),
        "cached {}",
        ub.cached_tokens
    );
    assert!(ub.cached_tokens < ub.prompt_tokens);
    // The very same prompt again: everything but the last block is reused,
    // and the output is the same as computed from scratch.
    let (c, uc) = tokens(g.submit(request(first.clone(), 12)).unwrap());
    assert_eq!(c, a);
    assert_eq!(uc.cached_tokens, (first.len() - 1) / 16 * 16);
    assert!(g.stats().prefix_hit_blocks.load(Ordering::Relaxed) > 0);
}

/// A prompt position: its text, and the id and log-probability reported.
type PromptEntry = (String, Option<u32>, Option<f32>);

/// The prompt log-probabilities of a sequence (and its tokens).
fn prompt_logprobs(mut rx: UnboundedReceiver<GenEvent>) -> (Vec<PromptEntry>, Vec<u32>) {
    let mut prompt = None;
    let mut ids = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            GenEvent::Prompt(p) => {
                assert!(prompt.is_none(), "prompt logprobs sent twice");
                prompt = Some(
                    p.into_iter()
                        .map(|t| {
                            let id = t.logprob.as_ref().map(|l| l.id);
                            (t.token, id, t.logprob.map(|l| l.logprob))
                        })
                        .collect(),
                );
            }
            GenEvent::Delta { logprobs, .. } => ids.extend(logprobs.iter().map(|l| l.id)),
            GenEvent::Done { .. } => return (prompt.expect("no prompt logprobs"), ids),
            GenEvent::Error(e) => panic!("{e}"),
        }
    }
    panic!("no Done event");
}

/// Echoed prompt logprobs (completions `echo` + `logprobs`) of a sequence
/// preempted in the middle of its prompt: it recomputes the prompt, and each
/// position is reported once, equal to an undisturbed run.
#[test]
fn prompt_logprobs_survive_preemption() {
    let tok = generator(SchedulerConfig::default()).tokenizer().clone();
    let long = |i: usize| {
        tok.encode(
            &format!(
                "Story {i}: {}",
                "the quick brown fox jumps over the lazy dog and runs away. ".repeat(55)
            ),
            true,
        )
        .unwrap()
    };
    let with_echo = |p: Vec<u32>| GenerateRequest {
        prompt_logprobs: Some(1),
        ..request(p, 4)
    };
    let roomy = generator(SchedulerConfig::default());
    // Prompts of ~700 tokens: admission reserves a first chunk of 512; the
    // rest of two prompts does not fit 80 blocks, so the newer sequence is
    // preempted in the middle of its prompt.
    let tight = generator(SchedulerConfig {
        kv_budget_bytes: 80 * 16 * 30 * 2 * 3 * 64 * 4,
        prefix_caching: false,
        ..Default::default()
    });
    assert!(
        long(0).len() > 600 && long(0).len() < 80 * 16 / 2 + 200,
        "{}",
        long(0).len()
    );
    let n = 3;
    let rxs: Vec<_> = (0..n).map(|i| tight.submit(with_echo(long(i))).unwrap()).collect();
    let together: Vec<_> = rxs.into_iter().map(prompt_logprobs).collect();
    assert!(
        tight.stats().preemptions.load(Ordering::Relaxed) > 0,
        "the budget forced preemption"
    );
    for (i, (prompt, ids)) in together.into_iter().enumerate() {
        let p = long(i);
        let (alone, alone_ids) = prompt_logprobs(roomy.submit(with_echo(p.clone())).unwrap());
        assert_eq!(prompt.len(), p.len(), "request {i}: one entry per prompt position");
        for (pos, (a, b)) in prompt.iter().zip(&alone).enumerate() {
            assert_eq!(a.0, b.0, "request {i} position {pos}");
            assert_eq!(a.1, b.1, "request {i} position {pos}");
            if pos > 0 {
                assert_eq!(a.1, Some(p[pos]), "request {i} position {pos} is its own token");
            }
            match (a.2, b.2) {
                (Some(x), Some(y)) => assert!((x - y).abs() < 1e-3, "request {i} position {pos}: {x} vs {y}"),
                (None, None) => {}
                other => panic!("request {i} position {pos}: {other:?}"),
            }
        }
        assert_eq!(ids, alone_ids, "request {i}");
    }
}

/// A request the model cannot run fails alone with a client error; the
/// sequences sharing the scheduler finish normally.
#[test]
fn a_bad_request_fails_alone() {
    let g = generator(SchedulerConfig::default());
    let tok = g.tokenizer().clone();
    let good: Vec<_> = (0..3).map(|i| g.submit(request(prompt(&tok, i), 8)).unwrap()).collect();
    let vocab = g.model().config().vocab as u32;
    let mut bad = g.submit(request(vec![1, 2, vocab + 5], 8)).unwrap();
    match bad.blocking_recv() {
        Some(GenEvent::Error(EngineError::InvalidRequest { message, .. })) => {
            assert!(message.contains("vocabulary"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    for rx in good {
        assert_eq!(tokens(rx).1.completion_tokens, 8);
    }
    assert_eq!(g.stats().waiting.load(Ordering::Relaxed), 0);
}
