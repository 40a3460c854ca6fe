//! Aggregation operators (`sum`, `avg`, ..., `topk`, `limitk`, `count_values`), evaluated over
//! all steps with each input series' group computed once (label hashes, no per-step
//! re-grouping), numerics as Prometheus's `aggregation`/`aggregationK`.

use m3query_model::Labels;

use crate::annotations::msg;
use crate::eval::Evaluator;
use crate::functions::kahan_inc;
use crate::parser::{AggOp, AggregateExpr, Expr};
use crate::value::{ESeries, Elem, FastMap, Matrix, NO_OID, Point};
use crate::{Error, Result};

/// Per-step values of an aggregation parameter (`k`, `q`, ratio).
struct Params {
    values: Vec<f64>,
    min: f64,
    max: f64,
    any_nan: bool,
}

fn eval_params(ev: &mut Evaluator<'_>, e: Option<&Expr>) -> Result<Params> {
    let steps = ev.num_steps();
    let Some(e) = e else {
        return Ok(Params {
            values: vec![0.0; steps],
            min: 0.0,
            max: 0.0,
            any_nan: false,
        });
    };
    let m = ev.eval_matrix(e)?;
    let Some(s) = m.first() else {
        return Ok(Params {
            values: vec![0.0; steps],
            min: 0.0,
            max: 0.0,
            any_nan: false,
        });
    };
    let mut p = Params {
        values: vec![0.0; steps],
        min: f64::MAX,
        max: -f64::MAX,
        any_nan: false,
    };
    for pt in &s.points {
        let k = ((pt.t - ev.start) / ev.interval) as usize;
        if k < steps {
            p.values[k] = pt.v;
        }
        // Go's math.Max/Min propagate NaN.
        p.max = if pt.v.is_nan() || p.max.is_nan() {
            f64::NAN
        } else {
            p.max.max(pt.v)
        };
        p.min = if pt.v.is_nan() || p.min.is_nan() {
            f64::NAN
        } else {
            p.min.min(pt.v)
        };
        p.any_nan |= pt.v.is_nan();
    }
    Ok(p)
}

/// A plain aggregation's group at one step.
#[derive(Clone, Default)]
struct Group {
    /// The running value, shared with the fused path (`fold`, `finish`); stddev and stdvar
    /// keep Welford's mean and sum of squares in it too.
    acc: Acc,
    drop_name: bool,
    /// quantile's values.
    values: Vec<f64>,
}

/// A k-aggregation's (topk, bottomk, limitk, limit_ratio) group at one step.
#[derive(Clone, Default)]
struct KGroup {
    seen: bool,
    /// (input series index, value), in Go heap order.
    heap: Vec<(usize, f64)>,
    /// limitk has its k series.
    complete: bool,
}

/// Each input series' group, computed once from label hashes (no per-step re-grouping).
struct Grouping {
    labels: Vec<Labels>,
    of_series: Vec<usize>,
}

fn group_series<'l>(
    series: impl ExactSizeIterator<Item = &'l Labels>,
    without: bool,
    grouping: &[String],
) -> Grouping {
    let mut key_to_group: FastMap<u64, usize> = FastMap::default();
    let mut labels: Vec<Labels> = Vec::new();
    let mut of_series: Vec<usize> = Vec::with_capacity(series.len());
    for l in series {
        let key = if without {
            l.hash_without_labels(grouping)
        } else if grouping.is_empty() {
            0
        } else {
            l.hash_for_labels(grouping)
        };
        let g = *key_to_group.entry(key).or_insert_with(|| {
            labels.push(if without {
                l.without(grouping)
            } else if grouping.is_empty() {
                Labels::empty()
            } else {
                l.keep(grouping)
            });
            labels.len() - 1
        });
        of_series.push(g);
    }
    Grouping { labels, of_series }
}

/// Prometheus's aggregation entry point: `count_values` and the fused rollup path have their
/// own; the rest evaluate their parameter and input, check the parameter, then run as a plain
/// aggregation ([`aggregate_plain`], Prometheus's `aggregation`) or a k-aggregation
/// ([`aggregate_k`], `aggregationK`).
pub(crate) fn eval_aggregate(ev: &mut Evaluator<'_>, a: &AggregateExpr) -> Result<Matrix> {
    let mut grouping = a.grouping.clone();
    grouping.sort();
    if a.op == AggOp::CountValues {
        return count_values(ev, a, grouping);
    }
    if let Some(out) = fused_over_rollup(ev, a, &grouping)? {
        return Ok(out);
    }
    let params = if a.op.has_param() {
        eval_params(ev, a.param.as_ref())?
    } else {
        eval_params(ev, None)?
    };
    let input = ev.eval_matrix(&a.expr)?;
    if !check_params(ev, a, &params)? {
        return Ok(Vec::new());
    }
    let groups = group_series(input.iter().map(|s| &s.labels), a.without, &grouping);
    if crate::eval::is_k_aggregation(a.op) {
        aggregate_k(ev, a.op, input, &groups, &params, a.expr.pos())
    } else if input.iter().any(|s| !s.hists.is_empty()) {
        aggregate_plain_hist(ev, a.op, input, groups, &params, a.expr.pos())
    } else {
        aggregate_plain(ev, a.op, input, groups, &params)
    }
}

