//! Protobuf wire-format primitives over byte slices.
//!
//! Just enough of the encoding to walk OTLP messages field by field without building them:
//! varints, keys, and the four wire types proto3 uses. Every read is bounds-checked and
//! returns [`WireError`] instead of panicking, because the bytes come straight off the network.

use thiserror::Error;

/// Why a byte sequence is not a well-formed protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("truncated message: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("varint longer than 10 bytes at offset {offset}")]
    VarintOverflow { offset: usize },
    #[error("unsupported wire type {wire_type} for field {field} at offset {offset}")]
    BadWireType {
        field: u32,
        wire_type: u8,
        offset: usize,
    },
    #[error("field number 0 at offset {offset}")]
    ZeroField { offset: usize },
    #[error("field {field} has wire type {got}, expected {expected}")]
    UnexpectedWireType { field: u32, got: u8, expected: u8 },
    #[error("field {field} is not valid UTF-8")]
    InvalidUtf8 { field: u32 },
}

pub const WIRE_VARINT: u8 = 0;
pub const WIRE_FIXED64: u8 = 1;
pub const WIRE_LEN: u8 = 2;
pub const WIRE_FIXED32: u8 = 5;

/// One field as it appears on the wire; `Len` borrows its payload from the message buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

impl<'a> FieldValue<'a> {
    pub fn wire_type(&self) -> u8 {
        match self {
            FieldValue::Varint(_) => WIRE_VARINT,
            FieldValue::Fixed64(_) => WIRE_FIXED64,
            FieldValue::Len(_) => WIRE_LEN,
            FieldValue::Fixed32(_) => WIRE_FIXED32,
        }
    }

    pub fn as_len(&self, field: u32) -> Result<&'a [u8], WireError> {
        match *self {
            FieldValue::Len(b) => Ok(b),
            other => Err(WireError::UnexpectedWireType {
                field,
                got: other.wire_type(),
                expected: WIRE_LEN,
            }),
        }
    }

    pub fn as_varint(&self, field: u32) -> Result<u64, WireError> {
        match *self {
            FieldValue::Varint(v) => Ok(v),
            other => Err(WireError::UnexpectedWireType {
                field,
                got: other.wire_type(),
                expected: WIRE_VARINT,
            }),
        }
    }

    pub fn as_fixed64(&self, field: u32) -> Result<u64, WireError> {
        match *self {
            FieldValue::Fixed64(v) => Ok(v),
            other => Err(WireError::UnexpectedWireType {
                field,
                got: other.wire_type(),
                expected: WIRE_FIXED64,
            }),
        }
    }

    pub fn as_fixed32(&self, field: u32) -> Result<u32, WireError> {
        match *self {
            FieldValue::Fixed32(v) => Ok(v),
            other => Err(WireError::UnexpectedWireType {
                field,
                got: other.wire_type(),
                expected: WIRE_FIXED32,
            }),
        }
    }

    pub fn as_str(&self, field: u32) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.as_len(field)?).map_err(|_| WireError::InvalidUtf8 { field })
    }
}

