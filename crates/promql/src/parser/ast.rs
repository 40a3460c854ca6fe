//! The PromQL syntax tree, with byte positions for annotations and errors.
//!
//! Shapes follow Prometheus's `promql/parser/ast.go`: selectors carry their offset (as written
//! and as adjusted for `@`), the `@` timestamp, `anchored`/`smoothed`; ranges, steps and offsets
//! may be duration expressions, folded to milliseconds before evaluation.

use m3query_model::Matcher;

use super::functions::Function;

/// A byte range in the query text, `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PosRange {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl PosRange {
    /// The range `[start, end)`.
    pub fn new(start: usize, end: usize) -> Self {
        PosRange { start, end }
    }

    /// `line:col` (1-based) of the start, as Prometheus's `StartPosInput` renders it.
    pub fn start_pos_input(&self, query: &str) -> String {
        if self.start > query.len() {
            return "invalid position".into();
        }
        let mut line = 1;
        let mut last_break: isize = -1;
        for (i, c) in query.as_bytes()[..self.start].iter().enumerate() {
            if *c == b'\n' {
                last_break = i as isize;
                line += 1;
            }
        }
        format!("{}:{}", line, self.start as isize - last_break)
    }
}

/// The type an expression evaluates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// No value (an invalid expression's type).
    None,
    /// A single number.
    Scalar,
    /// An instant vector: one sample per series.
    Vector,
    /// A range vector: samples over a window per series.
    Matrix,
    /// A string literal.
    String,
}

impl ValueType {
    /// Prometheus's `DocumentedType`.
    pub fn documented(self) -> &'static str {
        match self {
            ValueType::None => "none",
            ValueType::Scalar => "scalar",
            ValueType::Vector => "instant vector",
            ValueType::Matrix => "range vector",
            ValueType::String => "string",
        }
    }

    /// The name used in the JSON API (`resultType`) and in some messages.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::None => "none",
            ValueType::Scalar => "scalar",
            ValueType::Vector => "vector",
            ValueType::Matrix => "matrix",
            ValueType::String => "string",
        }
    }
}

/// Binary and unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `^`
    Pow,
    /// `atan2`
    Atan2,
    /// `==`
    Eqlc,
    /// `!=`
    Neq,
    /// `>`
    Gtr,
    /// `<`
    Lss,
    /// `>=`
    Gte,
    /// `<=`
    Lte,
    /// `</`: trims the upper side of native histograms.
    TrimUpper,
    /// `>/`: trims the lower side of native histograms.
    TrimLower,
    /// `and`: left-hand series that have a match on the right.
    And,
    /// `or`: all left-hand series, and right-hand ones without a match.
    Or,
    /// `unless`: left-hand series that have no match on the right.
    Unless,
}

impl BinOp {
    /// The operator as written in PromQL.
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Pow => "^",
            BinOp::Atan2 => "atan2",
            BinOp::Eqlc => "==",
            BinOp::Neq => "!=",
            BinOp::Gtr => ">",
            BinOp::Lss => "<",
            BinOp::Gte => ">=",
            BinOp::Lte => "<=",
            BinOp::TrimUpper => "</",
            BinOp::TrimLower => ">/",
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Unless => "unless",
        }
    }

    /// Whether it filters (or with `bool`, answers 0/1): `==`, `!=`, `>`, `<`, `>=`, `<=`.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eqlc | BinOp::Neq | BinOp::Gtr | BinOp::Lss | BinOp::Gte | BinOp::Lte
        )
    }

    /// Whether it is a set operator (`and`, `or`, `unless`), which matches series many-to-many.
    pub fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }

    /// Arithmetic operators change the metric's meaning, so results lose `__name__`.
    pub fn changes_metric_schema(self) -> bool {
        matches!(
            self,
            BinOp::Add
                | BinOp::Sub
                | BinOp::Div
                | BinOp::Mul
                | BinOp::Pow
                | BinOp::Mod
                | BinOp::Atan2
        )
    }
}

