//! The node runtime: drives a [`RawNode`] over a [`Transport`], persists through a
//! [`LogStore`], applies to the [`KvStore`], and answers clients.
//!
//! The core is a single state machine behind one lock, driven in passes by whichever
//! thread has work for it: the transport's receive thread where a message arrived, the
//! thread that submitted a request, the storage thread that made something durable, or the
//! node's Raft thread (ticks, and work others left pending; see `Core`). Throughput comes
//! from batching: each pass drains every message and request that arrived meanwhile, then
//! handles the `Ready`; one fsync covers every entry handed to storage meanwhile (group
//! commit). The Ready contract is kept to the letter: persist, then send, then apply, then
//! advance, so no write is acknowledged before it is durable on a majority.
//!
//! Back-pressure: requests enter through a bounded queue; when it is full, `submit` says
//! `Busy` at once instead of letting latency grow without bound.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{
    bounded, select, unbounded, Receiver, Select, Sender, TryRecvError, TrySendError,
};
use weft_transport::{Delivery, Transport};

use crate::kv::{KvOutcome, KvRequest, KvStore};
use crate::{
    Change, Config, Durable, Entry, HardState, Index, Membership, Message, NodeId, Payload,
    Persisted, ProposeError, RawNode, Ready, Role, Snapshot, Term,
};

/// Where a node's log goes: the write-ahead log on disk, or nowhere (benchmarks, tests).
pub trait LogStore: Send {
    /// Makes one Ready's snapshot, entries and hard state durable, in that order.
    fn persist(
        &mut self,
        hard: Option<HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), String>;
    /// Records a local snapshot; entries it covers may be dropped.
    fn compact(&mut self, snapshot: &Snapshot) -> Result<(), String>;
    /// Like `persist`, but durable only at the next [`LogStore::sync`]: the storage thread
    /// writes every Ready queued behind the last sync, then syncs once (group commit). A
    /// store without buffering persists at once.
    fn write(
        &mut self,
        hard: Option<HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), String> {
        self.persist(hard, snapshot, entries)
    }
    /// Makes every `write` since the last sync durable.
    fn sync(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Something that makes a local snapshot's file durable from another thread, so that
    /// writing a large state does not hold up the log's syncs; the storage thread then
    /// records it with [`LogStore::compact_written`]. `None` (the default): `compact` does
    /// both on the storage thread.
    fn snapshot_writer(&self) -> Option<SnapshotWriter> {
        None
    }
    /// Records a local snapshot whose file the [`LogStore::snapshot_writer`] made durable;
    /// ignored if a newer snapshot was stored meanwhile (from the leader, say).
    fn compact_written(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        self.compact(snapshot)
    }
}

/// Writes one snapshot's file durably (see [`LogStore::snapshot_writer`]).
pub type SnapshotWriter = Arc<dyn Fn(&Snapshot) -> Result<(), String> + Send + Sync>;

/// A store that keeps nothing: for benchmarks of consensus alone, and tests.
#[derive(Debug, Default)]
pub struct NoStore;

impl LogStore for NoStore {
    fn persist(
        &mut self,
        _: Option<HardState>,
        _: Option<&Snapshot>,
        _: &[Entry],
    ) -> Result<(), String> {
        Ok(())
    }
    fn compact(&mut self, _: &Snapshot) -> Result<(), String> {
        Ok(())
    }
}

/// Settings of the runtime around the core.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The Raft settings.
    pub raft: Config,
    /// The members when the cluster is new.
    pub bootstrap: Membership,
    /// Length of one tick (election timeouts are `election_tick..2*election_tick` ticks).
    pub tick: Duration,
    /// Compact the log into a snapshot when this many applied entries follow the last one
    /// and the commands applied since take at least as many bytes as that snapshot did:
    /// a large state is then serialized proportionally less often, so the time spent on
    /// snapshots stays proportional to what is written (LogCabin's policy). 0: never.
    pub snapshot_entries: u64,
    /// Requests that may wait in the queue before `submit` answers `Busy`.
    pub queue: usize,
    /// A request not answered within this time is answered with [`NodeError::Timeout`].
    pub request_timeout: Duration,
}

impl NodeConfig {
    /// Defaults for node `id` of a cluster whose members are `voters`: 15 ms ticks (so
    /// 150-300 ms election timeouts with the default 10-tick elections), snapshots every
    /// 10,000 entries, a queue of 65,536 requests.
    pub fn new(id: NodeId, voters: impl IntoIterator<Item = NodeId>) -> NodeConfig {
        NodeConfig {
            raft: Config::new(id),
            bootstrap: Membership::with_voters(voters),
            tick: Duration::from_millis(15),
            snapshot_entries: 10_000,
            queue: 1 << 16,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a request failed. `NotLeader`, `Timeout` and `Stopped` leave a write's fate unknown:
/// retry it with the same client id and sequence number, and it is applied at most once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// This node does not lead; `leader` is its best guess.
    #[error("not the leader (try {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// The request queue is full.
    #[error("node is busy: request queue full")]
    Busy,
    /// The node has stopped (shut down, or its storage failed).
    #[error("node stopped")]
    Stopped,
    /// No answer within the node's request timeout (a forwarded read lost, a leader that
    /// cannot reach a quorum); a write's outcome is unknown.
    #[error("no answer in time; the outcome is unknown")]
    Timeout,
    /// The command would make a log entry larger than the node takes
    /// ([`crate::Config::max_entry_bytes`]); it was not appended. Permanent.
    #[error("entry of {size} bytes exceeds the largest entry of {max} bytes")]
    TooLarge {
        /// The entry's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The request was refused for another reason.
    #[error("{0}")]
    Refused(String),
}

impl Status {
    /// Whether the node reports itself as the leader.
    pub fn is_leader(&self) -> bool {
        self.role == "Leader"
    }
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    /// One key's value.
    Value(Option<Bytes>),
    /// The whole dictionary.
    All(BTreeMap<String, Bytes>),
}

/// rafty's `diagnostic`: what a node knows about itself and the cluster. It travels to
/// clients as it is (MessagePack).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Leader, candidate or follower.
    pub role: String,
    /// Current term.
    pub term: Term,
    /// Vote in the current term.
    pub voted_for: Option<NodeId>,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Voters, outgoing voters (during a change) and learners.
    pub membership: Membership,
    /// Commit index.
    pub commit: Index,
    /// Applied index.
    pub applied: Index,
    /// Last log index.
    pub last_index: Index,
    /// Reads, writes and appends (entries persisted) per second, over the last 10 seconds,
    /// oldest first.
    pub reads_per_s: Vec<u64>,
    /// See `reads_per_s`.
    pub writes_per_s: Vec<u64>,
    /// See `reads_per_s`.
    pub appends_per_s: Vec<u64>,
    /// Peers' measured clock offsets on fabrics that synchronize clocks (`ptp`); empty
    /// elsewhere (and from nodes that predate the field).
    #[serde(default)]
    pub clock_offsets: Vec<weft_transport::ClockOffset>,
    /// Whether the fabric gives `total_order` right now (`ptp` withdraws it when clocks
    /// drift beyond ε).
    #[serde(default)]
    pub total_order: bool,
    /// Whether elections go by the fabric's order right now.
    #[serde(default)]
    pub ordered_elections: bool,
    /// The longest pass of the node since it started, in microseconds: peers count
    /// silence in ticks, so a pass near a tick long puts leadership at risk.
    #[serde(default)]
    pub longest_pass_us: u64,
}

/// How the node answers a request: called exactly once, on whichever thread runs the pass
/// that answers it, or refuses it once the node stopped (possibly inside the call that
/// submitted the request, or another handle's call, or where the stopped node's runtime
/// is dropped), so it must be quick, must not block, and must not take a lock its
/// submitter holds (push into a queue, complete a future, write to a non-blocking socket).
pub type Answer<T> = Box<dyn FnOnce(Result<T, NodeError>) + Send>;

/// An answer delivered into a channel, for callers that wait.
fn channel<T: Send + 'static>() -> (Answer<T>, Receiver<Result<T, NodeError>>) {
    let (tx, rx) = bounded(1);
    (Box::new(move |r| drop(tx.send(r))), rx)
}

enum Request {
    Write(KvRequest, Answer<KvOutcome>),
    Read {
        key: Option<String>,
        linearizable: bool,
        answer: Answer<ReadResult>,
    },
    Membership(Vec<Change>, Answer<Index>),
    Transfer(NodeId, Answer<()>),
}

/// A handle to a running node; cheap to clone and share across threads.
#[derive(Clone)]
pub struct NodeHandle {
    id: NodeId,
    tx: Sender<Request>,
    /// The queue's other end, to refuse what is left in it once the node is gone: a
    /// bounded channel keeps its messages (and the answers they carry) until the last
    /// sender goes, so nobody would answer them otherwise.
    rx: Receiver<Request>,
    /// Runs the pass that takes a request on the submitting thread (see `Core`): the
    /// client service's thread proposes the write itself instead of waking the Raft
    /// thread. Weak, so that handles do not keep a stopped node's runtime alive.
    core: Weak<Core>,
    /// Diagnostic requests, apart from the request queue: every pass answers them, also
    /// while storage is backlogged and client requests wait, so an operator can always
    /// see what a busy node is doing.
    diagnostics: Sender<Sender<Status>>,
    /// Their queue's other end, to drop what is left in it once the node is gone (the
    /// waiting caller then hears at once that there is no answer).
    diagnostics_rx: Receiver<Sender<Status>>,
    /// The shortest election timeout: how long a client had better wait before it asks
    /// again a node that knows no leader.
    election_timeout: Duration,
}

impl NodeHandle {
    /// The node this handle reaches (for the client service's [`crate::service::protocol::Reply::Welcome`]).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The node's shortest election timeout (its tick times its election ticks): the
    /// least time in which a cluster that lost its leader can have a new one, and so the
    /// retry hint given to clients when this node knows no leader.
    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    fn submit(&self, r: Request) {
        match self.tx.try_send(r) {
            Ok(()) => self.pass_here(),
            // The handle holds a receiver itself, so the queue never disconnects:
            // a refused send means full, and full on a gone node means stopped.
            Err(e) if self.stopped() => {
                self.refuse_queued();
                fail(e.into_inner(), NodeError::Stopped);
            }
            Err(e) => fail(e.into_inner(), NodeError::Busy),
        }
    }

