//! m3query's data model: the vocabulary every other crate speaks.
//!
//! - [`Labels`]: a sorted, immutable, cheaply cloned label set (one `Arc`), with the
//!   `__name__` label first-class through [`Labels::metric_name`].
//! - [`Matcher`]: `=`, `!=`, `=~`, `!~` with Prometheus's anchored regex semantics and fast
//!   paths for literals, prefixes and `a|b|c` alternations.
//! - [`Sample`]: an `i64` millisecond timestamp and an `f64` value; the staleness marker's NaN
//!   bit pattern is preserved exactly ([`STALE_NAN`]).
//! - [`histogram`]: native histograms ([`Histogram`], [`FloatHistogram`]) with Prometheus
//!   3.x semantics: validation, add/sub, scaling, compaction, reset detection, buckets.
//! - [`redact`]: secrets out of printed URLs and config errors.
//! - [`time`]: Prometheus durations (`1h30m`) and API timestamps (RFC3339 or unix seconds).
//!
//! No I/O and no async here: this crate is shared by the storage engine, the PromQL engine,
//! the remote protocols and the HTTP layer.

pub mod histogram;
mod labels;
mod matcher;
mod metadata;
pub mod redact;
mod sample;
pub mod time;

pub use histogram::{FloatHistogram, Histogram};
pub use labels::{
    Label, LabelPairs, Labels, LabelsBuilder, METRIC_NAME, is_valid_label_name,
    is_valid_legacy_metric_name,
};
pub use matcher::{MatchOp, Matcher, MatcherError};
pub use metadata::{Exemplar, Metadata, MetricType};
pub use sample::{STALE_NAN, STALE_NAN_BITS, Sample, is_stale_nan};
