//! Jaeger's span model (`jaeger.thrift`: `Tag`, `Log`, `SpanRef`, `Span`, `Process`, `Batch`
//! with its `ClientStats`), written from OpenTelemetry's `SpanData` the way Jaeger clients
//! fill it in.
//!
//! - ids: the 128-bit trace id as `traceIdHigh`/`traceIdLow`, span and parent ids as i64;
//! - `flags`: sampled (1), plus debug (2) when the trace was forced by `jaeger-debug-id`;
//! - `references`: `CHILD_OF` the parent (local or remote, as jaeger-client-go records every
//!   `ChildOf`), `FOLLOWS_FROM` for links;
//! - tags keep their types (string, bool, long, double); `span.kind`; `error=true` from an
//!   OpenTelemetry ERROR status unless the span already has an `error` tag, and never on an
//!   HTTP span, whose `error` tag follows its status code (M3's contract: 5xx only);
//!   `jaeger.debug_id` is sent as `jaeger-debug-id`, the tag Jaeger clients and UI use;
//! - events become logs (`event` = the event name, then its attributes).

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, Value};
use opentelemetry_sdk::trace::SpanData;

use super::thrift::{Protocol, TType};
use crate::config::TagValue;

/// The trace-state key that marks a trace forced by the debug header (set by the sampler and
/// by propagation for inbound debug parents; W3C flags have no debug bit).
pub(crate) const DEBUG_TRACE_STATE_KEY: &str = "jaeger-debug";
/// The attribute the request span sets from the debug header.
pub(crate) const DEBUG_ID_ATTRIBUTE: &str = "jaeger.debug_id";
/// The tag Jaeger clients put the debug id under.
const JAEGER_DEBUG_TAG: &str = "jaeger-debug-id";

const FLAG_SAMPLED: i32 = 1;
const FLAG_DEBUG: i32 = 2;

/// A tag value as Jaeger types it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum JTag<'a> {
    Str(std::borrow::Cow<'a, str>),
    Double(f64),
    Bool(bool),
    Long(i64),
}

