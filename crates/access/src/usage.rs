//! Usage records: one row per inference request, written by a
//! group-commit writer (one transaction per interval), and summaries of
//! them by hour, day, model or key.
//!
//! A record is queued when its request ends and committed within the
//! commit interval; `UsageWriter::shutdown` commits what is queued, so a
//! graceful stop loses nothing and a SIGKILL at most one interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use sqlx::{AnyPool, Row};
use tokio::sync::mpsc;

use crate::error::{AccessError, Result};

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct UsageRecord {
    /// Unix milliseconds when the request ended.
    pub time_ms: i64,
    pub request_id: String,
    pub key_id: Option<String>,
    pub model: String,
    pub endpoint: String,
    pub status: u16,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub finish_reason: Option<String>,
    pub cache_hit: bool,
    pub cost: f64,
}

/// Prices per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
}

impl Price {
    pub fn cost(&self, prompt: u64, cached: u64, completion: u64) -> f64 {
        let cached = cached.min(prompt);
        ((prompt - cached) as f64 * self.input + cached as f64 * self.cached_input + completion as f64 * self.output)
            / 1e6
    }
}

/// Queues records and commits them in batches on its own task.
pub struct UsageWriter {
    tx: mpsc::Sender<UsageRecord>,
    /// Set at shutdown: a retry waiting on a dead database stops waiting.
    closing: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

/// Records waiting beyond this are dropped (and counted): a database that
/// stops answering must not grow the server's memory without bound.
pub const QUEUE: usize = 100_000;

/// How long the last commit keeps retrying once the server is stopping,
/// before what it holds goes to the spill file.
const SHUTDOWN_RETRY: Duration = Duration::from_secs(3);

impl UsageWriter {
    /// Start the writer. `spill`: where records that cannot be committed
    /// by shutdown (the database is down) are kept, as JSON lines, to be
    /// committed by the next start.
    pub fn start(pool: AnyPool, interval: Duration, spill: Option<std::path::PathBuf>) -> UsageWriter {
        let (tx, mut rx) = mpsc::channel::<UsageRecord>(QUEUE);
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let written = Arc::new(AtomicU64::new(0));
        let counted = written.clone();
        let task = tokio::spawn(async move {
            let mut w = Committer {
                pool,
                written: counted,
                spill,
                closing: closing_rx,
                closing_since: None,
            };
            // What the last run could not commit comes first.
            let mut batch = w.take_spilled();
            if !batch.is_empty() {
                w.commit(&mut batch, &rx).await;
            }
            loop {
                // Wait for a first record, then gather for one interval.
                match rx.recv().await {
                    Some(r) => batch.push(r),
                    None => break,
                }
                let deadline = tokio::time::Instant::now() + interval;
                let mut open = true;
                while open {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => batch.push(r),
                        Ok(None) => open = false,
                        Err(_) => break,
                    }
                }
                w.commit(&mut batch, &rx).await;
                if !open {
                    break;
                }
            }
            // Closed: whatever is still queued, committed or spilled.
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
            }
            w.commit(&mut batch, &rx).await;
        });
        UsageWriter {
            tx,
            closing,
            task,
            dropped: Arc::new(AtomicU64::new(0)),
            written,
        }
    }

    /// Queue a record (never waits).
    pub fn record(&self, r: UsageRecord) {
        if self.tx.try_send(r).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "usage records dropped: the database is not keeping up");
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Commit everything queued (or spill it) and stop.
    pub async fn shutdown(self) {
        let _ = self.closing.send(true);
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// The writer task's side.
struct Committer {
    pool: AnyPool,
    written: Arc<AtomicU64>,
    spill: Option<std::path::PathBuf>,
    closing: tokio::sync::watch::Receiver<bool>,
    /// When the writer first saw the server stopping while a commit failed.
    closing_since: Option<tokio::time::Instant>,
}

impl Committer {
    /// Write a batch in one transaction. A failure is retried (every
    /// second, then up to every 10 s) for as long as the server runs — the
    /// records wait, and new ones queue in the bounded channel — and for
    /// `SHUTDOWN_RETRY` once it stops; then the batch is spilled.
    async fn commit(&mut self, batch: &mut Vec<UsageRecord>, rx: &mpsc::Receiver<UsageRecord>) {
        let mut pause = Duration::from_secs(1);
        let mut attempt = 0u32;
        while !batch.is_empty() {
            // Stopping: each attempt only gets what is left of the budget
            // (a pool waiting for a dead database would wait far longer).
            let stopping = rx.is_closed() || *self.closing.borrow();
            let budget = stopping.then(|| {
                let since = *self.closing_since.get_or_insert_with(tokio::time::Instant::now);
                SHUTDOWN_RETRY.saturating_sub(since.elapsed())
            });
            if budget.is_some_and(|b| b.is_zero()) {
                self.spill(batch);
                return;
            }
            let result = match budget {
                Some(b) => tokio::time::timeout(b, insert(&self.pool, batch))
                    .await
                    .unwrap_or_else(|_| Err(AccessError::Database("timed out at shutdown".into()))),
                None => {
                    let mut closing = self.closing.clone();
                    tokio::select! {
                        r = insert(&self.pool, batch) => r,
                        _ = closing.wait_for(|c| *c) => Err(AccessError::Database("interrupted by shutdown".into())),
                    }
                }
            };
            match result {
                Ok(()) => {
                    self.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    batch.clear();
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, records = batch.len(), attempt, "writing usage records failed");
                }
            }
            attempt += 1;
            if stopping {
                pause = Duration::from_millis(200);
            }
            let mut closing = self.closing.clone();
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = closing.wait_for(|c| *c), if !stopping => {}
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }

    /// Append the batch to the spill file (none configured: they are lost,
    /// and said so).
    fn spill(&self, batch: &mut Vec<UsageRecord>) {
        let n = batch.len();
        let Some(path) = &self.spill else {
            tracing::error!(records = n, "usage records lost: the database is down at shutdown");
            batch.clear();
            return;
        };
        let mut text = String::new();
        for r in batch.drain(..) {
            if let Ok(line) = serde_json::to_string(&r) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()).and_then(|()| f.sync_all()));
        match written {
            Ok(()) => tracing::warn!(records = n, file = %path.display(),
                "the database is down: usage records kept in the spill file for the next start"),
            Err(e) => {
                tracing::error!(records = n, error = %e, file = %path.display(), "usage records lost: spilling failed")
            }
        }
    }

    /// The records a previous run spilled (the file is removed: from here
    /// on they are queued like any other, and spilled again if need be).
    fn take_spilled(&self) -> Vec<UsageRecord> {
        let Some(path) = &self.spill else { return Vec::new() };
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        let records: Vec<UsageRecord> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if let Err(e) = std::fs::remove_file(path) {
            tracing::error!(error = %e, file = %path.display(), "cannot remove the usage spill file; not replaying it");
            return Vec::new();
        }
        tracing::info!(records = records.len(), file = %path.display(), "replaying spilled usage records");
        records
    }
}

