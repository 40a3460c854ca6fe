//! The dense chunk encoding blocks are written in (`crates/tsdb/docs/format/chunks.md`):
//! timestamps and decimal mantissas as delta or delta-of-delta sequences, frame-of-reference
//! and gcd reduced, bit-packed; values that are not short decimals as exceptions, or the whole
//! value column as a Gorilla XOR stream when that is smaller. Exact for every bit pattern.

use m3query_model::Sample;

use crate::bstream::{BitReader, BitWriter};
use crate::xor::XorWindow;
use crate::{ChunkError, Result};

/// Largest decimal scale: 10^22 is the largest power of ten a double holds exactly.
const MAX_SCALE: u8 = 22;
/// Mantissas up to 2^53 convert to doubles exactly.
const MAX_MANTISSA: i64 = 1 << 53;
const VMODE_DECIMAL: u8 = 0;
const VMODE_XOR: u8 = 1;

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

#[inline]
fn decimal_value(m: i64, k: u8) -> f64 {
    if k == 0 {
        m as f64
    } else {
        m as f64 / POW10[usize::from(k)]
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

fn put_varint(out: &mut Vec<u8>, x: i64) {
    put_uvarint(out, ((x << 1) ^ (x >> 63)) as u64);
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn bits_for(x: u64) -> u8 {
    (64 - x.leading_zeros()) as u8
}

/// How one order of an intseq is written: its residuals less `base` (their minimum), divided
/// by `g` (their gcd), in `w` bits each.
#[derive(Clone, Copy, Debug)]
struct IntSeqPlan {
    order: u8,
    base: i64,
    g: u64,
    w: u8,
    /// Encoded length in bytes.
    len: usize,
}

fn varint_len(x: i64) -> usize {
    uvarint_len(((x << 1) ^ (x >> 63)) as u64)
}

fn uvarint_len(x: u64) -> usize {
    (bits_for(x) as usize).max(1).div_ceil(7)
}

/// The residuals of `xs` at `order`: the values (1), or their successive differences (2).
fn residuals(xs: &[i64], order: u8) -> impl Iterator<Item = i64> + Clone + '_ {
    let delta = order == 2;
    (usize::from(delta)..xs.len()).map(move |i| {
        if delta {
            xs[i].wrapping_sub(xs[i - 1])
        } else {
            xs[i]
        }
    })
}

/// Plans `intseq(xs)` at `order` without writing it: two passes over the residuals (their
/// minimum; then gcd and largest offset), one division.
fn plan_intseq(xs: &[i64], order: u8) -> IntSeqPlan {
    let mut len = 1 + if order == 2 { varint_len(xs[0]) } else { 0 };
    let resid = residuals(xs, order);
    let Some(base) = resid.clone().min() else {
        return IntSeqPlan {
            order,
            base: 0,
            g: 0,
            w: 0,
            len,
        };
    };
    let (mut g, mut max) = (0u64, 0u64);
    for r in resid.clone() {
        let d = r.wrapping_sub(base) as u64;
        max = max.max(d);
        // Once the gcd is 1 it stays 1; a multiple of it leaves it as it is.
        if g != 1 && !d.is_multiple_of(g) {
            g = gcd(g, d);
        }
    }
    let w = max.checked_div(g).map_or(0, bits_for);
    let n = resid.count();
    len += varint_len(base) + uvarint_len(g) + 1;
    len += (n * usize::from(w)).div_ceil(8);
    IntSeqPlan {
        order,
        base,
        g,
        w,
        len,
    }
}

/// Appends `intseq(xs)` as `p` plans it.
fn put_intseq_planned(out: &mut Vec<u8>, xs: &[i64], p: IntSeqPlan) {
    out.push(p.order);
    if p.order == 2 {
        put_varint(out, xs[0]);
    }
    let resid = residuals(xs, p.order);
    if resid.clone().next().is_none() {
        return;
    }
    put_varint(out, p.base);
    put_uvarint(out, p.g);
    out.push(p.w);
    if p.w == 0 {
        return;
    }
    out.reserve(p.len);
    let (base, w) = (p.base, u32::from(p.w));
    let mut pack = |q_of: &dyn Fn(u64) -> u64| {
        let mut acc: u128 = 0;
        let mut nacc: u32 = 0;
        for r in resid.clone() {
            acc |= u128::from(q_of(r.wrapping_sub(base) as u64)) << nacc;
            nacc += w;
            while nacc >= 8 {
                out.push(acc as u8);
                acc >>= 8;
                nacc -= 8;
            }
        }
        if nacc > 0 {
            out.push(acc as u8);
        }
    };
    // Dividing is the costly step: skipped or a shift when the gcd allows.
    if p.g == 1 {
        pack(&|d| d);
    } else if p.g.is_power_of_two() {
        let shift = p.g.trailing_zeros();
        pack(&|d| d >> shift);
    } else {
        let g = p.g;
        pack(&|d| d / g);
    }
}

/// Appends the shorter of the two orders of `intseq(xs)` (the second on a tie).
fn put_intseq(out: &mut Vec<u8>, xs: &[i64]) {
    let (p1, p2) = (plan_intseq(xs, 1), plan_intseq(xs, 2));
    put_intseq_planned(out, xs, if p1.len < p2.len { p1 } else { p2 });
}

/// The mantissa of `v` at scale `k`, if `decimal_value(m, k)` is bit-identical to `v`.
#[inline]
fn at_scale(v: f64, k: u8) -> Option<i64> {
    let x = v * POW10[usize::from(k)];
    // NaN and infinities fail the comparison too.
    if x.is_nan() || x.abs() > MAX_MANTISSA as f64 {
        return None;
    }
    let m = x.round() as i64;
    (decimal_value(m, k).to_bits() == v.to_bits()).then_some(m)
}

/// The smallest scale `k` and mantissa with `decimal_value(m, k)` bit-identical to `v`.
fn to_decimal(v: f64) -> Option<(i64, u8)> {
    if !v.is_finite() {
        return None;
    }
    let bits = v.to_bits();
    for k in 0..=MAX_SCALE {
        let x = v * POW10[usize::from(k)];
        if x.abs() > MAX_MANTISSA as f64 {
            return None;
        }
        let m = x.round() as i64;
        if decimal_value(m, k).to_bits() == bits {
            return Some((m, k));
        }
    }
    None
}

/// Gorilla's value stream, as in XOR chunks.
struct XorValues {
    w: BitWriter,
    prev: u64,
    window: XorWindow,
    first: bool,
}

impl XorValues {
    fn new() -> Self {
        XorValues {
            w: BitWriter::default(),
            prev: 0,
            window: XorWindow::default(),
            first: true,
        }
    }

    fn push(&mut self, vb: u64) {
        if self.first {
            self.first = false;
            self.w.write_bits(vb, 64);
            self.prev = vb;
            return;
        }
        self.window.write(&mut self.w, vb ^ self.prev);
        self.prev = vb;
    }
}

/// The length in bits of the [`XorValues`] stream of `samples`' values.
fn xor_value_bits(samples: &[Sample]) -> usize {
    let Some(first) = samples.first() else {
        return 0;
    };
    let mut window = XorWindow::default();
    let mut prev = first.v.to_bits();
    let mut bits = 64usize;
    for s in &samples[1..] {
        let vb = s.v.to_bits();
        bits += window.bits(vb ^ prev) as usize;
        prev = vb;
    }
    bits
}

/// Reused buffers for [`DenseEncoder::encode`].
#[derive(Debug, Default)]
pub struct DenseEncoder {
    ints: Vec<i64>,
    decimal: Vec<u8>,
}

impl DenseEncoder {
    /// An encoder with empty buffers (reused across chunks).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the dense chunk of `samples` (1..=65535 of them, in any order) to `out`.
    pub fn encode(&mut self, samples: &[Sample], out: &mut Vec<u8>) -> Result<()> {
        let n = samples.len();
        if n == 0 {
            return Err(ChunkError::Corrupt(
                "a dense chunk needs at least one sample",
            ));
        }
        if n > usize::from(u16::MAX) {
            return Err(ChunkError::Full);
        }
        put_uvarint(out, n as u64);
        put_varint(out, samples[0].t);
        if n >= 2 {
            self.ints.clear();
            self.ints
                .extend(samples.windows(2).map(|w| w[1].t.wrapping_sub(w[0].t)));
            put_intseq(out, &self.ints);
        }
        // Decimal, when every value has a mantissa (exceptions allowed); then xor; keep the
        // smaller.
        self.decimal.clear();
        let have_decimal = self.encode_decimal(samples);
        // The xor stream is only sized unless it is kept (decimal usually wins).
        let xor_len = 1 + xor_value_bits(samples).div_ceil(8);
        if have_decimal && self.decimal.len() <= xor_len {
            out.extend_from_slice(&self.decimal);
        } else {
            let mut x = XorValues::new();
            for s in samples {
                x.push(s.v.to_bits());
            }
            out.push(VMODE_XOR);
            out.extend_from_slice(&x.w.buf);
        }
        Ok(())
    }

    /// Writes the decimal value section into `self.decimal`; false when no scale fits.
    fn encode_decimal(&mut self, samples: &[Sample]) -> bool {
        // One common scale k for the chunk: each value is tried at the current k first (one
        // multiply, round and divide), and only a value that does not fit searches its own
        // smallest scale, raising k (and rescaling the mantissas so far) when it is larger.
        // Values that fit no scale are exceptions; past half the samples, give up.
        let mut k = 0u8;
        let mut dec: Vec<Option<i64>> = Vec::with_capacity(samples.len());
        let mut nexc = 0usize;
        for s in samples {
            if let Some(m) = at_scale(s.v, k) {
                dec.push(Some(m));
                continue;
            }
            match to_decimal(s.v) {
                Some((m, mk)) if mk > k => {
                    let up = POW10[usize::from(mk - k)];
                    for (d, prev) in dec.iter_mut().zip(samples) {
                        if let Some(pm) = *d {
                            let scaled = pm as f64 * up;
                            let ok = scaled.abs() <= MAX_MANTISSA as f64
                                && decimal_value(scaled as i64, mk).to_bits() == prev.v.to_bits();
                            if ok {
                                *d = Some(scaled as i64);
                            } else {
                                *d = None;
                                nexc += 1;
                            }
                        }
                    }
                    k = mk;
                    dec.push(Some(m));
                }
                _ => {
                    dec.push(None);
                    nexc += 1;
                }
            }
            if nexc * 2 > samples.len() {
                return false;
            }
        }
        debug_assert_eq!(nexc, dec.iter().filter(|d| d.is_none()).count());
        let out = &mut self.decimal;
        out.push(VMODE_DECIMAL);
        out.push(k);
        put_uvarint(out, nexc as u64);
        let mut next = 0usize;
        for (i, d) in dec.iter().enumerate() {
            if d.is_none() {
                put_uvarint(out, (i - next) as u64);
                out.extend_from_slice(&samples[i].v.to_bits().to_le_bytes());
                next = i + 1;
            }
        }
        self.ints.clear();
        let mut prev = 0i64;
        for d in &dec {
            let m = d.unwrap_or(prev);
            self.ints.push(m);
            prev = m;
        }
        put_varint(out, self.ints[0]);
        if self.ints.len() >= 2 {
            let deltas: Vec<i64> = self
                .ints
                .windows(2)
                .map(|w| w[1].wrapping_sub(w[0]))
                .collect();
            put_intseq(out, &deltas);
        }
        true
    }
}

/// Encodes `samples` as one dense chunk (see [`DenseEncoder`] to reuse buffers).
pub fn encode_dense(samples: &[Sample]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    DenseEncoder::new().encode(samples, &mut out)?;
    Ok(out)
}

/// A byte cursor over a chunk's header sections.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

const BAD: ChunkError = ChunkError::Corrupt("dense chunk section runs past its end");

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Result<u8> {
        let x = *self.b.get(self.pos).ok_or(BAD)?;
        self.pos += 1;
        Ok(x)
    }

    fn uvarint(&mut self) -> Result<u64> {
        let mut x = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(ChunkError::Corrupt("varint overflows 64 bits"));
            }
            x |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(x);
            }
        }
        Err(ChunkError::Corrupt("varint overflows 64 bits"))
    }

    fn varint(&mut self) -> Result<i64> {
        let z = self.uvarint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(BAD)?;
        let s = self.b.get(self.pos..end).ok_or(BAD)?;
        self.pos = end;
        Ok(s)
    }
}

