//! Identities and the unit of delivery shared by every backend and layer.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A cluster member's identity, as named in the cluster config.
///
/// 32 bits keep the wire headers compact; no cluster needs more members than that.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a message goes: one peer, or every other member of the cluster.
///
/// Kept as one type so that layers can pass a broadcast through untouched when the fabric
/// broadcasts natively, and expand it per peer only where they keep per-peer state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Dest {
    /// A single member.
    Node(NodeId),
    /// Every member except the sender.
    All,
}

/// A message handed to the application by a transport.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Delivery {
    /// The sender. Trustworthy only when the transport reports `authenticated_source`.
    pub from: NodeId,
    /// The barrier epoch the message was delivered in; `0` on fabrics without barriers.
    pub epoch: u64,
    /// The message, exactly as the sender passed it to `send` or `broadcast`.
    pub bytes: Bytes,
}
