//! Span export: a bounded queue (its own thread, drops counted) in front of one exporter per
//! backend.
//!
//! | `tracing:` | exporter | metrics `backend` label |
//! | --- | --- | --- |
//! | `backend: jaeger` | Jaeger agent, compact Thrift over UDP to `reporter.localAgentHostPort` | `jaeger_agent` |
//! | `backend: jaeger` + `reporter.collectorEndpoint` | Jaeger collector, binary Thrift over HTTP | `jaeger_collector` |
//! | `backend: otlp` | OTLP gRPC or HTTP/protobuf to `otlp.endpoint` | `otlp` |
//! | `backend: lightstep` | OTLP to the satellite or LightStep's public ingest | `lightstep` |

pub(crate) mod http_client;
pub mod jaeger;
pub(crate) mod lightstep;
pub(crate) mod otlp;
pub(crate) mod queue;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Backend, ReporterConfig, TracingConfig};
use crate::metrics::Metrics;
use jaeger::{JaegerAgentExporter, JaegerCollectorExporter, JaegerProcess};
use queue::{Accounting, QueueOptions, QueueProcessor};

/// OpenTelemetry's batch size default, for OTLP batches.
const OTLP_MAX_BATCH: usize = 512;

/// The processor for the configured backend, its metrics label, and where it sends (for the
/// startup log).
pub(crate) struct Built {
    pub processor: QueueProcessor,
    pub label: &'static str,
    pub target: String,
}

pub(crate) fn build(
    cfg: &TracingConfig,
    service_name: &str,
    metrics: &Arc<Metrics>,
) -> Result<Option<Built>, String> {
    match cfg.effective_backend() {
        Backend::None => Ok(None),
        Backend::Jaeger => {
            let j = cfg.jaeger.clone().unwrap_or_default();
            let r: ReporterConfig = j.reporter.clone();
            let extra: Vec<_> = j
                .tags
                .0
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let process = JaegerProcess::new(service_name, &extra);
            let mut opts = QueueOptions {
                queue_size: r.queue_size.max(1),
                max_batch: r.queue_size.max(1),
                flush_interval: r.buffer_flush_interval.0,
                export_timeout: Duration::from_secs(5),
                min_flush_interval: Duration::ZERO,
                log_spans: r.log_spans,
                verbose: false,
                accounting: Accounting::Exporter,
                thread_name: "m3query-jaeger".into(),
            };
            if let Some(endpoint) = r.collector_endpoint.clone() {
                let counters = metrics.backend("jaeger_collector");
                let auth = r
                    .user
                    .clone()
                    .filter(|u| !u.is_empty())
                    .map(|u| (u, r.password.clone().unwrap_or_default()));
                let exporter = JaegerCollectorExporter::new(
                    &endpoint.0,
                    auth,
                    &r.http_headers,
                    &process,
                    counters.clone(),
                )?;
                opts.export_timeout = jaeger::collector::COLLECTOR_TIMEOUT + Duration::from_secs(1);
                let processor = QueueProcessor::start(move || Ok(exporter), opts, counters)?;
                return Ok(Some(Built {
                    processor,
                    label: "jaeger_collector",
                    target: format!(
                        "Jaeger collector {}",
                        m3query_model::redact::redact_urls(&endpoint.0)
                    ),
                }));
            }
            let counters = metrics.backend("jaeger_agent");
            let target = r.local_agent_host_port.clone();
            let reresolve = (!r.disable_attempt_reconnecting
                && !r.attempt_reconnect_interval.0.is_zero())
            .then_some(r.attempt_reconnect_interval.0);
            let exporter_counters = counters.clone();
            let agent = target.clone();
            let processor = QueueProcessor::start(
                move || {
                    Ok(JaegerAgentExporter::new(
                        agent,
                        &process,
                        reresolve,
                        jaeger::agent::MAX_PACKET_SIZE,
                        exporter_counters,
                    ))
                },
                opts,
                counters,
            )?;
            Ok(Some(Built {
                processor,
                label: "jaeger_agent",
                target: format!("Jaeger agent udp://{target}"),
            }))
        }
        Backend::Otlp => {
            let c = cfg.otlp.clone().unwrap_or_default();
            let t = otlp::OtlpTarget::for_otlp(&c);
            let desc = format!(
                "OTLP {} {}",
                if t.http { "HTTP" } else { "gRPC" },
                m3query_model::redact::redact_urls(&t.endpoint)
            );
            let opts = QueueOptions {
                queue_size: c.queue_size.max(1),
                max_batch: c.queue_size.clamp(1, OTLP_MAX_BATCH),
                flush_interval: Duration::from_secs(1),
                export_timeout: t.timeout + Duration::from_secs(1),
                min_flush_interval: Duration::ZERO,
                log_spans: false,
                verbose: false,
                accounting: Accounting::ByResult,
                thread_name: "m3query-otlp".into(),
            };
            let processor =
                QueueProcessor::start(move || t.build(), opts, metrics.backend("otlp"))?;
            Ok(Some(Built {
                processor,
                label: "otlp",
                target: desc,
            }))
        }
        Backend::Lightstep => {
            let c = cfg.lightstep.clone().unwrap_or_default();
            let t = otlp::OtlpTarget::for_lightstep(&c);
            let desc = format!(
                "LightStep OTLP {} {}",
                if t.http { "HTTP" } else { "gRPC" },
                m3query_model::redact::redact_urls(&t.endpoint)
            );
            let queue_size = c.max_buffered_spans();
            let opts = QueueOptions {
                queue_size,
                max_batch: queue_size.min(OTLP_MAX_BATCH),
                flush_interval: c.reporting_period(),
                export_timeout: t.timeout + Duration::from_secs(1),
                min_flush_interval: c.min_reporting_period(),
                log_spans: false,
                verbose: c.verbose,
                accounting: Accounting::ByResult,
                thread_name: "m3query-lightstep".into(),
            };
            let limits = lightstep::LogLimits::from_config(&c);
            let reconnect = c.reconnect_period();
            let processor = QueueProcessor::start(
                move || lightstep::LightstepExporter::new(move || t.build(), limits, reconnect),
                opts,
                metrics.backend("lightstep"),
            )?;
            Ok(Some(Built {
                processor,
                label: "lightstep",
                target: desc,
            }))
        }
    }
}
