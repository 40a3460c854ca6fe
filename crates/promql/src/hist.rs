//! Native histogram arithmetic PromQL functions need, with Prometheus 3.x semantics
//! (`promql/quantile.go` and `functions.go`): quantiles, fractions, variance.

use m3query_model::histogram::{AddOutcome, Bucket, CounterResetHint};

use crate::annotations::msg;
use crate::functions::RangeCtx;
use crate::start_ts::{self, WindowSts, st};
use crate::value::{FloatHistogram, HPoint, Point};

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
    // No bucket holds observations (all are NaN, or all buckets are empty): Prometheus goes
    // on with an empty bucket at zero.
    let mut bucket = bucket.unwrap_or(Bucket {
        lower: 0.0,
        upper: 0.0,
        lower_inclusive: false,
        upper_inclusive: false,
        count: 0.0,
        index: 0,
    });
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

/// A rollup's value over a window holding native histograms.
pub(crate) enum RollupOut {
    F(f64),
    H(FloatHistogram),
}

/// The metric name annotations name.
fn metric_of(labels: &m3query_model::Labels) -> &str {
    labels.metric_name().unwrap_or("")
}

/// A rollup over a window of a series that holds native histograms (`hists` non-empty or
/// the series had some elsewhere): Prometheus's histogram branches of the range functions.
/// `float_fn` is the float rollup, used when the window holds floats only.
/// `sts` are the window's start timestamps (empty when the series has none or the function
/// does not read them).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rollup(
    name: &str,
    floats: &[Point],
    hists: &[HPoint],
    sts: WindowSts<'_>,
    labels: &m3query_model::Labels,
    c: &mut RangeCtx,
    float_fn: crate::functions::RangeFn,
    pos: crate::parser::PosRange,
) -> Option<RollupOut> {
    if hists.is_empty() {
        if !sts.floats.is_empty() {
            return float_rollup_with_sts(name, floats, sts.floats, labels, c, float_fn, pos)
                .map(RollupOut::F);
        }
        return float_fn(floats, c).map(RollupOut::F);
    }
    let metric = metric_of(labels);
    let mixed = !floats.is_empty();
    match name {
        "rate" | "increase" | "delta" => {
            if mixed {
                c.annos.warn(msg::mixed_floats_histograms(metric), pos);
                return None;
            }
            if c.anchored || c.smoothed {
                return extended_histogram_rate(hists, name, metric, c, pos).map(RollupOut::H);
            }
            let is_counter = name != "delta";
            extrapolated_histogram_rate(
                hists,
                sts.hists,
                is_counter,
                name == "rate",
                metric,
                c,
                pos,
            )
            .map(RollupOut::H)
        }
        "irate" | "idelta" => {
            instant_histogram_value(floats, hists, sts, name == "irate", metric, c, pos)
        }
        "sum_over_time" | "avg_over_time" => {
            if mixed {
                c.annos.warn(msg::mixed_floats_histograms(metric), pos);
                return None;
            }
            let mut acc = HistAcc::new(&hists[0].h);
            let (mut reset_seen, mut not_reset_seen, mut reconciled) = (false, false, false);
            let mut track = |h: &FloatHistogram| match h.counter_reset_hint {
                CounterResetHint::CounterReset => reset_seen = true,
                CounterResetHint::NotCounterReset => not_reset_seen = true,
                _ => {}
            };
            track(&hists[0].h);
            let avg = name == "avg_over_time";
            for p in &hists[1..] {
                track(&p.h);
                let r = if avg {
                    acc.add_to_mean(&p.h)
                } else {
                    acc.add(&p.h)
                };
                match r {
                    Ok(o) => reconciled |= o.custom_bounds_reconciled,
                    Err(_) => {
                        c.annos.warn(msg::mixed_exponential_custom(metric), pos);
                        return None;
                    }
                }
            }
            if reset_seen && not_reset_seen {
                c.annos
                    .warn(msg::counter_reset_collision("aggregation"), pos);
            }
            if reconciled {
                c.annos
                    .info(msg::mismatched_custom_buckets("aggregation"), pos);
            }
            Some(RollupOut::H(if avg { acc.mean() } else { acc.sum() }))
        }
        "count_over_time" => Some(RollupOut::F((floats.len() + hists.len()) as f64)),
        "present_over_time" | "absent_over_time" => Some(RollupOut::F(1.0)),
        "last_over_time" => {
            let h = &hists[hists.len() - 1];
            match floats.last() {
                Some(f) if f.t > h.t => Some(RollupOut::F(f.v)),
                _ => Some(RollupOut::H((*h.h).clone())),
            }
        }
        "first_over_time" => {
            let h = &hists[0];
            match floats.first() {
                Some(f) if f.t < h.t => Some(RollupOut::F(f.v)),
                _ => Some(RollupOut::H((*h.h).clone())),
            }
        }
        "ts_of_last_over_time" => {
            let t = hists[hists.len() - 1]
                .t
                .max(floats.last().map_or(i64::MIN, |f| f.t));
            Some(RollupOut::F(t as f64 / 1000.0))
        }
        "ts_of_first_over_time" => {
            let t = hists[0].t.min(floats.first().map_or(i64::MAX, |f| f.t));
            Some(RollupOut::F(t as f64 / 1000.0))
        }
        "resets" | "changes" => {
            let resets = name == "resets";
            let (mut fi, mut hi) = (0usize, 0usize);
            // Each sample: its float or histogram, its time and its start timestamp.
            type Cur<'h> = (Option<f64>, Option<&'h FloatHistogram>, i64, i64);
            let mut prev: Option<Cur<'_>> = None;
            let mut n = 0u64;
            while fi < floats.len() || hi < hists.len() {
                let take_float =
                    hi >= hists.len() || (fi < floats.len() && floats[fi].t < hists[hi].t);
                let cur: Cur<'_> = if take_float {
                    fi += 1;
                    let p = floats[fi - 1];
                    (Some(p.v), None, p.t, st(sts.floats, fi - 1))
                } else {
                    hi += 1;
                    let p = &hists[hi - 1];
                    (None, Some(&*p.h), p.t, st(sts.hists, hi - 1))
                };
                if let Some(p) = prev {
                    let st_reset = resets && start_ts::is_reset(p.3, p.2, cur.3, cur.2);
                    n += match (p, cur) {
                        ((Some(a), ..), (Some(b), ..)) => {
                            if resets {
                                u64::from(b < a || st_reset)
                            } else {
                                u64::from(b != a && !(a.is_nan() && b.is_nan()))
                            }
                        }
                        ((_, Some(a), ..), (_, Some(b), ..)) => {
                            if resets {
                                u64::from(st_reset || b.detect_reset(a))
                            } else {
                                u64::from(a != b)
                            }
                        }
                        _ => 1,
                    };
                }
                prev = Some(cur);
            }
            Some(RollupOut::F(n as f64))
        }
        _ => {
            if mixed {
                c.annos
                    .info(msg::histogram_ignored_in_mixed_range(metric), pos);
                return float_fn(floats, c).map(RollupOut::F);
            }
            None
        }
    }
}

