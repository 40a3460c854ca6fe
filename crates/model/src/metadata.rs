//! Metric metadata: type, help and unit of a metric family, as `/api/v1/metadata` shows it.

use std::fmt;

/// A metric family's type, with Prometheus's API spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum MetricType {
    #[default]
    Unknown,
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
}

impl MetricType {
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
    pub metric_type: MetricType,
    pub help: String,
    pub unit: String,
}

/// An exemplar: an example observation (often carrying a `trace_id` label) attached to a
/// series' sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    pub labels: crate::Labels,
    pub value: f64,
    pub t: i64,
}