/// Reads one intseq.
#[derive(Clone, Copy, Debug)]
struct IntSeq<'a> {
    packed: &'a [u8],
    /// Next value to return (order 2: the stored first value, before any residual).
    first: Option<i64>,
    order2: bool,
    prev: i64,
    base: i64,
    g: u64,
    w: u32,
    bit: usize,
}

/// The `N` bytes of `b` from `at`, zero-padded past its end: a field near the end of a packed
/// sequence is read with the same wide load as the others.
#[inline(always)]
fn padded_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    match b.get(at..at + N) {
        Some(s) => a.copy_from_slice(s),
        None => {
            let tail = b.get(at..).unwrap_or(&[]);
            a[..tail.len()].copy_from_slice(tail);
        }
    }
    a
}

impl<'a> IntSeq<'a> {
    /// Parses the header of an intseq of `len` values and skips its packed bits.
    fn parse(c: &mut Cursor<'a>, len: usize) -> Result<Self> {
        let order = c.u8()?;
        let (first, resid) = match order {
            1 => (None, len),
            2 => (Some(c.varint()?), len - 1),
            _ => return Err(ChunkError::Corrupt("unknown intseq order")),
        };
        let mut s = IntSeq {
            packed: &[],
            first,
            order2: order == 2,
            prev: 0,
            base: 0,
            g: 0,
            w: 0,
            bit: 0,
        };
        if resid == 0 {
            return Ok(s);
        }
        s.base = c.varint()?;
        s.g = c.uvarint()?;
        let w = c.u8()?;
        if w > 64 || (w > 0 && s.g == 0) {
            return Err(ChunkError::Corrupt("bad intseq bit width"));
        }
        s.w = u32::from(w);
        let bytes = (resid * w as usize).div_ceil(8);
        s.packed = c.take(bytes)?;
        Ok(s)
    }

    /// The packed field starting at bit `bit` (the caller keeps `bit` within the fields).
    #[inline(always)]
    fn field(&self, bit: usize) -> u64 {
        if self.w == 0 {
            return 0;
        }
        let byte = bit >> 3;
        let shift = (bit & 7) as u32;
        // A field of up to 57 bits fits one 8-byte load at any bit offset.
        let word = if self.w <= 57 {
            u64::from_le_bytes(padded_at(self.packed, byte)) >> shift
        } else {
            let w = u128::from_le_bytes(padded_at(self.packed, byte));
            (w >> shift) as u64
        };
        let mask = if self.w == 64 {
            u64::MAX
        } else {
            (1u64 << self.w) - 1
        };
        word & mask
    }

    #[inline(always)]
    fn unpack(&mut self) -> u64 {
        let q = self.field(self.bit);
        self.bit += self.w as usize;
        q
    }

    /// The residual a packed field stands for.
    #[inline(always)]
    fn resid(&self, q: u64) -> i64 {
        self.base.wrapping_add(q.wrapping_mul(self.g) as i64)
    }

