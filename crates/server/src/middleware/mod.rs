//! Tower middleware, one concern each: the request's identity (request id,
//! trace context, its span and log line), HTTP metrics with error tracking,
//! authentication with per-key request limits, the last-resort panic
//! catcher, the `Host` allow-list and CORS.
pub mod auth;
pub mod catch_panic;
pub mod cors;
pub mod host;
pub mod metrics;
pub mod trace;

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

/// A response body holding `guard` until it is dropped: after its last
/// byte, or when the client goes away. What a guard does on drop (record
/// metrics, close a span) then covers the whole response, streams included.
pub struct GuardedBody<G> {
    inner: Body,
    _guard: G,
}

impl<G> GuardedBody<G> {
    pub fn new(inner: Body, guard: G) -> Self {
        GuardedBody { inner, _guard: guard }
    }
}

impl<G: Unpin + Send + 'static> http_body::Body for GuardedBody<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
