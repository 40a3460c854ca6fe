//! The docker-compose stack and the container image, checked without a container engine.
//!
//! Nothing here runs Docker (CI machines have none). Instead: `docker-compose config` validates
//! the compose file when docker-compose is installed (`.ci/run` installs Debian's), and in all
//! cases the files are parsed and checked against each other: every mounted file exists, the
//! host names and ports in each config are the compose services and the ports they listen on,
//! the Dockerfile's paths are the ones compose mounts, Prometheus's config passes `promtool`
//! and works against the real m3query, and the Grafana dashboard's queries parse and name
//! metrics m3query really exports.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{M3Query, Prometheus, client, eventually, remote_write_v1};
use m3query_promql::parser::Expr;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A `volumes:` entry in compose's short syntax, `SOURCE:TARGET[:MODE]`.
#[derive(Debug)]
struct Mount {
    source: String,
    target: String,
}

impl Mount {
    fn is_bind(&self) -> bool {
        self.source.starts_with("./") || self.source.starts_with('/')
    }
}

fn mounts(svc: &Value) -> Vec<Mount> {
    strings(&svc["volumes"])
        .into_iter()
        .map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            assert!(
                (2..=3).contains(&parts.len()),
                "volume {v:?}: SOURCE:TARGET[:MODE]"
            );
            Mount {
                source: parts[0].to_string(),
                target: parts[1].to_string(),
            }
        })
        .collect()
}

/// Where a repository file or directory is mounted in the service's container.
fn mount_target(svc: &Value, host: &str) -> String {
    mounts(svc)
        .into_iter()
        .find(|m| m.source == host)
        .map(|m| m.target)
        .unwrap_or_else(|| panic!("{host} is not mounted: {:?}", mounts(svc)))
}

/// Container ports a service publishes, as `PORT/PROTO`, from `[IP:]HOST:CONTAINER[/PROTO]`.
fn published(svc: &Value) -> BTreeSet<String> {
    strings(&svc["ports"])
        .into_iter()
        .map(|p| {
            let (spec, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
            let container = spec.rsplit(':').next().expect("port");
            let host = spec.split(':').rev().nth(1).expect("HOST:CONTAINER");
            assert_eq!(host, container, "{p}: host and container ports differ");
            format!("{container}/{proto}")
        })
        .collect()
}

/// The value of `--flag VALUE` or `--flag=VALUE` in a command list.
fn flag(cmd: &[String], name: &str) -> Option<String> {
    cmd.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            cmd.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{name}=")).map(str::to_string)
        }
    })
}

/// The port of `host:port`, `[v6]:port` or a URL's authority.
fn port_of(addr: &str) -> u16 {
    let authority = addr
        .split("://")
        .last()
        .expect("address")
        .split('/')
        .next()
        .expect("authority");
    authority
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

#[test]
fn docker_compose_config_validates() {
    // Debian's docker-compose (1.29) when present (.ci/run installs it); the Compose v2 plugin
    // too when a machine has it. The structural checks below run either way.
    let mut ran = 0;
    for argv in [&["docker-compose"][..], &["docker", "compose"][..]] {
        let probe = Command::new(argv[0])
            .args(&argv[1..])
            .arg("version")
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            continue;
        }
        let out = Command::new(argv[0])
            .args(&argv[1..])
            .args(["-f", "docker-compose.yml", "config", "-q"])
            .current_dir(root())
            .env("GRAFANA_ADMIN_PASSWORD", "x")
            .output()
            .expect("run compose");
        assert!(
            out.status.success(),
            "{argv:?} config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    if ran == 0 {
        eprintln!(
            "note: neither docker-compose nor `docker compose` is installed; only the structural checks ran"
        );
    }
}

#[test]
fn services_images_and_mounted_files() {
    let c = compose();
    let names: BTreeSet<&str> = c["services"]
        .as_object()
        .expect("services")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["grafana", "jaeger", "m3query", "prometheus"])
    );
    let declared: BTreeSet<String> = c["volumes"]
        .as_object()
        .expect("top-level volumes")
        .keys()
        .cloned()
        .collect();
    for (name, svc) in c["services"].as_object().expect("services") {
        // Pinned: an explicit version tag, never latest; m3query is built here.
        let image = svc["image"].as_str().expect("image");
        if name == "m3query" {
            assert_eq!(svc["build"]["context"], ".");
            assert!(
                root()
                    .join(svc["build"]["dockerfile"].as_str().expect("dockerfile"))
                    .is_file()
            );
        } else {
            let tag = image
                .split('@')
                .next()
                .and_then(|i| i.rsplit_once(':'))
                .map(|(_, t)| t)
                .unwrap_or_else(|| panic!("{name}: image {image} has no tag"));
            assert!(
                tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
                "{name}: image {image} is not pinned to a version"
            );
            let pinned = image.split('@').next().expect("name:tag");
            assert!(
                read("README.md").contains(&format!("`{pinned}`")),
                "README does not name {pinned}"
            );
        }
        for m in mounts(svc) {
            if m.is_bind() {
                assert!(
                    m.source.starts_with("./"),
                    "{name}: mount repository files by relative path: {m:?}"
                );
                assert!(
                    root().join(&m.source).exists(),
                    "{name}: mounted {} does not exist",
                    m.source
                );
            } else {
                assert!(
                    declared.contains(&m.source),
                    "{name}: volume {} is not declared",
                    m.source
                );
            }
        }
    }
}

