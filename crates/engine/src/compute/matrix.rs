//! Weight matrices `[rows = out features, cols = in features]` in any ggml
//! type, and the product `y[t, rows] = x[t, cols] · Wᵀ` over a flattened batch
//! of tokens: each weight row is read from memory once per call and used for
//! every token in it, which is what makes a batched decode step cheap.

use super::gemm::PanelOut;
use super::scratch::Scratch;
use super::{ComputePool, SharedMut};
use crate::error::{EngineError, Result};
use crate::formats::gguf::MappedBytes;
use crate::quant::packed::{GROUP, Packed, packed_len, packing_enabled};
use crate::quant::{BlockQ8, GgmlType, QK, dequantize_row, kernels};

/// Where a matrix's bytes live.
#[derive(Clone)]
enum Storage {
    /// f32, packed into panels of 16 rows (`gemm::pack`) for the products.
    F32(Vec<f32>),
    /// IEEE half bits in the same panels.
    F16(Vec<u16>),
    /// bf16 pairs of columns in panels of 16 rows (`gemm::pack_bf16_with`).
    Bf16(Vec<u32>),
    /// Raw ggml-typed bytes inside a file mapping (no copy).
    Mapped(MappedBytes),
    /// Raw ggml-typed bytes owned in memory.
    Owned(Vec<u8>),
    /// Only the packed copy (fused projections, which no one reads by row).
    PackedOnly,
}

#[derive(Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    dtype: GgmlType,
    row_bytes: usize,
    storage: Storage,
    /// The row-interleaved copy the products use, for the types that have one.
    packed: Option<Packed>,
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Matrix[{}x{} {}]", self.rows, self.cols, self.dtype.name())
    }
}

