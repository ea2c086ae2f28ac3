//! The `mem` backend: an in-process fabric for tests, simulation and benchmarks, with a
//! seeded fault plan (loss, duplication, reordering by delay, partitions, crashes).
//!
//! Every endpoint opened through [`crate::open`] with the same cluster id in one process
//! joins one shared fabric, whose fault plan is that of the first endpoint opened; tests
//! that want their own fabric make one with [`MemFabric::new`]. The fabric stamps the
//! sender of every frame itself and offers no way to claim another id, so it reports
//! `authenticated_source`; it reports `reliable` and `fifo_per_peer` only when its fault
//! plan cannot break them.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{
    Capabilities, Counters, Delivery, MemConfig, NodeId, OpenError, Stats, Transport,
    TransportError,
};

/// What the fault plan decided for one frame: how many copies arrive, and after what
/// delay each (zero: at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fate {
    /// One entry per delivered copy; empty when the frame is lost.
    pub copies: Vec<Duration>,
}

/// The seeded random choices of a faulty fabric. Decisions depend only on the seed and the
/// order of calls, never on frame contents, so two runs that send the same number of frames
/// in the same order suffer the same faults.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    cfg: MemConfig,
    rng: ChaCha8Rng,
}

impl FaultPlan {
    /// A plan with `cfg`'s probabilities and seed.
    pub fn new(cfg: MemConfig) -> FaultPlan {
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        FaultPlan { cfg, rng }
    }

    /// Whether the partition lets `from` reach `to`.
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        self.cfg.partitions.is_empty()
            || self
                .cfg
                .partitions
                .iter()
                .any(|g| g.contains(&from) && g.contains(&to))
    }

    /// Replaces the partition (empty: heal).
    pub fn set_partitions(&mut self, groups: Vec<Vec<NodeId>>) {
        self.cfg.partitions = groups;
    }

    /// Decides the fate of the next frame from `from` to `to`.
    pub fn decide(&mut self, from: NodeId, to: NodeId) -> Fate {
        // Draw the same number of random values whatever the outcome, so one frame's fate
        // does not shift every later one.
        let lost = self.rng.gen_bool(self.cfg.drop.clamp(0.0, 1.0));
        let dup = self.rng.gen_bool(self.cfg.duplicate.clamp(0.0, 1.0));
        let max = self.cfg.max_delay_us.max(1);
        let delays = [
            self.rng.gen_bool(self.cfg.reorder.clamp(0.0, 1.0)),
            self.rng.gen_bool(self.cfg.reorder.clamp(0.0, 1.0)),
        ];
        let us = [self.rng.gen_range(1..=max), self.rng.gen_range(1..=max)];
        if lost || !self.connected(from, to) {
            return Fate { copies: Vec::new() };
        }
        let n = if dup { 2 } else { 1 };
        Fate {
            copies: (0..n)
                .map(|i| {
                    if delays[i] {
                        Duration::from_micros(us[i])
                    } else {
                        Duration::ZERO
                    }
                })
                .collect(),
        }
    }

    /// The capabilities a fabric with this plan can promise.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            reliable: self.cfg.drop == 0.0 && self.cfg.partitions.is_empty(),
            fifo_per_peer: self.cfg.duplicate == 0.0 && self.cfg.reorder == 0.0,
            authenticated_source: true,
            max_message: self.cfg.max_frame,
            ..Capabilities::default()
        }
    }
}

struct Port {
    tx: Sender<Delivery>,
    counters: Arc<Counters>,
    generation: u64,
}

