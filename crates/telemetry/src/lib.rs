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

pub mod config;
pub mod http;
pub mod propagation;
mod sampler;

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
pub use propagation::Propagation;

/// Our version, as reported in process tags and build info.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid logging.level {level:?}: {reason}")]
    LogLevel { level: String, reason: String },
    #[error("tracing backend {backend:?}: {reason}")]
    Backend { backend: String, reason: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `logging:`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or per-target directives as `RUST_LOG`
    /// takes them (`info,m3query_tsdb=debug`).
    pub level: String,
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
    pub fn validate(&self) -> Result<(), Error> {
        self.filter().map(|_| ())
    }

    fn filter(&self) -> Result<EnvFilter, Error> {
        EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .parse(&self.level)
            .map_err(|e| Error::LogLevel {
                level: self.level.clone(),
                reason: e.to_string(),
            })
    }
}

/// Where log lines go; tests capture them, the binary writes to stderr.
pub type LogWriter = tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Builds [`Telemetry`].
pub struct TelemetryBuilder {
    tracing: TracingConfig,
    logging: LoggingConfig,
    exporter: Option<ExporterInstall>,
    writer: Option<LogWriter>,
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

    /// Writes log lines to `writer` instead of stderr.
    pub fn with_log_writer(mut self, writer: LogWriter) -> Self {
        self.writer = Some(writer);
        self
    }

    pub fn build(mut self) -> Result<Telemetry, Error> {
        let log_filter = self.logging.filter()?;
        let writer = self
            .writer
            .take()
            .unwrap_or_else(|| LogWriter::new(std::io::stderr));
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
        let provider = match (self.exporter.take(), self.tracing.effective_backend()) {
            (Some(install), _) => Some(install(self.provider_builder(&service_name)).build()),
            (None, Backend::None) => None,
            (None, backend) => {
                return Err(Error::Backend {
                    backend: format!("{backend:?}").to_lowercase(),
                    reason: "no exporter is built into this version".into(),
                });
            }
        };

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
        };

        let otel_layer = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("m3query"))
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                // Spans only from INFO up: dependencies' debug spans (hyper, h2) stay out.
                .with_filter(LevelFilter::INFO)
        });
        let subscriber = tracing_subscriber::registry()
            .with(fmt_layer)
            .with(otel_layer);
        Ok(Telemetry {
            provider,
            dispatch: tracing::Dispatch::new(subscriber),
            propagation,
        })
    }

    fn provider_builder(&self, service_name: &str) -> ProviderBuilder {
        let mut attrs = vec![
            KeyValue::new("service.name", service_name.to_string()),
            KeyValue::new("service.version", VERSION),
        ];
        if let Some(j) = &self.tracing.jaeger {
            for (k, v) in &j.tags.0 {
                attrs.push(KeyValue::new(k.clone(), v.to_string()));
            }
        }
        SdkTracerProvider::builder()
            .with_sampler(sampler::build(&self.tracing))
            .with_resource(Resource::builder_empty().with_attributes(attrs).build())
    }
}

/// Logs and traces for the process.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    dispatch: tracing::Dispatch,
    propagation: Propagation,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("tracing", &self.provider.is_some())
            .finish()
    }
}

impl Telemetry {
    pub fn builder(tracing: TracingConfig, logging: LoggingConfig) -> TelemetryBuilder {
        TelemetryBuilder {
            tracing,
            logging,
            exporter: None,
            writer: None,
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

    pub fn propagation(&self) -> &Propagation {
        &self.propagation
    }

    /// Whether spans are exported anywhere.
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops exporters, waiting at most `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        if let Some(p) = &self.provider
            && let Err(e) = p.shutdown_with_timeout(timeout)
        {
            tracing::warn!(error = %e, "tracing shutdown did not complete");
        }
    }
}
