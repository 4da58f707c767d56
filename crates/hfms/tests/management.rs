//! Backpressure and model management over HTTP: a full queue answers 503
//! with Retry-After; models load and unload on request; keep_alive works.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{Server, client, error_of, model_status};
use serde_json::{Value, json};

const SMOL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
const MINI: &str = "sentence-transformers/all-MiniLM-L6-v2";

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let s = Server::start(&["--preload", "smollm2", "--max-running", "1", "--max-waiting", "1"]);
    // One long generation holds the only running slot.
    let mut long = client()
        .post(s.url("/v1/completions"))
        .json(&json!({"model": "smollm2", "prompt": "Once", "max_tokens": 3000, "stream": true, "ignore_eos": true}))
        .send()
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(long.read(&mut buf).unwrap() > 0);
    // The next one waits (in the background)...
    let base = s.base.clone();
    let waiting = std::thread::spawn(move || {
        client()
            .post(format!("{base}/v1/completions"))
            .json(&json!({"model": "smollm2", "prompt": "Hi", "max_tokens": 2}))
            .send()
            .map(|r| r.status().as_u16())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = s.get_json("/status").1;
        if model_status(&st, SMOL)["scheduler"]["waiting"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "second request never queued: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...and the one after that is turned away.
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().unwrap();
    let (msg, kind, _, _) = error_of(&v);
    assert_eq!(kind, "server_overloaded");
    assert!(msg.contains("queue is full"), "{msg}");
    let st = s.get_json("/status").1;
    assert_eq!(model_status(&st, SMOL)["scheduler"]["rejected"], 1);
    drop(long); // free the slot: the waiting request completes
    assert_eq!(waiting.join().unwrap().unwrap(), 200);
}

#[test]
fn models_load_and_unload_on_request_and_keep_alive_applies() {
    let s = Server::start(&[]);
    let st = s.get_json("/status").1;
    assert_eq!(model_status(&st, MINI)["state"], "unloaded");
    // Load with a keep_alive; /v1/models shows the state.
    let (code, v) = s.post_json("/models/load", json!({"model": "all-minilm", "keep_alive": "10m"}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["model"], MINI);
    assert_eq!(v["status"]["state"], "loaded");
    assert_eq!(v["status"]["keep_alive"], 600.0);
    assert!(v["status"]["expires_at"].as_u64().is_some());
    let (_, m) = s.get_json("/v1/models/all-minilm");
    assert_eq!(m["state"], "loaded");
    assert_eq!(m["device"], "cpu");
    // Unload.
    let (code, v) = s.post_json("/models/unload", json!({"model": "all-minilm"}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "unloaded");
    assert_eq!(model_status(&s.get_json("/status").1, MINI)["state"], "unloaded");
    // keep_alive 0 on a request: loaded for it, unloaded after it.
    let (code, _) = s.post_json(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": "hi", "keep_alive": 0}),
    );
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while model_status(&s.get_json("/status").1, MINI)["state"] != "unloaded" {
        assert!(Instant::now() < deadline, "keep_alive 0 did not unload");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = s.get_json("/status").1;
    assert!(model_status(&st, MINI)["loads"].as_u64().unwrap() >= 2);
    assert!(st["manager"]["unloads"].as_u64().unwrap() >= 2);
    // Bad requests.
    let (code, v) = s.post_json("/models/load", json!({"model": "nope"}));
    assert_eq!(code, 404);
    assert_eq!(error_of(&v).3, Some("model_not_found"));
    let (code, v) = s.post_json("/models/load", json!({"model": "smollm2", "keep_alive": "soon"}));
    assert_eq!(code, 400);
    assert_eq!(error_of(&v).2, Some("keep_alive"));
    let (code, v) = s.post_json("/models/load", json!({"model": "smollm2", "device": "tpu:0"}));
    assert_eq!(code, 400);
    assert_eq!(error_of(&v).2, Some("device"));
    // A device this machine lacks is the client's mistake, not a server error.
    let (code, v) = s.post_json("/models/load", json!({"model": "smollm2", "device": "cuda:3"}));
    assert_eq!(code, 400, "{v}");
    assert_eq!(error_of(&v).2, Some("device"));
    assert!(error_of(&v).0.contains("not present"), "{v}");
    let (code, v) = s.post_json(
        "/v1/chat/completions",
        json!({"model": "smollm2", "keep_alive": [1], "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(code, 400);
    assert_eq!(error_of(&v).2, Some("keep_alive"));
}

#[test]
fn a_memory_budget_for_one_model_swaps_them() {
    // Room for one model at a time: each request evicts the other.
    // No response cache: the repeated embedding must reach the model.
    let s = Server::start(&[
        "--memory-budget",
        "cpu=300",
        "--kv-cache-mb",
        "64",
        "--no-response-cache",
    ]);
    for round in 0..2 {
        let (code, v) = s.post_json("/v1/embeddings", json!({"model": "all-minilm", "input": "hi"}));
        assert_eq!(code, 200, "round {round}: {v}");
        let (code, v) = s.post_json(
            "/v1/completions",
            json!({"model": "smollm2", "prompt": "Hi", "max_tokens": 2}),
        );
        assert_eq!(code, 200, "round {round}: {v}");
        let st = s.get_json("/status").1;
        assert_eq!(model_status(&st, MINI)["state"], "unloaded", "round {round}");
        assert_eq!(model_status(&st, SMOL)["state"], "loaded");
    }
    let st = s.get_json("/status").1;
    assert!(st["manager"]["evictions"].as_u64().unwrap() >= 3, "{}", st["manager"]);
}

/// `--encoder-weights f16|bf16`: the encoder's layer weights are held in
/// 16 bits (fewer bytes in `/status`) and its vectors stay next to the f32
/// ones (bf16 also rounds the activations: a looser bound).
#[test]
fn encoder_weights_halve_layer_weights_and_keep_vectors() {
    let embed = |s: &Server| {
        let (st, v) = s.post_json(
            "/v1/embeddings",
            json!({"model": "all-minilm", "input": "The quick brown fox jumps over the lazy dog."}),
        );
        assert_eq!(st, 200, "{v}");
        let vector: Vec<f64> = v["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let bytes = model_status(&s.get_json("/status").1, MINI)["bytes"].as_u64().unwrap();
        (vector, bytes)
    };
    let (full, full_bytes) = embed(&Server::start(&[]));
    for (weights, min_cosine) in [("f16", 0.99999), ("bf16", 0.9999)] {
        let (half, half_bytes) = embed(&Server::start(&["--encoder-weights", weights]));
        // The layers halve; the token embedding table (about half) stays f32.
        assert!(
            half_bytes < full_bytes * 8 / 10,
            "{half_bytes} bytes with {weights} vs {full_bytes}"
        );
        let dot: f64 = full.iter().zip(&half).map(|(a, b)| a * b).sum();
        assert!(dot > min_cosine, "{weights}: cosine {dot}");
    }
}

/// `--chat-template`: `MODEL=FILE` replaces a model's own template; a bare
/// `FILE` serves the generation models that have none (which otherwise
/// answer chat with a 400) and leaves the others' templates alone.
#[test]
fn operator_chat_templates_replace_or_fill_in() {
    let tiny = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    let dir = std::env::temp_dir().join(format!("hfms-chat-template-{}", std::process::id()));
    // A base model: the tiny Llama without the template in its tokenizer config.
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in std::fs::read_dir(tiny.join("llama-f32")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, base.join(f.file_name().unwrap())).unwrap();
    }
    let cfg_path = base.join("tokenizer_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let fixed = dir.join("fixed.jinja");
    std::fs::write(
        &fixed,
        "{{ bos_token }}Fixed question.{% if add_generation_prompt %} Answer:{% endif %}",
    )
    .unwrap();
    // A model whose own template does not compile: replaceable all the same.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in std::fs::read_dir(&base).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, broken.join(f.file_name().unwrap())).unwrap();
    }
    cfg["chat_template"] = "{% for %}".into();
    std::fs::write(broken.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let broken_model = format!("broken={}", broken.display());
    let base_model = format!("base={}", base.display());
    let tq = format!("tq={}", tiny.join("llama-quant.gguf").display());
    let chat = |s: &Server, model: &str, content: &str| {
        s.post_json(
            "/v1/chat/completions",
            json!({"model": model, "messages": [{"role": "user", "content": content}],
                   "max_tokens": 6, "temperature": 0}),
        )
    };
    let prompt_tokens = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    let (short, long) = ("Hi", "A much longer message about many different things at once");

    let s = Server::start(&["--model", &base_model]);
    let (st, v) = chat(&s, "base", short);
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).0.contains("no chat template"), "{v}");
    drop(s);

    let s = Server::start(&[
        "--model",
        &base_model,
        "--model",
        &tq,
        "--chat-template",
        fixed.to_str().unwrap(),
        "--chat-template",
        &format!("smollm2={}", fixed.display()),
        "--model",
        &broken_model,
        "--chat-template",
        &format!("broken={}", fixed.display()),
    ]);
    for model in ["base", "smollm2", "broken"] {
        let (st, a) = chat(&s, model, short);
        assert_eq!(st, 200, "{model}: {a}");
        let (st, b) = chat(&s, model, long);
        assert_eq!(st, 200, "{model}: {b}");
        // The fixed template ignores the message: the same prompt, the same
        // greedy answer.
        assert_eq!(prompt_tokens(&a), prompt_tokens(&b), "{model}");
        assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"], "{model}");
    }
    // A model with its own template keeps it beside a fallback.
    let (_, a) = chat(&s, "tq", short);
    let (_, b) = chat(&s, "tq", long);
    assert!(prompt_tokens(&b) > prompt_tokens(&a), "{a} {b}");
    drop(s);

    // A name that is no model, or an embedding model, fails at start,
    // naming the flag.
    for (entry, needle) in [
        (format!("nosuch={}", fixed.display()), "--chat-template nosuch"),
        (format!("all-minilm={}", fixed.display()), "embedding model"),
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hfms"))
            .args(["serve", "--port", "0", "--no-hf-cache", "--models-dir"])
            .arg(common::models_dir())
            .args(["--chat-template", &entry])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hfms served with --chat-template {entry}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(!status.success() && err.contains(needle), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
