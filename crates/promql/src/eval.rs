//! The evaluator: walks the syntax tree once per node, for all steps of the query at once.
//!
//! Every vector-typed node evaluates to a matrix whose points sit on the step timestamps
//! (`start, start+interval, ..., end`); scalar-typed nodes to one label-less series. Range
//! functions slide two-pointer windows over each selected series' decoded samples; the rest
//! gathers one instant vector per step from its evaluated arguments (Prometheus's `rangeEval`),
//! with per-series state (signatures, group indexes) computed once.

use m3query_model::{Labels, METRIC_NAME, is_stale_nan};
use m3query_storage::{Context, Queryable, StartTimestamp};

use crate::annotations::{Annotations, msg};
use crate::functions::{self, FuncKind, RangeCtx};
use crate::parser::{
    AggOp, Call, DurationExpr, Expr, MatrixSelector, SubqueryExpr, ValueType, VectorSelector,
};
use crate::value::{
    ESeries, Elem, FastMap, FastSet, HPoint, Matrix, NO_OID, Point, Val, total_points,
};
use crate::{Error, Result, check_ctx};

/// The series one selector selected, samples decoded in time order.
#[derive(Debug, Default)]
pub(crate) struct SelSeries {
    pub labels: Labels,
    /// Every sample, staleness markers included (instant lookups need them).
    pub points: Vec<Point>,
    /// The samples without staleness markers, when there are markers (range windows skip
    /// them); `None` when `points` has none.
    pub clean: Option<Vec<Point>>,
    /// Native histogram samples, staleness markers included; empty for float series.
    pub hists: Vec<HPoint>,
    /// `hists` without staleness markers, when there are markers.
    pub clean_hists: Option<Vec<HPoint>>,
    /// The start timestamps of the samples that have one, in time order; empty for almost
    /// every series (stores without start timestamps never fill it).
    pub sts: Vec<StartTimestamp>,
}

impl SelSeries {
    pub fn new(labels: Labels, points: Vec<Point>) -> Self {
        let clean = if points.iter().any(|p| is_stale_nan(p.v)) {
            Some(
                points
                    .iter()
                    .copied()
                    .filter(|p| !is_stale_nan(p.v))
                    .collect(),
            )
        } else {
            None
        };
        SelSeries {
            labels,
            points,
            clean,
            hists: Vec::new(),
            clean_hists: None,
            sts: Vec::new(),
        }
    }

    /// Adds the series' start timestamps.
    pub fn with_start_timestamps(mut self, sts: Vec<StartTimestamp>) -> Self {
        self.sts = sts;
        self
    }

    /// Adds the series' native histogram samples.
    pub fn with_hists(mut self, hists: Vec<HPoint>) -> Self {
        if hists.iter().any(HPoint::is_stale) {
            self.clean_hists = Some(hists.iter().filter(|h| !h.is_stale()).cloned().collect());
        }
        self.hists = hists;
        self
    }

    /// The samples a range window sees.
    pub fn range_points(&self) -> &[Point] {
        self.clean.as_deref().unwrap_or(&self.points)
    }

    /// The histogram samples a range window sees.
    pub fn range_hists(&self) -> &[HPoint] {
        self.clean_hists.as_deref().unwrap_or(&self.hists)
    }
}

/// Query-wide counters shared by nested evaluators.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub cur: usize,
    pub peak: usize,
    pub total: u64,
}

pub(crate) struct Evaluator<'a> {
    pub start: i64,
    pub end: i64,
    pub interval: i64,
    pub lookback: i64,
    pub ctx: &'a Context,
    pub queryable: &'a dyn Queryable,
    pub sel: &'a [std::sync::Arc<Vec<SelSeries>>],
    pub max_samples: usize,
    pub parallel_threshold: usize,
    pub counters: &'a mut Counters,
    pub annos: &'a mut Annotations,
    pub default_subquery_step: i64,
}

/// Label names Prometheus drops with the metric name (`DropReserved(IsMetadataLabel)`).
pub(crate) fn drop_reserved(l: &Labels) -> Labels {
    let reserved =
        |x: &m3query_model::Label| matches!(&*x.name, METRIC_NAME | "__type__" | "__unit__");
    if !l.iter().any(reserved) {
        return l.clone();
    }
    // A subset of a sorted set is sorted: no builder, no sort.
    Labels::from_sorted(l.iter().filter(|x| !reserved(x)).cloned().collect())
}

const DUP_LABELSET: &str = "vector cannot contain metrics with the same labelset";

impl<'a> Evaluator<'a> {
    pub fn num_steps(&self) -> usize {
        if self.end < self.start {
            return 0;
        }
        ((self.end - self.start) / self.interval) as usize + 1
    }

    fn step_ts(&self) -> impl Iterator<Item = i64> + use<> {
        let (s, e, i) = (self.start, self.end, self.interval);
        (0..self.num_steps() as i64)
            .map(move |k| s + k * i)
            .take_while(move |t| *t <= e)
    }

    pub fn add_samples(&mut self, n: usize) -> Result<()> {
        self.counters.cur += n;
        self.counters.total += n as u64;
        if self.counters.cur > self.counters.peak {
            self.counters.peak = self.counters.cur;
        }
        if self.counters.cur > self.max_samples {
            return Err(Error::TooManySamples);
        }
        Ok(())
    }

    pub fn release_samples(&mut self, n: usize) {
        self.counters.cur = self.counters.cur.saturating_sub(n);
    }

    fn check(&self) -> Result<()> {
        check_ctx(self.ctx, "expression evaluation")
    }

