//! A small in-memory store: every series in a sorted map, samples in a `Vec`.
//!
//! It exists for tests and fixtures (the promqltest runner, engine unit tests, handler tests):
//! simple enough to be obviously right, so it can serve as the model other stores are checked
//! against. The embedded TSDB is the store for real data.

use std::collections::{BTreeMap, HashMap};

use m3query_model::{FloatHistogram, Labels, Matcher, Sample};
use parking_lot::RwLock;

use crate::{
    Appendable, Appender, Context, Error, HistogramSample, LabelHints, LabelValues, Querier,
    Queryable, Result, SampleIterator, SelectHints, Series, SeriesSet, SliceIterator,
    StartTimestamp, VecSeriesSet, Warnings, matchers_select_something,
};

/// One series' data: float samples and native histogram samples, each in time order, and
/// the start timestamps of those samples that have one (usually none).
#[derive(Debug, Default, Clone)]
struct MemData {
    floats: Vec<Sample>,
    hists: Vec<HistogramSample>,
    sts: Vec<StartTimestamp>,
}

impl MemData {
    fn first_t(&self) -> Option<i64> {
        match (self.floats.first(), self.hists.first()) {
            (Some(a), Some(b)) => Some(a.t.min(b.t)),
            (a, b) => a.map(|s| s.t).or(b.map(|h| h.t)),
        }
    }

    fn last_t(&self) -> Option<i64> {
        match (self.floats.last(), self.hists.last()) {
            (Some(a), Some(b)) => Some(a.t.max(b.t)),
            (a, b) => a.map(|s| s.t).or(b.map(|h| h.t)),
        }
    }

    fn len(&self) -> usize {
        self.floats.len() + self.hists.len()
    }
}

/// An in-memory store.
#[derive(Debug, Default)]
pub struct MemStorage {
    series: RwLock<BTreeMap<Labels, MemData>>,
}

/// A selected series of the in-memory store: floats, histograms and start timestamps in
/// the querier's range.
#[derive(Debug, Clone)]
struct MemSeries {
    labels: Labels,
    floats: Vec<Sample>,
    hists: Vec<HistogramSample>,
    sts: Vec<StartTimestamp>,
}

impl Series for MemSeries {
    fn labels(&self) -> &Labels {
        &self.labels
    }
    fn iter(&self) -> Box<dyn SampleIterator + '_> {
        Box::new(MemIter {
            floats: SliceIterator::new(&self.floats),
            hists: &self.hists,
            sts: &self.sts,
        })
    }
}

struct MemIter<'a> {
    floats: SliceIterator<'a>,
    hists: &'a [HistogramSample],
    sts: &'a [StartTimestamp],
}

/// Appends the items of the time-ordered `rest` with `mint <= t <= maxt` to `out` and drops
/// everything up to `maxt` from `rest`: the side streams' `append_range`.
fn take_range<T: Clone>(
    rest: &mut &[T],
    t: impl Fn(&T) -> i64,
    mint: i64,
    maxt: i64,
    out: &mut Vec<T>,
) {
    let lo = rest.partition_point(|s| t(s) < mint);
    let hi = rest.partition_point(|s| t(s) <= maxt);
    if lo < hi {
        out.extend_from_slice(&rest[lo..hi]);
    }
    *rest = &rest[hi..];
}

