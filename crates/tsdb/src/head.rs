//! The head: the in-memory block that takes writes.
//!
//! Series live in shards keyed by their label hash (one series per hash, collisions in a
//! side map, resolved by comparing labels) and, for lookups from postings and the WAL, in
//! shards keyed by their ref. Each series owns its sealed chunks (dense when smaller, else
//! XOR; exact-size `Arc<[u8]>`, shared with queries without copying), the open XOR chunk it
//! appends to, and a sorted buffer of out-of-order samples (native histograms: the same, in
//! `SeriesData::hist`). Label strings are interned, so identical names and values share one
//! allocation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use m3query_chunkenc::{
    DenseEncoder, ENCODING_DENSE, ENCODING_XOR, TARGET_SAMPLES_PER_CHUNK, XorAppender, XorIterator,
};
use m3query_model::{LabelPairs, Labels, Sample};
use m3query_storage::Error as StorageError;
use parking_lot::{Mutex, RwLock};

use crate::Result;
use crate::chunks::{ChunkBytes, QChunk};
use crate::hist::{HistData, HistSnapshot, HistVal};
use crate::keycache::KeyCache;
use crate::matchers::PostingsIndex;
use crate::symbols::Symbols;

const SHARDS: usize = 64;

/// Hash maps keyed by integers we produce (label hashes, refs): no DoS concern, so a fast
/// hasher instead of SipHash.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Series by label hash. A hash almost always names one series, kept in `series` without a
/// per-series allocation; the rare other series with the same hash (a collision) go to
/// `conflicts`, as in Prometheus's `stripeSeries`.
#[derive(Debug, Default)]
pub(crate) struct HashMapShard {
    series: FastMap<u64, Arc<MemSeries>>,
    conflicts: FastMap<u64, Vec<Arc<MemSeries>>>,
}

impl HashMapShard {
    fn get(&self, hash: u64, key: SeriesKey<'_>) -> Option<&Arc<MemSeries>> {
        match self.series.get(&hash) {
            Some(s) if key.matches(&s.labels) => Some(s),
            Some(_) => self
                .conflicts
                .get(&hash)
                .and_then(|v| v.iter().find(|s| key.matches(&s.labels))),
            None => None,
        }
    }

    fn insert(&mut self, hash: u64, s: Arc<MemSeries>) {
        match self.series.entry(hash) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(s);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.conflicts.entry(hash).or_default().push(s);
            }
        }
    }

    /// Keeps the series for which `keep` is true; a conflict moves up when the main entry
    /// of its hash goes.
    fn retain(&mut self, mut keep: impl FnMut(&Arc<MemSeries>) -> bool) {
        self.conflicts.retain(|_, v| {
            v.retain(&mut keep);
            !v.is_empty()
        });
        let conflicts = &mut self.conflicts;
        let mut promote = Vec::new();
        self.series.retain(|h, s| {
            if keep(s) {
                return true;
            }
            if conflicts.contains_key(h) {
                promote.push(*h);
            }
            false
        });
        for h in promote {
            if let Some(v) = self.conflicts.get_mut(&h)
                && let Some(s) = v.pop()
            {
                if v.is_empty() {
                    self.conflicts.remove(&h);
                }
                self.series.insert(h, s);
            }
        }
    }

    /// Whether this shard holds `s` itself (not just a series with its labels) under `hash`.
    fn holds(&self, hash: u64, s: &Arc<MemSeries>) -> bool {
        match self.series.get(&hash) {
            Some(m) if Arc::ptr_eq(m, s) => true,
            Some(_) => self
                .conflicts
                .get(&hash)
                .is_some_and(|v| v.iter().any(|m| Arc::ptr_eq(m, s))),
            None => false,
        }
    }

    /// Removes the series with ref `r` under `hash`; a conflict moves up if it was the main
    /// entry. Returns whether it was there.
    fn remove(&mut self, hash: u64, r: u64) -> bool {
        if self.series.get(&hash).is_some_and(|s| s.r == r) {
            self.series.remove(&hash);
            if let Some(v) = self.conflicts.get_mut(&hash)
                && let Some(s) = v.pop()
            {
                if v.is_empty() {
                    self.conflicts.remove(&hash);
                }
                self.series.insert(hash, s);
            }
            return true;
        }
        let Some(v) = self.conflicts.get_mut(&hash) else {
            return false;
        };
        let before = v.len();
        v.retain(|s| s.r != r);
        let removed = v.len() != before;
        if v.is_empty() {
            self.conflicts.remove(&hash);
        }
        removed
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.series.len() + self.conflicts.values().map(Vec::len).sum::<usize>()
    }
}

type HashShard = RwLock<HashMapShard>;

/// A series' identity as a writer has it: a built label set, or borrowed pairs straight
/// from a request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SeriesKey<'a> {
    Labels(&'a Labels),
    Pairs(LabelPairs<'a>),
}

impl SeriesKey<'_> {
    #[inline]
    pub(crate) fn matches(&self, l: &Labels) -> bool {
        match self {
            SeriesKey::Labels(k) => *k == l,
            SeriesKey::Pairs(p) => p.eq_labels(l),
        }
    }
}
/// A shard of series by ref.
type RefShard = RwLock<FastMap<u64, Arc<MemSeries>>>;

/// A closed head chunk.
#[derive(Clone, Debug)]
pub(crate) struct HeadChunk {
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    /// `ENCODING_DENSE` when that was smaller than the XOR the chunk was appended in.
    pub(crate) enc: u8,
    pub(crate) bytes: Arc<[u8]>,
}

/// Re-encodes a full XOR chunk for keeping: the open chunk takes appends in XOR, but a
/// closed chunk is immutable, so it is stored in the dense encoding when that is smaller
/// (scraped data: ~2.5x smaller, and the head holds up to 3 h of every series).
fn seal_chunk(xor: &[u8]) -> (u8, Arc<[u8]>) {
    thread_local! {
        static SCRATCH: std::cell::RefCell<(DenseEncoder, Vec<Sample>, Vec<u8>)> =
            std::cell::RefCell::new((DenseEncoder::new(), Vec::new(), Vec::new()));
    }
    SCRATCH.with_borrow_mut(|(enc, samples, out)| {
        samples.clear();
        out.clear();
        let ok = XorIterator::new(xor)
            .and_then(|mut it| it.append_range(i64::MIN, i64::MAX, samples))
            .and_then(|_| enc.encode(samples, out));
        if ok.is_ok() && out.len() < xor.len() {
            (ENCODING_DENSE, Arc::from(&out[..]))
        } else {
            (ENCODING_XOR, Arc::from(xor))
        }
    })
}

/// Asks the CPU to start loading the cache lines of `len` bytes at `p`, to be read soon.
/// Only a hint: `p` is never dereferenced, so any address will do.
#[inline(always)]
fn prefetch(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut off = 0;
        while off < len {
            // SAFETY: SSE is part of the x86_64 baseline, and a prefetch reads nothing into
            // the program: it cannot fault, whatever the address.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p.wrapping_add(off).cast(),
                );
            }
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// A series' samples as a checkpoint holds them (see `SeriesData::snapshot`).
#[derive(Debug, Default)]
pub(crate) struct SeriesSnapshot {
    pub(crate) closed: Vec<HeadChunk>,
    /// The open XOR chunk: its first sample's time and bytes.
    pub(crate) open: Option<(i64, Vec<u8>)>,
    pub(crate) ooo: Vec<Sample>,
    pub(crate) max_t: i64,
    pub(crate) last_v: u64,
    /// The histogram chunks (a type 7 record), if the series holds histograms.
    pub(crate) hist: Option<HistSnapshot>,
}

impl SeriesSnapshot {
    /// Oldest and newest sample times, if it holds any.
    fn bounds(&self) -> Option<(i64, i64)> {
        let hb = self.hist.as_ref().and_then(HistSnapshot::bounds);
        let lo = [
            self.closed.first().map(|c| c.min_t),
            self.open.as_ref().map(|o| o.0),
            self.ooo.first().map(|s| s.t),
            hb.map(|b| b.0),
        ]
        .into_iter()
        .flatten()
        .min()?;
        let hi = [
            (self.max_t != i64::MIN).then_some(self.max_t),
            self.closed.last().map(|c| c.max_t),
            self.ooo.last().map(|s| s.t),
            hb.map(|b| b.1),
        ]
        .into_iter()
        .flatten()
        .max()?;
        Some((lo, hi))
    }
}

