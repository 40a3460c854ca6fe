//! Integer histograms: delta-encoded integer bucket counts, as stored and sent.

use super::{
    Bucket, CounterResetHint, FloatHistogram, HistogramError, Result, Side, Span,
    check_custom_bounds, check_spans, collapse, compact_pairs, custom_bounds_match, expand,
    is_custom_buckets_schema, is_exponential_schema, make_bucket, spans_match, target_idx,
};

/// A native histogram with integer counts.
///
/// `positive_buckets`/`negative_buckets` are **delta-encoded**: the first is the absolute
/// count of the first bucket, each later one the difference to the bucket before it (in span
/// order, across spans). This is Prometheus's in-memory, remote-write and chunk form.
///
/// Equality (`==`) is Prometheus's `Equals` (sum compared by bit pattern, zero-length spans
/// ignored, counter reset hint not compared).
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// What the histogram says about counter resets.
    pub counter_reset_hint: CounterResetHint,
    /// -4..=8 exponential, or -53 custom buckets.
    pub schema: i32,
    /// Half-width of the zero bucket (0 for custom buckets).
    pub zero_threshold: f64,
    /// Observations in the zero bucket.
    pub zero_count: u64,
    /// All observations (including NaN ones, which no bucket holds).
    pub count: u64,
    /// Sum of observations.
    pub sum: f64,
    /// Layout of the positive buckets.
    pub positive_spans: Vec<Span>,
    /// Layout of the negative buckets.
    pub negative_spans: Vec<Span>,
    /// Delta-encoded counts of the positive buckets.
    pub positive_buckets: Vec<i64>,
    /// Delta-encoded counts of the negative buckets.
    pub negative_buckets: Vec<i64>,
    /// Upper bounds of the custom buckets (schema -53 only); +Inf is implicit.
    pub custom_values: Vec<f64>,
}

impl PartialEq for Histogram {
    fn eq(&self, o: &Self) -> bool {
        self.schema == o.schema
            && self.count == o.count
            && self.sum.to_bits() == o.sum.to_bits()
            && (!self.uses_custom_buckets()
                || custom_bounds_match(&self.custom_values, &o.custom_values))
            && self.zero_threshold == o.zero_threshold
            && self.zero_count == o.zero_count
            && spans_match(&self.negative_spans, &o.negative_spans)
            && self.negative_buckets == o.negative_buckets
            && spans_match(&self.positive_spans, &o.positive_spans)
            && self.positive_buckets == o.positive_buckets
    }
}

/// Absolute counts from deltas (wrapping, as Go's int64 arithmetic).
pub(crate) fn deltas_to_absolute(d: &[i64]) -> Vec<i64> {
    let mut cur = 0i64;
    d.iter()
        .map(|&x| {
            cur = cur.wrapping_add(x);
            cur
        })
        .collect()
}

/// Deltas from absolute counts.
pub(crate) fn absolute_to_deltas(a: &[i64]) -> Vec<i64> {
    let mut prev = 0i64;
    a.iter()
        .map(|&x| {
            let d = x.wrapping_sub(prev);
            prev = x;
            d
        })
        .collect()
}

impl Histogram {
    /// Whether the histogram uses custom buckets (schema -53).
    pub fn uses_custom_buckets(&self) -> bool {
        is_custom_buckets_schema(self.schema)
    }

