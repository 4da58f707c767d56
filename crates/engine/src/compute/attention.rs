//! Causal attention of a flattened batch against each sequence's own paged KV
//! cache: no padding, no mask tensor; a query at position `p` reads positions
//! `0..=p` of its own sequence.

use super::ops::{axpy, softmax_in_place};
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
    // Work per (row, query head) is its context length: hand out tasks of
    // similar total length, so a long sequence does not leave a thread idle.
    let total: usize = rows.iter().map(|r| (r.pos + 1) * heads).sum();
    let tasks = (pool.threads() * 4).max(1);
    let target = total.div_ceil(tasks).max(1);
    let mut bounds = vec![0usize];
    let mut acc = 0;
    for (i, r) in rows.iter().enumerate() {
        for h in 0..heads {
            acc += r.pos + 1;
            if acc >= target {
                bounds.push(i * heads + h + 1);
                acc = 0;
            }
        }
    }
    if *bounds.last().unwrap_or(&0) != rows.len() * heads {
        bounds.push(rows.len() * heads);
    }
    pool.for_each(bounds.len() - 1, |task| {
        let mut scores = Vec::new();
        for item in bounds[task]..bounds[task + 1] {
            let (r, h) = (item / heads, item % heads);
            let g = h / group;
            let place = rows[r];
            let n = place.pos + 1;
            scores.clear();
            scores.resize(n, 0.0);
            let qv = &q[r * q_stride + h * hd..r * q_stride + (h + 1) * hd];
            for (b, &blk) in place.kv.blocks.iter().enumerate() {
                let start = b * l.block_size;
                if start >= n {
                    break;
                }
                let keys = kv.keys(blk, layer, g);
                for slot in 0..l.block_size.min(n - start) {
                    scores[start + slot] = dot(qv, &keys[slot * hd..(slot + 1) * hd]) * scale;
                }
            }
            softmax_in_place(&mut scores);
            // SAFETY: this task alone writes row r, head h.
            let o = unsafe { dst.slice_mut(r * q_stride + h * hd, hd) };
            o.fill(0.0);
            for (b, &blk) in place.kv.blocks.iter().enumerate() {
                let start = b * l.block_size;
                if start >= n {
                    break;
                }
                let vals = kv.values(blk, layer, g);
                for slot in 0..l.block_size.min(n - start) {
                    axpy(scores[start + slot], &vals[slot * hd..(slot + 1) * hd], o);
                }
            }
        }
    });
}
