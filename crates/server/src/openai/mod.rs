//! The OpenAI-compatible endpoints.

pub mod chat;
pub mod classify;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod params;
pub mod replay;
pub mod tools;
pub mod types;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::Event;
use futures::StreamExt;
use futures::stream::BoxStream;
use hfms_engine::generate::{FinishReason, GenEvent, GenUsage, PromptToken, TokenLogprob};
use hfms_engine::manager::{ModelLease, ModelManager};
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
    let keep_alive = params::parse_keep_alive(keep_alive)?;
    let manager: Arc<ModelManager> = state.manager().clone();
    let mut desc = manager.resolve(name);
    allowed_model(name, desc.as_ref())?;
    if desc.is_none()
        && state.downloads().on_demand()
        && let Some(id) = state.bounded(state.downloads().fetch_for_request(name)).await?
    {
        desc = manager.resolve(&id);
    }
    let desc = desc.ok_or_else(|| ApiError::model_not_found(name))?;
    let id = desc.id.clone();
    crate::middleware::metrics::note_model(&id);
    if let (Some(t), None) = (desc.task, &desc.error)
        && t != task
    {
        let (what, endpoint) = match t {
            Task::Embed => ("an embedding model", "/v1/embeddings"),
            Task::Classify => ("a classification model", "/v1/classify or /v1/rerank"),
            Task::Generate => ("a text generation model", "/v1/chat/completions or /v1/completions"),
        };
        return Err(ApiError::invalid(
            Some("model".to_string()),
            format!("The model `{id}` is {what}; use {endpoint}."),
        )
        .with_code("model_not_supported"));
    }
    // An open circuit answers at once: nothing is loaded or queued.
    state.breakers().admit(&id)?;
    let name = id.clone();
    // A load can take long: it runs off the async threads, and the request
    // still gives up at its time limit or shutdown (the load goes on, for
    // whoever asks next).
    let lease = state
        .bounded(off_async(move || Ok(manager.acquire(&name, keep_alive, None))))
        .await?;
    lease.map_err(|e| state.breakers().on_load_error(&id, e))
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
    /// Seconds from submission to the first token.
    pub ttft: f64,
}

impl Collected {
    /// Take in one event of the choice (not an error); true once it is done.
    fn absorb(&mut self, ev: &GenEvent) -> bool {
        match ev {
            GenEvent::Prompt(p) => self.prompt_logprobs = Some(p.clone()),
            GenEvent::Delta { text, logprobs, .. } => {
                self.text.push_str(text);
                self.logprobs.extend(logprobs.iter().cloned());
            }
            GenEvent::Done {
                finish_reason,
                usage,
                time_to_first_token,
            } => {
                self.finish = Some(*finish_reason);
                self.usage = *usage;
                self.ttft = *time_to_first_token;
                return true;
            }
            GenEvent::Error(_) => {}
        }
        false
    }
}

/// Note what a choice has generated so far in its request's usage (what a
/// request cut short still costs).
fn note_progress(request: Option<&crate::auth::RequestAccess>, index: usize, ev: &GenEvent) {
    let Some(r) = request else { return };
    match ev {
        GenEvent::Delta { generated, .. } => r.progress(index, *generated),
        GenEvent::Done { usage, .. } => r.progress(index, usage.completion_tokens),
        _ => {}
    }
}

/// Wait for choice `index` to finish.
async fn collect(
    mut rx: UnboundedReceiver<GenEvent>,
    index: usize,
    request: Option<crate::auth::RequestAccess>,
) -> ApiResult<Collected> {
    let mut out = Collected::default();
    while let Some(ev) = rx.recv().await {
        if let GenEvent::Error(e) = ev {
            return Err(e.into());
        }
        note_progress(request.as_ref(), index, &ev);
        if out.absorb(&ev) {
            return Ok(out);
        }
    }
    Err(ApiError::internal("generation ended without a result"))
}

/// Wait for every choice, under the request's time limit and the server's
/// shutdown (dropping the receivers cancels the sequences).
pub async fn collect_all(state: &AppState, receivers: Vec<UnboundedReceiver<GenEvent>>) -> ApiResult<Vec<Collected>> {
    let request = crate::auth::current();
    state
        .bounded(futures::future::try_join_all(
            receivers
                .into_iter()
                .enumerate()
                .map(|(i, rx)| collect(rx, i, request.clone())),
        ))
        .await
}

