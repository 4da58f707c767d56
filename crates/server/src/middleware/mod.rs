//! Tower middleware, one concern each: request ids and request logs, the
//! `Host` allow-list, CORS, the last-resort panic catcher, and HTTP metrics
//! with error tracking.
pub mod catch_panic;
pub mod cors;
pub mod host;
pub mod metrics;
pub mod request_id;
