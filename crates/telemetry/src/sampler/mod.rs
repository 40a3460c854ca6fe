//! Sampling decisions, as jaeger-client-go makes them.
//!
//! - A span with a valid parent (a sampled remote caller, or our own request span) follows
//!   the parent: parent-based, so a sampled inbound trace is always continued and an
//!   unsampled request costs nothing further down.
//! - A root span carrying the debug id (`jaeger-debug-id` header, recorded by the request
//!   span as `jaeger.debug_id`) is sampled and marked debug: the mark travels to its children
//!   in the trace state, and the Jaeger exporter sets the debug flag from it.
//! - Other root spans go to the configured Jaeger sampler (`const`, `probabilistic`,
//!   `ratelimiting`, or `remote` with per-operation strategies), which also returns the
//!   `sampler.type`/`sampler.param` tags the root span carries. Backends without a sampler
//!   config (OTLP, LightStep) sample every root span.
//!
//! Every decision is counted (`spans_started`, `spans_sampled`).
//!
//! A request's root span is decided before it exists ([`Sampler::decide_root`]), so that an
//! unsampled request never reaches the OpenTelemetry layer at all (see `crate::http`). A
//! sampled one then goes through the SDK as usual, which asks [`Sampler::should_sample`] again
//! on the same thread: the decision waits for it in a thread-local, together with the trace id
//! it was made for, which [`DecidedIds`] hands the SDK so the exported trace id is the one a
//! probabilistic sampler judged.

pub(crate) mod jaeger;
pub(crate) mod rate_limiter;
pub(crate) mod remote;

use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry::trace::{Link, SpanId, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SamplingDecision, SamplingResult, ShouldSample,
};

use crate::config::{Backend, SamplerType, TracingConfig};
use crate::export::jaeger::model::{DEBUG_ID_ATTRIBUTE, DEBUG_TRACE_STATE_KEY};
use crate::metrics::BackendCounters;
use jaeger::{ConstSampler, Param, ProbabilisticSampler, RateLimitingSampler, RootSampler};
use rate_limiter::Clock;
use remote::RemoteSampler;

/// The provider's sampler.
#[derive(Clone, Debug)]
pub(crate) struct Sampler {
    root: Option<Arc<dyn RootSampler>>,
    counters: BackendCounters,
}

/// What `build` made: the sampler, and the remote sampler to poll for, if any.
pub(crate) struct Built {
    pub sampler: Sampler,
    pub remote: Option<Arc<RemoteSampler>>,
}

pub(crate) fn build(cfg: &TracingConfig, counters: BackendCounters, clock: Clock) -> Built {
    let mut remote = None;
    let root: Option<Arc<dyn RootSampler>> = match cfg.effective_backend() {
        Backend::Jaeger => {
            let s = cfg
                .jaeger
                .as_ref()
                .map(|j| j.sampler.clone())
                .unwrap_or_default();
            Some(match s.sampler_type {
                SamplerType::Const => Arc::new(ConstSampler(s.param != 0.0)),
                SamplerType::Probabilistic => Arc::new(ProbabilisticSampler::new(s.param)),
                SamplerType::RateLimiting => Arc::new(RateLimitingSampler::new(s.param, clock)),
                SamplerType::Remote => {
                    let r = Arc::new(RemoteSampler::new(s.param, s.max_operations, clock));
                    remote = Some(r.clone());
                    r
                }
            })
        }
        _ => None,
    };
    Built {
        sampler: Sampler { root, counters },
        remote,
    }
}

impl Sampler {
    #[cfg(test)]
    pub(crate) fn with_root(root: Arc<dyn RootSampler>, counters: BackendCounters) -> Self {
        Sampler {
            root: Some(root),
            counters,
        }
    }

    /// Decides a request's root span before it is created: `parent` is the inbound remote
    /// parent, `debug` whether the request carries the debug header. A sampled decision waits
    /// on this thread for the SDK to build the span (call [`clear_decided`] after that).
    /// Returns the decision and the trace id it was made for (an unsampled request keeps it
    /// for tail capture).
    pub(crate) fn decide_root(
        &self,
        parent: Option<&Context>,
        debug: bool,
        name: &str,
    ) -> (bool, TraceId) {
        let trace_id = parent
            .map(|cx| cx.span().span_context().clone())
            .filter(|sc| sc.is_valid())
            .map(|sc| sc.trace_id())
            .unwrap_or_else(|| RandomIdGenerator::default().new_trace_id());
        self.counters.started.inc();
        let r = self.decide(parent, trace_id, name, debug);
        if r.decision != SamplingDecision::RecordAndSample {
            return (false, trace_id);
        }
        self.counters.sampled.inc();
        DECIDED.with(|d| *d.borrow_mut() = Some((trace_id, r)));
        (true, trace_id)
    }

    /// Makes the next root span built on this thread for `trace_id` sampled with `result`,
    /// whatever the root sampler says: tail capture builds a request's spans after the fact.
    /// Counted as sampled, since it is exported. Call [`clear_decided`] after building it.
    pub(crate) fn force_root(&self, trace_id: TraceId, result: SamplingResult) {
        self.counters.sampled.inc();
        DECIDED.with(|d| *d.borrow_mut() = Some((trace_id, result)));
    }

