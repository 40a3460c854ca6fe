//! Remote-read stores and secrets, black-box: fake stores on loopback (tiny HTTP servers that
//! answer remote read, fail, or redirect and record what they receive) in front of the real
//! binary, and `check-config` on configs holding secrets.

mod common;
mod trace_sinks;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{M3Query, check_config, client};
use m3query_remote::prompb;
use prost::Message;
use serde_json::Value;

/// One request as a fake store saw it: head (lowercased) and body.
#[derive(Clone, Debug)]
struct Seen {
    head: String,
}

type Answer = Arc<dyn Fn(&[u8]) -> (u16, Vec<(String, String)>, Arc<Vec<u8>>) + Send + Sync>;

/// A minimal HTTP/1.1 server answering every request with `answer(body)`; returns its port
/// and what it received.
fn fake_store(answer: Answer) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let answer = answer.clone();
            let record = record.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                let (head_end, len) = loop {
                    let n = s.read(&mut tmp).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = s.read(&mut tmp).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                record
                    .lock()
                    .expect("lock")
                    .push(Seen { head: head.clone() });
                let (status, headers, body) = answer(&buf[head_end..head_end + len]);
                let mut out = format!("HTTP/1.1 {status} X\r\n");
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str(&format!(
                    "Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                ));
                let _ = s.write_all(out.as_bytes());
                let _ = s.write_all(&body);
            });
        }
    });
    (port, seen)
}

