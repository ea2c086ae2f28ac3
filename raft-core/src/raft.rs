//! The Raft state machine: roles, elections, replication, commitment, snapshots,
//! membership changes, leadership transfer and linearizable reads. Pure: it consumes
//! messages, ticks and proposals, and queues messages and state for [`crate::RawNode`]
//! to hand out.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::log::RaftLog;
use crate::message::{Body, Message};
use crate::progress::{Mode, Progress};
use crate::quorum::{self, Tally};
use crate::types::{
    Change, Entry, HardState, Index, Membership, MembershipChange, NodeId, Payload, Snapshot,
    SnapshotMeta, Term,
};

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether it could win before starting an election (pre-vote).
    PreCandidate,
    /// Campaigning in a new term.
    Candidate,
    /// Leading its term.
    Leader,
}

/// A read that is linearizable at `index`: once the node has applied `index`, its state
/// machine may answer the read identified by `ctx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's context.
    pub ctx: u64,
    /// Apply at least this far, then read.
    pub index: Index,
}

/// Why a proposal or request was refused. Nothing was appended when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts writes; `leader` is the best guess of who is.
    #[error("not the leader (leader is {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is in progress; retry at the new leader.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// A membership change is still in progress.
    #[error("a membership change is already in progress")]
    ChangeInProgress,
    /// The change would leave no voter, or names a node in a contradictory way.
    #[error("invalid membership change: {0}")]
    InvalidChange(&'static str),
    /// A learner is promoted before it caught up with the log.
    #[error("learner {0} has not caught up yet")]
    LearnerBehind(NodeId),
    /// The snapshot index is not applied yet or already compacted.
    #[error("cannot snapshot at index {0}")]
    BadSnapshotIndex(Index),
    /// The command would make an entry larger than [`Config::max_entry_bytes`]: it could
    /// never travel in one message, so it is not appended.
    #[error("entry of {size} bytes exceeds the largest entry of {max} bytes (max_entry_bytes)")]
    TooLarge {
        /// The entry's size as [`crate::Entry::size`] counts it.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// Entry bytes one [`Raft::flush_appends`] sends to one follower at most (one append
/// always goes when flow control allows).
const FLUSH_BYTES: usize = 64 << 10;

struct PendingRead {
    ctx: u64,
    index: Index,
    round: u64,
    acks: BTreeMap<NodeId, bool>,
    /// The follower that asked, or `None` for a local read.
    requester: Option<NodeId>,
}

struct IncomingSnapshot {
    meta: SnapshotMeta,
    /// The size the first chunk announced; every later chunk must announce the same.
    total: u64,
    data: BytesMut,
}

/// One node's Raft state.
pub struct Raft {
    pub(crate) cfg: Config,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) log: RaftLog,
    pub(crate) membership: Membership,
    /// Memberships that took effect after the snapshot point: (entry index, membership).
    membership_history: Vec<(Index, Membership)>,
    /// Membership at the snapshot point.
    base_membership: Membership,
    pending_change: Index,
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_timeout: u32,
    votes: BTreeMap<NodeId, bool>,
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    pub(crate) msgs: Vec<Message>,
    /// Entry bytes of the appends in `msgs`.
    pub(crate) msgs_bytes: usize,
    transferee: Option<NodeId>,
    transfer_elapsed: u32,
    reads: Vec<PendingRead>,
    reads_waiting_commit: Vec<(u64, Option<NodeId>)>,
    read_round: u64,
    pub(crate) read_states: Vec<ReadState>,
    /// The latest snapshot this node has (made locally or installed), for lagging peers.
    pub(crate) snapshot: Option<Snapshot>,
    incoming: Option<IncomingSnapshot>,
    /// An installed snapshot the application has not been handed yet.
    pub(crate) pending_snapshot: Option<Snapshot>,
    /// (epoch, candidate) of the vote request considered in the current barrier epoch.
    epoch_vote: Option<(u64, NodeId)>,
    rng: ChaCha8Rng,
}

/// Folds a successful append acknowledgement into the one queued just before it for the
/// same leader and term: both leave after the same persist, and the leader learns
/// everything from the higher index (it frees its in-flight window up to it). A follower
/// that took a burst of appends in one pass then answers once, not once per append: with
/// 64 clients on loopback, about one acknowledgement in five is left. Returns whether
/// `next` was folded in (and so need not be sent).
fn acks_subsume(queued: &mut Body, next: &Body) -> bool {
    match (queued, next) {
        (
            Body::AppendResponse {
                success: true,
                index: queued,
                ..
            },
            Body::AppendResponse {
                success: true,
                index: next,
                ..
            },
        ) => {
            *queued = (*queued).max(*next);
            true
        }
        _ => false,
    }
}

impl Raft {
    /// A node restored from its persisted state; `bootstrap` is the membership to use when
    /// no snapshot says otherwise.
    pub fn new(
        cfg: Config,
        bootstrap: Membership,
        hard: HardState,
        snapshot: Option<Snapshot>,
        entries: Vec<Entry>,
    ) -> Raft {
        let (snap_index, snap_term, base) = match &snapshot {
            Some(s) => (s.meta.index, s.meta.term, s.meta.membership.clone()),
            None => (0, 0, bootstrap),
        };
        let log = RaftLog::restore(snap_index, snap_term, entries, hard.commit);
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut r = Raft {
            term: hard.term,
            vote: hard.vote,
            log,
            membership: base.clone(),
            membership_history: Vec::new(),
            base_membership: base,
            pending_change: 0,
            role: Role::Follower,
            leader: None,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: cfg.election_tick,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            msgs: Vec::new(),
            msgs_bytes: 0,
            transferee: None,
            transfer_elapsed: 0,
            reads: Vec::new(),
            reads_waiting_commit: Vec::new(),
            read_round: 0,
            read_states: Vec::new(),
            snapshot,
            incoming: None,
            pending_snapshot: None,
            epoch_vote: None,
            rng,
            cfg,
        };
        // Memberships committed before the crash take effect again.
        let committed = r.log.committed;
        r.apply_memberships(r.log.first_index(), committed);
        r.reset_timeout();
        r
    }

    /// The id of this node.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The state to persist.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    fn send(&mut self, to: NodeId, term: Term, body: Body) {
        if let Some(last) = self.msgs.last_mut() {
            if last.to == to && last.term == term && acks_subsume(&mut last.body, &body) {
                return;
            }
        }
        self.msgs.push(Message {
            from: self.cfg.id,
            to,
            term,
            epoch: 0,
            body,
        });
    }

    fn reset_timeout(&mut self) {
        let e = self.cfg.election_tick;
        self.randomized_timeout = self.rng.gen_range(e..2 * e);
    }

    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_timeout();
        self.votes.clear();
        self.transferee = None;
        self.reads.clear();
        self.reads_waiting_commit.clear();
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        let next = self.log.last_index() + 1;
        self.progress = self
            .membership
            .members()
            .into_iter()
            .map(|id| (id, Progress::new(next)))
            .collect();
        if let Some(me) = self.progress.get_mut(&self.cfg.id) {
            me.matched = self.log.stable;
            me.become_replicate();
        }
        // No membership change until the entries of earlier terms are committed.
        self.pending_change = self.log.last_index() + 1;
        self.append(Payload::Empty);
        tracing::debug!(id = %self.cfg.id, term, "became leader");
    }

    fn campaign(&mut self, pre: bool, transfer: bool) {
        if !self.membership.is_voter(self.cfg.id) {
            return;
        }
        // In an ordered election a candidate does not vote for itself at once: its own
        // request comes back through the fabric in the global order, and it votes for
        // whichever request of the term it sees first, as every other voter does. So all
        // voters, candidates included, pick the same candidate.
        let ordered = self.cfg.ordered_election && !pre;
        let term = if pre {
            self.reset(self.term);
            self.role = Role::PreCandidate;
            self.term + 1
        } else {
            self.reset(self.term + 1);
            self.role = Role::Candidate;
            if !ordered {
                self.vote = Some(self.cfg.id);
            }
            self.term
        };
        if !ordered {
            self.votes.insert(self.cfg.id, true);
            if self.poll() {
                return;
            }
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for id in self.membership.members() {
            if (id != self.cfg.id || ordered) && self.membership.is_voter(id) {
                self.send(
                    id,
                    term,
                    Body::RequestVote {
                        pre,
                        last_index,
                        last_term,
                        transfer,
                    },
                );
            }
        }
    }

    /// Counts the votes; returns whether the election is over.
    fn poll(&mut self) -> bool {
        match quorum::tally(&self.membership, &self.votes) {
            Tally::Won => {
                if self.role == Role::PreCandidate {
                    self.campaign(false, false);
                } else {
                    self.become_leader();
                }
                true
            }
            Tally::Lost => {
                let term = self.term;
                self.become_follower(term, None);
                true
            }
            Tally::Pending => false,
        }
    }

    /// One tick of logical time.
    pub fn tick(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.role != Role::Leader {
            if self.election_elapsed >= self.randomized_timeout
                && self.membership.is_voter(self.cfg.id)
            {
                self.election_elapsed = 0;
                self.campaign(self.cfg.pre_vote, false);
            }
            return;
        }
        self.heartbeat_elapsed += 1;
        if self.transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.cfg.election_tick {
                self.transferee = None;
            }
        }
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_active() {
                tracing::debug!(id = %self.cfg.id, term = self.term, "lost contact with a quorum, stepping down");
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat(0);
        }
    }

    fn quorum_active(&mut self) -> bool {
        let me = self.cfg.id;
        let mut active = BTreeMap::new();
        for (id, p) in self.progress.iter_mut() {
            active.insert(*id, *id == me || p.recent_active);
            p.recent_active = *id == me;
        }
        quorum::tally(&self.membership, &active) == Tally::Won
    }

    fn broadcast_heartbeat(&mut self, read_round: u64) {
        let term = self.term;
        let targets: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .filter(|(id, _)| **id != self.cfg.id)
            .map(|(id, p)| (*id, p.matched.min(self.log.committed)))
            .collect();
        for (id, commit) in targets {
            self.send(id, term, Body::Heartbeat { commit, read_round });
        }
    }

    fn append(&mut self, payload: Payload) -> Index {
        let index = self.log.last_index() + 1;
        self.log.append_local(Entry {
            term: self.term,
            index,
            payload,
        });
        index
    }

    /// Appends a command (leader only); returns its index.
    pub fn propose(&mut self, data: Bytes) -> Result<Index, ProposeError> {
        self.check_writable()?;
        let size = Entry::size_of_command(data.len());
        if size > self.cfg.max_entry_bytes {
            return Err(ProposeError::TooLarge {
                size,
                max: self.cfg.max_entry_bytes,
            });
        }
        Ok(self.append(Payload::Command(data)))
    }

    fn check_writable(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    /// Proposes a membership change (leader only), entered through a joint configuration.
    pub fn propose_membership(&mut self, changes: Vec<Change>) -> Result<Index, ProposeError> {
        self.check_writable()?;
        if self.pending_change > self.log.committed || self.membership.is_joint() {
            return Err(ProposeError::ChangeInProgress);
        }
        if changes.is_empty() {
            return Err(ProposeError::InvalidChange("no changes"));
        }
        let next = self.membership.enter_joint(&changes);
        if next.voters.is_empty() {
            return Err(ProposeError::InvalidChange(
                "the change removes every voter",
            ));
        }
        for c in &changes {
            if let Change::AddVoter(id) = c {
                if self.membership.is_learner(*id) {
                    let matched = self.progress.get(id).map_or(0, |p| p.matched);
                    if matched < self.log.committed {
                        return Err(ProposeError::LearnerBehind(*id));
                    }
                }
            }
        }
        let index = self.append(Payload::Membership(MembershipChange {
            changes,
            leave_joint: false,
        }));
        self.pending_change = index;
        Ok(index)
    }

    /// Hands leadership to `to` (leader only): catch it up, then tell it to campaign.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.cfg.id {
            return Ok(());
        }
        if !self.membership.is_voter(to) {
            return Err(ProposeError::InvalidChange(
                "transfer target is not a voter",
            ));
        }
        self.transferee = Some(to);
        self.transfer_elapsed = 0;
        if self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index())
        {
            let term = self.term;
            self.send(to, term, Body::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    /// Starts a linearizable read identified by `ctx`; its [`ReadState`] appears in a later
    /// ready. Followers ask the leader.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        match self.role {
            Role::Leader => {
                self.leader_read(ctx, None);
                Ok(())
            }
            _ => match self.leader {
                Some(leader) => {
                    let term = self.term;
                    self.send(leader, term, Body::ReadIndex { ctx });
                    Ok(())
                }
                None => Err(ProposeError::NotLeader { leader: None }),
            },
        }
    }

    fn leader_read(&mut self, ctx: u64, requester: Option<NodeId>) {
        if self.log.term(self.log.committed) != Some(self.term) {
            // The leader does not know the commit index until it commits in its own term.
            self.reads_waiting_commit.push((ctx, requester));
            return;
        }
        let index = self.log.committed;
        let single = self.membership.voters.len() == 1 && !self.membership.is_joint();
        if single || self.cfg.lease_reads {
            self.release_read(ctx, index, requester);
            return;
        }
        self.read_round += 1;
        let mut acks = BTreeMap::new();
        acks.insert(self.cfg.id, true);
        self.reads.push(PendingRead {
            ctx,
            index,
            round: self.read_round,
            acks,
            requester,
        });
        let round = self.read_round;
        self.broadcast_heartbeat(round);
    }

    fn release_read(&mut self, ctx: u64, index: Index, requester: Option<NodeId>) {
        match requester {
            None => self.read_states.push(ReadState { ctx, index }),
            Some(to) => {
                let term = self.term;
                self.send(to, term, Body::ReadIndexResponse { ctx, index });
            }
        }
    }

    /// Compacts the log up to `index` (applied) into a snapshot holding `data`.
    pub fn compact(&mut self, index: Index, data: Bytes) -> Result<Snapshot, ProposeError> {
        if index > self.log.applied || index < self.log.first_index() {
            return Err(ProposeError::BadSnapshotIndex(index));
        }
        let term = self
            .log
            .term(index)
            .ok_or(ProposeError::BadSnapshotIndex(index))?;
        let membership = self.membership_at(index);
        let snap = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership: membership.clone(),
            },
            data,
        };
        self.log.compact(index);
        self.membership_history.retain(|(i, _)| *i > index);
        self.base_membership = membership;
        self.snapshot = Some(snap.clone());
        Ok(snap)
    }

    fn membership_at(&self, index: Index) -> Membership {
        self.membership_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or_else(|| self.base_membership.clone(), |(_, m)| m.clone())
    }

    /// Advances the commit index and applies the memberships it commits.
    fn commit_to(&mut self, index: Index) {
        if index <= self.log.committed {
            return;
        }
        let from = self.log.committed + 1;
        self.log.committed = index;
        self.apply_memberships(from, index);
        if self.role == Role::Leader && self.log.term(index) == Some(self.term) {
            for (ctx, requester) in std::mem::take(&mut self.reads_waiting_commit) {
                self.leader_read(ctx, requester);
            }
        }
    }

    fn apply_memberships(&mut self, from: Index, to: Index) {
        for i in from.max(self.log.first_index())..=to {
            let Some(Entry {
                payload: Payload::Membership(change),
                ..
            }) = self.log.entry(i).cloned()
            else {
                continue;
            };
            self.membership = self.membership.apply(&change);
            self.membership_history.push((i, self.membership.clone()));
            if self.role == Role::Leader {
                self.on_membership_applied();
            }
        }
    }

    fn on_membership_applied(&mut self) {
        let next = self.log.last_index() + 1;
        let members = self.membership.members();
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            self.progress
                .entry(id)
                .or_insert_with(|| Progress::new(next));
        }
        if self.membership.is_joint() {
            let index = self.append(Payload::Membership(MembershipChange {
                changes: Vec::new(),
                leave_joint: true,
            }));
            self.pending_change = index;
        } else if !self.membership.is_voter(self.cfg.id) {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    fn maybe_commit(&mut self) {
        let me = self.cfg.id;
        let stable = self.log.stable;
        let progress = &self.progress;
        let index = quorum::committed_index(&self.membership, |id| {
            if id == me {
                stable
            } else {
                progress.get(&id).map_or(0, |p| p.matched)
            }
        });
        // Only entries of the current term are committed by counting (Figure 8).
        if index > self.log.committed
            && index != Index::MAX
            && self.log.term(index) == Some(self.term)
        {
            self.commit_to(index);
        }
    }

    /// Called once entries up to `index` are on stable storage.
    pub(crate) fn persisted(&mut self, index: Index) {
        if self.role == Role::Leader {
            if let Some(me) = self.progress.get_mut(&self.cfg.id) {
                me.matched = me.matched.max(index);
            }
            self.maybe_commit();
        }
    }

    /// Sends every follower what it is missing, as far as flow control allows and up to
    /// [`FLUSH_BYTES`] of entries each: a follower far behind gets the rest with the next
    /// calls, so that what one Ready or one acknowledgement sends stays bounded whatever
    /// the window.
    pub(crate) fn flush_appends(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let ids: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|id| *id != self.cfg.id)
            .collect();
        for id in ids {
            self.send_appends(id);
        }
    }

    /// Sends `to` appends while flow control allows, up to [`FLUSH_BYTES`] of entries.
    fn send_appends(&mut self, to: NodeId) {
        let mut sent = 0;
        while sent < FLUSH_BYTES {
            match self.send_append(to, false) {
                Some(bytes) => sent += bytes.max(1),
                None => break,
            }
        }
    }

    /// Sends one append (or snapshot chunk) to `to` if flow control allows and there is
    /// something to send (`probe`: send even if empty). Returns the entry bytes sent if
    /// an append with entries went while replicating, so the caller may send more.
    fn send_append(&mut self, to: NodeId, probe: bool) -> Option<usize> {
        let pr = self.progress.get(&to)?;
        if let Mode::Snapshot {
            in_flight: false, ..
        } = pr.mode
        {
            self.send_snapshot_chunk(to);
            return None;
        }
        if !pr.can_send(self.cfg.window()) {
            return None;
        }
        let next = pr.next;
        let probing = matches!(pr.mode, Mode::Probe { .. });
        let prev_index = next - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            self.start_snapshot(to);
            return None;
        };
        let (entries, bytes) = self.log.slice(
            next,
            self.log.last_index(),
            self.cfg.max_bytes_per_append,
            self.cfg.max_entries_per_append,
        );
        if entries.is_empty() && !probe && !probing {
            return None;
        }
        let last = entries.last().map(|e| e.index);
        let commit = self.log.committed;
        let term = self.term;
        self.send(
            to,
            term,
            Body::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            },
        );
        let pr = self.progress.get_mut(&to).expect("checked");
        pr.sent(last, bytes);
        self.msgs_bytes += bytes;
        (last.is_some() && pr.mode == Mode::Replicate).then_some(bytes)
    }

    fn start_snapshot(&mut self, to: NodeId) {
        let Some(snap) = &self.snapshot else {
            tracing::error!(peer = %to, "follower needs compacted entries but no snapshot exists");
            return;
        };
        let index = snap.meta.index;
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(index);
        }
        self.send_snapshot_chunk(to);
    }

    fn send_snapshot_chunk(&mut self, to: NodeId) {
        let Some(snap) = self.snapshot.clone() else {
            return;
        };
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        let Mode::Snapshot {
            index,
            acked,
            in_flight,
        } = &mut pr.mode
        else {
            return;
        };
        if *index != snap.meta.index {
            // A newer snapshot replaced the one being sent: start it over.
            *index = snap.meta.index;
            *acked = 0;
        }
        *in_flight = true;
        let offset = (*acked as usize).min(snap.data.len());
        let end = (offset + self.cfg.snapshot_chunk).min(snap.data.len());
        let term = self.term;
        self.send(
            to,
            term,
            Body::InstallSnapshot {
                meta: snap.meta.clone(),
                offset: offset as u64,
                total: snap.data.len() as u64,
                data: snap.data.slice(offset..end),
                done: end == snap.data.len(),
            },
        );
    }

    /// Handles one message.
    pub fn step(&mut self, m: Message) {
        if m.to != self.cfg.id {
            return;
        }
        if let (true, Body::RequestVote { .. }, Some((epoch, cand))) =
            (self.cfg.barrier_epochs, &m.body, self.epoch_vote)
        {
            // The fabric shows every voter an epoch's requests in one order; having granted
            // the first valid one, ignore the rest of the epoch (as if lost), whatever their
            // term, so the voters cannot split.
            if epoch == m.epoch && cand != m.from && m.term >= self.term {
                return;
            }
        }
        if m.term > self.term {
            if let Body::RequestVote { transfer, .. } = m.body {
                let in_lease = self.cfg.check_quorum
                    && self.leader.is_some()
                    && self.election_elapsed < self.cfg.election_tick;
                if in_lease && !transfer {
                    return; // a leader is alive: a disruptive candidate is ignored
                }
            }
            match m.body {
                Body::RequestVote { pre: true, .. } => {}
                Body::VoteResponse {
                    pre: true,
                    granted: true,
                } => {}
                Body::Append { .. } | Body::Heartbeat { .. } | Body::InstallSnapshot { .. } => {
                    self.become_follower(m.term, Some(m.from))
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                Body::Append { .. } | Body::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // Tell a deposed leader about the new term so it steps down.
                    let term = self.term;
                    self.send(
                        m.from,
                        term,
                        Body::AppendResponse {
                            success: false,
                            index: 0,
                            hint_term: 0,
                            hint_index: 0,
                        },
                    );
                }
                Body::RequestVote { pre: true, .. } => {
                    let term = self.term;
                    self.send(
                        m.from,
                        term,
                        Body::VoteResponse {
                            pre: true,
                            granted: false,
                        },
                    );
                }
                _ => {}
            }
            return;
        }
        match m.body {
            Body::RequestVote { .. } => self.on_vote_request(m),
            Body::ReadIndex { ctx } => {
                if self.role == Role::Leader {
                    self.leader_read(ctx, Some(m.from));
                } else if let Some(leader) = self.leader {
                    let term = self.term;
                    self.send(leader, term, Body::ReadIndex { ctx });
                }
            }
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::PreCandidate | Role::Candidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    fn on_vote_request(&mut self, m: Message) {
        let Body::RequestVote {
            pre,
            last_index,
            last_term,
            ..
        } = m.body
        else {
            return;
        };
        let can_vote = self.vote == Some(m.from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && m.term > self.term);
        let granted = can_vote && self.log.is_up_to_date(last_index, last_term);
        if granted && self.cfg.ordered_election {
            self.epoch_vote = Some((m.epoch, m.from));
        }
        if m.from == self.cfg.id {
            // Our own request, back through the ordered fabric: no other request of this
            // term came first, so we vote for ourselves now.
            if granted && !pre && self.role == Role::Candidate && m.term == self.term {
                self.vote = Some(self.cfg.id);
                self.votes.insert(self.cfg.id, true);
                self.poll();
            }
            return;
        }
        let term = if granted { m.term } else { self.term };
        self.send(m.from, term, Body::VoteResponse { pre, granted });
        if granted && !pre {
            self.election_elapsed = 0;
            self.vote = Some(m.from);
            if self.role == Role::Candidate {
                // Ordered election: another candidate's request of our term came before
                // our own; we voted for it, so our candidacy is over.
                self.become_follower(self.term, None);
            }
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            Body::VoteResponse { pre, granted } => {
                let mine = pre == (self.role == Role::PreCandidate);
                if mine {
                    self.votes.insert(m.from, granted);
                    self.poll();
                }
            }
            Body::Append { .. } | Body::Heartbeat { .. } | Body::InstallSnapshot { .. } => {
                let term = self.term;
                self.become_follower(term, Some(m.from));
                self.step_follower(m);
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            Body::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                let term = self.term;
                if prev_index < self.log.committed {
                    let committed = self.log.committed;
                    // Everything up to our commit matches; tell the leader where we are.
                    let last = prev_index + entries.len() as Index;
                    if last > committed {
                        let skip = (committed - prev_index) as usize;
                        let ct = self.log.term(committed).unwrap_or(0);
                        return self.step_follower(Message {
                            body: Body::Append {
                                prev_index: committed,
                                prev_term: ct,
                                entries: entries[skip..].to_vec(),
                                commit,
                            },
                            ..m
                        });
                    }
                    self.send(
                        m.from,
                        term,
                        Body::AppendResponse {
                            success: true,
                            index: committed,
                            hint_term: 0,
                            hint_index: 0,
                        },
                    );
                    return;
                }
                match self.log.append_from_leader(prev_index, prev_term, &entries) {
                    Ok(last) => {
                        self.commit_to(commit.min(last));
                        self.send(
                            m.from,
                            term,
                            Body::AppendResponse {
                                success: true,
                                index: last,
                                hint_term: 0,
                                hint_index: 0,
                            },
                        );
                    }
                    Err(c) => self.send(
                        m.from,
                        term,
                        Body::AppendResponse {
                            success: false,
                            index: prev_index,
                            hint_term: c.term,
                            hint_index: c.index,
                        },
                    ),
                }
            }
            Body::Heartbeat { commit, read_round } => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                self.commit_to(commit.min(self.log.last_index()));
                let term = self.term;
                self.send(m.from, term, Body::HeartbeatResponse { read_round });
            }
            Body::InstallSnapshot {
                meta,
                offset,
                total,
                data,
                done,
            } => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                let end = offset.saturating_add(data.len() as u64);
                if end > total || (done && end != total) {
                    tracing::warn!(
                        from = %m.from, offset, len = data.len(), total,
                        "snapshot chunk outside the size it announced; dropped"
                    );
                    return;
                }
                self.on_snapshot_chunk(m.from, (meta, total), offset, data, done);
            }
            // `campaign` ignores non-voters.
            Body::TimeoutNow => self.campaign(false, true),
            Body::ReadIndexResponse { ctx, index } if index > 0 => {
                self.read_states.push(ReadState { ctx, index });
            }
            _ => {}
        }
    }

    fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        (meta, total): (SnapshotMeta, u64),
        offset: u64,
        data: Bytes,
        done: bool,
    ) {
        let term = self.term;
        let index = meta.index;
        if index <= self.log.committed {
            self.incoming = None;
            self.send(
                from,
                term,
                Body::SnapshotResponse {
                    index,
                    received: 0,
                    installed: true,
                },
            );
            return;
        }
        if offset == 0 {
            self.incoming = Some(IncomingSnapshot {
                meta: meta.clone(),
                total,
                data: BytesMut::new(),
            });
        }
        let received = match &mut self.incoming {
            Some(inc)
                if inc.meta == meta && inc.total == total && inc.data.len() as u64 == offset =>
            {
                inc.data.extend_from_slice(&data);
                inc.data.len() as u64
            }
            Some(inc) if inc.meta == meta => inc.data.len() as u64,
            _ => 0,
        };
        let complete = done && received == offset + data.len() as u64;
        if complete {
            let inc = self.incoming.take().expect("present");
            let snap = Snapshot {
                meta: inc.meta,
                data: inc.data.freeze(),
            };
            self.log.install(&snap);
            self.membership = snap.meta.membership.clone();
            self.base_membership = self.membership.clone();
            self.membership_history.clear();
            self.snapshot = Some(snap.clone());
            self.pending_snapshot = Some(snap);
        }
        self.send(
            from,
            term,
            Body::SnapshotResponse {
                index,
                received,
                installed: complete,
            },
        );
    }

    fn step_leader(&mut self, m: Message) {
        let from = m.from;
        if let Some(pr) = self.progress.get_mut(&from) {
            pr.recent_active = true;
        } else {
            return;
        }
        match m.body {
            Body::AppendResponse {
                success,
                index,
                hint_term,
                hint_index,
            } => {
                if success {
                    let pr = self.progress.get_mut(&from).expect("checked");
                    if pr.acked(index) {
                        self.maybe_commit();
                        if self.transferee == Some(from) && index == self.log.last_index() {
                            let term = self.term;
                            self.send(from, term, Body::TimeoutNow);
                        }
                    }
                    self.send_appends(from);
                } else {
                    if index == 0 && hint_index == 0 {
                        return; // a newer term's rejection, already handled by the term rule
                    }
                    // Skip the follower's whole conflicting term, or to just past our
                    // last entry of that term if we have it.
                    let next = if hint_term == 0 {
                        hint_index
                    } else {
                        self.log
                            .last_index_of_term(hint_term, index)
                            .map_or(hint_index, |j| j + 1)
                    };
                    let pr = self.progress.get_mut(&from).expect("checked");
                    if pr.rejected(index, next.max(1)) {
                        self.send_append(from, true);
                    }
                }
            }
            Body::HeartbeatResponse { read_round } => {
                let pr = self.progress.get_mut(&from).expect("checked");
                pr.heard_back(self.cfg.window());
                if pr.matched < self.log.last_index() || matches!(pr.mode, Mode::Snapshot { .. }) {
                    self.send_append(from, true);
                }
                if read_round > 0 {
                    self.ack_reads(from, read_round);
                }
            }
            Body::SnapshotResponse {
                index,
                received,
                installed,
            } => {
                let pr = self.progress.get_mut(&from).expect("checked");
                if installed {
                    pr.acked(index);
                    pr.become_replicate();
                    self.maybe_commit();
                    self.send_appends(from);
                } else if let Mode::Snapshot {
                    index: si,
                    acked,
                    in_flight,
                } = &mut pr.mode
                {
                    if *si == index {
                        *acked = received;
                        *in_flight = false;
                        self.send_snapshot_chunk(from);
                    }
                }
            }
            _ => {}
        }
    }

    fn ack_reads(&mut self, from: NodeId, round: u64) {
        for r in self.reads.iter_mut().filter(|r| r.round <= round) {
            r.acks.insert(from, true);
        }
        // Release, in order, every read a quorum confirmed.
        let confirmed = self
            .reads
            .iter()
            .rposition(|r| quorum::tally(&self.membership, &r.acks) == Tally::Won);
        if let Some(last) = confirmed {
            let done: Vec<PendingRead> = self.reads.drain(..=last).collect();
            for r in done {
                self.release_read(r.ctx, r.index, r.requester);
            }
        }
    }
}
