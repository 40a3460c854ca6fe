//! What tracing costs a request, in-process, for two requests: `GET /api/v1/status/buildinfo`
//! (our cheapest handler, so the ratio is the worst case) and a dashboard-style instant query
//! (`sum by (job) (rate(..[5m]))` over 200 series), each with tracing off, on but unsampled
//! (Jaeger, `const` 0) without and with tail capture (which records an unsampled request's
//! phases in case it ends slow or failed), and on with every request sampled (Jaeger,
//! `const` 1) and exported over UDP to a local socket that a thread drains.
//!
//!     cargo bench -p m3query-server --bench tracing_overhead
//!
//! A small harness rather than criterion (`rounds/mod.rs`, shared with
//! `benches/tracing_http.rs`, which measures the same over loopback HTTP against the real
//! binary): interleaved rounds, medians and ratios against tracing off. The CPU column is
//! the request thread's only: the exporter's own thread is not in it (the loopback bench
//! counts the whole process). `M3Q_BENCH_ROUNDS` (default 30) and `M3Q_BENCH_REQUESTS` (per
//! round and set-up, default 20000) tune it. The export counters are printed so a run where
//! the exporter fell behind (drops) shows.
//!
//! Goals: unsampled <= 1.01x off (issue 6), also with tail capture recording (issue 14);
//! sampled <= 1.03x off.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use m3query_server::{BuildInfo, Config, MetricsRegistry, Server, Services};
use m3query_storage::memory::MemStorage;
use m3query_telemetry::config::{Backend, HostPort, JaegerConfig, SamplerType};
use m3query_telemetry::{LoggingConfig, Telemetry, TracingConfig};
use tower::ServiceExt;

mod rounds;

fn telemetry(sampled: Option<bool>, tail: bool, agent: &str) -> Telemetry {
    let tracing = match sampled {
        None => TracingConfig::default(),
        Some(on) => {
            let mut j = JaegerConfig::default();
            j.sampler.sampler_type = SamplerType::Const;
            j.sampler.param = if on { 1.0 } else { 0.0 };
            j.reporter.local_agent_host_port = HostPort(agent.to_string());
            j.reporter.queue_size = 2000;
            let mut t = TracingConfig {
                backend: Backend::Jaeger,
                jaeger: Some(j),
                ..TracingConfig::default()
            };
            t.tail_capture.enabled = tail;
            t
        }
    };
    Telemetry::builder(tracing, LoggingConfig::default())
        .with_log_writer(m3query_telemetry::LogWriter::new(std::io::sink))
        .build()
        .expect("telemetry")
}

/// 200 counters over 1h at 15s, in 4 jobs.
fn store() -> Arc<MemStorage> {
    use m3query_storage::Appendable;
    let store = Arc::new(MemStorage::new());
    let mut app = store.appender();
    for i in 0..200 {
        let l = m3query_model::Labels::from_pairs([
            ("__name__", "http_requests_total".to_string()),
            ("job", format!("job-{}", i % 4)),
            ("instance", format!("host-{i}")),
        ]);
        for t in 0..240 {
            app.append(&l, t * 15_000, (t * (i + 1)) as f64)
                .expect("append");
        }
    }
    app.commit().expect("commit");
    store
}

fn router(t: &Telemetry, store: &Arc<MemStorage>) -> axum::Router {
    let server = Server::new(
        Config::default(),
        BuildInfo::default(),
        MetricsRegistry::new(&BuildInfo::default()),
        t.propagation().clone(),
    );
    let store = store.clone();
    server.set_services(Services {
        queryable: store.clone(),
        appendable: Some(store),
        collector: None,
        tsdb: None,
    });
    server.router()
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run one short
    // round then, as a smoke test.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rounds = if smoke {
        1
    } else {
        rounds::env("M3Q_BENCH_ROUNDS", 30)
    };
    let n = if smoke {
        100
    } else {
        rounds::env("M3Q_BENCH_REQUESTS", 20_000)
    };

    let agent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let agent_addr = agent.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while agent.recv(&mut buf).is_ok() {}
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let setups: Vec<(&str, Telemetry)> = [
        ("tracing off", None, false),
        ("unsampled, no tail capture", Some(false), false),
        ("unsampled, tail capture", Some(false), true),
        ("on, sampled", Some(true), true),
    ]
    .into_iter()
    .enumerate()
    // `M3Q_BENCH_SETUPS=1,2` runs only those set-ups (0-based), e.g. under `perf stat` to
    // count one set-up's instructions, which CPU noise does not change.
    .filter(|(i, _)| {
        std::env::var("M3Q_BENCH_SETUPS")
            .map_or(true, |v| v.split(',').any(|x| x.trim() == i.to_string()))
    })
    .map(|(_, (name, s, tail))| (name, telemetry(s, tail, &agent_addr)))
    .collect();
    let data = store();
    let routers: Vec<axum::Router> = setups.iter().map(|(_, t)| router(t, &data)).collect();
    for (path, n) in [
        ("/api/v1/status/buildinfo", n),
        (
            "/api/v1/query?query=sum%20by%20(job)%20(rate(http_requests_total%5B5m%5D))&time=3600",
            (n / 50).max(20),
        ),
    ] {
        measure(&rt, &setups, &routers, path, rounds, n);
    }
    for (name, t) in &setups {
        t.shutdown(Duration::from_secs(5));
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(t.metrics_collector());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("m3query_tracing_spans") && !l.ends_with(" 0"))
            .collect();
        if !lines.is_empty() {
            println!("{name}: {}", lines.join(", "));
        }
    }
}

fn measure(
    rt: &tokio::runtime::Runtime,
    setups: &[(&str, Telemetry)],
    routers: &[axum::Router],
    path: &str,
    rounds: usize,
    n: usize,
) {
    let request = || Request::get(path).body(Body::empty()).expect("request");
    let names: Vec<&str> = setups.iter().map(|(name, _)| *name).collect();
    let title = format!("{rounds} rounds x {n} requests per set-up, GET {path} in-process");
    rounds::run_and_report(&title, &names, "cpu med us", rounds, |i| {
        let _guard = tracing::dispatcher::set_default(setups[i].1.dispatch());
        let (t0, c0) = (Instant::now(), thread_cpu());
        for _ in 0..n {
            rt.block_on(async {
                let resp = routers[i]
                    .clone()
                    .oneshot(request())
                    .await
                    .expect("infallible");
                assert!(resp.status().is_success(), "{path}: {}", resp.status());
                // The request span ends once the body is sent.
                resp.into_body().collect().await.expect("body")
            });
        }
        (
            t0.elapsed().as_secs_f64() * 1e6 / n as f64,
            (thread_cpu() - c0).as_secs_f64() * 1e6 / n as f64,
        )
    });
}
