//! The request span as an operator sees it in the exported data: names, tags, parents and the
//! `X-Trace-Id` header, checked with the SDK's in-memory exporter.

use std::sync::Arc;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use m3query_server::{BuildInfo, Config, MetricsRegistry, Server, Services};
use m3query_storage::memory::MemStorage;
use m3query_telemetry::config::{Backend, JaegerConfig, SamplerType};
use m3query_telemetry::{LoggingConfig, Telemetry, TracingConfig};
use opentelemetry::Value;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tower::ServiceExt;

/// A store whose every read fails, as a broken disk would.
struct Broken;

impl m3query_storage::Queryable for Broken {
    fn querier(
        &self,
        _mint: i64,
        _maxt: i64,
    ) -> m3query_storage::Result<Box<dyn m3query_storage::Querier + '_>> {
        Err(m3query_storage::Error::io(
            "reading block 01ABC",
            std::io::Error::other("input/output error"),
        ))
    }
}

struct Harness {
    server: Server,
    exporter: InMemorySpanExporter,
    telemetry: Telemetry,
}

fn harness(sampler: SamplerType, param: f64) -> Harness {
    harness_with(sampler, param, false)
}

fn harness_with(sampler: SamplerType, param: f64, broken: bool) -> Harness {
    let mut tracing = TracingConfig {
        backend: Backend::Jaeger,
        jaeger: Some(JaegerConfig::default()),
        ..TracingConfig::default()
    };
    if let Some(j) = &mut tracing.jaeger {
        j.sampler.sampler_type = sampler;
        j.sampler.param = param;
    }
    let exporter = InMemorySpanExporter::default();
    let telemetry = Telemetry::builder(tracing, LoggingConfig::default())
        .with_exporter(exporter.clone())
        .with_log_writer(m3query_telemetry::LogWriter::new(std::io::sink))
        .build()
        .expect("telemetry");
    let server = Server::new(
        Config::default(),
        BuildInfo::default(),
        MetricsRegistry::new(&BuildInfo::default()),
        telemetry.propagation().clone(),
    );
    let store = Arc::new(MemStorage::new());
    let queryable: Arc<dyn m3query_storage::Queryable> = if broken {
        Arc::new(Broken)
    } else {
        store.clone()
    };
    server.set_services(Services {
        queryable,
        appendable: Some(store),
        collector: None,
        tsdb: None,
    });
    Harness {
        server,
        exporter,
        telemetry,
    }
}

