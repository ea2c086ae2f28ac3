//! Membership changes, leadership transfer, linearizable reads and ordered elections,
//! each under the deterministic simulator (which checks the safety invariants every step).

use bytes::Bytes;
use weft_raft::sim::{Faults, Sim, SimOptions};
use weft_raft::{Change, Config, NodeId, ProposeError, Role};

const ELECTION: u64 = 400;

fn leader(s: &mut Sim) -> NodeId {
    assert!(s.run_until(4 * ELECTION, |s| s.leader().is_some()));
    s.leader().unwrap()
}

fn commit(s: &mut Sim, c: &str, n: usize) {
    let c = Bytes::from(c.to_string());
    for _ in 0..10 {
        if s.applied_index_of(&c).is_none() {
            let _ = s.propose_at_leader(c.clone());
        }
        if s.run_until(ELECTION, |s| s.applied_count(&c) >= n) {
            return;
        }
    }
    panic!("{c:?} not applied by {n} nodes");
}

fn change(s: &mut Sim, changes: Vec<Change>) {
    for _ in 0..20 {
        let l = leader(s);
        match s.node_mut(l).unwrap().propose_membership(changes.clone()) {
            Ok(_) => return,
            Err(ProposeError::ChangeInProgress) | Err(ProposeError::LearnerBehind(_)) => s.run(50),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("change {changes:?} never accepted");
}

fn settled(s: &Sim, id: NodeId, pred: impl Fn(&weft_raft::Membership) -> bool) -> bool {
    s.node(id).is_some_and(|n| pred(n.membership()))
}

#[test]
fn learner_catches_up_then_is_promoted_and_old_voter_removed() {
    let mut opts = SimOptions::new(4, 31);
    opts.voters = 3;
    let mut s = Sim::new(opts);
    for i in 0..20 {
        commit(&mut s, &format!("a{i}"), 3);
    }
    change(&mut s, vec![Change::AddLearner(NodeId(4))]);
    assert!(
        s.run_until(2 * ELECTION, |s| s.applied_count(b"a19") == 4),
        "the learner receives the log"
    );
    let l = leader(&mut s);
    assert!(s.node(l).unwrap().membership().is_learner(NodeId(4)));
    assert_eq!(s.node(NodeId(4)).unwrap().role(), Role::Follower);
    change(
        &mut s,
        vec![Change::AddVoter(NodeId(4)), Change::Remove(NodeId(1))],
    );
    assert!(s.run_until(4 * ELECTION, |s| (2..=4).all(|n| settled(
        s,
        NodeId(n),
        |m| { !m.is_joint() && m.voters == vec![NodeId(2), NodeId(3), NodeId(4)] }
    ))));
    // With node 1 gone, {2,3,4} still commit; node 1 never leads again.
    s.crash(NodeId(1));
    commit(&mut s, "after", 3);
    assert_ne!(s.leader(), Some(NodeId(1)));
}

#[test]
fn removing_the_leader_hands_over() {
    let mut s = Sim::new(SimOptions::new(3, 32));
    let l = leader(&mut s);
    commit(&mut s, "x", 3);
    change(&mut s, vec![Change::Remove(l)]);
    assert!(s.run_until(6 * ELECTION, |s| s.leader().is_some_and(|n| n != l)));
    commit(&mut s, "y", 2);
    let new = s.leader().unwrap();
    assert!(!s.node(new).unwrap().membership().is_voter(l));
}

#[test]
fn one_change_at_a_time_and_never_zero_voters() {
    let mut s = Sim::new(SimOptions::new(3, 33));
    let l = leader(&mut s);
    commit(&mut s, "first", 3);
    let raw = s.node_mut(l).unwrap();
    assert!(raw
        .propose_membership(vec![Change::AddLearner(NodeId(9))])
        .is_ok());
    assert_eq!(
        raw.propose_membership(vec![Change::AddLearner(NodeId(8))]),
        Err(ProposeError::ChangeInProgress)
    );
    let mut s = Sim::new(SimOptions::new(1, 34));
    let l = leader(&mut s);
    commit(&mut s, "c", 1);
    assert_eq!(
        s.node_mut(l)
            .unwrap()
            .propose_membership(vec![Change::Remove(l)]),
        Err(ProposeError::InvalidChange(
            "the change removes every voter"
        ))
    );
}

#[test]
fn leadership_transfer_is_faster_than_an_election() {
    let mut s = Sim::new(SimOptions::new(3, 35));
    let l = leader(&mut s);
    commit(&mut s, "t", 3);
    let to = NodeId(l.0 % 3 + 1);
    s.node_mut(l).unwrap().transfer_leader(to).unwrap();
    let start = s.now();
    assert!(s.run_until(ELECTION, |s| s.leader() == Some(to)));
    assert!(
        s.now() - start < 100,
        "transfer took {} steps (an election takes 100+)",
        s.now() - start
    );
    // Proposals to the old leader are refused while the transfer is under way.
    commit(&mut s, "after-transfer", 3);
}

#[test]
fn read_index_at_leader_and_follower() {
    let mut s = Sim::new(SimOptions::new(3, 36));
    let l = leader(&mut s);
    commit(&mut s, "r", 3);
    let committed = s.node(l).unwrap().commit_index();
    s.node_mut(l).unwrap().read_index(7).unwrap();
    assert!(s.run_until(50, |s| s.node(l).is_some()));
    s.run(20);
    let rs = s.take_read_states(l);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].ctx, 7);
    assert!(rs[0].index >= committed);
    let f = NodeId(l.0 % 3 + 1);
    s.node_mut(f).unwrap().read_index(8).unwrap();
    s.run(20);
    let rs = s.take_read_states(f);
    assert_eq!(rs.iter().map(|r| r.ctx).collect::<Vec<_>>(), vec![8]);
}

