//! `/api/v1/query` and `/api/v1/query_range` over HTTP: every parameter form, every error
//! status, POST bodies, `stats`, M3's headers, and the smaller PromQL endpoints.

mod common;

use common::{M3Query, client, remote_write_v1};
use serde_json::{Value, json};

/// 1 hour of `demo_requests_total` for two jobs and `up`, 15s apart, starting at t=0.
fn load(m: &M3Query) {
    let counter = |mult: f64| (0..240).map(|i| (i * 15_000, i as f64 * mult)).collect();
    let up: Vec<(i64, f64)> = (0..240).map(|i| (i * 15_000, 1.0)).collect();
    let (s, body) = remote_write_v1(
        &m.url("/api/v1/write"),
        &[
            (
                vec![("__name__", "demo_requests_total"), ("job", "api")],
                counter(15.0),
            ),
            (
                vec![("__name__", "demo_requests_total"), ("job", "web")],
                counter(30.0),
            ),
            (vec![("__name__", "up"), ("job", "api")], up.clone()),
            (vec![("__name__", "up"), ("job", "web")], up),
        ],
    );
    assert_eq!(s, 204, "{body}");
}

fn get(m: &M3Query, path: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = client().get(m.url(path)).send().expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().unwrap_or(Value::Null), headers)
}

fn post(m: &M3Query, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = client()
        .post(m.url(path))
        .form(form)
        .send()
        .expect("request");
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

/// A client that asks for gzip (Grafana, any Go client) gets it for answers over 1 KiB, with
/// the same JSON inside; a small answer, or a client that refuses gzip, gets plain JSON.
#[test]
fn answers_are_gzipped_for_clients_that_ask() {
    use std::io::Read;
    let m = M3Query::start("");
    load(&m);
    let range = "/api/v1/query_range?query=demo_requests_total&start=0&end=3585&step=15";
    let fetch = |path: &str, accept: Option<&str>| {
        let mut req = client().get(m.url(path));
        if let Some(a) = accept {
            req = req.header("Accept-Encoding", a);
        }
        let r = req.send().expect("request");
        assert_eq!(r.status().as_u16(), 200);
        let enc = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().expect("ascii").to_string());
        (enc, r.bytes().expect("body").to_vec())
    };
    let (enc, plain) = fetch(range, None);
    assert_eq!(enc, None);
    assert!(plain.len() > 4096, "{} bytes", plain.len());
    let (enc, gz) = fetch(range, Some("deflate, gzip"));
    assert_eq!(enc.as_deref(), Some("gzip"));
    assert!(
        gz.len() < plain.len(),
        "{} of {} bytes",
        gz.len(),
        plain.len()
    );
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut inflated)
        .expect("gzip");
    assert_eq!(inflated, plain);
    let (enc, _) = fetch(range, Some("gzip;q=0"));
    assert_eq!(enc, None, "a refused coding is not used");
    let (enc, small) = fetch("/api/v1/query?query=vector(1)&time=10", Some("gzip"));
    assert_eq!(enc, None, "{}", String::from_utf8_lossy(&small));
}

