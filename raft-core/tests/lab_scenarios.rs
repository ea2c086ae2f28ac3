//! The behaviours the MIT 6.5840 Raft lab tests, written anew as deterministic simulation
//! scenarios (by the lab's test names). Every step of every scenario also checks Raft's
//! safety invariants inside the simulator.

use bytes::Bytes;
use weft_raft::sim::{Faults, Sim, SimOptions};
use weft_raft::NodeId;

/// Steps per tick is 10 and the election timeout 10-20 ticks: 100-200 steps.
const ELECTION: u64 = 400;

fn sim(nodes: u32, seed: u64) -> Sim {
    Sim::new(SimOptions::new(nodes, seed))
}

fn cmd(i: u64) -> Bytes {
    Bytes::from(format!("cmd-{i}"))
}

/// Waits for one leader and returns it.
fn one_leader(s: &mut Sim) -> NodeId {
    assert!(
        s.run_until(4 * ELECTION, |s| s.leader().is_some()),
        "no leader elected"
    );
    s.leader().unwrap()
}

/// Proposes `c` at whoever leads (retrying across leader changes) until at least `n` up
/// nodes applied it; returns its index.
fn agree(s: &mut Sim, c: &Bytes, n: usize) -> u64 {
    for _ in 0..20 {
        if s.applied_count(c) >= n {
            break;
        }
        if s.applied_index_of(c).is_none() {
            if let Some(l) = s.leader() {
                let _ = s.propose(l, c.clone());
            }
        }
        s.run_until(ELECTION, |s| s.applied_count(c) >= n);
    }
    assert!(
        s.applied_count(c) >= n,
        "{c:?} applied by {} < {n}",
        s.applied_count(c)
    );
    s.applied_index_of(c).unwrap()
}

fn terms_of_up_nodes(s: &Sim) -> Vec<u64> {
    (1..=s.size())
        .filter_map(|i| s.node(NodeId(i)).map(|n| n.term()))
        .collect()
}

#[test]
fn initial_election() {
    let mut s = sim(3, 1);
    one_leader(&mut s);
    let t1 = terms_of_up_nodes(&s);
    s.run(10 * ELECTION);
    assert_eq!(
        terms_of_up_nodes(&s),
        t1,
        "no new election without failures"
    );
    assert!(s.leader().is_some());
}

#[test]
fn re_election() {
    let mut s = sim(3, 2);
    let l1 = one_leader(&mut s);
    s.isolate(l1);
    let l2 = {
        assert!(s.run_until(4 * ELECTION, |s| s.leader().is_some_and(|l| l != l1)));
        s.leader().unwrap()
    };
    s.heal();
    s.run(ELECTION);
    assert_eq!(
        s.leader(),
        Some(l2),
        "the old leader rejoining does not disturb the new one"
    );
    // No quorum: no leader.
    let other = (1..=3).map(NodeId).find(|n| *n != l2).unwrap();
    s.isolate(l2);
    s.isolate(other);
    s.run(4 * ELECTION);
    let majority_leader = (1..=3)
        .map(NodeId)
        .filter_map(|n| s.node(n))
        .filter(|n| n.role() == weft_raft::Role::Leader && n.id() != l2)
        .count();
    assert_eq!(majority_leader, 0, "no leader without a quorum");
    s.heal();
    one_leader(&mut s);
}

#[test]
fn many_elections() {
    let mut s = sim(7, 3);
    one_leader(&mut s);
    for round in 0..10 {
        let mut out = Vec::new();
        while out.len() < 3 {
            let n = (s.random(7) + 1) as u32;
            if !out.contains(&n) {
                out.push(n);
            }
        }
        let rest: Vec<u32> = (1..=7).filter(|n| !out.contains(n)).collect();
        s.partition(std::slice::from_ref(&rest));
        assert!(
            s.run_until(4 * ELECTION, |s| s
                .leader()
                .is_some_and(|l| rest.contains(&l.0))
                && (1..=7).filter(|i| rest.contains(i)).any(|i| s
                    .node(NodeId(i))
                    .unwrap()
                    .leader()
                    == s.leader())),
            "round {round}: the 4-node majority elects a leader"
        );
        s.heal();
    }
}

#[test]
fn basic_agree() {
    let mut s = sim(3, 4);
    one_leader(&mut s);
    for i in 1..=3 {
        let index = agree(&mut s, &cmd(i), 3);
        assert_eq!(index, i + 1, "entry 1 is the leader's empty entry");
    }
}

