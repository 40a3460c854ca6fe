//! The HTTP client for the Jaeger collector, the sampling server and OTLP/HTTP: reqwest
//! (async, on the exporter's own runtime) with rustls on the `ring` provider and the
//! platform's certificate verifier (system roots), so https endpoints work without OpenSSL
//! and without a process-wide crypto provider.

use std::sync::Arc;
use std::time::Duration;

use rustls_platform_verifier::BuilderVerifierExt;

pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_platform_verifier()
        .map_err(|e| format!("TLS certificate verifier: {e}"))?
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("m3query/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}
