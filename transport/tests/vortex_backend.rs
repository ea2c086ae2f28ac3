//! The `vortex` backend over the Data Vortex emulator: the fabric's guarantees are native,
//! so no software layer is stacked; a multicast is one place in one global order at every
//! receiver; errors name what to do.

use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_transport::{
    open, plan_layers, BackendConfig, Capability, ClusterConfig, NodeId, OpenError, Transport,
    TransportConfig, TransportError, VortexConfig,
};

fn config(fabric: &str, local: u32) -> TransportConfig {
    let mut cfg = TransportConfig::mem(9, NodeId(local), 3);
    cfg.backend = BackendConfig::Vortex(VortexConfig {
        fabric: fabric.into(),
    });
    cfg.require = vec![
        Capability::Reliable,
        Capability::FifoPerPeer,
        Capability::AuthenticatedSource,
        Capability::TotalOrder,
        Capability::Barrier,
    ];
    cfg
}

fn collect(t: &dyn Transport, n: usize) -> Vec<(NodeId, u64, Bytes)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = t
            .inbox()
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("node {} got {} of {n}", t.local(), got.len()));
        got.push((d.from, d.epoch, d.bytes));
    }
    got
}

#[test]
fn native_guarantees_no_layers_one_order_for_every_receiver() {
    let cfgs: Vec<TransportConfig> = (1..=3).map(|i| config("local:backend-order", i)).collect();
    let ts: Vec<Box<dyn Transport>> = cfgs.iter().map(|c| open(c).unwrap()).collect();
    let caps = ts[0].capabilities().clone();
    assert!(caps.reliable && caps.fifo_per_peer && caps.total_order && caps.barrier);
    assert!(caps.authenticated_source);
    assert_eq!(plan_layers(&cfgs[0], &caps).unwrap(), vec![]);

    // Every node multicasts 300 messages to all three (itself included), concurrently.
    let all = [NodeId(1), NodeId(2), NodeId(3)];
    std::thread::scope(|s| {
        for t in &ts {
            s.spawn(move || {
                for i in 0..300u32 {
                    let mut m = t.local().0.to_le_bytes().to_vec();
                    m.extend(i.to_le_bytes());
                    t.multicast(&all, Bytes::from(m)).unwrap();
                }
            });
        }
    });
    let seen: Vec<Vec<(NodeId, u64, Bytes)>> = ts.iter().map(|t| collect(&**t, 900)).collect();
    assert_eq!(seen[0], seen[1], "receivers 1 and 2 disagree on the order");
    assert_eq!(seen[1], seen[2], "receivers 2 and 3 disagree on the order");
    for (from, _, bytes) in &seen[0] {
        assert_eq!(
            &bytes[..4],
            &from.0.to_le_bytes(),
            "the stamp names the sender"
        );
    }
    assert!(
        seen[0].windows(2).all(|w| w[0].1 <= w[1].1),
        "epochs never go back"
    );

    // Unicast, broadcast (to the other members) and the errors.
    ts[0].send(NodeId(2), Bytes::from_static(b"one")).unwrap();
    ts[0].broadcast(Bytes::from_static(b"all")).unwrap();
    assert_eq!(
        collect(&*ts[1], 2)
            .iter()
            .map(|m| m.2.clone())
            .collect::<Vec<_>>(),
        ["one", "all"]
    );
    assert_eq!(collect(&*ts[2], 1)[0].2, "all");
    assert!(matches!(
        ts[0].send(NodeId(9), Bytes::new()),
        Err(TransportError::UnknownPeer(NodeId(9)))
    ));
    let big = Bytes::from(vec![0; caps.max_message + 1]);
    assert!(matches!(
        ts[0].send(NodeId(2), big),
        Err(TransportError::TooLarge { .. })
    ));
    assert!(ts[1].stats().delivered >= 902);
}

#[test]
fn a_missing_switch_or_a_taken_id_is_a_clear_error() {
    let err = open(&config("unix:/nonexistent/weft-switch.sock", 1))
        .err()
        .expect("no switch listens there");
    let text = err.to_string();
    assert!(matches!(err, OpenError::Fabric { .. }), "{text}");
    assert!(
        text.contains("unix:/nonexistent/weft-switch.sock"),
        "{text}"
    );
    assert!(text.contains("weft vortex-switch"), "{text}");

    let _first = open(&config("local:backend-taken", 1)).unwrap();
    let text = open(&config("local:backend-taken", 1))
        .err()
        .unwrap()
        .to_string();
    assert!(text.contains("already attached"), "{text}");
}

#[test]
fn the_shipped_vortex_example_loads_and_a_bad_fabric_name_is_named() {
    let root = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let cluster = ClusterConfig::load(root.join("../examples/cluster-vortex.toml")).unwrap();
    let t = cluster.transport_for(NodeId(2)).unwrap();
    assert_eq!(
        t.backend,
        BackendConfig::Vortex(VortexConfig {
            fabric: "unix:/tmp/weft-vortex.sock".into()
        })
    );
    assert_eq!(cluster.clients.len(), 3);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[cluster]\nid = 1\nnodes = [{ id = 1 }]\n[transport]\nkind = \"vortex\"\n\
         [transport.vortex]\nfabric = \"tcp://x\"\n",
    )
    .unwrap();
    let text = ClusterConfig::load(&bad).err().unwrap().to_string();
    assert!(text.contains("transport.vortex.fabric"), "{text}");
    let udp = dir.path().join("udp.toml");
    std::fs::write(
        &udp,
        "[cluster]\nid = 1\nnodes = [{ id = 1 }]\n[transport]\nkind = \"udp\"\n",
    )
    .unwrap();
    let text = ClusterConfig::load(&udp).err().unwrap().to_string();
    assert!(text.contains("cluster.nodes[0].addr"), "{text}");
}
