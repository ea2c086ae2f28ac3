//! Deadline-ordered delivery: one delivery order at every receiver, from synchronized
//! clocks instead of a sequencer (the idea of Nezha's deadline-ordered multicast and of
//! time-triggered Ethernet). Sans-I/O: the caller passes clock readings in.
//!
//! A sender stamps each message with `deadline = now + Δ` ([`DeadlineSender`]). A receiver
//! ([`DeadlineReceiver`]) holds it until its own clock passes `deadline + ε` and then
//! releases held messages in `(deadline, sender, seq)` order. If every two clocks are within
//! `ε` and every message arrives within `Δ − ε` of being sent, every receiver holds every
//! message before its release time, so all receivers release the same messages in the same
//! order. A message that arrives after its release time is **late**: it is never slotted
//! into the order (other receivers may already have passed it) but handed back for the
//! ordinary fifo/reliable path. [`ClockMonitor`] measures offsets to peers by two-way time
//! transfer and says when they exceed `ε`, so the guarantee is withdrawn, never silently
//! broken.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::NodeId;

/// A message's place in the deadline order; every receiver sorts by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// Sender's clock at send time plus Δ, in ns.
    pub deadline_ns: i64,
    /// Ties on the deadline are broken by sender...
    pub sender: NodeId,
    /// ...and then by the sender's sequence number.
    pub seq: u64,
    /// Sender's clock at send time, in ns (for delay measurement; not part of the order,
    /// being a function of the fields above for a given Δ).
    pub sent_ns: i64,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Δ that follows measured one-way delays: the largest of the recent samples plus a
/// quarter, plus ε, within configured bounds; the maximum until enough samples came in to
/// trust their largest.
#[derive(Clone, Debug)]
pub struct AdaptiveDelta {
    min_ns: i64,
    max_ns: i64,
    epsilon_ns: i64,
    /// Samples observed so far.
    seen: u64,
    /// The candidates for the window's maximum, (sample number, delay) with delays
    /// decreasing: the front is the maximum, so `current` (every send) is O(1).
    maxima: VecDeque<(u64, i64)>,
}

impl AdaptiveDelta {
    /// Recent samples kept.
    const WINDOW: usize = 1024;
    /// Samples needed before Δ leaves its maximum.
    const MIN_SAMPLES: usize = 64;

    /// Δ starts at `max` (safe before anything is measured) and adapts within `min..=max`.
    pub fn new(min: Duration, max: Duration, epsilon: Duration) -> AdaptiveDelta {
        AdaptiveDelta {
            min_ns: nanos(min),
            max_ns: nanos(max.max(min)),
            epsilon_ns: nanos(epsilon),
            seen: 0,
            maxima: VecDeque::new(),
        }
    }

    /// Records one measured one-way delay (receiver's clock at arrival minus sender's at
    /// send: it includes their offset, which is within ε).
    pub fn observe(&mut self, delay_ns: i64) {
        let (n, delay) = (self.seen, delay_ns.max(0));
        self.seen += 1;
        // A sample no larger than this one, and older, can never be the maximum again.
        while self.maxima.back().is_some_and(|(_, d)| *d <= delay) {
            self.maxima.pop_back();
        }
        self.maxima.push_back((n, delay));
        while self
            .maxima
            .front()
            .is_some_and(|(i, _)| i + Self::WINDOW as u64 <= n)
        {
            self.maxima.pop_front();
        }
    }

    /// The Δ to stamp with now.
    pub fn current(&self) -> Duration {
        let ns = match self.maxima.front() {
            Some((_, m)) if self.seen >= Self::MIN_SAMPLES as u64 => m
                .saturating_add(m / 4)
                .saturating_add(self.epsilon_ns)
                .clamp(self.min_ns, self.max_ns),
            _ => self.max_ns,
        };
        Duration::from_nanos(ns as u64)
    }
}

/// The sending side: stamps messages with their deadlines.
#[derive(Clone, Debug)]
pub struct DeadlineSender {
    local: NodeId,
    next_seq: u64,
}