    fn child(&mut self, start: i64, end: i64, interval: i64) -> Evaluator<'_> {
        Evaluator {
            start,
            end,
            interval: interval.max(1),
            lookback: self.lookback,
            ctx: self.ctx,
            queryable: self.queryable,
            sel: self.sel,
            max_samples: self.max_samples,
            parallel_threshold: self.parallel_threshold,
            counters: self.counters,
            annos: self.annos,
            default_subquery_step: self.default_subquery_step,
        }
    }

    pub fn eval_matrix(&mut self, e: &Expr) -> Result<Matrix> {
        match self.eval(e)? {
            Val::Matrix(m) => Ok(m),
            Val::String(_) => Err(Error::exec("unexpected string value")),
        }
    }

    pub fn eval(&mut self, e: &Expr) -> Result<Val> {
        self.check()?;
        if self.end < self.start {
            return Ok(Val::Matrix(Vec::new()));
        }
        match e {
            Expr::Paren(inner, _) | Expr::StepInvariant(inner) => self.eval(inner),
            Expr::Number { val, .. } => {
                let v = *val;
                self.add_samples(self.num_steps())?;
                let points: Vec<Point> = self.step_ts().map(|t| Point { t, v }).collect();
                Ok(Val::Matrix(vec![ESeries::floats(
                    Labels::empty(),
                    points,
                    false,
                )]))
            }
            Expr::String { val, .. } => Ok(Val::String(val.clone())),
            Expr::VectorSelector(vs) => {
                if vs.smoothed {
                    return Ok(Val::Matrix(self.eval_smoothed_selector(vs)?));
                }
                Ok(Val::Matrix(self.eval_vector_selector(vs, false)?))
            }
            Expr::MatrixSelector(ms) => Ok(Val::Matrix(self.eval_matrix_selector(ms)?)),
            Expr::Subquery(sq) => Ok(Val::Matrix(self.eval_subquery(sq)?)),
            Expr::Unary { neg, expr, .. } => {
                let mut m = self.eval_matrix(expr)?;
                if *neg {
                    for s in &mut m {
                        s.drop_name = true;
                        for p in &mut s.points {
                            p.v = -p.v;
                        }
                        for h in &mut s.hists {
                            let mut x = (*h.h).clone();
                            x.mul(-1.0);
                            h.h = std::sync::Arc::new(x);
                        }
                    }
                }
                Ok(Val::Matrix(m))
            }
            Expr::Call(c) => self.eval_call(c).map(Val::Matrix),
            Expr::Aggregate(a) => crate::aggregate::eval_aggregate(self, a).map(Val::Matrix),
            Expr::Binary(b) => crate::binary::eval_binary(self, b).map(Val::Matrix),
        }
    }

    // ---- Selectors ---------------------------------------------------------------------

    /// Evaluates an instant vector selector at every step. With `timestamps`, each point's
    /// value is the sample's timestamp in seconds (for `timestamp()`).
    pub fn eval_vector_selector(
        &mut self,
        vs: &VectorSelector,
        timestamps: bool,
    ) -> Result<Matrix> {
        let data = self
            .sel
            .get(vs.id)
            .map(|v| v.as_slice())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(data.len());
        for (si, s) in data.iter().enumerate() {
            if si % 256 == 0 {
                self.check()?;
            }
            if !s.hists.is_empty() {
                let (points, hists) = self.lookup_mixed(vs, &s.points, &s.hists, timestamps);
                if !points.is_empty() || !hists.is_empty() {
                    self.add_samples(points.len() + hists.len())?;
                    out.push(ESeries {
                        labels: s.labels.clone(),
                        points,
                        hists,
                        drop_name: timestamps,
                    });
                }
                continue;
            }
            let points = self.lookup_series(vs, &s.points, timestamps);
            if !points.is_empty() {
                self.add_samples(points.len())?;
                out.push(ESeries::floats(s.labels.clone(), points, timestamps));
            }
        }
        Ok(out)
    }

    /// `start_timestamp(selector)`: at every step, the start timestamp (in seconds) of the
    /// sample the instant selector picks (the latest of either kind within the lookback,
    /// unless it is a staleness marker); 0 for a sample whose start is unknown.
    fn eval_start_timestamps(&mut self, vs: &VectorSelector) -> Result<Matrix> {
        let data = self
            .sel
            .get(vs.id)
            .map(|v| v.as_slice())
            .unwrap_or_default();
        let mut out = Vec::new();
        for (si, s) in data.iter().enumerate() {
            if si % 256 == 0 {
                self.check()?;
            }
            let (floats, hists) = (&s.points, &s.hists);
            let mut points = Vec::new();
            for ts in self.step_ts() {
                let r = vs.timestamp.unwrap_or(ts) - vs.original_offset_ms;
                let fi = floats.partition_point(|x| x.t <= r);
                let hi = hists.partition_point(|x| x.t <= r);
                let f = fi
                    .checked_sub(1)
                    .map(|i| (floats[i].t, is_stale_nan(floats[i].v)));
                let h = hi.checked_sub(1).map(|i| (hists[i].t, hists[i].is_stale()));
                let latest = match (f, h) {
                    (Some(f), Some(h)) => Some(if h.0 > f.0 { h } else { f }),
                    (f, h) => f.or(h),
                };
                let Some((t, stale)) = latest else { continue };
                if t <= r - self.lookback || stale {
                    continue;
                }
                let st = crate::start_ts::at(&s.sts, t);
                points.push(Point {
                    t: ts,
                    v: st as f64 / 1000.0,
                });
            }
            if !points.is_empty() {
                self.add_samples(points.len())?;
                out.push(ESeries::floats(s.labels.clone(), points, true));
            }
        }
        Ok(out)
    }

    /// One series' instant-selector values at every step: the latest sample within the
    /// lookback, unless it is a staleness marker. With `timestamps`, the sample's time in
    /// seconds instead of its value.
    pub(crate) fn lookup_series(
        &self,
        vs: &VectorSelector,
        samples: &[Point],
        timestamps: bool,
    ) -> Vec<Point> {
        let mut points = Vec::new();
        let mut j = 0usize;
        for ts in self.step_ts() {
            let r = match vs.timestamp {
                Some(t) => t - vs.original_offset_ms,
                None => ts - vs.original_offset_ms,
            };
            // Samples are sorted: advance to the first sample after r. The first step (an
            // instant query's only one) and any step back in time search; later steps walk.
            if j == 0 || samples[j - 1].t > r {
                j = samples.partition_point(|x| x.t <= r);
            }
            while j < samples.len() && samples[j].t <= r {
                j += 1;
            }
            if j == 0 {
                continue;
            }
            let x = samples[j - 1];
            if x.t <= r - self.lookback || is_stale_nan(x.v) {
                continue;
            }
            if points.capacity() == 0 {
                points = Vec::with_capacity(self.num_steps());
            }
            let v = if timestamps { x.t as f64 / 1000.0 } else { x.v };
            points.push(Point { t: ts, v });
        }
        points
    }

    /// [`Evaluator::lookup_series`] for a series that holds native histograms: at each step
    /// the latest sample of either kind within the lookback, unless it is a staleness marker.
    /// With `timestamps`, both kinds yield the sample's time as a float.
    pub(crate) fn lookup_mixed(
        &self,
        vs: &VectorSelector,
        floats: &[Point],
        hists: &[HPoint],
        timestamps: bool,
    ) -> (Vec<Point>, Vec<HPoint>) {
        let mut points = Vec::new();
        let mut hpoints = Vec::new();
        for ts in self.step_ts() {
            let r = match vs.timestamp {
                Some(t) => t - vs.original_offset_ms,
                None => ts - vs.original_offset_ms,
            };
            let fi = floats.partition_point(|x| x.t <= r);
            let hi = hists.partition_point(|x| x.t <= r);
            let f = fi.checked_sub(1).map(|i| floats[i]);
            let h = hi.checked_sub(1).map(|i| &hists[i]);
            let take_hist = match (f, h) {
                (Some(f), Some(h)) => h.t > f.t,
                (None, Some(_)) => true,
                _ => false,
            };
            if take_hist {
                let Some(h) = h else { continue };
                if h.t <= r - self.lookback || h.is_stale() {
                    continue;
                }
                if timestamps {
                    points.push(Point {
                        t: ts,
                        v: h.t as f64 / 1000.0,
                    });
                } else {
                    hpoints.push(HPoint {
                        t: ts,
                        h: h.h.clone(),
                    });
                }
            } else if let Some(x) = f {
                if x.t <= r - self.lookback || is_stale_nan(x.v) {
                    continue;
                }
                let v = if timestamps { x.t as f64 / 1000.0 } else { x.v };
                points.push(Point { t: ts, v });
            }
        }
        (points, hpoints)
    }

    /// A smoothed instant selector: the value interpolated between the samples around each
    /// step (Prometheus's `smoothSeries`).
    fn eval_smoothed_selector(&mut self, vs: &VectorSelector) -> Result<Matrix> {
        let data = self
            .sel
            .get(vs.id)
            .map(|v| v.as_slice())
            .unwrap_or_default();
        let mut out = Vec::new();
        for s in data {
            if !s.hists.is_empty() {
                if let Some(series) = self.smoothed_histograms(vs, s) {
                    self.add_samples(series.points.len() + series.hists.len())?;
                    out.push(series);
                }
                continue;
            }
            let samples = s.range_points();
            let mut points = Vec::new();
            for ts in self.step_ts() {
                let data_ts = match vs.timestamp {
                    Some(t) => t - vs.original_offset_ms,
                    None => ts - vs.original_offset_ms,
                };
                let lo = samples.partition_point(|x| x.t <= data_ts - self.lookback);
                let hi = samples.partition_point(|x| x.t <= data_ts + self.lookback);
                let w = &samples[lo..hi];
                if w.is_empty() {
                    continue;
                }
                // The last sample at or before data_ts, and the first after it.
                let k = w.partition_point(|x| x.t <= data_ts);
                let v = match (k.checked_sub(1).map(|i| w[i]), w.get(k)) {
                    (Some(a), _) if a.t == data_ts => a.v,
                    (Some(a), Some(b)) => {
                        a.v + (b.v - a.v) * (data_ts - a.t) as f64 / (b.t - a.t) as f64
                    }
                    (Some(a), None) => a.v,
                    (None, Some(b)) => b.v,
                    (None, None) => continue,
                };
                points.push(Point { t: ts, v });
            }
            if !points.is_empty() {
                self.add_samples(points.len())?;
                out.push(ESeries::floats(s.labels.clone(), points, false));
            }
        }
        Ok(out)
    }

    /// A smoothed instant selector over a series with native histograms (Prometheus's
    /// `smoothSeries`): histograms interpolated between the samples around each step; a
    /// window mixing floats and histograms is warned about and skipped.
    fn smoothed_histograms(&mut self, vs: &VectorSelector, s: &SelSeries) -> Option<ESeries> {
        let (floats, hists) = (s.range_points(), s.range_hists());
        let metric = s.labels.metric_name().unwrap_or("");
        let mut out = ESeries {
            labels: s.labels.clone(),
            points: Vec::new(),
            hists: Vec::new(),
            drop_name: false,
        };
        for ts in self.step_ts() {
            let data_ts = match vs.timestamp {
                Some(t) => t - vs.original_offset_ms,
                None => ts - vs.original_offset_ms,
            };
            let (lo_t, hi_t) = (data_ts - self.lookback, data_ts + self.lookback);
            let fw = &floats
                [floats.partition_point(|x| x.t <= lo_t)..floats.partition_point(|x| x.t <= hi_t)];
            let hw = &hists
                [hists.partition_point(|x| x.t <= lo_t)..hists.partition_point(|x| x.t <= hi_t)];
            if fw.is_empty() && hw.is_empty() {
                continue;
            }
            if !fw.is_empty() && !hw.is_empty() {
                self.annos
                    .warn(msg::mixed_floats_histograms(metric), vs.pos);
                continue;
            }
            if !fw.is_empty() {
                // As the float smoothing does.
                let k = fw.partition_point(|x| x.t <= data_ts);
                let v = match (k.checked_sub(1).map(|i| fw[i]), fw.get(k)) {
                    (Some(a), _) if a.t == data_ts => a.v,
                    (Some(a), Some(b)) => {
                        a.v + (b.v - a.v) * (data_ts - a.t) as f64 / (b.t - a.t) as f64
                    }
                    (Some(a), None) => a.v,
                    (None, Some(b)) => b.v,
                    (None, None) => continue,
                };
                out.points.push(Point { t: ts, v });
                continue;
            }
            let k = hw.partition_point(|x| x.t < data_ts);
            let h = match (k.checked_sub(1).map(|i| &hw[i]), hw.get(k)) {
                (_, Some(b)) if b.t == data_ts => b.h.clone(),
                (Some(a), Some(b)) => {
                    if a.h.uses_custom_buckets() != b.h.uses_custom_buckets() {
                        self.annos
                            .warn(msg::mixed_exponential_custom(metric), vs.pos);
                        continue;
                    }
                    use m3query_model::histogram::CounterResetHint::Gauge;
                    let is_counter =
                        a.h.counter_reset_hint != Gauge || b.h.counter_reset_hint != Gauge;
                    match crate::hist::interpolate(a, b, data_ts, is_counter, self.annos, vs.pos) {
                        Ok(h) => std::sync::Arc::new(h),
                        Err(()) => {
                            self.annos
                                .warn(msg::mixed_exponential_custom(metric), vs.pos);
                            continue;
                        }
                    }
                }
                (Some(a), None) => {
                    let mut h = (*a.h).clone();
                    h.counter_reset_hint = m3query_model::histogram::CounterResetHint::Unknown;
                    std::sync::Arc::new(h)
                }
                _ => continue,
            };
            out.hists.push(HPoint { t: ts, h });
        }
        if out.points.is_empty() && out.hists.is_empty() {
            return None;
        }
        Some(out)
    }

    /// A range vector at the (single) evaluation time: raw samples with their timestamps.
    fn eval_matrix_selector(&mut self, ms: &MatrixSelector) -> Result<Matrix> {
        let vs = &ms.vs;
        let data = self
            .sel
            .get(vs.id)
            .map(|v| v.as_slice())
            .unwrap_or_default();
        let wend = vs.timestamp.unwrap_or(self.start) - vs.original_offset_ms;
        let wstart = wend - ms.range_ms;
        let mut out = Vec::new();
        for s in data {
            self.check()?;
            let fetch_start = if vs.anchored || vs.smoothed {
                wstart - self.lookback
            } else {
                wstart
            };
            let fetch_end = if vs.smoothed {
                wend + self.lookback
            } else {
                wend
            };
            let rp = s.range_points();
            let lo = rp.partition_point(|x| x.t <= fetch_start);
            let hi = rp.partition_point(|x| x.t <= fetch_end);
            let mut points: Vec<Point> = rp[lo..hi].to_vec();
            if vs.anchored || vs.smoothed {
                points = functions::extend_floats(&points, wstart, wend, vs.smoothed);
            }
            let rh = s.range_hists();
            let hists: Vec<HPoint> = if rh.is_empty() {
                Vec::new()
            } else {
                let lo = rh.partition_point(|x| x.t <= fetch_start);
                let hi = rh.partition_point(|x| x.t <= fetch_end);
                rh[lo..hi].to_vec()
            };
            if !points.is_empty() || !hists.is_empty() {
                self.add_samples(points.len() + hists.len())?;
                out.push(ESeries {
                    labels: s.labels.clone(),
                    points,
                    hists,
                    drop_name: false,
                });
            }
        }
        Ok(out)
    }

    /// Start, end and step of a subquery's inner evaluation (Prometheus's `subqueryTimeRange`).
    fn subquery_range(&self, sq: &SubqueryExpr) -> (i64, i64, i64) {
        let offset = sq.original_offset_ms;
        let (ostart, oend) = match sq.timestamp {
            Some(t) => (t, t),
            None => {
                let aligned_end =
                    self.start + ((self.end - self.start) / self.interval) * self.interval;
                (self.start, aligned_end)
            }
        };
        let interval = if sq.step_ms > 0 {
            sq.step_ms
        } else {
            self.default_subquery_step
        }
        .max(1);
        let end = oend - offset;
        let lowest = ostart - offset - sq.range_ms;
        let mut start = interval * (lowest / interval);
        if start <= lowest {
            start += interval;
        }
        (start, end, interval)
    }

    pub fn eval_subquery(&mut self, sq: &SubqueryExpr) -> Result<Matrix> {
        let (start, end, interval) = self.subquery_range(sq);
        if end >= start && (end - start) / interval >= self.max_samples as i64 {
            return Err(Error::TooManySamples);
        }
        let mut child = self.child(start, end, interval);
        child.eval_matrix(&sq.expr)
    }

    // ---- Function calls ----------------------------------------------------------------

    fn eval_call(&mut self, c: &Call) -> Result<Matrix> {
        let name = c.func.name;
        let kind = functions::kind(name);
        if let FuncKind::Unsupported(why) = kind {
            return Err(Error::exec(why));
        }
        if name == "timestamp"
            && let Some(Expr::VectorSelector(vs)) = c.args.first().map(Expr::unwrap_parens)
        {
            return self.eval_vector_selector(vs, true);
        }
        if name == "start_timestamp"
            && let Some(Expr::VectorSelector(vs)) = c.args.first().map(Expr::unwrap_parens)
        {
            return self.eval_start_timestamps(vs);
        }
        match name {
            "label_replace" => return functions::label_replace(self, c),
            "label_join" => return functions::label_join(self, c),
            "info" => return crate::functions::info(self, c),
            _ => {}
        }
        if matches!(
            name,
            "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc"
        ) && self.start != self.end
        {
            self.annos.warn(msg::sort_in_range_query(), c.pos);
        }
        // A range-vector argument makes this a rollup over windows.
        let matrix_arg = c.args.iter().position(|a| {
            matches!(
                a.unwrap_parens(),
                Expr::MatrixSelector(_) | Expr::Subquery(_)
            )
        });
        match (kind, matrix_arg) {
            (FuncKind::Range(f), Some(idx)) => self.eval_range_call(c, idx, f),
            (FuncKind::Instant(f), _) => {
                let mut args = Vec::with_capacity(c.args.len());
                let floats_only = !functions::reads_histograms(name);
                for a in &c.args {
                    match a.value_type() {
                        ValueType::String => args.push(Vec::new()),
                        _ => {
                            let mut m = self.eval_matrix(a)?;
                            if floats_only && m.iter().any(|s| !s.hists.is_empty()) {
                                // Histogram samples do not reach float functions.
                                let dropped: usize = m.iter().map(|s| s.hists.len()).sum();
                                self.release_samples(dropped);
                                for s in &mut m {
                                    s.hists.clear();
                                }
                                m.retain(|s| !s.points.is_empty());
                            }
                            args.push(m);
                        }
                    }
                }
                let call = c;
                self.range_eval(args, |ev_annos, ts, vecs, out| {
                    f(call, ts, vecs, out, ev_annos)
                })
            }
            _ => Err(Error::exec(format!(
                "unexpected arguments to function {name:?}"
            ))),
        }
    }

    /// Evaluates the arguments of a rollup call: its scalar arguments (one value per step)
    /// and its range-vector input series.
    pub(crate) fn prepare_range_call(&mut self, c: &Call, idx: usize) -> Result<RangeCallPrep<'a>> {
        let name = c.func.name;
        let steps = self.num_steps();
        let mut scalars: Vec<Vec<f64>> = Vec::new();
        for (i, a) in c.args.iter().enumerate() {
            if i == idx {
                continue;
            }
            let m = self.eval_matrix(a)?;
            let mut vals = vec![f64::NAN; steps];
            if let Some(s) = m.first() {
                for p in &s.points {
                    let k = ((p.t - self.start) / self.interval) as usize;
                    if k < steps {
                        vals[k] = p.v;
                    }
                }
            }
            scalars.push(vals);
        }
        let arg = c.args[idx].unwrap_parens();
        let sel: &'a [std::sync::Arc<Vec<SelSeries>>] = self.sel;
        let prep = match arg {
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                if vs.anchored && !functions::ANCHORED_SAFE.contains(&name) {
                    return Err(Error::exec(format!(
                        "anchored modifier can only be used with: {} - not with {name}",
                        functions::ANCHORED_SAFE.join(", ")
                    )));
                }
                if vs.smoothed && !functions::SMOOTHED_SAFE.contains(&name) {
                    return Err(Error::exec(format!(
                        "smoothed modifier can only be used with: {} - not with {name}",
                        functions::SMOOTHED_SAFE.join(", ")
                    )));
                }
                let data = sel.get(vs.id).map(|v| v.as_slice()).unwrap_or_default();
                RangeCallPrep {
                    inputs: data
                        .iter()
                        .map(|s| RollupInput {
                            labels: s.labels.clone(),
                            points: std::borrow::Cow::Borrowed(s.range_points()),
                            hists: std::borrow::Cow::Borrowed(s.range_hists()),
                            sts: &s.sts,
                            drop_name: false,
                        })
                        .collect(),
                    scalars,
                    range_ms: ms.range_ms,
                    offset_ms: vs.original_offset_ms,
                    at: vs.timestamp,
                    anchored: vs.anchored,
                    smoothed: vs.smoothed,
                    held: 0,
                }
            }
            Expr::Subquery(sq) => {
                let m = self.eval_subquery(sq)?;
                let held = total_points(&m);
                RangeCallPrep {
                    inputs: m
                        .into_iter()
                        .map(|s| RollupInput {
                            labels: s.labels,
                            points: std::borrow::Cow::Owned(s.points),
                            hists: std::borrow::Cow::Owned(unknown_resets(s.hists)),
                            // Subqueries cut the propagation of start timestamps.
                            sts: &[],
                            drop_name: s.drop_name,
                        })
                        .collect(),
                    scalars,
                    range_ms: sq.range_ms,
                    offset_ms: sq.original_offset_ms,
                    at: sq.timestamp,
                    anchored: false,
                    smoothed: false,
                    held,
                }
            }
            _ => return Err(Error::exec("expected a range vector argument")),
        };
        Ok(prep)
    }

    /// The window parameters shared by every series of a rollup call.
    pub(crate) fn window_spec<'s>(
        &self,
        c: &Call,
        idx: usize,
        prep: &'s RangeCallPrep<'_>,
        f: functions::RangeFn,
    ) -> WindowSpec<'s>
    where
        'a: 's,
    {
        let ext = prep.anchored || prep.smoothed;
        WindowSpec {
            start: self.start,
            interval: self.interval,
            steps: self.num_steps(),
            at: prep.at,
            offset_ms: prep.offset_ms,
            range_ms: prep.range_ms,
            ext_left: if ext { self.lookback } else { 0 },
            ext_right: if prep.smoothed { self.lookback } else { 0 },
            anchored: prep.anchored,
            smoothed: prep.smoothed,
            pos: c.pos,
            param_pos: c
                .args
                .iter()
                .enumerate()
                .find(|(i, _)| *i != idx)
                .map(|(_, a)| a.pos()),
            scalars: &prep.scalars,
            f,
            name: c.func.name,
            arg_pos: c.args[idx].pos(),
            counter: matches!(c.func.name, "rate" | "increase") && !ext,
            reads_sts: crate::start_ts::used_by(c.func.name),
            ctx: self.ctx,
            replicate: prep.at.is_some()
                && c.func.name != "predict_linear"
                && prep
                    .scalars
                    .iter()
                    .all(|s| s.windows(2).all(|w| w[0].to_bits() == w[1].to_bits())),
        }
    }

    /// Runs the rollup over `inputs`, in parallel when there are many.
    pub(crate) fn run_rollups(
        &self,
        spec: &WindowSpec<'_>,
        inputs: &[RollupInput<'_>],
    ) -> Result<Vec<SeriesRollup>> {
        self.check()?;
        let one = |i: &RollupInput<'_>| {
            // Series with start timestamps take the general path when the function reads
            // them; the float path stays as it is for everything else.
            if i.hists.is_empty() && (i.sts.is_empty() || !spec.reads_sts) {
                spec.run(&i.points)
            } else {
                spec.run_mixed(i)
            }
        };
        if inputs.len() >= self.parallel_threshold {
            return Ok(crate::par::map(inputs, one));
        }
        Ok(inputs.iter().map(one).collect())
    }

    /// Evaluates a function over a range vector argument: per series, per step, a window.
    fn eval_range_call(&mut self, c: &Call, idx: usize, f: functions::RangeFn) -> Result<Matrix> {
        let name = c.func.name;
        let prep = self.prepare_range_call(c, idx)?;
        let inputs = &prep.inputs;
        let sub_total = prep.held;
        let keeps_name = matches!(name, "last_over_time" | "first_over_time");
        let spec = self.window_spec(c, idx, &prep, f);
        // One rollup per series; series are independent, so large inputs are spread over
        // threads. Each worker keeps its own context; annotations merge afterwards.
        let results = self.run_rollups(&spec, inputs)?;
        self.check()?;
        let mut out: Matrix = Vec::with_capacity(inputs.len());
        let mut annos = Annotations::new();
        let max_window = results.iter().map(|r| r.max_window).max().unwrap_or(0);
        self.add_samples(max_window)?;
        self.release_samples(max_window);
        for (input, r) in inputs.iter().zip(results) {
            if let Some(e) = r.err {
                return Err(e);
            }
            annos.merge(r.annos);
            if r.points.is_empty() && r.hists.is_empty() {
                continue;
            }
            self.add_samples(r.points.len() + r.hists.len())?;
            // Prometheus asks whether the result has float points, not whether the input
            // has histograms: a series that turns from floats into histograms still gets
            // the hint for the steps its floats produced.
            if matches!(name, "rate" | "increase")
                && !r.points.is_empty()
                && let Some(mn) = input.labels.metric_name()
                && !mn.ends_with("_total")
                && !mn.ends_with("_sum")
                && !mn.ends_with("_count")
                && !mn.ends_with("_bucket")
            {
                annos.info(msg::possible_non_counter(mn), c.args[idx].pos());
            }
            out.push(ESeries {
                hists: r.hists,
                labels: input.labels.clone(),
                points: r.points,
                drop_name: !keeps_name || input.drop_name,
            });
        }
        self.release_samples(sub_total);
        self.annos.merge(annos);

        if name == "absent_over_time" {
            let steps = self.num_steps();
            let mut present = vec![false; steps];
            for s in &out {
                for p in &s.points {
                    let k = ((p.t - self.start) / self.interval) as usize;
                    if k < steps {
                        present[k] = true;
                    }
                }
            }
            let points: Vec<Point> = self
                .step_ts()
                .enumerate()
                .filter(|(k, _)| !present[*k])
                .map(|(_, t)| Point { t, v: 1.0 })
                .collect();
            if points.is_empty() {
                return Ok(Vec::new());
            }
            return Ok(vec![ESeries {
                hists: Vec::new(),
                labels: functions::absent_labels(&c.args[0]),
                points,
                drop_name: true,
            }]);
        }
        Ok(out)
    }

    /// Prometheus's `rangeEval`: evaluates `f` on the instant vectors of every step.
    ///
    /// `f` gets the annotations, the step timestamp, one vector per argument, and appends its
    /// result to the output vector.
    pub fn range_eval<F>(&mut self, args: Vec<Matrix>, mut f: F) -> Result<Matrix>
    where
        F: FnMut(&mut Annotations, i64, &[Vec<Elem>], &mut Vec<Elem>) -> Result<()>,
    {
        let inputs_total: usize = args.iter().map(total_points).sum();
        let mut cursors: Vec<Vec<usize>> = args.iter().map(|m| vec![0; m.len()]).collect();
        // Histogram cursors, only for arguments that hold histograms at all.
        let mut hcursors: Vec<Vec<usize>> = args
            .iter()
            .map(|m| {
                if m.iter().any(|s| !s.hists.is_empty()) {
                    vec![0; m.len()]
                } else {
                    Vec::new()
                }
            })
            .collect();
        let mut vecs: Vec<Vec<Elem>> = args.iter().map(|m| Vec::with_capacity(m.len())).collect();
        let mut out_vec: Vec<Elem> = Vec::new();
        let instant = self.start == self.end;
        let mut index: FastMap<Labels, usize> = FastMap::default();
        let mut by_oid: Vec<usize> = Vec::new();
        let mut result: Matrix = Vec::new();
        let steps = self.num_steps();
        let mut out_total = 0usize;
        for ts in self.step_ts() {
            self.check()?;
            let mut gathered = 0;
            for (ai, m) in args.iter().enumerate() {
                let v = &mut vecs[ai];
                v.clear();
                for (si, s) in m.iter().enumerate() {
                    let c = &mut cursors[ai][si];
                    if let Some(p) = s.points.get(*c)
                        && p.t == ts
                    {
                        *c += 1;
                        v.push(Elem {
                            labels: s.labels.clone(),
                            v: p.v,
                            h: None,
                            t: ts,
                            drop_name: s.drop_name,
                            si,
                            oid: NO_OID,
                        });
                        gathered += 1;
                    } else if let Some(c) = hcursors[ai].get_mut(si)
                        && let Some(p) = s.hists.get(*c)
                        && p.t == ts
                    {
                        *c += 1;
                        v.push(Elem {
                            labels: s.labels.clone(),
                            v: 0.0,
                            h: Some(p.h.clone()),
                            t: ts,
                            drop_name: s.drop_name,
                            si,
                            oid: NO_OID,
                        });
                        gathered += 1;
                    }
                }
            }
            self.add_samples(gathered)?;
            out_vec.clear();
            f(self.annos, ts, &vecs, &mut out_vec)?;
            self.release_samples(gathered);
            self.add_samples(out_vec.len())?;
            out_total += out_vec.len();
            if instant {
                let mat = out_vec
                    .drain(..)
                    .map(|e| match e.h {
                        Some(h) => ESeries {
                            labels: e.labels,
                            points: Vec::new(),
                            hists: vec![HPoint { t: ts, h }],
                            drop_name: e.drop_name,
                        },
                        None => {
                            ESeries::floats(e.labels, vec![Point { t: ts, v: e.v }], e.drop_name)
                        }
                    })
                    .collect();
                self.release_samples(inputs_total);
                return Ok(mat);
            }
            for e in out_vec.drain(..) {
                if e.oid != NO_OID {
                    // The producer knows the output series: no label hashing per step.
                    let k = e.oid as usize;
                    if k >= by_oid.len() {
                        by_oid.resize(k + 1, usize::MAX);
                    }
                    match by_oid[k] {
                        usize::MAX => {
                            by_oid[k] = result.len();
                            result.push(new_out_series(e, ts, steps));
                        }
                        i => push_out_point(&mut result[i], e, ts)?,
                    }
                    continue;
                }
                match index.get(&e.labels) {
                    Some(&i) => push_out_point(&mut result[i], e, ts)?,
                    None => {
                        index.insert(e.labels.clone(), result.len());
                        result.push(new_out_series(e, ts, steps));
                    }
                }
            }
        }
        let _ = out_total;
        self.release_samples(inputs_total);
        Ok(result)
    }
}

