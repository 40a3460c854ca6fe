//! Native histograms between the remote-write protobuf messages (1.0 `prometheus.Histogram`
//! and 2.0 `io.prometheus.write.v2.Histogram`, the same fields) and the model's types.
//!
//! As in Prometheus, a message is a float histogram when its `count` is `count_float`;
//! otherwise integer, with delta-encoded buckets in `*_deltas` (passed through unchanged: the
//! model's [`Histogram`] keeps Prometheus's delta form).

use m3query_model::histogram::{CounterResetHint, FloatHistogram, Histogram, Span};

/// A decoded remote-write histogram sample: which kind it is, and its timestamp.
#[derive(Clone, Debug, PartialEq)]
pub enum HistogramSample {
    /// Integer counts.
    Int(i64, Histogram),
    /// Float counts.
    Float(i64, FloatHistogram),
}

macro_rules! convert {
    ($modname:ident, $m:path, $doc:literal) => {
        #[doc = $doc]
        pub mod $modname {
            use super::*;
            use $m as pb;

            fn spans(s: &[pb::BucketSpan]) -> Vec<Span> {
                s.iter().map(|s| Span::new(s.offset, s.length)).collect()
            }

            fn pb_spans(s: &[Span]) -> Vec<pb::BucketSpan> {
                s.iter()
                    .map(|s| pb::BucketSpan {
                        offset: s.offset,
                        length: s.length,
                    })
                    .collect()
            }

            /// The model histogram of a message (no validation: call `validate` on it).
            pub fn from_proto(h: &pb::Histogram) -> HistogramSample {
                let hint = CounterResetHint::from_proto(h.reset_hint);
                if let Some(pb::histogram::Count::CountFloat(count)) = h.count {
                    let zero_count = match h.zero_count {
                        Some(pb::histogram::ZeroCount::ZeroCountFloat(z)) => z,
                        Some(pb::histogram::ZeroCount::ZeroCountInt(z)) => z as f64,
                        None => 0.0,
                    };
                    return HistogramSample::Float(
                        h.timestamp,
                        FloatHistogram {
                            counter_reset_hint: hint,
                            schema: h.schema,
                            zero_threshold: h.zero_threshold,
                            zero_count,
                            count,
                            sum: h.sum,
                            positive_spans: spans(&h.positive_spans),
                            negative_spans: spans(&h.negative_spans),
                            positive_buckets: h.positive_counts.clone(),
                            negative_buckets: h.negative_counts.clone(),
                            custom_values: h.custom_values.clone(),
                        },
                    );
                }
                let count = match h.count {
                    Some(pb::histogram::Count::CountInt(c)) => c,
                    _ => 0,
                };
                let zero_count = match h.zero_count {
                    Some(pb::histogram::ZeroCount::ZeroCountInt(z)) => z,
                    // A float zero count in an integer histogram is malformed; truncating
                    // lets validation report the mismatch instead of inventing a value.
                    Some(pb::histogram::ZeroCount::ZeroCountFloat(z)) => z as u64,
                    None => 0,
                };
                HistogramSample::Int(
                    h.timestamp,
                    Histogram {
                        counter_reset_hint: hint,
                        schema: h.schema,
                        zero_threshold: h.zero_threshold,
                        zero_count,
                        count,
                        sum: h.sum,
                        positive_spans: spans(&h.positive_spans),
                        negative_spans: spans(&h.negative_spans),
                        positive_buckets: h.positive_deltas.clone(),
                        negative_buckets: h.negative_deltas.clone(),
                        custom_values: h.custom_values.clone(),
                    },
                )
            }

            /// The message of an integer histogram at `t`.
            pub fn to_proto(t: i64, h: &Histogram) -> pb::Histogram {
                pb::Histogram {
                    count: Some(pb::histogram::Count::CountInt(h.count)),
                    sum: h.sum,
                    schema: h.schema,
                    zero_threshold: h.zero_threshold,
                    zero_count: Some(pb::histogram::ZeroCount::ZeroCountInt(h.zero_count)),
                    negative_spans: pb_spans(&h.negative_spans),
                    negative_deltas: h.negative_buckets.clone(),
                    positive_spans: pb_spans(&h.positive_spans),
                    positive_deltas: h.positive_buckets.clone(),
                    reset_hint: h.counter_reset_hint.to_proto(),
                    timestamp: t,
                    custom_values: h.custom_values.clone(),
                    ..Default::default()
                }
            }

            /// The message of a float histogram at `t`.
            pub fn float_to_proto(t: i64, h: &FloatHistogram) -> pb::Histogram {
                pb::Histogram {
                    count: Some(pb::histogram::Count::CountFloat(h.count)),
                    sum: h.sum,
                    schema: h.schema,
                    zero_threshold: h.zero_threshold,
                    zero_count: Some(pb::histogram::ZeroCount::ZeroCountFloat(h.zero_count)),
                    negative_spans: pb_spans(&h.negative_spans),
                    negative_counts: h.negative_buckets.clone(),
                    positive_spans: pb_spans(&h.positive_spans),
                    positive_counts: h.positive_buckets.clone(),
                    reset_hint: h.counter_reset_hint.to_proto(),
                    timestamp: t,
                    custom_values: h.custom_values.clone(),
                    ..Default::default()
                }
            }
        }
    };
}

