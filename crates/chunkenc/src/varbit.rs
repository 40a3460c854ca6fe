//! Prometheus's "varbit" integers (`tsdb/chunkenc/varbit.go`) and the histogram chunk
//! layout block (`histogram_meta.go`): zero threshold, schema, spans, custom bounds.

use m3query_model::histogram::Span;

use crate::bstream::{BitReader, BitWriter};
use crate::{ChunkError, Result};

/// `-(2^(n-1) - 1) <= x <= 2^(n-1)`, Prometheus's asymmetric n-bit range.
fn bit_range(x: i64, n: u32) -> bool {
    let half = 1i64 << (n - 1);
    -(half - 1) <= x && x <= half
}

/// Prefix ones and value width of each varbit bucket after the single-bit zero.
const WIDTHS: [(u32, u32); 7] = [(1, 3), (2, 6), (3, 9), (4, 12), (5, 18), (6, 25), (7, 56)];

/// Writes a signed varbit: '0' for 0, else n ones, a zero, and the value in a width
/// for n = 1..7, or eight ones and 64 raw bits.
pub(crate) fn put_varbit_int(w: &mut BitWriter, v: i64) {
    if v == 0 {
        w.write_bit(false);
        return;
    }
    for (ones, width) in WIDTHS {
        if bit_range(v, width) {
            // `ones` one bits, a zero, then the value: at most 7 + 1 + 56 = 64 bits, so
            // one write.
            let prefix = ((1u64 << ones) - 1) << 1;
            let value = (v as u64) & ((1u64 << width) - 1);
            w.write_bits((prefix << width) | value, ones + 1 + width);
            return;
        }
    }
    w.write_bits(0xff, 8);
    w.write_bits(v as u64, 64);
}

/// Writes an unsigned varbit (same buckets, unsigned ranges).
pub(crate) fn put_varbit_uint(w: &mut BitWriter, v: u64) {
    if v == 0 {
        w.write_bit(false);
        return;
    }
    for (ones, width) in WIDTHS {
        if v.leading_zeros() >= 64 - width {
            let prefix = ((1u64 << ones) - 1) << 1;
            w.write_bits((prefix << width) | v, ones + 1 + width);
            return;
        }
    }
    w.write_bits(0xff, 8);
    w.write_bits(v, 64);
}

/// The number of leading one bits of a varbit prefix (at most 8) and the width it selects.
fn read_prefix(r: &mut BitReader<'_>) -> Option<Option<u32>> {
    let mut ones = 0u32;
    while ones < 8 {
        if r.read_bits(1)? == 0 {
            break;
        }
        ones += 1;
    }
    Some(match ones {
        0 => None,
        8 => Some(64),
        n => Some(WIDTHS[(n - 1) as usize].1),
    })
}

/// Reads a signed varbit.
pub(crate) fn read_varbit_int(r: &mut BitReader<'_>) -> Option<i64> {
    let Some(width) = read_prefix(r)? else {
        return Some(0);
    };
    if width == 64 {
        return r.read_bits_wide(64).map(|b| b as i64);
    }
    let bits = r.read_bits(width)? as i64;
    // Values above 2^(width-1) are negative (see `bit_range`).
    Some(if bits > 1i64 << (width - 1) {
        bits - (1i64 << width)
    } else {
        bits
    })
}

/// Reads an unsigned varbit.
pub(crate) fn read_varbit_uint(r: &mut BitReader<'_>) -> Option<u64> {
    match read_prefix(r)? {
        None => Some(0),
        Some(64) => r.read_bits_wide(64),
        Some(width) => r.read_bits(width),
    }
}

/// The bucket layout a histogram chunk writes once, before its first sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Layout {
    pub(crate) schema: i32,
    pub(crate) zero_threshold: f64,
    pub(crate) positive_spans: Vec<Span>,
    pub(crate) negative_spans: Vec<Span>,
    pub(crate) custom_values: Vec<f64>,
}

impl Layout {
    pub(crate) fn write(&self, w: &mut BitWriter) {
        put_zero_threshold(w, self.zero_threshold);
        put_varbit_int(w, i64::from(self.schema));
        put_spans(w, &self.positive_spans);
        put_spans(w, &self.negative_spans);
        if m3query_model::histogram::is_custom_buckets_schema(self.schema) {
            put_varbit_uint(w, self.custom_values.len() as u64);
            for &b in &self.custom_values {
                put_custom_bound(w, b);
            }
        }
    }