impl SampleIterator for MemIter<'_> {
    fn next(&mut self) -> Result<Option<Sample>> {
        self.floats.next()
    }

    fn append_range(&mut self, mint: i64, maxt: i64, out: &mut Vec<Sample>) -> Result<()> {
        self.floats.append_range(mint, maxt, out)
    }

    fn append_histograms(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<HistogramSample>,
    ) -> Result<()> {
        take_range(&mut self.hists, |s| s.t, mint, maxt, out);
        Ok(())
    }

    fn append_start_timestamps(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<StartTimestamp>,
    ) -> Result<()> {
        take_range(&mut self.sts, |s| s.t, mint, maxt, out);
        Ok(())
    }
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> Self {
        MemStorage::default()
    }

    /// Drops every series.
    pub fn clear(&self) {
        self.series.write().clear();
    }

    /// How many series it holds.
    pub fn num_series(&self) -> usize {
        self.series.read().len()
    }

    /// How many samples it holds, over all series.
    pub fn num_samples(&self) -> usize {
        self.series.read().values().map(MemData::len).sum()
    }

    fn matching<'a>(
        map: &'a BTreeMap<Labels, MemData>,
        matchers: &'a [Matcher],
    ) -> impl Iterator<Item = (&'a Labels, &'a MemData)> + 'a {
        map.iter().filter(move |(l, _)| {
            matchers
                .iter()
                .all(|m| m.matches(l.get(&m.name).unwrap_or("")))
        })
    }
}

fn has_samples_in(d: &MemData, mint: i64, maxt: i64) -> bool {
    let i = d.floats.partition_point(|s| s.t < mint);
    let j = d.hists.partition_point(|s| s.t < mint);
    d.floats.get(i).is_some_and(|s| s.t <= maxt) || d.hists.get(j).is_some_and(|s| s.t <= maxt)
}

impl Queryable for MemStorage {
    fn querier(&self, mint: i64, maxt: i64) -> Result<Box<dyn Querier + '_>> {
        Ok(Box::new(MemQuerier {
            store: self,
            mint,
            maxt,
        }))
    }

    fn min_time(&self) -> Option<i64> {
        self.series
            .read()
            .values()
            .filter_map(MemData::first_t)
            .min()
    }
}

struct MemQuerier<'a> {
    store: &'a MemStorage,
    mint: i64,
    maxt: i64,
}

impl Querier for MemQuerier<'_> {
    fn select(
        &self,
        ctx: &Context,
        _sort: bool,
        hints: &SelectHints,
        matchers: &[Matcher],
    ) -> Result<Box<dyn SeriesSet + '_>> {
        ctx.check()?;
        if !matchers_select_something(matchers) {
            return Err(Error::BadRequest(
                "vector selector must contain at least one non-empty matcher".into(),
            ));
        }
        let (mint, maxt) = (self.mint, self.maxt);
        let map = self.store.series.read();
        let mut out = Vec::new();
        for (labels, d) in MemStorage::matching(&map, matchers) {
            let lo = d.floats.partition_point(|s| s.t < mint);
            let hi = d.floats.partition_point(|s| s.t <= maxt);
            let hlo = d.hists.partition_point(|s| s.t < mint);
            let hhi = d.hists.partition_point(|s| s.t <= maxt);
            if lo >= hi && hlo >= hhi {
                continue;
            }
            if hints.limit > 0 && out.len() >= hints.limit {
                break;
            }
            let slo = d.sts.partition_point(|s| s.t < mint);
            let shi = d.sts.partition_point(|s| s.t <= maxt);
            out.push(MemSeries {
                labels: labels.clone(),
                floats: d.floats[lo..hi].to_vec(),
                hists: d.hists[hlo..hhi].to_vec(),
                sts: d.sts[slo..shi.max(slo)].to_vec(),
            });
        }
        Ok(Box::new(VecSeriesSet::new(out, Warnings::new())))
    }

    fn label_values(
        &self,
        ctx: &Context,
        name: &str,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues> {
        ctx.check()?;
        let map = self.store.series.read();
        let values: Vec<String> = MemStorage::matching(&map, matchers)
            .filter(|(_, s)| has_samples_in(s, self.mint, self.maxt))
            .filter_map(|(l, _)| l.get(name).map(str::to_string))
            .collect();
        Ok(LabelValues::limited(values, hints.limit, Warnings::new()))
    }

    fn label_names(
        &self,
        ctx: &Context,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues> {
        ctx.check()?;
        let map = self.store.series.read();
        let values: Vec<String> = MemStorage::matching(&map, matchers)
            .filter(|(_, s)| has_samples_in(s, self.mint, self.maxt))
            .flat_map(|(l, _)| l.iter().map(|l| l.name.to_string()).collect::<Vec<_>>())
            .collect();
        Ok(LabelValues::limited(values, hints.limit, Warnings::new()))
    }
}

impl Appendable for MemStorage {
    fn appender(&self) -> Box<dyn Appender + '_> {
        Box::new(MemAppender {
            store: self,
            pending: Vec::new(),
            last: HashMap::new(),
        })
    }
}

