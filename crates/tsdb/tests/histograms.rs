//! Native histograms in the TSDB, checked against `MemStorage` (the storage seam's reference)
//! for the same appends: in the head, after a restart (WAL replay), after a checkpoint, after
//! head cuts into blocks and after compaction; plus refusals, stale markers, a torn WAL tail
//! and label lookups of histogram-only series.

use std::collections::BTreeMap;

use m3query_model::histogram::{CounterResetHint, Span};
use m3query_model::{FloatHistogram, Histogram, Labels, Matcher, STALE_NAN};
use m3query_storage::memory::MemStorage;
use m3query_storage::{
    Appendable, Context, Error as SError, HistogramSample, LabelHints, Queryable, SelectHints,
};
use m3query_tsdb::{Db, Fsync, Options};

/// One sample as a reader sees it, normalised for comparison: stale markers of either kind
/// are one value (Prometheus's head stores a stale float after a histogram as a histogram
/// stale marker; `MemStorage` keeps the float), histograms without empty buckets (chunks
/// may add some for their layout).
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Float(u64),
    Hist(CounterResetHint, FloatHistogram),
    Stale,
}

type Dump = BTreeMap<Labels, Vec<(i64, Item)>>;

fn dump(q: &dyn Queryable, mint: i64, maxt: i64) -> Dump {
    let q = q.querier(mint, maxt).expect("querier");
    let mut set = q
        .select(
            &Context::background(),
            true,
            &SelectHints::default(),
            &[Matcher::new(m3query_model::MatchOp::RegexMatch, "__name__", ".+").expect("ok")],
        )
        .expect("select");
    let mut out = Dump::new();
    while let Some(s) = set.next() {
        let s = s.expect("series");
        let mut floats = Vec::new();
        s.iter()
            .append_range(i64::MIN, i64::MAX, &mut floats)
            .expect("floats");
        let mut hists: Vec<HistogramSample> = Vec::new();
        s.iter()
            .append_histograms(i64::MIN, i64::MAX, &mut hists)
            .expect("histograms");
        let mut items: Vec<(i64, Item)> = floats
            .iter()
            .map(|f| {
                let it = if m3query_model::is_stale_nan(f.v) {
                    Item::Stale
                } else {
                    Item::Float(f.v.to_bits())
                };
                (f.t, it)
            })
            .collect();
        for h in hists {
            let it = if h.is_stale() {
                Item::Stale
            } else {
                let mut c = (*h.h).clone();
                c.compact(0);
                Item::Hist(h.h.counter_reset_hint, c)
            };
            items.push((h.t, it));
        }
        items.sort_by_key(|x| x.0);
        assert!(
            items.windows(2).all(|w| w[0].0 < w[1].0),
            "one sample per timestamp: {items:?}"
        );
        if !items.is_empty() {
            out.insert(s.labels().clone(), items);
        }
    }
    out
}

fn assert_same(db: &Db, mem: &MemStorage, what: &str) {
    assert_same_with(db, mem, &Ooo::default(), what);
}

/// As [`assert_same`], with the out-of-order histograms `ooo` holds merged into what
/// `MemStorage` (which refuses samples out of order) has.
fn assert_same_with(db: &Db, mem: &MemStorage, ooo: &Ooo, what: &str) {
    let a = dump(db, i64::MIN, i64::MAX);
    let mut b = dump(mem, i64::MIN, i64::MAX);
    for (l, samples) in &ooo.committed {
        let items = b.entry(l.clone()).or_default();
        items.extend(samples.iter().map(|(t, it)| (*t, it.clone())));
        items.sort_by_key(|x| x.0);
    }
    for (l, want) in &b {
        let got = a
            .get(l)
            .unwrap_or_else(|| panic!("{what}: series {l} missing"));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "{what}: {l} sample {i}");
        }
        assert_eq!(got.len(), want.len(), "{what}: {l} sample count");
    }
    assert_eq!(a.len(), b.len(), "{what}: series count");
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An integer histogram from absolute bucket counts (schema `schema`, buckets from index 0).
fn int_hist(schema: i32, zero: u64, abs: &[u64], hint: CounterResetHint) -> Histogram {
    let mut prev = 0i64;
    let deltas = abs
        .iter()
        .map(|&a| {
            let d = a as i64 - prev;
            prev = a as i64;
            d
        })
        .collect();
    Histogram {
        counter_reset_hint: hint,
        schema,
        zero_threshold: 0.001,
        zero_count: zero,
        count: zero + abs.iter().sum::<u64>(),
        sum: abs.iter().sum::<u64>() as f64 * 1.5,
        positive_spans: vec![Span::new(0, abs.len() as u32)],
        positive_buckets: deltas,
        ..Histogram::default()
    }
}

