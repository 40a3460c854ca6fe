//! A remote-read client: any Prometheus remote-read endpoint as a [`Queryable`].
//!
//! Matchers and hints (start, end, step, func, grouping, range) are pushed down in the
//! `ReadRequest`. With `prefer_streamed`, the client asks for `STREAMED_XOR_CHUNKS` first and
//! `SAMPLES` second. Streamed responses are decoded frame by frame as the body arrives (only a
//! frame cut by a network read is buffered) and kept as compressed XOR chunks, one buffer per
//! series (about 1-2 bytes per sample), decoded only when a series is iterated. A `SAMPLES`
//! body is one snappy block, so it is buffered, up to the same cap. A response larger than
//! `max_response_bytes` fails the select rather than exhausting memory.
//!
//! What a store sends is checked as it is read: series its selector's matchers do not match
//! are dropped (a store must not leak other series into a query), reading stops once the
//! select's series limit is reached, and more samples than `max_samples` fail the select with
//! a limit error at once. A store's redirects are not followed (its credentials and headers
//! must not reach another host), and its error bodies show up only as a short, sanitised
//! first line.
//!
//! The client's reads are futures whose I/O runs on the Tokio runtime given at construction:
//! a fan-out joins several stores' futures and waits for all of them on its calling thread
//! ([`AsyncQuerier`]); the synchronous storage traits wait for one on the calling thread (a
//! query worker; see [`RemoteReadClient`]'s `wait` for what happens on a runtime's thread).
//! Each select is one `remote.read` span (store, url without password, matchers, range,
//! series, bytes, status; counts as integers). A read that fails, whether the store is down,
//! answers non-200 or sends garbage (bad snappy, protobuf or frames) or too much, gets
//! `error=true`, an ERROR status and a log with the (redacted) reason on that span.
//!
//! Remote read has no label API: label names and values are derived from a select over the
//! range (`{__name__=~".+"}` when no matcher is given), which costs what that select costs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use m3query_chunkenc::{
    FloatHistogramIterator, HistogramIterator, XorIterator, chunk_num_samples,
    histogram_chunk_num_samples,
};
use m3query_model::redact::redact_urls;
use m3query_model::{Labels, MatchOp, Matcher, Sample};
use m3query_storage::{
    AsyncQuerier, BoxFuture, Context, Error as StorageError, HistogramSample, LabelHints,
    LabelValues, Querier, Queryable, Result, SampleIterator, SelectHints, Series, SeriesSet,
    VecSeries, VecSeriesSet, Warnings,
};
use prost::Message;
use tracing::Instrument;
use tracing::field::Empty;

use crate::{DisplayMatchers, prompb};

/// How to authenticate to a store.
#[derive(Clone, Debug)]
pub enum Auth {
    /// HTTP basic authentication.
    Basic {
        /// The user name.
        username: String,
        /// The password (redacted wherever the config is shown).
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

/// One remote store.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// Named in warnings, spans and metrics.
    pub name: String,
    /// The remote-read endpoint.
    pub url: String,
    /// Longest a read may take (the query's deadline may cut it shorter).
    pub timeout: Duration,
    /// Extra headers sent with every read.
    pub headers: Vec<(String, String)>,
    /// Credentials sent with every read.
    pub auth: Option<Auth>,
    /// Equality matchers a selector must carry for this store to be asked.
    pub required_matchers: Vec<(String, String)>,
    /// Ask for `STREAMED_XOR_CHUNKS` (falling back to `SAMPLES` if the store sends that).
    pub prefer_streamed: bool,
    /// Largest response accepted (compressed body for SAMPLES, all frames for streamed).
    pub max_response_bytes: usize,
    /// Most samples one read may bring (the query's sample limit; 0: no limit). Reading
    /// stops with a limit error as soon as a response passes it.
    pub max_samples: usize,
}

/// Produces the headers that carry the current trace to a store (see
/// [`RemoteReadClient::with_trace_headers`]).
pub type TraceHeaders = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

/// A remote-read store.
pub struct RemoteReadClient {
    cfg: RemoteConfig,
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    trace_headers: Option<TraceHeaders>,
}

impl std::fmt::Debug for RemoteReadClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteReadClient")
            .field("name", &self.cfg.name)
            .field("url", &redact_urls(&self.cfg.url))
            .finish()
    }
}