/// A pending sample (a float or a histogram), or the start timestamp of one.
enum Pending {
    Float(Sample),
    Hist(HistogramSample),
    Start(StartTimestamp),
}

struct MemAppender<'a> {
    store: &'a MemStorage,
    pending: Vec<(Labels, Pending)>,
    /// Last timestamp per series within this transaction.
    last: HashMap<Labels, i64>,
}

impl MemAppender<'_> {
    /// Checks order against the series' last sample; `Ok(false)` for an exact duplicate of
    /// the last float (accepted and dropped, as Prometheus does).
    fn check_order(&self, labels: &Labels, t: i64, float: Option<f64>) -> Result<bool> {
        if labels.is_empty() {
            return Err(Error::InvalidLabels("empty label set".into()));
        }
        let map = self.store.series.read();
        let stored = map.get(labels);
        let last_t = match self.last.get(labels) {
            Some(t) => Some(*t),
            None => stored.and_then(MemData::last_t),
        };
        let Some(last_t) = last_t else {
            return Ok(true);
        };
        if t < last_t {
            return Err(Error::OutOfOrderSample);
        }
        if t == last_t {
            let same_float = float.is_some_and(|v| {
                let pending = self.pending.iter().rev().find_map(|(l, p)| match p {
                    Pending::Float(s) if l == labels && s.t == t => Some(s.v),
                    _ => None,
                });
                let prev = pending.or_else(|| {
                    stored
                        .and_then(|d| d.floats.last())
                        .filter(|s| s.t == t)
                        .map(|s| s.v)
                });
                prev.is_some_and(|p| p.to_bits() == v.to_bits())
            });
            if same_float {
                return Ok(false);
            }
            return Err(Error::DuplicateSampleForTimestamp);
        }
        Ok(true)
    }
}

impl MemAppender<'_> {
    /// The series' latest sample if it is a (non-stale) histogram: the sample a new
    /// histogram would share a chunk with in the TSDB.
    fn previous_histogram(&self, labels: &Labels) -> Option<std::sync::Arc<FloatHistogram>> {
        let pending = self
            .pending
            .iter()
            .rev()
            .find(|(l, p)| l == labels && !matches!(p, Pending::Start(_)));
        let last = match pending {
            Some((_, Pending::Hist(h))) => Some(h.clone()),
            Some((_, Pending::Float(_) | Pending::Start(_))) => None,
            None => {
                let map = self.store.series.read();
                let d = map.get(labels)?;
                match (d.floats.last(), d.hists.last()) {
                    (Some(f), Some(h)) if f.t > h.t => None,
                    (_, h) => h.cloned(),
                }
            }
        };
        last.filter(|h| !h.is_stale()).map(|h| h.h)
    }
}

/// The counter reset hint a histogram reads back with from the TSDB's histogram chunks, which
/// the in-memory store mimics so queries see what they would see there: gauges stay gauges;
/// a histogram that starts a series (or follows a float) keeps its own hint; one that
/// follows a histogram is a `CounterReset` when it was given as one, `Unknown` when a reset
/// is detected or its layout (schema, zero threshold, custom bounds) changed (both start a
/// new chunk), and `NotCounterReset` otherwise (a later sample of the same chunk).
fn read_back_hint(
    h: &FloatHistogram,
    prev: Option<&FloatHistogram>,
) -> m3query_model::histogram::CounterResetHint {
    use m3query_model::histogram::CounterResetHint::*;
    let Some(prev) = prev else {
        return h.counter_reset_hint;
    };
    if h.counter_reset_hint == Gauge || prev.counter_reset_hint == Gauge {
        return h.counter_reset_hint;
    }
    if h.counter_reset_hint == CounterReset {
        return CounterReset;
    }
    let mut probe = h.clone();
    probe.counter_reset_hint = Unknown;
    if probe.detect_reset(prev) {
        // The TSDB cuts a new chunk at a detected reset, and reads its first sample back
        // as `Unknown` (prometheus/prometheus#15346).
        return Unknown;
    }
    let layout_changed = h.schema != prev.schema
        || h.zero_threshold != prev.zero_threshold
        || h.custom_values != prev.custom_values;
    if layout_changed {
        Unknown
    } else {
        NotCounterReset
    }
}

