//! Black-box trace export: the real binary against independent receivers (Jaeger's own
//! Thrift code in `jaeger_agent_sink.py`, OpenTelemetry's protobuf classes in
//! `otlp_sink.py`), the remote sampler against a live strategy server, and dead backends.
//! Waits are generous and nothing asserts on latency, so CI timing does not matter.

mod common;
mod trace_sinks;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{M3Query, client};
use serde_json::Value;
use trace_sinks::{Sink, free_udp_port};

/// Requests every Jaeger test sends: (path, operation the span must be named, status).
/// Add `("/api/v1/query_range?...", "GET /api/v1/query_range", 200)` once the query API
/// lands.
const REQUESTS: &[(&str, &str, u16)] = &[
    (
        "/api/v1/status/buildinfo",
        "GET /api/v1/status/buildinfo",
        200,
    ),
    ("/api/v1/does/not/exist", "GET unknown", 404),
    ("/health", "GET /health", 200),
    (
        "/api/v1/query_range?query=sum(rate(up[5m]))&start=0&end=600&step=60",
        "GET /api/v1/query_range",
        200,
    ),
];

/// One client for the whole test binary (building one per request starts a runtime each
/// time).
fn http() -> &'static reqwest::blocking::Client {
    static CLIENT: std::sync::OnceLock<reqwest::blocking::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(client)
}

