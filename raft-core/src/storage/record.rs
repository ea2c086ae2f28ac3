//! Framing of log segments: the segment header and checksummed records.
//!
//! Nothing here does I/O; parsing works on a segment's bytes in memory and never panics,
//! whatever the bytes are.

use serde::{Deserialize, Serialize};

use crate::{Entry, HardState, Index, Term};

/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"WEFTWAL\0";
/// Version of the segment and snapshot file formats.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Length of a segment header: magic, version, node, cluster, seq, crc32c.
pub(crate) const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8 + 4;
/// Length of a record's frame before its payload: len, crc32c, type.
pub(crate) const FRAME_LEN: usize = 4 + 4 + 1;

/// Record type of a [`Head`].
const TYPE_HEAD: u8 = 1;
/// Record type of a [`Batch`].
const TYPE_BATCH: u8 = 2;
/// First payload byte of a head: a MessagePack array of its 3 fields.
const HEAD_ARRAY: u8 = 0x93;
/// First payload byte of a batch: a MessagePack array of its 4 fields.
const BATCH_ARRAY: u8 = 0x94;

/// The header that opens every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// Format version.
    pub version: u32,
    /// The node the directory belongs to.
    pub node: u32,
    /// The cluster the directory belongs to.
    pub cluster: u64,
    /// The segment's sequence number (also in its file name).
    pub seq: u64,
}

impl SegmentHeader {
    /// The header's bytes, checksum included.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.node.to_le_bytes());
        b[16..24].copy_from_slice(&self.cluster.to_le_bytes());
        b[24..32].copy_from_slice(&self.seq.to_le_bytes());
        let crc = crc32c::crc32c(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads a header from the start of `buf`; the error says what is wrong.
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, &'static str> {
        let Some(b) = buf.get(..HEADER_LEN) else {
            return Err("file shorter than a segment header");
        };
        if b[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic");
        }
        if crc32c::crc32c(&b[..32]) != le_u32(&b[32..36]) {
            return Err("segment header checksum mismatch");
        }
        Ok(SegmentHeader {
            version: le_u32(&b[8..12]),
            node: le_u32(&b[12..16]),
            cluster: le_u64(&b[16..24]),
            seq: le_u64(&b[24..32]),
        })
    }
}

/// The first record of every segment: the state as of the segment's creation, so that
/// older segments can be deleted without losing the hard state or the snapshot marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Head {
    /// The snapshot in force (index, term), if any.
    pub snapshot: Option<(Index, Term)>,
    /// The hard state in force.
    pub hard: HardState,
    /// The last index of the log (snapshot included) when the segment was created.
    pub last_index: Index,
}

/// What a snapshot did to the stored log, resolved when it was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapMark {
    /// The snapshot's last index.
    pub index: Index,
    /// The term of that entry.
    pub term: Term,
    /// `true`: stored entries after `index` stay; `false`: every stored entry goes.
    pub keep_suffix: bool,
}

/// One `persist` (or `compact`) call, applied atomically on recovery: snapshot marker,
/// then truncation, then entries, then hard state.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct Batch {
    /// A snapshot installed by this call.
    pub snapshot: Option<SnapMark>,
    /// Stored entries at this index and above are dropped before `entries` are appended.
    pub truncate_from: Option<Index>,
    /// Entries to append, contiguous, each after the snapshot.
    pub entries: Vec<Entry>,
    /// The new hard state.
    pub hard: Option<HardState>,
}

/// The borrowed twin of [`Batch`] used for encoding (same fields, same order).
#[derive(Serialize)]
pub(crate) struct BatchRef<'a> {
    pub snapshot: Option<SnapMark>,
    pub truncate_from: Option<Index>,
    pub entries: &'a [Entry],
    pub hard: Option<HardState>,
}

/// A decoded record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// A segment's opening state.
    Head(Head),
    /// One persisted batch.
    Batch(Batch),
}

/// Errors that can occur while framing a record.
#[derive(Debug)]
pub(crate) enum EncodeError {
    /// The payload could not be serialized.
    Encode(rmp_serde::encode::Error),
    /// The payload does not fit the 32-bit length field.
    TooLarge(usize),
}

/// Appends a framed head record to `out`.
pub(crate) fn encode_head(head: &Head, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let payload = rmp_serde::to_vec(head).map_err(EncodeError::Encode)?;
    frame(TYPE_HEAD, &payload, out)
}

/// Appends a framed batch record to `out`.
pub(crate) fn encode_batch(batch: &BatchRef<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let payload = rmp_serde::to_vec(batch).map_err(EncodeError::Encode)?;
    frame(TYPE_BATCH, &payload, out)
}

/// `[len u32 LE][crc32c u32 LE of (type, payload)][type u8][payload]`.
fn frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let len = u32::try_from(payload.len()).map_err(|_| EncodeError::TooLarge(payload.len()))?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload);
    out.reserve(FRAME_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    Ok(())
}

/// The outcome of reading one record.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A valid record and its framed length.
    Record(Record, usize),
    /// The buffer ends exactly here.
    End,
    /// The bytes here are not a valid record; the string says why.
    Bad(String),
}

