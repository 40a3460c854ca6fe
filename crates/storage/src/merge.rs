//! Fan-out: one [`Queryable`] over several stores.
//!
//! Every member is queried concurrently (one thread per member for a select, each carrying the
//! caller's tracing span). Series with the same labels from different members become one
//! series whose samples are the time-ordered union; where two members hold a sample at the same
//! timestamp the first member's is kept, so identical replicas deduplicate.
//!
//! Partial responses: a member marked `partial_ok` that fails (unreachable, timed out, broken)
//! is left out with a warning naming it, and the query answers from the others. A member that
//! is not `partial_ok` fails the whole query.

use std::cmp::Ordering;
use std::sync::Arc;

use m3query_model::{Labels, Matcher, Sample};

use crate::{
    Context, Error, LabelHints, LabelValues, Querier, Queryable, Result, SampleIterator,
    SelectHints, Series, SeriesSet, Warnings,
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
    /// Runs `f` on every part, concurrently when there are several, each thread inside the
    /// caller's span so per-member spans nest under the request.
    fn each<'s, T: Send>(&'s self, f: impl Fn(&'s Part<'a>) -> Result<T> + Sync) -> Vec<Result<T>> {
        if self.parts.len() <= 1 {
            return self.parts.iter().map(&f).collect();
        }
        let span = tracing::Span::current();
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .parts
                .iter()
                .map(|p| {
                    let span = span.clone();
                    let f = &f;
                    s.spawn(move || span.in_scope(|| f(p)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Other("a store's query thread panicked".into()))
                    })
                })
                .collect()
        })
    }

    fn label_lookup<'s>(
        &'s self,
        limit: usize,
        f: impl Fn(&'s Part<'a>) -> Result<LabelValues> + Sync,
    ) -> Result<LabelValues> {
        let mut lists = Vec::with_capacity(self.parts.len());
        let mut warnings = self.warnings.clone();
        for (p, r) in self.parts.iter().zip(self.each(f)) {
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
        let results = self.each(|p| p.querier.select(ctx, true, hints, matchers));
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
        self.label_lookup(hints.limit, |p| {
            p.querier.label_values(ctx, name, hints, matchers)
        })
    }

    fn label_names(
        &self,
        ctx: &Context,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues> {
        self.label_lookup(hints.limit, |p| p.querier.label_names(ctx, hints, matchers))
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
}