/// Validates the parameter over all steps as Prometheus does before evaluating: errors for
/// what cannot be a k or a ratio, warnings for out-of-range ratios and quantiles. `false` when
/// the answer is empty whatever the input (k below 1 at every step, a ratio of 0).
fn check_params(ev: &mut Evaluator<'_>, a: &AggregateExpr, params: &Params) -> Result<bool> {
    let param_pos = a.param.as_ref().map_or(a.pos, Expr::pos);
    match a.op {
        AggOp::Topk | AggOp::Bottomk | AggOp::Limitk => {
            if params.max < 1.0 {
                return Ok(false);
            }
            if params.any_nan {
                return Err(Error::exec("Parameter value is NaN"));
            }
            if params.min <= i64::MIN as f64 {
                return Err(Error::exec(format!(
                    "Scalar value {} underflows int64",
                    go_v(params.min)
                )));
            }
            if params.max >= i64::MAX as f64 {
                return Err(Error::exec(format!(
                    "Scalar value {} overflows int64",
                    go_v(params.max)
                )));
            }
        }
        AggOp::LimitRatio => {
            if params.max == 0.0 && params.min == 0.0 {
                return Ok(false);
            }
            if params.any_nan {
                return Err(Error::exec("Ratio value is NaN"));
            }
            if params.max > 1.0 {
                ev.annos
                    .warn(msg::invalid_ratio(params.max, 1.0), param_pos);
            }
            if params.min < -1.0 {
                ev.annos
                    .warn(msg::invalid_ratio(params.min, -1.0), param_pos);
            }
        }
        AggOp::Quantile => {
            if params.any_nan {
                ev.annos.warn(msg::invalid_quantile(f64::NAN), param_pos);
            }
            if params.max > 1.0 {
                ev.annos.warn(msg::invalid_quantile(params.max), param_pos);
            }
            if params.min < 0.0 {
                ev.annos.warn(msg::invalid_quantile(params.min), param_pos);
            }
        }
        _ => {}
    }
    Ok(true)
}

/// Fails when the points held so far exceed the query's sample limit.
fn check_held(ev: &Evaluator<'_>, out_points: &[Vec<Point>]) -> Result<()> {
    let held: usize = out_points.iter().map(Vec::len).sum();
    if held > ev.max_samples {
        return Err(Error::TooManySamples);
    }
    Ok(())
}

/// sum, avg, count, min, max, group, stddev, stdvar, quantile: one output series per group.
fn aggregate_plain(
    ev: &mut Evaluator<'_>,
    op: AggOp,
    input: Matrix,
    grouping: Grouping,
    params: &Params,
) -> Result<Matrix> {
    let steps = ev.num_steps();
    let mut groups: Vec<Group> = vec![Group::default(); grouping.labels.len()];
    let mut cursors = vec![0usize; input.len()];
    let mut out_points: Vec<Vec<Point>> = vec![Vec::new(); groups.len()];
    let mut out_drop: Vec<bool> = vec![false; groups.len()];
    let input_total = crate::value::total_points(&input);

    for (step, ts) in (0..steps).map(|k| (k, ev.start + k as i64 * ev.interval)) {
        if step % 64 == 0 {
            crate::check_ctx(ev.ctx, "expression evaluation")?;
        }
        let param = params.values.get(step).copied().unwrap_or(0.0);
        for g in groups.iter_mut() {
            g.acc.seen = false;
        }
        for (si, s) in input.iter().enumerate() {
            let c = &mut cursors[si];
            let Some(p) = s.points.get(*c).filter(|p| p.t == ts) else {
                continue;
            };
            *c += 1;
            let f = p.v;
            let g = &mut groups[grouping.of_series[si]];
            if !g.acc.seen {
                g.drop_name = s.drop_name;
                fold(op, &mut g.acc, f);
                match op {
                    AggOp::Stddev | AggOp::Stdvar => {
                        g.acc.value = if f.is_nan() || f.is_infinite() {
                            f64::NAN
                        } else {
                            0.0
                        };
                    }
                    AggOp::Quantile => {
                        g.values.clear();
                        g.values.push(f);
                    }
                    _ => {}
                }
                continue;
            }
            if s.drop_name {
                g.drop_name = true;
            }
            match op {
                AggOp::Stddev | AggOp::Stdvar => {
                    let g = &mut g.acc;
                    g.count += 1.0;
                    let delta = f - g.mean;
                    g.mean += delta / g.count;
                    g.value += delta * (f - g.mean);
                }
                AggOp::Quantile => g.values.push(f),
                op => fold(op, &mut g.acc, f),
            }
        }
        for (gi, g) in groups.iter_mut().enumerate() {
            if !g.acc.seen {
                continue;
            }
            let v = match op {
                AggOp::Stdvar => g.acc.value / g.acc.count,
                AggOp::Stddev => (g.acc.value / g.acc.count).sqrt(),
                AggOp::Quantile => crate::quantile::quantile(param, &mut g.values),
                op => finish(op, &g.acc),
            };
            if g.drop_name {
                out_drop[gi] = true;
            }
            out_points[gi].push(Point { t: ts, v });
        }
        check_held(ev, &out_points)?;
    }
    ev.release_samples(input_total);

    let mut out: Matrix = Vec::new();
    for (gi, labels) in grouping.labels.into_iter().enumerate() {
        let points = std::mem::take(&mut out_points[gi]);
        if points.is_empty() {
            continue;
        }
        out.push(ESeries {
            hists: Vec::new(),
            labels,
            points,
            drop_name: out_drop[gi],
        });
    }
    ev.add_samples(crate::value::total_points(&out))?;
    Ok(out)
}

