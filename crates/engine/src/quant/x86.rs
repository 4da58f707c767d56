//! x86-64 SIMD kernels, chosen at run time.
//!
//! Each kernel body is written once, generic over how a 32-lane u8·i8 product
//! is reduced to eight i32 lanes ([`U8Dot`]): AVX2 uses `maddubs` + `madd`,
//! AVX-512 VNNI one `vpdpbusd`. The bodies are `#[inline(always)]` so that they
//! are compiled inside the `#[target_feature]` entry points generated below;
//! that is what lets one binary carry both without `-C target-cpu`.
//!
//! # Safety
//! Every `unsafe fn` here has the same first requirement: the CPU has the
//! features of the entry point it is inlined into — AVX2, FMA and F16C, plus
//! AVX-512 F/BW/VL/VNNI for [`Vnni`] — since they execute those
//! instructions. Functions that read through raw pointers or unchecked
//! indices also say which bytes must be readable. The only way in from safe
//! code is the function pointers that [`kernels`] and [`all`] install after
//! detecting the features at run time; they check the lengths the bodies
//! trust (the packed kernels) or only read whole blocks both slices hold
//! (`chunks_exact` and `zip`, the row kernels).

use std::arch::x86_64::*;

use super::dot::Kernels;
use super::packed::{GROUP, PackKind};
use super::{BlockQ8, GgmlType, QK, QK_K, k3_scales, k4_scale_min};
use crate::compute::gemm::PanelKernels;

/// How u8·i8 products are summed. Register-only: the methods' sole safety
/// requirement is the CPU features of the implementation (AVX2 for
/// [`Avx2`], AVX-512 VNNI+VL for [`Vnni`]).
trait U8Dot {
    /// Eight i32 lanes, lane i = sum over bytes 4i..4i+4 of `u[b] * s[b]`.
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;
    /// `acc + dot(u, s)`.
    unsafe fn dot_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    /// Whether `dot_q8` leaves the `+128` bias of packed Q8 quants in the
    /// sum (the caller then subtracts `128·Σx`).
    const Q8_BIASED: bool;
    /// `acc + Σ w·x` for packed Q8 quants `w` stored as `q + 128`.
    unsafe fn dot_q8_acc(acc: __m256i, w: __m256i, x: __m256i) -> __m256i;
}

struct Avx2;
struct Vnni;

impl U8Dot for Avx2 {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: register-only AVX2 intrinsics; AVX2 is the caller's contract.
        unsafe {
            let p16 = _mm256_maddubs_epi16(u, s);
            _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
        }
    }
    #[inline(always)]
    unsafe fn dot_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: register-only AVX2; AVX2 is the caller's contract.
        unsafe { _mm256_add_epi32(acc, Self::dot(u, s)) }
    }
    // maddubs saturates at i16: (q + 128)·x can reach 255·127·2. Undo the
    // bias and move the sign onto x instead: 128·127·2 fits.
    const Q8_BIASED: bool = false;
    #[inline(always)]
    unsafe fn dot_q8_acc(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: register-only AVX2; AVX2 is the caller's contract.
        unsafe {
            let q = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
            Self::dot_acc(acc, _mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q))
        }
    }
}

impl U8Dot for Vnni {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: register-only AVX-512 VNNI+VL; the caller's contract.
        unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s) }
    }
    #[inline(always)]
    unsafe fn dot_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: register-only AVX-512 VNNI+VL; the caller's contract.
        unsafe { _mm256_dpbusd_epi32(acc, u, s) }
    }
    const Q8_BIASED: bool = true;
    #[inline(always)]
    unsafe fn dot_q8_acc(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: register-only AVX-512 VNNI+VL; the caller's contract.
        unsafe { _mm256_dpbusd_epi32(acc, w, x) }
    }
}

