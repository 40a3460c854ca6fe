//! Float histograms: absolute float bucket counts, and the operations PromQL needs.

use super::{
    AddOutcome, Bucket, CounterResetHint, HistogramError, Result, Side, Span, bucket_bound,
    check_custom_bounds, check_spans, collapse, compact_pairs, custom_bounds_match, expand,
    is_custom_buckets_schema, is_exponential_schema, make_bucket, spans_match, target_idx,
};

/// A native histogram with float counts; buckets hold absolute counts.
///
/// Equality (`==`) is Prometheus's `Equals`: floats compare by bit pattern (so a NaN sum
/// equals the same NaN, and the stale marker round-trips), zero-length spans are ignored,
/// and the counter reset hint is not compared.
#[derive(Clone, Debug, Default)]
pub struct FloatHistogram {
    /// What the histogram says about counter resets.
    pub counter_reset_hint: CounterResetHint,
    /// -4..=8 exponential, or -53 custom buckets.
    pub schema: i32,
    /// Half-width of the zero bucket (0 for custom buckets).
    pub zero_threshold: f64,
    /// Observations in the zero bucket.
    pub zero_count: f64,
    /// All observations (including NaN ones, which no bucket holds).
    pub count: f64,
    /// Sum of observations.
    pub sum: f64,
    /// Layout of the positive buckets.
    pub positive_spans: Vec<Span>,
    /// Layout of the negative buckets.
    pub negative_spans: Vec<Span>,
    /// Absolute counts of the positive buckets, in span order.
    pub positive_buckets: Vec<f64>,
    /// Absolute counts of the negative buckets, in span order.
    pub negative_buckets: Vec<f64>,
    /// Upper bounds of the custom buckets (schema -53 only); +Inf is implicit.
    pub custom_values: Vec<f64>,
}

impl PartialEq for FloatHistogram {
    fn eq(&self, o: &Self) -> bool {
        let bits_eq = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        self.schema == o.schema
            && self.count.to_bits() == o.count.to_bits()
            && self.sum.to_bits() == o.sum.to_bits()
            && (!self.uses_custom_buckets()
                || custom_bounds_match(&self.custom_values, &o.custom_values))
            && self.zero_threshold == o.zero_threshold
            && self.zero_count.to_bits() == o.zero_count.to_bits()
            && spans_match(&self.negative_spans, &o.negative_spans)
            && bits_eq(&self.negative_buckets, &o.negative_buckets)
            && spans_match(&self.positive_spans, &o.positive_spans)
            && bits_eq(&self.positive_buckets, &o.positive_buckets)
    }
}

/// Result hint of combining two hints (Prometheus's `adjustCounterReset`); `true` on a
/// CounterReset/NotCounterReset collision.
fn combine_hints(a: CounterResetHint, b: CounterResetHint) -> (CounterResetHint, bool) {
    use CounterResetHint::*;
    match (a, b) {
        (x, y) if x == y => (x, false),
        (Gauge, _) | (_, Gauge) => (Gauge, false),
        (Unknown, _) | (_, Unknown) => (Unknown, false),
        _ => (Unknown, true),
    }
}

impl FloatHistogram {
    /// Whether the histogram uses custom buckets (schema -53).
    pub fn uses_custom_buckets(&self) -> bool {
        is_custom_buckets_schema(self.schema)
    }

    /// Checks the histogram as Prometheus's `FloatHistogram.Validate` does: schema, spans
    /// against bucket counts, no negative counts, custom-bucket rules. (Unlike integer
    /// histograms, the count is not compared with the buckets' sum: float arithmetic may
    /// legitimately make them differ.)
    pub fn validate(&self) -> Result<()> {
        if self.uses_custom_buckets() {
            check_custom_bounds(
                &self.custom_values,
                &self.positive_spans,
                self.positive_buckets.len(),
            )?;
            if self.zero_count != 0.0 {
                return Err(HistogramError::CustomBucketsZeroCount);
            }
            if self.zero_threshold != 0.0 {
                return Err(HistogramError::CustomBucketsZeroThreshold);
            }
            if !self.negative_spans.is_empty() {
                return Err(HistogramError::CustomBucketsNegativeSpans);
            }
            if !self.negative_buckets.is_empty() {
                return Err(HistogramError::CustomBucketsNegativeBuckets);
            }
        } else if is_exponential_schema(self.schema) {
            check_spans(
                Side::Positive,
                &self.positive_spans,
                self.positive_buckets.len(),
            )?;
            check_spans(
                Side::Negative,
                &self.negative_spans,
                self.negative_buckets.len(),
            )?;
            check_float_buckets(Side::Negative, &self.negative_buckets)?;
            if self.zero_count < 0.0 {
                return Err(HistogramError::NegativeBucketCount {
                    side: Side::Positive,
                    bucket: 0,
                    count: self.zero_count,
                });
            }
            if !self.custom_values.is_empty() {
                return Err(HistogramError::ExponentialWithCustomBounds);
            }
        } else {
            return Err(HistogramError::InvalidSchema(self.schema));
        }
        if self.count < 0.0 {
            return Err(HistogramError::NegativeCount(self.count));
        }
        check_float_buckets(Side::Positive, &self.positive_buckets)
    }

