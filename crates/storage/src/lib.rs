//! The seam between m3query's query layer and its stores.
//!
//! Everything that holds series implements these traits: the embedded TSDB, a remote-read
//! client, the in-memory store used by tests ([`memory::MemStorage`]) and the fan-out over
//! several of them ([`merge::MergeQueryable`]). The PromQL engine and the HTTP handlers see only
//! `dyn Queryable` and `dyn Appendable`, never a store's insides.
//!
//! The shape follows Prometheus's `storage/interface.go`:
//! [`Queryable`] → [`Querier`] (a read view over `[mint, maxt]`) → [`SeriesSet`] →
//! [`Series`] → [`SampleIterator`]. Hints ([`SelectHints`]) let a store skip work; warnings
//! ([`Warnings`]) travel beside results all the way to the JSON response; a [`Context`] carries
//! cancellation and the deadline into long selects.
//!
//! Times are `i64` milliseconds since the Unix epoch, and every range here is inclusive at both
//! ends unless a name says otherwise.

mod context;
pub mod dedup;
mod error;
pub mod memory;
pub mod merge;
mod warnings;

pub use context::{Context, StoreReads};
pub use error::{Error, Result};
pub use warnings::Warnings;

use std::future::Future;
use std::pin::Pin;

use m3query_model::{
    FloatHistogram, Histogram, LabelPairs, Labels, Matcher, STALE_NAN, Sample, is_stale_nan,
};

/// One native histogram sample: a timestamp (ms) and a histogram with float counts.
///
/// Histograms travel beside a series' float samples, not inside them (as Prometheus's
/// `Series` holds `Floats` and `Histograms` apart), so the float path keeps its 16-byte
/// `Copy` samples. The histogram is shared: the engine copies samples between windows and
/// steps, and only an operation that changes a histogram clones it.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSample {
    /// Milliseconds since the Unix epoch.
    pub t: i64,
    /// The histogram; a sum with the stale-marker bit pattern marks staleness.
    pub h: std::sync::Arc<FloatHistogram>,
}

impl HistogramSample {
    /// A sample at `t`.
    pub fn new(t: i64, h: FloatHistogram) -> Self {
        HistogramSample {
            t,
            h: std::sync::Arc::new(h),
        }
    }

    /// A staleness marker for a histogram series (Prometheus marks stale histograms by their
    /// sum).
    pub fn stale(t: i64) -> Self {
        HistogramSample::new(
            t,
            FloatHistogram {
                sum: STALE_NAN,
                ..FloatHistogram::default()
            },
        )
    }

    /// Whether this is a staleness marker.
    pub fn is_stale(&self) -> bool {
        is_stale_nan(self.h.sum)
    }
}

/// The start timestamp of one sample: when the counter (or the delta) the sample reports
/// began, as OpenTelemetry and Prometheus 3.x carry it (`created` timestamps, `ST`). A store
/// lists it only for samples that have one; a sample without one has an unknown start, which
/// Prometheus writes as 0 (so `st` is never 0 here).
///
/// Start timestamps are a side stream keyed by the sample's time, beside the float and
/// histogram streams, so the 16-byte float [`Sample`] stays as it is and only series that have
/// start timestamps pay for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartTimestamp {
    /// The sample's timestamp (ms): a float or a histogram sample of the same series.
    pub t: i64,
    /// Its start timestamp (ms); may lie before, at or (invalidly) after `t`.
    pub st: i64,
}

/// What a select is for, so a store can avoid reading or sending what the query will not use.
/// All fields are advisory: a store may return more than asked, never less.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectHints {
    /// First and last timestamp (inclusive, ms) the query reads for this selector, after
    /// lookback, range and offset are applied.
    pub start_ms: i64,
    /// See `start_ms`.
    pub end_ms: i64,
    /// Query resolution step in ms (0 for instant queries).
    pub step_ms: i64,
    /// The range of a range selector, or the lookback window for instant selectors, in ms.
    pub range_ms: i64,
    /// The function wrapping the selector (`rate`, `series` for metadata-only selects, ...).
    pub func: Option<String>,
    /// Labels of the surrounding aggregation; `by` true for `by (...)`, false for `without`.
    pub grouping: Vec<String>,
    /// True for `by (...)`, false for `without (...)`.
    pub by: bool,
    /// Return at most this many series (0: no limit).
    pub limit: usize,
}