    /// Runs a pass for what was just queued, or refuses it if the node is gone.
    fn pass_here(&self) {
        if !Core::pass_here(&self.core) {
            self.refuse_queued();
        }
    }

    /// Whether the node's runtime is gone.
    fn stopped(&self) -> bool {
        self.core.strong_count() == 0
    }

    /// Answers everything still queued for a node that is gone.
    fn refuse_queued(&self) {
        refuse_all(&self.rx);
        drop_all(&self.diagnostics_rx);
    }

    /// Submits a write; `answer` gets its outcome once applied.
    pub fn write_then(&self, req: KvRequest, answer: Answer<KvOutcome>) {
        self.submit(Request::Write(req, answer));
    }

    /// [`NodeHandle::write_then`], answered into a channel.
    pub fn write(&self, req: KvRequest) -> Receiver<Result<KvOutcome, NodeError>> {
        let (answer, rx) = channel();
        self.write_then(req, answer);
        rx
    }

    /// Submits a read of `key` (all keys if `None`); linearizable reads confirm leadership
    /// first (ReadIndex), stale ones answer from this node's state at once.
    pub fn read_then(&self, key: Option<String>, linearizable: bool, answer: Answer<ReadResult>) {
        self.submit(Request::Read {
            key,
            linearizable,
            answer,
        });
    }

    /// [`NodeHandle::read_then`], answered into a channel.
    pub fn read(
        &self,
        key: Option<String>,
        linearizable: bool,
    ) -> Receiver<Result<ReadResult, NodeError>> {
        let (answer, rx) = channel();
        self.read_then(key, linearizable, answer);
        rx
    }

    /// Proposes a membership change (leader only).
    pub fn change_membership_then(&self, changes: Vec<Change>, answer: Answer<Index>) {
        self.submit(Request::Membership(changes, answer));
    }

    /// [`NodeHandle::change_membership_then`], answered into a channel.
    pub fn change_membership(&self, changes: Vec<Change>) -> Receiver<Result<Index, NodeError>> {
        let (answer, rx) = channel();
        self.change_membership_then(changes, answer);
        rx
    }

    /// Asks the leader to hand over to `to`.
    pub fn transfer_leader_then(&self, to: NodeId, answer: Answer<()>) {
        self.submit(Request::Transfer(to, answer));
    }

    /// [`NodeHandle::transfer_leader_then`], answered into a channel.
    pub fn transfer_leader(&self, to: NodeId) -> Receiver<Result<(), NodeError>> {
        let (answer, rx) = channel();
        self.transfer_leader_then(to, answer);
        rx
    }

    /// The node's diagnostic, or `None` if it stopped.
    pub fn status(&self) -> Option<Status> {
        if self.stopped() {
            self.refuse_queued();
            return None;
        }
        let (tx, rx) = bounded(1);
        // Waits for room in a full queue: a busy node is not a stopped one.
        let wait = Duration::from_secs(5);
        self.diagnostics.send_timeout(tx, wait).ok()?;
        self.pass_here();
        rx.recv_timeout(wait).ok()
    }
}

/// Refuses every request still in `queue` as `Stopped`.
fn refuse_all(queue: &Receiver<Request>) {
    while let Ok(r) = queue.try_recv() {
        fail(r, NodeError::Stopped);
    }
}

/// Drops every diagnostic request still in `queue`: its caller hears that no answer comes.
fn drop_all<T>(queue: &Receiver<T>) {
    while queue.try_recv().is_ok() {}
}

/// Answers a request that never reached the node.
fn fail(r: Request, e: NodeError) {
    match r {
        Request::Write(_, answer) => answer(Err(e)),
        Request::Read { answer, .. } => answer(Err(e)),
        Request::Membership(_, answer) => answer(Err(e)),
        Request::Transfer(_, answer) => answer(Err(e)),
    }
}

/// A running node: dropping it stops the thread (a clean shutdown, not a crash).
pub struct Node {
    handle: NodeHandle,
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Mutex<Option<String>>>,
}

impl Node {
    /// Starts node `cfg.raft.id` from what `store` recovered, over `transport`.
    pub fn start(
        cfg: NodeConfig,
        recovered: Persisted,
        store: Box<dyn LogStore>,
        transport: Box<dyn Transport>,
    ) -> Result<Node, NodeError> {
        let mut raft = cfg.raft.clone().for_fabric(transport.capabilities());
        raft.id = transport.local();
        let recovered_snapshot_bytes = recovered
            .snapshot
            .as_ref()
            .map_or(0, |s| s.data.len() as u64);
        let kv = match &recovered.snapshot {
            Some(s) => KvStore::restore(&s.data)
                .map_err(|e| NodeError::Refused(format!("snapshot unreadable: {e}")))?,
            None => KvStore::new(),
        };
        let election_timeout = cfg.tick * raft.election_tick;
        let raw = RawNode::new(raft, cfg.bootstrap.clone(), recovered)
            .map_err(|e| NodeError::Refused(e.to_string()))?;
        let (tx, rx) = bounded(cfg.queue.max(1));
        let queued = rx.clone();
        let (stop, stopped) = bounded(1);
        let shared = Arc::new(Mutex::new(None));
        let transport: Arc<dyn Transport> = Arc::from(transport);
        let (jobs, job_rx) = bounded(STORE_QUEUE);
        let (stored_tx, stored) = unbounded();
        let store = Arc::new(Mutex::new(store));
        let (mail_tx, mail) = unbounded();
        let (doorbell, rung) = bounded(1);
        let (diagnostics, diagnostic_rx) = bounded(DIAGNOSTICS_QUEUE);
        let runtime = Runtime {
            raw,
            kv,
            jobs: Some(jobs),
            backlog: std::collections::VecDeque::new(),
            store: Arc::clone(&store),
            handed: 0,
            done: 0,
            stored,
            storage: None,
            inbox: transport.inbox().clone(),
            mail,
            transport: Some(Arc::clone(&transport)),
            requests: rx,
            diagnostics: diagnostic_rx.clone(),
            doorbell: doorbell.clone(),
            writes: HashMap::new(),
            reads: HashMap::new(),
            waiting_apply: Vec::new(),
            // Random, not 1: a leader may answer a read this node forwarded before it
            // crashed after it restarted, and that answer must match no read of this life.
            next_ctx: crate::random::seed(),
            rates: Rates::default(),
            snapshot_entries: cfg.snapshot_entries,
            last_snapshot_bytes: recovered_snapshot_bytes,
            bytes_since_snapshot: 0,
            snapshot: None,
            tick: cfg.tick,
            next_tick: Instant::now() + cfg.tick,
            request_timeout: cfg.request_timeout,
            failure: Arc::clone(&shared),
            halted: false,
            longest_pass: Duration::ZERO,
            sync_time: Arc::new(SyncTime::default()),
        };
        let id = runtime.raw.id();
        let core = Arc::new(Core {
            runtime: Mutex::new(runtime),
            pending: AtomicBool::new(false),
            doorbell,
        });
        let storage = {
            let sync_time = Arc::clone(&core.lock().sync_time);
            let (transport, core) = (Arc::clone(&transport), Arc::downgrade(&core));
            std::thread::Builder::new()
                .name(format!("weft-store-{id}"))
                .spawn(move || {
                    let ends = StorageEnds {
                        jobs: &job_rx,
                        stored: &stored_tx,
                        core: &core,
                        sync_time: &sync_time,
                    };
                    storage_loop(&store, &*transport, ends)
                })
                .map_err(|e| NodeError::Refused(format!("cannot start the storage thread: {e}")))?
        };
        core.lock().storage = Some(storage);
        // Deliveries run a pass on the thread they arrive on. The sink holds the core
        // weakly: the transport it is given to belongs to the core.
        let weak = Arc::downgrade(&core);
        let sink_core = weak.clone();
        transport.divert(Some(Box::new(move |batch| {
            for d in batch.drain(..) {
                let _ = mail_tx.send(d);
            }
            Core::pass_here(&sink_core);
        })));
        let thread = std::thread::Builder::new()
            .name(format!("weft-node-{id}"))
            .spawn(move || raft_thread(core, &transport, &rung, &stopped))
            .map_err(|e| NodeError::Refused(format!("cannot start the node thread: {e}")))?;
        Ok(Node {
            handle: NodeHandle {
                id,
                tx,
                rx: queued,
                core: weak,
                diagnostics,
                diagnostics_rx: diagnostic_rx,
                election_timeout,
            },
            stop,
            thread: Some(thread),
            shared,
        })
    }

