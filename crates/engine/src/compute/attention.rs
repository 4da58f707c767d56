//! Causal attention of a flattened batch against each sequence's own paged KV
//! cache: no padding, no mask tensor; a query at position `p` reads positions
//! `0..=p` of its own sequence, or with a sliding window `w` the last `w` of
//! them (`p + 1 - w..=p`).

use super::ComputePool;
use super::ops::{self, softmax_in_place};
use crate::kv::{CpuBlocks, SeqKv};

/// Where each row of the flattened batch belongs.
#[derive(Debug, Clone, Copy)]
pub struct RowPlace<'a> {
    pub kv: &'a SeqKv,
    pub pos: usize,
}

/// `out[row, head*hd..]` = softmax(q·Kᵀ/√hd)·V for every row and query head.
/// `q` is `[rows, heads * head_dim]`; `window`: how many of the latest
/// positions a query sees (None: all); `softcap`: scores become
/// `cap * tanh(score / cap)` before the softmax (Gemma 2).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    rows: &[RowPlace<'_>],
    q: &[f32],
    heads: usize,
    layer: usize,
    window: Option<usize>,
    softcap: Option<f32>,
    kv: &CpuBlocks,
    out: &mut [f32],
    pool: &ComputePool,
) {
    let l = *kv.layout();
    let hd = l.head_dim;
    let q_stride = heads * hd;
    // Checked once per call; the tasks below index within these.
    assert!(
        q.len() == rows.len() * q_stride && out.len() == rows.len() * q_stride,
        "attention: {} rows of {heads}x{hd} need q and out of {}, got {} and {}",
        rows.len(),
        rows.len() * q_stride,
        q.len(),
        out.len()
    );
    let group = heads / l.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // An item is a row's KV head with the `group` query heads that share
    // it: each key and value row is read once for all of them. Work per
    // item is its context length: hand out tasks of similar total length,
    // so a long sequence does not leave a thread idle. Item
    // `r * kv_heads + g` writes `out[item * group * hd..][..group * hd]`
    // (heads `g * group..(g + 1) * group` are adjacent), so a task's
    // consecutive items own one consecutive range of `out`.
    // Positions `first(p)..=p` are attended.
    let first = |pos: usize| window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let total: usize = rows.iter().map(|r| (r.pos + 1 - first(r.pos)) * l.kv_heads).sum();
    let tasks = (pool.threads() * 4).max(1);
    let target = total.div_ceil(tasks).max(1);
    let mut bounds = vec![0usize];
    let mut acc = 0;
    for (i, r) in rows.iter().enumerate() {
        for g in 0..l.kv_heads {
            acc += r.pos + 1 - first(r.pos);
            if acc >= target {
                bounds.push(i * l.kv_heads + g + 1);
                acc = 0;
            }
        }
    }
    if *bounds.last().unwrap_or(&0) != rows.len() * l.kv_heads {
        bounds.push(rows.len() * l.kv_heads);
    }
    let item_len = group * hd;
    let ends: Vec<usize> = bounds[1..].iter().map(|&b| b * item_len).collect();
    pool.for_each_part(out, &ends, |task, part| {
        let mut scores = Vec::new();
        for (item, o) in (bounds[task]..bounds[task + 1]).zip(part.chunks_exact_mut(item_len)) {
            let (r, g) = (item / l.kv_heads, item % l.kv_heads);
            let place = rows[r];
            let (lo, n) = (first(place.pos), place.pos + 1);
            let m = n - lo;
            // scores[h * m + i]: query head g * group + h, position lo + i.
            scores.clear();
            scores.resize(group * m, 0.0);
            let qs = &q[r * q_stride + g * item_len..r * q_stride + (g + 1) * item_len];
            // The attended slots of each block: positions max(start, lo)..
            // min(start + block, n), slots counted from the block's start.
            let span = |b: usize| {
                let start = b * l.block_size;
                (start.max(lo), (start + l.block_size).min(n), start)
            };
            for (b, &blk) in place.kv.blocks.iter().enumerate().skip(lo / l.block_size) {
                let (p0, p1, start) = span(b);
                if p0 >= p1 {
                    break;
                }
                let keys = &kv.keys(blk, layer, g)[(p0 - start) * hd..(p1 - start) * hd];
                ops::group_scores(qs, keys, hd, scale, &mut scores[p0 - lo..], m);
            }
            if let Some(cap) = softcap {
                scores.iter_mut().for_each(|s| *s = cap * (*s / cap).tanh());
            }
            for head in scores.chunks_exact_mut(m) {
                softmax_in_place(head);
            }
            o.fill(0.0);
            for (b, &blk) in place.kv.blocks.iter().enumerate().skip(lo / l.block_size) {
                let (p0, p1, start) = span(b);
                if p0 >= p1 {
                    break;
                }
                let vals = &kv.values(blk, layer, g)[(p0 - start) * hd..(p1 - start) * hd];
                ops::group_weighted_sum(&scores[p0 - lo..], m, vals, hd, o);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{BlockStore, KvLayout};

    /// Rows of two sequences (a prefill chunk and a decode token) against
    /// the plain formula, on several threads: each task's output range is
    /// its own (Miri checks the threads' accesses too).
    #[test]
    fn matches_plain_softmax_attention_per_sequence() {
        // Query groups of 2, 3 and 3 heads; head sizes the FMA scores take
        // (8, 16) and one they leave to the portable loop (12); blocks of
        // 2 to 4 positions.
        for (heads, kv_heads, hd, bs) in [(4, 2, 8, 2), (6, 2, 12, 4), (3, 1, 16, 3)] {
            for softcap in [None, Some(1.5f32)] {
                check_against_plain_attention(heads, kv_heads, hd, bs, softcap);
            }
        }
    }

    fn check_against_plain_attention(heads: usize, kv_heads: usize, hd: usize, bs: usize, softcap: Option<f32>) {
        let layout = KvLayout {
            layers: 1,
            kv_heads,
            head_dim: hd,
            block_size: bs,
            elem_bytes: 4,
        };
        let mut kv = CpuBlocks::new(layout);
        let val = |i: usize| ((i * 37 % 29) as f32 - 14.0) / 9.0;
        // Sequence a: 5 positions in blocks 0, 1, 2; sequence b: 3 in 3, 4.
        let seqs = [
            SeqKv {
                blocks: vec![0, 1, 2],
                len: 5,
            },
            SeqKv {
                blocks: vec![3, 4],
                len: 3,
            },
        ];
        let kv_dim = kv_heads * hd;
        let keys = |s: usize, p: usize| (0..kv_dim).map(|i| val(s * 1000 + p * 50 + i)).collect::<Vec<f32>>();
        let vals = |s: usize, p: usize| {
            (0..kv_dim)
                .map(|i| val(s * 2000 + p * 70 + i + 3))
                .collect::<Vec<f32>>()
        };
        for (s, seq) in seqs.iter().enumerate() {
            for p in 0..seq.len {
                let (blk, slot) = seq.locate(bs, p);
                kv.ensure(blk).unwrap();
                kv.write(blk, 0, slot, &keys(s, p), &vals(s, p));
            }
        }
        let rows = [(0, 3), (0, 4), (1, 2)].map(|(s, pos)| RowPlace { kv: &seqs[s], pos });
        let seq_of = [0, 0, 1];
        let q: Vec<f32> = (0..rows.len() * heads * hd).map(|i| val(i * 3 + 1)).collect();
        let pool = ComputePool::new(3).unwrap();
        // Full attention, and sliding windows that cut inside a block, at a
        // block edge, and before the first position.
        for window in [None, Some(1), Some(2), Some(3), Some(9)] {
            let mut out = vec![f32::NAN; q.len()];
            attention(&rows, &q, heads, 0, window, softcap, &kv, &mut out, &pool);
            for (r, place) in rows.iter().enumerate() {
                let lo = window.map_or(0, |w| (place.pos + 1).saturating_sub(w));
                for h in 0..heads {
                    let g = h / (heads / kv_heads);
                    let qv = &q[(r * heads + h) * hd..(r * heads + h + 1) * hd];
                    let scores: Vec<f32> = (lo..=place.pos)
                        .map(|p| {
                            let k = &keys(seq_of[r], p)[g * hd..(g + 1) * hd];
                            let s = qv.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt();
                            softcap.map_or(s, |c| c * (s / c).tanh())
                        })
                        .collect();
                    let m = scores.iter().fold(f32::MIN, |a, &b| a.max(b));
                    let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for d in 0..hd {
                        let want: f32 = (lo..=place.pos)
                            .map(|p| e[p - lo] / z * vals(seq_of[r], p)[g * hd + d])
                            .sum();
                        let got = out[(r * heads + h) * hd + d];
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{heads}/{kv_heads} heads of {hd}, blocks of {bs}, softcap {softcap:?}, window {window:?} row {r} head {h} dim {d}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
