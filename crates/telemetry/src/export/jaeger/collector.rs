//! Spans to a Jaeger collector over HTTP: `POST` of one binary-Thrift `Batch` per export
//! to `reporter.collectorEndpoint` (`Content-Type: application/x-thrift`), with basic auth
//! from `user`/`password` and the configured `http_headers`, as jaeger-client-go's HTTP
//! transport sends it. Requests time out after 5 s (jaeger-client-go's default).

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::JaegerProcess;
use super::model;
use super::thrift::{Binary, Protocol, TType};
use crate::logging::LogLimiter;
use crate::metrics::{BackendCounters, DropReason};

/// jaeger-client-go's HTTP transport timeout.
pub const COLLECTOR_TIMEOUT: Duration = Duration::from_secs(5);

/// The Jaeger collector HTTP exporter.
pub struct JaegerCollectorExporter {
    client: reqwest::Client,
    endpoint: String,
    auth: Option<(String, String)>,
    headers: reqwest::header::HeaderMap,
    process: Vec<u8>,
    seq_no: AtomicI64,
    counters: BackendCounters,
    log: LogLimiter,
}

impl fmt::Debug for JaegerCollectorExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JaegerCollectorExporter")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl JaegerCollectorExporter {
    pub(crate) fn new(
        endpoint: &str,
        auth: Option<(String, String)>,
        headers: &std::collections::BTreeMap<String, String>,
        process: &JaegerProcess,
        counters: BackendCounters,
    ) -> Result<JaegerCollectorExporter, String> {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("tracing.jaeger.reporter.http_headers: {k:?}: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| format!("tracing.jaeger.reporter.http_headers: {k:?}: {e}"))?;
            h.insert(name, value);
        }
        Ok(JaegerCollectorExporter {
            client: crate::export::http_client::client(COLLECTOR_TIMEOUT)?,
            endpoint: endpoint.to_string(),
            auth,
            headers: h,
            process: process.encode_binary(),
            seq_no: AtomicI64::new(0),
            counters,
            log: LogLimiter::new(Duration::from_secs(60)),
        })
    }

    /// The request body: a binary-Thrift `Batch`.
    pub(crate) fn encode_batch(&self, spans: &[SpanData]) -> Vec<u8> {
        encode_batch(
            &self.process,
            spans,
            self.seq_no.fetch_add(1, Ordering::Relaxed) + 1,
        )
    }
}

pub(crate) fn encode_batch(process: &[u8], spans: &[SpanData], seq_no: i64) -> Vec<u8> {
    let mut body = Vec::with_capacity(process.len() + spans.len() * 512);
    let mut p = Binary::new(&mut body);
    p.struct_begin();
    p.field_begin(TType::Struct, 1);
    p.buf().extend_from_slice(process);
    p.field_begin(TType::List, 2);
    p.list_begin(TType::Struct, spans.len());
    for s in spans {
        model::write_span(&mut p, s);
    }
    p.field_i64(3, seq_no);
    p.struct_end();
    body
}

impl SpanExporter for JaegerCollectorExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = batch.len() as u64;
        let body = self.encode_batch(&batch);
        drop(batch);
        let mut req = self
            .client
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/x-thrift")
            .headers(self.headers.clone())
            .body(body);
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, Some(password));
        }
        async move {
            if n == 0 {
                return Ok(());
            }
            let err = match req.send().await {
                Ok(r) if r.status().is_success() => {
                    self.counters.exported.inc_by(n);
                    self.log.reset();
                    return Ok(());
                }
                Ok(r) => format!("the collector answered {}", r.status()),
                Err(e) => format!("{e}"),
            };
            self.counters.add_dropped(DropReason::ExportFailed, n);
            if let Some(suppressed) = self.log.check() {
                tracing::warn!(
                    target: "m3query::tracing",
                    collector = %self.endpoint,
                    error = %err,
                    spans = n,
                    suppressed,
                    "sending spans to the Jaeger collector failed"
                );
            }
            Err(OTelSdkError::InternalFailure(err))
        }
    }
}
