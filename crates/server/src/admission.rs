//! Admission control: how many requests of one kind run at once, and how many may wait.
//!
//! A [`Gate`] is a semaphore with a bounded waiting line. Queries get one (`query.maxConcurrent`,
//! `query.maxQueued`) and remote-write decoding another (`http.remoteWriteConcurrency`,
//! `http.remoteWriteQueue`), so neither can take all the memory and threads, and neither
//! starves the other or the metadata and operational routes, which have no gate. A request
//! that finds the line full is refused at once (503, retried by Prometheus's remote-write
//! sender and by Grafana); one whose deadline passes while it waits is refused then.
//!
//! The permit moves into the blocking work and is released when that work ends, not when
//! the response is sent: a query answered at its deadline keeps its slot until it has
//! observed the cancellation and stopped, so the limit bounds the work really running.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::MetricsRegistry;

/// Why a request was not admitted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    /// Every slot is taken and the waiting line is full.
    #[error(
        "too many concurrent {what}: {limit} running and {waiting} waiting in the queue, the most allowed ({limit_key}, {queue_key}); try again later"
    )]
    QueueFull {
        /// What is admitted ("queries").
        what: &'static str,
        /// Slots.
        limit: usize,
        /// Requests waiting.
        waiting: usize,
        /// The config key of the slot count.
        limit_key: &'static str,
        /// The config key of the waiting line's length.
        queue_key: &'static str,
    },
    /// The request's deadline passed while it waited.
    #[error(
        "{what} timed out after waiting {waited:?} in the queue for one of {limit} slots ({limit_key})"
    )]
    Timeout {
        /// What is admitted ("queries").
        what: &'static str,
        /// How long it waited.
        waited: Duration,
        /// Slots.
        limit: usize,
        /// The config key of the slot count.
        limit_key: &'static str,
    },
    /// The gate was closed for shutdown.
    #[error("the server is shutting down")]
    Closed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    pool: &'static str,
    reason: &'static str,
}

/// The gates' figures on `/metrics`, one series per pool.
#[derive(Clone, Debug)]
pub struct AdmissionMetrics {
    in_flight: Family<PoolLabels, Gauge>,
    waiting: Family<PoolLabels, Gauge>,
    limit: Family<PoolLabels, Gauge>,
    rejected: Family<RejectLabels, Counter>,
    wait: Family<PoolLabels, Histogram>,
}

impl Default for AdmissionMetrics {
    fn default() -> Self {
        AdmissionMetrics {
            in_flight: Family::default(),
            waiting: Family::default(),
            limit: Family::default(),
            rejected: Family::default(),
            wait: Family::new_with_constructor(|| {
                // 1ms .. ~65s: from no wait to a whole query timeout.
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.001, 2.0, 17,
                ))
            }),
        }
    }
}

impl AdmissionMetrics {
    /// Registers the gauges and counters, once for all gates.
    pub fn register(&self, r: &mut MetricsRegistry) {
        r.register(
            "m3query_admission_in_flight",
            "Requests holding an execution slot, by pool (query, remote_write)",
            self.in_flight.clone(),
        );
        r.register(
            "m3query_admission_waiting",
            "Requests waiting for an execution slot, by pool",
            self.waiting.clone(),
        );
        r.register(
            "m3query_admission_limit",
            "Execution slots, by pool (query.maxConcurrent, http.remoteWriteConcurrency)",
            self.limit.clone(),
        );
        r.register(
            "m3query_admission_rejected",
            "Requests refused by admission control, by pool and reason (queue_full: 503 at once; timeout: the deadline passed while waiting)",
            self.rejected.clone(),
        );
        r.register(
            "m3query_admission_wait_seconds",
            "Time admitted requests waited for an execution slot, by pool",
            self.wait.clone(),
        );
    }
}

/// What a gate is called in metrics and messages.
#[derive(Clone, Copy, Debug)]
pub struct GateSpec {
    /// The `pool` label.
    pub pool: &'static str,
    /// What is admitted, for messages ("queries").
    pub what: &'static str,
    /// The config key of the slot count, named in refusals.
    pub limit_key: &'static str,
    /// The config key of the waiting line's length, named in refusals.
    pub queue_key: &'static str,
}

/// A semaphore with a bounded waiting line.
#[derive(Debug)]
pub struct Gate {
    spec: GateSpec,
    slots: Arc<Semaphore>,
    limit: usize,
    max_waiting: usize,
    waiting: AtomicUsize,
    metrics: AdmissionMetrics,
}

