//! Replays remote-write requests captured by `tools/bench/capture_load.py` against one target,
//! to measure ingest throughput without the Python generator sharing the CPU.
//!
//! ```sh
//! cargo run --release --example remote_write_replay -- load.bin \
//!     http://127.0.0.1:7201/api/v1/prom/remote/write [--workers 4]
//! ```
//!
//! Requests keep gen_load.py's order and sharding: group `g` goes to worker `g % workers`,
//! each worker sends its requests one after another, and the dispatcher feeds the workers
//! through bounded queues (4 deep, as gen_load.py), so every series' samples arrive in time
//! order and workers never drift far apart in time. Prints requests, samples, wall time,
//! samples/s and any non-2xx answers.

use std::io::Read;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(file), Some(url)) = (args.first(), args.get(1)) else {
        eprintln!("usage: remote_write_replay FILE URL [--workers N]");
        std::process::exit(2);
    };
    let workers: usize = args
        .iter()
        .position(|a| a == "--workers")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
        .max(1);
    let mut data = Vec::new();
    if let Err(e) = std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut data)) {
        eprintln!("reading {file}: {e}");
        std::process::exit(2);
    }
    let mut reqs: Vec<(usize, u64, Vec<u8>)> = Vec::new();
    let mut pos = 0;
    let u32_at = |p: usize| -> Option<u32> {
        data.get(p..p + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    while pos < data.len() {
        let (Some(w), Some(n), Some(len)) = (u32_at(pos), u32_at(pos + 4), u32_at(pos + 8)) else {
            eprintln!("truncated record at byte {pos}");
            std::process::exit(2);
        };
        let start = pos + 12;
        let Some(body) = data.get(start..start + len as usize) else {
            eprintln!("truncated body at byte {start}");
            std::process::exit(2);
        };
        reqs.push((w as usize, u64::from(n), body.to_vec()));
        pos = start + len as usize;
    }
    drop(data);
    let total_samples: u64 = reqs.iter().map(|r| r.1).sum();
    let mut txs = Vec::new();
    let mut handles = Vec::new();
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    for _ in 0..workers {
        let (tx, rx) = sync_channel::<Vec<u8>>(4);
        txs.push(tx);
        let url = url.clone();
        let failures = failures.clone();
        handles.push(std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .expect("HTTP client");
            for body in rx {
                let r = client
                    .post(&url)
                    .header("Content-Encoding", "snappy")
                    .header("Content-Type", "application/x-protobuf")
                    .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                    .body(body)
                    .send();
                match r {
                    Ok(resp) if resp.status().is_success() => {}
                    Ok(resp) => {
                        let s = resp.status();
                        let t = resp.text().unwrap_or_default();
                        failures
                            .lock()
                            .expect("lock")
                            .push(format!("{s}: {}", t.chars().take(200).collect::<String>()));
                    }
                    Err(e) => failures.lock().expect("lock").push(e.to_string()),
                }
            }
        }));
    }
    let n = reqs.len();
    let t0 = Instant::now();
    for (w, _, body) in reqs {
        if txs[w % workers].send(body).is_err() {
            break;
        }
    }
    drop(txs);
    for h in handles {
        if h.join().is_err() {
            failures
                .lock()
                .expect("lock")
                .push("a sender thread panicked".into());
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let f = failures.lock().expect("lock");
    println!(
        "{n} requests, {total_samples} samples in {wall:.2}s: {:.0} samples/s, {} failed",
        total_samples as f64 / wall,
        f.len()
    );
    for e in f.iter().take(5) {
        println!("  {e}");
    }
    if !f.is_empty() {
        std::process::exit(1);
    }
}
