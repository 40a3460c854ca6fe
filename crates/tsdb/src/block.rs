//! Immutable on-disk blocks (`docs/format/block.md`): meta.json, writing a block atomically
//! from sorted series, opening and verifying one.

use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use m3query_chunkenc::{DENSE_SAMPLES_PER_CHUNK, DenseEncoder, ENCODING_DENSE};
use m3query_model::Labels;
use m3query_model::Sample;
use serde::{Deserialize, Serialize};

use crate::chunks::{ChunkReader, ChunkWriter, QChunk, merge_chunks};
use crate::error::IoContext;
use crate::fileutil::{dir_size, sync_dir};
use crate::hist::{decode_chunks, encode_chunks, for_each_in_chunk, is_hist_encoding};
use crate::index::{ChunkMeta, IndexReader, write_index};
use crate::{Error, Result};

pub(crate) const META_FORMAT: &str = "m3query-tsdb-block";
/// Version 2: chunk files may hold dense chunks. Version 3: they may hold native histogram
/// chunks (only blocks that do are written as 3, so float-only blocks stay readable by
/// builds that know version 2). Versions 1 and 2 are still opened.
pub(crate) const META_VERSION: u32 = 3;
/// The version of blocks without histograms.
const META_VERSION_FLOATS: u32 = 2;
pub(crate) const TMP_CREATION: &str = ".tmp-for-creation";
pub(crate) const TMP_DELETION: &str = ".tmp-for-deletion";

/// A block's `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockMeta {
    /// Always `m3query-tsdb-block`: refuses directories of another format.
    pub format: String,
    /// The block format version (2 allows dense chunks).
    pub version: u32,
    /// The block's id, also its directory name.
    pub ulid: String,
    /// Inclusive, ms.
    pub min_time: i64,
    /// Exclusive, ms.
    pub max_time: i64,
    /// What the block holds.
    pub stats: BlockStats,
    /// Where the block came from.
    pub compaction: BlockCompaction,
}

/// Counts of what a block holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockStats {
    /// Series in the block.
    pub num_series: u64,
    /// Chunks in the block.
    pub num_chunks: u64,
    /// Samples in the block (floats and native histograms).
    pub num_samples: u64,
    /// Of those, native histogram samples (Prometheus's `numHistogramSamples`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub num_histogram_samples: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A block's lineage, as Prometheus's `meta.json` records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockCompaction {
    /// 1 for a block cut from the head, one more for each compaction.
    pub level: u32,
    /// The ULIDs of the level-1 blocks merged into this one.
    pub sources: Vec<String>,
    /// The blocks compacted into this one.
    pub parents: Vec<BlockParent>,
}

/// A block compacted into another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockParent {
    /// Its id.
    pub ulid: String,
    /// Its first timestamp, ms (inclusive).
    pub min_time: i64,
    /// Its end, ms (exclusive).
    pub max_time: i64,
}

/// A new ULID: 48-bit ms timestamp and 80 random bits, Crockford base 32.
pub(crate) fn new_ulid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ms = (now.as_millis() as u64) & ((1 << 48) - 1);
    // RandomState is seeded from the OS per instance: 80 bits of it.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    let r1 = h.finish();
    h.write_u64(r1);
    let r2 = h.finish() & 0xffff;
    let v: u128 = (u128::from(ms) << 80) | (u128::from(r1) << 16) | u128::from(r2);
    (0..26)
        .rev()
        .map(|i| ALPHABET[((v >> (i * 5)) & 31) as usize] as char)
        .collect()
}

pub(crate) fn is_ulid(s: &str) -> bool {
    s.len() == 26 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// An open block.
pub(crate) struct Block {
    pub(crate) dir: PathBuf,
    pub(crate) meta: BlockMeta,
    pub(crate) index: IndexReader,
    pub(crate) chunks: ChunkReader,
    pub(crate) size_bytes: u64,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("dir", &self.dir)
            .field("meta", &self.meta)
            .finish()
    }
}

