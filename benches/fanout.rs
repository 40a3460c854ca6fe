//! Scale-out benchmark: the `../shared/bench` dashboard queries through m3query reading three
//! Prometheus stores (one an HA pair, deduplicated) against one Prometheus holding all the
//! data, and through m3query reading that one Prometheus (the cost of the remote-read hop).
//!
//!     cargo bench --bench fanout                # 200 instances x 6h, as the harness's default
//!     FANOUT_INSTANCES=50 FANOUT_DURATION=2h cargo bench --bench fanout
//!
//! Needs Debian's `prometheus` and `../shared/bench`'s Python requirements, like the tests.
//! Prints `run.py`'s tables (lower B/A is better for m3query). Everything runs on loopback
//! and is stopped at the end. `cargo test --benches` runs nothing (it is a benchmark).
//!
//! Then the hop's fixed cost, per query: one small query repeated (`FANOUT_HOP_REPEAT`,
//! default 300) on one kept-alive client, straight to a store and through m3query over that
//! one store, for a Prometheus store and for an m3query store (streamed remote read, our own
//! server), with median, p90 and p99. That is where Nagle's algorithm with delayed ACKs
//! shows (about 40 ms more per query). A last row reads through m3query over four copies of
//! the m3query store (the fan-out's own cost), and each row shows the fanning-out m3query's
//! CPU time per query; the fanning-out processes' threads and peak RSS follow the table.
//! `FANOUT_ONLY=hop` runs only this part (no data load).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::router::{Targets, receiver, serve_router};
use common::{M3Query, Prometheus};

fn env(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}

fn run_py(shared: &std::path::Path, a: &str, b: &str, dataset: &std::path::Path, extra: &[&str]) {
    let status = Command::new("python3")
        .arg(shared.join("bench/run.py"))
        .args(["--a", a, "--b", b, "--repeat", &env("FANOUT_REPEAT", "5")])
        .arg("--dataset")
        .arg(dataset)
        .args(extra)
        .status()
        .expect("run.py");
    assert!(status.success(), "run.py failed");
}

/// Times `query` (instant, at `time`) `n` times against `base` on `client`, after a warm-up;
/// returns the sorted latencies.
fn time_query(
    client: &reqwest::blocking::Client,
    base: &str,
    query: &str,
    time: &str,
    n: usize,
) -> Vec<Duration> {
    let once = || {
        let t = Instant::now();
        let r = client
            .get(format!("{base}/api/v1/query"))
            .query(&[("query", query), ("time", time)])
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.bytes());
        assert!(r.is_ok(), "{base}: {r:?}");
        t.elapsed()
    };
    for _ in 0..5 {
        once();
    }
    let mut out: Vec<Duration> = (0..n).map(|_| once()).collect();
    out.sort();
    out
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// CPU seconds (user + system) process `pid` has used so far, from /proc (0 elsewhere).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may itself hold spaces and parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

/// Process `pid`'s threads now and its peak resident memory in MiB, from /proc.
fn threads_and_peak_rss(pid: u32) -> (usize, f64) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    let hwm_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    (threads, hwm_kib / 1024.0)
}

/// Prints one row of the hop table: the direct and fanned-out latencies of `query` (ms), and
/// the fanning-out m3query's (`via`, process `via_pid`) CPU time per query.
fn hop_row(label: &str, direct: &str, via: &str, via_pid: u32, query: &str, time: &str) {
    let n: usize = env("FANOUT_HOP_REPEAT", "300").parse().unwrap_or(300);
    let client = common::client();
    let mut via_cpu = 0.0;
    let mut timed_via = |n| {
        let cpu = cpu_seconds(via_pid);
        let v = time_query(&client, via, query, time, n);
        via_cpu += cpu_seconds(via_pid) - cpu;
        v
    };
    // Interleaved halves, so drift (other load, caches) hits both sides alike.
    let mut d = time_query(&client, direct, query, time, n / 2);
    let mut v = timed_via(n / 2);
    d.extend(time_query(&client, direct, query, time, n - n / 2));
    v.extend(timed_via(n - n / 2));
    d.sort();
    v.sort();
    // time_query sends 5 warm-up queries before the timed ones.
    let cpu_per_query_ms = via_cpu * 1000.0 / (n + 10) as f64;
    println!(
        "{label:<34} {:>8.2} {:>8.2} {:>8.2}   {:>8.2} {:>8.2} {:>8.2}   {:>+8.2}   {:>8.3}",
        pct(&d, 0.5),
        pct(&d, 0.9),
        pct(&d, 0.99),
        pct(&v, 0.5),
        pct(&v, 0.9),
        pct(&v, 0.99),
        pct(&v, 0.5) - pct(&d, 0.5),
        cpu_per_query_ms,
    );
}