/// The state a generated series' next histogram grows from.
struct Gen {
    schema: i32,
    zero: u64,
    abs: Vec<u64>,
    gauge: bool,
}

impl Gen {
    fn step(&mut self, r: &mut Rng) -> (Histogram, bool) {
        let mut hint = if self.gauge {
            CounterResetHint::Gauge
        } else {
            CounterResetHint::Unknown
        };
        match r.below(20) {
            // A counter reset, sometimes said explicitly.
            0 | 1 => {
                self.zero = r.below(2);
                for a in &mut self.abs {
                    *a = r.below(3);
                }
                if r.below(2) == 0 && !self.gauge {
                    hint = CounterResetHint::CounterReset;
                }
            }
            // A new bucket.
            2 if self.abs.len() < 6 => self.abs.push(r.below(4)),
            // A schema change (a layout change: cuts a chunk).
            3 => self.schema = if self.schema == 0 { 1 } else { 0 },
            // An explicit "no reset" on a growing histogram.
            4 if !self.gauge => {
                hint = CounterResetHint::NotCounterReset;
                for a in &mut self.abs {
                    *a += r.below(5);
                }
            }
            _ => {
                self.zero += r.below(2);
                for a in &mut self.abs {
                    *a += r.below(5);
                }
            }
        }
        let h = int_hist(self.schema, self.zero, &self.abs, hint);
        // Sometimes sent as a float histogram (a kind change cuts a chunk).
        (h, r.below(6) == 0)
    }
}

fn opts() -> Options {
    Options {
        block_range_ms: 60_000,
        retention_ms: 0,
        fsync: Fsync::Never,
        maintenance_interval_ms: 3_600_000,
        ..Options::default()
    }
}

fn name(i: usize) -> Labels {
    Labels::from_pairs([
        (
            "__name__",
            if i.is_multiple_of(3) { "mixed" } else { "hist" },
        ),
        ("i", &*i.to_string()),
    ])
}

/// The model of what appends out of order (which `MemStorage` refuses) leave in the TSDB:
/// per series, the out-of-order histograms committed (as they read back: hint `Unknown`, a
/// gauge's `Gauge`), the newest in-order sample's time and every timestamp used.
#[derive(Default)]
struct Ooo {
    /// Whether appends go out of order at all (an out-of-order window is configured).
    enabled: bool,
    committed: BTreeMap<Labels, Vec<(i64, Item)>>,
    newest: BTreeMap<Labels, i64>,
    used: BTreeMap<Labels, std::collections::BTreeSet<i64>>,
    /// This transaction's: out-of-order histograms, newest times, used times.
    pending: Vec<(Labels, i64, Item)>,
    pending_newest: BTreeMap<Labels, i64>,
    pending_used: Vec<(Labels, i64)>,
    appended: usize,
}

impl Ooo {
    fn newest(&self, l: &Labels) -> Option<i64> {
        self.pending_newest.get(l).or(self.newest.get(l)).copied()
    }

    fn used(&self, l: &Labels, t: i64) -> bool {
        self.used.get(l).is_some_and(|u| u.contains(&t))
            || self.pending_used.iter().any(|(pl, pt)| pl == l && *pt == t)
    }

