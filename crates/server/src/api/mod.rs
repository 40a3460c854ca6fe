//! Data routes of the Prometheus API: series and label metadata, remote write and read.

pub mod params;
pub mod query;
pub mod selector;
pub mod status;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use m3query_model::{Labels, Matcher};
use m3query_remote::DisplayMatchers;
use m3query_remote::read::{self as rread, ReadError, ReadLimits, ResponseType};
use m3query_remote::write::{self as rwrite, Protocol, WriteError};
use m3query_storage::{Context, LabelHints, SelectHints};
use serde::Serialize;
use serde::ser::SerializeMap;
use tracing::field::Empty;

use crate::AppState;
use crate::body::read_body;
use crate::error::{ApiError, ApiResponse, ApiResult};
use crate::layer::{RequestInfo, RequestStart};
use params::Params;
use selector::parse_match_params;

/// A label set as a JSON object.
pub struct LabelsJson(pub Labels);

impl Serialize for LabelsJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for l in self.0.iter() {
            m.serialize_entry(&*l.name, &*l.value)?;
        }
        m.end()
    }
}

/// A query context with the configured timeout.
pub(crate) fn context(state: &AppState) -> Context {
    Context::with_deadline(Instant::now() + state.config.query.timeout.0)
}

/// Runs blocking storage work off the async threads, on the request workers
/// ([`crate::workers`]); a panic there is a 500.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::workers::run(f).await?
}

/// Runs blocking storage work inside `span` (a phase span of the request), so the stores'
/// own spans (`remote.read`, one per store) nest under it.
pub(crate) async fn in_span<T: Send + 'static>(
    span: tracing::Span,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking(move || span.in_scope(f)).await
}

/// A count as a span field: an `i64`, which exporters send as an integer tag
/// (tracing-opentelemetry turns `u64` and `usize` fields into strings).
pub(crate) fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `match[]` selectors as a span field: `{a="b"}, {c=~"d"}`.
struct DisplaySets<'a>(&'a [Vec<Matcher>]);

impl std::fmt::Display for DisplaySets<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, ms) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", DisplayMatchers(ms))?;
        }
        Ok(())
    }
}

const TRUNCATED: &str = "results truncated due to limit";

/// `http.maxRequestBodyBytes`, for handlers that read their body themselves.
fn body_limit(state: &AppState) -> usize {
    usize::try_from(state.config.http.max_request_body_bytes.0).unwrap_or(usize::MAX)
}

/// `GET|POST /api/v1/series`.
pub async fn series(
    State(state): State<Arc<AppState>>,
    params: Params,
) -> ApiResult<Vec<LabelsJson>> {
    let sets = parse_match_params(params.get_all("match[]"))?;
    if sets.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let (start, end) = params.time_range()?;
    let limit = params.limit("limit")?;
    let queryable = state.services()?.queryable.clone();
    let ctx = context(&state);
    let span = tracing::debug_span!(
        target: "m3query::api",
        "storage.series",
        matchers = %DisplaySets(&sets),
        start_ms = start,
        end_ms = end,
        series = Empty,
    );
    let (series, warnings) = in_span(span.clone(), move || {
        let q = queryable.querier(start, end)?;
        let hints = SelectHints {
            start_ms: start,
            end_ms: end,
            func: Some("series".into()),
            ..Default::default()
        };
        let mut all = BTreeSet::new();
        let mut warnings = m3query_storage::Warnings::new();
        for ms in &sets {
            let mut set = q.select(&ctx, true, &hints, ms)?;
            while let Some(s) = set.next() {
                all.insert(s?.labels().clone());
                if all.len() % 4096 == 0 {
                    ctx.check()?;
                }
            }
            warnings.extend(set.warnings());
        }
        Ok((all, warnings))
    })
    .await?;
    span.record("series", count(series.len()));
    let mut warnings = warnings.into_vec();
    let mut out: Vec<LabelsJson> = series.into_iter().map(LabelsJson).collect();
    if limit > 0 && out.len() > limit {
        out.truncate(limit);
        warnings.push(TRUNCATED.into());
    }
    Ok(ApiResponse::new(out).with_warnings(warnings))
}

enum LabelLookup {
    Names,
    Values(String),
}