impl RemoteReadClient {
    /// Builds the client; `runtime` runs its HTTP calls.
    pub fn new(cfg: RemoteConfig, runtime: tokio::runtime::Handle) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("m3query/", env!("CARGO_PKG_VERSION")))
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            // No redirects, as Prometheus's remote read: following one would carry this
            // store's credentials and custom headers to wherever the store points.
            .redirect(reqwest::redirect::Policy::none())
            // Reads are request/response on kept-alive connections: with Nagle's algorithm a
            // request written in more than one segment waits for the store's delayed ACK
            // (40 ms on Linux) before its last segment leaves. reqwest's default today, set
            // here so a change of default cannot bring the delay back.
            .tcp_nodelay(true)
            .build()
            .map_err(|e| StorageError::Other(format!("building HTTP client: {e}").into()))?;
        Ok(RemoteReadClient {
            cfg,
            http,
            runtime,
            trace_headers: None,
        })
    }

    /// Adds `f()`'s headers to every read, called inside its `remote.read` span, so the
    /// store's own spans (a traced Thanos, Cortex or m3query) join the query's trace.
    pub fn with_trace_headers(mut self, f: TraceHeaders) -> Self {
        self.trace_headers = Some(f);
        self
    }

    /// The store's configured name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// A store failure. URL passwords are masked: reqwest's errors quote the URL.
    fn unavailable(&self, message: impl Into<String>) -> StorageError {
        let message = message.into();
        StorageError::Unavailable {
            store: self.cfg.name.clone(),
            message: redact_urls(&message).into_owned(),
        }
    }

    /// Whether a selector carries every required matcher.
    fn wanted(&self, matchers: &[Matcher]) -> bool {
        self.cfg.required_matchers.iter().all(|(n, v)| {
            matchers
                .iter()
                .any(|m| m.op == MatchOp::Equal && m.name == *n && m.value == *v)
        })
    }

    /// Sends one query and decodes the answer into series, sorted by labels. The
    /// `remote.read` span opens now, under the caller's span, and is entered whenever the
    /// future runs (on whichever thread polls it); the future runs its I/O on this client's
    /// runtime, so any thread may poll it.
    fn read<'f>(
        &'f self,
        ctx: &'f Context,
        mint: i64,
        maxt: i64,
        hints: &'f SelectHints,
        matchers: &'f [Matcher],
    ) -> impl Future<Output = Result<Vec<RemoteSeries>>> + Send + 'f {
        let span = tracing::debug_span!(
            target: "m3query::remote",
            "remote.read",
            "otel.kind" = "client",
            "otel.status_code" = Empty,
            store = %self.cfg.name,
            url = %redact_urls(&self.cfg.url),
            matchers = %DisplayMatchers(matchers),
            start_ms = mint,
            end_ms = maxt,
            series = Empty,
            dropped_series = Empty,
            truncated = Empty,
            bytes = Empty,
            response_type = Empty,
            status = Empty,
            error = Empty,
        );
        let inner = span.clone();
        let read = async move {
            let started = std::time::Instant::now();
            let result = self.read_in(&inner, ctx, mint, maxt, hints, matchers).await;
            // The query's per-store read time (the HTTP `Server-Timing` header), failed
            // reads included: they cost the query their time too.
            ctx.record_read(&self.cfg.name, started.elapsed());
            if let Err(e) = &result {
                self.record_failure(&inner, e);
            }
            result
        };
        InRuntime {
            runtime: self.runtime.clone(),
            fut: Box::pin(read.instrument(span)),
        }
    }

    /// Waits for `fut` on the calling thread while this client's runtime drives its I/O.
    ///
    /// The storage traits are synchronous and queries call them from blocking threads (a
    /// `spawn_blocking` worker, a query's own thread). Should one be called on a thread of an
    /// async runtime, blocking there would stall every task on that thread, and tokio panics
    /// on it: on a multi-threaded runtime's worker the worker's tasks are first handed to
    /// another thread (`block_in_place`); on a single-threaded runtime nothing can take them
    /// over, so the read fails with an internal error instead.
    fn wait<F: Future>(&self, fut: F) -> Result<F::Output> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Err(_) => Ok(self.runtime.block_on(fut)),
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                Ok(tokio::task::block_in_place(|| self.runtime.block_on(fut)))
            }
            Ok(_) => Err(StorageError::Other(
                format!(
                    "reading remote store {:?} from a single-threaded async runtime's thread, which the read would block: storage reads must run on a blocking thread",
                    self.cfg.name
                )
                .into(),
            )),
        }
    }

    /// Marks a failed read on its span, so a store that fails or answers garbage is found by
    /// the `error=true` search and shows why in the span's log. A read canceled because the
    /// query was (the client went away) is not this store's failure: no error tag.
    fn record_failure(&self, span: &tracing::Span, e: &StorageError) {
        // Store messages are already redacted; the others (limits, deadlines) name no URL,
        // but a reason that reaches a trace backend is masked all the same.
        let reason = redact_urls(&e.to_string()).into_owned();
        if matches!(e, StorageError::Canceled) {
            tracing::debug!(target: "m3query::remote", store = %self.cfg.name, error.message = %reason, "remote read canceled");
            return;
        }
        span.record("error", true);
        span.record("otel.status_code", "ERROR");
        tracing::warn!(target: "m3query::remote", store = %self.cfg.name, error.kind = error_kind(e), error.message = %reason, "remote read failed");
    }

    /// [`Self::read`]'s work, inside its span.
    async fn read_in(
        &self,
        span: &tracing::Span,
        ctx: &Context,
        mint: i64,
        maxt: i64,
        hints: &SelectHints,
        matchers: &[Matcher],
    ) -> Result<Vec<RemoteSeries>> {
        ctx.check()?;
        let query = prompb::Query {
            start_timestamp_ms: mint,
            end_timestamp_ms: maxt,
            matchers: matchers.iter().map(to_wire_matcher).collect(),
            hints: Some(prompb::ReadHints {
                step_ms: hints.step_ms,
                func: hints.func.clone().unwrap_or_default(),
                start_ms: hints.start_ms,
                end_ms: hints.end_ms,
                grouping: hints.grouping.clone(),
                by: hints.by,
                range_ms: hints.range_ms,
            }),
        };
        use prompb::read_request::ResponseType as R;
        let accepted = if self.cfg.prefer_streamed {
            vec![R::StreamedXorChunks as i32, R::Samples as i32]
        } else {
            vec![R::Samples as i32]
        };
        let req = prompb::ReadRequest {
            queries: vec![query],
            accepted_response_types: accepted,
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .map_err(|e| StorageError::Other(e.into()))?;
        let timeout = match ctx.deadline() {
            Some(d) => d
                .saturating_duration_since(std::time::Instant::now())
                .min(self.cfg.timeout),
            None => self.cfg.timeout,
        };
        let trace_headers = self.trace_headers.as_ref().map(|f| f()).unwrap_or_default();
        let mut decoder = Decoder {
            matchers,
            mint,
            maxt,
            // Metadata selects (the series and label APIs) use labels only: keep no samples.
            labels_only: hints.func.as_deref() == Some("series"),
            max_series: hints.limit,
            max_samples: self.cfg.max_samples,
            series: Vec::new(),
            distinct: 0,
            samples: 0,
            dropped: 0,
            truncated: false,
        };
        let result = async {
            let mut rb = self
                .http
                .post(&self.cfg.url)
                .timeout(timeout)
                .header("Content-Type", "application/x-protobuf")
                .header("Content-Encoding", "snappy")
                .header("X-Prometheus-Remote-Read-Version", "0.1.0")
                .body(body);
            for (k, v) in self.cfg.headers.iter().chain(&trace_headers) {
                rb = rb.header(k.as_str(), v.as_str());
            }
            rb = match &self.cfg.auth {
                Some(Auth::Basic { username, password }) => rb.basic_auth(username, Some(password)),
                Some(Auth::Bearer(t)) => rb.bearer_auth(t),
                None => rb,
            };
            let resp = rb.send().await.map_err(|e| {
                if e.is_timeout() {
                    self.unavailable(format!("timed out after {timeout:?}"))
                } else {
                    self.unavailable(format!("request failed: {}", error_chain(&e)))
                }
            })?;
            let status = resp.status();
            span.record("status", i64::from(status.as_u16()));
            let content_type = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if status.is_redirection() {
                // Redirects are not followed (as Prometheus's remote read): the credentials and
                // headers of this store must not reach another host.
                return Err(self.unavailable(format!(
                    "HTTP {}: redirects are not followed; set url to the final address",
                    status.as_u16()
                )));
            }
            if !status.is_success() {
                let summary = body_summary(resp).await;
                return Err(self.unavailable(if summary.is_empty() {
                    format!("HTTP {}", status.as_u16())
                } else {
                    format!("HTTP {}: {summary}", status.as_u16())
                }));
            }
            if content_type.starts_with("application/x-streamed-protobuf") {
                span.record("response_type", "STREAMED_XOR_CHUNKS");
                self.read_streamed(resp, ctx, &mut decoder).await
            } else {
                span.record("response_type", "SAMPLES");
                let body = self.read_body(resp, ctx).await?;
                let n = body.len();
                self.decode_samples(&body, &mut decoder)?;
                Ok(n)
            }
        };
        let bytes = result.await?;
        span.record("bytes", count(bytes));
        if decoder.dropped > 0 {
            span.record("dropped_series", count(decoder.dropped));
        }
        if decoder.truncated {
            span.record("truncated", true);
        }
        let mut series = decoder.series;
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        // Streams split a series across frames; join neighbours with equal labels.
        series.dedup_by(|next, prev| {
            if next.labels == prev.labels {
                prev.data.extend(std::mem::take(&mut next.data));
                true
            } else {
                false
            }
        });
        span.record("series", count(series.len()));
        Ok(series)
    }

    /// Reads a `SAMPLES` body (one snappy block, so it must be whole) up to the size limit,
    /// checking the query context between chunks.
    async fn read_body(&self, mut resp: reqwest::Response, ctx: &Context) -> Result<Vec<u8>> {
        let limit = self.cfg.max_response_bytes;
        if let Some(l) = resp.content_length().filter(|l| *l > limit as u64) {
            return Err(self.over_limit(l));
        }
        let mut buf = Vec::new();
        loop {
            ctx.check()?;
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if buf.len() + c.len() > limit {
                        return Err(self.over_limit((buf.len() + c.len()) as u64));
                    }
                    buf.extend_from_slice(&c);
                }
                Ok(None) => return Ok(buf),
                Err(e) => {
                    return Err(self.unavailable(format!("reading response: {}", error_chain(&e))));
                }
            }
        }
    }

    fn over_limit(&self, bytes: u64) -> StorageError {
        self.unavailable(format!(
            "response of at least {bytes} bytes is over this store's {}-byte limit (remoteRead maxResponseBytes); narrow the query",
            self.cfg.max_response_bytes
        ))
    }

    /// Decodes `STREAMED_XOR_CHUNKS` frames as they arrive, so only the partial frame at the
    /// end of what has arrived is buffered; stops early once the series limit is reached.
    /// Returns the bytes read.
    async fn read_streamed(
        &self,
        mut resp: reqwest::Response,
        ctx: &Context,
        decoder: &mut Decoder<'_>,
    ) -> Result<usize> {
        let limit = self.cfg.max_response_bytes;
        let mut pending: Vec<u8> = Vec::new();
        let mut total = 0usize;
        loop {
            ctx.check()?;
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(self.unavailable(format!("reading response: {}", error_chain(&e))));
                }
            };
            total += chunk.len();
            if total > limit {
                return Err(self.over_limit(total as u64));
            }
            // Frames wholly inside this network chunk are decoded from it directly; only a
            // frame cut by the chunk's end is kept in `pending` until the rest arrives.
            if pending.is_empty() {
                let used = self.decode_frames(&chunk, decoder)?;
                if decoder.truncated {
                    return Ok(total);
                }
                pending.extend_from_slice(&chunk[used..]);
            } else {
                pending.extend_from_slice(&chunk);
                let used = self.decode_frames(&pending, decoder)?;
                if decoder.truncated {
                    return Ok(total);
                }
                pending.drain(..used);
            }
            if pending.len() > limit {
                return Err(self.over_limit(pending.len() as u64));
            }
        }
        if !pending.is_empty() {
            return Err(self.unavailable(format!(
                "bad frame: response ended inside a frame ({} bytes left over)",
                pending.len()
            )));
        }
        Ok(total)
    }

    /// Decodes the complete frames at the start of `buf`; returns how many bytes they took.
    fn decode_frames(&self, buf: &[u8], decoder: &mut Decoder<'_>) -> Result<usize> {
        let mut pos = 0;
        while pos < buf.len() {
            let rest = &buf[pos..];
            let Some((len, header)) =
                frame_header(rest).map_err(|e| self.unavailable(format!("bad frame: {e}")))?
            else {
                break;
            };
            if len > self.cfg.max_response_bytes {
                return Err(self.over_limit(len as u64));
            }
            if rest.len() < header + len {
                break;
            }
            let msg = &rest[header..header + len];
            let crc = u32::from_be_bytes([
                rest[header - 4],
                rest[header - 3],
                rest[header - 2],
                rest[header - 1],
            ]);
            if crc32c::crc32c(msg) != crc {
                return Err(self.unavailable("bad frame: frame checksum mismatch"));
            }
            pos += header + len;
            let resp = prompb::ChunkedReadResponse::decode(msg)
                .map_err(|e| self.unavailable(format!("cannot decode ChunkedReadResponse: {e}")))?;
            for cs in resp.chunked_series {
                let labels = wire_labels(&cs.labels).map_err(|e| self.unavailable(e))?;
                // Chunks outside the range (a store may send more than asked) and, for
                // metadata selects, all chunks are not kept.
                let (mint, maxt) = (decoder.mint, decoder.maxt);
                let keep = |c: &&prompb::Chunk| {
                    !decoder.labels_only && c.max_time_ms >= mint && c.min_time_ms <= maxt
                };
                // XOR chunks for floats, HISTOGRAM / FLOAT_HISTOGRAM for native histograms.
                let kind = |c: &prompb::Chunk| match prompb::chunk::Encoding::try_from(c.r#type) {
                    Ok(prompb::chunk::Encoding::Xor) => Some(ChunkKind::Xor),
                    Ok(prompb::chunk::Encoding::Histogram) => Some(ChunkKind::Histogram),
                    Ok(prompb::chunk::Encoding::FloatHistogram) => Some(ChunkKind::FloatHistogram),
                    _ => None,
                };
                if let Some(c) = cs.chunks.iter().find(|c| kind(c).is_none()) {
                    return Err(self.unavailable(format!(
                        "series {labels} has a chunk of unknown encoding {}",
                        c.r#type
                    )));
                }
                // Sized exactly: these buffers live until the query ends.
                let size: usize = cs.chunks.iter().filter(keep).map(|c| c.data.len()).sum();
                let mut data = Vec::with_capacity(size);
                let mut chunks = Vec::with_capacity(cs.chunks.iter().filter(keep).count());
                let mut samples = 0usize;
                for c in cs.chunks.iter().filter(keep) {
                    let kind = kind(c).unwrap_or(ChunkKind::Xor);
                    let n = match kind {
                        ChunkKind::Xor => chunk_num_samples(&c.data),
                        _ => histogram_chunk_num_samples(&c.data),
                    };
                    samples += usize::from(n.unwrap_or(0));
                    let start = data.len();
                    data.extend_from_slice(&c.data);
                    chunks.push(RemoteChunk {
                        min_t: c.min_time_ms,
                        max_t: c.max_time_ms,
                        kind,
                        range: start..data.len(),
                    });
                }
                let fed = decoder.feed(labels, samples, || SeriesData::Chunks { data, chunks });
                fed.map_err(|e| self.limit_error(e))?;
                if decoder.truncated {
                    return Ok(pos);
                }
            }
        }
        Ok(pos)
    }

    fn limit_error(&self, e: LimitHit) -> StorageError {
        match e {
            LimitHit::Samples(limit) => StorageError::LimitExceeded(format!(
                "remote store {:?} sent more than {limit} samples, the query's sample limit (query.prometheus.maxSamplesPerQuery); narrow the query's matchers or time range",
                self.cfg.name
            )),
        }
    }

    fn decode_samples(&self, body: &[u8], decoder: &mut Decoder<'_>) -> Result<()> {
        let size = snap::raw::decompress_len(body)
            .map_err(|e| self.unavailable(format!("bad snappy response: {e}")))?;
        if size > self.cfg.max_response_bytes.saturating_mul(8) {
            return Err(self.unavailable(format!(
                "response decompresses to {size} bytes, over 8 times this store's {}-byte limit",
                self.cfg.max_response_bytes
            )));
        }
        let raw = snap::raw::Decoder::new()
            .decompress_vec(body)
            .map_err(|e| self.unavailable(format!("bad snappy response: {e}")))?;
        let resp = prompb::ReadResponse::decode(raw.as_slice())
            .map_err(|e| self.unavailable(format!("cannot decode ReadResponse: {e}")))?;
        drop(raw);
        for r in resp.results {
            for ts in r.timeseries {
                let labels = wire_labels(&ts.labels).map_err(|e| self.unavailable(e))?;
                let (mint, maxt) = (decoder.mint, decoder.maxt);
                let in_range = || {
                    ts.samples
                        .iter()
                        .filter(move |s| s.timestamp >= mint && s.timestamp <= maxt)
                };
                let hists_in_range = || {
                    ts.histograms
                        .iter()
                        .filter(move |h| h.timestamp >= mint && h.timestamp <= maxt)
                };
                let n = if decoder.labels_only {
                    0
                } else {
                    in_range().count() + hists_in_range().count()
                };
                let labels_only = decoder.labels_only;
                let fed = decoder.feed(labels, n, || {
                    if labels_only {
                        return SeriesData::Samples(Vec::new(), Vec::new());
                    }
                    SeriesData::Samples(
                        in_range()
                            .map(|s| Sample::new(s.timestamp, s.value))
                            .collect(),
                        hists_in_range()
                            .map(|h| match crate::histogram::v1::from_proto(h) {
                                crate::histogram::HistogramSample::Int(t, h) => {
                                    HistogramSample::new(t, h.to_float())
                                }
                                crate::histogram::HistogramSample::Float(t, h) => {
                                    HistogramSample::new(t, h)
                                }
                            })
                            .collect(),
                    )
                });
                fed.map_err(|e| self.limit_error(e))?;
                if decoder.truncated {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// A count as a span field: an `i64`, which every exporter sends as an integer tag
/// (tracing-opentelemetry turns `u64` and `usize` fields into strings).
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `error.kind` of a failed read's log, for searching logs by kind.
fn error_kind(e: &StorageError) -> &'static str {
    match e {
        StorageError::Unavailable { .. } => "unavailable",
        StorageError::LimitExceeded(_) => "limit",
        StorageError::DeadlineExceeded => "timeout",
        StorageError::Canceled => "canceled",
        _ => "internal",
    }
}

/// A limit a response ran into.
enum LimitHit {
    Samples(usize),
}

/// Collects a response's series as they are decoded: drops series the selector's matchers do
/// not match (a store must not leak other series into results), and applies the query's
/// limits while reading rather than after.
struct Decoder<'a> {
    matchers: &'a [Matcher],
    /// The read's time range: samples and chunks outside it are not kept.
    mint: i64,
    maxt: i64,
    /// Keep labels only (metadata selects).
    labels_only: bool,
    /// Keep at most this many distinct series, then stop reading (0: no limit): the engine
    /// asks for one more than it allows, so it still sees that the limit was passed.
    max_series: usize,
    /// Fail once more samples than this arrived (0: no limit).
    max_samples: usize,
    series: Vec<RemoteSeries>,
    distinct: usize,
    samples: usize,
    dropped: usize,
    truncated: bool,
}

impl Decoder<'_> {
    fn feed(
        &mut self,
        labels: Labels,
        samples: usize,
        data: impl FnOnce() -> SeriesData,
    ) -> std::result::Result<(), LimitHit> {
        if !self
            .matchers
            .iter()
            .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
        {
            self.dropped += 1;
            return Ok(());
        }
        // A streamed series continues in the next frame with the same labels.
        let continues = self.series.last().is_some_and(|s| s.labels == labels);
        if !continues {
            if self.max_series > 0 && self.distinct >= self.max_series {
                self.truncated = true;
                return Ok(());
            }
            self.distinct += 1;
        }
        self.samples += samples;
        if self.max_samples > 0 && self.samples > self.max_samples {
            return Err(LimitHit::Samples(self.max_samples));
        }
        match self.series.last_mut() {
            Some(last) if continues => last.data.push(data()),
            _ => {
                self.series.push(RemoteSeries {
                    labels,
                    data: vec![data()],
                });
            }
        }
        Ok(())
    }
}

/// A frame's `uvarint(len) | be32 crc` header: `Ok(Some((len, header_bytes)))`, or
/// `Ok(None)` when `buf` does not hold the whole header yet.
fn frame_header(buf: &[u8]) -> std::result::Result<Option<(usize, usize)>, String> {
    let mut len: u64 = 0;
    for (i, b) in buf.iter().enumerate().take(10) {
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let header = i + 1 + 4;
            if buf.len() < header {
                return Ok(None);
            }
            let len = usize::try_from(len).map_err(|_| "frame length overflows".to_string())?;
            return Ok(Some((len, header)));
        }
    }
    if buf.len() >= 10 {
        return Err("bad frame length: varint longer than 10 bytes".into());
    }
    Ok(None)
}

