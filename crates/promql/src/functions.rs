//! PromQL functions as a table: every function the parser knows maps to an implementation
//! kind — a rollup over a range-vector window ([`FuncKind::Range`]), a function of the instant
//! vectors of one step ([`FuncKind::Instant`]), one handled by the evaluator itself
//! ([`FuncKind::Special`]) — or to an explicit [`FuncKind::Unsupported`] error.
//!
//! Numerics follow Prometheus's `promql/functions.go` exactly (Kahan sums, incremental means,
//! the extrapolation rules of `rate`/`increase`/`delta`, `anchored`/`smoothed` windows).

use std::cmp::Ordering;

use m3query_model::{Labels, METRIC_NAME, MatchOp};

use crate::annotations::{Annotations, msg};
use crate::eval::Evaluator;
use crate::parser::{Call, Expr, PosRange};
use crate::value::{Elem, Matrix, NO_OID, Point};
use crate::{Error, Result};

/// Context a rollup sees for one window.
pub(crate) struct RangeCtx {
    /// The evaluation timestamp.
    pub ts: i64,
    /// The window `(range_start, range_end]` before `anchored`/`smoothed` extension.
    pub range_start: i64,
    pub range_end: i64,
    pub range_ms: i64,
    /// Scalar arguments at this step, in argument order without the range vector.
    pub params: Vec<f64>,
    pub anchored: bool,
    pub smoothed: bool,
    pub pos: PosRange,
    pub param_pos: Option<PosRange>,
    pub annos: Annotations,
    /// Set by a rollup to fail the query.
    pub err: Option<Error>,
    /// True when the caller knows the window holds no counter reset (a value lower than the
    /// one before it), so `rate`/`increase` can skip looking for them.
    pub no_resets: bool,
}

/// A rollup: the value for one window, or `None` for no output at this step.
pub(crate) type RangeFn = fn(&[Point], &mut RangeCtx) -> Option<f64>;

/// A function of one step's instant vectors (one per argument; scalars are one-element
/// vectors, string arguments empty vectors read from the call's AST).
pub(crate) type InstantFn =
    fn(&Call, i64, &[Vec<Elem>], &mut Vec<Elem>, &mut Annotations) -> Result<()>;

