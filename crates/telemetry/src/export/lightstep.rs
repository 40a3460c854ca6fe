//! What lightstep-tracer-go's `Options` do to spans on their way out, for `backend:
//! lightstep` (which speaks OTLP, see [`super::otlp`]):
//!
//! - `drop_span_logs` and `max_logs_per_span` bound the events (logs) a span keeps while it
//!   is recorded (the SDK's per-span event limit, see [`max_events_per_span`]); when a span
//!   lost events, its last kept event is replaced by one saying how many, as
//!   lightstep-tracer-go does (it keeps the oldest and newest events, we keep the oldest: the
//!   SDK drops newer ones, and keeping every event until the span ends would cost unbounded
//!   memory on a span that logs in a loop);
//! - `max_log_key_len` / `max_log_value_len` cut event attribute keys and string values (and
//!   the event name, which is LightStep's `event` field) to that many bytes, ending in `…`;
//! - `reconnect_period` rebuilds the exporter (a new connection) that often, so a pool of
//!   satellites behind a load balancer stays balanced.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::Event;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use parking_lot::Mutex;

use crate::config::{Backend, LightstepConfig, TracingConfig};

/// The SDK's per-span event limit for the configured backend, when it is LightStep's:
/// 0 with `drop_span_logs` (events are never recorded), else `max_logs_per_span`.
pub(crate) fn max_events_per_span(cfg: &TracingConfig) -> Option<u32> {
    if cfg.effective_backend() != Backend::Lightstep {
        return None;
    }
    let l = cfg.lightstep.clone().unwrap_or_default();
    Some(if l.drop_span_logs {
        0
    } else {
        u32::try_from(l.max_logs_per_span()).unwrap_or(u32::MAX)
    })
}

/// lightstep-tracer-go's suffix on a cut key or value.
const ELLIPSIS: &str = "…";

/// The span-log limits of `tracing.lightstep`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LogLimits {
    pub drop_logs: bool,
    pub max_key_len: usize,
    pub max_value_len: usize,
}

impl LogLimits {
    pub(crate) fn from_config(c: &LightstepConfig) -> LogLimits {
        LogLimits {
            drop_logs: c.drop_span_logs,
            max_key_len: c.max_log_key_len(),
            max_value_len: c.max_log_value_len(),
        }
    }

    pub(crate) fn apply(&self, span: &mut SpanData) {
        if self.drop_logs {
            let n = u32::try_from(span.events.events.len()).unwrap_or(u32::MAX);
            span.events.events.clear();
            span.events.dropped_count = span.events.dropped_count.saturating_add(n);
            return;
        }
        for e in span.events.events.iter_mut() {
            if let Some(cut) = cut(&e.name, self.max_value_len) {
                e.name = Cow::Owned(cut);
            }
            for kv in e.attributes.iter_mut() {
                if let Some(k) = cut(kv.key.as_str(), self.max_key_len) {
                    kv.key = k.into();
                }
                if let Value::String(s) = &kv.value
                    && let Some(v) = cut(s.as_str(), self.max_value_len)
                {
                    kv.value = Value::String(v.into());
                }
            }
        }
        let dropped = span.events.dropped_count;
        if dropped > 0
            && let Some(last) = span.events.events.last_mut()
        {
            // As lightstep-tracer-go: the marker takes one kept event's place, so it
            // counts that one too.
            *last = Event::new(
                "dropped Span logs",
                last.timestamp,
                vec![KeyValue::new(
                    "dropped_log_count",
                    i64::from(dropped.saturating_add(1)),
                )],
                0,
            );
        }
    }
}

/// `s` cut to `max - 1` bytes (at a character boundary) plus `…`, when longer than `max`.
fn cut(s: &str, max: usize) -> Option<String> {
    if s.len() <= max {
        return None;
    }
    let mut end = max.saturating_sub(1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}{ELLIPSIS}", &s[..end]))
}

type Make<E> = Box<dyn Fn() -> Result<E, String> + Send + Sync>;

/// The OTLP exporter with LightStep's span-log limits applied first, rebuilt every
/// `reconnect_period`.
pub(crate) struct LightstepExporter<E> {
    make: Make<E>,
    current: Mutex<Current<E>>,
    period: Duration,
    resource: Option<Resource>,
    limits: LogLimits,
}

