//! Fan-out: one [`Queryable`] over several stores.
//!
//! Series with the same labels from different stores become one series whose samples are the
//! time-ordered union; where two stores hold a sample at the same timestamp the first store's
//! is kept (replicas hold identical samples, so this deduplicates them).

use std::cmp::Ordering;
use std::sync::Arc;

use m3query_model::{Labels, Matcher, Sample};

use crate::{
    Context, LabelHints, LabelValues, Querier, Queryable, Result, SampleIterator, SelectHints,
    Series, SeriesSet, Warnings,
};

/// Queries every store and merges the answers.
pub struct MergeQueryable {
    stores: Vec<Arc<dyn Queryable>>,
}

impl MergeQueryable {
    pub fn new(stores: Vec<Arc<dyn Queryable>>) -> Self {
        MergeQueryable { stores }
    }
}

impl Queryable for MergeQueryable {
    fn querier(&self, mint: i64, maxt: i64) -> Result<Box<dyn Querier + '_>> {
        let queriers = self
            .stores
            .iter()
            .map(|s| s.querier(mint, maxt))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(MergeQuerier::new(queriers)))
    }
}

/// A querier over several queriers.
pub struct MergeQuerier<'a> {
    queriers: Vec<Box<dyn Querier + 'a>>,
}

impl<'a> MergeQuerier<'a> {
    pub fn new(queriers: Vec<Box<dyn Querier + 'a>>) -> Self {
        MergeQuerier { queriers }
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
    values.sort();
    values.dedup();
    if limit > 0 {
        values.truncate(limit);
    }
    LabelValues { values, warnings }
}

impl Querier for MergeQuerier<'_> {
    fn select(
        &self,
        ctx: &Context,
        sort: bool,
        hints: &SelectHints,
        matchers: &[Matcher],
    ) -> Result<Box<dyn SeriesSet + '_>> {
        if let [only] = self.queriers.as_slice() {
            return only.select(ctx, sort, hints, matchers);
        }
        let sets = self
            .queriers
            .iter()
            .map(|q| q.select(ctx, true, hints, matchers))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(MergeSeriesSet::new(sets)))
    }

    fn label_values(
        &self,
        ctx: &Context,
        name: &str,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues> {
        let lists = self
            .queriers
            .iter()
            .map(|q| q.label_values(ctx, name, hints, matchers))
            .collect::<Result<Vec<_>>>()?;
        Ok(merge_values(lists, hints.limit))
    }

    fn label_names(
        &self,
        ctx: &Context,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues> {
        let lists = self
            .queriers
            .iter()
            .map(|q| q.label_names(ctx, hints, matchers))
            .collect::<Result<Vec<_>>>()?;
        Ok(merge_values(lists, hints.limit))
    }
}

/// K-way merge of sorted series sets.
pub struct MergeSeriesSet<'a> {
    sets: Vec<Box<dyn SeriesSet + 'a>>,
    heads: Vec<Option<Box<dyn Series>>>,
    started: bool,
}

impl<'a> MergeSeriesSet<'a> {
    pub fn new(sets: Vec<Box<dyn SeriesSet + 'a>>) -> Self {
        let n = sets.len();
        MergeSeriesSet {
            sets,
            heads: (0..n).map(|_| None).collect(),
            started: false,
        }
    }
}

impl SeriesSet for MergeSeriesSet<'_> {
    fn next(&mut self) -> Option<Result<Box<dyn Series>>> {
        if !self.started {
            self.started = true;
            for i in 0..self.sets.len() {
                match self.sets[i].next() {
                    Some(Ok(s)) => self.heads[i] = Some(s),
                    Some(Err(e)) => return Some(Err(e)),
                    None => {}
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
                match self.sets[i].next() {
                    Some(Ok(s)) => self.heads[i] = Some(s),
                    Some(Err(e)) => return Some(Err(e)),
                    None => {}
                }
            }
        }
        if parts.len() == 1 {
            return parts.pop().map(Ok);
        }
        Some(Ok(Box::new(ChainSeries { labels, parts })))
    }

    fn warnings(&self) -> Warnings {
        let mut w = Warnings::new();
        for s in &self.sets {
            w.extend(s.warnings());
        }
        w
    }
}

/// Several series with the same labels seen as one.
pub struct ChainSeries {
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

    #[test]
    fn merges_and_dedups_across_stores() {
        let a = Arc::new(MemStorage::new());
        let b = Arc::new(MemStorage::new());
        load(&a, "x", &[0, 10, 20]);
        load(&b, "x", &[10, 15, 30]);
        load(&b, "w", &[5]);
        load(&a, "z", &[5]);
        let m = MergeQueryable::new(vec![a.clone(), b.clone()]);
        let q = m.querier(0, 100).expect("querier");
        let mm = [Matcher::new(MatchOp::Equal, "__name__", "up").expect("valid")];
        let mut set = q
            .select(&Context::background(), true, &SelectHints::default(), &mm)
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
    }
}
