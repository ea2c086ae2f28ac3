//! The fast path must be invisible: the same traffic under the same seeded faults, run
//! through stacks with and without the bypass, delivers the same messages in the same order
//! at every node. Runs the sans-I/O [`Stack`] under a deterministic simulated network.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use weft_transport::backend::mem::FaultPlan;
use weft_transport::layer::{Output, Stack, StackBuilder};
use weft_transport::{
    Capabilities, ClusterKey, Counters, Dest, LayerKind, LayerTuning, MemConfig, NodeId, Stats,
};

const STEP: Duration = Duration::from_micros(100);

#[derive(Debug, Clone)]
struct Op {
    at_step: u32,
    from: u32,
    to: Option<u32>,
    len: usize,
}

/// A frame on the simulated wire: (due step, send order, from, to, frame).
type InFlight = (u64, u64, u32, u32, Bytes);

struct Run {
    /// Per node, what was delivered: (from, message).
    delivered: Vec<Vec<(NodeId, Bytes)>>,
    /// Per op, whether the send was accepted.
    accepted: Vec<bool>,
    stats: Vec<Stats>,
}

fn payload(op_index: usize, len: usize) -> Bytes {
    let mut v = (op_index as u32).to_le_bytes().to_vec();
    v.resize(len.max(4), (op_index % 251) as u8);
    Bytes::from(v)
}

fn simulate(
    nodes: u32,
    layers: &[LayerKind],
    fast: bool,
    faults: &MemConfig,
    ops: &[Op],
    frame: usize,
) -> Run {
    let members: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
    let native = Capabilities {
        max_message: frame,
        ..Capabilities::default()
    };
    let tuning = LayerTuning {
        window: 64,
        rto: Duration::from_millis(2),
        max_rto: Duration::from_millis(20),
        gap_timeout: Duration::from_millis(5),
    };
    let key = ClusterKey::new(vec![3; 32]);
    let counters: Vec<Arc<Counters>> = members.iter().map(|_| Arc::default()).collect();
    let mut stacks: Vec<Stack> = members
        .iter()
        .zip(&counters)
        .map(|(id, c)| {
            StackBuilder::new(9, *id, &members, layers, native.clone())
                .max_message(if layers.contains(&LayerKind::Fragment) {
                    8192
                } else {
                    64
                })
                .tuning(tuning.clone())
                .key(key.clone())
                .fast_path(fast)
                .incarnation(1000 + u64::from(id.0))
                .build(Arc::clone(c))
                .expect("valid stack")
        })
        .collect();
    let mut plan = FaultPlan::new(faults.clone());
    let t0 = Instant::now();
    let mut wire: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut delivered = vec![Vec::new(); nodes as usize];
    let mut accepted = Vec::new();
    let last_op = ops.iter().map(|o| o.at_step).max().unwrap_or(0);
    let mut next_op = 0;
    let mut sorted: Vec<(usize, &Op)> = ops.iter().enumerate().collect();
    sorted.sort_by_key(|(i, o)| (o.at_step, *i));
    accepted.resize(ops.len(), false);
    let tick_every = stacks[0].tick_interval();
    let steps = u64::from(last_op) + 4000; // 400 ms of quiet for retransmissions
    for step in 0..steps {
        let now = t0 + STEP * step as u32;
        let mut outs: Vec<Output> = (0..nodes).map(|_| Output::default()).collect();
        while next_op < sorted.len() && u64::from(sorted[next_op].1.at_step) <= step {
            let (i, op) = sorted[next_op];
            let dest = op.to.map_or(Dest::All, |t| Dest::Node(NodeId(t)));
            let r = stacks[op.from as usize - 1].send(
                dest,
                payload(i, op.len),
                now,
                &mut outs[op.from as usize - 1],
            );
            accepted[i] = r.is_ok();
            next_op += 1;
        }
        while let Some(Reverse((due, _, _, _, _))) = wire.peek() {
            if *due > step {
                break;
            }
            let Reverse((_, _, from, to, bytes)) = wire.pop().unwrap();
            stacks[to as usize - 1].receive(NodeId(from), bytes, now, &mut outs[to as usize - 1]);
        }
        let tick = (now - t0).as_micros() % tick_every.as_micros() < STEP.as_micros();
        for (i, s) in stacks.iter_mut().enumerate() {
            if tick {
                s.tick(now, &mut outs[i]);
            }
            s.flush(now, &mut outs[i]);
        }
        for (i, out) in outs.into_iter().enumerate() {
            let from = i as u32 + 1;
            delivered[i].extend(out.deliver);
            for (dest, bytes) in out.wire {
                let targets: Vec<u32> = match dest {
                    Dest::Node(n) => vec![n.0],
                    Dest::All => (1..=nodes).filter(|n| *n != from).collect(),
                };
                for to in targets {
                    for delay in plan.decide(NodeId(from), NodeId(to)).copies {
                        let due = step + 1 + (delay.as_micros() / STEP.as_micros()) as u64;
                        order += 1;
                        wire.push(Reverse((due, order, from, to, bytes.clone())));
                    }
                }
            }
        }
    }
    Run {
        delivered,
        accepted,
        stats: counters.iter().map(|c| c.snapshot()).collect(),
    }
}

