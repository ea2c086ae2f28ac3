//! The emulated switch keeps the promises of `dv_api.h`: one global order per epoch at
//! every receiver, delivery at the barrier, acknowledgements, stamped sources, crash
//! visibility, and faults that cost time but never messages.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use hw_sim::vortex::{DvError, Endpoint, Switch, SwitchConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// A message as one receiver saw it: (source, sender's sequence number, epoch).
type Seen = (u32, u32, u64);

fn encode(src: u32, seq: u32) -> Vec<u8> {
    let mut v = src.to_le_bytes().to_vec();
    v.extend(seq.to_le_bytes());
    v
}

fn decode(b: &[u8]) -> (u32, u32) {
    (
        u32::from_le_bytes(b[..4].try_into().unwrap()),
        u32::from_le_bytes(b[4..8].try_into().unwrap()),
    )
}

struct SenderLog {
    /// seq → (recipients, epoch the ack reported)
    sent: HashMap<u32, (Vec<u32>, u64)>,
    seen: Vec<Seen>,
}

/// `nodes` endpoints each run `epochs` rounds of: inject 0–3 messages to random groups
/// (everyone, a subset, or itself), enter the barrier, drain.
fn run_random_epochs(switch: &Arc<Switch>, nodes: u32, epochs: u32, seed: u64) -> Vec<SenderLog> {
    let start = Arc::new(Barrier::new(nodes as usize));
    let eps: Vec<Endpoint> = (1..=nodes)
        .map(|n| Endpoint::attach(switch, n).unwrap())
        .collect();
    let handles: Vec<_> = eps
        .into_iter()
        .map(|ep| {
            let start = start.clone();
            std::thread::spawn(move || {
                let me = ep.node();
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ u64::from(me));
                let mut log = SenderLog {
                    sent: HashMap::new(),
                    seen: Vec::new(),
                };
                let mut seq = 0u32;
                let mut tickets = HashMap::new();
                start.wait();
                for _ in 0..epochs {
                    for _ in 0..rng.gen_range(0..4) {
                        let others: Vec<u32> = (1..=nodes).filter(|n| *n != me).collect();
                        let (group, to): (Option<Vec<u32>>, Vec<u32>) = match rng.gen_range(0..3) {
                            0 => (None, others),
                            1 => {
                                let g: Vec<u32> =
                                    (1..=nodes).filter(|_| rng.gen_range(0..2) == 0).collect();
                                (Some(g.clone()), g)
                            }
                            _ => (Some(vec![me]), vec![me]),
                        };
                        let t = ep.multicast(group.as_deref(), &encode(me, seq)).unwrap();
                        tickets.insert(t, seq);
                        log.sent.insert(seq, (to, 0));
                        seq += 1;
                    }
                    let close = ep.barrier(WAIT).unwrap();
                    while let Ok(m) = ep.recv(Some(Duration::ZERO)) {
                        let (src, s) = decode(&m.bytes);
                        assert_eq!(
                            src, m.source,
                            "payload names its sender, the stamp must agree"
                        );
                        assert_eq!(m.epoch, close.epoch, "delivered at the close of its epoch");
                        log.seen.push((m.source, s, m.epoch));
                    }
                    while let Ok(a) = ep.poll_ack(Some(Duration::ZERO)) {
                        let s = tickets.remove(&a.ticket).expect("ack for a sent ticket");
                        let entry = log.sent.get_mut(&s).unwrap();
                        assert_eq!(
                            a.delivered as usize,
                            entry.0.len(),
                            "acked to every recipient"
                        );
                        assert_eq!(a.refused, 0);
                        assert_eq!(a.epoch, close.epoch);
                        entry.1 = a.epoch;
                    }
                }
                assert!(
                    tickets.is_empty(),
                    "every message acknowledged: {} missing",
                    tickets.len()
                );
                log
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn check_one_global_order(logs: &[SenderLog]) {
    // Every message reached exactly its recipients, in the epoch its ack names.
    let counts: Vec<HashMap<(u32, u32), (usize, u64)>> = logs
        .iter()
        .map(|rx| {
            let mut c = HashMap::new();
            for m in &rx.seen {
                let e = c.entry((m.0, m.1)).or_insert((0, m.2));
                e.0 += 1;
            }
            c
        })
        .collect();
    for (i, sender) in logs.iter().enumerate() {
        let src = i as u32 + 1;
        for (seq, (to, epoch)) in &sender.sent {
            for (j, c) in counts.iter().enumerate() {
                let got = c.get(&(src, *seq)).copied();
                if to.contains(&(j as u32 + 1)) {
                    assert_eq!(
                        got,
                        Some((1, *epoch)),
                        "message {src}/{seq} at node {}",
                        j + 1
                    );
                } else {
                    assert_eq!(got, None, "message {src}/{seq} leaked to node {}", j + 1);
                }
            }
        }
    }
    // Any two receivers see the messages they share in the same order.
    for a in logs {
        let pos: HashMap<(u32, u32), usize> = a
            .seen
            .iter()
            .enumerate()
            .map(|(i, m)| ((m.0, m.1), i))
            .collect();
        for b in logs {
            let shared: Vec<usize> = b
                .seen
                .iter()
                .filter_map(|m| pos.get(&(m.0, m.1)).copied())
                .collect();
            assert!(
                shared.windows(2).all(|w| w[0] < w[1]),
                "two receivers disagree on the order"
            );
        }
        // Per sender FIFO and epochs never go back.
        let mut last: HashMap<u32, u32> = HashMap::new();
        for w in a.seen.windows(2) {
            assert!(w[0].2 <= w[1].2);
        }
        for m in &a.seen {
            if let Some(prev) = last.insert(m.0, m.1) {
                assert!(prev < m.1, "per-sender order broken");
            }
        }
    }
}

/// The switch the ordering tests run on: no barrier deadline, so that a test thread the
/// scheduler leaves out for a while is waited for rather than evicted (eviction has tests
/// of its own, in `switch_faults.rs`).
fn patient(cfg: SwitchConfig) -> Arc<Switch> {
    Switch::new(SwitchConfig {
        barrier_deadline: None,
        ..cfg
    })
}

#[test]
fn ten_thousand_random_epochs_one_order_at_every_receiver() {
    let switch = patient(SwitchConfig::default());
    let logs = run_random_epochs(&switch, 4, 10_000, 7);
    let delivered: usize = logs.iter().map(|l| l.seen.len()).sum();
    assert!(
        delivered > 20_000,
        "the run carried traffic ({delivered} deliveries)"
    );
    check_one_global_order(&logs);
}

#[test]
fn jitter_and_pauses_cost_time_never_messages() {
    let switch = patient(SwitchConfig {
        jitter: Duration::from_micros(300),
        seed: 3,
        ..SwitchConfig::default()
    });
    let sw = switch.clone();
    let pauser = std::thread::spawn(move || {
        for i in 0..10 {
            std::thread::sleep(Duration::from_millis(5));
            sw.pause(1 + i % 3, Duration::from_millis(3));
        }
    });
    let logs = run_random_epochs(&switch, 3, 500, 11);
    pauser.join().unwrap();
    check_one_global_order(&logs);
}

#[test]
fn nothing_is_delivered_before_the_barrier_and_a_paused_node_holds_it() {
    let switch = patient(SwitchConfig::default());
    let a = Endpoint::attach(&switch, 1).unwrap();
    let b = Endpoint::attach(&switch, 2).unwrap();
    a.send(2, b"x").unwrap();
    assert_eq!(
        b.recv(Some(Duration::from_millis(20))),
        Err(DvError::TimedOut)
    );
    // Only `a` is in the barrier: the epoch stays open.
    assert_eq!(
        a.barrier(Some(Duration::from_millis(20))),
        Err(DvError::TimedOut)
    );
    assert_eq!(b.queued(), 0);
    switch.pause(2, Duration::from_millis(150));
    let t = std::thread::spawn(move || {
        let c = b.barrier(WAIT).unwrap();
        (b, c)
    });
    // `b` entered but is paused: still no close.
    assert_eq!(
        a.barrier(Some(Duration::from_millis(30))),
        Err(DvError::TimedOut)
    );
    let ca = a.barrier(WAIT).unwrap();
    let (b, cb) = t.join().unwrap();
    assert_eq!(ca, cb);
    assert_eq!(ca.members, vec![1, 2]);
    let m = b.recv(Some(Duration::ZERO)).unwrap();
    assert_eq!((m.source, &m.bytes[..], m.epoch), (1, &b"x"[..], ca.epoch));
    let ack = a.poll_ack(Some(Duration::ZERO)).unwrap();
    assert_eq!((ack.delivered, ack.refused, ack.epoch), (1, 0, ca.epoch));
}

#[test]
fn a_crash_stops_injection_and_shows_at_the_next_barrier() {
    let switch = Switch::new(SwitchConfig::default());
    let eps: Vec<Endpoint> = (1..=3)
        .map(|n| Endpoint::attach(&switch, n).unwrap())
        .collect();
    eps[2].multicast(None, b"last words").unwrap();
    assert!(switch.crash(3));
    assert_eq!(eps[2].send(1, b"too late"), Err(DvError::Closed));
    assert_eq!(eps[2].barrier(WAIT), Err(DvError::Closed));
    eps[0].send(3, b"to the dead").unwrap();
    let (e0, e1) = (&eps[0], &eps[1]);
    let closes = std::thread::scope(|s| {
        let h = s.spawn(|| e1.barrier(WAIT).unwrap());
        (e0.barrier(WAIT).unwrap(), h.join().unwrap())
    });
    assert_eq!(closes.0.members, vec![1, 2]);
    assert_eq!(closes.1.members, vec![1, 2]);
    // What it injected before the crash is still delivered.
    for e in &eps[..2] {
        let m = e.recv(Some(Duration::ZERO)).unwrap();
        assert_eq!((m.source, &m.bytes[..]), (3, &b"last words"[..]));
    }
    let ack = eps[0].poll_ack(Some(Duration::ZERO)).unwrap();
    assert_eq!(
        (ack.delivered, ack.refused),
        (0, 1),
        "the dead recipient is reported"
    );
    // The id is free again: a restarted node attaches and is a member after one barrier.
    let back = Endpoint::attach(&switch, 3).unwrap();
    let (e0, e1) = (&eps[0], &eps[1]);
    let c = std::thread::scope(|s| {
        let h1 = s.spawn(|| e1.barrier(WAIT).unwrap());
        let h3 = s.spawn(|| back.barrier(WAIT).unwrap());
        let c = e0.barrier(WAIT).unwrap();
        assert_eq!(h1.join().unwrap(), c);
        assert_eq!(h3.join().unwrap(), c);
        c
    });
    assert_eq!(c.members, vec![1, 2, 3]);
}

#[test]
fn a_live_id_cannot_be_claimed_twice_and_limits_are_enforced() {
    let switch = Switch::new(SwitchConfig {
        max_message: 16,
        ..SwitchConfig::default()
    });
    let a = Endpoint::attach(&switch, 1).unwrap();
    assert_eq!(Endpoint::attach(&switch, 1).err(), Some(DvError::InUse));
    assert_eq!(a.send(1, &[0; 17]), Err(DvError::TooLarge));
    assert_eq!(a.recv(Some(Duration::ZERO)), Err(DvError::Empty));
    assert_eq!(Endpoint::open("bogus", 1).err(), Some(DvError::Invalid));
    assert_eq!(
        Endpoint::open("unix:/nonexistent/dv.sock", 1).err(),
        Some(DvError::NoFabric)
    );
    for e in DvError::ALL {
        assert_eq!(DvError::from_code(e.code()), Some(e));
    }
}

#[test]
fn an_idle_fabric_closes_empty_epochs_slowly() {
    let switch = Switch::new(SwitchConfig {
        idle_epoch: Duration::from_millis(5),
        ..SwitchConfig::default()
    });
    let a = Endpoint::attach(&switch, 1).unwrap();
    let first = a.barrier(WAIT).unwrap(); // closes at once: the attach changed membership
    let t = std::time::Instant::now();
    let mut last = first.epoch;
    for _ in 0..10 {
        let c = a.barrier(WAIT).unwrap();
        assert_eq!(c.epoch, last + 1);
        last = c.epoch;
    }
    assert!(
        t.elapsed() >= Duration::from_millis(45),
        "empty epochs wait out the idle period"
    );
}
