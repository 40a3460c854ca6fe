//! Native histogram builders shared by the histogram tests.

use m3query_model::histogram::{CounterResetHint, Histogram, Span};

/// A histogram from absolute positive and negative counts at bucket indices.
pub fn hist(schema: i32, zero: u64, pos: &[(i32, i64)], neg: &[(i32, i64)], sum: f64) -> Histogram {
    fn side(b: &[(i32, i64)]) -> (Vec<Span>, Vec<i64>) {
        let mut spans: Vec<Span> = Vec::new();
        let mut deltas = Vec::new();
        let (mut last_i, mut last_c) = (0i32, 0i64);
        for &(i, c) in b {
            match spans.last_mut() {
                Some(s) if i == last_i + 1 => s.length += 1,
                Some(_) => spans.push(Span::new(i - last_i - 1, 1)),
                None => spans.push(Span::new(i, 1)),
            }
            deltas.push(c - last_c);
            (last_i, last_c) = (i, c);
        }
        (spans, deltas)
    }
    let (ps, pb) = side(pos);
    let (ns, nb) = side(neg);
    let total: i64 = pos.iter().chain(neg).map(|b| b.1).sum();
    Histogram {
        counter_reset_hint: CounterResetHint::Unknown,
        schema,
        zero_threshold: 2f64.powi(-128),
        zero_count: zero,
        count: zero + total as u64,
        sum,
        positive_spans: ps,
        negative_spans: ns,
        positive_buckets: pb,
        negative_buckets: nb,
        custom_values: vec![],
    }
}

/// The samples a test series gets: growth inside the layout, new buckets on both sides
/// (the open chunk is recoded), with `gap` an empty bucket that the next sample leaves out,
/// a counter reset (new chunk), more growth, and a schema change (new chunk).
///
/// The left-out empty bucket is where Prometheus versions differ: since 2.55 the sample gets
/// the bucket back and joins the chunk (our codec does that), while 2.42 treats it as a
/// counter reset and cuts a new chunk. So the byte comparison uses the series without it.
pub fn samples(t0: i64, gap: bool) -> Vec<(i64, Histogram)> {
    let mut out = Vec::new();
    let mut t = t0;
    let mut push = |h: Histogram, dt: i64| {
        t += dt;
        out.push((t, h));
    };
    push(hist(0, 1, &[(0, 2), (1, 1)], &[], 3.5), 0);
    push(hist(0, 2, &[(0, 3), (1, 1)], &[], 5.25), 15_000);
    push(
        hist(0, 2, &[(0, 3), (1, 4), (3, 1)], &[(0, 1)], 9.0),
        15_000,
    );
    push(
        hist(0, 3, &[(-2, 1), (0, 7), (1, 4), (3, 1)], &[(0, 2)], 14.0),
        15_000,
    );
    push(
        hist(
            0,
            3,
            &[(-2, 1), (0, 9), (1, 6), (3, 1)],
            if gap { &[(0, 2), (5, 0)] } else { &[(0, 2)] },
            19.5,
        ),
        14_000,
    );
    push(
        hist(0, 3, &[(-2, 1), (0, 9), (1, 6), (3, 1)], &[(0, 5)], 23.0),
        16_000,
    );
    for i in 1..20 {
        push(
            hist(
                0,
                3 + i,
                &[(-2, 1), (0, 9 + i as i64), (1, 6 + 2 * i as i64), (3, 1)],
                &[(0, 5)],
                23.0 + i as f64,
            ),
            15_000,
        );
    }
    // Counter reset: fewer observations.
    push(hist(0, 0, &[(0, 1)], &[], 0.5), 15_000);
    push(hist(0, 1, &[(0, 2), (2, 1)], &[], 1.75), 15_000);
    // Schema change.
    push(
        hist(2, 1, &[(0, 2), (5, 3), (6, 1)], &[(-1, 4)], 1e6 / 3.0),
        15_000,
    );
    push(
        hist(
            2,
            2,
            &[(0, 2), (5, 3), (6, 2)],
            &[(-1, 4)],
            1e6 / 3.0 + 0.125,
        ),
        15_000,
    );
    out
}