/// The value of one series on `/metrics` (0 when absent).
fn metric(m: &M3Query, series: &str) -> f64 {
    let text = http()
        .get(m.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn wait_metric(m: &M3Query, series: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = metric(m, series);
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {v} (< {at_least}); log:\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GETs `path`; returns (status, X-Trace-Id).
fn get(m: &M3Query, path: &str, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    let mut req = http().get(m.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().expect("request");
    let id = r
        .headers()
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (r.status().as_u16(), id)
}

fn by_op<'a>(spans: &'a [Value], op: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["operationName"] == op || s["name"] == op)
        .collect()
}

fn jaeger_config(agent_port: u16, sampler: &str, extra_reporter: &str) -> String {
    format!(
        "tracing:\n  backend: jaeger\n  jaeger:\n    tags: [{{key: env, value: ci}}, {{key: shard, value: 3}}]\n    sampler: {sampler}\n    reporter: {{localAgentHostPort: \"127.0.0.1:{agent_port}\", bufferFlushInterval: 100ms{extra_reporter}}}\n"
    )
}

#[test]
fn jaeger_agent_gets_request_spans_decoded_by_jaeger_code() {
    let sink = Sink::jaeger_agent();
    let m = M3Query::start(&jaeger_config(
        sink.port,
        "{type: const, param: 1}",
        ", logSpans: true",
    ));
    let mut trace_ids = Vec::new();
    for (path, _, status) in REQUESTS {
        let (s, id) = get(&m, path, &[]);
        assert_eq!(s, *status, "{path}");
        trace_ids.push(id.expect("a sampled request answers X-Trace-Id"));
    }
    // 10,800 points: encoded on a request worker (large answers leave the runtime's threads).
    let (s, big_id) = get(
        &m,
        "/api/v1/query_range?query=vector(1)&start=0&end=10799&step=1",
        &[],
    );
    assert_eq!(s, 200);
    let big_id = big_id.expect("a sampled request answers X-Trace-Id");
    let (_, debug_id) = get(&m, "/health", &[("jaeger-debug-id", "find-me")]);
    let (_, child_id) = get(
        &m,
        "/health",
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
    );
    assert_eq!(
        child_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );

    let spans = sink.wait_for("every request's span", |s| {
        REQUESTS.iter().all(|(_, op, _)| !by_op(s, op).is_empty())
            && s.iter()
                .any(|x| x["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736")
            && s.iter()
                .any(|x| Some(x["traceId"].as_str().unwrap_or("")) == debug_id.as_deref())
    });
    for ((_, op, status), trace_id) in REQUESTS.iter().zip(&trace_ids) {
        let s = by_op(&spans, op)[0];
        assert_eq!(
            s["traceId"],
            trace_id.as_str(),
            "X-Trace-Id is the exported id"
        );
        assert_eq!(s["serviceName"], "m3query");
        assert_eq!(s["tags"]["http.status_code"], *status);
        assert_eq!(s["tagTypes"]["http.status_code"], "LONG");
        assert_eq!(s["tags"]["span.kind"], "server");
        assert!(
            s["tags"].get("error").is_none(),
            "no error tag on {status}: {s}"
        );
        assert_eq!(s["tags"]["sampler.type"], "const");
        assert_eq!(s["tags"]["sampler.param"], true);
        assert_eq!(s["tagTypes"]["sampler.param"], "BOOL");
        assert_eq!(s["flags"], 1);
        assert!(s.get("duplicateTagKeys").is_none(), "{s}");
        assert!(s["duration"].as_i64().is_some_and(|d| d >= 0));
        let p = &s["processTags"];
        assert_eq!(
            p["jaeger.version"],
            format!("Rust-m3query-{}", env!("CARGO_PKG_VERSION"))
        );
        assert!(p["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{p}");
        assert_eq!(p["env"], "ci");
        assert_eq!(s["processTagTypes"]["shard"], "LONG");
    }
    // A query's phases are child spans of its request span, with the figures an operator
    // needs, and the request span carries the query.
    let qr = by_op(&spans, "GET /api/v1/query_range")[0];
    assert_eq!(qr["tags"]["query"], "sum(rate(up[5m]))");
    assert_eq!(qr["tags"]["step"], 60.0);
    let spans = sink.wait_for("the query's phase spans", |s| {
        [
            "promql.parse",
            "storage.select",
            "promql.eval",
            "http.encode",
        ]
        .iter()
        .all(|op| by_op(s, op).iter().any(|x| x["traceId"] == qr["traceId"]))
    });
    for op in [
        "promql.parse",
        "storage.select",
        "promql.eval",
        "http.encode",
    ] {
        let child = by_op(&spans, op)
            .into_iter()
            .find(|x| x["traceId"] == qr["traceId"])
            .expect("phase span");
        assert_eq!(
            child["parentSpanId"], qr["spanId"],
            "{op} is a child of the request"
        );
    }
    let select = by_op(&spans, "storage.select")
        .into_iter()
        .find(|x| x["traceId"] == qr["traceId"])
        .expect("select span");
    assert!(select["tags"].get("series").is_some(), "{select}");
    // Counts are integers (LONG), not strings, so Jaeger can compare them.
    for tag in ["series", "samples", "start_ms"] {
        assert_eq!(select["tagTypes"][tag], "LONG", "{tag}: {select}");
    }
    let spans = sink.wait_for("the encode span", |s| {
        by_op(s, "http.encode")
            .iter()
            .any(|x| x["traceId"] == qr["traceId"] && x["tags"].get("bytes").is_some())
    });
    let encode = by_op(&spans, "http.encode")
        .into_iter()
        .find(|x| x["traceId"] == qr["traceId"])
        .expect("encode span");
    for tag in ["series", "bytes"] {
        assert_eq!(encode["tagTypes"][tag], "LONG", "{tag}: {encode}");
    }
    // Encoded on a worker thread, still a child of its request's span.
    let spans = sink.wait_for("the large answer's encode span", |s| {
        by_op(s, "http.encode")
            .iter()
            .any(|x| x["traceId"] == big_id.as_str())
    });
    let big_req = by_op(&spans, "GET /api/v1/query_range")
        .into_iter()
        .find(|x| x["traceId"] == big_id.as_str())
        .expect("the large answer's request span");
    let big_encode = by_op(&spans, "http.encode")
        .into_iter()
        .find(|x| x["traceId"] == big_id.as_str())
        .expect("the large answer's encode span");
    assert_eq!(
        big_encode["parentSpanId"], big_req["spanId"],
        "{big_encode}"
    );
    let eval = by_op(&spans, "promql.eval")
        .into_iter()
        .find(|x| x["traceId"] == qr["traceId"])
        .expect("eval span");
    assert_eq!(eval["tagTypes"]["samples"], "LONG", "{eval}");
    let unknown = by_op(&spans, "GET unknown")[0];
    assert!(
        unknown["logs"]
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["fields"]["event"] == "request refused")),
        "a 4xx leaves a log: {unknown}"
    );
    let debug = spans
        .iter()
        .find(|x| Some(x["traceId"].as_str().unwrap_or("")) == debug_id.as_deref())
        .expect("debug span");
    assert_eq!(debug["flags"], 3, "sampled + debug");
    assert_eq!(debug["tags"]["jaeger-debug-id"], "find-me");
    let child = spans
        .iter()
        .find(|x| x["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("child of the remote parent");
    assert_eq!(child["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(child["references"][0]["refType"], "CHILD_OF");
    assert_eq!(child["references"][0]["spanId"], "00f067aa0ba902b7");
    assert!(
        child["tags"].get("sampler.type").is_none(),
        "only roots carry sampler tags"
    );
    assert!(
        wait_metric(
            &m,
            r#"m3query_tracing_spans_exported_total{backend="jaeger_agent"}"#,
            5.0
        ) >= 5.0
    );
    let log = m.log();
    assert!(
        log.contains("reporting span") && log.contains("GET /api/v1/status/buildinfo"),
        "logSpans logs each reported span:\n{log}"
    );
}

#[test]
fn shutdown_flushes_what_is_queued() {
    let sink = Sink::jaeger_agent();
    // Nothing would be sent for a minute but for the flush at shutdown.
    let mut m = M3Query::start(&format!(
        "tracing:\n  backend: jaeger\n  jaeger:\n    sampler: {{type: const, param: 1}}\n    reporter: {{localAgentHostPort: \"127.0.0.1:{}\", bufferFlushInterval: 1m}}\n",
        sink.port
    ));
    let (_, id) = get(&m, "/api/v1/status/buildinfo", &[]);
    let id = id.expect("sampled");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !sink.spans().iter().any(|s| s["traceId"] == id.as_str()),
        "sent before the flush interval"
    );
    let status = m.stop();
    assert!(status.success(), "{status}: {}", m.log());
    sink.wait_for("the span flushed at shutdown", |s| {
        s.iter().any(|x| x["traceId"] == id.as_str())
    });
}

/// Sends `GET /health` and buildinfo alternately for at least `secs` and at least
/// `requests` rounds; returns how many of each were sampled and sent, and the seconds it
/// took.
fn mixed_load(m: &M3Query, secs: f64, requests: usize) -> ((usize, usize), (usize, usize), f64) {
    let start = Instant::now();
    let (mut health, mut build) = ((0, 0), (0, 0));
    while start.elapsed().as_secs_f64() < secs || build.1 < requests {
        let (_, h) = get(m, "/health", &[]);
        health.1 += 1;
        health.0 += usize::from(h.is_some());
        let (_, b) = get(m, "/api/v1/status/buildinfo", &[]);
        build.1 += 1;
        build.0 += usize::from(b.is_some());
        std::thread::sleep(Duration::from_millis(20));
    }
    (health, build, start.elapsed().as_secs_f64())
}

/// The most a 1/s lower bound may sample in `secs`: one credit at the start (or left over),
/// one per second, and one for a refill racing the clock.
fn lower_bound_max(secs: f64) -> usize {
    secs.ceil() as usize + 2
}

#[test]
fn remote_sampler_obeys_per_operation_strategy_and_keeps_it_when_the_server_goes() {
    let sink = Sink::jaeger_agent();
    let dir = tempfile::tempdir().expect("tempdir");
    let strategies = dir.path().join("strategies.json");
    std::fs::write(
        &strategies,
        r#"{"strategyType":"PROBABILISTIC","probabilisticSampling":{"samplingRate":0.0},
            "operationSampling":{"defaultSamplingProbability":0.0,
              "defaultLowerBoundTracesPerSecond":1.0,
              "perOperationStrategies":[
                {"operation":"GET /api/v1/status/buildinfo","probabilisticSampling":{"samplingRate":0.0}},
                {"operation":"GET /health","probabilisticSampling":{"samplingRate":1.0}}]}}"#,
    )
    .expect("strategies");
    let mut server = Sink::sampling_server(&strategies);
    let m = M3Query::start(&jaeger_config(
        sink.port,
        &format!(
            "{{type: remote, param: 0, samplingServerURL: \"http://127.0.0.1:{}/sampling\", samplingRefreshInterval: 200ms}}",
            server.port
        ),
        "",
    ));
    let updated = r#"m3query_tracing_sampler_refreshes_total{result="updated"}"#;
    wait_metric(&m, updated, 1.0);

    // Probability 1 for /health: every request sampled. Probability 0 with a lower bound of
    // 1/s for buildinfo: about one per second (the bucket starts with one credit).
    let (health, build, secs) = mixed_load(&m, 3.0, 30);
    assert_eq!(health.0, health.1, "every /health sampled: {health:?}");
    assert!(
        (1..=lower_bound_max(secs)).contains(&build.0),
        "buildinfo sampled ~1/s by the lower bound: {build:?} in {secs:.1}s"
    );
    let spans = sink.wait_for("the sampled spans", |s| {
        by_op(s, "GET /health").len() >= health.0
            && by_op(s, "GET /api/v1/status/buildinfo").len() >= build.0
    });
    for s in by_op(&spans, "GET /api/v1/status/buildinfo") {
        assert_eq!(s["tags"]["sampler.type"], "lowerbound", "{s}");
        assert_eq!(s["tags"]["sampler.param"], 0.0);
    }
    for s in by_op(&spans, "GET /health") {
        assert_eq!(s["tags"]["sampler.type"], "probabilistic", "{s}");
        assert_eq!(s["tags"]["sampler.param"], 1.0);
    }

    // Garbage from the server (a probability of 7): rejected, the strategy stays.
    std::fs::write(
        &strategies,
        r#"{"strategyType":"PROBABILISTIC","probabilisticSampling":{"samplingRate":7}}"#,
    )
    .expect("garbage");
    wait_metric(
        &m,
        r#"m3query_tracing_sampler_refreshes_total{result="rejected"}"#,
        2.0,
    );
    let (health, build, secs) = mixed_load(&m, 1.5, 15);
    assert_eq!(
        health.0, health.1,
        "strategy kept after garbage: {health:?}"
    );
    assert!(build.0 <= lower_bound_max(secs), "{build:?} in {secs:.1}s");

    // The server goes away: fetches fail, the last good strategy stays (the initial
    // probabilistic 0 would sample no /health at all).
    server.stop();
    let failed = r#"m3query_tracing_sampler_refreshes_total{result="fetch_failed"}"#;
    wait_metric(&m, failed, 2.0);
    let (health, build, secs) = mixed_load(&m, 2.0, 20);
    assert_eq!(
        health.0, health.1,
        "strategy kept with the server down: {health:?}"
    );
    assert!(build.0 <= lower_bound_max(secs), "{build:?} in {secs:.1}s");
    let log = m.log();
    assert!(
        log.matches("cannot fetch the sampling strategy").count() <= 2,
        "failures are rate-limited in the log:\n{log}"
    );
}

#[test]
fn otlp_grpc_and_http_reach_the_collector() {
    let sink = Sink::otlp();
    let grpc = M3Query::start(&format!(
        "tracing:\n  serviceName: m3query-grpc\n  backend: otlp\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    headers: {{x-api-key: grpc-key}}\n",
        sink.second_port
    ));
    let http = M3Query::start(&format!(
        "tracing:\n  serviceName: m3query-http\n  backend: otlp\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    protocol: http/protobuf\n    headers: {{x-api-key: http-key}}\n",
        sink.port
    ));
    for m in [&grpc, &http] {
        for (path, _, _) in REQUESTS {
            get(m, path, &[]);
        }
    }
    let spans = sink.wait_for("spans from both", |s| {
        ["m3query-grpc", "m3query-http"]
            .iter()
            .all(|svc| s.iter().filter(|x| x["serviceName"] == *svc).count() >= REQUESTS.len())
    });
    for (svc, transport, key) in [
        ("m3query-grpc", "grpc", "grpc-key"),
        ("m3query-http", "http", "http-key"),
    ] {
        let mine: Vec<&Value> = spans.iter().filter(|x| x["serviceName"] == svc).collect();
        for (_, op, status) in REQUESTS {
            let s = mine
                .iter()
                .find(|x| x["name"] == *op)
                .unwrap_or_else(|| panic!("{svc}: no {op}"));
            assert_eq!(s["transport"], transport);
            assert_eq!(s["headers"]["x-api-key"], key);
            assert_eq!(s["kind"], "SPAN_KIND_SERVER");
            assert_eq!(s["attributes"]["http.status_code"], *status);
            assert_eq!(s["resource"]["service.version"], env!("CARGO_PKG_VERSION"));
        }
    }
}

#[test]
fn lightstep_satellite_gets_the_token_and_component_name() {
    let sink = Sink::otlp();
    let dir = tempfile::tempdir().expect("tempdir");
    let grpc = M3Query::start_in(
        dir,
        &format!(
            "tracing:\n  serviceName: m3coordinator\n  backend: lightstep\n  lightstep:\n    access_token: ${{LIGHTSTEP_ACCESS_TOKEN:\"\"}}\n    collector: {{scheme: https, host: 127.0.0.1, port: {}, plaintext: true}}\n    tags: {{env: ci, zone: 2}}\n    reporting_period: 200ms\n",
            sink.second_port
        ),
        &[("LIGHTSTEP_ACCESS_TOKEN", "ls-token-1")],
    );
    let http = M3Query::start(&format!(
        "tracing:\n  serviceName: m3query-ls-http\n  backend: lightstep\n  lightstep:\n    access_token: ls-token-2\n    use_http: true\n    collector: {{scheme: http, host: 127.0.0.1, port: {}}}\n    reporting_period: 200ms\n",
        sink.port
    ));
    get(&grpc, "/api/v1/status/buildinfo", &[]);
    get(&http, "/api/v1/status/buildinfo", &[]);
    let build = |x: &&Value| x["name"] == "GET /api/v1/status/buildinfo";
    let spans = sink.wait_for("lightstep spans", |s| {
        s.iter()
            .filter(build)
            .any(|x| x["serviceName"] == "m3coordinator")
            && s.iter()
                .filter(build)
                .any(|x| x["serviceName"] == "m3query-ls-http")
    });
    let g = spans
        .iter()
        .filter(build)
        .find(|x| x["serviceName"] == "m3coordinator")
        .expect("grpc span");
    assert_eq!(g["transport"], "grpc");
    assert_eq!(g["headers"]["lightstep-access-token"], "ls-token-1");
    assert_eq!(g["resource"]["lightstep.component_name"], "m3coordinator");
    assert_eq!(g["resource"]["env"], "ci");
    assert_eq!(g["resource"]["zone"], 2);
    assert_eq!(g["name"], "GET /api/v1/status/buildinfo");
    let h = spans
        .iter()
        .filter(build)
        .find(|x| x["serviceName"] == "m3query-ls-http")
        .expect("http span");
    assert_eq!(h["transport"], "http");
    assert_eq!(h["headers"]["lightstep-access-token"], "ls-token-2");
    assert_eq!(h["resource"]["lightstep.component_name"], "m3query-ls-http");

    // An empty token is a warning at startup, not a failure.
    let m = M3Query::start(&format!(
        "tracing:\n  backend: lightstep\n  lightstep:\n    access_token: \"\"\n    collector: {{scheme: http, host: 127.0.0.1, port: {}}}\n",
        sink.second_port
    ));
    assert_eq!(get(&m, "/health", &[]).0, 200);
    assert!(m.log().contains("access_token is empty"), "{}", m.log());
}

/// Reads one HTTP/1.1 request: headers, then Content-Length bytes of body.
fn read_request(c: &mut std::net::TcpStream) -> Vec<u8> {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
        if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&req[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if req.len() >= end + 4 + len {
                break;
            }
        }
    }
    req
}

/// A remote-read store that answers every read with `status`, `content_type` and `body`
/// (an error, or garbage), for up to 50 connections.
fn fake_store(status: u16, content_type: &'static str, body: Vec<u8>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in l.incoming().take(50) {
            let Ok(mut c) = conn else { return };
            read_request(&mut c);
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(head.as_bytes());
            let _ = c.write_all(&body);
        }
    });
    port
}

