//! Tests of both histogram chunk encodings: chunk-cutting and recoding rules (Prometheus's
//! `AppendHistogram` behaviour), round trips of random histogram sequences, and robustness
//! against corrupt bytes.

use m3query_model::histogram::{CounterResetHint, FloatHistogram, Histogram, Span};
use m3query_model::{STALE_NAN_BITS, is_stale_nan};
use proptest::prelude::*;

use crate::{
    CounterResetHeader, FloatHistogramAppender, FloatHistogramIterator, HistogramAppend,
    HistogramAppender, HistogramIterator,
};

/// A histogram from absolute counts at bucket indices (positive side), exponential schema.
fn hist(schema: i32, zero: u64, buckets: &[(i32, i64)]) -> Histogram {
    let idx: Vec<i32> = buckets.iter().map(|b| b.0).collect();
    let abs: Vec<i64> = buckets.iter().map(|b| b.1).collect();
    Histogram {
        schema,
        zero_threshold: 2f64.powi(-128),
        zero_count: zero,
        count: zero + abs.iter().sum::<i64>() as u64,
        sum: abs.iter().sum::<i64>() as f64 * 1.5,
        positive_spans: crate::histogram::spans_of(&idx),
        positive_buckets: crate::histogram::deltas_of(&abs),
        ..Default::default()
    }
}

fn decode_int(bytes: &[u8]) -> Vec<(i64, Histogram)> {
    let mut it = HistogramIterator::new(bytes).expect("header");
    let mut out = Vec::new();
    while let Some(s) = it.next_histogram().expect("valid chunk") {
        out.push(s);
    }
    out
}

fn decode_float(bytes: &[u8]) -> Vec<(i64, FloatHistogram)> {
    let mut it = FloatHistogramIterator::new(bytes).expect("header");
    let mut out = Vec::new();
    while let Some(s) = it.next_histogram().expect("valid chunk") {
        out.push(s);
    }
    out
}

/// The same observations, ignoring layout differences (empty buckets) and hints.
fn same_obs(a: &Histogram, b: &Histogram) -> bool {
    if is_stale_nan(a.sum) || is_stale_nan(b.sum) {
        return is_stale_nan(a.sum) && is_stale_nan(b.sum);
    }
    let norm = |h: &Histogram| {
        let mut f = h.to_float();
        f.compact(0);
        f
    };
    norm(a) == norm(b)
}

fn same_obs_f(a: &FloatHistogram, b: &FloatHistogram) -> bool {
    if is_stale_nan(a.sum) || is_stale_nan(b.sum) {
        return is_stale_nan(a.sum) && is_stale_nan(b.sum);
    }
    let norm = |h: &FloatHistogram| {
        let mut f = h.clone();
        f.compact(0);
        f
    };
    norm(a) == norm(b)
}

#[test]
fn first_sample_bytes_are_prometheus_layout() {
    // Hand-assembled from the format: header (1 sample, unknown reset), zero threshold
    // byte 116 (2^-128), schema 0 ('0'), 1 positive span ('10'+'001'), length 1
    // ('10'+'001'), offset 0 ('0'), 0 negative spans ('0'), t=0 ('0'), count 1 ('10'+'001'),
    // zero count 0 ('0'), sum 1.0 (64 bits 0x3ff0...), bucket delta 1 ('10'+'001').
    let mut a = HistogramAppender::new();
    let h = Histogram {
        count: 1,
        sum: 1.0,
        zero_threshold: 2f64.powi(-128),
        positive_spans: vec![Span::new(0, 1)],
        positive_buckets: vec![1],
        ..Default::default()
    };
    assert!(matches!(a.append(0, &h), Ok(HistogramAppend::Appended)));
    let bits = "01110100".to_string()
        + "0"
        + "10001"
        + "10001"
        + "0"
        + "0"
        + "0"
        + "10001"
        + "0"
        + &format!("{:064b}", 1.0f64.to_bits())
        + "10001";
    let mut want = vec![0u8, 1, 0];
    for chunk in bits.as_bytes().chunks(8) {
        let mut b = 0u8;
        for (i, c) in chunk.iter().enumerate() {
            if *c == b'1' {
                b |= 1 << (7 - i);
            }
        }
        want.push(b);
    }
    assert_eq!(a.bytes(), want.as_slice());
}