    /// Consumes the next `k` values (the caller never asks for more than are left) and
    /// returns their wrapping sum, without producing each: what a running total (a
    /// timestamp, a mantissa) moves by over `k` samples.
    fn skip_sum(&mut self, mut k: usize) -> i64 {
        let mut sum = 0i64;
        if k == 0 {
            return sum;
        }
        if let Some(f) = self.first.take() {
            self.prev = f;
            sum = f;
            k -= 1;
        }
        // k <= 65535, so these products are exact before wrapping. With residuals
        // r_l = base + g q_l, in wrapping arithmetic:
        //   order 1: Σ r_l = k base + g Σ q_l;
        //   order 2: values prev + r_1 + ... + r_j, j = 1..k, sum to
        //            k prev + base k (k + 1) / 2 + g Σ_j (q_1 + ... + q_j).
        let kk = k as i64;
        let g = self.g as i64;
        if self.order2 {
            let (mut qs, mut qq) = (0u64, 0u64);
            self.take_fields_while(k, |q| {
                qs = qs.wrapping_add(q);
                qq = qq.wrapping_add(qs);
                true
            });
            let tri = (k as u64 * (k as u64 + 1) / 2) as i64;
            sum = sum
                .wrapping_add(kk.wrapping_mul(self.prev))
                .wrapping_add(tri.wrapping_mul(self.base))
                .wrapping_add((qq as i64).wrapping_mul(g));
            self.prev = self
                .prev
                .wrapping_add(kk.wrapping_mul(self.base))
                .wrapping_add((qs as i64).wrapping_mul(g));
        } else {
            let mut qs = 0u64;
            self.take_fields_while(k, |q| {
                qs = qs.wrapping_add(q);
                true
            });
            sum = sum
                .wrapping_add(kk.wrapping_mul(self.base))
                .wrapping_add((qs as i64).wrapping_mul(g));
        }
        sum
    }

    /// Calls `f` with each of the next `k` packed fields (the caller never asks for more
    /// than are left) and moves past them, until `f` returns false: that field stays
    /// unconsumed. Returns how many were consumed. Reads up to 57 bits at once from one
    /// 8-byte load and takes every whole field in it, instead of a load per field.
    #[inline(always)]
    fn take_fields_while(&mut self, k: usize, mut f: impl FnMut(u64) -> bool) -> usize {
        let w = self.w;
        if w == 0 {
            // Every field is 0; the cursor does not move.
            return (0..k).take_while(|_| f(0)).count();
        }
        let mut bit = self.bit;
        let mut left = k;
        if w <= 57 {
            let mask = (1u64 << w) - 1;
            // After a shift of up to 7, at least 57 bits of the load are the stream's.
            let per_load = (57 / w) as usize;
            while left > 0 {
                let byte = bit >> 3;
                let Some(b) = self.packed.get(byte..byte + 8) else {
                    break;
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let mut word = u64::from_le_bytes(a) >> (bit & 7);
                let n = per_load.min(left);
                for i in 0..n {
                    if !f(word & mask) {
                        self.bit = bit + i * w as usize;
                        return k - left + i;
                    }
                    word >>= w;
                }
                bit += n * w as usize;
                left -= n;
            }
        }
        // The last few bytes, and fields too wide for one load.
        while left > 0 {
            if !f(self.field(bit)) {
                break;
            }
            bit += w as usize;
            left -= 1;
        }
        self.bit = bit;
        k - left
    }

    /// Consumes, of the next `max` values at most (the caller never asks for more than are
    /// left), those that keep the running total `acc` below `mint` when added to it, adding
    /// them; stops before the first that would not. Returns how many it consumed. This is
    /// where a sample's timestamp is found without decoding anything else.
    fn scan_below(&mut self, acc: &mut i64, max: usize, mint: i64) -> usize {
        let mut n = 0usize;
        if max == 0 {
            return n;
        }
        if let Some(f) = self.first {
            let c = acc.wrapping_add(f);
            if c >= mint {
                return n;
            }
            self.first = None;
            self.prev = f;
            *acc = c;
            n = 1;
        }
        if self.w == 0 && !self.order2 && self.base > 0 {
            // A steady interval: acc + j base is increasing, so the count is a division.
            let left = max - n;
            let (a, b, m) = (i128::from(*acc), i128::from(self.base), i128::from(mint));
            let steps = if m > a { (m - a + b - 1) / b - 1 } else { 0 };
            let steps = steps.clamp(0, left as i128) as usize;
            // Below `mint`, no step wraps; the first step at or past it must not wrap
            // either (a wrapped total would be below `mint` again): else walk.
            let stop = a + (steps as i128 + 1) * b;
            if steps == left || stop <= i128::from(i64::MAX) {
                *acc = (a + steps as i128 * b) as i64;
                return n + steps;
            }
        }
        let (base, g, order2) = (self.base, self.g, self.order2);
        let mut prev = self.prev;
        let mut t = *acc;
        n += self.take_fields_while(max - n, |q| {
            let r = base.wrapping_add(q.wrapping_mul(g) as i64);
            let v = if order2 { prev.wrapping_add(r) } else { r };
            let c = t.wrapping_add(v);
            if c >= mint {
                return false;
            }
            t = c;
            prev = v;
            true
        });
        *acc = t;
        self.prev = prev;
        n
    }

    /// The next value. The caller never asks for more than the sequence holds.
    #[inline(always)]
    fn next(&mut self) -> i64 {
        if let Some(f) = self.first.take() {
            self.prev = f;
            return f;
        }
        let q = self.unpack();
        let r = self.resid(q);
        if self.order2 {
            self.prev = self.prev.wrapping_add(r);
            self.prev
        } else {
            r
        }
    }

    /// The value every remaining one equals, when the sequence has no bits to read and is
    /// of order 1 (every residual is `base`): a steady interval, a steady increment.
    #[inline(always)]
    fn constant(&self) -> Option<i64> {
        (self.w == 0 && !self.order2).then_some(self.base)
    }

    /// Calls `f` with each of the next `slots.len()` values in order (the caller never asks
    /// for more than are left) and the slot it belongs in. The form of
    /// [`Self::for_each_until`] for runs decoded whole: one 8-byte load fills the slots of
    /// all the fields it holds, with no per-field check of where to stop.
    #[inline(always)]
    fn fill(&mut self, slots: &mut [Sample], f: impl FnMut(i64, &mut Sample)) {
        if self.order2 {
            self.fill_order::<true>(slots, f);
        } else {
            self.fill_order::<false>(slots, f);
        }
    }

    #[inline(always)]
    fn fill_order<const ORDER2: bool>(
        &mut self,
        slots: &mut [Sample],
        mut f: impl FnMut(i64, &mut Sample),
    ) {
        let mut rest = slots;
        if let Some(x) = self.first {
            let Some((s, tail)) = rest.split_first_mut() else {
                return;
            };
            self.first = None;
            self.prev = x;
            f(x, s);
            rest = tail;
        }
        let (base, g, w) = (self.base, self.g, self.w);
        let mut prev = self.prev;
        let mut value = |q: u64| {
            let r = base.wrapping_add(q.wrapping_mul(g) as i64);
            if ORDER2 {
                prev = prev.wrapping_add(r);
                prev
            } else {
                r
            }
        };
        if w == 0 {
            // Every field is 0 and the cursor does not move.
            for s in rest {
                f(value(0), s);
            }
        } else {
            let mut bit = self.bit;
            if w <= 57 {
                let mask = (1u64 << w) - 1;
                // After a shift of up to 7, at least 57 bits of the load are the stream's.
                let per_load = (57 / w) as usize;
                while !rest.is_empty() {
                    let byte = bit >> 3;
                    let Some(b) = self.packed.get(byte..byte + 8) else {
                        break;
                    };
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    let mut word = u64::from_le_bytes(a) >> (bit & 7);
                    let n = per_load.min(rest.len());
                    let (now, tail) = rest.split_at_mut(n);
                    for s in now {
                        f(value(word & mask), s);
                        word >>= w;
                    }
                    bit += n * w as usize;
                    rest = tail;
                }
            }
            // The last few bytes, and fields too wide for one load.
            for s in rest {
                f(value(self.field(bit)), s);
                bit += w as usize;
            }
            self.bit = bit;
        }
        self.prev = prev;
    }

    /// Calls `f` with each of the next `k` values in order (the caller never asks for more
    /// than are left) until `f` returns false: that value is consumed too. Returns how many
    /// were consumed. The bulk form of [`Self::next`]: a run of values in one loop, with no
    /// bits to read at all when every residual is `base`, and several packed fields per
    /// 8-byte load otherwise.
    #[inline(always)]
    fn for_each_until(&mut self, k: usize, mut f: impl FnMut(i64) -> bool) -> usize {
        if k == 0 {
            return 0;
        }
        let mut done = 0usize;
        if let Some(x) = self.first.take() {
            self.prev = x;
            done = 1;
            if !f(x) {
                return done;
            }
        }
        let left = k - done;
        let base = self.base;
        if self.w == 0 {
            // Every residual is `base` and the cursor does not move.
            if self.order2 {
                let mut p = self.prev;
                let mut c = 0usize;
                while c < left {
                    p = p.wrapping_add(base);
                    c += 1;
                    if !f(p) {
                        break;
                    }
                }
                self.prev = p;
                return done + c;
            }
            for c in 0..left {
                if !f(base) {
                    return done + c + 1;
                }
            }
            return done + left;
        }
        let g = self.g;
        let mut stopped = false;
        let c = if self.order2 {
            let mut p = self.prev;
            let c = self.take_fields_while(left, |q| {
                p = p.wrapping_add(base.wrapping_add(q.wrapping_mul(g) as i64));
                stopped = !f(p);
                !stopped
            });
            self.prev = p;
            c
        } else {
            self.take_fields_while(left, |q| {
                stopped = !f(base.wrapping_add(q.wrapping_mul(g) as i64));
                !stopped
            })
        };
        if stopped {
            // `take_fields_while` leaves the field it stopped at; `f` has taken its value.
            self.bit += self.w as usize;
            return done + c + 1;
        }
        done + c
    }
}

#[derive(Clone, Copy, Debug)]
enum Values<'a> {
    Decimal {
        k: u8,
        m: i64,
        deltas: Option<IntSeq<'a>>,
        /// Remaining exceptions (gap, bits) and the index of the next one.
        exc: &'a [u8],
        exc_left: usize,
        next_exc: usize,
    },
    Xor {
        br: BitReader<'a>,
        v: u64,
        leading: u32,
        trailing: u32,
    },
}

