//! Log plumbing:
//! - [`LogLimiter`]: rate-limited warnings for failures that repeat on every export or poll
//!   (an agent that is not listening, a collector that is down, a sampling server that answers
//!   garbage): the first one is logged at once, then at most one per interval, saying how many
//!   were suppressed in between.
//! - [`RedactUrls`]: the log writer's last step, masking the password of any URL in a log line
//!   (`http://user:xxxxx@host`), whichever code logged it (a store's URL in a reqwest error, a
//!   collector endpoint, a sampling server).

use std::io::Write;
use std::time::{Duration, Instant};

use m3query_model::redact::redact_urls;
use parking_lot::Mutex;
use tracing_subscriber::fmt::MakeWriter;

/// Wraps a log writer so that URL passwords never reach the log.
pub(crate) struct RedactUrls<M>(pub(crate) M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactUrls<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter(self.0.make_writer_for(meta))
    }
}

/// The formatter writes each event whole, so each `write` is one or more whole lines.
pub(crate) struct RedactingWriter<W>(W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(text) = std::str::from_utf8(buf)
            && let std::borrow::Cow::Owned(clean) = redact_urls(text)
        {
            self.0.write_all(clean.as_bytes())?;
            return Ok(buf.len());
        }
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[derive(Debug)]
pub(crate) struct LogLimiter {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            state: Mutex::new(State::default()),
        }
    }

    /// `Some(n)` when this occurrence should be logged, with the `n` occurrences suppressed
    /// since the last logged one; `None` when it should be counted and kept quiet.
    pub(crate) fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    pub(crate) fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock();
        match s.last {
            Some(t) if now.saturating_duration_since(t) < self.interval => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }

    /// Forgets the last occurrence, so the next failure after a recovery is logged at once.
    pub(crate) fn reset(&self) {
        *self.state.lock() = State::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_first_then_once_per_interval_with_suppressed_count() {
        let l = LogLimiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.check_at(t0 + Duration::from_secs(59)), None);
        assert_eq!(l.check_at(t0 + Duration::from_secs(60)), Some(2));
        l.reset();
        assert_eq!(l.check_at(t0 + Duration::from_secs(61)), Some(0));
    }

    #[test]
    fn url_passwords_never_reach_the_log() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Buf::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(RedactUrls(move || sink.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(url = "http://u:hunter2@h:9090/x", "store failed");
        });
        let text = String::from_utf8(out.0.lock().clone()).expect("utf8");
        assert!(text.contains("http://u:xxxxx@h:9090/x"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
