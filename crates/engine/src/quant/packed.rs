//! Row-interleaved ("packed") layouts of the common 32-wide quantised types,
//! made once at load, so that one SIMD instruction works on eight rows at once.
//!
//! A group is 8 consecutive weight rows. For each 32-element block index the
//! group stores the 8 rows' scales side by side, then their quants in 4-byte
//! pieces interleaved by row: piece `c` of rows 0..8, then piece `c + 1`…
//! Loading 32 bytes yields row `r`'s 4 quants of piece `c` in 32-bit lane `r`,
//! so a `vpdpbusd` against 4 activation bytes broadcast to every lane adds
//! each row's partial dot product to its own lane: no horizontal sums, and the
//! scales of 8 rows are one vector. Rows past the end are zero padding.
//!
//! - `Q4x8` (from Q4_0 and Q4_1): `[d: 8×f16][m: 8×f16][16 bytes × 8 rows]`;
//!   value = `d·q + m` (Q4_0: `m = -8d`, exact in f16). Low nibbles of piece
//!   `c` are elements `4c..4c+4`, high nibbles elements `16+4c..`.
//!   A Q4_K super-block is eight such blocks: sub-block `j` holds
//!   `d·sc_j·q - dmin·m_j` with 6-bit `sc_j`, `m_j`, so it packs as one with
//!   `d = d·sc_j` and `m = -dmin·m_j` rounded to f16 (a relative error of at
//!   most 2⁻¹¹ in each, far under the 4-bit quants' own; the quants are
//!   kept exactly). A matrix whose rounded scales would underflow or
//!   overflow f16 keeps its per-row kernel.
//! - `Q8x8` (from Q8_0 and Q5_0): `[d: 8×f16][32 bytes × 8 rows]`, quants
//!   stored as `q + 128` (unsigned, as `vpdpbusd` wants); the kernel
//!   subtracts `128·Σx`. A Q5_0 block (`d·(q5 - 16)`, q5 in 0..32) is
//!   exactly a Q8_0 block with `q = q5 - 16`: 34 bytes per 32 weights
//!   instead of 22, for the 8-row VNNI kernel instead of a per-row one
//!   that must reassemble five-bit values.
//! - `Q8Mx8` (from Q5_1 and Q5_K): `[d: 8×f16][m: 8×f16][32 bytes × 8 rows]`,
//!   value = `d·q + m` with `q` (0..32) stored as `q + 128`: `Q8x8`'s quants
//!   with `Q4x8`'s min. Q5_1 is exact; Q5_K's sub-blocks pack as Q4_K's do
//!   (`d·sc` and `-dmin·m` rounded to f16). 36 bytes per 32 weights instead
//!   of 24 (Q5_1) or 22 (Q5_K), for the 8-row kernel instead of a per-row
//!   one (a scalar one for Q5_1).
//! - `Q8Hx8` (from Q6_K): `[d_lo: 8×f32][d_hi: 8×f32][32 bytes × 8 rows]`,
//!   quants stored as `q + 128` as in `Q8x8`, but a scale per 16-element
//!   half block: Q6_K's sub-blocks are 16 wide, `d·sc·(q6 - 32)`. The scales
//!   `d·sc` (f16 times a signed 8-bit integer) are exact in f32, so the
//!   layout is exact: 40 bytes per 32 weights instead of 26.25. (Q3_K would
//!   pack here exactly too, but at 40 bytes instead of 13.75: people pick
//!   Q3_K to save memory, so it keeps its per-row kernel until a 4-bit
//!   layout with 16-wide scales exists.)

use super::dequant::q6k_value;
use super::{BlockQ8, GgmlType, QK};

/// Rows per group.
pub const GROUP: usize = 8;

/// Where a `Q8Hx8` block index's quants start: after two f32 scales a row.
const Q8H_QUANTS_AT: usize = 2 * 4 * GROUP;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackKind {
    Q4,
    Q8,
    Q8M,
    Q8H,
}

