//! `POST /v1/chat/completions`

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use hfms_engine::generate::{FinishReason, GenEvent, GenerateRequest};
use hfms_engine::skills::{LoadedModel, Task};
use hfms_engine::tokenizer::chat_template::TemplateMessage;
use serde_json::Value;

use super::params::{self, Common};
use super::replay;
use super::tools::{self, ToolChoice, ToolFormat, ToolParser};
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
    // Ids of the calls made so far: a tool result must answer one of them.
    let mut call_ids: std::collections::HashSet<String> = std::collections::HashSet::new();
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = |p: &str| Some(format!("messages[{i}].{p}"));
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                "function" => {
                    return Err(ApiError::invalid(
                        param("role"),
                        "'function' messages (the deprecated functions API) are not supported; use 'tool' messages.",
                    ));
                }
                other => {
                    return Err(ApiError::invalid(
                        param("role"),
                        format!(
                            "'{other}' is not a valid role; use one of 'system', 'developer', 'user', 'assistant', 'tool'."
                        ),
                    ));
                }
            };
            let tool_calls = match (&m.tool_calls, role) {
                (None | Some(Value::Null), _) => None,
                (Some(calls), "assistant") => Some(template_tool_calls(i, calls, &mut call_ids)?),
                (Some(_), _) => {
                    return Err(ApiError::invalid(
                        param("tool_calls"),
                        "only assistant messages may carry tool_calls.",
                    ));
                }
            };
            let tool_call_id = match (&m.tool_call_id, role) {
                (Some(Value::String(id)), "tool") => {
                    if !call_ids.contains(id) {
                        return Err(ApiError::invalid(
                            param("tool_call_id"),
                            format!("tool_call_id '{id}' does not answer any tool call of an earlier assistant message."),
                        ));
                    }
                    Some(id.clone())
                }
                (None | Some(Value::Null), "tool") => {
                    return Err(ApiError::invalid(
                        param("tool_call_id"),
                        "a tool message needs the tool_call_id of the call it answers.",
                    ));
                }
                (Some(_), "tool") => {
                    return Err(ApiError::invalid(param("tool_call_id"), "tool_call_id must be a string."));
                }
                (None | Some(Value::Null), _) => None,
                (Some(_), _) => {
                    return Err(ApiError::invalid(
                        param("tool_call_id"),
                        "only tool messages carry a tool_call_id.",
                    ));
                }
            };
            // An assistant message that only calls tools has no content.
            let content = if tool_calls.is_some() && matches!(m.content, None | Some(Value::Null)) {
                String::new()
            } else {
                content_text(i, m)?
            };
            Ok(TemplateMessage {
                role: role.to_string(),
                content,
                name: m.name.clone(),
                tool_calls,
                tool_call_id,
            })
        })
        .collect()
}

/// An assistant message's `tool_calls` as a template expects them:
/// `arguments` as an object (transformers' convention; the API carries a
/// JSON text). Each call's id is remembered for the tool results.
fn template_tool_calls(i: usize, calls: &Value, ids: &mut std::collections::HashSet<String>) -> ApiResult<Value> {
    let Value::Array(calls) = calls else {
        return Err(ApiError::invalid(
            Some(format!("messages[{i}].tool_calls")),
            "tool_calls must be an array.",
        ));
    };
    let mut out = Vec::with_capacity(calls.len());
    for (j, c) in calls.iter().enumerate() {
        let param = |p: &str| Some(format!("messages[{i}].tool_calls[{j}]{p}"));
        let id = match c.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => {
                return Err(ApiError::invalid(
                    param(".id"),
                    "each tool call needs a non-empty string 'id'.",
                ));
            }
        };
        if c.get("type").is_some_and(|t| t != "function") {
            return Err(ApiError::invalid(
                param(".type"),
                "tool calls must be of type 'function'.",
            ));
        }
        let Some(Value::String(name)) = c.get("function").and_then(|f| f.get("name")) else {
            return Err(ApiError::invalid(
                param(".function.name"),
                "each tool call needs function.name.",
            ));
        };
        let arguments = match c.get("function").and_then(|f| f.get("arguments")) {
            Some(Value::String(a)) => match serde_json::from_str::<Value>(a) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return Err(ApiError::invalid(
                        param(".function.arguments"),
                        "function.arguments must be a JSON object, written as a string.",
                    ));
                }
            },
            _ => {
                return Err(ApiError::invalid(
                    param(".function.arguments"),
                    "each tool call needs function.arguments (a string).",
                ));
            }
        };
        if !ids.insert(id.clone()) {
            return Err(ApiError::invalid(
                param(".id"),
                format!("the tool call id '{id}' is used twice in the conversation."),
            ));
        }
        out.push(serde_json::json!({
            "id": id, "type": "function", "function": {"name": name, "arguments": arguments}
        }));
    }
    Ok(Value::Array(out))
}