/// A rollup over a float window with start timestamps `sts` (aligned with `floats`): the
/// start-aware forms of the functions that read them, the plain rollup for the rest.
fn float_rollup_with_sts(
    name: &str,
    floats: &[Point],
    sts: &[i64],
    labels: &m3query_model::Labels,
    c: &mut RangeCtx,
    float_fn: crate::functions::RangeFn,
    pos: crate::parser::PosRange,
) -> Option<f64> {
    match name {
        // `anchored`/`smoothed` windows interpolate at their edges and ignore starts, as
        // Prometheus's `extendedRate` does.
        "rate" | "increase" if !(c.anchored || c.smoothed) => {
            start_ts::rate(floats, sts, c, name == "rate", metric_of(labels), pos)
        }
        "irate" => start_ts::irate(floats, sts),
        "resets" => {
            let first = crate::functions::first_index(floats, c)?;
            Some(start_ts::resets(
                &floats[first..],
                sts.get(first..).unwrap_or_default(),
            ))
        }
        _ => float_fn(floats, c),
    }
}

/// Prometheus's `interpolateHistograms`: the histogram at `t` between `p1` and `p2`; for counters, a reset between them interpolates from zero.
pub(crate) fn interpolate(
    p1: &HPoint,
    p2: &HPoint,
    t: i64,
    is_counter: bool,
    annos: &mut crate::annotations::Annotations,
    pos: crate::parser::PosRange,
) -> Result<FloatHistogram, ()> {
    let (h1, t1, h2, t2) = (&*p1.h, p1.t, &*p2.h, p2.t);
    if t == t1 {
        return Ok(h1.clone());
    }
    if t == t2 {
        return Ok(h2.clone());
    }
    let fraction = (t - t1) as f64 / (t2 - t1) as f64;
    let mut r = h2.clone();
    if is_counter && h2.detect_reset(h1) {
        r.mul(fraction);
        return Ok(r);
    }
    let o = r.sub(h1).map_err(|_| ())?;
    if o.custom_bounds_reconciled {
        annos.info(msg::mismatched_custom_buckets("subtraction"), pos);
    }
    r.mul(fraction);
    let o = r.add(h1).map_err(|_| ())?;
    if o.custom_bounds_reconciled {
        annos.info(msg::mismatched_custom_buckets("addition"), pos);
    }
    Ok(r)
}