thread_local! {
    static EXACT_ACTIVATIONS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with quantised weights multiplied against f32 activations
/// (dequantised rows, no 8-bit activation rounding) on this thread: the
/// reference the fast path is checked against. Slow; for tests and accuracy
/// investigations.
pub fn with_exact_activations<R>(f: impl FnOnce() -> R) -> R {
    let before = EXACT_ACTIVATIONS.with(|c| c.replace(true));
    let r = f();
    EXACT_ACTIVATIONS.with(|c| c.set(before));
    r
}

/// From this many tokens on, half-precision weights are converted to f32
/// panels (cost shared by the tokens) rather than dotted row by row.
const GEMM_MIN_TOKENS: usize = 4;

impl Matrix {
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        Self::from_f32_panels(rows, cols, &data, GgmlType::F32)
    }

    /// f32 values kept as half-precision panels: half the memory and, for
    /// products over few tokens, less time (they are bound by reading the
    /// weights). Rounds each weight to 11 significant bits.
    pub fn from_f32_as_f16(rows: usize, cols: usize, data: &[f32]) -> Result<Self> {
        Self::from_f32_panels(rows, cols, data, GgmlType::F16)
    }

    fn from_f32_panels(rows: usize, cols: usize, data: &[f32], dtype: GgmlType) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(EngineError::format(format!(
                "matrix {rows}x{cols} given {} values",
                data.len()
            )));
        }
        Self::from_rows(rows, cols, dtype, |r, buf| {
            buf.copy_from_slice(&data[r * cols..(r + 1) * cols])
        })
    }

    /// An F32 or F16 matrix packed into panels of its type from rows given
    /// one at a time as f32.
    fn from_rows(rows: usize, cols: usize, dtype: GgmlType, row: impl FnMut(usize, &mut [f32])) -> Result<Self> {
        let (storage, elem_bytes) = match dtype {
            GgmlType::F32 => (Storage::F32(super::gemm::pack_with(rows, cols, row)), 4),
            GgmlType::F16 => (Storage::F16(super::gemm::pack_with(rows, cols, row)), 2),
            GgmlType::BF16 => (Storage::Bf16(super::gemm::pack_bf16_with(rows, cols, row)), 2),
            other => return Err(EngineError::internal(format!("no panels of {other:?}"))),
        };
        Ok(Matrix {
            rows,
            cols,
            dtype,
            row_bytes: cols * elem_bytes,
            storage,
            packed: None,
        })
    }

    /// This matrix with f32 weights narrowed to half panels; other types
    /// are returned unchanged (they are already as small or smaller).
    pub fn into_f16(self) -> Result<Self> {
        self.narrowed(GgmlType::F16)
    }

    /// This matrix with f32 weights narrowed to bf16 pair panels, whose
    /// products also round the activations to bf16 (`vdpbf16ps`: twice
    /// the multiply-adds of an f32 FMA per instruction, 8 significant bits
    /// on both sides); other types are returned unchanged.
    pub fn into_bf16(self) -> Result<Self> {
        self.narrowed(GgmlType::BF16)
    }

    fn narrowed(self, to: GgmlType) -> Result<Self> {
        if !matches!(self.storage, Storage::F32(_)) {
            return Ok(self);
        }
        Self::from_rows(self.rows, self.cols, to, |r, buf| self.row_f32(r, buf))
    }

    fn check(rows: usize, cols: usize, dtype: GgmlType, len: usize) -> Result<usize> {
        let row_bytes = dtype.row_bytes(cols).ok_or_else(|| {
            EngineError::format(format!(
                "a row of {cols} is not a whole number of {} blocks",
                dtype.name()
            ))
        })?;
        if row_bytes * rows != len {
            return Err(EngineError::format(format!(
                "matrix {rows}x{cols} {} needs {} bytes, has {len}",
                dtype.name(),
                row_bytes * rows
            )));
        }
        Ok(row_bytes)
    }

    /// f32 or f16 file bytes → panels of the same precision (exact), a row
    /// at a time.
    fn from_float_bytes(rows: usize, cols: usize, dtype: GgmlType, bytes: &[u8]) -> Result<Self> {
        let row_bytes = Self::check(rows, cols, dtype, bytes.len())?;
        Self::from_rows(rows, cols, dtype, |r, buf| {
            dequantize_row(dtype, &bytes[r * row_bytes..(r + 1) * row_bytes], buf)
        })
    }

    /// A matrix over mapped file bytes. F32 and F16 data are copied out into
    /// panels (the layout the products read), quantised types repacked where
    /// they have a packed layout.
    pub fn from_mapped(rows: usize, cols: usize, dtype: GgmlType, bytes: MappedBytes) -> Result<Self> {
        let row_bytes = Self::check(rows, cols, dtype, bytes.bytes().len())?;
        if matches!(dtype, GgmlType::F32 | GgmlType::F16) {
            // Copied into panels: the file pages need not stay resident
            // (while a model loads they would double its footprint).
            let m = Self::from_float_bytes(rows, cols, dtype, bytes.bytes());
            bytes.release_pages();
            return m;
        }
        // Repack the types with a packed layout; the file pages then need
        // not stay resident (embedding lookups re-read single rows).
        let packed = packing_enabled()
            .then(|| Packed::from_rows(dtype, rows, cols, bytes.bytes()))
            .flatten();
        if packed.is_some() {
            bytes.release_pages();
        }
        Ok(Matrix {
            rows,
            cols,
            dtype,
            row_bytes,
            storage: Storage::Mapped(bytes),
            packed,
        })
    }

    pub fn from_bytes(rows: usize, cols: usize, dtype: GgmlType, bytes: Vec<u8>) -> Result<Self> {
        let row_bytes = Self::check(rows, cols, dtype, bytes.len())?;
        if matches!(dtype, GgmlType::F32 | GgmlType::F16) {
            return Self::from_float_bytes(rows, cols, dtype, &bytes);
        }
        let packed = packing_enabled()
            .then(|| Packed::from_rows(dtype, rows, cols, &bytes))
            .flatten();
        Ok(Matrix {
            rows,
            cols,
            dtype,
            row_bytes,
            storage: Storage::Owned(bytes),
            packed,
        })
    }

    /// Matrices with the same type and width stacked by rows into one, so
    /// that one product serves several projections (Q/K/V, gate/up). None
    /// when they cannot be fused.
    pub fn stack(parts: &[&Matrix]) -> Option<Matrix> {
        if let Some(m) = Self::stack_panels(parts) {
            return Some(m);
        }
        let packed: Vec<&Packed> = parts.iter().map(|m| m.packed.as_ref()).collect::<Option<_>>()?;
        let first = parts.first()?;
        if parts.iter().any(|m| m.dtype != first.dtype || m.cols != first.cols) {
            return None;
        }
        let p = Packed::stack(&packed)?;
        Some(Matrix {
            rows: p.rows,
            cols: first.cols,
            dtype: first.dtype,
            row_bytes: first.row_bytes,
            storage: Storage::PackedOnly,
            packed: Some(p),
        })
    }

    /// f32 or half panels concatenate when every part but the last fills
    /// its last panel.
    fn stack_panels(parts: &[&Matrix]) -> Option<Matrix> {
        let first = parts.first()?;
        let (_, init) = parts.split_last()?;
        if parts.iter().any(|m| m.dtype != first.dtype || m.cols != first.cols)
            || init.iter().any(|m| m.rows % super::gemm::NR != 0)
        {
            return None;
        }
        let rows = parts.iter().map(|m| m.rows).sum();
        fn concat<E: Clone>(parts: &[&Matrix], panels: fn(&Storage) -> Option<&Vec<E>>) -> Option<Vec<E>> {
            let mut all = Vec::new();
            for m in parts {
                all.extend_from_slice(panels(&m.storage)?);
            }
            Some(all)
        }
        let storage = match &first.storage {
            Storage::F32(_) => Storage::F32(concat(parts, |s| match s {
                Storage::F32(v) => Some(v),
                _ => None,
            })?),
            Storage::F16(_) => Storage::F16(concat(parts, |s| match s {
                Storage::F16(v) => Some(v),
                _ => None,
            })?),
            Storage::Bf16(_) => Storage::Bf16(concat(parts, |s| match s {
                Storage::Bf16(v) => Some(v),
                _ => None,
            })?),
            _ => return None,
        };
        Some(Matrix {
            rows,
            cols: first.cols,
            dtype: first.dtype,
            row_bytes: first.row_bytes,
            storage,
            packed: None,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    /// Bytes of weight data (for memory accounting).
    pub fn byte_len(&self) -> usize {
        match &self.storage {
            _ if self.packed.is_some() => self.packed.as_ref().map_or(0, |p| p.byte_len()),
            Storage::F32(v) => v.len() * 4,
            Storage::F16(v) => v.len() * 2,
            Storage::Bf16(v) => v.len() * 4,
            Storage::Mapped(_) | Storage::Owned(_) | Storage::PackedOnly => self.row_bytes * self.rows,
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(m) => m.bytes(),
            Storage::Owned(v) => v,
            Storage::F32(_) | Storage::F16(_) | Storage::Bf16(_) | Storage::PackedOnly => &[],
        }
    }

    /// Row `r` as f32 (embedding lookups).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        match &self.storage {
            Storage::F32(v) => super::gemm::unpack_row(v, self.cols, r, out),
            Storage::F16(v) => super::gemm::unpack_row(v, self.cols, r, out),
            Storage::Bf16(v) => super::gemm::unpack_row_bf16(v, self.cols, r, out),
            Storage::PackedOnly => {
                if let Some(p) = &self.packed {
                    p.row_f32(r, out);
                }
            }
            _ => {
                let b = &self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes];
                dequantize_row(self.dtype, b, out);
            }
        }
    }

    /// The whole matrix as f32 (used for 1-D tensors such as norm weights).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            self.row_f32(r, &mut out[r * self.cols..(r + 1) * self.cols]);
        }
        out
    }

    /// `out[t, rows] = x[t, cols] · Wᵀ`.
    ///
    /// # Panics
    /// When `x` is not `t * cols` long or `out` not `t * rows` (checked in
    /// every build: the products below write `out` through raw pointers
    /// from several threads, trusting these lengths).
    pub fn matmul(&self, x: &[f32], t: usize, out: &mut [f32], pool: &ComputePool) {
        assert!(
            t.checked_mul(self.cols) == Some(x.len()) && t.checked_mul(self.rows) == Some(out.len()),
            "{self:?} · x[{}] for {t} tokens into out[{}]",
            x.len(),
            out.len()
        );
        if t == 0 {
            return;
        }
        match (&self.storage, self.dtype) {
            (Storage::F32(w), _) => self.matmul_panels(w, super::gemm::panel_kernel(), x, t, out, pool),
            (Storage::F16(w), _) => self.matmul_panels(w, super::gemm::panel_kernel_f16(), x, t, out, pool),
            (Storage::Bf16(w), _) => {
                let mut pairs = Vec::new();
                super::gemm::bf16_pairs(x, t, self.cols, &mut pairs);
                let kernel = crate::quant::kernels().panels.bf16_or_scalar();
                self.matmul_panels(w, kernel, &pairs, t, out, pool)
            }
            (_, GgmlType::F16 | GgmlType::BF16) => self.matmul_half(x, t, out, pool),
            _ if EXACT_ACTIVATIONS.with(|c| c.get()) => self.matmul_half(x, t, out, pool),
            _ => self.matmul_quant(x, t, out, pool),
        }
    }

    /// Rows per parallel task: enough tasks to balance, few enough that the
    /// per-task overhead stays small.
    fn chunk_rows(&self, pool: &ComputePool) -> usize {
        let tasks = pool.threads() * 4;
        self.rows.div_ceil(tasks).clamp(8, 512)
    }

    /// Panels of 16 output rows split across the pool; each panel applied
    /// to every token (`x`: f32 rows, or bf16 pairs) in register tiles
    /// (`gemm`).
    fn matmul_panels<E: Sync, X: Sync>(
        &self,
        w: &[E],
        kernel: fn(&[E], &[X], usize, usize, PanelOut<'_>),
        x: &[X],
        t: usize,
        out: &mut [f32],
        pool: &ComputePool,
    ) {
        // A panel's depth: its columns, or pairs of them for bf16.
        let n = self.rows;
        let k = if matches!(self.storage, Storage::Bf16(_)) {
            self.cols.div_ceil(2)
        } else {
            self.cols
        };
        let nr = super::gemm::NR;
        let panels = n.div_ceil(nr);
        let per_task = panels.div_ceil(pool.threads() * 2).max(1);
        let dst = SharedMut::new(out);
        pool.for_each(panels.div_ceil(per_task), |c| {
            for p in c * per_task..((c + 1) * per_task).min(panels) {
                let width = nr.min(n - p * nr);
                // SAFETY: `dst` is the whole `t * n` output, borrowed for
                // this call. Panel `p` is visited by this task only (task
                // `c` takes panels `c * per_task..(c + 1) * per_task`), and
                // its view is output columns `p * 16..p * 16 + width` of each
                // token row, which no other panel's view contains.
                let o = unsafe { PanelOut::from_raw(dst.as_ptr(), dst.len(), t, n, p * nr, width) };
                kernel(&w[p * k * nr..(p + 1) * k * nr], x, t, k, o);
            }
        });
    }

    /// Rows converted to f32 (from half precision or any quantised type)
    /// and multiplied in f32.
    fn matmul_half(&self, x: &[f32], t: usize, out: &mut [f32], pool: &ComputePool) {
        let (n, k) = (self.rows, self.cols);
        let dst = SharedMut::new(out);
        if t < GEMM_MIN_TOKENS {
            let dot = kernels().f32_dot;
            let chunk = self.chunk_rows(pool);
            pool.for_each(n.div_ceil(chunk), |c| {
                let mut row = vec![0f32; k];
                let r0 = c * chunk;
                for r in r0..(r0 + chunk).min(n) {
                    self.row_f32(r, &mut row);
                    for tok in 0..t {
                        let v = dot(&row, &x[tok * k..(tok + 1) * k]);
                        // SAFETY: `tok < t` and `r < n`, inside the `t * n`
                        // output (`matmul` checked its length). Row `r` is
                        // in chunk `c` only, so `(tok, r)` is this task's.
                        unsafe { dst.write(tok * n + r, v) };
                    }
                }
            });
            return;
        }
        // Convert 16 rows at a time into an f32 panel, then the panel kernel
        // over every token writes those output columns in place.
        let nr = super::gemm::NR;
        let kernel = super::gemm::panel_kernel();
        let panels = n.div_ceil(nr);
        let per_task = panels.div_ceil(pool.threads() * 4).max(1);
        pool.for_each(panels.div_ceil(per_task), |c| {
            let mut rows = vec![0f32; nr * k];
            let mut panel = vec![0f32; k * nr];
            for p in c * per_task..((c + 1) * per_task).min(panels) {
                let width = nr.min(n - p * nr);
                rows.fill(0.0);
                for j in 0..width {
                    self.row_f32(p * nr + j, &mut rows[j * k..(j + 1) * k]);
                }
                for kk in 0..k {
                    for j in 0..nr {
                        panel[kk * nr + j] = rows[j * k + kk];
                    }
                }
                // SAFETY: as in `matmul_panels`: panel `p` belongs to this
                // task, and its view (columns `p * 16..p * 16 + width` of
                // each token row) to panel `p`.
                let o = unsafe { PanelOut::from_raw(dst.as_ptr(), dst.len(), t, n, p * nr, width) };
                kernel(&panel, x, t, k, o);
            }
        });
    }

    fn matmul_quant(&self, x: &[f32], t: usize, out: &mut [f32], pool: &ComputePool) {
        let (n, k) = (self.rows, self.cols);
        let ks = kernels();
        if let Some(p) = &self.packed {
            return self.matmul_packed(p, x, t, &mut [out], &[n], pool);
        }
        let Some(dot) = ks.dot(self.dtype) else {
            return;
        };
        // The types that have a packed layout promise precise activations
        // (see `set_precise_activations`) whether or not this CPU packs
        // them; the per-row kernels keep it by a second product with the
        // residual (the dot is linear in the activations).
        let precise = crate::quant::precise_activations() && packed_len(self.dtype, GROUP, k).is_some();
        let (act, res) = quantize_with_residual(x, t, k, precise, pool);
        let bytes = self.bytes();
        let rb = self.row_bytes;
        let chunk = self.chunk_rows(pool);
        let dst = SharedMut::new(out);
        let (act, res) = (&act, &res);
        let blocks = k / QK;
        pool.for_each(n.div_ceil(chunk), |c| {
            let r0 = c * chunk;
            for r in r0..(r0 + chunk).min(n) {
                let row = &bytes[r * rb..(r + 1) * rb];
                for tok in 0..t {
                    let mut v = dot(row, &act[tok * blocks..(tok + 1) * blocks]);
                    if precise {
                        v += dot(row, &res[tok * blocks..(tok + 1) * blocks]);
                    }
                    // SAFETY: `tok < t` and `r < n`, inside the `t * n`
                    // output (`matmul` checked its length). Row `r` is in
                    // chunk `c` only, so `(tok, r)` is this task's.
                    unsafe { dst.write(tok * n + r, v) };
                }
            }
        });
    }
}

