//! Raw transport latency: the physical floor every consensus benchmark is divided by.
//!
//! - `mem/hop`: one message from A's `send` to B's inbox on the in-process fabric.
//! - `mem/rtt` and `udp/rtt`: a 64-byte round trip to an echo thread, bare and under the
//!   full stack (fifo, reliable, auth), measured in one run so the ratios are fair.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use weft_bench::{cluster_config, echo_pair, loopback_addrs};
use weft_transport::{open, BackendConfig, LayerKind, MemConfig, NodeId, Transport, UdpConfig};

const WAIT: Duration = Duration::from_secs(5);

fn round_trip(t: &dyn Transport, msg: &Bytes) {
    t.send(NodeId(2), msg.clone()).expect("send");
    t.inbox().recv_timeout(WAIT).expect("echo");
}

fn mem() -> BackendConfig {
    BackendConfig::Mem(MemConfig::default())
}

fn udp() -> BackendConfig {
    BackendConfig::Udp(UdpConfig::default())
}

fn bench_rtt(c: &mut Criterion) {
    use LayerKind::*;
    let msg = Bytes::from(vec![1u8; 64]);
    let mut cluster = 0xBE0C_0000u64;

    let mut group = c.benchmark_group("mem");
    {
        cluster += 1;
        let addrs = loopback_addrs(2);
        let end = |id| {
            open(&cluster_config(
                cluster,
                id,
                &addrs,
                mem(),
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
    for (name, layers) in [
        ("rtt/bare", vec![]),
        ("rtt/stack", vec![Fifo, Reliable, Auth]),
    ] {
        cluster += 1;
        let (a, _echo) = echo_pair(cluster, mem, layers, true);
        group.bench_function(name, |bch| bch.iter(|| round_trip(a.as_ref(), &msg)));
    }
    group.finish();

    let mut group = c.benchmark_group("udp");
    for (name, layers, fast) in [
        ("rtt/bare", vec![], true),
        ("rtt/stack-full", vec![Fifo, Reliable, Auth], false),
        ("rtt/stack-fast", vec![Fifo, Reliable, Auth], true),
    ] {
        cluster += 1;
        let (a, _echo) = echo_pair(cluster, udp, layers, fast);
        group.bench_function(name, |bch| bch.iter(|| round_trip(a.as_ref(), &msg)));
    }
    group.finish();
}

criterion_group!(benches, bench_rtt);
criterion_main!(benches);