/// The events of a streamed request's choices, merged, `(choice, event)`,
/// under the request's time limit and the server's shutdown.
pub struct ChoiceEvents {
    events: BoxStream<'static, (usize, GenEvent)>,
    deadline: tokio::time::Instant,
    limit: std::time::Duration,
    state: AppState,
    /// The request's usage (its producer may outlive the handler's scope).
    request: Option<crate::auth::RequestAccess>,
}

impl ChoiceEvents {
    pub fn new(state: &AppState, receivers: Vec<UnboundedReceiver<GenEvent>>) -> Self {
        let streams = receivers.into_iter().enumerate().map(|(i, rx)| {
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
                .map(move |ev| (i, ev))
                .boxed()
        });
        let limit = state.config().request_timeout;
        ChoiceEvents {
            events: futures::stream::select_all(streams).boxed(),
            deadline: tokio::time::Instant::now() + limit,
            limit,
            state: state.clone(),
            request: crate::auth::current(),
        }
    }

    /// The stream ended early: its usage record carries `status` (499: the
    /// client left), not the 200 its head had.
    pub fn cut_short(&self, status: u16) {
        if let Some(r) = &self.request {
            r.cut_short(status);
        }
    }

    /// The next event; None when every choice has ended; an error once the
    /// time limit has passed or shutdown cancelled the request (the caller
    /// sends it and ends the stream, which drops the receivers and so
    /// cancels the sequences).
    pub async fn next(&mut self) -> ApiResult<Option<(usize, GenEvent)>> {
        tokio::select! {
            r = tokio::time::timeout_at(self.deadline, self.events.next()) => match r {
                Ok(next) => {
                    if let Some((i, ev)) = &next {
                        note_progress(self.request.as_ref(), *i, ev);
                    }
                    Ok(next)
                }
                Err(_) => {
                    tracing::warn!(seconds = self.limit.as_secs(), "stream timed out; cancelling it");
                    Err(ApiError::timeout(self.limit))
                }
            },
            _ = self.state.cancelled() => {
                tracing::warn!("shutdown grace period over; cancelling the stream");
                Err(ApiError::shutting_down())
            }
        }
    }
}

/// The status a usage record gives a request whose client left (nginx's).
pub const CLIENT_CLOSED: u16 = 499;

/// The client went away, or stopped reading for longer than the write
/// timeout: the stream ends and its work is cancelled.
#[derive(Debug)]
pub struct ClientGone;

/// Where a streamed response's producer writes its events. A send waits at
/// most `--write-timeout` for the client to make room: a client that stops
/// reading cannot hold its model, its KV cache and a task forever.
pub struct SseSink {
    tx: tokio::sync::mpsc::Sender<Event>,
    write_timeout: std::time::Duration,
    /// Where a stream's error is counted (the response itself was a 200)
    /// and its model's circuit breaker hears of it.
    state: AppState,
    request_id: String,
    model: Option<String>,
}