    /// A handle for clients.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Why the node stopped on its own (storage failure), if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Per-second counters over the last 10 seconds.
#[derive(Default)]
struct Rates {
    second: u64,
    slots: [[u64; 3]; 10],
}

impl Rates {
    fn add(&mut self, kind: usize, n: u64) {
        let now = epoch_seconds();
        if now != self.second {
            let gap = (now.saturating_sub(self.second)).min(10);
            for k in 1..=gap {
                self.slots[((self.second + k) % 10) as usize] = [0; 3];
            }
            self.second = now;
        }
        self.slots[(now % 10) as usize][kind] += n;
    }

    fn series(&self, kind: usize) -> Vec<u64> {
        (1..=10)
            .map(|k| self.slots[((self.second + k) % 10) as usize][kind])
            .collect()
    }
}

fn epoch_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const READS: usize = 0;
const WRITES: usize = 1;
const APPENDS: usize = 2;

struct PendingRead {
    key: Option<String>,
    answer: Answer<ReadResult>,
    since: Instant,
}

/// A snapshot serialized off the Raft thread: the index it covers and its bytes.
type Serialized = (Index, Bytes);

struct Runtime {
    raw: RawNode,
    kv: KvStore,
    /// Work for the storage thread, which owns the [`LogStore`]; `None` once stopping.
    jobs: Option<Sender<StoreJob>>,
    /// Jobs its full queue could not take yet, in order (see `hand_to_storage`).
    backlog: std::collections::VecDeque<StoreJob>,
    /// The log store, shared with the storage thread: a follower writes on this thread
    /// while the storage thread is idle (see `Runtime::persist`).
    store: Arc<Mutex<Box<dyn LogStore>>>,
    /// Jobs given to the storage thread (backlog included), and how many it reported done.
    handed: u64,
    done: u64,
    /// What the storage thread made durable (or why it failed), in order.
    stored: Receiver<Stored>,
    storage: Option<JoinHandle<()>>,
    /// The transport's inbox: everything, where it does not divert; what came before the
    /// divert, where it does.
    inbox: Receiver<Delivery>,
    /// What the transport's receive thread handed over (see [`Core::pass_here`]).
    mail: Receiver<Delivery>,
    /// `None` once the node stopped: the Raft thread lets go of it then, so that the
    /// transport (a bound socket) is gone when the node's drop returns, even if a
    /// handle's pass still holds the rest of the runtime for a moment.
    transport: Option<Arc<dyn Transport>>,
    requests: Receiver<Request>,
    /// Diagnostic requests (see [`NodeHandle::status`]).
    diagnostics: Receiver<Sender<Status>>,
    /// Rung when a pass left work for the next one (see [`Runtime::pass`]).
    doorbell: Sender<()>,
    /// Writes proposed here, by log index: the term they were proposed in, when, and the
    /// answer.
    writes: HashMap<Index, (Term, Instant, Answer<KvOutcome>)>,
    /// Linearizable reads waiting for their read index, by context.
    reads: HashMap<u64, PendingRead>,
    /// Reads whose index is known, waiting for it to be applied.
    waiting_apply: Vec<(Index, PendingRead)>,
    /// The context of the next forwarded read: unique across this node's lives.
    next_ctx: u64,
    rates: Rates,
    snapshot_entries: u64,
    /// Size of the last snapshot taken or installed, and the command bytes applied since.
    last_snapshot_bytes: u64,
    bytes_since_snapshot: u64,
    /// The snapshot being serialized off this thread, if one is: it comes back here with
    /// the index it covers.
    snapshot: Option<Receiver<Serialized>>,
    tick: Duration,
    next_tick: Instant,
    request_timeout: Duration,
    failure: Arc<Mutex<Option<String>>>,
    /// Set once storage failed or the node stops: no pass runs any more.
    halted: bool,
    /// The longest pass so far (see [`Status::longest_pass_us`]).
    longest_pass: Duration,
    /// How long syncs of the log take lately, here and on the storage thread.
    sync_time: Arc<SyncTime>,
}

/// How long a sync of the log has taken lately, tail included: the longest recent sync,
/// decaying by an eighth at each later one, over the syncs of every thread that syncs.
/// Why: a follower writes and syncs small batches on its own thread to save a thread
/// hand-off, which pays only while syncs are short; on a slow or busy disk (whose syncs
/// spike to tens of milliseconds) that sync would hold the node's pass, no ticks and no
/// answers, for its length.
#[derive(Default)]
struct SyncTime(AtomicU64);

impl SyncTime {
    /// Folds one sync's duration in.
    fn record(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.0.load(Ordering::Relaxed);
        self.0.store(us.max(old - old / 8), Ordering::Relaxed);
    }