/// A subquery's histograms as a range function sees them: `CounterReset` and
/// `NotCounterReset` hints become `Unknown`, since the subquery's steps may skip or repeat
/// the samples the hints were about (Prometheus does the same), so resets are detected from
/// the values.
fn unknown_resets(mut hists: Vec<HPoint>) -> Vec<HPoint> {
    use m3query_model::histogram::CounterResetHint;
    for p in &mut hists {
        if matches!(
            p.h.counter_reset_hint,
            CounterResetHint::CounterReset | CounterResetHint::NotCounterReset
        ) {
            let mut h = (*p.h).clone();
            h.counter_reset_hint = CounterResetHint::Unknown;
            p.h = std::sync::Arc::new(h);
        }
    }
    hists
}

/// A new output series of [`Evaluator::range_eval`] holding `e` at `ts`.
fn new_out_series(e: Elem, ts: i64, steps: usize) -> ESeries {
    match e.h {
        Some(h) => ESeries {
            labels: e.labels,
            points: Vec::new(),
            hists: vec![HPoint { t: ts, h }],
            drop_name: e.drop_name,
        },
        None => {
            let mut points = Vec::with_capacity(steps);
            points.push(Point { t: ts, v: e.v });
            ESeries::floats(e.labels, points, e.drop_name)
        }
    }
}