#[test]
fn m3query_service_matches_its_config_and_image() {
    let c = compose();
    let svc = service(&c, "m3query");
    let cmd = strings(&svc["command"]);
    let config_path = flag(&cmd, "--config").expect("--config");
    assert_eq!(mount_target(svc, "./config/compose.yml"), config_path);

    // The effective config, as m3query itself reads it.
    let out = Command::new(common::bin())
        .arg("check-config")
        .arg(root().join("config/compose.yml"))
        .output()
        .expect("check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("yaml");
    let jaeger = &cfg["tracing"]["jaeger"];
    assert_eq!(cfg["tracing"]["backend"], "jaeger");
    assert_eq!(cfg["tracing"]["serviceName"], "m3query");
    assert_eq!(jaeger["reporter"]["localAgentHostPort"], "jaeger:6831");
    assert_eq!(jaeger["sampler"]["type"], "remote");
    assert_eq!(
        jaeger["sampler"]["samplingServerURL"],
        "http://jaeger:5778/sampling"
    );
    let listen = cfg["listenAddress"].as_str().expect("listenAddress");
    assert!(
        listen.starts_with("0.0.0.0:"),
        "{listen}: reachable from other containers"
    );
    let port = port_of(listen);
    assert!(published(svc).contains(&format!("{port}/tcp")));

    // Data lands in the named volume at the image's data directory.
    let data = mounts(svc)
        .into_iter()
        .find(|m| !m.is_bind())
        .expect("a data volume");
    let dockerfile = Dockerfile::read().runtime();
    assert_eq!(dockerfile.one("VOLUME"), format!("[\"{}\"]", data.target));
    let storage = cfg["storage"]["path"].as_str().expect("storage.path");
    assert!(
        storage.starts_with(&format!("{}/", data.target)),
        "storage.path {storage} is outside the volume {}",
        data.target
    );
    // Compose runs the image's own command line.
    assert_eq!(dockerfile.exec_form("CMD"), cmd);
    assert_eq!(dockerfile.one("EXPOSE"), port.to_string());
}

#[test]
fn jaeger_service_matches_its_config() {
    let c = compose();
    let svc = service(&c, "jaeger");
    let image = svc["image"].as_str().expect("image");
    assert!(
        image.starts_with("jaegertracing/jaeger:2."),
        "Jaeger v2 (v1 reached end of life at the end of 2025): {image}"
    );
    for p in ["6831/udp", "5778/tcp", "4317/tcp", "4318/tcp", "16686/tcp"] {
        assert!(published(svc).contains(p), "jaeger does not publish {p}");
    }
    let cmd = strings(&svc["command"]);
    let config_path = flag(&cmd, "--config").expect("--config");
    assert_eq!(
        mount_target(svc, "./config/jaeger/config.yaml"),
        config_path
    );

    let j = yaml("config/jaeger/config.yaml");
    // Each port m3query's compose config uses is what the matching receiver listens on.
    let endpoint = |v: &Value| port_of(v["endpoint"].as_str().expect("endpoint"));
    let jaeger_rx = &j["receivers"]["jaeger"]["protocols"];
    assert_eq!(endpoint(&jaeger_rx["thrift_compact"]), 6831);
    assert_eq!(endpoint(&j["extensions"]["remote_sampling"]["http"]), 5778);
    assert_eq!(endpoint(&j["receivers"]["otlp"]["protocols"]["grpc"]), 4317);
    assert_eq!(endpoint(&j["receivers"]["otlp"]["protocols"]["http"]), 4318);
    assert_eq!(endpoint(&j["extensions"]["jaeger_query"]["http"]), 16686);
    for rx in [
        &jaeger_rx["thrift_compact"],
        &j["extensions"]["remote_sampling"]["http"],
        &j["extensions"]["jaeger_query"]["http"],
    ] {
        let e = rx["endpoint"].as_str().expect("endpoint");
        assert!(
            e.starts_with("0.0.0.0:"),
            "{e}: reachable from other containers"
        );
    }

    // The strategies file is mounted where remote_sampling reads it.
    let file = &j["extensions"]["remote_sampling"]["file"];
    assert_eq!(
        mount_target(svc, "./config/sampling-strategies.json"),
        file["path"].as_str().expect("remote_sampling.file.path")
    );
    assert!(
        j["extensions"]["remote_sampling"].get("adaptive").is_none(),
        "file and adaptive strategies exclude each other"
    );

    // The collector wiring is complete: every component a pipeline or the service names is
    // configured, and every configured one is used.
    let svc_cfg = &j["service"];
    let used_ext: BTreeSet<String> = strings(&svc_cfg["extensions"]).into_iter().collect();
    let defined_ext: BTreeSet<String> = j["extensions"]
        .as_object()
        .expect("extensions")
        .keys()
        .cloned()
        .collect();
    assert_eq!(used_ext, defined_ext);
    let pipeline = &svc_cfg["pipelines"]["traces"];
    for kind in ["receivers", "processors", "exporters"] {
        let used: BTreeSet<String> = strings(&pipeline[kind]).into_iter().collect();
        let defined: BTreeSet<String> = j[kind]
            .as_object()
            .unwrap_or_else(|| panic!("{kind}"))
            .keys()
            .cloned()
            .collect();
        assert_eq!(used, defined, "{kind}");
    }
    let backends = &j["extensions"]["jaeger_storage"]["backends"];
    let store = j["exporters"]["jaeger_storage_exporter"]["trace_storage"]
        .as_str()
        .expect("trace_storage");
    assert!(backends[store]["memory"].is_object(), "in-memory storage");
    assert_eq!(
        j["extensions"]["jaeger_query"]["storage"]["traces"], store,
        "the UI reads the storage the exporter writes"
    );

    // The compose healthcheck asks healthcheckv2 on its port.
    let test = strings(&svc["healthcheck"]["test"]).join(" ");
    let hc_port = endpoint(&j["extensions"]["healthcheckv2"]["http"]);
    assert!(
        test.contains(&format!("http://localhost:{hc_port}/status")),
        "{test}"
    );
}

#[test]
fn sampling_strategies_follow_jaegers_file_format() {
    // The shape of Jaeger's strategies file (internal/sampling/samplingstrategy/file/strategy.go):
    // unknown keys are silently ignored by Jaeger, so they are errors here.
    let s: Value = serde_json::from_str(&read("config/sampling-strategies.json")).expect("json");
    let keys = |v: &Value, allowed: &[&str], what: &str| {
        for k in v.as_object().expect("object").keys() {
            assert!(allowed.contains(&k.as_str()), "{what}: unknown key {k}");
        }
    };
    let strategy = |v: &Value, what: &str, operation: bool| {
        let ty = v["type"].as_str().expect("type");
        let param = v["param"].as_f64().expect("param");
        match ty {
            "probabilistic" => assert!((0.0..=1.0).contains(&param), "{what}: {param}"),
            // Jaeger drops rate-limiting operation strategies with a warning.
            "ratelimiting" if !operation => assert!(param >= 0.0, "{what}"),
            _ => panic!("{what}: type {ty} is not allowed here"),
        }
        param
    };
    keys(&s, &["default_strategy", "service_strategies"], "top level");
    keys(
        &s["default_strategy"],
        &["type", "param", "operation_strategies"],
        "default_strategy",
    );
    strategy(&s["default_strategy"], "default_strategy", false);
    let mut ops = BTreeMap::new();
    let services = s["service_strategies"]
        .as_array()
        .expect("service_strategies");
    for svc in services {
        keys(
            svc,
            &["service", "type", "param", "operation_strategies"],
            "service",
        );
        strategy(svc, "service", false);
        for op in svc["operation_strategies"].as_array().into_iter().flatten() {
            keys(op, &["operation", "type", "param"], "operation");
            let name = op["operation"].as_str().expect("operation");
            let p = strategy(op, name, true);
            if svc["service"] == "m3query" {
                // m3query's span names: METHOD and route template.
                let (method, route) = name.split_once(' ').expect("METHOD /route");
                assert!(
                    ["GET", "POST"].contains(&method)
                        && (route.starts_with("/api/") || route == "/health" || route == "/ready"),
                    "{name}"
                );
                assert!(ops.insert(name.to_string(), p).is_none(), "{name} twice");
            }
        }
    }
    assert_eq!(
        services
            .iter()
            .filter(|s| s["service"] == "m3query")
            .count(),
        1
    );
    // Every query_range is traced; remote write, the high-volume path, rarely.
    assert_eq!(ops["GET /api/v1/query_range"], 1.0);
    assert_eq!(ops["POST /api/v1/query_range"], 1.0);
    assert!(ops["POST /api/v1/prom/remote/write"] <= 0.001);
    assert!(ops["POST /api/v1/write"] <= 0.001);
}

#[test]
fn prometheus_config_scrapes_and_writes_into_m3query() {
    let c = compose();
    let svc = service(&c, "prometheus");
    let cmd = strings(&svc["command"]);
    assert_eq!(
        mount_target(svc, "./config/prometheus/prometheus.yml"),
        flag(&cmd, "--config.file").expect("--config.file")
    );
    let p = yaml("config/prometheus/prometheus.yml");
    let jobs: BTreeMap<&str, &Value> = p["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .map(|j| (j["job_name"].as_str().expect("job_name"), j))
        .collect();
    let m3 = jobs["m3query"];
    assert_eq!(
        strings(&m3["static_configs"][0]["targets"]),
        ["m3query:7201"]
    );
    // m3query serves its metrics at metrics.prometheus.handlerPath.
    let cfg: Value = serde_saphyr::from_str(&read("config/compose.yml")).expect("yaml");
    let handler = cfg["metrics"]["prometheus"]["handlerPath"]
        .as_str()
        .unwrap_or("/metrics");
    assert_eq!(m3["metrics_path"].as_str().unwrap_or("/metrics"), handler);
    assert!(jobs.contains_key("prometheus"), "Prometheus scrapes itself");
    let rw = p["remote_write"].as_array().expect("remote_write");
    assert_eq!(rw.len(), 1);
    assert_eq!(rw[0]["url"], "http://m3query:7201/api/v1/prom/remote/write");

    // Prometheus's own checker (Debian's promtool, installed with prometheus by .ci/run).
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(root().join("config/prometheus/prometheus.yml"))
        .output()
        .expect("promtool not found: apt-get install prometheus (.ci/run does it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_config_works_against_the_real_m3query() {
    // The compose file's Prometheus config with the compose host names replaced by loopback
    // ports and the intervals shortened: Prometheus scrapes m3query and itself and
    // remote-writes both into m3query.
    let m = M3Query::start("");
    let text = read("config/prometheus/prometheus.yml");
    let mut config = text.clone();
    for (from, to) in [
        ("m3query:7201", format!("127.0.0.1:{}", m.port)),
        ("localhost:9090", "127.0.0.1:{{PORT}}".to_string()),
        ("scrape_interval: 15s", "scrape_interval: 1s".to_string()),
        (
            "batch_send_deadline: 5s",
            "batch_send_deadline: 1s".to_string(),
        ),
    ] {
        assert!(config.contains(from), "{from} not in prometheus.yml");
        config = config.replace(from, &to);
    }
    let prom = Prometheus::start(&config, &[]);
    let jobs = eventually(Duration::from_secs(60), || {
        let v: Value = client()
            .get(m.url("/api/v1/series?match[]=up"))
            .send()
            .ok()?
            .json()
            .ok()?;
        let jobs: BTreeSet<String> = v["data"]
            .as_array()?
            .iter()
            .filter_map(|s| s["job"].as_str().map(str::to_string))
            .collect();
        (jobs.len() == 2).then_some(jobs)
    })
    .unwrap_or_else(|| {
        panic!(
            "scrapes never arrived in m3query.\nm3query:\n{}\nprometheus:\n{}",
            m.log(),
            prom.log()
        )
    });
    assert_eq!(
        jobs,
        BTreeSet::from(["m3query".into(), "prometheus".into()])
    );
    // m3query's own request counter came back through Prometheus, as the dashboard reads it.
    let found = eventually(Duration::from_secs(30), || {
        let v: Value = client()
            .get(m.url("/api/v1/series?match[]=m3query_http_requests_total{job=\"m3query\"}"))
            .send()
            .ok()?
            .json()
            .ok()?;
        (!v["data"].as_array()?.is_empty()).then_some(())
    });
    assert!(found.is_some(), "m3query_http_requests_total never arrived");
}

fn grafana_datasources() -> Vec<Value> {
    yaml("config/grafana/provisioning/datasources/datasources.yml")["datasources"]
        .as_array()
        .expect("datasources")
        .clone()
}

#[test]
fn grafana_provisioning_points_at_the_stack() {
    let c = compose();
    let svc = service(&c, "grafana");
    assert_eq!(
        mount_target(svc, "./config/grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let ds = grafana_datasources();
    let by_type = |t: &str| {
        ds.iter()
            .find(|d| d["type"] == t)
            .unwrap_or_else(|| panic!("no {t} data source"))
    };
    let prom = by_type("prometheus");
    assert_eq!(prom["url"], "http://m3query:7201");
    assert_eq!(prom["isDefault"], true);
    // GET, so Grafana's queries are the `GET /api/v1/query_range` spans the searches find.
    assert_eq!(prom["jsonData"]["httpMethod"], "GET");
    let jaeger = by_type("jaeger");
    let jaeger_cfg = yaml("config/jaeger/config.yaml");
    let query_port = port_of(
        jaeger_cfg["extensions"]["jaeger_query"]["http"]["endpoint"]
            .as_str()
            .expect("endpoint"),
    );
    assert_eq!(jaeger["url"], format!("http://jaeger:{query_port}"));

    // Dashboards: the provider's path is where compose mounts config/grafana/dashboards.
    let providers = yaml("config/grafana/provisioning/dashboards/dashboards.yml");
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("options.path");
    assert_eq!(mount_target(svc, "./config/grafana/dashboards"), path);
    let env = strings(&svc["environment"]);
    let home = env
        .iter()
        .find_map(|e| e.strip_prefix("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH="))
        .expect("home dashboard");
    let file = home
        .strip_prefix(&format!("{path}/"))
        .expect("under the mount");
    assert!(
        root()
            .join("config/grafana/dashboards")
            .join(file)
            .is_file()
    );
}

/// Every PromQL expression in the dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: Value =
        serde_json::from_str(&read("config/grafana/dashboards/m3query.json")).expect("json");
    let uids: BTreeSet<String> = grafana_datasources()
        .iter()
        .filter_map(|d| d["uid"].as_str().map(str::to_string))
        .collect();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().expect("title").to_string();
        assert!(
            uids.contains(p["datasource"]["uid"].as_str().expect("uid")),
            "{title}: unknown data source"
        );
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            out.push((title.clone(), expr));
        }
    }
    out
}

fn selectors(e: &Expr, out: &mut Vec<(String, Vec<(String, String)>)>) {
    let mut add = |vs: &m3query_promql::parser::VectorSelector| {
        let labels = vs
            .matchers
            .iter()
            .filter(|m| m.name != "__name__")
            .map(|m| (m.name.clone(), m.value.clone()))
            .collect();
        out.push((vs.name.clone().expect("metric name"), labels));
    };
    match e {
        Expr::Aggregate(a) => {
            selectors(&a.expr, out);
            if let Some(p) = &a.param {
                selectors(p, out);
            }
        }
        Expr::Unary { expr, .. } => selectors(expr, out),
        Expr::Binary(b) => {
            selectors(&b.lhs, out);
            selectors(&b.rhs, out);
        }
        Expr::Paren(p, _) | Expr::StepInvariant(p) => selectors(p, out),
        Expr::Subquery(s) => selectors(&s.expr, out),
        Expr::VectorSelector(vs) => add(vs),
        Expr::MatrixSelector(ms) => add(&ms.vs),
        Expr::Call(c) => {
            for a in &c.args {
                selectors(a, out);
            }
        }
        Expr::Number { .. } | Expr::String { .. } => {}
    }
}

#[test]
fn dashboard_queries_parse_and_name_metrics_m3query_exports() {
    let queries = dashboard_queries();
    let titles: BTreeSet<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    for want in [
        "Request rate",
        "Latency by route",
        "Errors (5xx)",
        "Spans dropped",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(want)),
            "no {want} panel in {titles:?}"
        );
    }
    // The job label the dashboard selects is the job Prometheus scrapes m3query as.
    let p = yaml("config/prometheus/prometheus.yml");
    let job = p["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|j| strings(&j["static_configs"][0]["targets"]).contains(&"m3query:7201".into()))
        .and_then(|j| j["job_name"].as_str())
        .expect("m3query job");

    let mut names = BTreeSet::new();
    for (title, expr) in &queries {
        let ast =
            m3query_promql::parser::parse(expr).unwrap_or_else(|e| panic!("{title}: {expr}: {e}"));
        let mut found = Vec::new();
        selectors(&ast, &mut found);
        assert!(!found.is_empty(), "{title}: no selector");
        for (name, labels) in found {
            assert!(
                labels.contains(&("job".into(), job.into())),
                "{title}: {name} does not select job={job}"
            );
            names.insert(name);
        }
    }

    // What m3query exports once it has served requests and a remote write, with tracing on
    // (to a port nothing listens on) as in the stack.
    let m = M3Query::start(&format!(
        "tracing:\n  backend: jaeger\n  jaeger:\n    sampler: {{type: const, param: 1}}\n    reporter: {{localAgentHostPort: \"127.0.0.1:{}\"}}\n",
        common::free_port()
    ));
    let (s, body) = remote_write_v1(
        &m.url("/api/v1/prom/remote/write"),
        &[(vec![("__name__", "x")], vec![(1000, 1.0)])],
    );
    assert_eq!(s, 204, "{body}");
    let _ = client()
        .get(m.url("/api/v1/labels"))
        .send()
        .expect("labels");
    let text = client()
        .get(m.url("/metrics"))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for name in &names {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which m3query does not export: {exported:?}"
        );
    }
}

