//! A Raft cluster driven on one thread over a [`Transport`]: every node's `Ready` is handled
//! in turn (persistence is a no-op: the benchmark measures consensus, not a disk), messages
//! go through the transport encoded as MessagePack exactly as the node runtime sends them
//! (one multicast per distinct message on an ordered fabric), and inboxes are drained in
//! turn. Committed entries are applied only when asked ([`Cluster::applying`]): the bench
//! against other Raft libraries counts a write once it is in the leader's state machine.

use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_raft::node::send_messages;
use weft_raft::{Config, Index, Membership, Message, NodeId, Payload, Persisted, RawNode, Role};
use weft_transport::{open, BackendConfig, MemConfig, Transport};

use crate::kv::KvMap;
use crate::{cluster_config, loopback_addrs};

/// Nodes and their transports, indexed by id - 1.
pub struct Cluster {
    nodes: Vec<RawNode>,
    transports: Vec<Box<dyn Transport>>,
    /// Pump rounds run so far: one round handles every ready and every inbox once.
    pub rounds: u64,
    /// Each node's state machine, if committed commands are applied.
    kvs: Option<Vec<KvMap>>,
}

impl Cluster {
    /// A cluster of one node per transport (transport `i` is node `i + 1`), elected.
    pub fn new(transports: Vec<Box<dyn Transport>>) -> Cluster {
        let voters = Membership::with_voters((1..=transports.len() as u32).map(NodeId));
        let nodes = (1..=transports.len() as u32)
            .map(|id| {
                let mut cfg = Config::new(NodeId(id)).for_fabric(transports[0].capabilities());
                cfg.max_inflight = 1024;
                RawNode::new(cfg, voters.clone(), Persisted::default()).expect("valid config")
            })
            .collect();
        let mut c = Cluster {
            nodes,
            transports,
            rounds: 0,
            kvs: None,
        };
        c.nodes[0].campaign();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if c.nodes[0].role() == Role::Leader && c.nodes[0].commit_index() >= 1 {
                return c;
            }
            c.pump();
        }
        panic!("node 1 was not elected");
    }

    /// A 3-node cluster `id` on the in-memory transport with no software layers, elected.
    pub fn mem3(id: u64) -> Cluster {
        let addrs = loopback_addrs(3);
        let transports = (1..=3)
            .map(|n| {
                let mem = BackendConfig::Mem(MemConfig::default());
                let cfg = cluster_config(id, n, &addrs, mem, Some(vec![]), true);
                open(&cfg).expect("mem transport")
            })
            .collect();
        Cluster::new(transports)
    }

    /// Applies committed commands (as [`crate::kv::put_command`]s) at every node from now on;
    /// [`Cluster::commit`] then waits until the leader has applied, not just committed.
    pub fn applying(mut self) -> Cluster {
        self.kvs = Some((0..self.nodes.len()).map(|_| KvMap::default()).collect());
        self
    }

    /// The leader's state machine, if commands are applied.
    pub fn leader_kv(&self) -> Option<&KvMap> {
        self.kvs.as_ref().map(|k| &k[0])
    }

    /// Frames all transports put on the wire so far (acknowledgements and retransmissions
    /// of software layers included).
    pub fn frames_sent(&self) -> u64 {
        self.transports.iter().map(|t| t.stats().frames_sent).sum()
    }

    /// The leader (node 1).
    pub fn leader(&mut self) -> &mut RawNode {
        &mut self.nodes[0]
    }

    /// One round: every node hands out its ready (sent over the transport), then every
    /// inbox is drained into its node. Returns whether anything moved.
    pub fn pump(&mut self) -> bool {
        self.rounds += 1;
        let mut moved = false;
        for (i, (node, t)) in self.nodes.iter_mut().zip(&self.transports).enumerate() {
            if !node.has_ready() {
                continue;
            }
            moved = true;
            let rd = node.ready();
            send_messages(&**t, &rd.early_messages);
            send_messages(&**t, &rd.messages);
            if let Some(kvs) = &mut self.kvs {
                for e in &rd.committed {
                    if let Payload::Command(c) = &e.payload {
                        kvs[i].apply(c);
                    }
                }
            }
            node.advance(&rd);
        }
        for (node, t) in self.nodes.iter_mut().zip(&self.transports) {
            while let Ok(d) = t.inbox().try_recv() {
                moved = true;
                if let Ok(m) = Message::from_delivery(&d, node.id()) {
                    node.step(m);
                }
            }
        }
        moved
    }

    /// Proposes `n` copies of `payload` at the leader and pumps until all are committed;
    /// returns the pump rounds it took (on fabrics that deliver from threads of their own,
    /// rounds that find nothing to do are counted too).
    pub fn commit(&mut self, n: usize, payload: &Bytes) -> u64 {
        self.commit_all(std::iter::repeat_n(payload, n).cloned())
    }

    /// Proposes `commands` at the leader and pumps until all are committed (applied at the
    /// leader, if [`Cluster::applying`]); returns the pump rounds it took.
    pub fn commit_all(&mut self, commands: impl IntoIterator<Item = Bytes>) -> u64 {
        let start = self.rounds;
        let mut last = 0;
        for c in commands {
            last = self.nodes[0].propose(c).expect("leader accepts");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.done_index() < last {
            if !self.pump() {
                assert!(Instant::now() < deadline, "stalled");
                std::thread::yield_now();
            }
        }
        self.rounds - start
    }

    /// How far the leader has got: applied if commands are applied, else committed.
    fn done_index(&self) -> Index {
        match self.kvs {
            Some(_) => self.nodes[0].applied_index(),
            None => self.nodes[0].commit_index(),
        }
    }
}
