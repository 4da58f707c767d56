//! Choosing the next token: penalties and logit bias, then greedy (temperature
//! 0) or temperature → top-k → top-p sampling from a seeded generator, and the
//! log-probabilities the OpenAI API reports.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::SysRng;
use rand::{Rng, TryRng};
use rand_chacha::ChaCha8Rng;

use crate::compute::ops::fast_exp;
use crate::compute::scratch::Scratch;

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

        // A working copy only when something changes the logits.
        let untouched = self.params.logit_bias.is_empty()
            && self.params.presence_penalty == 0.0
            && self.params.frequency_penalty == 0.0
            && allowed.is_none();
        if untouched && self.greedy() {
            let id = argmax(logits);
            return Sampled {
                id,
                logprob: logprob_of.as_ref().map(|lp| lp[id as usize]),
                top,
            };
        }
        let mut l = Scratch::copied(logits);
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
            self.sample_from(&l)
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

    /// Temperature, then top-k, then top-p, then a draw in proportion to
    /// what is left. Nothing here sorts the vocabulary: with 150k entries a
    /// full sort per token was most of a sampled step. Infinite and NaN
    /// logits are never chosen (unless nothing else is left: token 0).
    fn sample_from(&mut self, l: &[f32]) -> u32 {
        let inv_t = 1.0 / self.params.temperature;
        let max = l
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return 0;
        }
        // Unnormalised probabilities (`fast_exp`: relative error 2e-7; it
        // clamps at e^-87, so every finite logit keeps a weight above 0,
        // which moves at most vocab × 1e-38 of the mass). 0 marks the
        // non-finite logits, which are never drawn.
        let mut weight = Scratch::<f32>::zeroed(l.len());
        for (w, &v) in weight.iter_mut().zip(l) {
            *w = if v.is_finite() {
                fast_exp((v - max) * inv_t)
            } else {
                0.0
            };
        }
        let by_logit = |a: &u32, b: &u32| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b));
        let (top_k, top_p) = (self.params.top_k, self.params.top_p);
        let candidates: Option<Vec<u32>> = if top_k > 0 || top_p < 1.0 {
            // Not empty: the best finite logit has weight 1.
            let mut idx: Vec<u32> = (0..l.len() as u32).filter(|&i| weight[i as usize] > 0.0).collect();
            if top_k > 0 && top_k < idx.len() {
                idx.select_nth_unstable_by(top_k - 1, by_logit);
                idx.truncate(top_k);
            }
            if top_p < 1.0 {
                // The fewest best candidates whose probability reaches
                // top_p: select growing prefixes until one holds that much
                // (the best few hundred usually do), then sort only it.
                let mass = |ids: &[u32]| ids.iter().map(|&i| weight[i as usize] as f64).sum::<f64>();
                let want = top_p as f64 * mass(&idx);
                let mut n = idx.len().min(64);
                loop {
                    if n < idx.len() {
                        idx.select_nth_unstable_by(n - 1, by_logit);
                    }
                    if n == idx.len() || mass(&idx[..n]) >= want {
                        break;
                    }
                    n = (n * 4).min(idx.len());
                }
                idx.truncate(n);
                idx.sort_unstable_by(by_logit);
                let mut acc = 0.0;
                for (j, &i) in idx.iter().enumerate() {
                    acc += weight[i as usize] as f64;
                    if acc >= want {
                        idx.truncate(j + 1);
                        break;
                    }
                }
            }
            Some(idx)
        } else {
            None
        };
        // 53 random bits → uniform in [0, 1), scaled to the mass left.
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let draw = |ids: &mut dyn Iterator<Item = u32>, total: f64| {
            let mut acc = 0.0;
            let mut last = 0;
            for i in ids {
                acc += weight[i as usize] as f64;
                last = i;
                if u * total < acc {
                    return i;
                }
            }
            last
        };
        match candidates {
            Some(idx) => {
                let total = idx.iter().map(|&i| weight[i as usize] as f64).sum();
                draw(&mut idx.iter().copied(), total)
            }
            None => {
                let total = weight.iter().map(|&w| w as f64).sum();
                draw(&mut (0..l.len() as u32).filter(|&i| weight[i as usize] > 0.0), total)
            }
        }
    }
}