/// Hints for label name and value lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelHints {
    /// Return at most this many values (0: no limit).
    pub limit: usize,
}

/// A result of label name or value lookups: sorted, unique strings plus warnings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelValues {
    /// The names or values, sorted and unique.
    pub values: Vec<String>,
    /// Warnings from the stores asked (partial answers, truncation).
    pub warnings: Warnings,
}

impl LabelValues {
    /// `values` sorted and made unique, cut to the first `limit` (0: no limit).
    pub fn limited(mut values: Vec<String>, limit: usize, warnings: Warnings) -> LabelValues {
        values.sort_unstable();
        values.dedup();
        if limit > 0 {
            values.truncate(limit);
        }
        LabelValues { values, warnings }
    }
}

/// Something that can open read views over a time range.
pub trait Queryable: Send + Sync {
    /// A querier over samples with `mint <= t <= maxt`.
    fn querier(&self, mint: i64, maxt: i64) -> Result<Box<dyn Querier + '_>>;

    /// The oldest timestamp the store holds, if it knows (a local store does; a remote one
    /// does not). Fan-out uses it to skip remote stores for ranges the local store covers.
    fn min_time(&self) -> Option<i64> {
        None
    }
}

/// A read view over a time range of a store.
pub trait Querier: Send + Sync {
    /// Series whose labels match every matcher. With `sort`, series come ordered by labels
    /// (required for merging); otherwise in any order. At least one matcher must not match the
    /// empty string, as in Prometheus; stores may rely on it.
    fn select(
        &self,
        ctx: &Context,
        sort: bool,
        hints: &SelectHints,
        matchers: &[Matcher],
    ) -> Result<Box<dyn SeriesSet + '_>>;

    /// The sorted, unique values of label `name` among series matching `matchers` (all
    /// series when empty) that have samples in the querier's range.
    fn label_values(
        &self,
        ctx: &Context,
        name: &str,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues>;

    /// The sorted, unique label names among series matching `matchers` (all when empty).
    fn label_names(
        &self,
        ctx: &Context,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues>;

    /// This querier's asynchronous side, for stores that wait on the network; `None` (the
    /// default) for stores whose work is on the calling thread anyway (local storage).
    fn as_async(&self) -> Option<&dyn AsyncQuerier> {
        None
    }
}

/// A boxed future that can move between threads, as [`AsyncQuerier`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The asynchronous side of a store whose queries wait on the network (a remote-read
/// client). A fan-out over several such stores starts every store's request and waits for all
/// of them at once on the calling thread, instead of blocking one thread per store. The
/// futures carry whatever runtime context they need; they only have to be polled.
pub trait AsyncQuerier: Send + Sync {
    /// [`Querier::select`] as a future. The future borrows the arguments (`'f`); the series
    /// set it yields borrows only the querier (`'s`), as the synchronous select's does.
    fn select<'s: 'f, 'f>(
        &'s self,
        ctx: &'f Context,
        sort: bool,
        hints: &'f SelectHints,
        matchers: &'f [Matcher],
    ) -> BoxFuture<'f, Result<Box<dyn SeriesSet + 's>>>;

    /// [`Querier::label_values`] as a future.
    fn label_values<'a>(
        &'a self,
        ctx: &'a Context,
        name: &'a str,
        hints: &'a LabelHints,
        matchers: &'a [Matcher],
    ) -> BoxFuture<'a, Result<LabelValues>>;

    /// [`Querier::label_names`] as a future.
    fn label_names<'a>(
        &'a self,
        ctx: &'a Context,
        hints: &'a LabelHints,
        matchers: &'a [Matcher],
    ) -> BoxFuture<'a, Result<LabelValues>>;

    /// Runs `fut` to completion on the calling thread: a fan-out hands it the join of all its
    /// stores' futures (and the synchronous stores' work). Fails, without running `fut`, when
    /// the calling thread must not block (a thread that drives an async runtime and cannot
    /// hand its work to another).
    fn block_on(&self, fut: BoxFuture<'_, ()>) -> Result<()>;
}

