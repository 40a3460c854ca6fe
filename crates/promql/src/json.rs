//! `/api/v1/parse_query`: the syntax tree as JSON, in the shape of Prometheus's
//! `web/api/v1/translate_ast.go`.
//!
//! Differences from Prometheus: the parenthesised-duration `wrapped` flag is reported from our
//! tree's explicit paren nodes, and `func.argTypes`/`returnType` use Prometheus's type names
//! (`vector`, `matrix`, `scalar`, `string`) as its JSON does.

use serde_json::{Value as J, json};

use m3query_storage::Context;

use crate::Result;
use crate::parser::{AtSpecial, Card, DurationExpr, Expr, ParseOptions, format_float_f};

/// Appends a sample value as Prometheus's query API renders it: Go's
/// `FormatFloat(v, 'f', -1, 64)` in quotes, `+Inf`/`-Inf`/`NaN` spelled out.
pub fn write_sample_value(out: &mut String, v: f64) {
    out.push('"');
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v.fract() == 0.0 && v.abs() < 1e15 && !(v == 0.0 && v.is_sign_negative()) {
        // Whole numbers (counters, timestamps, `up`) print the same as integers, which
        // format several times faster than the shortest-float search; -0 keeps its sign.
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        let mut buf = ryu::Buffer::new();
        let text = buf.format_finite(v);
        if text.as_bytes().contains(&b'e') {
            Shortest::parse(text).write_f(out);
        } else {
            // Ryū's own layout for magnitudes in [1e-5, 1e16) is Go's, but for the `.0` it
            // gives whole numbers.
            out.push_str(text.strip_suffix(".0").unwrap_or(text));
        }
    }
    out.push('"');
}

/// Appends a float as Prometheus's `jsonutil.MarshalFloat` writes vector, matrix and histogram
/// values: Go's `FormatFloat(v, 'f', -1, 64)`, except `'e'` (`1e-07`, `2.938735877055719e-39`,
/// `1e+21`) below 1e-6 and from 1e21 in magnitude, in quotes, `+Inf`/`-Inf`/`NaN` spelled
/// out. (Scalars are written with `'f'` throughout: [`write_sample_value`].)
pub fn write_json_float(out: &mut String, v: f64) {
    let a = v.abs();
    if !v.is_finite() || a == 0.0 || (1e-6..1e21).contains(&a) {
        return write_sample_value(out, v);
    }
    out.push('"');
    Shortest::parse(ryu::Buffer::new().format_finite(v)).write_e(out);
    out.push('"');
}

/// The shortest decimal digits that read back as a finite, non-zero float, as Go's
/// `strconv` (precision -1) picks them: `0.d1d2d3... x 10^point`, ties between two
/// equally close candidates to the even digit. Ryū finds them (in a fraction of the
/// instructions of `core::fmt`, whose tie-breaking also differs from Go's, e.g. for
/// 850257467037368.25); only the layout is Go's.
struct Shortest {
    neg: bool,
    digits: [u8; 24],
    len: usize,
    point: i32,
}

impl Shortest {
    /// From Ryū's text for a finite float (`-1.234e-7`, `0.00123`, `1234.0`).
    fn parse(text: &str) -> Self {
        let text = text.as_bytes();
        let (neg, text) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let (mant, exp) = match text.iter().position(|&b| b == b'e') {
            Some(i) => (
                &text[..i],
                std::str::from_utf8(&text[i + 1..])
                    .ok()
                    .and_then(|e| e.parse::<i32>().ok())
                    .unwrap_or(0),
            ),
            None => (text, 0),
        };
        let mut s = Shortest {
            neg,
            digits: [0; 24],
            len: 0,
            point: exp,
        };
        // Digits without the dot and without leading zeros; `point` counts the integer
        // digits (less the leading zeros dropped after the dot).
        let mut seen_dot = false;
        for &b in mant {
            match b {
                b'.' => seen_dot = true,
                b'0' if s.len == 0 => {
                    if seen_dot {
                        s.point -= 1;
                    }
                }
                _ => {
                    if !seen_dot {
                        s.point += 1;
                    }
                    if s.len < s.digits.len() {
                        s.digits[s.len] = b;
                        s.len += 1;
                    }
                }
            }
        }
        while s.len > 0 && s.digits[s.len - 1] == b'0' {
            s.len -= 1;
        }
        s
    }

    fn digits(&self) -> &str {
        std::str::from_utf8(&self.digits[..self.len]).unwrap_or("0")
    }

