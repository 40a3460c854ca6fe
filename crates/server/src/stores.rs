//! What remote write carries besides samples: metric metadata and exemplars, kept in memory.
//!
//! Prometheus keeps both in memory too (metadata from scrape caches, exemplars in a circular
//! buffer of `storage.exemplars.max-exemplars`, default 100,000). They are bounded here the
//! same way and are not persisted: after a restart the next remote-write batches refill them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use m3query_model::{Exemplar, Labels, Matcher, Metadata};
use parking_lot::RwLock;

/// Metadata by metric family name; each family keeps its distinct entries.
#[derive(Debug)]
pub struct MetadataStore {
    families: RwLock<BTreeMap<String, Vec<Metadata>>>,
    max_families: usize,
}

/// Entries kept per family: a family seldom has more than one; a few allow for changes.
const MAX_PER_FAMILY: usize = 8;

impl MetadataStore {
    /// A store of at most `max_families` families.
    pub fn new(max_families: usize) -> Self {
        MetadataStore {
            families: RwLock::new(BTreeMap::new()),
            max_families,
        }
    }

    /// Adds entries; past `max_families`, new families are dropped.
    pub fn add(&self, entries: impl IntoIterator<Item = (String, Metadata)>) {
        let mut f = self.families.write();
        for (name, md) in entries {
            let len = f.len();
            match f.get_mut(&name) {
                Some(list) if !list.contains(&md) => {
                    if list.len() >= MAX_PER_FAMILY {
                        list.remove(0);
                    }
                    list.push(md);
                }
                Some(_) => {}
                None if len < self.max_families => {
                    f.insert(name, vec![md]);
                }
                None => {}
            }
        }
    }

    /// `/api/v1/metadata`: families (all, or one `metric`), at most `limit` families and
    /// `limit_per_metric` entries each (0: no limit).
    pub fn query(
        &self,
        metric: Option<&str>,
        limit: usize,
        limit_per_metric: usize,
    ) -> BTreeMap<String, Vec<Metadata>> {
        let f = self.families.read();
        let take = |list: &Vec<Metadata>| -> Vec<Metadata> {
            let n = if limit_per_metric == 0 {
                list.len()
            } else {
                limit_per_metric.min(list.len())
            };
            list[..n].to_vec()
        };
        let mut out = BTreeMap::new();
        match metric {
            Some(m) => {
                if let Some(list) = f.get(m) {
                    out.insert(m.to_string(), take(list));
                }
            }
            None => {
                for (k, v) in f.iter() {
                    if limit > 0 && out.len() >= limit {
                        break;
                    }
                    out.insert(k.clone(), take(v));
                }
            }
        }
        out
    }
}

/// A bounded, circular exemplar store. When full, the oldest exemplars go first.
#[derive(Debug)]
pub struct ExemplarStore {
    inner: RwLock<ExemplarRing>,
}

#[derive(Debug)]
struct ExemplarRing {
    capacity: usize,
    ring: VecDeque<(Labels, Exemplar)>,
    /// Newest exemplar timestamp per series: older or equal ones are duplicates or out of
    /// order, as Prometheus treats them.
    newest: HashMap<Labels, i64>,
}

impl ExemplarStore {
    /// A ring of the newest `capacity` exemplars.
    pub fn new(capacity: usize) -> Self {
        ExemplarStore {
            inner: RwLock::new(ExemplarRing {
                capacity,
                ring: VecDeque::new(),
                newest: HashMap::new(),
            }),
        }
    }

    /// Adds exemplars; returns how many were stored (the rest were duplicates or older than
    /// the series' newest).
    pub fn add(&self, exemplars: Vec<(Labels, Exemplar)>) -> usize {
        if exemplars.is_empty() || self.inner.read().capacity == 0 {
            return 0;
        }
        let mut r = self.inner.write();
        let mut stored = 0;
        for (series, e) in exemplars {
            if r.newest.get(&series).is_some_and(|t| *t >= e.t) {
                continue;
            }
            r.newest.insert(series.clone(), e.t);
            if r.ring.len() >= r.capacity
                && let Some((old, old_e)) = r.ring.pop_front()
                && r.newest.get(&old) == Some(&old_e.t)
            {
                r.newest.remove(&old);
            }
            r.ring.push_back((series, e));
            stored += 1;
        }
        stored
    }

    /// Exemplars of series matching any of `selectors`, with `start <= t <= end`, grouped by
    /// series (sorted by labels), each group in time order.
    pub fn query(
        &self,
        selectors: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Vec<(Labels, Vec<Exemplar>)> {
        let r = self.inner.read();
        let mut out: BTreeMap<Labels, Vec<Exemplar>> = BTreeMap::new();
        for (series, e) in r.ring.iter() {
            if e.t < start || e.t > end {
                continue;
            }
            let hit = selectors.iter().any(|ms| {
                ms.iter()
                    .all(|m| m.matches(series.get(&m.name).unwrap_or("")))
            });
            if hit {
                out.entry(series.clone()).or_default().push(e.clone());
            }
        }
        out.into_iter()
            .map(|(l, mut v)| {
                v.sort_by_key(|e| e.t);
                (l, v)
            })
            .collect()
    }

    /// Exemplars held.
    pub fn len(&self) -> usize {
        self.inner.read().ring.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3query_model::MetricType;

    #[test]
    fn metadata_dedups_and_limits() {
        let s = MetadataStore::new(2);
        let md = |h: &str| Metadata {
            metric_type: MetricType::Counter,
            help: h.into(),
            unit: String::new(),
        };
        s.add([
            ("a".into(), md("x")),
            ("a".into(), md("x")),
            ("a".into(), md("y")),
            ("b".into(), md("z")),
            ("c".into(), md("over the family cap")),
        ]);
        let all = s.query(None, 0, 0);
        assert_eq!(all.len(), 2);
        assert_eq!(all["a"].len(), 2);
        assert_eq!(s.query(None, 1, 0).len(), 1);
        assert_eq!(s.query(None, 0, 1)["a"].len(), 1);
        assert_eq!(s.query(Some("b"), 0, 0).len(), 1);
        assert!(s.query(Some("nope"), 0, 0).is_empty());
    }

    #[test]
    fn exemplars_ring_and_query() {
        let s = ExemplarStore::new(3);
        let series = |i: &str| Labels::from_pairs([("__name__", "m"), ("i", i)]);
        let ex = |t: i64| Exemplar {
            labels: Labels::from_pairs([("trace_id", "abc")]),
            value: 1.0,
            t,
        };
        assert_eq!(s.add(vec![(series("a"), ex(1)), (series("a"), ex(1))]), 1);
        s.add(vec![
            (series("b"), ex(2)),
            (series("a"), ex(3)),
            (series("b"), ex(4)),
        ]);
        assert_eq!(s.len(), 3, "oldest evicted");
        let m = vec![vec![Matcher::equal("__name__", "m")]];
        let got = s.query(&m, 0, 10);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.iter().map(|e| e.t).collect::<Vec<_>>(), vec![3]);
        assert_eq!(s.query(&m, 4, 4).len(), 1);
    }
}
