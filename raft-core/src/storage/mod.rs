//! Durable storage for a Raft node: a write-ahead log of segment files plus snapshot
//! files, with the persistence semantics of the simulator's in-memory disk.
//!
//! [`DiskStorage::open`] recovers a [`Persisted`] to start a [`RawNode`](crate::RawNode)
//! from; [`DiskStorage::persist`] takes each `Ready`'s snapshot, entries and hard state;
//! [`DiskStorage::compact`] records local snapshots. It implements the node runtime's
//! [`LogStore`](crate::node::LogStore).
//!
//! # Files
//!
//! A data directory belongs to one node of one cluster and holds:
//!
//! - `wal-<seq, 16 hex digits>.log`: log segments, numbered consecutively from 1. Only
//!   the newest one is written; a new one is started once the current one has reached
//!   [`StorageOptions::segment_bytes`] (a soft limit: a record is never split).
//! - `snap-<index>-<term>.snap` (16 hex digits each): the snapshot the log names, and
//!   briefly an older one until the log naming the new one is synced.
//! - `snap-*.snap.tmp`: a snapshot being written; removed on open.
//!
//! Other files are ignored.
//!
//! # Segment format
//!
//! All integers are little-endian. A segment starts with a 36-byte header:
//! `magic "WEFTWAL\0"`, `version u32 (= 1)`, `node id u32`, `cluster id u64`,
//! `sequence number u64`, `crc32c u32` of the 32 bytes before it. Records follow, each
//! `[len u32][crc32c u32 of (type byte + payload)][type u8][payload: len bytes]`, the
//! payload being MessagePack (rmp-serde):
//!
//! - type 1, *head*: the first record of every segment, `(snapshot (index, term)?, hard
//!   state, last log index)` as of the segment's creation. Because every segment restates
//!   the hard state and the snapshot marker, old segments can be deleted outright.
//! - type 2, *batch*: one `persist` (or `compact`) call, `(snapshot marker?, truncate
//!   from?, entries, hard state?)`. The snapshot marker records what the snapshot did to
//!   the stored log, resolved when it was written: keep the entries after its index (the
//!   stored entry at its index had its term, or the snapshot was made locally), or drop
//!   all of them. `truncate from i` drops stored entries `>= i` before the entries are
//!   appended: suffix replacement is a record in the log, durable and checksummed like any
//!   other write, and no file is ever rewritten in place. Because a whole Ready is one
//!   record, a crash leaves either all of it or none of it.
//!
//! Hard state is therefore written atomically (inside a checksummed record); the newest
//! valid record that carries one wins.
//!
//! The newest segment reserves file space ahead of its last record
//! ([`StorageOptions::preallocate_bytes`]) and writes each record at the log's end, not
//! the file's: a sync then need not commit a new file length. In the newest segment,
//! zeros from a record boundary to the end of the file are that unused reservation; a
//! segment is cut back to its last record before the next one is created, so older
//! segments end at a record.
//!
//! # Snapshots
//!
//! A snapshot is written to `*.snap.tmp`, fsynced, renamed to its final name, and the
//! directory fsynced, before the batch naming it is appended to the log; the previous
//! snapshot file is deleted only once that batch is synced. Snapshot files carry the same
//! cluster and node id, a length and a crc32c.
//!
//! # Group commit
//!
//! [`DiskStorage::write`] only buffers (and hands large buffers to the OS); one
//! [`DiskStorage::sync`] (`fdatasync`) makes everything written since the last one
//! durable. [`DiskStorage::persist`] is one write and one sync. After any I/O error the
//! storage refuses further calls ([`StorageError::Poisoned`]): what reached the disk is
//! unknown, and reopening recovers it.
//!
//! # Recovery
//!
//! [`DiskStorage::open`] reads every segment in order and replays its records:
//!
//! - A bad record (short, checksum mismatch, undecodable) in the *newest* segment with no
//!   valid record anywhere after it is a torn tail: it is truncated, with a
//!   `tracing::warn!` naming the file, offset and number of bytes dropped. A newest segment
//!   whose header or head record is torn (a crash while it was created, before anything
//!   in it was synced) is removed the same way. Zeros from a record boundary to the end
//!   of the newest segment are its reserved space: the log ends there, and they stay.
//! - A bad record followed by any valid record, or a bad record in an older segment
//!   (older segments are synced before the next one is created), refuses to start with
//!   [`StorageError::Corrupt`] naming the file and offset: an acknowledged write is never
//!   dropped silently.
//! - Segments of another cluster or node refuse with [`StorageError::WrongIdentity`]; a
//!   gap in segment numbers, entries missing before the first segment, or a missing
//!   snapshot file refuse as well.
//!
//! Nothing on disk changes until the whole directory has been judged sound. Old segments
//! are deleted oldest first, fsyncing the directory after each, so a crash cannot leave a
//! gap in the sequence.
//!
//! # Limitations
//!
//! - The directory is not locked: two processes must not open it at once.
//! - A bad record followed by bytes that happen to parse as a valid record (for instance a
//!   torn record whose payload embeds a framed record) refuses to start rather than
//!   guessing: it errs on the side of never losing a write.
//! - A file system that persists unsynced pages out of order could leave a torn write
//!   followed by a later valid unsynced record; that too refuses to start.
//! - Only segments entirely covered by the snapshot are deleted; the active segment stays
//!   until the log rolls over.

