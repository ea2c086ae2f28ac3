//! `auth`: HMAC-SHA256 over every frame with the per-cluster key, so the sender id on a
//! delivery is proven rather than claimed (adds `authenticated_source`).
//!
//! Header: `flags u8` (bit 0: broadcast) and a 32-byte tag. The tag covers the cluster id,
//! the claimed source, the destination (a node, or "all") and the body, so a frame can be
//! neither re-attributed to another sender, nor redirected to another node, nor replayed
//! into another cluster. Replays within the cluster are dropped as duplicates by `reliable`
//! and `fifo`. Frames from non-members or with a bad tag are counted and never delivered.

use bytes::{BufMut, Bytes};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::codec::{prepend, Reader};
use super::{Ctx, Layer};
use crate::{Capability, ClusterKey, Counters, Dest, LayerKind, NodeId};

type HmacSha256 = Hmac<Sha256>;

/// Length of the HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// Bytes this layer adds to every frame.
pub const OVERHEAD: usize = 1 + TAG_LEN;
const FLAG_BROADCAST: u8 = 1;
const ALL: u32 = u32::MAX;

/// The authentication layer of one endpoint.
pub struct Auth {
    keyed: HmacSha256,
    cluster: u64,
    local: NodeId,
    members: Vec<NodeId>,
}

impl Auth {
    /// An auth layer for `local` in `cluster`, accepting frames from `members` (sorted).
    pub fn new(key: &ClusterKey, cluster: u64, local: NodeId, members: Vec<NodeId>) -> Auth {
        // HMAC accepts keys of any length; ClusterKey guarantees at least 128 bits.
        let keyed = HmacSha256::new_from_slice(key.bytes()).expect("HMAC takes any key length");
        Auth {
            keyed,
            cluster,
            local,
            members,
        }
    }

    fn mac(&self, from: NodeId, to: u32, body: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(&self.cluster.to_le_bytes());
        mac.update(&from.0.to_le_bytes());
        mac.update(&to.to_le_bytes());
        mac.update(body);
        mac
    }

    /// Wraps `body` for `dest`: flags, tag, body.
    pub fn seal(&self, dest: Dest, body: &[u8]) -> Bytes {
        let (flags, to) = match dest {
            Dest::Node(n) => (0, n.0),
            Dest::All => (FLAG_BROADCAST, ALL),
        };
        let tag = self.mac(self.local, to, body).finalize().into_bytes();
        prepend(OVERHEAD, body, |b| {
            b.put_u8(flags);
            b.put_slice(&tag);
        })
    }

    /// Checks a frame from `from` and returns its body, or `None` (counted) if the sender
    /// is not a member, the frame is malformed, or the tag does not verify.
    pub fn open(&self, from: NodeId, frame: Bytes, counters: &Counters) -> Option<Bytes> {
        if from == self.local || self.members.binary_search(&from).is_err() {
            Counters::bump(&counters.rejected_unknown_source);
            tracing::debug!(%from, "auth: frame from a non-member dropped");
            return None;
        }
        let mut r = Reader::new(frame);
        let (flags, tag) = match (r.u8("auth flags"), r.bytes("auth tag", TAG_LEN)) {
            (Ok(f), Ok(t)) if f & !FLAG_BROADCAST == 0 => (f, t),
            _ => {
                Counters::bump(&counters.rejected_malformed);
                return None;
            }
        };
        let body = r.rest();
        let to = if flags & FLAG_BROADCAST != 0 {
            ALL
        } else {
            self.local.0
        };
        if self.mac(from, to, &body).verify_slice(&tag).is_err() {
            Counters::bump(&counters.rejected_bad_mac);
            tracing::debug!(%from, "auth: bad MAC, frame dropped");
            return None;
        }
        Some(body)
    }
}

impl Layer for Auth {
    fn kind(&self) -> LayerKind {
        LayerKind::Auth
    }

    fn adds(&self) -> Option<Capability> {
        Some(Capability::AuthenticatedSource)
    }

    fn down(&mut self, dest: Dest, msg: Bytes, ctx: &mut Ctx<'_>) {
        ctx.send_down(dest, self.seal(dest, &msg));
    }

    fn up(&mut self, from: NodeId, frame: Bytes, ctx: &mut Ctx<'_>) {
        if let Some(body) = self.open(from, frame, ctx.counters) {
            ctx.deliver_up(from, body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::new(vec![b; 32]).unwrap()
    }

    fn pair() -> (Auth, Auth) {
        let members = vec![NodeId(1), NodeId(2), NodeId(3)];
        (
            Auth::new(&key(7), 9, NodeId(1), members.clone()),
            Auth::new(&key(7), 9, NodeId(2), members),
        )
    }

    #[test]
    fn sealed_frames_open_at_the_destination_only() {
        let (a, b) = pair();
        let c = Counters::default();
        let frame = a.seal(Dest::Node(NodeId(2)), b"hello");
        assert_eq!(b.open(NodeId(1), frame.clone(), &c).unwrap(), &b"hello"[..]);
        // Redirected to node 3: the tag names node 2.
        let n3 = Auth::new(&key(7), 9, NodeId(3), vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert!(n3.open(NodeId(1), frame.clone(), &c).is_none());
        // Re-attributed to node 3 as sender.
        assert!(b.open(NodeId(3), frame, &c).is_none());
        assert_eq!(c.snapshot().rejected_bad_mac, 2);
        let all = a.seal(Dest::All, b"x");
        assert!(b.open(NodeId(1), all.clone(), &c).is_some());
        assert!(n3.open(NodeId(1), all, &c).is_some());
    }

    #[test]
    fn wrong_key_cluster_or_member_is_rejected_and_counted() {
        let (a, _) = pair();
        let c = Counters::default();
        let frame = a.seal(Dest::Node(NodeId(2)), b"m");
        let other_key = Auth::new(&key(8), 9, NodeId(2), vec![NodeId(1), NodeId(2)]);
        let other_cluster = Auth::new(&key(7), 10, NodeId(2), vec![NodeId(1), NodeId(2)]);
        assert!(other_key.open(NodeId(1), frame.clone(), &c).is_none());
        assert!(other_cluster.open(NodeId(1), frame.clone(), &c).is_none());
        let s = c.snapshot();
        assert_eq!(s.rejected_bad_mac, 2);
        let (_, b) = pair();
        assert!(b.open(NodeId(77), frame, &c).is_none());
        assert_eq!(c.snapshot().rejected_unknown_source, 1);
    }

    proptest! {
        #[test]
        fn random_and_tampered_frames_never_open(
            bytes in proptest::collection::vec(any::<u8>(), 0..80),
            flip in 0usize..64,
        ) {
            let (a, b) = pair();
            let c = Counters::default();
            prop_assert!(b.open(NodeId(1), Bytes::from(bytes), &c).is_none());
            let mut sealed = a.seal(Dest::Node(NodeId(2)), b"payload").to_vec();
            let i = flip % sealed.len();
            sealed[i] ^= 0x40;
            prop_assert!(b.open(NodeId(1), Bytes::from(sealed), &c).is_none());
        }
    }
}
