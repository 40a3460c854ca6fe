//! Histogram chunks (Prometheus's encoding 2, `tsdb/chunkenc/histogram.go`), and what both
//! histogram encodings share: the header, the counter reset header and the rules for when a
//! sample fits the open chunk.
//!
//! ```text
//! ┌────────────────────┬────────────────────────┬──────────────────────────────────────┐
//! │ num samples u16 BE │ flags: 2 high bits are │ bit stream: layout (zero threshold,   │
//! │                    │ the counter reset hdr  │ schema, spans, custom bounds), then   │
//! │                    │                        │ samples                               │
//! └────────────────────┴────────────────────────┴──────────────────────────────────────┘
//! sample 0: t varbit, count uvarbit, zero count uvarbit, sum 64 bits, each bucket (delta
//!           encoded as in the histogram) varbit
//! sample n: t dod varbit, count dod varbit, zero count dod varbit, sum XOR, each bucket's
//!           dod varbit (none after a stale-NaN sum)
//! ```
//!
//! A chunk has one bucket layout. A histogram with buckets the chunk lacks makes the chunk
//! be rewritten with the wider layout (recoded), when Prometheus would; a histogram that
//! lacks empty buckets of the chunk gets them added. A counter reset, a schema or zero
//! threshold change, other custom bounds, or a switch between gauge and counter cut a new
//! chunk.

use m3query_model::histogram::{CounterResetHint, Histogram, Span, custom_bounds_match};
use m3query_model::{STALE_NAN_BITS, is_stale_nan};

use crate::bstream::{BitReader, BitWriter};
use crate::varbit::{Layout, put_varbit_int, put_varbit_uint, read_varbit_int, read_varbit_uint};
use crate::xor::XorWindow;
use crate::{ChunkError, Result};

/// Header bytes of both histogram encodings: sample count and flags.
pub(crate) const HEADER_SIZE: usize = 3;

/// What a histogram chunk says about the counter reset at its start (the two high bits of
/// its third byte, Prometheus's `CounterResetHeader`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CounterResetHeader {
    /// Unknown whether the chunk starts with a reset.
    #[default]
    Unknown,
    /// The chunk starts with a counter reset.
    CounterReset,
    /// The chunk continues the previous one without a reset.
    NotCounterReset,
    /// The chunk holds gauge histograms.
    Gauge,
}

impl CounterResetHeader {
    /// The header's bits in the flags byte.
    pub fn bits(self) -> u8 {
        match self {
            CounterResetHeader::Unknown => 0b0000_0000,
            CounterResetHeader::CounterReset => 0b1000_0000,
            CounterResetHeader::NotCounterReset => 0b0100_0000,
            CounterResetHeader::Gauge => 0b1100_0000,
        }
    }

    /// The header in a flags byte.
    pub fn from_flags(b: u8) -> Self {
        match b & 0b1100_0000 {
            0b1000_0000 => CounterResetHeader::CounterReset,
            0b0100_0000 => CounterResetHeader::NotCounterReset,
            0b1100_0000 => CounterResetHeader::Gauge,
            _ => CounterResetHeader::Unknown,
        }
    }

    /// The hint a decoded sample gets: gauge chunks say gauge, samples after the first say
    /// "no reset", and the first says unknown (the previous chunk may be gone or out of
    /// order, so the header is not trusted), as Prometheus does.
    pub(crate) fn sample_hint(self, num_read: u16) -> CounterResetHint {
        if self == CounterResetHeader::Gauge {
            CounterResetHint::Gauge
        } else if num_read > 1 {
            CounterResetHint::NotCounterReset
        } else {
            CounterResetHint::Unknown
        }
    }
}

/// What happened to a histogram given to an appender.
#[derive(Debug)]
pub enum HistogramAppend<A> {
    /// Appended to the chunk.
    Appended,
    /// The chunk was rewritten with a wider bucket layout and the sample appended: its
    /// bytes changed, not only grew.
    Recoded,
    /// The sample needs a new chunk (counter reset, layout or kind change, or the chunk is
    /// full); this appender is unchanged, the returned one holds the new chunk, which starts
    /// with the sample.
    NewChunk(Box<A>),
}

/// The 3 header bytes and whether the chunk is a histogram chunk of some sample count.
pub(crate) fn read_header(bytes: &[u8]) -> Result<(u16, CounterResetHeader)> {
    match bytes {
        [a, b, f, ..] => Ok((
            u16::from_be_bytes([*a, *b]),
            CounterResetHeader::from_flags(*f),
        )),
        _ => Err(ChunkError::MissingHeader),
    }
}

