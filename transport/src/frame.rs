//! weft's compact binary wire framing, used by the datagram backends (`udp` today).
//!
//! Why a hand-rolled 16-byte header rather than MessagePack or serde: every datagram carries
//! it, so it must be small, fixed-size and decodable without allocating; and a datagram
//! socket accepts bytes from anyone, so the decoder is the first thing hostile or stray
//! traffic meets. It therefore checks a magic number, a wire version and the frame kind
//! before looking at anything else, and it never panics: every malformed input becomes a
//! typed [`DecodeError`] that the backend counts and drops.
//!
//! Layout (little-endian, [`HEADER_LEN`] = 16 bytes, then the payload up to the end of the
//! datagram):
//!
//! | offset | size | field                                  |
//! |-------:|-----:|----------------------------------------|
//! | 0      | 2    | magic, `0x5746` ("WF")                 |
//! | 2      | 1    | version, [`VERSION`] = 1               |
//! | 3      | 1    | kind, see [`FrameKind`]                |
//! | 4      | 8    | cluster id                             |
//! | 12     | 4    | source node id                         |
//!
//! The cluster id keeps two clusters that share a network (or a stale member restarted
//! with another config) from feeding each other frames. The source id is a *claim* made by
//! the sender: nothing on a plain datagram fabric proves it, which is why the `udp` backend
//! does not report `authenticated_source` and the `auth` layer exists.

use crate::{DecodeError, NodeId};

/// The magic number every weft frame starts with: `"WF"` read as a big-endian pair,
/// written little-endian like every other field.
pub const MAGIC: u16 = 0x5746;

/// The wire version this build writes and accepts.
pub const VERSION: u8 = 1;

/// Size of the fixed frame header, in bytes. A datagram carries at most its size minus
/// this much payload.
pub const HEADER_LEN: usize = 16;

/// What a frame carries. The byte is reserved now so that control frames (probes,
/// membership hints) can be added later without a version bump; decoders reject kinds they
/// do not know instead of misreading them as data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// An application message (which may itself be a layer's frame).
    Data = 0,
}

impl FrameKind {
    /// The kind's byte on the wire.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// The kind a wire byte names, or `None` for a byte no kind uses.
    pub fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            0 => Some(FrameKind::Data),
            _ => None,
        }
    }
}

/// The decoded fixed header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: FrameKind,
    /// The cluster the sender belongs to.
    pub cluster: u64,
    /// The node the sender claims to be (unauthenticated on plain datagram fabrics).
    pub source: NodeId,
}

impl FrameHeader {
    /// A data frame header from `source` in `cluster`.
    pub fn data(cluster: u64, source: NodeId) -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Data,
            cluster,
            source,
        }
    }

    /// The header's wire bytes. No allocation: callers that gather header and payload
    /// themselves (or send the same header many times) can use this directly.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        out[2] = VERSION;
        out[3] = self.kind.to_byte();
        out[4..12].copy_from_slice(&self.cluster.to_le_bytes());
        out[12..16].copy_from_slice(&self.source.0.to_le_bytes());
        out
    }
}

/// Encodes a frame into a new buffer sized exactly for it (one allocation).
pub fn encode(header: &FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_into(header, payload, &mut out);
    out
}

/// Appends a frame to `out`. Reusing one `out` across sends (after `clear()`) keeps the hot
/// path free of allocations once the buffer has grown to the largest frame.
pub fn encode_into(header: &FrameHeader, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
}

