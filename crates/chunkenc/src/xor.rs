//! XOR chunk appender and iterator.

use m3query_model::Sample;

use crate::bstream::{BitReader, BitWriter};
use crate::{ChunkError, Result};

/// The sample count from a chunk's 2-byte big-endian header, if it has one.
pub fn chunk_num_samples(bytes: &[u8]) -> Option<u16> {
    match bytes {
        [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// Builds one XOR chunk. [`XorAppender::bytes`] is always a complete, decodable chunk, so
/// a reader may copy it between appends.
#[derive(Clone, Debug)]
pub struct XorAppender {
    w: BitWriter,
    num: u16,
    t: i64,
    v: u64,
    t_delta: u64,
    window: XorWindow,
    /// Where a reader may start instead of at the first sample (see [`XorSeek`]).
    seeks: [XorSeek; SEEKS],
}

/// Samples between two seek points of an appender.
const SEEK_EVERY: u16 = 30;
/// Seek points an appender keeps: a 120-sample chunk gets one every 30 samples.
const SEEKS: usize = 3;

/// A point to start decoding an XOR chunk mid-way: the decoder's state after sample
/// `num - 1`, and where sample `num`'s bits start. An appender records one every 30 samples,
/// so a query that wants the newest samples of the head's open chunk decodes at most 30
/// samples before them instead of the whole chunk. Samples before the point are not seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XorSeek {
    /// 0: unset. Otherwise at least 2 (samples 0 and 1 are encoded apart).
    num: u16,
    /// Bit offset of sample `num` in the stream after the 2-byte header.
    bit: u32,
    t: i64,
    v: u64,
    t_delta: u64,
    leading: u8,
    trailing: u8,
}

impl XorSeek {
    /// The time of the last sample before the point: a reader that wants samples after it
    /// loses nothing by starting here.
    pub fn prev_t(&self) -> i64 {
        self.t
    }

    /// The byte the point's bits start in (offset in the chunk, header included): a copy of
    /// the chunk from there on, with [`XorSeek::rebase`], still decodes from the point.
    pub fn start_byte(&self) -> usize {
        2 + (self.bit / 8) as usize
    }

    /// The point for a copy of the chunk's bytes from [`XorSeek::start_byte`] on, whose first
    /// two bytes hold the chunk's header.
    pub fn rebase(self) -> Self {
        XorSeek {
            bit: self.bit % 8,
            ..self
        }
    }
}

impl Default for XorAppender {
    fn default() -> Self {
        Self::new()
    }
}

/// Capacity an appender starts with and grows by.
const GROW_BYTES: usize = 96;

/// `-(2^(n-1) - 1) <= x <= 2^(n-1)`: Prometheus's (asymmetric) range for an n-bit dod.
#[inline]
fn bit_range(x: i64, n: u32) -> bool {
    let half = 1i64 << (n - 1);
    -(half - 1) <= x && x <= half
}

fn put_uvarint(buf: &mut [u8; 10], mut x: u64) -> usize {
    let mut i = 0;
    while x >= 0x80 {
        buf[i] = (x as u8) | 0x80;
        x >>= 7;
        i += 1;
    }
    buf[i] = x as u8;
    i + 1
}

/// The value half of the XOR encoding: each value's XOR with the previous one, written as
/// '0' (same) | '10' + bits inside the previous window | '11' + 5-bit leading zeros, 6-bit
/// length, bits. Shared by the XOR chunk and the dense block encoding's XOR value streams.
#[derive(Clone, Copy, Debug)]
pub(crate) struct XorWindow {
    /// 0xff until the first window is chosen, as Prometheus's appender.
    leading: u8,
    trailing: u8,
}

impl Default for XorWindow {
    fn default() -> Self {
        XorWindow {
            leading: 0xff,
            trailing: 0,
        }
    }
}

impl XorWindow {
    /// A window as a decoder left it (Prometheus's iterator starts at 0/0, not 0xff, so an
    /// appender reopened on a chunk continues with that window).
    pub(crate) fn from_parts(leading: u8, trailing: u8) -> Self {
        XorWindow { leading, trailing }
    }

    /// The bits [`XorWindow::write`] would write for `delta`, moving the window as it
    /// would: sizes a value stream without building it.
    #[inline]
    pub(crate) fn bits(&mut self, delta: u64) -> u32 {
        if delta == 0 {
            return 1;
        }
        let leading = (delta.leading_zeros() as u8).min(31);
        let trailing = delta.trailing_zeros() as u8;
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            2 + 64 - u32::from(self.leading) - u32::from(self.trailing)
        } else {
            self.leading = leading;
            self.trailing = trailing;
            2 + 5 + 6 + 64 - u32::from(leading) - u32::from(trailing)
        }
    }

    /// Writes `delta`, the XOR of a value with the one before it.
    #[inline]
    pub(crate) fn write(&mut self, w: &mut BitWriter, delta: u64) {
        if delta == 0 {
            w.write_bit(false);
            return;
        }
        w.write_bit(true);
        // Clamped to 31: the count has 5 bits.
        let leading = (delta.leading_zeros() as u8).min(31);
        let trailing = delta.trailing_zeros() as u8;
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            w.write_bit(false);
            let sig = 64 - u32::from(self.leading) - u32::from(self.trailing);
            w.write_bits(delta >> self.trailing, sig);
        } else {
            self.leading = leading;
            self.trailing = trailing;
            w.write_bit(true);
            w.write_bits(u64::from(leading), 5);
            let sig = 64 - u32::from(leading) - u32::from(trailing);
            // 64 significant bits are written as 0 (6 bits cannot hold 64).
            w.write_bits(u64::from(sig & 63), 6);
            w.write_bits(delta >> trailing, sig);
        }
    }
}

