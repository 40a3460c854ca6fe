//! Byte-level helpers shared by the WAL, index and chunk files: varints (Go's
//! `encoding/binary` flavour), big-endian integers, and a bounds-checked decoder that
//! reports truncation instead of panicking.

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

pub(crate) fn put_varint(out: &mut Vec<u8>, x: i64) {
    put_uvarint(out, ((x << 1) ^ (x >> 63)) as u64);
}

pub(crate) fn put_u32(out: &mut Vec<u8>, x: u32) {
    out.extend_from_slice(&x.to_be_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, x: u64) {
    out.extend_from_slice(&x.to_be_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Decoding ran past the end of its buffer or met an impossible value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) &'static str);

/// A cursor over bytes with checked reads.
#[derive(Debug, Clone)]
pub(crate) struct Decbuf<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Decbuf<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Decbuf { b, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(DecodeError("unexpected end of data"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_be_bytes(a))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_be_bytes(a))
    }

    #[inline]
    pub(crate) fn uvarint(&mut self) -> Result<u64, DecodeError> {
        // A WAL samples record's time deltas fit one byte (its samples share a scrape time).
        if let Some(&b) = self.b.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.uvarint_long()
    }

    fn uvarint_long(&mut self) -> Result<u64, DecodeError> {
        let rest = self.b.get(self.pos..).unwrap_or_default();
        let mut x = 0u64;
        let mut shift = 0u32;
        for (i, &b) in rest.iter().take(10).enumerate() {
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(DecodeError("varint overflows 64 bits"));
                }
                self.pos += i + 1;
                return Ok(x | (u64::from(b) << shift));
            }
            x |= u64::from(b & 0x7f) << shift;
            shift += 7;
        }
        Err(if rest.len() < 10 {
            DecodeError("unexpected end of data")
        } else {
            DecodeError("varint overflows 64 bits")
        })
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<i64, DecodeError> {
        let z = self.uvarint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    pub(crate) fn uvarint_usize(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(self.uvarint()?).map_err(|_| DecodeError("length overflows usize"))
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.uvarint_usize()?;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| DecodeError("invalid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_truncation() {
        let vals = [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1 << 40];
        let mut b = Vec::new();
        for &v in &vals {
            put_varint(&mut b, v);
            put_uvarint(&mut b, v as u64);
        }
        put_str(&mut b, "héllo");
        let mut d = Decbuf::new(&b);
        for &v in &vals {
            assert_eq!(d.varint(), Ok(v));
            assert_eq!(d.uvarint(), Ok(v as u64));
        }
        assert_eq!(d.str(), Ok("héllo"));
        assert_eq!(d.remaining(), 0);
        assert!(d.u8().is_err());
        let mut d = Decbuf::new(&[0x80, 0x80]);
        assert!(d.uvarint().is_err());
    }
}
