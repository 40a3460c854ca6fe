//! Query results (public) and the evaluator's intermediate values (crate-private).

use m3query_model::Labels;

/// Hash maps keyed by labels or hashes on hot paths: foldhash, not SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// One float point of a series: the storage's sample type (`t` in ms, `v`), so decoded
/// samples become evaluation input without a copy.
pub use m3query_model::Sample as Point;

/// One element of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series' labels (after `__name__` removal where the query drops it).
    pub labels: Labels,
    /// Evaluation time, ms.
    pub t_ms: i64,
    /// The value.
    pub v: f64,
}

/// One series of a range result: its labels and samples in time order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: Labels,
    /// The points, one per step that has a value.
    pub samples: Vec<Point>,
}

/// A query's result.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number at the evaluation time.
    Scalar {
        /// Evaluation time, ms.
        t_ms: i64,
        /// The value.
        v: f64,
    },
    /// A string at the evaluation time.
    String {
        /// Evaluation time, ms.
        t_ms: i64,
        /// The value.
        s: String,
    },
    /// An instant vector: one sample per series, at the evaluation time.
    Vector(Vec<Sample>),
    /// A range result: a range query's series, or an instant query's range vector.
    Matrix(Vec<Series>),
}

impl Value {
    /// The `resultType` of the JSON API.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar { .. } => "scalar",
            Value::String { .. } => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// A series during evaluation: points at step timestamps (or raw timestamps for range
/// vectors), and whether `__name__` must go at the end (delayed name removal).
#[derive(Clone, Debug)]
pub(crate) struct ESeries {
    pub labels: Labels,
    pub points: Vec<Point>,
    pub drop_name: bool,
}

pub(crate) type Matrix = Vec<ESeries>;

/// One element of an instant vector during evaluation.
#[derive(Clone, Debug)]
pub(crate) struct Elem {
    pub labels: Labels,
    pub v: f64,
    /// The sample's own timestamp (for `timestamp()`), else the step.
    pub t: i64,
    pub drop_name: bool,
    /// Index of the series this element came from in its argument's matrix.
    pub si: usize,
    /// Output series identity, when the producer knows it (`NO_OID`: look the labels up).
    /// Elements with the same `oid` in one `range_eval` belong to the same output series.
    pub oid: u32,
}

/// "No known output identity" for [`Elem::oid`].
pub(crate) const NO_OID: u32 = u32::MAX;

/// What evaluating a node yields.
#[derive(Debug)]
pub(crate) enum Val {
    Matrix(Matrix),
    String(String),
}

/// Total points in a matrix.
pub(crate) fn total_points(m: &Matrix) -> usize {
    m.iter().map(|s| s.points.len()).sum()
}