/// A short, printable summary of a store's error body: its first line, control characters
/// stripped, at most [`SUMMARY_CHARS`] characters. The body may hold secrets or text an
/// attacker chose, so little of it travels into warnings and logs; only the first kilobyte
/// is read.
async fn body_summary(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < 1024 {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c[..c.len().min(1024 - buf.len())]),
            _ => break,
        }
    }
    summarize(&String::from_utf8_lossy(&buf))
}

/// Most characters of a store's error body shown.
const SUMMARY_CHARS: usize = 100;

fn summarize(text: &str) -> String {
    let first = text.trim_start().lines().next().unwrap_or("");
    let mut out: String = first
        .chars()
        .filter(|c| !c.is_control())
        .take(SUMMARY_CHARS)
        .collect();
    if first.chars().filter(|c| !c.is_control()).count() > SUMMARY_CHARS {
        out.push('…');
    }
    redact_urls(out.trim()).into_owned()
}

/// An error with its sources, for messages (reqwest's Display stops at the top level).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn to_wire_matcher(m: &Matcher) -> prompb::LabelMatcher {
    use prompb::label_matcher::Type;
    let t = match m.op {
        MatchOp::Equal => Type::Eq,
        MatchOp::NotEqual => Type::Neq,
        MatchOp::RegexMatch => Type::Re,
        MatchOp::RegexNoMatch => Type::Nre,
    };
    prompb::LabelMatcher {
        r#type: t as i32,
        name: m.name.clone(),
        value: m.value.clone(),
    }
}