    fn push_zeros(out: &mut String, n: i32) {
        for _ in 0..n {
            out.push('0');
        }
    }

    /// Go's `'f'` layout: no exponent.
    fn write_f(&self, out: &mut String) {
        if self.neg {
            out.push('-');
        }
        let d = self.digits();
        let n = self.len as i32;
        if self.len == 0 {
            out.push('0');
        } else if self.point <= 0 {
            out.push_str("0.");
            Self::push_zeros(out, -self.point);
            out.push_str(d);
        } else if self.point >= n {
            out.push_str(d);
            Self::push_zeros(out, self.point - n);
        } else {
            let (i, f) = d.split_at(self.point as usize);
            out.push_str(i);
            out.push('.');
            out.push_str(f);
        }
    }

    /// Go's `'e'` layout: one integer digit, an exponent with its sign and two digits at least.
    fn write_e(&self, out: &mut String) {
        if self.neg {
            out.push('-');
        }
        let d = self.digits();
        let (first, rest) = d.split_at(d.len().min(1));
        out.push_str(if first.is_empty() { "0" } else { first });
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let e = if self.len == 0 { 0 } else { self.point - 1 };
        out.push_str(if e < 0 { "e-" } else { "e+" });
        if e.abs() < 10 {
            out.push('0');
        }
        out.push_str(itoa::Buffer::new().format(e.unsigned_abs()));
    }
}

/// Appends a native histogram in the shape of Prometheus 3's query API (`histogram` in a
/// vector sample, each element of `histograms` in a matrix series):
/// `{"count":"..","sum":"..","buckets":[[rule,"lower","upper","count"],...]}` with the
/// non-empty buckets from lowest to highest and `rule` 0 for `(l,u]`, 1 for `[l,u)`, 2 for
/// `(l,u)`, 3 for `[l,u]`. Floats are written as [`write_json_float`] writes them (quoted,
/// `+Inf`/`-Inf`/`NaN`, exponent form for tiny and huge ones). The HTTP layer pairs it with the timestamp:
/// `"histogram":[ts, {..}]`.
pub fn write_histogram_json(out: &mut String, h: &m3query_model::FloatHistogram) {
    let val = write_json_float;
    out.push_str("{\"count\":");
    val(out, h.count);
    out.push_str(",\"sum\":");
    val(out, h.sum);
    let mut first = true;
    for b in crate::hist::all_buckets(h) {
        if b.count == 0.0 {
            continue;
        }
        out.push_str(if first { ",\"buckets\":[" } else { "," });
        first = false;
        let rule = match (b.lower_inclusive, b.upper_inclusive) {
            (true, true) => '3',
            (true, false) => '1',
            (false, true) => '0',
            (false, false) => '2',
        };
        out.push('[');
        out.push(rule);
        out.push(',');
        val(out, b.lower);
        out.push(',');
        val(out, b.upper);
        out.push(',');
        val(out, b.count);
        out.push(']');
    }
    if !first {
        out.push(']');
    }
    out.push('}');
}

/// Parses `expr` and returns its syntax tree as Prometheus's `parse_query` JSON, as text.
///
/// Text, not a `serde_json::Value`: the value would be as deep as the tree, and serializing or
/// dropping it recurses once per level, which a caller's small stack may not survive. Here it
/// is built, serialized and dropped on a [`crate::deep`] stack.
pub fn parse_query(expr: &str) -> Result<String> {
    parse_query_ctx(expr, &Context::background())
}

/// [`parse_query`] that stops when `ctx` is canceled or past its deadline.
pub fn parse_query_ctx(expr: &str, ctx: &Context) -> Result<String> {
    crate::deep::run(|| {
        let e = crate::parser::parse_with_ctx(expr, ParseOptions::default(), ctx)?;
        let j = translate(&e, &mut Walk::new(Some(ctx)))?;
        serde_json::to_string(&j).map_err(|e| crate::Error::exec(e.to_string()))
    })
}

/// Counts nodes, to look at the context every so often.
struct Walk<'a> {
    ctx: Option<&'a Context>,
    nodes: usize,
}

impl<'a> Walk<'a> {
    fn new(ctx: Option<&'a Context>) -> Self {
        Walk { ctx, nodes: 0 }
    }

    fn check(&mut self) -> Result<()> {
        self.nodes += 1;
        if self.nodes.is_multiple_of(1024)
            && let Some(ctx) = self.ctx
        {
            crate::check_ctx(ctx, "query translation")?;
        }
        Ok(())
    }
}

