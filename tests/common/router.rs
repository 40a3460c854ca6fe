//! A remote-write router for scale-out tests and benchmarks: splits `gen_load.py`'s data by
//! job across stores, copies one slice to an HA pair (with a `replica` label and a hole in
//! replica a), and sends everything to one more store.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use m3query_remote::prompb;
use prost::Message;

use super::{Prometheus, client};

const PROM_CONFIG: &str = r#"
global:
  scrape_interval: 15s
storage:
  tsdb:
    out_of_order_time_window: 30d
"#;

pub fn receiver() -> Prometheus {
    Prometheus::start(
        PROM_CONFIG,
        &[
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.retention.time=30d",
        ],
    )
}

/// Where the router sends each series.
pub struct Targets {
    pub by_job: Vec<(&'static str, String)>,
    pub pair: (String, String),
    pub all: String,
    /// Replica a drops samples in [gap.0, gap.1).
    pub gap: (i64, i64),
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
    static CLIENT: std::sync::OnceLock<reqwest::blocking::Client> = std::sync::OnceLock::new();
    let r = CLIENT
        .get_or_init(client)
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
pub fn serve_router(targets: Targets) -> u16 {
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
