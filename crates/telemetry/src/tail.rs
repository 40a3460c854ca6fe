//! Tail capture: requests the head sampler passed over are still exported when they turn out
//! slow or failed.
//!
//! With the recommended remote sampler at 0.1%, 999 of 1,000 slow queries would never reach
//! Jaeger, and those are what operators search for (`minDuration`, `error=true`). So while
//! an unsampled request runs, [`TailLayer`] keeps a cheap record of it in the tracing
//! registry: each phase span's name, start and end `Instant`s, fields and log events, nothing
//! built for OpenTelemetry. When the request is known to be slower than the threshold or to
//! have answered 5xx (at the response, see [`decide`], or when its root span closes), the
//! record becomes real spans with their real start and end times, under the trace id the head
//! sampler judged (and the inbound parent, if any), and goes to the exporter like any other
//! trace. The root span carries `sampler.type=tail`, `sampler.param` (the threshold in
//! seconds) and `tail.reason` (`slow` or `error`).
//!
//! A request that is neither slow nor failed costs its record only: a few registry entries and
//! their fields, freed when the root closes. Captures are rate limited
//! (`tracing.tailCapture.maxPerSecond`), so a storm of failures cannot flood the backend; the
//! ones over the limit are counted on `/metrics`.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    Event, Span as _, SpanKind, Status, TraceContextExt, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, SdkTracer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::filter::{REQUEST_SPAN, Root, UNSAMPLED_TARGET, request_root, traceable};
use crate::metrics::TailCounters;
use crate::sampler::Sampler;
use crate::sampler::rate_limiter::{Clock, RateLimiter};
use parking_lot::Mutex;

/// Log events kept per span at most: a loop that logs must not grow a request's record
/// without bound.
const MAX_EVENTS_PER_SPAN: usize = 64;
/// Phase spans kept per request at most.
const MAX_SPANS: usize = 1024;

/// Why a request was captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    Slow,
    Error,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Slow => "slow",
            Reason::Error => "error",
        }
    }
}

/// What is captured, from `tracing.tailCapture`.
pub(crate) struct TailPolicy {
    threshold: Duration,
    errors: bool,
    limiter: Option<RateLimiter>,
    counters: TailCounters,
}

impl fmt::Debug for TailPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TailPolicy")
            .field("threshold", &self.threshold)
            .field("errors", &self.errors)
            .finish()
    }
}

impl TailPolicy {
    pub(crate) fn new(
        threshold: Duration,
        errors: bool,
        max_per_second: f64,
        counters: TailCounters,
        clock: Clock,
    ) -> TailPolicy {
        // A burst of one second's worth, at least one, so a rate below 1/s still lets one
        // through.
        let limiter = (max_per_second > 0.0)
            .then(|| RateLimiter::new(max_per_second, max_per_second.max(1.0), clock));
        TailPolicy {
            threshold,
            errors,
            limiter,
            counters,
        }
    }

    fn qualifies(&self, status: Option<i64>, failed: bool, elapsed: Duration) -> Option<Reason> {
        if self.errors && (failed || status.is_some_and(|s| s >= 500)) {
            return Some(Reason::Error);
        }
        (elapsed >= self.threshold).then_some(Reason::Slow)
    }

    /// Spends a capture credit; counts the capture or the refusal.
    fn admit(&self, reason: Reason) -> bool {
        let ok = self.limiter.as_ref().is_some_and(|l| l.check_credit(1.0));
        if ok {
            self.counters.captured(reason).inc();
        } else {
            self.counters.rate_limited.inc();
        }
        ok
    }
}

/// What an unsampled request's spans become if it is captured: set by the request span when
/// the head sampler said no.
struct Seed {
    trace_id: TraceId,
    /// The inbound remote parent, kept so a captured trace continues the caller's.
    parent: Option<Context>,
    policy: Arc<TailPolicy>,
}

