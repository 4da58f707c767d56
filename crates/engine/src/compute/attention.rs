//! Causal attention of a flattened batch against each sequence's own paged KV
//! cache: no padding, no mask tensor; a query at position `p` reads positions
//! `0..=p` of its own sequence.

use super::{ComputePool, SendPtr};
use crate::kv::{CpuBlocks, SeqKv};
use crate::quant::kernels;

/// Where each row of the flattened batch belongs.
#[derive(Debug, Clone, Copy)]
pub struct RowPlace<'a> {
    pub kv: &'a SeqKv,
    pub pos: usize,
}

/// `out[row, head*hd..]` = softmax(q·Kᵀ/√hd)·V for every row and query head.
/// `q` is `[rows, heads * head_dim]`.
pub fn attention(
    rows: &[RowPlace<'_>],
    q: &[f32],
    heads: usize,
    layer: usize,
    kv: &CpuBlocks,
    out: &mut [f32],
    pool: &ComputePool,
) {
    let l = *kv.layout();
    let hd = l.head_dim;
    let group = heads / l.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let dot = kernels().f32_dot;
    let dst = SendPtr(out.as_mut_ptr());
    let q_stride = heads * hd;
    // One task per (row, kv head): the query heads of a group share keys.
    pool.for_each(rows.len() * l.kv_heads, |task| {
        let (r, g) = (task / l.kv_heads, task % l.kv_heads);
        let place = rows[r];
        let n = place.pos + 1;
        let mut scores = vec![0f32; n * group];
        for qi in 0..group {
            let h = g * group + qi;
            let qv = &q[r * q_stride + h * hd..r * q_stride + (h + 1) * hd];
            let s = &mut scores[qi * n..(qi + 1) * n];
            for (b, &blk) in place.kv.blocks.iter().enumerate() {
                let start = b * l.block_size;
                if start >= n {
                    break;
                }
                let keys = kv.keys(blk, layer, g);
                for slot in 0..l.block_size.min(n - start) {
                    s[start + slot] = dot(qv, &keys[slot * hd..(slot + 1) * hd]) * scale;
                }
            }
            super::ops::softmax_in_place(s);
        }
        for qi in 0..group {
            let h = g * group + qi;
            // SAFETY: this task alone writes row r, heads of group g.
            let o = unsafe { dst.slice_mut(r * q_stride + h * hd, hd) };
            o.fill(0.0);
            let s = &scores[qi * n..(qi + 1) * n];
            for (b, &blk) in place.kv.blocks.iter().enumerate() {
                let start = b * l.block_size;
                if start >= n {
                    break;
                }
                let vals = kv.values(blk, layer, g);
                for slot in 0..l.block_size.min(n - start) {
                    let p = s[start + slot];
                    let v = &vals[slot * hd..(slot + 1) * hd];
                    for (oi, vi) in o.iter_mut().zip(v) {
                        *oi += p * vi;
                    }
                }
            }
        }
    });
}