fn wire_labels(ls: &[prompb::Label]) -> std::result::Result<Labels, String> {
    let mut pairs = Vec::with_capacity(ls.len());
    for l in ls {
        let n = std::str::from_utf8(&l.name).map_err(|_| "label name is not UTF-8")?;
        let v = std::str::from_utf8(&l.value).map_err(|_| "label value is not UTF-8")?;
        pairs.push((n, v));
    }
    Labels::try_from_pairs(pairs)
}

/// What a streamed chunk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkKind {
    /// Floats (XOR).
    Xor,
    /// Native histograms with integer counts (`HISTOGRAM`).
    Histogram,
    /// Native histograms with float counts (`FLOAT_HISTOGRAM`).
    FloatHistogram,
}

/// One chunk of a streamed series: its time range, kind and where its bytes are in the
/// series' buffer.
struct RemoteChunk {
    min_t: i64,
    max_t: i64,
    kind: ChunkKind,
    range: std::ops::Range<usize>,
}

enum SeriesData {
    /// A `SAMPLES` response's floats and native histograms.
    Samples(Vec<Sample>, Vec<HistogramSample>),
    /// A series' chunks in one buffer (one allocation per series, not per chunk).
    Chunks {
        data: Vec<u8>,
        chunks: Vec<RemoteChunk>,
    },
}

/// A series as received: raw samples or compressed chunks, decoded when iterated.
struct RemoteSeries {
    labels: Labels,
    data: Vec<SeriesData>,
}

