//! Activation quantisation and weight-row · activation dot products, with the
//! kernel set chosen once at run time from the CPU's features so that one
//! binary is fast on every x86-64 machine (and correct everywhere else).

use std::sync::OnceLock;

use super::dequant::q6k_value;
use super::packed::{
    PackKind, PackedKernel, q4x8_res_scalar, q4x8_scalar, q8hx8_res_scalar, q8hx8_scalar, q8mx8_res_scalar,
    q8mx8_scalar, q8x8_res_scalar, q8x8_scalar,
};
use super::{BlockQ8, GgmlType, QK, QK_K, f16_at, k3_scales, k4_scale_min};
use crate::compute::gemm::PanelKernels;

/// `row` is one weight row of the kernel's type; `act` the activations of one
/// token, quantised, with `act.len() * 32` equal to the row's length. Every
/// kernel is sound for any lengths: it reads the whole blocks both slices
/// hold (mismatched lengths give a wrong sum, never a stray read).
pub type DotFn = fn(row: &[u8], act: &[BlockQ8]) -> f32;
pub type QuantizeFn = fn(x: &[f32], out: &mut [BlockQ8]);
/// `packed::quantize_residual`: `x`'s residual after `acts`, into `res`.
pub type QuantizeResidualFn = fn(x: &[f32], acts: &[BlockQ8], res: &mut [BlockQ8]);
pub type F32DotFn = fn(a: &[f32], b: &[f32]) -> f32;

/// The kernels this process uses, picked once from the CPU's features.
pub struct Kernels {
    /// Which implementation was chosen ("avx512vnni", "avx2", "scalar").
    pub name: &'static str,
    pub quantize: QuantizeFn,
    pub quantize_residual: QuantizeResidualFn,
    pub f32_dot: F32DotFn,
    q4_0: DotFn,
    q4_1: DotFn,
    q5_0: DotFn,
    q5_1: DotFn,
    q8_0: DotFn,
    q2_k: DotFn,
    q3_k: DotFn,
    q4_k: DotFn,
    q5_k: DotFn,
    q6_k: DotFn,
    packed_q4: PackedKernel,
    packed_q8: PackedKernel,
    packed_q8m: PackedKernel,
    packed_q8h: PackedKernel,
    packed_q4_res: PackedKernel,
    packed_q8_res: PackedKernel,
    packed_q8m_res: PackedKernel,
    packed_q8h_res: PackedKernel,
    /// Whether the packed kernels are SIMD ones (see `packing_enabled`).
    packed_simd: bool,
    /// The f32/f16 GEMM's panel kernels of the same instruction set.
    pub panels: PanelKernels,
}

impl Kernels {
    /// The dot product for a quantised type; None for the float types, which
    /// are multiplied in f32 without quantising the activations.
    pub fn dot(&self, ty: GgmlType) -> Option<DotFn> {
        Some(match ty {
            GgmlType::Q4_0 => self.q4_0,
            GgmlType::Q4_1 => self.q4_1,
            GgmlType::Q5_0 => self.q5_0,
            GgmlType::Q5_1 => self.q5_1,
            GgmlType::Q8_0 => self.q8_0,
            GgmlType::Q2_K => self.q2_k,
            GgmlType::Q3_K => self.q3_k,
            GgmlType::Q4_K => self.q4_k,
            GgmlType::Q5_K => self.q5_k,
            GgmlType::Q6_K => self.q6_k,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return None,
        })
    }

    /// The kernel for a packed (row-interleaved) layout; `precise` adds the
    /// activations' residual pass (~16-bit activations).
    pub fn packed(&self, kind: PackKind, precise: bool) -> PackedKernel {
        match (kind, precise) {
            (PackKind::Q4, false) => self.packed_q4,
            (PackKind::Q8, false) => self.packed_q8,
            (PackKind::Q8M, false) => self.packed_q8m,
            (PackKind::Q8H, false) => self.packed_q8h,
            (PackKind::Q4, true) => self.packed_q4_res,
            (PackKind::Q8, true) => self.packed_q8_res,
            (PackKind::Q8M, true) => self.packed_q8m_res,
            (PackKind::Q8H, true) => self.packed_q8h_res,
        }
    }

    /// Whether this set's packed kernels are SIMD ones.
    pub fn packed_simd(&self) -> bool {
        self.packed_simd
    }

