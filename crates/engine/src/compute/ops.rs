//! Element-wise and row-wise operations of transformer layers, on row-major
//! `[rows, dim]` f32 buffers.

/// Define an op once and compile it three times: as written, with AVX2 +
/// FMA enabled (where the loops vectorise to 256 bits) and with AVX-512
/// (512 bits), picking the widest the CPU has at run time. The body is
/// `#[inline(always)]` so it is compiled inside each entry point with that
/// entry point's features.
macro_rules! vectorized {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if has_avx512() {
                    // SAFETY: `avx512` is `body` (safe code) compiled with
                    // these features; `has_avx512` detected all of them.
                    return unsafe { avx512($($arg),*) };
                }
                if has_avx2() {
                    // SAFETY: `avx2` is `body` (safe code) compiled with AVX2
                    // and FMA enabled; `has_avx2` detected both on this CPU
                    // at run time, which is the only requirement.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Whether the CPU has AVX2 and FMA (run-time detection). Under Miri the
/// portable build of each op runs (Miri interprets it; the AVX2 build is
/// the same Rust code compiled with more features).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| !cfg!(miri) && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Whether the AVX-512 builds may run: the CPU has AVX2, FMA and AVX-512
/// F/BW/DQ/VL, and `HFMS_NO_AVX512` (which the quant kernel set honours
/// too) is not set.
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        has_avx2()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && std::env::var_os("HFMS_NO_AVX512").is_none()
    })
}

/// Sum with eight independent accumulators (vectorisable; the order of a
/// plain `sum` forbids that).
#[inline(always)]
fn sum8(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += f(c[l]);
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for v in rest {
        s += f(*v);
    }
    s
}

/// e^x in f32 without a libm call, so loops over it vectorise: range
/// reduction x = n ln2 + r, a degree-6 polynomial for e^r, 2^n through the
/// exponent bits. Relative error below 2e-7; inputs below -87 give 0.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// erf for f32: Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7) away from 0,
/// its Taylor series near 0 (where `1 - …` would cancel). Both are computed
/// and one selected, so loops stay branch-free and vectorise.
#[inline(always)]
pub fn fast_erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let far = 1.0
        - t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))))
            * fast_exp(-a * a);
    let a2 = a * a;
    // 2/sqrt(pi) * (a - a^3/3 + a^5/10 - a^7/42 + a^9/216 - a^11/1320)
    let near = std::f32::consts::FRAC_2_SQRT_PI
        * a
        * (1.0 - a2 * (1.0 / 3.0 - a2 * (0.1 - a2 * (1.0 / 42.0 - a2 * (1.0 / 216.0 - a2 / 1320.0)))));
    let y = if a < 0.5 { near } else { far };
    y.copysign(x)
}

vectorized! {
    /// `out[r] = x[r] / rms(x[r]) * weight` for every row.
    pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let dim = weight.len();
        for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            let ss = sum8(xr, |v| v * v) / dim as f32;
            let scale = 1.0 / (ss + eps).sqrt();
            for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
                *o = v * scale * w;
            }
        }
    }
}

vectorized! {
    /// RMS norm of each `dim`-wide piece in place (per-head q/k norms).
    pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
        let dim = weight.len();
        for xr in x.chunks_exact_mut(dim) {
            let ss = sum8(xr, |v| v * v) / dim as f32;
            let scale = 1.0 / (ss + eps).sqrt();
            for (v, w) in xr.iter_mut().zip(weight) {
                *v = *v * scale * w;
            }
        }
    }
}

vectorized! {
    /// LayerNorm in place: `(x - mean) / sqrt(var + eps) * weight + bias`.
    pub fn layer_norm_in_place(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
        let dim = weight.len();
        for xr in x.chunks_exact_mut(dim) {
            let mean = sum8(xr, |v| v) / dim as f32;
            let var = sum8(xr, |v| (v - mean) * (v - mean)) / dim as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, w), b) in xr.iter_mut().zip(weight).zip(bias) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    }
}

vectorized! {
    /// `a += b`
    pub fn add_in_place(a: &mut [f32], b: &[f32]) {
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
    }
}

