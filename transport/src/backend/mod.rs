//! Fabric backends. Each one is a [`crate::Transport`] that moves frames and declares the
//! capabilities its fabric gives natively; [`crate::open`] puts layers on top for the rest.

pub(crate) mod inlet;
pub mod mem;
pub mod ptp;
pub mod rdma;
pub mod udp;
pub mod vortex;

pub(crate) use inlet::Inlet;
