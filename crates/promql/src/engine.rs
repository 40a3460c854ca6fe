//! The engine's public face: options, the two query kinds, results and statistics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use m3query_storage::{Context, Queryable};
use tracing::debug_span;

use crate::annotations::Annotations;
use crate::eval::{Counters, Evaluator, SelSeries, cleanup_names};
use crate::parser::{Expr, ValueType};
use crate::plan::{QueryTimes, SelectSpec, collect_selectors, preprocess};
use crate::value::{ESeries, HPoint, HistogramSeries, Sample, Series, Val, Value};
use crate::{Error, Result, check_ctx};

/// The longest lookback accepted (a year), so time arithmetic stays far from overflow.
const MAX_LOOKBACK_MS: i64 = 366 * 24 * 3_600_000;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back an instant selector looks for a sample (default 5m).
    pub lookback_delta_ms: i64,
    /// Most points held in memory at once by one query (default 100,000,000, M3's default).
    pub max_samples: usize,
    /// Whether experimental functions and aggregations (`limitk`, `info`, ...) are allowed.
    pub enable_experimental_functions: bool,
    /// The step of subqueries written without one (`[5m:]`), default 1m.
    pub default_subquery_step_ms: i64,
    /// Series at or above which a node's per-series work is spread over threads.
    pub parallel_threshold: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta_ms: 5 * 60_000,
            max_samples: 100_000_000,
            enable_experimental_functions: true,
            default_subquery_step_ms: 60_000,
            parallel_threshold: 512,
        }
    }
}

/// Per-query settings.
#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    /// Overrides the engine's lookback delta.
    pub lookback_delta_ms: Option<i64>,
    /// At most this many series per query (0: no limit).
    pub max_fetched_series: usize,
    /// With a series limit: fail instead of truncating.
    pub require_exhaustive: bool,
    /// Collect per-phase timings and sample counts.
    pub enable_stats: bool,
}

/// Where a query's time went and how much it touched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryStats {
    /// Parsing the query text.
    pub parse: Duration,
    /// Planning plus selecting and decoding series.
    pub prepare: Duration,
    /// Evaluating the planned tree.
    pub eval: Duration,
    /// The whole query, end to end.
    pub total: Duration,
    /// Points produced by evaluation in total.
    pub total_samples: u64,
    /// Most points held at once.
    pub peak_samples: usize,
    /// Series selected from storage.
    pub series_fetched: usize,
    /// Raw samples decoded from storage.
    pub samples_fetched: usize,
}

/// A query's answer.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// The result.
    pub value: Value,
    /// Rendered as the HTTP API does: `PromQL warning: <msg> (line:col)` plus storage warnings.
    pub warnings: Vec<String>,
    /// Info annotations, rendered as `warnings` are (`PromQL info: ...`).
    pub infos: Vec<String>,
    /// Timings and counts (filled when `enable_stats` is set).
    pub stats: QueryStats,
    /// True when `max_fetched_series` truncated the series (M3's `M3-Results-Limited`).
    pub series_limited: bool,
    /// The result's native histogram points, beside the float points in `value`: for a
    /// vector, one series per histogram sample (at the evaluation time); for a matrix, each
    /// series' histogram points (a series may have floats in `value` too). In label order
    /// for matrices, in result order for vectors. Empty for float-only results.
    pub histograms: Vec<HistogramSeries>,
}

/// The PromQL engine. Cheap to share: it holds only options.
#[derive(Debug, Clone)]
pub struct Engine {
    opts: EngineOptions,
}

impl Engine {
    /// An engine with these options.
    pub fn new(opts: EngineOptions) -> Self {
        Engine { opts }
    }

    /// The options it was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Evaluates `expr` at `t_ms`.
    pub fn instant_query(
        &self,
        q: &dyn Queryable,
        ctx: &Context,
        expr: &str,
        t_ms: i64,
        opts: &QueryOptions,
    ) -> Result<QueryResult> {
        let t_ms = t_ms.clamp(
            m3query_model::time::MIN_TIME_MS,
            m3query_model::time::MAX_TIME_MS,
        );
        self.exec(q, ctx, expr, t_ms, t_ms, 0, opts)
    }