    /// The decayed longest sync so far (zero before the first sync).
    fn recent(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }
}

/// Work left for the end of a pass (see [`at_pass_end`]).
type LeftWork = Vec<Box<dyn FnOnce()>>;

thread_local! {
    /// Work left for the end of the pass running on this thread; `None` outside a pass.
    static PASS_END: RefCell<Option<LeftWork>> = const { RefCell::new(None) };
}

/// Runs `work` once the node's pass running on this thread is over, or at once if no pass
/// is running here. For an answer whose work is cheaper done once for all the answers of
/// a pass: the client service writes all of a connection's replies from one pass in one
/// system call instead of one each.
pub fn at_pass_end(work: impl FnOnce() + 'static) {
    let mut work = Some(Box::new(work) as Box<dyn FnOnce()>);
    PASS_END.with(|d| {
        if let Some(left) = d.borrow_mut().as_mut() {
            left.extend(work.take());
        }
    });
    if let Some(now) = work {
        now();
    }
}

/// Runs `pass` as a pass of a node: work given to [`at_pass_end`] meanwhile runs once it
/// returns (a panic in such work is logged, not spread: the pass itself is over).
pub(crate) fn as_pass<R>(pass: impl FnOnce() -> R) -> R {
    let _end = PassEnd(PASS_END.with(|d| d.borrow_mut().replace(Vec::new())));
    pass()
}

/// Ends a pass (see [`as_pass`]), also when it unwinds: runs the work left for its end,
/// and restores what an enclosing pass had left.
struct PassEnd(Option<LeftWork>);

impl Drop for PassEnd {
    fn drop(&mut self) {
        let left = PASS_END.with(|d| std::mem::replace(&mut *d.borrow_mut(), self.0.take()));
        for work in left.into_iter().flatten() {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
                tracing::error!("work left for the end of a pass panicked");
            }
        }
    }
}

/// Passes a thread runs in a row for work others queued meanwhile, before it leaves the
/// rest to the Raft thread: a receive or storage thread has its own work to get back to.
const PASSES_HERE: usize = 2;

/// Deliveries one pass takes at most; the rest wait for the next pass.
const PASS_DELIVERIES: usize = 256;

/// A pass stops taking new work once it has run for a tick divided by this: whatever
/// the machine's speed, ticks and diagnostics then come between the passes of a backlog
/// (peers count silence in ticks).
const PASS_SHARE_OF_TICK: u32 = 3;

/// Bytes of deliveries one pass takes at most: a follower catching up is sent full
/// appends, and what a pass takes in it also writes and applies.
const PASS_DELIVERED_BYTES: usize = 1 << 20;

/// Entry bytes a follower writes on its own thread at most (see `Runtime::persist`);
/// a larger write goes to the storage thread, so that one write of a backlog does not
/// hold a pass.
const INLINE_PERSIST_BYTES: usize = 256 << 10;

/// Entry bytes of appends the deliveries of one pass may leave queued to send: an
/// acknowledgement from a follower catching up opens its window for many appends, and
/// sending them (encoding, authenticating, datagrams) is a pass's largest cost.
const PASS_SEND_BYTES: usize = 128 << 10;

/// A follower syncs on its own thread only while recent syncs took less than this: the
/// hand-off it saves costs tens of microseconds, and a disk with slower syncs has a tail
/// (tens of milliseconds on a shared virtual disk) that would hold the pass.
const INLINE_SYNC_MAX: Duration = Duration::from_millis(1);

/// Client requests one pass takes at most.
const PASS_REQUESTS: usize = 4096;

/// Readies one pass handles at most (each applies at most
/// [`crate::Config::max_committed_per_ready`] entries).
const PASS_READIES: usize = 8;

/// Diagnostic requests that may wait for a pass.
const DIAGNOSTICS_QUEUE: usize = 64;

/// A pass longer than this many ticks is logged as slow.
const SLOW_PASS_TICKS: u32 = 3;

/// The runtime, which any thread may drive: the Raft thread, the transport's receive
/// thread that has just received a message, a client's thread that has just submitted a
/// request, or the storage thread that has just made something durable. Why: each
/// hand-off to the Raft thread was a thread wake-up (tens of microseconds on a busy
/// machine) on a write's path: at the leader for the request, for the acknowledgement and
/// for its own fsync, and at a follower for the append. Whoever
/// holds the lock runs a whole pass (everything queued, a tick if due, the Ready); a
/// thread that finds it held leaves its work to the holder.
struct Core {
    runtime: Mutex<Runtime>,
    /// Work was queued that no pass has started on yet (see `Core::take_pending`).
    pending: AtomicBool,
    /// Rung when pending work is left to the Raft thread.
    doorbell: Sender<()>,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Runtime> {
        // Passes run `guarded`: one that panics halts the runtime, which is what stops it
        // being used (a lock poisoned elsewhere guards nothing more).
        self.runtime.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a pass on this thread for work just queued, unless another thread holds the
    /// runtime: that one then runs it after its own pass (see `take_pending`). Never waits
    /// for the lock, so no receive or storage thread waits behind a pass. Nothing to do
    /// once the node is gone (`core` is held weakly by everything outside the node):
    /// returns whether it was still there.
    fn pass_here(core: &Weak<Core>) -> bool {
        let Some(core) = core.upgrade() else {
            return false;
        };
        core.pending.store(true, Ordering::SeqCst);
        core.take_pending();
        true
    }

    /// Runs passes here while work is pending and nobody else holds the runtime, at most
    /// [`PASSES_HERE`]; work still pending then goes to the Raft thread. Why the flag: a
    /// thread that finds the runtime busy leaves its work to the holder instead of waking
    /// the Raft thread, so under load passes take larger batches for fewer wake-ups.
    /// Each holder clears the flag before it drains the queues and checks it after it lets
    /// go, so no work set pending is left without a pass to take it.
    fn take_pending(&self) {
        for _ in 0..PASSES_HERE {
            if !self.pending.load(Ordering::SeqCst) {
                return;
            }
            let mut runtime = match self.runtime.try_lock() {
                Ok(r) => r,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            self.pending.store(false, Ordering::SeqCst);
            if runtime.guarded(Runtime::pass_or_halt) {
                // The Raft thread stops the node.
                drop(runtime);
                return self.ring();
            }
        }
        if self.pending.load(Ordering::SeqCst) {
            self.ring();
        }
    }

    /// Has the Raft thread run a pass soon (now, or after the one it is running).
    fn ring(&self) {
        let _ = self.doorbell.try_send(());
    }
}

/// What woke the Raft thread.
enum Event {
    Delivery(Delivery),
    Snapshot(Option<Serialized>),
    /// A tick is due, or the doorbell rang: just a pass.
    Pass,
}

/// The Raft thread: waits for work, then runs a pass. It alone ticks on time, takes
/// finished snapshots, runs the passes left to it (the doorbell: pending work), and
/// stops the node.
fn raft_thread(
    core: Arc<Core>,
    transport: &Arc<dyn Transport>,
    rung: &Receiver<()>,
    stopped: &Receiver<()>,
) {
    let no_snapshot = crossbeam_channel::never();
    // Every exit leaves the loop's scope, which lets go of the lock if it is held.
    {
        let mut runtime = core.lock();
        let inbox = runtime.inbox.clone();
        while !runtime.halted {
            let wait = runtime.next_tick.saturating_duration_since(Instant::now());
            let snapshot = runtime.snapshot.clone();
            drop(runtime);
            // Work left pending by a thread that met the lock while this one held it.
            core.take_pending();
            let snapshot = snapshot.as_ref().unwrap_or(&no_snapshot);
            // Waits for readiness only: what is ready is taken under the lock, so that no
            // other pass takes a later delivery first (a fabric's order is kept).
            let mut select = Select::new();
            let (on_inbox, on_rung) = (select.recv(&inbox), select.recv(rung));
            let (on_snapshot, on_stop) = (select.recv(snapshot), select.recv(stopped));
            let ready = select.ready_timeout(wait).ok();
            if ready == Some(on_stop) {
                break;
            }
            if ready == Some(on_rung) {
                let _ = rung.try_recv();
            }
            runtime = core.lock();
            core.pending.store(false, Ordering::SeqCst);
            let event = match ready {
                Some(i) if i == on_inbox => match inbox.try_recv() {
                    Ok(d) => Event::Delivery(d),
                    Err(TryRecvError::Empty) => Event::Pass,
                    Err(TryRecvError::Disconnected) => break,
                },
                Some(i) if i == on_snapshot => match snapshot.try_recv() {
                    Ok(s) => Event::Snapshot(Some(s)),
                    Err(TryRecvError::Empty) => Event::Pass,
                    Err(TryRecvError::Disconnected) => Event::Snapshot(None),
                },
                _ => Event::Pass,
            };
            runtime.guarded(|r| r.take(event).is_err_and(|e| r.halt(e)) || r.pass_or_halt());
        }
    }
    // No sink runs after this returns. The transport goes with this thread (the
    // runtime lets go of it below), never on its own receive thread; a handle's pass
    // that still holds the core finds the node halted and no transport.
    transport.divert(None);
    let mut runtime = core.lock();
    runtime.halted = true;
    runtime.transport = None;
    runtime.fail_all();
    // The storage thread finishes what it was given and the backlog (nothing
    // acknowledged depends on them: an answered write is durable on a majority), then
    // stops.
    if let Some(jobs) = runtime.jobs.take() {
        for job in runtime.backlog.drain(..) {
            if jobs.send(job).is_err() {
                break; // it failed and stopped already
            }
        }
    }
    let storage = runtime.storage.take();
    drop(runtime);
    if let Some(t) = storage {
        let _ = t.join();
    }
}

/// A runtime dropped with requests still queued (sent while the node stopped) answers
/// them: nothing else would.
impl Drop for Runtime {
    fn drop(&mut self) {
        self.fail_all();
    }
}

impl Runtime {
    /// Handles what woke the Raft thread.
    fn take(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Delivery(d) => self.on_delivery(d),
            Event::Snapshot(s) => {
                self.snapshot = None;
                if let Some((index, data)) = s {
                    let began = Instant::now();
                    self.on_snapshot_taken(index, data)?;
                    let took = began.elapsed();
                    if took > self.tick * SLOW_PASS_TICKS {
                        tracing::warn!(
                            node = %self.raw.id(),
                            index,
                            took_ms = took.as_millis() as u64,
                            "slow compaction into a snapshot"
                        );
                    }
                }
            }
            Event::Pass => {}
        }
        Ok(())
    }

    /// Runs a pass unless halted; returns whether the node is halted (now or before).
    /// Halted, it refuses what was submitted meanwhile: nothing is left unanswered.
    fn pass_or_halt(&mut self) -> bool {
        if self.halted {
            refuse_all(&self.requests);
            drop_all(&self.diagnostics);
            return true;
        }
        self.pass().is_err_and(|e| self.halt(e))
    }

    /// Runs `f` (a pass), halting the node if it panics. Why: a pass that panicked may
    /// have handed a Ready it never persisted, so no later pass may acknowledge anything;
    /// the node stops as it did when its one thread died, whichever thread ran the pass.
    /// Work the pass's answers left for its end (see [`at_pass_end`]) runs once it is over,
    /// whether it ended or panicked.
    fn guarded(&mut self, f: impl FnOnce(&mut Runtime) -> bool) -> bool {
        as_pass(
            || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) {
                Ok(halted) => halted,
                Err(_) => self.halt("a pass of the node panicked".into()),
            },
        )
    }

