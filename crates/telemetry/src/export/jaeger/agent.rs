//! Spans to a Jaeger agent over UDP: `Agent.emitBatch` oneway messages in the compact Thrift
//! protocol, one `Batch{process, spans, seqNo, stats}` per datagram.
//!
//! Each span is encoded on its own first, so its exact size is known: spans are packed into
//! a datagram until the next one would push it past the limit (65,000 bytes, the agent's
//! `max_packet_size`), and a span that cannot fit even alone is dropped and counted
//! (`too_large`), never sent truncated. The socket is connected, so an agent that is not
//! listening shows up as the kernel's refusal (ICMP port unreachable, checked right after
//! each send): those spans are counted dropped as `agent_unreachable`, never exported; other
//! send errors count as `send_failed`; both are logged at most once a minute;
//! the address is resolved again after a failure and every `attemptReconnectInterval`, as
//! jaeger-client-go's reconnecting UDP client does.

use std::fmt;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use parking_lot::Mutex;

use super::JaegerProcess;
use super::model::{self, ClientStats};
use super::thrift::{Compact, Protocol, TType};
use crate::config::HostPort;
use crate::logging::LogLimiter;
use crate::metrics::{BackendCounters, DropReason};

/// The largest datagram a Jaeger agent accepts (its default `max_packet_size`).
pub const MAX_PACKET_SIZE: usize = 65_000;

/// An upper bound on everything in a datagram except the process and the spans: message
/// header (17), the args and batch field headers, the span list header (6), `seqNo` (11),
/// `stats` (35) and two stop bytes.
const FRAME_OVERHEAD: usize = 80;

/// The Jaeger agent UDP exporter.
pub struct JaegerAgentExporter {
    inner: Mutex<Agent>,
}

impl fmt::Debug for JaegerAgentExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JaegerAgentExporter")
            .field("agent", &self.inner.lock().target)
            .finish()
    }
}

struct Agent {
    target: HostPort,
    reresolve_every: Option<Duration>,
    max_packet: usize,
    process: Vec<u8>,
    counters: BackendCounters,
    socket: Option<(UdpSocket, SocketAddr)>,
    last_resolve: Option<Instant>,
    seq_id: i32,
    seq_no: i64,
    stats: ClientStats,
    span_buf: Vec<u8>,
    packet_spans: Vec<u8>,
    packet_count: usize,
    packet: Vec<u8>,
    log: LogLimiter,
    /// Tests: keep datagrams here instead of sending them.
    #[cfg(test)]
    captured: Option<Vec<Vec<u8>>>,
}

impl JaegerAgentExporter {
    /// Sends to `target` (`host:port`), resolved at the first send and again after
    /// failures; with `reresolve_every`, also periodically (the agent may move).
    pub(crate) fn new(
        target: HostPort,
        process: &JaegerProcess,
        reresolve_every: Option<Duration>,
        max_packet: usize,
        counters: BackendCounters,
    ) -> JaegerAgentExporter {
        let agent = Agent {
            target,
            reresolve_every,
            max_packet: max_packet.min(MAX_PACKET_SIZE),
            process: process.encode_compact(),
            counters,
            socket: None,
            last_resolve: None,
            seq_id: 0,
            seq_no: 0,
            stats: ClientStats::default(),
            span_buf: Vec::with_capacity(1024),
            packet_spans: Vec::with_capacity(max_packet),
            packet_count: 0,
            packet: Vec::with_capacity(max_packet),
            log: LogLimiter::new(Duration::from_secs(60)),
            #[cfg(test)]
            captured: None,
        };
        // Resolved on the first send, on the export thread: a slow or failing DNS lookup
        // must not hold up startup.
        JaegerAgentExporter {
            inner: Mutex::new(agent),
        }
    }
}

impl Agent {
    fn connect(&mut self) {
        self.last_resolve = Some(Instant::now());
        let addr = match self.target.resolve() {
            Ok(a) => a,
            Err(e) => {
                self.socket = None;
                if let Some(suppressed) = self.log.check() {
                    tracing::warn!(
                        target: "m3query::tracing",
                        agent = %self.target,
                        error = %e,
                        suppressed,
                        "cannot resolve the Jaeger agent address; spans are dropped until it resolves"
                    );
                }
                return;
            }
        };
        if self.socket.as_ref().is_some_and(|(_, a)| *a == addr) {
            return;
        }
        let bind: SocketAddr = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        match UdpSocket::bind(bind).and_then(|s| s.connect(addr).map(|()| s)) {
            Ok(s) => self.socket = Some((s, addr)),
            Err(e) => {
                self.socket = None;
                if let Some(suppressed) = self.log.check() {
                    tracing::warn!(
                        target: "m3query::tracing",
                        agent = %self.target,
                        error = %e,
                        suppressed,
                        "cannot open a UDP socket to the Jaeger agent"
                    );
                }
            }
        }
    }

    fn maybe_reconnect(&mut self) {
        let due = match (self.socket.is_some(), self.last_resolve) {
            // No socket: retry, but not more than once a second.
            (false, Some(t)) => t.elapsed() >= Duration::from_secs(1),
            (true, Some(t)) => self
                .reresolve_every
                .is_some_and(|every| t.elapsed() >= every),
            (_, None) => true,
        };
        if due {
            self.connect();
        }
    }