async fn label_lookup(
    state: Arc<AppState>,
    params: Params,
    what: LabelLookup,
) -> ApiResult<Vec<String>> {
    let sets = parse_match_params(params.get_all("match[]"))?;
    let (start, end) = params.time_range()?;
    let limit = params.limit("limit")?;
    let queryable = state.services()?.queryable.clone();
    let ctx = context(&state);
    let span = match &what {
        LabelLookup::Names => tracing::debug_span!(
            target: "m3query::api",
            "storage.label_names",
            matchers = %DisplaySets(&sets),
            start_ms = start,
            end_ms = end,
            values = Empty,
        ),
        LabelLookup::Values(name) => tracing::debug_span!(
            target: "m3query::api",
            "storage.label_values",
            label = %name,
            matchers = %DisplaySets(&sets),
            start_ms = start,
            end_ms = end,
            values = Empty,
        ),
    };
    let (values, warnings) = in_span(span.clone(), move || {
        let q = queryable.querier(start, end)?;
        // Ask for one more than the limit, to know whether to warn about truncation.
        let hints = LabelHints {
            limit: if limit > 0 { limit + 1 } else { 0 },
        };
        let sets: Vec<Vec<Matcher>> = if sets.is_empty() { vec![vec![]] } else { sets };
        let mut all = BTreeSet::new();
        let mut warnings = m3query_storage::Warnings::new();
        for ms in &sets {
            let r = match &what {
                LabelLookup::Names => q.label_names(&ctx, &hints, ms)?,
                LabelLookup::Values(name) => q.label_values(&ctx, name, &hints, ms)?,
            };
            all.extend(r.values);
            warnings.extend(r.warnings);
        }
        Ok((all, warnings))
    })
    .await?;
    span.record("values", count(values.len()));
    let mut warnings = warnings.into_vec();
    let mut out: Vec<String> = values.into_iter().collect();
    if limit > 0 && out.len() > limit {
        out.truncate(limit);
        warnings.push(TRUNCATED.into());
    }
    Ok(ApiResponse::new(out).with_warnings(warnings))
}

/// `GET|POST /api/v1/labels`.
pub async fn labels(State(state): State<Arc<AppState>>, params: Params) -> ApiResult<Vec<String>> {
    label_lookup(state, params, LabelLookup::Names).await
}

/// `GET /api/v1/label/{name}/values`.
pub async fn label_values(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult<Vec<String>> {
    let name = decode_label_name(&name)?;
    label_lookup(state, params, LabelLookup::Values(name)).await
}

/// Label names in the path may be escaped as Prometheus 3 allows for UTF-8 names:
/// `U__` followed by the name with `_` for `_`... as `__`, and `_XX_` hex code points.
fn decode_label_name(raw: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_data(format!("invalid label name: {raw:?}"));
    let Some(rest) = raw.strip_prefix("U__") else {
        if raw.is_empty() {
            return Err(bad());
        }
        return Ok(raw.to_string());
    };
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '_' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'_') {
            chars.next();
            out.push('_');
            continue;
        }
        let mut hex = String::new();
        loop {
            match chars.next() {
                Some('_') => break,
                Some(h) if h.is_ascii_hexdigit() => hex.push(h),
                _ => return Err(bad()),
            }
        }
        let cp = u32::from_str_radix(&hex, 16).map_err(|_| bad())?;
        out.push(char::from_u32(cp).ok_or_else(bad)?);
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// One metadata entry as `/api/v1/metadata` answers it.
#[derive(Serialize)]
pub struct MetadataJson {
    #[serde(rename = "type")]
    metric_type: &'static str,
    help: String,
    unit: String,
}

/// `GET /api/v1/metadata`.
pub async fn metadata(
    State(state): State<Arc<AppState>>,
    params: Params,
) -> ApiResult<std::collections::BTreeMap<String, Vec<MetadataJson>>> {
    let limit = params.limit("limit")?;
    let per_metric = params.limit("limit_per_metric")?;
    let metric = params.get("metric").filter(|m| !m.is_empty());
    let found = state.metadata.query(metric, limit, per_metric);
    Ok(ApiResponse::new(
        found
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.into_iter()
                        .map(|m| MetadataJson {
                            metric_type: m.metric_type.as_str(),
                            help: m.help,
                            unit: m.unit,
                        })
                        .collect(),
                )
            })
            .collect(),
    ))
}

