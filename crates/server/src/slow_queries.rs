//! The slowest recent queries, for the query UI's "slow queries" page
//! (`GET /api/v1/status/slow_queries`, m3query's own endpoint).
//!
//! A bounded record: the [`CAPACITY`] slowest `/api/v1/query` and `/api/v1/query_range`
//! requests that finished within the last [`WINDOW`], failed ones included (a query that
//! timed out is the one to look at). Each keeps the query text and its time parameters, the
//! duration, the HTTP status, when it finished and its trace id: never headers, credentials
//! or the client's address.
//!
//! The request layer calls [`SlowQueries::offer`] once per finished query. Once the record
//! is full, a query faster than every kept one is refused without a lock or an allocation:
//! the record publishes its admission floor (the fastest kept duration) and until when that
//! floor holds (the oldest entry's expiry) in two atomics. Past that moment, or for a query
//! at or above the floor, one lock is taken and the entry built. While the record is not full
//! (a quiet hour) every query enters, under that one lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

/// Queries kept.
pub const CAPACITY: usize = 50;
/// How long a query stays in the record after it finished.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// The time parameters of a query request, as the handler parsed them (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryParams {
    /// `/api/v1/query` at `time`.
    Instant {
        /// Evaluation time.
        time_ms: i64,
    },
    /// `/api/v1/query_range`.
    Range {
        /// Start of the range.
        start_ms: i64,
        /// End of the range.
        end_ms: i64,
        /// Resolution step.
        step_ms: i64,
    },
}

/// One recorded query, as the endpoint serves it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlowQuery {
    /// The PromQL text.
    pub query: String,
    /// `instant` or `range`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Instant queries: the evaluation time, unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<f64>,
    /// Range queries: start, unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<f64>,
    /// Range queries: end, unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<f64>,
    /// Range queries: step, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<f64>,
    /// Request duration as the client waited it (body sent), seconds.
    #[serde(rename = "durationSeconds")]
    pub duration_seconds: f64,
    /// HTTP status (499: the client went away).
    pub status: u16,
    /// When it finished, unix milliseconds.
    #[serde(rename = "finishedAt")]
    pub finished_at_ms: i64,
    /// The request's trace id (`X-Trace-Id`), when it had one.
    #[serde(rename = "traceId", skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Series fetched, when the query succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<u64>,
    /// Samples fetched, when the query succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
}

/// What the layer knows of a finished query; borrowed, so a refused offer costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// The PromQL text.
    pub query: &'a str,
    /// Its time parameters, when they parsed.
    pub params: Option<QueryParams>,
    /// How long the client waited.
    pub duration: Duration,
    /// HTTP status.
    pub status: u16,
    /// Trace id, if traced.
    pub trace_id: Option<&'a str>,
    /// Series fetched.
    pub series: Option<u64>,
    /// Samples fetched.
    pub samples: Option<u64>,
}

struct Entry {
    duration: Duration,
    /// Unix milliseconds.
    finished_ms: i64,
    query: SlowQuery,
}

/// The record. See the module documentation.
pub struct SlowQueries {
    entries: Mutex<Vec<Entry>>,
    /// Nanoseconds a query must reach to enter while [`Self::floor_until_ms`] has not passed.
    floor_nanos: AtomicU64,
    /// Unix milliseconds until which [`Self::floor_nanos`] holds (the oldest entry's expiry).
    floor_until_ms: AtomicU64,
}

impl Default for SlowQueries {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SlowQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlowQueries").finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

impl SlowQueries {
    /// An empty record.
    pub fn new() -> Self {
        SlowQueries {
            entries: Mutex::new(Vec::with_capacity(CAPACITY)),
            floor_nanos: AtomicU64::new(0),
            floor_until_ms: AtomicU64::new(0),
        }
    }

    /// Offers a finished query; see the module documentation.
    pub fn offer(&self, q: Finished<'_>) {
        self.offer_at(q, SystemTime::now());
    }

    fn offer_at(&self, q: Finished<'_>, now: SystemTime) {
        let now_ms = unix_ms(now);
        let nanos = u64::try_from(q.duration.as_nanos()).unwrap_or(u64::MAX);
        if nanos < self.floor_nanos.load(Ordering::Relaxed)
            && (now_ms as u64) < self.floor_until_ms.load(Ordering::Relaxed)
        {
            return;
        }
        let mut entries = self.entries.lock();
        let window_ms = WINDOW.as_millis() as i64;
        entries.retain(|e| now_ms - e.finished_ms < window_ms);
        if entries.len() >= CAPACITY {
            // Full: the fastest kept entry leaves if this one is slower.
            let Some((i, fastest)) = entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.duration)
                .map(|(i, e)| (i, e.duration))
            else {
                return;
            };
            if q.duration <= fastest {
                self.publish_floor(&entries);
                return;
            }
            entries.swap_remove(i);
        }
        let (kind, time, start, end, step) = match q.params {
            Some(QueryParams::Instant { time_ms }) => {
                ("instant", Some(secs(time_ms)), None, None, None)
            }
            Some(QueryParams::Range {
                start_ms,
                end_ms,
                step_ms,
            }) => (
                "range",
                None,
                Some(secs(start_ms)),
                Some(secs(end_ms)),
                Some(secs(step_ms)),
            ),
            None => ("unknown", None, None, None, None),
        };
        entries.push(Entry {
            duration: q.duration,
            finished_ms: now_ms,
            query: SlowQuery {
                query: q.query.to_string(),
                kind,
                time,
                start,
                end,
                step,
                duration_seconds: q.duration.as_secs_f64(),
                status: q.status,
                finished_at_ms: now_ms,
                trace_id: q.trace_id.map(str::to_string),
                series: q.series,
                samples: q.samples,
            },
        });
        self.publish_floor(&entries);
    }

