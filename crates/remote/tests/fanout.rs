//! A fan-out over several remote-read stores, in a process of its own so that its thread
//! counts are not disturbed by other tests: the stores are asked at the same time (a select
//! takes as long as the slowest store, not the sum), and no thread is started per select or
//! per store.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use m3query_model::{Labels, Matcher};
use m3query_remote::client::{RemoteConfig, RemoteReadClient};
use m3query_remote::read::{self, ReadLimits, ResponseType};
use m3query_storage::memory::MemStorage;
use m3query_storage::merge::{Member, MergeQueryable};
use m3query_storage::{
    Appendable, Context, LabelHints, Queryable, SelectHints, Warnings, collect_series,
};

/// What the test stores saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    /// The most threads this process had while a store was answering (0: not counted).
    max_threads: AtomicUsize,
}

/// This process's thread count (0 where /proc is missing).
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// One series `up{store=NAME}` in a store of its own.
fn store(name: &str) -> Arc<MemStorage> {
    let s = MemStorage::new();
    let mut app = s.appender();
    let l = Labels::from_pairs([("__name__", "up"), ("store", name)]);
    for t in 0..10 {
        app.append(&l, t * 1000, 1.0).expect("append");
    }
    app.commit().expect("commit");
    Arc::new(s)
}

/// A remote-read endpoint over `data` that answers each request (`SAMPLES`, one connection
/// per request) after `delay`, counting the process's threads while the request waits.
fn serve(data: Arc<MemStorage>, delay: Duration, seen: Arc<Seen>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { return };
            answer(&mut s, &data, delay, &seen);
        }
    });
    format!("http://{addr}/api/v1/read")
}

fn answer(s: &mut TcpStream, data: &MemStorage, delay: Duration, seen: &Seen) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let (head_end, len) = loop {
        let n = s.read(&mut tmp).unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (p + 4, len);
        }
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut tmp).unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.max_threads.fetch_max(threads(), Ordering::SeqCst);
    std::thread::sleep(delay);
    let req = read::decode_request(&buf[head_end..head_end + len], 1 << 20).expect("request");
    let body = read::read_samples(data, &Context::background(), &req, &ReadLimits::default())
        .expect("read");
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Encoding: snappy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        ResponseType::Samples.content_type(),
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&body);
}

/// A fan-out over a local store (`up{store="local"}`) and `n` remote ones answering after
/// `delay`.
fn fan_out(
    n: usize,
    delay: Duration,
    seen: &Arc<Seen>,
    rt: &tokio::runtime::Runtime,
) -> MergeQueryable {
    let mut members = vec![Member::required("local", store("local"))];
    for i in 0..n {
        let name = format!("r{i}");
        let url = serve(store(&name), delay, seen.clone());
        let client = RemoteReadClient::new(
            RemoteConfig {
                name: name.clone(),
                url,
                timeout: Duration::from_secs(10),
                headers: vec![],
                auth: None,
                required_matchers: vec![],
                prefer_streamed: false,
                max_response_bytes: 1 << 20,
                max_samples: 0,
            },
            rt.handle().clone(),
        )
        .expect("client");
        members.push(Member {
            name,
            queryable: Arc::new(client),
            partial_ok: false,
            read_recent: true,
        });
    }
    MergeQueryable::new(members)
}

/// Selects `up` over the fan-out; returns the stores that answered, by name.
fn select_up(m: &MergeQueryable) -> (Vec<String>, Warnings) {
    let q = m.querier(0, 100_000).expect("querier");
    let mut set = q
        .select(
            &Context::background(),
            true,
            &SelectHints::default(),
            &[Matcher::equal("__name__", "up")],
        )
        .expect("select");
    let (series, w) = collect_series(set.as_mut(), 0, 100_000).expect("collect");
    let stores = series
        .iter()
        .map(|s| s.labels.get("store").unwrap_or("").to_string())
        .collect();
    (stores, w)
}

fn store_values(m: &MergeQueryable) -> Vec<String> {
    let q = m.querier(0, 100_000).expect("querier");
    q.label_values(&Context::background(), "store", &LabelHints::default(), &[])
        .expect("label values")
        .values
}

#[test]
fn fan_out_asks_every_store_at_once_without_a_thread_per_store() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // No thread per select or per store: while eight stores are being asked, this process
    // has no more threads than between queries.
    let seen = Arc::new(Seen::default());
    let m = fan_out(8, Duration::ZERO, &seen, &rt);
    let mut all: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    all.insert(0, "local".into());
    for _ in 0..2 {
        assert_eq!(select_up(&m).0, all, "warm-up");
    }
    let idle = threads();
    seen.max_threads.store(0, Ordering::SeqCst);
    seen.requests.store(0, Ordering::SeqCst);
    for _ in 0..20 {
        let (stores, w) = select_up(&m);
        assert_eq!(stores, all);
        assert!(w.is_empty(), "{w}");
        assert_eq!(store_values(&m), all);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 20 * 2 * 8);
    if idle > 0 {
        let busy = seen.max_threads.load(Ordering::SeqCst);
        assert!(
            busy <= idle,
            "{busy} threads while the stores were asked, {idle} between queries"
        );
        assert!(threads() <= idle, "threads left behind");
    }

    // Concurrency: three stores each answering after 500 ms make a select of about 500 ms,
    // not 1.5 s (a generous bound: this is about overlap, not speed).
    let seen = Arc::new(Seen::default());
    let m = fan_out(3, Duration::from_millis(500), &seen, &rt);
    let t = Instant::now();
    let (stores, _) = select_up(&m);
    let took = t.elapsed();
    assert_eq!(stores, vec!["local", "r0", "r1", "r2"]);
    assert!(took < Duration::from_millis(1200), "select took {took:?}");
    let t = Instant::now();
    assert_eq!(store_values(&m), vec!["local", "r0", "r1", "r2"]);
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(1200),
        "label values took {took:?}"
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), 6);
}
