use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Cancellation and deadline for one query, checked by long-running selects and evaluation.
///
/// Cloning shares the cancellation flag: the HTTP layer keeps one clone and cancels it when the
/// client goes away; the engine and stores poll [`Context::check`] between units of work.
#[derive(Debug, Clone, Default)]
pub struct Context {
    canceled: Arc<AtomicBool>,
    deadline: Option<Instant>,
    /// Time spent reading each remote store, when the caller asked for it
    /// ([`Context::with_read_timings`]); shared by clones like the cancellation flag.
    reads: Option<Arc<Mutex<Vec<StoreReads>>>>,
}

/// The reads of one store during one query: how many and their time added up (reads of
/// different selectors may overlap, so the sum can exceed the wall time they took).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReads {
    /// The store's configured name.
    pub store: String,
    /// Reads made.
    pub count: u32,
    /// Their durations added up.
    pub total: Duration,
}

impl Context {
    /// A context that is never canceled and has no deadline.
    pub fn background() -> Self {
        Context::default()
    }

    /// A context that times out at `deadline`.
    pub fn with_deadline(deadline: Instant) -> Self {
        Context {
            canceled: Arc::new(AtomicBool::new(false)),
            deadline: Some(deadline),
            reads: None,
        }
    }

    /// The same context, also collecting each remote store's read time
    /// ([`Context::record_read`]) for [`Context::read_timings`]: the HTTP layer's
    /// per-phase breakdown of a query.
    pub fn with_read_timings(mut self) -> Self {
        self.reads = Some(Arc::new(Mutex::new(Vec::new())));
        self
    }

    /// Adds one read of `store` that took `took`; nothing unless timings were asked for.
    pub fn record_read(&self, store: &str, took: Duration) {
        let Some(reads) = &self.reads else { return };
        // A poisoned lock only means another reader panicked mid-push: the figures stay usable.
        let mut reads = reads.lock().unwrap_or_else(|e| e.into_inner());
        match reads.iter_mut().find(|r| r.store == store) {
            Some(r) => {
                r.count = r.count.saturating_add(1);
                r.total += took;
            }
            None => reads.push(StoreReads {
                store: store.to_string(),
                count: 1,
                total: took,
            }),
        }
    }

    /// Every store's reads so far, in the order they were first read.
    pub fn read_timings(&self) -> Vec<StoreReads> {
        self.reads.as_ref().map_or_else(Vec::new, |r| {
            r.lock().unwrap_or_else(|e| e.into_inner()).clone()
        })
    }

    /// The same cancellation flag with a deadline no later than `deadline`.
    pub fn child_with_deadline(&self, deadline: Instant) -> Self {
        Context {
            canceled: self.canceled.clone(),
            deadline: Some(self.deadline.map_or(deadline, |d| d.min(deadline))),
            reads: self.reads.clone(),
        }
    }

    /// Cancels every clone: their next [`Context::check`] fails with `Canceled`.
    pub fn cancel(&self) {
        self.canceled.store(true, Ordering::Relaxed);
    }

    /// Whether any clone was canceled.
    pub fn is_canceled(&self) -> bool {
        self.canceled.load(Ordering::Relaxed)
    }

    /// When the query times out, if it has a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// `Err(Canceled)` once canceled, `Err(DeadlineExceeded)` past the deadline.
    pub fn check(&self) -> Result<()> {
        if self.is_canceled() {
            return Err(Error::Canceled);
        }
        if let Some(d) = self.deadline
            && Instant::now() >= d
        {
            return Err(Error::DeadlineExceeded);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cancel_is_shared_and_deadline_expires() {
        let c = Context::background();
        let d = c.child_with_deadline(Instant::now() + Duration::from_secs(3600));
        assert!(d.check().is_ok());
        c.cancel();
        assert!(matches!(d.check(), Err(Error::Canceled)));
        let e = Context::with_deadline(Instant::now());
        assert!(matches!(e.check(), Err(Error::DeadlineExceeded)));
    }

    #[test]
    fn read_timings_add_up_per_store_and_are_shared_by_children() {
        let plain = Context::background();
        plain.record_read("a", Duration::from_millis(5));
        assert!(plain.read_timings().is_empty());
        let c =
            Context::with_deadline(Instant::now() + Duration::from_secs(60)).with_read_timings();
        let child = c.child_with_deadline(Instant::now() + Duration::from_secs(1));
        child.record_read("a", Duration::from_millis(5));
        c.record_read("b", Duration::from_millis(1));
        child.clone().record_read("a", Duration::from_millis(2));
        assert_eq!(
            c.read_timings(),
            vec![
                StoreReads {
                    store: "a".into(),
                    count: 2,
                    total: Duration::from_millis(7)
                },
                StoreReads {
                    store: "b".into(),
                    count: 1,
                    total: Duration::from_millis(1)
                },
            ]
        );
    }
}
