//! The generation scheduler of one decoder model: a dedicated thread that
//! steps every running sequence together (continuous batching).
//!
//! Each step takes, under a token budget, one new token from every decoding
//! sequence and a chunk of prompt from sequences still prefilling, runs one
//! forward over all of them, samples, and streams the text back through each
//! request's channel. Sequences join and leave between steps. A request whose
//! receiver is gone (client disconnected) is dropped at the next step and its
//! KV blocks are freed. When the KV pool runs dry the newest sequence is
//! preempted: its blocks are freed and it is recomputed later, so accepted
//! requests never fail for lack of cache.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use tracing::Span;

use super::grammar::{Grammar, GrammarVocab};
use super::prefix::PrefixCache;
use super::sampling::{Sampled, Sampler, SamplingParams};
use super::stop::StopText;
use crate::compute::ComputePool;
use crate::compute::scratch;
use crate::error::{EngineError, Result};
use crate::kv::{KvPool, SeqKv};
use crate::observe::{Finish, FinishedSequence, GenerationObserver, Nothing};
use crate::skills::llama::{CausalLm, LogitsWanted, StepItem};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// What to generate for one sequence.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Log-probabilities of the prompt tokens themselves (completions
    /// `echo` + `logprobs`): the number of alternatives per position.
    pub prompt_logprobs: Option<usize>,
    /// Constrain the output to a grammar (`response_format`, tool calls).
    pub constraint: Option<Constraint>,
    /// Label for log lines about this sequence (the request id).
    pub tag: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// One generated (or prompt) token with its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

/// A prompt position: its token's text and, from the second position on,
/// the log-probability the model gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptToken {
    pub token: String,
    pub logprob: Option<TokenLogprob>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug)]
pub enum GenEvent {
    /// Prompt token log-probabilities, before any output.
    Prompt(Vec<PromptToken>),
    /// New text, and the tokens whose text it completes (when logprobs
    /// were asked for).
    Delta {
        text: String,
        logprobs: Vec<TokenLogprob>,
        /// Tokens this choice has generated so far (text may lag behind
        /// them while a stop string could still match): what a choice cut
        /// short has cost.
        generated: usize,
    },
    Done {
        finish_reason: FinishReason,
        usage: GenUsage,
        /// Seconds from submission to the first generated token.
        time_to_first_token: f64,
    },
    Error(EngineError),
}

/// A grammar the output must follow: from the first token, or (`trigger`)
/// from just after the output first contains the trigger text, the way a
/// tool call is constrained once the model opens one.
#[derive(Debug, Clone)]
pub struct Constraint {
    pub grammar: Grammar,
    pub trigger: Option<String>,
}

/// A sequence's constraint and whether it applies yet.
struct SeqConstraint {
    grammar: Grammar,
    trigger: Option<String>,
    active: bool,
}

/// Tunables of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most tokens (prefill + decode) in one forward.
    pub max_batch_tokens: usize,
    /// Most sequences running at once.
    pub max_running: usize,
    /// Most sequences waiting to start; beyond it `submit` refuses with
    /// `Overloaded` (bounded queue: memory bounded by configuration).
    pub max_waiting: usize,
    /// KV cache memory for this model.
    pub kv_budget_bytes: usize,
    pub block_size: usize,
    /// Reuse the KV of prompt prefixes computed before.
    pub prefix_caching: bool,
}

impl SchedulerConfig {
    /// The defaults (also `hfms serve`'s: its flags name these).
    pub const DEFAULT: SchedulerConfig = SchedulerConfig {
        max_batch_tokens: 512,
        max_running: 64,
        max_waiting: 256,
        kv_budget_bytes: 512 << 20,
        block_size: 16,
        prefix_caching: true,
    };
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Counters shared with the status page and metrics.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    /// KV blocks held by sequences (blocks only the prefix cache holds are
    /// free for the taking and not counted).
    pub kv_used_blocks: AtomicUsize,
    pub kv_total_blocks: AtomicUsize,
    pub steps: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    pub cancelled: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Prefix cache: full prompt blocks looked up, found, and held.
    pub prefix_queried_blocks: AtomicU64,
    pub prefix_hit_blocks: AtomicU64,
    pub prefix_cached_blocks: AtomicUsize,
}

struct Job {
    req: GenerateRequest,
    events: UnboundedSender<GenEvent>,
    submitted: Instant,
    /// The submitter's span (the HTTP request's): the parent of the phase
    /// spans and of this sequence's log lines, on the scheduler thread.
    span: Span,
    /// The queue span, opened at submission.
    queued: Span,
}

