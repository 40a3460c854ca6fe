//! Remote write receiving: Prometheus remote write 1.0 (`prometheus.WriteRequest`) and 2.0
//! (`io.prometheus.write.v2.Request`), snappy block-compressed.
//!
//! What a request may hold and what happens to it:
//! - float samples are appended; a sample the store refuses (out of order, too old, duplicate)
//!   is counted and skipped, and the rest of the batch is still written;
//! - a series with invalid labels (no metric name, empty or duplicate label names, invalid
//!   UTF-8, a 2.0 symbol reference out of range) is counted and skipped;
//! - native histogram samples (integer or float counts, any schema including custom buckets)
//!   are validated as Prometheus validates them and appended; an invalid one, or one the store
//!   refuses (out of order, or a store that holds no histograms), is counted and skipped like
//!   a refused float sample;
//! - exemplars and metadata are decoded and returned to the caller, which stores them.
//!
//! [`Outcome::refusal`] summarises what was refused; the HTTP layer answers 400 with it, since
//! Prometheus drops (does not retry) 4xx, and retrying a refused sample could never succeed.

use std::fmt::Write as _;

use m3query_model::histogram::{EXPONENTIAL_SCHEMA_MAX, EXPONENTIAL_SCHEMA_MAX_RESERVED};
use m3query_model::{Exemplar, LabelPairs, Labels, METRIC_NAME, Metadata, MetricType};
use m3query_storage::{Appender, Error as StorageError};
use prost::Message;

use crate::histogram::HistogramSample as WireHistogram;
use crate::prompb::{self, v2};

/// Which protobuf a remote-write request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Remote write 1.0: `prometheus.WriteRequest`.
    V1,
    /// Remote write 2.0: `io.prometheus.write.v2.Request`.
    V2,
}

/// Errors that refuse a whole write request.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A `Content-Type` that names neither protocol (HTTP 415).
    #[error(
        "unsupported content type {0:?}: send application/x-protobuf with proto=prometheus.WriteRequest or proto=io.prometheus.write.v2.Request"
    )]
    UnsupportedMediaType(String),
    /// A `Content-Encoding` other than snappy (HTTP 415).
    #[error("unsupported content encoding {0:?}: remote write bodies must be snappy-compressed")]
    UnsupportedEncoding(String),
    /// The body is not valid snappy.
    #[error("snappy decompression failed: {0}")]
    Snappy(String),
    #[error("request body decompresses to {size} bytes, over the {limit}-byte limit")]
    /// The body decompresses to more than the limit (HTTP 413).
    TooLarge {
        /// Decompressed size, bytes.
        size: usize,
        /// The limit, bytes.
        limit: usize,
    },
    /// The snappy header claims more than the compressed bytes can possibly hold: refused
    /// before allocating, so a few bytes cannot make the server reserve hundreds of MiB.
    #[error(
        "snappy header claims {claimed} bytes, but {compressed} compressed bytes decode to at most {max} bytes"
    )]
    ImpossibleLength {
        /// The length the header claims.
        claimed: usize,
        /// The compressed body's length.
        compressed: usize,
        /// The most that body can decode to.
        max: usize,
    },
    /// A non-empty body that held no series and no metadata: almost always a body of one
    /// protocol version sent with the other version's content type, which would otherwise be
    /// acknowledged while nothing was written.
    #[error(
        "the request body holds no series and no metadata when decoded as {expected} (from its Content-Type); {hint}"
    )]
    NothingDecoded {
        /// The message the Content-Type announced.
        expected: &'static str,
        /// What to check, for the sender's operator.
        hint: &'static str,
    },
    #[error("cannot decode {what}: {reason}")]
    /// The protobuf does not decode.
    Decode {
        /// The message or field being decoded.
        what: &'static str,
        /// The decoder's error.
        reason: String,
    },
    /// The store failed outside per-sample refusals.
    #[error("writing to storage: {0}")]
    Storage(#[from] StorageError),
}

/// Picks the protocol from `Content-Type`, as Prometheus does: none or plain
/// `application/x-protobuf` is 1.0; a `proto=` parameter selects the message.
pub fn negotiate(content_type: Option<&str>) -> Result<Protocol, WriteError> {
    let Some(ct) = content_type.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(Protocol::V1);
    };
    let mut parts = ct.split(';').map(str::trim);
    let media = parts.next().unwrap_or_default();
    if !media.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(WriteError::UnsupportedMediaType(ct.to_string()));
    }
    for p in parts {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("proto")
        {
            return match v.trim().trim_matches('"') {
                "prometheus.WriteRequest" => Ok(Protocol::V1),
                "io.prometheus.write.v2.Request" => Ok(Protocol::V2),
                _ => Err(WriteError::UnsupportedMediaType(ct.to_string())),
            };
        }
    }
    Ok(Protocol::V1)
}

/// Checks `Content-Encoding`: absent (Prometheus 2.x clients send snappy without always
/// saying so) or `snappy`.
pub fn check_encoding(content_encoding: Option<&str>) -> Result<(), WriteError> {
    match content_encoding.map(str::trim) {
        None | Some("") => Ok(()),
        Some(e) if e.eq_ignore_ascii_case("snappy") => Ok(()),
        Some(e) => Err(WriteError::UnsupportedEncoding(e.to_string())),
    }
}

/// The most bytes `n` bytes of snappy elements (after the length header) can decode to.
///
/// Every element of a snappy block is a literal (a tag byte, maybe length bytes, then the
/// bytes themselves: never more out than in) or a copy: 2 bytes for up to 11 bytes out
/// (1-byte offset), 3 bytes for up to 64 (2-byte offset), 5 bytes for up to 64 (4-byte
/// offset). The best ratio is 64 out per 3 in, so `n` bytes yield at most `ceil(n * 64 / 3)`.
pub fn snappy_max_decoded_len(n: usize) -> usize {
    n.saturating_mul(64).div_ceil(3)
}

/// The decompressed length a snappy block declares, checked against `limit` and against what
/// the block can really hold, before anything is allocated.
pub fn snappy_checked_len(body: &[u8], limit: usize) -> Result<usize, WriteError> {
    let claimed = snap::raw::decompress_len(body).map_err(|e| WriteError::Snappy(e.to_string()))?;
    // decompress_len succeeded, so the header is a well-formed varint: its bytes are those
    // with the high bit set, plus the last one.
    let header = body.iter().take_while(|b| **b >= 0x80).count() + 1;
    let compressed = body.len().saturating_sub(header);
    let max = snappy_max_decoded_len(compressed);
    if claimed > max {
        return Err(WriteError::ImpossibleLength {
            claimed,
            compressed,
            max,
        });
    }
    if claimed > limit {
        return Err(WriteError::TooLarge {
            size: claimed,
            limit,
        });
    }
    Ok(claimed)
}

/// Snappy block decompression that refuses, before allocating, bodies that would decompress
/// to more than `limit` bytes or more than the body can hold ([`snappy_checked_len`]).
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, WriteError> {
    let mut out = Vec::new();
    decompress_into(body, limit, &mut out)?;
    Ok(out)
}

/// [`decompress`] into a caller's buffer (replacing its contents), so a request worker can
/// reuse one buffer instead of allocating a fresh one per request.
pub fn decompress_into(body: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), WriteError> {
    let size = snappy_checked_len(body, limit)?;
    out.clear();
    out.resize(size, 0);
    let n = snap::raw::Decoder::new()
        .decompress(body, out)
        .map_err(|e| WriteError::Snappy(e.to_string()))?;
    out.truncate(n);
    Ok(())
}

/// Counts of what a request held and what became of it.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Samples stored.
    pub samples_written: u64,
    /// Native histogram samples stored.
    pub histograms_written: u64,
    /// Exemplars kept (set by the caller, which stores them).
    pub exemplars_written: u64,
    /// Samples refused as out of order.
    pub out_of_order: u64,
    /// Samples refused as too old or out of bounds (retention included).
    pub too_old: u64,
    /// Samples refused for being too far ahead of the store's clock.
    pub too_far_in_future: u64,
    /// Samples refused as duplicates with another value.
    pub duplicate: u64,
    /// Series refused for invalid labels.
    pub invalid_series: u64,
    /// Samples carried by series refused for invalid labels.
    pub invalid_series_samples: u64,
    /// Native histogram samples refused as invalid (Prometheus's histogram validation).
    pub histograms_invalid: u64,
    /// Native histogram samples the store refused outright (a store that holds no
    /// histograms); refusals of the kinds floats have (out of order, too old) are counted
    /// with the floats'.
    pub histograms_refused: u64,
    /// Series and metadata entries the request held, valid or not.
    pub series_received: u64,
    /// Metadata entries the request held.
    pub metadata_received: u64,
    /// The first refusal of each kind, for the error message.
    examples: Vec<String>,
    /// Metadata by metric family name, to be stored by the caller.
    pub metadata: Vec<(String, Metadata)>,
    /// Exemplars with their series, to be stored by the caller.
    pub exemplars: Vec<(Labels, Exemplar)>,
}

impl Outcome {
    /// `None` when everything in the request was accepted; otherwise a message saying how
    /// much was refused and why.
    pub fn refusal(&self) -> Option<String> {
        let mut parts = Vec::new();
        let mut add = |n: u64, what: &str| {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        };
        add(self.out_of_order, "out of order samples");
        add(self.too_old, "too old samples (out of bounds)");
        add(self.too_far_in_future, "samples too far in the future");
        add(
            self.duplicate,
            "duplicate samples for a timestamp with a different value",
        );
        add(self.invalid_series, "series with invalid labels");
        add(self.histograms_invalid, "invalid native histogram samples");
        add(
            self.histograms_refused,
            "native histogram samples the store does not accept",
        );
        if parts.is_empty() {
            return None;
        }
        let mut msg = format!("{} samples ", self.samples_written);
        if self.histograms_written > 0 {
            let _ = write!(
                msg,
                "and {} native histogram samples ",
                self.histograms_written
            );
        }
        let _ = write!(msg, "written; refused: {}", parts.join(", "));
        if !self.examples.is_empty() {
            let _ = write!(msg, " (first: {})", self.examples.join("; "));
        }
        Some(msg)
    }