impl PackKind {
    pub fn for_type(ty: GgmlType) -> Option<PackKind> {
        match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => Some(PackKind::Q4),
            GgmlType::Q8_0 | GgmlType::Q5_0 => Some(PackKind::Q8),
            GgmlType::Q5_1 | GgmlType::Q5_K => Some(PackKind::Q8M),
            GgmlType::Q6_K => Some(PackKind::Q8H),
            _ => None,
        }
    }

    /// Bytes of one block index of one group.
    pub const fn block_bytes(self) -> usize {
        match self {
            PackKind::Q4 => 32 + 16 * GROUP,
            PackKind::Q8 => 16 + 32 * GROUP,
            PackKind::Q8M => 32 + 32 * GROUP,
            PackKind::Q8H => Q8H_QUANTS_AT + 32 * GROUP,
        }
    }

    /// Where the quants of a block index start (after the scales).
    fn quants_at(self) -> usize {
        match self {
            PackKind::Q4 | PackKind::Q8M => 32,
            PackKind::Q8 => 16,
            PackKind::Q8H => Q8H_QUANTS_AT,
        }
    }
}

/// `out[t][r]` (row `r` of the group, token `t`, stride 8) for `t` tokens.
/// `res`: the activations' residual quantised again (the precise kernels
/// add its product, for ~16-bit activations); ignored by the others.
/// Every kernel panics unless `group` holds `blocks` block indices,
/// `out` at least `t * 8` values and `acts` (and `res` where used)
/// `t * blocks` blocks; the SIMD ones check once per call.
pub type PackedKernel = fn(group: &[u8], blocks: usize, acts: &[BlockQ8], res: &[BlockQ8], t: usize, out: &mut [f32]);

/// A matrix in a packed layout.
#[derive(Clone)]
pub struct Packed {
    pub kind: PackKind,
    pub rows: usize,
    pub cols: usize,
    pub blocks: usize,
    pub groups: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed[{:?} {}x{}]", self.kind, self.rows, self.cols)
    }
}

/// Whether quantised matrices are repacked at load: only where the CPU has
/// SIMD packed kernels. The portable packed kernel is slower than the
/// portable per-row ones (kernels bench, one thread: Q4_0 0.75 against 4.75
/// Gweights/s), so a CPU without them (no AVX2, or not x86) keeps the
/// file's layout and its smaller size.
pub fn packing_enabled() -> bool {
    super::kernels().packed_simd()
}

/// Bytes a `rows × cols` matrix of `ty` takes in its packed layout; None for
/// types without one (they stay as in the file). (`from_rows` may still keep
/// a K-quant matrix unpacked, whose scales f16 cannot hold; then it is
/// smaller than this.)
pub fn packed_len(ty: GgmlType, rows: usize, cols: usize) -> Option<usize> {
    let kind = PackKind::for_type(ty)?;
    if !cols.is_multiple_of(ty.block().0) {
        return None;
    }
    rows.div_ceil(GROUP)
        .checked_mul(cols / QK)?
        .checked_mul(kind.block_bytes())
}

