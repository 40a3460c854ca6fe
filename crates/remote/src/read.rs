//! Remote read serving: answers `prometheus.ReadRequest` from any `Queryable`.
//!
//! Two response types, negotiated from `accepted_response_types` in order:
//! - `SAMPLES`: one snappy-compressed `ReadResponse`, one `QueryResult` per query. A total
//!   sample limit guards memory (Prometheus's `--storage.remote.read-sample-limit`).
//! - `STREAMED_XOR_CHUNKS`: frames of `uvarint(len) | big-endian CRC32-Castagnoli(msg) | msg`,
//!   each a `ChunkedReadResponse` holding one series' chunks (a series with more chunks
//!   than fit in `max_frame_bytes` continues in the next frame), streamed as produced.
//!
//! Native histograms travel as Prometheus sends them: `histograms` beside `samples` in a
//! `SAMPLES` response's series, `HISTOGRAM` / `FLOAT_HISTOGRAM` chunks among a streamed
//! series' XOR chunks, in time order. The storage seam yields float histograms; one whose
//! counts are all integers (as scraped ones are) goes out in the integer form.

use m3query_chunkenc::{
    FloatHistogramAppender, HistogramAppend, HistogramAppender, TARGET_SAMPLES_PER_CHUNK,
    XorAppender,
};
use m3query_model::{Labels, MatchOp, Matcher, Sample};
use m3query_storage::{Context, Error as StorageError, HistogramSample, Queryable, SelectHints};
use prost::Message;

use crate::histogram::float_as_int;
use crate::prompb;

/// Errors answering a read request.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The request does not decode or is not valid (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// The answer would break a read limit (HTTP 400, as Prometheus).
    #[error("{0}")]
    LimitExceeded(String),
    /// The store failed.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// The client went away while streaming.
    #[error("client disconnected")]
    Disconnected,
}

/// Which response the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseType {
    /// `SAMPLES`: one snappy-compressed `ReadResponse`.
    Samples,
    /// `STREAMED_XOR_CHUNKS`: framed `ChunkedReadResponse`s of XOR chunks.
    StreamedXorChunks,
}

impl ResponseType {
    /// The `Content-Type` the answer is sent with.
    pub fn content_type(self) -> &'static str {
        match self {
            ResponseType::Samples => "application/x-protobuf",
            ResponseType::StreamedXorChunks => {
                "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"
            }
        }
    }
}

/// Limits on one read request.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Most samples in a `SAMPLES` response (0: no limit).
    pub max_samples: usize,
    /// Most series in one response (0: no limit).
    pub max_series: usize,
    /// Largest streamed frame; a single chunk is always sent whole.
    pub max_frame_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_samples: 50_000_000,
            max_series: 0,
            max_frame_bytes: 1 << 20,
        }
    }
}

/// Decompresses and decodes a request body, refusing bodies over `max_decompressed` bytes
/// before allocating them.
pub fn decode_request(
    body: &[u8],
    max_decompressed: usize,
) -> Result<prompb::ReadRequest, ReadError> {
    // Refuses a header claiming more than the body can hold before allocating anything.
    let size = crate::write::snappy_checked_len(body, usize::MAX)
        .map_err(|e| ReadError::BadRequest(e.to_string()))?;
    if size > max_decompressed {
        return Err(ReadError::LimitExceeded(format!(
            "request decompresses to {size} bytes, over the {max_decompressed}-byte limit"
        )));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| ReadError::BadRequest(format!("snappy decompression failed: {e}")))?;
    prompb::ReadRequest::decode(raw.as_slice())
        .map_err(|e| ReadError::BadRequest(format!("cannot decode prometheus.ReadRequest: {e}")))
}