/// The first index of the largest value (NaN never is; token 0 when no
/// value is a number). In 16 lanes, so a 150k vocabulary is a few µs.
pub fn argmax(l: &[f32]) -> u32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = l.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    l.iter().position(|&v| v == max).unwrap_or(0) as u32
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
    fn argmax_takes_the_first_best_and_ignores_nan() {
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[f32::NAN; 40]), 0);
        let mut l = vec![0.5f32; 100];
        l[0] = f32::NAN;
        l[37] = 2.0;
        l[90] = 2.0;
        assert_eq!(argmax(&l), 37);
        l[99] = f32::INFINITY;
        assert_eq!(argmax(&l), 99);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
    }

    /// The draws follow softmax(l / T) cut by top-k and top-p, on a
    /// vocabulary wide enough that the top-p prefix has to grow past its
    /// first guess (64). Seeded, so the figures are the same every run.
    #[test]
    fn draws_follow_the_cut_distribution() {
        let vocab = 1000;
        // Slowly falling logits: the top 90% needs several hundred tokens.
        let l: Vec<f32> = (0..vocab).map(|i| -(i as f32) * 0.004).collect();
        let weights: Vec<f64> = l.iter().map(|&v| (v as f64 / 0.8).exp()).collect();
        for (top_k, top_p) in [(0, 1.0), (0, 0.9), (300, 1.0), (300, 0.5)] {
            let mut keep = if top_k > 0 { top_k } else { vocab };
            let total: f64 = weights[..keep].iter().sum();
            if top_p < 1.0 {
                let mut acc = 0.0;
                keep = weights
                    .iter()
                    .position(|w| {
                        acc += w;
                        acc >= top_p * total
                    })
                    .unwrap()
                    + 1;
            }
            let mass: f64 = weights[..keep].iter().sum();
            let mut s = Sampler::new(SamplingParams {
                temperature: 0.8,
                top_k,
                top_p: top_p as f32,
                seed: Some(11),
                ..Default::default()
            });
            let draws = 20_000;
            let mut counts = vec![0usize; vocab];
            for _ in 0..draws {
                counts[s.sample(&l).id as usize] += 1;
            }
            assert!(
                counts[keep..].iter().all(|&c| c == 0),
                "top_k {top_k} top_p {top_p}: drew past {keep}"
            );
            // Tenths of the kept range: each within 5% of its expected share.
            for part in 0..10 {
                let range = part * keep / 10..(part + 1) * keep / 10;
                let want = weights[range.clone()].iter().sum::<f64>() / mass * draws as f64;
                let got = counts[range].iter().sum::<usize>() as f64;
                assert!(
                    (got - want).abs() < 0.05 * want + 30.0,
                    "top_k {top_k} top_p {top_p} part {part}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn top_k_past_the_vocabulary_cuts_nothing() {
        let tied = [0.5f32, 2.0, 2.0, 2.0, 1.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1000,
            seed: Some(4),
            ..Default::default()
        });
        let mut seen = [false; 5];
        for _ in 0..500 {
            seen[s.sample(&tied).id as usize] = true;
        }
        assert_eq!(seen, [true; 5]);
    }

    #[test]
    fn infinite_and_nan_logits_are_never_drawn() {
        let mut l = vec![0.0f32; 200];
        l[3] = f32::INFINITY;
        l[4] = f32::NAN;
        l[5] = f32::NEG_INFINITY;
        for top_p in [1.0, 0.5] {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_p,
                seed: Some(2),
                ..Default::default()
            });
            for _ in 0..2000 {
                assert!(![3, 4, 5].contains(&s.sample(&l).id));
            }
        }
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[f32::NAN, f32::INFINITY]).id, 0);
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
        let tied = [0.5f32, 2.0, 2.0, 2.0, 1.0];
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
            SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(params);
            for _ in 0..20 {
                assert_eq!(s.sample(&logits()).id, 1);
                // Ties go to the lowest index.
                assert_eq!(s.sample(&tied).id, 1);
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
