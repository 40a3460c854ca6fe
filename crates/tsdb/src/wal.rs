//! The write-ahead log: segmented files of checksummed records, group-committed fsyncs,
//! replay with torn-tail repair, and checkpoints. The format is in `docs/format/wal.md`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use m3query_model::{Label, Labels};
use parking_lot::{Condvar, Mutex};

use crate::encoding::{Decbuf, DecodeError, put_str, put_u64, put_uvarint, put_varint};
use crate::error::IoContext;
use crate::{Error, Result};

/// When `Appender::commit` returns, relative to the fsync of its WAL record. See
/// `docs/format/wal.md` for what each choice survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Every commit fsyncs its own record before returning.
    Always,
    /// Commits wait for an fsync that covers their record; concurrent commits share one
    /// (leader/follower). Survives power loss like `Always`, at a fraction of the fsyncs.
    #[default]
    GroupCommit,
    /// Commits return once written; a background fsync runs every this many milliseconds.
    Interval(u64),
    /// Commits return once written (survives a process crash, not an OS crash).
    Never,
}

pub(crate) const SEGMENT_MAGIC: u32 = 0x4D33_5741;
pub(crate) const SEGMENT_VERSION: u8 = 1;
const SEGMENT_HEADER: usize = 8;
const RECORD_HEADER: usize = 9;

pub(crate) const REC_SERIES: u8 = 1;
pub(crate) const REC_SAMPLES: u8 = 2;
pub(crate) const REC_CHUNKS: u8 = 3;

/// Writes one record (type, payload) into a checkpoint.
pub(crate) type EmitRecord<'a> = dyn FnMut(u8, &[u8]) -> Result<()> + 'a;

/// Upper bounds (seconds) of the fsync latency histogram buckets; the last bucket is +Inf.
pub const FSYNC_BUCKETS_S: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

fn segment_name(n: u64) -> String {
    format!("{n:08}")
}

fn checkpoint_name(n: u64) -> String {
    format!("checkpoint.{n:08}")
}

pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", path)
}

fn segment_header() -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..4].copy_from_slice(&SEGMENT_MAGIC.to_be_bytes());
    h[4] = SEGMENT_VERSION;
    h
}

/// Appends one framed record (header + payload) to `out`.
pub(crate) fn frame_record(out: &mut Vec<u8>, typ: u8, payload: &[u8]) {
    out.push(typ);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[typ]), payload);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends a series entry to a series record payload.
pub(crate) fn encode_series(out: &mut Vec<u8>, r: u64, labels: &Labels) {
    put_u64(out, r);
    put_uvarint(out, labels.len() as u64);
    for l in labels {
        put_str(out, &l.name);
        put_str(out, &l.value);
    }
}

/// Builds a samples record payload.
#[derive(Debug, Default)]
pub(crate) struct SamplesEncoder {
    pub(crate) buf: Vec<u8>,
    base: Option<(u64, i64)>,
    pub(crate) count: usize,
}

impl SamplesEncoder {
    /// An encoder writing into `buf` (cleared first), to reuse its allocation.
    pub(crate) fn with_buf(mut buf: Vec<u8>) -> Self {
        buf.clear();
        SamplesEncoder {
            buf,
            base: None,
            count: 0,
        }
    }

