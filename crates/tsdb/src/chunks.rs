//! Chunk data shared between the head, blocks and queries, and block chunk segment files
//! (`docs/format/chunks.md`).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use m3query_chunkenc::{ENCODING_DENSE, ENCODING_XOR};
use memmap2::Mmap;

use crate::encoding::{Decbuf, put_uvarint};
use crate::error::IoContext;
use crate::{Error, Result};

pub(crate) const CHUNKS_MAGIC: u32 = 0x85BD_40DD;
/// Version 2 files may hold dense chunks; version 3 files also native histogram chunks
/// (encodings 2 and 3; a file is written as 3 only when it holds one, so builds that read
/// version 2 refuse it clearly instead of failing on a chunk). Versions 1 (XOR only) and 2
/// are still read.
pub(crate) const CHUNKS_VERSION: u8 = 3;
/// The version of files without histogram chunks.
const CHUNKS_VERSION_FLOATS: u8 = 2;
const CHUNKS_HEADER: usize = 8;
const MAX_SEGMENT_BYTES: u64 = 512 << 20;

/// Chunk bytes without copying: a closed head chunk (or a copy of an open one), or a slice
/// of a block's mmapped chunk file. Cloning is a reference count increment.
#[derive(Clone)]
pub(crate) enum ChunkBytes {
    Heap(Arc<[u8]>),
    Mapped {
        map: Arc<Mmap>,
        off: usize,
        len: usize,
    },
}

impl std::fmt::Debug for ChunkBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkBytes({} bytes)", self.as_slice().len())
    }
}

impl ChunkBytes {
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            ChunkBytes::Heap(b) => b,
            ChunkBytes::Mapped { map, off, len } => map.get(*off..*off + *len).unwrap_or(&[]),
        }
    }
}

/// A chunk and its time range (inclusive), as queries and compaction see it.
#[derive(Clone, Debug)]
pub(crate) struct QChunk {
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    /// `ENCODING_XOR` (the head's chunks, version 1 blocks) or `ENCODING_DENSE`.
    pub(crate) enc: u8,
    pub(crate) bytes: ChunkBytes,
    /// For a copy of the head's open chunk: where decoding starts, past samples older than
    /// the query's range (`bytes` then hold the header and the chunk from there on).
    pub(crate) seek: Option<m3query_chunkenc::XorSeek>,
}

impl QChunk {
    /// A decoder for the chunk.
    pub(crate) fn iter(&self) -> m3query_chunkenc::Result<m3query_chunkenc::ChunkIterator<'_>> {
        match self.seek {
            Some(at) => m3query_chunkenc::XorIterator::from_seek(self.bytes.as_slice(), at)
                .map(m3query_chunkenc::ChunkIterator::Xor),
            None => m3query_chunkenc::ChunkIterator::new(self.enc, self.bytes.as_slice()),
        }
    }
}

fn segment_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:06}"))
}

/// Writes chunk segment files; every file is fsynced by [`ChunkWriter::finish`].
pub(crate) struct ChunkWriter {
    dir: PathBuf,
    cur: Option<(u32, BufWriter<File>)>,
    off: u64,
    done: Vec<(u32, BufWriter<File>)>,
    scratch: Vec<u8>,
    pub(crate) bytes: u64,
    /// Segments holding histogram chunks (their version byte becomes 3 at `finish`).
    with_hists: Vec<u32>,
}

impl ChunkWriter {
    pub(crate) fn new(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).ctx("create chunks directory", dir)?;
        Ok(ChunkWriter {
            dir: dir.to_path_buf(),
            cur: None,
            off: 0,
            done: Vec::new(),
            scratch: Vec::new(),
            bytes: 0,
            with_hists: Vec::new(),
        })
    }

    fn next_segment(&mut self) -> Result<()> {
        let seq = match self.cur.take() {
            Some((seq, w)) => {
                self.done.push((seq, w));
                seq + 1
            }
            None => 1,
        };
        let path = segment_path(&self.dir, seq);
        let f = File::create(&path).ctx("create chunk file", &path)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut h = [0u8; CHUNKS_HEADER];
        h[..4].copy_from_slice(&CHUNKS_MAGIC.to_be_bytes());
        h[4] = CHUNKS_VERSION_FLOATS;
        w.write_all(&h).ctx("write", &path)?;
        self.off = CHUNKS_HEADER as u64;
        self.bytes += CHUNKS_HEADER as u64;
        self.cur = Some((seq, w));
        Ok(())
    }

    /// Writes one chunk of encoding `enc`; returns its reference.
    pub(crate) fn write(&mut self, enc: u8, data: &[u8]) -> Result<u64> {
        self.scratch.clear();
        put_uvarint(&mut self.scratch, data.len() as u64);
        self.scratch.push(enc);
        self.scratch.extend_from_slice(data);
        let crc = crc32c::crc32c(&self.scratch[self.scratch.len() - data.len() - 1..]);
        self.scratch.extend_from_slice(&crc.to_be_bytes());
        if self.cur.is_none() || self.off + self.scratch.len() as u64 > MAX_SEGMENT_BYTES {
            self.next_segment()?;
        }
        let Some((seq, w)) = self.cur.as_mut() else {
            return Err(Error::corruption("chunk writer", "no open segment"));
        };
        let r = (u64::from(*seq) << 32) | self.off;
        if crate::hist::is_hist_encoding(enc) && self.with_hists.last() != Some(seq) {
            self.with_hists.push(*seq);
        }
        w.write_all(&self.scratch)
            .ctx("write chunk file", &segment_path(&self.dir, *seq))?;
        self.off += self.scratch.len() as u64;
        self.bytes += self.scratch.len() as u64;
        Ok(r)
    }

    /// Flushes and fsyncs every file written.
    pub(crate) fn finish(mut self) -> Result<()> {
        if self.cur.is_none() {
            // A block without chunks still has one (empty) segment.
            self.next_segment()?;
        }
        let cur = self.cur.take();
        for (seq, w) in self.done.drain(..).chain(cur) {
            let path = segment_path(&self.dir, seq);
            let f = w
                .into_inner()
                .map_err(|e| Error::io(format!("flush {}", path.display()), e.into_error()))?;
            if self.with_hists.contains(&seq) {
                use std::os::unix::fs::FileExt;
                f.write_all_at(&[CHUNKS_VERSION], 4)
                    .ctx("write chunk file version", &path)?;
            }
            f.sync_all().ctx("fsync", &path)?;
        }
        crate::fileutil::sync_dir(&self.dir)
    }
}