/// Iterates the top-level fields of one message. Stops at the first malformed field.
pub struct FieldReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> FieldReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        FieldReader { buf, pos: 0 }
    }

    /// Offset of the next unread byte, for slicing whole fields out of the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// A varint. Keys and most lengths take one or two bytes: those are read inline, the
    /// rest out of line (every span field goes through here; a call per field was a third
    /// of the receive path's scan).
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        match self.buf.get(self.pos..) {
            Some(&[b0, ..]) if b0 < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b0))
            }
            Some(&[b0, b1, ..]) if b1 < 0x80 => {
                self.pos += 2;
                Ok(u64::from(b0 & 0x7f) | (u64::from(b1) << 7))
            }
            _ => self.varint_slow(),
        }
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, WireError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(WireError::Truncated {
                    offset: self.pos,
                    needed: 1,
                });
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::VarintOverflow { offset: start })
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        match self.buf.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(out) => {
                self.pos += n;
                Ok(out)
            }
            None => Err(self.truncated(n)),
        }
    }

    #[cold]
    #[inline(never)]
    fn truncated(&self, n: usize) -> WireError {
        WireError::Truncated {
            offset: self.pos,
            needed: n.saturating_sub(self.buf.len() - self.pos),
        }
    }

    /// Skips the fields that follow while they are `field` with wire type LEN: the rest of a
    /// run of a repeated message (a span's attributes, events, links), unread. A run is one
    /// predictable loop instead of a dispatch per field (the field-number and wire-type jump
    /// tables mispredicted at every field in the scan's profile). Stops before the first
    /// other field, and before a malformed one, which the next read reports.
    #[inline(always)]
    pub fn skip_run(&mut self, field: u32) {
        let tag = (field << 3) | u32::from(WIRE_LEN);
        debug_assert!(tag < 0x80, "a one-byte tag");
        let tag = tag as u8;
        while self.buf.get(self.pos) == Some(&tag) {
            let start = self.pos;
            self.pos += 1;
            let len = self
                .varint()
                .map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            match len {
                Ok(len) if len <= self.buf.len() - self.pos => self.pos += len,
                _ => {
                    self.pos = start;
                    return;
                }
            }
        }
    }

    /// The next `(field number, value)`, `None` at the end of the message.
    #[inline(always)]
    pub fn next_field(&mut self) -> Option<Result<(u32, FieldValue<'a>), WireError>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        Some(self.read_field())
    }

    #[inline(always)]
    fn read_field(&mut self) -> Result<(u32, FieldValue<'a>), WireError> {
        let offset = self.pos;
        let key = self.varint()?;
        let field = (key >> 3) as u32;
        let wire_type = (key & 0x7) as u8;
        if field == 0 {
            return Err(WireError::ZeroField { offset });
        }
        let value = match wire_type {
            WIRE_LEN => {
                let len = self.varint()?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                FieldValue::Len(self.take(len)?)
            }
            WIRE_VARINT => FieldValue::Varint(self.varint()?),
            WIRE_FIXED64 => {
                let b = self.take(8)?;
                FieldValue::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes taken")))
            }
            WIRE_FIXED32 => {
                let b = self.take(4)?;
                FieldValue::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes taken")))
            }
            other => {
                return Err(WireError::BadWireType {
                    field,
                    wire_type: other,
                    offset,
                });
            }
        };
        Ok((field, value))
    }
}

impl<'a> Iterator for FieldReader<'a> {
    type Item = Result<(u32, FieldValue<'a>), WireError>;
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        let item = self.next_field();
        if matches!(item, Some(Err(_))) {
            // A malformed field poisons the rest of the message: stop after reporting it.
            self.pos = self.buf.len();
        }
        item
    }
}

/// Bytes a varint of `value` takes.
pub fn varint_len(value: u64) -> usize {
    prost::encoding::encoded_len_varint(value)
}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// Writes a length-delimited field whose payload is `payload`.
pub fn put_len_field(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Size of a length-delimited field with a payload of `payload_len` bytes.
pub fn len_field_size(field: u32, payload_len: usize) -> usize {
    varint_len(u64::from(field) << 3) + varint_len(payload_len as u64) + payload_len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_at_boundaries() {
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_key(&mut out, 1, WIRE_VARINT);
            put_varint(&mut out, v);
            let mut r = FieldReader::new(&out);
            assert_eq!(r.next().unwrap().unwrap(), (1, FieldValue::Varint(v)));
            assert!(r.next().is_none());
            assert_eq!(out.len(), 1 + varint_len(v));
        }
    }

    #[test]
    fn truncated_len_field_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        put_len_field(&mut out, 3, b"hello");
        out.truncate(out.len() - 2);
        let mut r = FieldReader::new(&out);
        assert!(matches!(r.next(), Some(Err(WireError::Truncated { .. }))));
        assert!(r.next().is_none(), "reader stops after an error");
    }

    #[test]
    fn group_wire_types_are_rejected() {
        let buf = [(1 << 3) | 3u8];
        let mut r = FieldReader::new(&buf);
        assert!(matches!(
            r.next(),
            Some(Err(WireError::BadWireType { wire_type: 3, .. }))
        ));
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let buf = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        let mut r = FieldReader::new(&buf);
        assert!(matches!(
            r.next(),
            Some(Err(WireError::VarintOverflow { .. }))
        ));
    }
}
