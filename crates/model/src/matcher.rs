//! Label matchers: `=`, `!=`, `=~`, `!~`.
//!
//! Regexes follow Prometheus 3.x: fully anchored (`^(?s:re)$`, so `.` also matches newlines) and
//! RE2 syntax, which the `regex` crate implements. The common shapes that dashboards send are
//! recognised from the parsed syntax tree and answered without running a regex: `.*`, `.+`,
//! literals, `a|b|c` sets, `foo.*` prefixes, `.*foo` suffixes and `.*foo.*` substrings. The
//! index also uses [`Matcher::set_matches`] and [`Matcher::prefix`] to look postings up directly
//! instead of testing every value of a label.

use std::fmt;

use regex_syntax::hir::{Class, Hir, HirKind};

/// The four matcher operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`: the value equals the string.
    Equal,
    /// `!=`: the value differs from the string.
    NotEqual,
    /// `=~`: the whole value matches the regex.
    RegexMatch,
    /// `!~`: the whole value does not match the regex.
    RegexNoMatch,
}

impl MatchOp {
    /// The operator as written in PromQL.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::RegexMatch => "=~",
            MatchOp::RegexNoMatch => "!~",
        }
    }

    /// Whether the matcher's value is a regular expression (`=~`, `!~`).
    pub fn is_regex(self) -> bool {
        matches!(self, MatchOp::RegexMatch | MatchOp::RegexNoMatch)
    }

    /// Whether it selects by exclusion (`!=`, `!~`), so it matches series without the label.
    pub fn is_negative(self) -> bool {
        matches!(self, MatchOp::NotEqual | MatchOp::RegexNoMatch)
    }
}

impl fmt::Display for MatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a matcher cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    /// The regex does not compile (RE2 syntax, anchored at both ends).
    #[error("invalid regular expression {regex:?} in matcher for label {name:?}: {reason}")]
    InvalidRegex {
        /// The label the matcher is for.
        name: String,
        /// The regex as given.
        regex: String,
        /// The regex compiler's message.
        reason: String,
    },
}

/// A compiled regex with fast paths.
#[derive(Clone, Debug)]
enum FastRegex {
    Any,
    NonEmpty,
    Literal(String),
    /// Sorted, deduplicated alternatives.
    Set(Vec<String>),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(regex::Regex),
}

impl FastRegex {
    fn new(name: &str, re: &str) -> Result<FastRegex, MatcherError> {
        let anchored = format!("^(?s:{re})$");
        let err = |reason: String| MatcherError::InvalidRegex {
            name: name.to_string(),
            regex: re.to_string(),
            reason,
        };
        // The regex crate and regex-syntax share the parser, so a pattern that parses here
        // compiles there (size limits aside, which compile reports).
        let hir = regex_syntax::Parser::new()
            .parse(&format!("(?s:{re})"))
            .map_err(|e| err(e.to_string()))?;
        if let Some(fast) = Self::analyze(&hir) {
            return Ok(fast);
        }
        regex::Regex::new(&anchored)
            .map(FastRegex::Regex)
            .map_err(|e| err(e.to_string()))
    }

