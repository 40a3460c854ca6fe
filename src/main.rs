//! The `m3query` binary: command line and wiring only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use m3query_server::{BuildInfo, Config, MetricsRegistry, Server, Services};
use m3query_telemetry::Telemetry;

/// mimalloc instead of glibc's malloc. A query allocates and frees per-series chunk lists and
/// sample buffers by the ten thousand, often on another thread than the one that allocated
/// them; glibc spent about a quarter of a 10x instant query in its free-list coalescing
/// (`unlink_chunk`, `malloc_consolidate`) and page faults from its mmap threshold. With
/// mimalloc the 10x bench's heavy instant queries run 1.3-3x faster and ingest uses about 7%
/// less CPU, for a higher peak RSS while ingesting (63 -> about 105 MB at 1x).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Prometheus-compatible PromQL query server with distributed tracing.
#[derive(Parser, Debug)]
#[command(name = "m3query", version, about, long_about = None)]
struct Cli {
    /// Config file (YAML). Without it m3query runs with built-in defaults: embedded storage in
    /// ./data, listening on 0.0.0.0:7201.
    #[arg(short = 'f', long = "config", value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checks a config file and prints the effective config with secrets redacted.
    /// Exits 0 when valid, 2 when not.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
    /// Runs Prometheus's PromQL test scripts (the promqltest `.test` format) against the
    /// engine and in-memory storage; prints each failing eval, a breakdown by cause, and
    /// `N passed, M failed`. Exits 0 when every eval passed, 1 otherwise.
    Promqltest {
        /// `.test` files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only the primary query of each eval, without Prometheus's harness's extra checks
        /// (re-running instant evals with `@` and as range queries).
        #[arg(long)]
        lenient: bool,
        /// Print only the breakdown and the summary line.
        #[arg(long, short)]
        quiet: bool,
    },
}

fn build_info() -> BuildInfo {
    let epoch: i64 = env!("M3QUERY_BUILD_EPOCH").parse().unwrap_or(0);
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision: env!("M3QUERY_REVISION").to_string(),
        branch: env!("M3QUERY_BRANCH").to_string(),
        build_user: env!("M3QUERY_BUILD_USER").to_string(),
        build_date: m3query_model::time::format_rfc3339(epoch * 1000),
        go_version: env!("M3QUERY_RUST_VERSION").to_string(),
    }
}

