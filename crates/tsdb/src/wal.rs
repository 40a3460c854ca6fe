//! The write-ahead log: segmented files of checksummed records, group-committed fsyncs,
//! replay with torn-tail repair, and checkpoints. The format is in `docs/format/wal.md`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use m3query_model::Labels;
use parking_lot::{Condvar, Mutex};

use crate::encoding::{Decbuf, DecodeError, put_str, put_u64, put_uvarint, put_varint};
use crate::error::IoContext;
use crate::fileutil::{map_wal_file, sync_dir};
use crate::head::HeadChunk;
use crate::hist::{HistSnapshot, HistVal, decode_hist_samples, is_hist_encoding};
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
pub(crate) const REC_HEAD_SERIES: u8 = 4;
pub(crate) const REC_HISTOGRAMS: u8 = 5;
pub(crate) const REC_FLOAT_HISTOGRAMS: u8 = 6;
pub(crate) const REC_HEAD_HISTOGRAMS: u8 = 7;
/// Out-of-order histograms: payloads as types 5 and 6. Apart from those so a build that
/// predates out-of-order histograms counts them as damage instead of dropping them as
/// retries (its replay drops a type 5/6 histogram older than its series' newest).
pub(crate) const REC_OOO_HISTOGRAMS: u8 = 8;
pub(crate) const REC_OOO_FLOAT_HISTOGRAMS: u8 = 9;
/// The highest record type this build reads.
const REC_MAX: u8 = REC_OOO_FLOAT_HISTOGRAMS;

/// Writes one record (type, payload) into a checkpoint.
pub(crate) type EmitRecord<'a> = dyn FnMut(u8, &[u8]) -> Result<()> + 'a;

/// Upper bounds (seconds) of the fsync latency histogram buckets; the last bucket is +Inf.
pub const FSYNC_BUCKETS_S: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Least time between two logs of failed WAL writes.
const WRITE_ERROR_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

fn segment_name(n: u64) -> String {
    format!("{n:08}")
}

fn checkpoint_name(n: u64) -> String {
    format!("checkpoint.{n:08}")
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
        // One sample is at most 28 bytes (two 10-byte varints and the value). Assembling it
        // in a 28-byte array, appending all of it (a fixed-size copy) and cutting the unused
        // end keeps the per-byte capacity checks of `Vec::push` and a variable-length memcpy
        // out of the ingest path, where this runs for every sample.
        let mut tmp = [0u8; 28];
        let mut n = stack_uvarint(&mut tmp, 0, zigzag(r.wrapping_sub(br) as i64));
        n = stack_uvarint(&mut tmp, n, zigzag(t.wrapping_sub(bt)));
        if let Some(dst) = tmp.get_mut(n..n + 8) {
            dst.copy_from_slice(&v.to_bits().to_be_bytes());
        }
        let len = self.buf.len();
        self.buf.extend_from_slice(&tmp);
        self.buf.truncate(len + n + 8);
        self.count += 1;
    }
}

fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

/// Writes `x` as a uvarint into `buf` at `at` and returns the position after it; `buf` has
/// room for the 10 bytes of the longest one.
fn stack_uvarint(buf: &mut [u8; 28], mut at: usize, mut x: u64) -> usize {
    while x >= 0x80 && at < 27 {
        buf[at] = (x as u8) | 0x80;
        x >>= 7;
        at += 1;
    }
    buf[at.min(27)] = x as u8;
    at + 1
}

/// A decoded WAL record.
#[derive(Debug)]
pub(crate) enum Record<'a> {
    Series(SeriesRecord<'a>),
    Samples(Vec<(u64, i64, f64)>),
    Chunks(u64, Vec<&'a [u8]>),
    /// A checkpointed series (type 4), and the record's payload (for
    /// [`decode_head_series`] on another thread).
    HeadSeries(SeriesState<'a>, &'a [u8]),
    /// Histogram samples (types 5 and 6): ref, time, histogram.
    Histograms(Vec<(u64, i64, HistVal)>),
    /// A checkpointed series' histogram chunks (type 7).
    HeadHistograms(u64, HistSnapshot),
}

/// A series record's series: refs and label pairs borrowed from the record, so replay
/// interns each string once without first building (and dropping) a label set per series.
#[derive(Debug, Default)]
pub(crate) struct SeriesRecord<'a> {
    series: Vec<(u64, std::ops::Range<usize>)>,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> SeriesRecord<'a> {
    /// Each series' ref and labels (sorted by name, unique, values non-empty).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &[(&'a str, &'a str)])> + '_ {
        self.series
            .iter()
            .map(|(r, range)| (*r, self.pairs.get(range.clone()).unwrap_or_default()))
    }
}