/// An execution slot; released on drop.
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    in_flight: Gauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// Decrements the waiting count however the wait ends (admitted, timed out, or the client
/// went away and the future was dropped).
struct Waiting<'a>(&'a Gate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge(&self.0.metrics.waiting).dec();
    }
}

impl Gate {
    /// A gate with `limit` slots (at least 1) and room for `max_waiting` waiters.
    pub fn new(
        spec: GateSpec,
        limit: usize,
        max_waiting: usize,
        metrics: AdmissionMetrics,
    ) -> Gate {
        let limit = limit.max(1);
        let labels = PoolLabels { pool: spec.pool };
        metrics.limit.get_or_create(&labels).set(limit as i64);
        // Create every series up front, so dashboards see zeros rather than gaps.
        let _ = metrics.in_flight.get_or_create(&labels);
        let _ = metrics.waiting.get_or_create(&labels);
        for reason in ["queue_full", "timeout"] {
            let _ = metrics.rejected.get_or_create(&RejectLabels {
                pool: spec.pool,
                reason,
            });
        }
        Gate {
            spec,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            max_waiting,
            waiting: AtomicUsize::new(0),
            metrics,
        }
    }

    fn gauge(&self, f: &Family<PoolLabels, Gauge>) -> Gauge {
        f.get_or_create(&PoolLabels {
            pool: self.spec.pool,
        })
        .clone()
    }

    fn reject(&self, reason: &'static str) {
        self.metrics
            .rejected
            .get_or_create(&RejectLabels {
                pool: self.spec.pool,
                reason,
            })
            .inc();
    }

    /// Waits for a slot until `deadline` (forever with `None`); refuses at once when
    /// `max_waiting` requests are already waiting.
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<Permit, Refused> {
        let started = Instant::now();
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Refused::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
                self.gauge(&self.metrics.waiting).inc();
                let _w = Waiting(self);
                if waiting >= self.max_waiting {
                    self.reject("queue_full");
                    return Err(Refused::QueueFull {
                        what: self.spec.what,
                        limit: self.limit,
                        waiting,
                        limit_key: self.spec.limit_key,
                        queue_key: self.spec.queue_key,
                    });
                }
                let acquire = self.slots.clone().acquire_owned();
                let got = match deadline {
                    None => acquire.await,
                    Some(d) => {
                        match tokio::time::timeout_at(tokio::time::Instant::from_std(d), acquire)
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => {
                                self.reject("timeout");
                                return Err(Refused::Timeout {
                                    what: self.spec.what,
                                    waited: started.elapsed(),
                                    limit: self.limit,
                                    limit_key: self.spec.limit_key,
                                });
                            }
                        }
                    }
                };
                got.map_err(|_| Refused::Closed)?
            }
        };
        let in_flight = self.gauge(&self.metrics.in_flight);
        in_flight.inc();
        self.metrics
            .wait
            .get_or_create(&PoolLabels {
                pool: self.spec.pool,
            })
            .observe(started.elapsed().as_secs_f64());
        Ok(Permit {
            _slot: permit,
            in_flight,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(limit: usize, queue: usize) -> Gate {
        Gate::new(
            GateSpec {
                pool: "test",
                what: "tests",
                limit_key: "l",
                queue_key: "q",
            },
            limit,
            queue,
            AdmissionMetrics::default(),
        )
    }

    #[tokio::test]
    async fn waits_then_refuses_when_the_line_is_full() {
        let g = Arc::new(gate(1, 1));
        let first = g.acquire(None).await.expect("free slot");
        // One may wait; the next is refused at once.
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.acquire(None).await.map(drop) });
        while g.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            g.acquire(None).await,
            Err(Refused::QueueFull { waiting: 1, .. })
        ));
        drop(first);
        waiter.await.expect("join").expect("admitted after release");
        assert_eq!(g.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_deadline_ends_the_wait() {
        let g = gate(1, 10);
        let _held = g.acquire(None).await.expect("slot");
        let t = Instant::now();
        let r = g
            .acquire(Some(Instant::now() + Duration::from_millis(50)))
            .await;
        assert!(matches!(r, Err(Refused::Timeout { .. })), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(g.waiting.load(Ordering::Acquire), 0);
    }
}