    pub(crate) fn push(&mut self, r: u64, t: i64, v: f64) {
        let (br, bt) = match self.base {
            Some(b) => b,
            None => {
                put_u64(&mut self.buf, r);
                put_u64(&mut self.buf, t as u64);
                self.base = Some((r, t));
                (r, t)
            }
        };
        put_varint(&mut self.buf, r.wrapping_sub(br) as i64);
        put_varint(&mut self.buf, t.wrapping_sub(bt));
        put_u64(&mut self.buf, v.to_bits());
        self.count += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A decoded WAL record.
#[derive(Debug)]
pub(crate) enum Record<'a> {
    Series(Vec<(u64, Labels)>),
    Samples(Vec<(u64, i64, f64)>),
    Chunks(u64, Vec<&'a [u8]>),
}

fn decode_record(typ: u8, payload: &[u8]) -> Result<Record<'_>, DecodeError> {
    let mut d = Decbuf::new(payload);
    match typ {
        REC_SERIES => {
            let mut out = Vec::new();
            while d.remaining() > 0 {
                let r = d.u64()?;
                let n = d.uvarint_usize()?;
                let mut ls = Vec::with_capacity(n.min(256));
                for _ in 0..n {
                    let name = d.str()?;
                    let value = d.str()?;
                    ls.push(Label::new(name, value));
                }
                // Written from a `Labels`, so sorted and unique; check instead of trusting.
                if !ls.windows(2).all(|w| w[0].name < w[1].name)
                    || ls.iter().any(|l| l.value.is_empty())
                {
                    return Err(DecodeError("series labels not sorted"));
                }
                out.push((r, Labels::from_sorted(ls)));
            }
            Ok(Record::Series(out))
        }
        REC_SAMPLES => {
            let mut out = Vec::new();
            if d.remaining() == 0 {
                return Ok(Record::Samples(out));
            }
            let br = d.u64()?;
            let bt = d.u64()? as i64;
            while d.remaining() > 0 {
                let r = br.wrapping_add(d.varint()? as u64);
                let t = bt.wrapping_add(d.varint()?);
                let v = f64::from_bits(d.u64()?);
                out.push((r, t, v));
            }
            Ok(Record::Samples(out))
        }
        REC_CHUNKS => {
            let r = d.u64()?;
            let n = d.uvarint_usize()?;
            let mut cs = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let len = d.uvarint_usize()?;
                cs.push(d.bytes(len)?);
            }
            if d.remaining() != 0 {
                return Err(DecodeError("trailing bytes in chunks record"));
            }
            Ok(Record::Chunks(r, cs))
        }
        _ => Err(DecodeError("unknown record type")),
    }
}

/// Reads a segment's records until the end or the first bad one. Returns the byte length of
/// the good prefix and, if reading stopped early, why.
fn read_segment(data: &[u8], f: &mut dyn FnMut(Record<'_>)) -> (usize, Option<&'static str>) {
    if data.len() < SEGMENT_HEADER {
        return (0, (!data.is_empty()).then_some("short segment header"));
    }
    let mut d = Decbuf::new(data);
    let magic = d.u32().unwrap_or(0);
    let version = d.u8().unwrap_or(0);
    if magic != SEGMENT_MAGIC || version != SEGMENT_VERSION {
        return (0, Some("bad segment magic or version"));
    }
    let mut pos = SEGMENT_HEADER;
    while pos < data.len() {
        if data.len() - pos < RECORD_HEADER {
            return (pos, Some("torn record header"));
        }
        let typ = data[pos];
        let mut h = Decbuf::new(&data[pos + 1..pos + RECORD_HEADER]);
        let len = h.u32().unwrap_or(u32::MAX) as usize;
        let crc = h.u32().unwrap_or(0);
        let start = pos + RECORD_HEADER;
        let Some(payload) = start.checked_add(len).and_then(|end| data.get(start..end)) else {
            return (pos, Some("torn record"));
        };
        if crc32c::crc32c_append(crc32c::crc32c(&[typ]), payload) != crc {
            return (pos, Some("record checksum mismatch"));
        }
        match decode_record(typ, payload) {
            Ok(r) => f(r),
            Err(e) => return (pos, Some(e.0)),
        }
        pos = start + len;
    }
    (pos, None)
}

/// What replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ReplayStats {
    pub(crate) checkpoint: Option<u64>,
    pub(crate) segments: usize,
    pub(crate) records: u64,
    pub(crate) truncated_bytes: u64,
    pub(crate) deleted_segments: usize,
}

/// Segment numbers and (number, path) of checkpoints, each sorted.
type WalListing = (Vec<u64>, Vec<(u64, PathBuf)>);

fn list_wal(dir: &Path) -> Result<WalListing> {
    let mut segs = Vec::new();
    let mut cps = Vec::new();
    for e in fs::read_dir(dir).ctx("read WAL directory", dir)? {
        let e = e.ctx("read WAL directory", dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            tracing::info!(path = %e.path().display(), "removing unfinished WAL checkpoint");
            fs::remove_dir_all(e.path()).ctx("remove", &e.path())?;
        } else if let Some(n) = name.strip_prefix("checkpoint.") {
            if let Ok(n) = n.parse::<u64>() {
                cps.push((n, e.path()));
            }
        } else if !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = name.parse::<u64>()
        {
            segs.push(n);
        }
    }
    segs.sort_unstable();
    cps.sort_unstable();
    Ok((segs, cps))
}

