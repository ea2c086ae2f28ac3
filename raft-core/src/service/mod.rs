//! The client service: a node's key-value API over TCP (rafty's client protocol, with
//! persistent, pipelined connections).
//!
//! [`serve`] starts a server for one node: it listens on [`ServerConfig::listen`], reads
//! length-prefixed MessagePack frames ([`protocol`]), hands each request to the node through
//! its [`NodeHandle`], and writes each reply, tagged with the request's id, as soon as the
//! node answers. Many requests may be in flight on one connection (up to
//! [`ServerConfig::max_in_flight`]); replies come back in completion order.
//!
//! What a follower does: it redirects writes, membership changes and leadership transfers
//! to the leader ([`protocol::Reply::Redirect`], with the leader's client address when
//! [`ServerConfig::peers_clients`] knows it); it serves linearizable reads itself, by
//! asking the leader for a read index (ReadIndex), and stale reads from its own state.
//!
//! Robustness: a frame that is not a valid request gets an [`ErrorKind::BadRequest`] reply
//! (with the request id if it can be read) and the connection goes on, since the frame
//! boundary is intact; a frame longer than [`ServerConfig::max_frame`] gets an
//! [`ErrorKind::FrameTooLarge`] reply and the connection is closed; a truncated frame (the
//! peer closes, or stalls for [`ServerConfig::frame_timeout`] inside a frame) closes the
//! connection. None of these touch other connections.
//!
//! Threads: the server owns a small tokio runtime (2 worker threads by default) for the
//! sockets. No tokio worker ever waits for the node: a worker runs the node's pass for the
//! request it submits only if no other thread is running one (at a follower that pass may
//! include an fsync of appends that arrived meanwhile). Each request hands the node a
//! callback that writes the answer to the socket on the answering thread (non-blocking,
//! together with the connection's other answers from the same pass of the node) when
//! nothing is queued ahead of it, and otherwise pushes it into the connection's reply
//! queue for its writer task, so an answer costs no extra thread hop.
//! The node answers every request, at the latest with a timeout. Dropping the [`Server`]
//! stops the runtime and closes every connection.

pub mod protocol;
pub mod settings;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::kv::{KvCommand, KvOutcome, KvRequest};
use crate::node::{at_pass_end, NodeError, NodeHandle, ReadResult};
use crate::{NodeId, ProposeError};

use protocol::{
    append_frame_of, decode, frame_len, ClientReply, ClientRequest, Consistency, ErrorKind, Reply,
    Request, RequestId, DEFAULT_MAX_FRAME, LENGTH_PREFIX, UNKNOWN_REQUEST,
};

/// Connections a client service's listener queues before it accepts them. Why not the
/// usual 128: when a leader changes, every client a follower redirects connects to the
/// new leader at once, and past the queue the kernel drops the handshake's last packet,
/// which costs that client a second (the handshake's first retransmission). The kernel
/// caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a [`LISTEN_BACKLOG`] of queued connections.
async fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The default largest key: 4 KiB.
pub const DEFAULT_MAX_KEY: usize = 4 << 10;

/// The default largest value: what a 1 MiB transport message leaves for a write beside
/// the largest key and the message's and command's own fields.
pub const DEFAULT_MAX_VALUE: usize = (1 << 20) - (16 << 10);

/// Worker threads of a client service's tokio runtime unless configured otherwise.
pub const DEFAULT_WORKERS: usize = 2;

