//! Speed of each quantised product, for every kernel set this CPU can run
//! (scalar, AVX2, AVX-512 VNNI): one weight matrix the shape of
//! Qwen2.5-0.5B's `ffn_down` (896 outputs × 4864 inputs) against 1 token (a
//! decode step) and 16 (a prefill tile), through the packed 8-row kernel
//! where the type has one (`packed`, with the activations' residual pass
//! when the server's default asks for it) and the per-row dot product
//! (`rows`, what unpacked types run, and the packed types' reference).
//!
//!     cargo bench -p hfms-engine --bench kernels [-- FILTER]
//!
//! And the f32 / f16 / bf16 GEMM panel kernels (`F32/panels`, …) on the
//! shape of all-MiniLM-L6-v2's FFN up projection (1536 outputs × 384
//! inputs) against 1, 16 and 448 tokens (a batch of 32 sentences).
//!
//! Throughput is weights × tokens per second (Criterion's elements), the
//! same unit for every type. One thread: the server splits the rows over
//! its pool, so this is the per-core speed.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hfms_engine::compute::gemm::{
    NR, PanelElem, PanelKernelBf16, PanelKernelOf, PanelOut, bf16_pairs, pack, pack_bf16_with,
};
use hfms_engine::quant::BlockQ8;
use hfms_engine::quant::packed::{GROUP, Packed, quantize_residual};
use hfms_engine::quant::{
    GgmlType, Kernels, QK, available_kernels, kernels, precise_activations, quantize_activations,
};

const ROWS: usize = 896;
const COLS: usize = 4864;

/// xorshift64*: the same bytes on every run.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Random quants with small, finite f16 scales where each type keeps them.
fn matrix(ty: GgmlType) -> Vec<u8> {
    let (elems, block) = ty.block();
    let mut bytes = noise(7, ROWS * COLS / elems * block);
    let scales: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    for b in bytes.chunks_exact_mut(block) {
        for &o in scales {
            b[o..o + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    bytes
}

fn activations(t: usize) -> (Vec<BlockQ8>, Vec<BlockQ8>) {
    let x: Vec<f32> = noise(11, t * COLS).iter().map(|&b| (b as f32 - 127.5) / 64.0).collect();
    let blocks = COLS / QK;
    let mut acts = vec![BlockQ8::default(); t * blocks];
    for tok in 0..t {
        quantize_activations(
            &x[tok * COLS..(tok + 1) * COLS],
            &mut acts[tok * blocks..(tok + 1) * blocks],
        );
    }
    let mut res = vec![BlockQ8::default(); t * blocks];
    quantize_residual(&x, &acts, &mut res);
    (acts, res)
}

fn packed(c: &mut Criterion, ks: &Kernels, ty: GgmlType, p: &Packed, t: usize) {
    let (acts, res) = activations(t);
    let kernel = ks.packed(p.kind, precise_activations());
    let mut out = vec![0f32; t * GROUP];
    let mut g = c.benchmark_group(format!("{}/packed", ty.name()));
    g.throughput(Throughput::Elements((ROWS * COLS * t) as u64));
    g.bench_function(BenchmarkId::new(ks.name, format!("t={t}")), |b| {
        b.iter(|| {
            for grp in 0..p.groups {
                kernel(p.group(grp), p.blocks, &acts, &res, t, &mut out);
                black_box(&out);
            }
        })
    });
    g.finish();
}

fn rows(c: &mut Criterion, ks: &Kernels, ty: GgmlType, bytes: &[u8], t: usize) {
    let Some(dot) = ks.dot(ty) else { return };
    let (acts, _) = activations(t);
    let row_bytes = ty.row_bytes(COLS).unwrap();
    let blocks = COLS / QK;
    let mut g = c.benchmark_group(format!("{}/rows", ty.name()));
    g.throughput(Throughput::Elements((ROWS * COLS * t) as u64));
    g.bench_function(BenchmarkId::new(ks.name, format!("t={t}")), |b| {
        b.iter(|| {
            let mut sum = 0f32;
            for row in bytes.chunks_exact(row_bytes) {
                for tok in 0..t {
                    sum += dot(row, &acts[tok * blocks..(tok + 1) * blocks]);
                }
            }
            black_box(sum)
        })
    });
    g.finish();
}

fn panels<E: PanelElem>(c: &mut Criterion, set: &str, kernel: PanelKernelOf<E>, name: &str, t: usize) {
    let (rows, cols) = (1536, 384);
    let to_f32 = |b: &u8| (*b as f32 - 127.5) / 64.0;
    let w = pack::<E>(
        rows,
        cols,
        &noise(3, rows * cols).iter().map(to_f32).collect::<Vec<_>>(),
    );
    let x: Vec<f32> = noise(5, t * cols).iter().map(to_f32).collect();
    let mut out = vec![0f32; t * rows];
    let mut g = c.benchmark_group(format!("{name}/panels"));
    g.throughput(Throughput::Elements((rows * cols * t) as u64));
    g.bench_function(BenchmarkId::new(set, format!("t={t}")), |b| {
        b.iter(|| {
            for p in 0..rows / NR {
                let panel = &w[p * cols * NR..(p + 1) * cols * NR];
                kernel(panel, &x, t, cols, PanelOut::new(&mut out, t, rows, p * NR, NR));
            }
            black_box(&out);
        })
    });
    g.finish();
}

/// The bf16 pair kernel, the activations' conversion to pairs included.
fn panels_bf16(c: &mut Criterion, set: &str, kernel: PanelKernelBf16, t: usize) {
    let (rows, cols, pairs) = (1536, 384, 192);
    let to_f32 = |b: &u8| (*b as f32 - 127.5) / 64.0;
    let w: Vec<f32> = noise(3, rows * cols).iter().map(to_f32).collect();
    let w = pack_bf16_with(rows, cols, |r, buf| buf.copy_from_slice(&w[r * cols..(r + 1) * cols]));
    let x: Vec<f32> = noise(5, t * cols).iter().map(to_f32).collect();
    let (mut xp, mut out) = (Vec::new(), vec![0f32; t * rows]);
    let mut g = c.benchmark_group("BF16/panels");
    g.throughput(Throughput::Elements((rows * cols * t) as u64));
    g.bench_function(BenchmarkId::new(set, format!("t={t}")), |b| {
        b.iter(|| {
            bf16_pairs(&x, t, cols, &mut xp);
            for p in 0..rows / NR {
                let panel = &w[p * pairs * NR..(p + 1) * pairs * NR];
                kernel(panel, &xp, t, pairs, PanelOut::new(&mut out, t, rows, p * NR, NR));
            }
            black_box(&out);
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    eprintln!(
        "kernel sets: {} (the server runs {}); precise activations: {}",
        available_kernels()
            .iter()
            .map(|k| k.name)
            .collect::<Vec<_>>()
            .join(", "),
        kernels().name,
        precise_activations()
    );
    for ks in available_kernels() {
        for t in [1, 16, 448] {
            panels::<f32>(c, ks.name, ks.panels.f32, "F32", t);
            panels::<u16>(c, ks.name, ks.panels.f16, "F16", t);
            panels_bf16(c, ks.name, ks.panels.bf16_or_scalar(), t);
        }
    }
    for ty in [
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
    ] {
        let bytes = matrix(ty);
        let p = Packed::from_rows(ty, ROWS, COLS, &bytes);
        for ks in available_kernels() {
            for t in [1, 16] {
                if let Some(p) = &p {
                    packed(c, &ks, ty, p, t);
                }
                rows(c, &ks, ty, &bytes, t);
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
