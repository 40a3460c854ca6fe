//! `/api/v1/query`, `/api/v1/query_range`, `/api/v1/format_query`, `/api/v1/parse_query` and
//! `/api/v1/query_exemplars`.
//!
//! Parameters and errors follow Prometheus's `web/api/v1/api.go`; M3's request headers
//! (`M3-Timeout`, `M3-Limit-Max-Series`, `M3-Limit-Require-Exhaustive`) are honoured and
//! `M3-Results-Limited` / `M3-Series-Count` answered. The result JSON is written by hand
//! ([`write_result`]): large matrices are the common case and serde's per-value overhead shows.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};
use m3query_model::Labels;
use m3query_promql::{HPoint, HistogramSeries, QueryOptions, QueryResult, QueryStats, Value};
use m3query_storage::{Context, StoreReads};

use super::params::Params;
use super::{LabelsJson, blocking, selector};
use crate::AppState;
use crate::admission::Permit;
use crate::error::{ApiError, ApiResponse, ApiResult, ErrorType};
use crate::layer::{RequestInfo, RequestStart};
use crate::results_cache::{Answer, Assembled, RangeRequest};
use crate::slow_queries::QueryParams;

/// Cancels a context when dropped: with a handler's future (the client went away), or a
/// response stream, so storage and evaluation stop promptly.
pub(crate) struct CancelOnDrop(pub(crate) Context);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// What every query request shares: deadline, limits, lookback.
struct Common {
    ctx: Context,
    opts: QueryOptions,
    /// The request's arrival plus its timeout: queueing and evaluation both count.
    deadline: Instant,
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn common(
    state: &AppState,
    params: &Params,
    headers: &HeaderMap,
    arrival: RequestStart,
) -> Result<Common, ApiError> {
    let cfg = &state.config;
    let mut timeout = cfg.query.timeout.0;
    if let Some(t) = params.duration("timeout")? {
        if t <= 0 {
            return Err(ApiError::bad_data(
                "invalid parameter \"timeout\": the timeout must be positive",
            ));
        }
        timeout = timeout.min(Duration::from_millis(t as u64));
    }
    if let Some(t) = header_str(headers, "M3-Timeout") {
        let d = m3query_model::time::parse_config_duration(t).map_err(|_| {
            ApiError::bad_data(format!(
                "invalid header \"M3-Timeout\": {t:?} is not a duration"
            ))
        })?;
        timeout = timeout.min(d);
    }
    let mut max_series = cfg.limits.per_query.max_fetched_series;
    if let Some(v) = header_str(headers, "M3-Limit-Max-Series") {
        let n: u64 = v.parse().map_err(|_| {
            ApiError::bad_data(format!(
                "invalid header \"M3-Limit-Max-Series\": {v:?} is not a non-negative integer"
            ))
        })?;
        // The header may lower the configured limit, never raise it.
        max_series = match (max_series, n) {
            (0, n) => n,
            (m, 0) => m,
            (m, n) => m.min(n),
        };
    }
    let mut require_exhaustive = cfg.limits.per_query.require_exhaustive;
    if let Some(v) = header_str(headers, "M3-Limit-Require-Exhaustive") {
        require_exhaustive = v.parse().map_err(|_| {
            ApiError::bad_data(format!(
                "invalid header \"M3-Limit-Require-Exhaustive\": {v:?} is not true or false"
            ))
        })?;
    }
    let lookback = params.duration("lookback_delta")?;
    if lookback.is_some_and(|l| l < 0) {
        return Err(ApiError::bad_data(
            "invalid parameter \"lookback_delta\": must not be negative",
        ));
    }
    let stats = params.get("stats").is_some_and(|s| !s.is_empty());
    let deadline = arrival.0 + timeout;
    Ok(Common {
        deadline,
        // Remote reads report their time to it, for the `Server-Timing` header.
        ctx: Context::with_deadline(deadline).with_read_timings(),
        opts: QueryOptions {
            lookback_delta_ms: lookback.filter(|l| *l > 0),
            max_fetched_series: usize::try_from(max_series).unwrap_or(usize::MAX),
            require_exhaustive,
            enable_stats: stats,
        },
    })
}

fn query_param(params: &Params) -> Result<String, ApiError> {
    Ok(params.get("query").unwrap_or_default().to_string())
}

/// Records the query's figures on the request span.
pub(crate) fn record_span(query: &str, start: Option<i64>, end: Option<i64>, step: Option<i64>) {
    let span = tracing::Span::current();
    span.record("query", query);
    if let Some(s) = start {
        span.record("start", s as f64 / 1000.0);
    }
    if let Some(e) = end {
        span.record("end", e as f64 / 1000.0);
    }
    if let Some(s) = step {
        span.record("step", s as f64 / 1000.0);
    }
}

/// Waits for one of the `query.maxConcurrent` slots, up to the query's deadline.
async fn admit(state: &AppState, c: &Common) -> Result<Permit, ApiError> {
    Ok(state.query_gate.acquire(Some(c.deadline)).await?)
}

/// Answers at the deadline even if the work is still running: the handler returns, its
/// [`CancelOnDrop`] cancels the context, and the work stops at its next check (its slot is
/// released then, not now, so the concurrency limit bounds the work really running).
async fn by_deadline<T>(
    deadline: Instant,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), work).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            ErrorType::Timeout,
            "query timed out in expression evaluation",
        )),
    }
}