/// An iterator over series. Errors end the set; warnings are complete once `next` returned
/// `None`. Series own their data (shared chunks, copied head samples), so a caller can hold
/// many at once.
pub trait SeriesSet: Send {
    /// The next series, an error (which ends the set), or `None` at the end.
    fn next(&mut self) -> Option<Result<Box<dyn Series>>>;
    /// Warnings gathered so far; complete once `next` returned `None`.
    fn warnings(&self) -> Warnings {
        Warnings::default()
    }
}

/// One series: its labels and its samples.
pub trait Series: Send + Sync + 'static {
    /// The series' labels.
    fn labels(&self) -> &Labels;
    /// A fresh iterator over the series' samples in time order, within the querier's range.
    fn iter(&self) -> Box<dyn SampleIterator + '_>;
}

/// Samples of one series in increasing time order.
pub trait SampleIterator: Send {
    /// The next sample, or `None` at the end.
    fn next(&mut self) -> Result<Option<Sample>>;

    /// Appends every remaining sample with `mint <= t <= maxt` to `out`, consuming samples up
    /// to and including the first one after `maxt`. Stores override this to skip whole chunks
    /// outside the range and to decode in a tight loop.
    fn append_range(&mut self, mint: i64, maxt: i64, out: &mut Vec<Sample>) -> Result<()> {
        while let Some(s) = self.next()? {
            if s.t > maxt {
                break;
            }
            if s.t >= mint {
                out.push(s);
            }
        }
        Ok(())
    }

    /// Appends the series' native histogram samples with `mint <= t <= maxt` to `out`, in
    /// time order. Histograms are a second stream beside the floats: a series may hold both
    /// (a float sample and a histogram never share a timestamp), and `append_range`/`next`
    /// yield only the floats. It reads the histogram stream independently of the float
    /// methods, so it may be called before or after them on the same iterator. The default,
    /// for stores that hold floats only, appends nothing.
    fn append_histograms(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<HistogramSample>,
    ) -> Result<()> {
        let _ = (mint, maxt, out);
        Ok(())
    }

    /// Appends the start timestamps of the series' samples (float or histogram) with
    /// `mint <= t <= maxt` to `out`, in time order; samples without a start timestamp are
    /// left out. Like [`SampleIterator::append_histograms`] it reads its own stream,
    /// independently of the sample methods. The default, for stores that keep no start
    /// timestamps, appends nothing: every sample then has an unknown start.
    fn append_start_timestamps(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<StartTimestamp>,
    ) -> Result<()> {
        let _ = (mint, maxt, out);
        Ok(())
    }
}

/// A [`SampleIterator`] over a slice of samples.
#[derive(Debug)]
pub struct SliceIterator<'a> {
    samples: &'a [Sample],
    pos: usize,
}

impl<'a> SliceIterator<'a> {
    /// An iterator from the start of `samples`, which must be in time order.
    pub fn new(samples: &'a [Sample]) -> Self {
        SliceIterator { samples, pos: 0 }
    }
}

impl SampleIterator for SliceIterator<'_> {
    fn next(&mut self) -> Result<Option<Sample>> {
        let s = self.samples.get(self.pos).copied();
        self.pos += 1;
        Ok(s)
    }

    fn append_range(&mut self, mint: i64, maxt: i64, out: &mut Vec<Sample>) -> Result<()> {
        let rest = self.samples.get(self.pos..).unwrap_or_default();
        let lo = rest.partition_point(|s| s.t < mint);
        let hi = rest.partition_point(|s| s.t <= maxt);
        if lo < hi {
            out.extend_from_slice(&rest[lo..hi]);
        }
        self.pos += (hi + 1).min(rest.len());
        Ok(())
    }
}

