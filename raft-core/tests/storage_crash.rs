//! The write-ahead log (`weft_raft::storage`) across reopen, crashes and corruption.
//!
//! A reference model with the simulator's disk semantics says what every reopen must
//! return. Crashes are modelled by cutting the newest segment at every byte offset (only
//! that prefix reached the disk); corruption by flipping bits.

use std::fs;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use proptest::prelude::*;
use weft_raft::storage::{DiskStorage, StorageError, StorageOptions};
use weft_raft::{
    Entry, HardState, Index, Membership, NodeId, Payload, Snapshot, SnapshotMeta, Term,
};

const CLUSTER: u64 = 0xC1_05E7;
const NODE: NodeId = NodeId(3);
/// Length of a segment header (see the module docs of `storage`).
const HEADER_LEN: usize = 36;

fn ent(index: Index, term: Term) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(Bytes::from(format!("set k{index}={term}"))),
    }
}

fn ents(range: RangeInclusive<Index>, term: Term) -> Vec<Entry> {
    range.map(|i| ent(i, term)).collect()
}

fn hs(term: Term, commit: Index) -> HardState {
    HardState {
        term,
        vote: Some(NodeId(1)),
        commit,
    }
}

fn snap(index: Index, term: Term) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            membership: Membership::with_voters([NodeId(1), NodeId(2), NODE]),
        },
        data: Bytes::from(format!("state machine at {index}")),
    }
}

/// Without reserved space, so that a segment file's length is the log's.
fn plain() -> StorageOptions {
    StorageOptions {
        preallocate_bytes: 0,
        ..StorageOptions::default()
    }
}

fn small(segment_bytes: u64) -> StorageOptions {
    StorageOptions {
        segment_bytes,
        ..plain()
    }
}

/// `opts` reserving `step` bytes of file space at a time.
fn reserving(opts: StorageOptions, step: u64) -> StorageOptions {
    StorageOptions {
        preallocate_bytes: step,
        ..opts
    }
}

/// Appends `n` zero bytes to `path`: what space reserved and never written reads as.
fn pad_with_zeros(path: &Path, n: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes.resize(bytes.len() + n, 0);
    fs::write(path, bytes).unwrap();
}

/// What a node has on disk: the simulator's reference model is the oracle.
type State = weft_raft::sim::ModelDisk;

fn open(dir: &Path, opts: StorageOptions) -> (DiskStorage, State) {
    let (s, p) = DiskStorage::open(dir, CLUSTER, NODE, opts)
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    (s, State::of(&p))
}

fn try_open(dir: &Path) -> Result<State, StorageError> {
    DiskStorage::open(dir, CLUSTER, NODE, StorageOptions::default()).map(|(_, p)| State::of(&p))
}

fn files(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .collect();
    v.sort();
    v
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    files(dir, "wal-", ".log")
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    files(dir, "snap-", ".snap")
}

fn disk_bytes(dir: &Path) -> u64 {
    segments(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

/// Replaces `to`'s contents with `from`'s files.
fn copy_dir(from: &Path, to: &Path) {
    for e in fs::read_dir(to).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    for e in fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_string()
}

#[test]
fn entries_hard_state_and_snapshot_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, st) = open(dir.path(), plain());
    assert_eq!(st, State::default());
    let mut m = State::default();
    let mut step = |s: &mut DiskStorage, h: Option<HardState>, e: Vec<Entry>| {
        s.persist(h, None, &e).unwrap();
        m.persist(h, None, &e);
        m.clone()
    };
    step(&mut s, Some(hs(1, 0)), ents(1..=5, 1));
    step(&mut s, Some(hs(2, 3)), ents(6..=8, 2));
    step(&mut s, None, vec![]);
    let mut m = step(&mut s, Some(hs(2, 8)), vec![]);
    drop(s);
    let (mut s, st) = open(dir.path(), plain());
    assert_eq!(st, m.recovered());

    s.compact(&snap(4, 1)).unwrap();
    m.compact(&snap(4, 1));
    drop(s);
    let (mut s, st) = open(dir.path(), plain());
    assert_eq!(st, m.recovered());
    assert_eq!(st.entries.first().map(|e| e.index), Some(5));

    s.persist(Some(hs(3, 9)), None, &ents(9..=10, 3)).unwrap();
    m.persist(Some(hs(3, 9)), None, &ents(9..=10, 3));
    assert_eq!(s.log_bytes(), disk_bytes(dir.path()));
    drop(s);
    assert_eq!(try_open(dir.path()).unwrap(), m.recovered());
}