impl RemoteSeries {
    /// Every sample in `[mint, maxt]`, in time order, duplicates (overlapping chunks) removed.
    fn samples(&self, mint: i64, maxt: i64) -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        for d in &self.data {
            match d {
                SeriesData::Samples(s, _) => {
                    out.extend(s.iter().filter(|x| x.t >= mint && x.t <= maxt).copied())
                }
                SeriesData::Chunks { data, chunks } => {
                    for c in chunks {
                        if c.kind != ChunkKind::Xor || c.max_t < mint || c.min_t > maxt {
                            continue;
                        }
                        let bytes = data.get(c.range.clone()).unwrap_or_default();
                        let mut it = XorIterator::new(bytes)
                            .map_err(|e| StorageError::Corruption(format!("remote chunk: {e}")))?;
                        it.append_range(mint, maxt, &mut out)
                            .map_err(|e| StorageError::Corruption(format!("remote chunk: {e}")))?;
                    }
                }
            }
        }
        if !out.windows(2).all(|w| w[0].t < w[1].t) {
            out.sort_by_key(|s| s.t);
            out.dedup_by_key(|s| s.t);
        }
        Ok(out)
    }

    /// Appends every native histogram sample in `[mint, maxt]` to `out`, in time order,
    /// duplicates (overlapping chunks) removed.
    fn histograms(&self, mint: i64, maxt: i64, out: &mut Vec<HistogramSample>) -> Result<()> {
        let start = out.len();
        let corrupt = |e: m3query_chunkenc::ChunkError| {
            StorageError::Corruption(format!("remote histogram chunk: {e}"))
        };
        for d in &self.data {
            match d {
                SeriesData::Samples(_, h) => {
                    out.extend(h.iter().filter(|x| x.t >= mint && x.t <= maxt).cloned())
                }
                SeriesData::Chunks { data, chunks } => {
                    for c in chunks {
                        if c.kind == ChunkKind::Xor || c.max_t < mint || c.min_t > maxt {
                            continue;
                        }
                        let bytes = data.get(c.range.clone()).unwrap_or_default();
                        if c.kind == ChunkKind::Histogram {
                            let mut it = HistogramIterator::new(bytes).map_err(corrupt)?;
                            while let Some((t, h)) = it.next_histogram().map_err(corrupt)? {
                                if t > maxt {
                                    break;
                                }
                                if t >= mint {
                                    out.push(HistogramSample::new(t, h.to_float()));
                                }
                            }
                        } else {
                            let mut it = FloatHistogramIterator::new(bytes).map_err(corrupt)?;
                            while let Some((t, h)) = it.next_histogram().map_err(corrupt)? {
                                if t > maxt {
                                    break;
                                }
                                if t >= mint {
                                    out.push(HistogramSample::new(t, h));
                                }
                            }
                        }
                    }
                }
            }
        }
        let added = &mut out[start..];
        if !added.windows(2).all(|w| w[0].t < w[1].t) {
            added.sort_by_key(|s| s.t);
            let mut kept: Vec<HistogramSample> = out.drain(start..).collect();
            kept.dedup_by_key(|s| s.t);
            out.extend(kept);
        }
        Ok(())
    }
}

/// A series handed to the engine: decoded lazily, bounded to the querier's range.
struct LazySeries {
    inner: RemoteSeries,
    mint: i64,
    maxt: i64,
}

impl Series for LazySeries {
    fn labels(&self) -> &Labels {
        &self.inner.labels
    }
    fn iter(&self) -> Box<dyn SampleIterator + '_> {
        match self.inner.samples(self.mint, self.maxt) {
            Ok(samples) => Box::new(OwnedIter {
                samples,
                pos: 0,
                series: self,
            }),
            Err(e) => Box::new(FailedIter(Some(e))),
        }
    }
}

struct OwnedIter<'a> {
    samples: Vec<Sample>,
    pos: usize,
    /// Histograms are decoded only when asked for (most queries read floats only).
    series: &'a LazySeries,
}

impl SampleIterator for OwnedIter<'_> {
    fn next(&mut self) -> Result<Option<Sample>> {
        let s = self.samples.get(self.pos).copied();
        self.pos += 1;
        Ok(s)
    }

    fn append_histograms(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<HistogramSample>,
    ) -> Result<()> {
        let s = self.series;
        s.inner.histograms(mint.max(s.mint), maxt.min(s.maxt), out)
    }
}

struct FailedIter(Option<StorageError>);

impl SampleIterator for FailedIter {
    fn next(&mut self) -> Result<Option<Sample>> {
        match self.0.take() {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

struct LazySeriesSet {
    series: std::vec::IntoIter<RemoteSeries>,
    mint: i64,
    maxt: i64,
}

impl SeriesSet for LazySeriesSet {
    fn next(&mut self) -> Option<Result<Box<dyn Series>>> {
        self.series.next().map(|inner| {
            Ok(Box::new(LazySeries {
                inner,
                mint: self.mint,
                maxt: self.maxt,
            }) as Box<dyn Series>)
        })
    }
}

/// A future that runs inside its runtime's context whenever it is polled, so the thread that
/// polls it (a fan-out's caller, driving several stores' reads) need not have entered it.
struct InRuntime<F> {
    runtime: tokio::runtime::Handle,
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for InRuntime<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _entered = this.runtime.enter();
        this.fut.as_mut().poll(cx)
    }
}

impl Queryable for RemoteReadClient {
    fn querier(&self, mint: i64, maxt: i64) -> Result<Box<dyn Querier + '_>> {
        Ok(Box::new(RemoteQuerier {
            client: self,
            mint,
            maxt,
        }))
    }
}

struct RemoteQuerier<'a> {
    client: &'a RemoteReadClient,
    mint: i64,
    maxt: i64,
}

impl RemoteQuerier<'_> {
    /// The label sets of the series `matchers` select (everything when empty), from a
    /// labels-only select.
    async fn labels_of(&self, ctx: &Context, matchers: &[Matcher]) -> Result<Vec<Labels>> {
        let everything;
        let matchers = if matchers.is_empty() {
            everything = [Matcher::new(MatchOp::RegexMatch, "__name__", ".+")
                .map_err(|e| StorageError::Other(e.into()))?];
            &everything[..]
        } else {
            matchers
        };
        if !self.client.wanted(matchers) {
            return Ok(Vec::new());
        }
        let hints = SelectHints {
            start_ms: self.mint,
            end_ms: self.maxt,
            func: Some("series".into()),
            ..Default::default()
        };
        Ok(self
            .client
            .read(ctx, self.mint, self.maxt, &hints, matchers)
            .await?
            .into_iter()
            .map(|s| s.labels)
            .collect())
    }
}

/// The empty answer of a store a selector does not route to.
fn not_asked<'s>() -> Box<dyn SeriesSet + 's> {
    Box::new(VecSeriesSet::<VecSeries>::new(Vec::new(), Warnings::new()))
}

