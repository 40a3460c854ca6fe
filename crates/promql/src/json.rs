//! `/api/v1/parse_query`: the syntax tree as JSON, in the shape of Prometheus's
//! `web/api/v1/translate_ast.go`.
//!
//! Differences from Prometheus: the parenthesised-duration `wrapped` flag is reported from our
//! tree's explicit paren nodes, and `func.argTypes`/`returnType` use Prometheus's type names
//! (`vector`, `matrix`, `scalar`, `string`) as its JSON does.

use serde_json::{Value as J, json};

use crate::Result;
use crate::parser::{AtSpecial, Card, DurationExpr, Expr, format_float_f};

/// Parses `expr` and returns its syntax tree as Prometheus's `parse_query` JSON.
pub fn parse_query(expr: &str) -> Result<J> {
    let e = crate::parser::parse(expr)?;
    Ok(translate(&e))
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
            "lhs": null, "rhs": translate_duration(expr), "wrapped": false
        }),
        DurationExpr::Binary { op, lhs, rhs } => json!({
            "type": "durationExpr", "op": op.as_str(),
            "lhs": translate_duration(lhs), "rhs": translate_duration(rhs), "wrapped": false
        }),
        DurationExpr::MinOf(a, b, _) | DurationExpr::MaxOf(a, b, _) => json!({
            "type": "durationExpr",
            "op": if matches!(d, DurationExpr::MinOf(..)) { "min_of" } else { "max_of" },
            "lhs": translate_duration(a), "rhs": translate_duration(b), "wrapped": false
        }),
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

fn type_name(t: crate::parser::ValueType) -> &'static str {
    t.name()
}

fn translate(e: &Expr) -> J {
    match e {
        Expr::Aggregate(a) => json!({
            "type": "aggregation",
            "op": a.op.as_str(),
            "expr": translate(&a.expr),
            "param": a.param.as_ref().map_or(J::Null, translate),
            "grouping": a.grouping,
            "without": a.without,
        }),
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
                "lhs": translate(&b.lhs),
                "rhs": translate(&b.rhs),
                "matching": matching,
                "bool": b.return_bool,
            })
        }
        Expr::Call(c) => json!({
            "type": "call",
            "func": {
                "name": c.func.name,
                "argTypes": c.func.arg_types.iter().map(|t| type_name(*t)).collect::<Vec<_>>(),
                "variadic": c.func.variadic,
                "returnType": type_name(c.func.return_type),
            },
            "args": c.args.iter().map(translate).collect::<Vec<_>>(),
        }),
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
            "expr": translate(&s.expr),
            "range": s.range_ms,
            "rangeExpr": duration(&s.range_expr),
            "offset": s.original_offset_ms,
            "offsetExpr": duration(&s.offset_expr),
            "step": s.step_ms,
            "stepExpr": duration(&s.step_expr),
            "timestamp": s.timestamp,
            "startOrEnd": start_or_end(s.start_or_end),
        }),
        Expr::Number { val, .. } => json!({"type": "numberLiteral", "val": format_float_f(*val)}),
        Expr::Paren(inner, _) => json!({"type": "parenExpr", "expr": translate(inner)}),
        Expr::StepInvariant(inner) => translate(inner),
        Expr::String { val, .. } => json!({"type": "stringLiteral", "val": val}),
        Expr::Unary { neg, expr, .. } => json!({
            "type": "unaryExpr", "op": if *neg { "-" } else { "+" }, "expr": translate(expr)
        }),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_prometheus() {
        let j = parse_query("sum by (job) (rate(x[5m]))").expect("parses");
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