pub(crate) fn read_meta(dir: &Path) -> Result<BlockMeta> {
    let path = dir.join("meta.json");
    let b = fs::read(&path).ctx("read", &path)?;
    let meta: BlockMeta = serde_json::from_slice(&b)?;
    if meta.format != META_FORMAT || !(1..=META_VERSION).contains(&meta.version) {
        return Err(Error::corruption(
            path.display().to_string(),
            format!(
                "unknown block format {:?} version {}",
                meta.format, meta.version
            ),
        ));
    }
    Ok(meta)
}

/// The part of a block that could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockPart {
    Meta,
    Index,
    Chunks,
}

impl BlockPart {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BlockPart::Meta => "meta",
            BlockPart::Index => "index",
            BlockPart::Chunks => "chunks",
        }
    }
}

impl Block {
    pub(crate) fn open(dir: &Path) -> Result<Block> {
        Block::open_parts(dir).map_err(|(_, e)| e)
    }

    /// Opens a block, checking every checksum of its index (the query path then checks
    /// each series entry, postings list and chunk it reads). On failure, says which part.
    pub(crate) fn open_parts(dir: &Path) -> Result<Block, (BlockPart, Error)> {
        let meta = read_meta(dir).map_err(|e| (BlockPart::Meta, e))?;
        let index = IndexReader::open(&dir.join("index"))
            .and_then(|ix| ix.verify().map(|()| ix))
            .map_err(|e| (BlockPart::Index, e))?;
        let chunks = ChunkReader::open(&dir.join("chunks")).map_err(|e| (BlockPart::Chunks, e))?;
        Ok(Block {
            dir: dir.to_path_buf(),
            meta,
            index,
            chunks,
            size_bytes: dir_size(dir),
        })
    }

    pub(crate) fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        self.meta.min_time <= maxt && self.meta.max_time > mint
    }

    /// Checks every checksum of the index and every chunk, and the stats in meta.json.
    pub(crate) fn verify(&self) -> Result<()> {
        self.index.verify()?;
        let mut metas = Vec::new();
        let (mut chunks, mut samples, mut hist_samples) = (0u64, 0u64, 0u64);
        for id in 0..self.index.num_series() {
            metas.clear();
            self.index.series(id, Some(&mut metas))?;
            for m in &metas {
                self.chunks.verify_chunk(m.r)?;
                let (enc, c) = self.chunks.chunk(m.r)?;
                // Every sample decodes, in time order, within the chunk's recorded range.
                let (n, ts) = if is_hist_encoding(enc) {
                    let n =
                        m3query_chunkenc::histogram_chunk_num_samples(c.as_slice()).unwrap_or(0);
                    let mut ts = Vec::with_capacity(usize::from(n));
                    for_each_in_chunk(enc, c.as_slice(), |t, _| {
                        ts.push(t);
                        true
                    })?;
                    hist_samples += u64::from(n);
                    (n, ts)
                } else {
                    let mut it = m3query_chunkenc::ChunkIterator::new(enc, c.as_slice())?;
                    let n = it.num_samples();
                    let mut buf = Vec::with_capacity(usize::from(n));
                    it.append_range(i64::MIN, i64::MAX, &mut buf)?;
                    (n, buf.iter().map(|s| s.t).collect())
                };
                if ts.len() != usize::from(n)
                    || ts.first().is_some_and(|&t| t != m.min_t)
                    || ts.last().is_some_and(|&t| t != m.max_t)
                    || !ts.windows(2).all(|w| w[0] < w[1])
                {
                    return Err(Error::corruption(
                        self.dir.display().to_string(),
                        format!("chunk {:#x} disagrees with its index entry", m.r),
                    ));
                }
                samples += u64::from(n);
                chunks += 1;
                if m.min_t < self.meta.min_time || m.max_t >= self.meta.max_time {
                    return Err(Error::corruption(
                        self.dir.display().to_string(),
                        "chunk outside the block's time range",
                    ));
                }
            }
        }
        let s = &self.meta.stats;
        if s.num_series != u64::from(self.index.num_series())
            || s.num_chunks != chunks
            || s.num_samples != samples
            || s.num_histogram_samples != hist_samples
        {
            return Err(Error::corruption(
                self.dir.display().to_string(),
                "meta.json stats disagree with the block's contents",
            ));
        }
        Ok(())
    }
}

