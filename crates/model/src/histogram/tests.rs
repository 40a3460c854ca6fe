//! Unit tests and property tests for histograms. Expected values follow Prometheus's
//! semantics (`model/histogram/*_test.go` scenarios, rewritten here by hand).

use super::*;
use proptest::prelude::*;

fn sp(v: &[(i32, u32)]) -> Vec<Span> {
    v.iter().map(|&(o, l)| Span::new(o, l)).collect()
}

fn fh(schema: i32, zt: f64, zc: f64, pos: &[(i32, u32)], pb: &[f64]) -> FloatHistogram {
    let count = zc + pb.iter().sum::<f64>();
    FloatHistogram {
        schema,
        zero_threshold: zt,
        zero_count: zc,
        count,
        sum: 1.0,
        positive_spans: sp(pos),
        positive_buckets: pb.to_vec(),
        ..Default::default()
    }
}

#[test]
fn validate_catches_prometheus_error_cases() {
    let good = Histogram {
        schema: 0,
        count: 5,
        zero_count: 1,
        sum: 3.0,
        positive_spans: sp(&[(0, 2), (1, 1)]),
        positive_buckets: vec![1, 1, -1],
        ..Default::default()
    };
    assert_eq!(good.validate(), Ok(()));

    let mut h = good.clone();
    h.positive_buckets.pop();
    assert!(matches!(
        h.validate(),
        Err(HistogramError::SpansBucketsMismatch {
            side: Side::Positive,
            needed: 3,
            have: 2
        })
    ));
    let mut h = good.clone();
    h.positive_buckets = vec![1, -2, 3];
    assert!(matches!(
        h.validate(),
        Err(HistogramError::NegativeBucketCount { bucket: 2, .. })
    ));
    let mut h = good.clone();
    h.count = 6;
    assert!(matches!(
        h.validate(),
        Err(HistogramError::CountMismatch {
            buckets: 5,
            count: 6
        })
    ));
    // A NaN sum allows more observations than the buckets hold, never fewer.
    h.sum = f64::NAN;
    assert_eq!(h.validate(), Ok(()));
    h.count = 4;
    assert!(matches!(
        h.validate(),
        Err(HistogramError::CountNotBigEnough { .. })
    ));
    let mut h = good.clone();
    h.positive_spans[1].offset = -1;
    assert!(matches!(
        h.validate(),
        Err(HistogramError::SpanNegativeOffset { span: 2, .. })
    ));
    let mut h = good.clone();
    h.schema = 9;
    assert_eq!(h.validate(), Err(HistogramError::InvalidSchema(9)));
    let mut h = good.clone();
    h.custom_values = vec![1.0];
    assert_eq!(
        h.validate(),
        Err(HistogramError::ExponentialWithCustomBounds)
    );

    // Custom buckets.
    let nhcb = Histogram {
        schema: CUSTOM_BUCKETS_SCHEMA,
        count: 3,
        sum: 2.0,
        positive_spans: sp(&[(0, 3)]),
        positive_buckets: vec![1, 0, 0],
        custom_values: vec![1.0, 2.0],
        ..Default::default()
    };
    assert_eq!(nhcb.validate(), Ok(()));
    let mut h = nhcb.clone();
    h.custom_values = vec![1.0];
    assert!(matches!(
        h.validate(),
        Err(HistogramError::CustomBucketsTooFew { .. })
    ));
    let mut h = nhcb.clone();
    h.custom_values = vec![2.0, 1.0];
    assert!(matches!(
        h.validate(),
        Err(HistogramError::CustomBucketsNotIncreasing { .. })
    ));
    let mut h = nhcb.clone();
    h.custom_values = vec![1.0, f64::INFINITY];
    assert_eq!(h.validate(), Err(HistogramError::CustomBucketsInfinite));
    let mut h = nhcb.clone();
    h.custom_values = vec![1.0, f64::NAN];
    assert_eq!(h.validate(), Err(HistogramError::CustomBucketsNaN));
    let mut h = nhcb.clone();
    h.zero_threshold = 0.1;
    assert_eq!(
        h.validate(),
        Err(HistogramError::CustomBucketsZeroThreshold)
    );
    let mut h = nhcb.clone();
    h.negative_spans = sp(&[(0, 1)]);
    assert_eq!(
        h.validate(),
        Err(HistogramError::CustomBucketsNegativeSpans)
    );

    let mut f = good.to_float();
    assert_eq!(f.validate(), Ok(()));
    f.count = -1.0;
    assert_eq!(f.validate(), Err(HistogramError::NegativeCount(-1.0)));
}