/// A block's chunk files, mmapped.
pub(crate) struct ChunkReader {
    dir: PathBuf,
    /// Each segment and its file version.
    segs: Vec<(Arc<Mmap>, u8)>,
}

impl ChunkReader {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let mut names: Vec<(u32, PathBuf)> = fs::read_dir(dir)
            .ctx("read chunks directory", dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((n, e.path()))
            })
            .collect();
        names.sort();
        let mut segs = Vec::with_capacity(names.len());
        for (i, (n, path)) in names.iter().enumerate() {
            if *n as usize != i + 1 {
                return Err(Error::corruption(
                    dir.display().to_string(),
                    format!("chunk files not numbered 1..: found {n} at position {i}"),
                ));
            }
            let m = crate::fileutil::map_file(path)?;
            let mut d = Decbuf::new(&m);
            let magic = d.u32().unwrap_or(0);
            let version = d.u8().unwrap_or(0);
            if magic != CHUNKS_MAGIC || !(1..=CHUNKS_VERSION).contains(&version) {
                return Err(Error::corruption(
                    path.display().to_string(),
                    format!(
                        "bad chunk file magic or version {version} (this build reads 1..={CHUNKS_VERSION})"
                    ),
                ));
            }
            segs.push((Arc::new(m), version));
        }
        Ok(ChunkReader {
            dir: dir.to_path_buf(),
            segs,
        })
    }

    fn corrupt(&self, r: u64, why: &str) -> Error {
        Error::corruption(
            self.dir.display().to_string(),
            format!("chunk ref {r:#x}: {why}"),
        )
    }

    /// The chunk at `r` (encoding, bytes), and the offset just past its CRC.
    fn locate(&self, r: u64) -> Result<(u8, ChunkBytes, usize)> {
        let seq = (r >> 32) as usize;
        let off = (r & 0xffff_ffff) as usize;
        let (map, version) = seq
            .checked_sub(1)
            .and_then(|i| self.segs.get(i))
            .ok_or_else(|| self.corrupt(r, "no such chunk file"))?;
        let mut d = Decbuf::new(
            map.get(off..)
                .ok_or_else(|| self.corrupt(r, "offset past end"))?,
        );
        let len = d.uvarint_usize().map_err(|e| self.corrupt(r, e.0))?;
        let enc = d.u8().map_err(|e| self.corrupt(r, e.0))?;
        let known = match enc {
            ENCODING_XOR => true,
            ENCODING_DENSE => *version >= 2,
            e if crate::hist::is_hist_encoding(e) => *version >= 3,
            _ => false,
        };
        if !known {
            return Err(self.corrupt(r, "unknown chunk encoding"));
        }
        let start = off + d.position();
        let end = start
            .checked_add(len)
            .filter(|&e| e + 4 <= map.len())
            .ok_or_else(|| self.corrupt(r, "chunk past end of file"))?;
        Ok((
            enc,
            ChunkBytes::Mapped {
                map: map.clone(),
                off: start,
                len,
            },
            end + 4,
        ))
    }

    /// The chunk at `r`: its encoding and bytes, checked against its CRC, so damaged bytes
    /// are an error instead of wrong values (one CRC32C per chunk read: hardware-assisted,
    /// a small fraction of decoding it).
    pub(crate) fn chunk(&self, r: u64) -> Result<(u8, ChunkBytes)> {
        let (enc, c, end) = self.locate(r)?;
        if let ChunkBytes::Mapped { map, off, len } = &c {
            // The CRC covers the encoding byte and the data.
            let covered = map.get(off - 1..off + len);
            let stored = map.get(end - 4..end);
            let ok = match (covered, stored) {
                (Some(c), Some(s)) => crc32c::crc32c(c).to_be_bytes() == s,
                _ => false,
            };
            if !ok {
                return Err(self.corrupt(r, "checksum mismatch"));
            }
        }
        Ok((enc, c))
    }

    /// Checks the CRC of the chunk at `r`.
    pub(crate) fn verify_chunk(&self, r: u64) -> Result<()> {
        self.chunk(r).map(|_| ())
    }
}

/// Decodes chunks (any order, possibly overlapping) into time-ordered samples; at equal
/// timestamps the sample from the earliest chunk in `chunks` wins.
pub(crate) fn merge_chunks(
    chunks: &[QChunk],
    mint: i64,
    maxt: i64,
) -> Result<Vec<m3query_model::Sample>> {
    let mut all: Vec<(i64, usize, f64)> = Vec::new();
    let mut buf = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        buf.clear();
        c.iter()?.append_range(mint, maxt, &mut buf)?;
        all.extend(buf.iter().map(|s| (s.t, i, s.v)));
    }
    all.sort_by_key(|&(t, i, _)| (t, i));
    all.dedup_by_key(|x| x.0);
    Ok(all
        .into_iter()
        .map(|(t, _, v)| m3query_model::Sample { t, v })
        .collect())
}
