//! The PromQL lexer: turns an expression into tokens with byte positions.
//!
//! It follows Prometheus's `promql/parser/lex.go` state machine: different rules apply inside
//! `{...}` (label matchers: no keywords), inside `[...]` (duration expressions: numbers,
//! durations, `step()`, `range()`, `min_of`, `max_of`, arithmetic and one `:`) and elsewhere.
//! Error messages are Prometheus's.

use super::ParseError;
use super::ast::PosRange;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tok {
    Eof,
    Comma,
    LeftParen,
    RightParen,
    LeftBrace,
    RightBrace,
    LeftBracket,
    RightBracket,
    Colon,
    At,
    // Operators.
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Eqlc,
    Neq,
    Lss,
    Lte,
    Gtr,
    Gte,
    TrimUpper,
    TrimLower,
    Eql,
    EqlRegex,
    NeqRegex,
    Land,
    Lor,
    Lunless,
    Atan2,
    // Literals and names.
    Number,
    Duration,
    String,
    Identifier,
    MetricIdentifier,
    // Aggregators.
    Sum,
    Avg,
    Count,
    Min,
    Max,
    Group,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    CountValues,
    Quantile,
    Limitk,
    LimitRatio,
    // Keywords.
    Offset,
    Smoothed,
    Anchored,
    By,
    Without,
    On,
    Ignoring,
    GroupLeft,
    GroupRight,
    Fill,
    FillLeft,
    FillRight,
    Bool,
    Start,
    End,
    Step,
    Range,
    MaxOf,
    MinOf,
}

impl Tok {
    pub fn is_aggregator(self) -> bool {
        matches!(
            self,
            Tok::Sum
                | Tok::Avg
                | Tok::Count
                | Tok::Min
                | Tok::Max
                | Tok::Group
                | Tok::Stddev
                | Tok::Stdvar
                | Tok::Topk
                | Tok::Bottomk
                | Tok::CountValues
                | Tok::Quantile
                | Tok::Limitk
                | Tok::LimitRatio
        )
    }

    /// Keywords that may also be used as metric names or label names.
    pub fn is_keyword_name(self) -> bool {
        self.is_aggregator()
            || matches!(
                self,
                Tok::Offset
                    | Tok::Smoothed
                    | Tok::Anchored
                    | Tok::By
                    | Tok::Without
                    | Tok::On
                    | Tok::Ignoring
                    | Tok::GroupLeft
                    | Tok::GroupRight
                    | Tok::Fill
                    | Tok::FillLeft
                    | Tok::FillRight
                    | Tok::Bool
                    | Tok::Start
                    | Tok::End
                    | Tok::Step
                    | Tok::Range
                    | Tok::MaxOf
                    | Tok::MinOf
                    | Tok::Land
                    | Tok::Lor
                    | Tok::Lunless
                    | Tok::Atan2
            )
    }