    /// The zero bucket, `[-zero_threshold, zero_threshold]`.
    pub fn zero_bucket(&self) -> Bucket<f64> {
        Bucket {
            lower: -self.zero_threshold,
            upper: self.zero_threshold,
            lower_inclusive: true,
            upper_inclusive: true,
            count: self.zero_count,
            index: i32::MIN,
        }
    }

    /// The positive buckets (including empty ones the spans list), lowest first.
    pub fn positive_buckets(&self) -> impl Iterator<Item = Bucket<f64>> + '_ {
        super::SpanIndices::new(&self.positive_spans)
            .zip(self.positive_buckets.iter())
            .map(move |(i, &c)| make_bucket(i, c, self.schema, &self.custom_values, true))
    }

    /// The negative buckets (including empty ones the spans list), closest to zero first.
    pub fn negative_buckets(&self) -> impl Iterator<Item = Bucket<f64>> + '_ {
        super::SpanIndices::new(&self.negative_spans)
            .zip(self.negative_buckets.iter())
            .map(move |(i, &c)| make_bucket(i, c, self.schema, &self.custom_values, false))
    }

    /// All buckets from the lowest to the highest: negative (reversed), zero (if its
    /// threshold or count is non-zero), positive.
    pub fn all_buckets(&self) -> Vec<Bucket<f64>> {
        let mut out: Vec<Bucket<f64>> = self.negative_buckets().collect();
        out.reverse();
        if self.zero_threshold != 0.0 || self.zero_count != 0.0 {
            out.push(self.zero_bucket());
        }
        out.extend(self.positive_buckets());
        out
    }

    /// Multiplies every count and the sum by `factor`. A negative factor makes it a gauge.
    pub fn mul(&mut self, factor: f64) {
        self.zero_count *= factor;
        self.count *= factor;
        self.sum *= factor;
        self.positive_buckets.iter_mut().for_each(|b| *b *= factor);
        self.negative_buckets.iter_mut().for_each(|b| *b *= factor);
        if factor < 0.0 {
            self.counter_reset_hint = CounterResetHint::Gauge;
        }
    }

    /// Divides every count and the sum by `scalar`. Dividing by zero drops all buckets
    /// (count, zero count and sum become ±Inf or NaN), as Prometheus does.
    pub fn div(&mut self, scalar: f64) {
        self.zero_count /= scalar;
        self.count /= scalar;
        self.sum /= scalar;
        if scalar == 0.0 {
            self.positive_buckets.clear();
            self.negative_buckets.clear();
            self.positive_spans.clear();
            self.negative_spans.clear();
            return;
        }
        self.positive_buckets.iter_mut().for_each(|b| *b /= scalar);
        self.negative_buckets.iter_mut().for_each(|b| *b /= scalar);
        if scalar < 0.0 {
            self.counter_reset_hint = CounterResetHint::Gauge;
        }
    }

    /// Adds `other` into `self`. The result has the lower of the two schemas (the finer
    /// histogram's buckets are merged), the larger zero threshold (buckets that fall into the
    /// widened zero bucket move into it), and keeps every bucket index of either operand.
    /// Custom-bucket histograms with different bounds are added on the intersection of their
    /// bounds. Mixing exponential and custom buckets is [`HistogramError::IncompatibleSchema`]
    /// and leaves `self` unchanged.
    pub fn add(&mut self, other: &FloatHistogram) -> Result<AddOutcome> {
        self.add_or_sub(other, false)
    }

    /// Subtracts `other` from `self`, with the same rules as [`FloatHistogram::add`].
    pub fn sub(&mut self, other: &FloatHistogram) -> Result<AddOutcome> {
        self.add_or_sub(other, true)
    }

    fn add_or_sub(&mut self, other: &FloatHistogram, negate: bool) -> Result<AddOutcome> {
        if self.uses_custom_buckets() != other.uses_custom_buckets() {
            return Err(HistogramError::IncompatibleSchema);
        }
        let sign = if negate { -1.0 } else { 1.0 };
        let (hint, collision) = combine_hints(self.counter_reset_hint, other.counter_reset_hint);
        self.counter_reset_hint = hint;
        let mut out = AddOutcome {
            counter_reset_collision: collision,
            custom_bounds_reconciled: false,
        };
        if !self.uses_custom_buckets() {
            let other_zero = self.reconcile_zero_buckets(other);
            self.zero_count += sign * other_zero;
        }
        self.count += sign * other.count;
        self.sum += sign * other.sum;

        if self.uses_custom_buckets() {
            if custom_bounds_match(&self.custom_values, &other.custom_values) {
                let a = expand(&self.positive_spans, &self.positive_buckets);
                let b = expand(&other.positive_spans, &other.positive_buckets);
                (self.positive_spans, self.positive_buckets) = collapse(&merge(&a, &b, sign));
            } else {
                out.custom_bounds_reconciled = true;
                let bounds = intersect_bounds(&self.custom_values, &other.custom_values);
                let mut target = vec![0.0; bounds.len() + 1];
                map_custom(
                    &mut target,
                    &bounds,
                    &self.custom_values,
                    &self.positive_spans,
                    &self.positive_buckets,
                    1.0,
                );
                map_custom(
                    &mut target,
                    &bounds,
                    &other.custom_values,
                    &other.positive_spans,
                    &other.positive_buckets,
                    sign,
                );
                // Only non-zero buckets survive, as in Prometheus.
                let pairs: Vec<(i32, f64)> = target
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c != 0.0)
                    .map(|(i, c)| (i as i32, *c))
                    .collect();
                (self.positive_spans, self.positive_buckets) = collapse(&pairs);
                self.custom_values = bounds;
            }
            return Ok(out);
        }

        let target = self.schema.min(other.schema);
        let mine_p = reduce(
            &self.positive_spans,
            &self.positive_buckets,
            self.schema,
            target,
        );
        let mine_n = reduce(
            &self.negative_spans,
            &self.negative_buckets,
            self.schema,
            target,
        );
        let theirs_p = reduce(
            &other.positive_spans,
            &other.positive_buckets,
            other.schema,
            target,
        );
        let theirs_n = reduce(
            &other.negative_spans,
            &other.negative_buckets,
            other.schema,
            target,
        );
        self.schema = target;
        // The other side's buckets inside the (reconciled) zero bucket were counted into its
        // zero count: leave them out here.
        let thr = self.zero_threshold;
        let skip = |v: Vec<(i32, f64)>| -> Vec<(i32, f64)> {
            v.into_iter()
                .skip_while(|&(i, _)| bucket_bound(i, target, &[]) <= thr)
                .collect()
        };
        (self.positive_spans, self.positive_buckets) =
            collapse(&merge(&mine_p, &skip(theirs_p), sign));
        (self.negative_spans, self.negative_buckets) =
            collapse(&merge(&mine_n, &skip(theirs_n), sign));
        Ok(out)
    }

    /// Removes empty buckets, keeping runs of at most `max_empty_buckets` empty buckets
    /// between populated ones (they cost less than a new span), as Prometheus's `Compact`.
    pub fn compact(&mut self, max_empty_buckets: usize) {
        let p = compact_pairs(
            &expand(&self.positive_spans, &self.positive_buckets),
            max_empty_buckets,
        );
        (self.positive_spans, self.positive_buckets) = collapse(&p);
        let n = compact_pairs(
            &expand(&self.negative_spans, &self.negative_buckets),
            max_empty_buckets,
        );
        (self.negative_spans, self.negative_buckets) = collapse(&n);
    }

    /// Lowers the resolution to `target` (< the current schema), merging buckets.
    pub fn reduce_resolution(&mut self, target: i32) -> Result<()> {
        if self.uses_custom_buckets() || !is_exponential_schema_any(target) || target >= self.schema
        {
            return Err(HistogramError::CannotReduceResolution {
                from: self.schema,
                to: target,
            });
        }
        let p = reduce(
            &self.positive_spans,
            &self.positive_buckets,
            self.schema,
            target,
        );
        let n = reduce(
            &self.negative_spans,
            &self.negative_buckets,
            self.schema,
            target,
        );
        (self.positive_spans, self.positive_buckets) = collapse(&p);
        (self.negative_spans, self.negative_buckets) = collapse(&n);
        self.schema = target;
        Ok(())
    }

    /// Whether a counter reset happened between `previous` and `self` (Prometheus's
    /// `DetectReset`): trusts a `CounterReset`/`NotCounterReset` hint, else reports a reset
    /// when the count dropped, the schema got finer, the zero bucket got narrower, a
    /// custom/exponential switch happened, or any bucket (compared at `self`'s resolution
    /// and zero threshold) lost observations.
    pub fn detect_reset(&self, previous: &FloatHistogram) -> bool {
        match self.counter_reset_hint {
            CounterResetHint::CounterReset => return true,
            CounterResetHint::NotCounterReset => return false,
            _ => {}
        }
        if self.count < previous.count {
            return true;
        }
        if self.uses_custom_buckets() {
            if !previous.uses_custom_buckets() {
                return true;
            }
            if !custom_bounds_match(&self.custom_values, &previous.custom_values) {
                return self.reset_with_mismatched_bounds(previous);
            }
        } else if previous.uses_custom_buckets() {
            // A switch from custom to exponential buckets starts a new counter.
            return true;
        }
        if self.schema > previous.schema {
            return true;
        }
        if self.zero_threshold < previous.zero_threshold {
            return true;
        }
        let (prev_zero, new_threshold) =
            previous.zero_count_for_larger_threshold(self.zero_threshold);
        if new_threshold != self.zero_threshold {
            return true;
        }
        if self.zero_count < prev_zero {
            return true;
        }
        let thr = self.zero_threshold;
        let exp = !self.uses_custom_buckets();
        let view = |h: &FloatHistogram, pos: bool| {
            let (spans, buckets) = if pos {
                (&h.positive_spans, &h.positive_buckets)
            } else {
                (&h.negative_spans, &h.negative_buckets)
            };
            let mut v = reduce(spans, buckets, h.schema, self.schema);
            if exp && thr != 0.0 {
                let first = v
                    .iter()
                    .position(|&(i, _)| bucket_bound(i, self.schema, &[]) > thr)
                    .unwrap_or(v.len());
                v.drain(..first);
            }
            v
        };
        buckets_reset(&view(self, true), &view(previous, true))
            || buckets_reset(&view(self, false), &view(previous, false))
    }

    /// Reset detection across different custom bounds: per interval between bounds both
    /// histograms share, the current observations must not be fewer than before.
    fn reset_with_mismatched_bounds(&self, previous: &FloatHistogram) -> bool {
        let common = intersect_bounds(&self.custom_values, &previous.custom_values);
        let sums = |h: &FloatHistogram| {
            let mut s = vec![0.0; common.len() + 1];
            map_custom(
                &mut s,
                &common,
                &h.custom_values,
                &h.positive_spans,
                &h.positive_buckets,
                1.0,
            );
            s
        };
        sums(self).iter().zip(sums(previous)).any(|(c, p)| *c < p)
    }

    /// The zero count this histogram would have with a zero threshold of at least `larger`,
    /// and the threshold actually needed: buckets straddling the new threshold are taken in
    /// whole, which widens it to their bound (Prometheus's `zeroCountForLargerThreshold`).
    fn zero_count_for_larger_threshold(&self, larger: f64) -> (f64, f64) {
        if larger == self.zero_threshold {
            return (self.zero_count, larger);
        }
        let mut thr = larger;
        'outer: loop {
            let mut zc = self.zero_count;
            for b in self.positive_buckets() {
                if b.lower >= thr {
                    break;
                }
                zc += b.count;
                if b.upper > thr {
                    if b.count != 0.0 {
                        thr = b.upper;
                    }
                    break;
                }
            }
            for b in self.negative_buckets() {
                if b.upper <= -thr {
                    break;
                }
                zc += b.count;
                if b.lower < -thr {
                    if b.count != 0.0 {
                        thr = -b.lower;
                        continue 'outer;
                    }
                    break;
                }
            }
            return (zc, thr);
        }
    }

    /// Widens whichever zero bucket is narrower until both match; returns `other`'s zero
    /// count at the common threshold.
    fn reconcile_zero_buckets(&mut self, other: &FloatHistogram) -> f64 {
        let mut other_zero = other.zero_count;
        let mut other_thr = other.zero_threshold;
        while other_thr != self.zero_threshold {
            if self.zero_threshold > other_thr {
                (other_zero, other_thr) =
                    other.zero_count_for_larger_threshold(self.zero_threshold);
            }
            if other_thr > self.zero_threshold {
                (self.zero_count, self.zero_threshold) =
                    self.zero_count_for_larger_threshold(other_thr);
                self.trim_buckets_in_zero_bucket();
            }
        }
        other_zero
    }

    /// Empties the buckets the zero bucket now covers and compacts.
    fn trim_buckets_in_zero_bucket(&mut self) {
        let thr = self.zero_threshold;
        let lowers: Vec<f64> = self.positive_buckets().map(|b| b.lower).collect();
        for (i, l) in lowers.into_iter().enumerate() {
            if l >= thr {
                break;
            }
            self.positive_buckets[i] = 0.0;
        }
        let uppers: Vec<f64> = self.negative_buckets().map(|b| b.upper).collect();
        for (i, u) in uppers.into_iter().enumerate() {
            if u <= -thr {
                break;
            }
            self.negative_buckets[i] = 0.0;
        }
        self.compact(0);
    }
}

