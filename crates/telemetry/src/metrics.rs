//! Tracing's own metrics, read on `/metrics`:
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `m3query_tracing_spans_started_total` | backend | spans the sampler saw (sampled or not) |
//! | `m3query_tracing_spans_sampled_total` | backend | spans sampled, so queued for export |
//! | `m3query_tracing_spans_exported_total` | backend | spans the backend accepted (UDP: sent) |
//! | `m3query_tracing_spans_dropped_total` | backend, reason | spans lost: `queue_full`, `too_large`, `send_failed`, `agent_unreachable`, `export_failed`, `export_timeout`, `shutdown` |
//! | `m3query_tracing_sampler_refreshes_total` | result | remote sampler polls: `updated`, `fetch_failed`, `rejected` |
//!
//! `backend` is `jaeger_agent`, `jaeger_collector`, `otlp`, `lightstep`, or `custom` for an
//! exporter handed to [`crate::TelemetryBuilder::with_exporter`].

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    backend: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// Why spans were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The export queue was full (the backend is slow or down).
    QueueFull,
    /// One span encodes larger than a datagram may be.
    TooLarge,
    /// The UDP send failed (DNS failure, buffer full, no route).
    SendFailed,
    /// The kernel refused the datagram: nothing listens on the agent's port (ICMP port
    /// unreachable, seen as ECONNREFUSED on the connected socket).
    AgentUnreachable,
    /// The backend refused the batch or could not be reached.
    ExportFailed,
    /// The export did not finish in time.
    ExportTimeout,
    /// Ended after the exporter shut down.
    Shutdown,
}

impl DropReason {
    const ALL: [DropReason; 7] = [
        DropReason::QueueFull,
        DropReason::TooLarge,
        DropReason::SendFailed,
        DropReason::AgentUnreachable,
        DropReason::ExportFailed,
        DropReason::ExportTimeout,
        DropReason::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::TooLarge => "too_large",
            DropReason::SendFailed => "send_failed",
            DropReason::AgentUnreachable => "agent_unreachable",
            DropReason::ExportFailed => "export_failed",
            DropReason::ExportTimeout => "export_timeout",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Remote sampler poll outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefreshResult {
    Updated,
    FetchFailed,
    Rejected,
}

/// All counters, shared by the sampler, the export queue and the exporters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    started: Family<BackendLabels, Counter>,
    sampled: Family<BackendLabels, Counter>,
    exported: Family<BackendLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    refreshes: Family<ResultLabels, Counter>,
    tail_captured: Family<ReasonLabels, Counter>,
    tail_rate_limited: Counter,
}

/// Tail capture's counters: requests captured by reason, and those the rate limit refused.
#[derive(Clone, Debug)]
pub(crate) struct TailCounters {
    slow: Counter,
    error: Counter,
    pub rate_limited: Counter,
}

impl TailCounters {
    pub(crate) fn captured(&self, reason: crate::tail::Reason) -> &Counter {
        match reason {
            crate::tail::Reason::Slow => &self.slow,
            crate::tail::Reason::Error => &self.error,
        }
    }
}

/// The counters of one backend, resolved once so the request path only does atomic adds.
#[derive(Clone, Debug)]
pub(crate) struct BackendCounters {
    pub started: Counter,
    pub sampled: Counter,
    pub exported: Counter,
    metrics: Arc<Metrics>,
    backend: String,
}

impl BackendCounters {
    pub(crate) fn dropped(&self, reason: DropReason) -> Counter {
        self.metrics
            .dropped
            .get_or_create(&DropLabels {
                backend: self.backend.clone(),
                reason: reason.as_str().to_string(),
            })
            .clone()
    }

    pub(crate) fn add_dropped(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.dropped(reason).inc_by(n);
        }
    }

