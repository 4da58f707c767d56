//! Sequence classifiers: `POST /v1/classify` (vLLM's shape), `POST
//! /v1/rerank` (the Jina/Cohere shape that vLLM and llama-server accept) and
//! TEI's `POST /rerank`. All three run a `*ForSequenceClassification` model
//! through its embedding batcher; a reranker is a one-label cross-encoder
//! fed (query, document) pairs.
//!
//! Scores are as sentence-transformers' CrossEncoder and vLLM give them: a
//! one-label model's logit through a sigmoid, several labels' through a
//! softmax.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hfms_engine::embed::EmbedInput;
use hfms_engine::skills::{LoadedModel, Task};
use serde_json::Value;

use super::chat::json_kind;
use super::types::*;
use super::{acquire, now_unix, off_async, params};
use crate::error::{ApiError, ApiResult, PostErrors};
use crate::extract::ApiJson;
use crate::state::AppState;

/// What a classifier gave for a request's inputs, in order.
struct Scored {
    model_id: String,
    labels: Vec<String>,
    logits: Vec<Vec<f32>>,
    tokens: usize,
}

/// The request's inputs: texts, or documents to pair with a query.
enum Inputs {
    Texts(Vec<EmbedInput>),
    Pairs { query: String, documents: Vec<String> },
}

impl Inputs {
    fn len(&self) -> usize {
        match self {
            Inputs::Texts(t) => t.len(),
            Inputs::Pairs { documents, .. } => documents.len(),
        }
    }
}

