//! all-mpnet-base-v2 (safetensors, `make models-extra`) against
//! sentence-transformers (`tests/reference/mpnet_st.json`, made by
//! `scripts/make-mpnet-reference.py`): token ids equal, embeddings within
//! cosine 0.9999, the 24 sentences in one flattened batch.

mod common;

use common::cosine;

use hfms_engine::compute::ComputePool;
use hfms_engine::embed::EmbedInput;
use hfms_engine::skills::{Format, LoadContext, LoadedModel, ModelSource, Registry};

#[test]
fn mpnet_matches_sentence_transformers() {
    let dir = common::workspace().join("models-extra/sentence-transformers/all-mpnet-base-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run `make models-extra`",
        dir.display()
    );
    let source = ModelSource {
        format: Format::Safetensors,
        path: dir,
    };
    let registry = Registry::builtin();
    let skill = registry.for_source(&source).unwrap();
    assert_eq!(skill.info().name, "mpnet");
    let loaded = skill
        .load(&source, &LoadContext::cpu(ComputePool::new(2).unwrap(), "mpnet"))
        .unwrap();
    let LoadedModel::Embedding(b) = loaded else {
        panic!("not an embedding model")
    };
    let m = b.model();
    assert_eq!((m.max_tokens, m.normalize), (384, true));
    let r = common::reference("mpnet_st.json");
    let sentences: Vec<EmbedInput> = r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| EmbedInput::Text(s.as_str().unwrap().to_string()))
        .collect();
    let ids = m.tokenize(&sentences).unwrap();
    for (i, got) in ids.iter().enumerate() {
        let want: Vec<u32> = r["token_ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got.ids, want, "token ids of sentence {i}");
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
        assert!(c >= 0.9999, "sentence {i}: cosine {c}");
    }
    eprintln!("worst cosine {worst}");
}