#[derive(Debug)]
struct OpenChunk {
    app: XorAppender,
    min_t: i64,
    /// `min_t`'s chunk-range window (`min_t.div_euclid(chunk_range)`), kept so that an
    /// append checks its window without two 64-bit divisions (most of an append's cost
    /// outside the encoding, when replay appends millions of samples).
    window: i64,
}

impl OpenChunk {
    /// Whether `t` is in the chunk's window: `t.div_euclid(chunk_range) == window`.
    #[inline]
    fn in_window(&self, t: i64, chunk_range: i64) -> bool {
        if t < self.min_t {
            return t.div_euclid(chunk_range) == self.window;
        }
        // t >= min_t >= the window's start: in it unless a whole range past that start
        // (in i128, where neither the start nor the difference can overflow).
        let start = i128::from(self.window) * i128::from(chunk_range);
        i128::from(t) - start < i128::from(chunk_range)
    }
}

/// A series' samples. Guarded by the series' mutex.
#[derive(Debug)]
pub(crate) struct SeriesData {
    closed: Vec<HeadChunk>,
    open: Option<OpenChunk>,
    /// Out-of-order samples, sorted by time, unique timestamps.
    ooo: Vec<Sample>,
    /// Newest in-order sample of either kind (`i64::MIN`: none yet) and, when it is a
    /// float, its value bits.
    pub(crate) max_t: i64,
    pub(crate) last_v: u64,
    /// Native histogram chunks; boxed so float-only series pay one pointer.
    pub(crate) hist: Option<Box<HistData>>,
}

/// How a sample fits a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    InOrder,
    OutOfOrder,
    /// Same timestamp and value bits as a stored sample: accepted, nothing to store. The
    /// commit still logs it, so the retry of a write whose acknowledgement failed (its
    /// fsync failed after the samples were applied, or the response was lost) is as
    /// durable as its own acknowledgement says.
    Duplicate,
}

/// The time bounds appends are checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) min_valid_t: i64,
    /// Oldest out-of-order sample accepted, when an out-of-order window is configured.
    pub(crate) ooo_min_t: Option<i64>,
}

impl SeriesData {
    fn new() -> Self {
        SeriesData {
            closed: Vec::new(),
            open: None,
            ooo: Vec::new(),
            max_t: i64::MIN,
            last_v: 0,
            hist: None,
        }
    }

    /// Whether the series' newest sample is a histogram.
    #[inline]
    pub(crate) fn newest_is_hist(&self) -> bool {
        self.hist
            .as_ref()
            .is_some_and(|h| h.last_t == self.max_t && self.max_t != i64::MIN)
    }

    /// The series' newest sample when it is a histogram.
    pub(crate) fn newest_hist(&self) -> Option<&HistVal> {
        if self.newest_is_hist() {
            self.hist.as_ref().and_then(|h| h.last.as_ref())
        } else {
            None
        }
    }

    /// Where histogram `h` at `t` fits given the newest in-order sample (`max_t`; `newest`
    /// is it when it is a histogram). Prometheus's rules and errors: within the
    /// out-of-order window an older histogram is out of order, unless the head holds a
    /// sample at `t` (the same histogram: a retried write, accepted; anything else:
    /// refused, as one time order per series holds one sample per timestamp).
    pub(crate) fn fit_hist(
        &self,
        max_t: i64,
        newest: Option<&HistVal>,
        t: i64,
        h: &HistVal,
        b: Bounds,
    ) -> Result<Fit, StorageError> {
        if max_t != i64::MIN && t == max_t {
            return match newest {
                Some(n) if h.same_as_stored(n) => Ok(Fit::Duplicate),
                _ => Err(StorageError::DuplicateSampleForTimestamp),
            };
        }
        if t > max_t && t >= b.min_valid_t {
            return Ok(Fit::InOrder);
        }
        // A retried write of a stored histogram (see `fit`).
        if self.hist.as_ref().is_some_and(|d| d.holds(t, h)) {
            return Ok(Fit::Duplicate);
        }
        match b.ooo_min_t {
            Some(oldest) if t >= oldest => {
                if self.hist.as_ref().is_some_and(|d| d.has_time(t))
                    || self.ooo.binary_search_by_key(&t, |s| s.t).is_ok()
                    || self.float_at(t).is_some()
                {
                    Err(StorageError::DuplicateSampleForTimestamp)
                } else {
                    Ok(Fit::OutOfOrder)
                }
            }
            Some(_) => Err(StorageError::TooOldSample),
            None if t < b.min_valid_t => Err(StorageError::OutOfBounds),
            None => Err(StorageError::OutOfOrderSample),
        }
    }

    /// Stores a histogram judged by [`SeriesData::fit_hist`]. Returns whether a chunk was
    /// started (the float chunk a kind change closes is not one; out-of-order histograms
    /// are kept apart, see [`HistData::insert_ooo`]).
    pub(crate) fn store_hist(
        &mut self,
        fit: Fit,
        t: i64,
        h: &HistVal,
        chunk_range: i64,
        seal: bool,
    ) -> bool {
        match fit {
            Fit::InOrder => {}
            Fit::Duplicate => return false,
            Fit::OutOfOrder => {
                self.hist
                    .get_or_insert_with(|| Box::new(HistData::new()))
                    .insert_ooo(t, h);
                return false;
            }
        }
        let newest = self.newest_is_hist();
        // A change of kind cuts the float chunk, as in Prometheus's head.
        self.close_open(seal);
        let d = self.hist.get_or_insert_with(|| Box::new(HistData::new()));
        let started = match d.append(t, h, newest, chunk_range) {
            Ok(s) => s,
            Err(e) => {
                // Validated before it was accepted: a bug, not bad input.
                tracing::error!(error = %e, t, "appending a histogram to its chunk");
                return false;
            }
        };
        self.max_t = t;
        started
    }

    /// Replays a logged histogram (no bounds, as [`SeriesData::replay`]): appended when
    /// newer than the series' newest; an older one is out of order unless a sample is
    /// stored at its time (a logged retry of a stored sample, or a refused collision).
    fn replay_hist(&mut self, t: i64, h: &HistVal, chunk_range: i64) -> bool {
        if self.max_t == i64::MIN || t > self.max_t {
            return self.store_hist(Fit::InOrder, t, h, chunk_range, false);
        }
        if t != self.max_t
            && !self.hist.as_ref().is_some_and(|d| d.has_time(t))
            && self.ooo.binary_search_by_key(&t, |s| s.t).is_err()
            && self.float_at(t).is_none()
        {
            self.store_hist(Fit::OutOfOrder, t, h, chunk_range, false);
        }
        false
    }

    /// Where `(t, v)` fits given the newest in-order sample `(max_t, last_v)` (the stored one
    /// or one pending in the caller's transaction), Prometheus's rules and errors.
    pub(crate) fn fit(
        &self,
        max_t: i64,
        last_v: u64,
        newest_hist: bool,
        t: i64,
        vb: u64,
        b: Bounds,
    ) -> Result<Fit, StorageError> {
        if max_t != i64::MIN && t == max_t {
            return if vb == last_v && !newest_hist {
                Ok(Fit::Duplicate)
            } else {
                Err(StorageError::DuplicateSampleForTimestamp)
            };
        }
        if t > max_t && t >= b.min_valid_t {
            return Ok(Fit::InOrder);
        }
        // A sample already stored with the same value bits: a client retrying a write that
        // was applied but not acknowledged (its WAL fsync failed, or the response was lost)
        // must not be refused for it. Only refusals pay for this lookup.
        if b.ooo_min_t.is_none_or(|oldest| t < oldest) && self.holds(t, vb) {
            return Ok(Fit::Duplicate);
        }
        match b.ooo_min_t {
            Some(oldest) if t >= oldest => match self.ooo.binary_search_by_key(&t, |s| s.t) {
                Ok(i) if self.ooo[i].v.to_bits() == vb => Ok(Fit::Duplicate),
                Ok(_) => Err(StorageError::DuplicateSampleForTimestamp),
                // One time order per series: no float where a histogram is.
                Err(_) if self.hist.as_ref().is_some_and(|h| h.has_time(t)) => {
                    Err(StorageError::DuplicateSampleForTimestamp)
                }
                Err(_) => Ok(Fit::OutOfOrder),
            },
            Some(_) => Err(StorageError::TooOldSample),
            None if t < b.min_valid_t => Err(StorageError::OutOfBounds),
            None => Err(StorageError::OutOfOrderSample),
        }
    }

