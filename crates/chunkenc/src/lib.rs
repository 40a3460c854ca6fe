//! Chunk codecs: the Gorilla XOR chunk, byte for byte Prometheus's `XORChunk` (the head, the
//! WAL and remote read use it), and our dense encoding for blocks ([`DenseEncoder`], specified
//! in `crates/tsdb/docs/format/chunks.md`).
//!
//! A chunk holds up to 65,535 float samples of one series: timestamps as delta-of-delta,
//! values XOR'd with their predecessor (Pelkonen et al., "Gorilla", VLDB 2015, with
//! Prometheus's millisecond bucket widths). The layout is exactly Prometheus's
//! (`tsdb/chunkenc/xor.go`), so chunks written here can be streamed to Prometheus
//! remote-read clients (`STREAMED_XOR_CHUNKS`) and chunks they send decode here:
//!
//! ```text
//! ┌──────────────────────┬──────────────────────────────────────────────┐
//! │ num samples: u16 BE  │ bit stream (MSB first, last byte zero-padded) │
//! └──────────────────────┴──────────────────────────────────────────────┘
//! sample 0: t as signed varint (zigzag), v as 64 raw bits
//! sample 1: t - t0 as unsigned varint, v XOR-encoded
//! sample n: delta-of-delta in '0' | '10'+14b | '110'+17b | '1110'+20b | '1111'+64b,
//!           v XOR-encoded: '0' same value | '10' + meaningful bits in the previous window
//!           | '11' + 5b leading zeros + 6b meaningful bit count (0 means 64) + the bits
//! ```
//!
//! Native histogram chunks are Prometheus's too: [`HistogramAppender`] /
//! [`HistogramIterator`] (encoding 2, integer counts) and [`FloatHistogramAppender`] /
//! [`FloatHistogramIterator`] (encoding 3), with a 3-byte header (sample count, counter reset
//! header) and Prometheus's rules for when a sample cuts a new chunk or recodes the open one.
//!
//! The crate is pure (no I/O). It is its own crate because both the embedded TSDB and the
//! remote-read protocol need it, and the latter must not depend on the former.
//!
//! ```
//! use m3query_chunkenc::{XorAppender, XorIterator};
//! let mut app = XorAppender::new();
//! app.append(1_000, 1.0);
//! app.append(16_000, 2.5);
//! let mut it = XorIterator::new(app.bytes()).expect("header");
//! assert_eq!(it.next_sample().expect("valid"), Some((1_000, 1.0)));
//! assert_eq!(it.next_sample().expect("valid"), Some((16_000, 2.5)));
//! assert_eq!(it.next_sample().expect("valid"), None);
//! ```

mod bstream;
mod dense;
mod float_histogram;
mod histogram;
#[cfg(test)]
mod histogram_tests;
mod varbit;
mod xor;

pub use dense::{DenseEncoder, DenseIterator, dense_num_samples, encode_dense};
pub use float_histogram::{FloatHistogramAppender, FloatHistogramIterator};
pub use histogram::{
    CounterResetHeader, HistogramAppend, HistogramAppender, HistogramIterator,
    histogram_chunk_num_samples,
};
pub use xor::{XorAppender, XorIterator, XorSeek, chunk_num_samples};

/// Prometheus's chunk encoding byte for XOR chunks (`chunkenc.EncXOR`).
pub const ENCODING_XOR: u8 = 1;

/// Prometheus's chunk encoding byte for integer histogram chunks (`chunkenc.EncHistogram`).
pub const ENCODING_HISTOGRAM: u8 = 2;

/// Prometheus's chunk encoding byte for float histogram chunks
/// (`chunkenc.EncFloatHistogram`).
pub const ENCODING_FLOAT_HISTOGRAM: u8 = 3;

/// Our dense block chunk encoding (`crates/tsdb/docs/format/chunks.md`); a value Prometheus
/// does not use.
pub const ENCODING_DENSE: u8 = 16;

/// Samples per dense chunk that blocks are written with: 2 h at a 15 s interval.
pub const DENSE_SAMPLES_PER_CHUNK: usize = 480;