/// The first response type in the client's list that we serve; `SAMPLES` when the list is
/// empty.
pub fn negotiate(req: &prompb::ReadRequest) -> Result<ResponseType, ReadError> {
    if req.accepted_response_types.is_empty() {
        return Ok(ResponseType::Samples);
    }
    use prompb::read_request::ResponseType as R;
    for t in &req.accepted_response_types {
        match R::try_from(*t) {
            Ok(R::Samples) => return Ok(ResponseType::Samples),
            Ok(R::StreamedXorChunks) => return Ok(ResponseType::StreamedXorChunks),
            Err(_) => {}
        }
    }
    Err(ReadError::BadRequest(format!(
        "server does not support any of the requested response types: {:?}; supported: SAMPLES, STREAMED_XOR_CHUNKS",
        req.accepted_response_types
    )))
}

/// Converts wire matchers, refusing bad regexes and selects that would match every series.
pub fn to_matchers(ms: &[prompb::LabelMatcher]) -> Result<Vec<Matcher>, ReadError> {
    use prompb::label_matcher::Type;
    let out = ms
        .iter()
        .map(|m| {
            let op = match Type::try_from(m.r#type) {
                Ok(Type::Eq) => MatchOp::Equal,
                Ok(Type::Neq) => MatchOp::NotEqual,
                Ok(Type::Re) => MatchOp::RegexMatch,
                Ok(Type::Nre) => MatchOp::RegexNoMatch,
                Err(_) => {
                    return Err(ReadError::BadRequest(format!(
                        "unknown matcher type {}",
                        m.r#type
                    )));
                }
            };
            Matcher::new(op, m.name.clone(), m.value.clone())
                .map_err(|e| ReadError::BadRequest(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !m3query_storage::matchers_select_something(&out) {
        return Err(ReadError::BadRequest(
            "a query must contain at least one matcher that does not match the empty string".into(),
        ));
    }
    Ok(out)
}

fn hints(q: &prompb::Query) -> SelectHints {
    let h = q.hints.clone().unwrap_or_default();
    SelectHints {
        start_ms: if h.start_ms != 0 {
            h.start_ms
        } else {
            q.start_timestamp_ms
        },
        end_ms: if h.end_ms != 0 {
            h.end_ms
        } else {
            q.end_timestamp_ms
        },
        step_ms: h.step_ms,
        range_ms: h.range_ms,
        func: (!h.func.is_empty()).then_some(h.func),
        grouping: h.grouping,
        by: h.by,
        limit: 0,
    }
}

fn to_wire_labels(l: &Labels) -> Vec<prompb::Label> {
    l.iter()
        .map(|l| prompb::Label {
            name: l.name.as_bytes().to_vec().into(),
            value: l.value.as_bytes().to_vec().into(),
        })
        .collect()
}

/// Runs one query (span `remote.serve`: its index in the request, matchers, range, and the
/// series and samples it answered) and calls `f` with each series' labels and samples in
/// range.
fn for_each_series(
    q: &dyn Queryable,
    ctx: &Context,
    (index, query): (usize, &prompb::Query),
    limits: &ReadLimits,
    sorted: bool,
    mut f: impl FnMut(&Labels, &[Sample], &[HistogramSample]) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let (mint, maxt) = (query.start_timestamp_ms, query.end_timestamp_ms);
    // DEBUG: exported only inside a sampled request (see the telemetry crate's filter).
    let span = tracing::debug_span!(
        target: "m3query::remote",
        "remote.serve",
        query_index = count(index),
        matchers = tracing::field::Empty,
        start_ms = mint,
        end_ms = maxt,
        series = tracing::field::Empty,
        samples = tracing::field::Empty,
    );
    let _enter = span.enter();
    let matchers = to_matchers(&query.matchers)?;
    span.record(
        "matchers",
        tracing::field::display(crate::DisplayMatchers(&matchers)),
    );
    let (mut series_sent, mut samples_sent) = (0usize, 0usize);
    let result = select_each(q, ctx, &matchers, query, limits, sorted, |l, s, h| {
        series_sent += 1;
        samples_sent += s.len() + h.len();
        f(l, s, h)
    });
    span.record("series", count(series_sent));
    span.record("samples", count(samples_sent));
    result
}

/// A count as a span field: an `i64`, which exporters send as an integer tag
/// (tracing-opentelemetry turns `u64` and `usize` fields into strings).
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// [`for_each_series`]'s select, inside its span.
fn select_each(
    q: &dyn Queryable,
    ctx: &Context,
    matchers: &[Matcher],
    query: &prompb::Query,
    limits: &ReadLimits,
    sorted: bool,
    mut f: impl FnMut(&Labels, &[Sample], &[HistogramSample]) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let (mint, maxt) = (query.start_timestamp_ms, query.end_timestamp_ms);
    if mint > maxt {
        return Err(ReadError::BadRequest(format!(
            "query start {mint} is after its end {maxt}"
        )));
    }
    let querier = q.querier(mint, maxt)?;
    let mut set = querier.select(ctx, sorted, &hints(query), matchers)?;
    let mut buf: Vec<Sample> = Vec::new();
    let mut hbuf: Vec<HistogramSample> = Vec::new();
    let mut n = 0usize;
    while let Some(series) = set.next() {
        let series = series?;
        n += 1;
        if limits.max_series > 0 && n > limits.max_series {
            return Err(ReadError::LimitExceeded(format!(
                "exceeded series limit ({}): narrow the query's matchers or time range",
                limits.max_series
            )));
        }
        if n.is_multiple_of(1024) {
            ctx.check()?;
        }
        buf.clear();
        hbuf.clear();
        let mut it = series.iter();
        it.append_range(mint, maxt, &mut buf)?;
        it.append_histograms(mint, maxt, &mut hbuf)?;
        if buf.is_empty() && hbuf.is_empty() {
            continue;
        }
        f(series.labels(), &buf, &hbuf)?;
    }
    Ok(())
}

/// Answers a `SAMPLES` request: the snappy-compressed `ReadResponse` bytes.
pub fn read_samples(
    q: &dyn Queryable,
    ctx: &Context,
    req: &prompb::ReadRequest,
    limits: &ReadLimits,
) -> Result<Vec<u8>, ReadError> {
    let mut resp = prompb::ReadResponse {
        results: Vec::with_capacity(req.queries.len()),
    };
    let mut total = 0usize;
    for query in req.queries.iter().enumerate() {
        let mut result = prompb::QueryResult::default();
        for_each_series(q, ctx, query, limits, false, |labels, samples, hists| {
            // Histogram samples count towards the limit as Prometheus counts them.
            total += samples.len() + hists.len();
            if limits.max_samples > 0 && total > limits.max_samples {
                return Err(ReadError::LimitExceeded(format!(
                    "exceeded sample limit ({}): narrow the query or use STREAMED_XOR_CHUNKS",
                    limits.max_samples
                )));
            }
            result.timeseries.push(prompb::TimeSeries {
                labels: to_wire_labels(labels),
                samples: samples
                    .iter()
                    .map(|s| prompb::Sample {
                        value: s.v,
                        timestamp: s.t,
                    })
                    .collect(),
                histograms: hists
                    .iter()
                    .map(|h| match float_as_int(&h.h) {
                        Some(int) => crate::histogram::v1::to_proto(h.t, &int),
                        None => crate::histogram::v1::float_to_proto(h.t, &h.h),
                    })
                    .collect(),
                ..Default::default()
            });
            Ok(())
        })?;
        resp.results.push(result);
    }
    snap::raw::Encoder::new()
        .compress_vec(&resp.encode_to_vec())
        .map_err(|e| ReadError::Storage(StorageError::Other(e.into())))
}

/// Encodes one frame: `uvarint(len) | be32 crc32c(msg) | msg`.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 14);
    prost::encoding::encode_varint(msg.len() as u64, &mut out);
    out.extend_from_slice(&crc32c::crc32c(msg).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

fn chunk_err(e: m3query_chunkenc::ChunkError) -> ReadError {
    ReadError::Storage(StorageError::Other(e.into()))
}

/// The chunk being filled while a series is cut into chunks.
enum Open {
    None,
    Xor(XorAppender),
    Int(HistogramAppender),
    Float(FloatHistogramAppender),
}

/// Cuts a series' samples into chunks in time order: XOR chunks for floats, `HISTOGRAM`
/// chunks for histograms with integer counts, `FLOAT_HISTOGRAM` for the others. A chunk holds
/// at most 120 samples (as Prometheus's head cuts them); a change of kind cuts one, and so do
/// the histogram appenders' own rules (counter reset, schema or zero threshold change, other
/// custom bounds). A float histogram chunk takes integral histograms too until it is full, so
/// a series whose counts go back and forth does not cut a chunk per sample.
pub fn encode_chunks(
    samples: &[Sample],
    hists: &[HistogramSample],
) -> Result<Vec<prompb::Chunk>, ReadError> {
    let mut out = Vec::with_capacity((samples.len() + hists.len()) / TARGET_SAMPLES_PER_CHUNK + 1);
    let (mut i, mut j) = (0, 0);
    let mut open = Open::None;
    let mut range = (0i64, 0i64);
    let full = |n: usize| n >= TARGET_SAMPLES_PER_CHUNK;
    loop {
        let float_next = match (samples.get(i), hists.get(j)) {
            (Some(s), Some(h)) => s.t < h.t,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if float_next {
            let s = samples[i];
            i += 1;
            match &mut open {
                Open::Xor(app) if !full(app.num_samples()) => {
                    app.append(s.t, s.v).map_err(chunk_err)?;
                    range.1 = s.t;
                }
                _ => {
                    flush(&mut out, std::mem::replace(&mut open, Open::None), range);
                    let mut app = XorAppender::new();
                    app.append(s.t, s.v).map_err(chunk_err)?;
                    open = Open::Xor(app);
                    range = (s.t, s.t);
                }
            }
            continue;
        }
        let HistogramSample { t, h } = &hists[j];
        let t = *t;
        j += 1;
        // Integer form when the histogram has it, unless a float chunk with room is open.
        let int = match &open {
            Open::Float(a) if !full(usize::from(a.num_samples())) => None,
            _ => float_as_int(h),
        };
        let appended = match (&mut open, &int) {
            (Open::Int(app), Some(ih)) if !full(usize::from(app.num_samples())) => {
                match app.append(t, ih).map_err(chunk_err)? {
                    HistogramAppend::NewChunk(next) => Err(Open::Int(*next)),
                    _ => Ok(()),
                }
            }
            (Open::Float(app), _) if !full(usize::from(app.num_samples())) => {
                match app.append(t, h).map_err(chunk_err)? {
                    HistogramAppend::NewChunk(next) => Err(Open::Float(*next)),
                    _ => Ok(()),
                }
            }
            // A full chunk, a kind change, or nothing open: a new chunk, its counter reset
            // header decided against the previous chunk of the same kind.
            (open_now, _) => {
                let next = match (open_now, &int) {
                    (Open::Int(prev), Some(ih)) => {
                        let mut a = HistogramAppender::new();
                        a.append_after(Some(prev), t, ih).map_err(chunk_err)?;
                        Open::Int(a)
                    }
                    (_, Some(ih)) => {
                        let mut a = HistogramAppender::new();
                        a.append(t, ih).map_err(chunk_err)?;
                        Open::Int(a)
                    }
                    (Open::Float(prev), None) => {
                        let mut a = FloatHistogramAppender::new();
                        a.append_after(Some(prev), t, h).map_err(chunk_err)?;
                        Open::Float(a)
                    }
                    (_, None) => {
                        let mut a = FloatHistogramAppender::new();
                        a.append(t, h).map_err(chunk_err)?;
                        Open::Float(a)
                    }
                };
                Err(next)
            }
        };
        match appended {
            Ok(()) => range.1 = t,
            Err(next) => {
                flush(&mut out, std::mem::replace(&mut open, next), range);
                range = (t, t);
            }
        }
    }
    flush(&mut out, open, range);
    Ok(out)
}

/// Appends the chunk `open` holds, if any, covering `(min, max)`.
fn flush(out: &mut Vec<prompb::Chunk>, open: Open, (min, max): (i64, i64)) {
    use prompb::chunk::Encoding;
    let (encoding, data) = match open {
        Open::None => return,
        Open::Xor(a) => (Encoding::Xor, a.into_bytes()),
        Open::Int(a) => (Encoding::Histogram, a.bytes().to_vec()),
        Open::Float(a) => (Encoding::FloatHistogram, a.bytes().to_vec()),
    };
    out.push(prompb::Chunk {
        min_time_ms: min,
        max_time_ms: max,
        r#type: encoding as i32,
        data: data.into(),
    });
}

/// Answers a `STREAMED_XOR_CHUNKS` request, handing each frame to `emit` as it is ready.
/// Series come sorted by labels within each query, as Prometheus streams them.
pub fn stream_chunks(
    q: &dyn Queryable,
    ctx: &Context,
    req: &prompb::ReadRequest,
    limits: &ReadLimits,
    emit: &mut dyn FnMut(Vec<u8>) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    for (i, query) in req.queries.iter().enumerate() {
        for_each_series(
            q,
            ctx,
            (i, query),
            limits,
            true,
            |labels, samples, hists| {
                let wire_labels = to_wire_labels(labels);
                let labels_len: usize = wire_labels
                    .iter()
                    .map(|l| l.name.len() + l.value.len() + 8)
                    .sum();
                let mut chunks = encode_chunks(samples, hists)?.into_iter().peekable();
                while chunks.peek().is_some() {
                    let mut batch = Vec::new();
                    let mut size = labels_len;
                    while let Some(c) = chunks.peek() {
                        let c_len = c.data.len() + 32;
                        if !batch.is_empty() && size + c_len > limits.max_frame_bytes {
                            break;
                        }
                        size += c_len;
                        if let Some(c) = chunks.next() {
                            batch.push(c);
                        }
                    }
                    let msg = prompb::ChunkedReadResponse {
                        chunked_series: vec![prompb::ChunkedSeries {
                            labels: wire_labels.clone(),
                            chunks: batch,
                        }],
                        query_index: i as i64,
                    };
                    emit(frame(&msg.encode_to_vec()))?;
                }
                Ok(())
            },
        )?;
    }
    Ok(())
}

/// Reads frames back: for clients (the remote-read client) and tests.
pub struct FrameReader<'a> {
    buf: &'a [u8],
}

impl<'a> FrameReader<'a> {
    /// A reader over a body of frames.
    pub fn new(buf: &'a [u8]) -> Self {
        FrameReader { buf }
    }

    /// The next frame's message bytes, checked against its CRC; `None` at the end.
    pub fn next_frame(&mut self) -> Option<Result<&'a [u8], String>> {
        if self.buf.is_empty() {
            return None;
        }
        let mut b = self.buf;
        let len = match prost::encoding::decode_varint(&mut b) {
            Ok(l) => l as usize,
            Err(e) => return Some(Err(format!("bad frame length: {e}"))),
        };
        if b.len() < 4 + len {
            return Some(Err(format!(
                "truncated frame: {} bytes left, {} needed",
                b.len(),
                4 + len
            )));
        }
        let crc = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let msg = &b[4..4 + len];
        self.buf = &b[4 + len..];
        if crc32c::crc32c(msg) != crc {
            return Some(Err("frame checksum mismatch".into()));
        }
        Some(Ok(msg))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use m3query_chunkenc::XorIterator;
    use m3query_storage::Appendable;
    use m3query_storage::memory::MemStorage;

    fn store() -> MemStorage {
        let s = MemStorage::new();
        let mut app = s.appender();
        for i in 0..3 {
            let l = Labels::from_pairs([
                ("__name__", "up".to_string()),
                ("instance", format!("i{i}")),
            ]);
            for t in 0..1000 {
                app.append(&l, t * 15_000, (t * i) as f64).expect("append");
            }
        }
        app.commit().expect("commit");
        s
    }

    fn query(start: i64, end: i64, name: &str) -> prompb::Query {
        prompb::Query {
            start_timestamp_ms: start,
            end_timestamp_ms: end,
            matchers: vec![prompb::LabelMatcher {
                r#type: prompb::label_matcher::Type::Eq as i32,
                name: "__name__".into(),
                value: name.into(),
            }],
            hints: None,
        }
    }

    #[test]
    fn samples_response_honours_time_range_and_queries() {
        let s = store();
        let req = prompb::ReadRequest {
            queries: vec![query(15_000, 45_000, "up"), query(0, 1, "nope")],
            accepted_response_types: vec![],
        };
        assert_eq!(negotiate(&req).expect("neg"), ResponseType::Samples);
        let body =
            read_samples(&s, &Context::background(), &req, &ReadLimits::default()).expect("read");
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .expect("snappy");
        let resp = prompb::ReadResponse::decode(raw.as_slice()).expect("decode");
        assert_eq!(resp.results.len(), 2);
        assert_eq!(resp.results[0].timeseries.len(), 3);
        assert!(
            resp.results[0]
                .timeseries
                .iter()
                .all(|t| t.samples.len() == 3)
        );
        assert!(resp.results[1].timeseries.is_empty());
        let limited = ReadLimits {
            max_samples: 5,
            ..Default::default()
        };
        assert!(matches!(
            read_samples(&s, &Context::background(), &req, &limited),
            Err(ReadError::LimitExceeded(_))
        ));
    }

    #[test]
    fn streamed_frames_are_bounded_and_decode() {
        let s = store();
        let req = prompb::ReadRequest {
            queries: vec![query(0, i64::MAX, "up")],
            accepted_response_types: vec![
                prompb::read_request::ResponseType::StreamedXorChunks as i32,
            ],
        };
        assert_eq!(
            negotiate(&req).expect("neg"),
            ResponseType::StreamedXorChunks
        );
        let limits = ReadLimits {
            max_frame_bytes: 600,
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut frames = 0;
        stream_chunks(&s, &Context::background(), &req, &limits, &mut |f| {
            frames += 1;
            out.extend_from_slice(&f);
            Ok(())
        })
        .expect("stream");
        assert!(frames > 3, "series split across frames: {frames}");
        let mut r = FrameReader::new(&out);
        let mut per_series: std::collections::BTreeMap<String, Vec<(i64, f64)>> =
            Default::default();
        while let Some(f) = r.next_frame() {
            let msg = f.expect("frame");
            assert!(msg.len() <= 600 + 200, "frame size {}", msg.len());
            let resp = prompb::ChunkedReadResponse::decode(msg).expect("decode");
            for cs in resp.chunked_series {
                let key = String::from_utf8(cs.labels[1].value.to_vec()).expect("utf8");
                for c in cs.chunks {
                    let mut it = XorIterator::new(&c.data).expect("chunk");
                    while let Some((t, v)) = it.next_sample().expect("sample") {
                        assert!(t >= c.min_time_ms && t <= c.max_time_ms);
                        per_series.entry(key.clone()).or_default().push((t, v));
                    }
                }
            }
        }
        assert_eq!(per_series.len(), 3);
        for (k, v) in &per_series {
            assert_eq!(v.len(), 1000, "{k}");
            assert!(v.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    use m3query_chunkenc::{FloatHistogramIterator, HistogramIterator};
    use m3query_model::FloatHistogram;
    use m3query_model::histogram::{CounterResetHint, Span};

    /// An integral histogram (one layout throughout, so read-back equals written).
    fn ih(n: u64) -> FloatHistogram {
        FloatHistogram {
            schema: 1,
            zero_threshold: 0.001,
            zero_count: n as f64,
            count: 4.0 * n as f64,
            sum: 1.5 * n as f64,
            positive_spans: vec![Span::new(0, 2)],
            positive_buckets: vec![n as f64, 2.0 * n as f64],
            negative_spans: vec![Span::new(1, 1)],
            negative_buckets: vec![0.0],
            ..Default::default()
        }
    }

    fn nhcb(n: u64) -> FloatHistogram {
        FloatHistogram {
            schema: m3query_model::histogram::CUSTOM_BUCKETS_SCHEMA,
            count: 3.0 * n as f64,
            sum: n as f64,
            positive_spans: vec![Span::new(0, 2)],
            positive_buckets: vec![n as f64, 2.0 * n as f64],
            custom_values: vec![0.25],
            ..Default::default()
        }
    }

    /// `h{kind="mixed"}`: floats, then 200 integral histograms (a counter reset at 150),
    /// then fractional ones, then a stale marker; `h{kind="nhcb"}`: custom buckets.
    pub(crate) fn hist_store() -> (MemStorage, Vec<(i64, FloatHistogram)>) {
        let s = MemStorage::new();
        let mut app = s.appender();
        let l = Labels::from_pairs([("__name__", "h"), ("kind", "mixed")]);
        let mut want = Vec::new();
        for t in 0..10 {
            app.append(&l, t * 1000, t as f64).expect("append");
        }
        for k in 0..200u64 {
            let t = 10_000 + k as i64 * 1000;
            let mut h = ih(if k < 150 { k + 1 } else { k - 149 });
            if k == 150 {
                h.counter_reset_hint = CounterResetHint::CounterReset;
            }
            app.append_histogram(&l, t, &h).expect("append");
            want.push((t, h));
        }
        for k in 0..5 {
            let t = 300_000 + k * 1000;
            let mut h = ih(60);
            h.mul(0.25 + k as f64);
            h.sum += 0.125;
            h.count += 0.5;
            h.positive_buckets[0] += 0.5;
            app.append_histogram(&l, t, &h).expect("append");
            want.push((t, h));
        }
        let stale = HistogramSample::stale(400_000);
        app.append_histogram(&l, 400_000, &stale.h).expect("append");
        want.push((400_000, (*stale.h).clone()));
        let c = Labels::from_pairs([("__name__", "h"), ("kind", "nhcb")]);
        for k in 0..3 {
            app.append_histogram(&c, k * 1000, &nhcb(k as u64 + 1))
                .expect("append");
        }
        app.commit().expect("commit");
        (s, want)
    }

    fn same(got: &[(i64, FloatHistogram)], want: &[(i64, FloatHistogram)]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g, w, "at {}", w.0);
        }
    }

    #[test]
    fn samples_responses_carry_histograms_in_their_kind() {
        let (s, want) = hist_store();
        let req = prompb::ReadRequest {
            queries: vec![query(0, i64::MAX, "h")],
            accepted_response_types: vec![],
        };
        let body =
            read_samples(&s, &Context::background(), &req, &ReadLimits::default()).expect("read");
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .expect("snappy");
        let resp = prompb::ReadResponse::decode(raw.as_slice()).expect("decode");
        let ts = &resp.results[0].timeseries;
        assert_eq!(ts.len(), 2);
        let mixed = ts
            .iter()
            .find(|t| t.labels.iter().any(|l| &l.value[..] == b"mixed"))
            .expect("mixed");
        assert_eq!(mixed.samples.len(), 10);
        let got: Vec<(i64, FloatHistogram)> = mixed
            .histograms
            .iter()
            .map(|h| match crate::histogram::v1::from_proto(h) {
                crate::histogram::HistogramSample::Int(t, h) => (t, h.to_float()),
                crate::histogram::HistogramSample::Float(t, h) => (t, h),
            })
            .collect();
        same(&got, &want);
        // Integral ones (and the stale marker) go as integer histograms, as Prometheus sends
        // scraped ones; fractional ones as float histograms.
        let ints = mixed
            .histograms
            .iter()
            .filter(|h| matches!(h.count, Some(prompb::histogram::Count::CountInt(_))))
            .count();
        assert_eq!(ints, 201);
        // Histogram samples count towards the sample limit.
        let limited = ReadLimits {
            max_samples: 100,
            ..Default::default()
        };
        assert!(matches!(
            read_samples(&s, &Context::background(), &req, &limited),
            Err(ReadError::LimitExceeded(_))
        ));
    }

    #[test]
    fn streamed_chunks_carry_histogram_chunks_in_time_order() {
        let (s, want) = hist_store();
        let req = prompb::ReadRequest {
            queries: vec![query(0, i64::MAX, "h")],
            accepted_response_types: vec![
                prompb::read_request::ResponseType::StreamedXorChunks as i32,
            ],
        };
        let mut out = Vec::new();
        stream_chunks(
            &s,
            &Context::background(),
            &req,
            &ReadLimits::default(),
            &mut |f| {
                out.extend_from_slice(&f);
                Ok(())
            },
        )
        .expect("stream");
        let mut r = FrameReader::new(&out);
        let mut kinds = Vec::new();
        let mut got = Vec::new();
        let mut floats = 0;
        let mut last_t = i64::MIN;
        while let Some(f) = r.next_frame() {
            let resp = prompb::ChunkedReadResponse::decode(f.expect("frame")).expect("decode");
            for cs in resp.chunked_series {
                if cs.labels.iter().any(|l| &l.value[..] == b"nhcb") {
                    assert_eq!(cs.chunks.len(), 1);
                    assert_eq!(
                        cs.chunks[0].r#type,
                        prompb::chunk::Encoding::Histogram as i32
                    );
                    continue;
                }
                for c in cs.chunks {
                    assert!(c.min_time_ms > last_t, "chunks in time order");
                    last_t = c.max_time_ms;
                    use prompb::chunk::Encoding as E;
                    let kind = E::try_from(c.r#type).expect("known");
                    let mut n = 0;
                    match kind {
                        E::Xor => {
                            let mut it = XorIterator::new(&c.data).expect("chunk");
                            while it.next_sample().expect("sample").is_some() {
                                floats += 1;
                                n += 1;
                            }
                        }
                        E::Histogram => {
                            let mut it = HistogramIterator::new(&c.data).expect("chunk");
                            while let Some((t, h)) = it.next_histogram().expect("h") {
                                got.push((t, h.to_float()));
                                n += 1;
                            }
                        }
                        E::FloatHistogram => {
                            let mut it = FloatHistogramIterator::new(&c.data).expect("chunk");
                            while let Some((t, h)) = it.next_histogram().expect("h") {
                                got.push((t, h));
                                n += 1;
                            }
                        }
                        E::Unknown => panic!("unknown chunk"),
                    }
                    assert!(n <= TARGET_SAMPLES_PER_CHUNK);
                    kinds.push((kind, n));
                }
            }
        }
        assert_eq!(floats, 10);
        same(&got, &want);
        use prompb::chunk::Encoding as E;
        // Floats; integer histograms cut at 120 and at the counter reset (150); the
        // fractional run and the stale marker after it in one float histogram chunk.
        assert_eq!(
            kinds,
            vec![
                (E::Xor, 10),
                (E::Histogram, 120),
                (E::Histogram, 30),
                (E::Histogram, 50),
                (E::FloatHistogram, 6),
            ]
        );
    }

    #[test]
    fn corrupt_frames_are_detected() {
        let mut f = frame(b"hello");
        let n = f.len();
        f[n - 1] ^= 1;
        assert!(FrameReader::new(&f).next_frame().expect("one").is_err());
        assert!(
            FrameReader::new(&f[..3])
                .next_frame()
                .expect("one")
                .is_err()
        );
    }

    #[test]
    fn bad_requests() {
        let s = store();
        let mut q = query(0, 10, "up");
        q.matchers[0].r#type = prompb::label_matcher::Type::Re as i32;
        q.matchers[0].value = "(".into();
        let req = prompb::ReadRequest {
            queries: vec![q],
            accepted_response_types: vec![],
        };
        assert!(matches!(
            read_samples(&s, &Context::background(), &req, &ReadLimits::default()),
            Err(ReadError::BadRequest(_))
        ));
        let req = prompb::ReadRequest {
            queries: vec![],
            accepted_response_types: vec![7],
        };
        assert!(negotiate(&req).is_err());
        assert!(decode_request(b"junk", 100).is_err());
    }
}