/// Decompressed remote-write bodies (~200 KiB each) reused across requests instead of
/// allocated per request: at most a few are kept (as many as requests usually run at once),
/// and none past 8 MiB, so a rare huge body does not stay resident.
struct BodyBuffers;

static BODY_BUFFERS: parking_lot::Mutex<Vec<Vec<u8>>> = parking_lot::Mutex::new(Vec::new());

impl BodyBuffers {
    const KEEP: usize = 4;
    const MAX_BYTES: usize = 8 << 20;

    fn take() -> Vec<u8> {
        BODY_BUFFERS.lock().pop().unwrap_or_default()
    }

    fn put(buf: Vec<u8>) {
        if buf.capacity() <= Self::MAX_BYTES {
            let mut pool = BODY_BUFFERS.lock();
            if pool.len() < Self::KEEP {
                pool.push(buf);
            }
        }
    }
}

/// `POST /api/v1/prom/remote/write` and `/api/v1/write`.
pub async fn remote_write(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let services = state.services()?;
    let Some(appendable) = services.appendable.clone() else {
        return Err(ApiError::not_found(
            "remote write is disabled: local storage is off (storage.enabled: false)",
        ));
    };
    let header = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let protocol = rwrite::negotiate(header(header::CONTENT_TYPE)).map_err(ApiError::from)?;
    rwrite::check_encoding(header(header::CONTENT_ENCODING)).map_err(ApiError::from)?;
    let limit =
        usize::try_from(state.config.http.max_decompressed_body_bytes.0).unwrap_or(usize::MAX);
    // The slot is taken before the body is read, so waiting writers hold a connection, not
    // their body; it moves into the decoding work and is released when that ends.
    let permit = state.write_gate.acquire(None).await?;
    let body = read_body(body, body_limit(&state)).await?;
    let st = state.clone();
    let outcome = blocking(move || {
        let _permit = permit;
        let mut raw = BodyBuffers::take();
        rwrite::decompress_into(&body, limit, &mut raw).map_err(ApiError::from)?;
        let app = appendable.appender();
        // Samples written into steps the results cache holds must drop those steps.
        let mut app = match &st.results_cache {
            Some(cache) => cache.watch(app),
            None => app,
        };
        let outcome = match rwrite::write(protocol, &raw, app.as_mut()) {
            Ok(o) => o,
            Err(e) => {
                app.rollback();
                return Err(e.into());
            }
        };
        app.commit()
            .map_err(|e| ApiError::from(WriteError::Storage(e)))?;
        BodyBuffers::put(raw);
        st.metadata.add(outcome.metadata.iter().cloned());
        Ok(outcome)
    })
    .await?;
    let mut outcome = outcome;
    let exemplars = std::mem::take(&mut outcome.exemplars);
    let received = exemplars.len() as u64;
    outcome.exemplars_written = state.exemplars.add(exemplars) as u64;
    state.remote_metrics.record(&outcome, received);

    let mut resp = match outcome.refusal() {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(msg) => {
            tracing::debug!(refusal = %msg, "remote write partly refused");
            ApiError::bad_data(msg).into_response()
        }
    };
    if protocol == Protocol::V2 {
        let h = resp.headers_mut();
        for (name, n) in [
            (
                "x-prometheus-remote-write-samples-written",
                outcome.samples_written,
            ),
            (
                "x-prometheus-remote-write-histograms-written",
                outcome.histograms_written,
            ),
            (
                "x-prometheus-remote-write-exemplars-written",
                outcome.exemplars_written,
            ),
        ] {
            h.insert(name, http::HeaderValue::from(n));
        }
    }
    resp.extensions_mut().insert(RequestInfo {
        query: None,
        series: None,
        samples: Some(outcome.samples_written),
        params: None,
    });
    Ok(resp)
}