/// The Dockerfile as (instruction, arguments), continuation lines joined.
struct Dockerfile {
    lines: Vec<(String, String)>,
}

impl Dockerfile {
    fn read() -> Dockerfile {
        let mut lines = Vec::new();
        let mut pending = String::new();
        for raw in read("Dockerfile").lines() {
            let t = raw.trim();
            if pending.is_empty() && (t.is_empty() || t.starts_with('#')) {
                continue;
            }
            if let Some(cont) = t.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            pending.push_str(t);
            let (instr, args) = pending.split_once(' ').unwrap_or((&pending, ""));
            lines.push((instr.to_ascii_uppercase(), args.trim().to_string()));
            pending.clear();
        }
        Dockerfile { lines }
    }

    /// The final (runtime) stage: what follows the last FROM.
    fn runtime(&self) -> Dockerfile {
        let last_from = self
            .lines
            .iter()
            .rposition(|(i, _)| i == "FROM")
            .expect("FROM");
        Dockerfile {
            lines: self.lines[last_from..].to_vec(),
        }
    }

    fn all(&self, instr: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|(i, _)| i == instr)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    fn one(&self, instr: &str) -> String {
        let all = self.all(instr);
        assert_eq!(all.len(), 1, "one {instr}: {all:?}");
        all[0].to_string()
    }

