//! Quantiles: `quantile()`/`quantile_over_time()` interpolation and classic-histogram
//! `histogram_quantile`/`histogram_fraction`/`histogram_quantiles` over `le` buckets, as
//! Prometheus's `promql/quantile.go` (coalescing, monotonicity fix with its info annotation,
//! small-delta tolerance).

use m3query_model::Labels;

use crate::Result;
use crate::annotations::{Annotations, msg};
use crate::parser::{Call, Expr};
use crate::value::{Elem, FastMap, NO_OID};

const SMALL_DELTA_TOLERANCE: f64 = 1e-12;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    pub upper: f64,
    pub count: f64,
}

/// Prometheus's `quantile`: linear interpolation between the closest ranks, values sorted
/// ascending with NaN first.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Almost-equality with relative tolerance, as Prometheus's `util/almost`.
pub(crate) fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if m3query_model::is_stale_nan(a) || m3query_model::is_stale_nan(b) {
        return m3query_model::is_stale_nan(a) && m3query_model::is_stale_nan(b);
    }
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < epsilon * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

fn sort_and_coalesce(buckets: &mut Vec<Bucket>) {
    buckets.sort_by(|a, b| {
        a.upper
            .partial_cmp(&b.upper)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut out: Vec<Bucket> = Vec::with_capacity(buckets.len());
    for b in buckets.iter() {
        match out.last_mut() {
            Some(last) if last.upper == b.upper => last.count += b.count,
            _ => out.push(*b),
        }
    }
    *buckets = out;
}

pub(crate) struct Monotonicity {
    pub forced: bool,
    pub min_bucket: f64,
    pub max_bucket: f64,
    pub max_diff: f64,
}

fn ensure_monotonic(buckets: &mut [Bucket]) -> Monotonicity {
    let mut m = Monotonicity {
        forced: false,
        min_bucket: f64::INFINITY,
        max_bucket: f64::NEG_INFINITY,
        max_diff: 0.0,
    };
    let mut prev = buckets[0].count;
    for b in buckets.iter_mut().skip(1) {
        let curr = b.count;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, SMALL_DELTA_TOLERANCE) {
            b.count = prev;
            continue;
        }
        if curr < prev {
            b.count = prev;
            m.forced = true;
            m.min_bucket = m.min_bucket.min(b.upper);
            m.max_bucket = m.max_bucket.max(b.upper);
            m.max_diff = m.max_diff.max(prev - curr);
            continue;
        }
        prev = curr;
    }
    m
}

/// Prometheus's `BucketQuantile`.
pub(crate) fn bucket_quantile(q: f64, mut buckets: Vec<Bucket>) -> (f64, Option<Monotonicity>) {
    if q.is_nan() {
        return (f64::NAN, None);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, None);
    }
    if q > 1.0 {
        return (f64::INFINITY, None);
    }
    buckets.sort_by(|a, b| {
        a.upper
            .partial_cmp(&b.upper)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if buckets.last().is_none_or(|b| b.upper != f64::INFINITY) {
        return (f64::NAN, None);
    }
    sort_and_coalesce(&mut buckets);
    let mono = ensure_monotonic(&mut buckets);
    if buckets.len() < 2 {
        return (f64::NAN, Some(mono));
    }
    let observations = buckets[buckets.len() - 1].count;
    if observations == 0.0 {
        return (f64::NAN, Some(mono));
    }
    let mut rank = q * observations;
    let n = buckets.len() - 1;
    let b = (0..n).find(|&i| buckets[i].count >= rank).unwrap_or(n);
    let v = if b == buckets.len() - 1 {
        buckets[buckets.len() - 2].upper
    } else if b == 0 && buckets[0].upper <= 0.0 {
        buckets[0].upper
    } else {
        let mut start = 0.0;
        let end = buckets[b].upper;
        let mut count = buckets[b].count;
        if b > 0 {
            start = buckets[b - 1].upper;
            count -= buckets[b - 1].count;
            rank -= buckets[b - 1].count;
        }
        start + (end - start) * (rank / count)
    };
    (v, Some(mono))
}

/// Prometheus's `BucketFraction`.
pub(crate) fn bucket_fraction(lower: f64, upper: f64, mut buckets: Vec<Bucket>) -> f64 {
    buckets.sort_by(|a, b| {
        a.upper
            .partial_cmp(&b.upper)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if buckets.last().is_none_or(|b| b.upper != f64::INFINITY) {
        return f64::NAN;
    }
    sort_and_coalesce(&mut buckets);
    let count = buckets[buckets.len() - 1].count;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let mut lower_bound = if buckets[0].upper <= 0.0 {
        f64::NEG_INFINITY
    } else {
        0.0
    };
    for (i, b) in buckets.iter().enumerate() {
        if i > 0 {
            lower_bound = buckets[i - 1].upper;
        }
        let upper_bound = b.upper;
        let interp = |v: f64, rank: f64| {
            if lower_bound == f64::NEG_INFINITY {
                return b.count;
            }
            rank + (b.count - rank) * (v - lower_bound) / (upper_bound - lower_bound)
        };
        if !lower_set && lower_bound >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && lower_bound >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && lower_bound < lower && upper_bound > lower {
            lower_rank = interp(lower, rank);
            lower_set = true;
        }
        if !upper_set && lower_bound < upper && upper_bound > upper {
            upper_rank = interp(upper, rank);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = b.count;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}

/// Go's `strconv.ParseFloat` for `le` values.
fn parse_le(s: &str) -> Option<f64> {
    // The common spellings, without the lower-casing copy the general path makes: this
    // runs for every bucket series at every step.
    if s == "+Inf" {
        return Some(f64::INFINITY);
    }
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        // Plain decimals parse alike in Go and Rust (correctly rounded; "010" is ten).
        return s.parse::<f64>().ok();
    }
    let l = s.to_ascii_lowercase();
    match l.as_str() {
        "+inf" | "inf" | "infinity" | "+infinity" => return Some(f64::INFINITY),
        "-inf" | "-infinity" => return Some(f64::NEG_INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    if s.is_empty() || s.contains('_') && !l.starts_with("0x") {
        return None;
    }
    crate::parser::parse_number(s.trim_start_matches('+')).filter(|_| {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-' | b'_'))
    })
}

/// Hash of every label but `le` (`__name__` included): a bucket's histogram.
fn hash_without_le(l: &Labels) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    for x in l.iter().filter(|x| &*x.name != "le") {
        h.write(x.name.as_bytes());
        h.write_u8(0xff);
        h.write(x.value.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

/// Whether `a` and `b` agree on every label but `le`.
fn eq_without_le(a: &Labels, b: &Labels) -> bool {
    let skip = |x: &&m3query_model::Label| &*x.name != "le";
    a.iter().filter(skip).eq(b.iter().filter(skip))
}

/// Classic histograms of one step: buckets grouped by labels without `le`. Runs for every
/// bucket series at every step, so a group's label set is built once, from its first bucket,
/// and the others find it by hash (checked for equality, so a collision cannot merge two).
fn group_buckets(v: &[Elem], arg: &Expr, annos: &mut Annotations) -> Vec<(Labels, Vec<Bucket>)> {
    let mut index: FastMap<u64, Vec<usize>> = FastMap::default();
    // Each group: the labels of its first bucket (for the equality check), the group's
    // labels without `le`, its buckets.
    let mut groups: Vec<(Labels, Labels, Vec<Bucket>)> = Vec::new();
    for e in v {
        if e.h.is_some() {
            continue;
        }
        let le_raw = e.labels.get("le").unwrap_or("");
        let Some(upper) = parse_le(le_raw) else {
            annos.warn(
                msg::bad_bucket_label(e.labels.metric_name().unwrap_or(""), le_raw),
                arg.pos(),
            );
            continue;
        };
        let slots = index.entry(hash_without_le(&e.labels)).or_default();
        let found = slots
            .iter()
            .copied()
            .find(|&i| eq_without_le(&groups[i].0, &e.labels));
        let i = match found {
            Some(i) => i,
            None => {
                let mut b = e.labels.builder();
                b.del("le");
                groups.push((e.labels.clone(), b.labels(), Vec::new()));
                slots.push(groups.len() - 1);
                groups.len() - 1
            }
        };
        groups[i].2.push(Bucket { upper, count: e.v });
    }
    groups.into_iter().map(|(_, l, b)| (l, b)).collect()
}

pub(crate) fn histogram_quantile(
    c: &Call,
    ts: i64,
    v: &[Vec<Elem>],
    out: &mut Vec<Elem>,
    annos: &mut Annotations,
) -> Result<()> {
    let Some(q) = v.first().and_then(|x| x.first()).map(|e| e.v) else {
        return Ok(());
    };
    if q.is_nan() || !(0.0..=1.0).contains(&q) {
        annos.warn(msg::invalid_quantile(q), c.args[0].pos());
    }
    let input = v.get(1).map(Vec::as_slice).unwrap_or_default();
    let (natives, groups) = split_histograms(input, &c.args[1], annos);
    for e in natives {
        let Some(h) = &e.h else { continue };
        let (val, note) = crate::hist::quantile(q, h);
        note_nans(annos, note, e, c.args[1].pos());
        out.push(native_result(e, val, ts));
    }
    for (labels, buckets) in groups {
        if buckets.is_empty() {
            continue;
        }
        let (val, mono) = bucket_quantile(q, buckets);
        if let Some(m) = mono
            && m.forced
        {
            annos.monotonicity_info(
                labels.metric_name().unwrap_or(""),
                c.args[1].pos(),
                ts,
                m.min_bucket,
                m.max_bucket,
                m.max_diff,
            );
        }
        out.push(Elem {
            h: None,
            labels,
            v: val,
            t: ts,
            drop_name: true,
            si: 0,
            oid: NO_OID,
        });
    }
    Ok(())
}

pub(crate) fn histogram_fraction(
    c: &Call,
    ts: i64,
    v: &[Vec<Elem>],
    out: &mut Vec<Elem>,
    annos: &mut Annotations,
) -> Result<()> {
    let (Some(lower), Some(upper)) = (
        v.first().and_then(|x| x.first()).map(|e| e.v),
        v.get(1).and_then(|x| x.first()).map(|e| e.v),
    ) else {
        return Ok(());
    };
    let input = v.get(2).map(Vec::as_slice).unwrap_or_default();
    let (natives, groups) = split_histograms(input, &c.args[2], annos);
    for e in natives {
        let Some(h) = &e.h else { continue };
        let (val, note) = crate::hist::fraction(lower, upper, h);
        note_nans(annos, note, e, c.args[2].pos());
        out.push(native_result(e, val, ts));
    }
    for (labels, buckets) in groups {
        if buckets.is_empty() {
            continue;
        }
        out.push(Elem {
            h: None,
            labels,
            v: bucket_fraction(lower, upper, buckets),
            t: ts,
            drop_name: true,
            si: 0,
            oid: NO_OID,
        });
    }
    Ok(())
}

/// Splits one step's input into native histogram samples and classic bucket groups
/// (Prometheus's `resetHistograms`): a native histogram whose labels equal a classic group's
/// is a mix, warned about, and both are dropped.
fn split_histograms<'e>(
    input: &'e [Elem],
    arg: &Expr,
    annos: &mut Annotations,
) -> (Vec<&'e Elem>, Vec<(Labels, Vec<Bucket>)>) {
    let mut groups = group_buckets(input, arg, annos);
    let mut natives = Vec::new();
    for e in input.iter().filter(|e| e.h.is_some()) {
        if let Some(i) = groups
            .iter()
            .position(|(l, b)| !b.is_empty() && *l == e.labels)
        {
            annos.warn(
                msg::mixed_classic_native(e.labels.metric_name().unwrap_or("")),
                arg.pos(),
            );
            groups.remove(i);
            continue;
        }
        natives.push(e);
    }
    (natives, groups)
}

/// The float result of a function over a native histogram sample.
fn native_result(e: &Elem, v: f64, ts: i64) -> Elem {
    Elem {
        h: None,
        labels: e.labels.clone(),
        v,
        t: ts,
        drop_name: true,
        si: e.si,
        oid: NO_OID,
    }
}

fn note_nans(
    annos: &mut Annotations,
    note: crate::hist::NanNote,
    e: &Elem,
    pos: crate::parser::PosRange,
) {
    use crate::hist::NanNote;
    let metric = e.labels.metric_name().unwrap_or("");
    match note {
        NanNote::None => {}
        NanNote::QuantileNaN => annos.info(msg::quantile_nan_result(metric), pos),
        NanNote::QuantileSkew => annos.info(msg::quantile_nan_skew(metric), pos),
        NanNote::FractionNaNs => annos.info(msg::fraction_nans(metric), pos),
    }
}

/// Go's `FormatOpenMetricsFloat`.
fn format_openmetrics_float(f: f64) -> String {
    if f == 1.0 {
        return "1.0".into();
    }
    if f == 0.0 {
        return "0.0".into();
    }
    if f == -1.0 {
        return "-1.0".into();
    }
    let s = crate::parser::printer_g(f);
    if s.contains('e') || s.contains('.') || s.contains("Inf") || s == "NaN" {
        s
    } else {
        format!("{s}.0")
    }
}

pub(crate) fn histogram_quantiles(
    c: &Call,
    ts: i64,
    v: &[Vec<Elem>],
    out: &mut Vec<Elem>,
    annos: &mut Annotations,
) -> Result<()> {
    let label = match c.args.get(1).map(Expr::unwrap_parens) {
        Some(Expr::String { val, .. }) => val.clone(),
        _ => String::new(),
    };
    let mut qs = Vec::new();
    for (i, arg) in v.iter().enumerate().skip(2) {
        let q = arg.first().map_or(f64::NAN, |e| e.v);
        if q.is_nan() || !(0.0..=1.0).contains(&q) {
            annos.warn(msg::invalid_quantile(q), c.args[i].pos());
        }
        qs.push(q);
    }
    let input = v.first().map(Vec::as_slice).unwrap_or_default();
    let (natives, groups) = split_histograms(input, &c.args[0], annos);
    for q in qs {
        for e in &natives {
            let Some(h) = &e.h else { continue };
            let (val, note) = crate::hist::quantile(q, h);
            note_nans(annos, note, e, c.args[0].pos());
            let mut r = native_result(e, val, ts);
            let mut b = r.labels.builder();
            b.set(label.as_str(), format_openmetrics_float(q));
            r.labels = b.labels();
            out.push(r);
        }
        for (labels, buckets) in &groups {
            if buckets.is_empty() {
                continue;
            }
            let (val, mono) = bucket_quantile(q, buckets.clone());
            if let Some(m) = mono
                && m.forced
            {
                annos.monotonicity_info(
                    labels.metric_name().unwrap_or(""),
                    c.args[0].pos(),
                    ts,
                    m.min_bucket,
                    m.max_bucket,
                    m.max_diff,
                );
            }
            let mut b = labels.builder();
            b.set(label.as_str(), format_openmetrics_float(q));
            out.push(Elem {
                h: None,
                labels: b.labels(),
                v: val,
                t: ts,
                drop_name: true,
                si: 0,
                oid: NO_OID,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(upper: f64, count: f64) -> Bucket {
        Bucket { upper, count }
    }

    #[test]
    fn bucket_quantile_interpolates() {
        let buckets = vec![b(0.1, 10.0), b(0.5, 20.0), b(f64::INFINITY, 20.0)];
        let (q, _) = bucket_quantile(0.5, buckets);
        assert!((q - 0.1).abs() < 1e-12, "{q}");
        let (q, m) = bucket_quantile(
            0.75,
            vec![b(1.0, 10.0), b(2.0, 5.0), b(f64::INFINITY, 20.0)],
        );
        assert!(m.is_some_and(|m| m.forced));
        assert!(q.is_finite());
        assert!(bucket_quantile(0.5, vec![b(1.0, 1.0)]).0.is_nan());
    }

    #[test]
    fn quantile_matches_prometheus() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(0.5, &mut v), 2.5);
        assert_eq!(quantile(2.0, &mut v), f64::INFINITY);
        assert!(almost_equal(1.0, 1.0 + 1e-9, 1e-6));
        assert!(!almost_equal(0.0, 1e-300, 1e-6));
    }

    /// `le` values parse as Go's `strconv.ParseFloat` does.
    #[test]
    fn le_values_parse_as_go() {
        for (s, want) in [
            ("0.005", Some(0.005)),
            ("10", Some(10.0)),
            ("010", Some(10.0)),
            ("5.", Some(5.0)),
            (".5", Some(0.5)),
            ("+Inf", Some(f64::INFINITY)),
            ("+inf", Some(f64::INFINITY)),
            ("-Inf", Some(f64::NEG_INFINITY)),
            ("1e3", Some(1000.0)),
            ("-1.5", Some(-1.5)),
            (".", None),
            ("", None),
            ("abc", None),
        ] {
            assert_eq!(parse_le(s), want, "{s:?}");
        }
    }

    /// Buckets group by every label but `le`, the metric name included.
    #[test]
    fn buckets_group_by_labels_without_le() {
        let e = |name: &str, job: &str, le: &str, v: f64| Elem {
            labels: Labels::from_pairs([("__name__", name), ("job", job), ("le", le)]),
            v,
            h: None,
            t: 0,
            drop_name: false,
            si: 0,
            oid: NO_OID,
        };
        let v = vec![
            e("a_bucket", "x", "1", 1.0),
            e("a_bucket", "y", "1", 2.0),
            e("b_bucket", "x", "1", 3.0),
            e("a_bucket", "x", "+Inf", 4.0),
        ];
        let mut annos = Annotations::new();
        let arg = crate::parser::parse("a_bucket").expect("parses");
        let groups = group_buckets(&v, &arg, &mut annos);
        let got: Vec<(String, Vec<f64>)> = groups
            .iter()
            .map(|(l, b)| (l.to_string(), b.iter().map(|b| b.count).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "{__name__=\"a_bucket\", job=\"x\"}".to_string(),
                    vec![1.0, 4.0]
                ),
                ("{__name__=\"a_bucket\", job=\"y\"}".to_string(), vec![2.0]),
                ("{__name__=\"b_bucket\", job=\"x\"}".to_string(), vec![3.0]),
            ]
        );
    }

    #[test]
    fn fraction() {
        let buckets = vec![b(1.0, 10.0), b(2.0, 20.0), b(f64::INFINITY, 20.0)];
        assert!((bucket_fraction(0.0, 1.0, buckets.clone()) - 0.5).abs() < 1e-12);
        assert!((bucket_fraction(1.0, 1.5, buckets) - 0.25).abs() < 1e-12);
    }
}
