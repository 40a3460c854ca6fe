//! `GET /`: a small landing page until there is a query UI.
//!
//! Clients check a Prometheus URL with `GET /` (prometheus-api-client's connection check;
//! Prometheus itself redirects to its UI), and people open it in a browser: both get 200 and
//! an HTML page naming the server and its version, linking to the API's status pages and to
//! the metrics. A query UI, when it comes, replaces this module.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use crate::AppState;

/// Escapes text for HTML element content and double-quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's links: (path, what it is).
fn links(metrics_path: &str) -> [(&str, &'static str); 12] {
    [
        ("/api/v1/query?query=up", "instant query (PromQL)"),
        ("/api/v1/label/__name__/values", "metric names in storage"),
        ("/api/v1/status/buildinfo", "build information"),
        (
            "/api/v1/status/config",
            "effective configuration (secrets redacted)",
        ),
        ("/api/v1/status/flags", "command-line flags"),
        ("/api/v1/status/runtimeinfo", "runtime information"),
        ("/api/v1/status/tsdb", "embedded storage: head cardinality"),
        ("/api/v1/rules", "rules (none: m3query evaluates no rules)"),
        ("/api/v1/alerts", "alerts (none)"),
        (metrics_path, "m3query's own metrics"),
        ("/health", "liveness"),
        ("/ready", "readiness (storage open)"),
    ]
}

fn page(state: &AppState) -> String {
    let b = &state.build;
    let mut out = String::with_capacity(2048);
    out.push_str(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>m3query</title>\n</head>\n<body>\n<h1>m3query</h1>\n",
    );
    let _ = writeln!(
        out,
        "<p>A Prometheus-compatible PromQL query server. Version {} (revision {}).</p>",
        esc(&b.version),
        esc(&b.revision)
    );
    out.push_str(
        "<p>Point Grafana or any Prometheus client at this address: it serves the \
         Prometheus HTTP API under <code>/api/v1/</code>.</p>\n<ul>\n",
    );
    for (path, what) in links(&state.config.metrics.prometheus.handler_path) {
        let p = esc(path);
        let _ = writeln!(
            out,
            "<li><a href=\"{p}\"><code>{p}</code></a>: {}</li>",
            esc(what)
        );
    }
    out.push_str("</ul>\n</body>\n</html>\n");
    out
}

/// `GET|HEAD /`.
pub(crate) async fn landing(State(state): State<Arc<AppState>>) -> Response {
    Html(page(&state)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(esc("/metrics"), "/metrics");
    }
}