#[test]
fn to_float_accumulates_deltas() {
    let h = Histogram {
        schema: 1,
        count: 9,
        zero_count: 2,
        zero_threshold: 0.001,
        sum: 12.5,
        positive_spans: sp(&[(-1, 2), (2, 1)]),
        positive_buckets: vec![2, 1, -2],
        negative_spans: sp(&[(0, 1)]),
        negative_buckets: vec![2],
        counter_reset_hint: CounterResetHint::NotCounterReset,
        ..Default::default()
    };
    let f = h.to_float();
    assert_eq!(f.positive_buckets, vec![2.0, 3.0, 1.0]);
    assert_eq!(f.negative_buckets, vec![2.0]);
    assert_eq!(f.count, 9.0);
    assert_eq!(f.counter_reset_hint, CounterResetHint::NotCounterReset);
    let ub: Vec<(f64, f64, u64)> = h
        .positive_buckets()
        .map(|b| (b.lower, b.upper, b.count))
        .collect();
    assert_eq!(ub[0].2, 2);
    assert_eq!(ub[1], (bucket_bound(-1, 1, &[]), 1.0, 3));
    assert_eq!(ub[2].0, 2.0);
    assert_eq!(ub[2].2, 1);
    let n: Vec<Bucket<f64>> = f.negative_buckets().collect();
    assert_eq!((n[0].lower, n[0].upper), (-1.0, -bucket_bound(-1, 1, &[])));
    assert!(n[0].lower_inclusive && !n[0].upper_inclusive);
}

#[test]
fn add_reduces_to_lower_schema() {
    // Schema 1 buckets 1,2 (bounds (1,√2],(√2,2]) merge into schema 0 bucket 1 ((1,2]).
    let mut a = fh(1, 0.0, 0.0, &[(1, 2)], &[1.0, 2.0]);
    let b = fh(0, 0.0, 0.0, &[(0, 2)], &[5.0, 7.0]);
    a.add(&b).expect("add");
    assert_eq!(a.schema, 0);
    assert_eq!(a.positive_spans, sp(&[(0, 2)]));
    assert_eq!(a.positive_buckets, vec![5.0, 10.0]);
    assert_eq!(a.count, 15.0);
    assert_eq!(a.sum, 2.0);
}

#[test]
fn add_widens_zero_bucket() {
    // a's zero bucket (threshold 1) swallows b's bucket 0 ((0.5,1]).
    let mut a = fh(0, 1.0, 3.0, &[(1, 1)], &[1.0]);
    let b = fh(0, 0.0, 0.0, &[(0, 2)], &[2.0, 4.0]);
    a.add(&b).expect("add");
    assert_eq!(a.zero_threshold, 1.0);
    assert_eq!(a.zero_count, 5.0);
    assert_eq!(a.positive_spans, sp(&[(1, 1)]));
    assert_eq!(a.positive_buckets, vec![5.0]);
    // The other way round: b widens to 1 and moves its bucket 0 into its zero bucket.
    let mut b = fh(0, 0.0, 0.0, &[(0, 2)], &[2.0, 4.0]);
    let a = fh(0, 1.0, 3.0, &[(1, 1)], &[1.0]);
    b.add(&a).expect("add");
    assert_eq!(b.zero_threshold, 1.0);
    assert_eq!(b.zero_count, 5.0);
    assert_eq!(b.positive_spans, sp(&[(1, 1)]));
    assert_eq!(b.positive_buckets, vec![5.0]);
    // A threshold inside a populated bucket widens to that bucket's upper bound.
    let mut c = fh(0, 0.0, 0.0, &[(1, 1)], &[4.0]);
    let d = fh(0, 1.5, 1.0, &[], &[]);
    c.add(&d).expect("add");
    assert_eq!(c.zero_threshold, 2.0);
    assert_eq!(c.zero_count, 5.0);
    assert!(c.positive_buckets.is_empty());
}