/// The sample count of a histogram chunk of either encoding, if its header is readable.
pub fn histogram_chunk_num_samples(bytes: &[u8]) -> Option<u16> {
    read_header(bytes).ok().map(|(n, _)| n)
}

pub(crate) fn set_header(buf: &mut [u8], num: u16, crh: CounterResetHeader) {
    let [a, b] = num.to_be_bytes();
    buf[0] = a;
    buf[1] = b;
    buf[2] = (buf[2] & 0b0011_1111) | crh.bits();
}

/// Reads an XOR-encoded value (Prometheus's `xorRead`) into `bits`.
pub(crate) fn xor_read(
    r: &mut BitReader<'_>,
    bits: &mut u64,
    leading: &mut u8,
    trailing: &mut u8,
) -> Option<()> {
    if r.read_bits(1)? == 0 {
        return Some(());
    }
    if r.read_bits(1)? == 1 {
        let l = r.read_bits(5)? as u8;
        let mut sig = r.read_bits(6)? as u8;
        if sig == 0 {
            sig = 64;
        }
        *leading = l;
        *trailing = 64u8.checked_sub(l)?.checked_sub(sig)?;
    }
    let sig = 64u32.checked_sub(u32::from(*leading) + u32::from(*trailing))?;
    if sig == 0 {
        return Some(());
    }
    let v = r.read_bits_wide(sig)?;
    *bits ^= v << *trailing;
    Some(())
}

/// Bucket indices of spans, in order.
pub(crate) fn span_indices(spans: &[Span]) -> Vec<i32> {
    let mut out = Vec::new();
    let mut idx = 0i64;
    for s in spans {
        idx += i64::from(s.offset);
        for _ in 0..s.length {
            out.push(idx as i32);
            idx += 1;
        }
    }
    out
}

pub(crate) fn count_spans(spans: &[Span]) -> usize {
    spans.iter().map(|s| s.length as usize).sum()
}

/// The encoding walks buckets by the spans: a histogram whose spans and buckets disagree
/// (which validation rejects) must not get as far as an appender.
pub(crate) fn check_layout(pos: &[Span], npos: usize, neg: &[Span], nneg: usize) -> Result<()> {
    if count_spans(pos) != npos || count_spans(neg) != nneg {
        return Err(ChunkError::Corrupt("histogram spans and buckets disagree"));
    }
    Ok(())
}

/// Spans of ordered bucket indices, adjacent ones in one span (Prometheus's `addBucket`
/// way of building merged spans).
pub(crate) fn spans_of(indices: &[i32]) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut last = 0i64;
    for &i in indices {
        let i = i64::from(i);
        match spans.last_mut() {
            Some(s) if i == last + 1 => s.length += 1,
            Some(_) => spans.push(Span::new((i - last - 1) as i32, 1)),
            None => spans.push(Span::new(i as i32, 1)),
        }
        last = i;
    }
    spans
}

/// How one side's buckets of a new sample relate to the chunk's.
#[derive(Debug, Default)]
pub(crate) struct SideFit {
    /// The new sample has buckets the chunk lacks (the chunk must be recoded).
    pub(crate) forward: bool,
    /// The chunk has (empty) buckets the sample lacks (the sample gets them).
    pub(crate) backward: bool,
    /// Indices of both, in order; filled only when `forward` or `backward` is set.
    pub(crate) union: Vec<i32>,
}

