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
    /// 0xff until the first value window is chosen, as Prometheus's appender.
    leading: u8,
    trailing: u8,
}

impl Default for XorAppender {
    fn default() -> Self {
        Self::new()
    }
}

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

impl XorAppender {
    /// An empty chunk (2 header bytes).
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&[0, 0]);
        XorAppender {
            w: BitWriter { buf, free: 0 },
            num: 0,
            t: 0,
            v: 0,
            t_delta: 0,
            leading: 0xff,
            trailing: 0,
        }
    }

    /// Appends a sample. Timestamps are normally increasing; any sequence round-trips (the
    /// arithmetic wraps exactly as Prometheus's does).
    pub fn append(&mut self, t: i64, v: f64) -> Result<()> {
        if self.num == u16::MAX {
            return Err(ChunkError::Full);
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

    #[inline]
    fn write_value(&mut self, vb: u64) {
        let delta = vb ^ self.v;
        if delta == 0 {
            self.w.write_bit(false);
            return;
        }
        self.w.write_bit(true);
        // Clamped to 31: the count has 5 bits.
        let leading = (delta.leading_zeros() as u8).min(31);
        let trailing = delta.trailing_zeros() as u8;
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            self.w.write_bit(false);
            let sig = 64 - u32::from(self.leading) - u32::from(self.trailing);
            self.w.write_bits(delta >> self.trailing, sig);
        } else {
            self.leading = leading;
            self.trailing = trailing;
            self.w.write_bit(true);
            self.w.write_bits(u64::from(leading), 5);
            let sig = 64 - u32::from(leading) - u32::from(trailing);
            // 64 significant bits are written as 0 (6 bits cannot hold 64).
            self.w.write_bits(u64::from(sig & 63), 6);
            self.w.write_bits(delta >> trailing, sig);
        }
    }

    pub fn num_samples(&self) -> usize {
        usize::from(self.num)
    }

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

/// Decodes an XOR chunk. Errors on bytes that cannot be a chunk; never panics.
#[derive(Clone, Debug)]
pub struct XorIterator<'a> {
    br: BitReader<'a>,
    total: u16,
    read: u16,
    t: i64,
    v: u64,
    t_delta: u64,
    leading: u8,
    trailing: u8,
}

impl<'a> XorIterator<'a> {
    /// An iterator over a chunk's samples (`bytes` includes the 2-byte header).
    pub fn new(bytes: &'a [u8]) -> Result<Self> {
        let total = chunk_num_samples(bytes).ok_or(ChunkError::MissingHeader)?;
        Ok(XorIterator {
            br: BitReader::new(&bytes[2..]),
            total,
            read: 0,
            t: 0,
            v: 0,
            t_delta: 0,
            leading: 0,
            trailing: 0,
        })
    }

    /// Samples in the chunk, per its header.
    pub fn num_samples(&self) -> u16 {
        self.total
    }

    fn truncated(&self) -> ChunkError {
        ChunkError::Truncated {
            read: self.read,
            total: self.total,
        }
    }

    fn read_uvarint(&mut self) -> Result<u64> {
        let mut x = 0u64;
        let mut shift = 0u32;
        for i in 0..10 {
            let b = self.br.read_byte().ok_or_else(|| self.truncated())?;
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
        if self.read == self.total {
            return Ok(None);
        }
        if self.read < 2 {
            return self.next_slow().map(Some);
        }
        let dod = match self.br.read_dod_prefix() {
            Some(0) => 0i64,
            Some(1) => self.read_dod(14)?,
            Some(2) => self.read_dod(17)?,
            Some(3) => self.read_dod(20)?,
            Some(_) => self.br.read_bits_wide(64).ok_or_else(|| self.truncated())? as i64,
            None => return Err(self.truncated()),
        };
        self.t_delta = self.t_delta.wrapping_add(dod as u64);
        self.t = self.t.wrapping_add(self.t_delta as i64);
        self.read_value()?;
        self.read += 1;
        Ok(Some((self.t, f64::from_bits(self.v))))
    }

    #[inline(always)]
    fn read_dod(&mut self, sz: u32) -> Result<i64> {
        let bits = self.br.read_bits(sz).ok_or_else(|| self.truncated())? as i64;
        // Values above 2^(sz-1) are negative (see `bit_range`).
        Ok(if bits > (1 << (sz - 1)) {
            bits - (1 << sz)
        } else {
            bits
        })
    }

    #[cold]
    fn next_slow(&mut self) -> Result<(i64, f64)> {
        if self.read == 0 {
            let zz = self.read_uvarint()?;
            self.t = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
            self.v = self.br.read_bits_wide(64).ok_or_else(|| self.truncated())?;
        } else {
            self.t_delta = self.read_uvarint()?;
            self.t = self.t.wrapping_add(self.t_delta as i64);
            self.read_value()?;
        }
        self.read += 1;
        Ok((self.t, f64::from_bits(self.v)))
    }

    #[inline(always)]
    fn read_value(&mut self) -> Result<()> {
        match self.br.read_bit() {
            Some(false) => return Ok(()),
            Some(true) => {}
            None => return Err(self.truncated()),
        }
        match self.br.read_bit() {
            Some(false) => {}
            Some(true) => {
                let lead = self.br.read_bits(5).ok_or_else(|| self.truncated())? as u8;
                let mut sig = self.br.read_bits(6).ok_or_else(|| self.truncated())? as u8;
                if sig == 0 {
                    sig = 64;
                }
                if u32::from(lead) + u32::from(sig) > 64 {
                    return Err(ChunkError::Corrupt("value window exceeds 64 bits"));
                }
                self.leading = lead;
                self.trailing = 64 - lead - sig;
            }
            None => return Err(self.truncated()),
        }
        let sig = 64 - u32::from(self.leading) - u32::from(self.trailing);
        let bits = self
            .br
            .read_bits_wide(sig)
            .ok_or_else(|| self.truncated())?;
        self.v ^= bits << self.trailing;
        Ok(())
    }

    /// Appends the remaining samples with `mint <= t <= maxt` to `out`. Returns `true` when
    /// it stopped at (and consumed) a sample after `maxt`, `false` at the end of the chunk.
    #[inline]
    pub fn append_range(&mut self, mint: i64, maxt: i64, out: &mut Vec<Sample>) -> Result<bool> {
        out.reserve(usize::from(self.total - self.read));
        while let Some((t, v)) = self.next_sample()? {
            if t > maxt {
                return Ok(true);
            }
            if t >= mint {
                out.push(Sample { t, v });
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3query_model::STALE_NAN;
    use proptest::prelude::*;

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