    /// An in-order sample both stores accepted.
    fn in_order(&mut self, l: &Labels, t: i64) {
        if self.newest(l).is_none_or(|n| t > n) {
            self.pending_newest.insert(l.clone(), t);
        }
        self.pending_used.push((l.clone(), t));
    }

    fn end(&mut self, commit: bool) {
        let pending = std::mem::take(&mut self.pending);
        let newest = std::mem::take(&mut self.pending_newest);
        let used = std::mem::take(&mut self.pending_used);
        if !commit {
            return;
        }
        self.appended += pending.len();
        for (l, t, it) in pending {
            let v = self.committed.entry(l).or_default();
            v.push((t, it));
            v.sort_by_key(|x| x.0);
        }
        self.newest.extend(newest);
        for (l, t) in used {
            self.used.entry(l).or_default().insert(t);
        }
    }
}

/// Appends the same random operations to both stores; returns the next timestamp.
fn random_appends(db: &Db, mem: &MemStorage, seed: u64, start: i64, rounds: usize) -> i64 {
    random_appends_with(db, mem, &mut Ooo::default(), seed, start, rounds)
}

/// As [`random_appends`]; with `ooo.enabled`, older histograms go out of order to the TSDB
/// alone (tracked in `ooo`) where the series has newer samples.
fn random_appends_with(
    db: &Db,
    mem: &MemStorage,
    ooo: &mut Ooo,
    seed: u64,
    start: i64,
    rounds: usize,
) -> i64 {
    let mut r = Rng(seed | 1);
    let n = 6;
    let mut gens: Vec<Gen> = (0..n)
        .map(|i| Gen {
            schema: 0,
            zero: 0,
            abs: vec![1, 2],
            gauge: i == 4,
        })
        .collect();
    let mut t = start;
    for _ in 0..rounds {
        let mut a = db.appender();
        let mut b = mem.appender();
        for _ in 0..1 + r.below(8) {
            let i = r.below(n as u64) as usize;
            let l = name(i);
            t += 1 + r.below(2000) as i64;
            let kind = match r.below(10) {
                // More out-of-order appends where they are accepted.
                3 if ooo.enabled => 2,
                k => k,
            };
            // The timestamp appended at.
            let mut at = t;
            let (ra, rb) = match kind {
                // Floats: in mixed series, and stale markers anywhere.
                0 if i.is_multiple_of(3) => (a.append(&l, t, t as f64), b.append(&l, t, t as f64)),
                1 => (a.append(&l, t, STALE_NAN), b.append(&l, t, STALE_NAN)),
                // Out of order, or at a stored timestamp: refused by both without an
                // out-of-order window; with one, stored by the TSDB out of order.
                2 => {
                    let (h, float) = gens[i].step(&mut r);
                    let back = if ooo.enabled { 15_000 } else { 3000 };
                    let old = t - 1 - r.below(back) as i64;
                    if ooo.enabled && ooo.newest(&l).is_some_and(|n| old < n) {
                        if ooo.used(&l, old) {
                            // One sample per timestamp: refused or (in a block) kept apart;
                            // `refusals_and_reads_within_the_out_of_order_window` checks those.
                            continue;
                        }
                        let mut want = h.to_float();
                        let res = if float {
                            want.mul(0.25);
                            a.append_histogram(&l, old, &want)
                        } else {
                            a.append_int_histogram(&l, old, &h)
                        };
                        res.unwrap_or_else(|e| panic!("out of order at {old}: {e}"));
                        want.counter_reset_hint = if gens[i].gauge {
                            CounterResetHint::Gauge
                        } else {
                            CounterResetHint::Unknown
                        };
                        want.compact(0);
                        let hint = want.counter_reset_hint;
                        ooo.pending.push((l.clone(), old, Item::Hist(hint, want)));
                        ooo.pending_used.push((l, old));
                        continue;
                    }
                    at = old;
                    (
                        a.append_int_histogram(&l, old, &h),
                        b.append_int_histogram(&l, old, &h),
                    )
                }
                _ => {
                    let (h, float) = gens[i].step(&mut r);
                    if float {
                        let mut f = h.to_float();
                        f.mul(0.5);
                        (a.append_histogram(&l, t, &f), b.append_histogram(&l, t, &f))
                    } else {
                        (
                            a.append_int_histogram(&l, t, &h),
                            b.append_int_histogram(&l, t, &h),
                        )
                    }
                }
            };
            match (&ra, &rb) {
                (Ok(()), Ok(())) => {
                    ooo.in_order(&l, at);
                }
                (Err(x), Err(y)) => assert_eq!(
                    std::mem::discriminant(x),
                    std::mem::discriminant(y),
                    "{x} vs {y}"
                ),
                _ => panic!("tsdb {ra:?}, memory {rb:?} (kind {kind})"),
            }
        }
        if r.below(10) == 0 {
            a.rollback();
            b.rollback();
            ooo.end(false);
        } else {
            a.commit().expect("commit");
            b.commit().expect("commit");
            ooo.end(true);
        }
    }
    t
}

