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
    /// Longest a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the listen queue.
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;

    use super::*;

    /// The socket of this process whose peer is `peer`, and whether it has TCP_NODELAY.
    fn nodelay_of_peer(peer: std::net::SocketAddr) -> Option<bool> {
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // SAFETY: the descriptor is only queried (getpeername, getsockopt; one that is not
            // a socket just fails them) and never closed: ManuallyDrop keeps the TcpStream
            // from dropping it.
            let s = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
            if s.peer_addr().ok() == Some(peer) {
                return s.nodelay().ok();
            }
        }
        None
    }

    /// A response written in two segments (headers, then a streamed body frame) would wait
    /// for the client's delayed ACK (40 ms) under Nagle's algorithm: every accepted connection
    /// has TCP_NODELAY. Checked on the socket itself, not by timing.
    #[test]
    fn accepted_connections_have_tcp_nodelay() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let limits = ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4,
            grace: Duration::from_secs(1),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(serve(listener, router, limits, async move {
            let _ = stopped.await;
        }));
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("request");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"ok") {
            let n = c.read(&mut buf).expect("response");
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        // Answered, so the server has accepted and configured its side.
        let local = c.local_addr().expect("local addr");
        assert_eq!(nodelay_of_peer(local), Some(true));
        // Not vacuous: a socket nobody set it on reads false.
        assert_eq!(c.nodelay().ok(), Some(false));
        let _ = stop.send(());
        let _ = rt.block_on(server);
    }
}
