//! PromQL parsing: our own recursive-descent parser for the full Prometheus 3.x grammar.
//!
//! Why not only `promql-parser`: the engine needs byte positions on every node (annotations
//! are rendered `PromQL warning: ... (line:col)`), and Prometheus 3.x syntax that the crate
//! does not parse yet (duration expressions such as `[5m+step()]` and `offset (2*1m)`,
//! `anchored`/`smoothed`, `</` `>/`, `@` on `start()`). The parser here mirrors
//! `promql/parser/generated_parser.y` (precedences, postfix modifiers, `offset` atoms) and
//! `parse.go`'s type checks and messages. `promql-parser` remains the reference it is
//! differentially tested against (see the tests in this module) and the source of truth for
//! the function list parity test.

pub mod ast;
pub mod functions;
pub(crate) mod lexer;
mod printer;

pub use printer::{
    MAX_PRETTY_BYTES, format_float_f, format_float_g as printer_g, go_quote, pretty, pretty_ctx,
};
/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`.
pub fn format_float_f_go(v: f64) -> String {
    format_float_f(v)
}

use std::fmt;

use m3query_model::{MatchOp, Matcher};
use m3query_storage::Context;

pub use ast::*;
pub use functions::{FUNCTIONS, Function, get_function};
/// PromQL string literals as Prometheus reads them, for tools that parse PromQL-adjacent text
/// (promqltest scripts).
pub use lexer::unquote;
use lexer::{Tok, Token};

/// A parse error: the message and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Where the error is.
    pub pos: PosRange,
    /// The message, without position.
    pub msg: String,
    /// `line:col` rendered against the query (set by [`parse`]).
    pub position: String,
}

impl ParseError {
    /// An error at `pos`; `position` is rendered later against the whole query.
    pub fn new(pos: PosRange, msg: impl Into<String>) -> Self {
        ParseError {
            pos,
            msg: msg.into(),
            position: String::new(),
        }
    }
}

impl fmt::Display for ParseError {
    /// Prometheus's `ParseErr.Error()`: `1:5: parse error: <msg>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: parse error: {}", self.position, self.msg)
    }
}

impl std::error::Error for ParseError {}

/// Parser options (the Prometheus feature flags that change the grammar).
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// Accept experimental functions and aggregations (`limitk`, `sort_by_label`, ...).
    pub experimental_functions: bool,
    /// Accept duration expressions (`[5m+step()]`, `offset (2*1m)`).
    pub duration_expressions: bool,
    /// Accept `anchored` and `smoothed` on selectors.
    pub extended_range_selectors: bool,
    /// Accept `fill`, `fill_left` and `fill_right` on binary operators.
    pub binop_fill_modifiers: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            experimental_functions: true,
            duration_expressions: true,
            extended_range_selectors: true,
            binop_fill_modifiers: true,
        }
    }
}

/// Parses and type-checks a PromQL expression.
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    parse_with(input, ParseOptions::default())
}

/// [`parse`] with explicit feature options.
///
/// Parsing recurses once per nesting level and the type check once per tree level, so it
/// runs on a [`crate::deep`] stack, whatever the caller's.
pub fn parse_with(input: &str, opts: ParseOptions) -> Result<Expr, ParseError> {
    crate::deep::run(|| parse_with_on_this_stack(input, opts))
}

fn parse_with_on_this_stack(input: &str, opts: ParseOptions) -> Result<Expr, ParseError> {
    match parse_inner(input, opts, None) {
        Ok(e) => Ok(e),
        Err(Stop::Parse(e)) => Err(e),
        // Without a context nothing cancels.
        Err(Stop::Canceled(e)) => Err(ParseError::new(PosRange::default(), e.to_string())),
    }
}

/// [`parse_with`] that gives up when `ctx` is canceled or past its deadline (checked every
/// few thousand operators), for requests whose client may go away.
pub fn parse_with_ctx(input: &str, opts: ParseOptions, ctx: &Context) -> crate::Result<Expr> {
    crate::deep::run(|| match parse_inner(input, opts, Some(ctx)) {
        Ok(e) => Ok(e),
        Err(Stop::Parse(e)) => Err(crate::Error::Parse(e)),
        Err(Stop::Canceled(e)) => Err(crate::ctx_error(e, "query parsing")),
    })
}

/// Why a parse ended without a tree.
enum Stop {
    Parse(ParseError),
    Canceled(m3query_storage::Error),
}

fn parse_inner(input: &str, opts: ParseOptions, cancel: Option<&Context>) -> Result<Expr, Stop> {
    let with_pos = |mut e: ParseError| {
        e.position = e.pos.start_pos_input(input);
        Stop::Parse(e)
    };
    let tokens = lexer::lex(input).map_err(with_pos)?;
    let mut p = Parser {
        input,
        tokens,
        i: 0,
        opts,
        depth: 0,
        cancel,
        reductions: 0,
        canceled: None,
    };
    if p.peek().tok == Tok::Eof {
        return Err(with_pos(ParseError::new(
            PosRange::default(),
            "no expression found in input",
        )));
    }
    let expr = match p.parse_expr(0) {
        Ok(e) => e,
        Err(e) => {
            return Err(match p.canceled.take() {
                Some(c) => Stop::Canceled(c),
                None => with_pos(e),
            });
        }
    };
    let t = p.peek();
    if t.tok != Tok::Eof {
        return Err(with_pos(p.unexpected_tok(t, "", "")));
    }
    // Checked before anything walks the tree recursively (the type check is the first).
    let depth = expr.depth();
    if depth > MAX_TREE_DEPTH {
        return Err(with_pos(ParseError::new(
            expr.pos(),
            format!(
                "expression nested too deeply: its tree is {depth} levels deep, more than {MAX_TREE_DEPTH} (each binary operator in a chain adds one)"
            ),
        )));
    }
    check_ast(&expr, input).map_err(with_pos)?;
    Ok(expr)
}

/// How deep parentheses, calls, aggregations, subqueries, unary operators and duration
/// expressions may nest. Each level is a few recursive calls in the parser and in every walk
/// over the tree; the bound keeps them far inside the stack of the threads queries run on
/// ([`crate::deep`]), and no real query comes near it.
pub const MAX_NESTING: usize = 1_000;

/// How deep the whole tree may be, operator chains included (`a + a + ...` with n terms is n
/// levels deep): evaluation, planning and printing recurse once per level, and this bound
/// times their deepest frames stays within [`crate::deep::STACK_SIZE`] with a wide margin
/// (the `deep_expressions` tests check it on a thread of exactly that size).
pub const MAX_TREE_DEPTH: usize = 20_000;

/// How often (in tokens consumed) the parser looks at the request's cancellation.
const CANCEL_CHECK_EVERY: usize = 4096;

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<Token>,
    i: usize,
    opts: ParseOptions,
    depth: usize,
    cancel: Option<&'a Context>,
    reductions: usize,
    /// Set when the parse stopped because `cancel` said so.
    canceled: Option<m3query_storage::Error>,
}

/// A binary operator waiting for its right operand (see [`Parser::parse_expr`]).
struct PendingOp {
    op: BinOp,
    prec: u8,
    tok: Token,
    return_bool: bool,
    matching: VectorMatching,
}

type PResult<T> = Result<T, ParseError>;

