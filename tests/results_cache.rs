//! The range query results cache (`query.resultsCache`), black-box: a dashboard's 24h panel
//! refreshed as its window moves, with late and out-of-order samples written into what is
//! cached. Every answer must equal, byte for byte and with the same `M3-Series-Count`, the
//! same server's answer with the cache skipped (`nocache=1`), and the metrics must show the
//! cache was used.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{M3Query, client, remote_write_v1};

const STEP_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn start() -> M3Query {
    M3Query::start(
        "  outOfOrderWindow: 48h\n\
         query:\n  resultsCache:\n    enabled: true\n    splitInterval: 6h\n    freshness: 10m\n",
    )
}

/// 24h of `req_total` (8 series, 2 jobs) at 15s up to now, written hour by hour (in order
/// per series, as a Prometheus would send it).
fn load(m: &M3Query, now: i64) {
    let url = m.url("/api/v1/write");
    let first = now - 24 * HOUR_MS - 15 * 60_000;
    let first = first - first % 15_000;
    let instances: Vec<String> = (0..8).map(|i| format!("host-{i}")).collect();
    let mut from = first;
    while from <= now {
        let to = (from + HOUR_MS).min(now + 1);
        let series: Vec<common::TestSeries<'_>> = instances
            .iter()
            .enumerate()
            .map(|(i, inst)| {
                let samples = (from..to)
                    .step_by(15_000)
                    .map(|t| (t, ((t - first) / 15_000 * (i as i64 + 1)) as f64))
                    .collect();
                (
                    vec![
                        ("__name__", "req_total"),
                        ("job", if i % 2 == 0 { "api" } else { "web" }),
                        ("instance", inst.as_str()),
                    ],
                    samples,
                )
            })
            .collect();
        let (s, body) = remote_write_v1(&url, &series);
        assert_eq!(s, 204, "{body}");
        from = to;
    }
}

/// A query_range answer: status, body, `M3-Series-Count`.
fn query_range(
    m: &M3Query,
    q: &str,
    start: i64,
    end: i64,
    extra: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut params: Vec<(String, String)> = vec![
        ("query".into(), q.into()),
        ("start".into(), (start / 1000).to_string()),
        ("end".into(), (end / 1000).to_string()),
        ("step".into(), (STEP_MS / 1000).to_string()),
    ];
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut r = client().get(m.url("/api/v1/query_range")).query(&params);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().expect("query_range");
    let status = r.status().as_u16();
    let count = r
        .headers()
        .get("M3-Series-Count")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, r.text().unwrap_or_default(), count)
}

