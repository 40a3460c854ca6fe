use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::{Error, Result};

/// Cancellation and deadline for one query, checked by long-running selects and evaluation.
///
/// Cloning shares the cancellation flag: the HTTP layer keeps one clone and cancels it when the
/// client goes away; the engine and stores poll [`Context::check`] between units of work.
#[derive(Debug, Clone, Default)]
pub struct Context {
    canceled: Arc<AtomicBool>,
    deadline: Option<Instant>,
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
        }
    }

    /// The same cancellation flag with a deadline no later than `deadline`.
    pub fn child_with_deadline(&self, deadline: Instant) -> Self {
        Context {
            canceled: self.canceled.clone(),
            deadline: Some(self.deadline.map_or(deadline, |d| d.min(deadline))),
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
}
