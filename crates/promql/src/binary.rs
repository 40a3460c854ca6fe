//! Binary operators: arithmetic, comparisons (with and without `bool`), set operators, vector
//! matching with `on`/`ignoring`, `group_left`/`group_right` and `fill*`, as Prometheus's
//! `VectorBinop`/`VectorscalarBinop`. Each series' match signature is computed once for the
//! whole query, not per step.

use m3query_model::{Labels, METRIC_NAME};

use crate::eval::Evaluator;
use crate::parser::{BinOp, BinaryExpr, Card, PosRange, ValueType, VectorMatching};
use std::sync::Arc;

use crate::annotations::msg;
use crate::value::{Elem, FastMap, FastSet, FloatHistogram, Matrix, NO_OID};
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

/// An annotation a histogram operation raises: `true` for a warning, `false` for an info.
type Note = (bool, String);

/// The outcome of an operator on a pair where at least one side is a native histogram.
struct HistBinop {
    v: f64,
    h: Option<Arc<FloatHistogram>>,
    keep: bool,
    /// Prometheus's `info` result: raised, the sample still counts.
    info: Option<Note>,
    /// Prometheus's `err` result: raised, and the pair yields nothing (vector-vector) or,
    /// unless a warning, nothing (vector-scalar).
    err: Option<Note>,
}

/// Prometheus's `vectorElemBinop` for pairs with a histogram on at least one side.
fn hist_elem_binop(
    op: BinOp,
    lf: f64,
    rf: f64,
    lh: Option<&Arc<FloatHistogram>>,
    rh: Option<&Arc<FloatHistogram>>,
) -> HistBinop {
    let mut out = HistBinop {
        v: 0.0,
        h: None,
        keep: false,
        info: None,
        err: None,
    };
    let kind = |h: Option<&Arc<FloatHistogram>>| if h.is_some() { "histogram" } else { "float" };
    let incompatible = || {
        (
            false,
            msg::incompatible_types_in_binop(kind(lh), op.as_str(), kind(rh)),
        )
    };
    let scaled = |h: &FloatHistogram, f: &dyn Fn(&mut FloatHistogram)| {
        let mut h = h.clone();
        f(&mut h);
        h.compact(0);
        Some(Arc::new(h))
    };
    match (lh, rh) {
        (None, Some(r)) if op == BinOp::Mul => {
            out.h = scaled(r, &|h| h.mul(lf));
            out.keep = true;
        }
        (Some(l), None) if op == BinOp::Mul => {
            out.h = scaled(l, &|h| h.mul(rf));
            out.keep = true;
        }
        (Some(l), None) if op == BinOp::Div => {
            out.h = scaled(l, &|h| h.div(rf));
            out.keep = true;
        }
        (Some(l), Some(r)) if matches!(op, BinOp::Add | BinOp::Sub) => {
            let mut res = (**l).clone();
            let (r, operation) = if op == BinOp::Add {
                (res.add(r), "addition")
            } else {
                (res.sub(r), "subtraction")
            };
            match r {
                Err(_) => {
                    out.err = Some((true, msg::incompatible_layout_in_binop(op.as_str())));
                    return out;
                }
                Ok(o) => {
                    if op == BinOp::Sub {
                        res.counter_reset_hint = m3query_model::histogram::CounterResetHint::Gauge;
                    }
                    if o.counter_reset_collision {
                        out.err = Some((true, msg::counter_reset_collision(operation)));
                    }
                    if o.custom_bounds_reconciled {
                        out.info = Some((false, msg::mismatched_custom_buckets(operation)));
                    }
                }
            }
            res.compact(0);
            out.h = Some(Arc::new(res));
            out.keep = true;
        }
        (Some(l), Some(r)) if matches!(op, BinOp::Eqlc | BinOp::Neq) => {
            out.h = Some(l.clone());
            out.keep = (**l == **r) == (op == BinOp::Eqlc);
        }
        (Some(l), None) if is_trim(op) => {
            let mut h = (**l).clone();
            crate::hist::trim_buckets(&mut h, rf, op == BinOp::TrimUpper);
            out.h = Some(Arc::new(h));
            out.keep = true;
        }
        _ => out.err = Some(incompatible()),
    }
    out
}

