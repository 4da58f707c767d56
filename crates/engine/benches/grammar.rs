//! What constrained decoding costs a sequence per token: the allowed-token
//! mask llguidance computes at each step, and feeding it the sampled token,
//! on the real vocabularies of SmolLM2 (49k tokens) and Qwen2.5 (151k).
//!
//!     cargo bench -p hfms-engine --bench grammar
//!
//! Each iteration walks one JSON document, token by token as the model's
//! tokenizer splits it, through a freshly cloned grammar; the time per
//! iteration divided by the document's tokens is the cost per step.
//! `vocab_build/*` is the one-time cost of a model's first constrained
//! request (the token trie). Qwen's file comes from `make models-extra`.

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hfms_engine::formats::gguf::GgufFile;
use hfms_engine::generate::grammar::{GrammarSpec, GrammarVocab};
use hfms_engine::tokenizer::Tokenizer;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vocabularies() -> Vec<(&'static str, Arc<Tokenizer>, usize)> {
    let files = [
        (
            "smollm2-49k",
            "models/HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        (
            "qwen2.5-151k",
            "models-extra/Qwen/Qwen2.5-Coder-0.5B-Instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
    ];
    files
        .into_iter()
        .filter_map(|(name, rel)| {
            let path = workspace().join(rel);
            if !path.exists() {
                eprintln!("{} is missing: skipping {name}", path.display());
                return None;
            }
            let g = GgufFile::open(&path).unwrap();
            let tok = Tokenizer::from_gguf(&g).unwrap();
            let eos = g.get_u64("tokenizer.ggml.eos_token_id").unwrap() as u32;
            let n = tok.vocab_size();
            Some((name, Arc::new(tok.with_specials(None, vec![eos], false)), n))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "email": {"type": "string", "format": "email"},
            "tags": {"type": "array", "items": {"enum": ["admin", "user", "guest"]}, "maxItems": 3},
            "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                        "required": ["city", "zip"], "additionalProperties": false}
        },
        "required": ["name", "age", "email", "tags", "address"],
        "additionalProperties": false
    });
    let doc = r#"{"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["admin", "user"], "address": {"city": "London", "zip": "12345"}}"#;
    for (name, tok, n_logits) in vocabularies() {
        let mut g = c.benchmark_group("vocab_build");
        g.sample_size(10);
        g.bench_function(name, |b| b.iter(|| GrammarVocab::new(tok.clone(), n_logits).unwrap()));
        g.finish();

        let vocab = Arc::new(GrammarVocab::new(tok.clone(), n_logits).unwrap());
        let ids = tok.encode(doc, false).unwrap();
        for (label, spec) in [
            ("json_schema", GrammarSpec::JsonSchema(schema.clone())),
            ("json_object", GrammarSpec::JsonObject),
        ] {
            let grammar = vocab.compile(&spec, "bench").unwrap();
            let mut g = c.benchmark_group(format!("mask_per_document/{label}"));
            g.throughput(Throughput::Elements(ids.len() as u64));
            g.bench_function(BenchmarkId::new(name, format!("{} tokens", ids.len())), |b| {
                b.iter(|| {
                    let mut gr = grammar.clone();
                    for &id in &ids {
                        let allowed = gr.allowed().unwrap();
                        assert!(allowed.allows(id, false));
                        assert!(gr.accept(id, false));
                    }
                })
            });
            g.finish();
        }
        let mut g = c.benchmark_group("compile");
        g.bench_function(name, |b| {
            b.iter(|| {
                vocab
                    .compile(&GrammarSpec::JsonSchema(schema.clone()), "bench")
                    .unwrap()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
