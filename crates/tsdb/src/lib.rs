//! m3query's embedded time-series database, in the spirit of Prometheus's TSDB.
//!
//! [`Db`] implements the storage seam (`m3query_storage::Queryable` and `Appendable`):
//!
//! - **Head** (`head`): the in-memory block that takes writes. Series are sharded by label
//!   hash; samples go into Gorilla XOR chunks (`m3query-chunkenc`) cut at 120 samples or at
//!   the block-range boundary; a full chunk is sealed in the dense encoding when that is
//!   smaller. Writers may append by borrowed label pairs ([`Appender::append_samples`]),
//!   found by hash without building a label set. Out-of-order samples get Prometheus's
//!   errors, or, within [`Options::out_of_order_window_ms`], a per-series sorted buffer
//!   merged at query and block-cut time. A series' first sample may have any timestamp not
//!   below the head's minimum valid time (the end of what is already in blocks). Samples
//!   beyond [`Options::future_grace_period_ms`] ahead of the clock, or older than the
//!   retention before the newest data, are refused.
//! - **WAL** (`wal`): segmented, checksummed records; [`Appender::commit`] returns once its
//!   record is written and, per [`Fsync`], fsynced — by default through group commit, where
//!   concurrent commits share one fsync; a failed write changes nothing in the head. Replay
//!   truncates a torn tail and skips damaged records (resynchronising on the next valid
//!   one, keeping a copy of the damaged segment) instead of refusing to start; checkpoints
//!   bound replay time.
//! - **Index** (`postings`, `matchers`, `index`): postings per label pair, set algebra with
//!   galloping, Prometheus's `PostingsForMatchers` resolution.
//! - **Blocks** (`block`, `compact`): the head is cut into immutable 2 h blocks (temp dir,
//!   fsync, rename) whose chunks use the dense encoding (`docs/format/chunks.md`), compacted
//!   3× per level, deleted by time or size retention. The index is verified when a block
//!   opens, and every chunk, series entry and postings list read is checked against its CRC:
//!   damaged data is left out of results with a warning naming the block, never served.
//!
//! - **Native histograms** (`hist`): integer histograms in Prometheus's HISTOGRAM chunks,
//!   float ones in FLOAT_HISTOGRAM chunks, beside a series' floats in one time order per
//!   series (a change of kind cuts a chunk); logged in their own WAL records, checkpointed
//!   as chunks, and written to blocks in their own encodings. Within the out-of-order
//!   window older histograms are accepted as floats are (kept apart in the head, logged as
//!   WAL types 8 and 9, merged into blocks at head cuts); they read back with the counter
//!   reset hint `Unknown` (a gauge's `Gauge`).
//!
//! On-disk formats are specified in `docs/format/*.md`. Background work runs on one thread
//! owned by the `Db`; [`Db::close`] (or drop) stops it. No async runtime is needed.
//!
//! ```
//! use m3query_model::{Labels, MatchOp, Matcher};
//! use m3query_storage::{Appendable, Context, Queryable, SelectHints, collect_series};
//! use m3query_tsdb::{Db, Options};
//!
//! let dir = tempfile::tempdir().expect("temp dir");
//! let db = Db::open(dir.path(), Options::default()).expect("open");
//! let up = Labels::from_pairs([("__name__", "up"), ("job", "api")]);
//! let mut app = db.appender();
//! app.append(&up, 1_000, 1.0).expect("append");
//! app.append(&up, 16_000, 0.0).expect("append");
//! app.commit().expect("commit");
//!
//! let q = db.querier(0, 60_000).expect("querier");
//! let m = [Matcher::new(MatchOp::Equal, "job", "api").expect("matcher")];
//! let mut set = q.select(&Context::background(), true, &SelectHints::default(), &m).expect("select");
//! let (series, _) = collect_series(set.as_mut(), 0, 60_000).expect("read");
//! assert_eq!(series[0].samples.len(), 2);
//! ```
//!
//! [`Appender::commit`]: m3query_storage::Appender::commit
//! [`Appender::append_samples`]: m3query_storage::Appender::append_samples

mod appenders;
mod block;
mod chunks;
mod compact;
mod db;
mod encoding;
mod error;
mod fileutil;
mod head;
mod hist;
mod index;
mod keycache;
mod matchers;
pub mod postings;
mod querier;
mod readers;
mod stats;
mod symbols;
mod wal;

pub use block::{BlockCompaction, BlockMeta, BlockParent, BlockStats};
pub use db::{Db, DbMetrics, Options};
pub use error::{Error, Result};
pub use stats::{HeadStats, Stat};
pub use wal::{FSYNC_BUCKETS_S, Fsync};

/// `Db` is shared across request threads behind an `Arc`.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Db>();
};
