//! Bit streams, most significant bit first, as Prometheus's `bstream`.

/// Appends bits to a byte vector. The last byte holds `free` unused low bits.
#[derive(Clone, Debug, Default)]
pub(crate) struct BitWriter {
    pub(crate) buf: Vec<u8>,
    /// Unused bits at the low end of the last byte (0 means the next bit starts a new byte).
    pub(crate) free: u8,
}

impl BitWriter {
    #[inline]
    pub(crate) fn write_bit(&mut self, bit: bool) {
        if self.free == 0 {
            self.buf.push(0);
            self.free = 8;
        }
        self.free -= 1;
        if bit && let Some(last) = self.buf.last_mut() {
            *last |= 1 << self.free;
        }
    }

    /// Writes the `n` low bits of `v` (n <= 64), most significant first.
    #[inline]
    pub(crate) fn write_bits(&mut self, v: u64, n: u32) {
        if n == 0 {
            return;
        }
        let v = if n == 64 { v } else { v & ((1u64 << n) - 1) };
        let used = (8 - u32::from(self.free)) % 8;
        let total = used + n;
        // The bits of a partial last byte and `v`, left-aligned in one word, replace that
        // byte in one 8-byte store cut to length: one step instead of a byte at a time. Only
        // when the store fits the capacity (an open chunk grows by fixed steps, not by
        // doubling) and the bits fit a word; else bit by byte below.
        let keep = self.buf.len() - usize::from(used > 0);
        if total <= 64 && self.buf.capacity() - keep >= 8 {
            let head = match self.buf.last() {
                Some(&b) if used > 0 => u64::from(b >> self.free),
                _ => 0,
            };
            // `used > 0` means n < 64, so the shift cannot overflow.
            let word = (head.checked_shl(n).unwrap_or(0) | v) << (64 - total);
            let bytes = total.div_ceil(8);
            self.buf.truncate(keep);
            self.buf.extend_from_slice(&word.to_be_bytes());
            self.buf.truncate(keep + bytes as usize);
            self.free = (bytes * 8 - total) as u8;
            return;
        }
        self.write_bits_bytewise(v, n);
    }

    /// [`BitWriter::write_bits`] a byte at a time, for masked `v`, `n >= 1`.
    fn write_bits_bytewise(&mut self, v: u64, n: u32) {
        let mut n = n;
        if self.free > 0 {
            // Top up the last byte.
            let take = n.min(u32::from(self.free));
            let bits = ((v >> (n - take)) & ((1u64 << take) - 1)) as u8;
            self.free -= take as u8;
            if let Some(last) = self.buf.last_mut() {
                *last |= bits << self.free;
            }
            n -= take;
            if n == 0 {
                return;
            }
        }
        // Byte-aligned now: the remaining n bits, left-aligned, as whole bytes.
        let rest = v << (64 - n);
        let bytes = n.div_ceil(8);
        self.buf
            .extend_from_slice(&rest.to_be_bytes()[..bytes as usize]);
        self.free = (bytes * 8 - n) as u8;
    }

    /// Writes whole bytes (used for varints, which Prometheus writes bit-aligned).
    #[inline]
    pub(crate) fn write_bytes(&mut self, bytes: &[u8]) {
        if self.free == 0 {
            self.buf.extend_from_slice(bytes);
        } else {
            for &b in bytes {
                self.write_bits(u64::from(b), 8);
            }
        }
    }
}