    /// Evaluates `expr` at `start_ms, start_ms+step_ms, ..., <= end_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn range_query(
        &self,
        q: &dyn Queryable,
        ctx: &Context,
        expr: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        opts: &QueryOptions,
    ) -> Result<QueryResult> {
        let start_ms = start_ms.clamp(
            m3query_model::time::MIN_TIME_MS,
            m3query_model::time::MAX_TIME_MS,
        );
        let end_ms = end_ms.clamp(
            m3query_model::time::MIN_TIME_MS,
            m3query_model::time::MAX_TIME_MS,
        );
        if step_ms <= 0 {
            return Err(Error::exec(
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if end_ms < start_ms {
            return Err(Error::exec("end timestamp must not be before start time"));
        }
        // More steps than samples allowed cannot be answered (and must not be allocated).
        if (end_ms.saturating_sub(start_ms)) / step_ms >= self.opts.max_samples as i64 {
            return Err(Error::TooManySamples);
        }
        self.exec(q, ctx, expr, start_ms, end_ms, step_ms, opts)
    }

    /// Runs the query on a [`crate::deep`] stack: parsing, planning and evaluation recurse
    /// once per tree level, and the tree is dropped there too.
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        q: &dyn Queryable,
        ctx: &Context,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
        opts: &QueryOptions,
    ) -> Result<QueryResult> {
        crate::deep::run(|| self.exec_deep(q, ctx, query, start, end, step, opts))
    }

    #[allow(clippy::too_many_arguments)]
    fn exec_deep(
        &self,
        q: &dyn Queryable,
        ctx: &Context,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
        opts: &QueryOptions,
    ) -> Result<QueryResult> {
        let t0 = Instant::now();
        let mut stats = QueryStats::default();
        let parse_opts = crate::parser::ParseOptions {
            experimental_functions: self.opts.enable_experimental_functions,
            ..Default::default()
        };
        let mut expr = {
            let _span = debug_span!("promql.parse", query = query).entered();
            crate::parser::parse_with_ctx(query, parse_opts, ctx)?
        };
        stats.parse = t0.elapsed();
        let instant = step == 0;
        if !instant {
            let t = expr.value_type();
            if t != ValueType::Vector && t != ValueType::Scalar {
                return Err(Error::exec(format!(
                    "invalid expression type {:?} for range query, must be Scalar or instant Vector",
                    t.documented()
                )));
            }
        }
        let times = QueryTimes {
            start,
            end,
            step,
            lookback: opts
                .lookback_delta_ms
                .filter(|l| *l > 0)
                .unwrap_or(self.opts.lookback_delta_ms)
                .clamp(1, MAX_LOOKBACK_MS),
            default_subquery_step: self.opts.default_subquery_step_ms,
        };
        let t1 = Instant::now();
        preprocess(&mut expr, &times)?;
        let specs = collect_selectors(&mut expr, &times);
        let (selected, warnings, limited) = self.select_all(q, ctx, &specs, opts, &mut stats)?;
        stats.prepare = t1.elapsed();

        let t2 = Instant::now();
        let eval_span = debug_span!(
            "promql.eval",
            start_ms = start,
            end_ms = end,
            step_ms = step,
            samples = tracing::field::Empty
        );
        let _guard = eval_span.enter();
        let mut counters = Counters::default();
        let mut annos = Annotations::new();
        let val = {
            let mut ev = Evaluator {
                start,
                end,
                interval: step.max(1),
                lookback: times.lookback,
                ctx,
                queryable: q,
                sel: &selected,
                max_samples: self.opts.max_samples,
                parallel_threshold: self.opts.parallel_threshold.max(1),
                counters: &mut counters,
                annos: &mut annos,
                default_subquery_step: self.opts.default_subquery_step_ms,
            };
            ev.eval(&expr)?
        };
        check_ctx(ctx, "expression evaluation")?;
        let (value, histograms) = finish(&expr, val, start, instant)?;
        eval_span.record("samples", count(counters.total));
        drop(_guard);
        stats.eval = t2.elapsed();
        stats.total = t0.elapsed();
        stats.total_samples = counters.total;
        stats.peak_samples = counters.peak;
        let (mut w, infos) = annos.as_strings(query);
        let mut all_warnings = warnings;
        all_warnings.append(&mut w);
        Ok(QueryResult {
            value,
            warnings: all_warnings,
            infos,
            stats,
            series_limited: limited,
            histograms,
        })
    }

    /// Selects every selector's series once and decodes their samples.
    fn select_all(
        &self,
        q: &dyn Queryable,
        ctx: &Context,
        specs: &[SelectSpec],
        opts: &QueryOptions,
        stats: &mut QueryStats,
    ) -> Result<Selected> {
        if specs.is_empty() {
            return Ok((Vec::new(), Vec::new(), false));
        }
        let mint = specs.iter().map(|s| s.hints.start_ms).min().unwrap_or(0);
        let maxt = specs.iter().map(|s| s.hints.end_ms).max().unwrap_or(0);
        let querier = q.querier(mint, maxt)?;
        let mut out = Vec::with_capacity(specs.len());
        let mut warnings = m3query_storage::Warnings::new();
        let mut total_series = 0usize;
        let mut limited = false;
        // Identical selectors over the same time range are selected once.
        let mut seen: Vec<(&SelectSpec, Arc<Vec<SelSeries>>)> = Vec::new();
        for spec in specs {
            check_ctx(ctx, "query preparation")?;
            if let Some((_, data)) = seen.iter().find(|(s, _)| {
                s.matchers == spec.matchers
                    && s.hints.start_ms == spec.hints.start_ms
                    && s.hints.end_ms == spec.hints.end_ms
                    && s.skip_histogram_buckets == spec.skip_histogram_buckets
            }) {
                out.push(data.clone());
                continue;
            }
            let span = debug_span!(
                "storage.select",
                matchers = %spec.text,
                start_ms = spec.hints.start_ms,
                end_ms = spec.hints.end_ms,
                series = tracing::field::Empty,
                samples = tracing::field::Empty
            );
            let _g = span.enter();
            let mut hints = spec.hints.clone();
            if opts.max_fetched_series > 0 {
                hints.limit = opts.max_fetched_series.saturating_sub(total_series) + 1;
            }
            let mut set = querier.select(ctx, false, &hints, &spec.matchers)?;
            let mut raw: Vec<Box<dyn m3query_storage::Series>> = Vec::new();
            while let Some(s) = set.next() {
                raw.push(s?);
                if opts.max_fetched_series > 0 && total_series + raw.len() > opts.max_fetched_series
                {
                    if opts.require_exhaustive {
                        return Err(Error::TooManySeries {
                            limit: opts.max_fetched_series,
                        });
                    }
                    raw.pop();
                    limited = true;
                    break;
                }
            }
            warnings.extend(set.warnings());
            total_series += raw.len();
            let (start, end) = (spec.hints.start_ms, spec.hints.end_ms);
            // Selected samples stay in memory for the whole evaluation, so they count against
            // the sample budget as they are decoded: otherwise a selector over many long
            // series loads any amount before evaluation's own count starts.
            let loaded = std::sync::atomic::AtomicUsize::new(stats.samples_fetched);
            let max_samples = self.opts.max_samples;
            let skip_buckets = spec.skip_histogram_buckets;
            // Samples decode into `scratch`, reused from series to series, and are copied out
            // at their exact size when they fill less than half of it: a chunk decoder
            // reserves room for the whole chunk (120 samples, where an instant query keeps a
            // handful), and a fresh buffer that size per series is an allocation the
            // allocator's small-size cache cannot serve. A buffer mostly full is kept as is.
            let decode = |scratch: &mut Vec<m3query_model::Sample>,
                          s: &dyn m3query_storage::Series|
             -> Result<SelSeries> {
                scratch.clear();
                let mut hbuf = Vec::new();
                let mut it = s.iter();
                it.append_range(start, end, scratch)?;
                let buf = if scratch.len() * 2 <= scratch.capacity() {
                    scratch.as_slice().to_vec()
                } else {
                    std::mem::take(scratch)
                };
                // Stores without histograms return at once (the trait's default).
                it.append_histograms(start, end, &mut hbuf)?;
                let n = buf.len() + hbuf.len();
                if loaded.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n > max_samples {
                    return Err(Error::TooManySamples);
                }
                let mut sel = SelSeries::new(s.labels().clone(), buf);
                // Likewise stores without start timestamps (the default appends nothing).
                let mut sts = Vec::new();
                it.append_start_timestamps(start, end, &mut sts)?;
                if !sts.is_empty() {
                    sel = sel.with_start_timestamps(sts);
                }
                Ok(if hbuf.is_empty() {
                    sel
                } else if skip_buckets {
                    sel.with_hists(histogram_stats(hbuf))
                } else {
                    sel.with_hists(hbuf)
                })
            };
            let mut decoded: Vec<SelSeries> = if raw.len() >= self.opts.parallel_threshold {
                crate::par::try_map(&raw, Vec::new, |scratch, s| decode(scratch, s.as_ref()))?
            } else {
                let mut scratch = Vec::new();
                raw.iter()
                    .map(|s| decode(&mut scratch, s.as_ref()))
                    .collect::<Result<_>>()?
            };
            decoded.retain(|s| !s.points.is_empty() || !s.hists.is_empty());
            let samples: usize = decoded.iter().map(|s| s.points.len() + s.hists.len()).sum();
            span.record("series", count(decoded.len() as u64));
            span.record("samples", count(samples as u64));
            stats.series_fetched += decoded.len();
            stats.samples_fetched += samples;
            let decoded = Arc::new(decoded);
            seen.push((spec, decoded.clone()));
            out.push(decoded);
        }
        Ok((out, warnings.into_vec(), limited))
    }
}

/// Histograms as Prometheus's `HistogramStatsIterator` yields them to `histogram_count`,
/// `histogram_sum` and `histogram_avg`: count, sum, schema and a counter reset hint, no
/// buckets. An `Unknown` hint is replaced by reset detection against the previous
/// histogram (with buckets), so resets the storage could not mark become `CounterReset`.
fn histogram_stats(hists: Vec<HPoint>) -> Vec<HPoint> {
    use m3query_model::histogram::CounterResetHint;
    let mut last: Option<Arc<crate::value::FloatHistogram>> = None;
    hists
        .into_iter()
        .map(|p| {
            let src = &p.h;
            let mut hint = src.counter_reset_hint;
            if !p.is_stale() {
                if hint == CounterResetHint::Unknown
                    && let Some(prev) = &last
                {
                    hint = if src.detect_reset(prev) {
                        CounterResetHint::CounterReset
                    } else {
                        CounterResetHint::NotCounterReset
                    };
                }
                last = Some(p.h.clone());
            }
            HPoint {
                t: p.t,
                h: Arc::new(crate::value::FloatHistogram {
                    counter_reset_hint: hint,
                    schema: src.schema,
                    count: src.count,
                    sum: src.sum,
                    ..Default::default()
                }),
            }
        })
        .collect()
}

/// A count as a span field: an `i64`, which exporters send as an integer tag
/// (tracing-opentelemetry turns `u64` and `usize` fields into strings).
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Every selector's decoded series (shared between identical selectors), storage warnings,
/// and whether the series limit truncated anything.
type Selected = (Vec<Arc<Vec<SelSeries>>>, Vec<String>, bool);

/// Turns the evaluator's matrix into the query's result type and its histogram points.
fn finish(
    expr: &Expr,
    val: Val,
    start: i64,
    instant: bool,
) -> Result<(Value, Vec<HistogramSeries>)> {
    let m = match val {
        Val::String(s) => return Ok((Value::String { t_ms: start, s }, Vec::new())),
        Val::Matrix(m) => m,
    };
    let t = expr.value_type();
    if instant {
        match t {
            ValueType::Vector => {
                let m = cleanup_names(m, true)?;
                let mut floats = Vec::with_capacity(m.len());
                let mut hists = Vec::new();
                for s in m {
                    if let Some(p) = s.points.first() {
                        floats.push(Sample {
                            labels: s.labels,
                            t_ms: start,
                            v: p.v,
                        });
                    } else if let Some(h) = s.hists.into_iter().next() {
                        hists.push(HistogramSeries {
                            labels: s.labels,
                            points: vec![HPoint { t: start, h: h.h }],
                        });
                    }
                }
                Ok((Value::Vector(floats), hists))
            }
            ValueType::Scalar => {
                let v = m
                    .first()
                    .and_then(|s| s.points.first())
                    .map_or(f64::NAN, |p| p.v);
                Ok((Value::Scalar { t_ms: start, v }, Vec::new()))
            }
            _ => {
                let m = cleanup_names(m, false)?;
                let (f, h) = sorted(m);
                Ok((Value::Matrix(f), h))
            }
        }
    } else {
        let m = cleanup_names(m, false)?;
        let (f, h) = sorted(m);
        Ok((Value::Matrix(f), h))
    }
}

/// Splits float and histogram points and drops empty series; `m` is sorted by labels already
/// ([`cleanup_names`]).
fn sorted(m: Vec<ESeries>) -> (Vec<Series>, Vec<HistogramSeries>) {
    let mut hists = Vec::new();
    let mut floats = Vec::with_capacity(m.len());
    for s in m {
        if !s.hists.is_empty() {
            hists.push(HistogramSeries {
                labels: s.labels.clone(),
                points: s.hists,
            });
        }
        if !s.points.is_empty() {
            floats.push(Series {
                labels: s.labels,
                samples: s.points,
            });
        }
    }
    (floats, hists)
}
