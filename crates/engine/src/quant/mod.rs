//! ggml tensor types: block layouts, dequantisation, and dot products of a
//! quantised weight row with activations quantised to 8 bits.
//!
//! Every weight type is multiplied against the same activation format,
//! [`BlockQ8`]: 32 values, an f32 scale and the integer sums of each half.
//! The 256-wide K-quants see a super-block as eight 32-wide pieces, so one
//! activation format serves all of them (and is finer-grained than ggml's
//! Q8_K, which has one scale per 256).

mod dequant;
mod dot;
pub mod packed;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dequant::dequantize_row;
#[cfg(test)]
pub(crate) use dot::tests as dot_tests;
pub use dot::{Kernels, available_kernels, kernel_set_coverage, kernel_set_report, kernels, quantize_activations};

use half::{bf16, f16};

static PRECISE_ACTIVATIONS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether products with the packed types (packed or not on this CPU:
/// `packed::packed_len`) quantise activations twice (the
/// value, then its residual: ~16-bit activations, logits within ~1e-3 of
/// f32 maths) or once (8-bit, llama.cpp's choice: faster prefill, logits
/// off by up to ~0.3 on SmolLM2). Process-wide; default precise.
pub fn set_precise_activations(on: bool) {
    PRECISE_ACTIVATIONS.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn precise_activations() -> bool {
    PRECISE_ACTIVATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Elements in a K-quant super-block.
pub const QK_K: usize = 256;
/// Elements in a simple block and in an activation block.
pub const QK: usize = 32;

/// The ggml types hfms can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl GgmlType {
    /// Every type hfms loads, in ggml's id order.
    pub const ALL: [GgmlType; 13] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::BF16,
    ];

    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// (elements per block, bytes per block)
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (QK, 18),
            Self::Q4_1 => (QK, 20),
            Self::Q5_0 => (QK, 22),
            Self::Q5_1 => (QK, 24),
            Self::Q8_0 => (QK, 34),
            Self::Q2_K => (QK_K, 84),
            Self::Q3_K => (QK_K, 110),
            Self::Q4_K => (QK_K, 144),
            Self::Q5_K => (QK_K, 176),
            Self::Q6_K => (QK_K, 210),
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }

    /// Bytes of a row of `n` elements, or None when `n` is not a whole
    /// number of blocks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let (be, bb) = self.block();
        n.is_multiple_of(be).then(|| n / be * bb)
    }

    /// Bits per weight, for display.
    pub fn bits_per_weight(self) -> f64 {
        let (be, bb) = self.block();
        bb as f64 * 8.0 / be as f64
    }
}

/// One block of 32 activations quantised to i8 with a shared scale.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(8))]
pub struct BlockQ8 {
    pub d: f32,
    /// Sums of `qs[0..16]` and `qs[16..32]`: the offset terms of the
    /// min-carrying weight types need them.
    pub sums: [i16; 2],
    pub qs: [i8; QK],
}

impl BlockQ8 {
    #[inline]
    pub fn sum(&self) -> i32 {
        self.sums[0] as i32 + self.sums[1] as i32
    }
}

/// f16 → f32 for every bit pattern: a table lookup is cheaper than the
/// per-call feature dispatch of a generic conversion on the scalar paths.
fn f16_table() -> &'static [f32; 65536] {
    static T: std::sync::OnceLock<Box<[f32; 65536]>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let mut t = Box::new([0f32; 65536]);
        for (i, v) in t.iter_mut().enumerate() {
            *v = f16::from_bits(i as u16).to_f32();
        }
        t
    })
}

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_table()[u16::from_le_bytes([b[i], b[i + 1]]) as usize]
}

#[inline]
pub(crate) fn bf16_at(b: &[u8], i: usize) -> f32 {
    bf16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K super-block.
#[inline]
pub(crate) fn k4_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// The 16 signed 6-bit scales of a Q3_K super-block.
#[inline]
pub(crate) fn k3_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let high = (s[8 + (j % 4)] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}
