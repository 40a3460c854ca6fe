//! The results cache in the trace: a `cache.lookup` phase span under the request span, with
//! what it reused (`hits`, `cached_steps`, `extents`) and what it computed (`misses`,
//! `computed_steps`) as integer tags, checked with the SDK's in-memory exporter.

use std::sync::Arc;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use m3query_server::{BuildInfo, Config, MetricsRegistry, Server, Services};
use m3query_storage::Appendable;
use m3query_storage::memory::MemStorage;
use m3query_telemetry::config::{Backend, JaegerConfig, SamplerType};
use m3query_telemetry::{LoggingConfig, Telemetry, TracingConfig};
use opentelemetry::Value;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tower::ServiceExt;

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn int(s: &SpanData, key: &str) -> i64 {
    match attr(s, key) {
        Some(Value::I64(n)) => *n,
        other => panic!("{key} is not an integer tag: {other:?}"),
    }
}

#[tokio::test]
async fn cache_lookup_span_shows_hits_and_misses() {
    let mut tracing_cfg = TracingConfig {
        backend: Backend::Jaeger,
        jaeger: Some(JaegerConfig::default()),
        ..TracingConfig::default()
    };
    if let Some(j) = &mut tracing_cfg.jaeger {
        j.sampler.sampler_type = SamplerType::Const;
        j.sampler.param = 1.0;
    }
    let exporter = InMemorySpanExporter::default();
    let telemetry = Telemetry::builder(tracing_cfg, LoggingConfig::default())
        .with_exporter(exporter.clone())
        .with_log_writer(m3query_telemetry::LogWriter::new(std::io::sink))
        .build()
        .expect("telemetry");
    let mut config = Config::default();
    config.query.results_cache.enabled = true;
    let server = Server::new(
        config,
        BuildInfo::default(),
        MetricsRegistry::new(&BuildInfo::default()),
        telemetry.propagation().clone(),
    );
    // Two hours of one series up to now: the cache reads the wall clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let end = now - now % 60_000;
    let store = Arc::new(MemStorage::new());
    let mut app = store.appender();
    let l = m3query_model::Labels::from_pairs([("__name__", "up"), ("job", "a")]);
    for t in (end - 3 * 3_600_000..=end).step_by(15_000) {
        app.append(&l, t, 1.0).expect("append");
    }
    app.commit().expect("commit");
    server.set_services(Services {
        queryable: store.clone(),
        appendable: Some(store),
        collector: None,
        tsdb: None,
    });
    let uri = format!(
        "/api/v1/query_range?query=up&start={}&end={}&step=60",
        (end - 2 * 3_600_000) / 1000,
        end / 1000
    );
    // Global: the query runs on a blocking thread, where a thread-local default would not
    // reach (this file holds one test, so setting it once is safe).
    tracing::dispatcher::set_global_default(telemetry.dispatch().clone())
        .expect("first dispatcher");
    let mut lookups = Vec::new();
    for _ in 0..2 {
        exporter.reset();
        let resp = server
            .router()
            .oneshot(Request::get(&uri).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(resp.status().as_u16(), 200);
        let _ = resp.into_body().collect().await;
        let spans = exporter.get_finished_spans().expect("spans");
        let root = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Server)
            .expect("request span");
        let lookup = spans
            .iter()
            .find(|s| s.name == "cache.lookup")
            .unwrap_or_else(|| panic!("no cache.lookup span: {spans:#?}"))
            .clone();
        assert_eq!(lookup.parent_span_id, root.span_context.span_id());
        lookups.push(lookup);
    }
    // First: nothing cached, the window computed (the older part stored, the fresh tail not).
    assert_eq!(int(&lookups[0], "hits"), 0);
    assert!(int(&lookups[0], "misses") >= 1);
    assert_eq!(int(&lookups[0], "cached_steps"), 0);
    // Then: the stored part reused, only the fresh tail computed.
    assert!(int(&lookups[1], "hits") >= 1);
    assert!(int(&lookups[1], "cached_steps") > int(&lookups[1], "computed_steps"));
    match attr(&lookups[1], "extents") {
        Some(Value::String(s)) => assert!(s.as_str().contains(".."), "{s}"),
        other => panic!("extents: {other:?}"),
    }
    telemetry.shutdown(std::time::Duration::from_secs(1));
}