impl Harness {
    /// Sends one request and returns the response's status, `X-Trace-Id` and the spans it
    /// finished, the request's own span first (its phase spans end before it does).
    async fn send(&self, req: Request<Body>) -> (u16, Option<String>, Vec<SpanData>) {
        self.exporter.reset();
        let _guard = tracing::dispatcher::set_default(self.telemetry.dispatch());
        let resp = self.server.router().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let trace_id = resp
            .headers()
            .get("x-trace-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The span ends once the body has been sent.
        let _ = resp.into_body().collect().await;
        let mut spans = self.exporter.get_finished_spans().expect("spans");
        spans.sort_by_key(|s| s.span_kind != SpanKind::Server);
        (status, trace_id, spans)
    }
}

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

#[tokio::test]
async fn ok_request_span_is_named_by_route_and_tagged() {
    let h = harness(SamplerType::Const, 1.0);
    let (status, trace_id, spans) = h.send(get("/api/v1/status/buildinfo?x=1")).await;
    assert_eq!(status, 200);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let s = &spans[0];
    assert_eq!(s.name, "GET /api/v1/status/buildinfo");
    assert_eq!(s.span_kind, SpanKind::Server);
    assert_eq!(attr(s, "http.status_code"), Some(&Value::I64(200)));
    assert_eq!(attr(s, "http.method"), Some(&Value::from("GET")));
    assert_eq!(
        attr(s, "http.route"),
        Some(&Value::from("/api/v1/status/buildinfo"))
    );
    assert_eq!(
        attr(s, "http.url"),
        Some(&Value::from("/api/v1/status/buildinfo?x=1"))
    );
    assert_eq!(attr(s, "error"), None);
    assert_eq!(
        trace_id.as_deref(),
        Some(s.span_context.trace_id().to_string().as_str())
    );
}

#[tokio::test]
async fn unmatched_route_is_method_unknown_without_error_tag() {
    let h = harness(SamplerType::Const, 1.0);
    let (status, _, spans) = h.send(get("/api/v1/nope/12345")).await;
    assert_eq!(status, 404);
    let s = &spans[0];
    assert_eq!(s.name, "GET unknown");
    assert_eq!(attr(s, "http.status_code"), Some(&Value::I64(404)));
    assert_eq!(attr(s, "error"), None, "a 4xx is the client's error");
    assert!(
        s.events.iter().any(|e| e.name == "request refused"),
        "4xx leaves a log on the span: {:?}",
        s.events
    );
    let (status, _, spans) = h
        .send(
            Request::post("/api/v1/status/buildinfo")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(status, 405);
    assert_eq!(spans[0].name, "POST /api/v1/status/buildinfo");
}

#[tokio::test]
async fn traceparent_makes_our_span_its_child() {
    let h = harness(SamplerType::Const, 0.0);
    let (_, trace_id, spans) = h
        .send(
            Request::get("/health")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(spans.len(), 1, "a sampled parent is honoured over const 0");
    let s = &spans[0];
    assert_eq!(
        s.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(s.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(
        trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
}

#[tokio::test]
async fn uber_trace_id_and_debug_header() {
    let h = harness(SamplerType::Const, 0.0);
    let (_, _, spans) = h
        .send(
            Request::get("/health")
                .header("uber-trace-id", "abcdef:1234:0:1")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(
        spans[0].span_context.trace_id().to_string(),
        "00000000000000000000000000abcdef"
    );
    // Unsampled and no debug header: nothing exported, no X-Trace-Id.
    let (_, trace_id, spans) = h.send(get("/health")).await;
    assert!(spans.is_empty() && trace_id.is_none());
    let (_, trace_id, spans) = h
        .send(
            Request::get("/health")
                .header("jaeger-debug-id", "find-me")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(spans.len(), 1);
    assert!(trace_id.is_some());
    assert_eq!(
        attr(&spans[0], "jaeger.debug_id"),
        Some(&Value::from("find-me"))
    );
}

#[tokio::test]
async fn server_error_is_tagged_error_true() {
    let h = harness_with(SamplerType::Const, 1.0, true);
    let (status, trace_id, spans) = h.send(get("/api/v1/series?match[]=up")).await;
    assert_eq!(status, 500);
    assert!(trace_id.is_some());
    let s = &spans[0];
    assert_eq!(s.name, "GET /api/v1/series");
    assert_eq!(attr(s, "http.status_code"), Some(&Value::I64(500)));
    assert_eq!(attr(s, "error"), Some(&Value::Bool(true)));
    assert!(matches!(s.status, Status::Error { .. }), "{:?}", s.status);
    assert!(
        s.events.iter().any(|e| e.name == "request failed"),
        "{:?}",
        s.events
    );
    // The lookup's phase span is a child of the request, with its selectors and range.
    let phase = spans
        .iter()
        .find(|p| p.name == "storage.series")
        .unwrap_or_else(|| panic!("no storage.series span: {spans:#?}"));
    assert_eq!(phase.parent_span_id, s.span_context.span_id());
    assert_eq!(
        attr(phase, "matchers"),
        Some(&Value::from("{__name__=\"up\"}"))
    );
    assert!(matches!(attr(phase, "start_ms"), Some(Value::I64(_))));
    // A 4xx on the same route carries no error tag.
    let (status, _, spans) = h.send(get("/api/v1/series")).await;
    assert_eq!(status, 400);
    assert_eq!(attr(&spans[0], "error"), None);
    assert_eq!(spans[0].status, Status::Unset);
}

#[tokio::test]
async fn label_values_route_is_one_operation() {
    let h = harness(SamplerType::Const, 1.0);
    let (_, _, a) = h.send(get("/api/v1/label/job/values")).await;
    let (_, _, b) = h.send(get("/api/v1/label/instance/values")).await;
    assert_eq!(a[0].name, "GET /api/v1/label/{name}/values");
    assert_eq!(a[0].name, b[0].name);
}

/// The sampling decision is made before the span exists (so an unsampled request never
/// reaches the OpenTelemetry layer); the exported trace id must still be the one the
/// probabilistic sampler judged, as jaeger-client-go's sampler judges the trace id, and each
/// request must be counted once.
#[tokio::test]
async fn probabilistic_sampling_judges_the_exported_trace_id() {
    let h = harness(SamplerType::Probabilistic, 0.5);
    let max = u64::MAX >> 1;
    let boundary = (max as f64 * 0.5) as u64;
    let mut sampled = 0;
    for _ in 0..400 {
        let (status, trace_id, spans) = h.send(get("/health")).await;
        assert_eq!(status, 200);
        assert_eq!(spans.len(), usize::from(trace_id.is_some()));
        if let Some(s) = spans.first() {
            sampled += 1;
            let id = u128::from_be_bytes(s.span_context.trace_id().to_bytes());
            assert!(
                (id as u64) & max <= boundary,
                "{id:032x} was not sampled by its id"
            );
            assert_eq!(
                trace_id.as_deref(),
                Some(s.span_context.trace_id().to_string().as_str())
            );
            assert_eq!(attr(s, "sampler.type"), Some(&Value::from("probabilistic")));
        }
    }
    assert!(
        (100..=300).contains(&sampled),
        "{sampled} of 400 sampled at 0.5"
    );
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register_collector(h.telemetry.metrics_collector());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).expect("encode");
    let counter = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(
        counter("m3query_tracing_spans_started_total"),
        Some(400),
        "{text}"
    );
    assert_eq!(
        counter("m3query_tracing_spans_sampled_total"),
        Some(sampled),
        "{text}"
    );
}