/// Compares a chunk side (`a`) with a new sample's side (`b`), absolute counts. For
/// counters (`counter`), a bucket that lost observations, or a non-empty chunk bucket the
/// sample lacks, is a reset (`None`).
pub(crate) fn fit_side<T: Copy + PartialOrd + Default>(
    a_spans: &[Span],
    a_counts: &[T],
    b_spans: &[Span],
    b_counts: &[T],
    counter: bool,
) -> Option<SideFit> {
    // The common case, a sample with the chunk's layout: nothing to insert either way, and
    // no index lists to build (`union` is read only when there are inserts).
    if a_spans == b_spans {
        if counter && a_counts.iter().zip(b_counts).any(|(a, b)| a > b) {
            return None;
        }
        return Some(SideFit::default());
    }
    let ai = span_indices(a_spans);
    let bi = span_indices(b_spans);
    let zero = T::default();
    let count = |c: &[T], k: usize| c.get(k).copied().unwrap_or(zero);
    let mut fit = SideFit::default();
    let (mut i, mut j) = (0, 0);
    while i < ai.len() || j < bi.len() {
        match (ai.get(i), bi.get(j)) {
            (Some(&x), Some(&y)) if x == y => {
                if counter && count(a_counts, i) > count(b_counts, j) {
                    return None;
                }
                fit.union.push(x);
                i += 1;
                j += 1;
            }
            (Some(&x), Some(&y)) if x < y => {
                if counter && count(a_counts, i) != zero {
                    return None;
                }
                fit.backward = true;
                fit.union.push(x);
                i += 1;
            }
            (Some(&x), None) => {
                if counter && count(a_counts, i) != zero {
                    return None;
                }
                fit.backward = true;
                fit.union.push(x);
                i += 1;
            }
            (_, Some(&y)) => {
                fit.forward = true;
                fit.union.push(y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    Some(fit)
}

/// `counts` at `from` indices, placed at `to` indices (a superset), zero elsewhere.
pub(crate) fn widen<T: Copy + Default>(from: &[i32], counts: &[T], to: &[i32]) -> Vec<T> {
    let mut out = vec![T::default(); to.len()];
    let mut k = 0;
    for (idx, c) in from.iter().zip(counts) {
        while k < to.len() && to[k] < *idx {
            k += 1;
        }
        if k < to.len() && to[k] == *idx {
            out[k] = *c;
        }
    }
    out
}

/// The decision about a new sample against an open chunk (Prometheus's `appendable` /
/// `appendableGauge`, folded into one result).
#[derive(Debug)]
pub(crate) enum Fit {
    /// Append as is, or after giving the sample the chunk's empty buckets or recoding.
    Ok { pos: SideFit, neg: SideFit },
    /// Cut a new chunk with this header.
    Cut(CounterResetHeader),
}

/// The appender state both encodings compare samples against.
pub(crate) struct Last<'a, T> {
    pub(crate) num: u16,
    pub(crate) header: CounterResetHeader,
    pub(crate) layout: &'a Layout,
    pub(crate) count: T,
    pub(crate) zero_count: T,
    pub(crate) sum: f64,
    pub(crate) pos: &'a [T],
    pub(crate) neg: &'a [T],
}

/// A new sample, absolute counts.
pub(crate) struct Next<'a, T> {
    pub(crate) hint: CounterResetHint,
    pub(crate) schema: i32,
    pub(crate) zero_threshold: f64,
    pub(crate) custom_values: &'a [f64],
    pub(crate) count: T,
    pub(crate) zero_count: T,
    pub(crate) sum: f64,
    pub(crate) pos_spans: &'a [Span],
    pub(crate) neg_spans: &'a [Span],
    pub(crate) pos: &'a [T],
    pub(crate) neg: &'a [T],
}

/// Prometheus's counter `appendable`: `Cut(header)` when a new chunk is needed. The
/// `not_reset_cut` header is what a cut for a gauge chunk gets (NotCounterReset for integer
/// histograms, Unknown for float ones, as in Prometheus).
pub(crate) fn fit_counter<T: Copy + PartialOrd + Default>(
    a: &Last<'_, T>,
    h: &Next<'_, T>,
    not_reset_cut: CounterResetHeader,
) -> Fit {
    use CounterResetHeader as H;
    if a.num > 0 && a.header == H::Gauge {
        return Fit::Cut(not_reset_cut);
    }
    if h.hint == CounterResetHint::CounterReset {
        return Fit::Cut(H::CounterReset);
    }
    if is_stale_nan(h.sum) {
        return Fit::Ok {
            pos: SideFit::default(),
            neg: SideFit::default(),
        };
    }
    if is_stale_nan(a.sum) {
        return Fit::Cut(H::Unknown);
    }
    if h.count < a.count {
        return Fit::Cut(H::CounterReset);
    }
    if h.schema != a.layout.schema || h.zero_threshold != a.layout.zero_threshold {
        return Fit::Cut(H::Unknown);
    }
    if m3query_model::histogram::is_custom_buckets_schema(h.schema)
        && !custom_bounds_match(h.custom_values, &a.layout.custom_values)
    {
        return Fit::Cut(H::CounterReset);
    }
    if h.zero_count < a.zero_count {
        return Fit::Cut(H::CounterReset);
    }
    let Some(pos) = fit_side(&a.layout.positive_spans, a.pos, h.pos_spans, h.pos, true) else {
        return Fit::Cut(H::CounterReset);
    };
    let Some(neg) = fit_side(&a.layout.negative_spans, a.neg, h.neg_spans, h.neg, true) else {
        return Fit::Cut(H::CounterReset);
    };
    Fit::Ok { pos, neg }
}

/// Prometheus's `appendableGauge`.
pub(crate) fn fit_gauge<T: Copy + PartialOrd + Default>(a: &Last<'_, T>, h: &Next<'_, T>) -> Fit {
    let cut = Fit::Cut(CounterResetHeader::Gauge);
    if a.num > 0 && a.header != CounterResetHeader::Gauge {
        return cut;
    }
    if is_stale_nan(h.sum) {
        return Fit::Ok {
            pos: SideFit::default(),
            neg: SideFit::default(),
        };
    }
    if is_stale_nan(a.sum)
        || h.schema != a.layout.schema
        || h.zero_threshold != a.layout.zero_threshold
        || (m3query_model::histogram::is_custom_buckets_schema(h.schema)
            && !custom_bounds_match(h.custom_values, &a.layout.custom_values))
    {
        return cut;
    }
    let side = |a_spans, a_c, b_spans, b_c| {
        fit_side(a_spans, a_c, b_spans, b_c, false).unwrap_or_default()
    };
    Fit::Ok {
        pos: side(&a.layout.positive_spans, a.pos, h.pos_spans, h.pos),
        neg: side(&a.layout.negative_spans, a.neg, h.neg_spans, h.neg),
    }
}

/// The spans a fitting sample is written with, per Prometheus's `AppendHistogram`: with
/// only backward inserts (counter) the chunk's spans; a side with backward inserts otherwise
/// gets the merged spans (gauges: both sides as soon as either has them); else the sample's.
pub(crate) fn sample_spans(
    gauge: bool,
    layout: &Layout,
    h_pos: &[Span],
    h_neg: &[Span],
    pos: &SideFit,
    neg: &SideFit,
) -> (Vec<Span>, Vec<Span>) {
    let any_back = pos.backward || neg.backward;
    let any_fwd = pos.forward || neg.forward;
    if !any_back {
        return (h_pos.to_vec(), h_neg.to_vec());
    }
    if gauge {
        // Both sides get merged spans; a side without inserts left its union empty (see
        // `fit_side`), and its union would be its own indices.
        let merged = |fit: &SideFit, own: &[Span]| {
            if fit.forward || fit.backward {
                spans_of(&fit.union)
            } else {
                spans_of(&span_indices(own))
            }
        };
        return (merged(pos, h_pos), merged(neg, h_neg));
    }
    if !any_fwd {
        return (layout.positive_spans.clone(), layout.negative_spans.clone());
    }
    let pick = |fit: &SideFit, own: &[Span]| {
        if fit.backward {
            spans_of(&fit.union)
        } else {
            own.to_vec()
        }
    };
    (pick(pos, h_pos), pick(neg, h_neg))
}

/// Absolute counts from deltas (wrapping like Go's int64).
pub(crate) fn abs_of(deltas: &[i64]) -> Vec<i64> {
    let mut cur = 0i64;
    deltas
        .iter()
        .map(|d| {
            cur = cur.wrapping_add(*d);
            cur
        })
        .collect()
}

/// Deltas from absolute counts.
pub(crate) fn deltas_of(abs: &[i64]) -> Vec<i64> {
    let mut prev = 0i64;
    abs.iter()
        .map(|a| {
            let d = a.wrapping_sub(prev);
            prev = *a;
            d
        })
        .collect()
}

/// Encoder state of an integer histogram chunk (Prometheus's `HistogramAppender` fields),
/// shared with the iterator so an appender can continue a decoded chunk exactly.
#[derive(Clone, Debug, Default)]
struct IntState {
    layout: Layout,
    t: i64,
    cnt: u64,
    zcnt: u64,
    t_delta: i64,
    cnt_delta: i64,
    zcnt_delta: i64,
    /// The last sample's buckets, delta-encoded as in the histogram.
    pos: Vec<i64>,
    neg: Vec<i64>,
    /// Per bucket, the last change of its (delta-encoded) value.
    pos_delta: Vec<i64>,
    neg_delta: Vec<i64>,
    sum: f64,
    leading: u8,
    trailing: u8,
}

/// Builds one integer histogram chunk (encoding 2), byte for byte as Prometheus's
/// `HistogramAppender`. [`HistogramAppender::bytes`] is always a complete chunk.
#[derive(Clone, Debug)]
pub struct HistogramAppender {
    w: BitWriter,
    num: u16,
    s: IntState,
    window: XorWindow,
}

impl Default for HistogramAppender {
    fn default() -> Self {
        Self::new()
    }
}

impl HistogramAppender {
    /// An empty chunk.
    pub fn new() -> Self {
        HistogramAppender {
            w: BitWriter {
                buf: vec![0; HEADER_SIZE],
                free: 0,
            },
            num: 0,
            s: IntState::default(),
            window: XorWindow::default(),
        }
    }

    /// An appender that continues the chunk `bytes` (as Prometheus's `Appender()` on a
    /// non-empty chunk, including its XOR window quirk).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut it = HistogramIterator::new(bytes)?;
        while it.advance()? {}
        if it.r.remaining_bits() >= 8 {
            return Err(ChunkError::Corrupt("bytes after the chunk's last sample"));
        }
        let free = it.unused_bits();
        let window = if it.num_read == 0 {
            XorWindow::default()
        } else {
            XorWindow::from_parts(it.s.leading, it.s.trailing)
        };
        Ok(HistogramAppender {
            w: BitWriter {
                buf: bytes.to_vec(),
                free,
            },
            num: it.total,
            s: it.s,
            window,
        })
    }

    /// The chunk: header and bit stream.
    pub fn bytes(&self) -> &[u8] {
        &self.w.buf
    }

    /// Samples in the chunk.
    pub fn num_samples(&self) -> u16 {
        self.num
    }

    /// The chunk's counter reset header.
    pub fn counter_reset_header(&self) -> CounterResetHeader {
        CounterResetHeader::from_flags(self.w.buf[2])
    }

    /// Sets the counter reset header (the head does this when it knows better).
    pub fn set_counter_reset_header(&mut self, h: CounterResetHeader) {
        set_header(&mut self.w.buf, self.num, h);
    }

    /// Timestamp of the last sample (meaningless while empty).
    pub fn last_t(&self) -> i64 {
        self.s.t
    }

    /// Appends `h` at `t` as Prometheus's `AppendHistogram` (not append-only): see
    /// [`HistogramAppend`]. The stored sample may carry extra empty buckets (the chunk's
    /// layout). Errors only when `h`'s spans and buckets disagree (validate first).
    pub fn append(&mut self, t: i64, h: &Histogram) -> Result<HistogramAppend<Self>> {
        self.append_after(None, t, h)
    }

    /// As [`HistogramAppender::append`]; when this chunk is empty and `prev` is the series'
    /// previous chunk, the new chunk's counter reset header is decided against it.
    pub fn append_after(
        &mut self,
        prev: Option<&HistogramAppender>,
        t: i64,
        h: &Histogram,
    ) -> Result<HistogramAppend<Self>> {
        use CounterResetHeader as H;
        check_layout(
            &h.positive_spans,
            h.positive_buckets.len(),
            &h.negative_spans,
            h.negative_buckets.len(),
        )?;
        if self.num == 0 {
            self.write_sample(t, h);
            let header = match h.counter_reset_hint {
                CounterResetHint::Gauge => H::Gauge,
                CounterResetHint::CounterReset => H::CounterReset,
                _ => match prev {
                    Some(p) => match p.fit(h) {
                        Fit::Cut(hd) => hd,
                        Fit::Ok { .. } => H::NotCounterReset,
                    },
                    None => self.counter_reset_header(),
                },
            };
            set_header(&mut self.w.buf, self.num, header);
            return Ok(HistogramAppend::Appended);
        }
        let gauge = h.counter_reset_hint == CounterResetHint::Gauge;
        let fit = self.fit(h);
        if self.num == u16::MAX {
            // Prometheus's head never fills a chunk; cut with the header the sample implies.
            let header = match fit {
                Fit::Cut(hd) => hd,
                Fit::Ok { .. } if gauge => H::Gauge,
                Fit::Ok { .. } => H::NotCounterReset,
            };
            return Ok(HistogramAppend::NewChunk(Box::new(self.cut(header, t, h))));
        }
        let (pos, neg) = match fit {
            Fit::Cut(header) => {
                return Ok(HistogramAppend::NewChunk(Box::new(self.cut(header, t, h))));
            }
            Fit::Ok { pos, neg } => (pos, neg),
        };
        let (p_spans, n_spans) = sample_spans(
            gauge,
            &self.s.layout,
            &h.positive_spans,
            &h.negative_spans,
            &pos,
            &neg,
        );
        let mut h2;
        let mut h = h;
        if pos.backward || neg.backward {
            h2 = h.clone();
            h2.positive_buckets = deltas_of(&widen(
                &span_indices(&h.positive_spans),
                &abs_of(&h.positive_buckets),
                &span_indices(&p_spans),
            ));
            h2.negative_buckets = deltas_of(&widen(
                &span_indices(&h.negative_spans),
                &abs_of(&h.negative_buckets),
                &span_indices(&n_spans),
            ));
            h2.positive_spans = p_spans;
            h2.negative_spans = n_spans;
            h = &h2;
        }
        if pos.forward || neg.forward {
            let mut fresh = self.recode(&h.positive_spans, &h.negative_spans)?;
            fresh.write_sample(t, h);
            *self = fresh;
            return Ok(HistogramAppend::Recoded);
        }
        self.write_sample(t, h);
        Ok(HistogramAppend::Appended)
    }

    fn fit(&self, h: &Histogram) -> Fit {
        // Counts compare as Go compares them: counts as uint64, buckets as int64; i128
        // holds both.
        let wide = |d: &[i64]| {
            let mut cur = 0i64;
            d.iter()
                .map(|x| {
                    cur = cur.wrapping_add(*x);
                    i128::from(cur)
                })
                .collect::<Vec<_>>()
        };
        let (a_pos, a_neg) = (wide(&self.s.pos), wide(&self.s.neg));
        let (b_pos, b_neg) = (wide(&h.positive_buckets), wide(&h.negative_buckets));
        let last = Last {
            num: self.num,
            header: self.counter_reset_header(),
            layout: &self.s.layout,
            count: i128::from(self.s.cnt),
            zero_count: i128::from(self.s.zcnt),
            sum: self.s.sum,
            pos: &a_pos,
            neg: &a_neg,
        };
        let next = Next {
            hint: h.counter_reset_hint,
            schema: h.schema,
            zero_threshold: h.zero_threshold,
            custom_values: &h.custom_values,
            count: i128::from(h.count),
            zero_count: i128::from(h.zero_count),
            sum: h.sum,
            pos_spans: &h.positive_spans,
            neg_spans: &h.negative_spans,
            pos: &b_pos,
            neg: &b_neg,
        };
        if h.counter_reset_hint == CounterResetHint::Gauge {
            fit_gauge(&last, &next)
        } else {
            fit_counter(&last, &next, CounterResetHeader::NotCounterReset)
        }
    }

    /// A new chunk with `header` holding only `h` at `t`.
    fn cut(&self, header: CounterResetHeader, t: i64, h: &Histogram) -> Self {
        let mut a = HistogramAppender::new();
        set_header(&mut a.w.buf, 0, header);
        a.write_sample(t, h);
        a
    }

    /// This chunk's samples re-encoded with the wider layout `pos`/`neg`.
    fn recode(&self, pos: &[Span], neg: &[Span]) -> Result<Self> {
        let mut it = HistogramIterator::new(self.bytes())?;
        let mut fresh = HistogramAppender::new();
        set_header(&mut fresh.w.buf, 0, self.counter_reset_header());
        let (to_p, to_n) = (span_indices(pos), span_indices(neg));
        while let Some((t, mut old)) = it.next_raw()? {
            if !is_stale_nan(old.sum) {
                old.positive_buckets = deltas_of(&widen(
                    &span_indices(&old.positive_spans),
                    &abs_of(&old.positive_buckets),
                    &to_p,
                ));
                old.negative_buckets = deltas_of(&widen(
                    &span_indices(&old.negative_spans),
                    &abs_of(&old.negative_buckets),
                    &to_n,
                ));
                old.positive_spans = pos.to_vec();
                old.negative_spans = neg.to_vec();
            }
            fresh.write_sample(t, &old);
        }
        Ok(fresh)
    }

    /// Prometheus's `appendHistogram`: writes the sample with no checks.
    fn write_sample(&mut self, t: i64, h: &Histogram) {
        let stale_h;
        let h = if is_stale_nan(h.sum) {
            stale_h = Histogram {
                sum: h.sum,
                ..Default::default()
            };
            &stale_h
        } else {
            h
        };
        let w = &mut self.w;
        let s = &mut self.s;
        let (mut t_delta, mut cnt_delta, mut zcnt_delta) = (0i64, 0i64, 0i64);
        if self.num == 0 {
            s.layout = Layout {
                schema: h.schema,
                zero_threshold: h.zero_threshold,
                positive_spans: h.positive_spans.clone(),
                negative_spans: h.negative_spans.clone(),
                custom_values: h.custom_values.clone(),
            };
            s.layout.write(w);
            let (np, nn) = (
                count_spans(&h.positive_spans),
                count_spans(&h.negative_spans),
            );
            s.pos = vec![0; np];
            s.neg = vec![0; nn];
            s.pos_delta = vec![0; np];
            s.neg_delta = vec![0; nn];
            put_varbit_int(w, t);
            put_varbit_uint(w, h.count);
            put_varbit_uint(w, h.zero_count);
            w.write_bits(h.sum.to_bits(), 64);
            for &b in h.positive_buckets.iter().chain(&h.negative_buckets) {
                put_varbit_int(w, b);
            }
        } else {
            t_delta = t.wrapping_sub(s.t);
            cnt_delta = (h.count as i64).wrapping_sub(s.cnt as i64);
            zcnt_delta = (h.zero_count as i64).wrapping_sub(s.zcnt as i64);
            let t_dod = t_delta.wrapping_sub(s.t_delta);
            let (mut cnt_dod, mut zcnt_dod) = (
                cnt_delta.wrapping_sub(s.cnt_delta),
                zcnt_delta.wrapping_sub(s.zcnt_delta),
            );
            if is_stale_nan(h.sum) {
                (cnt_dod, zcnt_dod) = (0, 0);
            }
            put_varbit_int(w, t_dod);
            put_varbit_int(w, cnt_dod);
            put_varbit_int(w, zcnt_dod);
            self.window.write(w, h.sum.to_bits() ^ s.sum.to_bits());
            for (i, &b) in h.positive_buckets.iter().enumerate() {
                let delta = b.wrapping_sub(s.pos[i]);
                put_varbit_int(w, delta.wrapping_sub(s.pos_delta[i]));
                s.pos_delta[i] = delta;
            }
            for (i, &b) in h.negative_buckets.iter().enumerate() {
                let delta = b.wrapping_sub(s.neg[i]);
                put_varbit_int(w, delta.wrapping_sub(s.neg_delta[i]));
                s.neg_delta[i] = delta;
            }
        }
        s.t = t;
        s.cnt = h.count;
        s.zcnt = h.zero_count;
        s.t_delta = t_delta;
        s.cnt_delta = cnt_delta;
        s.zcnt_delta = zcnt_delta;
        for (d, b) in s.pos.iter_mut().zip(&h.positive_buckets) {
            *d = *b;
        }
        for (d, b) in s.neg.iter_mut().zip(&h.negative_buckets) {
            *d = *b;
        }
        s.sum = h.sum;
        self.num += 1;
        let crh = CounterResetHeader::from_flags(self.w.buf[2]);
        set_header(&mut self.w.buf, self.num, crh);
    }
}

/// Decodes an integer histogram chunk. Errors on bytes that cannot be a chunk; never panics.
#[derive(Clone, Debug)]
pub struct HistogramIterator<'a> {
    r: BitReader<'a>,
    data_len: usize,
    total: u16,
    num_read: u16,
    header: CounterResetHeader,
    s: IntState,
}

