//! The rules of the Raft paper, one test each.
//!
//! Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm" (USENIX ATC
//! 2014): the rules of Figure 2 and of sections 5.1 to 5.4, each checked directly against
//! one or a few [`RawNode`]s driven by hand (ticks, messages built with
//! [`weft_raft::sim::message`], proposals), in the spirit of etcd/raft's paper tests but
//! written from the paper itself. Membership changes (§6) are covered in `features.rs`.
//!
//! Most tests use the *classic* configuration of the paper: `pre_vote` and `check_quorum`
//! off. Pre-vote (thesis §9.6) keeps a timed-out follower from bumping its term, and
//! check-quorum's leader lease (thesis §6.2/§9.6) makes voters ignore higher-term vote
//! requests while they hear from a leader; both deliberately change the §5.1/§5.2 rules
//! these tests check. Where a test uses the default configuration it says so.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use weft_raft::sim::message;
use weft_raft::{
    Body, Config, Entry, HardState, Index, Membership, Message, NodeId, Payload, Persisted,
    ProposeError, RawNode, Ready, Role, Term,
};

/// The default election timeout, in ticks: randomized timeouts fall in `[ET, 2 * ET)`.
const ET: u32 = 10;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The paper's configuration: no pre-vote, no check-quorum (see the module docs).
fn classic(id: u32) -> Config {
    let mut cfg = Config::new(NodeId(id));
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    cfg
}

fn voters(size: u32) -> Membership {
    Membership::with_voters((1..=size).map(NodeId))
}

/// A command entry whose payload names its position, so overwrites are visible.
fn ent(term: Term, index: Index) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(Bytes::from(format!("cmd {index}@{term}"))),
    }
}

/// A log whose entry `i + 1` has term `terms[i]`.
fn log_of(terms: &[Term]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, t)| ent(*t, i as Index + 1))
        .collect()
}

/// A node of a `size`-voter cluster restarted from `hard` state and a log of `terms`.
fn restart(cfg: Config, size: u32, hard: HardState, terms: &[Term]) -> RawNode {
    RawNode::new(
        cfg,
        voters(size),
        Persisted {
            hard_state: hard,
            snapshot: None,
            entries: log_of(terms),
        },
    )
    .expect("valid config")
}

/// A classic node `id` of a `size`-voter cluster at `term` with a log of `terms`.
fn node_with(id: u32, size: u32, term: Term, terms: &[Term]) -> RawNode {
    let hard = HardState {
        term,
        vote: None,
        commit: 0,
    };
    restart(classic(id), size, hard, terms)
}

/// A fresh classic node `id` of a 3-voter cluster.
fn fresh(id: u32) -> RawNode {
    node_with(id, 3, 0, &[])
}

/// Takes the node's ready and reports it done (persisted, sent, applied).
/// Takes and advances a Ready; its early messages (the leader's appends and heartbeats)
/// are put first in `messages`, in the order they would be sent.
fn flush(n: &mut RawNode) -> Ready {
    let mut rd = n.ready();
    n.advance(&rd);
    let mut all = std::mem::take(&mut rd.early_messages);
    all.append(&mut rd.messages);
    rd.messages = all;
    rd
}

/// Ticks until `done` holds, returning how many ticks that took; panics after `limit`.
fn ticks_until(n: &mut RawNode, limit: u32, done: impl Fn(&RawNode) -> bool) -> u32 {
    for t in 1..=limit {
        n.tick();
        if done(n) {
            return t;
        }
    }
    panic!("condition not reached within {limit} ticks");
}

/// Ticks a (classic) follower until it campaigns; returns its first ready as candidate.
fn campaign(n: &mut RawNode) -> Ready {
    let term = n.term();
    ticks_until(n, 2 * ET, |n| n.role() == Role::Candidate);
    assert_eq!(n.term(), term + 1);
    flush(n)
}

/// Makes `n` leader of the next term: it campaigns and its peers grant, in id order,
/// until it wins. Returns its first ready as leader.
fn elect(n: &mut RawNode) -> Ready {
    campaign(n);
    let (me, term) = (n.id().0, n.term());
    let peers: Vec<u32> = n.membership().voters.iter().map(|v| v.0).collect();
    for p in peers.into_iter().filter(|p| *p != me) {
        if n.role() == Role::Leader {
            break;
        }
        n.step(grant(p, me, term, true));
    }
    assert_eq!(n.role(), Role::Leader);
    flush(n)
}

/// Every follower of leader `n` acknowledges its whole log, so all are replicating.
fn settle(n: &mut RawNode) {
    let (me, term, last) = (n.id().0, n.term(), n.last_index());
    let peers: Vec<u32> = n.membership().voters.iter().map(|v| v.0).collect();
    for p in peers.into_iter().filter(|p| *p != me) {
        n.step(ack(p, me, term, last));
    }
    flush(n);
}

fn vote_req(from: u32, to: u32, term: Term, last_index: Index, last_term: Term) -> Message {
    message(
        from,
        to,
        term,
        Body::RequestVote {
            pre: false,
            last_index,
            last_term,
            transfer: false,
        },
    )
}

fn grant(from: u32, to: u32, term: Term, granted: bool) -> Message {
    message(
        from,
        to,
        term,
        Body::VoteResponse {
            pre: false,
            granted,
        },
    )
}

fn append(
    from: u32,
    to: u32,
    term: Term,
    prev: (Index, Term),
    entries: Vec<Entry>,
    commit: Index,
) -> Message {
    message(
        from,
        to,
        term,
        Body::Append {
            prev_index: prev.0,
            prev_term: prev.1,
            entries,
            commit,
        },
    )
}

fn ack(from: u32, to: u32, term: Term, index: Index) -> Message {
    message(
        from,
        to,
        term,
        Body::AppendResponse {
            success: true,
            index,
            hint_term: 0,
            hint_index: 0,
        },
    )
}

fn heartbeat(from: u32, to: u32, term: Term, commit: Index) -> Message {
    message(
        from,
        to,
        term,
        Body::Heartbeat {
            commit,
            read_round: 0,
        },
    )
}

/// The messages addressed to `to`.
fn to(msgs: &[Message], to: u32) -> Vec<&Message> {
    msgs.iter().filter(|m| m.to == NodeId(to)).collect()
}