/// Admits the query, evaluates it on a request worker with its execution slot, and answers
/// at the deadline whatever the evaluation is doing. The permit moves into the blocking work,
/// so it is released when that work ends, not when the answer goes out: `query.maxConcurrent`
/// bounds the work really running.
async fn evaluate<T: Send + 'static>(
    state: &AppState,
    c: Common,
    eval: impl FnOnce(
        &m3query_promql::Engine,
        &dyn m3query_storage::Queryable,
        &Context,
        &QueryOptions,
    ) -> Result<T, m3query_promql::Error>
    + Send
    + 'static,
) -> Result<T, ApiError> {
    let queryable = state.services()?.queryable.clone();
    let engine = state.engine.clone();
    let _cancel = CancelOnDrop(c.ctx.clone());
    let permit = admit(state, &c).await?;
    let deadline = c.deadline;
    by_deadline(
        deadline,
        run(move || {
            let _permit = permit;
            eval(&engine, queryable.as_ref(), &c.ctx, &c.opts).map_err(ApiError::from)
        }),
    )
    .await
}

/// Runs `f` on a request worker inside the request span.
async fn run<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let span = tracing::Span::current();
    blocking(move || span.in_scope(f)).await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a query's response reports besides its result: the request layer's figures
/// ([`RequestInfo`]) and the `Server-Timing` header.
struct Reply {
    query: String,
    params: QueryParams,
    stats: bool,
    arrival: Instant,
    /// The query's context, holding the remote stores' read times.
    ctx: Context,
}

/// A failed query's error response, still naming the query for the slow-query record (a
/// query that timed out is the one to find there).
fn failed(err: ApiError, query: String, params: Option<QueryParams>) -> Response {
    let mut resp = err.into_response();
    resp.extensions_mut().insert(RequestInfo {
        query: Some(query),
        series: None,
        samples: None,
        params,
    });
    resp
}

/// `GET|POST /api/v1/query`.
pub async fn instant_query(
    State(state): State<Arc<AppState>>,
    arrival: RequestStart,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let query = query_param(&params)?;
    let mut qp = None;
    match instant(&state, arrival, &headers, &params, query.clone(), &mut qp).await {
        Ok(r) => Ok(r),
        Err(e) => Ok(failed(e, query, qp)),
    }
}

async fn instant(
    state: &AppState,
    arrival: RequestStart,
    headers: &HeaderMap,
    params: &Params,
    query: String,
    qp: &mut Option<QueryParams>,
) -> Result<Response, ApiError> {
    let t = params.time("time", now_ms())?;
    *qp = Some(QueryParams::Instant { time_ms: t });
    let c = common(state, params, headers, arrival)?;
    record_span(&query, Some(t), Some(t), None);
    let reply = Reply {
        query: query.clone(),
        params: QueryParams::Instant { time_ms: t },
        stats: c.opts.enable_stats,
        arrival: arrival.0,
        ctx: c.ctx.clone(),
    };
    let result = evaluate(state, c, move |engine, queryable, ctx, opts| {
        engine.instant_query(queryable, ctx, &query, t, opts)
    })
    .await?;
    Ok(respond_large_off_runtime(result, reply).await)
}

/// `GET|POST /api/v1/query_range`.
pub async fn range_query(
    State(state): State<Arc<AppState>>,
    arrival: RequestStart,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let query = query_param(&params)?;
    let mut qp = None;
    match range(&state, arrival, &headers, &params, query.clone(), &mut qp).await {
        Ok(r) => Ok(r),
        Err(e) => Ok(failed(e, query, qp)),
    }
}