#[derive(Clone, Copy)]
pub(crate) enum FuncKind {
    Range(RangeFn),
    Instant(InstantFn),
    /// Evaluated by the evaluator itself (`label_replace`, `label_join`, `info`).
    Special,
    Unsupported(&'static str),
}

/// Functions that accept `anchored` range selectors, sorted as Prometheus prints them.
pub(crate) const ANCHORED_SAFE: &[&str] = &["changes", "delta", "increase", "rate", "resets"];
/// Functions that accept `smoothed` range selectors.
pub(crate) const SMOOTHED_SAFE: &[&str] = &["delta", "increase", "rate"];

const NATIVE_HISTOGRAMS: &str =
    "native histograms are not supported by this engine (the storage holds float samples only)";

/// The implementation table.
pub(crate) fn kind(name: &str) -> FuncKind {
    use FuncKind::*;
    match name {
        // Rollups.
        "rate" => Range(|w, c| extrapolated_rate(w, c, true, true)),
        "increase" => Range(|w, c| extrapolated_rate(w, c, true, false)),
        "delta" => Range(|w, c| extrapolated_rate(w, c, false, false)),
        "irate" => Range(|w, _| instant_value(w, true)),
        "idelta" => Range(|w, _| instant_value(w, false)),
        "avg_over_time" => Range(|w, _| Some(avg_over_time(w))),
        "sum_over_time" => Range(|w, _| Some(sum_over_time(w))),
        "count_over_time" => Range(|w, _| Some(w.len() as f64)),
        "min_over_time" => {
            Range(|w, _| compare_over_time(w, |cur, m| cur < m || m.is_nan(), false))
        }
        "max_over_time" => {
            Range(|w, _| compare_over_time(w, |cur, m| cur > m || m.is_nan(), false))
        }
        "ts_of_min_over_time" => {
            Range(|w, _| compare_over_time(w, |cur, m| cur <= m || m.is_nan(), true))
        }
        "ts_of_max_over_time" => {
            Range(|w, _| compare_over_time(w, |cur, m| cur >= m || m.is_nan(), true))
        }
        "first_over_time" => Range(|w, _| w.first().map(|p| p.v)),
        "last_over_time" => Range(|w, _| w.last().map(|p| p.v)),
        "ts_of_first_over_time" => Range(|w, _| w.first().map(|p| p.t as f64 / 1000.0)),
        "ts_of_last_over_time" => Range(|w, _| w.last().map(|p| p.t as f64 / 1000.0)),
        "present_over_time" => Range(|_, _| Some(1.0)),
        "absent_over_time" => Range(|_, _| Some(1.0)),
        "stddev_over_time" => Range(|w, _| Some(variance_over_time(w).sqrt())),
        "stdvar_over_time" => Range(|w, _| Some(variance_over_time(w))),
        "mad_over_time" => Range(|w, _| Some(mad_over_time(w))),
        "quantile_over_time" => Range(quantile_over_time),
        "changes" => Range(changes),
        "resets" => Range(resets),
        "deriv" => Range(|w, _| {
            if w.len() < 2 {
                return None;
            }
            Some(linear_regression(w, w[0].t).0)
        }),
        "predict_linear" => Range(|w, c| {
            if w.len() < 2 {
                return None;
            }
            let d = c.params.first().copied().unwrap_or(f64::NAN);
            let (slope, intercept) = linear_regression(w, c.ts);
            Some(slope * d + intercept)
        }),
        "double_exponential_smoothing" => Range(double_exponential_smoothing),

        // Instant-vector functions.
        "abs" => Instant(|_, _, v, o, _| simple(v, o, f64::abs)),
        "ceil" => Instant(|_, _, v, o, _| simple(v, o, f64::ceil)),
        "floor" => Instant(|_, _, v, o, _| simple(v, o, f64::floor)),
        "exp" => Instant(|_, _, v, o, _| simple(v, o, f64::exp)),
        "sqrt" => Instant(|_, _, v, o, _| simple(v, o, f64::sqrt)),
        "ln" => Instant(|_, _, v, o, _| simple(v, o, f64::ln)),
        "log2" => Instant(|_, _, v, o, _| simple(v, o, f64::log2)),
        "log10" => Instant(|_, _, v, o, _| simple(v, o, f64::log10)),
        "sin" => Instant(|_, _, v, o, _| simple(v, o, f64::sin)),
        "cos" => Instant(|_, _, v, o, _| simple(v, o, f64::cos)),
        "tan" => Instant(|_, _, v, o, _| simple(v, o, f64::tan)),
        "asin" => Instant(|_, _, v, o, _| simple(v, o, f64::asin)),
        "acos" => Instant(|_, _, v, o, _| simple(v, o, f64::acos)),
        "atan" => Instant(|_, _, v, o, _| simple(v, o, f64::atan)),
        "sinh" => Instant(|_, _, v, o, _| simple(v, o, f64::sinh)),
        "cosh" => Instant(|_, _, v, o, _| simple(v, o, f64::cosh)),
        "tanh" => Instant(|_, _, v, o, _| simple(v, o, f64::tanh)),
        "asinh" => Instant(|_, _, v, o, _| simple(v, o, f64::asinh)),
        "acosh" => Instant(|_, _, v, o, _| simple(v, o, f64::acosh)),
        "atanh" => Instant(|_, _, v, o, _| simple(v, o, f64::atanh)),
        "rad" => Instant(|_, _, v, o, _| simple(v, o, |x| x * std::f64::consts::PI / 180.0)),
        "deg" => Instant(|_, _, v, o, _| simple(v, o, |x| x * 180.0 / std::f64::consts::PI)),
        "sgn" => Instant(|_, _, v, o, _| {
            simple(v, o, |x| {
                if x < 0.0 {
                    -1.0
                } else if x > 0.0 {
                    1.0
                } else {
                    x
                }
            })
        }),
        "pi" => Instant(|_, _, _, o, _| {
            o.push(scalar_elem(std::f64::consts::PI));
            Ok(())
        }),
        "time" => Instant(|_, ts, _, o, _| {
            o.push(scalar_elem(ts as f64 / 1000.0));
            Ok(())
        }),
        "vector" => Instant(|_, _, v, o, _| {
            o.push(Elem {
                h: None,
                labels: Labels::empty(),
                v: scalar_arg(v, 0),
                t: 0,
                drop_name: false,
                si: 0,
                oid: NO_OID,
            });
            Ok(())
        }),
        "scalar" => Instant(|_, _, v, o, _| {
            let val = match v.first().map(Vec::as_slice) {
                Some([one]) => one.v,
                _ => f64::NAN,
            };
            o.push(scalar_elem(val));
            Ok(())
        }),
        "max_of" => Instant(|_, _, v, o, _| {
            o.push(scalar_elem(go_max(scalar_arg(v, 0), scalar_arg(v, 1))));
            Ok(())
        }),
        "min_of" => Instant(|_, _, v, o, _| {
            o.push(scalar_elem(go_min(scalar_arg(v, 0), scalar_arg(v, 1))));
            Ok(())
        }),
        "clamp" => Instant(|_, _, v, o, _| clamp(v, o, scalar_arg(v, 1), scalar_arg(v, 2))),
        "clamp_min" => Instant(|_, _, v, o, _| clamp(v, o, scalar_arg(v, 1), f64::INFINITY)),
        "clamp_max" => Instant(|_, _, v, o, _| clamp(v, o, f64::NEG_INFINITY, scalar_arg(v, 1))),
        "round" => Instant(|_, _, v, o, _| {
            let to_nearest = if v.len() >= 2 { scalar_arg(v, 1) } else { 1.0 };
            let inv = 1.0 / to_nearest;
            simple(v, o, |x| (x * inv + 0.5).floor() / inv)
        }),
        "timestamp" => Instant(|_, _, v, o, _| {
            for e in v.first().map(Vec::as_slice).unwrap_or_default() {
                o.push(Elem {
                    h: None,
                    labels: e.labels.clone(),
                    v: e.t as f64 / 1000.0,
                    t: e.t,
                    drop_name: true,
                    si: 0,
                    oid: NO_OID,
                });
            }
            Ok(())
        }),
        "absent" => Instant(|c, _, v, o, _| {
            if v.first().is_some_and(|x| !x.is_empty()) {
                return Ok(());
            }
            o.push(Elem {
                h: None,
                labels: absent_labels(&c.args[0]),
                v: 1.0,
                t: 0,
                drop_name: false,
                si: 0,
                oid: NO_OID,
            });
            Ok(())
        }),
        "sort" => Instant(|_, _, v, o, _| {
            o.extend(v[0].iter().cloned());
            o.sort_by(|a, b| sort_cmp(a.v, b.v, false));
            Ok(())
        }),
        "sort_desc" => Instant(|_, _, v, o, _| {
            o.extend(v[0].iter().cloned());
            o.sort_by(|a, b| sort_cmp(a.v, b.v, true));
            Ok(())
        }),
        "sort_by_label" => Instant(|c, _, v, o, _| sort_by_label(c, v, o, false)),
        "sort_by_label_desc" => Instant(|c, _, v, o, _| sort_by_label(c, v, o, true)),
        "days_in_month" => Instant(|_, ts, v, o, _| date(ts, v, o, |c| c.days_in_month)),
        "day_of_month" => Instant(|_, ts, v, o, _| date(ts, v, o, |c| c.day)),
        "day_of_week" => Instant(|_, ts, v, o, _| date(ts, v, o, |c| c.weekday)),
        "day_of_year" => Instant(|_, ts, v, o, _| date(ts, v, o, |c| c.yearday)),
        "hour" => Instant(|_, ts, v, o, _| date(ts, v, o, |c| c.hour)),
        "minute" => Instant(|_, ts, v, o, _| date(ts, v, o, |c| c.minute)),
        "month" => Instant(|_, ts, v, o, _| date(ts, v, o, |c| c.month)),
        "year" => Instant(|_, ts, v, o, _| date(ts, v, o, |c| c.year)),
        "histogram_quantile" => Instant(crate::quantile::histogram_quantile),
        "histogram_fraction" => Instant(crate::quantile::histogram_fraction),
        // These act on native histogram samples only; float samples yield nothing.
        "histogram_count" => Instant(|_, _, v, o, _| histogram_simple(v, o, |h| h.count)),
        "histogram_sum" => Instant(|_, _, v, o, _| histogram_simple(v, o, |h| h.sum)),
        "histogram_avg" => Instant(|_, _, v, o, _| histogram_simple(v, o, |h| h.sum / h.count)),
        "histogram_stddev" => {
            Instant(|_, _, v, o, _| histogram_simple(v, o, |h| crate::hist::variance(h).sqrt()))
        }
        "histogram_stdvar" => {
            Instant(|_, _, v, o, _| histogram_simple(v, o, crate::hist::variance))
        }
        // Over a selector the evaluator answers it; any other expression carries no start
        // timestamps, so there is nothing to return (as in Prometheus).
        "start_timestamp" => Instant(|_, _, _, _, _| Ok(())),
        "histogram_quantiles" => Instant(crate::quantile::histogram_quantiles),
        "label_replace" | "label_join" | "info" => Special,
        "start" | "end" | "range" | "step" => {
            Unsupported("start(), end(), range() and step() must be folded before evaluation")
        }
        _ => Unsupported(NATIVE_HISTOGRAMS),
    }
}

/// Go's `math.Max`: NaN wins.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN wins.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// A float per native histogram sample of the first argument; floats yield nothing.
fn histogram_simple(
    v: &[Vec<Elem>],
    o: &mut Vec<Elem>,
    f: impl Fn(&crate::value::FloatHistogram) -> f64,
) -> Result<()> {
    for e in v.first().map(Vec::as_slice).unwrap_or_default() {
        if let Some(h) = &e.h {
            o.push(Elem {
                h: None,
                labels: e.labels.clone(),
                v: f(h),
                t: e.t,
                drop_name: true,
                si: e.si,
                oid: NO_OID,
            });
        }
    }
    Ok(())
}

/// Functions that read native histogram samples of their instant-vector arguments; every
/// other function sees floats only (Prometheus skips histogram samples in them).
pub(crate) fn reads_histograms(name: &str) -> bool {
    matches!(
        name,
        "histogram_count"
            | "histogram_sum"
            | "histogram_avg"
            | "histogram_stddev"
            | "histogram_stdvar"
            | "histogram_quantile"
            | "histogram_quantiles"
            | "histogram_fraction"
            | "absent"
            | "timestamp"
            | "sort_by_label"
            | "sort_by_label_desc"
    )
}

fn scalar_elem(v: f64) -> Elem {
    Elem {
        h: None,
        labels: Labels::empty(),
        v,
        t: 0,
        drop_name: false,
        si: 0,
        oid: NO_OID,
    }
}

fn scalar_arg(v: &[Vec<Elem>], i: usize) -> f64 {
    v.get(i).and_then(|x| x.first()).map_or(f64::NAN, |e| e.v)
}

fn simple(v: &[Vec<Elem>], o: &mut Vec<Elem>, f: impl Fn(f64) -> f64) -> Result<()> {
    for e in v.first().map(Vec::as_slice).unwrap_or_default() {
        o.push(Elem {
            h: None,
            labels: e.labels.clone(),
            v: f(e.v),
            t: e.t,
            drop_name: true,
            si: e.si,
            oid: e.si as u32,
        });
    }
    Ok(())
}

fn clamp(v: &[Vec<Elem>], o: &mut Vec<Elem>, min: f64, max: f64) -> Result<()> {
    if max < min {
        return Ok(());
    }
    // Go's math.Max/math.Min: a NaN bound or value gives NaN.
    simple(v, o, |x| go_max(min, go_min(max, x)))
}

/// `sort`/`sort_desc` order: by value, NaN last.
fn sort_cmp(a: f64, b: f64, desc: bool) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => {
            let o = a.partial_cmp(&b).unwrap_or(Ordering::Equal);
            if desc { o.reverse() } else { o }
        }
    }
}

