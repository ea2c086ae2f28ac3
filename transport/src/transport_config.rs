//! The resolved, per-node settings [`crate::open`] builds a transport from.
//!
//! A [`crate::ClusterConfig`] (one TOML file per cluster) turns into one of these per member
//! with [`crate::ClusterConfig::transport_for`]; tests and benches build them directly.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Capability, NodeId};

/// A cluster member and where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// The member's id.
    pub id: NodeId,
    /// Its datagram address (ignored by the `mem` backend).
    pub addr: SocketAddr,
}

impl NodeSpec {
    /// Members 1, 2, ... at `addrs` in order: the usual shape of tests and benchmarks.
    pub fn numbered(addrs: &[SocketAddr]) -> Vec<NodeSpec> {
        (1..)
            .zip(addrs)
            .map(|(i, a)| NodeSpec {
                id: NodeId(i),
                addr: *a,
            })
            .collect()
    }
}

/// Everything needed to open one member's transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Frames carrying another cluster id are rejected.
    pub cluster_id: u64,
    /// The member this transport is for.
    pub local: NodeId,
    /// All members, the local one included.
    pub nodes: Vec<NodeSpec>,
    /// The fabric.
    pub backend: BackendConfig,
    /// Capabilities the caller needs; layers are added for those the backend lacks.
    pub require: Vec<Capability>,
    /// Largest message the caller will send; fragmentation is added when the fabric's
    /// limit is smaller.
    pub max_message: usize,
    /// An explicit layer stack, top first, replacing the one derived from `require`.
    pub layers: Option<Vec<LayerKind>>,
    /// Take the precomputed fast path for the common message (see [`crate::layer`]).
    pub fast_path: bool,
    /// Timers and buffer bounds of the layers.
    pub tuning: LayerTuning,
    /// The per-cluster key the `auth` layer needs.
    pub key: Option<ClusterKey>,
}

impl TransportConfig {
    /// Node `local` of an in-process cluster of nodes `1..=n` on the `mem` fabric with no
    /// faults and default settings: the quickest way to run weft in one process (tests,
    /// examples, simulations). Every endpoint opened with the same `cluster_id` shares one
    /// fabric.
    pub fn mem(cluster_id: u64, local: NodeId, n: u32) -> TransportConfig {
        TransportConfig {
            cluster_id,
            local,
            nodes: (1..=n)
                .map(|i| NodeSpec {
                    id: NodeId(i),
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                })
                .collect(),
            backend: BackendConfig::Mem(MemConfig::default()),
            require: Vec::new(),
            max_message: 1 << 20,
            layers: None,
            fast_path: true,
            tuning: LayerTuning::default(),
            key: None,
        }
    }

    /// The ids of every member except the local one, ascending.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| *id != self.local)
            .collect();
        ids.sort();
        ids
    }
}

/// Which fabric, with its own settings.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendConfig {
    /// In-process fabric with seeded fault injection.
    Mem(MemConfig),
    /// Real UDP sockets.
    Udp(UdpConfig),
    /// A Data Vortex fabric through `dv_api.h` (the `hw-sim` emulator unless a vendor
    /// library is linked).
    Vortex(VortexConfig),
    /// RDMA reliable-connected queue pairs with ring buffers (emulated verbs, or a NIC).
    Rdma(RdmaConfig),
    /// UDP between PTP-synchronized clocks, delivered in deadline order.
    Ptp(PtpConfig),
}

impl BackendConfig {
    /// The `kind` name used in config files.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Mem(_) => "mem",
            BackendConfig::Udp(_) => "udp",
            BackendConfig::Vortex(_) => "vortex",
            BackendConfig::Rdma(_) => "rdma",
            BackendConfig::Ptp(_) => "ptp",
        }
    }
}

/// Settings of the `mem` backend: a fabric shared by every endpoint of one cluster id in
/// this process, and its fault plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemConfig {
    /// Seed of the fault plan's random choices.
    pub seed: u64,
    /// Probability that a frame is lost.
    pub drop: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability that a frame is held back (and so reordered).
    pub reorder: f64,
    /// Longest hold-back of a reordered frame, in microseconds.
    pub max_delay_us: u64,
    /// Groups of members that can reach each other; empty means no partition.
    pub partitions: Vec<Vec<NodeId>>,
    /// Largest frame the fabric carries.
    pub max_frame: usize,
}

impl Default for MemConfig {
    fn default() -> Self {
        MemConfig {
            seed: 0,
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            max_delay_us: 1000,
            partitions: Vec::new(),
            max_frame: 64 * 1024,
        }
    }
}

/// Settings of the `udp` backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpConfig {
    /// Largest datagram sent, headers included. 1472 fits a 1500-byte Ethernet MTU;
    /// loopback carries up to 65507.
    pub max_datagram: usize,
    /// Requested kernel socket buffer size (send and receive), in bytes.
    pub socket_buffer: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            max_datagram: 1472,
            socket_buffer: 4 << 20,
        }
    }
}

