//! Printing expressions back to PromQL, as Prometheus's `printer.go` (`String()`).

use std::fmt::{self, Write};

use m3query_model::time::format_duration;
use m3query_model::{METRIC_NAME, MatchOp, is_valid_legacy_metric_name};

use super::ast::*;

fn write_labels(f: &mut fmt::Formatter<'_>, labels: &[String]) -> fmt::Result {
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        if is_valid_legacy_label_name(l) {
            f.write_str(l)?;
        } else {
            write!(f, "{}", go_quote(l))?;
        }
    }
    Ok(())
}

fn is_valid_legacy_label_name(s: &str) -> bool {
    !s.contains(':') && is_valid_legacy_metric_name(s)
}

/// Go's `strconv.Quote` for the characters that matter here.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`.
pub fn format_float_f(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    // Rust's Display gives the shortest round-trip representation without exponent.
    format!("{v}")
}

fn write_duration_ms(f: &mut fmt::Formatter<'_>, ms: i64) -> fmt::Result {
    f.write_str(&format_duration(ms))
}

fn write_offset_at(
    f: &mut fmt::Formatter<'_>,
    ts: Option<i64>,
    special: Option<AtSpecial>,
    offset_ms: i64,
    offset_expr: &Option<DurationExpr>,
) -> fmt::Result {
    match (ts, special) {
        (Some(ts), _) => write!(f, " @ {:.3}", ts as f64 / 1000.0)?,
        (None, Some(AtSpecial::Start)) => f.write_str(" @ start()")?,
        (None, Some(AtSpecial::End)) => f.write_str(" @ end()")?,
        _ => {}
    }
    if let Some(e) = offset_expr {
        write!(f, " offset {e}")?;
    } else if offset_ms > 0 {
        f.write_str(" offset ")?;
        write_duration_ms(f, offset_ms)?;
    } else if offset_ms < 0 {
        f.write_str(" offset -")?;
        write_duration_ms(f, -offset_ms)?;
    }
    Ok(())
}

impl fmt::Display for DurationExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationExpr::Number { val, duration, .. } => {
                if *duration {
                    if *val < 0.0 {
                        write!(f, "-{}", format_duration((-val * 1000.0).round() as i64))
                    } else {
                        f.write_str(&format_duration((val * 1000.0).round() as i64))
                    }
                } else {
                    f.write_str(&format_float_f(*val))
                }
            }
            DurationExpr::Step(_) => f.write_str("step()"),
            DurationExpr::Range(_) => f.write_str("range()"),
            DurationExpr::Unary { neg, expr, .. } => {
                if *neg {
                    f.write_str("-")?;
                }
                write!(f, "{expr}")
            }
            DurationExpr::Binary { op, lhs, rhs } => write!(f, "{lhs} {} {rhs}", op.as_str()),
            DurationExpr::MinOf(a, b, _) => write!(f, "min_of({a}, {b})"),
            DurationExpr::MaxOf(a, b, _) => write!(f, "max_of({a}, {b})"),
            DurationExpr::Paren(e, _) => write!(f, "({e})"),
        }
    }
}

impl VectorSelector {
    fn write_base(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut strs: Vec<String> = Vec::with_capacity(self.matchers.len());
        for m in &self.matchers {
            if m.name == METRIC_NAME
                && m.op == MatchOp::Equal
                && Some(m.value.as_str()) == self.name.as_deref()
                && !m.value.is_empty()
            {
                continue;
            }
            let name = if is_valid_legacy_label_name(&m.name) {
                m.name.clone()
            } else {
                go_quote(&m.name)
            };
            strs.push(format!("{name}{}{}", m.op.as_str(), go_quote(&m.value)));
        }
        if let Some(n) = &self.name {
            f.write_str(n)?;
        }
        if !strs.is_empty() {
            strs.sort();
            write!(f, "{{{}}}", strs.join(","))?;
        }
        Ok(())
    }
}