/// f16 at byte `i` of `b`, converted with F16C (inlined into the kernels).
///
/// # Safety
/// F16C; `i + 1 < b.len()` (unchecked: the callers pass constant offsets
/// into blocks of known size).
#[inline(always)]
unsafe fn f16_at(b: &[u8], i: usize) -> f32 {
    debug_assert!(i + 1 < b.len());
    // SAFETY: bytes `i` and `i + 1` are in `b` and F16C is present (this
    // function's contract); the rest is register-only.
    unsafe {
        let bits = u16::from_le_bytes([*b.get_unchecked(i), *b.get_unchecked(i + 1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

/// # Safety
/// AVX.
#[inline(always)]
unsafe fn hsum_ps(v: __m256) -> f32 {
    // SAFETY: register-only AVX/SSE intrinsics; AVX is the contract.
    unsafe {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    // SAFETY: register-only AVX2/SSE intrinsics; AVX2 is the contract.
    unsafe {
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256(v, 1);
        let s = _mm_add_epi32(lo, hi);
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

/// 16 packed bytes of nibbles → 32 bytes: low nibbles then high nibbles,
/// which is the element order of the 32-wide ggml blocks.
///
/// # Safety
/// AVX2; 16 bytes readable at `p`.
#[inline(always)]
unsafe fn unpack_nibbles(p: *const u8) -> __m256i {
    // SAFETY: the load reads the 16 bytes the contract makes readable
    // (`loadu`: any alignment); the rest is register-only AVX2.
    unsafe {
        let b = _mm_loadu_si128(p as *const __m128i);
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(b, m);
        let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
        _mm256_set_m128i(hi, lo)
    }
}

/// The 32 quants of an activation block.
///
/// # Safety
/// AVX.
#[inline(always)]
unsafe fn load_act(a: &BlockQ8) -> __m256i {
    // SAFETY: `a.qs` is 32 bytes, exactly one unaligned 256-bit load; AVX
    // is the contract.
    unsafe { _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i) }
}

/// # Safety
/// AVX2. Any lengths: whole 32-value chunks of `x` that have a block in
/// `out` are quantised.
#[inline(always)]
unsafe fn quantize_body(x: &[f32], out: &mut [BlockQ8]) {
    // SAFETY: each chunk `xb` holds 32 f32, read as four 8-lane loads;
    // each block's `qs` is 32 bytes, written as one 256-bit store (`loadu`
    // and `storeu`: any alignment). AVX2 is the contract.
    unsafe {
        let sign_mask = _mm256_set1_ps(-0.0);
        for (xb, blk) in x.chunks_exact(QK).zip(out.iter_mut()) {
            let p = xb.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let mut m = _mm256_andnot_ps(sign_mask, v[0]);
            for vi in &v[1..] {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign_mask, *vi));
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
            let amax = _mm_cvtss_f32(m4);
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            // cvtps rounds to nearest-even under the default MXCSR mode. No
            // closures here: they would not inherit the target features.
            let q = [
                _mm256_cvtps_epi32(_mm256_mul_ps(v[0], id)),
                _mm256_cvtps_epi32(_mm256_mul_ps(v[1], id)),
                _mm256_cvtps_epi32(_mm256_mul_ps(v[2], id)),
                _mm256_cvtps_epi32(_mm256_mul_ps(v[3], id)),
            ];
            store_block(q, d, blk);
        }
    }
}

/// Writes 32 quants (four registers of 8 i32 in ±127) and their scale into
/// `blk`, with the sums of each half.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn store_block(q: [__m256i; 4], d: f32, blk: &mut BlockQ8) {
    // SAFETY: `blk.qs` is 32 bytes, one unaligned 256-bit store; AVX2 is
    // the contract.
    unsafe {
        // i32 → i16 → i8 with packs; packs interleave 128-bit lanes, so
        // restore element order with a permute.
        let s01 = _mm256_packs_epi32(q[0], q[1]);
        let s23 = _mm256_packs_epi32(q[2], q[3]);
        let b = _mm256_packs_epi16(s01, s23);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(blk.qs.as_mut_ptr() as *mut __m256i, b);
        let lo = hsum_epi32(_mm256_add_epi32(q[0], q[1]));
        let hi = hsum_epi32(_mm256_add_epi32(q[2], q[3]));
        blk.d = d;
        blk.sums = [lo as i16, hi as i16];
    }
}

/// `packed::quantize_residual`'s SIMD form (the same maths but for the
/// rounding of ties and one fused multiply-add).
///
/// # Safety
/// AVX2 and FMA. Any lengths: the whole blocks all three slices hold.
#[inline(always)]
unsafe fn quantize_residual_body(x: &[f32], acts: &[BlockQ8], res: &mut [BlockQ8]) {
    // SAFETY: each chunk `xb` holds 32 f32, read as four 8-lane loads; each
    // block's `qs` holds 32 bytes, read as four 8-byte loads; the features
    // are the contract.
    unsafe {
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        for ((xb, a), r) in x.chunks_exact(QK).zip(acts).zip(res.iter_mut()) {
            let d = _mm256_set1_ps(a.d);
            let id = _mm256_set1_ps(if a.d > 0.0 { 256.0 / a.d } else { 0.0 });
            let mut q = [_mm256_setzero_si256(); 4];
            for (c, qc) in q.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(xb.as_ptr().add(8 * c));
                let qa = _mm_loadl_epi64(a.qs.as_ptr().add(8 * c) as *const __m128i);
                let qa = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(qa));
                let e = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_fnmadd_ps(qa, d, xv), id));
                *qc = _mm256_min_epi32(_mm256_max_epi32(e, lo), hi);
            }
            store_block(q, a.d / 256.0, r);
        }
    }
}

/// # Safety
/// AVX and FMA. Any lengths: the first `min(a.len(), b.len())` products.
#[inline(always)]
unsafe fn f32_dot_body(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: every load reads `[i, i + 8)` with `i + 8 <= n`, `n` the
    // shorter length; the tail is indexed safely. Features: the contract.
    unsafe {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc_k) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(a.as_ptr().add(i + 8 * k));
                let y = _mm256_loadu_ps(b.as_ptr().add(i + 8 * k));
                *acc_k = _mm256_fmadd_ps(x, y, *acc_k);
            }
            i += 32;
        }
        while i + 8 <= n {
            let x = _mm256_loadu_ps(a.as_ptr().add(i));
            let y = _mm256_loadu_ps(b.as_ptr().add(i));
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut r = hsum_ps(s);
        while i < n {
            r += a[i] * b[i];
            i += 1;
        }
        r
    }
}

/// # Safety
/// The entry point's features. Any lengths: the blocks `row` and `act`
/// both hold.
#[inline(always)]
unsafe fn q4_0_body<D: U8Dot>(row: &[u8], act: &[BlockQ8]) -> f32 {
    // SAFETY: each `b` is one whole 18-byte block (`chunks_exact`), and
    // every unchecked read stays inside it: nibbles at bytes 2..18, the scale at 0..2. Activations are read
    // through references. Features: the contract.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        for (b, a) in row.chunks_exact(18).zip(act) {
            let w = unpack_nibbles(b.as_ptr().add(2));
            let p = D::dot(w, load_act(a));
            let s = f16_at(b, 0) * a.d;
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s), acc);
            offset += s * (8 * a.sum()) as f32;
        }
        hsum_ps(acc) - offset
    }
}

/// # Safety
/// The entry point's features. Any lengths: the blocks `row` and `act`
/// both hold.
#[inline(always)]
unsafe fn q4_1_body<D: U8Dot>(row: &[u8], act: &[BlockQ8]) -> f32 {
    // SAFETY: each `b` is one whole 20-byte block (`chunks_exact`), and
    // every unchecked read stays inside it: nibbles at bytes 4..20, the scales at 0..4. Activations are read
    // through references. Features: the contract.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        for (b, a) in row.chunks_exact(20).zip(act) {
            let w = unpack_nibbles(b.as_ptr().add(4));
            let p = D::dot(w, load_act(a));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(f16_at(b, 0) * a.d), acc);
            offset += f16_at(b, 2) * a.d * a.sum() as f32;
        }
        hsum_ps(acc) + offset
    }
}

