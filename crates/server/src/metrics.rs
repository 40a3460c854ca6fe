//! m3query's own metrics, served in Prometheus text format.
//!
//! Built on `prometheus-client`. Other crates contribute through [`MetricsRegistry::register`]
//! and [`MetricsRegistry::register_collector`] while the server is assembled; after that the
//! registry is frozen and only encoded.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of what [`FrozenMetrics::encode`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels of `m3query_http_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template (`/api/v1/label/{name}/values`), not the path: bounded cardinality.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// The status code.
    pub code: String,
}

/// Labels of `m3query_http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template.
    pub route: String,
    /// The HTTP method.
    pub method: String,
}

/// Request counters and latency histograms, updated by the request layer.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    /// `m3query_http_requests`.
    pub requests: Family<RequestLabels, Counter>,
    /// `m3query_http_request_duration_seconds`.
    pub duration: Family<RouteLabels, Histogram>,
}

impl HttpMetrics {
    fn new() -> Self {
        HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                // 1ms .. ~65s: instant queries to the slowest range queries.
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.001, 2.0, 17,
                ))
            }),
        }
    }

    /// Counts one request and its latency.
    pub fn observe(&self, route: &str, method: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method: method.to_string(),
            })
            .observe(seconds);
    }
}

/// The registry while the server is assembled.
pub struct MetricsRegistry {
    registry: Registry,
    http: HttpMetrics,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsRegistry")
    }
}

/// Build facts exported as `m3query_build_info`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BuildInfo {
    /// The release version.
    pub version: String,
    /// The git commit.
    pub revision: String,
    /// The git branch.
    pub branch: String,
    /// Who built it.
    #[serde(rename = "buildUser")]
    pub build_user: String,
    /// When it was built.
    #[serde(rename = "buildDate")]
    pub build_date: String,
    /// Prometheus reports its Go version here; we report the Rust compiler's.
    #[serde(rename = "goVersion")]
    pub go_version: String,
}

impl MetricsRegistry {
    /// A registry with the HTTP metrics and the process collector (uptime, CPU, memory, build info).
    pub fn new(build: &BuildInfo) -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::new();
        registry.register(
            "m3query_http_requests",
            "HTTP requests by route template, method and status code",
            http.requests.clone(),
        );
        registry.register(
            "m3query_http_request_duration_seconds",
            "HTTP request latency by route template and method, until the body is sent",
            http.duration.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector {
            started: Instant::now(),
            start_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            build: build.clone(),
        }));
        MetricsRegistry { registry, http }
    }

    /// The HTTP metrics, for the request layer.
    pub fn http(&self) -> HttpMetrics {
        self.http.clone()
    }

    /// Registers a metric (counter, gauge, histogram, family) under `name`.
    pub fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.register(name, help, metric);
    }

    /// Registers a collector that reads its values at scrape time.
    pub fn register_collector(&mut self, c: Box<dyn Collector>) {
        self.registry.register_collector(c);
    }

    /// Ends registration: the server only encodes from here on.
    pub fn freeze(self) -> Arc<FrozenMetrics> {
        Arc::new(FrozenMetrics {
            registry: self.registry,
        })
    }
}

/// The registry once the server runs: encode only.
pub struct FrozenMetrics {
    registry: Registry,
}

impl std::fmt::Debug for FrozenMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrozenMetrics")
    }
}

