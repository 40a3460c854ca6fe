//! m3query's HTTP server: the Prometheus API on axum.
//!
//! [`Server`] owns the router and the state handlers share. Handlers return
//! `Result<ApiResponse<T>, ApiError>` ([`error`]); one tower layer ([`layer`]) gives every
//! request its root span, metrics and slow-request log. The server starts listening before its
//! stores are open: `/health` answers at once, `/ready` and the data routes answer 503 until
//! [`Server::set_services`] is called.

pub mod admission;
pub mod api;
pub mod backends;
pub mod body;
mod compress;
pub mod config;
mod conn;
pub mod error;
pub mod layer;
pub mod metrics;
pub mod results_cache;
mod routes;
pub mod serve;
pub mod slow_queries;
pub mod stores;
pub mod tsdb_metrics;
mod ui;
mod workers;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use m3query_storage::{Appendable, Queryable};
use m3query_telemetry::Propagation;
use prometheus_client::collector::Collector;
use tokio::net::TcpListener;

pub use config::Config;
pub use error::{ApiError, ApiResponse, ErrorType};
pub use metrics::{BuildInfo, FrozenMetrics, MetricsRegistry};

/// The stores and engines behind the data routes, available once opened.
pub struct Services {
    /// Where reads go: the local store, remote stores, or the fan-out over them.
    pub queryable: Arc<dyn Queryable>,
    /// Where remote write goes; `None` when local storage is disabled.
    pub appendable: Option<Arc<dyn Appendable>>,
    /// Exports the stores' own metrics at scrape time.
    pub collector: Option<Box<dyn Collector>>,
    /// The embedded store, for `/api/v1/status/tsdb` and `runtimeinfo`; `None` when local
    /// storage is off.
    pub tsdb: Option<Arc<m3query_tsdb::Db>>,
}

/// What handlers share.
pub struct AppState {
    /// The loaded config.
    pub config: Config,
    /// Version and build details, for `/api/v1/status/buildinfo` and `/metrics`.
    pub build: BuildInfo,
    metrics: OnceLock<Arc<FrozenMetrics>>,
    services: OnceLock<Services>,
    /// Metric metadata received through remote write.
    pub metadata: stores::MetadataStore,
    /// Exemplars received through remote write.
    pub exemplars: stores::ExemplarStore,
    /// Remote-write counters.
    pub remote_metrics: metrics::RemoteWriteMetrics,
    /// Remote-read requests served at once (each may hold many series in memory), and
    /// how many may wait.
    pub read_gate: admission::Gate,
    /// Queries evaluated at once (`query.maxConcurrent`), and how many may wait.
    pub query_gate: admission::Gate,
    /// Remote-write bodies decoded at once (`http.remoteWriteConcurrency`).
    pub write_gate: admission::Gate,
    /// The PromQL engine, configured from `query:` and `lookbackDuration`.
    pub engine: Arc<m3query_promql::Engine>,
    /// Range query results kept for dashboards (`query.resultsCache`); `None` when off.
    pub results_cache: Option<Arc<results_cache::ResultsCache>>,
    /// When the server was assembled (just after the config was loaded): `runtimeinfo`'s
    /// `startTime` and `lastConfigTime`.
    pub started: SystemTime,
    /// The command line, flag name -> value, for `/api/v1/status/flags`.
    flags: OnceLock<BTreeMap<String, String>>,
    /// The slowest recent queries, for the query page (`/api/v1/status/slow_queries`).
    pub slow_queries: Arc<slow_queries::SlowQueries>,
}

impl AppState {
    /// The stores, or 503 while they are still opening.
    pub fn services(&self) -> Result<&Services, ApiError> {
        self.services
            .get()
            .ok_or_else(|| ApiError::unavailable("storage is starting up; try again shortly"))
    }

    /// Whether the stores are open (`/-/ready`).
    pub fn is_ready(&self) -> bool {
        self.services.get().is_some()
    }

    /// The stores if they are open yet.
    pub fn services_if_ready(&self) -> Option<&Services> {
        self.services.get()
    }

    /// See [`Server::set_flags`]; empty until set.
    pub fn flags(&self) -> BTreeMap<String, String> {
        self.flags.get().cloned().unwrap_or_default()
    }

    /// See [`Server::set_services`].
    pub fn set_services(&self, services: Services) {
        if self.services.set(services).is_err() {
            tracing::warn!("services were already set; ignoring the second set");
        }
    }
}

/// Forwards scrapes to the stores' collector once it exists.
#[derive(Debug)]
struct LateCollector(Arc<AppState>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Collector for LateCollector {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        match self.0.services.get().and_then(|s| s.collector.as_ref()) {
            Some(c) => c.encode(encoder),
            None => Ok(()),
        }
    }
}

