//! Recovery: reads every segment, replays its records, and decides what a damaged byte
//! means (a torn tail to drop, or corruption that refuses to start).
//!
//! Nothing on disk is changed until the whole directory has been read and judged: a
//! directory that refuses to start is left exactly as it was found.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::record::{
    find_valid_after, parse_at, Batch, Head, Parsed, Record, SegmentHeader, FORMAT_VERSION,
    HEADER_LEN,
};
use super::{io_error, segment_name, Segment, StorageError};
use crate::{Entry, HardState, Index, Term};

/// The log as replayed so far.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// The latest hard state.
    pub hard: HardState,
    /// The latest snapshot (index, term).
    pub snapshot: Option<(Index, Term)>,
    /// The stored entries, contiguous, after the snapshot and after `unknown_to`.
    pub entries: VecDeque<Entry>,
    /// Entries in `(base, unknown_to]` were written to segments that no longer exist (the
    /// first remaining segment's head says they existed). Legitimately deleted segments
    /// only hold entries that a later snapshot covers, so recovery refuses to start if
    /// any of these is still needed at the end.
    unknown_to: Index,
    /// Whether a head record has been seen.
    started: bool,
    /// The highest entry index written in the segment being replayed.
    seg_max: Option<Index>,
}

impl Replay {
    fn base(&self) -> Index {
        self.snapshot.map_or(0, |s| s.0)
    }

    /// The last index of the log, snapshot included.
    pub fn last_index(&self) -> Index {
        self.entries
            .back()
            .map_or(self.base().max(self.unknown_to), |e| e.index)
    }

    /// Applies one record; the error says why the record cannot follow what came before.
    fn apply(&mut self, record: Record, first_in_segment: bool) -> Result<(), String> {
        match (record, first_in_segment) {
            (Record::Head(h), true) => self.apply_head(h),
            (Record::Head(_), false) => Err("head record in the middle of a segment".into()),
            (Record::Batch(_), true) => Err("segment does not start with a head record".into()),
            (Record::Batch(b), false) => self.apply_batch(b),
        }
    }

    fn apply_head(&mut self, h: Head) -> Result<(), String> {
        if !self.started {
            self.started = true;
            self.snapshot = h.snapshot;
            self.hard = h.hard;
            self.unknown_to = h.last_index;
            return Ok(());
        }
        let here = Head {
            snapshot: self.snapshot,
            hard: self.hard,
            last_index: self.last_index(),
        };
        if here != h {
            return Err(format!(
                "segment head {h:?} disagrees with the log before it {here:?}"
            ));
        }
        Ok(())
    }

    fn apply_batch(&mut self, b: Batch) -> Result<(), String> {
        if let Some(m) = b.snapshot {
            if m.index < self.base() {
                return Err(format!(
                    "snapshot at {} goes back before the snapshot at {}",
                    m.index,
                    self.base()
                ));
            }
            if m.keep_suffix {
                while self.entries.front().is_some_and(|e| e.index <= m.index) {
                    self.entries.pop_front();
                }
            } else {
                self.entries.clear();
                self.unknown_to = 0;
            }
            self.snapshot = Some((m.index, m.term));
        }
        if let Some(from) = b.truncate_from {
            while self.entries.back().is_some_and(|e| e.index >= from) {
                self.entries.pop_back();
            }
            self.unknown_to = self.unknown_to.min(from.saturating_sub(1));
        }
        for e in b.entries {
            let expected = self.last_index().saturating_add(1);
            if e.index != expected {
                return Err(format!(
                    "entry {} where entry {expected} was expected",
                    e.index
                ));
            }
            self.seg_max = Some(e.index);
            self.entries.push_back(e);
        }
        if let Some(h) = b.hard {
            self.hard = h;
        }
        Ok(())
    }
}

/// A change recovery makes once the directory has been judged sound.
#[derive(Debug)]
pub(crate) enum Repair {
    /// Cut a torn tail off the last segment.
    Truncate {
        /// The segment.
        path: PathBuf,
        /// The new length.
        len: u64,
    },
    /// Remove a last segment whose header was torn while it was being created.
    Remove {
        /// The segment.
        path: PathBuf,
    },
}

/// What the segments hold.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The replayed log.
    pub replay: Replay,
    /// The segments that remain after repairs, oldest first.
    pub segments: Vec<Segment>,
    /// Changes to make before writing.
    pub repairs: Vec<Repair>,
}

