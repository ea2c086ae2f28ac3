//! Per-peer state in a sorted vector: clusters are small, so a binary search over a few
//! ids beats hashing on the per-message path.

use crate::NodeId;

/// A fixed set of peers, each with a `T`.
#[derive(Debug, Clone)]
pub(crate) struct PeerMap<T> {
    ids: Vec<NodeId>,
    values: Vec<T>,
}

impl<T> PeerMap<T> {
    /// One value per peer, made by `init`. `peers` must be sorted and free of duplicates.
    pub(crate) fn new(peers: &[NodeId], mut init: impl FnMut() -> T) -> PeerMap<T> {
        PeerMap {
            ids: peers.to_vec(),
            values: peers.iter().map(|_| init()).collect(),
        }
    }

    pub(crate) fn get(&self, id: NodeId) -> Option<&T> {
        self.ids.binary_search(&id).ok().map(|i| &self.values[i])
    }

    pub(crate) fn get_mut(&mut self, id: NodeId) -> Option<&mut T> {
        match self.ids.binary_search(&id) {
            Ok(i) => Some(&mut self.values[i]),
            Err(_) => None,
        }
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (NodeId, &mut T)> {
        self.ids.iter().copied().zip(self.values.iter_mut())
    }
}
