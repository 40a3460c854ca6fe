//! m3query's PromQL engine: parses and evaluates PromQL with Prometheus 3.x semantics over any
//! [`Queryable`](m3query_storage::Queryable).
//!
//! ```no_run
//! use m3query_promql::{Engine, EngineOptions, QueryOptions};
//! use m3query_storage::{Context, memory::MemStorage};
//!
//! let store = MemStorage::new();
//! let engine = Engine::new(EngineOptions::default());
//! let res = engine
//!     .range_query(&store, &Context::background(), "sum by (job) (rate(http_requests_total[5m]))",
//!                  0, 3_600_000, 15_000, &QueryOptions::default())
//!     .expect("query");
//! println!("{:?}", res.value);
//! ```
//!
//! How a query runs:
//! 1. [`parser`] turns the text into a [`parser::Expr`] with byte positions: our own parser
//!    for the full 3.x grammar, checked against `promql-parser` in tests (see the module doc
//!    for why the crate alone does not do).
//! 2. Planning (`plan`) folds `start()`/`end()`/`step()`/`range()` and duration expressions,
//!    finds each selector's time range (Prometheus's `FindMinMaxTime`), opens one querier and
//!    selects every selector's series **once** (identical selectors share one select), with
//!    `SelectHints` pushed down, decoding samples into contiguous buffers with `append_range`
//!    (in parallel for many series).
//! 3. Evaluation (`eval`) walks the tree once per node for all steps of a range query:
//!    - rollups (`rate`, `*_over_time`, ...) slide two-pointer windows over each series'
//!      decoded samples, series spread over threads with rayon; under `@` a window is
//!      computed once and repeated;
//!    - `sum`/`avg`/`count`/`min`/`max`/`group` directly over a rollup are fused with it
//!      (each series' rollup folds into its group as it is computed, in input order, so the
//!      numbers are bit-identical to the plain path and no rollup matrix is materialized);
//!    - other aggregations group with label hashes computed once per series;
//!    - binary operators match with signatures computed once per series, and their result
//!      labels once per series pair, not per step.
//! 4. `__name__` is dropped at the end where Prometheus 3.x drops it (delayed name removal).
//!
//! Limits: `max_samples` (points held in memory at once, counted like Prometheus),
//! `max_fetched_series`, the [`Context`]'s deadline and cancellation, checked between series
//! and steps (and by every parallel worker).
//!
//! Native histograms ride beside the floats, as Prometheus's `Series` holds `Floats` and
//! `Histograms` apart: stores hand them over through
//! [`SampleIterator::append_histograms`](m3query_storage::SampleIterator::append_histograms),
//! every series keeps a second, usually empty, list of histogram points, and only code that
//! meets a non-empty one takes a histogram path (`hist` holds the Prometheus 3.x histogram
//! functions), so float evaluation runs the code it ran before. Results carry histogram
//! points in [`QueryResult::histograms`]; [`write_histogram_json`] renders one as the HTTP
//! API does.
//!
//! Start timestamps (Prometheus 3.x's `ST`) ride beside them the same way, through
//! [`SampleIterator::append_start_timestamps`](m3query_storage::SampleIterator::append_start_timestamps):
//! `rate`, `increase`, `irate` and `resets` over a series that has them take the general
//! rollup path (`start_ts` holds the rules), `start_timestamp()` reads them, and series
//! without them (every series of a store that keeps none) evaluate as before.

mod aggregate;
mod annotations;
mod binary;
pub mod deep;
mod engine;
mod eval;
pub(crate) mod functions;
mod hist;
mod info;
mod json;
mod par;
pub mod parser;
mod plan;
mod quantile;
mod start_ts;
mod value;
mod xxhash;

pub use annotations::Annotations;
pub use engine::{Engine, EngineOptions, QueryOptions, QueryResult, QueryStats};
pub use json::{
    parse_query, parse_query_ctx, write_histogram_json, write_json_float, write_sample_value,
};
pub use value::{FloatHistogram, HPoint, HistogramSeries, Point, Sample, Series, Value};

use m3query_storage::Context;

/// Errors a query can end with. The HTTP layer maps each variant to Prometheus's error kind
/// in its one table (`m3query_server::error`); the kinds noted here are that table's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The expression does not parse or type-check (HTTP 400 `bad_data`).
    #[error("{0}")]
    Parse(#[from] parser::ParseError),
    /// Evaluation failed (HTTP 422 `execution`), e.g. duplicate series or bad arguments.
    #[error("{0}")]
    Execution(String),
    /// More samples than `max_samples` would be held at once (HTTP 422 `execution`).
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
    /// The deadline passed (HTTP 503 `timeout`).
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// The request was canceled (HTTP 499 `canceled`).
    #[error("query was canceled in {0}")]
    Canceled(&'static str),
    /// More series than `max_fetched_series` with `require_exhaustive` (HTTP 422 `execution`).
    #[error("query matched more than {limit} series (limit exceeded; require_exhaustive is set)")]
    TooManySeries {
        /// The configured `max_fetched_series`.
        limit: usize,
    },
    /// An answer larger than the server gives (HTTP 400 `bad_data`), e.g. `format_query` of
    /// a very long operator chain.
    #[error("{0}")]
    TooLarge(String),
    /// The store failed; the HTTP kind is the storage error's own, as on the metadata routes.
    #[error("{0}")]
    Storage(#[from] m3query_storage::Error),
}

impl Error {
    pub(crate) fn exec(msg: impl Into<String>) -> Self {
        Error::Execution(msg.into())
    }
}

/// A result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks the context, mapping its errors to ours (`env` names the phase, as Prometheus does).
pub(crate) fn check_ctx(ctx: &Context, env: &'static str) -> Result<()> {
    ctx.check().map_err(|e| ctx_error(e, env))
}

/// A context's error as ours.
pub(crate) fn ctx_error(e: m3query_storage::Error, env: &'static str) -> Error {
    match e {
        m3query_storage::Error::Canceled => Error::Canceled(env),
        m3query_storage::Error::DeadlineExceeded => Error::Timeout(env),
        e => Error::Storage(e),
    }
}

/// Parses an expression, as `/api/v1/parse_query` and the engine do (on a [`deep`] stack).
pub fn parse(expr: &str) -> Result<parser::Expr> {
    Ok(parser::parse(expr)?)
}

/// Formats an expression as `/api/v1/format_query` does (Prometheus's prettier: one line
/// up to 100 characters, longer expressions split and indented).
pub fn format_query(expr: &str) -> Result<String> {
    format_query_ctx(expr, &Context::background())
}

/// [`format_query`] that stops when `ctx` is canceled or past its deadline.
pub fn format_query_ctx(expr: &str, ctx: &Context) -> Result<String> {
    deep::run(|| {
        let e = parser::parse_with_ctx(expr, parser::ParseOptions::default(), ctx)?;
        parser::pretty_ctx(&e, ctx)
    })
}