impl DeadlineSender {
    /// A sender for node `local`.
    pub fn new(local: NodeId) -> DeadlineSender {
        DeadlineSender { local, next_seq: 0 }
    }

    /// The stamp of a message sent at `now_ns` with `delta`.
    pub fn stamp(&mut self, now_ns: i64, delta: Duration) -> Stamp {
        let seq = self.next_seq;
        self.next_seq += 1;
        Stamp {
            deadline_ns: now_ns.saturating_add(nanos(delta)),
            sender: self.local,
            seq,
            sent_ns: now_ns,
        }
    }
}

/// What became of an arriving message.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// Held for release in deadline order.
    Held,
    /// Too late for its place in the order: the caller delivers it on the ordinary path.
    Late(Stamp, T),
}

/// The receiving side: holds messages until their deadline plus ε, releases in order.
#[derive(Debug)]
pub struct DeadlineReceiver<T> {
    epsilon_ns: i64,
    held: BTreeMap<Stamp, T>,
    last_released: Option<Stamp>,
    /// Messages reported late so far.
    pub late: u64,
}

impl<T> DeadlineReceiver<T> {
    /// A receiver trusting clocks to agree within `epsilon`.
    pub fn new(epsilon: Duration) -> DeadlineReceiver<T> {
        DeadlineReceiver {
            epsilon_ns: nanos(epsilon),
            held: BTreeMap::new(),
            last_released: None,
            late: 0,
        }
    }

    /// A message with `stamp` arrived when the local clock read `now_ns`.
    pub fn arrive(&mut self, stamp: Stamp, msg: T, now_ns: i64) -> Arrival<T> {
        let past_release = now_ns >= stamp.deadline_ns.saturating_add(self.epsilon_ns);
        let behind = self.last_released.is_some_and(|l| stamp <= l);
        if past_release || behind {
            self.late += 1;
            return Arrival::Late(stamp, msg);
        }
        self.held.insert(stamp, msg);
        Arrival::Held
    }

    /// Releases, in order, every held message whose `deadline + ε` the local clock (`now_ns`)
    /// has passed.
    pub fn release(&mut self, now_ns: i64) -> Vec<(Stamp, T)> {
        let mut out = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            if now_ns < entry.key().deadline_ns.saturating_add(self.epsilon_ns) {
                break;
            }
            let (stamp, msg) = entry.remove_entry();
            self.last_released = Some(stamp);
            out.push((stamp, msg));
        }
        out
    }

    /// When the next held message is due, on the local clock.
    pub fn next_release_ns(&self) -> Option<i64> {
        self.held
            .keys()
            .next()
            .map(|s| s.deadline_ns.saturating_add(self.epsilon_ns))
    }
}

/// One two-way time transfer with a peer: `t1` request sent (local clock), `t2` request
/// received (peer's clock), `t3` answer sent (peer's), `t4` answer received (local).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Local send time.
    pub t1: i64,
    /// Peer receive time.
    pub t2: i64,
    /// Peer send time.
    pub t3: i64,
    /// Local receive time.
    pub t4: i64,
}

impl Exchange {
    /// The peer's clock minus the local one, assuming symmetric paths (IEEE 1588's
    /// estimate; an asymmetry `a` skews it by `a / 2`).
    /// Saturates rather than overflows: the peer's times come off the wire.
    pub fn offset_ns(&self) -> i64 {
        let out = self.t2.saturating_sub(self.t1);
        let back = self.t3.saturating_sub(self.t4);
        out / 2 + back / 2
    }

    /// The round-trip delay without the peer's turnaround (saturating, like the offset).
    pub fn delay_ns(&self) -> i64 {
        let round = self.t4.saturating_sub(self.t1);
        round.saturating_sub(self.t3.saturating_sub(self.t2))
    }
}

/// Offsets and delays to each peer, and whether they still justify `total_order`.
#[derive(Clone, Debug)]
pub struct ClockMonitor {
    epsilon_ns: i64,
    peers: BTreeMap<NodeId, (i64, i64)>,
}

