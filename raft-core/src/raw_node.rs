//! [`RawNode`]: the application's handle on the Raft state machine, with etcd/raft's
//! `Ready` contract.
//!
//! The contract is on [`RawNode`], where the crate's users see it.

use bytes::Bytes;

use crate::config::{Config, ConfigError};
use crate::message::Message;
use crate::raft::{ProposeError, Raft, ReadState, Role};
use crate::types::{Change, Entry, HardState, Index, Membership, NodeId, Snapshot, Term};

/// What a node persisted before it stopped: enough to restart it.
#[derive(Clone, Debug, Default)]
pub struct Persisted {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// The latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// The entries after the snapshot, in order.
    pub entries: Vec<Entry>,
}

/// Volatile state worth reporting: who leads, and this node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The leader this node follows, if known.
    pub leader: Option<NodeId>,
    /// This node's role.
    pub role: Role,
}

/// Everything the caller must do after a batch of input; see [`RawNode`].
#[derive(Debug, Default)]
pub struct Ready {
    /// Changed leader or role, if either changed.
    pub soft_state: Option<SoftState>,
    /// Term, vote or commit changed: persist before sending `messages`.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader: persist it, then restore the state machine
    /// from it before applying `committed`. Stored entries after it are kept only if the
    /// stored entry at its index has its term; otherwise the stored log is discarded.
    pub snapshot: Option<Snapshot>,
    /// Entries to append to stable storage (they may replace a suffix of the stored log).
    pub entries: Vec<Entry>,
    /// Whether persisting this Ready needs an fsync: it carries entries, a snapshot, or a
    /// new term or vote (etcd's `MustSync`). A hard state whose only change is the commit
    /// index may be written without one: a restarted node recomputes its commit index
    /// from the leader, so losing it costs nothing, while syncing it costs every write a
    /// second fsync on every node.
    pub must_sync: bool,
    /// Messages that may be sent before the above is durable (the leader's appends,
    /// heartbeats, snapshot chunks and TimeoutNow; a follower's heartbeat answers).
    pub early_messages: Vec<Message>,
    /// Messages to send once the above is durable.
    pub messages: Vec<Message>,
    /// Entries to apply to the state machine, in order.
    pub committed: Vec<Entry>,
    /// Linearizable reads that are ready once `committed` is applied up to their index.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.early_messages.is_empty()
            && self.committed.is_empty()
            && self.read_states.is_empty()
    }
}

/// What one `Ready` made durable, reported back with [`RawNode::on_persisted`]: small, so
/// that a storage thread can send it back without the entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// The hard state written, if the Ready had one.
    pub hard_state: Option<HardState>,
    /// Index and term of the last entry written, if any.
    pub last_entry: Option<(Index, Term)>,
}

impl Durable {
    /// What persisting `ready` makes durable.
    pub fn of(ready: &Ready) -> Durable {
        Durable {
            hard_state: ready.hard_state,
            last_entry: ready.entries.last().map(|e| (e.index, e.term)),
        }
    }

    /// Folds a later report into this one (the storage thread writes several Readies with
    /// one fsync).
    pub fn merge(&mut self, later: Durable) {
        if later.hard_state.is_some() {
            self.hard_state = later.hard_state;
        }
        if later.last_entry.is_some() {
            self.last_entry = later.last_entry;
        }
    }
}

/// A Raft node without I/O, with etcd/raft's `Ready` contract.
///
/// The caller loops: feed in ticks, messages and proposals; when [`RawNode::has_ready`],
/// take a [`Ready`], then in this order (0) send its `early_messages`, (1) persist its
/// snapshot, hard state and entries (fsync), (2) send its `messages`, (3) apply its snapshot
/// and committed entries, and (4) call [`RawNode::advance`]. The early messages are the
/// leader's appends and heartbeats, which may overlap the leader's own fsync because the
/// leader counts itself towards a commit only once its entries are durable (thesis
/// §10.2.1), and a follower's heartbeat answers, which claim nothing about its log and so
/// need not queue behind its writes (a leader that hears no answers for an election
/// timeout steps down, so a follower with a long write queue would otherwise depose a
/// healthy leader). Messages that acknowledge entries are only sent after those entries are
/// durable, so nothing acknowledged can be lost in a crash. Nothing leaves early while the
/// term or vote it rests on is not durable yet. A follower that takes several appends
/// from its leader in one batch acknowledges them once, for the highest index.
pub struct RawNode {
    raft: Raft,
    last_hard: HardState,
    /// The hard state known to be on stable storage (`last_hard` may be in flight).
    durable_hard: HardState,
    last_soft: SoftState,
}