    pub(crate) fn read(r: &mut BitReader<'_>) -> Result<Self> {
        let short = ChunkError::Corrupt("histogram chunk layout is truncated");
        let zero_threshold = read_zero_threshold(r).ok_or(short.clone())?;
        let schema = read_varbit_int(r).ok_or(short.clone())?;
        let schema =
            i32::try_from(schema).map_err(|_| ChunkError::Corrupt("schema out of range"))?;
        if !m3query_model::histogram::is_known_schema(schema) {
            return Err(ChunkError::Corrupt("unknown histogram schema"));
        }
        let positive_spans = read_spans(r)?;
        let negative_spans = read_spans(r)?;
        let mut custom_values = Vec::new();
        if m3query_model::histogram::is_custom_buckets_schema(schema) {
            let n = read_count(r)?;
            custom_values.reserve(n);
            for _ in 0..n {
                custom_values.push(read_custom_bound(r).ok_or(short.clone())?);
            }
        }
        Ok(Layout {
            schema,
            zero_threshold,
            positive_spans,
            negative_spans,
            custom_values,
        })
    }
}

/// A count read from the stream, refused when larger than the bits left (each item needs at
/// least one bit), so corrupt input cannot make us allocate without bound.
fn read_count(r: &mut BitReader<'_>) -> Result<usize> {
    let n =
        read_varbit_uint(r).ok_or(ChunkError::Corrupt("histogram chunk layout is truncated"))?;
    if n > r.remaining_bits() as u64 {
        return Err(ChunkError::Corrupt(
            "histogram chunk layout count exceeds the data",
        ));
    }
    Ok(n as usize)
}

fn put_spans(w: &mut BitWriter, spans: &[Span]) {
    put_varbit_uint(w, spans.len() as u64);
    for s in spans {
        put_varbit_uint(w, u64::from(s.length));
        put_varbit_int(w, i64::from(s.offset));
    }
}

fn read_spans(r: &mut BitReader<'_>) -> Result<Vec<Span>> {
    let n = read_count(r)?;
    let short = ChunkError::Corrupt("histogram chunk spans are truncated");
    let mut spans = Vec::with_capacity(n);
    for _ in 0..n {
        let length = read_varbit_uint(r).ok_or(short.clone())?;
        let offset = read_varbit_int(r).ok_or(short.clone())?;
        spans.push(Span::new(offset as i32, length as u32));
    }
    Ok(spans)
}

/// Zero thresholds that are powers of two in `[2^-243, 2^10]` take one byte (the binary
/// exponent + 243); 0 is byte 0; anything else is byte 255 and 64 raw bits.
fn put_zero_threshold(w: &mut BitWriter, t: f64) {
    if t == 0.0 {
        w.write_bits(0, 8);
        return;
    }
    match frexp_half_exponent(t) {
        Some(exp) if (-242..=11).contains(&exp) => w.write_bits((exp + 243) as u64, 8),
        _ => {
            w.write_bits(255, 8);
            w.write_bits(t.to_bits(), 64);
        }
    }
}

/// `Some(e)` when `t == 0.5 * 2^e` exactly (Go's `math.Frexp` returning a fraction of 0.5).
fn frexp_half_exponent(t: f64) -> Option<i32> {
    if !t.is_finite() || t <= 0.0 {
        return None;
    }
    let bits = t.to_bits();
    let exp_field = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & ((1u64 << 52) - 1);
    if exp_field == 0 {
        // Subnormal: a power of two when exactly one mantissa bit is set.
        if mantissa.count_ones() != 1 {
            return None;
        }
        let p = mantissa.trailing_zeros() as i32; // t = 2^(p - 1074)
        return Some(p - 1074 + 1);
    }
    if mantissa != 0 {
        return None;
    }
    // t = 2^(exp_field - 1023) = 0.5 * 2^(exp_field - 1022)
    Some(exp_field - 1022)
}

fn read_zero_threshold(r: &mut BitReader<'_>) -> Option<f64> {
    match r.read_bits(8)? {
        0 => Some(0.0),
        255 => r.read_bits_wide(64).map(f64::from_bits),
        b => Some(0.5 * 2f64.powi(b as i32 - 243)),
    }
}