#[test]
fn histograms_read_back_as_from_memstorage_through_restarts_checkpoints_and_blocks() {
    for seed in [1u64, 7, 42, 1234, 99_991] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mem = MemStorage::new();
        let db = Db::open(dir.path(), opts()).expect("open");
        let mut t = random_appends(&db, &mem, seed, 0, 60);
        assert_same(&db, &mem, "head");
        // The appends exercise every hint a reader can see.
        let hints: std::collections::HashSet<String> = dump(&mem, i64::MIN, i64::MAX)
            .values()
            .flatten()
            .filter_map(|(_, it)| match it {
                Item::Hist(h, _) => Some(format!("{h:?}")),
                _ => None,
            })
            .collect();
        assert_eq!(hints.len(), 4, "seed {seed}: {hints:?}");
        drop(db);
        let db = Db::open(dir.path(), opts()).expect("reopen");
        assert_same(&db, &mem, "after WAL replay");
        t = random_appends(&db, &mem, seed * 3, t, 80);
        // Maintenance cuts the oldest windows into blocks and checkpoints the rest.
        db.run_maintenance().expect("maintenance");
        assert!(
            db.metrics().checkpoints_total > 0,
            "seed {seed}: checkpointed"
        );
        assert!(!db.blocks().is_empty(), "seed {seed}: head cut");
        assert_same(&db, &mem, "after a head cut");
        drop(db);
        let db = Db::open(dir.path(), opts()).expect("reopen");
        assert_same(&db, &mem, "after a checkpoint's replay");
        random_appends(&db, &mem, seed * 5, t, 40);
        db.flush_head().expect("flush");
        assert_same(&db, &mem, "all in blocks");
        for _ in 0..5 {
            db.run_maintenance().expect("maintenance");
        }
        assert!(
            db.blocks().iter().any(|b| b.compaction.level > 1),
            "seed {seed}: compacted: {:?}",
            db.blocks()
        );
        assert_same(&db, &mem, "after compaction");
        assert_eq!(
            Db::verify_blocks(dir.path()).expect("verify"),
            db.blocks().len()
        );
        let hist_samples: u64 = db
            .blocks()
            .iter()
            .map(|b| b.stats.num_histogram_samples)
            .sum();
        assert!(hist_samples > 0);
        assert!(db.blocks().iter().all(|b| b.version >= 2));
    }
}

