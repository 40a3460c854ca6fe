//! The two Thrift wire protocols Jaeger speaks, write side only: compact (agent UDP, port 6831)
//! and binary (collector HTTP, and the agent's port 6832).
//!
//! We encode the six structs of Jaeger's IDL ourselves rather than through the `thrift`
//! crate: the encoder is a few dozen lines per protocol, writes straight into a reused
//! `Vec<u8>` (no `TOutputProtocol` trait objects or transports), and lets the agent exporter
//! pre-encode every span on its own and know its exact size before it packs datagrams. Tests
//! decode the output with the `thrift` crate's protocol readers, so the two implementations
//! check each other.

/// The field and element types our IDL uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TType {
    Bool,
    I32,
    I64,
    Double,
    String,
    Struct,
    List,
}

/// A Thrift protocol writer over a byte buffer.
pub(crate) trait Protocol {
    fn buf(&mut self) -> &mut Vec<u8>;
    fn struct_begin(&mut self);
    /// Writes the stop field and leaves the struct.
    fn struct_end(&mut self);
    fn field_begin(&mut self, ttype: TType, id: i16);
    fn list_begin(&mut self, elem: TType, len: usize);
    fn write_i32(&mut self, v: i32);
    fn write_i64(&mut self, v: i64);
    fn write_double(&mut self, v: f64);
    fn write_bytes(&mut self, v: &[u8]);
    /// A bool struct field (the compact protocol folds the value into the field header).
    fn field_bool(&mut self, id: i16, v: bool);

    fn field_i32(&mut self, id: i16, v: i32) {
        self.field_begin(TType::I32, id);
        self.write_i32(v);
    }
    fn field_i64(&mut self, id: i16, v: i64) {
        self.field_begin(TType::I64, id);
        self.write_i64(v);
    }
    fn field_double(&mut self, id: i16, v: f64) {
        self.field_begin(TType::Double, id);
        self.write_double(v);
    }
    fn field_str(&mut self, id: i16, v: &str) {
        self.field_begin(TType::String, id);
        self.write_bytes(v.as_bytes());
    }
}

// ------------------------------------------------------------------------------ compact

/// Thrift's compact protocol (THRIFT-110): zigzag varints, field-id deltas, little-endian
/// doubles.
pub(crate) struct Compact<'a> {
    buf: &'a mut Vec<u8>,
    last_field: i16,
    stack: Vec<i16>,
}

/// The compact protocol's id and version byte, then `ONEWAY` (4) in the top three bits of the
/// version byte.
const COMPACT_PROTOCOL_ID: u8 = 0x82;
const COMPACT_VERSION: u8 = 1;
const MESSAGE_ONEWAY: u8 = 4;

impl<'a> Compact<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>) -> Self {
        Compact {
            buf,
            last_field: 0,
            stack: Vec::new(),
        }
    }

    fn type_id(t: TType) -> u8 {
        match t {
            // In a list or a non-field position a bool is type 1 (its value is a byte).
            TType::Bool => 1,
            TType::I32 => 5,
            TType::I64 => 6,
            TType::Double => 7,
            TType::String => 8,
            TType::List => 9,
            TType::Struct => 12,
        }
    }

    /// A oneway message header: `emitBatch` and friends.
    pub(crate) fn message_begin_oneway(&mut self, name: &str, seq_id: i32) {
        self.buf.push(COMPACT_PROTOCOL_ID);
        self.buf.push((MESSAGE_ONEWAY << 5) | COMPACT_VERSION);
        write_varint(self.buf, u64::from(seq_id as u32));
        self.write_bytes(name.as_bytes());
    }

    fn field_header(&mut self, type_id: u8, id: i16) {
        let delta = i32::from(id) - i32::from(self.last_field);
        if (1..=15).contains(&delta) {
            self.buf.push(((delta as u8) << 4) | type_id);
        } else {
            self.buf.push(type_id);
            write_varint(self.buf, zigzag32(i32::from(id)));
        }
        self.last_field = id;
    }
}

