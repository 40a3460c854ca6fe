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

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;

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

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
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
}