fn string_arg(c: &Call, i: usize) -> String {
    match c.args.get(i).map(Expr::unwrap_parens) {
        Some(Expr::String { val, .. }) => val.clone(),
        _ => String::new(),
    }
}

/// A string argument usable as a label name: non-empty valid UTF-8 (Prometheus 3.x rules).
fn label_name_arg(c: &Call, i: usize) -> std::result::Result<String, String> {
    match c.args.get(i).map(Expr::unwrap_parens) {
        Some(Expr::String {
            invalid_utf8: Some(b),
            ..
        }) => Err(String::from_utf8_lossy(b).into_owned()),
        Some(Expr::String { val, .. }) if !val.is_empty() => Ok(val.clone()),
        _ => Err(String::new()),
    }
}

fn sort_by_label(c: &Call, v: &[Vec<Elem>], o: &mut Vec<Elem>, desc: bool) -> Result<()> {
    let labels: Vec<String> = (1..c.args.len()).map(|i| string_arg(c, i)).collect();
    o.extend(v[0].iter().cloned());
    o.sort_by(|a, b| {
        for l in &labels {
            let x = a.labels.get(l).unwrap_or("");
            let y = b.labels.get(l).unwrap_or("");
            if x == y {
                continue;
            }
            let ord = if natural_less(x, y) {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            return if desc { ord.reverse() } else { ord };
        }
        let ord = a.labels.cmp(&b.labels);
        if desc { ord.reverse() } else { ord }
    });
    Ok(())
}

/// Natural ordering of strings (digit runs compare numerically), as `facette/natsort`.
fn natural_less(a: &str, b: &str) -> bool {
    fn chunks(s: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let d = b[i].is_ascii_digit();
            let st = i;
            while i < b.len() && b[i].is_ascii_digit() == d {
                i += 1;
            }
            out.push(&s[st..i]);
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        if x == y {
            continue;
        }
        let xd = x.bytes().all(|c| c.is_ascii_digit());
        let yd = y.bytes().all(|c| c.is_ascii_digit());
        if xd && yd {
            let xs = x.trim_start_matches('0');
            let ys = y.trim_start_matches('0');
            if xs.len() != ys.len() {
                return xs.len() < ys.len();
            }
            if xs != ys {
                return xs < ys;
            }
            return x.len() < y.len();
        }
        return x < y;
    }
    ca.len() < cb.len()
}

fn date(
    ts: i64,
    v: &[Vec<Elem>],
    o: &mut Vec<Elem>,
    f: impl Fn(&m3query_model::time::Civil) -> i64,
) -> Result<()> {
    if v.is_empty() {
        let c = m3query_model::time::civil(ts.div_euclid(1000));
        o.push(scalar_elem(f(&c) as f64));
        return Ok(());
    }
    for e in &v[0] {
        if e.v.is_nan() || e.v.is_infinite() {
            continue;
        }
        let c = m3query_model::time::civil(e.v as i64);
        o.push(Elem {
            h: None,
            labels: e.labels.clone(),
            v: f(&c) as f64,
            t: e.t,
            drop_name: true,
            si: 0,
            oid: NO_OID,
        });
    }
    Ok(())
}

/// Labels for `absent()`/`absent_over_time()`: the selector's equality matchers, unless a
/// label is matched more than once.
pub(crate) fn absent_labels(arg: &Expr) -> Labels {
    let vs = match arg.unwrap_parens() {
        Expr::VectorSelector(vs) => vs.as_ref(),
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::empty(),
    };
    // Prometheus's historic rule: the first equality matcher per label sets it; any other
    // matcher for the label removes it again.
    let mut b = Labels::empty().builder();
    let mut has: Vec<&str> = Vec::new();
    for m in &vs.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if m.op == MatchOp::Equal && !has.contains(&m.name.as_str()) {
            b.set(m.name.as_str(), m.value.as_str());
            has.push(&m.name);
        } else {
            b.del(&m.name);
        }
    }
    b.labels()
}

