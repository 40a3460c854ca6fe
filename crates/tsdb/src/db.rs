//! `Db`: opening, writing, background maintenance (head cuts, compaction, retention,
//! checkpoints) and metrics.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use m3query_chunkenc::XorIterator;
use m3query_model::{FloatHistogram, Histogram, Label, LabelPairs, Labels, STALE_NAN_BITS, Sample};
use m3query_storage::{
    Appendable, Appender, Error as StorageError, Querier, Queryable, Result as SResult,
};
use parking_lot::{Mutex, RwLock};

use crate::appenders::Appenders;
use crate::block::{
    Block, BlockCompaction, BlockPart, SeriesChunks, TMP_CREATION, TMP_DELETION, delete_block_dir,
    is_ulid, read_meta, write_block,
};
use crate::chunks::QChunk;
use crate::compact::{compact, plan, ranges, retention_victims};
use crate::error::IoContext;
use crate::fileutil::lock_dir;
use crate::head::{
    Bounds, FastMap, Fit, Head, HeadChunk, MemSeries, Replaying, SeriesData, SeriesKey,
    SeriesSnapshot,
};
use crate::hist::{HistSamplesEncoder, HistSnapshot, HistVal};
use crate::querier::DbQuerier;
use crate::readers::{BlockHealth, CorruptBlock, Readers, Snapshot, Wake};
use crate::wal::{
    self, FSYNC_BUCKETS_S, Fsync, REC_FLOAT_HISTOGRAMS, REC_HEAD_HISTOGRAMS, REC_HEAD_SERIES,
    REC_HISTOGRAMS, REC_OOO_FLOAT_HISTOGRAMS, REC_OOO_HISTOGRAMS, REC_SAMPLES, REC_SERIES, Record,
    SamplesEncoder, SeriesState, Wal, encode_series,
};
use crate::{Error, Result};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// How long after the last query memory is trimmed.
const TRIM_AFTER_QUERIES_QUIET: Duration = Duration::from_secs(1);
/// Least time between two trims that queries trigger.
const TRIM_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// A duration in ms as the config writes it (`15d`, `10m`, `90s`, `250ms`).
fn fmt_ms(ms: i64) -> String {
    for (unit, n) in [("d", DAY_MS), ("h", HOUR_MS), ("m", 60_000), ("s", 1000)] {
        if ms >= n && ms % n == 0 {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The timestamps appends accept regardless of series: not beyond the future grace period
/// past the wall clock, not older than the retention before the newest data.
#[derive(Debug, Clone, Copy)]
struct TimeWindow {
    oldest: i64,
    newest: i64,
}

/// Returns memory the allocator holds but no longer uses to the operating system, where the
/// allocator can (glibc's `malloc_trim`; elsewhere a no-op).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let start = Instant::now();
        // SAFETY: malloc_trim only walks and trims glibc's own heap; it takes no pointers and
        // is safe to call from any thread at any time.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            released = released != 0,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "returned free heap memory to the OS"
        );
    }
}

/// Database options. `Default` gives Prometheus's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Blocks whose data ends more than this long before the newest block's end are deleted
    /// (0: keep forever). Default 15 days.
    pub retention_ms: i64,
    /// Oldest blocks are deleted while blocks + WAL exceed this many bytes.
    pub retention_bytes: Option<u64>,
    /// Accept samples older than a series' newest by up to this much behind the head's
    /// newest sample (0: refuse them, as Prometheus by default).
    pub out_of_order_window_ms: i64,
    /// Width of level-1 blocks and of the windows head chunks may not cross. Default 2 h.
    pub block_range_ms: i64,
    /// Largest compacted block. Default: 10 % of the retention, at most 31 days.
    pub max_block_range_ms: Option<i64>,
    /// WAL segment size. Default 128 MiB.
    pub wal_segment_bytes: u64,
    /// When a commit returns relative to the WAL fsync. Default group commit.
    pub fsync: Fsync,
    /// How often the background thread checks for work (it also wakes when the head is
    /// ready to cut). Default 1 minute.
    pub maintenance_interval_ms: u64,
    /// Samples more than this far ahead of the wall clock are refused (0: no limit).
    /// Default 10 minutes, as Mimir's creation grace period: one sample hours ahead would
    /// move the head's newest time past the present, and the head cut that follows would
    /// make every write at the present out of bounds until the clock caught up.
    pub future_grace_period_ms: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retention_ms: 15 * DAY_MS,
            retention_bytes: None,
            out_of_order_window_ms: 0,
            block_range_ms: 2 * HOUR_MS,
            max_block_range_ms: None,
            wal_segment_bytes: 128 << 20,
            fsync: Fsync::GroupCommit,
            maintenance_interval_ms: 60_000,
            future_grace_period_ms: 10 * 60_000,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<()> {
        if self.block_range_ms <= 0 {
            return Err(Error::InvalidOptions(
                "block_range_ms must be positive".into(),
            ));
        }
        if self.retention_ms < 0
            || self.out_of_order_window_ms < 0
            || self.future_grace_period_ms < 0
        {
            return Err(Error::InvalidOptions(
                "retention, out-of-order window and future grace period must not be negative"
                    .into(),
            ));
        }
        if self.wal_segment_bytes < 4096 {
            return Err(Error::InvalidOptions(
                "wal_segment_bytes must be >= 4096".into(),
            ));
        }
        Ok(())
    }

    fn compaction_ranges(&self) -> Vec<i64> {
        let max = self.max_block_range_ms.unwrap_or_else(|| {
            let by_retention = if self.retention_ms > 0 {
                self.retention_ms / 10
            } else {
                31 * DAY_MS
            };
            by_retention.min(31 * DAY_MS)
        });
        ranges(self.block_range_ms, max)
    }
}

/// A snapshot of the database's own metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DbMetrics {
    /// Series in the head.
    pub head_series: u64,
    /// Chunks in the head.
    pub head_chunks: u64,
    /// Bytes of sample data (chunks, out-of-order buffers) held by the head.
    pub head_chunk_bytes: u64,
    /// Of those, bytes of native histogram chunks.
    pub head_histogram_chunk_bytes: u64,
    /// `i64::MAX`/`i64::MIN` while the head is empty.
    pub head_min_time_ms: i64,
    /// See `head_min_time_ms`.
    pub head_max_time_ms: i64,
    /// The oldest timestamp the head accepts (older ones are out of bounds).
    pub head_min_valid_time_ms: i64,
    /// Distinct strings interned by the head.
    pub symbols: u64,
    /// Samples committed (floats and native histograms).
    pub samples_appended_total: u64,
    /// Of those, native histogram samples.
    pub histogram_samples_appended_total: u64,
    /// Samples committed into the out-of-order window.
    pub out_of_order_samples_appended_total: u64,
    /// Samples refused as out of order.
    pub refused_out_of_order_total: u64,
    /// Samples refused as out of bounds.
    pub refused_out_of_bounds_total: u64,
    /// Samples refused as too old for the out-of-order window.
    pub refused_too_old_total: u64,
    /// Samples refused as duplicates with another value.
    pub refused_duplicate_total: u64,
    /// Samples beyond [`Options::future_grace_period_ms`] ahead of the wall clock.
    pub refused_too_far_in_future_total: u64,
    /// Samples older than [`Options::retention_ms`] before the newest data.
    pub refused_older_than_retention_total: u64,
    /// Samples accepted by `append` but refused at commit (another commit got there first).
    pub dropped_at_commit_total: u64,
    /// WAL fsyncs.
    pub wal_fsyncs_total: u64,
    /// Time spent in WAL fsyncs.
    pub wal_fsync_seconds_sum: f64,
    /// Cumulative (upper bound in seconds, count) pairs; the last bound is +Inf.
    pub wal_fsync_buckets: Vec<(f64, u64)>,
    /// Bytes written to the WAL.
    pub wal_bytes_written_total: u64,
    /// Records written to the WAL.
    pub wal_records_total: u64,
    /// The WAL's size on disk (segments and checkpoint).
    pub wal_disk_bytes: u64,
    /// How long the last open's WAL replay took.
    pub wal_replay_seconds: f64,
    /// Replayed records for series refs the WAL never declared (skipped).
    pub wal_replay_unknown_refs_total: u64,
    /// Damaged stretches of WAL (segments and checkpoint) skipped at the last open; each
    /// lost at least one record. The damaged segments are kept in `wal/corrupt-<ms>/`.
    pub wal_corruptions_total: u64,
    /// Bytes in those stretches.
    pub wal_corrupt_bytes_total: u64,
    /// Bytes of torn records cut from the WAL's end at the last open (a crash mid-write).
    pub wal_truncated_bytes_total: u64,
    /// Damaged blocks by reason (`meta`, `index`, `chunks`: found at open and not queried;
    /// `chunk_checksum`: a query found a chunk failing its CRC and left it out).
    pub corrupt_blocks: Vec<(String, u64)>,
    /// WAL checkpoints written.
    pub checkpoints_total: u64,
    /// Blocks cut from the head.
    pub head_cuts_total: u64,
    /// Compactions that wrote a block.
    pub compactions_total: u64,
    /// Compactions that failed.
    pub compactions_failed_total: u64,
    /// Blocks deleted by retention.
    pub retention_deleted_blocks_total: u64,
    /// Blocks open.
    pub blocks: u64,
    /// Their size on disk.
    pub blocks_bytes: u64,
    /// Blocks + WAL.
    pub disk_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    samples_appended: AtomicU64,
    hist_appended: AtomicU64,
    ooo_appended: AtomicU64,
    refused_ooo: AtomicU64,
    refused_bounds: AtomicU64,
    refused_too_old: AtomicU64,
    refused_dup: AtomicU64,
    refused_future: AtomicU64,
    refused_retention: AtomicU64,
    dropped_at_commit: AtomicU64,
    wal_corruptions: AtomicU64,
    wal_corrupt_bytes: AtomicU64,
    wal_truncated_bytes: AtomicU64,

    checkpoints: AtomicU64,
    head_cuts: AtomicU64,
    compactions: AtomicU64,
    compactions_failed: AtomicU64,
    retention_deleted: AtomicU64,
    replay_unknown: AtomicU64,
    replay_nanos: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Shared state; `Db` owns it with the background thread.
pub(crate) struct DbInner {
    dir: PathBuf,
    opts: Options,
    pub(crate) head: Head,
    wal: Wal,
    /// Commits (apply + WAL write) and series creation hold it for reading; a checkpoint
    /// holds it for writing while it cuts the WAL and snapshots the head.
    gate: RwLock<()>,
    blocks: RwLock<Arc<Vec<Arc<Block>>>>,
    /// Blocks found damaged, at open or by queries.
    health: BlockHealth,
    /// Open queriers: head truncation waits for those that may miss a new block.
    readers: Readers,
    maintenance: Mutex<()>,
    /// Open write transactions: a head cut waits for those that began before it.
    appenders: Appenders,
    append_buffers: Mutex<Vec<AppendBuffers>>,
    counters: Counters,
    closed: AtomicBool,
    wake: Wake,
    /// When queries last led to a trim, ns since the readers' start.
    last_trim_ns: AtomicU64,
    _lock: File,
}

/// The embedded time-series database. `Send + Sync`; share it behind an `Arc`.
pub struct Db {
    inner: Arc<DbInner>,
    bg: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dir", &self.inner.dir).finish()
    }
}

/// Samples handed to a replay worker at once (384 KiB). Large, so the reader and the
/// workers hand over rarely: every hand-over may put a thread to sleep and wake another,
/// which on a 2-core VM cost a sixth of replay's time with 4,096.
const REPLAY_BATCH: usize = 16384;

/// Batches queued for each replay worker: enough that a worker descheduled for a moment
/// (the reader and the workers are more threads than cores) does not stop the reader, whose
/// other worker would then run dry. 16 batches are 6 MiB per worker.
const REPLAY_QUEUE: usize = 16;

/// Checkpointed series (and their bytes) in one replay batch: while the checkpoint replays,
/// the reader is the bottleneck, so the workers get their first series early.
const REPLAY_RESTORES: usize = 512;
const REPLAY_RESTORE_BYTES: usize = 1 << 20;

/// Work for one replay worker, naming series by their index in the worker's table, applied
/// in this order: new series, checkpointed series, samples (so the reader sends a batch
/// before it adds a checkpointed series that follows samples).
#[derive(Default)]
struct ReplayBatch {
    /// Series the worker appends to its table first.
    new_series: Vec<Arc<MemSeries>>,
    /// Checkpointed series (type 4): the index and the range of `restore_bytes` holding
    /// the record's payload. The worker decodes and copies the chunks, which are most of
    /// a checkpoint's bytes, so the reader (the bottleneck while the checkpoint replays)
    /// only validates the record and copies it in one piece.
    restores: Vec<(u32, std::ops::Range<usize>)>,
    restore_bytes: Vec<u8>,
    samples: Vec<(u32, i64, f64)>,
}

