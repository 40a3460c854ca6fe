//! Native histograms end to end over the real binary (issue 13): remote write 1.0 and 2.0 in;
//! the query API and remote read (both response types) out; kill -9 in between; and the same
//! answers as a real Prometheus (Debian's 2.42, `--enable-feature=native-histograms`) given the
//! same writes.
//!
//! 2.42 cannot read us through its own `remote_read`: its remote-read client has no histogram
//! support (storage/remote/codec.go at v2.42.0 reads floats only and drops histograms; 2.44 added
//! it), and Debian's package is the Prometheus these tests can run. So the
//! comparison goes the other way round: both servers get the same writes, and their query
//! answers and their streamed remote-read chunks must decode to the same histograms.

mod common;

use common::hist::samples;
use common::{
    M3Query, Prometheus, client, eq_matcher, remote_read_samples, remote_read_streamed, send_snappy,
};
use m3query_chunkenc::{FloatHistogramIterator, HistogramIterator};
use m3query_model::histogram::{CounterResetHint, FloatHistogram, Histogram, Span};
use m3query_remote::histogram::{v1, v2};
use m3query_remote::prompb;
use prost::Message;
use serde_json::Value;

const RW2: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn labels(pairs: &[(&str, &str)]) -> Vec<prompb::Label> {
    pairs
        .iter()
        .map(|(n, v)| prompb::Label {
            name: n.as_bytes().to_vec().into(),
            value: v.as_bytes().to_vec().into(),
        })
        .collect()
}

/// A stale marker for a histogram series: Prometheus marks one by the sum's bit pattern.
fn stale_histogram() -> Histogram {
    Histogram {
        sum: f64::from_bits(m3query_model::STALE_NAN_BITS),
        ..Histogram::default()
    }
}

/// Custom-bucket (NHCB, schema -53) samples: upper bounds 0.1, 0.5, 1, 5 and +Inf.
fn custom_samples(t0: i64) -> Vec<(i64, Histogram)> {
    (0..8)
        .map(|i| {
            let c = [1 + i, 2 + i, 0, 3 + 2 * i, i];
            let mut deltas = Vec::new();
            let mut last = 0i64;
            for x in c {
                deltas.push(x - last);
                last = x;
            }
            (
                t0 + 15_000 * i,
                Histogram {
                    schema: -53,
                    count: c.iter().sum::<i64>() as u64,
                    sum: 4.25 * (i + 1) as f64,
                    positive_spans: vec![Span::new(0, 5)],
                    positive_buckets: deltas,
                    custom_values: vec![0.1, 0.5, 1.0, 5.0],
                    ..Histogram::default()
                },
            )
        })
        .collect()
}

/// What every test series holds.
struct Sent {
    t0: i64,
    end: i64,
    int: Vec<(i64, Histogram)>,
    float: Vec<(i64, FloatHistogram)>,
    gauge: Vec<(i64, Histogram)>,
    custom: Vec<(i64, Histogram)>,
}

impl Sent {
    fn new() -> Sent {
        let t0 = now_ms() - 3_600_000;
        let int = samples(t0, false);
        let float = int
            .iter()
            .map(|(t, h)| {
                let mut f = h.to_float();
                f.div(3.0);
                (*t, f)
            })
            .collect();
        let mut gauge = samples(t0, true);
        for (_, h) in gauge.iter_mut() {
            h.counter_reset_hint = CounterResetHint::Gauge;
        }
        let end = int.last().map_or(t0, |s| s.0);
        Sent {
            t0,
            end,
            int,
            float,
            gauge,
            custom: custom_samples(t0),
        }
    }

    /// The remote write 1.0 request both servers get: `nh{job=int|float|gauge}`.
    fn v1_common(&self) -> prompb::WriteRequest {
        let ts = |job: &str, hs: Vec<prompb::Histogram>| prompb::TimeSeries {
            labels: labels(&[("__name__", "nh"), ("job", job)]),
            histograms: hs,
            ..Default::default()
        };
        let ints = |s: &[(i64, Histogram)]| s.iter().map(|(t, h)| v1::to_proto(*t, h)).collect();
        prompb::WriteRequest {
            timeseries: vec![
                ts("int", ints(&self.int)),
                ts(
                    "float",
                    self.float
                        .iter()
                        .map(|(t, h)| v1::float_to_proto(*t, h))
                        .collect(),
                ),
                ts("gauge", ints(&self.gauge)),
            ],
            metadata: vec![],
        }
    }

