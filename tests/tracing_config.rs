//! Every key of jaeger-client-go's `config.Configuration` and lightstep-tracer-go's `Options`
//! loads (M3's docs promise any of them can be set); `check-config` names the ones without
//! effect and why; and the ones with an effect act: Jaeger baggage restrictions and baggage
//! propagation against a fake agent and a fake remote store, LightStep's `verbose`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{M3Query, check_config, client, eventually};

/// jaeger-client-go's yaml names (untagged fields as yaml.v2 lowercases them), then
/// lightstep-tracer-go's.
const EVERY_KEY: &str = r#"
tracing:
  serviceName: m3query
  backend: jaeger
  jaeger:
    serviceName: m3query-jaeger
    disabled: false
    rpc_metrics: true
    traceid_128bit: false
    tags: [{key: env, value: ci}]
    sampler:
      type: remote
      param: 0.5
      samplingServerURL: http://127.0.0.1:5778/sampling
      samplingRefreshInterval: 1m
      maxOperations: 100
      operationNameLateBinding: true
      options: []
    reporter:
      queueSize: 100
      bufferflushinterval: 1s
      logSpans: false
      localAgentHostPort: 127.0.0.1:6831
      disableAttemptReconnecting: false
      attemptreconnectinterval: 30s
      collectorEndpoint: http://127.0.0.1:14268/api/traces
      user: u
      password: p
      http_headers: {X-Tenant: t}
    headers:
      jaegerDebugHeader: jaeger-debug-id
      jaegerBaggageHeader: jaeger-baggage
      TraceContextHeaderName: uber-trace-id
      traceBaggageHeaderPrefix: uberctx-
    baggage_restrictions:
      denyBaggageOnInitializationFailure: true
      hostPort: 127.0.0.1:5778
      refreshInterval: 1m
    throttler:
      hostPort: 127.0.0.1:5778
      refreshInterval: 5s
      synchronousInitialization: true
  lightstep:
    access_token: tok
    collector: {scheme: https, host: sat.example, port: 8181, plaintext: false, custom_ca_cert_file: ""}
    tags: {env: ci}
    lightstep_api: {scheme: https, host: api.lightstep.com, port: 443, plaintext: false, custom_ca_cert_file: ""}
    max_buffered_spans: 1000
    max_log_key_len: 256
    max_log_value_len: 1024
    max_logs_per_span: 500
    grpc_max_call_send_msg_size_bytes: 2147483647
    reporting_period: 2500ms
    min_reporting_period: 500ms
    report_timeout: 30s
    drop_span_logs: false
    verbose: true
    use_http: false
    usegrpc: true
    reconnect_period: 5m
    meta_event_reporting_enabled: true
    system_metrics:
      disabled: false
      endpoint: {scheme: https, host: ingest.lightstep.com, port: 443, plaintext: false, custom_ca_cert_file: ""}
      measurement_frequency: 30s
      timeout: 5s
"#;

#[test]
fn every_key_of_both_clients_is_accepted_and_the_inert_ones_are_named() {
    let (code, out, err) = check_config(EVERY_KEY, &[]);
    assert_eq!(code, 0, "{err}");
    let notes: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("# Accepted for compatibility, without effect"))
        .skip(1)
        .collect();
    let keys: Vec<&str> = notes
        .iter()
        .filter_map(|l| l.strip_prefix("#   "))
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k))
        .collect();
    assert_eq!(
        keys,
        vec![
            "tracing.jaeger.rpc_metrics",
            "tracing.jaeger.traceid_128bit",
            "tracing.jaeger.sampler.options",
            "tracing.jaeger.throttler",
            "tracing.lightstep.lightstep_api",
            "tracing.lightstep.meta_event_reporting_enabled",
            "tracing.lightstep.grpc_max_call_send_msg_size_bytes",
            "tracing.lightstep.system_metrics",
        ],
        "{out}"
    );
    // Each says why.
    for l in &notes {
        let why = l.split_once(": ").map(|(_, w)| w).unwrap_or("");
        assert!(why.len() > 20, "no reason: {l}");
    }
    assert!(out.contains("/credits"), "{out}");
    // The output is still the config, as YAML; secrets stay out.
    let v: serde_json::Value = serde_saphyr::from_str(&out).expect("yaml");
    assert_eq!(v["tracing"]["lightstep"]["usegrpc"], true);
    assert_eq!(
        v["tracing"]["jaeger"]["baggage_restrictions"]["hostPort"],
        "127.0.0.1:5778"
    );
    assert!(
        !out.contains(": tok") && !out.contains("password: p\n"),
        "{out}"
    );

    // lightstep-tracer-go spells it usegrpc; the older use_grpc still loads.
    let (code, _, err) = check_config(
        "tracing:\n  lightstep:\n    use_grpc: true\n    collector: {host: h, port: 1}\n",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // Only Go code can fill sampler.options.
    let (code, _, err) = check_config(
        "tracing:\n  jaeger:\n    sampler:\n      options: [x]\n",
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("only Go code"), "{err}");
}