/// Settings of the `ptp` backend: datagrams as over `udp`, stamped with a deadline on a
/// clock every member shares within `epsilon_us`, and released in deadline order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PtpConfig {
    /// The clock: `"system"` (the system clock, disciplined by `ptp4l` + `phc2sys`), the
    /// path of a PTP hardware clock (`"/dev/ptp0"`, disciplined by `ptp4l`), or
    /// `"software"`: weft keeps its own clock in step with IEEE 1588 over this transport
    /// (statime; no root, no linuxptp, the system clock untouched).
    pub clock: String,
    /// The bound on how far two members' clocks may read apart, in µs (`ptp4l` reports
    /// the offsets to choose it from); measured offsets beyond it withdraw `total_order`.
    pub epsilon_us: u64,
    /// Smallest Δ (deadline minus send time), in µs.
    pub delta_min_us: u64,
    /// Largest Δ, in µs: the value used until enough one-way delays were measured.
    pub delta_max_us: u64,
    /// Period of the two-way time transfers that measure each peer's offset, in ms.
    pub sync_interval_ms: u64,
    /// Largest datagram sent, headers included.
    pub max_datagram: usize,
    /// Requested kernel socket buffer size (send and receive), in bytes.
    pub socket_buffer: usize,
}

impl Default for PtpConfig {
    fn default() -> Self {
        PtpConfig {
            clock: "system".into(),
            epsilon_us: 100,
            delta_min_us: 200,
            delta_max_us: 5_000,
            sync_interval_ms: 100,
            max_datagram: 1472,
            socket_buffer: 4 << 20,
        }
    }
}

/// Settings of the `vortex` backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VortexConfig {
    /// The fabric to attach to, as `dv_open` takes it: `unix:PATH` for a switch process
    /// (`weft vortex-switch PATH`), `local:NAME` for a switch in this process, or a
    /// vendor library's own name.
    pub fabric: String,
}

impl Default for VortexConfig {
    fn default() -> Self {
        VortexConfig {
            fabric: "unix:/tmp/weft-vortex.sock".into(),
        }
    }
}

/// Settings of the `rdma` backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdmaConfig {
    /// The verbs device by name (`ibv_devices` lists them, e.g. `mlx5_0`), or `"emulated"`
    /// for `hw-sim`'s emulated verbs in this process.
    pub device: String,
    /// The device port.
    pub port: u8,
    /// The GID table index (RoCE).
    pub gid_index: u8,
    /// Bytes of each per-peer receive ring (a multiple of 8; the largest message is half).
    pub ring_bytes: usize,
    /// How the receiving thread waits for arrivals.
    pub completion: Completion,
    /// How long opening waits for every peer's out-of-band handshake (real devices; the
    /// members' `addr`s are the TCP addresses it runs on).
    pub handshake_timeout_ms: u64,
}

impl RdmaConfig {
    /// The device name that selects `hw-sim`'s emulated verbs.
    pub const EMULATED: &'static str = "emulated";

    /// Whether this runs on the emulated verbs, which connect the members opened in one
    /// process only (a cluster of separate processes needs a real device).
    pub fn is_emulated(&self) -> bool {
        self.device == Self::EMULATED
    }
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            device: RdmaConfig::EMULATED.into(),
            port: 1,
            gid_index: 0,
            ring_bytes: 4 << 20,
            completion: Completion::Event,
            handshake_timeout_ms: 30_000,
        }
    }
}

/// How the `rdma` backend's receiving thread waits for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Completion {
    /// Poll the completion queues without pause: the lowest latency, one core per node.
    Busy,
    /// Poll while traffic flows and briefly after, then sleep until a completion event
    /// (on real NICs the kernel wakes the thread; the emulation sleeps in short steps).
    Event,
}

/// The software layers, named as in config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Splits messages larger than a frame and reassembles them.
    Fragment,
    /// Per-sender order, no duplicates.
    Fifo,
    /// Acknowledgement and retransmission.
    Reliable,
    /// HMAC-SHA256 over every frame with the cluster key.
    Auth,
}

impl LayerKind {
    /// The canonical stack order, top first. A stack must keep this relative order:
    /// fragments ride on ordered, reliable, authenticated frames.
    pub const CANONICAL: [LayerKind; 4] = [
        LayerKind::Fragment,
        LayerKind::Fifo,
        LayerKind::Reliable,
        LayerKind::Auth,
    ];

    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Fragment => "fragment",
            LayerKind::Fifo => "fifo",
            LayerKind::Reliable => "reliable",
            LayerKind::Auth => "auth",
        }
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Timers and bounds of the layers. The defaults suit a LAN or loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerTuning {
    /// Unacknowledged messages per peer (reliable) and reorder slots per peer (fifo).
    pub window: usize,
    /// First retransmission timeout; doubles per retry up to `max_rto`.
    pub rto: Duration,
    /// Ceiling of the retransmission timeout.
    pub max_rto: Duration,
    /// How long the fifo layer waits for a missing message on a lossy fabric before
    /// skipping it, and how long an incomplete fragmented message is kept.
    pub gap_timeout: Duration,
}

impl Default for LayerTuning {
    fn default() -> Self {
        LayerTuning {
            window: 1024,
            rto: Duration::from_millis(20),
            max_rto: Duration::from_secs(1),
            gap_timeout: Duration::from_millis(200),
        }
    }
}

/// The per-cluster secret of the `auth` layer. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(Vec<u8>);

impl ClusterKey {
    /// Shortest key accepted, in bytes (128 bits).
    pub const MIN_LEN: usize = 16;

    /// Wraps raw key bytes; `None` if shorter than [`Self::MIN_LEN`].
    pub fn new(bytes: Vec<u8>) -> Option<ClusterKey> {
        (bytes.len() >= Self::MIN_LEN).then_some(ClusterKey(bytes))
    }

    /// The key bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({} bytes)", self.0.len())
    }
}