/// Out-of-order histograms within the window read back merged in time order with the
/// in-order stream (their hints `Unknown`, a gauge's `Gauge`; the in-order samples' hints
/// as without them), through restarts (WAL types 8 and 9), checkpoints, head cuts (into
/// blocks overlapping earlier ones) and compaction.
#[test]
fn out_of_order_histograms_through_restarts_checkpoints_and_compaction() {
    let opts = || Options {
        out_of_order_window_ms: 3_600_000,
        ..opts()
    };
    for seed in [3u64, 11, 4242] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mem = MemStorage::new();
        let mut ooo = Ooo {
            enabled: true,
            ..Ooo::default()
        };
        let db = Db::open(dir.path(), opts()).expect("open");
        let mut t = random_appends_with(&db, &mem, &mut ooo, seed, 0, 60);
        assert!(
            ooo.appended > 5,
            "seed {seed}: {} out of order",
            ooo.appended
        );
        assert_same_with(&db, &mem, &ooo, "head");
        assert_eq!(
            db.metrics().out_of_order_samples_appended_total,
            ooo.appended as u64
        );
        drop(db);
        let db = Db::open(dir.path(), opts()).expect("reopen");
        assert_same_with(&db, &mem, &ooo, "after WAL replay");
        t = random_appends_with(&db, &mem, &mut ooo, seed * 3, t, 80);
        db.run_maintenance().expect("maintenance");
        assert!(!db.blocks().is_empty(), "seed {seed}: head cut");
        assert_same_with(&db, &mem, &ooo, "after a head cut");
        // Out of order below the cut: into the head, later into a block overlapping others.
        let cut = db
            .blocks()
            .iter()
            .map(|b| b.max_time)
            .max()
            .unwrap_or(i64::MIN);
        let before = ooo.appended;
        t = random_appends_with(&db, &mem, &mut ooo, seed * 7, t, 40);
        assert_same_with(&db, &mem, &ooo, "out of order below a head cut");
        // And far older ones, into windows already in blocks.
        let mut app = db.appender();
        for i in 0..6 {
            let l = name(i);
            for k in 0..5u64 {
                let at = cut - 1 - k as i64 * 7919 - i as i64 * 13;
                if ooo.used(&l, at) || ooo.newest(&l).is_none_or(|n| n <= at) {
                    continue;
                }
                app.append_int_histogram(&l, at, &h(k + 1))
                    .expect("out of order into a persisted window");
                let mut want = h(k + 1).to_float();
                want.compact(0);
                ooo.pending
                    .push((l.clone(), at, Item::Hist(CounterResetHint::Unknown, want)));
                ooo.pending_used.push((l.clone(), at));
            }
        }
        app.commit().expect("commit");
        ooo.end(true);
        assert!(ooo.appended - before > 20, "seed {seed}");
        assert_same_with(&db, &mem, &ooo, "out of order into persisted windows");

        drop(db);
        let db = Db::open(dir.path(), opts()).expect("reopen");
        assert_same_with(&db, &mem, &ooo, "after a checkpoint's replay");
        random_appends_with(&db, &mem, &mut ooo, seed * 5, t, 40);
        assert_same_with(&db, &mem, &ooo, "head after a checkpoint's replay");
        db.flush_head().expect("flush");
        assert_same_with(&db, &mem, &ooo, "all in blocks");

        for _ in 0..5 {
            db.run_maintenance().expect("maintenance");
        }
        assert!(
            db.blocks().iter().any(|b| b.compaction.level > 1),
            "seed {seed}: compacted: {:?}",
            db.blocks()
        );
        assert_same_with(&db, &mem, &ooo, "after compaction");
        assert_eq!(
            Db::verify_blocks(dir.path()).expect("verify"),
            db.blocks().len()
        );
        drop(db);
        let db = Db::open(dir.path(), opts()).expect("reopen");
        assert_same_with(&db, &mem, &ooo, "reopened after compaction");
    }
}

fn h(count: u64) -> Histogram {
    int_hist(0, 0, &[count, count], CounterResetHint::Unknown)
}

