//! Deduplication of high-availability replicas.
//!
//! Two Prometheus servers scraping the same targets hold the same series, told apart by an
//! external label such as `replica="a"` / `replica="b"`, with samples at slightly different
//! times and gaps where one of them was down. [`DedupQueryable`] drops the replica labels,
//! groups the series that become identical, and merges each group into one series that
//! follows one replica and switches to another only across a gap, the way Thanos's
//! deduplicating iterator does: after taking a sample from one replica, the others are
//! penalised by twice the last sample interval (5 s before any interval is known), so their
//! slightly offset samples are not interleaved and the sample rate is not inflated.

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

/// Merges two replicas of one series with the penalty rule described in the module docs.
/// Samples a penalty skips are skipped for good, as in Thanos: a replica's tail within the
/// penalty of the other's last sample is not used.
pub fn dedup_pair(a: &[Sample], b: &[Sample]) -> Vec<Sample> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    // Next candidate sample of each replica.
    let (mut i, mut j) = (0usize, 0usize);
    let (mut pen_a, mut pen_b) = (0i64, 0i64);
    let mut last_t: Option<i64> = None;
    let first_at_or_after =
        |s: &[Sample], from: usize, min: i64| from + s[from..].partition_point(|x| x.t < min);
    loop {
        if let Some(lt) = last_t {
            // Past the last sample taken, plus the replica's penalty.
            i = first_at_or_after(a, i, lt.saturating_add(1).saturating_add(pen_a));
            j = first_at_or_after(b, j, lt.saturating_add(1).saturating_add(pen_b));
        }
        let (ca, cb) = (a.get(i), b.get(j));
        let take_a = match (ca, cb) {
            (None, None) => return out,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) => x.t <= y.t,
        };
        let x = if take_a { ca } else { cb };
        let Some(&x) = x else { return out };
        // The other replica is penalised only while it still has samples to offer.
        let penalty = last_t.map_or(INITIAL_PENALTY_MS, |lt| 2 * (x.t - lt));
        if take_a {
            pen_a = 0;
            pen_b = if cb.is_some() { penalty } else { 0 };
            i += 1;
        } else {
            pen_b = 0;
            pen_a = if ca.is_some() { penalty } else { 0 };
            j += 1;
        }
        last_t = Some(x.t);
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
        // a until its gap, then b across it (the penalty of twice a's interval skips 47), and
        // b to its end: a's samples fall inside b's penalty window.
        assert_eq!(ts, vec![0, 15_000, 30_000, 62_000, 77_000, 92_000, 107_000]);
        // No interleaving: the sample rate stays that of one replica.
        assert!(ts.windows(2).all(|w| w[1] - w[0] >= 13_000), "{ts:?}");
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