/// `finish_reason`: a choice that ended by calling tools says so.
fn finish_of(reason: FinishReason, called: bool) -> &'static str {
    match reason {
        FinishReason::Stop if called => "tool_calls",
        other => finish_str(other),
    }
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
    if req.functions.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::invalid(
            Some("functions".into()),
            "the deprecated functions API is not supported; use tools.",
        ));
    }
    let tool_defs = tools::parse_tools(req.tools.as_deref().unwrap_or_default())?;
    let tool_choice = tools::parse_tool_choice(req.tool_choice.as_ref(), &tool_defs)?;
    let parallel_calls = req.parallel_tool_calls.unwrap_or(true);
    let response_grammar = tools::response_grammar(req.response_format.as_ref(), "response_format")?;
    let use_tools = tool_choice != ToolChoice::None;
    // OpenAI ends a call it was told to make by name with "stop".
    let calls_finish = !matches!(tool_choice, ToolChoice::Named(_));
    if use_tools && response_grammar.is_some() {
        return Err(ApiError::invalid(
            Some("response_format".into()),
            "response_format json_object/json_schema cannot be combined with tools unless tool_choice is 'none'.",
        ));
    }
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
    let tool_format = ToolFormat::of_template(template.source());
    // Tools are shown to the model only when it may call them.
    let template_tools = use_tools.then(|| tools::template_tools(req.tools.as_deref().unwrap_or_default()));
    // Rendering and tokenizing up to a whole body of text is CPU work.
    let prompt = off_async(move || {
        let text = template.render_with_tools(&messages, template_tools.as_ref(), true)?;
        // The template writes any BOS itself (add_special_tokens=False, as
        // transformers' apply_chat_template does).
        Ok(tokenizer.encode(&text, false)?)
    })
    .await?;
    let grammar = match response_grammar {
        Some(spec) => Some((spec, None, "response_format")),
        None => tools::tool_grammar(&tool_defs, &tool_choice, parallel_calls, tool_format)
            .map(|(spec, trigger)| (spec, trigger, "tools")),
    };
    let constraint = match grammar {
        Some((spec, trigger, param)) => Some(tools::constraint(&gm.generator, spec, trigger, param).await?),
        None => None,
    };
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
            constraint: constraint.clone(),
            tag: rid.0.clone(),
        })?);
    }
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now_unix();
    let prompt_tokens = prompt.len();
    // The non-streamed answer; a streamed one is stored as it.
    let answer_of = {
        let (id, model_id) = (id.clone(), model_id.clone());
        let tool_defs = tool_defs.clone();
        move |results: Vec<Collected>| {
            let completion: usize = results.iter().map(|r| r.usage.completion_tokens).sum();
            // The prompt is counted once; the first choice says what it reused.
            let cached = results.first().map_or(0, |r| r.usage.cached_tokens);
            let choices = results
                .into_iter()
                .enumerate()
                .map(|(index, r): (usize, Collected)| {
                    let finish = r.finish.unwrap_or(FinishReason::Stop);
                    let (content, calls) = if use_tools {
                        let parsed = ToolParser::parse_all(tool_format, tool_defs.clone(), &r.text);
                        (parsed.content, parsed.calls)
                    } else {
                        (r.text, Vec::new())
                    };
                    ChatChoice {
                        index,
                        logprobs: want_logprobs.then(|| ChatLogprobs {
                            content: Some(r.logprobs.iter().map(logprob_json).collect()),
                            refusal: None,
                        }),
                        finish_reason: finish_of(finish, calls_finish && !calls.is_empty()),
                        message: ResponseMessage {
                            role: "assistant",
                            content: (calls.is_empty() || !content.trim().is_empty()).then_some(content),
                            refusal: None,
                            tool_calls: (!calls.is_empty()).then_some(calls),
                        },
                    }
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
                tool_calls: None,
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
        // With tools, each choice's text goes through its own parser: text
        // that may open a call is held back, a call goes out once complete.
        let mut parsers: Vec<(ToolParser, usize)> = (0..n)
            .map(|_| (ToolParser::new(tool_format, tool_defs.clone()), 0))
            .collect();
        // The choice's next delta, and how many calls it has sent so far.
        let mut delta_of = move |index: usize, text: String, last: bool| -> (ChunkDelta, usize) {
            let Some((parser, calls_sent)) = parsers.get_mut(index).filter(|_| use_tools) else {
                let delta = ChunkDelta {
                    content: (!text.is_empty() || !last).then_some(text),
                    ..Default::default()
                };
                return (delta, 0);
            };
            let mut parsed = parser.push(&text);
            if last {
                let rest = parser.finish();
                parsed.content.push_str(&rest.content);
                parsed.calls.extend(rest.calls);
            }
            let calls: Vec<_> = parsed
                .calls
                .iter()
                .enumerate()
                .map(|(k, c)| c.delta(*calls_sent + k))
                .collect();
            *calls_sent += calls.len();
            let delta = ChunkDelta {
                role: None,
                content: (!parsed.content.is_empty()).then_some(parsed.content),
                tool_calls: (!calls.is_empty()).then_some(calls),
            };
            (delta, *calls_sent)
        };
        let chunk_of = move |index: usize, ev| match ev {
            GenEvent::Delta { text, logprobs, .. } => {
                let (delta, _) = delta_of(index, text, false);
                let logprobs = want_logprobs.then(|| ChatLogprobs {
                    content: Some(logprobs.iter().map(logprob_json).collect()),
                    refusal: None,
                });
                // Held text and no logprobs to send: nothing to say yet.
                if delta.content.is_none() && delta.tool_calls.is_none() && logprobs.is_none() {
                    return None;
                }
                Some(chunk(
                    vec![ChatChunkChoice {
                        index,
                        delta,
                        logprobs,
                        finish_reason: None,
                    }],
                    usage_field(),
                ))
            }
            GenEvent::Done { finish_reason, .. } => {
                // What the parser held goes out with the finish reason.
                let (delta, calls_sent) = delta_of(index, String::new(), true);
                Some(chunk(
                    vec![ChatChunkChoice {
                        index,
                        delta,
                        logprobs: None,
                        finish_reason: Some(finish_of(finish_reason, calls_finish && calls_sent > 0)),
                    }],
                    usage_field(),
                ))
            }
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use hfms_engine::formats::gguf::GgufFile;
    use hfms_engine::tokenizer::{ChatTemplate, Tokenizer};

    use super::*;

    fn workspace() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The API's messages, with tools, tool calls and tool results, become
    /// exactly the prompt transformers renders with Qwen2.5's own template
    /// (tests/reference/qwen_tool_prompts.json, scripts/make-tool-goldens.py).
    #[test]
    fn tool_conversations_render_as_transformers_does() {
        let gguf =
            workspace().join("models-extra/Qwen/Qwen2.5-Coder-0.5B-Instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
        assert!(gguf.exists(), "{} is missing: run `make models-extra`", gguf.display());
        let g = GgufFile::open(&gguf).unwrap();
        let template = ChatTemplate::new(g.get_str("tokenizer.chat_template").unwrap(), "", "<|im_end|>").unwrap();
        assert_eq!(ToolFormat::of_template(template.source()), ToolFormat::Hermes);
        let tok = Tokenizer::from_gguf(&g).unwrap();
        let golden: Value = serde_json::from_str(
            &std::fs::read_to_string(workspace().join("tests/reference/qwen_tool_prompts.json")).unwrap(),
        )
        .unwrap();
        let cases = golden["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 3);
        for case in cases {
            let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
            let messages = template_messages(&messages).unwrap();
            let tools = tools::template_tools(case["tools"].as_array().unwrap());
            let text = template.render_with_tools(&messages, Some(&tools), true).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{}", case["name"]);
            // The markers are single tokens, and the ids spell the text.
            let ids = tok.encode(&text, false).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
            for marker in ["<|im_start|>", "<tool_call>"] {
                let id = tok.token_id(marker).unwrap();
                assert!(ids.contains(&id) || !text.contains(marker), "{marker}");
            }
        }
    }

    #[test]
    fn tool_messages_must_answer_earlier_calls() {
        let msgs = |v: Value| -> Vec<ChatMessage> { serde_json::from_value(v).unwrap() };
        let call = serde_json::json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]});
        let ok = msgs(serde_json::json!([{"role": "user", "content": "x"}, call,
            {"role": "tool", "tool_call_id": "call_1", "content": "r"}]));
        assert!(template_messages(&ok).is_ok());
        for (bad, param) in [
            (
                serde_json::json!([{"role": "tool", "tool_call_id": "call_9", "content": "r"}]),
                "messages[0].tool_call_id",
            ),
            (
                serde_json::json!([{"role": "tool", "content": "r"}]),
                "messages[0].tool_call_id",
            ),
            (
                serde_json::json!([{"role": "tool", "tool_call_id": 5, "content": "r"}]),
                "messages[0].tool_call_id",
            ),
            (
                serde_json::json!([{"role": "user", "content": "x", "tool_call_id": "a"}]),
                "messages[0].tool_call_id",
            ),
            (
                serde_json::json!([{"role": "user", "content": "x", "tool_calls": []}]),
                "messages[0].tool_calls",
            ),
            (
                serde_json::json!([{"role": "assistant", "tool_calls": {}}]),
                "messages[0].tool_calls",
            ),
            (
                serde_json::json!([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]),
                "messages[0].tool_calls[0].id",
            ),
            (
                serde_json::json!([{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "not json"}}]}]),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                serde_json::json!([{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": {}}}]}]),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                serde_json::json!([{"role": "assistant", "tool_calls": [{"id": "a", "function": {"arguments": "{}"}}]}]),
                "messages[0].tool_calls[0].function.name",
            ),
            (
                serde_json::json!([{"role": "function", "content": "x"}]),
                "messages[0].role",
            ),
            (
                serde_json::json!([{"role": "assistant", "tool_calls": [
                    {"id": "a", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "a", "function": {"name": "g", "arguments": "{}"}}]}]),
                "messages[0].tool_calls[1].id",
            ),
        ] {
            let e = template_messages(&msgs(bad.clone())).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}: {}", e.message);
        }
    }
}
