//! OTLP exporters (`opentelemetry-otlp`) for `backend: otlp` and `backend: lightstep`.
//!
//! LightStep satellites and LightStep's public ingest take OTLP with the project token in
//! the `lightstep-access-token` header (the legacy LightStep protocol's tracers are
//! archived), so `lightstep:` is OTLP with LightStep's keys:
//!
//! | config | endpoint |
//! | --- | --- |
//! | `collector: {scheme: https, host: H, port: P}` | OTLP/gRPC `https://H:P` (TLS) |
//! | `collector: {..., plaintext: true}` or `scheme: http` | OTLP/gRPC `http://H:P` |
//! | `use_http: true` with a collector | OTLP/HTTP `POST {scheme}://H:P/v1/traces` |
//! | no collector | OTLP/gRPC `https://ingest.lightstep.com:443` |
//! | no collector, `use_http: true` | OTLP/HTTP `POST https://ingest.lightstep.com:443/v1/traces` |
//!
//! `usegrpc: true` asks for gRPC, which is also what m3query uses when neither is set;
//! `use_http` wins when both are, the order lightstep-tracer-go applies.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use opentelemetry_otlp::{
    Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};

use crate::config::{LightstepConfig, OtlpConfig, OtlpProtocol};

/// LightStep's public OTLP ingest (ServiceNow Cloud Observability), gRPC and HTTP.
pub const LIGHTSTEP_PUBLIC_GRPC: &str = "https://ingest.lightstep.com:443";
pub const LIGHTSTEP_PUBLIC_HTTP: &str = "https://ingest.lightstep.com:443/v1/traces";

/// Where and how spans go, resolved from config (and printed at startup).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OtlpTarget {
    pub endpoint: String,
    pub http: bool,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub ca_file: Option<String>,
}

impl OtlpTarget {
    pub(crate) fn for_otlp(c: &OtlpConfig) -> OtlpTarget {
        let http = c.protocol == OtlpProtocol::HttpProtobuf;
        let mut endpoint = c.endpoint.0.clone();
        if c.insecure
            && let Some(rest) = endpoint.strip_prefix("https://")
        {
            endpoint = format!("http://{rest}");
        }
        if http {
            endpoint = with_traces_path(&endpoint);
        }
        OtlpTarget {
            endpoint,
            http,
            headers: c
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: c.timeout.0,
            ca_file: None,
        }
    }

    pub(crate) fn for_lightstep(c: &LightstepConfig) -> OtlpTarget {
        let endpoint = match &c.collector {
            None if c.use_http => LIGHTSTEP_PUBLIC_HTTP.to_string(),
            None => LIGHTSTEP_PUBLIC_GRPC.to_string(),
            Some(col) => {
                let tls = !col.plaintext && !col.scheme.eq_ignore_ascii_case("http");
                let scheme = if tls { "https" } else { "http" };
                let host = if col.host.contains(':') && !col.host.starts_with('[') {
                    format!("[{}]", col.host)
                } else {
                    col.host.clone()
                };
                let base = format!("{scheme}://{host}:{}", col.port);
                if c.use_http {
                    format!("{base}/v1/traces")
                } else {
                    base
                }
            }
        };
        let mut headers = Vec::new();
        if !c.access_token.is_empty() {
            headers.push(("lightstep-access-token".to_string(), c.access_token.clone()));
        }
        OtlpTarget {
            endpoint,
            http: c.use_http,
            headers,
            timeout: c.report_timeout(),
            ca_file: c
                .collector
                .as_ref()
                .and_then(|col| col.custom_ca_cert_file.clone()),
        }
    }

