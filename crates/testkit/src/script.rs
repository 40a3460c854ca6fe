//! Parsing `.test` scripts and checking results against their expectations, as Prometheus's
//! `promql/promqltest/test.go` does.

use std::fmt;

use m3query_model::histogram::{CounterResetHint, Span};
use m3query_model::time::parse_duration;
use m3query_model::{FloatHistogram, Labels, STALE_NAN, is_stale_nan};
use m3query_promql::parser::unquote;
use m3query_promql::{HistogramSeries, Value};
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
    /// Float samples.
    pub samples: Vec<(i64, f64)>,
    /// Native histogram samples.
    pub histograms: Vec<(i64, FloatHistogram)>,
    pub has_histograms: bool,
    /// `(t, st)`: the start timestamp of the sample at `t`, from a `metric@st` line, for the
    /// samples that have one (Prometheus's `ST`; 0 is "unknown" and left out).
    pub start_timestamps: Vec<(i64, i64)>,
}

/// One value of a series in a script: a float or a native histogram.
#[derive(Debug, Clone, PartialEq)]
pub enum SeqValue {
    /// A float (or the staleness marker).
    Float(f64),
    /// A native histogram; `hint_set` when the notation gave `counter_reset_hint` (only
    /// then is the hint compared, as in Prometheus's harness).
    Histogram {
        /// The histogram.
        h: Box<FloatHistogram>,
        /// Whether the counter reset hint was written out.
        hint_set: bool,
    },
}

impl SeqValue {
    /// The float, if this is one.
    pub fn float(&self) -> Option<f64> {
        match self {
            SeqValue::Float(v) => Some(*v),
            SeqValue::Histogram { .. } => None,
        }
    }
}