impl RawNode {
    /// Starts a node from what it persisted (all empty for a new one). `bootstrap` is the
    /// initial membership of a new cluster; a snapshot's membership takes precedence.
    pub fn new(
        cfg: Config,
        bootstrap: Membership,
        persisted: Persisted,
    ) -> Result<RawNode, ConfigError> {
        cfg.validate()?;
        let hard = persisted.hard_state;
        let raft = Raft::new(cfg, bootstrap, hard, persisted.snapshot, persisted.entries);
        let last_soft = SoftState {
            leader: raft.leader,
            role: raft.role,
        };
        let last_hard = raft.hard_state();
        Ok(RawNode {
            raft,
            last_hard,
            durable_hard: last_hard,
            last_soft,
        })
    }

    /// Re-derives the fabric-dependent settings ([`Config::for_fabric`]) from `caps`, for a
    /// fabric whose guarantees change at run time (`ptp` withdraws `total_order` when
    /// clocks drift beyond ε): elections then fall back to ordinary Raft, and return to
    /// ordered ones when the guarantee does. Returns whether anything changed.
    pub fn adapt_to_fabric(&mut self, caps: &weft_transport::Capabilities) -> bool {
        self.raft.cfg.follow_order(caps)
    }

    /// Whether elections currently go by the fabric's order.
    pub fn ordered_election(&self) -> bool {
        self.raft.cfg.ordered_election
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Handles a message from a peer.
    pub fn step(&mut self, msg: Message) {
        self.raft.step(msg);
    }

    /// Proposes a command; returns the index it will have if committed (in this term).
    pub fn propose(&mut self, data: Bytes) -> Result<Index, ProposeError> {
        self.raft.propose(data)
    }

    /// Proposes a membership change, carried out through a joint configuration.
    pub fn propose_membership(&mut self, changes: Vec<Change>) -> Result<Index, ProposeError> {
        self.raft.propose_membership(changes)
    }

    /// Hands leadership to `to`.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        self.raft.transfer_leader(to)
    }