    /// Samples refused for any reason.
    pub fn samples_refused(&self) -> u64 {
        self.out_of_order
            + self.too_old
            + self.too_far_in_future
            + self.duplicate
            + self.invalid_series_samples
    }

    fn example(&mut self, s: String) {
        // One example per kind is enough to act on; keep messages short.
        if self.examples.len() < 5 {
            self.examples.push(s);
        }
    }

    /// Appends one sample, accounting for per-sample refusals. Other errors abort the request.
    fn append(
        &mut self,
        app: &mut dyn Appender,
        labels: &Labels,
        t: i64,
        v: f64,
    ) -> Result<(), StorageError> {
        match app.append(labels, t, v) {
            Ok(()) => {
                self.samples_written += 1;
                Ok(())
            }
            Err(e) if e.is_sample_error() => {
                self.refused_sample(&e, t, || labels.to_string());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Appends one native histogram sample of `labels`: schemas Prometheus reserves above 8
    /// are reduced to 8 (as its remote-write handler does), the histogram is validated, and
    /// integer histograms go to [`Appender::append_int_histogram`] so stores can keep them
    /// in integer chunks. Refusals are counted; other store errors abort the request.
    fn append_histogram(
        &mut self,
        app: &mut dyn Appender,
        labels: &Labels,
        h: WireHistogram,
    ) -> Result<(), StorageError> {
        let reserved = EXPONENTIAL_SCHEMA_MAX + 1..=EXPONENTIAL_SCHEMA_MAX_RESERVED;
        let (t, r) = match h {
            WireHistogram::Int(t, mut h) => {
                let valid = if reserved.contains(&h.schema) {
                    h.reduce_resolution(EXPONENTIAL_SCHEMA_MAX)
                } else {
                    Ok(())
                }
                .and_then(|()| h.validate());
                (t, valid.map(|()| app.append_int_histogram(labels, t, &h)))
            }
            WireHistogram::Float(t, mut h) => {
                let valid = if reserved.contains(&h.schema) {
                    h.reduce_resolution(EXPONENTIAL_SCHEMA_MAX)
                } else {
                    Ok(())
                }
                .and_then(|()| h.validate());
                (t, valid.map(|()| app.append_histogram(labels, t, &h)))
            }
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.histograms_invalid += 1;
                if self.histograms_invalid == 1 {
                    self.example(format!("{e} for series {labels} at timestamp {t}"));
                }
                return Ok(());
            }
        };
        match r {
            Ok(()) => {
                self.histograms_written += 1;
                Ok(())
            }
            // A store that validates beyond what was checked here: counted as invalid,
            // as the histograms refused above.
            Err(StorageError::InvalidSample(why)) => {
                self.histograms_invalid += 1;
                if self.histograms_invalid == 1 {
                    self.example(format!("{why} for series {labels} at timestamp {t}"));
                }
                Ok(())
            }
            Err(e) if e.is_sample_error() => {
                if self.count_refusal(&e) {
                    self.example(format!(
                        "{e} (native histogram) for series {labels} at timestamp {t}"
                    ));
                }
                Ok(())
            }
            // A store that holds no native histograms refuses each one the same way; the
            // batch's floats are still written.
            Err(StorageError::BadRequest(why)) => {
                self.histograms_refused += 1;
                if self.histograms_refused == 1 {
                    self.example(format!(
                        "{why} (native histogram for series {labels} at timestamp {t})"
                    ));
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Counts a refused sample at `t`; the first of its kind becomes an example naming the
    /// series (`series` is only called then: it may decode labels).
    fn refused_sample(&mut self, e: &StorageError, t: i64, series: impl FnOnce() -> String) {
        if self.count_refusal(e) {
            self.example(format!("{e} for series {} at timestamp {t}", series()));
        }
    }

    /// Counts a refused sample; true when it is the first of its kind.
    fn count_refusal(&mut self, e: &StorageError) -> bool {
        match e {
            StorageError::OutOfOrderSample => {
                self.out_of_order += 1;
                self.out_of_order == 1
            }
            StorageError::DuplicateSampleForTimestamp => {
                self.duplicate += 1;
                self.duplicate == 1
            }
            StorageError::TooFarInFuture(_) => {
                self.too_far_in_future += 1;
                self.too_far_in_future == 1
            }
            _ => {
                self.too_old += 1;
                self.too_old == 1
            }
        }
    }

    fn invalid(&mut self, why: String, samples: usize) {
        self.invalid_series += 1;
        self.invalid_series_samples += samples as u64;
        if self.invalid_series == 1 {
            self.example(why);
        }
    }

    /// Keeps an exemplar of `series` whose own labels are `labels`, or counts them invalid.
    fn exemplar(&mut self, series: &Labels, labels: Result<Labels, String>, value: f64, t: i64) {
        match labels {
            Ok(labels) => self
                .exemplars
                .push((series.clone(), Exemplar { labels, value, t })),
            Err(why) => self.invalid(why, 0),
        }
    }
}

/// Builds a label set from raw pairs, enforcing what a series needs: valid UTF-8, non-empty
/// unique names, and a metric name.
fn build_labels<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Result<Labels, String> {
    let mut v: Vec<(&str, &str)> = Vec::with_capacity(16);
    for (n, val) in pairs {
        let n = std::str::from_utf8(n).map_err(|_| "label name is not valid UTF-8".to_string())?;
        let val = std::str::from_utf8(val)
            .map_err(|_| format!("value of label {n:?} is not valid UTF-8"))?;
        v.push((n, val));
    }
    let labels = Labels::try_from_pairs(v)?;
    match labels.metric_name() {
        Some(name) if !name.is_empty() => Ok(labels),
        _ => Err(format!(
            "series {labels} has no metric name ({METRIC_NAME})"
        )),
    }
}

fn metric_type_v1(t: i32) -> MetricType {
    use prompb::metric_metadata::MetricType as T;
    match T::try_from(t).unwrap_or(T::Unknown) {
        T::Unknown => MetricType::Unknown,
        T::Counter => MetricType::Counter,
        T::Gauge => MetricType::Gauge,
        T::Histogram => MetricType::Histogram,
        T::Gaugehistogram => MetricType::GaugeHistogram,
        T::Summary => MetricType::Summary,
        T::Info => MetricType::Info,
        T::Stateset => MetricType::StateSet,
    }
}

fn metric_type_v2(t: i32) -> MetricType {
    use v2::metadata::MetricType as T;
    match T::try_from(t).unwrap_or(T::Unspecified) {
        T::Unspecified => MetricType::Unknown,
        T::Counter => MetricType::Counter,
        T::Gauge => MetricType::Gauge,
        T::Histogram => MetricType::Histogram,
        T::Gaugehistogram => MetricType::GaugeHistogram,
        T::Summary => MetricType::Summary,
        T::Info => MetricType::Info,
        T::Stateset => MetricType::StateSet,
    }
}

/// Decodes a decompressed body of the given protocol and appends it.
pub fn write(
    protocol: Protocol,
    body: &[u8],
    app: &mut dyn Appender,
) -> Result<Outcome, WriteError> {
    let out = match protocol {
        Protocol::V1 => write_v1_bytes(body, app)?,
        Protocol::V2 => {
            let req = v2::Request::decode(body).map_err(|e| WriteError::Decode {
                what: "io.prometheus.write.v2.Request",
                reason: e.to_string(),
            })?;
            write_v2(&req, app)?
        }
    };
    // Each version's fields are unknown (and so skipped) by the other's decoder: a body of the
    // wrong version decodes cleanly to nothing. Nothing was appended, so refusing is safe.
    if !body.is_empty() && out.series_received == 0 && out.metadata_received == 0 {
        return Err(match protocol {
            Protocol::V1 => WriteError::NothingDecoded {
                expected: "prometheus.WriteRequest",
                hint: "a remote write 2.0 body needs Content-Type: application/x-protobuf;proto=io.prometheus.write.v2.Request",
            },
            Protocol::V2 => WriteError::NothingDecoded {
                expected: "io.prometheus.write.v2.Request",
                hint: "a remote write 1.0 body needs Content-Type: application/x-protobuf (or proto=prometheus.WriteRequest)",
            },
        });
    }
    Ok(out)
}

/// Appends a remote write 1.0 request.
pub fn write_v1(req: &prompb::WriteRequest, app: &mut dyn Appender) -> Result<Outcome, WriteError> {
    let mut out = Outcome {
        series_received: req.timeseries.len() as u64,
        metadata_received: req.metadata.len() as u64,
        ..Outcome::default()
    };
    for ts in &req.timeseries {
        let labels = match build_labels(ts.labels.iter().map(|l| (&l.name[..], &l.value[..]))) {
            Ok(l) => l,
            Err(why) => {
                out.invalid(why, ts.samples.len() + ts.histograms.len());
                continue;
            }
        };
        for s in &ts.samples {
            out.append(app, &labels, s.timestamp, s.value)?;
        }
        for h in &ts.histograms {
            out.append_histogram(app, &labels, crate::histogram::v1::from_proto(h))?;
        }
        for e in &ts.exemplars {
            let el = build_exemplar_labels(e.labels.iter().map(|l| (&l.name[..], &l.value[..])));
            out.exemplar(&labels, el, e.value, e.timestamp);
        }
    }
    for m in &req.metadata {
        if m.metric_family_name.is_empty() {
            continue;
        }
        out.metadata.push((
            m.metric_family_name.clone(),
            Metadata {
                metric_type: metric_type_v1(m.r#type),
                help: m.help.clone(),
                unit: m.unit.clone(),
            },
        ));
    }
    Ok(out)
}

/// Protobuf wire reading for [`write_v1_bytes`]: just what `prometheus.WriteRequest` needs,
/// with prost's rules (unknown fields skipped, last value of a repeated scalar wins, wrong wire
/// types and truncation are errors).
mod wire {
    pub(super) type R<T> = Result<T, &'static str>;

    pub(super) struct Reader<'a> {
        pub(super) buf: &'a [u8],
        pub(super) pos: usize,
    }

    impl<'a> Reader<'a> {
        pub(super) fn new(buf: &'a [u8]) -> Self {
            Reader { buf, pos: 0 }
        }

        pub(super) fn done(&self) -> bool {
            self.pos >= self.buf.len()
        }

        /// Keys, lengths and small values are single bytes: that case is inlined, the
        /// rest (timestamps, large lengths) loops.
        #[inline]
        pub(super) fn varint(&mut self) -> R<u64> {
            match self.buf.get(self.pos) {
                Some(&b) if b < 0x80 => {
                    self.pos += 1;
                    Ok(u64::from(b))
                }
                _ => self.varint_long(),
            }
        }

        #[inline(never)]
        fn varint_long(&mut self) -> R<u64> {
            let mut x = 0u64;
            for i in 0..10 {
                let Some(&b) = self.buf.get(self.pos) else {
                    return Err("buffer underflow");
                };
                self.pos += 1;
                if i == 9 && b > 1 {
                    return Err("invalid varint");
                }
                x |= u64::from(b & 0x7f) << (7 * i);
                if b < 0x80 {
                    return Ok(x);
                }
            }
            Err("invalid varint")
        }

        /// A field key: (field number, wire type).
        #[inline]
        pub(super) fn key(&mut self) -> R<(u32, u8)> {
            let k = self.varint()?;
            if k > u64::from(u32::MAX) {
                return Err("invalid key value");
            }
            let wt = (k & 7) as u8;
            let field = (k >> 3) as u32;
            if field == 0 {
                return Err("invalid tag value: 0");
            }
            if wt > 5 {
                return Err("invalid wire type value");
            }
            Ok((field, wt))
        }

        #[inline]
        pub(super) fn bytes(&mut self) -> R<&'a [u8]> {
            let n = self.varint()?;
            let n = usize::try_from(n).map_err(|_| "buffer underflow")?;
            let end = self.pos.checked_add(n).ok_or("buffer underflow")?;
            let b = self.buf.get(self.pos..end).ok_or("buffer underflow")?;
            self.pos = end;
            Ok(b)
        }

        #[inline]
        pub(super) fn fixed64(&mut self) -> R<u64> {
            let b = self
                .buf
                .get(self.pos..self.pos + 8)
                .ok_or("buffer underflow")?;
            self.pos += 8;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(u64::from_le_bytes(a))
        }

        /// Skips a field of wire type `wt` (field `field`, for matching a group's end).
        pub(super) fn skip(&mut self, field: u32, wt: u8) -> R<()> {
            match wt {
                0 => self.varint().map(|_| ()),
                1 => self.fixed64().map(|_| ()),
                2 => self.bytes().map(|_| ()),
                3 => loop {
                    let (f, w) = self.key()?;
                    if w == 4 {
                        return if f == field {
                            Ok(())
                        } else {
                            Err("unexpected end group tag")
                        };
                    }
                    self.skip(f, w)?;
                },
                5 => {
                    let end = self.pos + 4;
                    if end > self.buf.len() {
                        return Err("buffer underflow");
                    }
                    self.pos = end;
                    Ok(())
                }
                _ => Err("unexpected end group tag"),
            }
        }

        /// Checks the wire type of a known field.
        #[inline]
        pub(super) fn expect(wt: u8, want: u8) -> R<()> {
            if wt == want {
                Ok(())
            } else {
                Err("invalid wire type")
            }
        }
    }
}

/// Reusable buffers for decoding one series of a request.
#[derive(Default)]
struct V1Scratch<'a> {
    /// The series' `Label` messages (payload, offset of the payload in the series' bytes),
    /// decoded into `raw` only when the store does not know the series by `key`.
    label_msgs: Vec<(&'a [u8], usize)>,
    /// The label fields' bytes (keys, lengths and payloads), when nothing else is between
    /// them: what [`Appender::append_samples_by_key`] knows a series by.
    key: Option<&'a [u8]>,
    raw: Vec<RawLabel<'a>>,
    /// The bytes from the first label's payload to the end of the last one's (empty when
    /// the series has no labels): checked as UTF-8 once rather than string by string.
    label_span: &'a [u8],
    pairs: Vec<(&'a str, &'a str)>,
    samples: Vec<m3query_model::Sample>,
    exemplars: Vec<&'a [u8]>,
    histograms: Vec<&'a [u8]>,
}

/// The raw pairs as strings cut from `span` (the series' label bytes, which hold every
/// non-empty name and value), validated as UTF-8 in one pass over `span` instead of one call
/// per string (the strings are short: the call, not the scan, is the cost). False when
/// `span` is not valid UTF-8 or a string does not start and end on a character boundary in
/// it: the caller then checks string by string, which finds the invalid one.
fn strs_in_span<'a>(
    raw: &[RawLabel<'a>],
    span: &'a [u8],
    pairs: &mut Vec<(&'a str, &'a str)>,
) -> bool {
    let Ok(text) = std::str::from_utf8(span) else {
        return false;
    };
    let base = span.as_ptr() as usize;
    // Where `b` lies in `span`, as a string of `text`; "" for an empty field (which may be
    // a default, not a slice of the request).
    let cut = |b: &[u8]| -> Option<&'a str> {
        if b.is_empty() {
            return Some("");
        }
        let start = (b.as_ptr() as usize).checked_sub(base)?;
        text.get(start..start.checked_add(b.len())?)
    };
    for &(n, v) in raw {
        let (Some(n), Some(v)) = (cut(n), cut(v)) else {
            return false;
        };
        pairs.push((n, v));
    }
    true
}

/// Checks raw label pairs as [`build_labels`] does, leaving them in `pairs` sorted, without
/// empty values. On refusal, the message [`build_labels`] would give.
fn check_pairs<'a>(
    raw: &[RawLabel<'a>],
    span: &'a [u8],
    pairs: &mut Vec<(&'a str, &'a str)>,
) -> Result<(), String> {
    pairs.clear();
    if !strs_in_span(raw, span, pairs) {
        pairs.clear();
        for &(n, v) in raw {
            let n =
                std::str::from_utf8(n).map_err(|_| "label name is not valid UTF-8".to_string())?;
            let v = std::str::from_utf8(v)
                .map_err(|_| format!("value of label {n:?} is not valid UTF-8"))?;
            pairs.push((n, v));
        }
    }
    if !pairs.windows(2).all(|w| w[0].0 < w[1].0) {
        pairs.sort_unstable();
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("duplicate label name {:?}", w[0].0));
        }
    }
    if pairs.iter().any(|(n, _)| n.is_empty()) {
        return Err("empty label name".to_string());
    }
    pairs.retain(|(_, v)| !v.is_empty());
    if !pairs.iter().any(|(n, _)| *n == METRIC_NAME) {
        let labels = Labels::from_pairs(pairs.iter().copied());
        return Err(format!(
            "series {labels} has no metric name ({METRIC_NAME})"
        ));
    }
    Ok(())
}

fn decode_err(reason: impl Into<String>) -> WriteError {
    WriteError::Decode {
        what: "prometheus.WriteRequest",
        reason: reason.into(),
    }
}

/// Appends a remote write 1.0 request straight from its protobuf bytes: labels and samples
/// are read in place into reused buffers and handed to [`Appender::append_samples`], so the
/// hot path builds no message structs and no label set (a store looks the series up by the
/// borrowed pairs). Behaves as decoding with prost and calling [`write_v1`]; a malformed
/// request is refused whole (the caller rolls the appender back).
pub fn write_v1_bytes(body: &[u8], app: &mut dyn Appender) -> Result<Outcome, WriteError> {
    use wire::Reader;
    let mut out = Outcome::default();
    let mut sc = V1Scratch::default();
    let mut r = Reader::new(body);
    while !r.done() {
        let (field, wt) = r.key().map_err(decode_err)?;
        match field {
            1 => {
                Reader::expect(wt, 2).map_err(decode_err)?;
                let ts = r.bytes().map_err(decode_err)?;
                out.series_received += 1;
                decode_series(ts, &mut sc).map_err(decode_err)?;
                append_series(ts, &mut sc, app, &mut out)?;
            }
            3 => {
                Reader::expect(wt, 2).map_err(decode_err)?;
                let m = prompb::MetricMetadata::decode(r.bytes().map_err(decode_err)?)
                    .map_err(|e| decode_err(e.to_string()))?;
                out.metadata_received += 1;
                if m.metric_family_name.is_empty() {
                    continue;
                }
                out.metadata.push((
                    m.metric_family_name,
                    Metadata {
                        metric_type: metric_type_v1(m.r#type),
                        help: m.help,
                        unit: m.unit,
                    },
                ));
            }
            _ => r.skip(field, wt).map_err(decode_err)?,
        }
    }
    Ok(out)
}

/// Reads one `TimeSeries` into the scratch buffers.
fn decode_series<'a>(ts: &'a [u8], sc: &mut V1Scratch<'a>) -> wire::R<()> {
    use wire::Reader;
    sc.label_msgs.clear();
    sc.raw.clear();
    sc.samples.clear();
    sc.exemplars.clear();
    sc.histograms.clear();
    sc.label_span = &[];
    // The label fields' extent, and whether another field came between two of them.
    let (mut key_start, mut key_end) = (0, 0);
    let (mut other_after_label, mut contiguous) = (false, true);
    let mut r = Reader::new(ts);
    while !r.done() {
        let at = r.pos;
        let (field, wt) = r.key()?;
        if field != 1 && !sc.label_msgs.is_empty() {
            other_after_label = true;
        }
        match field {
            1 => {
                Reader::expect(wt, 2)?;
                let lb = r.bytes()?;
                if sc.label_msgs.is_empty() {
                    key_start = at;
                } else if other_after_label {
                    contiguous = false;
                }
                key_end = r.pos;
                // `r.pos` is the end of the label's payload, `lb.len()` bytes long.
                sc.label_msgs.push((lb, r.pos - lb.len()));
            }
            2 => {
                Reader::expect(wt, 2)?;
                let sb = r.bytes()?;
                if let Some(s) = plain_sample(sb) {
                    sc.samples.push(s);
                    continue;
                }
                let mut x = Reader::new(sb);
                let (mut v, mut t) = (0u64, 0i64);
                while !x.done() {
                    let (f, w) = x.key()?;
                    match f {
                        1 => {
                            Reader::expect(w, 1)?;
                            v = x.fixed64()?;
                        }
                        2 => {
                            Reader::expect(w, 0)?;
                            t = x.varint()? as i64;
                        }
                        _ => x.skip(f, w)?,
                    }
                }
                sc.samples.push(m3query_model::Sample {
                    t,
                    v: f64::from_bits(v),
                });
            }
            3 => {
                Reader::expect(wt, 2)?;
                sc.exemplars.push(r.bytes()?);
            }
            4 => {
                Reader::expect(wt, 2)?;
                sc.histograms.push(r.bytes()?);
            }
            _ => r.skip(field, wt)?,
        }
    }
    sc.key = if contiguous && !sc.label_msgs.is_empty() {
        ts.get(key_start..key_end)
    } else {
        None
    };
    Ok(())
}

/// Decodes the series' `Label` messages into `sc.raw` (and `sc.label_span`).
fn decode_labels<'a>(ts: &'a [u8], sc: &mut V1Scratch<'a>) -> wire::R<()> {
    use wire::Reader;
    let mut span: Option<(usize, usize)> = None;
    for &(lb, start) in &sc.label_msgs {
        span = Some((span.map_or(start, |s| s.0), start + lb.len()));
        let mut l = Reader::new(lb);
        let (mut name, mut value): (&[u8], &[u8]) = (&[], &[]);
        while !l.done() {
            let (f, w) = l.key()?;
            match f {
                1 => {
                    Reader::expect(w, 2)?;
                    name = l.bytes()?;
                }
                2 => {
                    Reader::expect(w, 2)?;
                    value = l.bytes()?;
                }
                _ => l.skip(f, w)?,
            }
        }
        sc.raw.push((name, value));
    }
    sc.label_span = span.and_then(|(a, b)| ts.get(a..b)).unwrap_or_default();
    Ok(())
}

/// The labels of a series the store knew by its key (so they decode and passed the
/// checks), as text for an error message.
fn key_labels_text(label_msgs: &[(&[u8], usize)]) -> String {
    let mut sc = V1Scratch::default();
    sc.label_msgs.extend_from_slice(label_msgs);
    if decode_labels(&[], &mut sc).is_err() {
        return "{?}".into();
    }
    let pairs = sc
        .raw
        .iter()
        .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v)));
    Labels::from_pairs(pairs).to_string()
}

