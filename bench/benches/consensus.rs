//! Consensus on every transport this build has, each next to that transport's own one-way
//! hop and round trip measured in the same run: commit latency (propose → committed at the
//! leader, no disk) and throughput with 64 and 256 proposals in flight, for 3 and 5 nodes;
//! and commit latency by payload size (0 B, 100 B, 1000 B, 64 KiB) for 3 nodes. After the
//! timings it prints the fabric messages each committed write cost on each transport (the
//! Data Vortex slides claim over 50 % fewer than over UDP).
//!
//! Transports: `mem`; `udp` on loopback with the layers a production UDP cluster stacks
//! (fragment, fifo, reliable, auth); `ptp` with the same layers over deadline-ordered UDP
//! (default Δ and ε: the price of one delivery order); `vortex` on the in-process Data
//! Vortex emulator; `rdma`
//! on emulated verbs; and `rdma-nic` on a real NIC when `WEFT_RDMA_DEVICE` names one (e.g.
//! `WEFT_RDMA_DEVICE=mlx5_0 cargo bench -p weft-bench --bench consensus`).

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_bench::raft_cluster::Cluster;
use weft_bench::{cluster_config, echo_pair, loopback_addrs};
use weft_transport::{
    open, BackendConfig, Capability, LayerKind, MemConfig, NodeId, PtpConfig, RdmaConfig,
    Transport, UdpConfig, VortexConfig,
};

const WAIT: Duration = Duration::from_secs(5);

/// A transport under test: its backend for cluster `id`, and the layers it runs with.
struct Fabric {
    name: &'static str,
    backend: fn(u64) -> BackendConfig,
    layers: fn() -> Vec<LayerKind>,
}

const FABRICS: [Fabric; 6] = [
    Fabric {
        name: "mem",
        backend: |_| {
            BackendConfig::Mem(MemConfig {
                max_frame: 4 << 20,
                ..MemConfig::default()
            })
        },
        layers: Vec::new,
    },
    Fabric {
        name: "udp",
        backend: |_| {
            BackendConfig::Udp(UdpConfig {
                max_datagram: 65507,
                ..UdpConfig::default()
            })
        },
        layers: production_layers,
    },
    Fabric {
        name: "ptp",
        backend: |_| {
            BackendConfig::Ptp(PtpConfig {
                max_datagram: 65507,
                ..PtpConfig::default()
            })
        },
        layers: production_layers,
    },
    Fabric {
        name: "vortex",
        backend: |id| {
            BackendConfig::Vortex(VortexConfig {
                fabric: format!("local:consensus-{id:x}"),
            })
        },
        layers: Vec::new,
    },
    Fabric {
        name: "rdma",
        backend: |_| {
            BackendConfig::Rdma(RdmaConfig {
                ring_bytes: 1 << 20,
                ..RdmaConfig::default()
            })
        },
        layers: Vec::new,
    },
    Fabric {
        name: "rdma-nic",
        backend: |_| {
            BackendConfig::Rdma(RdmaConfig {
                device: std::env::var(NIC).unwrap_or_default(),
                ring_bytes: 1 << 20,
                ..RdmaConfig::default()
            })
        },
        layers: Vec::new,
    },
];

/// The stack a production cluster puts on a datagram fabric.
fn production_layers() -> Vec<LayerKind> {
    use LayerKind::*;
    vec![Fragment, Fifo, Reliable, Auth]
}

/// Names the real RDMA device to benchmark; without it `rdma-nic` is skipped.
const NIC: &str = "WEFT_RDMA_DEVICE";

/// `n` members of cluster `id` on `f`.
fn transports(f: &Fabric, id: u64, n: u32) -> Vec<Box<dyn Transport>> {
    let addrs = loopback_addrs(n as usize);
    // Opened at once: a real NIC's open waits for every peer's handshake.
    std::thread::scope(|s| {
        let opening: Vec<_> = (1..=n)
            .map(|i| {
                let mut cfg =
                    cluster_config(id, i, &addrs, (f.backend)(id), Some((f.layers)()), true);
                cfg.max_message = 1 << 20;
                if f.name == "vortex" {
                    cfg.require
                        .extend([Capability::TotalOrder, Capability::Barrier]);
                }
                s.spawn(move || open(&cfg).expect("open a benchmark transport"))
            })
            .collect();
        opening.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn bench(c: &mut Criterion) {
    let ping = Bytes::from(vec![1u8; 64]);
    let payload = Bytes::from(vec![7u8; 100]);
    let mut id = 0xC0_0000u64;
    let mut messages = Vec::new();
    for f in &FABRICS {
        if f.name == "rdma-nic" && std::env::var_os(NIC).is_none() {
            continue;
        }
        let mut group = c.benchmark_group(f.name);
        id += 0x100;
        {
            let t = transports(f, id + 0x80, 2);
            group.bench_function("hop", |b| {
                b.iter(|| {
                    t[0].send(NodeId(2), ping.clone()).unwrap();
                    t[1].inbox().recv_timeout(WAIT).unwrap();
                })
            });
        }
        {
            let (a, _echo) = echo_pair(id, || (f.backend)(id), (f.layers)(), true);
            group.bench_function("rtt", |b| {
                b.iter(|| {
                    a.send(NodeId(2), ping.clone()).unwrap();
                    a.inbox().recv_timeout(WAIT).unwrap();
                })
            });
        }
        for n in [3u32, 5] {
            id += 1;
            let mut cl = Cluster::new(transports(f, id, n));
            group.throughput(Throughput::Elements(1));
            group.bench_function(BenchmarkId::new(format!("{n}-node/commit"), 1), |b| {
                b.iter(|| cl.commit(1, &payload))
            });
            for batch in [64usize, 256] {
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_function(
                    BenchmarkId::new(format!("{n}-node/proposers"), batch),
                    |b| b.iter(|| cl.commit(batch, &payload)),
                );
            }
        }
        id += 1;
        let mut cl = Cluster::new(transports(f, id, 3));
        for size in [0usize, 100, 1000, 64 * 1024] {
            let p = Bytes::from(vec![7u8; size]);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(BenchmarkId::new("3-node/payload", size), |b| {
                b.iter(|| cl.commit(1, &p))
            });
        }
        group.finish();
        // Messages per committed write: 2,000 writes one at a time, frames on the wire.
        let before = cl.frames_sent();
        for _ in 0..2000 {
            cl.commit(1, &payload);
        }
        messages.push((f.name, (cl.frames_sent() - before) as f64 / 2000.0));
    }
    for (name, m) in &messages {
        println!("messages per committed write (3 nodes, one write at a time): {name} {m:.2}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