    /// Binary operator precedence (higher binds tighter), as Prometheus's grammar declares.
    pub fn binary_precedence(self) -> Option<u8> {
        Some(match self {
            Tok::Lor => 1,
            Tok::Land | Tok::Lunless => 2,
            Tok::Eqlc
            | Tok::Gte
            | Tok::Gtr
            | Tok::Lss
            | Tok::Lte
            | Tok::Neq
            | Tok::TrimUpper
            | Tok::TrimLower => 3,
            Tok::Add | Tok::Sub => 4,
            Tok::Mul | Tok::Div | Tok::Mod | Tok::Atan2 => 5,
            Tok::Pow => 6,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

impl Token {
    pub fn pos(&self) -> PosRange {
        PosRange::new(self.start, self.end)
    }
}

fn keyword(word: &str) -> Option<Tok> {
    let lower = word.to_ascii_lowercase();
    Some(match lower.as_str() {
        "and" => Tok::Land,
        "or" => Tok::Lor,
        "unless" => Tok::Lunless,
        "atan2" => Tok::Atan2,
        "sum" => Tok::Sum,
        "avg" => Tok::Avg,
        "count" => Tok::Count,
        "min" => Tok::Min,
        "max" => Tok::Max,
        "group" => Tok::Group,
        "stddev" => Tok::Stddev,
        "stdvar" => Tok::Stdvar,
        "topk" => Tok::Topk,
        "bottomk" => Tok::Bottomk,
        "count_values" => Tok::CountValues,
        "quantile" => Tok::Quantile,
        "limitk" => Tok::Limitk,
        "limit_ratio" => Tok::LimitRatio,
        "offset" => Tok::Offset,
        "smoothed" => Tok::Smoothed,
        "anchored" => Tok::Anchored,
        "by" => Tok::By,
        "without" => Tok::Without,
        "on" => Tok::On,
        "ignoring" => Tok::Ignoring,
        "group_left" => Tok::GroupLeft,
        "group_right" => Tok::GroupRight,
        "fill" => Tok::Fill,
        "fill_left" => Tok::FillLeft,
        "fill_right" => Tok::FillRight,
        "bool" => Tok::Bool,
        "start" => Tok::Start,
        "end" => Tok::End,
        "step" => Tok::Step,
        "range" => Tok::Range,
        "max_of" => Tok::MaxOf,
        "min_of" => Tok::MinOf,
        "inf" | "nan" => Tok::Number,
        _ => return None,
    })
}

fn duration_keyword(word: &str) -> Option<Tok> {
    match word.to_ascii_lowercase().as_str() {
        "step" => Some(Tok::Step),
        "range" => Some(Tok::Range),
        "max_of" => Some(Tok::MaxOf),
        "min_of" => Some(Tok::MinOf),
        _ => None,
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_alpha(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphabetic()
}

fn is_alnum(c: u8) -> bool {
    is_alpha(c) || c.is_ascii_digit()
}

/// Tokenizes `input` completely.
pub fn lex(input: &str) -> Result<Vec<Token>, ParseError> {
    Lexer {
        input,
        b: input.as_bytes(),
        pos: 0,
        paren_depth: 0,
        brace_open: false,
        bracket_open: false,
        got_colon: false,
        got_duration: false,
        out: Vec::new(),
    }
    .run()
}

struct Lexer<'a> {
    input: &'a str,
    b: &'a [u8],
    pos: usize,
    paren_depth: i32,
    brace_open: bool,
    bracket_open: bool,
    got_colon: bool,
    got_duration: bool,
    out: Vec<Token>,
}

impl Lexer<'_> {
    fn err(&self, start: usize, msg: impl Into<String>) -> ParseError {
        ParseError::new(PosRange::new(start, self.pos.max(start)), msg)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn peek_at(&self, off: usize) -> Option<u8> {
        self.b.get(self.pos + off).copied()
    }

    fn emit(&mut self, tok: Tok, start: usize) {
        self.out.push(Token {
            tok,
            start,
            end: self.pos,
        });
    }

    /// The character at `pos` for error messages (Go's `%q` of a rune).
    fn char_at(&self, pos: usize) -> String {
        let c = self.input[pos..].chars().next().unwrap_or('\0');
        go_quote_rune(c)
    }

    fn run(mut self) -> Result<Vec<Token>, ParseError> {
        loop {
            if self.brace_open {
                self.lex_inside_braces()?;
                continue;
            }
            if self.bracket_open {
                self.lex_duration_expr()?;
                continue;
            }
            let start = self.pos;
            let Some(c) = self.peek() else {
                if self.paren_depth != 0 {
                    return Err(self.err(start, "unclosed left parenthesis"));
                }
                self.emit(Tok::Eof, start);
                return Ok(self.out);
            };
            if c == b'#' {
                self.skip_comment();
                continue;
            }
            if is_space(c) {
                self.pos += 1;
                continue;
            }
            self.pos += 1;
            match c {
                b',' => self.emit(Tok::Comma, start),
                b'*' => self.emit(Tok::Mul, start),
                b'/' => self.emit(Tok::Div, start),
                b'%' => self.emit(Tok::Mod, start),
                b'+' => self.emit(Tok::Add, start),
                b'-' => self.emit(Tok::Sub, start),
                b'^' => self.emit(Tok::Pow, start),
                b'=' => match self.peek() {
                    Some(b'=') => {
                        self.pos += 1;
                        self.emit(Tok::Eqlc, start);
                    }
                    Some(b'~') => {
                        return Err(self.err(start, "unexpected character after '=': '~'"));
                    }
                    _ => self.emit(Tok::Eql, start),
                },
                b'!' => {
                    if self.peek() != Some(b'=') {
                        let q = self
                            .peek()
                            .map_or("EOF".to_string(), |_| self.char_at(self.pos));
                        return Err(self.err(start, format!("unexpected character after '!': {q}")));
                    }
                    self.pos += 1;
                    self.emit(Tok::Neq, start);
                }
                b'<' => match self.peek() {
                    Some(b'=') => {
                        self.pos += 1;
                        self.emit(Tok::Lte, start);
                    }
                    Some(b'/') => {
                        self.pos += 1;
                        self.emit(Tok::TrimUpper, start);
                    }
                    _ => self.emit(Tok::Lss, start),
                },
                b'>' => match self.peek() {
                    Some(b'=') => {
                        self.pos += 1;
                        self.emit(Tok::Gte, start);
                    }
                    Some(b'/') => {
                        self.pos += 1;
                        self.emit(Tok::TrimLower, start);
                    }
                    _ => self.emit(Tok::Gtr, start),
                },
                b'0'..=b'9' => {
                    self.pos = start;
                    self.lex_number_or_duration()?;
                }
                b'.' if self.peek().is_some_and(|c| c.is_ascii_digit()) => {
                    self.pos = start;
                    self.lex_number_or_duration()?;
                }
                b'"' | b'\'' => self.lex_string(c, start)?,
                b'`' => self.lex_raw_string(start)?,
                c if is_alpha(c) || c == b':' => {
                    self.pos = start;
                    self.lex_keyword_or_identifier();
                }
                b'(' => {
                    self.paren_depth += 1;
                    self.emit(Tok::LeftParen, start);
                }
                b')' => {
                    self.emit(Tok::RightParen, start);
                    self.paren_depth -= 1;
                    if self.paren_depth < 0 {
                        return Err(self.err(start, "unexpected right parenthesis ')'"));
                    }
                }
                b'{' => {
                    self.emit(Tok::LeftBrace, start);
                    self.brace_open = true;
                }
                b'[' => {
                    self.got_colon = false;
                    self.got_duration = false;
                    self.emit(Tok::LeftBracket, start);
                    self.bracket_open = true;
                }
                b']' => return Err(self.err(start, "unexpected right bracket ']'")),
                b'}' => return Err(self.err(start, "unexpected character: '}'")),
                b'@' => self.emit(Tok::At, start),
                _ => {
                    self.pos = start + self.input[start..].chars().next().map_or(1, char::len_utf8);
                    return Err(self.err(
                        start,
                        format!("unexpected character: {}", self.char_at(start)),
                    ));
                }
            }
        }
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'\n' || c == b'\r' {
                break;
            }
            self.pos += 1;
        }
    }

    fn lex_inside_braces(&mut self) -> Result<(), ParseError> {
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Err(self.err(start, "unexpected end of input inside braces"));
        };
        if c == b'#' {
            self.skip_comment();
            return Ok(());
        }
        self.pos += 1;
        match c {
            c if is_space(c) => {}
            c if is_alpha(c) => {
                while self.peek().is_some_and(is_alnum) {
                    self.pos += 1;
                }
                self.emit(Tok::Identifier, start);
            }
            b',' => self.emit(Tok::Comma, start),
            b'"' | b'\'' => self.lex_string(c, start)?,
            b'`' => self.lex_raw_string(start)?,
            b'=' => {
                if self.peek() == Some(b'~') {
                    self.pos += 1;
                    self.emit(Tok::EqlRegex, start);
                } else {
                    self.emit(Tok::Eql, start);
                }
            }
            b'!' => match self.peek() {
                Some(b'~') => {
                    self.pos += 1;
                    self.emit(Tok::NeqRegex, start);
                }
                Some(b'=') => {
                    self.pos += 1;
                    self.emit(Tok::Neq, start);
                }
                _ => {
                    let q = if self.peek().is_some() {
                        self.char_at(self.pos)
                    } else {
                        "EOF".into()
                    };
                    return Err(self.err(
                        start,
                        format!("unexpected character after '!' inside braces: {q}"),
                    ));
                }
            },
            b'{' => return Err(self.err(start, "unexpected left brace '{'")),
            b'}' => {
                self.emit(Tok::RightBrace, start);
                self.brace_open = false;
            }
            _ => {
                return Err(self.err(
                    start,
                    format!(
                        "unexpected character inside braces: {}",
                        self.char_at(start)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn lex_duration_expr(&mut self) -> Result<(), ParseError> {
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Err(self.err(start, "unexpected end of input in duration expression"));
        };
        self.pos += 1;
        match c {
            b']' => {
                self.emit(Tok::RightBracket, start);
                self.bracket_open = false;
                self.got_colon = false;
            }
            b':' => {
                self.emit(Tok::Colon, start);
                if !self.got_duration {
                    return Err(self.err(
                        start,
                        "unexpected colon before duration in duration expression",
                    ));
                }
                if self.got_colon {
                    return Err(self.err(start, "unexpected repeated colon in duration expression"));
                }
                self.got_colon = true;
            }
            b'(' => {
                self.paren_depth += 1;
                self.emit(Tok::LeftParen, start);
            }
            b')' => {
                self.emit(Tok::RightParen, start);
                self.paren_depth -= 1;
                if self.paren_depth < 0 {
                    return Err(self.err(start, "unexpected right parenthesis ')'"));
                }
            }
            c if is_space(c) => {}
            b'+' => self.emit(Tok::Add, start),
            b'-' => self.emit(Tok::Sub, start),
            b'*' => self.emit(Tok::Mul, start),
            b'/' => self.emit(Tok::Div, start),
            b'%' => self.emit(Tok::Mod, start),
            b'^' => self.emit(Tok::Pow, start),
            b',' => self.emit(Tok::Comma, start),
            c if is_alpha(c) => {
                while self.peek().is_some_and(is_alpha) {
                    self.pos += 1;
                }
                match duration_keyword(&self.input[start..self.pos]) {
                    Some(t) => self.emit(t, start),
                    None => {
                        self.pos = start + 1;
                        return Err(self.err(
                            start,
                            format!(
                                "unexpected character in duration expression: {}",
                                self.char_at(start)
                            ),
                        ));
                    }
                }
            }
            b'0'..=b'9' => {
                self.pos = start;
                self.got_duration = true;
                self.lex_number_or_duration()?;
            }
            b'.' if self.peek().is_some_and(|c| c.is_ascii_digit()) => {
                self.pos = start;
                self.got_duration = true;
                self.lex_number_or_duration()?;
            }
            _ => {
                return Err(self.err(
                    start,
                    format!(
                        "unexpected character in duration expression: {}",
                        self.char_at(start)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn lex_keyword_or_identifier(&mut self) {
        let start = self.pos;
        while self.peek().is_some_and(|c| is_alnum(c) || c == b':') {
            self.pos += 1;
        }
        let word = &self.input[start..self.pos];
        match keyword(word) {
            Some(kw @ (Tok::Fill | Tok::FillLeft | Tok::FillRight)) => {
                if self.followed_by_left_paren() {
                    self.emit(kw, start);
                } else {
                    self.emit(Tok::Identifier, start);
                }
            }
            Some(kw) => self.emit(kw, start),
            None if word.contains(':') => self.emit(Tok::MetricIdentifier, start),
            None => self.emit(Tok::Identifier, start),
        }
    }

    fn followed_by_left_paren(&self) -> bool {
        self.b[self.pos..]
            .iter()
            .find(|c| !is_space(**c))
            .is_some_and(|c| *c == b'(')
    }

    fn lex_string(&mut self, quote: u8, start: usize) -> Result<(), ParseError> {
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err(start, "unterminated quoted string"));
            };
            self.pos += 1;
            match c {
                b'\\' => {
                    if self.peek().is_none() {
                        return Err(self.err(start, "escape sequence not terminated"));
                    }
                    // Validation of the escape happens when unquoting.
                    let ch_len = self.input[self.pos..]
                        .chars()
                        .next()
                        .map_or(1, char::len_utf8);
                    self.pos += ch_len;
                }
                b'\n' => return Err(self.err(start, "unterminated quoted string")),
                c if c == quote => break,
                _ => {}
            }
        }
        self.emit(Tok::String, start);
        Ok(())
    }

    fn lex_raw_string(&mut self, start: usize) -> Result<(), ParseError> {
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err(start, "unterminated raw string"));
            };
            self.pos += 1;
            if c == b'`' {
                break;
            }
        }
        self.emit(Tok::String, start);
        Ok(())
    }

    fn lex_number_or_duration(&mut self) -> Result<(), ParseError> {
        let start = self.pos;
        if self.scan_number() {
            self.emit(Tok::Number, start);
            return Ok(());
        }
        // Not a plain number: try a duration from the start (digits followed by units).
        self.pos = start;
        if self.scan_duration() {
            self.emit(Tok::Duration, start);
            return Ok(());
        }
        Err(self.err(
            start,
            format!(
                "bad number or duration syntax: {:?}",
                &self.input[start..self.pos.min(self.input.len())]
            ),
        ))
    }

    /// Scans a number as Go's `scanNumber` does; true if it ends where a number may end.
    fn scan_number(&mut self) -> bool {
        let initial = self.pos;
        let mut hex = false;
        if self.peek() == Some(b'0') && matches!(self.peek_at(1), Some(b'x' | b'X')) {
            self.pos += 2;
            if self.peek() == Some(b'_') {
                self.pos += 1;
            }
            hex = true;
        }
        let is_digit = |c: u8| {
            if hex {
                c.is_ascii_hexdigit()
            } else {
                c.is_ascii_digit()
            }
        };
        if self.peek() == Some(b'.') {
            self.pos += 1;
        }
        if self.peek().is_some_and(is_digit) {
            self.pos += 1;
        }
        let mut dot = false;
        let mut exp = false;
        while let Some(c) = self.peek() {
            if c == b'.' {
                if dot || hex {
                    self.pos += 1;
                    return false;
                }
                dot = true;
                self.pos += 1;
                if matches!(self.peek(), Some(b'_' | b'.')) {
                    self.pos += 1;
                    return false;
                }
            } else if !hex && (c == b'e' || c == b'E') {
                if exp {
                    self.pos += 1;
                    return false;
                }
                exp = true;
                self.pos += 1;
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.pos += 1;
                }
                if matches!(self.peek(), None | Some(b'.' | b'_' | b'e' | b'E')) {
                    return false;
                }
            } else if c == b'_' {
                self.pos += 1;
                if matches!(self.peek(), None | Some(b'.' | b'_' | b'e' | b'E')) {
                    return false;
                }
            } else if is_digit(c) {
                while self.peek().is_some_and(is_digit) {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
        if self.pos == initial {
            return false;
        }
        !self.peek().is_some_and(is_alnum)
    }

    /// Scans `<digits><unit>(<digits><unit>)*` (units `ms s m h d w y`).
    fn scan_duration(&mut self) -> bool {
        let mut any = false;
        loop {
            let ds = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            if self.pos == ds {
                break;
            }
            match self.peek() {
                Some(b'm') => {
                    self.pos += 1;
                    if self.peek() == Some(b's') {
                        self.pos += 1;
                    }
                }
                Some(b's' | b'h' | b'd' | b'w' | b'y') => self.pos += 1,
                _ => return false,
            }
            any = true;
        }
        any && !self.peek().is_some_and(is_alnum)
    }
}

/// Go's `%q` for a rune: `'a'`, `'\n'`.
pub fn go_quote_rune(c: char) -> String {
    match c {
        '\'' => "'\\''".into(),
        '\\' => "'\\\\'".into(),
        '\n' => "'\\n'".into(),
        '\t' => "'\\t'".into(),
        '\r' => "'\\r'".into(),
        c if (c as u32) < 0x20 => format!("'\\x{:02x}'", c as u32),
        c => format!("'{c}'"),
    }
}

/// Unquotes a PromQL string literal (with its quotes), as Prometheus's `strutil.Unquote`;
/// an error if the result is not valid UTF-8.
pub fn unquote(s: &str) -> Result<String, String> {
    String::from_utf8(unquote_bytes(s)?).map_err(|_| "invalid syntax".to_string())
}

/// Unquotes a string literal to bytes: Go strings may hold any bytes (`"\xff"`).
pub fn unquote_bytes(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    if b.len() < 2 {
        return Err("invalid syntax".into());
    }
    let quote = b[0];
    if b[b.len() - 1] != quote {
        return Err("invalid syntax".into());
    }
    let inner = &s[1..s.len() - 1];
    if quote == b'`' {
        if inner.contains('`') {
            return Err("invalid syntax".into());
        }
        return Ok(inner.as_bytes().to_vec());
    }
    if quote != b'"' && quote != b'\'' {
        return Err("invalid syntax".into());
    }
    let mut out: Vec<u8> = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == quote as char {
            return Err("invalid syntax".into());
        }
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let Some(e) = chars.next() else {
            return Err("invalid syntax".into());
        };
        let simple = match e {
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{b}'),
            '\\' => Some('\\'),
            '\'' | '"' if e as u32 == quote as u32 => Some(e),
            _ => None,
        };
        if let Some(ch) = simple {
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let (n, base, is_byte) = match e {
            '0'..='7' => (3, 8, true),
            'x' => (2, 16, true),
            'u' => (4, 16, false),
            'U' => (8, 16, false),
            _ => return Err("invalid syntax".into()),
        };
        let mut digits = String::new();
        if base == 8 {
            digits.push(e);
        }
        while digits.len() < n {
            let Some(d) = chars.next() else {
                return Err("invalid syntax".into());
            };
            digits.push(d);
        }
        let mut v: u32 = 0;
        for d in digits.chars() {
            let dv = d.to_digit(base).ok_or("invalid syntax")?;
            v = v * base + dv;
        }
        if is_byte {
            if v > 255 {
                return Err("invalid syntax".into());
            }
            out.push(v as u8);
        } else {
            let ch = char::from_u32(v).ok_or("invalid syntax")?;
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        }
    }
    Ok(out)
}

/// Go's `strconv.Quote` of bytes that may not be valid UTF-8 (invalid bytes as `\xNN`).
pub fn go_quote_bytes(b: &[u8]) -> String {
    let mut out = String::from("\"");
    let mut rest = b;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                let q = super::go_quote(s);
                out.push_str(&q[1..q.len() - 1]);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                if let Ok(s) = std::str::from_utf8(good) {
                    let q = super::go_quote(s);
                    out.push_str(&q[1..q.len() - 1]);
                }
                let n = e.error_len().unwrap_or(bad.len()).max(1);
                for x in &bad[..n] {
                    out.push_str(&format!("\\x{x:02x}"));
                }
                rest = &bad[n..];
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).expect("lexes").into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn basic_tokens() {
        assert_eq!(
            toks("sum by (job) (rate(x[5m]))"),
            vec![
                Tok::Sum,
                Tok::By,
                Tok::LeftParen,
                Tok::Identifier,
                Tok::RightParen,
                Tok::LeftParen,
                Tok::Identifier,
                Tok::LeftParen,
                Tok::Identifier,
                Tok::LeftBracket,
                Tok::Duration,
                Tok::RightBracket,
                Tok::RightParen,
                Tok::RightParen,
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("a{b=~\"c\", d!~'e'} >= 1e3"),
            vec![
                Tok::Identifier,
                Tok::LeftBrace,
                Tok::Identifier,
                Tok::EqlRegex,
                Tok::String,
                Tok::Comma,
                Tok::Identifier,
                Tok::NeqRegex,
                Tok::String,
                Tok::RightBrace,
                Tok::Gte,
                Tok::Number,
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("0x1F Inf NaN .5"),
            vec![Tok::Number; 4]
                .into_iter()
                .chain([Tok::Eof])
                .collect::<Vec<_>>()
        );
        assert_eq!(
            toks("x[step()+1h30m:]")[2..5],
            [Tok::Step, Tok::LeftParen, Tok::RightParen]
        );
        assert!(lex("a[5m").is_err());
        assert!(lex("(a").is_err());
        assert!(lex("\"abc").is_err());
    }

    #[test]
    fn unquoting() {
        assert_eq!(unquote("\"a\\nb\"").as_deref(), Ok("a\nb"));
        assert_eq!(unquote("'a\\'b'").as_deref(), Ok("a'b"));
        assert_eq!(unquote("`a\\b`").as_deref(), Ok("a\\b"));
        assert_eq!(unquote("\"\\u00e9\\x41\"").as_deref(), Ok("éA"));
        assert!(unquote("\"\\q\"").is_err());
    }
}