/// A series held in memory: labels plus samples in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct VecSeries {
    /// The series' labels.
    pub labels: Labels,
    /// The samples, in time order.
    pub samples: Vec<Sample>,
}

impl Series for VecSeries {
    fn labels(&self) -> &Labels {
        &self.labels
    }
    fn iter(&self) -> Box<dyn SampleIterator + '_> {
        Box::new(SliceIterator::new(&self.samples))
    }
}

/// A [`SeriesSet`] over series already in memory.
pub struct VecSeriesSet<S> {
    series: std::vec::IntoIter<S>,
    warnings: Warnings,
}

impl<S> VecSeriesSet<S> {
    /// A set yielding `series` in the given order, with `warnings`.
    pub fn new(series: Vec<S>, warnings: Warnings) -> Self {
        VecSeriesSet {
            series: series.into_iter(),
            warnings,
        }
    }
}

impl<S: Series + 'static> SeriesSet for VecSeriesSet<S> {
    fn next(&mut self) -> Option<Result<Box<dyn Series>>> {
        self.series
            .next()
            .map(|s| Ok(Box::new(s) as Box<dyn Series>))
    }
    fn warnings(&self) -> Warnings {
        self.warnings.clone()
    }
}

/// Something that accepts writes.
pub trait Appendable: Send + Sync {
    /// A new write transaction.
    fn appender(&self) -> Box<dyn Appender + '_>;
}

