//! The client library: a blocking [`Client`] for the client service
//! ([`crate::service`]), and [`DistributedDict`], rafty's dictionary-like view with refresh
//! policies.
//!
//! **Why plain `std::net::TcpStream` and no runtime.** The API is blocking and a `Client`
//! has one request outstanding at a time (each method sends a request and waits for its
//! answer), so an async runtime would add threads, a dependency on a reactor and a
//! `block_on` per call, and buy nothing. Socket timeouts (`set_read_timeout`) give the
//! per-attempt deadline. Programs that want many requests in flight either use several
//! clients (they are cheap: one socket each) or pipeline on a [`Connection`] directly,
//! which the server fully supports.
//!
//! **Retries.** Each call goes to the node the client last succeeded with (initially a
//! random one of [`ClientConfig::addresses`]). A redirect is followed at once to the
//! leader's address (it is learned and remembered); a redirect without an address, a
//! transient error, a timeout or a broken connection moves to the next known address after
//! an exponential backoff with jitter; a node that knows no leader
//! ([`Reply::NoLeader`]) is left for the next address after at least the pause it asks
//! for (its election timeout), so clients do not spin on a leaderless cluster. Attempts are bounded by
//! [`ClientConfig::max_attempts`] and the total time by [`ClientConfig::max_total`].
//!
//! **Exactly-once writes.** The client has a random session id and numbers its writes
//! 1, 2, 3...; a retried write (after a timeout, a redirect, a lost connection) keeps its
//! number, so the state machine applies it at most once and answers the retry with the
//! first outcome.

mod dict;

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::kv::KvOutcome;
use crate::service::protocol::{
    decode, encode_frame, read_frame, ClientId, ClientReply, ClientRequest, Consistency, ErrorKind,
    FrameError, NodeStatus, Reply, Request, RequestId, Seq, DEFAULT_MAX_FRAME,
};
use crate::{Change, Index, NodeId};

pub use dict::{DistributedDict, RefreshPolicy};

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Client addresses of the cluster's nodes (any subset; the leader's is learned from
    /// redirects).
    pub addresses: Vec<SocketAddr>,
    /// Time allowed to open a connection. Default 1 s.
    pub connect_timeout: Duration,
    /// Time allowed for one attempt's answer. Default 5 s.
    pub request_timeout: Duration,
    /// Attempts per call, redirects included. Default 20.
    pub max_attempts: u32,
    /// Total time per call, backoff included. Default 15 s.
    pub max_total: Duration,
    /// First backoff pause. Default 10 ms.
    pub backoff_initial: Duration,
    /// Largest backoff pause (the pause doubles up to it). Default 1 s.
    pub backoff_max: Duration,
    /// Consistency of [`Client::get`] and [`Client::get_all`]. Default linearizable.
    pub consistency: Consistency,
    /// Largest reply frame accepted. Default 4 MiB.
    pub max_frame: usize,
    /// The cluster id expected: every connection opens with a [`Request::Hello`] naming
    /// it, and a node of another cluster is skipped like an unreachable one. `None` (the
    /// default) talks to whatever answers.
    pub cluster: Option<u64>,
}

