//! Engine behaviour through the public API: results, limits, cancellation, errors and their
//! HTTP error types, annotations, stats, spans, format/parse helpers.

use std::time::{Duration, Instant};

use m3query_model::Labels;
use m3query_promql::{Engine, EngineOptions, Error, QueryOptions, Value};
use m3query_storage::memory::MemStorage;
use m3query_storage::{Appendable, Context};

fn store(series: usize) -> MemStorage {
    let s = MemStorage::new();
    let mut app = s.appender();
    for i in 0..series {
        let l = Labels::from_pairs([
            ("__name__", "http_requests_total".to_string()),
            ("job", format!("job-{}", i % 3)),
            ("instance", format!("i-{i}")),
        ]);
        for k in 0..=40i64 {
            app.append(&l, k * 15_000, (k * 10) as f64).expect("append");
        }
    }
    app.commit().expect("commit");
    s
}

fn engine() -> Engine {
    Engine::new(EngineOptions::default())
}

#[test]
fn instant_and_range_results() {
    let s = store(6);
    let ctx = Context::background();
    let r = engine()
        .instant_query(
            &s,
            &ctx,
            "sum by (job) (rate(http_requests_total[5m]))",
            600_000,
            &QueryOptions::default(),
        )
        .expect("query");
    let Value::Vector(v) = r.value else {
        panic!("vector expected")
    };
    assert_eq!(v.len(), 3);
    for smp in &v {
        // Two series per job, each 10 per 15s = 2/3 per second.
        assert!((smp.v - 4.0 / 3.0).abs() < 1e-9, "{smp:?}");
        assert_eq!(smp.t_ms, 600_000);
        assert!(smp.labels.metric_name().is_none());
    }
    let r = engine()
        .range_query(
            &s,
            &ctx,
            "http_requests_total{instance=\"i-0\"}",
            0,
            600_000,
            60_000,
            &QueryOptions::default(),
        )
        .expect("query");
    let Value::Matrix(m) = r.value else {
        panic!("matrix expected")
    };
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].samples.len(), 11);
    assert_eq!(m[0].labels.metric_name(), Some("http_requests_total"));
    let r = engine()
        .instant_query(&s, &ctx, "1 + 2", 0, &QueryOptions::default())
        .expect("query");
    assert_eq!(r.value, Value::Scalar { t_ms: 0, v: 3.0 });
    let r = engine()
        .instant_query(&s, &ctx, "\"hi\"", 5, &QueryOptions::default())
        .expect("query");
    assert_eq!(
        r.value,
        Value::String {
            t_ms: 5,
            s: "hi".into()
        }
    );
}

