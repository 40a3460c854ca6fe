//! Black-box tests of the binary: operational endpoints, errors, metrics, config handling,
//! bad input and shutdown.

mod common;

use common::{M3Query, check_config, client};

#[test]
fn health_ready_buildinfo_and_errors() {
    let m = M3Query::start("");
    let c = client();
    let r = c.get(m.url("/health")).send().expect("health");
    assert_eq!(r.status(), 200);
    let r = c.get(m.url("/ready")).send().expect("ready");
    assert_eq!(r.status(), 200);

    let v: serde_json::Value = c
        .get(m.url("/api/v1/status/buildinfo"))
        .send()
        .expect("buildinfo")
        .json()
        .expect("json");
    assert_eq!(v["status"], "success");
    for k in [
        "version",
        "revision",
        "branch",
        "buildUser",
        "buildDate",
        "goVersion",
    ] {
        assert!(v["data"][k].is_string(), "buildinfo lacks {k}: {v}");
    }
    assert_eq!(v["data"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        v["data"]["goVersion"]
            .as_str()
            .is_some_and(|s| s.starts_with("rustc"))
    );

    let r = c.get(m.url("/api/v1/nothing/here")).send().expect("404");
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().expect("json");
    assert_eq!(v["status"], "error");
    assert_eq!(v["errorType"], "not_found");

    let r = c
        .delete(m.url("/api/v1/status/buildinfo"))
        .send()
        .expect("405");
    assert_eq!(r.status(), 405);
    let v: serde_json::Value = r.json().expect("json");
    assert_eq!(v["status"], "error");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("DELETE")));

    let text = c
        .get(m.url("/metrics"))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    for want in [
        r#"m3query_http_requests_total{route="/health",method="GET",code="200"} 1"#,
        r#"m3query_http_requests_total{route="unknown",method="GET",code="404"} 1"#,
        r#"m3query_http_requests_total{route="/api/v1/status/buildinfo",method="DELETE",code="405"} 1"#,
        r#"m3query_http_request_duration_seconds_count{route="/api/v1/status/buildinfo",method="GET"} 1"#,
        "process_resident_memory_bytes ",
        "m3query_uptime_seconds ",
    ] {
        assert!(text.contains(want), "metrics lack {want}:\n{text}");
    }
}

#[test]
fn metrics_on_their_own_listener() {
    let port = common::free_port();
    let m = M3Query::start(&format!(
        "metrics:\n  prometheus:\n    handlerPath: /m\n    listenAddress: 127.0.0.1:{port}\n"
    ));
    let c = client();
    let r = c
        .get(format!("http://127.0.0.1:{port}/m"))
        .send()
        .expect("metrics listener");
    assert_eq!(r.status(), 200);
    assert!(r.text().expect("text").contains("m3query_build_info"));
    assert_eq!(c.get(m.url("/m")).send().expect("main").status(), 200);
}

