//! The bounded export queue between request threads and an exporter.
//!
//! Why not the SDK's `BatchSpanProcessor`: it drops spans when its queue is full but keeps
//! the count private (it only logs it at shutdown), and we must count drops on `/metrics`
//! by reason and backend. So this processor does the same job with the accounting we need:
//!
//! - `on_end` (on the request's thread) only does a `try_send` into a bounded channel of
//!   `queueSize` spans; a full queue drops the span and counts `queue_full`. Nothing on the
//!   request path waits, allocates per batch, touches the network or takes a lock shared
//!   with the exporter.
//! - One worker thread per exporter runs a single-threaded tokio runtime (so tonic, reqwest
//!   and UDP exporters all work whatever runtime the application uses, and never share its
//!   workers). Every `flush_interval` (Jaeger's `bufferFlushInterval`), or as soon as the
//!   queue is half full, it drains the queue and exports in batches of at most `max_batch`
//!   spans, each export bounded by `export_timeout`. It is not woken per span: that would
//!   cost every sampled request a futex wake-up. An early (half-full) drain comes at least
//!   `min_flush_interval` after the previous one (LightStep's `min_reporting_period`), so a
//!   burst costs a few large exports rather than many small ones.
//! - `verbose` logs every export at info (LightStep's `verbose`), `log_spans` every span
//!   (Jaeger's `logSpans`).
//! - `force_flush` and `shutdown_with_timeout` wait at most their timeout; shutdown drains
//!   what is queued, exports it, and stops the thread.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::logging::LogLimiter;
use crate::metrics::{BackendCounters, DropReason};

thread_local! {
    static EXPORT_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is one of our exporter or sampler threads. The OpenTelemetry
/// layer ignores spans opened there, so exporting never produces spans to export.
pub(crate) fn on_export_thread() -> bool {
    EXPORT_THREAD.with(|c| c.get())
}

pub(crate) fn mark_export_thread() {
    EXPORT_THREAD.with(|c| c.set(true));
}

/// Who counts exported and failed spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Accounting {
    /// The exporter counts what it sent and lost itself (our Jaeger exporters, which know
    /// about single spans too large for a datagram and partial sends).
    Exporter,
    /// Counted here from the export result (OTLP: all or nothing per batch).
    ByResult,
}

#[derive(Clone, Debug)]
pub(crate) struct QueueOptions {
    pub queue_size: usize,
    pub max_batch: usize,
    pub flush_interval: Duration,
    pub export_timeout: Duration,
    /// Shortest time between two drains when the queue fills faster than `flush_interval`.
    pub min_flush_interval: Duration,
    pub log_spans: bool,
    /// Log each export (spans, result, time taken) at info.
    pub verbose: bool,
    pub accounting: Accounting,
    pub thread_name: String,
}

enum Control {
    SetResource(Resource),
    Flush(std::sync::mpsc::SyncSender<()>),
    Shutdown(std::sync::mpsc::SyncSender<()>),
}

/// A `SpanProcessor` that exports sampled spans from a bounded queue on its own thread.
pub(crate) struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    /// Wakes the worker early; notified when free capacity falls to `wake_below`.
    wake: Arc<Notify>,
    wake_below: usize,
    queue_full: prometheus_client::metrics::counter::Counter,
    after_shutdown: prometheus_client::metrics::counter::Counter,
    shut_down: AtomicBool,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    log_full: Arc<LogLimiter>,
}

impl fmt::Debug for QueueProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueProcessor")
            .field("capacity", &self.spans.max_capacity())
            .finish()
    }
}