/// Gives glibc's malloc a fixed mmap threshold (128 KiB, its default starting value) unless
/// the operator set `MALLOC_MMAP_THRESHOLD_`. By default the threshold is dynamic: once a
/// large buffer is freed it rises (up to 32 MiB), so later large query buffers come from the
/// heap, and a burst of dashboard queries leaves it fragmented and resident (measured on the
/// bench data: RSS 183 MiB after a range-query run with the default, 62 MiB with this).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; it is called before any other thread
        // exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Some(Command::CheckConfig { file }) => match Config::load(&file) {
            Ok(cfg) => {
                print!("{}", cfg.to_redacted_yaml());
                // As YAML comments, so the output stays the config it describes.
                let ignored = cfg.tracing.without_effect();
                if !ignored.is_empty() {
                    println!("# Accepted for compatibility, without effect in m3query:");
                    for (key, why) in ignored {
                        println!("#   {key}: {why}");
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("m3query: invalid config: {e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Promqltest {
            files,
            lenient,
            quiet,
        }) => {
            let opts = m3query_testkit::RunOptions {
                strict: !lenient,
                show_failures: !quiet,
            };
            let mut out = std::io::stdout().lock();
            match m3query_testkit::run_and_report(&files, &opts, &mut out) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("m3query: writing the report: {e}");
                    ExitCode::from(2)
                }
            }
        }
        None => {
            let cfg = match &cli.config {
                Some(path) => match Config::load(path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("m3query: invalid config: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::default(),
            };
            match run(cfg, flag_values(&matches)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Not through the log (and its URL masking): mask URL passwords here.
                    let msg = format!("{e:#}");
                    eprintln!("m3query: {}", m3query_model::redact::redact_urls(&msg));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The server's command line as Prometheus lists its flags on `/api/v1/status/flags`: every
/// option by long name, with the value given or else its default (`""` when it has none).
/// Read from clap's definition, so a new flag is listed without more code.
fn flag_values(matches: &clap::ArgMatches) -> BTreeMap<String, String> {
    let join = |vals: Vec<String>| vals.join(",");
    Cli::command()
        .get_arguments()
        .filter(|a| !a.is_positional() && !matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| {
            let id = a.get_id().as_str();
            let given = matches
                .try_get_raw(id)
                .ok()
                .flatten()
                .map(|vals| join(vals.map(|v| v.to_string_lossy().into_owned()).collect()));
            let value = given.unwrap_or_else(|| {
                join(
                    a.get_default_values()
                        .iter()
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect(),
                )
            });
            (a.get_long().unwrap_or(id).to_string(), value)
        })
        .collect()
}

fn run(cfg: Config, flags: BTreeMap<String, String>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("m3query")
        // Queries run on the server's request workers, which have stacks this deep. The
        // runtime's threads get them too, so an engine entry point reached on one runs inline
        // instead of starting a thread of its own (virtual memory: only the pages a depth
        // touches are resident).
        .thread_stack_size(m3query_promql::deep::RUNTIME_STACK_SIZE)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(cfg, flags))
}

async fn serve(cfg: Config, flags: BTreeMap<String, String>) -> anyhow::Result<()> {
    let telemetry = Telemetry::builder(cfg.tracing.clone(), cfg.logging.clone())
        .with_slow_threshold(cfg.middleware.logging.threshold.0)
        .build()
        .context("setting up logging and tracing")?;
    telemetry
        .install_global()
        .context("installing the log subscriber")?;

    let listener = tokio::net::TcpListener::bind(cfg.listen_address.0)
        .await
        .with_context(|| format!("listening on {:?} (listenAddress)", cfg.listen_address))?;
    let metrics_listener = match cfg.metrics.prometheus.listen_address {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr.0)
                .await
                .with_context(|| {
                    format!("listening on {addr:?} (metrics.prometheus.listenAddress)")
                })?,
        ),
        None => None,
    };
    let mut metrics = MetricsRegistry::new(&build_info());
    metrics.register_collector(telemetry.metrics_collector());
    let server = Server::new(
        cfg.clone(),
        build_info(),
        metrics,
        telemetry.propagation().clone(),
    );
    server.set_flags(flags);
    tracing::info!(
        listen = %cfg.listen_address.0,
        version = env!("CARGO_PKG_VERSION"),
        tracing_backend = ?cfg.tracing.effective_backend(),
        "m3query starting"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(l) = metrics_listener {
        let mut rx = stop_rx.clone();
        let metrics_server = server.serve_metrics(l, async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        tokio::spawn(async move {
            if let Err(e) = metrics_server.await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    // Serve at once: /health answers while the store replays its WAL, /ready once it is open.
    let state = server.state().clone();
    // The address really bound (a configured port 0 picks one), for the ready line.
    let bound = listener
        .local_addr()
        .map_or_else(|_| cfg.listen_address.0.to_string(), |a| a.to_string());
    let serving = tokio::spawn(server.serve(listener, async move {
        m3query_server::shutdown_signal().await;
        let _ = stop_tx.send(true);
    }));

    let db = if cfg.storage.enabled {
        let path = cfg.storage.path.clone();
        let opts = m3query_server::backends::tsdb_options(&cfg.storage);
        let started = std::time::Instant::now();
        let db = tokio::task::spawn_blocking(move || m3query_tsdb::Db::open(&path, opts))
            .await
            .context("opening storage")?
            .with_context(|| format!("opening storage in {}", cfg.storage.path.display()))?;
        tracing::info!(
            path = %cfg.storage.path.display(),
            seconds = started.elapsed().as_secs_f64(),
            "storage open"
        );
        Some(Arc::new(db))
    } else {
        None
    };
    let propagation = telemetry.propagation().clone();
    let queryable = m3query_server::backends::queryable(
        &cfg,
        db.clone().map(|d| d as Arc<dyn m3query_storage::Queryable>),
        tokio::runtime::Handle::current(),
        Arc::new(move || propagation.outbound_headers()),
    )
    .map_err(anyhow::Error::msg)
    .context("setting up storage")?;
    state.set_services(Services {
        queryable,
        appendable: db
            .clone()
            .map(|d| d as Arc<dyn m3query_storage::Appendable>),
        collector: db.clone().map(|d| {
            Box::new(m3query_server::tsdb_metrics::TsdbCollector(d))
                as Box<dyn prometheus_client::collector::Collector>
        }),
        tsdb: db.clone(),
    });
    tracing::info!(listen = %bound, "m3query ready: serving the Prometheus API");

    let result = serving
        .await
        .context("server task failed")?
        .context("serving HTTP");
    if let Some(db) = db {
        let closed = tokio::task::spawn_blocking(move || db.close()).await;
        match closed {
            Ok(Ok(())) => tracing::info!("storage closed"),
            Ok(Err(e)) => tracing::error!(error = %e, "closing storage failed"),
            Err(e) => tracing::error!(error = %e, "closing storage panicked"),
        }
    }
    telemetry.shutdown(std::time::Duration::from_secs(5));
    tracing::info!("m3query stopped");
    result
}
