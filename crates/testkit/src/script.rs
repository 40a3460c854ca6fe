//! Parsing `.test` scripts and checking results against their expectations, as Prometheus's
//! `promql/promqltest/test.go` does.

use std::fmt;

use m3query_model::time::parse_duration;
use m3query_model::{Labels, STALE_NAN, is_stale_nan};
use m3query_promql::Value;
use m3query_promql::parser::unquote;
use regex::Regex;

/// A script that does not parse.
#[derive(Debug, Clone)]
pub struct ScriptError {
    /// The line (1-based) that does not parse.
    pub line: usize,
    /// What is wrong with it.
    pub msg: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

impl std::error::Error for ScriptError {}

fn err(line: usize, msg: impl Into<String>) -> ScriptError {
    ScriptError {
        line,
        msg: msg.into(),
    }
}

/// One command of a promqltest script.
#[derive(Debug, Clone)]
pub enum Command {
    /// `clear`: empty the store.
    Clear,
    /// `load <interval>`: series to store.
    Load(Load),
    /// `eval ...`: a query and what it must answer.
    Eval(EvalCmd),
}

#[derive(Debug, Clone)]
pub struct Load {
    pub interval_ms: i64,
    pub with_nhcb: bool,
    pub series: Vec<LoadSeries>,
}

#[derive(Debug, Clone)]
pub struct LoadSeries {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
    pub has_histograms: bool,
    pub has_start_timestamps: bool,
}

/// The kinds of `expect` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectKind {
    /// `expect ordered`: the result's order matters.
    Ordered,
    /// `expect fail`: the query must fail.
    Fail,
    /// `expect warn`: the query must warn.
    Warn,
    /// `expect no_warn`: the query must not warn.
    NoWarn,
    /// `expect info`: the query must give an info annotation.
    Info,
    /// `expect no_info`: the query must give no info annotation.
    NoInfo,
}

/// One `expect` line: a kind and what the message must be (exact) or match (regex).
#[derive(Debug, Clone)]
pub struct Expect {
    /// Which expectation.
    pub kind: ExpectKind,
    /// `msg:` the exact message expected.
    pub message: Option<String>,
    /// `regex:` a pattern the message must match.
    pub regex: Option<Regex>,
}

impl Expect {
    fn matches(&self, s: &str) -> bool {
        match (&self.regex, &self.message) {
            (Some(r), _) => r.is_match(s),
            (None, Some(m)) => m == s,
            (None, None) => true,
        }
    }

    fn describe(&self) -> String {
        match (&self.regex, &self.message) {
            (Some(r), _) => format!("pattern {:?}", r.as_str()),
            (None, Some(m)) => format!("message {m:?}"),
            (None, None) => "anything".into(),
        }
    }
}

/// What an eval expects.
#[derive(Debug, Clone, Default)]
pub enum Expected {
    /// Nothing listed: an empty vector or matrix.
    #[default]
    Empty,
    /// A scalar result.
    Scalar(f64),
    /// Series with their values (`None` for `_`), in the order listed.
    Series(Vec<(Labels, Vec<Option<f64>>)>),
    /// A string result.
    String(String),
}

/// An `eval` command with its expectations.
#[derive(Debug, Clone)]
pub struct EvalCmd {
    /// The command's line in the script (1-based).
    pub line: usize,
    /// The query.
    pub expr: String,
    /// Instant evaluation time (for range evals: the end).
    pub at: i64,
    /// `(start, end, step)` for range evals.
    pub range: Option<(i64, i64, i64)>,
    /// `expect range vector from .. to .. step ..`.
    pub expect_range: Option<(i64, i64, i64)>,
    /// `eval_ordered` (old syntax): the result's order matters.
    pub ordered: bool,
    /// `eval_fail` (old syntax): the query must fail.
    pub fail: bool,
    /// `eval_warn` (old syntax): the query must warn.
    pub warn: bool,
    /// `eval_info` (old syntax): the query must give an info annotation.
    pub info: bool,
    /// The `expect` lines.
    pub expects: Vec<Expect>,
    /// `expected_fail_message <text>` after `eval_fail`: the exact error expected.
    pub expected_fail_message: Option<String>,
    /// `expected_fail_regexp <re>` after `eval_fail`: a pattern the error must match.
    pub expected_fail_regexp: Option<Regex>,
    /// The result expected.
    pub expected: Expected,
    /// Expected values are native histograms (`{{...}}`).
    pub expects_histograms: bool,
}

