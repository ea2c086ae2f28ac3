//! A Data Vortex switch emulator with the semantics the "Raft over Data Vortex" slides name,
//! implementing the C API of `ffi/include/dv_api.h`.
//!
//! # Model
//!
//! Endpoints attach to a [`Switch`] as node ids. Time is cut into *epochs*:
//!
//! - A message injected with [`Endpoint::send`] or [`Endpoint::multicast`] joins the open
//!   epoch. The switch's arrival order is the epoch's **global order**.
//! - An epoch closes when every attached endpoint has entered the **barrier**
//!   ([`Endpoint::barrier`]) and none is paused. At the close, every message of the epoch
//!   is delivered to all its recipients at once, in the global order, stamped with the
//!   epoch and with the sender's id as the switch knows it (a sender cannot claim another
//!   id: ids are bound when an endpoint attaches, and a second attachment of a live id is
//!   refused). Then each sender gets one **acknowledgement** per message, saying how many
//!   recipients took it and how many were not attached. Then the barrier returns, with the
//!   members of the fabric as of the close.
//! - An epoch in which nothing was injected and no endpoint came or went closes only after
//!   [`SwitchConfig::idle_epoch`], so idle endpoints sitting in the barrier do not spin.
//! - Nothing is lost: the only way a message does not reach a recipient is that the
//!   recipient is not attached, and the acknowledgement says so.
//!
//! Faults ([`Switch::crash`], [`Switch::pause`], [`SwitchConfig::jitter`]) cost time or
//! membership, never messages: a crashed endpoint stops injecting (its calls fail with
//! [`DvError::Closed`]) and the others see it gone from the member list at the next
//! barrier; a paused endpoint holds every barrier until it resumes (or is evicted, below);
//! jitter delays epoch closes by a random amount.
//!
//! # One member does not hold up the others
//!
//! - **Barrier deadline.** Once a member is in the barrier, the epoch waits at most
//!   [`SwitchConfig::barrier_deadline`] for the rest; a member still out then (stopped,
//!   stalled, or attached and never entering) is **evicted**: detached exactly as if it
//!   had crashed. The others see it gone from the member list at that close; its own
//!   calls fail with [`DvError::Closed`], and it comes back by attaching again under its
//!   id, which eviction freed (a new attachment, so what it missed meanwhile is not
//!   replayed: an evicted member knows it missed messages, as a restarted one does).
//! - **No waiting on a reader.** Events bound for a member attached over a socket are
//!   queued per connection and written by a thread of its own, so a member that stops
//!   reading its socket costs the switch memory, not time. Its queue is bounded by
//!   [`SwitchConfig::port_queue`]; a member over it is evicted.
//! - **Barrier timeouts hold.** An endpoint never waits on a socket write to enter the
//!   barrier (its frames are queued the same way), so `barrier(timeout)` returns within
//!   the timeout plus scheduling noise, whatever the switch or its own sends are doing.
//!
//! # Who may attach
//!
//! A [`SwitchServer`]'s socket is mode 0600: only the switch's user can connect. A switch
//! given [`SwitchConfig::members`] refuses any other node id with [`DvError::Denied`];
//! a live id cannot be attached twice ([`DvError::InUse`]).
//!
//! # Fabric names
//!
//! [`Endpoint::open`] takes a fabric name: `local:NAME` attaches to the switch `NAME` in this
//! process (created on first use); `unix:PATH` attaches to a switch process listening on a
//! Unix socket ([`SwitchServer`], the `dv-switch` binary), so separate processes share one
//! fabric.

pub mod capi;
mod endpoint;
mod mailbox;
mod outbox;
mod server;
mod switch;
mod wire;

pub use endpoint::{Ack, Endpoint, EpochClose, FabricInfo, Received};
pub use server::SwitchServer;
pub use switch::{Switch, SwitchConfig};

/// Version of the C API this emulator implements (`DV_API_VERSION` in `dv_api.h`).
pub const API_VERSION: u32 = 1;

/// Largest message the emulated fabric carries, in bytes.
pub const MAX_MESSAGE: usize = 4 << 20;

/// Errors of the emulated fabric; each maps to one `DV_E*` code of `dv_api.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DvError {
    /// A null pointer, a malformed fabric name or an invalid node id.
    #[error("invalid argument")]
    Invalid,
    /// No fabric answers at that name (no switch listening on the socket).
    #[error("no fabric by that name is reachable")]
    NoFabric,
    /// The node id is already attached to this fabric.
    #[error("node id already attached to the fabric")]
    InUse,
    /// The message exceeds the fabric's maximum size.
    #[error("message larger than the fabric's maximum")]
    TooLarge,
    /// Nothing to receive yet.
    #[error("nothing to receive")]
    Empty,
    /// The wait ran out.
    #[error("timed out")]
    TimedOut,
    /// The endpoint was closed, crashed by fault injection, or lost its switch.
    #[error("endpoint closed, crashed or disconnected from its switch")]
    Closed,
    /// The receive buffer is smaller than the next message (which stays queued).
    #[error("receive buffer too small for the next message")]
    Truncated,
    /// The switch connection failed or spoke garbage.
    #[error("fabric I/O error")]
    Io,
    /// The switch speaks another API version.
    #[error("switch speaks another API version")]
    Version,
    /// The fabric refuses this node id: not one of its members, or the caller may not
    /// connect to the switch at all (its socket belongs to another user).
    #[error("the fabric refuses this node id")]
    Denied,
}

impl DvError {
    /// The `DV_E*` code of `dv_api.h`.
    pub fn code(self) -> i32 {
        match self {
            DvError::Invalid => -1,
            DvError::NoFabric => -2,
            DvError::InUse => -3,
            DvError::TooLarge => -4,
            DvError::Empty => -5,
            DvError::TimedOut => -6,
            DvError::Closed => -7,
            DvError::Truncated => -8,
            DvError::Io => -9,
            DvError::Version => -10,
            DvError::Denied => -11,
        }
    }

    /// The error a `DV_E*` code names, `None` for `DV_OK` or an unknown code.
    pub fn from_code(code: i32) -> Option<DvError> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    /// Every error, for tables and round-trip tests.
    pub const ALL: [DvError; 11] = [
        DvError::Invalid,
        DvError::NoFabric,
        DvError::InUse,
        DvError::TooLarge,
        DvError::Empty,
        DvError::TimedOut,
        DvError::Closed,
        DvError::Truncated,
        DvError::Io,
        DvError::Version,
        DvError::Denied,
    ];
}