/// The integer histogram a float histogram stands for, when every count (total, zero bucket,
/// each bucket) is a non-negative integer below 2^53 (exactly representable), as scraped and
/// remote-written integer histograms read back through the storage seam's float form are.
/// Remote read sends those in Prometheus's integer form (`count_int`, `HISTOGRAM` chunks):
/// smaller, and what Prometheus itself would send for them. A stale marker qualifies.
pub fn float_as_int(h: &FloatHistogram) -> Option<Histogram> {
    const LIMIT: f64 = (1u64 << 53) as f64;
    let int = |c: f64| ((0.0..LIMIT).contains(&c) && c.fract() == 0.0).then_some(c as u64);
    let deltas = |b: &[f64]| -> Option<Vec<i64>> {
        let mut prev = 0i64;
        b.iter()
            .map(|&c| {
                let c = int(c)? as i64;
                let d = c - prev;
                prev = c;
                Some(d)
            })
            .collect()
    };
    Some(Histogram {
        counter_reset_hint: h.counter_reset_hint,
        schema: h.schema,
        zero_threshold: h.zero_threshold,
        zero_count: int(h.zero_count)?,
        count: int(h.count)?,
        sum: h.sum,
        positive_spans: h.positive_spans.clone(),
        negative_spans: h.negative_spans.clone(),
        positive_buckets: deltas(&h.positive_buckets)?,
        negative_buckets: deltas(&h.negative_buckets)?,
        custom_values: h.custom_values.clone(),
    })
}

convert!(
    v1,
    crate::prompb,
    "Conversions for remote write 1.0 (and remote read) `prometheus.Histogram`."
);
convert!(
    v2,
    crate::prompb::v2,
    "Conversions for remote write 2.0 `io.prometheus.write.v2.Histogram`."
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompb;
    use prost::Message;

    fn sample() -> Histogram {
        Histogram {
            counter_reset_hint: CounterResetHint::NotCounterReset,
            schema: 3,
            zero_threshold: 0.001,
            zero_count: 2,
            count: 11,
            sum: 12.5,
            positive_spans: vec![Span::new(-2, 2), Span::new(3, 1)],
            negative_spans: vec![Span::new(1, 1)],
            positive_buckets: vec![1, 2, -1],
            negative_buckets: vec![3],
            custom_values: vec![],
        }
    }

    #[test]
    fn int_and_float_round_trip_both_versions() {
        let h = sample();
        assert_eq!(h.validate(), Ok(()));
        let m = v1::to_proto(7, &h);
        let back = prompb::Histogram::decode(m.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(v1::from_proto(&back), HistogramSample::Int(7, h.clone()));
        let HistogramSample::Int(_, got) = v2::from_proto(&v2::to_proto(7, &h)) else {
            panic!("integer histogram expected");
        };
        assert_eq!(got.counter_reset_hint, CounterResetHint::NotCounterReset);

        let mut f = h.to_float();
        f.mul(0.5);
        assert_eq!(
            v1::from_proto(&v1::float_to_proto(8, &f)),
            HistogramSample::Float(8, f.clone())
        );
        assert_eq!(
            v2::from_proto(&v2::float_to_proto(8, &f)),
            HistogramSample::Float(8, f)
        );
    }

    #[test]
    fn integral_float_histograms_convert_back_to_integer_ones() {
        let h = sample();
        let back = float_as_int(&h.to_float()).expect("integral");
        assert_eq!(back, h);
        assert_eq!(back.counter_reset_hint, CounterResetHint::NotCounterReset);
        let mut f = h.to_float();
        f.positive_buckets[1] = 2.5;
        assert_eq!(float_as_int(&f), None);
        let mut f = h.to_float();
        f.count = 2f64.powi(53);
        assert_eq!(float_as_int(&f), None);
        let stale = FloatHistogram {
            sum: m3query_model::STALE_NAN,
            ..Default::default()
        };
        let int = float_as_int(&stale).expect("a stale marker is integral");
        assert!(m3query_model::is_stale_nan(int.sum));
    }

    #[test]
    fn custom_buckets_keep_their_bounds() {
        let h = Histogram {
            schema: -53,
            count: 3,
            sum: 1.0,
            positive_spans: vec![Span::new(0, 2)],
            positive_buckets: vec![1, 1],
            custom_values: vec![0.5],
            ..Default::default()
        };
        let HistogramSample::Int(_, got) = v1::from_proto(&v1::to_proto(0, &h)) else {
            panic!("integer histogram expected");
        };
        assert_eq!(got.custom_values, vec![0.5]);
        assert_eq!(got.validate(), Ok(()));
    }
}