/// A write transaction. Samples become visible to queries on `commit`, and `commit` returns
/// only once they are as durable as the store promises (the embedded TSDB: in its WAL).
pub trait Appender: Send {
    /// Adds one sample. A per-sample error (out of order, too old, duplicate) refuses that
    /// sample only: the caller may go on appending the rest of its batch and commit.
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<()>;
    /// Adds the samples of one series given as borrowed label pairs, as a write path that
    /// decodes requests in place has them. A per-sample refusal is reported through
    /// `refused` (index into `samples`, error) and the rest still go in; any other error
    /// aborts. The default builds a [`Labels`] and calls [`Appender::append`] per sample;
    /// stores override it to look the series up once, without building the label set.
    fn append_samples(
        &mut self,
        labels: LabelPairs<'_>,
        samples: &[Sample],
        refused: &mut dyn FnMut(usize, Error),
    ) -> Result<()> {
        let labels = labels.to_labels();
        for (i, s) in samples.iter().enumerate() {
            match self.append(&labels, s.t, s.v) {
                Ok(()) => {}
                Err(e) if e.is_sample_error() => refused(i, e),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    /// Adds the samples of the series a remote-write 1.0 sender named by `key`: the bytes of
    /// its `TimeSeries`' label fields (the `Label` messages with their field keys and
    /// lengths, nothing else between them), when this transaction's store remembers the key
    /// from an [`Appender::append_samples_keyed`] that committed. Returns `Ok(false)`, having
    /// done nothing, when it does not: the caller then decodes and checks the labels and calls
    /// `append_samples_keyed`. Equal keys mean equal labels, and the store only remembers
    /// keys of labels that passed the caller's checks, so a known key needs neither again.
    /// The default knows no key.
    fn append_samples_by_key(
        &mut self,
        key: &[u8],
        samples: &[Sample],
        refused: &mut dyn FnMut(usize, Error),
    ) -> Result<bool> {
        let _ = (key, samples, refused);
        Ok(false)
    }
    /// [`Appender::append_samples`], for a series whose labels a remote-write 1.0 sender
    /// encoded as `key` (see [`Appender::append_samples_by_key`]); a store may remember the key
    /// for the next request. The default only appends.
    fn append_samples_keyed(
        &mut self,
        key: &[u8],
        labels: LabelPairs<'_>,
        samples: &[Sample],
        refused: &mut dyn FnMut(usize, Error),
    ) -> Result<()> {
        let _ = key;
        self.append_samples(labels, samples, refused)
    }
    /// Adds one native histogram sample. The default refuses it: only stores that hold
    /// histograms override this.
    fn append_histogram(&mut self, labels: &Labels, t: i64, h: &FloatHistogram) -> Result<()> {
        let _ = (labels, t, h);
        Err(Error::BadRequest(
            "this store does not hold native histograms".into(),
        ))
    }
    /// Adds one native histogram sample with integer counts, as scrapes and most remote
    /// writers produce them. Stores that keep integer histograms apart (Prometheus's
    /// HISTOGRAM chunks are smaller than FLOAT_HISTOGRAM ones) override this; the default
    /// stores it as a float histogram, which every query reads the same way.
    fn append_int_histogram(&mut self, labels: &Labels, t: i64, h: &Histogram) -> Result<()> {
        self.append_histogram(labels, t, &h.to_float())
    }
    /// Records `st` as the start timestamp of the sample at `t` that was just appended to
    /// series `labels` in this transaction (so call it right after that sample's `append`).
    /// An `st` of 0 means "unknown" and is accepted and dropped. The default refuses: only
    /// stores that keep start timestamps override this. Start timestamps are optional
    /// metadata, so a writer may ignore the refusal; the sample itself is stored either way.
    fn append_start_timestamp(&mut self, labels: &Labels, t: i64, st: i64) -> Result<()> {
        let _ = (labels, t, st);
        Err(Error::BadRequest(
            "this store does not keep start timestamps".into(),
        ))
    }
    /// Makes every accepted sample durable and visible.
    fn commit(self: Box<Self>) -> Result<()>;
    /// Drops everything appended since the appender was created.
    fn rollback(self: Box<Self>);
}

/// Whether any matcher can narrow a select: Prometheus refuses selects where every matcher
/// matches the empty string (`{foo=""}`), since they would match every series in the store.
pub fn matchers_select_something(matchers: &[Matcher]) -> bool {
    matchers.iter().any(|m| !m.matches_empty())
}

/// Drains a series set into memory: labels and the samples in `[mint, maxt]`.
pub fn collect_series(
    set: &mut dyn SeriesSet,
    mint: i64,
    maxt: i64,
) -> Result<(Vec<VecSeries>, Warnings)> {
    let mut out = Vec::new();
    while let Some(s) = set.next() {
        let s = s?;
        let mut samples = Vec::new();
        s.iter().append_range(mint, maxt, &mut samples)?;
        out.push(VecSeries {
            labels: s.labels().clone(),
            samples,
        });
    }
    Ok((out, set.warnings()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_iterator_append_range_consumes_past_maxt() {
        let s: Vec<Sample> = (0..10).map(|i| Sample::new(i * 10, i as f64)).collect();
        let mut it = SliceIterator::new(&s);
        let mut out = Vec::new();
        it.append_range(15, 40, &mut out).expect("in memory");
        assert_eq!(
            out.iter().map(|s| s.t).collect::<Vec<_>>(),
            vec![20, 30, 40]
        );
        // 50 was consumed as the first sample after maxt.
        assert_eq!(it.next().expect("in memory").map(|s| s.t), Some(60));
        let mut out = Vec::new();
        it.append_range(0, 1000, &mut out).expect("in memory");
        assert_eq!(out.len(), 3);
        assert_eq!(it.next().expect("in memory"), None);
    }

    #[test]
    fn default_append_range_matches_slice_version() {
        struct Plain<'a>(SliceIterator<'a>);
        impl SampleIterator for Plain<'_> {
            fn next(&mut self) -> Result<Option<Sample>> {
                self.0.next()
            }
        }
        let s: Vec<Sample> = (0..10).map(|i| Sample::new(i * 10, i as f64)).collect();
        for (mint, maxt) in [(0, 0), (5, 5), (15, 40), (-5, 200), (90, 90), (100, 50)] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut x = SliceIterator::new(&s);
            let mut y = Plain(SliceIterator::new(&s));
            x.append_range(mint, maxt, &mut a).expect("in memory");
            y.append_range(mint, maxt, &mut b).expect("in memory");
            assert_eq!(a, b, "range {mint}..={maxt}");
            assert_eq!(x.next().expect("mem"), y.next().expect("mem"));
        }
    }
}