    pub(crate) fn refreshed(&self, r: RefreshResult) {
        self.metrics
            .refreshes
            .get_or_create(&ResultLabels {
                result: match r {
                    RefreshResult::Updated => "updated",
                    RefreshResult::FetchFailed => "fetch_failed",
                    RefreshResult::Rejected => "rejected",
                }
                .to_string(),
            })
            .inc();
    }
}

impl Metrics {
    pub(crate) fn tail(&self) -> TailCounters {
        let reason = |r: crate::tail::Reason| {
            self.tail_captured
                .get_or_create(&ReasonLabels {
                    reason: r.as_str().to_string(),
                })
                .clone()
        };
        TailCounters {
            slow: reason(crate::tail::Reason::Slow),
            error: reason(crate::tail::Reason::Error),
            rate_limited: self.tail_rate_limited.clone(),
        }
    }

    pub(crate) fn backend(self: &Arc<Self>, backend: &str) -> BackendCounters {
        let l = BackendLabels {
            backend: backend.to_string(),
        };
        let counters = BackendCounters {
            started: self.started.get_or_create(&l).clone(),
            sampled: self.sampled.get_or_create(&l).clone(),
            exported: self.exported.get_or_create(&l).clone(),
            metrics: self.clone(),
            backend: backend.to_string(),
        };
        // Every reason is exported from the start, at 0, so rate() and alerts see the series
        // before the first drop.
        for r in DropReason::ALL {
            counters.dropped(r);
        }
        counters
    }
}

/// Encodes [`Metrics`] at scrape time.
#[derive(Debug, Clone)]
pub(crate) struct MetricsCollector(pub(crate) Arc<Metrics>);

fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    m: &M,
) -> std::fmt::Result {
    let e = enc.encode_descriptor(name, help, None, m.metric_type())?;
    m.encode(e)
}

impl Collector for MetricsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        family(
            &mut enc,
            "m3query_tracing_spans_started",
            "Spans started, sampled or not, by tracing backend",
            &m.started,
        )?;
        family(
            &mut enc,
            "m3query_tracing_spans_sampled",
            "Spans sampled and queued for export, by tracing backend",
            &m.sampled,
        )?;
        family(
            &mut enc,
            "m3query_tracing_spans_exported",
            "Spans handed to the tracing backend successfully",
            &m.exported,
        )?;
        family(
            &mut enc,
            "m3query_tracing_spans_dropped",
            "Sampled spans lost before reaching the backend, by reason",
            &m.dropped,
        )?;
        family(
            &mut enc,
            "m3query_tracing_sampler_refreshes",
            "Remote sampling strategy polls by result",
            &m.refreshes,
        )?;
        family(
            &mut enc,
            "m3query_tracing_tail_captured",
            "Unsampled requests exported anyway because they were slow or failed, by reason",
            &m.tail_captured,
        )?;
        family(
            &mut enc,
            "m3query_tracing_tail_rate_limited",
            "Slow or failed unsampled requests not exported: over tracing.tailCapture.maxPerSecond",
            &m.tail_rate_limited,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn encodes_counters_with_labels() {
        let m = Arc::new(Metrics::default());
        let c = m.backend("jaeger_agent");
        c.started.inc_by(3);
        c.sampled.inc();
        c.add_dropped(DropReason::QueueFull, 2);
        c.refreshed(RefreshResult::FetchFailed);
        let mut r = Registry::default();
        r.register_collector(Box::new(MetricsCollector(m)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("encode");
        for want in [
            r#"m3query_tracing_spans_started_total{backend="jaeger_agent"} 3"#,
            r#"m3query_tracing_spans_sampled_total{backend="jaeger_agent"} 1"#,
            r#"m3query_tracing_spans_exported_total{backend="jaeger_agent"} 0"#,
            r#"m3query_tracing_spans_dropped_total{backend="jaeger_agent",reason="queue_full"} 2"#,
            r#"m3query_tracing_sampler_refreshes_total{result="fetch_failed"} 1"#,
        ] {
            assert!(out.contains(want), "missing {want}:\n{out}");
        }
    }
}
