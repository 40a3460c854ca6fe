//! What a querier reads, fixed when it is created: the head, the block list of that moment,
//! and the record of damaged blocks; plus the registry of open queriers that head truncation
//! waits for.
//!
//! A head cut writes a block, adds it to the list, then drops the persisted data from the
//! head. A querier that took its block list before the add must still find that data in the
//! head, so truncation waits for the queriers registered before the add whose range reaches
//! below the cut (as Prometheus's `WaitForPendingReadersInTimeRange`). Queriers registered
//! after it see the new block.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use m3query_storage::Warnings;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::Error;
use crate::block::Block;
use crate::head::Head;

/// A block that could not be opened, or whose data failed a checksum when read. Queries go
/// on without it and say so in their warnings.
#[derive(Debug, Clone)]
pub(crate) struct CorruptBlock {
    /// The block's directory name (its ULID).
    pub(crate) name: String,
    /// `meta`, `index`, `chunks` (found at open) or `chunk_checksum` (found by a query).
    pub(crate) reason: &'static str,
    /// The block's time range, when its meta.json was readable.
    pub(crate) range: Option<(i64, i64)>,
    pub(crate) error: String,
}

/// Damaged blocks: listed at open, added to by queries, reported as warnings and metrics.
pub(crate) struct BlockHealth {
    corrupt: RwLock<Vec<CorruptBlock>>,
}

impl BlockHealth {
    pub(crate) fn new(found_at_open: Vec<CorruptBlock>) -> Self {
        BlockHealth {
            corrupt: RwLock::new(found_at_open),
        }
    }

    /// Records that a query found `b` damaged (logged once per block and reason).
    pub(crate) fn mark_corrupt(&self, b: &Block, reason: &'static str, e: &Error) {
        let name = &b.meta.ulid;
        let known = |cb: &[CorruptBlock]| cb.iter().any(|c| &c.name == name && c.reason == reason);
        if known(&self.corrupt.read()) {
            return;
        }
        let mut cb = self.corrupt.write();
        if known(&cb) {
            return;
        }
        tracing::error!(block = %name, reason, error = %e,
            "damaged block data: left out of query results (queries warn)");
        cb.push(CorruptBlock {
            name: name.clone(),
            reason,
            range: Some((b.meta.min_time, b.meta.max_time)),
            error: e.to_string(),
        });
    }

    /// Warnings for blocks that could not be opened and may hold data in `[mint, maxt]`.
    pub(crate) fn unreadable_block_warnings(&self, mint: i64, maxt: i64, w: &mut Warnings) {
        for c in self.corrupt.read().iter() {
            if c.reason == "chunk_checksum" {
                continue; // Warned by the query that reads the damaged chunk.
            }
            if c.range.is_none_or(|(lo, hi)| lo <= maxt && hi > mint) {
                w.push(format!(
                    "tsdb block {} is unreadable ({}: {}) and was skipped: its data is missing from this result",
                    c.name, c.reason, c.error
                ));
            }
        }
    }

    /// How many damaged blocks were found, per reason, for each of `reasons`.
    pub(crate) fn counts(&self, reasons: &[&str]) -> Vec<(String, u64)> {
        let cb = self.corrupt.read();
        reasons
            .iter()
            .map(|r| {
                let n = cb.iter().filter(|c| c.reason == *r).count();
                (r.to_string(), n as u64)
            })
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.corrupt.read().len()
    }
}

/// Wakes the database's background thread.
pub(crate) struct Wake {
    pub(crate) flag: Mutex<bool>,
    pub(crate) cond: Condvar,
}

impl Wake {
    pub(crate) fn new() -> Self {
        Wake {
            flag: Mutex::new(true),
            cond: Condvar::new(),
        }
    }
}

struct Open {
    next: u64,
    /// Registration number -> the querier's minimum time.
    mint: BTreeMap<u64, i64>,
}

/// Open queriers, and when the last one that selected series ended (queries decode into
/// buffers that are returned to the OS a quiet moment after the burst).
pub(crate) struct Readers {
    open: Mutex<Open>,
    closed: Condvar,
    /// A querier selected series since the last trim.
    trim_due: AtomicBool,
    /// When the last such querier was dropped, ns since `started`.
    last_end_ns: AtomicU64,
    started: Instant,
}

/// How long a head cut waits for queriers before it truncates anyway. Queries end by their
/// own timeout long before this; the bound keeps one stuck reader from stopping head cuts
/// (and so WAL checkpoints) for good, which would grow memory without limit.
const MAX_READER_WAIT: Duration = Duration::from_secs(300);