    /// What only m3query gets by 1.0 (2.42 knows neither custom buckets nor, by remote
    /// write, stale histograms): `nh_custom` and `nh_stale`, which ends in a stale marker,
    /// and a float sample series beside them in the same request.
    fn v1_ours(&self) -> prompb::WriteRequest {
        let mut stale: Vec<prompb::Histogram> = self.int[..4]
            .iter()
            .map(|(t, h)| v1::to_proto(*t, h))
            .collect();
        stale.push(v1::to_proto(self.int[4].0, &stale_histogram()));
        prompb::WriteRequest {
            timeseries: vec![
                prompb::TimeSeries {
                    labels: labels(&[("__name__", "nh_custom"), ("job", "nhcb")]),
                    histograms: self
                        .custom
                        .iter()
                        .map(|(t, h)| v1::to_proto(*t, h))
                        .collect(),
                    ..Default::default()
                },
                prompb::TimeSeries {
                    labels: labels(&[("__name__", "nh_stale"), ("job", "int")]),
                    histograms: stale,
                    ..Default::default()
                },
                prompb::TimeSeries {
                    labels: labels(&[("__name__", "nh_float_beside"), ("job", "int")]),
                    samples: vec![prompb::Sample {
                        value: 1.5,
                        timestamp: self.t0,
                    }],
                    ..Default::default()
                },
            ],
            metadata: vec![],
        }
    }

    /// The integer and float series again by remote write 2.0, with `proto="v2"`.
    fn v2(&self) -> prompb::v2::Request {
        let symbols = ["", "__name__", "nh", "job", "int", "float", "proto", "v2"];
        prompb::v2::Request {
            symbols: symbols.map(String::from).to_vec(),
            timeseries: vec![
                prompb::v2::TimeSeries {
                    labels_refs: vec![1, 2, 3, 4, 6, 7],
                    histograms: self.int.iter().map(|(t, h)| v2::to_proto(*t, h)).collect(),
                    ..Default::default()
                },
                prompb::v2::TimeSeries {
                    labels_refs: vec![1, 2, 3, 5, 6, 7],
                    histograms: self
                        .float
                        .iter()
                        .map(|(t, h)| v2::float_to_proto(*t, h))
                        .collect(),
                    ..Default::default()
                },
            ],
        }
    }
}

fn secs(ms: i64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// `data.result` of a query API call, sorted by the series' labels.
fn api(base: &str, path: &str, params: &[(&str, String)]) -> Vec<Value> {
    let r = client()
        .get(format!("{base}{path}"))
        .query(params)
        .send()
        .expect("query API");
    let status = r.status().as_u16();
    let body: Value = r.json().expect("JSON answer");
    assert_eq!(status, 200, "{path} {params:?}: {body}");
    let mut result = body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    result.sort_by_key(|s| s["metric"].to_string());
    result
}

fn range(base: &str, q: &str, s: &Sent) -> Vec<Value> {
    api(
        base,
        "/api/v1/query_range",
        &[
            ("query", q.to_string()),
            ("start", secs(s.t0)),
            ("end", secs(s.end)),
            ("step", "15".to_string()),
        ],
    )
}

fn instant(base: &str, q: &str, t: i64) -> Vec<Value> {
    api(
        base,
        "/api/v1/query",
        &[("query", q.to_string()), ("time", secs(t))],
    )
}

/// Two histogram JSON objects are the same: count, sum and every bucket's boundary rule and
/// count as strings. Bucket bounds of schemas > 0 may differ in their last digits: Prometheus
/// takes them from a precomputed table, we compute them (crates/model histogram/bounds.rs), so
/// they are compared as numbers to 4 ulp.
fn same_histogram(a: &Value, b: &Value, what: &str) {
    assert_eq!(a["count"], b["count"], "{what}: count\n{a}\n{b}");
    assert_eq!(a["sum"], b["sum"], "{what}: sum\n{a}\n{b}");
    let (ab, bb) = (
        a["buckets"].as_array().cloned().unwrap_or_default(),
        b["buckets"].as_array().cloned().unwrap_or_default(),
    );
    assert_eq!(ab.len(), bb.len(), "{what}: bucket count\n{a}\n{b}");
    for (x, y) in ab.iter().zip(&bb) {
        assert_eq!(x[0], y[0], "{what}: boundary rule\n{x}\n{y}");
        assert_eq!(x[3], y[3], "{what}: bucket count\n{x}\n{y}");
        for i in [1, 2] {
            let p = |v: &Value| -> f64 {
                v.as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("{what}: bound {v}"))
            };
            let (u, v) = (p(&x[i]), p(&y[i]));
            assert!(
                u == v || ((u - v).abs() <= 4.0 * f64::EPSILON * u.abs()),
                "{what}: bucket bound {u} vs {v}\n{x}\n{y}"
            );
        }
    }
}

