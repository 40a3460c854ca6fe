//! Native histograms, with Prometheus 3.x semantics (`model/histogram` in Prometheus).
//!
//! Two types, as in Prometheus:
//!
//! - [`Histogram`]: integer counts. Its bucket counts are **delta-encoded** exactly as
//!   Prometheus stores them (each bucket holds the difference to the bucket before it in
//!   span order; the first holds its absolute count). That is what remote write 1.0/2.0
//!   sends and what histogram chunks encode, so no conversion happens on those paths.
//! - [`FloatHistogram`]: float counts, buckets hold **absolute** counts. Every PromQL
//!   operation works on these; [`Histogram::to_float`] converts.
//!
//! A histogram's buckets live at integer indices. For exponential schemas `s` in
//! [`EXPONENTIAL_SCHEMA_MIN`]..=[`EXPONENTIAL_SCHEMA_MAX`] bucket `i` covers
//! `(2^((i-1)/2^s), 2^(i/2^s)]` (negative buckets mirror that); a zero bucket covers
//! `[-zero_threshold, zero_threshold]`. Schema [`CUSTOM_BUCKETS_SCHEMA`] (-53) uses the
//! explicit upper bounds in `custom_values` (bucket `i` ends at `custom_values[i]`, the last
//! at +Inf) and has no zero or negative buckets. Spans say which indices are present: the
//! first span's offset is the absolute start index, later offsets are gaps after the
//! previous span.

mod bounds;
mod float;
mod int;

pub use bounds::bucket_bound;
pub use float::FloatHistogram;
pub use int::Histogram;

/// Smallest exponential schema a histogram may have.
pub const EXPONENTIAL_SCHEMA_MIN: i32 = -4;
/// Largest exponential schema a histogram may have.
pub const EXPONENTIAL_SCHEMA_MAX: i32 = 8;
/// Smallest exponential schema a chunk may hold (reserved for future use, read but reduced).
pub const EXPONENTIAL_SCHEMA_MIN_RESERVED: i32 = -9;
/// Largest exponential schema a chunk may hold; schemas above 8 are reduced to 8 on read.
pub const EXPONENTIAL_SCHEMA_MAX_RESERVED: i32 = 52;
/// The schema of native histograms with custom buckets (NHCB).
pub const CUSTOM_BUCKETS_SCHEMA: i32 = -53;

/// Whether `s` is the custom buckets schema.
pub fn is_custom_buckets_schema(s: i32) -> bool {
    s == CUSTOM_BUCKETS_SCHEMA
}

/// Whether `s` is a valid exponential schema (-4..=8).
pub fn is_exponential_schema(s: i32) -> bool {
    (EXPONENTIAL_SCHEMA_MIN..=EXPONENTIAL_SCHEMA_MAX).contains(&s)
}

/// Whether `s` is a schema a chunk may carry: custom, or exponential including the reserved
/// range -9..=52.
pub fn is_known_schema(s: i32) -> bool {
    is_custom_buckets_schema(s)
        || (EXPONENTIAL_SCHEMA_MIN_RESERVED..=EXPONENTIAL_SCHEMA_MAX_RESERVED).contains(&s)
}

/// Whether two custom bound lists are equal (Prometheus's `CustomBucketBoundsMatch`).
pub fn custom_bounds_match(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// A run of consecutive buckets: `offset` buckets after the previous span (the first span's
/// offset is the absolute index of its first bucket), `length` buckets long.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// Gap to the previous span, or the start index for the first span.
    pub offset: i32,
    /// Buckets in the span.
    pub length: u32,
}

impl Span {
    /// A span.
    pub const fn new(offset: i32, length: u32) -> Self {
        Span { offset, length }
    }
}

/// What a histogram says about counter resets (Prometheus's `CounterResetHint`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CounterResetHint {
    /// Nothing is known; compare with the previous histogram.
    #[default]
    Unknown,
    /// A counter reset happened at this histogram.
    CounterReset,
    /// No counter reset happened at this histogram.
    NotCounterReset,
    /// A gauge histogram: counter resets do not apply.
    Gauge,
}