/// Prometheus's `extendedHistogramRate`: `rate`/`increase`/`delta` over an `anchored` or
/// `smoothed` window of histograms (`hists` starts with the sample at or before the range
/// start, when there is one).
fn extended_histogram_rate(
    h: &[HPoint],
    name: &str,
    metric: &str,
    c: &mut RangeCtx,
    pos: crate::parser::PosRange,
) -> Option<FloatHistogram> {
    let is_counter = name != "delta";
    let (range_start, range_end, smoothed) = (c.range_start, c.range_end, c.smoothed);
    let mut last = h.len() - 1;
    let first = h[..last]
        .partition_point(|p| p.t <= range_start)
        .saturating_sub(1);
    if smoothed {
        last = h[..last].partition_point(|p| p.t < range_end);
    }
    if h[last].t <= range_start || (smoothed && h[first].t > range_end) {
        return None;
    }
    let custom = h[first].h.uses_custom_buckets();
    for p in &h[first..=last] {
        if p.h.uses_custom_buckets() != custom {
            c.annos.warn(msg::mixed_exponential_custom(metric), pos);
            return None;
        }
        if is_counter && p.h.counter_reset_hint == CounterResetHint::Gauge {
            c.annos.warn(msg::not_counter(metric), pos);
        }
    }
    let interp = |a: usize, b: usize, t: i64, annos: &mut crate::annotations::Annotations| {
        interpolate(&h[a], &h[b], t, is_counter, annos, pos)
    };
    let left = if smoothed && h[first].t < range_start {
        interp(first, first + 1, range_start, &mut c.annos)
    } else {
        Ok((*h[first].h).clone())
    };
    let right = if smoothed && last > 0 && h[last].t > range_end {
        interp(last - 1, last, range_end, &mut c.annos)
    } else {
        Ok((*h[last].h).clone())
    };
    let (Ok(left), Ok(right)) = (left, right) else {
        c.annos.warn(msg::mixed_exponential_custom(metric), pos);
        return None;
    };
    if !is_counter
        && (left.counter_reset_hint != CounterResetHint::Gauge
            || right.counter_reset_hint != CounterResetHint::Gauge)
    {
        c.annos.warn(msg::not_gauge(metric), pos);
    }
    let mut result = right.clone();
    if !checked_combine(&mut result, &left, false, metric, c, pos) {
        return None;
    }
    if is_counter {
        // Values lost at counter resets inside the window.
        let mut start = first + 1;
        let mut prev: &FloatHistogram = &left;
        if smoothed
            && h[first].t < range_start
            && first + 1 < h.len()
            && h[first + 1].h.detect_reset(&h[first].h)
        {
            prev = &h[first + 1].h;
            start += 1;
        }
        let mut correction: Option<FloatHistogram> = None;
        if start <= last {
            for p in &h[start..last] {
                if p.h.detect_reset(prev) {
                    match &mut correction {
                        None => correction = Some(prev.clone()),
                        Some(acc) => {
                            if !checked_combine(acc, prev, true, metric, c, pos) {
                                return None;
                            }
                        }
                    }
                }
                prev = &p.h;
            }
            if right.detect_reset(prev) {
                match &mut correction {
                    None => correction = Some(prev.clone()),
                    Some(acc) => {
                        if !checked_combine(acc, prev, true, metric, c, pos) {
                            return None;
                        }
                    }
                }
            }
        }
        if let Some(corr) = correction
            && !checked_combine(&mut result, &corr, true, metric, c, pos)
        {
            return None;
        }
    }
    if name == "rate" {
        result.div(c.range_ms as f64 / 1000.0);
    }
    result.counter_reset_hint = CounterResetHint::Gauge;
    result.compact(0);
    Some(result)
}

