//! Dynamic batching for an encoder model: requests queue on one thread, a
//! batch is cut when it reaches `max_batch_tokens` or `max_batch_requests`,
//! or `max_wait` after its first request arrived; the inputs of all requests
//! in it are encoded as one flattened batch (sorted by length, no padding)
//! and the vectors go back to each request in order.
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

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            max_batch_tokens: 8192,
            max_batch_requests: 64,
            max_wait: Duration::ZERO,
            max_waiting: 1024,
        }
    }
}

#[derive(Debug, Default)]
pub struct BatcherStats {
    pub waiting: AtomicUsize,
    pub batches: AtomicU64,
    pub requests: AtomicU64,
    pub inputs: AtomicU64,
    pub tokens: AtomicU64,
    pub rejected: AtomicU64,
}

type Reply = tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>>>;

struct Job {
    inputs: Vec<Vec<u32>>,
    dimensions: Option<usize>,
    tokens: usize,
    reply: Reply,
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
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(BatcherStats::default());
        let worker = Worker {
            model: model.clone(),
            pool,
            config: config.clone(),
            stats: stats.clone(),
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
        inputs: Vec<Vec<u32>>,
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
        self.tx
            .send(Job {
                inputs,
                dimensions,
                tokens,
                reply,
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
}

impl Worker {
    fn run(self, rx: mpsc::Receiver<Job>) {
        // A job that did not fit the batch being cut starts the next one.
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            let started = Instant::now();
            let mut batch = vec![first];
            let mut tokens = batch[0].tokens;
            while batch.len() < self.config.max_batch_requests && tokens < self.config.max_batch_tokens {
                let left = self.config.max_wait.saturating_sub(started.elapsed());
                let next = match rx.try_recv() {
                    Ok(j) => j,
                    Err(mpsc::TryRecvError::Disconnected) => break,
                    Err(mpsc::TryRecvError::Empty) if left.is_zero() => break,
                    Err(mpsc::TryRecvError::Empty) => match rx.recv_timeout(left) {
                        Ok(j) => j,
                        Err(_) => break,
                    },
                };
                if tokens + next.tokens > self.config.max_batch_tokens {
                    carry = Some(next);
                    break;
                }
                tokens += next.tokens;
                batch.push(next);
            }
            self.stats.waiting.fetch_sub(batch.len(), Ordering::Relaxed);
            self.run_batch(batch, tokens);
        }
    }

    fn run_batch(&self, batch: Vec<Job>, tokens: usize) {
        // Requests whose client is gone are not computed.
        let batch: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        // Every input of every job, sorted by length (similar lengths run
        // together through attention), remembering where each came from.
        let mut order: Vec<(usize, usize)> = batch
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.inputs.len()).map(move |i| (j, i)))
            .collect();
        order.sort_by_key(|&(j, i)| batch[j].inputs[i].len());
        let inputs: Vec<&[u32]> = order.iter().map(|&(j, i)| batch[j].inputs[i].as_slice()).collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.model.pooled(&inputs, &self.pool)))
            .unwrap_or_else(|_| Err(EngineError::internal("embedding step panicked")));
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.stats.inputs.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        self.stats.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        match result {
            Ok(vectors) => {
                let mut per_job: Vec<Vec<Vec<f32>>> = batch.iter().map(|j| vec![Vec::new(); j.inputs.len()]).collect();
                for (v, &(j, i)) in vectors.into_iter().zip(&order) {
                    per_job[j][i] = v;
                }
                for (job, mut vs) in batch.into_iter().zip(per_job) {
                    for v in vs.iter_mut() {
                        self.model.apply_dimensions(v, job.dimensions);
                    }
                    let _ = job.reply.send(Ok(vs));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedding batch failed");
                let msg = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(EngineError::internal(msg.clone())));
                }
            }
        }
    }
}
