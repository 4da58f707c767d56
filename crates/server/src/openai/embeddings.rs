//! `POST /v1/embeddings`

use axum::extract::State;
use axum::response::Response;
use base64::Engine as _;
use hfms_engine::embed::EmbedInput;
use hfms_engine::skills::{LoadedModel, Task};
use serde_json::Value;

use super::chat::json_kind;
use super::params;
use super::types::*;
use super::{acquire, off_async};
use crate::error::{ApiError, ApiResult, PostErrors};
use crate::extract::ApiJson;
use crate::state::AppState;

fn token_ids(v: &[Value], param: &str) -> ApiResult<Vec<u32>> {
    if v.is_empty() {
        return Err(ApiError::invalid(
            Some(param.to_string()),
            "a token list must not be empty.",
        ));
    }
    v.iter()
        .map(|x| {
            x.as_u64()
                .filter(|&t| t <= u32::MAX as u64)
                .map(|t| t as u32)
                .ok_or_else(|| {
                    ApiError::invalid(
                        Some(param.to_string()),
                        format!("token ids must be non-negative integers, got {x}."),
                    )
                })
        })
        .collect()
}

/// The four shapes of `input`: string, list of strings, token ids, lists of
/// token ids.
pub(crate) fn inputs(v: &Value, max: usize) -> ApiResult<Vec<EmbedInput>> {
    let param = Some("input".to_string());
    let out: Vec<EmbedInput> = match v {
        Value::String(s) => vec![EmbedInput::Text(s.clone())],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::invalid(param, "input must not be an empty array."));
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::String(s) => Ok(EmbedInput::Text(s.clone())),
                    other => Err(ApiError::invalid(
                        Some(format!("input[{i}]")),
                        format!("a list of inputs must hold only strings, found {}.", json_kind(other)),
                    )),
                })
                .collect::<ApiResult<_>>()?,
            Value::Number(_) => vec![EmbedInput::Tokens(token_ids(items, "input")?)],
            Value::Array(_) => items
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::Array(ids) => Ok(EmbedInput::Tokens(token_ids(ids, &format!("input[{i}]"))?)),
                    other => Err(ApiError::invalid(
                        Some(format!("input[{i}]")),
                        format!(
                            "a list of token lists must hold only arrays, found {}.",
                            json_kind(other)
                        ),
                    )),
                })
                .collect::<ApiResult<_>>()?,
            other => {
                return Err(ApiError::invalid(
                    param,
                    format!(
                        "input must be a string, a list of strings, or token ids; got a list of {}.",
                        json_kind(other)
                    ),
                ));
            }
        },
        other => {
            return Err(ApiError::invalid(
                param,
                format!(
                    "input must be a string, a list of strings, or token ids; got {}.",
                    json_kind(other)
                ),
            ));
        }
    };
    if out.len() > max {
        return Err(params::over_limit(
            "input",
            format!("at most {max} inputs per request, got {}", out.len()),
            "max-embedding-inputs",
        ));
    }
    for (i, inp) in out.iter().enumerate() {
        if let EmbedInput::Text(s) = inp
            && s.is_empty()
        {
            return Err(ApiError::invalid(
                Some(format!("input[{i}]")),
                "input strings must not be empty.",
            ));
        }
    }
    Ok(out)
}

/// Create embeddings (OpenAI's API).
#[utoipa::path(post, path = "/v1/embeddings", tag = "OpenAI",
    request_body = EmbeddingRequest,
    responses((status = 200, description = "One vector per input, in order", body = EmbeddingResponse), PostErrors))]
pub async fn create(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ApiJson(req, raw): ApiJson<EmbeddingRequest>,
) -> ApiResult<Response> {
    let limits = state.limits().clone();
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("encoding_format".into()),
                format!("encoding_format must be 'float' or 'base64', got '{other}'."),
            ));
        }
    };
    let dimensions = match req.dimensions {
        None => None,
        Some(d) if d >= 1 => Some(usize::try_from(d).unwrap_or(usize::MAX)),
        Some(d) => {
            return Err(ApiError::invalid(
                Some("dimensions".into()),
                format!("dimensions must be at least 1, got {d}."),
            ));
        }
    };
    let inputs = inputs(&req.input, limits.max_embedding_inputs)?;
    // Embeddings are deterministic: answered from the cache when stored.
    let lookup = super::cache_lookup(&state, &headers, "embeddings", &req.model, &raw, true).await?;
    if let crate::cache::Lookup::Hit(bytes) = &lookup {
        return super::replay::json(bytes, "emb");
    }
    let model = acquire(&state, &req.model, Task::Embed, req.keep_alive.as_ref()).await?;
    let model_id = model.id.clone();
    let LoadedModel::Embedding(batcher) = &*model.model else {
        return Err(ApiError::internal("model task mismatch"));
    };
    let batcher = batcher.clone();
    batcher.model().check_dimensions(dimensions)?;
    // Tokenize on the blocking pool, then join the model's dynamic batch.
    let em = batcher.model().clone();
    let ids = off_async(move || Ok(em.tokenize(&inputs)?)).await?;
    let tokens: usize = ids.iter().map(|v| v.len()).sum();
    if tokens > limits.max_embedding_tokens {
        return Err(params::over_limit(
            "input",
            format!(
                "the inputs hold {tokens} tokens after truncation to the model's length; at most {} are accepted per request",
                limits.max_embedding_tokens
            ),
            "max-embedding-tokens",
        ));
    }
    crate::auth::admit_tokens(tokens).await?;
    let rx = batcher.submit(ids, dimensions)?;
    let vectors = state
        .bounded(async move {
            match rx.await {
                Ok(r) => Ok(r?),
                Err(_) => Err(ApiError::internal("the embedding batcher dropped the request")),
            }
        })
        .await?;
    drop(model);
    // Thousands of vectors make megabytes of JSON: written off the async
    // threads too.
    let body = off_async(move || {
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, v)| EmbeddingData {
                object: "embedding",
                index,
                embedding: if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    EmbeddingVector::Float(v)
                },
            })
            .collect();
        let body = EmbeddingResponse {
            object: "list",
            data,
            model: model_id,
            usage: EmbeddingUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        };
        serde_json::to_vec(&body).map_err(|e| ApiError::internal(format!("encoding the response: {e}")))
    })
    .await?;
    Ok(super::answer(&state, body, lookup))
}
