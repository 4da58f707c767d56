//! hfms-engine: what a model is and how it runs. No HTTP here.

// Every `unsafe` block says why it is sound (docs/design.md, Soundness).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod compute;
pub mod discover;
pub mod embed;
pub mod error;
pub mod formats;
pub mod generate;
pub mod kv;
pub mod manager;
pub mod observe;
pub mod quant;
pub mod skills;
pub mod tokenizer;

pub use error::{EngineError, Result};
