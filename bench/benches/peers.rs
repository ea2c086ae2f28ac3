//! weft next to openraft and raft-rs on one workload, in one criterion group
//! (`peers/3-node-mem`), so the ratios come from one run on one machine.
//!
//! The workload, for every library: a 3-node cluster in this process, logs in memory (no
//! disk, no fsync), messages passed in memory, and puts of 100 bytes (an 8-byte key cycling
//! through [`KEYS`](weft_bench::kv::KEYS), then the value) applied to a `BTreeMap` at every
//! node ([`KvMap`]; the value shares the entry's buffer). One iteration proposes a batch of
//! N puts at the leader at once and returns when the leader has applied all of them: N = 1
//! is one proposer waiting for each write, N = 256 is 256 writes in flight. Throughput is in
//! puts. A cluster is replaced by a fresh one (untimed) after every [`FRESH_AFTER`] puts,
//! since none of them compacts its log here. Each library runs on this one thread and gets
//! the best of the documented settings tried (alternatives measured on this 2-core machine
//! are noted).
//!
//! How each is driven:
//! - **weft**: [`Cluster`] as in `raft_core`, three `RawNode`s pumped in turn over the `mem`
//!   transport, applying committed entries ([`Cluster::applying`]). Messages are encoded to
//!   MessagePack and decoded at the receiver, as the node runtime does.
//! - **raft-rs** (`raft` 0.7, `protobuf-codec`): three `RawNode<MemStorage>` pumped in turn,
//!   each `Ready` handled in the order its docs and `examples/five_mem_node` give (send
//!   `messages`, apply committed entries, append entries and the hard state to
//!   `MemStorage`, send `persisted_messages`, `advance`, then the `LightReady`'s commit
//!   index, messages and committed entries, `advance_apply`); messages are moved between
//!   per-node inboxes as structs. Config as its docs show it (election 10 ticks, heartbeat
//!   3, 1 GiB per message, 256 messages in flight) plus `batch_append`, which merges a
//!   Ready's appends to a peer as weft always does (without it, one message per proposal:
//!   about half the puts/s at 256). One thread rather than the example's thread per node:
//!   the example sleeps 10 ms a loop, and raft-rs does no I/O of its own, so as for weft the
//!   loop is the application's.
//! - **openraft** (0.9, `storage-v2`): three `Raft`s on a current-thread tokio runtime, a
//!   `BTreeMap` log store that reports each append flushed at once, a state machine holding
//!   the same [`KvMap`], and a router that calls the target's `append_entries`, `vote` and
//!   `install_snapshot` directly (no encoding), as openraft's own cluster benchmark does.
//!   Config is that benchmark's (election timeout 200..2000 ms, purge batch 1024, default
//!   50 ms heartbeat) with snapshots off, since the other two never compact. The proposer
//!   awaits `client_write` (which answers once the leader applied the entry); 256 in flight
//!   are 256 `client_write` futures joined. A two-worker runtime (as that benchmark uses,
//!   with more workers) and spawning each write as a task were both slower here.
//!
//! What is not equal: weft encodes and decodes every message (its transport carries bytes),
//! the others pass structs; openraft's core, replication and state machine are tasks
//! talking over channels, the other two are plain calls. Nobody ticks: no elections or
//! heartbeats happen during the measurement except openraft's own timers.
//!
//! After the timings one line per library gives puts/s at 1 and 256 in flight, and weft's
//! ratio to each peer: the mean over every batch criterion timed (warm-up included).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_bench::kv::{put_command, KvMap};
use weft_bench::raft_cluster::Cluster;

/// Bytes per put, key included.
const PAYLOAD: usize = 100;

/// One library's 3-node cluster.
trait Peer {
    /// Runs `iters` batches of `n` puts, keys from `first_key` on, each batch proposed at
    /// once and awaited until the leader applied all of it; returns the time they took.
    fn run(&mut self, first_key: u64, iters: u64, n: u64) -> Duration;

    /// The value the leader's state machine holds for a put of `key`.
    fn leader_value(&self, key: u64) -> Option<Bytes>;
}

/// Times `iters` calls of `batch` with consecutive key ranges of `n`: the loop of the
/// libraries driven on this thread.
fn timed(first_key: u64, iters: u64, n: u64, mut batch: impl FnMut(u64)) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        batch(first_key + i * n);
    }
    start.elapsed()
}