#[test]
fn rpc_bytes() {
    let mut s = sim(3, 5);
    one_leader(&mut s);
    agree(&mut s, &cmd(0), 3);
    let before = s.delivered;
    let big = Bytes::from(vec![b'x'; 5000]);
    for i in 0..10u8 {
        let mut c = big.to_vec();
        c[0] = i;
        agree(&mut s, &Bytes::from(c), 3);
    }
    // Each command goes once to each follower, with its response: about 4 messages per
    // command, plus heartbeats.
    let messages = s.delivered - before;
    assert!(
        messages < 10 * 4 + 200,
        "{messages} messages for 10 commands"
    );
}

#[test]
fn fail_agree() {
    let mut s = sim(3, 6);
    let l = one_leader(&mut s);
    agree(&mut s, &cmd(101), 3);
    let f = (1..=3).map(NodeId).find(|n| *n != l).unwrap();
    s.isolate(f);
    for i in 102..=105 {
        agree(&mut s, &cmd(i), 2);
    }
    s.heal();
    agree(&mut s, &cmd(106), 3);
    assert!(s.run_until(ELECTION, |s| s.applied_count(&cmd(105)) == 3));
}

#[test]
fn fail_no_agree() {
    let mut s = sim(5, 7);
    let l = one_leader(&mut s);
    agree(&mut s, &cmd(10), 5);
    let others: Vec<u32> = (1..=5).filter(|n| *n != l.0).collect();
    for n in &others[..3] {
        s.isolate(NodeId(*n));
    }
    let index = s.propose(l, cmd(20)).expect("still leader");
    assert_eq!(index, 3);
    s.run(2 * ELECTION);
    assert_eq!(s.applied_count(&cmd(20)), 0, "no commit without a majority");
    s.heal();
    agree(&mut s, &cmd(30), 5);
}

#[test]
fn concurrent_starts() {
    let mut s = sim(3, 8);
    let l = one_leader(&mut s);
    let indexes: Vec<u64> = (0..5)
        .map(|i| s.propose(l, cmd(200 + i)).unwrap())
        .collect();
    assert!(s.run_until(ELECTION, |s| (0..5)
        .all(|i| s.applied_count(&cmd(200 + i)) == 3)));
    for (i, idx) in indexes.iter().enumerate() {
        assert_eq!(s.applied_index_of(&cmd(200 + i as u64)), Some(*idx));
    }
}

#[test]
fn rejoin() {
    let mut s = sim(3, 9);
    let l1 = one_leader(&mut s);
    agree(&mut s, &cmd(101), 3);
    s.isolate(l1);
    // The old leader accepts entries it can never commit.
    for i in 102..=104 {
        s.propose(l1, cmd(i)).unwrap();
    }
    s.run(10);
    agree(&mut s, &cmd(103), 2);
    let l2 = s.leader().unwrap();
    s.isolate(l2);
    s.heal();
    s.isolate(l2);
    // l1 rejoins with the remaining follower.
    agree(&mut s, &cmd(104), 2);
    s.heal();
    agree(&mut s, &cmd(105), 3);
    assert_eq!(
        s.applied_count(&cmd(102)),
        0,
        "the stranded entries were overwritten"
    );
}

#[test]
fn backup() {
    let mut s = sim(5, 10);
    let l1 = one_leader(&mut s);
    agree(&mut s, &cmd(1), 5);
    // Leader and one follower in a minority; fill their logs with entries that never commit.
    let f1 = (1..=5).map(NodeId).find(|n| *n != l1).unwrap();
    let majority: Vec<u32> = (1..=5).filter(|n| *n != l1.0 && *n != f1.0).collect();
    s.partition(&[vec![l1.0, f1.0], majority.clone()]);
    for i in 0..50 {
        let _ = s.propose(l1, cmd(1000 + i));
    }
    s.run(ELECTION);
    for i in 0..50 {
        agree(&mut s, &cmd(2000 + i), 3);
    }
    // The new leader and one of its followers go away; the other two majority nodes fall
    // behind with a third term's stranded entries.
    let l2 = s.leader().unwrap();
    let other = *majority.iter().find(|n| **n != l2.0).unwrap();
    let rest: Vec<u32> = majority.iter().copied().filter(|n| *n != other).collect();
    s.partition(&[vec![l2.0, other], rest.clone()]);
    for i in 0..50 {
        let _ = s.propose(l2, cmd(3000 + i));
    }
    s.run(ELECTION);
    // The original minority plus the remaining majority nodes form a new majority.
    let mut back = vec![l1.0, f1.0];
    back.extend(rest.iter().copied().filter(|n| *n != l2.0 && *n != other));
    s.partition(&[back, vec![l2.0, other]]);
    for i in 0..50 {
        agree(&mut s, &cmd(4000 + i), 3);
    }
    s.heal();
    agree(&mut s, &cmd(5000), 5);
}