/// One group's state in [`aggregate_plain_hist`].
#[derive(Default)]
struct HGroup {
    seen: bool,
    drop_name: bool,
    f: f64,
    c: f64,
    mean: f64,
    count: f64,
    has_float: bool,
    h: Option<crate::hist::HistAcc>,
    has_hist: bool,
    incompatible: bool,
    reset_seen: bool,
    not_reset_seen: bool,
    values: Vec<f64>,
}

/// [`aggregate_plain`] for input with native histograms (Prometheus's `aggregation` with
/// its histogram rules): `sum` and `avg` add histograms (a group mixing floats and
/// histograms yields nothing and a warning), `count` and `group` count them, the others
/// ignore them with an info annotation. Float-only input never comes here.
fn aggregate_plain_hist(
    ev: &mut Evaluator<'_>,
    op: AggOp,
    input: Matrix,
    grouping: Grouping,
    params: &Params,
    pos: crate::parser::PosRange,
) -> Result<Matrix> {
    use m3query_model::histogram::CounterResetHint;
    let steps = ev.num_steps();
    let ngroups = grouping.labels.len();
    let mut cursors = vec![(0usize, 0usize); input.len()];
    let mut out: Vec<ESeries> = grouping
        .labels
        .iter()
        .map(|l| ESeries::floats(l.clone(), Vec::new(), false))
        .collect();
    let input_total = crate::value::total_points(&input);
    let mut annos = crate::annotations::Annotations::new();
    let ignored = |annos: &mut crate::annotations::Annotations| {
        annos.info(msg::histogram_ignored_in_agg(op.as_str()), pos);
    };
    for (step, ts) in (0..steps).map(|k| (k, ev.start + k as i64 * ev.interval)) {
        if step % 64 == 0 {
            crate::check_ctx(ev.ctx, "expression evaluation")?;
        }
        let param = params.values.get(step).copied().unwrap_or(0.0);
        let mut groups: Vec<HGroup> = (0..ngroups).map(|_| HGroup::default()).collect();
        for (si, s) in input.iter().enumerate() {
            let (fc, hc) = &mut cursors[si];
            let (f, h) = if let Some(p) = s.points.get(*fc).filter(|p| p.t == ts) {
                *fc += 1;
                (p.v, None)
            } else if let Some(p) = s.hists.get(*hc).filter(|p| p.t == ts) {
                *hc += 1;
                (0.0, Some(&p.h))
            } else {
                continue;
            };
            let g = &mut groups[grouping.of_series[si]];
            if let Some(h) = h {
                match h.counter_reset_hint {
                    CounterResetHint::CounterReset => g.reset_seen = true,
                    CounterResetHint::NotCounterReset => g.not_reset_seen = true,
                    _ => {}
                }
            }
            if !g.seen {
                *g = HGroup {
                    seen: true,
                    drop_name: s.drop_name,
                    f,
                    mean: f,
                    count: 1.0,
                    reset_seen: g.reset_seen,
                    not_reset_seen: g.not_reset_seen,
                    ..HGroup::default()
                };
                match op {
                    AggOp::Sum | AggOp::Avg => match h {
                        Some(h) => {
                            g.h = Some(crate::hist::HistAcc::new(h));
                            g.has_hist = true;
                        }
                        None => g.has_float = true,
                    },
                    AggOp::Stddev | AggOp::Stdvar => {
                        if h.is_some() {
                            g.seen = false;
                            ignored(&mut annos);
                        } else if f.is_nan() || f.is_infinite() {
                            g.f = f64::NAN;
                        } else {
                            g.f = 0.0;
                        }
                    }
                    AggOp::Quantile => {
                        if h.is_some() {
                            g.seen = false;
                            ignored(&mut annos);
                        }
                        g.values = vec![f];
                    }
                    AggOp::Group => g.f = 1.0,
                    AggOp::Min | AggOp::Max if h.is_some() => {
                        g.seen = false;
                        ignored(&mut annos);
                    }
                    _ => {}
                }
                continue;
            }
            if g.incompatible {
                continue;
            }
            if s.drop_name {
                g.drop_name = true;
            }
            match op {
                AggOp::Sum | AggOp::Avg => {
                    if op == AggOp::Avg {
                        g.count += 1.0;
                    }
                    match h {
                        Some(h) => {
                            g.has_hist = true;
                            if let Some(acc) = &mut g.h {
                                let r = if op == AggOp::Avg {
                                    acc.add_to_mean(h)
                                } else {
                                    acc.add(h)
                                };
                                match r {
                                    Ok(o) => {
                                        if o.custom_bounds_reconciled {
                                            annos.info(
                                                msg::mismatched_custom_buckets("aggregation"),
                                                pos,
                                            );
                                        }
                                    }
                                    Err(_) => {
                                        annos.warn(
                                            msg::mixed_exponential_custom(
                                                s.labels.metric_name().unwrap_or(""),
                                            ),
                                            pos,
                                        );
                                        g.incompatible = true;
                                    }
                                }
                            }
                        }
                        None => {
                            g.has_float = true;
                            (g.f, g.c) = kahan_inc(f, g.f, g.c);
                        }
                    }
                }
                AggOp::Group => {}
                AggOp::Max | AggOp::Min => {
                    if h.is_some() {
                        ignored(&mut annos);
                        continue;
                    }
                    let better = if op == AggOp::Max { g.f < f } else { g.f > f };
                    if better || g.f.is_nan() {
                        g.f = f;
                    }
                }
                AggOp::Count => g.count += 1.0,
                AggOp::Stddev | AggOp::Stdvar => {
                    if h.is_some() {
                        ignored(&mut annos);
                    } else {
                        g.count += 1.0;
                        let delta = f - g.mean;
                        g.mean += delta / g.count;
                        g.f += delta * (f - g.mean);
                    }
                }
                AggOp::Quantile => {
                    if h.is_some() {
                        ignored(&mut annos);
                        continue;
                    }
                    g.values.push(f);
                }
                _ => {}
            }
        }
        for (gi, g) in groups.iter_mut().enumerate() {
            if !g.seen {
                continue;
            }
            let mut hist = None;
            let v = match op {
                AggOp::Sum | AggOp::Avg => {
                    if g.has_float && g.has_hist {
                        annos.warn(msg::mixed_floats_histograms_agg(), pos);
                        continue;
                    }
                    if g.incompatible {
                        continue;
                    }
                    if g.has_hist {
                        if let Some(acc) = g.h.take() {
                            let mut h = if op == AggOp::Avg {
                                acc.mean()
                            } else {
                                acc.sum()
                            };
                            h.compact(0);
                            hist = Some(h);
                        }
                        0.0
                    } else if op == AggOp::Avg {
                        g.f / g.count + g.c / g.count
                    } else {
                        g.f + g.c
                    }
                }
                AggOp::Count => g.count,
                AggOp::Stdvar => g.f / g.count,
                AggOp::Stddev => (g.f / g.count).sqrt(),
                AggOp::Quantile => crate::quantile::quantile(param, &mut g.values),
                _ => g.f,
            };
            if g.reset_seen && g.not_reset_seen {
                annos.warn(msg::counter_reset_collision("aggregation"), pos);
            }
            let o = &mut out[gi];
            o.drop_name = g.drop_name;
            match hist {
                Some(h) => o.hists.push(crate::value::HPoint {
                    t: ts,
                    h: std::sync::Arc::new(h),
                }),
                None => o.points.push(Point { t: ts, v }),
            }
        }
    }
    ev.release_samples(input_total);
    ev.annos.merge(annos);
    out.retain(|s| !s.points.is_empty() || !s.hists.is_empty());
    ev.add_samples(crate::value::total_points(&out))?;
    Ok(out)
}

