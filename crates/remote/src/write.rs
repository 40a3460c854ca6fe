//! Remote write receiving: Prometheus remote write 1.0 (`prometheus.WriteRequest`) and 2.0
//! (`io.prometheus.write.v2.Request`), snappy block-compressed.
//!
//! What a request may hold and what happens to it:
//! - float samples are appended; a sample the store refuses (out of order, too old, duplicate)
//!   is counted and skipped, and the rest of the batch is still written;
//! - a series with invalid labels (no metric name, empty or duplicate label names, invalid
//!   UTF-8, a 2.0 symbol reference out of range) is counted and skipped;
//! - native histogram samples are refused explicitly (counted, never silently dropped);
//! - exemplars and metadata are decoded and returned to the caller, which stores them.
//!
//! [`Outcome::refusal`] summarises what was refused; the HTTP layer answers 400 with it, since
//! Prometheus drops (does not retry) 4xx, and retrying a refused sample could never succeed.

use std::fmt::Write as _;

use m3query_model::{Exemplar, Labels, METRIC_NAME, Metadata, MetricType};
use m3query_storage::{Appender, Error as StorageError};
use prost::Message;

use crate::prompb::{self, v2};

/// Which protobuf a remote-write request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    V1,
    V2,
}

/// Errors that refuse a whole write request.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "unsupported content type {0:?}: send application/x-protobuf with proto=prometheus.WriteRequest or proto=io.prometheus.write.v2.Request"
    )]
    UnsupportedMediaType(String),
    #[error("unsupported content encoding {0:?}: remote write bodies must be snappy-compressed")]
    UnsupportedEncoding(String),
    #[error("snappy decompression failed: {0}")]
    Snappy(String),
    #[error("request body decompresses to {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
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

/// Snappy block decompression that refuses, before allocating, bodies that would decompress
/// to more than `limit` bytes (the length is in the snappy header).
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, WriteError> {
    let size = snap::raw::decompress_len(body).map_err(|e| WriteError::Snappy(e.to_string()))?;
    if size > limit {
        return Err(WriteError::TooLarge { size, limit });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| WriteError::Snappy(e.to_string()))
}

/// Counts of what a request held and what became of it.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub samples_written: u64,
    pub histograms_written: u64,
    pub exemplars_written: u64,
    pub out_of_order: u64,
    pub too_old: u64,
    pub duplicate: u64,
    pub invalid_series: u64,
    /// Samples carried by series refused for invalid labels.
    pub invalid_series_samples: u64,
    pub histograms_refused: u64,
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
        add(
            self.duplicate,
            "duplicate samples for a timestamp with a different value",
        );
        add(self.invalid_series, "series with invalid labels");
        add(
            self.histograms_refused,
            "native histogram samples (not supported: send classic histograms)",
        );
        if parts.is_empty() {
            return None;
        }
        let mut msg = format!(
            "{} samples written; refused: {}",
            self.samples_written,
            parts.join(", ")
        );
        if !self.examples.is_empty() {
            let _ = write!(msg, " (first: {})", self.examples.join("; "));
        }
        Some(msg)
    }

    pub fn samples_refused(&self) -> u64 {
        self.out_of_order + self.too_old + self.duplicate + self.invalid_series_samples
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
                let first = match e {
                    StorageError::OutOfOrderSample => {
                        self.out_of_order += 1;
                        self.out_of_order == 1
                    }
                    StorageError::DuplicateSampleForTimestamp => {
                        self.duplicate += 1;
                        self.duplicate == 1
                    }
                    _ => {
                        self.too_old += 1;
                        self.too_old == 1
                    }
                };
                if first {
                    self.example(format!("{e} for series {labels} at timestamp {t}"));
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn invalid(&mut self, why: String, samples: usize) {
        self.invalid_series += 1;
        self.invalid_series_samples += samples as u64;
        if self.invalid_series == 1 {
            self.example(why);
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
    match protocol {
        Protocol::V1 => {
            let req = prompb::WriteRequest::decode(body).map_err(|e| WriteError::Decode {
                what: "prometheus.WriteRequest",
                reason: e.to_string(),
            })?;
            write_v1(&req, app)
        }
        Protocol::V2 => {
            let req = v2::Request::decode(body).map_err(|e| WriteError::Decode {
                what: "io.prometheus.write.v2.Request",
                reason: e.to_string(),
            })?;
            write_v2(&req, app)
        }
    }
}

/// Appends a remote write 1.0 request.
pub fn write_v1(req: &prompb::WriteRequest, app: &mut dyn Appender) -> Result<Outcome, WriteError> {
    let mut out = Outcome::default();
    for ts in &req.timeseries {
        let labels = match build_labels(ts.labels.iter().map(|l| (&l.name[..], &l.value[..]))) {
            Ok(l) => l,
            Err(why) => {
                out.invalid(why, ts.samples.len());
                out.histograms_refused += ts.histograms.len() as u64;
                continue;
            }
        };
        for s in &ts.samples {
            out.append(app, &labels, s.timestamp, s.value)?;
        }
        out.histograms_refused += ts.histograms.len() as u64;
        for e in &ts.exemplars {
            match build_exemplar_labels(e.labels.iter().map(|l| (&l.name[..], &l.value[..]))) {
                Ok(el) => {
                    out.exemplars.push((
                        labels.clone(),
                        Exemplar {
                            labels: el,
                            value: e.value,
                            t: e.timestamp,
                        },
                    ));
                }
                Err(why) => out.invalid(why, 0),
            }
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
    for ts in &req.timeseries {
        let labels = match resolve_refs(&req.symbols, &ts.labels_refs)
            .and_then(|pairs| build_labels(pairs.into_iter()))
        {
            Ok(l) => l,
            Err(why) => {
                out.invalid(why, ts.samples.len());
                out.histograms_refused += ts.histograms.len() as u64;
                continue;
            }
        };
        for s in &ts.samples {
            out.append(app, &labels, s.timestamp, s.value)?;
        }
        out.histograms_refused += ts.histograms.len() as u64;
        for e in &ts.exemplars {
            match resolve_refs(&req.symbols, &e.labels_refs)
                .and_then(|pairs| build_exemplar_labels(pairs.into_iter()))
            {
                Ok(el) => out.exemplars.push((
                    labels.clone(),
                    Exemplar {
                        labels: el,
                        value: e.value,
                        t: e.timestamp,
                    },
                )),
                Err(why) => out.invalid(why, 0),
            }
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
    use m3query_model::Matcher;
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
        // A header that claims 2^32-1 bytes: refused by the header, not by allocation.
        let lie = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert!(matches!(
            decompress(&lie, 1 << 20),
            Err(WriteError::TooLarge { .. })
        ));
        assert!(matches!(
            decompress(b"\xffnot snappy", 1 << 20),
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

    #[test]
    fn histograms_are_refused_explicitly() {
        let s = MemStorage::new();
        let mut ts = series(&[("__name__", "h")], &[]);
        ts.histograms.push(prompb::Histogram::default());
        let req = prompb::WriteRequest {
            timeseries: vec![ts],
            metadata: vec![],
        };
        let mut app = s.appender();
        let out = write_v1(&req, app.as_mut()).expect("write");
        assert_eq!(out.histograms_refused, 1);
        assert!(out.refusal().expect("refused").contains("native histogram"));
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
