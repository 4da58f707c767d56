//! Circuit breakers with the real server: a model whose file is broken
//! fails to load with a clear error, its circuit opens (503
//! model_unavailable with Retry-After, nothing loaded again), the other
//! models keep serving, and once the file is fixed a probe closes it;
//! timeouts open a circuit too.

mod common;

use std::time::{Duration, Instant};

use common::{Server, client, error_of};
use serde_json::{Value, json};

fn completion(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "prompt": "Tell me a story.", "max_tokens": max_tokens, "ignore_eos": true})
}

fn circuit(s: &Server, model: &str) -> Value {
    s.get_json("/status").1["circuits"][model].clone()
}

#[test]
fn a_broken_model_opens_its_circuit_and_a_fixed_one_closes_it() {
    let dir = std::env::temp_dir().join(format!("hfms-breaker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = common::models_dir().join("HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&good).unwrap();
    // A tensor renamed in the directory: discovery is content, the load
    // fails ("tensor output_norm.weight is missing").
    let mut broken = bytes.clone();
    let at = broken
        .windows(18)
        .position(|w| w == b"output_norm.weight")
        .expect("tensor name");
    broken[at..at + 18].copy_from_slice(b"output_norx.weight");
    let path = dir.join("broken.gguf");
    std::fs::write(&path, &broken).unwrap();
    let s = Server::start(&[
        "--preload",
        "all-minilm",
        "--model",
        &format!("test/broken={}", path.display()),
        "--breaker-open-seconds",
        "1",
    ]);

    let (st, v) = s.post_json("/v1/completions", completion("test/broken", 2));
    assert_eq!(st, 500, "{v}");
    let (msg, _, _, code) = error_of(&v);
    assert_eq!(code, Some("model_load_failed"));
    assert!(msg.contains("output_norm.weight is missing"), "{msg}");
    // Open: answered at once, no new load.
    let r = client()
        .post(s.url("/v1/completions"))
        .json(&completion("test/broken", 2))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().unwrap();
    assert_eq!(error_of(&v).3, Some("model_unavailable"));
    let c = circuit(&s, "test/broken");
    assert_eq!(c["state"], "open", "{c}");
    let loads = |s: &Server| {
        s.get_json("/status").1["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "test/broken")
            .map(|m| m["loads"].as_u64().unwrap())
    };
    assert_eq!(loads(&s), Some(0));
    // The other models serve.
    let (st, _) = s.post_json("/v1/embeddings", json!({"model": "all-minilm", "input": "fine"}));
    assert_eq!(st, 200);
    // Still broken after the back-off: the probe fails, open for longer.
    std::thread::sleep(Duration::from_millis(1100));
    let (st, _) = s.post_json("/v1/completions", completion("test/broken", 2));
    assert_eq!(st, 500, "the probe tried the load again");
    assert_eq!(circuit(&s, "test/broken")["opened"], 2);
    // Fixed: after the (doubled) back-off a probe loads it and closes it.
    std::fs::write(&path, &bytes).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, v) = s.post_json("/v1/completions", completion("test/broken", 2));
        if st == 200 {
            break;
        }
        assert_eq!(st, 503, "{v}");
        assert!(Instant::now() < deadline, "never closed: {v}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(circuit(&s, "test/broken")["state"], "closed");
    let metrics = client().get(s.url("/metrics")).send().unwrap().text().unwrap();
    assert!(
        metrics.contains("hfms_circuit_state{model=\"test/broken\"} 0"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("circuit"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.contains("hfms_circuit_opened_total{model=\"test/broken\"} 2"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn timeouts_open_the_circuit_and_client_errors_do_not() {
    let s = Server::start(&[
        "--preload",
        "smollm2,all-minilm",
        "--request-timeout",
        "1",
        "--breaker-failures",
        "2",
        "--breaker-open-seconds",
        "30",
    ]);
    // Client errors, however many, never open it.
    for _ in 0..5 {
        let (st, _) = s.post_json("/v1/completions", json!({"model": "smollm2", "prompt": "x", "n": 0}));
        assert_eq!(st, 400);
    }
    for _ in 0..2 {
        let (st, v) = s.post_json("/v1/completions", completion("smollm2", 4000));
        assert_eq!(st, 504, "{v}");
    }
    let (st, v) = s.post_json("/v1/completions", completion("smollm2", 2));
    assert_eq!(st, 503, "{v}");
    assert_eq!(error_of(&v).3, Some("model_unavailable"));
    assert!(error_of(&v).0.contains("timed out"), "{v}");
    let (st, _) = s.post_json("/v1/embeddings", json!({"model": "all-minilm", "input": "fine"}));
    assert_eq!(st, 200, "another model is not affected");
    // An operator's load goes through and closes it.
    let (st, _) = s.post_json("/models/load", json!({"model": "smollm2"}));
    assert_eq!(st, 200);
    let (st, v) = s.post_json("/v1/completions", completion("smollm2", 2));
    assert_eq!(st, 200, "{v}");
}
