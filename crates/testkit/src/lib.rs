//! m3query's test kit: a runner for Prometheus's PromQL test scripts (the `promqltest`
//! `.test` format) against m3query's engine and in-memory storage.
//!
//! ```no_run
//! use m3query_testkit::{RunOptions, run_files, write_report};
//! let report = run_files(&["../shared/promqltest/functions.test".into()], &RunOptions::default());
//! write_report(&report, &mut std::io::stdout()).expect("stdout");
//! ```
//!
//! The runner parses each file (`load`, `load_with_nhcb`, `clear`, `eval instant|range`,
//! `eval_fail|warn|info|ordered`, `expect ...` lines, series notation), loads data into a fresh
//! [`MemStorage`], runs every eval with the engine settings the scripts assume (lookback 5m, at
//! most 10,000 samples, experimental functions on, subquery step 1m) and compares results as
//! Prometheus's harness does (relative tolerance 1e-6, NaN equals NaN, staleness markers only
//! equal staleness markers, exact label sets, order only when asked). With
//! [`RunOptions::strict`] it also repeats each instant eval as a range query around its time,
//! as the Go harness does.
//!
//! Native histograms (`{{...}}` notation and `load_with_nhcb` conversions) are loaded into the
//! store beside floats, and histogram results are compared as Prometheus's harness does
//! (both compacted, counter reset hints only when the expectation spells one out).
//!
//! Start timestamps (`metric@st` lines) are loaded beside the samples they belong to, and
//! the engine uses them as Prometheus's does with `UseStartTimestamps` on.
//!
//! Every eval counts once: passed or failed. All evals of a file that does not parse count
//! as failed, with their cause.

mod nhcb;
mod script;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use m3query_promql::{Engine, EngineOptions, QueryOptions, QueryResult, Value};
use m3query_storage::memory::MemStorage;
use m3query_storage::{Appendable, Context};

pub use script::{
    Command, EvalCmd, Expect, ExpectKind, Expected, ScriptError, SeqValue, parse_script,
};

/// How to run scripts.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Also run each instant eval as a range query `[t-1m, t+1m]` step 1m and check the
    /// middle step, as Prometheus's harness does.
    pub strict: bool,
    /// Print every failure (otherwise only the summary and the breakdown).
    pub show_failures: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            strict: true,
            show_failures: true,
        }
    }
}

/// Why an eval failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// The eval reads native histogram series or expects histogram results.
    NativeHistograms,
    /// The file could not be read or parsed, so none of its evals ran.
    ScriptError,
    /// Our parser rejected an expression Prometheus accepts.
    UnsupportedSyntax,
    /// A function or feature the engine refuses.
    Unsupported,
    /// The engine failed where a result was expected.
    EngineError,
    /// The query failed with a different message than expected.
    WrongError,
    /// A failure was expected but the query succeeded.
    MissingError,
    /// Warnings/infos differ from the expectation.
    Annotations,
    /// The result differs.
    WrongResult,
    /// The instant result is right but the range-mode re-run differs.
    RangeMode,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::NativeHistograms => "needs native histograms",
            Cause::ScriptError => "script could not be parsed",
            Cause::UnsupportedSyntax => "unsupported syntax in parser",
            Cause::Unsupported => "unsupported function or feature",
            Cause::EngineError => "engine error",
            Cause::WrongError => "wrong error message",
            Cause::MissingError => "expected failure, got a result",
            Cause::Annotations => "annotations differ",
            Cause::WrongResult => "wrong result",
            Cause::RangeMode => "wrong result in range mode",
        })
    }
}

/// One failed eval.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The script.
    pub file: PathBuf,
    /// The eval's line in the script (1-based).
    pub line: usize,
    /// The evaluated expression.
    pub expr: String,
    /// Why it failed, for the breakdown.
    pub cause: Cause,
    /// Expected and got, as printed in the report.
    pub message: String,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Evals that passed.
    pub passed: usize,
    /// Evals that failed (including those not run).
    pub failed: usize,
    /// Each failed eval, in script order.
    pub failures: Vec<Failure>,
}