    /// Halts the node on a failure `e` (of storage, or a panic); returns `true`.
    fn halt(&mut self, e: String) -> bool {
        tracing::error!(node = %self.raw.id(), error = %e, "node stops");
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        self.halted = true;
        true
    }

    /// One pass: takes what is already here (deliveries, storage reports, requests while
    /// storage keeps up), ticks if a tick is due, and handles the Ready. Its work is
    /// bounded ([`PASS_DELIVERIES`], [`PASS_DELIVERED_BYTES`], [`PASS_SEND_BYTES`], [`PASS_REQUESTS`],
    /// [`PASS_READIES`], and in time by [`PASS_SHARE_OF_TICK`]) so that a
    /// backlog (a follower catching up, a burst of clients) cannot hold the node for
    /// longer than a tick: what is left rings the doorbell for the next pass, and ticks
    /// and diagnostics come between them.
    fn pass(&mut self) -> Result<(), String> {
        let woke = Instant::now();
        let mut batch = [0usize; 3];
        let mut left = false;
        while let Ok(reply) = self.diagnostics.try_recv() {
            let _ = reply.send(self.status());
        }
        let mut delivered = 0;
        while let Ok(d) = self.inbox.try_recv().or_else(|_| self.mail.try_recv()) {
            delivered += d.bytes.len();
            self.on_delivery(d);
            batch[0] += 1;
            if batch[0] == PASS_DELIVERIES
                || delivered >= PASS_DELIVERED_BYTES
                || self.raw.queued_append_bytes() >= PASS_SEND_BYTES
                || self.spent(woke)
            {
                left = true;
                break;
            }
        }
        while let Ok(s) = self.stored.try_recv() {
            self.on_stored(s)?;
            batch[1] += 1;
        }
        self.drain_backlog()?;
        while self.backlog.is_empty() {
            if batch[2] == PASS_REQUESTS || self.spent(woke) {
                left = !self.requests.is_empty();
                break;
            }
            let Ok(r) = self.requests.try_recv() else {
                break;
            };
            self.on_request(r);
            batch[2] += 1;
        }
        if Instant::now() >= self.next_tick {
            self.follow_fabric();
            self.raw.tick();
            self.expire();
            self.next_tick += self.tick;
            if self.next_tick < Instant::now() {
                self.next_tick = Instant::now() + self.tick;
            }
        }
        let readied = Instant::now();
        left |= self.handle_ready(woke)?;
        if left {
            let _ = self.doorbell.try_send(());
        }
        // Peers count silence in ticks of this node: a pass that takes several ticks
        // risks an election, so say what it was doing.
        let took = woke.elapsed();
        self.longest_pass = self.longest_pass.max(took);
        if took > self.tick * SLOW_PASS_TICKS {
            tracing::warn!(
                node = %self.raw.id(),
                took_ms = took.as_millis() as u64,
                ready_ms = readied.elapsed().as_millis() as u64,
                deliveries = batch[0],
                stored = batch[1],
                requests = batch[2],
                "slow pass of the node"
            );
        }
        Ok(())
    }

    /// Whether the pass that began at `woke` has had its share of a tick.
    fn spent(&self, woke: Instant) -> bool {
        woke.elapsed() >= self.tick / PASS_SHARE_OF_TICK
    }

    /// The storage thread's report: entries and hard state now durable.
    fn on_stored(&mut self, s: Stored) -> Result<(), String> {
        match s {
            Stored::Durable(d, done) => {
                self.raw.on_persisted(&d);
                self.done = done;
                Ok(())
            }
            Stored::Failed(e) => Err(e),
        }
    }

    /// Persists `job` on this thread and sends its messages, if this node follows and the
    /// storage thread has nothing queued (so the order of writes stays the order of
    /// Readies); otherwise hands it over. Why: a follower has nothing to do meanwhile that
    /// cannot wait one fsync (its heartbeat answers went out already), and an
    /// acknowledgement sent from here saves the hand-off to the storage thread and back,
    /// a thread wake-up on every write's path. A leader keeps the storage thread, so that
    /// it goes on sending appends and counting acknowledgements during its own fsync.
    fn persist(&mut self, job: StoreJob) -> Result<(), String> {
        let idle = self.handed == self.done && self.backlog.is_empty();
        match job {
            StoreJob::Persist(p)
                if idle
                    && self.raw.role() == Role::Follower
                    && self.sync_time.recent() < INLINE_SYNC_MAX
                    && p.bytes() <= INLINE_PERSIST_BYTES =>
            {
                let log = Arc::clone(&self.store);
                {
                    let mut store = match log.try_lock() {
                        Ok(store) => store,
                        Err(TryLockError::Poisoned(p)) => p.into_inner(),
                        // The storage thread holds the log (recording a snapshot, say):
                        // a pass never waits for it.
                        Err(TryLockError::WouldBlock) => {
                            return self.hand_to_storage(StoreJob::Persist(p))
                        }
                    };
                    p.write_to(&mut **store)?;
                    if p.sync {
                        let began = Instant::now();
                        store.sync()?;
                        self.sync_time.record(began.elapsed());
                    }
                }
                self.send_all(&p.messages);
                self.raw.on_persisted(&p.durable);
                Ok(())
            }
            job => self.hand_to_storage(job),
        }
    }

    /// Queues `job` for the storage thread without ever waiting: a full queue leaves it
    /// (and every later job, in order) in the backlog, and new client requests wait until
    /// the backlog drains. Blocking here would stop heartbeats and ticks too, and an
    /// overloaded leader would lose its followers instead of slowing its clients.
    fn hand_to_storage(&mut self, job: StoreJob) -> Result<(), String> {
        self.backlog.push_back(job);
        self.handed += 1;
        self.drain_backlog()
    }