impl fmt::Display for VectorSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_base(f)?;
        match (self.timestamp, self.start_or_end) {
            (Some(ts), _) => write!(f, " @ {:.3}", ts as f64 / 1000.0)?,
            (None, Some(AtSpecial::Start)) => f.write_str(" @ start()")?,
            (None, Some(AtSpecial::End)) => f.write_str(" @ end()")?,
            _ => {}
        }
        if self.anchored {
            f.write_str(" anchored")?;
        } else if self.smoothed {
            f.write_str(" smoothed")?;
        }
        write_offset_at(f, None, None, self.original_offset_ms, &self.offset_expr)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Aggregate(a) => {
                f.write_str(a.op.as_str())?;
                if a.without {
                    f.write_str(" without (")?;
                    write_labels(f, &a.grouping)?;
                    f.write_str(") ")?;
                } else if !a.grouping.is_empty() {
                    f.write_str(" by (")?;
                    write_labels(f, &a.grouping)?;
                    f.write_str(") ")?;
                }
                f.write_str("(")?;
                if let Some(p) = &a.param {
                    write!(f, "{p}, ")?;
                }
                write!(f, "{})", a.expr)
            }
            Expr::Binary(b) => {
                write!(f, "{} {}", b.lhs, b.op.as_str())?;
                if b.return_bool {
                    f.write_str(" bool")?;
                }
                if let Some(vm) = &b.matching {
                    let grouped = matches!(vm.card, Card::ManyToOne | Card::OneToMany);
                    if !vm.matching_labels.is_empty() || vm.on || grouped {
                        f.write_str(if vm.on { " on (" } else { " ignoring (" })?;
                        write_labels(f, &vm.matching_labels)?;
                        f.write_str(")")?;
                    }
                    if grouped {
                        f.write_str(if vm.card == Card::ManyToOne {
                            " group_left ("
                        } else {
                            " group_right ("
                        })?;
                        write_labels(f, &vm.include)?;
                        f.write_str(")")?;
                    }
                    match (vm.fill_lhs, vm.fill_rhs) {
                        (Some(l), Some(r)) if l == r || (l.is_nan() && r.is_nan()) => {
                            write!(f, " fill ({})", format_float_g(l))?
                        }
                        (l, r) => {
                            if let Some(l) = l {
                                write!(f, " fill_left ({})", format_float_g(l))?;
                            }
                            if let Some(r) = r {
                                write!(f, " fill_right ({})", format_float_g(r))?;
                            }
                        }
                    }
                }
                write!(f, " {}", b.rhs)
            }
            Expr::Call(c) => {
                write!(f, "{}(", c.func.name)?;
                for (i, a) in c.args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
            Expr::MatrixSelector(m) => {
                m.vs.write_base(f)?;
                f.write_str("[")?;
                match &m.range_expr {
                    Some(e) => write!(f, "{e}")?,
                    None => write_duration_ms(f, m.range_ms)?,
                }
                f.write_str("]")?;
                if m.vs.anchored {
                    f.write_str(" anchored")?;
                } else if m.vs.smoothed {
                    f.write_str(" smoothed")?;
                }
                write_offset_at(
                    f,
                    m.vs.timestamp,
                    m.vs.start_or_end,
                    m.vs.original_offset_ms,
                    &m.vs.offset_expr,
                )
            }
            Expr::Number { val, .. } => f.write_str(&format_float_f(*val)),
            Expr::Paren(e, _) => write!(f, "({e})"),
            Expr::String {
                invalid_utf8: Some(b),
                ..
            } => f.write_str(&super::lexer::go_quote_bytes(b)),
            Expr::String { val, .. } => f.write_str(&go_quote(val)),
            Expr::Subquery(s) => {
                write!(f, "{}[", s.expr)?;
                match &s.range_expr {
                    Some(e) => write!(f, "{e}")?,
                    None => write_duration_ms(f, s.range_ms)?,
                }
                f.write_str(":")?;
                if s.step_ms != 0 {
                    write_duration_ms(f, s.step_ms)?;
                } else if let Some(e) = &s.step_expr {
                    write!(f, "{e}")?;
                }
                f.write_str("]")?;
                write_offset_at(
                    f,
                    s.timestamp,
                    s.start_or_end,
                    s.original_offset_ms,
                    &s.offset_expr,
                )
            }
            Expr::Unary { neg, expr, .. } => {
                write!(f, "{}{expr}", if *neg { "-" } else { "+" })
            }
            Expr::VectorSelector(vs) => write!(f, "{vs}"),
            Expr::StepInvariant(e) => write!(f, "{e}"),
        }
    }
}

/// Prometheus's prettier (`Pretty(0)`, what `/api/v1/format_query` returns): expressions
/// longer than 100 characters are split over lines, two spaces per level.
pub fn pretty(e: &Expr) -> String {
    pretty_at(e, 0)
}

const MAX_LINE: usize = 100;

fn indent(level: usize) -> String {
    "  ".repeat(level)
}

