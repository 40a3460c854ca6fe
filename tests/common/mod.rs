//! Starts the real `m3query` binary on a free loopback port, as a user would run it.
#![allow(dead_code)]

pub mod hist;
pub mod router;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_m3query"))
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `../shared`, found from the repository root.
pub fn shared_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared");
    assert!(
        shared.is_dir(),
        "these tests need ../shared beside the repository root ({}); check it out there",
        shared.display()
    );
    shared
}

/// The Python that has the receivers' packages: `.venv-test/bin/python3` when
/// `scripts/test-deps` made it, else `python3` from PATH (which scripts/test points at the
/// venv anyway), so `cargo test --test NAME` alone finds them too.
pub fn python3() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python3");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

pub struct M3Query {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl M3Query {
    /// Starts m3query with `extra` YAML appended to a config that sets the listen address
    /// and a fresh data directory; waits until `/ready` answers 200.
    pub fn start(extra: &str) -> M3Query {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra, &[])
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &str, env: &[(&str, &str)]) -> M3Query {
        let data = dir.path().join("data");
        let body = format!("storage:\n  path: {}\n{extra}", data.display());
        Self::start_config(dir, &body, env)
    }

    /// Starts m3query with `body` as the whole config after `listenAddress`.
    pub fn start_config(dir: tempfile::TempDir, body: &str, env: &[(&str, &str)]) -> M3Query {
        let port = free_port();
        let config_path = dir.path().join("m3query.yml");
        let mut f = std::fs::File::create(&config_path).expect("config file");
        write!(f, "listenAddress: 127.0.0.1:{port}\n{body}").expect("write config");
        drop(f);
        let log_path = dir.path().join("m3query.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn m3query");
        let mut m = M3Query {
            child,
            port,
            dir,
            config_path,
            log_path,
        };
        m.wait_ready();
        m
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let url = self.url("/ready");
        let log = self.log_path.clone();
        wait_ready(&mut self.child, &url, Duration::from_secs(30), &log);
    }

    /// Sends SIGTERM and waits for exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("m3query did not stop within 30s of SIGTERM");
    }
}