#[test]
fn add_custom_buckets_rules() {
    let mut e = fh(0, 0.0, 0.0, &[(0, 1)], &[1.0]);
    let mut c = fh(CUSTOM_BUCKETS_SCHEMA, 0.0, 0.0, &[(0, 3)], &[1.0, 2.0, 3.0]);
    c.custom_values = vec![1.0, 2.0];
    let before = e.clone();
    assert_eq!(e.add(&c), Err(HistogramError::IncompatibleSchema));
    assert_eq!(e, before, "an error leaves the histogram unchanged");
    assert_eq!(c.clone().sub(&e), Err(HistogramError::IncompatibleSchema));

    // Same bounds: bucket-wise.
    let mut c2 = c.clone();
    assert_eq!(c2.add(&c).expect("add"), AddOutcome::default());
    assert_eq!(c2.positive_buckets, vec![2.0, 4.0, 6.0]);

    // Different bounds: the intersection {2}; buckets ≤1 and (1,2] go to ≤2.
    let mut d = fh(
        CUSTOM_BUCKETS_SCHEMA,
        0.0,
        0.0,
        &[(0, 3)],
        &[10.0, 20.0, 30.0],
    );
    d.custom_values = vec![2.0, 5.0];
    let mut r = c.clone();
    let out = r.add(&d).expect("add");
    assert!(out.custom_bounds_reconciled);
    assert_eq!(r.custom_values, vec![2.0]);
    assert_eq!(r.positive_spans, sp(&[(0, 2)]));
    assert_eq!(r.positive_buckets, vec![13.0, 53.0]);
}

#[test]
fn counter_reset_hints_combine() {
    let mut a = fh(0, 0.0, 0.0, &[], &[]);
    let mut b = a.clone();
    a.counter_reset_hint = CounterResetHint::CounterReset;
    b.counter_reset_hint = CounterResetHint::NotCounterReset;
    let out = a.add(&b).expect("add");
    assert!(out.counter_reset_collision);
    assert_eq!(a.counter_reset_hint, CounterResetHint::Unknown);
    b.counter_reset_hint = CounterResetHint::Gauge;
    a.add(&b).expect("add");
    assert_eq!(a.counter_reset_hint, CounterResetHint::Gauge);
}

#[test]
fn mul_div() {
    let mut a = fh(0, 0.0, 2.0, &[(0, 2)], &[1.0, 3.0]);
    a.mul(2.0);
    assert_eq!(a.positive_buckets, vec![2.0, 6.0]);
    assert_eq!((a.count, a.zero_count, a.sum), (12.0, 4.0, 2.0));
    a.mul(-1.0);
    assert_eq!(a.counter_reset_hint, CounterResetHint::Gauge);
    let mut b = fh(0, 0.0, 2.0, &[(0, 2)], &[1.0, 3.0]);
    b.div(2.0);
    assert_eq!(b.positive_buckets, vec![0.5, 1.5]);
    b.div(0.0);
    assert!(b.positive_buckets.is_empty() && b.positive_spans.is_empty());
    assert_eq!(b.count, f64::INFINITY);
}

