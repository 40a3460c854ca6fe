//! Native histograms in the TSDB: the values the head stores (integer or float histograms),
//! a series' histogram chunks in the head, their WAL encoding, and decoding histogram chunks
//! (Prometheus's encodings 2 and 3) for queries, block writes and compaction.
//!
//! A series' histograms live beside its floats (`SeriesData::hist`, boxed, so float-only
//! series pay one pointer). Floats and histograms share one time order per series, and a
//! change of kind (float, integer histogram, float histogram) cuts a new chunk, as in
//! Prometheus's head.
//!
//! Counter reset hints: a reader sees what Prometheus's chunk iterators report inside a
//! chunk (gauge chunks say `Gauge`, later samples `NotCounterReset`); for the first sample
//! of a chunk it sees the chunk's counter reset header, which the head sets when it starts
//! the chunk to the hint the sample reads back with in `MemStorage` (its own hint at a
//! series' start, `CounterReset` when given one, `Unknown` after a detected reset or a
//! layout change, `NotCounterReset` for a chunk cut by size or time). Prometheus reports
//! `Unknown` there because its previous chunk may be gone (prometheus/prometheus#15346);
//! ours says what was known when the chunk was cut, which a query window that starts at the
//! chunk does not use and one that spans the cut does.
//!
//! Out-of-order histograms (within the out-of-order window) are kept apart, uncompressed
//! (`HistData::ooo`), and read back with the hint `Unknown` (a gauge's `Gauge`): whether a
//! counter reset lies between one and its neighbours cannot be known when samples arrive in
//! any order (Prometheus's merge of in-order and out-of-order data says `Unknown` too). The
//! in-order histograms keep their hints (Prometheus's chain iterator would make the one right
//! after an out-of-order sample `Unknown` as well; ours reads back as if the out-of-order
//! sample were not there).

use std::sync::Arc;

use m3query_chunkenc::{
    ChunkError, CounterResetHeader, ENCODING_FLOAT_HISTOGRAM, ENCODING_HISTOGRAM,
    FloatHistogramAppender, FloatHistogramIterator, HistogramAppend, HistogramAppender,
    HistogramIterator,
};
use m3query_model::histogram::{CounterResetHint, Span};
use m3query_model::{FloatHistogram, Histogram, STALE_NAN_BITS};
use m3query_storage::HistogramSample;

use crate::chunks::{ChunkBytes, QChunk};
use crate::encoding::{Decbuf, DecodeError, put_u64, put_uvarint, put_varint};
use crate::head::HeadChunk;

/// Bytes after which a histogram chunk is cut (once it holds [`MIN_SAMPLES_PER_CHUNK`]),
/// Prometheus's `TargetBytesPerHistogramChunk`.
pub(crate) const TARGET_BYTES_PER_CHUNK: usize = 1024;
/// Prometheus's `MinSamplesPerHistogramChunk`.
pub(crate) const MIN_SAMPLES_PER_CHUNK: u16 = 10;

/// Whether a chunk encoding holds histograms.
#[inline]
pub(crate) fn is_hist_encoding(enc: u8) -> bool {
    enc == ENCODING_HISTOGRAM || enc == ENCODING_FLOAT_HISTOGRAM
}

/// A histogram sample's value as appended: integer counts (HISTOGRAM chunks) or float
/// counts (FLOAT_HISTOGRAM chunks).
#[derive(Clone, Debug)]
pub(crate) enum HistVal {
    Int(Histogram),
    Float(FloatHistogram),
}

impl HistVal {
    /// A stale marker of the given kind (Prometheus marks stale histograms by their sum).
    pub(crate) fn stale(float: bool) -> HistVal {
        let sum = f64::from_bits(STALE_NAN_BITS);
        if float {
            HistVal::Float(FloatHistogram {
                sum,
                ..FloatHistogram::default()
            })
        } else {
            HistVal::Int(Histogram {
                sum,
                ..Histogram::default()
            })
        }
    }

    /// Heap bytes of its spans and buckets.
    fn bucket_bytes(&self) -> usize {
        let spans = |a: &[Span], b: &[Span]| (a.len() + b.len()) * std::mem::size_of::<Span>();
        match self {
            HistVal::Int(h) => {
                spans(&h.positive_spans, &h.negative_spans)
                    + (h.positive_buckets.len() + h.negative_buckets.len() + h.custom_values.len())
                        * 8
            }
            HistVal::Float(h) => {
                spans(&h.positive_spans, &h.negative_spans)
                    + (h.positive_buckets.len() + h.negative_buckets.len() + h.custom_values.len())
                        * 8
            }
        }
    }

    pub(crate) fn is_float(&self) -> bool {
        matches!(self, HistVal::Float(_))
    }

    pub(crate) fn is_stale(&self) -> bool {
        let sum = match self {
            HistVal::Int(h) => h.sum,
            HistVal::Float(h) => h.sum,
        };
        sum.to_bits() == STALE_NAN_BITS
    }

    pub(crate) fn hint(&self) -> CounterResetHint {
        match self {
            HistVal::Int(h) => h.counter_reset_hint,
            HistVal::Float(h) => h.counter_reset_hint,
        }
    }