impl Drop for M3Query {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ready_url` until it answers 200; panics with the log at `log` if `child` exits
/// first or `timeout` passes.
pub fn wait_ready(child: &mut Child, ready_url: &str, timeout: Duration, log: &Path) {
    let deadline = Instant::now() + timeout;
    let client = client();
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("m3query exited with {status}: {}", log());
        }
        if let Ok(r) = client.get(ready_url).send()
            && r.status().as_u16() == 200
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("m3query not ready after {timeout:?}: {}", log());
}

/// POSTs one remote-read query for `[start, end]` accepting only `response_type`; returns the
/// body of the 200 it must get.
fn post_read(
    read_url: &str,
    matchers: Vec<m3query_remote::prompb::LabelMatcher>,
    start: i64,
    end: i64,
    response_type: m3query_remote::prompb::read_request::ResponseType,
) -> Vec<u8> {
    use m3query_remote::prompb;
    use prost::Message;
    let req = prompb::ReadRequest {
        queries: vec![prompb::Query {
            start_timestamp_ms: start,
            end_timestamp_ms: end,
            matchers,
            hints: None,
        }],
        accepted_response_types: vec![response_type as i32],
    };
    let r = client()
        .post(read_url)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Read-Version", "0.1.0")
        .body(
            snap::raw::Encoder::new()
                .compress_vec(&req.encode_to_vec())
                .expect("snappy"),
        )
        .send()
        .expect("remote read");
    let status = r.status().as_u16();
    let body = r.bytes().expect("read body");
    assert_eq!(
        status,
        200,
        "remote read: {}",
        String::from_utf8_lossy(&body)
    );
    body.to_vec()
}

/// Reads `[start, end]` of the series `matchers` select through remote read (`SAMPLES`, at
/// `read_url`), and decodes the answer; panics on anything but a 200.
pub fn remote_read_samples(
    read_url: &str,
    matchers: Vec<m3query_remote::prompb::LabelMatcher>,
    start: i64,
    end: i64,
) -> m3query_remote::prompb::ReadResponse {
    use m3query_remote::prompb;
    use prost::Message;
    let body = post_read(
        read_url,
        matchers,
        start,
        end,
        prompb::read_request::ResponseType::Samples,
    );
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .expect("snappy read response");
    prompb::ReadResponse::decode(raw.as_slice()).expect("decode read response")
}

/// Reads `[start, end]` of the series `matchers` select through remote read as
/// `STREAMED_XOR_CHUNKS` (at `read_url`) and decodes every frame (checking its CRC); panics on
/// anything but a 200.
pub fn remote_read_streamed(
    read_url: &str,
    matchers: Vec<m3query_remote::prompb::LabelMatcher>,
    start: i64,
    end: i64,
) -> Vec<m3query_remote::prompb::ChunkedSeries> {
    use m3query_remote::prompb;
    use prost::Message;
    let body = post_read(
        read_url,
        matchers,
        start,
        end,
        prompb::read_request::ResponseType::StreamedXorChunks,
    );
    let mut reader = m3query_remote::read::FrameReader::new(&body);
    let mut out: Vec<prompb::ChunkedSeries> = Vec::new();
    while let Some(frame) = reader.next_frame() {
        let resp = prompb::ChunkedReadResponse::decode(frame.expect("frame CRC"))
            .expect("decode ChunkedReadResponse");
        for cs in resp.chunked_series {
            // A series longer than one frame continues in the next with the same labels.
            match out.last_mut() {
                Some(last) if last.labels == cs.labels => last.chunks.extend(cs.chunks),
                _ => out.push(cs),
            }
        }
    }
    out
}

/// An equality matcher for remote read.
pub fn eq_matcher(name: &str, value: &str) -> m3query_remote::prompb::LabelMatcher {
    m3query_remote::prompb::LabelMatcher {
        r#type: m3query_remote::prompb::label_matcher::Type::Eq as i32,
        name: name.into(),
        value: value.into(),
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// Runs `m3query check-config FILE` with `env`; returns exit code, stdout, stderr.
pub fn check_config(yaml: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yml");
    std::fs::write(&path, yaml).expect("write");
    let mut cmd = Command::new(bin());
    cmd.arg("check-config").arg(&path).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run check-config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A throwaway Prometheus (Debian's package) on a loopback port.
pub struct Prometheus {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `prometheus` with `config` (YAML) and waits for `/-/ready`. Panics with a clear
    /// message when the binary is missing: CI installs it (.ci/run), so a missing binary is a
    /// setup error, not a reason to skip.
    pub fn start(config: &str, extra_flags: &[&str]) -> Prometheus {
        let bin = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let found = Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "`{bin}` not found: these tests run Debian's Prometheus (apt-get install prometheus; .ci/run does it)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config.replace("{{PORT}}", &port.to_string())).expect("config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra_flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus { child, port, dir };
        let c = client();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = c.get(p.url("/-/ready")).send()
                && r.status().is_success()
            {
                return p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus not ready after 60s: {}", p.log());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A series to send: label pairs and `(timestamp ms, value)` samples.
pub type TestSeries<'a> = (Vec<(&'a str, &'a str)>, Vec<(i64, f64)>);

/// Encodes and sends a remote write 1.0 request; returns status and body.
pub fn remote_write_v1(url: &str, series: &[TestSeries<'_>]) -> (u16, String) {
    use m3query_remote::prompb;
    use prost::Message;
    let req = prompb::WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| prompb::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| prompb::Label {
                        name: n.as_bytes().to_vec().into(),
                        value: v.as_bytes().to_vec().into(),
                    })
                    .collect(),
                samples: samples
                    .iter()
                    .map(|(t, v)| prompb::Sample {
                        timestamp: *t,
                        value: *v,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        metadata: vec![],
    };
    send_snappy(url, &req.encode_to_vec(), "application/x-protobuf")
}

/// POSTs `raw` snappy-compressed with remote write's headers.
pub fn send_snappy(url: &str, raw: &[u8], content_type: &str) -> (u16, String) {
    let body = snap::raw::Encoder::new().compress_vec(raw).expect("snappy");
    let r = client()
        .post(url)
        .header("Content-Type", content_type)
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .expect("remote write");
    (r.status().as_u16(), r.text().unwrap_or_default())
}