/// Asks with and without the cache; they must agree. Returns the body.
fn same_as_uncached(m: &M3Query, q: &str, start: i64, end: i64) -> String {
    let cached = query_range(m, q, start, end, &[], &[]);
    let uncached = query_range(m, q, start, end, &[("nocache", "1")], &[]);
    assert_eq!(cached.0, 200, "{}", cached.1);
    if cached.1 != uncached.1 {
        // The bodies are large: show where they part.
        let at = cached
            .1
            .bytes()
            .zip(uncached.1.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(cached.1.len().min(uncached.1.len()));
        let around = |s: &str| s[at.saturating_sub(200)..(at + 200).min(s.len())].to_string();
        panic!(
            "{q} over [{start}, {end}]: cached and uncached answers differ at byte {at}:\n cached:   ...{}...\n uncached: ...{}...",
            around(&cached.1),
            around(&uncached.1)
        );
    }
    assert_eq!(cached.2, uncached.2, "{q}: M3-Series-Count differs");
    cached.1
}

/// The value of a counter on `/metrics` (summed over its label sets).
fn metric(m: &M3Query, name: &str) -> f64 {
    let text = client()
        .get(m.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let rest = &l[name.len()..];
            rest.starts_with(' ') || rest.starts_with('{')
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn moving_window_with_late_and_out_of_order_writes() {
    let m = start();
    let now = now_ms();
    load(&m, now);
    let queries = ["sum by (job) (rate(req_total[5m]))", "req_total"];

    // A 24h panel, its window aligned to the step as Grafana aligns it.
    let end = now - now % STEP_MS;
    let start = end - 24 * HOUR_MS;
    for q in queries {
        same_as_uncached(&m, q, start, end);
    }
    let hits_cold = metric(&m, "m3query_results_cache_hits_total");

    // Refreshes: the window moves by a step each time.
    for k in 1..=3 {
        for q in queries {
            same_as_uncached(&m, q, start + k * STEP_MS, end + k * STEP_MS);
        }
    }
    let hits = metric(&m, "m3query_results_cache_hits_total");
    assert!(
        hits > hits_cold,
        "refreshes must reuse cached parts: hits {hits_cold} -> {hits}"
    );
    let (s, e) = (start + 3 * STEP_MS, end + 3 * STEP_MS);
    let before = query_range(&m, queries[0], s, e, &[], &[]).1;
    let before_raw = query_range(&m, queries[1], s, e, &[], &[]).1;

    // A late sample: a new series whose only sample is 12h old, in the middle of what the
    // cache holds.
    let mid = e - 12 * HOUR_MS - 7_000;
    let (st, body) = remote_write_v1(
        &m.url("/api/v1/write"),
        &[(
            vec![
                ("__name__", "req_total"),
                ("job", "api"),
                ("instance", "late-host"),
            ],
            vec![(mid, 5.0)],
        )],
    );
    assert_eq!(st, 204, "{body}");
    let after_raw = same_as_uncached(&m, queries[1], s, e);
    assert_ne!(before_raw, after_raw, "the late series must show");
    assert!(after_raw.contains("late-host"));

    // An out-of-order sample into an existing series, 8h back: a counter reset rate() sees.
    let ooo = e - 8 * HOUR_MS + 7_000;
    let (st, body) = remote_write_v1(
        &m.url("/api/v1/write"),
        &[(
            vec![
                ("__name__", "req_total"),
                ("job", "web"),
                ("instance", "host-1"),
            ],
            vec![(ooo, 0.0)],
        )],
    );
    assert_eq!(st, 204, "{body}");
    let after = same_as_uncached(&m, queries[0], s, e);
    assert_ne!(
        before, after,
        "the out-of-order sample must change the rate"
    );
    assert!(
        metric(&m, "m3query_results_cache_invalidations_total") > 0.0,
        "the writes must have dropped cached parts"
    );

    // And the window keeps moving, from what is cached again.
    let hits = metric(&m, "m3query_results_cache_hits_total");
    for q in queries {
        same_as_uncached(&m, q, s + STEP_MS, e + STEP_MS);
        same_as_uncached(&m, q, s + 2 * STEP_MS, e + 2 * STEP_MS);
    }
    assert!(metric(&m, "m3query_results_cache_hits_total") > hits);
    assert!(metric(&m, "m3query_results_cache_bytes") > 0.0);
}

#[test]
fn bypasses_and_uncacheable_queries_answer_as_uncached() {
    let m = start();
    let now = now_ms();
    load(&m, now);
    let end = now - now % STEP_MS;
    let start = end - 24 * HOUR_MS;
    let bypass = |m: &M3Query| {
        let text = client()
            .get(m.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .expect("metrics");
        text.lines()
            .find(|l| {
                l.starts_with("m3query_results_cache_queries_total")
                    && l.contains("outcome=\"bypass\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = bypass(&m);
    // Cache-Control: no-store skips the cache, as Cortex's query-frontend.
    let (s, _, _) = query_range(
        &m,
        "req_total",
        start,
        end,
        &[],
        &[("Cache-Control", "no-store")],
    );
    assert_eq!(s, 200);
    // `@ end()` and `sort()` depend on the window; stats=all reports the whole query.
    for q in [
        "req_total @ end()",
        "sort(sum by (job) (req_total))",
        "req_total offset -5m",
    ] {
        same_as_uncached(&m, q, start, end);
        same_as_uncached(&m, q, start + STEP_MS, end + STEP_MS);
    }
    let (s, body, _) = query_range(&m, "req_total", start, end, &[("stats", "all")], &[]);
    assert_eq!(s, 200);
    assert!(body.contains("\"stats\""), "{body}");
    // An unaligned window is answered but not cached.
    same_as_uncached(&m, "req_total", start + 7_000, end);
    assert!(bypass(&m) >= before + 8.0, "bypasses counted");
    // Errors are the engine's.
    let (s, body, _) = query_range(&m, "rate(req_total)", start, end, &[], &[]);
    assert_eq!(s, 400, "{body}");
}