fn pretty_at(e: &Expr, level: usize) -> String {
    let flat = e.to_string();
    let split = flat.len() > MAX_LINE;
    match e {
        Expr::Aggregate(a) if split => {
            let mut s = indent(level);
            s.push_str(a.op.as_str());
            if a.without {
                s.push_str(" without (");
                s.push_str(&labels_str(&a.grouping));
                s.push_str(") ");
            } else if !a.grouping.is_empty() {
                s.push_str(" by (");
                s.push_str(&labels_str(&a.grouping));
                s.push_str(") ");
            }
            s.push_str("(\n");
            if let Some(p) = &a.param {
                s.push_str(&pretty_at(p, level + 1));
                s.push_str(",\n");
            }
            s.push_str(&pretty_at(&a.expr, level + 1));
            s.push('\n');
            s.push_str(&indent(level));
            s.push(')');
            s
        }
        Expr::Binary(b) if split => {
            let full = e.to_string();
            // The operator with bool and matching, as printed between the operands.
            let lhs = b.lhs.to_string();
            let rhs = b.rhs.to_string();
            let mid = full
                .strip_prefix(&lhs)
                .and_then(|r| r.strip_suffix(&rhs))
                .map(str::trim)
                .unwrap_or(b.op.as_str())
                .to_string();
            format!(
                "{}\n{}{}\n{}",
                pretty_at(&b.lhs, level + 1),
                indent(level),
                mid,
                pretty_at(&b.rhs, level + 1)
            )
        }
        Expr::Call(c) if split => {
            let args: Vec<String> = c.args.iter().map(|a| pretty_at(a, level + 1)).collect();
            format!(
                "{}{}(\n{}\n{})",
                indent(level),
                c.func.name,
                args.join(",\n"),
                indent(level)
            )
        }
        Expr::Paren(inner, _) if split => {
            format!(
                "{}(\n{}\n{})",
                indent(level),
                pretty_at(inner, level + 1),
                indent(level)
            )
        }
        Expr::Subquery(sq) if split => {
            let inner = sq.expr.to_string();
            let suffix = flat.strip_prefix(&inner).unwrap_or("").to_string();
            format!("{}{}", pretty_at(&sq.expr, level), suffix)
        }
        Expr::Subquery(_) => flat,
        Expr::StepInvariant(inner) => pretty_at(inner, level),
        Expr::Unary { neg, expr, .. } => {
            let child = pretty_at(expr, level);
            format!(
                "{}{}{}",
                indent(level),
                if *neg { "-" } else { "+" },
                child.trim()
            )
        }
        _ => format!("{}{}", indent(level), flat),
    }
}

fn labels_str(labels: &[String]) -> String {
    labels
        .iter()
        .map(|l| {
            if is_valid_legacy_label_name(l) {
                l.clone()
            } else {
                go_quote(l)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Go's `%v` for a float64 (`%g` with shortest representation).
pub fn format_float_g(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let exp = v.abs().log10().floor() as i32;
    if !(-4..21).contains(&exp) {
        // Go: 1e+21, 1.5e-05
        let s = format!("{v:e}");
        if let Some((mant, e)) = s.split_once('e') {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            let digits = if digits.len() < 2 {
                format!("0{digits}")
            } else {
                digits.to_string()
            };
            return format!("{mant}e{sign}{digits}");
        }
        return s;
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prettier_splits_long_expressions() {
        let e = crate::parser::parse(
            "sum by (job) (rate(http_requests_total{job=\"api\",code=~\"5..\"}[5m])) / sum by (job) (rate(http_requests_total{job=\"api\"}[5m]))",
        )
        .expect("parses");
        assert_eq!(
            pretty(&e),
            "  sum by (job) (rate(http_requests_total{code=~\"5..\",job=\"api\"}[5m]))\n/\n  sum by (job) (rate(http_requests_total{job=\"api\"}[5m]))"
        );
        let short = crate::parser::parse("sum(rate(x[5m]))").expect("parses");
        assert_eq!(pretty(&short), "sum(rate(x[5m]))");
    }

    #[test]
    fn float_formats() {
        assert_eq!(format_float_g(1.5), "1.5");
        assert_eq!(format_float_g(1e21), "1e+21");
        assert_eq!(format_float_g(0.00001), "1e-05");
        assert_eq!(format_float_g(100.0), "100");
        assert_eq!(format_float_f(1e21), "1000000000000000000000");
    }
}
