//! A small in-memory store: every series in a sorted map, samples in a `Vec`.
//!
//! It exists for tests and fixtures (the promqltest runner, engine unit tests, handler tests):
//! simple enough to be obviously right, so it can serve as the model other stores are checked
//! against. The embedded TSDB is the store for real data.

use std::collections::{BTreeMap, HashMap};

use m3query_model::{Labels, Matcher, Sample};
use parking_lot::RwLock;

use crate::{
    Appendable, Appender, Context, Error, LabelHints, LabelValues, Querier, Queryable, Result,
    SelectHints, SeriesSet, VecSeries, VecSeriesSet, Warnings, matchers_select_something,
};

/// An in-memory store.
#[derive(Debug, Default)]
pub struct MemStorage {
    series: RwLock<BTreeMap<Labels, Vec<Sample>>>,
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
        self.series.read().values().map(Vec::len).sum()
    }

    fn matching<'a>(
        map: &'a BTreeMap<Labels, Vec<Sample>>,
        matchers: &'a [Matcher],
    ) -> impl Iterator<Item = (&'a Labels, &'a Vec<Sample>)> + 'a {
        map.iter().filter(move |(l, _)| {
            matchers
                .iter()
                .all(|m| m.matches(l.get(&m.name).unwrap_or("")))
        })
    }
}

fn has_samples_in(samples: &[Sample], mint: i64, maxt: i64) -> bool {
    let i = samples.partition_point(|s| s.t < mint);
    samples.get(i).is_some_and(|s| s.t <= maxt)
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
            .filter_map(|s| s.first().map(|x| x.t))
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
        for (labels, samples) in MemStorage::matching(&map, matchers) {
            let lo = samples.partition_point(|s| s.t < mint);
            let hi = samples.partition_point(|s| s.t <= maxt);
            if lo >= hi {
                continue;
            }
            if hints.limit > 0 && out.len() >= hints.limit {
                break;
            }
            out.push(VecSeries {
                labels: labels.clone(),
                samples: samples[lo..hi].to_vec(),
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

struct MemAppender<'a> {
    store: &'a MemStorage,
    pending: Vec<(Labels, Sample)>,
    /// Last timestamp and value per series within this transaction.
    last: HashMap<Labels, Sample>,
}

impl Appender for MemAppender<'_> {
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<()> {
        if labels.is_empty() {
            return Err(Error::InvalidLabels("empty label set".into()));
        }
        let last = match self.last.get(labels) {
            Some(s) => Some(*s),
            None => self
                .store
                .series
                .read()
                .get(labels)
                .and_then(|s| s.last().copied()),
        };
        if let Some(last) = last {
            if t < last.t {
                return Err(Error::OutOfOrderSample);
            }
            if t == last.t {
                if last.v.to_bits() == v.to_bits() {
                    return Ok(());
                }
                return Err(Error::DuplicateSampleForTimestamp);
            }
        }
        let s = Sample::new(t, v);
        self.last.insert(labels.clone(), s);
        self.pending.push((labels.clone(), s));
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let mut map = self.store.series.write();
        for (l, s) in self.pending {
            map.entry(l).or_default().push(s);
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