/// A `Sample` message as every Prometheus-compatible sender writes it: the value (field 1,
/// fixed64), then the timestamp (field 2, a varint) ending the message. Read without the
/// generic field loop, which is most of a request's decoding (a request is mostly samples);
/// anything else (a field left out because it is zero, other order, unknown fields, a
/// malformed varint) returns `None` for the generic decoder to read or refuse.
#[inline]
fn plain_sample(b: &[u8]) -> Option<m3query_model::Sample> {
    let (head, ts) = b.split_first_chunk::<10>()?;
    if head[0] != 0x09 || head[9] != 0x10 || ts.is_empty() || ts.len() > 10 {
        return None;
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&head[1..9]);
    let mut t = 0u64;
    for (i, &byte) in ts.iter().enumerate() {
        let last = i + 1 == ts.len();
        // Each byte but the last has its continuation bit set; the 10th carries one bit.
        if (byte < 0x80) != last || (i == 9 && byte > 1) {
            return None;
        }
        t |= u64::from(byte & 0x7f) << (7 * i);
    }
    Some(m3query_model::Sample {
        t: t as i64,
        v: f64::from_bits(u64::from_le_bytes(v)),
    })
}

/// Appends the series in the scratch buffers, as [`write_v1`] does for one `TimeSeries`.
fn append_series<'a>(
    ts: &'a [u8],
    sc: &mut V1Scratch<'a>,
    app: &mut dyn Appender,
    out: &mut Outcome,
) -> Result<(), WriteError> {
    // A plain float series the store knows by its label bytes: no label decoding or checks.
    let plain = sc.exemplars.is_empty() && sc.histograms.is_empty();
    let key = sc.key.filter(|_| plain);
    if let Some(key) = key {
        let mut refused = 0u64;
        let known = app.append_samples_by_key(key, &sc.samples, &mut |i, e| {
            refused += 1;
            let t = sc.samples.get(i).map_or(0, |s| s.t);
            out.refused_sample(&e, t, || key_labels_text(&sc.label_msgs));
        })?;
        if known {
            out.samples_written += sc.samples.len() as u64 - refused;
            return Ok(());
        }
    }
    decode_labels(ts, sc).map_err(decode_err)?;
    // Exemplars and histograms are rare: decode them with prost, which also checks them as
    // decoding the whole request would.
    let mut exemplars = Vec::with_capacity(sc.exemplars.len());
    for e in &sc.exemplars {
        exemplars.push(prompb::Exemplar::decode(*e).map_err(|e| decode_err(e.to_string()))?);
    }
    let mut histograms = Vec::with_capacity(sc.histograms.len());
    for h in &sc.histograms {
        histograms.push(prompb::Histogram::decode(*h).map_err(|e| decode_err(e.to_string()))?);
    }
    if let Err(why) = check_pairs(&sc.raw, sc.label_span, &mut sc.pairs) {
        out.invalid(why, sc.samples.len() + histograms.len());
        return Ok(());
    }
    // `check_pairs` left them sorted, names unique and non-empty, values non-empty.
    let pairs = LabelPairs::from_checked(&sc.pairs);
    let mut refused = 0u64;
    let mut on_refused = |i: usize, e: StorageError| {
        refused += 1;
        let t = sc.samples.get(i).map_or(0, |s| s.t);
        out.refused_sample(&e, t, || pairs.to_labels().to_string());
    };
    match key {
        Some(key) => app.append_samples_keyed(key, pairs, &sc.samples, &mut on_refused)?,
        None => app.append_samples(pairs, &sc.samples, &mut on_refused)?,
    }
    out.samples_written += sc.samples.len() as u64 - refused;
    if !exemplars.is_empty() || !histograms.is_empty() {
        let labels = pairs.to_labels();
        for h in &histograms {
            out.append_histogram(app, &labels, crate::histogram::v1::from_proto(h))?;
        }
        for e in exemplars {
            let el = build_exemplar_labels(e.labels.iter().map(|l| (&l.name[..], &l.value[..])));
            out.exemplar(&labels, el, e.value, e.timestamp);
        }
    }
    Ok(())
}