/// Two query results (vectors or matrices) are the same series with the same points.
fn same_result(ours: &[Value], prom: &[Value], what: &str) {
    assert_eq!(
        ours.iter().map(|s| &s["metric"]).collect::<Vec<_>>(),
        prom.iter().map(|s| &s["metric"]).collect::<Vec<_>>(),
        "{what}: series"
    );
    for (o, p) in ours.iter().zip(prom) {
        let what = format!("{what} {}", o["metric"]);
        assert_eq!(o["value"], p["value"], "{what}: value");
        assert_eq!(o["values"], p["values"], "{what}: values");
        if let (Some(oh), Some(ph)) = (o.get("histogram"), p.get("histogram")) {
            assert_eq!(oh[0], ph[0], "{what}: timestamp");
            same_histogram(&oh[1], &ph[1], &what);
        } else {
            assert_eq!(o.get("histogram"), p.get("histogram"), "{what}: histogram");
        }
        let (oh, ph) = (
            o["histograms"].as_array().cloned().unwrap_or_default(),
            p["histograms"].as_array().cloned().unwrap_or_default(),
        );
        assert_eq!(oh.len(), ph.len(), "{what}: histogram points");
        for (x, y) in oh.iter().zip(&ph) {
            assert_eq!(x[0], y[0], "{what}: timestamps");
            same_histogram(&x[1], &y[1], &format!("{what} at {}", x[0]));
        }
    }
}

/// A series' histograms in time order.
type Points = Vec<(i64, FloatHistogram)>;

/// Every histogram of the streamed chunks of each series, with the chunk encodings seen.
fn decode_chunks(series: &[prompb::ChunkedSeries]) -> Vec<(Vec<i32>, Points)> {
    series
        .iter()
        .map(|cs| {
            let mut kinds = Vec::new();
            let mut out = Vec::new();
            for c in &cs.chunks {
                kinds.push(c.r#type);
                if c.r#type == prompb::chunk::Encoding::Histogram as i32 {
                    let mut it = HistogramIterator::new(&c.data).expect("chunk header");
                    while let Some((t, h)) = it.next_histogram().expect("valid chunk") {
                        out.push((t, norm(&h.to_float())));
                    }
                } else if c.r#type == prompb::chunk::Encoding::FloatHistogram as i32 {
                    let mut it = FloatHistogramIterator::new(&c.data).expect("chunk header");
                    while let Some((t, h)) = it.next_histogram().expect("valid chunk") {
                        out.push((t, norm(&h)));
                    }
                } else {
                    panic!("unexpected chunk encoding {}", c.r#type);
                }
            }
            (kinds, out)
        })
        .collect()
}

/// A histogram without empty buckets or reset hint, for comparing across re-encodings.
fn norm(h: &FloatHistogram) -> FloatHistogram {
    let mut f = h.clone();
    f.compact(0);
    f.counter_reset_hint = CounterResetHint::Unknown;
    f
}

fn norm_all<'a>(
    s: impl IntoIterator<Item = &'a (i64, FloatHistogram)>,
) -> Vec<(i64, FloatHistogram)> {
    s.into_iter().map(|(t, h)| (*t, norm(h))).collect()
}

fn write_ok(url: &str, raw: &[u8], content_type: &str, who: &str) {
    let (status, body) = send_snappy(url, raw, content_type);
    assert!(
        status == 204 || status == 200,
        "{who}: remote write of native histograms refused: {status} {body}"
    );
}

