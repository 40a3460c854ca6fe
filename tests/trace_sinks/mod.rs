//! The independent trace receivers in `../shared/tools`, started per test on free ports:
//! `jaeger_agent_sink.py` (decodes our UDP datagrams with Jaeger's generated Thrift code,
//! serves sampling strategies) and `otlp_sink.py` (OTLP HTTP and gRPC). Killed on drop.
#![allow(dead_code)]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{free_port, shared_dir};

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

pub struct Sink {
    child: Child,
    pub dir: tempfile::TempDir,
    pub out: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    pub second_port: u16,
}

fn tool(name: &str) -> PathBuf {
    let p = shared_dir().join("tools").join(name);
    assert!(
        p.is_file(),
        "{} is missing: these tests need ../shared/tools from the shared directory",
        p.display()
    );
    p
}

impl Sink {
    fn spawn(script: &str, args: &[String], port: u16, second_port: u16) -> Sink {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("spans.jsonl");
        let log = dir.path().join("sink.log");
        let ready = dir.path().join("ready");
        let child = Command::new(crate::common::python3())
            .arg(tool(script))
            .args(args)
            .arg("--out")
            .arg(&out)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sink log"))
            .spawn()
            .expect("python3 must be installed to run the trace sinks");
        let mut s = Sink {
            child,
            dir,
            out,
            log,
            port,
            second_port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!(
                    "{script} exited with {st} (pip install -r ../shared/tools/requirements.txt?): {}",
                    s.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{script} not ready in 30s: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// A Jaeger agent on a free UDP port.
    pub fn jaeger_agent() -> Sink {
        let port = free_udp_port();
        Self::spawn(
            "jaeger_agent_sink.py",
            &["--port".into(), port.to_string()],
            port,
            0,
        )
    }

    /// A sampling strategy server (the agent's :5778) serving `strategies` (re-read on every
    /// poll); `port` is its HTTP port. Its UDP side listens on a port nobody uses.
    pub fn sampling_server(strategies: &Path) -> Sink {
        let port = free_port();
        let udp = free_udp_port();
        let polls = strategies.with_extension("polls.jsonl");
        Self::spawn(
            "jaeger_agent_sink.py",
            &[
                "--port".into(),
                udp.to_string(),
                "--sampling-port".into(),
                port.to_string(),
                "--strategies".into(),
                strategies.display().to_string(),
                "--sampling-log".into(),
                polls.display().to_string(),
            ],
            port,
            udp,
        )
    }

    /// An OTLP receiver: `port` is OTLP/HTTP, `second_port` OTLP/gRPC.
    pub fn otlp() -> Sink {
        let http = free_port();
        let grpc = free_port();
        Self::spawn(
            "otlp_sink.py",
            &[
                "--http".into(),
                format!("127.0.0.1:{http}"),
                "--grpc".into(),
                format!("127.0.0.1:{grpc}"),
            ],
            http,
            grpc,
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (generously) until `done` holds for the spans received so far.
    pub fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; {} spans received: {:#?}\nsink log: {}",
                    spans.len(),
                    spans.iter().take(5).collect::<Vec<_>>(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop();
    }
}
