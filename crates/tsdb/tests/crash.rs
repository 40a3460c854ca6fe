//! Crash safety: a writer process is SIGKILLed at random points, many times, while it
//! appends (floats and native histograms, in and out of order), cuts the head into blocks
//! and compacts them; after each kill every batch it had acknowledged must be there, and no
//! half-written block may survive opening.
//!
//! The writer is this test binary re-executed with `CHILD_ENV` set, running only
//! `crash_writer_child`; it prints `ACK <batch>` after each commit returns.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use m3query_model::histogram::Span;
use m3query_model::{Histogram, Labels, Matcher};
use m3query_storage::{
    Appendable, Context, HistogramSample, Queryable, SelectHints, collect_series,
};
use m3query_tsdb::{Db, Options};

const CHILD_ENV: &str = "M3QUERY_TSDB_CRASH_CHILD_DIR";
const START_ENV: &str = "M3QUERY_TSDB_CRASH_START";
const SERIES: usize = 25;
/// Series of native histograms: one in order per batch, and one out of order (from
/// batch `OOO_LAG` on, `OOO_LAG` batches back, between two in-order ones).
const HIST_SERIES: usize = 4;
const OOO_LAG: u64 = 5;
const STEP_MS: i64 = 100;

fn hist_labels(s: usize) -> Labels {
    Labels::from_pairs([("__name__", "crash_hist"), ("series", &*format!("h{s}"))])
}

/// The histogram series `s` gets with key `k` (its batch, or an out-of-order key).
fn hist(k: u64, s: usize) -> Histogram {
    let (a, b) = (k + s as u64, k % 7);
    Histogram {
        zero_threshold: 0.001,
        zero_count: 1,
        count: 1 + a + b,
        sum: k as f64 * 1.5 + s as f64,
        positive_spans: vec![Span::new(0, 2)],
        positive_buckets: vec![a as i64, b as i64 - a as i64],
        ..Histogram::default()
    }
}

/// The out-of-order histogram batch `b` appends: time and key.
fn ooo_hist_at(b: u64) -> Option<(i64, u64)> {
    (b >= OOO_LAG).then(|| ((b - OOO_LAG) as i64 * STEP_MS + STEP_MS / 2, 1_000_000 + b))
}

fn labels(s: usize) -> Labels {
    Labels::from_pairs([
        ("__name__", "crash_test"),
        ("series", &*format!("s{s:02}")),
        ("job", if s.is_multiple_of(3) { "a" } else { "b" }),
    ])
}

fn value(batch: u64, s: usize) -> f64 {
    (batch * 31 + s as u64) as f64 * 0.25
}

fn opts() -> Options {
    Options {
        // 20 batches per block: the head is cut and blocks compacted all the time.
        block_range_ms: 2000,
        out_of_order_window_ms: 2000,
        maintenance_interval_ms: 20,
        wal_segment_bytes: 64 << 10,
        ..Options::default()
    }
}

/// The writer. Does nothing unless re-executed by the parent test.
#[test]
fn crash_writer_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let start: u64 = std::env::var(START_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("start batch");
    let db = Db::open(&dir, opts()).expect("child opens the database");
    for batch in start.. {
        let mut app = db.appender();
        for s in 0..SERIES {
            app.append(&labels(s), batch as i64 * STEP_MS, value(batch, s))
                .expect("append");
        }
        for s in 0..HIST_SERIES {
            let l = hist_labels(s);
            app.append_int_histogram(&l, batch as i64 * STEP_MS, &hist(batch, s))
                .expect("append histogram");
            if let Some((t, k)) = ooo_hist_at(batch) {
                app.append_int_histogram(&l, t, &hist(k, s))
                    .expect("append out-of-order histogram");
            }
        }
        app.commit().expect("commit");
        println!("ACK {batch}");
    }
}

/// Deterministic pseudo-random numbers (no extra dependency).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn tmp_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-for-"))
        .collect()
}

fn leftover_tmp_dirs(dir: &Path) -> usize {
    tmp_dirs(dir).len()
}