/// The single vote response in `msgs`, as (receiver, term, granted).
fn vote_answer(msgs: &[Message]) -> (u32, Term, bool) {
    let answers: Vec<(u32, Term, bool)> = msgs
        .iter()
        .filter_map(|m| match m.body {
            Body::VoteResponse {
                pre: false,
                granted,
            } => Some((m.to.0, m.term, granted)),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "expected one vote response in {msgs:?}");
    answers[0]
}

/// The single append response in `msgs`, as (success, index, hint_term, hint_index).
fn append_answer(msgs: &[Message]) -> (bool, Index, Term, Index) {
    let answers: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m.body {
            Body::AppendResponse {
                success,
                index,
                hint_term,
                hint_index,
            } => Some((success, index, hint_term, hint_index)),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "expected one append response in {msgs:?}");
    answers[0]
}

/// The terms of entries `1..=last_index`.
fn terms(n: &RawNode) -> Vec<Term> {
    (1..=n.last_index())
        .map(|i| n.term_at(i).expect("held"))
        .collect()
}

fn indexes(entries: &[Entry]) -> Vec<Index> {
    entries.iter().map(|e| e.index).collect()
}

/// A few classic nodes wired together by a lossless (but filterable) network.
struct Net {
    nodes: BTreeMap<u32, RawNode>,
}

impl Net {
    fn new(size: u32) -> Net {
        Net {
            nodes: (1..=size)
                .map(|id| (id, node_with(id, size, 0, &[])))
                .collect(),
        }
    }

    fn get(&mut self, id: u32) -> &mut RawNode {
        self.nodes.get_mut(&id).expect("member")
    }

    fn tick_all(&mut self) {
        for n in self.nodes.values_mut() {
            n.tick();
        }
    }

    /// Delivers messages until none are left, losing those `lose` selects; returns the
    /// delivered ones in order.
    fn run(&mut self, mut lose: impl FnMut(&Message) -> bool) -> Vec<Message> {
        let mut delivered = Vec::new();
        for _ in 0..1000 {
            let mut out = Vec::new();
            for n in self.nodes.values_mut() {
                out.extend(flush(n).messages);
            }
            if out.is_empty() {
                return delivered;
            }
            for m in out {
                if lose(&m) {
                    continue;
                }
                if let Some(n) = self.nodes.get_mut(&m.to.0) {
                    n.step(m.clone());
                    delivered.push(m);
                }
            }
        }
        panic!("the network never went quiet");
    }
}

// ---------------------------------------------------------------------------------------
// §5.1 Raft basics: terms
// ---------------------------------------------------------------------------------------

/// §5.1 / Figure 2 "Rules for Servers, All Servers": "If RPC request or response contains
/// term T > currentTerm: set currentTerm = T, convert to follower." A follower adopts the
/// term (forgetting its old vote) and, for a leader's message, learns who leads.
#[test]
fn follower_updates_term_from_higher_term_message() {
    let higher: Vec<(Message, Option<NodeId>)> = vec![
        (append(2, 1, 5, (0, 0), vec![], 0), Some(NodeId(2))),
        (heartbeat(2, 1, 5, 0), Some(NodeId(2))),
        (vote_req(2, 1, 5, 9, 4), None),
        (grant(2, 1, 5, false), None),
        (ack(2, 1, 5, 0), None),
    ];
    for (m, leader) in higher {
        let hard = HardState {
            term: 2,
            vote: Some(NodeId(3)),
            commit: 0,
        };
        let mut n = restart(classic(1), 3, hard, &[1, 2]);
        n.step(m.clone());
        assert_eq!(n.term(), 5, "term adopted from {m:?}");
        assert_eq!(n.role(), Role::Follower);
        assert_eq!(n.leader(), leader, "leader after {m:?}");
        let rd = flush(&mut n);
        let hs = rd.hard_state.expect("the new term is persisted");
        assert_eq!(hs.term, 5);
        assert_ne!(
            hs.vote,
            Some(NodeId(3)),
            "the vote of term 2 does not carry over"
        );
    }
}

/// §5.1: "If a candidate or leader discovers that its term is out of date, it immediately
/// reverts to follower state." A candidate seeing any message of a later term steps down.
#[test]
fn candidate_reverts_to_follower_on_higher_term_message() {
    let higher: Vec<(Message, Option<NodeId>)> = vec![
        (append(2, 1, 4, (0, 0), vec![], 0), Some(NodeId(2))),
        (heartbeat(3, 1, 4, 0), Some(NodeId(3))),
        (vote_req(3, 1, 4, 0, 0), None),
        (grant(2, 1, 4, false), None),
    ];
    for (m, leader) in higher {
        let mut n = fresh(1);
        campaign(&mut n);
        assert_eq!((n.role(), n.term()), (Role::Candidate, 1));
        n.step(m.clone());
        assert_eq!(n.role(), Role::Follower, "after {m:?}");
        assert_eq!(n.term(), 4);
        assert_eq!(n.leader(), leader);
        assert_ne!(n.vote(), Some(NodeId(1)), "its own vote was for term 1");
    }
}

/// §5.1: a leader whose term is out of date "immediately reverts to follower state" (Figure
/// 2, All Servers rule), whatever the message that reveals the later term.
#[test]
fn leader_reverts_to_follower_on_higher_term_message() {
    let higher: Vec<(Message, Option<NodeId>)> = vec![
        (append(2, 1, 3, (1, 1), vec![], 1), Some(NodeId(2))),
        (heartbeat(2, 1, 3, 0), Some(NodeId(2))),
        (vote_req(3, 1, 3, 5, 2), None),
        (grant(2, 1, 3, false), None),
        (ack(3, 1, 3, 0), None),
        (
            message(2, 1, 3, Body::HeartbeatResponse { read_round: 0 }),
            None,
        ),
    ];
    for (m, leader) in higher {
        let mut n = fresh(1);
        elect(&mut n);
        assert_eq!((n.role(), n.term()), (Role::Leader, 1));
        n.step(m.clone());
        assert_eq!(n.role(), Role::Follower, "after {m:?}");
        assert_eq!(n.term(), 3);
        assert_eq!(n.leader(), leader);
        assert!(
            matches!(
                n.propose(Bytes::from_static(b"x")),
                Err(ProposeError::NotLeader { .. })
            ),
            "a deposed leader takes no more proposals"
        );
    }
}

/// §5.1: "If a server receives a request with a stale term number, it rejects the request."
/// A stale leader's appends and heartbeats change nothing (no entries, no commit, no leader,
/// no reset of the election timer), a stale candidate gets no vote, and stale votes do not
/// count for a candidate.
#[test]
fn stale_term_messages_are_rejected() {
    // A follower in term 3.
    let mut n = node_with(1, 3, 3, &[1, 2]);
    n.step(append(2, 1, 2, (2, 2), vec![ent(2, 3)], 3));
    n.step(heartbeat(2, 1, 2, 2));
    n.step(vote_req(3, 1, 2, 10, 2));
    let rd = flush(&mut n);
    assert_eq!(n.term(), 3);
    assert_eq!(terms(&n), vec![1, 2], "stale entries are not appended");
    assert_eq!(n.commit_index(), 0, "a stale commit index is not adopted");
    assert_eq!(n.leader(), None, "a stale leader is not followed");
    assert_eq!(n.vote(), None, "a stale candidate gets no vote");
    assert!(rd.entries.is_empty() && rd.committed.is_empty());
    assert!(
        !rd.messages.iter().any(|m| matches!(
            m.body,
            Body::VoteResponse { granted: true, .. } | Body::AppendResponse { success: true, .. }
        )),
        "nothing stale is acknowledged: {:?}",
        rd.messages
    );
    // Stale heartbeats, one every tick, do not hold off an election.
    let mut elapsed = 0;
    while n.role() == Role::Follower {
        n.step(heartbeat(2, 1, 2, 0));
        n.tick();
        elapsed += 1;
        assert!(
            elapsed < 2 * ET,
            "stale heartbeats reset the election timer"
        );
    }
    assert_eq!(n.term(), 4);

    // A candidate in term 2 ignores grants from term 1.
    let mut c = node_with(1, 3, 1, &[]);
    campaign(&mut c);
    assert_eq!(c.term(), 2);
    c.step(grant(2, 1, 1, true));
    c.step(grant(3, 1, 1, true));
    assert_eq!(c.role(), Role::Candidate, "stale votes are not counted");

    // A leader in term 2 ignores a stale leader's append.
    let mut l = node_with(1, 3, 1, &[1]);
    elect(&mut l);
    let before = terms(&l);
    l.step(append(
        2,
        1,
        1,
        (0, 0),
        vec![ent(1, 1), ent(1, 2), ent(1, 3)],
        3,
    ));
    assert_eq!((l.role(), l.term()), (Role::Leader, 2));
    assert_eq!(terms(&l), before);
}

/// §5.1, with check-quorum on (the default configuration): the rejection of a stale
/// request carries the receiver's current term, so a deposed leader learns it is out of
/// date and steps down (Figure 2: AppendEntries "Results: term, currentTerm, for leader to
/// update itself").
#[test]
fn stale_leader_learns_the_current_term_from_the_rejection() {
    let mut follower = RawNode::new(
        Config::new(NodeId(2)),
        voters(3),
        Persisted {
            hard_state: HardState {
                term: 3,
                vote: None,
                commit: 0,
            },
            ..Persisted::default()
        },
    )
    .unwrap();
    let mut old = fresh(1);
    elect(&mut old);
    assert_eq!(old.term(), 1);
    old.tick();
    let hb: Vec<Message> = to(&flush(&mut old).messages, 2)
        .into_iter()
        .cloned()
        .collect();
    assert!(!hb.is_empty());
    for m in hb {
        follower.step(m);
    }
    let replies = flush(&mut follower).messages;
    assert!(!replies.is_empty(), "the stale request is answered");
    assert!(replies.iter().all(|m| m.term == 3));
    assert!(replies
        .iter()
        .all(|m| !matches!(m.body, Body::AppendResponse { success: true, .. })));
    for m in replies {
        old.step(m);
    }
    assert_eq!((old.role(), old.term()), (Role::Follower, 3));
}

// ---------------------------------------------------------------------------------------
// §5.2 Leader election
// ---------------------------------------------------------------------------------------

/// §5.2 / Figure 2 Followers: "If election timeout elapses without receiving AppendEntries
/// RPC from current leader or granting vote to candidate: convert to candidate." Candidates:
/// "On conversion to candidate, start election: increment currentTerm, vote for self".
#[test]
fn follower_starts_election_after_election_timeout() {
    let mut n = fresh(1);
    for _ in 0..ET - 1 {
        n.tick();
    }
    let rd = flush(&mut n);
    assert_eq!(
        (n.role(), n.term()),
        (Role::Follower, 0),
        "not before the timeout"
    );
    assert!(rd.messages.is_empty());
    let t = ET - 1 + ticks_until(&mut n, ET, |n| n.role() != Role::Follower);
    assert!((ET..2 * ET).contains(&t), "timed out after {t} ticks");
    assert_eq!(n.role(), Role::Candidate);
    assert_eq!(n.term(), 1, "the term is incremented");
    assert_eq!(n.vote(), Some(NodeId(1)), "it votes for itself");

    // Likewise for a follower that had a leader which fell silent.
    let mut f = fresh(2);
    f.step(heartbeat(1, 2, 4, 0));
    assert_eq!(f.leader(), Some(NodeId(1)));
    let t = ticks_until(&mut f, 2 * ET, |n| n.role() != Role::Follower);
    assert!(t >= ET);
    assert_eq!(
        (f.role(), f.term(), f.vote()),
        (Role::Candidate, 5, Some(NodeId(2)))
    );
}

/// §5.2: a candidate "issues RequestVote RPCs in parallel to each of the other servers",
/// carrying its term and, for §5.4.1, its last log index and term (Figure 2 RequestVote
/// arguments).
#[test]
fn candidate_sends_request_vote_to_all_others() {
    let mut n = node_with(1, 5, 2, &[1, 1, 2]);
    let rd = campaign(&mut n);
    let mut asked = BTreeSet::new();
    for m in &rd.messages {
        match m.body {
            Body::RequestVote {
                pre,
                last_index,
                last_term,
                ..
            } => {
                assert!(!pre);
                assert_eq!((m.from, m.term), (NodeId(1), 3));
                assert_eq!((last_index, last_term), (3, 2));
                assert!(asked.insert(m.to.0), "one request per peer");
            }
            ref b => panic!("unexpected message {b:?}"),
        }
    }
    assert_eq!(
        asked,
        BTreeSet::from([2, 3, 4, 5]),
        "every other voter is asked"
    );
}

/// §5.2: "A candidate wins an election if it receives votes from a majority of the servers
/// in the full cluster for the same term." Figure 2 Candidates: "If votes received from
/// majority of servers: become leader." A minority of grants is not enough.
#[test]
fn candidate_becomes_leader_with_votes_from_a_majority() {
    let mut n = node_with(1, 5, 0, &[]);
    campaign(&mut n);
    n.step(grant(2, 1, 1, true));
    assert_eq!(n.role(), Role::Candidate, "2 of 5 is no majority");
    n.step(grant(3, 1, 1, false));
    assert_eq!(n.role(), Role::Candidate, "a refusal is not a vote");
    n.step(grant(4, 1, 1, true));
    assert_eq!(n.role(), Role::Leader, "3 of 5 is a majority");
    assert_eq!((n.term(), n.leader()), (1, Some(NodeId(1))));
    let rd = flush(&mut n);
    assert_eq!(
        rd.soft_state.map(|s| s.role),
        Some(Role::Leader),
        "the application is told"
    );

    let mut small = fresh(1);
    campaign(&mut small);
    small.step(grant(3, 1, 1, true));
    assert_eq!(small.role(), Role::Leader, "2 of 3 is a majority");
}

/// §5.2: each server votes once, so a candidate must count each voter once: a duplicated
/// grant from the same voter does not make a majority.
#[test]
fn candidate_counts_each_voters_grant_once() {
    let mut n = node_with(1, 5, 0, &[]);
    campaign(&mut n);
    for _ in 0..4 {
        n.step(grant(2, 1, 1, true));
    }
    assert_eq!(n.role(), Role::Candidate);
    n.step(grant(5, 1, 1, true));
    assert_eq!(n.role(), Role::Leader);
}

/// §5.2: "Once a candidate wins an election, it becomes leader. It then sends heartbeat
/// messages to all of the other servers to establish its authority" (Figure 2 Leaders:
/// "Upon election: send initial empty AppendEntries RPCs (heartbeat) to each server").
/// Here the initial append carries the leader's no-op entry of its term (§8).
#[test]
fn leader_sends_append_entries_to_all_upon_election() {
    let mut n = node_with(1, 3, 1, &[1]);
    let rd = elect(&mut n);
    assert_eq!(n.term(), 2);
    assert_eq!(
        rd.entries,
        vec![Entry {
            term: 2,
            index: 2,
            payload: Payload::Empty
        }],
        "a no-op entry of the new term"
    );
    for peer in [2, 3] {
        let appends = to(&rd.messages, peer);
        assert!(
            appends
                .iter()
                .any(|m| m.term == 2 && matches!(m.body, Body::Append { .. })),
            "no append to {peer}: {:?}",
            rd.messages
        );
    }
}

/// §5.2: "While waiting for votes, a candidate may receive an AppendEntries RPC from another
/// server claiming to be leader. If the leader's term ... is at least as large as the
/// candidate's current term, then the candidate recognizes the leader as legitimate and
/// returns to follower state." (Figure 2 Candidates.) Its vote for itself in that term
/// stands.
#[test]
fn candidate_becomes_follower_on_append_entries_from_leader_of_its_term() {
    for m in [
        append(2, 1, 1, (0, 0), vec![ent(1, 1)], 0),
        heartbeat(3, 1, 1, 0),
    ] {
        let mut n = fresh(1);
        campaign(&mut n);
        let leader = m.from;
        let is_append = matches!(m.body, Body::Append { .. });
        n.step(m);
        assert_eq!(n.role(), Role::Follower);
        assert_eq!(n.term(), 1, "same term");
        assert_eq!(n.leader(), Some(leader));
        assert_eq!(
            n.vote(),
            Some(NodeId(1)),
            "a vote is never withdrawn within a term"
        );
        let rd = flush(&mut n);
        if is_append {
            assert_eq!(terms(&n), vec![1], "and the append is processed");
            assert_eq!(append_answer(&rd.messages), (true, 1, 0, 0));
        }
    }
}

/// §5.2: "if many followers become candidates at the same time, votes could be split so that
/// no candidate obtains a majority. When this happens, each candidate will time out and start
/// a new election by incrementing its term and initiating another round of RequestVote RPCs."
#[test]
fn candidate_with_split_vote_times_out_and_starts_new_election() {
    // Three voters: 1 votes for itself, 2 voted for 3, 3 for itself; no majority anywhere.
    let mut n = fresh(1);
    campaign(&mut n);
    n.step(grant(2, 1, 1, false));
    for _ in 0..ET - 1 {
        n.tick();
    }
    assert_eq!((n.role(), n.term()), (Role::Candidate, 1), "still waiting");
    assert!(flush(&mut n).messages.is_empty());
    let t = ET - 1 + ticks_until(&mut n, ET, |n| n.term() == 2);
    assert!((ET..2 * ET).contains(&t));
    assert_eq!((n.role(), n.vote()), (Role::Candidate, Some(NodeId(1))));
    let rd = flush(&mut n);
    let asked: BTreeSet<u32> = rd
        .messages
        .iter()
        .filter(|m| m.term == 2 && matches!(m.body, Body::RequestVote { pre: false, .. }))
        .map(|m| m.to.0)
        .collect();
    assert_eq!(asked, BTreeSet::from([2, 3]), "a new round of RequestVote");

    // Four voters split 2-2: every voter has answered and the election cannot be won; a new
    // one still starts after a timeout.
    let mut n = node_with(1, 4, 0, &[]);
    campaign(&mut n);
    n.step(grant(2, 1, 1, true));
    n.step(grant(3, 1, 1, false));
    n.step(grant(4, 1, 1, false));
    assert_ne!(n.role(), Role::Leader);
    let t = ticks_until(&mut n, 2 * ET, |n| n.term() == 2);
    assert!(t >= ET, "not before a full election timeout ({t} ticks)");
    assert_eq!(n.role(), Role::Candidate);
}

/// §5.2: "Raft uses randomized election timeouts ... election timeouts are chosen randomly
/// from a fixed interval (e.g., 150-300ms)", here `[election_tick, 2 * election_tick)`;
/// "each candidate restarts its randomized election timeout at the start of an election".
#[test]
fn election_timeouts_are_randomized() {
    // Different nodes (each seeded by its id by default).
    let mut by_node = BTreeSet::new();
    for id in 1..=40 {
        // (Cluster size `id` at least, so that node `id` is a voter.)
        let mut n = restart(classic(id), id.max(3), HardState::default(), &[]);
        let t = ticks_until(&mut n, 2 * ET, |n| n.role() != Role::Follower);
        assert!((ET..2 * ET).contains(&t), "node {id}: {t} ticks");
        by_node.insert(t);
    }
    assert!(by_node.len() >= 5, "timeouts barely vary: {by_node:?}");

    // Different seeds for the same node id.
    let mut by_seed = BTreeSet::new();
    for seed in 100..140 {
        let mut cfg = classic(1);
        cfg.seed = seed;
        let mut n = restart(cfg, 3, HardState::default(), &[]);
        let t = ticks_until(&mut n, 2 * ET, |n| n.role() != Role::Follower);
        assert!((ET..2 * ET).contains(&t), "seed {seed}: {t} ticks");
        by_seed.insert(t);
    }
    assert!(by_seed.len() >= 5, "timeouts barely vary: {by_seed:?}");

    // A fresh timeout for every election of the same node.
    let mut n = fresh(1);
    campaign(&mut n);
    let mut rounds = BTreeSet::new();
    for _ in 0..30 {
        let term = n.term();
        let t = ticks_until(&mut n, 2 * ET, |n| n.term() > term);
        assert!((ET..2 * ET).contains(&t), "re-election after {t} ticks");
        rounds.insert(t);
    }
    assert!(
        rounds.len() >= 3,
        "one node's timeouts barely vary: {rounds:?}"
    );
}

/// §5.2: "Each server will vote for at most one candidate in a given term, on a
/// first-come-first-served basis" (Figure 2 RequestVote: "If votedFor is null or
/// candidateId ... grant vote"). A repeated request from the chosen candidate is granted
/// again; a new term allows a new vote.
#[test]
fn voter_grants_at_most_one_vote_per_term_first_come_first_served() {
    for (first, second) in [(2, 3), (3, 2)] {
        let mut n = fresh(1);
        n.step(vote_req(first, 1, 1, 0, 0));
        assert_eq!(vote_answer(&flush(&mut n).messages), (first, 1, true));
        assert_eq!(n.vote(), Some(NodeId(first)));

        n.step(vote_req(second, 1, 1, 0, 0));
        assert_eq!(
            vote_answer(&flush(&mut n).messages),
            (second, 1, false),
            "a second candidate of the same term is refused"
        );
        assert_eq!(n.vote(), Some(NodeId(first)));

        n.step(vote_req(first, 1, 1, 0, 0));
        assert_eq!(
            vote_answer(&flush(&mut n).messages),
            (first, 1, true),
            "a retried request from the chosen candidate is granted again"
        );

        n.step(vote_req(second, 1, 2, 0, 0));
        assert_eq!(
            vote_answer(&flush(&mut n).messages),
            (second, 2, true),
            "a new term, a new vote"
        );
        assert_eq!((n.term(), n.vote()), (2, Some(NodeId(second))));
    }
}

/// Figure 2 "Persistent state on all servers (Updated on stable storage before responding to
/// RPCs): currentTerm, votedFor". The Ready that carries a RequestVote or a granted vote
/// also carries the hard state holding that term and vote, to be persisted before sending.
#[test]
fn vote_request_and_grant_are_persisted_before_they_are_sent() {
    // The candidate's own vote.
    let mut c = fresh(1);
    ticks_until(&mut c, 2 * ET, |n| n.role() == Role::Candidate);
    let rd = c.ready();
    assert!(rd
        .messages
        .iter()
        .any(|m| matches!(m.body, Body::RequestVote { .. })));
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(NodeId(1)),
            commit: 0
        }),
        "the vote for itself is in the same ready as its requests"
    );
    c.advance(&rd);

    // A voter's grant.
    let mut v = fresh(2);
    v.step(vote_req(3, 2, 1, 0, 0));
    let rd = v.ready();
    assert_eq!(vote_answer(&rd.messages), (3, 1, true));
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(NodeId(3)),
            commit: 0
        }),
        "the granted vote is in the same ready as the response"
    );
    v.advance(&rd);
    // Once persisted, it is not handed out again, and a refusal persists nothing new.
    v.step(vote_req(1, 2, 1, 0, 0));
    let rd = flush(&mut v);
    assert_eq!(vote_answer(&rd.messages), (1, 1, false));
    assert_eq!(rd.hard_state, None);
}