    /// Publishes the admission floor for the lock-free check: while not full, everything
    /// enters (floor 0); when full, the fastest kept duration, until the oldest entry expires.
    fn publish_floor(&self, entries: &[Entry]) {
        if entries.len() < CAPACITY {
            self.floor_nanos.store(0, Ordering::Relaxed);
            self.floor_until_ms.store(0, Ordering::Relaxed);
            return;
        }
        let fastest = entries.iter().map(|e| e.duration).min().unwrap_or_default();
        let oldest = entries.iter().map(|e| e.finished_ms).min().unwrap_or(0);
        let until = oldest.saturating_add(WINDOW.as_millis() as i64).max(0) as u64;
        self.floor_nanos.store(
            u64::try_from(fastest.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.floor_until_ms.store(until, Ordering::Relaxed);
    }

    /// The record's queries finished within [`WINDOW`], slowest first.
    pub fn list(&self) -> Vec<SlowQuery> {
        self.list_at(SystemTime::now())
    }

    fn list_at(&self, now: SystemTime) -> Vec<SlowQuery> {
        let now_ms = unix_ms(now);
        let window_ms = WINDOW.as_millis() as i64;
        let entries = self.entries.lock();
        let mut live: Vec<&Entry> = entries
            .iter()
            .filter(|e| now_ms - e.finished_ms < window_ms)
            .collect();
        live.sort_by_key(|e| std::cmp::Reverse(e.duration));
        live.into_iter().map(|e| e.query.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(query: &str, ms: u64) -> Finished<'_> {
        Finished {
            query,
            params: Some(QueryParams::Range {
                start_ms: 1_000,
                end_ms: 61_000,
                step_ms: 15_000,
            }),
            duration: Duration::from_millis(ms),
            status: 200,
            trace_id: Some("abc"),
            series: Some(3),
            samples: Some(30),
        }
    }

    #[test]
    fn keeps_the_slowest_and_lists_them_slowest_first() {
        let r = SlowQueries::new();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..(CAPACITY as u64 + 20) {
            r.offer_at(q("up", i), t0);
        }
        let got = r.list_at(t0);
        assert_eq!(got.len(), CAPACITY);
        assert_eq!(got[0].duration_seconds, (CAPACITY as f64 + 19.0) / 1000.0);
        assert_eq!(got[CAPACITY - 1].duration_seconds, 20.0 / 1000.0);
        assert_eq!(got[0].kind, "range");
        assert_eq!(got[0].start, Some(1.0));
        assert_eq!(got[0].step, Some(15.0));
        assert_eq!(got[0].trace_id.as_deref(), Some("abc"));
        // Full: the floor refuses a fast query without taking the lock (nothing changes).
        let _held = r.entries.lock();
        // A refused offer returns at the atomic check, so holding the lock cannot block it.
        r.offer_at(q("fast", 1), t0);
    }

    #[test]
    fn entries_expire_after_the_window_and_the_floor_with_them() {
        let r = SlowQueries::new();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..CAPACITY {
            r.offer_at(q("slow", 500), t0);
        }
        r.offer_at(q("fast", 1), t0 + Duration::from_secs(10));
        assert!(r.list_at(t0).iter().all(|e| e.query == "slow"));
        let later = t0 + WINDOW + Duration::from_secs(1);
        assert!(r.list_at(later).is_empty());
        r.offer_at(q("fast", 1), later);
        let got = r.list_at(later);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].query, "fast");
    }

    #[test]
    fn serializes_without_absent_fields() {
        let r = SlowQueries::new();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        r.offer_at(
            Finished {
                query: "sum(rate(x[5m]))",
                params: Some(QueryParams::Instant { time_ms: 1_500 }),
                duration: Duration::from_millis(1500),
                status: 503,
                trace_id: None,
                series: None,
                samples: None,
            },
            t0,
        );
        let v = serde_json::to_value(r.list_at(t0)).expect("json");
        assert_eq!(
            v,
            serde_json::json!([{
                "query": "sum(rate(x[5m]))", "type": "instant", "time": 1.5,
                "durationSeconds": 1.5, "status": 503, "finishedAt": 1_000_000
            }])
        );
    }
}
