//! TSDB benchmarks: append throughput (1 and 2 threads, group commit), postings algebra,
//! and select + decode of 10k series over 6 h at a 15 s interval (4 h in blocks, 2 h in the
//! head, as after a back-dated load). Also prints RSS per series after that load.
//!
//! `cargo bench -p m3query-tsdb --bench tsdb`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use m3query_model::{LabelPairs, Labels, Matcher, Sample};
use m3query_storage::{Appendable, Context, Queryable, SelectHints};
use m3query_tsdb::{Db, Options, postings};

const H: i64 = 3_600_000;

fn series_labels(n: usize) -> Vec<Labels> {
    (0..n)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", "node_cpu_seconds_total"),
                ("instance", &*format!("host-{:05}:9100", i / 8)),
                ("job", "node"),
                ("cpu", &*(i % 8).to_string()),
                ("mode", "user"),
            ])
        })
        .collect()
}

fn value(i: usize, k: i64) -> f64 {
    let i = i as i64;
    if i % 2 == 0 {
        // A counter: integer increments that vary per scrape.
        (k * (i % 50 + 1) + (k * k * 7 + i) % 13) as f64
    } else {
        // A gauge moving in quarter steps.
        ((i * 31 + k * 17 + (k * k) % 23) % 400) as f64 / 4.0
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Appends batches of `per_batch` samples (one scrape of `per_batch` series) until
/// `iters` batches are done; returns the time taken.
fn append_batches(db: &Db, labels: &[Labels], start_k: i64, iters: u64) -> Duration {
    let t0 = Instant::now();
    for k in 0..iters as i64 {
        let kk = start_k + k;
        let mut app = db.appender();
        for (i, l) in labels.iter().enumerate() {
            app.append(l, kk * 15_000, value(i, kk)).expect("append");
        }
        app.commit().expect("commit");
    }
    t0.elapsed()
}

/// As [`append_batches`], through `append_samples` with borrowed label pairs (one sample per
/// series per batch), as the remote-write path appends.
fn append_batches_by_pairs(db: &Db, labels: &[Labels], start_k: i64, iters: u64) -> Duration {
    let pairs: Vec<Vec<(&str, &str)>> = labels
        .iter()
        .map(|l| l.iter().map(|x| (&*x.name, &*x.value)).collect())
        .collect();
    let t0 = Instant::now();
    for k in 0..iters as i64 {
        let kk = start_k + k;
        let mut app = db.appender();
        for (i, p) in pairs.iter().enumerate() {
            let s = [Sample::new(kk * 15_000, value(i, kk))];
            app.append_samples(LabelPairs::new(p).expect("sorted"), &s, &mut |_, e| {
                panic!("refused: {e}")
            })
            .expect("append");
        }
        app.commit().expect("commit");
    }
    t0.elapsed()
}

/// CPU time of the calling thread: per-core figures that do not depend on how busy the
/// (shared) machine is.
fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn bench_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let per_batch = 5000;
    g.throughput(Throughput::Elements(per_batch as u64));
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), Options::default()).expect("open");
        let labels = series_labels(per_batch);
        let mut k = 0i64;
        g.bench_function("1_thread_5000_samples_per_commit", |b| {
            b.iter_custom(|iters| {
                let d = append_batches(&db, &labels, k, iters);
                k += iters as i64;
                d
            })
        });
        g.bench_function(
            "1_thread_5000_samples_per_commit_by_pairs_thread_cpu_time",
            |b| {
                b.iter_custom(|iters| {
                    let t0 = thread_cpu_time();
                    append_batches_by_pairs(&db, &labels, k, iters);
                    k += iters as i64;
                    thread_cpu_time() - t0
                })
            },
        );
        // CPU spent by the appending thread (excludes time blocked in fsync).
        g.bench_function("1_thread_5000_samples_per_commit_thread_cpu_time", |b| {
            b.iter_custom(|iters| {
                let t0 = thread_cpu_time();
                append_batches(&db, &labels, k, iters);
                k += iters as i64;
                thread_cpu_time() - t0
            })
        });
    }
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(dir.path(), Options::default()).expect("open"));
        let all = series_labels(2 * per_batch);
        let halves: Vec<Vec<Labels>> = vec![all[..per_batch].to_vec(), all[per_batch..].to_vec()];
        let mut k = 0i64;
        // Each iteration is one batch per thread: 2 × 5000 samples.
        g.throughput(Throughput::Elements(2 * per_batch as u64));
        g.bench_function("2_threads_5000_samples_per_commit", |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                std::thread::scope(|s| {
                    for h in &halves {
                        let db = db.clone();
                        s.spawn(move || append_batches(&db, h, k, iters));
                    }
                });
                k += iters as i64;
                t0.elapsed()
            })
        });
    }
    g.finish();
}