/// # Safety
/// The entry point's features. Any lengths: the blocks `row` and `act`
/// both hold.
#[inline(always)]
unsafe fn q8_0_body<D: U8Dot>(row: &[u8], act: &[BlockQ8]) -> f32 {
    // SAFETY: each `b` is one whole 34-byte block (`chunks_exact`), and
    // every unchecked read stays inside it: one 32-byte load at bytes 2..34, the scale at 0..2. Activations are read
    // through references. Features: the contract.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (b, a) in row.chunks_exact(34).zip(act) {
            let w = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
            let x = load_act(a);
            // u8·i8 only: move the weight's sign onto the activation.
            let p = D::dot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(f16_at(b, 0) * a.d), acc);
        }
        hsum_ps(acc)
    }
}

/// # Safety
/// The entry point's features. Any lengths: the blocks `row` and `act`
/// both hold.
#[inline(always)]
unsafe fn q4_k_body<D: U8Dot>(row: &[u8], act: &[BlockQ8]) -> f32 {
    // SAFETY: each `b` is one whole 144-byte block (`chunks_exact`), and
    // every unchecked read stays inside it: scales at 0..4, four 32-byte loads at 16 + 32c < 144. Activations are read
    // through references. Features: the contract.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        let m4 = _mm256_set1_epi8(0x0f);
        for (b, a8) in row.chunks_exact(144).zip(act.chunks_exact(QK_K / QK)) {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            for c in 0..4 {
                let q = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * c) as *const __m256i);
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                for (j, w) in [(2 * c, lo), (2 * c + 1, hi)] {
                    let a = &a8[j];
                    let (sc, m) = k4_scale_min(scales, j);
                    let p = D::dot(w, load_act(a));
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * sc as f32 * a.d), acc);
                    offset += dmin * m as f32 * a.d * a.sum() as f32;
                }
            }
        }
        hsum_ps(acc) - offset
    }
}

/// # Safety
/// The entry point's features. Any lengths: the blocks `row` and `act`
/// both hold.
#[inline(always)]
unsafe fn q5_k_body<D: U8Dot>(row: &[u8], act: &[BlockQ8]) -> f32 {
    // SAFETY: each `b` is one whole 176-byte block (`chunks_exact`), and
    // every unchecked read stays inside it: scales at 0..4, `qh` at 16..48, four 32-byte loads at 48 + 32c < 176. Activations are read
    // through references. Features: the contract.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        let m4 = _mm256_set1_epi8(0x0f);
        let one = _mm256_set1_epi8(1);
        for (b, a8) in row.chunks_exact(176).zip(act.chunks_exact(QK_K / QK)) {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qh = _mm256_loadu_si256(b.as_ptr().add(16) as *const __m256i);
            for c in 0..4 {
                let q = _mm256_loadu_si256(b.as_ptr().add(48 + 32 * c) as *const __m256i);
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                for (j, w) in [(2 * c, lo), (2 * c + 1, hi)] {
                    // Bit j of each qh byte is the fifth bit of element l.
                    let hb = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32)), one);
                    let w = _mm256_or_si256(w, _mm256_slli_epi16(hb, 4));
                    let a = &a8[j];
                    let (sc, m) = k4_scale_min(scales, j);
                    let p = D::dot(w, load_act(a));
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * sc as f32 * a.d), acc);
                    offset += dmin * m as f32 * a.d * a.sum() as f32;
                }
            }
        }
        hsum_ps(acc) - offset
    }
}

/// # Safety
/// The entry point's features. Any lengths: the blocks `row` and `act`
/// both hold.
#[inline(always)]
unsafe fn q6_k_body<D: U8Dot>(row: &[u8], act: &[BlockQ8]) -> f32 {
    // SAFETY: each `b` is one whole 210-byte block (`chunks_exact`), and
    // every unchecked read stays inside it: `ql` loads at `64 half + 32 (r % 2)` < 128, `qh` loads at `128 + 32 half` < 192, the scale at 208..210. Activations are read
    // through references. Features: the contract.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        let m4 = _mm256_set1_epi8(0x0f);
        let m2 = _mm256_set1_epi8(3);
        for (b, a8) in row.chunks_exact(210).zip(act.chunks_exact(QK_K / QK)) {
            let ql = b.as_ptr();
            let qh = b.as_ptr().add(128);
            let scales = &b[192..208];
            let d = f16_at(b, 208);
            for (k, a) in a8.iter().enumerate() {
                let half = k / 4;
                let r = k % 4;
                let lq = _mm256_loadu_si256(ql.add(half * 64 + (r % 2) * 32) as *const __m256i);
                let low = if r < 2 {
                    _mm256_and_si256(lq, m4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16(lq, 4), m4)
                };
                let hq = _mm256_loadu_si256(qh.add(half * 32) as *const __m256i);
                let high = _mm256_and_si256(_mm256_srl_epi16(hq, _mm_cvtsi32_si128(2 * r as i32)), m2);
                // Stored values are q + 32, in 0..64: a valid u8 operand.
                let w = _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
                let p = D::dot(w, load_act(a));
                let s0 = scales[2 * k] as i8 as i32;
                let s1 = scales[2 * k + 1] as i8 as i32;
                // Lanes 0-3 hold elements 0-15 (scale s0), lanes 4-7 the rest.
                let sv = _mm256_setr_epi32(s0, s0, s0, s0, s1, s1, s1, s1);
                let p = _mm256_mullo_epi32(p, sv);
                let da = d * a.d;
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(da), acc);
                offset += da * (32 * (s0 * a.sums[0] as i32 + s1 * a.sums[1] as i32)) as f32;
            }
        }
        hsum_ps(acc) - offset
    }
}

/// The products of one 16-wide-scaled K-quant block (Q2_K, Q3_K): `w` holds
/// the 32 unsigned quants `u` (value = `u - bias`), lanes 0-3 elements
/// 0-15 under scale `s0`, lanes 4-7 the rest under `s1`. Adds
/// `Σ s·u·x · da` to `acc` and returns `Σ s·bias·x · da` (for the caller's
/// offset; `da` = the block's `d` times the activations').
///
/// # Safety
/// The entry point's features.
#[inline(always)]
unsafe fn k16_block<D: U8Dot>(w: __m256i, a: &BlockQ8, s0: i32, s1: i32, da: f32, bias: i32, acc: &mut __m256) -> f32 {
    // SAFETY: register-only but for `load_act`; features: contract.
    unsafe {
        let p = _mm256_mullo_epi32(
            D::dot(w, load_act(a)),
            _mm256_setr_epi32(s0, s0, s0, s0, s1, s1, s1, s1),
        );
        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(da), *acc);
        da * (bias * (s0 * a.sums[0] as i32 + s1 * a.sums[1] as i32)) as f32
    }
}