impl Report {
    /// Failures counted by cause.
    pub fn by_cause(&self) -> BTreeMap<Cause, usize> {
        let mut m = BTreeMap::new();
        for f in &self.failures {
            *m.entry(f.cause).or_insert(0) += 1;
        }
        m
    }

    /// Evals that failed for a reason other than native histograms.
    pub fn failed_without_histograms(&self) -> usize {
        self.failures
            .iter()
            .filter(|f| !matches!(f.cause, Cause::NativeHistograms))
            .count()
    }

    /// True when every eval passed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// The engine settings Prometheus's test harness uses.
pub fn test_engine() -> Engine {
    Engine::new(EngineOptions {
        lookback_delta_ms: 5 * 60_000,
        max_samples: 10_000,
        enable_experimental_functions: true,
        default_subquery_step_ms: 60_000,
        ..EngineOptions::default()
    })
}

/// Runs every file and returns the combined report.
pub fn run_files(paths: &[PathBuf], opts: &RunOptions) -> Report {
    let mut report = Report::default();
    for p in paths {
        run_file(p, opts, &mut report);
    }
    report
}

/// Runs the scripts at `paths`, writes the report to `w` and returns whether all evals
/// passed. This is what `m3query promqltest PATH...` calls.
pub fn run_and_report(paths: &[PathBuf], opts: &RunOptions, w: &mut dyn Write) -> io::Result<bool> {
    let report = run_files(paths, opts);
    if opts.show_failures {
        write_failures(&report, w)?;
    }
    write_summary(&report, w)?;
    Ok(report.ok())
}

/// Writes each failure (with `file:line`, expected and got), the breakdown by cause and the
/// closing `N passed, M failed` line.
pub fn write_report(report: &Report, w: &mut dyn Write) -> io::Result<()> {
    write_failures(report, w)?;
    write_summary(report, w)
}

fn write_failures(report: &Report, w: &mut dyn Write) -> io::Result<()> {
    for f in &report.failures {
        writeln!(w, "FAIL {}:{}: {}", f.file.display(), f.line, f.expr)?;
        writeln!(w, "  cause: {}", f.cause)?;
        for l in f.message.lines() {
            writeln!(w, "  {l}")?;
        }
    }
    Ok(())
}

fn write_summary(report: &Report, w: &mut dyn Write) -> io::Result<()> {
    writeln!(w)?;
    writeln!(w, "Failures by cause:")?;
    for (cause, n) in report.by_cause() {
        writeln!(w, "  {n:5}  {cause}")?;
    }
    let nh = report.failed - report.failed_without_histograms();
    let considered = report.passed + report.failed - nh;
    if considered > 0 {
        writeln!(
            w,
            "Evals not needing native histograms: {} of {} passed ({:.1}%)",
            report.passed,
            considered,
            100.0 * report.passed as f64 / considered as f64
        )?;
    }
    writeln!(w, "{} passed, {} failed", report.passed, report.failed)
}

fn run_file(path: &Path, opts: &RunOptions, report: &mut Report) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            report.failed += 1;
            report.failures.push(Failure {
                file: path.to_path_buf(),
                line: 0,
                expr: String::new(),
                cause: Cause::ScriptError,
                message: format!("cannot read file: {e}"),
            });
            return;
        }
    };
    let cmds = match parse_script(&text) {
        Ok(c) => c,
        Err(e) => {
            // Count every eval of the file as failed.
            let n = script::count_evals(&text).max(1);
            report.failed += n;
            for (line, expr) in script::eval_lines(&text) {
                report.failures.push(Failure {
                    file: path.to_path_buf(),
                    line,
                    expr,
                    cause: Cause::ScriptError,
                    message: e.to_string(),
                });
            }
            return;
        }
    };
    let mut runner = Runner::new();
    for cmd in cmds {
        match cmd {
            Command::Clear => runner.clear(),
            Command::Load(load) => runner.load(&load),
            Command::Eval(ev) => match runner.eval(&ev, opts) {
                Ok(()) => report.passed += 1,
                Err((cause, message)) => {
                    report.failed += 1;
                    report.failures.push(Failure {
                        file: path.to_path_buf(),
                        line: ev.line,
                        expr: ev.expr.clone(),
                        cause,
                        message,
                    });
                }
            },
        }
    }
}