/// A handle to a model's scheduler thread. Dropping every handle stops it.
#[derive(Clone)]
pub struct Generator {
    tx: mpsc::Sender<Job>,
    max_waiting: usize,
    stats: Arc<SchedulerStats>,
    model: Arc<dyn CausalLm>,
    tokenizer: Arc<Tokenizer>,
    /// Built on the first constrained request (a trie of the vocabulary).
    grammar_vocab: Arc<std::sync::OnceLock<std::result::Result<Arc<GrammarVocab>, String>>>,
}

impl Generator {
    pub fn spawn(
        model: Arc<dyn CausalLm>,
        tokenizer: Arc<Tokenizer>,
        pool: ComputePool,
        config: SchedulerConfig,
        name: &str,
    ) -> Result<Self> {
        Self::spawn_observed(model, tokenizer, pool, config, name, Arc::new(Nothing))
    }

    /// `spawn`, reporting to `observer` (metrics).
    pub fn spawn_observed(
        model: Arc<dyn CausalLm>,
        tokenizer: Arc<Tokenizer>,
        pool: ComputePool,
        config: SchedulerConfig,
        name: &str,
        observer: Arc<dyn GenerationObserver>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(SchedulerStats::default());
        let layout = model.kv_layout(config.block_size);
        // A hostile file can describe a model whose KV cache holds nothing
        // (no layers or no KV heads): refused, not a division by zero.
        let max_blocks = config
            .kv_budget_bytes
            .checked_div(layout.block_bytes())
            .ok_or_else(|| EngineError::format("the model's KV cache has zero bytes a block (no layers or KV heads)"))?
            .max(1);
        let kv = KvPool::with_store(
            layout,
            config.kv_budget_bytes,
            model.new_block_store(layout, max_blocks)?,
        );
        stats.kv_total_blocks.store(kv.max_blocks(), Ordering::Relaxed);
        let max_waiting = config.max_waiting;
        let prefix = PrefixCache::new(config.prefix_caching, config.block_size);
        let mut sched = Scheduler {
            prefix,
            model: model.clone(),
            tokenizer: tokenizer.clone(),
            pool,
            config,
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            stats: stats.clone(),
            next_id: 0,
            observer,
        };
        std::thread::Builder::new()
            .name(format!("hfms-sched-{name}"))
            .spawn(move || sched.run(rx))
            .map_err(|e| EngineError::internal(format!("scheduler thread: {e}")))?;
        Ok(Generator {
            tx,
            max_waiting,
            stats,
            model,
            tokenizer,
            grammar_vocab: Arc::default(),
        })
    }