fn trimmed_lines(text: &str) -> Vec<String> {
    text.split('\n')
        .map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                String::new()
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// `(line, expr)` of every eval command (for reporting files that do not parse).
pub fn eval_lines(text: &str) -> Vec<(usize, String)> {
    trimmed_lines(text)
        .iter()
        .enumerate()
        .filter(|(_, l)| l.to_ascii_lowercase().starts_with("eval"))
        .map(|(i, l)| (i + 1, l.clone()))
        .collect()
}

/// The number of eval commands in a script.
pub fn count_evals(text: &str) -> usize {
    eval_lines(text).len()
}

fn dur(s: &str, line: usize) -> Result<i64, ScriptError> {
    parse_duration(s.trim()).map_err(|e| err(line, e.to_string()))
}

/// Parses a whole script.
pub fn parse_script(text: &str) -> Result<Vec<Command>, ScriptError> {
    let lines = trimmed_lines(text);
    let re_instant =
        Regex::new(r"^eval(?:_(fail|warn|ordered|info))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$")
            .map_err(|e| err(0, e.to_string()))?;
    let re_range = Regex::new(
        r"^eval(?:_(fail|warn|info))?\s+range\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+?)\s+(.+)$",
    )
    .map_err(|e| err(0, e.to_string()))?;
    let re_load =
        Regex::new(r"^load(?:_(with_nhcb))?\s+(.+?)$").map_err(|e| err(0, e.to_string()))?;
    let mut cmds = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = &lines[i];
        if l.is_empty() {
            i += 1;
            continue;
        }
        let first = l
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if first == "clear" {
            cmds.push(Command::Clear);
            i += 1;
        } else if first.starts_with("load") {
            let caps = re_load.captures(l).ok_or_else(|| {
                err(
                    i + 1,
                    "invalid load command. (load[_with_nhcb] <step:duration>)",
                )
            })?;
            let interval_ms = dur(&caps[2], i + 1)?;
            let with_nhcb = caps.get(1).is_some();
            let mut series = Vec::new();
            let mut pending_st: Option<Labels> = None;
            i += 1;
            while i < lines.len() && !lines[i].is_empty() {
                let def = &lines[i];
                let space = def.find([' ', '\t']);
                if let Some(sp) = space
                    && def[..sp].ends_with("@st")
                {
                    let (labels, _) = parse_metric(&def[..sp - 3], i + 1)?;
                    pending_st = Some(labels);
                    i += 1;
                    continue;
                }
                let (labels, rest) = parse_metric(def, i + 1)?;
                let (vals, has_h) = parse_values(rest, i + 1)?;
                let mut samples = Vec::with_capacity(vals.len());
                for (k, v) in vals.iter().enumerate() {
                    if let Some(v) = v {
                        samples.push((k as i64 * interval_ms, *v));
                    }
                }
                let has_st = pending_st.take().is_some();
                // Redefinition in one load replaces the earlier one.
                series.retain(|s: &LoadSeries| s.labels != labels);
                series.push(LoadSeries {
                    labels,
                    samples,
                    has_histograms: has_h,
                    has_start_timestamps: has_st,
                });
                i += 1;
            }
            cmds.push(Command::Load(Load {
                interval_ms,
                with_nhcb,
                series,
            }));
        } else if first.starts_with("eval") {
            let (next, cmd) = parse_eval(&lines, i, &re_instant, &re_range)?;
            cmds.push(Command::Eval(cmd));
            i = next;
        } else {
            return Err(err(i + 1, format!("invalid command {l:?}")));
        }
    }
    Ok(cmds)
}