/// A head series' samples in a checkpoint (type 4, `wal.md`): its chunks as the head holds
/// them, so replay adopts them instead of decoding and re-encoding every sample.
#[derive(Debug, Default)]
pub(crate) struct SeriesState<'a> {
    pub(crate) r: u64,
    /// The newest in-order sample's time (`i64::MIN`: none) and value bits.
    pub(crate) max_t: i64,
    pub(crate) last_v: u64,
    /// Closed chunks in time order: (encoding, min time, max time, bytes).
    pub(crate) closed: Vec<(u8, i64, i64, &'a [u8])>,
    /// The open XOR chunk: its first sample's time and its bytes.
    pub(crate) open: Option<(i64, &'a [u8])>,
    /// Out-of-order samples, by time: (time, value bits).
    pub(crate) ooo: Vec<(i64, u64)>,
}

/// Appends the payload of a type 4 record.
pub(crate) fn encode_series_state(out: &mut Vec<u8>, s: &SeriesState<'_>) {
    put_u64(out, s.r);
    put_varint(out, s.max_t);
    put_u64(out, s.last_v);
    put_uvarint(out, s.closed.len() as u64);
    for &(enc, min_t, max_t, b) in &s.closed {
        out.push(enc);
        put_varint(out, min_t);
        put_varint(out, max_t.wrapping_sub(min_t));
        put_uvarint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    match s.open {
        Some((min_t, b)) => {
            put_uvarint(out, b.len() as u64);
            put_varint(out, min_t);
            out.extend_from_slice(b);
        }
        None => put_uvarint(out, 0),
    }
    put_uvarint(out, s.ooo.len() as u64);
    for &(t, v) in &s.ooo {
        put_varint(out, t);
        put_u64(out, v);
    }
}

/// Decodes a type 4 record's payload (one [`Record::HeadSeries`] carries).
pub(crate) fn decode_head_series(payload: &[u8]) -> Result<SeriesState<'_>, DecodeError> {
    decode_series_state(&mut Decbuf::new(payload))
}

fn decode_series_state<'a>(d: &mut Decbuf<'a>) -> Result<SeriesState<'a>, DecodeError> {
    let bad = |m| Err(DecodeError(m));
    let mut s = SeriesState {
        r: d.u64()?,
        max_t: d.varint()?,
        last_v: d.u64()?,
        ..SeriesState::default()
    };
    let n = d.uvarint_usize()?;
    s.closed.reserve(n.min(1024));
    let mut prev_max = None;
    for _ in 0..n {
        let enc = d.u8()?;
        if enc != m3query_chunkenc::ENCODING_XOR && enc != m3query_chunkenc::ENCODING_DENSE {
            return bad("unknown chunk encoding in head series record");
        }
        let min_t = d.varint()?;
        let max_t = min_t.wrapping_add(d.varint()?);
        if max_t < min_t || prev_max.is_some_and(|p| p >= min_t) {
            return bad("head series chunks out of order");
        }
        prev_max = Some(max_t);
        let len = d.uvarint_usize()?;
        s.closed.push((enc, min_t, max_t, d.bytes(len)?));
    }
    let open_len = d.uvarint_usize()?;
    if open_len > 0 {
        let min_t = d.varint()?;
        if prev_max.is_some_and(|p| p >= min_t) {
            return bad("head series open chunk before a closed one");
        }
        s.open = Some((min_t, d.bytes(open_len)?));
    }
    let n = d.uvarint_usize()?;
    s.ooo.reserve(n.min(1 << 16));
    for _ in 0..n {
        let t = d.varint()?;
        if s.ooo.last().is_some_and(|&(p, _)| p >= t) {
            return bad("head series out-of-order samples not sorted");
        }
        s.ooo.push((t, d.u64()?));
    }
    if d.remaining() != 0 {
        return bad("trailing bytes in head series record");
    }
    Ok(s)
}

/// Appends the payload of a type 7 record: a series' histogram chunks.
pub(crate) fn encode_hist_state(out: &mut Vec<u8>, r: u64, s: &HistSnapshot) {
    put_u64(out, r);
    put_varint(out, s.last_t);
    put_uvarint(out, s.closed.len() as u64);
    for c in &s.closed {
        out.push(c.enc);
        put_varint(out, c.min_t);
        put_varint(out, c.max_t.wrapping_sub(c.min_t));
        put_uvarint(out, c.bytes.len() as u64);
        out.extend_from_slice(&c.bytes);
    }
    match &s.open {
        Some((enc, min_t, b)) => {
            put_uvarint(out, b.len() as u64);
            out.push(*enc);
            put_varint(out, *min_t);
            out.extend_from_slice(b);
        }
        None => put_uvarint(out, 0),
    }
}

