//! Times one query over synthetic data, phase by phase (a profiling aid):
//! `cargo run --release -p m3query-promql --example profile -- 'QUERY' [range|instant] [HOURS] [STEP_MS]`.

use std::time::Instant;

use m3query_model::Labels;
use m3query_promql::{Engine, EngineOptions, QueryOptions};
use m3query_storage::memory::MemStorage;
use m3query_storage::{Appendable, Context};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let q = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "rate(http_requests_total[5m])".into());
    let range = args.get(2).is_none_or(|m| m == "range");
    let hours: i64 = args.get(3).and_then(|h| h.parse().ok()).unwrap_or(1);
    let step: i64 = args.get(4).and_then(|h| h.parse().ok()).unwrap_or(60_000);
    let s = MemStorage::new();
    let mut app = s.appender();
    for job in 0..10 {
        for inst in 0..1000 {
            let l = Labels::from_pairs([
                ("__name__", "http_requests_total".to_string()),
                ("job", format!("job-{job}")),
                ("instance", format!("i-{inst}")),
            ]);
            for k in 0..=(hours * 240) {
                app.append(&l, k * 15_000, (k * (inst % 7 + 1)) as f64)
                    .expect("append");
            }
        }
    }
    app.commit().expect("commit");
    let engine = Engine::new(EngineOptions::default());
    let ctx = Context::background();
    let opts = QueryOptions {
        enable_stats: true,
        ..Default::default()
    };
    for _ in 0..5 {
        let cpu0 = cpu_time();
        let t = Instant::now();
        let r = if range {
            engine.range_query(&s, &ctx, &q, 0, hours * 3_600_000, step, &opts)
        } else {
            engine.instant_query(&s, &ctx, &q, hours * 3_600_000, &opts)
        }
        .expect("query");
        println!(
            "{:?} wall, {:?} cpu; stats {:?}",
            t.elapsed(),
            cpu_time().saturating_sub(cpu0),
            r.stats
        );
    }
}

/// CPU time of this process (all threads), from /proc (so load from other processes on the
/// machine does not count).
fn cpu_time() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the comm field.
    std::time::Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