#[test]
fn suffix_replacement_survives_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(150);
    let (mut s, _) = open(dir.path(), opts);
    let mut m = State::default();
    for i in 1..=20 {
        s.persist(Some(hs(1, i - 1)), None, &[ent(i, 1)]).unwrap();
        m.persist(Some(hs(1, i - 1)), None, &[ent(i, 1)]);
    }
    assert!(segments(dir.path()).len() > 3);
    // Replace 7.. (written several segments ago) with two entries of term 2.
    s.persist(Some(hs(2, 6)), None, &ents(7..=8, 2)).unwrap();
    m.persist(Some(hs(2, 6)), None, &ents(7..=8, 2));
    drop(s);
    let (mut s, st) = open(dir.path(), opts);
    assert_eq!(st, m.recovered());
    assert_eq!(st.entries.len(), 8);

    // A gap is refused and does not poison the storage.
    let err = s.persist(None, None, &[ent(12, 2)]).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::NonContiguous {
                expected: 9,
                found: 12
            }
        ),
        "{err}"
    );
    let err = s.persist(None, None, &[ent(9, 2), ent(11, 2)]).unwrap_err();
    assert!(matches!(err, StorageError::NonContiguous { .. }), "{err}");

    s.persist(None, None, &ents(9..=9, 2)).unwrap();
    m.persist(None, None, &ents(9..=9, 2));
    s.persist(Some(hs(3, 2)), None, &ents(3..=3, 3)).unwrap();
    m.persist(Some(hs(3, 2)), None, &ents(3..=3, 3));
    drop(s);
    let st = try_open(dir.path()).unwrap();
    assert_eq!(st, m.recovered());
    assert_eq!(st.entries.last(), Some(&ent(3, 3)));
}

#[test]
fn leader_snapshot_keeps_the_suffix_only_if_its_entry_matches() {
    // Matching: the stored entry at 5 has term 1.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), plain());
    let mut m = State::default();
    s.persist(Some(hs(1, 0)), None, &ents(1..=10, 1)).unwrap();
    m.persist(Some(hs(1, 0)), None, &ents(1..=10, 1));
    s.persist(Some(hs(1, 5)), Some(&snap(5, 1)), &[]).unwrap();
    m.persist(Some(hs(1, 5)), Some(&snap(5, 1)), &[]);
    drop(s);
    let (mut s, st) = open(dir.path(), plain());
    assert_eq!(st, m.recovered());
    assert_eq!(st.entries, ents(6..=10, 1));
    assert_eq!(st.snapshot, Some(snap(5, 1)));
    // Matching again, later, with entries in the same Ready.
    s.persist(Some(hs(2, 8)), Some(&snap(8, 1)), &ents(10..=11, 2))
        .unwrap();
    m.persist(Some(hs(2, 8)), Some(&snap(8, 1)), &ents(10..=11, 2));
    drop(s);
    let st = try_open(dir.path()).unwrap();
    assert_eq!(st, m.recovered());
    assert_eq!(
        snapshot_files(dir.path()).len(),
        1,
        "the old snapshot is gone"
    );

    // Not matching: the stored entry at 5 has term 1, the snapshot says 2.
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), plain());
    let mut m = State::default();
    s.persist(Some(hs(1, 0)), None, &ents(1..=10, 1)).unwrap();
    m.persist(Some(hs(1, 0)), None, &ents(1..=10, 1));
    s.persist(Some(hs(2, 5)), Some(&snap(5, 2)), &[]).unwrap();
    m.persist(Some(hs(2, 5)), Some(&snap(5, 2)), &[]);
    drop(s);
    let (mut s, st) = open(dir.path(), plain());
    assert_eq!(st, m.recovered());
    assert!(st.entries.is_empty());
    s.persist(None, None, &ents(6..=7, 2)).unwrap();
    m.persist(None, None, &ents(6..=7, 2));
    // A snapshot beyond the log, with entries after it in the same Ready.
    s.persist(Some(hs(3, 12)), Some(&snap(12, 3)), &ents(13..=14, 3))
        .unwrap();
    m.persist(Some(hs(3, 12)), Some(&snap(12, 3)), &ents(13..=14, 3));
    drop(s);
    let (mut s, st) = open(dir.path(), plain());
    assert_eq!(st, m.recovered());
    assert_eq!(st.entries, ents(13..=14, 3));
    // An older snapshot is refused.
    let err = s.persist(None, Some(&snap(4, 1)), &[]).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::StaleSnapshot {
                index: 4,
                current: 12
            }
        ),
        "{err}"
    );
}