fn decode_hist_state(d: &mut Decbuf<'_>) -> Result<(u64, HistSnapshot), DecodeError> {
    let bad = |m| Err(DecodeError(m));
    let r = d.u64()?;
    let mut s = HistSnapshot {
        last_t: d.varint()?,
        ..HistSnapshot::default()
    };
    let n = d.uvarint_usize()?;
    s.closed.reserve(n.min(1024));
    let mut prev_max = None;
    for _ in 0..n {
        let enc = d.u8()?;
        if !is_hist_encoding(enc) {
            return bad("not a histogram chunk encoding in head histograms record");
        }
        let min_t = d.varint()?;
        let max_t = min_t.wrapping_add(d.varint()?);
        if max_t < min_t || prev_max.is_some_and(|p| p >= min_t) {
            return bad("head histogram chunks out of order");
        }
        prev_max = Some(max_t);
        let len = d.uvarint_usize()?;
        s.closed.push(HeadChunk {
            min_t,
            max_t,
            enc,
            bytes: Arc::from(d.bytes(len)?),
        });
    }
    let open_len = d.uvarint_usize()?;
    if open_len > 0 {
        let enc = d.u8()?;
        if !is_hist_encoding(enc) {
            return bad("not a histogram chunk encoding in head histograms record");
        }
        let min_t = d.varint()?;
        if prev_max.is_some_and(|p| p >= min_t) {
            return bad("head histograms open chunk before a closed one");
        }
        s.open = Some((enc, min_t, d.bytes(open_len)?.to_vec()));
    }
    if d.remaining() != 0 {
        return bad("trailing bytes in head histograms record");
    }
    Ok((r, s))
}

fn decode_record(typ: u8, payload: &[u8]) -> Result<Record<'_>, DecodeError> {
    let mut d = Decbuf::new(payload);
    match typ {
        REC_SERIES => {
            let mut out = SeriesRecord::default();
            while d.remaining() > 0 {
                let r = d.u64()?;
                let n = d.uvarint_usize()?;
                let start = out.pairs.len();
                out.pairs.reserve(n.min(256));
                for _ in 0..n {
                    let name = d.str()?;
                    let value = d.str()?;
                    out.pairs.push((name, value));
                }
                let ls = &out.pairs[start..];
                // Written from a `Labels`, so sorted and unique; check instead of trusting.
                if !ls.windows(2).all(|w| w[0].0 < w[1].0) || ls.iter().any(|l| l.1.is_empty()) {
                    return Err(DecodeError("series labels not sorted"));
                }
                out.series.push((r, start..out.pairs.len()));
            }
            Ok(Record::Series(out))
        }
        REC_SAMPLES => {
            if d.remaining() == 0 {
                return Ok(Record::Samples(Vec::new()));
            }
            // A sample takes at least 10 bytes (two 1-byte varints and the value) after the
            // 16 bytes of bases: sized once instead of grown (and copied) by doubling.
            let mut out = Vec::with_capacity(d.remaining().saturating_sub(16) / 10);
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
        REC_HEAD_SERIES => Ok(Record::HeadSeries(decode_series_state(&mut d)?, payload)),
        REC_HISTOGRAMS | REC_FLOAT_HISTOGRAMS | REC_OOO_HISTOGRAMS | REC_OOO_FLOAT_HISTOGRAMS => {
            // Replay decides order by time for both (as for floats): an out-of-order record
            // only says so for older builds.
            Ok(Record::Histograms(decode_hist_samples(
                payload,
                typ == REC_FLOAT_HISTOGRAMS || typ == REC_OOO_FLOAT_HISTOGRAMS,
            )?))
        }
        REC_HEAD_HISTOGRAMS => {
            let (r, s) = decode_hist_state(&mut d)?;
            Ok(Record::HeadHistograms(r, s))
        }
        _ => Err(DecodeError("unknown record type")),
    }
}

/// The record framed at `pos`, if a valid one starts there: (type, payload, end).
fn framed_at(data: &[u8], pos: usize) -> Result<(u8, &[u8], usize), &'static str> {
    let Some(h) = data.get(pos..pos + RECORD_HEADER) else {
        return Err("torn record header");
    };
    let typ = h[0];
    if !(REC_SERIES..=REC_MAX).contains(&typ) {
        return Err("unknown record type");
    }
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    let crc = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
    let start = pos + RECORD_HEADER;
    let Some(payload) = start.checked_add(len).and_then(|end| data.get(start..end)) else {
        return Err("torn record");
    };
    if crc32c::crc32c_append(crc32c::crc32c(&[typ]), payload) != crc {
        return Err("record checksum mismatch");
    }
    Ok((typ, payload, start + len))
}