impl CounterResetHint {
    /// The hint from remote write's `reset_hint` field (0..=3 in this order); other values
    /// are `Unknown`.
    pub fn from_proto(v: i32) -> Self {
        match v {
            1 => CounterResetHint::CounterReset,
            2 => CounterResetHint::NotCounterReset,
            3 => CounterResetHint::Gauge,
            _ => CounterResetHint::Unknown,
        }
    }

    /// The value of remote write's `reset_hint` field.
    pub fn to_proto(self) -> i32 {
        match self {
            CounterResetHint::Unknown => 0,
            CounterResetHint::CounterReset => 1,
            CounterResetHint::NotCounterReset => 2,
            CounterResetHint::Gauge => 3,
        }
    }
}

/// One bucket as the bucket iterators yield it (not cumulative).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket<C> {
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
    /// Whether `lower` belongs to the bucket.
    pub lower_inclusive: bool,
    /// Whether `upper` belongs to the bucket.
    pub upper_inclusive: bool,
    /// Observations in the bucket.
    pub count: C,
    /// The bucket's index in its schema (`i32::MIN` for the zero bucket).
    pub index: i32,
}

/// Which bucket side an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Positive buckets.
    Positive,
    /// Negative buckets.
    Negative,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Positive => "positive side",
            Side::Negative => "negative side",
        })
    }
}

/// What [`FloatHistogram::add`] and [`FloatHistogram::sub`] noticed besides the result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddOutcome {
    /// One operand said `CounterReset` and the other `NotCounterReset`; the result's hint
    /// became `Unknown` (PromQL warns about this).
    pub counter_reset_collision: bool,
    /// The operands had different custom bounds; the result uses their intersection
    /// (PromQL reports this as an info annotation).
    pub custom_bounds_reconciled: bool,
}

/// Why a histogram is invalid or an operation cannot apply (Prometheus's error values; the
/// messages are theirs).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum HistogramError {
    /// The schema is neither exponential (-4..=8) nor custom (-53).
    #[error(
        "histogram has an invalid schema, which must be between -4 and 8 for exponential buckets, or -53 for custom buckets, got schema {0}"
    )]
    InvalidSchema(i32),
    /// A span after the first has a negative offset (custom buckets: any span).
    #[error(
        "{side}: span number {span} with offset {offset}: histogram has a span whose offset is negative"
    )]
    SpanNegativeOffset {
        /// The side.
        side: Side,
        /// 1-based span number.
        span: usize,
        /// Its offset.
        offset: i32,
    },
    /// The spans' lengths do not add up to the number of buckets.
    #[error(
        "{side}: spans need {needed} buckets, have {have} buckets: histogram spans specify different number of buckets than provided"
    )]
    SpansBucketsMismatch {
        /// The side.
        side: Side,
        /// Buckets the spans describe.
        needed: usize,
        /// Buckets present.
        have: usize,
    },
    /// A bucket (after delta decoding) or the zero bucket has a negative count.
    #[error(
        "{side}: bucket number {bucket} has observation count of {count}: histogram has a bucket whose observation count is negative"
    )]
    NegativeBucketCount {
        /// The side.
        side: Side,
        /// 1-based bucket number, 0 for the zero bucket.
        bucket: usize,
        /// The count.
        count: f64,
    },
    /// The observation count is negative (float histograms).
    #[error("observation count is {0}: histogram's observation count is negative")]
    NegativeCount(f64),
    /// The buckets hold more observations than `count` (allowed only with a NaN sum).
    #[error(
        "{buckets} observations found in buckets, but the Count field is {count}: histogram's observation count should be at least the number of observations found in the buckets"
    )]
    CountNotBigEnough {
        /// Sum of all buckets.
        buckets: u64,
        /// The count field.
        count: u64,
    },
    /// The buckets do not hold exactly `count` observations.
    #[error(
        "{buckets} observations found in buckets, but the Count field is {count}: histogram's observation count should equal the number of observations found in the buckets (in absence of NaN)"
    )]
    CountMismatch {
        /// Sum of all buckets.
        buckets: u64,
        /// The count field.
        count: u64,
    },
    /// Custom bounds cover fewer buckets than the spans use.
    #[error(
        "custom buckets: only {bounds} custom bounds defined which is insufficient to cover total span length of {span_length}: histogram custom bounds are too few"
    )]
    CustomBucketsTooFew {
        /// Custom bounds given.
        bounds: usize,
        /// Offsets plus lengths of all spans.
        span_length: usize,
    },
    /// Custom bounds are not strictly increasing.
    #[error(
        "custom buckets: previous bound is {prev} and current is {curr}: histogram custom bounds must be in strictly increasing order"
    )]
    CustomBucketsNotIncreasing {
        /// The earlier bound.
        prev: f64,
        /// The bound that is not above it.
        curr: f64,
    },
    /// The last custom bound is +Inf (it is implicit).
    #[error(
        "custom buckets: last +Inf bound must not be explicitly defined: histogram custom bounds must be finite"
    )]
    CustomBucketsInfinite,
    /// A custom bound is NaN.
    #[error("custom buckets: histogram custom bounds must not be NaN")]
    CustomBucketsNaN,
    /// Custom buckets with a non-zero zero count.
    #[error("custom buckets: must have zero count of 0")]
    CustomBucketsZeroCount,
    /// Custom buckets with a non-zero zero threshold.
    #[error("custom buckets: must have zero threshold of 0")]
    CustomBucketsZeroThreshold,
    /// Custom buckets with negative spans.
    #[error("custom buckets: must not have negative spans")]
    CustomBucketsNegativeSpans,
    /// Custom buckets with negative buckets.
    #[error("custom buckets: must not have negative buckets")]
    CustomBucketsNegativeBuckets,
    /// An exponential histogram carries custom bounds.
    #[error("histogram with exponential schema must not have custom bounds")]
    ExponentialWithCustomBounds,
    /// An operation mixed exponential and custom-bucket histograms.
    #[error(
        "cannot apply this operation on histograms with a mix of exponential and custom bucket schemas"
    )]
    IncompatibleSchema,
    /// `reduce_resolution` was asked for a schema it cannot reduce to.
    #[error("cannot reduce resolution from schema {from} to {to}")]
    CannotReduceResolution {
        /// The histogram's schema.
        from: i32,
        /// The requested one.
        to: i32,
    },
}

