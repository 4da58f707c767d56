//! f32 products with weights packed once, at load, into panels of 16 output
//! rows: `panel[k][j]` is weight row `16p + j`, column `k`. A micro-kernel
//! keeps a tile of up to 6 tokens × 16 outputs in registers and streams the
//! panel once per tile: no per-call packing (the overhead that dominates
//! small products in general-purpose GEMMs), no padding of the token count.
//!
//! Panels hold f32 or IEEE half (`u16` bits, widened in registers). Products
//! over a few tokens are bound by reading the weights, so half panels are
//! nearly twice as fast there, and a small encoder's half weights stay in the
//! last-level cache between requests where its f32 weights do not.

/// Output rows per panel.
pub const NR: usize = 16;
/// Tokens per register tile (AVX2: 2 ymm per token, 12 of 16 registers).
const MR: usize = 6;
/// Tokens per AVX-512 register tile (1 zmm per token, 12 of 32 registers:
/// more would not speed the FMAs, and each token's row is one more stream).
#[cfg(target_arch = "x86_64")]
const MR_512: usize = 12;

/// What a panel holds: f32, or IEEE half bits.
pub trait PanelElem: Copy + Default + Send + Sync + 'static {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl PanelElem for f32 {
    #[inline(always)]
    fn from_f32(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl PanelElem for u16 {
    /// Rounded to nearest.
    #[inline(always)]
    fn from_f32(v: f32) -> u16 {
        half::f16::from_f32(v).to_bits()
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self).to_f32()
    }
}

/// Panels from rows produced one at a time by `row(r, buf)` (rows padded
/// to a multiple of 16): a file's tensor packs without a whole f32 copy of
/// it alongside.
pub fn pack_with<E: PanelElem>(rows: usize, cols: usize, mut row: impl FnMut(usize, &mut [f32])) -> Vec<E> {
    let panels = rows.div_ceil(NR);
    let mut out = vec![E::default(); panels * cols * NR];
    let mut buf = vec![0f32; cols];
    for r in 0..rows {
        row(r, &mut buf);
        let (p, j) = (r / NR, r % NR);
        for (k, &v) in buf.iter().enumerate() {
            out[(p * cols + k) * NR + j] = E::from_f32(v);
        }
    }
    out
}

/// Row-major f32 `[rows, cols]` → panels.
pub fn pack<E: PanelElem>(rows: usize, cols: usize, data: &[f32]) -> Vec<E> {
    pack_with(rows, cols, |r, buf| {
        buf.copy_from_slice(&data[r * cols..(r + 1) * cols])
    })
}

/// Row `r` of a packed matrix.
pub fn unpack_row<E: PanelElem>(packed: &[E], cols: usize, r: usize, out: &mut [f32]) {
    let (p, j) = (r / NR, r % NR);
    for (k, o) in out.iter_mut().enumerate().take(cols) {
        *o = packed[(p * cols + k) * NR + j].to_f32();
    }
}

/// bf16 panels for the `vdpbf16ps` kernel: element `(q, j)` of panel `p`
/// is a u32 holding weight row `16p + j`'s columns `2q` (low half) and
/// `2q + 1` (high half), rounded to bf16 (8 significant bits); an odd last
/// column is paired with 0. The activations are rounded the same way
/// ([`bf16_pairs`]): the product sees both at bf16, accumulated in f32.
pub fn pack_bf16_with(rows: usize, cols: usize, mut row: impl FnMut(usize, &mut [f32])) -> Vec<u32> {
    let (panels, pairs) = (rows.div_ceil(NR), cols.div_ceil(2));
    let mut out = vec![0u32; panels * pairs * NR];
    let mut buf = vec![0f32; 2 * pairs];
    for r in 0..rows {
        row(r, &mut buf[..cols]);
        let (p, j) = (r / NR, r % NR);
        for q in 0..pairs {
            out[(p * pairs + q) * NR + j] = bf16_pair(buf[2 * q], buf[2 * q + 1]);
        }
    }
    out
}