/// Aggregation operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AggOp {
    /// `sum`
    Sum,
    /// `avg`
    Avg,
    /// `count`
    Count,
    /// `min`
    Min,
    /// `max`
    Max,
    /// `group`: 1 for each group.
    Group,
    /// `stddev`
    Stddev,
    /// `stdvar`
    Stdvar,
    /// `topk(k, ...)`
    Topk,
    /// `bottomk(k, ...)`
    Bottomk,
    /// `count_values("label", ...)`
    CountValues,
    /// `quantile(φ, ...)`
    Quantile,
    /// `limitk(k, ...)` (experimental).
    Limitk,
    /// `limit_ratio(r, ...)` (experimental).
    LimitRatio,
}

impl AggOp {
    /// The operator as written in PromQL.
    pub fn as_str(self) -> &'static str {
        match self {
            AggOp::Sum => "sum",
            AggOp::Avg => "avg",
            AggOp::Count => "count",
            AggOp::Min => "min",
            AggOp::Max => "max",
            AggOp::Group => "group",
            AggOp::Stddev => "stddev",
            AggOp::Stdvar => "stdvar",
            AggOp::Topk => "topk",
            AggOp::Bottomk => "bottomk",
            AggOp::CountValues => "count_values",
            AggOp::Quantile => "quantile",
            AggOp::Limitk => "limitk",
            AggOp::LimitRatio => "limit_ratio",
        }
    }

    /// Whether it takes a parameter before the vector (`topk(5, ...)`).
    pub fn has_param(self) -> bool {
        matches!(
            self,
            AggOp::Topk
                | AggOp::Bottomk
                | AggOp::CountValues
                | AggOp::Quantile
                | AggOp::Limitk
                | AggOp::LimitRatio
        )
    }

    /// Whether it needs `enable-experimental-functions`, as in Prometheus.
    pub fn is_experimental(self) -> bool {
        matches!(self, AggOp::Limitk | AggOp::LimitRatio)
    }
}

/// `@ start()` / `@ end()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtSpecial {
    /// `@ start()`: the query's start time.
    Start,
    /// `@ end()`: the query's end time.
    End,
}

/// A duration expression (`[5m+1m]`, `offset (2*1m)`, `[step()]`), in seconds.
#[derive(Clone, Debug, PartialEq)]
pub enum DurationExpr {
    /// A number or duration literal, in seconds.
    Number {
        /// The value in seconds.
        val: f64,
        /// Written as a duration (`5m`) rather than a number (`300`), for printing.
        duration: bool,
        /// Where it is written.
        pos: PosRange,
    },
    /// `step()`: the query's step.
    Step(PosRange),
    /// `range()`: the query's range (end - start).
    Range(PosRange),
    /// `-d` or `+d`.
    Unary {
        /// True for `-`.
        neg: bool,
        /// The operand.
        expr: Box<DurationExpr>,
        /// Where the operator is written.
        pos: PosRange,
    },
    /// `a op b` with `+ - * / % ^`.
    Binary {
        /// The operator.
        op: BinOp,
        /// The left operand.
        lhs: Box<DurationExpr>,
        /// The right operand.
        rhs: Box<DurationExpr>,
    },
    /// `min(a, b)`.
    MinOf(Box<DurationExpr>, Box<DurationExpr>, PosRange),
    /// `max(a, b)`.
    MaxOf(Box<DurationExpr>, Box<DurationExpr>, PosRange),
    /// `(d)`.
    Paren(Box<DurationExpr>, PosRange),
}

