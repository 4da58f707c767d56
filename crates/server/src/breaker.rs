//! Circuit breakers, one per model. Failures that are the server's — a
//! failed load, an engine error, a timeout (5xx other than overload) —
//! counted over a rolling window open a model's circuit: requests for it
//! get 503 `model_unavailable` with `Retry-After`, and nothing is queued or
//! loaded. A failed load opens the circuit at once (loading a corrupt file
//! again for every request would only repeat the failure). After a back-off
//! the circuit is half-open: one request goes through as a probe; if it
//! succeeds the circuit closes, if it fails it opens again for twice as
//! long (up to a maximum). Client errors (4xx) never count.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Settings (each a `hfms serve` flag).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BreakerConfig {
    /// Server failures within `window` that open the circuit (0: never).
    pub failures: usize,
    /// ... and the share of the window's outcomes they must be.
    pub failure_ratio: f64,
    pub window: Duration,
    /// The first back-off; it doubles at each reopening.
    pub open_for: Duration,
    pub max_open_for: Duration,
}

impl BreakerConfig {
    pub const DEFAULT: BreakerConfig = BreakerConfig {
        failures: 5,
        failure_ratio: 0.5,
        window: Duration::from_secs(30),
        open_for: Duration::from_secs(5),
        max_open_for: Duration::from_secs(300),
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn level(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

#[derive(Debug)]
struct Breaker {
    state: CircuitState,
    /// Recent outcomes: (when, failed).
    outcomes: VecDeque<(Instant, bool)>,
    /// Open until then (then half-open).
    until: Instant,
    /// The next back-off.
    open_for: Duration,
    /// A half-open probe let through, and when.
    probe: Option<Instant>,
    opened: u64,
    last_failure: Option<String>,
}

/// One model's circuit, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CircuitStatus {
    pub state: CircuitState,
    pub failures_in_window: usize,
    pub requests_in_window: usize,
    pub opened: u64,
    /// Seconds until a probe may go through (open circuits).
    pub retry_after: Option<u64>,
    pub last_failure: Option<String>,
}

/// Every model's circuit.
pub struct Breakers {
    config: BreakerConfig,
    circuits: Mutex<HashMap<String, Breaker>>,
    metrics: Arc<Metrics>,
}

impl Breakers {
    pub fn new(config: BreakerConfig, metrics: Arc<Metrics>) -> Self {
        Breakers {
            config,
            circuits: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        self.circuits.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn breaker<'a>(&self, map: &'a mut HashMap<String, Breaker>, model: &str) -> &'a mut Breaker {
        map.entry(model.to_string()).or_insert_with(|| Breaker {
            state: CircuitState::Closed,
            outcomes: VecDeque::new(),
            until: Instant::now(),
            open_for: self.config.open_for,
            probe: None,
            opened: 0,
            last_failure: None,
        })
    }

    fn set_state(&self, model: &str, b: &mut Breaker, state: CircuitState) {
        if b.state != state {
            tracing::warn!(model, from = ?b.state, to = ?state, "circuit breaker");
        }
        b.state = state;
        self.metrics.circuit_state(model, state.level());
    }

    /// May a request for `model` go on? An open circuit answers 503 with
    /// the seconds until its next probe.
    pub fn admit(&self, model: &str) -> Result<(), ApiError> {
        if self.config.failures == 0 {
            return Ok(());
        }
        let mut map = self.lock();
        let now = Instant::now();
        let b = self.breaker(&mut map, model);
        match b.state {
            CircuitState::Closed => Ok(()),
            CircuitState::Open if now >= b.until => {
                self.set_state(model, b, CircuitState::HalfOpen);
                b.probe = Some(now);
                Ok(())
            }
            CircuitState::HalfOpen if b.probe.is_none_or(|p| now.duration_since(p) > self.config.max_open_for) => {
                // No probe in flight (or it was lost: its client left).
                b.probe = Some(now);
                Ok(())
            }
            CircuitState::Open | CircuitState::HalfOpen => {
                let wait = b.until.saturating_duration_since(now).as_secs().max(1);
                let why = b.last_failure.clone().unwrap_or_default();
                Err(ApiError::model_unavailable(model, wait, &why))
            }
        }
    }

    /// A request for `model` ended in a client error: it says nothing of
    /// the model (a half-open circuit lets another probe through).
    pub fn neutral(&self, model: &str) {
        let mut map = self.lock();
        if let Some(b) = map.get_mut(model) {
            b.probe = None;
        }
    }

    /// A request for `model` ended: `failure` is the server's fault (5xx
    /// other than overload), with its message; None: a success.
    pub fn record(&self, model: &str, failure: Option<&str>) {
        if self.config.failures == 0 {
            return;
        }
        let mut map = self.lock();
        let now = Instant::now();
        let b = self.breaker(&mut map, model);
        if let Some(f) = failure {
            b.last_failure = Some(f.chars().take(300).collect());
        }
        match b.state {
            CircuitState::HalfOpen => {
                b.probe = None;
                if failure.is_some() {
                    self.open(model, b, now, true);
                } else {
                    b.outcomes.clear();
                    b.open_for = self.config.open_for;
                    self.set_state(model, b, CircuitState::Closed);
                }
            }
            CircuitState::Open => {}
            CircuitState::Closed => {
                b.outcomes.push_back((now, failure.is_some()));
                while b
                    .outcomes
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > self.config.window)
                {
                    b.outcomes.pop_front();
                }
                let failures = b.outcomes.iter().filter(|(_, f)| *f).count();
                let ratio = failures as f64 / b.outcomes.len().max(1) as f64;
                if failures >= self.config.failures && ratio >= self.config.failure_ratio {
                    self.open(model, b, now, false);
                }
            }
        }
    }

    /// An error from loading `model`, as the API's error: a failed load
    /// opens the model's circuit; other errors leave it alone.
    pub fn on_load_error(&self, model: &str, e: hfms_engine::EngineError) -> ApiError {
        if matches!(e, hfms_engine::EngineError::LoadFailed { .. }) {
            self.load_failed(model, &e.to_string());
        }
        e.into()
    }

    /// A load of `model` failed: its circuit opens at once.
    pub fn load_failed(&self, model: &str, error: &str) {
        if self.config.failures == 0 {
            return;
        }
        let mut map = self.lock();
        let now = Instant::now();
        let b = self.breaker(&mut map, model);
        b.last_failure = Some(error.chars().take(300).collect());
        let again = b.state == CircuitState::HalfOpen;
        b.probe = None;
        if b.state != CircuitState::Open {
            self.open(model, b, now, again);
        }
    }

    /// An operator loaded the model successfully (`/models/load`): closed.
    pub fn reset(&self, model: &str) {
        let mut map = self.lock();
        if let Some(b) = map.get_mut(model) {
            b.outcomes.clear();
            b.probe = None;
            b.open_for = self.config.open_for;
            self.set_state(model, b, CircuitState::Closed);
        }
    }

    fn open(&self, model: &str, b: &mut Breaker, now: Instant, again: bool) {
        if again {
            b.open_for = (b.open_for * 2).min(self.config.max_open_for);
        }
        b.until = now + b.open_for;
        b.opened += 1;
        b.outcomes.clear();
        self.metrics.circuit_opened(model);
        self.set_state(model, b, CircuitState::Open);
    }

    pub fn status(&self) -> HashMap<String, CircuitStatus> {
        let map = self.lock();
        let now = Instant::now();
        map.iter()
            .map(|(m, b)| {
                let failures = b.outcomes.iter().filter(|(_, f)| *f).count();
                (
                    m.clone(),
                    CircuitStatus {
                        state: b.state,
                        failures_in_window: failures,
                        requests_in_window: b.outcomes.len(),
                        opened: b.opened,
                        retry_after: (b.state == CircuitState::Open)
                            .then(|| b.until.saturating_duration_since(now).as_secs().max(1)),
                        last_failure: b.last_failure.clone(),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(failures: usize, open_ms: u64) -> Breakers {
        Breakers::new(
            BreakerConfig {
                failures,
                failure_ratio: 0.5,
                window: Duration::from_secs(30),
                open_for: Duration::from_millis(open_ms),
                max_open_for: Duration::from_millis(open_ms * 4),
            },
            Metrics::new(),
        )
    }

    #[test]
    fn failures_open_then_a_probe_closes() {
        let b = breakers(3, 50);
        for _ in 0..2 {
            b.admit("m").unwrap();
            b.record("m", Some("engine error"));
        }
        b.admit("m").unwrap();
        b.record("m", None);
        b.admit("m").unwrap();
        b.record("m", Some("timeout"));
        // 3 failures of 4: open.
        let e = b.admit("m").unwrap_err();
        assert_eq!(e.status, 503);
        assert_eq!(e.code, Some("model_unavailable"));
        assert!(e.retry_after.is_some());
        assert!(e.message.contains("timeout"), "{}", e.message);
        assert!(b.admit("other").is_ok(), "other models are not affected");
        std::thread::sleep(Duration::from_millis(60));
        // Half-open: one probe, the rest wait.
        b.admit("m").unwrap();
        assert!(b.admit("m").is_err());
        b.record("m", None);
        assert_eq!(b.status()["m"].state, CircuitState::Closed);
        assert!(b.admit("m").is_ok());
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_and_client_errors_never_count() {
        let b = breakers(2, 40);
        for _ in 0..10 {
            b.admit("m").unwrap();
            b.neutral("m"); // client errors
        }
        b.admit("m").unwrap();
        b.record("m", Some("one failure alone does not open"));
        assert!(b.admit("m").is_ok());
        b.load_failed("m", "tensor output.weight is missing");
        assert_eq!(b.status()["m"].state, CircuitState::Open);
        std::thread::sleep(Duration::from_millis(50));
        b.admit("m").unwrap();
        b.load_failed("m", "still missing");
        let s = &b.status()["m"];
        assert_eq!(s.state, CircuitState::Open);
        assert_eq!(s.opened, 2);
        // Twice the back-off now: still open after the first one's length.
        std::thread::sleep(Duration::from_millis(50));
        assert!(b.admit("m").is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.admit("m").is_ok());
    }

    #[test]
    fn zero_failures_turns_breakers_off() {
        let b = breakers(0, 10);
        b.load_failed("m", "x");
        for _ in 0..10 {
            b.record("m", Some("x"));
        }
        assert!(b.admit("m").is_ok());
    }
}