#[test]
fn bad_input_never_panics() {
    let m = M3Query::start("");
    let c = client();
    // Malformed percent-encoding and invalid UTF-8 in the query string.
    for q in ["?%ZZ=1", "?a=%FF%FE", "?%=&&&==", "?a[]=1&a[=2"] {
        let r = c
            .get(m.url(&format!("/api/v1/status/buildinfo{q}")))
            .send()
            .expect("request");
        assert_eq!(r.status(), 200, "{q}");
    }
    // Invalid UTF-8 in the path.
    let r = c.get(m.url("/api/v1/%FF%FE")).send().expect("request");
    assert_eq!(r.status(), 404);
    // Large headers are served up to the HTTP layer's limit (like Go's 1 MB default) and
    // refused past it: never a crash.
    let r = c
        .get(m.url("/health"))
        .header("x-big", "x".repeat(100_000))
        .send()
        .expect("request");
    assert_eq!(r.status(), 200);
    if let Ok(r) = c
        .get(m.url("/health"))
        .header("x-big", "x".repeat(4_000_000))
        .send()
    {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    // A huge traceparent is ignored.
    let r = c
        .get(m.url("/health"))
        .header("traceparent", "00-".repeat(1000))
        .header("uber-trace-id", ":::::::")
        .send()
        .expect("request");
    assert_eq!(r.status(), 200);
    // Still alive and well.
    assert_eq!(c.get(m.url("/health")).send().expect("alive").status(), 200);
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut m = M3Query::start("");
    let status = m.stop();
    assert!(status.success(), "exit status {status}");
    assert!(m.log().contains("m3query stopped"), "{}", m.log());
}

#[test]
fn check_config_interpolates_and_redacts() {
    let yaml = r#"
tracing:
  serviceName: m3coordinator
  backend: lightstep
  lightstep:
    access_token: ${LIGHTSTEP_ACCESS_TOKEN:""}
    collector:
      scheme: https
      host: my-satellite-address.domain
      port: 8181
query:
  timeout: ${QUERY_TIMEOUT:45s}
"#;
    let (code, out, err) = check_config(yaml, &[("LIGHTSTEP_ACCESS_TOKEN", "s3cr3t-token")]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("s3cr3t-token"), "token leaked:\n{out}");
    assert!(out.contains("access_token: <redacted>"), "{out}");
    assert!(
        out.contains("timeout: 45s"),
        "default used when unset:\n{out}"
    );
    assert!(out.contains("serviceName: m3coordinator"));

    let (code, out, _) = check_config(yaml, &[("QUERY_TIMEOUT", "2m")]);
    assert_eq!(code, 0);
    assert!(out.contains("timeout: 2m"), "set value wins:\n{out}");
    assert!(
        out.contains("access_token: ''") || out.contains("access_token: \"\""),
        "{out}"
    );
}

#[test]
fn check_config_errors() {
    let (code, _, err) = check_config("query:\n  timeout: ${MUST_BE_SET}\n", &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("MUST_BE_SET") && err.contains("line 2"),
        "{err}"
    );

    let (code, _, err) = check_config("query:\n  timeout: 1s\n  tiemout: 2s\n", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("tiemout") && err.contains("line 3"), "{err}");

    let (code, _, err) = check_config(
        "tracing:\n  backend: jaeger\n  jaeger:\n    sampler:\n      type: sometimes\n",
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("sampler.type") && err.contains("sometimes"),
        "{err}"
    );

    let (code, _, err) = check_config(
        "tracing:\n  jaeger:\n    sampler:\n      type: probabilistic\n      param: 1.5\n",
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("between 0 and 1"), "{err}");

    let (code, _, err) = check_config(
        "tracing:\n  jaeger:\n    reporter:\n      localAgentHostPort: localhost\n",
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("host:port"), "{err}");

    let (code, _, err) = check_config("x: [unclosed\n", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("c.yml"), "names the file: {err}");

    let out = std::process::Command::new(common::bin())
        .args(["check-config", "/nonexistent/m3query.yml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn invalid_config_refuses_to_start() {
    let out = std::process::Command::new(common::bin())
        .args(["-f", "/nonexistent.yml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yml"));
}

#[test]
fn an_unknown_log_level_is_refused_with_its_line_and_ready_is_logged() {
    // EnvFilter would take `warning` as a target name and silence every log.
    let (code, _, err) = check_config("logging:\n  format: text\n  level: warning\n", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("line 3") && err.contains("logging.level") && err.contains("warning"),
        "{err}"
    );
    let m = M3Query::start("");
    let want = format!("listen=127.0.0.1:{}", m.port);
    let ready = common::eventually(std::time::Duration::from_secs(10), || {
        let log = m.log();
        log.lines()
            .any(|l| l.contains("m3query ready") && l.contains(&want))
            .then_some(())
    });
    assert!(ready.is_some(), "a ready line with {want}: {}", m.log());
}
