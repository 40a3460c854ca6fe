//! The Gorilla XOR chunk codec, byte for byte Prometheus's `XORChunk`.
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
mod xor;

pub use xor::{XorAppender, XorIterator, chunk_num_samples};

/// Prometheus's chunk encoding byte for XOR chunks (`chunkenc.EncXOR`).
pub const ENCODING_XOR: u8 = 1;

/// Samples per chunk at which Prometheus's head cuts a new chunk.
pub const TARGET_SAMPLES_PER_CHUNK: usize = 120;

/// Decoding errors: a chunk that is shorter than its header says, or whose bits cannot be a
/// valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk shorter than its 2-byte header")]
    MissingHeader,
    #[error("chunk data ends after {read} of {total} samples")]
    Truncated { read: u16, total: u16 },
    #[error("chunk is full (65535 samples)")]
    Full,
    #[error("corrupt chunk: {0}")]
    Corrupt(&'static str),
}

pub type Result<T, E = ChunkError> = std::result::Result<T, E>;
