//! The root span of an HTTP request, as operators search for it.
//!
//! Name `METHOD route-template` (`GET /api/v1/query_range`, `GET unknown` when no route
//! matched), kind server, tags `http.method`, `http.route`, `http.url`, `http.status_code`
//! (integer), `component`, and `error=true` only for 5xx or a failed handler. The query's
//! `query`, `start`, `end` and `step` are declared here so handlers can record them. Who
//! asked is tagged from the request's headers ([`CLIENT_HEADERS`]): `http.user_agent`, and
//! Grafana's `grafana.dashboard_uid`, `grafana.panel_id` and `grafana.org_id`.
//!
//! A request the head sampler passes over can still be exported when it ends slow or failed
//! ([`RequestSpan::tail_check`], `crate::tail`).

use http::HeaderMap;
use opentelemetry::trace::TraceContextExt;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::filter::{REQUEST_TARGET, UNSAMPLED_TARGET};
use crate::propagation::Propagation;

/// The request span, under `target` (which decides whether the OpenTelemetry layer sees it).
macro_rules! request_span {
    ($target:expr, $name:expr, $method:expr, $route:expr, $url:expr) => {
        tracing::info_span!(
            target: $target,
            "http.request",
            "otel.name" = %$name,
            "otel.kind" = "server",
            "http.method" = %$method,
            "http.route" = $route,
            "http.url" = %$url,
            "http.status_code" = Empty,
            "component" = "m3query",
            "error" = Empty,
            "otel.status_code" = Empty,
            "jaeger.debug_id" = Empty,
            "trace_id" = Empty,
            "query" = Empty,
            "start" = Empty,
            "end" = Empty,
            "step" = Empty,
            "http.user_agent" = Empty,
            "grafana.dashboard_uid" = Empty,
            "grafana.panel_id" = Empty,
            "grafana.org_id" = Empty,
        )
    };
}

/// Request headers that become root span tags: who asked. Grafana names the dashboard, panel
/// and organization a query came from, so a slow trace leads to the panel that sent it.
pub const CLIENT_HEADERS: [(&str, &str); 4] = [
    ("user-agent", "http.user_agent"),
    ("x-dashboard-uid", "grafana.dashboard_uid"),
    ("x-panel-id", "grafana.panel_id"),
    ("x-grafana-org-id", "grafana.org_id"),
];

/// Longest client header value kept (a span tag, a log field): headers are the client's to
/// fill.
pub const MAX_CLIENT_HEADER_LEN: usize = 256;

/// A client header's value as a tag: valid UTF-8, trimmed, at most
/// [`MAX_CLIENT_HEADER_LEN`] bytes, not empty.
pub fn client_tag(v: &http::HeaderValue) -> Option<&str> {
    let v = v.to_str().ok()?.trim();
    if v.is_empty() {
        return None;
    }
    let mut end = v.len().min(MAX_CLIENT_HEADER_LEN);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    Some(&v[..end])
}

fn record_client_headers(span: &tracing::Span, headers: &HeaderMap) {
    for (header, field) in CLIENT_HEADERS {
        if let Some(v) = headers.get(header).and_then(client_tag) {
            span.record(field, v);
        }
    }
}

/// The request's root span and what the response needs from it.
#[derive(Debug)]
pub struct RequestSpan {
    span: tracing::Span,
    trace_id: Option<String>,
    /// Unsampled, with tail capture on: the request may still be exported.
    tail: bool,
}

