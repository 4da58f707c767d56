//! Per-key rate limits: GCRA (the generic cell rate algorithm) over a
//! one-minute window, for requests per minute and tokens per minute.
//!
//! A bucket is one number, its theoretical arrival time (TAT): each unit
//! admitted pushes it 60 s / limit into the future, and a request of `cost`
//! units is admitted while the TAT it would leave is at most one minute
//! ahead of now. So a key may spend its whole minute at once and then one
//! unit every 60 s / limit, with no window edges to game, and the state is
//! one value per bucket. Tokens whose number is only known afterwards
//! (completion tokens) are charged unconditionally (`force`), which makes
//! the next requests wait.
//!
//! With Redis the TAT lives there and is updated by one Lua script using
//! Redis' clock, so every replica sees and moves the same bucket: N
//! replicas enforce one limit, not N. A Redis that fails or is slower than
//! the timeout follows the configured policy (allow or deny).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW_MS: f64 = 60_000.0;

/// The outcome of taking from a bucket, with what the rate-limit headers
/// say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// The limit per minute.
    pub limit: u64,
    /// Units that could still be taken now.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When denied: until `cost` would fit.
    pub retry_after: Duration,
    /// Redis failed and the policy decided.
    pub backend_error: bool,
}

/// Milliseconds as a duration; what Redis hands back may be anything
/// (NaN, infinite, negative), and must not panic.
fn secs_of_ms(v: f64) -> Duration {
    Duration::try_from_secs_f64(v / 1000.0)
        .unwrap_or(if v > 0.0 {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        })
        .min(Duration::from_secs(3600))
}

/// The GCRA step on a stored TAT (ms), at `now` (ms): the decision and the
/// TAT to store (None: unchanged).
fn gcra(stored: f64, now: f64, per_minute: u64, cost: u64, force: bool) -> (Decision, Option<f64>) {
    let t = WINDOW_MS / per_minute as f64;
    let tat = stored.max(now);
    let new = tat + cost as f64 * t;
    let ms = secs_of_ms;
    let remaining = |tat: f64| ((WINDOW_MS - (tat - now)) / t).floor().max(0.0) as u64;
    if !force && new - now > WINDOW_MS {
        let d = Decision {
            allowed: false,
            limit: per_minute,
            remaining: remaining(tat),
            reset: ms(tat - now),
            retry_after: ms(new - now - WINDOW_MS),
            backend_error: false,
        };
        return (d, None);
    }
    let d = Decision {
        allowed: true,
        limit: per_minute,
        remaining: remaining(new),
        reset: ms(new - now),
        retry_after: Duration::ZERO,
        backend_error: false,
    };
    (d, Some(new))
}

/// KEYS[1] the bucket; ARGV: limit per minute, cost, force (1/0). Returns
/// {allowed, tat - now in µs... } as strings (Lua numbers lose nothing
/// here, but replies are integers or strings).
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local limit = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local force = ARGV[3] == '1'
local period = 60000 / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + cost * period
if (not force) and new - now > 60000 then
  return {0, tostring(tat - now), tostring(new - now - 60000)}
end
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil(new - now) + 1000)
return {1, tostring(new - now), '0'}
"#;

enum Backend {
    /// TATs in ms since `epoch`.
    Memory {
        epoch: Instant,
        tats: Mutex<HashMap<String, f64>>,
    },
    Redis {
        conn: redis::aio::ConnectionManager,
        script: redis::Script,
        timeout: Duration,
        allow_on_error: bool,
    },
}

pub struct RateLimiter {
    backend: Backend,
}

impl RateLimiter {
    pub fn in_memory() -> Self {
        RateLimiter {
            backend: Backend::Memory {
                epoch: Instant::now(),
                tats: Mutex::new(HashMap::new()),
            },
        }
    }

