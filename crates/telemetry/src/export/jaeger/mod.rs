//! Jaeger exporters: agent UDP (compact Thrift `Agent.emitBatch`) and collector HTTP (binary
//! Thrift `Batch`), both `opentelemetry_sdk::trace::SpanExporter`s.

pub(crate) mod agent;
pub(crate) mod collector;
#[cfg(test)]
mod decode_tests;
pub(crate) mod model;
pub(crate) mod thrift;

use crate::config::TagValue;
use model::JTag;

pub use agent::JaegerAgentExporter;
pub use collector::JaegerCollectorExporter;

/// The process a batch comes from: `serviceName` and tags (`jaeger.version`, `hostname`,
/// `ip`, then the configured `jaeger.tags`, which may override them).
#[derive(Clone, Debug, PartialEq)]
pub struct JaegerProcess {
    /// The service name.
    pub service_name: String,
    /// The process tags, in the order sent.
    pub tags: Vec<(String, TagValue)>,
}

impl JaegerProcess {
    /// The process Jaeger clients describe: `jaeger.version` = `Rust-m3query-<version>`,
    /// `hostname`, `ip`, plus `extra` tags (which win over the built-in ones).
    pub fn new(service_name: &str, extra: &[(String, TagValue)]) -> JaegerProcess {
        let mut tags: Vec<(String, TagValue)> = vec![(
            "jaeger.version".into(),
            TagValue::String(format!("Rust-m3query-{}", crate::VERSION)),
        )];
        if let Some(h) = crate::host::hostname() {
            tags.push(("hostname".into(), TagValue::String(h)));
        }
        if let Some(ip) = crate::host::ipv4() {
            tags.push(("ip".into(), TagValue::String(ip.to_string())));
        }
        for (k, v) in extra {
            tags.retain(|(existing, _)| existing != k);
            tags.push((k.clone(), v.clone()));
        }
        JaegerProcess {
            service_name: service_name.to_string(),
            tags,
        }
    }

    fn encode<P: thrift::Protocol>(&self, p: &mut P) {
        let tags: Vec<(&str, JTag<'_>)> = self
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), JTag::from_config(v)))
            .collect();
        model::write_process(p, &self.service_name, &tags);
    }

    pub(crate) fn encode_compact(&self) -> Vec<u8> {
        let mut b = Vec::new();
        self.encode(&mut thrift::Compact::new(&mut b));
        b
    }

    pub(crate) fn encode_binary(&self) -> Vec<u8> {
        let mut b = Vec::new();
        self.encode(&mut thrift::Binary::new(&mut b));
        b
    }
}
