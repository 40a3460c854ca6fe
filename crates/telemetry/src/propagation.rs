//! Trace context across services: which remote span, if any, a request continues, and what
//! the requests we make to remote stores carry so a traced store joins our trace.
//!
//! Recognised, first match wins: W3C `traceparent` (+ `tracestate`), Jaeger's
//! `uber-trace-id` (header name configurable, as in jaeger-client-go), and B3 (`b3` single
//! header, or `X-B3-TraceId`/`X-B3-SpanId`/`X-B3-Sampled`/`X-B3-Flags`). Jaeger baggage
//! (`uberctx-*`, `jaeger-baggage`) is read and passed on by [`crate::baggage`].

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

/// The parsed remote parent of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteParent {
    /// The remote span: trace id, span id, flags.
    pub span_context: SpanContext,
    /// Jaeger's debug flag (0x02) was set: force sampling.
    pub debug: bool,
}

impl RemoteParent {
    /// An OpenTelemetry context whose active span is this remote span.
    pub fn to_context(&self) -> Context {
        Context::new().with_remote_span_context(self.span_context.clone())
    }
}

/// Header names that carry trace context (jaeger-client-go's `headers:` config).
#[derive(Debug, Clone)]
pub struct Propagation {
    /// The header with the Jaeger trace context (`uber-trace-id`).
    pub jaeger_header: String,
    /// A request carrying this header is sampled with the debug flag.
    pub debug_header: String,
    /// Decides request roots before their span exists; `None` when nothing is exported.
    pub(crate) sampler: Option<crate::sampler::Sampler>,
    /// Tail capture of unsampled requests; `None` when off or nothing is exported.
    pub(crate) tail: Option<std::sync::Arc<crate::tail::TailPolicy>>,
    /// Jaeger baggage handling; `None` when nothing is exported (as jaeger-client-go's
    /// no-op tracer, which passes no baggage on).
    pub baggage: Option<crate::baggage::BaggagePropagation>,
}

impl Default for Propagation {
    fn default() -> Self {
        Propagation {
            jaeger_header: "uber-trace-id".into(),
            debug_header: "jaeger-debug-id".into(),
            sampler: None,
            tail: None,
            baggage: None,
        }
    }
}

impl Propagation {
    /// Headers that carry the current span's context to a service it calls: W3C
    /// `traceparent` (+ `tracestate`) and Jaeger's header (`uber-trace-id`, or as
    /// configured), so a traced store joins the trace whichever propagation it speaks. Empty
    /// when the current span is not traced (tracing off, or an unsampled request, which has
    /// no trace to join: the store then decides for itself).
    ///
    /// The request's Jaeger baggage goes too (`uberctx-{key}`), sampled or not.
    pub fn outbound_headers(&self) -> Vec<(String, String)> {
        let mut out = self.trace_headers();
        if let Some(b) = &self.baggage {
            out.extend(b.outbound_headers());
        }
        out
    }

    /// Reads the request's baggage from `headers` onto its root `span` (see
    /// [`crate::baggage`]); nothing when tracing is off.
    pub fn attach_baggage(&self, span: &tracing::Span, headers: &HeaderMap) {
        if let Some(b) = &self.baggage {
            b.attach(span, headers);
        }
    }

    fn trace_headers(&self) -> Vec<(String, String)> {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() || !sc.is_sampled() {
            return Vec::new();
        }
        let debug = sc
            .trace_state()
            .get(crate::export::jaeger::model::DEBUG_TRACE_STATE_KEY)
            == Some("1");
        let mut out = vec![
            (
                "traceparent".to_string(),
                format!("00-{}-{}-01", sc.trace_id(), sc.span_id()),
            ),
            (
                self.jaeger_header.clone(),
                format!(
                    "{}:{}:0:{}",
                    sc.trace_id(),
                    sc.span_id(),
                    if debug { 3 } else { 1 }
                ),
            ),
        ];
        let state = sc.trace_state().header();
        if !state.is_empty() {
            out.push(("tracestate".to_string(), state));
        }
        out
    }

    /// The remote parent carried by `headers`, if any is present and valid.
    pub fn extract(&self, headers: &HeaderMap) -> Option<RemoteParent> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(tp) = get("traceparent")
            && let Some(p) = parse_traceparent(tp, get("tracestate"))
        {
            return Some(p);
        }
        if let Some(u) = get(&self.jaeger_header)
            && let Some(p) = parse_uber_trace_id(u)
        {
            return Some(p);
        }
        if let Some(b) = get("b3")
            && let Some(p) = parse_b3_single(b)
        {
            return Some(p);
        }
        parse_b3_multi(
            get("x-b3-traceid")?,
            get("x-b3-spanid")?,
            get("x-b3-sampled"),
            get("x-b3-flags"),
        )
    }
}

