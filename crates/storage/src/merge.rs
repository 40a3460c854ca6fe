//! Fan-out: one [`Queryable`] over several stores.
//!
//! Every member is queried at once, without a thread per member or per query: the members
//! that wait on the network ([`Querier::as_async`]: remote stores) are futures, started
//! together and driven on the calling thread inside the caller's tracing span, while the
//! local members are read inline on that thread once the remote requests are out. Series
//! with the same labels from different members become one series whose samples are the
//! time-ordered union; where two members hold a sample at the same timestamp the first
//! member's is kept, so identical replicas deduplicate.
//!
//! Partial responses: a member marked `partial_ok` that fails (unreachable, timed out, broken)
//! is left out with a warning naming it, and the query answers from the others. A member that
//! is not `partial_ok` fails the whole query.

use std::cmp::Ordering;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use m3query_model::{Labels, Matcher, Sample};
use tracing::Instrument;

use crate::{
    AsyncQuerier, BoxFuture, Context, Error, HistogramSample, LabelHints, LabelValues, Querier,
    Queryable, Result, SampleIterator, SelectHints, Series, SeriesSet, Warnings,
};

/// One store in a fan-out.
pub struct Member {
    /// Named in warnings and spans.
    pub name: String,
    /// The store itself.
    pub queryable: Arc<dyn Queryable>,
    /// A failure becomes a warning instead of an error.
    pub partial_ok: bool,
    /// When false, the member is skipped for queries whose range starts at or after the
    /// local store's oldest sample (Prometheus's `read_recent: false`).
    pub read_recent: bool,
}

impl Member {
    /// A member that must answer, queried for any range (the local store, or a single store).
    pub fn required(name: impl Into<String>, queryable: Arc<dyn Queryable>) -> Self {
        Member {
            name: name.into(),
            queryable,
            partial_ok: false,
            read_recent: true,
        }
    }
}

/// Queries every member and merges the answers.
pub struct MergeQueryable {
    members: Vec<Member>,
    /// The local store, whose oldest sample decides `read_recent: false` skips.
    local: Option<Arc<dyn Queryable>>,
}

impl MergeQueryable {
    /// A fan-out over `members`, queried in order; see [`MergeQueryable::with_local`] for `read_recent`.
    pub fn new(members: Vec<Member>) -> Self {
        MergeQueryable {
            members,
            local: None,
        }
    }

    /// Sets the store whose coverage `read_recent: false` members defer to.
    pub fn with_local(mut self, local: Arc<dyn Queryable>) -> Self {
        self.local = Some(local);
        self
    }

    /// Wraps plain stores, all required, named `store-N`.
    pub fn from_stores(stores: Vec<Arc<dyn Queryable>>) -> Self {
        MergeQueryable::new(
            stores
                .into_iter()
                .enumerate()
                .map(|(i, q)| Member::required(format!("store-{i}"), q))
                .collect(),
        )
    }
}

/// The warning for a member left out of a result.
fn partial_warning(name: &str, e: &Error) -> String {
    format!("store {name:?} failed, the result may be incomplete: {e}")
}

impl Queryable for MergeQueryable {
    fn querier(&self, mint: i64, maxt: i64) -> Result<Box<dyn Querier + '_>> {
        let local_min = self.local.as_ref().and_then(|l| l.min_time());
        let mut parts = Vec::with_capacity(self.members.len());
        let mut warnings = Warnings::new();
        for m in &self.members {
            if !m.read_recent && local_min.is_some_and(|lm| lm <= mint) {
                continue;
            }
            match m.queryable.querier(mint, maxt) {
                Ok(q) => parts.push(Part {
                    name: m.name.clone(),
                    partial_ok: m.partial_ok,
                    querier: q,
                }),
                Err(e) if m.partial_ok => warnings.push(partial_warning(&m.name, &e)),
                Err(e) => return Err(e),
            }
        }
        Ok(Box::new(MergeQuerier { parts, warnings }))
    }

    fn min_time(&self) -> Option<i64> {
        self.members
            .iter()
            .filter_map(|m| m.queryable.min_time())
            .min()
    }
}

struct Part<'a> {
    name: String,
    partial_ok: bool,
    querier: Box<dyn Querier + 'a>,
}

