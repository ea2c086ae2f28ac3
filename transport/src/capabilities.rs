//! What a transport guarantees, in libfabric's spirit: capability bits a backend declares
//! natively and software layers add, so consensus code can rely on them instead of paying
//! for them again.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One guarantee a caller can ask for by name (in config: `require = ["reliable", ...]`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// No loss while both ends are up.
    Reliable,
    /// Each sender's messages arrive in the order they were sent, without duplicates.
    FifoPerPeer,
    /// All receivers see all messages in one global order.
    TotalOrder,
    /// Epochs closed by a global barrier, with synchronized delivery.
    Barrier,
    /// The sender id on a delivery was stamped or verified and cannot be forged.
    AuthenticatedSource,
    /// Members share a clock with a known uncertainty bound.
    SynchronizedClock,
}

impl Capability {
    /// Every capability, in a stable order for reports.
    pub const ALL: [Capability; 6] = [
        Capability::Reliable,
        Capability::FifoPerPeer,
        Capability::TotalOrder,
        Capability::Barrier,
        Capability::AuthenticatedSource,
        Capability::SynchronizedClock,
    ];

    /// The name used in config files and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Reliable => "reliable",
            Capability::FifoPerPeer => "fifo_per_peer",
            Capability::TotalOrder => "total_order",
            Capability::Barrier => "barrier",
            Capability::AuthenticatedSource => "authenticated_source",
            Capability::SynchronizedClock => "synchronized_clock",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The guarantees a transport (a backend plus its layers) provides.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Capabilities {
    /// No loss while both ends are up.
    pub reliable: bool,
    /// Per-sender order preserved, no duplicates.
    pub fifo_per_peer: bool,
    /// All receivers see all messages in one global order.
    pub total_order: bool,
    /// Epochs closed by a global barrier, synchronized delivery.
    pub barrier: bool,
    /// Sender id stamped by the fabric or verified by a layer; cannot be forged.
    pub authenticated_source: bool,
    /// Bound on clock uncertainty between members, if the fabric synchronizes clocks.
    pub synchronized_clock: Option<Duration>,
    /// A message the local node sends to itself travels through the fabric and takes its
    /// place in the same order as everyone else's (what ordered elections need: a
    /// candidate sees its own vote request where the other voters see it).
    pub loopback: bool,
    /// Largest message `send` and `broadcast` accept, in bytes.
    pub max_message: usize,
}

impl Capabilities {
    /// Whether this transport provides `cap`.
    pub fn has(&self, cap: Capability) -> bool {
        match cap {
            Capability::Reliable => self.reliable,
            Capability::FifoPerPeer => self.fifo_per_peer,
            Capability::TotalOrder => self.total_order,
            Capability::Barrier => self.barrier,
            Capability::AuthenticatedSource => self.authenticated_source,
            Capability::SynchronizedClock => self.synchronized_clock.is_some(),
        }
    }

    /// Turns `cap` on; used by layers to report what they add. A synchronized clock cannot
    /// be added by a layer, so it is left as it is.
    pub(crate) fn add(&mut self, cap: Capability) {
        match cap {
            Capability::Reliable => self.reliable = true,
            Capability::FifoPerPeer => self.fifo_per_peer = true,
            Capability::TotalOrder => self.total_order = true,
            Capability::Barrier => self.barrier = true,
            Capability::AuthenticatedSource => self.authenticated_source = true,
            Capability::SynchronizedClock => {}
        }
    }

    /// Refuses a message larger than [`Capabilities::max_message`].
    pub fn check_size(&self, len: usize) -> Result<(), crate::TransportError> {
        if len > self.max_message {
            return Err(crate::TransportError::TooLarge {
                size: len,
                max: self.max_message,
            });
        }
        Ok(())
    }

    /// The names of the capabilities provided, for logs and `weft status`.
    pub fn names(&self) -> Vec<&'static str> {
        Capability::ALL
            .iter()
            .filter(|c| self.has(**c))
            .map(|c| c.name())
            .collect()
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        if names.is_empty() {
            f.write_str("none")?;
        } else {
            f.write_str(&names.join(", "))?;
        }
        write!(f, "; max message {} B", self.max_message)
    }
}