/// Reads and replays the segments `segs` (sorted by sequence number) of `dir`.
pub(crate) fn replay_segments(
    dir: &Path,
    cluster: u64,
    node: u32,
    segs: &[(u64, PathBuf)],
) -> Result<Recovered, StorageError> {
    for w in segs.windows(2) {
        if w[1].0 != w[0].0.saturating_add(1) {
            return Err(StorageError::MissingSegment {
                path: dir.join(segment_name(w[0].0.saturating_add(1))),
            });
        }
    }
    let mut replay = Replay::default();
    let mut segments = Vec::new();
    let mut repairs = Vec::new();
    for (i, (seq, path)) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        let data = fs::read(path).map_err(io_error(path))?;
        let header = match SegmentHeader::decode(&data) {
            Ok(h) => h,
            // A crash while the newest segment was being created (before its header and
            // head were synced) leaves a header that does not check out and no record.
            Err(reason) if last && (i > 0 || *seq == 1) => {
                if let Some(at) = find_valid_after(&data, 0) {
                    return Err(corrupt(
                        0,
                        format!("{reason}, yet a valid record follows at offset {at}"),
                    ));
                }
                warn!(
                    file = %path.display(),
                    offset = 0,
                    bytes = data.len(),
                    reason = %reason,
                    "dropping the newest log segment: its header was torn while it was created"
                );
                repairs.push(Repair::Remove { path: path.clone() });
                break;
            }
            Err(reason) => return Err(corrupt(0, reason.into())),
        };
        if header.version != FORMAT_VERSION {
            return Err(StorageError::UnsupportedVersion {
                path: path.clone(),
                found: header.version,
            });
        }
        if header.cluster != cluster || header.node != node {
            return Err(StorageError::WrongIdentity {
                path: path.clone(),
                cluster,
                node,
                found_cluster: header.cluster,
                found_node: header.node,
            });
        }
        if header.seq != *seq {
            return Err(corrupt(
                24,
                format!(
                    "header says segment {} but the file name says {seq}",
                    header.seq
                ),
            ));
        }
        replay.seg_max = None;
        let mut off = HEADER_LEN;
        let mut first = true;
        let mut torn = None;
        loop {
            match parse_at(&data, off) {
                Parsed::End => break,
                Parsed::Record(record, len) => {
                    replay
                        .apply(record, first)
                        .map_err(|reason| corrupt(off, reason))?;
                    first = false;
                    off += len;
                }
                // Space the newest segment reserved ahead of the log's end, never written.
                Parsed::Bad(_) if last && data[off..].iter().all(|&b| b == 0) => break,
                Parsed::Bad(reason) if !last => {
                    return Err(corrupt(
                        off,
                        format!("{reason} (segment {seq} was sealed by a later segment)"),
                    ));
                }
                Parsed::Bad(reason) => {
                    if let Some(at) = find_valid_after(&data, off + 1) {
                        return Err(corrupt(
                            off,
                            format!("{reason}, yet a valid record follows at offset {at}"),
                        ));
                    }
                    torn = Some(reason);
                    break;
                }
            }
        }
        if first {
            // Header and head are written and synced together when a segment is created:
            // a segment without its head was never complete, and only the newest can be.
            if !(last && (i > 0 || *seq == 1)) {
                return Err(corrupt(HEADER_LEN, "segment has no head record".into()));
            }
            warn!(
                file = %path.display(),
                offset = 0,
                bytes = data.len(),
                reason = %torn.as_deref().unwrap_or("no record"),
                "dropping the newest log segment: it was torn while it was created"
            );
            repairs.push(Repair::Remove { path: path.clone() });
            break;
        }
        if let Some(reason) = torn {
            warn!(
                file = %path.display(),
                offset = off,
                bytes = data.len() - off,
                reason = %reason,
                "truncating a torn or corrupt log tail"
            );
            repairs.push(Repair::Truncate {
                path: path.clone(),
                len: off as u64,
            });
        }
        segments.push(Segment {
            seq: *seq,
            path: path.clone(),
            bytes: off as u64,
            max_index: replay.seg_max,
        });
    }
    if replay.unknown_to > replay.base() {
        return Err(StorageError::MissingEntries {
            dir: dir.to_path_buf(),
            from: replay.base() + 1,
            to: replay.unknown_to,
        });
    }
    Ok(Recovered {
        replay,
        segments,
        repairs,
    })
}

#[cfg(test)]
mod tests {
    use super::super::record::SnapMark;
    use super::*;
    use crate::Payload;

    fn e(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Empty,
        }
    }

    fn batch(entries: Vec<Entry>) -> Record {
        Record::Batch(Batch {
            snapshot: None,
            truncate_from: entries.first().map(|e| e.index),
            entries,
            hard: None,
        })
    }

    fn head(snapshot: Option<(Index, Term)>, last_index: Index) -> Record {
        Record::Head(Head {
            snapshot,
            hard: HardState::default(),
            last_index,
        })
    }

    #[test]
    fn replay_truncates_and_snapshots() {
        let mut r = Replay::default();
        r.apply(head(None, 0), true).unwrap();
        r.apply(batch((1..=5).map(|i| e(i, 1)).collect()), false)
            .unwrap();
        r.apply(batch(vec![e(3, 2)]), false).unwrap();
        assert_eq!(r.last_index(), 3);
        let snap = |index, keep_suffix| {
            Record::Batch(Batch {
                snapshot: Some(SnapMark {
                    index,
                    term: 1,
                    keep_suffix,
                }),
                truncate_from: None,
                entries: vec![],
                hard: None,
            })
        };
        r.apply(snap(2, true), false).unwrap();
        assert_eq!(r.entries, vec![e(3, 2)]);
        assert!(r.apply(snap(1, true), false).is_err());
        r.apply(snap(2, false), false).unwrap();
        assert!(r.entries.is_empty());
        assert!(r.apply(batch(vec![e(4, 2)]), false).is_err());
        r.apply(batch(vec![e(3, 2)]), false).unwrap();
        r.apply(head(Some((2, 1)), 3), true).unwrap();
        assert!(r.apply(head(Some((2, 1)), 4), true).is_err());
        assert!(r.apply(head(None, 0), false).is_err());
    }

    #[test]
    fn entries_before_the_first_segment_must_be_covered() {
        let mut r = Replay::default();
        r.apply(head(Some((10, 1)), 20), true).unwrap();
        assert_eq!(r.last_index(), 20);
        r.apply(batch(vec![e(21, 1)]), false).unwrap();
        assert_eq!(r.unknown_to, 20);
        r.apply(batch(vec![e(15, 2)]), false).unwrap();
        assert_eq!(r.unknown_to, 14);
        assert_eq!(r.entries, vec![e(15, 2)]);
    }
}