/// A result with [`HistogramError`].
pub type Result<T, E = HistogramError> = std::result::Result<T, E>;

/// The bucket indices spans describe, in order.
#[derive(Clone, Debug)]
pub(crate) struct SpanIndices<'a> {
    spans: std::slice::Iter<'a, Span>,
    next: i64,
    left: u32,
}

impl<'a> SpanIndices<'a> {
    pub(crate) fn new(spans: &'a [Span]) -> Self {
        SpanIndices {
            spans: spans.iter(),
            next: 0,
            left: 0,
        }
    }
}

impl Iterator for SpanIndices<'_> {
    type Item = i32;
    fn next(&mut self) -> Option<i32> {
        while self.left == 0 {
            let s = self.spans.next()?;
            self.next += i64::from(s.offset);
            self.left = s.length;
        }
        self.left -= 1;
        let i = self.next;
        self.next += 1;
        Some(i as i32)
    }
}

/// `(index, count)` pairs of a span/bucket layout, in order. Buckets beyond the spans (or
/// spans beyond the buckets) are ignored; validation reports such layouts.
pub(crate) fn expand<C: Copy>(spans: &[Span], buckets: &[C]) -> Vec<(i32, C)> {
    SpanIndices::new(spans)
        .zip(buckets.iter().copied())
        .collect()
}

/// The spans and buckets of ordered `(index, count)` pairs; adjacent indices share a span.
pub(crate) fn collapse<C: Copy>(pairs: &[(i32, C)]) -> (Vec<Span>, Vec<C>) {
    let mut spans: Vec<Span> = Vec::new();
    let mut buckets = Vec::with_capacity(pairs.len());
    let mut last = 0i64;
    for &(i, c) in pairs {
        let i64i = i64::from(i);
        match spans.last_mut() {
            Some(s) if i64i == last + 1 => s.length += 1,
            Some(_) => spans.push(Span::new((i64i - last - 1) as i32, 1)),
            None => spans.push(Span::new(i, 1)),
        }
        last = i64i;
        buckets.push(c);
    }
    (spans, buckets)
}

/// The index in `target` schema of bucket `idx` of `origin` schema (`origin >= target`).
pub(crate) fn target_idx(idx: i32, origin: i32, target: i32) -> i32 {
    (((i64::from(idx) - 1) >> (origin - target)) + 1) as i32
}

