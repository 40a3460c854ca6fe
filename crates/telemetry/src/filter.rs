//! Which spans reach the OpenTelemetry layer.
//!
//! A request's root span always does (that is where the sampling decision is made). Any other
//! span or event does only inside a sampled request: [`crate::http::RequestSpan`] marks an
//! unsampled root with [`Unsampled`], and this filter keeps that root's whole subtree out of
//! the layer, so an unsampled request pays for its root span alone, not for building and
//! discarding an OpenTelemetry span per query phase. Spans outside any request are left out
//! too: nothing here is traced on its own.

use tracing::Metadata;
use tracing::subscriber::Interest;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

/// Extension on an unsampled request span.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unsampled;

/// The target and name of request root spans.
pub(crate) const REQUEST_TARGET: &str = "m3query::http";
pub(crate) const REQUEST_SPAN: &str = "http.request";

/// See the module docs.
pub(crate) struct SampledOnly;

impl<S> Filter<S> for SampledOnly
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        // Nothing the exporters do is traced (no spans about exporting spans).
        if crate::export::queue::on_export_thread() {
            return false;
        }
        if meta.is_span() && meta.target() == REQUEST_TARGET && meta.name() == REQUEST_SPAN {
            return true;
        }
        // Dependencies' spans (hyper, h2) stay out; our own phases may be DEBUG.
        let ours = meta.target().starts_with("m3query");
        if !ours && *meta.level() > tracing::Level::INFO {
            return false;
        }
        if *meta.level() > tracing::Level::DEBUG {
            return false;
        }
        match cx.lookup_current() {
            None => false,
            Some(current) => current
                .scope()
                .all(|s| s.extensions().get::<Unsampled>().is_none()),
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
