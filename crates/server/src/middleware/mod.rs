//! Tower middleware: request ids and request logging.
pub mod request_id;