fn hists_of(db: &Db, l: &Labels) -> Vec<HistogramSample> {
    let q = db.querier(i64::MIN, i64::MAX).expect("querier");
    let ms: Vec<Matcher> = l
        .iter()
        .map(|x| Matcher::equal(&*x.name, &*x.value))
        .collect();
    let mut set = q
        .select(&Context::background(), true, &SelectHints::default(), &ms)
        .expect("select");
    let mut out = Vec::new();
    if let Some(s) = set.next() {
        s.expect("series")
            .iter()
            .append_histograms(i64::MIN, i64::MAX, &mut out)
            .expect("read");
    }
    out
}

#[test]
fn refusals_follow_prometheus_and_floats_share_the_time_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), opts()).expect("open");
    let l = Labels::from_pairs([("__name__", "h")]);
    let mut app = db.appender();
    app.append_int_histogram(&l, 1000, &h(1)).expect("first");
    app.append_int_histogram(&l, 2000, &h(2)).expect("second");
    assert!(matches!(
        app.append_int_histogram(&l, 1500, &h(3)),
        Err(SError::OutOfOrderSample)
    ));
    assert!(matches!(
        app.append_int_histogram(&l, 2000, &h(3)),
        Err(SError::DuplicateSampleForTimestamp)
    ));
    // The same histogram again is a duplicate, accepted (as Prometheus).
    app.append_int_histogram(&l, 2000, &h(2))
        .expect("exact duplicate");
    // A float where a histogram is, and the other way round.
    assert!(matches!(
        app.append(&l, 2000, 1.0),
        Err(SError::DuplicateSampleForTimestamp)
    ));
    app.append(&l, 3000, 1.0).expect("a float after");
    assert!(matches!(
        app.append_int_histogram(&l, 3000, &h(2)),
        Err(SError::DuplicateSampleForTimestamp)
    ));
    // An invalid histogram (count disagrees with its buckets) is refused, alone.
    let mut bad = h(4);
    bad.count = 1;
    let e = app.append_int_histogram(&l, 4000, &bad);
    assert!(
        matches!(&e, Err(e @ SError::InvalidSample(_)) if e.is_sample_error()),
        "{e:?}"
    );
    app.commit().expect("commit");
    // Committed: the same rules against stored samples; a retry of a stored histogram is
    // accepted (its first acknowledgement may have been lost).
    let mut app = db.appender();
    assert!(matches!(
        app.append_int_histogram(&l, 2500, &h(9)),
        Err(SError::OutOfOrderSample)
    ));
    app.append_int_histogram(&l, 1000, &h(1))
        .expect("retry of a stored histogram");
    assert!(matches!(
        app.append_int_histogram(&l, 1000, &h(7)),
        Err(SError::OutOfOrderSample)
    ));
    assert!(matches!(
        app.append_int_histogram(&l, 3000, &h(7)),
        Err(SError::DuplicateSampleForTimestamp)
    ));
    app.commit().expect("commit");
    let got = hists_of(&db, &l);
    assert_eq!(
        got.iter().map(|s| s.t).collect::<Vec<_>>(),
        vec![1000, 2000]
    );
    let m = db.metrics();
    assert_eq!(m.histogram_samples_appended_total, 2);
    assert_eq!(m.samples_appended_total, 3);
    assert!(m.head_histogram_chunk_bytes > 0);
    assert!(m.head_chunk_bytes > m.head_histogram_chunk_bytes);
    assert!(m.refused_out_of_order_total >= 3);
    // Within an out-of-order window older histograms are accepted, as floats are: one
    // sample per timestamp, a retry accepted.
    drop(db);
    let ooo_opts = || Options {
        out_of_order_window_ms: 10_000,
        ..opts()
    };
    let db = Db::open(dir.path(), ooo_opts()).expect("reopen");
    let mut app = db.appender();
    let mut reset = h(9);
    reset.counter_reset_hint = CounterResetHint::CounterReset;
    app.append_int_histogram(&l, 2500, &reset)
        .expect("an out-of-order histogram");
    app.append(&l, 2600, 5.0).expect("an out-of-order float");
    assert!(
        matches!(
            app.append(&l, 2000, 5.0),
            Err(SError::DuplicateSampleForTimestamp)
        ),
        "no out-of-order float where a histogram is"
    );
    app.commit().expect("commit");
    let mut app = db.appender();
    let refused = [
        (2000, h(7), "another histogram at an in-order one's time"),
        (
            2500,
            h(8),
            "another histogram at an out-of-order one's time",
        ),
        (2600, h(1), "a histogram at an out-of-order float's time"),
        (3000, h(1), "a histogram at the newest float's time"),
    ];
    for (t, x, why) in refused {
        assert!(
            matches!(
                app.append_int_histogram(&l, t, &x),
                Err(SError::DuplicateSampleForTimestamp)
            ),
            "{why}"
        );
    }
    app.append_int_histogram(&l, 2000, &h(2))
        .expect("retry of an in-order histogram");
    app.append_int_histogram(&l, 2500, &h(9))
        .expect("retry of an out-of-order histogram");
    let mut gauge = h(5);
    gauge.counter_reset_hint = CounterResetHint::Gauge;
    app.append_int_histogram(&l, 1500, &gauge)
        .expect("an out-of-order gauge histogram");
    let mut fl = h(3).to_float();
    fl.counter_reset_hint = CounterResetHint::NotCounterReset;
    app.append_histogram(&l, 1200, &fl)
        .expect("an out-of-order float histogram");
    assert!(matches!(
        app.append_int_histogram(&l, -8000, &h(1)),
        Err(SError::TooOldSample)
    ));
    app.commit().expect("commit");
    assert_eq!(db.metrics().out_of_order_samples_appended_total, 4);
    let check = |db: &Db, what: &str| {
        use CounterResetHint::*;
        let got: Vec<(i64, CounterResetHint, f64)> = hists_of(db, &l)
            .iter()
            .map(|s| (s.t, s.h.counter_reset_hint, s.h.count))
            .collect();
        // Out of order: `Unknown`, or `Gauge`; the in-order ones as before.
        assert_eq!(
            got,
            vec![
                (1000, Unknown, 2.0),
                (1200, Unknown, 6.0),
                (1500, Gauge, 10.0),
                (2000, NotCounterReset, 4.0),
                (2500, Unknown, 18.0),
            ],
            "{what}"
        );
    };
    check(&db, "head");
    drop(db);
    let db = Db::open(dir.path(), ooo_opts()).expect("reopen");
    check(&db, "after WAL replay");
    db.flush_head().expect("flush");
    check(&db, "in a block");
    drop(db);
    let db = Db::open(dir.path(), ooo_opts()).expect("reopen");
    check(&db, "reopened");
}