/// Figure 2: votedFor is persistent state, so a voter restarted from what it persisted
/// still votes at most once in the term (§5.2).
#[test]
fn restarted_voter_remembers_its_vote() {
    let mut v = fresh(2);
    v.step(vote_req(3, 2, 1, 0, 0));
    let hs = flush(&mut v).hard_state.expect("vote persisted");
    drop(v);

    let mut v = restart(classic(2), 3, hs, &[]);
    v.step(vote_req(1, 2, 1, 0, 0));
    assert_eq!(vote_answer(&flush(&mut v).messages), (1, 1, false));
    v.step(vote_req(3, 2, 1, 0, 0));
    assert_eq!(vote_answer(&flush(&mut v).messages), (3, 1, true));
}

/// Figure 2 Followers: the election timeout runs "without receiving AppendEntries RPC from
/// current leader or granting vote to candidate": granting a vote restarts it.
#[test]
fn granting_a_vote_resets_the_election_timer() {
    let hard = HardState {
        term: 1,
        vote: None,
        commit: 0,
    };
    // Twin nodes have the same seed, hence the same first timeout.
    let mut probe = restart(classic(1), 3, hard, &[]);
    let timeout = ticks_until(&mut probe, 2 * ET, |n| n.role() != Role::Follower);

    let mut n = restart(classic(1), 3, hard, &[]);
    for _ in 0..timeout - 1 {
        n.tick();
    }
    n.step(vote_req(2, 1, 1, 0, 0));
    assert_eq!(vote_answer(&flush(&mut n).messages), (2, 1, true));
    for _ in 0..ET - 1 {
        n.tick();
    }
    assert_eq!(
        (n.role(), n.term()),
        (Role::Follower, 1),
        "the grant restarted the timeout"
    );
    ticks_until(&mut n, 2 * ET, |n| n.role() == Role::Candidate);
    assert_eq!(n.term(), 2);
}

