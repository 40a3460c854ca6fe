//! The built-in query page: `GET /` and its single-page routes, the bundled assets under
//! `/assets/`, and the UI's own endpoints (`/api/v1/status/slow_queries`).
//!
//! The page is built from `ui/` (TypeScript, CodeMirror with `@prometheus-io/codemirror-promql`,
//! uPlot) by `npm run build`, which writes the bundle and its table ([`ASSETS`]) into
//! `crates/server/ui/`; both are committed, so `cargo build` needs no Node.js. A test rebuilds
//! the bundle from the sources and compares (`tests/ui.rs`).
//!
//! `index.html` is completed at serve time: the server puts the page's settings (the Jaeger
//! URL of `ui.jaegerURL`, the version) in a JSON script element, and a plain list of the API's
//! status links with the version, which is what a client or a person without JavaScript sees
//! (prometheus-api-client checks a server with `GET /`).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::AppState;
use crate::error::{ApiError, ApiResponse, ApiResult};
use crate::slow_queries::SlowQuery;

/// One bundled file.
pub(crate) struct Asset {
    /// Its path under `/assets/`, content hash included (so it may be cached for good).
    pub(crate) path: &'static str,
    pub(crate) content_type: &'static str,
    pub(crate) body: &'static [u8],
}

include!("../ui/assets.rs");

/// The single-page routes: each answers the page, which then shows the route's view.
pub(crate) const PAGE_ROUTES: [&str; 6] = ["/", "/graph", "/status", "/config", "/tsdb", "/slow"];

/// Where the server completes `index.html`.
const SLOT_HEAD: &str = "<!--m3query:head-->";
const SLOT_BODY: &str = "<!--m3query:body-->";

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

/// The API links listed on the page: (path, what it is).
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
        ("/api/v1/status/slow_queries", "slowest recent queries"),
        ("/api/v1/rules", "rules (none: m3query evaluates no rules)"),
        (metrics_path, "m3query's own metrics"),
        ("/health", "liveness"),
        ("/ready", "readiness (storage open)"),
    ]
}

/// The page's settings as JSON for a `<script type="application/json">` element: `<` is
/// escaped so no value can close the element.
fn settings_json(state: &AppState) -> String {
    let v = serde_json::json!({
        "jaegerURL": state.config.ui.jaeger_url,
        "version": state.build.version,
        "revision": state.build.revision,
        "metricsPath": state.config.metrics.prometheus.handler_path,
    });
    v.to_string().replace('<', "\\u003c")
}

/// `index.html` with the settings and the link list in their slots.
fn page(state: &AppState) -> String {
    let mut head = String::from("<script id=\"m3query-settings\" type=\"application/json\">");
    head.push_str(&settings_json(state));
    head.push_str("</script>");
    let b = &state.build;
    let mut body = String::with_capacity(2048);
    body.push_str(
        "<footer id=\"api-links\"><p>m3query: a Prometheus-compatible PromQL query server. ",
    );
    let _ = write!(
        body,
        "Version {} (revision {}). Point Grafana or any Prometheus client at this address: it \
         serves the Prometheus HTTP API under <code>/api/v1/</code>.</p><ul>",
        esc(&b.version),
        esc(&b.revision)
    );
    for (path, what) in links(&state.config.metrics.prometheus.handler_path) {
        let p = esc(path);
        let _ = write!(
            body,
            "<li><a href=\"{p}\"><code>{p}</code></a>: {}</li>",
            esc(what)
        );
    }
    body.push_str("</ul></footer>");
    INDEX_HTML
        .replacen(SLOT_HEAD, &head, 1)
        .replacen(SLOT_BODY, &body, 1)
}

/// `GET|HEAD /` and the other [`PAGE_ROUTES`].
pub(crate) async fn index(State(state): State<Arc<AppState>>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            // The page names the current bundle's files: always revalidated.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        page(&state),
    )
        .into_response()
}

/// `GET /assets/{file}`: bundled files, named by their content hash, so cached for a year.
pub(crate) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let Some(a) = ASSETS.iter().find(|a| a.path == file) else {
        return Err(ApiError::not_found(format!(
            "no such asset: /assets/{file}"
        )));
    };
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        a.body,
    )
        .into_response())
}

/// `GET /api/v1/status/slow_queries` (m3query's own): the slowest queries of the last hour,
/// slowest first (see [`crate::slow_queries`]).
pub(crate) async fn slow_queries(State(state): State<Arc<AppState>>) -> ApiResult<Vec<SlowQuery>> {
    Ok(ApiResponse::new(state.slow_queries.list()))
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

    #[test]
    fn the_bundle_has_its_slots_and_names_only_bundled_assets() {
        assert!(INDEX_HTML.contains(SLOT_HEAD) && INDEX_HTML.contains(SLOT_BODY));
        assert!(!ASSETS.is_empty());
        for a in ASSETS {
            assert!(
                INDEX_HTML.contains(&format!("/assets/{}", a.path)) || a.path.ends_with(".map"),
                "{} is bundled but index.html does not load it",
                a.path
            );
            assert!(!a.body.is_empty(), "{}", a.path);
        }
        // Every /assets/ reference in index.html is served.
        for part in INDEX_HTML.split("/assets/").skip(1) {
            let name = part.split(['"', '\'']).next().unwrap_or("");
            assert!(
                ASSETS.iter().any(|a| a.path == name),
                "missing asset {name}"
            );
        }
    }
}
