//! Chunk encode and decode throughput on scrape-like data (15 s interval with jitter,
//! counters and gauges), 120 samples per chunk as the head cuts them; and the same samples
//! as dense chunks of 480, as blocks hold them.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use m3query_chunkenc::{DenseEncoder, DenseIterator, XorAppender, XorIterator, encode_dense};

fn chunks(n_chunks: usize) -> Vec<Vec<u8>> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n_chunks)
        .map(|c| {
            let mut a = XorAppender::new();
            let mut t = 1_700_000_000_000i64 + c as i64 * 1_800_000;
            let mut counter = 0.0f64;
            for _ in 0..120 {
                t += 15_000 + (rnd() % 5) as i64 - 2;
                let v = if c % 2 == 0 {
                    counter += (rnd() % 1000) as f64;
                    counter
                } else {
                    (rnd() % 10_000) as f64 / 100.0
                };
                a.append(t, v).expect("120 samples fit");
            }
            a.into_bytes()
        })
        .collect()
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

fn bench(c: &mut Criterion) {
    let cs = chunks(1000);
    let total: u64 = 120 * cs.len() as u64;
    let mut g = c.benchmark_group("xor");
    g.throughput(Throughput::Elements(total));
    g.bench_function("decode_append_range", |b| {
        let mut out = Vec::with_capacity(200);
        b.iter(|| {
            let mut n = 0;
            for ch in &cs {
                out.clear();
                let mut it = XorIterator::new(ch).expect("valid");
                it.append_range(i64::MIN, i64::MAX, &mut out)
                    .expect("valid");
                n += out.len();
            }
            black_box(n)
        })
    });
    g.bench_function("decode_append_range_thread_cpu_time", |b| {
        let mut out = Vec::with_capacity(200);
        b.iter_custom(|iters| {
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                let mut n = 0;
                for ch in &cs {
                    out.clear();
                    let mut it = XorIterator::new(ch).expect("valid");
                    it.append_range(i64::MIN, i64::MAX, &mut out)
                        .expect("valid");
                    n += out.len();
                }
                black_box(n);
            }
            thread_cpu_time() - t0
        })
    });
    g.bench_function("decode_next_sample", |b| {
        b.iter(|| {
            let mut sum = 0.0;
            for ch in &cs {
                let mut it = XorIterator::new(ch).expect("valid");
                while let Some((_, v)) = it.next_sample().expect("valid") {
                    sum += v;
                }
            }
            black_box(sum)
        })
    });
    let samples: Vec<(i64, f64)> = cs
        .iter()
        .flat_map(|ch| {
            let mut it = XorIterator::new(ch).expect("valid");
            let mut v = Vec::new();
            while let Some(s) = it.next_sample().expect("valid") {
                v.push(s);
            }
            v
        })
        .collect();
    g.bench_function("encode", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for ch in samples.chunks(120) {
                let mut a = XorAppender::new();
                for &(t, v) in ch {
                    a.append(t, v).expect("fits");
                }
                bytes += a.bytes().len();
            }
            black_box(bytes)
        })
    });
    g.finish();

    // The same samples as dense chunks of 480 (as blocks hold them).
    let mut g = c.benchmark_group("dense");
    g.throughput(Throughput::Elements(total));
    let as_samples: Vec<m3query_model::Sample> = samples
        .iter()
        .map(|&(t, v)| m3query_model::Sample::new(t, v))
        .collect();
    let dense: Vec<Vec<u8>> = as_samples
        .chunks(480)
        .map(|ch| encode_dense(ch).expect("encode"))
        .collect();
    let xor_bytes: usize = cs.iter().map(Vec::len).sum();
    let dense_bytes: usize = dense.iter().map(Vec::len).sum();
    eprintln!(
        "bench data: xor {:.2} bytes/sample, dense {:.2} bytes/sample",
        xor_bytes as f64 / total as f64,
        dense_bytes as f64 / total as f64
    );
    g.bench_function("decode_append_range_thread_cpu_time", |b| {
        let mut out = Vec::with_capacity(500);
        b.iter_custom(|iters| {
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                let mut n = 0;
                for ch in &dense {
                    out.clear();
                    let mut it = DenseIterator::new(ch).expect("valid");
                    it.append_range(i64::MIN, i64::MAX, &mut out)
                        .expect("valid");
                    n += out.len();
                }
                black_box(n);
            }
            thread_cpu_time() - t0
        })
    });
    // Scraped at a steady interval (no timestamp bits) with integer counters: the shape of
    // most block chunks, where the timestamps take no bits to decode.
    let steady: Vec<Vec<u8>> = as_samples
        .chunks(480)
        .enumerate()
        .map(|(c, ch)| {
            let t0 = 1_700_000_000_000i64 + c as i64 * 7_200_000;
            let mut counter = 0.0f64;
            let s: Vec<m3query_model::Sample> = ch
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    counter += (x.v.to_bits() % 1000) as f64;
                    m3query_model::Sample::new(t0 + i as i64 * 15_000, counter)
                })
                .collect();
            encode_dense(&s).expect("encode")
        })
        .collect();
    g.bench_function("decode_steady_counter_thread_cpu_time", |b| {
        let mut out = Vec::with_capacity(500);
        b.iter_custom(|iters| {
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                let mut n = 0;
                for ch in &steady {
                    out.clear();
                    let mut it = DenseIterator::new(ch).expect("valid");
                    it.append_range(i64::MIN, i64::MAX, &mut out)
                        .expect("valid");
                    n += out.len();
                }
                black_box(n);
            }
            thread_cpu_time() - t0
        })
    });
    // An instant query's window just after a head chunk cut: the last 20 samples of each
    // sealed 120-sample chunk (throughput counts the 20 returned per chunk).
    let sealed: Vec<(Vec<u8>, i64)> = as_samples
        .chunks(120)
        .map(|ch| (encode_dense(ch).expect("encode"), ch[ch.len() - 20].t))
        .collect();
    g.throughput(Throughput::Elements(20 * sealed.len() as u64));
    g.bench_function("last_20_of_120_thread_cpu_time", |b| {
        let mut out = Vec::with_capacity(120);
        b.iter_custom(|iters| {
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                let mut n = 0;
                for (ch, mint) in &sealed {
                    out.clear();
                    let mut it = DenseIterator::new(ch).expect("valid");
                    it.append_range(*mint, i64::MAX, &mut out).expect("valid");
                    n += out.len();
                }
                black_box(n);
            }
            thread_cpu_time() - t0
        })
    });
    g.throughput(Throughput::Elements(total));
    // What the head does when it seals a full chunk: 120 samples, thread CPU time.
    g.bench_function("encode_120_thread_cpu_time", |b| {
        let mut enc = DenseEncoder::new();
        let mut out = Vec::new();
        b.iter_custom(|iters| {
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                let mut bytes = 0;
                for ch in as_samples.chunks(120) {
                    out.clear();
                    enc.encode(ch, &mut out).expect("encode");
                    bytes += out.len();
                }
                black_box(bytes);
            }
            thread_cpu_time() - t0
        })
    });
    g.bench_function("encode", |b| {
        let mut enc = DenseEncoder::new();
        let mut out = Vec::new();
        b.iter(|| {
            let mut bytes = 0;
            for ch in as_samples.chunks(480) {
                out.clear();
                enc.encode(ch, &mut out).expect("encode");
                bytes += out.len();
            }
            black_box(bytes)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