/// Replays the WAL in `dir` (creating it if missing), repairing a torn or corrupt tail.
/// Returns the stats and the number the next segment must take.
pub(crate) fn replay(dir: &Path, f: &mut dyn FnMut(Record<'_>)) -> Result<(ReplayStats, u64)> {
    fs::create_dir_all(dir).ctx("create WAL directory", dir)?;
    let (segs, mut cps) = list_wal(dir)?;
    let mut stats = ReplayStats::default();
    let mut count = |r: Record<'_>, stats: &mut ReplayStats| {
        stats.records += 1;
        f(r)
    };
    let cp = cps.pop();
    for (_, old) in &cps {
        fs::remove_dir_all(old).ctx("remove old checkpoint", old)?;
    }
    let mut next = 0;
    if let Some((n, path)) = &cp {
        stats.checkpoint = Some(*n);
        next = n + 1;
        let mut files: Vec<PathBuf> = fs::read_dir(path)
            .ctx("read checkpoint", path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for p in files {
            let data = fs::read(&p).ctx("read checkpoint", &p)?;
            let (_, err) = read_segment(&data, &mut |r| count(r, &mut stats));
            if let Some(why) = err {
                // Checkpoints are fsynced before they are renamed into place, so this is
                // media corruption: keep what was readable, as for segments.
                tracing::error!(path = %p.display(), reason = why, "corrupt WAL checkpoint; replayed its readable prefix");
            }
        }
    }
    let mut stop_at: Option<usize> = None;
    for (i, &n) in segs.iter().enumerate() {
        let path = dir.join(segment_name(n));
        if cp.as_ref().is_some_and(|(c, _)| n <= *c) {
            fs::remove_file(&path).ctx("remove checkpointed segment", &path)?;
            continue;
        }
        if stop_at.is_some() {
            break;
        }
        next = n + 1;
        let data = fs::read(&path).ctx("read WAL segment", &path)?;
        stats.segments += 1;
        let (good, err) = read_segment(&data, &mut |r| count(r, &mut stats));
        if let Some(why) = err {
            let lost = (data.len() - good) as u64;
            stats.truncated_bytes += lost;
            let later = segs.len() - i - 1;
            if later > 0 {
                tracing::error!(segment = %path.display(), offset = good, reason = why, later_segments = later,
                    "corrupt WAL segment: truncating it and deleting the segments after it");
            } else {
                tracing::warn!(segment = %path.display(), offset = good, reason = why, bytes = lost,
                    "torn WAL tail: truncating at the last good record");
            }
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .ctx("open", &path)?;
            file.set_len(good as u64)
                .ctx("truncate WAL segment", &path)?;
            file.sync_all().ctx("fsync", &path)?;
            stop_at = Some(i);
        }
    }
    if let Some(i) = stop_at {
        for &n in &segs[i + 1..] {
            let path = dir.join(segment_name(n));
            fs::remove_file(&path).ctx("remove WAL segment", &path)?;
            stats.deleted_segments += 1;
        }
    }
    sync_dir(dir)?;
    Ok((stats, next))
}

struct Writer {
    file: Arc<File>,
    seg: u64,
    seg_len: u64,
    /// Series records written by series creation, flushed before the next samples record.
    buf: Vec<u8>,
    written_seq: u64,
    /// A failed write left the segment in an unknown state: start a new one.
    broken: bool,
}

struct SyncState {
    synced_seq: u64,
    in_progress: bool,
}

/// Fsync counters, readable without locks.
#[derive(Debug, Default)]
pub(crate) struct WalMetrics {
    pub(crate) fsyncs: AtomicU64,
    pub(crate) fsync_nanos: AtomicU64,
    pub(crate) fsync_buckets: [AtomicU64; FSYNC_BUCKETS_S.len() + 1],
    pub(crate) bytes_written: AtomicU64,
    pub(crate) records: AtomicU64,
}

/// The WAL writer.
pub(crate) struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    policy: Fsync,
    w: Mutex<Writer>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    pub(crate) metrics: WalMetrics,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("dir", &self.dir).finish()
    }
}