impl ClockMonitor {
    /// A monitor of a cluster that claims clocks within `epsilon`.
    pub fn new(epsilon: Duration) -> ClockMonitor {
        ClockMonitor {
            epsilon_ns: nanos(epsilon),
            peers: BTreeMap::new(),
        }
    }

    /// Records an exchange with `peer`; returns whether the guarantee still holds. The
    /// first exchange that breaks it logs which peer and by how much.
    pub fn record(&mut self, peer: NodeId, x: Exchange) -> bool {
        let was_ok = self.total_order_ok();
        self.peers.insert(peer, (x.offset_ns(), x.delay_ns()));
        let ok = self.total_order_ok();
        if was_ok && !ok {
            tracing::warn!(
                %peer,
                offset_ns = x.offset_ns(),
                epsilon_ns = self.epsilon_ns,
                "clock offset exceeds epsilon: withdrawing total_order (elections fall back to ordinary Raft)"
            );
        }
        ok
    }

    /// Latest (offset, delay) to `peer`, in ns.
    pub fn of(&self, peer: NodeId) -> Option<(i64, i64)> {
        self.peers.get(&peer).copied()
    }

    /// How many peers have been measured.
    pub fn measured(&self) -> usize {
        self.peers.len()
    }

    /// Whether every measured offset is within ε.
    pub fn total_order_ok(&self) -> bool {
        self.peers.values().all(|(o, _)| o.abs() <= self.epsilon_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(deadline_ns: i64, sender: u32, seq: u64) -> Stamp {
        Stamp {
            deadline_ns,
            sender: NodeId(sender),
            seq,
            sent_ns: deadline_ns - 100,
        }
    }

    #[test]
    fn holds_until_deadline_plus_epsilon_and_releases_in_key_order() {
        let mut r = DeadlineReceiver::new(Duration::from_nanos(10));
        assert_eq!(r.arrive(stamp(200, 2, 0), "b", 50), Arrival::Held);
        assert_eq!(r.arrive(stamp(100, 3, 0), "a", 60), Arrival::Held);
        assert_eq!(r.arrive(stamp(200, 1, 0), "c", 70), Arrival::Held);
        assert!(r.release(109).is_empty());
        assert_eq!(
            r.release(110).iter().map(|m| m.1).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(r.next_release_ns(), Some(210));
        // Ties on the deadline go by sender id.
        assert_eq!(
            r.release(500).iter().map(|m| m.1).collect::<Vec<_>>(),
            ["c", "b"]
        );
        // Past its release time, or behind what was released: late, never reordered.
        assert!(matches!(
            r.arrive(stamp(300, 1, 1), "d", 310),
            Arrival::Late(..)
        ));
        assert!(matches!(
            r.arrive(stamp(150, 1, 2), "e", 0),
            Arrival::Late(..)
        ));
        assert_eq!(r.late, 2);
    }

    #[test]
    fn two_way_transfer_recovers_offset_and_delay() {
        // Peer 30 ns ahead; 100 ns each way; 5 ns turnaround.
        let x = Exchange {
            t1: 1000,
            t2: 1130,
            t3: 1135,
            t4: 1205,
        };
        assert_eq!(x.offset_ns(), 30);
        assert_eq!(x.delay_ns(), 200);
        let mut m = ClockMonitor::new(Duration::from_nanos(50));
        assert!(m.record(NodeId(2), x));
        let far = Exchange {
            t2: 1200,
            t3: 1205,
            ..x
        };
        assert!(!m.record(NodeId(3), far));
        assert!(!m.total_order_ok());
        assert_eq!(m.of(NodeId(3)), Some((100, 200)));
    }

    #[test]
    fn delta_adapts_to_measured_delays_within_bounds() {
        let us = Duration::from_micros;
        let mut d = AdaptiveDelta::new(us(20), us(1000), us(10));
        assert_eq!(d.current(), us(1000));
        for _ in 0..63 {
            d.observe(80_000);
        }
        assert_eq!(d.current(), us(1000), "too few samples to trust");
        d.observe(80_000);
        assert_eq!(d.current(), us(110)); // 80 + 20 + ε 10
        d.observe(10_000_000);
        assert_eq!(d.current(), us(1000));
    }
}
