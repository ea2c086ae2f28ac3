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
    Capabilities, Counters, Delivery, NodeId, OpenError, Stats, Transport, TransportError,
};

/// How long `send` waits for a slow receiver's credit before reporting the window full.
const CREDIT_WAIT: Duration = Duration::from_millis(5);
/// How long the poller busy-polls after the last arrival before it sleeps between polls.
const SPIN: Duration = Duration::from_micros(200);
/// Sleep between idle polls after that.
const IDLE_SLEEP: Duration = Duration::from_micros(50);

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

    /// A transport over established connections, one per peer.
    pub fn new(
        local: NodeId,
        connections: BTreeMap<NodeId, Arc<C>>,
        counters: Arc<Counters>,
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
                .spawn(move || poll(receivers, &tx, &stop, &counters))?
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

/// Busy-polls every ring (the lowest-latency mode) while traffic flows, and for a short
/// while after; then polls between short sleeps, so an idle node does not hold a core.
fn poll<C: RcConnection>(
    mut receivers: Vec<(NodeId, RingReceiver<C>)>,
    tx: &Sender<Delivery>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let mut last = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let mut got = 0;
        receivers.retain_mut(|(from, rx)| {
            let r = rx.poll(256, |m| {
                Counters::bump(&counters.frames_received);
                Counters::bump(&counters.delivered);
                let _ = tx.send(Delivery {
                    from: *from,
                    epoch: 0,
                    bytes: Bytes::copy_from_slice(m),
                });
            });
            match r {
                Ok(n) => {
                    got += n;
                    true
                }
                Err(e) => {
                    tracing::error!(peer = %from, error = %e, "rdma connection failed; no more messages from this peer");
                    false
                }
            }
        });
        if got > 0 {
            last = Instant::now();
        } else if last.elapsed() < SPIN {
            std::thread::yield_now();
        } else {
            std::thread::sleep(IDLE_SLEEP);
        }
    }
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
        self.multicast(&self.peers.clone(), msg)
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
