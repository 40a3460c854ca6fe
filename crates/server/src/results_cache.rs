//! A results cache for range queries: a dashboard refreshing a moving window recomputes only
//! the new tail, and the answer stays byte-identical to an uncached one.
//!
//! The shape follows Cortex's and Thanos's query-frontend: results are kept per query (text,
//! step, lookback) and per split interval (`query.resultsCache.splitInterval`, aligned to the
//! Unix epoch), each as a list of *extents* (here [`Part`]s: the steps `[start, end]` computed
//! once). A request takes what its window needs from the extents, evaluates the missing
//! ranges, and merges. Differences that keep answers identical to uncached ones:
//!
//! - Only queries whose start and end are multiples of their step are cached (as Grafana
//!   sends them): their steps lie on one grid, so a step's value does not depend on the
//!   window around it. Thanos aligns other windows, which changes the answer, so they are
//!   answered uncached here.
//! - What is cached is the encoded JSON of each series' points, with their timestamps: the
//!   refresh of a panel with many series costs a copy, not a re-encoding.
//! - Steps newer than now minus `freshness` are never cached. A write into the embedded store
//!   ([`ResultsCache::watch`] on the remote-write path) drops every cached part whose last
//!   step is at or after the write's oldest sample (a sample can only change steps at or after
//!   its own time, once `@` and negative offsets are excluded), and queries in flight that
//!   read before the write do not store what they computed. remoteRead stores cannot report
//!   late writes: for them only the freshness window protects.
//! - Queries whose value at a step depends on the query's window bypass the cache: `@` (and
//!   so `@ start()`/`end()`), negative or computed offsets, `range()`/`step()` durations,
//!   `anchored`/`smoothed` windows, `sort*` (which warn only in multi-step queries) and
//!   `info()`.
//! - Everything the uncached engine reports besides values is reproduced or the answer is
//!   computed uncached: annotations (kept per part, and a part cut to fewer steps may only
//!   contribute annotations that an uncut part confirms), the series count of
//!   `M3-Series-Count` (series keys with their sample spans, so a cut part counts only
//!   series with samples in its window), and the limits: an answer that would reach
//!   `max_fetched_series` (and so be truncated or refused), or come near `max_samples`, is
//!   recomputed uncached, and so is anything with a storage warning (partial responses).
//!
//! Memory is bounded by `maxBytes`, least recently used entries first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use m3query_model::{LabelPairs, Labels, Matcher, Sample};
use m3query_promql::parser::{self, DurationExpr, Expr};
use m3query_promql::{Engine, QueryOptions, QueryResult, Value};
use m3query_storage::{
    Appender, Context, HistogramSample, LabelHints, LabelValues, Querier, Queryable,
    SampleIterator, SelectHints, Series, SeriesSet, Warnings,
};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::api::query::{write_hpoint, write_labels, write_strs, write_ts, write_val};
use crate::config::ResultsCacheConfig;
use crate::metrics::MetricsRegistry;

/// Milliseconds since the Unix epoch, from an injectable clock (tests and benches move time).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    })
}

/// Settings from `query.resultsCache`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Memory bound of the cached results.
    pub max_bytes: usize,
    /// Length of the intervals (from the Unix epoch) results are cached in.
    pub split_ms: i64,
    /// Steps newer than now minus this are never cached.
    pub freshness_ms: i64,
}

impl Settings {
    /// The settings of `query.resultsCache`.
    pub fn from_config(c: &ResultsCacheConfig) -> Settings {
        Settings {
            max_bytes: usize::try_from(c.max_bytes.0).unwrap_or(usize::MAX),
            split_ms: c.split_interval.as_millis_i64().max(1),
            freshness_ms: c.freshness.as_millis_i64(),
        }
    }
}

/// Most parts one entry keeps: parts that cannot merge (their annotations differ) would
/// otherwise pile up one per refresh.
const MAX_PARTS: usize = 64;

/// The cache's metrics.
#[derive(Clone, Debug, Default)]
pub struct CacheMetrics {
    queries: Family<OutcomeLabels, Counter>,
    hits: Counter,
    misses: Counter,
    bytes: Gauge,
    entries: Gauge,
    evictions: Counter,
    invalidations: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

impl CacheMetrics {
    /// Adds the metrics to the server's registry.
    pub fn register(&self, r: &mut MetricsRegistry) {
        r.register(
            "m3query_results_cache_queries",
            "Range queries by what the results cache did: hit (all from cache), partial (cached and computed parts), miss (all computed), bypass (not cacheable or nocache), fallback (recomputed uncached to match an uncached answer)",
            self.queries.clone(),
        );
        r.register(
            "m3query_results_cache_hits",
            "Cached parts (extents) used in answers",
            self.hits.clone(),
        );
        r.register(
            "m3query_results_cache_misses",
            "Step ranges evaluated because no cached part had them",
            self.misses.clone(),
        );
        r.register(
            "m3query_results_cache_bytes",
            "Memory held by cached results (estimate)",
            self.bytes.clone(),
        );
        r.register(
            "m3query_results_cache_entries",
            "Cached (query, split interval) entries",
            self.entries.clone(),
        );
        r.register(
            "m3query_results_cache_evictions",
            "Entries evicted to stay within query.resultsCache.maxBytes",
            self.evictions.clone(),
        );
        r.register(
            "m3query_results_cache_invalidations",
            "Cached parts dropped because a write reached into them (late or out-of-order samples) or the store's data was deleted",
            self.invalidations.clone(),
        );
    }