/// Settings of a client service.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen (port 0: any free port; see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Largest frame payload accepted, and sent, in bytes (default 4 MiB).
    pub max_frame: usize,
    /// The client addresses of the cluster's nodes, used in redirects. Can be updated
    /// while running with [`Server::set_peer_client`].
    pub peers_clients: BTreeMap<NodeId, SocketAddr>,
    /// Requests in flight per connection (received, not yet answered); when reached, the
    /// server stops reading that connection until replies go out. Default 4096.
    pub max_in_flight: usize,

    /// How long a frame may take once its first byte arrived (its length prefix
    /// included); past it the connection is closed. Default 10 s.
    pub frame_timeout: Duration,
    /// Largest key accepted in a write, in bytes. Default [`DEFAULT_MAX_KEY`].
    pub max_key: usize,
    /// Largest value accepted in a write (a compare-and-set's two values together), in
    /// bytes. Default [`DEFAULT_MAX_VALUE`]. A larger write is refused with
    /// [`ErrorKind::TooLarge`] before it reaches the log.
    pub max_value: usize,
    /// Connections served at once; one more is answered [`ErrorKind::Busy`] and closed.
    /// Default 4,096.
    pub max_connections: usize,
    /// Bytes of frames larger than a connection's read buffer being read, across all
    /// connections; past it connections wait before they read more, so slow senders of
    /// large frames cannot take the node's memory. Default 256 MiB; at least
    /// `max_frame`.
    pub max_buffered_bytes: usize,
    /// Worker threads of the server's runtime. Default [`DEFAULT_WORKERS`].
    pub workers: usize,
    /// The id of this node's cluster: a [`Request::Hello`] naming another is refused with
    /// [`ErrorKind::WrongCluster`]. `None` (the default) welcomes any.
    pub cluster: Option<u64>,
}