/// §5.4.1 Election restriction: "If the logs have last entries with different terms, then
/// the log with the later term is more up-to-date." A voter refuses a candidate whose last
/// entry has an older term, however long its log.
#[test]
fn voter_rejects_candidate_whose_last_term_is_older() {
    let cases = [
        // (candidate last_index, last_term, granted)
        (5, 1, false),
        (3, 1, false),
        (1, 1, false),
        (1, 3, true),
        (9, 3, true),
    ];
    for (last_index, last_term, granted) in cases {
        let mut v = node_with(1, 3, 2, &[1, 1, 2]);
        v.step(vote_req(2, 1, 3, last_index, last_term));
        assert_eq!(
            vote_answer(&flush(&mut v).messages),
            (2, 3, granted),
            "candidate log ({last_index}, {last_term}) vs voter (3, 2)"
        );
        let vote = granted.then_some(NodeId(2));
        assert_eq!(v.vote(), vote);
    }
}

/// §5.4.1: "If the logs end with the same term, then whichever log is longer is more
/// up-to-date." A voter refuses a candidate whose log ends in the same term but is shorter;
/// equal or longer is at least as up to date.
#[test]
fn voter_rejects_candidate_with_same_last_term_but_shorter_log() {
    let cases = [(1, 2, false), (2, 2, false), (3, 2, true), (4, 2, true)];
    for (last_index, last_term, granted) in cases {
        let mut v = node_with(1, 3, 2, &[1, 1, 2]);
        v.step(vote_req(2, 1, 3, last_index, last_term));
        assert_eq!(
            vote_answer(&flush(&mut v).messages),
            (2, 3, granted),
            "candidate log ({last_index}, {last_term}) vs voter (3, 2)"
        );
        assert_eq!(v.term(), 3, "the term is adopted even when refusing");
    }
}