/// The record of an unsampled request, in its root span's extensions.
struct RootRecord {
    seed: Option<Seed>,
    start: Instant,
    wall: SystemTime,
    span: SpanRecord,
    /// What the request's phase spans share, reached from each of them without walking up
    /// to the root.
    shared: Arc<Phases>,
    decided: Option<Reason>,
    /// The decision was made and said no (rate limited): not asked again.
    refused: bool,
}

/// An unsampled request's phase spans: keys handed out (the root is 0) and the finished
/// ones.
#[derive(Default)]
struct Phases {
    next_key: AtomicU32,
    done: Mutex<Vec<(SpanRecord, Instant)>>,
}

/// A phase span's record, in its extensions while it is open.
struct PhaseRecord {
    span: SpanRecord,
    shared: Arc<Phases>,
}

/// One span's name, kind, fields, status and events.
struct SpanRecord {
    key: u32,
    parent_key: u32,
    name: Cow<'static, str>,
    kind: SpanKind,
    start: Instant,
    attrs: Vec<KeyValue>,
    status: Status,
    events: Vec<Event>,
}

impl SpanRecord {
    fn new(meta: &'static Metadata<'static>, key: u32, parent_key: u32) -> SpanRecord {
        SpanRecord {
            key,
            parent_key,
            name: Cow::Borrowed(meta.name()),
            kind: SpanKind::Internal,
            start: Instant::now(),
            attrs: Vec::with_capacity(meta.fields().len()),
            status: Status::Unset,
            events: Vec::new(),
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        self.attrs
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .and_then(|kv| match kv.value {
                Value::I64(i) => Some(i),
                _ => None,
            })
    }

    fn flag(&self, key: &str) -> bool {
        self.attrs
            .iter()
            .any(|kv| kv.key.as_str() == key && kv.value == Value::Bool(true))
    }
}

fn is_root(meta: &Metadata<'_>) -> bool {
    meta.name() == REQUEST_SPAN && meta.target() == UNSAMPLED_TARGET
}

/// Marks an unsampled request's root span for tail capture (a no-op when the tail layer is not
/// installed).
pub(crate) fn seed(
    span: &tracing::Span,
    trace_id: TraceId,
    parent: Option<Context>,
    policy: Arc<TailPolicy>,
) {
    with_root(span, |r| {
        r.seed = Some(Seed {
            trace_id,
            parent,
            policy,
        })
    });
}

/// Keeps an unsampled request out of tail capture (its record is dropped unexported).
pub(crate) fn exclude(span: &tracing::Span) {
    with_root(span, |r| r.seed = None);
}

/// Decides at the response whether the request is captured (so `X-Trace-Id` can name its
/// trace), with the status and the time so far. Once captured it stays captured; a request not
/// captured yet is asked again when its root span closes (a slow body can still make it slow).
/// Returns the trace id when captured.
pub(crate) fn decide(
    span: &tracing::Span,
    status: u16,
    failed: bool,
    elapsed: Duration,
) -> Option<TraceId> {
    with_root(span, |r| {
        let seed = r.seed.as_ref()?;
        if r.decided.is_none() && !r.refused {
            let reason = seed
                .policy
                .qualifies(Some(i64::from(status)), failed, elapsed)?;
            if seed.policy.admit(reason) {
                r.decided = Some(reason);
            } else {
                r.refused = true;
            }
        }
        r.decided.map(|_| seed.trace_id)
    })
    .flatten()
}

fn with_root<T>(span: &tracing::Span, f: impl FnOnce(&mut RootRecord) -> T) -> Option<T> {
    let mut f = Some(f);
    let mut out = None;
    span.with_subscriber(|(id, dispatch)| {
        let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>() else {
            return;
        };
        let Some(s) = registry.span(id) else { return };
        let mut ext = s.extensions_mut();
        if let (Some(r), Some(f)) = (ext.get_mut::<RootRecord>(), f.take()) {
            out = Some(f(r));
        }
    });
    out
}

/// Lets through what happens inside unsampled requests (the complement of
/// `crate::filter::SampledOnly`, with the same level rules).
pub(crate) struct UnsampledOnly;

impl<S> Filter<S> for UnsampledOnly
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &LayerContext<'_, S>) -> bool {
        match request_root(meta) {
            Some(root) => return root == Root::Unsampled,
            None if !traceable(meta) => return false,
            None => {}
        }
        // Inside an unsampled request, the current span is its root or one of its phases,
        // both of which carry a record: one look instead of a walk to the root.
        match cx.lookup_current() {
            None => false,
            Some(current) => {
                let ext = current.extensions();
                ext.get::<RootRecord>().is_some() || ext.get::<PhaseRecord>().is_some()
            }
        }
    }

    fn callsite_enabled(&self, _meta: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::DEBUG)
    }
}