/// A querier over several members' queriers.
struct MergeQuerier<'a> {
    parts: Vec<Part<'a>>,
    /// Members that failed to open.
    warnings: Warnings,
}

impl<'a> MergeQuerier<'a> {
    /// Runs one query on every part and returns each part's result, in part order.
    ///
    /// Stores with an asynchronous side ([`Querier::as_async`]: remote stores) get `start`:
    /// their futures are joined and driven together on the calling thread, each inside the
    /// caller's span, so per-store spans nest under the request. The others (local storage)
    /// get `run`, inline on the calling thread, after every remote request has been sent, so
    /// the stores still work at the same time. No thread is started per query or per store.
    /// A panicking part fails that part only, as a store's error.
    ///
    /// The outer error is the fan-out's own (the calling thread must not block): it fails the
    /// query whatever the parts' `partial_ok`.
    fn each<'s, 'f, T: Send + 'f>(
        &'s self,
        run: impl Fn(&'s dyn Querier) -> Result<T> + Sync,
        start: impl Fn(&'s dyn AsyncQuerier) -> BoxFuture<'f, Result<T>>,
    ) -> Result<Vec<Result<T>>>
    where
        's: 'f,
    {
        let run_one = |q: &'s dyn Querier| {
            std::panic::catch_unwind(AssertUnwindSafe(|| run(q)))
                .unwrap_or_else(|_| Err(Error::Other(PANICKED.into())))
        };
        // One store (the single-store case): its own select waits for it on this thread.
        if self.parts.len() <= 1 {
            return Ok(self.parts.iter().map(|p| run_one(&*p.querier)).collect());
        }
        let span = tracing::Span::current();
        let mut driver = None;
        let mut remote = Vec::new();
        let mut remote_at = Vec::new();
        let mut local_at = Vec::new();
        for (i, p) in self.parts.iter().enumerate() {
            match p.querier.as_async() {
                Some(a) => {
                    driver.get_or_insert(a);
                    remote.push(Box::pin(start(a).instrument(span.clone())) as BoxFuture<'f, _>);
                    remote_at.push(i);
                }
                None => local_at.push(i),
            }
        }
        let Some(driver) = driver else {
            return Ok(self.parts.iter().map(|p| run_one(&*p.querier)).collect());
        };
        let mut join = JoinAll::new(remote);
        let mut local_out = Vec::with_capacity(local_at.len());
        let mut remote_out = Vec::new();
        let work = async {
            // The first poll sends every remote store's request; the local stores are then
            // read while the remote ones answer.
            let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut join).poll(cx))).await;
            for &i in &local_at {
                local_out.push(run_one(&*self.parts[i].querier));
            }
            remote_out = match first {
                Poll::Ready(r) => r,
                Poll::Pending => (&mut join).await,
            };
        };
        driver.block_on(Box::pin(work.instrument(span)))?;
        let mut out: Vec<Option<Result<T>>> = (0..self.parts.len()).map(|_| None).collect();
        for (i, r) in local_at.into_iter().zip(local_out) {
            out[i] = Some(r);
        }
        for (i, r) in remote_at.into_iter().zip(remote_out) {
            out[i] = Some(r);
        }
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(Error::Other("a store's query did not finish".into())))
            })
            .collect())
    }

    fn label_lookup<'s, 'f>(
        &'s self,
        limit: usize,
        run: impl Fn(&'s dyn Querier) -> Result<LabelValues> + Sync,
        start: impl Fn(&'s dyn AsyncQuerier) -> BoxFuture<'f, Result<LabelValues>>,
    ) -> Result<LabelValues>
    where
        's: 'f,
    {
        let mut lists = Vec::with_capacity(self.parts.len());
        let mut warnings = self.warnings.clone();
        for (p, r) in self.parts.iter().zip(self.each(run, start)?) {
            match r {
                Ok(l) => lists.push(l),
                Err(e) if p.partial_ok => warnings.push(partial_warning(&p.name, &e)),
                Err(e) => return Err(e),
            }
        }
        let mut merged = merge_values(lists, limit);
        warnings.extend(merged.warnings);
        merged.warnings = warnings;
        Ok(merged)
    }
}

/// The error of a part whose query panicked.
const PANICKED: &str = "a store's query panicked";

/// Waits for several futures, polling each one until it is done; yields their outputs in
/// order. A future that panics yields an error instead.
struct JoinAll<'f, T> {
    futs: Vec<Option<BoxFuture<'f, Result<T>>>>,
    out: Vec<Option<Result<T>>>,
}