/// Appends `e` at `ts` to an output series; two values for one series at one step are the
/// duplicate-labelset error.
fn push_out_point(s: &mut ESeries, e: Elem, ts: i64) -> Result<()> {
    if s.points.last().is_some_and(|p| p.t == ts) || s.hists.last().is_some_and(|p| p.t == ts) {
        return Err(Error::exec(DUP_LABELSET));
    }
    match e.h {
        Some(h) => s.hists.push(HPoint { t: ts, h }),
        None => s.points.push(Point { t: ts, v: e.v }),
    }
    Ok(())
}

/// One input series of a rollup.
pub(crate) struct RollupInput<'s> {
    pub labels: Labels,
    pub points: std::borrow::Cow<'s, [Point]>,
    /// Native histogram samples (empty for float series).
    pub hists: std::borrow::Cow<'s, [HPoint]>,
    /// Start timestamps of the selected samples (empty for most series and for subqueries,
    /// which produce none).
    pub sts: &'s [StartTimestamp],
    pub drop_name: bool,
}

/// A rollup call's evaluated arguments.
pub(crate) struct RangeCallPrep<'s> {
    pub inputs: Vec<RollupInput<'s>>,
    pub scalars: Vec<Vec<f64>>,
    pub range_ms: i64,
    pub offset_ms: i64,
    pub at: Option<i64>,
    pub anchored: bool,
    pub smoothed: bool,
    /// Points held by a subquery input (released when done).
    pub held: usize,
}

