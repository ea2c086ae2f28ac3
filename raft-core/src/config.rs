//! Settings of one Raft node, validated before use.

use weft_transport::Capabilities;

use crate::types::NodeId;

/// How one node runs Raft. Times are in ticks: the runtime decides how long a tick is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// A follower that hears no leader for a random time in `[election_tick,
    /// 2 * election_tick)` ticks campaigns.
    pub election_tick: u32,
    /// A leader sends heartbeats every `heartbeat_tick` ticks; must be below
    /// `election_tick`.
    pub heartbeat_tick: u32,
    /// Most entries in one append message (rafty: 100).
    pub max_entries_per_append: usize,
    /// Most bytes of entries in one append message (at least one entry is always sent).
    pub max_bytes_per_append: usize,
    /// The largest entry a proposal may make, as [`crate::Entry::size`] counts it: a
    /// larger command is refused with [`crate::ProposeError::TooLarge`] instead of being
    /// appended and then never fitting an append message. [`Config::for_fabric`] keeps it
    /// within the largest message the transport takes.
    pub max_entry_bytes: usize,
    /// Most committed entries one [`crate::Ready`] hands to the application; the rest
    /// follow in the next ones, so one pass of a runtime never applies an unbounded
    /// stretch of the log.
    pub max_committed_per_ready: usize,
    /// Appends in flight per follower while replicating (pipelining).
    pub max_inflight: usize,
    /// Bytes of entries in flight per follower while replicating: what one opened
    /// window sends to a follower far behind, so the work of a pass stays bounded
    /// whatever its lag. Keep it below what the transport holds unacknowledged per peer
    /// (the `reliable` layer's window of 1,024 datagrams is about 1.4 MiB on UDP): appends
    /// beyond it are refused by the transport, and so are the heartbeats behind them,
    /// which costs the leader its followers under sustained load.
    pub max_inflight_bytes: usize,
    /// Ask "would you vote for me?" before disrupting a cluster with a new term.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum for an election timeout steps down, and
    /// voters that heard from a leader recently refuse to vote (leader lease).
    pub check_quorum: bool,
    /// Serve reads from the leader's lease instead of a heartbeat round (requires
    /// `check_quorum`; assumes bounded clock drift between nodes and no pause of the leader
    /// process: a leader frozen past an election timeout may answer a read from before its
    /// successor's writes as it wakes).
    pub lease_reads: bool,
    /// The fabric delivers messages in one total order, a sender's copy to itself
    /// included: a candidate's vote request is multicast to every voter, itself included,
    /// and every voter (the candidates too) votes for the first valid request of the term
    /// it sees, so votes cannot split. Derive it with
    /// [`Config::for_fabric`], never from a backend's name.
    pub ordered_election: bool,
    /// With `ordered_election`: the fabric also closes barrier epochs (Data Vortex), and a
    /// voter ignores the rest of an epoch's vote requests once it granted one, whatever
    /// their term. Without epochs (deadline-ordered `ptp`) a voter goes by terms only.
    pub barrier_epochs: bool,
    /// Bytes per snapshot chunk.
    pub snapshot_chunk: usize,
    /// Seeds the randomized election timeout, so simulations replay exactly.
    pub seed: u64,
}

/// The smallest entry limit accepted: room for an entry's own fields and a small command.
pub const MIN_ENTRY_BYTES: usize = 256;

/// Bytes an append message takes besides its entries' data, at most (ids, terms, indexes,
/// per-entry framing of a full batch): what [`Config::for_fabric`] leaves free.
const APPEND_FIELDS: usize = 4096;

impl Config {
    /// Defaults for node `id`: 10-tick elections, 1-tick heartbeats, pre-vote and
    /// check-quorum on.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            max_entries_per_append: 100,
            max_bytes_per_append: 1 << 20,
            max_entry_bytes: 1 << 20,
            max_committed_per_ready: 256,
            max_inflight: 256,
            max_inflight_bytes: 1 << 20,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
            ordered_election: false,
            barrier_epochs: false,
            snapshot_chunk: 1 << 20,
            seed: u64::from(id.0),
        }
    }

    /// Turns on the paths a fabric's guarantees allow: ordered elections need
    /// `total_order` and a candidate's own request delivered in that order (`loopback`);
    /// barrier epochs refine them where the fabric has `barrier`. Appends are kept within
    /// the largest message the transport takes (less room for the message's own fields),
    /// and so are the largest entry and a snapshot chunk, so a fabric is never handed a
    /// message it must refuse (which would stall replication for good).
    pub fn for_fabric(mut self, caps: &Capabilities) -> Config {
        self.follow_order(caps);
        if caps.max_message > 0 {
            let room = Config::room_in(caps.max_message);
            self.max_bytes_per_append = self.max_bytes_per_append.min(room);
            self.max_entry_bytes = self.max_entry_bytes.min(room);
            self.snapshot_chunk = self.snapshot_chunk.min(room);
        }
        self
    }

    /// The replication window per follower.
    pub(crate) fn window(&self) -> crate::progress::Window {
        crate::progress::Window {
            appends: self.max_inflight,
            bytes: self.max_inflight_bytes,
        }
    }

    /// The largest entry (or snapshot chunk) that fits a message of `max_message` bytes
    /// beside the message's own fields.
    pub fn room_in(max_message: usize) -> usize {
        max_message.saturating_sub(APPEND_FIELDS).max(1)
    }

    /// The election settings `caps` allow (the part of [`Config::for_fabric`] that can
    /// change at run time); returns whether they changed.
    pub(crate) fn follow_order(&mut self, caps: &Capabilities) -> bool {
        let ordered = caps.total_order && caps.loopback;
        let epochs = ordered && caps.barrier;
        let changed = (self.ordered_election, self.barrier_epochs) != (ordered, epochs);
        self.ordered_election = ordered;
        self.barrier_epochs = epochs;
        changed
    }

    /// Checks the settings fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_string()));
        if self.id == crate::message::TO_GROUP {
            return bad("node id 4294967295 is reserved for multicast messages");
        }
        if self.heartbeat_tick == 0 || self.election_tick <= self.heartbeat_tick {
            return bad("election_tick must exceed heartbeat_tick, which must be at least 1");
        }
        if self.max_entries_per_append == 0
            || self.max_inflight == 0
            || self.max_inflight_bytes == 0
            || self.snapshot_chunk == 0
            || self.max_committed_per_ready == 0
        {
            return bad("max_entries_per_append, max_inflight, max_inflight_bytes, snapshot_chunk and max_committed_per_ready must be positive");
        }
        if self.max_entry_bytes < MIN_ENTRY_BYTES {
            return bad(&format!(
                "max_entry_bytes must be at least {MIN_ENTRY_BYTES}, not {}",
                self.max_entry_bytes
            ));
        }
        if self.lease_reads && !self.check_quorum {
            return bad("lease_reads requires check_quorum");
        }
        Ok(())
    }
}

/// An inconsistent [`Config`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid raft config: {0}")]
pub struct ConfigError(pub String);