    /// Moves backlogged jobs to the storage thread while its queue has room.
    fn drain_backlog(&mut self) -> Result<(), String> {
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| "the storage thread stopped".to_string())?;
        while let Some(job) = self.backlog.pop_front() {
            match jobs.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.backlog.push_front(job);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err("the storage thread stopped".to_string())
                }
            }
        }
        Ok(())
    }

    fn on_delivery(&mut self, d: Delivery) {
        match Message::from_delivery(&d, self.raw.id()) {
            Ok(m) => {
                // Capabilities only where the claim differs: this runs for every message.
                if m.from != d.from
                    && self
                        .transport
                        .as_ref()
                        .is_some_and(|t| t.capabilities().authenticated_source)
                {
                    tracing::warn!(claimed = %m.from, actual = %d.from, "message claims another sender; dropped");
                    return;
                }
                self.raw.step(m);
            }
            Err(e) => {
                tracing::debug!(from = %d.from, error = %e, "undecodable raft message dropped")
            }
        }
    }

    fn on_request(&mut self, r: Request) {
        match r {
            Request::Write(req, answer) => {
                self.rates.add(WRITES, 1);
                match self.raw.propose(req.encode()) {
                    Ok(index) => {
                        self.writes
                            .insert(index, (self.raw.term(), Instant::now(), answer));
                    }
                    Err(e) => answer(Err(refused(e))),
                }
            }
            Request::Read {
                key,
                linearizable,
                answer,
            } => {
                self.rates.add(READS, 1);
                let read = PendingRead {
                    key,
                    answer,
                    since: Instant::now(),
                };
                if !linearizable {
                    self.answer(read);
                    return;
                }
                let ctx = self.next_ctx;
                self.next_ctx = self.next_ctx.wrapping_add(1);
                match self.raw.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, read);
                    }
                    Err(e) => (read.answer)(Err(refused(e))),
                }
            }
            Request::Membership(changes, answer) => {
                answer(self.raw.propose_membership(changes).map_err(refused));
            }
            Request::Transfer(to, answer) => {
                answer(self.raw.transfer_leader(to).map_err(refused));
            }
        }
    }

    fn answer(&self, read: PendingRead) {
        let result = match read.key {
            Some(k) => ReadResult::Value(self.kv.get(&k).cloned()),
            None => ReadResult::All(self.kv.all()),
        };
        (read.answer)(Ok(result));
    }

    /// Answers every request older than the request timeout with `Timeout`.
    fn expire(&mut self) {
        let Some(cutoff) = Instant::now().checked_sub(self.request_timeout) else {
            return;
        };
        let old: Vec<Index> = self
            .writes
            .iter()
            .filter(|(_, w)| w.1 < cutoff)
            .map(|(i, _)| *i)
            .collect();
        for i in old {
            if let Some((_, _, answer)) = self.writes.remove(&i) {
                answer(Err(NodeError::Timeout));
            }
        }
        let old: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.since < cutoff)
            .map(|(c, _)| *c)
            .collect();
        for c in old {
            if let Some(r) = self.reads.remove(&c) {
                (r.answer)(Err(NodeError::Timeout));
            }
        }
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting_apply)
            .into_iter()
            .partition(|(_, r)| r.since < cutoff);
        self.waiting_apply = kept;
        for (_, r) in expired {
            (r.answer)(Err(NodeError::Timeout));
        }
    }

    /// Follows the fabric's guarantees as they change (before each tick, so before any
    /// election the tick may start).
    fn follow_fabric(&mut self) {
        let Some(transport) = &self.transport else {
            return;
        };
        if !self.raw.adapt_to_fabric(transport.capabilities()) {
            return;
        }
        let ordered = self.raw.ordered_election();
        tracing::info!(
            node = %self.raw.id(),
            ordered,
            "the fabric's total order changed: elections are now {}",
            if ordered { "ordered" } else { "ordinary Raft elections" }
        );
    }

    fn status(&self) -> Status {
        Status {
            id: self.raw.id(),
            role: format!("{:?}", self.raw.role()),
            term: self.raw.term(),
            voted_for: self.raw.vote(),
            leader: self.raw.leader(),
            membership: self.raw.membership().clone(),
            commit: self.raw.commit_index(),
            applied: self.raw.applied_index(),
            last_index: self.raw.last_index(),
            reads_per_s: self.rates.series(READS),
            writes_per_s: self.rates.series(WRITES),
            appends_per_s: self.rates.series(APPENDS),
            clock_offsets: self
                .transport
                .as_ref()
                .map(|t| t.clock_offsets())
                .unwrap_or_default(),
            total_order: self
                .transport
                .as_ref()
                .is_some_and(|t| t.capabilities().total_order),
            ordered_elections: self.raw.ordered_election(),
            longest_pass_us: self.longest_pass.as_micros() as u64,
        }
    }

    /// Hands each Ready out. The leader's appends go out at once; what must be durable
    /// goes to the storage thread, which persists it (one fsync for every Ready queued
    /// meanwhile) and only then sends the Ready's other messages (votes, acknowledgements)
    /// and reports back. Committed entries are applied here at once: they are durable on
    /// a majority already, whatever this node's own disk is doing.
    /// Handles up to [`PASS_READIES`] Readies (at least one, more while the pass that
    /// began at `woke` is within its share of a tick); returns whether more are ready.
    fn handle_ready(&mut self, woke: Instant) -> Result<bool, String> {
        for i in 0..PASS_READIES {
            if !self.raw.has_ready() {
                return Ok(false);
            }
            if i > 0 && self.spent(woke) {
                return Ok(true);
            }
            let rd = self.raw.ready();
            self.send_all(&rd.early_messages);
            self.rates.add(APPENDS, rd.entries.len() as u64);
            if let Some(s) = &rd.snapshot {
                let restored = KvStore::restore(&s.data)
                    .map_err(|e| format!("snapshot from the leader is unreadable: {e}"))?;
                let released = self.raw.take_released();
                drop_off_the_pass((std::mem::replace(&mut self.kv, restored), released));
                self.last_snapshot_bytes = s.data.len() as u64;
                self.bytes_since_snapshot = 0;
            }
            for e in &rd.committed {
                self.apply(e);
            }
            for rs in &rd.read_states {
                if let Some(read) = self.reads.remove(&rs.ctx) {
                    self.waiting_apply.push((rs.index, read));
                }
            }
            let applied = self.kv.applied();
            let (ready_now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting_apply)
                .into_iter()
                .partition(|(i, _)| *i <= applied);
            self.waiting_apply = later;
            for (_, read) in ready_now {
                self.answer(read);
            }
            if let Some(soft) = rd.soft_state {
                if soft.role != Role::Leader {
                    // Writes proposed here may still commit under the next leader; the
                    // client retries with the same sequence number and gets one effect.
                    for (_, (_, _, answer)) in self.writes.drain() {
                        answer(Err(NodeError::NotLeader {
                            leader: soft.leader,
                        }));
                    }
                    for (_, read) in self.reads.drain() {
                        (read.answer)(Err(NodeError::NotLeader {
                            leader: soft.leader,
                        }));
                    }
                }
            }
            self.raw.advance_handed(&rd);
            if let Some(job) = StoreJob::of(rd) {
                self.persist(job)?;
            }
            self.maybe_snapshot();
        }
        Ok(self.raw.has_ready())
    }

    fn send_all(&self, messages: &[Message]) {
        if let Some(transport) = &self.transport {
            send_messages(&**transport, messages);
        }
    }

    fn apply(&mut self, e: &Entry) {
        let outcome = match &e.payload {
            Payload::Command(data) => {
                self.bytes_since_snapshot += data.len() as u64;
                self.kv.apply(e.index, data).map(|(_, _, o)| o)
            }
            Payload::Empty | Payload::Membership(_) => {
                self.kv.skip(e.index);
                None
            }
        };
        if let Some((term, _, answer)) = self.writes.remove(&e.index) {
            let result = match outcome {
                Some(o) if term == e.term => Ok(o),
                // Another leader's entry took this index: ours was lost.
                _ => Err(NodeError::NotLeader {
                    leader: self.raw.leader(),
                }),
            };
            answer(result);
        }
    }

    /// Starts a snapshot once enough has been applied: the store is cloned here (cheaply:
    /// its map's shards are shared) and serialized on a thread of its own, since serializing a
    /// large state here would silence this node for longer than an election timeout.
    fn maybe_snapshot(&mut self) {
        let applied = self.kv.applied();
        if self.snapshot.is_some()
            || self.snapshot_entries == 0
            || applied < self.raw.first_index() + self.snapshot_entries
            || self.bytes_since_snapshot < self.last_snapshot_bytes
        {
            return;
        }
        let state = self.kv.clone();
        let (done, serialized) = bounded(1);
        let spawned = std::thread::Builder::new()
            .name(format!("weft-snap-{}", self.raw.id()))
            .spawn(move || {
                in_the_background();
                // The node may have stopped meanwhile; then nobody needs the bytes.
                let _ = done.send((applied, state.snapshot()));
            });
        match spawned {
            Ok(_) => {
                self.snapshot = Some(serialized);
                // What is applied from now on counts towards the next snapshot.
                self.bytes_since_snapshot = 0;
            }
            Err(e) => {
                tracing::warn!(node = %self.raw.id(), error = %e, "cannot start a snapshot thread; will retry")
            }
        }
    }

    /// Compacts the log into the snapshot serialized at `index` and has it stored, unless a
    /// snapshot from the leader has superseded it meanwhile.
    fn on_snapshot_taken(&mut self, index: Index, data: Bytes) -> Result<(), String> {
        if index < self.raw.first_index() {
            tracing::debug!(node = %self.raw.id(), index, "snapshot superseded before it was ready");
            return Ok(());
        }
        // The snapshot this one replaces may hold the last reference to the previous
        // state's bytes: freeing hundreds of megabytes takes tens of milliseconds.
        let replaced = self.raw.snapshot().map(|s| s.data.clone());
        let snap = self.raw.compact(index, data).map_err(|e| e.to_string())?;
        drop_off_the_pass((replaced, self.raw.take_released()));
        self.last_snapshot_bytes = snap.data.len() as u64;
        self.hand_to_storage(StoreJob::Compact(snap))
    }

    /// Answers every pending and queued request as `Stopped`: the node stopped.
    fn fail_all(&mut self) {
        let e = NodeError::Stopped;
        for (_, (_, _, answer)) in self.writes.drain() {
            answer(Err(e.clone()));
        }
        for (_, read) in self.reads.drain() {
            (read.answer)(Err(e.clone()));
        }
        for (_, read) in self.waiting_apply.drain(..) {
            (read.answer)(Err(e.clone()));
        }
        refuse_all(&self.requests);
        drop_all(&self.diagnostics);
    }
}