#[test]
fn rollover_and_compaction_delete_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small(300);
    let (mut s, _) = open(dir.path(), opts);
    let mut m = State::default();
    for i in 1..=60 {
        s.persist(Some(hs(1, i)), None, &[ent(i, 1)]).unwrap();
        m.persist(Some(hs(1, i)), None, &[ent(i, 1)]);
        assert_eq!(s.log_bytes(), disk_bytes(dir.path()));
    }
    let before = segments(dir.path());
    let bytes_before = s.log_bytes();
    assert!(before.len() >= 5, "{} segments", before.len());

    s.compact(&snap(50, 1)).unwrap();
    m.compact(&snap(50, 1));
    let after = segments(dir.path());
    assert!(after.len() < before.len() - 2, "{after:?}");
    assert_eq!(
        after,
        before[before.len() - after.len()..].to_vec(),
        "oldest go first"
    );
    assert!(s.log_bytes() < bytes_before);
    assert_eq!(s.log_bytes(), disk_bytes(dir.path()));
    drop(s);
    let (mut s, st) = open(dir.path(), opts);
    assert_eq!(st, m.recovered());
    assert_eq!(st.entries, ents(51..=60, 1));

    // Covering everything leaves only the active segment.
    s.compact(&snap(60, 1)).unwrap();
    m.compact(&snap(60, 1));
    assert_eq!(segments(dir.path()).len(), 1);
    assert_eq!(snapshot_files(dir.path()).len(), 1);
    s.persist(Some(hs(2, 60)), None, &[ent(61, 2)]).unwrap();
    m.persist(Some(hs(2, 60)), None, &[ent(61, 2)]);
    assert_eq!(s.log_bytes(), disk_bytes(dir.path()));
    drop(s);
    assert_eq!(try_open(dir.path()).unwrap(), m.recovered());
}

/// Reserving space changes the files' lengths and nothing else: across rollovers and
/// reopens (which must go on writing at the log's end, not the file's), each segment holds
/// what the plain log's does, followed by zeros.
#[test]
fn a_reserving_log_writes_what_a_plain_one_does_followed_by_zeros() {
    let plain_dir = tempfile::tempdir().unwrap();
    let reserving_dir = tempfile::tempdir().unwrap();
    let opts = small(1000);
    let mut next = 1;
    let mut reserved = 0;
    for reopen in 0..4 {
        let (mut p, from_plain) = open(plain_dir.path(), opts);
        let (mut r, from_reserving) = open(reserving_dir.path(), reserving(opts, 256));
        assert_eq!(from_plain, from_reserving, "reopen {reopen}");
        for _ in 0..6 {
            let e = ents(next..=next + 1, 1);
            p.persist(Some(hs(1, next)), None, &e).unwrap();
            r.persist(Some(hs(1, next)), None, &e).unwrap();
            next += 2;
        }
        assert_eq!(p.log_bytes(), r.log_bytes());
        drop((p, r));
        let (ps, rs) = (segments(plain_dir.path()), segments(reserving_dir.path()));
        assert_eq!(
            ps.iter().map(|p| name(p)).collect::<Vec<_>>(),
            rs.iter().map(|p| name(p)).collect::<Vec<_>>()
        );
        for (k, (pp, rp)) in ps.iter().zip(&rs).enumerate() {
            let (pb, rb) = (fs::read(pp).unwrap(), fs::read(rp).unwrap());
            if k + 1 < rs.len() {
                assert_eq!(rb.len(), pb.len(), "sealed {} ends at its log", name(rp));
            }
            assert!(rb.len() >= pb.len(), "{}", name(rp));
            assert_eq!(rb[..pb.len()], pb[..], "{}", name(rp));
            assert!(rb[pb.len()..].iter().all(|&b| b == 0), "{}", name(rp));
            reserved += rb.len() - pb.len();
        }
    }
    assert!(segments(plain_dir.path()).len() > 1, "the log rolled over");
    assert!(reserved > 0, "space was reserved");
    assert_eq!(
        try_open(reserving_dir.path()).unwrap(),
        try_open(plain_dir.path()).unwrap()
    );
    // Zeros after the last record of a sealed segment are damage, not reserved space.
    let sealed = segments(reserving_dir.path())[0].clone();
    pad_with_zeros(&sealed, 64);
    match try_open(reserving_dir.path()) {
        Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, sealed),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn group_commit_makes_writes_durable_only_at_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), plain());
    let mut m = State::default();
    s.persist(Some(hs(1, 0)), None, &ents(1..=2, 1)).unwrap();
    m.persist(Some(hs(1, 0)), None, &ents(1..=2, 1));
    let seg = segments(dir.path())[0].clone();
    let synced_len = fs::metadata(&seg).unwrap().len();
    let synced = m.clone();
    for i in 3..=5 {
        s.write(Some(hs(1, i - 1)), None, &[ent(i, 1)]).unwrap();
        m.persist(Some(hs(1, i - 1)), None, &[ent(i, 1)]);
    }
    // Buffered: nothing reached the file; a crash now keeps the synced state.
    assert_eq!(fs::metadata(&seg).unwrap().len(), synced_len);
    assert!(s.log_bytes() > synced_len);
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    assert_eq!(try_open(crashed.path()).unwrap(), synced.recovered());
    // One sync covers all three writes.
    s.sync().unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), s.log_bytes());
    drop(s);
    assert_eq!(try_open(dir.path()).unwrap(), m.recovered());
}

