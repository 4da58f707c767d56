//! The engine's one error type. The server maps each variant to an HTTP status
//! in one place (`hfms-server`'s `error.rs`).

use std::path::Path;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A model file is malformed or uses something this build cannot read.
    #[error("{0}")]
    Format(String),
    /// No model answers to this name.
    #[error("The model `{0}` does not exist")]
    ModelNotFound(String),
    /// The model was found but cannot be served (unsupported architecture,
    /// unreadable metadata).
    #[error("model {model} cannot be served: {reason}")]
    Unservable { model: String, reason: String },
    /// Loading failed (corrupt file, out of memory…).
    #[error("model {model} failed to load: {reason}")]
    LoadFailed { model: String, reason: String },
    /// No device can take the model (or its pinned device cannot).
    #[error("model {model} cannot be placed: {reason}")]
    Placement { model: String, reason: String },
    /// No skill serves this architecture.
    #[error("unsupported architecture {arch} (supported: {supported})")]
    UnsupportedArchitecture { arch: String, supported: String },
    /// The model exists but cannot do what was asked (e.g. chat on an encoder).
    #[error("{0}")]
    WrongTask(String),
    /// The request is well-formed JSON but asks for something impossible:
    /// a prompt over the context length, a token id outside the vocabulary…
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// The chat template failed to render these messages.
    #[error("chat template: {0}")]
    Template(String),
    /// Tokenizer construction or use failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The engine was shut down or the model unloaded while work was queued.
    #[error("{0}")]
    Unavailable(String),
    /// Too much work is queued; the caller should retry later.
    #[error("{0}")]
    Overloaded(String),
    /// The request was cancelled (client went away).
    #[error("cancelled")]
    Cancelled,
    /// An internal invariant broke. Never caused by request content.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub fn format(msg: impl Into<String>) -> Self {
        EngineError::Format(msg.into())
    }

    pub fn invalid(msg: impl Into<String>, param: Option<&'static str>) -> Self {
        EngineError::InvalidRequest {
            message: msg.into(),
            param,
        }
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        EngineError::Internal(msg.into())
    }
}
