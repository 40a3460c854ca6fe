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
//!   cost every sampled request a futex wake-up.
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
    pub log_spans: bool,
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
    // tick, and early when the queue is half full.
    loop {
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
            _ = wake.notified() => ctx.drain(&exporter, &mut rx).await,
            _ = tick.tick() => ctx.drain(&exporter, &mut rx).await,
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
        match tokio::time::timeout(self.opts.export_timeout, exporter.export(batch)).await {
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