fn bench_postings(c: &mut Criterion) {
    let mut g = c.benchmark_group("postings");
    let big: Vec<u32> = (0..1_000_000).map(|i| i * 2).collect();
    let big2: Vec<u32> = (0..1_000_000).map(|i| i * 3).collect();
    let small: Vec<u32> = (0..1000).map(|i| i * 1999).collect();
    g.throughput(Throughput::Elements(2_000_000));
    g.bench_function("intersect_1M_x_1M", |b| {
        b.iter(|| black_box(postings::intersect(&big, &big2).len()))
    });
    g.throughput(Throughput::Elements(1000));
    g.bench_function("intersect_1k_x_1M_galloping", |b| {
        b.iter(|| black_box(postings::intersect(&small, &big).len()))
    });
    g.throughput(Throughput::Elements(2_000_000));
    g.bench_function("union_1M_1M", |b| {
        b.iter(|| black_box(postings::union(&big, &big2).len()))
    });
    g.finish();
}

fn bench_select(c: &mut Criterion) {
    let n = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), Options::default()).expect("open");
    let labels = series_labels(n);
    let rss0 = rss_bytes();
    let base = 1_700_000_000_000i64 / (2 * H) * (2 * H);
    let steps = 6 * 240; // 6 h at 15 s
    let t0 = Instant::now();
    for k in 0..steps {
        let mut app = db.appender();
        for (i, l) in labels.iter().enumerate() {
            app.append(l, base + k * 15_000, value(i, k))
                .expect("append");
        }
        app.commit().expect("commit");
    }
    let load = t0.elapsed();
    db.run_maintenance().expect("maintenance");
    let m = db.metrics();
    let rss1 = rss_bytes();
    eprintln!(
        "loaded {} samples into {n} series in {:.2}s ({:.0} samples/s); blocks {}, head series {}, \
         head chunks {}, head chunk bytes {}, RSS +{} MiB = {} bytes/series, blocks {:.2} bytes/sample",
        n as i64 * steps,
        load.as_secs_f64(),
        (n as i64 * steps) as f64 / load.as_secs_f64(),
        m.blocks,
        m.head_series,
        m.head_chunks,
        m.head_chunk_bytes,
        (rss1.saturating_sub(rss0)) >> 20,
        rss1.saturating_sub(rss0) / n as u64,
        m.blocks_bytes as f64 / (n as f64 * 4.0 * 240.0),
    );
    let (mint, maxt) = (base, base + steps * 15_000);
    let ms = [Matcher::equal("__name__", "node_cpu_seconds_total")];
    let mut g = c.benchmark_group("select");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements((n as i64 * steps) as u64));
    g.bench_function("10k_series_6h_15s_decode_all", |b| {
        let mut buf: Vec<Sample> = Vec::with_capacity(2000);
        b.iter(|| {
            let q = db.querier(mint, maxt).expect("querier");
            let mut set = q
                .select(&Context::background(), true, &SelectHints::default(), &ms)
                .expect("select");
            let mut total = 0;
            while let Some(s) = set.next() {
                let s = s.expect("series");
                buf.clear();
                s.iter().append_range(mint, maxt, &mut buf).expect("decode");
                total += buf.len();
            }
            assert_eq!(total as i64, n as i64 * steps);
            black_box(total)
        })
    });
    g.bench_function("10k_series_6h_15s_decode_all_thread_cpu_time", |b| {
        let mut buf: Vec<Sample> = Vec::with_capacity(2000);
        b.iter_custom(|iters| {
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                let q = db.querier(mint, maxt).expect("querier");
                let mut set = q
                    .select(&Context::background(), true, &SelectHints::default(), &ms)
                    .expect("select");
                let mut total = 0;
                while let Some(s) = set.next() {
                    let s = s.expect("series");
                    buf.clear();
                    s.iter().append_range(mint, maxt, &mut buf).expect("decode");
                    total += buf.len();
                }
                black_box(total);
            }
            thread_cpu_time() - t0
        })
    });
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("10k_series_select_only_thread_cpu_time", |b| {
        b.iter_custom(|iters| {
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                let q = db.querier(mint, maxt).expect("querier");
                let mut set = q
                    .select(&Context::background(), true, &SelectHints::default(), &ms)
                    .expect("select");
                let mut k = 0;
                while let Some(s) = set.next() {
                    black_box(s.expect("series"));
                    k += 1;
                }
                black_box(k);
            }
            thread_cpu_time() - t0
        })
    });
    let inst = [
        Matcher::equal("__name__", "node_cpu_seconds_total"),
        Matcher::new(
            m3query_model::MatchOp::RegexMatch,
            "instance",
            "host-0001.*",
        )
        .expect("m"),
        Matcher::equal("cpu", "3"),
    ];
    g.throughput(Throughput::Elements(1));
    g.bench_function("postings_for_3_matchers_on_10k", |b| {
        b.iter(|| {
            let q = db.querier(mint, maxt).expect("querier");
            let mut set = q
                .select(&Context::background(), true, &SelectHints::default(), &inst)
                .expect("select");
            let mut k = 0;
            while let Some(s) = set.next() {
                black_box(s.expect("series"));
                k += 1;
            }
            black_box(k)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_append, bench_postings, bench_select);
criterion_main!(benches);