/// Reads bits from a byte slice. `buf` holds the next `valid` bits of the stream left-aligned;
/// bits below them are either zero or the stream's following bits, never anything else.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    pub(crate) buf: u64,
    pub(crate) valid: u32,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        BitReader {
            data,
            pos: 0,
            buf: 0,
            valid: 0,
        }
    }

    /// Tops the buffer up to at least 56 valid bits, or to the end of the stream.
    #[inline(always)]
    pub(crate) fn refill(&mut self) {
        if let Some(w) = self.data.get(self.pos..self.pos + 8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.buf |= u64::from_be_bytes(a) >> self.valid;
            let bytes = (63 - self.valid) >> 3;
            self.pos += bytes as usize;
            self.valid += bytes * 8;
        } else {
            self.refill_tail();
        }
    }

    #[cold]
    #[inline(never)]
    fn refill_tail(&mut self) {
        while self.valid <= 56 {
            let Some(&b) = self.data.get(self.pos) else {
                break;
            };
            self.buf |= u64::from(b) << (56 - self.valid);
            self.valid += 8;
            self.pos += 1;
        }
    }

    /// Consumes `n` bits (1 <= n <= 63) that the caller checked are valid.
    #[inline(always)]
    pub(crate) fn take(&mut self, n: u32) -> u64 {
        debug_assert!((1..=63).contains(&n) && n <= self.valid);
        let v = self.buf >> (64 - n);
        self.buf <<= n;
        self.valid -= n;
        v
    }

    /// Reads `n` bits, 1 <= n <= 56. `None` at the end of the stream.
    #[inline(always)]
    pub(crate) fn read_bits(&mut self, n: u32) -> Option<u64> {
        if self.valid < n {
            self.refill();
            if self.valid < n {
                return None;
            }
        }
        Some(self.take(n))
    }

    /// Reads `n` bits, 1 <= n <= 64.
    #[inline(always)]
    pub(crate) fn read_bits_wide(&mut self, n: u32) -> Option<u64> {
        if n <= 56 {
            self.read_bits(n)
        } else {
            let hi = self.read_bits(n - 32)?;
            let lo = self.read_bits(32)?;
            Some((hi << 32) | lo)
        }
    }

    /// Bits left in the stream (an upper bound on what any further read can consume).
    pub(crate) fn remaining_bits(&self) -> usize {
        (self.data.len() - self.pos.min(self.data.len())) * 8 + self.valid as usize
    }

    #[cfg(test)]
    pub(crate) fn read_bit(&mut self) -> Option<bool> {
        self.read_bits(1).map(|b| b == 1)
    }

    /// Reads one byte (varints are byte-granular but not byte-aligned in the stream).
    #[inline]
    /// Bits read so far from the start of the stream.
    pub(crate) fn consumed_bits(&self) -> usize {
        self.pos * 8 - self.valid as usize
    }

    pub(crate) fn read_byte(&mut self) -> Option<u8> {
        self.read_bits(8).map(|b| b as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_and_bytewise_writes_give_the_same_bits() {
        // Widths and partial-byte offsets across both paths: a writer with room for the
        // 8-byte store, and one whose capacity forces the bytewise path.
        for pre in 0..8u32 {
            for n in 1..=64u32 {
                let v = 0x9e37_79b9_7f4a_7c15_u64.rotate_left(n + pre);
                let mut fast = BitWriter::default();
                fast.buf.reserve(64);
                let mut slow = BitWriter::default();
                for w in [&mut fast, &mut slow] {
                    for i in 0..pre {
                        w.write_bit(i % 2 == 0);
                    }
                }
                fast.write_bits(v, n);
                let masked = if n == 64 { v } else { v & ((1 << n) - 1) };
                slow.write_bits_bytewise(masked, n);
                assert_eq!((&fast.buf, fast.free), (&slow.buf, slow.free), "{pre} {n}");
            }
        }
    }

    #[test]
    fn bits_round_trip_across_byte_boundaries() {
        let mut w = BitWriter::default();
        let items: Vec<(u64, u32)> = (1..=64u32)
            .map(|n| {
                let v = 0xdead_beef_cafe_f00d_u64.rotate_left(n);
                (if n == 64 { v } else { v & ((1 << n) - 1) }, n)
            })
            .collect();
        for &(v, n) in &items {
            w.write_bit(n % 3 == 0);
            w.write_bits(v, n);
            w.write_bytes(&[n as u8]);
        }
        let mut r = BitReader::new(&w.buf);
        for &(v, n) in &items {
            assert_eq!(r.read_bit(), Some(n % 3 == 0));
            assert_eq!(r.read_bits_wide(n), Some(v), "width {n}");
            assert_eq!(r.read_byte(), Some(n as u8));
        }
        // Only padding is left.
        assert!(r.read_bits(8).is_none());
    }
}