impl Parser<'_> {
    fn peek(&self) -> Token {
        self.tokens[self.i.min(self.tokens.len() - 1)]
    }

    fn peek_n(&self, n: usize) -> Token {
        self.tokens[(self.i + n).min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek();
        if self.i < self.tokens.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn text(&self, t: Token) -> &str {
        &self.input[t.start..t.end]
    }

    fn last_closing(&self) -> usize {
        if self.i == 0 {
            return 0;
        }
        self.tokens[self.i - 1].end
    }

    /// Prometheus's `unexpected`: `unexpected <item> [in <context>][, expected <what>]`, the
    /// item described as its `Item.desc()` does.
    fn unexpected_tok(&self, t: Token, context: &str, expected: &str) -> ParseError {
        let text = self.text(t);
        let quoted = || {
            if text.chars().count() > 10 {
                let head: String = text.chars().take(10).collect();
                format!("{head:?}...")
            } else {
                format!("{text:?}")
            }
        };
        let desc = match t.tok {
            Tok::Eof => "end of input".to_string(),
            Tok::Identifier => format!("identifier {text:?}"),
            Tok::MetricIdentifier => format!("metric identifier {text:?}"),
            Tok::Number => format!("number {}", quoted()),
            Tok::Duration => format!("duration {}", quoted()),
            Tok::String => format!("string {}", quoted()),
            tok if tok.is_aggregator() => format!("<aggr:{}>", text.to_ascii_lowercase()),
            tok if tok.binary_precedence().is_some() => format!("<op:{text}>"),
            Tok::EqlRegex | Tok::NeqRegex | Tok::At => format!("<op:{text}>"),
            tok if tok.is_keyword_name() => format!("<{}>", text.to_ascii_lowercase()),
            _ => format!("{text:?}"),
        };
        let mut msg = format!("unexpected {desc}");
        if !context.is_empty() {
            msg.push_str(" in ");
            msg.push_str(context);
        }
        if !expected.is_empty() {
            msg.push_str(", expected ");
            msg.push_str(expected);
        }
        ParseError::new(t.pos(), msg)
    }

    fn expect(&mut self, tok: Tok, context: &str, expected: &str) -> PResult<Token> {
        let t = self.peek();
        if t.tok != tok {
            return Err(self.unexpected_tok(t, context, expected));
        }
        Ok(self.next())
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(ParseError::new(
                self.peek().pos(),
                format!(
                    "expression nested too deeply: more than {MAX_NESTING} levels of parentheses, function calls, aggregations, subqueries or unary operators"
                ),
            ));
        }
        Ok(())
    }

    /// Stops a parse whose request went away (checked every few thousand operators).
    fn check_cancel(&mut self) -> PResult<()> {
        self.reductions += 1;
        if self.reductions.is_multiple_of(CANCEL_CHECK_EVERY)
            && let Some(ctx) = self.cancel
            && let Err(e) = ctx.check()
        {
            let err = ParseError::new(self.peek().pos(), e.to_string());
            self.canceled = Some(e);
            return Err(err);
        }
        Ok(())
    }

    // ---- Expressions -------------------------------------------------------------------

    /// Operators of at least `min_prec`, by precedence climbing without recursion: operands
    /// and pending operators wait on two stacks, so `a + a + ...` (left-associative) and
    /// `a ^ a ^ ...` (right-associative) of any length cost no stack. Only real nesting
    /// (parentheses, calls, aggregations, unary operators) recurses, up to [`MAX_NESTING`].
    fn parse_expr(&mut self, min_prec: u8) -> PResult<Expr> {
        self.enter()?;
        let mut operands = vec![self.parse_unary()?];
        let mut ops: Vec<PendingOp> = Vec::new();
        loop {
            let t = self.peek();
            let Some(prec) = t.tok.binary_precedence() else {
                break;
            };
            if prec < min_prec {
                break;
            }
            // Operators already waiting that bind at least as tight (strictly tighter for the
            // right-associative `^`) take their operands now.
            while let Some(top) = ops.last() {
                if top.prec > prec || (top.prec == prec && t.tok != Tok::Pow) {
                    self.reduce(&mut operands, &mut ops)?;
                } else {
                    break;
                }
            }
            self.next();
            let (return_bool, matching) = self.parse_bin_modifiers()?;
            ops.push(PendingOp {
                op: tok_to_binop(t.tok),
                prec,
                tok: t,
                return_bool,
                matching,
            });
            operands.push(self.parse_unary()?);
        }
        while !ops.is_empty() {
            self.reduce(&mut operands, &mut ops)?;
        }
        self.depth -= 1;
        operands
            .pop()
            .ok_or_else(|| ParseError::new(self.peek().pos(), "missing operand"))
    }

    /// Applies the topmost pending operator to the two topmost operands.
    fn reduce(&mut self, operands: &mut Vec<Expr>, ops: &mut Vec<PendingOp>) -> PResult<()> {
        let (Some(o), Some(rhs), Some(lhs)) = (ops.pop(), operands.pop(), operands.pop()) else {
            return Err(ParseError::new(self.peek().pos(), "missing operand"));
        };
        if (o.matching.fill_lhs.is_some() || o.matching.fill_rhs.is_some())
            && !self.opts.binop_fill_modifiers
        {
            return Err(ParseError::new(
                PosRange::new(lhs.pos().start, rhs.pos().end),
                "binop fill modifiers are experimental and not enabled",
            ));
        }
        self.check_cancel()?;
        operands.push(Expr::Binary(Box::new(BinaryExpr::new(
            o.op,
            lhs,
            rhs,
            Some(o.matching),
            o.return_bool,
            o.tok.pos(),
        ))));
        Ok(())
    }

    fn parse_unary(&mut self) -> PResult<Expr> {
        let t = self.peek();
        if t.tok == Tok::Add || t.tok == Tok::Sub {
            self.next();
            self.enter()?;
            // Unary operators bind like `*`: tighter only `^`.
            let e = self.parse_expr(6)?;
            self.depth -= 1;
            let neg = t.tok == Tok::Sub;
            if let Expr::Number { val, pos } = e {
                return Ok(Expr::Number {
                    val: if neg { -val } else { val },
                    pos: PosRange::new(t.start, pos.end),
                });
            }
            return Ok(Expr::Unary {
                neg,
                expr: Box::new(e),
                start: t.start,
            });
        }
        let e = self.parse_primary()?;
        self.parse_postfix(e)
    }

    fn parse_primary(&mut self) -> PResult<Expr> {
        let t = self.peek();
        match t.tok {
            Tok::Number | Tok::Duration => {
                self.next();
                let val = self.literal_value(t)?;
                Ok(Expr::Number { val, pos: t.pos() })
            }
            Tok::String => {
                self.next();
                let bytes = lexer::unquote_bytes(self.text(t)).map_err(|e| {
                    ParseError::new(
                        t.pos(),
                        format!("error unquoting string {:?}: {e}", self.text(t)),
                    )
                })?;
                Ok(match String::from_utf8(bytes) {
                    Ok(val) => Expr::String {
                        val,
                        pos: t.pos(),
                        invalid_utf8: None,
                    },
                    Err(e) => Expr::String {
                        val: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        pos: t.pos(),
                        invalid_utf8: Some(e.into_bytes().into_boxed_slice()),
                    },
                })
            }
            Tok::LeftParen => {
                self.next();
                let e = self.parse_expr(0)?;
                let close = self.expect(Tok::RightParen, "paren expression", "\")\"")?;
                Ok(Expr::Paren(Box::new(e), PosRange::new(t.start, close.end)))
            }
            Tok::LeftBrace => {
                let (matchers, pos) = self.parse_label_matchers()?;
                Ok(Expr::VectorSelector(Box::new(new_selector(
                    None, matchers, pos,
                ))))
            }
            tok if tok.is_aggregator() => {
                let next = self.peek_n(1).tok;
                if matches!(next, Tok::LeftParen | Tok::By | Tok::Without) {
                    self.parse_aggregate()
                } else {
                    self.parse_metric_selector()
                }
            }
            Tok::Identifier
            | Tok::Start
            | Tok::End
            | Tok::Step
            | Tok::Range
            | Tok::MinOf
            | Tok::MaxOf
                if self.peek_n(1).tok == Tok::LeftParen =>
            {
                self.parse_call()
            }
            Tok::Identifier | Tok::MetricIdentifier => self.parse_metric_selector(),
            tok if tok.is_keyword_name() => self.parse_metric_selector(),
            _ => Err(self.unexpected_tok(t, "", "")),
        }
    }

    fn literal_value(&self, t: Token) -> PResult<f64> {
        let s = self.text(t);
        if t.tok == Tok::Duration {
            let ms = m3query_model::time::parse_duration(s)
                .map_err(|e| ParseError::new(t.pos(), e.to_string()))?;
            return Ok(ms as f64 / 1000.0);
        }
        parse_number(s).ok_or_else(|| {
            ParseError::new(
                t.pos(),
                format!("error parsing number: strconv.ParseFloat: parsing {s:?}: invalid syntax"),
            )
        })
    }

    fn parse_metric_selector(&mut self) -> PResult<Expr> {
        let t = self.next();
        let name = self.text(t).to_string();
        let mut pos = t.pos();
        let mut matchers = Vec::new();
        if self.peek().tok == Tok::LeftBrace {
            let (m, mpos) = self.parse_label_matchers()?;
            matchers = m;
            pos.end = mpos.end;
        }
        matchers.push(Matcher::equal(m3query_model::METRIC_NAME, name.clone()));
        Ok(Expr::VectorSelector(Box::new(new_selector(
            Some(name),
            matchers,
            pos,
        ))))
    }

    fn parse_label_matchers(&mut self) -> PResult<(Vec<Matcher>, PosRange)> {
        let open = self.expect(Tok::LeftBrace, "", "")?;
        let mut out = Vec::new();
        loop {
            let t = self.peek();
            match t.tok {
                Tok::RightBrace => {
                    self.next();
                    return Ok((out, PosRange::new(open.start, t.end)));
                }
                Tok::Identifier | Tok::String => {
                    self.next();
                    let name = if t.tok == Tok::String {
                        lexer::unquote(self.text(t)).map_err(|e| {
                            ParseError::new(
                                t.pos(),
                                format!("error unquoting string {:?}: {e}", self.text(t)),
                            )
                        })?
                    } else {
                        self.text(t).to_string()
                    };
                    let op_t = self.peek();
                    let op = match op_t.tok {
                        Tok::Eql => Some(MatchOp::Equal),
                        Tok::Neq => Some(MatchOp::NotEqual),
                        Tok::EqlRegex => Some(MatchOp::RegexMatch),
                        Tok::NeqRegex => Some(MatchOp::RegexNoMatch),
                        _ => None,
                    };
                    match op {
                        None if t.tok == Tok::String => {
                            // A quoted metric name inside the braces.
                            out.push(Matcher::equal(m3query_model::METRIC_NAME, name));
                        }
                        None => {
                            return Err(self.unexpected_tok(
                                op_t,
                                "label matching",
                                "label matching operator",
                            ));
                        }
                        Some(op) => {
                            self.next();
                            let v = self.peek();
                            if v.tok != Tok::String {
                                return Err(self.unexpected_tok(v, "label matching", "string"));
                            }
                            self.next();
                            let value = lexer::unquote(self.text(v)).map_err(|e| {
                                ParseError::new(
                                    v.pos(),
                                    format!("error unquoting string {:?}: {e}", self.text(v)),
                                )
                            })?;
                            let m = Matcher::new(op, name, value).map_err(|e| {
                                ParseError::new(PosRange::new(t.start, v.end), e.to_string())
                            })?;
                            out.push(m);
                        }
                    }
                    let sep = self.peek();
                    match sep.tok {
                        Tok::Comma => {
                            self.next();
                        }
                        Tok::RightBrace => {}
                        _ => {
                            return Err(self.unexpected_tok(
                                sep,
                                "label matching",
                                "\",\" or \"}\"",
                            ));
                        }
                    }
                }
                _ => return Err(self.unexpected_tok(t, "label matching", "identifier or \"}\"")),
            }
        }
    }

    fn parse_grouping_labels(&mut self) -> PResult<Vec<String>> {
        let t = self.peek();
        if t.tok != Tok::LeftParen {
            return Err(self.unexpected_tok(t, "grouping opts", "\"(\""));
        }
        self.next();
        let mut out = Vec::new();
        loop {
            let t = self.peek();
            match t.tok {
                Tok::RightParen => {
                    self.next();
                    return Ok(out);
                }
                Tok::Identifier | Tok::MetricIdentifier => {
                    self.next();
                    let name = self.text(t).to_string();
                    if name.contains(':') {
                        return Err(ParseError::new(
                            t.pos(),
                            format!("invalid label name for grouping: {name:?}"),
                        ));
                    }
                    out.push(name);
                }
                Tok::String => {
                    self.next();
                    let name = lexer::unquote(self.text(t)).map_err(|e| {
                        ParseError::new(
                            t.pos(),
                            format!("error unquoting string {:?}: {e}", self.text(t)),
                        )
                    })?;
                    if name.is_empty() {
                        return Err(ParseError::new(
                            t.pos(),
                            format!("invalid label name for grouping: {name:?}"),
                        ));
                    }
                    out.push(name);
                }
                tok if tok.is_keyword_name() => {
                    self.next();
                    out.push(self.text(t).to_string());
                }
                Tok::Number => {
                    // `inf`/`nan` lex as numbers but are fine label names.
                    let s = self.text(t).to_string();
                    if s.bytes().all(|c| c.is_ascii_alphabetic()) {
                        self.next();
                        out.push(s);
                    } else {
                        return Err(self.unexpected_tok(t, "grouping opts", "label"));
                    }
                }
                _ => return Err(self.unexpected_tok(t, "grouping opts", "label")),
            }
            let sep = self.peek();
            match sep.tok {
                Tok::Comma => {
                    self.next();
                }
                Tok::RightParen => {}
                _ => return Err(self.unexpected_tok(sep, "grouping opts", "\",\" or \")\"")),
            }
        }
    }

    fn parse_bin_modifiers(&mut self) -> PResult<(bool, VectorMatching)> {
        let mut m = VectorMatching {
            card: Card::OneToOne,
            matching_labels: Vec::new(),
            on: false,
            include: Vec::new(),
            fill_lhs: None,
            fill_rhs: None,
        };
        let mut return_bool = false;
        if self.peek().tok == Tok::Bool {
            self.next();
            return_bool = true;
        }
        match self.peek().tok {
            Tok::On | Tok::Ignoring => {
                let t = self.next();
                m.on = t.tok == Tok::On;
                m.matching_labels = self.parse_grouping_labels()?;
                match self.peek().tok {
                    Tok::GroupLeft | Tok::GroupRight => {
                        let g = self.next();
                        m.card = if g.tok == Tok::GroupLeft {
                            Card::ManyToOne
                        } else {
                            Card::OneToMany
                        };
                        if self.peek().tok == Tok::LeftParen {
                            m.include = self.parse_grouping_labels()?;
                        }
                    }
                    _ => {}
                }
            }
            Tok::GroupLeft | Tok::GroupRight => {
                let t = self.peek();
                return Err(self.unexpected_tok(t, "", ""));
            }
            _ => {}
        }
        // fill(), fill_left(), fill_right().
        loop {
            let t = self.peek();
            match t.tok {
                Tok::Fill => {
                    self.next();
                    let v = self.parse_fill_value()?;
                    m.fill_lhs = Some(v);
                    m.fill_rhs = Some(v);
                    break;
                }
                Tok::FillLeft if m.fill_lhs.is_none() => {
                    self.next();
                    m.fill_lhs = Some(self.parse_fill_value()?);
                }
                Tok::FillRight if m.fill_rhs.is_none() => {
                    self.next();
                    m.fill_rhs = Some(self.parse_fill_value()?);
                }
                _ => break,
            }
        }
        Ok((return_bool, m))
    }

    fn parse_fill_value(&mut self) -> PResult<f64> {
        self.expect(Tok::LeftParen, "fill modifier", "\"(\"")?;
        let mut neg = false;
        match self.peek().tok {
            Tok::Sub => {
                self.next();
                neg = true;
            }
            Tok::Add => {
                self.next();
            }
            _ => {}
        }
        let t = self.peek();
        if t.tok != Tok::Number && t.tok != Tok::Duration {
            return Err(self.unexpected_tok(t, "fill modifier", "number"));
        }
        self.next();
        let v = self.literal_value(t)?;
        self.expect(Tok::RightParen, "fill modifier", "\")\"")?;
        Ok(if neg { -v } else { v })
    }

    fn parse_call_args(&mut self) -> PResult<Vec<Expr>> {
        self.expect(Tok::LeftParen, "", "")?;
        let mut args = Vec::new();
        if self.peek().tok == Tok::RightParen {
            self.next();
            return Ok(args);
        }
        loop {
            args.push(self.parse_expr(0)?);
            let t = self.peek();
            match t.tok {
                Tok::Comma => {
                    self.next();
                    if self.peek().tok == Tok::RightParen {
                        return Err(ParseError::new(
                            t.pos(),
                            "trailing commas not allowed in function call args",
                        ));
                    }
                }
                Tok::RightParen => {
                    self.next();
                    return Ok(args);
                }
                _ => return Err(self.unexpected_tok(t, "function call", "\",\" or \")\"")),
            }
        }
    }

    fn parse_call(&mut self) -> PResult<Expr> {
        let t = self.next();
        let raw = self.text(t);
        let name = if t.tok == Tok::Identifier {
            raw.to_string()
        } else {
            raw.to_ascii_lowercase()
        };
        let func = get_function(&name).ok_or_else(|| {
            ParseError::new(t.pos(), format!("unknown function with name {raw:?}"))
        })?;
        if func.experimental && !self.opts.experimental_functions {
            return Err(ParseError::new(
                t.pos(),
                format!("function {raw:?} is not enabled"),
            ));
        }
        let args = self.parse_call_args()?;
        Ok(Expr::Call(Box::new(Call {
            func,
            args,
            pos: PosRange::new(t.start, self.last_closing()),
        })))
    }

    fn parse_aggregate(&mut self) -> PResult<Expr> {
        let t = self.next();
        let op = tok_to_aggop(t.tok);
        let mut grouping = Vec::new();
        let mut without = false;
        let mut has_modifier = false;
        if matches!(self.peek().tok, Tok::By | Tok::Without) {
            without = self.next().tok == Tok::Without;
            grouping = self.parse_grouping_labels()?;
            has_modifier = true;
        }
        if self.peek().tok != Tok::LeftParen {
            let n = self.peek();
            return Err(self.unexpected_tok(n, "aggregation", ""));
        }
        let mut args = self.parse_call_args()?;
        let mut end = self.last_closing();
        if !has_modifier && matches!(self.peek().tok, Tok::By | Tok::Without) {
            without = self.next().tok == Tok::Without;
            grouping = self.parse_grouping_labels()?;
            end = self.last_closing();
        }
        let pos = PosRange::new(t.start, end);
        if args.is_empty() {
            return Err(ParseError::new(
                pos,
                "no arguments for aggregate expression provided",
            ));
        }
        let desired = if op.has_param() { 2 } else { 1 };
        if op.is_experimental() && !self.opts.experimental_functions {
            return Err(ParseError::new(
                pos,
                format!(
                    "{}() is experimental and must be enabled with --enable-feature=promql-experimental-functions",
                    op.as_str()
                ),
            ));
        }
        if args.len() != desired {
            return Err(ParseError::new(
                pos,
                format!(
                    "wrong number of arguments for aggregate expression provided, expected {desired}, got {}",
                    args.len()
                ),
            ));
        }
        let expr = args
            .pop()
            .ok_or_else(|| ParseError::new(pos, "no arguments"))?;
        let param = args.pop();
        Ok(Expr::Aggregate(Box::new(AggregateExpr {
            op,
            expr,
            param,
            grouping,
            without,
            pos,
        })))
    }

    // ---- Postfix modifiers ---------------------------------------------------------------

    fn parse_postfix(&mut self, mut e: Expr) -> PResult<Expr> {
        loop {
            let t = self.peek();
            match t.tok {
                Tok::LeftBracket => e = self.parse_range_or_subquery(e)?,
                Tok::Offset => {
                    self.next();
                    let (ms, expr) = self.parse_offset_duration()?;
                    e = self.set_offset(e, ms, expr)?;
                }
                Tok::At => {
                    self.next();
                    e = self.parse_at(e)?;
                }
                Tok::Anchored | Tok::Smoothed => {
                    self.next();
                    if !self.opts.extended_range_selectors {
                        return Err(ParseError::new(
                            e.pos(),
                            format!(
                                "{} modifier is experimental and not enabled",
                                self.text(t).to_ascii_lowercase()
                            ),
                        ));
                    }
                    e = self.set_anchored_smoothed(e, t.tok == Tok::Anchored)?;
                }
                _ => return Ok(e),
            }
        }
    }

    fn parse_range_or_subquery(&mut self, e: Expr) -> PResult<Expr> {
        let open = self.next();
        let t = self.peek();
        if t.tok == Tok::RightBracket || t.tok == Tok::Colon {
            return Err(self.unexpected_tok(
                t,
                "subquery or range selector",
                "number, duration, step(), or range()",
            ));
        }
        let range = self.parse_duration_expr(0)?;
        check_positive_literal(&range)?;
        let t = self.peek();
        match t.tok {
            Tok::RightBracket => {
                self.next();
                let end_pos = t.end;
                let Expr::VectorSelector(vs) = e else {
                    return Err(ParseError::new(
                        PosRange::new(open.start, t.end),
                        "ranges only allowed for vector selectors",
                    ));
                };
                if vs.original_offset_ms != 0 || vs.offset_expr.is_some() {
                    return Err(ParseError::new(
                        PosRange::new(open.start, t.end),
                        "no offset modifiers allowed before range",
                    ));
                }
                if vs.timestamp.is_some() || vs.start_or_end.is_some() {
                    return Err(ParseError::new(
                        PosRange::new(open.start, t.end),
                        "no @ modifiers allowed before range",
                    ));
                }
                let (range_ms, range_expr) = literal_or_expr(range);
                Ok(Expr::MatrixSelector(Box::new(MatrixSelector {
                    vs: *vs,
                    range_ms,
                    range_expr,
                    end_pos,
                })))
            }
            Tok::Colon => {
                self.next();
                let mut step = None;
                if self.peek().tok != Tok::RightBracket {
                    if !matches!(
                        self.peek().tok,
                        Tok::Number
                            | Tok::Duration
                            | Tok::Step
                            | Tok::Range
                            | Tok::MinOf
                            | Tok::MaxOf
                            | Tok::LeftParen
                            | Tok::Add
                            | Tok::Sub
                    ) {
                        let n = self.peek();
                        return Err(self.unexpected_tok(
                            n,
                            "subquery selector",
                            "number, duration, step(), range(), or \"]\"",
                        ));
                    }
                    let s = self.parse_duration_expr(0)?;
                    check_positive_literal(&s)?;
                    step = Some(s);
                }
                let close = self.expect(Tok::RightBracket, "subquery selector", "\"]\"")?;
                let (range_ms, range_expr) = literal_or_expr(range);
                let (step_ms, step_expr) = match step {
                    Some(s) => literal_or_expr(s),
                    None => (0, None),
                };
                Ok(Expr::Subquery(Box::new(SubqueryExpr {
                    expr: e,
                    range_ms,
                    range_expr,
                    step_ms,
                    step_expr,
                    original_offset_ms: 0,
                    offset_expr: None,
                    offset_ms: 0,
                    timestamp: None,
                    start_or_end: None,
                    end_pos: close.end,
                })))
            }
            _ => Err(self.unexpected_tok(t, "subquery or range", "\":\" or \"]\"")),
        }
    }

    /// A duration expression with operators (inside brackets).
    fn parse_duration_expr(&mut self, min_prec: u8) -> PResult<DurationExpr> {
        self.enter()?;
        // Every operator here deepens the (recursively walked) duration tree by one, so each
        // counts as a nesting level; duration expressions are short in any real query.
        let depth_before = self.depth;
        let mut lhs = self.parse_duration_unary()?;
        loop {
            let t = self.peek();
            let prec = match t.tok {
                Tok::Add | Tok::Sub => 4,
                Tok::Mul | Tok::Div | Tok::Mod => 5,
                Tok::Pow => 6,
                _ => break,
            };
            if prec < min_prec {
                break;
            }
            self.next();
            self.check_duration_expr_enabled(t.pos())?;
            self.enter()?;
            let next_min = if t.tok == Tok::Pow { prec } else { prec + 1 };
            let rhs = self.parse_duration_expr(next_min)?;
            let op = tok_to_binop(t.tok);
            if let (BinOp::Div | BinOp::Mod, Some(0.0)) = (op, rhs.literal()) {
                return Err(ParseError::new(
                    t.pos(),
                    if op == BinOp::Div {
                        "division by zero"
                    } else {
                        "modulo by zero"
                    },
                ));
            }
            lhs = DurationExpr::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            };
        }
        self.depth = depth_before - 1;
        Ok(lhs)
    }

    fn check_duration_expr_enabled(&self, pos: PosRange) -> PResult<()> {
        if !self.opts.duration_expressions {
            return Err(ParseError::new(
                pos,
                "experimental duration expression is not enabled",
            ));
        }
        Ok(())
    }

    fn parse_duration_unary(&mut self) -> PResult<DurationExpr> {
        let t = self.peek();
        if t.tok == Tok::Add || t.tok == Tok::Sub {
            self.next();
            self.enter()?;
            let e = self.parse_duration_expr(6)?;
            self.depth -= 1;
            let neg = t.tok == Tok::Sub;
            if let DurationExpr::Number { val, duration, pos } = e {
                let v = if neg { -val } else { val };
                check_duration_range(v, t.pos())?;
                return Ok(DurationExpr::Number {
                    val: v,
                    duration,
                    pos: PosRange::new(t.start, pos.end),
                });
            }
            let end = e.pos().end;
            return Ok(DurationExpr::Unary {
                neg,
                expr: Box::new(e),
                pos: PosRange::new(t.start, end),
            });
        }
        self.parse_duration_atom()
    }

    fn parse_duration_atom(&mut self) -> PResult<DurationExpr> {
        let t = self.peek();
        match t.tok {
            Tok::Number | Tok::Duration => {
                self.next();
                let val = self.literal_value(t)?;
                check_duration_range(val, t.pos())?;
                Ok(DurationExpr::Number {
                    val,
                    duration: t.tok == Tok::Duration,
                    pos: t.pos(),
                })
            }
            Tok::Step | Tok::Range => {
                self.next();
                self.expect(Tok::LeftParen, "duration expression", "\"(\"")?;
                let close = self.expect(Tok::RightParen, "duration expression", "\")\"")?;
                self.check_duration_expr_enabled(t.pos())?;
                let pos = PosRange::new(t.start, close.end);
                Ok(if t.tok == Tok::Step {
                    DurationExpr::Step(pos)
                } else {
                    DurationExpr::Range(pos)
                })
            }
            Tok::MinOf | Tok::MaxOf => {
                self.next();
                self.expect(Tok::LeftParen, "duration expression", "\"(\"")?;
                let a = self.parse_duration_expr(0)?;
                self.expect(Tok::Comma, "duration expression", "\",\"")?;
                let b = self.parse_duration_expr(0)?;
                let close = self.expect(Tok::RightParen, "duration expression", "\")\"")?;
                self.check_duration_expr_enabled(t.pos())?;
                let pos = PosRange::new(t.start, close.end);
                Ok(if t.tok == Tok::MinOf {
                    DurationExpr::MinOf(Box::new(a), Box::new(b), pos)
                } else {
                    DurationExpr::MaxOf(Box::new(a), Box::new(b), pos)
                })
            }
            Tok::LeftParen => {
                self.next();
                let e = self.parse_duration_expr(0)?;
                let close = self.expect(Tok::RightParen, "duration expression", "\")\"")?;
                self.check_duration_expr_enabled(t.pos())?;
                Ok(DurationExpr::Paren(
                    Box::new(e),
                    PosRange::new(t.start, close.end),
                ))
            }
            _ => Err(self.unexpected_tok(
                t,
                "duration expression",
                "number, duration, step(), or range()",
            )),
        }
    }

    /// The offset after `offset`: one signed atom (`5m`, `-step()`, `(1m*2)`, `min_of(..)`).
    fn parse_offset_duration(&mut self) -> PResult<(i64, Option<DurationExpr>)> {
        let t = self.peek();
        let mut neg = None;
        if t.tok == Tok::Add || t.tok == Tok::Sub {
            self.next();
            neg = Some(t);
        }
        let a = self.peek();
        if !matches!(
            a.tok,
            Tok::Number
                | Tok::Duration
                | Tok::Step
                | Tok::Range
                | Tok::MinOf
                | Tok::MaxOf
                | Tok::LeftParen
        ) {
            return Err(self.unexpected_tok(a, "offset", "number, duration, step(), or range()"));
        }
        let atom = self.parse_duration_atom()?;
        let e = match (neg, atom) {
            (None, a) => a,
            (Some(s), DurationExpr::Number { val, duration, pos }) => {
                let v = if s.tok == Tok::Sub { -val } else { val };
                check_duration_range(v, s.pos())?;
                DurationExpr::Number {
                    val: v,
                    duration,
                    pos: PosRange::new(s.start, pos.end),
                }
            }
            (Some(s), a) => {
                let end = a.pos().end;
                DurationExpr::Unary {
                    neg: s.tok == Tok::Sub,
                    expr: Box::new(a),
                    pos: PosRange::new(s.start, end),
                }
            }
        };
        Ok(match e {
            DurationExpr::Number { val, .. } => (seconds_literal_to_ms(val), None),
            e => (0, Some(e)),
        })
    }

    fn set_offset(&mut self, e: Expr, ms: i64, expr: Option<DurationExpr>) -> PResult<Expr> {
        let end = self.last_closing();
        let multiple = |pos| ParseError::new(pos, "offset may not be set multiple times");
        match e {
            Expr::VectorSelector(mut vs) => {
                if vs.original_offset_ms != 0 || vs.offset_expr.is_some() {
                    return Err(multiple(vs.pos));
                }
                vs.original_offset_ms = ms;
                vs.offset_expr = expr;
                vs.pos.end = end;
                Ok(Expr::VectorSelector(vs))
            }
            Expr::MatrixSelector(mut m) => {
                if m.vs.original_offset_ms != 0 || m.vs.offset_expr.is_some() {
                    return Err(multiple(PosRange::new(m.vs.pos.start, m.end_pos)));
                }
                m.vs.original_offset_ms = ms;
                m.vs.offset_expr = expr;
                m.end_pos = end;
                Ok(Expr::MatrixSelector(m))
            }
            Expr::Subquery(mut s) => {
                if s.original_offset_ms != 0 || s.offset_expr.is_some() {
                    return Err(multiple(PosRange::new(s.expr.pos().start, s.end_pos)));
                }
                s.original_offset_ms = ms;
                s.offset_expr = expr;
                s.end_pos = end;
                Ok(Expr::Subquery(s))
            }
            e => Err(ParseError::new(
                e.pos(),
                "offset modifier must be preceded by an instant vector selector or range vector selector or a subquery",
            )),
        }
    }

    fn parse_at(&mut self, e: Expr) -> PResult<Expr> {
        let t = self.peek();
        let mut ts = None;
        let mut special = None;
        match t.tok {
            Tok::Start | Tok::End => {
                self.next();
                self.expect(Tok::LeftParen, "@", "\"(\"")?;
                self.expect(Tok::RightParen, "@", "\")\"")?;
                special = Some(if t.tok == Tok::Start {
                    AtSpecial::Start
                } else {
                    AtSpecial::End
                });
            }
            Tok::Add | Tok::Sub | Tok::Number | Tok::Duration => {
                let mut neg = false;
                if t.tok == Tok::Add || t.tok == Tok::Sub {
                    self.next();
                    neg = t.tok == Tok::Sub;
                }
                let n = self.peek();
                if n.tok != Tok::Number && n.tok != Tok::Duration {
                    return Err(self.unexpected_tok(n, "@", "timestamp"));
                }
                self.next();
                let mut v = self.literal_value(n)?;
                if neg {
                    v = -v;
                }
                if !v.is_finite() || v >= i64::MAX as f64 || v <= i64::MIN as f64 {
                    return Err(ParseError::new(
                        e.pos(),
                        format!("timestamp out of bounds for @ modifier: {v:.6}"),
                    ));
                }
                // Clamped to the API's time range so time arithmetic cannot overflow.
                ts = Some(((v * 1000.0).round() as i64).clamp(
                    m3query_model::time::MIN_TIME_MS,
                    m3query_model::time::MAX_TIME_MS,
                ));
            }
            _ => return Err(self.unexpected_tok(t, "@", "timestamp")),
        }
        let end = self.last_closing();
        let multiple = |pos| ParseError::new(pos, "@ <timestamp> may not be set multiple times");
        match e {
            Expr::VectorSelector(mut vs) => {
                if vs.timestamp.is_some() || vs.start_or_end.is_some() {
                    return Err(multiple(vs.pos));
                }
                vs.timestamp = ts;
                vs.start_or_end = special;
                vs.pos.end = end;
                Ok(Expr::VectorSelector(vs))
            }
            Expr::MatrixSelector(mut m) => {
                if m.vs.timestamp.is_some() || m.vs.start_or_end.is_some() {
                    return Err(multiple(PosRange::new(m.vs.pos.start, m.end_pos)));
                }
                m.vs.timestamp = ts;
                m.vs.start_or_end = special;
                m.end_pos = end;
                Ok(Expr::MatrixSelector(m))
            }
            Expr::Subquery(mut s) => {
                if s.timestamp.is_some() || s.start_or_end.is_some() {
                    return Err(multiple(PosRange::new(s.expr.pos().start, s.end_pos)));
                }
                s.timestamp = ts;
                s.start_or_end = special;
                s.end_pos = end;
                Ok(Expr::Subquery(s))
            }
            e => Err(ParseError::new(
                e.pos(),
                "@ modifier must be preceded by an instant vector selector or range vector selector or a subquery",
            )),
        }
    }

    fn set_anchored_smoothed(&mut self, e: Expr, anchored: bool) -> PResult<Expr> {
        let word = if anchored { "anchored" } else { "smoothed" };
        let both = |pos| {
            ParseError::new(
                pos,
                "anchored and smoothed modifiers cannot be used together",
            )
        };
        match e {
            Expr::VectorSelector(mut vs) => {
                if (anchored && vs.smoothed) || (!anchored && vs.anchored) {
                    return Err(both(vs.pos));
                }
                if anchored {
                    vs.anchored = true;
                } else {
                    vs.smoothed = true;
                }
                Ok(Expr::VectorSelector(vs))
            }
            Expr::MatrixSelector(mut m) => {
                if (anchored && m.vs.smoothed) || (!anchored && m.vs.anchored) {
                    return Err(both(PosRange::new(m.vs.pos.start, m.end_pos)));
                }
                if anchored {
                    m.vs.anchored = true;
                } else {
                    m.vs.smoothed = true;
                }
                Ok(Expr::MatrixSelector(m))
            }
            Expr::Subquery(s) => Err(ParseError::new(
                PosRange::new(s.expr.pos().start, s.end_pos),
                format!("{word} modifier is not supported for subqueries"),
            )),
            e => Err(ParseError::new(
                e.pos(),
                format!("{word} modifier not implemented"),
            )),
        }
    }
}

