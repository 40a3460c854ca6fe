//! The built-in query page (issue 15), black-box: the real binary on a free port.
//!
//! - The embedded bundle is what its sources build to (`node ui/build.mjs` into a temporary
//!   directory, byte-compared with `crates/server/ui/`).
//! - Headless Chromium drives the page (`ui/e2e/ui.mjs`, playwright-core with Debian's
//!   chromium): completion from our API, graph, table, phase bar, trace link, status pages.
//! - `Server-Timing` carries the query's phases and each remote store's reads.
//! - The slow-query record serves queries with their trace ids, failed ones included.
//!
//! Node.js, npm packages (`npm ci` in ui/) and Chromium come from `scripts/test-deps`; without
//! them the tests fail saying so.

mod common;
mod trace_sinks;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{M3Query, client, remote_write_v1};
use serde_json::Value;
use trace_sinks::Sink;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `node`, or a failure that says how to get it.
fn node() -> PathBuf {
    let version = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(version) = version else {
        panic!(
            "these tests need Node.js 20 or newer (`node` on PATH) for the query page's build and browser test: run scripts/test-deps"
        );
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "Node.js {version} is too old for ui/'s packages (playwright-core needs 20 or newer)"
    );
    let modules = repo().join("ui/node_modules");
    assert!(
        modules.join("esbuild").is_dir() && modules.join("playwright-core").is_dir(),
        "{} lacks the page's npm packages: run `npm ci` in ui/ (scripts/test-deps does)",
        modules.display()
    );
    PathBuf::from("node")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Every file under `dir`, relative path -> bytes.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&p).expect("read file"));
            }
        }
    }
    out
}

/// The committed bundle is exactly what `ui/`'s sources build to with the locked packages.
#[test]
fn embedded_bundle_matches_its_sources() {
    let node = node();
    let out = tempfile::tempdir().expect("tempdir");
    let r = Command::new(node)
        .arg("build.mjs")
        .arg(out.path())
        .current_dir(repo().join("ui"))
        .output()
        .expect("run node build.mjs");
    assert!(
        r.status.success(),
        "ui/build.mjs failed: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    let built = files(out.path());
    let committed = files(&repo().join("crates/server/ui"));
    let names =
        |m: &std::collections::BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&built),
        names(&committed),
        "crates/server/ui/ is stale: run `npm run build` in ui/ and commit the result"
    );
    for (name, bytes) in &built {
        assert!(
            committed.get(name) == Some(bytes),
            "crates/server/ui/{name} differs from what ui/ builds: run `npm run build` in ui/ and commit the result"
        );
    }
}

/// Three series of one metric over the last 30 minutes, one point a minute.
fn load_demo(m: &M3Query, metric: &str) {
    let now = now_ms();
    let series: Vec<common::TestSeries<'_>> = ["api", "db", "cache"]
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let samples = (0..30)
                .map(|k| {
                    let t = now - (30 - k) * 60_000;
                    (t, (k * (i as i64 + 1)) as f64 + 10.0 * i as f64)
                })
                .collect();
            (vec![("__name__", metric), ("job", job)], samples)
        })
        .collect();
    let (status, body) = remote_write_v1(&m.url("/api/v1/write"), &series);
    assert!(
        (200..300).contains(&status),
        "remote write: {status} {body}"
    );
}

fn jaeger_config(agent_port: u16) -> String {
    format!(
        "tracing:\n  backend: jaeger\n  jaeger:\n    sampler: {{type: const, param: 1}}\n    reporter: {{localAgentHostPort: \"127.0.0.1:{agent_port}\", bufferFlushInterval: 100ms}}\n"
    )
}