fn refused(e: ProposeError) -> NodeError {
    match e {
        ProposeError::NotLeader { leader } => NodeError::NotLeader { leader },
        ProposeError::TooLarge { size, max } => NodeError::TooLarge { size, max },
        other => NodeError::Refused(other.to_string()),
    }
}

/// The `[raft]` section of a cluster config file: what a deployment tunes about its nodes.
/// Every field is optional; absent ones keep [`NodeConfig::new`]'s defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// Length of a tick in milliseconds (default 15).
    pub tick_ms: Option<u64>,
    /// Election timeout in ticks (randomized up to twice this; default 10).
    pub election_tick: Option<u32>,
    /// Heartbeat interval in ticks (default 1).
    pub heartbeat_tick: Option<u32>,
    /// Applied entries between snapshots (default 10,000).
    pub snapshot_entries: Option<u64>,
    /// Pre-vote (default on).
    pub pre_vote: Option<bool>,
    /// Check-quorum and leader lease (default on).
    pub check_quorum: Option<bool>,
    /// Lease-based reads (default off).
    pub lease_reads: Option<bool>,
    /// The largest log entry a write may make, in bytes (default: the largest the
    /// transport's `max_message` leaves room for). A larger write is refused.
    pub max_entry_bytes: Option<usize>,
    /// The voters of a new cluster (default: every node in `cluster.nodes`); the others
    /// start outside the configuration and join through `weft cluster add`.
    pub voters: Option<Vec<u32>>,
}

/// A `[raft]` setting out of range; names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("raft.{key}: {why}")]
pub struct SettingError {
    /// The key, without the `raft.` prefix.
    pub key: &'static str,
    /// What is wrong with its value.
    pub why: String,
}

/// The longest tick accepted: ticks count election timeouts, and a tick of a minute is
/// certainly a typo for milliseconds.
pub const MAX_TICK_MS: u64 = 60_000;

/// The most ticks an election timeout may take.
pub const MAX_ELECTION_TICK: u32 = 10_000;

impl RaftSettings {
    /// The runtime settings for node `id` of a cluster whose nodes are `members`, over a
    /// transport whose largest message is `max_message` bytes; refuses values that
    /// cannot work, naming the key.
    pub fn node_config(
        &self,
        id: NodeId,
        members: &[NodeId],
        max_message: usize,
    ) -> Result<NodeConfig, SettingError> {
        self.check(max_message)?;
        let voters: Vec<NodeId> = match &self.voters {
            Some(v) => v.iter().map(|n| NodeId(*n)).collect(),
            None => members.to_vec(),
        };
        let mut cfg = NodeConfig::new(id, voters);
        if let Some(ms) = self.tick_ms {
            cfg.tick = Duration::from_millis(ms);
        }
        if let Some(n) = self.max_entry_bytes {
            cfg.raft.max_entry_bytes = n;
        }
        if let Some(t) = self.election_tick {
            cfg.raft.election_tick = t;
        }
        if let Some(t) = self.heartbeat_tick {
            cfg.raft.heartbeat_tick = t;
        }
        if let Some(n) = self.snapshot_entries {
            cfg.snapshot_entries = n;
        }
        if let Some(b) = self.pre_vote {
            cfg.raft.pre_vote = b;
        }
        if let Some(b) = self.check_quorum {
            cfg.raft.check_quorum = b;
        }
        if let Some(b) = self.lease_reads {
            cfg.raft.lease_reads = b;
        }
        cfg.raft.validate().map_err(|e| SettingError {
            key: "election_tick",
            why: e.0,
        })?;
        Ok(cfg)
    }