struct Weft(Cluster);

impl Peer for Weft {
    fn run(&mut self, first_key: u64, iters: u64, n: u64) -> Duration {
        timed(first_key, iters, n, |k| {
            self.0
                .commit_all((k..k + n).map(|k| Bytes::from(put_command(k, PAYLOAD))));
        })
    }

    fn leader_value(&self, key: u64) -> Option<Bytes> {
        self.0.leader_kv()?.get(key).cloned()
    }
}

mod raft_rs {
    use raft::prelude::{ConfState, Config, Entry, Message};
    use raft::storage::MemStorage;
    use raft::{RawNode, StateRole};

    use super::*;

    pub struct RaftRs {
        nodes: Vec<RawNode<MemStorage>>,
        kvs: Vec<KvMap>,
        inboxes: Vec<Vec<Message>>,
    }

    impl RaftRs {
        pub fn new() -> RaftRs {
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let nodes = (1..=3)
                .map(|id| {
                    let cfg = Config {
                        id,
                        election_tick: 10,
                        heartbeat_tick: 3,
                        max_size_per_msg: 1 << 30,
                        max_inflight_msgs: 256,
                        batch_append: true,
                        ..Default::default()
                    };
                    let voters = ConfState::from((vec![1, 2, 3], vec![]));
                    let store = MemStorage::new_with_conf_state(voters);
                    RawNode::new(&cfg, store, &logger).expect("valid config")
                })
                .collect();
            let mut c = RaftRs {
                nodes,
                kvs: (0..3).map(|_| KvMap::default()).collect(),
                inboxes: vec![Vec::new(); 3],
            };
            c.nodes[0].campaign().expect("campaign");
            c.settle();
            assert_eq!(c.nodes[0].raft.state, StateRole::Leader);
            c
        }

        /// Pumps until nothing moves; panics if the leader has not applied its whole log.
        fn settle(&mut self) {
            while self.pump() {}
            let log = &self.nodes[0].raft.raft_log;
            assert_eq!(log.applied, log.last_index(), "raft-rs stalled");
        }

        /// One round: every node's ready handled, then every inbox stepped in.
        fn pump(&mut self) -> bool {
            let mut moved = false;
            for (node, kv) in self.nodes.iter_mut().zip(&mut self.kvs) {
                if node.has_ready() {
                    moved = true;
                    handle_ready(node, kv, &mut self.inboxes);
                }
            }
            for (node, inbox) in self.nodes.iter_mut().zip(&mut self.inboxes) {
                for m in inbox.drain(..) {
                    moved = true;
                    node.step(m).expect("step");
                }
            }
            moved
        }
    }

    fn handle_ready(node: &mut RawNode<MemStorage>, kv: &mut KvMap, inboxes: &mut [Vec<Message>]) {
        let send = |inboxes: &mut [Vec<Message>], msgs: Vec<Message>| {
            for m in msgs {
                inboxes[m.to as usize - 1].push(m);
            }
        };
        let apply = |kv: &mut KvMap, entries: Vec<Entry>| {
            for e in entries {
                kv.apply(&e.data);
            }
        };
        let store = node.store().clone();
        let mut rd = node.ready();
        send(inboxes, rd.take_messages());
        apply(kv, rd.take_committed_entries());
        store.wl().append(rd.entries()).expect("append");
        if let Some(hs) = rd.hs() {
            store.wl().set_hardstate(hs.clone());
        }
        send(inboxes, rd.take_persisted_messages());
        let mut light = node.advance(rd);
        if let Some(commit) = light.commit_index() {
            store.wl().mut_hard_state().set_commit(commit);
        }
        send(inboxes, light.take_messages());
        apply(kv, light.take_committed_entries());
        node.advance_apply();
    }

    impl Peer for RaftRs {
        fn run(&mut self, first_key: u64, iters: u64, n: u64) -> Duration {
            timed(first_key, iters, n, |k| {
                for k in k..k + n {
                    let put = put_command(k, PAYLOAD);
                    self.nodes[0].propose(vec![], put).expect("leader accepts");
                }
                self.settle();
            })
        }

        fn leader_value(&self, key: u64) -> Option<Bytes> {
            self.kvs[0].get(key).cloned()
        }
    }
}