#[test]
fn counter_reset_and_schema_change_cut_chunks() {
    let mut a = HistogramAppender::new();
    a.append(1, &hist(0, 1, &[(0, 5)])).expect("append");
    assert!(matches!(
        a.append(2, &hist(0, 1, &[(0, 6)])),
        Ok(HistogramAppend::Appended)
    ));
    // A bucket losing observations is a reset.
    let HistogramAppend::NewChunk(b) = a.append(3, &hist(0, 1, &[(0, 4)])).expect("append") else {
        panic!("a reset must cut");
    };
    assert_eq!(b.counter_reset_header(), CounterResetHeader::CounterReset);
    assert_eq!(a.num_samples(), 2, "the old chunk is unchanged");
    // A schema change cuts with an unknown header.
    let HistogramAppend::NewChunk(c) = a.append(3, &hist(1, 1, &[(0, 9)])).expect("append") else {
        panic!("a schema change must cut");
    };
    assert_eq!(c.counter_reset_header(), CounterResetHeader::Unknown);
    // An explicit hint cuts too.
    let mut h = hist(0, 1, &[(0, 9)]);
    h.counter_reset_hint = CounterResetHint::CounterReset;
    assert!(matches!(a.append(3, &h), Ok(HistogramAppend::NewChunk(_))));
    // A gauge cuts a counter chunk and starts a gauge one.
    h.counter_reset_hint = CounterResetHint::Gauge;
    let HistogramAppend::NewChunk(g) = a.append(3, &h).expect("append") else {
        panic!("gauge after counter must cut");
    };
    assert_eq!(g.counter_reset_header(), CounterResetHeader::Gauge);
    let dec = decode_int(g.bytes());
    assert_eq!(dec[0].1.counter_reset_hint, CounterResetHint::Gauge);
}

#[test]
fn new_buckets_recode_the_chunk() {
    let mut a = HistogramAppender::new();
    a.append(1, &hist(0, 0, &[(0, 1), (3, 1)])).expect("append");
    a.append(2, &hist(0, 0, &[(0, 2), (3, 1)])).expect("append");
    // Bucket 1 appears: the chunk is rewritten with a layout that has it.
    let h3 = hist(0, 0, &[(0, 2), (1, 4), (3, 2)]);
    assert!(matches!(a.append(3, &h3), Ok(HistogramAppend::Recoded)));
    let dec = decode_int(a.bytes());
    assert_eq!(dec.len(), 3);
    assert_eq!(
        dec[0].1.positive_spans,
        vec![Span::new(0, 2), Span::new(1, 1)]
    );
    assert!(same_obs(&dec[0].1, &hist(0, 0, &[(0, 1), (3, 1)])));
    assert!(same_obs(&dec[2].1, &h3));
    assert_eq!(
        dec[1].1.counter_reset_hint,
        CounterResetHint::NotCounterReset
    );
    assert_eq!(dec[0].1.counter_reset_hint, CounterResetHint::Unknown);
    // A sample lacking an empty bucket of the chunk is fine (it gets the bucket).
    let mut b = HistogramAppender::new();
    b.append(1, &hist(0, 0, &[(0, 1), (2, 0)])).expect("append");
    assert!(matches!(
        b.append(2, &hist(0, 0, &[(0, 3)])),
        Ok(HistogramAppend::Appended)
    ));
    let dec = decode_int(b.bytes());
    assert_eq!(
        dec[1].1.positive_spans,
        vec![Span::new(0, 1), Span::new(1, 1)]
    );
    // ...but lacking a populated one is a reset.
    assert!(matches!(
        b.append(3, &hist(0, 0, &[(2, 9)])),
        Ok(HistogramAppend::NewChunk(_))
    ));
}

#[test]
fn stale_markers() {
    let stale = Histogram {
        sum: f64::from_bits(STALE_NAN_BITS),
        ..Default::default()
    };
    let mut a = HistogramAppender::new();
    a.append(1, &hist(0, 1, &[(0, 5)])).expect("append");
    assert!(matches!(a.append(2, &stale), Ok(HistogramAppend::Appended)));
    assert!(matches!(a.append(3, &stale), Ok(HistogramAppend::Appended)));
    // After a stale marker a real sample starts a new chunk, header unknown.
    let HistogramAppend::NewChunk(n) = a.append(4, &hist(0, 1, &[(0, 5)])).expect("append") else {
        panic!("sample after stale must cut");
    };
    assert_eq!(n.counter_reset_header(), CounterResetHeader::Unknown);
    let dec = decode_int(a.bytes());
    assert_eq!(dec.len(), 3);
    assert_eq!(dec[1].1.sum.to_bits(), STALE_NAN_BITS);
    assert_eq!(dec[2].0, 3);

    let mut f = FloatHistogramAppender::new();
    f.append(1, &hist(0, 1, &[(0, 5)]).to_float())
        .expect("append");
    f.append(2, &stale.to_float()).expect("append");
    let dec = decode_float(f.bytes());
    assert_eq!(dec[1].1.sum.to_bits(), STALE_NAN_BITS);
}