/// `base += other` (or `-=`), with Prometheus's annotations; `false` when the schemas
/// cannot be combined.
fn checked_combine(
    base: &mut FloatHistogram,
    other: &FloatHistogram,
    add: bool,
    metric: &str,
    c: &mut RangeCtx,
    pos: crate::parser::PosRange,
) -> bool {
    let r = if add {
        base.add(other)
    } else {
        base.sub(other)
    };
    match r {
        Ok(o) => {
            if o.custom_bounds_reconciled {
                let op = if add { "addition" } else { "subtraction" };
                c.annos.info(msg::mismatched_custom_buckets(op), pos);
            }
            true
        }
        Err(_) => {
            c.annos.warn(msg::mixed_exponential_custom(metric), pos);
            false
        }
    }
}

/// A copy of `h` at a schema no finer than `schema`.
fn at_schema(h: &FloatHistogram, schema: i32) -> FloatHistogram {
    let mut h = h.clone();
    if schema < h.schema && !h.uses_custom_buckets() {
        // Reducing to a coarser valid schema cannot fail.
        let _ = h.reduce_resolution(schema);
    }
    h
}

/// Prometheus's `histogramRate`: last minus first, plus every value lost at a counter reset.
fn histogram_rate(
    points: &[HPoint],
    sts: &[i64],
    is_counter: bool,
    metric: &str,
    c: &mut RangeCtx,
    pos: crate::parser::PosRange,
) -> Option<FloatHistogram> {
    let first = &*points[0].h;
    let last = &*points[points.len() - 1].h;
    if is_counter
        && (first.counter_reset_hint == CounterResetHint::Gauge
            || last.counter_reset_hint == CounterResetHint::Gauge)
    {
        c.annos.warn(msg::not_counter(metric), pos);
    }
    let empty;
    let mut prev: &FloatHistogram = first;
    if is_counter {
        let second = &*points[1].h;
        let st_reset = start_ts::is_reset(st(sts, 0), points[0].t, st(sts, 1), points[1].t);
        if st_reset || second.detect_reset(first) {
            empty = FloatHistogram {
                schema: second.schema,
                custom_values: second.custom_values.clone(),
                ..FloatHistogram::default()
            };
            prev = &empty;
        }
    }
    let custom = prev.uses_custom_buckets();
    if last.uses_custom_buckets() != custom {
        c.annos.warn(msg::mixed_exponential_custom(metric), pos);
        return None;
    }
    let mut min_schema = last.schema.min(prev.schema);
    for p in &points[1..points.len() - 1] {
        if !is_counter {
            continue;
        }
        if p.h.counter_reset_hint == CounterResetHint::Gauge {
            c.annos.warn(msg::not_counter(metric), pos);
        }
        min_schema = min_schema.min(p.h.schema);
        if p.h.uses_custom_buckets() != custom {
            c.annos.warn(msg::mixed_exponential_custom(metric), pos);
            return None;
        }
    }
    let mut h = at_schema(last, min_schema);
    match h.sub(prev) {
        Ok(o) if o.custom_bounds_reconciled => {
            c.annos
                .info(msg::mismatched_custom_buckets("subtraction"), pos);
        }
        Ok(_) => {}
        Err(_) => {
            c.annos.warn(msg::mixed_exponential_custom(metric), pos);
            return None;
        }
    }
    if is_counter {
        if !sts.is_empty() {
            start_ts::warn_overlap(points.iter().map(|p| p.t), sts, metric, c, pos);
        }
        let mut prev = prev;
        for (i, p) in points.iter().enumerate().skip(1) {
            let cur = &*p.h;
            let st_reset = start_ts::is_reset(st(sts, i - 1), points[i - 1].t, st(sts, i), p.t);
            if st_reset || cur.detect_reset(prev) {
                match h.add(prev) {
                    Ok(o) if o.custom_bounds_reconciled => {
                        c.annos
                            .info(msg::mismatched_custom_buckets("addition"), pos);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        c.annos.warn(msg::mixed_exponential_custom(metric), pos);
                        return None;
                    }
                }
            }
            prev = cur;
        }
    } else if first.counter_reset_hint != CounterResetHint::Gauge
        || last.counter_reset_hint != CounterResetHint::Gauge
    {
        c.annos.warn(msg::not_gauge(metric), pos);
    }
    h.counter_reset_hint = CounterResetHint::Gauge;
    h.compact(0);
    Some(h)
}