/// The hop's fixed cost: see the module docs. `bench` is the Prometheus holding the bench's
/// data and that data's end (else one with a few series is started).
fn hop(bench: Option<(&Prometheus, u64)>) {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // 40 series of `up` over the last 10 minutes, for the hop's own stores.
    let instances: Vec<String> = (0..40).map(|i| format!("i-{i}")).collect();
    let data: Vec<common::TestSeries<'_>> = instances
        .iter()
        .enumerate()
        .map(|(i, instance)| {
            let end_ms = (now_s * 1000) as i64;
            (
                vec![
                    ("__name__", "up"),
                    ("job", ["a", "b", "c", "d"][i % 4]),
                    ("instance", instance.as_str()),
                ],
                (0..40)
                    .map(|t| (end_ms - 600_000 + t * 15_000, 1.0))
                    .collect(),
            )
        })
        .collect();
    let own;
    let (prom, prom_time, prom_query) = match bench {
        Some((p, end_s)) => (p, end_s.to_string(), "count(up)"),
        None => {
            own = receiver();
            let (status, body) = common::remote_write_v1(&own.url("/api/v1/write"), &data);
            assert!(status < 300, "{body}");
            (&own, now_s.to_string(), "sum by (job) (up)")
        }
    };
    let store = M3Query::start("");
    let (status, body) = common::remote_write_v1(&store.url("/api/v1/write"), &data);
    assert_eq!(status, 204, "{body}");
    // An m3query over `copies` remote stores, all reading `url`.
    let over_n = |url: String, copies: usize| {
        let stores: String = (0..copies)
            .map(|i| format!("  - name: s{i}\n    url: {url}\n"))
            .collect();
        M3Query::start_config(
            tempfile::tempdir().expect("tempdir"),
            &format!("storage:\n  enabled: false\nremoteRead:\n{stores}"),
            &[],
        )
    };
    let via_prom = over_n(prom.url("/api/v1/read"), 1);
    let via_store = over_n(store.url("/api/v1/read"), 1);
    let via_four = over_n(store.url("/api/v1/read"), 4);
    println!(
        "\n== the hop's fixed cost per query (ms): direct vs through m3query over that one store \
         (x4: over four copies of it); cpu/q: the fanning-out m3query's CPU ms per query"
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}   {:>8}   {:>8}",
        "store / query", "p50", "p90", "p99", "via p50", "via p90", "via p99", "+p50", "cpu/q"
    );
    hop_row(
        &format!("prometheus / {prom_query}"),
        &prom.url(""),
        &via_prom.url(""),
        via_prom.child.id(),
        prom_query,
        &prom_time,
    );
    let now = now_s.to_string();
    for q in ["sum by (job) (up)", "up"] {
        hop_row(
            &format!("m3query / {q}"),
            &store.url(""),
            &via_store.url(""),
            via_store.child.id(),
            q,
            &now,
        );
    }
    let q = "sum by (job) (up)";
    hop_row(
        &format!("m3query x4 / {q}"),
        &store.url(""),
        &via_four.url(""),
        via_four.child.id(),
        q,
        &now,
    );
    for (name, m) in [
        ("over prometheus", &via_prom),
        ("over m3query", &via_store),
        ("over m3query x4", &via_four),
    ] {
        let (threads, rss) = threads_and_peak_rss(m.child.id());
        println!("m3query {name:<16} threads {threads:>3}   peak RSS {rss:>6.1} MiB");
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if env("FANOUT_ONLY", "") == "hop" {
        hop(None);
        return;
    }
    let shared = common::shared_dir();
    let stores: Vec<Prometheus> = (0..4).map(|_| receiver()).collect();
    let all = receiver();
    let end_s = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        now - now % 3600
    };
    let write = |p: &Prometheus| p.url("/api/v1/write");
    let port = serve_router(Targets {
        by_job: vec![("api", write(&stores[0])), ("node", write(&stores[1]))],
        pair: (write(&stores[2]), write(&stores[3])),
        all: write(&all),
        // No hole: the pair's replicas hold the same data, so answers can match exactly.
        gap: (0, 0),
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let dataset = dir.path().join("dataset.json");
    let t0 = std::time::Instant::now();
    let out = Command::new("python3")
        .arg(shared.join("bench/gen_load.py"))
        .args(["--instances", &env("FANOUT_INSTANCES", "200")])
        .args(["--duration", &env("FANOUT_DURATION", "6h")])
        .args(["--end", &end_s.to_string(), "--workers", "4"])
        // No restarts by default: a counter that starts inside a rate window extrapolates
        // differently in Prometheus 2.42 (the reference) and 3.x (m3query), which would hide
        // real mismatches among the known ones. FANOUT_RESTARTS=0.05 is the harness default.
        .args(["--restart-prob", &env("FANOUT_RESTARTS", "0")])
        .arg("--meta")
        .arg(&dataset)
        .arg("--url")
        .arg(format!("http://127.0.0.1:{port}/api/v1/write"))
        .status()
        .expect("gen_load.py");
    assert!(out.success(), "gen_load.py failed");
    eprintln!("loaded in {:.0}s", t0.elapsed().as_secs_f64());

    let remote = |name: &str, p: &Prometheus, extra: &str| {
        format!(
            "  - name: {name}\n    url: {}\n{extra}",
            p.url("/api/v1/read")
        )
    };
    let limits = "limits:\n  perQuery:\n    maxFetchedSeries: 10000000\n";
    let fanout = M3Query::start_config(
        tempfile::tempdir().expect("tempdir"),
        &format!(
            "storage:\n  enabled: false\n{limits}remoteRead:\n{}{}{}{}",
            remote("store-api", &stores[0], ""),
            remote("store-node", &stores[1], ""),
            remote("pair-a", &stores[2], "    dedupLabels: [replica]\n"),
            remote("pair-b", &stores[3], "    dedupLabels: [replica]\n"),
        ),
        &[],
    );
    let single = M3Query::start_config(
        tempfile::tempdir().expect("tempdir"),
        &format!(
            "storage:\n  enabled: false\n{limits}remoteRead:\n{}",
            remote("all", &all, "")
        ),
        &[],
    );
    println!(
        "\n== m3query over 3 stores (4 Prometheus, one HA pair) vs one Prometheus with all data"
    );
    run_py(&shared, &all.url(""), &fanout.url(""), &dataset, &[]);
    println!("\n== the remote-read hop: m3query over that one Prometheus vs the Prometheus itself");
    run_py(&shared, &all.url(""), &single.url(""), &dataset, &[]);
    drop((fanout, single));
    hop(Some((&all, end_s)));
}
