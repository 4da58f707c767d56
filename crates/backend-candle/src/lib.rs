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
        Ok(Arc::new(CandleLlama::load(source, self.device(device)?)?))
    }

    fn load_encoder(&self, source: &ModelSource, device: DeviceId) -> Result<Arc<dyn Encoder>> {
        Ok(Arc::new(CandleBert::load(source, self.device(device)?)?))
    }
}
