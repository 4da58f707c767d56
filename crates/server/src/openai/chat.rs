//! `POST /v1/chat/completions`

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use hfms_engine::generate::{GenEvent, GenerateRequest};
use hfms_engine::skills::{LoadedModel, Task};
use hfms_engine::tokenizer::chat_template::TemplateMessage;
use serde_json::Value;

use super::params::{self, Common};
use super::replay;
use super::types::*;
use super::{
    ChoiceEvents, Collected, acquire, collect_all, fingerprint, finish_str, logprob_json, now_unix, off_async,
    sse_response,
};
use crate::cache::Lookup;
use crate::error::{ApiError, ApiResult, PostErrors};
use crate::extract::ApiJson;
use crate::middleware::trace::RequestId;
use crate::state::AppState;

/// Flatten a message's content to the text a chat template expects.
fn content_text(i: usize, m: &ChatMessage) -> ApiResult<String> {
    let param = |p: &str| Some(format!("messages[{i}].{p}"));
    match &m.content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            if parts.is_empty() {
                return Err(ApiError::invalid(
                    param("content"),
                    "content must not be an empty array.",
                ));
            }
            let mut texts = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let kind = p.get("type").and_then(|t| t.as_str()).unwrap_or("");
                match kind {
                    "text" => match p.get("text").and_then(|t| t.as_str()) {
                        Some(t) => texts.push(t.to_string()),
                        None => {
                            return Err(ApiError::invalid(
                                Some(format!("messages[{i}].content[{j}].text")),
                                "a text content part needs a string 'text'.",
                            ));
                        }
                    },
                    "" => {
                        return Err(ApiError::invalid(
                            Some(format!("messages[{i}].content[{j}].type")),
                            "each content part needs a 'type'.",
                        ));
                    }
                    other => {
                        return Err(ApiError::invalid(
                            Some(format!("messages[{i}].content[{j}].type")),
                            format!("content parts of type '{other}' are not supported by this model; only 'text' is."),
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(other) => Err(ApiError::invalid(
            param("content"),
            format!(
                "content must be a string or an array of content parts, got {}.",
                json_kind(other)
            ),
        )),
        None => Err(ApiError::invalid(
            param("content"),
            "content is required for this message.",
        )),
    }
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn template_messages(msgs: &[ChatMessage]) -> ApiResult<Vec<TemplateMessage>> {
    if msgs.is_empty() {
        return Err(ApiError::invalid(
            Some("messages".into()),
            "messages must contain at least one message.",
        ));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" | "function" => {
                    return Err(ApiError::invalid(
                        Some(format!("messages[{i}].role")),
                        format!(
                            "'{}' messages are not supported: this server does not do tool calling.",
                            m.role
                        ),
                    ));
                }
                other => {
                    return Err(ApiError::invalid(
                        Some(format!("messages[{i}].role")),
                        format!(
                            "'{other}' is not a valid role; use one of 'system', 'developer', 'user', 'assistant'."
                        ),
                    ));
                }
            };
            if m.tool_calls.as_ref().is_some_and(|t| !t.is_null()) {
                return Err(ApiError::invalid(
                    Some(format!("messages[{i}].tool_calls")),
                    "tool calls are not supported by this server.",
                ));
            }
            Ok(TemplateMessage {
                role: role.to_string(),
                content: content_text(i, m)?,
                name: m.name.clone(),
            })
        })
        .collect()
}

/// Create a chat completion (OpenAI's API); with `stream: true`, server-sent
/// events of `ChatCompletionChunk` ending with `data: [DONE]`.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "OpenAI",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion (JSON), or its chunks as server-sent events",
         content((ChatCompletionResponse = "application/json"), (String = "text/event-stream"))),
        PostErrors,
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    ApiJson(req, raw): ApiJson<ChatCompletionRequest>,
) -> ApiResult<Response> {
    // Everything that needs no model first: bad input fails fast.
    let messages = template_messages(&req.messages)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) || req.functions.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::invalid(
            Some("tools".into()),
            "tools and functions are not supported by this server.",
        ));
    }
    let json_mode = match req.response_format.as_ref().map(|f| f.kind.as_str()) {
        None | Some("text") => false,
        Some("json_object") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("response_format.type".into()),
                format!("response_format type '{other}' is not supported; use 'text' or 'json_object'."),
            ));
        }
    };
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
    let want_logprobs = req.logprobs.unwrap_or(false);
    let top_logprobs = match (want_logprobs, req.top_logprobs) {
        (_, Some(k)) if !(0..=20).contains(&k) => {
            return Err(ApiError::invalid(
                Some("top_logprobs".into()),
                "top_logprobs must be between 0 and 20.",
            ));
        }
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                Some("top_logprobs".into()),
                "logprobs must be true when top_logprobs is set.",
            ));
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, None) => None,
    };
    let requested_max = match (req.max_completion_tokens, req.max_tokens) {
        (Some(a), _) => Some((a, "max_completion_tokens")),
        (None, Some(b)) => Some((b, "max_tokens")),
        _ => None,
    };
    let common = Common::of_chat(&req, top_logprobs);
    params::validate_shape(&common, state.limits())?;

    // A deterministic request may be answered from the cache, with no
    // model work at all.
    let deterministic = super::deterministic(req.temperature, req.seed);
    let lookup = super::cache_lookup(&state, &headers, "chat", &req.model, &raw, deterministic).await?;
    if let Lookup::Hit(bytes) = &lookup {
        return if stream {
            replay::chat_stream(bytes, include_usage)
        } else {
            replay::json(bytes, "chatcmpl")
        };
    }
    let cacheable = matches!(lookup, Lookup::Miss { .. });

    let model = acquire(&state, &req.model, Task::Generate, req.keep_alive.as_ref()).await?;
    let model_id = model.id.clone();
    let LoadedModel::Generation(gm) = &*model.model else {
        return Err(ApiError::internal("model task mismatch"));
    };
    let validated = params::validate(common, gm.generator.model().config().vocab, state.limits())?;
    let Some(template) = gm.template.clone() else {
        return Err(ApiError::invalid(
            Some("model".into()),
            format!("The model `{model_id}` has no chat template; use /v1/completions with a raw prompt."),
        ));
    };
    let tokenizer = gm.generator.tokenizer().clone();
    // Rendering and tokenizing up to a whole body of text is CPU work.
    let prompt = off_async(move || {
        let text = template.render(&messages, true)?;
        // The template writes any BOS itself (add_special_tokens=False, as
        // transformers' apply_chat_template does).
        Ok(tokenizer.encode(&text, false)?)
    })
    .await?;
    let max_tokens = params::max_tokens(
        requested_max.map(|(m, _)| m),
        requested_max.map(|(_, p)| p).unwrap_or("max_tokens"),
        prompt.len(),
        gm.context_length,
        "messages",
        state.limits().max_completion_tokens,
    )?;

    // All n choices are admitted or none (a full queue answers 503).
    gm.generator.admit_check(validated.n)?;
    // The key's token budget: the prompt now, the completion when it ends.
    let meter = crate::auth::admit_tokens(prompt.len()).await?;
    let mut receivers = Vec::with_capacity(validated.n);
    for i in 0..validated.n {
        let mut sampling = validated.sampling.clone();
        sampling.seed = params::choice_seed(sampling.seed, i);
        receivers.push(gm.generator.submit(GenerateRequest {
            prompt: prompt.clone(),
            max_tokens,
            sampling,
            stop: validated.stop.clone(),
            stop_token_ids: Vec::new(),
            ignore_eos: req.ignore_eos.unwrap_or(false),
            prompt_logprobs: None,
            json: json_mode,
            tag: rid.0.clone(),
        })?);
    }
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now_unix();
    let prompt_tokens = prompt.len();
    // The non-streamed answer; a streamed one is stored as it.
    let answer_of = {
        let (id, model_id) = (id.clone(), model_id.clone());
        move |results: Vec<Collected>| {
            let completion: usize = results.iter().map(|r| r.usage.completion_tokens).sum();
            // The prompt is counted once; the first choice says what it reused.
            let cached = results.first().map_or(0, |r| r.usage.cached_tokens);
            let choices = results
                .into_iter()
                .enumerate()
                .map(|(index, r): (usize, Collected)| ChatChoice {
                    index,
                    logprobs: want_logprobs.then(|| ChatLogprobs {
                        content: Some(r.logprobs.iter().map(logprob_json).collect()),
                        refusal: None,
                    }),
                    finish_reason: finish_str(r.finish.unwrap_or(hfms_engine::generate::FinishReason::Stop)),
                    message: ResponseMessage {
                        role: "assistant",
                        content: Some(r.text),
                        refusal: None,
                    },
                })
                .collect();
            let body = ChatCompletionResponse {
                id,
                object: "chat.completion",
                created,
                model: model_id,
                system_fingerprint: fingerprint(),
                choices,
                usage: Usage::new(prompt_tokens, completion, cached),
            };
            serde_json::to_vec(&body).map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))
        }
    };
    if !stream {
        let results = collect_all(&state, receivers).await?;
        if let Some(m) = &meter {
            m.settle(super::settled_of(&results, |i| i == 0)).await;
        }
        return Ok(super::answer(&state, answer_of(results)?, lookup));
    }

    let n = receivers.len();
    let chunk = move |choices: Vec<ChatChunkChoice>, usage: Option<Option<Usage>>| ChatCompletionChunk {
        id: id.clone(),
        object: "chat.completion.chunk",
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
        // Holding the model keeps it loaded while this stream runs.
        let _model = model;
        for index in 0..n {
            let delta = ChunkDelta {
                role: Some("assistant"),
                content: Some(String::new()),
            };
            let c = chunk(
                vec![ChatChunkChoice {
                    index,
                    delta,
                    logprobs: None,
                    finish_reason: None,
                }],
                usage_field(),
            );
            if sink.send_json(&c).await.is_err() {
                events.cut_short(super::CLIENT_CLOSED);
                return;
            }
        }
        let usage_chunk = chunk.clone();
        let chunk_of = move |index, ev| match ev {
            GenEvent::Delta { text, logprobs, .. } => Some(chunk(
                vec![ChatChunkChoice {
                    index,
                    delta: ChunkDelta {
                        role: None,
                        content: Some(text),
                    },
                    logprobs: want_logprobs.then(|| ChatLogprobs {
                        content: Some(logprobs.iter().map(logprob_json).collect()),
                        refusal: None,
                    }),
                    finish_reason: None,
                }],
                usage_field(),
            )),
            GenEvent::Done { finish_reason, .. } => Some(chunk(
                vec![ChatChunkChoice {
                    index,
                    delta: ChunkDelta::default(),
                    logprobs: None,
                    finish_reason: Some(finish_str(finish_reason)),
                }],
                usage_field(),
            )),
            GenEvent::Prompt(_) | GenEvent::Error(_) => None,
        };
        let usage_of = include_usage.then_some(move |completion, cached| {
            usage_chunk(Vec::new(), Some(Some(Usage::new(prompt_tokens, completion, cached))))
        });
        // The prompt is counted once: the first choice says what it reused.
        let relayed = sink
            .relay(events, n, |i| i == 0, chunk_of, usage_of, store.is_some())
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
