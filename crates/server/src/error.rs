//! The one place where failures become HTTP responses.
//!
//! Every handler returns `Result<ApiResponse<T>, ApiError>`. An [`ApiError`] carries
//! Prometheus's `errorType`, which decides the status (`bad_data` 400, `execution` 422,
//! `canceled` 499, `timeout` 503, `internal` 500, `unavailable` 503, `not_found` 404), and
//! renders as `{"status":"error","errorType":T,"error":MSG}`. Which kind a library error
//! gets is decided once, in the table at [`storage_kind`] and [`promql_kind`] (with the
//! remote write and read conversions beside them), so a route never matches on messages.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

/// Prometheus's error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// `bad_data` (400): the request is malformed or refused as given.
    BadData,
    /// `execution` (422): the query was valid but failed to run.
    Execution,
    /// `canceled` (499): the client went away.
    Canceled,
    /// `timeout` (503): the deadline passed.
    Timeout,
    /// `internal` (500): the server failed.
    Internal,
    /// `unavailable` (503): a store or the server cannot answer now; retry.
    Unavailable,
    /// `not_found` (404).
    NotFound,
}

impl ErrorType {
    /// The `errorType` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Execution => "execution",
            ErrorType::Canceled => "canceled",
            ErrorType::Timeout => "timeout",
            ErrorType::Internal => "internal",
            ErrorType::Unavailable => "unavailable",
            ErrorType::NotFound => "not_found",
        }
    }

    /// The HTTP status Prometheus answers with for this kind.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorType::BadData => StatusCode::BAD_REQUEST,
            ErrorType::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            // 499 is nginx's "client closed request", as Prometheus uses it.
            ErrorType::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            ErrorType::Timeout | ErrorType::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
        }
    }
}

/// An error answered in Prometheus's JSON shape.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The `errorType`.
    pub kind: ErrorType,
    /// The `error` text.
    pub message: String,
    /// A status other than the kind's own (405, 413, 415 keep Prometheus's error body).
    pub status: Option<StatusCode>,
    /// Seconds for a `Retry-After` header: set on overload refusals a client should retry.
    pub retry_after: Option<u32>,
    /// Answer with `Connection: close`: the request body was not (fully) read, so the
    /// connection cannot carry another request (and hyper must not read the rest as one).
    pub close: bool,
}

impl ApiError {
    /// An error of `kind` with `message`, at the kind's status.
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
            close: false,
        }
    }

    /// A `bad_data` (400) error.
    pub fn bad_data(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::BadData, message)
    }

    /// An `internal` (500) error.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::Internal, message)
    }

    /// An `unavailable` (503) error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::Unavailable, message)
    }

    /// A `not_found` (404) error.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::NotFound, message)
    }

    /// Answers with `status` instead of the kind's own, keeping the kind in the body.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// The status answered: the override, else the kind's.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.kind.status())
    }

    /// See [`ApiError::close`].
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Adds `Retry-After: seconds`.
    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 413 for a body over a limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError::bad_data(message).with_status(StatusCode::PAYLOAD_TOO_LARGE)
    }

    /// The error body alone, for answers written below the router (an over-long request
    /// line is refused before hyper parses it).
    pub fn body_json(&self) -> String {
        serde_json::to_string(&ErrorBody {
            status: "error",
            error_type: self.kind.as_str(),
            error: &self.message,
        })
        .unwrap_or_else(|_| {
            r#"{"status":"error","errorType":"internal","error":"cannot encode the error"}"#.into()
        })
    }

    /// The error a response produced outside our handlers (an extractor's rejection, a body
    /// limit, the router's own answers) stands for, keeping its status.
    fn from_foreign(status: StatusCode, text: &str) -> ApiError {
        let kind = match status {
            StatusCode::NOT_FOUND => ErrorType::NotFound,
            StatusCode::SERVICE_UNAVAILABLE => ErrorType::Unavailable,
            StatusCode::GATEWAY_TIMEOUT => ErrorType::Timeout,
            s if s.is_server_error() => ErrorType::Internal,
            _ => ErrorType::BadData,
        };
        let text = text.trim();
        let message = if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("request refused")
                .to_ascii_lowercase()
        } else {
            text.to_string()
        };
        ApiError::new(kind, message).with_status(status)
    }
}