vectorized! {
    /// Add `bias` to every row of `x`.
    pub fn add_bias(x: &mut [f32], bias: &[f32]) {
        for row in x.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

vectorized! {
    /// `y += a * x`
    pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        for (yi, xi) in y.iter_mut().zip(x) {
            *yi += a * xi;
        }
    }
}

/// Attention scores of a group of queries against consecutive keys:
/// `scores[h * stride + i] = scale · q_h · k_i` for the rows `q_h` of `qs`
/// and `k_i` of `keys` (each `hd` wide). Each key is read once for the
/// whole group (the query heads that share a KV head).
pub fn group_scores(qs: &[f32], keys: &[f32], hd: usize, scale: f32, scores: &mut [f32], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(8) && has_avx2() {
        // SAFETY: `has_avx2` detected AVX2 and FMA on this CPU, the only
        // requirement of `group_scores_fma` beyond its checked arguments.
        return unsafe { group_scores_fma(qs, keys, hd, scale, scores, stride) };
    }
    let dot = crate::quant::kernels().f32_dot;
    for (i, k) in keys.chunks_exact(hd).enumerate() {
        for (h, q) in qs.chunks_exact(hd).enumerate() {
            scores[h * stride + i] = scale * dot(q, k);
        }
    }
}

/// [`group_scores`] in 256-bit FMA registers, for `hd` a multiple of 8 (the
/// compiler's own vectorisation of it kept its accumulators on the stack).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn group_scores_fma(qs: &[f32], keys: &[f32], hd: usize, scale: f32, scores: &mut [f32], stride: usize) {
    use std::arch::x86_64::*;
    assert!(hd.is_multiple_of(8) && hd > 0);
    for (i, k) in keys.chunks_exact(hd).enumerate() {
        for (h, q) in qs.chunks_exact(hd).enumerate() {
            // SAFETY: every load reads 8 floats at `c` with `c + 8 <= hd`,
            // inside `q` and `k` (both `hd` long; `hd` is a multiple of 8);
            // the rest is register-only AVX/FMA, which the caller promises.
            let dot = unsafe {
                let (qp, kp) = (q.as_ptr(), k.as_ptr());
                let mut a0 = _mm256_setzero_ps();
                let mut a1 = _mm256_setzero_ps();
                let mut c = 0;
                while c + 16 <= hd {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), _mm256_loadu_ps(kp.add(c)), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c + 8)), _mm256_loadu_ps(kp.add(c + 8)), a1);
                    c += 16;
                }
                if c < hd {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), _mm256_loadu_ps(kp.add(c)), a0);
                }
                let v = _mm256_add_ps(a0, a1);
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            };
            scores[h * stride + i] = scale * dot;
        }
    }
}

vectorized! {
    /// `out_h += Σ_i w[h * stride + i] · v_i` for the rows `out_h` of `outs`
    /// and `v_i` of `vals` (each `hd` wide): each value row read once for
    /// the whole group.
    pub fn group_weighted_sum(w: &[f32], stride: usize, vals: &[f32], hd: usize, outs: &mut [f32]) {
        for (i, v) in vals.chunks_exact(hd).enumerate() {
            for (h, o) in outs.chunks_exact_mut(hd).enumerate() {
                let a = w[h * stride + i];
                for (oj, vj) in o.iter_mut().zip(v) {
                    *oj += a * vj;
                }
            }
        }
    }
}

vectorized! {
    /// SwiGLU: `gate = silu(gate) * up`, in place on `gate`.
    pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + fast_exp(-*g)) * u;
        }
    }
}