    /// Buckets in Redis at `url` (it must answer at start; later outages
    /// follow the policy, and the connection is re-made).
    pub async fn redis(url: &str, timeout: Duration, allow_on_error: bool) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis-url: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1);
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| format!("connecting to Redis for rate limits: {e}"))?;
        Ok(RateLimiter {
            backend: Backend::Redis {
                conn,
                script: redis::Script::new(SCRIPT),
                timeout,
                allow_on_error,
            },
        })
    }

    /// Take `cost` units from `bucket` (limit `per_minute`); with `force`
    /// they are taken even beyond the limit (charging after the fact).
    pub async fn take(&self, bucket: &str, per_minute: u64, cost: u64, force: bool) -> Decision {
        let per_minute = per_minute.max(1);
        match &self.backend {
            Backend::Memory { epoch, tats } => {
                let now = epoch.elapsed().as_secs_f64() * 1000.0;
                let mut tats = tats.lock().unwrap_or_else(|p| p.into_inner());
                let stored = tats.get(bucket).copied().unwrap_or(0.0);
                let (d, new) = gcra(stored, now, per_minute, cost, force);
                if let Some(new) = new {
                    tats.insert(bucket.to_string(), new);
                }
                d
            }
            Backend::Redis {
                conn,
                script,
                timeout,
                allow_on_error,
            } => {
                let mut conn = conn.clone();
                let mut call = script.key(format!("hfms:ratelimit:{bucket}"));
                call.arg(per_minute).arg(cost).arg(if force { 1 } else { 0 });
                let reply: Result<Result<(i64, String, String), _>, _> =
                    tokio::time::timeout(*timeout, call.invoke_async(&mut conn)).await;
                match reply {
                    Ok(Ok((allowed, ahead, retry))) => {
                        let ahead: f64 = ahead.parse().unwrap_or(0.0);
                        let retry: f64 = retry.parse().unwrap_or(0.0);
                        let t = WINDOW_MS / per_minute as f64;
                        Decision {
                            allowed: allowed == 1,
                            limit: per_minute,
                            remaining: ((WINDOW_MS - ahead) / t).floor().max(0.0) as u64,
                            reset: secs_of_ms(ahead),
                            retry_after: secs_of_ms(retry),
                            backend_error: false,
                        }
                    }
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {} ms", timeout.as_millis()),
                        };
                        tracing::warn!(error = %why, allow = allow_on_error, "rate limit store unavailable");
                        Decision {
                            allowed: *allow_on_error || force,
                            limit: per_minute,
                            remaining: 0,
                            reset: Duration::ZERO,
                            retry_after: Duration::from_secs(1),
                            backend_error: true,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_can_be_spent_at_once_then_one_unit_per_period() {
        let mut tat = 0.0;
        let now = 1_000.0;
        for i in 0..60 {
            let (d, new) = gcra(tat, now, 60, 1, false);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 59 - i);
            tat = new.unwrap();
        }
        let (d, new) = gcra(tat, now, 60, 1, false);
        assert!(!d.allowed && new.is_none());
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert_eq!(d.reset, Duration::from_secs(60));
        // A second later one more fits.
        assert!(gcra(tat, now + 1000.0, 60, 1, false).0.allowed);
    }

    #[test]
    fn a_cost_larger_than_the_limit_never_fits_unless_forced() {
        let (d, _) = gcra(0.0, 0.0, 100, 101, false);
        assert!(!d.allowed);
        let (d, new) = gcra(0.0, 0.0, 100, 150, true);
        assert!(d.allowed && d.remaining == 0);
        // The debt makes the next request wait 30 s beyond the window.
        let (d, _) = gcra(new.unwrap(), 0.0, 100, 1, false);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(30_600));
    }

    #[tokio::test]
    async fn the_memory_backend_keeps_buckets_apart() {
        let l = RateLimiter::in_memory();
        assert!(l.take("a", 1, 1, false).await.allowed);
        assert!(!l.take("a", 1, 1, false).await.allowed);
        assert!(l.take("b", 1, 1, false).await.allowed);
        assert!(l.take("a", 1, 5, true).await.allowed);
    }
}
