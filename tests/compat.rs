//! What Grafana and Prometheus's client libraries call besides queries: `GET /` (a
//! connection check), `/api/v1/rules`, `/api/v1/alerts`, `/api/v1/targets`,
//! `/api/v1/alertmanagers` and `/api/v1/status/{config,flags,runtimeinfo,tsdb}`. Their JSON is
//! compared key by key with a real Prometheus's (Debian's 2.42) where one can run.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{M3Query, Prometheus, check_config, client, eventually, remote_write_v1};
use serde_json::Value;

fn get(url: &str) -> (u16, Value) {
    let r = client().get(url).send().expect("request");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Where `ours` lacks a key `theirs` has, or holds another JSON type. Arrays are compared
/// by their first elements when both have one.
fn shape_gaps(ours: &Value, theirs: &Value, path: &str, out: &mut Vec<String>) {
    if kind(ours) != kind(theirs) {
        out.push(format!(
            "{path}: ours is {}, Prometheus's is {}",
            kind(ours),
            kind(theirs)
        ));
        return;
    }
    match (ours, theirs) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, tv) in t {
                let p = format!("{path}.{k}");
                match o.get(k) {
                    None => out.push(format!("{p}: missing")),
                    Some(ov) => shape_gaps(ov, tv, &p, out),
                }
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            if let (Some(a), Some(b)) = (o.first(), t.first()) {
                shape_gaps(a, b, &format!("{path}[0]"), out);
            }
        }
        _ => {}
    }
}

fn sample_series(m: &M3Query) {
    let at = |t: i64| vec![(t, 1.0), (t + 15_000, 2.0)];
    let (s, body) = remote_write_v1(
        &m.url("/api/v1/write"),
        &[
            (
                vec![
                    ("__name__", "http_requests_total"),
                    ("job", "api"),
                    ("code", "200"),
                ],
                at(1_000_000),
            ),
            (
                vec![
                    ("__name__", "http_requests_total"),
                    ("job", "api"),
                    ("code", "500"),
                ],
                at(1_000_000),
            ),
            (
                vec![
                    ("__name__", "http_requests_total"),
                    ("job", "web"),
                    ("code", "200"),
                ],
                at(1_000_000),
            ),
            (vec![("__name__", "up"), ("job", "api")], at(1_000_000)),
        ],
    );
    assert_eq!(s, 204, "{body}");
}

#[test]
fn json_shapes_cover_real_prometheus() {
    let prom = Prometheus::start(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{{PORT}}']\n",
        &[],
    );
    let m = M3Query::start("");
    sample_series(&m);
    // Prometheus caches its head cardinality stats for minutes: ask only once it has
    // scraped itself, so its lists have entries to compare element shapes with.
    eventually(Duration::from_secs(30), || {
        let (_, v) = get(&prom.url("/api/v1/query?query=up"));
        v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
            .then_some(())
    })
    .unwrap_or_else(|| panic!("prometheus never scraped itself: {}", prom.log()));

    let mut gaps = Vec::new();
    for path in [
        "/api/v1/rules",
        "/api/v1/rules?type=alert",
        "/api/v1/alerts",
        "/api/v1/targets",
        "/api/v1/alertmanagers",
        "/api/v1/status/config",
        "/api/v1/status/runtimeinfo",
        "/api/v1/status/tsdb",
        "/api/v1/status/buildinfo",
    ] {
        let (ps, theirs) = get(&prom.url(path));
        let (os, ours) = get(&m.url(path));
        assert_eq!(ps, 200, "prometheus {path}: {theirs}");
        assert_eq!(os, 200, "m3query {path}: {ours}");
        shape_gaps(&ours, &theirs, path, &mut gaps);
        if path == "/api/v1/status/tsdb" {
            for list in ["seriesCountByMetricName", "seriesCountByLabelValuePair"] {
                assert!(
                    theirs["data"][list]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
                        && ours["data"][list].as_array().is_some_and(|a| !a.is_empty()),
                    "both {list} lists have entries, so their shapes were compared: {theirs} {ours}"
                );
            }
        }
    }
    // Flags are a map of flag name -> string: the names are each server's own.
    let (_, theirs) = get(&prom.url("/api/v1/status/flags"));
    let (_, ours) = get(&m.url("/api/v1/status/flags"));
    assert_eq!(ours["status"], "success");
    for (who, v) in [("prometheus", &theirs), ("m3query", &ours)] {
        let flags = v["data"].as_object().expect("flags object");
        assert!(!flags.is_empty(), "{who}: {v}");
        assert!(flags.values().all(Value::is_string), "{who}: {v}");
    }
    assert!(
        gaps.is_empty(),
        "shapes differ from Prometheus's:\n{}",
        gaps.join("\n")
    );

    // The same refusal for a bad rule type.
    let path = "/api/v1/rules?type=foo";
    let (ps, theirs) = get(&prom.url(path));
    let (os, ours) = get(&m.url(path));
    assert_eq!((os, &ours), (ps, &theirs));
}