#[test]
fn count() {
    let mut s = sim(3, 11);
    one_leader(&mut s);
    let elected = s.delivered;
    assert!(elected < 60, "{elected} messages to elect a leader");
    agree(&mut s, &cmd(1), 3);
    let before = s.delivered;
    for i in 2..12 {
        agree(&mut s, &cmd(i), 3);
    }
    let per = (s.delivered - before) / 10;
    assert!(per < 20, "{per} messages per agreement");
    let idle = s.delivered;
    s.run(ELECTION);
    // Idle: heartbeats only, 2 followers x 2 messages per tick.
    assert!(s.delivered - idle <= 4 * (ELECTION / 10) + 8);
}

#[test]
fn persist1() {
    let mut s = sim(3, 12);
    one_leader(&mut s);
    agree(&mut s, &cmd(11), 3);
    for n in 1..=3 {
        s.crash(NodeId(n));
    }
    for n in 1..=3 {
        s.restart(NodeId(n));
    }
    agree(&mut s, &cmd(12), 3);
    let l = s.leader().unwrap();
    s.crash(l);
    s.restart(l);
    agree(&mut s, &cmd(13), 3);
    let l = s.leader().unwrap();
    agree(&mut s, &cmd(14), 3);
    s.crash(l);
    agree(&mut s, &cmd(15), 2);
    s.restart(l);
    assert!(s.run_until(ELECTION, |s| s.applied_count(&cmd(15)) == 3));
}

#[test]
fn persist2() {
    let mut s = sim(5, 13);
    let mut index = 1;
    for iter in 0..5u64 {
        agree(&mut s, &cmd(100 + iter), 5);
        index += 1;
        let l1 = s.leader().unwrap();
        let a = NodeId(l1.0 % 5 + 1);
        let b = NodeId(a.0 % 5 + 1);
        s.crash(a);
        s.crash(b);
        agree(&mut s, &cmd(200 + iter), 3);
        let l = s.leader().unwrap();
        let c = NodeId(l.0 % 5 + 1);
        let d = NodeId(c.0 % 5 + 1);
        let e = NodeId(d.0 % 5 + 1);
        for n in [c, d, e] {
            s.crash(n);
        }
        for n in [a, b] {
            s.restart(n);
        }
        s.run(ELECTION);
        for n in [c, d, e] {
            s.restart(n);
        }
    }
    agree(&mut s, &cmd(1000), 5);
    assert!(index > 1);
}

#[test]
fn persist3() {
    let mut s = sim(3, 14);
    agree(&mut s, &cmd(101), 3);
    let l = s.leader().unwrap();
    let f = NodeId(l.0 % 3 + 1);
    s.isolate(f);
    agree(&mut s, &cmd(102), 2);
    s.crash(l);
    s.crash(NodeId(f.0 % 3 + 1));
    s.heal();
    s.restart(NodeId(f.0 % 3 + 1));
    agree(&mut s, &cmd(103), 2);
    s.restart(l);
    agree(&mut s, &cmd(104), 3);
}

/// Figure 8: leaders crash right after appending; entries of old terms must never be
/// committed by counting replicas, and committed entries survive.
fn figure8(seed: u64, unreliable: bool) {
    let mut s = sim(5, seed);
    if unreliable {
        s.set_faults(Faults::unreliable());
    }
    agree(&mut s, &cmd(0), 1);
    let mut up = 5;
    for iter in 0..300u64 {
        if let Some(l) = s.leader() {
            let _ = s.propose(l, cmd(10_000 + iter));
        }
        let wait = if s.random(10) == 0 {
            10 * s.random(50)
        } else {
            s.random(13)
        };
        s.run(wait);
        if let Some(l) = s.leader() {
            if s.random(2) == 0 && up > 3 {
                s.crash(l);
                up -= 1;
            }
        }
        if up < 3 {
            let n = NodeId((s.random(5) + 1) as u32);
            if !s.is_up(n) {
                s.restart(n);
                up += 1;
            }
        }
    }
    s.set_faults(Faults::none());
    for n in 1..=5 {
        s.restart(NodeId(n));
    }
    agree(&mut s, &cmd(99), 5);
}

#[test]
fn figure8_reliable() {
    figure8(15, false);
}

#[test]
fn unreliable_agree() {
    let mut s = sim(5, 16);
    s.set_faults(Faults::unreliable());
    for i in 0..50 {
        let _ = s.propose_at_leader(cmd(i));
        s.run(5);
    }
    s.set_faults(Faults::none());
    agree(&mut s, &cmd(1000), 5);
}

