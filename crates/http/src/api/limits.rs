//! Limits a request is held to before any handler runs, each answered in the JSON error shape:
//!
//! - a URI (path and query) over [`MAX_URI_BYTES`]: 414 `uri_too_long`. (URIs past 64 KiB,
//!   and header blocks past hyper's buffer, are refused by the HTTP parser itself, before any
//!   routing; [`crate::parse_errors`] gives those answers the same JSON shape.)
//! - a `Content-Length` over `--body-limit-bytes`: 413 `body_too_large` at once, before a byte
//!   of the body is read, and the connection closes (the unread body is not drained).
//!
//! - a body that has not fully arrived `--body-read-timeout` after the request's headers: 408
//!   `body_timeout` (the deadline is for the whole body, however it trickles in, and is
//!   shorter than the request timeout, whose answer is 504).
//!
//! A body that is sent without a length and turns out too long is cut by the body limit as it
//! is read (413).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::BoxError;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

use super::{ApiError, AppState};

/// The longest URI (path and query) served.
pub const MAX_URI_BYTES: usize = 8 * 1024;

pub(super) async fn check(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the URI is {uri_len} bytes; at most {MAX_URI_BYTES} are served"),
        )
        .into_response();
    }
    if let Some(len) = declared_length(&req) {
        if len > state.http.body_limit_bytes as u64 {
            let mut resp = ApiError::body_too_large().into_response();
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
    }
    // A request without a body (most GETs) has nothing to time: it goes on as it is.
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let timeout = state.http.body_read_timeout;
    next.run(req.map(|body| Body::new(DeadlineBody::new(body, timeout)))).await
}

/// The request's `Content-Length`, when it has one that parses.
fn declared_length(req: &Request) -> Option<u64> {
    req.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The error a body read past its deadline fails with (found by [`super::error`] in the
/// extractor's rejection and answered 408).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// A body that fails with [`BodyTimeout`] once its deadline passes.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Body, timeout: Duration) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_past_its_deadline_fails_one_in_time_passes() {
        let body = DeadlineBody::new(Body::from("abc"), Duration::from_secs(1));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");

        // A body whose sender sends a byte and then stalls: the read fails at the deadline.
        let body = DeadlineBody::new(Body::new(Stalled(false)), Duration::from_millis(100));
        let err = body.collect().await.unwrap_err();
        assert!(err.is::<BodyTimeout>(), "{err}");
    }

    struct Stalled(bool);

    impl HttpBody for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0 {
                Poll::Pending
            } else {
                self.0 = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"a")))))
            }
        }
    }
}