impl AsyncQuerier for RemoteQuerier<'_> {
    fn select<'s: 'f, 'f>(
        &'s self,
        ctx: &'f Context,
        _sort: bool,
        hints: &'f SelectHints,
        matchers: &'f [Matcher],
    ) -> BoxFuture<'f, Result<Box<dyn SeriesSet + 's>>> {
        if !self.client.wanted(matchers) {
            return Box::pin(std::future::ready(Ok(not_asked())));
        }
        let (mint, maxt) = (self.mint, self.maxt);
        let read = self.client.read(ctx, mint, maxt, hints, matchers);
        Box::pin(async move {
            let series = read.await?;
            Ok(Box::new(LazySeriesSet {
                series: series.into_iter(),
                mint,
                maxt,
            }) as Box<dyn SeriesSet + 's>)
        })
    }

    fn label_values<'a>(
        &'a self,
        ctx: &'a Context,
        name: &'a str,
        hints: &'a LabelHints,
        matchers: &'a [Matcher],
    ) -> BoxFuture<'a, Result<LabelValues>> {
        Box::pin(async move {
            let values = self
                .labels_of(ctx, matchers)
                .await?
                .iter()
                .filter_map(|l| l.get(name).map(str::to_string))
                .collect();
            Ok(LabelValues::limited(values, hints.limit, Warnings::new()))
        })
    }

    fn label_names<'a>(
        &'a self,
        ctx: &'a Context,
        hints: &'a LabelHints,
        matchers: &'a [Matcher],
    ) -> BoxFuture<'a, Result<LabelValues>> {
        Box::pin(async move {
            let values = self
                .labels_of(ctx, matchers)
                .await?
                .iter()
                .flat_map(|l| l.iter().map(|l| l.name.to_string()).collect::<Vec<_>>())
                .collect();
            Ok(LabelValues::limited(values, hints.limit, Warnings::new()))
        })
    }

    fn block_on(&self, fut: BoxFuture<'_, ()>) -> Result<()> {
        self.client.wait(fut)
    }
}