mod openraft_peer {
    use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError};
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::storage::{
        LogFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
        Snapshot,
    };
    use openraft::{
        Config, Entry, EntryPayload, LogId, OptionalSend, Raft, ServerState, SnapshotMeta,
        SnapshotPolicy, StorageError, StoredMembership, Vote,
    };
    use tokio::runtime::Runtime;

    use super::*;

    openraft::declare_raft_types!(
        /// Puts as `Bytes` (what weft and raft-rs carry too), no reply, no node address.
        pub Types: D = Bytes, R = (), Node = ()
    );

    type Id = u64;
    type Result<T> = std::result::Result<T, StorageError<Id>>;

    #[derive(Default)]
    struct Log {
        vote: Option<Vote<Id>>,
        entries: BTreeMap<u64, Entry<Types>>,
        purged: Option<LogId<Id>>,
    }

    /// The log in memory; a clone is a reader of the same log.
    #[derive(Clone, Default)]
    struct LogStore(Arc<Mutex<Log>>);

    impl RaftLogReader<Types> for LogStore {
        async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
            &mut self,
            range: RB,
        ) -> Result<Vec<Entry<Types>>> {
            let log = self.0.lock().expect("log");
            Ok(log.entries.range(range).map(|(_, e)| e.clone()).collect())
        }
    }

    impl RaftLogStorage<Types> for LogStore {
        type LogReader = Self;

        async fn get_log_state(&mut self) -> Result<LogState<Types>> {
            let log = self.0.lock().expect("log");
            let last = log.entries.values().next_back().map(|e| e.log_id);
            Ok(LogState {
                last_purged_log_id: log.purged,
                last_log_id: last.or(log.purged),
            })
        }

        async fn get_log_reader(&mut self) -> Self {
            self.clone()
        }

        async fn save_vote(&mut self, vote: &Vote<Id>) -> Result<()> {
            self.0.lock().expect("log").vote = Some(*vote);
            Ok(())
        }

        async fn read_vote(&mut self) -> Result<Option<Vote<Id>>> {
            Ok(self.0.lock().expect("log").vote)
        }

        async fn append<I>(&mut self, entries: I, callback: LogFlushed<Types>) -> Result<()>
        where
            I: IntoIterator<Item = Entry<Types>> + OptionalSend,
        {
            let mut log = self.0.lock().expect("log");
            log.entries
                .extend(entries.into_iter().map(|e| (e.log_id.index, e)));
            callback.log_io_completed(Ok(()));
            Ok(())
        }

        async fn truncate(&mut self, from: LogId<Id>) -> Result<()> {
            self.0.lock().expect("log").entries.split_off(&from.index);
            Ok(())
        }

        async fn purge(&mut self, upto: LogId<Id>) -> Result<()> {
            let mut log = self.0.lock().expect("log");
            log.purged = Some(upto);
            log.entries = log.entries.split_off(&(upto.index + 1));
            Ok(())
        }
    }

    #[derive(Default)]
    struct Machine {
        applied: Option<LogId<Id>>,
        membership: StoredMembership<Id, ()>,
        kv: KvMap,
    }

    /// The state machine; a clone shares it (the bench reads the leader's).
    #[derive(Clone, Default)]
    struct MachineStore(Arc<Mutex<Machine>>);

    /// Snapshots are off ([`SnapshotPolicy::Never`]), and no log is purged, so none is ever
    /// built or sent.
    const NO_SNAPSHOTS: &str = "snapshots are off in this bench";

    impl RaftSnapshotBuilder<Types> for MachineStore {
        async fn build_snapshot(&mut self) -> Result<Snapshot<Types>> {
            unreachable!("{NO_SNAPSHOTS}")
        }
    }

    impl RaftStateMachine<Types> for MachineStore {
        type SnapshotBuilder = Self;

        async fn applied_state(&mut self) -> Result<(Option<LogId<Id>>, StoredMembership<Id, ()>)> {
            let m = self.0.lock().expect("machine");
            Ok((m.applied, m.membership.clone()))
        }

        async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>>
        where
            I: IntoIterator<Item = Entry<Types>> + OptionalSend,
        {
            let mut m = self.0.lock().expect("machine");
            let mut replies = Vec::new();
            for e in entries {
                m.applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(put) => m.kv.apply(&put),
                    EntryPayload::Membership(mem) => {
                        m.membership = StoredMembership::new(Some(e.log_id), mem)
                    }
                }
                replies.push(());
            }
            Ok(replies)
        }

        async fn get_snapshot_builder(&mut self) -> Self {
            self.clone()
        }

        async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
            unreachable!("{NO_SNAPSHOTS}")
        }

        async fn install_snapshot(
            &mut self,
            _: &SnapshotMeta<Id, ()>,
            _: Box<Cursor<Vec<u8>>>,
        ) -> Result<()> {
            unreachable!("{NO_SNAPSHOTS}")
        }

        async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Types>>> {
            Ok(None)
        }
    }

    /// Hands each node a connection that calls the target `Raft` directly.
    #[derive(Clone, Default)]
    struct Router(Arc<OnceLock<Vec<Raft<Types>>>>);

    struct Conn {
        target: Id,
        raft: Raft<Types>,
    }

    impl RaftNetworkFactory<Types> for Router {
        type Network = Conn;

        async fn new_client(&mut self, target: Id, _: &()) -> Conn {
            let rafts = self.0.get().expect("every node is up before any connects");
            Conn {
                target,
                raft: rafts[target as usize].clone(),
            }
        }
    }

    type Rpc<T, E = openraft::error::Infallible> =
        std::result::Result<T, RPCError<Id, (), RaftError<Id, E>>>;

    impl Conn {
        /// The target's refusal, as the RPC error a remote node would have sent back.
        fn remote<E: std::error::Error>(
            &self,
            e: RaftError<Id, E>,
        ) -> RPCError<Id, (), RaftError<Id, E>> {
            RPCError::RemoteError(RemoteError::new(self.target, e))
        }
    }

    impl RaftNetwork<Types> for Conn {
        async fn append_entries(
            &mut self,
            rpc: AppendEntriesRequest<Types>,
            _: RPCOption,
        ) -> Rpc<AppendEntriesResponse<Id>> {
            self.raft
                .append_entries(rpc)
                .await
                .map_err(|e| self.remote(e))
        }

        async fn install_snapshot(
            &mut self,
            rpc: InstallSnapshotRequest<Types>,
            _: RPCOption,
        ) -> Rpc<InstallSnapshotResponse<Id>, InstallSnapshotError> {
            self.raft
                .install_snapshot(rpc)
                .await
                .map_err(|e| self.remote(e))
        }

        async fn vote(&mut self, rpc: VoteRequest<Id>, _: RPCOption) -> Rpc<VoteResponse<Id>> {
            self.raft.vote(rpc).await.map_err(|e| self.remote(e))
        }
    }

    pub struct OpenRaft {
        rt: Runtime,
        leader: Raft<Types>,
        leader_machine: MachineStore,
    }

    impl OpenRaft {
        pub fn new() -> OpenRaft {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let config = Config {
                election_timeout_min: 200,
                election_timeout_max: 2000,
                purge_batch_size: 1024,
                snapshot_policy: SnapshotPolicy::Never,
                ..Default::default()
            };
            let config = Arc::new(config.validate().expect("valid config"));
            let router = Router::default();
            let machines: Vec<MachineStore> = (0..3).map(|_| MachineStore::default()).collect();
            let leader = rt.block_on(async {
                let mut rafts = Vec::new();
                for (id, m) in machines.iter().enumerate() {
                    let raft = Raft::new(
                        id as Id,
                        config.clone(),
                        router.clone(),
                        LogStore::default(),
                        m.clone(),
                    )
                    .await
                    .expect("raft node");
                    rafts.push(raft);
                }
                router.0.set(rafts.clone()).ok().expect("set once");
                let leader = rafts[0].clone();
                leader
                    .initialize(BTreeSet::from([0, 1, 2]))
                    .await
                    .expect("initialize");
                let wait = || leader.wait(Some(Duration::from_secs(10)));
                wait()
                    .state(ServerState::Leader, "elected")
                    .await
                    .expect("elected");
                // Index 0 is the initial membership, 1 the new leader's blank entry.
                for r in &rafts {
                    let wait = r.wait(Some(Duration::from_secs(10)));
                    wait.applied_index(Some(1), "caught up")
                        .await
                        .expect("caught up");
                }
                leader
            });
            OpenRaft {
                rt,
                leader,
                leader_machine: machines[0].clone(),
            }
        }
    }

    impl Peer for OpenRaft {
        fn run(&mut self, first_key: u64, iters: u64, n: u64) -> Duration {
            let leader = &self.leader;
            self.rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let k = first_key + i * n;
                    let puts = (k..k + n).map(|k| {
                        let put = Bytes::from(put_command(k, PAYLOAD));
                        async move { leader.client_write(put).await.expect("written") }
                    });
                    futures::future::join_all(puts).await;
                }
                start.elapsed()
            })
        }

        fn leader_value(&self, key: u64) -> Option<Bytes> {
            let m = self.leader_machine.0.lock().expect("machine");
            m.kv.get(key).cloned()
        }
    }
}

