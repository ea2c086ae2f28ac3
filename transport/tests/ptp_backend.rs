//! The `ptp` backend on loopback: one delivery order at every receiver from deadline
//! stamps (no sequencer), kernel receive timestamps, and `total_order` withdrawn — never
//! silently broken — when a member's clock is off by more than ε.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_transport::backend::ptp::PtpTransport;
use weft_transport::clock::{Clock, ShiftedClock};
use weft_transport::{
    open, BackendConfig, Capability, Counters, NodeId, NodeSpec, PtpConfig, Transport,
    TransportConfig,
};

fn addrs(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|_| {
            UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect()
}

fn config(cluster: u64, local: u32, addrs: &[SocketAddr], ptp: PtpConfig) -> TransportConfig {
    TransportConfig {
        nodes: NodeSpec::numbered(addrs),
        backend: BackendConfig::Ptp(ptp),
        require: vec![],
        // Within one datagram, so no fragment layer is stacked: the backend is tested bare.
        max_message: 1024,
        ..TransportConfig::mem(cluster, NodeId(local), addrs.len() as u32)
    }
}

/// Member `id` of `cluster` on loopback `addrs`, its clock shifted by `shift_ns` from this
/// host's (a member whose synchronization failed), ε = 1 ms.
fn shifted_member(
    cluster: u64,
    id: u32,
    addrs: &[SocketAddr],
    ptp: &PtpConfig,
    shift_ns: i64,
) -> PtpTransport {
    let clock: Arc<dyn Clock> = Arc::new(ShiftedClock {
        offset_ns: shift_ns,
        epsilon: Duration::from_millis(1),
    });
    let cfg = config(cluster, id, addrs, ptp.clone());
    PtpTransport::with_clock(&cfg, ptp, clock, None, Arc::new(Counters::default())).unwrap()
}

#[test]
fn every_receiver_releases_concurrent_multicasts_in_one_order() {
    let a = addrs(3);
    // A generous Δ: on a loaded 2-core machine a datagram can wait for a scheduler slot
    // for several ms, and a late message would leave the order (counted, checked below).
    let ptp = PtpConfig {
        delta_min_us: 30_000,
        delta_max_us: 60_000,
        epsilon_us: 1_000,
        ..PtpConfig::default()
    };
    let ts: Vec<Box<dyn Transport>> = (1..=3)
        .map(|i| open(&config(0x5054_0001, i, &a, ptp.clone())).unwrap())
        .collect();
    let caps = ts[0].capabilities();
    assert!(caps.total_order && !caps.reliable, "{caps}");
    assert_eq!(caps.synchronized_clock, Some(Duration::from_millis(1)));
    let all = [NodeId(1), NodeId(2), NodeId(3)];
    const N: u32 = 300;
    std::thread::scope(|s| {
        for (i, t) in ts.iter().enumerate() {
            s.spawn(move || {
                for k in 0..N {
                    let m = Bytes::from(format!("{}:{k}", i + 1));
                    t.multicast(&all, m).unwrap();
                    if k % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
        }
    });
    let orders: Vec<Vec<Bytes>> = ts
        .iter()
        .map(|t| {
            (0..3 * N)
                .map(|_| {
                    t.inbox()
                        .recv_timeout(Duration::from_secs(5))
                        .expect("delivery")
                        .bytes
                })
                .collect()
        })
        .collect();
    for (i, t) in ts.iter().enumerate() {
        assert_eq!(
            t.stats().late_deliveries,
            0,
            "node {} had late messages",
            i + 1
        );
    }
    // Each node got all 900 (its own included), in the same interleaving as the others.
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[1], orders[2]);
    // And that interleaving really mixes the senders (they ran concurrently).
    let first_sender = |o: &Vec<Bytes>| {
        o.iter()
            .take(N as usize)
            .map(|b| b[0])
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(first_sender(&orders[0]).len() > 1, "senders interleave");
}

#[test]
fn a_clock_beyond_epsilon_withdraws_total_order_and_loses_nothing() {
    let a = addrs(2);
    let ptp = PtpConfig {
        epsilon_us: 1_000,
        sync_interval_ms: 20,
        delta_min_us: 2_000,
        delta_max_us: 4_000,
        ..PtpConfig::default()
    };
    // Node 2's clock runs 8 ms ahead: far beyond ε.
    let t1 = shifted_member(0x5054_0002, 1, &a, &ptp, 0);
    let t2 = shifted_member(0x5054_0002, 2, &a, &ptp, 8_000_000);
    let deadline = Instant::now() + Duration::from_secs(5);
    while t1.capabilities().total_order || t2.capabilities().total_order {
        assert!(Instant::now() < deadline, "offset never detected");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!t1.capabilities().has(Capability::TotalOrder));
    let offsets = t1.clock_offsets();
    assert_eq!(offsets.len(), 1, "{offsets:?}");
    let (offset, delay) = (offsets[0].offset_ns, offsets[0].delay_ns);
    assert_eq!(offsets[0].peer, NodeId(2));
    assert!((0..50_000_000).contains(&delay), "delay {delay} ns");
    assert!((offset - 8_000_000).abs() < 1_000_000, "offset {offset} ns");
    // Messages still flow both ways. Node 2 sees node 1's deadlines already past: late,
    // delivered at once, counted.
    for i in 0..20u8 {
        t1.send(NodeId(2), Bytes::from(vec![i])).unwrap();
        t2.send(NodeId(1), Bytes::from(vec![i])).unwrap();
    }
    for t in [&t1, &t2] {
        let mut got: Vec<u8> = (0..20)
            .map(|_| {
                t.inbox()
                    .recv_timeout(Duration::from_secs(5))
                    .expect("delivered")
                    .bytes[0]
            })
            .collect();
        got.sort();
        assert_eq!(got, (0..20).collect::<Vec<u8>>());
    }
    assert!(t2.stats().late_deliveries >= 20, "{:?}", t2.stats());
}

#[test]
fn a_missing_hardware_clock_is_named() {
    let a = addrs(1);
    let ptp = PtpConfig {
        clock: "/dev/ptp-weft-none".into(),
        ..PtpConfig::default()
    };
    let err = open(&config(0x5054_0003, 1, &a, ptp))
        .err()
        .expect("no such clock")
        .to_string();
    assert!(err.contains("/dev/ptp-weft-none"), "{err}");
}

#[test]
fn layers_on_top_follow_the_backend_when_it_withdraws_total_order() {
    use weft_transport::layer::{LayeredTransport, StackBuilder};
    use weft_transport::LayerKind;
    let a = addrs(2);
    let ptp = PtpConfig {
        epsilon_us: 1_000,
        sync_interval_ms: 20,
        ..PtpConfig::default()
    };
    let b1 = shifted_member(0x5054_0004, 1, &a, &ptp, 0);
    let _b2 = shifted_member(0x5054_0004, 2, &a, &ptp, 8_000_000);
    let stack = StackBuilder::new(
        0x5054_0004,
        NodeId(1),
        &[NodeId(1), NodeId(2)],
        &[LayerKind::Fifo, LayerKind::Reliable],
        b1.capabilities().clone(),
    )
    .max_message(1000)
    .build(Arc::new(Counters::default()))
    .unwrap();
    let layered = LayeredTransport::new(Box::new(b1), stack).unwrap();
    assert!(layered.capabilities().reliable && layered.capabilities().fifo_per_peer);
    let deadline = Instant::now() + Duration::from_secs(5);
    while layered.capabilities().total_order {
        assert!(
            Instant::now() < deadline,
            "the stack kept claiming total_order"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        layered.capabilities().reliable,
        "the layers' own guarantees stay"
    );
    assert_eq!(
        layered.clock_offsets().len(),
        1,
        "offsets reach through the layers"
    );
}

#[test]
fn the_shipped_ptp_example_loads() {
    let root = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let cluster =
        weft_transport::ClusterConfig::load(root.join("../examples/cluster-ptp.toml")).unwrap();
    let cfg = cluster.transport_for(NodeId(1)).unwrap();
    let BackendConfig::Ptp(p) = &cfg.backend else {
        panic!("not ptp: {:?}", cfg.backend)
    };
    assert_eq!((p.clock.as_str(), p.epsilon_us), ("system", 100));
}
