//! `/v1/rerank`, TEI's `/rerank` and `/v1/classify` on a real server with the
//! tiny sequence classifiers of `tests/fixtures/tiny`: scores against
//! transformers' logits (`classifier_goldens.json`), and hostile requests.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::{Server, error_of};
use serde_json::{Value, json};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny")
}

fn goldens() -> Value {
    serde_json::from_str(&std::fs::read_to_string(tiny().join("classifier_goldens.json")).unwrap()).unwrap()
}

/// The most inputs a request may hold on this server.
const MAX_INPUTS: usize = 8;

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let reranker = format!("reranker={}", tiny().join("bert-reranker-f32").display());
        let classifier = format!("classifier={}", tiny().join("xlm-roberta-classifier-f32").display());
        Server::start(&[
            "--model",
            &reranker,
            "--model",
            &classifier,
            "--max-embedding-inputs",
            &MAX_INPUTS.to_string(),
        ])
    })
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

/// The golden pairs: (document, logit, token count).
fn pairs() -> Vec<(String, f64, usize)> {
    goldens()["bert-reranker-f32"]["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["document"].as_str().unwrap().to_string(),
                f(&p["logits"][0]),
                p["ids"].as_array().unwrap().len(),
            )
        })
        .collect()
}

fn query() -> String {
    goldens()["bert-reranker-f32"]["pairs"][0]["query"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn rerank_orders_documents_by_the_cross_encoders_score() {
    let s = server();
    let pairs = pairs();
    let docs: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
    let (code, v) = s.post_json(
        "/v1/rerank",
        json!({"model": "reranker", "query": query(), "documents": docs}),
    );
    assert_eq!(code, 200, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("rerank-"), "{v}");
    assert_eq!(v["model"], "reranker");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), pairs.len());
    let tokens: usize = pairs.iter().map(|p| p.2).sum();
    assert_eq!(v["usage"]["total_tokens"], tokens, "the long pair counts as truncated");
    let mut last = f64::INFINITY;
    let mut seen = Vec::new();
    for r in results {
        let i = r["index"].as_u64().unwrap() as usize;
        let want = sigmoid(pairs[i].1);
        let got = f(&r["relevance_score"]);
        assert!((got - want).abs() < 1e-3, "document {i}: {got} vs transformers' {want}");
        assert!(got <= last, "not best first: {v}");
        last = got;
        assert_eq!(r["document"]["text"], pairs[i].0);
        seen.push(i);
    }
    seen.sort();
    assert_eq!(seen, (0..pairs.len()).collect::<Vec<_>>());

    // top_n, text objects, and no documents echoed.
    let objects: Vec<Value> = docs.iter().map(|d| json!({"text": d})).collect();
    let (code, top) = s.post_json(
        "/v1/rerank",
        json!({"model": "reranker", "query": query(), "documents": objects, "top_n": 2, "return_documents": false}),
    );
    assert_eq!(code, 200, "{top}");
    let top = top["results"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[0]["index"], results[0]["index"]);
    assert_eq!(top[1]["index"], results[1]["index"]);
    assert!(top[0].get("document").is_none(), "{top:?}");
    // 0 and more than there are: all of them.
    for n in [0u64, 1 << 60] {
        let (code, all) = s.post_json(
            "/v1/rerank",
            json!({"model": "reranker", "query": query(), "documents": docs, "top_n": n}),
        );
        assert_eq!(code, 200, "{all}");
        assert_eq!(all["results"].as_array().unwrap().len(), pairs.len());
    }
}

