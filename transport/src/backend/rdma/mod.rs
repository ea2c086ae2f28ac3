//! The RDMA data path, written once against [`RcConnection`] so that it runs on real verbs
//! and, in CI, on the emulated verbs of `hw-sim` ([`emulated::EmulatedRc`]).
//!
//! Each direction of a reliable-connected queue pair carries one [`ring`]: the receiver
//! registers a ring buffer the sender writes into with one-sided RDMA WRITE-with-immediate
//! (the immediate carries the record's length, so the receiver needs no header and takes
//! records in the order RC completes them), and returns credit by writing how far it has
//! read into an 8-byte word of the sender's memory. A sender that would overrun a slow
//! receiver gets [`RingError::Full`] instead. This is the shape of Mu's and DARE's
//! replication logs: the leader writes straight into each follower's memory, and the
//! follower's CPU is not on the path until it reads.
//!
//! [`RdmaTransport`] is the backend over any [`RcConnection`]s. `device = "emulated"` runs
//! it on `hw-sim`'s verbs ([`EmulatedFabric`]); a real device name is looked up through
//! libibverbs (`rdma-sys`, [`device`]), and a machine without it gets a clear error. On a
//! NIC, [`verbs`] opens the device, creates a queue pair per peer and exchanges queue pair
//! numbers, addresses and memory keys over TCP ([`handshake`]); sends follow the same
//! selective-signaling bookkeeping ([`send_queue`]) on both.

pub mod device;
pub mod emulated;
pub mod handshake;
pub mod ring;
pub mod send_queue;
pub mod transport;
pub mod verbs;

pub use ring::{RingReceiver, RingSender};
pub use transport::{ArrivalWait, EmulatedFabric, RdmaTransport, SleepWait};

/// Why a ring operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The receiver has not freed enough of its ring: retry after it reads (back-pressure).
    #[error("ring full: the receiver has not consumed enough to fit {need} bytes")]
    Full {
        /// Bytes the record needs, padding included.
        need: usize,
    },
    /// The message exceeds what one ring can carry.
    #[error("message of {size} bytes exceeds the ring's limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// Largest message the ring takes.
        max: usize,
    },
    /// The NIC (or its emulation) failed a work request; the connection is unusable.
    #[error("verbs error: {0}")]
    Verbs(String),
    /// The peer sent an immediate that names no valid record: a protocol violation.
    #[error("corrupt ring record: {0}")]
    Corrupt(String),
}

/// What the ring protocol needs from one side of an RC connection.
pub trait RcConnection: Send + Sync {
    /// Capacity of the peer's ring (learned in the connection handshake).
    fn remote_capacity(&self) -> usize;
    /// Capacity of this side's ring.
    fn local_capacity(&self) -> usize;
    /// Receive requests the peer keeps posted: how many records may be in flight to it
    /// (each write-with-immediate consumes one; one more would stall the connection).
    fn remote_records(&self) -> usize;
    /// Receive requests this side keeps posted.
    fn local_records(&self) -> usize;
    /// RDMA WRITE-with-immediate of `data` at `offset` of the peer's ring.
    fn write_ring(&self, offset: usize, data: &[u8], imm: u32) -> Result<(), RingError>;
    /// RDMA WRITE of `head` into the peer's credit word.
    fn write_credit(&self, head: u64) -> Result<(), RingError>;
    /// Appends the immediates of writes into this side's ring that completed, in order.
    fn poll_arrivals(&self, out: &mut Vec<u32>) -> Result<(), RingError>;
    /// Reads this side's ring memory.
    fn read_ring(&self, offset: usize, buf: &mut [u8]) -> Result<(), RingError>;
    /// This side's credit word: how far the peer has read this side's records.
    fn read_credit(&self) -> u64;
    /// Asks for a completion event on the next arrival, before the poller sleeps (see
    /// [`transport::ArrivalWait`]); a connection without events needs nothing.
    fn arm(&self) -> Result<(), RingError> {
        Ok(())
    }
}
