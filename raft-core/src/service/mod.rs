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
//! callback that writes the answer to the socket at once (non-blocking, on the answering
//! thread) when nothing is queued ahead of it, and otherwise pushes it into the
//! connection's reply queue for its writer task, so an answer costs no extra thread hop.
//! The node answers every request, at the latest with a timeout. Dropping the [`Server`]
//! stops the runtime and closes every connection.

pub mod protocol;

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
use crate::node::{NodeError, NodeHandle, ReadResult};
use crate::{NodeId, ProposeError};

use protocol::{
    decode, encode_frame, frame_len, ClientReply, ClientRequest, Consistency, ErrorKind, Reply,
    Request, RequestId, DEFAULT_MAX_FRAME, LENGTH_PREFIX, UNKNOWN_REQUEST,
};

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

    /// How long the rest of a frame may take once its length prefix arrived; past it the
    /// connection is closed. Default 10 s.
    pub frame_timeout: Duration,
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.workers.max(1))
        .max_blocking_threads(4)
        .thread_name("weft-client-svc")
        .enable_io()
        .enable_time()
        .build()?;
    let listener = runtime.block_on(TcpListener::bind(cfg.listen))?;
    let local_addr = listener.local_addr()?;

    let peers = Arc::new(RwLock::new(cfg.peers_clients.clone()));
    let shared = Arc::new(Shared {
        node: handle,
        peers: Arc::clone(&peers),
        max_frame: cfg.max_frame,
        max_in_flight: cfg.max_in_flight,
        frame_timeout: cfg.frame_timeout,
        cluster: cfg.cluster,
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
                tokio::spawn(connection(stream, Arc::clone(&shared)));
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
    /// The unwritten rest of a reply begun on the answering thread, and its slot.
    Rest(Vec<u8>, OwnedSemaphorePermit),
    /// A last reply; then the connection closes.
    Close(ClientReply),
}

/// A connection's way out: replies are written on the answering thread while nothing is
/// queued for the writer task, and queued behind what is. Why: handing a reply to the
/// writer task is a thread wake-up (tens of microseconds) on every request's path.
struct Replies {
    queue: UnboundedSender<Out>,
    /// A non-blocking duplicate of the connection's socket, for the answering thread
    /// (std's writes on Linux never raise SIGPIPE).
    socket: std::net::TcpStream,
    /// Replies queued for the writer task and not yet written; the lock also orders a
    /// write here against the queue. Shared with the writer task, which holds no sender of
    /// the queue: it ends once the reader and every pending answer are done.
    queued: Arc<Mutex<usize>>,
    max_frame: usize,
}

impl Replies {
    /// Queues `out` for the writer task.
    fn queue(&self, out: Out) {
        self.push(&mut lock_count(&self.queued), out);
    }

    /// Queues `out` under the count's lock, counting it.
    fn push(&self, queued: &mut usize, out: Out) {
        *queued += 1;
        let _ = self.queue.send(out);
    }

    /// Writes `reply` now if nothing is queued ahead of it, as far as the socket takes it;
    /// queues the rest (or all of it) for the writer task.
    fn reply(&self, reply: ClientReply, slot: OwnedSemaphorePermit) {
        let mut queued = lock_count(&self.queued);
        if *queued > 0 {
            return self.push(&mut queued, Out::Reply(reply, Some(slot)));
        }
        let mut frame = Vec::new();
        append_frame(&mut frame, &reply, self.max_frame);
        let written = match (&self.socket).write(&frame) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(_) => return, // the peer is gone, as for the writer task
        };
        if written < frame.len() {
            frame.drain(..written);
            self.push(&mut queued, Out::Rest(frame, slot));
        }
    }
}

fn lock_count(count: &Mutex<usize>) -> std::sync::MutexGuard<'_, usize> {
    // A count is whole after any panic.
    count.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection's read half.
type Reader = BufReader<OwnedReadHalf>;

/// Bytes a connection reads ahead: many small pipelined requests, or a large one's start.
const READ_BUFFER: usize = 16 << 10;

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
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
    let queued = Arc::new(Mutex::new(0));
    let writer = tokio::spawn(write_loop(wr, rx, Arc::clone(&queued), shared.max_frame));
    let replies = Arc::new(Replies {
        queue: tx,
        socket: dup,
        queued,
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
        if rd.read_exact(&mut prefix).await.is_err() {
            return None; // closed between frames (or a partial prefix): done
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
        let mut payload = vec![0u8; len];
        match tokio::time::timeout(shared.frame_timeout, rd.read_exact(&mut payload)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return None, // truncated frame: the peer closed
            Err(_) => {
                out.queue(Out::Close(error(
                    UNKNOWN_REQUEST,
                    ErrorKind::BadRequest,
                    "frame incomplete after the frame timeout".into(),
                )));
                return Some(rd);
            }
        }
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

/// Writes what is queued, in order, batched; `queued` counts it down once written (see
/// [`Replies`]).
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: UnboundedReceiver<Out>,
    queued: Arc<Mutex<usize>>,
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
                Out::Rest(rest, slot) => {
                    buf.extend_from_slice(&rest);
                    slots.push(slot);
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
        let mut count = lock_count(&queued);
        *count = count.saturating_sub(taken);
    }
}

/// Appends `reply` as a frame; a reply too large for a frame becomes an error reply.
fn append_frame(buf: &mut Vec<u8>, reply: &ClientReply, max_frame: usize) {
    let frame = match encode_frame(reply) {
        Ok(f) if f.len() - LENGTH_PREFIX <= max_frame => f,
        Ok(f) => fallback(
            reply.id,
            format!(
                "reply of {} bytes exceeds the maximum frame of {max_frame}",
                f.len() - LENGTH_PREFIX
            ),
        ),
        Err(e) => fallback(reply.id, format!("reply cannot be encoded: {e}")),
    };
    buf.extend_from_slice(&frame);

    fn fallback(id: RequestId, message: String) -> Vec<u8> {
        encode_frame(&error(id, ErrorKind::FrameTooLarge, message)).unwrap_or_default()
    }
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

/// Hands `req` to the node (or answers it here); the answer goes through `replier`.
fn dispatch(req: ClientRequest, replier: Replier, shared: &Arc<Shared>) -> Then {
    let node = &shared.node;
    match req.body {
        Request::Put {
            client,
            seq,
            key,
            value,
        } => write(node, client, seq, KvCommand::Put { key, value }, replier),
        Request::Delete { client, seq, key } => {
            write(node, client, seq, KvCommand::Delete { key }, replier)
        }
        Request::Cas {
            client,
            seq,
            key,
            expected,
            new,
        } => write(
            node,
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

fn write(node: &NodeHandle, client: u64, seq: u64, command: KvCommand, replier: Replier) {
    node.write_then(
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