/// Run `inputs` through the classifier `model` (loading it if need be);
/// `param` names the inputs' field in errors.
async fn run(
    state: &AppState,
    model: &str,
    keep_alive: Option<&Value>,
    inputs: Inputs,
    param: &str,
) -> ApiResult<Scored> {
    let limits = state.limits().clone();
    if inputs.len() > limits.max_embedding_inputs {
        return Err(params::over_limit(
            param,
            format!(
                "at most {} inputs per request, got {}",
                limits.max_embedding_inputs,
                inputs.len()
            ),
            "max-embedding-inputs",
        ));
    }
    let lease = acquire(state, model, Task::Classify, keep_alive).await?;
    let model_id = lease.id.clone();
    let LoadedModel::Embedding(batcher) = &*lease.model else {
        return Err(ApiError::internal("model task mismatch"));
    };
    let batcher = batcher.clone();
    let Some(head) = batcher.model().head.as_ref() else {
        return Err(ApiError::internal("model task mismatch"));
    };
    let labels = head.labels.clone();
    // Tokenize on the blocking pool, then join the model's dynamic batch.
    let em = batcher.model().clone();
    let ids = off_async(move || {
        let inputs = match inputs {
            Inputs::Texts(t) => t,
            Inputs::Pairs { query, documents } => {
                em.check_query(&query)?;
                let query: std::sync::Arc<str> = query.into();
                documents
                    .into_iter()
                    .map(|d| EmbedInput::Pair(query.clone(), d))
                    .collect()
            }
        };
        Ok(em.tokenize(&inputs)?)
    })
    .await?;
    let tokens: usize = ids.iter().map(|v| v.len()).sum();
    if tokens > limits.max_embedding_tokens {
        return Err(params::over_limit(
            param,
            format!(
                "the inputs hold {tokens} tokens after truncation to the model's length; at most {} are accepted per request",
                limits.max_embedding_tokens
            ),
            "max-embedding-tokens",
        ));
    }
    crate::auth::admit_tokens(tokens).await?;
    let rx = batcher.submit(ids, None)?;
    let logits = state
        .bounded(async move {
            match rx.await {
                Ok(r) => Ok(r?),
                Err(_) => Err(ApiError::internal("the batcher dropped the request")),
            }
        })
        .await?;
    drop(lease);
    Ok(Scored {
        model_id,
        labels,
        logits,
        tokens,
    })
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Probabilities from logits: sigmoid for one label, softmax for several.
fn probabilities(logits: &[f32]) -> Vec<f32> {
    if let [x] = logits {
        return vec![sigmoid(*x)];
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// A reranker has one label; a several-label classifier does not rank.
fn one_label(s: &Scored) -> ApiResult<()> {
    match s.labels.len() {
        1 => Ok(()),
        n => Err(ApiError::invalid(
            Some("model".to_string()),
            format!(
                "The model `{}` classifies into {n} labels; reranking needs a cross-encoder with one (use /v1/classify).",
                s.model_id
            ),
        )
        .with_code("model_not_supported")),
    }
}

fn nonempty_text(v: &str, param: &str) -> ApiResult<()> {
    if v.is_empty() {
        return Err(ApiError::invalid(
            Some(param.to_string()),
            format!("{param} must not be empty."),
        ));
    }
    Ok(())
}

/// `documents`: strings, or objects with a `text` (Jina, Cohere v2).
fn documents(v: &Value) -> ApiResult<Vec<String>> {
    let Value::Array(items) = v else {
        return Err(ApiError::invalid(
            Some("documents".into()),
            format!("documents must be a list of strings, got {}.", json_kind(v)),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            Some("documents".into()),
            "documents must not be empty.",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let param = format!("documents[{i}]");
            let text = match d {
                Value::String(s) => s.clone(),
                Value::Object(o) => match o.get("text") {
                    Some(Value::String(s)) => s.clone(),
                    _ => {
                        return Err(ApiError::invalid(
                            Some(param),
                            "a document object must have a string `text`.",
                        ));
                    }
                },
                other => {
                    return Err(ApiError::invalid(
                        Some(param),
                        format!(
                            "a document must be a string or {{\"text\": ...}}, got {}.",
                            json_kind(other)
                        ),
                    ));
                }
            };
            nonempty_text(&text, &param)?;
            Ok(text)
        })
        .collect()
}

/// Indices of `scores`, best first; ties keep the documents' order.
fn ranked(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// Score (query, document) pairs with a one-label cross-encoder; `param`
/// names the documents' field.
async fn rank(
    state: &AppState,
    model: &str,
    keep_alive: Option<&Value>,
    query: String,
    docs: &[String],
    param: &str,
) -> ApiResult<(Scored, Vec<f32>)> {
    nonempty_text(&query, "query")?;
    let pairs = Inputs::Pairs {
        query,
        documents: docs.to_vec(),
    };
    let scored = run(state, model, keep_alive, pairs, param).await?;
    one_label(&scored)?;
    let raw = scored
        .logits
        .iter()
        .map(|l| l.first().copied().unwrap_or(0.0))
        .collect();
    Ok((scored, raw))
}

/// Rerank documents by relevance to a query (Jina/Cohere/vLLM shape).
#[utoipa::path(post, path = "/v1/rerank", tag = "OpenAI",
    request_body = RerankRequest,
    responses((status = 200, description = "Documents by relevance, best first", body = RerankResponse), PostErrors))]
pub async fn rerank(State(state): State<AppState>, ApiJson(req, _raw): ApiJson<RerankRequest>) -> ApiResult<Response> {
    let docs = documents(&req.documents)?;
    let top_n = match req.top_n {
        None | Some(0) => docs.len(),
        Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX).min(docs.len()),
        Some(n) => {
            return Err(ApiError::invalid(
                Some("top_n".into()),
                format!("top_n must be at least 1 (or 0 for all), got {n}."),
            ));
        }
    };
    let (scored, raw) = rank(
        &state,
        &req.model,
        req.keep_alive.as_ref(),
        req.query,
        &docs,
        "documents",
    )
    .await?;
    let with_text = req.return_documents.unwrap_or(true);
    let results = ranked(&raw)
        .into_iter()
        .take(top_n)
        .map(|i| RerankResult {
            index: i,
            relevance_score: sigmoid(raw[i]),
            document: with_text.then(|| RerankDocument { text: docs[i].clone() }),
        })
        .collect();
    Ok(Json(RerankResponse {
        id: format!("rerank-{}", uuid::Uuid::new_v4().simple()),
        model: scored.model_id,
        results,
        usage: RerankUsage {
            total_tokens: scored.tokens,
        },
    })
    .into_response())
}

/// TEI's rerank. TEI serves one model, so `model` may be left out where
/// this server has exactly one classifier.
#[utoipa::path(post, path = "/rerank", tag = "OpenAI",
    request_body = TeiRerankRequest,
    responses((status = 200, description = "Texts by relevance, best first", body = Vec<TeiRank>), PostErrors))]