    /// The vocabulary for constrained decoding, built on first use (CPU
    /// work: call it off the async runtime).
    pub fn grammar_vocab(&self) -> Result<Arc<GrammarVocab>> {
        self.grammar_vocab
            .get_or_init(|| {
                GrammarVocab::new(self.tokenizer.clone(), self.model.config().vocab)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(EngineError::internal)
    }

    /// Refuse `n` more sequences when the waiting queue would overflow.
    pub fn admit_check(&self, n: usize) -> Result<()> {
        let waiting = self.stats.waiting.load(Ordering::Relaxed);
        if waiting + n > self.max_waiting {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::Overloaded(format!(
                "the model's queue is full ({waiting} requests waiting, at most {}); retry shortly",
                self.max_waiting
            )));
        }
        Ok(())
    }

    pub fn stats(&self) -> &Arc<SchedulerStats> {
        &self.stats
    }

    pub fn model(&self) -> &Arc<dyn CausalLm> {
        &self.model
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Queue a request; events arrive on the returned channel. Dropping the
    /// receiver cancels the request.
    pub fn submit(&self, req: GenerateRequest) -> Result<tokio::sync::mpsc::UnboundedReceiver<GenEvent>> {
        self.admit_check(1)?;
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let span = Span::current();
        let queued = phase_span(&span, Phase::Queue);
        self.tx
            .send(Job {
                req,
                events,
                submitted: Instant::now(),
                span,
                queued,
            })
            .map_err(|_| {
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                EngineError::Unavailable("the model's scheduler has stopped".into())
            })?;
        Ok(rx)
    }
}

struct Sequence {
    job: Job,
    /// Prompt followed by generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    kv: SeqKv,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    text: StopText,
    generated: usize,
    /// Generated tokens whose text is not yet released: (logprob, end byte
    /// offset of the token's text in the output).
    pending: VecDeque<(TokenLogprob, usize)>,
    /// End offset of the last token whose logprob was sent.
    sent_end: usize,
    /// Text released by the final step, sent by `finish`.
    tail: String,
    /// The grammar the output follows, if any.
    constraint: Option<SeqConstraint>,
    /// Chain hashes of the sequence's full blocks (prefix cache).
    hashes: Vec<u64>,
    /// Prompt tokens served from the prefix cache at first admission.
    cached_tokens: Option<usize>,
    first_token_at: Option<Instant>,
    /// When it first joined a step (queue time ends), and when its latest
    /// token came (inter-token latency).
    admitted_at: Option<Instant>,
    last_token_at: Option<Instant>,
    prompt_logprobs_sent: bool,
    prompt_logprobs: Vec<PromptToken>,
    /// Admission order, for choosing whom to preempt.
    admitted: u64,
    /// The span of the phase the sequence is in (queue, prefill, decode),
    /// a child of its request's; the next phase's replaces (closes) it.
    phase: Span,
}

impl Sequence {
    fn unfed(&self) -> usize {
        self.tokens.len() - self.kv.len
    }

    fn cancelled(&self) -> bool {
        self.job.events.is_closed()
    }

    /// What metrics record of a sequence that ends now.
    /// End the current phase's span and start the next one's.
    fn enter(&mut self, phase: Phase) {
        // The old span closes first, so phases do not overlap.
        self.phase = Span::none();
        self.phase = phase_span(&self.job.span, phase);
    }

    /// Call before the last event goes out: the phase span closes here, so
    /// it ends before the request's span does.
    fn ended(&mut self, finish: Finish) -> FinishedSequence {
        // The phase it ended in says how (declared on every phase span).
        self.phase.record("finish_reason", finish.as_str());
        self.phase.record("completion_tokens", self.generated);
        if finish == Finish::Error {
            self.phase.record("otel.status_code", "error");
        }
        self.phase = Span::none();
        let now = Instant::now();
        let submitted = self.job.submitted;
        FinishedSequence {
            finish,
            prompt_tokens: self.prompt_len,
            generation_tokens: self.generated,
            queue: self.admitted_at.map(|a| a.saturating_duration_since(submitted)),
            prefill: self
                .admitted_at
                .zip(self.first_token_at)
                .map(|(a, f)| f.saturating_duration_since(a)),
            decode: self.first_token_at.map(|f| now.saturating_duration_since(f)),
            e2e: now.saturating_duration_since(submitted),
        }
    }
}

struct Scheduler {
    prefix: PrefixCache,
    model: Arc<dyn CausalLm>,
    tokenizer: Arc<Tokenizer>,
    pool: ComputePool,
    config: SchedulerConfig,
    kv: KvPool,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    stats: Arc<SchedulerStats>,
    next_id: u64,
    observer: Arc<dyn GenerationObserver>,
}

enum Outcome {
    Continue,
    Finished(FinishReason),
    /// The sequence cannot go on (its grammar failed): an error, never an
    /// output that claims to be complete.
    Failed(EngineError),
}

impl Scheduler {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        // Step buffers are reused while there is work, freed when idle.
        let mut keep: Option<scratch::Keep> = None;
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                keep = None;
                // Idle: what /status shows must be true while we wait.
                self.publish_stats();
                match rx.recv() {
                    Ok(job) => self.enqueue(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.enqueue(job);
            }
            self.drop_cancelled();
            self.admit();
            if self.running.is_empty() {
                // Nothing admissible (every waiting sequence was cancelled).
                continue;
            }
            keep.get_or_insert_with(scratch::keep);
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
            if ok.is_err() {
                tracing::error!("a model step panicked; failing the sequences in it");
                for mut s in std::mem::take(&mut self.running) {
                    self.observer.finished(&s.ended(Finish::Error));
                    let _ = s
                        .job
                        .events
                        .send(GenEvent::Error(EngineError::internal("model step failed")));
                    s.kv.free(&mut self.kv);
                }
            }
            self.publish_stats();
        }
    }

    fn publish_stats(&self) {
        self.stats
            .prefix_queried_blocks
            .store(self.prefix.queried_blocks, Ordering::Relaxed);
        self.stats
            .prefix_hit_blocks
            .store(self.prefix.hit_blocks, Ordering::Relaxed);
        self.stats
            .prefix_cached_blocks
            .store(self.prefix.cached_blocks(), Ordering::Relaxed);
        self.stats.running.store(self.running.len(), Ordering::Relaxed);
        // Blocks held by sequences; what only the prefix cache holds is
        // reclaimable and shown as prefix_cached_blocks.
        let cache_only = self.prefix.evictable(&self.kv);
        self.stats
            .kv_used_blocks
            .store(self.kv.used_blocks() - cache_only, Ordering::Relaxed);
    }

    fn enqueue(&mut self, mut job: Job) {
        // The sequence holds the only handle, so the span closes when the
        // next phase replaces it.
        let queued = std::mem::replace(&mut job.queued, Span::none());
        // A request the model cannot run fails alone, here, rather than in
        // a step it shares with others.
        if let Err(e) = self.check(&job.req) {
            queued.record("finish_reason", Finish::Error.as_str());
            queued.record("otel.status_code", "error");
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            self.observer.finished(&FinishedSequence {
                finish: Finish::Error,
                prompt_tokens: job.req.prompt.len(),
                generation_tokens: 0,
                queue: None,
                prefill: None,
                decode: None,
                e2e: job.submitted.elapsed(),
            });
            let _ = job.events.send(GenEvent::Error(e));
            return;
        }
        let prompt = job.req.prompt.clone();
        let sampler = Sampler::new(job.req.sampling.clone());
        let stops = job.req.stop.clone();
        self.waiting.push_back(Sequence {
            prompt_len: prompt.len(),
            tokens: prompt,
            kv: SeqKv::default(),
            sampler,
            decoder: IncrementalDecoder::new(),
            text: StopText::new(stops),
            generated: 0,
            pending: VecDeque::new(),
            sent_end: 0,
            tail: String::new(),
            constraint: job.req.constraint.clone().map(|c| SeqConstraint {
                active: c.trigger.is_none(),
                grammar: c.grammar,
                trigger: c.trigger,
            }),
            hashes: Vec::new(),
            cached_tokens: None,
            first_token_at: None,
            admitted_at: None,
            last_token_at: None,
            prompt_logprobs_sent: false,
            prompt_logprobs: Vec::new(),
            admitted: 0,
            phase: queued,
            job,
        });
        self.publish_stats();
    }

    fn check(&self, req: &GenerateRequest) -> Result<()> {
        let c = self.model.config();
        if req.prompt.is_empty() {
            return Err(EngineError::invalid("the prompt has no tokens", Some("prompt")));
        }
        if let Some(bad) = req.prompt.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(EngineError::invalid(
                format!("token id {bad} is outside the vocabulary (size {})", c.vocab),
                Some("prompt"),
            ));
        }
        if req.prompt.len() >= c.context_length {
            return Err(EngineError::invalid(
                format!(
                    "the prompt has {} tokens; this model's context is {}",
                    req.prompt.len(),
                    c.context_length
                ),
                Some("prompt"),
            ));
        }
        Ok(())
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len() + self.running.len();
        let stats = &self.stats;
        let observer = &self.observer;
        self.waiting.retain_mut(|s| {
            let gone = s.cancelled();
            if gone {
                stats.waiting.fetch_sub(1, Ordering::Relaxed);
                observer.finished(&s.ended(Finish::Abort));
                tracing::info!(parent: &s.job.span, request_id = %s.job.req.tag, "client went away; dropping the queued sequence");
            }
            !gone
        });
        let kv = &mut self.kv;
        self.running.retain_mut(|s| {
            if s.cancelled() {
                tracing::info!(
                    parent: &s.job.span,
                    request_id = %s.job.req.tag,
                    generated = s.generated,
                    "client went away; stopping the sequence and freeing its KV cache"
                );
                observer.finished(&s.ended(Finish::Abort));
                s.kv.free(kv);
                false
            } else {
                true
            }
        });
        let gone = before - self.waiting.len() - self.running.len();
        if gone > 0 {
            self.stats.cancelled.fetch_add(gone as u64, Ordering::Relaxed);
            tracing::debug!(gone, "dropped cancelled sequences");
        }
    }