/// What reading one segment found.
#[derive(Debug, Default)]
struct SegmentScan {
    /// Byte ranges of the records replayed, in order.
    good: Vec<(usize, usize)>,
    /// Byte ranges skipped as damaged, and why the first byte of each was not a record.
    damaged: Vec<(usize, usize, &'static str)>,
}

impl SegmentScan {
    fn damaged_bytes(&self) -> u64 {
        self.damaged.iter().map(|(a, b, _)| (b - a) as u64).sum()
    }
}

/// Reads a segment's records. A damaged stretch (bad header, length or CRC, undecodable
/// payload) is skipped by looking for the next offset where a record with a valid CRC
/// starts, so damage costs only the records it hits, as Prometheus's WAL reader does per
/// page. A CRC32C over the type and payload makes a false resynchronisation a ~2^-32 event
/// per candidate offset; only offsets holding a known type and a length that fits are tried.
fn read_segment(data: &[u8], f: &mut dyn FnMut(Record<'_>)) -> SegmentScan {
    let mut scan = SegmentScan::default();
    if data.is_empty() {
        return scan;
    }
    // (start, why) of the damaged stretch being skipped.
    let mut bad: Option<(usize, &'static str)> = None;
    if data.len() < SEGMENT_HEADER {
        scan.damaged.push((0, data.len(), "short segment header"));
        return scan;
    }
    if data[..4] != SEGMENT_MAGIC.to_be_bytes() || data[4] != SEGMENT_VERSION {
        bad = Some((0, "bad segment magic or version"));
    }
    let mut pos = SEGMENT_HEADER;
    while pos < data.len() {
        let why = match framed_at(data, pos) {
            Ok((typ, payload, end)) => match decode_record(typ, payload) {
                Ok(r) => {
                    if let Some((start, why)) = bad.take() {
                        scan.damaged.push((start, pos, why));
                    }
                    f(r);
                    scan.good.push((pos, end));
                    pos = end;
                    continue;
                }
                Err(e) => e.0,
            },
            Err(why) => why,
        };
        if bad.is_none() {
            bad = Some((pos, why));
        }
        pos += 1;
    }
    if let Some((start, why)) = bad {
        scan.damaged.push((start, data.len(), why));
    }
    scan
}

/// What replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ReplayStats {
    pub(crate) checkpoint: Option<u64>,
    pub(crate) segments: usize,
    pub(crate) records: u64,
    /// Bytes cut from the end of the last segment: a write torn by a crash.
    pub(crate) truncated_bytes: u64,
    /// Damaged stretches skipped (in segments and checkpoints); each lost ≥ 1 record.
    pub(crate) corruptions: u64,
    /// Bytes in those stretches.
    pub(crate) corrupt_bytes: u64,
}

/// Segment numbers and (number, path) of checkpoints, each sorted.
type WalListing = (Vec<u64>, Vec<(u64, PathBuf)>);

fn list_wal(dir: &Path) -> Result<WalListing> {
    let mut segs = Vec::new();
    let mut cps = Vec::new();
    for e in fs::read_dir(dir).ctx("read WAL directory", dir)? {
        let e = e.ctx("read WAL directory", dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".repair") {
            // A repair interrupted by a crash: the damaged segment is still in place.
            fs::remove_file(e.path()).ctx("remove", &e.path())?;
        } else if name.ends_with(".tmp") {
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
            let map = map_wal_file(&p).ctx("read checkpoint", &p)?;
            let scan = read_segment(&map, &mut |r| count(r, &mut stats));
            if let Some(&(start, _, why)) = scan.damaged.first() {
                // Checkpoints are fsynced before they are renamed into place, so this is
                // media corruption: replay what is readable, as for segments. The next
                // checkpoint replaces the file.
                stats.corruptions += scan.damaged.len() as u64;
                stats.corrupt_bytes += scan.damaged_bytes();
                tracing::error!(path = %p.display(), first_offset = start, reason = why,
                    damaged_stretches = scan.damaged.len(), bytes_skipped = scan.damaged_bytes(),
                    "corrupt WAL checkpoint: skipped the damaged records and replayed the rest");
            }
        }
    }
    let mut aside: Option<PathBuf> = None;
    for (i, &n) in segs.iter().enumerate() {
        let path = dir.join(segment_name(n));
        if cp.as_ref().is_some_and(|(c, _)| n <= *c) {
            fs::remove_file(&path).ctx("remove checkpointed segment", &path)?;
            continue;
        }
        next = n + 1;
        let map = map_wal_file(&path).ctx("read WAL segment", &path)?;
        let data = &map[..];
        stats.segments += 1;
        let before = stats.records;
        let scan = read_segment(data, &mut |r| count(r, &mut stats));
        let Some(&(start, end, why)) = scan.damaged.first() else {
            continue;
        };
        if i + 1 == segs.len() && scan.damaged.len() == 1 && end == data.len() {
            // Only the end of the newest segment: a write torn by a crash, expected.
            stats.truncated_bytes += (end - start) as u64;
            tracing::warn!(segment = %path.display(), offset = start, reason = why,
                bytes = end - start, "torn WAL tail: truncating at the last good record");
            drop(map);
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .ctx("open", &path)?;
            file.set_len(start as u64)
                .ctx("truncate WAL segment", &path)?;
            file.sync_all().ctx("fsync", &path)?;
            continue;
        }
        let lost = scan.damaged_bytes();
        stats.corruptions += scan.damaged.len() as u64;
        stats.corrupt_bytes += lost;
        let kept = repair_segment(dir, &path, data, &scan, &mut aside);
        tracing::error!(segment = %path.display(), first_offset = start, reason = why,
            damaged_stretches = scan.damaged.len(), bytes_skipped = lost,
            records_replayed = stats.records - before, copy = ?kept,
            "corrupt WAL segment: skipped the damaged records and replayed the rest");
    }
    sync_dir(dir)?;
    Ok((stats, next))
}

/// Moves a damaged segment into `wal/corrupt-<unix ms>/` (one directory per replay, made on
/// first use) and writes its good records back in its place, so the damage is reported
/// once and kept for inspection. Returns where the damaged copy went; on any failure the
/// damaged segment stays where it was (replay skips the damage again next time).
fn repair_segment(
    dir: &Path,
    path: &Path,
    data: &[u8],
    scan: &SegmentScan,
    aside: &mut Option<PathBuf>,
) -> Option<PathBuf> {
    let res = (|| -> Result<PathBuf> {
        let to = match aside {
            Some(d) => d.clone(),
            None => {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                let d = dir.join(format!("corrupt-{ms}"));
                fs::create_dir_all(&d).ctx("create", &d)?;
                *aside = Some(d.clone());
                d
            }
        };
        let name = path.file_name().unwrap_or_default();
        let copy = to.join(name);
        let mut good = Vec::with_capacity(data.len());
        good.extend_from_slice(&segment_header());
        for &(a, b) in &scan.good {
            good.extend_from_slice(&data[a..b]);
        }
        let tmp = dir.join(format!("{}.repair", name.to_string_lossy()));
        fs::write(&tmp, &good).ctx("write", &tmp)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .ctx("fsync", &tmp)?;
        if let Err(e) = fs::rename(path, &copy).ctx("move damaged WAL segment", &copy) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, path).ctx("replace damaged WAL segment", path) {
            // Put the damaged segment back: its good records must stay in the log.
            let _ = fs::rename(&copy, path);
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&to)?;
        Ok(copy)
    })();
    match res {
        Ok(copy) => Some(copy),
        Err(e) => {
            tracing::error!(segment = %path.display(), error = %e,
                "could not set the damaged WAL segment aside; leaving it in place");
            None
        }
    }
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
    /// When a failed write was last logged, and failures since.
    write_errors: Mutex<(Option<Instant>, u64)>,
    /// Test seam: the next segment write writes this many bytes, then fails with ENOSPC.
    #[cfg(test)]
    pub(crate) fail_next_write: Mutex<Option<usize>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("dir", &self.dir).finish()
    }
}