impl Packed {
    /// Repack a row-major ggml matrix; None for types without a packed form.
    pub fn from_rows(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Option<Packed> {
        let kind = PackKind::for_type(ty)?;
        let (be, bb) = ty.block();
        let blocks = cols / QK;
        let row_bytes = cols / be * bb;
        let groups = rows.div_ceil(GROUP);
        let gb = kind.block_bytes();
        let mut data = vec![0u8; groups * blocks * gb];
        for g in 0..groups {
            for k in 0..blocks {
                let dst = &mut data[(g * blocks + k) * gb..(g * blocks + k + 1) * gb];
                for r in 0..GROUP {
                    let row = g * GROUP + r;
                    if row >= rows {
                        // Padding rows: zero scales, so zero output. 8-bit
                        // quants must still hold q + 128 = 128 (q = 0).
                        if kind != PackKind::Q4 {
                            for c in 0..8 {
                                let o = kind.quants_at() + (c * GROUP + r) * 4;
                                dst[o..o + 4].fill(128);
                            }
                        }
                        continue;
                    }
                    // The ggml block holding 32-block `k`: itself, or its
                    // 256-wide super-block.
                    let at = row * row_bytes + k * QK / be * bb;
                    let b = &bytes[at..at + bb];
                    match ty {
                        GgmlType::Q4_0 => {
                            dst[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
                            let d = half::f16::from_le_bytes([b[0], b[1]]);
                            let m = half::f16::from_f32(-8.0 * d.to_f32());
                            dst[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&m.to_le_bytes());
                            put_q4(dst, r, &b[2..18]);
                        }
                        GgmlType::Q4_1 => {
                            dst[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
                            dst[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&b[2..4]);
                            put_q4(dst, r, &b[4..20]);
                        }
                        GgmlType::Q8_0 => {
                            dst[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
                            for c in 0..8 {
                                let o = 16 + (c * GROUP + r) * 4;
                                for j in 0..4 {
                                    dst[o + j] = (b[2 + 4 * c + j] as i8 as i16 + 128) as u8;
                                }
                            }
                        }
                        GgmlType::Q5_0 => {
                            dst[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
                            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                            let qs = &b[6..22];
                            for i in 0..QK {
                                let low = if i < QK / 2 { qs[i] & 0x0f } else { qs[i - QK / 2] >> 4 };
                                let q5 = low as u32 | ((qh >> i) & 1) << 4;
                                // q5 - 16 + 128, in 112..144.
                                let (c, j) = (i / 4, i % 4);
                                dst[16 + (c * GROUP + r) * 4 + j] = (q5 + 112) as u8;
                            }
                        }
                        GgmlType::Q4_K => {
                            let j = k % (be / QK);
                            if !put_k_scales(dst, r, b, j) {
                                return None;
                            }
                            // Sub-blocks 2i and 2i+1 share 32 bytes (low and
                            // high nibbles); Q4x8 wants elements l and 16+l
                            // in one byte.
                            let chunk = &b[16 + (j / 2) * 32..16 + (j / 2) * 32 + 32];
                            let shift = 4 * (j % 2);
                            let mut qs = [0u8; 16];
                            for (l, q) in qs.iter_mut().enumerate() {
                                *q = ((chunk[l] >> shift) & 0x0f) | ((chunk[16 + l] >> shift) & 0x0f) << 4;
                            }
                            put_q4(dst, r, &qs);
                        }
                        GgmlType::Q5_1 => {
                            dst[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
                            dst[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&b[2..4]);
                            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                            let qs = &b[8..24];
                            put_q8m(dst, r, |i| {
                                let low = if i < QK / 2 { qs[i] & 0x0f } else { qs[i - QK / 2] >> 4 };
                                low | (((qh >> i) & 1) << 4) as u8
                            });
                        }
                        GgmlType::Q5_K => {
                            let j = k % (be / QK);
                            if !put_k_scales(dst, r, b, j) {
                                return None;
                            }
                            let (qh, chunk) = (&b[16..48], &b[48 + (j / 2) * 32..48 + (j / 2) * 32 + 32]);
                            let shift = 4 * (j % 2);
                            put_q8m(dst, r, |l| ((chunk[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4));
                        }
                        GgmlType::Q6_K => {
                            let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
                            let d = f16(b, 208);
                            let e0 = (k % (be / QK)) * QK;
                            let scale = |h: usize| d * scales[e0 / 16 + h] as i8 as f32;
                            put_q8h(dst, r, [scale(0), scale(1)], |i| q6k_value(ql, qh, e0 + i));
                        }

                        _ => return None,
                    }
                }
            }
        }
        Some(Packed {
            kind,
            rows,
            cols,
            blocks,
            groups,
            data,
        })
    }

    pub fn group_bytes(&self) -> usize {
        self.blocks * self.kind.block_bytes()
    }

    pub fn group(&self, g: usize) -> &[u8] {
        let n = self.group_bytes();
        &self.data[g * n..(g + 1) * n]
    }

    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// Row `row` dequantised (the reference path and tests).
    pub fn row_f32(&self, row: usize, out: &mut [f32]) {
        let (g, r) = (row / GROUP, row % GROUP);
        let gb = self.kind.block_bytes();
        let group = self.group(g);
        for k in 0..self.blocks {
            let b = &group[k * gb..(k + 1) * gb];
            let o = &mut out[k * QK..(k + 1) * QK];
            let d = f16(b, 2 * r);
            match self.kind {
                PackKind::Q4 => {
                    let m = f16(b, 16 + 2 * r);
                    for c in 0..4 {
                        for j in 0..4 {
                            let q = b[32 + (c * GROUP + r) * 4 + j];
                            o[4 * c + j] = d * (q & 0x0f) as f32 + m;
                            o[16 + 4 * c + j] = d * (q >> 4) as f32 + m;
                        }
                    }
                }
                PackKind::Q8 => {
                    for c in 0..8 {
                        for j in 0..4 {
                            o[4 * c + j] = d * (b[16 + (c * GROUP + r) * 4 + j] as i32 - 128) as f32;
                        }
                    }
                }
                PackKind::Q8M => {
                    let m = f16(b, 16 + 2 * r);
                    for c in 0..8 {
                        for j in 0..4 {
                            o[4 * c + j] = d * (b[32 + (c * GROUP + r) * 4 + j] as i32 - 128) as f32 + m;
                        }
                    }
                }
                PackKind::Q8H => {
                    for c in 0..8 {
                        let s = f32_at(b, 4 * ((c / 4) * GROUP + r));
                        for j in 0..4 {
                            o[4 * c + j] = s * (b[Q8H_QUANTS_AT + (c * GROUP + r) * 4 + j] as i32 - 128) as f32;
                        }
                    }
                }
            }
        }
    }

    /// Rows of several packed matrices stacked into one (fused
    /// projections). Every part must have rows in whole groups.
    pub fn stack(parts: &[&Packed]) -> Option<Packed> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.kind != first.kind || p.cols != first.cols || p.rows % GROUP != 0)
        {
            return None;
        }
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        Some(Packed {
            kind: first.kind,
            rows,
            cols: first.cols,
            blocks: first.blocks,
            groups: rows / GROUP,
            data,
        })
    }
}

/// Whether `rounded` (an f16) stands for `exact` within f16's own rounding,
/// i.e. did not overflow to infinity (or come from a NaN). (A subnormal
/// result cannot fail: `d·sc` is an f16 times a small integer, a multiple of
/// 2⁻²⁴, which f16's subnormals hold exactly.)
fn scale_fits(exact: f32, rounded: half::f16) -> bool {
    let back = rounded.to_f32();
    back.is_finite() && (back - exact).abs() <= exact.abs() * (1.0 / 2048.0)
}

/// A Q4_K/Q5_K sub-block's scale and min as one packed block's `d` and
/// `m` (f16); false where f16 cannot hold them.
fn put_k_scales(dst: &mut [u8], r: usize, b: &[u8], j: usize) -> bool {
    let (sc, m) = super::k4_scale_min(&b[4..16], j);
    let (d, min) = (f16(b, 0) * sc as f32, -f16(b, 2) * m as f32);
    let (d16, min16) = (half::f16::from_f32(d), half::f16::from_f32(min));
    if !(scale_fits(d, d16) && scale_fits(min, min16)) {
        return false;
    }
    dst[2 * r..2 * r + 2].copy_from_slice(&d16.to_le_bytes());
    dst[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&min16.to_le_bytes());
    true
}

/// Row `r`'s two half-block scales and 32 signed quants (`q(i)`, element
/// `i`, in -128..128) of a `Q8Hx8` block, stored `q + 128`.
fn put_q8h(dst: &mut [u8], r: usize, scales: [f32; 2], q: impl Fn(usize) -> i32) {
    debug_assert!((0..QK).all(|i| (-128..128).contains(&q(i))));
    for (half, s) in scales.iter().enumerate() {
        let o = 4 * (half * GROUP + r);
        dst[o..o + 4].copy_from_slice(&s.to_le_bytes());
    }
    for i in 0..QK {
        dst[Q8H_QUANTS_AT + (i / 4 * GROUP + r) * 4 + i % 4] = (q(i) + 128) as u8;
    }
}

/// Row `r`'s 32 unsigned quants (`q(i)`, element `i`) of a `Q8Mx8` block,
/// stored `q + 128`.
fn put_q8m(dst: &mut [u8], r: usize, q: impl Fn(usize) -> u8) {
    for i in 0..QK {
        dst[32 + (i / 4 * GROUP + r) * 4 + i % 4] = q(i) + 128;
    }
}

fn put_q4(dst: &mut [u8], r: usize, qs: &[u8]) {
    for c in 0..4 {
        let o = 32 + (c * GROUP + r) * 4;
        dst[o..o + 4].copy_from_slice(&qs[4 * c..4 * c + 4]);
    }
}

fn f16(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Reference kernels: what the SIMD ones compute, for other CPUs and tests.
fn q4x8_block(b: &[u8], r: usize, a: &BlockQ8) -> f32 {
    let mut isum = 0i32;
    for c in 0..4 {
        for j in 0..4 {
            let q = b[32 + (c * GROUP + r) * 4 + j];
            isum += (q & 0x0f) as i32 * a.qs[4 * c + j] as i32;
            isum += (q >> 4) as i32 * a.qs[16 + 4 * c + j] as i32;
        }
    }
    f16(b, 2 * r) * a.d * isum as f32 + f16(b, 16 + 2 * r) * a.d * a.sum() as f32
}

fn q8x8_block(b: &[u8], r: usize, a: &BlockQ8) -> f32 {
    let mut isum = 0i32;
    for c in 0..8 {
        for j in 0..4 {
            isum += b[16 + (c * GROUP + r) * 4 + j] as i32 * a.qs[4 * c + j] as i32;
        }
    }
    isum -= 128 * a.sum();
    f16(b, 2 * r) * a.d * isum as f32
}

fn q8mx8_block(b: &[u8], r: usize, a: &BlockQ8) -> f32 {
    let mut isum = 0i32;
    for c in 0..8 {
        for j in 0..4 {
            isum += b[32 + (c * GROUP + r) * 4 + j] as i32 * a.qs[4 * c + j] as i32;
        }
    }
    isum -= 128 * a.sum();
    f16(b, 2 * r) * a.d * isum as f32 + f16(b, 16 + 2 * r) * a.d * a.sum() as f32
}

fn q8hx8_block(b: &[u8], r: usize, a: &BlockQ8) -> f32 {
    let mut out = 0.0;
    for half in 0..2 {
        let mut isum = 0i32;
        for c in 4 * half..4 * half + 4 {
            for j in 0..4 {
                isum += b[Q8H_QUANTS_AT + (c * GROUP + r) * 4 + j] as i32 * a.qs[4 * c + j] as i32;
            }
        }
        isum -= 128 * a.sums[half] as i32;
        out += f32_at(b, 4 * (half * GROUP + r)) * isum as f32;
    }
    out * a.d
}

#[allow(clippy::too_many_arguments)]
fn packed_scalar(
    kind: PackKind,
    with_res: bool,
    group: &[u8],
    blocks: usize,
    acts: &[BlockQ8],
    res: &[BlockQ8],
    t: usize,
    out: &mut [f32],
) {
    let gb = kind.block_bytes();
    let block = match kind {
        PackKind::Q4 => q4x8_block,
        PackKind::Q8 => q8x8_block,
        PackKind::Q8M => q8mx8_block,
        PackKind::Q8H => q8hx8_block,
    };
    for tok in 0..t {
        let mut acc = [0f32; GROUP];
        for k in 0..blocks {
            let b = &group[k * gb..(k + 1) * gb];
            for (r, acc_r) in acc.iter_mut().enumerate() {
                *acc_r += block(b, r, &acts[tok * blocks + k]);
                if with_res {
                    *acc_r += block(b, r, &res[tok * blocks + k]);
                }
            }
        }
        out[tok * GROUP..(tok + 1) * GROUP].copy_from_slice(&acc);
    }
}

/// Reference kernels: what the SIMD ones compute, for other CPUs and tests.
pub(super) fn q4x8_scalar(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32]) {
    packed_scalar(PackKind::Q4, false, g, blocks, a, r, t, out)
}

pub(super) fn q8x8_scalar(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32]) {
    packed_scalar(PackKind::Q8, false, g, blocks, a, r, t, out)
}

pub(super) fn q8mx8_scalar(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32]) {
    packed_scalar(PackKind::Q8M, false, g, blocks, a, r, t, out)
}

pub(super) fn q8mx8_res_scalar(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32]) {
    packed_scalar(PackKind::Q8M, true, g, blocks, a, r, t, out)
}

pub(super) fn q8hx8_scalar(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32]) {
    packed_scalar(PackKind::Q8H, false, g, blocks, a, r, t, out)
}

pub(super) fn q8hx8_res_scalar(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32]) {
    packed_scalar(PackKind::Q8H, true, g, blocks, a, r, t, out)
}

pub(super) fn q4x8_res_scalar(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32]) {
    packed_scalar(PackKind::Q4, true, g, blocks, a, r, t, out)
}