/// The HTTP server.
pub struct Server {
    state: Arc<AppState>,
    router: Router,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("state", &self.state)
            .finish()
    }
}

impl Server {
    /// Assembles the router. `metrics` may already hold other crates' metrics; the server
    /// adds its own and freezes it.
    pub fn new(
        config: Config,
        build: BuildInfo,
        mut metrics: MetricsRegistry,
        propagation: Propagation,
    ) -> Server {
        let config_for_engine = config.clone();
        let remote_metrics = metrics::RemoteWriteMetrics::default();
        remote_metrics.register(&mut metrics);
        let admission_metrics = admission::AdmissionMetrics::default();
        admission_metrics.register(&mut metrics);
        let results_cache = config.query.results_cache.enabled.then(|| {
            let m = results_cache::CacheMetrics::default();
            m.register(&mut metrics);
            Arc::new(results_cache::ResultsCache::new(
                results_cache::Settings::from_config(&config.query.results_cache),
                m,
            ))
        });
        let state = Arc::new(AppState {
            read_gate: admission::Gate::new(
                admission::GateSpec {
                    pool: "remote_read",
                    what: "remote reads",
                    limit_key: "http.remoteReadConcurrency",
                    queue_key: "http.remoteReadQueue",
                },
                config.http.remote_read_concurrency,
                config.http.remote_read_queue,
                admission_metrics.clone(),
            ),
            query_gate: admission::Gate::new(
                admission::GateSpec {
                    pool: "query",
                    what: "queries",
                    limit_key: "query.maxConcurrent",
                    queue_key: "query.maxQueued",
                },
                config.query_max_concurrent(),
                config.query.max_queued,
                admission_metrics.clone(),
            ),
            write_gate: admission::Gate::new(
                admission::GateSpec {
                    pool: "remote_write",
                    what: "remote writes",
                    limit_key: "http.remoteWriteConcurrency",
                    queue_key: "http.remoteWriteQueue",
                },
                config.http.remote_write_concurrency,
                config.http.remote_write_queue,
                admission_metrics,
            ),
            config,
            build,
            started: SystemTime::now(),
            flags: OnceLock::new(),
            slow_queries: Arc::new(slow_queries::SlowQueries::new()),
            metrics: OnceLock::new(),
            services: OnceLock::new(),
            metadata: stores::MetadataStore::new(100_000),
            exemplars: stores::ExemplarStore::new(100_000),
            remote_metrics,
            results_cache,
            engine: Arc::new(m3query_promql::Engine::new(engine_options(
                &config_for_engine,
            ))),
        });
        metrics.register_collector(Box::new(LateCollector(state.clone())));
        let http = metrics.http();
        // Set exactly once, here, before the state is shared with any handler.
        let _ = state.metrics.set(metrics.freeze());
        let router = routes::router(state.clone(), propagation, http);
        Server { state, router }
    }

    /// The router, for in-process tests (`tower::ServiceExt::oneshot`).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The shared state, for tests and the binary.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Makes the data routes available and `/ready` answer 200. Later calls are ignored.
    pub fn set_services(&self, services: Services) {
        self.state.set_services(services);
    }

    /// The command line m3query was started with (flag name -> value, as Prometheus lists
    /// its flags), for `/api/v1/status/flags`. Later calls are ignored.
    pub fn set_flags(&self, flags: BTreeMap<String, String>) {
        if self.state.flags.set(flags).is_err() {
            tracing::warn!("flags were already set; ignoring the second set");
        }
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish for at most
    /// `http.shutdownTimeout`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let limits = conn_limits(&self.state.config);
        serve::serve(listener, self.router.clone(), limits, shutdown).await
    }

    /// Serves only the metrics route on a second listener (`metrics.prometheus.listenAddress`).
    pub fn serve_metrics(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        let router = routes::metrics_router(self.state.clone());
        let limits = conn_limits(&self.state.config);
        serve::serve(listener, router, limits, shutdown)
    }
}

fn conn_limits(cfg: &Config) -> serve::ConnLimits {
    serve::ConnLimits {
        header_read_timeout: cfg.http.header_read_timeout.0,
        max_connections: cfg.http.max_connections,
        grace: cfg.http.shutdown_timeout.0,
    }
}

/// Engine settings from the config.
pub fn engine_options(cfg: &Config) -> m3query_promql::EngineOptions {
    m3query_promql::EngineOptions {
        lookback_delta_ms: cfg.lookback_duration.as_millis_i64(),
        max_samples: usize::try_from(cfg.query.prometheus.max_samples_per_query)
            .unwrap_or(usize::MAX),
        enable_experimental_functions: cfg.query.experimental_functions,
        ..m3query_promql::EngineOptions::default()
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        _ = term => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// A duration for logs.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}