/// The acceptance test of issue 15: the real page in headless Chromium.
#[test]
fn query_page_in_headless_chromium() {
    let node = node();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "this test needs Chromium at {chromium}: install Debian's chromium (scripts/test-deps does) or set CHROMIUM"
    );
    let sink = Sink::jaeger_agent();
    let jaeger = "http://jaeger.test:16686";
    let m = M3Query::start(&format!(
        "{}ui:\n  jaegerURL: {jaeger}/\n",
        jaeger_config(sink.port)
    ));
    let metric = "ui_demo_requests_total";
    load_demo(&m, metric);
    let mut cmd = Command::new(node);
    cmd.arg("e2e/ui.mjs")
        .args(["--url", &m.url(""), "--metric", metric, "--jaeger", jaeger])
        .arg("--chromium")
        .arg(&chromium)
        .current_dir(repo().join("ui"));
    // `M3QUERY_UI_SCREENSHOT=docs/ui.png cargo test --release --test ui` refreshes the
    // README's screenshot (a path relative to the repository root).
    if let Ok(shot) = std::env::var("M3QUERY_UI_SCREENSHOT") {
        cmd.arg("--screenshot").arg(repo().join(shot));
    }
    let out = cmd.output().expect("run node e2e/ui.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the page failed in Chromium: {stderr}\nreport: {stdout}\nserver log:\n{}",
        m.log()
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("the script's JSON report");
    assert_eq!(report["ok"], true, "{report}");
    let trace_id = report["traceId"].as_str().expect("traceId").to_string();
    assert_eq!(
        report["traceLink"].as_str(),
        Some(format!("{jaeger}/trace/{trace_id}").as_str()),
        "{report}"
    );
    assert!(
        report["paintedPixels"].as_u64().unwrap_or(0) > 200,
        "{report}"
    );
    assert_eq!(report["tableRows"].as_u64(), Some(3), "{report}");
    // The linked trace exists: the query's spans reached the Jaeger agent under that id.
    let want = u128::from_str_radix(&trace_id, 16).expect("hex trace id");
    sink.wait_for("the query's trace", |spans| {
        spans.iter().any(|s| {
            s["traceId"]
                .as_str()
                .and_then(|t| u128::from_str_radix(t, 16).ok())
                == Some(want)
        })
    });
}

fn get_json(url: &str) -> (u16, Value) {
    let r = client().get(url).send().expect("request");
    let s = r.status().as_u16();
    (s, r.json().unwrap_or(Value::Null))
}

/// Parses `Server-Timing` into (name, desc, dur).
fn timings(h: &str) -> Vec<(String, Option<String>, f64)> {
    h.split(", ")
        .map(|m| {
            let mut parts = m.split(';');
            let name = parts.next().unwrap_or("").to_string();
            let mut desc = None;
            let mut dur = -1.0;
            for p in parts {
                if let Some(d) = p.strip_prefix("dur=") {
                    dur = d.parse().expect("dur is a number");
                } else if let Some(d) = p.strip_prefix("desc=") {
                    desc = Some(d.trim_matches('"').to_string());
                }
            }
            (name, desc, dur)
        })
        .collect()
}

/// Queries answer `Server-Timing` with the engine's phases, encode and total, and one
/// `remote` entry per store read; failed queries answer none.
#[test]
fn server_timing_names_the_phases_and_each_remote_store() {
    let store = M3Query::start("");
    load_demo(&store, "st_demo");
    let m = M3Query::start_config(
        tempfile::tempdir().expect("tempdir"),
        &format!(
            "storage:\n  enabled: false\nremoteRead:\n  - name: store-a\n    url: {}\n",
            store.url("/api/v1/read")
        ),
        &[],
    );
    let end = now_ms() / 1000;
    let r = client()
        .get(m.url(&format!(
            "/api/v1/query_range?query=sum(st_demo)&start={}&end={end}&step=60",
            end - 1800
        )))
        .send()
        .expect("query");
    assert_eq!(r.status().as_u16(), 200);
    let h = r
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .expect("Server-Timing")
        .to_string();
    let t = timings(&h);
    let names: Vec<&str> = t.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["parse", "select", "eval", "remote", "encode", "total"],
        "{h}"
    );
    let remote = t.iter().find(|(n, _, _)| n == "remote").expect("remote");
    assert_eq!(remote.1.as_deref(), Some("store-a"), "{h}");
    assert!(t.iter().all(|(_, _, d)| *d >= 0.0), "{h}");
    let dur = |n: &str| {
        t.iter()
            .find(|(x, _, _)| x == n)
            .map(|x| x.2)
            .unwrap_or(-1.0)
    };
    // The remote read happens inside select; select and the rest inside total.
    assert!(remote.2 <= dur("select") + 0.001, "{h}");
    assert!(
        dur("parse") + dur("select") + dur("eval") + dur("encode") <= dur("total") + 0.01,
        "{h}"
    );
    // The local store alone: no remote entries.
    let r = client()
        .get(store.url("/api/v1/query?query=st_demo"))
        .send()
        .expect("query");
    let h = r
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        h.starts_with("parse;dur=") && !h.contains("remote") && h.contains("total;dur="),
        "{h}"
    );
    // A failed query has no phases to report.
    let r = client()
        .get(store.url("/api/v1/query?query=sum("))
        .send()
        .expect("query");
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.headers().get("server-timing").is_none());
}

