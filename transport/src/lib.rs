//! `weft-transport`: the transport contract that weft's consensus code is written against,
//! the fabric backends that implement it, and the software layers that add what a fabric
//! lacks.
//!
//! The shape follows libfabric: a backend declares its native [`Capabilities`]; the caller
//! names the capabilities it needs in [`TransportConfig::require`]; [`open`] stacks software
//! layers (Ensemble-style, see [`layer`]) for whatever is missing, and fails with
//! [`OpenError::Unsatisfiable`] naming a capability that can be neither provided nor layered.
//! Consensus code sees only [`Transport`] and its capabilities, never a backend's name.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = weft_transport::ClusterConfig::load("examples/cluster-udp.toml")?;
//! let transport = weft_transport::open(&cluster.transport_for(weft_transport::NodeId(1))?)?;
//! println!("{}", transport.capabilities());
//! # Ok(()) }
//! ```

pub mod backend;
mod capabilities;
pub mod clock;
mod config;
pub mod deadline;
mod error;
pub mod frame;
pub mod layer;
mod node;
mod open;
pub mod rx_timestamp;
pub mod soft_clock;
mod stats;
mod transport_config;

pub use capabilities::{Capabilities, Capability};
pub use config::ClusterConfig;
pub use error::{ConfigError, DecodeError, OpenError, TransportError};
pub use node::{Delivery, Dest, NodeId};
pub use open::{open, plan_layers};
pub use stats::{Counters, Stats};
pub use transport_config::{
    BackendConfig, ClusterKey, Completion, LayerKind, LayerTuning, MemConfig, NodeSpec, PtpConfig,
    RdmaConfig, TransportConfig, UdpConfig, VortexConfig,
};

use bytes::Bytes;

/// A message-passing endpoint of one cluster member.
///
/// Implementations are backends (`mem`, `udp`, ...) or a [`layer::LayeredTransport`] that
/// wraps one. All methods take `&self` so one endpoint can be shared across threads.
pub trait Transport: Send + Sync {
    /// This endpoint's node id.
    fn local(&self) -> NodeId;

    /// Every other member of the cluster, in ascending id order.
    fn peers(&self) -> &[NodeId];

    /// What this transport guarantees.
    fn capabilities(&self) -> &Capabilities;

    /// Sends `msg` to one peer. `Ok` means the message was accepted for sending; delivery
    /// is guaranteed only as far as [`Capabilities::reliable`] says.
    fn send(&self, to: NodeId, msg: Bytes) -> Result<(), TransportError>;

    /// Sends `msg` to every other member, natively where the fabric broadcasts.
    fn broadcast(&self, msg: Bytes) -> Result<(), TransportError>;

    /// Sends one `msg` to every node in `to`. On a fabric with `total_order` this is one
    /// injection, so it takes one place in the global order at every recipient (the local
    /// node may be among them: it gets the message back in that order). Elsewhere it is a
    /// `send` per recipient; the first error is returned after trying them all.
    fn multicast(&self, to: &[NodeId], msg: Bytes) -> Result<(), TransportError> {
        let mut first = Ok(());
        for n in to {
            let r = self.send(*n, msg.clone());
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Messages received for this endpoint, in delivery order.
    fn inbox(&self) -> &crossbeam_channel::Receiver<Delivery>;

    /// Counters of traffic sent, delivered, dropped and rejected.
    fn stats(&self) -> Stats;

    /// On fabrics that synchronize clocks: each peer's measured clock offset and round-trip
    /// delay, in ns, for monitoring (`weft status`). Empty elsewhere.
    fn clock_offsets(&self) -> Vec<ClockOffset> {
        Vec::new()
    }

    /// With `Some(sink)`: runs `sink` on the backend's own receive thread for every later
    /// batch of deliveries, instead of queuing them in [`Transport::inbox`] (deliveries
    /// already queued stay there). Why: a layer stack on top then runs where the datagram
    /// arrived, which saves a thread hand-off (a wake-up, tens of microseconds) per message.
    /// With `None`: stops diverting, and returns only once no call to the sink is running.
    /// Returns whether the backend diverts; one without a receive thread of its own does not.
    fn divert(&self, sink: Option<Sink>) -> bool {
        let _ = sink;
        false
    }
}

/// What a backend's receive thread runs for each batch of deliveries once diverted (see
/// [`Transport::divert`]); it takes the deliveries out of the batch.
pub type Sink = Box<dyn FnMut(&mut Vec<Delivery>) + Send>;

/// A peer's clock as measured by two-way time transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClockOffset {
    /// The peer.
    pub peer: NodeId,
    /// Its clock minus the local one, in ns.
    pub offset_ns: i64,
    /// The round trip of the exchange without the peer's turnaround, in ns.
    pub delay_ns: i64,
}