    /// Blocks that can be had now: free ones plus cached ones no sequence
    /// holds.
    fn available_blocks(&self) -> usize {
        self.kv.available_blocks() + self.prefix.evictable(&self.kv)
    }

    /// New KV blocks a plan's sequences need for its tokens.
    fn blocks_for(&self, plan: &[(usize, usize)]) -> usize {
        plan.iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                s.kv.blocks_needed(&self.kv, s.kv.len + n)
            })
            .sum()
    }

    /// FIFO admission while a first chunk of each prompt fits in the cache.
    fn admit(&mut self) {
        // Blocks the running sequences take in the coming step: a newcomer
        // must fit beside them, or the step preempts it straight away (and a
        // preempted sequence whose blocks are still cached would bounce in
        // and out at every step).
        let mut committed = self.blocks_for(&self.plan());
        while self.running.len() < self.config.max_running {
            let Some(front) = self.waiting.front_mut() else {
                break;
            };
            // Reuse what the prefix cache has of this prompt (for a
            // preempted sequence, of its prompt and its output so far).
            let counted = (self.prefix.queried_blocks, self.prefix.hit_blocks);
            let reused = if front.kv.blocks.is_empty() && front.job.req.prompt_logprobs.is_none() {
                let n = front.tokens.len();
                Some(
                    self.prefix
                        .attach(&front.tokens, n, &mut front.kv, &mut front.hashes, &mut self.kv),
                )
            } else {
                None
            };
            let first_chunk = front.unfed().min(self.config.max_batch_tokens);
            let need = front.kv.blocks_needed(&self.kv, front.kv.len + first_chunk.max(1));
            // `available_blocks`, with `front` still borrowed.
            let available = self.kv.available_blocks() + self.prefix.evictable(&self.kv);
            // Keep a block per running sequence in hand for their decode.
            let fits = need + committed <= available
                && (self.running.is_empty() || need + committed + self.running.len() <= available);
            if !fits {
                // A waiting sequence holds no blocks: what it attached goes
                // back to the cache (evictable again), or the pool would
                // shrink under the running sequences with every preemption.
                // The lookup is tried again next step: count it once.
                if reused.is_some() {
                    front.kv.free(&mut self.kv);
                    front.hashes.clear();
                    (self.prefix.queried_blocks, self.prefix.hit_blocks) = counted;
                }
                break;
            }
            if let Some(reused) = reused {
                let prompt_len = front.prompt_len;
                front.cached_tokens.get_or_insert(reused.min(prompt_len));
                self.observer.prefix_lookup(
                    self.prefix.queried_blocks - counted.0,
                    self.prefix.hit_blocks - counted.1,
                );
            }
            front.admitted_at.get_or_insert_with(Instant::now);
            committed += need;
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            s.enter(Phase::Prefill);
            s.phase.record("prompt_tokens", s.prompt_len);
            if let Some(cached) = s.cached_tokens {
                s.phase.record("cached_tokens", cached);
            }
            self.next_id += 1;
            s.admitted = self.next_id;
            self.running.push(s);
            // `waiting` counts submitted-but-not-running sequences exactly
            // (submit adds, admission and cancellation take away), so the
            // queue bound holds even between steps.
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Free the newest running sequence's cache and send it back to the
    /// front of the queue; it will recompute its tokens when readmitted.
    fn preempt_newest(&mut self) {
        let Some(idx) = self
            .running
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| s.admitted)
            .map(|(i, _)| i)
        else {
            return;
        };
        let mut s = self.running.swap_remove(idx);
        s.kv.free(&mut self.kv);
        s.hashes.clear();
        self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
        self.observer.preempted();
        s.enter(Phase::Queue);
        s.phase.record("preempted", true);
        tracing::info!(
            parent: &s.job.span,
            request_id = %s.job.req.tag,
            tokens = s.tokens.len(),
            "KV cache full: preempting the newest sequence"
        );
        self.waiting.push_front(s);
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
    }

    /// Which sequences feed how many tokens this step: decode tokens first
    /// (one each, oldest first), then prompt chunks, under the token budget.
    fn plan(&self) -> Vec<(usize, usize)> {
        let mut plan = Vec::new();
        let mut budget = self.config.max_batch_tokens;
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_by_key(|&i| (self.running[i].unfed() > 1, self.running[i].admitted));
        for i in order {
            if budget == 0 {
                break;
            }
            let s = &self.running[i];
            let mut n = s.unfed().min(budget);
            // Prompt logprobs need every position's logits: keep chunks small.
            if s.job.req.prompt_logprobs.is_some() && s.kv.len < s.prompt_len {
                n = n.min(64);
            }
            if n > 0 {
                plan.push((i, n));
                budget -= n;
            }
        }
        plan
    }

    fn step(&mut self) {
        // Reserve cache for the plan, preempting the newest sequences while
        // it does not fit.
        let (plan, need) = loop {
            let plan = self.plan();
            let need = self.blocks_for(&plan);
            if need <= self.available_blocks() {
                break (plan, need);
            }
            if self.running.len() > 1 {
                self.preempt_newest();
                continue;
            }
            // A single sequence that does not fit has outgrown the cache.
            if let Some(mut s) = self.running.pop() {
                self.observer.finished(&s.ended(Finish::Error));
                let _ = s.job.events.send(GenEvent::Error(EngineError::invalid(
                    format!(
                        "the request needs more KV cache than this model is configured with ({} tokens)",
                        self.kv.capacity_tokens()
                    ),
                    None,
                )));
                s.kv.free(&mut self.kv);
            }
            return;
        };
        self.prefix.make_room(need, &mut self.kv);
        for &(i, n) in &plan {
            let s = &mut self.running[i];
            let total = s.kv.len + n;
            if s.kv.reserve(&mut self.kv, total).is_err() {
                return;
            }
        }

        let items: Vec<StepItem<'_>> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                let end = s.kv.len + n;
                let logits = if s.job.req.prompt_logprobs.is_some() && s.kv.len < s.prompt_len {
                    LogitsWanted::All
                } else if end == s.tokens.len() {
                    LogitsWanted::Last
                } else {
                    LogitsWanted::None
                };
                StepItem {
                    tokens: &s.tokens[s.kv.len..end],
                    start: s.kv.len,
                    kv: &s.kv,
                    logits,
                }
            })
            .collect();
        let wanted: Vec<LogitsWanted> = items.iter().map(|it| it.logits).collect();
        let result = self.model.forward(&items, &mut self.kv, &self.pool);
        drop(items);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.observer.step(plan.len(), plan.iter().map(|&(_, n)| n).sum());
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, sequences = plan.len(), "model step failed");
                self.fail_culprits(&plan, &wanted, e);
                return;
            }
        };
        let vocab = self.model.config().vocab;
        let mut offset = 0;
        let mut finished: Vec<(usize, std::result::Result<FinishReason, EngineError>)> = Vec::new();
        for (&(i, n), want) in plan.iter().zip(&wanted) {
            let s = &mut self.running[i];
            let start = s.kv.len;
            s.kv.len += n;
            self.prefix.register(&s.tokens, &s.kv, &mut s.hashes, &mut self.kv);
            let prompt_fed = (start + n).min(s.prompt_len).saturating_sub(start.min(s.prompt_len));
            self.stats.prompt_tokens.fetch_add(prompt_fed as u64, Ordering::Relaxed);
            if prompt_fed > 0 {
                self.observer.prompt_tokens(prompt_fed);
            }
            let rows = match want {
                LogitsWanted::None => 0,
                LogitsWanted::Last => 1,
                LogitsWanted::All => n,
            };
            let block = &logits[offset * vocab..(offset + rows) * vocab];
            offset += rows;
            if *want == LogitsWanted::All {
                collect_prompt_logprobs(s, &self.tokenizer, start, n, block, vocab);
            }
            if s.kv.len == s.tokens.len() && rows > 0 {
                let last = &block[(rows - 1) * vocab..rows * vocab];
                match emit_next(s, &self.tokenizer, last, self.model.config().context_length) {
                    Outcome::Continue => {}
                    Outcome::Finished(r) => finished.push((i, Ok(r))),
                    Outcome::Failed(e) => finished.push((i, Err(e))),
                }
                self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                match s.last_token_at.replace(now) {
                    Some(prev) => self.observer.token(Some(now.saturating_duration_since(prev))),
                    None => {
                        self.observer.token(None);
                        if s.generated == 1 {
                            self.observer
                                .first_token(now.saturating_duration_since(s.job.submitted));
                        }
                    }
                }
            }
        }
        finished.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        for (i, reason) in finished {
            let mut s = self.running.swap_remove(i);
            let reason = match reason {
                Ok(r) => r,
                Err(e) => {
                    self.observer.finished(&s.ended(Finish::Error));
                    tracing::error!(parent: &s.job.span, request_id = %s.job.req.tag, error = %e, "sequence failed");
                    let _ = s.job.events.send(GenEvent::Error(e));
                    s.kv.free(&mut self.kv);
                    continue;
                }
            };
            self.observer.finished(&s.ended(match reason {
                FinishReason::Stop => Finish::Stop,
                FinishReason::Length => Finish::Length,
            }));
            finish(&mut s, &self.tokenizer, reason);
            s.kv.free(&mut self.kv);
        }
        scratch::give_back(logits);
    }
}