#[test]
fn instant_queries_in_every_form() {
    let m = M3Query::start("");
    load(&m);
    // Rates of 1/s and 2/s (up to float rounding in the extrapolation).
    let check = |v: &Value, what: &str| {
        assert_eq!(v["status"], "success", "{what}: {v}");
        assert_eq!(v["data"]["resultType"], "vector", "{what}");
        let r = v["data"]["result"].as_array().expect("result");
        assert_eq!(r.len(), 2, "{what}: {v}");
        for (e, (job, rate)) in r.iter().zip([("api", 1.0), ("web", 2.0)]) {
            assert_eq!(e["metric"], json!({"job": job}), "{what}");
            assert_eq!(e["value"][0], json!(3000), "{what}");
            let got: f64 = e["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("value");
            assert!((got - rate).abs() < 1e-9, "{what}: {got}");
        }
    };
    let q = "sum%20by%20(job)%20(rate(demo_requests_total%5B5m%5D))";
    for time in [
        "3000",
        "3000.000",
        "1970-01-01T00:50:00Z",
        "1970-01-01T01:50:00%2B01:00",
    ] {
        let (s, v, _) = get(&m, &format!("/api/v1/query?query={q}&time={time}"));
        assert_eq!(s, 200, "{time}: {v}");
        check(&v, time);
    }
    let (s, v) = post(
        &m,
        "/api/v1/query",
        &[
            ("query", "sum by (job) (rate(demo_requests_total[5m]))"),
            ("time", "3000"),
        ],
    );
    assert_eq!(s, 200);
    check(&v, "POST");

    // Scalars and strings.
    let (_, v, _) = get(&m, "/api/v1/query?query=1%2B2&time=10.5");
    assert_eq!(
        v["data"],
        json!({"resultType": "scalar", "result": [10.5, "3"]})
    );
    let (_, v, _) = get(&m, "/api/v1/query?query=%22hi%22&time=1");
    assert_eq!(
        v["data"],
        json!({"resultType": "string", "result": [1, "hi"]})
    );
    // NaN and infinities are strings, as in Prometheus.
    let (_, v, _) = get(&m, "/api/v1/query?query=vector(1)%2F0&time=1");
    assert_eq!(v["data"]["result"][0]["value"][1], "+Inf");

    // lookback_delta narrows what an instant selector sees.
    let (_, v, _) = get(&m, "/api/v1/query?query=up&time=3700");
    assert_eq!(v["data"]["result"].as_array().map(Vec::len), Some(2));
    let (_, v, _) = get(&m, "/api/v1/query?query=up&time=3700&lookback_delta=1m");
    assert_eq!(v["data"]["result"].as_array().map(Vec::len), Some(0));

    // Info annotations travel to the response.
    let (_, v, _) = get(&m, "/api/v1/query?query=rate(up%5B5m%5D)&time=3000");
    let infos = v["infos"].as_array().expect("infos");
    assert!(
        infos[0]
            .as_str()
            .is_some_and(|i| i.starts_with("PromQL info: metric might not be a counter")),
        "{v}"
    );

    // stats=all reports timings and samples.
    let (_, v, _) = get(&m, &format!("/api/v1/query?query={q}&time=3000&stats=all"));
    assert!(
        v["data"]["stats"]["timings"]["execTotalTime"].is_number(),
        "{v}"
    );
    assert_eq!(v["data"]["stats"]["samples"]["totalQueryableSamples"], 40);
    let (_, v, _) = get(&m, &format!("/api/v1/query?query={q}&time=3000"));
    assert!(v["data"].get("stats").is_none());
}

#[test]
fn range_queries_in_every_form() {
    let m = M3Query::start("");
    load(&m);
    let want_points = |v: &Value| v["data"]["result"][0]["values"].as_array().map(Vec::len);
    for step in ["60", "1m", "60.0"] {
        let (s, v, _) = get(
            &m,
            &format!(
                "/api/v1/query_range?query=up%7Bjob%3D%22api%22%7D&start=600&end=1200&step={step}"
            ),
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["data"]["resultType"], "matrix");
        assert_eq!(want_points(&v), Some(11), "step={step}");
        assert_eq!(v["data"]["result"][0]["values"][0], json!([600, "1"]));
    }
    let (s, v) = post(
        &m,
        "/api/v1/query_range",
        &[
            ("query", "sum(rate(demo_requests_total[5m]))"),
            ("start", "1970-01-01T00:10:00Z"),
            ("end", "1970-01-01T00:20:00Z"),
            ("step", "5m"),
        ],
    );
    assert_eq!(s, 200, "{v}");
    let values = v["data"]["result"][0]["values"].as_array().expect("values");
    let ts: Vec<i64> = values.iter().filter_map(|p| p[0].as_i64()).collect();
    assert_eq!(ts, vec![600, 900, 1200]);
    for p in values {
        let got: f64 = p[1].as_str().and_then(|s| s.parse().ok()).expect("value");
        assert!((got - 3.0).abs() < 1e-9, "{got}");
    }
}

#[test]
fn every_error_status() {
    let m = M3Query::start("query:\n  prometheus:\n    maxSamplesPerQuery: 100\n");
    load(&m);
    let cases: &[(&str, u16, &str, &str)] = &[
        (
            "/api/v1/query?query=sum(&time=1",
            400,
            "bad_data",
            "parse error",
        ),
        ("/api/v1/query?time=1", 400, "bad_data", "parse error"),
        (
            "/api/v1/query?query=up&time=noon",
            400,
            "bad_data",
            "invalid parameter \"time\"",
        ),
        (
            "/api/v1/query?query=up&timeout=soon",
            400,
            "bad_data",
            "invalid parameter \"timeout\"",
        ),
        (
            "/api/v1/query?query=up&lookback_delta=x",
            400,
            "bad_data",
            "lookback_delta",
        ),
        (
            "/api/v1/query_range?query=up&start=10&end=5&step=1",
            400,
            "bad_data",
            "end timestamp must not be before start time",
        ),
        (
            "/api/v1/query_range?query=up&start=0&end=5&step=0",
            400,
            "bad_data",
            "zero or negative query resolution step widths are not accepted",
        ),
        (
            "/api/v1/query_range?query=up&start=0&end=100000&step=1",
            400,
            "bad_data",
            "exceeded maximum resolution of 11,000 points per timeseries",
        ),
        (
            "/api/v1/query_range?query=up&end=5&step=1",
            400,
            "bad_data",
            "invalid parameter \"start\"",
        ),
        (
            "/api/v1/query_range?query=up&start=0&end=5",
            400,
            "bad_data",
            "invalid parameter \"step\"",
        ),
        // 422: evaluation errors, including the sample limit.
        (
            "/api/v1/query?query=label_replace(up,%22job%22,%22x%22,%22job%22,%22.*%22)&time=100",
            422,
            "execution",
            "vector cannot contain metrics with the same labelset",
        ),
        (
            "/api/v1/query_range?query=demo_requests_total&start=0&end=3000&step=15",
            422,
            "execution",
            "query processing would load too many samples into memory in query execution",
        ),
    ];
    for (path, status, kind, msg) in cases {
        let (s, v, _) = get(&m, path);
        assert_eq!(s, *status, "{path}: {v}");
        assert_eq!(v["status"], "error", "{path}");
        assert_eq!(v["errorType"], *kind, "{path}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(msg)),
            "{path}: {v}"
        );
    }
    // 503: the query outlives its timeout (M3-Timeout lowers the configured 30s).
    let r = client()
        .get(m.url("/api/v1/query?query=up&time=100"))
        .header("M3-Timeout", "1ns")
        .send()
        .expect("request");
    assert_eq!(r.status(), 503);
    let v: Value = r.json().expect("json");
    assert_eq!(v["errorType"], "timeout", "{v}");
}

#[test]
fn m3_series_limit_headers() {
    let m = M3Query::start(
        "limits:\n  perQuery:\n    maxFetchedSeries: 100000\n    requireExhaustive: true\n",
    );
    load(&m);
    // Exhaustive: over the limit fails.
    let r = client()
        .get(m.url("/api/v1/query?query=up&time=100"))
        .header("M3-Limit-Max-Series", "1")
        .send()
        .expect("request");
    assert_eq!(r.status(), 422);
    // Not exhaustive: truncated, with M3-Results-Limited.
    let r = client()
        .get(m.url("/api/v1/query?query=up&time=100"))
        .header("M3-Limit-Max-Series", "1")
        .header("M3-Limit-Require-Exhaustive", "false")
        .send()
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["M3-Results-Limited"],
        "max_fetch_series_limit_applied"
    );
    let v: Value = r.json().expect("json");
    assert_eq!(v["data"]["result"].as_array().map(Vec::len), Some(1));
    // Within the limit: no header.
    let (s, _, h) = get(&m, "/api/v1/query?query=up&time=100");
    assert_eq!(s, 200);
    assert!(h.get("M3-Results-Limited").is_none());
    assert_eq!(h["M3-Series-Count"], "2");
    let r = client()
        .get(m.url("/api/v1/query?query=up&time=100"))
        .header("M3-Limit-Max-Series", "many")
        .send()
        .expect("request");
    assert_eq!(r.status(), 400);
}

