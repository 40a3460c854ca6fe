//! m3query's telemetry: logs and traces, configured from the `logging:` and `tracing:`
//! sections.
//!
//! [`Telemetry`] builds one `tracing` subscriber with two layers: the log formatter (text or
//! JSON, filtered by `logging.level`) and, when a tracing backend is configured, the
//! OpenTelemetry layer that turns `tracing` spans into exported spans. Spans are filtered
//! separately from logs, so `logging.level: warn` never silences traces.
//!
//! The per-request root span lives in [`http::RequestSpan`]; inbound trace context is parsed
//! by [`propagation::Propagation`]; the `tracing:` keys are in [`config`].
//!
//! Where spans go is chosen from `tracing.effective_backend()` ([`export`]): the Jaeger agent
//! (compact Thrift over UDP) or collector (binary Thrift over HTTP), OTLP, or LightStep over
//! OTLP. Export runs on its own thread behind a bounded queue, so a slow or dead backend costs
//! dropped spans, never request latency. Root spans are sampled as jaeger-client-go samples
//! them (`const`, `probabilistic`, `ratelimiting`, `remote` with per-operation strategies).
//! Requests the sampler passed over are still exported when they turn out slow or failed
//! (`tracing.tailCapture`, [`tail`]).
//! [`Telemetry::metrics_collector`] exposes spans started, sampled, exported and dropped (by
//! reason) and sampler refreshes for `/metrics`; [`Telemetry::shutdown`] flushes within a
//! bounded time.

pub mod baggage;
pub mod config;
pub mod export;
mod filter;
mod host;
pub mod http;
mod logging;
mod metrics;
mod poller;
pub mod propagation;
mod sampler;
mod tail;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use serde::{Deserialize, Serialize};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;

pub use config::{Backend, TracingConfig};
pub use prometheus_client::collector::Collector as MetricsCollector;
pub use propagation::Propagation;

/// Our version, as reported in process tags and build info.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why telemetry cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid logging.level {level:?}: {reason}")]
    /// `logging.level` does not parse.
    LogLevel {
        /// The level as configured.
        level: String,
        /// What is wrong with it.
        reason: String,
    },
    #[error("tracing backend {backend:?}: {reason}")]
    /// The tracing backend cannot start (a bad endpoint, an exporter error).
    Backend {
        /// The backend's name.
        backend: String,
        /// What failed.
        reason: String,
    },
    /// `install_global` was called twice (or another subscriber got there first).
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// `logging:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or per-target directives as `RUST_LOG`
    /// takes them (`info,m3query_tsdb=debug`).
    pub level: String,
    /// Text or JSON lines.
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl LoggingConfig {
    /// Checks `level` parses, so a bad config fails at load, not at start.
    pub fn validate(&self) -> Result<(), Error> {
        self.filter().map(|_| ())
    }

    fn filter(&self) -> Result<EnvFilter, Error> {
        check_directives(&self.level).map_err(|reason| Error::LogLevel {
            level: self.level.clone(),
            reason,
        })?;
        EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .parse(&self.level)
            .map_err(|e| Error::LogLevel {
                level: self.level.clone(),
                reason: e.to_string(),
            })
    }
}