struct Timed {
    due: Instant,
    order: u64,
    tx: Sender<Delivery>,
    delivery: Delivery,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

/// Frames held back by the fault plan, delivered by one timer thread when due.
#[derive(Default)]
struct Delayed {
    heap: Mutex<BinaryHeap<Reverse<Timed>>>,
    wake: Condvar,
    stop: AtomicBool,
    started: AtomicBool,
    order: AtomicU64,
}

impl Delayed {
    fn push(self: &Arc<Self>, after: Duration, tx: Sender<Delivery>, delivery: Delivery) {
        let order = self.order.fetch_add(1, Ordering::Relaxed);
        let timed = Timed {
            due: Instant::now() + after,
            order,
            tx,
            delivery,
        };
        self.heap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Reverse(timed));
        self.wake.notify_one();
        if !self.started.swap(true, Ordering::AcqRel) {
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("weft-mem-delay".into())
                .spawn(move || me.run());
            if let Err(e) = spawned {
                tracing::error!(error = %e, "mem fabric: cannot start the delay thread");
                self.started.store(false, Ordering::Release);
            }
        }
    }

    fn run(&self) {
        let mut heap = self.heap.lock().unwrap_or_else(|e| e.into_inner());
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            match heap.peek() {
                Some(Reverse(t)) if t.due <= now => {
                    let Reverse(t) = heap.pop().expect("peeked");
                    let _ = t.tx.send(t.delivery);
                }
                Some(Reverse(t)) => {
                    let wait = t.due - now;
                    heap = self
                        .wake
                        .wait_timeout(heap, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => {
                    heap = self
                        .wake
                        .wait_timeout(heap, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

/// An in-process fabric shared by the endpoints of one cluster.
pub struct MemFabric {
    plan: Mutex<FaultPlan>,
    ports: Mutex<HashMap<NodeId, Port>>,
    crashed: Mutex<BTreeSet<NodeId>>,
    delayed: Arc<Delayed>,
    generation: AtomicU64,
}

impl Drop for MemFabric {
    fn drop(&mut self) {
        self.delayed.stop.store(true, Ordering::Relaxed);
        self.delayed.wake.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemFabric {
    /// A new, private fabric with the fault plan of `cfg`.
    pub fn new(cfg: MemConfig) -> Arc<MemFabric> {
        Arc::new(MemFabric {
            plan: Mutex::new(FaultPlan::new(cfg)),
            ports: Mutex::new(HashMap::new()),
            crashed: Mutex::new(BTreeSet::new()),
            delayed: Arc::new(Delayed::default()),
            generation: AtomicU64::new(0),
        })
    }

    /// The fabric of `cluster` in this process, made with `cfg` if no endpoint of that
    /// cluster is open.
    pub fn shared(cluster: u64, cfg: &MemConfig) -> Arc<MemFabric> {
        static FABRICS: OnceLock<Mutex<HashMap<u64, Weak<MemFabric>>>> = OnceLock::new();
        let mut all = lock(FABRICS.get_or_init(Default::default));
        if let Some(f) = all.get(&cluster).and_then(Weak::upgrade) {
            return f;
        }
        let f = MemFabric::new(cfg.clone());
        all.retain(|_, w| w.strong_count() > 0);
        all.insert(cluster, Arc::downgrade(&f));
        f
    }

    /// Attaches `local` to the fabric among `members`. Opening a node that is already
    /// attached replaces it, as a restarted process would; its old endpoint goes quiet.
    pub fn endpoint(
        self: &Arc<Self>,
        local: NodeId,
        members: &[NodeId],
        counters: Arc<Counters>,
    ) -> Result<MemTransport, OpenError> {
        if !members.contains(&local) {
            return Err(OpenError::NotAMember(local));
        }
        let mut peers: Vec<NodeId> = members.iter().copied().filter(|m| *m != local).collect();
        peers.sort();
        peers.dedup();
        let (tx, rx) = crossbeam_channel::unbounded();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        lock(&self.ports).insert(
            local,
            Port {
                tx,
                counters: Arc::clone(&counters),
                generation,
            },
        );
        lock(&self.crashed).remove(&local);
        Ok(MemTransport {
            fabric: Arc::clone(self),
            caps: lock(&self.plan).capabilities(),
            local,
            peers,
            inbox: rx,
            counters,
            generation,
        })
    }

    /// Crashes `node`: it can no longer send, and frames to it are lost, until it is
    /// opened again or [`MemFabric::recover`] is called.
    pub fn crash(&self, node: NodeId) {
        lock(&self.crashed).insert(node);
    }

    /// Undoes [`MemFabric::crash`] without losing the node's state (a pause, not a reboot).
    pub fn recover(&self, node: NodeId) {
        lock(&self.crashed).remove(&node);
    }

    /// Partitions the fabric into groups that only reach members of their own group;
    /// an empty list heals it.
    pub fn set_partitions(&self, groups: Vec<Vec<NodeId>>) {
        lock(&self.plan).set_partitions(groups);
    }

    fn carry(
        &self,
        from: NodeId,
        to: NodeId,
        bytes: Bytes,
        sender: &Counters,
    ) -> Result<(), TransportError> {
        if lock(&self.crashed).contains(&from) {
            return Err(TransportError::Closed);
        }
        Counters::bump(&sender.frames_sent);
        let fate = lock(&self.plan).decide(from, to);
        let port = {
            let ports = lock(&self.ports);
            ports
                .get(&to)
                .map(|p| (p.tx.clone(), Arc::clone(&p.counters)))
        };
        let Some((tx, receiver)) = port else {
            Counters::bump(&sender.fault_dropped);
            return Ok(()); // the peer is not up: the frame is lost, as on a wire
        };
        if fate.copies.is_empty() || lock(&self.crashed).contains(&to) {
            Counters::bump(&sender.fault_dropped);
            return Ok(());
        }
        for delay in fate.copies {
            Counters::bump(&receiver.frames_received);
            Counters::bump(&receiver.delivered);
            let delivery = Delivery {
                from,
                epoch: 0,
                bytes: bytes.clone(),
            };
            if delay.is_zero() {
                let _ = tx.send(delivery);
            } else {
                self.delayed.push(delay, tx.clone(), delivery);
            }
        }
        Ok(())
    }
}

/// One member's endpoint on a [`MemFabric`].
pub struct MemTransport {
    fabric: Arc<MemFabric>,
    caps: Capabilities,
    local: NodeId,
    peers: Vec<NodeId>,
    inbox: Receiver<Delivery>,
    counters: Arc<Counters>,
    generation: u64,
}

impl MemTransport {
    /// The fabric this endpoint is attached to, for fault injection.
    pub fn fabric(&self) -> &Arc<MemFabric> {
        &self.fabric
    }
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        let mut ports = lock(&self.fabric.ports);
        if ports.get(&self.local).map(|p| p.generation) == Some(self.generation) {
            ports.remove(&self.local);
        }
    }
}

impl Transport for MemTransport {
    fn local(&self) -> NodeId {
        self.local
    }

    fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn send(&self, to: NodeId, msg: Bytes) -> Result<(), TransportError> {
        if self.peers.binary_search(&to).is_err() {
            return Err(TransportError::UnknownPeer(to));
        }
        self.caps.check_size(msg.len())?;
        self.fabric.carry(self.local, to, msg, &self.counters)
    }

    fn broadcast(&self, msg: Bytes) -> Result<(), TransportError> {
        self.caps.check_size(msg.len())?;
        for &to in &self.peers {
            self.fabric
                .carry(self.local, to, msg.clone(), &self.counters)?;
        }
        Ok(())
    }

    fn inbox(&self) -> &Receiver<Delivery> {
        &self.inbox
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    fn recv(t: &MemTransport) -> Option<Delivery> {
        t.inbox().recv_timeout(Duration::from_secs(2)).ok()
    }

    #[test]
    fn clean_fabric_delivers_in_order_with_stamped_source() {
        let f = MemFabric::new(MemConfig::default());
        let a = f.endpoint(NodeId(1), &ids(3), Default::default()).unwrap();
        let b = f.endpoint(NodeId(2), &ids(3), Default::default()).unwrap();
        let c = f.endpoint(NodeId(3), &ids(3), Default::default()).unwrap();
        assert!(a.capabilities().reliable && a.capabilities().fifo_per_peer);
        for i in 0..100u8 {
            a.send(NodeId(2), Bytes::from(vec![i])).unwrap();
        }
        for i in 0..100u8 {
            let d = recv(&b).unwrap();
            assert_eq!((d.from, d.bytes[0]), (NodeId(1), i));
        }
        a.broadcast(Bytes::from_static(b"all")).unwrap();
        assert_eq!(recv(&b).unwrap().bytes, &b"all"[..]);
        assert_eq!(recv(&c).unwrap().from, NodeId(1));
        assert!(matches!(
            a.send(NodeId(9), Bytes::new()),
            Err(TransportError::UnknownPeer(_))
        ));
        assert!(matches!(
            a.send(NodeId(1), Bytes::new()),
            Err(TransportError::UnknownPeer(_))
        ));
    }

    #[test]
    fn faulty_plan_is_reproducible_and_drops_about_the_rate() {
        let cfg = MemConfig {
            seed: 42,
            drop: 0.1,
            duplicate: 0.05,
            reorder: 0.2,
            ..MemConfig::default()
        };
        let fates = |cfg: &MemConfig| {
            let mut p = FaultPlan::new(cfg.clone());
            (0..10_000)
                .map(|_| p.decide(NodeId(1), NodeId(2)))
                .collect::<Vec<_>>()
        };
        let (x, y) = (fates(&cfg), fates(&cfg));
        assert_eq!(x, y);
        let lost = x.iter().filter(|f| f.copies.is_empty()).count();
        assert!((800..1200).contains(&lost), "lost {lost} of 10000 at 10 %");
        let dups = x.iter().filter(|f| f.copies.len() == 2).count();
        assert!((300..700).contains(&dups), "{dups} duplicates at 5 %");
        let caps = FaultPlan::new(cfg).capabilities();
        assert!(!caps.reliable && !caps.fifo_per_peer && caps.authenticated_source);
    }

    #[test]
    fn partitions_and_crashes_cut_traffic() {
        let f = MemFabric::new(MemConfig::default());
        let a = f.endpoint(NodeId(1), &ids(3), Default::default()).unwrap();
        let b = f.endpoint(NodeId(2), &ids(3), Default::default()).unwrap();
        let c = f.endpoint(NodeId(3), &ids(3), Default::default()).unwrap();
        f.set_partitions(vec![vec![NodeId(1), NodeId(2)], vec![NodeId(3)]]);
        a.broadcast(Bytes::from_static(b"p")).unwrap();
        assert!(recv(&b).is_some());
        assert!(c.inbox().recv_timeout(Duration::from_millis(50)).is_err());
        f.set_partitions(Vec::new());
        f.crash(NodeId(2));
        assert!(matches!(
            b.send(NodeId(1), Bytes::new()),
            Err(TransportError::Closed)
        ));
        a.send(NodeId(2), Bytes::from_static(b"lost")).unwrap();
        f.recover(NodeId(2));
        a.send(NodeId(2), Bytes::from_static(b"kept")).unwrap();
        assert_eq!(recv(&b).unwrap().bytes, &b"kept"[..]);
        assert_eq!(a.stats().fault_dropped, 2);
    }

    #[test]
    fn delayed_frames_arrive_reordered() {
        let cfg = MemConfig {
            seed: 7,
            reorder: 0.5,
            max_delay_us: 2000,
            ..MemConfig::default()
        };
        let f = MemFabric::new(cfg);
        let a = f.endpoint(NodeId(1), &ids(2), Default::default()).unwrap();
        let b = f.endpoint(NodeId(2), &ids(2), Default::default()).unwrap();
        for i in 0..200u8 {
            a.send(NodeId(2), Bytes::from(vec![i])).unwrap();
        }
        let got: Vec<u8> = (0..200).map(|_| recv(&b).unwrap().bytes[0]).collect();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..200).collect::<Vec<u8>>(),
            "nothing lost or duplicated"
        );
        assert_ne!(got, sorted, "some frames overtook others");
    }
}