/// A minimal HTTP endpoint that records what it is sent and answers 202, or (blackhole)
/// accepts connections and never answers.
fn collector(blackhole: bool) -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in l.incoming().take(200) {
            let Ok(mut c) = conn else { return };
            if blackhole {
                held.push(c);
                continue;
            }
            let req = read_request(&mut c);
            let _ = c.write_all(
                b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            let _ = tx.send(req);
        }
    });
    (port, rx)
}

#[test]
fn jaeger_collector_gets_binary_thrift_with_auth_and_headers() {
    let (port, rx) = collector(false);
    let m = M3Query::start(&format!(
        "tracing:\n  backend: jaeger\n  jaeger:\n    sampler: {{type: const, param: 1}}\n    reporter:\n      collectorEndpoint: http://127.0.0.1:{port}/api/traces\n      user: jaeger\n      password: s3cret\n      bufferFlushInterval: 100ms\n      http_headers: {{X-Scope-OrgID: team-a}}\n"
    ));
    get(&m, "/api/v1/status/buildinfo", &[]);
    // Earlier POSTs may hold only the readiness probes' spans.
    let req = loop {
        let req = rx.recv_timeout(Duration::from_secs(30)).expect("a POST");
        if req
            .windows(b"GET /api/v1/status/buildinfo".len())
            .any(|w| w == b"GET /api/v1/status/buildinfo")
        {
            break req;
        }
    };
    let end = req
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    let head = String::from_utf8_lossy(&req[..end]).to_string();
    let lower = head.to_lowercase();
    assert!(head.starts_with("POST /api/traces HTTP/1.1"), "{head}");
    assert!(
        lower.contains("content-type: application/x-thrift"),
        "{head}"
    );
    // base64("jaeger:s3cret")
    assert!(head.contains("Basic amFlZ2VyOnMzY3JldA=="), "{head}");
    assert!(lower.contains("x-scope-orgid: team-a"), "{head}");
    let body = &req[end + 4..];
    // A binary-Thrift Batch: field 1 (struct, type 12) first, then the service name.
    assert_eq!(&body[..3], &[12, 0, 1], "{:?}", &body[..16.min(body.len())]);
    let text = String::from_utf8_lossy(body);
    assert!(text.contains("m3query"), "the process's service name");
    wait_metric(
        &m,
        r#"m3query_tracing_spans_exported_total{backend="jaeger_collector"}"#,
        1.0,
    );
}

