//! Model file formats: GGUF files and safetensors checkpoints, read through
//! memory maps so weights are paged in on use and shared with the page cache.

pub mod gguf;
pub mod safetensors;
pub mod weights;

pub use weights::WeightSource;