impl Matrix {
    /// The product on the packed layout: groups of 8 rows split across the
    /// pool, each group applied to every token (its weights stay in L1).
    /// The rows go to `outs` in turn, `widths[j]` rows to `outs[j]`
    /// (`[t, widths[j]]`): a fused projection writes each part in place.
    fn matmul_packed(
        &self,
        p: &Packed,
        x: &[f32],
        t: usize,
        outs: &mut [&mut [f32]],
        widths: &[usize],
        pool: &ComputePool,
    ) {
        let (n, k) = (self.rows, self.cols);
        // The writes below trust the packed copy's shape, and the parts'
        // lengths; a group of 8 rows never straddles two parts.
        assert!(p.rows == n && p.groups == n.div_ceil(GROUP) && p.blocks == k / QK);
        assert!(outs.len() == widths.len() && widths.iter().sum::<usize>() == n);
        assert!(outs.iter().zip(widths).all(|(o, &w)| o.len() == t * w));
        assert!(
            widths[..widths.len().saturating_sub(1)]
                .iter()
                .all(|w| w.is_multiple_of(GROUP))
        );
        let starts: Vec<usize> = widths
            .iter()
            .scan(0, |row, &w| {
                let s = *row;
                *row += w;
                Some(s)
            })
            .collect();
        let ks = kernels();
        let precise = crate::quant::precise_activations();
        let kernel = ks.packed(p.kind, precise);
        let blocks = k / QK;
        let (act, res) = quantize_with_residual(x, t, k, precise, pool);
        let res = &res;
        let tasks = (pool.threads() * 4).max(1);
        let per_task = p.groups.div_ceil(tasks).max(1);
        let dsts: Vec<SharedMut<'_, f32>> = outs.iter_mut().map(|o| SharedMut::new(o)).collect();
        let act = &act;
        pool.for_each(p.groups.div_ceil(per_task), |c| {
            let mut tmp = vec![0f32; t * GROUP];
            for g in c * per_task..((c + 1) * per_task).min(p.groups) {
                kernel(p.group(g), blocks, act, res, t, &mut tmp);
                let row = g * GROUP;
                let j = starts.partition_point(|&s| s <= row) - 1;
                let (w, col) = (widths[j], row - starts[j]);
                let rows = GROUP.min(w - col);
                for tok in 0..t {
                    // SAFETY: `tok < t` and `col + rows <= w` (`rows` stops
                    // at the part's end), so inside part `j`'s `t * w`
                    // (asserted above). Group `g` is in chunk `c` only, and
                    // its rows in part `j` only, so these outputs are this
                    // task's.
                    let out = unsafe { dsts[j].slice_mut(tok * w + col, rows) };
                    out.copy_from_slice(&tmp[tok * GROUP..tok * GROUP + rows]);
                }
            }
        });
    }