#[test]
fn sigkill_at_random_points_loses_no_acknowledged_sample() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()));
    let mut max_acked: Option<u64> = None;
    let mut killed_mid_block = 0;
    let started = Instant::now();
    let cycles = 12;
    for cycle in 0..cycles {
        let start = max_acked.map_or(0, |m| m + 1);
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(START_ENV, start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let acks = Arc::new(Mutex::new(Vec::<u64>::new()));
        let out = child.stdout.take().expect("stdout");
        let reader = {
            let acks = acks.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    // libtest prints `test crash_writer_child ... ` before the first ACK, on
                    // the same line.
                    let ack = line.find("ACK ").map(|i| &line[i + 4..]);
                    if let Some(n) = ack.and_then(|n| n.trim().parse().ok()) {
                        acks.lock().expect("acks").push(n);
                    }
                }
            })
        };
        // Let it get going (open + replay), then kill it at a random point.
        let deadline = Instant::now() + Duration::from_secs(10);
        while acks.lock().expect("acks").is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if cycle % 2 == 1 {
            // Aim at a block write: kill as soon as a temp block directory shows up.
            let until = Instant::now() + Duration::from_millis(100 + rng.next() % 1500);
            while Instant::now() < until && leftover_tmp_dirs(dir.path()) == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        } else {
            std::thread::sleep(Duration::from_millis(50 + rng.next() % 700));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reader.join().expect("reader");
        let acks = acks.lock().expect("acks").clone();
        assert!(
            !acks.is_empty(),
            "cycle {cycle}: the writer acknowledged nothing"
        );
        assert!(acks.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(acks[0], start);
        max_acked = acks.last().copied();

        // A kill during a head cut or compaction leaves a temp block directory behind.
        let left = tmp_dirs(dir.path());
        if !left.is_empty() {
            killed_mid_block += 1;
        }
        // Every complete block verifies (checksums, stats), before and after opening.
        Db::verify_blocks(dir.path()).expect("blocks verify after the kill");
        let db = Db::open(
            dir.path(),
            Options {
                maintenance_interval_ms: 3_600_000,
                ..opts()
            },
        )
        .expect("reopen after SIGKILL");
        // (The opened database's own maintenance may be writing a block already.)
        let now = tmp_dirs(dir.path());
        assert!(
            left.iter().all(|n| !now.contains(n)),
            "open removes half-written blocks: {left:?} still in {now:?}"
        );
        let last = max_acked.expect("acked");
        let q = db.querier(0, last as i64 * STEP_MS).expect("querier");
        let mut set = q
            .select(
                &Context::background(),
                true,
                &SelectHints::default(),
                &[Matcher::equal("__name__", "crash_test")],
            )
            .expect("select");
        let (series, _) = collect_series(set.as_mut(), i64::MIN, i64::MAX).expect("read");
        assert_eq!(series.len(), SERIES, "cycle {cycle}");
        for s in &series {
            let idx: usize = s.labels.get("series").expect("label")[1..]
                .parse()
                .expect("index");
            // Every acknowledged batch, once, in order, with its value.
            let want: Vec<(i64, f64)> = (0..=last)
                .map(|b| (b as i64 * STEP_MS, value(b, idx)))
                .collect();
            let got: Vec<(i64, f64)> = s.samples.iter().map(|x| (x.t, x.v)).collect();
            assert_eq!(
                got.len(),
                want.len(),
                "cycle {cycle}, series {idx}: missing samples"
            );
            assert_eq!(got, want, "cycle {cycle}, series {idx}");
        }
        drop(set);
        // Histograms: every acknowledged one, in order and out of order, once; the
        // out-of-order one of the batch after the last acknowledged may be there (committed,
        // unacknowledged); nothing else.
        let mut set = q
            .select(
                &Context::background(),
                true,
                &SelectHints::default(),
                &[Matcher::equal("__name__", "crash_hist")],
            )
            .expect("select");
        let mut hist_series = 0;
        while let Some(hs) = set.next() {
            let hs = hs.expect("series");
            let idx: usize = hs.labels().get("series").expect("label")[1..]
                .parse()
                .expect("index");
            let mut got: Vec<HistogramSample> = Vec::new();
            hs.iter()
                .append_histograms(i64::MIN, i64::MAX, &mut got)
                .expect("read histograms");
            let key = |x: &Histogram| (x.count as f64, x.sum);
            let mut want: Vec<(i64, (f64, f64))> = (0..=last)
                .map(|b| (b as i64 * STEP_MS, key(&hist(b, idx))))
                .chain(
                    (0..=last)
                        .filter_map(ooo_hist_at)
                        .map(|(t, k)| (t, key(&hist(k, idx)))),
                )
                .collect();
            let maybe = ooo_hist_at(last + 1).map(|(t, k)| (t, key(&hist(k, idx))));
            let got: Vec<(i64, (f64, f64))> =
                got.iter().map(|x| (x.t, (x.h.count, x.h.sum))).collect();
            if let Some(m) = maybe
                && got.contains(&m)
            {
                want.push(m);
            }
            want.sort_by_key(|x| x.0);
            assert_eq!(got, want, "cycle {cycle}, histogram series {idx}");
            hist_series += 1;
        }
        assert_eq!(hist_series, HIST_SERIES, "cycle {cycle}");
        drop(set);
        drop(q);
        let m = db.metrics();
        db.close().expect("close");
        drop(db);
        eprintln!(
            "cycle {cycle}: acked batches {}..={last}, blocks {}, wal replay {:.3}s, mid-block kills so far {killed_mid_block}",
            start, m.blocks, m.wal_replay_seconds
        );
    }
    assert!(killed_mid_block > 0, "no kill landed during a block write");
    // Compactions happened (blocks above level 1) across the kills.
    let db = Db::open(dir.path(), opts()).expect("final open");
    let levels: Vec<u32> = db.blocks().iter().map(|b| b.compaction.level).collect();
    assert!(
        levels.iter().any(|&l| l > 1),
        "no compacted block: {levels:?}"
    );
    eprintln!(
        "{cycles} kills in {:.1}s, {killed_mid_block} during a block write; block levels {levels:?}",
        started.elapsed().as_secs_f64()
    );
}