impl Scheduler {
    /// After a failed step: find which sequences fail on their own and
    /// fail only those; the others redo their tokens next step (their KV
    /// length did not advance, so the positions are simply written again).
    fn fail_culprits(&mut self, plan: &[(usize, usize)], wanted: &[LogitsWanted], batch_error: EngineError) {
        let mut culprits: Vec<(usize, EngineError)> = Vec::new();
        if plan.len() == 1 {
            culprits.push((plan[0].0, batch_error));
        } else {
            for (&(i, n), &logits) in plan.iter().zip(wanted) {
                let s = &self.running[i];
                let item = StepItem {
                    tokens: &s.tokens[s.kv.len..s.kv.len + n],
                    start: s.kv.len,
                    kv: &s.kv,
                    logits,
                };
                if let Err(e) = self.model.forward(&[item], &mut self.kv, &self.pool) {
                    culprits.push((i, e));
                }
            }
            if culprits.is_empty() {
                // Fails only together: nobody can be singled out.
                culprits = plan
                    .iter()
                    .map(|&(i, _)| (i, EngineError::internal(batch_error.to_string())))
                    .collect();
            }
        }
        culprits.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        for (i, e) in culprits {
            let mut s = self.running.swap_remove(i);
            self.observer.finished(&s.ended(Finish::Error));
            tracing::error!(parent: &s.job.span, request_id = %s.job.req.tag, error = %e, "sequence failed in a model step");
            // Only what the client asked for is its fault (a 400); the
            // rest is the server's.
            let e = match e {
                e @ EngineError::InvalidRequest { .. } => e,
                other => EngineError::internal(other.to_string()),
            };
            let _ = s.job.events.send(GenEvent::Error(e));
            s.kv.free(&mut self.kv);
        }
    }
}

