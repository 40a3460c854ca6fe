//! Start timestamps through the public API: a store that keeps them (MemStorage) changes what
//! `rate`, `increase`, `irate` and `resets` see, and nothing else; `start_timestamp()` reads
//! them; subqueries and expressions carry none.

use m3query_model::{FloatHistogram, Labels};
use m3query_promql::{Engine, EngineOptions, QueryOptions, QueryResult, Value};
use m3query_storage::memory::MemStorage;
use m3query_storage::{Appendable, Context};

const MIN: i64 = 60_000;

/// Two series with the same values, one a minute apart from 1m to 10m: `kind="plain"` without
/// start timestamps, `kind="st"` whose counter restarted at 5m30s (its 6m sample starts
/// there) yet reads higher than before, so only the start timestamp shows the reset. Its
/// other samples start at 30s.
fn store() -> MemStorage {
    let s = MemStorage::new();
    let mut app = s.appender();
    for kind in ["plain", "st"] {
        let l = Labels::from_pairs([("__name__", "c_total"), ("kind", kind)]);
        for k in 1..=10i64 {
            app.append(&l, k * MIN, (k * 60) as f64).expect("append");
            if kind == "st" {
                let st = if k >= 6 { 5 * MIN + 30_000 } else { 30_000 };
                app.append_start_timestamp(&l, k * MIN, st)
                    .expect("after its sample");
            }
        }
    }
    app.commit().expect("commit");
    s
}

fn instant(s: &MemStorage, q: &str, t: i64) -> QueryResult {
    Engine::new(EngineOptions {
        enable_experimental_functions: true,
        ..EngineOptions::default()
    })
    .instant_query(s, &Context::background(), q, t, &QueryOptions::default())
    .expect("query")
}

/// The vector's values by the `kind` label.
fn by_kind(r: &QueryResult) -> Vec<(String, f64)> {
    let Value::Vector(v) = &r.value else {
        panic!("vector expected, got {:?}", r.value)
    };
    let mut out: Vec<(String, f64)> = v
        .iter()
        .map(|s| (s.labels.get("kind").unwrap_or("").to_string(), s.v))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn resets_and_irate_see_the_restart() {
    let s = store();
    let r = instant(&s, "resets(c_total[5m])", 8 * MIN);
    assert_eq!(by_kind(&r), vec![("plain".into(), 0.0), ("st".into(), 1.0)]);
    // At 6m the last two samples straddle the restart: the new run's 360 over 60s.
    let r = instant(&s, "irate(c_total[5m])", 6 * MIN);
    assert_eq!(by_kind(&r), vec![("plain".into(), 1.0), ("st".into(), 6.0)]);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn increase_counts_the_new_run_from_zero() {
    let s = store();
    // Window (3m, 8m]: samples 4m..8m, the last at the window end. Plain: 240 over 240s,
    // extrapolated 60s to the window start: 300. With starts: 60 before the restart plus
    // the new run's 480; the first sample's start (30s) lies before the window, so it
    // extrapolates the same way.
    let r = instant(&s, "increase(c_total[5m])", 8 * MIN);
    let got = by_kind(&r);
    assert_eq!(got[0], ("plain".into(), 300.0));
    assert_eq!(got[1].0, "st");
    assert!((got[1].1 - 540.0 * 300.0 / 240.0).abs() < 1e-9, "{got:?}");
    // Sums over groups (the fused aggregation path) see them too.
    let r = instant(&s, "sum(resets(c_total[5m]))", 8 * MIN);
    let Value::Vector(v) = &r.value else {
        panic!("vector")
    };
    assert_eq!(v[0].v, 1.0);
}

#[test]
fn subqueries_and_other_functions_carry_no_start_timestamps() {
    let s = store();
    for q in [
        "resets(c_total[5m:1m])",
        "increase(c_total[5m:1m])",
        "changes(c_total[5m])",
        "delta(c_total[5m])",
        "sum_over_time(c_total[5m])",
    ] {
        let r = instant(&s, q, 8 * MIN);
        let got = by_kind(&r);
        assert_eq!(got.len(), 2, "{q}");
        assert_eq!(got[0].1, got[1].1, "{q}: {got:?}");
    }
}

#[test]
fn start_timestamp_function() {
    let s = store();
    let r = instant(&s, "start_timestamp(c_total)", 7 * MIN);
    assert_eq!(
        by_kind(&r),
        vec![("plain".into(), 0.0), ("st".into(), 330.0)]
    );
    let Value::Vector(v) = &r.value else {
        panic!("vector")
    };
    assert!(v.iter().all(|s| s.labels.metric_name().is_none()));
    let r = instant(&s, "start_timestamp(c_total * 1)", 7 * MIN);
    assert_eq!(r.value, Value::Vector(Vec::new()));
}

#[test]
fn overlapping_start_warns() {
    let s = MemStorage::new();
    let l = Labels::from_pairs([("__name__", "o_total")]);
    let mut app = s.appender();
    for k in 1..=3i64 {
        app.append(&l, k * MIN, (k * 60) as f64).expect("append");
        // Each starts 2m before itself: before the previous sample, yet not the same run.
        app.append_start_timestamp(&l, k * MIN, (k - 2) * MIN - 1)
            .expect("after its sample");
    }
    app.commit().expect("commit");
    let r = instant(&s, "rate(o_total[3m])", 4 * MIN);
    assert_eq!(
        r.warnings,
        vec![
            "PromQL warning: sample has start time that overlaps with previous sample timestamp for metric \"o_total\" (1:6)"
        ]
    );
}

#[test]
fn histograms_with_start_timestamps() {
    let s = MemStorage::new();
    let l = Labels::from_pairs([("__name__", "h")]);
    let h = |n: f64| FloatHistogram {
        count: n,
        sum: n,
        ..FloatHistogram::default()
    };
    let mut app = s.appender();
    for k in 1..=4i64 {
        // Deltas: each sample counts 60 since the previous one.
        app.append_histogram(&l, k * MIN, &h(60.0)).expect("append");
        app.append_start_timestamp(&l, k * MIN, (k - 1) * MIN)
            .expect("after its sample");
    }
    app.commit().expect("commit");
    let r = instant(&s, "resets(h[5m])", 4 * MIN + 1);
    let Value::Vector(v) = &r.value else {
        panic!("vector")
    };
    // The first sample's start (0) is unknown, so the second is not yet a delta.
    assert_eq!(v[0].v, 2.0);
    let r = instant(&s, "increase(h[2m])", 4 * MIN);
    assert_eq!(r.histograms.len(), 1);
    // Window (2m, 4m]: two deltas of 60, the second a reset. The first starts at 2m, the
    // window start (exclusive), so the 60 over 60s extrapolates 60s to the left as usual.
    let got = &r.histograms[0].points[0].h;
    assert!((got.count - 60.0 * 120.0 / 60.0).abs() < 1e-9, "{got:?}");

    // One sample is enough when its start lies inside the window: it counts from zero.
    let one = Labels::from_pairs([("__name__", "one")]);
    let mut app = s.appender();
    app.append_histogram(&one, 4 * MIN, &h(3.0))
        .expect("append");
    app.append_start_timestamp(&one, 4 * MIN, 2 * MIN + 30_000)
        .expect("after its sample");
    app.commit().expect("commit");
    let r = instant(&s, "increase(one[5m])", 6 * MIN);
    assert_eq!(r.histograms.len(), 1);
    assert_eq!(r.histograms[0].points[0].h.count, 3.0);
    let r = instant(&s, "increase(one[5m])", 7 * MIN + 30_000);
    assert!(r.histograms.is_empty(), "the start is outside (7m30s - 5m)");
}