#[test]
fn compact_matches_prometheus_layouts() {
    // Leading/trailing empties go, small inner gaps stay, big ones split the span, close
    // spans join.
    let mut a = fh(
        0,
        0.0,
        0.0,
        &[(-2, 6), (1, 1), (3, 2)],
        &[0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0],
    );
    let mut b = a.clone();
    a.compact(0);
    assert_eq!(a.positive_spans, sp(&[(-1, 1), (1, 1), (3, 1), (3, 1)]));
    assert_eq!(a.positive_buckets, vec![1.0, 2.0, 3.0, 4.0]);
    b.compact(2);
    assert_eq!(b.positive_spans, sp(&[(-1, 3), (3, 1), (3, 1)]));
    assert_eq!(b.positive_buckets, vec![1.0, 0.0, 2.0, 3.0, 4.0]);

    let mut h = Histogram {
        schema: 0,
        count: 3,
        sum: 1.0,
        positive_spans: sp(&[(0, 4)]),
        positive_buckets: vec![0, 1, -1, 2],
        ..Default::default()
    };
    h.compact(0);
    assert_eq!(h.positive_spans, sp(&[(1, 1), (1, 1)]));
    assert_eq!(h.positive_buckets, vec![1, 1]);
    assert_eq!(h.validate(), Ok(()));
}

#[test]
fn detect_reset_cases() {
    let prev = fh(0, 0.0, 1.0, &[(0, 3)], &[1.0, 2.0, 3.0]);
    let mut cur = fh(0, 0.0, 1.0, &[(0, 3)], &[1.0, 2.0, 4.0]);
    assert!(!cur.detect_reset(&prev));
    cur.positive_buckets[1] = 1.0;
    cur.count = 100.0;
    assert!(cur.detect_reset(&prev), "a bucket dropped");
    // A missing bucket that had observations is a reset; an empty one is not.
    let cur = fh(0, 0.0, 1.0, &[(0, 2)], &[1.0, 9.0]);
    assert!(cur.detect_reset(&prev));
    let prev2 = fh(0, 0.0, 1.0, &[(0, 3)], &[1.0, 2.0, 0.0]);
    assert!(!cur.detect_reset(&prev2));
    // Lower resolution now: compare at the current (coarser) schema.
    let prev3 = fh(1, 0.0, 0.0, &[(1, 2)], &[1.0, 2.0]);
    let cur3 = fh(0, 0.0, 0.0, &[(1, 1)], &[3.0]);
    assert!(!cur3.detect_reset(&prev3));
    assert!(prev3.detect_reset(&cur3), "finer schema is a reset");
    // Hints win.
    let mut c = prev.clone();
    c.counter_reset_hint = CounterResetHint::CounterReset;
    assert!(c.detect_reset(&prev));
    let mut c = fh(0, 0.0, 0.0, &[], &[]);
    c.counter_reset_hint = CounterResetHint::NotCounterReset;
    assert!(!c.detect_reset(&prev));
    // Narrower zero bucket.
    let mut z = prev.clone();
    z.zero_threshold = 0.5;
    assert!(prev.detect_reset(&z));
    // Custom buckets with different bounds compare per common interval.
    let mut p = fh(CUSTOM_BUCKETS_SCHEMA, 0.0, 0.0, &[(0, 3)], &[1.0, 2.0, 3.0]);
    p.custom_values = vec![1.0, 2.0];
    let mut q = fh(CUSTOM_BUCKETS_SCHEMA, 0.0, 0.0, &[(0, 2)], &[3.0, 3.0]);
    q.custom_values = vec![2.0];
    assert!(!q.detect_reset(&p));
    q.positive_buckets = vec![2.0, 9.0];
    assert!(q.detect_reset(&p));
}

#[test]
fn reduce_resolution_keeps_deltas() {
    let mut h = Histogram {
        schema: 2,
        count: 10,
        sum: 1.0,
        positive_spans: sp(&[(1, 4), (3, 1)]),
        positive_buckets: vec![1, 1, 1, 1, -3],
        ..Default::default()
    };
    let before = h.to_float();
    h.reduce_resolution(0).expect("reduce");
    // Schema 2 indices 1..=4 are schema 0 index 1; index 8 is schema 0 index 2.
    assert_eq!(h.positive_spans, sp(&[(1, 2)]));
    assert_eq!(h.positive_buckets, vec![10, -9]);
    let mut f = before;
    f.reduce_resolution(0).expect("reduce");
    assert_eq!(f, h.to_float());
    assert!(h.reduce_resolution(1).is_err());
}

