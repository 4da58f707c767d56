//! Dequantisation of one row of any supported type to f32. Used for embedding
//! lookups, for weights that are converted once at load, and as the reference
//! the dot-product kernels are tested against.

use super::{GgmlType, QK, QK_K, bf16_at, f16_at, k3_scales, k4_scale_min};

/// Dequantise `bytes` (a whole number of blocks of `ty`) into `out`.
/// `out.len()` must equal the row's element count.
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (be, bb) = ty.block();
    debug_assert_eq!(bytes.len() / bb * be, out.len());
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f16_at(bytes, 2 * i);
            }
        }
        GgmlType::BF16 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = bf16_at(bytes, 2 * i);
            }
        }
        _ => {
            for (b, o) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
                dequantize_block(ty, b, o);
            }
        }
    }
}

fn dequantize_block(ty: GgmlType, b: &[u8], o: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            for j in 0..QK / 2 {
                o[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
                o[j + QK / 2] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qs = &b[4..20];
            for j in 0..QK / 2 {
                o[j] = (qs[j] & 0x0f) as f32 * d + m;
                o[j + QK / 2] = (qs[j] >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            for j in 0..QK / 2 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                o[j] = (((qs[j] & 0x0f) as u32 | h0) as i32 - 16) as f32 * d;
                o[j + QK / 2] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
            }
        }
        GgmlType::Q5_1 => {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let qs = &b[8..24];
            for j in 0..QK / 2 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                o[j] = ((qs[j] & 0x0f) as u32 | h0) as f32 * d + m;
                o[j + QK / 2] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..QK {
                o[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
        GgmlType::Q2_K => {
            let scales = &b[0..16];
            let qs = &b[16..80];
            let d = f16_at(b, 80);
            let dmin = f16_at(b, 82);
            for (e, v) in o.iter_mut().enumerate().take(QK_K) {
                let half = e / 128;
                let shift = (e % 128) / 32;
                let l = e % 32;
                let q = (qs[half * 32 + l] >> (2 * shift)) & 3;
                let sc = scales[e / 16];
                *v = d * (sc & 0x0f) as f32 * q as f32 - dmin * (sc >> 4) as f32;
            }
        }
        GgmlType::Q3_K => {
            let hmask = &b[0..32];
            let qs = &b[32..96];
            let scales = k3_scales(&b[96..108]);
            let d = f16_at(b, 108);
            for (e, v) in o.iter_mut().enumerate().take(QK_K) {
                let half = e / 128;
                let shift = (e % 128) / 32;
                let l = e % 32;
                let low = ((qs[half * 32 + l] >> (2 * shift)) & 3) as i32;
                let high = (hmask[l] >> (e / 32)) & 1;
                let q = if high == 0 { low - 4 } else { low };
                *v = d * scales[e / 16] as f32 * q as f32;
            }
        }
        GgmlType::Q4_K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qs = &b[16..144];
            for j in 0..8 {
                let (sc, m) = k4_scale_min(scales, j);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                let chunk = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
                let shift = 4 * (j % 2);
                for l in 0..32 {
                    o[j * 32 + l] = dl * ((chunk[l] >> shift) & 0x0f) as f32 - ml;
                }
            }
        }
        GgmlType::Q5_K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for j in 0..8 {
                let (sc, m) = k4_scale_min(scales, j);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                let chunk = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
                let shift = 4 * (j % 2);
                for l in 0..32 {
                    let q = ((chunk[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4);
                    o[j * 32 + l] = dl * q as f32 - ml;
                }
            }
        }
        GgmlType::Q6_K => {
            let ql = &b[0..128];
            let qh = &b[128..192];
            let scales = &b[192..208];
            let d = f16_at(b, 208);
            for (e, v) in o.iter_mut().enumerate().take(QK_K) {
                let q = q6k_value(ql, qh, e);
                *v = d * (scales[e / 16] as i8) as f32 * q as f32;
            }
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => unreachable!("handled per element"),
    }
}

/// The signed 6-bit value of element `e` of a Q6_K super-block.
#[inline]
pub(crate) fn q6k_value(ql: &[u8], qh: &[u8], e: usize) -> i32 {
    let half = e / 128;
    let r = e % 128;
    let low = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
    let high = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
    (low | (high << 4)) as i32 - 32
}