/// A SAMPLES answer holding `series` (label pairs), each with one sample per minute over the
/// last hour.
fn samples_answer(series: Vec<Vec<(&'static str, String)>>) -> Answer {
    Arc::new(move |_req| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        let timeseries = series
            .iter()
            .map(|ls| prompb::TimeSeries {
                labels: ls
                    .iter()
                    .map(|(n, v)| prompb::Label {
                        name: n.as_bytes().to_vec().into(),
                        value: v.as_bytes().to_vec().into(),
                    })
                    .collect(),
                samples: (0..60)
                    .map(|i| prompb::Sample {
                        value: i as f64,
                        timestamp: now - (60 - i) * 60_000,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        let resp = prompb::ReadResponse {
            results: vec![prompb::QueryResult { timeseries }],
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&resp.encode_to_vec())
            .expect("snappy");
        (
            200,
            vec![("Content-Type".into(), "application/x-protobuf".into())],
            Arc::new(body),
        )
    })
}

fn store_config(port: u16, extra: &str) -> String {
    format!(
        "storage:\n  enabled: false\nremoteRead:\n  - url: http://127.0.0.1:{port}/api/v1/read\n    name: fake\n{extra}"
    )
}

fn instant_query(m: &M3Query, q: &str) -> Value {
    let r = client()
        .get(m.url("/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .expect("query");
    serde_json::from_str(&r.text().expect("body")).expect("json")
}

#[test]
fn series_a_store_returns_outside_the_matchers_are_dropped() {
    let (port, _) = fake_store(samples_answer(vec![
        vec![("__name__", "up".into()), ("job", "a".into())],
        // A store that ignores the matchers (or is buggy, or hostile).
        vec![("__name__", "secret_metric".into()), ("job", "b".into())],
        vec![("__name__", "up".into()), ("job", "c".into())],
    ]));
    let dir = tempfile::tempdir().expect("tempdir");
    let m = M3Query::start_config(dir, &store_config(port, ""), &[]);
    let v = instant_query(&m, "up{job!=\"c\"}");
    assert_eq!(v["status"], "success", "{v}");
    let result = v["data"]["result"].as_array().expect("vector");
    assert_eq!(result.len(), 1, "only up{{job=a}} matches: {v}");
    assert_eq!(result[0]["metric"]["job"], "a", "{v}");
}

#[test]
fn response_cap_is_configurable_per_store() {
    let many: Vec<Vec<(&'static str, String)>> = (0..200)
        .map(|i| vec![("__name__", "up".into()), ("i", i.to_string())])
        .collect();
    let (port, _) = fake_store(samples_answer(many));
    let dir = tempfile::tempdir().expect("tempdir");
    let m = M3Query::start_config(
        dir,
        &store_config(port, "    maxResponseBytes: 2KiB\n"),
        &[],
    );
    let v = instant_query(&m, "up");
    let text = v.to_string();
    assert!(
        text.contains("maxResponseBytes") && text.contains("fake"),
        "the store's limit is named: {text}"
    );
    assert!(v["data"]["result"].as_array().is_none_or(|r| r.is_empty()));
}

#[test]
fn a_store_error_body_is_summarised_not_copied() {
    let body = format!(
        "upstream failed\x1b[31m badly {}\nAuthorization: Bearer leaked-token\nmore detail\n",
        "x".repeat(300)
    );
    let (port, _) = fake_store(Arc::new(move |_| {
        (500, vec![], Arc::new(body.clone().into_bytes()))
    }));
    let dir = tempfile::tempdir().expect("tempdir");
    let m = M3Query::start_config(dir, &store_config(port, ""), &[]);
    let v = instant_query(&m, "up");
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("fake") && warnings.contains("500"),
        "store and status are named: {v}"
    );
    assert!(warnings.contains("upstream failed"), "{warnings}");
    for leaked in ["leaked-token", "more detail", "\\u001b", &"x".repeat(150)] {
        assert!(!warnings.contains(leaked), "{leaked:?} in {warnings}");
        assert!(!m.log().contains(leaked), "{leaked:?} in the log");
    }
}

#[test]
fn credentials_do_not_follow_a_redirect_to_another_host() {
    let (target, target_seen) = fake_store(samples_answer(vec![vec![
        ("__name__", "up".into()),
        ("job", "a".into()),
    ]]));
    let location = format!("http://127.0.0.1:{target}/api/v1/read");
    let (port, first_seen) = fake_store(Arc::new(move |_| {
        (
            307,
            vec![("Location".into(), location.clone())],
            Arc::new(vec![]),
        )
    }));
    let dir = tempfile::tempdir().expect("tempdir");
    let m = M3Query::start_config(
        dir,
        &store_config(
            port,
            "    headers: {X-Api-Key: custom-secret}\n    bearerToken: bearer-secret\n",
        ),
        &[],
    );
    let v = instant_query(&m, "up");
    assert!(
        first_seen.lock().expect("lock")[0]
            .head
            .contains("custom-secret"),
        "the store itself gets its headers"
    );
    for s in target_seen.lock().expect("lock").iter() {
        assert!(
            !s.head.contains("custom-secret") && !s.head.contains("bearer-secret"),
            "the redirect target got the store's credentials: {}",
            s.head
        );
    }
    assert!(v["warnings"].to_string().contains("307"), "{v}");
}

#[test]
fn url_passwords_are_masked_in_check_config_logs_and_warnings() {
    let port = common::free_port();
    let yaml = format!(
        "storage: {{enabled: false}}\nremoteRead:\n  - url: http://reader:url-pass-1@127.0.0.1:{port}/api/v1/read\n    timeout: 1s\ntracing:\n  backend: otlp\n  otlp: {{endpoint: \"http://o:url-pass-2@127.0.0.1:4318\", protocol: http/protobuf}}\n"
    );
    let (code, out, err) = check_config(&yaml, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("url-pass"), "{out}");
    assert!(out.contains("reader:xxxxx@127.0.0.1"), "{out}");

    let dir = tempfile::tempdir().expect("tempdir");
    let m = M3Query::start_config(dir, &yaml, &[]);
    let v = instant_query(&m, "up");
    std::thread::sleep(Duration::from_millis(300));
    let text = v.to_string();
    assert!(!text.contains("url-pass"), "{text}");
    let log = m.log();
    assert!(!log.contains("url-pass"), "{log}");
}

/// The `remote.read` span's url tag, as Jaeger receives it, has no password.
#[test]
fn the_remote_read_span_url_has_no_password() {
    let sink = trace_sinks::Sink::jaeger_agent();
    let dead = common::free_port();
    let cfg = format!(
        "tracing:\n  backend: jaeger\n  jaeger:\n    sampler: {{type: const, param: 1}}\n    reporter: {{localAgentHostPort: \"127.0.0.1:{}\", bufferFlushInterval: 100ms}}\nstorage:\n  enabled: false\nremoteRead:\n  - url: http://reader:span-pass@127.0.0.1:{dead}/api/v1/read\n    timeout: 2s\n",
        sink.port
    );
    let m = M3Query::start_config(tempfile::tempdir().expect("tempdir"), &cfg, &[]);
    let v = instant_query(&m, "up");
    assert!(!v.to_string().contains("span-pass"), "{v}");
    let spans = sink.wait_for("the remote.read span", |s| {
        s.iter().any(|x| x["operationName"] == "remote.read")
    });
    let read = spans
        .iter()
        .find(|x| x["operationName"] == "remote.read")
        .expect("remote.read");
    let url = read["tags"]["url"].as_str().unwrap_or("");
    assert!(url.contains("reader:xxxxx@127.0.0.1"), "{read}");
    assert!(!read.to_string().contains("span-pass"), "{read}");
    assert_eq!(read["tags"]["store"], format!("127.0.0.1:{dead}"), "{read}");
}

/// Each config puts a secret from the environment on the line the parser complains about.
#[test]
fn config_errors_do_not_print_secrets() {
    let cases: &[(&str, &str)] = &[
        (
            "remoteRead:\n  - url: http://h:9090/api/v1/read\n    bearerToken: [${SECRET}]\n",
            "bearerToken",
        ),
        (
            "remoteRead:\n  - url: http://h:9090/api/v1/read\n    basicAuth: {username: u, password: ${SECRET}, bogus: 1}\n",
            "password",
        ),
        (
            "tracing:\n  backend: lightstep\n  lightstep:\n    access_token: ${SECRET}\n    collector: {host: h, port: nope}\n",
            "access_token",
        ),
        (
            "tracing:\n  lightstep: {access_token: ${SECRET}, bogus: 1}\n",
            "access_token",
        ),
        (
            "remoteRead:\n  - url: http://h:9090/api/v1/read\n    headers: {Authorization: Bearer ${SECRET}, X-Other: [1]}\n",
            "headers",
        ),
        (
            "tracing:\n  otlp:\n    headers:\n      x-api-key: ${SECRET}\n      other: [1]\n",
            "headers",
        ),
        (
            "remoteRead:\n  - url: http://h:9090/api/v1/read\n    bearerToken: ${SECRET}\n    timeout: [${SECRET}]\n",
            "timeout",
        ),
    ];
    for (yaml, key) in cases {
        let (code, out, err) = check_config(yaml, &[("SECRET", "s3cr3t-value")]);
        assert_eq!(code, 2, "{yaml}: {out}");
        assert!(!err.contains("s3cr3t"), "secret printed for {yaml}:\n{err}");
        assert!(err.contains("line"), "{key}: still says where: {err}");
    }
}

/// Peak RSS of m3query reading a large streamed answer (`M3QUERY_BIN` picks the binary, to
/// compare builds): `cargo test --release --test remote_hardening -- --ignored --nocapture`.
#[test]
#[ignore]
fn peak_rss_reading_a_large_streamed_answer() {
    // One series' chunks, repeated under 1,800 label sets: about 160 MB of frames.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let samples: Vec<m3query_model::Sample> = (0..9_000)
        .map(|i| m3query_model::Sample::new(now - (9_000 - i) * 15_000, (i as f64).sin()))
        .collect();
    let chunks = m3query_remote::read::encode_chunks(&samples, &[]).expect("chunks");
    let mut body = Vec::new();
    for s in 0..1_800 {
        let msg = prompb::ChunkedReadResponse {
            chunked_series: vec![prompb::ChunkedSeries {
                labels: vec![
                    prompb::Label {
                        name: "__name__".as_bytes().to_vec().into(),
                        value: "m".as_bytes().to_vec().into(),
                    },
                    prompb::Label {
                        name: "s".as_bytes().to_vec().into(),
                        value: format!("{s:05}").into_bytes().into(),
                    },
                ],
                chunks: chunks.clone(),
            }],
            query_index: 0,
        };
        body.extend_from_slice(&m3query_remote::read::frame(&msg.encode_to_vec()));
    }
    let mb = body.len() as f64 / 1e6;
    let body = Arc::new(body);
    let (port, _) = fake_store(Arc::new(move |_| {
        (
            200,
            vec![(
                "Content-Type".into(),
                "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse".into(),
            )],
            body.clone(),
        )
    }));
    let bin = std::env::var("M3QUERY_BIN").unwrap_or_else(|_| common::bin().display().to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("c.yml");
    let api = common::free_port();
    std::fs::write(
        &cfg,
        format!("listenAddress: 127.0.0.1:{api}\n{}", store_config(port, "")),
    )
    .expect("config");
    let mut child = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // The series API: the client still reads the whole answer, but the engine holds nothing.
    let url = format!("http://127.0.0.1:{api}/api/v1/series");
    common::eventually(Duration::from_secs(30), || {
        client()
            .get(format!("http://127.0.0.1:{api}/ready"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
    })
    .expect("ready");
    let queries: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs();
                // M3QUERY_RSS_QUERY: a PromQL query instead (its samples are kept and
                // evaluated, so the engine's share shows too).
                let r = match std::env::var("M3QUERY_RSS_QUERY") {
                    Ok(q) => client()
                        .get(url.replace("/series", "/query"))
                        .query(&[("query", q)])
                        .send(),
                    Err(_) => client()
                        .get(&url)
                        .query(&[
                            ("match[]", "m".to_string()),
                            ("start", (now - 2 * 86_400).to_string()),
                            ("end", now.to_string()),
                        ])
                        .send(),
                }
                .expect("query");
                r.text().expect("body")
            })
        })
        .collect();
    for q in queries {
        let v = q.join().expect("query thread");
        assert!(
            v.contains("01799") || v.contains("\"1800\""),
            "{}",
            &v[..v.len().min(300)]
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_string();
    let _ = child.kill();
    let _ = child.wait();
    println!("{bin}: answer {mb:.0} MB, 4 concurrent queries: {hwm}");
}
