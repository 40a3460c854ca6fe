//! Metric metadata: type, help and unit of a metric family, as `/api/v1/metadata` shows it.

use std::fmt;

/// A metric family's type, with Prometheus's API spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum MetricType {
    /// Untyped, or a type we do not know.
    #[default]
    Unknown,
    /// A monotonically increasing count.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Bucketed observations with sum and count.
    Histogram,
    /// A histogram whose buckets can go down (OpenMetrics).
    GaugeHistogram,
    /// Quantiles with sum and count.
    Summary,
    /// Labels describing a target, with value 1 (OpenMetrics).
    Info,
    /// One series per state, 1 for the current one (OpenMetrics).
    StateSet,
}

impl MetricType {
    /// The type as the metadata API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Unknown => "unknown",
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::GaugeHistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::StateSet => "stateset",
        }
    }
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Type, help and unit of a metric family.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Metadata {
    /// The family's type.
    pub metric_type: MetricType,
    /// The `# HELP` text.
    pub help: String,
    /// The `# UNIT`, empty when none.
    pub unit: String,
}

/// An exemplar: an example observation (often carrying a `trace_id` label) attached to a
/// series' sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    /// The exemplar's own labels (not the series').
    pub labels: crate::Labels,
    /// The observed value.
    pub value: f64,
    /// When it was observed, ms since the epoch.
    pub t: i64,
}