/// Starts one library's cluster.
type Start = fn() -> Box<dyn Peer>;

/// Each library by name, and how to start its cluster.
const PEERS: [(&str, Start); 3] = [
    ("weft", || {
        Box::new(Weft(Cluster::mem3(0x9EE2_0000).applying()))
    }),
    ("openraft", || Box::new(openraft_peer::OpenRaft::new())),
    ("raft-rs", || Box::new(raft_rs::RaftRs::new())),
];

/// Puts after which a library's cluster is replaced by a fresh one, between timed
/// batches: no library compacts its log here, and a log that only grows (half a gigabyte a
/// second for weft at 256 in flight) would slow the fastest library most and fill memory.
const FRESH_AFTER: u64 = 1 << 18;

/// Proposals in flight: one proposer waiting for each write, and 256 at once.
const IN_FLIGHT: [u64; 2] = [1, 256];

/// Puts timed at one library and one batch size, and the time they took.
#[derive(Clone, Copy, Default)]
struct Tally {
    puts: u64,
    time: Duration,
}

fn bench_peers(c: &mut Criterion) {
    let mut group = c.benchmark_group("peers/3-node-mem");
    // By library, one tally for each of IN_FLIGHT.
    let mut tallies: Vec<(&str, Vec<Tally>)> = Vec::new();
    for (name, start) in PEERS {
        let mut row = Vec::new();
        for n in IN_FLIGHT {
            let mut peer = start();
            let (mut tally, mut fresh_at) = (Tally::default(), 0);
            group.throughput(Throughput::Elements(n));
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| {
                    if tally.puts - fresh_at >= FRESH_AFTER {
                        peer = start();
                        fresh_at = tally.puts;
                    }
                    let t = peer.run(tally.puts, iters, n);
                    tally.puts += iters * n;
                    tally.time += t;
                    t
                })
            });
            if let Some(last) = tally.puts.checked_sub(1) {
                let expected = Bytes::from(put_command(last, PAYLOAD)).slice(8..);
                assert_eq!(peer.leader_value(last), Some(expected), "{name}: last put");
            }
            row.push(tally);
        }
        tallies.push((name, row));
    }
    group.finish();
    report(&tallies);
}