#[test]
fn figure8_unreliable() {
    figure8(17, true);
}

fn churn(seed: u64, unreliable: bool) {
    let mut s = sim(5, seed);
    if unreliable {
        s.set_faults(Faults::unreliable());
    }
    let mut next = 0;
    for _ in 0..200 {
        for _ in 0..3 {
            let _ = s.propose_at_leader(cmd(next));
            next += 1;
        }
        match s.random(10) {
            0 => {
                let n = NodeId((s.random(5) + 1) as u32);
                s.crash(n);
            }
            1 => {
                let n = NodeId((s.random(5) + 1) as u32);
                s.restart(n);
            }
            2 => {
                let n = NodeId((s.random(5) + 1) as u32);
                s.isolate(n);
            }
            3 => s.heal(),
            _ => {}
        }
        let wait = s.random(100) + 10;
        s.run(wait);
    }
    s.set_faults(Faults::none());
    s.heal();
    for n in 1..=5 {
        s.restart(NodeId(n));
    }
    agree(&mut s, &cmd(u64::MAX), 5);
    // Everything applied anywhere is applied, in the same order, everywhere.
    let reference = s.applied_commands(NodeId(1)).to_vec();
    for n in 2..=5 {
        let theirs = s.applied_commands(NodeId(n));
        let common = reference.len().min(theirs.len());
        assert_eq!(&reference[..common], &theirs[..common]);
    }
}

#[test]
fn reliable_churn() {
    churn(18, false);
}

#[test]
fn unreliable_churn() {
    churn(19, true);
}

fn snapshot_sim(seed: u64) -> Sim {
    let mut opts = SimOptions::new(3, seed);
    opts.snapshot_every = 10;
    Sim::new(opts)
}

#[test]
fn snapshot_basic() {
    let mut s = snapshot_sim(20);
    for i in 0..60 {
        agree(&mut s, &cmd(i), 3);
    }
    let l = s.leader().unwrap();
    assert!(
        s.node(l).unwrap().first_index() > 30,
        "the log was compacted"
    );
}

fn install_snapshots(seed: u64, unreliable: bool, crash: bool) {
    let mut s = snapshot_sim(seed);
    agree(&mut s, &cmd(0), 3);
    for round in 0..6u64 {
        let l = s.leader().unwrap();
        let victim = NodeId(l.0 % 3 + 1);
        if crash {
            s.crash(victim);
        } else {
            s.isolate(victim);
        }
        if unreliable {
            s.set_faults(Faults::unreliable());
        }
        for i in 0..25 {
            agree(&mut s, &cmd(round * 100 + i + 1), 2);
        }
        s.set_faults(Faults::none());
        if crash {
            s.restart(victim);
        } else {
            s.heal();
        }
        let last = cmd(round * 100 + 99);
        agree(&mut s, &last, 3);
        assert!(s.applied_index(victim) >= s.applied_index_of(&last).unwrap());
    }
    assert!(
        s.snapshots_installed > 0,
        "lagging followers were sent snapshots"
    );
}

#[test]
fn snapshot_install() {
    install_snapshots(21, false, false);
}

#[test]
fn snapshot_install_unreliable() {
    install_snapshots(22, true, false);
}

#[test]
fn snapshot_install_crash() {
    install_snapshots(23, false, true);
}

#[test]
fn snapshot_all_crash() {
    let mut s = snapshot_sim(24);
    agree(&mut s, &cmd(0), 3);
    for round in 0..5u64 {
        for i in 0..15 {
            agree(&mut s, &cmd(round * 100 + i + 1), 3);
        }
        let before = s.applied_index(NodeId(1));
        for n in 1..=3 {
            s.crash(NodeId(n));
        }
        for n in 1..=3 {
            s.restart(NodeId(n));
            assert!(
                s.applied_index(NodeId(n)) > 0,
                "state restored from the snapshot"
            );
        }
        agree(&mut s, &cmd(round * 100 + 50), 3);
        assert!(s.applied_index(NodeId(1)) > before);
    }
}

#[test]
fn snapshot_init() {
    let mut s = snapshot_sim(25);
    for i in 0..20 {
        agree(&mut s, &cmd(i), 3);
    }
    for n in 1..=3 {
        s.crash(NodeId(n));
    }
    for n in 1..=3 {
        s.restart(NodeId(n));
    }
    // One more entry, and a second crash right after: snapshot and log must agree.
    agree(&mut s, &cmd(100), 3);
    for n in 1..=3 {
        s.crash(NodeId(n));
    }
    for n in 1..=3 {
        s.restart(NodeId(n));
    }
    agree(&mut s, &cmd(101), 3);
}
