//! The data Raft replicates and persists: log entries, hard state, snapshots and
//! membership, as serde types so that storage and wire share one encoding.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use weft_transport::NodeId;

/// A Raft term: a logical clock that only grows.
pub type Term = u64;
/// A position in the replicated log; the first entry has index 1, 0 means "none".
pub type Index = u64;

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Appended by a new leader to commit entries of earlier terms (Raft §5.4.2).
    Empty,
    /// An application command, opaque to Raft.
    Command(Bytes),
    /// A membership change (joint consensus).
    Membership(MembershipChange),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The leader's term when the entry was created.
    pub term: Term,
    /// Its position in the log.
    pub index: Index,
    /// What it carries.
    pub payload: Payload,
}

/// Bytes [`Entry::size`] counts for an entry's index, term and framing.
const ENTRY_FIELDS: usize = 24;

impl Entry {
    /// Approximate size on the wire, for batching limits.
    pub fn size(&self) -> usize {
        match &self.payload {
            Payload::Empty => ENTRY_FIELDS,
            Payload::Command(b) => Entry::size_of_command(b.len()),
            Payload::Membership(c) => ENTRY_FIELDS + 16 * c.changes.len(),
        }
    }

    /// [`Entry::size`] of an entry holding a command of `len` bytes.
    pub fn size_of_command(len: usize) -> usize {
        ENTRY_FIELDS + len
    }
}

/// The state that must be on stable storage before messages that depend on it are sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Whom it voted for in `term`.
    pub vote: Option<NodeId>,
    /// The highest index known committed (may be persisted lazily; it is recomputed).
    pub commit: Index,
}

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Change {
    /// Make the node a voter (promoting it if it is a learner).
    AddVoter(NodeId),
    /// Make the node a learner: it receives the log but does not vote.
    AddLearner(NodeId),
    /// Remove the node from the cluster.
    Remove(NodeId),
}

/// A membership change as it travels in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    /// The steps; empty in the entry that leaves a joint configuration.
    pub changes: Vec<Change>,
    /// `true` for the entry that ends a joint configuration.
    pub leave_joint: bool,
}

/// Who votes and who listens, at one point of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voters of the (new) configuration.
    pub voters: Vec<NodeId>,
    /// Voters of the old configuration while a joint change is in progress, else empty.
    pub outgoing: Vec<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: Vec<NodeId>,
}

impl Membership {
    /// A configuration where `voters` vote and nobody else listens.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort();
        voters.dedup();
        Membership {
            voters,
            ..Membership::default()
        }
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether `id` votes in either half.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// Whether `id` is a learner (and not a voter in either half).
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id) && !self.is_voter(id)
    }

    /// Every node that receives the log: voters of both halves and learners, sorted.
    pub fn members(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .voters
            .iter()
            .chain(&self.outgoing)
            .chain(&self.learners)
            .copied()
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The configuration after entering the joint phase of `changes`.
    pub fn enter_joint(&self, changes: &[Change]) -> Membership {
        let mut voters = self.voters.clone();
        let mut learners = self.learners.clone();
        for c in changes {
            match *c {
                Change::AddVoter(id) => {
                    learners.retain(|l| *l != id);
                    if !voters.contains(&id) {
                        voters.push(id);
                    }
                }
                Change::AddLearner(id) => {
                    voters.retain(|v| *v != id);
                    if !learners.contains(&id) {
                        learners.push(id);
                    }
                }
                Change::Remove(id) => {
                    voters.retain(|v| *v != id);
                    learners.retain(|l| *l != id);
                }
            }
        }
        voters.sort();
        learners.sort();
        Membership {
            voters,
            outgoing: self.voters.clone(),
            learners,
        }
    }

    /// The configuration after the joint phase ends: the new voters alone.
    pub fn leave_joint(&self) -> Membership {
        Membership {
            voters: self.voters.clone(),
            outgoing: Vec::new(),
            learners: self.learners.clone(),
        }
    }

    /// Applies one logged change.
    pub fn apply(&self, change: &MembershipChange) -> Membership {
        if change.leave_joint {
            self.leave_joint()
        } else {
            self.enter_joint(&change.changes)
        }
    }
}

/// What a snapshot stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log index the snapshot covers.
    pub index: Index,
    /// The term of that entry.
    pub term: Term,
    /// The membership in force at `index`.
    pub membership: Membership,
}

/// A state-machine snapshot: everything up to `meta.index`, compacted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// The application's serialized state.
    pub data: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_changes_keep_the_old_voters_until_leave() {
        let m = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let j = m.enter_joint(&[Change::Remove(NodeId(3)), Change::AddVoter(NodeId(4))]);
        assert!(j.is_joint());
        assert_eq!(j.voters, vec![NodeId(1), NodeId(2), NodeId(4)]);
        assert_eq!(j.outgoing, vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert!(j.is_voter(NodeId(3)) && j.is_voter(NodeId(4)));
        let after = j.leave_joint();
        assert!(!after.is_joint() && !after.is_voter(NodeId(3)));
        let l = after
            .enter_joint(&[Change::AddLearner(NodeId(5))])
            .leave_joint();
        assert!(l.is_learner(NodeId(5)));
        let promoted = l.enter_joint(&[Change::AddVoter(NodeId(5))]);
        assert!(!promoted.is_learner(NodeId(5)) && promoted.is_voter(NodeId(5)));
    }
}