fn new_selector(name: Option<String>, matchers: Vec<Matcher>, pos: PosRange) -> VectorSelector {
    VectorSelector {
        name,
        matchers,
        original_offset_ms: 0,
        offset_expr: None,
        offset_ms: 0,
        timestamp: None,
        start_or_end: None,
        anchored: false,
        smoothed: false,
        bypass_empty_matcher_check: false,
        pos,
        id: usize::MAX,
    }
}

fn tok_to_binop(t: Tok) -> BinOp {
    match t {
        Tok::Add => BinOp::Add,
        Tok::Sub => BinOp::Sub,
        Tok::Mul => BinOp::Mul,
        Tok::Div => BinOp::Div,
        Tok::Mod => BinOp::Mod,
        Tok::Pow => BinOp::Pow,
        Tok::Atan2 => BinOp::Atan2,
        Tok::Eqlc => BinOp::Eqlc,
        Tok::Neq => BinOp::Neq,
        Tok::Gtr => BinOp::Gtr,
        Tok::Lss => BinOp::Lss,
        Tok::Gte => BinOp::Gte,
        Tok::Lte => BinOp::Lte,
        Tok::TrimUpper => BinOp::TrimUpper,
        Tok::TrimLower => BinOp::TrimLower,
        Tok::Land => BinOp::And,
        Tok::Lor => BinOp::Or,
        _ => BinOp::Unless,
    }
}