/// §5.2: "Leaders send periodic heartbeats (AppendEntries RPCs that carry no log entries) to
/// all followers in order to maintain their authority." "A server remains in follower state
/// as long as it receives valid RPCs from a leader."
#[test]
fn leader_sends_heartbeats_that_prevent_elections() {
    let mut net = Net::new(3);
    ticks_until(net.get(1), 2 * ET, |n| n.role() == Role::Candidate);
    net.run(|_| false);
    assert_eq!(net.get(1).role(), Role::Leader);
    for id in [2, 3] {
        assert_eq!(net.get(id).leader(), Some(NodeId(1)));
    }
    for tick in 0..10 * ET {
        net.tick_all();
        let delivered = net.run(|_| false);
        for peer in [2, 3] {
            assert!(
                delivered.iter().any(|m| m.from == NodeId(1)
                    && m.to == NodeId(peer)
                    && m.term == 1
                    && matches!(m.body, Body::Heartbeat { .. })),
                "tick {tick}: no heartbeat to {peer}"
            );
        }
    }
    for id in 1..=3 {
        assert_eq!(net.get(id).term(), 1, "no election in 10 timeouts");
    }
    assert_eq!(net.get(1).role(), Role::Leader);

    // Without the leader's heartbeats the followers would have campaigned.
    for _ in 0..2 * ET {
        net.get(2).tick();
        net.get(3).tick();
    }
    assert!(net.get(2).term() > 1 || net.get(3).term() > 1);
}