#[test]
fn dead_backends_never_fail_requests_and_drops_are_counted() {
    // Agent: nothing listens on the UDP port.
    let dead_udp = free_udp_port();
    let agent = M3Query::start(&jaeger_config(
        dead_udp,
        "{type: const, param: 1}",
        ", queueSize: 10",
    ));
    // Collector: connections are accepted but never answered.
    let (hole, _rx) = collector(true);
    let coll = M3Query::start(&format!(
        "tracing:\n  backend: jaeger\n  jaeger:\n    sampler: {{type: const, param: 1}}\n    reporter: {{collectorEndpoint: \"http://127.0.0.1:{hole}/api/traces\", queueSize: 10, bufferFlushInterval: 100ms}}\n"
    ));
    // OTLP gRPC: nothing listening.
    let otlp = M3Query::start(&format!(
        "tracing:\n  backend: otlp\n  otlp: {{endpoint: \"http://127.0.0.1:{}\", timeout: 2s, queueSize: 10}}\n",
        common::free_port()
    ));
    // Agent: a name that does not resolve.
    let no_dns = M3Query::start(
        "tracing:\n  backend: jaeger\n  jaeger:\n    sampler: {type: const, param: 1}\n    reporter: {localAgentHostPort: \"no-such-agent.invalid:6831\", bufferFlushInterval: 100ms}\n",
    );
    let rss = |m: &M3Query| metric(m, "process_resident_memory_bytes");
    let before = rss(&coll);
    for i in 0..300 {
        for m in [&agent, &coll, &otlp, &no_dns] {
            let (status, _) = get(m, "/api/v1/status/buildinfo", &[]);
            assert_eq!(status, 200, "request {i} failed with the backend down");
        }
    }
    wait_metric(
        &agent,
        r#"m3query_tracing_spans_dropped_total{backend="jaeger_agent",reason="agent_unreachable"}"#,
        1.0,
    );
    wait_metric(
        &coll,
        r#"m3query_tracing_spans_dropped_total{backend="jaeger_collector",reason="queue_full"}"#,
        1.0,
    );
    wait_metric(
        &coll,
        r#"m3query_tracing_spans_dropped_total{backend="jaeger_collector",reason="export_failed"}"#,
        1.0,
    );
    wait_metric(
        &otlp,
        r#"m3query_tracing_spans_dropped_total{backend="otlp",reason="export_failed"}"#,
        1.0,
    );
    wait_metric(
        &no_dns,
        r#"m3query_tracing_spans_dropped_total{backend="jaeger_agent",reason="send_failed"}"#,
        1.0,
    );
    let dns_log = no_dns.log();
    assert!(
        dns_log.contains("cannot resolve the Jaeger agent address"),
        "{dns_log}"
    );
    assert!(
        dns_log
            .matches("cannot resolve the Jaeger agent address")
            .count()
            <= 2,
        "DNS failures are rate-limited in the log:\n{dns_log}"
    );
    let started = metric(
        &coll,
        r#"m3query_tracing_spans_started_total{backend="jaeger_collector"}"#,
    );
    assert!(started >= 300.0, "{started}");
    let grown = rss(&coll) - before;
    assert!(
        grown < 64.0 * 1024.0 * 1024.0,
        "memory grew {grown} bytes with the collector down"
    );
    let log = coll.log();
    assert!(
        log.matches("trace export queue is full").count() <= 2,
        "drops are rate-limited in the log:\n{log}"
    );
}

