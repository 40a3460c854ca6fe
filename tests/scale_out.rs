//! Scale-out through remote read, against real Prometheus servers (Debian's 2.42).
//!
//! `../shared/bench/gen_load.py` data is split by job across three stores by a small router
//! in this test: `api` to store 1, `node` to store 2, and `web`/`worker` to an HA pair that
//! carries `replica="a"`/`replica="b"` (replica a misses ten minutes, as if it had been down).
//! A fifth Prometheus gets everything, unsplit. m3query, with no local storage, reads the four
//! stores and deduplicates the pair; its answers must equal the fifth Prometheus's. Then one
//! store is killed and the query still answers, with a warning naming it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::{M3Query, Prometheus, client, eventually};
use m3query_remote::prompb;
use prost::Message;
use serde_json::Value;

const PROM_CONFIG: &str = r#"
global:
  scrape_interval: 15s
storage:
  tsdb:
    out_of_order_time_window: 30d
"#;

fn receiver() -> Prometheus {
    Prometheus::start(
        PROM_CONFIG,
        &[
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.retention.time=30d",
        ],
    )
}

/// Where the router sends each series.
struct Targets {
    by_job: Vec<(&'static str, String)>,
    pair: (String, String),
    all: String,
    /// Replica a drops samples in [gap.0, gap.1).
    gap: (i64, i64),
}

fn job_of(ts: &prompb::TimeSeries) -> String {
    ts.labels
        .iter()
        .find(|l| &l.name[..] == b"job")
        .map(|l| String::from_utf8_lossy(&l.value).into_owned())
        .unwrap_or_default()
}

fn with_replica(ts: &prompb::TimeSeries, replica: &str) -> prompb::TimeSeries {
    let mut t = ts.clone();
    t.labels.push(prompb::Label {
        name: b"replica".to_vec().into(),
        value: replica.as_bytes().to_vec().into(),
    });
    t.labels.sort_by(|a, b| a.name.cmp(&b.name));
    t
}

fn forward(url: &str, series: Vec<prompb::TimeSeries>) -> Result<(), String> {
    if series.is_empty() {
        return Ok(());
    }
    let req = prompb::WriteRequest {
        timeseries: series,
        metadata: vec![],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .map_err(|e| e.to_string())?;
    let r = client()
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!(
            "{url}: {} {}",
            r.status(),
            r.text().unwrap_or_default()
        ));
    }
    Ok(())
}

fn route(t: &Targets, body: &[u8]) -> Result<(), String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| e.to_string())?;
    let req = prompb::WriteRequest::decode(raw.as_slice()).map_err(|e| e.to_string())?;
    forward(&t.all, req.timeseries.clone())?;
    for (job, url) in &t.by_job {
        forward(
            url,
            req.timeseries
                .iter()
                .filter(|ts| job_of(ts) == *job)
                .cloned()
                .collect(),
        )?;
    }
    let paired: Vec<&prompb::TimeSeries> = req
        .timeseries
        .iter()
        .filter(|ts| matches!(job_of(ts).as_str(), "web" | "worker"))
        .collect();
    let a = paired
        .iter()
        .map(|ts| {
            let mut t2 = with_replica(ts, "a");
            t2.samples
                .retain(|s| s.timestamp < t.gap.0 || s.timestamp >= t.gap.1);
            t2
        })
        .filter(|ts| !ts.samples.is_empty())
        .collect();
    forward(&t.pair.0, a)?;
    forward(
        &t.pair.1,
        paired.iter().map(|ts| with_replica(ts, "b")).collect(),
    )?;
    Ok(())
}

/// A minimal HTTP/1.1 server (keep-alive) that routes remote-write bodies.
fn serve_router(targets: Targets) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind router");
    let port = l.local_addr().expect("addr").port();
    let targets = Arc::new(targets);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { return };
            let t = targets.clone();
            std::thread::spawn(move || handle(conn, &t));
        }
    });
    port
}

fn handle(conn: TcpStream, t: &Targets) {
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        // Request line and headers.
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let resp = match route(t, &body) {
            Ok(()) => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
            Err(e) => format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n{e}",
                e.len()
            ),
        };
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn query(base: &str, q: &str, end: f64, range: bool) -> Value {
    let c = client();
    let r = if range {
        c.get(format!("{base}/api/v1/query_range"))
            .query(&[
                ("query", q),
                ("start", &format!("{}", end - 3600.0)),
                ("end", &format!("{end}")),
                ("step", "60"),
            ])
            .send()
    } else {
        c.get(format!("{base}/api/v1/query"))
            .query(&[("query", q), ("time", &format!("{end}"))])
            .send()
    };
    r.expect("query").json().expect("json")
}

/// Result series as sorted (labels, points) with values parsed, for comparison.
fn normalise(v: &Value) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = v["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let points = if let Some(vals) = s["values"].as_array() {
                        vals.iter().map(point).collect()
                    } else {
                        vec![point(&s["value"])]
                    };
                    (s["metric"].to_string(), points)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn point(p: &Value) -> (f64, f64) {
    (
        p[0].as_f64().unwrap_or(f64::NAN),
        p[1].as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN),
    )
}