fn logprob_entry(tok: &Tokenizer, id: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprob {
    TokenLogprob {
        id,
        token: tok.token_text(id),
        bytes: tok.token_bytes(id),
        logprob,
        top: top
            .iter()
            .map(|&(t, lp)| TopLogprob {
                id: t,
                token: tok.token_text(t),
                bytes: tok.token_bytes(t),
                logprob: lp,
            })
            .collect(),
    }
}

fn collect_prompt_logprobs(s: &mut Sequence, tok: &Tokenizer, start: usize, n: usize, block: &[f32], vocab: usize) {
    // `prompt_logprobs[p]` is position p. A sequence preempted during its
    // prompt recomputes it from the start: positions it has already are
    // skipped, and once sent there is nothing more to collect.
    if s.prompt_logprobs_sent {
        return;
    }
    let k = s.job.req.prompt_logprobs.unwrap_or(0);
    if start == 0 && s.prompt_logprobs.is_empty() {
        s.prompt_logprobs.push(PromptToken {
            token: tok.token_text(s.tokens[0]),
            logprob: None,
        });
    }
    for j in 0..n {
        let pos = start + j;
        // Row j predicts the token at pos + 1, if that is still the prompt.
        let next = pos + 1;
        if next >= s.prompt_len {
            break;
        }
        if next < s.prompt_logprobs.len() {
            continue;
        }
        let lp = crate::compute::ops::log_softmax(&block[j * vocab..(j + 1) * vocab]);
        let id = s.tokens[next];
        let top = super::sampling::top_k_indices(&lp, k);
        let entry = logprob_entry(tok, id, lp[id as usize], &top);
        s.prompt_logprobs.push(PromptToken {
            token: entry.token.clone(),
            logprob: Some(entry),
        });
    }
    if s.prompt_logprobs.len() >= s.prompt_len && !s.prompt_logprobs_sent {
        s.prompt_logprobs_sent = true;
        let _ = s
            .job
            .events
            .send(GenEvent::Prompt(std::mem::take(&mut s.prompt_logprobs)));
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Queue,
    Prefill,
    Decode,
}

/// A span for one phase of a sequence, under its request's span. Every
/// phase declares the same fields, so that whichever the sequence ends in
/// can say how it ended.
fn phase_span(request: &Span, phase: Phase) -> Span {
    use tracing::field::Empty;
    macro_rules! span {
        ($name:literal) => {
            tracing::info_span!(parent: request, $name,
                prompt_tokens = Empty, cached_tokens = Empty, preempted = Empty,
                completion_tokens = Empty, finish_reason = Empty, otel.status_code = Empty)
        };
    }
    match phase {
        Phase::Queue => span!("queue"),
        Phase::Prefill => span!("prefill"),
        Phase::Decode => span!("decode"),
    }
}

/// Sample the next token of `s`, stream what can be shown, and say whether
/// the sequence is done.
fn emit_next(s: &mut Sequence, tok: &Tokenizer, logits: &[f32], context_length: usize) -> Outcome {
    let eos_token = |t: u32| tok.eos().contains(&t);
    let Sampled { id, logprob, top } = match s.constraint.as_mut().filter(|c| c.active) {
        None => s.sampler.sample(logits),
        Some(c) => {
            // Only tokens the grammar allows; end of sequence only where the
            // output is complete.
            let failed =
                |what: &str| Outcome::Failed(EngineError::internal(format!("constrained decoding failed: {what}")));
            let Some(allowed) = c.grammar.allowed() else {
                return failed("the grammar has no next token");
            };
            let ok = |t: u32| allowed.allows(t, eos_token(t));
            let sampled = s.sampler.sample_where(logits, Some(&ok));
            if !ok(sampled.id) {
                // Nothing the model can emit is allowed (a vocabulary that
                // cannot spell what the grammar needs).
                return failed("no token of the vocabulary is allowed");
            }
            if !c.grammar.accept(sampled.id, eos_token(sampled.id)) {
                return failed("the grammar refused the token its own mask allowed");
            }
            sampled
        }
    };
    s.sampler.observe(id);
    s.generated += 1;
    if s.first_token_at.is_none() {
        s.first_token_at = Some(Instant::now());
        s.enter(Phase::Decode);
    }
    let req = &s.job.req;
    let is_eos = !req.ignore_eos && tok.eos().contains(&id);
    if is_eos || req.stop_token_ids.contains(&id) {
        return Outcome::Finished(FinishReason::Stop);
    }
    s.tokens.push(id);
    let delta = match s.decoder.push(tok, id) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(parent: &s.job.span, request_id = %s.job.req.tag, error = %e, "detokenization failed");
            String::new()
        }
    };
    let released_before = s.text.released();
    let shown = s.text.push(&delta);
    if let Some(lp) = logprob {
        let end = s.text.text().len().max(released_before);
        s.pending.push_back((logprob_entry(tok, id, lp, &top), end));
    }
    // A grammar that can take nothing more ends the output (no need to wait
    // for EOS); a triggered one starts applying once its trigger is out.
    let mut grammar_done = false;
    if let Some(c) = s.constraint.as_mut() {
        if c.active {
            grammar_done = c.grammar.is_finished();
        } else if let Some(t) = c.trigger.as_deref() {
            // Only the tail can hold a trigger that this token completed.
            let text = s.text.text();
            let from = text.floor_char_boundary(text.len().saturating_sub(delta.len() + t.len()));
            c.active = text[from..].contains(t);
        }
    }
    let done = if s.text.stopped() || grammar_done {
        Some(FinishReason::Stop)
    } else if s.generated >= req.max_tokens || s.tokens.len() >= context_length {
        Some(FinishReason::Length)
    } else {
        None
    };
    if done.is_none() {
        send_delta(s, shown);
        return Outcome::Continue;
    }
    // What this last step released goes out with the final delta.
    s.tail.push_str(&shown);
    Outcome::Finished(done.unwrap_or(FinishReason::Stop))
}

