//! Endpoints opened through `open` on the `mem` fabric with its fault plan on (10 % loss,
//! duplicates, reordering), on real threads: with `reliable` + `fifo` layered on, 10,000
//! messages among 4 nodes each arrive exactly once and in per-sender order; without them,
//! nothing arrives that was not sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_transport::{
    open, BackendConfig, Capability, LayerTuning, MemConfig, NodeId, NodeSpec, Transport,
    TransportConfig, TransportError,
};

const NODES: u32 = 4;
const PER_NODE: u32 = 2500;

fn config(
    cluster: u64,
    local: u32,
    require: Vec<Capability>,
    faults: &MemConfig,
) -> TransportConfig {
    TransportConfig {
        cluster_id: cluster,
        local: NodeId(local),
        nodes: (1..=NODES)
            .map(|i| NodeSpec {
                id: NodeId(i),
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            })
            .collect(),
        backend: BackendConfig::Mem(faults.clone()),
        require,
        max_message: 4096,
        layers: None,
        fast_path: true,
        tuning: LayerTuning {
            rto: Duration::from_millis(5),
            max_rto: Duration::from_millis(50),
            ..LayerTuning::default()
        },
        key: None,
    }
}

fn faults(seed: u64) -> MemConfig {
    MemConfig {
        seed,
        drop: 0.10,
        duplicate: 0.05,
        reorder: 0.10,
        max_delay_us: 500,
        ..MemConfig::default()
    }
}

/// Message = sender id, sequence number, and a body derived from both.
fn message(from: u32, seq: u32) -> Bytes {
    let mut v = Vec::with_capacity(8 + 32);
    v.extend_from_slice(&from.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((0..(seq % 32)).map(|i| (from * 31 + seq + i) as u8));
    Bytes::from(v)
}

fn parse(m: &[u8]) -> (u32, u32) {
    (
        u32::from_le_bytes(m[0..4].try_into().unwrap()),
        u32::from_le_bytes(m[4..8].try_into().unwrap()),
    )
}

fn open_all(cluster: u64, require: Vec<Capability>, faults: &MemConfig) -> Vec<Box<dyn Transport>> {
    (1..=NODES)
        .map(|i| open(&config(cluster, i, require.clone(), faults)).expect("open"))
        .collect()
}

/// Node `i` sends its k-th message to peer `k % 3`, retrying while the window is full.
fn send_all(nodes: &[Box<dyn Transport>], deadline: Instant) {
    std::thread::scope(|s| {
        for t in nodes {
            s.spawn(move || {
                let me = t.local().0;
                for seq in 0..PER_NODE {
                    let to = t.peers()[seq as usize % t.peers().len()];
                    loop {
                        match t.send(to, message(me, seq)) {
                            Ok(()) => break,
                            Err(TransportError::WindowFull { .. }) if Instant::now() < deadline => {
                                std::thread::sleep(Duration::from_micros(200))
                            }
                            Err(e) => panic!("send failed: {e}"),
                        }
                    }
                }
            });
        }
    });
}

#[test]
fn reliable_fifo_layers_deliver_exactly_once_in_order() {
    let f = faults(11);
    let nodes = open_all(
        0xFA17_0001,
        vec![Capability::Reliable, Capability::FifoPerPeer],
        &f,
    );
    assert!(nodes[0].capabilities().reliable && nodes[0].capabilities().fifo_per_peer);
    let deadline = Instant::now() + Duration::from_secs(60);
    send_all(&nodes, deadline);
    let expected_per_receiver = |to: u32| -> usize {
        (1..=NODES)
            .filter(|f| *f != to)
            .map(|f| {
                let peers: Vec<u32> = (1..=NODES).filter(|p| *p != f).collect();
                (0..PER_NODE)
                    .filter(|s| peers[*s as usize % peers.len()] == to)
                    .count()
            })
            .sum()
    };
    for t in &nodes {
        let me = t.local().0;
        let want = expected_per_receiver(me);
        let mut last: HashMap<u32, u32> = HashMap::new();
        let mut got = 0;
        while got < want {
            let left = deadline.saturating_duration_since(Instant::now());
            let d = t
                .inbox()
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("node {me}: only {got} of {want} arrived"));
            let (from, seq) = parse(&d.bytes);
            assert_eq!(d.from.0, from, "source stamped correctly");
            assert_eq!(d.bytes, message(from, seq), "payload intact");
            if let Some(prev) = last.insert(from, seq) {
                assert!(seq > prev, "node {me}: from {from} seq {seq} after {prev}");
            }
            got += 1;
        }
        // Nothing beyond: no duplicate trails in.
        assert!(t.inbox().recv_timeout(Duration::from_millis(100)).is_err());
    }
    let total: u64 = nodes.iter().map(|t| t.stats().retransmits).sum();
    let dropped: u64 = nodes.iter().map(|t| t.stats().fault_dropped).sum();
    assert!(dropped > 500, "the fault plan dropped {dropped} frames");
    assert!(total > 0, "losses were repaired by retransmission");
}

#[test]
fn without_layers_nothing_arrives_that_was_not_sent() {
    let f = faults(12);
    let nodes = open_all(0xFA17_0002, vec![], &f);
    assert!(!nodes[0].capabilities().reliable);
    send_all(&nodes, Instant::now() + Duration::from_secs(30));
    let mut received = 0u64;
    for t in &nodes {
        while let Ok(d) = t.inbox().recv_timeout(Duration::from_millis(200)) {
            let (from, seq) = parse(&d.bytes);
            assert_eq!(d.from.0, from);
            assert!(seq < PER_NODE);
            assert_eq!(d.bytes, message(from, seq), "never corrupted or invented");
            received += 1;
        }
    }
    let sent = u64::from(NODES * PER_NODE);
    // About 10 % lost and 5 % duplicated: well short of twice what was sent, and some lost.
    assert!(received < sent * 2, "{received} received of {sent}");
    assert!(received > sent / 2, "{received} received of {sent}");
    let dropped: u64 = nodes.iter().map(|t| t.stats().fault_dropped).sum();
    assert!(dropped > 0);
}
