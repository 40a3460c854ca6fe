//! What tracing costs a request as a client sees it: four real `m3query` processes on
//! loopback — tracing off, Jaeger with every request unsampled (`const` 0) without and with
//! tail capture (`tracing.tailCapture`), Jaeger with every request sampled (`const` 1, exported over UDP to a socket a thread drains) — answering the
//! same requests over keep-alive HTTP/1.1.
//!
//!     cargo bench --bench tracing_http
//!
//! `crates/server/benches/tracing_overhead.rs` measures the same in-process, where nothing
//! but the handler dilutes the cost (the worst case); this one measures what the goal
//! is about, request latency, with the binary, its global subscriber, hyper and the kernel's
//! loopback in the path. The client is a few lines over `TcpStream` so that its own cost stays
//! small next to the server's. The set-ups run interleaved, round after round (rotating which
//! goes first), so drift in machine load hits them all alike. Reported per set-up: the median
//! of the per-round mean latency, and the server's CPU time per request (from
//! `/proc/PID/stat`), each with its ratio against tracing off. `M3Q_BENCH_ROUNDS` (default 20)
//! and `M3Q_BENCH_REQUESTS` (per round and set-up, default 5000) tune it.
//!
//! Goals: unsampled <= 1.01x off (issue 6), tail capture included (issue 14); sampled <=
//! 1.03x off.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../crates/server/benches/rounds/mod.rs"]
mod rounds;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Instant;

use common::M3Query;

/// CPU time of process `pid` so far, in seconds: the sum of its threads' run time from
/// `/proc/PID/task/*/schedstat` (nanoseconds, where `/proc/PID/stat` counts 10 ms ticks).
/// Threads that ended since the last call drop out of the sum, so the server's thread pools
/// must be long-lived for the difference to mean anything (tokio's and rayon's are).
fn process_cpu(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    let mut ns = 0u64;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat"))
            && let Some(run) = s.split(' ').next().and_then(|v| v.parse::<u64>().ok())
        {
            ns += run;
        }
    }
    ns as f64 / 1e9
}

/// A keep-alive HTTP/1.1 connection that sends GETs and reads whole responses.
struct Conn {
    r: BufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Conn {
    fn new(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Conn {
            r: BufReader::new(s),
            line: String::new(),
            body: Vec::new(),
        }
    }

    /// Sends `GET path` and reads the response; returns its status.
    fn get(&mut self, request: &[u8]) -> u16 {
        self.r.get_mut().write_all(request).expect("send");
        self.line.clear();
        self.r.read_line(&mut self.line).expect("status line");
        let status: u16 = self.line[9..12].parse().expect("status code");
        let (mut length, mut chunked) = (0usize, false);
        loop {
            self.line.clear();
            self.r.read_line(&mut self.line).expect("header");
            let h = self.line.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').expect("header line");
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("content-length");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim().eq_ignore_ascii_case("chunked");
            }
        }
        if chunked {
            loop {
                self.line.clear();
                self.r.read_line(&mut self.line).expect("chunk size");
                let size = usize::from_str_radix(self.line.trim_end(), 16).expect("chunk size");
                self.body.resize(size + 2, 0);
                self.r.read_exact(&mut self.body).expect("chunk");
                if size == 0 {
                    break;
                }
            }
        } else {
            self.body.resize(length, 0);
            self.r.read_exact(&mut self.body).expect("body");
        }
        status
    }
}

fn main() {
    // `cargo test --benches` runs benchmarks without `--bench`: nothing to check then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = rounds::env("M3Q_BENCH_ROUNDS", 20);
    let n = rounds::env("M3Q_BENCH_REQUESTS", 5000);

    let agent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let agent_addr = agent.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while agent.recv(&mut buf).is_ok() {}
    });
    let jaeger = |param: u8, tail: bool| {
        format!(
            "tracing:\n  backend: jaeger\n  tailCapture:\n    enabled: {tail}\n  jaeger:\n    \
             sampler:\n      type: const\n      param: {param}\n    reporter:\n      \
             localAgentHostPort: {agent_addr}\n      queueSize: 2000\n"
        )
    };
    let setups = [
        ("tracing off", String::new()),
        ("unsampled, no tail capture", jaeger(0, false)),
        ("unsampled, tail capture", jaeger(0, true)),
        ("on, sampled", jaeger(1, true)),
    ];
    let servers: Vec<M3Query> = setups.iter().map(|(_, c)| M3Query::start(c)).collect();

    // 200 counters over 1h at 15s, in 4 jobs, in every server.
    let names: Vec<(String, String)> = (0..200)
        .map(|i| (format!("job-{}", i % 4), format!("host-{i}")))
        .collect();
    let series: Vec<common::TestSeries<'_>> = names
        .iter()
        .zip(1..)
        .map(|((job, instance), k): (&(String, String), i64)| {
            let labels = vec![
                ("__name__", "http_requests_total"),
                ("job", job.as_str()),
                ("instance", instance.as_str()),
            ];
            let samples = (0..240).map(|t| (t * 15_000, (t * k) as f64)).collect();
            (labels, samples)
        })
        .collect();
    for s in &servers {
        let (status, body) = common::remote_write_v1(&s.url("/api/v1/write"), &series);
        assert_eq!(status, 204, "remote write: {body}");
    }

    for (path, n) in [
        ("/api/v1/status/buildinfo", n),
        (
            "/api/v1/query?query=sum%20by%20(job)%20(rate(http_requests_total%5B5m%5D))&time=3600",
            (n / 10).max(20),
        ),
        // A dashboard panel: the same over the hour at 15s.
        (
            "/api/v1/query_range?query=sum%20by%20(job)%20(rate(http_requests_total%5B5m%5D))&start=0&end=3600&step=15",
            (n / 20).max(20),
        ),
    ] {
        measure(&setups, &servers, path, rounds, n);
    }
    let client = common::client();
    for ((name, _), s) in setups.iter().zip(&servers) {
        let text = client
            .get(s.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("m3query_tracing_spans") && !l.ends_with(" 0"))
            .collect();
        if !lines.is_empty() {
            println!("{name}: {}", lines.join(", "));
        }
    }
}

fn measure(setups: &[(&str, String)], servers: &[M3Query], path: &str, rounds: usize, n: usize) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes();
    let mut conns: Vec<Conn> = servers.iter().map(|s| Conn::new(s.port)).collect();
    let names: Vec<&str> = setups.iter().map(|(name, _)| *name).collect();
    let title =
        format!("{rounds} rounds x {n} requests per set-up, GET {path} over loopback HTTP/1.1");
    rounds::run_and_report(&title, &names, "server cpu us", rounds, |i| {
        let pid = servers[i].child.id();
        let (t0, c0) = (Instant::now(), process_cpu(pid));
        for _ in 0..n {
            let status = conns[i].get(&request);
            assert_eq!(status, 200, "{path}");
        }
        (
            t0.elapsed().as_secs_f64() * 1e6 / n as f64,
            (process_cpu(pid) - c0) * 1e6 / n as f64,
        )
    });
}