// ---------------------------------------------------------------------------------------
// §5.3 Log replication
// ---------------------------------------------------------------------------------------

/// §5.3: "The leader appends the command to its log as a new entry, then issues
/// AppendEntries RPCs in parallel to each of the other servers to replicate the entry."
/// The entry is not committed yet. Only the leader takes proposals.
#[test]
fn leader_appends_proposal_to_its_log_and_sends_it_to_followers() {
    let mut f = fresh(2);
    assert!(matches!(
        f.propose(Bytes::from_static(b"x")),
        Err(ProposeError::NotLeader { .. })
    ));

    let mut n = fresh(1);
    elect(&mut n);
    settle(&mut n);
    assert_eq!(n.commit_index(), 1);
    let index = n.propose(Bytes::from_static(b"x")).unwrap();
    assert_eq!(index, 2);
    let entry = Entry {
        term: 1,
        index: 2,
        payload: Payload::Command(Bytes::from_static(b"x")),
    };
    assert_eq!(n.entry(2), Some(&entry));
    let rd = flush(&mut n);
    assert_eq!(rd.entries, vec![entry.clone()], "the leader persists it");
    assert!(rd.committed.is_empty());
    for peer in [2, 3] {
        let appends = to(&rd.messages, peer);
        assert_eq!(appends.len(), 1);
        assert_eq!(appends[0].term, 1);
        assert_eq!(
            appends[0].body,
            Body::Append {
                prev_index: 1,
                prev_term: 1,
                entries: vec![entry.clone()],
                commit: 1
            }
        );
    }
    assert_eq!(
        n.commit_index(),
        1,
        "not committed before a majority has it"
    );
}

/// §5.3: "A log entry is committed once the leader that created the entry has replicated it
/// on a majority of the servers" ... "The leader keeps track of the highest index it knows to
/// be committed, and it includes that index in future AppendEntries RPCs (including
/// heartbeats) so that the other servers eventually find out."
#[test]
fn leader_commits_entry_replicated_on_majority_and_tells_followers() {
    let mut n = node_with(1, 5, 0, &[]);
    elect(&mut n);
    settle(&mut n);
    let index = n.propose(Bytes::from_static(b"x")).unwrap();
    flush(&mut n);
    n.step(ack(2, 1, 1, index));
    assert_eq!(n.commit_index(), index - 1, "2 of 5 is no majority");
    assert!(flush(&mut n).committed.is_empty());
    n.step(ack(3, 1, 1, index));
    assert_eq!(n.commit_index(), index, "3 of 5 is");
    let rd = flush(&mut n);
    assert_eq!(indexes(&rd.committed), vec![index], "and it is applied");

    // Followers learn the commit index from the next heartbeat (capped at what each holds).
    n.tick();
    let rd = flush(&mut n);
    for (peer, commit) in [(2, index), (3, index), (4, index - 1), (5, index - 1)] {
        let hb: Vec<Index> = to(&rd.messages, peer)
            .iter()
            .filter_map(|m| match m.body {
                Body::Heartbeat { commit, .. } => Some(commit),
                _ => None,
            })
            .collect();
        assert_eq!(hb, vec![commit], "heartbeat to {peer}");
    }
    // ... and from the next append.
    n.propose(Bytes::from_static(b"y")).unwrap();
    let rd = flush(&mut n);
    for peer in [2, 3] {
        assert!(to(&rd.messages, peer)
            .iter()
            .any(|m| matches!(m.body, Body::Append { commit, .. } if commit == index)));
    }
}

/// §5.3 with Figure 2's durability: the leader is one of the majority only once the entry is
/// on its own stable storage, which it learns from `advance`.
#[test]
fn leader_counts_itself_toward_commit_only_once_persisted() {
    let mut n = fresh(1);
    elect(&mut n);
    settle(&mut n);
    let index = n.propose(Bytes::from_static(b"x")).unwrap();
    let rd = n.ready();
    assert_eq!(indexes(&rd.entries), vec![index]);
    n.step(ack(2, 1, 1, index));
    assert_eq!(
        n.commit_index(),
        index - 1,
        "the leader's copy is not durable yet"
    );
    n.advance(&rd);
    assert_eq!(n.commit_index(), index, "now leader and follower 2 hold it");
    assert_eq!(indexes(&flush(&mut n).committed), vec![index]);
}

