//! One durable append of the write-ahead log (`DiskStorage::persist`: a 100-byte entry
//! and the hard state, written and fdatasync'ed), with and without file space reserved
//! ahead of the log's end, in the same run: the ratio of the two is the figure, since the
//! disk's absolute speed varies from machine to machine and run to run.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use weft_raft::storage::{DiskStorage, StorageOptions};
use weft_raft::{Entry, HardState, NodeId, Payload};

fn bench_persist(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage/persist-100B");
    let reserving = StorageOptions::default();
    for (name, opts) in [
        (
            "appending",
            StorageOptions {
                preallocate_bytes: 0,
                ..reserving
            },
        ),
        ("reserved", reserving),
    ] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut log, _) =
            DiskStorage::open(dir.path(), 0xBE_7C40, NodeId(1), opts).expect("a fresh log");
        let mut index = 0;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                index += 1;
                let entry = Entry {
                    term: 1,
                    index,
                    payload: Payload::Command(Bytes::from_static(&[7; 100])),
                };
                let hard = HardState {
                    term: 1,
                    vote: Some(NodeId(1)),
                    commit: index - 1,
                };
                log.persist(Some(hard), None, &[entry])
                    .expect("a durable append");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_persist);
criterion_main!(benches);