impl ClientConfig {
    /// Defaults for a cluster reachable at `addresses`.
    pub fn new(addresses: impl IntoIterator<Item = SocketAddr>) -> ClientConfig {
        ClientConfig {
            addresses: addresses.into_iter().collect(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            max_attempts: 20,
            max_total: Duration::from_secs(15),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            consistency: Consistency::Linearizable,
            max_frame: DEFAULT_MAX_FRAME,
            cluster: None,
        }
    }

    /// Defaults for a client of `cluster`: every member's `client` address, and the
    /// cluster id checked by every connection's hello.
    pub fn for_cluster(cluster: &weft_transport::ClusterConfig) -> ClientConfig {
        ClientConfig {
            cluster: Some(cluster.cluster_id),
            ..ClientConfig::new(cluster.clients.values().copied())
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration names no address.
    #[error("no server address configured")]
    NoAddresses,
    /// A connection failed (single-attempt calls only; retried calls end in `GaveUp`).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be read or decoded.
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    /// The server refused the request for good.
    #[error("server error ({kind:?}): {message}")]
    Server {
        /// The kind of failure.
        kind: ErrorKind,
        /// The server's explanation.
        message: String,
    },
    /// The node at `addr` belongs to another cluster than [`ClientConfig::cluster`].
    #[error("{addr} is not a node of the expected cluster: {message}")]
    WrongCluster {
        /// The node's address.
        addr: SocketAddr,
        /// The node's explanation (which cluster it belongs to).
        message: String,
    },
    /// The server answered with a reply of the wrong kind.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    /// The write's sequence number is older than the last one the cluster applied for this
    /// client: the cluster no longer keeps its outcome.
    #[error("write {seq} is stale (a later write of this client was applied)")]
    Stale {
        /// The sequence number of the refused write.
        seq: Seq,
    },
    /// Retries exhausted (attempts or time); a write's fate is unknown.
    #[error("gave up after {attempts} attempts in {elapsed:?}: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: String,
    },
}

/// The outcome of a compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the value was replaced.
    pub swapped: bool,
    /// The value found, before the swap.
    pub current: Option<Bytes>,
}

/// One persistent connection to one server: framing, request ids, and pipelining (send
/// many requests, then receive the replies, matching them by id).
pub struct Connection {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
    max_frame: usize,
    next_id: RequestId,
}

impl Connection {
    /// Connects to `addr` within `timeout`; replies longer than `max_frame` are refused.
    pub fn connect(
        addr: SocketAddr,
        timeout: Duration,
        max_frame: usize,
    ) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            addr,
            stream: BufReader::new(stream),
            max_frame,
            next_id: 1,
        })
    }

    /// Connects to `addr` as `cfg` says (its connect timeout, at most `timeout`, and its
    /// frame limit) and, if `cfg` names a cluster, checks within `timeout` that the node
    /// belongs to it.
    pub fn open(
        addr: SocketAddr,
        cfg: &ClientConfig,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let mut conn = Connection::connect(addr, cfg.connect_timeout.min(timeout), cfg.max_frame)?;
        if let Some(cluster) = cfg.cluster {
            conn.hello(cluster, timeout)?;
        }
        Ok(conn)
    }

    /// Checks that the node belongs to cluster `cluster` ([`Request::Hello`]); returns its
    /// id. A node of another cluster closes the connection.
    pub fn hello(&mut self, cluster: u64, timeout: Duration) -> Result<NodeId, ClientError> {
        match self.call(Request::Hello { cluster }, timeout)? {
            Reply::Welcome { node } => Ok(node),
            Reply::Error {
                kind: ErrorKind::WrongCluster,
                message,
            } => Err(ClientError::WrongCluster {
                addr: self.addr,
                message,
            }),
            Reply::Error { kind, message } => Err(ClientError::Server { kind, message }),
            other => Err(unexpected(&other)),
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A fresh request id (1, 2, 3... on this connection).
    pub fn next_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends one request without waiting for its reply.
    pub fn send(&mut self, req: &ClientRequest) -> Result<(), ClientError> {
        let frame = encode_frame(req)?;
        let s = self.stream.get_mut();
        s.write_all(&frame)?;
        s.flush()?;
        Ok(())
    }

    /// Receives the next reply, whichever request it answers; waits at most `timeout`
    /// (`None`: forever).
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<ClientReply, ClientError> {
        self.stream
            .get_ref()
            .set_read_timeout(timeout.map(|t| t.max(Duration::from_millis(1))))?;
        let payload = read_frame(&mut self.stream, self.max_frame)?;
        Ok(decode(&payload)?)
    }

    /// Sends `body` and waits up to `timeout` for its reply (replies to other requests
    /// that arrive meanwhile are discarded).
    pub fn call(&mut self, body: Request, timeout: Duration) -> Result<Reply, ClientError> {
        let id = self.next_id();
        self.send(&ClientRequest { id, body })?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
            }
            let reply = self.recv(Some(left))?;
            if reply.id == id {
                return Ok(reply.body);
            }
        }
    }
}