/// Decodes a frame, returning its header and a borrow of its payload (possibly empty).
///
/// Never panics, whatever `buf` holds: checks run field by field in wire order, so a
/// truncated frame reports the first field that is cut short, and garbage usually fails at
/// the magic number.
pub fn decode(buf: &[u8]) -> Result<(FrameHeader, &[u8]), DecodeError> {
    let magic = u16::from_le_bytes(take::<2>(buf, 0, "magic")?);
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let [version] = take::<1>(buf, 2, "version")?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let [kind_byte] = take::<1>(buf, 3, "kind")?;
    let kind = FrameKind::from_byte(kind_byte).ok_or(DecodeError::UnknownKind {
        layer: "frame",
        kind: kind_byte,
    })?;
    let cluster = u64::from_le_bytes(take::<8>(buf, 4, "cluster id")?);
    let source = NodeId(u32::from_le_bytes(take::<4>(buf, 12, "source id")?));
    // `take` succeeded up to HEADER_LEN, so this slice is in bounds.
    let payload = buf.get(HEADER_LEN..).unwrap_or(&[]);
    Ok((
        FrameHeader {
            kind,
            cluster,
            source,
        },
        payload,
    ))
}

/// Like [`decode`], and also rejects a frame whose cluster id is not `cluster` with
/// [`DecodeError::WrongCluster`]. The rest of the header is validated first, so a frame
/// reported as wrong-cluster is otherwise well formed.
pub fn decode_for(cluster: u64, buf: &[u8]) -> Result<(FrameHeader, &[u8]), DecodeError> {
    let (header, payload) = decode(buf)?;
    if header.cluster != cluster {
        return Err(DecodeError::WrongCluster {
            expected: cluster,
            got: header.cluster,
        });
    }
    Ok((header, payload))
}