#[test]
fn format_parse_and_exemplars() {
    let m = M3Query::start("");
    let (s, v, _) = get(&m, "/api/v1/format_query?query=sum(rate(x%5B5m%5D))by(job)");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"], "sum by (job) (rate(x[5m]))");
    let (s, v) = post(&m, "/api/v1/parse_query", &[("query", "up{job=\"a\"}")]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["type"], "vectorSelector", "{v}");
    let (s, v, _) = get(&m, "/api/v1/format_query?query=sum(");
    assert_eq!((s, v["errorType"].as_str()), (400, Some("bad_data")));

    let golden = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rw2_example.bin"),
    )
    .expect("fixture");
    let (s, body) = common::send_snappy(
        &m.url("/api/v1/write"),
        &golden,
        "application/x-protobuf;proto=io.prometheus.write.v2.Request",
    );
    assert_eq!(s, 204, "{body}");
    let (s, v, _) = get(
        &m,
        "/api/v1/query_exemplars?query=rate(my_metric%5B5m%5D)&start=1700000000&end=1700000100",
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["data"],
        json!([{
            "seriesLabels": {"__name__": "my_metric", "foo": "bar"},
            "exemplars": [{"labels": {"trace_id": "4bf92f3577b34da6"}, "value": "0.25", "timestamp": 1700000015.0}]
        }])
    );
}