    fn outcome(&self, outcome: &'static str) {
        self.queries.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// A range query as the API received it.
#[derive(Clone, Debug)]
pub struct RangeRequest {
    /// The expression, as written.
    pub query: String,
    /// First step, ms.
    pub start_ms: i64,
    /// Last step at or before this, ms.
    pub end_ms: i64,
    /// Step, ms (positive).
    pub step_ms: i64,
}

/// What identifies cached results besides the split interval: everything that changes a
/// step's value. The text is kept as written, not normalized: annotations carry `line:col`
/// positions in it, so two spellings of one query do not give identical answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct QueryKey {
    query: String,
    step_ms: i64,
    lookback_ms: i64,
}

type EntryKey = (Arc<QueryKey>, i64);

/// One series of a part: its points encoded as the API encodes them (`[t,"v"],[t,"v"]`),
/// with each point's timestamp and byte offset so the part can be cut to fewer steps.
#[derive(Debug)]
struct PartSeries {
    labels: Labels,
    /// The series' native histogram points (its float points are another `PartSeries`
    /// with the same labels, just before it): parts keep series ordered by labels, floats
    /// first.
    hist: bool,
    ts: Vec<i64>,
    off: Vec<u32>,
    text: String,
}

impl PartSeries {
    /// The bytes of the points with `x <= t <= y`, if any.
    fn slice(&self, x: i64, y: i64) -> Option<(u32, u32)> {
        let lo = self.ts.partition_point(|t| *t < x);
        let hi = self.ts.partition_point(|t| *t <= y);
        if lo >= hi {
            return None;
        }
        let end = if hi < self.off.len() {
            // Without the comma before the next point.
            self.off[hi] - 1
        } else {
            u32::try_from(self.text.len()).unwrap_or(u32::MAX)
        };
        Some((self.off[lo], end))
    }
}

/// A series a part's evaluation fetched: `key` hashes the select it came from with its
/// labels (the engine counts series per select), `runs` are where its decoded samples are:
/// sorted, each run's samples less than the select's window apart, so any window of the
/// select that meets a run holds a sample (none: fetched, but no sample decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeySpan {
    key: u64,
    ord: u32,
    runs: Vec<(i64, i64)>,
}

impl KeySpan {
    /// Whether a sample lies in `[lo, hi]`, a window at least as wide as the select's.
    fn any_in(&self, lo: i64, hi: i64) -> bool {
        let i = self.runs.partition_point(|r| r.1 < lo);
        self.runs.get(i).is_some_and(|r| r.0 <= hi)
    }
}

/// Sorts `runs` and joins those closer than `window` ms.
fn join_runs(runs: &mut Vec<(i64, i64)>, window: i64) {
    runs.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(runs.len());
    for &(a, b) in runs.iter() {
        match out.last_mut() {
            Some(last) if a - last.1 < window => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *runs = out;
}

/// The width of a select's window from its deltas (see [`Part::deltas`]).
fn window_of(deltas: &[(i64, i64)], ord: u32) -> i64 {
    deltas
        .get(ord as usize)
        .map_or(1, |(lo, hi)| (lo - hi + 1).max(1))
}

/// Steps `[start, end]` of one query, evaluated once.
#[derive(Debug)]
struct Part {
    start: i64,
    end: i64,
    step: i64,
    series: Vec<PartSeries>,
    warnings: Vec<String>,
    infos: Vec<String>,
    /// Sorted by key.
    keys: Vec<KeySpan>,
    /// Per select (in order): how far below the part's first step and below its last step
    /// the select read, so a key's span can be checked against a cut part's window.
    deltas: Vec<(i64, i64)>,
    /// Samples decoded at or after the first step's own window (`(t - step, t]` shifted by
    /// the selector's offset), and before it: parts that follow each other add up their
    /// `own` samples to what one evaluation over both would decode, plus the first `head`.
    own: u64,
    head: u64,
    /// Steps and peak points held of the largest evaluation this part came from: its
    /// density estimates what one evaluation over a whole window would hold (small tails
    /// overstate it with their fixed costs).
    eval_steps: i64,
    eval_peak: usize,
    /// The store's oldest timestamp when the part was computed: retention moving it forward
    /// deletes data the part may have used.
    min_time: Option<i64>,
    bytes: usize,
}

impl Part {
    fn steps(&self) -> i64 {
        (self.end - self.start) / self.step + 1
    }

    fn compute_bytes(&mut self) {
        let series: usize = self
            .series
            .iter()
            .map(|s| {
                s.labels.byte_size()
                    + s.ts.len() * 12
                    + s.text.len()
                    + std::mem::size_of::<PartSeries>()
            })
            .sum();
        let strings: usize = self
            .warnings
            .iter()
            .chain(&self.infos)
            .map(String::len)
            .sum();
        self.bytes = std::mem::size_of::<Part>()
            + series
            + strings
            + self
                .keys
                .iter()
                .map(|k| std::mem::size_of::<KeySpan>() + k.runs.len() * 16)
                .sum::<usize>()
            + self.deltas.len() * 16;
    }

    /// Both parts' steps as one part (`self` first, `next` adjacent after it).
    fn merge(&self, next: &Part) -> Part {
        let mut series = Vec::with_capacity(self.series.len().max(next.series.len()));
        let (mut i, mut j) = (0, 0);
        while i < self.series.len() || j < next.series.len() {
            let ord = match (self.series.get(i), next.series.get(j)) {
                (Some(a), Some(b)) => a.labels.cmp(&b.labels).then(a.hist.cmp(&b.hist)),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    series.push(copy_series(&self.series[i]));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    series.push(copy_series(&next.series[j]));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (a, b) = (&self.series[i], &next.series[j]);
                    let mut text = String::with_capacity(a.text.len() + 1 + b.text.len());
                    text.push_str(&a.text);
                    text.push(',');
                    let shift = u32::try_from(text.len()).unwrap_or(u32::MAX);
                    text.push_str(&b.text);
                    let mut off = Vec::with_capacity(a.off.len() + b.off.len());
                    off.extend_from_slice(&a.off);
                    off.extend(b.off.iter().map(|o| o + shift));
                    let mut ts = Vec::with_capacity(a.ts.len() + b.ts.len());
                    ts.extend_from_slice(&a.ts);
                    ts.extend_from_slice(&b.ts);
                    series.push(PartSeries {
                        labels: a.labels.clone(),
                        hist: a.hist,
                        ts,
                        off,
                        text,
                    });
                    i += 1;
                    j += 1;
                }
            }
        }
        let mut keys = Vec::with_capacity(self.keys.len().max(next.keys.len()));
        let (mut i, mut j) = (0, 0);
        while i < self.keys.len() || j < next.keys.len() {
            match (self.keys.get(i), next.keys.get(j)) {
                (Some(a), Some(b)) if a.key == b.key => {
                    let mut runs = a.runs.clone();
                    runs.extend_from_slice(&b.runs);
                    join_runs(&mut runs, window_of(&self.deltas, a.ord));
                    keys.push(KeySpan {
                        key: a.key,
                        ord: a.ord,
                        runs,
                    });
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a.key < b.key => {
                    keys.push(a.clone());
                    i += 1;
                }
                (Some(a), None) => {
                    keys.push(a.clone());
                    i += 1;
                }
                (_, Some(b)) => {
                    keys.push(b.clone());
                    j += 1;
                }
                (None, None) => break,
            }
        }
        let mut deltas = self.deltas.clone();
        if next.deltas.len() > deltas.len() {
            deltas.extend_from_slice(&next.deltas[deltas.len()..]);
        }
        let mut p = Part {
            start: self.start,
            end: next.end,
            step: self.step,
            series,
            warnings: self.warnings.clone(),
            infos: self.infos.clone(),
            keys,
            deltas,
            own: self.own + next.own,
            head: self.head,
            eval_steps: if next.eval_steps > self.eval_steps {
                next.eval_steps
            } else {
                self.eval_steps
            },
            eval_peak: if next.eval_steps > self.eval_steps {
                next.eval_peak
            } else {
                self.eval_peak
            },
            // The older of the two, so a deletion since either was computed drops both.
            min_time: self.min_time.min(next.min_time),
            bytes: 0,
        };
        p.compute_bytes();
        p
    }
}

fn copy_series(s: &PartSeries) -> PartSeries {
    PartSeries {
        labels: s.labels.clone(),
        hist: s.hist,
        ts: s.ts.clone(),
        off: s.off.clone(),
        text: s.text.clone(),
    }
}

/// The parts of one (query, split interval), sorted by start, not overlapping.
#[derive(Debug, Default)]
struct Entry {
    parts: Vec<Arc<Part>>,
    tick: u64,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<EntryKey, Entry>,
    /// Entries by last use, oldest first.
    lru: BTreeMap<u64, EntryKey>,
    tick: u64,
    bytes: usize,
    /// The last step of any cached part: writes after it change nothing cached.
    max_end: i64,
    /// Queries evaluating now, with the oldest sample written since each started: what
    /// they computed from data read before such a write must not be stored.
    in_flight: HashMap<u64, i64>,
    next_id: u64,
    /// Queries whose parts do not add up (they read less than a step before each step):
    /// answered uncached from then on.
    gappy: HashSet<Arc<QueryKey>>,
}

impl Inner {
    fn remember_gappy(&mut self, key: &Arc<QueryKey>) {
        // Bounded: forgetting only costs one more split evaluation.
        if self.gappy.len() >= 4096 {
            self.gappy.clear();
        }
        self.gappy.insert(key.clone());
    }
}

/// The cache. One per server; cheap to share behind an `Arc`.
pub struct ResultsCache {
    settings: Settings,
    clock: Clock,
    inner: Mutex<Inner>,
    metrics: CacheMetrics,
}

impl std::fmt::Debug for ResultsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultsCache")
            .field("settings", &self.settings)
            .finish()
    }
}

/// An answer: the engine's result, or one assembled from cached and new parts.
#[derive(Debug)]
pub enum Answer {
    /// Evaluated whole by the engine: not cacheable, or only an uncached answer is right.
    Computed(QueryResult),
    /// Joined from cached and newly computed parts.
    Assembled(Assembled),
}

/// A matrix assembled from parts, ready to encode.
#[derive(Debug)]
pub struct Assembled {
    parts: Vec<Arc<Part>>,
    series: Vec<AssembledSeries>,
    /// The answer's warnings, as the engine renders them.
    pub warnings: Vec<String>,
    /// The answer's infos, as the engine renders them.
    pub infos: Vec<String>,
    /// What the uncached engine would report as `series_fetched` (`M3-Series-Count`).
    pub series_fetched: usize,
    /// An estimate of the samples the uncached engine would decode.
    pub samples_fetched: usize,
}

/// Where a fragment of a series' points is: part, series in the part, byte range of its
/// text.
type Frag = (u32, u32, u32, u32);

#[derive(Debug)]
struct AssembledSeries {
    labels: Labels,
    /// Histogram points (after the float points of the same labels, if any).
    hist: bool,
    frags: Vec<Frag>,
}

impl Assembled {
    /// Series in the answer.
    pub fn series_count(&self) -> usize {
        self.series.len()
            - self
                .series
                .windows(2)
                .filter(|w| w[0].labels == w[1].labels)
                .count()
    }

    /// The response body, byte for byte what the uncached answer encodes to.
    pub fn write_body(&self, out: &mut String) {
        out.reserve(self.body_len());
        self.emit(out, &mut |out, text, _| out.push_str(text));
    }

    /// Length of the body in bytes.
    pub fn body_len(&self) -> usize {
        let mut n = 0;
        let mut scratch = String::new();
        self.emit(&mut scratch, &mut |_, text, _| n += text.len());
        n + scratch.len()
    }

    /// The body as chunks that share the cached points' text rather than copy it: a
    /// refreshed panel of many series is mostly cached text, and copying it would cost a
    /// good part of what the cache saves. Concatenated, the chunks are [`Self::write_body`].
    pub fn into_chunks(self) -> Vec<bytes::Bytes> {
        /// Fragments shorter than this are copied: a chunk of its own costs more.
        const SHARE_FROM: usize = 2048;
        let mut chunks: Vec<bytes::Bytes> = Vec::new();
        let mut out = String::with_capacity(8192);
        self.emit(&mut out, &mut |out, text, at| {
            let Some((p, si, a, b)) = at.filter(|_| text.len() >= SHARE_FROM) else {
                out.push_str(text);
                return;
            };
            if !out.is_empty() {
                chunks.push(bytes::Bytes::from(std::mem::take(out)));
            }
            let owner = SeriesText(self.parts[p as usize].clone(), si as usize);
            chunks.push(bytes::Bytes::from_owner(owner).slice(a as usize..b as usize));
        });
        if !out.is_empty() {
            chunks.push(bytes::Bytes::from(out));
        }
        chunks
    }

    /// Writes the body's own bytes (punctuation, labels, annotations) to `out` and passes
    /// every cached fragment to `text`, with where it comes from (part, series, bytes).
    fn emit(&self, out: &mut String, text: &mut dyn FnMut(&mut String, &str, Option<Frag>)) {
        out.push_str("{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\",\"result\":[");
        for (i, s) in self.series.iter().enumerate() {
            // A series' histogram points join the object of its float points, as the
            // uncached answer writes them (`values` then `histograms`).
            let joins = s.hist && i > 0 && self.series[i - 1].labels == s.labels;
            if joins {
                out.truncate(out.len() - 1);
            } else {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, &s.labels);
            }
            out.push_str(if s.hist {
                ",\"histograms\":["
            } else {
                ",\"values\":["
            });
            for (j, &(p, si, a, b)) in s.frags.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                let series = &self.parts[p as usize].series[si as usize];
                text(
                    out,
                    &series.text[a as usize..b as usize],
                    Some((p, si, a, b)),
                );
            }
            out.push_str("]}");
        }
        out.push_str("]}");
        write_strs(out, "warnings", &self.warnings);
        write_strs(out, "infos", &self.infos);
        out.push('}');
    }
}

