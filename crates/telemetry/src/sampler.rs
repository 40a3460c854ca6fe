//! Sampling decisions for root spans.
//!
//! Requests that continue a remote trace follow the parent's decision (parent-based, as
//! jaeger-client-go does). A request carrying the debug header (`jaeger-debug-id`) is always
//! sampled. Root spans otherwise go to the configured sampler.

use opentelemetry::trace::{Link, SpanKind, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, ShouldSample};

use crate::config::{Backend, SamplerType, TracingConfig};

/// The attribute the request span sets from the debug header.
pub(crate) const DEBUG_ID_ATTRIBUTE: &str = "jaeger.debug_id";

pub(crate) fn build(cfg: &TracingConfig) -> Sampler {
    let root: Box<dyn ShouldSample> = match (cfg.effective_backend(), &cfg.jaeger) {
        (Backend::Jaeger, Some(j)) => match j.sampler.sampler_type {
            SamplerType::Const if j.sampler.param == 0.0 => Box::new(Sampler::AlwaysOff),
            SamplerType::Const => Box::new(Sampler::AlwaysOn),
            _ => Box::new(Sampler::TraceIdRatioBased(j.sampler.param)),
        },
        (Backend::Jaeger, None) => Box::new(Sampler::TraceIdRatioBased(
            crate::config::DEFAULT_SAMPLING_PROBABILITY,
        )),
        _ => Box::new(Sampler::AlwaysOn),
    };
    Sampler::ParentBased(Box::new(DebugForced { inner: root }))
}

/// Samples every span that carries the debug-id attribute, else defers to `inner`.
#[derive(Debug, Clone)]
struct DebugForced {
    inner: Box<dyn ShouldSample>,
}

impl ShouldSample for DebugForced {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if attributes
            .iter()
            .any(|kv| kv.key.as_str() == DEBUG_ID_ATTRIBUTE)
        {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: Default::default(),
            };
        }
        self.inner
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}
