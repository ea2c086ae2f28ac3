//! The client wire protocol, shared by the server ([`crate::service`]) and the client
//! library ([`crate::client`]).
//!
//! **Framing.** Every message is one frame: a 4-byte big-endian length, then that many bytes
//! of MessagePack. A frame longer than the receiver's maximum (default
//! [`DEFAULT_MAX_FRAME`], 4 MiB) is refused: the server answers with an
//! [`ErrorKind::FrameTooLarge`] error and closes the connection, because it will not read
//! (and cannot skip safely) that much data.
//!
//! **Encoding.** As in rafty, messages are MessagePack maps with a `type` field: structs are
//! encoded with their field names ([`rmp_serde::to_vec_named`]), and the request and reply
//! bodies are internally tagged enums, e.g.
//! `{"id": 7, "body": {"type": "put", "client": 42, "seq": 3, "key": "k", "value": <bin>}}`.
//!
//! **Pipelining.** A connection is persistent and carries many requests at once. Every
//! request has a [`RequestId`] chosen by the client; the server answers requests as they
//! complete (not necessarily in order), and every reply carries the id of its request. Id
//! [`UNKNOWN_REQUEST`] (0) is reserved for replies to frames whose id could not be read;
//! clients should number their requests from 1.
//!
//! **Cluster check.** A client that knows which cluster it wants opens each connection
//! with [`Request::Hello`] naming the cluster id; a node of another cluster answers
//! [`ErrorKind::WrongCluster`] and closes the connection, so a stale or mistyped address
//! (or a port reused by another cluster's node) gives a clear error instead of reads and
//! writes against the wrong data. Requests without a hello are served as before.
//!
//! **Exactly-once writes.** Writes carry a [`ClientId`] and a [`Seq`]; the state machine
//! keeps one session per client (see [`crate::kv`]), so a write retried with the same id and
//! sequence number takes effect at most once, whatever node it reaches.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::kv::KvOutcome;
use crate::node::Status;
use crate::{Change, Index, NodeId};

/// Length of the frame header: a big-endian `u32` byte count.
pub const LENGTH_PREFIX: usize = 4;

/// The default maximum frame size (payload bytes, header excluded): 4 MiB.
pub const DEFAULT_MAX_FRAME: usize = 4 << 20;

/// The request id used in replies to frames whose own id could not be decoded.
pub const UNKNOWN_REQUEST: RequestId = 0;

/// Identifies a request on its connection; chosen by the client, echoed in the reply.
pub type RequestId = u64;

/// A client's session id (random, chosen by the client).
pub type ClientId = u64;

/// A client's write sequence number: 1 for its first write, then increasing by one per
/// write. A retried write keeps its number.
pub type Seq = u64;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Linearizable: the node confirms leadership first (ReadIndex) and answers once it has
    /// applied everything committed before the read arrived. The default.
    #[default]
    Linearizable,
    /// Stale: the node answers at once from its own state, which may lag the leader.
    Stale,
}

/// One request frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// The id the reply will carry.
    pub id: RequestId,
    /// What is asked.
    pub body: Request,
}

/// What a client can ask of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Reads one key. Answered with [`Reply::Value`].
    Get {
        /// The key.
        key: String,
        /// Linearizable (default) or stale.
        #[serde(default)]
        consistency: Consistency,
    },
    /// Reads the whole dictionary (rafty's `get`). Answered with [`Reply::All`].
    GetAll {
        /// Linearizable (default) or stale.
        #[serde(default)]
        consistency: Consistency,
    },
    /// Sets `key` to `value`. Answered with [`Reply::Written`] (or a redirect).
    Put {
        /// The writer's session.
        client: ClientId,
        /// The write's sequence number in that session.
        seq: Seq,
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
    },
    /// Removes `key`. Answered with [`Reply::Written`] (or a redirect).
    Delete {
        /// The writer's session.
        client: ClientId,
        /// The write's sequence number in that session.
        seq: Seq,
        /// The key.
        key: String,
    },
    /// Sets `key` to `new` (removes it if `None`) only if it holds `expected` (`None`:
    /// absent). Answered with [`Reply::Written`] carrying [`KvOutcome::Cas`].
    Cas {
        /// The writer's session.
        client: ClientId,
        /// The write's sequence number in that session.
        seq: Seq,
        /// The key.
        key: String,
        /// The value required now.
        expected: Option<Bytes>,
        /// The value to set.
        new: Option<Bytes>,
    },
    /// The node's diagnostic (rafty's `diagnostic`). Answered by any node, never
    /// redirected, with [`Reply::Status`].
    Diagnostic,
    /// A membership change through joint consensus (rafty's `config`). Leader only;
    /// answered with [`Reply::ConfigAccepted`].
    Config {
        /// The steps of the change, applied together.
        changes: Vec<Change>,
    },
    /// Asks the leader to hand leadership to `to`. Answered with
    /// [`Reply::TransferStarted`].
    TransferLeader {
        /// The node that should lead.
        to: NodeId,
    },
    /// Opens a connection to a node of cluster `cluster`. Answered with [`Reply::Welcome`],
    /// or by a node of another cluster with [`ErrorKind::WrongCluster`] and a close.
    Hello {
        /// The cluster id the client expects (the `[cluster] id` of its config).
        cluster: u64,
    },
}