/// The seed's searches: a failing `GET /api/v1/query_range` is found by `error=true` and by
/// its `http.status_code`, and its `remote.read` child span names the store that failed.
#[test]
fn failing_query_range_is_tagged_for_the_error_searches() {
    let sink = Sink::jaeger_agent();
    let dead = common::free_port();
    let cfg = format!(
        "{}storage:\n  enabled: false\nquery:\n  partialResponse: false\nremoteRead:\n  - name: dead-store\n    url: http://127.0.0.1:{dead}/api/v1/read\n    timeout: 2s\n",
        jaeger_config(sink.port, "{type: const, param: 1}", "")
    );
    let m = M3Query::start_config(tempfile::tempdir().expect("tempdir"), &cfg, &[]);
    let (status, id) = get(
        &m,
        "/api/v1/query_range?query=up&start=0&end=600&step=60",
        &[],
    );
    assert_eq!(status, 503);
    let id = id.expect("sampled");
    let spans = sink.wait_for("the failed query's spans", |s| {
        s.iter()
            .any(|x| x["traceId"] == id.as_str() && x["operationName"] == "remote.read")
            && s.iter().any(|x| {
                x["traceId"] == id.as_str() && x["operationName"] == "GET /api/v1/query_range"
            })
    });
    let root = spans
        .iter()
        .find(|x| x["traceId"] == id.as_str() && x["operationName"] == "GET /api/v1/query_range")
        .expect("root");
    assert_eq!(root["tags"]["error"], true, "{root}");
    assert_eq!(root["tagTypes"]["error"], "BOOL");
    assert_eq!(root["tags"]["http.status_code"], 503);
    let read = spans
        .iter()
        .find(|x| x["traceId"] == id.as_str() && x["operationName"] == "remote.read")
        .expect("remote.read");
    assert_eq!(read["tags"]["store"], "dead-store");
    assert_eq!(read["tags"]["error"], true, "{read}");
}

/// A store behind `remoteRead` that is traced itself (here a second m3query) joins the
/// query's trace: its request span is a child of our `remote.read` span, in the same trace,
/// so Jaeger shows the fan-out and the store's own phases as one trace.
#[test]
fn remote_read_carries_the_trace_to_a_traced_store() {
    let sink = Sink::jaeger_agent();
    let store = M3Query::start(&format!(
        "{}  serviceName: store\n",
        jaeger_config(sink.port, "{type: const, param: 1}", "")
    ));
    let (status, body) = common::remote_write_v1(
        &store.url("/api/v1/write"),
        &[(vec![("__name__", "up"), ("job", "a")], vec![(0, 1.0)])],
    );
    assert_eq!(status, 204, "{body}");
    let cfg = format!(
        "{}storage:\n  enabled: false\nremoteRead:\n  - name: store\n    url: {}\n",
        jaeger_config(sink.port, "{type: const, param: 1}", ""),
        store.url("/api/v1/read")
    );
    let front = M3Query::start_config(tempfile::tempdir().expect("tempdir"), &cfg, &[]);
    let (status, id) = get(&front, "/api/v1/query?query=up&time=60", &[]);
    assert_eq!(status, 200);
    let id = id.expect("sampled");
    let spans = sink.wait_for("the store's span in our trace", |s| {
        s.iter()
            .any(|x| x["traceId"] == id.as_str() && x["operationName"] == "POST /api/v1/read")
            && s.iter()
                .any(|x| x["traceId"] == id.as_str() && x["operationName"] == "remote.read")
    });
    let read = spans
        .iter()
        .find(|x| x["traceId"] == id.as_str() && x["operationName"] == "remote.read")
        .expect("remote.read");
    let served = spans
        .iter()
        .find(|x| x["traceId"] == id.as_str() && x["operationName"] == "POST /api/v1/read")
        .expect("the store's span");
    assert_eq!(served["serviceName"], "store", "{served}");
    assert_eq!(read["serviceName"], "m3query", "{read}");
    assert_eq!(served["parentSpanId"], read["spanId"], "{served}");
    for tag in ["series", "bytes", "status", "start_ms"] {
        assert_eq!(read["tagTypes"][tag], "LONG", "{tag}: {read}");
    }
    assert!(read["tags"].get("error").is_none(), "{read}");

    // An unsampled query sends no trace context: the store samples on its own.
    drop(front);
    let cfg = cfg.replace("{type: const, param: 1}", "{type: const, param: 0}");
    let front = M3Query::start_config(tempfile::tempdir().expect("tempdir"), &cfg, &[]);
    let (status, id) = get(&front, "/api/v1/query?query=up&time=60", &[]);
    assert_eq!((status, id), (200, None));
    let spans = sink.wait_for("the store's own root span", |s| {
        s.iter()
            .filter(|x| x["operationName"] == "POST /api/v1/read")
            .count()
            >= 2
    });
    let second = spans
        .iter()
        .filter(|x| x["operationName"] == "POST /api/v1/read")
        .nth(1)
        .expect("second read");
    assert!(
        second["parentSpanId"].is_null() || second["parentSpanId"] == "0000000000000000",
        "{second}"
    );
}