/// Prometheus's `spansMatch`: equal layouts, ignoring zero-length spans.
pub(crate) fn spans_match(a: &[Span], b: &[Span]) -> bool {
    fn norm(s: &[Span]) -> Vec<Span> {
        let mut out = Vec::with_capacity(s.len());
        let mut carry = 0i64;
        for sp in s {
            if sp.length == 0 {
                carry += i64::from(sp.offset);
                continue;
            }
            out.push(Span::new((i64::from(sp.offset) + carry) as i32, sp.length));
            carry = 0;
        }
        out
    }
    norm(a) == norm(b)
}

pub(crate) fn check_spans(side: Side, spans: &[Span], have: usize) -> Result<()> {
    let mut needed = 0usize;
    for (n, s) in spans.iter().enumerate() {
        if n > 0 && s.offset < 0 {
            return Err(HistogramError::SpanNegativeOffset {
                side,
                span: n + 1,
                offset: s.offset,
            });
        }
        needed += s.length as usize;
    }
    if needed != have {
        return Err(HistogramError::SpansBucketsMismatch { side, needed, have });
    }
    Ok(())
}

pub(crate) fn check_custom_bounds(bounds: &[f64], spans: &[Span], have: usize) -> Result<()> {
    let mut prev = f64::NEG_INFINITY;
    for (i, &b) in bounds.iter().enumerate() {
        if b.is_nan() {
            return Err(HistogramError::CustomBucketsNaN);
        }
        if i > 0 && b <= prev {
            return Err(HistogramError::CustomBucketsNotIncreasing { prev, curr: b });
        }
        prev = b;
    }
    if prev == f64::INFINITY {
        return Err(HistogramError::CustomBucketsInfinite);
    }
    let mut needed = 0usize;
    let mut span_length = 0i64;
    for (n, s) in spans.iter().enumerate() {
        if s.offset < 0 {
            return Err(HistogramError::SpanNegativeOffset {
                side: Side::Positive,
                span: n + 1,
                offset: s.offset,
            });
        }
        needed += s.length as usize;
        span_length += i64::from(s.length) + i64::from(s.offset);
    }
    if needed != have {
        return Err(HistogramError::SpansBucketsMismatch {
            side: Side::Positive,
            needed,
            have,
        });
    }
    if (bounds.len() as i64) + 1 < span_length {
        return Err(HistogramError::CustomBucketsTooFew {
            bounds: bounds.len(),
            span_length: span_length as usize,
        });
    }
    Ok(())
}

/// The bucket at `index` with `count`, with Prometheus's bounds and inclusiveness.
pub(crate) fn make_bucket<C>(
    index: i32,
    count: C,
    schema: i32,
    custom: &[f64],
    positive: bool,
) -> Bucket<C> {
    let up = bucket_bound(index, schema, custom);
    let low = bucket_bound(index.wrapping_sub(1), schema, custom);
    let (lower, upper) = if positive { (low, up) } else { (-up, -low) };
    let (lower_inclusive, upper_inclusive) = if is_custom_buckets_schema(schema) {
        (index == 0, true)
    } else {
        (lower < 0.0, upper > 0.0)
    };
    Bucket {
        lower,
        upper,
        lower_inclusive,
        upper_inclusive,
        count,
        index,
    }
}

/// Keeps the non-empty pairs and joins neighbours whose gap is at most `max_empty` buckets
/// by filling it with empty buckets: the layout Prometheus's `Compact(maxEmptyBuckets)`
/// arrives at.
pub(crate) fn compact_pairs<C: Copy + PartialEq + Default>(
    pairs: &[(i32, C)],
    max_empty: usize,
) -> Vec<(i32, C)> {
    let zero = C::default();
    let mut out: Vec<(i32, C)> = Vec::with_capacity(pairs.len());
    for &(i, c) in pairs {
        if c == zero {
            continue;
        }
        if let Some(&(last, _)) = out.last() {
            let gap = i64::from(i) - i64::from(last) - 1;
            if gap > 0 && gap as u64 <= max_empty as u64 {
                for j in 1..=gap {
                    out.push(((i64::from(last) + j) as i32, zero));
                }
            }
        }
        out.push((i, c));
    }
    out
}

#[cfg(test)]
mod tests;
