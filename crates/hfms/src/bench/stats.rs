//! Percentiles and summaries of latency samples.
//!
//! Self-contained (no other module of the crate is used here) so the
//! integration tests can include this file and test it directly.

/// The `p`-th percentile (0..=100) of `sorted` (ascending), interpolating
/// linearly between the two closest ranks — numpy's default ("linear"), so
/// figures can be checked against `numpy.percentile`. `None` for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !p.is_finite() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Sorts ascending (`total_cmp`: NaNs, which no measurement produces, last).
pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

/// p50 / p90 / p99 and the mean of a set of samples (in the unit given).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub mean: Option<f64>,
}

impl Summary {
    pub fn of(values: Vec<f64>) -> Summary {
        let s = sorted(values);
        let mean = if s.is_empty() {
            None
        } else {
            Some(s.iter().sum::<f64>() / s.len() as f64)
        };
        Summary {
            p50: percentile(&s, 50.0),
            p90: percentile(&s, 90.0),
            p99: percentile(&s, 99.0),
            mean,
        }
    }

    /// The same figures multiplied by `k` (seconds to milliseconds).
    pub fn scaled(self, k: f64) -> Summary {
        Summary {
            p50: self.p50.map(|v| v * k),
            p90: self.p90.map(|v| v * k),
            p99: self.p99.map(|v| v * k),
            mean: self.mean.map(|v| v * k),
        }
    }
}

/// Requests slower than `factor` × the median of the fastest quartile (the
/// `ceil(n/4)` fastest samples): that median, the threshold, and how many
/// samples exceed it. `None` for no samples.
pub fn slow_outliers(values: &[f64], factor: f64) -> Option<(f64, f64, usize)> {
    let s = sorted(values.to_vec());
    let quartile = s.len().div_ceil(4);
    let fast_median = percentile(&s[..quartile], 50.0)?;
    let threshold = fast_median * factor;
    Some((fast_median, threshold, s.iter().filter(|v| **v > threshold).count()))
}