/// Prometheus's `extrapolatedRate` for histogram windows. With a start timestamp inside the
/// window on the first sample, one sample is enough: the counter was zero at its start.
fn extrapolated_histogram_rate(
    hists: &[HPoint],
    sts: &[i64],
    is_counter: bool,
    is_rate: bool,
    metric: &str,
    c: &mut RangeCtx,
    pos: crate::parser::PosRange,
) -> Option<FloatHistogram> {
    let (first, last) = (hists.first()?, hists.last()?);
    let mut result = if hists.len() > 1 {
        Some(histogram_rate(hists, sts, is_counter, metric, c, pos)?)
    } else {
        None
    };
    let zero_ratio = result
        .as_ref()
        .filter(|r| is_counter && r.count > 0.0 && first.h.count >= 0.0)
        .map(|r| first.h.count / r.count);
    let st0 = if is_counter { st(sts, 0) } else { 0 };
    let e = start_ts::extrapolate(first.t, last.t, hists.len(), st0, zero_ratio, c, is_rate)?;
    if e.add_first {
        match &mut result {
            None => result = Some((*first.h).clone()),
            Some(r) => {
                if !checked_combine(r, &first.h, true, metric, c, pos) {
                    return None;
                }
            }
        }
    }
    let mut result = result?;
    result.mul(e.factor);
    Some(result)
}

/// Prometheus's `instantValue` (`irate`/`idelta`) over a window with histograms.
fn instant_histogram_value(
    floats: &[Point],
    hists: &[HPoint],
    sts: WindowSts<'_>,
    is_rate: bool,
    metric: &str,
    c: &mut RangeCtx,
    pos: crate::parser::PosRange,
) -> Option<RollupOut> {
    if floats.len() + hists.len() < 2 {
        return None;
    }
    // The last two samples of either kind, with their start timestamps.
    enum S<'a> {
        F(i64, f64, i64),
        H(i64, &'a FloatHistogram, i64),
    }
    let t_st = |s: &S<'_>| match s {
        S::F(t, _, st) | S::H(t, _, st) => (*t, *st),
    };
    let (nf, nh) = (floats.len(), hists.len());
    let mut all: Vec<S<'_>> = (nf.saturating_sub(2)..nf)
        .map(|i| S::F(floats[i].t, floats[i].v, st(sts.floats, i)))
        .chain((nh.saturating_sub(2)..nh).map(|i| S::H(hists[i].t, &hists[i].h, st(sts.hists, i))))
        .collect();
    all.sort_by_key(|s| t_st(s).0);
    let n = all.len();
    let (a, b) = (&all[n - 2], &all[n - 1]);
    let ((ta, sta), (tb, stb)) = (t_st(a), t_st(b));
    let interval = tb - ta;
    if interval == 0 {
        return None;
    }
    let st_reset = start_ts::is_reset(sta, ta, stb, tb);
    match (a, b) {
        (S::F(_, x, _), S::F(_, y, _)) => {
            let mut v = *y;
            if !is_rate || !(y < x || st_reset) {
                v = y - x;
            }
            if is_rate {
                v /= interval as f64 / 1000.0;
            }
            Some(RollupOut::F(v))
        }
        (S::H(_, x, _), S::H(_, y, _)) => {
            let mut r = (*y).clone();
            if is_rate
                && (y.counter_reset_hint == CounterResetHint::Gauge
                    || x.counter_reset_hint == CounterResetHint::Gauge)
            {
                c.annos.warn(msg::not_counter(metric), pos);
            }
            if !is_rate
                && (y.counter_reset_hint != CounterResetHint::Gauge
                    || x.counter_reset_hint != CounterResetHint::Gauge)
            {
                c.annos.warn(msg::not_gauge(metric), pos);
            }
            if !is_rate || !(st_reset || y.detect_reset(x)) {
                match r.sub(x) {
                    Ok(o) if o.custom_bounds_reconciled => {
                        c.annos
                            .info(msg::mismatched_custom_buckets("subtraction"), pos);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        c.annos.warn(msg::mixed_exponential_custom(metric), pos);
                        return None;
                    }
                }
            }
            r.counter_reset_hint = CounterResetHint::Gauge;
            r.compact(0);
            if is_rate {
                r.div(interval as f64 / 1000.0);
            }
            Some(RollupOut::H(r))
        }
        _ => {
            c.annos.warn(msg::mixed_floats_histograms(metric), pos);
            None
        }
    }
}

