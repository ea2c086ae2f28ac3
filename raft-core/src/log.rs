//! The in-memory view of the replicated log: the snapshot point, the entries after it,
//! and how far they are persisted, committed and applied.
//!
//! The core keeps every entry since the last snapshot in memory; the runtime persists
//! what [`crate::Ready`] hands it and tells the core with `advance`. Entries past `stable`
//! are not yet durable and are exactly what a crash may lose.

use crate::types::{Entry, Index, Snapshot, Term};

/// Why the leader's entries did not fit after `prev_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    /// The term of our entry at `prev_index`, or 0 if our log is shorter.
    pub term: Term,
    /// The first index we hold of that term, or our last index + 1 if shorter.
    pub index: Index,
}

/// The replicated log of one node.
#[derive(Debug, Clone)]
pub struct RaftLog {
    /// Index of the last entry folded into the snapshot (0: none).
    snap_index: Index,
    /// Term of that entry.
    snap_term: Term,
    /// Entries `snap_index + 1 ..`.
    entries: Vec<Entry>,
    /// Highest index known committed.
    pub committed: Index,
    /// Highest index handed to the application.
    pub applied: Index,
    /// Highest index on stable storage.
    pub stable: Index,
    /// Highest index handed to storage (at least `stable`): with asynchronous persistence
    /// entries between the two are being written, and are not handed out again.
    pub taken: Index,
    /// The entries the last compaction or snapshot install let go of, until
    /// [`RaftLog::take_released`] takes them (or the next one replaces them).
    released: Vec<Entry>,
}

impl RaftLog {
    /// A log restored from what was persisted: a snapshot point and the entries after it.
    pub fn restore(
        snap_index: Index,
        snap_term: Term,
        entries: Vec<Entry>,
        committed: Index,
    ) -> RaftLog {
        let mut log = RaftLog {
            snap_index,
            snap_term,
            entries: Vec::new(),
            committed: snap_index,
            applied: snap_index,
            stable: snap_index,
            taken: snap_index,
            released: Vec::new(),
        };
        for e in entries {
            if e.index == log.last_index() + 1 {
                log.entries.push(e);
            }
        }
        log.stable = log.last_index();
        log.taken = log.stable;
        log.committed = committed.clamp(snap_index, log.last_index());
        log
    }