/// One cached series' text, as the owner of the body chunks that share it.
struct SeriesText(Arc<Part>, usize);

impl AsRef<[u8]> for SeriesText {
    fn as_ref(&self) -> &[u8] {
        self.0.series.get(self.1).map_or(&[], |s| s.text.as_bytes())
    }
}

/// Why a query is not cacheable, for the span and metrics.
fn uncacheable(expr: &Expr) -> Option<&'static str> {
    fn dur_bad(d: &Option<DurationExpr>) -> bool {
        d.as_ref().is_some_and(DurationExpr::has_step_or_range)
    }
    fn selector_bad(vs: &parser::VectorSelector) -> Option<&'static str> {
        if vs.timestamp.is_some() || vs.start_or_end.is_some() {
            return Some("at_modifier");
        }
        if vs.original_offset_ms < 0 || vs.offset_expr.is_some() {
            return Some("offset");
        }
        if vs.anchored || vs.smoothed {
            return Some("extended_range");
        }
        None
    }
    // Iterative: operator chains may be far deeper than this thread's stack allows.
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        match e {
            Expr::Aggregate(a) => {
                stack.push(&a.expr);
                if let Some(p) = &a.param {
                    stack.push(p);
                }
            }
            Expr::Binary(b) => {
                stack.push(&b.lhs);
                stack.push(&b.rhs);
            }
            Expr::Call(c) => {
                if matches!(
                    c.func.name,
                    "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc" | "info"
                ) {
                    return Some("function");
                }
                stack.extend(c.args.iter());
            }
            Expr::MatrixSelector(m) => {
                if dur_bad(&m.range_expr) {
                    return Some("duration_expression");
                }
                if let Some(why) = selector_bad(&m.vs) {
                    return Some(why);
                }
            }
            Expr::VectorSelector(vs) => {
                if let Some(why) = selector_bad(vs) {
                    return Some(why);
                }
            }
            Expr::Subquery(sq) => {
                if sq.timestamp.is_some() || sq.start_or_end.is_some() {
                    return Some("at_modifier");
                }
                if sq.original_offset_ms < 0 || sq.offset_expr.is_some() {
                    return Some("offset");
                }
                if dur_bad(&sq.range_expr) || dur_bad(&sq.step_expr) {
                    return Some("duration_expression");
                }
                stack.push(&sq.expr);
            }
            Expr::Paren(inner, _) => stack.push(inner),
            Expr::Unary { expr, .. } => stack.push(expr),
            Expr::StepInvariant(_) => return Some("at_modifier"),
            Expr::Number { .. } | Expr::String { .. } => {}
        }
    }
    None
}

/// The first grid step at or after `t`.
fn grid_ceil(t: i64, step: i64) -> i64 {
    let q = t.div_euclid(step);
    if q * step < t {
        (q + 1) * step
    } else {
        q * step
    }
}

/// The last grid step at or before `t`.
fn grid_floor(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

/// A range of steps of the answer: from a cached part, or to compute.
#[derive(Debug)]
enum Seg {
    Cached {
        part: Arc<Part>,
        x: i64,
        y: i64,
    },
    Compute {
        x: i64,
        y: i64,
        interval: i64,
        store: bool,
    },
}

/// Removes this query from the in-flight set when it ends, however it ends.
struct InFlight<'a> {
    cache: &'a ResultsCache,
    id: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.cache.inner.lock().in_flight.remove(&self.id);
    }
}

/// The outcome of a cache run, for the span.
#[derive(Default)]
struct Report {
    hits: usize,
    misses: usize,
    cached_steps: i64,
    computed_steps: i64,
    extents: String,
}

impl ResultsCache {
    /// An empty cache reading the wall clock.
    pub fn new(settings: Settings, metrics: CacheMetrics) -> ResultsCache {
        ResultsCache {
            settings,
            clock: system_clock(),
            inner: Mutex::new(Inner {
                max_end: i64::MIN,
                ..Inner::default()
            }),
            metrics,
        }
    }

