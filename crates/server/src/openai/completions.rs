//! `POST /v1/completions` (the legacy text completions API).

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use hfms_engine::generate::{FinishReason, GenEvent, GenerateRequest, PromptToken, TokenLogprob};
use hfms_engine::skills::{LoadedModel, Task};
use hfms_engine::tokenizer::Tokenizer;
use serde_json::Value;

use super::chat::json_kind;
use super::params::{self, Common};
use super::replay;
use super::types::*;
use super::{
    ChoiceEvents, Collected, acquire, collect_all, fingerprint, finish_str, now_unix, off_async, sse_response,
};
use crate::cache::Lookup;
use crate::error::{ApiError, ApiResult, PostErrors};
use crate::extract::ApiJson;
use crate::middleware::trace::RequestId;
use crate::state::AppState;

/// One prompt of a request: its text (for echo) and token ids.
struct Prompt {
    text: String,
    ids: Vec<u32>,
}

fn token_list(v: &[Value], param: &str) -> ApiResult<Vec<u32>> {
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

/// The shapes OpenAI accepts for `prompt`.
fn prompts(v: Option<&Value>, tok: &Tokenizer) -> ApiResult<Vec<Prompt>> {
    let v = v.ok_or_else(|| ApiError::invalid(Some("prompt".into()), "prompt is required."))?;
    let from_text = |s: &str| -> ApiResult<Prompt> {
        Ok(Prompt {
            text: s.to_string(),
            ids: tok.encode(s, true)?,
        })
    };
    let from_ids = |ids: Vec<u32>| -> ApiResult<Prompt> {
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= tok.vocab_size()) {
            return Err(ApiError::invalid(
                Some("prompt".into()),
                format!("token id {bad} is outside the vocabulary (size {}).", tok.vocab_size()),
            ));
        }
        Ok(Prompt {
            text: tok.decode(&ids, false)?,
            ids,
        })
    };
    let out = match v {
        Value::String(s) => vec![from_text(s)?],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::invalid(
                Some("prompt".into()),
                "prompt must not be an empty array.",
            ));
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|x| match x {
                    Value::String(s) => from_text(s),
                    other => Err(ApiError::invalid(
                        Some("prompt".into()),
                        format!("a list of prompts must hold only strings, found {}.", json_kind(other)),
                    )),
                })
                .collect::<ApiResult<_>>()?,
            Value::Number(_) => vec![from_ids(token_list(items, "prompt")?)?],
            Value::Array(_) => items
                .iter()
                .map(|x| match x {
                    Value::Array(ids) => from_ids(token_list(ids, "prompt")?),
                    other => Err(ApiError::invalid(
                        Some("prompt".into()),
                        format!(
                            "a list of token lists must hold only arrays, found {}.",
                            json_kind(other)
                        ),
                    )),
                })
                .collect::<ApiResult<_>>()?,
            other => {
                return Err(ApiError::invalid(
                    Some("prompt".into()),
                    format!(
                        "prompt must be a string, a list of strings, or token ids; got a list of {}.",
                        json_kind(other)
                    ),
                ));
            }
        },
        other => {
            return Err(ApiError::invalid(
                Some("prompt".into()),
                format!(
                    "prompt must be a string, a list of strings, or token ids; got {}.",
                    json_kind(other)
                ),
            ));
        }
    };
    for (i, p) in out.iter().enumerate() {
        if p.ids.is_empty() {
            return Err(ApiError::invalid(
                Some("prompt".into()),
                format!("prompt {i} is empty; give at least one token."),
            ));
        }
    }
    Ok(out)
}

/// A generated token as a position of the legacy logprobs lists.
fn position(l: TokenLogprob) -> PromptToken {
    PromptToken {
        token: l.token.clone(),
        logprob: Some(l),
    }
}

/// Completions' legacy logprobs: parallel lists plus text offsets, which
/// count characters of the returned text (what clients slice it with).
fn legacy_logprobs(entries: &[PromptToken], start_offset: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = start_offset;
    for e in entries {
        out.tokens.push(e.token.clone());
        out.text_offset.push(offset);
        offset += e.token.chars().count();
        match &e.logprob {
            Some(l) => {
                out.token_logprobs.push(Some(l.logprob));
                out.top_logprobs.push(Some(
                    l.top
                        .iter()
                        .map(|t| (t.token.clone(), Value::from(t.logprob)))
                        .collect(),
                ));
            }
            None => {
                out.token_logprobs.push(None);
                out.top_logprobs.push(None);
            }
        }
    }
    out
}