// ---- Rollups -----------------------------------------------------------------------------

/// Kahan–Neumaier increment, as Prometheus's `kahansum.Inc`.
#[inline]
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

fn avg_over_time(w: &[Point]) -> f64 {
    let mut sum = w[0].v;
    let mut count = 1.0;
    let mut mean = 0.0;
    let mut c = 0.0;
    let mut incremental = false;
    for (i, p) in w[1..].iter().enumerate() {
        count = (i + 2) as f64;
        if !incremental {
            let (ns, nc) = kahan_inc(p.v, sum, c);
            if !ns.is_infinite() {
                sum = ns;
                c = nc;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        let (m, nc) = kahan_inc(p.v / count, q * mean, q * c);
        mean = m;
        c = nc;
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
}

fn sum_over_time(w: &[Point]) -> f64 {
    let (mut sum, mut c) = (0.0, 0.0);
    for p in w {
        (sum, c) = kahan_inc(p.v, sum, c);
    }
    if sum.is_infinite() { sum } else { sum + c }
}

fn compare_over_time(w: &[Point], cmp: fn(f64, f64) -> bool, ts: bool) -> Option<f64> {
    let first = w.first()?;
    let (mut m, mut t) = (first.v, first.t);
    for p in w {
        if cmp(p.v, m) {
            m = p.v;
            t = p.t;
        }
    }
    Some(if ts { t as f64 / 1000.0 } else { m })
}

fn variance_over_time(w: &[Point]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for p in w {
        count += 1.0;
        let delta = p.v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (p.v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

fn mad_over_time(w: &[Point]) -> f64 {
    let mut values: Vec<f64> = Vec::with_capacity(w.len());
    for p in w {
        if p.v.is_nan() {
            return f64::NAN;
        }
        values.push(p.v);
    }
    let median = crate::quantile::quantile(0.5, &mut values);
    for v in &mut values {
        *v = (*v - median).abs();
    }
    crate::quantile::quantile(0.5, &mut values)
}

fn quantile_over_time(w: &[Point], c: &mut RangeCtx) -> Option<f64> {
    let q = c.params.first().copied().unwrap_or(f64::NAN);
    if q.is_nan() || !(0.0..=1.0).contains(&q) {
        let pos = c.param_pos.unwrap_or(c.pos);
        c.annos.warn(msg::invalid_quantile(q), pos);
    }
    let mut values: Vec<f64> = w.iter().map(|p| p.v).collect();
    Some(crate::quantile::quantile(q, &mut values))
}

/// For anchored windows, where counting starts: the last sample at or before the window
/// start (Prometheus's `pickFirstSampleIndices`). `None`: nothing after the window start.
pub(crate) fn first_index(w: &[Point], c: &RangeCtx) -> Option<usize> {
    if !c.anchored {
        return Some(0);
    }
    let after = w.partition_point(|p| p.t <= c.range_start);
    if after >= w.len() {
        return None;
    }
    Some(after.saturating_sub(1))
}

fn changes(w: &[Point], c: &mut RangeCtx) -> Option<f64> {
    let first = first_index(w, c)?;
    let w = &w[first..];
    let mut n = 0;
    for pair in w.windows(2) {
        let (prev, cur) = (pair[0].v, pair[1].v);
        if cur != prev && !(cur.is_nan() && prev.is_nan()) {
            n += 1;
        }
    }
    Some(n as f64)
}

fn resets(w: &[Point], c: &mut RangeCtx) -> Option<f64> {
    let first = first_index(w, c)?;
    let w = &w[first..];
    Some(w.windows(2).filter(|p| p[1].v < p[0].v).count() as f64)
}

/// `irate`/`idelta`: from the last two samples.
fn instant_value(w: &[Point], is_rate: bool) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (a, b) = (w[w.len() - 2], w[w.len() - 1]);
    let interval = b.t - a.t;
    if interval == 0 {
        return None;
    }
    let mut v = b.v;
    // NaN compares false, so a NaN pair takes the difference, as in Prometheus.
    let reset = b.v < a.v;
    if !is_rate || !reset {
        v = b.v - a.v;
    }
    if is_rate {
        v /= interval as f64 / 1000.0;
    }
    Some(v)
}

/// Least squares fit, as Prometheus's `linearRegression` (Kahan sums, exact constant case).
pub(crate) fn linear_regression(w: &[Point], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = w[0].v;
    let mut const_y = true;
    for (i, p) in w.iter().enumerate() {
        if const_y && i > 0 && p.v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (p.t - intercept_time) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(p.v, sy, cy);
        (sxy, cxy) = kahan_inc(x * p.v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

fn double_exponential_smoothing(w: &[Point], c: &mut RangeCtx) -> Option<f64> {
    let sf = c.params.first().copied().unwrap_or(f64::NAN);
    let tf = c.params.get(1).copied().unwrap_or(f64::NAN);
    if sf <= 0.0 || sf >= 1.0 || sf.is_nan() {
        c.err = Some(Error::exec(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
        )));
        return None;
    }
    if tf <= 0.0 || tf >= 1.0 || tf.is_nan() {
        c.err = Some(Error::exec(format!(
            "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
        )));
        return None;
    }
    if w.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0, w[0].v);
    let mut b = w[1].v - w[0].v;
    for (i, p) in w.iter().enumerate().skip(1) {
        let x = sf * p.v;
        b = if i == 1 {
            b
        } else {
            tf * (s1 - s0) + (1.0 - tf) * b
        };
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}

/// `rate`, `increase`, `delta` with Prometheus's extrapolation.
fn extrapolated_rate(
    w: &[Point],
    c: &mut RangeCtx,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if c.anchored || c.smoothed {
        return extended_rate(w, c, is_counter, is_rate);
    }
    if w.len() < 2 {
        return None;
    }
    let first = w[0];
    let last = w[w.len() - 1];
    let mut result = last.v - first.v;
    if is_counter && !c.no_resets {
        for pair in w.windows(2) {
            if pair[1].v < pair[0].v {
                result += pair[0].v;
            }
        }
    }
    let mut to_start = (first.t - c.range_start) as f64 / 1000.0;
    let mut to_end = (c.range_end - last.t) as f64 / 1000.0;
    let sampled = (last.t - first.t) as f64 / 1000.0;
    let avg = sampled / (w.len() - 1) as f64;
    let threshold = avg * 1.1;
    if to_start >= threshold {
        to_start = avg / 2.0;
    }
    if is_counter {
        let mut to_zero = to_start;
        if result > 0.0 && first.v >= 0.0 {
            to_zero = sampled * (first.v / result);
        }
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = avg / 2.0;
    }
    let mut factor = 1.0;
    if sampled != 0.0 {
        factor = (sampled + to_start + to_end) / sampled;
    }
    if is_rate {
        factor /= c.range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

fn interpolate(p1: Point, p2: Point, t: i64, is_counter: bool) -> f64 {
    let mut y1 = p1.v;
    let y2 = p2.v;
    if is_counter && y2 < y1 {
        y1 = 0.0;
    }
    y1 + (y2 - y1) * (t - p1.t) as f64 / (p2.t - p1.t) as f64
}

fn pick_left(f: &[Point], first: usize, start: i64, smoothed: bool, counter: bool) -> f64 {
    if smoothed && f[first].t < start && first + 1 < f.len() {
        return interpolate(f[first], f[first + 1], start, counter);
    }
    f[first].v
}

fn pick_right(f: &[Point], last: usize, end: i64, smoothed: bool, counter: bool) -> f64 {
    if smoothed && last > 0 && f[last].t > end {
        return interpolate(f[last - 1], f[last], end, counter);
    }
    f[last].v
}

/// `sort.Search(n, pred)`: the smallest index in `[0, n)` where `pred` holds, else `n`.
fn search(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    (0..n).find(|&i| pred(i)).unwrap_or(n)
}

/// `rate`/`increase`/`delta` over `anchored`/`smoothed` windows (Prometheus's `extendedRate`).
fn extended_rate(f: &[Point], c: &mut RangeCtx, is_counter: bool, is_rate: bool) -> Option<f64> {
    if f.is_empty() {
        return None;
    }
    let (rs, re) = (c.range_start, c.range_end);
    let mut last = f.len() - 1;
    let mut first = search(last, |i| f[i].t > rs).saturating_sub(1);
    if c.smoothed {
        last = search(last, |i| f[i].t >= re);
    }
    if f[last].t <= rs {
        return None;
    }
    if c.smoothed && f[first].t > re {
        return None;
    }
    let left = pick_left(f, first, rs, c.smoothed, is_counter);
    let right = pick_right(f, last, re, c.smoothed, is_counter);
    let mut result = right - left;
    if is_counter {
        if f[first].t <= rs {
            first += 1;
        }
        let mut last_i = last as isize;
        if f[last].t >= re {
            last_i -= 1;
        }
        let inner: &[Point] = if (first as isize) <= last_i {
            &f[first..=last_i as usize]
        } else {
            &[]
        };
        let mut correction = 0.0;
        let mut prev = left;
        for p in inner {
            if p.v < prev {
                correction += prev;
            }
            prev = p.v;
        }
        if right < prev {
            correction += prev;
        }
        result += correction;
    }
    if is_rate {
        result /= c.range_ms as f64 / 1000.0;
    }
    Some(result)
}

/// Extends raw window points to the window bounds for `anchored`/`smoothed` range vectors
/// (Prometheus's `extendFloats`).
pub(crate) fn extend_floats(f: &[Point], mint: i64, maxt: i64, smoothed: bool) -> Vec<Point> {
    if f.is_empty() {
        return Vec::new();
    }
    let mut last = f.len() - 1;
    let mut first = search(last, |i| f[i].t > mint).saturating_sub(1);
    if smoothed {
        last = search(last, |i| f[i].t >= maxt);
    }
    if f[last].t <= mint {
        return Vec::new();
    }
    let left = pick_left(f, first, mint, smoothed, false);
    let right = pick_right(f, last, maxt, smoothed, false);
    if f[first].t <= mint {
        first += 1;
    }
    let mut last_i = last as isize;
    if f[last].t >= maxt {
        last_i -= 1;
    }
    let mut out = Vec::with_capacity(f.len() + 2);
    out.push(Point { t: mint, v: left });
    if (first as isize) <= last_i {
        out.extend_from_slice(&f[first..=last_i as usize]);
    }
    out.push(Point { t: maxt, v: right });
    out
}

// ---- Series-level functions --------------------------------------------------------------

/// `label_replace(v, dst, replacement, src, regex)`.
pub(crate) fn label_replace(ev: &mut Evaluator<'_>, c: &Call) -> Result<Matrix> {
    let repl = string_arg(c, 2);
    let src = string_arg(c, 3);
    let re_str = string_arg(c, 4);
    let re = regex::Regex::new(&format!("^(?s:{re_str})$")).map_err(|_| {
        Error::exec(format!(
            "invalid regular expression in label_replace(): {re_str}"
        ))
    })?;
    let dst = label_name_arg(c, 1).map_err(|d| {
        Error::exec(format!(
            "invalid destination label name in label_replace(): {d}"
        ))
    })?;
    let mut m = ev.eval_matrix(&c.args[0])?;
    for s in &mut m {
        let src_val = s.labels.get(&src).unwrap_or("").to_string();
        if let Some(caps) = re.captures(&src_val) {
            let mut res = String::new();
            expand_go_template(&caps, &repl, &mut res);
            let mut b = s.labels.builder();
            b.set(dst.as_str(), res);
            s.labels = b.labels();
            if dst == METRIC_NAME {
                s.drop_name = false;
            }
        }
    }
    crate::eval::merge_same_labelset(m)
}

/// Go's `Regexp.ExpandString` template syntax: `$1`, `${1}`, `$name`, `${name}`, `$$`.
fn expand_go_template(caps: &regex::Captures<'_>, template: &str, out: &mut String) {
    let b = template.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let ch = template[i..].chars().next().unwrap_or('\0');
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        i += 1;
        if i >= b.len() {
            out.push('$');
            break;
        }
        if b[i] == b'$' {
            out.push('$');
            i += 1;
            continue;
        }
        let (name, next) = if b[i] == b'{' {
            match template[i + 1..].find('}') {
                Some(end) => (&template[i + 1..i + 1 + end], i + 2 + end),
                None => {
                    out.push('$');
                    continue;
                }
            }
        } else {
            let st = i;
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            (&template[st..j], j)
        };
        if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
            out.push('$');
            continue;
        }
        i = next;
        let val = match name.parse::<usize>() {
            Ok(n) => caps.get(n).map(|m| m.as_str()),
            Err(_) => caps.name(name).map(|m| m.as_str()),
        };
        out.push_str(val.unwrap_or(""));
    }
}

/// `label_join(v, dst, separator, src...)`.
pub(crate) fn label_join(ev: &mut Evaluator<'_>, c: &Call) -> Result<Matrix> {
    let sep = string_arg(c, 2);
    let mut srcs: Vec<String> = Vec::with_capacity(c.args.len().saturating_sub(3));
    for i in 3..c.args.len() {
        srcs.push(
            label_name_arg(c, i).map_err(|s| {
                Error::exec(format!("invalid source label name in label_join(): {s}"))
            })?,
        );
    }
    let dst = label_name_arg(c, 1).map_err(|d| {
        Error::exec(format!(
            "invalid destination label name in label_join(): {d}"
        ))
    })?;
    let mut m = ev.eval_matrix(&c.args[0])?;
    for s in &mut m {
        let vals: Vec<&str> = srcs.iter().map(|l| s.labels.get(l).unwrap_or("")).collect();
        let joined = vals.join(&sep);
        let mut b = s.labels.builder();
        b.set(dst.as_str(), joined);
        s.labels = b.labels();
        if dst == METRIC_NAME {
            s.drop_name = false;
        }
    }
    crate::eval::merge_same_labelset(m)
}

/// `info(v [, label selectors])`: enriches series with labels of matching info metrics.
pub(crate) fn info(ev: &mut Evaluator<'_>, c: &Call) -> Result<Matrix> {
    crate::info::eval_info(ev, c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::FUNCTIONS;

    fn pts(v: &[(i64, f64)]) -> Vec<Point> {
        v.iter().map(|&(t, v)| Point { t, v }).collect()
    }

    /// Every function the parser knows has an implementation or an explicit refusal, and
    /// every function promql-parser knows is known to our parser.
    #[test]
    fn every_parser_function_has_an_implementation() {
        for f in FUNCTIONS {
            match kind(f.name) {
                FuncKind::Unsupported(why) => assert!(
                    matches!(f.name, "start" | "end" | "range" | "step")
                        || why == NATIVE_HISTOGRAMS,
                    "{}",
                    f.name
                ),
                FuncKind::Range(_) | FuncKind::Instant(_) | FuncKind::Special => {}
            }
        }
        for name in PROMQL_PARSER_FUNCTIONS {
            if NOT_IN_PROMETHEUS.contains(name) {
                assert!(crate::parser::get_function(name).is_none());
                continue;
            }
            let f = crate::parser::get_function(name)
                .unwrap_or_else(|| panic!("{name} is known to promql-parser but not to us"));
            assert!(
                !matches!(kind(f.name), FuncKind::Unsupported(w) if w != NATIVE_HISTOGRAMS && !matches!(f.name, "start" | "end" | "range" | "step"))
            );
        }
    }

    /// Functions promql-parser 0.11 knows that Prometheus 3.14 does not.
    const NOT_IN_PROMETHEUS: &[&str] = &["integral"];

    /// Every function in promql-parser 0.11.1's table.
    const PROMQL_PARSER_FUNCTIONS: &[&str] = &[
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "deg",
        "delta",
        "deriv",
        "double_exponential_smoothing",
        "end",
        "exp",
        "first_over_time",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_quantiles",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "hour",
        "idelta",
        "increase",
        "info",
        "integral",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "mad_over_time",
        "max_of",
        "max_over_time",
        "min_of",
        "min_over_time",
        "minute",
        "month",
        "pi",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "range",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_by_label",
        "sort_by_label_desc",
        "sort_desc",
        "sqrt",
        "start",
        "start_timestamp",
        "stddev_over_time",
        "stdvar_over_time",
        "step",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "ts_of_first_over_time",
        "ts_of_last_over_time",
        "ts_of_max_over_time",
        "ts_of_min_over_time",
        "vector",
        "year",
    ];

    /// The list above is promql-parser's: each name parses there as a known function.
    #[test]
    fn promql_parser_table_is_covered() {
        for name in PROMQL_PARSER_FUNCTIONS {
            let err = promql_parser::parser::parse(&format!("{name}()"))
                .err()
                .unwrap_or_default();
            assert!(
                !err.contains("unknown function"),
                "promql-parser lacks {name}: {err}"
            );
        }
    }

    #[test]
    fn rate_extrapolates_like_prometheus() {
        // 0..=10 every 60s, window (0, 600s]: samples at 60..600 (10 samples), counter +60/m.
        let w = pts(&(1..=10)
            .map(|i| (i * 60_000, i as f64 * 60.0))
            .collect::<Vec<_>>());
        let mut c = RangeCtx {
            ts: 600_000,
            range_start: 0,
            range_end: 600_000,
            range_ms: 600_000,
            params: vec![],
            anchored: false,
            smoothed: false,
            pos: PosRange::default(),
            param_pos: None,
            annos: Annotations::new(),
            err: None,
            no_resets: false,
        };
        let r = extrapolated_rate(&w, &mut c, true, true).expect("value");
        assert!((r - 1.0).abs() < 1e-9, "{r}");
        let inc = extrapolated_rate(&w, &mut c, true, false).expect("value");
        assert!((inc - 600.0).abs() < 1e-9, "{inc}");
    }

    #[test]
    fn natural_sort() {
        assert!(natural_less("a2", "a10"));
        assert!(!natural_less("a10", "a2"));
        assert!(natural_less("abc", "abd"));
    }

    #[test]
    fn go_template_expansion() {
        let re = regex::Regex::new("^(?s:(?P<a>a+)-(b+))$").expect("valid");
        let caps = re.captures("aa-bbb").expect("matches");
        let mut s = String::new();
        expand_go_template(&caps, "$1|${2}|$a|$$|$3x", &mut s);
        assert_eq!(s, "aa|bbb|aa|$|");
    }
}
