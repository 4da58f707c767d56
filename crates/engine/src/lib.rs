//! hfms-engine: what a model is and how it runs. No HTTP here.

pub mod error;
pub mod formats;
pub mod quant;
pub mod tokenizer;

pub use error::{EngineError, Result};