fn hex_u128(s: &str) -> Option<u128> {
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

fn hex_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn remote(
    trace: u128,
    span: u64,
    sampled: bool,
    debug: bool,
    state: TraceState,
) -> Option<RemoteParent> {
    if trace == 0 || span == 0 {
        return None;
    }
    let flags = if sampled || debug {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    // W3C flags have no debug bit (0x02 means "random" there), so Jaeger's debug flag
    // travels in the trace state, where the sampler and the Jaeger exporter look for it.
    let state = if debug {
        state
            .insert(crate::export::jaeger::model::DEBUG_TRACE_STATE_KEY, "1")
            .unwrap_or_default()
    } else {
        state
    };
    Some(RemoteParent {
        span_context: SpanContext::new(
            TraceId::from_bytes(trace.to_be_bytes()),
            SpanId::from_bytes(span.to_be_bytes()),
            flags,
            true,
            state,
        ),
        debug,
    })
}

/// `version-traceid-spanid-flags`, W3C Trace Context level 1.
fn parse_traceparent(v: &str, tracestate: Option<&str>) -> Option<RemoteParent> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let [version, trace, span, flags, ..] = parts.as_slice() else {
        return None;
    };
    if version.len() != 2 || *version == "ff" || hex_u64(version).is_none() {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if *version == "00" && parts.len() != 4 {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if trace.bytes().any(|b| b.is_ascii_uppercase()) || span.bytes().any(|b| b.is_ascii_uppercase())
    {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    remote(
        hex_u128(trace)?,
        hex_u64(span)?,
        flags & 1 == 1,
        false,
        state,
    )
}

/// `{trace-id}:{span-id}:{parent-span-id}:{flags}`, hex, possibly URL-encoded colons.
fn parse_uber_trace_id(v: &str) -> Option<RemoteParent> {
    let v = v.trim().replace("%3A", ":").replace("%3a", ":");
    let parts: Vec<&str> = v.split(':').collect();
    let [trace, span, _parent, flags] = parts.as_slice() else {
        return None;
    };
    let flags = u8::from_str_radix(flags, 16).ok()?;
    remote(
        hex_u128(trace)?,
        hex_u64(span)?,
        flags & 1 == 1,
        flags & 2 == 2,
        TraceState::default(),
    )
}

/// `{TraceId}-{SpanId}-{SamplingState}-{ParentSpanId}`; a lone `0`/`1`/`d` carries only a
/// sampling decision and no parent, which we do not use.
fn parse_b3_single(v: &str) -> Option<RemoteParent> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    if parts.len() < 2 {
        return None;
    }
    let sampling = parts.get(2).copied();
    let (sampled, debug) = match sampling {
        Some("1") => (true, false),
        Some("d") => (true, true),
        Some("0") | None => (false, false),
        Some(_) => return None,
    };
    remote(
        hex_u128(parts[0])?,
        hex_u64(parts[1])?,
        sampled,
        debug,
        TraceState::default(),
    )
}

fn parse_b3_multi(
    trace: &str,
    span: &str,
    sampled: Option<&str>,
    flags: Option<&str>,
) -> Option<RemoteParent> {
    let debug = flags.is_some_and(|f| f.trim() == "1");
    let sampled = matches!(sampled.map(str::trim), Some("1") | Some("true"));
    remote(
        hex_u128(trace.trim())?,
        hex_u64(span.trim())?,
        sampled,
        debug,
        TraceState::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn traceparent() {
        let p = Propagation::default()
            .extract(&headers(&[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )]))
            .expect("valid");
        assert_eq!(
            p.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(p.span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(p.span_context.is_sampled());
        assert!(p.span_context.is_remote());
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(
                Propagation::default()
                    .extract(&headers(&[("traceparent", bad)]))
                    .is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn uber_trace_id() {
        let p = Propagation::default()
            .extract(&headers(&[("uber-trace-id", "abc:def:0:3")]))
            .expect("valid");
        assert_eq!(
            p.span_context.trace_id().to_string(),
            "00000000000000000000000000000abc"
        );
        assert!(p.debug && p.span_context.is_sampled());
        assert_eq!(p.span_context.trace_state().get("jaeger-debug"), Some("1"));
        let p = Propagation::default()
            .extract(&headers(&[("uber-trace-id", "1%3A2%3A0%3A0")]))
            .expect("url-encoded");
        assert!(!p.span_context.is_sampled());
        assert!(
            Propagation::default()
                .extract(&headers(&[("uber-trace-id", "x:y:z")]))
                .is_none()
        );
    }

    #[test]
    fn b3() {
        let p = Propagation::default()
            .extract(&headers(&[(
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
            )]))
            .expect("single");
        assert!(p.span_context.is_sampled());
        let p = Propagation::default()
            .extract(&headers(&[
                ("x-b3-traceid", "463ac35c9f6413ad"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "1"),
            ]))
            .expect("multi");
        assert_eq!(p.span_context.span_id().to_string(), "a2fb4a1d1a96d312");
    }
}
