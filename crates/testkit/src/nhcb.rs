//! `load_with_nhcb`: classic histogram series (`X_bucket{le=..}`, `X_count`, `X_sum`) turned
//! into native histograms with custom buckets (schema -53), one per timestamp, stored as
//! `X{...}` (labels minus `le`), as Prometheus's harness does with `convertnhcb`.

use std::collections::BTreeMap;

use m3query_model::histogram::{CUSTOM_BUCKETS_SCHEMA, Span};
use m3query_model::{FloatHistogram, Labels, METRIC_NAME};

use crate::script::LoadSeries;

/// One timestamp's classic histogram as it is gathered: cumulative buckets by bound, and
/// the `_count` and `_sum` values. `broken` once a bucket is invalid (then no histogram is
/// made for that timestamp, where Prometheus's load would fail).
#[derive(Debug, Default, Clone)]
struct Temp {
    buckets: Vec<(f64, f64)>,
    count: Option<f64>,
    sum: f64,
    broken: bool,
}

impl Temp {
    /// Prometheus's `SetBucketCount`: bounds kept sorted, cumulative counts must not drop.
    fn set_bucket(&mut self, le: f64, count: f64) {
        if self.broken {
            return;
        }
        if count < 0.0 {
            self.broken = true;
            return;
        }
        let i = self.buckets.partition_point(|b| b.0 < le);
        if self.buckets.get(i).is_some_and(|b| b.0 == le) {
            return;
        }
        if i > 0 && count < self.buckets[i - 1].1 {
            self.broken = true;
            return;
        }
        if self.buckets.get(i).is_some_and(|b| count > b.1) {
            self.broken = true;
            return;
        }
        self.buckets.insert(i, (le, count));
    }

    /// Prometheus's `Convert`: absolute bucket counts, the +Inf bucket added when missing
    /// (holding `_count`), compacted as the integer (2 empty buckets kept) or float (none)
    /// histogram it would have become.
    fn convert(mut self) -> Option<FloatHistogram> {
        if self.broken {
            return None;
        }
        let count = match (self.count, self.buckets.last()) {
            (Some(c), _) => c,
            (None, Some(b)) => b.1,
            (None, None) => 0.0,
        };
        if self.buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
            self.buckets.push((f64::INFINITY, count));
        }
        let last = self.buckets.last().map_or(0.0, |b| b.1);
        if count != last {
            return None;
        }
        let integral = |v: f64| v == v.round();
        let is_int = self.buckets.iter().all(|b| integral(b.1)) && integral(count);
        let mut prev = 0.0;
        let mut absolute = Vec::with_capacity(self.buckets.len());
        let mut bounds = Vec::with_capacity(self.buckets.len());
        for (le, c) in &self.buckets {
            absolute.push(c - prev);
            prev = *c;
            if *le != f64::INFINITY {
                bounds.push(*le);
            }
        }
        let mut h = FloatHistogram {
            schema: CUSTOM_BUCKETS_SCHEMA,
            count,
            sum: self.sum,
            positive_spans: vec![Span::new(0, absolute.len() as u32)],
            positive_buckets: absolute,
            custom_values: bounds,
            ..FloatHistogram::default()
        };
        h.compact(if is_int { 2 } else { 0 });
        h.validate().ok()?;
        Some(h)
    }
}

/// The native histogram series `load_with_nhcb` adds for the classic histograms among
/// `series`, each with its samples in time order.
pub(crate) fn convert(series: &[LoadSeries]) -> Vec<(Labels, Vec<(i64, FloatHistogram)>)> {
    let mut by_series: BTreeMap<Labels, BTreeMap<i64, Temp>> = BTreeMap::new();
    for s in series {
        let Some(name) = s.labels.metric_name() else {
            continue;
        };
        enum Kind {
            Bucket(f64),
            Count,
            Sum,
        }
        let (kind, base) = if let Some(b) = name.strip_suffix("_bucket") {
            let Some(le) = s
                .labels
                .get("le")
                .and_then(|v| v.trim().parse::<f64>().ok())
            else {
                continue;
            };
            if le.is_nan() {
                continue;
            }
            (Kind::Bucket(le), b)
        } else if let Some(b) = name.strip_suffix("_sum") {
            (Kind::Sum, b)
        } else if let Some(b) = name.strip_suffix("_count") {
            (Kind::Count, b)
        } else {
            continue;
        };
        let mut lb = s.labels.builder();
        lb.set(METRIC_NAME, base).del("le");
        let temps = by_series.entry(lb.labels()).or_default();
        for (t, v) in &s.samples {
            let temp = temps.entry(*t).or_default();
            match kind {
                Kind::Bucket(le) => temp.set_bucket(le, *v),
                Kind::Count => {
                    if *v < 0.0 {
                        temp.broken = true;
                    } else {
                        temp.count = Some(*v);
                    }
                }
                Kind::Sum => temp.sum = *v,
            }
        }
    }
    by_series
        .into_iter()
        .map(|(labels, temps)| {
            let samples = temps
                .into_iter()
                .filter_map(|(t, temp)| temp.convert().map(|h| (t, h)))
                .collect();
            (labels, samples)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, le: Option<&str>, vals: &[f64]) -> LoadSeries {
        let mut pairs = vec![("__name__", name), ("job", "a")];
        if let Some(le) = le {
            pairs.push(("le", le));
        }
        LoadSeries {
            labels: Labels::from_pairs(pairs),
            samples: vals
                .iter()
                .enumerate()
                .map(|(i, v)| (i as i64 * 1000, *v))
                .collect(),
            histograms: Vec::new(),
            has_histograms: false,
            start_timestamps: Vec::new(),
        }
    }

    #[test]
    fn classic_buckets_become_custom_bucket_histograms() {
        let got = convert(&[
            series("x_bucket", Some("1"), &[1.0, 2.0]),
            series("x_bucket", Some("5"), &[3.0, 2.0]),
            series("x_bucket", Some("+Inf"), &[4.0, 2.5]),
            series("x_sum", None, &[10.0, 3.0]),
            series("x_count", None, &[4.0, 2.5]),
            series("other", None, &[1.0]),
        ]);
        assert_eq!(got.len(), 1);
        let (labels, samples) = &got[0];
        assert_eq!(
            labels,
            &Labels::from_pairs([("__name__", "x"), ("job", "a")])
        );
        assert_eq!(samples.len(), 2);
        let h = &samples[0].1;
        assert_eq!(h.schema, CUSTOM_BUCKETS_SCHEMA);
        assert_eq!(h.custom_values, vec![1.0, 5.0]);
        assert_eq!(h.positive_buckets, vec![1.0, 2.0, 1.0]);
        assert_eq!((h.count, h.sum), (4.0, 10.0));
        // Float counts: empty buckets are compacted away.
        let h = &samples[1].1;
        assert_eq!(h.positive_spans, vec![Span::new(0, 1), Span::new(1, 1)]);
        assert_eq!(h.positive_buckets, vec![2.0, 0.5]);
    }
}
