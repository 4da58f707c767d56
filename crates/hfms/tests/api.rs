//! The OpenAI API of a real server with the two packaged models: what a client
//! sees for chat, completions, embeddings and models.

mod common;

use base64::Engine as _;
use common::Server;
use serde_json::{Value, json};

fn chunks(data: &[String]) -> Vec<Value> {
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "stream must end with [DONE]"
    );
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn reference_messages() -> Value {
    common::reference()["messages"].clone()
}

#[test]
fn models_list_and_lookup_by_id_and_alias() {
    let s = Server::shared();
    let (st, v) = s.get_json("/v1/models");
    assert_eq!(st, 200);
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"HuggingFaceTB/SmolLM2-135M-Instruct"), "{ids:?}");
    assert!(ids.contains(&"sentence-transformers/all-MiniLM-L6-v2"), "{ids:?}");
    for m in v["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert!(m["created"].is_u64() && m["owned_by"].is_string());
    }
    let (st, m) = s.get_json("/v1/models/HuggingFaceTB/SmolLM2-135M-Instruct");
    assert_eq!(st, 200);
    // A folder's only GGUF also answers to id:QUANT.
    assert_eq!(
        m["aliases"],
        json!(["smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct:Q4_1"])
    );
    let (st, q) = s.get_json("/v1/models/HuggingFaceTB/SmolLM2-135M-Instruct:Q4_1");
    assert_eq!(st, 200);
    assert_eq!(q["id"], "HuggingFaceTB/SmolLM2-135M-Instruct");
    assert_eq!(m["state"], "loaded");
    let (st, m) = s.get_json("/v1/models/all-minilm");
    assert_eq!(st, 200);
    assert_eq!(m["id"], "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(m["task"], "embed");
}

#[test]
fn chat_greedy_reproduces_reference_with_usage() {
    let s = Server::shared();
    let r = common::reference();
    let (st, v) = s.post_json(
        "/v1/chat/completions",
        json!({"model": "smollm2", "messages": reference_messages(), "temperature": 0, "max_tokens": 48}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "HuggingFaceTB/SmolLM2-135M-Instruct");
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], r["generated_text"]);
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(c["logprobs"], Value::Null);
    assert_eq!(v["usage"]["prompt_tokens"], 29);
    assert_eq!(v["usage"]["completion_tokens"], r["generated_token_count"]);
    assert_eq!(
        v["usage"]["total_tokens"],
        29 + r["generated_token_count"].as_u64().unwrap()
    );
}

#[test]
fn chat_stream_equals_non_stream_and_reports_usage() {
    let s = Server::shared();
    let body = json!({"model": "smollm2", "messages": reference_messages(), "temperature": 0, "max_tokens": 48});
    let (_, full) = s.post_json("/v1/chat/completions", body.clone());
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let cs = chunks(&s.stream("/v1/chat/completions", sb));
    assert!(cs.len() >= 3);
    let id = cs[0]["id"].clone();
    let mut text = String::new();
    let mut finish = None;
    for c in &cs[..cs.len() - 1] {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id, "every chunk has the same id");
        assert!(c.as_object().unwrap().contains_key("usage") && c["usage"].is_null());
        let ch = &c["choices"][0];
        text.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
        if !ch["finish_reason"].is_null() {
            finish = Some(ch["finish_reason"].clone());
        }
    }
    assert_eq!(cs[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(text, full["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(finish, Some(json!("stop")));
    let last = cs.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], full["usage"]);

    // Without include_usage there is no usage field at all.
    let mut sb = body;
    sb["stream"] = json!(true);
    for c in chunks(&s.stream("/v1/chat/completions", sb)) {
        assert!(c.get("usage").is_none(), "{c}");
    }
}

#[test]
fn n_choices_with_seed_are_reproducible() {
    let s = Server::shared();
    let body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Write a word."}],
        "n": 3, "seed": 42, "temperature": 1.0, "max_tokens": 12});
    let (st, a) = s.post_json("/v1/chat/completions", body.clone());
    assert_eq!(st, 200, "{a}");
    let (_, b) = s.post_json("/v1/chat/completions", body);
    let texts = |v: &Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    for (i, c) in a["choices"].as_array().unwrap().iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    assert_eq!(texts(&a), texts(&b), "same seed, same outputs");
    let completion: u64 = a["choices"].as_array().unwrap().len() as u64;
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() >= completion);
}

#[test]
fn stop_sequences_are_never_emitted_streamed_or_not() {
    let s = Server::shared();
    let body = json!({"model": "smollm2", "messages": reference_messages(), "temperature": 0, "max_tokens": 48, "stop": [", B"]});
    let (_, v) = s.post_json("/v1/chat/completions", body.clone());
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text, "Primary colors are:\n\nRed");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let mut sb = body;
    sb["stream"] = json!(true);
    let streamed: String = chunks(&s.stream("/v1/chat/completions", sb))
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(streamed, text);
}

#[test]
fn max_tokens_and_max_completion_tokens_cut_with_length() {
    let s = Server::shared();
    for field in ["max_tokens", "max_completion_tokens"] {
        let mut body = json!({"model": "smollm2", "messages": reference_messages(), "temperature": 0});
        body[field] = json!(3);
        let (st, v) = s.post_json("/v1/chat/completions", body);
        assert_eq!(st, 200);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["choices"][0]["message"]["content"], "Primary colors are");
    }
}