impl ReplayBatch {
    fn is_empty(&self) -> bool {
        self.new_series.is_empty() && self.restores.is_empty() && self.samples.is_empty()
    }

    fn is_full(&self) -> bool {
        self.samples.len() >= REPLAY_BATCH
            || self.restores.len() >= REPLAY_RESTORES
            || self.restore_bytes.len() >= REPLAY_RESTORE_BYTES
    }
}

/// What a replay worker applies, in WAL order for each of its series, which it names by
/// their index in its table.
enum ReplayJob {
    Samples(ReplayBatch),
    /// A checkpointed chunk's bytes (type 3, older checkpoints), decoded by the worker.
    Chunk(u32, Vec<u8>),
    /// Logged histograms (types 5 and 6).
    Histograms(Vec<(u32, i64, HistVal)>),
    /// A checkpointed series' histogram chunks (type 7).
    RestoreHistograms(u32, HistSnapshot),
}

fn apply_replay_job(head: &Head, table: &mut Vec<Replaying>, job: ReplayJob) {
    match job {
        ReplayJob::Samples(batch) => {
            table.extend(batch.new_series.into_iter().map(Replaying::new));
            for (i, range) in batch.restores {
                let Some(e) = table.get_mut(i as usize) else {
                    continue;
                };
                let snap = match batch.restore_bytes.get(range).map(wal::decode_head_series) {
                    Some(Ok(st)) => owned_snapshot(&st),
                    // The reader decoded it before: a bug, not damage.
                    _ => {
                        tracing::error!(series = %e.series().labels,
                            "a checkpointed series record no longer decodes");
                        continue;
                    }
                };
                if let Err(err) = head.restore_series(e, snap) {
                    // The record passed its CRC, so this is a bug, not damage: say so and go
                    // on with what could be restored.
                    tracing::error!(series = %e.series().labels, error = %err,
                        "restoring a checkpointed series");
                }
            }
            head.replay_batch(table, &batch.samples);
        }
        ReplayJob::Chunk(i, bytes) => {
            let Ok(mut it) = XorIterator::new(&bytes) else {
                return;
            };
            let mut batch = Vec::with_capacity(128);
            while let Ok(Some((t, v))) = it.next_sample() {
                batch.push((i, t, v));
            }
            head.replay_batch(table, &batch);
        }
        ReplayJob::Histograms(list) => head.replay_hists(table, &list),
        ReplayJob::RestoreHistograms(i, snap) => {
            let Some(e) = table.get_mut(i as usize) else {
                return;
            };
            if let Err(err) = head.restore_hist_series(e, snap) {
                tracing::error!(series = %e.series().labels, error = %err,
                    "restoring a checkpointed series' histograms");
            }
        }
    }
}

/// A type 4 record's series state, owned by the replay worker that adopts it.
fn owned_snapshot(st: &SeriesState<'_>) -> SeriesSnapshot {
    SeriesSnapshot {
        closed: st
            .closed
            .iter()
            .map(|&(enc, min_t, max_t, b)| HeadChunk {
                min_t,
                max_t,
                enc,
                bytes: Arc::from(b),
            })
            .collect(),
        open: st.open.map(|(t, b)| (t, b.to_vec())),
        ooo: st
            .ooo
            .iter()
            .map(|&(t, v)| Sample::new(t, f64::from_bits(v)))
            .collect(),
        max_t: st.max_t,
        last_v: st.last_v,
        hist: None,
    }
}

/// A checkpointed series' float part as its type 4 record holds it.
fn float_state(r: u64, snap: &SeriesSnapshot) -> SeriesState<'_> {
    SeriesState {
        r,
        max_t: snap.max_t,
        last_v: snap.last_v,
        closed: snap
            .closed
            .iter()
            .map(|c| (c.enc, c.min_t, c.max_t, &c.bytes[..]))
            .collect(),
        open: snap.open.as_ref().map(|(t, b)| (*t, &b[..])),
        ooo: snap.ooo.iter().map(|s| (s.t, s.v.to_bits())).collect(),
    }
}

/// Where replay sends a series' records: its worker (low 3 bits) and its index in that
/// worker's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot(u32);

impl Slot {
    const WORKER_BITS: u32 = 3;
    const MAX_WORKERS: usize = 1 << Self::WORKER_BITS;
    const NONE: Slot = Slot(u32::MAX);

    fn new(worker: usize, index: u32) -> Option<Slot> {
        let packed = index.checked_mul(Self::MAX_WORKERS as u32)? | worker as u32;
        (packed != u32::MAX).then_some(Slot(packed))
    }

    fn worker(self) -> usize {
        (self.0 % Self::MAX_WORKERS as u32) as usize
    }

    fn index(self) -> u32 {
        self.0 >> Self::WORKER_BITS
    }
}

/// The series replay knows by ref, with their slots. Refs are handed out densely from 1
/// (and kept across restarts), so they index vectors: a sample's lookup reads 4 bytes from
/// a table that mostly stays in cache, where a hash map's entries (ref, series, slot) would
/// miss the cache for nearly every sample at 100k+ series. Refs far above the series count
/// (only in a hand-made log) go to a map instead, so a huge ref cannot make replay allocate
/// for every ref below it.
#[derive(Default)]
struct RefTable {
    /// Slot by ref; `Slot::NONE`: none.
    slots: Vec<Slot>,
    /// Series by ref, to find the slot of a series a later record names again.
    series: Vec<Option<Arc<MemSeries>>>,
    sparse: FastMap<u64, (Arc<MemSeries>, Slot)>,
    /// Slots of series whose ref entry a later record (same ref, other labels) replaced, by
    /// the series' address; the `Arc` is held so that address is not reused by another series
    /// while replay runs.
    displaced: FastMap<usize, (Arc<MemSeries>, Slot)>,
    /// Series records inserted.
    count: usize,
}

impl RefTable {
    /// Refs below this many plus four per series record are kept in the vectors, which
    /// thus stay within a small multiple of the series' own memory.
    const DENSE_SLACK: usize = 1 << 20;

    fn insert(&mut self, r: u64, s: Arc<MemSeries>, slot: Slot) {
        self.count += 1;
        let limit = Self::DENSE_SLACK.saturating_add(self.count.saturating_mul(4));
        let old = match usize::try_from(r) {
            Ok(d) if d < limit => {
                if d >= self.slots.len() {
                    self.slots.resize(d + 1, Slot::NONE);
                    self.series.resize(d + 1, None);
                }
                let old_slot = std::mem::replace(&mut self.slots[d], slot);
                // The newer record wins, as it would in a map.
                self.series[d]
                    .replace(s.clone())
                    .map(|o| (o, old_slot))
                    .or_else(|| self.sparse.remove(&r))
            }
            _ => self.sparse.insert(r, (s.clone(), slot)),
        };
        if let Some((o, old_slot)) = old
            && !Arc::ptr_eq(&o, &s)
        {
            self.displaced
                .insert(Arc::as_ptr(&o) as usize, (o, old_slot));
        }
    }

    #[inline]
    fn slot(&self, r: u64) -> Option<Slot> {
        match usize::try_from(r).ok().and_then(|d| self.slots.get(d)) {
            Some(&s) if s != Slot::NONE => Some(s),
            _ if self.sparse.is_empty() => None,
            _ => self.sparse.get(&r).map(|e| e.1),
        }
    }

    /// The slot of a series an earlier record created.
    fn slot_of(&self, s: &Arc<MemSeries>) -> Option<Slot> {
        let by_ref = match usize::try_from(s.r).ok().and_then(|d| self.series.get(d)) {
            Some(Some(o)) => Some(o),
            _ => self.sparse.get(&s.r).map(|e| &e.0),
        };
        if by_ref.is_some_and(|o| Arc::ptr_eq(o, s)) {
            return self.slot(s.r);
        }
        self.displaced.get(&(Arc::as_ptr(s) as usize)).map(|e| e.1)
    }
}

/// Replays the WAL into `head`: series are created on this thread as their records come, and
/// each series goes to one worker per core (by the ref that first names it; every ref naming
/// it later goes to the same worker), so each series' samples are applied in WAL order while
/// the cores share the decoding of chunks and the appends (as Prometheus shards its replay).
/// Workers build their series' samples apart and move them in when the WAL is read.
/// Returns the replay's stats, the next segment number and how many samples named a series
/// no record created.
fn replay_wal(dir: &Path, head: &Head) -> Result<(wal::ReplayStats, u64, u64)> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, Slot::MAX_WORKERS);
    let mut refs = RefTable::default();
    let mut table_len = vec![0u32; workers];
    let mut unknown = 0u64;
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(workers);
        for _ in 0..workers {
            // Bounded: the reader stays ahead without holding the WAL in memory.
            let (tx, rx) = std::sync::mpsc::sync_channel::<ReplayJob>(REPLAY_QUEUE);
            senders.push(tx);
            scope.spawn(move || {
                let mut table = Vec::new();
                for job in rx {
                    apply_replay_job(head, &mut table, job);
                }
                head.finish_replay(table);
            });
        }
        let new_batch = || ReplayBatch {
            samples: Vec::with_capacity(REPLAY_BATCH),
            ..ReplayBatch::default()
        };
        let mut batches: Vec<ReplayBatch> = (0..workers).map(|_| new_batch()).collect();
        // A worker only stops when its channel closes, so a send cannot fail while this
        // thread holds the senders; a failed one would mean the worker panicked, which the
        // scope reports when it joins.
        let send = |senders: &[std::sync::mpsc::SyncSender<ReplayJob>], w: usize, job| {
            let _ = senders[w].send(job);
        };
        let result = wal::replay(dir, &mut |rec| match rec {
            Record::Series(list) => {
                for (r, pairs) in list.iter() {
                    let (s, created) = match LabelPairs::new(pairs) {
                        Ok(p) => head.replay_series_key(r, SeriesKey::Pairs(p), p.stable_hash()),
                        // Only an empty label name, which m3query never logs, fails here;
                        // the record decoded, so its series is replayed as it always was.
                        Err(_) => head.replay_series(
                            r,
                            &Labels::from_sorted(
                                pairs.iter().map(|&(n, v)| Label::new(n, v)).collect(),
                            ),
                        ),
                    };
                    // A series named again (by another ref, or the same) keeps its slot, so
                    // all its samples go to one worker, in WAL order.
                    let known = if created { None } else { refs.slot_of(&s) };
                    let slot = match known {
                        Some(slot) => slot,
                        None => {
                            let w = (r % workers as u64) as usize;
                            let Some(slot) = Slot::new(w, table_len[w]) else {
                                continue;
                            };
                            table_len[w] += 1;
                            batches[w].new_series.push(s.clone());
                            slot
                        }
                    };
                    refs.insert(r, s, slot);
                }
            }
            Record::Samples(list) => {
                for (r, t, v) in list {
                    let Some(slot) = refs.slot(r) else {
                        unknown += 1;
                        continue;
                    };
                    let w = slot.worker();
                    batches[w].samples.push((slot.index(), t, v));
                    if batches[w].is_full() {
                        let full = std::mem::replace(&mut batches[w], new_batch());
                        send(&senders, w, ReplayJob::Samples(full));
                    }
                }
            }
            Record::Chunks(r, chunks) => {
                let Some(slot) = refs.slot(r) else {
                    unknown += 1;
                    return;
                };
                let w = slot.worker();
                // Samples batched for this worker come first: WAL order per series.
                if !batches[w].is_empty() {
                    let pending = std::mem::take(&mut batches[w]);
                    send(&senders, w, ReplayJob::Samples(pending));
                }
                for c in chunks {
                    send(&senders, w, ReplayJob::Chunk(slot.index(), c.to_vec()));
                }
            }
            Record::HeadSeries(st, payload) => {
                let Some(slot) = refs.slot(st.r) else {
                    unknown += 1;
                    return;
                };
                let w = slot.worker();
                // Restores go before a batch's samples: send those first.
                if !batches[w].samples.is_empty() {
                    let pending = std::mem::replace(&mut batches[w], new_batch());
                    send(&senders, w, ReplayJob::Samples(pending));
                }
                let b = &mut batches[w];
                let start = b.restore_bytes.len();
                b.restore_bytes.extend_from_slice(payload);
                b.restores
                    .push((slot.index(), start..b.restore_bytes.len()));
                if b.is_full() {
                    let full = std::mem::replace(&mut batches[w], new_batch());
                    send(&senders, w, ReplayJob::Samples(full));
                }
            }
            Record::Histograms(list) => {
                // Per worker, after the floats batched before them: WAL order per series.
                let mut per: Vec<Vec<(u32, i64, HistVal)>> =
                    (0..workers).map(|_| Vec::new()).collect();
                for (r, t, h) in list {
                    let Some(slot) = refs.slot(r) else {
                        unknown += 1;
                        continue;
                    };
                    per[slot.worker()].push((slot.index(), t, h));
                }
                for (w, list) in per.into_iter().enumerate() {
                    if list.is_empty() {
                        continue;
                    }
                    if !batches[w].is_empty() {
                        let pending = std::mem::take(&mut batches[w]);
                        send(&senders, w, ReplayJob::Samples(pending));
                    }
                    send(&senders, w, ReplayJob::Histograms(list));
                }
            }
            Record::HeadHistograms(r, snap) => {
                let Some(slot) = refs.slot(r) else {
                    unknown += 1;
                    return;
                };
                let w = slot.worker();
                if !batches[w].is_empty() {
                    let pending = std::mem::take(&mut batches[w]);
                    send(&senders, w, ReplayJob::Samples(pending));
                }
                send(
                    &senders,
                    w,
                    ReplayJob::RestoreHistograms(slot.index(), snap),
                );
            }
        });
        for (w, b) in batches.into_iter().enumerate() {
            if !b.is_empty() {
                send(&senders, w, ReplayJob::Samples(b));
            }
        }
        drop(senders);
        result.map(|(stats, next)| (stats, next, unknown))
    })
}