/// The levels `logging.level` takes, alone or after `target=`.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Refuses what `EnvFilter` would take as something else: a bare word that is not a level
/// (`warning`, `verbose`) is a *target* name to it, which turns every other log off. So each
/// directive must be a level or `target=level`.
fn check_directives(level: &str) -> Result<(), String> {
    for d in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let lvl = d.rsplit_once('=').map_or(d, |(_, l)| l).trim();
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(lvl)) {
            return Err(format!(
                "{lvl:?} is not a level: use one of {} alone or as target=level \
                 (\"info,m3query_tsdb=debug\")",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Where log lines go; tests capture them, the binary writes to stderr.
pub type LogWriter = tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Builds [`Telemetry`].
pub struct TelemetryBuilder {
    tracing: TracingConfig,
    logging: LoggingConfig,
    exporter: Option<ExporterInstall>,
    writer: Option<LogWriter>,
    slow_threshold: Duration,
}

type ProviderBuilder = opentelemetry_sdk::trace::TracerProviderBuilder;
type ExporterInstall = Box<dyn FnOnce(ProviderBuilder) -> ProviderBuilder + Send>;

impl TelemetryBuilder {
    /// Exports spans synchronously to `exporter` instead of the configured backend (tests use
    /// the SDK's in-memory exporter).
    pub fn with_exporter<E: SpanExporter + 'static>(mut self, exporter: E) -> Self {
        self.exporter = Some(Box::new(move |b| b.with_simple_exporter(exporter)));
        self
    }

    /// The slow-request threshold (`middleware.logging.threshold`): tail capture's threshold
    /// when `tracing.tailCapture.threshold` is not set.
    pub fn with_slow_threshold(mut self, threshold: Duration) -> Self {
        self.slow_threshold = threshold;
        self
    }

    /// Writes log lines to `writer` instead of stderr.
    pub fn with_log_writer(mut self, writer: LogWriter) -> Self {
        self.writer = Some(writer);
        self
    }

    /// Builds the exporter, sampler and subscriber; an error if the backend cannot start.
    pub fn build(mut self) -> Result<Telemetry, Error> {
        let log_filter = self.logging.filter()?;
        let writer = self
            .writer
            .take()
            .unwrap_or_else(|| LogWriter::new(std::io::stderr));
        let writer = LogWriter::new(logging::RedactUrls(writer));
        let fmt_layer = match self.logging.format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .with_filter(log_filter)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(writer)
                .with_filter(log_filter)
                .boxed(),
        };

        let service_name = self.tracing.effective_service_name().to_string();
        let metrics = Arc::new(metrics::Metrics::default());
        let backend = self.tracing.effective_backend();
        let backend_err = |reason: String| Error::Backend {
            backend: format!("{backend:?}").to_lowercase(),
            reason,
        };
        let mut notices: Vec<String> = Vec::new();
        let (provider, remote, root_sampler) = match self.exporter.take() {
            Some(install) => {
                let built = sampler::build(
                    &self.tracing,
                    metrics.backend("custom"),
                    sampler::rate_limiter::system_clock(),
                );
                let b = self
                    .provider_builder(&service_name)
                    .with_sampler(built.sampler.clone());
                (Some(install(b).build()), built.remote, Some(built.sampler))
            }
            None => {
                match export::build(&self.tracing, &service_name, &metrics).map_err(backend_err)? {
                    None => (None, None, None),
                    Some(e) => {
                        let built = sampler::build(
                            &self.tracing,
                            metrics.backend(e.label),
                            sampler::rate_limiter::system_clock(),
                        );
                        notices.push(format!("tracing to {}", e.target));
                        let b = self
                            .provider_builder(&service_name)
                            .with_sampler(built.sampler.clone())
                            .with_span_processor(e.processor);
                        (Some(b.build()), built.remote, Some(built.sampler))
                    }
                }
            }
        };
        let poller = match (&remote, &self.tracing.jaeger) {
            (Some(r), j) => {
                let s = j.as_ref().map(|j| j.sampler.clone()).unwrap_or_default();
                let label = if self
                    .tracing
                    .jaeger
                    .as_ref()
                    .is_some_and(|j| j.reporter.collector_endpoint.is_some())
                {
                    "jaeger_collector"
                } else {
                    "jaeger_agent"
                };
                Some(
                    sampler::remote::Poller::start(
                        r.clone(),
                        &s.sampling_server_url.0,
                        &service_name,
                        s.sampling_refresh_interval.0,
                        metrics.backend(label),
                    )
                    .map_err(backend_err)?,
                )
            }
            (None, _) => None,
        };
        let mut warnings = Vec::new();
        if backend == Backend::Lightstep
            && self
                .tracing
                .lightstep
                .as_ref()
                .is_none_or(|l| l.access_token.is_empty())
        {
            warnings.push(
                "tracing.lightstep.access_token is empty: LightStep's public ingest will refuse \
                 spans (a satellite may accept them)"
                    .to_string(),
            );
        }

        let tail_cfg = &self.tracing.tail_capture;
        let tail = match (&root_sampler, &provider) {
            (Some(sampler), Some(p)) if tail_cfg.enabled => {
                let policy = Arc::new(tail::TailPolicy::new(
                    tail_cfg.threshold.map_or(self.slow_threshold, |d| d.0),
                    tail_cfg.errors,
                    tail_cfg.max_per_second,
                    metrics.tail(),
                    sampler::rate_limiter::system_clock(),
                ));
                let layer = tail::TailLayer::new(p.tracer("m3query"), sampler.clone())
                    .with_filter(tail::UnsampledOnly);
                Some((policy, layer))
            }
            _ => None,
        };
        let (tail_policy, tail_layer) = tail.unzip();

        let propagation = Propagation {
            jaeger_header: self
                .tracing
                .jaeger
                .as_ref()
                .map(|j| j.headers.trace_context_header_name.clone())
                .unwrap_or_else(|| "uber-trace-id".into()),
            debug_header: self
                .tracing
                .jaeger
                .as_ref()
                .map(|j| j.headers.jaeger_debug_header.clone())
                .unwrap_or_else(|| "jaeger-debug-id".into()),
            sampler: root_sampler,
            tail: tail_policy,
            baggage: None,
        };
        let (propagation, baggage_poller) = with_baggage(
            propagation,
            &self.tracing,
            &service_name,
            provider.is_some(),
        )
        .map_err(backend_err)?;

        let otel_layer = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("m3query"))
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                // Parents come from tracing's own span tree; attaching the OpenTelemetry
                // context on every poll of a request's future would cost each request for
                // nothing (no code here reads `Context::current`).
                .with_context_activation(false)
                // Request roots, and what happens inside sampled requests only.
                .with_filter(filter::SampledOnly)
        });
        let subscriber = tracing_subscriber::registry()
            .with(fmt_layer)
            .with(otel_layer)
            .with(tail_layer);
        let dispatch = tracing::Dispatch::new(subscriber);
        tracing::dispatcher::with_default(&dispatch, || {
            for n in &notices {
                tracing::info!(target: "m3query::tracing", service = %service_name, "{n}");
            }
            for w in &warnings {
                tracing::warn!(target: "m3query::tracing", "{w}");
            }
        });
        Ok(Telemetry {
            provider,
            dispatch,
            propagation,
            metrics,
            poller: parking_lot::Mutex::new(poller),
            baggage_poller: parking_lot::Mutex::new(baggage_poller),
            notices: notices.into_iter().chain(warnings).collect(),
        })
    }

    /// The provider with its resource: `service.name`, `service.version`, `host.name`, and
    /// per backend the configured tags (LightStep: `lightstep.component_name` too).
    fn provider_builder(&self, service_name: &str) -> ProviderBuilder {
        let mut attrs = vec![
            KeyValue::new("service.name", service_name.to_string()),
            KeyValue::new("service.version", VERSION),
        ];
        if let Some(h) = host::hostname() {
            attrs.push(KeyValue::new("host.name", h));
        }
        let tags = match self.tracing.effective_backend() {
            Backend::Lightstep => {
                attrs.push(KeyValue::new(
                    "lightstep.component_name",
                    service_name.to_string(),
                ));
                self.tracing.lightstep.as_ref().map(|l| &l.tags)
            }
            _ => self.tracing.jaeger.as_ref().map(|j| &j.tags),
        };
        for (k, v) in tags.map(|t| t.0.iter()).into_iter().flatten() {
            attrs.retain(|kv| kv.key.as_str() != k);
            attrs.push(KeyValue::new(k.clone(), tag_value(v)));
        }
        let b = SdkTracerProvider::builder()
            .with_id_generator(sampler::DecidedIds::default())
            .with_resource(Resource::builder_empty().with_attributes(attrs).build());
        // LightStep's max_logs_per_span / drop_span_logs bound events as they are recorded.
        match export::lightstep::max_events_per_span(&self.tracing) {
            Some(n) => b.with_max_events_per_span(n),
            None => b,
        }
    }
}