/// topk, bottomk, limitk, limit_ratio: input series pass through, up to k (or the ratio's
/// share) per group and step.
fn aggregate_k(
    ev: &mut Evaluator<'_>,
    op: AggOp,
    mut input: Matrix,
    grouping: &Grouping,
    params: &Params,
    pos: crate::parser::PosRange,
) -> Result<Matrix> {
    let steps = ev.num_steps();
    let mut groups: Vec<KGroup> = vec![KGroup::default(); grouping.labels.len()];
    let mut cursors = vec![0usize; input.len()];
    // Native histograms: limitk and limit_ratio pass them through, topk and bottomk ignore
    // them (with an info). Only input with histograms pays for this.
    let has_hists = input.iter().any(|s| !s.hists.is_empty());
    let mut hcursors = vec![0usize; if has_hists { input.len() } else { 0 }];
    let mut step_h: Vec<Option<std::sync::Arc<crate::value::FloatHistogram>>> =
        vec![None; hcursors.len()];
    let mut out_hists: Vec<Vec<crate::value::HPoint>> = vec![Vec::new(); hcursors.len()];
    let mut annos = crate::annotations::Annotations::new();
    let mut out_points: Vec<Vec<Point>> = vec![Vec::new(); input.len()];
    let mut out_drop: Vec<bool> = vec![false; input.len()];
    // An instant query lists series in the order the heaps give them, as Prometheus does.
    let mut instant_order: Vec<usize> = Vec::new();
    let input_total = crate::value::total_points(&input);

    for (step, ts) in (0..steps).map(|k| (k, ev.start + k as i64 * ev.interval)) {
        if step % 64 == 0 {
            crate::check_ctx(ev.ctx, "expression evaluation")?;
        }
        let param = params.values.get(step).copied().unwrap_or(0.0);
        for g in groups.iter_mut() {
            g.seen = false;
        }
        let mut k_limit = 0i64;
        let mut ratio = 0.0;
        if op == AggOp::LimitRatio {
            if param == 0.0 {
                advance_all(&input, &mut cursors, ts);
                continue;
            }
            ratio = param.clamp(-1.0, 1.0);
        } else {
            k_limit = (param as i64).min(input.len() as i64);
            if k_limit < 1 {
                advance_all(&input, &mut cursors, ts);
                continue;
            }
        }
        for (si, s) in input.iter().enumerate() {
            let c = &mut cursors[si];
            let f = if let Some(p) = s.points.get(*c).filter(|p| p.t == ts) {
                *c += 1;
                if has_hists {
                    step_h[si] = None;
                }
                p.v
            } else if has_hists {
                let hc = &mut hcursors[si];
                while s.hists.get(*hc).is_some_and(|p| p.t < ts) {
                    *hc += 1;
                }
                let Some(p) = s.hists.get(*hc).filter(|p| p.t == ts) else {
                    continue;
                };
                *hc += 1;
                if matches!(op, AggOp::Topk | AggOp::Bottomk) {
                    annos.info(msg::histogram_ignored_in_agg(op.as_str()), pos);
                    continue;
                }
                step_h[si] = Some(p.h.clone());
                0.0
            } else {
                continue;
            };
            let g = &mut groups[grouping.of_series[si]];
            if !g.seen {
                g.seen = true;
                g.heap.clear();
                g.complete = false;
            }
            match op {
                AggOp::Topk => {
                    if (g.heap.len() as i64) < k_limit {
                        heap_push(&mut g.heap, (si, f), less_value);
                    } else if g.heap[0].1 < f || (g.heap[0].1.is_nan() && !f.is_nan()) {
                        g.heap[0] = (si, f);
                        if k_limit > 1 {
                            heap_fix(&mut g.heap, 0, less_value);
                        }
                    }
                }
                AggOp::Bottomk => {
                    if (g.heap.len() as i64) < k_limit {
                        heap_push(&mut g.heap, (si, f), less_reverse);
                    } else if g.heap[0].1 > f || (g.heap[0].1.is_nan() && !f.is_nan()) {
                        g.heap[0] = (si, f);
                        if k_limit > 1 {
                            heap_fix(&mut g.heap, 0, less_reverse);
                        }
                    }
                }
                AggOp::Limitk => {
                    if g.complete {
                        continue;
                    }
                    if (g.heap.len() as i64) < k_limit {
                        heap_push(&mut g.heap, (si, f), less_value);
                    }
                    if g.heap.len() as i64 == k_limit {
                        g.complete = true;
                    }
                }
                _ => {
                    let offset = ratio_offset(&s.labels);
                    if (ratio >= 0.0 && offset < ratio) || (ratio < 0.0 && offset >= 1.0 + ratio) {
                        heap_push(&mut g.heap, (si, f), less_value);
                    }
                }
            }
        }
        for g in groups.iter_mut().filter(|g| g.seen) {
            match op {
                AggOp::Topk => insertion_sort(&mut g.heap, |x, y| less_value(y, x)),
                AggOp::Bottomk => insertion_sort(&mut g.heap, |x, y| less_reverse(y, x)),
                _ => {}
            }
            for (si, v) in g.heap.drain(..) {
                if out_points[si].is_empty() && out_hists.get(si).is_none_or(Vec::is_empty) {
                    out_drop[si] = input[si].drop_name;
                }
                match step_h.get_mut(si).and_then(Option::take) {
                    Some(h) => out_hists[si].push(crate::value::HPoint { t: ts, h }),
                    None => out_points[si].push(Point { t: ts, v }),
                }
                if steps == 1 {
                    instant_order.push(si);
                }
            }
        }
        check_held(ev, &out_points)?;
    }
    ev.release_samples(input_total);

    let order: Vec<usize> = if steps == 1 {
        instant_order
    } else {
        (0..input.len()).collect()
    };
    ev.annos.merge(annos);
    let mut out: Matrix = Vec::new();
    for si in order {
        let points = std::mem::take(&mut out_points[si]);
        let hists = out_hists
            .get_mut(si)
            .map(std::mem::take)
            .unwrap_or_default();
        if points.is_empty() && hists.is_empty() {
            continue;
        }
        out.push(ESeries {
            hists,
            labels: std::mem::take(&mut input[si].labels),
            points,
            drop_name: out_drop[si],
        });
    }
    ev.add_samples(crate::value::total_points(&out))?;
    Ok(out)
}