fn start_or_end(s: Option<AtSpecial>) -> J {
    match s {
        Some(AtSpecial::Start) => json!("start"),
        Some(AtSpecial::End) => json!("end"),
        None => J::Null,
    }
}

fn matchers(m: &[m3query_model::Matcher]) -> J {
    J::Array(
        m.iter()
            .map(|m| json!({"name": m.name, "value": m.value, "type": m.op.as_str()}))
            .collect(),
    )
}

fn duration(d: &Option<DurationExpr>) -> J {
    d.as_ref().map_or(J::Null, translate_duration)
}

fn translate_duration(d: &DurationExpr) -> J {
    match d {
        DurationExpr::Number { val, duration, .. } => {
            json!({"type": "numberLiteral", "val": format_float_f(*val), "duration": duration})
        }
        DurationExpr::Step(_) => {
            json!({"type": "durationExpr", "op": "step", "lhs": null, "rhs": null, "wrapped": false})
        }
        DurationExpr::Range(_) => {
            json!({"type": "durationExpr", "op": "range", "lhs": null, "rhs": null, "wrapped": false})
        }
        DurationExpr::Unary { neg, expr, .. } => json!({
            "type": "durationExpr", "op": if *neg { "-" } else { "+" },
            "lhs": null, "rhs": null, "wrapped": false
        })
        .with([("rhs", translate_duration(expr))]),
        DurationExpr::Binary { op, lhs, rhs } => json!({
            "type": "durationExpr", "op": op.as_str(),
            "lhs": null, "rhs": null, "wrapped": false
        })
        .with([
            ("lhs", translate_duration(lhs)),
            ("rhs", translate_duration(rhs)),
        ]),
        DurationExpr::MinOf(a, b, _) | DurationExpr::MaxOf(a, b, _) => json!({
            "type": "durationExpr",
            "op": if matches!(d, DurationExpr::MinOf(..)) { "min_of" } else { "max_of" },
            "lhs": null, "rhs": null, "wrapped": false
        })
        .with([
            ("lhs", translate_duration(a)),
            ("rhs", translate_duration(b)),
        ]),
        DurationExpr::Paren(inner, _) => {
            let mut j = translate_duration(inner);
            if let Some(o) = j.as_object_mut()
                && o.contains_key("wrapped")
            {
                o.insert("wrapped".into(), J::Bool(true));
            }
            j
        }
    }
}

/// Sets subtrees into a node built by `json!` with nulls in their place. `json!` would copy
/// an interpolated `Value` (it serializes it again), so building a tree of depth d with it
/// costs O(d^2): 5,000 chained terms took 90 s.
trait With {
    fn with<const N: usize>(self, fields: [(&str, J); N]) -> J;
}

impl With for J {
    fn with<const N: usize>(mut self, fields: [(&str, J); N]) -> J {
        if let Some(o) = self.as_object_mut() {
            for (k, v) in fields {
                o.insert(k.to_string(), v);
            }
        }
        self
    }
}

fn type_name(t: crate::parser::ValueType) -> &'static str {
    t.name()
}

