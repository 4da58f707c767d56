//! The access crate's one error type.

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A setting a client or operator gave cannot be used (a 400).
    #[error("{param}: {message}")]
    Invalid { param: &'static str, message: String },
    #[error("database: {0}")]
    Database(String),
    #[error("{0}")]
    Internal(String),
}

impl AccessError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        AccessError::Invalid {
            param,
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for AccessError {
    fn from(e: sqlx::Error) -> Self {
        AccessError::Database(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, AccessError>;