#[test]
fn errors_have_their_variants() {
    let s = store(3);
    let ctx = Context::background();
    let e = engine()
        .instant_query(&s, &ctx, "sum(", 0, &QueryOptions::default())
        .expect_err("parse error");
    assert!(matches!(e, Error::Parse(_)));
    assert!(e.to_string().contains("parse error"), "{e}");

    let e = engine()
        .range_query(
            &s,
            &ctx,
            "http_requests_total[5m]",
            0,
            60_000,
            15_000,
            &QueryOptions::default(),
        )
        .expect_err("range vector in range query");
    assert!(matches!(e, Error::Execution(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector"
    );

    let s6 = store(6);
    let e = engine()
        .instant_query(
            &s6,
            &ctx,
            "label_replace(http_requests_total, \"instance\", \"x\", \"job\", \".*\")",
            600_000,
            &QueryOptions::default(),
        )
        .expect_err("duplicate series");
    assert_eq!(
        e.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
    assert!(matches!(e, Error::Execution(_)), "{e:?}");
}

/// Every sample of `s` over 10 minutes, from an engine whose sample limit that exceeds.
fn all_samples_over_the_limit(e: &Engine, s: &MemStorage) -> Error {
    let err = e
        .range_query(
            s,
            &Context::background(),
            "http_requests_total",
            0,
            600_000,
            15_000,
            &QueryOptions::default(),
        )
        .expect_err("over the limit");
    assert!(matches!(err, Error::TooManySamples), "{err}");
    err
}

#[test]
fn too_many_samples() {
    let s = store(20);
    let small = Engine::new(EngineOptions {
        max_samples: 100,
        ..EngineOptions::default()
    });
    let e = all_samples_over_the_limit(&small, &s);
    assert_eq!(
        e.to_string(),
        "query processing would load too many samples into memory in query execution"
    );
}

#[test]
fn series_limit_truncates_or_fails() {
    let s = store(10);
    let ctx = Context::background();
    let opts = QueryOptions {
        max_fetched_series: 4,
        ..QueryOptions::default()
    };
    let r = engine()
        .instant_query(&s, &ctx, "http_requests_total", 600_000, &opts)
        .expect("truncated");
    assert!(r.series_limited);
    let Value::Vector(v) = r.value else {
        panic!("vector expected")
    };
    assert_eq!(v.len(), 4);
    let opts = QueryOptions {
        max_fetched_series: 4,
        require_exhaustive: true,
        ..QueryOptions::default()
    };
    let e = engine()
        .instant_query(&s, &ctx, "http_requests_total", 600_000, &opts)
        .expect_err("exhaustive");
    assert!(matches!(e, Error::TooManySeries { limit: 4 }));
}

#[test]
fn cancellation_and_deadline() {
    let s = store(3);
    let ctx = Context::background();
    ctx.cancel();
    let e = engine()
        .instant_query(&s, &ctx, "http_requests_total", 0, &QueryOptions::default())
        .expect_err("canceled");
    assert!(matches!(e, Error::Canceled(_)), "{e:?}");
    let ctx = Context::with_deadline(Instant::now() - Duration::from_millis(1));
    let e = engine()
        .instant_query(&s, &ctx, "http_requests_total", 0, &QueryOptions::default())
        .expect_err("timed out");
    assert!(matches!(e, Error::Timeout(_)), "{e:?}");
}

#[test]
fn annotations_are_rendered_with_positions() {
    let s = store(3);
    let r = engine()
        .instant_query(
            &s,
            &Context::background(),
            "quantile(1.5, http_requests_total)",
            600_000,
            &QueryOptions::default(),
        )
        .expect("query");
    assert_eq!(
        r.warnings,
        vec![
            "PromQL warning: quantile value should be between 0 and 1, got 1.5 (1:10)".to_string()
        ]
    );
    let r = engine()
        .instant_query(
            &s,
            &Context::background(),
            "rate(http_requests_total[5m]) + rate(\nfoo[5m])",
            600_000,
            &QueryOptions::default(),
        )
        .expect("query");
    assert!(r.infos.is_empty(), "{:?}", r.infos);
}

/// Prometheus gives the "might not be a counter" hint when the rate's result has float
/// points, whatever else the input holds: a series that turns from floats into histograms
/// gets it for the steps its floats answer, and not for steps only histograms answer.
#[test]
fn non_counter_hint_follows_the_float_results() {
    use m3query_model::FloatHistogram;
    use m3query_model::histogram::Span;
    let s = MemStorage::new();
    let l = Labels::from_pairs([("__name__", "latency")]);
    let mut app = s.appender();
    for k in 0..10i64 {
        app.append(&l, k * 15_000, k as f64).expect("append");
    }
    for k in 10..20i64 {
        let h = FloatHistogram {
            count: k as f64,
            sum: k as f64,
            positive_spans: vec![Span::new(0, 1)],
            positive_buckets: vec![k as f64],
            ..FloatHistogram::default()
        };
        app.append_histogram(&l, k * 15_000, &h).expect("append");
    }
    app.commit().expect("commit");
    let infos = |start: i64, end: i64| {
        engine()
            .range_query(
                &s,
                &Context::background(),
                "rate(latency[1m])",
                start,
                end,
                60_000,
                &QueryOptions::default(),
            )
            .expect("query")
            .infos
    };
    let want = "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"latency\" (1:6)";
    // One range over both kinds: its float steps give the hint.
    assert_eq!(infos(60_000, 280_000), vec![want.to_string()], "both kinds");
    assert!(infos(240_000, 280_000).is_empty(), "histograms only");
}

#[test]
fn stats_are_collected() {
    let s = store(5);
    let r = engine()
        .range_query(
            &s,
            &Context::background(),
            "rate(http_requests_total[1m])",
            0,
            600_000,
            60_000,
            &QueryOptions {
                enable_stats: true,
                ..QueryOptions::default()
            },
        )
        .expect("query");
    assert_eq!(r.stats.series_fetched, 5);
    assert!(r.stats.samples_fetched > 0);
    assert!(r.stats.total_samples > 0);
    assert!(r.stats.peak_samples > 0);
    assert!(r.stats.total >= r.stats.eval);
}

#[test]
fn format_and_parse_query() {
    assert_eq!(
        m3query_promql::format_query("sum by(job)(rate( x[5m] ))").expect("formats"),
        "sum by (job) (rate(x[5m]))"
    );
    let j: serde_json::Value =
        serde_json::from_str(&m3query_promql::parse_query("up == 1").expect("parses"))
            .expect("json");
    assert_eq!(j["type"], "binaryExpr");
    assert_eq!(j["op"], "==");
    assert!(m3query_promql::format_query("up ==").is_err());
}

/// Aggregations fused with the rollup beneath them give bit-identical results to the plain
/// path (`+rate(...)` is not fused).
/// Selection, rollups and fused aggregations spread their per-series work over threads at
/// `parallel_threshold` series: the answers must be the serial ones, in the same order, and
/// the sample limit and errors must hold there too.
#[test]
fn parallel_paths_match_serial() {
    let s = store(700);
    let ctx = Context::background();
    let serial = Engine::new(EngineOptions {
        parallel_threshold: usize::MAX,
        ..EngineOptions::default()
    });
    let parallel = Engine::new(EngineOptions {
        parallel_threshold: 1,
        ..EngineOptions::default()
    });
    for q in [
        "http_requests_total",
        "rate(http_requests_total[2m])",
        "sum by (job) (rate(http_requests_total[2m]))",
        "count(http_requests_total)",
        "max_over_time(http_requests_total[5m]) / 2",
        "sort_desc(http_requests_total)",
    ] {
        // Instant vectors keep the storage's series order, so a reordering shows there.
        let instant = |e: &Engine| {
            e.instant_query(&s, &ctx, q, 600_000, &QueryOptions::default())
                .unwrap_or_else(|e| panic!("{q}: {e}"))
                .value
        };
        assert_eq!(instant(&serial), instant(&parallel), "{q}");
        let range = |e: &Engine| {
            e.range_query(&s, &ctx, q, 0, 600_000, 30_000, &QueryOptions::default())
                .unwrap_or_else(|e| panic!("{q}: {e}"))
                .value
        };
        assert_eq!(range(&serial), range(&parallel), "{q} over a range");
    }
    // 700 series x 41 samples: the limit is crossed while the threads decode.
    let limited = Engine::new(EngineOptions {
        parallel_threshold: 1,
        max_samples: 10_000,
        ..EngineOptions::default()
    });
    all_samples_over_the_limit(&limited, &s);
}

#[test]
fn fused_aggregation_matches_plain_path() {
    let s = MemStorage::new();
    let mut app = s.appender();
    for i in 0..40 {
        let l = Labels::from_pairs([
            ("__name__", "m_total".to_string()),
            ("job", format!("j{}", i % 3)),
            ("instance", format!("i{i}")),
        ]);
        for k in 0..60i64 {
            let v = match (i, k) {
                (7, 30) => f64::NAN,
                (9, _) => 1e308 * (k as f64),
                _ => ((k * (i + 1)) % 97) as f64 * 1.1,
            };
            app.append(&l, k * 10_000, v).expect("append");
        }
    }
    app.commit().expect("commit");
    let ctx = Context::background();
    for op in ["sum", "avg", "count", "min", "max", "group"] {
        for f in [
            "rate",
            "increase",
            "max_over_time",
            "last_over_time",
            "avg_over_time",
        ] {
            for g in ["by (job)", "without (instance)", ""] {
                let fused = format!("{op} {g} ({f}(m_total[2m]))");
                let plain = format!("{op} {g} (+{f}(m_total[2m]))");
                let a = engine()
                    .range_query(
                        &s,
                        &ctx,
                        &fused,
                        0,
                        600_000,
                        30_000,
                        &QueryOptions::default(),
                    )
                    .expect("fused");
                let b = engine()
                    .range_query(
                        &s,
                        &ctx,
                        &plain,
                        0,
                        600_000,
                        30_000,
                        &QueryOptions::default(),
                    )
                    .expect("plain");
                let (Value::Matrix(a), Value::Matrix(b)) = (a.value, b.value) else {
                    panic!("matrices expected")
                };
                assert_eq!(a.len(), b.len(), "{fused}");
                for (x, y) in a.iter().zip(&b) {
                    assert_eq!(x.labels, y.labels, "{fused}");
                    assert_eq!(x.samples.len(), y.samples.len(), "{fused}");
                    for (p, q) in x.samples.iter().zip(&y.samples) {
                        assert_eq!(p.t, q.t, "{fused}");
                        assert!(
                            p.v.to_bits() == q.v.to_bits() || (p.v.is_nan() && q.v.is_nan()),
                            "{fused}: {} vs {}",
                            p.v,
                            q.v
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn trim_operators_on_floats_yield_nothing_and_an_info() {
    let s = store(2);
    let r = engine()
        .instant_query(
            &s,
            &Context::background(),
            "http_requests_total </ 5",
            600_000,
            &QueryOptions::default(),
        )
        .expect("query");
    assert_eq!(r.value, Value::Vector(vec![]));
    assert_eq!(
        r.infos,
        vec!["PromQL info: incompatible sample types encountered for binary operator \"</\": float </ float (1:1)".to_string()]
    );
}

#[test]
fn native_histograms_flow_through_selectors_functions_and_results() {
    use m3query_model::FloatHistogram;
    use m3query_model::histogram::Span;
    let s = MemStorage::new();
    let mut app = s.appender();
    let l = Labels::from_pairs([("__name__", "rpc_seconds"), ("job", "a")]);
    for k in 0..=10i64 {
        let c = k as f64;
        let h = FloatHistogram {
            count: 4.0 * c,
            sum: 8.0 * c,
            positive_spans: vec![Span::new(0, 2)],
            positive_buckets: vec![c, 3.0 * c],
            ..FloatHistogram::default()
        };
        app.append_histogram(&l, k * 60_000, &h).expect("append");
    }
    app.commit().expect("commit");
    let ctx = Context::background();
    let opts = QueryOptions::default();
    let e = engine();

    // An instant selector returns the histogram beside the (empty) float vector.
    let r = e
        .instant_query(&s, &ctx, "rpc_seconds", 600_000, &opts)
        .expect("query");
    assert_eq!(r.value, Value::Vector(Vec::new()));
    assert_eq!(r.histograms.len(), 1);
    assert_eq!(r.histograms[0].labels, l);
    assert_eq!(r.histograms[0].points[0].t, 600_000);
    assert_eq!(r.histograms[0].points[0].h.count, 40.0);

    // Functions read histograms; rate keeps them histograms.
    let r = e
        .instant_query(
            &s,
            &ctx,
            "histogram_count(rate(rpc_seconds[5m]))",
            600_000,
            &opts,
        )
        .expect("query");
    let Value::Vector(v) = &r.value else {
        panic!("expected a vector, got {:?}", r.value);
    };
    assert_eq!(v.len(), 1);
    assert!((v[0].v - 4.0 / 60.0).abs() < 1e-9, "{}", v[0].v);
    let r = e
        .range_query(&s, &ctx, "sum(rpc_seconds) * 2", 0, 600_000, 300_000, &opts)
        .expect("query");
    assert_eq!(r.value, Value::Matrix(Vec::new()));
    let counts: Vec<f64> = r.histograms[0].points.iter().map(|p| p.h.count).collect();
    assert_eq!(counts, vec![0.0, 40.0, 80.0]);

    // The histogram JSON the HTTP layer writes.
    let mut json = String::new();
    m3query_promql::write_histogram_json(&mut json, &r.histograms[0].points[1].h);
    assert!(
        json.starts_with(r#"{"count":"40","sum":"80","buckets":["#),
        "{json}"
    );
}
