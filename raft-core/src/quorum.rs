//! Majorities, including the joint ones of a membership change: while a change is in
//! progress every decision needs a majority of the old voters *and* of the new ones, so the
//! two configurations can never decide apart (Raft §6).

use std::collections::BTreeMap;

use crate::types::{Index, Membership, NodeId};

/// The outcome of an election so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// A majority granted.
    Won,
    /// A majority can no longer grant.
    Lost,
    /// Not decided yet.
    Pending,
}

/// The highest index a majority of `voters` holds. An empty set (the outgoing half of a
/// non-joint configuration) constrains nothing.
fn majority_index(voters: &[NodeId], matched: &impl Fn(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return Index::MAX;
    }
    let mut m: Vec<Index> = voters.iter().map(|v| matched(*v)).collect();
    m.sort_unstable_by(|a, b| b.cmp(a));
    m[voters.len() / 2]
}

/// The highest index held by a majority of every half of `membership`.
pub fn committed_index(membership: &Membership, matched: impl Fn(NodeId) -> Index) -> Index {
    majority_index(&membership.voters, &matched).min(majority_index(&membership.outgoing, &matched))
}

fn tally_half(voters: &[NodeId], votes: &BTreeMap<NodeId, bool>) -> Tally {
    if voters.is_empty() {
        return Tally::Won;
    }
    let need = voters.len() / 2 + 1;
    let granted = voters
        .iter()
        .filter(|v| votes.get(v) == Some(&true))
        .count();
    let rejected = voters
        .iter()
        .filter(|v| votes.get(v) == Some(&false))
        .count();
    if granted >= need {
        Tally::Won
    } else if rejected > voters.len() - need {
        Tally::Lost
    } else {
        Tally::Pending
    }
}

/// Whether `votes` (granted or refused, by voter) decide an election under `membership`.
pub fn tally(membership: &Membership, votes: &BTreeMap<NodeId, bool>) -> Tally {
    match (
        tally_half(&membership.voters, votes),
        tally_half(&membership.outgoing, votes),
    ) {
        (Tally::Won, Tally::Won) => Tally::Won,
        (Tally::Lost, _) | (_, Tally::Lost) => Tally::Lost,
        _ => Tally::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Vec<NodeId> {
        v.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn commit_needs_both_halves_of_a_joint_config() {
        let m = Membership {
            voters: ids(&[1, 2, 4]),
            outgoing: ids(&[1, 2, 3]),
            learners: vec![],
        };
        let matched = |n: NodeId| match n.0 {
            1 => 10,
            4 => 10,
            2 => 3,
            _ => 0,
        };
        // New half {1,2,4}: majority at 10; old half {1,2,3}: majority at 3.
        assert_eq!(committed_index(&m, matched), 3);
        let single = Membership::with_voters(ids(&[1]));
        assert_eq!(committed_index(&single, |_| 7), 7);
    }

    #[test]
    fn elections_are_won_lost_or_pending() {
        let m = Membership::with_voters(ids(&[1, 2, 3, 4, 5]));
        let mut v = BTreeMap::new();
        v.insert(NodeId(1), true);
        v.insert(NodeId(2), true);
        assert_eq!(tally(&m, &v), Tally::Pending);
        v.insert(NodeId(3), true);
        assert_eq!(tally(&m, &v), Tally::Won);
        let mut r = BTreeMap::new();
        for i in 1..=3 {
            r.insert(NodeId(i), false);
        }
        assert_eq!(tally(&m, &r), Tally::Lost);
        let joint = Membership {
            voters: ids(&[1, 2, 3]),
            outgoing: ids(&[3, 4, 5]),
            learners: vec![],
        };
        assert_eq!(
            tally(&joint, &v),
            Tally::Pending,
            "old half {{3,4,5}} has one vote"
        );
    }
}
