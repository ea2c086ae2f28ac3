//! What one delivery order costs on `ptp`, and how well the clocks are known: the one-way
//! hop (send → released at the peer) for fixed Δ of 100 µs, 500 µs and 2 ms with ε = 50 µs,
//! next to the bare UDP hop in the same run (a message is held until deadline + ε, so the
//! hop should be about Δ + ε); then the offsets the two-way time transfers measured
//! between members that share this host's clock — pure measurement error, the smallest ε
//! this method could certify here.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use weft_bench::{cluster_config, loopback_addrs};
use weft_transport::{open, BackendConfig, NodeId, PtpConfig, Transport, UdpConfig};

const WAIT: Duration = Duration::from_secs(5);

/// A two-member cluster on `backend`, no layers.
fn pair(cluster: u64, backend: BackendConfig) -> Vec<Box<dyn Transport>> {
    let addrs = loopback_addrs(2);
    (1..=2)
        .map(|i| {
            let mut cfg = cluster_config(cluster, i, &addrs, backend.clone(), Some(vec![]), true);
            cfg.require.clear();
            open(&cfg).expect("open a benchmark transport")
        })
        .collect()
}

fn hop(t: &[Box<dyn Transport>], msg: &Bytes) {
    t[0].send(NodeId(2), msg.clone()).unwrap();
    t[1].inbox().recv_timeout(WAIT).unwrap();
}

fn bench(c: &mut Criterion) {
    let msg = Bytes::from(vec![3u8; 64]);
    let mut group = c.benchmark_group("ptp");
    let udp = pair(0x7070_0001, BackendConfig::Udp(UdpConfig::default()));
    group.bench_function("udp-hop", |b| b.iter(|| hop(&udp, &msg)));
    let mut offsets = Vec::new();
    for (i, delta_us) in [100u64, 500, 2000].into_iter().enumerate() {
        let ptp = PtpConfig {
            delta_min_us: delta_us,
            delta_max_us: delta_us,
            epsilon_us: 50,
            sync_interval_ms: 20,
            ..PtpConfig::default()
        };
        let t = pair(0x7070_0010 + i as u64, BackendConfig::Ptp(ptp));
        group.bench_with_input(BenchmarkId::new("hop-delta-us", delta_us), &t, |b, t| {
            b.iter(|| hop(t, &msg))
        });
        let late: u64 = t.iter().map(|t| t.stats().late_deliveries).sum();
        println!("ptp/hop-delta-us/{delta_us}: {late} messages late (delivered out of order)");
        // The latest transfer per peer, sampled across a second of 20 ms exchanges.
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(25));
            offsets.extend(t.iter().flat_map(|t| t.clock_offsets()));
        }
    }
    group.finish();
    let worst = offsets.iter().map(|o| o.offset_ns.abs()).max().unwrap_or(0);
    let mut abs: Vec<i64> = offsets.iter().map(|o| o.offset_ns.abs()).collect();
    abs.sort();
    let median = abs.get(abs.len() / 2).copied().unwrap_or(0);
    println!(
        "ptp: {} samples of time transfers between members sharing one clock: |offset| median {:.1} µs, \
         worst {:.1} µs (measurement error: the smallest ε certifiable here)",
        offsets.len(),
        median as f64 / 1e3,
        worst as f64 / 1e3
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