    /// Whether an in-order sample `(t, value bits vb)` is stored: decodes at most the one
    /// chunk whose time range holds `t`.
    fn holds(&self, t: i64, vb: u64) -> bool {
        self.float_at(t) == Some(vb)
    }

    /// The value bits of the in-order float stored at `t`, if any: decodes at most the one
    /// chunk whose time range holds `t`.
    fn float_at(&self, t: i64) -> Option<u64> {
        // A sealed (dense) chunk steps over the samples before `t` without building them.
        let find = |mut it: m3query_chunkenc::ChunkIterator<'_>| match it.next_from(t) {
            Ok(Some((ct, v))) => (ct == t).then_some(v.to_bits()),
            _ => None,
        };
        let i = self.closed.partition_point(|c| c.max_t < t);
        if let Some(c) = self.closed.get(i)
            && c.min_t <= t
        {
            return m3query_chunkenc::ChunkIterator::new(c.enc, &c.bytes[..])
                .ok()
                .and_then(find);
        }
        match &self.open {
            Some(o) if o.min_t <= t && !o.app.is_empty() && t <= o.app.last_t() => {
                m3query_chunkenc::ChunkIterator::new(ENCODING_XOR, o.app.bytes())
                    .ok()
                    .and_then(find)
            }
            _ => None,
        }
    }

    /// Stores a sample already judged by [`SeriesData::fit`]. Returns whether a chunk was cut.
    pub(crate) fn store(&mut self, fit: Fit, t: i64, v: f64, chunk_range: i64) -> bool {
        match fit {
            Fit::Duplicate => false,
            Fit::InOrder => self.append_in_order(t, v, chunk_range, true),
            Fit::OutOfOrder => {
                if let Err(i) = self.ooo.binary_search_by_key(&t, |s| s.t) {
                    self.ooo.insert(i, Sample { t, v });
                }
                false
            }
        }
    }

    /// Appends an in-order sample, cutting a new chunk when the open one is full or the
    /// sample is in another chunk-range window. `seal`: a closed chunk is re-encoded dense
    /// now (else it stays XOR until [`Head::seal_closed`]).
    fn append_in_order(&mut self, t: i64, v: f64, chunk_range: i64, seal: bool) -> bool {
        let cut = match &self.open {
            None => true,
            Some(o) => {
                o.app.num_samples() >= TARGET_SAMPLES_PER_CHUNK || !o.in_window(t, chunk_range)
            }
        };
        if cut {
            self.close_open(seal);
            // After a histogram (a change of kind), its chunk is cut too.
            if let Some(h) = self.hist.as_mut() {
                h.close_open();
            }
            self.open = Some(OpenChunk {
                app: XorAppender::new(),
                min_t: t,
                window: t.div_euclid(chunk_range),
            });
        }
        if let Some(o) = self.open.as_mut() {
            // Cannot be full: chunks are cut at TARGET_SAMPLES_PER_CHUNK.
            let _ = o.app.append(t, v);
        }
        self.max_t = t;
        self.last_v = v.to_bits();
        cut
    }

    fn close_open(&mut self, seal: bool) {
        if let Some(o) = self.open.take()
            && !o.app.is_empty()
        {
            let max_t = o.app.last_t();
            let (enc, bytes) = if seal {
                seal_chunk(o.app.bytes())
            } else {
                (ENCODING_XOR, Arc::from(o.app.bytes()))
            };
            // Exact capacity: a chunk is sealed every ~30 min per series, so a realloc then
            // is cheap, while doubling would leave up to half of every series' list unused.
            self.closed.reserve_exact(1);
            self.closed.push(HeadChunk {
                min_t: o.min_t,
                max_t,
                enc,
                bytes,
            });
        }
    }

    /// Its samples as a checkpoint keeps them: closed chunks shared, the open one copied.
    pub(crate) fn snapshot(&self) -> SeriesSnapshot {
        SeriesSnapshot {
            closed: self.closed.clone(),
            open: self
                .open
                .as_ref()
                .filter(|o| !o.app.is_empty())
                .map(|o| (o.min_t, o.app.bytes().to_vec())),
            ooo: self.ooo.clone(),
            max_t: self.max_t,
            last_v: self.last_v,
            hist: self
                .hist
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.snapshot()),
        }
    }

    /// Restores a checkpointed series: an empty one adopts the closed chunks as they are and
    /// the open one too where it can (see `adopt_open`), else re-appends the open chunk's
    /// samples; a series holding samples already gets every sample replayed.
    fn restore(&mut self, snap: SeriesSnapshot, chunk_range: i64) -> Result<()> {
        let adopt = self.is_empty() && self.max_t == i64::MIN;
        if !adopt {
            for c in &snap.closed {
                let mut it = m3query_chunkenc::ChunkIterator::new(c.enc, &c.bytes[..])?;
                while let Some((t, v)) = it.next_sample()? {
                    self.replay(t, v, chunk_range);
                }
            }
        } else {
            // The newest closed sample is the series' newest unless the open chunk follows
            // (its replay below moves these on).
            if let Some(c) = snap.closed.last() {
                self.max_t = c.max_t;
                self.last_v = snap.last_v;
            }
            self.closed = snap.closed;
        }
        if let Some((_, bytes)) = &snap.open
            && !(adopt && self.adopt_open(bytes, chunk_range))
        {
            let mut it = XorIterator::new(bytes)?;
            while let Some((t, v)) = it.next_sample()? {
                self.replay(t, v, chunk_range);
            }
        }
        for s in snap.ooo {
            self.replay(s.t, s.v, chunk_range);
        }
        if snap.max_t > self.max_t {
            self.max_t = snap.max_t;
            self.last_v = snap.last_v;
        }
        if let Some(h) = snap.hist {
            self.restore_hist(h, chunk_range)?;
        }
        Ok(())
    }

    /// Takes a checkpointed open chunk as the open chunk, its appender resumed on the bytes
    /// instead of fed every sample again, when replaying its samples would have built just
    /// that chunk: they follow the series' newest sample and each other, fit one chunk and
    /// one chunk-range window. Returns false (changing nothing) otherwise.
    fn adopt_open(&mut self, bytes: &[u8], chunk_range: i64) -> bool {
        if self.open.is_some() || self.hist.as_ref().is_some_and(|h| !h.is_empty()) {
            return false;
        }
        let (mut first, mut prev, mut n, mut ordered) = (None, self.max_t, 0usize, true);
        let resumed = XorAppender::resume(bytes, |t, _| {
            first.get_or_insert(t);
            // As `replay`: in order after no sample, or after an older one.
            ordered &= prev == i64::MIN || t > prev;
            prev = t;
            n += 1;
        });
        let (Ok(app), Some(min_t)) = (resumed, first) else {
            return false;
        };
        let window = min_t.div_euclid(chunk_range);
        // Increasing times share a window when the first and the last do.
        if !ordered || n > TARGET_SAMPLES_PER_CHUNK || prev.div_euclid(chunk_range) != window {
            return false;
        }
        self.max_t = prev;
        self.last_v = app.last_v_bits();
        self.open = Some(OpenChunk { app, min_t, window });
        true
    }

    /// Restores checkpointed histogram chunks: adopted as they are by a series without
    /// histograms, else replayed sample by sample.
    pub(crate) fn restore_hist(&mut self, mut snap: HistSnapshot, chunk_range: i64) -> Result<()> {
        if self.hist.as_ref().is_none_or(|h| h.is_empty()) {
            let mut d = HistData::new();
            d.adopt(snap)?;
            if d.last_t > self.max_t {
                self.max_t = d.last_t;
            }
            self.hist = Some(Box::new(d));
        } else {
            let ooo = std::mem::take(&mut snap.ooo);
            for (t, h) in snap.samples()?.into_iter().chain(ooo) {
                self.replay_hist(t, &h, chunk_range);
            }
        }
        Ok(())
    }

    /// Where the next in-order sample's bits go: the open chunk's last byte.
    fn append_point(&self) -> Option<*const u8> {
        let b = self.open.as_ref()?.app.bytes();
        Some(b.as_ptr().wrapping_add(b.len().saturating_sub(1)))
    }

    /// Replays a logged sample: no bounds, anything older than the newest goes out of order.
    /// Chunks it closes stay XOR: sealing them waits until the database is open.
    fn replay(&mut self, t: i64, v: f64, chunk_range: i64) {
        if self.max_t == i64::MIN || t > self.max_t {
            self.append_in_order(t, v, chunk_range, false);
        } else if t != self.max_t
            && !self.holds(t, v.to_bits())
            && let Err(i) = self.ooo.binary_search_by_key(&t, |s| s.t)
        {
            // Not a logged retry of a stored sample (see `Fit::Duplicate`): out of order.
            self.ooo.insert(i, Sample { t, v });
        }
    }

    /// Oldest sample held, if any.
    fn min_time(&self) -> Option<i64> {
        let a = self
            .closed
            .first()
            .map(|c| c.min_t)
            .or(self.open.as_ref().map(|o| o.min_t));
        let b = self.ooo.first().map(|s| s.t);
        let h = self.hist.as_ref().and_then(|h| h.min_time());
        [a, b, h].into_iter().flatten().min()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.closed.is_empty()
            && self.open.is_none()
            && self.ooo.is_empty()
            && self.hist.as_ref().is_none_or(|h| h.is_empty())
    }

    /// Chunks overlapping `[mint, maxt]`, in time order: closed ones shared, the open one
    /// copied, out-of-order samples in range encoded into one extra chunk.
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
            if !o.app.is_empty() && max_t >= mint && o.min_t <= maxt {
                // Copied, since appends go on; from the last seek point before the range
                // when there is one, so the query neither copies nor decodes older samples.
                let b = o.app.bytes();
                let (bytes, seek) = match o.app.seek_before(mint) {
                    Some(at) => {
                        let rest = b.get(at.start_byte()..).unwrap_or_default();
                        let mut v = Vec::with_capacity(2 + rest.len());
                        v.extend_from_slice(&b[..2]);
                        v.extend_from_slice(rest);
                        (Arc::from(v), Some(at.rebase()))
                    }
                    None => (Arc::from(b), None),
                };
                out.push(QChunk {
                    seek,
                    min_t: o.min_t,
                    max_t,
                    enc: ENCODING_XOR,
                    bytes: ChunkBytes::Heap(bytes),
                });
            }
        }
        let lo = self.ooo.partition_point(|s| s.t < mint);
        let hi = self.ooo.partition_point(|s| s.t <= maxt);
        for part in self.ooo[lo..hi].chunks(TARGET_SAMPLES_PER_CHUNK) {
            let mut app = XorAppender::new();
            for s in part {
                let _ = app.append(s.t, s.v);
            }
            if let (Some(first), Some(last)) = (part.first(), part.last()) {
                out.push(QChunk {
                    seek: None,
                    min_t: first.t,
                    max_t: last.t,
                    enc: ENCODING_XOR,
                    bytes: ChunkBytes::Heap(Arc::from(app.into_bytes())),
                });
            }
        }
        if let Some(h) = &self.hist {
            h.chunks(mint, maxt, out);
        }
    }

    /// Timestamps of out-of-order samples (floats and histograms) older than `t`, sorted.
    pub(crate) fn ooo_times_before(&self, t: i64) -> Vec<i64> {
        let n = self.ooo.partition_point(|s| s.t < t);
        let mut v: Vec<i64> = self.ooo[..n].iter().map(|s| s.t).collect();
        if let Some(h) = &self.hist
            && !h.ooo.is_empty()
        {
            v.extend(h.ooo_times_before(t));
            // One sample per timestamp across kinds: sorting keeps them unique.
            v.sort_unstable();
        }
        v
    }

    /// Drops in-order chunks that end before `t`, and the out-of-order samples whose
    /// timestamps are in `taken` (those persisted; others may have arrived since).
    fn truncate_persisted(&mut self, t: i64, taken: &[i64]) -> usize {
        if let Some(h) = self.hist.as_mut() {
            h.drop_ooo_taken(t, taken);
        }
        let removed = self.truncate_in_order(t);
        if !taken.is_empty() {
            self.ooo
                .retain(|s| s.t >= t || taken.binary_search(&s.t).is_err());
            if self.ooo.is_empty() {
                self.ooo = Vec::new();
            }
        }
        removed
    }

    /// Drops everything older than `t`. Returns the number of chunks removed.
    #[cfg(test)]
    fn truncate_before(&mut self, t: i64) -> usize {
        let removed = self.truncate_in_order(t);
        let cut = self.ooo.partition_point(|s| s.t < t);
        self.ooo.drain(..cut);
        removed
    }

    fn truncate_in_order(&mut self, t: i64) -> usize {
        let before = self.closed.len();
        self.closed.retain(|c| c.max_t >= t);
        let mut removed = before - self.closed.len();
        if self
            .open
            .as_ref()
            .is_some_and(|o| !o.app.is_empty() && o.app.last_t() < t)
        {
            self.open = None;
            removed += 1;
        }
        if let Some(h) = self.hist.as_mut() {
            removed += h.truncate_before(t);
            if h.is_empty() {
                self.hist = None;
            }
        }
        removed
    }

    pub(crate) fn num_chunks(&self) -> usize {
        self.closed.len()
            + usize::from(self.open.is_some())
            + self.hist.as_ref().map_or(0, |h| h.num_chunks())
    }

    fn heap_bytes(&self) -> usize {
        self.closed
            .iter()
            .map(|c| c.bytes.len() + 16)
            .sum::<usize>()
            + self.closed.capacity() * std::mem::size_of::<HeadChunk>()
            + self.open.as_ref().map_or(0, |o| o.app.allocated_bytes())
            + self.ooo.capacity() * std::mem::size_of::<Sample>()
            + self.hist_heap_bytes()
    }

    /// Heap bytes of its histogram chunks.
    pub(crate) fn hist_heap_bytes(&self) -> usize {
        self.hist.as_ref().map_or(0, |h| h.heap_bytes())
    }
}