/// Reasons in [`DbMetrics::corrupt_blocks`], always all listed.
const CORRUPT_REASONS: [&str; 4] = ["meta", "index", "chunks", "chunk_checksum"];

/// Opens the blocks in `dir`, removing temporary directories and blocks that a compacted
/// block replaces. Blocks that cannot be opened are returned apart, not deleted: they may
/// hold the only copy of their data.
fn load_blocks(dir: &Path) -> Result<(Vec<Arc<Block>>, Vec<CorruptBlock>)> {
    let mut dirs = Vec::new();
    for e in fs::read_dir(dir).ctx("read directory", dir)? {
        let e = e.ctx("read directory", dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(TMP_CREATION) || name.ends_with(TMP_DELETION) {
            tracing::info!(path = %e.path().display(), "removing unfinished block directory");
            fs::remove_dir_all(e.path()).ctx("remove", &e.path())?;
        } else if is_ulid(&name) && e.path().is_dir() {
            dirs.push((name, e.path()));
        }
    }
    let mut corrupt = Vec::new();
    let mut metas = Vec::new();
    for (name, d) in dirs {
        match read_meta(&d) {
            Ok(m) => metas.push((name, d, m)),
            Err(e) => corrupt.push(CorruptBlock {
                name,
                reason: BlockPart::Meta.as_str(),
                range: None,
                error: e.to_string(),
            }),
        }
    }
    let parents: std::collections::HashSet<String> = metas
        .iter()
        .flat_map(|(_, _, m)| m.compaction.parents.iter().map(|p| p.ulid.clone()))
        .collect();
    let mut blocks = Vec::new();
    for (name, d, m) in metas {
        if parents.contains(&m.ulid) {
            tracing::info!(block = %d.display(), "removing block replaced by a compacted block");
            delete_block_dir(&d)?;
            continue;
        }
        match Block::open_parts(&d) {
            Ok(b) => blocks.push(Arc::new(b)),
            Err((part, e)) => corrupt.push(CorruptBlock {
                name,
                reason: part.as_str(),
                range: Some((m.min_time, m.max_time)),
                error: e.to_string(),
            }),
        }
    }
    for c in &corrupt {
        tracing::error!(block = %c.name, reason = c.reason, error = %c.error,
            "unreadable block: not queried, its data is missing from results (queries warn) until it is restored or removed");
    }
    blocks.sort_by(|a, b| (a.meta.min_time, &a.meta.ulid).cmp(&(b.meta.min_time, &b.meta.ulid)));
    Ok((blocks, corrupt))
}

impl Db {
    /// Opens (or creates) the database in `dir`: removes unfinished blocks, opens blocks,
    /// replays the WAL (repairing a torn tail) and starts the background thread.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).ctx("create database directory", &dir)?;
        let lock = lock_dir(&dir)?;
        let (blocks, corrupt_blocks) = load_blocks(&dir)?;
        let min_valid = blocks
            .iter()
            .map(|b| b.meta.max_time)
            .max()
            .unwrap_or(i64::MIN);
        let head = Head::new(opts.block_range_ms, opts.out_of_order_window_ms, min_valid);
        let counters = Counters::default();
        let start = Instant::now();
        let (stats, next, unknown) = replay_wal(&dir.join("wal"), &head)?;
        let empty = head.remove_empty_series();
        counters
            .wal_corruptions
            .store(stats.corruptions, Ordering::Relaxed);
        counters
            .wal_corrupt_bytes
            .store(stats.corrupt_bytes, Ordering::Relaxed);
        counters
            .wal_truncated_bytes
            .store(stats.truncated_bytes, Ordering::Relaxed);
        counters
            .replay_nanos
            .store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        counters.replay_unknown.store(unknown, Ordering::Relaxed);
        if unknown > 0 {
            tracing::warn!(
                samples = unknown,
                "WAL samples for unknown series refs were dropped"
            );
        }
        tracing::info!(
            dir = %dir.display(),
            blocks = blocks.len(),
            head_series = head.num_series(),
            wal_records = stats.records,
            checkpoint = ?stats.checkpoint,
            empty_series_dropped = empty,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "tsdb opened"
        );
        let wal = Wal::create(&dir.join("wal"), next, opts.wal_segment_bytes, opts.fsync)?;
        let inner = Arc::new(DbInner {
            dir,
            opts,
            head,
            wal,
            gate: RwLock::new(()),
            blocks: RwLock::new(Arc::new(blocks)),
            health: BlockHealth::new(corrupt_blocks),
            readers: Readers::new(),
            maintenance: Mutex::new(()),
            appenders: Appenders::default(),
            append_buffers: Mutex::new(Vec::new()),
            counters,
            closed: AtomicBool::new(false),
            wake: Wake::new(),
            last_trim_ns: AtomicU64::new(0),
            _lock: lock,
        });
        let bg_inner = inner.clone();
        let handle = std::thread::Builder::new()
            .name("tsdb-maintenance".into())
            .spawn(move || bg_inner.background())
            .map_err(|e| Error::io("spawn tsdb maintenance thread", e))?;
        Ok(Db {
            inner,
            bg: Mutex::new(Some(handle)),
        })
    }

    /// Stops the background thread and flushes the WAL. Appends fail afterwards; queries
    /// still work. Idempotent.
    pub fn close(&self) -> Result<()> {
        let first = !self.inner.closed.swap(true, Ordering::AcqRel);
        {
            *self.inner.wake.flag.lock() = true;
            self.inner.wake.cond.notify_all();
        }
        if let Some(h) = self.bg.lock().take() {
            let _ = h.join();
        }
        if first {
            self.inner.wal.sync_now()?;
        }
        Ok(())
    }

    /// Runs one round of maintenance now (head cut, compaction, retention, checkpoint), as
    /// the background thread does. Useful for tests and operators.
    pub fn run_maintenance(&self) -> Result<()> {
        self.inner.maintain()
    }

    /// Writes every sample in the head to blocks (also the newest), then truncates the head
    /// and checkpoints the WAL. Normal operation never needs this; tests and shutdown
    /// snapshots can use it.
    pub fn flush_head(&self) -> Result<()> {
        let _m = self.inner.maintenance.lock();
        let h = &self.inner.head;
        if h.is_empty() {
            return Ok(());
        }
        let r = self.inner.opts.block_range_ms;
        let end = h.max_time().div_euclid(r) * r + r;
        self.inner.persist_below(end)?;
        self.inner.checkpoint()?;
        Ok(())
    }

    /// The database directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The options it was opened with.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Metadata of the current blocks, oldest first.
    pub fn blocks(&self) -> Vec<crate::BlockMeta> {
        self.inner
            .blocks
            .read()
            .iter()
            .map(|b| b.meta.clone())
            .collect()
    }

    /// Opens every block afresh and checks all its checksums and stats.
    pub fn verify_blocks(dir: impl AsRef<Path>) -> Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(dir.as_ref()).ctx("read directory", dir.as_ref())? {
            let e = e.ctx("read directory", dir.as_ref())?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_ulid(&name) && e.path().is_dir() {
                Block::open(&e.path())?.verify()?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// A snapshot of the counters and sizes, for `/metrics`.
    pub fn metrics(&self) -> DbMetrics {
        self.inner.metrics()
    }

    /// The head's series, chunks and time range, and its top `limit` cardinalities: values
    /// of `by_label` (usually `__name__`), label names by value count and by value bytes,
    /// and label pairs by series count. Cost grows with the number of label pairs; writes
    /// that create series wait at most for one short stretch of the scan (see `stats`).
    pub fn head_stats(&self, by_label: &str, limit: usize) -> crate::HeadStats {
        self.inner.head.stats(by_label, limit)
    }

    /// Damage found since open: stretches of WAL skipped at replay plus blocks left out
    /// (unreadable at open, or a chunk failing its checksum). Cheap: no scan of the head.
    pub fn corruption_count(&self) -> u64 {
        self.inner.counters.wal_corruptions.load(Ordering::Relaxed) + self.inner.health.len() as u64
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing tsdb");
        }
    }
}

impl DbInner {
    fn background(&self) {
        let interval = Duration::from_millis(self.opts.maintenance_interval_ms.max(10));
        let fsync_every = match self.opts.fsync {
            Fsync::Interval(ms) => Some(Duration::from_millis(ms.max(1))),
            _ => None,
        };
        let mut next_maint = Instant::now();
        let mut next_sync = fsync_every.map(|d| Instant::now() + d);
        // Replay leaves the chunks it closes in XOR, so the database is ready sooner;
        // they are sealed here, while it serves.
        let start = Instant::now();
        let sealed = self.head.seal_closed();
        if sealed > 0 {
            tracing::info!(
                chunks = sealed,
                elapsed_ms = start.elapsed().as_millis() as u64,
                "sealed replayed head chunks"
            );
            release_free_memory();
        }
        loop {
            {
                let mut w = self.wake.flag.lock();
                if !*w && !self.closed.load(Ordering::Acquire) {
                    let mut until = next_sync.map_or(next_maint, |s| s.min(next_maint));
                    if let Some(t) = self.trim_due() {
                        until = until.min(t);
                    }
                    self.wake.cond.wait_until(&mut w, until);
                }
                if self.closed.load(Ordering::Acquire) {
                    return;
                }
                if *w {
                    next_maint = Instant::now();
                }
                *w = false;
            }
            let now = Instant::now();
            if self.trim_due().is_some_and(|t| now >= t)
                && let Some(at) = self.readers.take_trim()
            {
                release_free_memory();
                self.last_trim_ns.store(at, Ordering::Release);
            }
            if let (Some(at), Some(every)) = (next_sync, fsync_every)
                && now >= at
            {
                if let Err(e) = self.wal.sync_now() {
                    tracing::error!(error = %e, "periodic WAL fsync failed");
                }
                next_sync = Some(now + every);
            }
            if now >= next_maint {
                if let Err(e) = self.maintain() {
                    tracing::error!(error = %e, "tsdb maintenance failed");
                }
                next_maint = Instant::now() + interval;
            }
        }
    }

    /// When to return query memory to the OS: a quiet second after the last querier that
    /// selected series was dropped (queries decode into buffers that glibc would otherwise
    /// keep resident after the burst). Trimming locks each malloc arena while it walks it:
    /// on a large heap, not more often than every TRIM_MIN_INTERVAL.
    fn trim_due(&self) -> Option<Instant> {
        let last_trim = self.last_trim_ns.load(Ordering::Acquire);
        self.readers
            .trim_due(TRIM_AFTER_QUERIES_QUIET, last_trim, TRIM_MIN_INTERVAL)
    }

    fn head_compactable(&self) -> bool {
        let h = &self.head;
        if h.is_empty() {
            return false;
        }
        let (min, max) = (h.min_time(), h.max_time());
        min < h.min_valid_time() || max.saturating_sub(min) > self.opts.block_range_ms / 2 * 3
    }

    fn wake(&self) {
        let mut w = self.wake.flag.lock();
        if !*w {
            *w = true;
            self.wake.cond.notify_one();
        }
    }

    /// Head cuts, compactions, retention, and a checkpoint if the head was truncated.
    fn maintain(&self) -> Result<()> {
        let _m = self.maintenance.lock();
        let r = self.opts.block_range_ms;
        let mut truncated = false;
        let mut rounds = 0;
        while self.head_compactable() && rounds < 1000 {
            rounds += 1;
            let h = &self.head;
            let (min, max, valid) = (h.min_time(), h.max_time(), h.min_valid_time());
            let end = if min < valid && max.saturating_sub(min) <= r / 2 * 3 {
                valid
            } else {
                min.div_euclid(r) * r + r
            };
            self.persist_below(end.max(valid))?;
            truncated = true;
        }
        if truncated {
            self.checkpoint()?;
        }
        self.compact_blocks();
        self.apply_retention()?;
        if truncated {
            // A head cut frees most of the head's chunks, scattered between live
            // allocations; without this glibc keeps those pages resident.
            release_free_memory();
        }
        Ok(())
    }

    /// Writes all head data older than `end` to level-1 blocks (one per aligned window),
    /// then drops it from the head.
    fn persist_below(&self, end: i64) -> Result<()> {
        let r = self.opts.block_range_ms;
        let head = &self.head;
        // From here on no in-order sample below `end` is accepted (checked under each
        // series' lock), so the snapshot below holds every in-order chunk that ends before it.
        head.raise_min_valid_time(end);
        // Transactions that began before the raise may still commit samples below `end`
        // that they accepted: wait for them, so the snapshot below holds those too.
        let given_up = self.appenders.wait_for_older();
        if given_up > 0 {
            tracing::warn!(
                transactions = given_up,
                end,
                "write transactions open for 30s: cutting the head anyway; their samples below the cut are refused at commit"
            );
        }
        let mut windows: std::collections::BTreeMap<i64, Vec<SeriesChunks>> = Default::default();
        let mut taken_ooo: HashMap<u64, Vec<i64>> = HashMap::new();
        let mut series = head.all_series();
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        for s in &series {
            let mut cs = Vec::new();
            let ooo_ts = {
                let d = s.data.lock();
                d.chunks(i64::MIN, end - 1, &mut cs);
                d.ooo_times_before(end)
            };
            if !ooo_ts.is_empty() {
                taken_ooo.insert(s.r, ooo_ts);
            }
            // Group chunks by window; an out-of-order chunk spanning windows goes to each.
            let mut by_w: std::collections::BTreeMap<i64, Vec<QChunk>> = Default::default();
            for c in cs {
                let (w0, w1) = (c.min_t.div_euclid(r), c.max_t.div_euclid(r));
                for w in w0..=w1 {
                    by_w.entry(w).or_default().push(c.clone());
                }
            }
            for (w, chunks) in by_w {
                windows.entry(w).or_default().push(SeriesChunks {
                    labels: s.labels.clone(),
                    chunks,
                });
            }
        }
        drop(series);
        for (w, list) in windows {
            let (mint, maxt) = (w * r, (w * r + r).min(end));
            let compaction = BlockCompaction {
                level: 1,
                ..Default::default()
            };
            if let Some(meta) = write_block(&self.dir, mint, w * r + r, list, compaction)? {
                let b = Arc::new(Block::open(&self.dir.join(&meta.ulid))?);
                tracing::info!(ulid = %meta.ulid, min_time = mint, max_time = maxt,
                    series = meta.stats.num_series, samples = meta.stats.num_samples, "head cut into block");
                self.add_blocks(vec![b], &[]);
                inc(&self.counters.head_cuts);
            }
        }
        // Queriers that took their block list before these blocks were added read this data
        // from the head: let them finish first (see `readers`).
        let left = self
            .readers
            .wait_for_readers_below(self.readers.epoch(), end);
        if left > 0 {
            tracing::warn!(
                queriers = left,
                end,
                "queriers open for minutes: truncating the head anyway; they may miss samples below the cut"
            );
        }
        let st = head.truncate_persisted(end, &taken_ooo);
        tracing::debug!(
            end,
            series_removed = st.series_removed,
            chunks_removed = st.chunks_removed,
            "head truncated"
        );
        Ok(())
    }

    /// Replaces `remove` (by ulid) with `add` in the block list.
    fn add_blocks(&self, add: Vec<Arc<Block>>, remove: &[String]) {
        let mut g = self.blocks.write();
        let mut v: Vec<Arc<Block>> = g
            .iter()
            .filter(|b| !remove.contains(&b.meta.ulid))
            .cloned()
            .collect();
        v.extend(add);
        v.sort_by(|a, b| (a.meta.min_time, &a.meta.ulid).cmp(&(b.meta.min_time, &b.meta.ulid)));
        *g = Arc::new(v);
    }

    /// Cuts the WAL and writes a checkpoint of the head as of the cut.
    fn checkpoint(&self) -> Result<()> {
        let (upto, snapshot) = {
            let _g = self.gate.write();
            let upto = self.wal.cut()?;
            let snap: Vec<(u64, Labels, SeriesSnapshot)> = self
                .head
                .all_series()
                .into_iter()
                .map(|s| (s.r, s.labels.clone(), s.data.lock().snapshot()))
                .collect();
            (upto, snap)
        };
        let start = Instant::now();
        let bytes = self.wal.checkpoint(upto, &mut |emit| {
            let mut p = Vec::with_capacity(1 << 20);
            for (r, l, _) in &snapshot {
                encode_series(&mut p, *r, l);
                if p.len() >= 1 << 20 {
                    emit(REC_SERIES, &p)?;
                    p.clear();
                }
            }
            if !p.is_empty() {
                emit(REC_SERIES, &p)?;
            }
            // Out-of-order histograms (types 8 and 9), after every series' chunks, so
            // replay judges them against their series' newest sample as appends were.
            let mut ooo_int = HistSamplesEncoder::default();
            let mut ooo_float = HistSamplesEncoder::default();
            for (r, _, snap) in &snapshot {
                if let Some(h) = &snap.hist {
                    // Histogram chunks (type 7, wal.md), after the series' floats; those
                    // carry the series' newest time, which out-of-order histograms need.
                    let mut q = Vec::new();
                    wal::encode_hist_state(&mut q, *r, h);
                    if !(snap.closed.is_empty()
                        && snap.open.is_none()
                        && snap.ooo.is_empty()
                        && h.ooo.is_empty())
                    {
                        p.clear();
                        wal::encode_series_state(&mut p, &float_state(*r, snap));
                        emit(REC_HEAD_SERIES, &p)?;
                    }
                    emit(REC_HEAD_HISTOGRAMS, &q)?;
                    for (t, v) in &h.ooo {
                        let e = if v.is_float() {
                            &mut ooo_float
                        } else {
                            &mut ooo_int
                        };
                        e.push(*r, *t, v);
                        if e.buf.len() >= 1 << 20 {
                            let typ = if v.is_float() {
                                REC_OOO_FLOAT_HISTOGRAMS
                            } else {
                                REC_OOO_HISTOGRAMS
                            };
                            emit(typ, &e.buf)?;
                            e.clear();
                        }
                    }
                    continue;
                }
                if snap.closed.is_empty() && snap.open.is_none() && snap.ooo.is_empty() {
                    continue;
                }
                // Chunks as the head holds them (type 4, wal.md): replay adopts them.
                p.clear();
                wal::encode_series_state(&mut p, &float_state(*r, snap));
                emit(REC_HEAD_SERIES, &p)?;
            }
            for (typ, e) in [
                (REC_OOO_HISTOGRAMS, &ooo_int),
                (REC_OOO_FLOAT_HISTOGRAMS, &ooo_float),
            ] {
                if !e.buf.is_empty() {
                    emit(typ, &e.buf)?;
                }
            }
            Ok(())
        })?;
        inc(&self.counters.checkpoints);
        tracing::info!(
            upto,
            series = snapshot.len(),
            bytes,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "WAL checkpoint written"
        );
        Ok(())
    }

    fn compact_blocks(&self) {
        let ranges = self.opts.compaction_ranges();
        for _ in 0..100 {
            let blocks = self.blocks.read().clone();
            let metas: Vec<&crate::BlockMeta> = blocks.iter().map(|b| &b.meta).collect();
            let Some(group) = plan(&metas, &ranges, self.head.min_valid_time()) else {
                return;
            };
            let parents: Vec<Arc<Block>> = group.iter().map(|&i| blocks[i].clone()).collect();
            let start = Instant::now();
            let res = compact(&self.dir, &parents).and_then(|meta| {
                let add = match &meta {
                    Some(m) => vec![Arc::new(Block::open(&self.dir.join(&m.ulid))?)],
                    None => Vec::new(),
                };
                Ok((meta, add))
            });
            match res {
                Ok((meta, add)) => {
                    let ulids: Vec<String> = parents.iter().map(|b| b.meta.ulid.clone()).collect();
                    self.add_blocks(add, &ulids);
                    for p in &parents {
                        if let Err(e) = delete_block_dir(&p.dir) {
                            tracing::error!(block = %p.dir.display(), error = %e, "deleting compacted block");
                        }
                    }
                    inc(&self.counters.compactions);
                    tracing::info!(parents = ?ulids, new = ?meta.map(|m| m.ulid), elapsed_ms = start.elapsed().as_millis() as u64, "compacted blocks");
                }
                Err(e) => {
                    inc(&self.counters.compactions_failed);
                    tracing::error!(error = %e, "compaction failed");
                    return;
                }
            }
        }
    }

    fn apply_retention(&self) -> Result<()> {
        let blocks = self.blocks.read().clone();
        let victims = retention_victims(
            &blocks,
            self.opts.retention_ms,
            self.opts.retention_bytes,
            if self.opts.retention_bytes.is_some() {
                self.wal.disk_bytes()
            } else {
                0
            },
        );
        if victims.is_empty() {
            return Ok(());
        }
        let ulids: Vec<String> = victims
            .iter()
            .map(|&i| blocks[i].meta.ulid.clone())
            .collect();
        self.add_blocks(Vec::new(), &ulids);
        for &i in &victims {
            tracing::info!(block = %blocks[i].meta.ulid, "deleting block past retention");
            delete_block_dir(&blocks[i].dir)?;
            inc(&self.counters.retention_deleted);
        }
        Ok(())
    }

    fn metrics(&self) -> DbMetrics {
        let c = &self.counters;
        let w = &self.wal.metrics;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let blocks = self.blocks.read().clone();
        let blocks_bytes: u64 = blocks.iter().map(|b| b.size_bytes).sum();
        let wal_disk = self.wal.disk_bytes();
        let mut cum = 0;
        let mut buckets = Vec::with_capacity(FSYNC_BUCKETS_S.len() + 1);
        for (i, b) in w.fsync_buckets.iter().enumerate() {
            cum += l(b);
            buckets.push((
                FSYNC_BUCKETS_S.get(i).copied().unwrap_or(f64::INFINITY),
                cum,
            ));
        }
        let chunk_bytes = self.head.chunk_bytes();
        DbMetrics {
            head_series: self.head.num_series(),
            head_chunks: self.head.num_chunks.load(Ordering::Relaxed).max(0) as u64,
            head_chunk_bytes: chunk_bytes.0 as u64,
            head_histogram_chunk_bytes: chunk_bytes.1 as u64,
            head_min_time_ms: self.head.min_time(),
            head_max_time_ms: self.head.max_time(),
            head_min_valid_time_ms: self.head.min_valid_time(),
            symbols: self.head.symbols.len() as u64,
            samples_appended_total: l(&c.samples_appended),
            histogram_samples_appended_total: l(&c.hist_appended),
            out_of_order_samples_appended_total: l(&c.ooo_appended),
            refused_out_of_order_total: l(&c.refused_ooo),
            refused_out_of_bounds_total: l(&c.refused_bounds),
            refused_too_old_total: l(&c.refused_too_old),
            refused_duplicate_total: l(&c.refused_dup),
            refused_too_far_in_future_total: l(&c.refused_future),
            refused_older_than_retention_total: l(&c.refused_retention),
            dropped_at_commit_total: l(&c.dropped_at_commit),
            wal_fsyncs_total: l(&w.fsyncs),
            wal_fsync_seconds_sum: l(&w.fsync_nanos) as f64 / 1e9,
            wal_fsync_buckets: buckets,
            wal_bytes_written_total: l(&w.bytes_written),
            wal_records_total: l(&w.records),
            wal_disk_bytes: wal_disk,
            wal_replay_seconds: l(&c.replay_nanos) as f64 / 1e9,
            wal_replay_unknown_refs_total: l(&c.replay_unknown),
            wal_corruptions_total: l(&c.wal_corruptions),
            wal_corrupt_bytes_total: l(&c.wal_corrupt_bytes),
            wal_truncated_bytes_total: l(&c.wal_truncated_bytes),
            corrupt_blocks: self.health.counts(&CORRUPT_REASONS),
            checkpoints_total: l(&c.checkpoints),
            head_cuts_total: l(&c.head_cuts),
            compactions_total: l(&c.compactions),
            compactions_failed_total: l(&c.compactions_failed),
            retention_deleted_blocks_total: l(&c.retention_deleted),
            blocks: blocks.len() as u64,
            blocks_bytes,
            disk_bytes: blocks_bytes + wal_disk,
        }
    }

    /// The time window appends accept now (see [`TimeWindow`]).
    fn time_window(&self) -> TimeWindow {
        let newest = if self.opts.future_grace_period_ms > 0 {
            now_ms().saturating_add(self.opts.future_grace_period_ms)
        } else {
            i64::MAX
        };
        let oldest = if self.opts.retention_ms > 0 {
            // Relative to the newest data, as retention deletes blocks.
            let head = (!self.head.is_empty()).then(|| self.head.max_time());
            let block = self.blocks.read().last().map(|b| b.meta.max_time - 1);
            match head.max(block) {
                Some(t) => t.saturating_sub(self.opts.retention_ms),
                None => i64::MIN,
            }
        } else {
            i64::MIN
        };
        TimeWindow { oldest, newest }
    }

    /// Refuses `t` outside `w`, naming the limit.
    fn check_window(&self, w: TimeWindow, t: i64) -> SResult<()> {
        let e = if t > w.newest {
            StorageError::TooFarInFuture(format!(
                "more than {} ahead of the server's clock (storage.futureGracePeriod)",
                fmt_ms(self.opts.future_grace_period_ms)
            ))
        } else if t < w.oldest {
            StorageError::OlderThanRetention(format!(
                "more than {} before the newest sample (storage.retention)",
                fmt_ms(self.opts.retention_ms)
            ))
        } else {
            return Ok(());
        };
        self.count_refusal(&e);
        Err(e)
    }

    fn count_refusal(&self, e: &StorageError) {
        let c = &self.counters;
        match e {
            StorageError::OutOfOrderSample => inc(&c.refused_ooo),
            StorageError::OutOfBounds => inc(&c.refused_bounds),
            StorageError::TooOldSample => inc(&c.refused_too_old),
            StorageError::DuplicateSampleForTimestamp => inc(&c.refused_dup),
            StorageError::TooFarInFuture(_) => inc(&c.refused_future),
            StorageError::OlderThanRetention(_) => inc(&c.refused_retention),
            _ => {}
        }
    }
}

impl Queryable for Db {
    fn querier(&self, mint: i64, maxt: i64) -> SResult<Box<dyn Querier + '_>> {
        let i = &*self.inner;
        Ok(Box::new(DbQuerier {
            view: Snapshot::take(&i.head, &i.blocks, &i.health, &i.readers, &i.wake, mint),
            mint,
            maxt,
        }))
    }

    /// The oldest block's start, or the head's oldest sample when there are no blocks.
    fn min_time(&self) -> Option<i64> {
        let blocks = self.inner.blocks.read().first().map(|b| b.meta.min_time);
        let head = (!self.inner.head.is_empty()).then(|| self.inner.head.min_time());
        match (blocks, head) {
            (Some(b), Some(h)) => Some(b.min(h)),
            (b, h) => b.or(h),
        }
    }
}