    /// A JSON exec-form instruction (`CMD ["a", "b"]`); empty when absent.
    fn exec_form(&self, instr: &str) -> Vec<String> {
        self.all(instr)
            .last()
            .map(|a| {
                serde_json::from_str(a)
                    .unwrap_or_else(|e| panic!("{instr} {a}: exec form expected: {e}"))
            })
            .unwrap_or_default()
    }

    fn arg_default(&self, name: &str) -> String {
        self.all("ARG")
            .iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("ARG {name}=..."))
            .to_string()
    }

    /// `COPY` instructions from the build context: (sources, destination).
    fn context_copies(&self) -> Vec<(Vec<String>, String)> {
        self.all("COPY")
            .into_iter()
            .filter(|a| !a.starts_with("--from"))
            .map(|a| {
                let mut parts: Vec<String> = a.split_whitespace().map(str::to_string).collect();
                let dest = parts.pop().expect("destination");
                (parts, dest)
            })
            .collect()
    }
}

/// `.dockerignore` patterns as a matcher (the subset of Docker's syntax the file uses:
/// `*` within a path element, a leading `**/` for any depth).
fn dockerignored() -> impl Fn(&str) -> bool {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    fn glob(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                glob(&p[1..], s) || (!s.is_empty() && s[0] != b'/' && glob(p, &s[1..]))
            }
            (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
            _ => false,
        }
    }
    move |path: &str| {
        // A path is ignored when it or one of its parent directories matches.
        let elems: Vec<&str> = path.split('/').collect();
        (1..=elems.len()).any(|n| {
            let prefix = elems[..n].join("/");
            patterns.iter().any(|p| match p.strip_prefix("**/") {
                Some(rest) => {
                    (0..n).any(|k| glob(rest.as_bytes(), elems[k..n].join("/").as_bytes()))
                }
                None => glob(p.as_bytes(), prefix.as_bytes()),
            })
        })
    }
}