fn parse_eval(
    lines: &[String],
    i: usize,
    re_instant: &Regex,
    re_range: &Regex,
) -> Result<(usize, EvalCmd), ScriptError> {
    let l = &lines[i];
    let line = i + 1;
    let mut cmd = EvalCmd {
        line,
        expr: String::new(),
        at: 0,
        range: None,
        expect_range: None,
        ordered: false,
        fail: false,
        warn: false,
        info: false,
        expects: Vec::new(),
        expected_fail_message: None,
        expected_fail_regexp: None,
        expected: Expected::Empty,
        expects_histograms: false,
    };
    let modifier;
    if let Some(c) = re_instant.captures(l) {
        modifier = c.get(1).map(|m| m.as_str().to_string());
        cmd.expr = c[3].to_string();
        cmd.at = match c.get(2) {
            Some(a) => dur(a.as_str(), line)?,
            None => 0,
        };
    } else if let Some(c) = re_range.captures(l) {
        modifier = c.get(1).map(|m| m.as_str().to_string());
        let (s, e, st) = (dur(&c[2], line)?, dur(&c[3], line)?, dur(&c[4], line)?);
        if e < s {
            return Err(err(
                line,
                "invalid test definition, end timestamp is before start timestamp",
            ));
        }
        cmd.range = Some((s, e, st));
        cmd.at = e;
        cmd.expr = c[5].to_string();
    } else {
        return Err(err(line, "invalid evaluation command"));
    }
    match modifier.as_deref() {
        Some("ordered") => cmd.ordered = true,
        Some("fail") => cmd.fail = true,
        Some("warn") => cmd.warn = true,
        Some("info") => cmd.info = true,
        _ => {}
    }
    let re_expect =
        Regex::new(r"^expect\s+(ordered|fail|warn|no_warn|info|no_info)(?:\s+(regex|msg):(.+))?$")
            .map_err(|e| err(line, e.to_string()))?;
    let re_expect_range = Regex::new(r"^\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+)$")
        .map_err(|e| err(line, e.to_string()))?;
    let mut series: Vec<(Labels, Vec<Option<f64>>)> = Vec::new();
    let mut j = i;
    while j + 1 < lines.len() {
        j += 1;
        let def = &lines[j];
        if def.is_empty() {
            j -= 1;
            break;
        }
        if cmd.fail && def.starts_with("expected_fail_message") {
            cmd.expected_fail_message =
                Some(def["expected_fail_message".len()..].trim().to_string());
            break;
        }
        if cmd.fail && def.starts_with("expected_fail_regexp") {
            let p = def["expected_fail_regexp".len()..].trim();
            cmd.expected_fail_regexp =
                Some(Regex::new(p).map_err(|e| err(j + 1, format!("invalid regexp: {e}")))?);
            break;
        }
        if let Some(rest) = def.strip_prefix("expect range vector") {
            let c = re_expect_range
                .captures(rest)
                .ok_or_else(|| err(j + 1, format!("invalid range vector definition {def:?}")))?;
            let (s, e, st) = (dur(&c[1], j + 1)?, dur(&c[2], j + 1)?, dur(&c[3], j + 1)?);
            cmd.expect_range = Some((s, e, st));
            cmd.at = e;
            continue;
        }
        if let Some(rest) = def.strip_prefix("expect string") {
            let s = unquote(rest.trim())
                .map_err(|_| err(j + 1, "expected string literal not valid"))?;
            cmd.expected = Expected::String(s);
            continue;
        }
        if def.split(' ').next() == Some("expect") {
            let c = re_expect
                .captures(def)
                .ok_or_else(|| err(j + 1, "invalid expect statement"))?;
            let kind = match &c[1] {
                "ordered" => ExpectKind::Ordered,
                "fail" => ExpectKind::Fail,
                "warn" => ExpectKind::Warn,
                "no_warn" => ExpectKind::NoWarn,
                "info" => ExpectKind::Info,
                _ => ExpectKind::NoInfo,
            };
            let mut e = Expect {
                kind,
                message: None,
                regex: None,
            };
            match c.get(2).map(|m| m.as_str()) {
                Some("msg") => e.message = Some(c[3].trim().to_string()),
                Some("regex") => {
                    e.regex = Some(
                        Regex::new(c[3].trim())
                            .map_err(|x| err(j + 1, format!("invalid regex: {x}")))?,
                    );
                }
                _ => {}
            }
            cmd.expects.push(e);
            continue;
        }
        if let Some(f) = parse_number(def) {
            cmd.expected = Expected::Scalar(f);
            break;
        }
        let (labels, rest) = parse_metric(def, j + 1)?;
        let (vals, has_h) = parse_values(rest, j + 1)?;
        if has_h {
            cmd.expects_histograms = true;
        }
        if vals.len() > 1 && cmd.range.is_none() && cmd.expect_range.is_none() {
            return Err(err(
                j + 1,
                "expecting multiple values in instant evaluation not allowed",
            ));
        }
        series.push((labels, vals));
    }
    if !series.is_empty() {
        cmd.expected = Expected::Series(series);
    }
    Ok((j + 1, cmd))
}