#[test]
fn equality_is_prometheus_equals() {
    let mut a = fh(0, 0.0, 0.0, &[(0, 2)], &[1.0, 2.0]);
    a.sum = f64::NAN;
    let mut b = a.clone();
    b.positive_spans = sp(&[(0, 0), (0, 2)]);
    b.counter_reset_hint = CounterResetHint::Gauge;
    assert_eq!(a, b);
    b.positive_buckets[1] = 3.0;
    assert_ne!(a, b);
}

#[test]
fn hint_proto_round_trip() {
    for v in 0..4 {
        assert_eq!(CounterResetHint::from_proto(v).to_proto(), v);
    }
    assert_eq!(CounterResetHint::from_proto(9), CounterResetHint::Unknown);
}

/// A random valid integer histogram.
pub(crate) fn arb_histogram() -> impl Strategy<Value = Histogram> {
    let side = prop::collection::vec((0i32..4, 1u32..4), 0..4).prop_flat_map(|spans| {
        let n: u32 = spans.iter().map(|s| s.1).sum();
        (
            Just(spans),
            -5i32..5,
            prop::collection::vec(0i64..50, n as usize),
        )
    });
    (
        prop_oneof![(-4i32..=8), Just(CUSTOM_BUCKETS_SCHEMA)],
        side.clone(),
        side,
        0u64..20,
        prop_oneof![Just(0.0), Just(0.001), Just(2f64.powi(-128))],
        any::<bool>(),
        -1e6f64..1e6,
    )
        .prop_map(
            |(schema, (ps, p0, pa), (ns, n0, na), zc, zt, nan_obs, sum)| {
                let mk = |spans: &[(i32, u32)], start: i32| {
                    spans
                        .iter()
                        .enumerate()
                        .map(|(i, &(o, l))| Span::new(if i == 0 { start } else { o }, l))
                        .collect::<Vec<_>>()
                };
                let custom = schema == CUSTOM_BUCKETS_SCHEMA;
                let mut h = Histogram {
                    schema,
                    sum,
                    positive_spans: mk(&ps, if custom { p0.abs() } else { p0 }),
                    positive_buckets: int::absolute_to_deltas(&pa),
                    ..Default::default()
                };
                if custom {
                    let need: i64 = h
                        .positive_spans
                        .iter()
                        .map(|s| i64::from(s.offset) + i64::from(s.length))
                        .sum();
                    h.custom_values = (0..need).map(|i| i as f64 * 0.5 + 0.25).collect();
                } else {
                    h.negative_spans = mk(&ns, n0);
                    h.negative_buckets = int::absolute_to_deltas(&na);
                    h.zero_count = zc;
                    h.zero_threshold = zt;
                }
                let total: i64 = pa.iter().sum::<i64>() + if custom { 0 } else { na.iter().sum() };
                h.count = total as u64 + h.zero_count;
                if nan_obs {
                    h.count += 1;
                    h.sum = f64::NAN;
                }
                h
            },
        )
}

