//! Planning: prepares a parsed expression for one evaluation and finds what to select.
//!
//! - Folds `start()`, `end()`, `range()`, `step()` into numbers and duration expressions into
//!   milliseconds (Prometheus's `foldQueryContextFunctions` and `durationVisitor`).
//! - Resolves `@ start()` / `@ end()` to timestamps.
//! - Numbers every selector and computes the time range it needs and the hints to push down
//!   (Prometheus's `getTimeRangesForSelector`/`populateSeries`), so each selector is selected
//!   once for the whole query.

use m3query_model::Matcher;
use m3query_storage::SelectHints;

use crate::Result;
use crate::eval::duration_ms;
use crate::parser::{AtSpecial, BinOp, Expr, PosRange};

/// What one selector needs from storage.
#[derive(Debug, Clone)]
pub(crate) struct SelectSpec {
    pub matchers: Vec<Matcher>,
    pub hints: SelectHints,
    /// The selector as written, for the span.
    pub text: String,
    /// Only histogram counts and sums are read (under `histogram_count`/`_sum`/`_avg`):
    /// histograms are decoded as Prometheus's `HistogramStatsIterator` returns them.
    pub skip_histogram_buckets: bool,
}

/// The query's time parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueryTimes {
    pub start: i64,
    pub end: i64,
    /// 0 for instant queries.
    pub step: i64,
    pub lookback: i64,
    pub default_subquery_step: i64,
}

/// Folds query-context functions and duration expressions, resolves `@ start()/end()`.
pub(crate) fn preprocess(e: &mut Expr, t: &QueryTimes) -> Result<()> {
    let range_ms = t.end - t.start;
    let step_ms = if t.start == t.end { 0 } else { t.step };
    let at = |s: AtSpecial| match s {
        AtSpecial::Start => t.start,
        AtSpecial::End => t.end,
    };
    match e {
        Expr::Call(c) => {
            let folded = match c.func.name {
                "start" => Some(t.start as f64 / 1000.0),
                "end" => Some(t.end as f64 / 1000.0),
                "range" => Some(range_ms as f64 / 1000.0),
                "step" => Some(step_ms as f64 / 1000.0),
                _ => None,
            };
            if let Some(val) = folded {
                *e = Expr::Number { val, pos: c.pos };
                return Ok(());
            }
            for a in &mut c.args {
                preprocess(a, t)?;
            }
        }
        Expr::Aggregate(a) => {
            preprocess(&mut a.expr, t)?;
            if let Some(p) = &mut a.param {
                preprocess(p, t)?;
            }
        }
        Expr::Binary(b) => {
            preprocess(&mut b.lhs, t)?;
            preprocess(&mut b.rhs, t)?;
        }
        Expr::Paren(inner, _) | Expr::StepInvariant(inner) => preprocess(inner, t)?,
        Expr::Unary { expr, .. } => preprocess(expr, t)?,
        Expr::VectorSelector(vs) => {
            if let Some(oe) = &vs.offset_expr {
                vs.original_offset_ms = duration_ms(oe, step_ms, range_ms, true)?;
            }
            if let Some(s) = vs.start_or_end {
                vs.timestamp = Some(at(s));
            }
        }
        Expr::MatrixSelector(ms) => {
            if let Some(re) = &ms.range_expr {
                ms.range_ms = duration_ms(re, step_ms, range_ms, false)?;
            }
            if let Some(oe) = &ms.vs.offset_expr {
                ms.vs.original_offset_ms = duration_ms(oe, step_ms, range_ms, true)?;
            }
            if let Some(s) = ms.vs.start_or_end {
                ms.vs.timestamp = Some(at(s));
            }
        }
        Expr::Subquery(sq) => {
            if let Some(re) = &sq.range_expr {
                sq.range_ms = duration_ms(re, step_ms, range_ms, false)?;
            }
            if let Some(se) = &sq.step_expr {
                sq.step_ms = duration_ms(se, step_ms, range_ms, false)?;
            }
            if let Some(oe) = &sq.offset_expr {
                sq.original_offset_ms = duration_ms(oe, step_ms, range_ms, true)?;
            }
            if let Some(s) = sq.start_or_end {
                sq.timestamp = Some(at(s));
            }
            preprocess(&mut sq.expr, t)?;
        }
        Expr::Number { .. } | Expr::String { .. } => {}
    }
    Ok(())
}

/// Subqueries on the path from the root to a selector (offset, range, `@`, step), and what
/// decides whether its histograms need buckets.
#[derive(Clone, Copy, Default)]
struct SubqPath {
    offset: i64,
    range: i64,
    ts: Option<i64>,
    /// The innermost subquery's step (0: none on the path).
    step: i64,
    /// Under `histogram_count`/`histogram_sum`/`histogram_avg`.
    hist_stats: bool,
    /// Under a subquery, a quantile/fraction function or a trim operator, which need
    /// buckets whatever is above them (Prometheus's `detectHistogramStatsDecoding`).
    needs_buckets: bool,
}

/// Numbers selectors and returns what each needs, in id order.
pub(crate) fn collect_selectors(e: &mut Expr, t: &QueryTimes) -> Vec<SelectSpec> {
    let mut out = Vec::new();
    walk(e, t, SubqPath::default(), None, &mut out);
    out
}