    /// This histogram as the out-of-order store keeps it: a counter histogram's hint becomes
    /// `Unknown` (whether a counter reset lies before it cannot be known across inserts
    /// out of order, as in Prometheus), a gauge stays a gauge, a stale marker as it is.
    pub(crate) fn for_ooo(mut self) -> HistVal {
        if !self.is_stale() && self.hint() != CounterResetHint::Gauge {
            match &mut self {
                HistVal::Int(h) => h.counter_reset_hint = CounterResetHint::Unknown,
                HistVal::Float(h) => h.counter_reset_hint = CounterResetHint::Unknown,
            }
        }
        self
    }

    pub(crate) fn to_float(&self) -> FloatHistogram {
        match self {
            HistVal::Int(h) => h.to_float(),
            HistVal::Float(h) => h.clone(),
        }
    }

    /// Checks the histogram as Prometheus's head does before appending (stale markers are
    /// not checked: they carry no buckets).
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.is_stale() {
            return Ok(());
        }
        match self {
            HistVal::Int(h) => h.validate(),
            HistVal::Float(h) => h.validate(),
        }
        .map_err(|e| format!("invalid native histogram: {e}"))
    }

    /// Whether `stored` (as read back from a chunk: maybe with extra empty buckets the
    /// chunk's layout added, and another hint) is this sample: same kind, and equal once
    /// empty buckets are dropped. Used to accept a retried write as a duplicate.
    pub(crate) fn same_as_stored(&self, stored: &HistVal) -> bool {
        match (self, stored) {
            (HistVal::Int(a), HistVal::Int(b)) => {
                if a == b {
                    return true;
                }
                let (mut a, mut b) = (a.clone(), b.clone());
                a.compact(0);
                b.compact(0);
                a == b
            }
            (HistVal::Float(a), HistVal::Float(b)) => {
                if a == b {
                    return true;
                }
                let (mut a, mut b) = (a.clone(), b.clone());
                a.compact(0);
                b.compact(0);
                a == b
            }
            _ => false,
        }
    }
}

/// The hint a histogram reads back with after `prev` (the series' newest sample when that
/// is a histogram that is not a stale marker): the rule `MemStorage` (the seam's reference)
/// applies, which the head records in the header of each chunk it starts.
pub(crate) fn read_back_hint(h: &HistVal, prev: Option<&HistVal>) -> CounterResetHint {
    use CounterResetHint::*;
    let hint = h.hint();
    let Some(prev) = prev else {
        return hint;
    };
    if hint == Gauge || prev.hint() == Gauge {
        return hint;
    }
    if hint == CounterReset {
        return CounterReset;
    }
    let (mut probe, prev) = (h.to_float(), prev.to_float());
    probe.counter_reset_hint = Unknown;
    if probe.detect_reset(&prev) {
        return Unknown;
    }
    let layout_changed = probe.schema != prev.schema
        || probe.zero_threshold != prev.zero_threshold
        || probe.custom_values != prev.custom_values;
    if layout_changed {
        Unknown
    } else {
        NotCounterReset
    }
}

fn header_for(h: CounterResetHint) -> CounterResetHeader {
    match h {
        CounterResetHint::Unknown => CounterResetHeader::Unknown,
        CounterResetHint::CounterReset => CounterResetHeader::CounterReset,
        CounterResetHint::NotCounterReset => CounterResetHeader::NotCounterReset,
        CounterResetHint::Gauge => CounterResetHeader::Gauge,
    }
}

fn hint_for(h: CounterResetHeader) -> CounterResetHint {
    match h {
        CounterResetHeader::Unknown => CounterResetHint::Unknown,
        CounterResetHeader::CounterReset => CounterResetHint::CounterReset,
        CounterResetHeader::NotCounterReset => CounterResetHint::NotCounterReset,
        CounterResetHeader::Gauge => CounterResetHint::Gauge,
    }
}

/// An open histogram chunk of either kind.
#[derive(Debug, Clone)]
pub(crate) enum HistApp {
    Int(HistogramAppender),
    Float(FloatHistogramAppender),
}

impl HistApp {
    fn new_for(h: &HistVal) -> HistApp {
        if h.is_float() {
            HistApp::Float(FloatHistogramAppender::new())
        } else {
            HistApp::Int(HistogramAppender::new())
        }
    }

    /// An appender continuing chunk `bytes` of encoding `enc`.
    pub(crate) fn from_bytes(enc: u8, bytes: &[u8]) -> Result<HistApp, ChunkError> {
        match enc {
            ENCODING_HISTOGRAM => HistogramAppender::from_bytes(bytes).map(HistApp::Int),
            ENCODING_FLOAT_HISTOGRAM => {
                FloatHistogramAppender::from_bytes(bytes).map(HistApp::Float)
            }
            _ => Err(ChunkError::Corrupt("not a histogram chunk encoding")),
        }
    }

    pub(crate) fn enc(&self) -> u8 {
        match self {
            HistApp::Int(_) => ENCODING_HISTOGRAM,
            HistApp::Float(_) => ENCODING_FLOAT_HISTOGRAM,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            HistApp::Int(a) => a.bytes(),
            HistApp::Float(a) => a.bytes(),
        }
    }