/// Baggage handling (jaeger-client-go's `headers` and `baggage_restrictions`) when spans are
/// exported at all, and the restrictions poller.
fn with_baggage(
    mut p: Propagation,
    cfg: &TracingConfig,
    service: &str,
    enabled: bool,
) -> Result<(Propagation, Option<baggage::Poller>), String> {
    if !enabled {
        return Ok((p, None));
    }
    let j = cfg.jaeger.clone().unwrap_or_default();
    let (restrictions, poller) = baggage::restrictions(j.baggage_restrictions.as_ref(), service)?;
    p.baggage = Some(baggage::BaggagePropagation {
        prefix: j.headers.trace_baggage_header_prefix.to_ascii_lowercase(),
        header: j.headers.jaeger_baggage_header.to_ascii_lowercase(),
        restrictions,
    });
    Ok((p, poller))
}

fn tag_value(v: &config::TagValue) -> opentelemetry::Value {
    match v {
        config::TagValue::Bool(b) => (*b).into(),
        config::TagValue::Int(i) => (*i).into(),
        config::TagValue::Float(f) => (*f).into(),
        config::TagValue::String(s) => s.clone().into(),
    }
}

/// Logs and traces for the process.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    dispatch: tracing::Dispatch,
    propagation: Propagation,
    metrics: Arc<metrics::Metrics>,
    poller: parking_lot::Mutex<Option<sampler::remote::Poller>>,
    baggage_poller: parking_lot::Mutex<Option<baggage::Poller>>,
    notices: Vec<String>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("tracing", &self.provider.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Starts building telemetry from the config sections.
    pub fn builder(tracing: TracingConfig, logging: LoggingConfig) -> TelemetryBuilder {
        TelemetryBuilder {
            tracing,
            logging,
            exporter: None,
            writer: None,
            slow_threshold: Duration::from_secs(1),
        }
    }

    /// Makes this the process-wide subscriber (the binary does this once).
    pub fn install_global(&self) -> Result<(), Error> {
        tracing::dispatcher::set_global_default(self.dispatch.clone())
            .map_err(|_| Error::AlreadyInstalled)
    }

    /// The subscriber, for tests that scope it with `tracing::dispatcher::with_default`.
    pub fn dispatch(&self) -> &tracing::Dispatch {
        &self.dispatch
    }

    /// The header names and sampler that request handling uses.
    pub fn propagation(&self) -> &Propagation {
        &self.propagation
    }

    /// Whether spans are exported anywhere.
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Tracing's own counters (spans started, sampled, exported, dropped by reason, sampler
    /// refreshes) for `/metrics`; register it once.
    pub fn metrics_collector(&self) -> Box<dyn MetricsCollector> {
        Box::new(metrics::MetricsCollector(self.metrics.clone()))
    }

    /// What tracing said at startup: where spans go, and warnings (an empty LightStep
    /// token). They are also logged through this subscriber when built.
    pub fn startup_notices(&self) -> &[String] {
        &self.notices
    }

    /// Stops the sampling poller, then flushes and stops the exporter, waiting at most
    /// `timeout` for what is queued to be sent.
    pub fn shutdown(&self, timeout: Duration) {
        if let Some(mut p) = self.poller.lock().take() {
            p.stop();
        }
        if let Some(mut p) = self.baggage_poller.lock().take() {
            p.stop();
        }
        if let Some(p) = &self.provider
            && let Err(e) = p.shutdown_with_timeout(timeout)
        {
            tracing::warn!(error = %e, "tracing shutdown did not complete");
        }
    }
}
