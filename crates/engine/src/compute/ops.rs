//! Element-wise and row-wise operations of transformer layers, on row-major
//! `[rows, dim]` f32 buffers.

/// `out[r] = x[r] / rms(x[r]) * weight` for every row.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// RMS norm of each `dim`-wide piece in place (per-head q/k norms).
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    for xr in x.chunks_exact_mut(dim) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for (v, w) in xr.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

/// LayerNorm in place: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm_in_place(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let dim = weight.len();
    for xr in x.chunks_exact_mut(dim) {
        let mean = xr.iter().sum::<f32>() / dim as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in xr.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// `a += b`
pub fn add_in_place(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Add `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

/// SwiGLU: `gate = silu(gate) * up`, in place on `gate`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// GELU as BERT defines it (the exact erf form), in place.
pub fn gelu_in_place(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v / std::f32::consts::SQRT_2));
    }
}

/// GELU, tanh approximation (`gelu_new`, `gelu_pytorch_tanh`), in place.
pub fn gelu_tanh_in_place(x: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + (C * (*v + 0.044_715 * *v * *v * *v)).tanh());
    }
}

/// erf with max error ~1.2e-7 (Numerical Recipes' erfc Chebyshev fit),
/// computed in f64 so GELU matches PyTorch's to f32 precision.
pub fn erf(x: f32) -> f32 {
    let x = x as f64;
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    let v = 1.0 - r;
    (if x >= 0.0 { v } else { -v }) as f32
}

/// Softmax in place over the whole slice.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Log-softmax of `x` into a new vector (f64 accumulation for stable
/// log-probabilities over large vocabularies).
pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = x.iter().map(|v| ((v - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    x.iter().map(|v| (*v as f64 - lse) as f32).collect()
}

/// How rotary embeddings pair up the features of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF llama (the converter permutes Q/K).
    Interleaved,
    /// Halves `(i, i + d/2)`: Hugging Face checkpoints, GGUF qwen2 and others.
    Halves,
}

/// Precomputed inverse frequencies; cos/sin are made per position per step.
#[derive(Debug, Clone)]
pub struct Rope {
    pub style: RopeStyle,
    /// Rotated features per head (≤ head_dim; partial rotary leaves the rest).
    pub dims: usize,
    inv_freq: Vec<f32>,
    /// Linear position scaling (`rope_scaling.type = linear`).
    pub position_scale: f32,
}

impl Rope {
    pub fn new(style: RopeStyle, dims: usize, theta: f32, freq_factors: Option<&[f32]>, position_scale: f32) -> Self {
        let half = dims / 2;
        let inv_freq = (0..half)
            .map(|i| {
                let f = 1.0 / theta.powf(2.0 * i as f32 / dims as f32);
                match freq_factors {
                    Some(ff) if i < ff.len() => f / ff[i],
                    _ => f,
                }
            })
            .collect();
        Rope {
            style,
            dims,
            inv_freq,
            position_scale,
        }
    }

    /// Llama 3's frequency-dependent scaling, turned into per-frequency
    /// divisors (what GGUF stores as `rope_freqs.weight`).
    pub fn llama3_factors(dims: usize, theta: f32, factor: f32, low: f32, high: f32, original_ctx: f32) -> Vec<f32> {
        let low_wavelen = original_ctx / low;
        let high_wavelen = original_ctx / high;
        (0..dims / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf(2.0 * i as f32 / dims as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (original_ctx / wavelen - low) / (high - low);
                    // freq' = (1-s) freq/factor + s freq  ⇒  divisor = freq / freq'
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect()
    }

    /// cos and sin for one position, `dims / 2` each, into `cs`
    /// (`[cos..., sin...]`).
    pub fn angles(&self, pos: usize, cs: &mut [f32]) {
        let half = self.inv_freq.len();
        let p = pos as f32 / self.position_scale;
        for (i, f) in self.inv_freq.iter().enumerate() {
            let (s, c) = (p * f).sin_cos();
            cs[i] = c;
            cs[half + i] = s;
        }
    }

    /// Rotate every head of one token's projection in place.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cs: &[f32]) {
        let half = self.dims / 2;
        let (cos, sin) = cs.split_at(half);
        for head in x.chunks_exact_mut(head_dim) {
            match self.style {
                RopeStyle::Interleaved => {
                    for i in 0..half {
                        let (a, b) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = a * cos[i] - b * sin[i];
                        head[2 * i + 1] = a * sin[i] + b * cos[i];
                    }
                }
                RopeStyle::Halves => {
                    for i in 0..half {
                        let (a, b) = (head[i], head[i + half]);
                        head[i] = a * cos[i] - b * sin[i];
                        head[i + half] = a * sin[i] + b * cos[i];
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
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
            (3.5, 0.999_999_3),
        ] {
            assert!((erf(x) - want).abs() < 1e-6, "erf({x}) = {} want {want}", erf(x));
        }
    }

    #[test]
    fn rope_styles_rotate_the_same_pairs_differently() {
        let rope = Rope::new(RopeStyle::Halves, 4, 10000.0, None, 1.0);
        let mut cs = vec![0f32; 4];
        rope.angles(1, &mut cs);
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope.apply(&mut x, 4, &cs);
        // Pair (0, 2) rotated by angle 1 rad.
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
        let rope = Rope::new(RopeStyle::Interleaved, 4, 10000.0, None, 1.0);
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope.apply(&mut x, 4, &cs);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let l = log_softmax(&[1.0, 2.0, 3.0, -50.0]);
        let s: f32 = l.iter().map(|v| v.exp()).sum();
        assert!((s - 1.0).abs() < 1e-6);
    }
}