/// Reads `N` bytes at `at`, or reports which field was cut short.
fn take<const N: usize>(
    buf: &[u8],
    at: usize,
    field: &'static str,
) -> Result<[u8; N], DecodeError> {
    buf.get(at..)
        .and_then(|rest| rest.get(..N))
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
        .ok_or(DecodeError::Truncated {
            field,
            need: N,
            have: buf.len().saturating_sub(at),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> FrameHeader {
        FrameHeader::data(0x0102_0304_0506_0708, NodeId(0xA0B0_C0D0))
    }

    #[test]
    fn layout_is_little_endian_and_16_bytes() {
        let bytes = encode(&header(), b"hi");
        assert_eq!(bytes.len(), HEADER_LEN + 2);
        assert_eq!(
            &bytes[..HEADER_LEN],
            &[
                0x46, 0x57, // magic 0x5746
                1,    // version
                0,    // kind Data
                0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // cluster
                0xD0, 0xC0, 0xB0, 0xA0, // source
            ]
        );
        assert_eq!(&bytes[HEADER_LEN..], b"hi");
    }

    #[test]
    fn roundtrip_including_empty_payload() {
        for payload in [&b""[..], b"x", &[0u8; 1000][..]] {
            let bytes = encode(&header(), payload);
            let (h, p) = decode(&bytes).unwrap();
            assert_eq!(h, header());
            assert_eq!(p, payload);
        }
    }

    #[test]
    fn encode_into_appends_and_reuses_buffer() {
        let mut buf = Vec::new();
        encode_into(&header(), b"one", &mut buf);
        let first_capacity = buf.capacity();
        buf.clear();
        encode_into(&header(), b"two", &mut buf);
        assert_eq!(buf.capacity(), first_capacity);
        assert_eq!(decode(&buf).unwrap().1, b"two");
    }

    #[test]
    fn empty_input_is_truncated_magic() {
        assert_eq!(
            decode(&[]),
            Err(DecodeError::Truncated {
                field: "magic",
                need: 2,
                have: 0
            })
        );
    }

    #[test]
    fn truncated_header_names_the_field() {
        let bytes = encode(&header(), b"");
        let cases = [
            (1, "magic", 2, 1),
            (2, "version", 1, 0),
            (3, "kind", 1, 0),
            (4, "cluster id", 8, 0),
            (11, "cluster id", 8, 7),
            (12, "source id", 4, 0),
            (15, "source id", 4, 3),
        ];
        for (len, field, need, have) in cases {
            assert_eq!(
                decode(&bytes[..len]),
                Err(DecodeError::Truncated { field, need, have }),
                "len {len}"
            );
        }
    }

    #[test]
    fn bad_magic_version_and_kind() {
        let good = encode(&header(), b"p");

        let mut b = good.clone();
        b[0] = 0xFF;
        assert_eq!(decode(&b), Err(DecodeError::BadMagic(0x57FF)));

        let mut b = good.clone();
        b[2] = 2;
        assert_eq!(decode(&b), Err(DecodeError::UnsupportedVersion(2)));

        let mut b = good.clone();
        b[3] = 9;
        assert_eq!(
            decode(&b),
            Err(DecodeError::UnknownKind {
                layer: "frame",
                kind: 9
            })
        );
    }

    #[test]
    fn decode_for_checks_cluster() {
        let bytes = encode(&FrameHeader::data(7, NodeId(1)), b"p");
        assert!(decode_for(7, &bytes).is_ok());
        assert_eq!(
            decode_for(8, &bytes),
            Err(DecodeError::WrongCluster {
                expected: 8,
                got: 7
            })
        );
        // A malformed frame is reported as malformed, not as another cluster's.
        assert!(matches!(
            decode_for(8, &bytes[..3]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn kind_bytes_roundtrip() {
        assert_eq!(
            FrameKind::from_byte(FrameKind::Data.to_byte()),
            Some(FrameKind::Data)
        );
        assert_eq!(FrameKind::from_byte(1), None);
    }

    proptest! {
        #[test]
        fn prop_roundtrip(cluster: u64, source: u32, payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let h = FrameHeader::data(cluster, NodeId(source));
            let bytes = encode(&h, &payload);
            prop_assert_eq!(bytes.len(), HEADER_LEN + payload.len());
            let (got, p) = decode_for(cluster, &bytes).unwrap();
            prop_assert_eq!(got, h);
            prop_assert_eq!(p, &payload[..]);
        }

        #[test]
        fn prop_random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            match decode(&buf) {
                Ok((_, payload)) => {
                    // Only a header that passed every check decodes.
                    prop_assert!(buf.len() >= HEADER_LEN);
                    prop_assert_eq!(buf[0..2].to_vec(), MAGIC.to_le_bytes().to_vec());
                    prop_assert_eq!(buf[2], VERSION);
                    prop_assert_eq!(payload.len(), buf.len() - HEADER_LEN);
                }
                Err(DecodeError::Truncated { need, have, .. }) => prop_assert!(have < need),
                Err(DecodeError::BadMagic(m)) => prop_assert_ne!(m, MAGIC),
                Err(DecodeError::UnsupportedVersion(v)) => prop_assert_ne!(v, VERSION),
                Err(DecodeError::UnknownKind { layer, kind }) => {
                    prop_assert_eq!(layer, "frame");
                    prop_assert!(FrameKind::from_byte(kind).is_none());
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }

        #[test]
        fn prop_valid_prefix_random_bytes_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..64),
            keep in 0usize..4,
        ) {
            // Random bytes behind a partly valid prefix reach the later checks too.
            let mut buf = encode(&header(), b"")[..keep].to_vec();
            buf.extend_from_slice(&tail);
            let _ = decode(&buf);
            let _ = decode_for(1, &buf);
        }

        #[test]
        fn prop_every_truncation_is_typed(cluster: u64, source: u32, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let h = FrameHeader::data(cluster, NodeId(source));
            let bytes = encode(&h, &payload);
            for len in 0..bytes.len() {
                let result = decode(&bytes[..len]);
                if len < HEADER_LEN {
                    let is_truncated = matches!(result, Err(DecodeError::Truncated { .. }));
                    prop_assert!(is_truncated, "len {}: {:?}", len, result);
                } else {
                    let (got, p) = result.unwrap();
                    prop_assert_eq!(got, h);
                    prop_assert_eq!(p, &payload[..len - HEADER_LEN]);
                }
            }
        }
    }
}