/// A remote-read store that answers every read with no series after `delay` (keep-alive).
fn slow_store(delay: Duration) -> u16 {
    use m3query_remote::prompb;
    use prost::Message;
    let l = TcpListener::bind("127.0.0.1:0").expect("bind store");
    let port = l.local_addr().expect("addr").port();
    let answer = snap::raw::Encoder::new()
        .compress_vec(
            &prompb::ReadResponse {
                results: vec![prompb::QueryResult { timeseries: vec![] }],
            }
            .encode_to_vec(),
        )
        .expect("snappy");
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // One request: headers, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    std::thread::sleep(delay);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nContent-Length: {}\r\n\r\n",
                        answer.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err() || conn.write_all(&answer).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn tag<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["tags"][key]
}

/// Tail capture (issue 14): with the head sampler at 0, a query slower than
/// `middleware.logging.threshold` (1s) and a query that ends 503 still reach Jaeger with their
/// phase spans, named by `X-Trace-Id`, tagged `sampler.type=tail` and with Grafana's
/// dashboard and panel; a fast request is not exported. The slow log names the panel too.
#[test]
fn tail_capture_exports_slow_and_failed_requests_the_sampler_passed_over() {
    let sink = Sink::jaeger_agent();
    let store = slow_store(Duration::from_millis(1500));
    let cfg = format!(
        "{}storage:\n  enabled: false\nquery:\n  partialResponse: false\nremoteRead:\n  - name: slow-store\n    url: http://127.0.0.1:{store}/api/v1/read\n    timeout: 10s\n",
        jaeger_config(sink.port, "{type: probabilistic, param: 0}", "")
    );
    let m = M3Query::start_config(tempfile::tempdir().expect("tempdir"), &cfg, &[]);
    let grafana = [
        ("User-Agent", "Grafana/11.3.0"),
        ("X-Dashboard-Uid", "edx8fq2"),
        ("X-Panel-Id", "7"),
        ("X-Grafana-Org-Id", "1"),
    ];

    // Fast: not exported, no trace id.
    let (status, id) = get(&m, "/api/v1/status/buildinfo", &grafana);
    assert_eq!((status, id), (200, None));

    // Slow, as Grafana sends it: POST with a form body.
    let mut req = http()
        .post(m.url("/api/v1/query_range"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("query=up&start=0&end=600&step=60");
    for (k, v) in grafana {
        req = req.header(k, v);
    }
    let r = req.send().expect("slow query");
    assert_eq!(r.status().as_u16(), 200);
    let slow_id = r
        .headers()
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("a captured request names its trace");

    // Failed: the store is slower than the query's timeout.
    let (status, err_id) = get(&m, "/api/v1/query?query=up&time=60&timeout=300ms", &[]);
    assert_eq!(status, 503);
    let err_id = err_id.expect("a captured 503 names its trace");
    assert_ne!(slow_id, err_id);

    let root_of = |spans: &[Value], id: &str, op: &str| -> Option<Value> {
        spans
            .iter()
            .find(|s| s["traceId"] == id && s["operationName"] == op)
            .cloned()
    };
    let spans = sink.wait_for("both captured traces with their phases", |s| {
        [
            (slow_id.as_str(), "POST /api/v1/query_range"),
            (slow_id.as_str(), "remote.read"),
            (slow_id.as_str(), "promql.eval"),
            (err_id.as_str(), "GET /api/v1/query"),
            (err_id.as_str(), "remote.read"),
        ]
        .iter()
        .all(|(id, op)| root_of(s, id, op).is_some())
    });

    let root = root_of(&spans, &slow_id, "POST /api/v1/query_range").expect("slow root");
    assert_eq!(tag(&root, "sampler.type"), "tail", "{root}");
    assert_eq!(tag(&root, "tail.reason"), "slow", "{root}");
    assert_eq!(tag(&root, "http.status_code"), 200, "{root}");
    assert_eq!(root["tagTypes"]["http.status_code"], "LONG", "{root}");
    assert_eq!(tag(&root, "grafana.dashboard_uid"), "edx8fq2", "{root}");
    assert_eq!(tag(&root, "grafana.panel_id"), "7", "{root}");
    assert_eq!(tag(&root, "grafana.org_id"), "1", "{root}");
    assert_eq!(tag(&root, "http.user_agent"), "Grafana/11.3.0", "{root}");
    assert!(tag(&root, "error").is_null(), "{root}");
    assert!(
        root["duration"].as_i64().unwrap_or(0) >= 1_500_000,
        "the root spans the whole request: {root}"
    );
    // The phases keep their real times and nest under the root.
    let ids: Vec<&Value> = spans
        .iter()
        .filter(|s| s["traceId"] == slow_id.as_str())
        .map(|s| &s["spanId"])
        .collect();
    let read = root_of(&spans, &slow_id, "remote.read").expect("remote.read");
    assert_eq!(tag(&read, "store"), "slow-store", "{read}");
    assert!(
        read["duration"].as_i64().unwrap_or(0) >= 1_400_000,
        "{read}"
    );
    let (r0, rd) = (
        root["startTime"].as_i64().unwrap_or(0),
        root["duration"].as_i64().unwrap_or(0),
    );
    for s in spans.iter().filter(|s| s["traceId"] == slow_id.as_str()) {
        let (s0, sd) = (
            s["startTime"].as_i64().unwrap_or(0),
            s["duration"].as_i64().unwrap_or(0),
        );
        assert!(
            s0 >= r0 && s0 + sd <= r0 + rd + 1_000,
            "inside the root: {s}"
        );
        if s["spanId"] != root["spanId"] {
            assert!(ids.contains(&&s["parentSpanId"]), "parent in trace: {s}");
        }
    }
    let eval = root_of(&spans, &slow_id, "promql.eval").expect("promql.eval");
    assert!(eval["startTime"].as_i64() >= read["startTime"].as_i64());

    let root = root_of(&spans, &err_id, "GET /api/v1/query").expect("503 root");
    assert_eq!(tag(&root, "error"), true, "{root}");
    assert_eq!(tag(&root, "http.status_code"), 503, "{root}");
    assert_eq!(tag(&root, "tail.reason"), "error", "{root}");
    assert_eq!(tag(&root, "sampler.type"), "tail", "{root}");
    // The failure's log event is on the root, as for sampled requests.
    assert!(
        root["logs"]
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e.to_string().contains("timed out"))),
        "{root}"
    );

    // Nothing else was exported: the fast request stayed unsampled, and so did `/ready`'s
    // expected 503s while the server started.
    std::thread::sleep(Duration::from_millis(500));
    let all = sink.spans();
    assert!(
        all.iter()
            .all(|s| s["traceId"] == slow_id.as_str() || s["traceId"] == err_id.as_str()),
        "only the captured traces: {:?}",
        all.iter()
            .map(|s| s["operationName"].to_string())
            .collect::<Vec<_>>()
    );

    let metrics = http()
        .get(m.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    let count = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing"))
    };
    assert_eq!(
        count("m3query_tracing_tail_captured_total{reason=\"slow\"}"),
        1.0
    );
    assert_eq!(
        count("m3query_tracing_tail_captured_total{reason=\"error\"}"),
        1.0
    );
    // The slow log names the panel, as Thanos's slow-query log does.
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("slow request") && l.contains("/api/v1/query_range"))
        .unwrap_or_else(|| panic!("slow log line: {log}"));
    for want in [
        "grafana_dashboard_uid=\"edx8fq2\"",
        "grafana_panel_id=\"7\"",
        &format!("trace_id=\"{slow_id}\""),
    ] {
        assert!(line.contains(want), "{want} in {line}");
    }
}

