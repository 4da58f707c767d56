//! Real encoders beyond the defaults (`make models-extra`) against their
//! committed references: token ids equal, embeddings within cosine 0.9999,
//! every input in one flattened batch.
//!
//! - all-mpnet-base-v2 (safetensors) against sentence-transformers
//!   (`tests/reference/mpnet_st.json`, `scripts/make-mpnet-reference.py`);
//! - nomic-embed-text-v1.5 (GGUF F16, nomic-bert) against transformers'
//!   NomicBertModel on the same weights with bert-base-uncased's tokenizer
//!   (`tests/reference/nomic_hf.json`, `scripts/make-nomic-reference.py`),
//!   one input cut at its 2048 positions, and `dimensions` by the model
//!   card's Matryoshka recipe.

mod common;

use common::cosine;

use hfms_engine::compute::ComputePool;
use hfms_engine::embed::{EmbedInput, EmbeddingModel};
use hfms_engine::skills::{Format, LoadContext, LoadedModel, ModelSource, Registry};

/// Load `path` (under models-extra/) with the skill it should get.
fn load(format: Format, path: &str, skill: &str) -> hfms_engine::embed::batcher::EmbedBatcher {
    let path = common::workspace().join("models-extra").join(path);
    assert!(path.exists(), "{} is missing: run `make models-extra`", path.display());
    let source = ModelSource { format, path };
    let registry = Registry::builtin();
    let found = registry.for_source(&source).unwrap();
    assert_eq!(found.info().name, skill);
    found.check(&source).unwrap();
    match found
        .load(&source, &LoadContext::cpu(ComputePool::new(2).unwrap(), skill))
        .unwrap()
    {
        LoadedModel::Embedding(b) => b,
        _ => panic!("not an embedding model"),
    }
}

/// Tokenize and embed the reference's inputs; the worst cosine.
fn worst_cosine(m: &EmbeddingModel, reference: &str) -> f64 {
    let r = common::reference(reference);
    let inputs: Vec<EmbedInput> = r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| EmbedInput::Text(s.as_str().unwrap().to_string()))
        .collect();
    let ids = m.tokenize(&inputs).unwrap();
    for (i, got) in ids.iter().enumerate() {
        let want: Vec<u32> = r["token_ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got.ids, want, "token ids of input {i}");
    }
    let embs = m.embed_tokens(&ids, None, &ComputePool::new(2).unwrap()).unwrap();
    let mut worst = 1.0f64;
    for (i, e) in embs.iter().enumerate() {
        let want: Vec<f64> = r["embeddings"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let c = cosine(e, &want);
        worst = worst.min(c);
        assert!(c >= 0.9999, "input {i}: cosine {c}");
    }
    eprintln!("{reference}: worst cosine {worst}");
    worst
}

#[test]
fn mpnet_matches_sentence_transformers() {
    let b = load(Format::Safetensors, "sentence-transformers/all-mpnet-base-v2", "mpnet");
    let m = b.model();
    assert_eq!((m.max_tokens, m.normalize), (384, true));
    worst_cosine(m, "mpnet_st.json");
}

#[test]
fn nomic_bert_gguf_matches_transformers() {
    let b = load(
        Format::Gguf,
        "nomic-ai/nomic-embed-text-v1.5/nomic-embed-text-v1.5.f16.gguf",
        "nomic_bert",
    );
    let m = b.model();
    assert_eq!((m.max_tokens, m.normalize, m.dimensions()), (2048, true, 768));
    worst_cosine(m, "nomic_hf.json");
    // Matryoshka: the model card's recipe for fewer dimensions.
    let r = common::reference("nomic_hf.json");
    let d = r["dimensions"].as_u64().unwrap() as usize;
    let shortened = r["shortened"].as_array().unwrap();
    let inputs: Vec<EmbedInput> = (0..shortened.len())
        .map(|i| EmbedInput::Text(r["sentences"][i].as_str().unwrap().to_string()))
        .collect();
    let ids = m.tokenize(&inputs).unwrap();
    let embs = m.embed_tokens(&ids, Some(d), &ComputePool::new(2).unwrap()).unwrap();
    for (i, (e, want)) in embs.iter().zip(shortened).enumerate() {
        let want: Vec<f64> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(e.len(), d);
        let c = cosine(e, &want);
        assert!(c >= 0.9999, "input {i} at {d} dimensions: cosine {c}");
    }
}
