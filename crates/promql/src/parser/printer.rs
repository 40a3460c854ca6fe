//! Printing expressions back to PromQL, as Prometheus's `printer.go` (`String()`).

use std::fmt::{self, Write};

use m3query_model::time::format_duration;
use m3query_model::{METRIC_NAME, MatchOp, is_valid_legacy_metric_name};

use super::ast::*;

fn write_labels(f: &mut impl Write, labels: &[String]) -> fmt::Result {
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

fn write_duration_ms(f: &mut impl Write, ms: i64) -> fmt::Result {
    f.write_str(&format_duration(ms))
}

fn write_offset_at(
    f: &mut impl Write,
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
    fn write_base(&self, f: &mut impl Write) -> fmt::Result {
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
        write_expr(&mut Plain(f), self)
    }
}

/// Where [`write_expr`] writes: text, and (for the prettier) where each node starts and ends.
trait Sink: Write {
    fn enter(&mut self, _e: &Expr) {}
    fn leave(&mut self, _e: &Expr) {}
}

/// A formatter, marking nothing.
struct Plain<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl Write for Plain<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write_str(s)
    }
}

impl Sink for Plain<'_, '_> {}

/// Prometheus's `String()` of `e`. Linear in the output: every node is written once.
fn write_expr(f: &mut impl Sink, e: &Expr) -> fmt::Result {
    f.enter(e);
    write_node(f, e)?;
    f.leave(e);
    Ok(())
}

fn write_node(f: &mut impl Sink, e: &Expr) -> fmt::Result {
    match e {
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
                write_expr(f, p)?;
                f.write_str(", ")?;
            }
            write_expr(f, &a.expr)?;
            f.write_str(")")
        }
        Expr::Binary(b) => {
            write_expr(f, &b.lhs)?;
            write!(f, " {}", b.op.as_str())?;
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
            f.write_str(" ")?;
            write_expr(f, &b.rhs)
        }
        Expr::Call(c) => {
            write!(f, "{}(", c.func.name)?;
            for (i, a) in c.args.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write_expr(f, a)?;
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
        Expr::Paren(inner, _) => {
            f.write_str("(")?;
            write_expr(f, inner)?;
            f.write_str(")")
        }
        Expr::String {
            invalid_utf8: Some(b),
            ..
        } => f.write_str(&super::lexer::go_quote_bytes(b)),
        Expr::String { val, .. } => f.write_str(&go_quote(val)),
        Expr::Subquery(s) => {
            write_expr(f, &s.expr)?;
            f.write_str("[")?;
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
            f.write_str(if *neg { "-" } else { "+" })?;
            write_expr(f, expr)
        }
        Expr::VectorSelector(vs) => write!(f, "{vs}"),
        Expr::StepInvariant(inner) => write_expr(f, inner),
    }
}

/// The flat rendering of a whole tree, with each node's byte range in it, so the prettier
/// decides every split and copies every unsplit subtree from one rendering (Prometheus
/// re-renders each subtree at each level, quadratic in a chain's length).
struct Spans {
    text: String,
    spans: foldhash::HashMap<*const Expr, (usize, usize)>,
    open: Vec<usize>,
}

impl Write for Spans {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.text.push_str(s);
        Ok(())
    }
}

impl Sink for Spans {
    fn enter(&mut self, _e: &Expr) {
        self.open.push(self.text.len());
    }
    fn leave(&mut self, e: &Expr) {
        let start = self.open.pop().unwrap_or(0);
        self.spans
            .insert(e as *const Expr, (start, self.text.len()));
    }
}

impl Spans {
    fn of(e: &Expr) -> Spans {
        let mut s = Spans {
            text: String::new(),
            spans: foldhash::HashMap::default(),
            open: Vec::new(),
        };
        // Writing to a String cannot fail.
        let _ = write_expr(&mut s, e);
        s
    }

    fn span(&self, e: &Expr) -> (usize, usize) {
        self.spans
            .get(&(e as *const Expr))
            .copied()
            .unwrap_or((0, 0))
    }

    fn flat(&self, e: &Expr) -> &str {
        let (a, b) = self.span(e);
        self.text.get(a..b).unwrap_or("")
    }
}

/// Prometheus's prettier (`Pretty(0)`, what `/api/v1/format_query` returns): expressions
/// longer than 100 characters are split over lines, two spaces per level.
///
/// Like `to_string()`, it recurses once per tree level on the caller's stack: for trees
/// from untrusted input, call it on a [`crate::deep`] stack (as `format_query` does).
pub fn pretty(e: &Expr) -> String {
    let mut p = Pretty::new(e, None);
    // Without a context and a size limit nothing stops it.
    let _ = p.node(e, 0);
    p.out
}

/// [`pretty`] that stops when `ctx` is canceled or past its deadline, or when the output
/// would pass [`MAX_PRETTY_BYTES`].
pub fn pretty_ctx(e: &Expr, ctx: &m3query_storage::Context) -> crate::Result<String> {
    let mut p = Pretty::new(e, Some(ctx));
    p.node(e, 0)?;
    Ok(p.out)
}

const MAX_LINE: usize = 100;