    /// The same cache reading time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> ResultsCache {
        self.clock = clock;
        self
    }

    /// What the cache was configured with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Counts a query the API answered without the cache (`nocache`, `stats`).
    pub fn bypassed(&self) {
        self.metrics.outcome("bypass");
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Wraps a write transaction so that its commit invalidates what it reaches into.
    pub fn watch<'a>(&'a self, inner: Box<dyn Appender + 'a>) -> Box<dyn Appender + 'a> {
        Box::new(WatchedAppender {
            inner,
            cache: self,
            min_t: i64::MAX,
        })
    }

    /// A write with samples at or after `min_t` became visible: cached parts with steps at or
    /// after it are dropped, and queries in flight will not store such parts.
    pub fn note_write(&self, min_t: i64) {
        if min_t == i64::MAX {
            return;
        }
        let mut inner = self.inner.lock();
        for w in inner.in_flight.values_mut() {
            *w = (*w).min(min_t);
        }
        if min_t > inner.max_end {
            return;
        }
        let inner = &mut *inner;
        let mut dropped = 0u64;
        let mut emptied = Vec::new();
        let mut max_end = i64::MIN;
        for (k, e) in inner.entries.iter_mut() {
            let before = e.parts.len();
            e.parts.retain(|p| p.end < min_t);
            dropped += (before - e.parts.len()) as u64;
            e.bytes = entry_bytes(k, &e.parts);
            match e.parts.last() {
                Some(p) => max_end = max_end.max(p.end),
                None => emptied.push((k.clone(), e.tick)),
            }
        }
        for (k, tick) in emptied {
            inner.entries.remove(&k);
            inner.lru.remove(&tick);
        }
        inner.max_end = max_end;
        inner.bytes = inner.entries.values().map(|e| e.bytes).sum();
        self.metrics.invalidations.inc_by(dropped);
        self.gauges(inner);
    }

    fn gauges(&self, inner: &Inner) {
        self.metrics
            .bytes
            .set(i64::try_from(inner.bytes).unwrap_or(i64::MAX));
        self.metrics
            .entries
            .set(i64::try_from(inner.entries.len()).unwrap_or(i64::MAX));
    }

    /// Answers a range query from the cache where it can, computing the rest with `engine`
    /// over `queryable`, and stores what it computed.
    pub fn range_query(
        &self,
        engine: &Engine,
        queryable: &dyn Queryable,
        ctx: &Context,
        req: &RangeRequest,
        opts: &QueryOptions,
    ) -> m3query_promql::Result<Answer> {
        // The lookup span ends before any evaluation: the engine's phase spans are its
        // siblings under the request, not its children.
        let uncached = |outcome: &'static str, span: tracing::Span| {
            drop(span);
            self.metrics.outcome(outcome);
            engine
                .range_query(
                    queryable,
                    ctx,
                    &req.query,
                    req.start_ms,
                    req.end_ms,
                    req.step_ms,
                    opts,
                )
                .map(Answer::Computed)
        };
        let span = tracing::debug_span!(
            "cache.lookup",
            hits = tracing::field::Empty,
            misses = tracing::field::Empty,
            cached_steps = tracing::field::Empty,
            computed_steps = tracing::field::Empty,
            extents = tracing::field::Empty,
            bypass = tracing::field::Empty,
        );
        let step = req.step_ms;
        // Times beyond Prometheus's range are clamped by the engine, which moves its steps
        // off the grid; within it, the arithmetic here cannot overflow.
        if step <= 0
            || req.end_ms < req.start_ms
            || req.start_ms < m3query_model::time::MIN_TIME_MS
            || req.end_ms > m3query_model::time::MAX_TIME_MS
            || req.start_ms.rem_euclid(step) != 0
            // The engine reads up to `end` even past the last step: on the grid, the parts'
            // reads add up to the uncached query's.
            || req.end_ms.rem_euclid(step) != 0
            || opts.enable_stats
        {
            span.record("bypass", "unaligned");
            return uncached("bypass", span);
        }
        let parse_opts = parser::ParseOptions {
            experimental_functions: engine.options().enable_experimental_functions,
            ..Default::default()
        };
        // On a deep stack, as the engine parses: a deep tree's parse and drop recurse.
        let why = m3query_promql::deep::run(|| {
            Ok::<_, m3query_promql::Error>(match parser::parse_with(&req.query, parse_opts) {
                Ok(expr) => uncacheable(&expr),
                // The engine reports the error.
                Err(_) => Some("parse"),
            })
        })
        .unwrap_or(Some("parse"));
        if let Some(why) = why {
            span.record("bypass", why);
            return uncached("bypass", span);
        }
        let steps = (req.end_ms - req.start_ms) / step;
        if usize::try_from(steps).map_or(true, |n| n >= engine.options().max_samples) {
            // The engine refuses it whole; pieces would each pass.
            span.record("bypass", "limits");
            return uncached("bypass", span);
        }
        let last = req.start_ms + steps * step;
        let now = (self.clock)();
        let cacheable_end = grid_floor(now.saturating_sub(self.settings.freshness_ms), step);
        if cacheable_end < req.start_ms {
            // All of it is fresh: nothing to reuse or store.
            return uncached("miss", span);
        }
        let key = Arc::new(QueryKey {
            query: req.query.clone(),
            step_ms: step,
            lookback_ms: opts
                .lookback_delta_ms
                .filter(|l| *l > 0)
                .unwrap_or(engine.options().lookback_delta_ms),
        });
        if self.inner.lock().gappy.contains(&key) {
            span.record("bypass", "gappy");
            return uncached("bypass", span);
        }
        let min_time = queryable.min_time();
        let flight = self.register();
        let segs = {
            let _g = span.enter();
            self.plan(&key, req.start_ms, last, step, cacheable_end, min_time)
        };
        let mut report = Report::default();
        for s in &segs {
            match s {
                Seg::Cached { x, y, .. } => {
                    report.hits += 1;
                    report.cached_steps += (y - x) / step + 1;
                    if !report.extents.is_empty() {
                        report.extents.push(' ');
                    }
                    report.extents.push_str(&format!("{x}..{y}"));
                }
                Seg::Compute { x, y, .. } => {
                    report.misses += 1;
                    report.computed_steps += (y - x) / step + 1;
                }
            }
        }
        span.record("hits", count(report.hits));
        span.record("misses", count(report.misses));
        span.record("cached_steps", report.cached_steps);
        span.record("computed_steps", report.computed_steps);
        span.record("extents", report.extents.as_str());
        drop(span);
        self.metrics.hits.inc_by(report.hits as u64);
        self.metrics.misses.inc_by(report.misses as u64);

        // Evaluate what is missing, each range on its own so its part holds exactly the
        // figures of its steps.
        let mut parts: Vec<(Arc<Part>, i64, i64)> = Vec::with_capacity(segs.len());
        let mut to_store: Vec<(i64, Arc<Part>)> = Vec::new();
        let whole_window = segs.len() == 1;
        for s in segs {
            match s {
                Seg::Cached { part, x, y } => parts.push((part, x, y)),
                Seg::Compute {
                    x,
                    y,
                    interval,
                    store,
                } => {
                    let part =
                        match self.evaluate(engine, queryable, ctx, req, opts, x, y, min_time) {
                            Ok(Ok(p)) => Arc::new(p),
                            Ok(Err((r, gappy))) => {
                                if gappy {
                                    self.inner.lock().remember_gappy(&key);
                                }
                                if whole_window {
                                    // It is the uncached answer.
                                    self.metrics.outcome("miss");
                                    return Ok(Answer::Computed(r));
                                }
                                // Truncated by a limit, or partial: only an uncached answer is
                                // right.
                                return uncached("fallback", tracing::Span::none());
                            }
                            Err(e) if is_final(&e) || whole_window => return Err(e),
                            // Whatever the error, the uncached query reports its own.
                            Err(_) => return uncached("fallback", tracing::Span::none()),
                        };
                    if store {
                        to_store.push((interval, part.clone()));
                    }
                    parts.push((part, x, y));
                }
            }
        }
        let outcome = if report.misses == 0 {
            "hit"
        } else if report.hits == 0 {
            "miss"
        } else {
            "partial"
        };
        let Some(assembled) = assemble(&parts, step, opts, engine.options().max_samples) else {
            return uncached("fallback", tracing::Span::none());
        };
        self.store(&key, &flight, to_store);
        self.metrics.outcome(outcome);
        Ok(Answer::Assembled(assembled))
    }

    fn register(&self) -> InFlight<'_> {
        let mut inner = self.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.in_flight.insert(id, i64::MAX);
        InFlight { cache: self, id }
    }

    /// The answer's steps `[start, last]` as cached parts and ranges to compute.
    fn plan(
        &self,
        key: &Arc<QueryKey>,
        start: i64,
        last: i64,
        step: i64,
        cacheable_end: i64,
        min_time: Option<i64>,
    ) -> Vec<Seg> {
        let split = self.settings.split_ms;
        let mut segs = Vec::new();
        let compute = |segs: &mut Vec<Seg>, x: i64, y: i64, interval: i64| {
            // Split at the freshness boundary: only the older steps are stored.
            if x <= cacheable_end && y > cacheable_end {
                segs.push(Seg::Compute {
                    x,
                    y: cacheable_end,
                    interval,
                    store: true,
                });
                segs.push(Seg::Compute {
                    x: cacheable_end + step,
                    y,
                    interval,
                    store: false,
                });
            } else {
                segs.push(Seg::Compute {
                    x,
                    y,
                    interval,
                    store: y <= cacheable_end,
                });
            }
        };
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let mut invalidated = 0u64;
        let first = start.div_euclid(split);
        let last_interval = last.div_euclid(split);
        for i in first..=last_interval {
            let lo = start.max(grid_ceil(i.saturating_mul(split), step));
            let hi = last.min(grid_floor((i + 1).saturating_mul(split) - 1, step));
            if lo > hi {
                continue;
            }
            let ek = (key.clone(), i);
            let mut cursor = lo;
            if let Some(e) = inner.entries.get_mut(&ek) {
                // The store dropped data older than when these parts were computed.
                let before = e.parts.len();
                e.parts.retain(|p| match (min_time, p.min_time) {
                    (Some(now), Some(then)) => now <= then,
                    _ => true,
                });
                if e.parts.len() != before {
                    invalidated += (before - e.parts.len()) as u64;
                    let bytes = entry_bytes(&ek, &e.parts);
                    inner.bytes = inner.bytes.saturating_sub(e.bytes) + bytes;
                    e.bytes = bytes;
                }
                for p in &e.parts {
                    if p.end < cursor || p.start > hi {
                        continue;
                    }
                    if p.start > cursor {
                        compute(&mut segs, cursor, p.start - step, i);
                    }
                    let y = p.end.min(hi);
                    segs.push(Seg::Cached {
                        part: p.clone(),
                        x: cursor.max(p.start),
                        y,
                    });
                    cursor = y + step;
                }
                inner.tick += 1;
                inner.lru.remove(&e.tick);
                e.tick = inner.tick;
                inner.lru.insert(e.tick, ek);
            }
            if cursor <= hi {
                compute(&mut segs, cursor, hi, i);
            }
        }
        if invalidated > 0 {
            self.metrics.invalidations.inc_by(invalidated);
            self.gauges(inner);
        }
        // Adjacent ranges that are not stored are computed in one evaluation.
        let mut merged: Vec<Seg> = Vec::with_capacity(segs.len());
        for s in segs {
            if let (
                Some(Seg::Compute {
                    y: py,
                    store: false,
                    ..
                }),
                Seg::Compute {
                    x, y, store: false, ..
                },
            ) = (merged.last_mut(), &s)
                && *py + step == *x
            {
                *py = *y;
                continue;
            }
            merged.push(s);
        }
        merged
    }

    /// Evaluates steps `[x, y]` into a part, or gives back the engine's result when it
    /// cannot be a piece of a larger answer: truncated by the series limit, with storage
    /// warnings (partial), or gappy (see [`RecState::gappy`], flagged `true`).
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        engine: &Engine,
        queryable: &dyn Queryable,
        ctx: &Context,
        req: &RangeRequest,
        opts: &QueryOptions,
        x: i64,
        y: i64,
        min_time: Option<i64>,
    ) -> m3query_promql::Result<Result<Part, (QueryResult, bool)>> {
        let step = req.step_ms;
        let rec = Arc::new(Recorder::new(x, y, step));
        let watch = WatchQueryable {
            inner: queryable,
            rec: rec.clone(),
        };
        let r = engine.range_query(&watch, ctx, &req.query, x, y, step, opts)?;
        let rec = std::mem::take(&mut *rec.st.lock());
        if rec.gappy {
            return Ok(Err((r, true)));
        }
        if r.series_limited
            || r.warnings.iter().any(|w| !w.starts_with("PromQL "))
            || !matches!(r.value, Value::Matrix(_))
        {
            return Ok(Err((r, false)));
        }
        let Value::Matrix(m) = r.value else {
            return Ok(Err((r, false)));
        };
        let float_series = m.into_iter().map(|s| {
            let mut text = String::with_capacity(s.samples.len() * 24);
            let mut ts = Vec::with_capacity(s.samples.len());
            let mut off = Vec::with_capacity(s.samples.len());
            for (k, p) in s.samples.iter().enumerate() {
                if k > 0 {
                    text.push(',');
                }
                off.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
                ts.push(p.t);
                text.push('[');
                write_ts(&mut text, p.t);
                text.push(',');
                write_val(&mut text, p.v);
                text.push(']');
            }
            PartSeries {
                labels: s.labels,
                hist: false,
                ts,
                off,
                text,
            }
        });
        let hist_series = r.histograms.into_iter().map(|s| {
            let mut text = String::with_capacity(s.points.len() * 128);
            let mut ts = Vec::with_capacity(s.points.len());
            let mut off = Vec::with_capacity(s.points.len());
            for (k, p) in s.points.iter().enumerate() {
                if k > 0 {
                    text.push(',');
                }
                off.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
                ts.push(p.t);
                write_hpoint(&mut text, p);
            }
            PartSeries {
                labels: s.labels,
                hist: true,
                ts,
                off,
                text,
            }
        });
        // Both lists are sorted by labels: one list by labels, floats first.
        let mut series: Vec<PartSeries> = float_series.chain(hist_series).collect();
        series.sort_by(|a, b| a.labels.cmp(&b.labels).then(a.hist.cmp(&b.hist)));
        let mut keys: Vec<KeySpan> = rec.keys.into_values().collect();
        keys.sort_unstable_by_key(|k| k.key);
        let steps = (y - x) / step + 1;
        let mut part = Part {
            start: x,
            end: y,
            step,
            series,
            warnings: r.warnings,
            infos: r.infos,
            keys,
            deltas: rec
                .deltas
                .into_iter()
                .map(|d| d.unwrap_or((0, 0)))
                .collect(),
            own: rec.own,
            head: rec.head,
            eval_steps: steps,
            eval_peak: r.stats.peak_samples,
            min_time,
            bytes: 0,
        };
        part.compute_bytes();
        Ok(Ok(part))
    }

    /// Stores computed parts unless a write since the query started reached into them.
    fn store(&self, key: &Arc<QueryKey>, flight: &InFlight<'_>, parts: Vec<(i64, Arc<Part>)>) {
        if parts.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let written = inner.in_flight.get(&flight.id).copied().unwrap_or(i64::MIN);
        for (interval, part) in parts {
            if part.end >= written {
                continue;
            }
            if part.bytes > self.settings.max_bytes {
                continue;
            }
            let ek = (key.clone(), interval);
            inner.tick += 1;
            let tick = inner.tick;
            let e = inner.entries.entry(ek.clone()).or_insert_with(|| Entry {
                parts: Vec::new(),
                tick,
                bytes: 0,
            });
            inner.lru.remove(&e.tick);
            e.tick = tick;
            inner.max_end = inner.max_end.max(part.end);
            let before = e.bytes;
            insert_part(&mut e.parts, part);
            e.bytes = entry_bytes(&ek, &e.parts);
            inner.bytes = inner.bytes.saturating_sub(before) + e.bytes;
            inner.lru.insert(tick, ek);
        }
        // Least recently used first, down to the bound.
        while inner.bytes > self.settings.max_bytes {
            let Some((_, ek)) = inner.lru.pop_first() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&ek) {
                inner.bytes -= e.bytes.min(inner.bytes);
                self.metrics.evictions.inc();
            }
        }
        self.gauges(inner);
    }
}

