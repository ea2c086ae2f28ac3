//! The `rdma` backend on a real RDMA NIC: queue pairs, registered rings, the TCP handshake
//! and completion events, end to end. Needs an InfiniBand or RoCE NIC (e.g. a Mellanox
//! ConnectX, `mlx5_0`) or a software provider (`rdma link add rxe0 type rxe netdev eth0`)
//! with an active port, so these tests are ignored by default; run them with
//!
//! ```text
//! WEFT_RDMA_DEVICE=mlx5_0 cargo test -p weft-transport -- --ignored rdma
//! ```
//!
//! (`WEFT_RDMA_PORT` and `WEFT_RDMA_GID_INDEX` override port 1 and GID index 0; RoCE
//! usually needs the index of a RoCEv2 GID, see `show_gids`.) The three members run in this
//! process, so their queue pairs connect through the NIC's loopback.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_transport::{
    open, BackendConfig, Capability, Completion, NodeId, NodeSpec, RdmaConfig, Transport,
    TransportConfig, TransportError,
};

fn env_or(name: &str, default: u8) -> u8 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Members 1..=n on the NIC named by `WEFT_RDMA_DEVICE`, opened at once (each open waits
/// for the others' handshakes).
fn members(cluster: u64, n: u32, completion: Completion) -> Vec<Box<dyn Transport>> {
    let device = std::env::var("WEFT_RDMA_DEVICE")
        .expect("set WEFT_RDMA_DEVICE to the verbs device to test (see ibv_devices)");
    let addrs: Vec<SocketAddr> = (0..n)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let config = |local: u32| TransportConfig {
        nodes: NodeSpec::numbered(&addrs),
        backend: BackendConfig::Rdma(RdmaConfig {
            device: device.clone(),
            port: env_or("WEFT_RDMA_PORT", 1),
            gid_index: env_or("WEFT_RDMA_GID_INDEX", 0),
            ring_bytes: 1 << 20,
            completion,
            handshake_timeout_ms: 10_000,
        }),
        require: vec![Capability::Reliable, Capability::FifoPerPeer],
        max_message: 256 * 1024,
        ..TransportConfig::mem(cluster, NodeId(local), n)
    };
    std::thread::scope(|s| {
        let opening: Vec<_> = (1..=n)
            .map(|i| {
                let cfg = config(i);
                s.spawn(move || open(&cfg).expect("open on the NIC"))
            })
            .collect();
        opening.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn send_retrying(t: &dyn Transport, to: NodeId, m: Bytes) {
    let start = Instant::now();
    while let Err(e) = t.send(to, m.clone()) {
        assert!(matches!(e, TransportError::WindowFull { .. }), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "receiver never drained"
        );
        std::thread::yield_now();
    }
}

#[test]
#[ignore = "needs an RDMA NIC: set WEFT_RDMA_DEVICE (e.g. mlx5_0)"]
fn rdma_nic_carries_every_message_in_order_without_layers() {
    for (cluster, mode) in [
        (0x4E49_0001, Completion::Busy),
        (0x4E49_0002, Completion::Event),
    ] {
        let ts = members(cluster, 3, mode);
        let caps = ts[0].capabilities().clone();
        assert!(caps.reliable && caps.fifo_per_peer && !caps.total_order);
        const N: u32 = 100_000;
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..N {
                    let mut m = i.to_le_bytes().to_vec();
                    m.resize(4 + (i as usize * 131) % 70_000, i as u8);
                    send_retrying(ts[0].as_ref(), NodeId(2), Bytes::from(m));
                }
            });
            s.spawn(|| {
                for i in 0..N {
                    send_retrying(
                        ts[2].as_ref(),
                        NodeId(2),
                        Bytes::from(i.to_le_bytes().to_vec()),
                    );
                }
            });
            let (mut from1, mut from3) = (0u32, 0u32);
            while from1 < N || from3 < N {
                let d = ts[1]
                    .inbox()
                    .recv_timeout(Duration::from_secs(10))
                    .expect("delivery");
                let seq = u32::from_le_bytes(d.bytes[..4].try_into().unwrap());
                let next = if d.from == NodeId(1) {
                    &mut from1
                } else {
                    &mut from3
                };
                assert_eq!(seq, *next, "{mode:?}: order from node {} kept", d.from);
                if d.from == NodeId(1) {
                    assert_eq!(d.bytes.len(), 4 + (seq as usize * 131) % 70_000);
                    assert!(
                        d.bytes[4..].iter().all(|&b| b == seq as u8),
                        "payload intact"
                    );
                }
                *next += 1;
            }
        });
    }
}

#[test]
#[ignore = "needs an RDMA NIC: set WEFT_RDMA_DEVICE (e.g. mlx5_0)"]
fn rdma_nic_round_trips_in_both_completion_modes() {
    for (cluster, mode) in [
        (0x4E49_0003, Completion::Busy),
        (0x4E49_0004, Completion::Event),
    ] {
        let ts = members(cluster, 2, mode);
        let ping = Bytes::from_static(&[7u8; 32]);
        let mut rtts = Vec::new();
        for _ in 0..10_000 {
            let start = Instant::now();
            ts[0].send(NodeId(2), ping.clone()).unwrap();
            let d = ts[1].inbox().recv_timeout(Duration::from_secs(5)).unwrap();
            ts[1].send(NodeId(1), d.bytes).unwrap();
            ts[0].inbox().recv_timeout(Duration::from_secs(5)).unwrap();
            rtts.push(start.elapsed());
        }
        rtts.sort();
        eprintln!(
            "{mode:?}: round trip p50 {:?}, p99 {:?}",
            rtts[5_000], rtts[9_900]
        );
    }
}
