//! [`RdmaTransport`]: the `rdma` backend's [`Transport`], one RC connection per peer with a
//! ring each way, and a polling thread that hands arrivals to the inbox.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use super::emulated::EmulatedRc;
use super::{RcConnection, RingError, RingReceiver, RingSender};
use crate::{
    Capabilities, Completion, Counters, Delivery, NodeId, OpenError, Stats, Transport,
    TransportError,
};

/// How long `send` waits for a slow receiver's credit before reporting the window full.
const CREDIT_WAIT: Duration = Duration::from_millis(5);
/// How long the poller busy-polls after the last arrival before it waits (event mode).
const SPIN: Duration = Duration::from_micros(200);
/// A [`SleepWait`]'s sleep between idle polls.
const IDLE_SLEEP: Duration = Duration::from_micros(50);
/// Longest single wait, so that closing the transport is never held up for longer.
const MAX_WAIT: Duration = Duration::from_millis(10);

/// How the poller waits when no message is arriving (event mode).
pub trait ArrivalWait: Send {
    /// Blocks for at most `max`, and returns early once an armed connection
    /// ([`RcConnection::arm`]) may have an arrival.
    fn wait(&mut self, max: Duration);
}

/// Sleeps in short steps: for connections without completion events (the emulation).
pub struct SleepWait;

impl ArrivalWait for SleepWait {
    fn wait(&mut self, max: Duration) {
        std::thread::sleep(IDLE_SLEEP.min(max));
    }
}

/// One member's endpoint: a ring sender per peer, and the poller of the rings that peers
/// write into.
pub struct RdmaTransport<C: RcConnection + 'static> {
    local: NodeId,
    peers: Vec<NodeId>,
    caps: Capabilities,
    senders: BTreeMap<NodeId, Mutex<RingSender<C>>>,
    inbox: Receiver<Delivery>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
    /// What must outlive the connections (the emulated fabric that pairs them).
    owner: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl<C: RcConnection + 'static> RdmaTransport<C> {
    /// Keeps `owner` alive as long as this transport (the emulated fabric, so that members
    /// opened later are connected to the same queue pairs).
    pub fn holding(mut self, owner: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        self.owner = Some(owner);
        self
    }

    /// A transport over established connections, one per peer, whose receiving thread
    /// waits for arrivals as `completion` says, through `waiter`.
    pub fn new(
        local: NodeId,
        connections: BTreeMap<NodeId, Arc<C>>,
        counters: Arc<Counters>,
        completion: Completion,
        waiter: Box<dyn ArrivalWait>,
    ) -> Result<RdmaTransport<C>, OpenError> {
        let max_message = connections
            .values()
            .map(|c| c.remote_capacity() / 2)
            .min()
            .unwrap_or(0);
        let caps = Capabilities {
            reliable: true,
            fifo_per_peer: true,
            max_message,
            ..Capabilities::default()
        };
        let senders = connections
            .iter()
            .map(|(id, c)| (*id, Mutex::new(RingSender::new(c.clone()))))
            .collect();
        let receivers: Vec<(NodeId, RingReceiver<C>)> = connections
            .iter()
            .map(|(id, c)| (*id, RingReceiver::new(c.clone())))
            .collect();
        let (tx, inbox) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name(format!("rdma-poll-{local}"))
                .spawn(move || {
                    let mut poller = Poller {
                        receivers,
                        tx,
                        counters,
                        completion,
                        waiter,
                    };
                    poller.run(&stop)
                })?
        };
        Ok(RdmaTransport {
            local,
            peers: connections.keys().copied().collect(),
            caps,
            senders,
            inbox,
            counters,
            stop,
            poller: Some(poller),
            owner: None,
        })
    }
}

/// The receiving thread: takes records from every ring into the inbox.
struct Poller<C: RcConnection> {
    receivers: Vec<(NodeId, RingReceiver<C>)>,
    tx: Sender<Delivery>,
    counters: Arc<Counters>,
    completion: Completion,
    waiter: Box<dyn ArrivalWait>,
}

impl<C: RcConnection> Poller<C> {
    /// Busy-polls every ring while traffic flows. In busy mode it never stops; in event
    /// mode, once nothing arrived for a short while, it arms every connection, polls once
    /// more (an arrival between the last poll and the arming raises no event), and waits.
    fn run(&mut self, stop: &AtomicBool) {
        let mut last = Instant::now();
        while !stop.load(Ordering::Acquire) {
            if self.poll_all() > 0 {
                last = Instant::now();
            } else if self.completion == Completion::Busy || last.elapsed() < SPIN {
                // Yielding costs little on a dedicated core and lets other threads run
                // where cores are shared.
                std::thread::yield_now();
            } else {
                self.receivers.retain(|(from, rx)| healthy(*from, rx.arm()));
                if self.poll_all() == 0 {
                    self.waiter.wait(MAX_WAIT);
                }
            }
        }
    }