impl<'a> JTag<'a> {
    fn from_value(v: &'a Value) -> JTag<'a> {
        match v {
            Value::Bool(b) => JTag::Bool(*b),
            Value::I64(i) => JTag::Long(*i),
            Value::F64(f) => JTag::Double(*f),
            Value::String(s) => JTag::Str(s.as_str().into()),
            Value::Array(a) => JTag::Str(array_string(a).into()),
            other => JTag::Str(other.to_string().into()),
        }
    }

    pub(crate) fn from_config(v: &'a TagValue) -> JTag<'a> {
        match v {
            TagValue::Bool(b) => JTag::Bool(*b),
            TagValue::Int(i) => JTag::Long(*i),
            TagValue::Float(f) => JTag::Double(*f),
            TagValue::String(s) => JTag::Str(s.as_str().into()),
        }
    }
}

fn array_string(a: &Array) -> String {
    // Jaeger has no array tags; a JSON-like list keeps the elements readable and searchable.
    let items: Vec<String> = match a {
        Array::Bool(v) => v.iter().map(ToString::to_string).collect(),
        Array::I64(v) => v.iter().map(ToString::to_string).collect(),
        Array::F64(v) => v.iter().map(ToString::to_string).collect(),
        Array::String(v) => v.iter().map(|s| format!("{:?}", s.as_str())).collect(),
        other => return other.to_string(),
    };
    format!("[{}]", items.join(","))
}

/// `struct Tag { 1: key, 2: vType, 3: vStr, 4: vDouble, 5: vBool, 6: vLong }`.
pub(crate) fn write_tag<P: Protocol>(p: &mut P, key: &str, v: &JTag<'_>) {
    p.struct_begin();
    p.field_str(1, key);
    match v {
        JTag::Str(s) => {
            p.field_i32(2, 0);
            p.field_str(3, s);
        }
        JTag::Double(d) => {
            p.field_i32(2, 1);
            p.field_double(4, *d);
        }
        JTag::Bool(b) => {
            p.field_i32(2, 2);
            p.field_bool(5, *b);
        }
        JTag::Long(l) => {
            p.field_i32(2, 3);
            p.field_i64(6, *l);
        }
    }
    p.struct_end();
}

fn write_tags<P: Protocol>(p: &mut P, id: i16, tags: &[(&str, JTag<'_>)]) {
    p.field_begin(TType::List, id);
    p.list_begin(TType::Struct, tags.len());
    for (k, v) in tags {
        write_tag(p, k, v);
    }
}

/// `struct Process { 1: serviceName, 2: tags }`, encoded once per protocol.
pub(crate) fn write_process<P: Protocol>(p: &mut P, service: &str, tags: &[(&str, JTag<'_>)]) {
    p.struct_begin();
    p.field_str(1, service);
    if !tags.is_empty() {
        write_tags(p, 2, tags);
    }
    p.struct_end();
}

/// `struct ClientStats { 1: fullQueueDroppedSpans, 2: tooLargeDroppedSpans,
/// 3: failedToEmitSpans }`: what the reporter lost, which the agent turns into metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClientStats {
    pub full_queue_dropped: i64,
    pub too_large_dropped: i64,
    pub failed_to_emit: i64,
}

pub(crate) fn write_client_stats<P: Protocol>(p: &mut P, s: &ClientStats) {
    p.struct_begin();
    p.field_i64(1, s.full_queue_dropped);
    p.field_i64(2, s.too_large_dropped);
    p.field_i64(3, s.failed_to_emit);
    p.struct_end();
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Whether the span belongs to a trace forced by the debug header.
pub(crate) fn is_debug(s: &SpanData) -> bool {
    s.span_context.trace_state().get(DEBUG_TRACE_STATE_KEY) == Some("1")
        || s.attributes
            .iter()
            .any(|kv| kv.key.as_str() == DEBUG_ID_ATTRIBUTE)
}

fn span_kind_tag(k: &SpanKind) -> Option<&'static str> {
    match k {
        SpanKind::Server => Some("server"),
        SpanKind::Client => Some("client"),
        SpanKind::Producer => Some("producer"),
        SpanKind::Consumer => Some("consumer"),
        SpanKind::Internal => None,
    }
}

/// The span's tags in Jaeger's form.
pub(crate) fn span_tags(s: &SpanData) -> Vec<(&str, JTag<'_>)> {
    let mut tags: Vec<(&str, JTag<'_>)> = Vec::with_capacity(s.attributes.len() + 3);
    let mut has_error = false;
    let mut is_http = false;
    for kv in &s.attributes {
        let key = kv.key.as_str();
        match key {
            DEBUG_ID_ATTRIBUTE => {
                tags.push((JAEGER_DEBUG_TAG, JTag::from_value(&kv.value)));
                continue;
            }
            "error" => has_error = true,
            "http.status_code" => is_http = true,
            _ => {}
        }
        tags.push((key, JTag::from_value(&kv.value)));
    }
    if let Some(kind) = span_kind_tag(&s.span_kind) {
        tags.push(("span.kind", JTag::Str(kind.into())));
    }
    match &s.status {
        Status::Error { description } => {
            if !has_error && !is_http {
                tags.push(("error", JTag::Bool(true)));
            }
            tags.push(("otel.status_code", JTag::Str("ERROR".into())));
            if !description.is_empty() {
                tags.push((
                    "otel.status_description",
                    JTag::Str(description.as_ref().into()),
                ));
            }
        }
        Status::Ok => tags.push(("otel.status_code", JTag::Str("OK".into()))),
        Status::Unset => {}
    }
    tags
}

fn split_trace_id(s: &SpanData) -> (i64, i64) {
    let id = u128::from_be_bytes(s.span_context.trace_id().to_bytes());
    ((id >> 64) as u64 as i64, id as u64 as i64)
}

/// `struct Span` (ids, operationName, references, flags, startTime, duration, tags, logs).
pub(crate) fn write_span<P: Protocol>(p: &mut P, s: &SpanData) {
    let (high, low) = split_trace_id(s);
    let span_id = u64::from_be_bytes(s.span_context.span_id().to_bytes()) as i64;
    let parent_id = u64::from_be_bytes(s.parent_span_id.to_bytes()) as i64;
    p.struct_begin();
    p.field_i64(1, low);
    p.field_i64(2, high);
    p.field_i64(3, span_id);
    p.field_i64(4, parent_id);
    p.field_str(5, &s.name);

    let links = s.links.links.len();
    let refs = links + usize::from(parent_id != 0);
    if refs > 0 {
        p.field_begin(TType::List, 6);
        p.list_begin(TType::Struct, refs);
        if parent_id != 0 {
            write_ref(p, 0, low, high, parent_id);
        }
        for l in &s.links.links {
            let id = u128::from_be_bytes(l.span_context.trace_id().to_bytes());
            let sid = u64::from_be_bytes(l.span_context.span_id().to_bytes()) as i64;
            write_ref(p, 1, id as u64 as i64, (id >> 64) as u64 as i64, sid);
        }
    }

    let mut flags = 0;
    if s.span_context.is_sampled() {
        flags |= FLAG_SAMPLED;
    }
    if is_debug(s) {
        flags |= FLAG_DEBUG | FLAG_SAMPLED;
    }
    p.field_i32(7, flags);
    let start = micros(s.start_time);
    p.field_i64(8, start);
    p.field_i64(9, (micros(s.end_time) - start).max(0));

    let tags = span_tags(s);
    if !tags.is_empty() {
        write_tags(p, 10, &tags);
    }
    if !s.events.events.is_empty() {
        p.field_begin(TType::List, 11);
        p.list_begin(TType::Struct, s.events.events.len());
        for e in &s.events.events {
            p.struct_begin();
            p.field_i64(1, micros(e.timestamp));
            p.field_begin(TType::List, 2);
            p.list_begin(TType::Struct, e.attributes.len() + 1);
            write_tag(p, "event", &JTag::Str(e.name.as_ref().into()));
            for kv in &e.attributes {
                write_tag(p, kv.key.as_str(), &JTag::from_value(&kv.value));
            }
            p.struct_end();
        }
    }
    p.struct_end();
}

/// `struct SpanRef { 1: refType (0 CHILD_OF, 1 FOLLOWS_FROM), 2: traceIdLow, 3: traceIdHigh,
/// 4: spanId }`.
fn write_ref<P: Protocol>(p: &mut P, ref_type: i32, low: i64, high: i64, span_id: i64) {
    p.struct_begin();
    p.field_i32(1, ref_type);
    p.field_i64(2, low);
    p.field_i64(3, high);
    p.field_i64(4, span_id);
    p.struct_end();
}