#[test]
fn a_deposed_leader_cannot_serve_reads() {
    let mut s = Sim::new(SimOptions::new(3, 37));
    let l = leader(&mut s);
    commit(&mut s, "w", 3);
    s.isolate(l);
    // Still believes it leads for a while, but no quorum confirms the read.
    s.node_mut(l).unwrap().read_index(9).unwrap();
    s.run(3 * ELECTION);
    assert!(s.take_read_states(l).is_empty());
}

#[test]
fn lease_reads_answer_without_a_round_trip() {
    let mut opts = SimOptions::new(3, 38);
    opts.raft.lease_reads = true;
    let mut s = Sim::new(opts);
    let l = leader(&mut s);
    commit(&mut s, "l", 3);
    s.node_mut(l).unwrap().read_index(1).unwrap();
    s.run(1);
    assert_eq!(s.take_read_states(l).len(), 1);
}

#[test]
fn config_is_validated() {
    let mut c = Config::new(NodeId(1));
    c.lease_reads = true;
    c.check_quorum = false;
    assert!(c.validate().is_err());
    let mut c = Config::new(NodeId(1));
    c.election_tick = 1;
    assert!(c.validate().is_err());
    let fabric = |total_order, barrier, loopback| {
        let caps = weft_transport::Capabilities {
            total_order,
            barrier,
            loopback,
            ..Default::default()
        };
        let c = Config::new(NodeId(1)).for_fabric(&caps);
        (c.ordered_election, c.barrier_epochs)
    };
    assert_eq!(fabric(true, true, true), (true, true), "Data Vortex");
    assert_eq!(
        fabric(true, false, true),
        (true, false),
        "ptp without layers"
    );
    assert_eq!(
        fabric(true, false, false),
        (false, false),
        "ptp under layers: no copy to self"
    );
    assert_eq!(fabric(false, false, false), (false, false), "udp");
    // Appends fit the transport's largest message.
    let small = weft_transport::Capabilities {
        max_message: 60_000,
        ..Default::default()
    };
    let c = Config::new(NodeId(1)).for_fabric(&small);
    assert!(c.max_bytes_per_append < 60_000 && c.max_bytes_per_append > 50_000);
}

#[test]
fn unreliable_network_with_membership_churn_stays_safe() {
    let mut opts = SimOptions::new(5, 39);
    opts.voters = 3;
    opts.snapshot_every = 20;
    let mut s = Sim::new(opts);
    s.set_faults(Faults::unreliable());
    for round in 0..6u32 {
        for i in 0..10 {
            let _ = s.propose_at_leader(Bytes::from(format!("u{round}-{i}")));
            s.run(10);
        }
        let n = NodeId(4 + round % 2);
        let add = if round % 4 < 2 {
            Change::AddVoter(n)
        } else {
            Change::Remove(n)
        };
        if let Some(l) = s.leader() {
            let _ = s.node_mut(l).unwrap().propose_membership(vec![add]);
        }
        s.run(300);
    }
    s.set_faults(Faults::none());
    commit(&mut s, "final", 3);
}

