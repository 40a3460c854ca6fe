//! Reliability as an operator and an attacker would try it, against the real binary: kill -9
//! with a ledger of acknowledged samples, a full disk on a small tmpfs, damaged WAL and block
//! files, a matrix of bad requests, and 1,000 concurrent clients.
//!
//! Each test prints its figures (samples lost, RSS peak, latencies, write rate) with
//! `eprintln!`; run with `--nocapture` to see them. Nothing here asserts on wall time: limits
//! are counts and sizes.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{bin, free_port};
use m3query_remote::prompb;
use prost::Message;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// A server whose data outlives the process.

/// m3query on a data directory the test owns, so it can be killed and started again.
struct Node {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    data: PathBuf,
    storage_extra: String,
    extra: String,
    starts: usize,
}

impl Node {
    /// Starts m3query with `data` as `storage.path`; `storage_extra` goes under `storage:`
    /// (two-space indented lines), `extra` at the top level. Logs go to `dir/log-N.txt`.
    fn start(dir: &Path, data: &Path, storage_extra: &str, extra: &str) -> Node {
        let mut n = Node {
            child: None,
            port: 0,
            dir: dir.to_path_buf(),
            data: data.to_path_buf(),
            storage_extra: storage_extra.to_string(),
            extra: extra.to_string(),
            starts: 0,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        self.port = free_port();
        self.starts += 1;
        let config = self.dir.join("m3query.yml");
        std::fs::write(
            &config,
            format!(
                "listenAddress: 127.0.0.1:{}\nlogging:\n  level: info\nstorage:\n  path: {}\n{}{}",
                self.port,
                self.data.display(),
                self.storage_extra,
                self.extra
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let child = Command::new(bin())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn m3query");
        self.child = Some(child);
        self.wait_ready();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("log-{}.txt", self.starts))
    }

    /// The log of the current (or last) run.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    fn wait_ready(&mut self) {
        let url = self.url("/ready");
        let log = self.log_path();
        if let Some(child) = self.child.as_mut() {
            common::wait_ready(child, &url, Duration::from_secs(120), &log);
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("m3query did not stop within 60s of SIGTERM");
        }
    }

    fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Peak resident set (VmHWM) of the running process, in bytes.
    fn peak_rss(&self) -> u64 {
        proc_status_kb(self.pid(), "VmHWM:") * 1024
    }

    fn rss(&self) -> u64 {
        proc_status_kb(self.pid(), "VmRSS:") * 1024
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn proc_status_kb(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .expect("http client")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A tiny deterministic generator: tests repeat, and print their seed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Remote write and read, as Prometheus sends them.

type Series = (Vec<(String, String)>, Vec<(i64, f64)>);

fn encode_write(series: &[Series]) -> Vec<u8> {
    let req = prompb::WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| prompb::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| prompb::Label {
                        name: n.clone().into(),
                        value: v.clone().into(),
                    })
                    .collect(),
                samples: samples
                    .iter()
                    .map(|&(timestamp, value)| prompb::Sample { timestamp, value })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy")
}

/// Sends a remote write 1.0 request; `None` when no answer came (the server died).
fn write(
    c: &reqwest::blocking::Client,
    node_url: &str,
    series: &[Series],
) -> Option<(u16, String)> {
    let r = c
        .post(format!("{node_url}/api/v1/write"))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(encode_write(series))
        .send()
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().unwrap_or_default()))
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Series key used by the ledgers: the label pairs without `__name__`, sorted.
fn key_of(labels: &[(String, String)]) -> String {
    let mut l: Vec<_> = labels.iter().filter(|(n, _)| n != "__name__").collect();
    l.sort();
    l.iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every sample of `metric` in `[start, end]`, by remote read (SAMPLES): series key ->
/// timestamps -> value bits.
fn read_all(
    node: &Node,
    metric: &str,
    start: i64,
    end: i64,
) -> BTreeMap<String, BTreeMap<i64, u64>> {
    let resp = common::remote_read_samples(
        &node.url("/api/v1/read"),
        vec![common::eq_matcher("__name__", metric)],
        start,
        end,
    );
    let mut out: BTreeMap<String, BTreeMap<i64, u64>> = BTreeMap::new();
    for result in resp.results {
        for ts in result.timeseries {
            let l: Vec<(String, String)> = ts
                .labels
                .iter()
                .map(|l| {
                    (
                        String::from_utf8_lossy(&l.name).into_owned(),
                        String::from_utf8_lossy(&l.value).into_owned(),
                    )
                })
                .collect();
            let e = out.entry(key_of(&l)).or_default();
            for s in ts.samples {
                e.insert(s.timestamp, s.value.to_bits());
            }
        }
    }
    out
}

/// Acknowledged samples: series key -> timestamp -> value bits.
#[derive(Default)]
struct Ledger(BTreeMap<String, BTreeMap<i64, u64>>);

impl Ledger {
    fn add(&mut self, series: &[Series]) {
        for (l, samples) in series {
            let e = self.0.entry(key_of(l)).or_default();
            for &(t, v) in samples {
                e.insert(t, v.to_bits());
            }
        }
    }

    fn total(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }

    /// Acknowledged samples missing from `found` or read back with another value.
    fn missing(&self, found: &BTreeMap<String, BTreeMap<i64, u64>>) -> (usize, Vec<String>) {
        let mut lost = 0;
        let mut examples = Vec::new();
        for (k, samples) in &self.0 {
            let got = found.get(k);
            for (t, v) in samples {
                if got.and_then(|g| g.get(t)) != Some(v) {
                    lost += 1;
                    if examples.len() < 5 {
                        examples.push(format!("{k} @ {t}"));
                    }
                }
            }
        }
        (lost, examples)
    }
}

// ---------------------------------------------------------------------------------------------
// kill -9

#[test]
fn kill9_keeps_every_acknowledged_sample() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut node = Node::start(tmp.path(), &data, "", "");
    let seed = now_ms() as u64;
    let mut rng = Lcg(seed);
    eprintln!("kill9: seed {seed}");
    let base = now_ms() - 2 * 3600 * 1000;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    const WRITERS: usize = 4;
    // Per writer, the next sample index: timestamps only grow, across restarts too.
    let next: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let mut acked_requests = 0u64;
    let cycles = 5;
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let url = node.url("");
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (stop, ledger, next, url) =
                    (stop.clone(), ledger.clone(), next.clone(), url.clone());
                std::thread::spawn(move || {
                    let c = client(Duration::from_secs(30));
                    let mut acked = 0u64;
                    // Bounded: at most 20,000 requests a cycle.
                    for _ in 0..20_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let k = next[w].fetch_add(20, Ordering::Relaxed) as i64;
                        let series: Vec<Series> = (0..5)
                            .map(|s| {
                                (
                                    labels(&[
                                        ("__name__", "ledger"),
                                        ("w", &w.to_string()),
                                        ("s", &s.to_string()),
                                    ]),
                                    (0..20)
                                        .map(|i| (base + (k + i) * 10, (k + i) as f64 * 0.5))
                                        .collect(),
                                )
                            })
                            .collect();
                        match write(&c, &url, &series) {
                            Some((s, _)) if (200..300).contains(&s) => {
                                ledger.lock().expect("ledger").add(&series);
                                acked += 1;
                            }
                            Some((s, body)) => panic!("write refused with {s}: {body}"),
                            None => break, // killed: the request is not acknowledged
                        }
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        node.kill9();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            acked_requests += h.join().expect("writer");
        }
        node.spawn();
        let found = read_all(&node, "ledger", base - 1, now_ms() + 3_600_000);
        let ledger = ledger.lock().expect("ledger");
        let (lost, examples) = ledger.missing(&found);
        eprintln!(
            "kill9 cycle {cycle}: {} acknowledged samples, {lost} lost",
            ledger.total()
        );
        assert_eq!(
            lost,
            0,
            "acknowledged samples lost after kill -9 (seed {seed}), e.g. {examples:?}\n{}",
            node.log()
        );
    }
    assert!(acked_requests > 0, "no write was acknowledged");
}

// ---------------------------------------------------------------------------------------------
// Disk full

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount(8) syntax); `Err` says why it could not.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("remount");
        assert!(st.success(), "remount tmpfs to {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn series_visible(node: &Node, selector: &str) -> usize {
    let r = client(Duration::from_secs(30))
        .get(node.url("/api/v1/series"))
        .query(&[("match[]", selector)])
        .send()
        .expect("series");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().expect("series json");
    v["data"].as_array().map_or(0, Vec::len)
}

#[test]
fn disk_full_keeps_acknowledged_writes_and_failed_writes_change_nothing() {
    let fs = match Tmpfs::mount("16m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!(
                "SKIPPED disk_full test: cannot mount a 16 MiB tmpfs here ({why}); it needs root \
                 and mount(8), as CI has"
            );
            return;
        }
    };
    let logs = tempfile::tempdir().expect("tempdir");
    let data = fs.path().join("data");
    let mut node = Node::start(logs.path(), &data, "", "");
    let c = client(Duration::from_secs(30));
    let url = node.url("");
    let base = now_ms() - 3600 * 1000;
    let pad = "p".repeat(400);
    let mut ledger = Ledger::default();
    let mut failed: Vec<(usize, Vec<Series>)> = Vec::new();
    let request = |n: usize| -> Vec<Series> {
        (0..10)
            .map(|s| {
                (
                    labels(&[
                        ("__name__", "diskfull"),
                        ("req", &n.to_string()),
                        ("s", &s.to_string()),
                        ("pad", &pad),
                    ]),
                    (0..50)
                        .map(|i| (base + i * 1000, (n * 100 + i as usize) as f64))
                        .collect(),
                )
            })
            .collect()
    };
    let mut n = 0;
    // Fill the disk: bounded at 5,000 requests (16 MiB fills after ~1,500).
    while n < 5_000 && failed.len() < 20 {
        let series = request(n);
        match write(&c, &url, &series) {
            Some((s, _)) if (200..300).contains(&s) => ledger.add(&series),
            Some((s, body)) => {
                assert!(
                    s >= 500,
                    "a write that fails on a full disk is a server error, got {s}: {body}"
                );
                // A failed write changes nothing: its series are not there.
                assert_eq!(
                    series_visible(&node, &format!("{{__name__=\"diskfull\",req=\"{n}\"}}")),
                    0,
                    "series of a failed write (request {n}) are visible"
                );
                failed.push((n, series));
            }
            None => panic!("m3query died on a full disk: {}", node.log()),
        }
        n += 1;
    }
    eprintln!(
        "disk full: {} requests acknowledged, {} failed before stopping",
        n - failed.len(),
        failed.len()
    );
    assert!(
        !failed.is_empty(),
        "the 16 MiB tmpfs never filled up after {n} requests"
    );
    let log = node.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("No space left") || l.contains("ENOSPC"))
        .count();
    eprintln!(
        "disk full: {} log bytes, {lines} lines naming ENOSPC",
        log.len()
    );

    // Space comes back: the failed writes, retried as Prometheus does, now succeed...
    fs.resize("256m");
    for (n, series) in &failed {
        match write(&c, &url, series) {
            Some((s, body)) => assert!(
                (200..300).contains(&s),
                "retry of failed request {n} after space came back: {s} {body}"
            ),
            None => panic!("m3query died: {}", node.log()),
        }
        ledger.add(series);
    }
    // ...and so do new ones.
    for n in 10_000..10_050 {
        let series = request(n);
        let (s, body) = write(&c, &url, &series).expect("write after space came back");
        assert!((200..300).contains(&s), "{s} {body}");
        ledger.add(&series);
    }
    // Every acknowledged write survives a crash and a restart.
    node.restart();
    let found = read_all(&node, "diskfull", base - 1, now_ms());
    let (lost, examples) = ledger.missing(&found);
    eprintln!(
        "disk full: {} acknowledged samples, {lost} lost after kill -9 and restart",
        ledger.total()
    );
    assert_eq!(lost, 0, "e.g. {examples:?}\n{}", node.log());
    drop(node);
}

