//! What the engine reports while it works: the seam metrics plug into. The
//! engine calls these hooks from its own threads (a model's scheduler or
//! batcher thread, a loading thread); an implementation must be cheap (the
//! token hook runs once per generated token) and must not block. Gauges
//! (running, waiting, KV usage) are not reported here: a metrics exporter
//! reads them from the stats of the loaded models when scraped.

use std::sync::Arc;
use std::time::Duration;

/// Why a sequence ended (vLLM's `finished_reason` values, plus errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    /// The client went away, the request timed out or shutdown cancelled it.
    Abort,
    Error,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Abort => "abort",
            Finish::Error => "error",
        }
    }
}

/// One generation request (sequence) that ended, with its timings.
#[derive(Debug, Clone)]
pub struct FinishedSequence {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub generation_tokens: usize,
    /// Submission to the first admission into a step.
    pub queue: Option<Duration>,
    /// First admission to the first generated token.
    pub prefill: Option<Duration>,
    /// First generated token to the end.
    pub decode: Option<Duration>,
    /// Submission to the end.
    pub e2e: Duration,
}

/// Hooks of one generation model's scheduler.
pub trait GenerationObserver: Send + Sync {
    /// A step ran: how many sequences and tokens it carried.
    fn step(&self, _sequences: usize, _tokens: usize) {}
    /// Prompt tokens computed in a step (a preempted sequence's prompt
    /// counts again when it is recomputed, as in vLLM).
    fn prompt_tokens(&self, _n: usize) {}
    /// A token was generated; `since_previous`: time since this sequence's
    /// previous token (None for its first).
    fn token(&self, _since_previous: Option<Duration>) {}
    /// A sequence's first token arrived, this long after submission.
    fn first_token(&self, _ttft: Duration) {}
    fn finished(&self, _s: &FinishedSequence) {}
    fn preempted(&self) {}
    /// Prefix cache lookups: blocks asked for and blocks found.
    fn prefix_lookup(&self, _queried: u64, _hit: u64) {}
}

/// Hooks of one embedding model's batcher.
pub trait EmbeddingObserver: Send + Sync {
    /// A batch ran: inputs, tokens, seconds of compute.
    fn batch(&self, _inputs: usize, _tokens: usize, _seconds: f64) {}
    /// A request was answered (or failed): its inputs, tokens and time
    /// from submission to its first batch.
    fn request(&self, _inputs: usize, _tokens: usize, _queue: Duration) {}
    fn cancelled(&self) {}
}

/// Why a model left memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnloadCause {
    /// Asked for (`/models/unload`, `keep_alive: 0`).
    Request,
    /// Its keep-alive ran out.
    Expired,
    /// Evicted to make room for another.
    Evicted,
}

impl UnloadCause {
    pub fn as_str(self) -> &'static str {
        match self {
            UnloadCause::Request => "request",
            UnloadCause::Expired => "expired",
            UnloadCause::Evicted => "evicted",
        }
    }
}

/// Makes the observers of each model, and hears about loads and unloads.
pub trait Observers: Send + Sync + std::fmt::Debug {
    fn generation(&self, _model: &str) -> Arc<dyn GenerationObserver> {
        Arc::new(Nothing)
    }
    fn embedding(&self, _model: &str) -> Arc<dyn EmbeddingObserver> {
        Arc::new(Nothing)
    }
    fn model_loaded(&self, _model: &str, _device: &str, _seconds: f64) {}
    fn model_load_failed(&self, _model: &str) {}
    fn model_unloaded(&self, _model: &str, _cause: UnloadCause) {}
}

/// Observes nothing (tests, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct Nothing;

impl GenerationObserver for Nothing {}
impl EmbeddingObserver for Nothing {}
impl Observers for Nothing {}