/// On a fabric with total order and barriers, every voter sees an epoch's vote requests in
/// the same order and considers only the first: a later request of the same epoch is
/// ignored even with a higher term, so two candidates cannot split the votes.
#[test]
fn ordered_election_considers_only_the_first_request_of_an_epoch() {
    use weft_raft::{Body, Membership, Message, Persisted, RawNode};
    let voters = Membership::with_voters((1..=5).map(NodeId));
    let new = |ordered: bool| {
        let mut cfg = Config::new(NodeId(3));
        cfg.ordered_election = ordered;
        cfg.barrier_epochs = ordered;
        cfg.pre_vote = false;
        cfg.check_quorum = false;
        RawNode::new(cfg, voters.clone(), Persisted::default()).unwrap()
    };
    let req = |from: u32, term: u64, epoch: u64| Message {
        from: NodeId(from),
        to: NodeId(3),
        term,
        epoch,
        body: Body::RequestVote {
            pre: false,
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    };
    let granted_to = |node: &mut RawNode| -> Vec<u32> {
        let rd = node.ready();
        node.advance(&rd);
        rd.messages
            .iter()
            .filter(|m| matches!(m.body, Body::VoteResponse { granted: true, .. }))
            .map(|m| m.to.0)
            .collect()
    };
    let mut ordered = new(true);
    ordered.step(req(1, 2, 7));
    ordered.step(req(2, 3, 7));
    assert_eq!(granted_to(&mut ordered), vec![1]);
    assert_eq!((ordered.term(), ordered.vote()), (2, Some(NodeId(1))));
    ordered.step(req(2, 3, 8));
    assert_eq!(
        granted_to(&mut ordered),
        vec![2],
        "a new epoch is considered afresh"
    );

    // Plain Raft moves to the higher term and votes again: the votes can split.
    let mut plain = new(false);
    plain.step(req(1, 2, 7));
    plain.step(req(2, 3, 7));
    assert_eq!(granted_to(&mut plain), vec![1, 2]);
}

/// Snapshots travel in chunks: with 16-byte chunks over a lossy, reordering network, a
/// follower that fell behind a compacted log still catches up exactly.
#[test]
fn chunked_snapshots_survive_an_unreliable_network() {
    let mut opts = SimOptions::new(3, 40);
    opts.snapshot_every = 5;
    opts.raft.snapshot_chunk = 16;
    let mut s = Sim::new(opts);
    let l = leader(&mut s);
    commit(&mut s, "base", 3);
    let lagging = NodeId(l.0 % 3 + 1);
    s.isolate(lagging);
    for i in 0..40 {
        commit(&mut s, &format!("c{i}"), 2);
    }
    s.heal();
    s.set_faults(Faults::unreliable());
    assert!(
        s.run_until(20 * ELECTION, |s| s.applied_count(b"c39") == 3),
        "the lagging node caught up"
    );
    assert!(s.snapshots_installed > 0);
    let want = s.applied_commands(s.leader().unwrap()).to_vec();
    assert_eq!(
        s.applied_commands(lagging),
        &want[..],
        "same commands, same order"
    );
}

/// The leader's appends may overlap its own fsync (thesis §10.2.1); vote requests may not
/// leave before the term and vote they carry are durable.
#[test]
fn leader_appends_may_go_before_the_fsync_votes_may_not() {
    use weft_raft::{Body, Membership, Message, Persisted, RawNode};
    let mut cfg = Config::new(NodeId(1));
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    let mut n = RawNode::new(
        cfg,
        Membership::with_voters((1..=3).map(NodeId)),
        Persisted::default(),
    )
    .unwrap();
    n.campaign();
    let rd = n.ready();
    assert!(rd.early_messages.is_empty());
    assert!(!rd.messages.is_empty());
    assert!(rd
        .messages
        .iter()
        .all(|m| matches!(m.body, Body::RequestVote { .. })));
    assert!(
        rd.hard_state.is_some(),
        "the vote for itself is persisted first"
    );
    n.advance(&rd);
    n.step(Message {
        from: NodeId(2),
        to: NodeId(1),
        term: n.term(),
        epoch: 0,
        body: Body::VoteResponse {
            pre: false,
            granted: true,
        },
    });
    assert_eq!(n.role(), Role::Leader);
    let rd = n.ready();
    assert!(!rd.early_messages.is_empty());
    assert!(rd
        .early_messages
        .iter()
        .all(|m| matches!(m.body, Body::Append { .. })));
    assert!(
        !rd.entries.is_empty(),
        "its own copy is persisted in the same Ready"
    );
}

/// Node 2 of a fresh 3-voter cluster, driven by hand as a follower of node 1.
fn follower() -> weft_raft::RawNode {
    weft_raft::RawNode::new(
        Config::new(NodeId(2)),
        weft_raft::Membership::with_voters((1..=3).map(NodeId)),
        weft_raft::Persisted::default(),
    )
    .unwrap()
}

/// A message from leader 1 to node 2.
fn from_leader(term: u64, body: weft_raft::Body) -> weft_raft::Message {
    weft_raft::Message {
        from: NodeId(1),
        to: NodeId(2),
        term,
        epoch: 0,
        body,
    }
}

/// The leader's append of a first entry (index 1, term 1) on an empty log.
fn append_first_entry() -> weft_raft::Body {
    weft_raft::Body::Append {
        prev_index: 0,
        prev_term: 0,
        entries: vec![weft_raft::Entry {
            term: 1,
            index: 1,
            payload: weft_raft::Payload::Command(Bytes::from_static(b"x")),
        }],
        commit: 0,
    }
}

/// A follower answers a heartbeat at once when its term is durable, even while entries
/// wait for its disk (a long write queue must not look like a dead follower to the
/// leader's check-quorum); an answer in a term it has just adopted waits for the write.
#[test]
fn heartbeat_answers_leave_early_unless_their_term_is_new() {
    use weft_raft::Body;
    let mut n = follower();
    let heartbeat = Body::Heartbeat {
        commit: 0,
        read_round: 7,
    };
    // Term 1 is new to this node: the answer waits for the term to be durable.
    n.step(from_leader(1, heartbeat.clone()));
    let rd = n.ready();
    assert!(rd.hard_state.is_some());
    assert!(rd.early_messages.is_empty());
    assert!(rd
        .messages
        .iter()
        .any(|m| matches!(m.body, Body::HeartbeatResponse { read_round: 7 })));
    n.advance(&rd);
    // Entries handed to storage but not yet durable, then a heartbeat: its answer goes
    // early, the append's acknowledgement does not.
    n.step(from_leader(1, append_first_entry()));
    let rd = n.ready();
    n.advance_handed(&rd);
    assert!(rd
        .messages
        .iter()
        .any(|m| matches!(m.body, Body::AppendResponse { .. })));
    n.step(from_leader(1, heartbeat));
    let rd = n.ready();
    assert!(rd
        .early_messages
        .iter()
        .any(|m| matches!(m.body, Body::HeartbeatResponse { read_round: 7 })));
    assert!(!rd
        .early_messages
        .iter()
        .any(|m| matches!(m.body, Body::AppendResponse { .. })));
}

/// Appends that arrive in one pass are acknowledged once, at the highest index, after the
/// one persist that covers them all; a rejection is never folded into an acknowledgement.
#[test]
fn a_burst_of_appends_is_acknowledged_once() {
    use weft_raft::{Body, Entry, Payload};
    let entry = |index| Entry {
        term: 1,
        index,
        payload: Payload::Command(Bytes::from_static(b"x")),
    };
    let append = |prev_index, entries| Body::Append {
        prev_index,
        prev_term: u64::from(prev_index > 0),
        entries,
        commit: 0,
    };
    let acks = |rd: &weft_raft::Ready| -> Vec<(bool, u64)> {
        rd.messages
            .iter()
            .chain(&rd.early_messages)
            .filter_map(|m| match m.body {
                Body::AppendResponse { success, index, .. } => Some((success, index)),
                _ => None,
            })
            .collect()
    };
    let mut n = follower();
    n.step(from_leader(1, append(0, vec![entry(1)])));
    n.step(from_leader(1, append(1, vec![entry(2), entry(3)])));
    n.step(from_leader(1, append(3, vec![entry(4)])));
    let rd = n.ready();
    assert_eq!(
        rd.entries.len(),
        4,
        "all four entries are persisted together"
    );
    assert_eq!(acks(&rd), vec![(true, 4)]);
    n.advance(&rd);
    // A gap is rejected; the acknowledgement after it is not folded into the rejection.
    n.step(from_leader(1, append(9, vec![entry(10)])));
    n.step(from_leader(1, append(4, vec![entry(5)])));
    let rd = n.ready();
    let got = acks(&rd);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(!got[0].0 && got[1] == (true, 5), "{got:?}");
}

/// Only entries, a snapshot, or a new term or vote need an fsync (etcd's `MustSync`); a
/// Ready that only moves the commit index does not, which spares every write a second
/// fsync on every node.
#[test]
fn only_a_commit_index_change_is_written_without_a_sync() {
    let mut n = follower();
    let heartbeat = |commit| weft_raft::Body::Heartbeat {
        commit,
        read_round: 0,
    };
    n.step(from_leader(1, heartbeat(0)));
    let rd = n.ready();
    assert!(
        rd.must_sync,
        "a new term must be durable before it is answered in"
    );
    n.advance(&rd);
    n.step(from_leader(1, append_first_entry()));
    let rd = n.ready();
    assert!(
        rd.must_sync,
        "entries must be durable before they are acknowledged"
    );
    n.advance(&rd);
    n.step(from_leader(1, heartbeat(1)));
    let rd = n.ready();
    assert_eq!(rd.hard_state.map(|h| h.commit), Some(1));
    assert_eq!(rd.committed.len(), 1);
    assert!(
        !rd.must_sync,
        "a commit index alone is recomputed after a crash"
    );
}

/// A fabric that withdraws `total_order` at run time (ptp beyond ε) turns ordered
/// elections off, and back on when it returns; asking again changes nothing.
#[test]
fn elections_follow_the_fabrics_order_as_it_changes() {
    use weft_raft::{Membership, Persisted, RawNode};
    let caps = |total_order| weft_transport::Capabilities {
        total_order,
        loopback: true,
        ..Default::default()
    };
    let cfg = Config::new(NodeId(1)).for_fabric(&caps(true));
    let voters = Membership::with_voters((1..=3).map(NodeId));
    let mut node = RawNode::new(cfg, voters, Persisted::default()).unwrap();
    assert!(node.ordered_election());
    assert!(node.adapt_to_fabric(&caps(false)), "withdrawn: a change");
    assert!(!node.ordered_election());
    assert!(
        !node.adapt_to_fabric(&caps(false)),
        "no change the second time"
    );
    assert!(node.adapt_to_fabric(&caps(true)) && node.ordered_election());
}

/// A command that would make an entry larger than `max_entry_bytes` is refused, never
/// appended (it could not travel in one message and would stall replication); the next
/// one commits.
#[test]
fn an_oversize_proposal_is_refused_and_the_next_one_commits() {
    let mut s = Sim::new(SimOptions::new(3, 7));
    let l = leader(&mut s);
    let max = Config::new(l).max_entry_bytes;
    let last = s.node(l).unwrap().last_index();
    let big = Bytes::from(vec![0u8; max]);
    match s.node_mut(l).unwrap().propose(big) {
        Err(ProposeError::TooLarge { size, max: m }) => assert_eq!((size > max, m), (true, max)),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.node(l).unwrap().last_index(), last, "nothing appended");
    commit(&mut s, "small", 3);
}

/// A follower reassembles a snapshot up to the size the leader announced and no
/// further: a chunk reaching past it, or one announcing another size midway, is dropped.
#[test]
fn snapshot_chunks_beyond_the_announced_size_are_dropped() {
    let mut n = follower();
    let meta = weft_raft::SnapshotMeta {
        index: 5,
        term: 1,
        membership: weft_raft::Membership::with_voters((1..=3).map(NodeId)),
    };
    let chunk =
        |offset: u64, total: u64, len: usize, done: bool| weft_raft::Body::InstallSnapshot {
            meta: meta.clone(),
            offset,
            total,
            data: Bytes::from(vec![7u8; len]),
            done,
        };
    let received = |n: &mut weft_raft::RawNode| {
        let rd = n.ready();
        n.advance(&rd);
        rd.early_messages
            .iter()
            .chain(&rd.messages)
            .find_map(|m| match m.body {
                weft_raft::Body::SnapshotResponse { received, .. } => Some(received),
                _ => None,
            })
    };
    n.step(from_leader(1, chunk(0, 10, 11, true)));
    assert_eq!(
        received(&mut n),
        None,
        "past the announced size: dropped unanswered"
    );
    n.step(from_leader(1, chunk(0, 10, 6, false)));
    assert_eq!(received(&mut n), Some(6));
    n.step(from_leader(1, chunk(6, 1 << 30, 4, false)));
    assert_eq!(
        received(&mut n),
        Some(6),
        "another size midway is not taken"
    );
    n.step(from_leader(1, chunk(6, 10, 4, true)));
    assert_eq!(received(&mut n), Some(10));
    assert_eq!(n.first_index(), 6, "installed");
}