/// A snapshot file written off the storage thread is recorded later, after entries written
/// meanwhile: the log keeps those, and a snapshot overtaken by a newer one in between (from
/// the leader) is only removed.
#[test]
fn a_snapshot_written_elsewhere_is_recorded_after_later_entries() {
    use weft_raft::node::LogStore;
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), plain());
    let mut m = State::default();
    s.persist(Some(hs(1, 8)), None, &ents(1..=8, 1)).unwrap();
    m.persist(Some(hs(1, 8)), None, &ents(1..=8, 1));
    let write_file = s
        .snapshot_writer()
        .expect("a disk store writes files elsewhere");
    std::thread::scope(|t| {
        t.spawn(|| write_file(&snap(5, 1)).unwrap());
    });
    assert_eq!(snapshot_files(dir.path()).len(), 1, "the file alone");
    s.write(Some(hs(1, 10)), None, &ents(9..=10, 1)).unwrap();
    m.persist(Some(hs(1, 10)), None, &ents(9..=10, 1));
    LogStore::compact_written(&mut s, &snap(5, 1)).unwrap();
    m.compact(&snap(5, 1));
    s.sync().unwrap();
    drop(s);
    let (mut s, st) = open(dir.path(), plain());
    assert_eq!(st, m.recovered());
    assert_eq!(st.entries.first().map(|e| e.index), Some(6));
    assert_eq!(st.entries.last().map(|e| e.index), Some(10));

    // A file for 7 is written while the leader's snapshot at 9 is installed: recording 7
    // afterwards changes nothing and its file goes.
    std::thread::scope(|t| {
        t.spawn(|| write_file(&snap(7, 1)).unwrap());
    });
    s.persist(None, Some(&snap(9, 1)), &[]).unwrap();
    m.persist(None, Some(&snap(9, 1)), &[]);
    LogStore::compact_written(&mut s, &snap(7, 1)).unwrap();
    s.sync().unwrap();
    drop(s);
    assert_eq!(try_open(dir.path()).unwrap(), m.recovered());
    let left: Vec<String> = snapshot_files(dir.path()).iter().map(|p| name(p)).collect();
    assert_eq!(
        left,
        [name(Path::new(&format!("snap-{:016x}-{:016x}.snap", 9, 1)))]
    );
}

/// One call: hard state, snapshot, entries, and whether it is a local compaction.
type Step = (Option<HardState>, Option<Snapshot>, Vec<Entry>, bool);

/// What the directory held after one step: the newest segment's name and length, the
/// state a reopen must return, and the snapshot files present.
type Mark = (String, u64, State, Vec<String>);