/// # Safety
/// The entry point's features. Any lengths: the blocks `row` and `act`
/// both hold.
#[inline(always)]
unsafe fn q2_k_body<D: U8Dot>(row: &[u8], act: &[BlockQ8]) -> f32 {
    // SAFETY: each `b` is one whole 84-byte block (`chunks_exact`); the
    // unchecked reads are the scale at 80..84 and 32-byte `qs` loads at
    // `16 + 32 half` < 80. Activations are read through references.
    // Features: the contract.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        let m2 = _mm256_set1_epi8(3);
        for (b, a8) in row.chunks_exact(84).zip(act.chunks_exact(QK_K / QK)) {
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            let scales = &b[0..16];
            for (k, a) in a8.iter().enumerate() {
                // Block k: bits 2(k % 4) of the 32 bytes of its half.
                let q = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * (k / 4)) as *const __m256i);
                let w = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * (k % 4) as i32)), m2);
                let (s0, s1) = (scales[2 * k], scales[2 * k + 1]);
                k16_block::<D>(w, a, (s0 & 0x0f) as i32, (s1 & 0x0f) as i32, d * a.d, 0, &mut acc);
                // The mins: dmin·(s >> 4) times each half's activations.
                offset +=
                    dmin * a.d * ((s0 >> 4) as i32 * a.sums[0] as i32 + (s1 >> 4) as i32 * a.sums[1] as i32) as f32;
            }
        }
        hsum_ps(acc) - offset
    }
}

/// # Safety
/// The entry point's features. Any lengths: the blocks `row` and `act`
/// both hold.
#[inline(always)]
unsafe fn q3_k_body<D: U8Dot>(row: &[u8], act: &[BlockQ8]) -> f32 {
    // SAFETY: each `b` is one whole 110-byte block (`chunks_exact`); the
    // unchecked reads are the `hmask` load at 0..32, `qs` loads at
    // `32 + 32 half` < 96 and the scale at 108..110. Activations are read
    // through references. Features: the contract.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        let m2 = _mm256_set1_epi8(3);
        let one = _mm256_set1_epi8(1);
        for (b, a8) in row.chunks_exact(110).zip(act.chunks_exact(QK_K / QK)) {
            let d = f16_at(b, 108);
            let scales = k3_scales(&b[96..108]);
            let hmask = _mm256_loadu_si256(b.as_ptr() as *const __m256i);
            for (k, a) in a8.iter().enumerate() {
                let q = _mm256_loadu_si256(b.as_ptr().add(32 + 32 * (k / 4)) as *const __m256i);
                let low = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * (k % 4) as i32)), m2);
                let high = _mm256_and_si256(_mm256_srl_epi16(hmask, _mm_cvtsi32_si128(k as i32)), one);
                // u = low + 4·high in 0..8; the value is u - 4.
                let w = _mm256_or_si256(low, _mm256_slli_epi16(high, 2));
                let (s0, s1) = (scales[2 * k] as i32, scales[2 * k + 1] as i32);
                offset += k16_block::<D>(w, a, s0, s1, d * a.d, 4, &mut acc);
            }
        }
        hsum_ps(acc) - offset
    }
}

/// Four activation bytes `4c..4c+4` of a block, in every lane.
///
/// # Safety
/// AVX; `c < 8`.
#[inline(always)]
unsafe fn x4(a: &BlockQ8, c: usize) -> __m256i {
    debug_assert!(c < 8);
    // SAFETY: `4c + 4 <= 32 = a.qs.len()` for `c < 8`; an unaligned read.
    unsafe { _mm256_set1_epi32((a.qs.as_ptr().add(4 * c) as *const i32).read_unaligned()) }
}

/// Integer sums of one activation block against 8 rows' unpacked Q4
/// quants, in two chains of four products. (A helper, not a closure:
/// closures do not inherit the caller's target features, and their
/// intrinsics would not inline.)
///
/// # Safety
/// The entry point's features.
#[inline(always)]
unsafe fn q4x8_isum<D: U8Dot>(lo: &[__m256i; 4], hi: &[__m256i; 4], a: &BlockQ8) -> __m256i {
    // SAFETY: register-only but for `x4` with `c < 8`; features: contract.
    unsafe {
        let s0 = D::dot_acc(
            D::dot_acc(D::dot_acc(D::dot(lo[0], x4(a, 0)), lo[1], x4(a, 1)), lo[2], x4(a, 2)),
            lo[3],
            x4(a, 3),
        );
        let s1 = D::dot_acc(
            D::dot_acc(D::dot_acc(D::dot(hi[0], x4(a, 4)), hi[1], x4(a, 5)), hi[2], x4(a, 6)),
            hi[3],
            x4(a, 7),
        );
        _mm256_add_epi32(s0, s1)
    }
}

/// Integer sums of one activation block against 8 rows' packed Q8 quants
/// (stored `q + 128`); with [`U8Dot::Q8_BIASED`] the caller subtracts
/// `128·Σx`.
///
/// # Safety
/// The entry point's features.
#[inline(always)]
unsafe fn q8x8_isum<D: U8Dot>(w: &[__m256i; 8], a: &BlockQ8) -> __m256i {
    // SAFETY: register-only; features: contract.
    unsafe {
        let (lo, hi) = q8hx8_isums::<D>(w, a);
        _mm256_add_epi32(lo, hi)
    }
}

