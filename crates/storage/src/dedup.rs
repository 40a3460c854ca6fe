//! Deduplication of high-availability replicas.
//!
//! Two Prometheus servers scraping the same targets hold the same series, told apart by an
//! external label such as `replica="a"` / `replica="b"`, with samples at slightly different
//! times and gaps where one of them was down. [`DedupQueryable`] drops the replica labels,
//! groups the series that become identical, and merges each group into one series that
//! follows one replica and switches to another only across a gap, after Thanos's
//! deduplicating iterator: after taking a sample from one replica, the others are penalised
//! by twice the last sample interval (5 s before any interval is known), so their slightly
//! offset samples are not interleaved and the sample rate is not inflated. See
//! [`dedup_pair`] for where we differ.

use std::collections::BTreeMap;

use m3query_model::{Labels, Matcher, Sample};

use crate::{
    Context, LabelHints, LabelValues, Querier, Queryable, Result, SelectHints, SeriesSet,
    VecSeries, VecSeriesSet,
};

/// Penalty before any sample interval is known, in ms (timestamps are ms and scrape intervals
/// are seconds long).
const INITIAL_PENALTY_MS: i64 = 5000;

/// A store whose replicas, told apart by `labels`, are merged into one.
pub struct DedupQueryable<Q> {
    inner: Q,
    labels: Vec<String>,
}

impl<Q: Queryable> DedupQueryable<Q> {
    /// Merges the replicas of `inner` that differ only in `labels` (which are dropped).
    pub fn new(inner: Q, labels: Vec<String>) -> Self {
        DedupQueryable { inner, labels }
    }
}

impl<Q: Queryable> Queryable for DedupQueryable<Q> {
    fn querier(&self, mint: i64, maxt: i64) -> Result<Box<dyn Querier + '_>> {
        Ok(Box::new(DedupQuerier {
            inner: self.inner.querier(mint, maxt)?,
            labels: &self.labels,
            mint,
            maxt,
        }))
    }

    fn min_time(&self) -> Option<i64> {
        self.inner.min_time()
    }
}

struct DedupQuerier<'a> {
    inner: Box<dyn Querier + 'a>,
    labels: &'a [String],
    mint: i64,
    maxt: i64,
}