async fn insert(pool: &AnyPool, batch: &[UsageRecord]) -> Result<()> {
    let mut tx = pool.begin().await?;
    for r in batch {
        sqlx::query(
            "INSERT INTO usage_records (time_ms, request_id, key_id, model, endpoint, status, prompt_tokens, \
             cached_tokens, completion_tokens, latency_ms, ttft_ms, finish_reason, cache_hit, cost) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(r.time_ms)
        .bind(&r.request_id)
        .bind(r.key_id.clone())
        .bind(&r.model)
        .bind(&r.endpoint)
        .bind(r.status as i64)
        .bind(r.prompt_tokens as i64)
        .bind(r.cached_tokens as i64)
        .bind(r.completion_tokens as i64)
        .bind(r.latency_ms)
        .bind(r.ttft_ms)
        .bind(r.finish_reason.clone())
        .bind(r.cache_hit as i64)
        .bind(r.cost)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Hour,
    Day,
    Model,
    Key,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s {
            "hour" => Some(GroupBy::Hour),
            "day" => Some(GroupBy::Day),
            "model" => Some(GroupBy::Model),
            "key" => Some(GroupBy::Key),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub key: Option<String>,
    pub model: Option<String>,
    /// Unix milliseconds, inclusive.
    pub from_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub to_ms: Option<i64>,
    pub group_by: Option<GroupBy>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UsageRow {
    /// The hour or day (Unix ms of its start), model or key id; "all"
    /// when not grouped.
    pub group: String,
    pub requests: i64,
    pub errors: i64,
    pub cache_hits: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub completion_tokens: i64,
    pub cost: f64,
}

/// Totals of the records `q` selects, one row per group, in group order.
pub async fn summarize(pool: &AnyPool, q: &UsageQuery) -> Result<Vec<UsageRow>> {
    // Only fixed fragments are joined; every value is bound.
    let group = match q.group_by {
        None => "'all'",
        Some(GroupBy::Hour) => "CAST((time_ms / 3600000) * 3600000 AS TEXT)",
        Some(GroupBy::Day) => "CAST((time_ms / 86400000) * 86400000 AS TEXT)",
        Some(GroupBy::Model) => "model",
        Some(GroupBy::Key) => "COALESCE(key_id, '-')",
    };
    let mut sql = format!(
        "SELECT {group} AS grp, COUNT(*) AS requests, \
         CAST(COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
         CAST(COALESCE(SUM(cache_hit), 0) AS BIGINT) AS cache_hits, \
         CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
         CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT) AS cached_tokens, \
         CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
         CAST(COALESCE(SUM(cost), 0) AS DOUBLE PRECISION) AS cost \
         FROM usage_records WHERE 1 = 1"
    );
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    if q.key.is_some() {
        sql.push_str(&format!(" AND key_id = ${}", next()));
    }
    if q.model.is_some() {
        sql.push_str(&format!(" AND model = ${}", next()));
    }
    if q.from_ms.is_some() {
        sql.push_str(&format!(" AND time_ms >= ${}", next()));
    }
    if q.to_ms.is_some() {
        sql.push_str(&format!(" AND time_ms < ${}", next()));
    }
    sql.push_str(" GROUP BY grp ORDER BY grp");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    if let Some(k) = &q.key {
        query = query.bind(k.clone());
    }
    if let Some(m) = &q.model {
        query = query.bind(m.clone());
    }
    if let Some(t) = q.from_ms {
        query = query.bind(t);
    }
    if let Some(t) = q.to_ms {
        query = query.bind(t);
    }
    let rows = query.fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(UsageRow {
                group: r.try_get("grp")?,
                requests: r.try_get("requests")?,
                errors: r.try_get("errors")?,
                cache_hits: r.try_get("cache_hits")?,
                prompt_tokens: r.try_get("prompt_tokens")?,
                cached_tokens: r.try_get("cached_tokens")?,
                completion_tokens: r.try_get("completion_tokens")?,
                cost: r.try_get("cost")?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(AccessError::from)
}

/// Rows as CSV (RFC 4180), header first.
pub fn to_csv(rows: &[UsageRow]) -> String {
    let quote = |s: &str| {
        // A spreadsheet would run a cell that starts like a formula.
        let s = if s.starts_with(['=', '+', '-', '@']) {
            format!("'{s}")
        } else {
            s.to_string()
        };
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from("group,requests,errors,cache_hits,prompt_tokens,cached_tokens,completion_tokens,cost\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            quote(&r.group),
            r.requests,
            r.errors,
            r.cache_hits,
            r.prompt_tokens,
            r.cached_tokens,
            r.completion_tokens,
            r.cost
        ));
    }
    out
}

/// Records in the table (tests and the note's SIGKILL measurement).
pub async fn count(pool: &AnyPool) -> Result<i64> {
    Ok(sqlx::query("SELECT COUNT(*) FROM usage_records")
        .fetch_one(pool)
        .await?
        .try_get(0)?)
}

/// A budget's period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    /// The period holding `now` (Unix seconds): its start and its end.
    pub fn bounds(self, now: i64) -> (i64, i64) {
        match self {
            Period::Day => {
                let start = now - now.rem_euclid(86_400);
                (start, start + 86_400)
            }
            Period::Month => {
                // The calendar from humantime's RFC 3339 text: no date
                // arithmetic of our own.
                let at = std::time::UNIX_EPOCH + Duration::from_secs(now.max(0) as u64);
                let text = humantime::format_rfc3339_seconds(at).to_string();
                let (year, month) = (
                    text[..4].parse::<i32>().unwrap_or(1970),
                    text[5..7].parse::<u32>().unwrap_or(1),
                );
                let first = |y: i32, m: u32| {
                    humantime::parse_rfc3339(&format!("{y:04}-{m:02}-01T00:00:00Z"))
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs() as i64)
                };
                let (ny, nm) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
                (first(year, month), first(ny, nm))
            }
        }
    }
}

/// What a key spent from `from` (Unix seconds) on.
pub async fn spent_since(pool: &AnyPool, key_id: &str, from: i64) -> Result<f64> {
    let rows = summarize(
        pool,
        &UsageQuery {
            key: Some(key_id.to_string()),
            from_ms: Some(from.saturating_mul(1000)),
            ..Default::default()
        },
    )
    .await?;
    Ok(rows.first().map_or(0.0, |r| r.cost))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_periods_follow_the_utc_calendar() {
        // 2026-12-02T01:02:03Z
        let now = 1_796_173_323;
        assert_eq!(Period::Day.bounds(now), (1_796_169_600, 1_796_256_000));
        // 2026-12-01 .. 2027-01-01
        assert_eq!(Period::Month.bounds(now), (1_796_083_200, 1_798_761_600));
        // February of a leap year.
        let feb = Period::Month.bounds(1_709_251_199); // 2024-02-29T23:59:59Z
        assert_eq!(feb, (1_706_745_600, 1_709_251_200));
    }

    #[test]
    fn cost_counts_cached_tokens_at_their_price() {
        let p = Price {
            input: 1.0,
            cached_input: 0.5,
            output: 2.0,
        };
        assert_eq!(p.cost(1_000_000, 0, 0), 1.0);
        assert_eq!(p.cost(1_000_000, 500_000, 1_000_000), 0.5 + 0.25 + 2.0);
        assert_eq!(
            p.cost(10, 99, 0),
            10.0 * 0.5 / 1e6,
            "cached beyond the prompt is clamped"
        );
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let row = UsageRow {
            group: "a,\"b\"".into(),
            requests: 1,
            errors: 0,
            cache_hits: 0,
            prompt_tokens: 2,
            cached_tokens: 0,
            completion_tokens: 3,
            cost: 0.5,
        };
        assert_eq!(to_csv(&[row]).lines().nth(1), Some("\"a,\"\"b\"\"\",1,0,0,2,0,3,0.5"));
    }
}