    /// Checks each value on its own and against the transport's largest message.
    fn check(&self, max_message: usize) -> Result<(), SettingError> {
        let bad = |key, why: String| Err(SettingError { key, why });
        if let Some(ms) = self.tick_ms {
            if ms == 0 || ms > MAX_TICK_MS {
                return bad(
                    "tick_ms",
                    format!("must be 1 to {MAX_TICK_MS} ms, not {ms}"),
                );
            }
        }
        let heartbeat = self.heartbeat_tick.unwrap_or(1);
        if heartbeat == 0 {
            return bad("heartbeat_tick", "must be at least 1 tick, not 0".into());
        }
        let election = self.election_tick.unwrap_or(10);
        if election <= heartbeat || election > MAX_ELECTION_TICK {
            return bad(
                "election_tick",
                format!(
                    "must exceed heartbeat_tick ({heartbeat}) and be at most {MAX_ELECTION_TICK}, not {election}"
                ),
            );
        }
        if let Some(n) = self.max_entry_bytes {
            let room = crate::Config::room_in(max_message);
            if !(crate::config::MIN_ENTRY_BYTES..=room).contains(&n) {
                return bad(
                    "max_entry_bytes",
                    format!(
                        "must be {} to {room} bytes (what transport.max_message = {max_message} leaves beside an append's own fields), not {n}",
                        crate::config::MIN_ENTRY_BYTES
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Lowers the calling thread's scheduling priority (nice 10): snapshots are serialized,
/// written and freed on threads of their own, hundreds of megabytes at a time for a large
/// state, and on a machine with few cores that work must not take the core from the
/// node's passes, whose delays peers count as silence.
fn in_the_background() {
    // SAFETY: gettid and setpriority only read their arguments; a thread may always lower
    // its own priority.
    let failed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE) != 0
    };
    if failed {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot lower a background thread's priority"
        );
    }
}

/// The nice value of the threads that serialize, write and free snapshots.
const BACKGROUND_NICE: libc::c_int = 10;

/// Drops `value` on a thread of its own: a large state or snapshot takes tens of
/// milliseconds to free, which would count against the pass (and its peers' patience).
fn drop_off_the_pass<T: Send + 'static>(value: T) {
    let spawned = std::thread::Builder::new()
        .name("weft-free".into())
        .spawn(move || {
            in_the_background();
            drop(value)
        });
    if let Err(e) = spawned {
        // The closure, and the value with it, was dropped here instead.
        tracing::debug!(error = %e, "cannot start a thread to free memory; freed in the pass");
    }
}

/// Readies the storage thread may fall behind by before the node thread waits for it.
const STORE_QUEUE: usize = 1024;

/// Work for the storage thread, in the order the node thread produced it (the simulator's
/// storage thread takes the same).
pub(crate) enum StoreJob {
    /// Make one Ready's snapshot, entries and hard state durable, then send its messages.
    Persist(Persist),
    /// Record a local snapshot (after everything handed before it).
    Compact(Snapshot),
}

/// The durable part and the late messages of one handed Ready.
pub(crate) struct Persist {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub durable: Durable,
    /// [`Ready::must_sync`]: without it the write need not be synced before the messages
    /// go (everything handed before it was synced by an earlier batch, or is synced by
    /// this one).
    pub sync: bool,
}

impl Persist {
    /// The bytes of entries and snapshot it writes.
    fn bytes(&self) -> usize {
        self.entries.iter().map(Entry::size).sum::<usize>()
            + self.snapshot.as_ref().map_or(0, |s| s.data.len())
    }

    /// Writes it to `store`, durable at the store's next sync.
    fn write_to(&self, store: &mut dyn LogStore) -> Result<(), String> {
        store.write(self.hard_state, self.snapshot.as_ref(), &self.entries)
    }
}

impl StoreJob {
    /// The durable part and the late messages of a handed Ready; `None` if it has none.
    pub(crate) fn of(ready: Ready) -> Option<StoreJob> {
        let durable = Durable::of(&ready);
        let Ready {
            hard_state,
            snapshot,
            entries,
            messages,
            must_sync,
            ..
        } = ready;
        let empty =
            hard_state.is_none() && snapshot.is_none() && entries.is_empty() && messages.is_empty();
        (!empty).then_some(StoreJob::Persist(Persist {
            hard_state,
            snapshot,
            entries,
            messages,
            durable,
            sync: must_sync,
        }))
    }
}

/// The storage thread's reports, in order.
enum Stored {
    /// These entries and this hard state are on stable storage; so many jobs are done
    /// since the thread started.
    Durable(Durable, u64),
    /// Storage failed; the node must stop.
    Failed(String),
}

/// What the storage thread talks to besides the store and the transport.
struct StorageEnds<'a> {
    jobs: &'a Receiver<StoreJob>,
    stored: &'a Sender<Stored>,
    core: &'a Weak<Core>,
    sync_time: &'a SyncTime,
}

/// The storage thread: writes what the node hands it, in order, every job queued behind
/// the previous sync with one sync (group commit), then sends the messages that had to
/// wait for it and reports what is durable. A batch that only moves the commit index is
/// written without a sync (see [`Ready::must_sync`]).
fn storage_loop(store: &Mutex<Box<dyn LogStore>>, transport: &dyn Transport, ends: StorageEnds) {
    let StorageEnds {
        jobs,
        stored,
        core,
        sync_time,
    } = ends;
    // Each report is taken by a pass run here (see `Core`): at a leader whose own fsync
    // ends last, that pass commits the write.
    let report = |s: Stored| {
        let _ = stored.send(s);
        Core::pass_here(core);
    };
    let lock = || store.lock().unwrap_or_else(|e| e.into_inner());
    let writer = lock().snapshot_writer();
    let mut done = 0u64;
    // Snapshot files written off this thread, waiting to be recorded.
    let (written_tx, written) = unbounded::<Result<Snapshot, String>>();
    let mut writing = 0usize;
    loop {
        let first = select! {
            recv(jobs) -> j => match j {
                Ok(j) => Work::Job(j),
                // Stopping: record the snapshots still being written, then end.
                Err(_) if writing > 0 => match written.recv() {
                    Ok(w) => Work::Written(w),
                    Err(_) => return,
                },
                Err(_) => return,
            },
            recv(written) -> w => match w {
                Ok(w) => Work::Written(w),
                Err(_) => return,
            },
        };
        let mut messages = Vec::new();
        let mut durable = Durable::default();
        let mut sync = false;
        let mut store = lock();
        let waiting = jobs
            .try_iter()
            .take(STORE_QUEUE)
            .map(Work::Job)
            .chain(written.try_iter().map(Work::Written));
        let result = std::iter::once(first)
            .chain(waiting)
            .try_for_each(|work| match work {
                Work::Job(StoreJob::Persist(p)) => {
                    done += 1;
                    p.write_to(&mut **store)?;
                    messages.extend(p.messages);
                    durable.merge(p.durable);
                    sync |= p.sync;
                    Ok(())
                }
                Work::Job(StoreJob::Compact(snap)) => match &writer {
                    Some(write) => {
                        done += 1;
                        let (write, finished) = (Arc::clone(write), written_tx.clone());
                        std::thread::Builder::new()
                            .name("weft-snap-file".into())
                            .spawn(move || {
                                in_the_background();
                                let _ = finished.send(write(&snap).map(|()| snap));
                            })
                            .map_err(|e| format!("cannot start a snapshot writer: {e}"))?;
                        writing += 1;
                        Ok(())
                    }
                    None => {
                        done += 1;
                        store.compact(&snap)
                    }
                },
                Work::Written(w) => {
                    writing -= 1;
                    sync = true;
                    store.compact_written(&w?)
                }
            })
            .and_then(|()| {
                if !sync {
                    return Ok(());
                }
                let began = Instant::now();
                store.sync()?;
                sync_time.record(began.elapsed());
                Ok(())
            });
        drop(store);
        if let Err(e) = result {
            report(Stored::Failed(e));
            return;
        }
        send_messages(transport, &messages);
        report(Stored::Durable(durable, done));
    }
}

/// What the storage thread does next: a job from the node, or recording a snapshot whose
/// file a writer thread finished (or failed to write).
enum Work {
    Job(StoreJob),
    Written(Result<Snapshot, String>),
}

/// Sends a `Ready`'s messages over `transport` as the node runtime does: each distinct
/// message (an append round, a vote request that includes the candidate itself) is encoded
/// once and multicast to its recipients. On a `total_order` fabric that is one injection
/// with one place in the global order; elsewhere the same bytes go to each recipient.
/// Failures are left to Raft's retries.
pub fn send_messages(transport: &dyn Transport, messages: &[Message]) {
    for (to, m) in crate::message::group_by_body(messages) {
        let r = match to[..] {
            [one] => transport.send(one, m.encode()),
            _ => transport.multicast(&to, m.encode_to(crate::message::TO_GROUP)),
        };
        if let Err(e) = r {
            tracing::trace!(to = ?to, error = %e, "send failed; raft will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// Settings that cannot work are refused at load, each naming its key; good ones
    /// are taken as given (no silent rounding).
    #[test]
    fn raft_settings_out_of_range_name_their_key() {
        let members = [NodeId(1), NodeId(2), NodeId(3)];
        let load = |s: &RaftSettings| s.node_config(NodeId(1), &members, 1 << 20);
        let cases = [
            (
                RaftSettings {
                    tick_ms: Some(0),
                    ..Default::default()
                },
                "raft.tick_ms",
            ),
            (
                RaftSettings {
                    tick_ms: Some(3_600_000),
                    ..Default::default()
                },
                "raft.tick_ms",
            ),
            (
                RaftSettings {
                    heartbeat_tick: Some(0),
                    ..Default::default()
                },
                "raft.heartbeat_tick",
            ),
            (
                RaftSettings {
                    election_tick: Some(1),
                    ..Default::default()
                },
                "raft.election_tick",
            ),
            (
                RaftSettings {
                    max_entry_bytes: Some(2 << 20),
                    ..Default::default()
                },
                "raft.max_entry_bytes",
            ),
            (
                RaftSettings {
                    max_entry_bytes: Some(10),
                    ..Default::default()
                },
                "raft.max_entry_bytes",
            ),
        ];
        for (settings, key) in cases {
            let e = load(&settings).unwrap_err().to_string();
            assert!(e.starts_with(key), "{e}");
        }
        let good = RaftSettings {
            tick_ms: Some(7),
            max_entry_bytes: Some(64 << 10),
            ..Default::default()
        };
        let cfg = load(&good).unwrap();
        assert_eq!(
            (cfg.tick, cfg.raft.max_entry_bytes),
            (Duration::from_millis(7), 64 << 10)
        );
    }

    /// Work left for the end of a pass runs after everything the pass does, in the order
    /// it was left, also when the pass panics; outside a pass it runs at once.
    #[test]
    fn work_left_for_the_end_of_a_pass_runs_when_it_ends() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let note = |what: &'static str| {
            let log = Rc::clone(&log);
            move || log.borrow_mut().push(what)
        };
        at_pass_end(note("outside"));
        as_pass(|| {
            at_pass_end(note("first"));
            at_pass_end(note("second"));
            log.borrow_mut().push("pass");
        });
        assert_eq!(*log.borrow(), ["outside", "pass", "first", "second"]);
        log.borrow_mut().clear();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            as_pass(|| {
                at_pass_end(note("left"));
                panic!("the pass fails");
            })
        }));
        assert!(unwound.is_err());
        at_pass_end(note("after"));
        assert_eq!(*log.borrow(), ["left", "after"], "no pass is left open");
    }
}