    fn num_samples(&self) -> u16 {
        match self {
            HistApp::Int(a) => a.num_samples(),
            HistApp::Float(a) => a.num_samples(),
        }
    }

    pub(crate) fn last_t(&self) -> i64 {
        match self {
            HistApp::Int(a) => a.last_t(),
            HistApp::Float(a) => a.last_t(),
        }
    }

    fn set_header(&mut self, h: CounterResetHeader) {
        match self {
            HistApp::Int(a) => a.set_counter_reset_header(h),
            HistApp::Float(a) => a.set_counter_reset_header(h),
        }
    }

    /// Appends; `Ok(Some(new))` when the codec cut a new chunk (which holds the sample).
    fn append(&mut self, t: i64, h: &HistVal) -> Result<Option<HistApp>, ChunkError> {
        match (self, h) {
            (HistApp::Int(a), HistVal::Int(h)) => Ok(match a.append(t, h)? {
                HistogramAppend::NewChunk(n) => Some(HistApp::Int(*n)),
                _ => None,
            }),
            (HistApp::Float(a), HistVal::Float(h)) => Ok(match a.append(t, h)? {
                HistogramAppend::NewChunk(n) => Some(HistApp::Float(*n)),
                _ => None,
            }),
            _ => Err(ChunkError::Corrupt(
                "histogram kind differs from its chunk's",
            )),
        }
    }
}

#[derive(Debug)]
pub(crate) struct OpenHist {
    pub(crate) app: HistApp,
    pub(crate) min_t: i64,
}

/// A series' histogram chunks in the head.
#[derive(Debug, Default)]
pub(crate) struct HistData {
    pub(crate) closed: Vec<HeadChunk>,
    pub(crate) open: Option<OpenHist>,
    /// The newest histogram's time (`i64::MIN`: none).
    pub(crate) last_t: i64,
    /// The newest histogram, for duplicate checks and the next chunk's header.
    pub(crate) last: Option<HistVal>,
    /// Out-of-order histograms, sorted by time, unique timestamps, hints as
    /// [`HistVal::for_ooo`] leaves them. Kept uncompressed (as Prometheus's OOO head
    /// chunks): they are few, and inserted anywhere in time.
    pub(crate) ooo: Vec<(i64, HistVal)>,
}

impl HistData {
    pub(crate) fn new() -> HistData {
        HistData {
            last_t: i64::MIN,
            ..HistData::default()
        }
    }

    pub(crate) fn close_open(&mut self) {
        if let Some(o) = self.open.take() {
            let max_t = o.app.last_t();
            self.closed.reserve_exact(1);
            self.closed.push(HeadChunk {
                min_t: o.min_t,
                max_t,
                enc: o.app.enc(),
                bytes: Arc::from(o.app.bytes()),
            });
        }
    }

    /// Appends an in-order histogram; `prev` is the series' newest sample when it is a
    /// histogram. Cuts a chunk at a change of kind, a chunk-range window boundary, at
    /// [`TARGET_BYTES_PER_CHUNK`] (with ≥ [`MIN_SAMPLES_PER_CHUNK`] samples), or where the
    /// codec needs one (reset, layout change). Returns whether a chunk was started.
    pub(crate) fn append(
        &mut self,
        t: i64,
        h: &HistVal,
        prev_is_newest: bool,
        chunk_range: i64,
    ) -> Result<bool, ChunkError> {
        // Only computed when a chunk starts: it may convert and compare two histograms.
        let header = |last: Option<&HistVal>| {
            if h.is_stale() {
                return CounterResetHeader::Unknown;
            }
            let prev = last.filter(|p| prev_is_newest && !p.is_stale());
            header_for(read_back_hint(h, prev))
        };
        let cut = match &self.open {
            None => true,
            Some(o) => {
                o.app.enc()
                    != if h.is_float() {
                        ENCODING_FLOAT_HISTOGRAM
                    } else {
                        ENCODING_HISTOGRAM
                    }
                    || t.div_euclid(chunk_range) != o.min_t.div_euclid(chunk_range)
                    || (o.app.bytes().len() >= TARGET_BYTES_PER_CHUNK
                        && o.app.num_samples() >= MIN_SAMPLES_PER_CHUNK)
                    || !prev_is_newest
            }
        };
        let started = if cut {
            let mut app = HistApp::new_for(h);
            app.append(t, h)?;
            app.set_header(header(self.last.as_ref()));
            self.close_open();
            self.open = Some(OpenHist { app, min_t: t });
            true
        } else if let Some(o) = self.open.as_mut() {
            match o.app.append(t, h)? {
                None => false,
                Some(mut app) => {
                    app.set_header(header(self.last.as_ref()));
                    self.close_open();
                    self.open = Some(OpenHist { app, min_t: t });
                    true
                }
            }
        } else {
            false
        };
        self.last_t = t;
        self.last = Some(h.clone());
        Ok(started)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.open.is_none() && self.ooo.is_empty()
    }