impl XorAppender {
    /// An empty chunk (2 header bytes).
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(GROW_BYTES);
        buf.extend_from_slice(&[0, 0]);
        XorAppender {
            w: BitWriter { buf, free: 0 },
            num: 0,
            t: 0,
            v: 0,
            t_delta: 0,
            window: XorWindow::default(),
            seeks: [XorSeek::default(); SEEKS],
        }
    }

    /// An appender that continues the chunk `bytes`, as the appender that wrote it would:
    /// the same bytes, sample count, last sample, window and seek points, so appending to
    /// it gives the chunk that appending to the original would have. `visit` sees every
    /// sample decoded on the way. A chunk restored from a checkpoint is resumed instead of
    /// re-encoded sample by sample. Errors on bytes that do not decode to their header's
    /// sample count with nothing after the last sample.
    pub fn resume(bytes: &[u8], mut visit: impl FnMut(i64, f64)) -> Result<Self> {
        let mut it = XorIterator::new(bytes)?;
        let mut seeks = [XorSeek::default(); SEEKS];
        let consumed = |st: &State<'_>| st.br.consumed_bits();
        while it.s.read < it.s.total {
            let num = it.s.read;
            if num >= 2
                && num.is_multiple_of(SEEK_EVERY)
                && let Some(slot) = seeks.get_mut(usize::from(num / SEEK_EVERY) - 1)
            {
                *slot = XorSeek {
                    num,
                    bit: u32::try_from(consumed(&it.s))
                        .map_err(|_| ChunkError::Corrupt("chunk too long to resume"))?,
                    t: it.s.t,
                    v: it.s.v,
                    t_delta: it.s.t_delta,
                    leading: it.s.leading as u8,
                    trailing: it.s.trailing as u8,
                };
            }
            if let Some((t, v)) = it.next_sample()? {
                visit(t, v);
            }
        }
        let stream_bits = (bytes.len() - 2) * 8;
        let used = consumed(&it.s);
        if used > stream_bits || stream_bits - used >= 8 {
            return Err(ChunkError::Corrupt("bytes after a chunk's last sample"));
        }
        let free = (stream_bits - used) as u8;
        let mut buf = Vec::with_capacity(bytes.len() + GROW_BYTES);
        buf.extend_from_slice(bytes);
        if let Some(last) = buf.last_mut().filter(|_| free > 0) {
            // The writer ORs bits into the last byte: its unused bits must be clear.
            *last &= !((1u8 << free) - 1);
        }
        let s = it.s;
        Ok(XorAppender {
            w: BitWriter { buf, free },
            num: s.total,
            t: s.t,
            v: s.v,
            t_delta: s.t_delta,
            // A decoder starts at 0/0 where an appender starts unset (0xff), and a 0/0
            // window (64 significant bits) cannot be told from no window. Unset is right
            // either way: the next changed value then opens a window of its own.
            window: if s.leading == 0 && s.trailing == 0 {
                XorWindow::default()
            } else {
                XorWindow::from_parts(s.leading as u8, s.trailing as u8)
            },
            seeks,
        })
    }

    /// The appender's seek points, oldest first.
    pub fn seeks(&self) -> impl DoubleEndedIterator<Item = &XorSeek> {
        self.seeks.iter().filter(|s| s.num != 0)
    }

    /// The latest seek point with every sample from it on after `t` (to read samples
    /// `>= t + 1`), if there is one.
    pub fn seek_before(&self, t: i64) -> Option<XorSeek> {
        self.seeks().rev().find(|s| s.prev_t() < t).copied()
    }

    /// Appends a sample. Timestamps are normally increasing; any sequence round-trips (the
    /// arithmetic wraps exactly as Prometheus's does).
    pub fn append(&mut self, t: i64, v: f64) -> Result<()> {
        if self.num == u16::MAX {
            return Err(ChunkError::Full);
        }
        // A sample takes at most 19 bytes (10-byte varint + 8-byte value + a partial byte).
        // Grow in steps of GROW_BYTES rather than doubling: the head holds an open chunk for
        // every series, and doubling leaves up to half of each unused.
        if self.w.buf.capacity() - self.w.buf.len() < 19 {
            self.w.buf.reserve_exact(GROW_BYTES);
        }
        let vb = v.to_bits();
        let mut t_delta = 0u64;
        let mut vb_buf = [0u8; 10];
        match self.num {
            0 => {
                let zz = ((t << 1) ^ (t >> 63)) as u64;
                let n = put_uvarint(&mut vb_buf, zz);
                self.w.write_bytes(&vb_buf[..n]);
                self.w.write_bits(vb, 64);
            }
            1 => {
                t_delta = t.wrapping_sub(self.t) as u64;
                let n = put_uvarint(&mut vb_buf, t_delta);
                self.w.write_bytes(&vb_buf[..n]);
                self.write_value(vb);
            }
            _ => {
                if self.num.is_multiple_of(SEEK_EVERY) {
                    self.record_seek();
                }
                t_delta = t.wrapping_sub(self.t) as u64;
                let dod = t_delta.wrapping_sub(self.t_delta) as i64;
                if dod == 0 {
                    self.w.write_bit(false);
                } else if bit_range(dod, 14) {
                    self.w.write_bits(0b10, 2);
                    self.w.write_bits(dod as u64, 14);
                } else if bit_range(dod, 17) {
                    self.w.write_bits(0b110, 3);
                    self.w.write_bits(dod as u64, 17);
                } else if bit_range(dod, 20) {
                    self.w.write_bits(0b1110, 4);
                    self.w.write_bits(dod as u64, 20);
                } else {
                    self.w.write_bits(0b1111, 4);
                    self.w.write_bits(dod as u64, 64);
                }
                self.write_value(vb);
            }
        }
        self.t = t;
        self.v = vb;
        self.t_delta = t_delta;
        self.num += 1;
        let [a, b] = self.num.to_be_bytes();
        self.w.buf[0] = a;
        self.w.buf[1] = b;
        Ok(())
    }

    /// Records where the next sample starts, with the state a decoder has there.
    #[cold]
    fn record_seek(&mut self) {
        let i = usize::from(self.num / SEEK_EVERY) - 1;
        if let Some(slot) = self.seeks.get_mut(i) {
            let bits = self.w.buf.len() * 8 - usize::from(self.w.free) - 16;
            *slot = XorSeek {
                num: self.num,
                bit: bits as u32,
                t: self.t,
                v: self.v,
                t_delta: self.t_delta,
                // A decoder starts with a 0/0 window; the appender's unset one (0xff) can
                // only be followed by a new window, so the two agree on every later sample.
                leading: if self.window.leading == 0xff {
                    0
                } else {
                    self.window.leading
                },
                trailing: self.window.trailing,
            };
        }
    }

    #[inline]
    fn write_value(&mut self, vb: u64) {
        self.window.write(&mut self.w, vb ^ self.v);
    }

    /// Samples appended so far.
    pub fn num_samples(&self) -> usize {
        usize::from(self.num)
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.num == 0
    }

    /// The chunk: header and bit stream.
    pub fn bytes(&self) -> &[u8] {
        &self.w.buf
    }

    /// Timestamp of the last appended sample (meaningless while empty).
    pub fn last_t(&self) -> i64 {
        self.t
    }

    /// Bit pattern of the last appended value.
    pub fn last_v_bits(&self) -> u64 {
        self.v
    }

    /// Consumes the appender, returning the chunk bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.w.buf
    }

    /// Bytes held, including unused capacity.
    pub fn allocated_bytes(&self) -> usize {
        self.w.buf.capacity()
    }
}