/// Everything a rollup over one series needs, shared by all series of a call.
pub(crate) struct WindowSpec<'s> {
    start: i64,
    interval: i64,
    steps: usize,
    /// The `@` time: the window end is then fixed.
    at: Option<i64>,
    offset_ms: i64,
    range_ms: i64,
    /// `anchored`/`smoothed` widen the fetched window by the lookback delta.
    ext_left: i64,
    ext_right: i64,
    anchored: bool,
    smoothed: bool,
    pos: crate::parser::PosRange,
    param_pos: Option<crate::parser::PosRange>,
    /// Scalar arguments, one value per step.
    scalars: &'s [Vec<f64>],
    f: functions::RangeFn,
    /// The function's name, for the histogram rollups.
    name: &'static str,
    /// The range argument's position (histogram annotations point at it).
    arg_pos: crate::parser::PosRange,
    /// With `@`, every step sees the same window: compute once, repeat (Prometheus's
    /// step-invariant evaluation). Not for `predict_linear`, which uses the step time.
    replicate: bool,
    /// `rate`/`increase` over plain windows: track counter resets per series once.
    counter: bool,
    /// The function reads start timestamps (`rate`, `increase`, `irate`, `resets`).
    reads_sts: bool,
    /// Checked before each series, so cancellation and deadlines stop parallel rollups too.
    ctx: &'s Context,
}