/// A blocking client of the replicated dictionary.
pub struct Client {
    cfg: ClientConfig,
    id: ClientId,
    seq: Seq,
    /// Known addresses: the configured ones, then those learned from redirects.
    addresses: Vec<SocketAddr>,
    current: usize,
    conn: Option<Connection>,
    rng: u64,
}

impl Client {
    /// A client with settings `cfg` and a random session id. Connects lazily.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.addresses.is_empty() {
            return Err(ClientError::NoAddresses);
        }
        let mut rng = crate::random::seed() | 1;
        let id = loop {
            let id = crate::random::next(&mut rng);
            if id != 0 {
                break id;
            }
        };
        let mut addresses = Vec::new();
        for a in &cfg.addresses {
            if !addresses.contains(a) {
                addresses.push(*a);
            }
        }
        let current = (crate::random::next(&mut rng) % addresses.len() as u64) as usize;
        Ok(Client {
            cfg,
            id,
            seq: 0,
            addresses,
            current,
            conn: None,
            rng,
        })
    }

    /// A client with default settings for the cluster at `addresses`.
    pub fn connect(addresses: impl IntoIterator<Item = SocketAddr>) -> Result<Client, ClientError> {
        Client::new(ClientConfig::new(addresses))
    }

    /// This client's session id.
    pub fn client_id(&self) -> ClientId {
        self.id
    }

    /// The sequence number of the last write issued (0 before the first).
    pub fn last_seq(&self) -> Seq {
        self.seq
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The addresses the client knows (configured, then learned).
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// The address the next call goes to first.
    pub fn target(&self) -> SocketAddr {
        self.addresses[self.current]
    }

    /// Reads `key` with the configured consistency.
    pub fn get(&mut self, key: &str) -> Result<Option<Bytes>, ClientError> {
        self.get_with(key, self.cfg.consistency)
    }

    /// Reads `key` with the given consistency.
    pub fn get_with(
        &mut self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<Bytes>, ClientError> {
        match self.call(Request::Get {
            key: key.to_string(),
            consistency,
        })? {
            Reply::Value { value } => Ok(value),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads the whole dictionary with the configured consistency.
    pub fn get_all(&mut self) -> Result<BTreeMap<String, Bytes>, ClientError> {
        self.get_all_with(self.cfg.consistency)
    }

    /// Reads the whole dictionary with the given consistency.
    pub fn get_all_with(
        &mut self,
        consistency: Consistency,
    ) -> Result<BTreeMap<String, Bytes>, ClientError> {
        match self.call(Request::GetAll { consistency })? {
            Reply::All { entries } => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets `key` to `value`; returns the previous value.
    pub fn put(
        &mut self,
        key: &str,
        value: impl Into<Bytes>,
    ) -> Result<Option<Bytes>, ClientError> {
        let (key, value) = (key.to_string(), value.into());
        let (seq, outcome) = self.write(|client, seq| Request::Put {
            client,
            seq,
            key,
            value,
        })?;
        done(seq, outcome)
    }

    /// Removes `key`; returns the value it had.
    pub fn delete(&mut self, key: &str) -> Result<Option<Bytes>, ClientError> {
        let key = key.to_string();
        let (seq, outcome) = self.write(|client, seq| Request::Delete { client, seq, key })?;
        done(seq, outcome)
    }

    /// Sets `key` to `new` (removes it if `None`) only if it holds `expected` (`None`:
    /// absent).
    pub fn cas(
        &mut self,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<CasOutcome, ClientError> {
        let key = key.to_string();
        let (seq, outcome) = self.write(|client, seq| Request::Cas {
            client,
            seq,
            key,
            expected,
            new,
        })?;
        match outcome {
            KvOutcome::Cas { swapped, current } => Ok(CasOutcome { swapped, current }),
            KvOutcome::Stale => Err(ClientError::Stale { seq }),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The diagnostic of the node the client talks to (rafty's `diagnostic`).
    pub fn status(&mut self) -> Result<NodeStatus, ClientError> {
        match self.call(Request::Diagnostic)? {
            Reply::Status { status } => Ok(*status),
            other => Err(unexpected(&other)),
        }
    }

    /// The diagnostic of the node at `addr` (one attempt, no redirect).
    pub fn status_of(&self, addr: SocketAddr) -> Result<NodeStatus, ClientError> {
        let mut conn = Connection::open(addr, &self.cfg, self.cfg.request_timeout)?;
        match conn.call(Request::Diagnostic, self.cfg.request_timeout)? {
            Reply::Status { status } => Ok(*status),
            Reply::Error { kind, message } => Err(ClientError::Server { kind, message }),
            other => Err(unexpected(&other)),
        }
    }

    /// Adds node `id` as a voter (joint consensus; the cluster leaves the joint
    /// configuration by itself). Returns the log index of the change.
    pub fn add_node(&mut self, id: NodeId) -> Result<Index, ClientError> {
        self.change_membership(vec![Change::AddVoter(id)])
    }

    /// Adds node `id` as a learner (receives the log, does not vote).
    pub fn add_learner(&mut self, id: NodeId) -> Result<Index, ClientError> {
        self.change_membership(vec![Change::AddLearner(id)])
    }

    /// Removes node `id` from the cluster.
    pub fn remove_node(&mut self, id: NodeId) -> Result<Index, ClientError> {
        self.change_membership(vec![Change::Remove(id)])
    }

    /// Proposes the membership change `changes` (rafty's `config`).
    pub fn change_membership(&mut self, changes: Vec<Change>) -> Result<Index, ClientError> {
        match self.call(Request::Config { changes })? {
            Reply::ConfigAccepted { index } => Ok(index),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the leader to hand leadership to `to` (returns once the handover started).
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ClientError> {
        match self.call(Request::TransferLeader { to })? {
            Reply::TransferStarted => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Issues a write with the next sequence number; retries keep that number.
    fn write(
        &mut self,
        make: impl FnOnce(ClientId, Seq) -> Request,
    ) -> Result<(Seq, KvOutcome), ClientError> {
        self.seq += 1;
        let seq = self.seq;
        match self.call(make(self.id, seq))? {
            Reply::Written { outcome } => Ok((seq, outcome)),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends `body` until it gets a final answer, following redirects and retrying with
    /// backoff within the configured bounds. The very same request is resent each time.
    pub fn call(&mut self, body: Request) -> Result<Reply, ClientError> {
        let start = Instant::now();
        let mut backoff = self.cfg.backoff_initial;
        let mut last = String::from("no attempt made");
        let mut attempts = 0;
        let mut redirects_in_row = 0u32;
        while attempts < self.cfg.max_attempts.max(1) {
            let left = self.cfg.max_total.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            attempts += 1;
            let target = self.target();
            // The least pause before the next attempt, beyond the backoff.
            let mut hint = Duration::ZERO;
            let pause = match self.attempt(target, &body, self.cfg.request_timeout.min(left)) {
                Ok(Reply::NoLeader { retry_after_ms }) => {
                    last = format!("{target} knows no leader");
                    redirects_in_row = 0;
                    // Another node may know one; if none does, an election takes at
                    // least the hint: asking sooner only adds load.
                    self.rotate();
                    hint = Duration::from_millis(retry_after_ms).min(self.cfg.backoff_max);
                    true
                }
                Ok(Reply::Redirect { leader, address }) => {
                    last = format!("{target} redirected to leader {leader:?} at {address:?}");
                    redirects_in_row += 1;
                    match address.and_then(|a| a.parse::<SocketAddr>().ok()) {
                        Some(a) if a != target => {
                            self.point_at(a);
                            // Follow a fresh redirect at once; a chain of them means the
                            // cluster is in flux: slow down.
                            redirects_in_row > 1
                        }
                        _ => {
                            self.rotate();
                            leader.is_none() || redirects_in_row > 1
                        }
                    }
                }
                Ok(Reply::Error { kind, message }) if kind.is_transient() => {
                    last = format!("{target}: {kind:?}: {message}");
                    redirects_in_row = 0;
                    if kind == ErrorKind::Unavailable {
                        self.rotate();
                    }
                    true
                }
                Ok(Reply::Error { kind, message }) => {
                    return Err(ClientError::Server { kind, message })
                }
                Ok(reply) => return Ok(reply),
                Err(e) => {
                    last = format!("{target}: {e}");
                    redirects_in_row = 0;
                    self.conn = None;
                    self.rotate();
                    true
                }
            };
            if pause && attempts < self.cfg.max_attempts {
                let left = self.cfg.max_total.saturating_sub(start.elapsed());
                let jittered = backoff
                    .mul_f64(0.5 + (crate::random::next(&mut self.rng) % 1000) as f64 / 2000.0);
                std::thread::sleep(jittered.max(hint).min(left));
                backoff = (backoff * 2).min(self.cfg.backoff_max);
            }
        }
        Err(ClientError::GaveUp {
            attempts,
            elapsed: start.elapsed(),
            last,
        })
    }

    /// One attempt at `target` over the cached connection (opened if needed). A failed
    /// attempt leaves the connection to be dropped by the caller.
    fn attempt(
        &mut self,
        target: SocketAddr,
        body: &Request,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        if self.conn.as_ref().is_none_or(|c| c.addr() != target) {
            self.conn = None;
            self.conn = Some(Connection::open(target, &self.cfg, timeout)?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.call(body.clone(), timeout)
    }

    fn rotate(&mut self) {
        self.current = (self.current + 1) % self.addresses.len();
    }

    fn point_at(&mut self, addr: SocketAddr) {
        match self.addresses.iter().position(|a| *a == addr) {
            Some(i) => self.current = i,
            None => {
                self.addresses.push(addr);
                self.current = self.addresses.len() - 1;
            }
        }
    }
}

fn done(seq: Seq, outcome: KvOutcome) -> Result<Option<Bytes>, ClientError> {
    match outcome {
        KvOutcome::Done { previous } => Ok(previous),
        KvOutcome::Stale => Err(ClientError::Stale { seq }),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

fn unexpected(reply: &Reply) -> ClientError {
    ClientError::Unexpected(format!("{reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_differ() {
        let a = Client::connect(["127.0.0.1:1".parse().unwrap()]).unwrap();
        let b = Client::connect(["127.0.0.1:1".parse().unwrap()]).unwrap();
        assert_ne!(a.client_id(), b.client_id());
        assert_ne!(a.client_id(), 0);
        assert!(matches!(Client::connect([]), Err(ClientError::NoAddresses)));
    }

    #[test]
    fn gives_up_within_its_bounds_when_nobody_listens() {
        // A port nobody listens on: bind, note the port, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut cfg = ClientConfig::new([addr]);
        cfg.max_attempts = 4;
        cfg.backoff_initial = Duration::from_millis(5);
        let mut c = Client::new(cfg).unwrap();
        let t = Instant::now();
        match c.put("k", "v") {
            Err(ClientError::GaveUp { attempts: 4, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(c.last_seq(), 1);
        let mut cfg = ClientConfig::new([addr]);
        cfg.max_attempts = 1000;
        cfg.max_total = Duration::from_millis(200);
        let mut c = Client::new(cfg).unwrap();
        let t = Instant::now();
        assert!(matches!(c.get("k"), Err(ClientError::GaveUp { .. })));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
