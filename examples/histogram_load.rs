//! Writes a native-histogram load in `tools/bench/capture_load.py`'s capture format, for
//! `remote_write_replay` to send to each server in turn (`tools/bench/histograms.sh`).
//!
//! ```sh
//! cargo run --release --example histogram_load -- OUT.bin [--series 200] [--duration 6h]
//!     [--end UNIX_SECONDS] [--schema 3] [--batch 250] [--seed 1]
//! ```
//!
//! Each series is a request-latency histogram as client_golang exposes one: integer counts
//! in exponential buckets of `--schema`, scraped every 15 s, 20-120 log-normal observations
//! per scrape around a per-series median, and a restart (counter reset) for about 5% of the
//! series per hour. Labels: `__name__="http_request_duration_seconds"`, `instance`, `job`
//! (4 jobs) and `handler` (5 handlers). Requests hold one scrape of up to `--batch` series, in
//! time order; batch `b` is worker `b`, so every series' samples arrive in order on replay.
//! Prints the series, samples, requests and the end time (for queries) when done.

use std::collections::BTreeMap;
use std::io::Write;

use m3query_model::histogram::{Histogram, Span};
use m3query_remote::histogram::v1::to_proto;
use m3query_remote::prompb;
use prost::Message;

/// xorshift64*: a small, seeded, reproducible generator (the load must be the same for both
/// servers and across runs).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// One series' state: cumulative counts per bucket index, as a client library keeps them.
struct Series {
    labels: Vec<prompb::Label>,
    median_ln: f64,
    buckets: BTreeMap<i32, u64>,
    zero: u64,
    count: u64,
    sum: f64,
}

impl Series {
    fn observe(&mut self, v: f64, schema: i32) {
        self.count += 1;
        self.sum += v;
        if v <= 2f64.powi(-128) {
            self.zero += 1;
            return;
        }
        // Bucket i holds (2^((i-1)/2^schema), 2^(i/2^schema)].
        let idx = (v.log2() * f64::from(1u32 << schema)).ceil() as i32;
        *self.buckets.entry(idx).or_insert(0) += 1;
    }

    fn reset(&mut self) {
        self.buckets.clear();
        self.zero = 0;
        self.count = 0;
        self.sum = 0.0;
    }

    /// The histogram as exposed: spans bridge gaps of up to two empty buckets (as
    /// client_golang does), bucket counts delta-encoded.
    fn histogram(&self, schema: i32) -> Histogram {
        let mut spans: Vec<Span> = Vec::new();
        let mut deltas = Vec::new();
        let (mut last_idx, mut last_count) = (0i32, 0i64);
        for (&i, &c) in &self.buckets {
            let gap = i - last_idx - 1;
            match spans.last_mut() {
                Some(s) if gap <= 2 => {
                    for _ in 0..gap {
                        deltas.push(-last_count);
                        last_count = 0;
                    }
                    s.length += gap as u32 + 1;
                }
                Some(_) => spans.push(Span::new(gap, 1)),
                None => spans.push(Span::new(i, 1)),
            }
            deltas.push(c as i64 - last_count);
            (last_idx, last_count) = (i, c as i64);
        }
        Histogram {
            schema,
            zero_threshold: 2f64.powi(-128),
            zero_count: self.zero,
            count: self.count,
            sum: self.sum,
            positive_spans: spans,
            positive_buckets: deltas,
            ..Histogram::default()
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name) {
        None => default,
        Some(i) => match args.get(i + 1).map(|s| s.parse()) {
            Some(Ok(v)) => v,
            _ => {
                eprintln!("histogram_load: {name} needs a value");
                std::process::exit(2);
            }
        },
    }
}

fn duration_secs(s: &str) -> Option<i64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    Some(
        n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return None,
        },
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().filter(|a| !a.starts_with("--")) else {
        eprintln!(
            "usage: histogram_load OUT.bin [--series N] [--duration 6h] [--end T] [--schema S] [--batch B] [--seed N]"
        );
        std::process::exit(2);
    };
    let n_series: usize = arg(&args, "--series", 200);
    let duration: String = arg(&args, "--duration", "6h".to_string());
    let Some(duration) = duration_secs(&duration) else {
        eprintln!("histogram_load: --duration like 90m, 6h or 1d");
        std::process::exit(2);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let end: i64 = arg(&args, "--end", now / 3600 * 3600);
    let schema: i32 = arg(&args, "--schema", 3);
    if !(-4..=8).contains(&schema) {
        eprintln!("histogram_load: --schema must be -4..=8");
        std::process::exit(2);
    }
    let batch: usize = arg::<usize>(&args, "--batch", 250).max(1);
    let mut rng = Rng(arg::<u64>(&args, "--seed", 1).max(1));

    let jobs = ["api", "web", "auth", "search"];
    let handlers = ["/", "/login", "/search", "/api/v1/items", "/health"];
    let mut series: Vec<Series> = (0..n_series)
        .map(|i| {
            let l = |n: &str, v: &str| prompb::Label {
                name: n.as_bytes().to_vec().into(),
                value: v.as_bytes().to_vec().into(),
            };
            Series {
                labels: vec![
                    l("__name__", "http_request_duration_seconds"),
                    l("handler", handlers[i % handlers.len()]),
                    l("instance", &format!("host-{:04}:9100", i / handlers.len())),
                    l("job", jobs[(i / handlers.len()) % jobs.len()]),
                ],
                // Medians from 5 ms to about 400 ms.
                median_ln: (0.005f64).ln() + 4.4 * rng.unit(),
                buckets: BTreeMap::new(),
                zero: 0,
                count: 0,
                sum: 0.0,
            }
        })
        .collect();

    let file = match std::fs::File::create(out) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("histogram_load: creating {out}: {e}");
            std::process::exit(2);
        }
    };
    let mut w = std::io::BufWriter::new(file);
    let (mut requests, mut samples) = (0u64, 0u64);
    let start = end - duration;
    let reset_p = 0.05 / 240.0; // per series per scrape: 5% per hour
    let mut t = start + 15;
    while t <= end {
        for (b, chunk) in series.chunks_mut(batch).enumerate() {
            let mut req = prompb::WriteRequest::default();
            for s in chunk.iter_mut() {
                if rng.unit() < reset_p {
                    s.reset();
                }
                let n = 20 + (rng.next() % 101) as usize;
                for _ in 0..n {
                    let v = (s.median_ln + 0.6 * rng.normal()).exp();
                    s.observe(v, schema);
                }
                let h = s.histogram(schema);
                req.timeseries.push(prompb::TimeSeries {
                    labels: s.labels.clone(),
                    histograms: vec![to_proto(t * 1000, &h)],
                    ..Default::default()
                });
            }
            let n = req.timeseries.len() as u32;
            let body = match snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("histogram_load: snappy: {e}");
                    std::process::exit(1);
                }
            };
            let rec = [b as u32, n, body.len() as u32];
            let res = rec
                .iter()
                .try_for_each(|x| w.write_all(&x.to_le_bytes()))
                .and_then(|()| w.write_all(&body));
            if let Err(e) = res {
                eprintln!("histogram_load: writing {out}: {e}");
                std::process::exit(1);
            }
            requests += 1;
            samples += u64::from(n);
        }
        t += 15;
    }
    if let Err(e) = w.flush() {
        eprintln!("histogram_load: writing {out}: {e}");
        std::process::exit(1);
    }
    println!("series {n_series} histogram_samples {samples} requests {requests} end {end}");
}