#[test]
fn reopened_appender_continues_the_chunk() {
    let mut a = HistogramAppender::new();
    for i in 0..5 {
        a.append(i * 1000, &hist(0, i as u64, &[(0, i), (1, 2 * i)]))
            .expect("append");
    }
    let mut b = HistogramAppender::from_bytes(a.bytes()).expect("reopen");
    assert_eq!(b.num_samples(), 5);
    for i in 5..8 {
        b.append(i * 1000, &hist(0, i as u64, &[(0, i), (1, 2 * i)]))
            .expect("append");
    }
    let dec = decode_int(b.bytes());
    assert_eq!(dec.len(), 8);
    for (i, (t, h)) in dec.iter().enumerate() {
        let i = i as i64;
        assert_eq!(*t, i * 1000);
        assert!(same_obs(h, &hist(0, i as u64, &[(0, i), (1, 2 * i)])));
    }
    let mut fa = FloatHistogramAppender::new();
    fa.append(0, &hist(0, 1, &[(0, 1)]).to_float())
        .expect("append");
    let mut fb = FloatHistogramAppender::from_bytes(fa.bytes()).expect("reopen");
    fb.append(1, &hist(0, 2, &[(0, 3)]).to_float())
        .expect("append");
    assert_eq!(decode_float(fb.bytes()).len(), 2);
    assert!(HistogramAppender::from_bytes(&[0, 1]).is_err());
}

#[test]
fn custom_bucket_chunks() {
    let mut h = Histogram {
        schema: -53,
        count: 3,
        sum: 2.0,
        positive_spans: vec![Span::new(0, 3)],
        positive_buckets: vec![1, 0, 0],
        custom_values: vec![0.25, 1.5],
        ..Default::default()
    };
    let mut a = HistogramAppender::new();
    a.append(1, &h).expect("append");
    h.positive_buckets = vec![2, -1, 0];
    h.count = 4;
    assert!(matches!(a.append(2, &h), Ok(HistogramAppend::Appended)));
    // Other bounds: a new chunk that starts with a reset.
    h.custom_values = vec![0.25, 2.5];
    let HistogramAppend::NewChunk(n) = a.append(3, &h).expect("append") else {
        panic!("new bounds must cut");
    };
    assert_eq!(n.counter_reset_header(), CounterResetHeader::CounterReset);
    let dec = decode_int(a.bytes());
    assert_eq!(dec[1].1.custom_values, vec![0.25, 1.5]);
    assert_eq!(dec[1].1.positive_buckets, vec![2, -1, 0]);
}

#[test]
fn spans_and_buckets_must_agree() {
    let mut h = hist(0, 0, &[(0, 1), (1, 1)]);
    h.positive_buckets.push(1);
    let mut a = HistogramAppender::new();
    assert!(a.append(0, &h).is_err());
    assert_eq!(a.num_samples(), 0);
    a.append(0, &hist(0, 0, &[(0, 1)])).expect("append");
    assert!(a.append(1, &h).is_err(), "not even against an open chunk");
    let mut f = FloatHistogramAppender::new();
    let mut fh = hist(0, 0, &[(0, 1)]).to_float();
    fh.negative_buckets.push(1.0);
    assert!(f.append(0, &fh).is_err());
}

#[test]
fn reserved_schemas_are_reduced_on_read() {
    let mut h = hist(0, 0, &[(0, 1), (1, 1), (2, 1)]);
    h.schema = 10;
    let mut a = HistogramAppender::new();
    a.append(0, &h).expect("append");
    let dec = decode_int(a.bytes());
    assert_eq!(dec[0].1.schema, 8);
    assert_eq!(dec[0].1.count, 3);
}

/// Steps of a random series: per step, per bucket index (-3..5) an increment, with rare
/// resets (all counts restart) and schema switches.
fn arb_steps() -> impl Strategy<Value = Vec<(i64, u8, Vec<Option<i64>>, bool)>> {
    prop::collection::vec(
        (
            1i64..100_000,
            0u8..20,
            prop::collection::vec(prop::option::weighted(0.6, 0i64..4), 8),
            any::<bool>(),
        ),
        1..60,
    )
}