/// Decodes a dense chunk. Errors on bytes that cannot be one; never panics.
#[derive(Clone, Debug)]
pub struct DenseIterator<'a> {
    total: u16,
    read: u16,
    t: i64,
    deltas: Option<IntSeq<'a>>,
    values: Values<'a>,
}

/// The sample count of a dense chunk, if its header is readable.
pub fn dense_num_samples(bytes: &[u8]) -> Option<u16> {
    let mut c = Cursor { b: bytes, pos: 0 };
    c.uvarint().ok().and_then(|n| u16::try_from(n).ok())
}

impl<'a> DenseIterator<'a> {
    /// An iterator over a dense chunk; an error if its header does not decode.
    pub fn new(bytes: &'a [u8]) -> Result<Self> {
        let mut c = Cursor { b: bytes, pos: 0 };
        let n = c.uvarint()?;
        let total = u16::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or(ChunkError::Corrupt("dense chunk sample count out of range"))?;
        let n = usize::from(total);
        let t = c.varint()?;
        let deltas = if n >= 2 {
            Some(IntSeq::parse(&mut c, n - 1)?)
        } else {
            None
        };
        let values = match c.u8()? {
            VMODE_DECIMAL => {
                let k = c.u8()?;
                if k > MAX_SCALE {
                    return Err(ChunkError::Corrupt("dense chunk decimal scale above 22"));
                }
                let nexc = usize::try_from(c.uvarint()?).map_err(|_| BAD)?;
                if nexc > n {
                    return Err(ChunkError::Corrupt("more exceptions than samples"));
                }
                let exc_start = c.pos;
                let mut idx = 0usize;
                let mut first_exc = n;
                for i in 0..nexc {
                    let gap = usize::try_from(c.uvarint()?).map_err(|_| BAD)?;
                    idx = idx
                        .checked_add(gap)
                        .filter(|&x| x < n)
                        .ok_or(ChunkError::Corrupt("exception index out of range"))?;
                    if i == 0 {
                        first_exc = idx;
                    }
                    c.take(8)?;
                    idx += 1;
                }
                let exc = &bytes[exc_start..c.pos];
                let m0 = c.varint()?;
                let deltas = if n >= 2 {
                    Some(IntSeq::parse(&mut c, n - 1)?)
                } else {
                    None
                };
                // Positioned on the first exception's bits, past its gap.
                let exc = if nexc > 0 {
                    let mut e = Cursor { b: exc, pos: 0 };
                    e.uvarint()?;
                    &exc[e.pos..]
                } else {
                    exc
                };
                Values::Decimal {
                    k,
                    m: m0,
                    deltas,
                    exc,
                    exc_left: nexc,
                    next_exc: first_exc,
                }
            }
            VMODE_XOR => Values::Xor {
                br: BitReader::new(&bytes[c.pos..]),
                v: 0,
                leading: 0,
                trailing: 0,
            },
            _ => return Err(ChunkError::Corrupt("unknown dense value mode")),
        };
        Ok(DenseIterator {
            total,
            read: 0,
            t,
            deltas,
            values,
        })
    }

    /// The sample count the chunk's header declares.
    pub fn num_samples(&self) -> u16 {
        self.total
    }

    fn truncated(&self) -> ChunkError {
        ChunkError::Truncated {
            read: self.read,
            total: self.total,
        }
    }

    /// Decodes sample `self.read` (the caller checked one is left).
    #[inline(always)]
    fn decode(&mut self) -> Result<(i64, f64)> {
        let i = usize::from(self.read);
        if i > 0
            && let Some(d) = self.deltas.as_mut()
        {
            self.t = self.t.wrapping_add(d.next());
        }
        let v = match &mut self.values {
            Values::Decimal {
                k,
                m,
                deltas,
                exc,
                exc_left,
                next_exc,
            } => {
                if i > 0
                    && let Some(d) = deltas.as_mut()
                {
                    *m = m.wrapping_add(d.next());
                }
                if *exc_left > 0 && i == *next_exc {
                    f64::from_bits(take_exception(exc, exc_left, next_exc)?)
                } else {
                    decimal_value(*m, *k)
                }
            }
            Values::Xor {
                br,
                v,
                leading,
                trailing,
            } => {
                if i == 0 {
                    *v = br.read_bits_wide(64).ok_or(BAD)?;
                } else if !xor_next(br, v, leading, trailing)? {
                    return Err(self.truncated());
                }
                f64::from_bits(*v)
            }
        };
        self.read += 1;
        Ok((self.t, v))
    }

    /// The next sample, `Ok(None)` after the last.
    #[inline]
    pub fn next_sample(&mut self) -> Result<Option<(i64, f64)>> {
        if self.read == self.total {
            return Ok(None);
        }
        self.decode().map(Some)
    }

    /// Consumes the remaining samples before the first one with `t >= mint` (all of them
    /// when none is), so that [`Self::next_sample`] returns that one next. Only timestamps
    /// are decoded for the skipped samples; their values are stepped over (a sum of
    /// mantissa deltas, a walk of the exception list, or the XOR bits), never built. Errors
    /// exactly where decoding the skipped samples one by one would.
    pub fn skip_before(&mut self, mint: i64) -> Result<()> {
        let start = usize::from(self.read);
        let total = usize::from(self.total);
        if start == total {
            return Ok(());
        }
        // `t` is the last consumed sample's timestamp; before the first, the first's.
        let mut t = self.t;
        let mut skip = 0usize;
        if start == 0 {
            if t >= mint {
                return Ok(());
            }
            skip = 1;
        }
        if let Some(d) = self.deltas.as_mut() {
            skip += d.scan_below(&mut t, total - start - skip, mint);
        }
        if skip == 0 {
            return Ok(());
        }
        self.t = t;
        let end = start + skip;
        match &mut self.values {
            Values::Decimal {
                m,
                deltas,
                exc,
                exc_left,
                next_exc,
                ..
            } => {
                // Sample 0's mantissa is stored; every later one adds a delta.
                if let Some(d) = deltas.as_mut() {
                    *m = m.wrapping_add(d.skip_sum(end - start.max(1)));
                }
                while *exc_left > 0 && *next_exc < end {
                    take_exception(exc, exc_left, next_exc)?;
                }
            }
            Values::Xor {
                br,
                v,
                leading,
                trailing,
            } => {
                for i in start..end {
                    if i == 0 {
                        *v = br.read_bits_wide(64).ok_or(BAD)?;
                    } else if !xor_next(br, v, leading, trailing)? {
                        // As `decode` reports it: `i` samples were read before the end.
                        self.read = i as u16;
                        return Err(self.truncated());
                    }
                }
            }
        }
        self.read = end as u16;
        Ok(())
    }