// Nothing inside is ever pinned in place: the futures are boxed, the outputs plain values.
impl<T> Unpin for JoinAll<'_, T> {}

impl<'f, T> JoinAll<'f, T> {
    fn new(futs: Vec<BoxFuture<'f, Result<T>>>) -> Self {
        let out = futs.iter().map(|_| None).collect();
        JoinAll {
            futs: futs.into_iter().map(Some).collect(),
            out,
        }
    }
}

impl<T> Future for JoinAll<'_, T> {
    type Output = Vec<Result<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut done = true;
        for (slot, out) in this.futs.iter_mut().zip(&mut this.out) {
            let Some(f) = slot else { continue };
            match std::panic::catch_unwind(AssertUnwindSafe(|| f.as_mut().poll(cx))) {
                Ok(Poll::Ready(r)) => *out = Some(r),
                Ok(Poll::Pending) => {
                    done = false;
                    continue;
                }
                Err(_) => *out = Some(Err(Error::Other(PANICKED.into()))),
            }
            *slot = None;
        }
        if !done {
            return Poll::Pending;
        }
        Poll::Ready(
            this.out
                .iter_mut()
                .map(|o| {
                    o.take().unwrap_or_else(|| {
                        Err(Error::Other("a store's query did not finish".into()))
                    })
                })
                .collect(),
        )
    }
}

/// Merges sorted, unique string lists and applies a limit.
fn merge_values(lists: Vec<LabelValues>, limit: usize) -> LabelValues {
    let mut warnings = Warnings::new();
    let mut values = Vec::new();
    for l in lists {
        warnings.extend(l.warnings);
        values.extend(l.values);
    }
    LabelValues::limited(values, limit, warnings)
}

impl Querier for MergeQuerier<'_> {
    fn select(
        &self,
        ctx: &Context,
        sort: bool,
        hints: &SelectHints,
        matchers: &[Matcher],
    ) -> Result<Box<dyn SeriesSet + '_>> {
        if let [only] = self.parts.as_slice()
            && self.warnings.is_empty()
            && !only.partial_ok
        {
            return only.querier.select(ctx, sort, hints, matchers);
        }
        let results = self.each(
            |q| q.select(ctx, true, hints, matchers),
            |a| a.select(ctx, true, hints, matchers),
        )?;
        let mut sets = Vec::with_capacity(results.len());
        let mut warnings = self.warnings.clone();
        for (p, r) in self.parts.iter().zip(results) {
            match r {
                Ok(set) => sets.push(Source {
                    name: p.name.clone(),
                    partial_ok: p.partial_ok,
                    set,
                }),
                Err(e)
                    if p.partial_ok && !matches!(e, Error::Canceled | Error::LimitExceeded(_)) =>
                {
                    warnings.push(partial_warning(&p.name, &e))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Box::new(MergeSeriesSet::from_sources(sets, warnings)))
    }

    fn label_values(
        &self,
        ctx: &Context,
        name: &str,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues> {
        self.label_lookup(
            hints.limit,
            |q| q.label_values(ctx, name, hints, matchers),
            |a| a.label_values(ctx, name, hints, matchers),
        )
    }

    fn label_names(
        &self,
        ctx: &Context,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues> {
        self.label_lookup(
            hints.limit,
            |q| q.label_names(ctx, hints, matchers),
            |a| a.label_names(ctx, hints, matchers),
        )
    }
}

/// One member's series set inside a merge.
struct Source<'a> {
    name: String,
    partial_ok: bool,
    set: Box<dyn SeriesSet + 'a>,
}

/// K-way merge of sorted series sets.
struct MergeSeriesSet<'a> {
    sources: Vec<Source<'a>>,
    heads: Vec<Option<Box<dyn Series>>>,
    started: bool,
    warnings: Warnings,
}

impl<'a> MergeSeriesSet<'a> {
    fn from_sources(sources: Vec<Source<'a>>, warnings: Warnings) -> Self {
        let n = sources.len();
        MergeSeriesSet {
            sources,
            heads: (0..n).map(|_| None).collect(),
            started: false,
            warnings,
        }
    }

