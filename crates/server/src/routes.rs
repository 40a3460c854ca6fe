//! The route table and the operational handlers.

use std::any::Any;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{Method, StatusCode, header};
use m3query_telemetry::Propagation;
use tower_http::catch_panic::CatchPanicLayer;

use crate::body::BodyLimits;
use crate::error::{ApiError, ApiResponse, ApiResult, prometheus_shaped};
use crate::layer::{HandlerPanicked, RequestLayer};
use crate::metrics::{BuildInfo, HttpMetrics};
use crate::{AppState, api};

pub(crate) fn router(state: Arc<AppState>, propagation: Propagation, http: HttpMetrics) -> Router {
    let cfg = &state.config;
    let metrics_path = cfg.metrics.prometheus.handler_path.clone();
    let body_limit = usize::try_from(cfg.http.max_request_body_bytes.0).unwrap_or(usize::MAX);
    let slow = cfg.middleware.logging.threshold.0;
    let slow_queries = state.slow_queries.clone();
    let mut router = Router::new();
    for page in crate::ui::PAGE_ROUTES {
        router = router.route(page, get(crate::ui::index));
    }
    router
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/-/healthy", get(health))
        .route("/-/ready", get(ready))
        .route("/assets/{file}", get(crate::ui::asset))
        .route("/api/v1/status/slow_queries", get(crate::ui::slow_queries))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/status/config", get(api::status::config))
        .route("/api/v1/status/flags", get(api::status::flags))
        .route("/api/v1/status/runtimeinfo", get(api::status::runtime_info))
        .route("/api/v1/status/tsdb", get(api::status::tsdb))
        .route("/api/v1/rules", get(api::status::rules))
        .route("/api/v1/alerts", get(api::status::alerts))
        .route("/api/v1/targets", get(api::status::targets))
        .route("/api/v1/alertmanagers", get(api::status::alertmanagers))
        .route(&metrics_path, get(metrics))
        .route(
            "/api/v1/query",
            get(api::query::instant_query).post(api::query::instant_query),
        )
        .route(
            "/api/v1/query_range",
            get(api::query::range_query).post(api::query::range_query),
        )
        .route(
            "/api/v1/query_exemplars",
            get(api::query::query_exemplars).post(api::query::query_exemplars),
        )
        .route(
            "/api/v1/format_query",
            get(api::query::format_query).post(api::query::format_query),
        )
        .route(
            "/api/v1/parse_query",
            get(api::query::parse_query).post(api::query::parse_query),
        )
        .route("/api/v1/series", get(api::series).post(api::series))
        .route("/api/v1/labels", get(api::labels).post(api::labels))
        .route("/api/v1/label/{name}/values", get(api::label_values))
        .route("/api/v1/metadata", get(api::metadata))
        .route("/api/v1/prom/remote/write", post(api::remote_write))
        .route("/api/v1/write", post(api::remote_write))
        .route("/api/v1/prom/remote/read", post(api::remote_read))
        .route("/api/v1/read", post(api::remote_read))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(BodyLimits {
                max_bytes: cfg.http.max_request_body_bytes.0,
                read_timeout: cfg.http.body_read_timeout.0,
            }),
            crate::body::enforce,
        ))
        .layer(axum::middleware::map_response(prometheus_shaped))
        .layer(CatchPanicLayer::custom(panic_response))
        // Inside the request layer: a request's span and duration include compressing.
        .layer(axum::middleware::from_fn(crate::compress::gzip))
        .layer(RequestLayer::new(propagation, http, slow).with_slow_queries(slow_queries))
        .with_state(state)
}

pub(crate) fn metrics_router(state: Arc<AppState>) -> Router {
    let path = state.config.metrics.prometheus.handler_path.clone();
    Router::new()
        .route(&path, get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::map_response(prometheus_shaped))
        .layer(axum::middleware::from_fn(crate::compress::gzip))
        .with_state(state)
}

async fn health() -> Response {
    (StatusCode::OK, "OK\n").into_response()
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        // Expected while the WAL replays: probes ask every few seconds, so the request layer
        // neither logs it as a failure nor tail-captures it.
        let mut resp =
            (StatusCode::SERVICE_UNAVAILABLE, "storage is starting up\n").into_response();
        resp.extensions_mut().insert(crate::layer::NotReady);
        resp
    }
}

async fn buildinfo(State(state): State<Arc<AppState>>) -> ApiResult<BuildInfo> {
    Ok(ApiResponse::new(state.build.clone()))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let m = state
        .metrics
        .get()
        .ok_or_else(|| ApiError::internal("metrics registry not initialised"))?;
    let text = m
        .encode()
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(method: Method, req: Request) -> ApiError {
    ApiError::bad_data(format!(
        "method {method} is not allowed for {}",
        req.uri().path()
    ))
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// A panic's message, when it has one (a `panic!` with or without format arguments).
pub(crate) fn panic_detail(err: &(dyn Any + Send)) -> &str {
    err.downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
}

fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic_detail(&*err);
    tracing::error!(panic = detail, "handler panicked");
    let mut resp = ApiError::internal(crate::error::HANDLER_FAILED).into_response();
    resp.extensions_mut().insert(HandlerPanicked);
    resp
}
