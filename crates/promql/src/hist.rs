//! Native histogram arithmetic PromQL functions need, with Prometheus 3.x semantics
//! (`promql/quantile.go` and `functions.go`): quantiles, fractions, variance.

use m3query_model::histogram::Bucket;

use crate::value::FloatHistogram;

/// The buckets in the order Prometheus's `AllBucketIterator` yields them: negative buckets
/// from the lowest, the zero bucket if it holds observations, positive buckets; bucket
/// bounds inside the zero bucket's range are clipped to it.
pub(crate) fn all_buckets(h: &FloatHistogram) -> Vec<Bucket<f64>> {
    let thr = h.zero_threshold;
    let clip = |mut b: Bucket<f64>| {
        if b.upper < 0.0 && b.upper > -thr {
            b.upper = -thr;
        } else if b.lower > 0.0 && b.lower < thr {
            b.lower = thr;
        }
        b
    };
    let mut out: Vec<Bucket<f64>> = h.negative_buckets().map(clip).collect();
    out.reverse();
    if h.zero_count > 0.0 {
        out.push(h.zero_bucket());
    }
    out.extend(h.positive_buckets().map(clip));
    out
}

/// What a quantile or fraction computation noticed about NaN observations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NanNote {
    None,
    /// The quantile is NaN because of NaN observations.
    QuantileNaN,
    /// The quantile is skewed higher by NaN observations.
    QuantileSkew,
    /// NaN observations were left out of the fraction.
    FractionNaNs,
}

/// Prometheus's `HistogramQuantile`.
pub(crate) fn quantile(q: f64, h: &FloatHistogram) -> (f64, NanNote) {
    if q < 0.0 {
        return (f64::NEG_INFINITY, NanNote::None);
    }
    if q > 1.0 {
        return (f64::INFINITY, NanNote::None);
    }
    if h.count == 0.0 || q.is_nan() {
        return (f64::NAN, NanNote::None);
    }
    let forward = h.sum.is_nan() || q < 0.5;
    let mut buckets = all_buckets(h);
    if !forward {
        buckets.reverse();
    }
    let mut rank = if forward {
        q * h.count
    } else {
        (1.0 - q) * h.count
    };
    let mut count = 0.0;
    let mut idx = 0;
    let mut bucket: Option<Bucket<f64>> = None;
    while idx < buckets.len() {
        let b = buckets[idx];
        idx += 1;
        if b.count == 0.0 {
            continue;
        }
        bucket = Some(b);
        count += b.count;
        if count >= rank {
            break;
        }
    }
    let Some(mut bucket) = bucket else {
        return (f64::NAN, NanNote::None);
    };
    if !h.uses_custom_buckets() && bucket.lower < 0.0 && bucket.upper > 0.0 {
        if h.negative_buckets.is_empty() && !h.positive_buckets.is_empty() {
            bucket.lower = 0.0;
        } else if h.positive_buckets.is_empty() && !h.negative_buckets.is_empty() {
            bucket.upper = 0.0;
        }
    } else if h.uses_custom_buckets() {
        if bucket.lower == f64::NEG_INFINITY {
            if bucket.upper <= 0.0 {
                return (bucket.upper, NanNote::None);
            }
            bucket.lower = 0.0;
        } else if bucket.upper == f64::INFINITY {
            return (bucket.lower, NanNote::None);
        }
    }
    if count > h.count {
        count = h.count;
    }
    if count < rank {
        if h.sum.is_nan() {
            return (f64::NAN, NanNote::QuantileNaN);
        }
        return (bucket.upper, NanNote::None);
    }
    if forward {
        rank -= count - bucket.count;
    } else {
        rank = count - rank;
    }
    let mut note = NanNote::None;
    if h.sum.is_nan() {
        count += buckets[idx..].iter().map(|b| b.count).sum::<f64>();
        if count < h.count {
            note = NanNote::QuantileSkew;
        }
    }
    let fraction = rank / bucket.count;
    if h.uses_custom_buckets() || (bucket.lower <= 0.0 && bucket.upper >= 0.0) {
        return (
            bucket.lower + (bucket.upper - bucket.lower) * fraction,
            note,
        );
    }
    let log_lower = bucket.lower.abs().log2();
    let log_upper = bucket.upper.abs().log2();
    if bucket.lower > 0.0 {
        return (
            (log_lower + (log_upper - log_lower) * fraction).exp2(),
            note,
        );
    }
    (
        -(log_upper + (log_lower - log_upper) * (1.0 - fraction)).exp2(),
        note,
    )
}

/// Prometheus's `Bucket.FractionBelow`.
fn fraction_below(b: &Bucket<f64>, v: f64, linear: bool) -> f64 {
    if linear {
        return (v - b.lower) / (b.upper - b.lower);
    }
    let log_lower = b.lower.abs().log2();
    let log_upper = b.upper.abs().log2();
    let log_v = v.abs().log2();
    if v > 0.0 {
        return (log_v - log_lower) / (log_upper - log_lower);
    }
    1.0 - ((log_v - log_upper) / (log_lower - log_upper))
}