/// The slow-query record: slowest first, with parameters, status and trace id, failed
/// queries included, and nothing of the request's headers.
#[test]
fn slow_queries_are_recorded_with_their_trace_ids() {
    let sink = Sink::jaeger_agent();
    let m = M3Query::start(&jaeger_config(sink.port));
    load_demo(&m, "sq_demo");
    let (s, v) = get_json(&m.url("/api/v1/status/slow_queries"));
    assert_eq!((s, &v["data"]), (200, &serde_json::json!([])), "{v}");

    let end = now_ms() / 1000;
    let r = client()
        .post(m.url("/api/v1/query_range"))
        .header("Authorization", "Bearer sekrit-token")
        .form(&[
            ("query", "sum by (job) (sq_demo)"),
            ("start", &(end - 600).to_string()),
            ("end", &end.to_string()),
            ("step", "30"),
        ])
        .send()
        .expect("range query");
    assert_eq!(r.status().as_u16(), 200);
    let range_trace = r
        .headers()
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .expect("X-Trace-Id")
        .to_string();
    let r = client()
        .get(m.url("/api/v1/query?query=sq_demo&time=1000"))
        .send()
        .expect("instant query");
    assert_eq!(r.status().as_u16(), 200);
    let r = client()
        .get(m.url("/api/v1/query?query=rate(sq_demo)"))
        .send()
        .expect("failing query");
    assert_eq!(r.status().as_u16(), 400);
    // Not queries: not recorded.
    let _ = client().get(m.url("/api/v1/series?match[]=sq_demo")).send();

    let list = common::eventually(Duration::from_secs(5), || {
        let (_, v) = get_json(&m.url("/api/v1/status/slow_queries"));
        let a = v["data"].as_array()?.clone();
        (a.len() == 3).then_some(a)
    })
    .expect("three queries recorded");
    let durations: Vec<f64> = list
        .iter()
        .map(|q| q["durationSeconds"].as_f64().expect("duration"))
        .collect();
    assert!(
        durations.windows(2).all(|w| w[0] >= w[1]),
        "slowest first: {durations:?}"
    );
    let find = |query: &str| {
        list.iter()
            .find(|q| q["query"] == query)
            .unwrap_or_else(|| panic!("{query} recorded: {list:?}"))
    };
    let range = find("sum by (job) (sq_demo)");
    assert_eq!(range["type"], "range");
    assert_eq!(range["status"], 200);
    assert_eq!(range["step"], 30.0);
    assert_eq!(range["end"], end as f64);
    assert_eq!(range["traceId"], range_trace.as_str());
    assert_eq!(range["series"], 3);
    let instant = find("sq_demo");
    assert_eq!(
        (&instant["type"], &instant["time"]),
        (&"instant".into(), &1000.0.into())
    );
    let failed = find("rate(sq_demo)");
    assert_eq!(failed["status"], 400);
    assert!(failed["traceId"].is_string(), "{failed}");
    let text = serde_json::to_string(&list).expect("json");
    assert!(
        !text.contains("sekrit") && !text.contains("Bearer"),
        "{text}"
    );
}

