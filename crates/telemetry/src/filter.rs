//! Which spans reach the OpenTelemetry layer.
//!
//! A sampled request's root span does, and so does everything inside it. An unsampled
//! request's root is opened under [`UNSAMPLED_TARGET`] (the decision is made before the span
//! exists, see [`crate::http::RequestSpan`]), and this filter keeps it and its whole subtree
//! out of the layer, so an unsampled request pays for neither an OpenTelemetry span nor one
//! per query phase. Spans outside any request are left out too: nothing here is traced on its
//! own.

use tracing::Metadata;
use tracing::subscriber::Interest;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

/// The target and name of request root spans.
pub(crate) const REQUEST_TARGET: &str = "m3query::http";
/// The target of an unsampled request's root span (under `m3query::http`, so log filters
/// for that target still apply).
pub(crate) const UNSAMPLED_TARGET: &str = "m3query::http::unsampled";
pub(crate) const REQUEST_SPAN: &str = "http.request";

/// Which request root a span is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Root {
    Sampled,
    Unsampled,
}

/// `Some` when `meta` is a request's root span, sampled or not.
pub(crate) fn request_root(meta: &Metadata<'_>) -> Option<Root> {
    if !meta.is_span() || meta.name() != REQUEST_SPAN {
        return None;
    }
    match meta.target() {
        REQUEST_TARGET => Some(Root::Sampled),
        UNSAMPLED_TARGET => Some(Root::Unsampled),
        _ => None,
    }
}

/// Whether a span or event may be traced inside a request at all, whichever the request:
/// nothing the exporters do (no spans about exporting spans), no dependency's DEBUG spans
/// (hyper, h2), our own phases down to DEBUG.
pub(crate) fn traceable(meta: &Metadata<'_>) -> bool {
    if crate::export::queue::on_export_thread() {
        return false;
    }
    let ours = meta.target().starts_with("m3query");
    if !ours && *meta.level() > tracing::Level::INFO {
        return false;
    }
    *meta.level() <= tracing::Level::DEBUG
}

/// See the module docs.
pub(crate) struct SampledOnly;

impl<S> Filter<S> for SampledOnly
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        match request_root(meta) {
            Some(root) => return root == Root::Sampled,
            None if !traceable(meta) => return false,
            None => {}
        }
        match cx.lookup_current() {
            None => false,
            Some(current) => current
                .scope()
                .all(|s| s.metadata().target() != UNSAMPLED_TARGET),
        }
    }

    fn callsite_enabled(&self, _meta: &'static Metadata<'static>) -> Interest {
        // The answer depends on the current span, so ask every time.
        Interest::sometimes()
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::DEBUG)
    }
}