/// Prometheus's `TrimBuckets` (`</` with `upper`, `>/` without): drops the observations
/// above (below) `rhs`, interpolating inside the bucket `rhs` falls in, and re-estimates the
/// sum from bucket midpoints when anything was trimmed.
pub(crate) fn trim_buckets(h: &mut FloatHistogram, rhs: f64, upper: bool) {
    let custom = h.uses_custom_buckets();
    let (mut count, mut sum) = (0.0, 0.0);
    let mut trimmed = false;
    let (mut has_pos, mut has_neg) = (false, false);
    for positive in [true, false] {
        let buckets: Vec<Bucket<f64>> = if positive {
            h.positive_buckets().collect()
        } else {
            h.negative_buckets().collect()
        };
        for (i, b) in buckets.iter().enumerate() {
            if b.count == 0.0 {
                continue;
            }
            if positive {
                has_pos = true;
            } else {
                has_neg = true;
            }
            let whole = if upper {
                b.upper <= rhs
            } else {
                b.lower >= rhs
            };
            let partial = if upper { b.lower < rhs } else { b.upper > rhs };
            let slot = if positive {
                &mut h.positive_buckets[i]
            } else {
                &mut h.negative_buckets[i]
            };
            if whole {
                count += b.count;
                sum += midpoint(b.lower, b.upper, positive, custom) * b.count;
            } else if partial {
                let (keep, mid) = bucket_trim(b, rhs, upper, positive, custom);
                count += keep;
                sum += mid * keep;
                if *slot != keep {
                    *slot = keep;
                    trimmed = true;
                }
            } else {
                *slot = 0.0;
                trimmed = true;
            }
        }
    }
    if h.zero_count > 0.0 {
        let (keep, mid) = zero_bucket_trim(h, rhs, has_neg, has_pos, upper);
        if h.zero_count != keep {
            h.zero_count = keep;
            trimmed = true;
        }
        sum += mid * keep;
        count += keep;
    }
    if trimmed {
        h.count = count;
        h.sum = sum;
        h.compact(0);
    }
}

fn midpoint(lo: f64, hi: f64, positive: bool, linear: bool) -> f64 {
    if lo.is_infinite() {
        if hi.is_infinite() {
            return 0.0;
        }
        if hi > 0.0 {
            return hi / 2.0;
        }
        return hi;
    } else if hi.is_infinite() {
        return lo;
    }
    if linear {
        return (lo + hi) / 2.0;
    }
    let g = (lo * hi).abs().sqrt();
    if positive { g } else { -g }
}

fn bucket_trim(b: &Bucket<f64>, rhs: f64, upper: bool, positive: bool, custom: bool) -> (f64, f64) {
    if b.lower == f64::NEG_INFINITY || b.upper == f64::INFINITY {
        return infinity_bucket_trim(upper, b, rhs);
    }
    let under = if rhs <= b.lower {
        0.0
    } else if rhs >= b.upper {
        b.count
    } else {
        b.count * fraction_below(b, rhs, custom)
    };
    if upper {
        (under, midpoint(b.lower, rhs, positive, custom))
    } else {
        (b.count - under, midpoint(rhs, b.upper, positive, custom))
    }
}

fn infinity_bucket_trim(upper: bool, b: &Bucket<f64>, rhs: f64) -> (f64, f64) {
    let zero_if_inf = |x: f64| if x.is_infinite() { 0.0 } else { x };
    if b.lower == f64::NEG_INFINITY {
        if upper {
            if rhs >= b.upper {
                return (b.count, 0.0);
            }
            if rhs > 0.0 && b.upper > 0.0 && b.upper != f64::INFINITY {
                return (b.count * rhs / b.upper, rhs / 2.0);
            }
            if b.upper <= 0.0 {
                return (b.count, rhs);
            }
            return (0.0, zero_if_inf(b.upper));
        }
        if rhs <= b.lower {
            return (b.count, 0.0);
        }
        if rhs >= 0.0 && b.upper > rhs && b.upper != f64::INFINITY {
            return (b.count * (1.0 - rhs / b.upper), (rhs + b.upper) / 2.0);
        }
        return (0.0, zero_if_inf(b.upper));
    }
    // The upper bound is +Inf.
    if upper {
        return (0.0, zero_if_inf(b.lower));
    }
    if rhs >= b.lower {
        return (b.count, rhs);
    }
    (0.0, zero_if_inf(b.lower))
}

