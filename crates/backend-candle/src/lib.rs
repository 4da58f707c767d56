//! hfms-backend-candle: the engine's model families on candle tensors, for
//! devices other than the CPU (CUDA with the `cuda` feature, Metal with
//! `metal`). The same code runs on candle's CPU device, which is how it is
//! tested on machines without a GPU: against the native engine and the
//! tiny-model goldens.
//!
//! The serving shape is the engine's: one forward over the flattened new
//! tokens of every running sequence, attention per sequence against its own
//! paged KV cache — here two device tensors per layer of
//! `[max_blocks * block_size, kv_heads, head_dim]`, indexed through each
//! sequence's block table.

// Every `unsafe` block says why it is sound (docs/design.md, Soundness).
#![deny(clippy::undocumented_unsafe_blocks)]

mod bert;
mod llama;

use std::sync::Arc;

use candle_core::Device;
use hfms_engine::skills::bert::Encoder;
use hfms_engine::skills::llama::CausalLm;
use hfms_engine::skills::{DeviceBackend, Family, ModelSource};
use hfms_engine::{EngineError, Result};
use hfms_hardware::{DeviceId, Platform};

pub use bert::CandleBert;
pub use llama::{CandleKv, CandleLlama};

use candle_core::DType;

/// The dtypes a model keeps on its device. On the CPU (how this backend is
/// tested) everything is f32, like the native engine and the references. On
/// a GPU, dense weights and the KV cache are 16-bit, as vLLM and TGI keep
/// them: half the memory and traffic, and tensor-core products. Norms,
/// biases, softmax and the residual stream stay f32 everywhere; GGUF weights
/// stay quantised (candle's QMatMul) whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// Dense weight matrices (and a decoder's embedding table). A bf16
    /// checkpoint stays bf16 when this is f16 (its range would not fit).
    pub weights: DType,
    /// Keys and values in the cache; attention is computed in f32.
    pub kv: DType,
}

impl Precision {
    pub const F32: Precision = Precision {
        weights: DType::F32,
        kv: DType::F32,
    };
    pub const HALF: Precision = Precision {
        weights: DType::F16,
        kv: DType::F16,
    };

    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() { Self::F32 } else { Self::HALF }
    }

    /// The dtype a dense weight stored as `stored` is kept in.
    pub(crate) fn weight_dtype(self, stored: DType) -> DType {
        Self::keep(self.weights, stored)
    }

    /// This precision for a checkpoint whose weights are stored as
    /// `stored`: a bf16 model keeps bf16 for weights and cache alike (its
    /// activations may exceed f16's range), as vLLM's `auto` dtype does.
    pub(crate) fn for_checkpoint(self, stored: DType) -> Self {
        Precision {
            weights: Self::keep(self.weights, stored),
            kv: Self::keep(self.kv, stored),
        }
    }

    fn keep(wanted: DType, stored: DType) -> DType {
        match (wanted, stored) {
            (DType::F32, _) => DType::F32,
            (_, DType::BF16) => DType::BF16,
            (w, _) => w,
        }
    }
}

pub(crate) fn err(e: candle_core::Error) -> EngineError {
    EngineError::internal(format!("candle: {e}"))
}

/// Models on candle devices of one platform.
pub struct CandleBackend {
    platform: Platform,
}

impl CandleBackend {
    /// candle's CPU device: for testing this backend where there is no GPU.
    /// Not registered for serving (the native engine runs the CPU).
    pub fn cpu() -> Self {
        CandleBackend {
            platform: Platform::Cpu,
        }
    }

    #[cfg(feature = "cuda")]
    pub fn cuda() -> Self {
        CandleBackend {
            platform: Platform::Cuda,
        }
    }

    #[cfg(feature = "metal")]
    pub fn metal() -> Self {
        CandleBackend {
            platform: Platform::Metal,
        }
    }

    /// The backends this build can register for serving.
    // One push per compiled-in backend: none without a GPU feature.
    #[allow(clippy::vec_init_then_push)]
    pub fn available() -> Vec<Arc<dyn DeviceBackend>> {
        #[allow(unused_mut)]
        let mut out: Vec<Arc<dyn DeviceBackend>> = Vec::new();
        #[cfg(feature = "cuda")]
        out.push(Arc::new(Self::cuda()));
        #[cfg(feature = "metal")]
        out.push(Arc::new(Self::metal()));
        out
    }

    pub fn device(&self, id: DeviceId) -> Result<Device> {
        if id.platform != self.platform {
            return Err(EngineError::internal(format!(
                "{} backend asked for {id}",
                self.platform
            )));
        }
        match id.platform {
            Platform::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            Platform::Cuda => Device::new_cuda(id.index as usize).map_err(err),
            #[cfg(feature = "metal")]
            Platform::Metal => Device::new_metal(id.index as usize).map_err(err),
            other => Err(EngineError::internal(format!(
                "this build has no candle backend for {other}"
            ))),
        }
    }
}

impl DeviceBackend for CandleBackend {
    fn name(&self) -> &'static str {
        match self.platform {
            Platform::Cuda => "candle-cuda",
            Platform::Metal => "candle-metal",
            _ => "candle-cpu",
        }
    }

    fn platform(&self) -> Platform {
        self.platform
    }

    fn families(&self) -> &[Family] {
        &[Family::Llama, Family::Bert]
    }

    fn load_causal_lm(&self, source: &ModelSource, device: DeviceId) -> Result<Arc<dyn CausalLm>> {
        let device = self.device(device)?;
        let precision = Precision::for_device(&device);
        Ok(Arc::new(CandleLlama::load(source, device, precision)?))
    }

    fn load_encoder(&self, source: &ModelSource, device: DeviceId) -> Result<Arc<dyn Encoder>> {
        let device = self.device(device)?;
        let precision = Precision::for_device(&device);
        Ok(Arc::new(CandleBert::load(source, device, precision)?))
    }
}