/// One series in the head.
#[derive(Debug)]
pub(crate) struct MemSeries {
    pub(crate) r: u64,
    pub(crate) labels: Labels,
    /// Appenders holding this series; it is not garbage-collected while non-zero. Raised
    /// under the shard lock (see `Head::get_or_create`), lowered anywhere.
    pub(crate) pending: AtomicU32,
    pub(crate) data: Mutex<SeriesData>,
}

impl MemSeries {
    pub(crate) fn unpin(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Postings for the head: label name → value → sorted refs.
#[derive(Debug, Default)]
pub(crate) struct MemPostings {
    pub(crate) m: FastMap<Arc<str>, BTreeMap<Arc<str>, Vec<u64>>>,
    all: Vec<u64>,
}

/// A series being replayed, with the samples replay has given it so far. One replay worker
/// owns it, so applying a sample takes no lock and touches only the worker's own table;
/// [`Head::finish_replay`] moves the samples into the series.
#[derive(Debug)]
pub(crate) struct Replaying {
    data: SeriesData,
    series: Arc<MemSeries>,
}

impl Replaying {
    pub(crate) fn new(series: Arc<MemSeries>) -> Self {
        Replaying {
            data: SeriesData::new(),
            series,
        }
    }

    pub(crate) fn series(&self) -> &MemSeries {
        &self.series
    }

    /// Starts loading the entry into the caches (see [`Head::replay_batch`]).
    #[inline]
    fn prefetch(&self) {
        prefetch(
            (self as *const Replaying).cast(),
            std::mem::size_of::<Replaying>(),
        );
    }
}

fn insert_sorted(v: &mut Vec<u64>, r: u64) {
    match v.last() {
        Some(&last) if last >= r => {
            if let Err(i) = v.binary_search(&r) {
                v.insert(i, r);
            }
        }
        _ => v.push(r),
    }
}

impl MemPostings {
    fn add(&mut self, r: u64, labels: &Labels) {
        for l in labels {
            let list = self
                .m
                .entry(l.name.clone())
                .or_default()
                .entry(l.value.clone())
                .or_default();
            insert_sorted(list, r);
        }
        insert_sorted(&mut self.all, r);
    }

    fn delete(&mut self, dead: &HashSet<u64>, labels: &[Labels]) {
        let mut touched: HashSet<(Arc<str>, Arc<str>)> = HashSet::new();
        for ls in labels {
            for l in ls {
                touched.insert((l.name.clone(), l.value.clone()));
            }
        }
        for (n, v) in touched {
            let Some(values) = self.m.get_mut(&n) else {
                continue;
            };
            if let Some(list) = values.get_mut(&v) {
                list.retain(|r| !dead.contains(r));
                if list.is_empty() {
                    values.remove(&v);
                } else {
                    list.shrink_to_fit();
                }
            }
            if values.is_empty() {
                self.m.remove(&n);
            }
        }
        self.all.retain(|r| !dead.contains(r));
    }

    pub(crate) fn label_names(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self.m.keys().cloned().collect();
        v.sort();
        v
    }

    /// The list for `name="value"` (empty when there is none).
    fn list(&self, name: &str, value: &str) -> &[u64] {
        self.m
            .get(name)
            .and_then(|vs| vs.get(value))
            .map_or(&[], Vec::as_slice)
    }
}

impl PostingsIndex for MemPostings {
    type Ref = u64;
    fn postings(&self, name: &str, value: &str) -> Result<Vec<u64>> {
        Ok(self.list(name, value).to_vec())
    }
    fn postings_len(&self, name: &str, value: &str) -> Result<usize> {
        Ok(self.list(name, value).len())
    }
    fn intersect_postings(&self, name: &str, value: &str, acc: &[u64]) -> Result<Vec<u64>> {
        Ok(crate::postings::intersect(acc, self.list(name, value)))
    }
    fn all_postings(&self) -> Result<Vec<u64>> {
        Ok(self.all.clone())
    }
    fn label_values(&self, name: &str) -> Result<Vec<Arc<str>>> {
        Ok(self
            .m
            .get(name)
            .map(|vs| vs.keys().cloned().collect())
            .unwrap_or_default())
    }
    fn label_values_with_prefix(&self, name: &str, prefix: &str) -> Result<Vec<Arc<str>>> {
        let Some(vs) = self.m.get(name) else {
            return Ok(Vec::new());
        };
        Ok(vs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
}

/// What a head truncation did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TruncateStats {
    pub(crate) series_removed: usize,
    pub(crate) chunks_removed: usize,
}

/// The in-memory head block.
#[derive(Debug)]
pub(crate) struct Head {
    by_hash: Box<[HashShard]>,
    by_ref: Box<[RefShard]>,
    pub(crate) postings: RwLock<MemPostings>,
    pub(crate) symbols: Symbols,
    next_ref: AtomicU64,
    min_t: AtomicI64,
    max_t: AtomicI64,
    min_valid_t: AtomicI64,
    num_series: AtomicU64,
    pub(crate) num_chunks: AtomicI64,
    /// Width of the aligned windows chunks may not cross (the block range).
    pub(crate) chunk_range_ms: i64,
    pub(crate) ooo_window_ms: i64,
    /// Series by the raw label bytes remote-write senders name them with.
    pub(crate) keys: KeyCache,
}

impl Head {
    pub(crate) fn new(chunk_range_ms: i64, ooo_window_ms: i64, min_valid_t: i64) -> Head {
        Head {
            by_hash: (0..SHARDS)
                .map(|_| RwLock::new(HashMapShard::default()))
                .collect(),
            by_ref: (0..SHARDS)
                .map(|_| RwLock::new(FastMap::default()))
                .collect(),
            postings: RwLock::new(MemPostings::default()),
            symbols: Symbols::default(),
            next_ref: AtomicU64::new(1),
            min_t: AtomicI64::new(i64::MAX),
            max_t: AtomicI64::new(i64::MIN),
            min_valid_t: AtomicI64::new(min_valid_t),
            num_series: AtomicU64::new(0),
            num_chunks: AtomicI64::new(0),
            chunk_range_ms,
            ooo_window_ms,
            keys: KeyCache::default(),
        }
    }

    pub(crate) fn min_time(&self) -> i64 {
        self.min_t.load(Ordering::Acquire)
    }

    pub(crate) fn max_time(&self) -> i64 {
        self.max_t.load(Ordering::Acquire)
    }

    pub(crate) fn min_valid_time(&self) -> i64 {
        self.min_valid_t.load(Ordering::Acquire)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.min_time() == i64::MAX
    }

    pub(crate) fn num_series(&self) -> u64 {
        self.num_series.load(Ordering::Relaxed)
    }

    /// The bounds appends are checked against now.
    pub(crate) fn bounds(&self) -> Bounds {
        Bounds {
            min_valid_t: self.min_valid_time(),
            ooo_min_t: (self.ooo_window_ms > 0).then(|| {
                let m = self.max_time();
                if m == i64::MIN {
                    i64::MIN
                } else {
                    m.saturating_sub(self.ooo_window_ms)
                }
            }),
        }
    }

    /// Records that samples in `[lo, hi]` were stored.
    pub(crate) fn observe(&self, lo: i64, hi: i64) {
        self.min_t.fetch_min(lo, Ordering::AcqRel);
        self.max_t.fetch_max(hi, Ordering::AcqRel);
    }

    fn hash_shard(&self, h: u64) -> &HashShard {
        &self.by_hash[(h as usize) % SHARDS]
    }

    fn ref_shard(&self, r: u64) -> &RefShard {
        &self.by_ref[(r as usize) % SHARDS]
    }

    pub(crate) fn series(&self, r: u64) -> Option<Arc<MemSeries>> {
        self.ref_shard(r).read().get(&r).cloned()
    }

    /// The series `key` names, created if missing. With `pin`, its pending count is raised
    /// (under the shard lock, so garbage collection cannot race it). `on_create` runs for a
    /// new series before anyone else can see it (the WAL logs it there).
    pub(crate) fn get_or_create(
        &self,
        key: SeriesKey<'_>,
        hash: u64,
        pin: bool,
        on_create: impl FnOnce(&MemSeries),
    ) -> (Arc<MemSeries>, bool) {
        let shard = self.hash_shard(hash);
        {
            let map = shard.read();
            if let Some(s) = map.get(hash, key) {
                if pin {
                    s.pending.fetch_add(1, Ordering::AcqRel);
                }
                return (s.clone(), false);
            }
        }
        let mut map = shard.write();
        if let Some(s) = map.get(hash, key) {
            if pin {
                s.pending.fetch_add(1, Ordering::AcqRel);
            }
            return (s.clone(), false);
        }
        let r = self.next_ref.fetch_add(1, Ordering::Relaxed);
        let s = self.insert_series(&mut map, hash, r, key, u32::from(pin));
        on_create(&s);
        (s, true)
    }

    /// Pins `s` (label hash `hash`) for an appender if it is still the head's: a series
    /// found by other means than a shard lookup (the key cache) may have been dropped. Under
    /// the shard lock, as in [`Head::get_or_create`], so garbage collection cannot race it.
    pub(crate) fn pin_if_live(&self, s: &Arc<MemSeries>, hash: u64) -> bool {
        let map = self.hash_shard(hash).read();
        if !map.holds(hash, s) {
            return false;
        }
        s.pending.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Whether `s` (label hash `hash`) is still the head's.
    pub(crate) fn is_live(&self, s: &Arc<MemSeries>, hash: u64) -> bool {
        self.hash_shard(hash).read().holds(hash, s)
    }

    fn insert_series(
        &self,
        map: &mut HashMapShard,
        hash: u64,
        r: u64,
        key: SeriesKey<'_>,
        pending: u32,
    ) -> Arc<MemSeries> {
        let labels = match key {
            SeriesKey::Labels(l) => self.symbols.intern_labels(l),
            SeriesKey::Pairs(p) => self.symbols.intern_pairs(p),
        };
        let s = Arc::new(MemSeries {
            r,
            labels,
            pending: AtomicU32::new(pending),
            data: Mutex::new(SeriesData::new()),
        });
        map.insert(hash, s.clone());
        self.ref_shard(r).write().insert(r, s.clone());
        self.postings.write().add(r, &s.labels);
        self.num_series.fetch_add(1, Ordering::Relaxed);
        s
    }

    /// Replay: the series with `labels`, created with ref `r` if missing, and whether it
    /// was created.
    pub(crate) fn replay_series(&self, r: u64, labels: &Labels) -> (Arc<MemSeries>, bool) {
        self.replay_series_key(r, SeriesKey::Labels(labels), labels.stable_hash())
    }

    /// [`Head::replay_series`] for a key and its label hash (pairs borrowed from the WAL
    /// record are interned without building a label set first).
    pub(crate) fn replay_series_key(
        &self,
        r: u64,
        key: SeriesKey<'_>,
        hash: u64,
    ) -> (Arc<MemSeries>, bool) {
        // New refs must stay above every logged one, even refs mapped onto another series.
        self.next_ref.fetch_max(r + 1, Ordering::Relaxed);
        let mut map = self.hash_shard(hash).write();
        if let Some(s) = map.get(hash, key) {
            return (s.clone(), false);
        }
        (self.insert_series(&mut map, hash, r, key, 0), true)
    }

    /// Replay: stores a batch of logged samples of series named by their index in `table`,
    /// with the shared counters (chunks, time range) updated once per batch, since replay
    /// workers would otherwise contend on them for every sample.
    ///
    /// Consecutive samples name unrelated series, so each touches memory no cache holds
    /// (its table entry, its open chunk's end). The entries a few samples ahead are
    /// prefetched, then (an entry now cached) the end of its open chunk, where its sample's
    /// bits will go, so the loads of several samples overlap instead of queueing.
    pub(crate) fn replay_batch(&self, table: &mut [Replaying], batch: &[(u32, i64, f64)]) {
        // Distances, in samples, at which each stage runs ahead of the append.
        const ENTRY_AHEAD: usize = 16;
        const CHUNK_AHEAD: usize = 8;
        let (mut lo, mut hi, mut chunks) = (i64::MAX, i64::MIN, 0i64);
        for (k, &(i, t, v)) in batch.iter().enumerate() {
            if let Some(&(j, _, _)) = batch.get(k + ENTRY_AHEAD)
                && let Some(e) = table.get(j as usize)
            {
                e.prefetch();
            }
            if let Some(&(j, _, _)) = batch.get(k + CHUNK_AHEAD)
                && let Some(p) = table.get(j as usize).and_then(|e| e.data.append_point())
            {
                prefetch(p, 1);
            }
            let Some(e) = table.get_mut(i as usize) else {
                continue;
            };
            let before = e.data.num_chunks() as i64;
            e.data.replay(t, v, self.chunk_range_ms);
            chunks += e.data.num_chunks() as i64 - before;
            lo = lo.min(t);
            hi = hi.max(t);
        }
        if chunks != 0 {
            self.num_chunks.fetch_add(chunks, Ordering::Relaxed);
        }
        if lo <= hi {
            self.observe(lo, hi);
        }
    }

    /// Replay: stores logged histograms, in WAL order per series.
    pub(crate) fn replay_hists(&self, table: &mut [Replaying], batch: &[(u32, i64, HistVal)]) {
        let (mut lo, mut hi, mut chunks) = (i64::MAX, i64::MIN, 0i64);
        for (i, t, h) in batch {
            let Some(e) = table.get_mut(*i as usize) else {
                continue;
            };
            let before = e.data.num_chunks() as i64;
            e.data.replay_hist(*t, h, self.chunk_range_ms);
            chunks += e.data.num_chunks() as i64 - before;
            lo = lo.min(*t);
            hi = hi.max(*t);
        }
        if chunks != 0 {
            self.num_chunks.fetch_add(chunks, Ordering::Relaxed);
        }
        if lo <= hi {
            self.observe(lo, hi);
        }
    }

    /// Replay: restores a checkpointed series' histogram chunks (a type 7 record).
    pub(crate) fn restore_hist_series(&self, e: &mut Replaying, snap: HistSnapshot) -> Result<()> {
        let bounds = snap.bounds();
        let before = e.data.num_chunks() as i64;
        let res = e.data.restore_hist(snap, self.chunk_range_ms);
        let added = e.data.num_chunks() as i64 - before;
        self.num_chunks.fetch_add(added, Ordering::Relaxed);
        if let Some((lo, hi)) = bounds {
            self.observe(lo, hi);
        }
        res
    }

    /// Replay: restores a checkpointed series (see `SeriesData::restore`).
    pub(crate) fn restore_series(&self, e: &mut Replaying, snap: SeriesSnapshot) -> Result<()> {
        let bounds = snap.bounds();
        let before = e.data.num_chunks() as i64;
        let res = e.data.restore(snap, self.chunk_range_ms);
        let added = e.data.num_chunks() as i64 - before;
        self.num_chunks.fetch_add(added, Ordering::Relaxed);
        if let Some((lo, hi)) = bounds {
            self.observe(lo, hi);
        }
        res
    }

    /// Ends a replay worker's part: moves each series' replayed samples into it. A series
    /// is in one worker's table once, and nothing else writes to it during replay, so it
    /// is still empty; should it not be (a bug), its samples are kept and the replayed
    /// ones appended as a replay would.
    pub(crate) fn finish_replay(&self, table: Vec<Replaying>) {
        for e in table {
            let mut d = e.series.data.lock();
            if d.is_empty() && d.max_t == i64::MIN {
                *d = e.data;
            } else {
                tracing::error!(series = %e.series.labels, "a replayed series already held samples");
                let before = d.num_chunks() as i64;
                if let Err(err) = d.restore(e.data.snapshot(), self.chunk_range_ms) {
                    tracing::error!(series = %e.series.labels, error = %err,
                        "merging a replayed series");
                }
                let added = d.num_chunks() as i64 - before;
                self.num_chunks
                    .fetch_add(added - e.data.num_chunks() as i64, Ordering::Relaxed);
            }
        }
    }

    /// Seals closed XOR chunks (those replay left unsealed) into the dense encoding where
    /// that is smaller, one series at a time. Returns how many were re-encoded.
    pub(crate) fn seal_closed(&self) -> usize {
        let mut n = 0;
        for s in self.all_series() {
            let mut d = s.data.lock();
            for c in d.closed.iter_mut().filter(|c| c.enc == ENCODING_XOR) {
                let (enc, bytes) = seal_chunk(&c.bytes);
                if enc != ENCODING_XOR {
                    c.enc = enc;
                    c.bytes = bytes;
                    n += 1;
                }
            }
        }
        n
    }

    /// Removes `s` if it holds no samples and no appender holds it: a series created by a
    /// transaction that failed or had every sample refused must not stay visible (in label
    /// lookups, series counts) as if that write had happened.
    pub(crate) fn remove_if_unused(&self, s: &MemSeries) {
        let unused = || s.pending.load(Ordering::Acquire) == 0 && s.data.lock().is_empty();
        if !unused() {
            return;
        }
        let hash = s.labels.stable_hash();
        {
            let mut map = self.hash_shard(hash).write();
            // Pins are raised under the shard lock (`get_or_create`): none can appear now.
            if !unused() || !map.remove(hash, s.r) {
                return;
            }
        }
        self.ref_shard(s.r).write().remove(&s.r);
        self.postings
            .write()
            .delete(&HashSet::from([s.r]), std::slice::from_ref(&s.labels));
        self.num_series.fetch_sub(1, Ordering::Relaxed);
    }

    /// After replay: drops series without samples (logged when created by a transaction
    /// that then failed, rolled back or was cut short by a crash).
    pub(crate) fn remove_empty_series(&self) -> usize {
        let empty: Vec<Arc<MemSeries>> = self
            .all_series()
            .into_iter()
            .filter(|s| s.data.lock().is_empty())
            .collect();
        for s in &empty {
            self.remove_if_unused(s);
        }
        empty.len()
    }

    /// Every series ref, for snapshots.
    pub(crate) fn all_series(&self) -> Vec<Arc<MemSeries>> {
        let mut out = Vec::with_capacity(self.num_series() as usize);
        for s in self.by_ref.iter() {
            out.extend(s.read().values().cloned());
        }
        out.sort_by_key(|s| s.r);
        out
    }

    /// From now on, in-order samples older than `t` are out of bounds.
    pub(crate) fn raise_min_valid_time(&self, t: i64) {
        self.min_valid_t.fetch_max(t, Ordering::AcqRel);
    }

    /// Drops persisted data older than `t` (in-order chunks ending before it, and the
    /// out-of-order samples listed per series ref in `taken`), raises the minimum valid time
    /// to `t`, and removes series left without data (unless an appender holds them).
    pub(crate) fn truncate_persisted(
        &self,
        t: i64,
        taken: &HashMap<u64, Vec<i64>>,
    ) -> TruncateStats {
        self.raise_min_valid_time(t);
        let mut stats = TruncateStats::default();
        let mut dead = HashSet::new();
        let mut dead_labels = Vec::new();
        let mut new_min = i64::MAX;
        // Concurrent appends record their times into the fresh value; the scan adds the rest.
        self.min_t.store(i64::MAX, Ordering::Release);
        for shard in self.by_hash.iter() {
            let mut map = shard.write();
            map.retain(|s| {
                let mut d = s.data.lock();
                let tk = taken.get(&s.r).map(Vec::as_slice).unwrap_or(&[]);
                stats.chunks_removed += d.truncate_persisted(t, tk);
                if d.is_empty() && s.pending.load(Ordering::Acquire) == 0 {
                    dead.insert(s.r);
                    dead_labels.push(s.labels.clone());
                    false
                } else {
                    if let Some(m) = d.min_time() {
                        new_min = new_min.min(m);
                    }
                    true
                }
            });
        }
        for r in &dead {
            self.ref_shard(*r).write().remove(r);
        }
        if !dead.is_empty() {
            // Before the symbols' collection: an entry holds its series' labels.
            self.keys.retain(|s| !dead.contains(&s.r));
        }
        if !dead.is_empty() {
            self.postings.write().delete(&dead, &dead_labels);
        }
        stats.series_removed = dead.len();
        self.num_series
            .fetch_sub(dead.len() as u64, Ordering::Relaxed);
        self.num_chunks
            .fetch_sub(stats.chunks_removed as i64, Ordering::Relaxed);
        drop(dead_labels);
        self.symbols.gc();
        self.min_t.fetch_min(new_min, Ordering::AcqRel);
        stats
    }

    /// Approximate heap bytes held by sample data, and the part of it in histogram chunks.
    pub(crate) fn chunk_bytes(&self) -> (usize, usize) {
        let (mut n, mut h) = (0, 0);
        for s in self.by_ref.iter() {
            for m in s.read().values() {
                let d = m.data.lock();
                n += d.heap_bytes();
                h += d.hist_heap_bytes();
            }
        }
        (n, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::merge_chunks;

    /// Two equality matchers: the longer list is intersected in place.
    #[test]
    fn mem_postings_intersect_equal_matchers() {
        let mut p = MemPostings::default();
        p.add(0, &Labels::from_pairs([("job", "a"), ("i", "a")]));
        p.add(1, &Labels::from_pairs([("job", "a"), ("i", "b")]));
        p.add(2, &Labels::from_pairs([("job", "b"), ("i", "b")]));
        let ms = vec![
            m3query_model::Matcher::new(m3query_model::MatchOp::Equal, "job", "a").expect("m"),
            m3query_model::Matcher::new(m3query_model::MatchOp::Equal, "i", "b").expect("m"),
        ];
        let got = crate::matchers::postings_for_matchers(&p, &ms).expect("select");
        assert_eq!(got, vec![1]);
    }

    proptest::proptest! {
        // Cheap cases; two equality matchers on labels both set take a few hundred to meet.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The head's postings (lengths, in-place intersections) select what a naive scan of
        /// the same series does.
        #[test]
        fn mem_postings_select_as_a_naive_scan(
            sets in crate::matchers::tests::label_sets(),
            ms in proptest::collection::vec(crate::matchers::tests::matcher(), 0..4),
        ) {
            let mut p = MemPostings::default();
            for (i, ls) in sets.iter().enumerate() {
                p.add(i as u64, &ls.clone());
            }
            let naive = crate::matchers::tests::NaiveIndex(sets.clone());
            let want: Vec<u64> = crate::matchers::postings_for_matchers(&naive, &ms)
                .expect("naive")
                .into_iter()
                .map(u64::from)
                .collect();
            let got = crate::matchers::postings_for_matchers(&p, &ms).expect("head");
            proptest::prop_assert_eq!(got, want, "matchers {:?}", ms);
        }
    }

    fn b(min_valid_t: i64, ooo: Option<i64>) -> Bounds {
        Bounds {
            min_valid_t,
            ooo_min_t: ooo,
        }
    }

    fn samples_of(s: &MemSeries) -> Vec<(i64, f64)> {
        let mut cs = Vec::new();
        s.data.lock().chunks(i64::MIN, i64::MAX, &mut cs);
        merge_chunks(&cs, i64::MIN, i64::MAX)
            .expect("decode")
            .iter()
            .map(|x| (x.t, x.v))
            .collect()
    }

    /// Replay builds a series' samples apart and moves them in at the end; a series that
    /// holds samples by then (two table entries for one series: never built so, but
    /// possible through a bug) keeps them and gets the replayed ones too.
    #[test]
    fn finish_replay_moves_samples_in_and_merges_with_held_ones() {
        let head = Head::new(7_200_000, 0, i64::MIN);
        let (a, created) = head.replay_series(1, &Labels::from_pairs([("s", "a")]));
        assert!(created);
        let (b, _) = head.replay_series(2, &Labels::from_pairs([("s", "b")]));
        let mut table = vec![Replaying::new(a.clone()), Replaying::new(b.clone())];
        head.replay_batch(
            &mut table,
            &[(0, 1000, 1.0), (1, 1000, 5.0), (0, 2000, 2.0)],
        );
        let mut other = vec![Replaying::new(b.clone())];
        head.replay_batch(&mut other, &[(0, 500, 4.0), (0, 3000, 6.0)]);
        assert!(samples_of(&a).is_empty(), "nothing moves in before the end");
        head.finish_replay(table);
        assert_eq!(samples_of(&a), vec![(1000, 1.0), (2000, 2.0)]);
        assert_eq!(samples_of(&b), vec![(1000, 5.0)]);
        head.finish_replay(other);
        assert_eq!(samples_of(&b), vec![(500, 4.0), (1000, 5.0), (3000, 6.0)]);
        assert_eq!(
            head.num_chunks.load(Ordering::Relaxed),
            a.data.lock().num_chunks() as i64 + b.data.lock().num_chunks() as i64
        );
    }

    /// A checkpointed open chunk is taken as it is (appender resumed, seek points and all)
    /// when replaying it would build the same chunk, and replayed sample by sample when not.
    #[test]
    fn restore_adopts_the_open_chunk_replay_would_build() {
        let r = 7_200_000;
        let mut src = SeriesData::new();
        // A closed chunk of 120 and an open one of 100 samples (seek points at 30, 60, 90).
        for i in 0..220 {
            src.append_in_order(i * 1000, (i % 13) as f64 * 0.5, r, true);
        }
        let mut d = SeriesData::new();
        d.restore(src.snapshot(), r).expect("restore");
        let open = |x: &SeriesData| {
            let o = x.open.as_ref().expect("open chunk");
            (
                o.app.bytes().to_vec(),
                o.app.seeks().copied().collect::<Vec<_>>(),
                o.min_t,
                o.window,
            )
        };
        assert_eq!(open(&d), open(&src));
        assert_eq!(open(&d).1.len(), 3);
        assert_eq!((d.max_t, d.last_v), (src.max_t, src.last_v));
        assert_eq!(d.num_chunks(), 2);
        for i in 220..260 {
            src.append_in_order(i * 1000, 1.0, r, true);
            d.append_in_order(i * 1000, 1.0, r, true);
        }
        assert_eq!(open(&d), open(&src));

        // An open chunk going back in time (a hand-made checkpoint) is replayed: the
        // older sample goes out of order, as it always did.
        let mut x = XorAppender::new();
        for (t, v) in [(5000, 1.0), (4000, 2.0), (6000, 3.0)] {
            x.append(t, v).expect("append");
        }
        let snap = SeriesSnapshot {
            open: Some((5000, x.bytes().to_vec())),
            max_t: 6000,
            last_v: 3.0f64.to_bits(),
            ..SeriesSnapshot::default()
        };
        let mut d = SeriesData::new();
        d.restore(snap, r).expect("restore");
        assert_eq!(d.ooo_times_before(i64::MAX), vec![4000]);
        assert_eq!(d.open.as_ref().map(|o| o.app.num_samples()), Some(2));
        assert_eq!(d.max_t, 6000);
    }

    /// The window check without divisions agrees with the divisions, at the extremes too.
    #[test]
    fn open_chunk_window_check_matches_division() {
        let ranges = [1, 7, 7_200_000, i64::MAX / 3, i64::MAX];
        let times = [
            i64::MIN,
            i64::MIN + 1,
            -7_200_001,
            -7_200_000,
            -1,
            0,
            1,
            7_199_999,
            7_200_000,
            i64::MAX - 1,
            i64::MAX,
        ];
        for r in ranges {
            for min_t in times {
                let o = OpenChunk {
                    app: XorAppender::new(),
                    min_t,
                    window: min_t.div_euclid(r),
                };
                for t in times {
                    assert_eq!(
                        o.in_window(t, r),
                        t.div_euclid(r) == min_t.div_euclid(r),
                        "t={t} min_t={min_t} r={r}"
                    );
                }
            }
        }
    }

    #[test]
    fn fit_follows_prometheus_rules() {
        let mut d = SeriesData::new();
        let none = b(i64::MIN, None);
        // An empty series takes any timestamp.
        assert!(matches!(
            d.fit(d.max_t, d.last_v, false, -5_000_000, 0, none),
            Ok(Fit::InOrder)
        ));
        d.store(Fit::InOrder, 100, 1.0, 7_200_000);
        assert!(matches!(
            d.fit(d.max_t, d.last_v, false, 100, 1f64.to_bits(), none),
            Ok(Fit::Duplicate)
        ));
        assert!(matches!(
            d.fit(d.max_t, d.last_v, false, 100, 2f64.to_bits(), none),
            Err(StorageError::DuplicateSampleForTimestamp)
        ));
        assert!(matches!(
            d.fit(d.max_t, d.last_v, false, 50, 0, none),
            Err(StorageError::OutOfOrderSample)
        ));
        assert!(matches!(
            d.fit(d.max_t, d.last_v, false, 150, 0, b(200, None)),
            Err(StorageError::OutOfBounds)
        ));
        assert!(matches!(
            d.fit(d.max_t, d.last_v, false, 50, 0, b(i64::MIN, Some(40))),
            Ok(Fit::OutOfOrder)
        ));
        assert!(matches!(
            d.fit(d.max_t, d.last_v, false, 30, 0, b(i64::MIN, Some(40))),
            Err(StorageError::TooOldSample)
        ));
        d.store(Fit::OutOfOrder, 50, 3.0, 7_200_000);
        assert!(matches!(
            d.fit(
                d.max_t,
                d.last_v,
                false,
                50,
                3f64.to_bits(),
                b(i64::MIN, Some(40))
            ),
            Ok(Fit::Duplicate)
        ));
        let mut cs = Vec::new();
        d.chunks(i64::MIN, i64::MAX, &mut cs);
        let s = merge_chunks(&cs, i64::MIN, i64::MAX).expect("valid");
        assert_eq!(s, vec![Sample::new(50, 3.0), Sample::new(100, 1.0)]);
    }

    #[test]
    fn sealed_chunks_keep_every_bit() {
        let special = [
            m3query_model::STALE_NAN,
            f64::NAN,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.1 + 0.2,
        ];
        let mut d = SeriesData::new();
        let mut want = Vec::new();
        for i in 0..250i64 {
            let v = if i % 17 == 3 {
                special[(i as usize / 17) % special.len()]
            } else {
                (i * 3) as f64 / 4.0
            };
            d.store(Fit::InOrder, i * 15_000 + i % 7, v, i64::MAX);
            want.push((i * 15_000 + i % 7, v.to_bits()));
        }
        let mut all = Vec::new();
        d.chunks(i64::MIN, i64::MAX, &mut all);
        assert_eq!(all[0].enc, ENCODING_DENSE);
        let got: Vec<(i64, u64)> = merge_chunks(&all, i64::MIN, i64::MAX)
            .expect("decode")
            .iter()
            .map(|s| (s.t, s.v.to_bits()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn hash_collisions_go_to_conflicts_and_move_up() {
        let mk = |r: u64, v: &str| {
            Arc::new(MemSeries {
                r,
                labels: Labels::from_pairs([("a", v)]),
                pending: AtomicU32::new(0),
                data: Mutex::new(SeriesData::new()),
            })
        };
        let mut m = HashMapShard::default();
        // Three series forced onto one hash, one on another.
        for (r, v) in [(1, "x"), (2, "y"), (3, "z")] {
            m.insert(7, mk(r, v));
        }
        m.insert(8, mk(4, "w"));
        assert_eq!(m.len(), 4);
        let get = |m: &HashMapShard, h: u64, v: &str| {
            let l = Labels::from_pairs([("a", v)]);
            let pairs = [("a", v)];
            let by_pairs = m
                .get(h, SeriesKey::Pairs(LabelPairs::new(&pairs).expect("valid")))
                .map(|s| s.r);
            assert_eq!(m.get(h, SeriesKey::Labels(&l)).map(|s| s.r), by_pairs);
            by_pairs
        };
        assert_eq!(get(&m, 7, "x"), Some(1));
        assert_eq!(get(&m, 7, "y"), Some(2));
        assert_eq!(get(&m, 7, "z"), Some(3));
        assert_eq!(get(&m, 7, "w"), None);
        assert_eq!(get(&m, 8, "w"), Some(4));
        // Dropping the main entry of hash 7 promotes a conflict; the others stay reachable.
        m.retain(|s| s.r != 1);
        assert_eq!(m.len(), 3);
        assert_eq!(get(&m, 7, "x"), None);
        assert_eq!(get(&m, 7, "y"), Some(2));
        assert_eq!(get(&m, 7, "z"), Some(3));
        m.retain(|s| s.r == 3 || s.r == 4);
        assert_eq!(
            (get(&m, 7, "z"), get(&m, 8, "w"), m.len()),
            (Some(3), Some(4), 2)
        );
        assert!(m.conflicts.is_empty());
    }

    #[test]
    fn float_at_finds_samples_in_sealed_and_open_chunks() {
        let mut d = SeriesData::new();
        for i in 0..300 {
            d.store(Fit::InOrder, i * 10, i as f64 * 0.5, 1_000_000);
        }
        for i in 0..300 {
            assert_eq!(
                d.float_at(i * 10),
                Some((i as f64 * 0.5).to_bits()),
                "at {i}"
            );
            assert_eq!(d.float_at(i * 10 + 3), None, "after {i}");
        }
        assert_eq!(d.float_at(-1), None);
    }

    #[test]
    fn chunks_cut_at_120_and_at_range_boundary() {
        let mut d = SeriesData::new();
        for i in 0..300 {
            d.store(Fit::InOrder, i * 10, i as f64, 1000);
        }
        // 100 samples per 1000 ms window; never 120 in one window.
        assert_eq!(d.num_chunks(), 3);
        let mut d = SeriesData::new();
        for i in 0..300 {
            d.store(Fit::InOrder, i, i as f64, 1_000_000);
        }
        assert_eq!(d.num_chunks(), 3); // 120 + 120 + 60
        let mut cs = Vec::new();
        d.chunks(100, 130, &mut cs);
        assert_eq!(cs.len(), 2);
        // Sealed chunks are kept dense; the open one is XOR.
        let mut all = Vec::new();
        d.chunks(i64::MIN, i64::MAX, &mut all);
        let encs: Vec<u8> = all.iter().map(|c| c.enc).collect();
        assert_eq!(encs, vec![ENCODING_DENSE, ENCODING_DENSE, ENCODING_XOR]);
        let got = merge_chunks(&all, i64::MIN, i64::MAX).expect("decode");
        assert_eq!(
            got,
            (0..300)
                .map(|i| Sample::new(i, i as f64))
                .collect::<Vec<_>>()
        );
        assert_eq!(d.truncate_before(240), 2);
        assert_eq!(d.min_time(), Some(240));
    }
}
