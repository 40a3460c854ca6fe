//! Limits that keep one client from hurting the others, over HTTP against the real binary:
//! remote-write bodies that cannot be what they claim, query admission and deadlines, slow or
//! oversized requests, and every refusal in Prometheus's JSON error shape.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{M3Query, client, remote_write_v1, send_snappy};
use m3query_remote::prompb;
use prost::Message;
use serde_json::Value;

const V2: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";
const V1: &str = "application/x-protobuf;proto=prometheus.WriteRequest";

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Asserts Prometheus's error shape with `error_type`.
fn assert_error(body: &str, error_type: &str) -> String {
    let v = json(body);
    assert_eq!(v["status"], "error", "{body}");
    assert_eq!(v["errorType"], error_type, "{body}");
    v["error"].as_str().unwrap_or_default().to_string()
}

/// Sends `req` on a fresh connection and reads until the server closes or `wait` passes;
/// returns what arrived and how long it took.
fn raw(port: u16, req: &[u8], wait: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    let start = Instant::now();
    s.write_all(req).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // One complete response with a Content-Length is enough.
                if let Some(done) = complete_response(&out) {
                    out.truncate(done);
                    break;
                }
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

/// The length of the first complete response in `b`, if it has a Content-Length.
fn complete_response(b: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(b);
    let head_end = text.find("\r\n\r\n")? + 4;
    let head = text[..head_end].to_ascii_lowercase();
    if head.starts_with("http/1.1 100") {
        return None;
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    (b.len() >= head_end + len).then_some(head_end + len)
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn v1_request() -> prompb::WriteRequest {
    prompb::WriteRequest {
        timeseries: vec![prompb::TimeSeries {
            labels: vec![prompb::Label {
                name: b"__name__".to_vec().into(),
                value: b"mismatch_v1".to_vec().into(),
            }],
            samples: vec![prompb::Sample {
                timestamp: 1000,
                value: 1.0,
            }],
            ..Default::default()
        }],
        metadata: vec![],
    }
}

fn v2_request() -> prompb::v2::Request {
    prompb::v2::Request {
        symbols: ["", "__name__", "mismatch_v2"].map(String::from).to_vec(),
        timeseries: vec![prompb::v2::TimeSeries {
            labels_refs: vec![1, 2],
            samples: vec![prompb::v2::Sample {
                value: 1.0,
                timestamp: 1000,
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn remote_write_protocol_mismatch_is_refused() {
    let m = M3Query::start("");
    let url = m.url("/api/v1/write");
    // A 1.0 body announced as 2.0, and a 2.0 body announced as 1.0: both decode to nothing.
    for (body, ct, want) in [
        (
            v1_request().encode_to_vec(),
            V2,
            "io.prometheus.write.v2.Request",
        ),
        (v2_request().encode_to_vec(), V1, "prometheus.WriteRequest"),
        (v2_request().encode_to_vec(), "", "prometheus.WriteRequest"),
    ] {
        let (s, text) = send_snappy(&url, &body, ct);
        assert_eq!(s, 400, "content type {ct:?}: {text}");
        let msg = assert_error(&text, "bad_data");
        assert!(msg.contains(want), "{msg}");
    }
    // The right pairs still work, and an empty 1.0 request is still a no-op success.
    assert_eq!(send_snappy(&url, &v1_request().encode_to_vec(), V1).0, 204);
    assert_eq!(send_snappy(&url, &v2_request().encode_to_vec(), V2).0, 204);
    assert_eq!(send_snappy(&url, &[], V1).0, 204);
}

#[test]
fn snappy_length_beyond_what_the_body_can_hold_is_refused() {
    let m = M3Query::start("");
    // A varint claiming 250 MiB followed by two bytes: no snappy stream that short decodes
    // to more than a few dozen bytes.
    let mut body = Vec::new();
    let mut n: u64 = 250 << 20;
    while n >= 0x80 {
        body.push((n as u8) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    body.extend_from_slice(&[0x00, 0x41]);
    let r = client()
        .post(m.url("/api/v1/write"))
        .header("Content-Type", V1)
        .header("Content-Encoding", "snappy")
        .body(body)
        .send()
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    let msg = assert_error(&r.text().expect("body"), "bad_data");
    assert!(msg.contains("at most"), "{msg}");
}

#[test]
fn remote_write_admission_is_on_metrics() {
    let m = M3Query::start("http:\n  remoteWriteConcurrency: 2\n  remoteWriteQueue: 4\n");
    let (s, b) = remote_write_v1(
        &m.url("/api/v1/write"),
        &[(vec![("__name__", "x")], vec![(1000, 1.0)])],
    );
    assert_eq!(s, 204, "{b}");
    let text = client()
        .get(m.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    for name in [
        "m3query_admission_in_flight{pool=\"remote_write\"}",
        "m3query_admission_waiting{pool=\"remote_write\"}",
        "m3query_admission_rejected_total{pool=\"remote_write\",",
        "m3query_admission_in_flight{pool=\"query\"}",
        "m3query_admission_waiting{pool=\"query\"}",
        "m3query_admission_rejected_total{pool=\"query\",",
        "m3query_admission_limit{pool=\"query\"}",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
}

/// Remote read has its own gate: a reader whose body has not arrived holds the one slot, so
/// with no queue the next read is refused at once with 503 in Prometheus's shape, naming the
/// setting, and the rest of the API does not wait.
#[test]
fn remote_reads_beyond_the_limit_are_refused_not_queued_forever() {
    let m = M3Query::start(
        "http:\n  remoteReadConcurrency: 1\n  remoteReadQueue: 0\n  bodyReadTimeout: 30s\n",
    );
    let mut holder = std::net::TcpStream::connect(("127.0.0.1", m.port)).expect("connect");
    holder
        .write_all(
            b"POST /api/v1/read HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nContent-Length: 100\r\n\r\n",
        )
        .expect("send headers");
    // The holder has its slot once /metrics shows it in flight.
    let in_flight = common::eventually(Duration::from_secs(10), || {
        let text = client().get(m.url("/metrics")).send().ok()?.text().ok()?;
        text.contains("m3query_admission_in_flight{pool=\"remote_read\"} 1")
            .then_some(())
    });
    assert!(in_flight.is_some(), "the half-sent read holds the slot");
    let r = client()
        .post(m.url("/api/v1/read"))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .body(vec![0u8; 4])
        .send()
        .expect("second read");
    assert_eq!(r.status().as_u16(), 503);
    let v: serde_json::Value = r.json().expect("json");
    assert_eq!(v["status"], "error", "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("http.remoteReadQueue")),
        "{v}"
    );
    let r = client()
        .get(m.url("/api/v1/labels"))
        .send()
        .expect("labels");
    assert_eq!(r.status().as_u16(), 200);
    drop(holder);
}

/// A range query that keeps one core busy for about 15 s on an empty store, with little
/// memory (a 1.4M-point subquery) and, before this was fixed, answered a 1 s timeout only when
/// it was done.
const HEAVY: [(&str, &str); 4] = [
    ("query", "sum_over_time(vector(1)[1h:10ms])"),
    ("start", "100000"),
    ("end", "110000"),
    ("step", "1"),
];

fn heavy_config(extra: &str) -> String {
    format!("query:\n  prometheus:\n    maxSamplesPerQuery: 1000000000\n{extra}")
}

fn heavy(url: &str, timeout: &str) -> (u16, String, Duration) {
    let start = Instant::now();
    let r = client()
        .get(url)
        .query(&HEAVY)
        .query(&[("timeout", timeout)])
        .send()
        .expect("query");
    let s = r.status().as_u16();
    (s, r.text().unwrap_or_default(), start.elapsed())
}

fn query(m: &M3Query, q: &str, timeout: &str) -> (u16, String, Duration) {
    let start = Instant::now();
    let r = client()
        .get(m.url("/api/v1/query"))
        .query(&[("query", q), ("timeout", timeout), ("time", "1000000")])
        .send()
        .expect("query");
    let s = r.status().as_u16();
    (s, r.text().unwrap_or_default(), start.elapsed())
}

#[test]
fn query_timeout_answers_at_the_deadline() {
    let m = M3Query::start(&heavy_config(""));
    let (s, body, took) = heavy(&m.url("/api/v1/query_range"), "1s");
    assert_eq!(s, 503, "{body}");
    assert_error(&body, "timeout");
    assert!(
        took < Duration::from_millis(1800),
        "answered after {took:?}"
    );
}

#[test]
fn queries_beyond_the_limit_wait_then_time_out_and_metadata_stays_fast() {
    let m = M3Query::start(&heavy_config("  maxConcurrent: 1\n  maxQueued: 1\n"));
    let port = m.port;
    // One heavy query runs; the second waits in the queue; the third finds the queue full.
    let running = std::thread::spawn({
        let url = m.url("/api/v1/query_range");
        move || heavy(&url, "6s")
    });
    std::thread::sleep(Duration::from_millis(500));
    let queued = std::thread::spawn({
        let url = m.url("/api/v1/query");
        move || {
            let start = Instant::now();
            let r = client()
                .get(url)
                .query(&[("query", "1+1"), ("timeout", "2s")])
                .send()
                .expect("queued query");
            (
                r.status().as_u16(),
                r.text().unwrap_or_default(),
                start.elapsed(),
            )
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let (s, body, took) = query(&m, "1+1", "5s");
    assert_eq!(s, 503, "{body}");
    let msg = assert_error(&body, "unavailable");
    assert!(msg.contains("queue"), "{msg}");
    assert!(took < Duration::from_millis(500), "rejected after {took:?}");

    // Metadata and operations do not wait behind queries.
    for path in [
        "/api/v1/labels",
        "/api/v1/label/__name__/values",
        "/api/v1/series?match[]=up",
        "/api/v1/status/buildinfo",
        "/health",
        "/ready",
        "/metrics",
    ] {
        let start = Instant::now();
        let r = client()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send();
        let took = start.elapsed();
        assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200), "{path}");
        assert!(took < Duration::from_millis(500), "{path} took {took:?}");
    }

    // The queued query's deadline counted its time in the queue.
    let (s, body, took) = queued.join().expect("queued thread");
    assert_eq!(s, 503, "{body}");
    assert_error(&body, "timeout");
    assert!(
        took < Duration::from_millis(2800),
        "queued query answered after {took:?}"
    );
    let metrics = client()
        .get(m.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    assert!(
        metrics
            .contains("m3query_admission_rejected_total{pool=\"query\",reason=\"queue_full\"} 1"),
        "{metrics}"
    );
    running.join().expect("running thread");
}

#[test]
fn half_sent_headers_are_dropped() {
    let m = M3Query::start("http:\n  headerReadTimeout: 1s\n");
    let (resp, took) = raw(
        m.port,
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Duration::from_secs(6),
    );
    assert!(
        took < Duration::from_secs(4),
        "connection still open after {took:?}: {resp:?}"
    );
}

#[test]
fn half_sent_body_times_out() {
    let m = M3Query::start("http:\n  bodyReadTimeout: 1s\n");
    let (resp, took) = raw(
        m.port,
        b"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nquery=1",
        Duration::from_secs(6),
    );
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    assert_eq!(status_of(&resp), 408, "{resp}");
    assert_error(body_of(&resp), "bad_data");
}

#[test]
fn oversized_content_length_is_refused_before_the_body() {
    let m = M3Query::start("");
    for path in ["/api/v1/prom/remote/write", "/api/v1/query", "/api/v1/read"] {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 10737418240\r\nExpect: 100-continue\r\n\r\n"
        );
        let (resp, _) = raw(m.port, req.as_bytes(), Duration::from_secs(5));
        assert_eq!(status_of(&resp), 413, "{path}: {resp}");
        assert!(!resp.contains(" 100 Continue"), "{resp}");
        assert_error(body_of(&resp), "bad_data");
    }
}

#[test]
fn too_large_streamed_bodies_are_prometheus_json() {
    let m = M3Query::start("http:\n  maxRequestBodyBytes: 1000\n");
    // No Content-Length (chunked): refused while reading.
    let body: Vec<u8> = vec![b'a'; 5000];
    let r = client()
        .post(m.url("/api/v1/write"))
        .header("Content-Type", V1)
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(body)))
        .send()
        .expect("send");
    assert_eq!(r.status().as_u16(), 413);
    assert_error(&r.text().expect("body"), "bad_data");
}

#[test]
fn malformed_urls_get_prometheus_errors() {
    let m = M3Query::start("");
    // Invalid escapes and invalid UTF-8 are refused, not replaced by U+FFFD.
    for path in [
        "/api/v1/label/%ff/values",
        "/api/v1/query?query=%zz",
        "/api/v1/query?query=up%ff",
        "/api/v1/series?match[]=%ff",
    ] {
        let r = client().get(m.url(path)).send().expect("send");
        assert_eq!(r.status().as_u16(), 400, "{path}");
        assert_error(&r.text().expect("body"), "bad_data");
    }
    // An over-long URL: Prometheus's error shape, not an empty body.
    let long = format!(
        "GET /api/v1/query?query={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let (resp, _) = raw(m.port, long.as_bytes(), Duration::from_secs(5));
    assert_eq!(status_of(&resp), 414, "{resp:.200}");
    assert_error(body_of(&resp), "bad_data");
}

#[test]
fn unencoded_quotes_in_the_query_string_are_accepted() {
    let m = M3Query::start("");
    let (s, b) = remote_write_v1(
        &m.url("/api/v1/write"),
        &[(vec![("__name__", "up"), ("job", "x")], vec![(1000, 1.0)])],
    );
    assert_eq!(s, 204, "{b}");
    let (resp, _) = raw(
        m.port,
        b"GET /api/v1/query?query=up{job=\"x\"}&time=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&resp), 200, "{resp}");
    let v = json(body_of(&resp));
    assert_eq!(v["data"]["result"][0]["metric"]["job"], "x", "{v}");
    // A second request on the same connection still parses (keep-alive framing intact).
    let mut s = TcpStream::connect(("127.0.0.1", m.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let one = b"GET /api/v1/query?query=up{job=\"x\"}&time=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(one).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while complete_response(&got).is_none() {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let first = complete_response(&got).expect("first");
    got.drain(..first);
    s.write_all(one).expect("write again");
    while complete_response(&got).is_none() {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(status_of(&String::from_utf8_lossy(&got)), 200);
}