/// Go's `ParseInt(s, 0, 64)` then `ParseFloat`, for numbers in scripts.
pub(crate) fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (neg, body) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty()
        || !body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-'))
    {
        return None;
    }
    let lower = body.to_ascii_lowercase();
    let ok_word = matches!(lower.as_str(), "inf" | "infinity" | "nan");
    if !ok_word && !body.as_bytes()[0].is_ascii_digit() && body.as_bytes()[0] != b'.' {
        return None;
    }
    let v = m3query_promql::parser::parse_number(body)?;
    Some(if neg { -v } else { v })
}

/// Splits `metric{labels} rest` into labels and the rest.
fn parse_metric(def: &str, line: usize) -> Result<(Labels, &str), ScriptError> {
    let b = def.as_bytes();
    let mut i = 0;
    while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'{' {
        i += 1;
    }
    let name = &def[..i];
    let mut pairs: Vec<(String, String)> = Vec::new();
    if !name.is_empty() {
        pairs.push(("__name__".into(), name.to_string()));
    }
    if i < b.len() && b[i] == b'{' {
        i += 1;
        loop {
            while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                i += 1;
            }
            if i >= b.len() {
                return Err(err(line, "unterminated label set"));
            }
            if b[i] == b'}' {
                i += 1;
                break;
            }
            // Label name: identifier or quoted string.
            let (lname, ni) = read_name_or_string(def, i, line)?;
            i = ni;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && b[i] == b'=' {
                i += 1;
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                let (val, ni) = read_string(def, i, line)?;
                i = ni;
                pairs.push((lname, val));
            } else {
                // A quoted metric name inside the braces.
                pairs.push(("__name__".into(), lname));
            }
        }
    }
    let labels = Labels::try_from_pairs(pairs).map_err(|e| err(line, e))?;
    Ok((labels, def[i..].trim()))
}

fn read_name_or_string(s: &str, i: usize, line: usize) -> Result<(String, usize), ScriptError> {
    let b = s.as_bytes();
    if i < b.len() && matches!(b[i], b'"' | b'\'' | b'`') {
        return read_string(s, i, line);
    }
    let st = i;
    let mut j = i;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b':') {
        j += 1;
    }
    if j == st {
        return Err(err(
            line,
            format!("unexpected character in label set at {:?}", &s[st..]),
        ));
    }
    Ok((s[st..j].to_string(), j))
}

fn read_string(s: &str, i: usize, line: usize) -> Result<(String, usize), ScriptError> {
    let b = s.as_bytes();
    if i >= b.len() || !matches!(b[i], b'"' | b'\'' | b'`') {
        return Err(err(line, "expected a quoted string in label set"));
    }
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != q {
        if b[j] == b'\\' && q != b'`' {
            j += 1;
        }
        j += 1;
    }
    if j >= b.len() {
        return Err(err(line, "unterminated string in label set"));
    }
    let v = unquote(&s[i..=j]).map_err(|e| err(line, format!("bad string: {e}")))?;
    Ok((v, j + 1))
}