/// The running value of one group at one step: per step in `eval_aggregate`, per (group,
/// step) in a fused aggregation.
#[derive(Clone, Copy, Default)]
struct Acc {
    seen: bool,
    incremental: bool,
    value: f64,
    mean: f64,
    c: f64,
    count: f64,
}

/// Series per group at or above which an aggregation of a rollup is fused.
const FUSE_MIN_SERIES_PER_GROUP: usize = 4;
/// Series whose rollups are materialized at once by a fused aggregation.
const FUSE_CHUNK: usize = 4096;

/// `sum|avg|count|min|max|group (rollup(selector[range]))` without materializing the rollup:
/// each series' rollup is folded into its group's per-step state as soon as it is computed
/// (VictoriaMetrics's incremental aggregation). Series are folded in input order, so every
/// step sees the same additions in the same order as the plain path. `None` when the shape
/// does not fit (or there are too few series per group to gain anything).
fn fused_over_rollup(
    ev: &mut Evaluator<'_>,
    a: &AggregateExpr,
    grouping: &[String],
) -> Result<Option<Matrix>> {
    if !matches!(
        a.op,
        AggOp::Sum | AggOp::Avg | AggOp::Count | AggOp::Min | AggOp::Max | AggOp::Group
    ) {
        return Ok(None);
    }
    // The input: a rollup over a range selector, or a plain instant selector.
    enum Src<'e> {
        Rollup(
            &'e crate::parser::Call,
            usize,
            crate::functions::RangeFn,
            &'e crate::parser::MatrixSelector,
        ),
        Instant(&'e crate::parser::VectorSelector),
    }
    let src = match a.expr.unwrap_parens() {
        Expr::VectorSelector(vs) if !vs.smoothed => Src::Instant(vs),
        Expr::Call(c) => {
            let crate::functions::FuncKind::Range(f) = crate::functions::kind(c.func.name) else {
                return Ok(None);
            };
            if c.func.name == "absent_over_time" {
                return Ok(None);
            }
            let Some((idx, Expr::MatrixSelector(ms))) = c
                .args
                .iter()
                .map(Expr::unwrap_parens)
                .enumerate()
                .find(|(_, e)| matches!(e, Expr::MatrixSelector(_)))
            else {
                return Ok(None);
            };
            Src::Rollup(c, idx, f, ms)
        }
        _ => return Ok(None),
    };
    let sel_id = match &src {
        Src::Rollup(_, _, _, ms) => ms.vs.id,
        Src::Instant(vs) => vs.id,
    };
    // Groups from the selected series' labels (a rollup keeps its input's labels).
    let data = ev.sel.get(sel_id).map(|v| v.as_slice()).unwrap_or_default();
    // Histograms take the general path.
    if data.iter().any(|s| !s.hists.is_empty()) {
        return Ok(None);
    }
    let Grouping {
        labels: group_labels,
        of_series: series_group,
    } = group_series(data.iter().map(|s| &s.labels), a.without, grouping);
    if data.is_empty() || group_labels.len() * FUSE_MIN_SERIES_PER_GROUP > data.len() {
        return Ok(None);
    }

    let steps = ev.num_steps();
    let ngroups = group_labels.len();
    ev.add_samples(ngroups * steps)?;
    let mut accs = vec![Acc::default(); ngroups * steps];
    let mut group_drop = vec![false; ngroups];
    let mut annos = crate::annotations::Annotations::new();
    let (start, interval) = (ev.start, ev.interval);
    let mut fold_series = |g: usize, points: &[Point], drop: bool| {
        group_drop[g] |= drop;
        let row = &mut accs[g * steps..(g + 1) * steps];
        for p in points {
            let k = ((p.t - start) / interval) as usize;
            if let Some(acc) = row.get_mut(k) {
                fold(a.op, acc, p.v);
            }
        }
    };
    match src {
        Src::Instant(vs) => {
            for (chunk_no, chunk) in data.chunks(FUSE_CHUNK).enumerate() {
                crate::check_ctx(ev.ctx, "expression evaluation")?;
                let points: Vec<Vec<Point>> = if chunk.len() >= ev.parallel_threshold {
                    crate::par::map(chunk, |s| ev.lookup_series(vs, &s.points, false))
                } else {
                    chunk
                        .iter()
                        .map(|s| ev.lookup_series(vs, &s.points, false))
                        .collect()
                };
                for (i, p) in points.iter().enumerate() {
                    if !p.is_empty() {
                        fold_series(series_group[chunk_no * FUSE_CHUNK + i], p, false);
                    }
                }
            }
        }
        Src::Rollup(c, idx, f, _) => {
            let name = c.func.name;
            let keeps_name = matches!(name, "last_over_time" | "first_over_time");
            let prep = ev.prepare_range_call(c, idx)?;
            let spec = ev.window_spec(c, idx, &prep, f);
            let arg_pos = c.args[idx].pos();
            for (chunk_no, chunk) in prep.inputs.chunks(FUSE_CHUNK).enumerate() {
                let results = ev.run_rollups(&spec, chunk)?;
                // The largest window held counts towards the sample limit, as in the plain path.
                let max_window = results.iter().map(|r| r.max_window).max().unwrap_or(0);
                if ev.counters.cur + max_window > ev.max_samples {
                    return Err(Error::TooManySamples);
                }
                for (i, (input, r)) in chunk.iter().zip(results).enumerate() {
                    if let Some(e) = r.err {
                        return Err(e);
                    }
                    annos.merge(r.annos);
                    if r.points.is_empty() {
                        continue;
                    }
                    if matches!(name, "rate" | "increase")
                        && let Some(mn) = input.labels.metric_name()
                        && !mn.ends_with("_total")
                        && !mn.ends_with("_sum")
                        && !mn.ends_with("_count")
                        && !mn.ends_with("_bucket")
                    {
                        annos.info(msg::possible_non_counter(mn), arg_pos);
                    }
                    fold_series(
                        series_group[chunk_no * FUSE_CHUNK + i],
                        &r.points,
                        !keeps_name || input.drop_name,
                    );
                }
            }
        }
    }
    ev.annos.merge(annos);
    ev.release_samples(ngroups * steps);
    let mut out: Matrix = Vec::with_capacity(ngroups);
    for (g, labels) in group_labels.into_iter().enumerate() {
        let row = &accs[g * steps..(g + 1) * steps];
        let points: Vec<Point> = row
            .iter()
            .enumerate()
            .filter(|(_, acc)| acc.seen)
            .map(|(k, acc)| Point {
                t: ev.start + k as i64 * ev.interval,
                v: finish(a.op, acc),
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        ev.add_samples(points.len())?;
        out.push(ESeries {
            hists: Vec::new(),
            labels,
            points,
            drop_name: group_drop[g],
        });
    }
    Ok(Some(out))
}

/// Folds one value into a group's state (sum, avg, min, max, count, group; the first value
/// initialises it).
#[inline]
fn fold(op: AggOp, g: &mut Acc, f: f64) {
    if !g.seen {
        *g = Acc {
            seen: true,
            value: if op == AggOp::Group { 1.0 } else { f },
            mean: f,
            count: 1.0,
            ..Acc::default()
        };
        return;
    }
    match op {
        AggOp::Sum => (g.value, g.c) = kahan_inc(f, g.value, g.c),
        AggOp::Avg => {
            g.count += 1.0;
            if !g.incremental {
                let (nv, nc) = kahan_inc(f, g.value, g.c);
                if !nv.is_infinite() {
                    g.value = nv;
                    g.c = nc;
                    return;
                }
                g.incremental = true;
                g.mean = g.value / (g.count - 1.0);
                g.c /= g.count - 1.0;
            }
            let q = (g.count - 1.0) / g.count;
            (g.mean, g.c) = kahan_inc(f / g.count, q * g.mean, q * g.c);
        }
        AggOp::Max if g.value < f || g.value.is_nan() => g.value = f,
        AggOp::Min if g.value > f || g.value.is_nan() => g.value = f,
        AggOp::Count => g.count += 1.0,
        _ => {}
    }
}

/// A group's value at a step.
#[inline]
fn finish(op: AggOp, g: &Acc) -> f64 {
    match op {
        AggOp::Avg => {
            if g.incremental {
                g.mean + g.c
            } else {
                g.value / g.count + g.c / g.count
            }
        }
        AggOp::Count => g.count,
        AggOp::Sum => {
            if g.value.is_infinite() {
                g.value
            } else {
                g.value + g.c
            }
        }
        _ => g.value,
    }
}

fn advance_all(input: &Matrix, cursors: &mut [usize], ts: i64) {
    for (si, s) in input.iter().enumerate() {
        if s.points.get(cursors[si]).is_some_and(|p| p.t == ts) {
            cursors[si] += 1;
        }
    }
}

/// Go's `%v` of a float in error messages.
fn go_v(v: f64) -> String {
    crate::parser::printer_g(v)
}

/// `vectorByValueHeap.Less`: NaN first, then ascending.
fn less_value(a: &(usize, f64), b: &(usize, f64)) -> bool {
    if a.1.is_nan() {
        return true;
    }
    a.1 < b.1
}

/// `vectorByReverseValueHeap.Less`: NaN first, then descending.
fn less_reverse(a: &(usize, f64), b: &(usize, f64)) -> bool {
    if a.1.is_nan() {
        return true;
    }
    a.1 > b.1
}

type Less = fn(&(usize, f64), &(usize, f64)) -> bool;

/// Go's `container/heap.Push`.
fn heap_push(h: &mut Vec<(usize, f64)>, x: (usize, f64), less: Less) {
    h.push(x);
    let n = h.len() - 1;
    heap_up(h, n, less);
}

fn heap_up(h: &mut [(usize, f64)], mut j: usize, less: Less) {
    while j > 0 {
        let i = (j - 1) / 2;
        if !less(&h[j], &h[i]) {
            break;
        }
        h.swap(i, j);
        j = i;
    }
}

fn heap_down(h: &mut [(usize, f64)], i0: usize, less: Less) -> bool {
    let n = h.len();
    let mut i = i0;
    loop {
        let j1 = 2 * i + 1;
        if j1 >= n {
            break;
        }
        let mut j = j1;
        let j2 = j1 + 1;
        if j2 < n && less(&h[j2], &h[j1]) {
            j = j2;
        }
        if !less(&h[j], &h[i]) {
            break;
        }
        h.swap(i, j);
        i = j;
    }
    i > i0
}

/// Go's `container/heap.Fix`.
fn heap_fix(h: &mut [(usize, f64)], i: usize, less: Less) {
    if !heap_down(h, i, less) {
        heap_up(h, i, less);
    }
}

/// Go's insertion sort (what `sort.Sort` does for short inputs): stable.
fn insertion_sort(v: &mut [(usize, f64)], less: impl Fn(&(usize, f64), &(usize, f64)) -> bool) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && less(&v[j], &v[j - 1]) {
            v.swap(j, j - 1);
            j -= 1;
        }
    }
}

