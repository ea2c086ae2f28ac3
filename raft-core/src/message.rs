//! The messages Raft nodes exchange, and their MessagePack encoding.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// One Raft message. `term` is the sender's current term (Raft's universal rule: a
/// message from a later term updates the receiver's term first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    /// The barrier epoch the fabric delivered the message in (0 without barriers). Set by
    /// the runtime from the delivery; not part of the encoding.
    #[serde(skip)]
    pub epoch: u64,
    /// What it says.
    pub body: Body,
}

/// The kinds of Raft message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A (pre-)vote request (§5.2; pre-vote from Ongaro's thesis §9.6).
    RequestVote {
        /// A pre-vote asks "would you vote for me?" without disturbing anyone's term.
        pre: bool,
        /// The candidate's last log index.
        last_index: Index,
        /// The term of the candidate's last entry.
        last_term: Term,
        /// Sent on the leader's order (TimeoutNow): voters skip the leader-lease check.
        transfer: bool,
    },
    /// The answer to a (pre-)vote request.
    VoteResponse {
        /// Answers a pre-vote.
        pre: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// Log entries to append after (`prev_index`, `prev_term`) (§5.3).
    Append {
        /// The entry just before the new ones.
        prev_index: Index,
        /// Its term.
        prev_term: Term,
        /// The entries; empty to probe.
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: Index,
    },
    /// The answer to an append.
    AppendResponse {
        /// Whether the entries were appended.
        success: bool,
        /// On success, the follower's new last matching index; on rejection, the
        /// `prev_index` that did not match.
        index: Index,
        /// On rejection, where the leader should retry: the term of the conflicting entry
        /// and the first index the follower has of that term, or (0, last index + 1) if the
        /// follower's log is too short. Skips a whole term per round trip.
        hint_term: Term,
        /// See `hint_term`.
        hint_index: Index,
    },
    /// Leader liveness, commit propagation and read-index confirmation.
    Heartbeat {
        /// The leader's commit index, capped at what the follower is known to hold.
        commit: Index,
        /// A read-index round this heartbeat confirms, if any.
        read_round: u64,
    },
    /// The answer to a heartbeat.
    HeartbeatResponse {
        /// Echoes the heartbeat's read round.
        read_round: u64,
    },
    /// One chunk of a snapshot (§7), sent when the follower needs compacted entries.
    InstallSnapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// Byte offset of `data` in the snapshot.
        offset: u64,
        /// The whole snapshot's size: the receiver takes no byte beyond it.
        total: u64,
        /// The chunk.
        data: Bytes,
        /// Whether this is the last chunk.
        done: bool,
    },
    /// Acknowledges snapshot chunks.
    SnapshotResponse {
        /// The snapshot's index.
        index: Index,
        /// Bytes received so far (the next offset wanted).
        received: u64,
        /// Whether the snapshot was installed.
        installed: bool,
    },
    /// Leadership transfer: campaign now (§3.10 of the thesis).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of a client.
    ReadIndex {
        /// The client's context, returned with the answer.
        ctx: u64,
    },
    /// The leader's answer to `ReadIndex`.
    ReadIndexResponse {
        /// The client's context.
        ctx: u64,
        /// Reads at this index or later are linearizable; 0 if the leader refused.
        index: Index,
    },
}