struct Current<E> {
    exporter: Arc<E>,
    reconnect_at: Instant,
}

impl<E> fmt::Debug for LightstepExporter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LightstepExporter")
            .field("limits", &self.limits)
            .field("reconnect_period", &self.period)
            .finish()
    }
}

/// lightstep-tracer-go adds up to 20% to the reconnect period so a fleet started together
/// does not reconnect together; the clock's nanoseconds are random enough for that.
fn jittered(period: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    period + period.mul_f64(0.2 * f64::from(nanos % 1000) / 1000.0)
}

impl<E: SpanExporter + 'static> LightstepExporter<E> {
    pub(crate) fn new(
        make: impl Fn() -> Result<E, String> + Send + Sync + 'static,
        limits: LogLimits,
        period: Duration,
    ) -> Result<Self, String> {
        let exporter = make()?;
        Ok(LightstepExporter {
            make: Box::new(make),
            current: Mutex::new(Current {
                exporter: Arc::new(exporter),
                reconnect_at: Instant::now() + jittered(period),
            }),
            period,
            resource: None,
            limits,
        })
    }

    /// The exporter to use now: a new one when the period is over (the old one is shut
    /// down once its last export is done, when its `Arc` goes). A failed rebuild keeps the
    /// old one and tries again next period.
    fn exporter(&self) -> Arc<E> {
        let mut cur = self.current.lock();
        if Instant::now() >= cur.reconnect_at {
            cur.reconnect_at = Instant::now() + jittered(self.period);
            match (self.make)() {
                Ok(mut e) => {
                    if let Some(r) = &self.resource {
                        e.set_resource(r);
                    }
                    let old = std::mem::replace(&mut cur.exporter, Arc::new(e));
                    let _ = old.shutdown();
                }
                Err(error) => tracing::warn!(
                    target: "m3query::tracing",
                    %error,
                    "reconnecting to LightStep failed; keeping the current connection"
                ),
            }
        }
        cur.exporter.clone()
    }
}

