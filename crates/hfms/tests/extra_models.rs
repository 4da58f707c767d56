//! Architectures beyond Llama and BERT served over the OpenAI API: the real
//! gemma-3-270m (GGUF Q4_K_M), all-mpnet-base-v2 and nomic-embed-text-v1.5
//! (GGUF F16) of `make models-extra`, and the tiny GPT-2, Phi-3 and Mixtral
//! (safetensors and GGUF), Gemma 2,
//! Qwen2-MoE, Qwen3-MoE and ModernBERT of `tests/fixtures/tiny`.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::{Server, error_of};
use serde_json::json;

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let extra = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models-extra");
        let gguf = extra.join("google/gemma-3-270m/gemma-3-270m-q4_k_m.gguf");
        let mpnet = extra.join("sentence-transformers/all-mpnet-base-v2");
        let nomic = extra.join("nomic-ai/nomic-embed-text-v1.5/nomic-embed-text-v1.5.f16.gguf");
        for p in [&gguf, &mpnet, &nomic] {
            assert!(p.exists(), "{} is missing: run `make models-extra`", p.display());
        }
        let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
        Server::start(&[
            "--model",
            &format!("tiny-gpt2={}", tiny.join("gpt2-f32").display()),
            "--model",
            &format!("tiny-gpt2-gguf={}", tiny.join("gpt2-f32.gguf").display()),
            "--model",
            &format!("tiny-mixtral-gguf={}", tiny.join("mixtral-f32.gguf").display()),
            "--model",
            &format!("tiny-qwen2moe={}", tiny.join("qwen2moe-f32").display()),
            "--model",
            &format!("tiny-phi3={}", tiny.join("phi3-f32").display()),
            "--model",
            &format!("tiny-phi3-gguf={}", tiny.join("phi3-f32.gguf").display()),
            "--model",
            &format!("tiny-gemma2={}", tiny.join("gemma2-f32").display()),
            "--model",
            &format!("tiny-modernbert={}", tiny.join("modernbert-f32").display()),
            "--model",
            &format!("tiny-mixtral={}", tiny.join("mixtral-f32").display()),
            "--model",
            &format!("tiny-qwen3moe={}", tiny.join("qwen3moe-f32").display()),
            "--model",
            &format!("gemma={}", gguf.display()),
            "--model",
            &format!("mpnet={}", mpnet.display()),
            "--model",
            &format!("nomic={}", nomic.display()),
        ])
    })
}

