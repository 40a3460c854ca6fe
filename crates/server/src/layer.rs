//! The request layer: one root span per request, request metrics, `X-Trace-Id`, and the
//! slow-request log.
//!
//! It wraps every route and the fallback (so it sees axum's `MatchedPath`), opens the span
//! before the handler runs and closes it only after the response body has been sent, so the
//! span's duration is what the client waited.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderValue, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use m3query_telemetry::Propagation;
use m3query_telemetry::http::{CLIENT_HEADERS, RequestSpan, client_tag};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::error::ApiError;
use crate::metrics::HttpMetrics;
use crate::slow_queries::{Finished, QueryParams, SlowQueries};

/// The routes whose requests the slow-query record takes.
const QUERY_ROUTES: [&str; 2] = ["/api/v1/query", "/api/v1/query_range"];

/// What a handler tells the request layer about the work it did, through response
/// extensions: the slow-request log and the span carry it.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The query or selectors, for the slow-request log and the span's `query` tag.
    pub query: Option<String>,
    /// Series the request fetched from storage.
    pub series: Option<u64>,
    /// Samples fetched from storage, or written by a remote write.
    pub samples: Option<u64>,
    /// A query's time parameters, for the slow-query record.
    pub params: Option<QueryParams>,
}

/// A run of identical 5xx errors (a full disk fails every write alike) is logged at ERROR
/// at most once per this long; the span of each request still records its error status.
const REPEATED_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The last 5xx message logged at ERROR, when, and how many identical ones were not since.
struct RepeatedErrors(parking_lot::Mutex<Option<(String, Instant, u64)>>);

impl RepeatedErrors {
    const fn new() -> Self {
        RepeatedErrors(parking_lot::Mutex::new(None))
    }

    /// Whether to log a 5xx with `message` at ERROR: `Some(identical errors not logged
    /// since)`, or `None` within [`REPEATED_ERROR_LOG_EVERY`] of logging the same message.
    fn check(&self, message: &str, now: Instant) -> Option<u64> {
        let mut last = self.0.lock();
        match last.as_mut() {
            Some((m, at, n)) if m == message => {
                if now.saturating_duration_since(*at) < REPEATED_ERROR_LOG_EVERY {
                    *n += 1;
                    return None;
                }
                let not_logged = *n;
                *at = now;
                *n = 0;
                Some(not_logged)
            }
            _ => {
                *last = Some((message.to_string(), now, 0));
                Some(0)
            }
        }
    }
}

static SERVER_ERRORS: RepeatedErrors = RepeatedErrors::new();

fn repeated_server_error(message: &str) -> Option<u64> {
    SERVER_ERRORS.check(message, Instant::now())
}

/// When the request arrived (its headers were read): deadlines count from here, so time spent
/// waiting for a body or for an execution slot is part of a query's timeout.
#[derive(Debug, Clone, Copy)]
pub struct RequestStart(pub Instant);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestStart {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestStart>()
            .copied()
            .unwrap_or_else(|| RequestStart(Instant::now())))
    }
}

/// Marks the readiness probe's 503 while storage starts: an expected answer, not a failure
/// to log at ERROR or to tail-capture.
#[derive(Debug, Clone, Copy)]
pub struct NotReady;

/// Marks a response produced from a handler panic.
#[derive(Debug, Clone, Copy)]
pub struct HandlerPanicked;

/// The request middleware: trace context, request span, metrics and the slow-request log.
#[derive(Clone)]
pub struct RequestLayer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Shared {
    propagation: Propagation,
    metrics: HttpMetrics,
    slow_threshold: Duration,
    slow_queries: Option<Arc<SlowQueries>>,
}

impl RequestLayer {
    /// The layer, with the propagation headers, the HTTP metrics and the slow-log threshold.
    pub fn new(propagation: Propagation, metrics: HttpMetrics, slow_threshold: Duration) -> Self {
        RequestLayer {
            shared: Arc::new(Shared {
                propagation,
                metrics,
                slow_threshold,
                slow_queries: None,
            }),
        }
    }

    /// Also offers every finished query request to `record` (the UI's slow-query page).
    pub fn with_slow_queries(self, record: Arc<SlowQueries>) -> Self {
        let Shared {
            propagation,
            metrics,
            slow_threshold,
            ..
        } = Arc::unwrap_or_clone(self.shared);
        RequestLayer {
            shared: Arc::new(Shared {
                propagation,
                metrics,
                slow_threshold,
                slow_queries: Some(record),
            }),
        }
    }
}