impl QueueProcessor {
    /// Starts the worker thread and builds the exporter there with `make` (inside the
    /// worker's runtime: gRPC channels spawn onto it). Fails when `make` fails or the OS
    /// refuses a thread or a runtime.
    pub(crate) fn start<E, F>(
        make: F,
        opts: QueueOptions,
        counters: BackendCounters,
    ) -> Result<QueueProcessor, String>
    where
        E: SpanExporter + 'static,
        F: FnOnce() -> Result<E, String> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(opts.queue_size.max(1));
        let wake = Arc::new(Notify::new());
        let worker_wake = wake.clone();
        let wake_below = opts.queue_size.max(1) / 2;
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("export runtime: {e}"))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        let worker_counters = counters.clone();
        let handle = std::thread::Builder::new()
            .name(opts.thread_name.clone())
            .spawn(move || {
                mark_export_thread();
                let exporter = {
                    let _enter = runtime.enter();
                    make()
                };
                match exporter {
                    Ok(e) => {
                        let _ = ready_tx.send(Ok(()));
                        runtime.block_on(worker(e, opts, rx, ctl_rx, worker_wake, worker_counters));
                    }
                    Err(msg) => {
                        let _ = ready_tx.send(Err(msg));
                    }
                }
            })
            .map_err(|e| format!("export thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                let _ = handle.join();
                return Err(msg);
            }
            Err(_) => return Err("the export thread died while starting".into()),
        }
        Ok(QueueProcessor {
            spans: tx,
            control: ctl_tx,
            wake,
            wake_below,
            queue_full: counters.dropped(DropReason::QueueFull),
            after_shutdown: counters.dropped(DropReason::Shutdown),
            shut_down: AtomicBool::new(false),
            worker: Mutex::new(Some(handle)),
            log_full: Arc::new(LogLimiter::new(Duration::from_secs(60))),
        })
    }

    fn request(
        &self,
        make: impl FnOnce(std::sync::mpsc::SyncSender<()>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        self.control
            .send(make(done_tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        match done_rx.recv_timeout(timeout) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(
                OTelSdkError::InternalFailure("the export thread is gone".into()),
            ),
        }
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.shut_down.load(Ordering::Relaxed) {
            self.after_shutdown.inc();
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => {
                if self.spans.capacity() <= self.wake_below {
                    self.wake.notify_one();
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queue_full.inc();
                if let Some(suppressed) = self.log_full.check() {
                    tracing::warn!(
                        target: "m3query::tracing",
                        suppressed,
                        capacity = self.spans.max_capacity(),
                        "trace export queue is full, dropping spans (the backend is slow or down)"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.after_shutdown.inc();
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        self.request(Control::Flush, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let r = self.request(Control::Shutdown, timeout);
        if r.is_ok()
            && let Some(h) = self.worker.lock().take()
        {
            // The worker has answered and only returns from here on.
            let _ = h.join();
        }
        // On timeout the thread is left to finish on its own (its export is bounded).
        r
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.control.send(Control::SetResource(resource.clone()));
    }
}

async fn worker<E: SpanExporter>(
    mut exporter: E,
    opts: QueueOptions,
    mut rx: mpsc::Receiver<SpanData>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
    wake: Arc<Notify>,
    counters: BackendCounters,
) {
    let mut tick = tokio::time::interval(opts.flush_interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout_log = LogLimiter::new(Duration::from_secs(60));
    let ctx = ExportCtx {
        opts: &opts,
        counters: &counters,
        timeout_log: &timeout_log,
    };
    // The worker never waits on the span channel itself: a receiver parked there would be
    // woken (a futex syscall on the request's thread) for every span. It drains on the flush
    // tick, and early when the queue is half full (but not sooner than `min_flush_interval`
    // after the last drain: then it drains when that is over).
    let mut last_drain = tokio::time::Instant::now();
    let mut early: Option<tokio::time::Instant> = None;
    loop {
        let early_at = early.unwrap_or_else(|| last_drain + opts.flush_interval);
        tokio::select! {
            biased;
            c = ctl.recv() => match c {
                Some(Control::SetResource(r)) => exporter.set_resource(&r),
                Some(Control::Flush(done)) => {
                    ctx.drain(&exporter, &mut rx).await;
                    let _ = exporter.force_flush();
                    let _ = done.try_send(());
                }
                Some(Control::Shutdown(done)) => {
                    rx.close();
                    ctx.drain(&exporter, &mut rx).await;
                    let _ = exporter.shutdown();
                    let _ = done.try_send(());
                    return;
                }
                // The processor was dropped without shutdown: stop quietly.
                None => return,
            },
            _ = wake.notified(), if early.is_none() => {
                let allowed = last_drain + opts.min_flush_interval;
                if tokio::time::Instant::now() >= allowed {
                    ctx.drain(&exporter, &mut rx).await;
                    last_drain = tokio::time::Instant::now();
                } else {
                    early = Some(allowed);
                }
            }
            _ = tokio::time::sleep_until(early_at), if early.is_some() => {
                early = None;
                ctx.drain(&exporter, &mut rx).await;
                last_drain = tokio::time::Instant::now();
            }
            _ = tick.tick() => {
                early = None;
                ctx.drain(&exporter, &mut rx).await;
                last_drain = tokio::time::Instant::now();
            }
        }
    }
}

struct ExportCtx<'a> {
    opts: &'a QueueOptions,
    counters: &'a BackendCounters,
    timeout_log: &'a LogLimiter,
}

impl ExportCtx<'_> {
    /// Exports everything queued, in batches of at most `max_batch`.
    async fn drain<E: SpanExporter>(&self, exporter: &E, rx: &mut mpsc::Receiver<SpanData>) {
        let max_batch = self.opts.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch.min(rx.len()));
        while let Ok(s) = rx.try_recv() {
            batch.push(s);
            if batch.len() >= max_batch {
                self.export(exporter, std::mem::take(&mut batch)).await;
            }
        }
        if !batch.is_empty() {
            self.export(exporter, batch).await;
        }
    }

    async fn export<E: SpanExporter>(&self, exporter: &E, batch: Vec<SpanData>) {
        let n = batch.len() as u64;
        if self.opts.log_spans {
            for s in &batch {
                tracing::info!(
                    target: "m3query::tracing",
                    trace_id = %s.span_context.trace_id(),
                    span_id = %s.span_context.span_id(),
                    parent_span_id = %s.parent_span_id,
                    operation = %s.name,
                    duration_us = s
                        .end_time
                        .duration_since(s.start_time)
                        .map(|d| d.as_micros() as u64)
                        .unwrap_or(0),
                    "reporting span"
                );
            }
        }
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.opts.export_timeout, exporter.export(batch)).await;
        if self.opts.verbose {
            let outcome = match &result {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(e)) => format!("failed: {e}"),
                Err(_) => "timed out".to_string(),
            };
            tracing::info!(
                target: "m3query::tracing",
                spans = n,
                elapsed_ms = started.elapsed().as_millis() as u64,
                outcome = %outcome,
                "reported spans"
            );
        }
        match result {
            Ok(r) => {
                if self.opts.accounting == Accounting::ByResult {
                    match r {
                        Ok(()) => self.counters.exported.inc_by(n),
                        Err(_) => {
                            self.counters.add_dropped(DropReason::ExportFailed, n);
                            0
                        }
                    };
                }
            }
            Err(_) => {
                self.counters.add_dropped(DropReason::ExportTimeout, n);
                if let Some(suppressed) = self.timeout_log.check() {
                    tracing::warn!(
                        target: "m3query::tracing",
                        suppressed,
                        timeout_ms = self.opts.export_timeout.as_millis() as u64,
                        spans = n,
                        "trace export timed out, spans dropped"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use std::time::Instant;

    #[derive(Debug, Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(Instant, usize)>>>);
    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().push((Instant::now(), batch.len()));
            Ok(())
        }
    }

    fn sampled(i: u64) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(u128::from(i)),
                SpanId::from(i),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "s".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes: vec![],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    /// Half-full wake-ups come no sooner than `min_flush_interval` after the last drain.
    #[test]
    fn early_drains_keep_the_minimum_interval() {
        let rec = Recorder::default();
        let exports = rec.0.clone();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let p = QueueProcessor::start(
            move || Ok(rec),
            QueueOptions {
                queue_size: 10,
                max_batch: 10,
                flush_interval: Duration::from_secs(60),
                export_timeout: Duration::from_secs(5),
                min_flush_interval: Duration::from_millis(400),
                log_spans: false,
                verbose: false,
                accounting: Accounting::ByResult,
                thread_name: "test-min-flush".into(),
            },
            metrics.backend("test"),
        )
        .expect("processor");
        std::thread::sleep(Duration::from_millis(450));
        let first = Instant::now();
        for i in 1..=5 {
            p.on_end(sampled(i));
        }
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(
            exports.lock().len(),
            1,
            "the first half-full queue drains at once"
        );
        for i in 6..=10 {
            p.on_end(sampled(i));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            exports.lock().len(),
            1,
            "the second waits for min_flush_interval"
        );
        std::thread::sleep(Duration::from_millis(400));
        let e = exports.lock().clone();
        assert_eq!(e.iter().map(|(_, n)| n).sum::<usize>(), 10, "{e:?}");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[1].0 - e[0].0 >= Duration::from_millis(390), "{e:?}");
        assert!(e[0].0 - first < Duration::from_millis(150), "{e:?}");
        let _ = p.shutdown_with_timeout(Duration::from_secs(1));
    }
}