// ---------------------------------------------------------------------------------------------
// Damaged files

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

fn flip(path: &Path, offset: usize, n: usize) {
    let mut b = std::fs::read(path).expect("read file to damage");
    for x in b.iter_mut().skip(offset).take(n) {
        *x ^= 0xff;
    }
    std::fs::write(path, b).expect("write damaged file");
}

fn metrics_text(node: &Node) -> String {
    client(Duration::from_secs(30))
        .get(node.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default()
}

/// The sum of every sample of metric `name` (all label sets), or `None` when absent.
fn metric_sum(metrics: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[test]
fn wal_corruption_loses_only_the_damaged_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut node = Node::start(tmp.path(), &data, "", "");
    let c = client(Duration::from_secs(30));
    let url = node.url("");
    let base = now_ms() - 3600 * 1000;
    let mut ledger = Ledger::default();
    for r in 0..400i64 {
        let series: Vec<Series> = (0..50)
            .map(|s| {
                (
                    labels(&[("__name__", "walrec"), ("s", &s.to_string())]),
                    (0..5)
                        .map(|i| (base + (r * 5 + i) * 1000, (r * 5 + i) as f64))
                        .collect(),
                )
            })
            .collect();
        let (s, body) = write(&c, &url, &series).expect("write");
        assert!((200..300).contains(&s), "{s} {body}");
        ledger.add(&series);
    }
    node.kill9();
    let segments: Vec<PathBuf> = files_under(&data.join("wal"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
        .collect();
    let seg = segments
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .expect("a WAL segment");
    let len = std::fs::metadata(seg).expect("segment").len() as usize;
    flip(seg, len / 2, 4);
    node.spawn();
    let found = read_all(&node, "walrec", base - 1, now_ms());
    let (lost, _) = ledger.missing(&found);
    let total = ledger.total();
    eprintln!(
        "WAL corruption: 4 bytes flipped mid-segment ({len} bytes): {lost} of {total} samples lost ({:.2}%)",
        100.0 * lost as f64 / total as f64
    );
    // One request is one record of 250 samples; a 4-byte flip damages at most two records.
    assert!(
        lost <= 500,
        "{lost} of {total} samples lost to a 4-byte flip\n{}",
        node.log()
    );
    let log = node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.to_lowercase().contains("corrupt")),
        "the damage is logged at ERROR: {log}"
    );
    let m = metrics_text(&node);
    assert!(
        metric_sum(&m, "m3query_tsdb_wal_corruptions_total").is_some_and(|v| v >= 1.0),
        "a corruption metric on /metrics:\n{}",
        m.lines()
            .filter(|l| l.contains("wal"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // What was cut is kept for a post-mortem.
    let kept = files_under(&data.join("wal"))
        .iter()
        .any(|p| p.to_string_lossy().contains("corrupt"));
    assert!(
        kept,
        "a copy of the damaged WAL is kept: {:?}",
        files_under(&data.join("wal"))
    );
}

fn block_dirs(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("meta.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn query_json(node: &Node, query: &str, time_s: f64) -> (u16, Value) {
    let r = client(Duration::from_secs(60))
        .get(node.url("/api/v1/query"))
        .query(&[("query", query), ("time", &format!("{time_s:.3}"))])
        .send()
        .expect("query");
    let s = r.status().as_u16();
    (s, r.json().unwrap_or(Value::Null))
}

/// Series label `s` -> value, of an instant vector answer.
fn vector_values(v: &Value) -> BTreeMap<String, String> {
    v["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["metric"]["s"].as_str().unwrap_or("").to_string(),
                        r["value"][1].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn damaged_blocks_are_reported_never_served_as_values() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut node = Node::start(tmp.path(), &data, "", "");
    let c = client(Duration::from_secs(60));
    let url = node.url("");
    // Seven hours of one-minute samples: the head cuts the oldest hours into blocks.
    let end = now_ms() / 60_000 * 60_000;
    let start = end - 7 * 3600 * 1000;
    let series: Vec<Series> = (0..20)
        .map(|s| {
            (
                labels(&[("__name__", "blk"), ("s", &s.to_string())]),
                (0..=420)
                    .map(|i| (start + i * 60_000, (s * 1000 + i) as f64))
                    .collect(),
            )
        })
        .collect();
    let (s, body) = write(&c, &url, &series).expect("write");
    assert!((200..300).contains(&s), "{s} {body}");
    let blocks = common::eventually(Duration::from_secs(60), || {
        let b = block_dirs(&data);
        (!b.is_empty()).then_some(b)
    })
    .unwrap_or_else(|| panic!("no block cut from 7 h of data: {}", node.log()));
    let at = (start + 90 * 60_000) as f64 / 1000.0; // inside the first block
    let q = "sum_over_time(blk[1h])";
    let (s, good) = query_json(&node, q, at);
    assert_eq!(s, 200, "{good}");
    let expected = vector_values(&good);
    assert_eq!(expected.len(), 20, "{good}");
    node.stop();

    // Damage the middle of the chunks of the block holding `at` (looked up after the stop:
    // blocks cut meanwhile may have been compacted into a new one).
    let at_ms = (at * 1000.0) as i64;
    let first = block_dirs(&data)
        .into_iter()
        .find(|b| {
            let meta: Value = std::fs::read_to_string(b.join("meta.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
            let (min, max) = (meta["minTime"].as_i64(), meta["maxTime"].as_i64());
            min.zip(max)
                .is_some_and(|(lo, hi)| lo <= at_ms && at_ms < hi)
        })
        .unwrap_or_else(|| panic!("no block holds {at_ms}: {blocks:?}"));
    let ulid = first
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    let chunks = files_under(&first.join("chunks"));
    let cf = chunks.first().expect("a chunk file");
    let clen = std::fs::metadata(cf).expect("chunks").len() as usize;
    flip(cf, clen / 2, 8);
    node.spawn();
    let (s, v) = query_json(&node, q, at);
    let text = v.to_string();
    if s == 200 {
        let got = vector_values(&v);
        let warned = text.contains(&ulid) && v["warnings"].is_array();
        for (k, val) in &got {
            let want = expected.get(k);
            if warned && val != want.unwrap_or(&String::new()) {
                // With the block named as damaged, a series' sum may lack the samples of the
                // left-out chunk (every value here is positive, so it can only be smaller),
                // but never gain or alter one.
                let (g, w): (f64, f64) = (
                    val.parse().unwrap_or(f64::NAN),
                    want.and_then(|w| w.parse().ok()).unwrap_or(f64::NAN),
                );
                assert!(
                    g < w,
                    "a damaged chunk served as a value for s={k}: {val} > {w}: {text}"
                );
            } else {
                assert_eq!(
                    Some(val),
                    want,
                    "a damaged chunk served as a value for s={k}: {text}"
                );
            }
        }
        if got.len() < expected.len() {
            assert!(
                text.contains(&ulid) && v["warnings"].is_array(),
                "series missing without a warning naming block {ulid}: {text}"
            );
        }
    } else {
        assert!(
            text.contains(&ulid),
            "the error names block {ulid}: {s} {text}"
        );
    }
    eprintln!(
        "damaged chunk: status {s}, {} of {} series answered, warnings {}",
        vector_values(&v).len(),
        expected.len(),
        v["warnings"]
    );

    // A block whose meta.json is gone is reported, not skipped silently.
    node.stop();
    let victim = block_dirs(&data).last().expect("block").clone();
    let vulid = victim
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    std::fs::rename(victim.join("meta.json"), victim.join("meta.json.gone")).expect("rename");
    node.spawn();
    let log = node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(&vulid)),
        "startup names the broken block {vulid} at ERROR: {log}"
    );
    let m = metrics_text(&node);
    assert!(
        metric_sum(&m, "m3query_tsdb_corrupt_blocks").is_some_and(|v| v >= 1.0),
        "a corrupt-blocks gauge on /metrics:\n{}",
        m.lines()
            .filter(|l| l.contains("block"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (s, v) = query_json(&node, q, at);
    assert!(
        v.to_string().contains(&vulid),
        "queries warn about block {vulid}: {s} {v}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input

/// A raw HTTP/1.1 exchange: the request's bytes as given, the answer read to the end.
fn raw(port: u16, req: &[u8]) -> Result<(u16, String, Vec<u8>), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    s.write_all(req).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    // The answer ends when the server closes (requests say Connection: close) or after 120 s.
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => return Err(format!("no answer: {e}")),
            Err(_) => break,
        }
        if buf.len() > 64 << 20 {
            break;
        }
    }
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Result<(u16, String, Vec<u8>), String> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(buf)))?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let mut body = buf[end + 4..].to_vec();
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..p]).trim(), 16)
                .map_err(|e| e.to_string())?;
            if size == 0 {
                break;
            }
            let from = p + 2;
            let to = (from + size).min(rest.len());
            out.extend_from_slice(&rest[from..to]);
            rest = &rest[(to + 2).min(rest.len())..];
        }
        body = out;
    }
    Ok((status, head, body))
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes()
}

fn post(path: &str, content_type: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {content_type}\r\n{extra_headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn enc(s: &str) -> String {
    form_encode(s)
}

fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn write_v1_body(series: &[Series]) -> Vec<u8> {
    encode_write(series)
}

fn write_v2_body() -> Vec<u8> {
    let req = prompb::v2::Request {
        symbols: vec!["".into(), "__name__".into(), "v2metric".into()],
        timeseries: vec![prompb::v2::TimeSeries {
            labels_refs: vec![1, 2],
            samples: vec![prompb::v2::Sample {
                value: 1.0,
                timestamp: now_ms(),
            }],
            ..Default::default()
        }],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy")
}

fn bad_requests() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    let now = now_ms() / 1000;
    // PromQL that does not parse or does not type-check: 400 bad_data.
    let bad_exprs = [
        "",
        "1 +",
        "sum(",
        "foo{",
        "foo{a=}",
        "foo{a=\"b\"",
        "foo[5x]",
        "foo[]",
        "rate(foo)",
        "rate(foo[5m], 1)",
        "sum by (a) (",
        "\"unterminated",
        "foo offset",
        "foo @",
        "foo @ bar",
        "histogram_quantile()",
        "label_replace(up, \"a\")",
        "foo{__name__=~\"(\"}",
        "nosuchfunction(up)",
        "up[5m][5m]",
        "(up",
        "up)",
        "1 and 1",
        "sum(up) by",
        "topk(up, 3)",
        "{}",
        "{a!=\"\"} == bool",
        "-",
        "foo:bar[5m:1m:1m]",
        "up ** 2",
        "up !~ 2",
        "count_values(1, up)",
        "quantile_over_time(0.5)",
        "absent(up, up)",
        "vector(\"a\")",
        "time(1)",
        "up[5m] + 1",
        "sum_over_time(up)",
        "@ 1",
    ];
    for e in bad_exprs {
        v.push((
            format!("query {e:?}"),
            get(&format!("/api/v1/query?query={}", enc(e))),
        ));
    }
    for e in ["1 +", "sum(", "foo[5x]", "(up"] {
        v.push((
            format!("query_range {e:?}"),
            get(&format!(
                "/api/v1/query_range?query={}&start={}&end={now}&step=15",
                enc(e),
                now - 3600
            )),
        ));
        v.push((
            format!("POST query {e:?}"),
            post(
                "/api/v1/query",
                "application/x-www-form-urlencoded",
                "",
                format!("query={}", enc(e)).as_bytes(),
            ),
        ));
        v.push((
            format!("format_query {e:?}"),
            get(&format!("/api/v1/format_query?query={}", enc(e))),
        ));
        v.push((
            format!("parse_query {e:?}"),
            get(&format!("/api/v1/parse_query?query={}", enc(e))),
        ));
    }
    // Parameters.
    let params = [
        "/api/v1/query",
        "/api/v1/query?query=up&time=abc",
        "/api/v1/query?query=up&time=NaN",
        "/api/v1/query?query=up&timeout=abc",
        "/api/v1/query?query=up&timeout=-1s",
        "/api/v1/query?query=up&lookback_delta=abc",
        "/api/v1/query?query=up&stats=all&time=1e99",
        "/api/v1/query_range?query=up",
        "/api/v1/query_range?query=up&start=abc&end=1&step=1",
        "/api/v1/query_range?query=up&start=10&end=1&step=1",
        "/api/v1/query_range?query=up&start=0&end=100&step=0",
        "/api/v1/query_range?query=up&start=0&end=100&step=-5",
        "/api/v1/query_range?query=up&start=0&end=100&step=abc",
        "/api/v1/query_range?query=up&start=0&end=100000000&step=1",
        "/api/v1/query_range?query=up&start=0&end=100",
        "/api/v1/series",
        "/api/v1/series?match[]=",
        "/api/v1/series?match[]=%7B%7D",
        "/api/v1/series?match[]=up%7B",
        "/api/v1/series?match[]=up&start=abc",
        "/api/v1/series?match[]=up&end=abc",
        "/api/v1/series?match[]=up&limit=abc",
        "/api/v1/labels?match[]=up%7B",
        "/api/v1/labels?start=abc",
        "/api/v1/label/__name__/values?match[]=up%7B",
        "/api/v1/label/__name__/values?start=abc",
        "/api/v1/label/%ff/values",
        "/api/v1/metadata?limit=abc",
        "/api/v1/metadata?limit_per_metric=abc",
        "/api/v1/query_exemplars?query=up%7B",
        "/api/v1/query_exemplars?query=up&start=abc",
        "/api/v1/query_exemplars",
        // Invalid percent-escapes: Prometheus refuses them.
        "/api/v1/query?query=%zz",
        "/api/v1/query?query=up%",
        "/api/v1/query?query=%ff%fe",
        "/api/v1/series?match[]=%ff",
        "/api/v1/query_range?query=up&start=%zz&end=1&step=1",
    ];
    for p in params {
        v.push((format!("GET {p}"), get(p)));
    }
    // Methods and paths.
    v.push(("unknown path".into(), get("/api/v1/nope")));
    v.push(("unknown path, deep".into(), get("/a/b/c/d/e/f")));
    v.push((
        "DELETE query".into(),
        b"DELETE /api/v1/query?query=up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
    ));
    v.push(("GET remote write".into(), get("/api/v1/write")));
    v.push(("GET remote read".into(), get("/api/v1/read")));
    v.push((
        "PUT label values".into(),
        b"PUT /api/v1/label/a/values HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            .to_vec(),
    ));
    // An over-long URI.
    v.push((
        "URI of 200 KB".into(),
        get(&format!("/api/v1/query?query={}", "a".repeat(200_000))),
    ));
    // POST bodies.
    v.push((
        "POST query, JSON body".into(),
        post(
            "/api/v1/query",
            "application/json",
            "",
            b"{\"query\":\"up\"}",
        ),
    ));
    v.push((
        "POST query, bad form".into(),
        post(
            "/api/v1/query",
            "application/x-www-form-urlencoded",
            "",
            b"query=%zz",
        ),
    ));
    // Remote write.
    let snappy = "Content-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n";
    let pb = "application/x-protobuf";
    v.push((
        "write: not snappy".into(),
        post("/api/v1/write", pb, snappy, b"\xffgarbage"),
    ));
    v.push((
        "write: not protobuf".into(),
        post(
            "/api/v1/write",
            pb,
            snappy,
            &snap::raw::Encoder::new()
                .compress_vec(b"\xff\xff\xff\xff")
                .expect("snappy"),
        ),
    ));
    v.push((
        "write: snappy bomb".into(),
        post(
            "/api/v1/write",
            pb,
            snappy,
            &[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00],
        ),
    ));
    v.push((
        "write: snappy claims 250 MiB".into(),
        post(
            "/api/v1/write",
            pb,
            snappy,
            &[0x80, 0x80, 0x80, 0x7d, 0x00, 0x00],
        ),
    ));
    v.push((
        "write: json".into(),
        post("/api/v1/write", "application/json", snappy, b"{}"),
    ));
    v.push((
        "write: gzip".into(),
        post(
            "/api/v1/write",
            pb,
            "Content-Encoding: gzip\r\n",
            b"\x1f\x8b",
        ),
    ));
    v.push((
        "write: v2 content type, v1 body".into(),
        post(
            "/api/v1/write",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            "Content-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 2.0.0\r\n",
            &write_v1_body(&[(labels(&[("__name__", "mixed")]), vec![(now_ms(), 1.0)])]),
        ),
    ));
    v.push((
        "write: v1 content type, v2 body".into(),
        post("/api/v1/write", pb, snappy, &write_v2_body()),
    ));
    let ts = now_ms();
    let bad_series: Vec<(&str, Vec<Series>)> = vec![
        ("no name", vec![(labels(&[("a", "b")]), vec![(ts, 1.0)])]),
        (
            "empty label name",
            vec![(labels(&[("__name__", "x"), ("", "b")]), vec![(ts, 1.0)])],
        ),
        (
            "NaN-free empty metric name",
            vec![(labels(&[("__name__", ""), ("a", "c")]), vec![(ts, 1.0)])],
        ),
        (
            "duplicate label",
            vec![(
                labels(&[("__name__", "x"), ("a", "1"), ("a", "2")]),
                vec![(ts, 1.0)],
            )],
        ),
        (
            "3 h in the future",
            vec![(
                labels(&[("__name__", "future")]),
                vec![(ts + 3 * 3600 * 1000, 1.0)],
            )],
        ),
        (
            "a year in the future",
            vec![(
                labels(&[("__name__", "future")]),
                vec![(ts + 365 * 86_400_000, 1.0)],
            )],
        ),
    ];
    for (what, series) in bad_series {
        v.push((
            format!("write: {what}"),
            post("/api/v1/write", pb, snappy, &write_v1_body(&series)),
        ));
    }
    // Remote read.
    let read = "Content-Encoding: snappy\r\nX-Prometheus-Remote-Read-Version: 0.1.0\r\n";
    v.push((
        "read: not snappy".into(),
        post("/api/v1/read", pb, read, b"\xffgarbage"),
    ));
    v.push((
        "read: not protobuf".into(),
        post(
            "/api/v1/read",
            pb,
            read,
            &snap::raw::Encoder::new()
                .compress_vec(b"\xff\xff\xff")
                .expect("snappy"),
        ),
    ));
    v.push((
        "read: snappy bomb".into(),
        post(
            "/api/v1/read",
            pb,
            read,
            &[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00],
        ),
    ));
    v.push((
        "read: empty body".into(),
        post("/api/v1/read", pb, read, b""),
    ));
    v
}

/// Checks Prometheus's error shape: `{"status":"error","errorType":..,"error":..}` as JSON.
fn error_json(what: &str, status: u16, head: &str, body: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "{what}: {status} with a body that is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )
    })?;
    let shaped = v["status"] == "error"
        && v["errorType"].is_string()
        && v["error"].as_str().is_some_and(|e| !e.is_empty());
    if !shaped {
        return Err(format!(
            "{what}: {status} not Prometheus's error shape: {v}"
        ));
    }
    if !head
        .to_ascii_lowercase()
        .contains("content-type: application/json")
    {
        return Err(format!(
            "{what}: {status} without a JSON content type: {head}"
        ));
    }
    Ok(())
}

fn assert_error_json(what: &str, status: u16, head: &str, body: &[u8]) {
    if let Err(e) = error_json(what, status, head, body) {
        panic!("{e}");
    }
}

fn healthy(port: u16) -> bool {
    matches!(raw(port, &get("/health")), Ok((200, _, _)))
}

#[test]
fn bad_input_matrix_gets_prometheus_errors_and_the_server_stays_healthy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let node = Node::start(tmp.path(), &data, "", "");
    // Something to query.
    let c = client(Duration::from_secs(30));
    let t = now_ms();
    let (s, body) = write(
        &c,
        &node.url(""),
        &[(
            labels(&[("__name__", "up"), ("job", "x")]),
            vec![(t - 1000, 1.0)],
        )],
    )
    .expect("write");
    assert!((200..300).contains(&s), "{s} {body}");

    let cases = bad_requests();
    assert!(cases.len() >= 100, "only {} bad requests", cases.len());
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (what, req) in &cases {
        let (status, head, body) =
            raw(node.port, req).unwrap_or_else(|e| panic!("{what}: {e}\n{}", node.log()));
        *by_status.entry(status).or_default() += 1;
        let answer = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        if !(400..500).contains(&status) {
            wrong.push(format!("{what}: expected a 4xx, got {status}: {answer}"));
        } else if let Err(e) = error_json(what, status, &head, &body) {
            wrong.push(e);
        }
        assert!(
            healthy(node.port),
            "{what}: server unhealthy after it\n{}",
            node.log()
        );
    }
    eprintln!(
        "bad input: {} requests, statuses {by_status:?}",
        cases.len()
    );
    assert!(
        wrong.is_empty(),
        "{} of {} bad requests not answered with a 4xx in Prometheus's error JSON:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    // Nothing bad was stored, the good sample is still there.
    let (s, v) = query_json(&node, "up", (t as f64) / 1000.0);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["result"].as_array().map_or(0, Vec::len), 1, "{v}");
    let (s, v) = query_json(&node, "future", (t as f64) / 1000.0 + 4.0 * 3600.0);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["result"].as_array().map_or(1, Vec::len), 0, "{v}");

    // An unencoded quote in the query string is answered, as Prometheus does.
    let (s, _, body) =
        raw(node.port, &get("/api/v1/query?query=up{job=\"x\"}")).expect("raw quote");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["data"]["result"].as_array().map_or(0, Vec::len), 1, "{v}");

    // A sample 3 h ahead did not block writes at the current time.
    let (s, body) = write(
        &c,
        &node.url(""),
        &[(
            labels(&[("__name__", "up"), ("job", "x")]),
            vec![(now_ms(), 1.0)],
        )],
    )
    .expect("write");
    assert!(
        (200..300).contains(&s),
        "write at now after a future sample: {s} {body}"
    );
}