#[test]
fn dockerfile_is_pinned_non_root_and_healthchecked() {
    let d = Dockerfile::read();
    let rust = d.arg_default("RUST_IMAGE");
    let runtime = d.arg_default("RUNTIME_IMAGE");
    // rust:X.Y.Z-slim-CODENAME on debian:CODENAME-YYYYMMDD-slim: the same Debian release.
    let (rust_version, rust_variant) = rust
        .strip_prefix("rust:")
        .and_then(|r| r.split_once("-slim-"))
        .unwrap_or_else(|| panic!("{rust}: rust:X.Y.Z-slim-CODENAME"));
    let (codename, date) = runtime
        .strip_prefix("debian:")
        .and_then(|r| r.strip_suffix("-slim"))
        .and_then(|r| r.split_once('-'))
        .unwrap_or_else(|| panic!("{runtime}: debian:CODENAME-YYYYMMDD-slim"));
    assert_eq!(
        rust_variant, codename,
        "build and runtime on one Debian release"
    );
    assert!(
        date.len() == 8 && date.chars().all(|c| c.is_ascii_digit()),
        "{runtime}"
    );
    // The pinned compiler satisfies the workspace's rust-version.
    let version =
        |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().expect("number")).collect() };
    let manifest: BTreeMap<String, toml_like::Value> = toml_like::parse(&read("Cargo.toml"));
    let msrv = manifest["workspace.package.rust-version"].as_str();
    assert_eq!(version(rust_version).len(), 3, "{rust}: pin X.Y.Z");
    assert!(
        version(rust_version) >= version(msrv),
        "{rust} is older than rust-version {msrv}"
    );
    assert_eq!(
        d.all("FROM"),
        ["${RUST_IMAGE} AS build", "${RUNTIME_IMAGE}"]
    );
    for image in [&rust, &runtime] {
        assert!(
            read("README.md").contains(&format!("`{image}`")),
            "README does not name {image}"
        );
    }

    let copies = d.context_copies();
    let d = d.runtime();
    let user = d.one("USER");
    let uid = user.split(':').next().expect("uid");
    assert!(uid != "0" && uid != "root", "runs as root: {user}");
    assert_eq!(d.one("EXPOSE"), "7201");
    assert_eq!(d.exec_form("ENTRYPOINT"), ["/usr/local/bin/m3query"]);
    assert_eq!(d.exec_form("CMD"), ["--config", "/etc/m3query/m3query.yml"]);

    // Where the runtime stage (the last COPY of a file) puts it.
    let dest_of = |src: &str| {
        copies
            .iter()
            .rev()
            .find(|(s, _)| s.iter().any(|x| x == src))
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("{src} is not copied"))
    };
    // The healthcheck is the repository's script, probing the port the image listens on.
    let hc = d.one("HEALTHCHECK");
    let hc_cmd: Vec<String> =
        serde_json::from_str(hc.split_once("CMD ").expect("CMD").1).expect("exec form");
    assert_eq!(hc_cmd, [dest_of("scripts/healthcheck")]);
    assert_eq!(d.one("ENV"), "M3QUERY_HEALTH_ADDR=127.0.0.1:7201");
    let reference = read("config/m3query.yml");
    assert!(reference.contains("\nlistenAddress: 0.0.0.0:7201\n"));
    assert_eq!(dest_of("config/m3query.yml"), "/etc/m3query/m3query.yml");
    // The default config's relative storage path lands in the data volume.
    assert!(reference.contains("\n  path: ./data\n"));
    assert_eq!(d.one("WORKDIR").as_str(), "/var/lib/m3query");
    assert_eq!(d.one("VOLUME"), "[\"/var/lib/m3query\"]");
}

