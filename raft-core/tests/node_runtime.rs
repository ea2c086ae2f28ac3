//! The node runtime on real threads over the `mem` transport: writes through the leader,
//! linearizable reads, a leader crash in the middle, and retries that apply once; and the
//! same cluster on the emulated RDMA and Data Vortex fabrics and on `ptp` over loopback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_raft::kv::{KvCommand, KvOutcome, KvRequest};
use weft_raft::node::{NoStore, Node, NodeConfig, NodeError, NodeHandle, ReadResult};
use weft_raft::{NodeId, Persisted};
use weft_transport::{
    open, BackendConfig, MemConfig, PtpConfig, RdmaConfig, Transport, TransportConfig, UdpConfig,
    VortexConfig,
};

fn transport(cluster: u64, id: u32, n: u32) -> Box<dyn weft_transport::Transport> {
    open(&TransportConfig::mem(cluster, NodeId(id), n)).unwrap()
}

fn start(cluster: u64, id: u32, n: u32) -> Node {
    start_with(cluster, id, n, |_| {})
}

/// `n` loopback addresses that were free a moment ago, for datagram fabrics.
fn loopback_addrs(n: usize) -> Vec<std::net::SocketAddr> {
    (0..n)
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        })
        .collect()
}

/// Starts node `id` with 5 ms ticks, then whatever `tweak` changes.
fn start_with(cluster: u64, id: u32, n: u32, tweak: impl Fn(&mut NodeConfig)) -> Node {
    start_on(transport(cluster, id, n), id, n, tweak)
}

/// Starts node `id` of `n` over `t` with 5 ms ticks, then whatever `tweak` changes.
fn start_on(t: Box<dyn Transport>, id: u32, n: u32, tweak: impl Fn(&mut NodeConfig)) -> Node {
    start_stored(t, Box::new(NoStore), id, n, tweak)
}

/// [`start_on`] with `store` for its log.
fn start_stored(
    t: Box<dyn Transport>,
    store: Box<dyn weft_raft::node::LogStore>,
    id: u32,
    n: u32,
    tweak: impl Fn(&mut NodeConfig),
) -> Node {
    let mut cfg = NodeConfig::new(NodeId(id), (1..=n).map(NodeId));
    cfg.tick = Duration::from_millis(5);
    cfg.snapshot_entries = 200;
    tweak(&mut cfg);
    Node::start(cfg, Persisted::default(), store, t).unwrap()
}

