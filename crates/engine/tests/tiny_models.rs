//! Other architectures and formats, on the tiny random-weight models of
//! `tests/fixtures/tiny` against transformers' outputs (`goldens.json`, made by
//! `scripts/make-tiny-models.py`).

mod common;

use std::path::PathBuf;

use hfms_engine::compute::ComputePool;
use hfms_engine::formats::gguf::GgufFile;
use hfms_engine::generate::sampling::argmax;
use hfms_engine::kv::{KvPool, SeqKv};
use hfms_engine::quant::{GgmlType, dequantize_row};
use hfms_engine::skills::bert::{BertModel, Encoder, EncoderInput};
use hfms_engine::skills::hf::HfFolder;
use hfms_engine::skills::llama::{CausalLm, LlamaModel, LogitsWanted, StepItem};
use hfms_engine::skills::{Format, ModelSource, Registry};
use hfms_engine::tokenizer::Tokenizer;
use hfms_engine::tokenizer::chat_template::TemplateMessage;
use serde_json::Value;

fn dir() -> PathBuf {
    common::workspace().join("tests/fixtures/tiny")
}

fn goldens() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("goldens.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Last-position logits of the prompt and 8 greedy tokens.
fn run(m: &dyn CausalLm, prompt: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let pool = ComputePool::new(2).unwrap();
    let mut kv = KvPool::new(m.kv_layout(16), 8 << 20);
    let mut seq = SeqKv::default();
    seq.reserve(&mut kv, prompt.len() + 9).unwrap();
    let first = m
        .forward(
            &[StepItem {
                tokens: prompt,
                start: 0,
                kv: &seq,
                logits: LogitsWanted::Last,
            }],
            &mut kv,
            &pool,
        )
        .unwrap();
    let mut greedy = vec![argmax(&first)];
    for i in 0..7 {
        let t = [*greedy.last().unwrap()];
        let l = m
            .forward(
                &[StepItem {
                    tokens: &t,
                    start: prompt.len() + i,
                    kv: &seq,
                    logits: LogitsWanted::Last,
                }],
                &mut kv,
                &pool,
            )
            .unwrap();
        greedy.push(argmax(&l));
    }
    (first, greedy)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn safetensors_decoders_match_transformers() {
    let g = goldens();
    let prompt = ids(&g["prompt_ids"]);
    for name in ["llama-f32", "qwen2-bf16", "mistral-f16", "qwen3-f32"] {
        let path = dir().join(name);
        let meta = HfFolder::read(&path).unwrap();
        let m = LlamaModel::from_safetensors(&path, &meta.config).unwrap();
        let (logits, greedy) = run(&m, &prompt);
        let want = floats(&g["decoders"][name]["last_logits"]);
        let d = max_abs_diff(&logits, &want);
        assert!(d < 2e-3, "{name}: logits differ by {d}");
        assert_eq!(greedy, ids(&g["decoders"][name]["greedy"]), "{name}: greedy tokens");
    }
}

/// Sliding-window attention: the tiny Mistral with its window cut to 8
/// positions (the prompt has 29) against transformers with the same
/// config (`mistral-f16-window8`); the full-attention golden differs.
#[test]
fn sliding_window_attention_matches_transformers() {
    let g = goldens();
    let prompt = ids(&g["prompt_ids"]);
    let path = dir().join("mistral-f16");
    let mut cfg = HfFolder::read(&path).unwrap().config;
    cfg["sliding_window"] = 8.into();
    let m = LlamaModel::from_safetensors(&path, &cfg).unwrap();
    assert_eq!(m.config().window(0), Some(8));
    assert_eq!(m.config().context_length, 256, "the window no longer caps the context");
    let (logits, greedy) = run(&m, &prompt);
    let want = &g["decoders"]["mistral-f16-window8"];
    let d = max_abs_diff(&logits, &floats(&want["last_logits"]));
    assert!(d < 2e-3, "logits differ by {d}");
    assert_eq!(greedy, ids(&want["greedy"]));
    assert_ne!(greedy, ids(&g["decoders"]["mistral-f16"]["greedy"]));
    // A zero window is refused.
    cfg["sliding_window"] = 0.into();
    assert!(LlamaModel::from_safetensors(&path, &cfg).is_err());
}

/// Which layers slide, as transformers reads the config.
#[test]
fn sliding_window_layers_follow_transformers() {
    use serde_json::json;
    let base = json!({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 4,
                      "intermediate_size": 128, "vocab_size": 384});
    let with = |arch: &str, extra: Value| {
        let mut c = base.clone();
        c["model_type"] = arch.into();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        let cfg = hfms_engine::skills::llama::config_from_hf(&c).unwrap();
        (0..4).map(|l| cfg.window(l)).collect::<Vec<_>>()
    };
    // Mistral: every layer; 4096 when the key is absent, none when null.
    assert_eq!(with("mistral", json!({"sliding_window": 8})), vec![Some(8); 4]);
    assert_eq!(with("mistral", json!({})), vec![Some(4096); 4]);
    assert_eq!(with("mistral", json!({"sliding_window": null})), vec![None; 4]);
    // Qwen2: only with use_sliding_window, from max_window_layers (default 28).
    assert_eq!(with("qwen2", json!({"sliding_window": 8})), vec![None; 4]);
    assert_eq!(
        with(
            "qwen2",
            json!({"sliding_window": 8, "use_sliding_window": true, "max_window_layers": 2})
        ),
        vec![None, None, Some(8), Some(8)]
    );
    assert_eq!(
        with("qwen2", json!({"sliding_window": 8, "use_sliding_window": true})),
        vec![None; 4]
    );
    // layer_types wins.
    let types = json!([
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "full_attention"
    ]);
    assert_eq!(
        with("qwen3", json!({"sliding_window": 8, "layer_types": types})),
        vec![Some(8), None, Some(8), None]
    );
    // A zero window counts only where a layer slides.
    assert_eq!(
        with("qwen2", json!({"sliding_window": 0, "use_sliding_window": false})),
        vec![None; 4]
    );
    let mut c = base.clone();
    c["model_type"] = "mistral".into();
    c["sliding_window"] = json!(-1);
    assert!(hfms_engine::skills::llama::config_from_hf(&c).is_err());
}

#[test]
fn gguf_decoders_match_transformers_on_dequantised_weights() {
    let g = goldens();
    let prompt = ids(&g["prompt_ids"]);
    for name in ["llama-quant.gguf", "qwen2-q8_0.gguf"] {
        let f = GgufFile::open(&dir().join(name)).unwrap();
        let m = LlamaModel::from_gguf(&f).unwrap();
        let want = floats(&g["decoders"][name]["last_logits"]);
        // With f32 activations the GGUF path (dequantisation, Q/K
        // permutation, rotary style, biases) agrees to float precision.
        let (exact, exact_greedy) = hfms_engine::compute::matrix::with_exact_activations(|| run(&m, &prompt));
        let d = max_abs_diff(&exact, &want);
        assert!(d < 2e-3, "{name}: exact-activation logits differ by {d}");
        assert_eq!(
            exact_greedy,
            ids(&g["decoders"][name]["greedy"]),
            "{name}: greedy tokens"
        );
        let (logits, _) = run(&m, &prompt);
        // Activations are quantised to 8 bits for the products (as llama.cpp
        // does): these random weights are wide (std 0.2) and the hidden size
        // is 64, so the rounding barely averages out and attention is sharp:
        // a few percent of the logit range, and the same top token (later
        // greedy steps of such a sharp random model can flip on that).
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
        let d = max_abs_diff(&logits, &want);
        assert!(d < 0.06 * scale, "{name}: logits differ by {d} (scale {scale})");
        assert_eq!(argmax(&logits), argmax(&want), "{name}: top token");
    }
}

#[test]
fn gguf_tokenizer_equals_tokenizer_json() {
    let g = goldens();
    let f = GgufFile::open(&dir().join("llama-quant.gguf")).unwrap();
    let from_gguf = Tokenizer::from_gguf(&f).unwrap();
    let from_json = Tokenizer::from_file(&dir().join("tokenizer/tokenizer.json"), None).unwrap();
    let prompt = g["prompt"].as_str().unwrap();
    assert_eq!(from_gguf.encode(prompt, false).unwrap(), ids(&g["prompt_ids"]));
    assert_eq!(from_json.encode(prompt, false).unwrap(), ids(&g["prompt_ids"]));
    for s in [
        "Numbers like 12345 and 3.14",
        "Grüße aus Zürich",
        "  two  spaces\n\nnewlines",
    ] {
        assert_eq!(
            from_gguf.encode(s, false).unwrap(),
            from_json.encode(s, false).unwrap(),
            "{s:?}"
        );
    }
}

#[test]
fn sentencepiece_tokenizer_from_gguf_matches_sentencepiece() {
    let g = goldens();
    let f = GgufFile::open(&dir().join("spm-tokenizer.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    assert!(tok.add_bos());
    for p in g["spm"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let want = ids(&p["ids"]);
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
        // add_special prepends BOS.
        let with_bos = tok.encode(text, true).unwrap();
        assert_eq!(with_bos[0], tok.bos().unwrap());
        assert_eq!(tok.decode(&want, true).unwrap(), text, "round trip of {text:?}");
    }
}

#[test]
fn xlm_roberta_encoder_matches_transformers() {
    let g = goldens();
    let path = dir().join("xlm-roberta-f32");
    let meta = HfFolder::read(&path).unwrap();
    let m = BertModel::from_safetensors(&path, &meta.config).unwrap();
    assert_eq!(m.config().position_offset, 2);
    let inputs: Vec<EncoderInput> = g["encoder"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| EncoderInput::single(ids(v)))
        .collect();
    let refs: Vec<&EncoderInput> = inputs.iter().collect();
    let pool = ComputePool::new(2).unwrap();
    let states = m.encode(&refs, &pool).unwrap();
    let mut row = 0;
    for (i, inp) in inputs.iter().enumerate() {
        let want = floats(&g["encoder"]["last_hidden"][i]);
        let got = &states[row * 64..(row + inp.len()) * 64];
        row += inp.len();
        let d = max_abs_diff(got, &want);
        assert!(d < 1e-4, "input {i}: hidden states differ by {d}");
    }
}

/// ModernBERT (`scripts/make-tiny-modernbert.py`): pre-norm, local windows
/// of ±4 with their own rotary base, GeGLU, no biases; one input longer
/// than the window. Hidden states within 1e-4, pooled embeddings too.
#[test]
fn modernbert_encoder_matches_transformers() {
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("modernbert_goldens.json")).unwrap()).unwrap();
    let source = ModelSource {
        format: Format::Safetensors,
        path: dir().join("modernbert-f32"),
    };
    let registry = Registry::builtin();
    let skill = registry.for_source(&source).unwrap();
    assert_eq!(skill.info().name, "modernbert");
    skill.check(&source).unwrap();
    let ctx = hfms_engine::skills::LoadContext::cpu(ComputePool::new(2).unwrap(), "tiny");
    let hfms_engine::skills::LoadedModel::Embedding(b) = skill.load(&source, &ctx).unwrap() else {
        panic!("not an embedding model");
    };
    let m = b.model();
    assert_eq!(m.encoder.config().max_positions, 256);
    let inputs: Vec<EncoderInput> = g["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| EncoderInput::single(ids(v)))
        .collect();
    let refs: Vec<&EncoderInput> = inputs.iter().collect();
    let pool = ComputePool::new(2).unwrap();
    let states = m.encoder.encode(&refs, &pool).unwrap();
    let mut row = 0;
    for (i, inp) in inputs.iter().enumerate() {
        let want = floats(&g["last_hidden"][i]);
        let got = &states[row * 64..(row + inp.len()) * 64];
        row += inp.len();
        let d = max_abs_diff(got, &want);
        assert!(d < 1e-4, "input {i}: hidden states differ by {d}");
    }
    let embs = m.embed_tokens(&inputs, None, &pool).unwrap();
    for (i, e) in embs.iter().enumerate() {
        let d = max_abs_diff(e, &floats(&g["embeddings"][i]));
        assert!(d < 1e-5, "input {i}: embedding differs by {d}");
    }
}

#[test]
fn dequantisation_matches_gguf_py() {
    let g = goldens();
    for (name, b) in g["quant_blocks"].as_object().unwrap() {
        let ty = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ]
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap();
        let hex = b["hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let want = floats(&b["values"]);
        let mut got = vec![0f32; want.len()];
        dequantize_row(ty, &bytes, &mut got);
        for (i, (a, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{name} element {i}: {a} vs {w}"
            );
        }
    }
}

#[test]
fn skills_load_tiny_models_with_their_chat_templates() {
    let registry = Registry::builtin();
    let ctx = hfms_engine::skills::LoadContext::cpu(ComputePool::new(1).unwrap(), "tiny");
    let g = goldens();
    for (format, path) in [
        (Format::Safetensors, dir().join("qwen2-bf16")),
        (Format::Gguf, dir().join("qwen2-q8_0.gguf")),
    ] {
        let source = ModelSource { format, path };
        let skill = registry.for_source(&source).unwrap();
        assert_eq!(skill.info().name, "llama");
        let hfms_engine::skills::LoadedModel::Generation(gm) = skill.load(&source, &ctx).unwrap() else {
            panic!("not a generation model");
        };
        let msgs = [TemplateMessage {
            role: "user".into(),
            content: "Hello, world! How are you?".into(),
            ..Default::default()
        }];
        let prompt = gm.template.as_ref().unwrap().render(&msgs, true).unwrap();
        assert_eq!(prompt, g["prompt"].as_str().unwrap());
        let tok = gm.generator.tokenizer();
        assert_eq!(tok.encode(&prompt, false).unwrap(), ids(&g["prompt_ids"]));
        assert!(tok.eos().contains(&(g["eos"].as_u64().unwrap() as u32)));
        assert_eq!(gm.context_length, 256);
    }
    let enc = ModelSource {
        format: Format::Safetensors,
        path: dir().join("xlm-roberta-f32"),
    };
    assert_eq!(registry.for_source(&enc).unwrap().info().name, "bert");
}

/// A checkpoint whose tensor shapes disagree with its config.json fails to
/// load with an error naming the tensor (it used to load, then fail or read
/// out of bounds in the first request).
#[test]
fn shapes_that_disagree_with_the_config_fail_to_load() {
    let cases: [(&str, &str, i64); 4] = [
        ("xlm-roberta-f32", "intermediate_size", 1),
        ("xlm-roberta-f32", "vocab_size", 1000),
        ("llama-f32", "hidden_size", 4),
        ("llama-f32", "intermediate_size", -2),
    ];
    for (model, key, delta) in cases {
        let src = dir().join(model);
        let tmp = std::env::temp_dir().join(format!("hfms-shapes-{}-{model}-{key}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), tmp.join(e.file_name())).unwrap();
        }
        let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(tmp.join("config.json")).unwrap()).unwrap();
        let v = cfg[key].as_i64().unwrap();
        cfg[key] = Value::from(v + delta);
        let err = if model.starts_with("xlm") {
            BertModel::from_safetensors(&tmp, &cfg).err().map(|e| e.to_string())
        } else {
            LlamaModel::from_safetensors(&tmp, &cfg).err().map(|e| e.to_string())
        };
        let err = err.unwrap_or_else(|| panic!("{model} with {key} {v}+{delta} loaded"));
        assert!(
            err.contains("config says") || err.contains("does not match") || err.contains("multiple of"),
            "{model} {key}: {err}"
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

/// The tiny random-weight decoders beyond the Llama family
/// (`scripts/make-tiny-decoders.py`), loaded as their skills load them:
/// Gemma 3 as transformers saves it (`(1 + w)` norms, Gemma's names, a query
/// scalar unlike the head size, per-layer-type rotary bases, a window shorter
/// than the prompt) and GPT-2 (Conv1D weights, learned positions, LayerNorm,
/// biases): last-position logits within 1e-3 and 8 greedy tokens equal.
#[test]
fn tiny_decoders_beyond_llama_match_transformers() {
    let g: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("decoder_goldens.json")).unwrap()).unwrap();
    let registry = Registry::builtin();
    let ctx = hfms_engine::skills::LoadContext::cpu(ComputePool::new(2).unwrap(), "tiny");
    for (name, skill_name) in [
        ("gemma3-f32", "gemma3"),
        ("gpt2-f32", "gpt2"),
        // The same GPT-2 as llama.cpp's converter writes it.
        ("gpt2-f32.gguf", "gpt2"),
        ("gemma2-f32", "gemma2"),
        ("phi3-f32", "phi3"),
        ("phi3-f32.gguf", "phi3"),
        ("mixtral-f32", "moe"),
        // llama.cpp's layout: `llama` with stacked experts.
        ("mixtral-f32.gguf", "moe"),
        ("qwen2moe-f32", "moe"),
        ("qwen3moe-f32", "moe"),
    ] {
        let format = if name.ends_with(".gguf") {
            Format::Gguf
        } else {
            Format::Safetensors
        };
        let source = ModelSource {
            format,
            path: dir().join(name),
        };
        let name = name.trim_end_matches(".gguf");
        let skill = registry.for_source(&source).unwrap();
        assert_eq!(skill.info().name, skill_name);
        skill.check(&source).unwrap();
        let hfms_engine::skills::LoadedModel::Generation(gm) = skill.load(&source, &ctx).unwrap() else {
            panic!("not a generation model");
        };
        let m = gm.generator.model();
        let c = m.config();
        match name {
            "gemma3-f32" => {
                assert_eq!(c.window(0), Some(8));
                assert_eq!(c.window(2), None);
            }
            "gemma2-f32" => {
                assert_eq!((c.window(0), c.window(1)), (Some(8), None));
                assert_eq!((c.attn_softcap, c.final_softcap), (Some(0.5), Some(5.0)));
            }
            // LongRoPE: the pretraining length, half of each head rotated.
            "phi3-f32" => assert_eq!((c.context_length, c.rope_dims, c.window(1)), (128, 8, Some(8))),
            "qwen3moe-f32" => {
                let moe = c.moe.as_ref().unwrap();
                assert_eq!((moe.experts, moe.top_k, moe.renormalize), (4, 2, false));
                assert!(moe.is_sparse(0) && !moe.is_sparse(1));
            }
            "mixtral-f32" => assert!(c.moe.as_ref().unwrap().renormalize),
            "qwen2moe-f32" => assert_eq!(c.moe.as_ref().unwrap().shared_expert_ffn, Some(56)),
            _ => {}
        }
        let (logits, greedy) = run(m.as_ref(), &ids(&g["prompt_ids"]));
        let want = floats(&g[name]["last_logits"]);
        let d = max_abs_diff(&logits, &want);
        assert!(d < 1e-3, "{name}: last-position logits differ by {d}");
        assert_eq!(greedy, ids(&g[name]["greedy"]), "{name}: greedy tokens");
    }
}