/// Decoder state, kept in a `Copy` struct so the hot loop can work on a local copy the
/// compiler keeps in registers.
#[derive(Clone, Copy, Debug)]
struct State<'a> {
    br: BitReader<'a>,
    total: u16,
    read: u16,
    t: i64,
    v: u64,
    t_delta: u64,
    leading: u32,
    trailing: u32,
}

/// Ran out of bits, or met an impossible value window.
enum Bad {
    Truncated,
    Window,
}

impl State<'_> {
    /// Decodes sample 2.. (delta-of-delta and XOR value).
    #[inline(always)]
    fn decode(&mut self) -> Result<(), Bad> {
        let br = &mut self.br;
        br.refill();
        // Delta-of-delta: '0' | '10' 14b | '110' 17b | '1110' 20b | '1111' 64b.
        let ones = (!br.buf).leading_zeros().min(4);
        let used = if ones < 4 { ones + 1 } else { 4 };
        if br.valid < used {
            return Err(Bad::Truncated);
        }
        br.take(used);
        let dod = match ones {
            0 => 0,
            4 => br.read_bits_wide(64).ok_or(Bad::Truncated)? as i64,
            _ => {
                let sz = 11 + 3 * ones; // 14, 17, 20
                if br.valid < sz {
                    return Err(Bad::Truncated);
                }
                let bits = br.take(sz) as i64;
                // Values above 2^(sz-1) are negative (see `bit_range`).
                if bits > (1 << (sz - 1)) {
                    bits - (1 << sz)
                } else {
                    bits
                }
            }
        };
        self.t_delta = self.t_delta.wrapping_add(dod as u64);
        self.t = self.t.wrapping_add(self.t_delta as i64);
        // Value: '0' same | '10' previous window | '11' 5b leading 6b count, then bits.
        if br.valid < 13 {
            br.refill();
        }
        if br.valid == 0 {
            return Err(Bad::Truncated);
        }
        if br.buf >> 63 == 0 {
            br.take(1);
            return Ok(());
        }
        if br.valid < 2 {
            return Err(Bad::Truncated);
        }
        if br.take(2) == 0b11 {
            if br.valid < 11 {
                return Err(Bad::Truncated);
            }
            let lead = br.take(5) as u32;
            let mut sig = br.take(6) as u32;
            if sig == 0 {
                sig = 64;
            }
            if lead + sig > 64 {
                return Err(Bad::Window);
            }
            self.leading = lead;
            self.trailing = 64 - lead - sig;
        }
        let sig = 64 - self.leading - self.trailing;
        let bits = if sig <= 56 {
            if br.valid < sig {
                br.refill();
                if br.valid < sig {
                    return Err(Bad::Truncated);
                }
            }
            br.take(sig)
        } else {
            br.read_bits_wide(sig).ok_or(Bad::Truncated)?
        };
        self.v ^= bits << self.trailing;
        Ok(())
    }
}