    /// `outs[j] = x · W[rows of part j]ᵀ` straight from the packed product,
    /// when this matrix has one and the parts split it at group edges;
    /// false (nothing written) otherwise.
    fn matmul_parts(&self, x: &[f32], t: usize, outs: &mut [&mut [f32]], widths: &[usize], pool: &ComputePool) -> bool {
        let Some(p) = &self.packed else {
            return false;
        };
        let in_place = !EXACT_ACTIVATIONS.with(|c| c.get())
            && t > 0
            && x.len() == t * self.cols
            && widths[..widths.len().saturating_sub(1)]
                .iter()
                .all(|w| w.is_multiple_of(GROUP));
        if in_place {
            self.matmul_packed(p, x, t, outs, widths, pool);
        }
        in_place
    }
}

/// Each of the `t` rows of `x` (width `k`) quantised to 8-bit blocks and,
/// when `precise`, the residual each leaves, quantised again (else empty).
/// Large products (prompt chunks, wide decode batches) split their tokens
/// across the pool: serial, this was ~6% of a prefill with the other
/// threads idle.
fn quantize_with_residual(
    x: &[f32],
    t: usize,
    k: usize,
    precise: bool,
    pool: &ComputePool,
) -> (Scratch<BlockQ8>, Scratch<BlockQ8>) {
    let ks = kernels();
    let blocks = k / QK;
    let mut act = Scratch::<BlockQ8>::zeroed(t * blocks);
    let mut res = Scratch::<BlockQ8>::zeroed(if precise { t * blocks } else { 0 });
    let quantize = |tok: usize, act: &mut [BlockQ8], res: &mut [BlockQ8]| {
        let x = &x[tok * k..(tok + 1) * k];
        (ks.quantize)(x, act);
        if precise {
            (ks.quantize_residual)(x, act, res);
        }
    };
    // Below this many values a hand-off to the pool costs more than it saves.
    const PARALLEL_FROM: usize = 1 << 16;
    let tasks = if t * k >= PARALLEL_FROM {
        pool.threads().min(t)
    } else {
        1
    };
    if tasks <= 1 {
        for tok in 0..t {
            let r = if precise {
                tok * blocks..(tok + 1) * blocks
            } else {
                0..0
            };
            quantize(tok, &mut act[tok * blocks..(tok + 1) * blocks], &mut res[r]);
        }
        return (act, res);
    }
    let per_task = t.div_ceil(tasks);
    let (acts, ress) = (SharedMut::new(&mut act), SharedMut::new(&mut res));
    pool.for_each(t.div_ceil(per_task), |c| {
        for tok in c * per_task..((c + 1) * per_task).min(t) {
            // SAFETY: `tok < t`, so both ranges lie inside the `t * blocks`
            // buffers (`res` is empty and its range too when not precise);
            // token `tok` is in task `c` only.
            let (a, r) = unsafe {
                (
                    acts.slice_mut(tok * blocks, blocks),
                    ress.slice_mut(if precise { tok * blocks } else { 0 }, if precise { blocks } else { 0 }),
                )
            };
            quantize(tok, a, r);
        }
    });
    (act, res)
}