mod active;
mod record;
mod recover;
mod snapshot;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use tracing::{debug, info};

pub use self::active::preallocate;
use self::active::ActiveFile;
use self::record::{
    encode_batch, encode_head, BatchRef, EncodeError, Head, SegmentHeader, SnapMark,
    FORMAT_VERSION, HEADER_LEN,
};
use crate::{Entry, HardState, Index, NodeId, Persisted, Snapshot, Term};

/// Buffered bytes above which a write hands them to the OS without waiting for a sync.
const FLUSH_BYTES: usize = 1 << 20;

/// Settings of a [`DiskStorage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageOptions {
    /// Size at which the log rolls over to a new segment file (default 64 MiB).
    pub segment_bytes: u64,
    /// How much file space the newest segment reserves ahead of its end at a time
    /// (`fallocate`; default 8 MiB, never past `segment_bytes`; 0 turns it off). A sync
    /// of a write into reserved space need not commit a new file size, which makes it
    /// cheaper; the log goes on without reserving where the file system refuses.
    pub preallocate_bytes: u64,
}

impl Default for StorageOptions {
    fn default() -> StorageOptions {
        StorageOptions {
            segment_bytes: 64 << 20,
            preallocate_bytes: 8 << 20,
        }
    }
}

/// Why storage could not open, write or sync.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file operation failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Damaged data that is not a torn tail: the node refuses to start.
    #[error("{}: corrupt at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The data directory belongs to another cluster or node.
    #[error(
        "{} belongs to cluster {found_cluster:#x} node {found_node}, not to cluster {cluster:#x} node {node}",
        path.display()
    )]
    WrongIdentity {
        /// The file whose header says so.
        path: PathBuf,
        /// The cluster id asked for.
        cluster: u64,
        /// The node id asked for.
        node: u32,
        /// The cluster id in the file.
        found_cluster: u64,
        /// The node id in the file.
        found_node: u32,
    },
    /// A file written by another format version.
    #[error("{}: unsupported format version {found} (this build reads {FORMAT_VERSION})", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Segment numbers are not consecutive: a segment file was lost.
    #[error("log segment {} is missing", path.display())]
    MissingSegment {
        /// The missing segment's path.
        path: PathBuf,
    },
    /// Entries the log needs were in segments that are gone.
    #[error("entries {from}..={to} are missing from the log in {} (a segment was lost)", dir.display())]
    MissingEntries {
        /// The data directory.
        dir: PathBuf,
        /// First missing index.
        from: Index,
        /// Last missing index.
        to: Index,
    },
    /// The log names a snapshot whose file is gone.
    #[error("the log names snapshot {}, which is missing", path.display())]
    MissingSnapshot {
        /// The snapshot file's path.
        path: PathBuf,
    },
    /// Entries given to `persist` are not contiguous or leave a gap after the stored log.
    #[error(
        "entries must be contiguous and start at or before index {expected}, got index {found}"
    )]
    NonContiguous {
        /// The highest index that could come next.
        expected: Index,
        /// The index given.
        found: Index,
    },
    /// A snapshot older than the stored one.
    #[error("snapshot at index {index} is older than the stored snapshot at index {current}")]
    StaleSnapshot {
        /// The snapshot's index.
        index: Index,
        /// The stored snapshot's index.
        current: Index,
    },
    /// A record too large for its 32-bit length field.
    #[error("a record of {0} bytes is too large for one log record")]
    TooLarge(usize),
    /// A record or snapshot could not be encoded.
    #[error("cannot encode for the log: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// An earlier write or sync failed; reopen the storage to recover.
    #[error("an earlier write or sync failed: reopen the storage")]
    Poisoned,
}