/// Integer sums of one activation block's halves (bytes 0..16 and 16..32)
/// against 8 rows' packed Q8 quants, each a chain of four products (bias
/// left in, as [`q8x8_isum`]).
///
/// # Safety
/// The entry point's features.
#[inline(always)]
unsafe fn q8hx8_isums<D: U8Dot>(w: &[__m256i; 8], a: &BlockQ8) -> (__m256i, __m256i) {
    // SAFETY: register-only but for `x4` with `c < 8`; features: contract.
    unsafe {
        let mut half = [_mm256_setzero_si256(); 2];
        for (h, s) in half.iter_mut().enumerate() {
            for (c, wc) in w.iter().enumerate().skip(4 * h).take(4) {
                *s = D::dot_q8_acc(*s, *wc, x4(a, c));
            }
        }
        (half[0], half[1])
    }
}

/// The eight 32-byte pieces (8 rows × 4 quants each) of a packed Q8
/// block's quants, starting at `p`.
///
/// # Safety
/// AVX; `p..p + 256` is readable.
#[inline(always)]
unsafe fn load_q8x8(p: *const u8) -> [__m256i; 8] {
    // SAFETY: eight unaligned 32-byte loads inside `p..p + 256`, the
    // caller's contract.
    // (No closure: it would not inherit the caller's target features.)
    unsafe {
        [
            _mm256_loadu_si256(p as *const __m256i),
            _mm256_loadu_si256(p.add(32) as *const __m256i),
            _mm256_loadu_si256(p.add(64) as *const __m256i),
            _mm256_loadu_si256(p.add(96) as *const __m256i),
            _mm256_loadu_si256(p.add(128) as *const __m256i),
            _mm256_loadu_si256(p.add(160) as *const __m256i),
            _mm256_loadu_si256(p.add(192) as *const __m256i),
            _mm256_loadu_si256(p.add(224) as *const __m256i),
        ]
    }
}

/// Joins a block's integer sums with its residual's (`quantize_residual`
/// gives the residual exactly the scale `d / 256`): `256·v + r`, one
/// 16-bit-activation sum with that scale. No overflow: `|v|, |r|` are under
/// `32·255·127 < 2^21`, so `256·v + r < 2^30`.
///
/// # Safety
/// The entry point's features.
#[inline(always)]
unsafe fn join_residual(v: __m256i, r: __m256i) -> __m256i {
    // SAFETY: register-only AVX2.
    unsafe { _mm256_add_epi32(_mm256_slli_epi32(v, 8), r) }
}

/// Tokens per tile: unpacked weights of a block are reused this many times.
/// 8 rather than 4: a decode step of 8 sequences reads each weight once, and
/// on Zen 4 the precise Q8x8 kernel went 82 → 87 Gweights·tokens/s (16
/// tokens, one thread); the AVX2 build, with half the registers, also gained.
const TILE: usize = 8;

/// Runs a tile function over `t` tokens: whole tiles of [`TILE`], then one
/// of the rest, each with its token count `N` a constant, so the
/// accumulators are registers (a run-time count kept them in memory: a
/// store and a reload on every block). The arms cover `TILE = 8`.
/// `$f::<P.., N>(args.., t0)` handles tokens `t0..t0 + N`.
macro_rules! by_tiles {
    ($t:expr, $f:ident::<$($p:tt),*>($($a:expr),*)) => {{
        let t: usize = $t;
        let mut t0 = 0;
        while t0 + TILE <= t {
            $f::<$($p),*, TILE>($($a,)* t0);
            t0 += TILE;
        }
        match t - t0 {
            0 => {}
            1 => $f::<$($p),*, 1>($($a,)* t0),
            2 => $f::<$($p),*, 2>($($a,)* t0),
            3 => $f::<$($p),*, 3>($($a,)* t0),
            4 => $f::<$($p),*, 4>($($a,)* t0),
            5 => $f::<$($p),*, 5>($($a,)* t0),
            6 => $f::<$($p),*, 6>($($a,)* t0),
            7 => $f::<$($p),*, 7>($($a,)* t0),
            _ => unreachable!("a rest of a tile is shorter than TILE"),
        }
    }};
}

/// Tokens `t0..t0 + N` of a product with `Q4x8` groups (run by
/// [`by_tiles`]).
///
/// # Safety
/// The entry point's features, and the lengths `check_packed` asserts for
/// the whole product: `group` holds `blocks` block indices, `out` `t` rows
/// of 8, with `t0 + N <= t`.
#[inline(always)]
unsafe fn q4x8_tile<D: U8Dot, const RES: bool, const N: usize>(
    group: &[u8],
    blocks: usize,
    acts: &[BlockQ8],
    res: &[BlockQ8],
    out: &mut [f32],
    t0: usize,
) {
    // SAFETY: block `k < blocks` is `group[k * GB..(k + 1) * GB]`, and the
    // loads read bytes 0..16, 16..32 and four 32-byte pieces at 32..160 of
    // it; the stores write `out[(t0 + j) * 8..][..8]` for `t0 + j < t`; both
    // inside the lengths of the contract. Activations are indexed safely.
    unsafe {
        const GB: usize = PackKind::Q4.block_bytes();
        let m4 = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut accm = [_mm256_setzero_ps(); N];
        for k in 0..blocks {
            let b = group.as_ptr().add(k * GB);
            let d8 = _mm256_cvtph_ps(_mm_loadu_si128(b as *const __m128i));
            let m8 = _mm256_cvtph_ps(_mm_loadu_si128(b.add(16) as *const __m128i));
            let w0 = _mm256_loadu_si256(b.add(32) as *const __m256i);
            let w1 = _mm256_loadu_si256(b.add(64) as *const __m256i);
            let w2 = _mm256_loadu_si256(b.add(96) as *const __m256i);
            let w3 = _mm256_loadu_si256(b.add(128) as *const __m256i);
            let lo = [
                _mm256_and_si256(w0, m4),
                _mm256_and_si256(w1, m4),
                _mm256_and_si256(w2, m4),
                _mm256_and_si256(w3, m4),
            ];
            let hi = [
                _mm256_and_si256(_mm256_srli_epi16(w0, 4), m4),
                _mm256_and_si256(_mm256_srli_epi16(w1, 4), m4),
                _mm256_and_si256(_mm256_srli_epi16(w2, 4), m4),
                _mm256_and_si256(_mm256_srli_epi16(w3, 4), m4),
            ];
            for j in 0..N {
                let idx = (t0 + j) * blocks + k;
                let a = &acts[idx];
                let mut isum = q4x8_isum::<D>(&lo, &hi, a);
                let mut scale = a.d;
                let mut msum = a.d * a.sum() as f32;
                if RES {
                    // The residual's own 8-bit pass: ~16-bit activations.
                    let r = &res[idx];
                    isum = join_residual(isum, q4x8_isum::<D>(&lo, &hi, r));
                    scale = r.d;
                    msum += r.d * r.sum() as f32;
                }
                acc[j] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(isum),
                    _mm256_mul_ps(d8, _mm256_set1_ps(scale)),
                    acc[j],
                );
                accm[j] = _mm256_fmadd_ps(m8, _mm256_set1_ps(msum), accm[j]);
            }
        }
        for j in 0..N {
            _mm256_storeu_ps(out.as_mut_ptr().add((t0 + j) * 8), _mm256_add_ps(acc[j], accm[j]));
        }
    }
}