#[test]
fn gemma3_completes_and_asks_for_a_template_to_chat() {
    let s = server();
    let (code, v) = s.get_json("/v1/models/gemma");
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["architecture"].as_str(), v["task"].as_str()),
        (Some("gemma3"), Some("generate"))
    );
    // Every step of this prompt has a clear margin in transformers' reference
    // (tests/reference/gemma3_greedy_hf.json): the same text, token for token.
    let (code, v) = s.post_json(
        "/v1/completions",
        json!({"model": "gemma", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], " 6, 7, 8, 9,");
    assert_eq!(v["usage"]["prompt_tokens"], 15, "BOS and 14 tokens");
    let chunks = s.stream(
        "/v1/completions",
        json!({"model": "gemma", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 12, "temperature": 0, "stream": true}),
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, " 6, 7, 8, 9,");
    // A base model: its GGUF has no chat template.
    let (code, e) = s.post_json(
        "/v1/chat/completions",
        json!({"model": "gemma", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(code, 400, "{e}");
    assert!(error_of(&e).0.contains("template"), "{e}");
}

fn reference(name: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Every input of a committed reference in one request: the same token
/// count and vectors within cosine 0.9999; the model's card says `arch`.
fn embeds_as_reference(model: &str, reference_file: &str, arch: &str) {
    let s = server();
    let r = reference(reference_file);
    let (code, v) = s.post_json("/v1/embeddings", json!({"model": model, "input": r["sentences"]}));
    assert_eq!(code, 200, "{v}");
    let tokens: usize = r["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().len())
        .sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        let (got, want) = (floats(&d["embedding"]), floats(&r["embeddings"][i]));
        assert_eq!(got.len(), want.len());
        let cos: f64 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
        assert!(cos >= 0.9999, "{model} input {i}: cosine {cos}");
    }
    let (code, v) = s.get_json(&format!("/v1/models/{model}"));
    assert_eq!(code, 200);
    assert_eq!(
        (v["architecture"].as_str(), v["task"].as_str()),
        (Some(arch), Some("embed"))
    );
}

#[test]
fn mpnet_embeds_as_sentence_transformers_does() {
    embeds_as_reference("mpnet", "mpnet_st.json", "mpnet");
}

#[test]
fn nomic_bert_gguf_embeds_as_transformers_does() {
    embeds_as_reference("nomic", "nomic_hf.json", "nomic-bert");
    // Matryoshka dimensions by the model card's recipe.
    let s = server();
    let r = reference("nomic_hf.json");
    let (code, v) = s.post_json(
        "/v1/embeddings",
        json!({"model": "nomic", "input": r["sentences"][0], "dimensions": r["dimensions"]}),
    );
    assert_eq!(code, 200, "{v}");
    let (got, want) = (floats(&v["data"][0]["embedding"]), floats(&r["shortened"][0]));
    assert_eq!(got.len(), 256);
    let cos: f64 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
    assert!(cos >= 0.9999, "cosine {cos}");
    // Hostile: dimensions out of range, wrong type; an input past 2048
    // tokens is cut (as sentence-transformers does), not refused.
    for (dims, what) in [(json!(0), "at least 1"), (json!(769), "768")] {
        let (code, e) = s.post_json(
            "/v1/embeddings",
            json!({"model": "nomic", "input": "x", "dimensions": dims}),
        );
        assert_eq!(code, 400, "{e}");
        assert!(error_of(&e).0.contains(what), "{e}");
    }
    for dims in [json!(-1), json!(1.5), json!("256"), json!(1e30)] {
        let (code, e) = s.post_json(
            "/v1/embeddings",
            json!({"model": "nomic", "input": "x", "dimensions": dims}),
        );
        assert_eq!(code, 400, "{dims}: {e}");
    }
    let long = "word ".repeat(5000);
    let (code, v) = s.post_json("/v1/embeddings", json!({"model": "nomic", "input": long}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 768);
    let (code, e) = s.post_json("/v1/embeddings", json!({"model": "nomic", "input": [[0, 30522]]}));
    assert_eq!(code, 400, "{e}");
    assert!(error_of(&e).0.contains("vocabulary"), "{e}");
}

/// The tiny decoders of `tests/fixtures/tiny` (GPT-2, Phi-3, Mixtral,
/// Qwen3-MoE) complete the golden prompt with transformers' greedy tokens,
/// and refuse a prompt past their context.
#[test]
fn tiny_decoders_complete_as_transformers_does() {
    let s = server();
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("decoder_goldens.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let tok = hfms_engine::tokenizer::Tokenizer::from_file(&tiny.join("gpt2-f32/tokenizer.json"), None).unwrap();
    for (model, fixture, arch, context) in [
        ("tiny-gpt2", "gpt2-f32", "gpt2", 128),
        ("tiny-gpt2-gguf", "gpt2-f32", "gpt2", 128),
        ("tiny-gemma2", "gemma2-f32", "gemma2", 256),
        // LongRoPE's short factors serve the pretraining length.
        ("tiny-phi3", "phi3-f32", "phi3", 128),
        ("tiny-phi3-gguf", "phi3-f32", "phi3", 128),
        ("tiny-mixtral", "mixtral-f32", "mixtral", 256),
        // llama.cpp writes Mixtral as `llama` with experts.
        ("tiny-mixtral-gguf", "mixtral-f32", "mixtral", 256),
        ("tiny-qwen2moe", "qwen2moe-f32", "qwen2_moe", 256),
        ("tiny-qwen3moe", "qwen3moe-f32", "qwen3_moe", 256),
    ] {
        let want = tok.decode(&ids(&g[fixture]["greedy"]), false).unwrap();
        let (code, v) = s.post_json(
            "/v1/completions",
            json!({"model": model, "prompt": g["prompt_ids"], "max_tokens": 8, "temperature": 0}),
        );
        assert_eq!(code, 200, "{model}: {v}");
        assert_eq!(v["choices"][0]["text"], want.as_str(), "{model}");
        assert_eq!(v["usage"]["completion_tokens"], 8);
        // Past the context: refused up front, not run.
        let long: Vec<u32> = std::iter::repeat_n(5u32, context + 1).collect();
        let (code, e) = s.post_json(
            "/v1/completions",
            json!({"model": model, "prompt": long, "max_tokens": 1}),
        );
        assert_eq!(code, 400, "{model}: {e}");
        let (code, v) = s.get_json(&format!("/v1/models/{model}"));
        assert_eq!(code, 200);
        assert_eq!(
            (v["architecture"].as_str(), v["context_length"].as_u64()),
            (Some(arch), Some(context as u64)),
            "{model}"
        );
    }
    // A text prompt: the GGUF's rebuilt tokenizer reads it as tokenizer.json does.
    let complete = |model: &str| {
        let (code, v) = s.post_json(
            "/v1/completions",
            json!({"model": model, "prompt": "Hello, world! The fox", "max_tokens": 6, "temperature": 0}),
        );
        assert_eq!(code, 200, "{model}: {v}");
        (v["choices"][0]["text"].clone(), v["usage"].clone())
    };
    assert_eq!(complete("tiny-gpt2"), complete("tiny-gpt2-gguf"));
}

/// The tiny ModernBERT embeds token ids as transformers does (mean pooled,
/// normalised); ids outside its vocabulary are a 400.
#[test]
fn tiny_modernbert_embeds_as_transformers_does() {
    let s = server();
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("modernbert_goldens.json")).unwrap()).unwrap();
    let (code, v) = s.post_json(
        "/v1/embeddings",
        json!({"model": "tiny-modernbert", "input": g["inputs"]}),
    );
    assert_eq!(code, 200, "{v}");
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        let (got, want) = (floats(&d["embedding"]), floats(&g["embeddings"][i]));
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "input {i}: differs by {worst}");
    }
    let (code, v) = s.get_json("/v1/models/tiny-modernbert");
    assert_eq!(code, 200);
    assert_eq!(
        (v["architecture"].as_str(), v["task"].as_str()),
        (Some("modernbert"), Some("embed"))
    );
    for bad in [json!([[0, 1000]]), json!([[]]), json!([]), json!([[-1]])] {
        let (code, e) = s.post_json("/v1/embeddings", json!({"model": "tiny-modernbert", "input": bad}));
        assert_eq!(code, 400, "{bad}: {e}");
    }
}

/// `hfms discover` on the extra models: each new family is servable, with
/// its skill, task and context length.
#[test]
fn discover_lists_the_extra_models_as_servable() {
    let extra = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models-extra");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hfms"))
        .args(["discover", "--json", "--no-hf-cache", "--models-dir"])
        .arg(&extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |id: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing: {v}"))
    };
    for (id, skill, task, format, context) in [
        ("google/gemma-3-270m", "gemma3", "generate", "gguf", 32768),
        (
            "sentence-transformers/all-mpnet-base-v2",
            "mpnet",
            "embed",
            "safetensors",
            384,
        ),
        ("nomic-ai/nomic-embed-text-v1.5", "nomic_bert", "embed", "gguf", 2048),
    ] {
        let m = find(id);
        assert!(m["error"].is_null(), "{m}");
        assert_eq!(
            (
                m["skill"].as_str(),
                m["task"].as_str(),
                m["format"].as_str(),
                m["context_length"].as_u64()
            ),
            (Some(skill), Some(task), Some(format), Some(context)),
            "{m}"
        );
    }
}