fn zero_bucket_trim(
    h: &FloatHistogram,
    rhs: f64,
    has_neg: bool,
    has_pos: bool,
    upper_trim: bool,
) -> (f64, f64) {
    let zb = h.zero_bucket();
    let (mut lo, mut hi) = (zb.lower, zb.upper);
    if has_neg && !has_pos {
        hi = 0.0;
    }
    if has_pos && !has_neg {
        lo = 0.0;
    }
    let (fraction, mid) = if upper_trim {
        if rhs <= lo {
            return (0.0, 0.0);
        }
        if rhs >= hi {
            return (zb.count, (lo + hi) / 2.0);
        }
        ((rhs - lo) / (hi - lo), (lo + rhs) / 2.0)
    } else {
        if rhs <= lo {
            return (zb.count, (lo + hi) / 2.0);
        }
        if rhs >= hi {
            return (0.0, 0.0);
        }
        ((hi - rhs) / (hi - lo), (rhs + hi) / 2.0)
    };
    (zb.count * fraction, mid)
}

/// Go's `FloatHistogram.String()`: count, sum and the non-empty buckets from lowest to
/// highest (what `count_values` uses as a histogram's label value).
pub(crate) fn go_string(h: &FloatHistogram) -> String {
    use crate::parser::printer_g as g;
    let bucket = |b: &Bucket<f64>| {
        format!(
            "{}{},{}{}:{}",
            if b.lower_inclusive { '[' } else { '(' },
            g(b.lower),
            g(b.upper),
            if b.upper_inclusive { ']' } else { ')' },
            g(b.count)
        )
    };
    let mut s = format!("{{count:{}, sum:{}", g(h.count), g(h.sum));
    let mut neg: Vec<Bucket<f64>> = h.negative_buckets().filter(|b| b.count != 0.0).collect();
    neg.reverse();
    for b in &neg {
        s.push_str(", ");
        s.push_str(&bucket(b));
    }
    if h.zero_count != 0.0 {
        s.push_str(", ");
        s.push_str(&bucket(&h.zero_bucket()));
    }
    for b in h.positive_buckets().filter(|b| b.count != 0.0) {
        s.push_str(", ");
        s.push_str(&bucket(&b));
    }
    s.push('}');
    s
}

/// A field of a histogram in [`HistAcc`]: count, sum, zero bucket, or a bucket index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    Count,
    Sum,
    Zero,
    Neg(i32),
    Pos(i32),
}

/// A compensated (Kahan–Neumaier) sum or mean of histograms, field by field, as
/// Prometheus's `KahanAdd` and incremental mean give for `sum`/`avg`/`sum_over_time`/
/// `avg_over_time`. Histograms of one layout (schema, zero threshold, custom bounds) are
/// summed per bucket index; a differing layout falls back to plain
/// [`FloatHistogram::add`] (exact reconciliation of layouts is the model's job).
pub(crate) struct HistAcc {
    layout: FloatHistogram,
    fields: std::collections::BTreeMap<Field, (f64, f64)>,
    n: f64,
    incremental: bool,
    /// Set once a histogram of another layout arrived: the plain running sum.
    plain: Option<FloatHistogram>,
}

fn fields_of(h: &FloatHistogram) -> Vec<(Field, f64)> {
    let mut v = vec![
        (Field::Count, h.count),
        (Field::Sum, h.sum),
        (Field::Zero, h.zero_count),
    ];
    v.extend(h.positive_buckets().map(|b| (Field::Pos(b.index), b.count)));
    v.extend(h.negative_buckets().map(|b| (Field::Neg(b.index), b.count)));
    v
}

fn same_layout(a: &FloatHistogram, b: &FloatHistogram) -> bool {
    a.schema == b.schema
        && a.zero_threshold == b.zero_threshold
        && a.uses_custom_buckets() == b.uses_custom_buckets()
        && (!a.uses_custom_buckets()
            || m3query_model::histogram::custom_bounds_match(&a.custom_values, &b.custom_values))
}

fn combined_hint(a: CounterResetHint, b: CounterResetHint) -> CounterResetHint {
    use CounterResetHint::*;
    match (a, b) {
        (x, y) if x == y => x,
        (Gauge, _) | (_, Gauge) => Gauge,
        _ => Unknown,
    }
}

impl HistAcc {
    pub(crate) fn new(h: &FloatHistogram) -> Self {
        let layout = FloatHistogram {
            counter_reset_hint: h.counter_reset_hint,
            schema: h.schema,
            zero_threshold: h.zero_threshold,
            custom_values: h.custom_values.clone(),
            ..FloatHistogram::default()
        };
        HistAcc {
            layout,
            fields: fields_of(h)
                .into_iter()
                .map(|(k, v)| (k, (v, 0.0)))
                .collect(),
            n: 1.0,
            incremental: false,
            plain: None,
        }
    }