    pub(crate) fn min_time(&self) -> Option<i64> {
        let in_order = self
            .closed
            .first()
            .map(|c| c.min_t)
            .or(self.open.as_ref().map(|o| o.min_t));
        match (in_order, self.ooo.first()) {
            (Some(a), Some(b)) => Some(a.min(b.0)),
            (a, b) => a.or(b.map(|x| x.0)),
        }
    }

    /// Stores an out-of-order histogram (judged by `SeriesData::fit_hist`). An existing
    /// sample at `t` wins (a retried write, already judged a duplicate).
    pub(crate) fn insert_ooo(&mut self, t: i64, h: &HistVal) {
        match self.ooo.last() {
            Some(l) if l.0 >= t => {
                if let Err(i) = self.ooo.binary_search_by_key(&t, |x| x.0) {
                    self.ooo.insert(i, (t, h.clone().for_ooo()));
                }
            }
            _ => self.ooo.push((t, h.clone().for_ooo())),
        }
    }

    /// The out-of-order histogram at `t`, if any.
    fn ooo_at(&self, t: i64) -> Option<&HistVal> {
        self.ooo
            .binary_search_by_key(&t, |x| x.0)
            .ok()
            .map(|i| &self.ooo[i].1)
    }

    /// Timestamps of out-of-order histograms older than `t`.
    pub(crate) fn ooo_times_before(&self, t: i64) -> impl Iterator<Item = i64> + '_ {
        let n = self.ooo.partition_point(|x| x.0 < t);
        self.ooo[..n].iter().map(|x| x.0)
    }

    /// Drops the out-of-order histograms whose timestamps are in `taken` (sorted; those
    /// persisted), keeping those at or after `t` and any that arrived since.
    pub(crate) fn drop_ooo_taken(&mut self, t: i64, taken: &[i64]) {
        if self.ooo.is_empty() || taken.is_empty() {
            return;
        }
        self.ooo
            .retain(|x| x.0 >= t || taken.binary_search(&x.0).is_err());
        if self.ooo.is_empty() {
            self.ooo = Vec::new();
        }
    }

    pub(crate) fn num_chunks(&self) -> usize {
        self.closed.len() + usize::from(self.open.is_some())
    }

    /// Chunks overlapping `[mint, maxt]`: closed ones shared, the open one copied, then the
    /// out-of-order histograms in range encoded into chunks (each reads back with its stored
    /// hint, see [`encode_chunks`]; after the in-order ones, which win a merge at an equal
    /// timestamp, as for floats).
    pub(crate) fn chunks(&self, mint: i64, maxt: i64, out: &mut Vec<QChunk>) {
        for c in &self.closed {
            if c.max_t >= mint && c.min_t <= maxt {
                out.push(QChunk {
                    seek: None,
                    min_t: c.min_t,
                    max_t: c.max_t,
                    enc: c.enc,
                    bytes: ChunkBytes::Heap(c.bytes.clone()),
                });
            }
        }
        if let Some(o) = &self.open {
            let max_t = o.app.last_t();
            if max_t >= mint && o.min_t <= maxt {
                out.push(QChunk {
                    seek: None,
                    min_t: o.min_t,
                    max_t,
                    enc: o.app.enc(),
                    bytes: ChunkBytes::Heap(Arc::from(o.app.bytes())),
                });
            }
        }
        let lo = self.ooo.partition_point(|x| x.0 < mint);
        let hi = self.ooo.partition_point(|x| x.0 <= maxt);
        if lo < hi {
            match encode_chunks(&self.ooo[lo..hi]) {
                Ok(cs) => out.extend(cs.into_iter().map(|(enc, min_t, max_t, b)| QChunk {
                    seek: None,
                    min_t,
                    max_t,
                    enc,
                    bytes: ChunkBytes::Heap(Arc::from(b)),
                })),
                // Validated before they were accepted: a bug, not bad input.
                Err(e) => tracing::error!(error = %e, "encoding out-of-order histograms"),
            }
        }
    }

    /// Whether a sample equal to `h` is stored at `t` (decodes the one chunk holding `t`).
    pub(crate) fn holds(&self, t: i64, h: &HistVal) -> bool {
        if let Some(o) = self.ooo_at(t) {
            return h.same_as_stored(o);
        }
        let find = |enc: u8, bytes: &[u8]| -> bool {
            let mut found = None;
            let _ = for_each_in_chunk(enc, bytes, |ct, v| {
                if ct >= t {
                    if ct == t {
                        found = Some(v);
                    }
                    return false;
                }
                true
            });
            found.is_some_and(|v| h.same_as_stored(&v))
        };
        let i = self.closed.partition_point(|c| c.max_t < t);
        if let Some(c) = self.closed.get(i)
            && c.min_t <= t
        {
            return find(c.enc, &c.bytes);
        }
        match &self.open {
            Some(o) if o.min_t <= t && t <= o.app.last_t() => find(o.app.enc(), o.app.bytes()),
            _ => false,
        }
    }

    /// Whether any histogram is stored at `t`.
    pub(crate) fn has_time(&self, t: i64) -> bool {
        if self.ooo_at(t).is_some() {
            return true;
        }
        let find = |enc: u8, bytes: &[u8]| -> bool {
            let mut found = false;
            let _ = for_each_in_chunk(enc, bytes, |ct, _| {
                found = ct == t;
                ct < t
            });
            found
        };
        let i = self.closed.partition_point(|c| c.max_t < t);
        if let Some(c) = self.closed.get(i)
            && c.min_t <= t
        {
            return find(c.enc, &c.bytes);
        }
        match &self.open {
            Some(o) if o.min_t <= t && t <= o.app.last_t() => find(o.app.enc(), o.app.bytes()),
            _ => false,
        }
    }

    /// Drops in-order chunks that end before `t` (out-of-order histograms go by
    /// [`HistData::drop_ooo_taken`]). Returns how many.
    pub(crate) fn truncate_before(&mut self, t: i64) -> usize {
        let before = self.closed.len();
        self.closed.retain(|c| c.max_t >= t);
        let mut removed = before - self.closed.len();
        if self.open.as_ref().is_some_and(|o| o.app.last_t() < t) {
            self.open = None;
            removed += 1;
        }
        removed
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.closed
            .iter()
            .map(|c| c.bytes.len() + 16)
            .sum::<usize>()
            + self.closed.capacity() * std::mem::size_of::<HeadChunk>()
            + self.open.as_ref().map_or(0, |o| o.app.bytes().len())
            + std::mem::size_of::<HistData>()
            + self.ooo.capacity() * std::mem::size_of::<(i64, HistVal)>()
            + self
                .ooo
                .iter()
                .map(|(_, h)| h.bucket_bytes())
                .sum::<usize>()
    }

    /// Its chunks as a checkpoint keeps them.
    pub(crate) fn snapshot(&self) -> HistSnapshot {
        HistSnapshot {
            last_t: self.last_t,
            closed: self.closed.clone(),
            open: self
                .open
                .as_ref()
                .map(|o| (o.app.enc(), o.min_t, o.app.bytes().to_vec())),
            ooo: self.ooo.clone(),
        }
    }

    /// Adopts a checkpointed histogram part (this one empty). The newest histogram is
    /// decoded from the newest chunk.
    pub(crate) fn adopt(&mut self, snap: HistSnapshot) -> Result<(), ChunkError> {
        self.closed = snap.closed;
        self.ooo = snap.ooo;
        self.open = match snap.open {
            Some((enc, min_t, bytes)) => Some(OpenHist {
                app: HistApp::from_bytes(enc, &bytes)?,
                min_t,
            }),
            None => None,
        };
        let newest = match (&self.open, self.closed.last()) {
            (Some(o), _) => Some((o.app.enc(), o.app.bytes())),
            (None, Some(c)) => Some((c.enc, &c.bytes[..])),
            (None, None) => None,
        };
        if let Some((enc, bytes)) = newest {
            let mut last = None;
            for_each_in_chunk(enc, bytes, |t, v| {
                last = Some((t, v));
                true
            })?;
            if let Some((t, v)) = last {
                self.last_t = t;
                self.last = Some(v);
            }
        }
        self.last_t = self.last_t.max(snap.last_t);
        Ok(())
    }
}