impl fmt::Display for SeqValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeqValue::Float(v) => f.write_str(&crate::fmt_f(*v)),
            SeqValue::Histogram { h, .. } => f.write_str(&crate::fmt_h(h)),
        }
    }
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
    Series(Vec<(Labels, Vec<Option<SeqValue>>)>),
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
            // A `metric@st` line waiting for its sample line: labels, offsets, line number.
            let mut pending_st: Option<(Labels, Vec<Option<i64>>, usize)> = None;
            i += 1;
            while i < lines.len() && !lines[i].is_empty() {
                let def = &lines[i];
                let space = def.find([' ', '\t']);
                if let Some(sp) = space
                    && def[..sp].ends_with("@st")
                {
                    if let Some((_, _, at)) = pending_st {
                        return Err(err(at, "@st line has no following sample line"));
                    }
                    let (labels, _) = parse_metric(&def[..sp - 3], i + 1)?;
                    let offsets = parse_st_sequence(&def[sp..], i + 1)?;
                    pending_st = Some((labels, offsets, i + 1));
                    i += 1;
                    continue;
                }
                let (labels, rest) = parse_metric(def, i + 1)?;
                let (vals, has_h) = parse_values(rest, i + 1)?;
                let offsets = match pending_st.take() {
                    None => Vec::new(),
                    Some((st_labels, offsets, at)) => {
                        if st_labels != labels {
                            return Err(err(
                                at,
                                "@st metric does not match the following sample line metric",
                            ));
                        }
                        if offsets.len() != vals.len() {
                            return Err(err(
                                at,
                                format!(
                                    "@st line has {} values but sample line has {}",
                                    offsets.len(),
                                    vals.len()
                                ),
                            ));
                        }
                        offsets
                    }
                };
                let mut samples = Vec::with_capacity(vals.len());
                let mut histograms = Vec::new();
                let mut start_timestamps = Vec::new();
                for (k, v) in vals.into_iter().enumerate() {
                    let t = k as i64 * interval_ms;
                    match v {
                        Some(SeqValue::Float(v)) => samples.push((t, v)),
                        Some(SeqValue::Histogram { h, .. }) => histograms.push((t, *h)),
                        None => continue,
                    }
                    if let Some(Some(off)) = offsets.get(k)
                        && t + off != 0
                    {
                        start_timestamps.push((t, t + off));
                    }
                }
                // Redefinition in one load replaces the earlier one.
                series.retain(|s: &LoadSeries| s.labels != labels);
                series.push(LoadSeries {
                    labels,
                    samples,
                    histograms,
                    has_histograms: has_h,
                    start_timestamps,
                });
                i += 1;
            }
            if let Some((_, _, at)) = pending_st {
                return Err(err(at, "@st line has no following sample line"));
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
    let mut series: Vec<(Labels, Vec<Option<SeqValue>>)> = Vec::new();
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

/// Expands series values: numbers, `_`, `_xN`, `stale`, `a+bxN`, `a-bxN`, `axN`, and native
/// histograms `{{...}}` with `{{h}}xN`, `{{h}}+{{d}}xN`, `{{h}}-{{d}}xN`.
/// Returns the values (None: omitted) and whether any was a native histogram.
fn parse_values(s: &str, line: usize) -> Result<(Vec<Option<SeqValue>>, bool), ScriptError> {
    let mut out = Vec::new();
    let mut has_h = false;
    let mut rest = s.trim();
    while !rest.is_empty() {
        if rest.starts_with("{{") {
            has_h = true;
            let (base, hint_set, after) = read_histogram(rest, line)?;
            let tok_end = after.find(char::is_whitespace).unwrap_or(after.len());
            let tok = &after[..tok_end];
            if let Some(times) = tok.strip_prefix('x') {
                let n: usize = times
                    .parse()
                    .map_err(|_| err(line, format!("bad repetition {tok:?}")))?;
                for _ in 0..=n {
                    out.push(Some(SeqValue::Histogram {
                        h: Box::new(base.clone()),
                        hint_set,
                    }));
                }
                rest = after[tok_end..].trim_start();
            } else if let Some(op) = tok.chars().next().filter(|c| *c == '+' || *c == '-') {
                let (inc, inc_hint_set, tail) = read_histogram(&after[1..], line)?;
                let t_end = tail.find(char::is_whitespace).unwrap_or(tail.len());
                let n: usize = tail[..t_end]
                    .strip_prefix('x')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| err(line, "expected xN after a histogram increment"))?;
                // The hint flag of the increment applies to the whole run (as in Prometheus).
                let mut cur = base;
                out.push(Some(SeqValue::Histogram {
                    h: Box::new(cur.clone()),
                    hint_set: inc_hint_set,
                }));
                for _ in 0..n {
                    if cur.schema > inc.schema {
                        return Err(err(
                            line,
                            format!(
                                "error combining histograms: cannot merge from schema {} to {}",
                                inc.schema, cur.schema
                            ),
                        ));
                    }
                    let r = if op == '+' {
                        cur.add(&inc)
                    } else {
                        cur.sub(&inc)
                    };
                    r.map_err(|e| err(line, format!("error combining histograms: {e}")))?;
                    out.push(Some(SeqValue::Histogram {
                        h: Box::new(cur.clone()),
                        hint_set: inc_hint_set,
                    }));
                }
                rest = tail[t_end..].trim_start();
            } else {
                out.push(Some(SeqValue::Histogram {
                    h: Box::new(base),
                    hint_set,
                }));
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

/// Parses the offsets of a `metric@st` line (Prometheus's `parseSTSequence`): one entry per
/// sample position, `None` for `_`. Items: `_`, `_xN`, `<dur>`, `<dur>xN`, `<dur>+<dur>xN`,
/// `<dur>-<dur>xN`, durations signed and in one unit (`-30s`, `+1m`, `-59999ms`, `0`).
fn parse_st_sequence(s: &str, line: usize) -> Result<Vec<Option<i64>>, ScriptError> {
    let mut out = Vec::new();
    for item in s.split_whitespace() {
        let bad = |why: &str| err(line, format!("invalid ST item {item:?}: {why}"));
        let count = |n: &str| -> Result<usize, ScriptError> {
            n.parse::<usize>().map_err(|_| bad("invalid repeat count"))
        };
        if item == "_" {
            out.push(None);
            continue;
        }
        if let Some(n) = item.strip_prefix("_x") {
            let n = count(n)?;
            if n == 0 {
                return Err(bad("invalid repeat count"));
            }
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        let (base, rest) = st_duration_prefix(item).map_err(|e| bad(&e))?;
        if rest.is_empty() {
            out.push(Some(base));
        } else if let Some(n) = rest.strip_prefix('x') {
            out.extend(std::iter::repeat_n(Some(base), count(n)? + 1));
        } else if let Some(sign) = rest.chars().next().filter(|c| *c == '+' || *c == '-') {
            let (delta, tail) = st_duration_prefix(&rest[1..]).map_err(|e| bad(&e))?;
            let delta = if sign == '-' { -delta } else { delta };
            let n = tail
                .strip_prefix('x')
                .ok_or_else(|| bad("expected 'x<count>' after step duration"))?;
            let mut off = base;
            for _ in 0..=count(n)? {
                out.push(Some(off));
                off += delta;
            }
        } else {
            return Err(bad("unexpected character after duration"));
        }
    }
    Ok(out)
}

/// A signed one-unit duration at the start of `s` (ms) and the rest of `s`. The unit stops
/// at `x`, the repeat separator.
fn st_duration_prefix(s: &str) -> Result<(i64, &str), String> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("expected digits in duration {s:?}"));
    }
    let unit = body[digits..]
        .bytes()
        .take_while(|b| b.is_ascii_alphabetic() && *b != b'x')
        .count();
    let end = digits + unit;
    let ms = parse_duration(&body[..end]).map_err(|e| e.to_string())?;
    Ok((if neg { -ms } else { ms }, &body[end..]))
}

/// Reads one `{{...}}` histogram at the start of `s`: the histogram, whether it set
/// `counter_reset_hint`, and the text after `}}`. Buckets are absolute counts; each side's
/// buckets form one span starting at its offset (Prometheus's `buildHistogramFromMap`).
fn read_histogram(s: &str, line: usize) -> Result<(FloatHistogram, bool, &str), ScriptError> {
    let body_start = s
        .strip_prefix("{{")
        .ok_or_else(|| err(line, "expected {{ to start a histogram"))?;
    let end = body_start
        .find("}}")
        .ok_or_else(|| err(line, "unterminated histogram"))?;
    let body = body_start[..end].replace('[', " [ ").replace(']', " ] ");
    let after = &body_start[end + 2..];
    let mut h = FloatHistogram::default();
    let mut hint_set = false;
    let (mut pos, mut neg): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let (mut off, mut noff) = (0i32, 0i32);
    let mut toks = body.split_whitespace().peekable();
    let bad = |what: &str| err(line, format!("bad histogram {what}"));
    let num = |t: Option<&str>, what: &str| -> Result<f64, ScriptError> {
        t.and_then(parse_number).ok_or_else(|| bad(what))
    };
    while let Some(t) = toks.next() {
        let (key, val) = match t.split_once(':') {
            Some((k, "")) => (k, toks.next()),
            Some((k, v)) => (k, Some(v)),
            None => return Err(bad(&format!("field {t:?}"))),
        };
        let mut list = |first: Option<&str>| -> Result<Vec<f64>, ScriptError> {
            if first != Some("[") {
                return Err(bad(&format!("{key} list")));
            }
            let mut v = Vec::new();
            loop {
                match toks.next() {
                    Some("]") => return Ok(v),
                    Some(x) => v.push(parse_number(x).ok_or_else(|| bad(key))?),
                    None => return Err(bad(&format!("{key} list"))),
                }
            }
        };
        match key {
            "schema" => h.schema = num(val, key)? as i32,
            "sum" => h.sum = num(val, key)?,
            "count" => h.count = num(val, key)?,
            "z_bucket" => h.zero_count = num(val, key)?,
            "z_bucket_w" => h.zero_threshold = num(val, key)?,
            "offset" => off = num(val, key)? as i32,
            "n_offset" => noff = num(val, key)? as i32,
            "buckets" => pos = list(val)?,
            "n_buckets" => neg = list(val)?,
            "custom_values" => h.custom_values = list(val)?,
            "counter_reset_hint" => {
                hint_set = true;
                h.counter_reset_hint = match val {
                    Some("unknown") => CounterResetHint::Unknown,
                    Some("reset") => CounterResetHint::CounterReset,
                    Some("not_reset") => CounterResetHint::NotCounterReset,
                    Some("gauge") => CounterResetHint::Gauge,
                    _ => return Err(bad("counter_reset_hint")),
                };
            }
            _ => return Err(bad(&format!("field {key:?}"))),
        }
    }
    if !pos.is_empty() {
        h.positive_spans = vec![Span::new(off, pos.len() as u32)];
    }
    if !neg.is_empty() {
        h.negative_spans = vec![Span::new(noff, neg.len() as u32)];
    }
    h.positive_buckets = pos;
    h.negative_buckets = neg;
    Ok((h, hint_set, after))
}

fn expand_token(
    tok: &str,
    line: usize,
    out: &mut Vec<Option<SeqValue>>,
) -> Result<(), ScriptError> {
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
        out.push(Some(SeqValue::Float(STALE_NAN)));
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
        out.push(Some(SeqValue::Float(parse_number(base).ok_or_else(bad)?)));
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
            out.extend(std::iter::repeat_n(
                Some(SeqValue::Float(v)),
                n as usize + 1,
            ));
        }
        Some(k) => {
            let mut v = parse_number(&base[..k]).ok_or_else(bad)?;
            let mut d = parse_number(&base[k + 1..]).ok_or_else(bad)?;
            if bytes[k] == b'-' {
                d = -d;
            }
            for _ in 0..=n {
                out.push(Some(SeqValue::Float(v)));
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

    fn find(&self, labels: &Labels) -> Option<(usize, &Vec<Option<SeqValue>>)> {
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

    /// Compares a result (float value plus histogram points) with the expectation.
    pub fn compare(&self, v: &Value, hists: &[HistogramSeries]) -> Result<(), String> {
        let got = Got::new(v, hists);
        match v {
            Value::Matrix(fm) => {
                let Got::Matrix(m) = &got else {
                    return Err("internal: matrix expected".into());
                };
                if self.is_ordered() {
                    return Err("expected ordered result, but query returned a matrix".into());
                }
                if let Expected::Scalar(_) = self.expected {
                    return Err(format!("expected scalar result, but got {got}"));
                }
                for w in fm.windows(2) {
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
                for (labels, samples) in m {
                    let Some((_, vals)) = self.find(labels) else {
                        return Err(format!("unexpected metric {labels} in result\n got: {got}"));
                    };
                    let mut exp = Vec::new();
                    for (i, e) in vals.iter().enumerate() {
                        let ts = start + i as i64 * step;
                        if ts > end {
                            return Err(format!(
                                "expected {} points for {}, but query time range cannot return this many points",
                                vals.len(),
                                labels
                            ));
                        }
                        if let Some(e) = e {
                            exp.push((ts, e));
                        }
                    }
                    if exp.len() != samples.len() {
                        return Err(format!(
                            "expected {} points for {}, got {}\n got: {got}",
                            exp.len(),
                            labels,
                            samples.len(),
                        ));
                    }
                    for (i, ((t, e), (pt, pv))) in exp.iter().zip(samples).enumerate() {
                        if t != pt {
                            return Err(format!(
                                "expected point {i} of {labels} at t={t}, got t={pt}\n got: {got}",
                            ));
                        }
                        if !values_match(e, pv) {
                            return Err(format!(
                                "expected {e} at t={t} for {labels}, got {pv}\n got: {got}",
                            ));
                        }
                    }
                }
                let seen = m.iter().filter(|(l, _)| self.find(l).is_some()).count();
                if seen != self.expected_len() {
                    return Err(format!(
                        "expected {} series, got {}\n got: {got}",
                        self.expected_len(),
                        seen,
                    ));
                }
                Ok(())
            }
            Value::Vector(_) => {
                let Got::Vector(vs) = &got else {
                    return Err("internal: vector expected".into());
                };
                if let Expected::Scalar(_) = self.expected {
                    return Err(format!("expected scalar result, but got {got}"));
                }
                for (pos, (labels, val)) in vs.iter().enumerate() {
                    let Some((epos, vals)) = self.find(labels) else {
                        return Err(format!(
                            "unexpected metric {labels} in result, has value {val}\n got: {got}",
                        ));
                    };
                    if self.is_ordered() && epos != pos {
                        return Err(format!(
                            "expected metric {} at position {} but was at {}",
                            labels,
                            epos + 1,
                            pos + 1
                        ));
                    }
                    let e = vals
                        .first()
                        .cloned()
                        .flatten()
                        .unwrap_or(SeqValue::Float(f64::NAN));
                    if !values_match(&e, val) {
                        return Err(format!(
                            "expected {e} for {labels} but got {val}\n got: {got}",
                        ));
                    }
                }
                if vs.len() != self.expected_len() {
                    return Err(format!(
                        "expected {} series, got {}\n got: {got}",
                        self.expected_len(),
                        vs.len(),
                    ));
                }
                Ok(())
            }
            Value::Scalar { v: got, .. } => match self.expected {
                Expected::Scalar(e) => {
                    if almost_equal(e, *got) {
                        Ok(())
                    } else {
                        Err(format!(
                            "expected scalar {} but got {}",
                            crate::fmt_f(e),
                            crate::fmt_f(*got)
                        ))
                    }
                }
                _ => Err(format!(
                    "expected vector or matrix result, but got scalar {}",
                    crate::fmt_f(*got)
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

/// A query result as compared: floats and histograms together.
pub(crate) enum Got {
    /// An instant vector, floats first, then histograms.
    Vector(Vec<(Labels, SeqValue)>),
    /// A matrix: per series (in label order) its points of both kinds in time order.
    Matrix(Vec<(Labels, Vec<(i64, SeqValue)>)>),
    /// Scalars and strings are compared as they are.
    Other,
}

impl Got {
    pub(crate) fn new(v: &Value, hists: &[HistogramSeries]) -> Got {
        let hv = |h: &FloatHistogram| SeqValue::Histogram {
            h: Box::new(h.clone()),
            hint_set: false,
        };
        match v {
            Value::Vector(vs) => {
                let mut out: Vec<(Labels, SeqValue)> = vs
                    .iter()
                    .map(|s| (s.labels.clone(), SeqValue::Float(s.v)))
                    .collect();
                for s in hists {
                    if let Some(p) = s.points.first() {
                        out.push((s.labels.clone(), hv(&p.h)));
                    }
                }
                Got::Vector(out)
            }
            Value::Matrix(ms) => {
                let mut map: std::collections::BTreeMap<Labels, Vec<(i64, SeqValue)>> =
                    std::collections::BTreeMap::new();
                for s in ms {
                    map.entry(s.labels.clone())
                        .or_default()
                        .extend(s.samples.iter().map(|p| (p.t, SeqValue::Float(p.v))));
                }
                for s in hists {
                    map.entry(s.labels.clone())
                        .or_default()
                        .extend(s.points.iter().map(|p| (p.t, hv(&p.h))));
                }
                Got::Matrix(
                    map.into_iter()
                        .map(|(l, mut pts)| {
                            pts.sort_by_key(|p| p.0);
                            (l, pts)
                        })
                        .collect(),
                )
            }
            _ => Got::Other,
        }
    }
}

impl fmt::Display for Got {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Got::Vector(vs) => {
                write!(f, "vector of {}:", vs.len())?;
                for (l, v) in vs.iter().take(20) {
                    write!(f, "\n    {l} {v}")?;
                }
                Ok(())
            }
            Got::Matrix(ms) => {
                write!(f, "matrix of {}:", ms.len())?;
                for (l, pts) in ms.iter().take(20) {
                    write!(f, "\n    {l}")?;
                    for (t, v) in pts.iter().take(30) {
                        write!(f, " {v}@{t}")?;
                    }
                }
                Ok(())
            }
            Got::Other => f.write_str("a scalar or string"),
        }
    }
}

/// Whether a result value matches an expected one: floats with the harness's tolerance,
/// histograms as Prometheus's `compareNativeHistogram` after compacting both.
fn values_match(exp: &SeqValue, got: &SeqValue) -> bool {
    match (exp, got) {
        (SeqValue::Float(e), SeqValue::Float(g)) => almost_equal(*e, *g),
        (SeqValue::Histogram { h: e, hint_set }, SeqValue::Histogram { h: g, .. }) => {
            let mut e = (**e).clone();
            let mut g = (**g).clone();
            e.compact(0);
            g.compact(0);
            histograms_match(&e, &g, *hint_set)
        }
        _ => false,
    }
}

fn histograms_match(e: &FloatHistogram, g: &FloatHistogram, hint_set: bool) -> bool {
    let buckets = |a: &[f64], b: &[f64]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| almost_equal(*x, *y))
    };
    e.schema == g.schema
        && almost_equal(e.count, g.count)
        && almost_equal(e.sum, g.sum)
        && (!e.uses_custom_buckets()
            || m3query_model::histogram::custom_bounds_match(&e.custom_values, &g.custom_values))
        && e.zero_threshold == g.zero_threshold
        && almost_equal(e.zero_count, g.zero_count)
        && spans_match(&e.negative_spans, &g.negative_spans)
        && buckets(&e.negative_buckets, &g.negative_buckets)
        && spans_match(&e.positive_spans, &g.positive_spans)
        && buckets(&e.positive_buckets, &g.positive_buckets)
        && (!hint_set || e.counter_reset_hint == g.counter_reset_hint)
}

/// Prometheus's `spansMatch`: equal once zero-length spans are dropped and adjacent spans
/// (offset 0) are merged.
fn spans_match(a: &[Span], b: &[Span]) -> bool {
    fn norm(s: &[Span]) -> Vec<Span> {
        let mut out: Vec<Span> = Vec::new();
        let mut carry = 0;
        for sp in s {
            if sp.length == 0 {
                carry += sp.offset;
                continue;
            }
            let off = sp.offset + carry;
            carry = 0;
            match out.last_mut() {
                Some(last) if off == 0 => last.length += sp.length,
                _ => out.push(Span::new(off, sp.length)),
            }
        }
        out
    }
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_timestamp_lines() {
        let seq = parse_st_sequence(" _ _x2 -30s-1mx2 +1m 0-1mx1 1ms -59999msx1 -0ms", 1)
            .expect("parses");
        assert_eq!(
            seq,
            vec![
                None,
                None,
                None,
                Some(-30_000),
                Some(-90_000),
                Some(-150_000),
                Some(60_000),
                Some(0),
                Some(-60_000),
                Some(1),
                Some(-59_999),
                Some(-59_999),
                Some(0),
            ]
        );
        for bad in ["_x0", "1m*2", "-1m-", "-1m+1mx", "x3", "-1y2"] {
            assert!(parse_st_sequence(bad, 1).is_err(), "{bad}");
        }
        let script = "load 1m\n    m{a=\"1\"}@st _ -1m -0ms -1s\n    m{a=\"1\"} _ 1 2 3\n";
        let cmds = parse_script(script).expect("parses");
        let Some(Command::Load(load)) = cmds.first() else {
            panic!("a load")
        };
        // Per sample: T + offset. The first sample's ST, 1m - 1m, is 0: "unknown", left out.
        assert_eq!(
            load.series[0].start_timestamps,
            vec![(120_000, 120_000), (180_000, 179_000)]
        );
        for bad in [
            "load 1m\n    m@st -1m\n",
            "load 1m\n    m@st -1m -1m\n    m 1\n",
            "load 1m\n    m@st -1m\n    n 1\n",
        ] {
            assert!(parse_script(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn series_notation() {
        let (v, h) = parse_values("1 2+3x2 _ stale _x2 -1-1x1 Inf 0x1F 1e3", 1).expect("parses");
        assert!(!h);
        let got: Vec<String> = v
            .iter()
            .map(|x| x.as_ref().map_or("_".into(), |x| x.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                "1", "2", "5", "8", "_", "stale", "_", "_", "-1", "-2", "inf", "31", "1000"
            ]
        );
        let (v, h) = parse_values("{{schema:1 sum:3 count:2}}x2 1", 1).expect("parses");
        assert!(h);
        assert_eq!(v.len(), 4);
        let (v, _) = parse_values(
            "{{schema:0 sum:1 count:1 buckets:[1] offset:1 counter_reset_hint:gauge}}+{{sum:2 count:2 buckets:[1 1]}}x2 _ stale",
            1,
        )
        .expect("parses");
        assert_eq!(v.len(), 5);
        match &v[2] {
            Some(SeqValue::Histogram { h, hint_set }) => {
                assert!(!hint_set, "the increment's flag applies");
                assert_eq!(h.count, 5.0);
                assert_eq!(h.sum, 5.0);
                assert_eq!(h.positive_spans, vec![Span::new(0, 2)]);
                assert_eq!(h.positive_buckets, vec![2.0, 3.0]);
                assert_eq!(h.counter_reset_hint, CounterResetHint::Gauge);
            }
            other => panic!("expected a histogram, got {other:?}"),
        }
        let (v, _) = parse_values(
            "{{schema:-53 sum:1 count:1 custom_values:[5 10] buckets:[1] n_buckets:[2] n_offset:-1 z_bucket:3 z_bucket_w:0.5}}",
            1,
        )
        .expect("parses");
        match &v[0] {
            Some(SeqValue::Histogram { h, .. }) => {
                assert_eq!(h.custom_values, vec![5.0, 10.0]);
                assert_eq!(h.negative_spans, vec![Span::new(-1, 1)]);
                assert_eq!((h.zero_count, h.zero_threshold), (3.0, 0.5));
            }
            other => panic!("expected a histogram, got {other:?}"),
        }
        assert!(parse_values("{{schema:1 bogus:2}}", 1).is_err());
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
    fn histogram_comparison_compacts_and_checks_hints() {
        let h = |spans: Vec<Span>, b: Vec<f64>, hint| SeqValue::Histogram {
            h: Box::new(FloatHistogram {
                count: 3.0,
                sum: 1.0,
                positive_spans: spans,
                positive_buckets: b,
                counter_reset_hint: hint,
                ..FloatHistogram::default()
            }),
            hint_set: true,
        };
        let a = h(
            vec![Span::new(0, 3)],
            vec![1.0, 0.0, 2.0],
            CounterResetHint::Unknown,
        );
        let b = h(
            vec![Span::new(0, 1), Span::new(1, 1)],
            vec![1.0, 2.0],
            CounterResetHint::Unknown,
        );
        assert!(values_match(&a, &b));
        let c = h(
            vec![Span::new(0, 1), Span::new(1, 1)],
            vec![1.0, 2.0],
            CounterResetHint::Gauge,
        );
        assert!(!values_match(&a, &c));
        assert!(!values_match(&a, &SeqValue::Float(3.0)));
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