/// Runs `steps` in `dir`; returns a [`Mark`] after opening and after each step, and every
/// snapshot file that existed at some point (name, bytes).
fn run(dir: &Path, opts: StorageOptions, steps: &[Step]) -> (Vec<Mark>, Vec<(String, Vec<u8>)>) {
    let (mut s, _) = open(dir, opts);
    let mut m = State::default();
    let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
    let mut mark = |m: &State| {
        for p in snapshot_files(dir) {
            if !snaps.iter().any(|(n, _)| *n == name(&p)) {
                snaps.push((name(&p), fs::read(&p).unwrap()));
            }
        }
        let newest = segments(dir).pop().unwrap();
        let present = snapshot_files(dir).iter().map(|p| name(p)).collect();
        (
            name(&newest),
            fs::metadata(&newest).unwrap().len(),
            m.recovered(),
            present,
        )
    };
    let mut history = vec![mark(&m)];
    for (hard, snapshot, entries, compact) in steps {
        if *compact {
            let sn = snapshot.as_ref().unwrap();
            s.compact(sn).unwrap();
            m.compact(sn);
        } else {
            s.persist(*hard, snapshot.as_ref(), entries).unwrap();
            m.persist(*hard, snapshot.as_ref(), entries);
        }
        history.push(mark(&m));
    }
    (history, snaps)
}

fn crash_steps() -> Vec<Step> {
    vec![
        (Some(hs(1, 0)), None, ents(1..=3, 1), false),
        (Some(hs(1, 2)), None, vec![], false),
        (None, None, ents(4..=5, 1), false),
        (None, Some(snap(2, 1)), vec![], true),
        (Some(hs(2, 3)), None, ents(4..=4, 2), false),
        (Some(hs(2, 4)), Some(snap(4, 2)), ents(5..=6, 2), false),
        (Some(hs(3, 6)), None, ents(7..=7, 3), false),
    ]
}