/// One series to write: labels and chunks in any order, possibly overlapping or reaching
/// outside the block (those are decoded, merged and re-encoded).
pub(crate) struct SeriesChunks {
    pub(crate) labels: Labels,
    pub(crate) chunks: Vec<QChunk>,
}

/// Chunks that can be decoded one after another: sorted, non-overlapping, inside
/// `[mint, maxt]`.
fn clean(chunks: &[QChunk], mint: i64, maxt: i64) -> bool {
    chunks.iter().all(|c| c.min_t >= mint && c.max_t <= maxt)
        && chunks.windows(2).all(|w| w[0].max_t < w[1].min_t)
}

/// Every sample of `chunks` in `[mint, maxt]`, in time order, once: decoded in sequence when
/// the chunks are clean, merged (first listed chunk wins at equal timestamps) otherwise.
fn series_samples(chunks: &[QChunk], mint: i64, maxt: i64, out: &mut Vec<Sample>) -> Result<()> {
    out.clear();
    let mut sorted = chunks.to_vec();
    sorted.sort_by_key(|c| c.min_t);
    if clean(&sorted, mint, maxt) {
        for c in &sorted {
            c.iter()?.append_range(mint, maxt, out)?;
        }
        return Ok(());
    }
    // Merging keeps the given order, which is the precedence for equal timestamps.
    out.extend(merge_chunks(chunks, mint, maxt)?);
    Ok(())
}