/// One series' rollup output.
pub(crate) struct SeriesRollup {
    pub points: Vec<Point>,
    /// Histogram results (rollups of series with native histograms).
    pub hists: Vec<HPoint>,
    pub annos: Annotations,
    pub err: Option<Error>,
    /// Most points one window held.
    pub max_window: usize,
}

/// One step's window: `(start, end]` as the range function sees it, and the `(fetch_start,
/// fetch_end]` span of samples it is given (wider with `anchored`/`smoothed`).
struct StepWindow {
    ts: i64,
    start: i64,
    end: i64,
    fetch_start: i64,
    fetch_end: i64,
}

impl WindowSpec<'_> {
    /// A fresh context for one series' range-function calls.
    fn range_ctx(&self) -> RangeCtx {
        RangeCtx {
            ts: 0,
            range_start: 0,
            range_end: 0,
            range_ms: self.range_ms,
            params: Vec::with_capacity(self.scalars.len()),
            anchored: self.anchored,
            smoothed: self.smoothed,
            pos: self.pos,
            param_pos: self.param_pos,
            annos: Annotations::new(),
            err: None,
            no_resets: false,
        }
    }

    /// Step `k`'s window.
    fn step_window(&self, k: usize) -> StepWindow {
        let ts = self.start + k as i64 * self.interval;
        let end = self.at.unwrap_or(ts) - self.offset_ms;
        let start = end - self.range_ms;
        StepWindow {
            ts,
            start,
            end,
            fetch_start: start - self.ext_left,
            fetch_end: end + self.ext_right,
        }
    }

    /// Points `rctx` at step `k`'s window and scalar arguments.
    fn enter_step(&self, rctx: &mut RangeCtx, k: usize, w: &StepWindow) {
        rctx.ts = w.ts;
        rctx.range_start = w.start;
        rctx.range_end = w.end;
        rctx.params.clear();
        rctx.params.extend(self.scalars.iter().map(|s| s[k]));
    }

    /// Slides a two-pointer window over `pts` (sorted by time) across all steps.
    fn run(&self, pts: &[Point]) -> SeriesRollup {
        if let Err(e) = check_ctx(self.ctx, "expression evaluation") {
            return SeriesRollup {
                points: Vec::new(),
                hists: Vec::new(),
                annos: Annotations::new(),
                err: Some(e),
                max_window: 0,
            };
        }
        let mut rctx = self.range_ctx();
        // For counter rollups: resets_before[i] counts resets among pts[1..=i], so a window
        // [lo, hi) holds resets[lo+1..hi] = resets_before[hi-1] - resets_before[lo].
        let resets_before: Vec<u32> = if self.counter {
            let mut n = 0u32;
            let mut v = Vec::with_capacity(pts.len());
            for (i, p) in pts.iter().enumerate() {
                if i > 0 && p.v < pts[i - 1].v {
                    n += 1;
                }
                v.push(n);
            }
            v
        } else {
            Vec::new()
        };
        let mut points = Vec::new();
        let mut max_window = 0;
        let (mut lo, mut hi) = (0usize, 0usize);
        let steps = if self.replicate {
            self.steps.min(1)
        } else {
            self.steps
        };
        for k in 0..steps {
            let w = self.step_window(k);
            let (ts, fetch_start, fetch_end) = (w.ts, w.fetch_start, w.fetch_end);
            if lo > 0 && pts[lo - 1].t > fetch_start {
                lo = pts.partition_point(|p| p.t <= fetch_start);
            }
            while lo < pts.len() && pts[lo].t <= fetch_start {
                lo += 1;
            }
            if hi < lo {
                hi = lo;
            }
            if hi > 0 && pts[hi - 1].t > fetch_end {
                hi = pts.partition_point(|p| p.t <= fetch_end);
            }
            while hi < pts.len() && pts[hi].t <= fetch_end {
                hi += 1;
            }
            let window = &pts[lo..hi.max(lo)];
            if window.is_empty() {
                continue;
            }
            max_window = max_window.max(window.len());
            self.enter_step(&mut rctx, k, &w);
            if self.counter {
                let hi_i = lo + window.len() - 1;
                rctx.no_resets = resets_before[hi_i] == resets_before[lo];
            }
            if let Some(v) = (self.f)(window, &mut rctx) {
                if points.is_empty() {
                    points.reserve(self.steps - k);
                }
                points.push(Point { t: ts, v });
            }
            if rctx.err.is_some() {
                break;
            }
        }
        if self.replicate
            && let Some(first) = points.first().copied()
        {
            points = (0..self.steps)
                .map(|k| Point {
                    t: self.start + k as i64 * self.interval,
                    v: first.v,
                })
                .collect();
        }
        SeriesRollup {
            points,
            hists: Vec::new(),
            annos: rctx.annos,
            err: rctx.err,
            max_window,
        }
    }

    /// [`WindowSpec::run`] for a series with native histograms: windows over both kinds of
    /// samples, evaluated by the histogram-aware rollups. Not on the float hot path.
    fn run_mixed(&self, input: &RollupInput<'_>) -> SeriesRollup {
        let mut out = SeriesRollup {
            points: Vec::new(),
            hists: Vec::new(),
            annos: Annotations::new(),
            err: None,
            max_window: 0,
        };
        if let Err(e) = check_ctx(self.ctx, "expression evaluation") {
            out.err = Some(e);
            return out;
        }
        let mut rctx = self.range_ctx();
        let (pts, hs) = (&*input.points, &*input.hists);
        // Start timestamps aligned with the samples, once per series.
        let (fsts, hsts) = if self.reads_sts && !input.sts.is_empty() {
            (
                crate::start_ts::align(pts.iter().map(|p| p.t), input.sts),
                crate::start_ts::align(hs.iter().map(|p| p.t), input.sts),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        for k in 0..self.steps {
            let w = self.step_window(k);
            let (ts, wstart) = (w.ts, w.start);
            let (mut flo, fhi) = (
                pts.partition_point(|p| p.t <= w.fetch_start),
                pts.partition_point(|p| p.t <= w.fetch_end),
            );
            let (mut hlo, hhi) = (
                hs.partition_point(|p| p.t <= w.fetch_start),
                hs.partition_point(|p| p.t <= w.fetch_end),
            );
            if self.anchored || self.smoothed {
                // Of the samples at or before the window start, only the latest (of either
                // kind) anchors the window (Prometheus's `pickFirstSampleIndices`).
                let fb = flo + pts[flo..fhi].partition_point(|p| p.t <= wstart);
                let hb = hlo + hs[hlo..hhi].partition_point(|p| p.t <= wstart);
                let last_f = (fb > flo).then(|| pts[fb - 1].t);
                let last_h = (hb > hlo).then(|| hs[hb - 1].t);
                match (last_f, last_h) {
                    (Some(f), Some(h)) if f > h => {
                        flo = fb - 1;
                        hlo = hb;
                    }
                    (Some(_), Some(_)) | (None, Some(_)) => {
                        flo = fb;
                        hlo = hb - 1;
                    }
                    (Some(_), None) => flo = fb - 1,
                    (None, None) => {}
                }
            }
            let (fw, hw) = (&pts[flo..fhi], &hs[hlo..hhi]);
            if fw.is_empty() && hw.is_empty() {
                continue;
            }
            let sts = crate::start_ts::WindowSts {
                floats: fsts.get(flo..fhi).unwrap_or_default(),
                hists: hsts.get(hlo..hhi).unwrap_or_default(),
            };
            out.max_window = out.max_window.max(fw.len() + hw.len());
            self.enter_step(&mut rctx, k, &w);
            match crate::hist::rollup(
                self.name,
                fw,
                hw,
                sts,
                &input.labels,
                &mut rctx,
                self.f,
                self.arg_pos,
            ) {
                Some(crate::hist::RollupOut::F(v)) => out.points.push(Point { t: ts, v }),
                Some(crate::hist::RollupOut::H(h)) => out.hists.push(HPoint {
                    t: ts,
                    h: std::sync::Arc::new(h),
                }),
                None => {}
            }
            if rctx.err.is_some() {
                break;
            }
        }
        out.annos = rctx.annos;
        out.err = rctx.err;
        out
    }
}

/// Evaluates a duration expression to milliseconds (Prometheus's `durationVisitor`).
pub(crate) fn duration_ms(
    e: &DurationExpr,
    step_ms: i64,
    range_ms: i64,
    allow_negative: bool,
) -> Result<i64> {
    let secs = e
        .eval_seconds(step_ms as f64 / 1000.0, range_ms as f64 / 1000.0)
        .map_err(Error::Execution)?;
    let p = e.pos();
    if secs.is_nan() || secs.is_infinite() {
        return Err(Error::exec(format!(
            "{}:{}: duration is NaN or infinite",
            p.start, p.end
        )));
    }
    if secs <= 0.0 && !allow_negative {
        return Err(Error::exec(format!(
            "{}:{}: duration must be greater than 0",
            p.start, p.end
        )));
    }
    if !(-9_223_372_036.854_775..=9_223_372_036.854_775).contains(&secs) {
        return Err(Error::exec(format!(
            "{}:{}: duration is out of range",
            p.start, p.end
        )));
    }
    Ok((secs * 1000.0) as i64)
}

/// Final clean-up (delayed name removal): drop `__name__` where flagged, then merge series
/// that became identical. Matrices come back sorted by labels.
pub(crate) fn cleanup_names(m: Matrix, instant_vector: bool) -> Result<Matrix> {
    let mut m: Matrix = m
        .into_iter()
        .map(|mut s| {
            if s.drop_name {
                s.labels = drop_reserved(&s.labels);
            }
            s
        })
        .collect();
    if instant_vector {
        // Keep the evaluation order (sort() and friends), check for duplicates by hash.
        let mut seen: FastSet<&Labels> =
            FastSet::with_capacity_and_hasher(m.len(), Default::default());
        for s in &m {
            if !seen.insert(&s.labels) {
                return Err(Error::exec(DUP_LABELSET));
            }
        }
        return Ok(m);
    }
    m.sort_by(|a, b| a.labels.cmp(&b.labels));
    if !m.windows(2).any(|w| w[0].labels == w[1].labels) {
        return Ok(m);
    }
    let mut out: Matrix = Vec::with_capacity(m.len());
    for s in m {
        match out.last_mut() {
            Some(last) if last.labels == s.labels => {
                last.points.extend(s.points);
                last.points.sort_by_key(|p| p.t);
                last.hists.extend(s.hists);
                last.hists.sort_by_key(|p| p.t);
                if last.points.windows(2).any(|w| w[0].t == w[1].t)
                    || last.hists.windows(2).any(|w| w[0].t == w[1].t)
                    || has_common_time(&last.points, &last.hists)
                {
                    return Err(Error::exec(DUP_LABELSET));
                }
            }
            _ => out.push(s),
        }
    }
    Ok(out)
}

/// Whether a float point and a histogram point share a timestamp (both sorted).
fn has_common_time(points: &[Point], hists: &[HPoint]) -> bool {
    if hists.is_empty() || points.is_empty() {
        return false;
    }
    let mut j = 0;
    for p in points {
        while j < hists.len() && hists[j].t < p.t {
            j += 1;
        }
        if hists.get(j).is_some_and(|h| h.t == p.t) {
            return true;
        }
    }
    false
}

/// Merges series with identical labels (after `label_replace`/`label_join`); an error if two
/// have a point at the same time.
pub(crate) fn merge_same_labelset(m: Matrix) -> Result<Matrix> {
    let mut index: FastMap<Labels, usize> =
        FastMap::with_capacity_and_hasher(m.len(), Default::default());
    let mut out: Matrix = Vec::with_capacity(m.len());
    let mut merged_any = false;
    for s in m {
        match index.get(&s.labels) {
            Some(&i) => {
                out[i].points.extend(s.points);
                out[i].hists.extend(s.hists);
                merged_any = true;
            }
            None => {
                index.insert(s.labels.clone(), out.len());
                out.push(s);
            }
        }
    }
    if merged_any {
        for s in &mut out {
            s.points.sort_by_key(|p| p.t);
            s.hists.sort_by_key(|p| p.t);
            if s.points.windows(2).any(|w| w[0].t == w[1].t)
                || s.hists.windows(2).any(|w| w[0].t == w[1].t)
                || has_common_time(&s.points, &s.hists)
            {
                return Err(Error::exec(DUP_LABELSET));
            }
        }
    }
    Ok(out)
}

/// Whether an aggregation operator is one whose output series are input series.
pub(crate) fn is_k_aggregation(op: AggOp) -> bool {
    matches!(
        op,
        AggOp::Topk | AggOp::Bottomk | AggOp::Limitk | AggOp::LimitRatio
    )
}