    /// Adds `h` to the sum. `Err` when the schemas cannot be combined (exponential with
    /// custom buckets).
    pub(crate) fn add(&mut self, h: &FloatHistogram) -> Result<AddOutcome, ()> {
        self.n += 1.0;
        self.layout.counter_reset_hint =
            combined_hint(self.layout.counter_reset_hint, h.counter_reset_hint);
        if self.plain.is_none() && same_layout(&self.layout, h) {
            for (k, x) in fields_of(h) {
                let e = self.fields.entry(k).or_insert((0.0, 0.0));
                *e = kahan_inc(x, e.0, e.1);
            }
            return Ok(AddOutcome::default());
        }
        let mut acc = match self.plain.take() {
            Some(p) => p,
            None => self.sum(),
        };
        let r = acc.add(h).map_err(|_| ());
        self.plain = Some(acc);
        r
    }

    /// Adds `h` to the mean (Prometheus's avg: a compensated sum until it overflows, then
    /// an incremental mean).
    pub(crate) fn add_to_mean(&mut self, h: &FloatHistogram) -> Result<AddOutcome, ()> {
        if self.plain.is_some() || !same_layout(&self.layout, h) {
            return self.add(h);
        }
        self.n += 1.0;
        self.layout.counter_reset_hint =
            combined_hint(self.layout.counter_reset_hint, h.counter_reset_hint);
        let n = self.n;
        if !self.incremental {
            let mut tentative = self.fields.clone();
            for (k, x) in fields_of(h) {
                let e = tentative.entry(k).or_insert((0.0, 0.0));
                *e = kahan_inc(x, e.0, e.1);
            }
            if !tentative.values().any(|(s, _)| s.is_infinite()) {
                self.fields = tentative;
                return Ok(AddOutcome::default());
            }
            self.incremental = true;
            for e in self.fields.values_mut() {
                *e = (e.0 / (n - 1.0), e.1 / (n - 1.0));
            }
        }
        let q = (n - 1.0) / n;
        let new: std::collections::BTreeMap<Field, f64> = fields_of(h).into_iter().collect();
        for k in new.keys() {
            self.fields.entry(*k).or_insert((0.0, 0.0));
        }
        for (k, e) in self.fields.iter_mut() {
            let x = new.get(k).copied().unwrap_or(0.0);
            *e = kahan_inc(x / n, q * e.0, q * e.1);
        }
        Ok(AddOutcome::default())
    }

    fn build(&self, value: impl Fn(f64, f64) -> f64) -> FloatHistogram {
        let mut h = self.layout.clone();
        let mut pos: Vec<(i32, f64)> = Vec::new();
        let mut neg: Vec<(i32, f64)> = Vec::new();
        for (k, (s, c)) in &self.fields {
            let v = value(*s, *c);
            match k {
                Field::Count => h.count = v,
                Field::Sum => h.sum = v,
                Field::Zero => h.zero_count = v,
                Field::Pos(i) => pos.push((*i, v)),
                Field::Neg(i) => neg.push((*i, v)),
            }
        }
        (h.positive_spans, h.positive_buckets) = spans_of(&pos);
        (h.negative_spans, h.negative_buckets) = spans_of(&neg);
        h
    }

    /// The sum.
    pub(crate) fn sum(&self) -> FloatHistogram {
        if let Some(p) = &self.plain {
            return p.clone();
        }
        self.build(|s, c| if s.is_infinite() { s } else { s + c })
    }

    /// The mean of everything added with [`HistAcc::add_to_mean`].
    pub(crate) fn mean(&self) -> FloatHistogram {
        if let Some(p) = &self.plain {
            let mut p = p.clone();
            p.div(self.n);
            return p;
        }
        let n = self.n;
        if self.incremental {
            self.build(|m, c| m + c)
        } else {
            self.build(|s, c| s / n + c / n)
        }
    }
}

/// Spans and buckets for `(index, count)` pairs in index order.
fn spans_of(pairs: &[(i32, f64)]) -> (Vec<m3query_model::histogram::Span>, Vec<f64>) {
    use m3query_model::histogram::Span;
    let mut spans: Vec<Span> = Vec::new();
    let mut buckets = Vec::with_capacity(pairs.len());
    let mut next: Option<i32> = None;
    for &(i, c) in pairs {
        match (next, spans.last_mut()) {
            (Some(n), Some(last)) if n == i => last.length += 1,
            (Some(n), _) => spans.push(Span::new(i - n, 1)),
            (None, _) => spans.push(Span::new(i, 1)),
        }
        buckets.push(c);
        next = Some(i + 1);
    }
    (spans, buckets)
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
