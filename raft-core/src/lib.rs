//! `weft-raft`: Raft consensus for weft.
//!
//! This crate will hold Raft as a pure, sans-I/O state machine in the style of raft-rs and
//! etcd/raft (`RawNode::step`, `tick`, `propose`, and a `Ready` hand-off), the node runtime
//! that drives it over a [`weft_transport::Transport`], the write-ahead log and snapshots,
//! the key-value state machine, and the TCP + MessagePack client protocol.
//!
//! It sees only the transport contract and its [`weft_transport::Capabilities`], never a
//! backend by name. Nothing is implemented yet: the Raft-core issue lands it.