/// Why bytes could not be decoded into a [`Message`].
#[derive(Debug, thiserror::Error)]
#[error("malformed raft message: {0}")]
pub struct DecodeError(#[from] rmp_serde::decode::Error);

/// The `to` of a message sent as one multicast to several nodes: each receiver reads it as
/// addressed to itself. Node id `u32::MAX` is reserved for it.
pub const TO_GROUP: NodeId = NodeId(u32::MAX);

/// Groups messages with the same sender, term and body, each with its recipients, in order
/// of first appearance. An ordered fabric sends each group as one multicast, which takes
/// one place in its global order at every recipient: one injection per append round
/// instead of one per follower, and a candidate's vote request at the same place for every
/// voter, itself included.
pub fn group_by_body(msgs: &[Message]) -> Vec<(Vec<NodeId>, &Message)> {
    let mut groups: Vec<(Vec<NodeId>, &Message)> = Vec::new();
    for m in msgs {
        match groups
            .iter_mut()
            .find(|(_, g)| g.from == m.from && g.term == m.term && g.body == m.body)
        {
            Some((to, _)) => to.push(m.to),
            None => groups.push((vec![m.to], m)),
        }
    }
    groups
}

/// The wire form of a [`Message`] with another receiver, borrowed: the same fields in the
/// same order, so it encodes exactly as the message would with `to` replaced.
#[derive(Serialize)]
struct Addressed<'a> {
    from: NodeId,
    to: NodeId,
    term: Term,
    body: &'a Body,
}

impl Message {
    /// MessagePack encoding, as rafty used on the wire.
    pub fn encode(&self) -> Bytes {
        self.encode_to(self.to)
    }

    /// The encoding of this message addressed to `to` instead (a multicast is encoded once
    /// for [`TO_GROUP`]), without copying the message.
    pub fn encode_to(&self, to: NodeId) -> Bytes {
        let wire = Addressed {
            from: self.from,
            to,
            term: self.term,
            body: &self.body,
        };
        // Serializing these plain types into a Vec cannot fail.
        Bytes::from(rmp_serde::to_vec(&wire).expect("raft messages always serialize"))
    }

    /// Decodes bytes that reached node `local` in barrier epoch `epoch`, reading a
    /// multicast ([`TO_GROUP`]) as addressed to `local`. Never panics.
    pub fn decode_for(bytes: &[u8], local: NodeId, epoch: u64) -> Result<Message, DecodeError> {
        let mut m = Message::decode(bytes)?;
        m.epoch = epoch;
        if m.to == TO_GROUP {
            m.to = local;
        }
        Ok(m)
    }

    /// [`Message::decode_for`] of a transport delivery.
    pub fn from_delivery(
        d: &weft_transport::Delivery,
        local: NodeId,
    ) -> Result<Message, DecodeError> {
        Message::decode_for(&d.bytes, local, d.epoch)
    }

    /// Decodes bytes from the transport; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Payload;
    use proptest::prelude::*;

    #[test]
    fn encode_to_is_the_encoding_with_another_receiver() {
        let m = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: 4,
            epoch: 9,
            body: Body::VoteResponse {
                pre: false,
                granted: true,
            },
        };
        let mut other = m.clone();
        other.to = TO_GROUP;
        assert_eq!(m.encode_to(TO_GROUP), other.encode());
        let back = Message::decode_for(&m.encode_to(TO_GROUP), NodeId(3), 7).unwrap();
        assert_eq!((back.to, back.epoch, back.body), (NodeId(3), 7, m.body));
    }

    #[test]
    fn identical_bodies_group_and_different_ones_do_not() {
        let m = |to: u32, commit: u64| Message {
            from: NodeId(1),
            to: NodeId(to),
            term: 3,
            epoch: 0,
            body: Body::Heartbeat {
                commit,
                read_round: 0,
            },
        };
        let msgs = vec![m(2, 5), m(3, 4), m(4, 5), m(5, 5)];
        let g = group_by_body(&msgs);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, vec![NodeId(2), NodeId(4), NodeId(5)]);
        assert_eq!(g[1].0, vec![NodeId(3)]);
        assert_eq!(
            g[1].1.body,
            Body::Heartbeat {
                commit: 4,
                read_round: 0
            }
        );
    }

    #[test]
    fn roundtrip() {
        let m = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: 7,
            epoch: 0,
            body: Body::Append {
                prev_index: 3,
                prev_term: 2,
                entries: vec![Entry {
                    term: 7,
                    index: 4,
                    payload: Payload::Command(Bytes::from_static(b"put x 1")),
                }],
                commit: 3,
            },
        };
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes);
        }
    }
}