impl SseSink {
    pub async fn send(&self, ev: Event) -> Result<(), ClientGone> {
        match tokio::time::timeout(self.write_timeout, self.tx.send(ev)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                tracing::info!("client disconnected; cancelling its work");
                Err(ClientGone)
            }
            Err(_) => {
                tracing::warn!(
                    seconds = self.write_timeout.as_secs_f64(),
                    "client stopped reading the stream; cancelling its work"
                );
                Err(ClientGone)
            }
        }
    }

    pub async fn send_json<T: serde::Serialize>(&self, v: &T) -> Result<(), ClientGone> {
        self.send(sse_json(v)).await
    }

    /// Relay a request's choice events to the client until every one of
    /// its `n` choices is done: `chunk_of` turns an event into a chunk (or
    /// None to send nothing), then `usage_of` (when the client asked for
    /// usage) makes the usage chunk from the completion and cached token
    /// totals, and `[DONE]` ends the stream. Cached tokens count for the
    /// choices `counts_cached` names (the first choice of each prompt). An
    /// error, the time limit or shutdown ends the stream with an error event.
    /// Completion tokens generated come back in every case (for token
    /// limits); with `collect`, the choices' results too, once the stream
    /// has been sent whole (for the response cache).
    pub async fn relay<C, F, U>(
        &self,
        mut events: ChoiceEvents,
        n: usize,
        counts_cached: impl Fn(usize) -> bool,
        mut chunk_of: F,
        usage_of: Option<U>,
        collect: bool,
    ) -> Relayed
    where
        C: serde::Serialize,
        F: FnMut(usize, GenEvent) -> Option<C>,
        U: FnOnce(usize, usize) -> C,
    {
        let (mut completion, mut cached, mut done) = (0, 0, 0);
        let mut ttft: Option<f64> = None;
        let mut finish = None;
        let mut collected: Option<Vec<Collected>> = collect.then(|| (0..n).map(|_| Collected::default()).collect());
        while done < n {
            let (index, ev) = match events.next().await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(e) => {
                    events.cut_short(e.status.as_u16());
                    self.send_error(&e).await;
                    return Relayed::partial(completion, cached, finish, ttft);
                }
            };
            if let GenEvent::Error(e) = ev {
                let e = ApiError::from(e);
                events.cut_short(e.status.as_u16());
                self.send_error(&e).await;
                return Relayed::partial(completion, cached, finish, ttft);
            }
            if let Some(c) = collected.as_mut().and_then(|c| c.get_mut(index)) {
                c.absorb(&ev);
            }
            if let GenEvent::Done {
                usage,
                finish_reason,
                time_to_first_token,
            } = &ev
            {
                completion += usage.completion_tokens;
                finish = Some(*finish_reason);
                ttft = Some(ttft.map_or(*time_to_first_token, |t: f64| t.min(*time_to_first_token)));
                if counts_cached(index) {
                    cached += usage.cached_tokens;
                }
                done += 1;
            }
            if let Some(c) = chunk_of(index, ev)
                && self.send_json(&c).await.is_err()
            {
                events.cut_short(CLIENT_CLOSED);
                return Relayed::partial(completion, cached, finish, ttft);
            }
        }
        if let Some(usage_of) = usage_of
            && self.send_json(&usage_of(completion, cached)).await.is_err()
        {
            events.cut_short(CLIENT_CLOSED);
            return Relayed::partial(completion, cached, finish, ttft);
        }
        if self.send(sse_done()).await.is_err() {
            events.cut_short(CLIENT_CLOSED);
            return Relayed::partial(completion, cached, finish, ttft);
        }
        Relayed {
            settled: settled(completion, cached, finish, ttft),
            results: collected.filter(|_| done == n),
        }
    }

    /// Store a streamed answer that was sent whole, as its non-streamed
    /// form (`key`: the cache lookup's, when the client allows storing).
    pub fn store(&self, key: Option<String>, answer: Option<ApiResult<Vec<u8>>>) {
        match (key, answer) {
            (Some(key), Some(Ok(body))) => self.state.cache().store(key, body.into()),
            (_, Some(Err(e))) => tracing::warn!(error = %e.message, "a streamed answer could not be stored"),
            _ => {}
        }
    }

    /// An error as the stream's last event.
    pub async fn send_error(&self, e: &ApiError) {
        if e.status.is_server_error() {
            tracing::error!(status = e.status.as_u16(), error = %e.message, "stream failed");
        }
        if let Some(model) = &self.model
            && counts_against_the_model(e)
        {
            self.state.breakers().record(model, Some(&e.message));
        }
        self.state.metrics().error(crate::metrics::ErrorRecord {
            time: crate::metrics::unix_now(),
            request_id: self.request_id.clone(),
            status: e.status.as_u16(),
            kind: e.kind.to_string(),
            code: e.code.map(str::to_string),
            model: self.model.clone(),
            message: e.message.clone(),
        });
        let _ = self.send(sse_json(&e.to_json())).await;
    }
}

/// What a relayed stream produced.
pub struct Relayed {
    /// Of the choices that finished (a choice cut short is not counted).
    pub settled: crate::auth::Settled,
    /// Every choice, when asked for and the stream was sent whole.
    pub results: Option<Vec<Collected>>,
}

impl Relayed {
    fn partial(completion: usize, cached: usize, finish: Option<FinishReason>, ttft: Option<f64>) -> Self {
        Relayed {
            settled: settled(completion, cached, finish, ttft),
            results: None,
        }
    }
}

fn settled(completion: usize, cached: usize, finish: Option<FinishReason>, ttft: Option<f64>) -> crate::auth::Settled {
    crate::auth::Settled {
        completion_tokens: completion,
        cached_tokens: cached,
        finish_reason: finish.map(finish_str),
        ttft,
    }
}

