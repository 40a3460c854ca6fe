//! Remote write and read, and the metadata APIs, over HTTP against the real binary: every
//! error with its status and message, both protocols, both read response types.

mod common;

use common::{M3Query, client, remote_write_v1, send_snappy};
use m3query_remote::prompb;
use prost::Message;
use serde_json::Value;

fn write_url(m: &M3Query) -> String {
    m.url("/api/v1/prom/remote/write")
}

fn get_json(url: &str) -> (u16, Value) {
    let r = client().get(url).send().expect("request");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn series_count(m: &M3Query, selector: &str) -> usize {
    let (s, v) = get_json(&m.url(&format!("/api/v1/series?match[]={selector}")));
    assert_eq!(s, 200, "{v}");
    v["data"].as_array().map_or(0, Vec::len)
}

#[test]
fn remote_write_errors_are_prometheus_shaped() {
    let m =
        M3Query::start("http:\n  maxRequestBodyBytes: 20000\n  maxDecompressedBodyBytes: 100000\n");
    let c = client();

    // Undecodable protobuf.
    let (s, body) = send_snappy(
        &write_url(&m),
        b"\xff\xff\xff\xff",
        "application/x-protobuf",
    );
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("cannot decode"), "{body}");

    // Not snappy.
    let r = c
        .post(write_url(&m))
        .header("Content-Encoding", "snappy")
        .body(&b"\xffgarbage"[..])
        .send()
        .expect("send");
    assert_eq!(r.status(), 400);
    assert!(r.text().expect("body").contains("snappy"));

    // Unknown content type / encoding.
    let (s, body) = send_snappy(&write_url(&m), b"", "application/json");
    assert_eq!(s, 415, "{body}");
    let r = c
        .post(write_url(&m))
        .header("Content-Encoding", "gzip")
        .body(Vec::new())
        .send()
        .expect("send");
    assert_eq!(r.status(), 415);

    // Over the compressed limit.
    let r = c
        .post(write_url(&m))
        .header("Content-Encoding", "snappy")
        .body(vec![0u8; 30_000])
        .send()
        .expect("send");
    assert_eq!(r.status(), 413);

    // A decompression bomb: 10 MB of zeros compresses to ~500 KB... too big for the body
    // limit, so lie in the snappy header instead: it claims 4 GiB in a few bytes, which no
    // snappy stream that short can hold (400, refused before allocating).
    let r = c
        .post(write_url(&m))
        .header("Content-Encoding", "snappy")
        .body(vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x00])
        .send()
        .expect("send");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().expect("json");
    assert_eq!(v["status"], "error");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("decode to at most"))
    );
    // And a real one: 200 KB of zeros, ~10 KB compressed, over the 100 KB decompressed limit.
    let (s, body) = send_snappy(
        &write_url(&m),
        &vec![0u8; 200_000],
        "application/x-protobuf",
    );
    assert_eq!(s, 413, "{body}");
    assert!(body.contains("over the 100000-byte limit"), "{body}");

    // Invalid labels and out-of-order samples refuse only themselves.
    let (s, body) = remote_write_v1(
        &write_url(&m),
        &[
            (
                vec![("__name__", "good"), ("a", "1")],
                vec![(1000, 1.0), (2000, 2.0)],
            ),
            (
                vec![("__name__", "good"), ("a", "1")],
                vec![(1500, 9.0), (3000, 3.0)],
            ),
            (
                vec![("__name__", "dup"), ("x", "1"), ("x", "2")],
                vec![(1000, 1.0)],
            ),
            (vec![("__name__", "empty"), ("", "v")], vec![(1000, 1.0)]),
            (vec![("job", "nameless")], vec![(1000, 1.0)]),
        ],
    );
    assert_eq!(s, 400, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let msg = v["error"].as_str().expect("message");
    assert!(msg.starts_with("3 samples written"), "{msg}");
    assert!(msg.contains("1 out of order samples"), "{msg}");
    assert!(msg.contains("3 series with invalid labels"), "{msg}");
    assert_eq!(series_count(&m, "good"), 1);
    assert_eq!(series_count(&m, r#"{__name__=~"dup|empty"}"#), 0);

    // Invalid UTF-8 in a label value.
    let req = prompb::WriteRequest {
        timeseries: vec![prompb::TimeSeries {
            labels: vec![
                prompb::Label {
                    name: b"__name__".to_vec().into(),
                    value: b"bad_utf8".to_vec().into(),
                },
                prompb::Label {
                    name: b"v".to_vec().into(),
                    value: vec![0xc3, 0x28].into(),
                },
            ],
            samples: vec![prompb::Sample {
                value: 1.0,
                timestamp: 1,
            }],
            ..Default::default()
        }],
        metadata: vec![],
    };
    let (s, body) = send_snappy(
        &write_url(&m),
        &req.encode_to_vec(),
        "application/x-protobuf",
    );
    assert_eq!(s, 400);
    assert!(body.contains("UTF-8"), "{body}");

    // An invalid native histogram (its buckets hold 1 observation, its count says 2) is
    // refused with Prometheus's reason, whatever the store.
    let req = prompb::WriteRequest {
        timeseries: vec![prompb::TimeSeries {
            labels: vec![prompb::Label {
                name: b"__name__".to_vec().into(),
                value: b"h".to_vec().into(),
            }],
            histograms: vec![prompb::Histogram {
                count: Some(prompb::histogram::Count::CountInt(2)),
                positive_spans: vec![prompb::BucketSpan {
                    offset: 0,
                    length: 1,
                }],
                positive_deltas: vec![1],
                timestamp: 1,
                ..Default::default()
            }],
            ..Default::default()
        }],
        metadata: vec![],
    };
    let (s, body) = send_snappy(
        &write_url(&m),
        &req.encode_to_vec(),
        "application/x-protobuf",
    );
    assert_eq!(s, 400);
    assert!(
        body.contains("1 invalid native histogram samples"),
        "{body}"
    );
    assert!(
        body.contains("histogram's observation count should equal the number of observations found in the buckets"),
        "{body}"
    );

    // The server is fine, and counted what it refused.
    let metrics = c
        .get(m.url("/metrics"))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    assert!(
        metrics.contains(r#"m3query_remote_write_samples_total{result="out_of_order"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"m3query_remote_write_histograms_total{result="invalid"} 1"#),
        "{metrics}"
    );
}

#[test]
fn remote_write_v2_golden_and_headers() {
    let m = M3Query::start("");
    let golden = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rw2_example.bin"),
    )
    .expect("fixture");
    // Our own samples go next to the golden's: the store refuses samples older than its
    // retention before the newest data it holds.
    let golden_t = prompb::v2::Request::decode(golden.as_slice())
        .expect("golden decodes")
        .timeseries
        .iter()
        .flat_map(|t| t.samples.iter().map(|s| s.timestamp))
        .max()
        .expect("golden samples");
    let body = snap::raw::Encoder::new()
        .compress_vec(&golden)
        .expect("snappy");
    let r = client()
        .post(m.url("/api/v1/write"))
        .header(
            "Content-Type",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        )
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "2.0.0")
        .body(body)
        .send()
        .expect("send");
    assert_eq!(r.status(), 204);
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(
        h("x-prometheus-remote-write-samples-written").as_deref(),
        Some("2")
    );
    assert_eq!(
        h("x-prometheus-remote-write-histograms-written").as_deref(),
        Some("0")
    );
    assert_eq!(
        h("x-prometheus-remote-write-exemplars-written").as_deref(),
        Some("1")
    );

    let (_, v) = get_json(&m.url("/api/v1/series?match[]=my_metric"));
    assert_eq!(
        v["data"],
        serde_json::json!([{"__name__": "my_metric", "foo": "bar"}])
    );
    let (_, v) = get_json(&m.url("/api/v1/metadata?metric=my_metric"));
    assert_eq!(
        v["data"],
        serde_json::json!({"my_metric": [{"type": "gauge", "help": "Help text for my_metric.", "unit": "seconds"}]})
    );

    // Our own 2.0 encoder, with a symbol reference out of range in one series.
    let req = prompb::v2::Request {
        symbols: ["", "__name__", "enc_metric", "job", "x"]
            .map(String::from)
            .to_vec(),
        timeseries: vec![
            prompb::v2::TimeSeries {
                labels_refs: vec![1, 2, 3, 4],
                samples: vec![prompb::v2::Sample {
                    value: 7.0,
                    timestamp: golden_t,
                }],
                ..Default::default()
            },
            prompb::v2::TimeSeries {
                labels_refs: vec![1, 42],
                samples: vec![prompb::v2::Sample {
                    value: 1.0,
                    timestamp: golden_t,
                }],
                ..Default::default()
            },
        ],
    };
    let (s, body) = send_snappy(
        &m.url("/api/v1/write"),
        &req.encode_to_vec(),
        "application/x-protobuf;proto=io.prometheus.write.v2.Request",
    );
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("out of range"), "{body}");
    assert_eq!(series_count(&m, "enc_metric"), 1);
}

