//! The `rdma` backend on emulated verbs, against the emulation's own one-way hop, in one
//! run: what the ring/credit protocol and the polling thread cost, and what Raft adds.
//!
//! - `rdma/hop`: one 64-byte message from A's `send` to B's inbox.
//! - `rdma/rtt`: a 64-byte round trip to an echo thread.
//! - `rdma/commit_1`: one proposal at the leader of a 3-node cluster until committed there.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use weft_bench::raft_cluster::Cluster;
use weft_bench::{cluster_config, echo_pair, loopback_addrs};
use weft_transport::{open, BackendConfig, NodeId, RdmaConfig, Transport};

const WAIT: Duration = Duration::from_secs(5);

fn rdma() -> BackendConfig {
    BackendConfig::Rdma(RdmaConfig {
        ring_bytes: 1 << 20,
        ..RdmaConfig::default()
    })
}

fn bench(c: &mut Criterion) {
    let msg = Bytes::from(vec![1u8; 64]);
    let mut group = c.benchmark_group("rdma");
    {
        let addrs = loopback_addrs(2);
        let end = |id| {
            open(&cluster_config(
                0x4D_0001,
                id,
                &addrs,
                rdma(),
                Some(vec![]),
                true,
            ))
            .unwrap()
        };
        let (a, b) = (end(1), end(2));
        group.bench_function("hop", |bch| {
            bch.iter(|| {
                a.send(NodeId(2), msg.clone()).unwrap();
                b.inbox().recv_timeout(WAIT).unwrap();
            })
        });
    }
    {
        let (a, _echo) = echo_pair(0x4D_0002, rdma, vec![], true);
        group.bench_function("rtt", |bch| {
            bch.iter(|| {
                a.send(NodeId(2), msg.clone()).unwrap();
                a.inbox().recv_timeout(WAIT).unwrap();
            })
        });
    }
    {
        let addrs = loopback_addrs(3);
        let transports: Vec<Box<dyn Transport>> = (1..=3)
            .map(|i| {
                let mut cfg = cluster_config(0x4D_0003, i, &addrs, rdma(), Some(vec![]), true);
                cfg.max_message = 256 * 1024;
                open(&cfg).unwrap()
            })
            .collect();
        let mut cl = Cluster::new(transports);
        let payload = Bytes::from(vec![7u8; 100]);
        group.bench_function("commit_1", |b| b.iter(|| cl.commit(1, &payload)));
    }
    group.finish();
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
