//! The head + blocks querier against a naive in-memory model, over random appends (in and
//! out of order, floats and native histograms), rollbacks, head cuts, compactions and
//! reopenings.
//!
//! Values are a function of (series, timestamp), so a sample accepted twice is the same
//! sample whichever copy a merge keeps; acceptance rules themselves are unit-tested in the
//! head. Here the property is: every sample the database accepted and committed comes back
//! exactly once, in order, bit for bit, from every combination of head and blocks.

use std::collections::BTreeMap;

use m3query_model::histogram::{CounterResetHint, Span};
use m3query_model::{Histogram, LabelPairs, Labels, MatchOp, Matcher, STALE_NAN, Sample};
use m3query_storage::{
    Appendable, Appender, Context, HistogramSample, LabelHints, Queryable, SelectHints,
    collect_series,
};
use m3query_tsdb::{Db, Fsync, Options};
use proptest::prelude::*;

/// Float series; series `SERIES..SERIES + HIST_SERIES` hold native histograms.
const SERIES: usize = 6;
const HIST_SERIES: usize = 2;
const HIST_NAME: &str = "latency_hist";

fn labels(i: usize) -> Labels {
    Labels::from_pairs([
        (
            "__name__",
            if i >= SERIES {
                HIST_NAME
            } else if i.is_multiple_of(2) {
                "req_total"
            } else {
                "up"
            },
        ),
        ("job", ["api", "db", "web"][i % 3]),
        ("instance", &*format!("h{i}")),
    ])
}

fn value(i: usize, t: i64) -> f64 {
    match (t.rem_euclid(97) as usize + i) % 23 {
        0 => STALE_NAN,
        1 => f64::NAN,
        2 => -0.0,
        3 => f64::INFINITY,
        _ => (t as f64) * 0.5 + i as f64,
    }
}

/// The histogram series `i` has at `t` (a function of both, as `value`): integer counts,
/// a gauge in one series, sometimes appended as a float histogram.
fn hist(i: usize, t: i64) -> Histogram {
    let a = (t.rem_euclid(13) + i as i64) as u64;
    let b = t.rem_euclid(5) as u64;
    Histogram {
        counter_reset_hint: if i == SERIES + 1 {
            CounterResetHint::Gauge
        } else {
            CounterResetHint::Unknown
        },
        schema: if t.rem_euclid(11) == 0 { 1 } else { 0 },
        zero_threshold: 0.001,
        zero_count: 1,
        count: 1 + a + b,
        sum: t as f64 * 0.25,
        positive_spans: vec![Span::new(0, 2)],
        positive_buckets: vec![a as i64, b as i64 - a as i64],
        ..Histogram::default()
    }
}

/// How a histogram reads back for the model: its count and sum bits.
fn hist_key(i: usize, t: i64) -> u64 {
    let h = hist(i, t);
    h.count.rotate_left(32) ^ h.sum.to_bits()
}

/// Appends sample `(i, t)` of either kind.
fn append_one(app: &mut dyn Appender, i: usize, t: i64) -> m3query_storage::Result<()> {
    if i < SERIES {
        return app.append(&labels(i), t, value(i, t));
    }
    let h = hist(i, t);
    if t.rem_euclid(3) == 0 {
        app.append_histogram(&labels(i), t, &h.to_float())
    } else {
        app.append_int_histogram(&labels(i), t, &h)
    }
}

fn model_value(i: usize, t: i64) -> u64 {
    if i < SERIES {
        value(i, t).to_bits()
    } else {
        hist_key(i, t)
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// (series, time offset from the clock); commit or roll back; through
    /// `append_samples` (runs of one series as borrowed pairs) or `append`.
    Batch(Vec<(usize, i64)>, bool, bool),
    Advance(i64),
    Maintenance,
    FlushHead,
    Reopen,
    Check(i64, i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec((0..SERIES + HIST_SERIES, -1500i64..300), 1..40), prop::bool::weighted(0.9), prop::bool::ANY)
            .prop_map(|(v, c, p)| Op::Batch(v, c, p)),
        3 => (0i64..2500).prop_map(Op::Advance),
        2 => Just(Op::Maintenance),
        1 => Just(Op::FlushHead),
        1 => Just(Op::Reopen),
        2 => (-3000i64..8000, 0i64..6000).prop_map(|(a, w)| Op::Check(a, w)),
    ]
}