/// §5.3: committing an entry "also commits all preceding entries in the leader's log".
#[test]
fn leader_commits_preceding_entries() {
    let mut n = fresh(1);
    elect(&mut n);
    settle(&mut n);
    for c in ["a", "b", "c"] {
        n.propose(Bytes::from(c)).unwrap();
    }
    flush(&mut n);
    assert_eq!(n.commit_index(), 1);
    n.step(ack(3, 1, 1, 4));
    assert_eq!(n.commit_index(), 4);
    let rd = flush(&mut n);
    assert_eq!(indexes(&rd.committed), vec![2, 3, 4], "in log order");
    let payloads: Vec<Payload> = rd.committed.into_iter().map(|e| e.payload).collect();
    let proposed: Vec<Payload> = ["a", "b", "c"]
        .into_iter()
        .map(|c| Payload::Command(Bytes::from(c)))
        .collect();
    assert_eq!(payloads, proposed);
}

/// Figure 2 AppendEntries receiver, rule 5: "If leaderCommit > commitIndex, set commitIndex =
/// min(leaderCommit, index of last new entry)"; §5.3: "Once a follower learns that a log
/// entry is committed, it applies the entry to its local state machine (in log order)."
#[test]
fn follower_commits_up_to_leaders_commit_index() {
    let mut f = fresh(2);
    f.step(append(
        1,
        2,
        1,
        (0, 0),
        vec![ent(1, 1), ent(1, 2), ent(1, 3)],
        2,
    ));
    assert_eq!(f.commit_index(), 2);
    let rd = flush(&mut f);
    assert_eq!(indexes(&rd.entries), vec![1, 2, 3]);
    assert_eq!(indexes(&rd.committed), vec![1, 2], "applied in order");
    f.step(heartbeat(1, 2, 1, 3));
    assert_eq!(f.commit_index(), 3);
    assert_eq!(indexes(&flush(&mut f).committed), vec![3]);
    f.step(append(1, 2, 1, (3, 1), vec![], 1));
    assert_eq!(f.commit_index(), 3, "the commit index never goes back");

    // Only up to the last entry the append proved to match the leader: entries 2 and 3 of
    // this follower (from term 1) are unverified by an append at (1, 1).
    let mut f = node_with(2, 3, 1, &[1, 1, 1]);
    f.step(append(1, 2, 2, (1, 1), vec![], 3));
    assert_eq!(
        f.commit_index(),
        1,
        "min(leaderCommit, index of last new entry)"
    );
    f.step(append(1, 2, 2, (3, 1), vec![], 3));
    assert_eq!(f.commit_index(), 3);
}

/// §5.3 consistency check / Figure 2 AppendEntries receiver, rule 2: "Reply false if log
/// doesn't contain an entry at prevLogIndex whose term matches prevLogTerm." The rejection
/// hints where the logs may agree: (conflicting term, its first index), or (0, last + 1).
#[test]
fn follower_rejects_append_entries_whose_prev_does_not_match() {
    let mut f = node_with(2, 3, 3, &[1, 1, 2, 2, 2]);
    f.step(append(1, 2, 3, (5, 3), vec![ent(3, 6)], 5));
    let rd = flush(&mut f);
    assert_eq!(
        append_answer(&rd.messages),
        (false, 5, 2, 3),
        "term 2 starts at 3"
    );
    assert!(rd.messages.iter().all(|m| m.term == 3));
    assert_eq!(terms(&f), vec![1, 1, 2, 2, 2], "nothing appended");
    assert_eq!(f.commit_index(), 0, "nor committed");

    f.step(append(1, 2, 3, (7, 3), vec![ent(3, 8)], 5));
    assert_eq!(
        append_answer(&flush(&mut f).messages),
        (false, 7, 0, 6),
        "too short: retry after our last entry"
    );
    assert_eq!(f.last_index(), 5);

    f.step(append(1, 2, 3, (2, 1), vec![ent(3, 3)], 0));
    assert_eq!(append_answer(&flush(&mut f).messages), (true, 3, 0, 0));
    assert_eq!(terms(&f), vec![1, 1, 3]);
}

/// §5.3: "After a rejection, the leader decrements nextIndex and retries the AppendEntries
/// RPC. Eventually nextIndex will reach a point where the leader and follower logs match."
/// With the paper's optimisation, "the follower can include the term of the conflicting
/// entry and the first index it stores for that term", so the leader skips a whole term per
/// rejection.
#[test]
fn leader_backs_up_next_index_using_the_rejection_hint() {
    let mut leader = node_with(1, 3, 3, &[1, 1, 3, 3]);
    let mut follower = node_with(2, 3, 3, &[1, 1, 2, 2, 2]);
    let rd = elect(&mut leader);
    assert_eq!((leader.term(), terms(&leader)), (4, vec![1, 1, 3, 3, 4]));

    let mut inbox: Vec<Message> = to(&rd.messages, 2).into_iter().cloned().collect();
    let mut rejections = Vec::new();
    let mut prevs = Vec::new();
    for _ in 0..10 {
        if inbox.is_empty() {
            break;
        }
        for m in inbox.drain(..) {
            if let Body::Append { prev_index, .. } = m.body {
                prevs.push(prev_index);
            }
            follower.step(m);
        }
        for m in flush(&mut follower).messages {
            if let Body::AppendResponse {
                success: false,
                hint_term,
                hint_index,
                ..
            } = m.body
            {
                rejections.push((hint_term, hint_index));
            }
            leader.step(m);
        }
        inbox = to(&flush(&mut leader).messages, 2)
            .into_iter()
            .cloned()
            .collect();
    }
    assert_eq!(
        rejections,
        vec![(2, 3)],
        "one rejection, naming term 2 from index 3"
    );
    assert_eq!(prevs[..2], [4, 2], "the leader retried right before term 2");
    assert_eq!(terms(&follower), terms(&leader), "the logs now match");
    assert_eq!(follower.entry(3), leader.entry(3));
    assert_eq!(leader.progress()[&NodeId(2)].matched, 5);
}

/// §5.3: "If followers crash or run slowly, or if network packets are lost, the leader
/// retries AppendEntries RPCs indefinitely ... until all followers eventually store all log
/// entries."
#[test]
fn leader_retries_append_entries_until_follower_stores_the_entries() {
    let mut net = Net::new(3);
    ticks_until(net.get(1), 2 * ET, |n| n.role() == Role::Candidate);
    net.run(|_| false);
    assert_eq!(net.get(1).role(), Role::Leader);
    let index = net.get(1).propose(Bytes::from_static(b"x")).unwrap();
    let lost = |m: &Message| m.to == NodeId(3) && matches!(m.body, Body::Append { .. });
    net.run(lost);
    assert_eq!(
        net.get(1).commit_index(),
        index,
        "1 and 2 suffice to commit"
    );
    assert!(net.get(3).last_index() < index, "3 lost the append");

    for _ in 0..5 {
        net.tick_all();
        net.run(|_| false);
        if net.get(3).last_index() == index {
            break;
        }
    }
    let leader_entry = net.get(1).entry(index).cloned();
    assert_eq!(net.get(3).entry(index).cloned(), leader_entry);
    net.tick_all();
    net.run(|_| false);
    assert_eq!(net.get(3).commit_index(), index);
}

