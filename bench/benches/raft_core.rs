//! Proposals per second through a 3-node Raft cluster on the in-memory transport, driven on
//! one thread (1 proposer, and 256 proposals in flight at once), and commit latency in pump
//! rounds. The `mem/hop` bench of `transport_rtt` is the floor to divide by.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_bench::raft_cluster::Cluster;

fn bench_proposals(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; 100]);
    let mut group = c.benchmark_group("raft/3-node-mem");
    for (i, batch) in [1usize, 256].into_iter().enumerate() {
        let mut cl = Cluster::mem3(0x5AF7_0000 + i as u64);
        let rounds = cl.commit(batch, &payload);
        println!("raft/3-node-mem: {batch} proposals committed in {rounds} pump rounds");
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::new("proposers", batch), |b| {
            b.iter(|| cl.commit(batch, &payload))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_proposals);
criterion_main!(benches);