impl Appendable for Db {
    fn appender(&self) -> Box<dyn Appender + '_> {
        let b = self.inner.append_buffers.lock().pop().unwrap_or_default();
        // Registered before the bounds are read: see `Appenders`.
        let era = self.inner.appenders.begin();
        let min_valid_t = self.inner.head.min_valid_time();
        Box::new(DbAppender {
            db: &self.inner,
            era,
            min_valid_t,
            series: b.series,
            by_hash: b.by_hash,
            samples: b.samples,
            hists: b.hists,
            wal: b.wal,
            new_keys: b.new_keys,
            last: None,
            done: false,
            window: None,
        })
    }
}

struct PendingSeries {
    s: Arc<MemSeries>,
    /// This transaction created the series.
    created: bool,
    /// Newest in-order sample appended in this transaction (`i64::MIN`: none).
    max_t: i64,
    last_v: u64,
    /// When that sample is a histogram: its index in the transaction's `hists`.
    hist: Option<u32>,
}

/// Marks a pending entry's series index: the entry is a histogram whose value bits hold its
/// index in the transaction's `hists` (keeps float entries 16 bytes and every entry in
/// append order).
const HIST_FLAG: u32 = 1 << 31;

/// What a series' newest sample is, as a commit extends it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NewestHist {
    /// Not a histogram (a float, or none).
    No,
    /// The stored newest histogram.
    Stored,
    /// A histogram of this batch (index in `hists`).
    Pending(usize),
}