fn raw_write(file: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
    file.write_all_at(buf, at)
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
            write_errors: Mutex::new((None, 0)),
            #[cfg(test)]
            fail_next_write: Mutex::new(None),
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

    /// Writes `buf` to a segment file at offset `at` (its current length).
    fn write_segment(&self, file: &File, buf: &[u8], _at: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.fail_next_write.lock().take() {
            let n = n.min(buf.len());
            raw_write(file, &buf[..n], _at)?;
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        raw_write(file, buf, _at)
    }

    /// Appends `buf` to the current segment at its length. On failure, whatever part of it
    /// reached the file is cut off again, so the segment ends with its last good record;
    /// a segment that cannot be cut is abandoned (`broken`) for a fresh one. Writes are
    /// positional (`pwrite` at `seg_len`), so even then no write can land past a gap: a
    /// zero-filled gap would end replay there and lose every record after it.
    fn append(&self, w: &mut Writer, buf: &[u8]) -> Result<()> {
        if let Err(e) = self.write_segment(&w.file, buf, w.seg_len) {
            if w.file.set_len(w.seg_len).is_err() {
                w.broken = true;
            }
            self.log_write_error(w.seg, &e);
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
        Ok(())
    }

    /// Logs a failed WAL write, at most once per [`WRITE_ERROR_LOG_EVERY`]: with a full
    /// disk every commit fails, and each is already answered with an error.
    fn log_write_error(&self, seg: u64, e: &std::io::Error) {
        let mut l = self.write_errors.lock();
        l.1 += 1;
        if l.0.is_some_and(|at| at.elapsed() < WRITE_ERROR_LOG_EVERY) {
            return;
        }
        tracing::error!(segment = seg, error = %e, failed_writes = l.1,
            "WAL write failed: commits are refused until it succeeds");
        *l = (Some(Instant::now()), 0);
    }

    /// Closes the current segment (fsynced) and starts the next. Returns the closed one.
    fn roll(&self, w: &mut Writer) -> Result<u64> {
        let old = w.seg;
        if !w.broken {
            if !w.buf.is_empty() {
                let buf = std::mem::take(&mut w.buf);
                let r = self.append(w, &buf);
                w.buf = buf;
                r?;
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
    /// write's sequence number for [`Wal::wait_durable`]. On failure nothing of the record
    /// stays in the log, and buffered series records (other writers' too) stay buffered.
    pub(crate) fn log_samples(&self, payload: &[u8]) -> Result<u64> {
        self.log_records(&[(REC_SAMPLES, payload)])
    }

    /// Writes records (type, payload) in one write, as [`Wal::log_samples`] does one: a
    /// commit with histograms logs its samples as runs of float and histogram records in
    /// append order, so replay applies each series' samples in the order they were judged.
    pub(crate) fn log_records(&self, records: &[(u8, &[u8])]) -> Result<u64> {
        let mut w = self.w.lock();
        let rec_len: u64 = records
            .iter()
            .map(|(_, p)| (RECORD_HEADER + p.len()) as u64)
            .sum();
        if w.broken
            || (w.seg_len > SEGMENT_HEADER as u64
                && w.seg_len + w.buf.len() as u64 + rec_len > self.segment_bytes)
        {
            self.roll(&mut w)?;
        }
        let mut buf = std::mem::take(&mut w.buf);
        let series_len = buf.len();
        for (typ, payload) in records {
            frame_record(&mut buf, *typ, payload);
        }
        let res = self.append(&mut w, &buf);
        buf.truncate(series_len);
        if res.is_ok() {
            buf.clear();
        }
        w.buf = buf;
        res?;
        self.metrics
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
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
                let r = self.append(&mut w, &buf);
                w.buf = buf;
                r?;
                w.buf.clear();
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
        crate::fileutil::dir_size(&self.dir)
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
            Record::Series(s) => series.extend(s.iter().map(|(r, _)| r)),
            Record::Chunks(..)
            | Record::HeadSeries(..)
            | Record::Histograms(..)
            | Record::HeadHistograms(..) => {}
        })
        .expect("replay");
        (samples, series, stats, next)
    }

    #[test]
    fn head_series_records_round_trip_and_refuse_disorder() {
        let (c1, c2, open) = (vec![0u8, 1, 2], vec![3u8; 40], vec![0u8, 1, 9]);
        let st = SeriesState {
            r: 7,
            max_t: 9_000,
            last_v: 2.5f64.to_bits(),
            closed: vec![
                (m3query_chunkenc::ENCODING_DENSE, -50, 1_000, &c1[..]),
                (m3query_chunkenc::ENCODING_XOR, 1_001, 5_000, &c2[..]),
            ],
            open: Some((6_000, &open[..])),
            ooo: vec![(-100, 1), (4_000, 2)],
        };
        let mut p = Vec::new();
        encode_series_state(&mut p, &st);
        let Ok(Record::HeadSeries(got, _)) = decode_record(REC_HEAD_SERIES, &p) else {
            panic!("decodes");
        };
        assert_eq!((got.r, got.max_t, got.last_v), (st.r, st.max_t, st.last_v));
        assert_eq!(got.closed, st.closed);
        assert_eq!(got.open, st.open);
        assert_eq!(got.ooo, st.ooo);

        let swapped = SeriesState {
            closed: vec![st.closed[1], st.closed[0]],
            ..SeriesState::default()
        };
        p.clear();
        encode_series_state(&mut p, &swapped);
        assert!(
            decode_record(REC_HEAD_SERIES, &p).is_err(),
            "chunks out of order"
        );
        p.clear();
        encode_series_state(&mut p, &st);
        p.push(0);
        assert!(
            decode_record(REC_HEAD_SERIES, &p).is_err(),
            "trailing bytes"
        );
        let mut bad_enc = Vec::new();
        encode_series_state(
            &mut bad_enc,
            &SeriesState {
                closed: vec![(99, 0, 1, &c1[..])],
                ..SeriesState::default()
            },
        );
        assert!(
            decode_record(REC_HEAD_SERIES, &bad_enc).is_err(),
            "unknown encoding"
        );
    }

    #[test]
    fn histogram_records_round_trip_and_refuse_damage() {
        use crate::hist::HistSamplesEncoder;
        use m3query_model::histogram::{CounterResetHint, Span};
        let ih = m3query_model::Histogram {
            counter_reset_hint: CounterResetHint::Gauge,
            schema: -53,
            count: 5,
            sum: -2.5,
            positive_spans: vec![Span::new(0, 2), Span::new(3, 1)],
            positive_buckets: vec![1, 1, -1],
            custom_values: vec![0.5, 1.0, 2.0, 4.0, 8.0],
            ..Default::default()
        };
        let fh = m3query_model::FloatHistogram {
            schema: 3,
            zero_threshold: 1e-3,
            zero_count: 0.5,
            count: 7.25,
            sum: f64::NAN,
            positive_spans: vec![Span::new(-2, 1)],
            negative_spans: vec![Span::new(4, 2)],
            positive_buckets: vec![1.75],
            negative_buckets: vec![2.0, 3.0],
            ..Default::default()
        };
        for (typ, vals) in [
            (
                REC_HISTOGRAMS,
                vec![HistVal::Int(ih.clone()), HistVal::stale(false)],
            ),
            (
                REC_FLOAT_HISTOGRAMS,
                vec![HistVal::Float(fh.clone()), HistVal::stale(true)],
            ),
            // Out-of-order records share the in-order records' payloads.
            (
                REC_OOO_HISTOGRAMS,
                vec![HistVal::stale(false), HistVal::Int(ih.clone())],
            ),
            (
                REC_OOO_FLOAT_HISTOGRAMS,
                vec![HistVal::stale(true), HistVal::Float(fh.clone())],
            ),
        ] {
            let mut e = HistSamplesEncoder::default();
            for (i, v) in vals.iter().enumerate() {
                e.push(9 + i as u64, -5 + i as i64 * 1000, v);
            }
            let Ok(Record::Histograms(got)) = decode_record(typ, &e.buf) else {
                panic!("decodes");
            };
            assert_eq!(got.len(), 2);
            for ((r, t, g), (i, w)) in got.iter().zip(vals.iter().enumerate()) {
                assert_eq!((*r, *t), (9 + i as u64, -5 + i as i64 * 1000));
                assert!(
                    w.same_as_stored(g) && g.hint() == w.hint(),
                    "{g:?} vs {w:?}"
                );
            }
            // A truncated payload is an undecodable record, not a shorter one.
            assert!(decode_record(typ, &e.buf[..e.buf.len() - 1]).is_err());
        }

        let c = m3query_chunkenc::ENCODING_HISTOGRAM;
        let (b1, b2) = (vec![1u8, 2, 3], vec![4u8; 9]);
        let st = HistSnapshot {
            last_t: 9_000,
            closed: vec![HeadChunk {
                min_t: -10,
                max_t: 100,
                enc: c,
                bytes: Arc::from(&b1[..]),
            }],
            open: Some((m3query_chunkenc::ENCODING_FLOAT_HISTOGRAM, 200, b2.clone())),
            ooo: Vec::new(),
        };
        let mut p = Vec::new();
        encode_hist_state(&mut p, 77, &st);
        let Ok(Record::HeadHistograms(r, got)) = decode_record(REC_HEAD_HISTOGRAMS, &p) else {
            panic!("decodes");
        };
        assert_eq!((r, got.last_t), (77, 9_000));
        assert_eq!(got.closed.len(), 1);
        assert_eq!(&got.closed[0].bytes[..], &b1[..]);
        assert_eq!(got.open, st.open);
        p.push(0);
        assert!(decode_record(REC_HEAD_HISTOGRAMS, &p).is_err(), "trailing");
        let mut late = st.clone();
        late.open = Some((c, 50, b2));
        p.clear();
        encode_hist_state(&mut p, 77, &late);
        assert!(decode_record(REC_HEAD_HISTOGRAMS, &p).is_err(), "disorder");
        let mut xor = st;
        xor.closed[0].enc = m3query_chunkenc::ENCODING_XOR;
        p.clear();
        encode_hist_state(&mut p, 77, &xor);
        assert!(decode_record(REC_HEAD_HISTOGRAMS, &p).is_err(), "encoding");
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
        // Corrupt a byte in the first segment's last record: that record (2 samples) is
        // lost, the segment is repaired and every later segment still replays.
        let (segs, _) = list_wal(&wd).expect("list");
        let first = wd.join(segment_name(segs[0]));
        let mut data = fs::read(&first).expect("read");
        let n = data.len();
        data[n - 2] ^= 0xff;
        fs::write(&first, &data).expect("write");
        let (s3, series3, stats, next3) = collect(&wd);
        assert_eq!(series3, vec![7]);
        assert_eq!(s3.len(), 16);
        assert_eq!(
            (stats.corruptions, stats.truncated_bytes),
            (1, 0),
            "{stats:?}"
        );
        let (segs3, _) = list_wal(&wd).expect("list");
        assert_eq!(segs3, segs);
        assert_eq!(next3, next);
    }

    /// A crash between creating a segment and writing its header leaves an empty file: it
    /// maps (and replays) as no records, and the next segment still takes the next number.
    #[test]
    fn empty_segment_file_replays_as_no_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wd = dir.path().join("wal");
        let (_, next) = replay(&wd, &mut |_| {}).expect("replay");
        let wal = Wal::create(&wd, next, 1 << 20, Fsync::Never).expect("create");
        wal.log_series(3, &Labels::from_pairs([("a", "1")]));
        wal.log_samples(&one_sample(3, 10)).expect("write");
        drop(wal);
        let (_, _, _, next) = collect(&wd);
        File::create(wd.join(segment_name(next))).expect("empty segment");
        let (s, series, stats, next2) = collect(&wd);
        assert_eq!((s.len(), series), (1, vec![3]));
        assert_eq!((stats.corruptions, stats.truncated_bytes), (0, 0));
        assert_eq!(next2, next + 1);
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

    fn one_sample(r: u64, t: i64) -> Vec<u8> {
        let mut e = SamplesEncoder::default();
        e.push(r, t, t as f64);
        e.buf
    }

    /// Disk full mid-record: the failed write is cut off and every write after it lands
    /// right behind the last good record, so replay finds all acknowledged records (the
    /// old writer kept its file position past the truncation and left a zero hole).
    #[test]
    fn failed_write_leaves_no_hole_and_keeps_buffered_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wd = dir.path().join("wal");
        let (_, next) = replay(&wd, &mut |_| {}).expect("replay");
        let wal = Wal::create(&wd, next, 1 << 20, Fsync::Never).expect("create");
        wal.log_series(7, &Labels::from_pairs([("a", "7")]));
        wal.log_samples(&one_sample(7, 1)).expect("write");
        // A series created by another writer waits in the buffer while this write fails.
        wal.log_series(8, &Labels::from_pairs([("a", "8")]));
        *wal.fail_next_write.lock() = Some(11);
        assert!(wal.log_samples(&one_sample(7, 2)).is_err());
        *wal.fail_next_write.lock() = Some(0);
        assert!(wal.log_samples(&one_sample(7, 3)).is_err());
        wal.log_samples(&one_sample(7, 4))
            .expect("write after failure");
        wal.log_samples(&one_sample(8, 5))
            .expect("write after failure");
        let seg = wd.join(segment_name(next));
        drop(wal);
        let (s, series, stats, _) = collect(&wd);
        assert_eq!(s.iter().map(|x| x.1).collect::<Vec<_>>(), vec![1, 4, 5]);
        assert_eq!(series, vec![7, 8]);
        assert_eq!(stats.truncated_bytes, 0, "{stats:?}");
        // Header, two series records and three samples records of 35 bytes: nothing else.
        let series_rec = RECORD_HEADER + 8 + 1 + 2 + 2;
        let len = fs::metadata(&seg).expect("meta").len() as usize;
        assert_eq!(len, SEGMENT_HEADER + 2 * series_rec + 3 * 35);
    }

    /// One flipped 4-byte run in the middle of the log costs only the records it hits:
    /// replay resynchronises on the next valid record, keeps later segments, and keeps a
    /// copy of the damaged segment.
    #[test]
    fn corruption_mid_wal_loses_only_damaged_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wd = dir.path().join("wal");
        let (_, next) = replay(&wd, &mut |_| {}).expect("replay");
        let wal = Wal::create(&wd, next, 1000, Fsync::Never).expect("create");
        wal.log_series(7, &Labels::from_pairs([("a", "7")]));
        let n = 300;
        for t in 0..n {
            wal.log_samples(&one_sample(7, t)).expect("write");
        }
        drop(wal);
        let (segs, _) = list_wal(&wd).expect("list");
        assert!(segs.len() > 5, "{segs:?}");
        // Flip 4 bytes in the middle of the second segment.
        let victim = wd.join(segment_name(segs[1]));
        let mut data = fs::read(&victim).expect("read");
        let mid = data.len() / 2;
        for b in &mut data[mid..mid + 4] {
            *b ^= 0xa5;
        }
        fs::write(&victim, &data).expect("write");
        let (s, series, _, _) = collect(&wd);
        assert_eq!(series, vec![7]);
        let lost = n as usize - s.len();
        assert!(lost <= 2, "lost {lost} of {n} samples");
        assert!(s.iter().any(|x| x.1 == n - 1), "later segments replayed");
        let (segs2, _) = list_wal(&wd).expect("list");
        assert_eq!(segs2, segs, "no segment deleted");
        let copies: Vec<_> = fs::read_dir(&wd)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("corrupt-"))
            .collect();
        assert_eq!(copies.len(), 1, "a copy of the damaged segment is kept");
        let copy = copies[0].path().join(segment_name(segs[1]));
        assert_eq!(fs::read(&copy).expect("copy"), data);
        // Repaired in place: a second replay finds the same records and nothing to repair.
        let (s2, _, _, _) = collect(&wd);
        assert_eq!(s2.len(), s.len());
        let copies2 = fs::read_dir(&wd)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("corrupt-"))
            .count();
        assert_eq!(copies2, 1);
    }
}