/// A series' histogram chunks as a checkpoint holds them (type 7 record, `wal.md`).
#[derive(Debug, Default, Clone)]
pub(crate) struct HistSnapshot {
    pub(crate) last_t: i64,
    pub(crate) closed: Vec<HeadChunk>,
    /// The open chunk: encoding, first sample's time, bytes.
    pub(crate) open: Option<(u8, i64, Vec<u8>)>,
    /// Out-of-order histograms (not in the type 7 record: a checkpoint logs them as type 8
    /// and 9 records after it).
    pub(crate) ooo: Vec<(i64, HistVal)>,
}

impl HistSnapshot {
    pub(crate) fn bounds(&self) -> Option<(i64, i64)> {
        let lo = self
            .closed
            .first()
            .map(|c| c.min_t)
            .or(self.open.as_ref().map(|o| o.1));
        let (olo, ohi) = (self.ooo.first().map(|x| x.0), self.ooo.last().map(|x| x.0));
        let lo = match (lo, olo) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let hi = match (has_in_order(self), ohi) {
            (true, Some(h)) => self.last_t.max(h),
            (true, None) => self.last_t,
            (false, h) => h?,
        };
        Some((lo, hi))
    }

    /// Every sample, in time order.
    pub(crate) fn samples(&self) -> Result<Vec<(i64, HistVal)>, ChunkError> {
        let mut out = Vec::new();
        for c in &self.closed {
            for_each_in_chunk(c.enc, &c.bytes, |t, v| {
                out.push((t, v));
                true
            })?;
        }
        if let Some((enc, _, b)) = &self.open {
            for_each_in_chunk(*enc, b, |t, v| {
                out.push((t, v));
                true
            })?;
        }
        Ok(out)
    }
}

/// Whether a snapshot holds in-order chunks.
fn has_in_order(s: &HistSnapshot) -> bool {
    !s.closed.is_empty() || s.open.is_some()
}