impl Appender for MemAppender<'_> {
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<()> {
        if !self.check_order(labels, t, Some(v))? {
            return Ok(());
        }
        self.last.insert(labels.clone(), t);
        self.pending
            .push((labels.clone(), Pending::Float(Sample::new(t, v))));
        Ok(())
    }

    fn append_histogram(&mut self, labels: &Labels, t: i64, h: &FloatHistogram) -> Result<()> {
        self.check_order(labels, t, None)?;
        let mut h = h.clone();
        let prev = self.previous_histogram(labels);
        h.counter_reset_hint = read_back_hint(&h, prev.as_deref());
        self.last.insert(labels.clone(), t);
        self.pending
            .push((labels.clone(), Pending::Hist(HistogramSample::new(t, h))));
        Ok(())
    }

    fn append_start_timestamp(&mut self, labels: &Labels, t: i64, st: i64) -> Result<()> {
        if st == 0 {
            // Prometheus's "unknown start": the same as none.
            return Ok(());
        }
        let last_t = match self.last.get(labels) {
            Some(t) => Some(*t),
            None => self
                .store
                .series
                .read()
                .get(labels)
                .and_then(MemData::last_t),
        };
        if last_t != Some(t) {
            return Err(Error::BadRequest(format!(
                "a start timestamp for {labels} at {t} belongs right after that series' sample at {t}"
            )));
        }
        self.pending
            .push((labels.clone(), Pending::Start(StartTimestamp { t, st })));
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let mut map = self.store.series.write();
        for (l, s) in self.pending {
            let d = map.entry(l).or_default();
            match s {
                Pending::Float(s) => d.floats.push(s),
                Pending::Hist(h) => d.hists.push(h),
                Pending::Start(x) => {
                    // Samples arrive in time order, so this is almost always a push; a
                    // sample given its start twice keeps the later one.
                    let i = d.sts.partition_point(|s| s.t < x.t);
                    match d.sts.get_mut(i) {
                        Some(s) if s.t == x.t => *s = x,
                        _ => d.sts.insert(i, x),
                    }
                }
            }
        }
        Ok(())
    }

    fn rollback(self: Box<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect_series;
    use m3query_model::MatchOp;

    fn l(name: &str, job: &str) -> Labels {
        Labels::from_pairs([("__name__", name), ("job", job)])
    }

    #[test]
    fn append_select_and_labels() {
        let s = MemStorage::new();
        let mut app = s.appender();
        for t in 0..10 {
            app.append(&l("up", "a"), t * 10, 1.0).expect("in order");
            app.append(&l("up", "b"), t * 10, 0.0).expect("in order");
        }
        assert!(matches!(
            app.append(&l("up", "a"), 5, 1.0),
            Err(Error::OutOfOrderSample)
        ));
        assert!(matches!(
            app.append(&l("up", "a"), 90, 2.0),
            Err(Error::DuplicateSampleForTimestamp)
        ));
        app.commit().expect("commit");
        let q = s.querier(20, 50).expect("querier");
        let ctx = Context::background();
        let m = [Matcher::new(MatchOp::RegexMatch, "job", "a|c").expect("valid")];
        let mut set = q
            .select(&ctx, true, &SelectHints::default(), &m)
            .expect("select");
        let (series, _) = collect_series(set.as_mut(), i64::MIN, i64::MAX).expect("collect");
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].samples.len(), 4);
        let v = q
            .label_values(&ctx, "job", &LabelHints::default(), &[])
            .expect("values");
        assert_eq!(v.values, vec!["a", "b"]);
        let n = q
            .label_names(&ctx, &LabelHints { limit: 1 }, &[])
            .expect("names");
        assert_eq!(n.values, vec!["__name__"]);
        let empty = [Matcher::equal("job", "")];
        assert!(
            q.select(&ctx, true, &SelectHints::default(), &empty)
                .is_err()
        );
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::*;
    use m3query_model::histogram::Span;

    #[test]
    fn histograms_are_stored_beside_floats() {
        let s = MemStorage::new();
        let l = Labels::from_pairs([("__name__", "h")]);
        let h = FloatHistogram {
            count: 3.0,
            sum: 5.0,
            positive_spans: vec![Span::new(0, 2)],
            positive_buckets: vec![1.0, 2.0],
            ..FloatHistogram::default()
        };
        let mut app = s.appender();
        app.append(&l, 0, 1.0).expect("in order");
        app.append_histogram(&l, 10, &h).expect("in order");
        assert!(matches!(
            app.append_histogram(&l, 5, &h),
            Err(Error::OutOfOrderSample)
        ));
        assert!(matches!(
            app.append(&l, 10, 1.0),
            Err(Error::DuplicateSampleForTimestamp)
        ));
        app.commit().expect("commit");
        assert_eq!(s.num_samples(), 2);
        let q = s.querier(5, 20).expect("querier");
        let ctx = Context::background();
        let mut set = q
            .select(
                &ctx,
                true,
                &SelectHints::default(),
                &[Matcher::equal("__name__", "h")],
            )
            .expect("select");
        let series = set.next().expect("one series").expect("ok");
        let mut floats = Vec::new();
        series
            .iter()
            .append_range(i64::MIN, i64::MAX, &mut floats)
            .expect("mem");
        assert!(floats.is_empty(), "the float at 0 is outside the querier");
        let mut hs = Vec::new();
        series
            .iter()
            .append_histograms(i64::MIN, i64::MAX, &mut hs)
            .expect("mem");
        assert_eq!(hs.len(), 1);
        assert_eq!(*hs[0].h, h);
    }

    #[test]
    fn integer_histograms_read_back_as_their_float_form() {
        let s = MemStorage::new();
        let l = Labels::from_pairs([("__name__", "h")]);
        // Integer buckets are deltas: absolute counts 1 and 3.
        let h = m3query_model::Histogram {
            count: 4,
            sum: 2.5,
            positive_spans: vec![Span::new(0, 2)],
            positive_buckets: vec![1, 2],
            ..m3query_model::Histogram::default()
        };
        let mut app = s.appender();
        app.append_int_histogram(&l, 10, &h).expect("in order");
        app.commit().expect("commit");
        let q = s.querier(0, 20).expect("querier");
        let mut set = q
            .select(
                &Context::background(),
                false,
                &SelectHints::default(),
                &[Matcher::equal("__name__", "h")],
            )
            .expect("select");
        let series = set.next().expect("one series").expect("ok");
        let mut hs = Vec::new();
        series
            .iter()
            .append_histograms(i64::MIN, i64::MAX, &mut hs)
            .expect("mem");
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].h.positive_buckets, vec![1.0, 3.0]);
        assert_eq!(*hs[0].h, h.to_float());
    }

    #[test]
    fn histogram_hints_read_back_as_from_chunks() {
        use m3query_model::histogram::CounterResetHint::*;
        let h = |count: f64| FloatHistogram {
            count,
            sum: count,
            positive_spans: vec![Span::new(0, 1)],
            positive_buckets: vec![count],
            ..FloatHistogram::default()
        };
        assert_eq!(read_back_hint(&h(1.0), None), Unknown);
        assert_eq!(read_back_hint(&h(2.0), Some(&h(1.0))), NotCounterReset);
        assert_eq!(read_back_hint(&h(1.0), Some(&h(2.0))), Unknown);
        let mut wider = h(3.0);
        wider.zero_threshold = 0.5;
        assert_eq!(read_back_hint(&wider, Some(&h(2.0))), Unknown);
        let mut reset = h(3.0);
        reset.counter_reset_hint = CounterReset;
        assert_eq!(read_back_hint(&reset, Some(&h(2.0))), CounterReset);
        let mut gauge = h(1.0);
        gauge.counter_reset_hint = Gauge;
        assert_eq!(read_back_hint(&gauge, Some(&h(2.0))), Gauge);
    }
}