/// Writes a block covering `[mint, maxt)` from `series` (sorted by labels) into `db_dir`:
/// temp directory, fsync, rename, fsync. Returns `None` (and writes nothing) when no series
/// has samples in the range.
pub(crate) fn write_block(
    db_dir: &Path,
    mint: i64,
    maxt: i64,
    series: Vec<SeriesChunks>,
    mut compaction: BlockCompaction,
) -> Result<Option<BlockMeta>> {
    let ulid = new_ulid();
    let tmp = db_dir.join(format!("{ulid}{TMP_CREATION}"));
    fs::create_dir_all(&tmp).ctx("create block directory", &tmp)?;
    let res = write_block_files(&tmp, mint, maxt, series);
    let (index_series, stats) = match res {
        Ok(x) => x,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if index_series == 0 {
        fs::remove_dir_all(&tmp).ctx("remove", &tmp)?;
        return Ok(None);
    }
    if compaction.sources.is_empty() {
        compaction.sources.push(ulid.clone());
    }
    let meta = BlockMeta {
        format: META_FORMAT.to_string(),
        version: if stats.num_histogram_samples > 0 {
            META_VERSION
        } else {
            META_VERSION_FLOATS
        },
        ulid: ulid.clone(),
        min_time: mint,
        max_time: maxt,
        stats,
        compaction,
    };
    let mp = tmp.join("meta.json");
    let json = serde_json::to_vec_pretty(&meta)?;
    fs::write(&mp, &json).ctx("write", &mp)?;
    fs::File::open(&mp)
        .and_then(|f| f.sync_all())
        .ctx("fsync", &mp)?;
    sync_dir(&tmp)?;
    let dst = db_dir.join(&ulid);
    fs::rename(&tmp, &dst).ctx("rename block into place", &dst)?;
    sync_dir(db_dir)?;
    Ok(Some(meta))
}

fn write_block_files(
    dir: &Path,
    mint: i64,
    maxt: i64,
    series: Vec<SeriesChunks>,
) -> Result<(usize, BlockStats)> {
    let last = maxt - 1;
    let mut cw = ChunkWriter::new(&dir.join("chunks"))?;
    let mut index_series: Vec<(Labels, Vec<ChunkMeta>)> = Vec::with_capacity(series.len());
    let mut stats = BlockStats::default();
    let mut enc = DenseEncoder::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut buf = Vec::new();
    for s in series {
        let (hchunks, fchunks): (Vec<QChunk>, Vec<QChunk>) =
            if s.chunks.iter().any(|c| is_hist_encoding(c.enc)) {
                s.chunks.into_iter().partition(|c| is_hist_encoding(c.enc))
            } else {
                (Vec::new(), s.chunks)
            };
        // Every float chunk is written in the dense encoding (chunks.md), in chunks of at
        // most DENSE_SAMPLES_PER_CHUNK samples of even size.
        series_samples(&fchunks, mint, last, &mut samples)?;
        let mut metas = Vec::new();
        let per = samples
            .len()
            .div_ceil(samples.len().div_ceil(DENSE_SAMPLES_PER_CHUNK).max(1))
            .max(1);
        for part in samples.chunks(per) {
            let (Some(first), Some(lastx)) = (part.first(), part.last()) else {
                continue;
            };
            buf.clear();
            enc.encode(part, &mut buf)?;
            let r = cw.write(ENCODING_DENSE, &buf)?;
            metas.push(ChunkMeta {
                min_t: first.t,
                max_t: lastx.t,
                r,
            });
            stats.num_samples += part.len() as u64;
        }
        if !hchunks.is_empty() {
            // Histogram chunks keep Prometheus's encodings (2, 3): as they are when they fit
            // the block and do not overlap, else merged and re-encoded.
            let n = write_hist_chunks(&mut cw, &hchunks, mint, last, &mut metas)?;
            stats.num_samples += n;
            stats.num_histogram_samples += n;
            metas.sort_by_key(|m| m.min_t);
        }
        if metas.is_empty() {
            continue;
        }
        stats.num_chunks += metas.len() as u64;
        index_series.push((s.labels, metas));
    }
    debug_assert!(index_series.windows(2).all(|w| w[0].0 < w[1].0));
    stats.num_series = index_series.len() as u64;
    let n = index_series.len();
    if n > 0 {
        cw.finish()?;
        write_index(&dir.join("index"), &index_series)?;
    }
    Ok((n, stats))
}

/// Writes a series' histogram chunks for a block over `[mint, last]`; returns the samples
/// written.
fn write_hist_chunks(
    cw: &mut ChunkWriter,
    chunks: &[QChunk],
    mint: i64,
    last: i64,
    metas: &mut Vec<ChunkMeta>,
) -> Result<u64> {
    let mut sorted = chunks.to_vec();
    sorted.sort_by_key(|c| c.min_t);
    let mut n = 0u64;
    if clean(&sorted, mint, last) {
        for c in &sorted {
            let r = cw.write(c.enc, c.bytes.as_slice())?;
            metas.push(ChunkMeta {
                min_t: c.min_t,
                max_t: c.max_t,
                r,
            });
            n += u64::from(
                m3query_chunkenc::histogram_chunk_num_samples(c.bytes.as_slice()).unwrap_or(0),
            );
        }
        return Ok(n);
    }
    // In the given order, which is the precedence for equal timestamps.
    let samples = decode_chunks(chunks, mint, last)?;
    for (enc, min_t, max_t, bytes) in encode_chunks(&samples)? {
        let r = cw.write(enc, &bytes)?;
        metas.push(ChunkMeta { min_t, max_t, r });
    }
    Ok(samples.len() as u64)
}

/// Renames a block out of the way, then removes it (a crash in between leaves a
/// `.tmp-for-deletion` directory, removed on the next open).
pub(crate) fn delete_block_dir(dir: &Path) -> Result<()> {
    let Some(name) = dir.file_name() else {
        return Ok(());
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    let tmp = parent.join(format!("{}{TMP_DELETION}", name.to_string_lossy()));
    fs::rename(dir, &tmp).ctx("rename block for deletion", dir)?;
    sync_dir(parent)?;
    fs::remove_dir_all(&tmp).ctx("remove block", &tmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::ChunkBytes;
    use std::sync::Arc;

    fn chunk(samples: &[(i64, f64)]) -> QChunk {
        let mut a = m3query_chunkenc::XorAppender::new();
        for &(t, v) in samples {
            a.append(t, v).expect("fits");
        }
        QChunk {
            seek: None,
            min_t: samples[0].0,
            max_t: samples[samples.len() - 1].0,
            enc: m3query_chunkenc::ENCODING_XOR,
            bytes: ChunkBytes::Heap(Arc::from(a.into_bytes())),
        }
    }

    /// Writes a block as version 1 did: XOR chunks in a version 1 chunk file, meta.json
    /// version 1.
    fn write_v1_block(
        db_dir: &Path,
        mint: i64,
        maxt: i64,
        series: &[(Labels, Vec<QChunk>)],
    ) -> String {
        let ulid = new_ulid();
        let dir = db_dir.join(&ulid);
        fs::create_dir_all(dir.join("chunks")).expect("mkdir");
        let mut file = Vec::new();
        file.extend_from_slice(&crate::chunks::CHUNKS_MAGIC.to_be_bytes());
        file.extend_from_slice(&[1, 0, 0, 0]);
        let mut index = Vec::new();
        let mut stats = BlockStats::default();
        for (l, cs) in series {
            let mut metas = Vec::new();
            for c in cs {
                let r = (1u64 << 32) | file.len() as u64;
                let data = c.bytes.as_slice();
                crate::encoding::put_uvarint(&mut file, data.len() as u64);
                let start = file.len();
                file.push(m3query_chunkenc::ENCODING_XOR);
                file.extend_from_slice(data);
                let crc = crc32c::crc32c(&file[start..]);
                file.extend_from_slice(&crc.to_be_bytes());
                metas.push(ChunkMeta {
                    min_t: c.min_t,
                    max_t: c.max_t,
                    r,
                });
                stats.num_chunks += 1;
                stats.num_samples +=
                    u64::from(m3query_chunkenc::chunk_num_samples(data).expect("header"));
            }
            index.push((l.clone(), metas));
        }
        stats.num_series = index.len() as u64;
        fs::write(dir.join("chunks").join("000001"), &file).expect("write chunks");
        write_index(&dir.join("index"), &index).expect("index");
        let meta = BlockMeta {
            format: META_FORMAT.into(),
            version: 1,
            ulid: ulid.clone(),
            min_time: mint,
            max_time: maxt,
            stats,
            compaction: BlockCompaction {
                level: 1,
                sources: vec![ulid.clone()],
                parents: vec![],
            },
        };
        fs::write(
            dir.join("meta.json"),
            serde_json::to_vec(&meta).expect("json"),
        )
        .expect("meta");
        ulid
    }

    fn read_all(b: &Block) -> Vec<(Labels, Vec<(i64, u64)>)> {
        let mut out = Vec::new();
        for id in 0..b.index.num_series() {
            let mut metas = Vec::new();
            let l = b.index.series(id, Some(&mut metas)).expect("series");
            let qs: Vec<QChunk> = metas
                .iter()
                .map(|m| {
                    let (enc, bytes) = b.chunks.chunk(m.r).expect("chunk");
                    QChunk {
                        seek: None,
                        min_t: m.min_t,
                        max_t: m.max_t,
                        enc,
                        bytes,
                    }
                })
                .collect();
            let s = merge_chunks(&qs, i64::MIN, i64::MAX).expect("decode");
            out.push((l, s.iter().map(|x| (x.t, x.v.to_bits())).collect()));
        }
        out
    }

    #[test]
    fn version_1_blocks_open_and_compact_into_dense_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let samples = |k: i64| -> Vec<(i64, f64)> {
            (0..300)
                .map(|i| {
                    (
                        k * 10_000 + i * 15,
                        if i == 7 {
                            f64::NAN
                        } else {
                            (i * k) as f64 * 0.25
                        },
                    )
                })
                .collect()
        };
        let mk = |k: i64| {
            let s = samples(k);
            vec![chunk(&s[..120]), chunk(&s[120..240]), chunk(&s[240..])]
        };
        let a = Labels::from_pairs([("__name__", "x"), ("i", "1")]);
        let b = Labels::from_pairs([("__name__", "x"), ("i", "2")]);
        let u1 = write_v1_block(
            dir.path(),
            10_000,
            20_000,
            &[(a.clone(), mk(1)), (b.clone(), mk(1))],
        );
        let u2 = write_v1_block(dir.path(), 20_000, 30_000, &[(a.clone(), mk(2))]);
        let b1 = Arc::new(Block::open(&dir.path().join(&u1)).expect("open v1"));
        let b2 = Arc::new(Block::open(&dir.path().join(&u2)).expect("open v1"));
        b1.verify().expect("verify v1");
        assert_eq!(b1.meta.version, 1);
        let before: Vec<_> = read_all(&b1).into_iter().chain(read_all(&b2)).collect();
        let meta = crate::compact::compact(dir.path(), &[b1, b2])
            .expect("compact")
            .expect("data");
        assert_eq!(
            meta.version, META_VERSION_FLOATS,
            "no histograms: readable by v2 builds"
        );
        let c = Block::open(&dir.path().join(&meta.ulid)).expect("open compacted");
        c.verify().expect("verify compacted");
        let after = read_all(&c);
        // Series a's two blocks become one series; b is unchanged; all bits kept.
        let mut want_a = before[0].1.clone();
        want_a.extend(before[2].1.clone());
        assert_eq!(after, vec![(a, want_a), (b, before[1].1.clone())]);
        let mut metas = Vec::new();
        c.index.series(0, Some(&mut metas)).expect("series");
        assert_eq!(metas.len(), 2, "600 samples: two even dense chunks");
        assert!(
            metas
                .iter()
                .all(|m| c.chunks.chunk(m.r).expect("chunk").0 == ENCODING_DENSE)
        );
        // A chunk file from a newer format is refused with a clear error, not misread.
        let f = dir.path().join(&meta.ulid).join("chunks").join("000001");
        let mut data = fs::read(&f).expect("read");
        assert_eq!(data[4], 2, "no histograms: a version 2 chunk file");
        data[4] = 4;
        fs::write(&f, &data).expect("write");
        let err = Block::open(&dir.path().join(&meta.ulid))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("version 4"), "{err}");
    }

    /// Histogram chunks keep their encoding in blocks; overlapping ones (from overlapping
    /// blocks) are merged, the first listed winning at equal timestamps, and clipped.
    #[test]
    fn histogram_chunks_are_kept_or_merged() {
        use crate::hist::{HistVal, decode_chunks, encode_chunks};
        use m3query_model::histogram::Span;
        let hv = |c: u64| {
            HistVal::Int(m3query_model::Histogram {
                count: c,
                sum: c as f64,
                positive_spans: vec![Span::new(0, 1)],
                positive_buckets: vec![c as i64],
                ..Default::default()
            })
        };
        let chunk = |samples: &[(i64, u64)]| -> Vec<QChunk> {
            let s: Vec<(i64, HistVal)> = samples.iter().map(|&(t, c)| (t, hv(c))).collect();
            encode_chunks(&s)
                .expect("encode")
                .into_iter()
                .map(|(enc, min_t, max_t, b)| QChunk {
                    seek: None,
                    min_t,
                    max_t,
                    enc,
                    bytes: ChunkBytes::Heap(Arc::from(b)),
                })
                .collect()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = chunk(&[(10, 1), (20, 2), (30, 3)]);
        a.extend(chunk(&[(25, 9), (40, 4), (500, 5)]));
        let series = vec![
            SeriesChunks {
                labels: Labels::from_pairs([("a", "clean")]),
                chunks: chunk(&[(10, 1), (20, 2)]),
            },
            SeriesChunks {
                labels: Labels::from_pairs([("a", "overlap")]),
                chunks: a,
            },
        ];
        let meta = write_block(dir.path(), 0, 100, series, BlockCompaction::default())
            .expect("write")
            .expect("data");
        assert_eq!(meta.version, META_VERSION);
        assert_eq!(meta.stats.num_histogram_samples, 2 + 5);
        let b = Block::open(&dir.path().join(&meta.ulid)).expect("open");
        b.verify().expect("verify");
        let read = |id| {
            let mut metas = Vec::new();
            b.index.series(id, Some(&mut metas)).expect("series");
            let qs: Vec<QChunk> = metas
                .iter()
                .map(|m| {
                    let (enc, bytes) = b.chunks.chunk(m.r).expect("chunk");
                    assert_eq!(enc, m3query_chunkenc::ENCODING_HISTOGRAM);
                    QChunk {
                        seek: None,
                        min_t: m.min_t,
                        max_t: m.max_t,
                        enc,
                        bytes,
                    }
                })
                .collect();
            decode_chunks(&qs, i64::MIN, i64::MAX)
                .expect("decode")
                .into_iter()
                .map(|(t, h)| (t, h.to_float().count))
                .collect::<Vec<_>>()
        };
        assert_eq!(read(0), vec![(10, 1.0), (20, 2.0)]);
        assert_eq!(
            read(1),
            vec![(10, 1.0), (20, 2.0), (25, 9.0), (30, 3.0), (40, 4.0)]
        );
        let f = dir.path().join(&meta.ulid).join("chunks").join("000001");
        assert_eq!(fs::read(&f).expect("read")[4], 3, "a version 3 chunk file");
    }

    #[test]
    fn ulids_are_unique_and_well_formed() {
        let a = new_ulid();
        let b = new_ulid();
        assert!(is_ulid(&a) && is_ulid(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn write_open_verify_and_merge_overlaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let series = vec![
            SeriesChunks {
                labels: Labels::from_pairs([("a", "1")]),
                chunks: vec![chunk(&[(10, 1.0), (20, 2.0)]), chunk(&[(30, 3.0)])],
            },
            SeriesChunks {
                labels: Labels::from_pairs([("a", "2")]),
                // Overlapping and reaching past the block: merged and clipped.
                chunks: vec![
                    chunk(&[(15, 1.0), (25, 2.0), (200, 9.0)]),
                    chunk(&[(5, 0.5), (25, 7.0)]),
                ],
            },
            SeriesChunks {
                labels: Labels::from_pairs([("a", "3")]),
                chunks: vec![chunk(&[(500, 1.0)])],
            },
        ];
        let meta = write_block(
            dir.path(),
            0,
            100,
            series,
            BlockCompaction {
                level: 1,
                ..Default::default()
            },
        )
        .expect("write")
        .expect("has data");
        let b = Block::open(&dir.path().join(&meta.ulid)).expect("open");
        b.verify().expect("verify");
        assert_eq!(b.meta.stats.num_series, 2);
        assert_eq!(b.meta.stats.num_samples, 6);
        let mut metas = Vec::new();
        let l = b.index.series(1, Some(&mut metas)).expect("series");
        assert_eq!(l, Labels::from_pairs([("a", "2")]));
        let qs: Vec<QChunk> = metas
            .iter()
            .map(|m| {
                let (enc, bytes) = b.chunks.chunk(m.r).expect("chunk");
                QChunk {
                    seek: None,
                    min_t: m.min_t,
                    max_t: m.max_t,
                    enc,
                    bytes,
                }
            })
            .collect();
        let got = merge_chunks(&qs, i64::MIN, i64::MAX).expect("decode");
        let ts: Vec<(i64, f64)> = got.iter().map(|s| (s.t, s.v)).collect();
        // At 25 the first listed chunk's value wins.
        assert_eq!(ts, vec![(5, 0.5), (15, 1.0), (25, 2.0)]);
        // Nothing in range: no block.
        let none = write_block(
            dir.path(),
            1000,
            2000,
            vec![SeriesChunks {
                labels: Labels::from_pairs([("a", "1")]),
                chunks: vec![chunk(&[(10, 1.0)])],
            }],
            BlockCompaction::default(),
        )
        .expect("write");
        assert!(none.is_none());
        // Flip a byte in the chunk file: verify notices.
        let cf = dir.path().join(&meta.ulid).join("chunks").join("000001");
        let mut data = fs::read(&cf).expect("read");
        data[12] ^= 1;
        fs::write(&cf, &data).expect("write");
        let b = Block::open(&dir.path().join(&meta.ulid)).expect("open");
        assert!(b.verify().is_err());
    }
}