/// Calls `f` with each sample of a histogram chunk (as it reads back: hints from the chunk,
/// see the module docs) until `f` returns false.
pub(crate) fn for_each_in_chunk(
    enc: u8,
    bytes: &[u8],
    mut f: impl FnMut(i64, HistVal) -> bool,
) -> Result<(), ChunkError> {
    match enc {
        ENCODING_HISTOGRAM => {
            let mut it = HistogramIterator::new(bytes)?;
            let header = it.counter_reset_header();
            let mut first = true;
            while let Some((t, mut h)) = it.next_histogram()? {
                if first && h.sum.to_bits() != STALE_NAN_BITS {
                    h.counter_reset_hint = hint_for(header);
                }
                first = false;
                if !f(t, HistVal::Int(h)) {
                    break;
                }
            }
        }
        ENCODING_FLOAT_HISTOGRAM => {
            let mut it = FloatHistogramIterator::new(bytes)?;
            let header = it.counter_reset_header();
            let mut first = true;
            while let Some((t, mut h)) = it.next_histogram()? {
                if first && h.sum.to_bits() != STALE_NAN_BITS {
                    h.counter_reset_hint = hint_for(header);
                }
                first = false;
                if !f(t, HistVal::Float(h)) {
                    break;
                }
            }
        }
        _ => return Err(ChunkError::Corrupt("not a histogram chunk encoding")),
    }
    Ok(())
}

/// The samples of histogram chunks in `[mint, maxt]` in time order, once per timestamp:
/// decoded in sequence when the chunks do not overlap, else merged (at equal timestamps the
/// earliest chunk in `chunks` wins).
pub(crate) fn decode_chunks(
    chunks: &[QChunk],
    mint: i64,
    maxt: i64,
) -> Result<Vec<(i64, HistVal)>, ChunkError> {
    let mut sorted: Vec<(usize, &QChunk)> = chunks.iter().enumerate().collect();
    sorted.sort_by_key(|(i, c)| (c.min_t, *i));
    let clean = sorted.windows(2).all(|w| w[0].1.max_t < w[1].1.min_t);
    let mut all: Vec<(i64, usize, HistVal)> = Vec::new();
    for (i, c) in sorted {
        if c.max_t < mint || c.min_t > maxt {
            continue;
        }
        for_each_in_chunk(c.enc, c.bytes.as_slice(), |t, v| {
            if t > maxt {
                return false;
            }
            if t >= mint {
                all.push((t, i, v));
            }
            true
        })?;
    }
    if !clean {
        all.sort_by_key(|&(t, i, _)| (t, i));
        all.dedup_by_key(|x| x.0);
    }
    Ok(all.into_iter().map(|(t, _, v)| (t, v)).collect())
}

/// A chunk written by [`encode_chunks`]: encoding, first and last sample's time, bytes.
pub(crate) type EncodedChunk = (u8, i64, i64, Vec<u8>);

/// Encodes samples (time-ordered, as they read back) into histogram chunks: a change of
/// kind, the codec's cuts and the size rule start a chunk, whose header records the hint its
/// first sample read back with, so the new chunks read back as the samples did. A sample
/// whose hint a chunk's later samples cannot carry (`Unknown`, `CounterReset`: they read
/// back as `NotCounterReset` or `Gauge`) starts a chunk too; in chunks read back those are
/// chunk starts already, so only merged streams (out-of-order histograms, which read back
/// `Unknown`, or a histogram that follows a float) get extra chunks.
pub(crate) fn encode_chunks(samples: &[(i64, HistVal)]) -> Result<Vec<EncodedChunk>, ChunkError> {
    let mut out = Vec::new();
    let mut open: Option<OpenHist> = None;
    let finish = |o: OpenHist, out: &mut Vec<EncodedChunk>| {
        out.push((o.app.enc(), o.min_t, o.app.last_t(), o.app.bytes().to_vec()));
    };
    for (t, h) in samples {
        let header = header_for(h.hint());
        let cut = match &open {
            None => true,
            Some(o) => {
                o.app.enc()
                    != if h.is_float() {
                        ENCODING_FLOAT_HISTOGRAM
                    } else {
                        ENCODING_HISTOGRAM
                    }
                    || (o.app.bytes().len() >= TARGET_BYTES_PER_CHUNK
                        && o.app.num_samples() >= MIN_SAMPLES_PER_CHUNK)
                    || o.app.num_samples() == u16::MAX
                    || (!h.is_stale()
                        && !matches!(
                            h.hint(),
                            CounterResetHint::NotCounterReset | CounterResetHint::Gauge
                        ))
            }
        };
        if cut {
            let mut app = HistApp::new_for(h);
            app.append(*t, h)?;
            if !h.is_stale() {
                app.set_header(header);
            }
            if let Some(o) = open.take() {
                finish(o, &mut out);
            }
            open = Some(OpenHist { app, min_t: *t });
            continue;
        }
        if let Some(o) = open.as_mut()
            && let Some(mut app) = o.app.append(*t, h)?
        {
            if !h.is_stale() {
                app.set_header(header);
            }
            let prev = std::mem::replace(o, OpenHist { app, min_t: *t });
            finish(prev, &mut out);
        }
    }
    if let Some(o) = open {
        finish(o, &mut out);
    }
    Ok(out)
}