struct Runner {
    store: MemStorage,
    engine: Engine,
    /// Load problems that make later evals unreliable.
    load_errors: Vec<String>,
}

type EvalResult = Result<(), (Cause, String)>;

impl Runner {
    fn new() -> Self {
        Runner {
            store: MemStorage::new(),
            engine: test_engine(),
            load_errors: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.store.clear();
        self.load_errors.clear();
    }

    fn load(&mut self, load: &script::Load) {
        let mut app = self.store.appender();
        for s in &load.series {
            // Floats and histograms of one series go in time order.
            let mut fi = s.samples.iter().peekable();
            let mut hi = s.histograms.iter().peekable();
            let mut sti = s.start_timestamps.iter().peekable();
            loop {
                let take_float = match (fi.peek(), hi.peek()) {
                    (Some(f), Some(h)) => f.0 <= h.0,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                let (t, r) = if take_float {
                    let Some((t, v)) = fi.next() else { break };
                    (*t, app.append(&s.labels, *t, *v))
                } else {
                    let Some((t, h)) = hi.next() else { break };
                    (*t, app.append_histogram(&s.labels, *t, h))
                };
                // The sample's start timestamp goes right after it.
                let r = r.and_then(|()| {
                    while sti.peek().is_some_and(|(st_t, _)| *st_t < t) {
                        sti.next();
                    }
                    match sti.peek() {
                        Some((st_t, st)) if *st_t == t => {
                            app.append_start_timestamp(&s.labels, t, *st)
                        }
                        _ => Ok(()),
                    }
                });
                if let Err(e) = r {
                    self.load_errors.push(format!("{}: {e}", s.labels));
                }
            }
        }
        if load.with_nhcb {
            for (labels, samples) in nhcb::convert(&load.series) {
                for (t, h) in samples {
                    if let Err(e) = app.append_histogram(&labels, t, &h) {
                        self.load_errors.push(format!("{labels}: {e}"));
                    }
                }
            }
        }
        if let Err(e) = app.commit() {
            self.load_errors.push(e.to_string());
        }
    }

    fn eval(&mut self, ev: &EvalCmd, opts: &RunOptions) -> EvalResult {
        if let Err(e) = m3query_promql::parse(&ev.expr) {
            return Err((Cause::UnsupportedSyntax, format!("parse error: {e}")));
        }
        if ev.range.is_some() {
            return self.run_one(ev, &ev.expr, ev.at, opts);
        }
        // Instant evals: the query itself, then (strict) the same query with `@ <time>` on
        // every selector at other evaluation times, as Prometheus's harness does.
        self.run_one(ev, &ev.expr, ev.at, opts)?;
        if opts.strict
            && let Some(with_at) = at_modifier_variant(&ev.expr, ev.at)
        {
            let times: Vec<i64> = if ev.at == 0 {
                vec![-1000, 0, 1000]
            } else {
                vec![-10 * ev.at, 0, ev.at / 5, ev.at, 10 * ev.at]
            };
            for t in times {
                self.run_one(ev, &with_at, t, opts)
                    .map_err(|(c, m)| (c, format!("with @ modifiers: {with_at} at {t}ms: {m}")))?;
            }
        }
        Ok(())
    }

    fn run_one(&self, ev: &EvalCmd, expr: &str, at: i64, opts: &RunOptions) -> EvalResult {
        let ctx = Context::background();
        let qopts = QueryOptions::default();
        let res = match ev.range {
            Some((start, end, step)) => {
                self.engine
                    .range_query(&self.store, &ctx, expr, start, end, step, &qopts)
            }
            None => self
                .engine
                .instant_query(&self.store, &ctx, expr, at, &qopts),
        };
        let res = match res {
            Err(e) => {
                if ev.expect_fail() {
                    return ev.check_failure(&e.to_string());
                }
                let msg = e.to_string();
                let cause = if msg.contains("not supported") {
                    Cause::Unsupported
                } else {
                    Cause::EngineError
                };
                return Err((cause, format!("expected a result, got error: {msg}")));
            }
            Ok(r) => r,
        };
        if ev.expect_fail() {
            return Err((
                Cause::MissingError,
                format!("expected an error, got {}", describe(&res.value)),
            ));
        }
        ev.check_annotations(&res.warnings, &res.infos)
            .map_err(|m| (Cause::Annotations, m))?;
        ev.compare(&res.value, &res.histograms)
            .map_err(|m| (Cause::WrongResult, m))?;
        if opts.strict && ev.range.is_none() && !ev.excluded_from_range_mode() {
            self.range_mode_check(ev, expr, at, &res)?;
        }
        Ok(())
    }

    /// Prometheus's harness re-runs instant evals as a range query and checks the middle step.
    fn range_mode_check(
        &self,
        ev: &EvalCmd,
        expr: &str,
        at: i64,
        instant: &QueryResult,
    ) -> EvalResult {
        let ctx = Context::background();
        let res = self
            .engine
            .range_query(
                &self.store,
                &ctx,
                expr,
                at - 60_000,
                at + 60_000,
                60_000,
                &QueryOptions::default(),
            )
            .map_err(|e| (Cause::RangeMode, format!("range mode failed: {e}")))?;
        if ev.is_ordered() {
            return Ok(());
        }
        let Value::Matrix(m) = res.value else {
            return Err((
                Cause::RangeMode,
                "range mode did not return a matrix".into(),
            ));
        };
        let mut vec = Vec::new();
        for s in m {
            if let Some(p) = s.samples.iter().find(|p| p.t == at) {
                vec.push(m3query_promql::Sample {
                    labels: s.labels,
                    t_ms: p.t,
                    v: p.v,
                });
            }
        }
        let hists: Vec<m3query_promql::HistogramSeries> = res
            .histograms
            .iter()
            .filter_map(|s| {
                s.points
                    .iter()
                    .find(|p| p.t == at)
                    .map(|p| m3query_promql::HistogramSeries {
                        labels: s.labels.clone(),
                        points: vec![p.clone()],
                    })
            })
            .collect();
        let v = match instant.value {
            Value::Scalar { .. } => Value::Scalar {
                t_ms: at,
                v: vec.first().map_or(f64::NAN, |s| s.v),
            },
            _ => Value::Vector(vec),
        };
        ev.compare(&v, &hists)
            .map_err(|m| (Cause::RangeMode, format!("range mode: {m}")))
    }
}

/// Functions whose result depends on the evaluation time even with `@` on every selector.
const AT_UNSAFE: &[&str] = &[
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "end",
    "hour",
    "minute",
    "month",
    "year",
    "predict_linear",
    "range",
    "start",
    "step",
    "time",
    "timestamp",
];

/// The expression with `@ <t>` on every selector and subquery lacking one (not inside a
/// subquery that has one), printed back; `None` when it uses an @-unsafe function.
fn at_modifier_variant(expr: &str, t: i64) -> Option<String> {
    use m3query_promql::parser::Expr;
    fn set(e: &mut Expr, t: i64, unsafe_fn: &mut bool) {
        match e {
            Expr::VectorSelector(vs) => {
                if vs.timestamp.is_none() && vs.start_or_end.is_none() {
                    vs.timestamp = Some(t);
                }
            }
            Expr::MatrixSelector(ms) => {
                if ms.vs.timestamp.is_none() && ms.vs.start_or_end.is_none() {
                    ms.vs.timestamp = Some(t);
                }
            }
            Expr::Subquery(s) => {
                if s.timestamp.is_none() && s.start_or_end.is_none() {
                    s.timestamp = Some(t);
                }
                // Selectors under a subquery with @ keep theirs; functions still count.
                note_unsafe(&s.expr, unsafe_fn);
            }
            Expr::Call(c) => {
                *unsafe_fn |= AT_UNSAFE.contains(&c.func.name);
                c.args.iter_mut().for_each(|a| set(a, t, unsafe_fn));
            }
            Expr::Aggregate(a) => {
                set(&mut a.expr, t, unsafe_fn);
                if let Some(p) = &mut a.param {
                    set(p, t, unsafe_fn);
                }
            }
            Expr::Binary(b) => {
                set(&mut b.lhs, t, unsafe_fn);
                set(&mut b.rhs, t, unsafe_fn);
            }
            Expr::Paren(i, _) | Expr::StepInvariant(i) => set(i, t, unsafe_fn),
            Expr::Unary { expr, .. } => set(expr, t, unsafe_fn),
            Expr::Number { .. } | Expr::String { .. } => {}
        }
    }
    fn note_unsafe(e: &Expr, unsafe_fn: &mut bool) {
        match e {
            Expr::Call(c) => {
                *unsafe_fn |= AT_UNSAFE.contains(&c.func.name);
                c.args.iter().for_each(|a| note_unsafe(a, unsafe_fn));
            }
            Expr::Aggregate(a) => {
                note_unsafe(&a.expr, unsafe_fn);
                if let Some(p) = &a.param {
                    note_unsafe(p, unsafe_fn);
                }
            }
            Expr::Binary(b) => {
                note_unsafe(&b.lhs, unsafe_fn);
                note_unsafe(&b.rhs, unsafe_fn);
            }
            Expr::Subquery(s) => note_unsafe(&s.expr, unsafe_fn),
            Expr::Paren(i, _) | Expr::StepInvariant(i) => note_unsafe(i, unsafe_fn),
            Expr::Unary { expr, .. } => note_unsafe(expr, unsafe_fn),
            _ => {}
        }
    }
    let mut e = m3query_promql::parse(expr).ok()?;
    let mut unsafe_fn = false;
    set(&mut e, t, &mut unsafe_fn);
    if unsafe_fn {
        return None;
    }
    Some(e.to_string())
}

/// A short description of a result for messages.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Scalar { v, .. } => format!("scalar {}", fmt_f(*v)),
        Value::String { s, .. } => format!("string {s:?}"),
        Value::Vector(vs) => {
            let mut out = format!("vector of {}:", vs.len());
            for s in vs.iter().take(20) {
                out.push_str(&format!("\n    {} {}", s.labels, fmt_f(s.v)));
            }
            out
        }
        Value::Matrix(ms) => {
            let mut out = format!("matrix of {}:", ms.len());
            for s in ms.iter().take(20) {
                let pts: Vec<String> = s
                    .samples
                    .iter()
                    .take(30)
                    .map(|p| format!("{}@{}", fmt_f(p.v), p.t))
                    .collect();
                out.push_str(&format!("\n    {} {}", s.labels, pts.join(" ")));
            }
            out
        }
    }
}