impl FrozenMetrics {
    /// The metrics in Prometheus's text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Process facts read at scrape time from `/proc/self`.
#[derive(Debug)]
struct ProcessCollector {
    started: Instant,
    start_time: f64,
    build: BuildInfo,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
    branch: String,
    rustversion: String,
}

/// (rss bytes, virtual bytes, cpu seconds) of this process, where `/proc` has them.
fn proc_stats() -> Option<(u64, u64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // 0-based after ')': state=0, utime=11, stime=12, vsize=20, rss=21 (pages).
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let vsize: u64 = f.get(20)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let (page, ticks) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    let page = u64::try_from(page).ok().filter(|p| *p > 0)?;
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((rss_pages * page, vsize, (utime + stime) / ticks))
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((rss, vsize, cpu)) = proc_stats() {
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                rss as f64,
            )?;
            gauge(
                &mut enc,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                vsize as f64,
            )?;
            let c = ConstCounter::new(cpu);
            let m = enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors",
                fds.count() as f64,
            )?;
        }
        gauge(
            &mut enc,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            self.start_time,
        )?;
        gauge(
            &mut enc,
            "m3query_uptime_seconds",
            "Seconds since the process started",
            self.started.elapsed().as_secs_f64(),
        )?;
        let info = Family::<BuildLabels, prometheus_client::metrics::gauge::Gauge>::default();
        info.get_or_create(&BuildLabels {
            version: self.build.version.clone(),
            revision: self.build.revision.clone(),
            branch: self.build.branch.clone(),
            rustversion: self.build.go_version.clone(),
        })
        .set(1);
        let m = enc.encode_descriptor(
            "m3query_build_info",
            "Build facts; value 1",
            None,
            info.metric_type(),
        )?;
        info.encode(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_http_and_process_metrics() {
        let r = MetricsRegistry::new(&BuildInfo {
            version: "1.2.3".into(),
            ..Default::default()
        });
        r.http().observe("/health", "GET", 200, 0.002);
        r.http().observe("/health", "GET", 200, 0.004);
        let text = r.freeze().encode().expect("encode");
        assert!(
            text.contains(
                r#"m3query_http_requests_total{route="/health",method="GET",code="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains("m3query_http_request_duration_seconds_bucket"));
        assert!(text.contains("process_resident_memory_bytes "));
        assert!(text.contains("m3query_uptime_seconds "));
        assert!(text.contains(r#"version="1.2.3""#));
    }
}

/// The `result` label of the remote-write counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// What became of the item (`written`, `out_of_order`, ...).
    pub result: &'static str,
}

/// Remote write figures: what was received and what became of it.
#[derive(Clone, Debug, Default)]
pub struct RemoteWriteMetrics {
    /// `m3query_remote_write_samples`, by result.
    pub samples: Family<ResultLabels, Counter>,
    /// `m3query_remote_write_exemplars`, by result.
    pub exemplars: Family<ResultLabels, Counter>,
    /// `m3query_remote_write_histograms`, by result.
    pub histograms: Family<ResultLabels, Counter>,
}

impl RemoteWriteMetrics {
    /// Registers the counters.
    pub fn register(&self, r: &mut MetricsRegistry) {
        r.register(
            "m3query_remote_write_samples",
            "Remote-write samples by result: written, out_of_order, too_old, too_far_in_future, duplicate, invalid_labels",
            self.samples.clone(),
        );
        r.register(
            "m3query_remote_write_exemplars",
            "Remote-write exemplars by result: stored, skipped (duplicate or older than the series' newest)",
            self.exemplars.clone(),
        );
        r.register(
            "m3query_remote_write_histograms",
            "Remote-write native histogram samples by result: written, invalid (failed Prometheus's histogram validation), refused (the store holds no histograms); those refused as out of order or too old count with the samples",
            self.histograms.clone(),
        );
    }

    /// Counts one request's outcome; `exemplars_received` is how many the request carried.
    pub fn record(&self, o: &m3query_remote::write::Outcome, exemplars_received: u64) {
        for (result, n) in [
            ("written", o.samples_written),
            ("out_of_order", o.out_of_order),
            ("too_old", o.too_old),
            ("too_far_in_future", o.too_far_in_future),
            ("duplicate", o.duplicate),
            ("invalid_labels", o.invalid_series_samples),
        ] {
            if n > 0 {
                self.samples
                    .get_or_create(&ResultLabels { result })
                    .inc_by(n);
            }
        }
        if o.exemplars_written > 0 {
            self.exemplars
                .get_or_create(&ResultLabels { result: "stored" })
                .inc_by(o.exemplars_written);
        }
        let skipped = exemplars_received.saturating_sub(o.exemplars_written);
        if skipped > 0 {
            self.exemplars
                .get_or_create(&ResultLabels { result: "skipped" })
                .inc_by(skipped);
        }
        for (result, n) in [
            ("written", o.histograms_written),
            ("invalid", o.histograms_invalid),
            ("refused", o.histograms_refused),
        ] {
            if n > 0 {
                self.histograms
                    .get_or_create(&ResultLabels { result })
                    .inc_by(n);
            }
        }
    }
}