impl DurationExpr {
    /// Where the expression is written.
    pub fn pos(&self) -> PosRange {
        match self {
            DurationExpr::Number { pos, .. }
            | DurationExpr::Step(pos)
            | DurationExpr::Range(pos)
            | DurationExpr::Unary { pos, .. }
            | DurationExpr::MinOf(_, _, pos)
            | DurationExpr::MaxOf(_, _, pos)
            | DurationExpr::Paren(_, pos) => *pos,
            DurationExpr::Binary { lhs, rhs, .. } => PosRange::new(lhs.pos().start, rhs.pos().end),
        }
    }

    /// A plain literal, if that is all it is.
    pub fn literal(&self) -> Option<f64> {
        match self {
            DurationExpr::Number { val, .. } => Some(*val),
            _ => None,
        }
    }

    /// Evaluates to seconds, as Prometheus's `durationVisitor`.
    pub fn eval_seconds(&self, step_s: f64, range_s: f64) -> Result<f64, String> {
        let pe = |msg: &str| {
            let p = self.pos();
            format!("{}:{}: {msg}", p.start, p.end)
        };
        Ok(match self {
            DurationExpr::Number { val, .. } => *val,
            DurationExpr::Step(_) => step_s,
            DurationExpr::Range(_) => range_s,
            DurationExpr::Unary { neg, expr, .. } => {
                let v = expr.eval_seconds(step_s, range_s)?;
                if *neg { -v } else { v }
            }
            DurationExpr::Paren(e, _) => e.eval_seconds(step_s, range_s)?,
            DurationExpr::MinOf(a, b, _) => a
                .eval_seconds(step_s, range_s)?
                .min(b.eval_seconds(step_s, range_s)?),
            DurationExpr::MaxOf(a, b, _) => a
                .eval_seconds(step_s, range_s)?
                .max(b.eval_seconds(step_s, range_s)?),
            DurationExpr::Binary { op, lhs, rhs } => {
                let l = lhs.eval_seconds(step_s, range_s)?;
                let r = rhs.eval_seconds(step_s, range_s)?;
                match op {
                    BinOp::Add => l + r,
                    BinOp::Sub => l - r,
                    BinOp::Mul => l * r,
                    BinOp::Div => {
                        if r == 0.0 {
                            return Err(pe("division by zero"));
                        }
                        l / r
                    }
                    BinOp::Mod => {
                        if r == 0.0 {
                            return Err(pe("modulo by zero"));
                        }
                        l % r
                    }
                    BinOp::Pow => l.powf(r),
                    _ => {
                        return Err(format!(
                            "unexpected duration expression operator {:?}",
                            op.as_str()
                        ));
                    }
                }
            }
        })
    }

    /// Whether it needs the query's step or range (so it is not a constant).
    pub fn has_step_or_range(&self) -> bool {
        match self {
            DurationExpr::Number { .. } => false,
            DurationExpr::Step(_) | DurationExpr::Range(_) => true,
            DurationExpr::Unary { expr, .. } | DurationExpr::Paren(expr, _) => {
                expr.has_step_or_range()
            }
            DurationExpr::Binary { lhs, rhs, .. }
            | DurationExpr::MinOf(lhs, rhs, _)
            | DurationExpr::MaxOf(lhs, rhs, _) => {
                lhs.has_step_or_range() || rhs.has_step_or_range()
            }
        }
    }
}

/// `name{matchers}` with modifiers.
#[derive(Clone, Debug)]
pub struct VectorSelector {
    /// The metric name written outside the braces, if any.
    pub name: Option<String>,
    /// All matchers, including `__name__="<name>"` for a name outside the braces (last).
    pub matchers: Vec<Matcher>,
    /// The offset as written, in ms (0 when none).
    pub original_offset_ms: i64,
    /// The offset as a duration expression, before folding into `original_offset_ms`.
    pub offset_expr: Option<DurationExpr>,
    /// The offset used for evaluation: `original_offset_ms` adjusted for `@`.
    pub offset_ms: i64,
    /// The `@` timestamp in ms.
    pub timestamp: Option<i64>,
    /// `@ start()` / `@ end()`, resolved to `timestamp` when the query's range is known.
    pub start_or_end: Option<AtSpecial>,
    /// `anchored`: range windows are extended to their start with the last sample before it.
    pub anchored: bool,
    /// `smoothed`: values at the window edges (or steps) are interpolated between samples.
    pub smoothed: bool,
    /// For `info()`'s second argument: label matchers only, may all match empty.
    pub bypass_empty_matcher_check: bool,
    /// Where the selector is written.
    pub pos: PosRange,
    /// Index into the engine's selected series (set by planning).
    pub id: usize,
}