/// A write transaction: validates samples as they are appended, applies and logs them on
/// commit. Series it touches are pinned (not garbage-collected) until it ends.
struct DbAppender<'a> {
    db: &'a DbInner,
    /// The transaction's era in the registry of open ones, and the head's minimum valid
    /// time when it began: a head cut waits for it, so it may commit what it accepted.
    era: u64,
    min_valid_t: i64,
    series: Vec<PendingSeries>,
    by_hash: crate::head::FastMap<u64, usize>,
    samples: Vec<(u32, i64, f64)>,
    /// Histograms appended (see [`HIST_FLAG`]).
    hists: Vec<HistVal>,
    /// The samples record being built at commit.
    wal: Vec<u8>,
    /// Keys the writer named new series by (key, series index, label hash): remembered in
    /// the head's key cache once the commit succeeds.
    new_keys: Vec<(Box<[u8]>, usize, u64)>,
    last: Option<(Labels, usize)>,
    done: bool,
    /// The time window, read once per transaction (it moves slowly; reading the clock and
    /// the block list per sample would not).
    window: Option<TimeWindow>,
}

/// A transaction's buffers, kept by the `Db` between transactions: a remote-write request
/// fills ~200 KiB of them, and allocating them afresh per request only fragments the heap.
#[derive(Default)]
pub(crate) struct AppendBuffers {
    series: Vec<PendingSeries>,
    by_hash: crate::head::FastMap<u64, usize>,
    samples: Vec<(u32, i64, f64)>,
    hists: Vec<HistVal>,
    wal: Vec<u8>,
    new_keys: Vec<(Box<[u8]>, usize, u64)>,
}

impl AppendBuffers {
    /// Buffer sets kept: about as many as requests run at once.
    const KEEP: usize = 8;
    /// Larger sets (a huge transaction) are dropped rather than kept.
    const MAX_SAMPLES: usize = 1 << 18;
}