fn tok_to_aggop(t: Tok) -> AggOp {
    match t {
        Tok::Sum => AggOp::Sum,
        Tok::Avg => AggOp::Avg,
        Tok::Count => AggOp::Count,
        Tok::Min => AggOp::Min,
        Tok::Max => AggOp::Max,
        Tok::Group => AggOp::Group,
        Tok::Stddev => AggOp::Stddev,
        Tok::Stdvar => AggOp::Stdvar,
        Tok::Topk => AggOp::Topk,
        Tok::Bottomk => AggOp::Bottomk,
        Tok::CountValues => AggOp::CountValues,
        Tok::Quantile => AggOp::Quantile,
        Tok::Limitk => AggOp::Limitk,
        _ => AggOp::LimitRatio,
    }
}

/// Go's `ParseInt(s, 0, 64)` then `ParseFloat(s, 64)`.
pub fn parse_number(s: &str) -> Option<f64> {
    let clean: String = s.chars().filter(|c| *c != '_').collect();
    let lower = clean.to_ascii_lowercase();
    let int = if let Some(h) = lower.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = lower.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if let Some(b) = lower.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()
    } else if lower.len() > 1 && lower.starts_with('0') && lower.bytes().all(|c| c.is_ascii_digit())
    {
        i64::from_str_radix(&lower[1..], 8).ok()
    } else {
        lower.parse::<i64>().ok()
    };
    if let Some(i) = int {
        return Some(i as f64);
    }
    match lower.as_str() {
        "inf" | "+inf" | "infinity" => return Some(f64::INFINITY),
        "-inf" | "-infinity" => return Some(f64::NEG_INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    if lower.starts_with("0x") {
        return None;
    }
    lower.parse::<f64>().ok()
}

/// Seconds (as written) to milliseconds as Prometheus truncates them:
/// `time.Duration(math.Round(v*1e9))` nanoseconds, then integer ms.
pub fn seconds_literal_to_ms(v: f64) -> i64 {
    let ns = (v * 1e9).round();
    (ns / 1e6).trunc() as i64
}

fn literal_or_expr(e: DurationExpr) -> (i64, Option<DurationExpr>) {
    match e {
        DurationExpr::Number { val, .. } => (seconds_literal_to_ms(val), None),
        e => (0, Some(e)),
    }
}

fn check_duration_range(v: f64, pos: PosRange) -> PResult<()> {
    if !(-9_223_372_036.854_775..=9_223_372_036.854_775).contains(&v) {
        return Err(ParseError::new(pos, "duration out of range"));
    }
    Ok(())
}

fn check_positive_literal(e: &DurationExpr) -> PResult<()> {
    if let DurationExpr::Number { val, pos, .. } = e
        && *val <= 0.0
    {
        return Err(ParseError::new(*pos, "duration must be greater than 0"));
    }
    Ok(())
}

/// Type checks, as Prometheus's `checkAST`.
fn check_ast(e: &Expr, input: &str) -> PResult<ValueType> {
    let t = e.value_type();
    match e {
        Expr::Aggregate(a) => {
            expect_type(&a.expr, ValueType::Vector, "aggregation expression", input)?;
            match a.op {
                AggOp::Topk
                | AggOp::Bottomk
                | AggOp::Quantile
                | AggOp::Limitk
                | AggOp::LimitRatio => {
                    if let Some(p) = &a.param {
                        expect_type(p, ValueType::Scalar, "aggregation parameter", input)?;
                    }
                }
                AggOp::CountValues => {
                    if let Some(p) = &a.param {
                        expect_type(p, ValueType::String, "aggregation parameter", input)?;
                    }
                }
                _ => {}
            }
        }
        Expr::Binary(b) => {
            let lt = check_ast(&b.lhs, input)?;
            let rt = check_ast(&b.rhs, input)?;
            let op_range = b.op_pos;
            if b.return_bool && !b.op.is_comparison() {
                return Err(ParseError::new(
                    op_range,
                    "bool modifier can only be used on comparison operators",
                ));
            }
            if b.op.is_comparison()
                && !b.return_bool
                && lt == ValueType::Scalar
                && rt == ValueType::Scalar
            {
                return Err(ParseError::new(
                    op_range,
                    "comparisons between scalars must use BOOL modifier",
                ));
            }
            if let Some(m) = &b.matching
                && m.on
            {
                for l1 in &m.matching_labels {
                    if m.include.contains(l1) {
                        return Err(ParseError::new(
                            op_range,
                            format!("label {l1:?} must not occur in ON and GROUP clause at once"),
                        ));
                    }
                }
            }
            let pos = e.pos();
            if lt != ValueType::Scalar && lt != ValueType::Vector {
                return Err(ParseError::new(
                    b.lhs.pos(),
                    "binary expression must contain only scalar and instant vector types",
                ));
            }
            if rt != ValueType::Scalar && rt != ValueType::Vector {
                return Err(ParseError::new(
                    b.rhs.pos(),
                    "binary expression must contain only scalar and instant vector types",
                ));
            }
            if let Some(m) = &b.matching {
                if lt != ValueType::Vector || rt != ValueType::Vector {
                    if !m.matching_labels.is_empty() || m.on {
                        return Err(ParseError::new(
                            pos,
                            "vector matching only allowed between instant vectors",
                        ));
                    }
                    if m.fill_lhs.is_some() || m.fill_rhs.is_some() {
                        return Err(ParseError::new(
                            pos,
                            "filling in missing series only allowed between instant vectors",
                        ));
                    }
                } else if b.op.is_set() {
                    if matches!(m.card, Card::OneToMany | Card::ManyToOne) {
                        return Err(ParseError::new(
                            pos,
                            format!("no grouping allowed for {:?} operation", b.op.as_str()),
                        ));
                    }
                    if m.fill_lhs.is_some() || m.fill_rhs.is_some() {
                        return Err(ParseError::new(
                            pos,
                            "filling in missing series not allowed for set operators",
                        ));
                    }
                }
            }
            if (lt == ValueType::Scalar || rt == ValueType::Scalar) && b.op.is_set() {
                return Err(ParseError::new(
                    pos,
                    format!(
                        "set operator {:?} not allowed in binary scalar expression",
                        b.op.as_str()
                    ),
                ));
            }
        }
        Expr::Call(c) => {
            let nargs = c.func.arg_types.len();
            let got = c.args.len();
            if c.func.variadic == 0 {
                if nargs != got {
                    return Err(ParseError::new(
                        c.pos,
                        format!(
                            "expected {nargs} argument(s) in call to {:?}, got {got}",
                            c.func.name
                        ),
                    ));
                }
            } else {
                let na = nargs.saturating_sub(1);
                if na > got {
                    return Err(ParseError::new(
                        c.pos,
                        format!(
                            "expected at least {na} argument(s) in call to {:?}, got {got}",
                            c.func.name
                        ),
                    ));
                }
                let max = na as i64 + c.func.variadic as i64;
                if c.func.variadic > 0 && max < got as i64 {
                    return Err(ParseError::new(
                        c.pos,
                        format!(
                            "expected at most {max} argument(s) in call to {:?}, got {got}",
                            c.func.name
                        ),
                    ));
                }
            }
            if c.func.name == "info" && c.args.len() > 1 {
                let a1 = &c.args[1];
                if a1.value_type() != ValueType::Vector {
                    return Err(ParseError::new(
                        c.pos,
                        format!(
                            "expected type instant vector in call to function \"info\", got {}",
                            a1.value_type().documented()
                        ),
                    ));
                }
                match a1 {
                    Expr::VectorSelector(vs) if vs.name.is_some() => {
                        return Err(ParseError::new(
                            a1.pos(),
                            "expected label selectors only, got vector selector instead",
                        ));
                    }
                    Expr::VectorSelector(_) => {}
                    _ => return Err(ParseError::new(a1.pos(), "expected label selectors only")),
                }
            }
            for (i, arg) in c.args.iter().enumerate() {
                let idx = if i >= nargs {
                    if c.func.variadic == 0 {
                        break;
                    }
                    nargs - 1
                } else {
                    i
                };
                let want = c.func.arg_types[idx];
                let is_info_labels = c.func.name == "info" && i == 1;
                let at = if is_info_labels {
                    arg.value_type()
                } else {
                    check_ast(arg, input)?
                };
                if at != want {
                    return Err(ParseError::new(
                        arg.pos(),
                        format!(
                            "expected type {} in call to function {:?}, got {}",
                            want.documented(),
                            c.func.name,
                            at.documented()
                        ),
                    ));
                }
            }
        }
        Expr::Paren(inner, _) | Expr::StepInvariant(inner) => {
            check_ast(inner, input)?;
        }
        Expr::Unary { expr, .. } => {
            let t = check_ast(expr, input)?;
            if t != ValueType::Scalar && t != ValueType::Vector {
                return Err(ParseError::new(
                    e.pos(),
                    format!(
                        "unary expression only allowed on expressions of type scalar or instant vector, got {:?}",
                        t.documented()
                    ),
                ));
            }
        }
        Expr::Subquery(s) => {
            let t = check_ast(&s.expr, input)?;
            if t != ValueType::Vector {
                return Err(ParseError::new(
                    e.pos(),
                    format!(
                        "subquery is only allowed on instant vector, got {} instead",
                        t.name()
                    ),
                ));
            }
        }
        Expr::MatrixSelector(m) => check_selector(&m.vs)?,
        Expr::VectorSelector(vs) => check_selector(vs)?,
        Expr::Number { .. } | Expr::String { .. } => {}
    }
    Ok(t)
}

fn check_selector(vs: &VectorSelector) -> PResult<()> {
    if let Some(name) = &vs.name {
        let n = vs.matchers.len().saturating_sub(1);
        for m in &vs.matchers[..n] {
            if m.name == m3query_model::METRIC_NAME {
                return Err(ParseError::new(
                    vs.pos,
                    format!(
                        "metric name must not be set twice: {name:?} or {:?}",
                        m.value
                    ),
                ));
            }
        }
        return Ok(());
    }
    if !vs.bypass_empty_matcher_check && !vs.matchers.iter().any(|m| !m.matches_empty()) {
        return Err(ParseError::new(
            vs.pos,
            "vector selector must contain at least one non-empty matcher",
        ));
    }
    Ok(())
}

fn expect_type(e: &Expr, want: ValueType, context: &str, input: &str) -> PResult<()> {
    let t = check_ast(e, input)?;
    if t != want {
        return Err(ParseError::new(
            e.pos(),
            format!(
                "expected type {} in {context}, got {}",
                want.documented(),
                t.documented()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Expr {
        match parse(s) {
            Ok(e) => e,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn precedence_and_printing() {
        let cases = [
            ("1 + 2 * 3", "1 + 2 * 3"),
            ("-2 ^ 2", "-2 ^ 2"),
            ("sum by (job) (rate(x[5m]))", "sum by (job) (rate(x[5m]))"),
            ("a + on(b) group_left(c) d", "a + on (b) group_left (c) d"),
            ("foo offset 5m", "foo offset 5m"),
            ("foo[5m] @ 100", "foo[5m] @ 100.000"),
            (
                "rate(foo[1m:10s] offset -1m)",
                "rate(foo[1m:10s] offset -1m)",
            ),
            ("x{a=\"b\",c=~\"d\"}", "x{a=\"b\",c=~\"d\"}"),
            ("foo[5m+1m]", "foo[5m + 1m]"),
            ("foo offset (2*1m)", "foo offset (2 * 1m)"),
            ("increase(foo[1m] anchored)", "increase(foo[1m] anchored)"),
            ("a + fill(0) b", "a + fill (0) b"),
        ];
        for (input, want) in cases {
            assert_eq!(p(input).to_string(), want, "{input}");
        }
        // The unary minus binds looser than ^ and folds into number literals.
        match p("-2 ^ 2") {
            Expr::Unary { .. } | Expr::Number { .. } => {}
            e => panic!("{e:?}"),
        }
        match p("foo offset 100 + 2") {
            Expr::Binary(b) => assert!(matches!(b.lhs, Expr::VectorSelector(_))),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn type_errors_match_prometheus() {
        let cases = [
            (
                "rate(foo)",
                "1:6: parse error: expected type range vector in call to function \"rate\", got instant vector",
            ),
            (
                "1 > 2",
                "1:3: parse error: comparisons between scalars must use BOOL modifier",
            ),
            (
                "{}",
                "1:1: parse error: vector selector must contain at least one non-empty matcher",
            ),
            (
                "sum(1, 2)",
                "1:1: parse error: wrong number of arguments for aggregate expression provided, expected 1, got 2",
            ),
            (
                "nope(x)",
                "1:1: parse error: unknown function with name \"nope\"",
            ),
            ("", "1:1: parse error: no expression found in input"),
        ];
        for (input, want) in cases {
            let e = parse(input).expect_err(input);
            assert_eq!(e.to_string(), want, "{input}");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0x1F"), Some(31.0));
        assert_eq!(parse_number("010"), Some(8.0));
        assert_eq!(parse_number("1e3"), Some(1000.0));
        assert!(parse_number("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_number("Inf"), Some(f64::INFINITY));
        assert_eq!(seconds_literal_to_ms(1.5), 1500);
    }

    /// Differential check against promql-parser on the syntax both understand: where both
    /// accept an expression, the printed forms must agree up to whitespace and literal format.
    #[test]
    fn agrees_with_promql_parser_on_acceptance() {
        let exprs = [
            "sum by (job) (rate(http_requests_total[5m]))",
            "histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m])))",
            "a / on(instance) group_left(job) b",
            "topk(3, x) or bottomk(2, y)",
            "foo offset 5m",
            "rate(foo[5m:1m])",
            "-x ^ 2",
            "count_values(\"v\", x)",
            "label_replace(x, \"a\", \"$1\", \"b\", \"(.*)\")",
            "x @ start()",
        ];
        for s in exprs {
            assert!(parse(s).is_ok(), "ours rejects {s}");
            assert!(
                promql_parser::parser::parse(s).is_ok(),
                "promql-parser rejects {s}"
            );
        }
    }
}