/// Reads the record that starts at `off` in `buf`.
pub(crate) fn parse_at(buf: &[u8], off: usize) -> Parsed {
    let Some(rest) = buf.get(off..) else {
        return Parsed::Bad("offset past end of file".into());
    };
    if rest.is_empty() {
        return Parsed::End;
    }
    if rest.len() < FRAME_LEN {
        return Parsed::Bad(format!("{} bytes, shorter than a record frame", rest.len()));
    }
    let len = le_u32(&rest[0..4]) as usize;
    let crc = le_u32(&rest[4..8]);
    let Some(body) = FRAME_LEN.checked_add(len).and_then(|end| rest.get(8..end)) else {
        return Parsed::Bad(format!(
            "record length {len} runs past the end of the file ({} bytes left)",
            rest.len() - FRAME_LEN
        ));
    };
    // Cheap checks before the checksum, so that scanning garbage for a valid record stays
    // linear in practice: a known type, and the MessagePack array its struct encodes to.
    let array = match body[0] {
        TYPE_HEAD => HEAD_ARRAY,
        TYPE_BATCH => BATCH_ARRAY,
        other => return Parsed::Bad(format!("unknown record type {other}")),
    };
    if body.get(1) != Some(&array) {
        return Parsed::Bad(format!(
            "record of type {} has a malformed payload",
            body[0]
        ));
    }
    if crc32c::crc32c(body) != crc {
        return Parsed::Bad(format!("checksum mismatch in a record of length {len}"));
    }
    let payload = &body[1..];
    let record = if body[0] == TYPE_HEAD {
        rmp_serde::from_slice(payload).map(Record::Head)
    } else {
        rmp_serde::from_slice(payload).map(Record::Batch)
    };
    match record {
        Ok(r) => Parsed::Record(r, FRAME_LEN + len),
        Err(e) => Parsed::Bad(format!("record payload does not decode: {e}")),
    }
}

/// The first offset at or after `from` where a valid record starts, if any.
///
/// Used after a bad record: if any valid record follows it, the bad one is not a torn tail.
pub(crate) fn find_valid_after(buf: &[u8], from: usize) -> Option<usize> {
    // A record's type byte is not zero, so none starts after the last non-zero byte (a
    // torn tail in reserved space is followed by megabytes of zeros).
    let last = buf.iter().rposition(|&b| b != 0)?;
    (from..=last).find(|&o| matches!(parse_at(buf, o), Parsed::Record(..)))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Payload;
    use bytes::Bytes;

    fn batch(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_batch(
            &BatchRef {
                snapshot: Some(SnapMark {
                    index: 3,
                    term: 2,
                    keep_suffix: true,
                }),
                truncate_from: entries.first().map(|e| e.index),
                entries,
                hard: Some(HardState {
                    term: 5,
                    vote: None,
                    commit: 4,
                }),
            },
            &mut out,
        )
        .unwrap();
        out
    }

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Command(Bytes::from(vec![index as u8; 7])),
        }
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            version: FORMAT_VERSION,
            node: 7,
            cluster: 0xdead_beef,
            seq: 42,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        for i in 0..HEADER_LEN {
            let mut d = b;
            d[i] ^= 0x10;
            assert!(SegmentHeader::decode(&d).is_err(), "byte {i}");
            assert!(SegmentHeader::decode(&b[..i]).is_err());
        }
    }

    #[test]
    fn records_round_trip() {
        let entries = vec![entry(4, 2), entry(5, 3)];
        let mut buf = batch(&entries);
        let head = Head {
            snapshot: Some((9, 1)),
            hard: HardState::default(),
            last_index: 12,
        };
        encode_head(&head, &mut buf).unwrap();
        let Parsed::Record(Record::Batch(b), n) = parse_at(&buf, 0) else {
            panic!("batch expected")
        };
        assert_eq!(b.entries, entries);
        assert_eq!(b.truncate_from, Some(4));
        assert_eq!(b.snapshot.map(|s| s.index), Some(3));
        let Parsed::Record(Record::Head(h), m) = parse_at(&buf, n) else {
            panic!("head expected")
        };
        assert_eq!(h, head);
        assert!(matches!(parse_at(&buf, n + m), Parsed::End));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_caught() {
        let buf = batch(&[entry(4, 2)]);
        for cut in 1..buf.len() {
            assert!(
                matches!(parse_at(&buf[..cut], 0), Parsed::Bad(_)),
                "cut {cut}"
            );
        }
        for bit in 0..buf.len() * 8 {
            let mut d = buf.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(matches!(parse_at(&d, 0), Parsed::Bad(_)), "bit {bit}");
        }
    }

    #[test]
    fn scanning_large_garbage_stays_fast() {
        // Pseudo-random bytes, as a torn tail of application data might be.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let buf: Vec<u8> = (0..2 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let t = std::time::Instant::now();
        assert_eq!(find_valid_after(&buf, 0), None);
        assert!(t.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn a_valid_record_after_garbage_is_found() {
        let mut buf = vec![0u8; 20];
        buf.extend_from_slice(&[0xff; 13]);
        let at = buf.len();
        buf.extend(batch(&[entry(1, 1)]));
        assert_eq!(find_valid_after(&buf, 0), Some(at));
        assert_eq!(find_valid_after(&buf, at + 1), None);
    }
}