fn create_segment(dir: &Path, n: u64) -> Result<File> {
    let path = dir.join(segment_name(n));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .ctx("create WAL segment", &path)?;
    f.write_all(&segment_header()).ctx("write", &path)?;
    Ok(f)
}

impl Wal {
    /// Starts writing segment `next` in `dir` (after [`replay`]).
    pub(crate) fn create(dir: &Path, next: u64, segment_bytes: u64, policy: Fsync) -> Result<Wal> {
        let file = create_segment(dir, next)?;
        file.sync_all()
            .ctx("fsync", &dir.join(segment_name(next)))?;
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            policy,
            w: Mutex::new(Writer {
                file: Arc::new(file),
                seg: next,
                seg_len: SEGMENT_HEADER as u64,
                buf: Vec::new(),
                written_seq: 0,
                broken: false,
            }),
            sync: Mutex::new(SyncState {
                synced_seq: 0,
                in_progress: false,
            }),
            synced: Condvar::new(),
            metrics: WalMetrics::default(),
        })
    }

    /// Buffers a series record; it reaches the file before any later samples record.
    pub(crate) fn log_series(&self, r: u64, labels: &Labels) {
        let mut payload = Vec::with_capacity(16 + labels.byte_size() + 2 * labels.len());
        encode_series(&mut payload, r, labels);
        let mut w = self.w.lock();
        frame_record(&mut w.buf, REC_SERIES, &payload);
    }

    fn timed_sync(&self, file: &File) -> std::io::Result<()> {
        let start = Instant::now();
        let r = file.sync_data();
        let el = start.elapsed();
        let m = &self.metrics;
        m.fsyncs.fetch_add(1, Ordering::Relaxed);
        m.fsync_nanos
            .fetch_add(el.as_nanos() as u64, Ordering::Relaxed);
        let s = el.as_secs_f64();
        let i = FSYNC_BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(FSYNC_BUCKETS_S.len());
        m.fsync_buckets[i].fetch_add(1, Ordering::Relaxed);
        r
    }

    /// Closes the current segment (fsynced) and starts the next. Returns the closed one.
    fn roll(&self, w: &mut Writer) -> Result<u64> {
        let old = w.seg;
        if !w.broken {
            if !w.buf.is_empty() {
                let path = self.dir.join(segment_name(old));
                (&*w.file).write_all(&w.buf).ctx("write WAL", &path)?;
                w.seg_len += w.buf.len() as u64;
                self.metrics
                    .bytes_written
                    .fetch_add(w.buf.len() as u64, Ordering::Relaxed);
                w.buf.clear();
            }
            if self.policy != Fsync::Never {
                self.timed_sync(&w.file)
                    .ctx("fsync WAL segment", &self.dir.join(segment_name(old)))?;
            }
        }
        let file = create_segment(&self.dir, old + 1)?;
        if self.policy != Fsync::Never {
            sync_dir(&self.dir)?;
        }
        w.file = Arc::new(file);
        w.seg = old + 1;
        w.seg_len = SEGMENT_HEADER as u64;
        w.broken = false;
        Ok(old)
    }

    /// Writes a samples record (and any buffered series records before it). Returns the
    /// write's sequence number for [`Wal::wait_durable`].
    pub(crate) fn log_samples(&self, payload: &[u8]) -> Result<u64> {
        let mut w = self.w.lock();
        let rec_len = (RECORD_HEADER + payload.len()) as u64;
        if w.broken
            || (w.seg_len > SEGMENT_HEADER as u64
                && w.seg_len + w.buf.len() as u64 + rec_len > self.segment_bytes)
        {
            self.roll(&mut w)?;
        }
        let mut buf = std::mem::take(&mut w.buf);
        frame_record(&mut buf, REC_SAMPLES, payload);
        let res = (&*w.file).write_all(&buf);
        if let Err(e) = res {
            // A partial record would hide every later one from replay: cut it off, or give
            // up on this segment.
            let keep = w.seg_len;
            if w.file.set_len(keep).is_err() {
                w.broken = true;
            }
            w.buf = Vec::new();
            return Err(Error::io(
                format!(
                    "write WAL segment {}",
                    self.dir.join(segment_name(w.seg)).display()
                ),
                e,
            ));
        }
        w.seg_len += buf.len() as u64;
        self.metrics
            .bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.metrics.records.fetch_add(1, Ordering::Relaxed);
        buf.clear();
        w.buf = buf;
        w.written_seq += 1;
        Ok(w.written_seq)
    }

    /// Returns once the write with sequence `seq` is as durable as the policy promises.
    pub(crate) fn wait_durable(&self, seq: u64) -> Result<()> {
        match self.policy {
            Fsync::Never | Fsync::Interval(_) => Ok(()),
            Fsync::Always => {
                let file = self.w.lock().file.clone();
                self.timed_sync(&file)
                    .map_err(|e| Error::io("fsync WAL", e))
            }
            Fsync::GroupCommit => self.group_sync(seq),
        }
    }

    fn group_sync(&self, seq: u64) -> Result<()> {
        let mut s = self.sync.lock();
        loop {
            if s.synced_seq >= seq {
                return Ok(());
            }
            if !s.in_progress {
                s.in_progress = true;
                drop(s);
                let (target, file) = {
                    let w = self.w.lock();
                    (w.written_seq, w.file.clone())
                };
                let r = self.timed_sync(&file);
                s = self.sync.lock();
                s.in_progress = false;
                if r.is_ok() {
                    s.synced_seq = s.synced_seq.max(target);
                }
                self.synced.notify_all();
                r.map_err(|e| Error::io("fsync WAL", e))?;
                continue;
            }
            self.synced.wait(&mut s);
        }
    }

    /// Flushes buffered records and fsyncs the current segment.
    pub(crate) fn sync_now(&self) -> Result<()> {
        let (file, target) = {
            let mut w = self.w.lock();
            if !w.buf.is_empty() && !w.broken {
                let buf = std::mem::take(&mut w.buf);
                (&*w.file)
                    .write_all(&buf)
                    .map_err(|e| Error::io("write WAL", e))?;
                w.seg_len += buf.len() as u64;
            }
            (w.file.clone(), w.written_seq)
        };
        self.timed_sync(&file)
            .map_err(|e| Error::io("fsync WAL", e))?;
        let mut s = self.sync.lock();
        s.synced_seq = s.synced_seq.max(target);
        self.synced.notify_all();
        Ok(())
    }

    /// Starts a new segment; returns the number of the last one closed. Call with commits
    /// excluded (the database's gate held for writing) so the head matches the log.
    pub(crate) fn cut(&self) -> Result<u64> {
        let mut w = self.w.lock();
        self.roll(&mut w)
    }

    /// Writes `checkpoint.<upto>` from `write` and deletes what it replaces.
    pub(crate) fn checkpoint(
        &self,
        upto: u64,
        write: &mut dyn FnMut(&mut EmitRecord<'_>) -> Result<()>,
    ) -> Result<u64> {
        let tmp = self.dir.join(format!("{}.tmp", checkpoint_name(upto)));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).ctx("remove", &tmp)?;
        }
        fs::create_dir_all(&tmp).ctx("create checkpoint", &tmp)?;
        let path = tmp.join(segment_name(0));
        let file = File::create(&path).ctx("create checkpoint", &path)?;
        let mut bw = BufWriter::with_capacity(1 << 20, file);
        bw.write_all(&segment_header()).ctx("write", &path)?;
        let mut rec = Vec::new();
        let mut bytes = SEGMENT_HEADER as u64;
        write(&mut |typ, payload| {
            rec.clear();
            frame_record(&mut rec, typ, payload);
            bytes += rec.len() as u64;
            bw.write_all(&rec).ctx("write checkpoint", &path)
        })?;
        let file = bw
            .into_inner()
            .map_err(|e| Error::io("flush checkpoint", e.into_error()))?;
        file.sync_all().ctx("fsync", &path)?;
        drop(file);
        sync_dir(&tmp)?;
        let dst = self.dir.join(checkpoint_name(upto));
        fs::rename(&tmp, &dst).ctx("rename checkpoint", &dst)?;
        sync_dir(&self.dir)?;
        // What the checkpoint replaces.
        let (segs, cps) = list_wal(&self.dir)?;
        for n in segs.into_iter().filter(|&n| n <= upto) {
            let p = self.dir.join(segment_name(n));
            fs::remove_file(&p).ctx("remove WAL segment", &p)?;
        }
        for (n, p) in cps {
            if n < upto {
                fs::remove_dir_all(&p).ctx("remove old checkpoint", &p)?;
            }
        }
        Ok(bytes)
    }

    /// Bytes of every file under the WAL directory.
    pub(crate) fn disk_bytes(&self) -> u64 {
        crate::block::dir_size(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Collected = (Vec<(u64, i64, f64)>, Vec<u64>, ReplayStats, u64);

    fn collect(dir: &Path) -> Collected {
        let mut samples = Vec::new();
        let mut series = Vec::new();
        let (stats, next) = replay(dir, &mut |r| match r {
            Record::Samples(s) => samples.extend(s),
            Record::Series(s) => series.extend(s.into_iter().map(|(r, _)| r)),
            Record::Chunks(..) => {}
        })
        .expect("replay");
        (samples, series, stats, next)
    }

    #[test]
    fn write_replay_torn_tail_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wd = dir.path().join("wal");
        let (_, next) = replay(&wd, &mut |_| {}).expect("empty replay");
        assert_eq!(next, 0);
        let wal = Wal::create(&wd, next, 200, Fsync::GroupCommit).expect("create");
        let l = Labels::from_pairs([("a", "b")]);
        wal.log_series(7, &l);
        for i in 0..10i64 {
            let mut e = SamplesEncoder::default();
            e.push(7, i * 1000, i as f64);
            e.push(7, i * 1000 + 1, f64::NAN);
            let seq = wal.log_samples(&e.buf).expect("write");
            wal.wait_durable(seq).expect("sync");
        }
        drop(wal);
        let (s, series, stats, next) = collect(&wd);
        assert_eq!(series, vec![7]);
        assert_eq!(s.len(), 20);
        assert!(stats.segments > 1, "small segments roll: {stats:?}");
        assert_eq!(stats.truncated_bytes, 0);
        // Tear the last segment's tail: the last record is lost, the rest replays.
        let last = wd.join(segment_name(next - 1));
        let len = fs::metadata(&last).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&last).expect("open");
        f.set_len(len - 3).expect("truncate");
        drop(f);
        let (s2, _, stats, _) = collect(&wd);
        assert_eq!(s2.len(), 18);
        assert!(stats.truncated_bytes > 0);
        // Corrupt a byte in the first segment's payload: that segment is cut there and all
        // later segments go.
        let (segs, _) = list_wal(&wd).expect("list");
        let first = wd.join(segment_name(segs[0]));
        let mut data = fs::read(&first).expect("read");
        let n = data.len();
        data[n - 2] ^= 0xff;
        fs::write(&first, &data).expect("write");
        let (s3, series3, stats, next3) = collect(&wd);
        assert_eq!(series3, vec![7]);
        assert!(s3.len() < 18);
        assert!(stats.deleted_segments > 0);
        let (segs, _) = list_wal(&wd).expect("list");
        assert_eq!(segs, vec![segs[0]]);
        assert_eq!(next3, segs[0] + 1);
    }

    #[test]
    fn checkpoint_replaces_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wd = dir.path().join("wal");
        let (_, next) = replay(&wd, &mut |_| {}).expect("replay");
        let wal = Wal::create(&wd, next, 1 << 20, Fsync::Never).expect("create");
        wal.log_series(1, &Labels::from_pairs([("a", "1")]));
        let mut e = SamplesEncoder::default();
        e.push(1, 5, 1.0);
        wal.log_samples(&e.buf).expect("write");
        let upto = wal.cut().expect("cut");
        let mut e2 = SamplesEncoder::default();
        e2.push(1, 6, 2.0);
        wal.log_samples(&e2.buf).expect("write");
        wal.checkpoint(upto, &mut |emit| {
            let mut p = Vec::new();
            encode_series(&mut p, 1, &Labels::from_pairs([("a", "1")]));
            emit(REC_SERIES, &p)?;
            let mut e = SamplesEncoder::default();
            e.push(1, 5, 1.0);
            emit(REC_SAMPLES, &e.buf)
        })
        .expect("checkpoint");
        drop(wal);
        let (s, series, stats, _) = collect(&wd);
        assert_eq!(stats.checkpoint, Some(upto));
        assert_eq!(series, vec![1]);
        assert_eq!(s.iter().map(|x| x.1).collect::<Vec<_>>(), vec![5, 6]);
    }
}
