//! Bounds-checked reading and writing of header fields, shared by every layer so that no
//! decoder indexes a slice directly (and so none can panic on bytes from the wire).

use bytes::{BufMut, Bytes, BytesMut};

use crate::DecodeError;

/// Reads little-endian fields off the front of a frame, failing with
/// [`DecodeError::Truncated`] instead of panicking.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    fn take(&mut self, field: &'static str, need: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < need {
            return Err(DecodeError::Truncated {
                field,
                need,
                have: self.buf.len(),
            });
        }
        Ok(self.buf.split_to(need))
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(field, 1)?[0])
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(field, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(field, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }

    /// An unsigned LEB128 integer of at most 10 bytes.
    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.u8(field)?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(DecodeError::Invalid {
                    field,
                    reason: "varint overflows 64 bits",
                });
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Invalid {
            field,
            reason: "varint longer than 10 bytes",
        })
    }

    pub(crate) fn bytes(&mut self, field: &'static str, len: usize) -> Result<Bytes, DecodeError> {
        self.take(field, len)
    }

    /// Everything not read yet.
    pub(crate) fn rest(self) -> Bytes {
        self.buf
    }
}

/// Appends `v` as unsigned LEB128.
pub(crate) fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// A new frame: `header_len` bytes of room for a header written by `header`, then `body`.
/// One allocation and one copy of the body: the price every layer of the full stack pays,
/// and the fast path pays once.
pub(crate) fn prepend(header_len: usize, body: &[u8], header: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(header_len + body.len());
    header(&mut buf);
    buf.extend_from_slice(body);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_roundtrips(v in any::<u64>()) {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            let mut r = Reader::new(b.freeze());
            prop_assert_eq!(r.varint("v").unwrap(), v);
            prop_assert!(r.rest().is_empty());
        }

        #[test]
        fn readers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let mut r = Reader::new(Bytes::from(bytes));
            let _ = r.varint("a");
            let _ = r.u64("b");
            let _ = r.u32("c");
            let _ = r.u8("d");
        }
    }

    #[test]
    fn truncation_is_typed() {
        let mut r = Reader::new(Bytes::from_static(&[1, 2, 3]));
        assert_eq!(
            r.u64("seq"),
            Err(DecodeError::Truncated {
                field: "seq",
                need: 8,
                have: 3
            })
        );
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let mut r = Reader::new(Bytes::from(vec![0xff; 11]));
        assert!(matches!(r.varint("v"), Err(DecodeError::Invalid { .. })));
    }
}