/// Turns steps into (t, histogram) samples: counters grow, new indices appear, sometimes a
/// reset, a schema switch, a gauge run or a stale marker.
fn build(steps: &[(i64, u8, Vec<Option<i64>>, bool)], gauge: bool) -> Vec<(i64, Histogram)> {
    let mut counts: Vec<Option<i64>> = vec![None; 8];
    let mut schema = 0;
    let mut t = 0i64;
    let mut out = Vec::new();
    for (dt, event, incs, neg) in steps {
        t += dt;
        match event {
            0 => counts = vec![None; 8],
            1 => schema = (schema + 1) % 3,
            2 => {
                out.push((
                    t,
                    Histogram {
                        sum: f64::from_bits(STALE_NAN_BITS),
                        ..Default::default()
                    },
                ));
                continue;
            }
            _ => {}
        }
        for (c, inc) in counts.iter_mut().zip(incs) {
            if let Some(inc) = inc {
                *c = Some(c.unwrap_or(0) + inc);
            }
        }
        let present: Vec<(i32, i64)> = counts
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|c| (i as i32 - 3, c)))
            .collect();
        let mut h = hist(schema, (t % 3) as u64, &present);
        if *neg {
            // Mirror the positive buckets onto the negative side.
            h.negative_spans = h.positive_spans.clone();
            h.negative_buckets = h.positive_buckets.clone();
            h.count += h.count - h.zero_count;
        }
        if gauge {
            h.counter_reset_hint = CounterResetHint::Gauge;
        }
        h.sum = (t as f64).sqrt();
        out.push((t, h));
    }
    out
}

/// Appends samples, cutting chunks as told; returns the chunks.
fn encode_int(samples: &[(i64, Histogram)]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut app = HistogramAppender::new();
    for (t, h) in samples {
        if let HistogramAppend::NewChunk(n) = app.append(*t, h).expect("append") {
            chunks.push(app.bytes().to_vec());
            app = *n;
        }
    }
    chunks.push(app.bytes().to_vec());
    chunks
}

fn encode_float(samples: &[(i64, FloatHistogram)]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut app = FloatHistogramAppender::new();
    for (t, h) in samples {
        if let HistogramAppend::NewChunk(n) = app.append(*t, h).expect("append") {
            chunks.push(app.bytes().to_vec());
            app = *n;
        }
    }
    chunks.push(app.bytes().to_vec());
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn int_chunks_round_trip(steps in arb_steps(), gauge in any::<bool>()) {
        let samples = build(&steps, gauge);
        let chunks = encode_int(&samples);
        let decoded: Vec<(i64, Histogram)> = chunks.iter().flat_map(|c| decode_int(c)).collect();
        prop_assert_eq!(decoded.len(), samples.len());
        for ((t, h), (dt, dh)) in samples.iter().zip(&decoded) {
            prop_assert_eq!(t, dt);
            prop_assert!(same_obs(h, dh), "{:?} != {:?}", h, dh);
            if gauge && !is_stale_nan(dh.sum) {
                prop_assert_eq!(dh.counter_reset_hint, CounterResetHint::Gauge);
            }
        }
        // Within a counter chunk no sample after the first is a reset of the one before.
        if !gauge {
            for c in &chunks {
                let d = decode_int(c);
                for w in d.windows(2) {
                    if is_stale_nan(w[0].1.sum) || is_stale_nan(w[1].1.sum) { continue; }
                    prop_assert!(!w[1].1.to_float().detect_reset(&w[0].1.to_float()));
                }
            }
        }
    }

    #[test]
    fn float_chunks_round_trip(steps in arb_steps(), gauge in any::<bool>(), scale in 0.1f64..10.0) {
        let samples: Vec<(i64, FloatHistogram)> = build(&steps, gauge)
            .into_iter()
            .map(|(t, h)| {
                let mut f = h.to_float();
                if !is_stale_nan(f.sum) { f.mul(scale); }
                (t, f)
            })
            .collect();
        let chunks = encode_float(&samples);
        let decoded: Vec<(i64, FloatHistogram)> =
            chunks.iter().flat_map(|c| decode_float(c)).collect();
        prop_assert_eq!(decoded.len(), samples.len());
        for ((t, h), (dt, dh)) in samples.iter().zip(&decoded) {
            prop_assert_eq!(t, dt);
            prop_assert!(same_obs_f(h, dh), "{:?} != {:?}", h, dh);
        }
        // Reopening every chunk and decoding again gives the same samples.
        for c in &chunks {
            let re = FloatHistogramAppender::from_bytes(c).expect("reopen");
            prop_assert_eq!(re.bytes(), c.as_slice());
        }
    }

    #[test]
    fn corrupt_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(mut it) = HistogramIterator::new(&bytes) {
            while let Ok(Some(_)) = it.next_histogram() {}
        }
        if let Ok(mut it) = FloatHistogramIterator::new(&bytes) {
            while let Ok(Some(_)) = it.next_histogram() {}
        }
        let _ = HistogramAppender::from_bytes(&bytes);
    }
}
