//! Dynamic batching for an encoder model: requests queue on one thread, a
//! batch is cut when it reaches `max_batch_tokens` or `max_batch_requests`,
//! or `max_wait` after its first request arrived; the inputs in it are
//! encoded as one flattened batch (sorted by length, no padding) and the
//! vectors go back to each request in order.
//!
//! A batch is made of inputs, not of whole requests: a request with more
//! tokens than `max_batch_tokens` is spread over several batches, so memory
//! per batch is bounded by configuration whatever one request holds. Each
//! batch first gives every queued request a fair share of the token budget
//! (at least one input each), then fills what is left in arrival order: a
//! large request cannot hold up small ones, and it still advances in every
//! batch. A request whose client has gone is dropped before the next batch.
//!
//! `max_wait` is 0 by default: a batch takes what is queued when the encoder
//! is free and starts at once. Under load, requests pile up while a batch
//! runs, so the next batch is large anyway; when the server is quiet, a
//! wait would only add its length to every lone request's latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::EmbeddingModel;
use crate::compute::ComputePool;
use crate::error::{EngineError, Result};
use crate::observe::EmbeddingObserver;
use crate::skills::bert::EncoderInput;

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Most tokens in one encoder pass.
    pub max_batch_tokens: usize,
    /// Most requests in one pass.
    pub max_batch_requests: usize,
    /// How long the first request of a batch waits for company.
    pub max_wait: Duration,
    /// Most requests queued; beyond it `submit` refuses with `Overloaded`.
    pub max_waiting: usize,
}

impl BatcherConfig {
    /// The defaults (also `hfms serve`'s: its flags name these).
    pub const DEFAULT: BatcherConfig = BatcherConfig {
        max_batch_tokens: 8192,
        max_batch_requests: 64,
        max_wait: Duration::ZERO,
        // One queue bound for every model (`--max-waiting`).
        max_waiting: crate::generate::SchedulerConfig::DEFAULT.max_waiting,
    };
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Debug, Default)]
pub struct BatcherStats {
    /// Requests queued or in progress.
    pub waiting: AtomicUsize,
    pub batches: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    pub inputs: AtomicU64,
    pub tokens: AtomicU64,
    pub rejected: AtomicU64,
    /// Requests dropped because their client went away.
    pub cancelled: AtomicU64,
}

type Reply = tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>>>;

struct Job {
    inputs: Vec<EncoderInput>,
    dimensions: Option<usize>,
    tokens: usize,
    reply: Reply,
    submitted: Instant,
    /// The submitter's span (the HTTP request's), parent of `phase`.
    span: tracing::Span,
    /// The span of the phase the request is in: `queue` until its first
    /// batch starts, then `embed` until its last vector is done.
    phase: tracing::Span,
}

/// The handle requests use. Dropping every handle stops the thread.
#[derive(Clone)]
pub struct EmbedBatcher {
    tx: mpsc::Sender<Job>,
    model: Arc<EmbeddingModel>,
    stats: Arc<BatcherStats>,
    max_waiting: usize,
}

impl EmbedBatcher {
    pub fn spawn(model: Arc<EmbeddingModel>, pool: ComputePool, config: BatcherConfig, name: &str) -> Result<Self> {
        Self::spawn_observed(model, pool, config, name, Arc::new(crate::observe::Nothing))
    }

