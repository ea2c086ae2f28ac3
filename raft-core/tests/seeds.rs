//! Random simulations: every fault at once (loss, duplication, long reordering, swizzled
//! partitions, crashes, torn writes, snapshots), many seeds. The simulator checks the
//! safety invariants after every step; at the end the network heals and the cluster must
//! make progress again (liveness). A failure prints its seed; `WEFT_SEED=n` replays one.

use bytes::Bytes;
use weft_raft::sim::{Faults, Sim, SimOptions};
use weft_raft::NodeId;

/// Runs one seed; returns how many client operations completed.
fn run_seed(seed: u64, steps: u64) -> usize {
    let nodes = 3 + (seed % 3) as u32;
    let mut opts = SimOptions::new(nodes, seed);
    opts.snapshot_every = [0, 8, 30][(seed / 3 % 3) as usize];
    opts.raft.pre_vote = seed % 5 != 0;
    opts.raft.check_quorum = seed % 7 != 0;
    // One seed in four runs on an ordered fabric, alternately with barrier epochs (Data
    // Vortex: the simulator delivers by epoch and loses nothing but what cut links drop)
    // and deadline-ordered (ptp: late copies arrive out of order). Both multicast
    // identical messages.
    opts.raft.ordered_election = seed % 4 == 3;
    opts.raft.barrier_epochs = seed % 8 == 3;
    // Half the seeds persist as the node runtime does: on a storage thread, acknowledging
    // and counting the leader's own entries only once they are written.
    opts.async_persist = seed / 9 % 2 == 1;
    let mut s = Sim::new(opts);
    s.add_clients(3, 3);
    s.set_faults(Faults {
        drop: 0.05 + (seed % 4) as f64 * 0.05,
        duplicate: 0.05,
        delay: 0.1,
        max_delay: 300,
        crash: 0.0005,
        torn_write: 0.5,
    });
    let mut next = 0u64;
    let mut swizzle: Vec<(NodeId, NodeId)> = Vec::new();
    let mut t = 0;
    while t < steps {
        match s.random(100) {
            0..=29 => {
                let _ = s.propose_at_leader(Bytes::from(format!("s{seed}-{next}")));
                next += 1;
            }
            30 if swizzle.is_empty() => {
                // Swizzle: cut random links one by one...
                for _ in 0..nodes {
                    let a = NodeId(s.random(u64::from(nodes)) as u32 + 1);
                    let b = NodeId(s.random(u64::from(nodes)) as u32 + 1);
                    if a != b {
                        s.cut_link(a, b);
                        swizzle.push((a, b));
                    }
                }
            }
            31..=33 if !swizzle.is_empty() => {
                // ...then heal them in random order.
                let i = s.random(swizzle.len() as u64) as usize;
                let (a, b) = swizzle.swap_remove(i);
                s.heal_link(a, b);
            }
            34 => {
                let n = NodeId(s.random(u64::from(nodes)) as u32 + 1);
                s.isolate(n);
                swizzle.push((n, n));
            }
            _ => {}
        }
        let d = s.random(20) + 1;
        s.run(d);
        t += d;
        if swizzle.iter().any(|(a, b)| a == b) && s.random(20) == 0 {
            s.heal();
            swizzle.clear();
        }
    }
    s.set_faults(Faults::none());
    s.heal();
    for n in 1..=nodes {
        s.restart(NodeId(n));
    }
    let last = Bytes::from(format!("s{seed}-final"));
    let mut ok = false;
    for _ in 0..30 {
        if s.applied_index_of(&last).is_none() {
            let _ = s.propose_at_leader(last.clone());
        }
        if s.run_until(500, |s| s.applied_count(&last) == nodes as usize) {
            ok = true;
            break;
        }
    }
    assert!(ok, "seed {seed}: no progress after healing\n{}", s.dump());
    s.check_log_matching();
    s.check_linearizable();
    s.history().len()
}

fn seeds(default: u64) -> std::ops::Range<u64> {
    if let Ok(one) = std::env::var("WEFT_SEED") {
        let n: u64 = one.parse().expect("WEFT_SEED is a number");
        return n..n + 1;
    }
    let count = std::env::var("WEFT_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    0..count
}

#[test]
fn random_seeds_with_all_faults() {
    let range = seeds(2000);
    let n = range.end - range.start;
    let completed: usize = range.map(|seed| run_seed(seed, 3000)).sum();
    assert!(
        completed as u64 >= 20 * n,
        "clients completed {completed} operations over {n} seeds: the histories are too thin to check"
    );
}

#[test]
#[ignore = "soak: 100,000 seeds, minutes even in release; run `cargo test -p weft-raft --release -- --ignored soak`"]
fn soak() {
    for seed in seeds(100_000) {
        run_seed(seed + 1_000_000, 3000);
    }
}
