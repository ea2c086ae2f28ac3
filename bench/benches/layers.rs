//! The cost of the layer stack, full path vs fast path, on the same traffic in one run.
//!
//! Two sans-I/O stacks (fifo, reliable, auth; and with fragment on top) exchange 100-byte
//! messages: each iteration is one send at A, the frame's receipt at B, and, every 32
//! messages, B's coalesced ack back at A. No sockets or threads: this is the software
//! price of the layers themselves, which the fast path is meant to cut.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_transport::layer::{Output, Stack, StackBuilder};
use weft_transport::{Capabilities, ClusterKey, Counters, Dest, LayerKind, NodeId};

fn stack(local: u32, layers: &[LayerKind], fast: bool) -> Stack {
    let native = Capabilities {
        max_message: 1456,
        ..Capabilities::default()
    };
    StackBuilder::new(1, NodeId(local), &[NodeId(1), NodeId(2)], layers, native)
        .max_message(if layers.contains(&LayerKind::Fragment) {
            1 << 20
        } else {
            1000
        })
        .key(ClusterKey::new(vec![7; 32]))
        .fast_path(fast)
        .incarnation(u64::from(local))
        .build(Arc::new(Counters::default()))
        .expect("stack")
}

struct Pair {
    a: Stack,
    b: Stack,
    sent: u64,
}

impl Pair {
    fn one(&mut self, msg: &Bytes) {
        let now = Instant::now();
        let mut out = Output::default();
        self.a
            .send(Dest::Node(NodeId(2)), msg.clone(), now, &mut out)
            .expect("window has room");
        let mut at_b = Output::default();
        for (_, frame) in out.wire {
            self.b.receive(NodeId(1), frame, now, &mut at_b);
        }
        assert_eq!(at_b.deliver.len(), 1);
        self.sent += 1;
        if self.sent % 32 == 0 {
            let mut acks = Output::default();
            self.b.flush(now, &mut acks);
            let mut ignored = Output::default();
            for (_, ack) in acks.wire {
                self.a.receive(NodeId(2), ack, now, &mut ignored);
            }
        }
    }
}

fn bench_layers(c: &mut Criterion) {
    use LayerKind::*;
    let msg = Bytes::from(vec![0xab; 100]);
    for (name, layers) in [
        ("fifo+reliable+auth", vec![Fifo, Reliable, Auth]),
        ("fifo+reliable", vec![Fifo, Reliable]),
        (
            "fragment+fifo+reliable+auth",
            vec![Fragment, Fifo, Reliable, Auth],
        ),
    ] {
        let mut group = c.benchmark_group(format!("stack/{name}"));
        group.throughput(Throughput::Elements(1));
        for (path, fast) in [("full", false), ("fast", true)] {
            let mut pair = Pair {
                a: stack(1, &layers, fast),
                b: stack(2, &layers, fast),
                sent: 0,
            };
            group.bench_function(BenchmarkId::new(path, "100B"), |bch| {
                bch.iter(|| pair.one(&msg))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_layers);
criterion_main!(benches);