impl DbAppender<'_> {
    /// The transaction's index of the series `key` names (hash `hash`), looked up in the
    /// head (and created there) the first time the transaction meets it.
    fn series_index(&mut self, key: SeriesKey<'_>, hash: u64) -> usize {
        let found = match self.by_hash.get(&hash) {
            Some(&i) if key.matches(&self.series[i].s.labels) => Some(i),
            Some(_) => self.series.iter().position(|p| key.matches(&p.s.labels)),
            None => None,
        };
        if let Some(i) = found {
            return i;
        }
        let db = self.db;
        let (s, created) = {
            let _g = db.gate.read();
            db.head
                .get_or_create(key, hash, true, |s| db.wal.log_series(s.r, &s.labels))
        };
        self.series.push(PendingSeries {
            s,
            created,
            max_t: i64::MIN,
            last_v: 0,
            hist: None,
        });
        let i = self.series.len() - 1;
        self.by_hash.entry(hash).or_insert(i);
        i
    }

    fn series_index_for(&mut self, labels: &Labels) -> usize {
        if let Some((l, i)) = &self.last
            && l == labels
        {
            return *i;
        }
        let i = self.series_index(SeriesKey::Labels(labels), labels.stable_hash());
        self.last = Some((labels.clone(), i));
        i
    }

    /// [`Appender::append_samples`], remembering `key` for the series when there is one.
    fn append_pairs(
        &mut self,
        key: Option<&[u8]>,
        labels: LabelPairs<'_>,
        samples: &[Sample],
        refused: &mut dyn FnMut(usize, StorageError),
    ) -> SResult<()> {
        self.check_open()?;
        if labels.is_empty() {
            return Err(StorageError::InvalidLabels("empty label set".into()));
        }
        if samples.is_empty() {
            return Ok(());
        }
        let hash = labels.stable_hash();
        let i = self.series_index(SeriesKey::Pairs(labels), hash);
        if let Some(key) = key {
            self.new_keys.push((key.into(), i, hash));
        }
        self.append_to(i, samples, refused);
        Ok(())
    }

    /// Queues `samples` for series `i` of this transaction, reporting refusals.
    fn append_to(
        &mut self,
        i: usize,
        samples: &[Sample],
        refused: &mut dyn FnMut(usize, StorageError),
    ) {
        self.last = None;
        let bounds = self.bounds();
        let s = self.series[i].s.clone();
        let d = s.data.lock();
        let window = self.window();
        self.samples.reserve(samples.len());
        for (k, x) in samples.iter().enumerate() {
            if let Err(e) = self
                .db
                .check_window(window, x.t)
                .and_then(|()| self.queue(i, &d, x.t, x.v, bounds))
            {
                refused(k, e);
            }
        }
    }

    /// The bounds samples are judged against: the head's, with the minimum valid time the
    /// transaction began with while a head cut waits for it (see `Appenders`).
    fn bounds(&self) -> Bounds {
        let mut b = self.db.head.bounds();
        if self.db.appenders.honoured(self.era) {
            b.min_valid_t = b.min_valid_t.min(self.min_valid_t);
        }
        b
    }

    fn window(&mut self) -> TimeWindow {
        *self.window.get_or_insert_with(|| self.db.time_window())
    }

    fn check_open(&self) -> SResult<()> {
        if self.db.closed.load(Ordering::Acquire) || self.done {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// Checks `(t, v)` against the series (its stored newest sample, or the newest this
    /// transaction appended) and queues it for commit. `d` is the series' data, locked.
    fn queue(&mut self, i: usize, d: &SeriesData, t: i64, v: f64, bounds: Bounds) -> SResult<()> {
        let p = &mut self.series[i];
        let vb = v.to_bits();
        let pending = p.max_t != i64::MIN && p.max_t > d.max_t;
        let (mt, lv, nh) = if pending {
            (p.max_t, p.last_v, p.hist.is_some())
        } else {
            (d.max_t, d.last_v, d.newest_is_hist())
        };
        if nh && vb == STALE_NAN_BITS {
            // Marks a histogram series stale: judged (and, at commit, stored) as a
            // histogram stale marker, as Prometheus's head does.
            let float = match (pending, p.hist) {
                (true, Some(k)) => self.hists[k as usize].is_float(),
                _ => d.newest_hist().is_some_and(HistVal::is_float),
            };
            return self.queue_hist(i, d, t, HistVal::stale(float), Some(v));
        }
        match d.fit(mt, lv, nh, t, vb, bounds) {
            Ok(f) => {
                if f == Fit::InOrder {
                    p.max_t = t;
                    p.last_v = vb;
                    p.hist = None;
                }
                self.samples.push((i as u32, t, v));
                Ok(())
            }
            Err(e) => {
                self.db.count_refusal(&e);
                Err(e)
            }
        }
    }

    /// As [`DbAppender::queue`] for a histogram. `as_float`: the float stale marker it
    /// stands for (queued as that float; the commit decides its kind against the series'
    /// newest sample then).
    fn queue_hist(
        &mut self,
        i: usize,
        d: &SeriesData,
        t: i64,
        h: HistVal,
        as_float: Option<f64>,
    ) -> SResult<()> {
        let bounds = self.bounds();
        let p = &self.series[i];
        let pending = p.max_t != i64::MIN && p.max_t > d.max_t;
        let (mt, newest) = if pending {
            (p.max_t, p.hist.map(|k| &self.hists[k as usize]))
        } else {
            (d.max_t, d.newest_hist())
        };
        match d.fit_hist(mt, newest, t, &h, bounds) {
            Ok(f) => {
                let k = self.hists.len() as u32;
                self.hists.push(h);
                if f == Fit::InOrder {
                    let p = &mut self.series[i];
                    p.max_t = t;
                    p.hist = Some(k);
                }
                match as_float {
                    Some(v) => self.samples.push((i as u32, t, v)),
                    None => {
                        self.samples
                            .push((i as u32 | HIST_FLAG, t, f64::from_bits(u64::from(k))))
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.db.count_refusal(&e);
                Err(e)
            }
        }
    }

    /// Checks and queues one histogram of either kind.
    fn append_hist(&mut self, labels: &Labels, t: i64, h: HistVal) -> SResult<()> {
        self.check_open()?;
        if labels.is_empty() {
            return Err(StorageError::InvalidLabels("empty label set".into()));
        }
        labels.validate().map_err(StorageError::InvalidLabels)?;
        // Prometheus's head refuses invalid histograms, one sample at a time.
        h.validate().map_err(StorageError::InvalidSample)?;
        let w = self.window();
        self.db.check_window(w, t)?;
        let i = self.series_index_for(labels);
        let s = self.series[i].s.clone();
        let d = s.data.lock();
        self.queue_hist(i, &d, t, h, None)
    }

    /// The WAL records of a batch holding histograms: runs of one record type in the order
    /// the samples were judged, so replay applies each series' samples in that order.
    fn mixed_records(
        &self,
        accepted: &[(u32, i64, f64, Fit)],
        hvals: &[HistVal],
    ) -> Vec<(u8, Vec<u8>)> {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut floats = SamplesEncoder::default();
        let mut hists = HistSamplesEncoder::default();
        let mut cur: Option<u8> = None;
        let mut flush =
            |cur: Option<u8>, f: &mut SamplesEncoder, h: &mut HistSamplesEncoder| match cur {
                Some(REC_SAMPLES) => out.push((REC_SAMPLES, std::mem::take(f).buf)),
                Some(typ) => {
                    out.push((typ, std::mem::take(&mut h.buf)));
                    h.clear();
                }
                None => {}
            };
        for &(ie, t, v, f) in accepted {
            let i = (ie & !HIST_FLAG) as usize;
            let r = self.series[i].s.r;
            let h = (ie & HIST_FLAG != 0)
                .then(|| hvals.get(v.to_bits() as usize))
                .flatten();
            let typ = match (h, f) {
                (None, _) => REC_SAMPLES,
                (Some(h), Fit::OutOfOrder) if h.is_float() => REC_OOO_FLOAT_HISTOGRAMS,
                (Some(_), Fit::OutOfOrder) => REC_OOO_HISTOGRAMS,
                (Some(h), _) if h.is_float() => REC_FLOAT_HISTOGRAMS,
                (Some(_), _) => REC_HISTOGRAMS,
            };
            if cur != Some(typ) {
                flush(cur, &mut floats, &mut hists);
                cur = Some(typ);
            }
            match h {
                None => floats.push(r, t, v),
                Some(h) => hists.push(r, t, h),
            }
        }
        flush(cur, &mut floats, &mut hists);
        out
    }

    /// After a commit: remembers the keys new series were named by, for series the head
    /// still has (`finish` dropped those the commit left empty).
    fn remember_keys(&mut self) {
        if self.new_keys.is_empty() {
            return;
        }
        let head = &self.db.head;
        // A bound, should keys ever outgrow the series they name (many encodings of each).
        if head.keys.len() > 2 * head.num_series() as usize + 4096 {
            head.keys.clear();
        }
        for (key, i, hash) in self.new_keys.drain(..) {
            if let Some(p) = self.series.get(i)
                && head.is_live(&p.s, hash)
            {
                head.keys.insert(key, p.s.clone(), hash);
            }
        }
    }

    /// Ends the transaction: unpins its series and removes those it left without samples
    /// (that it created, or, when it `failed`, any): a write that changed nothing must
    /// leave no series behind.
    fn finish(&mut self, failed: bool) {
        if self.done {
            return;
        }
        self.done = true;
        self.db.appenders.end(self.era);
        for p in &self.series {
            p.s.unpin();
        }
        for p in &self.series {
            if p.created || failed {
                self.db.head.remove_if_unused(&p.s);
            }
        }
    }
}

impl Appender for DbAppender<'_> {
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> SResult<()> {
        self.check_open()?;
        if labels.is_empty() {
            return Err(StorageError::InvalidLabels("empty label set".into()));
        }
        labels.validate().map_err(StorageError::InvalidLabels)?;
        let w = self.window();
        self.db.check_window(w, t)?;
        let i = self.series_index_for(labels);
        let bounds = self.bounds();
        let s = self.series[i].s.clone();
        let d = s.data.lock();
        self.queue(i, &d, t, v, bounds)
    }

    fn append_histogram(&mut self, labels: &Labels, t: i64, h: &FloatHistogram) -> SResult<()> {
        self.append_hist(labels, t, HistVal::Float(h.clone()))
    }

    /// Integer histograms go to HISTOGRAM chunks (smaller than FLOAT_HISTOGRAM ones).
    fn append_int_histogram(&mut self, labels: &Labels, t: i64, h: &Histogram) -> SResult<()> {
        self.append_hist(labels, t, HistVal::Int(h.clone()))
    }

    /// One series lookup (by a hash of the borrowed pairs, no label set built unless the
    /// series is new) and one lock of the series for the whole run of samples.
    fn append_samples(
        &mut self,
        labels: LabelPairs<'_>,
        samples: &[Sample],
        refused: &mut dyn FnMut(usize, StorageError),
    ) -> SResult<()> {
        self.append_pairs(None, labels, samples, refused)
    }

    fn append_samples_by_key(
        &mut self,
        key: &[u8],
        samples: &[Sample],
        refused: &mut dyn FnMut(usize, StorageError),
    ) -> SResult<bool> {
        self.check_open()?;
        let Some((s, hash)) = self.db.head.keys.get(key) else {
            return Ok(false);
        };
        // Every series of the transaction is under its label hash in `by_hash` (the first
        // one with that hash): another series there is a collision, found by a scan.
        let here = match self.by_hash.get(&hash) {
            Some(&i) if Arc::ptr_eq(&self.series[i].s, &s) => Some(i),
            Some(_) => self.series.iter().position(|p| Arc::ptr_eq(&p.s, &s)),
            None => None,
        };
        let i = match here {
            Some(i) => i,
            None => {
                // Dropped from the head since it was remembered: the caller goes the
                // long way, which finds or makes the series and remembers it again.
                if !self.db.head.pin_if_live(&s, hash) {
                    return Ok(false);
                }
                self.series.push(PendingSeries {
                    s,
                    created: false,
                    max_t: i64::MIN,
                    last_v: 0,
                    hist: None,
                });
                let i = self.series.len() - 1;
                self.by_hash.entry(hash).or_insert(i);
                i
            }
        };
        if !samples.is_empty() {
            self.append_to(i, samples, refused);
        }
        Ok(true)
    }

    fn append_samples_keyed(
        &mut self,
        key: &[u8],
        labels: LabelPairs<'_>,
        samples: &[Sample],
        refused: &mut dyn FnMut(usize, StorageError),
    ) -> SResult<()> {
        self.append_pairs(Some(key), labels, samples, refused)
    }

    /// Logs the batch, then applies it: every series the batch touches is locked (in ref
    /// order, so commits sharing series cannot deadlock) while its samples are judged, the
    /// WAL record is written and the samples are stored. A failed WAL write therefore
    /// leaves the head as it was, and the client's retry is judged as if the failed
    /// attempt never happened. The fsync wait (per [`Fsync`]) comes after the locks are
    /// released, so readers and other writers never wait for a disk flush.
    fn commit(mut self: Box<Self>) -> SResult<()> {
        if self.done {
            return Err(StorageError::Closed);
        }
        if self.samples.is_empty() {
            self.finish(false);
            return Ok(());
        }
        let db = self.db;
        let head = &db.head;
        let range = head.chunk_range_ms;
        let mut enc = SamplesEncoder::with_buf(std::mem::take(&mut self.wal));
        // 13 bytes per sample is typical (varint ref and time deltas, 8-byte value).
        enc.buf.reserve(self.samples.len() * 14 + 16);
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        let (mut ooo, mut dropped, mut chunks_cut, mut dups) = (0u64, 0u64, 0i64, 0u64);
        let mut order: Vec<usize> = Vec::new();
        let mut hvals = std::mem::take(&mut self.hists);
        let mut mixed = false;
        let count: u64;
        // Accepted histograms, of which `hdups` duplicates.
        let (mut hcount, mut hdups) = (0u64, 0u64);
        {
            let mut used = vec![false; self.series.len()];
            for &(i, _, _) in &self.samples {
                used[(i & !HIST_FLAG) as usize] = true;
            }
            order.extend((0..self.series.len()).filter(|&i| used[i]));
        }
        order.sort_unstable_by_key(|&i| self.series[i].s.r);
        let logged = {
            let _g = db.gate.read();
            let mut locked: Vec<Option<parking_lot::MutexGuard<'_, SeriesData>>> =
                (0..self.series.len()).map(|_| None).collect();
            for &i in &order {
                locked[i] = Some(self.series[i].s.data.lock());
            }
            // Bounds read under the series locks: see `persist_below`.
            let b = self.bounds();
            // Each series' newest in-order sample as this batch extends it.
            let mut newest: Vec<(i64, u64, NewestHist)> = locked
                .iter()
                .map(|d| {
                    d.as_ref().map_or((i64::MIN, 0, NewestHist::No), |d| {
                        let nh = if d.newest_is_hist() {
                            NewestHist::Stored
                        } else {
                            NewestHist::No
                        };
                        (d.max_t, d.last_v, nh)
                    })
                })
                .collect();
            let mut accepted: Vec<(u32, i64, f64, Fit)> = Vec::with_capacity(self.samples.len());
            for &(ie, t, v) in &self.samples {
                let i = (ie & !HIST_FLAG) as usize;
                let Some(d) = locked[i].as_deref() else {
                    continue;
                };
                let (mt, lv, nh) = newest[i];
                let vb = v.to_bits();
                let hist = if ie & HIST_FLAG != 0 {
                    Some(vb as usize)
                } else if vb == STALE_NAN_BITS && nh != NewestHist::No {
                    // A stale float after a histogram marks the histogram stale.
                    let float = match nh {
                        NewestHist::Pending(k) => hvals[k].is_float(),
                        _ => d.newest_hist().is_some_and(HistVal::is_float),
                    };
                    hvals.push(HistVal::stale(float));
                    Some(hvals.len() - 1)
                } else {
                    None
                };
                let Some(k) = hist else {
                    match d.fit(mt, lv, nh != NewestHist::No, t, vb, b) {
                        Ok(f) => {
                            match f {
                                Fit::InOrder => newest[i] = (t, vb, NewestHist::No),
                                Fit::Duplicate => dups += 1,
                                Fit::OutOfOrder => {}
                            }
                            enc.push(self.series[i].s.r, t, v);
                            accepted.push((ie, t, v, f));
                            lo = lo.min(t);
                            hi = hi.max(t);
                        }
                        Err(_) => dropped += 1,
                    }
                    continue;
                };
                let prev = match nh {
                    NewestHist::No => None,
                    NewestHist::Stored => d.newest_hist(),
                    NewestHist::Pending(j) => hvals.get(j),
                };
                let Some(h) = hvals.get(k) else {
                    continue;
                };
                match d.fit_hist(mt, prev, t, h, b) {
                    Ok(f) => {
                        match f {
                            Fit::InOrder => newest[i] = (t, 0, NewestHist::Pending(k)),
                            Fit::Duplicate => {
                                dups += 1;
                                hdups += 1;
                            }
                            Fit::OutOfOrder => {}
                        }
                        hcount += 1;
                        mixed = true;
                        accepted.push((i as u32 | HIST_FLAG, t, f64::from_bits(k as u64), f));
                        lo = lo.min(t);
                        hi = hi.max(t);
                    }
                    Err(_) => dropped += 1,
                }
            }
            count = accepted.len() as u64;
            let res = if accepted.is_empty() {
                Ok(None)
            } else if !mixed {
                db.wal.log_samples(&enc.buf).map(Some)
            } else {
                let payloads = self.mixed_records(&accepted, &hvals);
                let recs: Vec<(u8, &[u8])> = payloads.iter().map(|(t, p)| (*t, &p[..])).collect();
                db.wal.log_records(&recs).map(Some)
            };
            if let Ok(Some(_)) = &res {
                for &(ie, t, v, f) in &accepted {
                    let i = (ie & !HIST_FLAG) as usize;
                    if let Some(d) = locked[i].as_deref_mut() {
                        let cut = if ie & HIST_FLAG != 0 {
                            match hvals.get(v.to_bits() as usize) {
                                Some(h) => d.store_hist(f, t, h, range, true),
                                None => false,
                            }
                        } else {
                            d.store(f, t, v, range)
                        };
                        if cut {
                            chunks_cut += 1;
                        }
                        if f == Fit::OutOfOrder {
                            ooo += 1;
                        }
                    }
                }
                head.observe(lo, hi);
                head.num_chunks.fetch_add(chunks_cut, Ordering::Relaxed);
            }
            res
        };
        hvals.clear();
        self.hists = hvals;
        let c = &db.counters;
        c.dropped_at_commit.fetch_add(dropped, Ordering::Relaxed);
        let seq = match logged {
            Ok(seq) => seq,
            Err(e) => {
                self.finish(true);
                return Err(e.into());
            }
        };
        self.finish(false);
        self.remember_keys();
        c.ooo_appended.fetch_add(ooo, Ordering::Relaxed);
        if let Some(seq) = seq {
            // The samples are in the head already: a failure here is answered with an error,
            // and a retry finds them stored: identical samples are accepted as duplicates and
            // logged again, so the retry's acknowledgement is as durable as it says.
            db.wal.wait_durable(seq)?;
            c.samples_appended
                .fetch_add(count - dups, Ordering::Relaxed);
            if hcount > 0 {
                c.hist_appended.fetch_add(hcount - hdups, Ordering::Relaxed);
            }
        }
        self.wal = std::mem::take(&mut enc.buf);
        if db.head_compactable() {
            db.wake();
        }
        Ok(())
    }

    fn rollback(mut self: Box<Self>) {
        self.finish(true);
    }
}

impl Drop for DbAppender<'_> {
    fn drop(&mut self) {
        self.finish(true);
        if self.samples.capacity() > AppendBuffers::MAX_SAMPLES
            || self.series.capacity() > AppendBuffers::MAX_SAMPLES
        {
            return;
        }
        self.series.clear();
        self.by_hash.clear();
        self.samples.clear();
        self.hists.clear();
        self.wal.clear();
        self.new_keys.clear();
        let b = AppendBuffers {
            series: std::mem::take(&mut self.series),
            by_hash: std::mem::take(&mut self.by_hash),
            samples: std::mem::take(&mut self.samples),
            hists: std::mem::take(&mut self.hists),
            wal: std::mem::take(&mut self.wal),
            new_keys: std::mem::take(&mut self.new_keys),
        };
        let mut pool = self.db.append_buffers.lock();
        if pool.len() < AppendBuffers::KEEP {
            pool.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3query_model::Matcher;
    use m3query_storage::{Context, LabelHints, SelectHints, collect_series};

    fn select(db: &Db) -> Vec<(String, Vec<(i64, f64)>)> {
        let q = db.querier(0, 100_000).expect("querier");
        let mut set = q
            .select(
                &Context::background(),
                true,
                &SelectHints::default(),
                &[Matcher::equal("__name__", "m")],
            )
            .expect("select");
        let (series, _) = collect_series(set.as_mut(), 0, 100_000).expect("read");
        series
            .into_iter()
            .map(|s| {
                (
                    s.labels.get("s").unwrap_or("").to_string(),
                    s.samples.iter().map(|x| (x.t, x.v)).collect(),
                )
            })
            .collect()
    }

    fn label_values(db: &Db) -> Vec<String> {
        let q = db.querier(0, 100_000).expect("querier");
        q.label_values(&Context::background(), "s", &LabelHints::default(), &[])
            .expect("label values")
            .values
    }

    fn write_batch(db: &Db) -> SResult<()> {
        let a = Labels::from_pairs([("__name__", "m"), ("s", "a")]);
        let b = Labels::from_pairs([("__name__", "m"), ("s", "b")]);
        let mut app = db.appender();
        app.append(&a, 2000, 2.0)?;
        app.append(&a, 3000, 3.0)?;
        app.append(&b, 2000, 20.0)?;
        app.commit()
    }

    /// A commit whose WAL write fails leaves the head as it was (no samples, no new series),
    /// so the client's retry is accepted instead of being refused as out of order.
    #[test]
    fn failed_commit_changes_nothing_and_its_retry_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options {
            fsync: Fsync::Never,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts.clone()).expect("open");
        let a = Labels::from_pairs([("__name__", "m"), ("s", "a")]);
        let mut app = db.appender();
        app.append(&a, 1000, 1.0).expect("append");
        app.commit().expect("commit");

        *db.inner.wal.fail_next_write.lock() = Some(7);
        assert!(write_batch(&db).is_err(), "the WAL write fails");
        assert_eq!(select(&db), vec![("a".to_string(), vec![(1000, 1.0)])]);
        assert_eq!(label_values(&db), vec!["a".to_string()]);
        assert_eq!(db.metrics().head_series, 1);

        write_batch(&db).expect("the retry is accepted");
        let want = vec![
            ("a".to_string(), vec![(1000, 1.0), (2000, 2.0), (3000, 3.0)]),
            ("b".to_string(), vec![(2000, 20.0)]),
        ];
        assert_eq!(select(&db), want);
        drop(db);
        let db = Db::open(dir.path(), opts).expect("reopen");
        assert_eq!(select(&db), want);
        assert_eq!(label_values(&db), vec!["a".to_string(), "b".to_string()]);
    }

    /// A series named by a writer's key: known only after a commit that made it, appended
    /// to as by its labels (refusals included), forgotten when its commit fails or the head
    /// drops it, and learnt again after.
    #[test]
    fn series_known_by_key_append_as_by_labels_and_leave_with_the_head() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options {
            fsync: Fsync::Never,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).expect("open");
        let pa = [("__name__", "m"), ("s", "a")];
        let pb = [("__name__", "m"), ("s", "b")];
        let (pa, pb) = (LabelPairs::from_checked(&pa), LabelPairs::from_checked(&pb));
        let sample = |t, v| [Sample { t, v }];
        let mut none = |i: usize, e: StorageError| panic!("sample {i} refused: {e}");

        let mut app = db.appender();
        assert!(
            !app.append_samples_by_key(b"ka", &sample(1000, 1.0), &mut none)
                .expect("by key")
        );
        app.append_samples_keyed(b"ka", pa, &sample(1000, 1.0), &mut none)
            .expect("keyed");
        app.commit().expect("commit");

        let mut app = db.appender();
        let mut refused = Vec::new();
        let known = app
            .append_samples_by_key(
                b"ka",
                &[Sample { t: 1000, v: 5.0 }, Sample { t: 2000, v: 2.0 }],
                &mut |i, e| refused.push((i, e.to_string())),
            )
            .expect("by key");
        assert!(known);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, 0);
        // The same series by its labels in the same transaction: one series, in order.
        app.append_samples(pa, &sample(3000, 3.0), &mut none)
            .expect("by labels");
        app.commit().expect("commit");
        assert_eq!(
            select(&db),
            vec![("a".to_string(), vec![(1000, 1.0), (2000, 2.0), (3000, 3.0)])]
        );

        *db.inner.wal.fail_next_write.lock() = Some(3);
        let mut app = db.appender();
        app.append_samples_keyed(b"kb", pb, &sample(1000, 1.0), &mut none)
            .expect("keyed");
        assert!(app.commit().is_err(), "the WAL write fails");
        let mut app = db.appender();
        assert!(
            !app.append_samples_by_key(b"kb", &sample(1000, 1.0), &mut none)
                .expect("by key")
        );
        app.rollback();
        assert_eq!(db.inner.head.keys.len(), 1);

        // Persisting the head drops its series, and their keys with them.
        db.flush_head().expect("flush");
        assert_eq!(db.inner.head.keys.len(), 0);
        let mut app = db.appender();
        assert!(
            !app.append_samples_by_key(b"ka", &sample(9_000_000, 4.0), &mut none)
                .expect("by key")
        );
        app.append_samples_keyed(b"ka", pa, &sample(9_000_000, 4.0), &mut none)
            .expect("keyed");
        app.commit().expect("commit");
        let mut app = db.appender();
        assert!(
            app.append_samples_by_key(b"ka", &sample(9_001_000, 5.0), &mut none)
                .expect("by key")
        );
        app.commit().expect("commit");
        let q = db.querier(0, 10_000_000).expect("querier");
        let mut set = q
            .select(
                &Context::background(),
                true,
                &SelectHints::default(),
                &[Matcher::equal("s", "a")],
            )
            .expect("select");
        let (series, _) = collect_series(set.as_mut(), 0, 10_000_000).expect("read");
        let got: Vec<(i64, f64)> = series
            .iter()
            .flat_map(|s| s.samples.iter().map(|x| (x.t, x.v)))
            .collect();
        assert_eq!(
            got,
            vec![
                (1000, 1.0),
                (2000, 2.0),
                (3000, 3.0),
                (9_000_000, 4.0),
                (9_001_000, 5.0)
            ]
        );
    }

    /// A head cut that starts while a transaction is open waits for it, and the samples the
    /// transaction accepted below the cut are committed and persisted, not dropped.
    #[test]
    fn a_head_cut_waits_for_an_open_transaction_and_keeps_what_it_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options {
            fsync: Fsync::Never,
            ..Options::default()
        };
        let db = Arc::new(Db::open(dir.path(), opts.clone()).expect("open"));
        write_batch(&db).expect("first batch");
        let a = Labels::from_pairs([("__name__", "m"), ("s", "a")]);
        let mut app = db.appender();
        app.append(&a, 4000, 4.0).expect("accepted");
        let cutter = {
            let db = db.clone();
            std::thread::spawn(move || db.flush_head())
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !cutter.is_finished(),
            "the cut waits for the open transaction"
        );
        app.commit().expect("commit");
        cutter.join().expect("cutter").expect("flush");
        let want = vec![
            ("a".to_string(), vec![(2000, 2.0), (3000, 3.0), (4000, 4.0)]),
            ("b".to_string(), vec![(2000, 20.0)]),
        ];
        assert_eq!(select(&db), want);
        assert_eq!(db.metrics().dropped_at_commit_total, 0);
        db.close().expect("close");
        drop(db);
        let db = Db::open(dir.path(), opts).expect("reopen");
        assert_eq!(select(&db), want);
    }

    /// A key whose series the head dropped after the lookup is not appended to: the series
    /// is found again by its labels.
    #[test]
    fn a_key_naming_a_dropped_series_is_not_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(
            dir.path(),
            Options {
                fsync: Fsync::Never,
                ..Options::default()
            },
        )
        .expect("open");
        let pa = [("__name__", "m"), ("s", "a")];
        let pa = LabelPairs::from_checked(&pa);
        let mut none = |i: usize, e: StorageError| panic!("sample {i} refused: {e}");
        // A key remembered for a series the head then drops (as a truncation racing the
        // lookup would).
        let l = Labels::from_pairs([("__name__", "m"), ("s", "a")]);
        let hash = l.stable_hash();
        let head = &db.inner.head;
        let (s, _) = head.get_or_create(SeriesKey::Labels(&l), hash, false, |_| {});
        head.keys.insert(*b"ka", s.clone(), hash);
        head.remove_if_unused(&s);
        assert!(!head.is_live(&s, hash));
        let mut app = db.appender();
        assert!(
            !app.append_samples_by_key(b"ka", &[Sample { t: 2000, v: 2.0 }], &mut none)
                .expect("by key")
        );
        app.append_samples_keyed(b"ka", pa, &[Sample { t: 2000, v: 2.0 }], &mut none)
            .expect("keyed");
        app.commit().expect("commit");
        assert_eq!(select(&db), vec![("a".to_string(), vec![(2000, 2.0)])]);
        let (s2, _) = db.inner.head.keys.get(b"ka").expect("known again");
        assert!(!Arc::ptr_eq(&s, &s2));
    }

    /// Checkpoints written before type 4 records hold type 3 ones (every chunk as XOR):
    /// a database opened on one still replays it.
    #[test]
    fn a_checkpoint_of_xor_chunk_records_still_replays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options {
            fsync: Fsync::Never,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts.clone()).expect("open");
        let a = Labels::from_pairs([("__name__", "m"), ("s", "a")]);
        let mut app = db.appender();
        // 130 samples: one sealed chunk and an open one.
        for i in 0..130 {
            app.append(&a, i * 500, i as f64 * 1.5).expect("append");
        }
        app.commit().expect("commit");
        let want = select(&db);
        assert_eq!(want[0].1.len(), 130);
        let inner = &db.inner;
        let upto = {
            let _g = inner.gate.write();
            inner.wal.cut().expect("cut")
        };
        inner
            .wal
            .checkpoint(upto, &mut |emit| {
                for s in inner.head.all_series() {
                    let mut p = Vec::new();
                    encode_series(&mut p, s.r, &s.labels);
                    emit(REC_SERIES, &p)?;
                    let mut cs = Vec::new();
                    s.data.lock().chunks(i64::MIN, i64::MAX, &mut cs);
                    p.clear();
                    p.extend_from_slice(&s.r.to_be_bytes());
                    crate::encoding::put_uvarint(&mut p, cs.len() as u64);
                    for c in cs {
                        let mut it = c.iter()?;
                        let mut x = m3query_chunkenc::XorAppender::new();
                        while let Some((t, v)) = it.next_sample()? {
                            x.append(t, v)?;
                        }
                        crate::encoding::put_uvarint(&mut p, x.bytes().len() as u64);
                        p.extend_from_slice(x.bytes());
                    }
                    emit(crate::wal::REC_CHUNKS, &p)?;
                }
                Ok(())
            })
            .expect("checkpoint");
        drop(db);
        let db = Db::open(dir.path(), opts).expect("reopen");
        assert_eq!(select(&db), want);
    }

    /// Replay leaves the chunks it closes in XOR; the background thread seals them after
    /// open, and the samples read the same before and after.
    #[test]
    fn replayed_chunks_are_sealed_after_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options {
            fsync: Fsync::Never,
            ..Options::default()
        };
        let a = Labels::from_pairs([("__name__", "m"), ("s", "a")]);
        {
            let db = Db::open(dir.path(), opts.clone()).expect("open");
            let mut app = db.appender();
            for i in 0..400 {
                app.append(&a, i * 100, (i % 17) as f64).expect("append");
            }
            app.commit().expect("commit");
        }
        let db = Db::open(dir.path(), opts).expect("reopen");
        let encodings = |db: &Db| -> Vec<u8> {
            db.inner
                .head
                .all_series()
                .iter()
                .flat_map(|s| {
                    let mut cs = Vec::new();
                    s.data.lock().chunks(i64::MIN, i64::MAX, &mut cs);
                    cs.iter().map(|c| c.enc).collect::<Vec<_>>()
                })
                .collect()
        };
        let dense = m3query_chunkenc::ENCODING_DENSE;
        let sealed = (0..500).any(|_| {
            // Three closed chunks of 120 samples, and the open one (XOR).
            let e = encodings(&db);
            if e.len() == 4 && e[..3].iter().all(|&x| x == dense) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            false
        });
        assert!(sealed, "closed chunks sealed: {:?}", encodings(&db));
        let got = select(&db);
        assert_eq!(got[0].1.len(), 400);
        assert!(
            got[0]
                .1
                .iter()
                .enumerate()
                .all(|(i, &(t, v))| t == i as i64 * 100 && v == (i % 17) as f64)
        );
    }

    fn series_labels(name: &str) -> Labels {
        Labels::from_pairs([("__name__", "m"), ("s", name)])
    }

    fn log(wal: &Wal, samples: &[(u64, i64, f64)]) {
        let mut e = SamplesEncoder::default();
        for &(r, t, v) in samples {
            e.push(r, t, v);
        }
        wal.log_samples(&e.buf).expect("log samples");
    }

    /// A hand-written WAL: a series logged under two refs (as when a series whose first
    /// batch failed is created again) with their samples interleaved, series sampled in a
    /// later segment than their record, a ref far above the rest, a sample out of order,
    /// and a torn tail. Replay restores each sample
    /// once, in WAL order per series: the two refs' samples land in one worker's table,
    /// so they append in order instead of racing into the out-of-order buffer.
    #[test]
    fn replay_keeps_wal_order_across_refs_segments_and_sparse_refs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wd = dir.path().join("wal");
        fs::create_dir_all(&wd).expect("wal dir");
        let wal = Wal::create(&wd, 0, 4096, Fsync::Never).expect("create");
        let far = 1u64 << 40;
        for r in [1, 2] {
            wal.log_series(r, &series_labels("a"));
        }
        wal.log_series(3, &series_labels("b"));
        log(&wal, &[(1, 1000, 1.0), (2, 2000, 2.0), (3, 1000, 10.0)]);
        log(&wal, &[(1, 3000, 3.0), (2, 4000, 4.0)]);
        wal.cut().expect("cut");
        log(&wal, &[(3, 2000, 20.0), (1, 2500, 2.5)]);
        wal.log_series(far, &series_labels("c"));
        wal.log_series(5, &series_labels("d"));
        log(&wal, &[(far, 1000, 5.0), (5, 1000, 7.0)]);
        log(&wal, &[(2, 5000, 5.0), (5, 2000, 8.0)]);
        drop(wal);
        // A write torn by a crash at the end of the newest segment.
        let (segs, _) = wal_segments(&wd);
        let last = wd.join(format!("{:08}", segs[segs.len() - 1]));
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .expect("open");
        std::io::Write::write_all(&mut f, &[REC_SAMPLES, 0, 0, 1, 0, 9, 9]).expect("tear");
        drop(f);

        let opts = Options {
            fsync: Fsync::Never,
            out_of_order_window_ms: 100_000,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts).expect("open");
        let want = vec![
            (
                "a".to_string(),
                vec![
                    (1000, 1.0),
                    (2000, 2.0),
                    (2500, 2.5),
                    (3000, 3.0),
                    (4000, 4.0),
                    (5000, 5.0),
                ],
            ),
            ("b".to_string(), vec![(1000, 10.0), (2000, 20.0)]),
            ("c".to_string(), vec![(1000, 5.0)]),
            ("d".to_string(), vec![(1000, 7.0), (2000, 8.0)]),
        ];
        assert_eq!(select(&db), want);
        let m = db.metrics();
        assert_eq!(m.wal_replay_unknown_refs_total, 0);
        assert!(m.wal_truncated_bytes_total > 0, "torn tail cut: {m:?}");
        assert_eq!(m.wal_corruptions_total, 0);
        let a = db
            .inner
            .head
            .all_series()
            .into_iter()
            .find(|s| s.labels.get("s") == Some("a"))
            .expect("series a");
        assert_eq!(a.r, 1, "the first ref names the series");
        assert_eq!(
            a.data.lock().ooo_times_before(i64::MAX),
            vec![2500],
            "only the sample logged out of order is out of order"
        );
        // New refs start above every replayed one, the far one included.
        let mut app = db.appender();
        app.append(&series_labels("f"), 3000, 1.0).expect("append");
        app.commit().expect("commit");
        let f = db
            .inner
            .head
            .all_series()
            .into_iter()
            .find(|s| s.labels.get("s") == Some("f"))
            .expect("series f");
        assert!(f.r > far);
    }

    /// Refs index vectors up to a bound that grows with the series known, beyond it a map;
    /// a series named again keeps its slot, also after its ref was logged for another one.
    #[test]
    fn ref_table_dense_sparse_and_renamed_refs() {
        let head = Head::new(HOUR_MS, 0, i64::MIN);
        let mut t = RefTable::default();
        let slot = |w, i| Slot::new(w, i).expect("slot");
        let (a, _) = head.replay_series(3, &series_labels("a"));
        t.insert(3, a.clone(), slot(1, 0));
        let far = u64::MAX - 1;
        let (b, _) = head.replay_series(far, &series_labels("b"));
        t.insert(far, b.clone(), slot(0, 0));
        assert!(t.slots.len() <= 4, "a far ref is not in the vectors");
        assert_eq!(t.slot(3), Some(slot(1, 0)));
        assert_eq!(t.slot(far), Some(slot(0, 0)));
        assert_eq!((t.slot(2), t.slot(4), t.slot(far - 1)), (None, None, None));
        assert_eq!(t.slot_of(&a), Some(slot(1, 0)));
        assert_eq!(t.slot_of(&b), Some(slot(0, 0)));
        // Ref 3 logged again for another series: the newer wins for samples, and `a` is
        // still found by its series.
        let (c, _) = head.replay_series(7, &series_labels("c"));
        t.insert(3, c.clone(), slot(0, 1));
        assert_eq!(t.slot(3), Some(slot(0, 1)));
        assert_eq!(t.slot_of(&a), Some(slot(1, 0)));
        // The far ref again, for the same series, and a second ref naming it.
        t.insert(far, b.clone(), slot(0, 0));
        t.insert(9, b.clone(), slot(0, 0));
        assert_eq!(
            (t.slot(far), t.slot(9)),
            (Some(slot(0, 0)), Some(slot(0, 0)))
        );
        assert_eq!(t.slot_of(&b), Some(slot(0, 0)));
        assert_eq!(
            Slot::new(3, 5).map(|s| (s.worker(), s.index())),
            Some((3, 5))
        );
        assert_eq!(
            Slot::new(0, u32::MAX / 4),
            None,
            "an index past the packing"
        );
    }

    /// Series records are interned straight from the record's pairs; a label set those
    /// cannot carry (an empty label name, which m3query never logs but a record can hold)
    /// still replays, as it did.
    #[test]
    fn series_records_replay_from_pairs_and_odd_label_sets_still_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wd = dir.path().join("wal");
        fs::create_dir_all(&wd).expect("wal dir");
        let wal = Wal::create(&wd, 0, 4096, Fsync::Never).expect("create");
        let odd = Labels::from_pairs([("", "x"), ("__name__", "m"), ("s", "odd")]);
        wal.log_series(1, &series_labels("a"));
        wal.log_series(2, &odd);
        log(&wal, &[(1, 1000, 1.0), (2, 1000, 2.0)]);
        drop(wal);
        let db = Db::open(dir.path(), Options::default()).expect("open");
        let mut got: Vec<(Labels, usize)> = db
            .inner
            .head
            .all_series()
            .iter()
            .map(|s| (s.labels.clone(), s.data.lock().num_chunks()))
            .collect();
        got.sort();
        let mut want = vec![(series_labels("a"), 1), (odd, 1)];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(db.metrics().wal_replay_unknown_refs_total, 0);
    }

    fn wal_segments(wd: &Path) -> (Vec<u64>, usize) {
        let mut segs: Vec<u64> = fs::read_dir(wd)
            .expect("read wal")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        segs.sort_unstable();
        let n = segs.len();
        (segs, n)
    }

    /// A checkpoint of more series than one replay batch carries, followed by segments
    /// that sample them again (in order and out of order) and add series: the restores go
    /// to the workers in batches, each before the samples that follow it in the WAL.
    #[test]
    fn checkpointed_series_restore_in_batches_before_later_samples() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options {
            fsync: Fsync::Never,
            out_of_order_window_ms: 1_000_000,
            ..Options::default()
        };
        let n = REPLAY_RESTORES * 3 + 17;
        let names: Vec<String> = (0..n).map(|i| format!("{i:05}")).collect();
        let db = Db::open(dir.path(), opts.clone()).expect("open");
        let mut app = db.appender();
        for (i, name) in names.iter().enumerate() {
            // 130 samples: a closed chunk and an open one in the checkpoint.
            for k in 0..130 {
                app.append(&series_labels(name), k * 500, (i * k as usize) as f64)
                    .expect("append");
            }
        }
        app.commit().expect("commit");
        db.inner.checkpoint().expect("checkpoint");
        let mut app = db.appender();
        for (i, name) in names.iter().enumerate() {
            app.append(&series_labels(name), 70_000 + i as i64, 1.5)
                .expect("append");
            if i % 3 == 0 {
                app.append(&series_labels(name), 250, -1.0)
                    .expect("append out of order");
            }
        }
        app.append(&series_labels("new"), 1000, 2.0)
            .expect("append");
        app.commit().expect("commit");
        let want = select(&db);
        assert_eq!(want.len(), n + 1);
        let chunks = db.metrics().head_chunks;
        drop(db);
        let db = Db::open(dir.path(), opts).expect("reopen");
        assert_eq!(db.metrics().wal_replay_unknown_refs_total, 0);
        assert_eq!(select(&db), want);
        assert_eq!(db.metrics().head_chunks, chunks);
    }

    /// A retry of a batch that was applied (its fsync failed, or the response was lost) is
    /// accepted: samples identical to stored ones are duplicates, not out of order.
    #[test]
    fn retry_of_an_applied_batch_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), Options::default()).expect("open");
        write_batch(&db).expect("first");
        let records = db.metrics().wal_records_total;
        write_batch(&db).expect("the retry is accepted");
        let m = db.metrics();
        assert_eq!(m.refused_out_of_order_total, 0);
        assert_eq!(m.samples_appended_total, 3);
        // Logged again: the first attempt's record may not have survived a failed fsync.
        assert_eq!(m.wal_records_total, records + 1);
        drop(db);
        let db = Db::open(dir.path(), Options::default()).expect("reopen");
        let want = vec![
            ("a".to_string(), vec![(2000, 2.0), (3000, 3.0)]),
            ("b".to_string(), vec![(2000, 20.0)]),
        ];
        assert_eq!(select(&db), want, "replayed once, not doubled out of order");
        // A different value at a stored timestamp is still refused.
        let a = Labels::from_pairs([("__name__", "m"), ("s", "a")]);
        let mut app = db.appender();
        assert!(matches!(
            app.append(&a, 2000, 9.0),
            Err(StorageError::OutOfOrderSample)
        ));
        app.rollback();
    }
}
