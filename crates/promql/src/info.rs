//! `info(v [, label selectors])`: adds the data labels of matching info metrics (by default
//! `target_info`, matched on `instance` and `job`), as Prometheus's `promql/info.go`.
//!
//! The info series are selected during evaluation, narrowed to the identifying label values
//! the first argument actually produced.

use std::collections::{BTreeMap, BTreeSet};

use m3query_model::{Labels, METRIC_NAME, MatchOp, Matcher, is_stale_nan};
use m3query_storage::SelectHints;

use crate::eval::Evaluator;
use crate::parser::{Call, Expr};
use crate::value::{ESeries, FastMap, Matrix, Point};
use crate::{Error, Result};

const TARGET_INFO: &str = "target_info";
const IDENTIFYING: [&str; 2] = ["instance", "job"];

/// The `@` timestamp and offset of the first selector in `e` (subqueries included).
fn timestamp_and_offset(e: &Expr) -> (Option<i64>, i64) {
    fn find(e: &Expr, subqs: &mut Vec<(Option<i64>, i64)>) -> Option<(Option<i64>, i64)> {
        match e {
            Expr::VectorSelector(vs) => {
                let (mut ts, mut off) = (vs.timestamp, vs.original_offset_ms);
                for (sts, soff) in subqs.iter().rev() {
                    if ts.is_some() {
                        break;
                    }
                    off += soff;
                    ts = *sts;
                }
                Some((ts, off))
            }
            Expr::MatrixSelector(ms) => find(&Expr::VectorSelector(Box::new(ms.vs.clone())), subqs),
            Expr::Subquery(s) => {
                subqs.push((s.timestamp, s.original_offset_ms));
                let r = find(&s.expr, subqs);
                subqs.pop();
                r
            }
            Expr::Call(c) => c.args.iter().find_map(|a| find(a, subqs)),
            Expr::Aggregate(a) => a
                .param
                .as_ref()
                .and_then(|p| find(p, subqs))
                .or_else(|| find(&a.expr, subqs)),
            Expr::Binary(b) => find(&b.lhs, subqs).or_else(|| find(&b.rhs, subqs)),
            Expr::Paren(i, _) | Expr::StepInvariant(i) => find(i, subqs),
            Expr::Unary { expr, .. } => find(expr, subqs),
            Expr::Number { .. } | Expr::String { .. } => None,
        }
    }
    find(e, &mut Vec::new()).unwrap_or((None, 0))
}

fn effective_name_matchers(ms: &[Matcher]) -> Vec<Matcher> {
    if ms
        .iter()
        .any(|m| matches!(m.op, MatchOp::Equal | MatchOp::RegexMatch))
    {
        return ms.to_vec();
    }
    if !ms.is_empty() {
        let mut out = Vec::with_capacity(ms.len() + 1);
        if let Ok(m) = Matcher::new(MatchOp::RegexMatch, METRIC_NAME, ".+_info") {
            out.push(m);
        }
        out.extend(ms.iter().cloned());
        return out;
    }
    vec![Matcher::equal(METRIC_NAME, TARGET_INFO)]
}

/// Go's `regexp.QuoteMeta`.
fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn signature(name: &str, l: &Labels) -> Labels {
    let mut pairs: Vec<(String, String)> = vec![(METRIC_NAME.to_string(), name.to_string())];
    for id in IDENTIFYING {
        if let Some(v) = l.get(id) {
            pairs.push((id.to_string(), v.to_string()));
        }
    }
    Labels::from_pairs(pairs)
}

pub(crate) fn eval_info(ev: &mut Evaluator<'_>, c: &Call) -> Result<Matrix> {
    let (node_ts, offset) = timestamp_and_offset(&c.args[0]);
    let mat = ev.eval_matrix(&c.args[0])?;

    // Data label matchers by label name, and the info metric name matchers.
    let mut data: BTreeMap<String, Vec<Matcher>> = BTreeMap::new();
    let mut name_matchers: Vec<Matcher> = Vec::new();
    if let Some(Expr::VectorSelector(vs)) = c.args.get(1).map(Expr::unwrap_parens) {
        for m in &vs.matchers {
            data.entry(m.name.clone()).or_default().push(m.clone());
            if m.name == METRIC_NAME {
                name_matchers.push(m.clone());
            }
        }
    } else {
        name_matchers.push(Matcher::equal(METRIC_NAME, TARGET_INFO));
    }
    let effective = effective_name_matchers(&name_matchers);
    let ignored: BTreeSet<Labels> = mat
        .iter()
        .filter(|s| {
            let n = s.labels.metric_name().unwrap_or("");
            effective.iter().all(|m| m.matches(n))
        })
        .map(|s| s.labels.clone())
        .collect();

    let info_mat = fetch_info_series(ev, &mat, &ignored, &data, node_ts, offset)?;
    data.remove(METRIC_NAME);
    combine_with_info_series(ev, &mat, &info_mat, &ignored, &data)
}

