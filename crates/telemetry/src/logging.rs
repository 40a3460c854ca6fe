//! Rate-limited warnings for failures that repeat on every export or poll (an agent that is
//! not listening, a collector that is down, a sampling server that answers garbage): the
//! first one is logged at once, then at most one per interval, saying how many were
//! suppressed in between.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

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
}