impl Request {
    /// Whether only the leader can serve this request (a follower redirects it).
    pub fn is_leader_only(&self) -> bool {
        matches!(
            self,
            Request::Put { .. }
                | Request::Delete { .. }
                | Request::Cas { .. }
                | Request::Config { .. }
                | Request::TransferLeader { .. }
        )
    }
}

/// One reply frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientReply {
    /// The id of the request answered ([`UNKNOWN_REQUEST`] if it could not be read).
    pub id: RequestId,
    /// The answer.
    pub body: Reply,
}

/// What a node answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// The value of the key read (`None`: absent).
    Value {
        /// The value.
        value: Option<Bytes>,
    },
    /// The whole dictionary.
    All {
        /// Every key and its value.
        entries: BTreeMap<String, Bytes>,
    },
    /// The write was applied (or had been applied before: a retry gets the first answer).
    Written {
        /// What the write did.
        outcome: KvOutcome,
    },
    /// The node's diagnostic.
    Status {
        /// The diagnostic.
        status: Box<NodeStatus>,
    },
    /// The membership change was proposed at `index` (it takes effect once committed; the
    /// joint configuration is left automatically).
    ConfigAccepted {
        /// The log index of the change.
        index: Index,
    },
    /// The leader started handing over leadership.
    TransferStarted,
    /// The answer to a [`Request::Hello`] naming this node's cluster.
    Welcome {
        /// The node answering.
        node: NodeId,
    },
    /// This node does not lead: retry the same request (same client id and sequence
    /// number) at the leader.
    Redirect {
        /// The leader, if this node knows it.
        leader: Option<NodeId>,
        /// The leader's client address (`ip:port`), if this node knows it.
        address: Option<String>,
    },
    /// This node knows no leader (an election is under way, or it is cut off from the
    /// others): ask again, here or at another node, after `retry_after_ms`.
    NoLeader {
        /// How long a new leader takes at least (the node's shortest election timeout),
        /// in milliseconds.
        retry_after_ms: u64,
    },
    /// The request failed.
    Error {
        /// What kind of failure, and whether a retry may succeed.
        kind: ErrorKind,
        /// A human-readable explanation.
        message: String,
    },
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The frame was not a valid request (bad MessagePack, wrong type, missing fields).
    /// Permanent.
    BadRequest,
    /// The frame exceeded the server's maximum size; the server closes the connection.
    FrameTooLarge,
    /// The node's request queue is full. Retry later.
    Busy,
    /// The node has stopped. Retry elsewhere.
    Unavailable,
    /// No answer within the server's request timeout; a write's fate is unknown. Retry
    /// (with the same sequence number).
    Timeout,
    /// A transient refusal (a leadership transfer or a membership change in progress).
    /// Retry later.
    Retry,
    /// Refused for good (an invalid membership change, for instance).
    Refused,
    /// The node belongs to another cluster than the [`Request::Hello`] named; the server
    /// closes the connection. Another address of the client's list may be right.
    WrongCluster,
    /// The write's key or value is larger than the node takes; the message names the
    /// limit (`service.max_key`, `service.max_value` or `raft.max_entry_bytes`).
    /// Permanent: nothing was written.
    TooLarge,
}

impl ErrorKind {
    /// Whether retrying the same request may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Busy | ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Retry
        )
    }
}

/// A node's diagnostic on the wire: the node's own [`crate::node::Status`], unchanged.
pub type NodeStatus = Status;

/// Why a frame could not be read, written or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed or closed (a truncated frame ends here, as `UnexpectedEof`).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix announces more than the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The payload is not valid MessagePack for the expected type.
    #[error("undecodable frame: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The message could not be encoded.
    #[error("unencodable message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Encodes `msg` as one frame: length prefix and MessagePack payload (a map per struct).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    append_frame_of(&mut out, msg)?;
    Ok(out)
}