/// Exemplar labels may be empty and need no metric name.
fn build_exemplar_labels<'a>(
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Labels, String> {
    let mut v: Vec<(&str, &str)> = Vec::new();
    for (n, val) in pairs {
        let n = std::str::from_utf8(n).map_err(|_| "exemplar label name is not valid UTF-8")?;
        let val =
            std::str::from_utf8(val).map_err(|_| "exemplar label value is not valid UTF-8")?;
        v.push((n, val));
    }
    Labels::try_from_pairs(v)
}

/// A label as raw name and value bytes.
type RawLabel<'a> = (&'a [u8], &'a [u8]);

/// Resolves 2.0 label references into raw pairs.
fn resolve_refs<'a>(symbols: &'a [String], refs: &[u32]) -> Result<Vec<RawLabel<'a>>, String> {
    if !refs.len().is_multiple_of(2) {
        return Err(format!(
            "labels_refs has odd length {}: references come in name/value pairs",
            refs.len()
        ));
    }
    let sym = |r: u32| {
        symbols
            .get(r as usize)
            .map(|s| s.as_bytes())
            .ok_or_else(|| {
                format!(
                    "symbol reference {r} is out of range (table has {})",
                    symbols.len()
                )
            })
    };
    refs.chunks_exact(2)
        .map(|p| Ok((sym(p[0])?, sym(p[1])?)))
        .collect()
}