#[test]
fn huge_bodies_are_refused_before_they_are_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start(tmp.path(), &tmp.path().join("data"), "", "");
    let snappy = "Content-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n";
    // 10 GB announced, nothing sent: the answer must come without the body.
    let req = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-protobuf\r\n{snappy}Content-Length: 10000000000\r\n\r\n"
    );
    let (s, head, body) = raw(node.port, req.as_bytes()).expect("answer to a 10 GB request");
    assert_eq!(s, 413, "{head}");
    assert_error_json("10 GB Content-Length", s, &head, &body);
    // Expect: 100-continue with 1 GB: refused, and no 100 Continue first.
    let req = format!(
        "POST /api/v1/read HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-protobuf\r\nExpect: 100-continue\r\n{snappy}Content-Length: 1000000000\r\n\r\n"
    );
    let (s, head, body) = raw(node.port, req.as_bytes()).expect("answer to 100-continue");
    assert_eq!(s, 413, "{head}");
    assert_error_json("Expect 100-continue with 1 GB", s, &head, &body);
    assert!(healthy(node.port));
}

#[test]
fn half_sent_requests_do_not_hold_connections() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start(
        tmp.path(),
        &tmp.path().join("data"),
        "",
        "http:\n  headerReadTimeout: 2s\n  bodyReadTimeout: 2s\n",
    );
    // Headers that never end.
    let mut s = TcpStream::connect(("127.0.0.1", node.port)).expect("connect");
    s.write_all(b"GET /api/v1/query?query=1 HTTP/1.1\r\nHost: x\r\n")
        .expect("send");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    assert!(
        r.is_ok(),
        "the server closes a connection whose headers never end: {r:?}"
    );
    // A body that stops halfway.
    let mut s = TcpStream::connect(("127.0.0.1", node.port)).expect("connect");
    s.write_all(
        b"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nquery=",
    )
    .expect("send");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    assert!(r.is_ok(), "the server gives up on a body that stops: {r:?}");
    if !buf.is_empty() {
        let (status, head, body) = parse_response(&buf).expect("response");
        assert!((400..500).contains(&status), "{head}");
        assert_error_json("half body", status, &head, &body);
    }
    assert!(healthy(node.port));
}