/// Decodes an XOR chunk. Errors on bytes that cannot be a chunk; never panics.
#[derive(Clone, Debug)]
pub struct XorIterator<'a> {
    s: State<'a>,
}

impl<'a> XorIterator<'a> {
    /// An iterator over a chunk's samples (`bytes` includes the 2-byte header).
    pub fn new(bytes: &'a [u8]) -> Result<Self> {
        let total = chunk_num_samples(bytes).ok_or(ChunkError::MissingHeader)?;
        Ok(XorIterator {
            s: State {
                br: BitReader::new(&bytes[2..]),
                total,
                read: 0,
                t: 0,
                v: 0,
                t_delta: 0,
                leading: 0,
                trailing: 0,
            },
        })
    }

    /// An iterator from seek point `at` of the chunk `bytes` (the appender's bytes, or a
    /// copy from [`XorSeek::start_byte`] with the point rebased): samples before the point
    /// are skipped unread.
    pub fn from_seek(bytes: &'a [u8], at: XorSeek) -> Result<Self> {
        let total = chunk_num_samples(bytes).ok_or(ChunkError::MissingHeader)?;
        if at.num < 2 || at.num > total {
            return Err(ChunkError::Corrupt("seek point outside the chunk"));
        }
        let skip = (at.bit / 8) as usize;
        let Some(rest) = bytes.get(2 + skip..) else {
            return Err(ChunkError::Corrupt("seek point past the chunk's end"));
        };
        let mut br = BitReader::new(rest);
        if !at.bit.is_multiple_of(8) && br.read_bits(at.bit % 8).is_none() {
            return Err(ChunkError::Corrupt("seek point past the chunk's end"));
        }
        Ok(XorIterator {
            s: State {
                br,
                total,
                read: at.num,
                t: at.t,
                v: at.v,
                t_delta: at.t_delta,
                leading: u32::from(at.leading),
                trailing: u32::from(at.trailing),
            },
        })
    }