#[test]
fn a_crash_at_every_byte_of_the_tail_recovers_the_synced_prefix() {
    // With reserved space (`pad` > 0), what a crash leaves is the written prefix followed
    // by the zeros of the space never written; the node reopens reserving space too.
    for (opts, pad) in [
        (plain(), 0),
        (small(200), 0),
        (reserving(plain(), 8 << 20), 4096),
        (reserving(small(200), 64), 90),
    ] {
        let src = tempfile::tempdir().unwrap();
        let steps = crash_steps();
        let (history, snaps) = run(src.path(), reserving(opts, 0), &steps);
        let newest = segments(src.path()).pop().unwrap();
        let newest_name = name(&newest);
        assert_eq!(newest_name, history.last().unwrap().0);
        if opts.segment_bytes == 200 {
            assert!(
                history[0].0 < newest_name,
                "the small segments must roll over"
            );
        }
        let full = fs::read(&newest).unwrap();
        let work = tempfile::tempdir().unwrap();
        for cut in 0..=full.len() {
            // Only the bytes before `cut` reached the disk: every batch that ended there.
            // None: the crash came while the directory itself was being created. Reserved
            // space reads as zeros, so zero bytes just after the cut are there as well.
            let on_disk = match pad {
                0 => cut,
                _ => cut + full[cut..].iter().take_while(|&&b| b == 0).count(),
            };
            let k = history
                .iter()
                .rposition(|(seg, len, _, _)| *seg < newest_name || *len <= on_disk as u64);
            let fresh = State::default();
            let want = k.map_or(&fresh, |k| &history[k].2);
            // The crash came while step k+1 was written: the older segments are as they
            // are, the newest is cut, and the snapshot files are those after step k plus
            // the one step k+1 wrote before its record (old ones go only after a sync).
            copy_dir(src.path(), work.path());
            for f in snapshot_files(work.path()) {
                fs::remove_file(f).unwrap();
            }
            fs::write(work.path().join(&newest_name), &full[..cut]).unwrap();
            if pad > 0 {
                pad_with_zeros(&work.path().join(&newest_name), pad);
            }
            let mut present = k.map_or(vec![], |k| history[k].3.clone());
            if let Some(sn) = k.and_then(|k| steps.get(k)).and_then(|s| s.1.as_ref()) {
                present.push(format!(
                    "snap-{:016x}-{:016x}.snap",
                    sn.meta.index, sn.meta.term
                ));
            }
            for (n, bytes) in snaps.iter().filter(|(n, _)| present.contains(n)) {
                fs::write(work.path().join(n), bytes).unwrap();
            }
            let got = try_open(work.path()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(
                &got,
                want,
                "{newest_name} cut at {cut} of {}, {pad} zeros after",
                full.len()
            );
            assert_eq!(
                snapshot_files(work.path()).len(),
                usize::from(want.snapshot.is_some())
            );
            // And the node can go on writing after the repair.
            let (mut s, _) = open(work.path(), opts);
            let next = want.last_index() + 1;
            s.persist(Some(hs(9, 0)), None, &[ent(next, 9)]).unwrap();
            drop(s);
            let again = try_open(work.path()).unwrap();
            assert_eq!(again.entries.last(), Some(&ent(next, 9)), "cut at {cut}");
        }
    }
}

#[test]
fn a_bit_flip_in_the_last_record_is_a_torn_tail_elsewhere_a_refusal() {
    let src = tempfile::tempdir().unwrap();
    let steps: Vec<Step> = vec![
        (Some(hs(1, 0)), None, ents(1..=3, 1), false),
        (Some(hs(1, 2)), None, vec![], false),
        (None, None, ents(4..=5, 1), false),
        (Some(hs(2, 3)), None, ents(4..=4, 2), false),
        (Some(hs(3, 4)), None, ents(5..=6, 3), false),
    ];
    let (history, _) = run(src.path(), plain(), &steps);
    let seg = segments(src.path())[0].clone();
    let full = fs::read(&seg).unwrap();
    // Record starts: the head after the header, then every batch.
    let mut starts: Vec<u64> = vec![HEADER_LEN as u64];
    starts.extend(history.iter().map(|h| h.1));
    starts.pop();
    let last_start = *starts.last().unwrap();
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join(name(&seg));
    // A flip in reserved space after the last record damages nothing written: the tail
    // from there is dropped, the whole log stays.
    for pos in full.len()..full.len() + 64 {
        copy_dir(src.path(), work.path());
        pad_with_zeros(&path, 64);
        let mut bad = fs::read(&path).unwrap();
        bad[pos] ^= 1 << (pos % 8);
        fs::write(&path, &bad).unwrap();
        let got = try_open(work.path()).unwrap_or_else(|e| panic!("flip at {pos}: {e}"));
        assert_eq!(got, history.last().unwrap().2, "flip at {pos}");
        assert_eq!(fs::metadata(&path).unwrap().len(), full.len() as u64);
    }
    for pos in 0..full.len() {
        copy_dir(src.path(), work.path());
        let mut bad = full.clone();
        bad[pos] ^= 1 << (pos % 8);
        fs::write(&path, &bad).unwrap();
        let result = try_open(work.path());
        if pos as u64 >= last_start {
            let got = result.unwrap_or_else(|e| panic!("flip at {pos}: {e}"));
            assert_eq!(got, history[history.len() - 2].2, "flip at {pos}");
            assert_eq!(fs::metadata(&path).unwrap().len(), last_start, "truncated");
            continue;
        }
        let start = if (pos as u64) < starts[0] {
            0
        } else {
            *starts.iter().rev().find(|s| **s <= pos as u64).unwrap()
        };
        match result {
            Err(e @ StorageError::Corrupt { .. }) => {
                let StorageError::Corrupt {
                    path: p, offset, ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!((p, *offset), (&path, start), "flip at {pos}: {e}");
                let msg = e.to_string();
                assert!(msg.contains(&name(&seg)) && msg.contains(&format!("offset {start}")));
            }
            other => panic!("flip at {pos}: expected a refusal at {start}, got {other:?}"),
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            bad,
            "a refused directory is left as found"
        );
    }
}

#[test]
fn damage_in_a_sealed_segment_refuses_to_start() {
    let src = tempfile::tempdir().unwrap();
    let (history, _) = run(src.path(), small(120), &crash_steps());
    let segs = segments(src.path());
    assert!(segs.len() >= 2);
    // The last byte of the second-to-last segment: its last record, followed by no valid
    // record in that file, but the segment was sealed (synced) before the next one began.
    let sealed = &segs[segs.len() - 2];
    let mut bytes = fs::read(sealed).unwrap();
    let end = bytes.len() - 1;
    bytes[end] ^= 0x80;
    fs::write(sealed, &bytes).unwrap();
    match try_open(src.path()) {
        Err(StorageError::Corrupt { path, .. }) => assert_eq!(&path, sealed),
        other => panic!("expected a refusal, got {other:?}"),
    }
    bytes[end] ^= 0x80;
    fs::write(sealed, &bytes).unwrap();
    assert_eq!(try_open(src.path()).unwrap(), history.last().unwrap().2);

    // A missing or damaged snapshot file.
    let work = tempfile::tempdir().unwrap();
    copy_dir(src.path(), work.path());
    let sf = snapshot_files(work.path()).pop().unwrap();
    let mut sb = fs::read(&sf).unwrap();
    let mid = sb.len() / 2;
    sb[mid] ^= 1;
    fs::write(&sf, &sb).unwrap();
    match try_open(work.path()) {
        Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, sf),
        other => panic!("expected a refusal, got {other:?}"),
    }
    fs::remove_file(&sf).unwrap();
    assert!(matches!(
        try_open(work.path()),
        Err(StorageError::MissingSnapshot { .. })
    ));
}

#[test]
fn a_lost_segment_refuses_to_start() {
    let src = tempfile::tempdir().unwrap();
    let (mut s, _) = open(src.path(), small(150));
    for i in 1..=20 {
        s.persist(Some(hs(1, i)), None, &[ent(i, 1)]).unwrap();
    }
    drop(s);
    let segs = segments(src.path());
    assert!(segs.len() >= 3);
    let work = tempfile::tempdir().unwrap();
    copy_dir(src.path(), work.path());
    fs::remove_file(work.path().join(name(&segs[1]))).unwrap();
    let err = try_open(work.path()).unwrap_err();
    assert!(matches!(err, StorageError::MissingSegment { .. }), "{err}");
    // The first segment's entries are not covered by any snapshot.
    copy_dir(src.path(), work.path());
    fs::remove_file(work.path().join(name(&segs[0]))).unwrap();
    let err = try_open(work.path()).unwrap_err();
    assert!(
        matches!(err, StorageError::MissingEntries { from: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_directory_of_another_cluster_or_node_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), plain());
    s.persist(Some(hs(1, 0)), None, &ents(1..=3, 1)).unwrap();
    drop(s);
    let before = fs::read(&segments(dir.path())[0]).unwrap();
    for (cluster, node) in [(CLUSTER + 1, NODE), (CLUSTER, NodeId(4))] {
        let err = DiskStorage::open(dir.path(), cluster, node, plain()).unwrap_err();
        assert!(matches!(err, StorageError::WrongIdentity { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("belongs to cluster"), "{msg}");
    }
    assert_eq!(fs::read(&segments(dir.path())[0]).unwrap(), before);
    assert_eq!(try_open(dir.path()).unwrap().entries, ents(1..=3, 1));
}

/// A valid segment header for `seq`, to let garbage reach the record parser.
fn header(seq: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"WEFTWAL\0");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&NODE.0.to_le_bytes());
    b.extend_from_slice(&CLUSTER.to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    let crc = crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Bitwise CRC-32C, so the test does not lean on the crate under test.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Frames `payload` as a record of type `kind`.
fn framed(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(payload);
    let mut b = (payload.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(&crc32c(&body).to_le_bytes());
    b.extend_from_slice(&body);
    b
}

#[test]
fn the_test_crc_matches_the_header_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), plain()));
    let bytes = fs::read(&segments(dir.path())[0]).unwrap();
    assert_eq!(bytes[..HEADER_LEN], header(1)[..]);
}

fn file_name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u64..4).prop_map(|s| format!("wal-{s:016x}.log")),
        (0u64..20, 0u64..4).prop_map(|(i, t)| format!("snap-{i:016x}-{t:016x}.snap")),
        Just("snap-0000000000000001-0000000000000001.snap.tmp".to_string()),
        "[a-z]{1,8}",
    ]
}