proptest! {
    #[test]
    fn generated_histograms_validate(h in arb_histogram()) {
        prop_assert_eq!(h.validate(), Ok(()));
        prop_assert_eq!(h.to_float().validate(), Ok(()));
    }

    #[test]
    fn compact_keeps_every_observation(h in arb_histogram(), max_empty in 0usize..3) {
        let mut c = h.clone();
        c.compact(max_empty);
        prop_assert_eq!(c.validate(), Ok(()));
        let f = h.to_float();
        let mut fc = f.clone();
        fc.compact(max_empty);
        prop_assert_eq!(&fc, &c.to_float());
        let nonzero = |f: &FloatHistogram| -> Vec<(f64, f64, f64)> {
            f.all_buckets().into_iter().filter(|b| b.count != 0.0)
                .map(|b| (b.lower, b.upper, b.count)).collect()
        };
        prop_assert_eq!(nonzero(&f), nonzero(&fc));
        // Compacting twice changes nothing.
        let mut twice = fc.clone();
        twice.compact(max_empty);
        prop_assert_eq!(&twice, &fc);
    }

    #[test]
    fn add_then_sub_restores_counts(a in arb_histogram(), b in arb_histogram()) {
        let (fa, fb) = (a.to_float(), b.to_float());
        // Buckets inside their own zero bucket are dropped by addition (as in Prometheus:
        // such observations cannot exist), so leave them out of the totals property.
        let outside = |f: &FloatHistogram| f.positive_buckets().chain(f.negative_buckets())
            .all(|b| b.upper.abs().max(b.lower.abs()) > f.zero_threshold);
        prop_assume!(outside(&fa) && outside(&fb));
        let mut s = fa.clone();
        match s.add(&fb) {
            Err(e) => {
                prop_assert_eq!(e, HistogramError::IncompatibleSchema);
                prop_assert_ne!(fa.uses_custom_buckets(), fb.uses_custom_buckets());
            }
            Ok(_) => {
                prop_assert_eq!(s.count, fa.count + fb.count);
                prop_assert_eq!(s.validate(), Ok(()));
                let total = |f: &FloatHistogram| f.zero_count
                    + f.positive_buckets.iter().sum::<f64>()
                    + f.negative_buckets.iter().sum::<f64>();
                // No observation is lost or invented by schema/zero/bounds reconciliation.
                prop_assert!((total(&s) - total(&fa) - total(&fb)).abs() < 1e-6);
                // Adding a histogram to itself is multiplying by 2.
                let mut twice = fa.clone();
                twice.add(&fa).expect("same kind");
                let mut doubled = fa.clone();
                doubled.mul(2.0);
                prop_assert_eq!(&twice.positive_buckets, &doubled.positive_buckets);
                prop_assert_eq!(twice.count, doubled.count);
                // An increase is never a reset.
                let mut grown = fa.clone();
                grown.add(&fa).expect("same kind");
                grown.counter_reset_hint = CounterResetHint::Unknown;
                prop_assert!(!grown.detect_reset(&fa));
            }
        }
    }

    #[test]
    fn reduce_resolution_preserves_totals(h in arb_histogram(), by in 1i32..4) {
        prop_assume!(!h.uses_custom_buckets() && h.schema - by >= EXPONENTIAL_SCHEMA_MIN);
        let mut r = h.clone();
        r.reduce_resolution(h.schema - by).expect("reduce");
        prop_assert_eq!(r.validate(), Ok(()));
        let mut f = h.to_float();
        f.reduce_resolution(h.schema - by).expect("reduce");
        prop_assert_eq!(f, r.to_float());
    }
}