    /// Appends the remaining samples with `mint <= t <= maxt` to `out`. Returns `true` when
    /// it stopped at (and consumed) a sample after `maxt`, `false` at the end of the chunk.
    ///
    /// Decodes column by column: the timestamps of the samples it consumes (up to the first
    /// after `maxt`) into `out`, then their values in one loop per value mode, instead of a
    /// sample at a time through [`Self::decode`]. On corrupt bytes it returns the error
    /// decoding one by one would, with `out` holding the same samples.
    pub fn append_range(&mut self, mint: i64, maxt: i64, out: &mut Vec<Sample>) -> Result<bool> {
        // An instant query's window often holds only the last few samples of a chunk.
        self.skip_before(mint)?;
        let start = usize::from(self.read);
        let total = usize::from(self.total);
        if start == total {
            return Ok(false);
        }
        let base = out.len();
        out.reserve(total - start);
        let lo = self.times_into(start, maxt, out);
        let slots = &mut out[base..];
        let n = slots.len();
        // Only the last sample consumed can be after `maxt`.
        let stopped = slots.last().is_some_and(|s| s.t > maxt);
        let res = self.values_into(start, slots);
        let kept = match &res {
            Ok(()) => {
                self.read = (start + n) as u16;
                n - usize::from(stopped)
            }
            Err((e, _)) => {
                // Where decoding one by one stops: sample `e`'s timestamp read, its value not.
                self.read = (start + e) as u16;
                self.t = slots[*e].t;
                *e
            }
        };
        out.truncate(base + kept);
        if lo < mint {
            // Timestamps out of order after the first at or past `mint` (not what a writer
            // produces, but decodable): drop the ones before it, as one by one would.
            let mut w = base;
            for r in base..out.len() {
                if out[r].t >= mint {
                    out[w] = out[r];
                    w += 1;
                }
            }
            out.truncate(w);
        }
        res.map(|()| stopped).map_err(|(_, e)| e)
    }

    /// Appends the timestamps of samples `start..` to `out` (with value 0) up to and
    /// including the first after `maxt`. Returns the smallest of them; leaves `self.t` at
    /// the last one.
    #[inline(always)]
    fn times_into(&mut self, start: usize, maxt: i64, out: &mut Vec<Sample>) -> i64 {
        let mut t = self.t;
        let mut lo = i64::MAX;
        let mut left = usize::from(self.total) - start;
        if start == 0 {
            // Sample 0's timestamp is the header's; it has no delta.
            out.push(Sample { t, v: 0.0 });
            lo = t;
            left -= 1;
            if t > maxt {
                return lo;
            }
        }
        let Some(d) = self.deltas.as_mut() else {
            return lo;
        };
        if let Some(step) = d.constant().filter(|&s| s > 0) {
            // A steady interval: the samples up to `maxt` (and the one after) are counted
            // by a division, and their timestamps written without a compare each. Only
            // when no timestamp wraps (else as below, one by one).
            let (t0, st) = (i128::from(t), i128::from(step));
            let within = if maxt >= t {
                ((i128::from(maxt) - t0) / st).min(left as i128) as usize
            } else {
                0
            };
            let n = (within + 1).min(left);
            let last = t0 + n as i128 * st;
            if last <= i128::from(i64::MAX) {
                out.extend((1..=n as i64).map(|i| Sample {
                    t: t + i * step,
                    v: 0.0,
                }));
                // Increasing from here: the first is the smallest.
                lo = lo.min(t + step);
                self.t = last as i64;
                return lo;
            }
        }
        // In batches through a local buffer: a push per sample costs more than the decode.
        let mut buf = [0i64; 64];
        while left > 0 {
            let k = left.min(buf.len());
            let mut j = 0usize;
            let mut stop = false;
            d.for_each_until(k, |x| {
                t = t.wrapping_add(x);
                if let Some(b) = buf.get_mut(j) {
                    *b = t;
                }
                j += 1;
                lo = lo.min(t);
                stop = t > maxt;
                !stop
            });
            out.extend(buf[..j].iter().map(|&t| Sample { t, v: 0.0 }));
            if stop {
                break;
            }
            left -= k;
        }
        self.t = t;
        lo
    }

    /// Decodes the values of samples `start..start + slots.len()` into `slots`. On an error
    /// at a sample, returns its position in `slots` with the error `decode` gives there.
    #[inline(always)]
    fn values_into(
        &mut self,
        start: usize,
        slots: &mut [Sample],
    ) -> std::result::Result<(), (usize, ChunkError)> {
        let total = self.total;
        let end = start + slots.len();
        match &mut self.values {
            Values::Decimal {
                k,
                m,
                deltas,
                exc,
                exc_left,
                next_exc,
            } => {
                let (mut i, mut j) = (start, 0usize);
                while i < end {
                    // Samples `i..run` are decimals; sample `run`, if before `end`, is the
                    // next exception.
                    let run = if *exc_left > 0 && *next_exc >= i {
                        (*next_exc).min(end)
                    } else {
                        end
                    };
                    if run > i {
                        let mut rest = &mut slots[j..j + (run - i)];
                        if i == 0 {
                            // Sample 0's mantissa is the header's; it has no delta.
                            rest[0].v = decimal_value(*m, *k);
                            rest = &mut rest[1..];
                        }
                        if let Some(d) = deltas.as_mut() {
                            fill_decimal(d, m, *k, rest);
                        }
                        j += run - i;
                        i = run;
                    }
                    if i == end {
                        break;
                    }
                    // The exception at `i`: its mantissa delta is consumed, its value is the
                    // stored bits.
                    if i > 0
                        && let Some(d) = deltas.as_mut()
                    {
                        *m = m.wrapping_add(d.next());
                    }
                    let bits = take_exception(exc, exc_left, next_exc).map_err(|err| (j, err))?;
                    slots[j].v = f64::from_bits(bits);
                    i += 1;
                    j += 1;
                }
                Ok(())
            }
            Values::Xor {
                br,
                v,
                leading,
                trailing,
            } => {
                let mut j = 0usize;
                if start == 0 {
                    *v = br.read_bits_wide(64).ok_or((0, BAD))?;
                    slots[0].v = f64::from_bits(*v);
                    j = 1;
                }
                for (jj, s) in slots.iter_mut().enumerate().skip(j) {
                    match xor_next(br, v, leading, trailing) {
                        Ok(true) => s.v = f64::from_bits(*v),
                        Ok(false) => {
                            return Err((
                                jj,
                                ChunkError::Truncated {
                                    read: (start + jj) as u16,
                                    total,
                                },
                            ));
                        }
                        Err(e) => return Err((jj, e)),
                    }
                }
                Ok(())
            }
        }
    }
}