impl ServerConfig {
    /// Defaults, listening on `listen`, with no peer addresses.
    pub fn new(listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            listen,
            max_frame: DEFAULT_MAX_FRAME,
            peers_clients: BTreeMap::new(),
            max_in_flight: 4096,
            frame_timeout: Duration::from_secs(10),
            max_key: DEFAULT_MAX_KEY,
            max_value: DEFAULT_MAX_VALUE,
            max_connections: 4096,
            max_buffered_bytes: 256 << 20,
            workers: DEFAULT_WORKERS,
            cluster: None,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration is unusable.
    #[error("invalid service configuration: {0}")]
    Config(String),
    /// The runtime, the listener or a thread could not be created.
    #[error("cannot start the client service: {0}")]
    Io(#[from] std::io::Error),
}

/// A running client service; dropping it stops the service and closes its connections
/// (the node itself keeps running). Do not drop it from inside an async context.
pub struct Server {
    runtime: Option<tokio::runtime::Runtime>,

    local_addr: SocketAddr,
    peers: Arc<RwLock<BTreeMap<NodeId, SocketAddr>>>,
}

impl Server {
    /// The address the service listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sets (or changes) the client address of node `id`, used in redirects to it.
    pub fn set_peer_client(&self, id: NodeId, addr: SocketAddr) {
        self.peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, addr);
    }

    /// Forgets the client address of node `id`.
    pub fn remove_peer_client(&self, id: NodeId) {
        self.peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// The client addresses known for redirects.
    pub fn peers_clients(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Starts the client service for the node behind `handle`.
pub fn serve(cfg: ServerConfig, handle: NodeHandle) -> Result<Server, ServiceError> {
    if cfg.max_frame == 0 || cfg.max_frame > u32::MAX as usize {
        return Err(ServiceError::Config(format!(
            "max_frame must be in 1..=4294967295, not {}",
            cfg.max_frame
        )));
    }
    if cfg.max_in_flight == 0 || cfg.max_in_flight > Semaphore::MAX_PERMITS {
        return Err(ServiceError::Config(
            "max_in_flight must be positive".into(),
        ));
    }
    if cfg.max_connections == 0 || cfg.max_connections > Semaphore::MAX_PERMITS {
        return Err(ServiceError::Config(
            "max_connections must be positive".into(),
        ));
    }
    if cfg.max_buffered_bytes < cfg.max_frame || cfg.max_buffered_bytes > Semaphore::MAX_PERMITS {
        return Err(ServiceError::Config(format!(
            "max_buffered_bytes ({}) must be at least max_frame ({})",
            cfg.max_buffered_bytes, cfg.max_frame
        )));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.workers.max(1))
        .max_blocking_threads(4)
        .thread_name("weft-client-svc")
        .enable_io()
        .enable_time()
        .build()?;
    let listener = runtime.block_on(listen(cfg.listen))?;
    let local_addr = listener.local_addr()?;

    let peers = Arc::new(RwLock::new(cfg.peers_clients.clone()));
    let shared = Arc::new(Shared {
        node: handle,
        peers: Arc::clone(&peers),
        max_frame: cfg.max_frame,
        max_in_flight: cfg.max_in_flight,
        frame_timeout: cfg.frame_timeout,
        cluster: cfg.cluster,
        max_key: cfg.max_key,
        max_value: cfg.max_value,
        max_connections: cfg.max_connections,
        connections: Arc::new(Semaphore::new(cfg.max_connections)),
        buffered: Arc::new(Semaphore::new(cfg.max_buffered_bytes)),
    });
    runtime.spawn(accept_loop(listener, shared));
    Ok(Server {
        runtime: Some(runtime),

        local_addr,
        peers,
    })
}

/// What every connection of a server shares.
struct Shared {
    node: NodeHandle,
    peers: Arc<RwLock<BTreeMap<NodeId, SocketAddr>>>,
    max_frame: usize,
    max_in_flight: usize,
    frame_timeout: Duration,
    cluster: Option<u64>,
    max_key: usize,
    max_value: usize,
    max_connections: usize,
    /// One permit per connection served.
    connections: Arc<Semaphore>,
    /// One permit per byte of large frames being read (see
    /// [`ServerConfig::max_buffered_bytes`]).
    buffered: Arc<Semaphore>,
}

impl Shared {
    /// The answer to a hello naming `cluster`, and what the connection does after it.
    fn hello(&self, cluster: u64) -> (Reply, Then) {
        match self.cluster {
            Some(own) if own != cluster => (
                Reply::Error {
                    kind: ErrorKind::WrongCluster,
                    message: format!(
                        "node {} belongs to cluster {own}, not to cluster {cluster}",
                        self.node.id()
                    ),
                },
                Then::Close,
            ),
            _ => (
                Reply::Welcome {
                    node: self.node.id(),
                },
                Then::GoOn,
            ),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tracing::trace!(%peer, "client connected");
                match Arc::clone(&shared.connections).try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(connection(stream, Arc::clone(&shared), permit));
                    }
                    Err(_) => {
                        tracing::debug!(%peer, max = shared.max_connections, "connection refused: too many");
                        tokio::spawn(refuse(stream, shared.max_connections));
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors, say: wait a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// What the reader (and the node's answers) hand to a connection's writer.
enum Out {
    /// A reply, and the in-flight slot it frees once written.
    Reply(ClientReply, Option<OwnedSemaphorePermit>),
    /// Encoded replies (or the unwritten rest of them) from an answering thread, and the
    /// slots they free.
    Rest(Vec<u8>, Vec<OwnedSemaphorePermit>),
    /// A last reply; then the connection closes.
    Close(ClientReply),
}

/// A connection's way out: replies are written on the answering thread while nothing is
/// queued for the writer task, and queued behind what is. Why: handing a reply to the
/// writer task is a thread wake-up (tens of microseconds) on every request's path. The
/// replies one pass of the node gives are held until the pass ends and written together,
/// so that a pipelining client's answers cost one system call per pass, not one each.
struct Replies {
    queue: UnboundedSender<Out>,
    /// A non-blocking duplicate of the connection's socket, for the answering thread
    /// (std's writes on Linux never raise SIGPIPE).
    socket: std::net::TcpStream,
    /// Shared with the writer task, which holds no sender of the queue: it ends once the
    /// reader and every pending answer are done. The lock also orders a write here
    /// against the queue.
    way: Arc<Mutex<Way>>,
    max_frame: usize,
}

/// What a connection's way out holds under its lock.
#[derive(Default)]
struct Way {
    /// Items queued for the writer task and not yet written.
    queued: usize,
    /// Replies held for the end of the pass that gave them, encoded, and the slots they
    /// free once written. Only held while nothing is queued: whatever is queued later
    /// takes them along first, so replies leave in the order they were given. The reply
    /// that finds it empty has it flushed.
    held: Vec<u8>,
    held_slots: Vec<OwnedSemaphorePermit>,
}

impl Replies {
    /// Queues `out` for the writer task, behind any held replies.
    fn queue(&self, out: Out) {
        let mut way = lock_way(&self.way);
        self.queue_held(&mut way);
        self.push(&mut way, out);
    }

    /// Queues `out` under the lock, counting it.
    fn push(&self, way: &mut Way, out: Out) {
        way.queued += 1;
        let _ = self.queue.send(out);
    }

    /// Hands the held replies to the writer task.
    fn queue_held(&self, way: &mut Way) {
        if !way.held.is_empty() {
            let rest = Out::Rest(
                std::mem::take(&mut way.held),
                std::mem::take(&mut way.held_slots),
            );
            self.push(way, rest);
        }
    }

    /// Holds `reply` for the end of the node's pass running on this thread (at once
    /// outside a pass), or queues it behind what is queued already.
    fn reply(self: &Arc<Self>, reply: ClientReply, slot: OwnedSemaphorePermit) {
        let mut way = lock_way(&self.way);
        if way.queued > 0 {
            return self.push(&mut way, Out::Reply(reply, Some(slot)));
        }
        let first = way.held.is_empty();
        append_frame(&mut way.held, &reply, self.max_frame);
        way.held_slots.push(slot);
        if first {
            drop(way);
            let replies = Arc::clone(self);
            at_pass_end(move || replies.flush());
        }
    }

    /// Writes the held replies now if nothing is queued ahead of them, as far as the
    /// socket takes them; queues the rest (or all of them) for the writer task.
    fn flush(&self) {
        let mut way = lock_way(&self.way);
        if way.held.is_empty() {
            return; // taken along by something queued since
        }
        if way.queued > 0 {
            return self.queue_held(&mut way);
        }
        let mut frames = std::mem::take(&mut way.held);
        let slots = std::mem::take(&mut way.held_slots);
        let written = match (&self.socket).write(&frames) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(_) => return, // the peer is gone, as for the writer task
        };
        if written < frames.len() {
            frames.drain(..written);
            self.push(&mut way, Out::Rest(frames, slots));
        }
    }
}

fn lock_way(way: &Mutex<Way>) -> std::sync::MutexGuard<'_, Way> {
    // A way out is whole after any panic: each change to it is one assignment.
    way.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection's read half.
type Reader = BufReader<OwnedReadHalf>;

/// Bytes a connection reads ahead: many small pipelined requests, or a large one's start.
const READ_BUFFER: usize = 16 << 10;

/// Answers a connection past [`ServerConfig::max_connections`] with `Busy` and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let reply = error(
        UNKNOWN_REQUEST,
        ErrorKind::Busy,
        format!("the node serves at most {max} client connections (service.max_connections); retry later"),
    );
    let mut buf = Vec::new();
    append_frame(&mut buf, &reply, DEFAULT_MAX_FRAME);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&buf).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves one connection; `_served` is its place among [`ServerConfig::max_connections`].
async fn connection(stream: TcpStream, shared: Arc<Shared>, _served: OwnedSemaphorePermit) {
    let _ = stream.set_nodelay(true);
    // A duplicate of the socket for the answering threads (see `Replies`).
    let duplicated = stream
        .into_std()
        .and_then(|s| Ok((s.try_clone()?, TcpStream::from_std(s)?)));
    let (dup, stream) = match duplicated {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "cannot duplicate a connection's socket; closed");
            return;
        }
    };
    let (rd, wr) = stream.into_split();
    let (tx, rx) = unbounded_channel();
    let way = Arc::new(Mutex::new(Way::default()));
    let writer = tokio::spawn(write_loop(wr, rx, Arc::clone(&way), shared.max_frame));
    let replies = Arc::new(Replies {
        queue: tx,
        socket: dup,
        way,
        max_frame: shared.max_frame,
    });
    // Buffered, so that a frame's prefix and payload (and any frames pipelined behind
    // them) arrive in one read instead of a system call each.
    let rd = BufReader::with_capacity(READ_BUFFER, rd);
    if let Some(rd) = read_loop(rd, replies, &shared).await {
        // Closing on purpose: let the last reply go out, then read (and discard) what the
        // peer still sends for a moment, so that closing does not reset the connection
        // before the peer has read the reply.
        let _ = writer.await;
        drain(rd).await;
    }
    // Otherwise the writer finishes on its own once the answers in flight are written.
}

/// Reads requests until the peer closes; returns the read half if the connection must be
/// closed after a last reply.
async fn read_loop(mut rd: Reader, out: Arc<Replies>, shared: &Arc<Shared>) -> Option<Reader> {
    let slots = Arc::new(Semaphore::new(shared.max_in_flight));
    loop {
        let mut prefix = [0u8; LENGTH_PREFIX];
        // A connection may idle between frames for as long as it likes; once a frame's
        // first byte is here, the rest of it has the frame timeout.
        if rd.read_exact(&mut prefix[..1]).await.is_err() {
            return None; // closed between frames: done
        }
        let deadline = tokio::time::Instant::now() + shared.frame_timeout;
        match tokio::time::timeout_at(deadline, rd.read_exact(&mut prefix[1..])).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return None, // closed inside a prefix
            Err(_) => return Some(incomplete(&out, rd)),
        }
        let len = match frame_len(prefix, shared.max_frame) {
            Ok(len) => len,
            Err(e) => {
                tracing::debug!(error = %e, "oversized frame; closing the connection");
                out.queue(Out::Close(error(
                    UNKNOWN_REQUEST,
                    ErrorKind::FrameTooLarge,
                    e.to_string(),
                )));
                return Some(rd);
            }
        };
        let payload = match tokio::time::timeout_at(deadline, payload(&mut rd, len, shared)).await {
            Ok(Ok(payload)) => payload,
            Ok(Err(_)) => return None, // truncated frame: the peer closed
            Err(_) => return Some(incomplete(&out, rd)),
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return None;
        };
        match decode::<ClientRequest>(&payload) {
            Ok(req) => {
                let replier = Replier::new(req.id, &out, slot, shared);
                if dispatch(req, replier, shared) == Then::Close {
                    return Some(rd);
                }
            }
            Err(e) => {
                let id = protocol::salvage_id(&payload).unwrap_or(UNKNOWN_REQUEST);
                tracing::debug!(id, error = %e, "bad request frame");
                let reply = error(id, ErrorKind::BadRequest, e.to_string());
                out.queue(Out::Reply(reply, Some(slot)));
            }
        }
    }
}

/// Closes a connection whose frame did not arrive within the frame timeout.
fn incomplete(out: &Replies, rd: Reader) -> Reader {
    out.queue(Out::Close(error(
        UNKNOWN_REQUEST,
        ErrorKind::BadRequest,
        "frame incomplete after the frame timeout".into(),
    )));
    rd
}

/// Bytes of a large frame read between two takes from the service's buffer budget.
const BUDGET_STEP: usize = 64 << 10;

/// A frame's payload of `len` bytes, and its share of the buffer budget, held until the
/// payload is dropped. A frame that fits the connection's read buffer is read as it is
/// (that memory is the connection's own); a larger one takes the budget as its bytes
/// arrive, waiting, and so reading no more, while the budget is spent: what slow senders
/// of large frames hold is bounded by [`ServerConfig::max_buffered_bytes`], not by what
/// they announce.
async fn payload(rd: &mut Reader, len: usize, shared: &Shared) -> std::io::Result<Payload> {
    if len <= READ_BUFFER {
        let mut bytes = vec![0u8; len];
        rd.read_exact(&mut bytes).await?;
        return Ok(Payload {
            bytes,
            _budget: None,
        });
    }
    let mut bytes = Vec::new();
    let mut budget: Option<OwnedSemaphorePermit> = None;
    while bytes.len() < len {
        let step = (len - bytes.len()).min(BUDGET_STEP);
        let taken = Arc::clone(&shared.buffered)
            .acquire_many_owned(step as u32)
            .await
            .map_err(|_| std::io::Error::other("the service is stopping"))?;
        match &mut budget {
            Some(b) => b.merge(taken),
            None => budget = Some(taken),
        }
        let at = bytes.len();
        bytes.resize(at + step, 0);
        rd.read_exact(&mut bytes[at..]).await?;
    }
    Ok(Payload {
        bytes,
        _budget: budget,
    })
}

/// A frame's payload and the share of the buffer budget it holds.
struct Payload {
    bytes: Vec<u8>,
    _budget: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Writes what is queued, in order, batched; counts it down in `way` once written (see
/// [`Replies`]).
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: UnboundedReceiver<Out>,
    way: Arc<Mutex<Way>>,
    max_frame: usize,
) {
    const BATCH: usize = 256 << 10;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut slots = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = false;
        let mut taken = 0;
        // Batch whatever is ready into one write.
        while let Some(msg) = next.take() {
            taken += 1;
            match msg {
                Out::Reply(reply, slot) => {
                    append_frame(&mut buf, &reply, max_frame);
                    slots.extend(slot);
                }
                Out::Rest(rest, freed) => {
                    buf.extend_from_slice(&rest);
                    slots.extend(freed);
                }
                Out::Close(reply) => {
                    append_frame(&mut buf, &reply, max_frame);
                    close = true;
                    break;
                }
            }
            if buf.len() >= BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if wr.write_all(&buf).await.is_err() {
            return; // the peer is gone; answers still coming are dropped
        }
        buf.clear();
        slots.clear();
        if close {
            // The count stays up: nothing is written after the last reply.
            let _ = wr.shutdown().await;
            return;
        }
        let mut way = lock_way(&way);
        way.queued = way.queued.saturating_sub(taken);
    }
}

/// Appends `reply` as a frame; a reply too large for a frame becomes an error reply.
fn append_frame(buf: &mut Vec<u8>, reply: &ClientReply, max_frame: usize) {
    let start = buf.len();
    let why = match append_frame_of(buf, reply) {
        Ok(len) if len <= max_frame => return,
        Ok(len) => {
            buf.truncate(start);
            format!("reply of {len} bytes exceeds the maximum frame of {max_frame}")
        }
        Err(e) => format!("reply cannot be encoded: {e}"),
    };
    // An error this small always encodes.
    let _ = append_frame_of(buf, &error(reply.id, ErrorKind::FrameTooLarge, why));
}

async fn drain(mut rd: Reader) {
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut sink = vec![0u8; 16 << 10];
        let mut total = 0usize;
        while total < (16 << 20) {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

fn error(id: RequestId, kind: ErrorKind, message: String) -> ClientReply {
    ClientReply {
        id,
        body: Reply::Error { kind, message },
    }
}

/// Answers one request: holds the connection's reply queue and the request's in-flight
/// slot.
struct Replier {
    out: Arc<Replies>,
    slot: OwnedSemaphorePermit,
    peers: Arc<RwLock<BTreeMap<NodeId, SocketAddr>>>,
    id: RequestId,
    /// The hint given with [`Reply::NoLeader`].
    retry_after: Duration,
}

impl Replier {
    fn new(
        id: RequestId,
        out: &Arc<Replies>,
        slot: OwnedSemaphorePermit,
        shared: &Shared,
    ) -> Replier {
        Replier {
            out: Arc::clone(out),
            slot,
            peers: Arc::clone(&shared.peers),
            id,
            retry_after: shared.node.election_timeout(),
        }
    }

    fn send(self, body: Reply) {
        let reply = ClientReply { id: self.id, body };
        self.out.reply(reply, self.slot);
    }

    /// Answers with `body` as the connection's last reply.
    fn close(self, body: Reply) {
        let reply = ClientReply { id: self.id, body };
        self.out.queue(Out::Close(reply));
    }

    /// Answers with `ok(value)`, or with what the node's failure means for the client.
    fn finish<T>(self, result: Result<T, NodeError>, ok: impl FnOnce(T) -> Reply) {
        let body = match result {
            Ok(v) => ok(v),
            Err(e) => self.failure(e),
        };
        self.send(body);
    }

    fn failure(&self, e: NodeError) -> Reply {
        let (kind, message) = match e {
            NodeError::NotLeader { leader: None } => {
                return Reply::NoLeader {
                    retry_after_ms: self.retry_after.as_millis() as u64,
                }
            }
            NodeError::NotLeader { leader } => {
                let address = leader.and_then(|l| {
                    self.peers
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&l)
                        .map(|a| a.to_string())
                });
                return Reply::Redirect { leader, address };
            }
            NodeError::Busy => (ErrorKind::Busy, e.to_string()),
            NodeError::Stopped => (ErrorKind::Unavailable, e.to_string()),
            NodeError::Timeout => (ErrorKind::Timeout, e.to_string()),
            NodeError::TooLarge { size, max } => (
                ErrorKind::TooLarge,
                format!("the write makes a log entry of {size} bytes; the largest the node takes is {max} (raft.max_entry_bytes)"),
            ),
            NodeError::Refused(m) => {
                let transient = m == ProposeError::TransferInProgress.to_string()
                    || m == ProposeError::ChangeInProgress.to_string();
                let kind = if transient {
                    ErrorKind::Retry
                } else {
                    ErrorKind::Refused
                };
                (kind, m)
            }
        };
        Reply::Error { kind, message }
    }
}

/// What the connection does after a request is dispatched.
#[derive(PartialEq, Eq)]
enum Then {
    /// Reads the next request.
    GoOn,
    /// Closes once the last reply is written (a hello for another cluster).
    Close,
}

/// Checks a write's key and value against [`ServerConfig::max_key`] and
/// [`ServerConfig::max_value`]; the error names the limit.
fn fits(shared: &Shared, command: &KvCommand) -> Result<(), String> {
    let (key, value) = match command {
        KvCommand::Put { key, value } => (key, value.len()),
        KvCommand::Delete { key } => (key, 0),
        KvCommand::Cas { key, expected, new } => (
            key,
            expected.as_ref().map_or(0, |v| v.len()) + new.as_ref().map_or(0, |v| v.len()),
        ),
    };
    if key.len() > shared.max_key {
        return Err(format!(
            "key of {} bytes exceeds the largest key of {} bytes (service.max_key)",
            key.len(),
            shared.max_key
        ));
    }
    if value > shared.max_value {
        return Err(format!(
            "value of {value} bytes exceeds the largest value of {} bytes (service.max_value)",
            shared.max_value
        ));
    }
    Ok(())
}

/// Hands `req` to the node (or answers it here); the answer goes through `replier`.
fn dispatch(req: ClientRequest, replier: Replier, shared: &Arc<Shared>) -> Then {
    let node = &shared.node;
    match req.body {
        Request::Put {
            client,
            seq,
            key,
            value,
        } => write(shared, client, seq, KvCommand::Put { key, value }, replier),
        Request::Delete { client, seq, key } => {
            write(shared, client, seq, KvCommand::Delete { key }, replier)
        }
        Request::Cas {
            client,
            seq,
            key,
            expected,
            new,
        } => write(
            shared,
            client,
            seq,
            KvCommand::Cas { key, expected, new },
            replier,
        ),
        Request::Get { key, consistency } => read(node, Some(key), consistency, replier),
        Request::GetAll { consistency } => read(node, None, consistency, replier),
        Request::Config { changes } => node.change_membership_then(
            changes,
            Box::new(move |r| replier.finish(r, |index| Reply::ConfigAccepted { index })),
        ),
        Request::TransferLeader { to } => node.transfer_leader_then(
            to,
            Box::new(move |r| replier.finish(r, |()| Reply::TransferStarted)),
        ),
        Request::Hello { cluster } => {
            let (body, then) = shared.hello(cluster);
            match then {
                Then::Close => {
                    tracing::debug!(cluster, "hello for another cluster; closing the connection");
                    replier.close(body);
                }
                Then::GoOn => replier.send(body),
            }
            return then;
        }
        Request::Diagnostic => {
            let node = node.clone();
            // `status` blocks (briefly) on the node: keep it off the workers.
            tokio::task::spawn_blocking(move || {
                let body = match node.status() {
                    Some(s) => Reply::Status {
                        status: Box::new(s),
                    },
                    None => Reply::Error {
                        kind: ErrorKind::Unavailable,
                        message: "the node has stopped".into(),
                    },
                };
                replier.send(body);
            });
        }
    }
    Then::GoOn
}

fn write(shared: &Shared, client: u64, seq: u64, command: KvCommand, replier: Replier) {
    if let Err(why) = fits(shared, &command) {
        return replier.send(Reply::Error {
            kind: ErrorKind::TooLarge,
            message: why,
        });
    }
    shared.node.write_then(
        KvRequest {
            client,
            seq,
            command,
        },
        Box::new(move |r| replier.finish(r, |outcome: KvOutcome| Reply::Written { outcome })),
    );
}

fn read(node: &NodeHandle, key: Option<String>, consistency: Consistency, replier: Replier) {
    node.read_then(
        key,
        consistency == Consistency::Linearizable,
        Box::new(move |r| {
            replier.finish(r, |read| match read {
                ReadResult::Value(value) => Reply::Value { value },
                ReadResult::All(entries) => Reply::All { entries },
            })
        }),
    );
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Instant;

    use super::*;
    use crate::node::as_pass;

    /// What a test holds of one connection: its way out, the client's end of the socket,
    /// the writer task's queue, and four in-flight slots.
    type Connection = (
        Arc<Replies>,
        std::net::TcpStream,
        UnboundedReceiver<Out>,
        Arc<Semaphore>,
    );

    /// A connection's way out over a connected loopback pair, the service's end
    /// non-blocking as `Replies` writes it.
    fn way_out() -> Connection {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let socket = listener.accept().unwrap().0;
        socket.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        let (queue, rx) = unbounded_channel();
        let replies = Arc::new(Replies {
            queue,
            socket,
            way: Arc::new(Mutex::new(Way::default())),
            max_frame: DEFAULT_MAX_FRAME,
        });
        (replies, client, rx, Arc::new(Semaphore::new(4)))
    }

    fn slot(slots: &Arc<Semaphore>) -> OwnedSemaphorePermit {
        Arc::clone(slots).try_acquire_owned().unwrap()
    }

    fn answer(id: RequestId) -> ClientReply {
        ClientReply {
            id,
            body: Reply::TransferStarted,
        }
    }

    fn frames(ids: &[RequestId]) -> Vec<u8> {
        let mut buf = Vec::new();
        for &id in ids {
            append_frame(&mut buf, &answer(id), DEFAULT_MAX_FRAME);
        }
        buf
    }

    /// Whether the client can read anything now.
    fn readable(client: &mut std::net::TcpStream) -> bool {
        let mut byte = [0u8; 1];
        !matches!(client.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Reads `len` bytes, waiting up to five seconds for them.
    fn read(client: &mut std::net::TcpStream, len: usize) -> Vec<u8> {
        let (mut got, began) = (vec![0u8; len], Instant::now());
        let mut at = 0;
        while at < len && began.elapsed() < Duration::from_secs(5) {
            match client.read(&mut got[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        got.truncate(at);
        got
    }

    /// The replies one pass gives a connection are held until the pass ends, then written
    /// together, and only then free their in-flight slots; outside a pass a reply is
    /// written at once.
    #[test]
    fn the_replies_of_one_pass_leave_together_when_it_ends() {
        let (replies, mut client, mut rx, slots) = way_out();
        as_pass(|| {
            for id in 1..=3 {
                replies.reply(answer(id), slot(&slots));
            }
            assert!(!readable(&mut client), "nothing leaves during the pass");
            assert_eq!(slots.available_permits(), 1);
        });
        let want = frames(&[1, 2, 3]);
        assert_eq!(read(&mut client, want.len()), want);
        assert_eq!(
            slots.available_permits(),
            4,
            "written replies free their slots"
        );
        assert!(rx.try_recv().is_err(), "nothing went to the writer task");
        replies.reply(answer(4), slot(&slots));
        let want = frames(&[4]);
        assert_eq!(read(&mut client, want.len()), want);
    }

    /// A burst of connections larger than the usual backlog of 128 all get through the
    /// handshake while nobody accepts (as a leader's clients reconnect at once after an
    /// election): past the backlog the kernel would drop them for a second.
    #[test]
    fn a_burst_of_connections_waits_in_the_listen_queue() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(listen(([127, 0, 0, 1], 0).into()))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let burst: Vec<_> = (0..300)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connection {i} was not queued: {e}"))
            })
            .collect();
        assert_eq!(burst.len(), 300);
    }

    /// Something queued for the writer task during a pass (a last reply, say) takes the
    /// replies held so far along ahead of it, so that replies leave in the order given and
    /// nothing follows a connection's last reply.
    #[test]
    fn what_is_queued_during_a_pass_goes_behind_the_held_replies() {
        let (replies, mut client, mut rx, slots) = way_out();
        as_pass(|| {
            replies.reply(answer(1), slot(&slots));
            replies.reply(answer(2), slot(&slots));
            replies.queue(Out::Close(answer(3)));
            replies.reply(answer(4), slot(&slots));
        });
        assert!(
            !readable(&mut client),
            "the writer task writes, not the pass"
        );
        match rx.try_recv() {
            Ok(Out::Rest(bytes, freed)) => {
                assert_eq!(bytes, frames(&[1, 2]));
                assert_eq!(freed.len(), 2);
            }
            _ => panic!("the held replies come first"),
        }
        assert!(matches!(rx.try_recv(), Ok(Out::Close(r)) if r.id == 3));
        assert!(matches!(rx.try_recv(), Ok(Out::Reply(r, Some(_))) if r.id == 4));
        assert_eq!(lock_way(&replies.way).queued, 3);
    }
}