#[test]
fn stale_floats_mark_histogram_series_stale_and_kinds_cut_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), opts()).expect("open");
    let l = Labels::from_pairs([("__name__", "h")]);
    let mut app = db.appender();
    app.append_int_histogram(&l, 1000, &h(1)).expect("int");
    app.append_int_histogram(&l, 2000, &h(2)).expect("int");
    app.append(&l, 3000, STALE_NAN).expect("stale");
    app.append_histogram(&l, 4000, &h(3).to_float())
        .expect("float histogram after the stale marker");
    app.commit().expect("commit");
    let mut app = db.appender();
    app.append(&l, 5000, STALE_NAN)
        .expect("stale after a float histogram");
    app.append(&l, 6000, 7.0).expect("a float");
    app.append(&l, 7000, STALE_NAN)
        .expect("a float stale marker");
    app.append_int_histogram(&l, 8000, &h(1))
        .expect("int again");
    app.commit().expect("commit");
    let check = |db: &Db| {
        let got = hists_of(db, &l);
        let ts: Vec<(i64, bool)> = got.iter().map(|s| (s.t, s.is_stale())).collect();
        assert_eq!(
            ts,
            vec![
                (1000, false),
                (2000, false),
                (3000, true),
                (4000, false),
                (5000, true),
                (8000, false)
            ]
        );
        use CounterResetHint::*;
        let hints: Vec<CounterResetHint> = got
            .iter()
            .filter(|s| !s.is_stale())
            .map(|s| s.h.counter_reset_hint)
            .collect();
        // Series start: its own hint; then no reset; after a stale marker or a float, the
        // histogram's own hint again.
        assert_eq!(hints, vec![Unknown, NotCounterReset, Unknown, Unknown]);
        let q = db.querier(0, 10_000).expect("querier");
        let mut set = q
            .select(
                &Context::background(),
                true,
                &SelectHints::default(),
                &[Matcher::equal("__name__", "h")],
            )
            .expect("select");
        let s = set.next().expect("series").expect("ok");
        let mut floats = Vec::new();
        s.iter()
            .append_range(i64::MIN, i64::MAX, &mut floats)
            .expect("floats");
        assert_eq!(floats.len(), 2);
        assert_eq!(floats[0].v, 7.0);
        assert!(m3query_model::is_stale_nan(floats[1].v));
    };
    check(&db);
    drop(db);
    let db = Db::open(dir.path(), opts()).expect("reopen");
    check(&db);
    db.flush_head().expect("flush");
    check(&db);
    Db::verify_blocks(dir.path()).expect("verify");
}