/// The spans of trace `id` named `op`.
fn in_trace<'a>(spans: &'a [Value], id: &str, op: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|x| x["traceId"] == id && x["operationName"] == op)
        .collect()
}

/// A store that fails (500) or answers garbage (not snappy; a streamed frame with a bad
/// checksum) is marked on its own `remote.read` span: `error=true` and a log that says why,
/// with the URL's password masked. The query itself answers (partial response), so only the
/// stores' spans carry the error.
#[test]
fn a_store_that_fails_or_sends_garbage_marks_its_own_read_span() {
    let sink = Sink::jaeger_agent();
    let failing = fake_store(
        500,
        "text/plain",
        b"boom: upstream http://admin:hunter2@db.internal/x is down".to_vec(),
    );
    let garbage = fake_store(
        200,
        "application/x-protobuf",
        b"this is not snappy at all".to_vec(),
    );
    // One frame: length 3, a CRC32C that is not the message's, then the message.
    let bad_frame = fake_store(
        200,
        "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse",
        vec![3, 0, 0, 0, 0, b'a', b'b', b'c'],
    );
    let cfg = format!(
        "{}storage:\n  enabled: false\nremoteRead:\n  - name: failing\n    url: http://reader:hunter2@127.0.0.1:{failing}/api/v1/read\n  - name: garbage\n    url: http://127.0.0.1:{garbage}/api/v1/read\n  - name: bad-frame\n    url: http://127.0.0.1:{bad_frame}/api/v1/read\n",
        jaeger_config(sink.port, "{type: const, param: 1}", "")
    );
    let m = M3Query::start_config(tempfile::tempdir().expect("tempdir"), &cfg, &[]);
    let (status, id) = get(&m, "/api/v1/query?query=up&time=60", &[]);
    assert_eq!(status, 200, "partial response: {}", m.log());
    let id = id.expect("sampled");
    let spans = sink.wait_for("the three stores' read spans", |s| {
        in_trace(s, &id, "remote.read").len() == 3
            && !in_trace(s, &id, "GET /api/v1/query").is_empty()
    });
    let root = in_trace(&spans, &id, "GET /api/v1/query")[0];
    assert!(root["tags"].get("error").is_none(), "{root}");
    for (store, status, reason) in [
        ("failing", 500, "HTTP 500: boom"),
        ("garbage", 200, "bad snappy"),
        ("bad-frame", 200, "bad frame"),
    ] {
        let read = *in_trace(&spans, &id, "remote.read")
            .iter()
            .find(|x| x["tags"]["store"] == store)
            .unwrap_or_else(|| panic!("{store}'s span: {spans:#?}"));
        assert_eq!(read["tags"]["error"], true, "{read}");
        assert_eq!(read["tagTypes"]["error"], "BOOL", "{read}");
        assert_eq!(read["tags"]["status"], status, "{read}");
        assert_eq!(read["tagTypes"]["status"], "LONG", "{read}");
        assert_eq!(read["tagTypes"]["start_ms"], "LONG", "{read}");
        assert!(read.get("duplicateTagKeys").is_none(), "{read}");
        let logs = read["logs"].as_array().expect("logs");
        let failure = logs
            .iter()
            .find(|l| l["fields"]["event"] == "remote read failed")
            .unwrap_or_else(|| panic!("{store}: no failure log: {read}"));
        let message = failure["fields"]["error.message"].as_str().unwrap_or("");
        assert!(message.contains(reason), "{store}: {message}");
        assert_eq!(failure["fields"]["error.kind"], "unavailable", "{failure}");
        assert!(!read.to_string().contains("hunter2"), "{read}");
    }
    assert!(!m.log().contains("hunter2"), "{}", m.log());
}

/// Writes `up{job=JOB}` to a new m3query store.
fn store_with(job: &str) -> M3Query {
    let store = M3Query::start("");
    let (status, body) = common::remote_write_v1(
        &store.url("/api/v1/write"),
        &[(vec![("__name__", "up"), ("job", job)], vec![(0, 1.0)])],
    );
    assert_eq!(status, 204, "{body}");
    store
}

