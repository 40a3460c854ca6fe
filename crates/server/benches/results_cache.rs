//! What the range query results cache saves a dashboard: a cold 24h `query_range` against a
//! refresh of the same panel with its window moved by one step (and the clock with it), over
//! 200 counters x 24h at 15s, for an aggregated panel (`sum by (job) (rate(..[5m]))`, 4
//! series out) and a raw one (`rate(..[5m])`, 200 series x 5,761 points out).
//!
//!     cargo bench -p m3query-server --bench results_cache
//!
//! Both sides produce the response body, as the handler does: cold is the engine's
//! evaluation plus JSON encoding (the uncached path), refresh is the cache's lookup, the
//! evaluation of the fresh tail (`freshness` 10m: 41 steps) and the body's chunks, which
//! share the cached text (`refresh, copied` writes the body into one string instead). A
//! small harness rather than criterion (`rounds/mod.rs`): interleaved rounds, medians,
//! ratios against cold. `M3Q_BENCH_ROUNDS` (default 10) and `M3Q_BENCH_REQUESTS` (refreshes
//! per round, default 20; cold runs a quarter of that) tune it.
//!
//! Goal (issue 16): refresh <= 0.05x cold.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use m3query_promql::{Engine, EngineOptions, QueryOptions};
use m3query_server::results_cache::{Answer, CacheMetrics, RangeRequest, ResultsCache, Settings};
use m3query_storage::memory::MemStorage;
use m3query_storage::{Appendable, Context};

mod rounds;

const STEP: i64 = 15_000;
const DAY: i64 = 24 * 3_600_000;

/// 200 counters in 4 jobs at 15s from `from` to `to`.
fn store(from: i64, to: i64) -> MemStorage {
    let store = MemStorage::new();
    let mut app = store.appender();
    for i in 0..200 {
        let l = m3query_model::Labels::from_pairs([
            ("__name__", "http_requests_total".to_string()),
            ("job", format!("job-{}", i % 4)),
            ("instance", format!("host-{i}")),
        ]);
        let mut t = from;
        while t <= to {
            app.append(&l, t, ((t - from) / STEP * (i + 1)) as f64)
                .expect("append");
            t += STEP;
        }
    }
    app.commit().expect("commit");
    store
}

/// CPU time of the whole process: the engine spreads work over threads.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs one short round.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rounds = if smoke {
        1
    } else {
        rounds::env("M3Q_BENCH_ROUNDS", 10)
    };
    let n = if smoke {
        2
    } else {
        rounds::env("M3Q_BENCH_REQUESTS", 20) as i64
    };
    let total_refreshes = (rounds as i64 + 1) * n * 2 + 4;
    // "Now" starts at a day boundary plus a bit, as any time of day would.
    let now0 = 20_000 * DAY + 13 * 3_600_000;
    let data = store(now0 - DAY - 3_600_000, now0 + total_refreshes * STEP);
    let engine = Engine::new(EngineOptions::default());
    let opts = QueryOptions::default();
    let ctx = Context::background();

    for query in [
        "sum by (job) (rate(http_requests_total[5m]))",
        "rate(http_requests_total[5m])",
    ] {
        let now = Arc::new(AtomicI64::new(now0));
        let clock = now.clone();
        let cache = ResultsCache::new(
            Settings {
                max_bytes: 1 << 30,
                split_ms: DAY,
                freshness_ms: 600_000,
            },
            CacheMetrics::default(),
        )
        .with_clock(Arc::new(move || clock.load(Ordering::Relaxed)));
        let window = |k: i64| {
            let end = now0 + k * STEP;
            RangeRequest {
                query: query.into(),
                start_ms: end - DAY,
                end_ms: end,
                step_ms: STEP,
            }
        };
        // The dashboard's first load fills the cache.
        let mut k = 0;
        let mut body_bytes = [0usize; 2];
        let mut out = String::new();
        // The handler sends the assembled body as chunks sharing the cached text; `copy`
        // writes it into one string instead, to show what that copy would cost.
        let mut refresh = |out: &mut String, copy: bool| {
            k += 1;
            now.store(now0 + k * STEP, Ordering::Relaxed);
            let req = window(k);
            out.clear();
            match cache
                .range_query(&engine, &data, &ctx, &req, &opts)
                .expect("refresh")
            {
                Answer::Assembled(a) if copy => a.write_body(out),
                Answer::Assembled(a) => {
                    let chunks = a.into_chunks();
                    out.push_str(&format!(
                        "{}",
                        chunks.iter().map(|c| c.len()).sum::<usize>()
                    ));
                }
                Answer::Computed(r) => {
                    panic!(
                        "refresh answered uncached: {} series",
                        r.stats.series_fetched
                    )
                }
            }
        };
        refresh(&mut out, true);
        let cold = |out: &mut String| {
            let req = window(0);
            let r = engine
                .range_query(
                    &data,
                    &ctx,
                    &req.query,
                    req.start_ms,
                    req.end_ms,
                    req.step_ms,
                    &opts,
                )
                .expect("cold");
            out.clear();
            m3query_server::api::query::encode_response(out, &r);
        };
        let title = format!(
            "{rounds} rounds, {query} over 24h at 15s, 200 series: cold x {}, refresh x {n}",
            (n / 4).max(1)
        );
        let names = ["cold", "refresh", "refresh, copied"];
        rounds::run_and_report(&title, &names, "cpu med us", rounds, |i| {
            let reps = if i == 0 { (n / 4).max(1) } else { n };
            let (t0, c0) = (Instant::now(), process_cpu());
            for _ in 0..reps {
                match i {
                    0 => cold(&mut out),
                    1 => refresh(&mut out, false),
                    _ => refresh(&mut out, true),
                }
                if i != 1 {
                    body_bytes[i / 2] = out.len();
                }
            }
            (
                t0.elapsed().as_secs_f64() * 1e6 / reps as f64,
                (process_cpu() - c0).as_secs_f64() * 1e6 / reps as f64,
            )
        });
        println!(
            "body bytes: cold {}, refresh {}; cache holds {} bytes\n",
            body_bytes[0],
            body_bytes[1],
            cache.bytes()
        );
    }
}
