//! The HTTP client for the Jaeger collector, the sampling server and OTLP/HTTP: reqwest
//! (async, on the exporter's own runtime) with its rustls backend (aws-lc-rs, the provider
//! reqwest and tonic share, so no process-wide provider has to be installed) and the
//! platform's certificate verifier, so https endpoints work without OpenSSL.

use std::time::Duration;

pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("m3query/", env!("CARGO_PKG_VERSION")))
        // Batches go out on kept-alive connections: no Nagle delay behind the last ACK
        // (reqwest's default today, set so a change of default cannot slow exports).
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}
