//! Who may use hfms and how much: API keys stored hashed in SQLite or
//! PostgreSQL (`keys`), and per-key rate limits kept in process or in Redis
//! so that replicas enforce one limit (`limits`), and usage records with
//! their cost (`usage`), and the dashboard's sign-in sessions (`sessions`).

pub mod error;
pub mod keys;
pub mod limits;
pub mod sessions;
pub mod usage;

pub use error::{AccessError, Result};
pub use keys::{ApiKey, KeySettings, KeyStore, Scope};
pub use limits::{Decision, RateLimiter};
pub use sessions::{Session, SessionStore};