impl From<EncodeError> for StorageError {
    fn from(e: EncodeError) -> StorageError {
        match e {
            EncodeError::Encode(e) => StorageError::Encode(e),
            EncodeError::TooLarge(n) => StorageError::TooLarge(n),
        }
    }
}

/// Maps an `io::Error` on `path` to a [`StorageError::Io`].
pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// The file name of segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log")
}

/// Exactly 16 hex digits.
pub(crate) fn parse_hex16(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn parse_segment_name(name: &str) -> Option<u64> {
    parse_hex16(name.strip_prefix("wal-")?.strip_suffix(".log")?)
}

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Its sequence number.
    pub seq: u64,
    /// Its path.
    pub path: PathBuf,
    /// Where its log ends (bytes still buffered included); the newest segment's file may
    /// be longer, by the space it reserved.
    pub bytes: u64,
    /// The highest entry index written to it.
    pub max_index: Option<Index>,
}

/// The write-ahead log and snapshots of one node; see the [module docs](self).
pub struct DiskStorage {
    dir: PathBuf,
    cluster_id: u64,
    node: NodeId,
    opts: StorageOptions,
    /// Oldest first; the last one is being written.
    segments: Vec<Segment>,
    /// The last segment, opened for writing at its end.
    active: ActiveFile,
    /// Written but not yet handed to the OS.
    buf: Vec<u8>,
    hard: HardState,
    snapshot: Option<(Index, Term)>,
    /// Terms of the stored entries `base + 1 ..`, where `base` is the snapshot's index.
    terms: VecDeque<Term>,
    /// Snapshot files to delete once the log no longer names them durably.
    stale_snapshots: Vec<PathBuf>,
    poisoned: bool,
}

