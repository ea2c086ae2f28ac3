//! The `rdma` backend: on emulated verbs it is reliable and FIFO per peer, so no software
//! layer is stacked for those; a device that is not there is a clear error, not a panic or
//! a hang.

use std::time::Duration;

use bytes::Bytes;
use weft_transport::{
    open, plan_layers, BackendConfig, Capability, ClusterConfig, NodeId, OpenError, RdmaConfig,
    TransportConfig, TransportError,
};

fn config(cluster: u64, local: u32, device: &str) -> TransportConfig {
    let mut cfg = TransportConfig::mem(cluster, NodeId(local), 3);
    cfg.backend = BackendConfig::Rdma(RdmaConfig {
        device: device.into(),
        ring_bytes: 64 * 1024,
        ..RdmaConfig::default()
    });
    cfg.require = vec![Capability::Reliable, Capability::FifoPerPeer];
    cfg.max_message = 16 * 1024;
    cfg
}

#[test]
fn emulated_rings_carry_messages_in_order_with_no_layers() {
    let ts: Vec<_> = (1..=3)
        .map(|i| open(&config(0x4D4D_0001, i, "emulated")).unwrap())
        .collect();
    let caps = ts[0].capabilities().clone();
    assert!(caps.reliable && caps.fifo_per_peer && !caps.total_order);
    assert_eq!(caps.max_message, 32 * 1024);
    assert_eq!(
        plan_layers(&config(0x4D4D_0001, 1, "emulated"), &caps).unwrap(),
        vec![]
    );
    for i in 0..2000u32 {
        let mut m = i.to_le_bytes().to_vec();
        m.resize(8 + (i as usize * 37) % 9000, 0xab);
        let m = Bytes::from(m);
        // A full window is back-pressure: the receiver has not caught up yet; retry.
        while let Err(e) = ts[0].send(NodeId(2), m.clone()) {
            assert!(matches!(e, TransportError::WindowFull { .. }), "{e}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    ts[2].broadcast(Bytes::from_static(b"to all")).unwrap();
    // Node 2 gets node 1's 2,000 in order, and node 3's broadcast somewhere among them
    // (different senders are not ordered with each other: no total order).
    let mut from1 = 0u32;
    let mut from3 = Vec::new();
    for _ in 0..2001 {
        let d = ts[1].inbox().recv_timeout(Duration::from_secs(10)).unwrap();
        if d.from == NodeId(3) {
            from3.push(d.bytes);
            continue;
        }
        assert_eq!(d.from, NodeId(1));
        assert_eq!(&d.bytes[..4], &from1.to_le_bytes(), "order kept");
        assert_eq!(d.bytes.len(), 8 + (from1 as usize * 37) % 9000);
        from1 += 1;
    }
    assert_eq!(from3, vec![Bytes::from_static(b"to all")]);
    let d = ts[0].inbox().recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((d.from, &d.bytes[..]), (NodeId(3), &b"to all"[..]));
    assert!(ts[0].send(NodeId(2), Bytes::from(vec![0; 40_000])).is_err());
    // A member opens once per emulated fabric.
    assert!(open(&config(0x4D4D_0001, 1, "emulated")).is_err());
}

#[test]
fn a_missing_device_is_named_in_the_error() {
    let err = open(&config(0x4D4D_0002, 1, "mlx5_weft_test"))
        .err()
        .expect("no such device");
    let text = err.to_string();
    assert!(matches!(err, OpenError::Fabric { .. }), "{text}");
    assert!(text.contains("mlx5_weft_test"), "{text}");
    assert!(
        text.contains("no RDMA device found") || text.contains("not found"),
        "{text}"
    );
}

#[test]
fn rdma_config_is_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rdma.toml");
    let text = |ring: &str| {
        format!(
            "[cluster]\nid = 1\nnodes = [{{ id = 1 }}, {{ id = 2 }}]\n[transport]\nkind = \"rdma\"\n\
             [transport.rdma]\ndevice = \"emulated\"\nring_bytes = {ring}\n"
        )
    };
    std::fs::write(&file, text("65536")).unwrap();
    let cfg = ClusterConfig::load(&file).unwrap();
    assert!(matches!(
        cfg.transport_for(NodeId(1)).unwrap().backend,
        BackendConfig::Rdma(RdmaConfig {
            ring_bytes: 65536,
            ..
        })
    ));
    std::fs::write(&file, text("1001")).unwrap();
    let err = ClusterConfig::load(&file).err().unwrap().to_string();
    assert!(err.contains("transport.rdma.ring_bytes"), "{err}");
}

#[test]
fn the_shipped_rdma_example_loads() {
    let root = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let cluster = ClusterConfig::load(root.join("../examples/cluster-rdma.toml")).unwrap();
    let cfg = cluster.transport_for(NodeId(2)).unwrap();
    let BackendConfig::Rdma(r) = &cfg.backend else {
        panic!("not rdma: {:?}", cfg.backend)
    };
    assert_eq!(
        (r.device.as_str(), r.completion),
        ("mlx5_0", weft_transport::Completion::Event)
    );
    assert_eq!(cfg.nodes[1].addr, "10.0.0.2:7471".parse().unwrap());
}

#[test]
fn a_real_device_needs_handshake_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rdma.toml");
    let load = |nodes: &str, rdma: &str| {
        let text = format!(
            "[cluster]\nid = 1\nnodes = [{nodes}]\n[transport]\nkind = \"rdma\"\n\
             [transport.rdma]\n{rdma}\n"
        );
        std::fs::write(&file, text).unwrap();
        ClusterConfig::load(&file)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let two = r#"{ id = 1, addr = "10.0.0.1:7471" }, { id = 2, addr = "10.0.0.2:7471" }"#;
    load(two, "device = \"mlx5_0\"").unwrap();
    // The emulation needs no addresses; a NIC does, with a port, one per member.
    load("{ id = 1 }, { id = 2 }", "device = \"emulated\"").unwrap();
    for (nodes, says) in [
        (
            r#"{ id = 1, addr = "10.0.0.1:7471" }, { id = 2 }"#,
            "cluster.nodes[1].addr",
        ),
        (
            r#"{ id = 1, addr = "10.0.0.1:0" }, { id = 2, addr = "10.0.0.2:1" }"#,
            "port 0",
        ),
        (
            r#"{ id = 1, addr = "10.0.0.1:9" }, { id = 2, addr = "10.0.0.1:9" }"#,
            "distinct",
        ),
    ] {
        let err = load(nodes, "device = \"mlx5_0\"").unwrap_err();
        assert!(err.contains(says), "{nodes}: {err}");
    }
    let err = load(two, "device = \"mlx5_0\"\nhandshake_timeout_ms = 0").unwrap_err();
    assert!(err.contains("handshake_timeout_ms"), "{err}");
    let err = load(two, "device = \"mlx5_0\"\ncompletion = \"sometimes\"").unwrap_err();
    assert!(
        err.contains("completion") || err.contains("sometimes"),
        "{err}"
    );
}