/// Scenarios of Prometheus's `TestFloatHistogramAdd` (inputs and expected results written
/// out here). Prometheus keeps the first operand's span structure where ours is the
/// canonical union, so results compare after `compact(0)`.
#[test]
fn prometheus_add_scenarios() {
    let mk = |zt: f64,
              zc: f64,
              count: f64,
              sum: f64,
              schema: i32,
              ps: &[(i32, u32)],
              pb: &[f64],
              ns: &[(i32, u32)],
              nb: &[f64]| FloatHistogram {
        schema,
        zero_threshold: zt,
        zero_count: zc,
        count,
        sum,
        positive_spans: sp(ps),
        positive_buckets: pb.to_vec(),
        negative_spans: sp(ns),
        negative_buckets: nb.to_vec(),
        ..Default::default()
    };
    let check = |mut a: FloatHistogram, b: FloatHistogram, mut want: FloatHistogram| {
        a.add(&b).expect("add");
        a.compact(0);
        want.compact(0);
        assert!(
            (a.sum - want.sum).abs() < 1e-12,
            "{} vs {}",
            a.sum,
            want.sum
        );
        a.sum = want.sum;
        assert_eq!(a, want);
    };
    // "schema change"
    check(
        mk(
            0.01,
            8.0,
            21.0,
            1.234,
            0,
            &[(-1, 4), (0, 3)],
            &[5.0, 4.0, 2.0, 3.0, 6.0, 2.0, 5.0],
            &[(4, 2), (1, 2)],
            &[1.0, 1.0, 4.0, 4.0],
        ),
        mk(
            0.01,
            11.0,
            30.0,
            2.345,
            1,
            &[(-4, 3), (5, 5)],
            &[1.0, 0.0, 0.0, 3.0, 2.0, 2.0, 3.0, 4.0],
            &[(6, 3), (6, 4)],
            &[3.0, 0.5, 0.5, 2.0, 3.0, 2.0, 4.0],
        ),
        mk(
            0.01,
            19.0,
            51.0,
            3.579,
            0,
            &[(-2, 5), (0, 3)],
            &[1.0, 5.0, 4.0, 2.0, 6.0, 10.0, 9.0, 5.0],
            &[(3, 3), (1, 3)],
            &[3.0, 2.0, 1.0, 4.0, 9.0, 6.0],
        ),
    );
    // "larger zero threshold in first histogram ends up inside a populated bucket of second
    // histogram": 0.2 widens to 0.25, the upper bound of the populated bucket it cuts.
    check(
        mk(
            0.2,
            17.0,
            21.0,
            1.234,
            0,
            &[(1, 2), (0, 3)],
            &[2.0, 3.0, 6.0, 2.0, 5.0],
            &[(4, 2), (1, 2)],
            &[1.0, 1.0, 4.0, 4.0],
        ),
        mk(
            0.01,
            11.0,
            30.0,
            2.345,
            0,
            &[(-2, 2), (2, 3)],
            &[1.0, 0.0, 3.0, 4.0, 7.0],
            &[(3, 2), (3, 2)],
            &[3.0, 1.0, 5.0, 6.0],
        ),
        mk(
            0.25,
            29.0,
            51.0,
            3.579,
            0,
            &[(-1, 1), (1, 5)],
            &[0.0, 2.0, 6.0, 10.0, 9.0, 5.0],
            &[(3, 3), (1, 3)],
            &[3.0, 2.0, 1.0, 4.0, 9.0, 6.0],
        ),
    );
    // "custom buckets with partial intersection" and "intersection and rollup".
    let nhcb = |sum: f64, ps: &[(i32, u32)], pb: &[f64], cv: &[f64]| FloatHistogram {
        schema: CUSTOM_BUCKETS_SCHEMA,
        count: pb.iter().sum(),
        sum,
        positive_spans: sp(ps),
        positive_buckets: pb.to_vec(),
        custom_values: cv.to_vec(),
        ..Default::default()
    };
    check(
        nhcb(100.0, &[(0, 3)], &[2.0, 3.0, 5.0], &[1.0, 2.5]),
        nhcb(80.0, &[(0, 4)], &[1.0, 2.0, 3.0, 2.0], &[1.0, 2.0, 3.0]),
        nhcb(180.0, &[(0, 2)], &[3.0, 15.0], &[1.0]),
    );
    check(
        nhcb(2.345, &[(0, 1), (1, 1)], &[1.0, 5.0], &[2.0, 4.0]),
        nhcb(
            1.234,
            &[(0, 2), (1, 1), (0, 2)],
            &[10.0, 20.0, 40.0, 50.0, 100.0],
            &[1.0, 2.0, 3.0, 4.0, 5.0],
        ),
        nhcb(3.579, &[(0, 3)], &[31.0, 40.0, 155.0], &[2.0, 4.0]),
    );
}