impl<'a> HistogramIterator<'a> {
    /// An iterator over a chunk (`bytes` includes the 3-byte header).
    pub fn new(bytes: &'a [u8]) -> Result<Self> {
        let (total, header) = read_header(bytes)?;
        Ok(HistogramIterator {
            r: BitReader::new(&bytes[HEADER_SIZE..]),
            data_len: bytes.len() - HEADER_SIZE,
            total,
            num_read: 0,
            header,
            s: IntState::default(),
        })
    }

    /// Samples in the chunk, per its header.
    pub fn num_samples(&self) -> u16 {
        self.total
    }

    /// The chunk's counter reset header.
    pub fn counter_reset_header(&self) -> CounterResetHeader {
        self.header
    }

    /// Unused low bits of the last byte after everything was read.
    fn unused_bits(&self) -> u8 {
        let used = self.data_len * 8 - self.r.remaining_bits();
        ((8 - used % 8) % 8) as u8
    }

    fn trunc(&self) -> ChunkError {
        ChunkError::Truncated {
            read: self.num_read,
            total: self.total,
        }
    }

    /// The next sample as Prometheus's `AtHistogram` returns it: schemas 9..=52 are reduced
    /// to 8, a stale sample is only its stale-NaN sum, and the counter reset hint comes from
    /// the chunk header and the position. `Ok(None)` after the last.
    pub fn next_histogram(&mut self) -> Result<Option<(i64, Histogram)>> {
        let Some((t, mut h)) = self.next_raw()? else {
            return Ok(None);
        };
        if is_stale_nan(h.sum) {
            return Ok(Some((t, h)));
        }
        h.counter_reset_hint = self.header.sample_hint(self.num_read);
        if h.schema > m3query_model::histogram::EXPONENTIAL_SCHEMA_MAX {
            h.reduce_resolution(m3query_model::histogram::EXPONENTIAL_SCHEMA_MAX)
                .map_err(|_| ChunkError::Corrupt("histogram schema cannot be reduced"))?;
        }
        Ok(Some((t, h)))
    }