    /// The portable kernel for a packed layout (reference for tests).
    pub fn packed_scalar(&self, kind: PackKind) -> PackedKernel {
        match kind {
            PackKind::Q4 => q4x8_scalar,
            PackKind::Q8 => q8x8_scalar,
            PackKind::Q8M => q8mx8_scalar,
            PackKind::Q8H => q8hx8_scalar,
        }
    }

    pub fn scalar() -> Kernels {
        Kernels {
            name: "scalar",
            quantize: quantize_scalar,
            quantize_residual: super::packed::quantize_residual_scalar,
            f32_dot: f32_dot_scalar,
            q4_0: dot_q4_0,
            q4_1: dot_q4_1,
            q5_0: dot_q5_0,
            q5_1: dot_q5_1,
            q8_0: dot_q8_0,
            q2_k: dot_q2_k,
            q3_k: dot_q3_k,
            q4_k: dot_q4_k,
            q5_k: dot_q5_k,
            q6_k: dot_q6_k,
            packed_q4: q4x8_scalar,
            packed_q8: q8x8_scalar,
            packed_q8m: q8mx8_scalar,
            packed_q8h: q8hx8_scalar,
            packed_q4_res: q4x8_res_scalar,
            packed_q8_res: q8x8_res_scalar,
            packed_q8m_res: q8mx8_res_scalar,
            packed_q8h_res: q8hx8_res_scalar,
            packed_simd: false,
            panels: PanelKernels::SCALAR,
        }
    }

    fn detect() -> Kernels {
        if std::env::var_os("HFMS_FORCE_SCALAR_KERNELS").is_some() {
            return Self::scalar();
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = super::x86::kernels() {
            return k;
        }
        Self::scalar()
    }

    /// Replace some kernels; the x86 module fills in what it accelerates.
    #[allow(dead_code)]
    pub(super) fn with(mut self, f: impl FnOnce(&mut KernelSlots<'_>)) -> Kernels {
        f(&mut KernelSlots(&mut self));
        self
    }
}

/// Mutable access to the kernel slots for the SIMD modules.
#[allow(dead_code)]
pub(super) struct KernelSlots<'a>(&'a mut Kernels);

#[allow(dead_code)]
impl KernelSlots<'_> {
    pub fn name(&mut self, n: &'static str) {
        self.0.name = n;
    }
    pub fn quantize(&mut self, f: QuantizeFn) {
        self.0.quantize = f;
    }
    pub fn quantize_residual(&mut self, f: QuantizeResidualFn) {
        self.0.quantize_residual = f;
    }
    pub fn f32_dot(&mut self, f: F32DotFn) {
        self.0.f32_dot = f;
    }
    pub fn panels(&mut self, p: PanelKernels) {
        self.0.panels = p;
    }
    pub fn packed(&mut self, kind: PackKind, precise: bool, f: PackedKernel) {
        self.0.packed_simd = true;
        match (kind, precise) {
            (PackKind::Q4, false) => self.0.packed_q4 = f,
            (PackKind::Q8, false) => self.0.packed_q8 = f,
            (PackKind::Q8M, false) => self.0.packed_q8m = f,
            (PackKind::Q8H, false) => self.0.packed_q8h = f,
            (PackKind::Q4, true) => self.0.packed_q4_res = f,
            (PackKind::Q8, true) => self.0.packed_q8_res = f,
            (PackKind::Q8M, true) => self.0.packed_q8m_res = f,
            (PackKind::Q8H, true) => self.0.packed_q8h_res = f,
        }
    }
    pub fn set(&mut self, ty: GgmlType, f: DotFn) {
        let k = &mut *self.0;
        match ty {
            GgmlType::Q4_0 => k.q4_0 = f,
            GgmlType::Q4_1 => k.q4_1 = f,
            GgmlType::Q5_0 => k.q5_0 = f,
            GgmlType::Q5_1 => k.q5_1 = f,
            GgmlType::Q8_0 => k.q8_0 = f,
            GgmlType::Q2_K => k.q2_k = f,
            GgmlType::Q3_K => k.q3_k = f,
            GgmlType::Q4_K => k.q4_k = f,
            GgmlType::Q5_K => k.q5_k = f,
            GgmlType::Q6_K => k.q6_k = f,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {}
        }
    }
}

