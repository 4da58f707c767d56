//! Tower middleware, one concern each: request ids and request logs, the
//! `Host` allow-list, CORS, and the last-resort panic catcher.
pub mod catch_panic;
pub mod cors;
pub mod host;
pub mod request_id;