/// A tiny HTTP/1.1 server: answers every request with `reply(path)` and records the
/// request line and headers (lower-cased names).
struct Fake {
    port: u16,
    seen: Arc<Seen>,
}

impl Fake {
    fn start(reply: fn(&str) -> (u16, String)) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, reply, &s));
            }
        });
        Fake { port, seen }
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A request's target and headers.
type Request = (String, Vec<(String, String)>);
type Seen = Mutex<Vec<Request>>;

fn serve(mut conn: TcpStream, reply: fn(&str) -> (u16, String), seen: &Seen) {
    let Ok(read) = conn.try_clone() else { return };
    let mut r = BufReader::new(read);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push((k, v.trim().to_string()));
            }
        }
        let mut body = vec![0; len];
        if std::io::Read::read_exact(&mut r, &mut body).is_err() {
            return;
        }
        seen.lock().expect("lock").push((target.clone(), headers));
        let (status, text) = reply(&target);
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Baggage a query brings is filtered by the agent's restrictions and passed on to the
/// remote store it reads from, sampled or not; nothing is passed on before the agent has
/// answered when `denyBaggageOnInitializationFailure` is set.
#[test]
fn baggage_restrictions_from_the_agent_filter_what_remote_reads_carry() {
    let agent = Fake::start(|path| {
        if path.starts_with("/baggageRestrictions?service=m3query") {
            (
                200,
                r#"[{"baggageKey":"tenant","maxValueLength":2},{"baggageKey":"user","maxValueLength":10}]"#
                    .into(),
            )
        } else {
            (404, "{}".into())
        }
    });
    // A store that fails every read: the query still answers (partial response), and
    // what was sent is recorded.
    let store = Fake::start(|_| (500, "{}".into()));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let agent_udp = udp.local_addr().expect("addr").port();
    for sampler in ["{type: const, param: 1}", "{type: const, param: 0}"] {
        let cfg = format!(
            "storage:\n  enabled: false\nremoteRead:\n  - name: store\n    url: http://127.0.0.1:{}/api/v1/read\n    timeout: 2s\ntracing:\n  backend: jaeger\n  jaeger:\n    sampler: {sampler}\n    reporter: {{localAgentHostPort: \"127.0.0.1:{agent_udp}\"}}\n    baggage_restrictions: {{hostPort: \"127.0.0.1:{}\", refreshInterval: 200ms, denyBaggageOnInitializationFailure: true}}\n",
            store.port, agent.port
        );
        let m = M3Query::start_config(tempfile::tempdir().expect("tempdir"), &cfg, &[]);
        eventually(Duration::from_secs(10), || {
            agent
                .requests()
                .iter()
                .any(|(p, _)| p.starts_with("/baggageRestrictions"))
                .then_some(())
        })
        .expect("the agent was asked for restrictions");
        // Give the answer a moment to be applied after the request was seen.
        std::thread::sleep(Duration::from_millis(300));
        let before = store.requests().len();
        let r = client()
            .get(m.url("/api/v1/query?query=up&time=60"))
            .header("uberctx-tenant", "acme")
            .header("uberctx-secret", "s3")
            .header("jaeger-baggage", "user=bob, other=x")
            .send()
            .expect("query");
        assert!(r.status().is_success(), "{}", r.status());
        let reqs = store.requests();
        let (_, headers) = reqs.get(before).expect("the store was read");
        let mut baggage: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| k.starts_with("uberctx-"))
            .cloned()
            .collect();
        baggage.sort();
        assert_eq!(
            baggage,
            vec![
                ("uberctx-tenant".to_string(), "ac".to_string()),
                ("uberctx-user".to_string(), "bob".to_string()),
            ],
            "{sampler}: {headers:?}"
        );
    }
}

/// `verbose: true` logs every report to LightStep at info.
#[test]
fn lightstep_verbose_logs_each_report() {
    let port = common::free_port();
    let cfg = format!(
        "tracing:\n  backend: lightstep\n  lightstep:\n    access_token: t\n    collector: {{scheme: http, host: 127.0.0.1, port: {port}, plaintext: true}}\n    reporting_period: 100ms\n    report_timeout: 1s\n    verbose: true\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let m = M3Query::start_in(dir, &cfg, &[]);
    let r = client().get(m.url("/health")).send().expect("health");
    assert!(r.status().is_success());
    eventually(Duration::from_secs(15), || {
        m.log().contains("reported spans").then_some(())
    })
    .unwrap_or_else(|| panic!("no report logged:\n{}", m.log()));
    let line = m
        .log()
        .lines()
        .find(|l| l.contains("reported spans"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(line.contains("INFO") && line.contains("spans="), "{line}");
}