#[cfg(test)]
mod start_timestamp_tests {
    use super::*;

    fn select_one(s: &MemStorage, mint: i64, maxt: i64) -> Box<dyn Series> {
        let q = s.querier(mint, maxt).expect("querier");
        let mut set = q
            .select(
                &Context::background(),
                false,
                &SelectHints::default(),
                &[Matcher::equal("__name__", "c")],
            )
            .expect("select");
        set.next().expect("one series").expect("ok")
    }

    #[test]
    fn start_timestamps_are_a_side_stream_of_the_samples_that_have_one() {
        let s = MemStorage::new();
        let l = Labels::from_pairs([("__name__", "c")]);
        let mut app = s.appender();
        app.append(&l, 10, 1.0).expect("in order");
        app.append_start_timestamp(&l, 10, 5)
            .expect("after its sample");
        app.append(&l, 20, 2.0).expect("in order");
        // 0 is Prometheus's "unknown": accepted, not stored.
        app.append_start_timestamp(&l, 20, 0)
            .expect("unknown start");
        app.append(&l, 30, 3.0).expect("in order");
        assert!(
            app.append_start_timestamp(&l, 20, 15).is_err(),
            "only the sample just appended can get a start"
        );
        app.append_start_timestamp(&l, 30, 25)
            .expect("after its sample");
        app.commit().expect("commit");

        let series = select_one(&s, 0, 100);
        let mut sts = Vec::new();
        series
            .iter()
            .append_start_timestamps(i64::MIN, i64::MAX, &mut sts)
            .expect("mem");
        assert_eq!(
            sts,
            vec![
                StartTimestamp { t: 10, st: 5 },
                StartTimestamp { t: 30, st: 25 }
            ]
        );
        // The querier's range cuts the side stream like the samples.
        let series = select_one(&s, 15, 100);
        let mut sts = Vec::new();
        series
            .iter()
            .append_start_timestamps(i64::MIN, i64::MAX, &mut sts)
            .expect("mem");
        assert_eq!(sts, vec![StartTimestamp { t: 30, st: 25 }]);
        // The float stream is unchanged.
        let mut floats = Vec::new();
        series
            .iter()
            .append_range(i64::MIN, i64::MAX, &mut floats)
            .expect("mem");
        assert_eq!(floats, vec![Sample::new(20, 2.0), Sample::new(30, 3.0)]);
    }

    #[test]
    fn stores_without_start_timestamps_refuse_them_and_yield_none() {
        let series = crate::VecSeries {
            labels: Labels::from_pairs([("__name__", "c")]),
            samples: vec![Sample::new(1, 1.0)],
        };
        let mut sts = Vec::new();
        series
            .iter()
            .append_start_timestamps(i64::MIN, i64::MAX, &mut sts)
            .expect("default");
        assert!(sts.is_empty());

        struct FloatsOnly;
        impl Appender for FloatsOnly {
            fn append(&mut self, _: &Labels, _: i64, _: f64) -> Result<()> {
                Ok(())
            }
            fn commit(self: Box<Self>) -> Result<()> {
                Ok(())
            }
            fn rollback(self: Box<Self>) {}
        }
        let l = Labels::from_pairs([("__name__", "c")]);
        assert!(matches!(
            FloatsOnly.append_start_timestamp(&l, 1, 0),
            Err(Error::BadRequest(_))
        ));
    }
}