#[test]
fn metadata_api_parameters_and_errors() {
    let m = M3Query::start("");
    let series: Vec<common::TestSeries> = vec![
        (
            vec![("__name__", "up"), ("job", "api"), ("instance", "a")],
            vec![(1_000_000, 1.0)],
        ),
        (
            vec![("__name__", "up"), ("job", "db"), ("instance", "b")],
            vec![(2_000_000, 1.0)],
        ),
        (
            vec![("__name__", "errors_total"), ("job", "api")],
            vec![(3_000_000, 5.0)],
        ),
    ];
    let (s, body) = remote_write_v1(&m.url("/api/v1/write"), &series);
    assert_eq!(s, 204, "{body}");

    // GET and POST forms agree.
    let (_, get) = get_json(&m.url("/api/v1/series?match[]=up&match[]=errors_total"));
    let post: Value = client()
        .post(m.url("/api/v1/series"))
        .form(&[("match[]", "up"), ("match[]", "errors_total")])
        .send()
        .expect("post")
        .json()
        .expect("json");
    assert_eq!(get, post);
    assert_eq!(get["data"].as_array().map(Vec::len), Some(3));

    // Time range: only series with samples in it.
    let (_, v) = get_json(&m.url("/api/v1/series?match[]=up&start=1500&end=2500"));
    assert_eq!(
        v["data"],
        serde_json::json!([{"__name__": "up", "instance": "b", "job": "db"}])
    );
    let (_, v) = get_json(
        &m.url("/api/v1/series?match[]=up&start=1970-01-01T00:25:00Z&end=1970-01-01T00:41:40Z"),
    );
    assert_eq!(v["data"].as_array().map(Vec::len), Some(1));

    let (_, v) = get_json(&m.url("/api/v1/labels"));
    assert_eq!(
        v["data"],
        serde_json::json!(["__name__", "instance", "job"])
    );
    let (_, v) = get_json(&m.url("/api/v1/labels?match[]=errors_total"));
    assert_eq!(v["data"], serde_json::json!(["__name__", "job"]));
    let (_, v) = get_json(&m.url("/api/v1/label/__name__/values"));
    assert_eq!(v["data"], serde_json::json!(["errors_total", "up"]));
    let (_, v) = get_json(&m.url("/api/v1/label/job/values?match[]=up&limit=1"));
    assert_eq!(v["data"], serde_json::json!(["api"]));
    assert_eq!(
        v["warnings"],
        serde_json::json!(["results truncated due to limit"])
    );
    // Like Prometheus, lookups are filtered by time at block and head granularity.
    let (_, v) = get_json(&m.url("/api/v1/label/job/values?start=0&end=500"));
    assert_eq!(v["data"], serde_json::json!([]));

    for (url, want) in [
        ("/api/v1/series", "no match[] parameter provided"),
        (
            "/api/v1/series?match[]=rate(up[5m])",
            "not a series selector",
        ),
        (
            "/api/v1/series?match[]={job=\"\"}",
            "at least one non-empty matcher",
        ),
        ("/api/v1/series?match[]=up{", "match[]"),
        (
            "/api/v1/series?match[]=up&start=yesterday",
            "invalid parameter \"start\"",
        ),
        (
            "/api/v1/series?match[]=up&start=10&end=5",
            "end timestamp must not be before",
        ),
        ("/api/v1/labels?limit=-1", "invalid parameter \"limit\""),
        (
            "/api/v1/label/job/values?match[]=%7Ba%3D~%22(%22%7D",
            "regex",
        ),
        ("/api/v1/metadata?limit=x", "invalid parameter \"limit\""),
    ] {
        let (s, v) = get_json(&m.url(url));
        assert_eq!(s, 400, "{url}: {v}");
        assert_eq!(v["errorType"], "bad_data", "{url}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(want)),
            "{url}: {v}"
        );
    }
}