#[test]
fn landing_page_answers_connection_checks() {
    let m = M3Query::start("metrics:\n  prometheus:\n    handlerPath: /internal/metrics\n");
    let r = client().get(m.url("/")).send().expect("GET /");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let html = r.text().expect("body");
    let (_, build) = get(&m.url("/api/v1/status/buildinfo"));
    let version = build["data"]["version"].as_str().expect("version");
    assert!(html.contains("<title>m3query</title>"), "{html}");
    assert!(html.contains(&format!("Version {version}")), "{html}");
    for link in [
        "/internal/metrics",
        "/api/v1/status/config",
        "/api/v1/status/flags",
        "/api/v1/status/runtimeinfo",
        "/api/v1/status/tsdb",
        "/api/v1/status/buildinfo",
        "/api/v1/rules",
    ] {
        assert!(
            html.contains(&format!("href=\"{link}\"")),
            "link to {link}: {html}"
        );
    }
    let head = client().head(m.url("/")).send().expect("HEAD /");
    assert_eq!(head.status().as_u16(), 200);
    assert!(head.text().unwrap_or_default().is_empty());
    // The query page's own routes answer the page; other unknown paths stay 404 in
    // Prometheus's shape.
    let r = client().get(m.url("/graph")).send().expect("GET /graph");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.text()
            .unwrap_or_default()
            .contains("<title>m3query</title>")
    );
    let (s, v) = get(&m.url("/nonexistent"));
    assert_eq!((s, v["errorType"].as_str()), (404, Some("not_found")));
}

#[test]
fn rules_alerts_targets_are_empty_and_check_parameters() {
    let m = M3Query::start("");
    for path in [
        "/api/v1/rules",
        "/api/v1/rules?type=alert",
        "/api/v1/rules?type=record&exclude_alerts=true",
        "/api/v1/rules?rule_name[]=a&rule_group[]=b&file[]=c.yml&match[]=up{job=\"x\"}",
        "/api/v1/rules?group_limit=5&group_next_token=abc",
    ] {
        let (s, v) = get(&m.url(path));
        assert_eq!(s, 200, "{path}: {v}");
        assert_eq!(
            v,
            serde_json::json!({"status": "success", "data": {"groups": []}}),
            "{path}"
        );
    }
    let (s, v) = get(&m.url("/api/v1/alerts"));
    assert_eq!(s, 200);
    assert_eq!(
        v,
        serde_json::json!({"status": "success", "data": {"alerts": []}})
    );
    let (s, v) = get(&m.url("/api/v1/targets?state=active"));
    assert_eq!(s, 200);
    assert_eq!(v["data"]["activeTargets"], serde_json::json!([]));
    assert_eq!(v["data"]["droppedTargets"], serde_json::json!([]));
    let (s, v) = get(&m.url("/api/v1/alertmanagers"));
    assert_eq!(s, 200);
    assert_eq!(
        v["data"],
        serde_json::json!({"activeAlertmanagers": [], "droppedAlertmanagers": []})
    );
    for (path, says) in [
        ("/api/v1/rules?type=foo", "not supported value \"foo\""),
        ("/api/v1/rules?exclude_alerts=maybe", "exclude_alerts"),
        ("/api/v1/rules?match[]={", "match"),
        ("/api/v1/rules?group_limit=0", "greater than 0"),
        ("/api/v1/rules?group_limit=x", "valid number"),
        (
            "/api/v1/rules?group_next_token=abc",
            "group_limit needs to be present",
        ),
    ] {
        let (s, v) = get(&m.url(path));
        assert_eq!(
            (s, v["errorType"].as_str()),
            (400, Some("bad_data")),
            "{path}: {v}"
        );
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(says)),
            "{path}: {v}"
        );
    }
    let r = client().post(m.url("/api/v1/alerts")).send().expect("POST");
    assert_eq!(r.status().as_u16(), 405);
}