impl fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStorage")
            .field("dir", &self.dir)
            .field("cluster_id", &self.cluster_id)
            .field("node", &self.node)
            .field("segments", &self.segments.len())
            .field("snapshot", &self.snapshot)
            .field("last_index", &self.last_index())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl DiskStorage {
    /// Opens (creating if empty) the data directory; returns the storage and what was
    /// recovered: the hard state, the snapshot, and the contiguous entries after it.
    ///
    /// Refuses to start, changing nothing, if the directory belongs to another cluster or
    /// node or holds corruption other than a torn tail (see the [module docs](self)).
    pub fn open(
        dir: &Path,
        cluster_id: u64,
        node: NodeId,
        opts: StorageOptions,
    ) -> Result<(DiskStorage, Persisted), StorageError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mut segs = Vec::new();
        let mut snaps = Vec::new();
        let mut temps = Vec::new();
        for item in fs::read_dir(dir).map_err(io_error(dir))? {
            let item = item.map_err(io_error(dir))?;
            let Ok(name) = item.file_name().into_string() else {
                continue;
            };
            if let Some(seq) = parse_segment_name(&name) {
                segs.push((seq, item.path()));
            } else if snapshot::parse_name(&name).is_some() {
                snaps.push(item.path());
            } else if snapshot::is_temp_name(&name) {
                temps.push(item.path());
            }
        }
        segs.sort();
        let rec = recover::replay_segments(dir, cluster_id, node.0, &segs)?;
        let mut segments = rec.segments;
        let replay = rec.replay;
        if segments.is_empty() && !snaps.is_empty() {
            return Err(StorageError::Corrupt {
                path: snaps[0].clone(),
                offset: 0,
                reason: "a snapshot file but no log segment".into(),
            });
        }
        let snapshot = match replay.snapshot {
            None => None,
            Some((index, term)) => {
                let path = dir.join(snapshot::file_name(index, term));
                if !path.exists() {
                    return Err(StorageError::MissingSnapshot { path });
                }
                let snap = snapshot::read(&path, cluster_id, node.0)?;
                if (snap.meta.index, snap.meta.term) != (index, term) {
                    return Err(StorageError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!(
                            "holds the snapshot at ({}, {}), not ({index}, {term})",
                            snap.meta.index, snap.meta.term
                        ),
                    });
                }
                Some(snap)
            }
        };

        // The directory is sound: repair torn tails, remove leftovers.
        for repair in rec.repairs {
            match repair {
                recover::Repair::Truncate { path, len } => {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_error(&path))?;
                    f.set_len(len).map_err(io_error(&path))?;
                    f.sync_all().map_err(io_error(&path))?;
                }
                recover::Repair::Remove { path } => {
                    fs::remove_file(&path).map_err(io_error(&path))?;
                    sync_dir(dir)?;
                }
            }
        }
        let current = replay
            .snapshot
            .map(|(i, t)| dir.join(snapshot::file_name(i, t)));
        let mut removed = false;
        for path in snaps.iter().chain(&temps) {
            if Some(path) != current.as_ref() {
                debug!(file = %path.display(), "removing a snapshot file the log does not name");
                fs::remove_file(path).map_err(io_error(path))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(dir)?;
        }

        let active = match segments.last() {
            Some(seg) => ActiveFile::open(&seg.path, seg.bytes, &opts)?,
            None => {
                let head = Head {
                    snapshot: None,
                    hard: HardState::default(),
                    last_index: 0,
                };
                let (active, seg) = create_segment(dir, cluster_id, node, 1, &head, &opts)?;
                segments.push(seg);
                active
            }
        };
        let entries: Vec<Entry> = replay.entries.into_iter().collect();
        info!(
            dir = %dir.display(),
            segments = segments.len(),
            snapshot = ?replay.snapshot,
            entries = entries.len(),
            "opened the log"
        );
        let storage = DiskStorage {
            dir: dir.to_path_buf(),
            cluster_id,
            node,
            opts,
            segments,
            active,
            buf: Vec::new(),
            hard: replay.hard,
            snapshot: replay.snapshot,
            terms: entries.iter().map(|e| e.term).collect(),
            stale_snapshots: Vec::new(),
            poisoned: false,
        };
        let persisted = Persisted {
            hard_state: replay.hard,
            snapshot,
            entries,
        };
        Ok((storage, persisted))
    }

    /// Persists one Ready's durable parts in the right order and syncs once: the snapshot
    /// from the leader (stored entries after it are kept only if the stored entry at its
    /// index has its term, else all stored entries are discarded), then the entries (an
    /// entry at index `i` replaces every stored entry `>= i`), then the hard state.
    pub fn persist(
        &mut self,
        hard: Option<HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        self.write(hard, snapshot, entries)?;
        self.sync()
    }

    /// Like [`persist`](Self::persist) without the sync: the write is buffered and becomes
    /// durable, together with every other write since, at the next [`sync`](Self::sync)
    /// (a snapshot file itself is written durably at once). Until then a crash may lose it,
    /// but never half of it.
    ///
    /// Entries must be contiguous and start at most one past the stored log (after the
    /// snapshot, if any); entries at or below the snapshot's index are not stored.
    pub fn write(
        &mut self,
        hard: Option<HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        self.usable()?;
        let mark = match snapshot {
            Some(s) => {
                self.check_not_stale(s)?;
                Some(SnapMark {
                    index: s.meta.index,
                    term: s.meta.term,
                    keep_suffix: self.term_at(s.meta.index) == Some(s.meta.term),
                })
            }
            None => None,
        };
        let (base_after, last_after) = match mark {
            Some(m) if m.keep_suffix => (m.index, self.last_index()),
            Some(m) => (m.index, m.index),
            None => (self.base(), self.last_index()),
        };
        if let Some(first) = entries.first() {
            if first.index == 0 || first.index > last_after.saturating_add(1) {
                return Err(StorageError::NonContiguous {
                    expected: last_after.saturating_add(1),
                    found: first.index,
                });
            }
            for w in entries.windows(2) {
                if w[1].index != w[0].index.saturating_add(1) {
                    return Err(StorageError::NonContiguous {
                        expected: w[0].index.saturating_add(1),
                        found: w[1].index,
                    });
                }
            }
        }
        if hard.is_none() && snapshot.is_none() && entries.is_empty() {
            return Ok(());
        }
        let stored = &entries[entries.partition_point(|e| e.index <= base_after)..];
        let result = self.write_batch(
            snapshot,
            mark,
            entries.first().map(|e| e.index),
            stored,
            hard,
        );
        self.poison_on_error(result)
    }

    /// Makes everything written since the last sync durable with one `fdatasync`, then
    /// deletes what that made obsolete (older snapshot files, segments the snapshot covers).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.usable()?;
        let result = self.sync_io();
        self.poison_on_error(result)
    }

    /// Records a snapshot the application made locally, durably: stored entries up to its
    /// index may be dropped (whole segments are deleted once fully covered), the suffix
    /// stays. Syncs, so everything written before is durable too.
    pub fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.usable()?;
        self.check_not_stale(snapshot)?;
        let result = snapshot::write(&self.dir, self.cluster_id, self.node.0, snapshot)
            .and_then(|_| self.mark_local_snapshot(snapshot))
            .and_then(|()| self.sync_io());
        self.poison_on_error(result)
    }

    /// Records a local snapshot whose file is already durable in the data directory
    /// (written from another thread, so that a large state does not hold up the log's
    /// syncs): like [`DiskStorage::compact`] without writing the file, durable at the next
    /// sync. If a newer snapshot was stored meanwhile (installed from the leader), the file
    /// is only removed.
    pub fn compact_written(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.usable()?;
        if self.check_not_stale(snapshot).is_err() {
            let name = snapshot::file_name(snapshot.meta.index, snapshot.meta.term);
            self.stale_snapshots.push(self.dir.join(name));
            return Ok(());
        }
        let result = self.mark_local_snapshot(snapshot);
        self.poison_on_error(result)
    }

    /// Writes the marker of a local snapshot whose file exists: entries up to its index
    /// may go, the suffix stays.
    fn mark_local_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let mark = SnapMark {
            index: snapshot.meta.index,
            term: snapshot.meta.term,
            keep_suffix: true,
        };
        self.write_batch(None, Some(mark), None, &[], None)
    }

    /// Refuses to go on after a failed write or sync: what reached the disk is unknown
    /// then, and only reopening (recovery) can say.
    fn usable(&self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    /// Passes `result` on, poisoning the store if it is a failure of the disk.
    fn poison_on_error<T>(&mut self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Bytes of log: the records in the segment files, writes not yet synced included;
    /// neither reserved file space nor snapshot files.
    pub fn log_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last index of the stored log (the snapshot's index if no entry follows it).
    pub fn last_index(&self) -> Index {
        self.base() + self.terms.len() as u64
    }

    fn base(&self) -> Index {
        self.snapshot.map_or(0, |s| s.0)
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        let offset = index.checked_sub(self.base())?.checked_sub(1)?;
        self.terms.get(usize::try_from(offset).ok()?).copied()
    }

    fn check_not_stale(&self, s: &Snapshot) -> Result<(), StorageError> {
        if s.meta.index < self.base() {
            return Err(StorageError::StaleSnapshot {
                index: s.meta.index,
                current: self.base(),
            });
        }
        Ok(())
    }

    /// Writes the snapshot file, then buffers one batch record and applies it in memory.
    fn write_batch(
        &mut self,
        snapshot: Option<&Snapshot>,
        mark: Option<SnapMark>,
        truncate_from: Option<Index>,
        entries: &[Entry],
        hard: Option<HardState>,
    ) -> Result<(), StorageError> {
        if let Some(s) = snapshot {
            snapshot::write(&self.dir, self.cluster_id, self.node.0, s)?;
        }
        if self.segments.last().map_or(0, |s| s.bytes) >= self.opts.segment_bytes {
            self.roll()?;
        }
        let before = self.buf.len();
        let batch = BatchRef {
            snapshot: mark,
            truncate_from,
            entries,
            hard,
        };
        encode_batch(&batch, &mut self.buf)?;
        let written = (self.buf.len() - before) as u64;

        if let Some(m) = mark {
            let name = snapshot::file_name(m.index, m.term);
            if let Some((i, t)) = self.snapshot {
                if (i, t) != (m.index, m.term) {
                    self.stale_snapshots
                        .push(self.dir.join(snapshot::file_name(i, t)));
                }
            }
            self.stale_snapshots.retain(|p| !p.ends_with(&name));
            if m.keep_suffix {
                let drop = (m.index - self.base()).min(self.terms.len() as u64);
                self.terms.drain(..drop as usize);
            } else {
                self.terms.clear();
            }
            self.snapshot = Some((m.index, m.term));
        }
        if let Some(from) = truncate_from {
            match from.checked_sub(self.base() + 1) {
                Some(keep) => self
                    .terms
                    .truncate(usize::try_from(keep).unwrap_or(usize::MAX)),
                None => self.terms.clear(),
            }
        }
        self.terms.extend(entries.iter().map(|e| e.term));
        if let Some(h) = hard {
            self.hard = h;
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.bytes += written;
            if let Some(last) = entries.last() {
                seg.max_index = Some(seg.max_index.map_or(last.index, |m| m.max(last.index)));
            }
        }
        if self.buf.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the buffer to the OS.
    fn flush(&mut self) -> Result<(), StorageError> {
        if !self.buf.is_empty() {
            self.active.append(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn sync_io(&mut self) -> Result<(), StorageError> {
        self.flush()?;
        self.active.sync()?;
        self.cleanup()
    }

    /// Deletes what the synced log made obsolete. Only called right after a sync.
    fn cleanup(&mut self) -> Result<(), StorageError> {
        let removed_snapshots = !self.stale_snapshots.is_empty();
        while let Some(path) = self.stale_snapshots.pop() {
            match fs::remove_file(&path) {
                Ok(()) => debug!(file = %path.display(), "removed an old snapshot"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path)(e)),
            }
        }
        if removed_snapshots {
            sync_dir(&self.dir)?;
        }
        let base = self.base();
        while self.segments.len() > 1 && self.segments[0].max_index.is_none_or(|m| m <= base) {
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).map_err(io_error(&seg.path))?;
            // One directory sync per deletion keeps them in order: no gap after a crash.
            sync_dir(&self.dir)?;
            debug!(file = %seg.path.display(), bytes = seg.bytes, "removed a compacted log segment");
        }
        Ok(())
    }

    /// Seals the current segment (cut to its last record, synced) and starts the next.
    fn roll(&mut self) -> Result<(), StorageError> {
        self.flush()?;
        self.active.seal()?;
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let head = Head {
            snapshot: self.snapshot,
            hard: self.hard,
            last_index: self.last_index(),
        };
        let (active, seg) = create_segment(
            &self.dir,
            self.cluster_id,
            self.node,
            seq,
            &head,
            &self.opts,
        )?;
        debug!(file = %seg.path.display(), "started a new log segment");
        self.active = active;
        self.segments.push(seg);
        Ok(())
    }
}

/// Creates segment `seq` with its header and head record and its first reserved space,
/// durably.
fn create_segment(
    dir: &Path,
    cluster_id: u64,
    node: NodeId,
    seq: u64,
    head: &Head,
    opts: &StorageOptions,
) -> Result<(ActiveFile, Segment), StorageError> {
    let path = dir.join(segment_name(seq));
    let header = SegmentHeader {
        version: FORMAT_VERSION,
        node: node.0,
        cluster: cluster_id,
        seq,
    };
    let mut bytes = Vec::with_capacity(HEADER_LEN + 64);
    bytes.extend_from_slice(&header.encode());
    encode_head(head, &mut bytes)?;
    let mut active = ActiveFile::create(&path, opts)?;
    active.append(&bytes)?;
    active.sync_all()?;
    sync_dir(dir)?;
    let seg = Segment {
        seq,
        path,
        bytes: bytes.len() as u64,
        max_index: None,
    };
    Ok((active, seg))
}

impl crate::node::LogStore for DiskStorage {
    fn persist(
        &mut self,
        hard: Option<HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), String> {
        DiskStorage::persist(self, hard, snapshot, entries).map_err(|e| e.to_string())
    }

    fn compact(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        DiskStorage::compact(self, snapshot).map_err(|e| e.to_string())
    }

    fn write(
        &mut self,
        hard: Option<HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), String> {
        DiskStorage::write(self, hard, snapshot, entries).map_err(|e| e.to_string())
    }

    fn sync(&mut self) -> Result<(), String> {
        DiskStorage::sync(self).map_err(|e| e.to_string())
    }

    fn snapshot_writer(&self) -> Option<crate::node::SnapshotWriter> {
        let (dir, cluster, node) = (self.dir.clone(), self.cluster_id, self.node.0);
        Some(std::sync::Arc::new(move |s: &Snapshot| {
            snapshot::write(&dir, cluster, node, s)
                .map(drop)
                .map_err(|e| e.to_string())
        }))
    }

    fn compact_written(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        DiskStorage::compact_written(self, snapshot).map_err(|e| e.to_string())
    }
}