/// Tokens `t0..t0 + N` of a product with `Q8x8` (`MIN` false) or `Q8Mx8`
/// groups (`MIN`: 8 f16 mins after the scales, each times the activations'
/// sum).
///
/// # Safety
/// As for [`q4x8_tile`].
#[inline(always)]
unsafe fn q8x8_tile<D: U8Dot, const RES: bool, const MIN: bool, const N: usize>(
    group: &[u8],
    blocks: usize,
    acts: &[BlockQ8],
    res: &[BlockQ8],
    out: &mut [f32],
    t0: usize,
) {
    // SAFETY: block `k < blocks` is `group[k * gb..(k + 1) * gb]` with `gb`
    // the kind's block bytes (`check_packed`); the loads read the scales
    // (bytes 0..16, and 16..32 with `MIN`) and eight 32-byte pieces at
    // `q0..q0 + 256 = gb`; the stores write `out[(t0 + j) * 8..][..8]` for
    // `t0 + j < t`; all inside the lengths of the contract. Activations are
    // indexed safely.
    unsafe {
        let q0 = if MIN { 32 } else { 16 };
        let gb = if MIN {
            PackKind::Q8M.block_bytes()
        } else {
            PackKind::Q8.block_bytes()
        };
        debug_assert_eq!(gb, q0 + 32 * 8);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut accm = [_mm256_setzero_ps(); N];
        for k in 0..blocks {
            let b = group.as_ptr().add(k * gb);
            let d8 = _mm256_cvtph_ps(_mm_loadu_si128(b as *const __m128i));
            let m8 = if MIN {
                _mm256_cvtph_ps(_mm_loadu_si128(b.add(16) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            };
            let w = load_q8x8(b.add(q0));
            for j in 0..N {
                let idx = (t0 + j) * blocks + k;
                let a = &acts[idx];
                let mut isum = q8x8_isum::<D>(&w, a);
                let (mut scale, mut xsum) = (a.d, a.sum());
                let mut msum = a.d * a.sum() as f32;
                if RES {
                    let r = &res[idx];
                    isum = join_residual(isum, q8x8_isum::<D>(&w, r));
                    (scale, xsum) = (r.d, 256 * xsum + r.sum());
                    msum += r.d * r.sum() as f32;
                }
                if D::Q8_BIASED {
                    isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(128 * xsum));
                }
                acc[j] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(isum),
                    _mm256_mul_ps(d8, _mm256_set1_ps(scale)),
                    acc[j],
                );
                if MIN {
                    accm[j] = _mm256_fmadd_ps(m8, _mm256_set1_ps(msum), accm[j]);
                }
            }
        }
        for j in 0..N {
            let v = if MIN { _mm256_add_ps(acc[j], accm[j]) } else { acc[j] };
            _mm256_storeu_ps(out.as_mut_ptr().add((t0 + j) * 8), v);
        }
    }
}

/// One activation block (and with `RES` its residual) against 8 rows'
/// `Q8Hx8` quants, accumulated into `acc`: the halves' integer sums scaled
/// by their own scales.
///
/// # Safety
/// The entry point's features.
#[inline(always)]
unsafe fn q8hx8_step<D: U8Dot, const RES: bool>(
    w: &[__m256i; 8],
    dlo: __m256,
    dhi: __m256,
    a: &BlockQ8,
    r: &BlockQ8,
    acc: __m256,
) -> __m256 {
    // SAFETY: register-only but for `x4` with `c < 8`; features: contract.
    unsafe {
        let (mut lo, mut hi) = q8hx8_isums::<D>(w, a);
        let (mut scale, mut xlo, mut xhi) = (a.d, a.sums[0] as i32, a.sums[1] as i32);
        if RES {
            let (rlo, rhi) = q8hx8_isums::<D>(w, r);
            lo = join_residual(lo, rlo);
            hi = join_residual(hi, rhi);
            scale = r.d;
            xlo = 256 * xlo + r.sums[0] as i32;
            xhi = 256 * xhi + r.sums[1] as i32;
        }
        if D::Q8_BIASED {
            lo = _mm256_sub_epi32(lo, _mm256_set1_epi32(128 * xlo));
            hi = _mm256_sub_epi32(hi, _mm256_set1_epi32(128 * xhi));
        }
        let s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), dlo, _mm256_mul_ps(_mm256_cvtepi32_ps(hi), dhi));
        _mm256_fmadd_ps(s, _mm256_set1_ps(scale), acc)
    }
}