/// Every kernel set of this build, and for each the CPU features this CPU
/// lacks to run it (empty: it runs here, and the tests check it against
/// the scalar reference; otherwise this host cannot test it). Scalar first.
pub fn kernel_set_coverage() -> Vec<(&'static str, Vec<&'static str>)> {
    #[allow(unused_mut)]
    let mut v = vec![("scalar", Vec::new())];
    #[cfg(target_arch = "x86_64")]
    v.extend(super::x86::coverage());
    v
}

/// One line naming the kernel sets this host runs (and tests) and those it
/// cannot, with the features it lacks for them.
pub fn kernel_set_report() -> String {
    let sets = kernel_set_coverage();
    let here: Vec<&str> = sets.iter().filter(|s| s.1.is_empty()).map(|s| s.0).collect();
    let not: Vec<String> = sets
        .iter()
        .filter(|s| !s.1.is_empty())
        .map(|(name, lacks)| format!("{name} (lacks {})", lacks.join(" ")))
        .collect();
    format!(
        "kernel sets run and tested here: {}; not on this CPU, so untested here: {}",
        here.join(", "),
        if not.is_empty() {
            "none".to_string()
        } else {
            not.join(", ")
        }
    )
}

/// Every kernel set this CPU can run, scalar first (tests check each).
pub fn available_kernels() -> Vec<Kernels> {
    #[allow(unused_mut)]
    let mut v = vec![Kernels::scalar()];
    #[cfg(target_arch = "x86_64")]
    v.extend(super::x86::all());
    v
}

pub fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(Kernels::detect)
}

/// Quantise `x` (a multiple of 32 long) into `out` with the chosen kernel.
pub fn quantize_activations(x: &[f32], out: &mut [BlockQ8]) {
    (kernels().quantize)(x, out)
}

pub(super) fn quantize_scalar(x: &[f32], out: &mut [BlockQ8]) {
    for (xb, blk) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sums = [0i32; 2];
        for (j, v) in xb.iter().enumerate() {
            let q = (v * id).round() as i32;
            blk.qs[j] = q as i8;
            sums[j / 16] += q;
        }
        blk.d = d;
        blk.sums = [sums[0] as i16, sums[1] as i16];
    }
}

pub(super) fn f32_dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators: the compiler vectorises this, and the
    // summation order matches the SIMD kernels closely.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[inline]
fn idot(w: impl Iterator<Item = i32>, x: &[i8]) -> i32 {
    w.zip(x.iter()).map(|(a, &b)| a * b as i32).sum()
}

fn dot_q4_0(row: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in row.chunks_exact(18).zip(act) {
        let qs = &b[2..18];
        let lo = idot(qs.iter().map(|&q| (q & 0x0f) as i32), &a.qs[..16]);
        let hi = idot(qs.iter().map(|&q| (q >> 4) as i32), &a.qs[16..]);
        acc += f16_at(b, 0) * a.d * (lo + hi - 8 * a.sum()) as f32;
    }
    acc
}

fn dot_q4_1(row: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in row.chunks_exact(20).zip(act) {
        let qs = &b[4..20];
        let lo = idot(qs.iter().map(|&q| (q & 0x0f) as i32), &a.qs[..16]);
        let hi = idot(qs.iter().map(|&q| (q >> 4) as i32), &a.qs[16..]);
        acc += f16_at(b, 0) * a.d * (lo + hi) as f32 + f16_at(b, 2) * a.d * a.sum() as f32;
    }
    acc
}

fn q5_values(qh: u32, qs: &[u8]) -> [i32; 32] {
    let mut v = [0i32; 32];
    for j in 0..16 {
        v[j] = ((qs[j] & 0x0f) as u32 | (((qh >> j) & 1) << 4)) as i32;
        v[j + 16] = ((qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4)) as i32;
    }
    v
}

fn dot_q5_0(row: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in row.chunks_exact(22).zip(act) {
        let v = q5_values(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22]);
        let s = idot(v.iter().copied(), &a.qs);
        acc += f16_at(b, 0) * a.d * (s - 16 * a.sum()) as f32;
    }
    acc
}

fn dot_q5_1(row: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in row.chunks_exact(24).zip(act) {
        let v = q5_values(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &b[8..24]);
        let s = idot(v.iter().copied(), &a.qs);
        acc += f16_at(b, 0) * a.d * s as f32 + f16_at(b, 2) * a.d * a.sum() as f32;
    }
    acc
}

