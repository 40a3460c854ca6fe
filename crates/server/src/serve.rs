//! The accept loop: hyper with the limits `axum::serve` does not offer.
//!
//! - `http.headerReadTimeout`: hyper closes a connection whose request headers have not all
//!   arrived in time (a half-sent request cannot hold a connection forever), and the same
//!   timer closes idle keep-alive connections;
//! - `http.maxConnections`: beyond it, connections wait in the kernel's accept queue;
//! - `TCP_NODELAY` on every connection: without it a response written in two segments waits
//!   for the client's delayed ACK (~40 ms) on keep-alive connections;
//! - [`crate::conn::RequestLineFix`] under hyper: request targets Go's server accepts but the
//!   `http` crate refuses (a raw `"` in a PromQL query) are percent-encoded, and over-long
//!   ones get a Prometheus-shaped 414 instead of hyper's empty one.
//!
//! Shutdown stops accepting, lets in-flight requests finish for at most the grace period,
//! then returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::conn::RequestLineFix;

/// Connection limits from `http:`.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub grace: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes, then drains for `limits.grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener stays.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(RequestLineFix::new(stream));
        let service = TowerToHyperService::new(router.clone());
        let conn = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.grace) => {
            tracing::warn!(grace_seconds = limits.grace.as_secs_f64(), "in-flight requests still running after the shutdown grace period; stopping anyway");
        }
    }
    Ok(())
}
