//! The root span of an HTTP request, as operators search for it.
//!
//! Name `METHOD route-template` (`GET /api/v1/query_range`, `GET unknown` when no route
//! matched), kind server, tags `http.method`, `http.route`, `http.url`, `http.status_code`
//! (integer), `component`, and `error=true` only for 5xx or a failed handler. The query's
//! `query`, `start`, `end` and `step` are declared here so handlers can record them.

use http::HeaderMap;
use opentelemetry::trace::TraceContextExt;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::propagation::Propagation;

/// Marks `span` so the OpenTelemetry layer leaves its subtree alone (see `crate::filter`).
fn mark_unsampled(span: &tracing::Span) {
    span.with_subscriber(|(id, dispatch)| {
        if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>()
            && let Some(s) = tracing_subscriber::registry::LookupSpan::span(registry, id)
        {
            s.extensions_mut().insert(crate::filter::Unsampled);
        }
    });
}

/// The request's root span and what the response needs from it.
#[derive(Debug)]
pub struct RequestSpan {
    span: tracing::Span,
    trace_id: Option<String>,
}

impl RequestSpan {
    /// Opens the span. The sampling decision is made here, with the final operation name and
    /// the remote parent, so a per-operation sampler sees what Jaeger will show.
    pub fn start(
        propagation: &Propagation,
        method: &str,
        route: Option<&str>,
        url: &str,
        headers: &HeaderMap,
    ) -> RequestSpan {
        let route_name = route.unwrap_or("unknown");
        let name = format!("{method} {route_name}");
        let span = tracing::info_span!(
            target: "m3query::http",
            "http.request",
            "otel.name" = %name,
            "otel.kind" = "server",
            "http.method" = %method,
            "http.route" = route,
            "http.url" = %url,
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
        );
        if span.is_disabled() {
            return RequestSpan {
                span,
                trace_id: None,
            };
        }
        if let Some(debug_id) = headers
            .get(&propagation.debug_header)
            .and_then(|v| v.to_str().ok())
            && !debug_id.is_empty()
        {
            span.record("jaeger.debug_id", debug_id);
        }
        if let Some(parent) = propagation.extract(headers) {
            // Only fails when no OpenTelemetry layer is installed, which `is_disabled` and the
            // context check below already cover.
            let _ = span.set_parent(parent.to_context());
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        let trace_id = if sc.is_valid() && sc.is_sampled() {
            let id = sc.trace_id().to_string();
            span.record("trace_id", id.as_str());
            Some(id)
        } else {
            mark_unsampled(&span);
            None
        };
        RequestSpan { span, trace_id }
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The hex trace id, when the request is sampled (what `X-Trace-Id` carries).
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
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