/// Custom bounds that are multiples of 0.001 in `[0, 33554.43]` are stored as the unsigned
/// varbit `bound * 1000 + 1`; others as a zero varbit and 64 raw bits.
fn put_custom_bound(w: &mut BitWriter, f: f64) {
    let tf = f * 1000.0;
    if !(0.0..=33_554_430.0).contains(&tf) || !whole_when_multiplied(f) {
        w.write_bit(false);
        w.write_bits(f.to_bits(), 64);
        return;
    }
    put_varbit_uint(w, tf.round() as u64 + 1);
}

/// Go's `isWholeWhenMultiplied`: `uint(round(f * 1000)) / 1000 == f`.
fn whole_when_multiplied(f: f64) -> bool {
    let i = (f * 1000.0).round();
    if !(0.0..1.8e19).contains(&i) {
        return false;
    }
    (i as u64) as f64 / 1000.0 == f
}

fn read_custom_bound(r: &mut BitReader<'_>) -> Option<f64> {
    match read_varbit_uint(r)? {
        0 => r.read_bits_wide(64).map(f64::from_bits),
        v => Some((v - 1) as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varbit_bucket_edges_round_trip() {
        let mut vals = vec![0i64, i64::MIN, i64::MAX];
        for (_, width) in WIDTHS {
            let half = 1i64 << (width - 1);
            vals.extend([half, half + 1, -(half - 1), -half]);
        }
        let mut w = BitWriter::default();
        for &v in &vals {
            put_varbit_int(&mut w, v);
            put_varbit_uint(&mut w, v as u64);
        }
        let mut r = BitReader::new(&w.buf);
        for &v in &vals {
            assert_eq!(read_varbit_int(&mut r), Some(v));
            assert_eq!(read_varbit_uint(&mut r), Some(v as u64));
        }
    }

    #[test]
    fn varbit_sizes_match_prometheus() {
        // 4 is in the 5-bit bucket, -4 needs the 9-bit one (asymmetric ranges).
        for (v, bits) in [(0i64, 1usize), (4, 5), (-3, 5), (-4, 9), (32, 9), (33, 13)] {
            let mut w = BitWriter::default();
            put_varbit_int(&mut w, v);
            assert_eq!(w.buf.len() * 8 - w.free as usize, bits, "{v}");
        }
    }

    #[test]
    fn zero_threshold_encoding() {
        let one_byte = |t: f64| {
            let mut w = BitWriter::default();
            put_zero_threshold(&mut w, t);
            let mut r = BitReader::new(&w.buf);
            assert_eq!(read_zero_threshold(&mut r), Some(t));
            w.buf.len() == 1
        };
        // The default 2^-128 is byte 116.
        let mut w = BitWriter::default();
        put_zero_threshold(&mut w, 2f64.powi(-128));
        assert_eq!(w.buf, vec![116]);
        assert!(one_byte(0.0));
        assert!(one_byte(1024.0));
        assert!(!one_byte(2048.0));
        assert!(one_byte(2f64.powi(-243)));
        assert!(!one_byte(2f64.powi(-244)));
        assert!(!one_byte(0.001));
    }

    #[test]
    fn custom_bound_encoding() {
        for f in [
            0.0, 0.001, 0.5, 33554.43, 33554.431, -1.0, 0.0001, 1e300, 2.5,
        ] {
            let mut w = BitWriter::default();
            put_custom_bound(&mut w, f);
            let mut r = BitReader::new(&w.buf);
            assert_eq!(read_custom_bound(&mut r), Some(f), "{f}");
        }
    }

    proptest! {
        #[test]
        fn varbits_round_trip(v in prop::collection::vec(any::<i64>(), 0..50)) {
            let mut w = BitWriter::default();
            for &x in &v { put_varbit_int(&mut w, x); put_varbit_uint(&mut w, x as u64); }
            let mut r = BitReader::new(&w.buf);
            for &x in &v {
                prop_assert_eq!(read_varbit_int(&mut r), Some(x));
                prop_assert_eq!(read_varbit_uint(&mut r), Some(x as u64));
            }
        }
    }
}