#[test]
fn native_histograms_round_trip_like_prometheus_and_survive_kill9() {
    let sent = Sent::new();
    let prom = Prometheus::start(
        "global:\n  scrape_interval: 1h\n",
        &[
            "--enable-feature=native-histograms",
            "--web.enable-remote-write-receiver",
        ],
    );
    let mut m = M3Query::start("");
    let common_req = sent.v1_common().encode_to_vec();
    write_ok(
        &prom.url("/api/v1/write"),
        &common_req,
        "application/x-protobuf",
        "prometheus",
    );
    write_ok(
        &m.url("/api/v1/write"),
        &common_req,
        "application/x-protobuf",
        "m3query",
    );
    write_ok(
        &m.url("/api/v1/write"),
        &sent.v1_ours().encode_to_vec(),
        "application/x-protobuf",
        "m3query",
    );
    // Remote write 2.0 reports what it wrote.
    let r = client()
        .post(m.url("/api/v1/write"))
        .header("Content-Type", RW2)
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "2.0.0")
        .body(
            snap::raw::Encoder::new()
                .compress_vec(&sent.v2().encode_to_vec())
                .expect("snappy"),
        )
        .send()
        .expect("remote write 2.0");
    assert_eq!(r.status().as_u16(), 204, "remote write 2.0");
    assert_eq!(
        r.headers()
            .get("X-Prometheus-Remote-Write-Histograms-Written")
            .and_then(|v| v.to_str().ok()),
        Some((sent.int.len() + sent.float.len()).to_string().as_str()),
        "histograms written by 2.0"
    );

    // The server's own metrics count what was stored: every histogram sent, the stale
    // marker included.
    let sent_total =
        2 * (sent.int.len() + sent.float.len()) + sent.gauge.len() + sent.custom.len() + 5;
    let metrics = client()
        .get(m.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    let metric = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    assert_eq!(
        metric("m3query_tsdb_histogram_samples_appended_total"),
        Some(sent_total as f64),
        "{metrics}"
    );
    assert_eq!(
        metric("m3query_remote_write_histograms_total{result=\"written\"}"),
        Some(sent_total as f64),
        "{metrics}"
    );

    let ours = m.url("");
    let prom_base = prom.url("");
    assert_eq!(
        range(&prom_base, "nh", &sent).len(),
        3,
        "Prometheus holds the three series\n{}",
        prom.log()
    );

    // 1. The query API answers as Prometheus does: raw histograms in ranges and instants,
    //    and functions of them.
    let queries = [
        "nh{proto=\"\"}",
        "histogram_count(nh{proto=\"\"})",
        "histogram_sum(nh{proto=\"\"})",
    ];
    let compare_with_prometheus = |base: &str, when: &str| {
        for q in queries {
            same_result(
                &range(base, q, &sent),
                &range(&prom_base, q, &sent),
                &format!("{when}: range {q}"),
            );
            for t in [sent.t0, sent.t0 + 50_000, sent.end] {
                same_result(
                    &instant(base, q, t),
                    &instant(&prom_base, q, t),
                    &format!("{when}: instant {q} at {t}"),
                );
            }
        }
    };
    compare_with_prometheus(&ours, "before restart");

    // 2. What came by 2.0 reads back as what came by 1.0.
    let strip = |mut v: Vec<Value>| {
        for s in &mut v {
            if let Some(m) = s["metric"].as_object_mut() {
                m.remove("proto");
            }
        }
        v
    };
    for q in ["nh", "histogram_count(nh)"] {
        let (a, b) = (
            q.replace("nh", "nh{proto=\"v2\"}"),
            q.replace("nh", "nh{proto=\"\",job=~\"int|float\"}"),
        );
        assert_eq!(
            strip(range(&ours, &a, &sent)),
            range(&ours, &b, &sent),
            "2.0 against 1.0: {q}"
        );
    }

    // 3. Custom buckets: the bounds sent, +Inf last, counts as sent.
    let last_custom = sent.custom.last().expect("custom samples");
    let v = instant(&ours, "nh_custom", last_custom.0);
    assert_eq!(v.len(), 1, "{v:?}");
    let buckets = v[0]["histogram"][1]["buckets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let uppers: Vec<&str> = buckets.iter().filter_map(|b| b[2].as_str()).collect();
    let counts: Vec<&str> = buckets.iter().filter_map(|b| b[3].as_str()).collect();
    // The last sample's counts are 8, 9, 0, 17, 7: the empty bucket is left out.
    assert_eq!(uppers, ["0.1", "0.5", "5", "+Inf"], "{v:?}");
    assert_eq!(counts, ["8", "9", "17", "7"], "{v:?}");
    assert_eq!(
        instant(&ours, "histogram_count(nh_custom)", last_custom.0)[0]["value"][1],
        "41"
    );

    // 4. A stale marker ends the series at once, not after the 5m lookback.
    let stale_t = sent.int[4].0;
    assert_eq!(instant(&ours, "nh_stale", stale_t - 1).len(), 1);
    assert!(instant(&ours, "nh_stale", stale_t + 1_000).is_empty());

    // 5. Remote read, streamed: HISTOGRAM chunks for integer series and FLOAT_HISTOGRAM
    //    chunks for float ones, decoding to what was sent and to what Prometheus streams.
    let read = |base: &str, job: &str| {
        remote_read_streamed(
            &format!("{base}/api/v1/read"),
            vec![
                eq_matcher("__name__", "nh"),
                eq_matcher("job", job),
                eq_matcher("proto", ""),
            ],
            sent.t0 - 1,
            sent.end + 1,
        )
    };
    let check_streamed = |ours: &str, when: &str| {
        for (job, want_kind, want) in [
            (
                "int",
                prompb::chunk::Encoding::Histogram as i32,
                norm_all(
                    &sent
                        .int
                        .iter()
                        .map(|(t, h)| (*t, h.to_float()))
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "gauge",
                prompb::chunk::Encoding::Histogram as i32,
                norm_all(
                    &sent
                        .gauge
                        .iter()
                        .map(|(t, h)| (*t, h.to_float()))
                        .collect::<Vec<_>>(),
                ),
            ),
            (
                "float",
                prompb::chunk::Encoding::FloatHistogram as i32,
                norm_all(&sent.float),
            ),
        ] {
            let o = decode_chunks(&read(ours, job));
            let p = decode_chunks(&read(&prom_base, job));
            assert_eq!((o.len(), p.len()), (1, 1), "{when} {job}: one series each");
            assert!(
                o[0].0.iter().all(|k| *k == want_kind),
                "{when} {job}: chunk kinds {:?}",
                o[0].0
            );
            assert_eq!(o[0].1, want, "{when} {job}: streamed samples");
            assert_eq!(o[0].1, p[0].1, "{when} {job}: against Prometheus");
        }
    };
    check_streamed(&ours, "before restart");

    // 6. Remote read, samples: integer histograms keep integer counts.
    let rr = remote_read_samples(
        &m.url("/api/v1/read"),
        vec![
            eq_matcher("__name__", "nh"),
            eq_matcher("job", "int"),
            eq_matcher("proto", ""),
        ],
        sent.t0 - 1,
        sent.end + 1,
    );
    let ts = &rr.results[0].timeseries;
    assert_eq!(ts.len(), 1, "{ts:?}");
    assert!(ts[0].samples.is_empty());
    assert_eq!(ts[0].histograms.len(), sent.int.len());
    for (got, (t, h)) in ts[0].histograms.iter().zip(&sent.int) {
        assert_eq!(got.timestamp, *t);
        assert!(
            matches!(got.count, Some(prompb::histogram::Count::CountInt(c)) if c == h.count),
            "integer count at {t}: {got:?}"
        );
        let back = match v1::from_proto(got) {
            m3query_remote::histogram::HistogramSample::Int(_, h) => h.to_float(),
            m3query_remote::histogram::HistogramSample::Float(_, h) => h,
        };
        assert_eq!(norm(&back), norm(&h.to_float()), "sample at {t}");
    }

    // 7. kill -9 and start again on the same data: every answer is the same.
    let before: Vec<Vec<Value>> = ["nh", "nh_custom", "nh_stale", "histogram_count(nh)"]
        .iter()
        .map(|q| range(&ours, q, &sent))
        .collect();
    let _ = m.child.kill();
    let _ = m.child.wait();
    let dir = std::mem::replace(&mut m.dir, tempfile::tempdir().expect("tempdir"));
    drop(m);
    let m = M3Query::start_in(dir, "", &[]);
    let ours = m.url("");
    let after: Vec<Vec<Value>> = ["nh", "nh_custom", "nh_stale", "histogram_count(nh)"]
        .iter()
        .map(|q| range(&ours, q, &sent))
        .collect();
    assert_eq!(before, after, "answers changed across kill -9");
    compare_with_prometheus(&ours, "after kill -9");
    check_streamed(&ours, "after kill -9");
}

/// Within `storage.outOfOrderWindow` remote write accepts histograms older than their series'
/// newest sample, as Prometheus 3 does: they read back merged in time order through the query
/// API and remote read (hint `Unknown`: a reset across them cannot be known), and survive
/// kill -9 (WAL replay). Without the window they are refused, alone.
#[test]
fn out_of_order_histograms_within_the_window() {
    let now = now_ms();
    let t0 = now - now % 60_000 - 20 * 60_000;
    let h = |k: u64| Histogram {
        counter_reset_hint: CounterResetHint::NotCounterReset,
        schema: 0,
        zero_threshold: 0.001,
        zero_count: 1,
        count: 1 + 3 * k,
        sum: k as f64 * 2.5,
        positive_spans: vec![Span::new(0, 2)],
        positive_buckets: vec![k as i64, k as i64],
        ..Histogram::default()
    };
    let request = |ts: &[i64]| {
        prompb::WriteRequest {
            timeseries: vec![prompb::TimeSeries {
                labels: labels(&[("__name__", "nh_ooo"), ("job", "late")]),
                histograms: ts
                    .iter()
                    .map(|&t| v1::to_proto(t, &h(((t - t0) / 30_000) as u64)))
                    .collect(),
                ..Default::default()
            }],
            metadata: vec![],
        }
        .encode_to_vec()
    };
    // In order every minute, then the half minutes in between, late.
    let in_order: Vec<i64> = (0..6).map(|k| t0 + 2 * k * 30_000).collect();
    let late: Vec<i64> = (0..5).map(|k| t0 + (2 * k + 1) * 30_000).collect();
    let mut all: Vec<i64> = in_order.iter().chain(&late).copied().collect();
    all.sort_unstable();

    let refused = M3Query::start("");
    let url = refused.url("/api/v1/write");
    write_ok(
        &url,
        &request(&in_order),
        "application/x-protobuf",
        "m3query",
    );
    let (status, body) = send_snappy(&url, &request(&late), "application/x-protobuf");
    assert_eq!(status, 400, "no window: refused: {body}");
    assert!(body.contains("5 out of order samples"), "{body}");
    drop(refused);

    let mut m = M3Query::start("  outOfOrderWindow: 1h\n");
    let url = m.url("/api/v1/write");
    write_ok(
        &url,
        &request(&in_order),
        "application/x-protobuf",
        "m3query",
    );
    write_ok(
        &url,
        &request(&late),
        "application/x-protobuf",
        "m3query late",
    );
    let end = t0 + 10 * 30_000;
    let check = |base: &str, when: &str| {
        let r = api(
            base,
            "/api/v1/query_range",
            &[
                ("query", "nh_ooo".to_string()),
                ("start", secs(t0)),
                ("end", secs(end)),
                ("step", "30".to_string()),
            ],
        );
        assert_eq!(r.len(), 1, "{when}: {r:?}");
        let got: Vec<(i64, String)> = r[0]["histograms"]
            .as_array()
            .expect("histograms")
            .iter()
            .map(|p| {
                (
                    (p[0].as_f64().expect("time") * 1000.0).round() as i64,
                    p[1]["count"].as_str().expect("count").to_string(),
                )
            })
            .collect();
        let want: Vec<(i64, String)> = all
            .iter()
            .map(|&t| (t, h(((t - t0) / 30_000) as u64).count.to_string()))
            .collect();
        assert_eq!(got, want, "{when}: query API");
        let rr = remote_read_samples(
            &format!("{base}/api/v1/read"),
            vec![eq_matcher("__name__", "nh_ooo")],
            t0,
            end,
        );
        let hs = &rr.results[0].timeseries[0].histograms;
        let hints: Vec<(i64, CounterResetHint)> = hs
            .iter()
            .map(|x| (x.timestamp, CounterResetHint::from_proto(x.reset_hint)))
            .collect();
        assert_eq!(hints.len(), all.len(), "{when}: remote read");
        for (t, hint) in hints {
            if late.contains(&t) {
                assert_eq!(
                    hint,
                    CounterResetHint::Unknown,
                    "{when}: late sample at {t}"
                );
            }
        }
    };
    let base = m.url("");
    check(&base, "head");
    let _ = m.child.kill();
    let _ = m.child.wait();
    let dir = std::mem::replace(&mut m.dir, tempfile::tempdir().expect("tempdir"));
    drop(m);
    let m = M3Query::start_in(dir, "  outOfOrderWindow: 1h\n", &[]);
    check(&m.url(""), "after kill -9");
}