    fn analyze(hir: &Hir) -> Option<FastRegex> {
        let hir = strip_captures(hir);
        if is_dot_star(hir) {
            return Some(FastRegex::Any);
        }
        if is_dot_plus(hir) {
            return Some(FastRegex::NonEmpty);
        }
        if let Some(mut set) = finite_language(hir, MAX_SET_SIZE) {
            set.sort();
            set.dedup();
            return Some(if set.len() == 1 {
                FastRegex::Literal(set.pop().unwrap_or_default())
            } else {
                FastRegex::Set(set)
            });
        }
        match hir.kind() {
            HirKind::Concat(parts) => {
                let parts: Vec<&Hir> = parts.iter().map(strip_captures).collect();
                match parts.as_slice() {
                    [a, b] if is_dot_star(b) => literal(a).map(FastRegex::Prefix),
                    [a, b] if is_dot_star(a) => literal(b).map(FastRegex::Suffix),
                    [a, b, c] if is_dot_star(a) && is_dot_star(c) => {
                        literal(b).map(FastRegex::Contains)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    #[inline]
    fn is_match(&self, s: &str) -> bool {
        match self {
            FastRegex::Any => true,
            FastRegex::NonEmpty => !s.is_empty(),
            FastRegex::Literal(l) => s == l,
            FastRegex::Set(set) => set.binary_search_by(|x| x.as_str().cmp(s)).is_ok(),
            FastRegex::Prefix(p) => s.starts_with(p.as_str()),
            FastRegex::Suffix(p) => s.ends_with(p.as_str()),
            FastRegex::Contains(p) => s.contains(p.as_str()),
            FastRegex::Regex(re) => re.is_match(s),
        }
    }
}

fn strip_captures(h: &Hir) -> &Hir {
    match h.kind() {
        HirKind::Capture(c) => strip_captures(&c.sub),
        _ => h,
    }
}

/// Largest alternation the set fast path enumerates; larger ones run the regex.
const MAX_SET_SIZE: usize = 256;

/// The literal string `h` matches, if it matches exactly one string.
fn literal(h: &Hir) -> Option<String> {
    let mut set = finite_language(h, 1)?;
    set.pop()
}

/// Every string `h` matches, if that is a finite set of at most `limit` strings. The regex
/// parser factors `api|apple` into `ap(i|ple)` and `a|b|c` into `[a-c]`, so sets are recovered
/// from the language rather than from the shape of the tree.
fn finite_language(h: &Hir, limit: usize) -> Option<Vec<String>> {
    match h.kind() {
        HirKind::Empty => Some(vec![String::new()]),
        HirKind::Literal(l) => Some(vec![String::from_utf8(l.0.to_vec()).ok()?]),
        HirKind::Capture(c) => finite_language(&c.sub, limit),
        HirKind::Class(Class::Unicode(c)) => {
            let mut out = Vec::new();
            for r in c.ranges() {
                let n = (r.end() as u32 - r.start() as u32) as usize + 1;
                if out.len() + n > limit {
                    return None;
                }
                out.extend((r.start()..=r.end()).map(String::from));
            }
            Some(out)
        }
        HirKind::Alternation(alts) => {
            let mut out = Vec::new();
            for a in alts {
                out.extend(finite_language(a, limit)?);
                if out.len() > limit {
                    return None;
                }
            }
            Some(out)
        }
        HirKind::Concat(parts) => {
            let mut out = vec![String::new()];
            for p in parts {
                let next = finite_language(p, limit)?;
                if out.len() * next.len() > limit {
                    return None;
                }
                out = out
                    .iter()
                    .flat_map(|a| next.iter().map(move |b| format!("{a}{b}")))
                    .collect();
            }
            Some(out)
        }
        _ => None,
    }
}

fn is_any_char(h: &Hir) -> bool {
    match h.kind() {
        HirKind::Class(Class::Unicode(c)) => {
            let r = c.ranges();
            r.len() == 1 && r[0].start() == '\0' && r[0].end() == '\u{10FFFF}'
        }
        _ => false,
    }
}

fn is_dot_star(h: &Hir) -> bool {
    match h.kind() {
        HirKind::Repetition(r) => r.min == 0 && r.max.is_none() && is_any_char(&r.sub),
        _ => false,
    }
}

fn is_dot_plus(h: &Hir) -> bool {
    match h.kind() {
        HirKind::Repetition(r) => r.min == 1 && r.max.is_none() && is_any_char(&r.sub),
        _ => false,
    }
}

/// One label matcher.
#[derive(Clone)]
pub struct Matcher {
    /// The operator.
    pub op: MatchOp,
    /// The label name matched.
    pub name: String,
    /// The string or regex the value is compared with.
    pub value: String,
    re: Option<FastRegex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.op == other.op && self.name == other.name && self.value == other.value
    }
}

impl Eq for Matcher {}

impl std::hash::Hash for Matcher {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.op.hash(state);
        self.name.hash(state);
        self.value.hash(state);
    }
}

impl Matcher {
    /// Builds a matcher, compiling the regex for `=~` and `!~`.
    pub fn new(
        op: MatchOp,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, MatcherError> {
        let name = name.into();
        let value = value.into();
        let re = if op.is_regex() {
            Some(FastRegex::new(&name, &value)?)
        } else {
            None
        };
        Ok(Matcher {
            op,
            name,
            value,
            re,
        })
    }

    /// `name="value"`; cannot fail.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher {
            op: MatchOp::Equal,
            name: name.into(),
            value: value.into(),
            re: None,
        }
    }

    /// Whether `value` (the label's value, `""` when the label is absent) matches.
    #[inline]
    pub fn matches(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::RegexMatch => self.re.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::RegexNoMatch => !self.re.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }

    /// Whether a series without this label matches (its value counts as `""`).
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// For `=~`/`=` matchers that can only match a fixed, small set of values: those values
    /// (sorted). The index looks them up directly.
    pub fn set_matches(&self) -> Option<Vec<String>> {
        match (self.op, &self.re) {
            (MatchOp::Equal, _) => Some(vec![self.value.clone()]),
            (MatchOp::RegexMatch, Some(FastRegex::Literal(l))) => Some(vec![l.clone()]),
            (MatchOp::RegexMatch, Some(FastRegex::Set(s))) => Some(s.clone()),
            _ => None,
        }
    }

    /// For regex matchers that require a literal prefix: that prefix.
    pub fn prefix(&self) -> Option<&str> {
        match &self.re {
            Some(FastRegex::Prefix(p)) => Some(p),
            Some(FastRegex::Literal(l)) => Some(l),
            _ => None,
        }
    }

    /// True for `=~".*"`, which matches every value including absence.
    pub fn matches_everything(&self) -> bool {
        self.op == MatchOp::RegexMatch && matches!(self.re, Some(FastRegex::Any))
    }

    /// The regex exactly as the user wrote it (without our anchoring), for printing.
    pub fn raw_value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Matcher {
    /// PromQL syntax: `name="value"` with the value quoted and escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op, self.value)
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(op: MatchOp, v: &str) -> Matcher {
        Matcher::new(op, "l", v).expect("valid")
    }

    #[test]
    fn fast_paths_are_chosen() {
        assert!(matches!(
            m(MatchOp::RegexMatch, ".*").re,
            Some(FastRegex::Any)
        ));
        assert!(matches!(
            m(MatchOp::RegexMatch, ".+").re,
            Some(FastRegex::NonEmpty)
        ));
        assert!(matches!(
            m(MatchOp::RegexMatch, "foo").re,
            Some(FastRegex::Literal(_))
        ));
        assert!(matches!(
            m(MatchOp::RegexMatch, "a|b|c").re,
            Some(FastRegex::Set(_))
        ));
        assert!(matches!(
            m(MatchOp::RegexMatch, "(a|b)").re,
            Some(FastRegex::Set(_))
        ));
        assert!(matches!(
            m(MatchOp::RegexMatch, "foo.*").re,
            Some(FastRegex::Prefix(_))
        ));
        assert!(matches!(
            m(MatchOp::RegexMatch, ".*foo").re,
            Some(FastRegex::Suffix(_))
        ));
        assert!(matches!(
            m(MatchOp::RegexMatch, ".*foo.*").re,
            Some(FastRegex::Contains(_))
        ));
        assert!(matches!(
            m(MatchOp::RegexMatch, "5..").re,
            Some(FastRegex::Regex(_))
        ));
        assert_eq!(
            m(MatchOp::RegexMatch, "b|a|b").set_matches(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
    }

    #[test]
    fn anchored_and_dot_matches_newline() {
        assert!(m(MatchOp::RegexMatch, "a.c").matches("a\nc"));
        assert!(!m(MatchOp::RegexMatch, "b").matches("abc"));
        assert!(m(MatchOp::RegexMatch, "a|ab").matches("ab"));
        assert!(m(MatchOp::RegexNoMatch, "foo").matches(""));
        assert!(m(MatchOp::RegexMatch, "").matches(""));
        assert!(m(MatchOp::RegexMatch, "(?i)FOO").matches("foo"));
        assert!(Matcher::new(MatchOp::RegexMatch, "l", "(").is_err());
    }

    #[test]
    fn empty_semantics() {
        assert!(m(MatchOp::Equal, "").matches_empty());
        assert!(m(MatchOp::NotEqual, "x").matches_empty());
        assert!(!m(MatchOp::RegexMatch, ".+").matches_empty());
        assert!(m(MatchOp::RegexMatch, ".*").matches_everything());
    }

    fn pattern() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(".*".to_string()),
            Just(".+".to_string()),
            "[a-c]{0,3}",
            "[a-c]{1,2}(\\|[a-c]{1,2}){1,3}",
            "[a-c]{1,2}\\.\\*",
            "\\.\\*[a-c]{1,2}",
            "\\.\\*[a-c]{1,2}\\.\\*",
            "\\(?[a-c]\\.[a-c]?\\)?",
            "[a-c]\\+[a-c]*",
        ]
    }

    proptest! {
        /// Every fast path agrees with the plain anchored regex.
        #[test]
        fn fast_paths_agree_with_regex(p in pattern(), s in "[a-c\n]{0,5}") {
            let Ok(naive) = regex::Regex::new(&format!("^(?s:{p})$")) else { return Ok(()) };
            for op in [MatchOp::RegexMatch, MatchOp::RegexNoMatch] {
                let Ok(mm) = Matcher::new(op, "l", p.clone()) else { continue };
                let want = naive.is_match(&s) == (op == MatchOp::RegexMatch);
                prop_assert_eq!(mm.matches(&s), want, "pattern {:?} on {:?}", p, s);
            }
        }
    }
}
