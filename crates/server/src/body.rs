//! Request bodies: refused up front when their declared length is over the limit, and given a
//! deadline to arrive.
//!
//! A `Content-Length` over `http.maxRequestBodyBytes` is answered 413 before the body is
//! touched: hyper sends `100 Continue` only when a body is first read, so a client that asked
//! (`Expect: 100-continue`) never sends it, and one that did not is cut off instead of being
//! read to the limit. A body still arriving `http.bodyReadTimeout` after the request started
//! fails with [`BodyTimeout`], which [`read_body`] answers 408: a client trickling its body
//! cannot hold a connection and a handler forever.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::error::ApiError;
use crate::layer::RequestStart;

/// The body read deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (http.bodyReadTimeout)")]
pub struct BodyTimeout(pub Duration);

/// Limits every request body shares.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body accepted (`http.maxRequestBodyBytes`).
    pub max_bytes: u64,
    /// Longest a body may take to arrive (`http.bodyReadTimeout`).
    pub read_timeout: Duration,
}

/// The middleware: 413 on a declared length over the limit, a deadline on the rest.
pub async fn enforce(State(limits): State<Arc<BodyLimits>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared
        && n > limits.max_bytes
    {
        return ApiError::too_large(format!(
            "request body of {n} bytes is over the {}-byte limit (http.maxRequestBodyBytes)",
            limits.max_bytes
        ))
        .closing()
        .into_response();
    }
    let started = req
        .extensions()
        .get::<RequestStart>()
        .map_or_else(Instant::now, |s| s.0);
    let deadline = started + limits.read_timeout;
    let timeout = limits.read_timeout;
    let mut req = req.map(|b| Body::new(TimedBody::new(b, deadline, timeout)));
    // Handlers that read bodies themselves take the limit from here.
    req.extensions_mut().insert(*limits);
    next.run(req).await
}

pin_project_lite::pin_project! {
    /// A body that fails with [`BodyTimeout`] if it has not ended by its deadline.
    struct TimedBody {
        #[pin]
        inner: Body,
        #[pin]
        sleep: tokio::time::Sleep,
        timeout: Duration,
    }
}

impl TimedBody {
    fn new(inner: Body, deadline: Instant, timeout: Duration) -> Self {
        TimedBody {
            inner,
            sleep: tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)),
            timeout,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll_frame(cx) {
            return Poll::Ready(r);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(*this.timeout))))),
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

/// Finds an error of type `E` in `e`'s source chain.
fn find<'a, E: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

/// Reads a whole body of at most `limit` bytes: 413 over it, 408 when it arrives too slowly,
/// 400 when the client broke off.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let err: &(dyn std::error::Error + 'static) = &e;
        let refusal = if find::<http_body_util::LengthLimitError>(err).is_some() {
            ApiError::too_large(format!(
                "request body is over the {limit}-byte limit (http.maxRequestBodyBytes)"
            ))
        } else if let Some(t) = find::<BodyTimeout>(err) {
            ApiError::bad_data(t.to_string()).with_status(StatusCode::REQUEST_TIMEOUT)
        } else {
            ApiError::bad_data(format!("cannot read the request body: {e}"))
        };
        refusal.closing()
    })
}