#[test]
fn tei_rerank_answers_in_teis_shape() {
    let s = server();
    let pairs = pairs();
    let texts: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
    let (code, v) = s.post_json(
        "/rerank",
        json!({"model": "reranker", "query": query(), "texts": texts, "raw_scores": true, "return_text": true}),
    );
    assert_eq!(code, 200, "{v}");
    let ranks = v.as_array().unwrap();
    assert_eq!(ranks.len(), pairs.len());
    for r in ranks {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!((f(&r["score"]) - pairs[i].1).abs() < 1e-3, "raw score of {i}: {r}");
        assert_eq!(r["text"], pairs[i].0);
    }
    let (code, v) = s.post_json(
        "/rerank",
        json!({"model": "reranker", "query": query(), "texts": texts}),
    );
    assert_eq!(code, 200, "{v}");
    let first = &v[0];
    assert!(first.get("text").is_none(), "{first}");
    let i = first["index"].as_u64().unwrap() as usize;
    assert!((f(&first["score"]) - sigmoid(pairs[i].1)).abs() < 1e-3);
    // Two classifiers here: a request that names none cannot be answered.
    let (code, e) = s.post_json("/rerank", json!({"query": "q", "texts": ["a"]}));
    assert_eq!(code, 400, "{e}");
    assert!(error_of(&e).0.contains("name the `model`"), "{e}");
}

#[test]
fn classify_gives_labels_and_probabilities() {
    let s = server();
    let g = &goldens()["xlm-roberta-classifier-f32"]["texts"];
    let texts: Vec<(String, Vec<f64>)> = g
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| !t["text"].as_str().unwrap().is_empty())
        .map(|t| {
            (
                t["text"].as_str().unwrap().to_string(),
                t["logits"].as_array().unwrap().iter().map(f).collect(),
            )
        })
        .collect();
    let input: Vec<&str> = texts.iter().map(|t| t.0.as_str()).collect();
    let (code, v) = s.post_json("/v1/classify", json!({"model": "classifier", "input": input}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert!(v["id"].as_str().unwrap().starts_with("classify-"));
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let labels = ["negative", "neutral", "positive"];
    for (i, (d, (_, logits))) in v["data"].as_array().unwrap().iter().zip(&texts).enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["num_classes"], 3);
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        let mut best = 0;
        for (k, l) in logits.iter().enumerate() {
            let want = (l - max).exp() / sum;
            assert!((f(&d["probs"][k]) - want).abs() < 1e-3, "input {i} label {k}: {d}");
            if *l > logits[best] {
                best = k;
            }
        }
        assert_eq!(d["label"], labels[best]);
    }
    // A one-label model classifies too: its probability is the sigmoid.
    let (code, v) = s.post_json("/v1/classify", json!({"model": "reranker", "input": "capital"}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["data"][0]["label"].as_str(), v["data"][0]["num_classes"].as_u64()),
        (Some("LABEL_0"), Some(1))
    );
}

#[test]
fn models_are_used_for_their_task_only() {
    let s = server();
    let (code, e) = s.post_json(
        "/v1/rerank",
        json!({"model": "classifier", "query": "q", "documents": ["a"]}),
    );
    assert_eq!((code, error_of(&e).3), (400, Some("model_not_supported")), "{e}");
    assert!(error_of(&e).0.contains("3 labels"), "{e}");
    let (code, e) = s.post_json("/v1/embeddings", json!({"model": "reranker", "input": "a"}));
    assert_eq!((code, error_of(&e).3), (400, Some("model_not_supported")), "{e}");
    assert!(error_of(&e).0.contains("/v1/classify"), "{e}");
    for (path, body) in [
        ("/v1/classify", json!({"model": "all-minilm", "input": "a"})),
        (
            "/v1/rerank",
            json!({"model": "smollm2", "query": "q", "documents": ["a"]}),
        ),
        ("/rerank", json!({"model": "all-minilm", "query": "q", "texts": ["a"]})),
    ] {
        let (code, e) = s.post_json(path, body);
        assert_eq!(
            (code, error_of(&e).3),
            (400, Some("model_not_supported")),
            "{path}: {e}"
        );
    }
    let (code, e) = s.post_json("/v1/rerank", json!({"model": "nope", "query": "q", "documents": ["a"]}));
    assert_eq!(code, 404, "{e}");
    let (code, v) = s.get_json("/v1/models");
    assert_eq!(code, 200);
    assert!(
        v["data"].as_array().unwrap().iter().any(|m| m["id"] == "reranker"),
        "{v}"
    );
}