/// What an entry holds: its parts and its key.
fn entry_bytes(k: &EntryKey, parts: &[Arc<Part>]) -> usize {
    parts.iter().map(|p| p.bytes).sum::<usize>()
        + k.0.query.len()
        + std::mem::size_of::<QueryKey>()
        + std::mem::size_of::<Entry>()
}

/// Errors that end the query whatever else is tried: the deadline, cancellation, a store
/// that cannot be reached.
fn is_final(e: &m3query_promql::Error) -> bool {
    use crate::error::{ErrorType, promql_kind};
    matches!(
        promql_kind(e),
        ErrorType::Timeout | ErrorType::Canceled | ErrorType::Unavailable
    )
}

/// Adds `part` to an entry's parts, replacing those it overlaps (it is newer), and merges it
/// with an adjacent earlier part of comparable size, so a refreshed window keeps a few parts
/// of geometrically growing size rather than one per refresh.
fn insert_part(parts: &mut Vec<Arc<Part>>, part: Arc<Part>) {
    parts.retain(|p| p.end < part.start || p.start > part.end);
    let pos = parts.partition_point(|p| p.start < part.start);
    parts.insert(pos, part);
    let mut i = pos;
    while i > 0 {
        let (a, b) = (&parts[i - 1], &parts[i]);
        let mergeable = a.end + a.step == b.start
            && a.steps() <= 2 * b.steps()
            && a.warnings == b.warnings
            && a.infos == b.infos;
        if !mergeable {
            break;
        }
        let m = Arc::new(a.merge(b));
        parts.splice(i - 1..=i, [m]);
        i -= 1;
    }
    while parts.len() > MAX_PARTS {
        parts.remove(0);
    }
}

/// Annotations of the answer from its parts' (`whole[i]`: part `i` is used with all its
/// steps), or `None` when they cannot be told without evaluating the window at once.
fn merge_annotations<'a>(
    lists: impl Iterator<Item = (&'a [String], bool)> + Clone,
) -> Option<Vec<String>> {
    let mut confirmed: HashSet<&str> = HashSet::new();
    for (l, whole) in lists.clone() {
        if whole {
            confirmed.extend(l.iter().map(String::as_str));
        }
    }
    let mut union: Vec<String> = Vec::new();
    let mut first: Option<&[String]> = None;
    let mut identical = true;
    for (l, whole) in lists {
        // A cut part's annotation may have come from a step it no longer covers.
        if !whole && l.iter().any(|a| !confirmed.contains(a.as_str())) {
            return None;
        }
        match first {
            None => first = Some(l),
            Some(f) => identical &= f == l,
        }
        for a in l {
            if !union.contains(a) {
                union.push(a.clone());
            }
        }
    }
    if identical || union.len() <= 1 {
        Some(union)
    } else {
        // Their order in an uncached answer depends on evaluation order across steps.
        None
    }
}

/// Joins parts (each used for steps `[x, y]`, in time order) into one answer; `None` when it
/// would not equal the uncached answer (see the module docs).
fn assemble(
    parts: &[(Arc<Part>, i64, i64)],
    step: i64,
    opts: &QueryOptions,
    max_samples: usize,
) -> Option<Assembled> {
    let whole = |i: usize| {
        let (p, x, y) = &parts[i];
        p.start == *x && p.end == *y
    };
    let warnings = merge_annotations(
        parts
            .iter()
            .enumerate()
            .map(|(i, (p, _, _))| (p.warnings.as_slice(), whole(i))),
    )?;
    let infos = merge_annotations(
        parts
            .iter()
            .enumerate()
            .map(|(i, (p, _, _))| (p.infos.as_slice(), whole(i))),
    )?;

    // Series fetched: every key (for the limit, which counts what the store returned) and
    // those with samples in the window of the steps used (what the engine reports).
    let mut fetched: Vec<u64> = Vec::new();
    let mut nonempty: Vec<u64> = Vec::new();
    let mut samples = 0f64;
    let mut steps = 0i64;
    let mut density = (0i64, 0usize);
    for (i, (p, x, y)) in parts.iter().enumerate() {
        for k in &p.keys {
            fetched.push(k.key);
            let (lo, hi) = p.deltas.get(k.ord as usize).copied().unwrap_or((0, 0));
            if k.any_in(x - lo, y - hi) {
                nonempty.push(k.key);
            }
        }
        let used = (y - x) / step + 1;
        steps += used;
        samples += p.own as f64 * used as f64 / p.steps() as f64;
        if i == 0 {
            samples += p.head as f64;
        }
        if p.eval_steps > density.0 {
            density = (p.eval_steps, p.eval_peak);
        }
    }
    let peak = density.1 as f64 * steps as f64 / density.0.max(1) as f64;
    for keys in [&mut fetched, &mut nonempty] {
        keys.sort_unstable();
        keys.dedup();
    }
    if opts.max_fetched_series > 0 && fetched.len() > opts.max_fetched_series {
        return None;
    }
    // The uncached query's sample counts are estimated (cut parts, windows that overlap):
    // near the limit, only the uncached query tells whether it passes.
    let half = max_samples as f64 / 2.0;
    if samples > half || peak > half {
        return None;
    }

    // Series by labels, each part's points in time order: a merge of the parts' series
    // (each sorted by labels), the same series mostly in every part.
    let mut cursor = vec![0usize; parts.len()];
    let mut series: Vec<AssembledSeries> = Vec::new();
    loop {
        let mut min: Option<(&Labels, bool)> = None;
        for (pi, (p, _, _)) in parts.iter().enumerate() {
            if let Some(s) = p.series.get(cursor[pi])
                && min.is_none_or(|(m, h)| {
                    s.labels.cmp(m).then(s.hist.cmp(&h)) == std::cmp::Ordering::Less
                })
            {
                min = Some((&s.labels, s.hist));
            }
        }
        let Some((labels, hist)) = min else {
            break;
        };
        let mut frags = Vec::new();
        for (pi, (p, x, y)) in parts.iter().enumerate() {
            let si = cursor[pi];
            if let Some(s) = p.series.get(si)
                && s.labels == *labels
                && s.hist == hist
            {
                cursor[pi] += 1;
                if let Some((a, b)) = s.slice(*x, *y) {
                    frags.push((pi as u32, si as u32, a, b));
                }
            }
        }
        if !frags.is_empty() {
            series.push(AssembledSeries {
                labels: labels.clone(),
                hist,
                frags,
            });
        }
    }
    Some(Assembled {
        parts: parts.iter().map(|(p, _, _)| p.clone()).collect(),
        series,
        warnings,
        infos,
        series_fetched: nonempty.len(),
        samples_fetched: samples.round() as usize,
    })
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// ---- What an evaluation fetched ------------------------------------------------------------

/// Collects, for one part's evaluation, the series each select returned and the samples
/// decoded from them.
struct Recorder {
    a: i64,
    b: i64,
    step: i64,
    next_ord: AtomicU32,
    st: Mutex<RecState>,
}

#[derive(Default)]
struct RecState {
    keys: HashMap<u64, KeySpan>,
    deltas: Vec<Option<(i64, i64)>>,
    own: u64,
    head: u64,
    /// A select read less than a step before each step: samples between two parts' reads
    /// count for an evaluation over both but for neither part, so parts do not add up.
    gappy: bool,
}

impl Recorder {
    fn new(a: i64, b: i64, step: i64) -> Recorder {
        Recorder {
            a,
            b,
            step,
            next_ord: AtomicU32::new(0),
            st: Mutex::new(RecState::default()),
        }
    }

    fn fetched(&self, key: u64, ord: u32) {
        self.st.lock().keys.entry(key).or_insert(KeySpan {
            key,
            ord,
            runs: Vec::new(),
        });
    }

    /// A sample read one at a time (not by the engine's range decoding): a run of its own.
    fn sample(&self, key: u64, ord: u32, t: i64) {
        let mut st = self.st.lock();
        let k = st.keys.entry(key).or_insert(KeySpan {
            key,
            ord,
            runs: Vec::new(),
        });
        k.runs.push((t, t));
        join_runs(&mut k.runs, 1);
    }

    fn decoded(&self, key: u64, ord: u32, mint: i64, maxt: i64, added: &[Sample]) {
        // A sample belongs to the step whose own window `(t - step, t]` (moved by the
        // selector's offset, which shifts `maxt`) holds it; older ones are the first step's
        // look back.
        let boundary = maxt - (self.b - self.a) - self.step;
        let gappy = mint > boundary + 1;
        let head = added.partition_point(|s| s.t <= boundary);
        // Runs of samples closer than the select's window: what tells, for any window of a
        // part cut shorter, whether the series had a sample in it.
        let window = (maxt - mint - (self.b - self.a) + 1).max(1);
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for s in added {
            match runs.last_mut() {
                Some(last) if s.t - last.1 < window => last.1 = s.t,
                _ => runs.push((s.t, s.t)),
            }
        }
        let mut st = self.st.lock();
        let i = ord as usize;
        if st.deltas.len() <= i {
            st.deltas.resize(i + 1, None);
        }
        if st.deltas[i].is_none() {
            st.deltas[i] = Some((self.a - mint, self.b - maxt));
        }
        st.gappy |= gappy;
        st.head += head as u64;
        st.own += (added.len() - head) as u64;
        if !runs.is_empty() {
            let k = st.keys.entry(key).or_insert(KeySpan {
                key,
                ord,
                runs: Vec::new(),
            });
            if k.runs.is_empty() {
                k.runs = runs;
            } else {
                k.runs.extend(runs);
                join_runs(&mut k.runs, window);
            }
        }
    }
}

fn series_key(ord: u32, labels: &Labels) -> u64 {
    // Distinct selects count their series separately, as the engine does.
    labels
        .stable_hash()
        .wrapping_add(u64::from(ord).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

struct WatchQueryable<'a> {
    inner: &'a dyn Queryable,
    rec: Arc<Recorder>,
}

impl Queryable for WatchQueryable<'_> {
    fn querier(&self, mint: i64, maxt: i64) -> m3query_storage::Result<Box<dyn Querier + '_>> {
        Ok(Box::new(WatchQuerier {
            inner: self.inner.querier(mint, maxt)?,
            rec: self.rec.clone(),
        }))
    }

    fn min_time(&self) -> Option<i64> {
        self.inner.min_time()
    }
}