fn assert_same(q: &str, ours: &Value, theirs: &Value, end: f64) {
    assert_eq!(ours["status"], "success", "{q}: {ours}");
    let (a, b) = (normalise(ours), normalise(theirs));
    assert_eq!(
        a.iter().map(|s| &s.0).collect::<Vec<_>>(),
        b.iter().map(|s| &s.0).collect::<Vec<_>>(),
        "{q}: label sets differ"
    );
    for ((la, pa), (_, pb)) in a.iter().zip(&b) {
        assert_eq!(pa.len(), pb.len(), "{q} {la}: point counts differ");
        for (x, y) in pa.iter().zip(pb) {
            assert_eq!(x.0, y.0, "{q} {la}: timestamps differ");
            let close = (x.1 - y.1).abs() <= 1e-9 * x.1.abs().max(y.1.abs()).max(1.0)
                || (x.1.is_nan() && y.1.is_nan());
            assert!(
                close,
                "{q} {la} at {} (end{:+}): {} vs {}",
                x.0,
                x.0 - end,
                x.1,
                y.1
            );
        }
    }
}

#[test]
fn fan_out_equals_one_prometheus_and_survives_a_dead_store() {
    let shared = common::shared_dir();
    let stores: Vec<Prometheus> = (0..4).map(|_| receiver()).collect();
    let all = receiver();
    let end_s = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        now - now % 60
    };
    let end_ms = (end_s * 1000) as i64;
    let write = |p: &Prometheus| p.url("/api/v1/write");
    let port = serve_router(Targets {
        by_job: vec![("api", write(&stores[0])), ("node", write(&stores[1]))],
        pair: (write(&stores[2]), write(&stores[3])),
        all: write(&all),
        gap: (end_ms - 40 * 60_000, end_ms - 30 * 60_000),
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new("python3")
        .arg(shared.join("bench/gen_load.py"))
        .args(["--instances", "16", "--duration", "2h", "--jobs", "4"])
        // No restarts: a counter that starts inside a rate window extrapolates differently in
        // Prometheus 2.42 (the reference here) and 3.x (m3query); the bench notes cover that.
        .args(["--restart-prob", "0"])
        .args(["--end", &end_s.to_string(), "--workers", "2"])
        .arg("--meta")
        .arg(dir.path().join("dataset.json"))
        .arg("--url")
        .arg(format!("http://127.0.0.1:{port}/api/v1/write"))
        .output()
        .expect("run gen_load.py (python3 with ../shared/bench/requirements.txt)");
    assert!(
        out.status.success(),
        "gen_load.py failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let remote = |name: &str, p: &Prometheus, extra: &str| {
        format!(
            "  - name: {name}\n    url: {}\n    timeout: 10s\n{extra}",
            p.url("/api/v1/read")
        )
    };
    let cfg = format!(
        "storage:\n  enabled: false\nremoteRead:\n{}{}{}{}",
        remote("store-api", &stores[0], ""),
        remote("store-node", &stores[1], "    preferStreamed: false\n"),
        remote("pair-a", &stores[2], "    dedupLabels: [replica]\n"),
        remote("pair-b", &stores[3], "    dedupLabels: [replica]\n"),
    );
    let m = M3Query::start_config(tempfile::tempdir().expect("tempdir"), &cfg, &[]);
    let end = end_s as f64 - 1.0;
    let queries = [
        ("up", false),
        ("sum by (job) (rate(http_requests_total[5m]))", true),
        ("count by (job) (node_cpu_seconds_total)", false),
        (
            "histogram_quantile(0.9, sum by (job, le) (rate(http_request_duration_seconds_bucket[5m])))",
            true,
        ),
        ("max by (job) (process_resident_memory_bytes)", true),
        (
            "sum(increase(http_requests_total{job=~\"web|worker\"}[10m]))",
            true,
        ),
    ];
    for (q, range) in queries {
        let ours = query(&m.url(""), q, end, range);
        let theirs = query(&all.url(""), q, end, range);
        assert_same(q, &ours, &theirs, end);
        assert!(ours.get("warnings").is_none(), "{q}: {ours}");
    }
    // Metadata APIs fan out too, and the replica label is gone.
    let names: Value = client()
        .get(m.url("/api/v1/labels"))
        .send()
        .expect("labels")
        .json()
        .expect("json");
    let names = names["data"].as_array().expect("names");
    assert!(names.iter().any(|n| n == "job"));
    assert!(!names.iter().any(|n| n == "replica"), "{names:?}");
    let jobs: Value = client()
        .get(m.url("/api/v1/label/job/values"))
        .send()
        .expect("values")
        .json()
        .expect("json");
    assert_eq!(
        jobs["data"],
        serde_json::json!(["api", "node", "web", "worker"])
    );

    // Kill the api store: a partial response with a warning, not an error.
    let mut dead = stores.into_iter();
    let api_store = dead.next().expect("store");
    drop(api_store);
    let v = eventually(Duration::from_secs(10), || {
        let v = query(
            &m.url(""),
            "sum by (job) (rate(http_requests_total[5m]))",
            end,
            false,
        );
        v.get("warnings").is_some().then_some(v)
    })
    .expect("a warning once the store is down");
    assert_eq!(v["status"], "success");
    let warnings = v["warnings"].to_string();
    assert!(warnings.contains("store-api"), "{warnings}");
    let jobs: Vec<&str> = v["data"]["result"]
        .as_array()
        .expect("result")
        .iter()
        .filter_map(|r| r["metric"]["job"].as_str())
        .collect();
    assert_eq!(jobs, vec!["node", "web", "worker"]);
}