async fn range(
    state: &AppState,
    arrival: RequestStart,
    headers: &HeaderMap,
    params: &Params,
    query: String,
    qp: &mut Option<QueryParams>,
) -> Result<Response, ApiError> {
    let start = params.required_time("start")?;
    let end = params.required_time("end")?;
    if end < start {
        return Err(ApiError::bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    let step = match params.duration("step")? {
        Some(s) => s,
        None => {
            return Err(ApiError::bad_data(
                "invalid parameter \"step\": cannot parse \"\" to a valid duration",
            ));
        }
    };
    if step <= 0 {
        return Err(ApiError::bad_data(
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    let max_points = state.config.query.max_points_per_series;
    if ((end - start) / step) as u64 > max_points {
        return Err(ApiError::bad_data(format!(
            "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
            group_thousands(max_points)
        )));
    }
    *qp = Some(QueryParams::Range {
        start_ms: start,
        end_ms: end,
        step_ms: step,
    });
    let c = common(state, params, headers, arrival)?;
    record_span(&query, Some(start), Some(end), Some(step));
    let stats = c.opts.enable_stats;
    let reply = Reply {
        query: query.clone(),
        params: QueryParams::Range {
            start_ms: start,
            end_ms: end,
            step_ms: step,
        },
        stats,
        arrival: arrival.0,
        ctx: c.ctx.clone(),
    };
    if let Some(cache) = &state.results_cache {
        if stats || no_cache(params, headers) {
            cache.bypassed();
        } else {
            let cache = cache.clone();
            let req = RangeRequest {
                query: query.clone(),
                start_ms: start,
                end_ms: end,
                step_ms: step,
            };
            let answer = evaluate(state, c, move |engine, queryable, ctx, opts| {
                cache.range_query(engine, queryable, ctx, &req, opts)
            })
            .await?;
            return Ok(match answer {
                Answer::Computed(result) => respond_large_off_runtime(result, reply).await,
                Answer::Assembled(a) => respond_assembled(a, reply),
            });
        }
    }
    let result = evaluate(state, c, move |engine, queryable, ctx, opts| {
        engine.range_query(queryable, ctx, &query, start, end, step, opts)
    })
    .await?;
    Ok(respond_large_off_runtime(result, reply).await)
}

/// Whether the request asks to skip the results cache: `nocache=1` (or `true`), or
/// `Cache-Control: no-cache` / `no-store` as Cortex's query-frontend honours.
fn no_cache(params: &Params, headers: &HeaderMap) -> bool {
    if params
        .get("nocache")
        .is_some_and(|v| matches!(v, "1" | "true"))
    {
        return true;
    }
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| matches!(d.trim(), "no-cache" | "no-store"))
}

/// Encodes an answer assembled by the results cache (span `http.encode`, as [`respond`]).
/// The body shares the cached text (see [`Assembled::into_chunks`]).
fn respond_assembled(a: Assembled, reply: Reply) -> Response {
    let span = tracing::debug_span!(
        target: "m3query::http",
        "http.encode",
        result_type = "matrix",
        series = tracing::field::Empty,
        bytes = tracing::field::Empty,
    );
    let (series, fetched, samples) = (a.series_count(), a.series_fetched, a.samples_fetched);
    let encode_start = Instant::now();
    let chunks = span.in_scope(|| a.into_chunks());
    let encode = encode_start.elapsed();
    let len: usize = chunks.iter().map(bytes::Bytes::len).sum();
    span.record("series", i64::try_from(series).unwrap_or(i64::MAX));
    span.record("bytes", i64::try_from(len).unwrap_or(i64::MAX));
    let body = axum::body::Body::new(Chunks {
        chunks: chunks.into(),
        remaining: len as u64,
    });
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    resp.headers_mut()
        .insert("M3-Series-Count", HeaderValue::from(fetched as u64));
    if let Some(v) = server_timing(None, &reply.ctx.read_timings(), encode, reply.arrival) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp.extensions_mut().insert(RequestInfo {
        query: Some(reply.query),
        series: Some(fetched as u64),
        samples: Some(samples as u64),
        params: Some(reply.params),
    });
    resp
}

/// A body of chunks already in memory, with its exact length (so `Content-Length` is sent,
/// as for a body in one piece).
struct Chunks {
    chunks: std::collections::VecDeque<bytes::Bytes>,
    remaining: u64,
}

impl http_body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(c) = &next {
            self.remaining -= (c.len() as u64).min(self.remaining);
        }
        std::task::Poll::Ready(next.map(|c| Ok(http_body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// `11000` as Prometheus prints it in its message: `11,000`.
fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds as `Server-Timing` gives them.
fn write_ms(out: &mut String, d: Duration) {
    let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
}

/// The `Server-Timing` header of a query response: the engine's phases (`parse`; `select`:
/// planning, selecting and decoding series, remote reads included; `eval`), each remote
/// store's reads (`remote;desc="<store>"`, their time added up: they happen inside
/// `select`, and reads of several selectors may overlap), `encode` (writing the JSON body,
/// which happens before the headers are built; sending it is not included) and `total`
/// (from the request's arrival to the headers: queueing for a slot included). Results
/// assembled by the results cache have no engine phases of their own.
fn server_timing(
    stats: Option<&QueryStats>,
    reads: &[StoreReads],
    encode: Duration,
    arrival: Instant,
) -> Option<HeaderValue> {
    let mut out = String::with_capacity(160);
    if let Some(s) = stats {
        for (name, d) in [("parse", s.parse), ("select", s.prepare), ("eval", s.eval)] {
            out.push_str(name);
            out.push_str(";dur=");
            write_ms(&mut out, d);
            out.push_str(", ");
        }
    }
    for r in reads {
        out.push_str("remote;desc=\"");
        for c in r.store.chars() {
            match c {
                '"' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                ' '..='~' => out.push(c),
                // A header value is visible ASCII: anything else would void the header.
                _ => out.push('?'),
            }
        }
        out.push_str("\";dur=");
        write_ms(&mut out, r.total);
        out.push_str(", ");
    }
    out.push_str("encode;dur=");
    write_ms(&mut out, encode);
    out.push_str(", total;dur=");
    write_ms(&mut out, arrival.elapsed());
    HeaderValue::from_str(&out).ok()
}

/// Answers this size or more (by [`estimate`]) are encoded on a request worker: a 150 MB
/// matrix takes 0.6 s to encode, which would hold up one of the runtime's two threads and
/// every connection on it. Smaller ones are encoded in place, cheaper than the hand-over.
const ENCODE_OFF_RUNTIME_BYTES: usize = 256 * 1024;

/// [`respond`], on a request worker when the answer is large.
async fn respond_large_off_runtime(result: QueryResult, reply: Reply) -> Response {
    if estimate(&result.value) < ENCODE_OFF_RUNTIME_BYTES {
        return respond(result, reply);
    }
    // The worker has no current span: the encode span keeps the request's as its parent.
    let span = tracing::Span::current();
    match crate::workers::run(move || span.in_scope(|| respond(result, reply))).await {
        Ok(resp) => resp,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Encodes a result (span `http.encode`) with M3's headers, `Server-Timing` and the figures
/// for the request layer.
fn respond(result: QueryResult, reply: Reply) -> Response {
    // DEBUG: created only inside sampled requests (or with debug logging), see the
    // telemetry crate's filter.
    let span = tracing::debug_span!(
        target: "m3query::http",
        "http.encode",
        result_type = result.value.type_name(),
        series = tracing::field::Empty,
        bytes = tracing::field::Empty,
    );
    let encode_start = Instant::now();
    let body = span.in_scope(|| {
        let mut out = String::with_capacity(estimate(&result.value));
        write_response(&mut out, &result, reply.stats);
        out
    });
    let encode = encode_start.elapsed();
    let series = match &result.value {
        Value::Vector(v) => v.len(),
        Value::Matrix(m) => m.len(),
        _ => 1,
    };
    // i64: tracing-opentelemetry exports `u64`/`usize` fields as strings, not integers.
    span.record("series", i64::try_from(series).unwrap_or(i64::MAX));
    span.record("bytes", i64::try_from(body.len()).unwrap_or(i64::MAX));
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    let h = resp.headers_mut();
    if result.series_limited {
        h.insert(
            "M3-Results-Limited",
            HeaderValue::from_static("max_fetch_series_limit_applied"),
        );
    }
    h.insert(
        "M3-Series-Count",
        HeaderValue::from(result.stats.series_fetched as u64),
    );
    let reads = reply.ctx.read_timings();
    if let Some(v) = server_timing(Some(&result.stats), &reads, encode, reply.arrival) {
        h.insert("server-timing", v);
    }
    resp.extensions_mut().insert(RequestInfo {
        query: Some(reply.query),
        series: Some(result.stats.series_fetched as u64),
        samples: Some(result.stats.samples_fetched as u64),
        params: Some(reply.params),
    });
    resp
}

fn estimate(v: &Value) -> usize {
    match v {
        Value::Matrix(m) => m.iter().map(|s| 128 + s.samples.len() * 28).sum::<usize>() + 64,
        Value::Vector(v) => v.len() * 160 + 64,
        _ => 128,
    }
}

/// Whether `s` holds a byte JSON escapes (`"`, `\\`, controls). Label names and values
/// almost never do; a branch-free pass over 16 bytes at a time (vectorized) answers that in
/// a fraction of the per-byte loop's instructions.
fn needs_escape(s: &[u8]) -> bool {
    let esc = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut chunks = s.chunks_exact(16);
    for c in &mut chunks {
        if c.iter().fold(false, |acc, &b| acc | esc(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| esc(b))
}

/// JSON string with the escapes JSON requires.
pub(crate) fn write_str(out: &mut String, s: &str) {
    out.push('"');
    if !needs_escape(s.as_bytes()) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Prometheus's timestamp rendering: unix seconds with the milliseconds as a 3-digit fraction
/// when non-zero (`1435781451.781`, `1435781451`).
pub(crate) fn write_ts(out: &mut String, t_ms: i64) {
    let (neg, t) = if t_ms < 0 {
        (true, t_ms.unsigned_abs())
    } else {
        (false, t_ms as u64)
    };
    if neg {
        out.push('-');
    }
    out.push_str(itoa::Buffer::new().format(t / 1000));
    let frac = t % 1000;
    if frac != 0 {
        // Below 1000: three digits, zero-padded.
        let frac = frac as u32;
        out.push('.');
        for d in [frac / 100, frac / 10 % 10, frac % 10] {
            out.push(char::from(b'0' + d as u8));
        }
    }
}

/// Prometheus's rendering of vector, matrix and exemplar values (`jsonutil.MarshalFloat`):
/// Go's `FormatFloat(v, 'f', -1, 64)` in quotes, exponent form below 1e-6 and from 1e21.
pub(crate) fn write_val(out: &mut String, v: f64) {
    m3query_promql::write_json_float(out, v);
}

pub(crate) fn write_labels(out: &mut String, l: &Labels) {
    out.push('{');
    for (i, l) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, &l.name);
        out.push(':');
        write_str(out, &l.value);
    }
    out.push('}');
}

/// `"resultType":..,"result":..`, with the result's native histogram points (`hists`, from
/// [`QueryResult::histograms`]) where Prometheus 3 puts them: a vector element holding a
/// histogram has `"histogram":[t,{..}]` instead of `"value"`; a matrix series has
/// `"histograms":[[t,{..}],..]` after its `"values"` (each key only when it has points).
pub fn write_result(out: &mut String, v: &Value, hists: &[HistogramSeries]) {
    out.push_str("\"resultType\":");
    write_str(out, v.type_name());
    out.push_str(",\"result\":");
    match v {
        Value::Scalar { t_ms, v } => {
            out.push('[');
            write_ts(out, *t_ms);
            out.push(',');
            m3query_promql::write_sample_value(out, *v);
            out.push(']');
        }
        Value::String { t_ms, s } => {
            out.push('[');
            write_ts(out, *t_ms);
            out.push(',');
            write_str(out, s);
            out.push(']');
        }
        Value::Vector(samples) => {
            out.push('[');
            let mut first = true;
            // The engine keeps float and histogram elements apart; each list is in result
            // order, and a merge by labels restores the order of a selector's result
            // (sorted by labels) where both kinds occur.
            for item in merge_by_labels(samples, |s| &s.labels, hists, |h| &h.labels) {
                if !first {
                    out.push(',');
                }
                first = false;
                match item {
                    Merged::Left(s) => {
                        out.push_str("{\"metric\":");
                        write_labels(out, &s.labels);
                        out.push_str(",\"value\":[");
                        write_ts(out, s.t_ms);
                        out.push(',');
                        write_val(out, s.v);
                        out.push_str("]}");
                    }
                    Merged::Right(h) | Merged::Both(_, h) => {
                        // An instant vector holds one point per series; `Both` cannot occur.
                        out.push_str("{\"metric\":");
                        write_labels(out, &h.labels);
                        out.push_str(",\"histogram\":");
                        if let Some(p) = h.points.first() {
                            write_hpoint(out, p);
                        }
                        out.push('}');
                    }
                }
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push('[');
            let mut first = true;
            for item in merge_by_labels(series, |s| &s.labels, hists, |h| &h.labels) {
                if !first {
                    out.push(',');
                }
                first = false;
                let (labels, floats, hs) = match item {
                    Merged::Left(s) => (&s.labels, &s.samples[..], &[][..]),
                    Merged::Right(h) => (&h.labels, &[][..], &h.points[..]),
                    Merged::Both(s, h) => (&s.labels, &s.samples[..], &h.points[..]),
                };
                out.push_str("{\"metric\":");
                write_labels(out, labels);
                if !floats.is_empty() || hs.is_empty() {
                    out.push_str(",\"values\":[");
                    write_fpoints(out, floats);
                    out.push(']');
                }
                if !hs.is_empty() {
                    out.push_str(",\"histograms\":[");
                    write_hpoints(out, hs);
                    out.push(']');
                }
                out.push('}');
            }
            out.push(']');
        }
    }
}

/// `[t,"v"],[t,"v"]...`
pub(crate) fn write_fpoints(out: &mut String, points: &[m3query_promql::Point]) {
    for (j, p) in points.iter().enumerate() {
        if j > 0 {
            out.push(',');
        }
        out.push('[');
        write_ts(out, p.t);
        out.push(',');
        write_val(out, p.v);
        out.push(']');
    }
}

/// `[t,{histogram}]`
pub(crate) fn write_hpoint(out: &mut String, p: &HPoint) {
    out.push('[');
    write_ts(out, p.t);
    out.push(',');
    m3query_promql::write_histogram_json(out, &p.h);
    out.push(']');
}

/// `[t,{..}],[t,{..}]...`
pub(crate) fn write_hpoints(out: &mut String, points: &[HPoint]) {
    for (j, p) in points.iter().enumerate() {
        if j > 0 {
            out.push(',');
        }
        write_hpoint(out, p);
    }
}

/// An element of two lists merged by labels.
pub(crate) enum Merged<'a, A, B> {
    Left(&'a A),
    Right(&'a B),
    Both(&'a A, &'a B),
}

/// Merges two lists by labels, keeping each list's own order: an element of `a` goes before
/// one of `b` with greater labels, equal labels pair up. For lists sorted by labels (matrices)
/// this is the sorted union.
pub(crate) fn merge_by_labels<'a, A, B>(
    a: &'a [A],
    la: impl Fn(&A) -> &Labels,
    b: &'a [B],
    lb: impl Fn(&B) -> &Labels,
) -> impl Iterator<Item = Merged<'a, A, B>> {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || match (a.get(i), b.get(j)) {
        (Some(x), Some(y)) => Some(match la(x).cmp(lb(y)) {
            std::cmp::Ordering::Less => {
                i += 1;
                Merged::Left(x)
            }
            std::cmp::Ordering::Greater => {
                j += 1;
                Merged::Right(y)
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
                Merged::Both(x, y)
            }
        }),
        (Some(x), None) => {
            i += 1;
            Some(Merged::Left(x))
        }
        (None, Some(y)) => {
            j += 1;
            Some(Merged::Right(y))
        }
        (None, None) => None,
    })
}

fn write_seconds(out: &mut String, d: Duration) {
    let _ = write!(out, "{}", d.as_secs_f64());
}

/// Prometheus's `stats=all` block.
fn write_stats(out: &mut String, s: &QueryStats) {
    out.push_str(",\"stats\":{\"timings\":{\"evalTotalTime\":");
    write_seconds(out, s.eval + s.prepare);
    out.push_str(",\"resultSortTime\":0,\"queryPreparationTime\":");
    write_seconds(out, s.prepare);
    out.push_str(",\"innerEvalTime\":");
    write_seconds(out, s.eval);
    out.push_str(",\"execQueueTime\":0,\"execTotalTime\":");
    write_seconds(out, s.total);
    out.push_str(",\"parseTime\":");
    write_seconds(out, s.parse);
    let _ = write!(
        out,
        "}},\"samples\":{{\"totalQueryableSamples\":{},\"peakSamples\":{}}},\"series\":{{\"fetched\":{}}}}}",
        s.samples_fetched, s.peak_samples, s.series_fetched
    );
}

pub(crate) fn write_strs(out: &mut String, key: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = write!(out, ",\"{key}\":[");
    for (i, w) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, w);
    }
    out.push(']');
}

/// The response body of a query result without `stats`, as the handlers send it (for
/// benches that compare against the results cache's bodies).
pub fn encode_response(out: &mut String, r: &QueryResult) {
    write_response(out, r, false);
}

pub(crate) fn write_response(out: &mut String, r: &QueryResult, stats: bool) {
    out.push_str("{\"status\":\"success\",\"data\":{");
    write_result(out, &r.value, &r.histograms);
    if stats {
        write_stats(out, &r.stats);
    }
    out.push('}');
    write_strs(out, "warnings", &r.warnings);
    write_strs(out, "infos", &r.infos);
    out.push('}');
}

/// `GET|POST /api/v1/format_query`. Parsing and printing are CPU work on the request workers
/// (the engine moves them to its own large stack), under the query timeout, and stop when
/// the client goes away.
pub async fn format_query(State(state): State<Arc<AppState>>, params: Params) -> ApiResult<String> {
    let q = query_param(&params)?;
    let ctx = super::context(&state);
    let _cancel = CancelOnDrop(ctx.clone());
    run(move || m3query_promql::format_query_ctx(&q, &ctx).map_err(ApiError::from))
        .await
        .map(ApiResponse::new)
}

/// `GET|POST /api/v1/parse_query`, like [`format_query`]. The tree comes back as JSON text:
/// as a `serde_json::Value` it would be as deep as the expression, and serializing it here
/// would recurse once per level on an async worker's small stack.
pub async fn parse_query(
    State(state): State<Arc<AppState>>,
    params: Params,
) -> Result<Response, ApiError> {
    let q = query_param(&params)?;
    let ctx = super::context(&state);
    let _cancel = CancelOnDrop(ctx.clone());
    let tree =
        run(move || m3query_promql::parse_query_ctx(&q, &ctx).map_err(ApiError::from)).await?;
    let mut body = String::with_capacity(tree.len() + 32);
    body.push_str("{\"status\":\"success\",\"data\":");
    body.push_str(&tree);
    body.push('}');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// One exemplar as `/api/v1/query_exemplars` answers it.
#[derive(serde::Serialize)]
pub struct ExemplarJson {
    labels: LabelsJson,
    value: String,
    timestamp: f64,
}

/// A series' exemplars as `/api/v1/query_exemplars` answers them.
#[derive(serde::Serialize)]
pub struct SeriesExemplars {
    #[serde(rename = "seriesLabels")]
    series_labels: LabelsJson,
    exemplars: Vec<ExemplarJson>,
}

/// `GET|POST /api/v1/query_exemplars`: exemplars of the series the query's selectors select.
pub async fn query_exemplars(
    State(state): State<Arc<AppState>>,
    params: Params,
) -> ApiResult<Vec<SeriesExemplars>> {
    let q = params.get("query").unwrap_or_default();
    let (start, end) = params.time_range()?;
    // Parsing is CPU work: on the request workers, like the queries'.
    let q = q.to_string();
    let selectors = run(move || selector::selectors_of(&q)).await?;
    let found = state.exemplars.query(&selectors, start, end);
    Ok(ApiResponse::new(
        found
            .into_iter()
            .map(|(series, ex)| SeriesExemplars {
                series_labels: LabelsJson(series),
                exemplars: ex
                    .into_iter()
                    .map(|e| {
                        let mut v = String::new();
                        write_val(&mut v, e.value);
                        ExemplarJson {
                            labels: LabelsJson(e.labels),
                            value: v.trim_matches('"').to_string(),
                            timestamp: e.t as f64 / 1000.0,
                        }
                    })
                    .collect(),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3query_promql::{Point, Sample, Series};

    /// The fast path for strings without escapes and the escaping path give serde_json's
    /// text, wherever the escape falls (before, inside or after a 16-byte block).
    #[test]
    fn strings_escape_as_json_does() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "host-001:9100".into(),
            "ünïcödé ✓ and a long value past sixteen bytes".into(),
        ];
        for esc in ['"', '\\', '\n', '\r', '\t', '\u{1}', '\u{1f}'] {
            for at in [0, 1, 15, 16, 17, 31, 32, 40] {
                let mut s: String = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"
                    .chars()
                    .take(at)
                    .collect();
                s.push(esc);
                s.push_str("tail");
                cases.push(s);
            }
        }
        for s in cases {
            let mut out = String::new();
            write_str(&mut out, &s);
            assert_eq!(out, serde_json::to_string(&s).expect("json"), "{s:?}");
        }
    }

    #[test]
    fn timestamps_print_as_prometheus_does() {
        for (t, want) in [
            (0, "0"),
            (1_435_781_451_781, "1435781451.781"),
            (1_435_781_451_000, "1435781451"),
            (1_435_781_451_005, "1435781451.005"),
            (1_435_781_451_050, "1435781451.050"),
            (-1_500, "-1.500"),
            (-5, "-0.005"),
        ] {
            let mut s = String::new();
            write_ts(&mut s, t);
            assert_eq!(s, want, "{t}");
        }
    }

    /// Values print as Go's `strconv.FormatFloat(v, 'f', -1, 64)`, as Prometheus's JSON:
    /// the integer fast path must agree with the float formatting it stands in for.
    #[test]
    fn values_format_as_prometheus_does() {
        let fmt = |v: f64| {
            let mut s = String::new();
            write_val(&mut s, v);
            s
        };
        for (v, want) in [
            (0.0, "\"0\""),
            (-0.0, "\"-0\""),
            (1.0, "\"1\""),
            (-42.0, "\"-42\""),
            (1_796_299_200.0, "\"1796299200\""),
            (0.5, "\"0.5\""),
            (1e15, "\"1000000000000000\""),
            (1e21, "\"1e+21\""),
            (123456789.125, "\"123456789.125\""),
            (f64::NAN, "\"NaN\""),
            (f64::INFINITY, "\"+Inf\""),
        ] {
            assert_eq!(fmt(v), want, "{v}");
        }
        for i in -2000i64..2000 {
            let v = (i * 7_919_993) as f64;
            assert_eq!(fmt(v), format!("\"{v}\""));
        }
    }

    #[test]
    fn prometheus_number_formats() {
        let mut s = String::new();
        for t in [1_435_781_451_781, 1_435_781_451_000, 1_500, 5, -1_500, 0] {
            write_ts(&mut s, t);
            s.push(' ');
        }
        assert_eq!(s, "1435781451.781 1435781451 1.500 0.005 -1.500 0 ");
        let mut s = String::new();
        for v in [
            1.0,
            0.1,
            1e21,
            1e-7,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
        ] {
            write_val(&mut s, v);
        }
        // Go's `jsonutil.MarshalFloat`, as a real Prometheus answers `vector(1e-7)` with
        // "1e-07" (scalars keep 'f': `1e-7` answers "0.0000001").
        assert_eq!(s, r#""1""0.1""1e+21""1e-07""NaN""+Inf""-Inf""-0""#);
        let mut s = String::from("{");
        write_result(
            &mut s,
            &Value::Scalar {
                t_ms: 1000,
                v: 1e-7,
            },
            &[],
        );
        assert_eq!(s, r#"{"resultType":"scalar","result":[1,"0.0000001"]"#);
        assert_eq!(group_thousands(11000), "11,000");
        assert_eq!(group_thousands(100), "100");
    }

    #[test]
    fn server_timing_lists_phases_reads_and_quotes_store_names() {
        let stats = QueryStats {
            parse: Duration::from_micros(120),
            prepare: Duration::from_micros(3400),
            eval: Duration::from_millis(5),
            ..Default::default()
        };
        let reads = [
            StoreReads {
                store: "store-a".into(),
                count: 2,
                total: Duration::from_micros(2100),
            },
            StoreReads {
                store: "odd \"name\"\\é".into(),
                count: 1,
                total: Duration::from_millis(1),
            },
        ];
        let v = server_timing(
            Some(&stats),
            &reads,
            Duration::from_micros(800),
            Instant::now(),
        )
        .expect("a valid header value");
        let h = v.to_str().expect("ascii");
        let (head, total) = h.rsplit_once(", total;dur=").expect("total last");
        assert_eq!(
            head,
            r#"parse;dur=0.120, select;dur=3.400, eval;dur=5.000, remote;desc="store-a";dur=2.100, remote;desc="odd \"name\"\\?";dur=1.000, encode;dur=0.800"#
        );
        assert!(total.parse::<f64>().is_ok_and(|t| t >= 0.0), "{h}");
        // Without engine phases (an answer the results cache assembled): reads, encode, total.
        let v = server_timing(None, &[], Duration::ZERO, Instant::now()).expect("valid");
        assert!(
            v.to_str()
                .is_ok_and(|h| h.starts_with("encode;dur=0.000, total;dur="))
        );
    }

    #[test]
    fn result_shapes_parse_as_prometheus_json() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "a\"b\n")]);
        let cases = [
            (
                Value::Vector(vec![Sample {
                    labels: l.clone(),
                    t_ms: 1000,
                    v: 1.0,
                }]),
                serde_json::json!({"resultType": "vector", "result": [{"metric": {"__name__": "up", "job": "a\"b\n"}, "value": [1, "1"]}]}),
            ),
            (
                Value::Matrix(vec![Series {
                    labels: l,
                    samples: vec![
                        Point { t: 1500, v: 2.5 },
                        Point {
                            t: 2500,
                            v: f64::NAN,
                        },
                    ],
                }]),
                serde_json::json!({"resultType": "matrix", "result": [{"metric": {"__name__": "up", "job": "a\"b\n"}, "values": [[1.5, "2.5"], [2.5, "NaN"]]}]}),
            ),
            (
                Value::Scalar { t_ms: 0, v: 3.0 },
                serde_json::json!({"resultType": "scalar", "result": [0, "3"]}),
            ),
            (
                Value::String {
                    t_ms: 0,
                    s: "x\u{1}".into(),
                },
                serde_json::json!({"resultType": "string", "result": [0, "x\u{1}"]}),
            ),
        ];
        for (v, want) in cases {
            let mut out = String::from("{");
            write_result(&mut out, &v, &[]);
            out.push('}');
            let got: serde_json::Value = serde_json::from_str(&out).expect(&out);
            assert_eq!(got, want);
        }
    }

    /// Prometheus's histogram from its json codec test (`web/api/v1/json_codec_test.go`).
    fn codec_test_histogram() -> m3query_promql::FloatHistogram {
        use m3query_model::histogram::Span;
        m3query_promql::FloatHistogram {
            schema: 2,
            zero_threshold: 0.001,
            zero_count: 12.0,
            count: 10.0,
            sum: 20.0,
            positive_spans: vec![Span::new(3, 2), Span::new(1, 3)],
            negative_spans: vec![Span::new(2, 2)],
            positive_buckets: vec![1.0, 2.0, 2.0, 1.0, 1.0],
            negative_buckets: vec![2.0, 1.0],
            ..Default::default()
        }
    }

    /// The histogram's JSON as Prometheus's codec test expects it.
    const CODEC_TEST_HISTOGRAM: &str = r#"{"count":"10","sum":"20","buckets":[[1,"-1.6817928305074288","-1.414213562373095","1"],[1,"-1.414213562373095","-1.189207115002721","2"],[3,"-0.001","0.001","12"],[0,"1.414213562373095","1.6817928305074288","1"],[0,"1.6817928305074288","2","2"],[0,"2.378414230005442","2.82842712474619","2"],[0,"2.82842712474619","3.3635856610148576","1"],[0,"3.3635856610148576","4","1"]]}"#;

    fn hseries(name: &str, points: &[i64]) -> HistogramSeries {
        HistogramSeries {
            labels: Labels::from_pairs([("__name__", name)]),
            points: points
                .iter()
                .map(|t| HPoint::new(*t, codec_test_histogram()))
                .collect(),
        }
    }

    /// As [`hseries`], with a small schema-0 histogram.
    fn small_hseries(name: &str, points: &[i64]) -> HistogramSeries {
        use m3query_model::histogram::Span;
        let h = m3query_promql::FloatHistogram {
            count: 3.0,
            sum: 2.5,
            positive_spans: vec![Span::new(0, 2)],
            positive_buckets: vec![1.0, 2.0],
            ..Default::default()
        };
        HistogramSeries {
            labels: Labels::from_pairs([("__name__", name)]),
            points: points.iter().map(|t| HPoint::new(*t, h.clone())).collect(),
        }
    }

    const SMALL: &str =
        r#"{"count":"3","sum":"2.5","buckets":[[0,"0.5","1","1"],[0,"1","2","2"]]}"#;

    fn body(v: Value, histograms: Vec<HistogramSeries>) -> String {
        let r = QueryResult {
            value: v,
            warnings: vec![],
            infos: vec![],
            stats: QueryStats::default(),
            series_limited: false,
            histograms,
        };
        let mut out = String::new();
        encode_response(&mut out, &r);
        out
    }

    /// Prometheus's `TestJsonCodec_Encode` matrix-of-histograms case. Its schema-2 bounds
    /// come from Prometheus's precomputed bound table, which differs from the model's
    /// `exp2` bounds in the last unit of a few entries (see `m3query_model`'s
    /// `bucket_bound`): the shape and every string but those digits are Prometheus's, and
    /// the numbers agree to 1e-15.
    #[test]
    fn histogram_matrix_is_prometheus_codec_golden() {
        let got = body(Value::Matrix(vec![]), vec![hseries("foo", &[1000])]);
        let want = format!(
            r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{"__name__":"foo"}},"histograms":[[1,{CODEC_TEST_HISTOGRAM}]]}}]}}}}"#
        );
        fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
            use serde_json::Value as J;
            match (a, b) {
                (J::Array(x), J::Array(y)) => {
                    x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b))
                }
                (J::Object(x), J::Object(y)) => {
                    x.len() == y.len()
                        && x.iter()
                            .zip(y)
                            .all(|((ka, a), (kb, b))| ka == kb && close(a, b))
                }
                (J::String(x), J::String(y)) => {
                    x == y
                        || matches!((x.parse::<f64>(), y.parse::<f64>()), (Ok(p), Ok(q))
                            if (p - q).abs() <= 1e-15 * q.abs())
                }
                _ => a == b,
            }
        }
        let (g, w): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&got).expect("valid JSON"),
            serde_json::from_str(&want).expect("valid JSON"),
        );
        assert!(close(&g, &w), "{got}\n{want}");
        // Byte for byte with bounds that are exact in any implementation (schema 0).
        let mut h = codec_test_histogram();
        h.schema = 0;
        let s = HistogramSeries {
            labels: Labels::from_pairs([("__name__", "foo")]),
            points: vec![HPoint::new(1000, h)],
        };
        assert_eq!(
            body(Value::Matrix(vec![]), vec![s]),
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"foo"},"histograms":[[1,{"count":"10","sum":"20","buckets":[[1,"-8","-4","1"],[1,"-4","-2","2"],[3,"-0.001","0.001","12"],[0,"4","8","1"],[0,"8","16","2"],[0,"32","64","2"],[0,"64","128","1"],[0,"128","256","1"]]}]]}]}}"#
        );
    }

    /// A vector element with a histogram has `histogram` in place of `value` (Prometheus's
    /// `marshalSampleJSON`); float and histogram elements keep label order; a matrix series
    /// with both kinds has `values` then `histograms`.
    #[test]
    fn mixed_vectors_and_matrices_are_prometheus_shaped() {
        let floats = Value::Vector(vec![
            Sample {
                labels: Labels::from_pairs([("__name__", "a")]),
                t_ms: 2000,
                v: 1e-7,
            },
            Sample {
                labels: Labels::from_pairs([("__name__", "c")]),
                t_ms: 2000,
                v: 3.0,
            },
        ]);
        assert_eq!(
            body(floats, vec![small_hseries("b", &[2000])]),
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"__name__":"a"}},"value":[2,"1e-07"]}},{{"metric":{{"__name__":"b"}},"histogram":[2,{SMALL}]}},{{"metric":{{"__name__":"c"}},"value":[2,"3"]}}]}}}}"#
            )
        );
        let m = Value::Matrix(vec![
            Series {
                labels: Labels::from_pairs([("__name__", "a")]),
                samples: vec![Point { t: 1000, v: 1.0 }],
            },
            Series {
                labels: Labels::from_pairs([("__name__", "b")]),
                samples: vec![Point { t: 1000, v: 2.0 }],
            },
        ]);
        assert_eq!(
            body(m, vec![small_hseries("b", &[2000, 3500])]),
            format!(
                r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{"__name__":"a"}},"values":[[1,"1"]]}},{{"metric":{{"__name__":"b"}},"values":[[1,"2"]],"histograms":[[2,{h}],[3.500,{h}]]}}]}}}}"#,
                h = SMALL
            )
        );
    }

    /// Tiny and huge bounds and counts print as Go prints them: client_golang's default zero
    /// threshold is 2^-128.
    #[test]
    fn histogram_floats_use_go_exponent_form() {
        let h = m3query_promql::FloatHistogram {
            zero_threshold: 2.938735877055719e-39,
            zero_count: 1.0,
            count: 1.0,
            sum: 1e-300,
            ..Default::default()
        };
        let mut out = String::new();
        m3query_promql::write_histogram_json(&mut out, &h);
        assert_eq!(
            out,
            r#"{"count":"1","sum":"1e-300","buckets":[[3,"-2.938735877055719e-39","2.938735877055719e-39","1"]]}"#
        );
    }
}