vectorized! {
    /// GELU as BERT defines it (the exact erf form), in place.
    pub fn gelu_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = 0.5 * *v * (1.0 + fast_erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

vectorized! {
    /// GELU, tanh approximation (`gelu_new`, `gelu_pytorch_tanh`), in place.
    pub fn gelu_tanh_in_place(x: &mut [f32]) {
        const C: f32 = 0.797_884_6; // sqrt(2/pi)
        for v in x.iter_mut() {
            let u = C * (*v + 0.044_715 * *v * *v * *v);
            // tanh(u) = 1 - 2 / (e^{2u} + 1)
            let th = 1.0 - 2.0 / (fast_exp(2.0 * u) + 1.0);
            *v = 0.5 * *v * (1.0 + th);
        }
    }
}

vectorized! {
    /// GeGLU's `gelu_tanh(gate) * up`, into `gate`.
    pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
        const C: f32 = 0.797_884_6; // sqrt(2/pi)
        for (g, u) in gate.iter_mut().zip(up) {
            let x = *g;
            let t = C * (x + 0.044_715 * x * x * x);
            let th = 1.0 - 2.0 / (fast_exp(2.0 * t) + 1.0);
            *g = 0.5 * x * (1.0 + th) * u;
        }
    }
}

/// erf in f64 (Numerical Recipes' erfc Chebyshev fit, error ~1.2e-7): the
/// reference `fast_erf` is tested against.
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

vectorized! {
    /// Softmax in place over the whole slice.
    pub fn softmax_in_place(x: &mut [f32]) {
        let mut max = f32::NEG_INFINITY;
        for v in x.iter() {
            max = max.max(*v);
        }
        for v in x.iter_mut() {
            *v = fast_exp(*v - max);
        }
        let inv = 1.0 / sum8(x, |v| v);
        for v in x.iter_mut() {
            *v *= inv;
        }
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
    /// cos and sin are multiplied by this (LongRoPE's attention factor).
    pub attention_factor: f32,
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
            attention_factor: 1.0,
        }
    }

    /// The same rotary with cos and sin scaled by `factor`.
    pub fn with_attention_factor(self, factor: f32) -> Self {
        Rope {
            attention_factor: factor,
            ..self
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
            cs[i] = c * self.attention_factor;
            cs[half + i] = s * self.attention_factor;
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
    fn fast_exp_and_erf_are_accurate() {
        let mut x = -30.0f32;
        while x < 30.0 {
            let (got, want) = (fast_exp(x), (x as f64).exp() as f32);
            assert!((got - want).abs() <= 3e-7 * want, "exp({x}) = {got} want {want}");
            let (e, w) = (fast_erf(x / 6.0), erf(x / 6.0));
            assert!((e - w).abs() < 3e-7, "erf({}) = {e} want {w}", x / 6.0);
            x += 0.0137;
        }
        assert_eq!(fast_exp(-200.0), 0.0f32.max(fast_exp(-200.0)));
        assert!(fast_exp(-200.0) < 1e-37);
    }

    #[test]
    fn vectorized_ops_match_plain_maths() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut s = x.clone();
        softmax_in_place(&mut s);
        let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = x.iter().map(|v| ((v - max) as f64).exp()).sum();
        for (a, v) in s.iter().zip(&x) {
            assert!((a - (((v - max) as f64).exp() / z) as f32).abs() < 1e-6);
        }
        let w = vec![1.5f32; 37];
        let b = vec![0.25f32; 37];
        let mut ln = x.clone();
        layer_norm_in_place(&mut ln, &w, &b, 1e-5);
        let mean: f32 = x.iter().sum::<f32>() / 37.0;
        let var: f32 = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 37.0;
        for (a, v) in ln.iter().zip(&x) {
            assert!((a - ((v - mean) / (var + 1e-5).sqrt() * 1.5 + 0.25)).abs() < 1e-5);
        }
        let mut g = x.clone();
        gelu_in_place(&mut g);
        for (a, v) in g.iter().zip(&x) {
            let want = 0.5 * v * (1.0 + erf(v / std::f32::consts::SQRT_2));
            assert!((a - want).abs() < 1e-6, "gelu({v}) = {a} want {want}");
        }
    }

    /// The grouped attention products against plain loops, for head sizes
    /// the FMA path takes (multiples of 8, with and without a half chunk)
    /// and one it leaves to the portable loop.
    #[test]
    fn group_products_match_plain_maths() {
        let val = |i: usize| ((i * 37 % 23) as f32 - 11.0) / 7.0;
        for hd in [8, 24, 64, 12] {
            let (group, n, stride) = (3, 5, 7);
            let qs: Vec<f32> = (0..group * hd).map(val).collect();
            let keys: Vec<f32> = (0..n * hd).map(|i| val(i + 5)).collect();
            let mut scores = vec![f32::NAN; (group - 1) * stride + n];
            group_scores(&qs, &keys, hd, 0.5, &mut scores, stride);
            for h in 0..group {
                for i in 0..n {
                    let want: f32 = (0..hd).map(|d| qs[h * hd + d] * keys[i * hd + d]).sum::<f32>() * 0.5;
                    let got = scores[h * stride + i];
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "hd {hd} h {h} i {i}: {got} vs {want}"
                    );
                }
            }
            let mut outs = vec![1.0f32; group * hd];
            group_weighted_sum(&scores, stride, &keys, hd, &mut outs);
            for h in 0..group {
                for d in 0..hd {
                    let want = 1.0 + (0..n).map(|i| scores[h * stride + i] * keys[i * hd + d]).sum::<f32>();
                    let got = outs[h * hd + d];
                    assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "hd {hd} h {h} d {d}");
                }
            }
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