    /// Checks the histogram as Prometheus's `Histogram.Validate` does: schema, spans against
    /// buckets, no negative bucket counts, custom-bucket rules, and the buckets' total equal
    /// to `count` (at most `count` when the sum is NaN, since NaN observations land in no
    /// bucket).
    pub fn validate(&self) -> Result<()> {
        let mut n_count = 0u64;
        if self.uses_custom_buckets() {
            check_custom_bounds(
                &self.custom_values,
                &self.positive_spans,
                self.positive_buckets.len(),
            )?;
            if self.zero_count != 0 {
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
            n_count = check_int_buckets(Side::Negative, &self.negative_buckets)?;
            if !self.custom_values.is_empty() {
                return Err(HistogramError::ExponentialWithCustomBounds);
            }
        } else {
            return Err(HistogramError::InvalidSchema(self.schema));
        }
        let p_count = check_int_buckets(Side::Positive, &self.positive_buckets)?;
        let buckets = n_count.wrapping_add(p_count).wrapping_add(self.zero_count);
        if self.sum.is_nan() {
            if buckets > self.count {
                return Err(HistogramError::CountNotBigEnough {
                    buckets,
                    count: self.count,
                });
            }
        } else if buckets != self.count {
            return Err(HistogramError::CountMismatch {
                buckets,
                count: self.count,
            });
        }
        Ok(())
    }

    /// The float histogram with the same observations (absolute float buckets). Custom-bucket
    /// histograms get no zero bucket and no negative buckets, as in Prometheus.
    pub fn to_float(&self) -> FloatHistogram {
        let abs = |d: &[i64]| -> Vec<f64> {
            let mut cur = 0f64;
            d.iter()
                .map(|&x| {
                    cur += x as f64;
                    cur
                })
                .collect()
        };
        let custom = self.uses_custom_buckets();
        FloatHistogram {
            counter_reset_hint: self.counter_reset_hint,
            schema: self.schema,
            zero_threshold: if custom { 0.0 } else { self.zero_threshold },
            zero_count: if custom { 0.0 } else { self.zero_count as f64 },
            count: self.count as f64,
            sum: self.sum,
            positive_spans: self.positive_spans.clone(),
            negative_spans: if custom {
                Vec::new()
            } else {
                self.negative_spans.clone()
            },
            positive_buckets: abs(&self.positive_buckets),
            negative_buckets: if custom {
                Vec::new()
            } else {
                abs(&self.negative_buckets)
            },
            custom_values: if custom {
                self.custom_values.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// The zero bucket, `[-zero_threshold, zero_threshold]`.
    pub fn zero_bucket(&self) -> Bucket<u64> {
        Bucket {
            lower: -self.zero_threshold,
            upper: self.zero_threshold,
            lower_inclusive: true,
            upper_inclusive: true,
            count: self.zero_count,
            index: i32::MIN,
        }
    }

    /// The positive buckets with absolute counts, lowest first.
    pub fn positive_buckets(&self) -> impl Iterator<Item = Bucket<u64>> + '_ {
        super::SpanIndices::new(&self.positive_spans)
            .zip(deltas_to_absolute(&self.positive_buckets))
            .map(move |(i, c)| make_bucket(i, c as u64, self.schema, &self.custom_values, true))
    }

    /// The negative buckets with absolute counts, closest to zero first.
    pub fn negative_buckets(&self) -> impl Iterator<Item = Bucket<u64>> + '_ {
        super::SpanIndices::new(&self.negative_spans)
            .zip(deltas_to_absolute(&self.negative_buckets))
            .map(move |(i, c)| make_bucket(i, c as u64, self.schema, &self.custom_values, false))
    }

    /// Removes empty buckets as [`FloatHistogram::compact`] does, keeping the deltas right.
    pub fn compact(&mut self, max_empty_buckets: usize) {
        let side = |spans: &[Span], deltas: &[i64]| {
            let abs = deltas_to_absolute(deltas);
            let pairs = compact_pairs(&expand(spans, &abs), max_empty_buckets);
            let (s, b) = collapse(&pairs);
            (s, absolute_to_deltas(&b))
        };
        (self.positive_spans, self.positive_buckets) =
            side(&self.positive_spans, &self.positive_buckets);
        (self.negative_spans, self.negative_buckets) =
            side(&self.negative_spans, &self.negative_buckets);
    }

    /// Lowers the resolution to `target` (< the current schema, exponential), merging
    /// buckets. Chunk decoding uses it for the reserved schemas 9..=52.
    pub fn reduce_resolution(&mut self, target: i32) -> Result<()> {
        if self.uses_custom_buckets() || is_custom_buckets_schema(target) || target >= self.schema {
            return Err(HistogramError::CannotReduceResolution {
                from: self.schema,
                to: target,
            });
        }
        let schema = self.schema;
        let side = |spans: &[Span], deltas: &[i64]| {
            let abs = deltas_to_absolute(deltas);
            let mut out: Vec<(i32, i64)> = Vec::new();
            for (i, c) in expand(spans, &abs) {
                let t = target_idx(i, schema, target);
                match out.last_mut() {
                    Some((li, lc)) if *li == t => *lc = lc.wrapping_add(c),
                    _ => out.push((t, c)),
                }
            }
            let (s, b) = collapse(&out);
            (s, absolute_to_deltas(&b))
        };
        (self.positive_spans, self.positive_buckets) =
            side(&self.positive_spans, &self.positive_buckets);
        (self.negative_spans, self.negative_buckets) =
            side(&self.negative_spans, &self.negative_buckets);
        self.schema = target;
        Ok(())
    }
}

fn check_int_buckets(side: Side, deltas: &[i64]) -> Result<u64> {
    let mut total = 0u64;
    for (i, c) in deltas_to_absolute(deltas).into_iter().enumerate() {
        if c < 0 {
            return Err(HistogramError::NegativeBucketCount {
                side,
                bucket: i + 1,
                count: c as f64,
            });
        }
        total = total.wrapping_add(c as u64);
    }
    Ok(total)
}
