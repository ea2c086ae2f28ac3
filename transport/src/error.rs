//! Typed errors of the transport crate: sending, decoding bytes from the wire, loading
//! config, and opening a transport.

use std::path::PathBuf;

use crate::{Capability, NodeId};

/// Why a `send` or `broadcast` failed. Nothing was queued when one is returned, except as
/// [`TransportError::BroadcastPartial`] says.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The destination is not a peer of this endpoint (not a member, or the local node).
    #[error("node {0} is not a peer of this endpoint")]
    UnknownPeer(NodeId),
    /// The message is larger than the transport accepts.
    #[error("message of {size} bytes exceeds this transport's limit of {max} bytes")]
    TooLarge {
        /// Size of the rejected message.
        size: usize,
        /// The transport's `max_message`.
        max: usize,
    },
    /// The reliable layer's bounded send window to `peer` is full; retry after acks drain it.
    #[error("send window to node {peer} is full ({limit} messages unacknowledged)")]
    WindowFull {
        /// The peer whose window is full.
        peer: NodeId,
        /// The window size.
        limit: usize,
    },
    /// A broadcast reached only some peers: the send windows of `skipped` were full. The
    /// message was queued for every other peer.
    #[error("broadcast skipped nodes {skipped:?}: their send windows are full")]
    BroadcastPartial {
        /// Peers the message was not queued for.
        skipped: Vec<NodeId>,
    },
    /// The local endpoint has been closed or crashed (fault injection).
    #[error("transport endpoint is closed")]
    Closed,
    /// The operating system refused the operation.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Why bytes received from the wire were rejected. Decoders return this, never panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame ends before a field it must contain.
    #[error("frame truncated: {field} needs {need} bytes, {have} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// The frame does not start with weft's magic number.
    #[error("bad magic {0:#06x}: not a weft frame")]
    BadMagic(u16),
    /// The frame was written by an incompatible wire version.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// A kind byte names no known frame kind.
    #[error("unknown {layer} frame kind {kind:#04x}")]
    UnknownKind {
        /// The layer or framing whose kind byte it was.
        layer: &'static str,
        /// The byte.
        kind: u8,
    },
    /// The frame belongs to another cluster.
    #[error("frame for cluster {got}, this is cluster {expected}")]
    WrongCluster {
        /// This cluster's id.
        expected: u64,
        /// The id in the frame.
        got: u64,
    },
    /// A field holds a value that cannot be valid.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A problem with a cluster config file, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending key, dotted (`cluster.nodes[2].addr`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Why `open` could not build a transport.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A capability was asked for that the backend lacks and no software layer provides.
    #[error("transport `{backend}` cannot provide `{capability}`: the fabric lacks it and no software layer adds it")]
    Unsatisfiable {
        /// The backend kind.
        backend: &'static str,
        /// The missing capability.
        capability: Capability,
    },
    /// The configuration is inconsistent (for example `auth` without a key).
    #[error("invalid transport configuration: {0}")]
    Invalid(String),
    /// The local node is not in the member list.
    #[error("node {0} is not a member of this cluster")]
    NotAMember(NodeId),
    /// The backend kind is known but not available in this build.
    #[error("transport kind `{0}` is not available in this build of weft")]
    Unavailable(&'static str),
    /// The fabric refused the endpoint or is not there (no switch, no device, id in use).
    #[error("cannot attach to fabric `{fabric}`: {reason}")]
    Fabric {
        /// The fabric name from the config.
        fabric: String,
        /// What the fabric's library said, and what to do about it.
        reason: String,
    },
    /// The operating system refused (bind, socket options, threads).
    #[error("cannot open transport: {0}")]
    Io(#[from] std::io::Error),
}