    /// `spawn`, reporting to `observer` (metrics).
    pub fn spawn_observed(
        model: Arc<EmbeddingModel>,
        pool: ComputePool,
        config: BatcherConfig,
        name: &str,
        observer: Arc<dyn EmbeddingObserver>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(BatcherStats::default());
        let worker = Worker {
            model: model.clone(),
            pool,
            config: config.clone(),
            stats: stats.clone(),
            observer,
        };
        std::thread::Builder::new()
            .name(format!("hfms-embed-{name}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::internal(format!("embedding batcher thread: {e}")))?;
        Ok(EmbedBatcher {
            tx,
            model,
            stats,
            max_waiting: config.max_waiting,
        })
    }

    pub fn model(&self) -> &Arc<EmbeddingModel> {
        &self.model
    }

    pub fn stats(&self) -> &Arc<BatcherStats> {
        &self.stats
    }

    /// Queue tokenized inputs; the vectors arrive on the returned channel.
    pub fn submit(
        &self,
        inputs: Vec<EncoderInput>,
        dimensions: Option<usize>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Vec<Vec<f32>>>>> {
        self.model.check_dimensions(dimensions)?;
        let waiting = self.stats.waiting.load(Ordering::Relaxed);
        if waiting >= self.max_waiting {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::Overloaded(format!(
                "the embedding queue is full ({waiting} requests waiting); retry shortly"
            )));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let tokens = inputs.iter().map(|i| i.len()).sum();
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let span = tracing::Span::current();
        let phase = tracing::info_span!(parent: &span, "queue", inputs = inputs.len(), tokens);
        self.tx
            .send(Job {
                inputs,
                dimensions,
                tokens,
                reply,
                submitted: Instant::now(),
                span,
                phase,
            })
            .map_err(|_| {
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                EngineError::Unavailable("the embedding batcher has stopped".into())
            })?;
        Ok(rx)
    }
}

struct Worker {
    model: Arc<EmbeddingModel>,
    pool: ComputePool,
    config: BatcherConfig,
    stats: Arc<BatcherStats>,
    observer: Arc<dyn EmbeddingObserver>,
}

/// A request being worked on: its inputs from `next` on are still to do.
struct Pending {
    job: Job,
    next: usize,
    vectors: Vec<Vec<f32>>,
    /// A batch with some of its inputs failed: the request fails.
    error: Option<EngineError>,
    /// When its first batch started (queue time ends).
    started: Option<Instant>,
}

impl Pending {
    fn new(job: Job) -> Self {
        let n = job.inputs.len();
        Pending {
            job,
            next: 0,
            vectors: Vec::with_capacity(n),
            error: None,
            started: None,
        }
    }

    fn done(&self) -> bool {
        self.error.is_some() || self.next >= self.job.inputs.len()
    }
}

impl Worker {
    fn run(self, rx: mpsc::Receiver<Job>) {
        let mut queue: Vec<Pending> = Vec::new();
        loop {
            if queue.is_empty() {
                match rx.recv() {
                    Ok(j) => queue.push(Pending::new(j)),
                    Err(_) => return,
                }
                // Company for the first request, up to `max_wait`.
                let started = Instant::now();
                while queued_tokens(&queue) < self.config.max_batch_tokens
                    && queue.len() < self.config.max_batch_requests
                {
                    let left = self.config.max_wait.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left) {
                        Ok(j) => queue.push(Pending::new(j)),
                        Err(_) => break,
                    }
                }
            }
            while let Ok(j) = rx.try_recv() {
                queue.push(Pending::new(j));
            }
            self.drop_cancelled(&mut queue);
            if queue.is_empty() {
                continue;
            }
            let plan = self.plan(&queue);
            self.run_batch(&mut queue, &plan);
            // Answer the requests that are complete (in queue order).
            let mut i = 0;
            while i < queue.len() {
                if queue[i].done() {
                    let mut p = queue.remove(i);
                    // Its span ends before the answer goes out, so before
                    // the request's span does.
                    p.job.phase = tracing::Span::none();
                    self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                    let queued = p.started.unwrap_or_else(Instant::now);
                    self.observer.request(
                        p.job.inputs.len(),
                        p.job.tokens,
                        queued.saturating_duration_since(p.job.submitted),
                    );
                    if let Some(e) = p.error {
                        let _ = p.job.reply.send(Err(e));
                        continue;
                    }
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    let mut vectors = p.vectors;
                    for v in vectors.iter_mut() {
                        self.model.apply_dimensions(v, p.job.dimensions);
                    }
                    let _ = p.job.reply.send(Ok(vectors));
                } else {
                    i += 1;
                }
            }
        }
    }

    fn drop_cancelled(&self, queue: &mut Vec<Pending>) {
        let before = queue.len();
        queue.retain(|p| {
            let gone = p.job.reply.is_closed();
            if gone {
                tracing::info!(parent: &p.job.span, "client went away; dropping its embedding work");
            }
            !gone
        });
        let gone = before - queue.len();
        if gone > 0 {
            self.stats.waiting.fetch_sub(gone, Ordering::Relaxed);
            self.stats.cancelled.fetch_add(gone as u64, Ordering::Relaxed);
            for _ in 0..gone {
                self.observer.cancelled();
            }
        }
    }

    /// How many inputs of each queued request the next batch takes (from
    /// its `next` on). The token budget is a hard bound, except that a
    /// batch always takes at least one input (one input is bounded by the
    /// model's own length limit). First every request gets one input, then
    /// up to a fair share of the budget, then what is left goes in arrival
    /// order.
    fn plan(&self, queue: &[Pending]) -> Vec<usize> {
        let budget = self.config.max_batch_tokens;
        let served = queue.len().min(self.config.max_batch_requests);
        let share = (budget / served.max(1)).max(1);
        let mut take = vec![0usize; served];
        let mut mine = vec![0usize; served];
        let mut used = 0usize;
        for pass in 0..2 {
            for (i, p) in queue.iter().take(served).enumerate() {
                while let Some(input) = p.job.inputs.get(p.next + take[i]) {
                    let len = input.len();
                    let fits = used + len <= budget;
                    let ok = match pass {
                        0 if take[i] == 0 => fits || used == 0,
                        0 => fits && mine[i] + len <= share,
                        _ => fits,
                    };
                    if !ok {
                        break;
                    }
                    take[i] += 1;
                    mine[i] += len;
                    used += len;
                }
            }
        }
        take
    }

    fn run_batch(&self, queue: &mut [Pending], plan: &[usize]) {
        // The inputs of this batch, sorted by length (similar lengths run
        // together through attention), remembering whose they are.
        let mut order: Vec<(usize, usize)> = plan
            .iter()
            .enumerate()
            .flat_map(|(j, &n)| {
                let start = queue[j].next;
                (start..start + n).map(move |i| (j, i))
            })
            .collect();
        order.sort_by_key(|&(j, i)| queue[j].job.inputs[i].len());
        let inputs: Vec<&EncoderInput> = order.iter().map(|&(j, i)| &queue[j].job.inputs[i]).collect();
        let tokens: usize = inputs.iter().map(|i| i.len()).sum();
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.model.pooled(&inputs, &self.pool)))
            .unwrap_or_else(|_| Err(EngineError::internal("embedding step panicked")));
        self.observer
            .batch(inputs.len(), tokens, started.elapsed().as_secs_f64());
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.inputs.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        drop(inputs);
        for (j, &n) in plan.iter().enumerate() {
            if n > 0 && queue[j].started.is_none() {
                let p = &mut queue[j];
                p.started = Some(started);
                p.job.phase = tracing::Span::none(); // the queue span ends first
                p.job.phase = tracing::info_span!(parent: &p.job.span, "embed",
                    inputs = p.job.inputs.len(), tokens = p.job.tokens, otel.status_code = tracing::field::Empty);
            }
        }
        self.stats.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        match result {
            Ok(vectors) => {
                // Back in input order per request.
                let mut slots: Vec<Vec<Option<Vec<f32>>>> = plan.iter().map(|&n| vec![None; n]).collect();
                for (v, &(j, i)) in vectors.into_iter().zip(&order) {
                    slots[j][i - queue[j].next] = Some(v);
                }
                for (j, got) in slots.into_iter().enumerate() {
                    let p = &mut queue[j];
                    p.vectors.extend(got.into_iter().map(Option::unwrap_or_default));
                    p.next += plan[j];
                }
            }
            Err(e) => {
                let msg = e.to_string();
                // The requests in it fail (answered by the caller).
                for (j, &n) in plan.iter().enumerate() {
                    if n > 0 {
                        queue[j].job.phase.record("otel.status_code", "error");
                        tracing::error!(parent: &queue[j].job.span, error = %e, "embedding batch failed");
                        queue[j].error = Some(EngineError::internal(msg.clone()));
                    }
                }
            }
        }
    }
}

fn queued_tokens(queue: &[Pending]) -> usize {
    queue.iter().map(|p| p.job.tokens).sum()
}
