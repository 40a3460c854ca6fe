//! The operator scripts in `scripts/`, run as an operator runs them.
//!
//! The trace searches (`slow-queries`, `error-queries`, `status-queries`) run against a small
//! HTTP server on a loopback port that answers like Jaeger's query API
//! (`GET /api/traces`, the API the Jaeger UI uses); the tests check the exact parameters each
//! script sends and every line it prints. `load-demo` and `healthcheck` run against the real
//! m3query binary, and the hand-written remote-write encoding of `scripts/lib/m3query_ops.py`
//! is decoded by the Rust snappy and protobuf implementations.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{M3Query, client};
use m3query_remote::prompb;
use prost::Message;
use serde_json::{Value, json};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(script(name));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("run scripts/{name}: {e} (python3 must be on PATH)"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64
}

/// One HTTP request the fake server received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    params: Vec<(String, String)>,
}

impl Received {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn names(&self) -> Vec<&str> {
        self.params.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// An HTTP/1.x server on a loopback port that answers every request with one canned status and
/// JSON body, and records what it was asked.
struct FakeServer {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(status: u16, body: String) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, st) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let (stream, _) = match listener.accept() {
                    Ok(s) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => panic!("accept: {e}"),
                };
                stream.set_nonblocking(false).expect("blocking");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut content_length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        content_length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut discard = vec![0; content_length];
                let _ = reader.read_exact(&mut discard);
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let target = parts.next().unwrap_or_default().to_string();
                let url = reqwest::Url::parse(&format!("http://fake{target}")).expect("target");
                rec.lock().expect("lock").push(Received {
                    method,
                    path: url.path().to_string(),
                    params: url.query_pairs().into_owned().collect(),
                });
                let reason = match status {
                    200 => "OK",
                    500 => "Internal Server Error",
                    503 => "Service Unavailable",
                    _ => "Status",
                };
                let mut out = stream;
                let _ = write!(
                    out,
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeServer {
            port,
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// The requests of a search for a bare route: one per method, GET then POST; checks
    /// that they differ only in `operation`, and returns the GET one.
    fn route_requests(&self, route: &str) -> Received {
        let r = self.requests();
        assert_eq!(r.len(), 2, "one search per method, got {r:?}");
        assert_eq!(
            r[0].param("operation"),
            Some(format!("GET {route}").as_str())
        );
        assert_eq!(
            r[1].param("operation"),
            Some(format!("POST {route}").as_str())
        );
        let rest = |x: &Received| -> Vec<(String, String)> {
            x.params
                .iter()
                .filter(|(k, _)| k != "operation")
                .cloned()
                .collect()
        };
        assert_eq!(
            rest(&r[0]),
            rest(&r[1]),
            "the searches differ only in operation"
        );
        r[0].clone()
    }

    /// The one request a script made.
    fn only_request(&self) -> Received {
        let r = self.requests();
        assert_eq!(r.len(), 1, "expected exactly one request, got {r:?}");
        r[0].clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tag(key: &str, value: Value) -> Value {
    let ty = match &value {
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() => "int64",
        Value::Number(_) => "float64",
        _ => "string",
    };
    json!({"key": key, "type": ty, "value": value})
}

fn span(
    trace: &str,
    id: &str,
    op: &str,
    parent: Option<&str>,
    (start, duration): (i64, i64),
    tags: Vec<Value>,
    process: &str,
) -> Value {
    let references: Vec<Value> = parent
        .map(|p| vec![json!({"refType": "CHILD_OF", "traceID": trace, "spanID": p})])
        .unwrap_or_default();
    json!({
        "traceID": trace, "spanID": id, "operationName": op, "references": references,
        "startTime": start, "duration": duration, "tags": tags, "logs": [],
        "processID": process, "warnings": null, "flags": 1,
    })
}

const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACE_C: &str = "00000000000000000000000000c0ffee";
const QUERY_A: &str = r#"sum by (route) (rate(m3query_http_requests_total{code=~"5.."}[5m]))"#;

/// Three traces in the documented shape of Jaeger's `/api/traces` answer:
/// A: a slow query_range (2.15s) whose root span has a remote parent in Grafana, with a
///    child span; B: a 500 with error=true, spans listed child first; C: the newest and
///    shortest, a 503 without query tags, sent by POST as Grafana does.
fn jaeger_fixture() -> String {
    let m3query_process = json!({"serviceName": "m3query", "tags": [
        {"key": "hostname", "type": "string", "value": "m3query-0"},
    ]});
    let a = json!({
        "traceID": TRACE_A,
        "spans": [
            span(TRACE_A, "00000000000000a1", "/api/ds/query", None, (1_548_876_672_500_000, 2_300_000), vec![], "p2"),
            span(TRACE_A, "00000000000000a2", "GET /api/v1/query_range", Some("00000000000000a1"),
                (1_548_876_672_544_000, 2_150_000), vec![
                    tag("http.method", json!("GET")),
                    tag("http.status_code", json!(200)),
                    tag("query", json!(QUERY_A)),
                    tag("start", json!("1548873072")),
                    tag("end", json!("1548876672")),
                    tag("step", json!("15")),
                ], "p1"),
            span(TRACE_A, "00000000000000a3", "promql.eval", Some("00000000000000a2"),
                (1_548_876_672_545_000, 2_000_000), vec![tag("query", json!("not the root"))], "p1"),
        ],
        "processes": {"p1": m3query_process, "p2": {"serviceName": "grafana", "tags": []}},
        "warnings": null,
    });
    let b = json!({
        "traceID": TRACE_B,
        "spans": [
            span(TRACE_B, "00000000000000b2", "storage.select", Some("00000000000000b1"),
                (1_548_876_670_200_000, 1_000_000), vec![tag("step", json!("child"))], "p1"),
            span(TRACE_B, "00000000000000b1", "GET /api/v1/query_range", None,
                (1_548_876_670_100_000, 1_200_000), vec![
                    tag("http.status_code", json!(500)),
                    tag("error", json!(true)),
                    tag("query", json!("up == 0")),
                    tag("step", json!("60s")),
                ], "p1"),
        ],
        "processes": {"p1": m3query_process},
        "warnings": null,
    });
    let c = json!({
        "traceID": TRACE_C,
        "spans": [
            span(TRACE_C, "00000000000000c1", "POST /api/v1/query_range", None,
                (1_548_876_680_000_000, 1_000), vec![tag("http.status_code", json!(503.0))], "p1"),
        ],
        "processes": {"p1": m3query_process},
        "warnings": null,
    });
    // Neither slowest-first nor newest-first: the scripts must sort.
    json!({"data": [b, c, a], "total": 0, "limit": 0, "offset": 0, "errors": null}).to_string()
}

fn line_a(base: &str) -> String {
    format!(
        r#"2019-01-30T19:31:12.544Z  2.150s  GET /api/v1/query_range  status=200  step=15  query="sum by (route) (rate(m3query_http_requests_total{{code=~\"5..\"}}[5m]))"  {base}/trace/{TRACE_A}"#
    )
}

fn line_b(base: &str) -> String {
    format!(
        r#"2019-01-30T19:31:10.100Z  1.200s  GET /api/v1/query_range  status=500  step=60s  query="up == 0"  {base}/trace/{TRACE_B}"#
    )
}

fn line_c(base: &str) -> String {
    format!(
        "2019-01-30T19:31:20.000Z  1.000ms  POST /api/v1/query_range  status=503  step=-  query=-  {base}/trace/{TRACE_C}"
    )
}

/// Checks `start`/`end` (unix microseconds, as the Jaeger UI sends them): `end` is when the
/// script ran and `start` is `lookback_us` before it.
fn assert_window(r: &Received, before_us: i64, after_us: i64, lookback_us: i64) {
    let start: i64 = r.param("start").expect("start").parse().expect("start µs");
    let end: i64 = r.param("end").expect("end").parse().expect("end µs");
    assert!(
        (before_us..=after_us).contains(&end),
        "end {end} not within the run [{before_us}, {after_us}]"
    );
    assert_eq!(end - start, lookback_us, "start must be end - lookback");
}

#[test]
fn slow_queries_sends_the_ui_search_and_prints_slowest_first() {
    let jaeger = FakeServer::start(200, jaeger_fixture());
    let before = now_us();
    let out = run("slow-queries", &[], &[("JAEGER_URL", &jaeger.url())]);
    let after = now_us();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let r = jaeger.route_requests("/api/v1/query_range");
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/api/traces");
    assert_eq!(
        r.names(),
        [
            "service",
            "operation",
            "minDuration",
            "lookback",
            "limit",
            "start",
            "end"
        ]
    );
    assert_eq!(r.param("service"), Some("m3query"));
    assert_eq!(r.param("operation"), Some("GET /api/v1/query_range"));
    assert_eq!(r.param("minDuration"), Some("1s"));
    assert_eq!(r.param("lookback"), Some("1h"));
    assert_eq!(r.param("limit"), Some("20"));
    assert_window(&r, before, after, 3_600_000_000);

    let base = jaeger.url();
    assert_eq!(
        stdout(&out),
        format!("{}\n{}\n{}\n", line_a(&base), line_b(&base), line_c(&base))
    );
    let err = stderr(&out);
    assert!(err.contains("3 traces"), "{err}");
    assert!(
        err.contains(&format!(
            "Jaeger UI: {base}/search?service=m3query&operation=GET%20%2Fapi%2Fv1%2Fquery_range&minDuration=1s&lookback=1h&limit=20&start="
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            " {base}/search?service=m3query&operation=POST%20%2Fapi%2Fv1%2Fquery_range&minDuration=1s&lookback=1h&limit=20&start="
        )),
        "one UI link per method: {err}"
    );
}

#[test]
fn slow_queries_options_reach_jaeger() {
    let jaeger = FakeServer::start(200, jaeger_fixture());
    let before = now_us();
    let out = run(
        "slow-queries",
        &[
            "--min-duration",
            "250ms",
            "--lookback",
            "2d",
            "--limit",
            "5",
            "--service",
            "m3query-eu",
            "--operation",
            "POST /api/v1/query",
        ],
        // A Jaeger behind a path prefix, written with a trailing slash.
        &[("JAEGER_URL", &format!("{}/jaeger/", jaeger.url()))],
    );
    let after = now_us();
    let r = jaeger.only_request();
    assert_eq!(r.path, "/jaeger/api/traces");
    assert_eq!(r.param("service"), Some("m3query-eu"));
    assert_eq!(r.param("operation"), Some("POST /api/v1/query"));
    assert_eq!(r.param("minDuration"), Some("250ms"));
    assert_eq!(r.param("lookback"), Some("2d"));
    assert_eq!(r.param("limit"), Some("5"));
    assert_eq!(r.param("tags"), None);
    assert_window(&r, before, after, 2 * 86_400_000_000);
    // Service m3query-eu has no spans in the fixture: the earliest span stands in, and the
    // links carry the path prefix.
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines()
            .all(|l| l.contains(&format!("{}/jaeger/trace/", jaeger.url()))),
        "{text}"
    );
    assert_eq!(text.lines().count(), 3, "{text}");
}

#[test]
fn error_queries_search_error_true_newest_first() {
    let jaeger = FakeServer::start(200, jaeger_fixture());
    let before = now_us();
    let out = run("error-queries", &[], &[("JAEGER_URL", &jaeger.url())]);
    let after = now_us();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = jaeger.route_requests("/api/v1/query_range");
    assert_eq!(r.path, "/api/traces");
    assert_eq!(
        r.names(),
        [
            "service",
            "operation",
            "tags",
            "lookback",
            "limit",
            "start",
            "end"
        ]
    );
    assert_eq!(r.param("service"), Some("m3query"));
    assert_eq!(r.param("operation"), Some("GET /api/v1/query_range"));
    assert_eq!(r.param("tags"), Some(r#"{"error":"true"}"#));
    assert_eq!(r.param("lookback"), Some("1h"));
    assert_eq!(r.param("limit"), Some("20"));
    assert_window(&r, before, after, 3_600_000_000);
    let base = jaeger.url();
    assert_eq!(
        stdout(&out),
        format!("{}\n{}\n{}\n", line_c(&base), line_a(&base), line_b(&base))
    );
    assert!(
        stderr(&out).contains("tags=%7B%22error%22%3A%22true%22%7D"),
        "the UI link carries the tag search: {}",
        stderr(&out)
    );
}

/// Grafana's slow panels by dashboard (issue 14): `--dashboard` and `--panel` search the tags
/// m3query puts on the request span from `X-Dashboard-Uid` and `X-Panel-Id`, together with the
/// script's own tag, and each line names the dashboard and panel it came from.
#[test]
fn searches_by_grafana_dashboard_and_panel() {
    let d = json!({
        "traceID": TRACE_C,
        "spans": [
            span(TRACE_C, "00000000000000d1", "POST /api/v1/query_range", None,
                (1_548_876_680_000_000, 3_500_000), vec![
                    tag("http.status_code", json!(500)),
                    tag("error", json!(true)),
                    tag("query", json!("up")),
                    tag("grafana.dashboard_uid", json!("edx8fq2")),
                    tag("grafana.panel_id", json!("7")),
                ], "p1"),
        ],
        "processes": {"p1": {"serviceName": "m3query", "tags": []}},
        "warnings": null,
    });
    let body = json!({"data": [d], "total": 0, "limit": 0, "offset": 0, "errors": null});
    let jaeger = FakeServer::start(200, body.to_string());
    let out = run(
        "error-queries",
        &["--dashboard", "edx8fq2", "--panel", "7"],
        &[("JAEGER_URL", &jaeger.url())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = jaeger.route_requests("/api/v1/query_range");
    assert_eq!(
        r.param("tags"),
        Some(r#"{"error":"true","grafana.dashboard_uid":"edx8fq2","grafana.panel_id":"7"}"#)
    );
    assert_eq!(
        stdout(&out),
        format!(
            "2019-01-30T19:31:20.000Z  3.500s  POST /api/v1/query_range  status=500  step=-  query=\"up\"  dashboard=edx8fq2  panel=7  {}/trace/{TRACE_C}\n",
            jaeger.url()
        )
    );
    // Slow panels of one dashboard: the duration search plus the dashboard tag.
    let jaeger = FakeServer::start(200, body.to_string());
    let out = run(
        "slow-queries",
        &["--dashboard", "edx8fq2"],
        &[("JAEGER_URL", &jaeger.url())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = jaeger.route_requests("/api/v1/query_range");
    assert_eq!(r.param("minDuration"), Some("1s"));
    assert_eq!(
        r.param("tags"),
        Some(r#"{"grafana.dashboard_uid":"edx8fq2"}"#)
    );
}

#[test]
fn error_queries_with_min_duration_and_all_operations() {
    let jaeger = FakeServer::start(200, jaeger_fixture());
    let out = run(
        "error-queries",
        &["--operation", "", "--min-duration", "1m30s"],
        &[("JAEGER_URL", &jaeger.url())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = jaeger.only_request();
    assert_eq!(r.param("operation"), None, "empty --operation searches all");
    assert_eq!(r.param("minDuration"), Some("1m30s"));
    assert_eq!(r.param("tags"), Some(r#"{"error":"true"}"#));
    // Without an operation the root is m3query's earliest span: in trace A the one whose parent
    // is Grafana's span (which starts earlier still), not its own child.
    let base = jaeger.url();
    assert_eq!(
        stdout(&out),
        format!("{}\n{}\n{}\n", line_c(&base), line_a(&base), line_b(&base))
    );
}

#[test]
fn status_queries_search_the_status_code_tag() {
    let jaeger = FakeServer::start(200, jaeger_fixture());
    let before = now_us();
    let out = run(
        "status-queries",
        &["--lookback", "24h"],
        &[("JAEGER_URL", &jaeger.url())],
    );
    let after = now_us();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = jaeger.route_requests("/api/v1/query_range");
    assert_eq!(r.param("service"), Some("m3query"));
    assert_eq!(r.param("operation"), Some("GET /api/v1/query_range"));
    assert_eq!(r.param("tags"), Some(r#"{"http.status_code":"500"}"#));
    assert_eq!(r.param("minDuration"), None);
    assert_eq!(r.param("lookback"), Some("24h"));
    assert_eq!(r.param("limit"), Some("20"));
    assert_window(&r, before, after, 86_400_000_000);
    let base = jaeger.url();
    assert_eq!(
        stdout(&out),
        format!("{}\n{}\n{}\n", line_c(&base), line_a(&base), line_b(&base))
    );

    let jaeger = FakeServer::start(200, jaeger_fixture());
    let out = run(
        "status-queries",
        &["--code", "503", "--limit", "3"],
        &[("JAEGER_URL", &jaeger.url())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = jaeger.route_requests("/api/v1/query_range");
    assert_eq!(r.param("tags"), Some(r#"{"http.status_code":"503"}"#));
    assert_eq!(r.param("limit"), Some("3"));
}

#[test]
fn jaeger_http_error_exits_1_with_its_message() {
    let body = json!({"data": null, "total": 0, "limit": 0, "offset": 0,
        "errors": [{"code": 500, "msg": "trace storage is unavailable"}]})
    .to_string();
    for name in ["slow-queries", "error-queries", "status-queries"] {
        let jaeger = FakeServer::start(500, body.clone());
        let out = run(name, &[], &[("JAEGER_URL", &jaeger.url())]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{name} prints no trace lines on error");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{name}: error: Jaeger answered HTTP 500"))
                && err.contains("trace storage is unavailable (code 500)"),
            "{name}: {err}"
        );
        assert_eq!(jaeger.requests().len(), 1);
    }
    // A non-JSON error page is quoted as is.
    let jaeger = FakeServer::start(503, "upstream connect error".into());
    let out = run("slow-queries", &[], &[("JAEGER_URL", &jaeger.url())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("HTTP 503") && stderr(&out).contains("upstream connect error"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn nothing_found_unreachable_and_bad_answers_exit_1() {
    let empty = json!({"data": [], "total": 0, "limit": 0, "offset": 0, "errors": null});
    let jaeger = FakeServer::start(200, empty.to_string());
    let out = run("slow-queries", &[], &[("JAEGER_URL", &jaeger.url())]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("no traces found") && stderr(&out).contains("Jaeger UI: "),
        "{}",
        stderr(&out)
    );

    let nobody = format!("http://127.0.0.1:{}", common::free_port());
    let out = run("error-queries", &[], &[("JAEGER_URL", &nobody)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("cannot reach {nobody}")),
        "{}",
        stderr(&out)
    );

    // Errors Jaeger reports beside an HTTP 200: alone they fail the search; beside traces
    // they are warnings.
    let err_doc = |data: Value| {
        json!({"data": data, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": 500, "msg": "one storage shard failed"}]})
        .to_string()
    };
    let jaeger = FakeServer::start(200, err_doc(json!([])));
    let out = run("slow-queries", &[], &[("JAEGER_URL", &jaeger.url())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Jaeger reported errors")
            && stderr(&out).contains("one storage shard failed (code 500)"),
        "{}",
        stderr(&out)
    );
    let fixture: Value = serde_json::from_str(&jaeger_fixture()).expect("fixture");
    let jaeger = FakeServer::start(200, err_doc(fixture["data"].clone()));
    let out = run("slow-queries", &[], &[("JAEGER_URL", &jaeger.url())]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out).lines().count(), 3);
    assert!(
        stderr(&out).contains("warning: Jaeger reported: one storage shard failed (code 500)"),
        "{}",
        stderr(&out)
    );

    // Something that is not Jaeger's query API.
    let other = FakeServer::start(200, r#"{"status":"success"}"#.into());
    let out = run("status-queries", &[], &[("JAEGER_URL", &other.url())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("did not answer with a Jaeger query API response"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_arguments_exit_2_before_any_request() {
    let jaeger = FakeServer::start(200, jaeger_fixture());
    for (name, args, says) in [
        (
            "slow-queries",
            vec!["--min-duration", "1d"],
            "invalid duration '1d'",
        ),
        (
            "slow-queries",
            vec!["--min-duration", "fast"],
            "invalid duration",
        ),
        (
            "error-queries",
            vec!["--lookback", "0s"],
            "must be positive",
        ),
        (
            "status-queries",
            vec!["--code", "five hundred"],
            "invalid int",
        ),
        ("status-queries", vec!["--limit", "0"], "must be at least 1"),
        ("load-demo", vec!["--series", "-3"], "must be at least 1"),
        (
            "load-demo",
            vec!["--duration", "forever"],
            "invalid duration",
        ),
    ] {
        let out = run(name, &args, &[("JAEGER_URL", &jaeger.url())]);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}");
        assert!(
            stderr(&out).contains(says),
            "{name} {args:?}: {}",
            stderr(&out)
        );
    }
    assert!(jaeger.requests().is_empty());
}

#[test]
fn every_script_has_help() {
    for name in ["slow-queries", "error-queries", "status-queries"] {
        let out = run(name, &["--help"], &[]);
        assert_eq!(out.status.code(), Some(0), "{name}");
        let text = stdout(&out);
        for want in [
            "JAEGER_URL",
            "http://localhost:16686",
            "exit codes:",
            "--lookback",
            "--limit",
            "--service",
            "--operation",
            "--min-duration",
        ] {
            assert!(text.contains(want), "{name} --help lacks {want}: {text}");
        }
    }
    let text = stdout(&run("status-queries", &["--help"], &[]));
    assert!(text.contains("--code"), "{text}");
    let out = run("load-demo", &["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    for want in ["--url", "--series", "--duration", "exit codes:"] {
        assert!(stdout(&out).contains(want), "{}", stdout(&out));
    }
    let out = Command::new(script("healthcheck"))
        .arg("--help")
        .output()
        .expect("healthcheck");
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("Exit codes"), "{}", stdout(&out));
}

fn get_json(url: &str) -> Value {
    client().get(url).send().expect("GET").json().expect("JSON")
}

/// All samples of the series matching `job="demo"`, read back through remote read.
fn read_demo(m: &M3Query) -> BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> {
    let resp = common::remote_read_samples(
        &m.url("/api/v1/prom/remote/read"),
        vec![common::eq_matcher("job", "demo")],
        0,
        i64::MAX,
    );
    resp.results[0]
        .timeseries
        .iter()
        .map(|ts| {
            (
                ts.labels
                    .iter()
                    .map(|l| {
                        (
                            String::from_utf8_lossy(&l.name).into_owned(),
                            String::from_utf8_lossy(&l.value).into_owned(),
                        )
                    })
                    .collect(),
                ts.samples.iter().map(|s| (s.timestamp, s.value)).collect(),
            )
        })
        .collect()
}

#[test]
fn load_demo_writes_series_m3query_serves() {
    let m = M3Query::start("");
    let started_ms = now_us() / 1000;
    // 20 instances x 15 series x 240 samples: several requests, each body over 64 KiB (so the
    // snappy encoder writes several literal elements).
    let out = run(
        "load-demo",
        &["--url", &m.url(""), "--series", "20", "--duration", "1h"],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("sent 72000 samples of 300 series (20 instances"),
        "{text}"
    );
    assert!(
        text.contains("histogram_quantile(0.99, sum by (le, instance)"),
        "{text}"
    );
    assert!(text.contains(&m.url("/api/v1/query_range")), "{text}");

    let series = get_json(&m.url("/api/v1/series?match[]={job=\"demo\"}"));
    assert_eq!(series["status"], "success");
    assert_eq!(series["data"].as_array().expect("series").len(), 300);
    let names = get_json(&m.url("/api/v1/label/__name__/values"));
    let names: Vec<&str> = names["data"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "demo_http_requests_total",
        "demo_http_request_duration_seconds_bucket",
        "demo_http_request_duration_seconds_sum",
        "demo_http_request_duration_seconds_count",
        "demo_memory_usage_bytes",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let instances = get_json(&m.url("/api/v1/label/instance/values"));
    assert_eq!(instances["data"].as_array().expect("values").len(), 20);
    let meta = get_json(&m.url("/api/v1/metadata?metric=demo_http_requests_total"));
    assert_eq!(
        meta["data"]["demo_http_requests_total"][0]["type"],
        "counter"
    );

    // The samples as sent: 240 per series on the 15s grid, ending now; counters never
    // decrease; a histogram's +Inf bucket equals its count and buckets grow with `le`.
    let data = read_demo(&m);
    assert_eq!(data.len(), 300);
    for (labels, samples) in &data {
        assert_eq!(samples.len(), 240, "{labels:?}");
        let last = samples.last().expect("samples").0;
        assert!(
            last <= now_us() / 1000 && last > started_ms - 15_000,
            "{labels:?} ends at {last}"
        );
        for w in samples.windows(2) {
            assert_eq!(w[1].0 - w[0].0, 15_000, "{labels:?}");
            if labels["__name__"] != "demo_memory_usage_bytes" {
                assert!(w[1].1 >= w[0].1, "{labels:?}: counter went down: {w:?}");
            }
        }
        assert!(samples.iter().all(|s| s.1.is_finite() && s.1 >= 0.0));
    }
    let find = |name: &str, extra: Option<(&str, &str)>| {
        data.iter()
            .find(|(l, _)| {
                l["__name__"] == name
                    && l["instance"] == "demo-3"
                    && extra.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
            })
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no {name} {extra:?}"))
    };
    let count = find("demo_http_request_duration_seconds_count", None);
    assert_eq!(
        find(
            "demo_http_request_duration_seconds_bucket",
            Some(("le", "+Inf"))
        ),
        count
    );
    let small = find(
        "demo_http_request_duration_seconds_bucket",
        Some(("le", "0.1")),
    );
    let large = find(
        "demo_http_request_duration_seconds_bucket",
        Some(("le", "1.0")),
    );
    for ((s, l), c) in small.iter().zip(&large).zip(&count) {
        assert!(
            s.1 < l.1 && l.1 < c.1,
            "buckets grow with le: {s:?} {l:?} {c:?}"
        );
    }
    let ok = find("demo_http_requests_total", Some(("code", "200")));
    let failed = find("demo_http_requests_total", Some(("code", "500")));
    for ((t, total), ((_, o), (_, f))) in count.iter().zip(ok.iter().zip(&failed)) {
        assert!(
            ((o + f) - total).abs() <= total * 1e-12,
            "at {t}: 200s + 500s = count"
        );
    }

    // Running it again adds nothing twice.
    let out = run(
        "load-demo",
        &["--url", &m.url("/"), "--series", "20", "--duration", "1h"],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    // m3query takes a resent sample it already holds (same timestamp and value) as a no-op,
    // so a retried write is not refused; the loader reports refusals only for other values.
    assert!(!stdout(&out).contains("already stored"), "{}", stdout(&out));
    let again = read_demo(&m);
    assert_eq!(again.len(), 300);
    let now_ms = now_us() / 1000;
    for (labels, samples) in &again {
        // What was stored stays; at most the steps that passed since were added.
        let before = &data[labels];
        assert_eq!(&samples[..before.len()], &before[..], "{labels:?}");
        let last = before.last().expect("samples").0;
        for (t, _) in &samples[before.len()..] {
            assert!(
                *t > last && *t <= now_ms && (t - last) % 15_000 == 0,
                "{labels:?}: {t}"
            );
        }
    }
}

#[test]
fn load_demo_reports_http_errors() {
    let down = format!("http://127.0.0.1:{}", common::free_port());
    let out = run("load-demo", &["--url", &down, "--series", "1"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("load-demo: error: cannot reach {down}")),
        "{}",
        stderr(&out)
    );
    // A store failure (5xx), and a refusal that is not about samples already stored: both
    // fail the run with m3query's message.
    for (status, error) in [
        (500, "writing to storage: no space left on device"),
        (
            400,
            "0 samples written; refused: 15 too old samples (out of bounds)",
        ),
        (
            400,
            "10 samples written; refused: 5 out of order samples, 3 too old samples (out of bounds)",
        ),
    ] {
        let body = json!({"status": "error", "errorType": "x", "error": error}).to_string();
        let m3 = FakeServer::start(status, body);
        let out = run("load-demo", &["--url", &m3.url(), "--series", "1"], &[]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "m3query answered HTTP {status} for POST {}/api/v1/prom/remote/write: {error}",
                m3.url()
            )),
            "{err}"
        );
        let r = m3.only_request();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/api/v1/prom/remote/write")
        );
    }
}

/// Runs Python code with `scripts/lib` importable; returns stdout bytes.
fn python(code: &str) -> Vec<u8> {
    let out = Command::new(common::python3())
        .arg("-c")
        .arg(code)
        .env("PYTHONPATH", script("lib"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

#[test]
fn snappy_literal_blocks_decode_with_the_snap_crate() {
    let sizes = [
        0usize, 1, 59, 60, 61, 255, 256, 257, 65_535, 65_536, 65_537, 200_000,
    ];
    for n in sizes {
        let encoded = python(&format!(
            "import sys, m3query_ops as m\n\
             data = bytes((i * 7 + 3) % 251 for i in range({n}))\n\
             sys.stdout.buffer.write(m.snappy_block(data))"
        ));
        let expected: Vec<u8> = (0..n).map(|i| ((i * 7 + 3) % 251) as u8).collect();
        let decoded = snap::raw::Decoder::new()
            .decompress_vec(&encoded)
            .unwrap_or_else(|e| panic!("{n} bytes: {e}"));
        assert_eq!(decoded, expected, "{n} bytes");
    }
}

#[test]
fn write_request_encoding_decodes_with_prost() {
    let encoded = python(
        r#"
import sys, m3query_ops as m
series = [
    ({"__name__": "up", "job": "a", "zone": "\u00e9t\u00e9"}, [(-5, 1.0), (0, -0.0), (1700000000123, float("inf"))]),
    ({"z": "", "__name__": "x" * 300, "a": "b"}, [(9223372036854775807, 1.5e-300), (-9223372036854775808, float("nan"))]),
    ({"__name__": "empty"}, []),
]
meta = [m.encode_metadata("up", "gauge", "Is it up.", ""), m.encode_metadata("x", "histogram", "h", "seconds")]
sys.stdout.buffer.write(m.encode_write_request(series, meta))
"#,
    );
    let req = prompb::WriteRequest::decode(encoded.as_slice()).expect("prost decodes it");
    assert_eq!(req.timeseries.len(), 3);
    let labels = |i: usize| -> Vec<(String, String)> {
        req.timeseries[i]
            .labels
            .iter()
            .map(|l| {
                (
                    String::from_utf8_lossy(&l.name).into_owned(),
                    String::from_utf8_lossy(&l.value).into_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        labels(0),
        [
            ("__name__".to_string(), "up".to_string()),
            ("job".into(), "a".into()),
            ("zone".into(), "été".into())
        ]
    );
    assert_eq!(
        labels(1),
        [
            ("__name__".to_string(), "x".repeat(300)),
            ("a".into(), "b".into()),
            ("z".into(), String::new())
        ],
        "labels sorted by name"
    );
    let s = &req.timeseries[0].samples;
    assert_eq!(
        s.iter().map(|s| s.timestamp).collect::<Vec<_>>(),
        [-5, 0, 1_700_000_000_123]
    );
    assert_eq!(s[0].value, 1.0);
    assert!(s[1].value == 0.0 && s[1].value.is_sign_negative());
    assert_eq!(s[2].value, f64::INFINITY);
    let s = &req.timeseries[1].samples;
    assert_eq!(s[0].timestamp, i64::MAX);
    assert_eq!(s[0].value, 1.5e-300);
    assert_eq!(s[1].timestamp, i64::MIN);
    assert!(s[1].value.is_nan());
    assert!(req.timeseries[2].samples.is_empty());
    assert_eq!(req.metadata.len(), 2);
    assert_eq!(req.metadata[0].metric_family_name, "up");
    assert_eq!(
        req.metadata[0].r#type,
        prompb::metric_metadata::MetricType::Gauge as i32
    );
    assert_eq!(req.metadata[0].help, "Is it up.");
    assert_eq!(
        req.metadata[1].r#type,
        prompb::metric_metadata::MetricType::Histogram as i32
    );
    assert_eq!(req.metadata[1].unit, "seconds");
}

#[test]
fn healthcheck_script_probes_health() {
    let mut m = M3Query::start("");
    let addr = format!("127.0.0.1:{}", m.port);
    let hc = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(script("healthcheck"));
        c.args(args).env_remove("M3QUERY_HEALTH_ADDR");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("healthcheck")
    };
    assert_eq!(hc(&[&addr], &[]).status.code(), Some(0));
    // The image sets M3QUERY_HEALTH_ADDR; no argument needed.
    assert_eq!(
        hc(&[], &[("M3QUERY_HEALTH_ADDR", &addr)]).status.code(),
        Some(0)
    );
    assert_eq!(hc(&["not-an-address"], &[]).status.code(), Some(2));
    m.stop();
    let out = hc(&[&addr], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("cannot connect to {addr}")),
        "{}",
        stderr(&out)
    );
    // Up but not healthy.
    let sick = FakeServer::start(503, "{}".into());
    let out = hc(&[&format!("127.0.0.1:{}", sick.port)], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("503"), "{}", stderr(&out));
    assert_eq!(sick.only_request().path, "/health");
}

/// The README's Jaeger UI searches are the searches the scripts make: three searches, each
/// for the GET and the POST request spans of query_range (Grafana sends POST).
#[test]
fn readme_searches_are_the_scripts_searches() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let urls: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("http://localhost:16686/search?"))
        .collect();
    assert_eq!(
        urls.len(),
        6,
        "three searches by two methods, one URL per line: {urls:?}"
    );
    let params = |url: &str| -> BTreeMap<String, String> {
        reqwest::Url::parse(url)
            .expect("url")
            .query_pairs()
            .into_owned()
            .filter(|(k, _)| k != "start" && k != "end")
            .collect()
    };
    for (pair, name, args) in [
        (&urls[0..2], "slow-queries", &["--min-duration", "1s"][..]),
        (&urls[2..4], "error-queries", &[][..]),
        (
            &urls[4..6],
            "status-queries",
            &["--code", "500", "--lookback", "24h"][..],
        ),
    ] {
        let want: Vec<BTreeMap<String, String>> = pair.iter().map(|u| params(u)).collect();
        for (w, method) in want.iter().zip(["GET", "POST"]) {
            assert_eq!(w["service"], "m3query", "{pair:?}");
            assert_eq!(
                w["operation"],
                format!("{method} /api/v1/query_range"),
                "{pair:?}"
            );
        }
        // The searches a script makes are the ones it links to in the UI (on stderr).
        let jaeger = FakeServer::start(200, jaeger_fixture());
        let out = run(name, args, &[("JAEGER_URL", &jaeger.url())]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let err = stderr(&out);
        let links = err.split("Jaeger UI: ").nth(1).expect("UI links").trim();
        let got: Vec<BTreeMap<String, String>> = links.split(' ').map(params).collect();
        let sent: Vec<BTreeMap<String, String>> = jaeger
            .requests()
            .into_iter()
            .map(|r| {
                r.params
                    .into_iter()
                    .filter(|(k, _)| k != "start" && k != "end")
                    .collect()
            })
            .collect();
        assert_eq!(got, sent, "{name}: the UI links are the searches made");
        assert_eq!(got, want, "{name} {args:?} vs README {pair:?}");
    }
}

#[test]
fn searching_a_child_operation_reports_that_span() {
    // Jaeger finds traces with a span of the operation anywhere; the line shows that span, and
    // traces without one fall back to the service's earliest (request) span.
    let jaeger = FakeServer::start(200, jaeger_fixture());
    let out = run(
        "slow-queries",
        &["--operation", "storage.select", "--min-duration", "0"],
        &[("JAEGER_URL", &jaeger.url())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        jaeger.only_request().param("operation"),
        Some("storage.select")
    );
    let base = jaeger.url();
    assert_eq!(
        stdout(&out),
        format!(
            "{}\n2019-01-30T19:31:10.200Z  1.000s  storage.select  status=-  step=child  query=-  {base}/trace/{TRACE_B}\n{}\n",
            line_a(&base),
            line_c(&base)
        )
    );
}
