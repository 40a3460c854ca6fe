//! Open write transactions, so a head cut can wait for those that began before it.
//!
//! A head cut raises the head's minimum valid time, then persists and drops everything
//! below it. A transaction that was open across the raise had its samples accepted against
//! the old minimum: refusing them at commit would drop samples the writer was told were
//! accepted, and storing them after the cut's snapshot would lose them with the truncated
//! chunks. So each transaction keeps the minimum it began with, and the cut waits for the
//! transactions that began before its raise (Prometheus's head compaction waits for
//! overlapping appenders the same way). A transaction still open after [`WAIT`] is given
//! up on: its commit then checks against the new minimum, as any later transaction does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Longest a head cut waits for older transactions.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    /// The era new transactions join; a head cut starts a new one.
    era: u64,
    /// Open transactions per era.
    open: BTreeMap<u64, usize>,
}

/// The registry of open transactions.
#[derive(Debug, Default)]
pub(crate) struct Appenders {
    state: Mutex<State>,
    done: Condvar,
    /// Transactions of eras below this were given up on by a head cut.
    abandoned_below: AtomicU64,
}

impl Appenders {
    /// Registers a transaction; returns its era. Read the head's bounds after this.
    pub(crate) fn begin(&self) -> u64 {
        let mut s = self.state.lock();
        let era = s.era;
        *s.open.entry(era).or_insert(0) += 1;
        era
    }

    /// Ends a transaction of `era`.
    pub(crate) fn end(&self, era: u64) {
        let mut s = self.state.lock();
        if let Some(n) = s.open.get_mut(&era) {
            *n -= 1;
            if *n == 0 {
                s.open.remove(&era);
                self.done.notify_all();
            }
        }
    }

    /// Whether a transaction of `era` may still commit against the bounds it began with.
    pub(crate) fn honoured(&self, era: u64) -> bool {
        era >= self.abandoned_below.load(Ordering::Acquire)
    }

    /// Call after raising the head's minimum valid time: waits until every transaction that
    /// began before is done. Returns how many were given up on after [`WAIT`].
    pub(crate) fn wait_for_older(&self) -> usize {
        self.wait_for_older_within(WAIT)
    }

    fn wait_for_older_within(&self, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        let mut s = self.state.lock();
        let cut = s.era + 1;
        s.era = cut;
        loop {
            let older: usize = s.open.range(..cut).map(|(_, n)| n).sum();
            if older == 0 {
                return 0;
            }
            if self.done.wait_until(&mut s, deadline).timed_out() {
                let older: usize = s.open.range(..cut).map(|(_, n)| n).sum();
                if older > 0 {
                    self.abandoned_below.fetch_max(cut, Ordering::AcqRel);
                }
                return older;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_cut_waits_for_older_transactions_only() {
        let a = Arc::new(Appenders::default());
        let old = a.begin();
        let waiter = {
            let a = a.clone();
            std::thread::spawn(move || a.wait_for_older())
        };
        // The cut has started a new era once a new transaction lands in it.
        let mut new = a.begin();
        while new == old {
            a.end(new);
            std::thread::yield_now();
            new = a.begin();
        }
        assert!(!waiter.is_finished());
        a.end(old);
        assert_eq!(waiter.join().expect("waiter"), 0);
        assert!(a.honoured(old) && a.honoured(new));
        // The newer transaction is still open: the next cut waits for it.
        a.end(new);
        assert_eq!(a.wait_for_older(), 0);
    }

    #[test]
    fn a_transaction_open_too_long_is_given_up_on() {
        let a = Appenders::default();
        let old = a.begin();
        assert_eq!(a.wait_for_older_within(Duration::from_millis(20)), 1);
        assert!(!a.honoured(old));
        let new = a.begin();
        assert!(a.honoured(new));
        a.end(old);
        a.end(new);
    }
}