/// The page and its assets: content types, cache headers, the single-page routes, and the
/// settings the server puts into the page.
#[test]
fn page_assets_and_routes_are_served() {
    let m = M3Query::start("ui:\n  jaegerURL: \"/jaeger/</script><x>\"\n");
    let r = client().get(m.url("/")).send().expect("GET /");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-cache")
    );
    let html = r.text().expect("html");
    // The setting is there, and cannot close its script element.
    assert!(
        html.contains(r#""jaegerURL":"/jaeger/\u003c/script>\u003cx>""#),
        "{html}"
    );
    let assets: Vec<String> = html
        .split("/assets/")
        .skip(1)
        .map(|p| p.split('"').next().unwrap_or("").to_string())
        .collect();
    assert!(assets.iter().any(|a| a.ends_with(".js")), "{assets:?}");
    assert!(assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
    for a in &assets {
        let r = client()
            .get(m.url(&format!("/assets/{a}")))
            .send()
            .expect("asset");
        assert_eq!(r.status().as_u16(), 200, "{a}");
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let want = if a.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(ct.starts_with(want), "{a}: {ct}");
        assert_eq!(
            r.headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok()),
            Some("public, max-age=31536000, immutable")
        );
        assert!(!r.bytes().expect("body").is_empty());
    }
    for route in ["/graph?expr=up", "/status", "/config", "/tsdb", "/slow"] {
        let r = client().get(m.url(route)).send().expect("page route");
        assert_eq!(r.status().as_u16(), 200, "{route}");
        assert!(
            r.text()
                .unwrap_or_default()
                .contains("<title>m3query</title>")
        );
    }
    let (s, v) = get_json(&m.url("/assets/nope.js"));
    assert_eq!((s, v["errorType"].as_str()), (404, Some("not_found")));
}

/// A query the head sampler passed over but tail capture exported still names its trace:
/// the response's `X-Trace-Id` (which the page links) and the slow-query record agree, and
/// the trace reached Jaeger.
#[test]
fn tail_captured_queries_name_their_trace() {
    let sink = Sink::jaeger_agent();
    let m = M3Query::start(&format!(
        "tracing:\n  backend: jaeger\n  tailCapture:\n    threshold: 0s\n    maxPerSecond: 1000\n  jaeger:\n    sampler: {{type: probabilistic, param: 0}}\n    reporter: {{localAgentHostPort: \"127.0.0.1:{}\", bufferFlushInterval: 100ms}}\n",
        sink.port
    ));
    load_demo(&m, "tail_demo");
    let r = client()
        .get(m.url("/api/v1/query?query=sum(tail_demo)&stats=all"))
        .send()
        .expect("query");
    assert_eq!(r.status().as_u16(), 200);
    let id = r
        .headers()
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .expect("a tail-captured query answers X-Trace-Id")
        .to_string();
    assert!(r.headers().get("server-timing").is_some());
    let list = common::eventually(Duration::from_secs(5), || {
        let (_, v) = get_json(&m.url("/api/v1/status/slow_queries"));
        v["data"]
            .as_array()?
            .iter()
            .find(|q| q["query"] == "sum(tail_demo)")
            .cloned()
    })
    .expect("recorded");
    assert_eq!(list["traceId"], id.as_str());
    let want = u128::from_str_radix(&id, 16).expect("hex trace id");
    let spans = sink.wait_for("the tail-captured trace", |spans| {
        spans.iter().any(|s| {
            s["traceId"]
                .as_str()
                .and_then(|t| u128::from_str_radix(t, 16).ok())
                == Some(want)
        })
    });
    assert!(
        spans.iter().any(|s| s["tags"]["sampler.type"] == "tail"),
        "the trace is marked sampler.type=tail: {spans:?}"
    );
}