/// How non-streamed choices ended: `cached` says which choices' cached
/// prompt tokens count (each prompt once).
pub fn settled_of(results: &[Collected], counts_cached: impl Fn(usize) -> bool) -> crate::auth::Settled {
    settled(
        results.iter().map(|r| r.usage.completion_tokens).sum(),
        results
            .iter()
            .enumerate()
            .filter(|(i, _)| counts_cached(*i))
            .map(|(_, r)| r.usage.cached_tokens)
            .sum(),
        results.last().and_then(|r| r.finish),
        results.iter().map(|r| r.ttft).reduce(f64::min),
    )
}

/// A streamed (SSE) response whose events `produce` writes, on its own task
/// in the request's span; the one streamer of chat and completions.
pub fn sse_response<F, Fut>(state: &AppState, request_id: &str, produce: F) -> axum::response::Response
where
    F: FnOnce(SseSink) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use axum::response::IntoResponse;
    use tracing::Instrument;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let sink = SseSink {
        tx,
        write_timeout: state.config().write_timeout,
        state: state.clone(),
        request_id: request_id.to_string(),
        model: crate::middleware::metrics::current_model(),
    };
    tokio::spawn(produce(sink).instrument(tracing::Span::current()));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
    axum::response::sse::Sse::new(stream).into_response()
}

/// Whether an error is the server's failure for its model's circuit
/// breaker: 5xx, except answers about load (overload, an open circuit,
/// shutdown, no room on a device), which say nothing about the model.
pub fn counts_against_the_model(e: &ApiError) -> bool {
    e.status.is_server_error()
        && e.kind != "server_overloaded"
        && !matches!(
            e.code,
            Some("model_unavailable" | "server_shutting_down" | "model_placement_failed")
        )
}

/// Whether sampling settings give the same answer every time: greedy
/// (temperature 0, or below the greedy cut) or a fixed seed.
pub fn deterministic(temperature: Option<f32>, seed: Option<i64>) -> bool {
    seed.is_some() || temperature.is_some_and(|t| t < hfms_engine::generate::sampling::GREEDY_BELOW)
}

/// The response cache's answer for a request, before any model work.
pub async fn cache_lookup(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    endpoint: &str,
    model: &str,
    raw: &[u8],
    deterministic: bool,
) -> ApiResult<crate::cache::Lookup> {
    let desc = state.manager().resolve(model);
    // A key must not read answers for a model it may not use.
    allowed_model(model, desc.as_ref())?;
    if let Some(d) = &desc {
        // A hit never reaches `acquire`: name the model for metrics and usage.
        crate::middleware::metrics::note_model(&d.id);
    }
    let desc = desc.as_ref().filter(|d| d.servable());
    let tenant = crate::auth::current()
        .and_then(|c| c.caller.key().map(|k| k.id.clone()))
        .unwrap_or_default();
    let lookup = state
        .cache()
        .lookup(headers, endpoint, &tenant, desc, raw, deterministic)
        .await;
    if let crate::cache::Lookup::Hit(stored) = &lookup {
        crate::auth::note_cache_hit(stored);
    }
    Ok(lookup)
}

/// The caller's key's model allow-list, checked against the model's id and
/// aliases.
fn allowed_model(requested: &str, desc: Option<&hfms_engine::discover::ModelDescription>) -> ApiResult<()> {
    let names: Vec<&str> = desc.map(|d| d.names().collect()).unwrap_or_default();
    crate::auth::check_model(requested, &names)
}

/// A computed answer as JSON: stored when the cache lookup missed (and the
/// client allows it), with `x-cache: miss` when it was cacheable.
pub fn answer(state: &AppState, body: Vec<u8>, lookup: crate::cache::Lookup) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = axum::body::Bytes::from(body);
    let resp = ([(axum::http::header::CONTENT_TYPE, "application/json")], body.clone()).into_response();
    match lookup {
        crate::cache::Lookup::Miss { key, store } => {
            if store {
                state.cache().store(key, body);
            }
            replay::with_x_cache(resp, "miss")
        }
        _ => resp,
    }
}

/// Run CPU-heavy request work (template rendering, tokenization,
/// detokenization, large JSON) on the blocking pool, in the request's span:
/// the async threads only move bytes, so `/health` answers while they run.
pub async fn off_async<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| ApiError::internal(format!("a blocking task failed: {e}")))?
}

/// An SSE `data:` event with a JSON body.
pub fn sse_json<T: serde::Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string()))
}

pub fn sse_done() -> Event {
    Event::default().data("[DONE]")
}