/// See the module docs.
pub(crate) struct TailLayer {
    tracer: SdkTracer,
    sampler: Sampler,
}

impl TailLayer {
    pub(crate) fn new(tracer: SdkTracer, sampler: Sampler) -> Self {
        TailLayer { tracer, sampler }
    }

    /// Builds and exports the captured request's spans.
    fn export(&self, mut root: RootRecord, end: Instant, reason: Reason) {
        let Some(seed) = root.seed.take() else {
            return;
        };
        let at = |i: Instant| root.wall + i.saturating_duration_since(root.start);
        let r = root.span;
        let mut attrs = r.attrs;
        attrs.push(KeyValue::new("tail.reason", reason.as_str()));
        self.sampler.force_root(
            seed.trace_id,
            SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: vec![
                    KeyValue::new("sampler.type", "tail"),
                    KeyValue::new("sampler.param", seed.policy.threshold.as_secs_f64()),
                ],
                trace_state: TraceState::default(),
            },
        );
        let builder = self
            .tracer
            .span_builder(r.name)
            .with_kind(r.kind)
            .with_start_time(root.wall)
            .with_attributes(attrs)
            .with_events(r.events);
        let parent = seed.parent.unwrap_or_default();
        let mut span = self.tracer.build_with_context(builder, &parent);
        span.set_status(r.status);
        crate::sampler::clear_decided();
        let mut done = std::mem::take(&mut *root.shared.done.lock());
        let mut built: Vec<(u32, Context, Instant)> = Vec::with_capacity(done.len() + 1);
        built.push((0, Context::new().with_span(span), end));
        // Keys grow with creation, so a parent is always built before its children.
        done.sort_unstable_by_key(|(s, _)| s.key);
        for (s, end) in done {
            let parent = built
                .binary_search_by_key(&s.parent_key, |(k, _, _)| *k)
                .map_or(0, |i| i);
            let builder = self
                .tracer
                .span_builder(s.name)
                .with_kind(s.kind)
                .with_start_time(at(s.start))
                .with_attributes(s.attrs)
                .with_events(s.events);
            let mut span = self.tracer.build_with_context(builder, &built[parent].1);
            span.set_status(s.status);
            built.push((s.key, Context::new().with_span(span), end));
        }
        // Children first, so a backend that assembles traces as they come sees the root last.
        for (_, cx, end) in built.iter().rev() {
            cx.span().end_with_timestamp(at(*end));
        }
    }
}