/// A range selector: `v[5m]`.
#[derive(Clone, Debug)]
pub struct MatrixSelector {
    /// The selector the range applies to.
    pub vs: VectorSelector,
    /// The range in ms, once folded.
    pub range_ms: i64,
    /// The range as a duration expression, before folding into `range_ms`.
    pub range_expr: Option<DurationExpr>,
    /// Byte offset just past the `]`, where the node's text ends.
    pub end_pos: usize,
}

/// A subquery: `expr[range:step]` with its own offset and `@`.
#[derive(Clone, Debug)]
pub struct SubqueryExpr {
    /// The inner expression, evaluated at each subquery step.
    pub expr: Expr,
    /// The range in ms, once folded.
    pub range_ms: i64,
    /// The range as a duration expression, before folding into `range_ms`.
    pub range_expr: Option<DurationExpr>,
    /// 0: the engine's default subquery step.
    pub step_ms: i64,
    /// The step as a duration expression, before folding into `step_ms`.
    pub step_expr: Option<DurationExpr>,
    /// The offset as written, in ms (0 when none).
    pub original_offset_ms: i64,
    /// The offset as a duration expression, before folding.
    pub offset_expr: Option<DurationExpr>,
    /// The offset used for evaluation: `original_offset_ms` adjusted for `@`.
    pub offset_ms: i64,
    /// The `@` timestamp in ms.
    pub timestamp: Option<i64>,
    /// `@ start()` / `@ end()`, resolved to `timestamp` when the query's range is known.
    pub start_or_end: Option<AtSpecial>,
    /// Byte offset just past the subquery's last token, where the node's text ends.
    pub end_pos: usize,
}

/// A function call: `rate(x[5m])`.
#[derive(Clone, Debug)]
pub struct Call {
    /// The function, from [`FUNCTIONS`](super::FUNCTIONS).
    pub func: &'static Function,
    /// The arguments, type-checked against the function's signature.
    pub args: Vec<Expr>,
    /// Where the call is written, name to closing parenthesis.
    pub pos: PosRange,
}

/// An aggregation: `sum by (job) (x)`, `topk(5, x)`.
#[derive(Clone, Debug)]
pub struct AggregateExpr {
    /// The aggregation operator.
    pub op: AggOp,
    /// The vector aggregated.
    pub expr: Expr,
    /// The parameter of `topk`, `quantile`, `count_values`, ... .
    pub param: Option<Expr>,
    /// The labels of `by (...)` or `without (...)`.
    pub grouping: Vec<String>,
    /// True for `without`, false for `by` (or no grouping).
    pub without: bool,
    /// Where the aggregation is written.
    pub pos: PosRange,
}

/// Vector matching cardinality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Card {
    /// Each side's series match at most one on the other side.
    OneToOne,
    /// `group_left`: many left-hand series to one right-hand.
    ManyToOne,
    /// `group_right`: one left-hand series to many right-hand.
    OneToMany,
    /// Set operators: any number on each side.
    ManyToMany,
}

/// How a binary operator between vectors pairs series: `on`/`ignoring`, `group_*`, `fill`.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorMatching {
    /// The matching cardinality.
    pub card: Card,
    /// The labels of `on (...)` or `ignoring (...)`.
    pub matching_labels: Vec<String>,
    /// `on` (true) or `ignoring` (false).
    pub on: bool,
    /// `group_left`/`group_right` extra labels.
    pub include: Vec<String>,
    /// `fill`/`fill_left`: the value for a missing left-hand series.
    pub fill_lhs: Option<f64>,
    /// `fill`/`fill_right`: the value for a missing right-hand series.
    pub fill_rhs: Option<f64>,
}

