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
    // Total order is claimed once every member measured the others' clocks within ε.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ts.iter().any(|t| !t.capabilities().total_order) {
        assert!(Instant::now() < deadline, "clocks never measured");
        std::thread::sleep(Duration::from_millis(5));
    }
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
    while t1.clock_offsets().is_empty() || t2.clock_offsets().is_empty() {
        assert!(Instant::now() < deadline, "offset never measured");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!t1.capabilities().has(Capability::TotalOrder));
    let offsets = t1.clock_offsets();
    assert_eq!(offsets.len(), 1, "{offsets:?}");
    let (offset, delay) = (offsets[0].offset_ns, offsets[0].delay_ns);
    assert_eq!(offsets[0].peer, NodeId(2));
    assert!((0..50_000_000).contains(&delay), "delay {delay} ns");
    // A two-way exchange bounds the estimate's error by half its round trip, which a busy
    // machine can stretch past a millisecond.
    assert!(
        (offset - 8_000_000).abs() <= (delay / 2 + 1_000).max(1_000_000),
        "offset {offset} ns, delay {delay} ns"
    );
    // Messages still flow both ways, without being held for an order no longer promised.
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
}

/// A sender whose deadline lies further ahead than any Δ (its clock is off by more than
/// the largest hold) has its messages delivered at once as late, not held for that long.
#[test]
fn deadlines_beyond_any_delta_are_not_held() {
    let a = addrs(2);
    let ptp = PtpConfig {
        epsilon_us: 1_000,
        delta_max_us: 5_000,
        // Measure rarely, so the receiver still believes in the order when the message
        // arrives.
        sync_interval_ms: 60_000,
        ..PtpConfig::default()
    };
    let t1 = shifted_member(0x5054_0006, 1, &a, &ptp, 0);
    let t2 = shifted_member(0x5054_0006, 2, &a, &ptp, 3_000_000_000);
    let started = Instant::now();
    t2.send(NodeId(1), Bytes::from_static(b"from the future"))
        .unwrap();
    let d = t1
        .inbox()
        .recv_timeout(Duration::from_secs(2))
        .expect("not held for 3 s");
    assert_eq!(&d.bytes[..], b"from the future");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(t1.stats().late_deliveries, 1);
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
fn layers_on_top_claim_total_order_exactly_while_the_backend_does() {
    use weft_transport::layer::{LayeredTransport, StackBuilder};
    use weft_transport::LayerKind;
    let ptp = PtpConfig {
        epsilon_us: 1_000,
        sync_interval_ms: 20,
        ..PtpConfig::default()
    };
    // Node 1 under fifo + reliable, its peer's clock `shift_ns` off; total order as the
    // stack reports it once the peer was measured.
    let layered_claim = |cluster: u64, shift_ns: i64| {
        let a = addrs(2);
        let b1 = shifted_member(cluster, 1, &a, &ptp, 0);
        let _b2 = shifted_member(cluster, 2, &a, &ptp, shift_ns);
        let stack = StackBuilder::new(
            cluster,
            NodeId(1),
            &[NodeId(1), NodeId(2)],
            &[LayerKind::Fifo, LayerKind::Reliable],
            b1.capabilities().clone(),
        )
        .max_message(1000)
        .build(Arc::new(Counters::default()))
        .unwrap();
        let layered = LayeredTransport::new(Box::new(b1), stack).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Offsets reach through the layers.
        while layered.clock_offsets().is_empty() {
            assert!(Instant::now() < deadline, "never measured");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        let caps = layered.capabilities().clone();
        assert!(
            caps.reliable && caps.fifo_per_peer,
            "the layers' own guarantees"
        );
        assert!(!caps.loopback, "layers do not deliver to the sender");
        caps.total_order
    };
    assert!(
        layered_claim(0x5054_0004, 0),
        "clocks agree: the stack has total order"
    );
    assert!(
        !layered_claim(0x5054_0005, 8_000_000),
        "8 ms off: withdrawn through the stack"
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