/// On udp and ptp the receive threads drive the nodes (a follower persists and
/// acknowledges where the append arrived, the leader commits where the acknowledgement
/// arrived), elsewhere the Raft thread takes the inbox; on each the client's thread
/// proposes. Writes commit and read back, and a dropped node on a datagram fabric lets go
/// of its socket at once, although its receive thread held a way back to the node.
#[test]
fn the_same_cluster_runs_on_udp_emulated_rdma_the_vortex_emulator_and_ptp() {
    let fabrics = [
        (0xA0DE_0105, BackendConfig::Udp(UdpConfig::default())),
        (0xA0DE_0101, BackendConfig::Rdma(RdmaConfig::default())),
        (
            0xA0DE_0102,
            BackendConfig::Vortex(VortexConfig {
                fabric: "local:node-runtime".into(),
            }),
        ),
        (0xA0DE_0103, BackendConfig::Ptp(PtpConfig::default())),
        // ptp bare, no layers: the fabric's own order and loopback, so ordered elections.
        (
            0xA0DE_0104,
            BackendConfig::Ptp(PtpConfig {
                max_datagram: 65507,
                ..PtpConfig::default()
            }),
        ),
    ];
    for (cluster, backend) in fabrics {
        let bare = cluster == 0xA0DE_0104;
        // Datagram fabrics need a real address per member.
        let addrs = loopback_addrs(3);
        let mut nodes: Vec<Node> = (1..=3)
            .map(|i| {
                let mut cfg = TransportConfig::mem(cluster, NodeId(i), 3);
                cfg.backend = backend.clone();
                for (n, a) in cfg.nodes.iter_mut().zip(&addrs) {
                    n.addr = *a;
                }
                if bare {
                    cfg.require.clear();
                    cfg.max_message = 60_000;
                }
                let t = open(&cfg).unwrap();
                let caps = t.capabilities();
                // Only ordered fabrics without layers deliver a node's copy to itself.
                let loopback = match backend {
                    BackendConfig::Vortex(_) => true,
                    BackendConfig::Ptp(_) => bare,
                    _ => false,
                };
                assert_eq!(caps.loopback, loopback, "{}", backend.kind());
                start_on(t, i, 3, |_| {})
            })
            .collect();
        let h: Vec<Option<NodeHandle>> = nodes.iter().map(|n| Some(n.handle())).collect();
        for i in 0..100u64 {
            write(
                &h,
                &put(7, i + 1, &format!("k{}", i % 10), &format!("v{i}")),
            );
        }
        assert_eq!(
            read(&h, "k9").as_deref(),
            Some(&b"v99"[..]),
            "{}",
            backend.kind()
        );
        // On ptp the nodes measure each other's clocks and report it in their status. One
        // measurement on a loaded machine can be off by more than ε (half its round trip);
        // the next ones, every sync interval, bring the order back.
        if let BackendConfig::Ptp(_) = backend {
            let deadline = Instant::now() + Duration::from_secs(5);
            let offsets = loop {
                let s = h[0].as_ref().unwrap().status().unwrap();
                if s.clock_offsets.len() == 2 && s.total_order {
                    break s.clock_offsets;
                }
                assert!(
                    Instant::now() < deadline,
                    "one system clock, yet no total order within ε: {s:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            for o in offsets {
                // The three nodes share this host's clock: only measurement error remains.
                assert!(o.offset_ns.abs() < 20_000_000, "{o:?}");
            }
        }
        let datagrams = matches!(backend, BackendConfig::Udp(_) | BackendConfig::Ptp(_));
        for (node, addr) in nodes.drain(..).zip(&addrs) {
            drop(node);
            if datagrams {
                std::net::UdpSocket::bind(addr).expect("a dropped node's port is free");
            }
        }
        assert!(
            h[0].as_ref().unwrap().status().is_none(),
            "a stopped node answers no status"
        );
    }
}

/// A handle that keeps submitting while its node stops may still hold the stopped
/// runtime for a moment, but never the transport: the node's port is free as soon as the
/// drop returns, every time. And whatever was queued as it stopped is refused at once
/// (a bounded queue keeps its messages until its last sender goes, so a write's answer or
/// a status request could otherwise wait out its 5 s timeout).
#[test]
fn a_stopping_node_frees_its_port_and_refuses_what_handles_keep_submitting() {
    for round in 0..40u64 {
        let addr = loopback_addrs(1)[0];
        let mut cfg = TransportConfig::mem(0xA0DE_0106, NodeId(1), 1);
        cfg.backend = BackendConfig::Udp(UdpConfig::default());
        cfg.nodes[0].addr = addr;
        let node = start_on(open(&cfg).unwrap(), 1, 1, |_| {});
        let handle = node.handle();
        let stop = Arc::new(AtomicBool::new(false));
        let hammers: Vec<_> = (0..2)
            .map(|k| {
                let (h, stop) = (node.handle(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut seq = 0;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        // Answers are not awaited: submitting is what races the stop.
                        drop(h.write(put(k, seq, "k", "v")));
                        let _ = h.status();
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20 + round % 7));
        drop(node);
        let bound = std::net::UdpSocket::bind(addr);
        let stopped = Instant::now();
        stop.store(true, Ordering::Relaxed);
        for t in hammers {
            t.join().unwrap();
        }
        bound.unwrap_or_else(|e| panic!("round {round}: the stopped node's port: {e}"));
        let answer = handle
            .write(put(9, 1, "k", "v"))
            .recv_timeout(Duration::from_secs(1));
        assert!(
            matches!(answer, Ok(Err(NodeError::Stopped))),
            "round {round}: {answer:?}"
        );
        assert!(handle.status().is_none());
        assert!(
            stopped.elapsed() < Duration::from_secs(3),
            "round {round}: requests to the stopped node waited {:?}",
            stopped.elapsed()
        );
    }
}

/// A node that follows a known leader.
fn follower(handles: &[Option<NodeHandle>]) -> &NodeHandle {
    handles
        .iter()
        .flatten()
        .find(|h| {
            h.status()
                .is_some_and(|s| s.role == "Follower" && s.leader.is_some())
        })
        .expect("a follower with a leader")
}

/// Sends `req` to whichever node leads, following redirects, until it is applied.
fn write(handles: &[Option<NodeHandle>], req: &KvRequest) -> KvOutcome {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut at = 0usize;
    while Instant::now() < deadline {
        let Some(h) = &handles[at % handles.len()] else {
            at += 1;
            continue;
        };
        match h.write(req.clone()).recv_timeout(Duration::from_secs(2)) {
            Ok(Ok(o)) => return o,
            Ok(Err(NodeError::NotLeader { leader: Some(l) }))
                if handles[l.0 as usize - 1].is_some() =>
            {
                at = l.0 as usize - 1;
            }
            _ => {
                at += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    panic!("write {req:?} never applied");
}

fn read(handles: &[Option<NodeHandle>], key: &str) -> Option<Bytes> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut at = 0usize;
    while Instant::now() < deadline {
        if let Some(h) = &handles[at % handles.len()] {
            if let Ok(Ok(ReadResult::Value(v))) = h
                .read(Some(key.into()), true)
                .recv_timeout(Duration::from_secs(2))
            {
                return v;
            }
        }
        at += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("read of {key} never answered");
}

fn put(client: u64, seq: u64, key: &str, value: &str) -> KvRequest {
    KvRequest {
        client,
        seq,
        command: KvCommand::Put {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        },
    }
}

#[test]
fn writes_survive_a_leader_crash_and_retries_apply_once() {
    let mut nodes: Vec<Option<Node>> = (1..=3).map(|i| Some(start(0xA0DE_0001, i, 3))).collect();
    let handles = |nodes: &[Option<Node>]| {
        nodes
            .iter()
            .map(|n| n.as_ref().map(Node::handle))
            .collect::<Vec<_>>()
    };
    let h = handles(&nodes);
    for i in 0..300u64 {
        write(
            &h,
            &put(1, i + 1, &format!("k{}", i % 50), &format!("v{i}")),
        );
    }
    assert_eq!(read(&h, "k49").as_deref(), Some(&b"v299"[..]));
    // A retry of an applied write: same answer, no second effect.
    let again = write(&h, &put(1, 300, "k49", "v299"));
    assert_eq!(
        again,
        KvOutcome::Done {
            previous: Some(Bytes::from_static(b"v249"))
        }
    );

    let leader = (0..3)
        .find(|i| {
            h[*i]
                .as_ref()
                .and_then(|h| h.status())
                .is_some_and(|s| s.role == "Leader")
        })
        .expect("a leader");
    nodes[leader] = None; // the leader stops
    let h = handles(&nodes);
    for i in 300..400u64 {
        write(
            &h,
            &put(1, i + 1, &format!("k{}", i % 50), &format!("v{i}")),
        );
    }
    for k in 0..50u64 {
        let last = (300..400).rev().find(|i| i % 50 == k).unwrap();
        assert_eq!(
            read(&h, &format!("k{k}")),
            Some(Bytes::from(format!("v{last}")))
        );
    }
    let status = h.iter().flatten().find_map(|h| h.status()).unwrap();
    assert!(status.applied >= 400, "{status:?}");
    assert!(status.writes_per_s.iter().sum::<u64>() > 0);
}

#[test]
fn followers_redirect_and_stale_reads_answer_locally() {
    let nodes: Vec<Node> = (1..=3).map(|i| start(0xA0DE_0002, i, 3)).collect();
    let h: Vec<Option<NodeHandle>> = nodes.iter().map(|n| Some(n.handle())).collect();
    write(&h, &put(9, 1, "x", "1"));
    let follower = follower(&h);
    match follower
        .write(put(9, 2, "x", "2"))
        .recv_timeout(Duration::from_secs(2))
        .unwrap()
    {
        Err(NodeError::NotLeader { leader: Some(_) }) => {}
        other => panic!("expected a redirect, got {other:?}"),
    }
    // A stale read never blocks; eventually it sees the write.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = follower
            .read(Some("x".into()), false)
            .recv()
            .unwrap()
            .unwrap();
        if r == ReadResult::Value(Some(Bytes::from_static(b"1"))) {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_request_the_cluster_cannot_answer_times_out() {
    let cluster = 0xA0DE_0003;
    // Long ticks: the isolated follower keeps its leader (no role change answers the
    // read first) well past the request timeout.
    let start_quick = |id: u32| {
        start_with(cluster, id, 3, |cfg| {
            cfg.tick = Duration::from_millis(100);
            cfg.request_timeout = Duration::from_millis(300);
        })
    };
    let nodes: Vec<Node> = (1..=3).map(start_quick).collect();
    let h: Vec<Option<NodeHandle>> = nodes.iter().map(|n| Some(n.handle())).collect();
    write(&h, &put(5, 1, "a", "1"));
    let follower = follower(&h);
    let me = follower.status().unwrap().id;
    // Cut the follower off: its forwarded read can never be answered.
    weft_transport::backend::mem::MemFabric::shared(cluster, &MemConfig::default()).set_partitions(
        vec![vec![me], (1..=3).map(NodeId).filter(|n| *n != me).collect()],
    );
    let started = Instant::now();
    let r = follower
        .read(Some("a".into()), true)
        .recv_timeout(Duration::from_secs(5));
    assert_eq!(r.unwrap(), Err(NodeError::Timeout));
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// On bare `ptp` the nodes start with ordered elections; when one member's clock is off by
/// more than ε the fabric withdraws `total_order`, every node falls back to ordinary Raft
/// elections, and the cluster keeps committing and electing.
#[test]
fn clocks_beyond_epsilon_turn_ordered_elections_off_and_raft_carries_on() {
    use weft_transport::backend::ptp::PtpTransport;
    use weft_transport::clock::{Clock, ShiftedClock};
    use weft_transport::{Counters, NodeSpec};
    let addrs = loopback_addrs(3);
    let ptp = PtpConfig {
        max_datagram: 65507,
        epsilon_us: 1_000,
        sync_interval_ms: 20,
        ..PtpConfig::default()
    };
    // Node 3's clock is 8 ms ahead: beyond ε = 1 ms, but within every message's patience.
    let nodes: Vec<Node> = (1..=3u32)
        .map(|i| {
            let mut cfg = TransportConfig::mem(0xA0DE_0105, NodeId(i), 3);
            cfg.nodes = NodeSpec::numbered(&addrs);
            cfg.backend = BackendConfig::Ptp(ptp.clone());
            let clock: Arc<dyn Clock> = Arc::new(ShiftedClock {
                offset_ns: if i == 3 { 8_000_000 } else { 0 },
                epsilon: std::time::Duration::from_millis(1),
            });
            let t =
                PtpTransport::with_clock(&cfg, &ptp, clock, None, Arc::new(Counters::default()))
                    .unwrap();
            start_on(Box::new(t), i, 3, |_| {})
        })
        .collect();
    let h: Vec<Option<NodeHandle>> = nodes.iter().map(|n| Some(n.handle())).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h
        .iter()
        .flatten()
        .any(|n| n.status().is_some_and(|s| s.ordered_elections))
    {
        assert!(
            Instant::now() < deadline,
            "ordered elections never turned off"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in h.iter().flatten() {
        let s = n.status().unwrap();
        assert!(!s.total_order && !s.ordered_elections, "{s:?}");
    }
    for i in 0..20u64 {
        write(&h, &put(9, i + 1, "k", &format!("v{i}")));
    }
    assert_eq!(read(&h, "k").as_deref(), Some(&b"v19"[..]));
}

/// A store that keeps nothing but records every compaction a node hands it (snapshot
/// index, snapshot bytes), whose writes wait while `stall` is on (a disk that stopped
/// keeping up) and panic while `panic` is on (a bug in a store).
#[derive(Default)]
struct TestStore {
    compactions: std::sync::Arc<std::sync::Mutex<Vec<(u64, usize)>>>,
    stall: std::sync::Arc<std::sync::atomic::AtomicBool>,
    panic: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Writes attempted while `panic` was on.
    panicked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl weft_raft::node::LogStore for TestStore {
    fn persist(
        &mut self,
        _: Option<weft_raft::HardState>,
        _: Option<&weft_raft::Snapshot>,
        _: &[weft_raft::Entry],
    ) -> Result<(), String> {
        while self.stall.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if self.panic.load(std::sync::atomic::Ordering::Relaxed) {
            self.panicked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            panic!("the store's write panicked");
        }
        Ok(())
    }
    fn compact(&mut self, s: &weft_raft::Snapshot) -> Result<(), String> {
        self.compactions
            .lock()
            .unwrap()
            .push((s.meta.index, s.data.len()));
        Ok(())
    }
}

/// A store that panics in the middle of a write stops its node, whichever thread ran the
/// write: a pass may have handed a Ready it never persisted, so no later pass may
/// acknowledge anything (nor write: the store sees one write after the panic, the one that
/// panicked). The node says why it stopped, answers no more, and the other two go on
/// committing.
#[test]
fn a_panic_in_a_store_write_stops_the_node() {
    let panics: Vec<_> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let panicked: Vec<_> = (0..3)
        .map(|_| Arc::new(std::sync::atomic::AtomicUsize::new(0)))
        .collect();
    let nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let store = TestStore {
                panic: Arc::clone(&panics[id as usize - 1]),
                panicked: Arc::clone(&panicked[id as usize - 1]),
                ..TestStore::default()
            };
            start_stored(
                transport(0xA0DE_0999, id, 3),
                Box::new(store),
                id,
                3,
                |_| {},
            )
        })
        .collect();
    let h: Vec<_> = nodes.iter().map(|n| Some(n.handle())).collect();
    write(&h, &put(6, 1, "k", "before"));
    let f = h.iter().position(|n| {
        n.as_ref()
            .and_then(NodeHandle::status)
            .is_some_and(|s| s.role == "Follower")
    });
    let f = f.expect("a follower");
    panics[f].store(true, Ordering::Relaxed);
    for i in 2..20u64 {
        write(&h, &put(6, i, "k", &format!("v{i}")));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let why = loop {
        if let Some(why) = nodes[f].failure() {
            break why;
        }
        assert!(
            Instant::now() < deadline,
            "the node with the panicking store runs on"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("the node stopped: {why}");
    assert!(
        why.contains("panicked") || why.contains("storage thread stopped"),
        "{why}"
    );
    assert!(
        h[f].as_ref().unwrap().status().is_none(),
        "it answers no more"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        panicked[f].load(Ordering::Relaxed),
        1,
        "writes after the panic"
    );
    let others: Vec<Option<NodeHandle>> = (0..3).map(|i| h[i].clone().filter(|_| i != f)).collect();
    write(&others, &put(6, 20, "k", "after"));
    assert_eq!(read(&others, "k").as_deref(), Some(&b"after"[..]));
}

/// A growing state is snapshotted less and less often: a snapshot waits for
/// `snapshot_entries` entries and for as many command bytes as the last snapshot held, so
/// the serializing cost per write stays bounded however large the state grows.
#[test]
fn snapshots_space_out_as_the_state_grows() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut cfg = NodeConfig::new(NodeId(1), [NodeId(1)]);
    cfg.tick = Duration::from_millis(5);
    cfg.snapshot_entries = 10;
    let node = Node::start(
        cfg,
        Persisted::default(),
        Box::new(TestStore {
            compactions: std::sync::Arc::clone(&seen),
            ..TestStore::default()
        }),
        transport(0xA0DE_0777, 1, 1),
    )
    .unwrap();
    let h = [Some(node.handle())];
    let value = "v".repeat(1000);
    for i in 0..200u64 {
        write(&h, &put(9, i + 1, &format!("key-{i}"), &value));
    }
    assert_eq!(read(&h, "key-199").as_deref(), Some(value.as_bytes()));
    // Snapshots are serialized and stored off the node's thread, so the last ones may
    // still be on their way when the last write is answered (on a busy machine, all of
    // them): wait until the snapshotting settles.
    let settled = |seen: &std::sync::Mutex<Vec<(u64, usize)>>| {
        let mut last = seen.lock().unwrap().len();
        let began = std::time::Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = seen.lock().unwrap().len();
            if (now == last && now >= 2) || began.elapsed() > Duration::from_secs(5) {
                return seen.lock().unwrap().clone();
            }
            last = now;
        }
    };
    let seen = settled(&seen);
    // Every entry brings at most 1,100 bytes, so a gap of g entries carries at most
    // 1,100 g command bytes; it must carry as many as the snapshot before it.
    for pair in seen.windows(2) {
        let ((at, bytes), (next, _)) = (pair[0], pair[1]);
        assert!(next - at >= 10, "{seen:?}");
        assert!((next - at) * 1100 >= bytes as u64, "{seen:?}");
    }
    // Every 10 entries would be 20 snapshots; doubling intervals make about 5.
    assert!((2..=8).contains(&seen.len()), "{seen:?}");
}

/// Lets every stalled write go when dropped, so that a failing test does not leave a node
/// waiting for its disk forever while it is being stopped.
struct Unstall(Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>);

impl Drop for Unstall {
    fn drop(&mut self) {
        for s in &self.0 {
            s.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A leader whose disk falls far behind (more Readies than the storage queue holds) keeps
/// leading: its Raft thread never waits for the disk, so heartbeats go on, the followers
/// commit the writes meanwhile, and no election happens.
#[test]
fn a_leader_with_a_stalled_disk_keeps_its_followers() {
    let stalls: Vec<_> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let mut cfg = NodeConfig::new(NodeId(id), (1..=3).map(NodeId));
            // Longer ticks than the other tests: this one asserts that no election
            // happens, which a loaded CI machine must not fake.
            cfg.tick = Duration::from_millis(20);
            Node::start(
                cfg,
                Persisted::default(),
                Box::new(TestStore {
                    stall: Arc::clone(&stalls[id as usize - 1]),
                    ..TestStore::default()
                }),
                transport(0xA0DE_0888, id, 3),
            )
            .unwrap()
        })
        .collect();
    // Dropped before the nodes.
    let _unstall = Unstall(stalls.clone());
    let h: Vec<_> = nodes.iter().map(|n| Some(n.handle())).collect();
    write(&h, &put(5, 1, "first", "x"));
    let leader = h
        .iter()
        .flatten()
        .find(|n| n.status().is_some_and(|s| s.role == "Leader"))
        .expect("a leader")
        .clone();
    let status = leader.status().unwrap();
    let (lid, term) = (status.id, status.term);
    stalls[lid.0 as usize - 1].store(true, Ordering::Relaxed);
    // One write per pass of the Raft thread, well past the storage queue's 1,024 Readies.
    let answers: Vec<_> = (2..1600u64)
        .map(|seq| {
            let a = leader.write(put(5, seq, &format!("k{seq}"), "v"));
            std::thread::sleep(Duration::from_micros(300));
            a
        })
        .collect();
    // Several election timeouts (200–400 ms here) later, the same leader in the same term.
    std::thread::sleep(Duration::from_millis(1000));
    for (i, n) in h.iter().enumerate() {
        if NodeId(i as u32 + 1) != lid {
            let s = n.as_ref().unwrap().status().unwrap();
            assert_eq!((s.term, s.leader), (term, Some(lid)), "node {}", i + 1);
        }
    }
    stalls[lid.0 as usize - 1].store(false, Ordering::Relaxed);
    for a in answers {
        match a.recv_timeout(Duration::from_secs(20)).unwrap() {
            Ok(_) | Err(NodeError::Busy) => {}
            Err(e) => panic!("write failed: {e}"),
        }
    }
    assert_eq!(leader.status().unwrap().term, term);
}

/// The test's side of a two-node cluster: node 2, leading term 1 by hand.
struct FakeLeader(Box<dyn Transport>);

impl FakeLeader {
    fn send(&self, body: weft_raft::Body) {
        let m = weft_raft::Message {
            from: NodeId(2),
            to: NodeId(1),
            term: 1,
            epoch: 0,
            body,
        };
        let _ = self.0.send(NodeId(1), m.encode());
    }

    /// Goes on leading (heartbeats) for `d`; returns the answer `read` got meanwhile, if any.
    fn hold(&self, d: Duration, read: &ReadAnswer) -> Option<Result<ReadResult, NodeError>> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.send(weft_raft::Body::Heartbeat {
                commit: 1,
                read_round: 0,
            });
            if let Ok(answer) = read.recv_timeout(Duration::from_millis(5)) {
                return Some(answer);
            }
        }
        None
    }

    /// Leads node 1 (entry 1 committed) and has it read `k`; returns the read's answer and
    /// the ctx the node forwarded it with.
    fn forwarded_read(&self, node: &NodeHandle) -> (ReadAnswer, u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut read = None;
        while Instant::now() < deadline {
            self.send(weft_raft::Body::Append {
                prev_index: 0,
                prev_term: 0,
                entries: vec![weft_raft::Entry {
                    term: 1,
                    index: 1,
                    payload: weft_raft::Payload::Empty,
                }],
                commit: 1,
            });
            if read.is_none() {
                let following = node
                    .status()
                    .is_some_and(|s| s.leader == Some(NodeId(2)) && s.applied >= 1);
                if following {
                    read = Some(node.read(Some("k".into()), true));
                }
            }
            while let Ok(d) = self.0.inbox().recv_timeout(Duration::from_millis(5)) {
                let forwarded =
                    weft_raft::Message::decode(&d.bytes)
                        .ok()
                        .and_then(|m| match m.body {
                            weft_raft::Body::ReadIndex { ctx } => Some(ctx),
                            _ => None,
                        });
                if let Some(ctx) = forwarded.filter(|_| read.is_some()) {
                    return (read.take().expect("checked"), ctx);
                }
            }
        }
        panic!("node 1 never forwarded a read");
    }
}

type ReadAnswer = crossbeam_channel::Receiver<Result<ReadResult, NodeError>>;

/// A read a follower forwards to the leader is answered only by the answer to that very
/// request. A node that crashed with a read in flight comes back with a new life: the
/// leader's answer to the old request (delayed, or retransmitted to the new process) must
/// not answer a new read with an index that may predate it. Read contexts used to restart
/// at 1 in every life, so exactly that happened.
#[test]
fn a_restarted_follower_ignores_read_answers_meant_for_its_previous_life() {
    let cluster = 0xC0_7E47;
    let leader = FakeLeader(transport(cluster, 2, 2));
    // Elections (which drain pending reads) only after two seconds of silence: a loaded
    // machine may delay the test's heartbeats.
    let patient = |c: &mut NodeConfig| c.raft.election_tick = 400;
    let first_life = start_with(cluster, 1, 2, patient);
    let (_pending, old_ctx) = leader.forwarded_read(&first_life.handle());
    drop(first_life);

    let second_life = start_with(cluster, 1, 2, patient);
    let (read, new_ctx) = leader.forwarded_read(&second_life.handle());
    // The answer to the first life's read: it must not answer the second life's.
    leader.send(weft_raft::Body::ReadIndexResponse {
        ctx: old_ctx,
        index: 1,
    });
    if let Some(answer) = leader.hold(Duration::from_millis(300), &read) {
        panic!(
            "answered by the answer to another life's read (ctx {old_ctx}, now {new_ctx}): \
             {answer:?}"
        );
    }
    leader.send(weft_raft::Body::ReadIndexResponse {
        ctx: new_ctx,
        index: 1,
    });
    match leader.hold(Duration::from_secs(10), &read) {
        Some(Ok(ReadResult::Value(None))) => {}
        other => panic!("{other:?}"),
    }
}

/// A follower cut off while 100,000 entries are written, then healed: it catches up, and
/// meanwhile no pass of any node takes three ticks (peers count silence in ticks, so a
/// longer pass risks an election), although the leader sends it the whole backlog.
#[test]
fn a_follower_far_behind_catches_up_without_long_passes() {
    const ENTRIES: u64 = 100_000;
    const BATCH: u64 = 2_000;
    let cluster = 0xA0DE_0107;
    let tick = Duration::from_millis(15);
    let nodes: Vec<Node> = (1..=3)
        .map(|i| {
            start_with(cluster, i, 3, |cfg| {
                cfg.tick = tick;
                cfg.snapshot_entries = 0; // the follower must be sent entries, not a snapshot
            })
        })
        .collect();
    let h: Vec<Option<NodeHandle>> = nodes.iter().map(|n| Some(n.handle())).collect();
    write(&h, &put(1, 1, "warm", "up"));
    let leader = h
        .iter()
        .flatten()
        .find(|n| n.status().unwrap().is_leader())
        .unwrap();
    let behind = follower(&h).status().unwrap().id;
    let fabric = weft_transport::backend::mem::MemFabric::shared(cluster, &MemConfig::default());
    fabric.set_partitions(vec![
        vec![behind],
        (1..=3).map(NodeId).filter(|n| *n != behind).collect(),
    ]);
    let value = "v".repeat(100);
    for batch in 0..ENTRIES / BATCH {
        let answers: Vec<_> = (0..BATCH)
            .map(|i| {
                let seq = 2 + batch * BATCH + i;
                leader.write(put(1, seq, &format!("k{}", seq % 1000), &value))
            })
            .collect();
        for a in answers {
            assert!(matches!(a.recv_timeout(Duration::from_secs(20)), Ok(Ok(_))));
        }
    }
    let target = leader.status().unwrap().commit;
    assert!(target > ENTRIES);
    let lagging = h.iter().flatten().find(|n| n.id() == behind).unwrap();
    assert!(lagging.status().unwrap().applied < 10, "it was cut off");
    fabric.set_partitions(vec![]);
    let healed = Instant::now();
    while lagging.status().unwrap().applied < target {
        assert!(
            healed.elapsed() < Duration::from_secs(60),
            "the follower is stuck at {:?} of {target}",
            lagging.status().unwrap().applied
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let caught_up = healed.elapsed();
    // After the heal a write commits within two election timeouts.
    let after = Instant::now();
    write(&h, &put(2, 1, "after", "heal"));
    assert!(after.elapsed() < tick * 10 * 2 * 2, "{:?}", after.elapsed());
    for n in h.iter().flatten() {
        let s = n.status().unwrap();
        eprintln!(
            "node {}: longest pass {} us (caught up in {caught_up:?})",
            s.id, s.longest_pass_us
        );
        assert!(
            Duration::from_micros(s.longest_pass_us) < tick * 3,
            "node {}: a pass took {} us",
            s.id,
            s.longest_pass_us
        );
    }
}