/// Figure 2 AppendEntries receiver, rules 3 and 4: "If an existing entry conflicts with a new
/// one (same index but different terms), delete the existing entry and all that follow it"
/// and "Append any new entries not already in the log." Entries that agree are kept.
#[test]
fn follower_deletes_conflicting_entries_and_appends_new_ones() {
    // Conflict at 2: entries 2..4 go, the leader's 2 and 3 come in.
    let mut f = node_with(2, 3, 2, &[1, 2, 2, 2]);
    f.step(append(1, 2, 3, (1, 1), vec![ent(3, 2), ent(3, 3)], 0));
    let rd = flush(&mut f);
    assert_eq!(append_answer(&rd.messages), (true, 3, 0, 0));
    assert_eq!(terms(&f), vec![1, 3, 3], "entry 4 of term 2 is deleted too");
    assert_eq!(f.entry(2), Some(&ent(3, 2)));
    assert_eq!(
        rd.entries,
        vec![ent(3, 2), ent(3, 3)],
        "storage replaces its suffix"
    );

    // No conflict: an append of entries already held deletes nothing.
    let mut f = node_with(2, 3, 1, &[1, 1, 1]);
    f.step(append(1, 2, 1, (0, 0), vec![ent(1, 1)], 0));
    let rd = flush(&mut f);
    assert_eq!(append_answer(&rd.messages), (true, 1, 0, 0));
    assert_eq!(terms(&f), vec![1, 1, 1], "a matching prefix keeps the rest");
    assert!(rd.entries.is_empty());

    // Overlap: only what is not already in the log is appended.
    let mut f = node_with(2, 3, 2, &[1, 1]);
    f.step(append(1, 2, 2, (1, 1), vec![ent(1, 2), ent(2, 3)], 0));
    let rd = flush(&mut f);
    assert_eq!(append_answer(&rd.messages), (true, 3, 0, 0));
    assert_eq!(terms(&f), vec![1, 1, 2]);
    assert_eq!(indexes(&rd.entries), vec![3], "entry 2 was already there");
}

/// §5.5: "Raft RPCs are idempotent": a follower that receives an AppendEntries it already
/// applied changes nothing and answers the same.
#[test]
fn follower_append_entries_is_idempotent() {
    let mut f = fresh(2);
    let m = append(1, 2, 1, (0, 0), vec![ent(1, 1), ent(1, 2)], 1);
    f.step(m.clone());
    let first = flush(&mut f);
    f.step(m);
    let second = flush(&mut f);
    assert_eq!(
        append_answer(&second.messages),
        append_answer(&first.messages)
    );
    assert!(second.entries.is_empty() && second.committed.is_empty());
    assert_eq!((terms(&f), f.commit_index()), (vec![1, 1], 1));
}

/// §5.3 / Figure 3 Leader Append-Only: "a leader never overwrites or deletes entries in its
/// log; it only appends new entries." Neither conflicting appends from another server, nor
/// rejections, nor vote requests of its term touch its log.
#[test]
fn leader_never_overwrites_or_deletes_its_own_log() {
    let mut n = node_with(1, 3, 1, &[1, 1]);
    elect(&mut n);
    n.propose(Bytes::from_static(b"mine")).unwrap();
    flush(&mut n);
    let before: Vec<Entry> = (1..=n.last_index())
        .map(|i| n.entry(i).cloned().unwrap())
        .collect();
    assert_eq!(terms(&n), vec![1, 1, 2, 2]);

    n.step(append(2, 1, 2, (1, 1), vec![ent(2, 2)], 2));
    n.step(append(3, 1, 2, (0, 0), vec![], 0));
    n.step(message(
        2,
        1,
        2,
        Body::AppendResponse {
            success: false,
            index: 4,
            hint_term: 1,
            hint_index: 1,
        },
    ));
    n.step(vote_req(3, 1, 2, 10, 2));
    let rd = flush(&mut n);
    assert_eq!(n.role(), Role::Leader);
    assert!(rd.entries.is_empty(), "nothing of its log is rewritten");
    let after: Vec<Entry> = (1..=n.last_index())
        .map(|i| n.entry(i).cloned().unwrap())
        .collect();
    assert_eq!(after, before);

    let next = n.propose(Bytes::from_static(b"more")).unwrap();
    assert_eq!(next, 5, "it only appends");
    let rd = flush(&mut n);
    assert_eq!(indexes(&rd.entries), vec![5]);
    for (i, e) in before.iter().enumerate() {
        assert_eq!(n.entry(i as Index + 1), Some(e));
    }
}

// ---------------------------------------------------------------------------------------
// §5.4 Safety
// ---------------------------------------------------------------------------------------

/// §5.4.2 (Figure 8): "Raft never commits log entries from previous terms by counting
/// replicas. Only log entries from the leader's current term are committed by counting
/// replicas; once an entry from the current term has been committed in this way, then all
/// prior entries are committed indirectly because of the Log Matching Property."
#[test]
fn leader_does_not_commit_entries_of_previous_terms_by_counting_replicas() {
    // Entry 2 is from term 2, never committed; node 1 now leads term 3.
    let mut n = node_with(1, 3, 2, &[1, 2]);
    elect(&mut n);
    assert_eq!((n.term(), terms(&n)), (3, vec![1, 2, 3]));
    assert_eq!(n.commit_index(), 0);

    // Both followers hold entries 1 and 2: every replica, still not committed by counting.
    n.step(ack(2, 1, 3, 2));
    n.step(ack(3, 1, 3, 2));
    assert_eq!(
        n.commit_index(),
        0,
        "an entry of term 2 is not committed by counting replicas in term 3"
    );
    assert!(flush(&mut n).committed.is_empty());
    n.tick();
    for m in flush(&mut n).messages {
        if let Body::Heartbeat { commit, .. } | Body::Append { commit, .. } = m.body {
            assert_eq!(commit, 0, "no commit index is advertised: {m:?}");
        }
    }

    // Once the leader's own entry 3 is on a majority, 1 and 2 commit with it.
    n.step(ack(2, 1, 3, 3));
    assert_eq!(n.commit_index(), 3);
    assert_eq!(indexes(&flush(&mut n).committed), vec![1, 2, 3]);
}