/// Row `r` of a bf16 pair panel matrix.
pub fn unpack_row_bf16(packed: &[u32], cols: usize, r: usize, out: &mut [f32]) {
    let (p, j, pairs) = (r / NR, r % NR, cols.div_ceil(2));
    for (c, o) in out.iter_mut().enumerate().take(cols) {
        let v = packed[(p * pairs + c / 2) * NR + j];
        *o = f32::from_bits(if c % 2 == 0 { v << 16 } else { v & 0xffff_0000 });
    }
}

/// `v` rounded to the nearest bf16 (ties to even), its bits; NaN stays
/// NaN. Integer maths only, so the activations' loop vectorises.
#[inline(always)]
fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    if v.is_nan() {
        return (b >> 16) | 0x40;
    }
    (b + 0x7fff + ((b >> 16) & 1)) >> 16
}

#[inline(always)]
fn bf16_pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// Each of the `t` rows of `x` (width `k`) as bf16 pairs, `k.div_ceil(2)`
/// per row: the activations of a [`PanelKernelBf16`] product.
pub fn bf16_pairs(x: &[f32], t: usize, k: usize, out: &mut Vec<u32>) {
    let pairs = k.div_ceil(2);
    out.clear();
    out.resize(t * pairs, 0);
    for tok in 0..t {
        let (row, o) = (&x[tok * k..(tok + 1) * k], &mut out[tok * pairs..(tok + 1) * pairs]);
        for (v, p) in o.iter_mut().zip(row.chunks_exact(2)) {
            *v = bf16_pair(p[0], p[1]);
        }
        if k % 2 == 1 {
            o[pairs - 1] = bf16_pair(row[k - 1], 0.0);
        }
    }
}

/// Where one panel's products go: `width` (at most [`NR`]) consecutive
/// columns of each of `rows` rows, `stride` elements apart, of a row-major
/// output. Tasks that apply different panels to one output hold such views
/// at the same time: their columns are disjoint but their rows interleave,
/// so no `&mut [f32]` may span a view's rows (overlapping `&mut` slices are
/// undefined behaviour even when the writes do not collide). A view hands
/// out its own columns only, one row at a time.
pub struct PanelOut<'a> {
    ptr: *mut f32,
    rows: usize,
    stride: usize,
    width: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> PanelOut<'a> {
    /// Columns `col..col + width` of the rows of `out` (`stride` per row).
    pub fn new(out: &'a mut [f32], rows: usize, stride: usize, col: usize, width: usize) -> Self {
        Self::check(out.len(), rows, stride, col, width);
        // SAFETY: `check` put every element of the view inside `out`, which
        // this view borrows exclusively for `'a`.
        unsafe { Self::from_raw(out.as_mut_ptr(), out.len(), rows, stride, col, width) }
    }

    /// The view of columns `col..col + width` of an output shared by the
    /// tasks of one product.
    ///
    /// # Safety
    /// `base` is valid for reads and writes of `len` f32 during `'a`, and
    /// during `'a` nothing else reads or writes columns `col..col + width`
    /// of these `rows` rows (other columns may be written concurrently).
    /// The dimensions themselves are checked here.
    pub(crate) unsafe fn from_raw(
        base: *mut f32,
        len: usize,
        rows: usize,
        stride: usize,
        col: usize,
        width: usize,
    ) -> Self {
        Self::check(len, rows, stride, col, width);
        PanelOut {
            // In bounds (or one past the end when `rows == 0`): checked.
            ptr: base.wrapping_add(col),
            rows,
            stride,
            width,
            _out: std::marker::PhantomData,
        }
    }

    /// The view lies inside a buffer of `len`: each row's `width` columns
    /// end within the row, the last row within the buffer.
    fn check(len: usize, rows: usize, stride: usize, col: usize, width: usize) {
        let fits = rows == 0
            || col.checked_add(width).is_some_and(|end| {
                end <= stride
                    && (rows - 1)
                        .checked_mul(stride)
                        .and_then(|last| last.checked_add(end))
                        .is_some_and(|e| e <= len)
            });
        assert!(
            width <= NR && fits,
            "panel output: {rows} rows x columns {col}..+{width} (stride {stride}) do not fit {len}"
        );
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Row `i`'s columns of this view.
    #[inline]
    pub fn row(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows);
        // SAFETY: `check` put row `i`'s `width` columns inside the buffer,
        // and they belong to this view alone (`new` borrows the buffer,
        // `from_raw`'s caller guarantees the columns are not shared); the
        // slice borrows `self`, so it cannot outlive or alias the view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.stride), self.width) }
    }
}