    /// Requests a linearizable read; the answer arrives as a [`ReadState`] with `ctx`.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        self.raft.read_index(ctx)
    }

    /// Compacts the log through `index` (already applied) into a snapshot of `data`.
    pub fn compact(&mut self, index: Index, data: Bytes) -> Result<Snapshot, ProposeError> {
        self.raft.compact(index, data)
    }

    /// The entries the last compaction ([`RawNode::compact`]) or snapshot install let go
    /// of, to be freed where the caller likes (see [`crate::log::RaftLog::take_released`]).
    pub fn take_released(&mut self) -> Vec<Entry> {
        self.raft.log.take_released()
    }

    /// The latest snapshot: taken here or installed from the leader.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.raft.snapshot.as_ref()
    }

    /// Campaigns at once (tests, operator tools).
    pub fn campaign(&mut self) {
        self.raft.become_follower(self.raft.term, None);
        for _ in 0..2 * self.raft.cfg.election_tick {
            if self.raft.role != Role::Follower {
                break;
            }
            self.raft.tick();
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.raft.id()
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.raft.term
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.raft.role
    }

    /// The leader, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.leader
    }

    /// Whom this node voted for in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.raft.vote
    }

    /// The commit index.
    pub fn commit_index(&self) -> Index {
        self.raft.log.committed
    }

    /// The highest index handed to the application.
    pub fn applied_index(&self) -> Index {
        self.raft.log.applied
    }

    /// The last log index.
    pub fn last_index(&self) -> Index {
        self.raft.log.last_index()
    }

    /// The term of the entry at `index`, if held.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.raft.log.term(index)
    }

    /// The entry at `index`, if held (not compacted).
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.raft.log.entry(index)
    }

    /// The membership in force.
    pub fn membership(&self) -> &Membership {
        &self.raft.membership
    }

    /// The first index still held as an entry (after the snapshot point).
    pub fn first_index(&self) -> Index {
        self.raft.log.first_index()
    }

    /// The leader's view of every member's replication (empty unless leading).
    pub fn progress(&self) -> &std::collections::BTreeMap<NodeId, crate::progress::Progress> {
        &self.raft.progress
    }

    /// Entry bytes of the appends produced and not yet taken by [`RawNode::ready`]: a
    /// runtime bounds the work of one pass by them (sending is its largest cost).
    pub fn queued_append_bytes(&self) -> usize {
        self.raft.msgs_bytes
    }

    /// Whether [`RawNode::ready`] has anything to hand out.
    pub fn has_ready(&mut self) -> bool {
        self.raft.flush_appends();
        let r = &self.raft;
        !r.msgs.is_empty()
            || r.log.taken < r.log.last_index()
            || r.log.applied < r.log.committed
            || r.pending_snapshot.is_some()
            || !r.read_states.is_empty()
            || r.hard_state() != self.last_hard
            || self.soft() != self.last_soft
    }

    fn soft(&self) -> SoftState {
        SoftState {
            leader: self.raft.leader,
            role: self.raft.role,
        }
    }

    /// Takes what must be persisted, sent and applied; see [`RawNode`].
    pub fn ready(&mut self) -> Ready {
        self.raft.flush_appends();
        let hard = self.raft.hard_state();
        let soft = self.soft();
        // Nothing in these depends on what this Ready persists unless the hard state
        // changed (a leader whose own vote is not yet durable must not act as leader before
        // it is: ordered elections can make a node candidate, voter for itself and leader in
        // one batch; a follower must not answer in a term it could forget).
        let hard_changed = !self.term_durable();
        self.raft.msgs_bytes = 0;
        let (early, late): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.raft.msgs)
            .into_iter()
            .partition(|m| {
                !hard_changed
                    && matches!(
                        m.body,
                        crate::Body::Append { .. }
                            | crate::Body::Heartbeat { .. }
                            | crate::Body::HeartbeatResponse { .. }
                            | crate::Body::InstallSnapshot { .. }
                            | crate::Body::TimeoutNow
                    )
            });
        let snapshot = self.raft.pending_snapshot.take();
        let entries = self.raft.log.unstable();
        let must_sync = snapshot.is_some()
            || !entries.is_empty()
            || (hard.term, hard.vote) != (self.last_hard.term, self.last_hard.vote);
        Ready {
            soft_state: (soft != self.last_soft).then_some(soft),
            hard_state: (hard != self.last_hard).then_some(hard),
            snapshot,
            entries,
            must_sync,
            early_messages: early,
            messages: late,
            committed: self
                .raft
                .log
                .to_apply(self.raft.cfg.max_committed_per_ready),
            read_states: std::mem::take(&mut self.raft.read_states),
        }
    }

    /// Reports that `ready` was persisted, sent and applied.
    pub fn advance(&mut self, ready: &Ready) {
        self.advance_handed(ready);
        self.on_persisted(&Durable::of(ready));
    }

    /// Reports that `ready` was handed to a storage thread (its `messages` go out once it
    /// is durable) and its committed entries applied; [`RawNode::on_persisted`] follows.
    /// Why: a node that waits for its own fsync before it reads the next message holds
    /// every acknowledgement behind its disk. The core stays correct meanwhile: the leader
    /// counts itself in a quorum only once its entries are durable, and appends leave early
    /// only while the term and vote they rest on are durable.
    pub fn advance_handed(&mut self, ready: &Ready) {
        if let Some(h) = ready.hard_state {
            self.last_hard = h;
        }
        if let Some(s) = ready.soft_state {
            self.last_soft = s;
        }
        if let Some(last) = ready.entries.last() {
            // Only if the entry is still the one handed (a later step may have replaced it).
            if self.raft.log.term(last.index) == Some(last.term) {
                self.raft.log.taken = self.raft.log.taken.max(last.index);
            }
        }
        if let Some(last) = ready.committed.last() {
            self.raft.log.applied = self.raft.log.applied.max(last.index);
        }
    }

    /// Whether the current term and vote are on stable storage. With asynchronous
    /// persistence a node can become leader before they are (ordered elections do it in
    /// one batch); it sends nothing as leader until they are, and a crash before that
    /// leaves no trace of its leadership.
    pub fn term_durable(&self) -> bool {
        let hard = self.raft.hard_state();
        (hard.term, hard.vote) == (self.durable_hard.term, self.durable_hard.vote)
    }

    /// Reports that what a handed `Ready` carried (see [`Durable::of`]) is on stable
    /// storage. Reports must come in the order the Readies were handed.
    pub fn on_persisted(&mut self, durable: &Durable) {
        if let Some(h) = durable.hard_state {
            self.durable_hard = h;
        }
        if let Some((index, term)) = durable.last_entry {
            // Only if the entry is still the one persisted (a later step may have replaced it).
            if self.raft.log.term(index) == Some(term) {
                self.raft.log.stable = self.raft.log.stable.max(index);
                self.raft.persisted(index);
            }
        }
    }
}
