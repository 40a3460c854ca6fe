//! The one place where failures become HTTP responses.
//!
//! Every handler returns `Result<ApiResponse<T>, ApiError>`. An [`ApiError`] carries
//! Prometheus's `errorType`, which decides the status (`bad_data` 400, `execution` 422,
//! `canceled` 499, `timeout` 503, `internal` 500, `unavailable` 503, `not_found` 404), and
//! renders as `{"status":"error","errorType":T,"error":MSG}`.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

/// Prometheus's error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    BadData,
    Execution,
    Canceled,
    Timeout,
    Internal,
    Unavailable,
    NotFound,
}

impl ErrorType {
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
    pub kind: ErrorType,
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
    pub fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
            close: false,
        }
    }

    pub fn bad_data(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::BadData, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::Internal, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::Unavailable, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorType::NotFound, message)
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.kind.status())
    }

    /// See [`ApiError::close`].
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

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
    pub data: T,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
}

impl<T> ApiResponse<T> {
    pub fn new(data: T) -> Self {
        ApiResponse {
            data,
            warnings: Vec::new(),
            infos: Vec::new(),
        }
    }

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

pub type ApiResult<T> = Result<ApiResponse<T>, ApiError>;

impl From<m3query_storage::Error> for ApiError {
    fn from(e: m3query_storage::Error) -> Self {
        use m3query_storage::Error as E;
        let kind = match &e {
            E::Canceled => ErrorType::Canceled,
            E::DeadlineExceeded => ErrorType::Timeout,
            E::BadRequest(_) | E::InvalidLabels(_) => ErrorType::BadData,
            E::LimitExceeded(_) => ErrorType::Execution,
            E::Unavailable { .. } => ErrorType::Unavailable,
            _ => ErrorType::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

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