/// The series and label APIs fan out too, and their traces show it: a phase span
/// (`storage.series`, `storage.label_names`, `storage.label_values`) under the request with
/// one `remote.read` per store under it, figures as integers.
#[test]
fn series_and_label_lookups_show_each_store() {
    let sink = Sink::jaeger_agent();
    let (a, b) = (store_with("a"), store_with("b"));
    let cfg = format!(
        "{}storage:\n  enabled: false\nremoteRead:\n  - name: store-a\n    url: {}\n  - name: store-b\n    url: {}\n",
        jaeger_config(sink.port, "{type: const, param: 1}", ""),
        a.url("/api/v1/read"),
        b.url("/api/v1/read"),
    );
    let m = M3Query::start_config(tempfile::tempdir().expect("tempdir"), &cfg, &[]);
    for (path, route, phase, count_tag, count) in [
        (
            "/api/v1/series?match[]=up&start=0&end=600",
            "GET /api/v1/series",
            "storage.series",
            "series",
            2,
        ),
        (
            "/api/v1/labels?start=0&end=600",
            "GET /api/v1/labels",
            "storage.label_names",
            "values",
            2,
        ),
        (
            "/api/v1/label/job/values?match[]=up&start=0&end=600",
            "GET /api/v1/label/{name}/values",
            "storage.label_values",
            "values",
            2,
        ),
    ] {
        let (status, id) = get(&m, path, &[]);
        assert_eq!(status, 200, "{path}");
        let id = id.expect("sampled");
        let spans = sink.wait_for(phase, |s| {
            in_trace(s, &id, "remote.read").len() == 2
                && !in_trace(s, &id, phase).is_empty()
                && !in_trace(s, &id, route).is_empty()
        });
        let root = in_trace(&spans, &id, route)[0];
        let span = in_trace(&spans, &id, phase)[0];
        assert_eq!(span["parentSpanId"], root["spanId"], "{span}");
        assert_eq!(span["tags"][count_tag], count, "{span}");
        assert_eq!(span["tagTypes"][count_tag], "LONG", "{span}");
        assert_eq!(span["tags"]["start_ms"], 0, "{span}");
        assert_eq!(span["tagTypes"]["end_ms"], "LONG", "{span}");
        let mut stores: Vec<&str> = in_trace(&spans, &id, "remote.read")
            .iter()
            .map(|r| {
                assert_eq!(r["parentSpanId"], span["spanId"], "{r}");
                assert_eq!(r["tags"]["series"], 1, "{r}");
                assert_eq!(r["tagTypes"]["series"], "LONG", "{r}");
                assert_eq!(r["tagTypes"]["bytes"], "LONG", "{r}");
                r["tags"]["store"].as_str().unwrap_or("")
            })
            .collect();
        stores.sort();
        assert_eq!(stores, ["store-a", "store-b"], "{path}");
    }
    let series = by_op(&sink.spans(), "storage.series")[0].clone();
    assert_eq!(series["tags"]["matchers"], "{__name__=\"up\"}", "{series}");
}

/// An inbound remote read's trace says what was read: the request span carries the selectors
/// and range as the query routes do, and each query gets a `remote.serve` span with its
/// matchers, range (ms) and the series and samples sent, as integers. Both response types.
#[test]
fn inbound_remote_read_spans_carry_matchers_and_range() {
    use m3query_remote::prompb;
    use prost::Message;
    let sink = Sink::jaeger_agent();
    let m = M3Query::start(&jaeger_config(sink.port, "{type: const, param: 1}", ""));
    let (status, body) = common::remote_write_v1(
        &m.url("/api/v1/write"),
        &[(
            vec![("__name__", "up"), ("job", "a")],
            vec![(0, 1.0), (15_000, 1.0), (30_000, 1.0)],
        )],
    );
    assert_eq!(status, 204, "{body}");
    let matchers = vec![
        common::eq_matcher("__name__", "up"),
        common::eq_matcher("job", "a"),
    ];
    let r = common::remote_read_samples(&m.url("/api/v1/read"), matchers.clone(), 0, 600_000);
    assert_eq!(r.results[0].timeseries.len(), 1);
    let req = prompb::ReadRequest {
        queries: vec![prompb::Query {
            start_timestamp_ms: 5_000,
            end_timestamp_ms: 600_000,
            matchers,
            hints: None,
        }],
        accepted_response_types: vec![prompb::read_request::ResponseType::StreamedXorChunks as i32],
    };
    let resp = http()
        .post(m.url("/api/v1/read"))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .body(
            snap::raw::Encoder::new()
                .compress_vec(&req.encode_to_vec())
                .expect("snappy"),
        )
        .send()
        .expect("streamed read");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(!resp.bytes().expect("frames").is_empty());

    let spans = sink.wait_for("both reads' spans", |s| {
        by_op(s, "remote.serve").len() == 2 && by_op(s, "POST /api/v1/read").len() == 2
    });
    for (start_ms, samples) in [(0, 3), (5_000, 2)] {
        let serve = *by_op(&spans, "remote.serve")
            .iter()
            .find(|s| s["tags"]["start_ms"] == start_ms)
            .unwrap_or_else(|| panic!("a read from {start_ms}: {spans:#?}"));
        let root = *by_op(&spans, "POST /api/v1/read")
            .iter()
            .find(|r| r["spanId"] == serve["parentSpanId"])
            .unwrap_or_else(|| panic!("remote.serve is a child of its request: {serve}"));
        assert_eq!(
            serve["tags"]["matchers"], "{__name__=\"up\", job=\"a\"}",
            "{serve}"
        );
        assert_eq!(serve["tags"]["end_ms"], 600_000, "{serve}");
        assert_eq!(serve["tags"]["series"], 1, "{serve}");
        assert_eq!(serve["tags"]["samples"], samples, "{serve}");
        assert_eq!(serve["tags"]["query_index"], 0, "{serve}");
        for tag in ["start_ms", "end_ms", "series", "samples", "query_index"] {
            assert_eq!(serve["tagTypes"][tag], "LONG", "{tag}: {serve}");
        }
        assert_eq!(
            root["tags"]["query"], "{__name__=\"up\", job=\"a\"}",
            "{root}"
        );
        assert_eq!(root["tags"]["start"], start_ms as f64 / 1000.0, "{root}");
        assert_eq!(root["tags"]["end"], 600.0, "{root}");
        assert_eq!(root["tagTypes"]["start"], "DOUBLE", "{root}");
    }
}