/// Tokens `t0..t0 + N` of a product with `Q8Hx8` groups.
///
/// # Safety
/// As for [`q4x8_tile`].
#[inline(always)]
unsafe fn q8hx8_tile<D: U8Dot, const RES: bool, const N: usize>(
    group: &[u8],
    blocks: usize,
    acts: &[BlockQ8],
    res: &[BlockQ8],
    out: &mut [f32],
    t0: usize,
) {
    // SAFETY: block `k < blocks` is `group[k * GB..(k + 1) * GB]`; the loads
    // read bytes 0..64 (two rows of 8 f32 scales) and eight 32-byte pieces
    // at 64..320 of it; the stores write `out[(t0 + j) * 8..][..8]` for
    // `t0 + j < t`; all inside the lengths of the contract. Activations are
    // indexed safely.
    unsafe {
        const GB: usize = PackKind::Q8H.block_bytes();
        let mut acc = [_mm256_setzero_ps(); N];
        for k in 0..blocks {
            let b = group.as_ptr().add(k * GB);
            let dlo = _mm256_loadu_ps(b as *const f32);
            let dhi = _mm256_loadu_ps(b.add(32) as *const f32);
            let w = load_q8x8(b.add(64));
            for (j, acc_j) in acc.iter_mut().enumerate() {
                let idx = (t0 + j) * blocks + k;
                let r = if RES { &res[idx] } else { &acts[idx] };
                *acc_j = q8hx8_step::<D, RES>(&w, dlo, dhi, &acts[idx], r, *acc_j);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add((t0 + j) * 8), *a);
        }
    }
}

/// The lengths the packed bodies trust, checked once per call (per group
/// of 8 rows, not per element).
fn check_packed(kind: PackKind, group: &[u8], blocks: usize, t: usize, out: &[f32]) {
    assert!(
        blocks.checked_mul(kind.block_bytes()).is_some_and(|n| group.len() >= n)
            && t.checked_mul(GROUP).is_some_and(|n| out.len() >= n),
        "packed kernel: group of {} bytes for {blocks} blocks, out of {} for {t} tokens",
        group.len(),
        out.len()
    );
}

/// A safe entry point: `$body` compiled with `$feat` enabled, called after
/// `$check` (if any) established the lengths the body trusts.
macro_rules! entry {
    ($feat:literal, fn $name:ident($($a:ident: $t:ty),*) $(-> $ret:ty)? => $body:expr $(, check $check:expr)?) => {
        /// Only handed out (by `install`) after the CPU features were
        /// detected; private to `x86.rs` otherwise.
        pub(super) fn $name($($a: $t),*) $(-> $ret)? {
            /// # Safety
            /// The CPU has the features enabled here; the lengths the body
            /// trusts hold.
            #[target_feature(enable = $feat)]
            unsafe fn tf($($a: $t),*) $(-> $ret)? {
                // SAFETY: passed on from this function's contract.
                unsafe { $body }
            }
            $($check;)?
            // SAFETY: the features were detected before this function was
            // installed (`kernels`, `all`), and the body's length
            // requirements were just checked or are none.
            unsafe { tf($($a),*) }
        }
    };
}

macro_rules! entry_points {
    ($feat:literal, $suffix:ident, $d:ty) => {
        mod $suffix {
            use super::*;
            entry!($feat, fn quantize(x: &[f32], out: &mut [BlockQ8]) => quantize_body(x, out));
            entry!($feat, fn quantize_residual(x: &[f32], a: &[BlockQ8], r: &mut [BlockQ8]) => quantize_residual_body(x, a, r));
            entry!($feat, fn f32_dot(a: &[f32], b: &[f32]) -> f32 => f32_dot_body(a, b));
            entry!($feat, fn q4_0(r: &[u8], a: &[BlockQ8]) -> f32 => q4_0_body::<$d>(r, a));
            entry!($feat, fn q4_1(r: &[u8], a: &[BlockQ8]) -> f32 => q4_1_body::<$d>(r, a));
            entry!($feat, fn q8_0(r: &[u8], a: &[BlockQ8]) -> f32 => q8_0_body::<$d>(r, a));
            entry!($feat, fn q2_k(r: &[u8], a: &[BlockQ8]) -> f32 => q2_k_body::<$d>(r, a));
            entry!($feat, fn q3_k(r: &[u8], a: &[BlockQ8]) -> f32 => q3_k_body::<$d>(r, a));
            entry!($feat, fn q4_k(r: &[u8], a: &[BlockQ8]) -> f32 => q4_k_body::<$d>(r, a));
            entry!($feat, fn q5_k(r: &[u8], a: &[BlockQ8]) -> f32 => q5_k_body::<$d>(r, a));
            entry!($feat, fn q6_k(r: &[u8], a: &[BlockQ8]) -> f32 => q6_k_body::<$d>(r, a));
            entry!($feat, fn q4x8(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32])
                => by_tiles!(t, q4x8_tile::<$d, false>(g, blocks, a, r, out)), check check_packed(PackKind::Q4, g, blocks, t, out));
            entry!($feat, fn q8x8(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32])
                => by_tiles!(t, q8x8_tile::<$d, false, false>(g, blocks, a, r, out)), check check_packed(PackKind::Q8, g, blocks, t, out));
            entry!($feat, fn q8mx8(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32])
                => by_tiles!(t, q8x8_tile::<$d, false, true>(g, blocks, a, r, out)), check check_packed(PackKind::Q8M, g, blocks, t, out));
            entry!($feat, fn q8mx8_res(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32])
                => by_tiles!(t, q8x8_tile::<$d, true, true>(g, blocks, a, r, out)), check check_packed(PackKind::Q8M, g, blocks, t, out));
            entry!($feat, fn q8hx8(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32])
                => by_tiles!(t, q8hx8_tile::<$d, false>(g, blocks, a, r, out)), check check_packed(PackKind::Q8H, g, blocks, t, out));
            entry!($feat, fn q8hx8_res(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32])
                => by_tiles!(t, q8hx8_tile::<$d, true>(g, blocks, a, r, out)), check check_packed(PackKind::Q8H, g, blocks, t, out));
            entry!($feat, fn q4x8_res(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32])
                => by_tiles!(t, q4x8_tile::<$d, true>(g, blocks, a, r, out)), check check_packed(PackKind::Q4, g, blocks, t, out));
            entry!($feat, fn q8x8_res(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32])
                => by_tiles!(t, q8x8_tile::<$d, true, false>(g, blocks, a, r, out)), check check_packed(PackKind::Q8, g, blocks, t, out));
        }
    };
}

entry_points!("avx2,fma,f16c", avx2, Avx2);
entry_points!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", vnni, Vnni);

