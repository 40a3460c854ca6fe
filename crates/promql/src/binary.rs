//! Binary operators: arithmetic, comparisons (with and without `bool`), set operators, vector
//! matching with `on`/`ignoring`, `group_left`/`group_right` and `fill*`, as Prometheus's
//! `VectorBinop`/`VectorscalarBinop`. Each series' match signature is computed once for the
//! whole query, not per step.

use m3query_model::{Labels, METRIC_NAME};

use crate::eval::Evaluator;
use crate::parser::{BinOp, BinaryExpr, Card, PosRange, ValueType, VectorMatching};
use crate::value::{Elem, FastMap, FastSet, Matrix, NO_OID};
use crate::{Error, Result};

fn scalar_binop(op: BinOp, l: f64, r: f64) -> f64 {
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    match op {
        BinOp::Add => l + r,
        BinOp::Sub => l - r,
        BinOp::Mul => l * r,
        BinOp::Div => l / r,
        BinOp::Pow => l.powf(r),
        BinOp::Mod => l % r,
        BinOp::Eqlc => b(l == r),
        BinOp::Neq => b(l != r),
        BinOp::Gtr => b(l > r),
        BinOp::Lss => b(l < r),
        BinOp::Gte => b(l >= r),
        BinOp::Lte => b(l <= r),
        BinOp::Atan2 => l.atan2(r),
        _ => f64::NAN,
    }
}

/// Go's `math.Pow` and `math.Mod` agree with Rust's `powf` and `%` on IEEE floats, including
/// NaN/Inf cases used by the tests (`NaN ^ 0 == 1`).
fn elem_binop(op: BinOp, l: f64, r: f64) -> (f64, bool) {
    match op {
        BinOp::Eqlc => (l, l == r),
        BinOp::Neq => (l, l != r),
        BinOp::Gtr => (l, l > r),
        BinOp::Lss => (l, l < r),
        BinOp::Gte => (l, l >= r),
        BinOp::Lte => (l, l <= r),
        BinOp::TrimUpper | BinOp::TrimLower => (0.0, false),
        _ => (scalar_binop(op, l, r), true),
    }
}

pub(crate) fn eval_binary(ev: &mut Evaluator<'_>, b: &BinaryExpr) -> Result<Matrix> {
    let lt = b.lhs.value_type();
    let rt = b.rhs.value_type();
    let lhs = ev.eval_matrix(&b.lhs)?;
    let rhs = ev.eval_matrix(&b.rhs)?;
    let op = b.op;
    let return_bool = b.return_bool;
    match (lt, rt) {
        (ValueType::Scalar, ValueType::Scalar) => {
            ev.range_eval(vec![lhs, rhs], move |_, ts, v, out| {
                let l = v[0].first().map_or(f64::NAN, |e| e.v);
                let r = v[1].first().map_or(f64::NAN, |e| e.v);
                out.push(Elem {
                    labels: Labels::empty(),
                    v: scalar_binop(op, l, r),
                    t: ts,
                    drop_name: false,
                    si: 0,
                    oid: NO_OID,
                });
                Ok(())
            })
        }
        (ValueType::Vector, ValueType::Scalar) | (ValueType::Scalar, ValueType::Vector) => {
            let swap = lt == ValueType::Scalar;
            let (vec_m, sc_m) = if swap { (rhs, lhs) } else { (lhs, rhs) };
            let pos = PosRange::new(b.lhs.pos().start, b.rhs.pos().end);
            ev.range_eval(vec![vec_m, sc_m], move |annos, _, v, out| {
                let s = v[1].first().map_or(f64::NAN, |e| e.v);
                if is_trim(op) && !v[0].is_empty() {
                    annos.info(incompatible_types(op), pos);
                }
                for e in &v[0] {
                    let (lf, rf) = if swap { (s, e.v) } else { (e.v, s) };
                    let (mut val, mut keep) = elem_binop(op, lf, rf);
                    if op.is_comparison() && swap {
                        val = rf;
                    }
                    if return_bool {
                        val = if keep { 1.0 } else { 0.0 };
                        keep = true;
                    }
                    if keep {
                        out.push(Elem {
                            labels: e.labels.clone(),
                            v: val,
                            t: e.t,
                            drop_name: e.drop_name || op.changes_metric_schema() || return_bool,
                            si: e.si,
                            oid: e.si as u32,
                        });
                    }
                }
                Ok(())
            })
        }
        _ => {
            let matching = b.matching.clone().unwrap_or(VectorMatching {
                card: if op.is_set() {
                    Card::ManyToMany
                } else {
                    Card::OneToOne
                },
                matching_labels: Vec::new(),
                on: false,
                include: Vec::new(),
                fill_lhs: None,
                fill_rhs: None,
            });
            let pos = PosRange::new(b.lhs.pos().start, b.rhs.pos().end);
            vector_vector(ev, op, return_bool, matching, lhs, rhs, pos)
        }
    }
}