    /// Pulls the next series of source `i` into its head. A failing `partial_ok` source is
    /// dropped with a warning; a failing required one fails the merge.
    fn pull(&mut self, i: usize) -> Result<()> {
        match self.sources[i].set.next() {
            Some(Ok(s)) => self.heads[i] = Some(s),
            Some(Err(e)) if self.sources[i].partial_ok => {
                let w = partial_warning(&self.sources[i].name, &e);
                self.warnings.push(w);
                self.heads[i] = None;
            }
            Some(Err(e)) => return Err(e),
            None => self.heads[i] = None,
        }
        Ok(())
    }
}

impl SeriesSet for MergeSeriesSet<'_> {
    fn next(&mut self) -> Option<Result<Box<dyn Series>>> {
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                if let Err(e) = self.pull(i) {
                    return Some(Err(e));
                }
            }
        }
        // The smallest label set among the heads.
        let mut min: Option<usize> = None;
        for (i, h) in self.heads.iter().enumerate() {
            if let Some(h) = h {
                let better = match min.and_then(|m| self.heads[m].as_ref()) {
                    None => true,
                    Some(cur) => h.labels().cmp(cur.labels()) == Ordering::Less,
                };
                if better {
                    min = Some(i);
                }
            }
        }
        let min = min?;
        let labels = self.heads[min].as_ref()?.labels().clone();
        let mut parts = Vec::new();
        for i in 0..self.heads.len() {
            if self.heads[i]
                .as_ref()
                .is_some_and(|h| *h.labels() == labels)
            {
                if let Some(h) = self.heads[i].take() {
                    parts.push(h);
                }
                if let Err(e) = self.pull(i) {
                    return Some(Err(e));
                }
            }
        }
        if parts.len() == 1 {
            return parts.pop().map(Ok);
        }
        Some(Ok(Box::new(ChainSeries { labels, parts })))
    }

    fn warnings(&self) -> Warnings {
        let mut w = self.warnings.clone();
        for s in &self.sources {
            w.extend(s.set.warnings());
        }
        w
    }
}

/// Several series with the same labels seen as one.
struct ChainSeries {
    labels: Labels,
    parts: Vec<Box<dyn Series>>,
}

impl Series for ChainSeries {
    fn labels(&self) -> &Labels {
        &self.labels
    }
    fn iter(&self) -> Box<dyn SampleIterator + '_> {
        Box::new(ChainIterator {
            iters: self.parts.iter().map(|p| p.iter()).collect(),
            heads: Vec::new(),
            started: false,
            last_t: None,
        })
    }
}

/// Merges sample iterators by time; at equal timestamps the earliest iterator wins.
struct ChainIterator<'a> {
    iters: Vec<Box<dyn SampleIterator + 'a>>,
    heads: Vec<Option<Sample>>,
    started: bool,
    last_t: Option<i64>,
}

impl SampleIterator for ChainIterator<'_> {
    fn next(&mut self) -> Result<Option<Sample>> {
        if !self.started {
            self.started = true;
            self.heads = self
                .iters
                .iter_mut()
                .map(|i| i.next())
                .collect::<Result<_>>()?;
        }
        loop {
            let mut min: Option<usize> = None;
            for (i, h) in self.heads.iter().enumerate() {
                if let Some(h) = h
                    && min.is_none_or(|m| self.heads[m].is_some_and(|c| h.t < c.t))
                {
                    min = Some(i);
                }
            }
            let Some(i) = min else { return Ok(None) };
            let s = self.heads[i];
            self.heads[i] = self.iters[i].next()?;
            let Some(s) = s else { return Ok(None) };
            if self.last_t.is_some_and(|t| t >= s.t) {
                continue; // duplicate timestamp from a later store
            }
            self.last_t = Some(s.t);
            return Ok(Some(s));
        }
    }

    fn append_histograms(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<HistogramSample>,
    ) -> Result<()> {
        // Every part's histograms in time order; at equal timestamps the earliest part wins,
        // as for floats.
        let mut parts = Vec::with_capacity(self.iters.len());
        for it in &mut self.iters {
            let mut part = Vec::new();
            it.append_histograms(mint, maxt, &mut part)?;
            parts.push(part);
        }
        merge_parts(parts, |h| h.t, out);
        Ok(())
    }

    fn append_start_timestamps(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<crate::StartTimestamp>,
    ) -> Result<()> {
        // As for histograms: every part's start timestamps, the earliest part's at equal
        // timestamps.
        let mut parts = Vec::with_capacity(self.iters.len());
        for it in &mut self.iters {
            let mut part = Vec::new();
            it.append_start_timestamps(mint, maxt, &mut part)?;
            parts.push(part);
        }
        merge_parts(parts, |s| s.t, out);
        Ok(())
    }
}