fn install(k: Kernels, name: &'static str, m: ModuleFns, panels: PanelKernels) -> Kernels {
    k.with(|s| {
        s.name(name);
        s.panels(panels);
        s.quantize(m.quantize);
        s.quantize_residual(m.quantize_residual);
        s.f32_dot(m.f32_dot);
        s.set(GgmlType::Q4_0, m.q4_0);
        s.set(GgmlType::Q4_1, m.q4_1);
        s.set(GgmlType::Q8_0, m.q8_0);
        s.set(GgmlType::Q2_K, m.q2_k);
        s.set(GgmlType::Q3_K, m.q3_k);
        s.set(GgmlType::Q4_K, m.q4_k);
        s.set(GgmlType::Q5_K, m.q5_k);
        s.set(GgmlType::Q6_K, m.q6_k);
        s.packed(PackKind::Q4, false, m.q4x8);
        s.packed(PackKind::Q8, false, m.q8x8);
        s.packed(PackKind::Q4, true, m.q4x8_res);
        s.packed(PackKind::Q8, true, m.q8x8_res);
        s.packed(PackKind::Q8M, false, m.q8mx8);
        s.packed(PackKind::Q8M, true, m.q8mx8_res);
        s.packed(PackKind::Q8H, false, m.q8hx8);
        s.packed(PackKind::Q8H, true, m.q8hx8_res);
    })
}

struct ModuleFns {
    quantize: super::dot::QuantizeFn,
    quantize_residual: super::dot::QuantizeResidualFn,
    f32_dot: super::dot::F32DotFn,
    q4_0: super::dot::DotFn,
    q4_1: super::dot::DotFn,
    q8_0: super::dot::DotFn,
    q2_k: super::dot::DotFn,
    q3_k: super::dot::DotFn,
    q4_k: super::dot::DotFn,
    q5_k: super::dot::DotFn,
    q6_k: super::dot::DotFn,
    q4x8: super::packed::PackedKernel,
    q8x8: super::packed::PackedKernel,
    q4x8_res: super::packed::PackedKernel,
    q8x8_res: super::packed::PackedKernel,
    q8mx8: super::packed::PackedKernel,
    q8mx8_res: super::packed::PackedKernel,
    q8hx8: super::packed::PackedKernel,
    q8hx8_res: super::packed::PackedKernel,
}

macro_rules! module_fns {
    ($m:ident) => {
        ModuleFns {
            quantize: $m::quantize,
            quantize_residual: $m::quantize_residual,
            f32_dot: $m::f32_dot,
            q4_0: $m::q4_0,
            q4_1: $m::q4_1,
            q8_0: $m::q8_0,
            q2_k: $m::q2_k,
            q3_k: $m::q3_k,
            q4_k: $m::q4_k,
            q5_k: $m::q5_k,
            q6_k: $m::q6_k,
            q4x8: $m::q4x8,
            q8x8: $m::q8x8,
            q4x8_res: $m::q4x8_res,
            q8x8_res: $m::q8x8_res,
            q8mx8: $m::q8mx8,
            q8mx8_res: $m::q8mx8_res,
            q8hx8: $m::q8hx8,
            q8hx8_res: $m::q8hx8_res,
        }
    };
}

/// Each SIMD kernel set of this build with the CPU features it needs that
/// this CPU lacks (none: it runs here, and the tests check it).
pub(super) fn coverage() -> Vec<(&'static str, Vec<&'static str>)> {
    let lacking = |features: &[&'static str]| -> Vec<&'static str> {
        if cfg!(miri) {
            return vec!["(Miri runs the portable kernels only)"];
        }
        features.iter().copied().filter(|&f| !has_feature(f)).collect()
    };
    let avx2 = lacking(&["avx2", "fma", "f16c"]);
    let mut vnni = avx2.clone();
    vnni.extend(lacking(&["avx512f", "avx512bw", "avx512vl", "avx512vnni"]));
    vec![("avx2", avx2), ("avx512vnni", vnni)]
}

/// Run-time detection by name, for the features `coverage` reports.
fn has_feature(name: &str) -> bool {
    match name {
        "avx2" => is_x86_feature_detected!("avx2"),
        "fma" => is_x86_feature_detected!("fma"),
        "f16c" => is_x86_feature_detected!("f16c"),
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "avx512bw" => is_x86_feature_detected!("avx512bw"),
        "avx512vl" => is_x86_feature_detected!("avx512vl"),
        "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
        _ => false,
    }
}

/// Every SIMD kernel set this CPU can run (for tests that check each).
///
/// Under Miri none: it interprets the portable kernels only.
pub(super) fn all() -> Vec<Kernels> {
    let mut out = Vec::new();
    let avx2 = !cfg!(miri)
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    if avx2 {
        out.push(install(
            Kernels::scalar(),
            "avx2",
            module_fns!(avx2),
            // SAFETY: AVX2, FMA and F16C were detected just above.
            unsafe { PanelKernels::avx2() },
        ));
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
        {
            out.push(install(
                Kernels::scalar(),
                "avx512vnni",
                module_fns!(vnni),
                // SAFETY: AVX2, FMA, F16C and AVX-512F were detected above.
                unsafe { PanelKernels::avx512() },
            ));
        }
    }
    out
}

/// The best kernel set this CPU supports, or None for the scalar fallback.
/// Under Miri always the fallback.
pub(super) fn kernels() -> Option<Kernels> {
    let avx2 = !cfg!(miri)
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    if !avx2 {
        return None;
    }
    let vnni = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && std::env::var_os("HFMS_NO_AVX512").is_none();
    let base = Kernels::scalar();
    Some(if vnni {
        install(
            base,
            "avx512vnni",
            module_fns!(vnni),
            // SAFETY: AVX2, FMA, F16C and AVX-512F were detected above.
            unsafe { PanelKernels::avx512() },
        )
    } else {
        install(
            base,
            "avx2",
            module_fns!(avx2),
            // SAFETY: AVX2, FMA and F16C were detected above.
            unsafe { PanelKernels::avx2() },
        )
    })
}