// ---------------------------------------------------------------------------------------------
// 1,000 clients

#[test]
fn a_thousand_clients_keep_memory_bounded_and_writes_flowing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start(tmp.path(), &tmp.path().join("data"), "", "");
    let c = client(Duration::from_secs(60));
    let url = node.url("");
    // 2,000 series x 1 h at 15 s.
    let end = now_ms() / 15_000 * 15_000;
    let start = end - 3600 * 1000;
    for batch in 0..20 {
        let series: Vec<Series> = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                (
                    labels(&[
                        ("__name__", "load"),
                        ("instance", &format!("i{n}")),
                        ("job", &format!("j{}", n % 10)),
                    ]),
                    (0..240)
                        .map(|k| (start + k * 15_000, (k * (n + 1)) as f64))
                        .collect(),
                )
            })
            .collect();
        let (s, body) = write(&c, &url, &series).expect("load");
        assert!((200..300).contains(&s), "{s} {body}");
    }
    let idle_rss = node.rss();

    // A writer keeps writing through the storm; every write must be acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, url) = (stop.clone(), url.clone());
        std::thread::spawn(move || {
            let c = client(Duration::from_secs(60));
            let mut lat = Vec::new();
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                let t0 = Instant::now();
                let series = vec![(
                    labels(&[("__name__", "storm_writer")]),
                    vec![(end + n * 10, n as f64)],
                )];
                match write(&c, &url, &series) {
                    Some((s, body)) => assert!(
                        (200..300).contains(&s),
                        "write during the storm: {s} {body}"
                    ),
                    None => panic!("write during the storm got no answer"),
                }
                lat.push(t0.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            lat
        })
    };

    let query = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=60",
        enc("rate(load[5m]) * on (instance) group_left load"),
        start / 1000,
        end / 1000
    );
    let storm_start = Instant::now();
    let clients: Vec<_> = (0..1000)
        .map(|_| {
            let req = get(&query);
            let port = node.port;
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let t0 = Instant::now();
                    let r = raw(port, &req);
                    (
                        r.map(|(s, h, b)| (s, h, b.len(), b.get(..200).map(<[u8]>::to_vec))),
                        t0.elapsed(),
                    )
                })
                .expect("client thread")
        })
        .collect();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut lat: Vec<Duration> = Vec::new();
    let mut failures = Vec::new();
    for h in clients {
        let (r, d) = h.join().expect("client");
        match r {
            Ok((s, _head, _len, prefix)) => {
                *statuses.entry(s).or_default() += 1;
                if s != 200 && s != 503 {
                    failures.push(format!(
                        "{s}: {}",
                        String::from_utf8_lossy(&prefix.unwrap_or_default())
                    ));
                }
                lat.push(d);
            }
            Err(e) => failures.push(e),
        }
    }
    let storm = storm_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let wlat = writer.join().expect("writer");
    let peak = node.peak_rss();
    lat.sort();
    let mut wl = wlat.clone();
    wl.sort();
    let pct = |v: &[Duration], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    eprintln!(
        "1,000 clients: {storm:?} in all, statuses {statuses:?}, p50 {:?}, p99 {:?}; RSS idle {} MiB, peak {} MiB; \
         writes during the storm: {} ({:.1}/s), p50 {:?}, p99 {:?}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        idle_rss >> 20,
        peak >> 20,
        wlat.len(),
        wlat.len() as f64 / storm.as_secs_f64(),
        pct(&wl, 0.5),
        pct(&wl, 0.99),
    );
    assert!(
        failures.is_empty(),
        "{} clients failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 0,
        "no query answered: {statuses:?}"
    );
    assert!(!wlat.is_empty(), "no write went through during the storm");
    // Before admission control this reached 3.7 GB; queries now wait their turn.
    assert!(
        peak < 1536 << 20,
        "peak RSS {} MiB with 1,000 clients",
        peak >> 20
    );
    assert!(healthy(node.port));
}