fn translate(e: &Expr, w: &mut Walk<'_>) -> Result<J> {
    w.check()?;
    Ok(match e {
        Expr::Aggregate(a) => json!({
            "type": "aggregation",
            "op": a.op.as_str(),
            "expr": null,
            "param": null,
            "grouping": a.grouping,
            "without": a.without,
        })
        .with([
            (
                "param",
                match &a.param {
                    Some(p) => translate(p, w)?,
                    None => J::Null,
                },
            ),
            ("expr", translate(&a.expr, w)?),
        ]),
        Expr::Binary(b) => {
            let matching = b.matching.as_ref().map_or(J::Null, |m| {
                json!({
                    "card": match m.card {
                        Card::OneToOne => "one-to-one",
                        Card::ManyToOne => "many-to-one",
                        Card::OneToMany => "one-to-many",
                        Card::ManyToMany => "many-to-many",
                    },
                    "labels": m.matching_labels,
                    "on": m.on,
                    "include": m.include,
                    "fillValues": {"lhs": m.fill_lhs, "rhs": m.fill_rhs},
                })
            });
            json!({
                "type": "binaryExpr",
                "op": b.op.as_str(),
                "lhs": null,
                "rhs": null,
                "matching": matching,
                "bool": b.return_bool,
            })
            .with([
                ("lhs", translate(&b.lhs, w)?),
                ("rhs", translate(&b.rhs, w)?),
            ])
        }
        Expr::Call(c) => json!({
            "type": "call",
            "func": {
                "name": c.func.name,
                "argTypes": c.func.arg_types.iter().map(|t| type_name(*t)).collect::<Vec<_>>(),
                "variadic": c.func.variadic,
                "returnType": type_name(c.func.return_type),
            },
            "args": null,
        })
        .with([(
            "args",
            J::Array(
                c.args
                    .iter()
                    .map(|a| translate(a, w))
                    .collect::<Result<_>>()?,
            ),
        )]),
        Expr::MatrixSelector(m) => json!({
            "type": "matrixSelector",
            "name": m.vs.name.clone().unwrap_or_default(),
            "range": m.range_ms,
            "rangeExpr": duration(&m.range_expr),
            "offset": m.vs.original_offset_ms,
            "offsetExpr": duration(&m.vs.offset_expr),
            "matchers": matchers(&m.vs.matchers),
            "timestamp": m.vs.timestamp,
            "startOrEnd": start_or_end(m.vs.start_or_end),
            "anchored": m.vs.anchored,
            "smoothed": m.vs.smoothed,
        }),
        Expr::Subquery(s) => json!({
            "type": "subquery",
            "expr": null,
            "range": s.range_ms,
            "rangeExpr": duration(&s.range_expr),
            "offset": s.original_offset_ms,
            "offsetExpr": duration(&s.offset_expr),
            "step": s.step_ms,
            "stepExpr": duration(&s.step_expr),
            "timestamp": s.timestamp,
            "startOrEnd": start_or_end(s.start_or_end),
        })
        .with([("expr", translate(&s.expr, w)?)]),
        Expr::Number { val, .. } => json!({"type": "numberLiteral", "val": format_float_f(*val)}),
        Expr::Paren(inner, _) => {
            json!({"type": "parenExpr", "expr": null}).with([("expr", translate(inner, w)?)])
        }
        Expr::StepInvariant(inner) => translate(inner, w)?,
        Expr::String { val, .. } => json!({"type": "stringLiteral", "val": val}),
        Expr::Unary { neg, expr, .. } => json!({
            "type": "unaryExpr", "op": if *neg { "-" } else { "+" }, "expr": null
        })
        .with([("expr", translate(expr, w)?)]),
        Expr::VectorSelector(vs) => json!({
            "type": "vectorSelector",
            "name": vs.name.clone().unwrap_or_default(),
            "offset": vs.original_offset_ms,
            "offsetExpr": duration(&vs.offset_expr),
            "matchers": matchers(&vs.matchers),
            "timestamp": vs.timestamp,
            "startOrEnd": start_or_end(vs.start_or_end),
            "anchored": vs.anchored,
            "smoothed": vs.smoothed,
        }),
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn histogram_json_has_prometheus_shape() {
        use m3query_model::FloatHistogram;
        use m3query_model::histogram::Span;
        let h = FloatHistogram {
            count: 5.0,
            sum: 2.5,
            zero_threshold: 0.001,
            zero_count: 1.0,
            positive_spans: vec![Span::new(0, 2)],
            positive_buckets: vec![3.0, 0.0],
            negative_spans: vec![Span::new(1, 1)],
            negative_buckets: vec![1.0],
            ..FloatHistogram::default()
        };
        let mut out = String::new();
        super::write_histogram_json(&mut out, &h);
        let j: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(
            j,
            serde_json::json!({"count": "5", "sum": "2.5", "buckets": [
                [1, "-2", "-1", "1"],
                [3, "-0.001", "0.001", "1"],
                [0, "0.5", "1", "3"]
            ]})
        );
        let mut out = String::new();
        super::write_histogram_json(&mut out, &FloatHistogram::default());
        assert_eq!(out, r#"{"count":"0","sum":"0"}"#);
    }

    /// Go's `jsonutil.MarshalFloat`, from Prometheus's json codec tests and Go's
    /// `strconv.FormatFloat` (checked against a real Prometheus: `vector(1e-7)` answers
    /// `"1e-07"`).
    #[test]
    fn json_floats_are_go_marshal_float() {
        let mut s = String::new();
        for v in [
            1.2345678e6,
            1.2345678e-6,
            1.2345678e-67,
            1e-7,
            1e21,
            1.5e300,
            -2.938735877055719e-39,
            0.001,
            1e-6,
            9.99e20,
            0.0,
            -0.0,
            f64::NAN,
            f64::NEG_INFINITY,
        ] {
            super::write_json_float(&mut s, v);
            s.push(' ');
        }
        assert_eq!(
            s,
            r#""1234567.8" "0.0000012345678" "1.2345678e-67" "1e-07" "1e+21" "1.5e+300" "-2.938735877055719e-39" "0.001" "0.000001" "999000000000000000000" "0" "-0" "NaN" "-Inf" "#
        );
    }

    /// Go's `strconv.FormatFloat(v, 'f', -1, 64)` and `MarshalFloat` for values where
    /// `core::fmt` (used before) picks other digits (ties) or magnitudes that need zeros or
    /// an exponent (each checked with Go 1.19).
    #[test]
    fn sample_values_are_go_shortest() {
        let cases: &[(f64, &str, &str)] = &[
            // 850257467037368.25 exactly, halfway between ...368.2 and ...368.3.
            (
                f64::from_bits(0x4308_2a6f_f252_b5c2),
                "850257467037368.2",
                "850257467037368.2",
            ),
            (0.1, "0.1", "0.1"),
            (-1.0 / 3.0, "-0.3333333333333333", "-0.3333333333333333"),
            (123.456, "123.456", "123.456"),
            (1e15, "1000000000000000", "1000000000000000"),
            (1e15 + 0.5, "1000000000000000.5", "1000000000000000.5"),
            (9007199254740993.0, "9007199254740992", "9007199254740992"),
            (1.5e17, "150000000000000000", "150000000000000000"),
            (1e21, "1000000000000000000000", "1e+21"),
            (1.2345e22, "12345000000000000000000", "1.2345e+22"),
            (9.99e-6, "0.00000999", "0.00000999"),
            (1e-5, "0.00001", "0.00001"),
            (1.5e-7, "0.00000015", "1.5e-07"),
            (-2.5e-300, "", "-2.5e-300"),
            (5e-324, "", "5e-324"),
            (1.7976931348623157e308, "", "1.7976931348623157e+308"),
        ];
        for &(v, f, marshal) in cases {
            if !f.is_empty() {
                let mut s = String::new();
                super::write_sample_value(&mut s, v);
                assert_eq!(s, format!("\"{f}\""), "{v:e}");
            }
            let mut s = String::new();
            super::write_json_float(&mut s, v);
            assert_eq!(s, format!("\"{marshal}\""), "{v:e}");
        }
    }

    /// On any value the digits read back as the value, are as short as `core::fmt`'s
    /// (both are shortest) and differ from them only on a tie, which goes to the even digit.
    #[test]
    fn sample_values_round_trip_shortest() {
        let check = |v: f64| {
            let mut s = String::new();
            super::write_sample_value(&mut s, v);
            let ours = s.trim_matches('"');
            assert_eq!(ours.parse::<f64>().ok(), Some(v), "{v:e}: {ours}");
            let theirs = format!("{v}");
            if ours != theirs {
                assert_eq!(ours.len(), theirs.len(), "{v:e}: {ours} vs {theirs}");
                let last = ours.bytes().last().unwrap_or(b'0');
                assert_eq!((last - b'0') % 2, 0, "{v:e}: {ours} vs {theirs}");
            }
            let mut s = String::new();
            super::write_json_float(&mut s, v);
            let m = s.trim_matches('"');
            assert_eq!(m.parse::<f64>().ok(), Some(v), "{v:e}: {m}");
        };
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..100_000 {
            let bits = next();
            let v = f64::from_bits(bits);
            if v.is_finite() {
                check(v);
            }
            let r = (bits >> 11) as f64 / (1u64 << 53) as f64;
            for v in [
                r,
                r * 1e9,
                (r * 1e6).round() / 1e3,
                r * 1e15 + 0.5,
                r * 1e-6,
            ] {
                check(v);
            }
        }
    }

    use super::*;

    #[test]
    fn shape_matches_prometheus() {
        let j: J =
            serde_json::from_str(&parse_query("sum by (job) (rate(x[5m]))").expect("parses"))
                .expect("json");
        assert_eq!(j["type"], "aggregation");
        assert_eq!(j["op"], "sum");
        assert_eq!(j["grouping"], json!(["job"]));
        assert_eq!(j["expr"]["type"], "call");
        assert_eq!(j["expr"]["func"]["name"], "rate");
        assert_eq!(j["expr"]["args"][0]["type"], "matrixSelector");
        assert_eq!(j["expr"]["args"][0]["range"], 300_000);
        assert_eq!(j["expr"]["args"][0]["matchers"][0]["name"], "__name__");
    }
}