/// The function or aggregation a selector sits in, and its grouping (for hints).
#[derive(Clone)]
struct Parent {
    func: Option<String>,
    grouping: Vec<String>,
    by: bool,
}

fn walk(
    e: &mut Expr,
    t: &QueryTimes,
    path: SubqPath,
    parent: Option<&Parent>,
    out: &mut Vec<SelectSpec>,
) {
    match e {
        Expr::VectorSelector(vs) => {
            vs.id = out.len();
            let (start, end) = time_range(
                t,
                path,
                vs.timestamp,
                vs.original_offset_ms,
                0,
                vs.anchored,
                vs.smoothed,
            );
            out.push(spec(
                &vs.matchers,
                vs.to_string(),
                start,
                end,
                0,
                t,
                path,
                parent,
            ));
        }
        Expr::MatrixSelector(ms) => {
            ms.vs.id = out.len();
            let vs = &ms.vs;
            let (start, end) = time_range(
                t,
                path,
                vs.timestamp,
                vs.original_offset_ms,
                ms.range_ms,
                vs.anchored,
                vs.smoothed,
            );
            let text = Expr::MatrixSelector(ms.clone()).to_string();
            out.push(spec(
                &ms.vs.matchers,
                text,
                start,
                end,
                ms.range_ms,
                t,
                path,
                parent,
            ));
        }
        Expr::Subquery(sq) => {
            let mut p = path;
            p.offset += sq.original_offset_ms;
            p.range += sq.range_ms;
            if let Some(ts) = sq.timestamp {
                p.offset = sq.original_offset_ms;
                p.range = sq.range_ms;
                p.ts = Some(ts);
            }
            p.step = if sq.step_ms > 0 {
                sq.step_ms
            } else {
                t.default_subquery_step
            };
            p.needs_buckets = true;
            walk(&mut sq.expr, t, p, parent, out);
        }
        Expr::Call(c) => {
            let par = Parent {
                func: Some(c.func.name.to_string()),
                grouping: Vec::new(),
                by: false,
            };
            // info()'s second argument only holds label matchers: it is never selected.
            let n = if c.func.name == "info" {
                1
            } else {
                c.args.len()
            };
            let mut path = path;
            match c.func.name {
                "histogram_count" | "histogram_sum" | "histogram_avg" => path.hist_stats = true,
                "histogram_quantile" | "histogram_quantiles" | "histogram_fraction" => {
                    path.needs_buckets = true;
                }
                _ => {}
            }
            for a in c.args.iter_mut().take(n) {
                walk(a, t, path, Some(&par), out);
            }
        }
        Expr::Aggregate(a) => {
            let par = Parent {
                func: Some(a.op.as_str().to_string()),
                grouping: a.grouping.clone(),
                by: !a.without,
            };
            if let Some(p) = &mut a.param {
                walk(p, t, path, Some(&par), out);
            }
            walk(&mut a.expr, t, path, Some(&par), out);
        }
        Expr::Binary(b) => {
            let mut path = path;
            if matches!(b.op, BinOp::TrimUpper | BinOp::TrimLower) {
                path.needs_buckets = true;
            }
            walk(&mut b.lhs, t, path, None, out);
            walk(&mut b.rhs, t, path, None, out);
        }
        Expr::Paren(inner, _) | Expr::StepInvariant(inner) => walk(inner, t, path, parent, out),
        Expr::Unary { expr, .. } => walk(expr, t, path, parent, out),
        Expr::Number { .. } | Expr::String { .. } => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn spec(
    matchers: &[Matcher],
    text: String,
    start: i64,
    end: i64,
    range: i64,
    t: &QueryTimes,
    path: SubqPath,
    parent: Option<&Parent>,
) -> SelectSpec {
    SelectSpec {
        matchers: matchers.to_vec(),
        hints: SelectHints {
            start_ms: start,
            end_ms: end,
            step_ms: if path.step > 0 { path.step } else { t.step },
            range_ms: range,
            func: parent.and_then(|p| p.func.clone()),
            grouping: parent.map(|p| p.grouping.clone()).unwrap_or_default(),
            by: parent.is_some_and(|p| p.by),
            limit: 0,
        },
        text,
        skip_histogram_buckets: path.hist_stats && !path.needs_buckets,
    }
}

/// Prometheus's `getTimeRangesForSelector`: inclusive `[start, end]` in ms.
fn time_range(
    t: &QueryTimes,
    path: SubqPath,
    ts: Option<i64>,
    offset: i64,
    range: i64,
    anchored: bool,
    smoothed: bool,
) -> (i64, i64) {
    let (mut start, mut end) = (t.start, t.end);
    if let Some(s) = path.ts {
        start = s;
        end = s;
    }
    if let Some(s) = ts {
        start = s;
        end = s;
    } else {
        start = start - path.offset - path.range;
        end -= path.offset;
    }
    if range == 0 {
        start -= t.lookback - 1;
        if smoothed {
            end += t.lookback;
        }
    } else if anchored {
        start -= t.lookback + range - 1;
    } else if smoothed {
        start -= t.lookback + range - 1;
        end += t.lookback;
    } else {
        start -= range - 1;
    }
    (start - offset, end - offset)
}

/// A placeholder position for synthesized nodes.
#[allow(dead_code)]
pub(crate) const NO_POS: PosRange = PosRange { start: 0, end: 0 };