    /// The next sample exactly as encoded (no hint, no schema reduction).
    fn next_raw(&mut self) -> Result<Option<(i64, Histogram)>> {
        if !self.advance()? {
            return Ok(None);
        }
        let s = &self.s;
        if is_stale_nan(s.sum) {
            return Ok(Some((
                s.t,
                Histogram {
                    sum: f64::from_bits(STALE_NAN_BITS),
                    ..Default::default()
                },
            )));
        }
        Ok(Some((
            s.t,
            Histogram {
                counter_reset_hint: CounterResetHint::Unknown,
                schema: s.layout.schema,
                zero_threshold: s.layout.zero_threshold,
                zero_count: s.zcnt,
                count: s.cnt,
                sum: s.sum,
                positive_spans: s.layout.positive_spans.clone(),
                negative_spans: s.layout.negative_spans.clone(),
                positive_buckets: s.pos.clone(),
                negative_buckets: s.neg.clone(),
                custom_values: s.layout.custom_values.clone(),
            },
        )))
    }

    /// Decodes one sample into the state; `false` after the last.
    fn advance(&mut self) -> Result<bool> {
        if self.num_read == self.total {
            return Ok(false);
        }
        let r = &mut self.r;
        let s = &mut self.s;
        if self.num_read == 0 {
            s.layout = Layout::read(r)?;
            let (np, nn) = (
                count_spans(&s.layout.positive_spans),
                count_spans(&s.layout.negative_spans),
            );
            if np.saturating_add(nn) > r.remaining_bits() {
                return Err(ChunkError::Corrupt(
                    "histogram chunk has more buckets than data",
                ));
            }
            s.pos = vec![0; np];
            s.neg = vec![0; nn];
            s.pos_delta = vec![0; np];
            s.neg_delta = vec![0; nn];
            let first = (|| {
                s.t = read_varbit_int(r)?;
                s.cnt = read_varbit_uint(r)?;
                s.zcnt = read_varbit_uint(r)?;
                s.sum = f64::from_bits(r.read_bits_wide(64)?);
                for b in s.pos.iter_mut().chain(s.neg.iter_mut()) {
                    *b = read_varbit_int(r)?;
                }
                Some(())
            })();
            if first.is_none() {
                return Err(self.trunc());
            }
            self.num_read += 1;
            return Ok(true);
        }
        let next = (|| {
            let t_dod = read_varbit_int(r)?;
            s.t_delta = s.t_delta.wrapping_add(t_dod);
            s.t = s.t.wrapping_add(s.t_delta);
            let cnt_dod = read_varbit_int(r)?;
            s.cnt_delta = s.cnt_delta.wrapping_add(cnt_dod);
            s.cnt = (s.cnt as i64).wrapping_add(s.cnt_delta) as u64;
            let zcnt_dod = read_varbit_int(r)?;
            s.zcnt_delta = s.zcnt_delta.wrapping_add(zcnt_dod);
            s.zcnt = (s.zcnt as i64).wrapping_add(s.zcnt_delta) as u64;
            let mut sum = s.sum.to_bits();
            xor_read(r, &mut sum, &mut s.leading, &mut s.trailing)?;
            s.sum = f64::from_bits(sum);
            if is_stale_nan(s.sum) {
                return Some(());
            }
            for (b, d) in s
                .pos
                .iter_mut()
                .zip(s.pos_delta.iter_mut())
                .chain(s.neg.iter_mut().zip(s.neg_delta.iter_mut()))
            {
                let dod = read_varbit_int(r)?;
                *d = d.wrapping_add(dod);
                *b = b.wrapping_add(*d);
            }
            Some(())
        })();
        if next.is_none() {
            return Err(self.trunc());
        }
        self.num_read += 1;
        Ok(true)
    }
}