#[test]
fn remote_read_samples_and_streamed_chunks() {
    let m = M3Query::start("");
    let samples: Vec<(i64, f64)> = (0..500).map(|i| (i * 15_000, i as f64)).collect();
    let (s, body) = remote_write_v1(
        &m.url("/api/v1/write"),
        &[
            (vec![("__name__", "rr"), ("i", "1")], samples.clone()),
            (vec![("__name__", "rr"), ("i", "2")], samples.clone()),
        ],
    );
    assert_eq!(s, 204, "{body}");
    let query = |start: i64, end: i64| prompb::Query {
        start_timestamp_ms: start,
        end_timestamp_ms: end,
        matchers: vec![prompb::LabelMatcher {
            r#type: prompb::label_matcher::Type::Eq as i32,
            name: "__name__".into(),
            value: "rr".into(),
        }],
        hints: None,
    };
    let send = |req: &prompb::ReadRequest| {
        client()
            .post(m.url("/api/v1/prom/remote/read"))
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", "snappy")
            .header("X-Prometheus-Remote-Read-Version", "0.1.0")
            .body(
                snap::raw::Encoder::new()
                    .compress_vec(&req.encode_to_vec())
                    .expect("snappy"),
            )
            .send()
            .expect("read")
    };

    let r = send(&prompb::ReadRequest {
        queries: vec![query(0, 100_000), query(7_000_000, 7_500_000)],
        accepted_response_types: vec![prompb::read_request::ResponseType::Samples as i32],
    });
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "snappy");
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&r.bytes().expect("body"))
        .expect("snappy");
    let resp = prompb::ReadResponse::decode(raw.as_slice()).expect("decode");
    assert_eq!(resp.results.len(), 2);
    assert_eq!(resp.results[0].timeseries.len(), 2);
    assert_eq!(resp.results[0].timeseries[0].samples.len(), 7);
    assert_eq!(resp.results[1].timeseries[0].samples.len(), 33);

    let r = send(&prompb::ReadRequest {
        queries: vec![query(0, i64::MAX)],
        accepted_response_types: vec![
            prompb::read_request::ResponseType::StreamedXorChunks as i32,
            prompb::read_request::ResponseType::Samples as i32,
        ],
    });
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"
    );
    let bytes = r.bytes().expect("body");
    let mut reader = m3query_remote::read::FrameReader::new(&bytes);
    let mut total = 0;
    while let Some(frame) = reader.next_frame() {
        let resp = prompb::ChunkedReadResponse::decode(frame.expect("crc ok")).expect("decode");
        for cs in resp.chunked_series {
            for c in cs.chunks {
                assert_eq!(c.r#type, prompb::chunk::Encoding::Xor as i32);
                let mut it = m3query_chunkenc::XorIterator::new(&c.data).expect("xor");
                while it.next_sample().expect("sample").is_some() {
                    total += 1;
                }
            }
        }
    }
    assert_eq!(total, 1000);

    // Errors.
    let r = client()
        .post(m.url("/api/v1/read"))
        .body(&b"junk"[..])
        .send()
        .expect("send");
    assert_eq!(r.status(), 400);
    let mut bad = query(0, 10);
    bad.matchers[0].value = String::new();
    let r = send(&prompb::ReadRequest {
        queries: vec![bad],
        accepted_response_types: vec![],
    });
    assert_eq!(r.status(), 400);
}
