//! Choosing the next token: penalties and logit bias, then greedy (temperature
//! 0) or temperature → top-k → top-p sampling from a seeded generator, and the
//! log-probabilities the OpenAI API reports.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::SysRng;
use rand::{Rng, TryRng};
use rand_chacha::ChaCha8Rng;

/// Sampling settings of one sequence, validated by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    /// Return the chosen token's log-probability and this many alternatives
    /// (None: no logprobs at all).
    pub top_logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            top_logprobs: None,
        }
    }
}

/// The chosen token and, when asked, its log-probability and the most likely
/// alternatives (from the model's distribution, before penalties and
/// temperature, as vLLM and OpenAI report them).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub id: u32,
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
}

/// Temperatures below this sample greedily, as vLLM does: dividing logits
/// by a near-zero temperature overflows to infinity, and the probabilities
/// become NaN (a temperature of 1e-39 did exactly that).
pub const GREEDY_BELOW: f32 = 1e-5;

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// How often each token has been generated so far (for penalties).
    counts: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            let mut os = SysRng;
            os.try_next_u64().unwrap_or_else(|_| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x5eed)
            })
        });
        Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            counts: HashMap::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Record a token that was produced (counts toward the penalties).
    pub fn observe(&mut self, id: u32) {
        *self.counts.entry(id).or_default() += 1;
    }

    /// Pick the next token from raw logits.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        self.sample_where(logits, None)
    }

    /// Pick the next token among those `allowed` accepts (constrained
    /// decoding); the distribution is renormalised over the allowed ones.
    /// When no token is allowed the unconstrained choice is returned.
    pub fn sample_where(&mut self, logits: &[f32], allowed: Option<&dyn Fn(u32) -> bool>) -> Sampled {
        let (logprob_of, top) = match self.params.top_logprobs {
            Some(k) => {
                let lp = crate::compute::ops::log_softmax(logits);
                let top = top_k_indices(&lp, k);
                (Some(lp), top)
            }
            None => (None, Vec::new()),
        };

        let mut l = logits.to_vec();
        for &(id, bias) in &self.params.logit_bias {
            if let Some(v) = l.get_mut(id as usize) {
                *v += bias;
            }
        }
        if self.params.presence_penalty != 0.0 || self.params.frequency_penalty != 0.0 {
            for (&id, &n) in &self.counts {
                if let Some(v) = l.get_mut(id as usize) {
                    *v -= self.params.presence_penalty + self.params.frequency_penalty * n as f32;
                }
            }
        }

        // A constraint (a grammar's mask) removes what it refuses before
        // the choice, so the choice is over what remains: one pass over the
        // vocabulary instead of sorting it whenever the best is refused.
        if let Some(ok) = allowed {
            for (id, v) in l.iter_mut().enumerate() {
                if !ok(id as u32) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        let id = if self.greedy() {
            argmax(&l)
        } else {
            self.sample_from(&mut l)
        };
        Sampled {
            id,
            logprob: logprob_of.as_ref().map(|lp| lp[id as usize]),
            top,
        }
    }

    /// Temperatures below `GREEDY_BELOW` (and NaN) pick the best token.
    fn greedy(&self) -> bool {
        self.params.temperature.is_nan() || self.params.temperature < GREEDY_BELOW
    }

    fn sample_from(&mut self, l: &mut [f32]) -> u32 {
        let inv_t = 1.0 / self.params.temperature as f64;
        // Candidates sorted by logit, cut by top-k; softmax over them; cut by
        // top-p; draw.
        let mut idx: Vec<u32> = (0..l.len() as u32).filter(|&i| l[i as usize].is_finite()).collect();
        if idx.is_empty() {
            return 0;
        }
        let k = if self.params.top_k > 0 {
            self.params.top_k.min(idx.len())
        } else {
            idx.len()
        };
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, |a, b| l[*b as usize].total_cmp(&l[*a as usize]));
            idx.truncate(k);
        }
        idx.sort_unstable_by(|a, b| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b)));
        let max = l[idx[0] as usize];
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((l[i as usize] - max) as f64 * inv_t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        for p in probs.iter_mut() {
            *p /= total;
        }
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
            let total: f64 = probs.iter().sum();
            for p in probs.iter_mut() {
                *p /= total;
            }
        }
        // 53 random bits → uniform in [0, 1).
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if u < acc {
                return idx[i];
            }
        }
        idx[idx.len() - 1]
    }
}

pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in l.iter().enumerate() {
        if *v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// The `k` largest entries as (index, value), largest first.
pub fn top_k_indices(v: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    let k = k.min(idx.len());
    idx.select_nth_unstable_by(k - 1, |a, b| v[*b as usize].total_cmp(&v[*a as usize]));
    idx.truncate(k);
    idx.sort_unstable_by(|a, b| v[*b as usize].total_cmp(&v[*a as usize]).then(a.cmp(b)));
    idx.into_iter().map(|i| (i, v[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_is_argmax_and_reports_logprobs() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            top_logprobs: Some(2),
            ..Default::default()
        });
        let out = s.sample(&logits());
        assert_eq!(out.id, 1);
        assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 4]);
        let lp = out.logprob.unwrap();
        assert!((lp - out.top[0].1).abs() < 1e-6 && lp < 0.0);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.5,
                seed: Some(seed),
                ..Default::default()
            });
            (0..64).map(|_| s.sample(&logits()).id).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for params in [
            SamplingParams {
                temperature: 1.0,
                top_k: 1,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                top_p: 0.01,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(params);
            for _ in 0..20 {
                assert_eq!(s.sample(&logits()).id, 1);
            }
        }
    }

    #[test]
    fn constrained_sampling_only_returns_allowed_tokens() {
        let odd = |id: u32| id % 2 == 1;
        let mut greedy = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        // Best is 1 (odd): kept. Forbid 1 and the next best odd is 4? no: 3.
        assert_eq!(greedy.sample_where(&logits(), Some(&odd)).id, 1);
        let not_one = |id: u32| id != 1;
        assert_eq!(greedy.sample_where(&logits(), Some(&not_one)).id, 4);
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: Some(3),
            ..Default::default()
        });
        for _ in 0..50 {
            assert!(odd(s.sample_where(&logits(), Some(&odd)).id));
        }
    }

    #[test]
    fn penalties_and_bias_move_the_choice() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            frequency_penalty: 1.0,
            ..Default::default()
        });
        s.observe(1);
        // 3.0 - 1.0 = 2.0 < 2.9
        assert_eq!(s.sample(&logits()).id, 4);
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            logit_bias: vec![(3, 100.0)],
            ..Default::default()
        });
        assert_eq!(s.sample(&logits()).id, 3);
    }

    #[test]
    fn tiny_positive_temperatures_are_greedy_not_nan() {
        for t in [1e-39f32, f32::MIN_POSITIVE, 1e-20, 1e-6] {
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                top_logprobs: Some(1),
                ..Default::default()
            });
            for _ in 0..10 {
                let out = s.sample(&logits());
                assert_eq!(out.id, 1, "temperature {t}");
                assert!(out.logprob.is_some_and(f32::is_finite));
            }
        }
        // Just above the cut it samples (and never produces NaN).
        let mut s = Sampler::new(SamplingParams {
            temperature: 2e-5,
            seed: Some(1),
            ..Default::default()
        });
        assert_eq!(s.sample(&logits()).id, 1);
    }
}