struct WatchQuerier<'a> {
    inner: Box<dyn Querier + 'a>,
    rec: Arc<Recorder>,
}

impl Querier for WatchQuerier<'_> {
    fn select(
        &self,
        ctx: &Context,
        sort: bool,
        hints: &SelectHints,
        matchers: &[Matcher],
    ) -> m3query_storage::Result<Box<dyn SeriesSet + '_>> {
        let ord = self.rec.next_ord.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.select(ctx, sort, hints, matchers)?;
        Ok(Box::new(WatchSet {
            inner,
            ord,
            rec: self.rec.clone(),
        }))
    }

    fn label_values(
        &self,
        ctx: &Context,
        name: &str,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> m3query_storage::Result<LabelValues> {
        self.inner.label_values(ctx, name, hints, matchers)
    }

    fn label_names(
        &self,
        ctx: &Context,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> m3query_storage::Result<LabelValues> {
        self.inner.label_names(ctx, hints, matchers)
    }
}

struct WatchSet<'a> {
    inner: Box<dyn SeriesSet + 'a>,
    ord: u32,
    rec: Arc<Recorder>,
}

impl SeriesSet for WatchSet<'_> {
    fn next(&mut self) -> Option<m3query_storage::Result<Box<dyn Series>>> {
        let s = match self.inner.next()? {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let key = series_key(self.ord, s.labels());
        self.rec.fetched(key, self.ord);
        Some(Ok(Box::new(WatchSeries {
            inner: s,
            key,
            ord: self.ord,
            rec: self.rec.clone(),
        })))
    }

    fn warnings(&self) -> Warnings {
        self.inner.warnings()
    }
}

struct WatchSeries {
    inner: Box<dyn Series>,
    key: u64,
    ord: u32,
    rec: Arc<Recorder>,
}

impl Series for WatchSeries {
    fn labels(&self) -> &Labels {
        self.inner.labels()
    }

    fn iter(&self) -> Box<dyn SampleIterator + '_> {
        Box::new(WatchIter {
            inner: self.inner.iter(),
            key: self.key,
            ord: self.ord,
            rec: &self.rec,
        })
    }
}

struct WatchIter<'a> {
    inner: Box<dyn SampleIterator + 'a>,
    key: u64,
    ord: u32,
    rec: &'a Recorder,
}

impl SampleIterator for WatchIter<'_> {
    fn next(&mut self) -> m3query_storage::Result<Option<Sample>> {
        let s = self.inner.next()?;
        if let Some(s) = s {
            self.rec.sample(self.key, self.ord, s.t);
        }
        Ok(s)
    }

    fn append_range(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<Sample>,
    ) -> m3query_storage::Result<()> {
        let before = out.len();
        self.inner.append_range(mint, maxt, out)?;
        self.rec
            .decoded(self.key, self.ord, mint, maxt, &out[before..]);
        Ok(())
    }

    fn append_histograms(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<HistogramSample>,
    ) -> m3query_storage::Result<()> {
        let before = out.len();
        self.inner.append_histograms(mint, maxt, out)?;
        if out.len() > before {
            // Histogram samples count as samples do, for the series' spans and the sample
            // figures (the engine counts each histogram as one sample).
            let at: Vec<Sample> = out[before..]
                .iter()
                .map(|h| Sample::new(h.t, 0.0))
                .collect();
            self.rec.decoded(self.key, self.ord, mint, maxt, &at);
        }
        Ok(())
    }
}

// ---- The write side ------------------------------------------------------------------------

/// A write transaction that tells the cache, once committed, the oldest sample it wrote.
struct WatchedAppender<'a> {
    inner: Box<dyn Appender + 'a>,
    cache: &'a ResultsCache,
    min_t: i64,
}