/// An element passed through unchanged, identified by its input series.
fn with_oid(e: &Elem, oid: usize) -> Elem {
    Elem {
        oid: oid as u32,
        ..e.clone()
    }
}

fn match_labels(l: &Labels, on: bool, names: &[String]) -> Labels {
    if on { l.keep(names) } else { l.without(names) }
}

fn vector_vector(
    ev: &mut Evaluator<'_>,
    op: BinOp,
    return_bool: bool,
    mut m: VectorMatching,
    lhs: Matrix,
    rhs: Matrix,
    pos: PosRange,
) -> Result<Matrix> {
    if op.is_set() {
        m.card = Card::ManyToMany;
    }
    let mut names = m.matching_labels.clone();
    names.sort();
    // Signature ordinals, once per series.
    let mut ord: FastMap<u64, usize> = FastMap::default();
    let mut sig = |l: &Labels| {
        let h = if m.on {
            l.hash_for_labels(&names)
        } else {
            l.hash_without_labels(&names)
        };
        let n = ord.len();
        *ord.entry(h).or_insert(n)
    };
    let lhs_len = lhs.len();
    let lsig: Vec<usize> = lhs.iter().map(|s| sig(&s.labels)).collect();
    let rsig: Vec<usize> = rhs.iter().map(|s| sig(&s.labels)).collect();
    let num_sigs = ord.len();

    let mut present = vec![false; num_sigs];
    let mut right_idx: Vec<usize> = vec![usize::MAX; num_sigs];
    let mut matched_one: Vec<bool> = vec![false; num_sigs];
    let mut matched_many: Vec<FastSet<u32>> = vec![FastSet::default(); num_sigs];
    let mut result_cache = ResultCache::default();

    ev.range_eval(vec![lhs, rhs], move |annos, _, v, out| {
        let (lv, rv) = (&v[0], &v[1]);
        match op {
            BinOp::And => {
                if lv.is_empty() || rv.is_empty() {
                    return Ok(());
                }
                present.iter_mut().for_each(|p| *p = false);
                for e in rv {
                    present[rsig[e.si]] = true;
                }
                out.extend(lv.iter().filter(|e| present[lsig[e.si]]).map(|e| with_oid(e, e.si)));
                return Ok(());
            }
            BinOp::Or => {
                if lv.is_empty() || rv.is_empty() {
                    out.extend(lv.iter().map(|e| with_oid(e, e.si)));
                    out.extend(rv.iter().map(|e| with_oid(e, lhs_len + e.si)));
                    return Ok(());
                }
                present.iter_mut().for_each(|p| *p = false);
                for e in lv {
                    present[lsig[e.si]] = true;
                    out.push(with_oid(e, e.si));
                }
                out.extend(
                    rv.iter()
                        .filter(|e| !present[rsig[e.si]])
                        .map(|e| with_oid(e, lhs_len + e.si)),
                );
                return Ok(());
            }
            BinOp::Unless => {
                if lv.is_empty() || rv.is_empty() {
                    out.extend(lv.iter().map(|e| with_oid(e, e.si)));
                    return Ok(());
                }
                present.iter_mut().for_each(|p| *p = false);
                for e in rv {
                    present[rsig[e.si]] = true;
                }
                out.extend(lv.iter().filter(|e| !present[lsig[e.si]]).map(|e| with_oid(e, e.si)));
                return Ok(());
            }
            _ => {}
        }
        let has_fill = m.fill_lhs.is_some() || m.fill_rhs.is_some();
        if (lv.is_empty() && rv.is_empty()) || ((lv.is_empty() || rv.is_empty()) && !has_fill) {
            return Ok(());
        }
        let one_to_many = m.card == Card::OneToMany;
        // The "many" side is iterated, the "one" side indexed.
        let (many, one, many_sig, one_sig) = if one_to_many {
            (rv, lv, &rsig, &lsig)
        } else {
            (lv, rv, &lsig, &rsig)
        };
        present.iter_mut().for_each(|p| *p = false);
        for (i, e) in one.iter().enumerate() {
            let s = one_sig[e.si];
            if present[s] {
                let dup = &one[right_idx[s]];
                let side = if one_to_many { "left" } else { "right" };
                let matched = match_labels(&e.labels, m.on, &names);
                let (mut d1, mut d2) = (e.labels.to_string(), dup.labels.to_string());
                if d1 > d2 {
                    std::mem::swap(&mut d1, &mut d2);
                }
                return Err(Error::exec(format!(
                    "found duplicate series for the match group {matched} on the {side} hand-side of the operation: [{d1}, {d2}];many-to-many matching not allowed: matching labels must be unique on one side"
                )));
            }
            present[s] = true;
            right_idx[s] = i;
        }
        if m.card == Card::OneToOne {
            matched_one.iter_mut().for_each(|x| *x = false);
        } else {
            matched_many.iter_mut().for_each(FastSet::clear);
        }

        let mut trimmed = false;
        let mut do_op = |ls: &Elem,
                     rs: &Elem,
                     s: usize,
                     out: &mut Vec<Elem>,
                     matched_one: &mut Vec<bool>,
                     matched_many: &mut Vec<FastSet<u32>>,
                     result_cache: &mut ResultCache|
         -> Result<()> {
            let (fl, fr) = if one_to_many { (rs.v, ls.v) } else { (ls.v, rs.v) };
            let (mut val, keep) = elem_binop(op, fl, fr);
            trimmed |= is_trim(op);
            if return_bool {
                val = if keep { 1.0 } else { 0.0 };
            }
            let (metric, metric_id) = result_cache.get(ls, rs, op, &m);
            if m.card == Card::OneToOne {
                if matched_one[s] {
                    return Err(Error::exec(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                    ));
                }
                matched_one[s] = true;
            } else if !matched_many[s].insert(metric_id) {
                return Err(Error::exec(
                    "multiple matches for labels: grouping labels must ensure unique matches",
                ));
            }
            if !keep && !return_bool {
                return Ok(());
            }
            out.push(Elem {
                labels: metric,
                v: val,
                t: ls.t,
                drop_name: return_bool,
                si: 0,
                oid: metric_id,
            });
            Ok(())
        };

        // As Prometheus: after swapping sides for group_right the fill values are not swapped.
        let fill_one = m.fill_rhs;
        let fill_many = m.fill_lhs;
        for ls in many.iter() {
            let s = many_sig[ls.si];
            if present[s] {
                let rs = &one[right_idx[s]];
                do_op(ls, rs, s, out, &mut matched_one, &mut matched_many, &mut result_cache)?;
            } else if let Some(fill) = fill_one {
                let rs = Elem {
                    labels: match_labels(&ls.labels, m.on, &names),
                    v: fill,
                    t: ls.t,
                    drop_name: false,
                    si: SYNTHESIZED,
                    oid: NO_OID,
                };
                do_op(ls, &rs, s, out, &mut matched_one, &mut matched_many, &mut result_cache)?;
            }
        }
        if let Some(fill) = fill_many {
            for rs in one.iter() {
                let s = one_sig[rs.si];
                let matched = if m.card == Card::OneToOne {
                    matched_one[s]
                } else {
                    !matched_many[s].is_empty()
                };
                if matched {
                    continue;
                }
                let ls = Elem {
                    labels: match_labels(&rs.labels, m.on, &names),
                    v: fill,
                    t: rs.t,
                    drop_name: false,
                    si: SYNTHESIZED,
                    oid: NO_OID,
                };
                do_op(&ls, rs, s, out, &mut matched_one, &mut matched_many, &mut result_cache)?;
            }
        }
        if trimmed {
            annos.info(incompatible_types(op), pos);
        }
        Ok(())
    })
}