/// Several projections of the same input (Q/K/V, gate/up): one fused
/// product when the matrices stack, else one product each.
#[derive(Debug)]
pub struct Projections {
    widths: Vec<usize>,
    fused: Option<Matrix>,
    parts: Vec<Matrix>,
}

impl Projections {
    pub fn new(parts: Vec<Matrix>) -> Self {
        let widths = parts.iter().map(|m| m.rows()).collect();
        let refs: Vec<&Matrix> = parts.iter().collect();
        match Matrix::stack(&refs) {
            Some(m) => Projections {
                widths,
                fused: Some(m),
                parts: Vec::new(),
            },
            None => Projections {
                widths,
                fused: None,
                parts,
            },
        }
    }

    /// Projections a checkpoint stores as one matrix (a fused QKV): its rows
    /// are the outputs of each projection in turn, `widths` rows each.
    pub fn from_fused(m: Matrix, widths: Vec<usize>) -> Result<Self> {
        if widths.iter().sum::<usize>() != m.rows() {
            return Err(EngineError::format(format!(
                "a fused projection of {} rows split as {widths:?}",
                m.rows()
            )));
        }
        Ok(Projections {
            widths,
            fused: Some(m),
            parts: Vec::new(),
        })
    }

    /// The same projections with f32 weights narrowed to half panels.
    pub fn into_f16(self) -> Result<Self> {
        self.map(Matrix::into_f16)
    }