#[test]
fn hostile_requests_get_400s_that_name_the_field() {
    let s = server();
    let many: Vec<String> = (0..=MAX_INPUTS).map(|i| format!("doc {i}")).collect();
    let huge = "capital ".repeat(200_000);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": []}),
            "documents",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": "a"}),
            "documents",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": ["a", 7]}),
            "documents[1]",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": [""]}),
            "documents[0]",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": [{"txt": "a"}]}),
            "documents[0]",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": [null]}),
            "documents[0]",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "", "documents": ["a"]}),
            "query",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": 5, "documents": ["a"]}),
            "query",
        ),
        ("/v1/rerank", json!({"model": "reranker", "documents": ["a"]}), "query"),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": ["a"], "top_n": -1}),
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": ["a"], "top_n": 1.5}),
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": ["a"], "top_n": "2"}),
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": ["a"], "top_n": 1e300}),
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": ["a"], "return_documents": "yes"}),
            "return_documents",
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "q", "documents": many}),
            "documents",
        ),
        (
            "/rerank",
            json!({"model": "reranker", "query": "q", "texts": many}),
            "texts",
        ),
        // A query longer than the model: refused once, not paired with
        // every document.
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": huge, "documents": ["a", "b"]}),
            "query",
        ),
        (
            "/rerank",
            json!({"model": "reranker", "query": huge, "texts": ["a"]}),
            "query",
        ),
        (
            "/v1/rerank",
            json!({"model": 3, "query": "q", "documents": ["a"]}),
            "model",
        ),
        (
            "/rerank",
            json!({"model": "reranker", "query": "q", "texts": []}),
            "texts",
        ),
        (
            "/rerank",
            json!({"model": "reranker", "query": "q", "texts": ["a", ""]}),
            "texts[1]",
        ),
        (
            "/rerank",
            json!({"model": "reranker", "query": "q", "texts": [1]}),
            "texts[0]",
        ),
        (
            "/rerank",
            json!({"model": "reranker", "query": "q", "texts": ["a"], "raw_scores": 1}),
            "raw_scores",
        ),
        ("/v1/classify", json!({"model": "classifier", "input": []}), "input"),
        (
            "/v1/classify",
            json!({"model": "classifier", "input": [""]}),
            "input[0]",
        ),
        (
            "/v1/classify",
            json!({"model": "classifier", "input": {"a": 1}}),
            "input",
        ),
        ("/v1/classify", json!({"model": "classifier", "input": many}), "input"),
        (
            "/v1/classify",
            json!({"model": "classifier", "input": [[1, -2]]}),
            "input[0]",
        ),
        (
            "/v1/classify",
            json!({"model": "classifier", "input": [[1_000_000]]}),
            "input",
        ),
        ("/v1/classify", json!({"model": "classifier"}), "input"),
    ];
    for (path, body, param) in cases {
        let (code, e) = s.post_json(path, body.clone());
        assert_eq!(code, 400, "{path} {body}: {e}");
        assert_eq!(error_of(&e).2, Some(param), "{path} {body}: {e}");
    }
    // A document far past the model's length is truncated, not refused; so
    // is a text to classify.
    let (code, v) = s.post_json(
        "/v1/rerank",
        json!({"model": "reranker", "query": "capital", "documents": [huge, huge]}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["usage"]["total_tokens"], 128, "two pairs of the model's 64 tokens");
    let (code, v) = s.post_json("/v1/classify", json!({"model": "classifier", "input": huge}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 128);
    // NaN is not JSON.
    let resp = common::client()
        .post(s.url("/v1/rerank"))
        .header("content-type", "application/json")
        .body(r#"{"model": "reranker", "query": "q", "documents": ["a"], "top_n": NaN}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}
