//! `weft demo`: a 3-node cluster as separate processes on loopback over the default
//! transport (UDP with the reliable, fifo and auth layers) or the Data Vortex emulator
//! (`--fabric vortex`), a mixed workload with progress, a `kill -9` of the leader mid-run,
//! and a check that no acknowledged write was lost.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft::local_cluster::{Fabric, LocalCluster};

use crate::cli::DemoArgs;

struct Tally {
    writes: Histogram<u64>,
    reads: Histogram<u64>,
    /// key -> highest acknowledged value (values grow per key).
    acked: BTreeMap<String, u64>,
    /// key -> highest value attempted (acknowledged or not).
    tried: BTreeMap<String, u64>,
    errors: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut cluster = LocalCluster::create(&dir, &std::env::current_exe()?, 3, 3, args.fabric)?;
    eprintln!(
        "demo: starting 3 nodes ({}) in {}",
        match args.fabric {
            Fabric::Udp => "UDP + reliable/fifo/auth layers",
            Fabric::Vortex => "Data Vortex emulator: a switch process, no software layers",
            Fabric::Ptp =>
                "UDP in deadline order on synchronized clocks + reliable/fifo/auth layers",
        },
        dir.display()
    );
    let started = Instant::now();
    let (leader, term) = cluster.start_all(Duration::from_secs(15))?;
    println!(
        "leader elected: node {leader} (term {term}) after {} ms",
        started.elapsed().as_millis()
    );

    let total = args.ops;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally {
        writes: histogram(),
        reads: histogram(),
        acked: BTreeMap::new(),
        tried: BTreeMap::new(),
        errors: 0,
    }));
    let workload_start = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|w| {
            let (done, stop, tally) = (Arc::clone(&done), Arc::clone(&stop), Arc::clone(&tally));
            let mut c = cluster.client(Duration::from_secs(20))?;
            let value_size = args.value_size;
            let seed = u64::from(std::process::id()) << 32 | w;
            Ok(std::thread::spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ w);
                let mut next: BTreeMap<String, u64> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) && done.fetch_add(1, Ordering::Relaxed) < total
                {
                    let key = format!("c{w}-k{}", rng.gen_range(0..32));
                    let t = Instant::now();
                    if rng.gen_range(0..10) < 7 {
                        let n = next.entry(key.clone()).or_insert(0);
                        *n += 1;
                        let v = *n;
                        let mut value = format!("{v:020}").into_bytes();
                        value.resize(value_size.max(20), b'.');
                        let r = c.put(&key, Bytes::from(value));
                        let mut t2 = tally.lock().unwrap_or_else(|e| e.into_inner());
                        t2.tried.insert(key.clone(), v);
                        match r {
                            Ok(_) => {
                                let _ = t2.writes.record(t.elapsed().as_nanos() as u64);
                                t2.acked.insert(key, v);
                            }
                            Err(_) => t2.errors += 1,
                        }
                    } else {
                        let r = c.get(&key);
                        let mut t2 = tally.lock().unwrap_or_else(|e| e.into_inner());
                        match r {
                            Ok(_) => drop(t2.reads.record(t.elapsed().as_nanos() as u64)),
                            Err(_) => t2.errors += 1,
                        }
                    }
                }
            }))
        })
        .collect::<anyhow::Result<_>>()?;

    // Progress, and the leader's sudden death at 40 %.
    let mut killed: Option<(u32, Instant)> = None;
    let mut failover = None;
    let mut shown = 0;
    while done.load(Ordering::Relaxed) < total && workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        let n = done.load(Ordering::Relaxed).min(total);
        let pct = n * 100 / total;
        if pct >= shown + 10 {
            shown = pct - pct % 10;
            let rate = n as f64 / workload_start.elapsed().as_secs_f64();
            eprintln!("workload: {shown:>3} % ({n}/{total} ops, {rate:.0} ops/s)");
        }
        if killed.is_none() && pct >= 40 {
            if let Some((l, term)) = cluster.leader(Duration::from_secs(2)) {
                println!("killing the leader, node {l} (term {term}), with SIGKILL at {pct} %");
                cluster.kill(l);
                killed = Some((l, Instant::now()));
            }
        }
        if let (Some((dead, at)), None) = (killed, failover) {
            if let Some((l, term)) = cluster.leader(Duration::from_millis(1)) {
                if l != dead {
                    let ms = at.elapsed().as_millis();
                    println!("new leader: node {l} (term {term}), {ms} ms after the kill");
                    failover = Some(ms);
                    cluster.start(dead)?;
                    println!("restarted node {dead}: it recovers from its write-ahead log");
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let elapsed = workload_start.elapsed();
    if killed.is_some() && failover.is_none() {
        bail!(
            "no new leader after the kill; node logs are in {}",
            dir.display()
        );
    }

    // Every acknowledged write must be there: each key holds at least the last value
    // acknowledged for it (a later, unacknowledged attempt may also have landed).
    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
    let mut checker = cluster.client(Duration::from_secs(20))?;
    let state = checker.get_all().context("reading the final state")?;
    let mut lost = 0;
    for (key, acked) in &t.acked {
        let found = state
            .get(key)
            .and_then(|v| {
                std::str::from_utf8(&v[..20.min(v.len())])
                    .ok()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        let tried = t.tried.get(key).copied().unwrap_or(0);
        if found < *acked || found > tried {
            lost += 1;
            println!("LOST: {key} acknowledged {acked}, tried up to {tried}, found {found}");
        }
    }
    let ops = t.writes.len() + t.reads.len();
    println!();
    println!(
        "workload: {ops} operations by {} clients in {:.2} s = {:.0} ops/s ({} retried-out errors)",
        args.clients,
        elapsed.as_secs_f64(),
        ops as f64 / elapsed.as_secs_f64(),
        t.errors
    );
    for (name, h) in [("writes", &t.writes), ("reads (linearizable)", &t.reads)] {
        if h.is_empty() {
            continue;
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "  {name:<22} {:>7}  p50 {:>8.0} µs  p90 {:>8.0} µs  p99 {:>8.0} µs  max {:>8.0} µs",
            h.len(),
            us(0.5),
            us(0.9),
            us(0.99),
            h.max() as f64 / 1000.0
        );
    }
    if let Some(ms) = failover {
        println!("  failover: new leader {ms} ms after the leader was killed");
    }
    println!(
        "  acknowledged writes checked: {} keys, lost: {lost}",
        t.acked.len()
    );
    drop(t);
    drop(cluster);
    if lost > 0 {
        bail!(
            "{lost} acknowledged writes were lost; logs kept in {}",
            dir.display()
        );
    }
    if !args.keep {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}