impl Querier for DedupQuerier<'_> {
    fn select(
        &self,
        ctx: &Context,
        _sort: bool,
        hints: &SelectHints,
        matchers: &[Matcher],
    ) -> Result<Box<dyn SeriesSet + '_>> {
        let mut set = self.inner.select(ctx, true, hints, matchers)?;
        let mut groups: BTreeMap<Labels, Vec<Vec<Sample>>> = BTreeMap::new();
        let mut n = 0usize;
        while let Some(s) = set.next() {
            let s = s?;
            let mut b = s.labels().builder();
            for l in self.labels {
                b.del(l);
            }
            let mut samples = Vec::new();
            s.iter().append_range(self.mint, self.maxt, &mut samples)?;
            groups.entry(b.labels()).or_default().push(samples);
            n += 1;
            if n.is_multiple_of(1024) {
                ctx.check()?;
            }
        }
        let warnings = set.warnings();
        let series = groups
            .into_iter()
            .map(|(labels, replicas)| VecSeries {
                labels,
                samples: dedup_replicas(replicas),
            })
            .collect();
        Ok(Box::new(VecSeriesSet::new(series, warnings)))
    }

    fn label_values(
        &self,
        ctx: &Context,
        name: &str,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues> {
        if self.labels.iter().any(|l| l == name) {
            return Ok(LabelValues::default());
        }
        self.inner.label_values(ctx, name, hints, matchers)
    }

    fn label_names(
        &self,
        ctx: &Context,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> Result<LabelValues> {
        let mut r = self.inner.label_names(ctx, hints, matchers)?;
        r.values.retain(|v| !self.labels.contains(v));
        Ok(r)
    }
}

/// Merges replicas of one series, folding them pairwise.
pub fn dedup_replicas(mut replicas: Vec<Vec<Sample>>) -> Vec<Sample> {
    let Some(mut acc) = replicas.pop() else {
        return Vec::new();
    };
    // Fold in reverse so the first replica is preferred on ties, as it was listed first.
    while let Some(next) = replicas.pop() {
        acc = dedup_pair(&next, &acc);
    }
    acc
}

/// Merges two replicas of one series.
///
/// The replica the last sample came from is "current". The other replica's next sample counts
/// only if it is at least twice the last sample interval after the last sample (Thanos's
/// penalty), so slightly offset replicas are not interleaved. When the current replica has a
/// gap longer than that (or has ended), the other replica's samples count from half an
/// interval after the last sample instead: this is where m3query differs from Thanos, which
/// drops the other replica's first samples after a gap; replicas with identical timestamps
/// then merge without losing any sample. Samples are never skipped for good: positions are
/// recomputed from the last sample taken.
pub fn dedup_pair(a: &[Sample], b: &[Sample]) -> Vec<Sample> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let first_at_or_after =
        |s: &[Sample], from: usize, min: i64| from + s[from..].partition_point(|x| x.t < min);
    let (mut i, mut j) = (0usize, 0usize);
    // Which replica the last sample came from (true: a), its time, and the last interval.
    let mut current: Option<bool> = None;
    let mut last_t = i64::MIN;
    let mut interval: Option<i64> = None;
    loop {
        let floor = last_t.saturating_add(1);
        i = first_at_or_after(a, i, floor);
        j = first_at_or_after(b, j, floor);
        let (ca, cb) = match current {
            None => (a.get(i), b.get(j)),
            Some(cur_is_a) => {
                let penalty = interval.map_or(INITIAL_PENALTY_MS, |d| 2 * d);
                let (cur, other, other_from) = if cur_is_a { (a, b, j) } else { (b, a, i) };
                let cur_next = cur.get(if cur_is_a { i } else { j });
                let gap = cur_next.is_none_or(|c| c.t > last_t.saturating_add(penalty));
                let other_min = if gap {
                    last_t.saturating_add((interval.unwrap_or(INITIAL_PENALTY_MS) / 2).max(1))
                } else {
                    last_t.saturating_add(1).saturating_add(penalty)
                };
                let other_next = other.get(first_at_or_after(other, other_from, other_min));
                if cur_is_a {
                    (cur_next, other_next)
                } else {
                    (other_next, cur_next)
                }
            }
        };
        let take_a = match (ca, cb) {
            (None, None) => return out,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) => x.t <= y.t,
        };
        let Some(&x) = (if take_a { ca } else { cb }) else {
            return out;
        };
        if current.is_some() {
            interval = Some(x.t - last_t);
        }
        current = Some(take_a);
        last_t = x.t;
        out.push(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemStorage;
    use crate::{Appendable, collect_series};

    fn s(ts: &[i64], v: f64) -> Vec<Sample> {
        ts.iter().map(|&t| Sample::new(t, v)).collect()
    }

    #[test]
    fn follows_one_replica_and_fills_gaps_from_the_other() {
        // a scrapes at 0,15,30,... with a gap from 45 to 90; b is offset by 2s.
        let a = s(&[0, 15_000, 30_000, 105_000, 120_000], 1.0);
        let b = s(
            &[
                2_000, 17_000, 32_000, 47_000, 62_000, 77_000, 92_000, 107_000,
            ],
            2.0,
        );
        let out = dedup_pair(&a, &b);
        let ts: Vec<i64> = out.iter().map(|x| x.t).collect();
        // a until its gap, b across it and to its end, then a's last sample.
        assert_eq!(
            ts,
            vec![
                0, 15_000, 30_000, 47_000, 62_000, 77_000, 92_000, 107_000, 120_000
            ]
        );
        // No interleaving: the sample rate stays that of one replica.
        assert!(ts.windows(2).all(|w| w[1] - w[0] >= 13_000), "{ts:?}");
    }

    #[test]
    fn identical_timestamps_lose_nothing_across_a_gap() {
        let all: Vec<Sample> = (0..40).map(|i| Sample::new(i * 15_000, i as f64)).collect();
        let a: Vec<Sample> = all
            .iter()
            .copied()
            .filter(|s| !(100_000..250_000).contains(&s.t))
            .collect();
        assert_eq!(dedup_pair(&a, &all), all);
        assert_eq!(dedup_pair(&all, &a), all);
    }

    #[test]
    fn identical_replicas_collapse() {
        let a = s(&[0, 10_000, 20_000], 1.0);
        assert_eq!(dedup_replicas(vec![a.clone(), a.clone(), a.clone()]), a);
        assert!(dedup_replicas(vec![]).is_empty());
        assert_eq!(dedup_pair(&[], &a), a);
    }

    #[test]
    fn queryable_drops_replica_label() {
        let st = MemStorage::new();
        let mut app = st.appender();
        for (rep, off) in [("a", 0), ("b", 1000)] {
            let l = Labels::from_pairs([("__name__", "up"), ("job", "x"), ("replica", rep)]);
            for i in 0..10 {
                app.append(&l, i * 15_000 + off, 1.0).expect("append");
            }
        }
        app.commit().expect("commit");
        let d = DedupQueryable::new(st, vec!["replica".into()]);
        let q = d.querier(0, i64::MAX).expect("querier");
        let mut set = q
            .select(
                &Context::background(),
                true,
                &SelectHints::default(),
                &[Matcher::equal("__name__", "up")],
            )
            .expect("select");
        let (series, _) = collect_series(set.as_mut(), 0, i64::MAX).expect("collect");
        assert_eq!(series.len(), 1);
        assert_eq!(
            series[0].labels,
            Labels::from_pairs([("__name__", "up"), ("job", "x")])
        );
        assert_eq!(series[0].samples.len(), 10);
        let names = q
            .label_names(&Context::background(), &LabelHints::default(), &[])
            .expect("names");
        assert_eq!(names.values, vec!["__name__", "job"]);
    }
}