/// A histogram sample as the seam hands it out.
pub(crate) fn to_sample(t: i64, v: &HistVal) -> HistogramSample {
    HistogramSample {
        t,
        h: Arc::new(v.to_float()),
    }
}

fn put_spans(out: &mut Vec<u8>, spans: &[Span]) {
    put_uvarint(out, spans.len() as u64);
    for s in spans {
        put_varint(out, i64::from(s.offset));
        put_uvarint(out, u64::from(s.length));
    }
}

fn get_spans(d: &mut Decbuf<'_>) -> Result<Vec<Span>, DecodeError> {
    let n = d.uvarint_usize()?;
    let mut v = Vec::with_capacity(n.min(d.remaining()));
    for _ in 0..n {
        let off = i32::try_from(d.varint()?).map_err(|_| DecodeError("span offset"))?;
        let len = u32::try_from(d.uvarint()?).map_err(|_| DecodeError("span length"))?;
        v.push(Span::new(off, len));
    }
    Ok(v)
}

fn put_f64s(out: &mut Vec<u8>, v: &[f64]) {
    put_uvarint(out, v.len() as u64);
    for x in v {
        put_u64(out, x.to_bits());
    }
}

fn get_f64s(d: &mut Decbuf<'_>) -> Result<Vec<f64>, DecodeError> {
    let n = d.uvarint_usize()?;
    let mut v = Vec::with_capacity(n.min(d.remaining() / 8));
    for _ in 0..n {
        v.push(f64::from_bits(d.u64()?));
    }
    Ok(v)
}

/// Appends one histogram's WAL encoding (`wal.md`, record types 5 and 6).
pub(crate) fn encode_hist(out: &mut Vec<u8>, h: &HistVal) {
    match h {
        HistVal::Int(h) => {
            out.push(h.counter_reset_hint.to_proto() as u8);
            put_varint(out, i64::from(h.schema));
            put_u64(out, h.zero_threshold.to_bits());
            put_uvarint(out, h.zero_count);
            put_uvarint(out, h.count);
            put_u64(out, h.sum.to_bits());
            put_spans(out, &h.positive_spans);
            put_spans(out, &h.negative_spans);
            for b in [&h.positive_buckets, &h.negative_buckets] {
                put_uvarint(out, b.len() as u64);
                for &x in b.iter() {
                    put_varint(out, x);
                }
            }
            put_f64s(out, &h.custom_values);
        }
        HistVal::Float(h) => {
            out.push(h.counter_reset_hint.to_proto() as u8);
            put_varint(out, i64::from(h.schema));
            put_u64(out, h.zero_threshold.to_bits());
            put_u64(out, h.zero_count.to_bits());
            put_u64(out, h.count.to_bits());
            put_u64(out, h.sum.to_bits());
            put_spans(out, &h.positive_spans);
            put_spans(out, &h.negative_spans);
            put_f64s(out, &h.positive_buckets);
            put_f64s(out, &h.negative_buckets);
            put_f64s(out, &h.custom_values);
        }
    }
}

/// Decodes one histogram written by [`encode_hist`].
pub(crate) fn decode_hist(d: &mut Decbuf<'_>, float: bool) -> Result<HistVal, DecodeError> {
    let hint = d.u8()?;
    if hint > 3 {
        return Err(DecodeError("histogram counter reset hint"));
    }
    let hint = CounterResetHint::from_proto(i32::from(hint));
    let schema = i32::try_from(d.varint()?).map_err(|_| DecodeError("histogram schema"))?;
    let zero_threshold = f64::from_bits(d.u64()?);
    if float {
        let zero_count = f64::from_bits(d.u64()?);
        let count = f64::from_bits(d.u64()?);
        let sum = f64::from_bits(d.u64()?);
        let positive_spans = get_spans(d)?;
        let negative_spans = get_spans(d)?;
        let positive_buckets = get_f64s(d)?;
        let negative_buckets = get_f64s(d)?;
        let custom_values = get_f64s(d)?;
        Ok(HistVal::Float(FloatHistogram {
            counter_reset_hint: hint,
            schema,
            zero_threshold,
            zero_count,
            count,
            sum,
            positive_spans,
            negative_spans,
            positive_buckets,
            negative_buckets,
            custom_values,
        }))
    } else {
        let zero_count = d.uvarint()?;
        let count = d.uvarint()?;
        let sum = f64::from_bits(d.u64()?);
        let positive_spans = get_spans(d)?;
        let negative_spans = get_spans(d)?;
        let mut buckets = [Vec::new(), Vec::new()];
        for b in &mut buckets {
            let n = d.uvarint_usize()?;
            b.reserve(n.min(d.remaining()));
            for _ in 0..n {
                b.push(d.varint()?);
            }
        }
        let [positive_buckets, negative_buckets] = buckets;
        let custom_values = get_f64s(d)?;
        Ok(HistVal::Int(Histogram {
            counter_reset_hint: hint,
            schema,
            zero_threshold,
            zero_count,
            count,
            sum,
            positive_spans,
            negative_spans,
            positive_buckets,
            negative_buckets,
            custom_values,
        }))
    }
}

