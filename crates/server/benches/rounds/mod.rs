//! The harness both tracing benchmarks share (`crates/server/benches/tracing_overhead.rs`
//! in-process, `benches/tracing_http.rs` over loopback HTTP): the set-ups run interleaved,
//! round after round, rotating which goes first, so drift in machine load (other builds on a
//! shared 2-core box) hits all alike; the report gives the median and minimum of the
//! per-round mean latency, the median CPU time, and the ratios of the medians against the
//! first set-up.

/// A `usize` from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs one warm-up round and `rounds` counted ones; in each, `run(i)` runs set-up `i` and
/// returns its (wall, CPU) microseconds per request. Prints the table under `title`.
pub fn run_and_report(
    title: &str,
    names: &[&str],
    cpu_label: &str,
    rounds: usize,
    mut run: impl FnMut(usize) -> (f64, f64),
) {
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..=rounds {
        for k in 0..names.len() {
            let i = (round + k) % names.len();
            let (w, c) = run(i);
            if round > 0 {
                wall[i].push(w);
                cpu[i].push(c);
            }
        }
    }
    println!("{title}");
    println!(
        "{:<16} {:>12} {:>10} {:>14} {:>10} {:>10}",
        "set-up", "median us", "min us", cpu_label, "ratio", "cpu ratio"
    );
    let (base_w, base_c) = (median(&wall[0]), median(&cpu[0]));
    for (i, name) in names.iter().enumerate() {
        let (w, c) = (median(&wall[i]), median(&cpu[i]));
        let min = wall[i].iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{name:<16} {w:>12.3} {min:>10.3} {c:>14.3} {:>9.3}x {:>9.3}x",
            w / base_w,
            c / base_c
        );
    }
}
