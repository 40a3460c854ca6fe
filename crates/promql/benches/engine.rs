//! Engine benchmarks over in-memory data: `rate` over 10k series, `sum by` of it, and
//! `histogram_quantile` over classic buckets, as range queries (1h at 1m steps) and instant
//! queries, over `MemStorage` and over a zero-copy store (the engine's own cost).
//!
//! Run: `CARGO_TARGET_DIR=/work/target/promql cargo bench -p m3query-promql --bench engine`.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use m3query_model::{Labels, Matcher, Sample};
use m3query_promql::{Engine, EngineOptions, QueryOptions};
use m3query_storage::memory::MemStorage;
use m3query_storage::{
    Appendable, Context, LabelHints, LabelValues, Querier, Queryable, SampleIterator, SelectHints,
    Series, SeriesSet, SliceIterator, VecSeriesSet, Warnings,
};

/// A read-only store whose select hands out shared sample buffers without copying: it
/// isolates the engine's cost from `MemStorage`'s (which clones every selected sample).
struct SharedStore {
    series: Vec<SharedSeries>,
}

#[derive(Clone)]
struct SharedSeries {
    labels: Labels,
    samples: Arc<Vec<Sample>>,
}

impl Series for SharedSeries {
    fn labels(&self) -> &Labels {
        &self.labels
    }
    fn iter(&self) -> Box<dyn SampleIterator + '_> {
        Box::new(SliceIterator::new(&self.samples))
    }
}

impl Queryable for SharedStore {
    fn querier(&self, _mint: i64, _maxt: i64) -> m3query_storage::Result<Box<dyn Querier + '_>> {
        Ok(Box::new(SharedQuerier(self)))
    }
}

struct SharedQuerier<'a>(&'a SharedStore);

impl Querier for SharedQuerier<'_> {
    fn select(
        &self,
        _ctx: &Context,
        _sort: bool,
        _hints: &SelectHints,
        matchers: &[Matcher],
    ) -> m3query_storage::Result<Box<dyn SeriesSet + '_>> {
        let out: Vec<SharedSeries> = self
            .0
            .series
            .iter()
            .filter(|s| {
                matchers
                    .iter()
                    .all(|m| m.matches(s.labels.get(&m.name).unwrap_or("")))
            })
            .cloned()
            .collect();
        Ok(Box::new(VecSeriesSet::new(out, Warnings::new())))
    }
    fn label_values(
        &self,
        _: &Context,
        _: &str,
        _: &LabelHints,
        _: &[Matcher],
    ) -> m3query_storage::Result<LabelValues> {
        Ok(LabelValues::default())
    }
    fn label_names(
        &self,
        _: &Context,
        _: &LabelHints,
        _: &[Matcher],
    ) -> m3query_storage::Result<LabelValues> {
        Ok(LabelValues::default())
    }
}

fn shared(s: &MemStorage) -> SharedStore {
    let q = s.querier(i64::MIN, i64::MAX).expect("querier");
    let all = [Matcher::new(m3query_model::MatchOp::RegexMatch, "__name__", ".+").expect("valid")];
    let mut set = q
        .select(&Context::background(), true, &SelectHints::default(), &all)
        .expect("select");
    let mut series = Vec::new();
    while let Some(x) = set.next() {
        let x = x.expect("series");
        let mut buf = Vec::new();
        x.iter()
            .append_range(i64::MIN, i64::MAX, &mut buf)
            .expect("samples");
        series.push(SharedSeries {
            labels: x.labels().clone(),
            samples: Arc::new(buf),
        });
    }
    SharedStore { series }
}

const SCRAPE_MS: i64 = 15_000;
const HOUR_MS: i64 = 3_600_000;

/// 10k counter series (10 jobs x 1000 instances) and 100 classic histograms of 12 buckets,
/// one hour at 15s.
fn store() -> MemStorage {
    let s = MemStorage::new();
    let mut app = s.appender();
    let n = HOUR_MS / SCRAPE_MS;
    for job in 0..10 {
        for inst in 0..1000 {
            let l = Labels::from_pairs([
                ("__name__", "http_requests_total".to_string()),
                ("job", format!("job-{job}")),
                ("instance", format!("i-{inst}")),
            ]);
            for k in 0..=n {
                let v = (k * (inst % 7 + 1)) as f64;
                app.append(&l, k * SCRAPE_MS, v).expect("append");
            }
        }
    }
    let les = [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
    ];
    for inst in 0..100 {
        for (bi, le) in les.iter().enumerate() {
            let l = Labels::from_pairs([
                ("__name__", "request_duration_seconds_bucket".to_string()),
                ("job", "api".to_string()),
                ("instance", format!("i-{inst}")),
                ("le", le.to_string()),
            ]);
            for k in 0..=n {
                app.append(&l, k * SCRAPE_MS, (k as usize * (bi + 1) * 3) as f64)
                    .expect("append");
            }
        }
    }
    app.commit().expect("commit");
    s
}

fn bench(c: &mut Criterion) {
    let s = store();
    let engine = Engine::new(EngineOptions::default());
    let ctx = Context::background();
    let opts = QueryOptions::default();
    let queries = [
        ("rate_10k", "rate(http_requests_total[5m])"),
        (
            "sum_by_rate_10k",
            "sum by (job) (rate(http_requests_total[5m]))",
        ),
        (
            "histogram_quantile",
            "histogram_quantile(0.99, sum by (le) (rate(request_duration_seconds_bucket[5m])))",
        ),
        ("topk_10k", "topk(5, rate(http_requests_total[5m]))"),
    ];
    let mut g = c.benchmark_group("range_1h_1m");
    g.sample_size(10);
    for (name, q) in queries {
        g.bench_function(name, |b| {
            b.iter(|| {
                engine
                    .range_query(&s, &ctx, q, 0, HOUR_MS, 60_000, &opts)
                    .expect("query")
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("instant");
    g.sample_size(10);
    for (name, q) in queries {
        g.bench_function(name, |b| {
            b.iter(|| {
                engine
                    .instant_query(&s, &ctx, q, HOUR_MS, &opts)
                    .expect("query")
            })
        });
    }
    g.finish();
    // The same range queries over a zero-copy store: the engine's own cost.
    let shared = shared(&s);
    let mut g = c.benchmark_group("engine_only_range_1h_1m");
    g.sample_size(10);
    for (name, q) in queries {
        g.bench_function(name, |b| {
            b.iter(|| {
                engine
                    .range_query(&shared, &ctx, q, 0, HOUR_MS, 60_000, &opts)
                    .expect("query")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
