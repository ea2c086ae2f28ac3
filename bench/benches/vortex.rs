//! Raft on the Data Vortex emulator against the emulator's own round trip, in one run, and
//! next to the same cluster on UDP with the software layers a production UDP cluster uses
//! (fifo, reliable, auth). After the timings it prints the fabric messages each committed
//! write cost on both (the slides claim over 50 % fewer on Data Vortex).
//!
//! - `vortex/rtt`, `udp/rtt`: a 64-byte round trip to an echo thread.
//! - `vortex/commit_1`, `udp/commit_1`: one proposal at the leader of a 3-node cluster
//!   until it is committed there (no disk).
//! - `vortex/commit_64`, `udp/commit_64`: 64 proposals in flight.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use weft_bench::raft_cluster::Cluster;
use weft_bench::{cluster_config, echo_pair, loopback_addrs};
use weft_transport::{
    open, BackendConfig, Capability, LayerKind, NodeId, Transport, UdpConfig, VortexConfig,
};

const WAIT: Duration = Duration::from_secs(5);

fn vortex(name: &str) -> BackendConfig {
    BackendConfig::Vortex(VortexConfig {
        fabric: format!("local:{name}"),
    })
}

/// Loopback carries 64 KiB datagrams; larger appends are fragmented.
fn udp() -> BackendConfig {
    BackendConfig::Udp(UdpConfig {
        max_datagram: 65507,
        ..UdpConfig::default()
    })
}

/// The UDP cluster's layers: what `require = [reliable, fifo_per_peer,
/// authenticated_source]` stacks, with fragmentation for appends beyond a datagram.
fn udp_layers() -> Vec<LayerKind> {
    use LayerKind::*;
    vec![Fragment, Fifo, Reliable, Auth]
}

fn cluster(id: u64, backend: impl Fn() -> BackendConfig, layers: Vec<LayerKind>) -> Cluster {
    let addrs = loopback_addrs(3);
    let transports: Vec<Box<dyn Transport>> = (1..=3)
        .map(|i| {
            let mut cfg = cluster_config(id, i, &addrs, backend(), Some(layers.clone()), true);
            cfg.max_message = 1 << 20;
            if matches!(cfg.backend, BackendConfig::Vortex(_)) {
                cfg.require
                    .extend([Capability::TotalOrder, Capability::Barrier]);
            }
            open(&cfg).expect("open a benchmark transport")
        })
        .collect();
    Cluster::new(transports)
}

fn bench(c: &mut Criterion) {
    let msg = Bytes::from(vec![1u8; 64]);
    let payload = Bytes::from(vec![7u8; 100]);
    let mut messages = Vec::new();
    for (name, is_vortex) in [("vortex", true), ("udp", false)] {
        let id = if is_vortex { 0xD7_0001 } else { 0xD7_0002 };
        let mut group = c.benchmark_group(name);
        {
            let (a, _echo) = if is_vortex {
                echo_pair(id, || vortex("bench-rtt"), vec![], true)
            } else {
                echo_pair(id, udp, udp_layers(), true)
            };
            group.bench_function("rtt", |b| {
                b.iter(|| {
                    a.send(NodeId(2), msg.clone()).unwrap();
                    a.inbox().recv_timeout(WAIT).unwrap();
                })
            });
        }
        let mut cl = if is_vortex {
            cluster(id + 10, || vortex("bench-raft"), vec![])
        } else {
            cluster(id + 10, udp, udp_layers())
        };
        group.bench_function("commit_1", |b| b.iter(|| cl.commit(1, &payload)));
        group.bench_function("commit_64", |b| b.iter(|| cl.commit(64, &payload)));
        group.finish();
        // Messages per committed write: 2,000 writes one at a time, frames on the wire.
        let before = cl.frames_sent();
        for _ in 0..2000 {
            cl.commit(1, &payload);
        }
        messages.push((name, (cl.frames_sent() - before) as f64 / 2000.0));
    }
    for (name, m) in &messages {
        println!("messages per committed write (3 nodes, one write at a time): {name} {m:.2}");
    }
    println!(
        "vortex / udp messages per write: {:.2}",
        messages[0].1 / messages[1].1
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
