//! The engine's tracing spans (`promql.parse`, `storage.select`, `promql.eval`) exist and
//! nest under the caller's span. Alone in its test binary: tracing caches callsite interest
//! process-wide, which other tests running in parallel would disturb.

use std::sync::{Arc, Mutex};

use m3query_model::Labels;
use m3query_promql::{Engine, EngineOptions, QueryOptions};
use m3query_storage::memory::MemStorage;
use m3query_storage::{Appendable, Context};

fn store(series: usize) -> MemStorage {
    let s = MemStorage::new();
    let mut app = s.appender();
    for i in 0..series {
        let l = Labels::from_pairs([
            ("__name__", "http_requests_total".to_string()),
            ("instance", format!("i-{i}")),
        ]);
        for k in 0..=40i64 {
            app.append(&l, k * 15_000, (k * 10) as f64).expect("append");
        }
    }
    app.commit().expect("commit");
    s
}

fn engine() -> Engine {
    Engine::new(EngineOptions::default())
}

/// Records span names, to check the engine's spans exist and nest under the caller's.
#[derive(Clone, Default)]
struct Names(Arc<Mutex<Vec<String>>>);

impl<S> tracing_subscriber::Layer<S> for Names
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        // The parent as the span itself will have it: explicit, or the thread's current span.
        let parent = if attrs.is_contextual() {
            ctx.lookup_current().map(|p| p.name().to_string())
        } else {
            attrs
                .parent()
                .and_then(|id| ctx.span(id))
                .map(|p| p.name().to_string())
        };
        if let Ok(mut v) = self.0.lock() {
            v.push(format!(
                "{}<{}",
                attrs.metadata().name(),
                parent.unwrap_or_default()
            ));
        }
    }
}

/// Records `span.field:kind` for every field value the engine's spans record, `kind` being
/// the `Visit` method tracing called (what the OpenTelemetry layer's type follows).
#[derive(Clone, Default)]
struct FieldKinds(Arc<Mutex<Vec<String>>>);

struct KindVisitor<'a> {
    span: &'a str,
    out: &'a mut Vec<String>,
}

impl tracing::field::Visit for KindVisitor<'_> {
    fn record_i64(&mut self, f: &tracing::field::Field, _: i64) {
        self.out.push(format!("{}.{}:i64", self.span, f.name()));
    }
    fn record_u64(&mut self, f: &tracing::field::Field, _: u64) {
        self.out.push(format!("{}.{}:u64", self.span, f.name()));
    }
    fn record_f64(&mut self, f: &tracing::field::Field, _: f64) {
        self.out.push(format!("{}.{}:f64", self.span, f.name()));
    }
    fn record_str(&mut self, f: &tracing::field::Field, _: &str) {
        self.out.push(format!("{}.{}:str", self.span, f.name()));
    }
    fn record_debug(&mut self, f: &tracing::field::Field, _: &dyn std::fmt::Debug) {
        self.out.push(format!("{}.{}:debug", self.span, f.name()));
    }
}

impl<S> tracing_subscriber::Layer<S> for FieldKinds
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Ok(mut v) = self.0.lock() {
            attrs.record(&mut KindVisitor {
                span: attrs.metadata().name(),
                out: &mut v,
            });
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        if let Ok(mut v) = self.0.lock() {
            values.record(&mut KindVisitor {
                span: span.name(),
                out: &mut v,
            });
        }
    }
}

#[test]
fn spans_are_emitted() {
    use tracing_subscriber::layer::SubscriberExt;
    let names = Names::default();
    let kinds = FieldKinds::default();
    let sub = tracing_subscriber::registry()
        .with(names.clone())
        .with(kinds.clone());
    let s = store(2);
    tracing::subscriber::with_default(sub, || {
        // Other tests in this process may have cached "no subscriber is interested".
        tracing::callsite::rebuild_interest_cache();
        let _root = tracing::info_span!("request").entered();
        engine()
            .instant_query(
                &s,
                &Context::background(),
                "sum(http_requests_total)",
                600_000,
                &QueryOptions::default(),
            )
            .expect("query");
    });
    let got = names.0.lock().map(|v| v.clone()).unwrap_or_default();
    // The engine runs on a thread of its own (`deep`): its spans still nest under the caller's.
    for want in [
        "promql.parse<request",
        "storage.select<request",
        "promql.eval<request",
    ] {
        assert!(
            got.iter().any(|n| n == want),
            "missing span {want}: {got:?}"
        );
    }
    // Counts reach exporters as integers: tracing-opentelemetry makes strings of `u64` and
    // `usize` fields, so the engine records them as `i64`.
    let kinds = kinds.0.lock().map(|v| v.clone()).unwrap_or_default();
    for want in [
        "storage.select.series:i64",
        "storage.select.samples:i64",
        "storage.select.start_ms:i64",
        "promql.eval.samples:i64",
        "promql.eval.step_ms:i64",
    ] {
        assert!(kinds.iter().any(|k| k == want), "missing {want}: {kinds:?}");
    }
    assert!(
        !kinds.iter().any(|k| k.ends_with(":u64")),
        "a u64 field would export as a string: {kinds:?}"
    );
}