    /// Samples in the chunk, per its header.
    pub fn num_samples(&self) -> u16 {
        self.s.total
    }

    fn err(&self, b: Bad) -> ChunkError {
        match b {
            Bad::Truncated => ChunkError::Truncated {
                read: self.s.read,
                total: self.s.total,
            },
            Bad::Window => ChunkError::Corrupt("value window exceeds 64 bits"),
        }
    }

    fn read_uvarint(&mut self) -> Result<u64> {
        let mut x = 0u64;
        let mut shift = 0u32;
        for i in 0..10 {
            let b = self
                .s
                .br
                .read_byte()
                .ok_or_else(|| self.err(Bad::Truncated))?;
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(ChunkError::Corrupt("varint overflows 64 bits"));
                }
                return Ok(x | (u64::from(b) << shift));
            }
            x |= u64::from(b & 0x7f) << shift;
            shift += 7;
        }
        Err(ChunkError::Corrupt("varint overflows 64 bits"))
    }

    /// The next sample, `Ok(None)` after the last.
    #[inline]
    pub fn next_sample(&mut self) -> Result<Option<(i64, f64)>> {
        if self.s.read == self.s.total {
            return Ok(None);
        }
        if self.s.read < 2 {
            return self.next_slow().map(Some);
        }
        if let Err(b) = self.s.decode() {
            return Err(self.err(b));
        }
        self.s.read += 1;
        Ok(Some((self.s.t, f64::from_bits(self.s.v))))
    }

    /// Samples 0 and 1 (varint timestamps, raw first value).
    #[cold]
    fn next_slow(&mut self) -> Result<(i64, f64)> {
        if self.s.read == 0 {
            let zz = self.read_uvarint()?;
            self.s.t = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
            self.s.v = self
                .s
                .br
                .read_bits_wide(64)
                .ok_or_else(|| self.err(Bad::Truncated))?;
        } else {
            self.s.t_delta = self.read_uvarint()?;
            self.s.t = self.s.t.wrapping_add(self.s.t_delta as i64);
            // The value is encoded exactly as for later samples, after no dod.
            let mut st = self.s;
            st.br.refill();
            let r = decode_value_only(&mut st);
            if let Err(b) = r {
                return Err(self.err(b));
            }
            self.s = st;
        }
        self.s.read += 1;
        Ok((self.s.t, f64::from_bits(self.s.v)))
    }

    /// Appends the remaining samples with `mint <= t <= maxt` to `out`. Returns `true` when
    /// it stopped at (and consumed) a sample after `maxt`, `false` at the end of the chunk.
    #[inline]
    pub fn append_range(&mut self, mint: i64, maxt: i64, out: &mut Vec<Sample>) -> Result<bool> {
        out.reserve(usize::from(self.s.total - self.s.read));
        while self.s.read < 2 {
            match self.next_sample()? {
                None => return Ok(false),
                Some((t, _)) if t > maxt => return Ok(true),
                Some((t, v)) => {
                    if t >= mint {
                        out.push(Sample { t, v });
                    }
                }
            }
        }
        let mut st = self.s;
        while st.read < st.total {
            if let Err(b) = st.decode() {
                self.s = st;
                return Err(self.err(b));
            }
            st.read += 1;
            if st.t > maxt {
                self.s = st;
                return Ok(true);
            }
            if st.t >= mint {
                out.push(Sample {
                    t: st.t,
                    v: f64::from_bits(st.v),
                });
            }
        }
        self.s = st;
        Ok(false)
    }
}