/// Builds a histogram samples record payload (type 5 for integer histograms, 6 for float
/// ones; one encoder per type).
#[derive(Debug, Default)]
pub(crate) struct HistSamplesEncoder {
    pub(crate) buf: Vec<u8>,
    base: Option<(u64, i64)>,
}

impl HistSamplesEncoder {
    pub(crate) fn push(&mut self, r: u64, t: i64, h: &HistVal) {
        let (br, bt) = match self.base {
            Some(b) => b,
            None => {
                put_u64(&mut self.buf, r);
                put_u64(&mut self.buf, t as u64);
                self.base = Some((r, t));
                (r, t)
            }
        };
        put_varint(&mut self.buf, r.wrapping_sub(br) as i64);
        put_varint(&mut self.buf, t.wrapping_sub(bt));
        encode_hist(&mut self.buf, h);
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.base = None;
    }
}

/// Decodes a histogram samples record payload.
pub(crate) fn decode_hist_samples(
    payload: &[u8],
    float: bool,
) -> Result<Vec<(u64, i64, HistVal)>, DecodeError> {
    let mut d = Decbuf::new(payload);
    let mut out = Vec::new();
    if d.remaining() == 0 {
        return Ok(out);
    }
    let br = d.u64()?;
    let bt = d.u64()? as i64;
    while d.remaining() > 0 {
        let r = br.wrapping_add(d.varint()? as u64);
        let t = bt.wrapping_add(d.varint()?);
        out.push((r, t, decode_hist(&mut d, float)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CounterResetHint::*;

    fn h(count: u64, hint: CounterResetHint) -> HistVal {
        HistVal::Int(Histogram {
            counter_reset_hint: hint,
            schema: 0,
            zero_threshold: 0.001,
            count,
            sum: count as f64,
            positive_spans: vec![Span::new(0, 1)],
            positive_buckets: vec![count as i64],
            ..Histogram::default()
        })
    }

    /// Re-encoding keeps every sample's hint, also where a merge put an `Unknown` (an
    /// out-of-order histogram) or `CounterReset` sample where the codec would append it.
    #[test]
    fn encoded_chunks_read_back_with_the_samples_hints() {
        let samples = vec![
            (10, h(1, Unknown)),
            (20, h(2, NotCounterReset)),
            (25, h(3, Unknown)),
            (30, h(4, NotCounterReset)),
            (40, h(5, CounterReset)),
            (50, h(6, NotCounterReset)),
            (60, h(7, Gauge)),
            (70, h(7, Gauge)),
            (80, HistVal::stale(false)),
            (90, h(1, Unknown)),
        ];
        let chunks = encode_chunks(&samples).expect("encode");
        let mut got = Vec::new();
        for (enc, _, _, bytes) in &chunks {
            for_each_in_chunk(*enc, bytes, |t, v| {
                got.push((t, v.is_stale(), v.hint()));
                true
            })
            .expect("decode");
        }
        let want: Vec<(i64, bool, CounterResetHint)> = samples
            .iter()
            .map(|(t, v)| (*t, v.is_stale(), v.hint()))
            .collect();
        let hints = |v: &[(i64, bool, CounterResetHint)]| -> Vec<(i64, Option<CounterResetHint>)> {
            v.iter().map(|&(t, s, h)| (t, (!s).then_some(h))).collect()
        };
        assert_eq!(hints(&got), hints(&want));
        // Extra chunks only where needed: 10-20, 25-30, 40-50, 60-70, 80, 90.
        assert_eq!(
            chunks.len(),
            6,
            "{:?}",
            chunks.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>()
        );
    }

    /// Out-of-order histograms are kept with hint `Unknown` (gauges `Gauge`), sorted, one
    /// per timestamp, and read back so.
    #[test]
    fn out_of_order_histograms_read_back_unknown() {
        let mut d = HistData::new();
        d.insert_ooo(30, &h(3, NotCounterReset));
        d.insert_ooo(10, &h(1, CounterReset));
        d.insert_ooo(20, &h(2, Gauge));
        d.insert_ooo(20, &h(9, Unknown));
        let mut cs = Vec::new();
        d.chunks(i64::MIN, i64::MAX, &mut cs);
        let got: Vec<(i64, CounterResetHint, f64)> = decode_chunks(&cs, i64::MIN, i64::MAX)
            .expect("decode")
            .iter()
            .map(|(t, v)| (*t, v.hint(), v.to_float().count))
            .collect();
        assert_eq!(
            got,
            vec![(10, Unknown, 1.0), (20, Gauge, 2.0), (30, Unknown, 3.0)]
        );
        assert!(d.has_time(20) && d.holds(20, &h(2, Unknown)) && !d.holds(20, &h(9, Unknown)));
        d.drop_ooo_taken(25, &[10, 20, 30]);
        assert_eq!(d.ooo.iter().map(|x| x.0).collect::<Vec<_>>(), vec![30]);
        assert_eq!(d.min_time(), Some(30));
    }
}