impl<S> Layer<S> for TailLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let meta = span.metadata();
        if is_root(meta) {
            let mut rec = SpanRecord::new(meta, 0, 0);
            rec.kind = SpanKind::Server;
            attrs.record(&mut Fields(&mut rec));
            span.extensions_mut().insert(RootRecord {
                seed: None,
                start: rec.start,
                wall: SystemTime::now(),
                span: rec,
                shared: Arc::new(Phases {
                    next_key: AtomicU32::new(1),
                    done: Mutex::new(Vec::new()),
                }),
                decided: None,
                refused: false,
            });
            return;
        }
        // A phase inside an unsampled request (the filter let nothing else through): its key
        // and where it goes when done come from its parent's record, the root's or another
        // phase's, so nothing walks up the tree.
        let Some(parent) = span.parent() else { return };
        let (parent_key, shared) = {
            let ext = parent.extensions();
            if let Some(r) = ext.get::<RootRecord>() {
                (0, r.shared.clone())
            } else if let Some(r) = ext.get::<PhaseRecord>() {
                (r.span.key, r.shared.clone())
            } else {
                return;
            }
        };
        let key = shared.next_key.fetch_add(1, Ordering::Relaxed);
        if key as usize > MAX_SPANS {
            return;
        }
        let mut rec = SpanRecord::new(meta, key, parent_key);
        attrs.record(&mut Fields(&mut rec));
        span.extensions_mut()
            .insert(PhaseRecord { span: rec, shared });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(r) = ext.get_mut::<RootRecord>() {
            values.record(&mut Fields(&mut r.span));
        } else if let Some(r) = ext.get_mut::<PhaseRecord>() {
            values.record(&mut Fields(&mut r.span));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let span = event.parent().and_then(|id| ctx.span(id)).or_else(|| {
            event
                .is_contextual()
                .then(|| ctx.lookup_current())
                .flatten()
        });
        let Some(span) = span else { return };
        let meta = event.metadata();
        let mut ev = Event::new(
            "",
            SystemTime::now(),
            vec![
                KeyValue::new("level", meta.level().as_str()),
                KeyValue::new("target", meta.target()),
            ],
            0,
        );
        event.record(&mut EventFields(&mut ev));
        if ev.name.is_empty() {
            ev.name = Cow::Borrowed(meta.name());
        }
        let mut ext = span.extensions_mut();
        let rec = match ext.get_mut::<RootRecord>() {
            Some(r) => &mut r.span,
            None => match ext.get_mut::<PhaseRecord>() {
                Some(r) => &mut r.span,
                None => return,
            },
        };
        if rec.events.len() < MAX_EVENTS_PER_SPAN {
            rec.events.push(ev);
        }
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let end = Instant::now();
        if is_root(span.metadata()) {
            let Some(mut root) = span.extensions_mut().remove::<RootRecord>() else {
                return;
            };
            let Some(seed) = &root.seed else { return };
            let reason = match root.decided {
                Some(r) => r,
                None if root.refused => return,
                None => {
                    let r = &root.span;
                    let failed = r.flag("error");
                    let Some(reason) = seed.policy.qualifies(
                        r.int("http.status_code"),
                        failed,
                        end.saturating_duration_since(root.start),
                    ) else {
                        return;
                    };
                    if !seed.policy.admit(reason) {
                        return;
                    }
                    root.decided = Some(reason);
                    reason
                }
            };
            self.export(root, end, reason);
            return;
        }
        let Some(rec) = span.extensions_mut().remove::<PhaseRecord>() else {
            return;
        };
        rec.shared.done.lock().push((rec.span, end));
    }
}

/// A span's fields as attributes, typed as the OpenTelemetry layer types them (counts as
/// integers), with its `otel.*` fields applied.
struct Fields<'a>(&'a mut SpanRecord);

impl Fields<'_> {
    fn set(&mut self, key: &'static str, value: Value) {
        let attrs = &mut self.0.attrs;
        match attrs.iter_mut().find(|kv| kv.key.as_str() == key) {
            Some(kv) => kv.value = value,
            None => attrs.push(KeyValue::new(key, value)),
        }
    }

    fn special(&mut self, field: &Field, value: &str) -> bool {
        match field.name() {
            "otel.name" => self.0.name = Cow::Owned(value.to_string()),
            "otel.kind" => {
                self.0.kind = match value {
                    "server" => SpanKind::Server,
                    "client" => SpanKind::Client,
                    "producer" => SpanKind::Producer,
                    "consumer" => SpanKind::Consumer,
                    _ => SpanKind::Internal,
                }
            }
            "otel.status_code" => {
                self.0.status = match value {
                    "ERROR" | "error" => Status::error(""),
                    "OK" | "ok" => Status::Ok,
                    _ => Status::Unset,
                }
            }
            "otel.status_message" => self.0.status = Status::error(value.to_string()),
            _ => return false,
        }
        true
    }
}