pub(super) fn q8x8_res_scalar(g: &[u8], blocks: usize, a: &[BlockQ8], r: &[BlockQ8], t: usize, out: &mut [f32]) {
    packed_scalar(PackKind::Q8, true, g, blocks, a, r, t, out)
}

/// Quantise the residual `x - dequant(acts)` into `res`: a second 8-bit
/// pass that the precise kernels add, making activations ~16-bit. Each
/// residual block's scale is exactly its block's `d / 256` (a residual is
/// at most `d / 2`, so its quants fit in ±127 but for rounding at the very
/// edge, which is clamped): the SIMD kernels then join both products into
/// one integer, `256·Σw·q + Σw·r`, scaled once by `d / 256`.
pub fn quantize_residual(x: &[f32], acts: &[BlockQ8], res: &mut [BlockQ8]) {
    (super::kernels().quantize_residual)(x, acts, res)
}

/// [`quantize_residual`]'s reference form (and the kernel without SIMD).
pub(super) fn quantize_residual_scalar(x: &[f32], acts: &[BlockQ8], res: &mut [BlockQ8]) {
    for ((xb, a), r) in x.chunks_exact(QK).zip(acts).zip(res.iter_mut()) {
        let id = if a.d > 0.0 { 256.0 / a.d } else { 0.0 };
        let mut sums = [0i32; 2];
        for (j, (v, q)) in xb.iter().zip(&a.qs).enumerate() {
            let e = ((v - *q as f32 * a.d) * id).round().clamp(-127.0, 127.0) as i32;
            r.qs[j] = e as i8;
            sums[j / 16] += e;
        }
        r.d = a.d / 256.0;
        r.sums = [sums[0] as i16, sums[1] as i16];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dot_tests::{random_acts, random_row};
    use crate::quant::quantize_activations;

    /// Every kernel set's residual quantiser gives the reference's scale
    /// (exactly `d / 256`, which the packed kernels rely on) and quants
    /// within one step of it (ties and a fused multiply-add may round
    /// apart); an all-zero block and a block with NaN stay in ±127.
    #[test]
    fn residual_quantisers_match_the_reference() {
        let blocks = 6;
        let mut x = random_acts(blocks * QK, 3);
        x[QK..2 * QK].fill(0.0);
        x[2 * QK + 5] = f32::NAN;
        x[3 * QK + 7] = 1e30;
        let mut acts = vec![BlockQ8::default(); blocks];
        quantize_activations(&x, &mut acts);
        let mut want = vec![BlockQ8::default(); blocks];
        quantize_residual_scalar(&x, &acts, &mut want);
        for ks in crate::quant::available_kernels() {
            let mut got = vec![BlockQ8::default(); blocks];
            (ks.quantize_residual)(&x, &acts, &mut got);
            for (b, (g, w)) in got.iter().zip(&want).enumerate() {
                let name = ks.name;
                if !w.d.is_nan() {
                    assert_eq!(g.d.to_bits(), (acts[b].d / 256.0).to_bits(), "{name} block {b}");
                }
                for (j, (gq, wq)) in g.qs.iter().zip(&w.qs).enumerate() {
                    assert!(
                        (*gq as i32 - *wq as i32).abs() <= 1 || b == 2,
                        "{name} block {b}[{j}]: {gq} vs {wq}"
                    );
                    assert!(*gq != i8::MIN, "{name} block {b}[{j}]");
                }
                let sums: [i32; 2] = [0, 1].map(|h| g.qs[h * 16..(h + 1) * 16].iter().map(|&q| q as i32).sum());
                assert_eq!(sums, [g.sums[0] as i32, g.sums[1] as i32], "{name} block {b}");
            }
            assert!(
                got[1].qs.iter().all(|&q| q == 0),
                "{}: a zero block has no residual",
                ks.name
            );
        }
    }

    /// Packed products equal the per-row dot products (same activations).
    #[test]
    fn packed_kernels_match_row_kernels() {
        for ks in crate::quant::available_kernels() {
            check(&ks);
        }
    }

    /// The SIMD kernels read and write through raw pointers: buffers
    /// shorter than `blocks` and `t` promise are refused in every build.
    #[test]
    #[cfg_attr(miri, ignore = "panics are slow under Miri; a native check")]
    fn packed_kernels_refuse_short_buffers() {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let (blocks, t) = (2, 3);
        let acts = vec![BlockQ8::default(); t * blocks];
        for ks in crate::quant::available_kernels() {
            for kind in [PackKind::Q4, PackKind::Q8, PackKind::Q8M, PackKind::Q8H] {
                for precise in [false, true] {
                    let kernel = ks.packed(kind, precise);
                    let full = blocks * kind.block_bytes();
                    for (g_len, out_len) in [(full - 1, t * GROUP), (full, t * GROUP - 1)] {
                        let group = vec![0u8; g_len];
                        let mut out = vec![0f32; out_len];
                        let r = catch_unwind(AssertUnwindSafe(|| kernel(&group, blocks, &acts, &acts, t, &mut out)));
                        assert!(
                            r.is_err(),
                            "{} {kind:?}: group {g_len}, out {out_len} accepted",
                            ks.name
                        );
                    }
                }
            }
        }
    }

    /// `packed_len` is what `from_rows` allocates.
    #[test]
    fn packed_len_is_the_packed_size() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let (rows, cols) = (13, 512);
            let bytes: Vec<u8> = (0..rows).flat_map(|r| random_row(ty, cols, r as u64)).collect();
            let p = Packed::from_rows(ty, rows, cols, &bytes).unwrap();
            assert_eq!(packed_len(ty, rows, cols), Some(p.byte_len()), "{ty:?}");
        }
        assert_eq!(packed_len(GgmlType::Q2_K, 8, 256), None);
        assert_eq!(packed_len(GgmlType::F32, 8, 256), None);
    }

    /// Q4_K and Q5_K pack exactly but for their sub-block scales and mins,
    /// rounded to f16; a matrix whose scales f16 cannot hold stays unpacked.
    /// Q5_1 and Q6_K pack exactly.
    #[test]
    fn k_quants_pack_with_rounded_scales_only() {
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K] {
            let (rows, cols) = (9, 512);
            let bytes: Vec<u8> = (0..rows).flat_map(|r| random_row(ty, cols, 3 + r as u64)).collect();
            let p = Packed::from_rows(ty, rows, cols, &bytes).unwrap();
            let row_bytes = ty.row_bytes(cols).unwrap();
            let block = ty.block().1;
            let (mut exact, mut packed) = (vec![0f32; cols], vec![0f32; cols]);
            for r in 0..rows {
                crate::quant::dequantize_row(ty, &bytes[r * row_bytes..(r + 1) * row_bytes], &mut exact);
                p.row_f32(r, &mut packed);
                for (i, (e, q)) in exact.iter().zip(&packed).enumerate() {
                    // Each weight is d·q + m with d and m each within 2⁻¹¹.
                    let dmin = f16(&bytes[r * row_bytes + i / 256 * block..], 2);
                    let bound = (e.abs() + 2.0 * dmin * 63.0) / 2048.0;
                    assert!((e - q).abs() <= bound, "{ty:?} row {r} col {i}: {q} vs {e}");
                }
            }
            // d = 60000 times a sub-block scale of 63 overflows f16.
            let mut huge = bytes[..row_bytes].to_vec();
            huge[0..2].copy_from_slice(&half::f16::from_f32(60000.0).to_le_bytes());
            huge[4] |= 63;
            assert!(Packed::from_rows(ty, 1, cols, &huge).is_none(), "{ty:?}");
        }
        for ty in [GgmlType::Q5_1, GgmlType::Q6_K] {
            let (rows, cols) = (9, 512);
            let bytes: Vec<u8> = (0..rows).flat_map(|r| random_row(ty, cols, 5 + r as u64)).collect();
            let p = Packed::from_rows(ty, rows, cols, &bytes).unwrap();
            let row_bytes = ty.row_bytes(cols).unwrap();
            let (mut exact, mut packed) = (vec![0f32; cols], vec![0f32; cols]);
            for r in 0..rows {
                crate::quant::dequantize_row(ty, &bytes[r * row_bytes..(r + 1) * row_bytes], &mut exact);
                p.row_f32(r, &mut packed);
                assert_eq!(exact, packed, "{ty:?} row {r}");
            }
        }
    }

    fn check(ks: &crate::quant::Kernels) {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let k_quant = matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K);
            let shapes: &[(usize, usize, usize)] = match (cfg!(miri), k_quant) {
                (true, false) => &[(13, 96, 5)],
                (false, false) => &[(8, 64, 1), (13, 96, 3), (21, 576, 5)],
                (true, true) => &[(13, 256, 2)],
                (false, true) => &[(8, 256, 1), (13, 512, 5), (21, 768, 2)],
            };
            // Q4_K's sub-block scales are rounded to f16 when packed: each
            // term may move by 2⁻¹¹ of its size.
            let scale_rounding = if matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K) {
                1.0 / 2048.0
            } else {
                0.0
            };
            for &(rows, cols, t) in shapes {
                let bytes: Vec<u8> = (0..rows).flat_map(|r| random_row(ty, cols, 17 + r as u64)).collect();
                let p = Packed::from_rows(ty, rows, cols, &bytes).unwrap();
                let x = random_acts(t * cols, 5);
                let blocks = cols / QK;
                let mut acts = vec![BlockQ8::default(); t * blocks];
                for tok in 0..t {
                    quantize_activations(
                        &x[tok * cols..(tok + 1) * cols],
                        &mut acts[tok * blocks..(tok + 1) * blocks],
                    );
                }
                let row_bytes = ty.row_bytes(cols).unwrap();
                let dot = ks.dot(ty).unwrap();
                let mut res = vec![BlockQ8::default(); t * blocks];
                quantize_residual(&x, &acts, &mut res);
                let exact_rows: Vec<f32> = {
                    let mut w = vec![0f32; rows * cols];
                    for r in 0..rows {
                        crate::quant::dequantize_row(
                            ty,
                            &bytes[r * row_bytes..(r + 1) * row_bytes],
                            &mut w[r * cols..(r + 1) * cols],
                        );
                    }
                    w
                };
                for precise in [false, true] {
                    let kernel = ks.packed(p.kind, precise);
                    for g in 0..p.groups {
                        let mut out = vec![0f32; t * GROUP];
                        kernel(p.group(g), blocks, &acts, &res, t, &mut out);
                        for tok in 0..t {
                            for r in 0..GROUP.min(rows - g * GROUP) {
                                let row = g * GROUP + r;
                                let exact: f32 =
                                    (0..cols).map(|i| exact_rows[row * cols + i] * x[tok * cols + i]).sum();
                                let got = out[tok * GROUP + r];
                                let scale: f32 = (0..cols)
                                    .map(|i| (exact_rows[row * cols + i] * x[tok * cols + i]).abs())
                                    .sum();
                                // 8-bit activations: ~1e-2 of the scale; with the residual pass ~1e-4.
                                let tol = if precise { 2e-4 } else { 2e-2 };
                                assert!(
                                    (got - exact).abs() <= (tol + scale_rounding) * scale.max(1.0),
                                    "{} precise={precise} {ty:?}: {got} vs {exact}",
                                    ks.name
                                );
                            }
                        }
                    }
                }
                for (name, kernel) in [
                    ("scalar", ks.packed_scalar(p.kind)),
                    (ks.name, ks.packed(p.kind, false)),
                ] {
                    for g in 0..p.groups {
                        let mut out = vec![0f32; t * GROUP];
                        kernel(p.group(g), blocks, &acts, &res, t, &mut out);
                        for tok in 0..t {
                            for r in 0..GROUP {
                                let row = g * GROUP + r;
                                let got = out[tok * GROUP + r];
                                if row >= rows {
                                    assert_eq!(got, 0.0, "padding row");
                                    continue;
                                }
                                let want = dot(
                                    &bytes[row * row_bytes..(row + 1) * row_bytes],
                                    &acts[tok * blocks..(tok + 1) * blocks],
                                );
                                let terms: f32 = (0..cols)
                                    .map(|i| {
                                        let a = &acts[tok * blocks + i / QK];
                                        (exact_rows[row * cols + i] * a.qs[i % QK] as f32 * a.d).abs()
                                    })
                                    .sum();
                                assert!(
                                    (got - want).abs() <= 1e-4 * want.abs().max(1.0) + scale_rounding * terms,
                                    "{name} {ty:?} {rows}x{cols} t={tok} row={row}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