impl Readers {
    pub(crate) fn new() -> Self {
        Readers {
            open: Mutex::new(Open {
                next: 0,
                mint: BTreeMap::new(),
            }),
            closed: Condvar::new(),
            trim_due: AtomicBool::new(false),
            last_end_ns: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn register(&self, mint: i64) -> u64 {
        let mut o = self.open.lock();
        let id = o.next;
        o.next += 1;
        o.mint.insert(id, mint);
        id
    }

    /// The registration number the next querier gets: queriers below it are open now.
    pub(crate) fn epoch(&self) -> u64 {
        self.open.lock().next
    }

    /// Waits until no querier registered before `epoch` reads below `t`. Returns how many
    /// were still open when the wait gave up (0 when none was left).
    pub(crate) fn wait_for_readers_below(&self, epoch: u64, t: i64) -> usize {
        let deadline = Instant::now() + MAX_READER_WAIT;
        let mut o = self.open.lock();
        loop {
            let pending = o.mint.range(..epoch).filter(|&(_, &m)| m < t).count();
            if pending == 0 {
                return 0;
            }
            if self.closed.wait_until(&mut o, deadline).timed_out() {
                return o.mint.range(..epoch).filter(|&(_, &m)| m < t).count();
            }
        }
    }

    /// When to return query memory to the OS, given when that was last done (ns since the
    /// start): a quiet moment after the last querier that selected series ended, and not
    /// more often than `min_interval`.
    pub(crate) fn trim_due(
        &self,
        quiet: Duration,
        last_trim_ns: u64,
        min_interval: Duration,
    ) -> Option<Instant> {
        if !self.trim_due.load(Ordering::Acquire) {
            return None;
        }
        let last = Duration::from_nanos(self.last_end_ns.load(Ordering::Acquire));
        let last_trim = Duration::from_nanos(last_trim_ns);
        Some(self.started + (last + quiet).max(last_trim + min_interval))
    }

    /// Claims a due trim; returns the time of the claim (ns since the start) when one was due.
    pub(crate) fn take_trim(&self) -> Option<u64> {
        self.trim_due
            .swap(false, Ordering::AcqRel)
            .then(|| self.started.elapsed().as_nanos() as u64)
    }

    fn close(&self, id: u64, selected: bool, wake: &Wake) {
        {
            let mut o = self.open.lock();
            o.mint.remove(&id);
        }
        self.closed.notify_all();
        if selected {
            self.last_end_ns
                .store(self.started.elapsed().as_nanos() as u64, Ordering::Release);
            if !self.trim_due.swap(true, Ordering::AcqRel) {
                // Under the lock, so the background thread cannot miss it between computing
                // its deadline and waiting.
                let _w = wake.flag.lock();
                wake.cond.notify_one();
            }
        }
    }
}

/// What one querier reads: the head, the blocks as of its creation (kept alive by their
/// `Arc`s, even once compaction or retention has replaced them), and where damage is
/// recorded. Registered with [`Readers`] until dropped.
pub(crate) struct Snapshot<'a> {
    pub(crate) head: &'a Head,
    pub(crate) blocks: Arc<Vec<Arc<Block>>>,
    pub(crate) health: &'a BlockHealth,
    readers: &'a Readers,
    wake: &'a Wake,
    id: u64,
    /// Whether a select returned series (their decoding is what grows the heap).
    selected: AtomicBool,
}

impl<'a> Snapshot<'a> {
    /// Registers a reader from `mint`, then takes the block list (in that order: see the
    /// module's comment).
    pub(crate) fn take(
        head: &'a Head,
        blocks: &RwLock<Arc<Vec<Arc<Block>>>>,
        health: &'a BlockHealth,
        readers: &'a Readers,
        wake: &'a Wake,
        mint: i64,
    ) -> Self {
        let id = readers.register(mint);
        Snapshot {
            head,
            blocks: blocks.read().clone(),
            health,
            readers,
            wake,
            id,
            selected: AtomicBool::new(false),
        }
    }

    pub(crate) fn mark_selected(&self) {
        self.selected.store(true, Ordering::Relaxed);
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        self.readers
            .close(self.id, *self.selected.get_mut(), self.wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_waits_only_for_earlier_readers_below_the_cut() {
        let readers = Arc::new(Readers::new());
        let wake = Wake::new();
        let head = Head::new(7_200_000, 0, i64::MIN);
        let blocks = RwLock::new(Arc::new(Vec::new()));
        let health = BlockHealth::new(Vec::new());
        let above = Snapshot::take(&head, &blocks, &health, &readers, &wake, 10_000);
        assert_eq!(readers.wait_for_readers_below(readers.epoch(), 5_000), 0);

        let below = Snapshot::take(&head, &blocks, &health, &readers, &wake, 0);
        let epoch = readers.epoch();
        let later = Snapshot::take(&head, &blocks, &health, &readers, &wake, 0);
        let r = readers.clone();
        let waiter = std::thread::spawn(move || r.wait_for_readers_below(epoch, 5_000));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "waits for the reader below the cut");
        drop(below);
        assert_eq!(waiter.join().expect("waiter"), 0);
        drop((above, later));
        assert!(readers.open.lock().mint.is_empty());
    }

    #[test]
    fn a_reader_that_selected_makes_a_trim_due() {
        let readers = Readers::new();
        let wake = Wake::new();
        let head = Head::new(7_200_000, 0, i64::MIN);
        let blocks = RwLock::new(Arc::new(Vec::new()));
        let health = BlockHealth::new(Vec::new());
        let q = Duration::from_secs(1);
        drop(Snapshot::take(&head, &blocks, &health, &readers, &wake, 0));
        assert!(readers.trim_due(q, 0, q).is_none(), "nothing selected");
        let s = Snapshot::take(&head, &blocks, &health, &readers, &wake, 0);
        s.mark_selected();
        drop(s);
        assert!(readers.trim_due(q, 0, q).is_some());
        assert!(readers.take_trim().is_some());
        assert!(readers.take_trim().is_none(), "claimed once");
    }
}
