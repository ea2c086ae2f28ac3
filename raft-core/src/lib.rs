//! `weft-raft`: Raft consensus for weft, as a pure state machine.
//!
//! The core is sans-I/O in the style of raft-rs and etcd/raft: no threads, no clock, no
//! disk and no sockets inside. [`RawNode`] takes ticks, messages and proposals and hands out
//! a [`Ready`]: what to persist, what to send, what is committed. The runtime that drives it
//! over a [`weft_transport::Transport`] owns all I/O; the deterministic simulator in
//! [`sim`] drives the very same code under a seeded network, clock and storage.
//!
//! Implemented: elections with randomized timeouts, pre-vote and check-quorum; replication
//! with batching, pipelining and term-skipping backtracking; the current-term commit rule
//! (Figure 8); snapshots sent in chunks; membership changes through joint consensus with
//! learners; leadership transfer; ReadIndex and lease reads; and ordered elections on
//! fabrics whose [`weft_transport::Capabilities`] report `total_order` and `barrier`.

pub mod client;
mod config;
pub mod kv;
mod kv_map;
pub mod lincheck;
pub mod log;
mod message;
pub mod node;
pub mod progress;
pub mod quorum;
mod raft;
pub mod random;
mod raw_node;
pub mod service;
pub mod sim;
pub mod storage;
mod types;

pub use config::{Config, ConfigError};
pub use message::{group_by_body, Body, DecodeError, Message, TO_GROUP};
pub use raft::{ProposeError, ReadState, Role};
pub use raw_node::{Durable, Persisted, RawNode, Ready, SoftState};
pub use types::{
    Change, Entry, HardState, Index, Membership, MembershipChange, NodeId, Payload, Snapshot,
    SnapshotMeta, Term,
};