type Model = BTreeMap<Labels, BTreeMap<i64, u64>>;

fn opts(ooo: i64) -> Options {
    Options {
        block_range_ms: 1000,
        out_of_order_window_ms: ooo,
        retention_ms: 0,
        wal_segment_bytes: 16 << 10,
        fsync: Fsync::Never,
        maintenance_interval_ms: 3_600_000,
        ..Options::default()
    }
}

fn check(db: &Db, model: &Model, mint: i64, maxt: i64) -> Result<(), TestCaseError> {
    let q = db.querier(mint, maxt).expect("querier");
    let ctx = Context::background();
    let sel: Vec<Vec<Matcher>> = vec![
        vec![Matcher::new(MatchOp::RegexMatch, "__name__", ".+").expect("m")],
        vec![Matcher::equal("__name__", "up")],
        vec![
            Matcher::new(MatchOp::RegexMatch, "job", "api|web").expect("m"),
            Matcher::new(MatchOp::NotEqual, "instance", "h0").expect("m"),
        ],
    ];
    for ms in &sel {
        let mut set = q
            .select(&ctx, true, &SelectHints::default(), ms)
            .expect("select");
        let (got, _) = collect_series(set.as_mut(), i64::MIN, i64::MAX).expect("read");
        let got: Vec<(Labels, Vec<(i64, u64)>)> = got
            .into_iter()
            .filter(|s| s.labels.metric_name() != Some(HIST_NAME))
            .map(|s| {
                (
                    s.labels,
                    s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect(),
                )
            })
            .collect();
        let want: Vec<(Labels, Vec<(i64, u64)>)> = model
            .iter()
            .filter(|(l, _)| l.metric_name() != Some(HIST_NAME))
            .filter(|(l, _)| ms.iter().all(|m| m.matches(l.get(&m.name).unwrap_or(""))))
            .map(|(l, s)| {
                (
                    l.clone(),
                    s.range(mint..=maxt)
                        .map(|(t, v)| (*t, *v))
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, s)| !s.is_empty())
            .collect();
        prop_assert_eq!(&got, &want, "select {:?} over [{}, {}]", ms, mint, maxt);
        // The same through next() and a split append_range.
        let mut set = q
            .select(&ctx, true, &SelectHints::default(), ms)
            .expect("select");
        let mut k = 0;
        while let Some(s) = set.next() {
            let s = s.expect("series");
            if s.labels().metric_name() == Some(HIST_NAME) {
                continue;
            }
            let w = &want[k].1;
            let mid = w.get(w.len() / 2).map_or(0, |x| x.0);
            let mut it = s.iter();
            let mut a = Vec::new();
            it.append_range(i64::MIN, mid, &mut a).expect("range");
            let mut rest = Vec::new();
            while let Some(x) = it.next().expect("next") {
                rest.push((x.t, x.v.to_bits()));
            }
            let mut all: Vec<(i64, u64)> = a.iter().map(|x| (x.t, x.v.to_bits())).collect();
            let consumed_after = w.iter().position(|x| x.0 > mid);
            if let Some(p) = consumed_after {
                all.push(w[p]); // consumed by append_range, not returned
            }
            all.extend(rest);
            prop_assert_eq!(&all, w);
            k += 1;
        }
        prop_assert_eq!(k, want.len());
    }
    // Histogram series: every histogram once, in order.
    let mut set = q
        .select(
            &ctx,
            true,
            &SelectHints::default(),
            &[Matcher::equal("__name__", HIST_NAME)],
        )
        .expect("select");
    let mut got = Vec::new();
    while let Some(s) = set.next() {
        let s = s.expect("series");
        let mut hs: Vec<HistogramSample> = Vec::new();
        s.iter()
            .append_histograms(i64::MIN, i64::MAX, &mut hs)
            .expect("histograms");
        let keys: Vec<(i64, u64)> = hs
            .iter()
            .map(|x| (x.t, (x.h.count as u64).rotate_left(32) ^ x.h.sum.to_bits()))
            .collect();
        if !keys.is_empty() {
            got.push((s.labels().clone(), keys));
        }
    }
    let want: Vec<(Labels, Vec<(i64, u64)>)> = model
        .iter()
        .filter(|(l, _)| l.metric_name() == Some(HIST_NAME))
        .map(|(l, s)| {
            (
                l.clone(),
                s.range(mint..=maxt).map(|(t, v)| (*t, *v)).collect(),
            )
        })
        .filter(|(_, s): &(Labels, Vec<(i64, u64)>)| !s.is_empty())
        .collect();
    prop_assert_eq!(&got, &want, "histograms over [{}, {}]", mint, maxt);
    // Label values cover every series with samples in range (they may include more: label
    // lookups are answered per block and for the whole head, as in Prometheus).
    let vals = q
        .label_values(&ctx, "instance", &LabelHints::default(), &[])
        .expect("values");
    for (l, s) in model {
        if s.range(mint..=maxt).next().is_some() {
            let inst = l.get("instance").expect("instance").to_string();
            prop_assert!(
                vals.values.contains(&inst),
                "missing {} in {:?}",
                inst,
                vals.values
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn querier_equals_model(ops in prop::collection::vec(op(), 1..40), ooo in prop::sample::select(vec![0i64, 4000])) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = Db::open(dir.path(), opts(ooo)).expect("open");
        let mut model: Model = BTreeMap::new();
        let mut clock = 0i64;
        for op in ops {
            match op {
                Op::Batch(samples, commit, by_pairs) => {
                    let mut app = db.appender();
                    let mut pending = Vec::new();
                    if by_pairs {
                        for run in samples.chunk_by(|a, b| a.0 == b.0) {
                            let i = run[0].0;
                            if i >= SERIES {
                                // Histograms have no batched form.
                                for &(_, off) in run {
                                    let t = clock + off;
                                    match append_one(app.as_mut(), i, t) {
                                        Ok(()) => pending.push((i, t)),
                                        Err(e) => prop_assert!(e.is_sample_error(), "unexpected error {e}"),
                                    }
                                }
                                continue;
                            }
                            let l = labels(i);
                            let pairs: Vec<(&str, &str)> =
                                l.iter().map(|x| (&*x.name, &*x.value)).collect();
                            let xs: Vec<Sample> = run
                                .iter()
                                .map(|&(_, off)| Sample::new(clock + off, value(i, clock + off)))
                                .collect();
                            let mut refused = vec![false; xs.len()];
                            let mut other = None;
                            app.append_samples(
                                LabelPairs::new(&pairs).expect("sorted"),
                                &xs,
                                &mut |k, e| {
                                    if !e.is_sample_error() {
                                        other = Some(e.to_string());
                                    }
                                    refused[k] = true;
                                },
                            )
                            .expect("append_samples");
                            prop_assert!(other.is_none(), "unexpected error {:?}", other);
                            for (k, x) in xs.iter().enumerate() {
                                if !refused[k] {
                                    pending.push((i, x.t));
                                }
                            }
                        }
                    } else {
                        for (i, off) in samples {
                            let t = clock + off;
                            match append_one(app.as_mut(), i, t) {
                                Ok(()) => pending.push((i, t)),
                                Err(e) => prop_assert!(e.is_sample_error(), "unexpected error {e}"),
                            }
                        }
                    }
                    if commit {
                        app.commit().expect("commit");
                        for (i, t) in pending {
                            model.entry(labels(i)).or_default().entry(t).or_insert(model_value(i, t));
                        }
                    } else {
                        app.rollback();
                    }
                }
                Op::Advance(d) => clock += d,
                Op::Maintenance => db.run_maintenance().expect("maintenance"),
                Op::FlushHead => db.flush_head().expect("flush"),
                Op::Reopen => {
                    db.close().expect("close");
                    drop(db);
                    db = Db::open(dir.path(), opts(ooo)).expect("reopen");
                }
                Op::Check(a, w) => check(&db, &model, clock - a, clock - a + w)?,
            }
        }
        check(&db, &model, i64::MIN, i64::MAX)?;
        db.run_maintenance().expect("maintenance");
        check(&db, &model, i64::MIN, i64::MAX)?;
        db.close().expect("close");
        drop(db);
        prop_assert!(Db::verify_blocks(dir.path()).is_ok());
        let db = Db::open(dir.path(), opts(ooo)).expect("reopen");
        check(&db, &model, i64::MIN, i64::MAX)?;
    }
}