/// The most `format_query` answers. Prometheus's layout indents each level of an operator
/// chain two more spaces, so an n-term chain prints in O(n^2) bytes (5,000 terms: ~50 MB);
/// past this the answer is an error rather than hundreds of megabytes.
pub const MAX_PRETTY_BYTES: usize = 64 << 20;

/// How often (in nodes) the prettier looks at the context and the output size.
const PRETTY_CHECK_EVERY: usize = 1024;

struct Pretty<'a> {
    flat: Spans,
    out: String,
    /// Skip the leading whitespace of what comes next (Prometheus trims a unary operand).
    trim_next: bool,
    ctx: Option<&'a m3query_storage::Context>,
    nodes: usize,
}

impl<'a> Pretty<'a> {
    fn new(e: &Expr, ctx: Option<&'a m3query_storage::Context>) -> Self {
        Pretty {
            flat: Spans::of(e),
            out: String::new(),
            trim_next: false,
            ctx,
            nodes: 0,
        }
    }

    fn text(&mut self, s: &str) {
        if self.trim_next {
            let t = s.trim_start();
            if t.is_empty() {
                return;
            }
            self.trim_next = false;
            self.out.push_str(t);
        } else {
            self.out.push_str(s);
        }
    }

    fn indent(&mut self, level: usize) {
        if !self.trim_next {
            self.out.extend(std::iter::repeat_n(' ', 2 * level));
        }
    }

    fn flat_of(&mut self, e: &Expr) {
        let (a, b) = self.flat.span(e);
        let flat = std::mem::take(&mut self.flat.text);
        self.text(flat.get(a..b).unwrap_or(""));
        self.flat.text = flat;
    }

    fn check(&mut self) -> crate::Result<()> {
        self.nodes += 1;
        if !self.nodes.is_multiple_of(PRETTY_CHECK_EVERY) {
            return Ok(());
        }
        if self.out.len() > MAX_PRETTY_BYTES {
            return Err(crate::Error::TooLarge(format!(
                "the formatted expression is larger than {} MiB",
                MAX_PRETTY_BYTES >> 20
            )));
        }
        if let Some(ctx) = self.ctx {
            crate::check_ctx(ctx, "query formatting")?;
        }
        Ok(())
    }

    /// Prometheus's `Pretty(level)` of `e`, appended to `out`.
    fn node(&mut self, e: &Expr, level: usize) -> crate::Result<()> {
        self.check()?;
        let split = self.flat.flat(e).len() > MAX_LINE;
        match e {
            Expr::Aggregate(a) if split => {
                self.indent(level);
                self.text(a.op.as_str());
                if a.without {
                    self.text(" without (");
                    self.text(&labels_str(&a.grouping));
                    self.text(") ");
                } else if !a.grouping.is_empty() {
                    self.text(" by (");
                    self.text(&labels_str(&a.grouping));
                    self.text(") ");
                }
                self.text("(\n");
                if let Some(p) = &a.param {
                    self.node(p, level + 1)?;
                    self.text(",\n");
                }
                self.node(&a.expr, level + 1)?;
                self.text("\n");
                self.indent(level);
                self.text(")");
            }
            Expr::Binary(b) if split => {
                // The operator with bool and matching, as printed between the operands.
                let (_, lhs_end) = self.flat.span(&b.lhs);
                let (rhs_start, _) = self.flat.span(&b.rhs);
                let mid = self
                    .flat
                    .text
                    .get(lhs_end..rhs_start)
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .unwrap_or(b.op.as_str())
                    .to_string();
                self.node(&b.lhs, level + 1)?;
                self.text("\n");
                self.indent(level);
                self.text(&mid);
                self.text("\n");
                self.node(&b.rhs, level + 1)?;
            }
            Expr::Call(c) if split => {
                self.indent(level);
                self.text(c.func.name);
                self.text("(\n");
                for (i, a) in c.args.iter().enumerate() {
                    if i > 0 {
                        self.text(",\n");
                    }
                    self.node(a, level + 1)?;
                }
                self.text("\n");
                self.indent(level);
                self.text(")");
            }
            Expr::Paren(inner, _) if split => {
                self.indent(level);
                self.text("(\n");
                self.node(inner, level + 1)?;
                self.text("\n");
                self.indent(level);
                self.text(")");
            }
            Expr::Subquery(sq) if split => {
                // The inner expression pretty, then the brackets and modifiers as printed.
                let (_, inner_end) = self.flat.span(&sq.expr);
                let (_, end) = self.flat.span(e);
                self.node(&sq.expr, level)?;
                let flat = std::mem::take(&mut self.flat.text);
                self.text(flat.get(inner_end..end).unwrap_or(""));
                self.flat.text = flat;
            }
            Expr::Subquery(_) => self.flat_of(e),
            Expr::StepInvariant(inner) => self.node(inner, level)?,
            Expr::Unary { neg, expr, .. } => {
                self.indent(level);
                self.text(if *neg { "-" } else { "+" });
                self.trim_next = true;
                self.node(expr, level)?;
                self.trim_next = false;
            }
            _ => {
                self.indent(level);
                self.flat_of(e);
            }
        }
        Ok(())
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