pub async fn tei_rerank(
    State(state): State<AppState>,
    ApiJson(req, _raw): ApiJson<TeiRerankRequest>,
) -> ApiResult<Response> {
    if req.texts.is_empty() {
        return Err(ApiError::invalid(Some("texts".into()), "texts must not be empty."));
    }
    for (i, t) in req.texts.iter().enumerate() {
        nonempty_text(t, &format!("texts[{i}]"))?;
    }
    let model = match req.model {
        Some(m) => m,
        None => only_classifier(&state)?,
    };
    let (_, raw) = rank(&state, &model, req.keep_alive.as_ref(), req.query, &req.texts, "texts").await?;
    let ranks: Vec<TeiRank> = ranked(&raw)
        .into_iter()
        .map(|i| TeiRank {
            index: i,
            score: if req.raw_scores { raw[i] } else { sigmoid(raw[i]) },
            text: req.return_text.then(|| req.texts[i].clone()),
        })
        .collect();
    Ok(Json(ranks).into_response())
}

/// The one servable classifier, for requests that name no model.
fn only_classifier(state: &AppState) -> ApiResult<String> {
    let classifiers: Vec<String> = state
        .manager()
        .catalog()
        .iter()
        .filter(|d| d.task == Some(Task::Classify) && d.error.is_none())
        .map(|d| d.id.clone())
        .collect();
    match classifiers.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ApiError::invalid(
            Some("model".to_string()),
            "this server has no classification model to rerank with.",
        )),
        many => Err(ApiError::invalid(
            Some("model".to_string()),
            format!("name the `model` to rerank with: this server has {}.", many.join(", ")),
        )),
    }
}

/// Classify texts (vLLM's shape).
#[utoipa::path(post, path = "/v1/classify", tag = "OpenAI",
    request_body = ClassifyRequest,
    responses((status = 200, description = "One label and its probabilities per input, in order", body = ClassifyResponse), PostErrors))]
pub async fn classify(
    State(state): State<AppState>,
    ApiJson(req, _raw): ApiJson<ClassifyRequest>,
) -> ApiResult<Response> {
    let limits = state.limits().clone();
    let inputs = super::embeddings::inputs(&req.input, limits.max_embedding_inputs)?;
    let scored = run(
        &state,
        &req.model,
        req.keep_alive.as_ref(),
        Inputs::Texts(inputs),
        "input",
    )
    .await?;
    let data = scored
        .logits
        .iter()
        .enumerate()
        .map(|(index, logits)| {
            let probs = probabilities(logits);
            let best = ranked(&probs).first().copied().unwrap_or(0);
            ClassifyData {
                index,
                label: scored.labels.get(best).cloned().unwrap_or_default(),
                num_classes: probs.len(),
                probs,
            }
        })
        .collect();
    Ok(Json(ClassifyResponse {
        id: format!("classify-{}", uuid::Uuid::new_v4().simple()),
        object: "list",
        created: now_unix(),
        model: scored.model_id,
        data,
        usage: EmbeddingUsage {
            prompt_tokens: scored.tokens,
            total_tokens: scored.tokens,
        },
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_sigmoid_for_one_label_and_softmax_for_more() {
        assert_eq!(probabilities(&[0.0]), vec![0.5]);
        let p = probabilities(&[1.0, 1.0, 1.0, 1.0]);
        assert!(p.iter().all(|x| (x - 0.25).abs() < 1e-6));
        // Large logits do not overflow.
        let p = probabilities(&[1000.0, 0.0]);
        assert!((p[0] - 1.0).abs() < 1e-6 && p[1] >= 0.0);
    }

    #[test]
    fn ranking_is_best_first_and_stable() {
        assert_eq!(ranked(&[0.1, 0.9, 0.5, 0.9]), vec![1, 3, 2, 0]);
    }

    #[test]
    fn documents_take_strings_and_text_objects() {
        let d = documents(&serde_json::json!(["a", {"text": "b"}])).unwrap();
        assert_eq!(d, vec!["a", "b"]);
        for (bad, param) in [
            (serde_json::json!([]), "documents"),
            (serde_json::json!("a"), "documents"),
            (serde_json::json!(["a", 3]), "documents[1]"),
            (serde_json::json!([{"txt": "a"}]), "documents[0]"),
            (serde_json::json!(["a", ""]), "documents[1]"),
            (serde_json::json!([null]), "documents[0]"),
        ] {
            let e = documents(&bad).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}");
        }
    }
}