/// How many prompts `prompt` holds, from its shape alone (before any
/// tokenization, so the choices cap costs nothing to enforce).
pub(crate) fn prompt_count(v: Option<&Value>) -> usize {
    match v {
        Some(Value::Array(items)) => match items.first() {
            Some(Value::Number(_)) => 1,
            _ => items.len(),
        },
        _ => 1,
    }
}

/// Create a text completion (OpenAI's legacy API); with `stream: true`,
/// server-sent events of `CompletionResponse` chunks ending with `data: [DONE]`.
#[utoipa::path(post, path = "/v1/completions", tag = "OpenAI",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion (JSON), or its chunks as server-sent events",
         content((CompletionResponse = "application/json"), (String = "text/event-stream"))),
        PostErrors,
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    ApiJson(mut req, raw): ApiJson<CompletionRequest>,
) -> ApiResult<Response> {
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            Some("suffix".into()),
            "suffix (insertion) is not supported by this server.",
        ));
    }
    let response_grammar = super::tools::response_grammar(req.response_format.as_ref(), "response_format")?;
    let stream = req.stream.unwrap_or(false);
    if req.stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            Some("stream_options".into()),
            "stream_options may only be set when stream is true.",
        ));
    }
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=20).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                Some("logprobs".into()),
                format!("logprobs must be between 0 and 20, got {k}."),
            ));
        }
    };
    let echo = req.echo.unwrap_or(false);
    if let (Some(b), n) = (req.best_of, req.n.unwrap_or(1))
        && b != n
    {
        return Err(ApiError::invalid(
            Some("best_of".into()),
            "best_of other than n is not supported by this server.",
        ));
    }
    let common = Common::of_completion(&req, logprobs);
    params::validate_shape(&common, state.limits())?;
    let limits = state.limits();
    let choices = prompt_count(req.prompt.as_ref()).saturating_mul(req.n.unwrap_or(1).max(1) as usize);
    if choices > limits.max_choices {
        return Err(params::over_limit(
            "prompt",
            format!(
                "at most {} choices (prompts × n) per request, got {choices}",
                limits.max_choices
            ),
            "max-choices",
        ));
    }

    // A deterministic request may be answered from the cache, with no
    // model work at all.
    let deterministic = super::deterministic(req.temperature, req.seed);
    let lookup = super::cache_lookup(&state, &headers, "completions", &req.model, &raw, deterministic).await?;
    if let Lookup::Hit(bytes) = &lookup {
        return if stream {
            replay::completions_stream(bytes, include_usage)
        } else {
            replay::json(bytes, "cmpl")
        };
    }
    let cacheable = matches!(lookup, Lookup::Miss { .. });

    let model = acquire(&state, &req.model, Task::Generate, req.keep_alive.as_ref()).await?;
    let model_id = model.id.clone();
    let LoadedModel::Generation(gm) = &*model.model else {
        return Err(ApiError::internal("model task mismatch"));
    };
    let validated = params::validate(common, gm.generator.model().config().vocab, state.limits())?;
    let tokenizer = gm.generator.tokenizer().clone();
    let prompt_value = req.prompt.take();
    // Tokenizing (or detokenizing, for echo) a whole body is CPU work.
    let prompts = off_async(move || prompts(prompt_value.as_ref(), &tokenizer)).await?;
    let mut limits = Vec::with_capacity(prompts.len());
    for p in &prompts {
        // OpenAI's default of 16, within the server's cap.
        let default = state.limits().max_completion_tokens.map_or(16, |c| c.min(16)) as i64;
        limits.push(params::max_tokens(
            req.max_tokens.or(Some(default)),
            "max_tokens",
            p.ids.len(),
            gm.context_length,
            "prompt",
            state.limits().max_completion_tokens,
        )?);
    }

    let constraint = match response_grammar {
        Some(spec) => Some(super::tools::constraint(&gm.generator, spec, None, "response_format").await?),
        None => None,
    };

    // All choices are admitted or none (a full queue answers 503).
    gm.generator.admit_check(prompts.len() * validated.n)?;
    // The key's token budget: the prompts now, the completions when they end.
    let meter = crate::auth::admit_tokens(prompts.iter().map(|p| p.ids.len()).sum()).await?;
    // choice index = prompt index * n + i, as OpenAI numbers them.
    let mut receivers = Vec::new();
    let mut echoes = Vec::new();
    let mut prompt_tokens = 0;
    for (pi, p) in prompts.iter().enumerate() {
        prompt_tokens += p.ids.len();
        for i in 0..validated.n {
            let mut sampling = validated.sampling.clone();
            sampling.seed = params::choice_seed(sampling.seed, pi * validated.n + i);
            receivers.push(gm.generator.submit(GenerateRequest {
                prompt: p.ids.clone(),
                max_tokens: limits[pi],
                sampling,
                stop: validated.stop.clone(),
                stop_token_ids: Vec::new(),
                ignore_eos: req.ignore_eos.unwrap_or(false),
                prompt_logprobs: if echo { logprobs } else { None },
                constraint: constraint.clone(),
                tag: rid.0.clone(),
            })?);
            echoes.push(if echo { p.text.clone() } else { String::new() });
        }
    }
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now_unix();

    // The non-streamed answer; a streamed one is stored as it.
    let answer_of = {
        let (id, model_id, echoes) = (id.clone(), model_id.clone(), echoes.clone());
        let per_prompt = validated.n;
        move |results: Vec<Collected>| {
            let completion: usize = results.iter().map(|r| r.usage.completion_tokens).sum();
            // Each prompt is counted once: by its first choice.
            let cached: usize = results.iter().step_by(per_prompt).map(|r| r.usage.cached_tokens).sum();
            let choices = results
                .into_iter()
                .zip(echoes)
                .enumerate()
                .map(|(index, (r, echo_text))| {
                    let lp = logprobs.map(|_| {
                        let mut entries: Vec<PromptToken> = r.prompt_logprobs.clone().unwrap_or_default();
                        entries.extend(r.logprobs.iter().cloned().map(position));
                        legacy_logprobs(&entries, 0)
                    });
                    CompletionChoice {
                        index,
                        text: format!("{echo_text}{}", r.text),
                        logprobs: lp,
                        finish_reason: Some(finish_str(r.finish.unwrap_or(FinishReason::Stop))),
                    }
                })
                .collect();
            let body = CompletionResponse {
                id,
                object: "text_completion",
                created,
                model: model_id,
                system_fingerprint: fingerprint(),
                choices,
                usage: Some(Some(Usage::new(prompt_tokens, completion, cached))),
            };
            serde_json::to_vec(&body).map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))
        }
    };
    if !stream {
        let results = collect_all(&state, receivers).await?;
        if let Some(m) = &meter {
            m.settle(super::settled_of(&results, |i| i % validated.n == 0)).await;
        }
        return Ok(super::answer(&state, answer_of(results)?, lookup));
    }

    let n = receivers.len();
    let per_prompt = validated.n;
    let chunk = move |choices: Vec<CompletionChoice>, usage: Option<Option<Usage>>| CompletionResponse {
        id: id.clone(),
        object: "text_completion",
        created,
        model: model_id.clone(),
        system_fingerprint: fingerprint(),
        choices,
        usage,
    };
    // With include_usage every chunk carries `usage` (null until the last).
    let usage_field = move || include_usage.then_some(None);
    let events = ChoiceEvents::new(&state, receivers);
    let store = lookup.store_key();
    let resp = sse_response(&state, &rid.0, move |sink| async move {
        let _model = model;
        // Characters of text sent so far per choice: where the next token's
        // text_offset starts. The echo goes out with a choice's first chunk.
        let mut sent: Vec<usize> = vec![0; n];
        let mut echoed = vec![false; n];
        let usage_chunk = chunk.clone();
        let chunk_of = move |index: usize, ev| {
            let mut text = String::new();
            if !echoed[index] {
                echoed[index] = true;
                text.push_str(&echoes[index]);
            }
            let (lp, finish_reason) = match ev {
                GenEvent::Prompt(entries) => (Some(legacy_logprobs(&entries, 0)), None),
                GenEvent::Delta {
                    text: t, logprobs: lps, ..
                } => {
                    let start = sent[index] + text.chars().count();
                    let lp = logprobs.map(|_| {
                        let entries: Vec<PromptToken> = lps.into_iter().map(position).collect();
                        legacy_logprobs(&entries, start)
                    });
                    text.push_str(&t);
                    (lp, None)
                }
                GenEvent::Done { finish_reason, .. } => (None, Some(finish_str(finish_reason))),
                GenEvent::Error(_) => return None,
            };
            sent[index] += text.chars().count();
            Some(chunk(
                vec![CompletionChoice {
                    index,
                    text,
                    logprobs: lp,
                    finish_reason,
                }],
                usage_field(),
            ))
        };
        let usage_of = include_usage.then_some(move |completion, cached| {
            usage_chunk(Vec::new(), Some(Some(Usage::new(prompt_tokens, completion, cached))))
        });
        // Each prompt is counted once: by its first choice.
        let relayed = sink
            .relay(events, n, |i| i % per_prompt == 0, chunk_of, usage_of, store.is_some())
            .await;
        if let Some(m) = &meter {
            m.settle(relayed.settled).await;
        }
        sink.store(store, relayed.results.map(answer_of));
    });
    Ok(if cacheable {
        replay::with_x_cache(resp, "miss")
    } else {
        resp
    })
}