/// `limit_ratio`'s deterministic sampling offset in `[0, 1]` from the series' label hash
/// (Prometheus's `HashRatioSampler`: `labels.Hash()`, which in its default `stringlabels`
/// build is XXH64 over the encoded labels, each string prefixed by its length: one byte
/// below 255, else 0xFF and three little-endian bytes).
fn ratio_offset(labels: &Labels) -> f64 {
    fn put(buf: &mut Vec<u8>, s: &str) {
        let n = s.len();
        if n < 255 {
            buf.push(n as u8);
        } else {
            buf.extend_from_slice(&[255, n as u8, (n >> 8) as u8, (n >> 16) as u8]);
        }
        buf.extend_from_slice(s.as_bytes());
    }
    let mut buf = Vec::with_capacity(128);
    for l in labels.iter() {
        put(&mut buf, &l.name);
        put(&mut buf, &l.value);
    }
    crate::xxhash::xxh64(&buf, 0) as f64 / u64::MAX as f64
}

fn count_values(
    ev: &mut Evaluator<'_>,
    a: &AggregateExpr,
    mut grouping: Vec<String>,
) -> Result<Matrix> {
    let label = match a.param.as_ref().map(Expr::unwrap_parens) {
        Some(Expr::String {
            invalid_utf8: Some(b),
            ..
        }) => {
            return Err(Error::exec(format!(
                "invalid label name {}",
                crate::parser::lexer::go_quote_bytes(b)
            )));
        }
        Some(Expr::String { val, .. }) => val.clone(),
        _ => String::new(),
    };
    if label.is_empty() {
        return Err(Error::exec(format!(
            "invalid label name {}",
            crate::parser::go_quote(&label)
        )));
    }
    if !a.without {
        grouping.push(label.clone());
        grouping.sort();
    }
    let input = ev.eval_matrix(&a.expr)?;
    let without = a.without;
    ev.range_eval(vec![input], move |_, ts, vecs, out| {
        let mut index: FastMap<u64, usize> = FastMap::default();
        let mut res: Vec<(Labels, usize)> = Vec::new();
        for e in &vecs[0] {
            let mut b = e.labels.builder();
            let value = match &e.h {
                Some(h) => crate::hist::go_string(h),
                None => crate::parser::format_float_f_go(e.v),
            };
            b.set(label.as_str(), value);
            let metric = b.labels();
            let key = if without {
                metric.hash_without_labels(&grouping)
            } else {
                metric.hash_for_labels(&grouping)
            };
            match index.get(&key) {
                Some(&i) => res[i].1 += 1,
                None => {
                    index.insert(key, res.len());
                    let l = if without {
                        metric.without(&grouping)
                    } else {
                        metric.keep(&grouping)
                    };
                    res.push((l, 1));
                }
            }
        }
        for (labels, n) in res {
            out.push(Elem {
                h: None,
                labels,
                v: n as f64,
                t: ts,
                drop_name: false,
                si: 0,
                oid: NO_OID,
            });
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_heap_keeps_k_largest() {
        let mut h = Vec::new();
        let vals = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        for (i, v) in vals.iter().enumerate() {
            if h.len() < 3 {
                heap_push(&mut h, (i, *v), less_value);
            } else if h[0].1 < *v {
                h[0] = (i, *v);
                heap_fix(&mut h, 0, less_value);
            }
        }
        insertion_sort(&mut h, |x, y| less_value(y, x));
        assert_eq!(
            h.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![9.0, 6.0, 5.0]
        );
    }
}