/// A binary operation: `a + on (job) b`.
#[derive(Clone, Debug)]
pub struct BinaryExpr {
    /// The operator.
    pub op: BinOp,
    /// The left operand.
    pub lhs: Expr,
    /// The right operand.
    pub rhs: Expr,
    /// `None` unless both sides are vectors.
    pub matching: Option<VectorMatching>,
    /// `bool` after a comparison: answer 0/1 instead of filtering.
    pub return_bool: bool,
    /// Position of the operator token (for annotations).
    pub op_pos: PosRange,
    /// `lhs.start..rhs.end` and the result type, computed once by [`BinaryExpr::new`]:
    /// operator chains are as deep as they are long, so deriving these from the operands on
    /// every call made `pos()`/`value_type()` linear and the type check quadratic.
    pos: PosRange,
    value_type: ValueType,
}

impl BinaryExpr {
    /// A node with its position and result type computed once (see the private fields).
    pub fn new(
        op: BinOp,
        lhs: Expr,
        rhs: Expr,
        matching: Option<VectorMatching>,
        return_bool: bool,
        op_pos: PosRange,
    ) -> Self {
        let pos = PosRange::new(lhs.pos().start, rhs.pos().end);
        let value_type =
            if lhs.value_type() == ValueType::Scalar && rhs.value_type() == ValueType::Scalar {
                ValueType::Scalar
            } else {
                ValueType::Vector
            };
        BinaryExpr {
            op,
            lhs,
            rhs,
            matching,
            return_bool,
            op_pos,
            pos,
            value_type,
        }
    }
}

/// Dropping iteratively: a 100,000-term `a + a + ...` is a tree 100,000 levels deep, and the
/// compiler's recursive drop glue would overflow any thread's stack on it. Other node kinds
/// only nest as deep as the parser's nesting limit allows, so only operator chains need this.
impl Drop for BinaryExpr {
    fn drop(&mut self) {
        // The boxes come out of the tree as they are: no copy, no new allocation per node.
        #[allow(clippy::vec_box)]
        fn take_binary(e: &mut Expr, stack: &mut Vec<Box<BinaryExpr>>) {
            if matches!(e, Expr::Binary(_))
                && let Expr::Binary(b) = std::mem::replace(e, Expr::placeholder())
            {
                stack.push(b);
            }
        }
        let mut stack = Vec::new();
        take_binary(&mut self.lhs, &mut stack);
        take_binary(&mut self.rhs, &mut stack);
        while let Some(mut b) = stack.pop() {
            take_binary(&mut b.lhs, &mut stack);
            take_binary(&mut b.rhs, &mut stack);
            // `b` now has no binary children: dropping it recurses no further.
        }
    }
}

/// A PromQL expression.
#[derive(Clone, Debug)]
pub enum Expr {
    /// `sum by (job) (x)` and other aggregations.
    Aggregate(Box<AggregateExpr>),
    /// `a op b`.
    Binary(Box<BinaryExpr>),
    /// A function call.
    Call(Box<Call>),
    /// A range selector, `x[5m]`.
    MatrixSelector(Box<MatrixSelector>),
    /// A number literal.
    Number {
        /// The value.
        val: f64,
        /// Where it is written.
        pos: PosRange,
    },
    /// `(expr)`, kept for printing and positions.
    Paren(Box<Expr>, PosRange),
    /// A string literal.
    String {
        /// The unquoted value.
        val: String,
        /// Where it is written, quotes included.
        pos: PosRange,
        /// The literal's bytes when they are not valid UTF-8 (`val` then holds a lossy copy);
        /// such strings are never valid label names.
        invalid_utf8: Option<Box<[u8]>>,
    },
    /// `expr[range:step]`.
    Subquery(Box<SubqueryExpr>),
    /// `-expr` or `+expr`.
    Unary {
        /// True for `-`.
        neg: bool,
        /// The operand.
        expr: Box<Expr>,
        /// Byte offset of the operator.
        start: usize,
    },
    /// An instant selector, `x{job="a"}`.
    VectorSelector(Box<VectorSelector>),
    /// A subtree whose value does not change across steps (because of `@`), evaluated once.
    StepInvariant(Box<Expr>),
}