    fn decide(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        debug: bool,
    ) -> SamplingResult {
        if let Some(cx) = parent_context {
            let parent = cx.span();
            let psc = parent.span_context();
            if psc.is_valid() {
                return SamplingResult {
                    decision: if psc.is_sampled() {
                        SamplingDecision::RecordAndSample
                    } else {
                        SamplingDecision::Drop
                    },
                    attributes: Vec::new(),
                    trace_state: psc.trace_state().clone(),
                };
            }
        }
        if debug {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: TraceState::from_key_value([(DEBUG_TRACE_STATE_KEY, "1")])
                    .unwrap_or_default(),
            };
        }
        let Some(root) = &self.root else {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        };
        let d = root.sample(u128::from_be_bytes(trace_id.to_bytes()), name);
        if !d.sampled {
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        let param = match d.param {
            Param::Bool(b) => Value::Bool(b),
            Param::Float(f) => Value::F64(f),
        };
        SamplingResult {
            decision: SamplingDecision::RecordAndSample,
            attributes: vec![
                KeyValue::new("sampler.type", d.sampler_type),
                KeyValue::new("sampler.param", param),
            ],
            trace_state: TraceState::default(),
        }
    }
}

impl ShouldSample for Sampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        _span_kind: &SpanKind,
        attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        // The request root decided by `decide_root`, now being built by the SDK.
        if let Some(r) = DECIDED.with(|d| {
            let mut d = d.borrow_mut();
            match d.as_ref() {
                Some((t, _)) if *t == trace_id => d.take().map(|(_, r)| r),
                _ => None,
            }
        }) {
            return r;
        }
        self.counters.started.inc();
        let debug = attributes
            .iter()
            .any(|kv| kv.key.as_str() == DEBUG_ID_ATTRIBUTE);
        let r = self.decide(parent_context, trace_id, name, debug);
        if r.decision == SamplingDecision::RecordAndSample {
            self.counters.sampled.inc();
        }
        r
    }
}

thread_local! {
    /// The sampled decision `decide_root` made, and the trace id it was made for.
    static DECIDED: RefCell<Option<(TraceId, SamplingResult)>> = const { RefCell::new(None) };
}

/// Forgets a decision the SDK did not pick up (no span was built), so it cannot leak into an
/// unrelated span later on this thread.
pub(crate) fn clear_decided() {
    DECIDED.with(|d| d.borrow_mut().take());
}

/// The provider's id generator: random ids, except that a root span decided by
/// `decide_root` gets the trace id its decision was made for.
#[derive(Debug, Default)]
pub(crate) struct DecidedIds(RandomIdGenerator);

impl IdGenerator for DecidedIds {
    fn new_trace_id(&self) -> TraceId {
        DECIDED
            .with(|d| d.borrow().as_ref().map(|(t, _)| *t))
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags};

    fn counters() -> BackendCounters {
        Arc::new(Metrics::default()).backend("test")
    }

    fn remote_parent(sampled: bool) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        ))
    }

    fn sample(s: &Sampler, parent: Option<&Context>, attrs: &[KeyValue]) -> SamplingResult {
        s.should_sample(
            parent,
            TraceId::from_bytes([0xff; 16]),
            "GET /x",
            &SpanKind::Server,
            attrs,
            &[],
        )
    }

    #[test]
    fn parent_decides_then_debug_then_root_sampler() {
        let c = counters();
        let never = Sampler::with_root(Arc::new(ConstSampler(false)), c.clone());
        let r = sample(&never, Some(&remote_parent(true)), &[]);
        assert_eq!(r.decision, SamplingDecision::RecordAndSample);
        assert!(r.attributes.is_empty(), "child spans carry no sampler tags");
        let always = Sampler::with_root(Arc::new(ConstSampler(true)), c.clone());
        let r = sample(&always, Some(&remote_parent(false)), &[]);
        assert_eq!(
            r.decision,
            SamplingDecision::Drop,
            "an unsampled parent wins"
        );

        let r = sample(&never, None, &[KeyValue::new(DEBUG_ID_ATTRIBUTE, "abc")]);
        assert_eq!(r.decision, SamplingDecision::RecordAndSample);
        assert_eq!(r.trace_state.get(DEBUG_TRACE_STATE_KEY), Some("1"));

        let r = sample(&always, None, &[]);
        assert_eq!(r.decision, SamplingDecision::RecordAndSample);
        assert_eq!(
            r.attributes,
            vec![
                KeyValue::new("sampler.type", "const"),
                KeyValue::new("sampler.param", true)
            ]
        );
        assert_eq!(sample(&never, None, &[]).decision, SamplingDecision::Drop);
        assert_eq!(c.started.get(), 5);
        assert_eq!(c.sampled.get(), 3);
    }

    #[test]
    fn probabilistic_root_tags_param_as_a_number() {
        let s = Sampler::with_root(Arc::new(ProbabilisticSampler::new(1.0)), counters());
        let r = sample(&s, None, &[]);
        assert_eq!(
            r.attributes,
            vec![
                KeyValue::new("sampler.type", "probabilistic"),
                KeyValue::new("sampler.param", 1.0)
            ]
        );
    }
}
