//! What we send, read back by an independent reader: the `thrift` crate's compact and binary
//! protocol implementations reading hand-written readers of Jaeger's IDL (jaeger.thrift,
//! agent.thrift), which also check every field's wire type against the IDL. Nothing here
//! reuses our encoder.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use thrift::protocol::{
    TBinaryInputProtocol, TCompactInputProtocol, TInputProtocol, TMessageType, TType,
};

use super::agent::{MAX_PACKET_SIZE, datagrams};
use super::collector::encode_batch;
use super::{JaegerProcess, model};
use crate::config::TagValue;
use crate::metrics::{BackendCounters, Metrics};

// ------------------------------------------------------------------ the IDL, read side

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Double(f64),
    Bool(bool),
    Long(i64),
}

#[derive(Debug, Clone)]
struct RTag {
    key: String,
    value: Val,
}

#[derive(Debug, Clone)]
struct RLog {
    timestamp: i64,
    fields: Vec<RTag>,
}

#[derive(Debug, Clone, PartialEq)]
struct RRef {
    ref_type: i32,
    trace_low: i64,
    trace_high: i64,
    span_id: i64,
}

#[derive(Debug, Clone, Default)]
struct RSpan {
    trace_low: i64,
    trace_high: i64,
    span_id: i64,
    parent_span_id: i64,
    operation: String,
    refs: Vec<RRef>,
    flags: i32,
    start: i64,
    duration: i64,
    tags: Vec<RTag>,
    logs: Vec<RLog>,
}

impl RSpan {
    fn tag(&self, k: &str) -> Option<&Val> {
        self.tags.iter().find(|t| t.key == k).map(|t| &t.value)
    }
    fn count(&self, k: &str) -> usize {
        self.tags.iter().filter(|t| t.key == k).count()
    }
}

#[derive(Debug, Clone, Default)]
struct RBatch {
    service: String,
    process_tags: Vec<RTag>,
    spans: Vec<RSpan>,
    seq_no: Option<i64>,
    stats: Option<(i64, i64, i64)>,
}

type P<'a> = &'a mut dyn TInputProtocol;

fn expect(got: TType, want: TType, what: &str) -> thrift::Result<()> {
    if got != want {
        return Err(thrift::Error::Application(thrift::ApplicationError::new(
            thrift::ApplicationErrorKind::Unknown,
            format!("{what}: wire type {got:?}, IDL says {want:?}"),
        )));
    }
    Ok(())
}

/// Reads a struct: `f(p, field id, wire type)` handles known fields and returns false for
/// unknown ones, which are skipped.
fn read_struct(
    p: P<'_>,
    mut f: impl FnMut(P<'_>, i16, TType) -> thrift::Result<bool>,
) -> thrift::Result<()> {
    p.read_struct_begin()?;
    loop {
        let fi = p.read_field_begin()?;
        if fi.field_type == TType::Stop {
            break;
        }
        let id = fi.id.unwrap_or(0);
        if !f(p, id, fi.field_type)? {
            p.skip(fi.field_type)?;
        }
        p.read_field_end()?;
    }
    p.read_struct_end()
}

fn read_list<T>(p: P<'_>, mut f: impl FnMut(P<'_>) -> thrift::Result<T>) -> thrift::Result<Vec<T>> {
    let l = p.read_list_begin()?;
    expect(l.element_type, TType::Struct, "list element")?;
    let mut out = Vec::new();
    for _ in 0..l.size {
        out.push(f(p)?);
    }
    p.read_list_end()?;
    Ok(out)
}

