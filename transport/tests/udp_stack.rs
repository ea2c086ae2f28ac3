//! Three real UDP sockets on loopback, opened from a cluster config file with the full
//! layer stack (fragment, fifo, reliable, auth): messages large and small arrive exactly
//! once and in order; forged, foreign and malformed datagrams are rejected and counted.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_transport::frame::{encode, FrameHeader};
use weft_transport::{open, ClusterConfig, NodeId, Transport, TransportError};

const CLUSTER: u64 = 4242;

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cluster(dir: &tempfile::TempDir) -> ClusterConfig {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    std::fs::write(
        dir.path().join("k.key"),
        "# test key\n00112233445566778899aabbccddeeff0011\n",
    )
    .unwrap();
    let toml = format!(
        r#"
[cluster]
id = {CLUSTER}
nodes = [
  {{ id = 1, addr = "127.0.0.1:{}" }},
  {{ id = 2, addr = "127.0.0.1:{}" }},
  {{ id = 3, addr = "127.0.0.1:{}" }},
]
[transport]
kind = "udp"
require = ["reliable", "fifo_per_peer", "authenticated_source"]
max_message = 262144
[transport.reliable]
rto_ms = 5
max_rto_ms = 100
[security]
key_file = "k.key"
"#,
        ports[0], ports[1], ports[2]
    );
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, toml).unwrap();
    ClusterConfig::load(&path).unwrap()
}

fn msg(from: u32, seq: u32) -> Bytes {
    let len = if seq % 50 == 7 {
        100_000
    } else {
        16 + seq as usize % 200
    };
    let mut v = vec![(from as u8) ^ (seq as u8); len];
    v[..4].copy_from_slice(&from.to_le_bytes());
    v[4..8].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(v)
}

fn send_retrying(t: &dyn Transport, to: NodeId, m: Bytes) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match t.send(to, m.clone()) {
            Ok(()) => return,
            Err(TransportError::WindowFull { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("send: {e}"),
        }
    }
}

#[test]
fn full_stack_over_loopback_udp() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cluster(&dir);
    let nodes: Vec<Box<dyn Transport>> = cfg
        .node_ids()
        .into_iter()
        .map(|id| open(&cfg.transport_for(id).unwrap()).unwrap())
        .collect();
    let caps = nodes[0].capabilities();
    assert!(caps.reliable && caps.fifo_per_peer && caps.authenticated_source);
    assert_eq!(caps.max_message, 262_144);
    assert!(matches!(
        nodes[0].send(NodeId(2), Bytes::from(vec![0; 262_145])),
        Err(TransportError::TooLarge { .. })
    ));

    const N: u32 = 300;
    std::thread::scope(|s| {
        for t in &nodes {
            s.spawn(move || {
                for seq in 0..N {
                    for &p in t.peers() {
                        send_retrying(t.as_ref(), p, msg(t.local().0, seq));
                    }
                }
            });
        }
    });
    for t in &nodes {
        let mut next = [0u32; 4];
        for _ in 0..2 * N {
            let d = t
                .inbox()
                .recv_timeout(Duration::from_secs(20))
                .expect("delivery");
            let seq = u32::from_le_bytes(d.bytes[4..8].try_into().unwrap());
            assert_eq!(seq, next[d.from.0 as usize], "in order from {}", d.from);
            assert_eq!(d.bytes, msg(d.from.0, seq));
            next[d.from.0 as usize] += 1;
        }
    }
    assert!(nodes[0].stats().fast_path_hits > 0);

    // Hostile datagrams at node 1.
    let target = cfg.nodes[0].addr;
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let forged = encode(&FrameHeader::data(CLUSTER, NodeId(2)), &[0u8; 64]);
    let foreign = encode(&FrameHeader::data(CLUSTER + 1, NodeId(2)), &[0u8; 64]);
    let stranger = encode(&FrameHeader::data(CLUSTER, NodeId(99)), &[0u8; 64]);
    for d in [&forged[..], &foreign[..], &stranger[..], b"garbage"] {
        raw.send_to(d, target).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = nodes[0].stats();
        if s.rejected_bad_mac >= 1
            && s.rejected_wrong_cluster >= 1
            && s.rejected_unknown_source >= 1
            && s.rejected_malformed >= 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all rejections counted: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        nodes[0]
            .inbox()
            .recv_timeout(Duration::from_millis(100))
            .is_err(),
        "nothing hostile was delivered"
    );
}

/// The layer stack runs on the UDP receive thread (it diverts the backend to itself); the
/// backend belongs to the stack, so a reference cycle would keep the thread and its socket
/// alive after the transport is dropped. The port must be free again at once.
#[test]
fn dropping_a_layered_udp_transport_frees_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cluster(&dir);
    let addr = cfg.nodes[0].addr;
    let (t1, t2) = (
        open(&cfg.transport_for(NodeId(1)).unwrap()).unwrap(),
        open(&cfg.transport_for(NodeId(2)).unwrap()).unwrap(),
    );
    for seq in 0..20 {
        send_retrying(&*t2, NodeId(1), msg(2, seq));
    }
    for seq in 0..20 {
        let d = t1.inbox().recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(d.bytes, msg(2, seq));
    }
    drop(t1);
    UdpSocket::bind(addr).expect("the dropped transport's port is free");
}

/// A layered transport diverts too: what the stack delivers (reassembled, in order, once)
/// goes to the user's sink on the receive thread, never to the inbox; undiverted, the
/// inbox gets it again.
#[test]
fn a_diverted_layered_transport_delivers_to_its_sink_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cluster(&dir);
    let (t1, t2) = (
        open(&cfg.transport_for(NodeId(1)).unwrap()).unwrap(),
        open(&cfg.transport_for(NodeId(2)).unwrap()).unwrap(),
    );
    let (tx, got) = crossbeam_channel::unbounded();
    let here = std::thread::current().id();
    assert!(t1.divert(Some(Box::new(move |batch| {
        for d in batch.drain(..) {
            let _ = tx.send((d, std::thread::current().id()));
        }
    }))));
    const N: u32 = 60; // includes a 100 kB message, fragmented and reassembled
    for seq in 0..N {
        send_retrying(&*t2, NodeId(1), msg(2, seq));
    }
    for seq in 0..N {
        let (d, thread) = got.recv_timeout(Duration::from_secs(10)).expect("delivery");
        assert_eq!(d.bytes, msg(2, seq), "in order, whole");
        assert_ne!(thread, here, "run on the receive thread");
    }
    assert!(t1.inbox().try_recv().is_err(), "nothing went to the inbox");
    assert!(t1.divert(None));
    send_retrying(&*t2, NodeId(1), msg(2, N));
    let d = t1.inbox().recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(d.bytes, msg(2, N));
    assert!(got.try_recv().is_err());
}
