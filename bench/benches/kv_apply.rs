//! What applying one committed put costs a replica: `KvStore::apply` (MessagePack decode,
//! the client's session, the insert into the persistent map) against a plain `HashMap`
//! insert of the same key and value, measured in the same run. Every replica pays this
//! once per write, so it bounds the writes per second a machine's cores can apply.

use std::collections::HashMap;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weft_raft::kv::{KvCommand, KvRequest, KvStore};

/// Distinct keys, as `weft bench` writes them (a fresh key per put); the map is rebuilt
/// after this many so that each put lands in a map of at most this size.
const KEYS: u64 = 100_000;

fn bench_apply(c: &mut Criterion) {
    let value = Bytes::from(vec![7u8; 100]);
    let key = |k: u64| format!("bench-0-{k}");
    let requests: Vec<Bytes> = (0..KEYS)
        .map(|k| {
            KvRequest {
                client: 1,
                seq: k + 1,
                command: KvCommand::Put {
                    key: key(k),
                    value: value.clone(),
                },
            }
            .encode()
        })
        .collect();
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let mut group = c.benchmark_group("kv/apply-put-100B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hashmap-insert", |b| {
        let (mut map, mut k) = (HashMap::new(), 0);
        b.iter(|| {
            if k == KEYS {
                (map, k) = (HashMap::new(), 0);
            }
            map.insert(keys[k as usize].clone(), value.clone());
            k += 1;
        })
    });
    group.bench_function("kv-store-apply", |b| {
        let (mut kv, mut k) = (KvStore::new(), 0);
        b.iter(|| {
            if k == KEYS {
                (kv, k) = (KvStore::new(), 0);
            }
            let applied = kv.apply(k + 1, &requests[k as usize]);
            assert!(applied.is_some(), "a put applies");
            k += 1;
        })
    });
    group.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