fn content_strategy() -> impl Strategy<Value = Vec<u8>> {
    let garbage = proptest::collection::vec(any::<u8>(), 0..200);
    prop_oneof![
        garbage.clone(),
        (1u64..4, garbage.clone()).prop_map(|(seq, g)| {
            let mut b = header(seq);
            b.extend(g);
            b
        }),
        (1u64..4, 0u8..4, garbage.clone(), garbage).prop_map(|(seq, kind, p, tail)| {
            let mut b = header(seq);
            b.extend(framed(kind, &p));
            b.extend(tail);
            b
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever bytes are on disk, `open` recovers or refuses, and never panics.
    #[test]
    fn open_never_panics_on_garbage(
        files in proptest::collection::vec((file_name_strategy(), content_strategy()), 0..5)
    ) {
        let dir = tempfile::tempdir().unwrap();
        for (n, bytes) in &files {
            fs::write(dir.path().join(n), bytes).unwrap();
        }
        if let Ok((mut s, p)) = DiskStorage::open(dir.path(), CLUSTER, NODE, small(256)) {
            // What opened must also be writable and reopen to the same state plus one entry.
            let next = p.entries.last().map(|e| e.index)
                .or(p.snapshot.as_ref().map(|s| s.meta.index)).unwrap_or(0) + 1;
            s.persist(None, None, &[ent(next, 1)]).unwrap();
            drop(s);
            let again = try_open(dir.path()).unwrap();
            prop_assert_eq!(again.entries.last(), Some(&ent(next, 1)));
        }
    }

    /// One damaged byte anywhere in a valid multi-segment directory: `open` refuses, or
    /// returns a state the node really had (a torn tail drops only the last write).
    #[test]
    fn one_damaged_byte_recovers_a_real_state_or_refuses(
        which in any::<prop::sample::Index>(),
        pos in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let src = tempfile::tempdir().unwrap();
        let (history, _) = run(src.path(), small(160), &crash_steps());
        let segs = segments(src.path());
        let seg = which.get(&segs);
        let mut bytes = fs::read(seg).unwrap();
        let at = pos.index(bytes.len());
        bytes[at] ^= mask;
        fs::write(seg, &bytes).unwrap();
        if let Ok(got) = try_open(src.path()) {
            prop_assert!(history.iter().any(|h| h.2 == got), "flip at {} of {}", at, seg.display());
        }
    }

    /// Random Readies, compactions and reopens against the reference model.
    #[test]
    fn random_operations_match_the_model(
        ops in proptest::collection::vec((0u8..6, 0u64..4, 1u64..4), 1..30),
        reserve in prop_oneof![Just(0u64), 1u64..200],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let opts = reserving(small(180), reserve);
        let (mut s, _) = open(dir.path(), opts);
        let mut m = State::default();
        let mut term = 1;
        for (op, a, b) in ops {
            let base = m.snapshot.as_ref().map_or(0, |s| s.meta.index);
            let last = m.last_index();
            match op {
                // Append, possibly replacing a suffix of up to `a` entries.
                0 | 1 => {
                    let from = (last + 1).saturating_sub(a).max(base + 1);
                    if a > 0 { term += 1; }
                    let e = ents(from..=from + b - 1, term);
                    s.persist(Some(hs(term, base)), None, &e).unwrap();
                    m.persist(Some(hs(term, base)), None, &e);
                }
                // A snapshot from the leader, matching or not, possibly past the log.
                2 => {
                    let index = (base + a + 1).min(last + b);
                    let t = if a % 2 == 0 {
                        m.entries.iter().find(|e| e.index == index).map_or(term, |e| e.term)
                    } else {
                        term + 1
                    };
                    term = term.max(t);
                    s.persist(Some(hs(term, index)), Some(&snap(index, t)), &[]).unwrap();
                    m.persist(Some(hs(term, index)), Some(&snap(index, t)), &[]);
                }
                // A local snapshot of some applied entries.
                3 if last > base => {
                    let index = (base + b).min(last);
                    let t = m.entries.iter().find(|e| e.index == index).unwrap().term;
                    s.compact(&snap(index, t)).unwrap();
                    m.compact(&snap(index, t));
                }
                4 => {
                    s.persist(Some(hs(term, last)), None, &[]).unwrap();
                    m.persist(Some(hs(term, last)), None, &[]);
                }
                _ => {
                    drop(s);
                    let (s2, st) = open(dir.path(), opts);
                    s = s2;
                    prop_assert_eq!(&st, &m.recovered());
                }
            }
            if reserve == 0 {
                prop_assert_eq!(s.log_bytes(), disk_bytes(dir.path()));
            } else {
                prop_assert!(s.log_bytes() <= disk_bytes(dir.path()));
            }
        }
        drop(s);
        prop_assert_eq!(try_open(dir.path()).unwrap(), m.recovered());
    }
}