/// `</` and `>/` trim native histogram buckets; on floats they yield nothing and an info.
fn is_trim(op: BinOp) -> bool {
    matches!(op, BinOp::TrimUpper | BinOp::TrimLower)
}

fn incompatible_types(op: BinOp) -> String {
    format!(
        "incompatible sample types encountered for binary operator {:?}: float {} float",
        op.as_str(),
        op.as_str()
    )
}

/// The series index of an element made up from a fill value.
const SYNTHESIZED: usize = usize::MAX;

/// Result labels per (many-side series, one-side series) pair, computed once per query
/// rather than per step, with a small id per distinct label set for duplicate checks.
#[derive(Default)]
struct ResultCache {
    by_pair: FastMap<(usize, usize), (Labels, u32)>,
    ids: FastMap<Labels, u32>,
}

impl ResultCache {
    fn get(&mut self, ls: &Elem, rs: &Elem, op: BinOp, m: &VectorMatching) -> (Labels, u32) {
        if let Some((l, id)) = self.by_pair.get(&(ls.si, rs.si)) {
            return (l.clone(), *id);
        }
        let l = result_metric(&ls.labels, &rs.labels, op, m);
        let n = self.ids.len() as u32;
        let id = *self.ids.entry(l.clone()).or_insert(n);
        self.by_pair.insert((ls.si, rs.si), (l.clone(), id));
        (l, id)
    }
}

/// The labels of a vector-vector result, as Prometheus's `resultMetric`.
fn result_metric(lhs: &Labels, rhs: &Labels, op: BinOp, m: &VectorMatching) -> Labels {
    let mut b = lhs.builder();
    if op.changes_metric_schema() {
        b.del(METRIC_NAME).del("__type__").del("__unit__");
    }
    if m.card == Card::OneToOne {
        if m.on {
            b.keep(&m.matching_labels);
        } else {
            for n in &m.matching_labels {
                b.del(n);
            }
        }
    }
    for n in &m.include {
        match rhs.get(n) {
            Some(v) => {
                b.set(n.as_str(), v);
            }
            None => {
                b.del(n);
            }
        }
    }
    b.labels()
}