/// Rewrites an error response that is not in Prometheus's shape (axum's text/plain
/// rejections: body limits, path decoding, ...) into it, so every 4xx and 5xx a client sees
/// is `{"status":"error","errorType":..,"error":..}`. Responses built from [`ApiError`] pass
/// untouched.
pub async fn prometheus_shaped(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp.extensions().get::<ApiError>().is_some()
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Rejection bodies are a line of text; anything longer is cut, not buffered.
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let mut out = ApiError::from_foreign(status, &text).into_response();
    for (name, value) in parts.headers.iter() {
        if name != http::header::CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out.extensions_mut().extend(parts.extensions);
    out
}

impl From<crate::admission::Refused> for ApiError {
    fn from(r: crate::admission::Refused) -> Self {
        use crate::admission::Refused as R;
        let kind = match &r {
            R::QueueFull { .. } | R::Closed => ErrorType::Unavailable,
            R::Timeout { .. } => ErrorType::Timeout,
        };
        // Prometheus's senders retry 503s with backoff; Retry-After tells others when.
        ApiError::new(kind, r.to_string()).with_retry_after(1)
    }
}

/// The whole of a 500's message when a handler panicked: the panic's own message is logged.
pub(crate) const HANDLER_FAILED: &str = "internal error while handling the request";

impl From<crate::workers::WorkerError> for ApiError {
    fn from(e: crate::workers::WorkerError) -> Self {
        use crate::workers::WorkerError as W;
        match e {
            // As the router's panic catcher: the message may quote request data or internals,
            // so it goes to the log and the client gets a plain 500.
            W::Panicked(_) | W::Lost => {
                tracing::error!(error = %e, "request work failed");
                ApiError::internal(HANDLER_FAILED)
            }
            // Out of threads (or memory for one): overload, which a client may retry.
            W::Spawn(_) => ApiError::unavailable(e.to_string()).with_retry_after(1),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: &'static str,
    #[serde(rename = "errorType")]
    error_type: &'static str,
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (
            status,
            Json(ErrorBody {
                status: "error",
                error_type: self.kind.as_str(),
                error: &self.message,
            }),
        )
            .into_response();
        if self.close {
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        // Lets the request layer log the message beside the status.
        resp.extensions_mut().insert(self);
        resp
    }
}

/// A successful answer: `{"status":"success","data":..,"warnings":[..],"infos":[..]}`.
#[derive(Debug)]
pub struct ApiResponse<T> {
    /// The `data` field.
    pub data: T,
    /// `warnings`, omitted when empty.
    pub warnings: Vec<String>,
    /// `infos`, omitted when empty.
    pub infos: Vec<String>,
}

impl<T> ApiResponse<T> {
    /// A success with `data` and no annotations.
    pub fn new(data: T) -> Self {
        ApiResponse {
            data,
            warnings: Vec::new(),
            infos: Vec::new(),
        }
    }

    /// Sets the warnings.
    pub fn with_warnings(mut self, warnings: Vec<String>) -> Self {
        self.warnings = warnings;
        self
    }
}

#[derive(Serialize)]
struct SuccessBody<'a, T> {
    status: &'static str,
    data: &'a T,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    infos: &'a [String],
}

impl<T: Serialize> IntoResponse for ApiResponse<T> {
    fn into_response(self) -> Response {
        Json(SuccessBody {
            status: "success",
            data: &self.data,
            warnings: &self.warnings,
            infos: &self.infos,
        })
        .into_response()
    }
}

/// What handlers return.
pub type ApiResult<T> = Result<ApiResponse<T>, ApiError>;

// The one table from typed errors to Prometheus's error kinds. Every path that turns a
// library error into an answer goes through it: storage errors by [`storage_kind`] (also
// when they surface inside a PromQL error or a remote write/read), PromQL errors by
// [`promql_kind`], remote write and remote read by their `From` impls below. The matches are
// exhaustive on purpose: a new variant must be placed here, not fall into a default.

/// Prometheus's kind for a storage error, the same on every route (`/query`, `/query_range`,
/// `/series`, `/labels`, `/label/{name}/values`, remote read and write).
///
/// Prometheus's `returnAPIError` (web/api/v1/api.go) sends every select or label-lookup error
/// that is not a cancellation, a timeout or a `promql.ErrStorage` to `execution` (422), on
/// the query routes and the metadata routes alike; `bad_data` (400) is for the API layer's own
/// parameter checks. So:
/// - `BadRequest` is a store refusing a select (matchers that all match the empty string, a
///   matcher it cannot use). Our own parameter checks already reject such selectors with
///   `bad_data` before any store sees them, so one reaching here is a store refusing a request
///   we accepted: `execution`, as Prometheus answers for a refused select.
/// - `LimitExceeded` is a store's read limit: `execution`, as Prometheus's limits are.
/// - Sample refusals and `InvalidLabels` only come from writes, where they describe the
///   sender's data: `bad_data`, so remote-write senders drop the batch instead of retrying it
///   (Prometheus's write handler answers 400 for them).
/// - `Unavailable` (a store that cannot be reached) and `Closed` (shutting down) are retryable:
///   `unavailable`, 503.
/// - I/O failures, corruption and anything else are the server's fault: `internal`, 500.
pub fn storage_kind(e: &m3query_storage::Error) -> ErrorType {
    use m3query_storage::Error as E;
    match e {
        E::Canceled => ErrorType::Canceled,
        E::DeadlineExceeded => ErrorType::Timeout,
        E::BadRequest(_) | E::LimitExceeded(_) => ErrorType::Execution,
        E::OutOfOrderSample
        | E::OutOfBounds
        | E::TooOldSample
        | E::DuplicateSampleForTimestamp
        | E::TooFarInFuture(_)
        | E::OlderThanRetention(_)
        | E::InvalidSample(_)
        | E::InvalidLabels(_) => ErrorType::BadData,
        E::Unavailable { .. } | E::Closed => ErrorType::Unavailable,
        E::Io { .. } | E::Corruption(_) | E::Other(_) => ErrorType::Internal,
    }
}

/// Prometheus's kind for a PromQL error: parse and type errors are the request's
/// (`bad_data`), evaluation failures and limits `execution` (as Prometheus's engine errors),
/// and a storage error inside one has its [`storage_kind`], so a store's failure answers
/// alike through `/query` and `/series`.
pub fn promql_kind(e: &m3query_promql::Error) -> ErrorType {
    use m3query_promql::Error as E;
    match e {
        // An answer over the server's size (format_query of a huge chain) is about the
        // request, as Prometheus's parser limits are.
        E::Parse(_) | E::TooLarge(_) => ErrorType::BadData,
        E::Execution(_) | E::TooManySamples | E::TooManySeries { .. } => ErrorType::Execution,
        E::Timeout(_) => ErrorType::Timeout,
        E::Canceled(_) => ErrorType::Canceled,
        E::Storage(s) => storage_kind(s),
    }
}

impl From<m3query_storage::Error> for ApiError {
    fn from(e: m3query_storage::Error) -> Self {
        ApiError::new(storage_kind(&e), e.to_string())
    }
}

impl From<m3query_promql::Error> for ApiError {
    fn from(e: m3query_promql::Error) -> Self {
        ApiError::new(promql_kind(&e), e.to_string())
    }
}

/// Remote write, as Prometheus's receiver answers: a body it cannot take is the sender's
/// problem (4xx, not retried), with 415 and 413 for the wrong encoding or size; a store
/// failure goes through [`storage_kind`] (5xx, so the sender retries, unless the store
/// refused the data itself). Per-sample refusals never get here: they are counted in the
/// write's outcome and answered with 400 by the handler.
impl From<m3query_remote::write::WriteError> for ApiError {
    fn from(e: m3query_remote::write::WriteError) -> Self {
        use m3query_remote::write::WriteError as W;
        let status = match &e {
            W::UnsupportedMediaType(_) | W::UnsupportedEncoding(_) => {
                Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            }
            W::TooLarge { .. } => Some(StatusCode::PAYLOAD_TOO_LARGE),
            W::Snappy(_)
            | W::Decode { .. }
            | W::ImpossibleLength { .. }
            | W::NothingDecoded { .. } => None,
            W::Storage(s) => return ApiError::new(storage_kind(s), e.to_string()),
        };
        let err = ApiError::bad_data(e.to_string());
        match status {
            Some(s) => err.with_status(s),
            None => err,
        }
    }
}

/// Remote read (served): a request or a sample limit it breaks is the reader's (400, as
/// Prometheus's read handler answers `ErrSampleLimitExceeded`); store failures go through
/// [`storage_kind`].
impl From<m3query_remote::read::ReadError> for ApiError {
    fn from(e: m3query_remote::read::ReadError) -> Self {
        use m3query_remote::read::ReadError as R;
        match e {
            R::BadRequest(m) | R::LimitExceeded(m) => ApiError::bad_data(m),
            R::Storage(s) => s.into(),
            R::Disconnected => ApiError::new(ErrorType::Canceled, "client disconnected"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A job's panic is a plain 500 (its message may quote data); running out of threads is
    /// a 503 a client may retry.
    #[test]
    fn worker_failures_keep_panic_messages_out_of_responses() {
        use crate::workers::WorkerError as W;
        let e = ApiError::from(W::Panicked(
            "index 7 out of range for label secret=xyz".into(),
        ));
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorType::Internal, HANDLER_FAILED)
        );
        let e = ApiError::from(W::Lost);
        assert_eq!(e.kind, ErrorType::Internal);
        let e = ApiError::from(W::Spawn(std::io::Error::other("no threads")));
        assert_eq!(e.kind, ErrorType::Unavailable);
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    async fn body(r: Response) -> (StatusCode, serde_json::Value) {
        let status = r.status();
        let bytes = r.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn error_shapes_and_statuses() {
        for (kind, code) in [
            (ErrorType::BadData, 400),
            (ErrorType::Execution, 422),
            (ErrorType::Canceled, 499),
            (ErrorType::Timeout, 503),
            (ErrorType::Internal, 500),
            (ErrorType::NotFound, 404),
        ] {
            let (status, v) = body(ApiError::new(kind, "boom").into_response()).await;
            assert_eq!(status.as_u16(), code);
            assert_eq!(v["status"], "error");
            assert_eq!(v["errorType"], kind.as_str());
            assert_eq!(v["error"], "boom");
        }
        let (status, _) = body(
            ApiError::bad_data("x")
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
                .into_response(),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn foreign_error_responses_get_prometheus_shape() {
        let plain = (
            StatusCode::PAYLOAD_TOO_LARGE,
            [("x-keep", "1")],
            "length limit exceeded",
        )
            .into_response();
        let out = prometheus_shaped(plain).await;
        assert_eq!(
            out.headers().get("x-keep").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let (status, v) = body(out).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(v["errorType"], "bad_data");
        assert_eq!(v["error"], "length limit exceeded");
        // An empty body gets the status's reason; ours and successes pass untouched.
        let (_, v) = body(prometheus_shaped(StatusCode::URI_TOO_LONG.into_response()).await).await;
        assert_eq!(v["error"], "uri too long");
        let ours = ApiError::new(ErrorType::Execution, "x").with_retry_after(3);
        let out = prometheus_shaped(ours.into_response()).await;
        assert_eq!(
            out.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        let (status, v) = body(out).await;
        assert_eq!(
            (status.as_u16(), v["errorType"].as_str()),
            (422, Some("execution"))
        );
        let ok = prometheus_shaped((StatusCode::OK, "fine").into_response()).await;
        assert_eq!(ok.status(), StatusCode::OK);
    }

    #[test]
    fn remote_write_and_read_errors_use_the_table() {
        use m3query_remote::read::ReadError;
        use m3query_remote::write::WriteError;
        use m3query_storage::Error as S;
        let status = |e: ApiError| (e.status().as_u16(), e.kind);
        // A store failure is retried by the sender (5xx); data the store refuses is not.
        assert_eq!(
            status(WriteError::Storage(S::io("wal", std::io::Error::other("ENOSPC"))).into()),
            (500, ErrorType::Internal)
        );
        assert_eq!(
            status(WriteError::Storage(S::InvalidLabels("empty label set".into())).into()),
            (400, ErrorType::BadData)
        );
        assert_eq!(
            status(WriteError::Storage(S::Closed).into()),
            (503, ErrorType::Unavailable)
        );
        assert_eq!(
            status(WriteError::UnsupportedEncoding("gzip".into()).into()),
            (415, ErrorType::BadData)
        );
        assert_eq!(
            status(WriteError::TooLarge { size: 2, limit: 1 }.into()),
            (413, ErrorType::BadData)
        );
        let e: ApiError = WriteError::Storage(S::Corruption("x".into())).into();
        assert_eq!(e.message, "writing to storage: corruption: x");
        assert_eq!(
            status(ReadError::LimitExceeded("too many samples".into()).into()),
            (400, ErrorType::BadData)
        );
        // The same storage error answers alike through a served remote read and the API.
        assert_eq!(
            status(ReadError::Storage(S::BadRequest("x".into())).into()),
            status(S::BadRequest("x".into()).into())
        );
        assert_eq!(
            status(ReadError::Disconnected.into()),
            (499, ErrorType::Canceled)
        );
    }

    #[test]
    fn promql_storage_errors_use_the_storage_table() {
        use m3query_promql::Error as P;
        use m3query_storage::Error as S;
        for make in [
            || S::BadRequest("x".into()),
            || S::LimitExceeded("x".into()),
            || S::Unavailable {
                store: "a".into(),
                message: "b".into(),
            },
            || S::Closed,
            || S::Canceled,
            || S::DeadlineExceeded,
        ] {
            assert_eq!(promql_kind(&P::Storage(make())), storage_kind(&make()));
        }
        assert_eq!(
            promql_kind(&P::TooManySamples),
            ErrorType::Execution,
            "an engine limit is execution"
        );
        assert_eq!(promql_kind(&P::Canceled("x")), ErrorType::Canceled);
        assert_eq!(promql_kind(&P::Timeout("x")), ErrorType::Timeout);
    }

    #[tokio::test]
    async fn success_shape() {
        let (status, v) = body(ApiResponse::new(vec!["a"]).into_response()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v, serde_json::json!({"status": "success", "data": ["a"]}));
        let (_, v) = body(
            ApiResponse::new(1)
                .with_warnings(vec!["w".into()])
                .into_response(),
        )
        .await;
        assert_eq!(v["warnings"], serde_json::json!(["w"]));
    }
}