/// Appends `msg` as one frame to `out`, as [`encode_frame`] encodes it, without a buffer
/// of its own (a server batching replies writes them straight into its output); returns
/// the payload's length. On an error `out` is as it was.
pub fn append_frame_of<T: Serialize>(out: &mut Vec<u8>, msg: &T) -> Result<usize, FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; LENGTH_PREFIX]);
    let encoded = rmp_serde::encode::write_named(out, msg)
        .map_err(FrameError::from)
        .and_then(|()| {
            let len = out.len() - start - LENGTH_PREFIX;
            u32::try_from(len)
                .map(|l| (len, l))
                .map_err(|_| FrameError::TooLarge {
                    len,
                    max: u32::MAX as usize,
                })
        });
    match encoded {
        Ok((len, prefix)) => {
            out[start..start + LENGTH_PREFIX].copy_from_slice(&prefix.to_be_bytes());
            Ok(len)
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Decodes a frame's payload (the bytes after the length prefix).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    Ok(rmp_serde::from_slice(payload)?)
}

/// Checks a length prefix against `max`; returns the payload length.
pub fn frame_len(prefix: [u8; LENGTH_PREFIX], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads one frame's payload from a blocking reader.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    r.read_exact(&mut prefix)?;
    let len = frame_len(prefix, max)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(payload)
}

/// Writes `msg` as one frame to a blocking writer (one `write_all`, then a flush).
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads just the `id` of a request that does not decode as a whole, so that the error
/// reply can name it.
pub(crate) fn salvage_id(payload: &[u8]) -> Option<RequestId> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: RequestId,
    }
    rmp_serde::from_slice::<IdOnly>(payload).ok().map(|x| x.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
        let frame = encode_frame(&v).unwrap();
        let payload = read_frame(&mut &frame[..], DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(decode::<T>(&payload).unwrap(), v);
    }

    #[test]
    fn every_request_and_reply_round_trips() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        for body in [
            Request::Get {
                key: "k".into(),
                consistency: Consistency::Stale,
            },
            Request::GetAll {
                consistency: Consistency::Linearizable,
            },
            Request::Put {
                client: u64::MAX,
                seq: 1,
                key: "k".into(),
                value: b("v"),
            },
            Request::Delete {
                client: 1,
                seq: 2,
                key: "k".into(),
            },
            Request::Cas {
                client: 1,
                seq: 3,
                key: "k".into(),
                expected: None,
                new: Some(b("x")),
            },
            Request::Diagnostic,
            Request::Config {
                changes: vec![Change::AddVoter(NodeId(4)), Change::Remove(NodeId(1))],
            },
            Request::TransferLeader { to: NodeId(2) },
            Request::Hello { cluster: u64::MAX },
        ] {
            roundtrip(ClientRequest { id: 9, body });
        }
        let status = NodeStatus {
            id: NodeId(1),
            role: "Leader".into(),
            term: 3,
            voted_for: Some(NodeId(1)),
            leader: Some(NodeId(1)),
            membership: crate::Membership::with_voters([NodeId(1), NodeId(2)]),
            commit: 10,
            applied: 9,
            last_index: 11,
            reads_per_s: vec![1; 10],
            writes_per_s: vec![2; 10],
            appends_per_s: vec![3; 10],
            clock_offsets: vec![weft_transport::ClockOffset {
                peer: NodeId(2),
                offset_ns: -1_500,
                delay_ns: 40_000,
            }],
            total_order: true,
            ordered_elections: true,
            longest_pass_us: 12_345,
        };
        for body in [
            Reply::Value { value: None },
            Reply::Welcome { node: NodeId(3) },
            Reply::NoLeader {
                retry_after_ms: 150,
            },
            Reply::Value {
                value: Some(b("v")),
            },
            Reply::All {
                entries: [("a".to_string(), b("1"))].into_iter().collect(),
            },
            Reply::Written {
                outcome: KvOutcome::Cas {
                    swapped: true,
                    current: Some(b("0")),
                },
            },
            Reply::Written {
                outcome: KvOutcome::Done { previous: None },
            },
            Reply::Status {
                status: Box::new(status),
            },
            Reply::ConfigAccepted { index: 5 },
            Reply::TransferStarted,
            Reply::Redirect {
                leader: Some(NodeId(2)),
                address: Some("127.0.0.1:1".into()),
            },
            Reply::Error {
                kind: ErrorKind::Busy,
                message: "x".into(),
            },
        ] {
            roundtrip(ClientReply { id: 3, body });
        }
    }

    #[test]
    fn the_wire_is_a_map_with_a_type_field_and_consistency_defaults() {
        // What a non-Rust client would send: no consistency field.
        #[derive(Serialize)]
        struct Body<'a> {
            r#type: &'a str,
            key: &'a str,
        }
        #[derive(Serialize)]
        struct Req<'a> {
            id: u64,
            body: Body<'a>,
        }
        let frame = encode_frame(&Req {
            id: 5,
            body: Body {
                r#type: "get",
                key: "k",
            },
        })
        .unwrap();
        let req: ClientRequest = decode(&frame[LENGTH_PREFIX..]).unwrap();
        assert_eq!(
            req,
            ClientRequest {
                id: 5,
                body: Request::Get {
                    key: "k".into(),
                    consistency: Consistency::Linearizable
                }
            }
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let too_big = (DEFAULT_MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &too_big[..], DEFAULT_MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        let truncated = [0u8, 0, 0, 10, 1, 2];
        assert!(matches!(
            read_frame(&mut &truncated[..], DEFAULT_MAX_FRAME),
            Err(FrameError::Io(_))
        ));
        for junk in [
            &b""[..],
            b"\xff\xff\xff",
            b"\xdd\xff\xff\xff\xff",
            b"\x92\x01",
            b"\xa3abc",
        ] {
            assert!(decode::<ClientRequest>(junk).is_err());
        }
        // A reply is not a request, but its id can be salvaged.
        let reply = encode_frame(&ClientReply {
            id: 77,
            body: Reply::TransferStarted,
        })
        .unwrap();
        assert!(decode::<ClientRequest>(&reply[LENGTH_PREFIX..]).is_err());
        assert_eq!(salvage_id(&reply[LENGTH_PREFIX..]), Some(77));
    }
}