impl Querier for RemoteQuerier<'_> {
    fn select(
        &self,
        ctx: &Context,
        sort: bool,
        hints: &SelectHints,
        matchers: &[Matcher],
    ) -> Result<Box<dyn SeriesSet + '_>> {
        if !self.client.wanted(matchers) {
            return Ok(not_asked());
        }
        self.client
            .wait(AsyncQuerier::select(self, ctx, sort, hints, matchers))?
    }

    fn label_values(
        &self,
        ctx: &Context,
        name: &str,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues> {
        self.client
            .wait(AsyncQuerier::label_values(self, ctx, name, hints, matchers))?
    }

    fn label_names(
        &self,
        ctx: &Context,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues> {
        self.client
            .wait(AsyncQuerier::label_names(self, ctx, hints, matchers))?
    }

    fn as_async(&self) -> Option<&dyn AsyncQuerier> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::{self, ReadLimits, ResponseType};
    use m3query_storage::memory::MemStorage;
    use m3query_storage::merge::MergeQueryable;
    use m3query_storage::{Appendable, collect_series};
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    /// How a test store misbehaves.
    #[derive(Clone, Copy, Default)]
    struct Serve {
        /// Write the body a few bytes at a time, so frames arrive cut across reads.
        trickle: bool,
        /// Answer with every series whatever the request's matchers.
        ignore_matchers: bool,
        /// Answer with all data whatever the request's time range.
        ignore_range: bool,
    }

    /// A minimal HTTP/1.1 remote-read server over `store`, answering `requests` requests.
    fn serve(store: Arc<MemStorage>, requests: usize, status: u16) -> String {
        serve_with(store, requests, status, Serve::default())
    }

    fn serve_with(store: Arc<MemStorage>, requests: usize, status: u16, how: Serve) -> String {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for _ in 0..requests {
                let Ok((mut s, _)) = l.accept() else { return };
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let (head_end, len) = loop {
                    let n = s.read(&mut tmp).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = s.read(&mut tmp).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let (ct, body) = if status != 200 {
                    ("text/plain", b"boom".to_vec())
                } else {
                    let mut req = read::decode_request(&buf[head_end..head_end + len], 1 << 20)
                        .expect("request");
                    for q in &mut req.queries {
                        if how.ignore_matchers {
                            q.matchers = vec![to_wire_matcher(&Matcher::equal("__name__", "m"))];
                        }
                        if how.ignore_range {
                            (q.start_timestamp_ms, q.end_timestamp_ms) = (0, i64::MAX);
                        }
                    }
                    let kind = read::negotiate(&req).expect("type");
                    let ctx = Context::background();
                    match kind {
                        ResponseType::Samples => (
                            kind.content_type(),
                            read::read_samples(store.as_ref(), &ctx, &req, &ReadLimits::default())
                                .expect("read"),
                        ),
                        ResponseType::StreamedXorChunks => {
                            let mut out = Vec::new();
                            let limits = ReadLimits {
                                max_frame_bytes: 300,
                                ..Default::default()
                            };
                            read::stream_chunks(store.as_ref(), &ctx, &req, &limits, &mut |f| {
                                out.extend_from_slice(&f);
                                Ok(())
                            })
                            .expect("stream");
                            (kind.content_type(), out)
                        }
                    }
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                if how.trickle {
                    for part in body.chunks(7) {
                        let _ = s.write_all(part);
                        let _ = s.flush();
                        std::thread::sleep(Duration::from_micros(50));
                    }
                } else {
                    let _ = s.write_all(&body);
                }
            }
        });
        format!("http://{addr}/api/v1/read")
    }

    fn store() -> Arc<MemStorage> {
        let s = MemStorage::new();
        let mut app = s.appender();
        for i in 0..3 {
            let l = Labels::from_pairs([
                ("__name__", "m".to_string()),
                ("i", i.to_string()),
                ("region", "eu".to_string()),
            ]);
            for t in 0..500 {
                app.append(&l, t * 10_000, (t + i) as f64).expect("append");
            }
        }
        app.commit().expect("commit");
        Arc::new(s)
    }

    fn config(url: String, prefer_streamed: bool) -> RemoteConfig {
        RemoteConfig {
            name: "r".into(),
            url,
            timeout: Duration::from_secs(5),
            headers: vec![],
            auth: None,
            required_matchers: vec![],
            prefer_streamed,
            max_response_bytes: 1 << 20,
            max_samples: 0,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn select_all(c: &dyn Queryable, mint: i64, maxt: i64) -> Result<Vec<VecSeries>> {
        let q = c.querier(mint, maxt)?;
        let mut set = q.select(
            &Context::background(),
            true,
            &SelectHints::default(),
            &[Matcher::equal("__name__", "m")],
        )?;
        Ok(collect_series(set.as_mut(), i64::MIN, i64::MAX)?.0)
    }

    #[test]
    fn samples_and_streamed_responses_agree() {
        let rt = runtime();
        let s = store();
        let a = RemoteReadClient::new(config(serve(s.clone(), 1, 200), false), rt.handle().clone())
            .expect("client");
        let b = RemoteReadClient::new(config(serve(s, 1, 200), true), rt.handle().clone())
            .expect("client");
        let x = select_all(&a, 100_000, 2_000_000).expect("samples");
        let y = select_all(&b, 100_000, 2_000_000).expect("streamed");
        assert_eq!(x.len(), 3);
        assert_eq!(x, y);
        assert_eq!(x[0].samples.len(), 191);
        assert!(
            x[0].samples
                .iter()
                .all(|s| s.t >= 100_000 && s.t <= 2_000_000)
        );
    }

    /// Histograms with their timestamps.
    type Hists = Vec<(i64, m3query_model::FloatHistogram)>;

    /// Floats and native histograms of `h{kind=KIND}` as a store answers a select.
    fn hist_series(
        q: &dyn Queryable,
        kind: &str,
        mint: i64,
        maxt: i64,
    ) -> Result<(Vec<Sample>, Hists)> {
        let querier = q.querier(mint, maxt)?;
        let mut set = querier.select(
            &Context::background(),
            true,
            &SelectHints::default(),
            &[
                Matcher::equal("__name__", "h"),
                Matcher::equal("kind", kind),
            ],
        )?;
        let mut floats = Vec::new();
        let mut hists = Vec::new();
        let mut n = 0;
        while let Some(series) = set.next() {
            let series = series?;
            n += 1;
            let mut it = series.iter();
            it.append_range(mint, maxt, &mut floats)?;
            let mut hs = Vec::new();
            it.append_histograms(mint, maxt, &mut hs)?;
            hists.extend(hs.into_iter().map(|h| (h.t, (*h.h).clone())));
        }
        assert_eq!(n, 1, "one series of kind {kind}");
        Ok((floats, hists))
    }

    /// Native histograms (integer, float, custom buckets, a stale marker) come back through
    /// the client as the store holds them, from `SAMPLES` responses and from streamed
    /// `HISTOGRAM`/`FLOAT_HISTOGRAM` chunks (cut across small frames), within the range.
    #[test]
    fn histograms_come_back_through_both_response_types() {
        let rt = runtime();
        let (s, want) = crate::read::tests::hist_store();
        let s = Arc::new(s);
        for streamed in [false, true] {
            let c = RemoteReadClient::new(
                config(serve(s.clone(), 3, 200), streamed),
                rt.handle().clone(),
            )
            .expect("client");
            let (floats, hists) = hist_series(&c, "mixed", 0, i64::MAX).expect("read");
            assert_eq!(floats.len(), 10, "streamed: {streamed}");
            assert_eq!(hists, want, "streamed: {streamed}");
            assert!(m3query_model::is_stale_nan(hists[hists.len() - 1].1.sum));
            let (_, custom) = hist_series(&c, "nhcb", 0, i64::MAX).expect("read");
            assert_eq!(custom.len(), 3);
            assert_eq!(custom[0].1.custom_values, vec![0.25]);
            // A narrower read keeps only what is in range.
            let (floats, hists) = hist_series(&c, "mixed", 50_000, 60_000).expect("read");
            assert!(floats.is_empty());
            assert_eq!(
                hists.iter().map(|h| h.0).collect::<Vec<_>>(),
                (50..=60).map(|s| s * 1000).collect::<Vec<_>>()
            );
        }
    }

    /// A fan-out over two stores holding overlapping parts of a histogram series merges
    /// them into one series, each sample once.
    #[test]
    fn histograms_from_several_stores_merge() {
        let rt = runtime();
        let (full, want) = crate::read::tests::hist_store();
        // The second store holds the histograms from t=100s on only.
        let part = MemStorage::new();
        let mut app = part.appender();
        let l = Labels::from_pairs([("__name__", "h"), ("kind", "mixed")]);
        for (t, h) in want.iter().filter(|(t, _)| *t >= 100_000) {
            app.append_histogram(&l, *t, h).expect("append");
        }
        app.commit().expect("commit");
        let a: Arc<dyn Queryable> = Arc::new(
            RemoteReadClient::new(
                config(serve(Arc::new(full), 1, 200), true),
                rt.handle().clone(),
            )
            .expect("client"),
        );
        let b: Arc<dyn Queryable> = Arc::new(
            RemoteReadClient::new(
                config(serve(Arc::new(part), 1, 200), false),
                rt.handle().clone(),
            )
            .expect("client"),
        );
        let got = rt
            .block_on(rt.spawn(async move {
                let m = MergeQueryable::from_stores(vec![a, b]);
                hist_series(&m, "mixed", 0, i64::MAX)
            }))
            .expect("the task did not panic")
            .expect("merged read");
        assert_eq!(got.0.len(), 10);
        assert_eq!(got.1, want);
    }

    #[test]
    fn errors_name_the_store_and_required_matchers_route() {
        let rt = runtime();
        let c = RemoteReadClient::new(config(serve(store(), 1, 500), false), rt.handle().clone())
            .expect("client");
        match select_all(&c, 0, 10) {
            Err(StorageError::Unavailable { store, message }) => {
                assert_eq!(store, "r");
                assert!(
                    message.contains("500") && message.contains("boom"),
                    "{message}"
                );
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("expected an error"),
        }
        let mut cfg = config("http://127.0.0.1:9/api/v1/read".into(), false);
        cfg.timeout = Duration::from_millis(500);
        let down = RemoteReadClient::new(cfg.clone(), rt.handle().clone()).expect("client");
        assert!(matches!(
            select_all(&down, 0, 10),
            Err(StorageError::Unavailable { .. })
        ));
        // A store that requires region="us" is not asked for this selector at all.
        cfg.required_matchers = vec![("region".into(), "us".into())];
        let routed = RemoteReadClient::new(cfg, rt.handle().clone()).expect("client");
        assert!(select_all(&routed, 0, 10).expect("not asked").is_empty());
    }

    #[test]
    fn label_lookups_come_from_a_select() {
        let rt = runtime();
        let c = RemoteReadClient::new(config(serve(store(), 2, 200), true), rt.handle().clone())
            .expect("client");
        let q = c.querier(0, i64::MAX).expect("querier");
        let ctx = Context::background();
        let v = q
            .label_values(&ctx, "i", &LabelHints::default(), &[])
            .expect("values");
        assert_eq!(v.values, vec!["0", "1", "2"]);
        let n = q
            .label_names(&ctx, &LabelHints { limit: 2 }, &[Matcher::equal("i", "1")])
            .expect("names");
        assert_eq!(n.values, vec!["__name__", "i"]);
    }

    fn select_with(
        c: &RemoteReadClient,
        hints: &SelectHints,
        matchers: &[Matcher],
    ) -> Result<Vec<VecSeries>> {
        let q = c.querier(0, i64::MAX)?;
        let mut set = q.select(&Context::background(), true, hints, matchers)?;
        Ok(collect_series(set.as_mut(), i64::MIN, i64::MAX)?.0)
    }

    #[test]
    fn streamed_frames_split_across_network_reads_decode() {
        let rt = runtime();
        let s = store();
        let whole =
            RemoteReadClient::new(config(serve(s.clone(), 1, 200), false), rt.handle().clone())
                .expect("client");
        let trickled = RemoteReadClient::new(
            config(
                serve_with(
                    s,
                    1,
                    200,
                    Serve {
                        trickle: true,
                        ..Default::default()
                    },
                ),
                true,
            ),
            rt.handle().clone(),
        )
        .expect("client");
        let x = select_all(&whole, 0, i64::MAX).expect("samples");
        let y = select_all(&trickled, 0, i64::MAX).expect("streamed");
        assert_eq!(x.len(), 3);
        assert_eq!(x, y);
    }

    #[test]
    fn the_series_limit_stops_a_read_early() {
        let rt = runtime();
        for streamed in [true, false] {
            let c = RemoteReadClient::new(
                config(serve(store(), 1, 200), streamed),
                rt.handle().clone(),
            )
            .expect("client");
            let hints = SelectHints {
                limit: 2,
                ..Default::default()
            };
            let got = select_with(&c, &hints, &[Matcher::equal("__name__", "m")]).expect("select");
            assert_eq!(got.len(), 2, "streamed={streamed}");
        }
    }

    #[test]
    fn the_sample_limit_fails_a_read_while_reading() {
        let rt = runtime();
        for streamed in [true, false] {
            let mut cfg = config(serve(store(), 1, 200), streamed);
            cfg.max_samples = 700;
            let c = RemoteReadClient::new(cfg, rt.handle().clone()).expect("client");
            match select_all(&c, 0, i64::MAX) {
                Err(StorageError::LimitExceeded(m)) => {
                    assert!(m.contains("700") && m.contains("\"r\""), "{m}")
                }
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("expected the sample limit, streamed={streamed}"),
            }
        }
    }

    #[test]
    fn series_the_matchers_do_not_select_are_dropped() {
        let rt = runtime();
        // This store ignores the request's matchers and answers with every series.
        let c = RemoteReadClient::new(
            config(
                serve_with(
                    store(),
                    2,
                    200,
                    Serve {
                        ignore_matchers: true,
                        ..Default::default()
                    },
                ),
                true,
            ),
            rt.handle().clone(),
        )
        .expect("client");
        let got = select_with(
            &c,
            &SelectHints::default(),
            &[Matcher::equal("__name__", "m"), Matcher::equal("i", "1")],
        )
        .expect("select");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labels.get("i"), Some("1"));
    }

    #[test]
    fn only_what_the_read_needs_is_kept() {
        let rt = runtime();
        for streamed in [true, false] {
            let how = Serve {
                ignore_range: true,
                ..Default::default()
            };
            let c = RemoteReadClient::new(
                config(serve_with(store(), 2, 200, how), streamed),
                rt.handle().clone(),
            )
            .expect("client");
            // Chunks and samples outside the read's range are dropped as they arrive.
            let ctx = Context::background();
            let m = [Matcher::equal("__name__", "m")];
            let hints = SelectHints::default();
            let series = c
                .wait(c.read(&ctx, 100_000, 200_000, &hints, &m))
                .and_then(|r| r)
                .expect("read");
            assert_eq!(series.len(), 3);
            for s in &series {
                let kept: usize = s
                    .data
                    .iter()
                    .map(|d| match d {
                        SeriesData::Samples(v, h) => v.len() + h.len(),
                        SeriesData::Chunks { chunks, .. } => chunks.len() * 120,
                    })
                    .sum();
                assert!(kept <= 240, "streamed={streamed}: {kept} samples kept");
            }
            // A metadata select keeps labels only.
            let hints = SelectHints {
                func: Some("series".into()),
                ..Default::default()
            };
            let series = c
                .wait(c.read(&ctx, 0, i64::MAX, &hints, &m))
                .and_then(|r| r)
                .expect("read");
            assert_eq!(series.len(), 3);
            assert!(
                series
                    .iter()
                    .all(|s| s.samples(0, i64::MAX).expect("samples").is_empty())
            );
        }
    }

    #[test]
    fn the_response_cap_applies_to_streamed_reads() {
        let rt = runtime();
        let mut cfg = config(serve(store(), 1, 200), true);
        cfg.max_response_bytes = 1000;
        let c = RemoteReadClient::new(cfg, rt.handle().clone()).expect("client");
        match select_all(&c, 0, i64::MAX) {
            Err(StorageError::Unavailable { message, .. }) => {
                assert!(message.contains("maxResponseBytes"), "{message}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("expected the response cap"),
        }
    }

    /// Whether this process's TCP socket bound to `local` has TCP_NODELAY set (`None`: no
    /// such socket).
    #[cfg(target_os = "linux")]
    fn nodelay_of(local: std::net::SocketAddr) -> Option<bool> {
        use std::os::fd::FromRawFd;
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // SAFETY: the descriptor is only queried (getsockname, getsockopt; a descriptor
            // that is not a socket just fails them) and never closed, as ManuallyDrop keeps
            // the TcpStream from dropping it.
            let s = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
            if s.local_addr().ok() == Some(local) {
                return s.nodelay().ok();
            }
        }
        None
    }

    /// Reads are request/response on kept-alive connections, where Nagle's algorithm would
    /// hold a request's last segment until the store's delayed ACK (40 ms): the client's own
    /// socket, as the store sees it connect, has TCP_NODELAY set.
    #[cfg(target_os = "linux")]
    #[test]
    fn reads_go_out_with_tcp_nodelay() {
        let rt = runtime();
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok((mut s, peer)) = l.accept() else {
                return;
            };
            // Once the request arrives the client has set its socket options.
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = tx.send(nodelay_of(peer));
            let _ =
                s.write_all(b"HTTP/1.1 500 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        });
        let c = RemoteReadClient::new(
            config(format!("http://{addr}/api/v1/read"), true),
            rt.handle().clone(),
        )
        .expect("client");
        assert!(select_all(&c, 0, 10).is_err());
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Ok(Some(true)),
            "the client's socket to the store has TCP_NODELAY"
        );
    }

    /// A read called on a multi-threaded runtime's worker (where tokio refuses to block)
    /// first hands the worker's tasks to another thread, alone and in a fan-out.
    #[test]
    fn a_read_on_a_runtime_worker_hands_the_worker_off() {
        let rt = runtime();
        let client = |url, streamed| {
            Arc::new(
                RemoteReadClient::new(config(url, streamed), rt.handle().clone()).expect("client"),
            )
        };
        let a = client(serve(store(), 2, 200), false);
        let b = client(serve(store(), 1, 200), true);
        let (alone, merged) = rt
            .block_on(rt.spawn(async move {
                let alone = select_all(a.as_ref(), 0, i64::MAX).map(|s| s.len());
                let m = MergeQueryable::from_stores(vec![a, b]);
                (alone, select_all(&m, 0, i64::MAX).map(|s| s.len()))
            }))
            .expect("the task did not panic");
        assert_eq!(alone.expect("alone"), 3);
        assert_eq!(merged.expect("merged"), 3);
    }

    /// On a single-threaded runtime's thread nothing could take over the runtime's work while
    /// a read blocks: the read fails with an internal error saying so, instead of panicking.
    #[test]
    fn a_read_on_a_single_threaded_runtime_fails_clearly() {
        let rt = runtime();
        let client = || -> Arc<dyn Queryable> {
            Arc::new(
                RemoteReadClient::new(
                    config("http://127.0.0.1:9/api/v1/read".into(), true),
                    rt.handle().clone(),
                )
                .expect("client"),
            )
        };
        let alone = client();
        let merged = MergeQueryable::from_stores(vec![client(), client()]);
        let single = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let clear = |r: Result<usize>| match r {
            Err(StorageError::Other(e)) => {
                let e = e.to_string();
                assert!(
                    e.contains("single-threaded") && e.contains("blocking thread"),
                    "{e}"
                );
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("expected an error"),
        };
        single.block_on(async {
            for q in [alone.as_ref(), &merged as &dyn Queryable] {
                clear(select_all(q, 0, i64::MAX).map(|s| s.len()));
                let names = q.querier(0, 10).and_then(|q| {
                    q.label_names(&Context::background(), &LabelHints::default(), &[])
                });
                clear(names.map(|n| n.values.len()));
            }
        });
    }

    #[test]
    fn error_bodies_are_summarised() {
        assert_eq!(summarize("\n boom\x1b[0m\r\nsecond line"), "boom[0m");
        let long = "y".repeat(500);
        assert_eq!(summarize(&long).chars().count(), SUMMARY_CHARS + 1);
        assert_eq!(
            summarize("bad upstream http://u:pw@h/x"),
            "bad upstream http://u:xxxxx@h/x"
        );
    }
}