impl Protocol for Compact<'_> {
    fn buf(&mut self) -> &mut Vec<u8> {
        self.buf
    }
    fn struct_begin(&mut self) {
        self.stack.push(self.last_field);
        self.last_field = 0;
    }
    fn struct_end(&mut self) {
        self.buf.push(0);
        self.last_field = self.stack.pop().unwrap_or(0);
    }
    fn field_begin(&mut self, ttype: TType, id: i16) {
        self.field_header(Self::type_id(ttype), id);
    }
    fn field_bool(&mut self, id: i16, v: bool) {
        self.field_header(if v { 1 } else { 2 }, id);
    }
    fn list_begin(&mut self, elem: TType, len: usize) {
        let t = Self::type_id(elem);
        if len < 15 {
            self.buf.push(((len as u8) << 4) | t);
        } else {
            self.buf.push(0xf0 | t);
            write_varint(self.buf, len as u64);
        }
    }
    fn write_i32(&mut self, v: i32) {
        write_varint(self.buf, zigzag32(v));
    }
    fn write_i64(&mut self, v: i64) {
        write_varint(self.buf, zigzag64(v));
    }
    fn write_double(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn write_bytes(&mut self, v: &[u8]) {
        write_varint(self.buf, v.len() as u64);
        self.buf.extend_from_slice(v);
    }
}

fn zigzag32(v: i32) -> u64 {
    u64::from(((v << 1) ^ (v >> 31)) as u32)
}

fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn write_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

// ------------------------------------------------------------------------------- binary

/// Thrift's binary protocol: big-endian fixed-width integers, i16 field ids.
pub(crate) struct Binary<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Binary<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>) -> Self {
        Binary { buf }
    }

    fn type_id(t: TType) -> u8 {
        match t {
            TType::Bool => 2,
            TType::Double => 4,
            TType::I32 => 8,
            TType::I64 => 10,
            TType::String => 11,
            TType::Struct => 12,
            TType::List => 15,
        }
    }
}

impl Protocol for Binary<'_> {
    fn buf(&mut self) -> &mut Vec<u8> {
        self.buf
    }
    fn struct_begin(&mut self) {}
    fn struct_end(&mut self) {
        self.buf.push(0);
    }
    fn field_begin(&mut self, ttype: TType, id: i16) {
        self.buf.push(Self::type_id(ttype));
        self.buf.extend_from_slice(&id.to_be_bytes());
    }
    fn field_bool(&mut self, id: i16, v: bool) {
        self.field_begin(TType::Bool, id);
        self.buf.push(u8::from(v));
    }
    fn list_begin(&mut self, elem: TType, len: usize) {
        self.buf.push(Self::type_id(elem));
        self.buf
            .extend_from_slice(&i32::try_from(len).unwrap_or(i32::MAX).to_be_bytes());
    }
    fn write_i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn write_i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn write_double(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_bits().to_be_bytes());
    }
    fn write_bytes(&mut self, v: &[u8]) {
        self.buf
            .extend_from_slice(&i32::try_from(v.len()).unwrap_or(i32::MAX).to_be_bytes());
        self.buf.extend_from_slice(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag() {
        for (v, want) in [(0u64, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3)] {
            let mut b = Vec::new();
            write_varint(&mut b, v);
            assert_eq!(b.len(), want, "{v}");
        }
        assert_eq!(zigzag64(0), 0);
        assert_eq!(zigzag64(-1), 1);
        assert_eq!(zigzag64(1), 2);
        assert_eq!(zigzag64(i64::MIN), u64::MAX);
        assert_eq!(zigzag32(-2), 3);
    }

    #[test]
    fn compact_field_deltas_and_long_ids() {
        let mut b = Vec::new();
        let mut p = Compact::new(&mut b);
        p.struct_begin();
        p.field_i32(1, 5);
        p.field_bool(2, true);
        p.field_i64(20, -1);
        p.struct_end();
        // delta 1 i32 (0x15) zigzag(5)=10; delta 1 bool-true (0x11); delta 18 -> long form:
        // type 6, zigzag(20)=40; zigzag(-1)=1; stop.
        assert_eq!(b, vec![0x15, 10, 0x11, 0x06, 40, 1, 0]);
    }
}