fn dot_q8_0(row: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in row.chunks_exact(34).zip(act) {
        let s = idot(b[2..34].iter().map(|&q| q as i8 as i32), &a.qs);
        acc += f16_at(b, 0) * a.d * s as f32;
    }
    acc
}

fn dot_q2_k(row: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a8) in row.chunks_exact(84).zip(act.chunks_exact(QK_K / QK)) {
        let scales = &b[0..16];
        let qs = &b[16..80];
        let d = f16_at(b, 80);
        let dmin = f16_at(b, 82);
        for (k, a) in a8.iter().enumerate() {
            // Activation block k covers elements 32k..32k+32: half k/4, shift k%4.
            let (half, shift) = (k / 4, k % 4);
            let mut sc_sum = 0i32;
            let mut min_sum = 0i32;
            for g in 0..2 {
                let sc = scales[2 * k + g];
                let s = idot(
                    (0..16).map(|l| ((qs[half * 32 + g * 16 + l] >> (2 * shift)) & 3) as i32),
                    &a.qs[g * 16..g * 16 + 16],
                );
                sc_sum += (sc & 0x0f) as i32 * s;
                min_sum += (sc >> 4) as i32 * a.sums[g] as i32;
            }
            acc += a.d * (d * sc_sum as f32 - dmin * min_sum as f32);
        }
    }
    acc
}

fn dot_q3_k(row: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a8) in row.chunks_exact(110).zip(act.chunks_exact(QK_K / QK)) {
        let hmask = &b[0..32];
        let qs = &b[32..96];
        let scales = k3_scales(&b[96..108]);
        let d = f16_at(b, 108);
        for (k, a) in a8.iter().enumerate() {
            let (half, shift) = (k / 4, k % 4);
            let mut sum = 0i32;
            for g in 0..2 {
                let s = idot(
                    (0..16).map(|l| {
                        let idx = g * 16 + l;
                        let low = ((qs[half * 32 + idx] >> (2 * shift)) & 3) as i32;
                        let high = (hmask[idx] >> k) & 1;
                        if high == 0 { low - 4 } else { low }
                    }),
                    &a.qs[g * 16..g * 16 + 16],
                );
                sum += scales[2 * k + g] as i32 * s;
            }
            acc += a.d * d * sum as f32;
        }
    }
    acc
}

fn dot_q4_k(row: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a8) in row.chunks_exact(144).zip(act.chunks_exact(QK_K / QK)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        for (j, a) in a8.iter().enumerate() {
            let (sc, m) = k4_scale_min(scales, j);
            let chunk = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
            let shift = 4 * (j % 2);
            let s = idot(chunk.iter().map(|&q| ((q >> shift) & 0x0f) as i32), &a.qs);
            acc += a.d * (d * sc as f32 * s as f32 - dmin * m as f32 * a.sum() as f32);
        }
    }
    acc
}