/// The info series that may enrich `mat` (those not in `ignored`): selected by the
/// identifying labels' values and the data-label matchers, over the whole range. Each point
/// holds the info sample's own timestamp, to pick the newest info series of a signature.
fn fetch_info_series(
    ev: &mut Evaluator<'_>,
    mat: &Matrix,
    ignored: &BTreeSet<Labels>,
    data: &BTreeMap<String, Vec<Matcher>>,
    node_ts: Option<i64>,
    offset: i64,
) -> Result<Matrix> {
    // Identifying label values of the series to enrich.
    let mut id_values: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for s in mat.iter().filter(|s| !ignored.contains(&s.labels)) {
        for id in IDENTIFYING {
            if let Some(v) = s.labels.get(id) {
                id_values.entry(id).or_default().insert(v.to_string());
            }
        }
    }
    let data_names: Vec<Matcher> = data
        .values()
        .flatten()
        .filter(|m| m.name == METRIC_NAME)
        .cloned()
        .collect();
    let mut info_mat: Matrix = Vec::new();
    if id_values.is_empty() {
        return Ok(info_mat);
    }
    let mut matchers = Vec::new();
    for (name, vals) in &id_values {
        let re = vals
            .iter()
            .map(|v| quote_meta(v))
            .collect::<Vec<_>>()
            .join("|");
        matchers.push(
            Matcher::new(MatchOp::RegexMatch, *name, re).map_err(|e| Error::exec(e.to_string()))?,
        );
    }
    for m in data.values().flatten() {
        if m.name != METRIC_NAME {
            matchers.push(m.clone());
        }
    }
    matchers.extend(effective_name_matchers(&data_names));
    let (mut start, mut end) = match node_ts {
        Some(t) => (t, t),
        None => (ev.start, ev.end),
    };
    start -= ev.lookback - 1;
    start -= offset;
    end -= offset;
    let hints = SelectHints {
        start_ms: start,
        end_ms: end,
        step_ms: ev.interval,
        func: Some("info".into()),
        ..SelectHints::default()
    };
    let querier = ev.queryable.querier(start, end)?;
    let mut set = querier.select(ev.ctx, false, &hints, &matchers)?;
    while let Some(s) = set.next() {
        let s = s?;
        let mut buf = Vec::new();
        let mut hists = Vec::new();
        let mut it = s.iter();
        it.append_range(start, end, &mut buf)?;
        it.append_histograms(start, end, &mut hists)?;
        // Values are the samples' own timestamps (for picking the newest info series).
        let mut points = Vec::new();
        let mut j = 0;
        for ts in (0..ev.num_steps() as i64).map(|k| ev.start + k * ev.interval) {
            let r = node_ts.unwrap_or(ts) - offset;
            while j < buf.len() && buf[j].t <= r {
                j += 1;
            }
            // Info metrics are floats: a histogram the step would pick is an error, as in
            // Prometheus.
            let hi = hists.partition_point(|h| h.t <= r);
            if let Some(h) = hi.checked_sub(1).map(|i| &hists[i])
                && h.t > r - ev.lookback
                && !h.is_stale()
                && j.checked_sub(1).is_none_or(|k| buf[k].t < h.t)
            {
                return Err(Error::exec("info sample should be float"));
            }
            if j == 0 {
                continue;
            }
            let x = buf[j - 1];
            if x.t <= r - ev.lookback || is_stale_nan(x.v) {
                continue;
            }
            points.push(Point {
                t: ts,
                v: x.t as f64,
            });
        }
        if !points.is_empty() {
            info_mat.push(ESeries {
                hists: Vec::new(),
                labels: s.labels().clone(),
                points,
                drop_name: false,
            });
        }
    }
    Ok(info_mat)
}