impl RequestSpan {
    /// Opens the span. The sampling decision is made first, with the final operation name and
    /// the remote parent, so a per-operation sampler sees what Jaeger will show; an unsampled
    /// request's span is opened under a target the OpenTelemetry layer ignores, so it costs
    /// what a log-only span costs and nothing more.
    pub fn start(
        propagation: &Propagation,
        method: &str,
        route: Option<&str>,
        url: &str,
        headers: &HeaderMap,
    ) -> RequestSpan {
        let route_name = route.unwrap_or("unknown");
        let name = format!("{method} {route_name}");
        let Some(sampler) = &propagation.sampler else {
            // Nothing is exported: the span serves the logs only.
            let span = request_span!(REQUEST_TARGET, name, method, route, url);
            record_client_headers(&span, headers);
            return RequestSpan {
                span,
                trace_id: None,
                tail: false,
            };
        };
        let parent = propagation.extract(headers).map(|p| p.to_context());
        let debug_id = headers
            .get(&propagation.debug_header)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty());
        let (sampled, trace_id) = sampler.decide_root(parent.as_ref(), debug_id.is_some(), &name);
        if !sampled {
            let span = request_span!(UNSAMPLED_TARGET, name, method, route, url);
            record_client_headers(&span, headers);
            if let Some(policy) = &propagation.tail {
                crate::tail::seed(&span, trace_id, parent, policy.clone());
            }
            return RequestSpan {
                span,
                trace_id: None,
                tail: propagation.tail.is_some(),
            };
        }
        let span = request_span!(REQUEST_TARGET, name, method, route, url);
        record_client_headers(&span, headers);
        if let Some(debug_id) = debug_id {
            span.record("jaeger.debug_id", debug_id);
        }
        if let Some(parent) = parent {
            // Only fails when no OpenTelemetry layer is installed, which the context check
            // below covers.
            let _ = span.set_parent(parent);
        }
        // Builds the OpenTelemetry span now, which takes the decision made above.
        let sc = span.context().span().span_context().clone();
        crate::sampler::clear_decided();
        let trace_id = (sc.is_valid() && sc.is_sampled()).then(|| {
            let id = sc.trace_id().to_string();
            span.record("trace_id", id.as_str());
            id
        });
        RequestSpan {
            span,
            trace_id,
            tail: false,
        }
    }

    /// The request's span, to record fields on or parent phase spans.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The hex trace id, when the request is sampled or tail-captured (what `X-Trace-Id`
    /// carries).
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    /// Keeps this request out of tail capture, whatever its status or duration (an expected
    /// 503 such as a readiness probe's while storage starts).
    pub fn no_tail_capture(&mut self) {
        if self.tail {
            self.tail = false;
            crate::tail::exclude(&self.span);
        }
    }

    /// For a request the head sampler passed over: captures it for export when it is slower
    /// than the tail threshold or `status` is 5xx (`failed`: a handler failure), within the
    /// capture rate limit. Call it with the response status, so `X-Trace-Id` names a captured
    /// trace, and again when the request ends; once captured, it stays so. A request it does
    /// not capture is judged once more when its span closes.
    pub fn tail_check(&mut self, status: u16, failed: bool, elapsed: std::time::Duration) {
        if !self.tail || self.trace_id.is_some() {
            return;
        }
        if let Some(id) = crate::tail::decide(&self.span, status, failed, elapsed) {
            self.trace_id = Some(id.to_string());
        }
    }

    /// Records the response status; `failed` marks a handler failure (a panic caught by the
    /// server) even when the status alone would not.
    pub fn record_status(&self, status: u16, failed: bool) {
        self.span.record("http.status_code", i64::from(status));
        if status >= 500 || failed {
            self.span.record("error", true);
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, JaegerConfig, SamplerType};
    use crate::{LoggingConfig, Telemetry, TracingConfig};

    fn telemetry(sampled: bool) -> Telemetry {
        let mut j = JaegerConfig::default();
        j.sampler.sampler_type = SamplerType::Const;
        j.sampler.param = if sampled { 1.0 } else { 0.0 };
        let cfg = TracingConfig {
            backend: Backend::Jaeger,
            jaeger: Some(j),
            ..TracingConfig::default()
        };
        Telemetry::builder(cfg, LoggingConfig::default())
            .with_exporter(opentelemetry_sdk::trace::InMemorySpanExporter::default())
            .with_log_writer(crate::LogWriter::new(std::io::sink))
            .build()
            .expect("telemetry")
    }

    /// What a remote read sends is what our own inbound parsing (and so any W3C or Jaeger
    /// peer) reads back as the current span, sampled.
    #[test]
    fn outbound_headers_carry_the_current_span_both_ways() {
        let t = telemetry(true);
        let p = t.propagation();
        tracing::dispatcher::with_default(t.dispatch(), || {
            let req = RequestSpan::start(p, "GET", Some("/q"), "/q", &HeaderMap::new());
            let trace_id = req.trace_id().expect("sampled").to_string();
            let _in = req.span().enter();
            let child = tracing::debug_span!(target: "m3query::remote", "remote.read");
            let _in_child = child.enter();
            let span_id = child.context().span().span_context().span_id();
            let out = p.outbound_headers();
            for name in ["traceparent", "uber-trace-id"] {
                let mut h = HeaderMap::new();
                let (_, v) = out.iter().find(|(k, _)| k == name).expect(name);
                h.insert(name, v.parse().expect("header value"));
                let parent = p.extract(&h).expect(name);
                let sc = &parent.span_context;
                assert_eq!(sc.trace_id().to_string(), trace_id, "{name}: {v}");
                assert_eq!(sc.span_id(), span_id, "{name}: {v}");
                assert!(sc.is_sampled(), "{name}: {v}");
            }
        });
        // Unsampled: nothing to join, nothing sent.
        let t = telemetry(false);
        let p = t.propagation();
        tracing::dispatcher::with_default(t.dispatch(), || {
            let req = RequestSpan::start(p, "GET", Some("/q"), "/q", &HeaderMap::new());
            let _in = req.span().enter();
            assert!(p.outbound_headers().is_empty());
        });
    }
}