fn stats(v: &Value, list: &str) -> Vec<(String, u64)> {
    v["data"][list]
        .as_array()
        .unwrap_or_else(|| panic!("{list} in {v}"))
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_string(),
                e["value"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

#[test]
fn tsdb_status_counts_the_head() {
    let m = M3Query::start("");
    let (s, v) = get(&m.url("/api/v1/status/tsdb"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["headStats"]["numSeries"], 0);
    assert_eq!(
        v["data"]["headStats"]["minTime"],
        i64::MAX,
        "as Prometheus, while empty"
    );
    assert_eq!(v["data"]["headStats"]["maxTime"], i64::MIN);

    sample_series(&m);
    let (s, v) = get(&m.url("/api/v1/status/tsdb"));
    assert_eq!(s, 200, "{v}");
    let head = &v["data"]["headStats"];
    assert_eq!(head["numSeries"], 4, "{v}");
    // __name__: 2 values; job: api, web; code: 200, 500.
    assert_eq!(head["numLabelPairs"], 6, "{v}");
    assert_eq!(head["chunkCount"], 4, "{v}");
    assert_eq!(
        (head["minTime"].as_i64(), head["maxTime"].as_i64()),
        (Some(1_000_000), Some(1_015_000))
    );
    assert_eq!(
        stats(&v, "seriesCountByMetricName"),
        pairs(&[("http_requests_total", 3), ("up", 1)])
    );
    assert_eq!(
        stats(&v, "labelValueCountByLabelName"),
        pairs(&[("__name__", 2), ("code", 2), ("job", 2)])
    );
    assert_eq!(
        stats(&v, "memoryInBytesByLabelName"),
        // 19*3 + 2*1; 3*4 ("api" x3, "web" x1); 3*3.
        pairs(&[("__name__", 59), ("job", 12), ("code", 9)])
    );
    assert_eq!(
        stats(&v, "seriesCountByLabelValuePair")[..3],
        pairs(&[
            ("__name__=http_requests_total", 3),
            ("job=api", 3),
            ("code=200", 2)
        ])[..]
    );

    let (s, v) = get(&m.url("/api/v1/status/tsdb?limit=1"));
    assert_eq!(s, 200, "{v}");
    for list in [
        "seriesCountByMetricName",
        "labelValueCountByLabelName",
        "memoryInBytesByLabelName",
        "seriesCountByLabelValuePair",
    ] {
        assert_eq!(stats(&v, list).len(), 1, "{list}: {v}");
    }
    assert_eq!(
        v["data"]["headStats"]["numSeries"], 4,
        "limit cuts lists, not figures"
    );

    for bad in ["0", "-1", "x", "1.5"] {
        let (s, v) = get(&m.url(&format!("/api/v1/status/tsdb?limit={bad}")));
        assert_eq!(
            (s, v["errorType"].as_str()),
            (400, Some("bad_data")),
            "limit={bad}: {v}"
        );
        assert_eq!(v["error"], "limit must be a positive number");
    }
}

#[test]
fn remote_read_only_has_no_tsdb_status() {
    let dead = common::free_port();
    let m = M3Query::start_config(
        tempfile::tempdir().expect("tempdir"),
        &format!(
            "storage:\n  enabled: false\nremoteRead:\n  - url: http://127.0.0.1:{dead}/api/v1/read\n"
        ),
        &[],
    );
    let (s, v) = get(&m.url("/api/v1/status/tsdb"));
    assert_eq!(
        (s, v["errorType"].as_str()),
        (422, Some("execution")),
        "{v}"
    );
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("storage.enabled: false")),
        "{v}"
    );
    let (s, v) = get(&m.url("/api/v1/status/runtimeinfo"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["corruptionCount"], 0);
    assert!(
        v["data"]["storageRetention"]
            .as_str()
            .is_some_and(|r| r.contains("storage.enabled: false")),
        "{v}"
    );
}

#[test]
fn config_status_is_check_configs_redacted_yaml() {
    let dead = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let body = format!(
        "storage:\n  path: {}\n\
         remoteRead:\n\
         \x20 - url: http://alice:urlpass-s3cret@127.0.0.1:{dead}/api/v1/read\n\
         \x20   headers: {{X-Scope-OrgID: tenant-s3cret}}\n\
         \x20   basicAuth: {{username: alice, password: ${{RR_PASSWORD}}}}\n\
         \x20 - url: http://127.0.0.1:{dead}/prom/api/v1/read\n\
         \x20   name: tenant\n\
         \x20   bearerToken: bearer-s3cret\n\
         tracing:\n\
         \x20 backend: otlp\n\
         \x20 otlp:\n\
         \x20   endpoint: http://bob:otlppass-s3cret@127.0.0.1:{dead}\n\
         \x20   protocol: http/protobuf\n\
         \x20   headers: {{api-key: otlpkey-s3cret}}\n",
        data.display()
    );
    let env = [("RR_PASSWORD", "envpass-s3cret")];
    let m = M3Query::start_config(dir, &body, &env);
    let r = client()
        .get(m.url("/api/v1/status/config"))
        .send()
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().expect("body");
    assert!(!text.contains("s3cret"), "a secret is shown: {text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    let yaml = v["data"]["yaml"].as_str().expect("yaml string");
    assert!(
        yaml.contains("<redacted>") && yaml.contains("alice:xxxxx@"),
        "{yaml}"
    );
    // Exactly what `m3query check-config` prints for the same file.
    let file = std::fs::read_to_string(&m.config_path).expect("config file");
    let (code, printed, err) = check_config(&file, &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(yaml, printed);
}

#[test]
fn flags_and_runtime_info() {
    let before = m3query_model::time::format_rfc3339(now_ms() - 1000);
    let m = M3Query::start("  retention: 30d\n  retentionSize: 1GiB\n");
    let (s, v) = get(&m.url("/api/v1/status/flags"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["data"],
        serde_json::json!({"config": m.config_path.display().to_string()})
    );

    let (s, v) = get(&m.url("/api/v1/status/runtimeinfo"));
    assert_eq!(s, 200, "{v}");
    let d = &v["data"];
    let cwd: PathBuf = std::env::current_dir().expect("cwd");
    assert_eq!(d["CWD"], cwd.display().to_string());
    assert_eq!(d["storageRetention"], "30d or 1GiB");
    assert_eq!(d["reloadConfigSuccess"], true);
    assert_eq!(d["corruptionCount"], 0);
    let time = |k: &str| {
        let s = d[k].as_str().unwrap_or_else(|| panic!("{k}: {v}"));
        m3query_model::time::parse_api_time(s).unwrap_or_else(|e| panic!("{k}={s}: {e}"))
    };
    let start = time("startTime");
    let before = m3query_model::time::parse_api_time(&before).expect("time");
    assert!(start >= before && start <= now_ms(), "{v}");
    assert!(time("lastConfigTime") <= start && start - time("lastConfigTime") < 1000);
    assert!(
        d["goroutineCount"].as_u64().is_some_and(|n| n >= 2),
        "threads: {v}"
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(d["GOMAXPROCS"].as_u64(), Some(cpus as u64));
    assert_eq!(d["GOMEMLIMIT"], i64::MAX);
    assert_eq!(
        (d["GOGC"].as_str(), d["GODEBUG"].as_str()),
        (Some(""), Some(""))
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The sum of every sample of metric `name`, from Prometheus's text format.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn runtime_info_counts_wal_corruption() {
    let mut m = M3Query::start("");
    let data = m.dir.path().join("data");
    let base = now_ms() - 3_600_000;
    for r in 0..200i64 {
        let names: Vec<String> = (0..50).map(|s| s.to_string()).collect();
        let series: Vec<common::TestSeries<'_>> = names
            .iter()
            .map(|s| {
                (
                    vec![("__name__", "walrec"), ("s", s.as_str())],
                    (0..5)
                        .map(|i| (base + (r * 5 + i) * 1000, i as f64))
                        .collect(),
                )
            })
            .collect();
        let (s, body) = remote_write_v1(&m.url("/api/v1/write"), &series);
        assert_eq!(s, 204, "{body}");
    }
    // A crash, then damage in the middle of the largest WAL segment.
    let _ = m.child.kill();
    let _ = m.child.wait();
    let seg = std::fs::read_dir(data.join("wal"))
        .expect("wal dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |md| md.len()))
        .expect("a WAL segment");
    let mut bytes = std::fs::read(&seg).expect("segment");
    let mid = bytes.len() / 2;
    for b in bytes.iter_mut().skip(mid).take(4) {
        *b ^= 0xff;
    }
    std::fs::write(&seg, bytes).expect("damage");
    let dir = std::mem::replace(&mut m.dir, tempfile::tempdir().expect("tempdir"));
    let body = format!("storage:\n  path: {}\n", data.display());
    let m = M3Query::start_config(dir, &body, &[]);

    let (s, v) = get(&m.url("/api/v1/status/runtimeinfo"));
    assert_eq!(s, 200, "{v}");
    let count = v["data"]["corruptionCount"]
        .as_u64()
        .expect("corruptionCount");
    assert!(
        count >= 1,
        "the damaged WAL stretch is counted: {v}\n{}",
        m.log()
    );
    let metrics = client()
        .get(m.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    let in_metrics = metric_sum(&metrics, "m3query_tsdb_wal_corruptions_total")
        + metric_sum(&metrics, "m3query_tsdb_corrupt_blocks");
    assert_eq!(count as f64, in_metrics, "runtimeinfo agrees with /metrics");
}