fn stacks() -> impl Strategy<Value = Vec<LayerKind>> {
    use LayerKind::*;
    prop_oneof![
        Just(vec![Fifo]),
        Just(vec![Reliable]),
        Just(vec![Fifo, Reliable]),
        Just(vec![Fifo, Auth]),
        Just(vec![Fifo, Reliable, Auth]),
        Just(vec![Fragment, Fifo, Reliable, Auth]),
    ]
}

fn traffic(nodes: u32) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        (
            0u32..2000,
            1..=nodes,
            proptest::option::of(1..=nodes),
            0usize..200,
        ),
        1..150,
    )
    .prop_map(move |v| {
        v.into_iter()
            .map(|(at_step, from, to, len)| Op {
                at_step,
                from,
                to: to.filter(|t| *t != from),
                len,
            })
            .collect()
    })
}

fn faults() -> impl Strategy<Value = MemConfig> {
    (any::<u64>(), 0.0..0.3f64, 0.0..0.2f64, 0.0..0.5f64).prop_map(
        |(seed, drop, duplicate, reorder)| MemConfig {
            seed,
            drop,
            duplicate,
            reorder,
            max_delay_us: 3000,
            ..MemConfig::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn fast_path_delivers_exactly_what_the_full_stack_delivers(
        nodes in 2u32..=4,
        layers in stacks(),
        faults in faults(),
        ops in traffic(4),
    ) {
        let ops: Vec<Op> = ops.into_iter().filter(|o| o.from <= nodes && o.to.is_none_or(|t| t <= nodes)).collect();
        let frame = if layers.contains(&LayerKind::Fragment) { 160 } else { 1024 };
        let full = simulate(nodes, &layers, false, &faults, &ops, frame);
        let fast = simulate(nodes, &layers, true, &faults, &ops, frame);
        prop_assert_eq!(&full.accepted, &fast.accepted);
        for n in 0..nodes as usize {
            prop_assert_eq!(&full.delivered[n], &fast.delivered[n], "node {}", n + 1);
        }
        prop_assert_eq!(full.stats.iter().map(|s| s.fast_path_hits).sum::<u64>(), 0);
    }
}

/// With `reliable` + `fifo` every accepted message arrives exactly once and in per-sender
/// order, whatever the faults (short of total loss); and the fast path is actually taken.
#[test]
fn reliable_fifo_stack_is_exactly_once_in_order_under_faults() {
    use LayerKind::*;
    let faults = MemConfig {
        seed: 5,
        drop: 0.1,
        duplicate: 0.05,
        reorder: 0.1,
        max_delay_us: 2000,
        ..MemConfig::default()
    };
    let ops: Vec<Op> = (0..3000u32)
        .map(|i| Op {
            at_step: i / 2,
            from: i % 3 + 1,
            to: if i % 10 == 0 {
                None
            } else {
                Some((i + 1) % 3 + 1)
            },
            len: (i as usize * 37) % 300,
        })
        .collect();
    for layers in [vec![Fifo, Reliable], vec![Fragment, Fifo, Reliable, Auth]] {
        let run = simulate(3, &layers, true, &faults, &ops, 1024);
        for to in 1..=3u32 {
            for from in 1..=3u32 {
                let sent: Vec<Bytes> = ops
                    .iter()
                    .enumerate()
                    .filter(|(i, o)| {
                        run.accepted[*i]
                            && o.from == from
                            && from != to
                            && o.to.is_none_or(|t| t == to)
                    })
                    .map(|(i, o)| payload(i, o.len))
                    .collect();
                let got: Vec<Bytes> = run.delivered[to as usize - 1]
                    .iter()
                    .filter(|(f, _)| f.0 == from)
                    .map(|(_, m)| m.clone())
                    .collect();
                assert_eq!(got.len(), sent.len(), "{layers:?}: {from} -> {to}");
                assert!(got == sent, "{layers:?}: {from} -> {to} out of order");
            }
        }
        let hits: u64 = run.stats.iter().map(|s| s.fast_path_hits).sum();
        let retransmits: u64 = run.stats.iter().map(|s| s.retransmits).sum();
        assert!(hits > 0, "fast path never taken");
        assert!(retransmits > 0);
    }
}

/// On a clean network every unfragmented message takes the bypass at both ends.
#[test]
fn clean_network_takes_the_fast_path_for_every_message() {
    use LayerKind::*;
    let ops: Vec<Op> = (0..600u32)
        .map(|i| Op {
            at_step: i,
            from: i % 3 + 1,
            to: Some((i + 1) % 3 + 1),
            len: 100,
        })
        .collect();
    let run = simulate(
        3,
        &[Fragment, Fifo, Reliable, Auth],
        true,
        &MemConfig::default(),
        &ops,
        1024,
    );
    let delivered: usize = run.delivered.iter().map(Vec::len).sum();
    let hits: u64 = run.stats.iter().map(|s| s.fast_path_hits).sum();
    assert_eq!(delivered, 600);
    // The first message of each sender-receiver stream goes the full way to learn the stream.
    assert_eq!(hits, 600 - 3);
}