/// One panel against tokens `x[t, k]`: writes the `out.width()` columns of
/// the view (the panel's real rows) for each of its `t` rows.
pub type PanelKernelOf<E> = fn(panel: &[E], x: &[f32], t: usize, k: usize, out: PanelOut<'_>);
pub type PanelKernel = PanelKernelOf<f32>;
/// The half-panel twin of [`PanelKernel`].
pub type PanelKernelF16 = PanelKernelOf<u16>;

/// One bf16 pair panel against `t` tokens' bf16 pairs (`pairs` per token):
/// the twin of [`PanelKernel`] for [`pack_bf16_with`] panels.
pub type PanelKernelBf16 = fn(panel: &[u32], x: &[u32], t: usize, pairs: usize, out: PanelOut<'_>);

/// The panel kernels of one kernel set (see `quant::Kernels`, which picks
/// the set once from the CPU's features: the GEMM follows the same choice,
/// `HFMS_NO_AVX512` and `HFMS_FORCE_SCALAR_KERNELS` included).
#[derive(Clone, Copy)]
pub struct PanelKernels {
    pub f32: PanelKernel,
    pub f16: PanelKernelF16,
    /// `vdpbf16ps` where the CPU has AVX512_BF16; else None (bf16 panels
    /// then run the portable kernel, [`panel_bf16_scalar`]).
    pub bf16: Option<PanelKernelBf16>,
}

impl PanelKernels {
    pub const SCALAR: PanelKernels = PanelKernels {
        f32: panel_scalar,
        f16: panel_scalar,
        bf16: None,
    };
    /// AVX2 + FMA + F16C: 6 tokens × 16 outputs in 12 ymm accumulators.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C (the kernels are safe to call only
    /// there).
    #[cfg(target_arch = "x86_64")]
    pub(crate) unsafe fn avx2() -> PanelKernels {
        PanelKernels {
            f32: x86::panel,
            f16: x86::panel_f16,
            bf16: None,
        }
    }
    /// AVX-512F: 12 tokens × 16 outputs in 12 zmm accumulators; bf16
    /// pairs where the CPU has AVX512_BF16 (detected here).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA, F16C and AVX-512F.
    #[cfg(target_arch = "x86_64")]
    pub(crate) unsafe fn avx512() -> PanelKernels {
        PanelKernels {
            f32: x86::panel_512,
            f16: x86::panel_f16_512,
            bf16: std::is_x86_feature_detected!("avx512bf16").then_some(x86::panel_bf16_512 as PanelKernelBf16),
        }
    }

    /// The bf16 kernel: the SIMD one, or the portable one.
    pub fn bf16_or_scalar(&self) -> PanelKernelBf16 {
        self.bf16.unwrap_or(panel_bf16_scalar)
    }
}

/// The f32 panel kernel of this process's kernel set.
pub fn panel_kernel() -> PanelKernel {
    crate::quant::kernels().panels.f32
}

/// The half-panel kernel of this process's kernel set.
pub fn panel_kernel_f16() -> PanelKernelF16 {
    crate::quant::kernels().panels.f16
}

/// The lengths every panel kernel relies on; checked once per panel.
fn check_panel<E, X>(panel: &[E], x: &[X], t: usize, k: usize, out: &PanelOut<'_>) {
    assert!(
        k.checked_mul(NR).is_some_and(|n| panel.len() >= n)
            && t.checked_mul(k).is_some_and(|n| x.len() >= n)
            && out.rows() == t,
        "panel kernel: panel {} (k {k}), x {} (t {t}), out rows {}",
        panel.len(),
        x.len(),
        out.rows()
    );
}

pub fn panel_scalar<E: PanelElem>(panel: &[E], x: &[f32], t: usize, k: usize, mut out: PanelOut<'_>) {
    check_panel(panel, x, t, k, &out);
    let width = out.width();
    for tok in 0..t {
        let mut acc = [0f32; NR];
        for kk in 0..k {
            let a = x[tok * k + kk];
            let b = &panel[kk * NR..(kk + 1) * NR];
            for j in 0..NR {
                acc[j] += a * b[j].to_f32();
            }
        }
        out.row(tok).copy_from_slice(&acc[..width]);
    }
}

/// The portable bf16 pair kernel (and the reference for the SIMD one).
pub fn panel_bf16_scalar(panel: &[u32], x: &[u32], t: usize, pairs: usize, mut out: PanelOut<'_>) {
    check_panel(panel, x, t, pairs, &out);
    let width = out.width();
    let lo = |v: u32| f32::from_bits(v << 16);
    let hi = |v: u32| f32::from_bits(v & 0xffff_0000);
    for tok in 0..t {
        let mut acc = [0f32; NR];
        for q in 0..pairs {
            let a = x[tok * pairs + q];
            let b = &panel[q * NR..(q + 1) * NR];
            for j in 0..NR {
                acc[j] += lo(a) * lo(b[j]) + hi(a) * hi(b[j]);
            }
        }
        out.row(tok).copy_from_slice(&acc[..width]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2 and AVX-512 panel kernels. Everything here is `unsafe fn`
    //! with one contract: the CPU has AVX2 and FMA (and F16C for half
    //! panels; AVX-512F for the `_512` ones), and the pointers cover what the
    //! comments say. The safe entry points at the bottom check the lengths;
    //! the kernel sets (`quant::Kernels`) hold them only after detecting the
    //! features.

    use std::arch::x86_64::*;

    use super::{MR, MR_512, NR, PanelOut, check_panel};

    /// `$body` with the const `$c` equal to the run-time tile height `m`, one
    /// of `sizes` (the tile kernels keep `M` accumulators in registers, so
    /// `M` must be a constant).
    macro_rules! tile_sizes {
        ($m:expr, |$c:ident| $body:expr, [$($n:literal),*]) => {
            match $m {
                $($n => {
                    const $c: usize = $n;
                    $body
                })*
                other => unreachable!("no tile of {other} tokens"),
            }
        };
    }

    /// A panel element type: how 8 (AVX2) or 16 (AVX-512) consecutive
    /// weights become a register.
    trait Elem: Copy {
        /// # Safety
        /// The CPU has AVX2 (and F16C for `u16`); `p..p + 8` is readable.
        unsafe fn load8(p: *const Self) -> __m256;
        /// # Safety
        /// The CPU has AVX-512F; `p..p + 16` is readable.
        unsafe fn load16(p: *const Self) -> __m512;
    }

    impl Elem for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: 8 readable f32 at `p` and AVX (the caller's contract);
            // `loadu` has no alignment requirement.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            // SAFETY: 16 readable f32 at `p` and AVX-512F (the caller's
            // contract); `loadu` has no alignment requirement.
            unsafe { _mm512_loadu_ps(p) }
        }
    }

    impl Elem for u16 {
        #[inline(always)]
        unsafe fn load8(p: *const u16) -> __m256 {
            // SAFETY: 8 readable u16 (16 bytes) at `p`, AVX and F16C (the
            // caller's contract); `loadu` has no alignment requirement.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
        #[inline(always)]
        unsafe fn load16(p: *const u16) -> __m512 {
            // SAFETY: 16 readable u16 (32 bytes) at `p` and AVX-512F, whose
            // `vcvtph2ps` widens them (the caller's contract); `loadu` has no
            // alignment requirement.
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
        }
    }

    /// `M` tokens against one panel.
    ///
    /// # Safety
    /// AVX2+FMA (+F16C for `u16`); `panel` holds `k * NR` elements, `x`
    /// `M * k`; `out` row `i < M` is writable for `width <= NR` elements at
    /// `out + i * stride`.
    #[inline(always)]
    unsafe fn tile<E: Elem, const M: usize>(
        panel: *const E,
        x: *const f32,
        k: usize,
        out: *mut f32,
        stride: usize,
        width: usize,
    ) {
        // SAFETY: reads `panel[kk * NR..kk * NR + 16]` for `kk < k` and
        // `x[i * k + kk]` for `i < M`, `kk < k`; writes `width` elements of
        // each of the `M` out rows (all inside the contract); the CPU
        // features are the contract's.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; M];
            for kk in 0..k {
                let b0 = E::load8(panel.add(kk * NR));
                let b1 = E::load8(panel.add(kk * NR + 8));
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*x.add(i * k + kk));
                    acc_i[0] = _mm256_fmadd_ps(a, b0, acc_i[0]);
                    acc_i[1] = _mm256_fmadd_ps(a, b1, acc_i[1]);
                }
            }
            for (i, acc_i) in acc.iter().enumerate() {
                let o = out.add(i * stride);
                if width == NR {
                    _mm256_storeu_ps(o, acc_i[0]);
                    _mm256_storeu_ps(o.add(8), acc_i[1]);
                } else {
                    let mut tmp = [0f32; NR];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), acc_i[0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), acc_i[1]);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, width);
                }
            }
        }
    }

    /// All `t` tokens, `MR` at a time.
    ///
    /// # Safety
    /// AVX2+FMA (+F16C for `u16`), and the lengths `check_panel` asserts.
    #[inline(always)]
    unsafe fn tiles<E: Elem>(p: *const E, x: &[f32], t: usize, k: usize, out: &mut PanelOut<'_>) {
        let (stride, width) = (out.stride, out.width);
        let (xp, op) = (x.as_ptr(), out.ptr);
        let mut t0 = 0;
        while t0 < t {
            let m = MR.min(t - t0);
            // SAFETY: tokens `t0..t0 + m` are inside `x` (`x.len() >= t * k`)
            // and rows `t0..t0 + m` inside the view (`out.rows == t`), whose
            // rows hold `width <= NR` writable columns each (`PanelOut`'s
            // invariant); `p` holds `k * NR` elements; features: our contract.
            unsafe {
                let (xs, os) = (xp.add(t0 * k), op.add(t0 * stride));
                tile_sizes!(m, |M| tile::<E, M>(p, xs, k, os, stride, width), [1, 2, 3, 4, 5, 6])
            }
            t0 += m;
        }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; the lengths `check_panel` asserts.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn panel_tf(panel: &[f32], x: &[f32], t: usize, k: usize, out: &mut PanelOut<'_>) {
        // SAFETY: passed on from this function's contract.
        unsafe { tiles(panel.as_ptr(), x, t, k, out) }
    }

    /// # Safety
    /// The CPU has AVX2, FMA and F16C; the lengths `check_panel` asserts.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn panel_f16_tf(panel: &[u16], x: &[f32], t: usize, k: usize, out: &mut PanelOut<'_>) {
        // SAFETY: passed on from this function's contract.
        unsafe { tiles(panel.as_ptr(), x, t, k, out) }
    }

    /// `M` tokens against one panel, one zmm accumulator per token: the
    /// panel's 16 weights of column `kk` are one register, each token's
    /// `x[kk]` a broadcast folded into its FMA.
    ///
    /// # Safety
    /// AVX-512F; the rest as [`tile`]'s.
    #[inline(always)]
    unsafe fn tile_512<E: Elem, const M: usize>(
        panel: *const E,
        x: *const f32,
        k: usize,
        out: *mut f32,
        stride: usize,
        width: usize,
    ) {
        // SAFETY: as in `tile`: reads `panel[kk * NR..kk * NR + 16]` and
        // `x[i * k + kk]` for `kk < k`, `i < M`; writes `width` elements of
        // each of the `M` out rows (the masked store touches no others).
        unsafe {
            let mut acc = [_mm512_setzero_ps(); M];
            for kk in 0..k {
                let b = E::load16(panel.add(kk * NR));
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    *acc_i = _mm512_fmadd_ps(_mm512_set1_ps(*x.add(i * k + kk)), b, *acc_i);
                }
            }
            let mask = if width == NR { !0 } else { (1u16 << width) - 1 };
            for (i, acc_i) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(i * stride), mask, *acc_i);
            }
        }
    }

    /// All `t` tokens, `MR_512` at a time.
    ///
    /// # Safety
    /// AVX-512F (+F16C for `u16`), and the lengths `check_panel` asserts.
    #[inline(always)]
    unsafe fn tiles_512<E: Elem>(p: *const E, x: &[f32], t: usize, k: usize, out: &mut PanelOut<'_>) {
        let (stride, width) = (out.stride, out.width);
        let (xp, op) = (x.as_ptr(), out.ptr);
        let mut t0 = 0;
        while t0 < t {
            let m = MR_512.min(t - t0);
            // SAFETY: as in `tiles`.
            unsafe {
                let (xs, os) = (xp.add(t0 * k), op.add(t0 * stride));
                tile_sizes!(
                    m,
                    |M| tile_512::<E, M>(p, xs, k, os, stride, width),
                    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
                )
            }
            t0 += m;
        }
    }

    /// # Safety
    /// The CPU has AVX-512F; the lengths `check_panel` asserts.
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    unsafe fn panel_512_tf(panel: &[f32], x: &[f32], t: usize, k: usize, out: &mut PanelOut<'_>) {
        // SAFETY: passed on from this function's contract.
        unsafe { tiles_512(panel.as_ptr(), x, t, k, out) }
    }

    /// # Safety
    /// The CPU has AVX-512F; the lengths `check_panel` asserts.
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    unsafe fn panel_f16_512_tf(panel: &[u16], x: &[f32], t: usize, k: usize, out: &mut PanelOut<'_>) {
        // SAFETY: passed on from this function's contract.
        unsafe { tiles_512(panel.as_ptr(), x, t, k, out) }
    }

    /// In a kernel set only after AVX-512F was detected.
    pub(super) fn panel_512(panel: &[f32], x: &[f32], t: usize, k: usize, mut out: PanelOut<'_>) {
        check_panel(panel, x, t, k, &out);
        // SAFETY: lengths checked just above; the features were detected
        // before the kernel set holding this function was built.
        unsafe { panel_512_tf(panel, x, t, k, &mut out) }
    }

    /// In a kernel set only after AVX-512F was detected.
    pub(super) fn panel_f16_512(panel: &[u16], x: &[f32], t: usize, k: usize, mut out: PanelOut<'_>) {
        check_panel(panel, x, t, k, &out);
        // SAFETY: as in `panel_512`.
        unsafe { panel_f16_512_tf(panel, x, t, k, &mut out) }
    }

    /// `M` tokens' bf16 pairs against one bf16 pair panel: per pair, one
    /// `vdpbf16ps` a token adds both products of 16 outputs.
    ///
    /// # Safety
    /// AVX-512F and AVX512_BF16; `panel` holds `pairs * NR` u32, `x`
    /// `M * pairs`; the out rows as in [`tile`].
    #[inline(always)]
    unsafe fn tile_bf16<const M: usize>(
        panel: *const u32,
        x: *const u32,
        pairs: usize,
        out: *mut f32,
        stride: usize,
        width: usize,
    ) {
        // SAFETY: reads `panel[q * NR..q * NR + 16]` and `x[i * pairs + q]`
        // for `q < pairs`, `i < M`; writes `width` elements of each of the
        // `M` out rows (masked); all inside the contract.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); M];
            for q in 0..pairs {
                let b: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(q * NR).cast()));
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x.add(i * pairs + q) as i32));
                    *acc_i = _mm512_dpbf16_ps(*acc_i, a, b);
                }
            }
            let mask = if width == NR { !0 } else { (1u16 << width) - 1 };
            for (i, acc_i) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(i * stride), mask, *acc_i);
            }
        }
    }

    /// # Safety
    /// AVX-512F and AVX512_BF16; the lengths `check_panel` asserts.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn panel_bf16_512_tf(panel: &[u32], x: &[u32], t: usize, pairs: usize, out: &mut PanelOut<'_>) {
        let (stride, width) = (out.stride, out.width);
        let (xp, op, pp) = (x.as_ptr(), out.ptr, panel.as_ptr());
        let mut t0 = 0;
        while t0 < t {
            let m = MR_512.min(t - t0);
            // SAFETY: as in `tiles`, with `pairs` for `k`.
            unsafe {
                let (xs, os) = (xp.add(t0 * pairs), op.add(t0 * stride));
                tile_sizes!(
                    m,
                    |M| tile_bf16::<M>(pp, xs, pairs, os, stride, width),
                    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
                )
            }
            t0 += m;
        }
    }

    /// In a kernel set only after AVX-512F and AVX512_BF16 were detected.
    pub(super) fn panel_bf16_512(panel: &[u32], x: &[u32], t: usize, pairs: usize, mut out: PanelOut<'_>) {
        check_panel(panel, x, t, pairs, &out);
        // SAFETY: lengths checked just above; the features were detected
        // before the kernel set holding this function was built.
        unsafe { panel_bf16_512_tf(panel, x, t, pairs, &mut out) }
    }

    /// In a kernel set only after AVX2 and FMA were detected; private to
    /// this file otherwise.
    pub(super) fn panel(panel: &[f32], x: &[f32], t: usize, k: usize, mut out: PanelOut<'_>) {
        check_panel(panel, x, t, k, &out);
        // SAFETY: lengths checked just above; the features were detected
        // before the kernel set holding this function was built.
        unsafe { panel_tf(panel, x, t, k, &mut out) }
    }

    /// In a kernel set only after AVX2, FMA and F16C were detected.
    pub(super) fn panel_f16(panel: &[u16], x: &[f32], t: usize, k: usize, mut out: PanelOut<'_>) {
        check_panel(panel, x, t, k, &out);
        // SAFETY: lengths checked just above; the features were detected
        // before the kernel set holding this function was built.
        unsafe { panel_f16_tf(panel, x, t, k, &mut out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel for `E` against the plain product of the weights as
    /// panels of `E` hold them (half panels round each weight once).
    fn check_kernels<E: PanelElem>(kernel: PanelKernelOf<E>) {
        // Under Miri (which interprets every step) the two small shapes:
        // still two panels, a ragged one and both tile sizes.
        let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(16, 8, 1), (21, 33, 7)]
        } else {
            &[(16, 8, 1), (21, 33, 7), (50, 64, 13), (40, 96, 37)]
        };
        for &(rows, cols, t) in shapes {
            let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let x: Vec<f32> = (0..t * cols).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let packed = pack::<E>(rows, cols, &w);
            let w: Vec<f32> = w.iter().map(|&v| E::from_f32(v).to_f32()).collect();
            let mut row = vec![0f32; cols];
            unpack_row(&packed, cols, rows - 1, &mut row);
            assert_eq!(row, w[(rows - 1) * cols..]);
            let mut out = vec![0f32; t * rows];
            // Panels in order: a ragged panel writing past its width would
            // clobber the next token row's first panel, already written.
            for p in 0..rows.div_ceil(NR) {
                let width = NR.min(rows - p * NR);
                let panel = &packed[p * cols * NR..(p + 1) * cols * NR];
                kernel(panel, &x, t, cols, PanelOut::new(&mut out, t, rows, p * NR, width));
            }
            for tok in 0..t {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|k| w[r * cols + k] * x[tok * cols + k]).sum();
                    let got = out[tok * rows + r];
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{rows}x{cols} t={tok} r={r}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Every kernel refuses buffers shorter than its arguments promise
    /// (the SIMD ones write through raw pointers).
    #[test]
    #[cfg_attr(miri, ignore = "panics are slow under Miri; a native check")]
    fn kernels_refuse_short_buffers() {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let (k, t) = (8, 3);
        let panel = vec![0f32; k * NR];
        for kernel in crate::quant::available_kernels().iter().map(|k| k.panels.f32) {
            for (p_len, x_len, rows) in [(k * NR - 1, t * k, t), (k * NR, t * k - 1, t), (k * NR, t * k, t + 1)] {
                let mut out = vec![0f32; (t + 1) * NR];
                let r = catch_unwind(AssertUnwindSafe(|| {
                    kernel(
                        &panel[..p_len],
                        &vec![1.0; x_len],
                        t,
                        k,
                        PanelOut::new(&mut out, rows, NR, 0, NR),
                    )
                }));
                assert!(r.is_err(), "panel {p_len}, x {x_len}, rows {rows} accepted");
            }
        }
        // A view must fit its buffer and its row.
        let mut out = vec![0f32; 2 * 20];
        for (rows, stride, col, width) in [(2, 20, 8, 16), (3, 20, 0, 16), (2, 20, 0, 17)] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                PanelOut::new(&mut out, rows, stride, col, width);
            }));
            assert!(r.is_err(), "{rows}x{stride} +{col}..{width} accepted");
        }
        PanelOut::new(&mut out, 2, 20, 4, 16).row(1).fill(1.0);
        assert_eq!(out.iter().sum::<f32>(), 16.0);
    }

    /// The bf16 kernels against the plain product of the bf16-rounded
    /// weights and activations (odd widths: the padding pair).
    #[test]
    fn bf16_kernels_match_plain_maths() {
        let round = |v: f32| half::bf16::from_f32(v).to_f32();
        for &(rows, cols, t) in &[(16, 8, 1), (21, 33, 7), (40, 97, 37)] {
            let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.1).collect();
            let x: Vec<f32> = (0..t * cols).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.3).collect();
            let packed = pack_bf16_with(rows, cols, |r, buf| buf.copy_from_slice(&w[r * cols..(r + 1) * cols]));
            let mut row = vec![0f32; cols];
            unpack_row_bf16(&packed, cols, rows - 1, &mut row);
            let want_row: Vec<f32> = w[(rows - 1) * cols..].iter().map(|&v| round(v)).collect();
            assert_eq!(row, want_row);
            let mut xp = Vec::new();
            bf16_pairs(&x, t, cols, &mut xp);
            let pairs = cols.div_ceil(2);
            let sets = crate::quant::available_kernels();
            let kernels =
                std::iter::once(panel_bf16_scalar as PanelKernelBf16).chain(sets.iter().filter_map(|k| k.panels.bf16));
            for kernel in kernels {
                let mut out = vec![0f32; t * rows];
                for p in 0..rows.div_ceil(NR) {
                    let width = NR.min(rows - p * NR);
                    let panel = &packed[p * pairs * NR..(p + 1) * pairs * NR];
                    kernel(panel, &xp, t, pairs, PanelOut::new(&mut out, t, rows, p * NR, width));
                }
                for tok in 0..t {
                    for r in 0..rows {
                        let want: f32 = (0..cols)
                            .map(|k| round(w[r * cols + k]) * round(x[tok * cols + k]))
                            .sum();
                        let got = out[tok * rows + r];
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{rows}x{cols} t={tok} r={r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_match_plain_maths() {
        for set in crate::quant::available_kernels() {
            check_kernels::<f32>(set.panels.f32);
            check_kernels::<u16>(set.panels.f16);
        }
    }
}