    fn add(&mut self, span: &SpanData) {
        self.span_buf.clear();
        model::write_span(&mut Compact::new(&mut self.span_buf), span);
        let fixed = FRAME_OVERHEAD + self.process.len();
        if fixed + self.span_buf.len() > self.max_packet {
            self.counters.add_dropped(DropReason::TooLarge, 1);
            self.stats.too_large_dropped += 1;
            if let Some(suppressed) = self.log.check() {
                tracing::warn!(
                    target: "m3query::tracing",
                    operation = %span.name,
                    bytes = self.span_buf.len(),
                    limit = self.max_packet,
                    suppressed,
                    "span too large for one Jaeger agent datagram, dropped"
                );
            }
            return;
        }
        if fixed + self.packet_spans.len() + self.span_buf.len() > self.max_packet {
            self.flush();
        }
        self.packet_spans.extend_from_slice(&self.span_buf);
        self.packet_count += 1;
    }

    /// Frames the pending spans as one `emitBatch` datagram and sends it.
    fn flush(&mut self) {
        if self.packet_count == 0 {
            return;
        }
        let n = self.packet_count as u64;
        self.seq_id = self.seq_id.wrapping_add(1);
        self.seq_no += 1;
        self.stats.full_queue_dropped = self.counters.dropped(DropReason::QueueFull).get() as i64;
        self.packet.clear();
        {
            let mut p = Compact::new(&mut self.packet);
            p.message_begin_oneway("emitBatch", self.seq_id);
            p.struct_begin(); // emitBatch_args
            p.field_begin(TType::Struct, 1);
            p.struct_begin(); // Batch
            p.field_begin(TType::Struct, 1);
            p.buf().extend_from_slice(&self.process);
            p.field_begin(TType::List, 2);
            p.list_begin(TType::Struct, self.packet_count);
            p.buf().extend_from_slice(&self.packet_spans);
            p.field_i64(3, self.seq_no);
            p.field_begin(TType::Struct, 4);
            model::write_client_stats(&mut p, &self.stats);
            p.struct_end();
            p.struct_end();
        }
        debug_assert!(
            self.packet.len() <= self.max_packet,
            "{}",
            self.packet.len()
        );
        self.packet_spans.clear();
        self.packet_count = 0;

        #[cfg(test)]
        if let Some(c) = &mut self.captured {
            c.push(self.packet.clone());
            self.counters.exported.inc_by(n);
            return;
        }
        self.maybe_reconnect();
        let result = match &self.socket {
            Some((s, _)) => s.send(&self.packet).and_then(|_| {
                // On a connected socket the kernel reports the agent's ICMP port unreachable
                // as a pending error: on loopback it is already set when `send` returns, from
                // a remote host it fails the next send. Either way the datagram was refused
                // and is not counted as exported.
                match s.take_error()? {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            }),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "no agent address",
            )),
        };
        match result {
            Ok(()) => {
                self.counters.exported.inc_by(n);
                self.log.reset();
            }
            Err(e) => {
                let refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
                let reason = if refused {
                    DropReason::AgentUnreachable
                } else {
                    DropReason::SendFailed
                };
                self.counters.add_dropped(reason, n);
                self.stats.failed_to_emit += n as i64;
                if refused {
                    // Keep the socket (the agent may come back on it, and later refusals are
                    // counted the same way) but look the address up again, at most once a
                    // second: the agent may have moved.
                    if self
                        .last_resolve
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                    {
                        self.connect();
                    }
                } else if e.kind() != std::io::ErrorKind::NotConnected {
                    // Re-resolve and reconnect on the next batch.
                    self.socket = None;
                }
                if let Some(suppressed) = self.log.check() {
                    tracing::warn!(
                        target: "m3query::tracing",
                        agent = %self.target,
                        error = %e,
                        spans = n,
                        suppressed,
                        "{}",
                        if refused {
                            "the Jaeger agent refused spans: nothing listens on its port"
                        } else {
                            "sending spans to the Jaeger agent failed"
                        }
                    );
                }
            }
        }
    }
}

impl SpanExporter for JaegerAgentExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let mut a = self.inner.lock();
        let before = a.counters.exported.get();
        for s in &batch {
            a.add(s);
        }
        a.flush();
        let ok = batch.is_empty() || a.counters.exported.get() > before;
        drop(a);
        std::future::ready(if ok {
            Ok(())
        } else {
            Err(OTelSdkError::InternalFailure(
                "no span reached the Jaeger agent".into(),
            ))
        })
    }
}

/// The datagrams one export of `spans` produces, captured instead of sent (for tests).
#[cfg(test)]
pub(crate) fn datagrams(
    process: &JaegerProcess,
    spans: &[SpanData],
    max_packet: usize,
    counters: BackendCounters,
) -> Vec<Vec<u8>> {
    let exp = JaegerAgentExporter::new(
        HostPort("127.0.0.1:9".into()),
        process,
        None,
        max_packet,
        counters,
    );
    exp.inner.lock().captured = Some(Vec::new());
    let _ = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(exp.export(spans.to_vec()));
    exp.inner.lock().captured.take().unwrap_or_default()
}