fn send_delta(s: &mut Sequence, text: String) {
    let released = s.text.released();
    let mut logprobs = Vec::new();
    while let Some((_, end)) = s.pending.front() {
        if *end > released {
            break;
        }
        if let Some((lp, end)) = s.pending.pop_front() {
            s.sent_end = end;
            logprobs.push(lp);
        }
    }
    if !text.is_empty() || !logprobs.is_empty() {
        let _ = s.job.events.send(GenEvent::Delta {
            text,
            logprobs,
            generated: s.generated,
        });
    }
}

fn finish(s: &mut Sequence, tok: &Tokenizer, reason: FinishReason) {
    let mut text = std::mem::take(&mut s.tail);
    if !s.text.stopped() {
        if let Ok(rest) = s.decoder.flush(tok) {
            text.push_str(&s.text.push(&rest));
        }
        if !s.text.stopped() {
            text.push_str(&s.text.finish());
        }
    }
    // Without a stop string every token is output; with one, the tokens
    // whose text starts before the cut.
    let released = s.text.released();
    let cut = s.text.stopped();
    let mut logprobs = Vec::new();
    let mut start = s.sent_end;
    while let Some((lp, end)) = s.pending.pop_front() {
        if !cut || start < released {
            logprobs.push(lp);
        }
        start = end;
    }
    if !text.is_empty() || !logprobs.is_empty() {
        let _ = s.job.events.send(GenEvent::Delta {
            text,
            logprobs,
            generated: s.generated,
        });
    }
    let ttft = s
        .first_token_at
        .map(|t| t.duration_since(s.job.submitted).as_secs_f64())
        .unwrap_or(0.0);
    let _ = s.job.events.send(GenEvent::Done {
        finish_reason: reason,
        usage: GenUsage {
            prompt_tokens: s.prompt_len,
            completion_tokens: s.generated,
            cached_tokens: s.cached_tokens.unwrap_or(0),
        },
        time_to_first_token: ttft,
    });
}