#[test]
fn chat_logprobs_have_the_openai_shape() {
    let s = Server::shared();
    let (st, v) = s.post_json(
        "/v1/chat/completions",
        json!({"model": "smollm2", "messages": reference_messages(), "temperature": 0, "max_tokens": 5,
               "logprobs": true, "top_logprobs": 3}),
    );
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 5);
    let mut joined = Vec::new();
    for e in content {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], e["token"]);
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        joined.extend(e["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8));
    }
    assert_eq!(
        String::from_utf8(joined).unwrap(),
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(v["choices"][0]["logprobs"]["refusal"], Value::Null);
}

#[test]
fn json_object_response_format_parses() {
    let s = Server::shared();
    let (st, v) = s.post_json(
        "/v1/chat/completions",
        json!({"model": "smollm2", "temperature": 0, "max_tokens": 200,
               "messages": [{"role": "user", "content": "Describe a cat as JSON with keys name and age."}],
               "response_format": {"type": "json_object"}}),
    );
    assert_eq!(st, 200, "{v}");
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "stop", "{v}");
    let parsed: Value = serde_json::from_str(c["message"]["content"].as_str().unwrap()).expect("valid JSON");
    assert!(parsed.is_object());
}

#[test]
fn content_parts_are_flattened_like_strings() {
    let s = Server::shared();
    let plain = json!({"model": "smollm2", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello"}]});
    let parts = json!({"model": "smollm2", "temperature": 0, "max_tokens": 8,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]});
    let (_, a) = s.post_json("/v1/chat/completions", plain);
    let (_, b) = s.post_json("/v1/chat/completions", parts);
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
}

#[test]
fn completions_prompt_shapes_echo_and_logprobs() {
    let s = Server::shared();
    let (st, v) = s.post_json(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();

    // The same prompt as token ids gives the same text.
    let ids: Vec<u64> = vec![504, 3575, 282, 4649, 314];
    let (_, byid) = s.post_json(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": ids, "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(byid["usage"]["prompt_tokens"], 5);

    // Several prompts × n: choices indexed prompt * n + i.
    let (_, many) = s.post_json(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": ["The capital of France is", "One, two,"], "n": 2, "max_tokens": 3, "temperature": 0}),
    );
    let ch = many["choices"].as_array().unwrap();
    assert_eq!(ch.len(), 4);
    assert_eq!(
        ch[0]["text"],
        json!(
            text.chars()
                .take(ch[0]["text"].as_str().unwrap().chars().count())
                .collect::<String>()
        )
    );
    assert_eq!(ch[0]["text"], ch[1]["text"], "greedy: both samples of prompt 0 agree");
    assert_ne!(ch[0]["text"], ch[2]["text"]);
    for (i, c) in ch.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    let _ = prompt_tokens;

    // echo + logprobs: prompt tokens first (the first without a logprob).
    let (_, e) = s.post_json(
        "/v1/completions",
        json!({"model": "smollm2", "prompt": "One, two,", "max_tokens": 2, "temperature": 0, "echo": true, "logprobs": 2}),
    );
    let c = &e["choices"][0];
    let t = c["text"].as_str().unwrap();
    assert!(t.starts_with("One, two,"), "{t}");
    let lp = &c["logprobs"];
    let n_prompt = e["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n_prompt + 2);
    assert_eq!(lp["token_logprobs"][0], Value::Null);
    assert!(lp["token_logprobs"][1].as_f64().unwrap() <= 0.0);
    assert_eq!(lp["top_logprobs"][n_prompt].as_object().unwrap().len(), 2);
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn completions_stream_matches_non_stream() {
    let s = Server::shared();
    let body = json!({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0});
    let (_, full) = s.post_json("/v1/completions", body.clone());
    let mut sb = body;
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let cs = chunks(&s.stream("/v1/completions", sb));
    let text: String = cs
        .iter()
        .filter_map(|c| {
            c["choices"]
                .get(0)
                .and_then(|ch| ch["text"].as_str())
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, full["choices"][0]["text"].as_str().unwrap());
    assert_eq!(cs.last().unwrap()["usage"], full["usage"]);
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    d / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn embeddings_float_base64_dimensions_and_usage() {
    let s = Server::shared();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/minilm_st.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let sentences = reference["sentences"].clone();
    let (st, v) = s.post_json("/v1/embeddings", json!({"model": "all-minilm", "input": sentences}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "sentence-transformers/all-MiniLM-L6-v2");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 24);
    let counts: u64 = reference["token_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(
        v["usage"]["prompt_tokens"], counts,
        "true token counts, truncated at 256"
    );
    assert_eq!(v["usage"]["total_tokens"], counts);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let c = cosine(&floats(&d["embedding"]), &floats(&reference["embeddings"][i]));
        assert!(c >= 0.9999, "sentence {i}: cosine {c}");
    }

    let (_, b) = s.post_json(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": "Hello, world!", "encoding_format": "base64"}),
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f64> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
        .collect();
    let fl = floats(&data[0]["embedding"]);
    assert_eq!(decoded.len(), 384);
    for (a, b) in decoded.iter().zip(&fl) {
        assert!((a - b).abs() < 1e-6);
    }

    let (_, d) = s.post_json(
        "/v1/embeddings",
        json!({"model": "all-minilm", "input": ["Hello, world!"], "dimensions": 64}),
    );
    let e = floats(&d["data"][0]["embedding"]);
    assert_eq!(e.len(), 64);
    assert!((e.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-5);

    // Token ids in, same vector out.
    let ids = reference["token_ids"][0].clone();
    let (_, t) = s.post_json("/v1/embeddings", json!({"model": "all-minilm", "input": [ids]}));
    assert!(cosine(&floats(&t["data"][0]["embedding"]), &fl) > 0.999999);
    assert_eq!(t["usage"]["prompt_tokens"], 6);
}