    /// Builds the exporter. gRPC channels spawn onto the current tokio runtime, so this runs
    /// on the export thread.
    pub(crate) fn build(&self) -> Result<SpanExporter, String> {
        let err = |e: opentelemetry_otlp::ExporterBuildError| e.to_string();
        if self.http {
            let client = crate::export::http_client::client(self.timeout)?;
            let headers: HashMap<String, String> = self.headers.iter().cloned().collect();
            return SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(self.endpoint.clone())
                .with_timeout(self.timeout)
                .with_headers(headers)
                .with_http_client(client)
                .build()
                .map_err(err);
        }
        let mut hm = http::HeaderMap::new();
        for (k, v) in &self.headers {
            let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|e| format!("header {k:?}: {e}"))?;
            let value = http::HeaderValue::from_str(v).map_err(|e| format!("header {k:?}: {e}"))?;
            hm.insert(name, value);
        }
        let mut b = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(self.endpoint.clone())
            .with_timeout(self.timeout)
            .with_metadata(MetadataMap::from_headers(hm));
        if self.endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(path) = &self.ca_file {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("custom_ca_cert_file {path:?}: {e}"))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            b = b.with_tls_config(tls);
        }
        b.build().map_err(err)
    }
}

/// `/v1/traces` when the URL has no path of its own.
fn with_traces_path(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) if matches!(u.path(), "" | "/") && u.query().is_none() => {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HttpUrl, LIGHTSTEP_REPORT_TIMEOUT, LightstepEndpoint};

    fn ls(collector: Option<LightstepEndpoint>, use_http: bool) -> OtlpTarget {
        OtlpTarget::for_lightstep(&LightstepConfig {
            access_token: "tok".into(),
            collector,
            use_http,
            ..LightstepConfig::default()
        })
    }

    fn sat(scheme: &str, plaintext: bool) -> Option<LightstepEndpoint> {
        Some(LightstepEndpoint {
            scheme: scheme.into(),
            host: "sat.example".into(),
            port: 8181,
            plaintext,
            custom_ca_cert_file: None,
        })
    }

    #[test]
    fn lightstep_endpoints() {
        assert_eq!(ls(None, false).endpoint, "https://ingest.lightstep.com:443");
        assert_eq!(
            ls(None, true).endpoint,
            "https://ingest.lightstep.com:443/v1/traces"
        );
        assert_eq!(
            ls(sat("https", false), false).endpoint,
            "https://sat.example:8181"
        );
        assert_eq!(
            ls(sat("https", true), false).endpoint,
            "http://sat.example:8181"
        );
        assert_eq!(
            ls(sat("http", false), false).endpoint,
            "http://sat.example:8181"
        );
        assert_eq!(
            ls(sat("https", false), true).endpoint,
            "https://sat.example:8181/v1/traces"
        );
        let t = ls(None, false);
        assert_eq!(
            t.headers,
            vec![("lightstep-access-token".to_string(), "tok".to_string())]
        );
        assert_eq!(t.timeout, LIGHTSTEP_REPORT_TIMEOUT);
        let empty = OtlpTarget::for_lightstep(&LightstepConfig::default());
        assert!(empty.headers.is_empty(), "no token, no header");
        // lightstep-tracer-go's order: use_http, then usegrpc.
        let both = OtlpTarget::for_lightstep(&LightstepConfig {
            use_http: true,
            use_grpc: true,
            ..LightstepConfig::default()
        });
        assert!(both.http, "use_http wins over usegrpc");
        let grpc = OtlpTarget::for_lightstep(&LightstepConfig {
            use_grpc: true,
            ..LightstepConfig::default()
        });
        assert!(!grpc.http);
    }

    #[test]
    fn otlp_endpoints() {
        let mut c = OtlpConfig::default();
        assert_eq!(OtlpTarget::for_otlp(&c).endpoint, "http://localhost:4317");
        c.protocol = OtlpProtocol::HttpProtobuf;
        c.endpoint = HttpUrl("http://collector:4318".into());
        assert_eq!(
            OtlpTarget::for_otlp(&c).endpoint,
            "http://collector:4318/v1/traces"
        );
        c.endpoint = HttpUrl("https://collector:4318/custom/path".into());
        assert_eq!(
            OtlpTarget::for_otlp(&c).endpoint,
            "https://collector:4318/custom/path"
        );
        c.insecure = true;
        assert_eq!(
            OtlpTarget::for_otlp(&c).endpoint,
            "http://collector:4318/custom/path"
        );
    }
}