fn note(annos: &mut crate::annotations::Annotations, n: Note, pos: PosRange) {
    if n.0 {
        annos.warn(n.1, pos);
    } else {
        annos.info(n.1, pos);
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
                    h: None,
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
                if is_trim(op) && v[0].iter().any(|e| e.h.is_none()) {
                    annos.info(incompatible_types(op), pos);
                }
                for e in &v[0] {
                    if e.h.is_some() {
                        let (lh, rh) = if swap {
                            (None, e.h.as_ref())
                        } else {
                            (e.h.as_ref(), None)
                        };
                        let (lf, rf) = if swap { (s, 0.0) } else { (0.0, s) };
                        let r = hist_elem_binop(op, lf, rf, lh, rh);
                        if let Some(n) = r.err {
                            let warn = n.0;
                            note(annos, n, pos);
                            if !warn {
                                continue;
                            }
                        }
                        let (mut val, mut h, mut keep) = (r.v, r.h, r.keep);
                        if op.is_comparison() && swap {
                            val = rf;
                            h = rh.cloned();
                        }
                        if return_bool {
                            val = if keep { 1.0 } else { 0.0 };
                            h = None;
                            keep = true;
                        }
                        if keep {
                            out.push(Elem {
                                h,
                                labels: e.labels.clone(),
                                v: val,
                                t: e.t,
                                drop_name: e.drop_name || op.changes_metric_schema() || return_bool,
                                si: e.si,
                                oid: e.si as u32,
                            });
                        }
                        continue;
                    }
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
                            h: None,
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

/// Each series' matching signature as a small ordinal, computed once for the whole range,
/// and a per-step scratch of which signatures a side holds.
struct Signatures {
    lhs: Vec<usize>,
    rhs: Vec<usize>,
    /// Right-hand series are numbered after the left-hand ones in the output.
    lhs_len: usize,
    present: Vec<bool>,
}

impl Signatures {
    fn new(lhs: &Matrix, rhs: &Matrix, on: bool, names: &[String]) -> Self {
        let mut ord: FastMap<u64, usize> = FastMap::default();
        let mut sig = |l: &Labels| {
            let h = if on {
                l.hash_for_labels(names)
            } else {
                l.hash_without_labels(names)
            };
            let n = ord.len();
            *ord.entry(h).or_insert(n)
        };
        let lhs_sigs: Vec<usize> = lhs.iter().map(|s| sig(&s.labels)).collect();
        let rhs_sigs: Vec<usize> = rhs.iter().map(|s| sig(&s.labels)).collect();
        Signatures {
            present: vec![false; ord.len()],
            lhs: lhs_sigs,
            rhs: rhs_sigs,
            lhs_len: lhs.len(),
        }
    }

    /// Marks the signatures of `v`'s series (`sigs` is the side's table).
    fn mark(present: &mut [bool], sigs: &[usize], v: &[Elem]) {
        present.iter_mut().for_each(|p| *p = false);
        for e in v {
            present[sigs[e.si]] = true;
        }
    }
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
    let mut sigs = Signatures::new(&lhs, &rhs, m.on, &names);
    match op {
        BinOp::And | BinOp::Or | BinOp::Unless => {
            ev.range_eval(vec![lhs, rhs], move |_, _, v, out| {
                let (lv, rv) = (&v[0], &v[1]);
                match op {
                    BinOp::And => vector_and(&mut sigs, lv, rv, out),
                    BinOp::Or => vector_or(&mut sigs, lv, rv, out),
                    _ => vector_unless(&mut sigs, lv, rv, out),
                }
                Ok(())
            })
        }
        _ => {
            let mut b = VectorBinop::new(op, return_bool, m, names, sigs);
            ev.range_eval(vec![lhs, rhs], move |annos, _, v, out| {
                b.step(&v[0], &v[1], out)?;
                if std::mem::take(&mut b.trimmed) {
                    annos.info(incompatible_types(op), pos);
                }
                for n in b.notes.drain(..) {
                    note(annos, n, pos);
                }
                Ok(())
            })
        }
    }
}

/// `lhs and rhs`: left elements whose signature the right side has.
fn vector_and(sigs: &mut Signatures, lv: &[Elem], rv: &[Elem], out: &mut Vec<Elem>) {
    if lv.is_empty() || rv.is_empty() {
        return;
    }
    Signatures::mark(&mut sigs.present, &sigs.rhs, rv);
    out.extend(
        lv.iter()
            .filter(|e| sigs.present[sigs.lhs[e.si]])
            .map(|e| with_oid(e, e.si)),
    );
}

/// `lhs or rhs`: every left element, then right elements whose signature the left lacks.
fn vector_or(sigs: &mut Signatures, lv: &[Elem], rv: &[Elem], out: &mut Vec<Elem>) {
    let lhs_len = sigs.lhs_len;
    let right = |e: &Elem| with_oid(e, lhs_len + e.si);
    out.extend(lv.iter().map(|e| with_oid(e, e.si)));
    if lv.is_empty() || rv.is_empty() {
        out.extend(rv.iter().map(right));
        return;
    }
    Signatures::mark(&mut sigs.present, &sigs.lhs, lv);
    out.extend(
        rv.iter()
            .filter(|e| !sigs.present[sigs.rhs[e.si]])
            .map(right),
    );
}

/// `lhs unless rhs`: left elements whose signature the right side lacks.
fn vector_unless(sigs: &mut Signatures, lv: &[Elem], rv: &[Elem], out: &mut Vec<Elem>) {
    if lv.is_empty() || rv.is_empty() {
        out.extend(lv.iter().map(|e| with_oid(e, e.si)));
        return;
    }
    Signatures::mark(&mut sigs.present, &sigs.rhs, rv);
    out.extend(
        lv.iter()
            .filter(|e| !sigs.present[sigs.lhs[e.si]])
            .map(|e| with_oid(e, e.si)),
    );
}

/// An arithmetic or comparison operator between two vectors (Prometheus's `VectorBinop`),
/// with the state it keeps across steps.
struct VectorBinop {
    op: BinOp,
    return_bool: bool,
    m: VectorMatching,
    /// The matching labels, sorted.
    names: Vec<String>,
    sigs: Signatures,
    /// Per signature: the index of the "one" side's element at this step.
    one_idx: Vec<usize>,
    /// Per signature: whether it matched at this step (one-to-one), or the result series
    /// it produced (one-to-many and many-to-one).
    matched_one: Vec<bool>,
    matched_many: Vec<FastSet<u32>>,
    result_cache: ResultCache,
    /// A trim operator met floats at this step (an info annotation).
    trimmed: bool,
    /// Annotations histogram pairs raised at this step.
    notes: Vec<Note>,
}

impl VectorBinop {
    fn new(
        op: BinOp,
        return_bool: bool,
        m: VectorMatching,
        names: Vec<String>,
        sigs: Signatures,
    ) -> Self {
        let n = sigs.present.len();
        VectorBinop {
            op,
            return_bool,
            m,
            names,
            sigs,
            one_idx: vec![usize::MAX; n],
            matched_one: vec![false; n],
            matched_many: vec![FastSet::default(); n],
            result_cache: ResultCache::default(),
            trimmed: false,
            notes: Vec::new(),
        }
    }

    fn one_to_many(&self) -> bool {
        self.m.card == Card::OneToMany
    }

    fn step(&mut self, lv: &[Elem], rv: &[Elem], out: &mut Vec<Elem>) -> Result<()> {
        let has_fill = self.m.fill_lhs.is_some() || self.m.fill_rhs.is_some();
        if (lv.is_empty() && rv.is_empty()) || ((lv.is_empty() || rv.is_empty()) && !has_fill) {
            return Ok(());
        }
        // The "many" side is iterated, the "one" side indexed.
        let (many, one) = if self.one_to_many() {
            (rv, lv)
        } else {
            (lv, rv)
        };
        self.index_one_side(one)?;
        if self.m.card == Card::OneToOne {
            self.matched_one.iter_mut().for_each(|x| *x = false);
        } else {
            self.matched_many.iter_mut().for_each(FastSet::clear);
        }
        // As Prometheus: after swapping sides for group_right the fill values are not swapped.
        let (fill_one, fill_many) = (self.m.fill_rhs, self.m.fill_lhs);
        for ls in many {
            let s = self.many_sig(ls);
            if self.sigs.present[s] {
                let rs = &one[self.one_idx[s]];
                self.pair(ls, rs, s, out)?;
            } else if let Some(fill) = fill_one {
                let rs = self.filler(ls, fill);
                self.pair(ls, &rs, s, out)?;
            }
        }
        if let Some(fill) = fill_many {
            for rs in one {
                let s = self.one_sig(rs);
                let matched = if self.m.card == Card::OneToOne {
                    self.matched_one[s]
                } else {
                    !self.matched_many[s].is_empty()
                };
                if !matched {
                    let ls = self.filler(rs, fill);
                    self.pair(&ls, rs, s, out)?;
                }
            }
        }
        Ok(())
    }

    fn many_sig(&self, e: &Elem) -> usize {
        if self.one_to_many() {
            self.sigs.rhs[e.si]
        } else {
            self.sigs.lhs[e.si]
        }
    }

    fn one_sig(&self, e: &Elem) -> usize {
        if self.one_to_many() {
            self.sigs.lhs[e.si]
        } else {
            self.sigs.rhs[e.si]
        }
    }

    /// Indexes the "one" side by signature; two of its series with one signature are an error.
    fn index_one_side(&mut self, one: &[Elem]) -> Result<()> {
        self.sigs.present.iter_mut().for_each(|p| *p = false);
        for (i, e) in one.iter().enumerate() {
            let s = self.one_sig(e);
            if self.sigs.present[s] {
                let dup = &one[self.one_idx[s]];
                let side = if self.one_to_many() { "left" } else { "right" };
                let matched = match_labels(&e.labels, self.m.on, &self.names);
                let (mut d1, mut d2) = (e.labels.to_string(), dup.labels.to_string());
                if d1 > d2 {
                    std::mem::swap(&mut d1, &mut d2);
                }
                return Err(Error::exec(format!(
                    "found duplicate series for the match group {matched} on the {side} hand-side of the operation: [{d1}, {d2}];many-to-many matching not allowed: matching labels must be unique on one side"
                )));
            }
            self.sigs.present[s] = true;
            self.one_idx[s] = i;
        }
        Ok(())
    }

    /// The element a fill modifier stands in for the missing side of `e`.
    fn filler(&self, e: &Elem, fill: f64) -> Elem {
        Elem {
            h: None,
            labels: match_labels(&e.labels, self.m.on, &self.names),
            v: fill,
            t: e.t,
            drop_name: false,
            si: SYNTHESIZED,
            oid: NO_OID,
        }
    }

    /// Applies the operator to a matched pair (`ls` from the "many" side) of signature `s`.
    fn pair(&mut self, ls: &Elem, rs: &Elem, s: usize, out: &mut Vec<Elem>) -> Result<()> {
        let (fl, fr) = if self.one_to_many() {
            (rs.v, ls.v)
        } else {
            (ls.v, rs.v)
        };
        let mut hist = None;
        let (mut val, keep) = if ls.h.is_some() || rs.h.is_some() {
            let (hl, hr) = if self.one_to_many() {
                (rs.h.as_ref(), ls.h.as_ref())
            } else {
                (ls.h.as_ref(), rs.h.as_ref())
            };
            let r = hist_elem_binop(self.op, fl, fr, hl, hr);
            if let Some(n) = r.err {
                self.notes.push(n);
                return Ok(());
            }
            if let Some(n) = r.info {
                self.notes.push(n);
            }
            hist = r.h;
            (r.v, r.keep)
        } else {
            self.trimmed |= is_trim(self.op);
            elem_binop(self.op, fl, fr)
        };
        if self.return_bool {
            val = if keep { 1.0 } else { 0.0 };
            hist = None;
        }
        let (metric, metric_id) = self.result_cache.get(ls, rs, self.op, &self.m);
        if self.m.card == Card::OneToOne {
            if self.matched_one[s] {
                return Err(Error::exec(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                ));
            }
            self.matched_one[s] = true;
        } else if !self.matched_many[s].insert(metric_id) {
            return Err(Error::exec(
                "multiple matches for labels: grouping labels must ensure unique matches",
            ));
        }
        if !keep && !self.return_bool {
            return Ok(());
        }
        out.push(Elem {
            h: hist,
            labels: metric,
            v: val,
            t: ls.t,
            drop_name: self.return_bool,
            si: 0,
            oid: metric_id,
        });
        Ok(())
    }
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