/// `POST /api/v1/prom/remote/read` and `/api/v1/read`.
pub async fn remote_read(
    State(state): State<Arc<AppState>>,
    arrival: RequestStart,
    body: Body,
) -> Result<Response, ApiError> {
    // A slot before the body is read, as for remote write: waiting readers hold no body. The
    // wait counts towards the read's deadline, from its arrival.
    let deadline = arrival.0 + state.config.query.timeout.0;
    let _permit = state.read_gate.acquire(Some(deadline)).await?;
    let body = read_body(body, body_limit(&state)).await?;
    let queryable = state.services()?.queryable.clone();
    let limit =
        usize::try_from(state.config.http.max_decompressed_body_bytes.0).unwrap_or(usize::MAX);
    let req = rread::decode_request(&body, limit).map_err(ApiError::from)?;
    let kind = rread::negotiate(&req).map_err(ApiError::from)?;
    let info = RequestInfo {
        query: Some(record_read_span(&req)),
        series: None,
        samples: None,
        params: None,
    };
    let limits = ReadLimits::default();
    let ctx = Context::with_deadline(deadline);
    // The work runs on other threads inside the request span, so each query's
    // `remote.serve` span (and the stores' spans below it) are part of the request's trace.
    let span = tracing::Span::current();
    let mut resp = match kind {
        ResponseType::Samples => {
            let body = blocking(move || {
                span.in_scope(|| {
                    rread::read_samples(queryable.as_ref(), &ctx, &req, &limits)
                        .map_err(ApiError::from)
                })
            })
            .await?;
            (
                [
                    (header::CONTENT_TYPE, kind.content_type()),
                    (header::CONTENT_ENCODING, "snappy"),
                ],
                body,
            )
                .into_response()
        }
        ResponseType::StreamedXorChunks => {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, ApiError>>(8);
            let cancel = ctx.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = _permit;
                let _span = span.entered();
                let tx2 = tx.clone();
                let r = rread::stream_chunks(queryable.as_ref(), &ctx, &req, &limits, &mut |f| {
                    tx2.blocking_send(Ok(Bytes::from(f)))
                        .map_err(|_| ReadError::Disconnected)
                });
                if let Err(e) = r
                    && !matches!(e, ReadError::Disconnected)
                {
                    let _ = tx.blocking_send(Err(e.into()));
                }
            });
            // An error before the first frame gets a proper status; later ones end the stream.
            let first = rx.recv().await;
            let first = match first {
                Some(Err(e)) => return Err(e),
                other => other,
            };
            let stream = async_stream(first, rx, cancel);
            (
                [(header::CONTENT_TYPE, kind.content_type())],
                Body::from_stream(stream),
            )
                .into_response()
        }
    };
    resp.extensions_mut().insert(info);
    Ok(resp)
}

/// Records what a remote read asks on the request span, as the query routes do: `query` (the
/// selectors) and `start`/`end` (seconds, the earliest and latest of its queries), so reads
/// are found by the same searches. Returns the selectors for the slow-request log.
fn record_read_span(req: &m3query_remote::prompb::ReadRequest) -> String {
    use m3query_remote::prompb::label_matcher::Type;
    use std::fmt::Write as _;
    // Written from the wire matchers as `Matcher` displays them, without compiling their
    // regexes a second time; a bad matcher fails the read with its own message.
    let mut selectors = String::new();
    for (i, q) in req.queries.iter().enumerate() {
        selectors.push_str(if i > 0 { ", {" } else { "{" });
        for (j, m) in q.matchers.iter().enumerate() {
            let op = match Type::try_from(m.r#type) {
                Ok(Type::Eq) => "=",
                Ok(Type::Neq) => "!=",
                Ok(Type::Re) => "=~",
                Ok(Type::Nre) => "!~",
                Err(_) => "?",
            };
            let sep = if j > 0 { ", " } else { "" };
            let _ = write!(selectors, "{sep}{}{op}{:?}", m.name, m.value);
        }
        selectors.push('}');
    }
    let start = req.queries.iter().map(|q| q.start_timestamp_ms).min();
    let end = req.queries.iter().map(|q| q.end_timestamp_ms).max();
    query::record_span(&selectors, start, end, None);
    selectors
}

/// The frames as a body stream; dropping it (the client went away) cancels the producer.
fn async_stream(
    first: Option<Result<Bytes, ApiError>>,
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, ApiError>>,
    cancel: Context,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let guard = query::CancelOnDrop(cancel);
    let head = futures_util::stream::iter(first);
    let tail = futures_util::stream::unfold((rx, guard), |(mut rx, g)| async move {
        rx.recv().await.map(|item| (item, (rx, g)))
    });
    futures_util::StreamExt::map(futures_util::StreamExt::chain(head, tail), |r| {
        r.map_err(|e| std::io::Error::other(e.message))
    })
}