/// Prometheus's `HistogramFraction`: the share of observations between `lower` and
/// `upper`, interpolating inside buckets.
pub(crate) fn fraction(lower: f64, upper: f64, h: &FloatHistogram) -> (f64, NanNote) {
    if h.count == 0.0 || lower.is_nan() || upper.is_nan() {
        return (f64::NAN, NanNote::None);
    }
    if lower >= upper {
        return (0.0, NanNote::None);
    }
    let (mut count, mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let buckets = all_buckets(h);
    let mut idx = 0;
    while idx < buckets.len() {
        let mut b = buckets[idx];
        idx += 1;
        count += b.count;
        let mut zero_bucket = false;
        if b.lower <= 0.0 && b.upper >= 0.0 {
            zero_bucket = true;
            if h.negative_buckets.is_empty() && !h.positive_buckets.is_empty() {
                b.lower = 0.0;
            } else if h.positive_buckets.is_empty() && !h.negative_buckets.is_empty() {
                b.upper = 0.0;
            }
        }
        let linear = h.uses_custom_buckets() || zero_bucket;
        let interpolate = |v: f64, rank: f64| {
            if linear && b.lower == f64::NEG_INFINITY {
                return b.count;
            }
            rank + b.count * fraction_below(&b, v, linear)
        };
        if !lower_set && b.lower >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && b.lower >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && b.lower < lower && b.upper > lower {
            lower_rank = interpolate(lower, rank);
            lower_set = true;
        }
        if !upper_set && b.lower < upper && b.upper > upper {
            upper_rank = interpolate(upper, rank);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank += b.count;
    }
    let mut note = NanNote::None;
    if h.sum.is_nan() {
        count += buckets[idx..].iter().map(|b| b.count).sum::<f64>();
        if count < h.count {
            note = NanNote::FractionNaNs;
        }
    } else {
        count = h.count;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    ((upper_rank - lower_rank) / h.count, note)
}

/// Prometheus's `histogramVariance`: the variance of the observations, each bucket's taken
/// at its (geometric, for exponential buckets) midpoint.
pub(crate) fn variance(h: &FloatHistogram) -> f64 {
    let mean = h.sum / h.count;
    let (mut sum, mut c) = (0.0, 0.0);
    for b in all_buckets(h) {
        if b.count == 0.0 {
            continue;
        }
        let val = if h.uses_custom_buckets() {
            (b.upper + b.lower) / 2.0
        } else if b.lower <= 0.0 && b.upper >= 0.0 {
            0.0
        } else {
            let v = (b.upper * b.lower).sqrt();
            if b.upper < 0.0 { -v } else { v }
        };
        let d = val - mean;
        (sum, c) = kahan_inc(b.count * d * d, sum, c);
    }
    (sum + c) / h.count
}

/// Kahan-Babuska (Neumaier) summation step, as Prometheus's `kahansum.Inc`.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3query_model::histogram::Span;

    fn nhcb(bounds: &[f64], counts: &[f64]) -> FloatHistogram {
        FloatHistogram {
            schema: -53,
            count: counts.iter().sum(),
            sum: 1.0,
            custom_values: bounds.to_vec(),
            positive_spans: vec![Span::new(0, counts.len() as u32)],
            positive_buckets: counts.to_vec(),
            ..FloatHistogram::default()
        }
    }

    #[test]
    fn custom_bucket_quantiles_and_fractions() {
        let h = nhcb(&[1.0, 2.0], &[2.0, 2.0, 0.0]);
        assert_eq!(quantile(0.5, &h).0, 1.0);
        assert_eq!(quantile(0.25, &h).0, 0.5);
        assert_eq!(quantile(2.0, &h).0, f64::INFINITY);
        assert!((fraction(0.0, 1.0, &h).0 - 0.5).abs() < 1e-12);
        assert!((fraction(1.0, 1.5, &h).0 - 0.25).abs() < 1e-12);
        assert_eq!(fraction(2.0, 1.0, &h).0, 0.0);
    }

    #[test]
    fn exponential_quantile_interpolates_logarithmically() {
        // Schema 0: bucket 1 is (1, 2], bucket 2 is (2, 4].
        let h = FloatHistogram {
            count: 4.0,
            sum: 10.0,
            positive_spans: vec![Span::new(1, 2)],
            positive_buckets: vec![2.0, 2.0],
            ..FloatHistogram::default()
        };
        let (q, _) = quantile(0.25, &h);
        assert!((q - 2f64.sqrt()).abs() < 1e-12, "{q}");
        assert!(variance(&h) > 0.0);
    }
}