#[test]
fn dockerfile_build_context_is_a_complete_workspace() {
    // Copy what the build stage copies (minus .dockerignore'd files) and let cargo resolve it
    // offline against Cargo.lock: a missing workspace member or manifest fails here.
    let d = Dockerfile::read();
    let ignored = dockerignored();
    let ctx = tempfile::tempdir().expect("tempdir");
    fn copy(from: &Path, to: &Path, rel: &str, ignored: &dyn Fn(&str) -> bool) {
        if ignored(rel) {
            return;
        }
        let src = from.join(rel);
        if src.is_dir() {
            for e in std::fs::read_dir(&src).expect("dir") {
                let name = e.expect("entry").file_name();
                copy(
                    from,
                    to,
                    &format!("{rel}/{}", name.to_string_lossy()),
                    ignored,
                );
            }
        } else {
            let dst = to.join(rel);
            std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
    let mut copied = 0;
    for (sources, _) in d.context_copies() {
        for s in sources {
            assert!(root().join(&s).exists(), "COPY {s}: not in the repository");
            assert!(!ignored(&s), "COPY {s}: excluded by .dockerignore");
            copy(root(), ctx.path(), &s, &ignored);
            copied += 1;
        }
    }
    assert!(copied >= 6);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .current_dir(ctx.path())
        .env("CARGO_TARGET_DIR", ctx.path().join("target"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "the image's build context is not a complete workspace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let bins: Vec<&str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["name"] == "m3query")
        .flat_map(|p| p["targets"].as_array().expect("targets"))
        .filter(|t| t["kind"][0] == "bin")
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(bins, ["m3query"]);
    // Everything the workspace has, the context has.
    let members = |dir: &Path| -> BTreeSet<PathBuf> {
        std::fs::read_dir(dir.join("crates"))
            .expect("crates")
            .map(|e| e.expect("entry").file_name().into())
            .collect()
    };
    assert_eq!(members(root()), members(ctx.path()));
}

/// Just enough TOML to read `[workspace.package] rust-version` without a TOML dependency.
mod toml_like {
    use std::collections::BTreeMap;

    pub struct Value(String);

    impl Value {
        pub fn as_str(&self) -> &str {
            &self.0
        }
    }

    /// `section.key` -> string value, for `key = "value"` lines.
    pub fn parse(text: &str) -> BTreeMap<String, Value> {
        let mut section = String::new();
        let mut out = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                let v = v.trim();
                if let Some(s) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    out.insert(format!("{section}.{}", k.trim()), Value(s.to_string()));
                }
            }
        }
        out
    }
}
