//! Architectures beyond Llama and BERT served over the OpenAI API: the real
//! gemma-3-270m (GGUF Q4_K_M) and all-mpnet-base-v2 (`make models-extra`),
//! and the tiny GPT-2 of `tests/fixtures/tiny`.

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
        for p in [&gguf, &mpnet] {
            assert!(p.exists(), "{} is missing: run `make models-extra`", p.display());
        }
        let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny");
        Server::start(&[
            "--model",
            &format!("tiny-gpt2={}", tiny.join("gpt2-f32").display()),
            "--model",
            &format!("gemma={}", gguf.display()),
            "--model",
            &format!("mpnet={}", mpnet.display()),
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

#[test]
fn mpnet_embeds_as_sentence_transformers_does() {
    let s = server();
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/mpnet_st.json"))
            .unwrap(),
    )
    .unwrap();
    let sentences = &r["sentences"];
    let (code, v) = s.post_json("/v1/embeddings", json!({"model": "mpnet", "input": sentences}));
    assert_eq!(code, 200, "{v}");
    let tokens: usize = r["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().len())
        .sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        let got: Vec<f64> = d["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), 768);
        let want: Vec<f64> = r["embeddings"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let cos: f64 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
        assert!(cos >= 0.9999, "sentence {i}: cosine {cos}");
    }
    let (code, v) = s.get_json("/v1/models/mpnet");
    assert_eq!(code, 200);
    assert_eq!(
        (v["architecture"].as_str(), v["task"].as_str()),
        (Some("mpnet"), Some("embed"))
    );
}

#[test]
fn gpt2_completes_as_transformers_does() {
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
    let want = tok.decode(&ids(&g["gpt2-f32"]["greedy"]), false).unwrap();
    let (code, v) = s.post_json(
        "/v1/completions",
        json!({"model": "tiny-gpt2", "prompt": g["prompt_ids"], "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], want.as_str());
    assert_eq!(v["usage"]["completion_tokens"], 8);
    // Past its 128 learned positions: refused up front, not run.
    let long: Vec<u32> = std::iter::repeat_n(5u32, 200).collect();
    let (code, e) = s.post_json(
        "/v1/completions",
        json!({"model": "tiny-gpt2", "prompt": long, "max_tokens": 1}),
    );
    assert_eq!(code, 400, "{e}");
    let (code, v) = s.get_json("/v1/models/tiny-gpt2");
    assert_eq!(code, 200);
    assert_eq!(
        (v["architecture"].as_str(), v["context_length"].as_u64()),
        (Some("gpt2"), Some(128))
    );
}