impl Appender for WatchedAppender<'_> {
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> m3query_storage::Result<()> {
        self.min_t = self.min_t.min(t);
        self.inner.append(labels, t, v)
    }

    fn append_samples(
        &mut self,
        labels: LabelPairs<'_>,
        samples: &[Sample],
        refused: &mut dyn FnMut(usize, m3query_storage::Error),
    ) -> m3query_storage::Result<()> {
        if let Some(t) = samples.iter().map(|s| s.t).min() {
            self.min_t = self.min_t.min(t);
        }
        self.inner.append_samples(labels, samples, refused)
    }

    fn append_samples_by_key(
        &mut self,
        key: &[u8],
        samples: &[Sample],
        refused: &mut dyn FnMut(usize, m3query_storage::Error),
    ) -> m3query_storage::Result<bool> {
        let known = self.inner.append_samples_by_key(key, samples, refused)?;
        if known && let Some(t) = samples.iter().map(|s| s.t).min() {
            self.min_t = self.min_t.min(t);
        }
        Ok(known)
    }

    fn append_samples_keyed(
        &mut self,
        key: &[u8],
        labels: LabelPairs<'_>,
        samples: &[Sample],
        refused: &mut dyn FnMut(usize, m3query_storage::Error),
    ) -> m3query_storage::Result<()> {
        if let Some(t) = samples.iter().map(|s| s.t).min() {
            self.min_t = self.min_t.min(t);
        }
        self.inner
            .append_samples_keyed(key, labels, samples, refused)
    }

    fn append_histogram(
        &mut self,
        labels: &Labels,
        t: i64,
        h: &m3query_model::FloatHistogram,
    ) -> m3query_storage::Result<()> {
        self.min_t = self.min_t.min(t);
        self.inner.append_histogram(labels, t, h)
    }

    fn append_int_histogram(
        &mut self,
        labels: &Labels,
        t: i64,
        h: &m3query_model::Histogram,
    ) -> m3query_storage::Result<()> {
        self.min_t = self.min_t.min(t);
        self.inner.append_int_histogram(labels, t, h)
    }

    fn commit(self: Box<Self>) -> m3query_storage::Result<()> {
        let WatchedAppender {
            inner,
            cache,
            min_t,
        } = *self;
        let r = inner.commit();
        // Even a failed commit may have made some samples visible.
        cache.note_write(min_t);
        r
    }

    fn rollback(self: Box<Self>) {
        self.inner.rollback();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3query_promql::EngineOptions;
    use m3query_storage::Appendable;
    use m3query_storage::memory::MemStorage;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicI64;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    struct Fixture {
        store: MemStorage,
        engine: Engine,
        cache: ResultsCache,
        now: Arc<AtomicI64>,
    }

    fn fixture(split_ms: i64, freshness_ms: i64, max_bytes: usize) -> Fixture {
        let now = Arc::new(AtomicI64::new(0));
        let n = now.clone();
        Fixture {
            store: MemStorage::new(),
            engine: Engine::new(EngineOptions::default()),
            cache: ResultsCache::new(
                Settings {
                    max_bytes,
                    split_ms,
                    freshness_ms,
                },
                CacheMetrics::default(),
            )
            .with_clock(Arc::new(move || n.load(Ordering::Relaxed))),
            now,
        }
    }

    fn labels(name: &str, job: &str, inst: usize) -> Labels {
        Labels::from_pairs([
            ("__name__", name.to_string()),
            ("job", job.to_string()),
            ("instance", format!("i{inst}")),
        ])
    }

    impl Fixture {
        /// Writes through the cache's watch, as the remote-write handler does.
        fn write(&self, samples: &[(Labels, i64, f64)]) {
            let mut app = self.cache.watch(self.store.appender());
            for (l, t, v) in samples {
                // Out-of-order samples are refused by this store, as by a real one.
                let _ = app.append(l, *t, *v);
            }
            app.commit().expect("commit");
        }

        fn answer(
            &self,
            q: &str,
            start: i64,
            end: i64,
            step: i64,
            opts: &QueryOptions,
        ) -> (String, usize) {
            let req = RangeRequest {
                query: q.into(),
                start_ms: start,
                end_ms: end,
                step_ms: step,
            };
            let a = self
                .cache
                .range_query(
                    &self.engine,
                    &self.store,
                    &Context::background(),
                    &req,
                    opts,
                )
                .expect("cached query");
            let mut out = String::new();
            match a {
                Answer::Computed(r) => {
                    crate::api::query::write_response(&mut out, &r, false);
                    (out, r.stats.series_fetched)
                }
                Answer::Assembled(a) => {
                    a.write_body(&mut out);
                    assert_eq!(a.body_len(), out.len());
                    let n = a.series_fetched;
                    let chunks: Vec<u8> = a.into_chunks().concat();
                    assert_eq!(chunks, out.as_bytes(), "chunks and body differ");
                    (out, n)
                }
            }
        }

        fn uncached(
            &self,
            q: &str,
            start: i64,
            end: i64,
            step: i64,
            opts: &QueryOptions,
        ) -> (String, usize) {
            let r = self
                .engine
                .range_query(
                    &self.store,
                    &Context::background(),
                    q,
                    start,
                    end,
                    step,
                    opts,
                )
                .expect("uncached query");
            let mut out = String::new();
            crate::api::query::write_response(&mut out, &r, false);
            (out, r.stats.series_fetched)
        }

        fn check(&self, q: &str, start: i64, end: i64, step: i64) {
            let opts = QueryOptions::default();
            let got = self.answer(q, start, end, step, &opts);
            let want = self.uncached(q, start, end, step, &opts);
            assert_eq!(got.0, want.0, "{q} [{start}, {end}] step {step}");
            assert_eq!(
                got.1, want.1,
                "series count of {q} [{start}, {end}] step {step}"
            );
        }

        fn parts(&self) -> usize {
            self.cache
                .inner
                .lock()
                .entries
                .values()
                .map(|e| e.parts.len())
                .sum()
        }
    }

    /// Counters over `[0, hours]` at 15s in two jobs; one series stops half way, one starts.
    fn load(f: &Fixture, hours: i64) {
        let mut samples = Vec::new();
        for i in 0..6 {
            let l = labels("m", if i % 2 == 0 { "a" } else { "b" }, i);
            let (from, to) = match i {
                4 => (0, hours * HOUR / 2),
                5 => (hours * HOUR / 3, hours * HOUR),
                _ => (0, hours * HOUR),
            };
            let mut t = from;
            while t <= to {
                samples.push((l.clone(), t, (t / 15_000 * (i as i64 + 1)) as f64));
                t += 15_000;
            }
        }
        f.write(&samples);
    }

    #[test]
    fn grid_helpers() {
        assert_eq!(grid_ceil(0, 15), 0);
        assert_eq!(grid_ceil(1, 15), 15);
        assert_eq!(grid_ceil(-1, 15), 0);
        assert_eq!(grid_ceil(-16, 15), -15);
        assert_eq!(grid_floor(29, 15), 15);
        assert_eq!(grid_floor(-1, 15), -15);
    }

    #[test]
    fn what_bypasses_the_cache() {
        let cases = [
            ("rate(m[5m])", None),
            ("sum by (job) (rate(m[5m] offset 1h))", None),
            ("max_over_time(m[10m:1m])", None),
            ("timestamp(m)", None),
            ("m @ 100", Some("at_modifier")),
            ("m @ start()", Some("at_modifier")),
            ("rate(m[5m] @ end())", Some("at_modifier")),
            ("max_over_time(m[10m:1m] @ 5)", Some("at_modifier")),
            ("m offset -5m", Some("offset")),
            ("sort(m)", Some("function")),
            ("sort_desc(sum(m))", Some("function")),
            ("rate(m[range()])", Some("duration_expression")),
            ("rate(m[5m] anchored)", Some("extended_range")),
            (
                "1 + max_over_time(m[1h:step()])",
                Some("duration_expression"),
            ),
        ];
        for (q, want) in cases {
            let e = parser::parse(q).expect(q);
            assert_eq!(uncacheable(&e), want, "{q}");
        }
    }

    #[test]
    fn refresh_reuses_parts_and_matches_uncached() {
        let f = fixture(HOUR, 5 * MIN, 64 << 20);
        load(&f, 6);
        let step = 15_000;
        f.now.store(6 * HOUR, Ordering::Relaxed);
        let q = "sum by (job) (rate(m[1m]))";
        f.check(q, 3 * HOUR, 6 * HOUR, step);
        assert!(f.parts() >= 3, "one part per hour stored");
        let misses = f.cache.metrics.misses.get();
        let hits = f.cache.metrics.hits.get();
        // The window moves by one step, time too: only the fresh tail is computed.
        f.now.fetch_add(step, Ordering::Relaxed);
        f.check(q, 3 * HOUR + step, 6 * HOUR + step, step);
        assert!(f.cache.metrics.hits.get() > hits);
        // The hour boundaries and the part that moved: at most two new ranges.
        assert!(f.cache.metrics.misses.get() - misses <= 2);
        for k in 0..50 {
            f.now.fetch_add(step, Ordering::Relaxed);
            let s = 3 * HOUR + (k + 2) * step;
            f.check(q, s, s + 3 * HOUR, step);
        }
        // Parts of one entry merge as they grow: a few, not one per refresh.
        assert!(f.parts() < 20, "{} parts", f.parts());
    }

    /// Native histogram counters `h{instance}` over `[0, hours]` at 15s through the watched
    /// appender (integer ones, as remote write brings them), plus a float series of the same
    /// name and one series that is a float first and a histogram later.
    fn load_histograms(f: &Fixture, hours: i64) {
        use m3query_model::histogram::Span;
        let mut app = f.cache.watch(f.store.appender());
        for i in 0..3usize {
            let l = labels("h", "a", i);
            let mut t = 0;
            while t <= hours * HOUR {
                let n = (t / 15_000) as u64 * (i as u64 + 1);
                let h = m3query_model::Histogram {
                    count: 2 * n,
                    sum: n as f64 * 0.75,
                    zero_threshold: 2.938735877055719e-39,
                    zero_count: n / 2,
                    positive_spans: vec![Span::new(-1, 2)],
                    positive_buckets: vec![n as i64, (n - n / 2) as i64 - n as i64],
                    ..Default::default()
                };
                app.append_int_histogram(&l, t, &h).expect("in order");
                t += 15_000;
            }
        }
        let mixed = labels("h", "b", 9);
        let mut t = 0;
        while t <= hours * HOUR {
            if t < hours * HOUR / 2 {
                app.append(&mixed, t, t as f64).expect("in order");
            } else {
                let h = m3query_model::FloatHistogram {
                    count: 1.5,
                    sum: t as f64,
                    positive_spans: vec![Span::new(0, 1)],
                    positive_buckets: vec![1.5],
                    ..Default::default()
                };
                app.append_histogram(&mixed, t, &h).expect("in order");
            }
            t += 15_000;
        }
        app.commit().expect("commit");
    }

    /// Range queries over native histograms answer from the cache byte for byte as
    /// uncached: histogram results (`histograms` beside `values`, a series with both), float
    /// results computed from histograms, and refreshes that join cached and new parts.
    #[test]
    fn histogram_results_are_cached_and_match_uncached() {
        let f = fixture(HOUR, 5 * MIN, 64 << 20);
        load_histograms(&f, 6);
        let step = 60_000;
        f.now.store(6 * HOUR, Ordering::Relaxed);
        // (`rate` over the series that turns from floats into histograms is left out: the
        // engine's "might not be a counter" info looks at a series' whole input, not at its
        // float output as Prometheus does, so it is not additive over parts.)
        for q in [
            "h",
            "rate(h{job=\"a\"}[5m])",
            "histogram_quantile(0.9, sum by (job) (rate(h{job=\"a\"}[5m])))",
            "histogram_count(h)",
            "h{job=\"b\"} offset 2h",
        ] {
            let (body, _) = f.answer(q, 2 * HOUR, 5 * HOUR, step, &QueryOptions::default());
            f.check(q, 2 * HOUR, 5 * HOUR, step);
            // Refreshes: cached parts joined with new ones.
            for k in 1..4 {
                f.now.fetch_add(step, Ordering::Relaxed);
                f.check(q, 2 * HOUR + k * step, 5 * HOUR + k * step, step);
            }
            f.now.store(6 * HOUR, Ordering::Relaxed);
            if q == "h" {
                assert!(body.contains("\"histograms\":[["), "{body}");
                // The series that changes kind has both keys in one object.
                assert!(
                    body.contains("\"instance\":\"i9\",\"job\":\"b\"},\"values\":[[")
                        && body.contains("]],\"histograms\":[["),
                    "{body}"
                );
            }
        }
        assert!(f.parts() > 0, "histogram results are cached");
        assert!(f.cache.metrics.hits.get() > 0);
    }

    #[test]
    fn late_writes_invalidate() {
        let f = fixture(HOUR, 5 * MIN, 64 << 20);
        load(&f, 4);
        f.now.store(4 * HOUR, Ordering::Relaxed);
        let q = "sum by (job) (m)";
        f.check(q, 0, 4 * HOUR, 60_000);
        let parts = f.parts();
        assert!(parts >= 4);
        // A new series with samples in the second hour: parts from then on are dropped.
        f.write(&[(labels("m", "a", 99), HOUR + 30 * MIN, 1000.0)]);
        assert!(f.parts() < parts);
        assert!(f.cache.metrics.invalidations.get() > 0);
        f.check(q, 0, 4 * HOUR, 60_000);
        // A write after every cached step drops nothing.
        let before = f.parts();
        f.write(&[(labels("m", "a", 98), 4 * HOUR, 1.0)]);
        assert_eq!(f.parts(), before);
    }

    #[test]
    fn writes_during_evaluation_are_not_stored() {
        let f = fixture(HOUR, 5 * MIN, 64 << 20);
        load(&f, 2);
        f.now.store(2 * HOUR, Ordering::Relaxed);
        let key = Arc::new(QueryKey {
            query: "m".into(),
            step_ms: 60_000,
            lookback_ms: 300_000,
        });
        let part = |start, end| {
            let mut p = Part {
                start,
                end,
                step: 60_000,
                series: Vec::new(),
                warnings: Vec::new(),
                infos: Vec::new(),
                keys: Vec::new(),
                deltas: Vec::new(),
                own: 0,
                head: 0,
                eval_steps: 1,
                eval_peak: 0,
                min_time: None,
                bytes: 0,
            };
            p.compute_bytes();
            Arc::new(p)
        };
        let flight = f.cache.register();
        // Committed while the query was reading: its parts at or after the write are stale.
        f.cache.note_write(30 * MIN);
        f.cache.store(
            &key,
            &flight,
            vec![(0, part(0, 20 * MIN)), (0, part(40 * MIN, 50 * MIN))],
        );
        let inner = f.cache.inner.lock();
        let e = inner.entries.get(&(key.clone(), 0)).expect("entry");
        assert_eq!(e.parts.len(), 1);
        assert_eq!(e.parts[0].end, 20 * MIN);
    }

    #[test]
    fn eviction_keeps_within_max_bytes() {
        let f = fixture(HOUR, 5 * MIN, 200_000);
        load(&f, 4);
        f.now.store(4 * HOUR, Ordering::Relaxed);
        for q in ["m", "rate(m[5m])", "m * 2", "m + 1", "-m"] {
            f.check(q, 0, 4 * HOUR, 15_000);
            assert!(f.cache.bytes() <= 200_000, "{}", f.cache.bytes());
        }
        assert!(f.cache.metrics.evictions.get() > 0);
        // Still right after evictions.
        f.check("m", 0, 4 * HOUR, 15_000);
    }

    #[test]
    fn unaligned_and_fresh_windows_are_not_stored() {
        let f = fixture(HOUR, 5 * MIN, 64 << 20);
        load(&f, 2);
        f.now.store(2 * HOUR, Ordering::Relaxed);
        f.check("m", 7_000, HOUR, 15_000);
        f.check("m", 0, HOUR + 7_000, 15_000);
        f.check("m", 2 * HOUR - 4 * MIN, 2 * HOUR, 15_000);
        assert_eq!(f.parts(), 0);
    }

    #[test]
    fn limits_answer_as_uncached() {
        let f = fixture(HOUR, 5 * MIN, 64 << 20);
        load(&f, 3);
        f.now.store(3 * HOUR, Ordering::Relaxed);
        // Cache every hour of the query first.
        f.check("m", 0, 3 * HOUR, 60_000);
        for (max, exhaustive) in [(3, false), (3, true), (100, true)] {
            let opts = QueryOptions {
                max_fetched_series: max,
                require_exhaustive: exhaustive,
                ..QueryOptions::default()
            };
            let req = RangeRequest {
                query: "m".into(),
                start_ms: 0,
                end_ms: 3 * HOUR,
                step_ms: 60_000,
            };
            let got = f
                .cache
                .range_query(&f.engine, &f.store, &Context::background(), &req, &opts);
            let want = f.engine.range_query(
                &f.store,
                &Context::background(),
                "m",
                0,
                3 * HOUR,
                60_000,
                &opts,
            );
            match (got, want) {
                (Ok(Answer::Computed(g)), Ok(w)) => {
                    assert_eq!(g.series_limited, w.series_limited);
                    assert_eq!(g.value, w.value);
                }
                (Ok(Answer::Assembled(a)), Ok(w)) => {
                    assert!(
                        !w.series_limited,
                        "a limited answer must come from the engine"
                    );
                    assert_eq!(a.series_fetched, w.stats.series_fetched);
                }
                (Err(g), Err(w)) => assert_eq!(g.to_string(), w.to_string()),
                (g, w) => panic!("limit {max}/{exhaustive}: {g:?} vs {w:?}"),
            }
        }
    }

    #[test]
    fn annotations_are_kept() {
        let f = fixture(HOUR, 5 * MIN, 64 << 20);
        load(&f, 3);
        // Not a counter by its name: rate() warns (an info), in every part.
        let mut samples = Vec::new();
        for t in (0..3 * HOUR).step_by(15_000) {
            samples.push((labels("g", "a", 0), t, (t % 7) as f64));
        }
        f.write(&samples);
        f.now.store(3 * HOUR, Ordering::Relaxed);
        for k in 0..5 {
            f.now.fetch_add(60_000, Ordering::Relaxed);
            f.check("rate(g[5m])", k * 60_000, 2 * HOUR + k * 60_000, 60_000);
        }
        let (body, _) = f.answer("rate(g[5m])", 0, 2 * HOUR, 60_000, &QueryOptions::default());
        assert!(body.contains("\"infos\""), "{body}");
    }

    const QUERIES: &[&str] = &[
        "m",
        "rate(m[2m])",
        "sum by (job) (rate(m[5m]))",
        "m offset 3m",
        "max_over_time(m[10m:1m])",
        "count_over_time(m[1m])",
        "m * 2 > 30",
        "absent(m{job=\"c\"})",
        "count(m) by (job)",
        "topk(2, m)",
        "time()",
        "timestamp(m)",
        "m and on(instance) m offset 10m",
        "increase(m[3m]) / on(job) group_left sum by (job) (m)",
        "avg_over_time(m[5m:30s] offset 2m)",
        "predict_linear(m[10m], 60)",
        "absent_over_time(m{instance=\"i4\"}[5m])",
        "label_replace(m, \"x\", \"$1\", \"instance\", \"i(.*)\")",
        "scalar(sum(m)) * vector(2)",
        "count_values(\"v\", m > bool 100)",
        "quantile_over_time(0.5, m[4m]) - deriv(m[4m])",
        "changes(m[10m]) + resets(m[10m])",
        "histogram_quantile(0.9, sum by (le) (label_replace(m, \"le\", \"$1\", \"instance\", \"i(.*)\")))",
    ];

    proptest! {
        // 48 cases by default; `PROPTEST_CASES` asks for more.
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ))]

        /// Random step-aligned windows moving through time, with late writes between them:
        /// every answer equals the uncached one, byte for byte, with the same series count.
        #[test]
        fn cached_equals_uncached(
            qi in 0..QUERIES.len(),
            step_i in 0..4usize,
            split_i in 0..3usize,
            windows in proptest::collection::vec(
                (0i64..240, 1i64..180, 0i64..20, proptest::option::weighted(0.3, (0i64..300, 0usize..3))),
                1..8,
            ),
        ) {
            let step = [15_000, 30_000, 60_000, 120_000][step_i];
            let split = [HOUR, 2 * HOUR, 45 * MIN][split_i];
            let f = fixture(split, 5 * MIN, 64 << 20);
            load(&f, 6);
            let q = QUERIES[qi];
            let mut now = 0;
            let mut late = 0;
            for (start_min, len_min, ahead_min, write) in windows {
                let start = grid_floor(start_min * MIN, step);
                // Grafana's alignment: both ends on the step.
                let end = grid_floor(start + len_min * MIN, step).max(start);
                now = now.max(end + ahead_min * MIN);
                f.now.store(now, Ordering::Relaxed);
                if let Some((at_min, inst)) = write {
                    // A late sample: a new series, or a series past its end (instance 4
                    // stops half way), in the middle of what may be cached.
                    late += 1;
                    let l = if inst == 0 {
                        labels("m", "a", 4)
                    } else {
                        labels("m", "b", 100 + late)
                    };
                    f.write(&[(l, at_min * MIN + 7_000, 1e6 + late as f64)]);
                }
                let opts = QueryOptions::default();
                let got = f.answer(q, start, end, step, &opts);
                let want = f.uncached(q, start, end, step, &opts);
                prop_assert_eq!(&got.0, &want.0, "{} [{}, {}] step {}", q, start, end, step);
                prop_assert_eq!(got.1, want.1, "series count of {} [{}, {}]", q, start, end);
            }
        }

        /// Merging two adjacent parts gives the part one evaluation over both would give.
        #[test]
        fn merged_parts_equal_one_evaluation(a_min in 0i64..120, len1 in 1i64..60, len2 in 1i64..60) {
            let f = fixture(HOUR, 0, 64 << 20);
            load(&f, 4);
            let step = 60_000;
            let req = RangeRequest { query: "rate(m[5m])".into(), start_ms: 0, end_ms: 0, step_ms: step };
            let opts = QueryOptions::default();
            let x = a_min * MIN;
            let m = x + len1 * MIN;
            let y = m + len2 * MIN;
            let eval = |x, y| match f.cache.evaluate(&f.engine, &f.store, &Context::background(), &req, &opts, x, y, None) {
                Ok(Ok(p)) => p,
                _ => panic!("evaluation"),
            };
            let merged = eval(x, m).merge(&eval(m + step, y));
            let whole = eval(x, y);
            prop_assert_eq!(merged.series.len(), whole.series.len());
            for (a, b) in merged.series.iter().zip(&whole.series) {
                prop_assert_eq!(&a.labels, &b.labels);
                prop_assert_eq!(&a.text, &b.text);
                prop_assert_eq!(&a.ts, &b.ts);
                prop_assert_eq!(&a.off, &b.off);
            }
            prop_assert_eq!(merged.own + merged.head, whole.own + whole.head);
        }
    }
}