/// A histogram in the scripts' `{{...}}` notation (spans written out), for messages.
pub(crate) fn fmt_h(h: &m3query_model::FloatHistogram) -> String {
    let mut s = format!(
        "{{{{schema:{} count:{} sum:{}",
        h.schema,
        h.count,
        fmt_f(h.sum)
    );
    if h.zero_count != 0.0 || h.zero_threshold != 0.0 {
        s.push_str(&format!(
            " z_bucket:{} z_bucket_w:{}",
            h.zero_count, h.zero_threshold
        ));
    }
    if !h.custom_values.is_empty() {
        s.push_str(&format!(" custom_values:{:?}", h.custom_values));
    }
    if !h.positive_buckets.is_empty() {
        s.push_str(&format!(
            " spans:{:?} buckets:{:?}",
            h.positive_spans
                .iter()
                .map(|s| (s.offset, s.length))
                .collect::<Vec<_>>(),
            h.positive_buckets
        ));
    }
    if !h.negative_buckets.is_empty() {
        s.push_str(&format!(
            " n_spans:{:?} n_buckets:{:?}",
            h.negative_spans
                .iter()
                .map(|s| (s.offset, s.length))
                .collect::<Vec<_>>(),
            h.negative_buckets
        ));
    }
    s.push_str(&format!(" hint:{:?}}}}}", h.counter_reset_hint));
    s
}

pub(crate) fn fmt_f(v: f64) -> String {
    if m3query_model::is_stale_nan(v) {
        "stale".into()
    } else {
        format!("{v}")
    }
}