impl<E: SpanExporter + 'static> SpanExporter for LightstepExporter<E> {
    fn export(
        &self,
        mut batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        for s in batch.iter_mut() {
            self.limits.apply(s);
        }
        let exporter = self.exporter();
        async move { exporter.export(batch).await }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.current.lock().exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.current.lock().exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = Some(resource.clone());
        let cur = self.current.get_mut();
        if let Some(e) = Arc::get_mut(&mut cur.exporter) {
            e.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanKind, Status};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanEvents, SpanLinks};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn span(events: Vec<Event>, dropped: u32) -> SpanData {
        let mut ev = SpanEvents::default();
        ev.events = events;
        ev.dropped_count = dropped;
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "s".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes: vec![],
            dropped_attributes_count: 0,
            events: ev,
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    fn event(name: &str, attrs: Vec<KeyValue>) -> Event {
        Event::new(
            name.to_string(),
            std::time::SystemTime::UNIX_EPOCH,
            attrs,
            0,
        )
    }

    fn limits(key: usize, value: usize) -> LogLimits {
        LogLimits {
            drop_logs: false,
            max_key_len: key,
            max_value_len: value,
        }
    }

    #[test]
    fn keys_and_string_values_are_cut_with_an_ellipsis() {
        let mut s = span(
            vec![event(
                "a long event name",
                vec![
                    KeyValue::new("a_long_key", "a long value"),
                    KeyValue::new("k", "short"),
                    KeyValue::new("n", 1234567890_i64),
                    KeyValue::new("é", "ééé"),
                ],
            )],
            0,
        );
        limits(4, 6).apply(&mut s);
        let e = &s.events.events[0];
        assert_eq!(e.name, "a lon…");
        let kv: Vec<(String, String)> = e
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("a_l…".to_string(), "a lon…".to_string()),
                ("k".to_string(), "short".to_string()),
                ("n".to_string(), "1234567890".to_string()),
                // 6 bytes fit exactly; a cut never splits a character.
                ("é".to_string(), "ééé".to_string()),
            ]
        );
        assert_eq!(cut("ééé", 5).as_deref(), Some("éé…"));
        assert_eq!(cut("ééé", 4).as_deref(), Some("é…"));
    }

    #[test]
    fn drop_span_logs_and_the_dropped_marker() {
        let mut s = span(vec![event("a", vec![]), event("b", vec![])], 3);
        limits(256, 1024).apply(&mut s);
        assert_eq!(s.events.events[0].name, "a");
        assert_eq!(s.events.events[1].name, "dropped Span logs");
        assert_eq!(
            s.events.events[1].attributes,
            vec![KeyValue::new("dropped_log_count", 4_i64)]
        );
        let mut s = span(vec![event("a", vec![])], 0);
        LogLimits {
            drop_logs: true,
            ..limits(256, 1024)
        }
        .apply(&mut s);
        assert!(s.events.events.is_empty());
        assert_eq!(s.events.dropped_count, 1);
    }

    #[test]
    fn sdk_event_limit_follows_max_logs_per_span_and_drop_span_logs() {
        let mut c = TracingConfig {
            backend: Backend::Lightstep,
            lightstep: Some(LightstepConfig::default()),
            ..TracingConfig::default()
        };
        assert_eq!(max_events_per_span(&c), Some(500));
        c.lightstep = Some(LightstepConfig {
            max_logs_per_span: Some(7),
            ..LightstepConfig::default()
        });
        assert_eq!(max_events_per_span(&c), Some(7));
        c.lightstep = Some(LightstepConfig {
            drop_span_logs: true,
            ..LightstepConfig::default()
        });
        assert_eq!(max_events_per_span(&c), Some(0));
        c.backend = Backend::Otlp;
        assert_eq!(max_events_per_span(&c), None);
    }

    #[test]
    fn reconnects_every_period_and_exports_through_the_new_exporter() {
        let builds = Arc::new(AtomicUsize::new(0));
        let sink = InMemorySpanExporter::default();
        let (b, out) = (builds.clone(), sink.clone());
        let e = LightstepExporter::new(
            move || {
                b.fetch_add(1, Ordering::SeqCst);
                Ok(out.clone())
            },
            limits(256, 1024),
            Duration::from_millis(50),
        )
        .expect("built");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(e.export(vec![span(vec![], 0)]))
            .expect("export");
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        // Within the period: the same exporter.
        rt.block_on(e.export(vec![span(vec![], 0)]))
            .expect("export");
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        // 50ms + at most 20% later: a new one.
        std::thread::sleep(Duration::from_millis(70));
        rt.block_on(e.export(vec![span(vec![], 0)]))
            .expect("export");
        assert_eq!(builds.load(Ordering::SeqCst), 2);
        // The old exporter was shut down (which empties the shared in-memory store) and the
        // new one got the batch.
        assert_eq!(sink.get_finished_spans().expect("spans").len(), 1);
    }
}

#[cfg(test)]
mod provider_tests {
    use crate::config::{Backend, LightstepConfig};
    use crate::{LoggingConfig, Telemetry, TracingConfig};
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    /// `max_logs_per_span` reaches the tracer provider: a span keeps that many events and
    /// counts the rest as dropped.
    #[test]
    fn the_provider_keeps_max_logs_per_span_events() {
        let cfg = TracingConfig {
            backend: Backend::Lightstep,
            lightstep: Some(LightstepConfig {
                max_logs_per_span: Some(2),
                ..LightstepConfig::default()
            }),
            ..TracingConfig::default()
        };
        let sink = InMemorySpanExporter::default();
        let t = Telemetry::builder(cfg, LoggingConfig::default())
            .with_exporter(sink.clone())
            .with_log_writer(crate::LogWriter::new(std::io::sink))
            .build()
            .expect("telemetry");
        tracing::dispatcher::with_default(t.dispatch(), || {
            let req = crate::http::RequestSpan::start(
                t.propagation(),
                "GET",
                Some("/q"),
                "/q",
                &http::HeaderMap::new(),
            );
            let _in = req.span().enter();
            for i in 0..5 {
                tracing::info!(i, "event");
            }
        });
        let spans = sink.get_finished_spans().expect("spans");
        let s = spans.first().expect("one span");
        assert_eq!(s.events.events.len(), 2);
        assert_eq!(s.events.dropped_count, 3);
    }
}
