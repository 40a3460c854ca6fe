//! Times one query over synthetic data, phase by phase (a profiling aid):
//! `cargo run --release -p m3query-promql --example profile -- 'QUERY' [range|instant]`.

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
    let s = MemStorage::new();
    let mut app = s.appender();
    for job in 0..10 {
        for inst in 0..1000 {
            let l = Labels::from_pairs([
                ("__name__", "http_requests_total".to_string()),
                ("job", format!("job-{job}")),
                ("instance", format!("i-{inst}")),
            ]);
            for k in 0..=240i64 {
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
    for _ in 0..20 {
        let t = Instant::now();
        let r = if range {
            engine.range_query(&s, &ctx, &q, 0, 3_600_000, 60_000, &opts)
        } else {
            engine.instant_query(&s, &ctx, &q, 3_600_000, &opts)
        }
        .expect("query");
        println!("{:?} total; stats {:?}", t.elapsed(), r.stats);
    }
}
