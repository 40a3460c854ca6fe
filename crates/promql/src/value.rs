//! Query results (public) and the evaluator's intermediate values (crate-private).

use m3query_model::Labels;

/// Hash maps keyed by labels or hashes on hot paths: foldhash, not SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// One float point of a series: the storage's sample type (`t` in ms, `v`), so decoded
/// samples become evaluation input without a copy.
pub use m3query_model::Sample as Point;

/// One native histogram point: a timestamp and a shared histogram (the storage's histogram
/// sample type, so selected histograms become evaluation input without a copy).
pub use m3query_storage::HistogramSample as HPoint;

/// The histogram type every PromQL operation works on.
pub use m3query_model::FloatHistogram;

/// Native histogram points of one result series. A query's float points are in
/// [`QueryResult::value`](crate::QueryResult); its histogram points come here, beside them
/// (as Prometheus's `Series` holds `Floats` and `Histograms` apart), so the float result
/// types stay as they were.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSeries {
    /// The series' labels (the same labels as the float series of the same series, if any).
    pub labels: Labels,
    /// The histogram points in time order; for an instant vector one point at the
    /// evaluation time.
    pub points: Vec<HPoint>,
}

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
    /// Native histogram points, in time order, at timestamps `points` does not use. Empty
    /// for float series, so float code paths never look at it.
    pub hists: Vec<HPoint>,
    pub drop_name: bool,
}

impl ESeries {
    /// A float series.
    pub fn floats(labels: Labels, points: Vec<Point>, drop_name: bool) -> Self {
        ESeries {
            labels,
            points,
            hists: Vec::new(),
            drop_name,
        }
    }
}

pub(crate) type Matrix = Vec<ESeries>;

/// One element of an instant vector during evaluation.
#[derive(Clone, Debug)]
pub(crate) struct Elem {
    pub labels: Labels,
    pub v: f64,
    /// A native histogram sample (then `v` is unused); `None` for floats.
    pub h: Option<std::sync::Arc<FloatHistogram>>,
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
    m.iter().map(|s| s.points.len() + s.hists.len()).sum()
}