    /// Takes what arrived on every ring; a failed connection is logged and dropped.
    fn poll_all(&mut self) -> usize {
        let mut got = 0;
        let (tx, counters) = (&self.tx, &self.counters);
        self.receivers.retain_mut(|(from, rx)| {
            let r = rx.poll(256, |m| {
                Counters::bump(&counters.frames_received);
                Counters::bump(&counters.delivered);
                let _ = tx.send(Delivery {
                    from: *from,
                    epoch: 0,
                    bytes: m,
                });
            });
            got += r.as_ref().map_or(0, |n| *n);
            healthy(*from, r.map(drop))
        });
        got
    }
}

/// Whether the connection from `from` is still usable; a failure is logged once, as the
/// poller drops the connection.
fn healthy(from: NodeId, r: Result<(), RingError>) -> bool {
    r.map_err(|e| {
        tracing::error!(peer = %from, error = %e, "rdma connection failed; no more messages from this peer")
    })
    .is_ok()
}

impl<C: RcConnection + 'static> Transport for RdmaTransport<C> {
    fn local(&self) -> NodeId {
        self.local
    }

    fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Writes `msg` into `to`'s ring; waits up to a few milliseconds for credit from a slow
    /// receiver, then reports its window full.
    fn send(&self, to: NodeId, msg: Bytes) -> Result<(), TransportError> {
        let sender = self
            .senders
            .get(&to)
            .ok_or(TransportError::UnknownPeer(to))?;
        self.caps.check_size(msg.len())?;
        let mut s = sender.lock().unwrap_or_else(|p| p.into_inner());
        let start = Instant::now();
        loop {
            match s.send(&msg) {
                Ok(()) => {
                    Counters::bump(&self.counters.frames_sent);
                    return Ok(());
                }
                Err(RingError::Full { .. }) if start.elapsed() < CREDIT_WAIT => {
                    std::thread::yield_now()
                }
                Err(RingError::Full { .. }) => {
                    return Err(TransportError::WindowFull {
                        peer: to,
                        limit: self.caps.max_message * 2,
                    })
                }
                Err(RingError::TooLarge { size, max }) => {
                    return Err(TransportError::TooLarge { size, max })
                }
                Err(e) => return Err(TransportError::Io(std::io::Error::other(e))),
            }
        }
    }

    fn broadcast(&self, msg: Bytes) -> Result<(), TransportError> {
        self.multicast(&self.peers, msg)
    }

    fn inbox(&self) -> &Receiver<Delivery> {
        &self.inbox
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

impl<C: RcConnection + 'static> Drop for RdmaTransport<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
    }
}

/// Both ends of one emulated connection: the lower node id's side first.
type ConnectionPair = (Arc<EmulatedRc>, Arc<EmulatedRc>);

/// The emulated verbs "subnet" of one cluster in this process: the connection between two
/// members is made when the first of them opens, as the out-of-band handshake would.
#[derive(Default)]
pub struct EmulatedFabric {
    pairs: Mutex<HashMap<(NodeId, NodeId), ConnectionPair>>,
    opened: Mutex<Vec<NodeId>>,
}

impl EmulatedFabric {
    /// The fabric of cluster `cluster` in this process.
    pub fn shared(cluster: u64) -> Arc<EmulatedFabric> {
        static ALL: OnceLock<Mutex<HashMap<u64, Weak<EmulatedFabric>>>> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.retain(|_, w| w.strong_count() > 0);
        if let Some(f) = all.get(&cluster).and_then(Weak::upgrade) {
            return f;
        }
        let f = Arc::new(EmulatedFabric::default());
        all.insert(cluster, Arc::downgrade(&f));
        f
    }

    /// `local`'s connections to `peers`, with rings of `ring_bytes`. A member opens once per
    /// fabric (which lives while any of its transports holds it): reconnecting queue pairs
    /// after a restart is not emulated.
    pub fn connect(
        self: &Arc<Self>,
        local: NodeId,
        peers: &[NodeId],
        ring_bytes: usize,
    ) -> Result<BTreeMap<NodeId, Arc<EmulatedRc>>, OpenError> {
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if opened.contains(&local) {
            return Err(OpenError::Fabric {
                fabric: "rdma (emulated)".into(),
                reason: format!("node {local} is already open on this emulated fabric"),
            });
        }
        opened.push(local);
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        Ok(peers
            .iter()
            .map(|&p| {
                let key = (local.min(p), local.max(p));
                let (lo, hi) = pairs
                    .entry(key)
                    .or_insert_with(|| EmulatedRc::pair(ring_bytes))
                    .clone();
                (p, if local < p { lo } else { hi })
            })
            .collect())
    }
}