/// Adds to each series of `mat` (but `ignored`) the data labels of its newest matching info
/// series, step by step.
fn combine_with_info_series(
    ev: &mut Evaluator<'_>,
    mat: &Matrix,
    info_mat: &Matrix,
    ignored: &BTreeSet<Labels>,
    data: &BTreeMap<String, Vec<Matcher>>,
) -> Result<Matrix> {
    let info_names: BTreeSet<String> = info_mat
        .iter()
        .filter_map(|s| s.labels.metric_name().map(str::to_string))
        .collect();
    let base_sigs: Vec<Vec<(String, Labels)>> = mat
        .iter()
        .map(|s| {
            info_names
                .iter()
                .map(|n| (n.clone(), signature(n, &s.labels)))
                .collect()
        })
        .collect();
    let info_sigs: Vec<Labels> = info_mat
        .iter()
        .map(|s| signature(s.labels.metric_name().unwrap_or(""), &s.labels))
        .collect();
    let all_empty = data.values().flatten().all(Matcher::matches_empty);

    let steps = ev.num_steps();
    let mut cur_base = vec![0usize; mat.len()];
    let mut cur_info = vec![0usize; info_mat.len()];
    let mut index: FastMap<Labels, usize> = FastMap::default();
    let mut out: Matrix = Vec::new();
    for ts in (0..steps as i64).map(|k| ev.start + k * ev.interval) {
        crate::check_ctx(ev.ctx, "expression evaluation")?;
        let right = newest_info_per_signature(info_mat, &info_sigs, &mut cur_info, ts)?;
        for (bi, s) in mat.iter().enumerate() {
            let Some(p) = s.points.get(cur_base[bi]).filter(|p| p.t == ts) else {
                continue;
            };
            cur_base[bi] += 1;
            let labels = if ignored.contains(&s.labels) {
                s.labels.clone()
            } else {
                match enriched_labels(&s.labels, &base_sigs[bi], &right, info_mat, data)? {
                    Some(l) => l,
                    None if all_empty => s.labels.clone(),
                    None => continue,
                }
            };
            match index.get(&labels) {
                Some(&i) => {
                    if out[i].points.last().is_some_and(|q| q.t == ts) {
                        return Err(Error::exec(
                            "vector cannot contain metrics with the same labelset",
                        ));
                    }
                    out[i].points.push(Point { t: ts, v: p.v });
                }
                None => {
                    index.insert(labels.clone(), out.len());
                    out.push(ESeries {
                        hists: Vec::new(),
                        labels,
                        points: vec![Point { t: ts, v: p.v }],
                        drop_name: s.drop_name,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The newest info sample of each signature at step `ts`, as (info series, its sample's
/// time); two info series of one signature with samples at the same time are an error.
fn newest_info_per_signature<'a>(
    info_mat: &Matrix,
    info_sigs: &'a [Labels],
    cur_info: &mut [usize],
    ts: i64,
) -> Result<FastMap<&'a Labels, (usize, f64)>> {
    let mut right: FastMap<&Labels, (usize, f64)> = FastMap::default();
    for (ii, s) in info_mat.iter().enumerate() {
        let Some(p) = s.points.get(cur_info[ii]).filter(|p| p.t == ts) else {
            continue;
        };
        cur_info[ii] += 1;
        let sig = &info_sigs[ii];
        match right.get(sig) {
            Some(&(ei, et)) => {
                if et < p.v {
                    right.insert(sig, (ii, p.v));
                } else if et == p.v {
                    return Err(Error::exec(format!(
                        "found duplicate series for info metric: existing {} @ {}, new {} @ {}",
                        info_mat[ei].labels, et as i64, s.labels, p.v as i64
                    )));
                }
            }
            None => {
                right.insert(sig, (ii, p.v));
            }
        }
    }
    Ok(right)
}

/// `base` with the data labels of the info series matching its signatures (`sigs`) added;
/// `None` when no info series matched. Labels `base` has are kept; two info series giving a
/// label different values are an error.
fn enriched_labels(
    base: &Labels,
    sigs: &[(String, Labels)],
    right: &FastMap<&Labels, (usize, f64)>,
    info_mat: &Matrix,
    data: &BTreeMap<String, Vec<Matcher>>,
) -> Result<Option<Labels>> {
    let mut add: BTreeMap<String, String> = BTreeMap::new();
    let mut seen = 0;
    for (_, sig) in sigs {
        let Some(&(ii, _)) = right.get(sig) else {
            continue;
        };
        for l in info_mat[ii].labels.iter() {
            if &*l.name == METRIC_NAME {
                continue;
            }
            if !data.is_empty() && !data.contains_key(&*l.name) {
                continue;
            }
            if let Some(v) = add.get(&*l.name)
                && v.as_str() != &*l.value
            {
                return Err(Error::exec(format!("conflicting label: {}", l.name)));
            }
            if base.has(&l.name) {
                continue;
            }
            add.insert(l.name.to_string(), l.value.to_string());
        }
        seen += 1;
    }
    if seen == 0 {
        return Ok(None);
    }
    let mut b = base.builder();
    for (n, v) in add {
        b.set(n, v);
    }
    Ok(Some(b.labels()))
}