fn dot_q5_k(row: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a8) in row.chunks_exact(176).zip(act.chunks_exact(QK_K / QK)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        for (j, a) in a8.iter().enumerate() {
            let (sc, m) = k4_scale_min(scales, j);
            let chunk = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
            let shift = 4 * (j % 2);
            let s = idot(
                (0..32).map(|l| (((chunk[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4)) as i32),
                &a.qs,
            );
            acc += a.d * (d * sc as f32 * s as f32 - dmin * m as f32 * a.sum() as f32);
        }
    }
    acc
}

fn dot_q6_k(row: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a8) in row.chunks_exact(210).zip(act.chunks_exact(QK_K / QK)) {
        let ql = &b[0..128];
        let qh = &b[128..192];
        let scales = &b[192..208];
        let d = f16_at(b, 208);
        for (k, a) in a8.iter().enumerate() {
            let mut sum = 0i32;
            for g in 0..2 {
                let base = k * 32 + g * 16;
                let s = idot((0..16).map(|l| q6k_value(ql, qh, base + l)), &a.qs[g * 16..g * 16 + 16]);
                sum += (scales[2 * k + g] as i8) as i32 * s;
            }
            acc += a.d * d * sum as f32;
        }
    }
    acc
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quant::dequantize_row;

    /// Deterministic pseudo-random bytes for block contents.
    pub(crate) fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// A row of random blocks with sane (small, finite) f16 scales.
    pub(crate) fn random_row(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
        let (be, bb) = ty.block();
        let mut row = noise(seed, n / be * bb);
        let scale_offsets: &[usize] = match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
            GgmlType::Q2_K => &[80, 82],
            GgmlType::Q3_K => &[108],
            GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q6_K => &[208],
            _ => &[],
        };
        for (i, blk) in row.chunks_exact_mut(bb).enumerate() {
            for (k, &off) in scale_offsets.iter().enumerate() {
                let v = 0.001 + 0.01 * (((i * 7 + k * 3) % 11) as f32);
                let v = if k == 1 && matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                    -v
                } else {
                    v
                };
                blk[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        row
    }

    pub(crate) fn random_acts(n: usize, seed: u64) -> Vec<f32> {
        noise(seed, n)
            .iter()
            .enumerate()
            .map(|(i, &b)| (b as f32 - 127.5) / 64.0 + (i % 5) as f32 * 0.1)
            .collect()
    }

    pub(crate) const ALL_QUANT: [GgmlType; 10] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// Each scalar dot equals the f32 dot of the dequantised row with the
    /// dequantised activations (exactly up to float rounding: both sides use
    /// the same quantised activation values).
    #[test]
    fn scalar_dots_match_dequantised_reference() {
        let k = Kernels::scalar();
        let n = if cfg!(miri) { 256 } else { 512 };
        for ty in ALL_QUANT {
            let row = random_row(ty, n, ty as u64 + 1);
            let mut w = vec![0f32; n];
            dequantize_row(ty, &row, &mut w);
            let x = random_acts(n, 99);
            let mut q = vec![BlockQ8::default(); n / 32];
            quantize_scalar(&x, &mut q);
            let xq: Vec<f32> = q
                .iter()
                .flat_map(|b| b.qs.iter().map(move |&v| v as f32 * b.d))
                .collect();
            let want: f64 = w.iter().zip(&xq).map(|(a, b)| *a as f64 * *b as f64).sum();
            let got = (k.dot(ty).unwrap())(&row, &q) as f64;
            let scale: f64 = w.iter().zip(&xq).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            assert!(
                (got - want).abs() <= 1e-4 * scale.max(1.0),
                "{ty:?}: got {got} want {want}"
            );
        }
    }

    #[test]
    fn every_kernel_set_matches_scalar() {
        let tested: Vec<&str> = available_kernels().iter().map(|k| k.name).collect();
        for fast in available_kernels() {
            check_against_scalar(&fast);
        }
        // The report names exactly the sets this test checked.
        let runs: Vec<&str> = kernel_set_coverage()
            .iter()
            .filter(|s| s.1.is_empty())
            .map(|s| s.0)
            .collect();
        assert_eq!(runs, tested);
        eprintln!("{}", kernel_set_report());
    }

    fn check_against_scalar(fast: &Kernels) {
        let slow = Kernels::scalar();
        let sizes: &[usize] = if cfg!(miri) { &[256] } else { &[256, 576, 1536, 4096] };
        for &n in sizes {
            let x = random_acts(n, n as u64);
            let mut qa = vec![BlockQ8::default(); n / 32];
            let mut qb = vec![BlockQ8::default(); n / 32];
            (fast.quantize)(&x, &mut qa);
            quantize_scalar(&x, &mut qb);
            for (a, b) in qa.iter().zip(&qb) {
                assert!((a.d - b.d).abs() <= 1e-7 * b.d.abs().max(1e-30));
                // Rounding of exact halves may differ by one step.
                for (p, q) in a.qs.iter().zip(&b.qs) {
                    assert!((*p as i32 - *q as i32).abs() <= 1);
                }
            }
            let y = random_acts(n, 7 + n as u64);
            let fd = (fast.f32_dot)(&x, &y);
            let sd = f32_dot_scalar(&x, &y);
            assert!((fd - sd).abs() <= 1e-3 * sd.abs().max(1.0), "f32 dot {fd} vs {sd}");
            for ty in ALL_QUANT {
                if n % ty.block().0 != 0 {
                    continue;
                }
                let row = random_row(ty, n, 3 + ty as u64);
                let got = (fast.dot(ty).unwrap())(&row, &qb);
                let want = (slow.dot(ty).unwrap())(&row, &qb);
                assert!(
                    (got - want).abs() <= 2e-4 * want.abs().max(1.0),
                    "{} {ty:?} n={n}: {got} vs {want}",
                    fast.name
                );
            }
        }
    }
}