fn read_tag(p: P<'_>) -> thrift::Result<RTag> {
    let (mut key, mut vtype) = (String::new(), -1);
    let (mut s, mut d, mut b, mut l) = (None, None, None, None);
    read_struct(p, |p, id, t| {
        match id {
            1 => {
                expect(t, TType::String, "Tag.key")?;
                key = p.read_string()?;
            }
            2 => {
                expect(t, TType::I32, "Tag.vType")?;
                vtype = p.read_i32()?;
            }
            3 => {
                expect(t, TType::String, "Tag.vStr")?;
                s = Some(p.read_string()?);
            }
            4 => {
                expect(t, TType::Double, "Tag.vDouble")?;
                d = Some(p.read_double()?);
            }
            5 => {
                expect(t, TType::Bool, "Tag.vBool")?;
                b = Some(p.read_bool()?);
            }
            6 => {
                expect(t, TType::I64, "Tag.vLong")?;
                l = Some(p.read_i64()?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let value = match vtype {
        0 => Val::Str(s.unwrap_or_default()),
        1 => Val::Double(d.unwrap_or(f64::NAN)),
        2 => Val::Bool(b.unwrap_or(false)),
        3 => Val::Long(l.unwrap_or(i64::MIN)),
        other => panic!("tag {key}: vType {other}"),
    };
    Ok(RTag { key, value })
}

fn read_span(p: P<'_>) -> thrift::Result<RSpan> {
    let mut s = RSpan::default();
    read_struct(p, |p, id, t| {
        match id {
            1..=4 | 8 | 9 => {
                expect(t, TType::I64, "Span id/time field")?;
                let v = p.read_i64()?;
                match id {
                    1 => s.trace_low = v,
                    2 => s.trace_high = v,
                    3 => s.span_id = v,
                    4 => s.parent_span_id = v,
                    8 => s.start = v,
                    _ => s.duration = v,
                }
            }
            5 => {
                expect(t, TType::String, "Span.operationName")?;
                s.operation = p.read_string()?;
            }
            6 => {
                expect(t, TType::List, "Span.references")?;
                s.refs = read_list(p, |p| {
                    let mut r = RRef {
                        ref_type: -1,
                        trace_low: 0,
                        trace_high: 0,
                        span_id: 0,
                    };
                    read_struct(p, |p, id, t| {
                        match id {
                            1 => {
                                expect(t, TType::I32, "SpanRef.refType")?;
                                r.ref_type = p.read_i32()?;
                            }
                            2..=4 => {
                                expect(t, TType::I64, "SpanRef ids")?;
                                let v = p.read_i64()?;
                                match id {
                                    2 => r.trace_low = v,
                                    3 => r.trace_high = v,
                                    _ => r.span_id = v,
                                }
                            }
                            _ => return Ok(false),
                        }
                        Ok(true)
                    })?;
                    Ok(r)
                })?;
            }
            7 => {
                expect(t, TType::I32, "Span.flags")?;
                s.flags = p.read_i32()?;
            }
            10 => {
                expect(t, TType::List, "Span.tags")?;
                s.tags = read_list(p, read_tag)?;
            }
            11 => {
                expect(t, TType::List, "Span.logs")?;
                s.logs = read_list(p, |p| {
                    let mut l = RLog {
                        timestamp: 0,
                        fields: Vec::new(),
                    };
                    read_struct(p, |p, id, t| {
                        match id {
                            1 => {
                                expect(t, TType::I64, "Log.timestamp")?;
                                l.timestamp = p.read_i64()?;
                            }
                            2 => {
                                expect(t, TType::List, "Log.fields")?;
                                l.fields = read_list(p, read_tag)?;
                            }
                            _ => return Ok(false),
                        }
                        Ok(true)
                    })?;
                    Ok(l)
                })?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(s)
}

fn read_batch(p: P<'_>) -> thrift::Result<RBatch> {
    let mut b = RBatch::default();
    read_struct(p, |p, id, t| {
        match id {
            1 => {
                expect(t, TType::Struct, "Batch.process")?;
                read_struct(p, |p, id, t| {
                    match id {
                        1 => {
                            expect(t, TType::String, "Process.serviceName")?;
                            b.service = p.read_string()?;
                        }
                        2 => {
                            expect(t, TType::List, "Process.tags")?;
                            b.process_tags = read_list(p, read_tag)?;
                        }
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
            }
            2 => {
                expect(t, TType::List, "Batch.spans")?;
                b.spans = read_list(p, read_span)?;
            }
            3 => {
                expect(t, TType::I64, "Batch.seqNo")?;
                b.seq_no = Some(p.read_i64()?);
            }
            4 => {
                expect(t, TType::Struct, "Batch.stats")?;
                let mut st = (0, 0, 0);
                read_struct(p, |p, id, t| {
                    expect(t, TType::I64, "ClientStats field")?;
                    let v = p.read_i64()?;
                    match id {
                        1 => st.0 = v,
                        2 => st.1 = v,
                        3 => st.2 = v,
                        _ => {}
                    }
                    Ok(true)
                })?;
                b.stats = Some(st);
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(b)
}

/// One UDP datagram: `Agent.emitBatch(1: Batch batch)`, oneway, compact protocol; the
/// whole datagram must be consumed.
fn decode_datagram(d: &[u8]) -> RBatch {
    let mut rest = d;
    let batch = {
        let mut p = TCompactInputProtocol::new(&mut rest);
        let m = p.read_message_begin().expect("message header");
        assert_eq!(m.name, "emitBatch");
        assert_eq!(m.message_type, TMessageType::OneWay);
        let mut batch = None;
        read_struct(&mut p, |p, id, t| {
            if id == 1 {
                expect(t, TType::Struct, "emitBatch_args.batch")?;
                batch = Some(read_batch(p)?);
                return Ok(true);
            }
            Ok(false)
        })
        .expect("emitBatch args");
        p.read_message_end().expect("message end");
        batch.expect("a batch")
    };
    assert!(rest.is_empty(), "{} trailing bytes", rest.len());
    batch
}

// ------------------------------------------------------------------------- fixtures

fn counters() -> BackendCounters {
    Arc::new(Metrics::default()).backend("jaeger_agent")
}

fn process() -> JaegerProcess {
    JaegerProcess::new(
        "m3query",
        &[
            ("env".into(), TagValue::String("test".into())),
            ("shard".into(), TagValue::Int(7)),
        ],
    )
}

const TRACE: u128 = 0x0102_0304_0506_0708_8899_aabb_ccdd_eeff;

fn span(name: &str, span_id: u64, attrs: Vec<KeyValue>, status: Status) -> SpanData {
    let start = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(TRACE.to_be_bytes()),
            SpanId::from_bytes(span_id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::from_bytes(0x00f0_67aa_0ba9_02b7u64.to_be_bytes()),
        parent_span_is_remote: true,
        span_kind: SpanKind::Server,
        name: Cow::Owned(name.to_string()),
        start_time: start,
        end_time: start + Duration::from_micros(2_500),
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder("m3query").build(),
    }
}

fn http_attrs(method: &str, route: &str, code: i64) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("http.method", method.to_string()),
        KeyValue::new("http.route", route.to_string()),
        KeyValue::new("http.status_code", code),
        KeyValue::new("component", "m3query"),
        KeyValue::new("sampler.type", "probabilistic"),
        KeyValue::new("sampler.param", 0.5),
    ];
    if code >= 500 {
        a.push(KeyValue::new("error", true));
    }
    a
}

fn query_range_500() -> SpanData {
    let mut s = span(
        "GET /api/v1/query_range",
        0x1111,
        http_attrs("GET", "/api/v1/query_range", 500),
        Status::error(""),
    );
    let mut e = SpanEvents::default();
    e.events.push(opentelemetry::trace::Event::new(
        "request failed",
        s.start_time + Duration::from_micros(2_000),
        vec![
            KeyValue::new("level", "ERROR"),
            KeyValue::new("error.kind", "internal"),
        ],
        0,
    ));
    s.events = e;
    s
}

// ---------------------------------------------------------------------------- tests

#[test]
fn agent_datagram_decodes_with_independent_reader() {
    let spans = vec![
        query_range_500(),
        span(
            "GET /api/v1/status/buildinfo",
            0x2222,
            http_attrs("GET", "/api/v1/status/buildinfo", 200),
            Status::Unset,
        ),
        // An error log in a 200 request makes the OTel status ERROR; the HTTP span's error
        // tag still follows its status code.
        span(
            "GET /api/v1/query",
            0x3333,
            http_attrs("GET", "/api/v1/query", 200),
            Status::error(""),
        ),
        // A span that is not an HTTP span with status ERROR gets error=true.
        {
            let mut s = span("storage.select", 0x4444, vec![], Status::error("disk"));
            s.span_kind = SpanKind::Internal;
            s.parent_span_id = SpanId::from_bytes(0x1111u64.to_be_bytes());
            s
        },
    ];
    let c = counters();
    let grams = datagrams(&process(), &spans, MAX_PACKET_SIZE, c.clone());
    assert_eq!(grams.len(), 1);
    let b = decode_datagram(&grams[0]);
    assert_eq!(c.exported.get(), 4);

    assert_eq!(b.service, "m3query");
    let ptag = |k: &str| b.process_tags.iter().find(|t| t.key == k).map(|t| &t.value);
    assert_eq!(
        ptag("jaeger.version"),
        Some(&Val::Str(format!("Rust-m3query-{}", crate::VERSION)))
    );
    assert!(matches!(ptag("hostname"), Some(Val::Str(h)) if !h.is_empty()));
    if crate::host::ipv4().is_some() {
        assert!(
            matches!(ptag("ip"), Some(Val::Str(ip)) if ip.parse::<std::net::Ipv4Addr>().is_ok())
        );
    }
    assert_eq!(ptag("env"), Some(&Val::Str("test".into())));
    assert_eq!(ptag("shard"), Some(&Val::Long(7)));
    assert_eq!(b.seq_no, Some(1));
    assert_eq!(b.stats, Some((0, 0, 0)));

    let names: Vec<&str> = b.spans.iter().map(|s| s.operation.as_str()).collect();
    assert_eq!(
        names,
        [
            "GET /api/v1/query_range",
            "GET /api/v1/status/buildinfo",
            "GET /api/v1/query",
            "storage.select"
        ]
    );
    let qr = &b.spans[0];
    assert_eq!(qr.trace_high as u64, (TRACE >> 64) as u64);
    assert_eq!(qr.trace_low as u64, TRACE as u64);
    assert_eq!(qr.span_id, 0x1111);
    assert_eq!(qr.parent_span_id, 0x00f0_67aa_0ba9_02b7);
    assert_eq!(
        qr.refs,
        vec![RRef {
            ref_type: 0,
            trace_low: TRACE as u64 as i64,
            trace_high: (TRACE >> 64) as u64 as i64,
            span_id: 0x00f0_67aa_0ba9_02b7
        }],
        "CHILD_OF the remote parent"
    );
    assert_eq!(qr.flags, 1);
    assert_eq!(qr.start, 1_700_000_000_123_456);
    assert_eq!(qr.duration, 2_500);
    assert_eq!(qr.tag("http.status_code"), Some(&Val::Long(500)));
    assert_eq!(qr.tag("error"), Some(&Val::Bool(true)));
    assert_eq!(
        qr.count("error"),
        1,
        "no duplicate error tag: {:?}",
        qr.tags
    );
    assert_eq!(qr.tag("span.kind"), Some(&Val::Str("server".into())));
    assert_eq!(
        qr.tag("sampler.type"),
        Some(&Val::Str("probabilistic".into()))
    );
    assert_eq!(qr.tag("sampler.param"), Some(&Val::Double(0.5)));
    assert_eq!(qr.tag("http.method"), Some(&Val::Str("GET".into())));
    assert_eq!(qr.logs.len(), 1);
    assert_eq!(qr.logs[0].timestamp, 1_700_000_000_125_456);
    let f = |k: &str| {
        qr.logs[0]
            .fields
            .iter()
            .find(|t| t.key == k)
            .map(|t| t.value.clone())
    };
    assert_eq!(f("event"), Some(Val::Str("request failed".into())));
    assert_eq!(f("level"), Some(Val::Str("ERROR".into())));
    assert_eq!(f("error.kind"), Some(Val::Str("internal".into())));

    let ok = &b.spans[1];
    assert_eq!(ok.tag("http.status_code"), Some(&Val::Long(200)));
    assert_eq!(ok.tag("error"), None, "no error tag on a 200");
    assert_eq!(b.spans[2].tag("error"), None, "HTTP 200 with an error log");
    let child = &b.spans[3];
    assert_eq!(child.tag("error"), Some(&Val::Bool(true)));
    assert_eq!(
        child.tag("otel.status_description"),
        Some(&Val::Str("disk".into()))
    );
    assert_eq!(
        child.tag("span.kind"),
        None,
        "internal spans carry no span.kind"
    );
    assert_eq!(child.refs[0].span_id, 0x1111);
}

#[test]
fn debug_flag_from_the_debug_id_or_the_trace_state() {
    let mut by_attr = span(
        "GET /health",
        1,
        vec![KeyValue::new(model::DEBUG_ID_ATTRIBUTE, "find-me")],
        Status::Unset,
    );
    by_attr.parent_span_id = SpanId::INVALID;
    let mut child = span("promql.eval", 2, vec![], Status::Unset);
    child.span_context = SpanContext::new(
        child.span_context.trace_id(),
        child.span_context.span_id(),
        TraceFlags::SAMPLED,
        false,
        TraceState::from_key_value([(model::DEBUG_TRACE_STATE_KEY, "1")]).expect("state"),
    );
    let plain = span("GET /ready", 3, vec![], Status::Unset);
    let grams = datagrams(
        &process(),
        &[by_attr, child, plain],
        MAX_PACKET_SIZE,
        counters(),
    );
    let b = decode_datagram(&grams[0]);
    assert_eq!(b.spans[0].flags, 3, "sampled | debug");
    assert_eq!(b.spans[0].refs, vec![], "a root span has no references");
    assert_eq!(b.spans[0].parent_span_id, 0);
    assert_eq!(
        b.spans[0].tag("jaeger-debug-id"),
        Some(&Val::Str("find-me".into()))
    );
    assert_eq!(b.spans[1].flags, 3);
    assert_eq!(b.spans[2].flags, 1);
}

#[test]
fn thousand_spans_split_into_datagrams_under_65000_bytes() {
    let payload = "x".repeat(400);
    let spans: Vec<SpanData> = (1..=1000u64)
        .map(|i| {
            let mut a = http_attrs("GET", "/api/v1/query_range", 200);
            a.push(KeyValue::new(
                "query",
                format!("sum(rate(m_{i}[5m])) {payload}"),
            ));
            span("GET /api/v1/query_range", i, a, Status::Unset)
        })
        .collect();
    let c = counters();
    let grams = datagrams(&process(), &spans, MAX_PACKET_SIZE, c.clone());
    assert!(grams.len() >= 8, "{} datagrams", grams.len());
    let mut seen = Vec::new();
    for (i, g) in grams.iter().enumerate() {
        assert!(g.len() <= 65_000, "datagram {i} is {} bytes", g.len());
        let b = decode_datagram(g);
        assert_eq!(b.service, "m3query", "every datagram carries the process");
        assert_eq!(b.seq_no, Some(i as i64 + 1));
        seen.extend(b.spans.iter().map(|s| s.span_id));
    }
    // Packed, not one span per datagram: all but the last are nearly full.
    for g in &grams[..grams.len() - 1] {
        assert!(g.len() > 60_000, "{}", g.len());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=1000).collect::<Vec<i64>>(),
        "every span exactly once"
    );
    assert_eq!(c.exported.get(), 1000);
}

#[test]
fn oversize_span_is_dropped_and_counted_never_truncated() {
    let huge = span(
        "GET /api/v1/query_range",
        2,
        vec![KeyValue::new("query", "y".repeat(70_000))],
        Status::Unset,
    );
    let spans = vec![
        span("GET /a", 1, vec![], Status::Unset),
        huge,
        span("GET /b", 3, vec![], Status::Unset),
    ];
    let c = counters();
    let grams = datagrams(&process(), &spans, MAX_PACKET_SIZE, c.clone());
    let ids: Vec<i64> = grams
        .iter()
        .flat_map(|g| decode_datagram(g).spans)
        .map(|s| s.span_id)
        .collect();
    assert_eq!(ids, vec![1, 3]);
    assert!(grams.iter().all(|g| g.len() <= 65_000));
    assert_eq!(c.dropped(crate::metrics::DropReason::TooLarge).get(), 1);
    assert_eq!(c.exported.get(), 2);
    // The loss is reported to the agent in the next batch's ClientStats.
    let grams = datagrams(&process(), &spans, MAX_PACKET_SIZE, c.clone());
    assert_eq!(decode_datagram(&grams[0]).stats, Some((0, 1, 0)));
}

#[test]
fn collector_body_is_a_binary_thrift_batch() {
    let spans = vec![query_range_500()];
    let body = encode_batch(&process().encode_binary(), &spans, 9);
    let mut rest = &body[..];
    let b = {
        let mut p = TBinaryInputProtocol::new(&mut rest, true);
        read_batch(&mut p).expect("batch")
    };
    assert!(rest.is_empty());
    assert_eq!(b.service, "m3query");
    assert_eq!(b.seq_no, Some(9));
    let s = &b.spans[0];
    assert_eq!(s.operation, "GET /api/v1/query_range");
    assert_eq!(s.tag("http.status_code"), Some(&Val::Long(500)));
    assert_eq!(s.tag("error"), Some(&Val::Bool(true)));
    assert_eq!(s.tag("sampler.param"), Some(&Val::Double(0.5)));
    assert_eq!(s.logs[0].fields[0].value, Val::Str("request failed".into()));
}

#[test]
fn udp_send_to_a_closed_port_is_counted_as_failed() {
    // A port nothing listens on: the connected socket reports ECONNREFUSED from the ICMP
    // error of an earlier datagram.
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr").port()
    };
    let c = counters();
    let exp = super::JaegerAgentExporter::new(
        crate::config::HostPort(format!("127.0.0.1:{port}")),
        &process(),
        None,
        MAX_PACKET_SIZE,
        c.clone(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    use opentelemetry_sdk::trace::SpanExporter as _;
    for i in 0..20 {
        let _ = rt.block_on(exp.export(vec![span("GET /x", i + 1, vec![], Status::Unset)]));
        std::thread::sleep(Duration::from_millis(20));
        // The socket is reopened after a failure, at most once a second; keep going until
        // at least one failure is seen.
        if c.dropped(crate::metrics::DropReason::AgentUnreachable)
            .get()
            > 0
        {
            return;
        }
    }
    panic!("no send failure counted for an agent that is not listening");
}

#[test]
fn thousand_spans_through_the_queue_arrive_over_udp_in_bounded_datagrams() {
    use crate::export::queue::{Accounting, QueueOptions, QueueProcessor};
    use opentelemetry_sdk::trace::SpanProcessor as _;

    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    // Room for every datagram even if the reader falls behind.
    let size: libc::c_int = 8 << 20;
    // SAFETY: setsockopt reads one c_int we own, for a socket we own.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let addr = sock.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let mut grams = Vec::new();
        let mut buf = vec![0u8; 70_000];
        while let Ok(n) = sock.recv(&mut buf) {
            grams.push(buf[..n].to_vec());
        }
        grams
    });

    let c = counters();
    let exporter_counters = c.clone();
    let p = QueueProcessor::start(
        move || {
            Ok(super::JaegerAgentExporter::new(
                crate::config::HostPort(addr.to_string()),
                &process(),
                None,
                MAX_PACKET_SIZE,
                exporter_counters,
            ))
        },
        QueueOptions {
            queue_size: 1000,
            max_batch: 1000,
            flush_interval: Duration::from_secs(60),
            export_timeout: Duration::from_secs(5),
            min_flush_interval: Duration::ZERO,
            log_spans: false,
            verbose: false,
            accounting: Accounting::Exporter,
            thread_name: "test-jaeger".into(),
        },
        c.clone(),
    )
    .expect("processor");
    let payload = "q".repeat(300);
    for i in 1..=1000u64 {
        let mut a = http_attrs("GET", "/api/v1/query_range", 200);
        a.push(KeyValue::new("query", format!("rate(x_{i}[1m]) {payload}")));
        p.on_end(span("GET /api/v1/query_range", i, a, Status::Unset));
    }
    p.shutdown_with_timeout(Duration::from_secs(10))
        .expect("shutdown flushes");
    let grams = reader.join().expect("reader");
    assert!(grams.len() > 1, "{} datagrams", grams.len());
    let mut ids = Vec::new();
    for g in &grams {
        assert!(g.len() <= 65_000, "{} bytes", g.len());
        ids.extend(decode_datagram(g).spans.into_iter().map(|s| s.span_id));
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=1000).collect::<Vec<i64>>());
    assert_eq!(c.exported.get(), 1000);
    assert_eq!(c.dropped(crate::metrics::DropReason::QueueFull).get(), 0);
    // Once shut down, spans are counted as dropped, not queued.
    p.on_end(span("GET /late", 5000, vec![], Status::Unset));
    assert_eq!(c.dropped(crate::metrics::DropReason::Shutdown).get(), 1);
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    use crate::export::queue::{Accounting, QueueOptions, QueueProcessor};
    use opentelemetry_sdk::trace::SpanProcessor as _;

    /// An exporter that never finishes, like a blackholed collector.
    #[derive(Debug)]
    struct Stuck;
    impl opentelemetry_sdk::trace::SpanExporter for Stuck {
        async fn export(&self, _: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
            std::future::pending().await
        }
    }
    let c = counters();
    let p = QueueProcessor::start(
        || Ok(Stuck),
        QueueOptions {
            queue_size: 10,
            max_batch: 10,
            flush_interval: Duration::from_millis(10),
            export_timeout: Duration::from_millis(300),
            min_flush_interval: Duration::ZERO,
            log_spans: false,
            verbose: false,
            accounting: Accounting::ByResult,
            thread_name: "test-stuck".into(),
        },
        c.clone(),
    )
    .expect("processor");
    // on_end never waits for the exporter: all 1000 return while it is stuck.
    for i in 1..=1000u64 {
        p.on_end(span("GET /x", i, vec![], Status::Unset));
    }
    let full = c.dropped(crate::metrics::DropReason::QueueFull).get();
    assert!(full >= 980, "{full} dropped as queue_full of 1000");
    // The stuck export times out and its batch is counted too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.dropped(crate::metrics::DropReason::ExportTimeout).get() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no export timeout counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.exported.get(), 0);
    // Shutdown returns within its timeout even with an exporter that never answers (a hang
    // here would hang the test).
    let _ = p.shutdown_with_timeout(Duration::from_millis(200));
    p.on_end(span("GET /late", 5000, vec![], Status::Unset));
    assert_eq!(c.dropped(crate::metrics::DropReason::Shutdown).get(), 1);
}

#[test]
fn spans_sent_to_a_closed_agent_port_are_dropped_not_exported() {
    // Bind then close: nothing listens on the port, so the kernel answers each datagram with
    // ICMP port unreachable.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind")
        .port();
    let c = counters();
    let exporter = super::JaegerAgentExporter::new(
        crate::config::HostPort(format!("127.0.0.1:{port}")),
        &process(),
        None,
        MAX_PACKET_SIZE,
        c.clone(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    use opentelemetry_sdk::trace::SpanExporter as _;
    for i in 1..=3u64 {
        let r = rt.block_on(exporter.export(vec![span(
            "GET /api/v1/query",
            i,
            http_attrs("GET", "/api/v1/query", 200),
            Status::Unset,
        )]));
        assert!(r.is_err(), "export {i} reported success");
    }
    assert_eq!(c.exported.get(), 0, "refused spans counted as exported");
    assert_eq!(
        c.dropped(crate::metrics::DropReason::AgentUnreachable)
            .get(),
        3
    );
}