/// Adds the next `slots.len()` mantissa deltas to `m` in turn and stores each mantissa's
/// value at scale `k`: the decimal value column of a run without exceptions.
#[inline(always)]
fn fill_decimal(d: &mut IntSeq<'_>, m: &mut i64, k: u8, slots: &mut [Sample]) {
    let mut x = *m;
    if k == 0 {
        d.fill(slots, |delta, s| {
            x = x.wrapping_add(delta);
            s.v = x as f64;
        });
    } else {
        // The same correctly rounded division as `decimal_value`.
        let p = POW10[usize::from(k)];
        d.fill(slots, |delta, s| {
            x = x.wrapping_add(delta);
            s.v = x as f64 / p;
        });
    }
    *m = x;
}

/// Takes the next exception (the one at sample `*next_exc`): returns its value bits and moves
/// `exc` and `next_exc` on to the one after it, if any.
#[inline(always)]
fn take_exception(exc: &mut &[u8], exc_left: &mut usize, next_exc: &mut usize) -> Result<u64> {
    let mut a = [0u8; 8];
    a.copy_from_slice(exc.get(..8).ok_or(BAD)?);
    *exc = &exc[8..];
    *exc_left -= 1;
    if *exc_left > 0 {
        let mut e = Cursor { b: exc, pos: 0 };
        let gap = usize::try_from(e.uvarint()?).map_err(|_| BAD)?;
        *next_exc = next_exc.saturating_add(gap).saturating_add(1);
        *exc = &exc[e.pos..];
    }
    Ok(u64::from_le_bytes(a))
}

