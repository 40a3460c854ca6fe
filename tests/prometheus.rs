//! m3query side by side with a real Prometheus (Debian's 2.42): Prometheus remote-writes its
//! own scrapes into m3query, and a second Prometheus reads m3query's data through remote read.

mod common;

use std::time::Duration;

use common::{M3Query, Prometheus, client, eventually, remote_write_v1};
use serde_json::Value;

fn get_json(url: &str) -> Option<Value> {
    client().get(url).send().ok()?.json().ok()
}

#[test]
fn prometheus_remote_writes_its_scrapes_into_m3query() {
    let m = M3Query::start("");
    let prom = Prometheus::start(
        &format!(
            r#"
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{{{{PORT}}}}"]
remote_write:
  - url: http://127.0.0.1:{}/api/v1/prom/remote/write
    queue_config:
      batch_send_deadline: 1s
      max_backoff: 1s
"#,
            m.port
        ),
        &[],
    );
    // Within a minute Prometheus's own series show up in our metadata APIs.
    let found = eventually(Duration::from_secs(60), || {
        let v = get_json(&m.url("/api/v1/series?match[]=prometheus_build_info"))?;
        let data = v["data"].as_array()?;
        (data.len() == 1).then(|| data[0].clone())
    });
    let series = found.unwrap_or_else(|| {
        panic!(
            "Prometheus's series never arrived.\nm3query log:\n{}\nprometheus log:\n{}",
            m.log(),
            prom.log()
        )
    });
    assert_eq!(series["job"], "prometheus");
    assert_eq!(series["instance"], format!("127.0.0.1:{}", prom.port));
    let names = get_json(&m.url("/api/v1/label/__name__/values")).expect("names");
    let names: Vec<&str> = names["data"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in ["up", "prometheus_build_info", "scrape_duration_seconds"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // No errors on Prometheus's side: every batch was accepted.
    let failed = get_json(
        &prom.url("/api/v1/query?query=sum(prometheus_remote_storage_samples_failed_total)"),
    )
    .expect("query");
    assert_eq!(failed["data"]["result"][0]["value"][1], "0", "{failed}");
}

#[test]
fn prometheus_reads_m3query_through_remote_read() {
    let m = M3Query::start("");
    // Known samples, 15s apart, ending near now so Prometheus's default lookback finds them.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let start = now_ms - 10 * 60_000;
    let samples: Vec<(i64, f64)> = (0..40)
        .map(|i| (start + i * 15_000, i as f64 * 1.5))
        .collect();
    let (s, body) = remote_write_v1(
        &m.url("/api/v1/prom/remote/write"),
        &[
            (
                vec![("__name__", "rr_metric"), ("job", "a")],
                samples.clone(),
            ),
            (
                vec![("__name__", "rr_metric"), ("job", "b")],
                samples.iter().map(|(t, v)| (*t, v * 2.0)).collect(),
            ),
        ],
    );
    assert_eq!(s, 204, "{body}");

    let prom = Prometheus::start(
        &format!(
            r#"
global:
  scrape_interval: 1h
remote_read:
  - url: http://127.0.0.1:{}/api/v1/prom/remote/read
    read_recent: true
"#,
            m.port
        ),
        &[],
    );
    let last = samples.last().expect("samples");
    let t = last.0 as f64 / 1000.0;
    let v = eventually(Duration::from_secs(30), || {
        let v = get_json(&prom.url(&format!("/api/v1/query?query=rr_metric&time={t}")))?;
        (v["data"]["result"].as_array()?.len() == 2).then_some(v)
    })
    .unwrap_or_else(|| panic!("no remote-read result; prometheus log:\n{}", prom.log()));
    let mut got: Vec<(String, String)> = v["data"]["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|r| {
            (
                r["metric"]["job"].as_str().unwrap_or("").to_string(),
                r["value"][1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![("a".into(), "58.5".into()), ("b".into(), "117".into())]
    );

    // A range query through Prometheus returns every sample we hold.
    let url = prom.url(&format!(
        "/api/v1/query_range?query=rr_metric{{job=\"a\"}}&start={}&end={}&step=15",
        samples[0].0 as f64 / 1000.0,
        t
    ));
    let v = get_json(&url).expect("range");
    let values = v["data"]["result"][0]["values"].as_array().expect("values");
    assert_eq!(values.len(), samples.len(), "{v}");
    for (i, p) in values.iter().enumerate() {
        assert_eq!(p[1].as_str(), Some(format!("{}", samples[i].1).as_str()));
    }
}