impl Expr {
    /// The static type of the expression.
    pub fn value_type(&self) -> ValueType {
        match self {
            Expr::Aggregate(_) | Expr::VectorSelector(_) => ValueType::Vector,
            Expr::Binary(b) => b.value_type,
            Expr::Call(c) => c.func.return_type,
            Expr::MatrixSelector(_) | Expr::Subquery(_) => ValueType::Matrix,
            Expr::Number { .. } => ValueType::Scalar,
            Expr::String { .. } => ValueType::String,
            Expr::Paren(e, _) | Expr::StepInvariant(e) => e.value_type(),
            Expr::Unary { expr, .. } => expr.value_type(),
        }
    }

    /// The position range, as Prometheus's `PositionRange()`.
    pub fn pos(&self) -> PosRange {
        match self {
            Expr::Aggregate(a) => a.pos,
            Expr::Binary(b) => b.pos,
            Expr::Call(c) => c.pos,
            Expr::MatrixSelector(m) => PosRange::new(m.vs.pos.start, m.end_pos),
            Expr::Number { pos, .. } | Expr::String { pos, .. } | Expr::Paren(_, pos) => *pos,
            Expr::Subquery(s) => PosRange::new(s.expr.pos().start, s.end_pos),
            Expr::Unary { expr, start, .. } => PosRange::new(*start, expr.pos().end),
            Expr::VectorSelector(v) => v.pos,
            Expr::StepInvariant(e) => e.pos(),
        }
    }

    /// A leaf that owns nothing, put in place of a subtree moved out.
    pub(crate) fn placeholder() -> Expr {
        Expr::Number {
            val: 0.0,
            pos: PosRange::default(),
        }
    }

    /// The direct subexpressions, in evaluation order.
    pub fn children(&self) -> impl Iterator<Item = &Expr> {
        let (a, b, rest): (Option<&Expr>, Option<&Expr>, &[Expr]) = match self {
            Expr::Aggregate(a) => (a.param.as_ref(), Some(&a.expr), &[]),
            Expr::Binary(b) => (Some(&b.lhs), Some(&b.rhs), &[]),
            Expr::Call(c) => (None, None, &c.args),
            Expr::Subquery(s) => (Some(&s.expr), None, &[]),
            Expr::Paren(e, _) | Expr::StepInvariant(e) | Expr::Unary { expr: e, .. } => {
                (Some(&**e), None, &[])
            }
            Expr::MatrixSelector(_)
            | Expr::VectorSelector(_)
            | Expr::Number { .. }
            | Expr::String { .. } => (None, None, &[]),
        };
        a.into_iter().chain(b).chain(rest.iter())
    }

    /// The tree's depth (a leaf is 1), computed without recursion.
    pub fn depth(&self) -> usize {
        let mut max = 0;
        let mut stack = vec![(self, 1usize)];
        while let Some((e, d)) = stack.pop() {
            max = max.max(d);
            stack.extend(e.children().map(|c| (c, d + 1)));
        }
        max
    }

    /// Strips parentheses (and step-invariant wrappers).
    pub fn unwrap_parens(&self) -> &Expr {
        match self {
            Expr::Paren(e, _) | Expr::StepInvariant(e) => e.unwrap_parens(),
            e => e,
        }
    }
}