/// One XOR-encoded value after the first. `Ok(false)` when the stream ends early.
#[inline(always)]
fn xor_next(
    br: &mut BitReader<'_>,
    v: &mut u64,
    leading: &mut u32,
    trailing: &mut u32,
) -> Result<bool> {
    let Some(ctl) = br.read_bits(1) else {
        return Ok(false);
    };
    if ctl == 0 {
        return Ok(true);
    }
    let Some(ctl) = br.read_bits(1) else {
        return Ok(false);
    };
    if ctl == 1 {
        let (Some(lead), Some(sig)) = (br.read_bits(5), br.read_bits(6)) else {
            return Ok(false);
        };
        let lead = lead as u32;
        let sig = if sig == 0 { 64 } else { sig as u32 };
        if lead + sig > 64 {
            return Err(ChunkError::Corrupt("value window exceeds 64 bits"));
        }
        *leading = lead;
        *trailing = 64 - lead - sig;
    }
    let sig = 64 - *leading - *trailing;
    if sig == 0 {
        return Err(ChunkError::Corrupt("empty value window"));
    }
    let Some(bits) = br.read_bits_wide(sig) else {
        return Ok(false);
    };
    *v ^= bits << *trailing;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The first, straightforward intseq writer: packs both orders and keeps the shorter.
    /// The planned writer must produce the same bytes (blocks on disk hold them).
    fn reference_put_intseq(out: &mut Vec<u8>, xs: &[i64]) {
        fn order(out: &mut Vec<u8>, xs: &[i64], order: u8) {
            out.push(order);
            let resid: Vec<i64> = if order == 2 {
                put_varint(out, xs[0]);
                xs.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect()
            } else {
                xs.to_vec()
            };
            let Some(&base) = resid.iter().min() else {
                return;
            };
            let g = resid
                .iter()
                .fold(0u64, |g, &r| gcd(g, r.wrapping_sub(base) as u64));
            put_varint(out, base);
            put_uvarint(out, g);
            let w = if g == 0 {
                0
            } else {
                resid
                    .iter()
                    .map(|&r| bits_for(r.wrapping_sub(base) as u64 / g))
                    .max()
                    .unwrap_or(0)
            };
            out.push(w);
            if w == 0 {
                return;
            }
            let (mut acc, mut nacc) = (0u128, 0u32);
            for &r in &resid {
                acc |= u128::from(r.wrapping_sub(base) as u64 / g) << nacc;
                nacc += u32::from(w);
                while nacc >= 8 {
                    out.push(acc as u8);
                    acc >>= 8;
                    nacc -= 8;
                }
            }
            if nacc > 0 {
                out.push(acc as u8);
            }
        }
        let mut one = Vec::new();
        order(&mut one, xs, 1);
        let start = out.len();
        order(out, xs, 2);
        if one.len() < out.len() - start {
            out.truncate(start);
            out.extend_from_slice(&one);
        }
    }

    fn intseq_inputs() -> impl Strategy<Value = Vec<i64>> {
        prop_oneof![
            prop::collection::vec(any::<i64>(), 1..200),
            prop::collection::vec(-1000i64..1000, 1..200),
            (
                any::<i64>(),
                1i64..1_000_000,
                prop::collection::vec(0i64..8, 1..200)
            )
                .prop_map(|(b, g, m)| m.iter().map(|&k| b.wrapping_add(g * k)).collect()),
            (0i64..1 << 40, prop::collection::vec(-3i64..4, 1..200)).prop_map(|(b, j)| {
                let mut t = b;
                j.iter()
                    .map(|&d| {
                        t += 15_000 + d;
                        t
                    })
                    .collect()
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn planned_intseq_writes_the_reference_bytes(xs in intseq_inputs()) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            put_intseq(&mut a, &xs);
            reference_put_intseq(&mut b, &xs);
            prop_assert_eq!(a, b);
        }
    }

    fn round_trip(samples: &[Sample]) -> Vec<u8> {
        let b = encode_dense(samples).expect("encode");
        let mut it = DenseIterator::new(&b).expect("header");
        assert_eq!(usize::from(it.num_samples()), samples.len());
        assert_eq!(dense_num_samples(&b), Some(it.num_samples()));
        for s in samples {
            let (t, v) = it.next_sample().expect("valid").expect("present");
            assert_eq!((t, v.to_bits()), (s.t, s.v.to_bits()));
        }
        assert_eq!(it.next_sample().expect("end"), None);
        b
    }

    fn regular(n: usize, f: impl Fn(usize) -> f64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample::new(1_700_000_000_123 + i as i64 * 15_000, f(i)))
            .collect()
    }

    #[test]
    fn scrape_like_series_are_small() {
        // A steady interval costs no bits per timestamp; integer counters a few bits.
        let up = round_trip(&regular(480, |_| 1.0));
        assert!(up.len() < 30, "{} bytes", up.len());
        let counter = round_trip(&regular(480, |i| (i * 37 + (i * i) % 11) as f64));
        assert!(counter.len() < 480 * 5 / 8 + 30, "{} bytes", counter.len());
        let cpu = round_trip(&regular(480, |i| (123_456 + i * 37) as f64 / 100.0));
        assert!(cpu.len() < 40, "{} bytes", cpu.len());
        let bytes = round_trip(&regular(480, |i| ((i * 7919) % 1000 * 4096) as f64));
        // Multiples of 4096: the gcd takes 12 bits off every delta.
        assert!(bytes.len() < 480 * 11 / 8 + 30, "{} bytes", bytes.len());
    }

    #[test]
    fn special_values_are_exceptions_or_xor() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let mut s = regular(100, |i| i as f64);
        s[3].v = stale;
        s[50].v = -0.0;
        s[51].v = f64::INFINITY;
        s[99].v = f64::from_bits(0x7ff8_dead_beef_0001);
        let b = round_trip(&s);
        assert!(b.len() < 100, "{} bytes", b.len());
        // Mostly non-decimal values fall back to xor.
        round_trip(&regular(50, |i| (i as f64).sqrt()));
        round_trip(&[Sample::new(-5, f64::NAN)]);
        round_trip(&[Sample::new(i64::MIN, 0.1), Sample::new(i64::MAX, 1e300)]);
        round_trip(&regular(3, |i| [5e-324, -1.7976931348623157e308, 1e22][i]));
    }

    #[test]
    fn corrupt_input_errors_without_panic() {
        let b = encode_dense(&regular(200, |i| (i * i) as f64 * 0.5)).expect("encode");
        for cut in 0..b.len() {
            let r = DenseIterator::new(&b[..cut]).and_then(|mut it| {
                let mut out = Vec::new();
                it.append_range(i64::MIN, i64::MAX, &mut out).map(|_| out)
            });
            if let Ok(out) = r {
                // A cut inside the packed bits of the last section can still decode: it
                // must then be a prefix-shaped result, never a panic.
                assert!(out.len() <= 200);
            }
        }
        for i in 0..b.len() {
            for x in [1u8, 0x80, 0xff] {
                let mut c = b.clone();
                c[i] ^= x;
                if let Ok(mut it) = DenseIterator::new(&c) {
                    let mut out = Vec::new();
                    let _ = it.append_range(i64::MIN, i64::MAX, &mut out);
                }
            }
        }
        assert!(DenseIterator::new(&[]).is_err());
        assert!(DenseIterator::new(&[0]).is_err());
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            3 => (-1_000_000i64..1_000_000).prop_map(|x| x as f64),
            3 => (-1_000_000i64..1_000_000, 0u32..6).prop_map(|(x, k)| x as f64 / 10f64.powi(k as i32)),
            1 => any::<f64>(),
            1 => any::<u64>().prop_map(f64::from_bits),
            1 => prop::sample::select(vec![
                f64::NAN, -0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY,
                f64::from_bits(0x7ff0_0000_0000_0002), f64::MIN_POSITIVE, f64::MAX, 9007199254740993.0,
            ]),
        ]
    }

    fn times(n: usize) -> impl Strategy<Value = Vec<i64>> {
        prop_oneof![
            (any::<i64>(), 1i64..100_000).prop_map(move |(t0, d)| (0..n as i64)
                .map(|i| t0.wrapping_add(i.wrapping_mul(d)))
                .collect()),
            (
                0i64..2_000_000_000_000,
                prop::collection::vec(14_990i64..15_010, n)
            )
                .prop_map(|(t0, ds)| {
                    ds.iter()
                        .scan(t0, |t, d| {
                            *t += d;
                            Some(*t)
                        })
                        .collect()
                }),
            prop::collection::vec(any::<i64>(), n),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Bit-exact round trip of arbitrary timestamps and values, through next_sample and
        /// append_range with arbitrary bounds.
        #[test]
        fn dense_round_trip(
            (ts, vs) in (1usize..300).prop_flat_map(|n| (times(n), prop::collection::vec(value(), n))),
            lo in any::<i64>(),
            span in any::<u64>(),
        ) {
            let s: Vec<Sample> = ts.iter().zip(&vs).map(|(&t, &v)| Sample::new(t, v)).collect();
            let b = encode_dense(&s).expect("encode");
            let mut it = DenseIterator::new(&b).expect("header");
            let mut got = Vec::new();
            while let Some((t, v)) = it.next_sample().expect("valid") {
                got.push((t, v.to_bits()));
            }
            let want: Vec<(i64, u64)> = s.iter().map(|x| (x.t, x.v.to_bits())).collect();
            prop_assert_eq!(&got, &want);
            // Never larger than xor values plus a few header bytes per section.
            let hi = lo.saturating_add(span as i64 & i64::MAX);
            let mut out = Vec::new();
            let mut it = DenseIterator::new(&b).expect("header");
            let stopped = it.append_range(lo, hi, &mut out).expect("valid");
            let mut want_r = Vec::new();
            let mut stop = false;
            for x in &s {
                if x.t > hi { stop = true; break; }
                if x.t >= lo { want_r.push((x.t, x.v.to_bits())); }
            }
            prop_assert_eq!(stopped, stop);
            prop_assert_eq!(out.iter().map(|x| (x.t, x.v.to_bits())).collect::<Vec<_>>(), want_r);
        }

        /// Sizing the xor value stream counts exactly the bits writing it takes, so the
        /// encoder picks the same value mode as when it wrote both.
        #[test]
        fn xor_value_bits_is_the_written_length(vs in prop::collection::vec(value(), 1..300)) {
            let s: Vec<Sample> = vs.iter().enumerate().map(|(i, &v)| Sample::new(i as i64, v)).collect();
            let mut x = XorValues::new();
            for v in &vs {
                x.push(v.to_bits());
            }
            let written = x.w.buf.len() * 8 - usize::from(x.w.free);
            prop_assert_eq!(xor_value_bits(&s), written);
        }
    }

    /// The samples left after consuming `pre` with `next_sample` and then every one before
    /// the first with `t >= mint`, one by one: the plain decode that skipping must equal.
    fn plain_rest(b: &[u8], pre: usize, mint: i64) -> Result<Vec<(i64, u64)>> {
        let mut it = DenseIterator::new(b)?;
        for _ in 0..pre {
            it.next_sample()?;
        }
        let mut out = Vec::new();
        let mut skipping = true;
        while let Some((t, v)) = it.next_sample()? {
            if skipping && t < mint {
                continue;
            }
            skipping = false;
            out.push((t, v.to_bits()));
        }
        Ok(out)
    }

    /// The same through `skip_before`.
    fn skipped_rest(b: &[u8], pre: usize, mint: i64) -> Result<Vec<(i64, u64)>> {
        let mut it = DenseIterator::new(b)?;
        for _ in 0..pre {
            it.next_sample()?;
        }
        it.skip_before(mint)?;
        let mut out = Vec::new();
        while let Some((t, v)) = it.next_sample()? {
            out.push((t, v.to_bits()));
        }
        Ok(out)
    }

    /// Timestamps in the shapes each skip path handles: a steady interval (order 1, no
    /// bits: the division), arithmetic deltas (order 2, no bits), jitter (order 1 bits),
    /// drifting deltas (order 2 bits), intervals that wrap, and arbitrary ones.
    fn skip_times(n: usize) -> impl Strategy<Value = Vec<i64>> {
        prop_oneof![
            (any::<i64>(), 1i64..100_000).prop_map(move |(t0, d)| (0..n as i64)
                .map(|i| t0.wrapping_add(i.wrapping_mul(d)))
                .collect()),
            (i64::MAX - 2_000_000..=i64::MAX, 1i64..100_000).prop_map(move |(t0, d)| (0..n as i64)
                .map(|i| t0.wrapping_add(i.wrapping_mul(d)))
                .collect()),
            (-1_000_000i64..1_000_000, -50i64..50, 1_000i64..20_000).prop_map(
                move |(t0, dd, d0)| {
                    let (mut t, mut d) = (t0, d0);
                    (0..n)
                        .map(|_| {
                            let x = t;
                            t = t.wrapping_add(d);
                            d += dd;
                            x
                        })
                        .collect()
                }
            ),
            (0i64..1 << 41, prop::collection::vec(14_990i64..15_010, n)).prop_map(|(t0, ds)| {
                ds.iter()
                    .scan(t0, |t, d| {
                        *t += d;
                        Some(*t)
                    })
                    .collect()
            }),
            (0i64..1 << 41, prop::collection::vec(-3i64..4, n)).prop_map(|(t0, js)| {
                let mut d = 15_000i64;
                js.iter()
                    .scan(t0, |t, j| {
                        d += j;
                        *t += d;
                        Some(*t)
                    })
                    .collect()
            }),
            (any::<i64>(), prop::collection::vec(-5i64..=5, n)).prop_map(|(d, js)| {
                // Constant, negative or zero intervals too.
                js.iter()
                    .scan(0i64, |t, j| {
                        *t = t.wrapping_add(d.wrapping_mul(*j));
                        Some(*t)
                    })
                    .collect()
            }),
            prop::collection::vec(any::<i64>(), n),
        ]
    }

    /// Values in every mode: steady counters (order 1 mantissas, no bits), quadratic ones
    /// (order 2, no bits), gauges with a scale, decimals with exceptions, and XOR.
    fn skip_values(n: usize) -> impl Strategy<Value = Vec<f64>> {
        prop_oneof![
            (-1000i64..1000, -1000i64..1000)
                .prop_map(move |(a, b)| (0..n as i64).map(|i| (a + b * i) as f64).collect()),
            (-100i64..100, 0u32..4).prop_map(move |(a, k)| (0..n as i64)
                .map(|i| (a * i * i) as f64 / 10f64.powi(k as i32))
                .collect()),
            prop::collection::vec(value(), n),
            (
                prop::collection::vec(-1_000_000i64..1_000_000, n),
                prop::collection::vec((0..n, value()), 0..4)
            )
                .prop_map(|(ms, exc)| {
                    let mut v: Vec<f64> = ms.iter().map(|&m| m as f64 / 100.0).collect();
                    for (i, x) in exc {
                        v[i] = x;
                    }
                    v
                }),
            prop::collection::vec(any::<u64>().prop_map(f64::from_bits), n),
        ]
    }

    fn chunk_and_bounds() -> impl Strategy<Value = (Vec<Sample>, usize, i64)> {
        (1usize..300)
            .prop_flat_map(|n| (skip_times(n), skip_values(n), 0..=n, 0..n, -2i64..=2))
            .prop_flat_map(|(ts, vs, pre, at, off)| {
                let s: Vec<Sample> = ts
                    .iter()
                    .zip(&vs)
                    .map(|(&t, &v)| Sample::new(t, v))
                    .collect();
                // Mostly a bound at (or next to) one of the chunk's timestamps.
                let near = ts[at].saturating_add(off);
                (
                    Just(s),
                    Just(pre),
                    prop_oneof![4 => Just(near), 1 => any::<i64>()],
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Skipping to `mint` (after any number of samples already read) leaves exactly the
        /// samples a one-by-one decode leaves, bit for bit; and `append_range` with it
        /// returns what filtering the plain decode does.
        #[test]
        fn skip_before_matches_plain_decode(
            (s, pre, mint) in chunk_and_bounds(),
            span in any::<u64>(),
        ) {
            let b = encode_dense(&s).expect("encode");
            let want = plain_rest(&b, pre, mint).expect("valid");
            prop_assert_eq!(skipped_rest(&b, pre, mint).expect("valid"), want.clone());
            // Skipping twice, or to a lower bound after, moves no further.
            let mut it = DenseIterator::new(&b).expect("header");
            for _ in 0..pre {
                it.next_sample().expect("valid");
            }
            it.skip_before(mint).expect("valid");
            it.skip_before(mint).expect("valid");
            it.skip_before(i64::MIN).expect("valid");
            prop_assert_eq!(it.next_sample().expect("valid").map(|(t, v)| (t, v.to_bits())), want.first().copied());

            let maxt = mint.saturating_add(span as i64 & i64::MAX);
            let mut it = DenseIterator::new(&b).expect("header");
            for _ in 0..pre {
                it.next_sample().expect("valid");
            }
            let mut out = Vec::new();
            let stopped = it.append_range(mint, maxt, &mut out).expect("valid");
            let rest = &s[pre..];
            let mut want_r = Vec::new();
            let mut stop = false;
            for x in rest {
                if x.t > maxt { stop = true; break; }
                if x.t >= mint { want_r.push((x.t, x.v.to_bits())); }
            }
            prop_assert_eq!(stopped, stop);
            prop_assert_eq!(out.iter().map(|x| (x.t, x.v.to_bits())).collect::<Vec<_>>(), want_r);
        }
    }

    /// A range read's result, the samples it appended (also on an error) and the samples
    /// `next_sample` gives after it.
    type RangeOutcome = (Result<bool>, Vec<(i64, u64)>, Vec<(i64, u64)>);

    fn rest_of(it: &mut DenseIterator<'_>) -> Vec<(i64, u64)> {
        let mut rest = Vec::new();
        while let Ok(Some((t, v))) = it.next_sample() {
            rest.push((t, v.to_bits()));
        }
        rest
    }

    /// What `append_range(mint, maxt)` after `pre` samples read one by one must give: the
    /// loop over `next_sample` it replaces.
    fn plain_range(b: &[u8], pre: usize, mint: i64, maxt: i64) -> Result<RangeOutcome> {
        let mut it = DenseIterator::new(b)?;
        for _ in 0..pre {
            it.next_sample()?;
        }
        let mut out = Vec::new();
        let r = (|| {
            it.skip_before(mint)?;
            while let Some((t, v)) = it.next_sample()? {
                if t > maxt {
                    return Ok(true);
                }
                if t >= mint {
                    out.push((t, v.to_bits()));
                }
            }
            Ok(false)
        })();
        // Only a successful decode has a defined rest.
        let rest = if r.is_ok() {
            rest_of(&mut it)
        } else {
            Vec::new()
        };
        Ok((r, out, rest))
    }

    /// The same through `append_range`, with a sample already in `out` that it must keep.
    fn bulk_range(b: &[u8], pre: usize, mint: i64, maxt: i64) -> Result<RangeOutcome> {
        let mut it = DenseIterator::new(b)?;
        for _ in 0..pre {
            it.next_sample()?;
        }
        let mut out = vec![Sample::new(7, 7.0)];
        let r = it.append_range(mint, maxt, &mut out);
        assert_eq!((out[0].t, out[0].v.to_bits()), (7, 7f64.to_bits()));
        let out = out[1..].iter().map(|x| (x.t, x.v.to_bits())).collect();
        let rest = if r.is_ok() {
            rest_of(&mut it)
        } else {
            Vec::new()
        };
        Ok((r, out, rest))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// The column-wise `append_range` equals decoding one by one: result, samples, and
        /// what `next_sample` returns after it; on intact chunks, and on truncated or
        /// bit-flipped ones (the same error, with the same samples appended before it).
        #[test]
        fn append_range_matches_plain_decode(
            (s, pre, mint) in chunk_and_bounds(),
            span in prop_oneof![3 => any::<u64>(), 2 => 0u64..200_000],
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let b = encode_dense(&s).expect("encode");
            let maxt = mint.saturating_add(span as i64 & i64::MAX);
            let intact = plain_range(&b, pre, mint, maxt).expect("valid");
            prop_assert!(intact.0.is_ok());
            prop_assert_eq!(bulk_range(&b, pre, mint, maxt).expect("valid"), intact);
            let cut = &b[..cut.index(b.len() + 1)];
            prop_assert_eq!(bulk_range(cut, pre, mint, maxt), plain_range(cut, pre, mint, maxt));
            let mut flipped = b.clone();
            flipped[flip.index(b.len())] ^= 1 << bit;
            prop_assert_eq!(
                bulk_range(&flipped, pre, mint, maxt),
                plain_range(&flipped, pre, mint, maxt)
            );
        }
    }

    #[test]
    fn skip_before_on_damaged_chunks_errs_where_decoding_does() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let mut with_exc = regular(150, |i| (i * 3) as f64 / 10.0);
        with_exc[7].v = stale;
        with_exc[90].v = f64::NAN;
        with_exc[91].v = -0.0;
        let chunks = [
            regular(200, |i| (i * i) as f64 * 0.5),
            with_exc,
            regular(150, |i| (i as f64).sqrt()),
            regular(120, |_| 1.0),
        ];
        for s in &chunks {
            let b = encode_dense(s).expect("encode");
            let mints = [
                i64::MIN,
                s[0].t,
                s[1].t,
                s[60].t,
                s[100].t + 1,
                s[s.len() - 1].t,
                i64::MAX,
            ];
            let check = |c: &[u8]| {
                for pre in [0, 1, 30] {
                    for &mint in &mints {
                        // Same samples, or the same error: never a different sample.
                        assert_eq!(skipped_rest(c, pre, mint), plain_rest(c, pre, mint));
                        for maxt in [mint, s[80].t, s[s.len() - 2].t, i64::MAX] {
                            assert_eq!(
                                bulk_range(c, pre, mint, maxt),
                                plain_range(c, pre, mint, maxt)
                            );
                        }
                    }
                }
            };
            for cut in 0..b.len() {
                check(&b[..cut]);
            }
            for i in 0..b.len() {
                for x in [1u8, 0x10, 0x80, 0xff] {
                    let mut c = b.clone();
                    c[i] ^= x;
                    check(&c);
                }
            }
        }
    }
}