impl Visit for Fields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let v = i64::try_from(value).map_or_else(|_| Value::from(value.to_string()), Value::I64);
        self.set(field.name(), v);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), Value::F64(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.special(field, value) {
            self.set(field.name(), Value::from(value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let s = format!("{value:?}");
        if !self.special(field, &s) {
            self.set(field.name(), Value::from(s));
        }
    }
}

/// A log event's fields: `message` names the event, the rest are its attributes.
struct EventFields<'a>(&'a mut Event);

impl EventFields<'_> {
    fn push(&mut self, field: &Field, value: Value) {
        self.0.attributes.push(KeyValue::new(field.name(), value));
    }
}

impl Visit for EventFields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let v = i64::try_from(value).map_or_else(|_| Value::from(value.to_string()), Value::I64);
        self.push(field, v);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::F64(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.name = Cow::Owned(value.to_string());
        } else {
            self.push(field, Value::from(value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let s = format!("{value:?}");
        if field.name() == "message" {
            self.0.name = Cow::Owned(s);
        } else {
            self.push(field, Value::from(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderMap;
    use opentelemetry::Value;
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    use crate::config::{Backend, JaegerConfig, SamplerType, TailCaptureConfig};
    use crate::http::RequestSpan;
    use crate::{LoggingConfig, Telemetry, TracingConfig};

    fn telemetry(exporter: &InMemorySpanExporter, tail: TailCaptureConfig) -> Telemetry {
        let mut j = JaegerConfig::default();
        j.sampler.sampler_type = SamplerType::Const;
        j.sampler.param = 0.0;
        let cfg = TracingConfig {
            backend: Backend::Jaeger,
            jaeger: Some(j),
            tail_capture: tail,
            ..TracingConfig::default()
        };
        Telemetry::builder(cfg, LoggingConfig::default())
            .with_exporter(exporter.clone())
            .with_slow_threshold(Duration::from_secs(3600))
            .with_log_writer(crate::LogWriter::new(std::io::sink))
            .build()
            .expect("telemetry")
    }

    /// One unsampled request with a phase span and a log; returns its `X-Trace-Id`.
    fn request(t: &Telemetry, status: u16) -> Option<String> {
        tracing::dispatcher::with_default(t.dispatch(), || {
            let mut req =
                RequestSpan::start(t.propagation(), "GET", Some("/q"), "/q", &HeaderMap::new());
            {
                let _in = req.span().enter();
                let phase = tracing::debug_span!(
                    target: "m3query::test",
                    "phase",
                    series = 3u64,
                    rows = tracing::field::Empty
                );
                let _p = phase.enter();
                phase.record("rows", 7u64);
                tracing::warn!(target: "m3query::test", store = "a", "store failed");
            }
            req.record_status(status, false);
            req.tail_check(status, false, Duration::from_millis(1));
            req.trace_id().map(str::to_string)
        })
    }

    fn attr<'a>(span: &'a opentelemetry_sdk::trace::SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn failed_unsampled_request_is_built_with_its_phases_and_a_fast_one_is_not() {
        let exporter = InMemorySpanExporter::default();
        let t = telemetry(&exporter, TailCaptureConfig::default());
        assert_eq!(request(&t, 200), None);
        assert!(exporter.get_finished_spans().expect("spans").is_empty());

        let id = request(&t, 503).expect("captured");
        let spans = exporter.get_finished_spans().expect("spans");
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let root = spans.iter().find(|s| s.name == "GET /q").expect("root");
        let phase = spans.iter().find(|s| s.name == "phase").expect("phase");
        assert_eq!(root.span_context.trace_id().to_string(), id);
        assert_eq!(phase.span_context.trace_id(), root.span_context.trace_id());
        assert_eq!(phase.parent_span_id, root.span_context.span_id());
        assert!(root.span_context.is_sampled());
        assert_eq!(attr(root, "sampler.type"), Some(&Value::from("tail")));
        assert_eq!(attr(root, "tail.reason"), Some(&Value::from("error")));
        assert_eq!(attr(root, "http.status_code"), Some(&Value::I64(503)));
        assert_eq!(attr(root, "error"), Some(&Value::Bool(true)));
        assert_eq!(root.span_kind, opentelemetry::trace::SpanKind::Server);
        // Counts are integers, recorded late or not.
        assert_eq!(attr(phase, "series"), Some(&Value::I64(3)));
        assert_eq!(attr(phase, "rows"), Some(&Value::I64(7)));
        assert_eq!(phase.events.len(), 1);
        assert_eq!(phase.events[0].name, "store failed");
        assert!(phase.start_time >= root.start_time && phase.end_time <= root.end_time);
    }

    #[test]
    fn captures_are_rate_limited_and_counted() {
        let exporter = InMemorySpanExporter::default();
        let t = telemetry(
            &exporter,
            TailCaptureConfig {
                max_per_second: 1.0,
                ..TailCaptureConfig::default()
            },
        );
        assert!(request(&t, 500).is_some());
        assert!(request(&t, 500).is_none(), "over the rate");
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(t.metrics_collector());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        assert!(
            out.contains("m3query_tracing_tail_captured_total{reason=\"error\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("m3query_tracing_tail_rate_limited_total 1"),
            "{out}"
        );
    }

    #[test]
    fn off_means_nothing_is_captured() {
        let exporter = InMemorySpanExporter::default();
        let t = telemetry(
            &exporter,
            TailCaptureConfig {
                enabled: false,
                ..TailCaptureConfig::default()
            },
        );
        assert_eq!(request(&t, 503), None);
        assert!(exporter.get_finished_spans().expect("spans").is_empty());
    }
}

/// What an unsampled request costs with and without tail capture, for instruction counting
/// (`valgrind --tool=callgrind` on this test, `M3Q_COST_N` requests): run by hand, ignored in
/// the suite.
#[cfg(test)]
mod cost {
    use std::time::Duration;

    use http::HeaderMap;

    use crate::config::{Backend, JaegerConfig, SamplerType, TailCaptureConfig};
    use crate::http::RequestSpan;
    use crate::{LoggingConfig, Telemetry, TracingConfig};

    fn run(tail: bool) {
        let n: usize = std::env::var("M3Q_COST_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let mut j = JaegerConfig::default();
        j.sampler.sampler_type = SamplerType::Const;
        j.sampler.param = 0.0;
        let cfg = TracingConfig {
            backend: Backend::Jaeger,
            jaeger: Some(j),
            tail_capture: TailCaptureConfig {
                enabled: tail,
                ..TailCaptureConfig::default()
            },
            ..TracingConfig::default()
        };
        let t = Telemetry::builder(cfg, LoggingConfig::default())
            .with_exporter(opentelemetry_sdk::trace::InMemorySpanExporter::default())
            .with_log_writer(crate::LogWriter::new(std::io::sink))
            .build()
            .expect("telemetry");
        let headers = HeaderMap::new();
        tracing::dispatcher::with_default(t.dispatch(), || {
            for _ in 0..n {
                let mut req = RequestSpan::start(
                    t.propagation(),
                    "GET",
                    Some("/api/v1/query"),
                    "/api/v1/query?query=up",
                    &headers,
                );
                {
                    let _in = req.span().enter();
                    for name in ["parse", "select", "eval", "encode"] {
                        let s = tracing::debug_span!(
                            target: "m3query::cost",
                            "phase",
                            what = name,
                            series = 200u64,
                            rows = tracing::field::Empty
                        );
                        let _s = s.enter();
                        s.record("rows", 7u64);
                    }
                }
                req.record_status(200, false);
                req.tail_check(200, false, Duration::from_millis(1));
            }
        });
    }

    #[test]
    #[ignore]
    fn cost_unsampled_without_tail() {
        run(false);
    }

    #[test]
    #[ignore]
    fn cost_unsampled_with_tail() {
        run(true);
    }
}