fn is_exponential_schema_any(s: i32) -> bool {
    (super::EXPONENTIAL_SCHEMA_MIN_RESERVED..=super::EXPONENTIAL_SCHEMA_MAX_RESERVED).contains(&s)
}

fn check_float_buckets(side: Side, buckets: &[f64]) -> Result<()> {
    for (i, &c) in buckets.iter().enumerate() {
        if c < 0.0 {
            return Err(HistogramError::NegativeBucketCount {
                side,
                bucket: i + 1,
                count: c,
            });
        }
    }
    Ok(())
}

/// The `(index, count)` pairs of a layout at a coarser (or the same) schema.
fn reduce(spans: &[Span], buckets: &[f64], from: i32, to: i32) -> Vec<(i32, f64)> {
    let mut out: Vec<(i32, f64)> = Vec::with_capacity(buckets.len());
    for (i, c) in expand(spans, buckets) {
        let t = if from > to {
            target_idx(i, from, to)
        } else {
            i
        };
        match out.last_mut() {
            Some((li, lc)) if *li == t => *lc += c,
            _ => out.push((t, c)),
        }
    }
    out
}

/// Union of two ordered pair lists, `b` scaled by `sign`.
fn merge(a: &[(i32, f64)], b: &[(i32, f64)], sign: f64) -> Vec<(i32, f64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(&(ai, ac)), Some(&(bi, bc))) if ai == bi => {
                out.push((ai, ac + sign * bc));
                i += 1;
                j += 1;
            }
            (Some(&(ai, ac)), Some(&(bi, _))) if ai < bi => {
                out.push((ai, ac));
                i += 1;
            }
            (Some(&(ai, ac)), None) => {
                out.push((ai, ac));
                i += 1;
            }
            (_, Some(&(bi, bc))) => {
                out.push((bi, sign * bc));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// Bounds present in both (ordered) lists.
fn intersect_bounds(a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(a[i]);
            i += 1;
            j += 1;
        } else if a[i] < b[j] {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Adds `sign` × each custom bucket into the bucket of `target` (one per intersected bound
/// plus +Inf) whose bound is the first at or above the bucket's own upper bound.
fn map_custom(
    target: &mut [f64],
    bounds: &[f64],
    own_bounds: &[f64],
    spans: &[Span],
    buckets: &[f64],
    sign: f64,
) {
    let mut k = 0usize;
    for (i, c) in expand(spans, buckets) {
        let mut t = target.len() - 1;
        if let Some(&ub) = usize::try_from(i).ok().and_then(|i| own_bounds.get(i)) {
            while k < bounds.len() {
                if bounds[k] >= ub {
                    t = k;
                    break;
                }
                k += 1;
            }
        }
        target[t] += sign * c;
    }
}

/// Prometheus's bucket-wise reset check on two views at the same schema: a reset when a
/// bucket of `prev` with observations is missing from `curr` or has more than in `curr`.
fn buckets_reset(curr: &[(i32, f64)], prev: &[(i32, f64)]) -> bool {
    let mut ci = 0;
    for &(pi, pc) in prev {
        while ci < curr.len() && curr[ci].0 < pi {
            ci += 1;
        }
        match curr.get(ci) {
            Some(&(i, c)) if i == pi => {
                if c < pc {
                    return true;
                }
            }
            _ => {
                if pc != 0.0 {
                    return true;
                }
            }
        }
    }
    false
}