/// Expands series values: numbers, `_`, `_xN`, `stale`, `a+bxN`, `a-bxN`, `axN`.
/// Returns the values (None: omitted) and whether any was a native histogram.
fn parse_values(s: &str, line: usize) -> Result<(Vec<Option<f64>>, bool), ScriptError> {
    let mut out = Vec::new();
    let mut has_h = false;
    let mut rest = s.trim();
    while !rest.is_empty() {
        if rest.starts_with("{{") {
            has_h = true;
            // Skip the histogram and any `x N` / `+{{..}}xN` that follows.
            let end = rest.find("}}").map_or(rest.len(), |e| e + 2);
            let after = &rest[end..];
            let tok_end = after.find(char::is_whitespace).unwrap_or(after.len());
            let tok = &after[..tok_end];
            if let Some(times) = tok.strip_prefix('x') {
                let n: usize = times.parse().unwrap_or(0);
                out.extend(std::iter::repeat_n(None, n + 1));
                rest = after[tok_end..].trim_start();
            } else if tok.starts_with('+') || tok.starts_with('-') {
                // {{a}}+{{b}}xN
                let full = &after[1..];
                let e2 = full.find("}}").map_or(full.len(), |e| e + 2);
                let tail = &full[e2..];
                let t_end = tail.find(char::is_whitespace).unwrap_or(tail.len());
                let n: usize = tail[..t_end].trim_start_matches('x').parse().unwrap_or(0);
                out.extend(std::iter::repeat_n(None, n + 1));
                rest = tail[t_end..].trim_start();
            } else {
                out.push(None);
                rest = after.trim_start();
            }
            continue;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let tok = &rest[..end];
        rest = rest[end..].trim_start();
        expand_token(tok, line, &mut out)?;
    }
    Ok((out, has_h))
}

fn expand_token(tok: &str, line: usize, out: &mut Vec<Option<f64>>) -> Result<(), ScriptError> {
    let bad = || err(line, format!("bad series value {tok:?}"));
    if tok == "_" {
        out.push(None);
        return Ok(());
    }
    if let Some(n) = tok.strip_prefix("_x") {
        let n: usize = n.parse().map_err(|_| bad())?;
        out.extend(std::iter::repeat_n(None, n));
        return Ok(());
    }
    if tok == "stale" {
        out.push(Some(STALE_NAN));
        return Ok(());
    }
    // Repetition: `<expr>x<N>`.
    let (base, times) = match tok.rfind('x') {
        Some(p)
            if p > 0 && tok[p + 1..].bytes().all(|c| c.is_ascii_digit()) && p + 1 < tok.len() =>
        {
            (
                &tok[..p],
                Some(tok[p + 1..].parse::<u64>().map_err(|_| bad())?),
            )
        }
        _ => (tok, None),
    };
    let Some(n) = times else {
        out.push(Some(parse_number(base).ok_or_else(bad)?));
        return Ok(());
    };
    // `a+b` or `a-b` (the operator is not a leading sign or an exponent sign).
    let bytes = base.as_bytes();
    let mut op = None;
    for k in 1..bytes.len() {
        if (bytes[k] == b'+' || bytes[k] == b'-') && !matches!(bytes[k - 1], b'e' | b'E') {
            op = Some(k);
            break;
        }
    }
    match op {
        None => {
            let v = parse_number(base).ok_or_else(bad)?;
            out.extend(std::iter::repeat_n(Some(v), n as usize + 1));
        }
        Some(k) => {
            let mut v = parse_number(&base[..k]).ok_or_else(bad)?;
            let mut d = parse_number(&base[k + 1..]).ok_or_else(bad)?;
            if bytes[k] == b'-' {
                d = -d;
            }
            for _ in 0..=n {
                out.push(Some(v));
                v += d;
            }
        }
    }
    Ok(())
}

/// Prometheus's `almost.Equal` with the harness's epsilon.
pub(crate) fn almost_equal(a: f64, b: f64) -> bool {
    const EPS: f64 = 1e-6;
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if is_stale_nan(a) || is_stale_nan(b) {
        return is_stale_nan(a) && is_stale_nan(b);
    }
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < EPS * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < EPS
}

impl EvalCmd {
    /// Whether the query must fail, by either syntax.
    pub fn expect_fail(&self) -> bool {
        self.fail || self.expects.iter().any(|e| e.kind == ExpectKind::Fail)
    }

    /// Whether the result's order matters, by either syntax.
    pub fn is_ordered(&self) -> bool {
        self.ordered || self.expects.iter().any(|e| e.kind == ExpectKind::Ordered)
    }

    /// The Go harness skips the range-mode re-run for these.
    pub fn excluded_from_range_mode(&self) -> bool {
        if self.expect_range.is_some() || matches!(self.expected, Expected::String(_)) {
            return true;
        }
        ["start()", "end()", "range()", "step()"]
            .iter()
            .any(|f| self.expr.contains(f))
    }

    /// Checks an error against `expect fail` expectations.
    pub fn check_failure(&self, got: &str) -> Result<(), (crate::Cause, String)> {
        let wrong = |want: String| {
            Err((
                crate::Cause::WrongError,
                format!("expected error {want}\n got error: {got}"),
            ))
        };
        if let Some(m) = &self.expected_fail_message
            && m != got
        {
            return wrong(format!("{m:?}"));
        }
        if let Some(r) = &self.expected_fail_regexp
            && !r.is_match(got)
        {
            return wrong(format!("matching {:?}", r.as_str()));
        }
        if let Some(e) = self.expects.iter().find(|e| e.kind == ExpectKind::Fail)
            && !e.matches(got)
        {
            return wrong(e.describe());
        }
        Ok(())
    }

    /// Checks warnings and infos as the harness does.
    pub fn check_annotations(&self, warnings: &[String], infos: &[String]) -> Result<(), String> {
        if self.warn && warnings.is_empty() {
            return Err("expected warnings but got none".into());
        }
        if self.info && infos.is_empty() {
            return Err("expected info annotations but got none".into());
        }
        for (kind, actual, name) in [
            (ExpectKind::Warn, warnings, "warn"),
            (ExpectKind::Info, infos, "info"),
        ] {
            let exp: Vec<&Expect> = self.expects.iter().filter(|e| e.kind == kind).collect();
            if exp.is_empty() {
                continue;
            }
            if actual.is_empty() {
                return Err(format!("expected {name} annotations but none were found"));
            }
            for e in &exp {
                if !actual.iter().any(|a| e.matches(a)) {
                    return Err(format!(
                        "expected {name} annotation matching {} but found: {actual:?}",
                        e.describe()
                    ));
                }
            }
            for a in actual {
                if !exp.iter().any(|e| e.matches(a)) {
                    return Err(format!("unexpected {name} annotation {a:?}"));
                }
            }
        }
        if self.expects.iter().any(|e| e.kind == ExpectKind::NoWarn) && !warnings.is_empty() {
            return Err(format!("unexpected warning annotations: {warnings:?}"));
        }
        if self.expects.iter().any(|e| e.kind == ExpectKind::NoInfo) && !infos.is_empty() {
            return Err(format!("unexpected info annotations: {infos:?}"));
        }
        Ok(())
    }

    fn find(&self, labels: &Labels) -> Option<(usize, &Vec<Option<f64>>)> {
        match &self.expected {
            Expected::Series(s) => s
                .iter()
                .enumerate()
                .find(|(_, (l, _))| l == labels)
                .map(|(i, (_, v))| (i, v)),
            _ => None,
        }
    }

    fn expected_len(&self) -> usize {
        match &self.expected {
            Expected::Series(s) => s.len(),
            _ => 0,
        }
    }

    /// Compares a result with the expectation.
    pub fn compare(&self, v: &Value) -> Result<(), String> {
        let f = crate::fmt_f;
        match v {
            Value::Matrix(m) => {
                if self.is_ordered() {
                    return Err("expected ordered result, but query returned a matrix".into());
                }
                if let Expected::Scalar(_) = self.expected {
                    return Err(format!(
                        "expected scalar result, but got {}",
                        crate::describe(v)
                    ));
                }
                for w in m.windows(2) {
                    if w[0].labels > w[1].labels {
                        return Err(format!(
                            "matrix results should always be sorted by labels: {} before {}",
                            w[0].labels, w[1].labels
                        ));
                    }
                }
                let (start, end, step) = self
                    .range
                    .or(self.expect_range)
                    .unwrap_or((self.at, self.at, 0));
                for s in m {
                    let Some((_, vals)) = self.find(&s.labels) else {
                        return Err(format!(
                            "unexpected metric {} in result\n got: {}",
                            s.labels,
                            crate::describe(v)
                        ));
                    };
                    let mut exp = Vec::new();
                    for (i, e) in vals.iter().enumerate() {
                        let ts = start + i as i64 * step;
                        if ts > end {
                            return Err(format!(
                                "expected {} points for {}, but query time range cannot return this many points",
                                vals.len(),
                                s.labels
                            ));
                        }
                        if let Some(e) = e {
                            exp.push((ts, *e));
                        }
                    }
                    if exp.len() != s.samples.len() {
                        return Err(format!(
                            "expected {} points for {}, got {}\n got: {}",
                            exp.len(),
                            s.labels,
                            s.samples.len(),
                            crate::describe(v)
                        ));
                    }
                    for (i, ((t, e), p)) in exp.iter().zip(&s.samples).enumerate() {
                        if *t != p.t {
                            return Err(format!(
                                "expected point {i} of {} at t={t}, got t={}\n got: {}",
                                s.labels,
                                p.t,
                                crate::describe(v)
                            ));
                        }
                        if !almost_equal(p.v, *e) {
                            return Err(format!(
                                "expected {} at t={t} for {}, got {}\n got: {}",
                                f(*e),
                                s.labels,
                                f(p.v),
                                crate::describe(v)
                            ));
                        }
                    }
                }
                let seen = m.iter().filter(|s| self.find(&s.labels).is_some()).count();
                if seen != self.expected_len() {
                    return Err(format!(
                        "expected {} series, got {}\n got: {}",
                        self.expected_len(),
                        seen,
                        crate::describe(v)
                    ));
                }
                Ok(())
            }
            Value::Vector(vs) => {
                if let Expected::Scalar(_) = self.expected {
                    return Err(format!(
                        "expected scalar result, but got {}",
                        crate::describe(v)
                    ));
                }
                for (pos, s) in vs.iter().enumerate() {
                    let Some((epos, vals)) = self.find(&s.labels) else {
                        return Err(format!(
                            "unexpected metric {} in result, has value {}\n got: {}",
                            s.labels,
                            f(s.v),
                            crate::describe(v)
                        ));
                    };
                    if self.is_ordered() && epos != pos {
                        return Err(format!(
                            "expected metric {} at position {} but was at {}",
                            s.labels,
                            epos + 1,
                            pos + 1
                        ));
                    }
                    let e = vals.first().copied().flatten().unwrap_or(f64::NAN);
                    if !almost_equal(e, s.v) {
                        return Err(format!(
                            "expected {} for {} but got {}\n got: {}",
                            f(e),
                            s.labels,
                            f(s.v),
                            crate::describe(v)
                        ));
                    }
                }
                if vs.len() != self.expected_len() {
                    return Err(format!(
                        "expected {} series, got {}\n got: {}",
                        self.expected_len(),
                        vs.len(),
                        crate::describe(v)
                    ));
                }
                Ok(())
            }
            Value::Scalar { v: got, .. } => match self.expected {
                Expected::Scalar(e) => {
                    if almost_equal(e, *got) {
                        Ok(())
                    } else {
                        Err(format!("expected scalar {} but got {}", f(e), f(*got)))
                    }
                }
                _ => Err(format!(
                    "expected vector or matrix result, but got scalar {}",
                    f(*got)
                )),
            },
            Value::String { s, .. } => match &self.expected {
                Expected::String(e) if e == s => Ok(()),
                Expected::String(e) => Err(format!("expected string {e:?} but got {s:?}")),
                _ => Err(format!("unexpected string result {s:?}")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_notation() {
        let (v, h) = parse_values("1 2+3x2 _ stale _x2 -1-1x1 Inf 0x1F 1e3", 1).expect("parses");
        assert!(!h);
        let got: Vec<String> = v
            .iter()
            .map(|x| x.map_or("_".into(), crate::fmt_f))
            .collect();
        assert_eq!(
            got,
            vec![
                "1", "2", "5", "8", "_", "stale", "_", "_", "-1", "-2", "inf", "31", "1000"
            ]
        );
        let (_, h) = parse_values("{{schema:1 sum:3 count:2}}x2 1", 1).expect("parses");
        assert!(h);
    }

    #[test]
    fn metric_and_script() {
        let (l, rest) =
            parse_metric("http_requests{job=\"api\", \"a.b\"=\"x y\"} 1 2", 1).expect("ok");
        assert_eq!(l.get("job"), Some("api"));
        assert_eq!(l.get("a.b"), Some("x y"));
        assert_eq!(rest, "1 2");
        let script = "load 1m\n  a{b=\"c\"} 0+1x5\n\n# comment\neval instant at 5m a\n  expect no_warn\n  a{b=\"c\"} 5\n\neval range from 0 to 2m step 1m a\n  a{b=\"c\"} 0 1 2\n\nclear\n";
        let cmds = parse_script(script).expect("parses");
        assert_eq!(cmds.len(), 4);
        match &cmds[1] {
            Command::Eval(e) => {
                assert_eq!(e.at, 300_000);
                assert_eq!(e.expects.len(), 1);
                assert!(matches!(&e.expected, Expected::Series(s) if s.len() == 1));
            }
            _ => panic!("expected eval"),
        }
        assert!(parse_script("bogus").is_err());
    }

    #[test]
    fn float_comparison() {
        assert!(almost_equal(1.0, 1.0 + 1e-9));
        assert!(!almost_equal(1.0, 1.1));
        assert!(almost_equal(f64::NAN, f64::NAN));
        assert!(!almost_equal(STALE_NAN, f64::NAN));
        assert!(almost_equal(STALE_NAN, STALE_NAN));
        assert!(!almost_equal(0.0, 1e-20));
    }
}