impl<S> Layer<S> for RequestLayer {
    type Service = RequestService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// [`RequestLayer`] around a service.
#[derive(Clone)]
pub struct RequestService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for RequestService<S>
where
    S: Service<Request, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let start = Instant::now();
        req.extensions_mut().insert(RequestStart(start));
        let method = req.method().as_str().to_string();
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_string());
        let url = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let span = RequestSpan::start(
            &self.shared.propagation,
            &method,
            route.as_deref(),
            &url,
            req.headers(),
        );
        // Kept for the slow log (cheap: header values share the request's buffer).
        let client = CLIENT_HEADERS.map(|(h, _)| req.headers().get(h).cloned());
        // Jaeger baggage rides on the request span, for the calls the request makes.
        self.shared
            .propagation
            .attach_baggage(span.span(), req.headers());
        let fut = self.inner.call(req).instrument(span.span().clone());
        // Until a response exists, the request counts as abandoned by the client (499): if
        // the future is dropped, `done` records that on the way out.
        let mut done = Completion {
            span,
            start,
            route: route.unwrap_or_else(|| "unknown".into()),
            method,
            status: client_closed(),
            responded: false,
            info: None,
            client,
            shared: self.shared.clone(),
        };
        Box::pin(async move {
            let mut resp = fut.await?;
            let status = resp.status();
            done.status = status;
            done.responded = true;
            let failed = resp.extensions().get::<HandlerPanicked>().is_some();
            done.span.record_status(status.as_u16(), failed);
            let not_ready = resp.extensions().get::<NotReady>().is_some();
            if not_ready {
                done.span.no_tail_capture();
            }
            done.span
                .tail_check(status.as_u16(), failed, done.start.elapsed());
            let span = &done.span;
            if let Some(err) = resp.extensions().get::<ApiError>() {
                // Recorded as a span event (a log in Jaeger) for 4xx too; only 5xx tag error.
                let _e = span.span().enter();
                if status.is_server_error() && !not_ready {
                    match repeated_server_error(&err.message) {
                        Some(not_logged) => {
                            tracing::error!(error.kind = err.kind.as_str(), error.message = %err.message, identical_errors_not_logged = i64::try_from(not_logged).unwrap_or(i64::MAX), "request failed")
                        }
                        None => {
                            tracing::debug!(error.kind = err.kind.as_str(), error.message = %err.message, "request failed (repeat)")
                        }
                    }
                } else {
                    // A client's mistake, not the server's (or storage still starting): debug,
                    // so a misbehaving client or a probe cannot flood the log.
                    tracing::debug!(error.kind = err.kind.as_str(), error.message = %err.message, "request refused");
                }
            }
            if let Some(id) = span.trace_id()
                && let Ok(v) = HeaderValue::from_str(id)
            {
                resp.headers_mut().insert("x-trace-id", v);
            }
            done.info = resp.extensions().get::<RequestInfo>().cloned();
            Ok(resp.map(|b| {
                Body::new(TracedBody {
                    inner: b,
                    done: Some(done),
                })
            }))
        })
    }
}

/// 499, nginx's "client closed request", which Prometheus uses for canceled queries.
fn client_closed() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// What happens once the body is sent (or dropped): metrics, slow log, span end.
struct Completion {
    span: RequestSpan,
    start: Instant,
    route: String,
    method: String,
    status: StatusCode,
    /// False when the client went away before the handler answered.
    responded: bool,
    info: Option<RequestInfo>,
    /// [`CLIENT_HEADERS`]' values, for the slow log.
    client: [Option<HeaderValue>; 4],
    shared: Arc<Shared>,
}

impl Completion {
    /// The `i`th of [`CLIENT_HEADERS`] as the span tags it, or "".
    fn client(&self, i: usize) -> &str {
        self.client
            .get(i)
            .and_then(|v| v.as_ref())
            .and_then(client_tag)
            .unwrap_or("")
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        if !self.responded {
            self.span.record_status(self.status.as_u16(), false);
            let _e = self.span.span().enter();
            tracing::info!(
                method = %self.method,
                route = %self.route,
                duration_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
                "client disconnected before the response; request canceled (499)"
            );
        }
        // A request the sampler passed over is exported when it ended slow or failed.
        self.span.tail_check(self.status.as_u16(), false, elapsed);
        self.shared.metrics.observe(
            &self.route,
            &self.method,
            self.status.as_u16(),
            elapsed.as_secs_f64(),
        );
        if let (Some(record), Some(info)) = (&self.shared.slow_queries, &self.info)
            && let Some(query) = info.query.as_deref()
            && QUERY_ROUTES.contains(&self.route.as_str())
        {
            record.offer(Finished {
                query,
                params: info.params,
                duration: elapsed,
                status: self.status.as_u16(),
                trace_id: self.span.trace_id(),
                series: info.series,
                samples: info.samples,
            });
        }
        if elapsed >= self.shared.slow_threshold {
            let info = self.info.clone().unwrap_or_default();
            tracing::warn!(
                method = %self.method,
                route = %self.route,
                query = info.query.as_deref().unwrap_or(""),
                status = i64::from(self.status.as_u16()),
                duration_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
                series = info.series.and_then(|n| i64::try_from(n).ok()),
                samples = info.samples.and_then(|n| i64::try_from(n).ok()),
                trace_id = self.span.trace_id().unwrap_or(""),
                user_agent = self.client(0),
                grafana_dashboard_uid = self.client(1),
                grafana_panel_id = self.client(2),
                grafana_org_id = self.client(3),
                "slow request"
            );
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body, holding the request's completion until the last frame is sent.
    struct TracedBody {
        #[pin]
        inner: Body,
        done: Option<Completion>,
    }
}

impl HttpBody for TracedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.done.take();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod repeated_errors_tests {
    use super::*;

    #[test]
    fn identical_server_errors_are_logged_once_per_interval() {
        let r = RepeatedErrors::new();
        let t0 = Instant::now();
        let disk_full = "write WAL segment: No space left on device (os error 28)";
        assert_eq!(r.check(disk_full, t0), Some(0));
        assert_eq!(r.check(disk_full, t0 + Duration::from_secs(1)), None);
        assert_eq!(r.check(disk_full, t0 + Duration::from_secs(2)), None);
        assert_eq!(r.check(disk_full, t0 + Duration::from_secs(11)), Some(2));
        // A different error is logged at once.
        assert_eq!(r.check("other", t0 + Duration::from_secs(12)), Some(0));
    }
}