    /// Index of the last entry (the snapshot point if none follow it).
    pub fn last_index(&self) -> Index {
        self.snap_index + self.entries.len() as Index
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snap_term, |e| e.term)
    }

    /// The first index still held as an entry.
    pub fn first_index(&self) -> Index {
        self.snap_index + 1
    }

    /// The snapshot point.
    pub fn snapshot_point(&self) -> (Index, Term) {
        (self.snap_index, self.snap_term)
    }

    /// The term of the entry at `index`, if known (compacted entries are not, except the
    /// snapshot point itself).
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snap_index {
            return Some(self.snap_term);
        }
        if index < self.snap_index {
            return None;
        }
        self.entries
            .get((index - self.snap_index - 1) as usize)
            .map(|e| e.term)
    }

    /// The last index at or below `at_most` whose entry has `term`, if we hold one. Terms
    /// only grow along the log, so the search stops at the first smaller term.
    pub fn last_index_of_term(&self, term: Term, at_most: Index) -> Option<Index> {
        let mut i = at_most.min(self.last_index());
        while i >= self.first_index() {
            match self.term(i)? {
                t if t == term => return Some(i),
                t if t < term => return None,
                _ => i -= 1,
            }
        }
        None
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snap_index {
            return None;
        }
        self.entries.get((index - self.snap_index - 1) as usize)
    }

    /// Entries from `lo` up to `hi` inclusive, at most `max_entries` of them, stopping
    /// early once `max_bytes` is passed (at least one entry is returned when any is
    /// available), and their [`Entry::size`]s summed. Only what is returned is cloned, so
    /// the cost follows the smaller limit.
    pub fn slice(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: usize,
        max_entries: usize,
    ) -> (Vec<Entry>, usize) {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = lo.max(self.first_index());
        while i <= hi.min(self.last_index()) && out.len() < max_entries {
            let e = self.entry(i).expect("within bounds");
            if !out.is_empty() && bytes + e.size() > max_bytes {
                break;
            }
            bytes += e.size();
            out.push(e.clone());
            i += 1;
        }
        (out, bytes)
    }

    /// Whether a candidate's log (`last_index`, `last_term`) is at least as up to date as
    /// ours (§5.4.1).
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends an entry created by this node as leader.
    pub fn append_local(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.entries.push(entry);
    }

    /// Appends a leader's entries after (`prev_index`, `prev_term`), truncating a conflicting
    /// suffix. Returns the last index now known to match the leader's log.
    pub fn append_from_leader(
        &mut self,
        prev_index: Index,
        prev_term: Term,
        entries: &[Entry],
    ) -> Result<Index, Conflict> {
        if prev_index < self.snap_index {
            // Entries up to the snapshot are committed and therefore match; skip them.
            let skip = entries
                .iter()
                .take_while(|e| e.index <= self.snap_index)
                .count();
            return self.append_from_leader(self.snap_index, self.snap_term, &entries[skip..]);
        }
        match self.term(prev_index) {
            None => {
                return Err(Conflict {
                    term: 0,
                    index: self.last_index() + 1,
                })
            }
            Some(t) if t != prev_term => {
                let mut first = prev_index;
                while first > self.first_index() && self.term(first - 1) == Some(t) {
                    first -= 1;
                }
                return Err(Conflict {
                    term: t,
                    index: first,
                });
            }
            Some(_) => {}
        }
        for (i, e) in entries.iter().enumerate() {
            match self.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    // A conflict can only be in the uncommitted suffix (Log Matching).
                    debug_assert!(
                        e.index > self.committed,
                        "truncating committed entry {}",
                        e.index
                    );
                    if e.index <= self.committed {
                        tracing::error!(
                            index = e.index,
                            "leader tried to overwrite a committed entry; ignored"
                        );
                        return Ok(prev_index);
                    }
                    self.entries
                        .truncate((e.index - self.snap_index - 1) as usize);
                    self.stable = self.stable.min(e.index - 1);
                    self.taken = self.taken.min(e.index - 1);
                    self.entries.extend_from_slice(&entries[i..]);
                    break;
                }
                None => {
                    self.entries.extend_from_slice(&entries[i..]);
                    break;
                }
            }
        }
        Ok(prev_index + entries.len() as Index)
    }

    /// Entries not yet handed to storage.
    pub fn unstable(&self) -> Vec<Entry> {
        self.slice(self.taken + 1, self.last_index(), usize::MAX, usize::MAX)
            .0
    }

    /// Entries committed but not yet handed to the application, at most `max` of them
    /// (the rest come with the next call), so that applying a long committed stretch
    /// does not hold one pass of the node for its whole length.
    pub fn to_apply(&self, max: usize) -> Vec<Entry> {
        self.slice(self.applied + 1, self.committed, usize::MAX, max)
            .0
    }

    /// Installs a snapshot received from the leader (§7). If our entry at the snapshot's
    /// index has the snapshot's term, the entries after it are kept: they may have been
    /// acknowledged to a leader already, and dropping them could lose a committed entry.
    /// Otherwise the whole log is replaced. Storage must do the same with its copy.
    pub fn install(&mut self, snapshot: &Snapshot) {
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        if self.term(index) == Some(term) {
            self.compact(index);
        } else {
            self.released = std::mem::take(&mut self.entries);
            self.snap_index = index;
            self.snap_term = term;
            self.stable = index;
            self.taken = index;
        }
        self.committed = self.committed.max(index);
        self.applied = self.applied.max(index);
        self.stable = self.stable.max(index);
        self.taken = self.taken.max(index);
    }

    /// Drops the entries up to `index` (which must be applied) into the snapshot point.
    pub fn compact(&mut self, index: Index) {
        if index <= self.snap_index || index > self.last_index() {
            return;
        }
        let term = self.term(index).expect("held");
        let kept = self.entries.split_off((index - self.snap_index) as usize);
        self.released = std::mem::replace(&mut self.entries, kept);
        self.snap_index = index;
        self.snap_term = term;
    }

    /// The entries the last compaction or snapshot install let go of. Why: freeing a long
    /// stretch of entries (every command's buffer) takes time in proportion to it, tens
    /// to hundreds of milliseconds for hundreds of thousands of entries, which a runtime
    /// may spend on another thread; entries not taken are freed at the next compaction.
    pub fn take_released(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Payload;

    fn e(term: Term, index: Index) -> Entry {
        Entry {
            term,
            index,
            payload: Payload::Empty,
        }
    }

    fn log_of(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, t)| e(*t, i as Index + 1))
            .collect();
        RaftLog::restore(0, 0, entries, 0)
    }

    #[test]
    fn compaction_hands_over_what_it_lets_go_of() {
        let mut l = log_of(&[1, 1, 2, 2]);
        l.committed = 4;
        l.applied = 4;
        l.compact(3);
        let released: Vec<Index> = l.take_released().iter().map(|e| e.index).collect();
        assert_eq!(released, vec![1, 2, 3]);
        assert!(l.take_released().is_empty(), "taken once");
        assert_eq!((l.first_index(), l.last_index()), (4, 4));
    }

    #[test]
    fn a_slice_stops_at_whichever_limit_comes_first() {
        let l = log_of(&[1; 10_000]);
        assert_eq!(l.slice(1, 10_000, usize::MAX, 100).0.len(), 100);
        // Each empty entry counts 24 bytes: the byte limit stops it after 10.
        assert_eq!(l.slice(1, 10_000, 240, 100).0.len(), 10);
        assert_eq!(
            l.slice(1, 10_000, 1, 100).0.len(),
            1,
            "one entry always goes"
        );
        assert_eq!(l.slice(9_999, 10_000, usize::MAX, 100).0.len(), 2);
    }

    #[test]
    fn conflict_hints_skip_a_whole_term() {
        let mut l = log_of(&[1, 1, 2, 2, 2]);
        assert_eq!(
            l.append_from_leader(5, 3, &[]),
            Err(Conflict { term: 2, index: 3 })
        );
        assert_eq!(
            l.append_from_leader(9, 3, &[]),
            Err(Conflict { term: 0, index: 6 })
        );
        assert_eq!(l.append_from_leader(2, 1, &[e(3, 3)]), Ok(3));
        assert_eq!(l.last_index(), 3);
        assert_eq!(l.last_term(), 3);
        assert_eq!(l.stable, 2, "truncation rewinds the stable point");
    }

    #[test]
    fn stale_appends_do_not_truncate() {
        let mut l = log_of(&[1, 1, 1]);
        assert_eq!(l.append_from_leader(0, 0, &[e(1, 1)]), Ok(1));
        assert_eq!(l.last_index(), 3, "a matching prefix keeps the suffix");
    }

    #[test]
    fn compaction_and_snapshots_keep_terms_at_the_point() {
        let mut l = log_of(&[1, 1, 2, 3]);
        l.committed = 3;
        l.applied = 3;
        l.compact(2);
        assert_eq!(l.term(2), Some(1));
        assert_eq!(l.term(1), None);
        assert_eq!(l.first_index(), 3);
        assert_eq!(l.slice(1, 4, usize::MAX, usize::MAX).0.len(), 2);
        assert_eq!(
            l.append_from_leader(1, 1, &[e(1, 2), e(2, 3), e(3, 4), e(3, 5)]),
            Ok(5)
        );
        let snap = Snapshot {
            meta: crate::types::SnapshotMeta {
                index: 10,
                term: 4,
                ..Default::default()
            },
            data: Default::default(),
        };
        l.install(&snap);
        assert_eq!((l.last_index(), l.last_term(), l.committed), (10, 4, 10));
        assert_eq!(
            l.first_index(),
            11,
            "a snapshot that does not match replaces the log"
        );
        let mut m = log_of(&[1, 1, 2, 2]);
        let snap = Snapshot {
            meta: crate::types::SnapshotMeta {
                index: 2,
                term: 1,
                ..Default::default()
            },
            data: Default::default(),
        };
        m.install(&snap);
        assert_eq!(
            (m.first_index(), m.last_index()),
            (3, 4),
            "a matching suffix is kept"
        );
    }

    #[test]
    fn up_to_date_compares_term_then_length() {
        let l = log_of(&[1, 2, 2]);
        assert!(l.is_up_to_date(1, 3));
        assert!(l.is_up_to_date(3, 2));
        assert!(!l.is_up_to_date(2, 2));
        assert!(!l.is_up_to_date(9, 1));
    }
}