/// The value part of [`State::decode`], for sample 1.
fn decode_value_only(st: &mut State<'_>) -> Result<(), Bad> {
    // Reuse the full decoder by pretending the dod was '0': decode from a state whose next
    // bit is the value's first bit. Simplest is to inline the value logic here.
    let br = &mut st.br;
    if br.valid == 0 {
        return Err(Bad::Truncated);
    }
    if br.take(1) == 0 {
        return Ok(());
    }
    if br.valid == 0 {
        return Err(Bad::Truncated);
    }
    if br.take(1) == 1 {
        let lead = br.read_bits(5).ok_or(Bad::Truncated)? as u32;
        let mut sig = br.read_bits(6).ok_or(Bad::Truncated)? as u32;
        if sig == 0 {
            sig = 64;
        }
        if lead + sig > 64 {
            return Err(Bad::Window);
        }
        st.leading = lead;
        st.trailing = 64 - lead - sig;
    }
    let sig = 64 - st.leading - st.trailing;
    let bits = st.br.read_bits_wide(sig).ok_or(Bad::Truncated)?;
    st.v ^= bits << st.trailing;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3query_model::STALE_NAN;
    use proptest::prelude::*;

    fn seek_samples() -> impl Strategy<Value = Vec<(i64, f64)>> {
        (
            any::<i64>(),
            prop::collection::vec((-20_000i64..20_000, any::<bool>(), any::<f64>()), 0..140),
        )
            .prop_map(|(t0, steps)| {
                let mut t = t0 / 4;
                let mut v = 0.0;
                steps
                    .into_iter()
                    .map(|(dt, same, x)| {
                        t = t.wrapping_add(15_000 + dt);
                        if !same {
                            v = x;
                        }
                        (t, v)
                    })
                    .collect()
            })
    }

    fn same_state(a: &XorAppender, b: &XorAppender) {
        assert_eq!(a.bytes(), b.bytes());
        assert_eq!(a.w.free, b.w.free);
        assert_eq!((a.num, a.t, a.v, a.t_delta), (b.num, b.t, b.v, b.t_delta));
        assert_eq!(a.seeks, b.seeks);
    }

    proptest! {
        /// A resumed appender is the appender that wrote the chunk: same state, and the
        /// same bytes after more appends.
        #[test]
        fn resume_continues_the_chunk(samples in seek_samples(), split in 0usize..140) {
            let split = split.min(samples.len());
            let mut a = XorAppender::new();
            for &(t, v) in &samples[..split] {
                a.append(t, v).expect("append");
            }
            let mut seen = Vec::new();
            let mut b = XorAppender::resume(a.bytes(), |t, v| seen.push((t, v.to_bits())))
                .expect("resume");
            let want: Vec<(i64, u64)> =
                samples[..split].iter().map(|&(t, v)| (t, v.to_bits())).collect();
            prop_assert_eq!(seen, want);
            same_state(&a, &b);
            // A real 0/0 window (64 significant bits) resumes as unset: then only the bits
            // after the split may differ, never the samples.
            let zero_window = a.window.leading == 0 && a.window.trailing == 0;
            for &(t, v) in &samples[split..] {
                a.append(t, v).expect("append");
                b.append(t, v).expect("append");
            }
            let decoded = |x: &XorAppender| {
                let mut it = XorIterator::new(x.bytes()).expect("iter");
                let mut out = Vec::new();
                while let Some((t, v)) = it.next_sample().expect("decode") {
                    out.push((t, v.to_bits()));
                }
                out
            };
            prop_assert_eq!(decoded(&a), decoded(&b));
            if !zero_window {
                same_state(&a, &b);
            }
        }
    }

    #[test]
    fn resume_refuses_what_is_not_a_whole_chunk() {
        let mut a = XorAppender::new();
        for i in 0..40 {
            a.append(i * 15_000, (i % 7) as f64 * 0.1).expect("append");
        }
        let mut longer = a.bytes().to_vec();
        longer.push(0);
        assert!(XorAppender::resume(&longer, |_, _| {}).is_err());
        let short = &a.bytes()[..a.bytes().len() - 3];
        assert!(XorAppender::resume(short, |_, _| {}).is_err());
        assert!(XorAppender::resume(&[0], |_, _| {}).is_err());
        let empty = XorAppender::resume(&[0, 0], |_, _| {}).expect("empty chunk");
        assert!(empty.is_empty());
    }

    proptest! {
        /// From every seek point, on the chunk or on a copy from its start byte, a reader
        /// gets exactly the samples from the point's on.
        #[test]
        fn seek_points_resume_decoding(samples in seek_samples()) {
            let mut a = XorAppender::new();
            for &(t, v) in &samples {
                a.append(t, v).expect("not full");
            }
            let want = |from: usize| -> Vec<(i64, u64)> {
                samples[from..].iter().map(|&(t, v)| (t, v.to_bits())).collect()
            };
            let read = |mut it: XorIterator<'_>| {
                let mut got = Vec::new();
                while let Some((t, v)) = it.next_sample().expect("valid") {
                    got.push((t, v.to_bits()));
                }
                got
            };
            let points: Vec<XorSeek> = a.seeks().copied().collect();
            prop_assert_eq!(points.len(), (samples.len().saturating_sub(1) / 30).min(SEEKS));
            for p in points {
                let from = usize::from(p.num);
                prop_assert_eq!(p.prev_t(), samples[from - 1].0);
                prop_assert_eq!(read(XorIterator::from_seek(a.bytes(), p).expect("seek")), want(from));
                let mut copy = a.bytes()[..2].to_vec();
                copy.extend_from_slice(&a.bytes()[p.start_byte()..]);
                let it = XorIterator::from_seek(&copy, p.rebase()).expect("seek on copy");
                prop_assert_eq!(read(it), want(from));
            }
            if let Some(&(t, _)) = samples.get(70) {
                let p = a.seek_before(t).expect("points before sample 70");
                prop_assert!(p.prev_t() < t && usize::from(p.num) <= 70);
            }
        }
    }

    fn encode(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut a = XorAppender::new();
        for &(t, v) in samples {
            a.append(t, v).expect("not full");
        }
        a.into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Vec<(i64, u64)>> {
        let mut it = XorIterator::new(bytes)?;
        let mut out = Vec::new();
        while let Some((t, v)) = it.next_sample()? {
            out.push((t, v.to_bits()));
        }
        Ok(out)
    }

    /// Bytes worked out by hand from the format (see the crate docs):
    /// t0=1000 → zigzag varint D0 0F; v0=1.0 → 3FF0000000000000;
    /// t1 delta 1000 → uvarint E8 07; v1 same → '0';
    /// t2 dod 0 → '0'; v2=2.0, xor 7FF0.. → '1' '1' 00001 001011 + 11 ones;
    /// t3=4010, dod 10 → '10' 00000000001010; v3=3.0, xor 0008.. (lead 12, trail 51) →
    /// '1' '1' 01100 000001 '1'.
    #[test]
    fn golden_bytes() {
        let bytes = encode(&[(1000, 1.0), (2000, 1.0), (3000, 2.0), (4010, 3.0)]);
        let want: [u8; 21] = [
            0x00, 0x04, 0xD0, 0x0F, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0, 0xE8, 0x07, 0x30, 0x97, 0xFF,
            0xE0, 0x02, 0xB6, 0x03,
        ];
        assert_eq!(bytes, want);
        let three = encode(&[(1000, 1.0), (2000, 1.0), (3000, 2.0)]);
        assert_eq!(
            three,
            [
                0x00, 0x03, 0xD0, 0x0F, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0, 0xE8, 0x07, 0x30, 0x97, 0xFF,
                0xC0
            ]
        );
        assert_eq!(
            decode(&want).expect("golden decodes"),
            vec![
                (1000, 1f64.to_bits()),
                (2000, 1f64.to_bits()),
                (3000, 2f64.to_bits()),
                (4010, 3f64.to_bits())
            ]
        );
    }

    #[test]
    fn dod_bucket_edges() {
        // Each bucket's asymmetric edges, and just past them.
        let mut ts = vec![0i64, 1000];
        let mut delta = 1000i64;
        for n in [14u32, 17, 20] {
            let half = 1i64 << (n - 1);
            for dod in [half, -(half - 1), half + 1, -half] {
                delta += dod;
                let next = ts[ts.len() - 1] + delta;
                ts.push(next);
            }
        }
        ts.push(ts[ts.len() - 1] + 1);
        let samples: Vec<(i64, f64)> = ts.iter().map(|&t| (t, t as f64)).collect();
        let got = decode(&encode(&samples)).expect("decodes");
        let want: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn truncated_and_corrupt_input_errors_without_panic() {
        let bytes = encode(&[(1, 1.0), (2, 2.0), (5, 0.5), (9, -3.25)]);
        for cut in 0..bytes.len() {
            let r = decode(&bytes[..cut]);
            assert!(r.is_err(), "cut at {cut} should fail");
        }
        // Header claiming more samples than present.
        let mut more = bytes.clone();
        more[1] = 200;
        assert!(decode(&more).is_err());
        // Arbitrary garbage must not panic.
        for seed in 0..2000u64 {
            let mut g = vec![0u8, (seed % 7) as u8 + 1];
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..(seed % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                g.push(x as u8);
            }
            let _ = decode(&g);
        }
    }

    #[test]
    fn append_range_bounds() {
        let samples: Vec<(i64, f64)> = (0..120).map(|i| (i * 15_000, i as f64)).collect();
        let bytes = encode(&samples);
        let mut it = XorIterator::new(&bytes).expect("header");
        let mut out = Vec::new();
        assert!(
            it.append_range(30_000, 60_000, &mut out)
                .expect("valid chunk")
        );
        assert_eq!(
            out.iter().map(|s| s.t).collect::<Vec<_>>(),
            vec![30_000, 45_000, 60_000]
        );
        // 75_000 was consumed; the next sample is 90_000.
        assert_eq!(it.next_sample().expect("valid"), Some((90_000, 6.0)));
        out.clear();
        assert!(
            !it.append_range(i64::MIN, i64::MAX, &mut out)
                .expect("valid")
        );
        assert_eq!(out.len(), 120 - 7);
    }

    #[test]
    fn full_chunk_refuses_more() {
        let mut a = XorAppender::new();
        for i in 0..u16::MAX as i64 {
            a.append(i, 0.0).expect("room left");
        }
        assert_eq!(a.append(1 << 20, 0.0), Err(ChunkError::Full));
        assert_eq!(decode(a.bytes()).expect("valid").len(), u16::MAX as usize);
    }

    fn special_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::NAN),
            Just(STALE_NAN),
            Just(f64::from_bits(0x7ff8_0000_0000_0001)),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(0.0),
            Just(-0.0),
            Just(f64::MIN_POSITIVE),
            Just(f64::MAX),
            any::<f64>(),
            (0u32..1000).prop_map(|x| x as f64),
            (0u64..u64::MAX).prop_map(f64::from_bits),
        ]
    }

    fn timestamps() -> impl Strategy<Value = Vec<i64>> {
        prop_oneof![
            // Arbitrary, unordered, full-range values: the arithmetic must wrap like Go's.
            prop::collection::vec(any::<i64>(), 0..150),
            // Realistic: increasing with jitter around a scrape interval.
            (any::<i32>(), prop::collection::vec(0i64..40_000, 0..150)).prop_map(|(start, d)| {
                let mut t = i64::from(start);
                d.into_iter()
                    .map(|x| {
                        t += x;
                        t
                    })
                    .collect()
            }),
            // Huge steps that hit the 64-bit delta-of-delta case.
            prop::collection::vec(-(1i64 << 40)..(1i64 << 40), 0..50),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(ts in timestamps(), vs in prop::collection::vec(special_value(), 150)) {
            let samples: Vec<(i64, f64)> = ts.iter().zip(vs.iter()).map(|(&t, &v)| (t, v)).collect();
            let bytes = encode(&samples);
            prop_assert_eq!(chunk_num_samples(&bytes), Some(samples.len() as u16));
            let got = decode(&bytes).expect("own chunks decode");
            let want: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
            prop_assert_eq!(got, want);
            // The chunk is valid after every append (readers copy it mid-stream).
            let mut a = XorAppender::new();
            for (i, &(t, v)) in samples.iter().enumerate() {
                a.append(t, v).expect("room");
                let got = decode(a.bytes()).expect("prefix decodes");
                prop_assert_eq!(got.len(), i + 1);
            }
        }
    }
}