/// An iterator over a chunk of either encoding.
#[derive(Clone, Debug)]
pub enum ChunkIterator<'a> {
    /// Prometheus's XOR (Gorilla) encoding.
    Xor(XorIterator<'a>),
    /// Our dense encoding for blocks of regular series.
    Dense(DenseIterator<'a>),
}

impl<'a> ChunkIterator<'a> {
    /// An iterator over `bytes` in `encoding` ([`ENCODING_XOR`] or [`ENCODING_DENSE`]).
    pub fn new(encoding: u8, bytes: &'a [u8]) -> Result<Self> {
        match encoding {
            ENCODING_XOR => XorIterator::new(bytes).map(ChunkIterator::Xor),
            ENCODING_DENSE => DenseIterator::new(bytes).map(ChunkIterator::Dense),
            _ => Err(ChunkError::Corrupt("unknown chunk encoding")),
        }
    }

    /// The sample count the chunk's header declares.
    pub fn num_samples(&self) -> u16 {
        match self {
            ChunkIterator::Xor(it) => it.num_samples(),
            ChunkIterator::Dense(it) => it.num_samples(),
        }
    }

    /// The next sample, `Ok(None)` after the last.
    #[inline]
    pub fn next_sample(&mut self) -> Result<Option<(i64, f64)>> {
        match self {
            ChunkIterator::Xor(it) => it.next_sample(),
            ChunkIterator::Dense(it) => it.next_sample(),
        }
    }

    /// The next sample with `t >= mint`, consuming the ones before it; `Ok(None)` when no
    /// remaining sample is. A dense chunk steps over the earlier ones without building them
    /// ([`DenseIterator::skip_before`]); an XOR chunk has to decode them.
    #[inline]
    pub fn next_from(&mut self, mint: i64) -> Result<Option<(i64, f64)>> {
        match self {
            ChunkIterator::Xor(it) => {
                while let Some((t, v)) = it.next_sample()? {
                    if t >= mint {
                        return Ok(Some((t, v)));
                    }
                }
                Ok(None)
            }
            ChunkIterator::Dense(it) => {
                it.skip_before(mint)?;
                it.next_sample()
            }
        }
    }

    /// Appends the remaining samples with `mint <= t <= maxt` to `out`. Returns `true` when
    /// it stopped at (and consumed) a sample after `maxt`, `false` at the end of the chunk.
    #[inline]
    pub fn append_range(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<m3query_model::Sample>,
    ) -> Result<bool> {
        match self {
            ChunkIterator::Xor(it) => it.append_range(mint, maxt, out),
            ChunkIterator::Dense(it) => it.append_range(mint, maxt, out),
        }
    }
}

/// The sample count of a chunk of either encoding, if its header is readable.
pub fn num_samples(encoding: u8, bytes: &[u8]) -> Option<u16> {
    match encoding {
        ENCODING_XOR => chunk_num_samples(bytes),
        ENCODING_DENSE => dense_num_samples(bytes),
        _ => None,
    }
}

/// Samples per chunk at which Prometheus's head cuts a new chunk.
pub const TARGET_SAMPLES_PER_CHUNK: usize = 120;

/// Decoding errors: a chunk that is shorter than its header says, or whose bits cannot be a
/// valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Fewer bytes than the header needs.
    #[error("chunk shorter than its 2-byte header")]
    MissingHeader,
    #[error("chunk data ends after {read} of {total} samples")]
    /// The data ends before every sample the header counts.
    Truncated {
        /// Samples decoded before the end.
        read: u16,
        /// Samples the header counts.
        total: u16,
    },
    /// No more samples fit: the count is a `u16`.
    #[error("chunk is full (65535 samples)")]
    Full,
    /// Bits that cannot be a valid encoding; the text says which part.
    #[error("corrupt chunk: {0}")]
    Corrupt(&'static str),
}

/// A result with [`ChunkError`].
pub type Result<T, E = ChunkError> = std::result::Result<T, E>;