#[test]
fn histogram_only_series_are_found_by_label_lookups_in_head_and_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), opts()).expect("open");
    let l = Labels::from_pairs([("__name__", "only_hist"), ("job", "h")]);
    let mut app = db.appender();
    for i in 0..30 {
        app.append_int_histogram(&l, i * 1000, &h(i as u64))
            .expect("append");
    }
    app.commit().expect("commit");
    let check = |db: &Db| {
        let q = db.querier(0, 100_000).expect("querier");
        let ctx = Context::background();
        let v = q
            .label_values(&ctx, "job", &LabelHints::default(), &[])
            .expect("values");
        assert_eq!(v.values, vec!["h"]);
        let n = q
            .label_names(&ctx, &LabelHints::default(), &[Matcher::equal("job", "h")])
            .expect("names");
        assert_eq!(n.values, vec!["__name__", "job"]);
        assert_eq!(hists_of(db, &l).len(), 30);
        // A window with no histogram selects nothing.
        let q = db.querier(50_000, 60_000).expect("querier");
        let mut set = q
            .select(
                &ctx,
                true,
                &SelectHints::default(),
                &[Matcher::equal("job", "h")],
            )
            .expect("select");
        assert!(set.next().is_none());
    };
    check(&db);
    db.flush_head().expect("flush");
    assert_eq!(db.metrics().head_series, 0);
    check(&db);
}

#[test]
fn torn_wal_tail_loses_only_the_torn_histogram_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = Labels::from_pairs([("__name__", "h")]);
    {
        let db = Db::open(dir.path(), opts()).expect("open");
        for t in 0..10 {
            let mut app = db.appender();
            app.append_int_histogram(&l, t * 1000, &h(t as u64))
                .expect("append");
            app.commit().expect("commit");
        }
        db.close().expect("close");
    }
    let wal = dir.path().join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .expect("wal dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).map(|m| m.len() > 8).unwrap_or(false))
        .collect();
    segs.sort();
    let last = segs.last().expect("a segment with data");
    let data = std::fs::read(last).expect("read");
    std::fs::write(last, &data[..data.len() - 5]).expect("tear");
    let db = Db::open(dir.path(), opts()).expect("a torn tail never blocks opening");
    assert!(db.metrics().wal_truncated_bytes_total > 0);
    let got = hists_of(&db, &l);
    assert_eq!(
        got.iter().map(|s| s.t).collect::<Vec<_>>(),
        (0..9).map(|t| t * 1000).collect::<Vec<_>>()
    );
    assert_eq!(*got[8].h, h(8).to_float());
    // The series goes on where the WAL ended.
    let mut app = db.appender();
    app.append_int_histogram(&l, 9000, &h(9))
        .expect("the lost sample again");
    app.commit().expect("commit");
}