    pub fn into_bf16(self) -> Result<Self> {
        self.map(Matrix::into_bf16)
    }

    /// Each matrix through `f` (fused or not, as before).
    fn map(self, f: fn(Matrix) -> Result<Matrix>) -> Result<Self> {
        match self.fused {
            Some(m) => Ok(Projections {
                widths: self.widths,
                fused: Some(f(m)?),
                parts: Vec::new(),
            }),
            None => Ok(Projections::new(self.parts.into_iter().map(f).collect::<Result<_>>()?)),
        }
    }

    pub fn byte_len(&self) -> usize {
        self.fused.as_ref().map_or(0, |m| m.byte_len()) + self.parts.iter().map(|m| m.byte_len()).sum::<usize>()
    }

    /// `outs[i][t, widths[i]] = x[t, cols] · W_iᵀ`.
    pub fn apply(&self, x: &[f32], t: usize, outs: &mut [&mut [f32]], pool: &ComputePool) {
        assert_eq!(outs.len(), self.widths.len(), "one output per projection");
        match &self.fused {
            Some(m) if m.matmul_parts(x, t, outs, &self.widths, pool) => {}
            Some(m) => {
                let total: usize = self.widths.iter().sum();
                let mut all = Scratch::<f32>::zeroed(t * total);
                m.matmul(x, t, &mut all, pool);
                for tok in 0..t {
                    let mut col = 0;
                    for (o, &w) in outs.iter_mut().zip(&self.widths) {
                        o[tok * w..(tok + 1) * w].copy_from_slice(&all[tok * total + col..tok * total + col + w]);
                        col += w;
                    }
                }
            }
            None => {
                for (m, o) in self.parts.iter().zip(outs.iter_mut()) {
                    m.matmul(x, t, o, pool);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &[f32], x: &[f32], t: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; t * n];
        for tok in 0..t {
            for r in 0..n {
                out[tok * n + r] = (0..k).map(|i| w[r * k + i] as f64 * x[tok * k + i] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    #[test]
    fn f32_and_half_matmuls_match_reference_for_small_and_large_batches() {
        let pool = ComputePool::new(2).unwrap();
        // Miri interprets every operation: smaller, still two panels, a
        // ragged last one and both the row and the panel paths.
        let (n, k) = if cfg!(miri) { (20, 24) } else { (70, 96) };
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        for t in [1, 3, 9] {
            let x: Vec<f32> = (0..t * k).map(|i| ((i * 11 % 23) as f32 - 11.0) / 7.0).collect();
            let want = reference(&w, &x, t, n, k);
            let m = Matrix::from_f32(n, k, w.clone()).unwrap();
            let mut out = vec![0f32; t * n];
            m.matmul(&x, t, &mut out, &pool);
            close(&out, &want, 1e-4);
            for ty in [GgmlType::F16, GgmlType::BF16] {
                let bytes: Vec<u8> = w
                    .iter()
                    .flat_map(|&v| match ty {
                        GgmlType::F16 => half::f16::from_f32(v).to_le_bytes(),
                        _ => half::bf16::from_f32(v).to_le_bytes(),
                    })
                    .collect();
                let m = Matrix::from_bytes(n, k, ty, bytes).unwrap();
                let mut out = vec![0f32; t * n];
                m.matmul(&x, t, &mut out, &pool);
                close(&out, &want, if ty == GgmlType::BF16 { 2e-2 } else { 2e-3 });
            }
        }
    }

    /// A fused projection gives each part its rows of the whole product:
    /// written in place from the packed product when the parts split at
    /// groups of 8 rows (a ragged last part included), through one buffer
    /// when they cut a group.
    #[test]
    fn fused_projections_split_the_product() {
        let pool = ComputePool::new(2).unwrap();
        let k = 64;
        for ty in [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_0] {
            for widths in [vec![16, 8, 8], vec![24, 13], vec![12, 4, 9]] {
                let rows: usize = widths.iter().sum();
                let bytes: Vec<u8> = (0..rows)
                    .flat_map(|r| crate::quant::dot_tests::random_row(ty, k, r as u64))
                    .collect();
                let m = Matrix::from_bytes(rows, k, ty, bytes).unwrap();
                let fused = Projections::from_fused(m.clone(), widths.clone()).unwrap();
                for t in [1, 3, 11] {
                    let x: Vec<f32> = (0..t * k).map(|i| ((i * 13 % 29) as f32 - 14.0) / 5.0).collect();
                    let mut whole = vec![0f32; t * rows];
                    m.matmul(&x, t, &mut whole, &pool);
                    let mut got: Vec<Vec<f32>> = widths.iter().map(|&w| vec![f32::NAN; t * w]).collect();
                    let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
                    fused.apply(&x, t, &mut outs, &pool);
                    let mut col = 0;
                    for (j, &w) in widths.iter().enumerate() {
                        for tok in 0..t {
                            assert_eq!(
                                got[j][tok * w..(tok + 1) * w],
                                whole[tok * rows + col..tok * rows + col + w],
                                "{ty:?} widths {widths:?} t {t} part {j} token {tok}"
                            );
                        }
                        col += w;
                    }
                }
            }
        }
    }

    /// The products write `out` through raw pointers from several threads:
    /// wrong lengths must stop them in release builds too.
    #[test]
    #[cfg_attr(miri, ignore = "panics are slow under Miri; a native check")]
    fn wrong_lengths_are_refused_in_every_build() {
        let pool = ComputePool::new(2).unwrap();
        let (n, k, t) = (40, 64, 3);
        let f32_matrix = Matrix::from_f32(n, k, vec![0.5; n * k]).unwrap();
        let q8: Vec<u8> = (0..n)
            .flat_map(|r| crate::quant::dot_tests::random_row(GgmlType::Q8_0, k, r as u64))
            .collect();
        let packed = Matrix::from_bytes(n, k, GgmlType::Q8_0, q8).unwrap();
        for m in [&f32_matrix, &packed] {
            for (x_len, out_len) in [(t * k, t * n - 1), (t * k - 1, t * n), (t * k, t * n + 1)] {
                let x = vec![0.25; x_len];
                let mut out = vec![0f32; out_len];
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.matmul(&x, t, &mut out, &pool)));
                assert!(r.is_err(), "{m:?}: x {x_len}, out {out_len} accepted");
            }
        }
    }

    #[test]
    fn quantized_matmul_matches_dequantized_reference() {
        use crate::quant::dot_tests::{ALL_QUANT, random_acts, random_row};
        let pool = ComputePool::new(2).unwrap();
        // Under Miri: a packed type of each layout and a row-kernel type
        // (the products' threading and writes, not each type's maths).
        let (n, k) = if cfg!(miri) { (9, 256) } else { (33, 512) };
        let types: &[GgmlType] = if cfg!(miri) {
            &[GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K]
        } else {
            &ALL_QUANT
        };
        for &ty in types {
            let bytes: Vec<u8> = (0..n).flat_map(|r| random_row(ty, k, r as u64 * 31 + 5)).collect();
            let m = Matrix::from_bytes(n, k, ty, bytes).unwrap();
            let w = m.to_f32();
            for t in [1, 5] {
                let x = random_acts(t * k, t as u64);
                let want = reference(&w, &x, t, n, k);
                let mut out = vec![0f32; t * n];
                m.matmul(&x, t, &mut out, &pool);
                // Activations are quantised to 8 bits: ~1% relative error.
                let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
                for (a, b) in out.iter().zip(&want) {
                    assert!((a - b).abs() <= 0.02 * scale, "{ty:?} t={t}: {a} vs {b}");
                }
            }
        }
    }
}
