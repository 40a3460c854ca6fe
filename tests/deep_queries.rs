//! Long and deep expressions over HTTP: every one is answered (a result, or a 400 `bad_data`
//! in Prometheus's error shape) and the server stays up. A 1,200-term `1+1+...` used to abort
//! the process with a stack overflow.

mod common;

use common::{M3Query, client};
use serde_json::Value;

fn post(m: &M3Query, path: &str, query: &str) -> (u16, String) {
    let r = client()
        .post(m.url(path))
        .form(&[("query", query), ("time", "100")])
        .send()
        .expect("request");
    (r.status().as_u16(), r.text().unwrap_or_default())
}

fn chain(term: &str, op: &str, n: usize) -> String {
    vec![term; n].join(op)
}

#[test]
fn long_chains_and_deep_nesting_are_answered() {
    let m = M3Query::start("");

    // The tester's request: a 2.4 KB GET.
    let q = chain("1", "+", 1_200);
    let r = client()
        .get(m.url("/api/v1/query"))
        .query(&[("query", q.as_str()), ("time", "100")])
        .send()
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().expect("json");
    assert_eq!(v["data"]["result"][1], "1200", "{v}");

    for q in [
        chain("up", " or ", 1_200),
        chain("up", " * ", 1_200),
        chain("2", " ^ ", 1_200),
    ] {
        let (s, body) = post(&m, "/api/v1/query", &q);
        assert_eq!(s, 200, "{}: {body}", &q[..20]);
        let (s, body) = post(&m, "/api/v1/query_range?start=0&end=100&step=10", &q);
        assert_eq!(s, 200, "{}: {body}", &q[..20]);
        // Deeper than serde_json reads back (128 levels): checked as text.
        let (s, body) = post(&m, "/api/v1/parse_query", &q);
        assert_eq!(s, 200, "{}: {body}", &q[..20]);
        assert!(
            body.starts_with("{\"status\":\"success\",\"data\":{"),
            "{}",
            &body[..40]
        );
        assert!(body.contains("\"type\":\"binaryExpr\""));
        let (s, body) = post(&m, "/api/v1/format_query", &q);
        assert_eq!(s, 200, "{}: {body}", &q[..20]);
    }

    // Too deep: 400 bad_data, as Prometheus shapes errors.
    for (path, q) in [
        (
            "/api/v1/query",
            format!("{}up{}", "(".repeat(1_500), ")".repeat(1_500)),
        ),
        ("/api/v1/parse_query", format!("{}up", "-".repeat(5_000))),
        (
            "/api/v1/format_query",
            format!("{}up{}", "abs(".repeat(2_000), ")".repeat(2_000)),
        ),
        ("/api/v1/query", chain("1", "+", 100_000)),
        ("/api/v1/parse_query", chain("up", " or ", 100_000)),
        ("/api/v1/query_exemplars", chain("up", " or ", 100_000)),
    ] {
        let (s, body) = post(&m, path, &q);
        assert_eq!(s, 400, "{path} {}: {body}", &q[..20]);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["status"], "error", "{v}");
        assert_eq!(v["errorType"], "bad_data", "{v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains("parse error: expression nested too deeply"),
            "{path}: {msg}"
        );
    }

    // Still up.
    let (s, body) = post(&m, "/api/v1/query", "1");
    assert_eq!(s, 200, "{body}");
    let r = client().get(m.url("/health")).send().expect("health");
    assert_eq!(r.status().as_u16(), 200);
}
