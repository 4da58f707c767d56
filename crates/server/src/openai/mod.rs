//! The OpenAI-compatible endpoints.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod params;
pub mod types;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::Event;
use futures::StreamExt;
use futures::stream::BoxStream;
use hfms_engine::generate::{FinishReason, GenEvent, GenUsage, PromptToken, TokenLogprob};
use hfms_engine::manager::{KeepAlive, ModelLease, ModelManager};
use hfms_engine::skills::Task;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use types::{TokenLogprobJson, TopLogprobJson};

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Identifies the serving configuration (`system_fingerprint`).
pub fn fingerprint() -> String {
    format!(
        "hfms-{}-{}",
        env!("CARGO_PKG_VERSION"),
        hfms_engine::quant::kernels().name
    )
}

/// Resolve a model name, check it can do `task`, and load it (off the async
/// threads; concurrent first requests share one load). The lease keeps the
/// model loaded and counts the request as in flight on its device.
pub async fn acquire(
    state: &AppState,
    name: &str,
    task: Task,
    keep_alive: Option<&serde_json::Value>,
) -> ApiResult<ModelLease> {
    let keep_alive = keep_alive
        .filter(|v| !v.is_null())
        .map(|v| KeepAlive::parse(v).map_err(|e| ApiError::invalid(Some("keep_alive".into()), e)))
        .transpose()?;
    let manager: Arc<ModelManager> = state.manager().clone();
    let desc = manager.resolve(name).ok_or_else(|| ApiError::model_not_found(name))?;
    let id = desc.id.clone();
    if let (Some(t), None) = (desc.task, &desc.error)
        && t != task
    {
        let (what, endpoint) = match t {
            Task::Embed => ("an embedding model", "/v1/embeddings"),
            Task::Generate => ("a text generation model", "/v1/chat/completions or /v1/completions"),
        };
        return Err(ApiError::invalid(
            Some("model".to_string()),
            format!("The model `{id}` is {what}; use {endpoint}."),
        )
        .with_code("model_not_supported"));
    }
    let name = id.clone();
    let span = tracing::Span::current();
    let lease = tokio::task::spawn_blocking(move || span.in_scope(|| manager.acquire(&name, keep_alive, None)))
        .await
        .map_err(|e| ApiError::internal(format!("model load task failed: {e}")))??;
    Ok(lease)
}

pub fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

pub fn logprob_json(l: &TokenLogprob) -> TokenLogprobJson {
    TokenLogprobJson {
        token: l.token.clone(),
        logprob: l.logprob,
        bytes: Some(l.bytes.clone()),
        top_logprobs: l
            .top
            .iter()
            .map(|t| TopLogprobJson {
                token: t.token.clone(),
                logprob: t.logprob,
                bytes: Some(t.bytes.clone()),
            })
            .collect(),
    }
}

/// The whole output of one choice.
#[derive(Debug, Default)]
pub struct Collected {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_logprobs: Option<Vec<PromptToken>>,
    pub finish: Option<FinishReason>,
    pub usage: GenUsage,
}

/// Wait for one choice to finish.
pub async fn collect(mut rx: UnboundedReceiver<GenEvent>) -> ApiResult<Collected> {
    let mut out = Collected::default();
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Prompt(p) => out.prompt_logprobs = Some(p),
            GenEvent::Delta { text, logprobs } => {
                out.text.push_str(&text);
                out.logprobs.extend(logprobs);
            }
            GenEvent::Done {
                finish_reason, usage, ..
            } => {
                out.finish = Some(finish_reason);
                out.usage = usage;
                return Ok(out);
            }
            GenEvent::Error(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal("generation ended without a result"))
}

/// Wait for every choice, or give up at the server's time limit (dropping
/// the receivers cancels the sequences).
pub async fn collect_all(
    receivers: Vec<UnboundedReceiver<GenEvent>>,
    limit: std::time::Duration,
) -> ApiResult<Vec<Collected>> {
    match tokio::time::timeout(limit, futures::future::try_join_all(receivers.into_iter().map(collect))).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(seconds = limit.as_secs(), "request timed out; cancelling it");
            Err(ApiError::timeout(limit))
        }
    }
}

/// The events of a streamed request's choices, merged, `(choice, event)`,
/// under the request's time limit.
pub struct ChoiceEvents {
    events: BoxStream<'static, (usize, GenEvent)>,
    deadline: tokio::time::Instant,
    limit: std::time::Duration,
}

impl ChoiceEvents {
    pub fn new(receivers: Vec<UnboundedReceiver<GenEvent>>, limit: std::time::Duration) -> Self {
        let streams = receivers.into_iter().enumerate().map(|(i, rx)| {
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
                .map(move |ev| (i, ev))
                .boxed()
        });
        ChoiceEvents {
            events: futures::stream::select_all(streams).boxed(),
            deadline: tokio::time::Instant::now() + limit,
            limit,
        }
    }

    /// The next event; None when every choice has ended; the timeout error
    /// once the limit has passed (the caller sends it and ends the stream,
    /// which drops the receivers and so cancels the sequences).
    pub async fn next(&mut self) -> ApiResult<Option<(usize, GenEvent)>> {
        match tokio::time::timeout_at(self.deadline, self.events.next()).await {
            Ok(next) => Ok(next),
            Err(_) => {
                tracing::warn!(seconds = self.limit.as_secs(), "stream timed out; cancelling it");
                Err(ApiError::timeout(self.limit))
            }
        }
    }
}

/// An SSE `data:` event with a JSON body.
pub fn sse_json<T: serde::Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string()))
}

pub fn sse_done() -> Event {
    Event::default().data("[DONE]")
}