/// One line per library run: puts/s at each of IN_FLIGHT (over how many puts), and weft's
/// ratio to it. A batch size filtered out of the run shows `-`.
fn report(tallies: &[(&str, Vec<Tally>)]) {
    let rate = |t: &Tally| (t.puts > 0).then(|| t.puts as f64 / t.time.as_secs_f64());
    let (weft, weft_row) = &tallies[0];
    for (name, row) in tallies
        .iter()
        .filter(|(_, row)| row.iter().any(|t| t.puts > 0))
    {
        let mut line = format!("peers/3-node-mem {name:>9}:");
        for (n, t) in IN_FLIGHT.iter().zip(row) {
            let r = rate(t).map_or("-".into(), |r| format!("{r:.0}"));
            line += &format!("  {n:>3} in flight {r:>8} puts/s ({:>8} timed)", t.puts);
        }
        if name != weft {
            line += &format!("   {weft}/{name}:");
            for (n, (w, t)) in IN_FLIGHT.iter().zip(weft_row.iter().zip(row)) {
                match (rate(w), rate(t)) {
                    (Some(w), Some(r)) => line += &format!(" {:.2}x at {n}", w / r),
                    _ => line += &format!(" - at {n}"),
                }
            }
        }
        println!("{line}");
    }
}

criterion_group!(benches, bench_peers);
criterion_main!(benches);