/// Merges the parts' time-ordered side-stream items into `out` in time order; at equal
/// timestamps the item of the earliest part wins.
fn merge_parts<T>(parts: Vec<Vec<T>>, t: impl Fn(&T) -> i64, out: &mut Vec<T>) {
    let mut all: Vec<(i64, usize, T)> = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        all.extend(part.into_iter().map(|x| (t(&x), i, x)));
    }
    all.sort_by_key(|(t, i, _)| (*t, *i));
    all.dedup_by_key(|(t, _, _)| *t);
    out.extend(all.into_iter().map(|(_, _, x)| x));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemStorage;
    use crate::{Appendable, collect_series};
    use m3query_model::MatchOp;

    fn load(s: &MemStorage, job: &str, ts: &[i64]) {
        let mut app = s.appender();
        let l = Labels::from_pairs([("__name__", "up"), ("job", job)]);
        for &t in ts {
            app.append(&l, t, t as f64).expect("append");
        }
        app.commit().expect("commit");
    }

    fn up() -> Vec<Matcher> {
        vec![Matcher::new(MatchOp::Equal, "__name__", "up").expect("valid")]
    }

    #[test]
    fn merges_histograms_across_stores() {
        use m3query_model::FloatHistogram;
        let a = Arc::new(MemStorage::new());
        let b = Arc::new(MemStorage::new());
        let l = Labels::from_pairs([("__name__", "h")]);
        let h = |count: f64| FloatHistogram {
            count,
            ..FloatHistogram::default()
        };
        for (s, ts) in [(&a, [0, 10]), (&b, [10, 20])] {
            let mut app = s.appender();
            for t in ts {
                app.append_histogram(
                    &l,
                    t,
                    &h(t as f64 + if Arc::ptr_eq(s, &a) { 0.0 } else { 0.5 }),
                )
                .expect("append");
            }
            app.commit().expect("commit");
        }
        let m = MergeQueryable::from_stores(vec![a.clone(), b.clone()]);
        let q = m.querier(0, 100).expect("querier");
        let mut set = q
            .select(
                &Context::background(),
                true,
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
        let got: Vec<(i64, f64)> = hs.iter().map(|h| (h.t, h.h.count)).collect();
        assert_eq!(got, vec![(0, 0.0), (10, 10.0), (20, 20.5)]);
    }

    #[test]
    fn merges_and_dedups_across_stores() {
        let a = Arc::new(MemStorage::new());
        let b = Arc::new(MemStorage::new());
        load(&a, "x", &[0, 10, 20]);
        load(&b, "x", &[10, 15, 30]);
        load(&b, "w", &[5]);
        load(&a, "z", &[5]);
        let m = MergeQueryable::from_stores(vec![a.clone(), b.clone()]);
        let q = m.querier(0, 100).expect("querier");
        let mut set = q
            .select(&Context::background(), true, &SelectHints::default(), &up())
            .expect("select");
        let (series, _) = collect_series(set.as_mut(), 0, 100).expect("collect");
        let jobs: Vec<_> = series
            .iter()
            .map(|s| s.labels.get("job").unwrap_or(""))
            .collect();
        assert_eq!(jobs, vec!["w", "x", "z"]);
        let ts: Vec<_> = series[1].samples.iter().map(|s| s.t).collect();
        assert_eq!(ts, vec![0, 10, 15, 20, 30]);
        let names = q
            .label_values(&Context::background(), "job", &LabelHints::default(), &[])
            .expect("values");
        assert_eq!(names.values, vec!["w", "x", "z"]);
        assert_eq!(m.min_time(), Some(0));
    }

    /// A store that is down.
    struct Down;
    impl Queryable for Down {
        fn querier(&self, _: i64, _: i64) -> Result<Box<dyn Querier + '_>> {
            Ok(Box::new(DownQuerier))
        }
    }
    struct DownQuerier;
    impl Querier for DownQuerier {
        fn select(
            &self,
            _: &Context,
            _: bool,
            _: &SelectHints,
            _: &[Matcher],
        ) -> Result<Box<dyn SeriesSet + '_>> {
            Err(Error::Unavailable {
                store: "down".into(),
                message: "connection refused".into(),
            })
        }
        fn label_values(
            &self,
            _: &Context,
            _: &str,
            _: &LabelHints,
            _: &[Matcher],
        ) -> Result<LabelValues> {
            Err(Error::Unavailable {
                store: "down".into(),
                message: "connection refused".into(),
            })
        }
        fn label_names(&self, _: &Context, _: &LabelHints, _: &[Matcher]) -> Result<LabelValues> {
            self.label_values(&Context::background(), "", &LabelHints::default(), &[])
        }
    }

    #[test]
    fn partial_responses_warn_or_fail() {
        let a = Arc::new(MemStorage::new());
        load(&a, "x", &[0, 10]);
        let member = |partial_ok| Member {
            name: "prom-b".into(),
            queryable: Arc::new(Down),
            partial_ok,
            read_recent: true,
        };
        let m = MergeQueryable::new(vec![Member::required("local", a.clone()), member(true)]);
        let q = m.querier(0, 100).expect("querier");
        let mut set = q
            .select(&Context::background(), true, &SelectHints::default(), &up())
            .expect("partial select");
        let (series, w) = collect_series(set.as_mut(), 0, 100).expect("collect");
        assert_eq!(series.len(), 1);
        assert!(
            w.iter()
                .any(|w| w.contains("prom-b") && w.contains("connection refused")),
            "{w}"
        );
        let v = q
            .label_values(&Context::background(), "job", &LabelHints::default(), &[])
            .expect("values");
        assert_eq!(v.values, vec!["x"]);
        assert_eq!(v.warnings.len(), 1);

        let m = MergeQueryable::new(vec![Member::required("local", a), member(false)]);
        let q = m.querier(0, 100).expect("querier");
        assert!(matches!(
            q.select(&Context::background(), true, &SelectHints::default(), &up()),
            Err(Error::Unavailable { .. })
        ));
    }

    #[test]
    fn read_recent_false_defers_to_local() {
        let local = Arc::new(MemStorage::new());
        let remote = Arc::new(MemStorage::new());
        load(&local, "x", &[1000, 2000]);
        load(&remote, "old", &[10]);
        let m = MergeQueryable::new(vec![
            Member::required("local", local.clone()),
            Member {
                name: "r".into(),
                queryable: remote,
                partial_ok: true,
                read_recent: false,
            },
        ])
        .with_local(local);
        let count = |mint| {
            let q = m.querier(mint, 5000).expect("querier");
            let mut set = q
                .select(&Context::background(), true, &SelectHints::default(), &up())
                .expect("select");
            collect_series(set.as_mut(), 0, 5000)
                .expect("collect")
                .0
                .len()
        };
        assert_eq!(count(0), 2, "range reaches before local data: remote asked");
        assert_eq!(count(1500), 1, "local covers the range: remote skipped");
    }

    /// How a store with an asynchronous side behaves in a test.
    #[derive(Clone, Copy, PartialEq)]
    enum How {
        Answer,
        Panic,
        /// Its `block_on` refuses, as a remote store's does on a runtime's thread.
        Refuse,
    }

    type Log = Arc<std::sync::Mutex<Vec<String>>>;

    fn note(log: &Log, what: String) {
        log.lock().expect("log").push(what);
    }

    /// A store that waits on "the network": its queries are futures that are pending once
    /// before answering from `data`.
    struct Net {
        name: &'static str,
        data: Arc<MemStorage>,
        how: How,
        log: Log,
    }

    impl Queryable for Net {
        fn querier(&self, mint: i64, maxt: i64) -> Result<Box<dyn Querier + '_>> {
            Ok(Box::new(NetQuerier {
                inner: self.data.querier(mint, maxt)?,
                net: self,
            }))
        }
    }

    struct NetQuerier<'a> {
        inner: Box<dyn Querier + 'a>,
        net: &'a Net,
    }

    impl NetQuerier<'_> {
        /// What a query does on "the network": logs that it started, waits once, answers.
        async fn round_trip(&self) {
            note(&self.net.log, format!("{} sent", self.net.name));
            let mut waited = false;
            std::future::poll_fn(|cx| {
                if waited {
                    return Poll::Ready(());
                }
                waited = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            })
            .await;
            if self.net.how == How::Panic {
                panic!("{} broke", self.net.name);
            }
        }
    }

    impl Querier for NetQuerier<'_> {
        fn select(
            &self,
            ctx: &Context,
            sort: bool,
            hints: &SelectHints,
            matchers: &[Matcher],
        ) -> Result<Box<dyn SeriesSet + '_>> {
            self.inner.select(ctx, sort, hints, matchers)
        }
        fn label_values(
            &self,
            ctx: &Context,
            name: &str,
            hints: &LabelHints,
            matchers: &[Matcher],
        ) -> Result<LabelValues> {
            self.inner.label_values(ctx, name, hints, matchers)
        }
        fn label_names(
            &self,
            ctx: &Context,
            hints: &LabelHints,
            matchers: &[Matcher],
        ) -> Result<LabelValues> {
            self.inner.label_names(ctx, hints, matchers)
        }
        fn as_async(&self) -> Option<&dyn AsyncQuerier> {
            Some(self)
        }
    }

    impl AsyncQuerier for NetQuerier<'_> {
        fn select<'s: 'f, 'f>(
            &'s self,
            ctx: &'f Context,
            sort: bool,
            hints: &'f SelectHints,
            matchers: &'f [Matcher],
        ) -> BoxFuture<'f, Result<Box<dyn SeriesSet + 's>>> {
            Box::pin(async move {
                self.round_trip().await;
                self.inner.select(ctx, sort, hints, matchers)
            })
        }
        fn label_values<'a>(
            &'a self,
            ctx: &'a Context,
            name: &'a str,
            hints: &'a LabelHints,
            matchers: &'a [Matcher],
        ) -> BoxFuture<'a, Result<LabelValues>> {
            Box::pin(async move {
                self.round_trip().await;
                self.inner.label_values(ctx, name, hints, matchers)
            })
        }
        fn label_names<'a>(
            &'a self,
            ctx: &'a Context,
            hints: &'a LabelHints,
            matchers: &'a [Matcher],
        ) -> BoxFuture<'a, Result<LabelValues>> {
            Box::pin(async move {
                self.round_trip().await;
                self.inner.label_names(ctx, hints, matchers)
            })
        }
        fn block_on(&self, mut fut: BoxFuture<'_, ()>) -> Result<()> {
            if self.net.how == How::Refuse {
                return Err(Error::Other("cannot block here".into()));
            }
            struct Unpark(std::thread::Thread);
            impl std::task::Wake for Unpark {
                fn wake(self: Arc<Self>) {
                    self.0.unpark();
                }
            }
            let waker = Arc::new(Unpark(std::thread::current())).into();
            let mut cx = std::task::Context::from_waker(&waker);
            while fut.as_mut().poll(&mut cx).is_pending() {
                std::thread::park();
            }
            note(&self.net.log, format!("{} drove the join", self.net.name));
            Ok(())
        }
    }

    /// A local store that logs its selects.
    struct Local(Arc<MemStorage>, Log);
    impl Queryable for Local {
        fn querier(&self, mint: i64, maxt: i64) -> Result<Box<dyn Querier + '_>> {
            Ok(Box::new(LocalQuerier(self.0.querier(mint, maxt)?, &self.1)))
        }
    }
    struct LocalQuerier<'a>(Box<dyn Querier + 'a>, &'a Log);
    impl Querier for LocalQuerier<'_> {
        fn select(
            &self,
            ctx: &Context,
            sort: bool,
            hints: &SelectHints,
            matchers: &[Matcher],
        ) -> Result<Box<dyn SeriesSet + '_>> {
            note(self.1, "local read".into());
            self.0.select(ctx, sort, hints, matchers)
        }
        fn label_values(
            &self,
            ctx: &Context,
            name: &str,
            hints: &LabelHints,
            matchers: &[Matcher],
        ) -> Result<LabelValues> {
            note(self.1, "local read".into());
            self.0.label_values(ctx, name, hints, matchers)
        }
        fn label_names(
            &self,
            ctx: &Context,
            hints: &LabelHints,
            matchers: &[Matcher],
        ) -> Result<LabelValues> {
            note(self.1, "local read".into());
            self.0.label_names(ctx, hints, matchers)
        }
    }

    fn net(name: &'static str, job: &str, how: How, log: &Log, partial_ok: bool) -> Member {
        let data = Arc::new(MemStorage::new());
        load(&data, job, &[0, 10]);
        Member {
            name: name.into(),
            queryable: Arc::new(Net {
                name,
                data,
                how,
                log: log.clone(),
            }),
            partial_ok,
            read_recent: true,
        }
    }

    fn jobs_of(q: &dyn Querier) -> Result<(Vec<String>, Warnings)> {
        let mut set = q.select(&Context::background(), true, &SelectHints::default(), &up())?;
        let (series, w) = collect_series(set.as_mut(), 0, 100)?;
        let jobs = series
            .iter()
            .map(|s| s.labels.get("job").unwrap_or("").to_string())
            .collect();
        Ok((jobs, w))
    }

    /// Stores with an asynchronous side are joined and driven by one `block_on` on the
    /// calling thread; the local store is read once every remote request is out.
    #[test]
    fn remote_members_are_joined_and_sent_before_local_reads() {
        let log = Log::default();
        let local = Arc::new(MemStorage::new());
        load(&local, "l", &[0, 10]);
        let m = MergeQueryable::new(vec![
            Member::required("local", Arc::new(Local(local, log.clone()))),
            net("a", "x", How::Answer, &log, false),
            net("b", "y", How::Answer, &log, false),
        ]);
        let q = m.querier(0, 100).expect("querier");
        let (jobs, w) = jobs_of(q.as_ref()).expect("select");
        assert_eq!(jobs, vec!["l", "x", "y"]);
        assert!(w.is_empty(), "{w}");
        let expected = vec!["a sent", "b sent", "local read", "a drove the join"];
        assert_eq!(*log.lock().expect("log"), expected);
        log.lock().expect("log").clear();
        let v = q
            .label_values(&Context::background(), "job", &LabelHints::default(), &[])
            .expect("values");
        assert_eq!(v.values, vec!["l", "x", "y"]);
        assert_eq!(*log.lock().expect("log"), expected);
        let n = q
            .label_names(&Context::background(), &LabelHints { limit: 1 }, &[])
            .expect("names");
        assert_eq!(n.values, vec!["__name__"]);
    }

    /// A store whose future panics fails as a store does: a warning when it may be left
    /// out, an error when it is required.
    #[test]
    fn a_panicking_store_future_is_that_stores_failure() {
        let log = Log::default();
        let m = MergeQueryable::new(vec![
            net("a", "x", How::Answer, &log, false),
            net("b", "y", How::Panic, &log, true),
        ]);
        let q = m.querier(0, 100).expect("querier");
        let (jobs, w) = jobs_of(q.as_ref()).expect("partial select");
        assert_eq!(jobs, vec!["x"]);
        assert!(
            w.iter()
                .any(|w| w.contains("\"b\"") && w.contains("panicked")),
            "{w}"
        );
        let m = MergeQueryable::new(vec![
            net("a", "x", How::Answer, &log, false),
            net("b", "y", How::Panic, &log, false),
        ]);
        let q = m.querier(0, 100).expect("querier");
        assert!(matches!(jobs_of(q.as_ref()), Err(Error::Other(e)) if e.to_string() == PANICKED));
    }

    /// When the calling thread must not block, the fan-out fails as a whole, whatever the
    /// stores' `partial_ok`: answering from the local store alone would hide the bug.
    #[test]
    fn a_refused_wait_fails_the_query() {
        let log = Log::default();
        let local = Arc::new(MemStorage::new());
        load(&local, "l", &[0, 10]);
        let m = MergeQueryable::new(vec![
            Member::required("local", local),
            net("a", "x", How::Refuse, &log, true),
        ]);
        let q = m.querier(0, 100).expect("querier");
        assert!(
            matches!(jobs_of(q.as_ref()), Err(Error::Other(e)) if e.to_string() == "cannot block here")
        );
        assert!(
            q.label_names(&Context::background(), &LabelHints::default(), &[])
                .is_err()
        );
        assert!(log.lock().expect("log").is_empty(), "nothing ran");
    }
}
