//! Sequence classifiers (cross-encoder rerankers among them) on the tiny
//! random-weight models of `tests/fixtures/tiny`, against transformers'
//! tokenization and logits (`classifier_goldens.json`, made by
//! `scripts/make-tiny-classifiers.py`).

mod common;

use std::path::PathBuf;

use hfms_engine::compute::ComputePool;
use hfms_engine::embed::{EmbedInput, EmbeddingModel};
use hfms_engine::skills::{Format, LoadContext, LoadedModel, ModelSource, Registry, Task};
use serde_json::Value;

fn dir() -> PathBuf {
    common::workspace().join("tests/fixtures/tiny")
}

fn goldens() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("classifier_goldens.json")).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn load(name: &str) -> (std::sync::Arc<EmbeddingModel>, LoadedModel) {
    let registry = Registry::builtin();
    let source = ModelSource {
        format: Format::Safetensors,
        path: dir().join(name),
    };
    let skill = registry.for_source(&source).unwrap();
    assert_eq!(skill.info().name, "bert_classifier");
    assert_eq!(skill.info().task, Task::Classify);
    skill.check(&source).unwrap();
    let loaded = skill
        .load(&source, &LoadContext::cpu(ComputePool::new(2).unwrap(), name))
        .unwrap();
    assert_eq!(loaded.task(), Task::Classify);
    let LoadedModel::Embedding(b) = &loaded else {
        panic!("not an encoder")
    };
    (b.model().clone(), loaded)
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let d = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d < 1e-4, "{what}: logits differ by {d}: {got:?} vs {want:?}");
}

/// Token ids, token types (where the model has them) and logits of single
/// texts and (query, document) pairs equal transformers' — the longest pair
/// truncated to the model's length as `truncation=True` does.
#[test]
fn classifiers_match_transformers() {
    let g = goldens();
    let pool = ComputePool::new(2).unwrap();
    for (name, labels) in [
        ("bert-reranker-f32", vec!["LABEL_0"]),
        ("xlm-roberta-classifier-f32", vec!["negative", "neutral", "positive"]),
    ] {
        let (m, _loaded) = load(name);
        assert_eq!(m.head.as_ref().unwrap().labels, labels, "{name}");
        let gm = &g[name];
        let mut inputs = Vec::new();
        let mut want = Vec::new();
        for t in gm["texts"].as_array().unwrap() {
            inputs.push(EmbedInput::Text(t["text"].as_str().unwrap().into()));
            want.push(t);
        }
        for p in gm["pairs"].as_array().unwrap() {
            inputs.push(EmbedInput::Pair(
                p["query"].as_str().unwrap().into(),
                p["document"].as_str().unwrap().into(),
            ));
            want.push(p);
        }
        let tokens = m.tokenize(&inputs).unwrap();
        for (t, w) in tokens.iter().zip(&want) {
            assert_eq!(t.ids, u32s(&w["ids"]), "{name}: ids of {w}");
            if let Some(types) = w.get("token_type_ids").filter(|v| !v.is_null()) {
                let types = u32s(types);
                let from_ours: Vec<u32> = (0..t.len()).map(|p| t.token_type(p) as u32).collect();
                assert_eq!(from_ours, types, "{name}: token types of {w}");
            }
        }
        // All inputs in one flattened batch, and each alone: the same logits.
        let logits = m.embed_tokens(&tokens, None, &pool).unwrap();
        for (i, (l, w)) in logits.iter().zip(&want).enumerate() {
            let want: Vec<f32> = w["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            close(l, &want, &format!("{name} input {i} (batched)"));
            let alone = m.embed_tokens(std::slice::from_ref(&tokens[i]), None, &pool).unwrap();
            close(&alone[0], &want, &format!("{name} input {i} (alone)"));
        }
        let longest = tokens.iter().map(|t| t.len()).max().unwrap();
        assert_eq!(
            longest, m.max_tokens,
            "{name}: the long pair is cut to the model's length"
        );
        assert!(
            m.check_dimensions(Some(1)).is_err(),
            "dimensions is not for classifiers"
        );
        assert!(m.check_query("what is the capital of france").is_ok());
        let long = "capital ".repeat(m.max_tokens);
        assert!(
            m.check_query(&long).is_err(),
            "a query the model cannot take with a document"
        );
    }
}

/// An encoder folder without a classification head stays an embedding
/// model; a classifier whose head is missing is refused with a reason.
#[test]
fn heads_decide_the_task() {
    let registry = Registry::builtin();
    let plain = ModelSource {
        format: Format::Safetensors,
        path: dir().join("xlm-roberta-f32"),
    };
    assert_eq!(registry.for_source(&plain).unwrap().info().task, Task::Embed);

    // The reranker's config on the plain encoder's weights: no head there.
    let tmp = std::env::temp_dir().join(format!("hfms-headless-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(dir().join("xlm-roberta-f32").join(f), tmp.join(f)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("xlm-roberta-f32/config.json")).unwrap()).unwrap();
    cfg["architectures"] = serde_json::json!(["XLMRobertaForSequenceClassification"]);
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let source = ModelSource {
        format: Format::Safetensors,
        path: tmp.clone(),
    };
    let skill = registry.for_source(&source).unwrap();
    assert_eq!(skill.info().task, Task::Classify);
    let e = skill
        .load(&source, &LoadContext::cpu(ComputePool::new(1).unwrap(), "headless"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("without a classification head"), "{e}");

    // A classifier of an architecture no classifying skill serves.
    cfg["model_type"] = serde_json::json!("llama");
    cfg["architectures"] = serde_json::json!(["LlamaForSequenceClassification"]);
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let e = registry.for_source(&source).err().unwrap().to_string();
    assert!(e.contains("llama sequence classifier"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
