//! Deadline-ordered delivery under simulated clocks (`hw_sim::clock`): with every offset
//! within ε, 100,000 concurrent multicasts reach four receivers in one identical order;
//! with a clock beyond ε, the monitor withdraws the guarantee and the receivers still never
//! deliver out of order (what cannot be placed is reported late).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use hw_sim::clock::{DriftingClock, TrueTime};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_transport::deadline::{
    AdaptiveDelta, Arrival, ClockMonitor, DeadlineReceiver, DeadlineSender, Exchange, Stamp,
};
use weft_transport::NodeId;

const NODES: u32 = 4;
const US: i64 = 1_000;

struct Node {
    clock: DriftingClock,
    sender: DeadlineSender,
    delta: AdaptiveDelta,
    rx: DeadlineReceiver<()>,
    ordered: Vec<Stamp>,
    late: Vec<Stamp>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Send(u32),
    Arrive(u32, Stamp),
    Tick,
}

/// Runs `messages` multicasts from random senders at random times over one virtual
/// second, with one-way delays in `delays` (ns); returns the nodes afterwards.
fn simulate(
    offsets_ns: &[i64],
    drift_ppb: &[i64],
    messages: usize,
    delays: (i64, i64),
) -> Vec<Node> {
    let eps = Duration::from_micros(50);
    let truth = TrueTime::starting_at(0);
    let mut nodes: Vec<Node> = (0..NODES as usize)
        .map(|i| Node {
            clock: DriftingClock::new(Arc::clone(&truth), offsets_ns[i], drift_ppb[i]),
            sender: DeadlineSender::new(NodeId(i as u32 + 1)),
            delta: AdaptiveDelta::new(Duration::from_micros(100), Duration::from_micros(500), eps),
            rx: DeadlineReceiver::new(eps),
            ordered: Vec::new(),
            late: Vec::new(),
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_1588);
    let mut events: BinaryHeap<Reverse<(i64, u64, Ev)>> = BinaryHeap::new();
    let mut n = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, t: i64, e: Ev| {
        n += 1;
        events.push(Reverse((t, n, e)));
    };
    for _ in 0..messages {
        let t = rng.gen_range(0..1_000_000 * US);
        push(&mut events, t, Ev::Send(rng.gen_range(0..NODES)));
    }
    let end = 1_000_000 * US + 2_000 * US;
    let mut t = 0;
    while t <= end {
        push(&mut events, t, Ev::Tick);
        t += 5 * US;
    }
    while let Some(Reverse((at, _, ev))) = events.pop() {
        truth.advance_to(at);
        match ev {
            Ev::Send(i) => {
                let node = &mut nodes[i as usize];
                let delta = node.delta.current();
                let stamp = node.sender.stamp(node.clock.now_ns(), delta);
                for to in 0..NODES {
                    let d = rng.gen_range(delays.0..delays.1);
                    push(&mut events, at + d, Ev::Arrive(to, stamp));
                }
            }
            Ev::Arrive(to, stamp) => {
                let node = &mut nodes[to as usize];
                let now = node.clock.now_ns();
                node.delta.observe(now - stamp.sent_ns);
                if let Arrival::Late(s, ()) = node.rx.arrive(stamp, (), now) {
                    node.late.push(s);
                }
            }
            Ev::Tick => {}
        }
        for node in &mut nodes {
            let now = node.clock.now_ns();
            let out = node.rx.release(now);
            node.ordered.extend(out.into_iter().map(|(s, ())| s));
        }
    }
    nodes
}

fn assert_sorted_and_complete(nodes: &[Node], messages: usize) {
    for (i, n) in nodes.iter().enumerate() {
        assert!(
            n.ordered.windows(2).all(|w| w[0] < w[1]),
            "node {} delivered out of deadline order",
            i + 1
        );
        assert_eq!(
            n.ordered.len() + n.late.len(),
            messages,
            "node {} lost messages",
            i + 1
        );
    }
}

#[test]
fn offsets_within_epsilon_give_one_order_at_every_receiver() {
    // Offsets up to 45 µs and drifts of ±2 ppm: within ε = 50 µs over the whole second.
    let offsets = [0, 45 * US, 20 * US, 33 * US];
    let drift = [2_000, -2_000, 0, 1_000];
    let nodes = simulate(&offsets, &drift, 100_000, (5 * US, 150 * US));
    assert_sorted_and_complete(&nodes, 100_000);
    for n in &nodes {
        assert!(n.late.is_empty(), "late messages: {:?}", n.late);
        assert_eq!(
            n.ordered, nodes[0].ordered,
            "receivers disagree on the order"
        );
    }
}

#[test]
fn a_clock_beyond_epsilon_is_detected_and_order_is_never_violated() {
    // Node 4 runs 400 µs ahead: far beyond ε = 50 µs.
    let offsets = [0, 10 * US, 20 * US, 400 * US];
    let drift = [0; 4];
    let nodes = simulate(&offsets, &drift, 20_000, (5 * US, 150 * US));
    assert_sorted_and_complete(&nodes, 20_000);
    assert!(
        !nodes[3].late.is_empty(),
        "the fast clock releases early, so messages reach it after their slot"
    );
    // Two-way time transfer from node 1 finds the offset and withdraws total_order.
    let mut monitor = ClockMonitor::new(Duration::from_micros(50));
    for i in 1..NODES as usize {
        let (d, turn) = (60 * US, 5 * US);
        let truth = 2_000_000 * US;
        let local = |t: i64| t + offsets[0];
        let peer = |t: i64| t + offsets[i];
        let x = Exchange {
            t1: local(truth),
            t2: peer(truth + d),
            t3: peer(truth + d + turn),
            t4: local(truth + 2 * d + turn),
        };
        monitor.record(NodeId(i as u32 + 1), x);
    }
    assert_eq!(monitor.of(NodeId(4)).map(|o| o.0), Some(400 * US));
    assert_eq!(monitor.of(NodeId(2)).map(|o| o.0), Some(10 * US));
    assert!(!monitor.total_order_ok());
}