/// Appends a remote write 2.0 request.
pub fn write_v2(req: &v2::Request, app: &mut dyn Appender) -> Result<Outcome, WriteError> {
    let mut out = Outcome::default();
    if req.symbols.first().is_some_and(|s| !s.is_empty()) {
        return Err(WriteError::Decode {
            what: "io.prometheus.write.v2.Request",
            reason: "symbols[0] must be the empty string".into(),
        });
    }
    out.series_received = req.timeseries.len() as u64;
    for ts in &req.timeseries {
        let labels = match resolve_refs(&req.symbols, &ts.labels_refs)
            .and_then(|pairs| build_labels(pairs.into_iter()))
        {
            Ok(l) => l,
            Err(why) => {
                out.invalid(why, ts.samples.len() + ts.histograms.len());
                continue;
            }
        };
        for s in &ts.samples {
            out.append(app, &labels, s.timestamp, s.value)?;
        }
        for h in &ts.histograms {
            out.append_histogram(app, &labels, crate::histogram::v2::from_proto(h))?;
        }
        for e in &ts.exemplars {
            let el = resolve_refs(&req.symbols, &e.labels_refs)
                .and_then(|pairs| build_exemplar_labels(pairs.into_iter()));
            out.exemplar(&labels, el, e.value, e.timestamp);
        }
        if let Some(md) = &ts.metadata {
            let lookup = |r: u32| req.symbols.get(r as usize).cloned().unwrap_or_default();
            let metric_type = metric_type_v2(md.r#type);
            let help = lookup(md.help_ref);
            let unit = lookup(md.unit_ref);
            if metric_type != MetricType::Unknown || !help.is_empty() || !unit.is_empty() {
                let name = labels.metric_name().unwrap_or_default().to_string();
                out.metadata.push((
                    name,
                    Metadata {
                        metric_type,
                        help,
                        unit,
                    },
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3query_model::histogram::{CUSTOM_BUCKETS_SCHEMA, CounterResetHint, Span};
    use m3query_model::{FloatHistogram, Histogram, Matcher};
    use m3query_storage::memory::MemStorage;
    use m3query_storage::{Appendable, Context, Queryable, SelectHints, collect_series};

    fn label(n: &str, v: &str) -> prompb::Label {
        prompb::Label {
            name: n.as_bytes().to_vec().into(),
            value: v.as_bytes().to_vec().into(),
        }
    }

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> prompb::TimeSeries {
        prompb::TimeSeries {
            labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
            samples: samples
                .iter()
                .map(|(t, v)| prompb::Sample {
                    timestamp: *t,
                    value: *v,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn stored(s: &MemStorage, name: &str) -> Vec<(i64, f64)> {
        let q = s.querier(i64::MIN, i64::MAX).expect("querier");
        let mut set = q
            .select(
                &Context::background(),
                true,
                &SelectHints::default(),
                &[Matcher::equal("__name__", name)],
            )
            .expect("select");
        let (series, _) = collect_series(set.as_mut(), i64::MIN, i64::MAX).expect("collect");
        series
            .into_iter()
            .flat_map(|s| s.samples.into_iter().map(|x| (x.t, x.v)))
            .collect()
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None).expect("none"), Protocol::V1);
        assert_eq!(
            negotiate(Some("application/x-protobuf")).expect("plain"),
            Protocol::V1
        );
        assert_eq!(
            negotiate(Some(
                "application/x-protobuf;proto=io.prometheus.write.v2.Request"
            ))
            .expect("v2"),
            Protocol::V2
        );
        assert_eq!(
            negotiate(Some(
                "application/x-protobuf; proto=prometheus.WriteRequest"
            ))
            .expect("v1"),
            Protocol::V1
        );
        assert!(negotiate(Some("application/json")).is_err());
        assert!(negotiate(Some("application/x-protobuf;proto=foo.Bar")).is_err());
        assert!(check_encoding(Some("gzip")).is_err());
        assert!(check_encoding(Some("snappy")).is_ok());
    }

    #[test]
    fn decompression_bomb_is_refused_before_allocating() {
        let big = vec![0u8; 1 << 20];
        let compressed = snap::raw::Encoder::new()
            .compress_vec(&big)
            .expect("compress");
        assert!(compressed.len() < 64 << 10);
        match decompress(&compressed, 1000) {
            Err(WriteError::TooLarge { size, limit }) => {
                assert_eq!((size, limit), (1 << 20, 1000));
            }
            other => panic!("{other:?}"),
        }
        // The best case of the format (runs of 64-byte copies) still decodes under the bound.
        assert_eq!(
            decompress(&compressed, 2 << 20).expect("zeros").len(),
            1 << 20
        );
        // A header that claims 2^32-1 bytes, or 250 MiB, with one or two bytes behind it:
        // refused by what the body can hold, whatever the limit, before allocating.
        for lie in [
            &[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00][..],
            &[0x80, 0x80, 0x80, 0x7d, 0x00, 0x41],
        ] {
            match decompress(lie, usize::MAX) {
                Err(WriteError::ImpossibleLength {
                    compressed, max, ..
                }) => {
                    assert!(compressed <= 2 && max <= 43, "{compressed} {max}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(snappy_max_decoded_len(3), 64);
        assert_eq!(snappy_max_decoded_len(0), 0);
        // Garbage fails on its header's claim, or in decoding.
        assert!(matches!(
            decompress(b"\xffnot snappy", 1 << 20),
            Err(WriteError::Snappy(_) | WriteError::ImpossibleLength { .. })
        ));
        assert!(matches!(
            decompress(b"\x05nope!", 1 << 20),
            Err(WriteError::Snappy(_))
        ));
    }

    #[test]
    fn v1_writes_the_rest_of_a_batch_around_refusals() {
        let s = MemStorage::new();
        let req = prompb::WriteRequest {
            timeseries: vec![
                series(&[("__name__", "up"), ("job", "a")], &[(10, 1.0), (20, 1.0)]),
                // Out of order within the series: refused, the rest still written.
                series(&[("__name__", "up"), ("job", "a")], &[(15, 2.0), (30, 3.0)]),
                series(&[("job", "no-name")], &[(10, 1.0)]),
                series(&[("__name__", "x"), ("a", "1"), ("a", "2")], &[(10, 1.0)]),
                series(&[("__name__", "x"), ("", "v")], &[(10, 1.0)]),
            ],
            metadata: vec![prompb::MetricMetadata {
                r#type: prompb::metric_metadata::MetricType::Gauge as i32,
                metric_family_name: "up".into(),
                help: "Target up".into(),
                unit: String::new(),
            }],
        };
        let mut app = s.appender();
        let out = write_v1(&req, app.as_mut()).expect("write");
        app.commit().expect("commit");
        assert_eq!(out.samples_written, 3);
        assert_eq!(out.out_of_order, 1);
        assert_eq!(out.invalid_series, 3);
        let msg = out.refusal().expect("refused");
        assert!(msg.contains("1 out of order samples"), "{msg}");
        assert!(msg.contains("3 series with invalid labels"), "{msg}");
        assert_eq!(stored(&s, "up"), vec![(10, 1.0), (20, 1.0), (30, 3.0)]);
        assert_eq!(out.metadata.len(), 1);
        assert_eq!(out.metadata[0].1.metric_type, MetricType::Gauge);
    }

    #[test]
    fn invalid_utf8_refuses_only_its_series() {
        let s = MemStorage::new();
        let mut bad = series(&[("__name__", "up")], &[(1, 1.0)]);
        bad.labels.push(prompb::Label {
            name: b"job".to_vec().into(),
            value: vec![0xff, 0xfe].into(),
        });
        let req = prompb::WriteRequest {
            timeseries: vec![bad, series(&[("__name__", "ok")], &[(1, 1.0)])],
            metadata: vec![],
        };
        let body = req.encode_to_vec();
        let mut app = s.appender();
        let out = write(Protocol::V1, &body, app.as_mut()).expect("decodes");
        app.commit().expect("commit");
        assert_eq!((out.samples_written, out.invalid_series), (1, 1));
        assert!(out.refusal().expect("refused").contains("UTF-8"));
    }

    /// An integer histogram with a zero bucket and both sides (schema 3).
    fn int_hist(scale: u64) -> Histogram {
        Histogram {
            schema: 3,
            zero_threshold: 0.001,
            zero_count: 2 * scale,
            count: 10 * scale,
            sum: 12.5 * scale as f64,
            positive_spans: vec![Span::new(-2, 2), Span::new(3, 1)],
            negative_spans: vec![Span::new(1, 1)],
            // Absolute counts 1, 3, 2 (deltas 1, 2, -1) and 2.
            positive_buckets: vec![scale as i64, 2 * scale as i64, -(scale as i64)],
            negative_buckets: vec![2 * scale as i64],
            ..Default::default()
        }
    }

    /// A float histogram with non-integer counts.
    fn float_hist() -> FloatHistogram {
        FloatHistogram {
            schema: 0,
            count: 2.5,
            sum: 3.0,
            zero_threshold: 0.5,
            zero_count: 0.5,
            positive_spans: vec![Span::new(1, 2)],
            positive_buckets: vec![1.25, 0.75],
            ..Default::default()
        }
    }

    /// A histogram with custom buckets (NHCB): bounds 0.1 and 1, buckets at indices 0..=2.
    fn nhcb() -> Histogram {
        Histogram {
            schema: CUSTOM_BUCKETS_SCHEMA,
            count: 6,
            sum: 4.5,
            positive_spans: vec![Span::new(0, 3)],
            positive_buckets: vec![1, 2, -1],
            custom_values: vec![0.1, 1.0],
            ..Default::default()
        }
    }

    fn stale_hist() -> Histogram {
        Histogram {
            sum: m3query_model::STALE_NAN,
            ..Default::default()
        }
    }

    /// What a store holds as native histograms for `name`: (t, histogram) in time order.
    fn stored_hists(s: &MemStorage, name: &str) -> Vec<(i64, FloatHistogram)> {
        let q = s.querier(i64::MIN, i64::MAX).expect("querier");
        let mut set = q
            .select(
                &Context::background(),
                true,
                &SelectHints::default(),
                &[Matcher::equal("__name__", name)],
            )
            .expect("select");
        let mut out = Vec::new();
        while let Some(series) = set.next() {
            let series = series.expect("series");
            let mut hs = Vec::new();
            series
                .iter()
                .append_histograms(i64::MIN, i64::MAX, &mut hs)
                .expect("histograms");
            out.extend(hs.into_iter().map(|h| (h.t, (*h.h).clone())));
        }
        out
    }

    fn assert_same(got: &[(i64, FloatHistogram)], want: &[(i64, FloatHistogram)]) {
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((gt, g), (wt, w)) in got.iter().zip(want) {
            assert_eq!(gt, wt);
            if m3query_model::is_stale_nan(w.sum) {
                assert!(m3query_model::is_stale_nan(g.sum), "{g:?}");
            } else {
                assert_eq!(g, w);
            }
        }
    }

    /// Integer (with zero bucket, both sides), float, custom-bucket and stale histograms,
    /// each with an exemplar beside, as remote write 1.0 sends them.
    fn v1_histogram_request() -> prompb::WriteRequest {
        use crate::histogram::v1;
        let mut ts = series(&[("__name__", "h"), ("job", "a")], &[(5, 1.0)]);
        ts.histograms = vec![
            v1::to_proto(10, &int_hist(1)),
            v1::to_proto(20, &int_hist(2)),
            v1::float_to_proto(30, &float_hist()),
            v1::to_proto(40, &stale_hist()),
        ];
        ts.exemplars = vec![prompb::Exemplar {
            labels: vec![label("trace_id", "t1")],
            value: 0.3,
            timestamp: 20,
        }];
        let mut custom = series(&[("__name__", "nhcb")], &[]);
        custom.histograms = vec![v1::to_proto(10, &nhcb())];
        prompb::WriteRequest {
            timeseries: vec![ts, custom],
            metadata: vec![],
        }
    }

    /// Histograms with their timestamps.
    type Hists = Vec<(i64, FloatHistogram)>;

    fn expected_v1() -> (Hists, Hists) {
        (
            vec![
                (10, int_hist(1).to_float()),
                (20, int_hist(2).to_float()),
                (30, float_hist()),
                (40, stale_hist().to_float()),
            ],
            vec![(10, nhcb().to_float())],
        )
    }

    #[test]
    fn v1_histograms_are_written_by_both_decoders() {
        let req = v1_histogram_request();
        let body = req.encode_to_vec();
        for in_place in [true, false] {
            let s = MemStorage::new();
            let mut app = s.appender();
            let out = if in_place {
                write(Protocol::V1, &body, app.as_mut()).expect("write")
            } else {
                write_v1(&req, app.as_mut()).expect("write")
            };
            app.commit().expect("commit");
            assert_eq!(out.refusal(), None, "in place: {in_place}");
            assert_eq!((out.samples_written, out.histograms_written), (1, 5));
            assert_eq!(out.exemplars.len(), 1);
            assert_eq!(stored(&s, "h"), vec![(5, 1.0)]);
            let (h, custom) = expected_v1();
            assert_same(&stored_hists(&s, "h"), &h);
            assert_same(&stored_hists(&s, "nhcb"), &custom);
            assert_eq!(stored_hists(&s, "nhcb")[0].1.custom_values, vec![0.1, 1.0]);
        }
    }

    #[test]
    fn v2_histograms_are_written() {
        use crate::histogram::v2 as h2;
        let mut reset = int_hist(1);
        reset.counter_reset_hint = CounterResetHint::CounterReset;
        let req = v2::Request {
            symbols: ["", "__name__", "h", "nhcb", "trace_id", "t1"]
                .map(String::from)
                .to_vec(),
            timeseries: vec![
                v2::TimeSeries {
                    labels_refs: vec![1, 2],
                    samples: vec![v2::Sample {
                        value: 1.0,
                        timestamp: 5,
                    }],
                    histograms: vec![
                        h2::to_proto(10, &int_hist(2)),
                        h2::to_proto(20, &reset),
                        h2::float_to_proto(30, &float_hist()),
                        h2::to_proto(40, &stale_hist()),
                    ],
                    exemplars: vec![v2::Exemplar {
                        labels_refs: vec![4, 5],
                        value: 0.3,
                        timestamp: 10,
                    }],
                    ..Default::default()
                },
                v2::TimeSeries {
                    labels_refs: vec![1, 3],
                    histograms: vec![h2::to_proto(10, &nhcb())],
                    ..Default::default()
                },
            ],
        };
        let s = MemStorage::new();
        let mut app = s.appender();
        let out = write(Protocol::V2, &req.encode_to_vec(), app.as_mut()).expect("write");
        app.commit().expect("commit");
        assert_eq!(out.refusal(), None);
        assert_eq!((out.samples_written, out.histograms_written), (1, 5));
        assert_eq!(out.exemplars.len(), 1);
        let got = stored_hists(&s, "h");
        assert_same(
            &got,
            &[
                (10, int_hist(2).to_float()),
                (20, reset.to_float()),
                (30, float_hist()),
                (40, stale_hist().to_float()),
            ],
        );
        // The reset hint travels: the store reads it back as a reset.
        assert_eq!(got[1].1.counter_reset_hint, CounterResetHint::CounterReset);
        assert_same(&stored_hists(&s, "nhcb"), &[(10, nhcb().to_float())]);
    }

    #[test]
    fn invalid_histograms_are_refused_with_prometheus_reasons_and_the_rest_written() {
        use crate::histogram::v1;
        let mut bad_count = int_hist(1);
        bad_count.count = 99;
        let mut bad_spans = int_hist(1);
        bad_spans.positive_spans = vec![Span::new(0, 1)];
        let mut bad_schema = int_hist(1);
        bad_schema.schema = -7;
        let mut ts = series(&[("__name__", "h")], &[(1, 1.0)]);
        ts.histograms = vec![
            v1::to_proto(10, &bad_count),
            v1::to_proto(20, &int_hist(1)),
            v1::to_proto(30, &bad_spans),
            v1::to_proto(40, &bad_schema),
            v1::float_to_proto(
                50,
                &FloatHistogram {
                    count: -1.0,
                    ..float_hist()
                },
            ),
        ];
        // A histogram on a series with invalid labels counts with its series' samples.
        let mut nameless = series(&[("job", "x")], &[]);
        nameless.histograms = vec![v1::to_proto(10, &int_hist(1))];
        let req = prompb::WriteRequest {
            timeseries: vec![ts, nameless],
            metadata: vec![],
        };
        let s = MemStorage::new();
        let mut app = s.appender();
        let out = write(Protocol::V1, &req.encode_to_vec(), app.as_mut()).expect("write");
        app.commit().expect("commit");
        assert_eq!((out.samples_written, out.histograms_written), (1, 1));
        assert_eq!(out.histograms_invalid, 4);
        assert_eq!((out.invalid_series, out.invalid_series_samples), (1, 1));
        let msg = out.refusal().expect("refused");
        assert!(
            msg.starts_with("1 samples and 1 native histogram samples written"),
            "{msg}"
        );
        assert!(msg.contains("4 invalid native histogram samples"), "{msg}");
        // Prometheus's reason for the first, with the series and timestamp.
        assert!(
            msg.contains(
                "10 observations found in buckets, but the Count field is 99: histogram's observation count should equal the number of observations found in the buckets (in absence of NaN) for series {__name__=\"h\"} at timestamp 10"
            ),
            "{msg}"
        );
        assert_same(&stored_hists(&s, "h"), &[(20, int_hist(1).to_float())]);
    }

    #[test]
    fn reserved_schemas_are_reduced_and_refusals_counted() {
        use crate::histogram::v1;
        // Schema 9 is reserved: reduced to 8 as Prometheus's handler does (buckets 1 and 2 of
        // schema 9 both fall into bucket 1 of schema 8).
        let fine = Histogram {
            schema: 9,
            count: 3,
            sum: 1.0,
            positive_spans: vec![Span::new(1, 2)],
            positive_buckets: vec![1, 1],
            ..Default::default()
        };
        let mut ts = series(&[("__name__", "h")], &[]);
        ts.histograms = vec![
            v1::to_proto(10, &fine),
            // Out of order: refused by the store as a float would be.
            v1::to_proto(5, &int_hist(1)),
        ];
        let s = MemStorage::new();
        let mut app = s.appender();
        let out = write_v1(
            &prompb::WriteRequest {
                timeseries: vec![ts],
                metadata: vec![],
            },
            app.as_mut(),
        )
        .expect("write");
        app.commit().expect("commit");
        assert_eq!((out.histograms_written, out.out_of_order), (1, 1));
        let msg = out.refusal().expect("refused");
        assert!(
            msg.contains("out of order sample (native histogram)"),
            "{msg}"
        );
        let got = stored_hists(&s, "h");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.schema, 8);
        assert_eq!(got[0].1.positive_spans, vec![Span::new(1, 1)]);
        assert_eq!(got[0].1.positive_buckets, vec![3.0]);
    }

    /// A store that holds floats only (the trait's default histogram methods).
    struct FloatsOnly<'a>(Box<dyn Appender + 'a>);

    impl Appender for FloatsOnly<'_> {
        fn append(&mut self, labels: &Labels, t: i64, v: f64) -> m3query_storage::Result<()> {
            self.0.append(labels, t, v)
        }
        fn commit(self: Box<Self>) -> m3query_storage::Result<()> {
            self.0.commit()
        }
        fn rollback(self: Box<Self>) {
            self.0.rollback()
        }
    }

    /// A store that refuses every integer histogram as an invalid sample (as a store that
    /// validates beyond the handler's checks would) and keeps float histograms.
    struct StrictHists<'a>(Box<dyn Appender + 'a>);

    impl Appender for StrictHists<'_> {
        fn append(&mut self, labels: &Labels, t: i64, v: f64) -> m3query_storage::Result<()> {
            self.0.append(labels, t, v)
        }
        fn append_int_histogram(
            &mut self,
            _labels: &Labels,
            _t: i64,
            _h: &Histogram,
        ) -> m3query_storage::Result<()> {
            Err(StorageError::InvalidSample("store says no".into()))
        }
        fn append_histogram(
            &mut self,
            labels: &Labels,
            t: i64,
            h: &FloatHistogram,
        ) -> m3query_storage::Result<()> {
            self.0.append_histogram(labels, t, h)
        }
        fn commit(self: Box<Self>) -> m3query_storage::Result<()> {
            self.0.commit()
        }
        fn rollback(self: Box<Self>) {
            self.0.rollback()
        }
    }

    #[test]
    fn a_store_refusing_an_invalid_histogram_refuses_only_that_sample() {
        let body = v1_histogram_request().encode_to_vec();
        let s = MemStorage::new();
        let mut app: Box<dyn Appender> = Box::new(StrictHists(s.appender()));
        let out = write(Protocol::V1, &body, app.as_mut()).expect("not a request error");
        app.commit().expect("commit");
        assert_eq!(out.samples_written, 1);
        // The integer histograms refused one by one, the float one written.
        assert_eq!((out.histograms_invalid, out.histograms_written), (4, 1));
        assert_eq!(out.histograms_refused, 0);
        let msg = out.refusal().expect("refused");
        assert!(
            msg.contains("invalid native histogram samples") && msg.contains("store says no"),
            "{msg}"
        );
        assert_eq!(stored(&s, "h"), vec![(5, 1.0)]);
    }

    #[test]
    fn a_store_without_histograms_refuses_them_clearly_and_keeps_the_floats() {
        let req = v1_histogram_request();
        let body = req.encode_to_vec();
        for protocol in [Protocol::V1, Protocol::V2] {
            let s = MemStorage::new();
            let mut app: Box<dyn Appender> = Box::new(FloatsOnly(s.appender()));
            let out = match protocol {
                Protocol::V1 => write(protocol, &body, app.as_mut()),
                Protocol::V2 => {
                    let ts = &req.timeseries[0];
                    let v2req = v2::Request {
                        symbols: ["", "__name__", "h"].map(String::from).to_vec(),
                        timeseries: vec![v2::TimeSeries {
                            labels_refs: vec![1, 2],
                            samples: vec![v2::Sample {
                                value: 1.0,
                                timestamp: 5,
                            }],
                            histograms: vec![crate::histogram::v2::to_proto(10, &int_hist(1))],
                            ..Default::default()
                        }],
                    };
                    assert_eq!(ts.samples.len(), 1);
                    write(protocol, &v2req.encode_to_vec(), app.as_mut())
                }
            }
            .expect("write");
            app.commit().expect("commit");
            assert_eq!(out.samples_written, 1, "{protocol:?}");
            assert_eq!(out.histograms_written, 0);
            assert!(out.histograms_refused > 0);
            let msg = out.refusal().expect("refused");
            assert!(
                msg.contains("native histogram samples the store does not accept")
                    && msg.contains("this store does not hold native histograms"),
                "{msg}"
            );
            assert_eq!(stored(&s, "h"), vec![(5, 1.0)]);
        }
    }

    #[test]
    fn v2_symbols_metadata_and_bad_refs() {
        let s = MemStorage::new();
        let req = v2::Request {
            symbols: [
                "",
                "__name__",
                "http_requests_total",
                "job",
                "api",
                "Requests.",
                "trace_id",
                "abc",
            ]
            .map(String::from)
            .to_vec(),
            timeseries: vec![
                v2::TimeSeries {
                    labels_refs: vec![1, 2, 3, 4],
                    samples: vec![v2::Sample {
                        value: 5.0,
                        timestamp: 100,
                    }],
                    exemplars: vec![v2::Exemplar {
                        labels_refs: vec![6, 7],
                        value: 1.0,
                        timestamp: 100,
                    }],
                    metadata: Some(v2::Metadata {
                        r#type: v2::metadata::MetricType::Counter as i32,
                        help_ref: 5,
                        unit_ref: 0,
                    }),
                    ..Default::default()
                },
                v2::TimeSeries {
                    labels_refs: vec![1, 99],
                    samples: vec![v2::Sample {
                        value: 1.0,
                        timestamp: 1,
                    }],
                    ..Default::default()
                },
            ],
        };
        let body = req.encode_to_vec();
        let mut app = s.appender();
        let out = write(Protocol::V2, &body, app.as_mut()).expect("write");
        app.commit().expect("commit");
        assert_eq!(out.samples_written, 1);
        assert_eq!(out.invalid_series, 1);
        assert!(out.refusal().expect("refused").contains("out of range"));
        assert_eq!(out.exemplars.len(), 1);
        assert_eq!(out.exemplars[0].1.labels.get("trace_id"), Some("abc"));
        assert_eq!(
            out.metadata,
            vec![(
                "http_requests_total".to_string(),
                Metadata {
                    metric_type: MetricType::Counter,
                    help: "Requests.".into(),
                    unit: String::new()
                }
            )]
        );
        assert_eq!(stored(&s, "http_requests_total"), vec![(100, 5.0)]);
    }

    /// Everything observable about one write: accepted or refused whole, the outcome's
    /// counts and message, and what the store holds after commit.
    fn observe(
        body: &[u8],
        f: impl Fn(&[u8], &mut dyn Appender) -> Result<Outcome, WriteError>,
    ) -> String {
        let s = MemStorage::new();
        let mut app = s.appender();
        let r = f(body, app.as_mut());
        settle(&s, app, r)
    }

    /// Commits (or rolls back) a request's appender and describes its outcome and everything
    /// the store then holds.
    fn settle(
        s: &MemStorage,
        app: Box<dyn Appender + '_>,
        r: Result<Outcome, WriteError>,
    ) -> String {
        match r {
            Err(WriteError::Decode { .. }) => {
                app.rollback();
                "decode error".to_string()
            }
            Err(e) => format!("error {e}"),
            Ok(o) => {
                app.commit().expect("commit");
                let q = s.querier(i64::MIN, i64::MAX).expect("querier");
                let mut set = q
                    .select(
                        &Context::background(),
                        true,
                        &SelectHints::default(),
                        &[
                            Matcher::new(m3query_model::MatchOp::RegexMatch, "__name__", ".+")
                                .expect("matcher"),
                        ],
                    )
                    .expect("select");
                let (series, _) =
                    collect_series(set.as_mut(), i64::MIN, i64::MAX).expect("collect");
                let data: Vec<(String, Vec<(i64, u64)>)> = series
                    .iter()
                    .map(|s| {
                        (
                            s.labels.to_string(),
                            s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect(),
                        )
                    })
                    .collect();
                let hists: Vec<(String, Vec<(i64, FloatHistogram)>)> = series
                    .iter()
                    .filter_map(|x| {
                        let name = x.labels.metric_name()?;
                        Some((x.labels.to_string(), stored_hists(s, name)))
                    })
                    .collect();
                format!(
                    "written {} hist {}/{} ooo {} old {} dup {} invalid {}/{} refused {} msg {:?} meta {:?} ex {:?} data {:?} hists {:?}",
                    o.samples_written,
                    o.histograms_written,
                    o.histograms_invalid,
                    o.out_of_order,
                    o.too_old,
                    o.duplicate,
                    o.invalid_series,
                    o.invalid_series_samples,
                    o.histograms_refused,
                    o.refusal(),
                    o.metadata,
                    o.exemplars,
                    data,
                    hists
                )
            }
        }
    }

    fn via_prost(body: &[u8], app: &mut dyn Appender) -> Result<Outcome, WriteError> {
        let req = prompb::WriteRequest::decode(body).map_err(|e| WriteError::Decode {
            what: "prometheus.WriteRequest",
            reason: e.to_string(),
        })?;
        write_v1(&req, app)
    }

    fn arb_request() -> impl proptest::strategy::Strategy<Value = prompb::WriteRequest> {
        use proptest::prelude::*;
        let name = prop::sample::select(vec![
            b"__name__".to_vec(),
            b"job".to_vec(),
            b"a".to_vec(),
            b"zz".to_vec(),
            Vec::new(),
            vec![0xff, 0x61],
        ]);
        let value = prop::sample::select(vec![
            b"up".to_vec(),
            b"x".to_vec(),
            Vec::new(),
            b"\xc3\xa9t\xc3\xa9".to_vec(),
            vec![0xc3],
        ]);
        let label = (name, value).prop_map(|(n, v)| prompb::Label {
            name: n.into(),
            value: v.into(),
        });
        let sample = (
            prop::sample::select(vec![0i64, 5, 10, 10, 20, -3]),
            prop::sample::select(vec![0.0f64, 1.0, -0.0, f64::NAN, 2.5]),
        )
            .prop_map(|(timestamp, value)| prompb::Sample { value, timestamp });
        let exemplar =
            prop::collection::vec(label.clone(), 0..2).prop_map(|labels| prompb::Exemplar {
                labels,
                value: 1.5,
                timestamp: 7,
            });
        let mut invalid = int_hist(1);
        invalid.count = 3;
        let histogram = prop::sample::select(vec![
            prompb::Histogram::default(),
            crate::histogram::v1::to_proto(7, &int_hist(1)),
            crate::histogram::v1::to_proto(3, &int_hist(2)),
            crate::histogram::v1::float_to_proto(12, &float_hist()),
            crate::histogram::v1::to_proto(9, &invalid),
        ]);
        let ts = (
            prop::collection::vec(label, 0..4),
            prop::collection::vec(sample, 0..4),
            prop::collection::vec(exemplar, 0..2),
            prop::collection::vec(histogram, 0..3),
        )
            .prop_map(
                |(labels, samples, exemplars, histograms)| prompb::TimeSeries {
                    labels,
                    samples,
                    exemplars,
                    histograms,
                },
            );
        let meta = prop::sample::select(vec!["", "up"]).prop_map(|n| prompb::MetricMetadata {
            r#type: 2,
            metric_family_name: n.into(),
            help: "h".into(),
            unit: String::new(),
        });
        (
            prop::collection::vec(ts, 0..6),
            prop::collection::vec(meta, 0..2),
        )
            .prop_map(|(timeseries, metadata)| prompb::WriteRequest {
                timeseries,
                metadata,
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The in-place decoder behaves exactly as prost + `write_v1`, on valid requests and
        /// on the same bytes with one byte changed or cut short.
        #[test]
        fn in_place_v1_decoder_equals_prost(
            req in arb_request(),
            flip in proptest::option::of((0usize..4096, 1u8..=255)),
            cut in proptest::option::of(0usize..4096),
            extra in proptest::option::of(proptest::collection::vec(0u8..=255, 1..6)),
        ) {
            let mut body = req.encode_to_vec();
            if let Some((i, x)) = flip && !body.is_empty() {
                let i = i % body.len();
                body[i] ^= x;
            }
            if let Some(c) = cut && !body.is_empty() {
                body.truncate(c % body.len());
            }
            if let Some(e) = extra {
                body.extend(e);
            }
            proptest::prop_assert_eq!(observe(&body, via_prost), observe(&body, write_v1_bytes));
        }
    }

    /// Keys a store remembers (key -> labels), as a store with a key cache would.
    type KeyMemory = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, Labels>>>;

    /// An appender over `MemStorage` that knows series by key after their commit.
    struct Keyed<'a> {
        inner: Box<dyn Appender + 'a>,
        keys: KeyMemory,
        new: Vec<(Vec<u8>, Labels)>,
    }

    impl Appender for Keyed<'_> {
        fn append(&mut self, labels: &Labels, t: i64, v: f64) -> m3query_storage::Result<()> {
            self.inner.append(labels, t, v)
        }
        fn append_samples_by_key(
            &mut self,
            key: &[u8],
            samples: &[m3query_model::Sample],
            refused: &mut dyn FnMut(usize, StorageError),
        ) -> m3query_storage::Result<bool> {
            let known = self.keys.lock().expect("keys").get(key).cloned();
            let Some(labels) = known else {
                return Ok(false);
            };
            let pairs: Vec<(&str, &str)> = labels.iter().map(|l| (&*l.name, &*l.value)).collect();
            self.inner
                .append_samples(LabelPairs::from_checked(&pairs), samples, refused)?;
            Ok(true)
        }
        fn append_samples_keyed(
            &mut self,
            key: &[u8],
            labels: LabelPairs<'_>,
            samples: &[m3query_model::Sample],
            refused: &mut dyn FnMut(usize, StorageError),
        ) -> m3query_storage::Result<()> {
            self.new.push((key.to_vec(), labels.to_labels()));
            self.inner.append_samples(labels, samples, refused)
        }
        fn append_histogram(
            &mut self,
            labels: &Labels,
            t: i64,
            h: &FloatHistogram,
        ) -> m3query_storage::Result<()> {
            self.inner.append_histogram(labels, t, h)
        }
        fn append_int_histogram(
            &mut self,
            labels: &Labels,
            t: i64,
            h: &m3query_model::Histogram,
        ) -> m3query_storage::Result<()> {
            self.inner.append_int_histogram(labels, t, h)
        }
        fn commit(self: Box<Self>) -> m3query_storage::Result<()> {
            let Keyed { inner, keys, new } = *self;
            inner.commit()?;
            keys.lock().expect("keys").extend(new);
            Ok(())
        }
        fn rollback(self: Box<Self>) {
            self.inner.rollback();
        }
    }

    /// Requests over a few label sets that share names and values, so the same series come
    /// back in later requests and different ones start alike.
    fn pooled_request() -> impl proptest::strategy::Strategy<Value = prompb::WriteRequest> {
        use proptest::prelude::*;
        let pool: Vec<Vec<(&'static str, &'static str)>> = vec![
            vec![("__name__", "up")],
            vec![("__name__", "up"), ("job", "a")],
            vec![("__name__", "up"), ("job", "b")],
            vec![("__name__", "up"), ("job", "a"), ("zz", "1")],
            vec![("job", "a"), ("__name__", "up")],
        ];
        let series = (
            prop::sample::select(pool),
            prop::collection::vec((0i64..6, prop::sample::select(vec![0.0, 1.0, 2.5])), 0..4),
        )
            .prop_map(|(labels, samples)| prompb::TimeSeries {
                labels: labels
                    .into_iter()
                    .map(|(n, v)| prompb::Label {
                        name: n.into(),
                        value: v.into(),
                    })
                    .collect(),
                samples: samples
                    .into_iter()
                    .map(|(t, v)| prompb::Sample {
                        value: v,
                        timestamp: t * 1000,
                    })
                    .collect(),
                ..Default::default()
            });
        prop::collection::vec(series, 1..5).prop_map(|timeseries| prompb::WriteRequest {
            timeseries,
            ..Default::default()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        /// Requests in a row to a store that knows series by their label bytes get the
        /// answers and the data they get with prost and no keys: a known key is only ever
        /// taken for the labels it was learnt with, and damaged label bytes are still refused.
        #[test]
        fn series_known_by_key_store_as_by_labels(
            reqs in proptest::collection::vec(
                proptest::prop_oneof![arb_request(), pooled_request()],
                2..5,
            ),
            flips in proptest::collection::vec(proptest::option::of((0usize..4096, 1u8..=255)), 4),
        ) {
            let bodies: Vec<Vec<u8>> = reqs
                .iter()
                .zip(&flips)
                .map(|(r, f)| {
                    let mut b = r.encode_to_vec();
                    if let Some((i, x)) = *f && !b.is_empty() {
                        let i = i % b.len();
                        b[i] ^= x;
                    }
                    b
                })
                .collect();
            let plain = MemStorage::new();
            let keyed = MemStorage::new();
            let keys = KeyMemory::default();
            for body in &bodies {
                let mut app = plain.appender();
                let r = via_prost(body, app.as_mut());
                let want = settle(&plain, app, r);
                let mut app: Box<dyn Appender + '_> = Box::new(Keyed {
                    inner: keyed.appender(),
                    keys: keys.clone(),
                    new: Vec::new(),
                });
                let r = write_v1_bytes(body, app.as_mut());
                let got = settle(&keyed, app, r);
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn plain_sample_reads_what_prost_reads_and_leaves_the_rest() {
        // Timestamps of every varint length (negative ones take all ten bytes).
        let mut ts: Vec<i64> = (0..63).map(|k| 1i64 << k).collect();
        ts.extend([1, 1_796_292_000_000, -1, i64::MIN, i64::MAX]);
        for t in ts {
            for v in [1.5, -2.0, f64::NAN, 1e300] {
                let b = prompb::Sample {
                    value: v,
                    timestamp: t,
                }
                .encode_to_vec();
                let got = plain_sample(&b).expect("value then timestamp");
                let want = prompb::Sample::decode(&b[..]).expect("prost");
                assert_eq!(
                    (got.t, got.v.to_bits()),
                    (want.timestamp, want.value.to_bits())
                );
                // Cut short: never read as a whole sample.
                assert!(plain_sample(&b[..b.len() - 1]).is_none());
            }
        }
        // Zero fields are left out of the encoding, fields may come in any order, and a
        // 10th varint byte above 1 overflows: all for the generic decoder.
        for b in [
            prompb::Sample {
                value: 0.0,
                timestamp: 5,
            }
            .encode_to_vec(),
            prompb::Sample {
                value: 2.0,
                timestamp: 0,
            }
            .encode_to_vec(),
            vec![0x10, 0x05, 0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f],
            vec![
                0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff, 0x02,
            ],
            vec![0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0x05, 0x18, 0x01],
        ] {
            assert!(plain_sample(&b).is_none(), "{b:?}");
        }
        // An over-long timestamp (a continuation byte then 0) is still one value to prost.
        let b = [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0x85, 0x00];
        let got = plain_sample(&b).expect("over-long varint");
        assert_eq!((got.t, got.v), (5, 1.0));
        assert_eq!(prompb::Sample::decode(&b[..]).expect("prost").timestamp, 5);
    }

    #[test]
    fn varints_decode_as_prost_decodes_them() {
        // Every length, each with room after it and cut off at the end of the buffer,
        // plus over-long and truncated encodings.
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for k in 0..64 {
            for x in [1u64 << k, (1u64 << k) - 1, (1u64 << k) + 1, u64::MAX >> k] {
                let mut b = Vec::new();
                prost::encoding::encode_varint(x, &mut b);
                cases.push(b.clone());
                b.extend([0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]);
                cases.push(b);
            }
        }
        cases.push(vec![0xff; 12]);
        cases.push(vec![
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ]);
        cases.push(vec![0x80; 9]);
        cases.push(vec![0x80, 0x80, 0x00, 0, 0, 0, 0, 0, 0]);
        for b in &cases {
            let mut r = wire::Reader::new(b);
            let got = r.varint().ok().map(|x| (x, r.pos));
            let mut buf = &b[..];
            let want = prost::encoding::decode_varint(&mut buf)
                .ok()
                .map(|x| (x, b.len() - buf.len()));
            assert_eq!(got, want, "{b:x?}");
        }
    }

    #[test]
    fn label_bytes_checked_as_one_span_refuse_what_strings_would() {
        // `job`'s value is a lone UTF-8 lead byte, followed in the label message by an unknown
        // field 16 whose two-byte key starts with a continuation byte: the label bytes as a
        // whole are valid UTF-8, the value alone is not.
        let bad_label = [
            0x0a, 0x03, b'j', b'o', b'b', 0x12, 0x01, 0xc3, 0x80, 0x01, 0x00,
        ];
        let labels = [("__name__", "up"), ("x", "\u{e9}t\u{e9}")];
        let good = series(&labels, &[(1, 1.0)]);
        // The bad label right after the good ones (samples, not UTF-8, after all labels).
        let mut ts = series(&labels, &[]).encode_to_vec();
        ts.push(0x0a);
        ts.push(bad_label.len() as u8);
        ts.extend(bad_label);
        ts.extend(series(&[], &[(1, 1.0)]).encode_to_vec());
        let mut body = vec![0x0a, ts.len() as u8];
        body.extend(&ts);
        body.extend(
            prompb::WriteRequest {
                timeseries: vec![good],
                metadata: vec![],
            }
            .encode_to_vec(),
        );
        let a = observe(&body, write_v1_bytes);
        assert!(a.contains("written 1") && a.contains("invalid 1/1"), "{a}");
        assert!(
            a.contains("value of label \\\"job\\\" is not valid UTF-8"),
            "{a}"
        );
        assert_eq!(a, observe(&body, via_prost));
    }

    #[test]
    fn in_place_v1_decoder_skips_unknown_fields_and_groups() {
        // Field 5 (varint), field 6 (fixed32), field 7 (a group holding a varint) around one
        // series: all skipped, by both decoders.
        let req = prompb::WriteRequest {
            timeseries: vec![series(&[("__name__", "up")], &[(1, 1.0)])],
            metadata: vec![],
        };
        let mut body = vec![0x28, 0x01, 0x35, 1, 2, 3, 4, 0x3b, 0x08, 0x01, 0x3c];
        body.extend(req.encode_to_vec());
        let a = observe(&body, via_prost);
        assert!(a.contains("written 1"), "{a}");
        assert_eq!(a, observe(&body, write_v1_bytes));
    }

    #[test]
    fn a_body_of_the_other_version_is_refused_not_acknowledged() {
        let s = MemStorage::new();
        let v1 = prompb::WriteRequest {
            timeseries: vec![series(&[("__name__", "a")], &[(1, 1.0)])],
            metadata: vec![],
        }
        .encode_to_vec();
        let v2 = v2::Request {
            symbols: vec![String::new(), "__name__".into(), "a".into()],
            timeseries: vec![v2::TimeSeries {
                labels_refs: vec![1, 2],
                samples: vec![v2::Sample {
                    value: 1.0,
                    timestamp: 1,
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        for (protocol, body, expected) in [
            (Protocol::V2, &v1, "io.prometheus.write.v2.Request"),
            (Protocol::V1, &v2, "prometheus.WriteRequest"),
        ] {
            let mut app = s.appender();
            match write(protocol, body, app.as_mut()) {
                Err(e @ WriteError::NothingDecoded { .. }) => {
                    assert!(e.to_string().contains(expected), "{e}");
                }
                other => panic!("{protocol:?}: {other:?}"),
            }
        }
        // An empty body is an empty request of either version.
        let mut app = s.appender();
        assert!(write(Protocol::V1, &[], app.as_mut()).is_ok());
        assert!(write(Protocol::V2, &[], app.as_mut()).is_ok());
    }

    #[test]
    fn garbage_bodies_are_decode_errors() {
        let s = MemStorage::new();
        let mut app = s.appender();
        for body in [&b"\xff\xff\xff"[..], b"\x0a\x05abc"] {
            assert!(matches!(
                write(Protocol::V1, body, app.as_mut()),
                Err(WriteError::Decode { .. })
            ));
        }
    }
}
