//! The `vortex` backend: a Data Vortex fabric through the C API of `dv_api.h` (`dv-ffi`),
//! served by the `hw-sim` emulator unless a vendor library is linked.
//!
//! The fabric does in hardware what the software layers do over UDP: it reports
//! `reliable`, `fifo_per_peer`, `total_order`, `barrier` and `authenticated_source` (each
//! only if `dv_query` says so), so [`crate::open`] stacks no fifo, reliable or auth layer
//! on it. A receive thread sits in the fabric's barrier; each close hands the epoch's
//! messages to the inbox in the global order, stamped with their epoch. A send to the
//! local node itself is allowed: it comes back through the fabric in the global order,
//! which is what ordered elections use to place a candidate's own request among the
//! others'.
//!
//! A fabric may cut a member off: the emulator evicts one that kept the others waiting in
//! the barrier (a stopped process) or left its events unread. The receive thread then
//! attaches again under the same id, with backoff, and the sends go through the new
//! endpoint; what was sent meanwhile is lost, which Raft's retries absorb.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use dv_ffi::{Caps, Endpoint};

use crate::{
    Capabilities, Counters, Delivery, NodeId, OpenError, Stats, Transport, TransportConfig,
    TransportError, VortexConfig,
};

/// How long the receive thread waits in one barrier before checking for shutdown.
const BARRIER_POLL: Duration = Duration::from_millis(50);

/// First and longest wait between two attempts to attach again after being cut off.
const REATTACH_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_millis(500));

/// This node's attachment to the fabric: the endpoint in use, replaced when the fabric
/// cuts the node off and it attaches again.
struct Attachment {
    fabric: String,
    node: u32,
    current: RwLock<Arc<Endpoint>>,
}

impl Attachment {
    fn endpoint(&self) -> Arc<Endpoint> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Attaches again, retrying with backoff until it succeeds or `stop` is set.
    fn reattach(&self, stop: &AtomicBool) -> Option<Arc<Endpoint>> {
        let (mut wait, longest) = REATTACH_BACKOFF;
        let mut failures = 0u32;
        while !stop.load(Ordering::Acquire) {
            match Endpoint::open(&self.fabric, self.node) {
                Ok(ep) => {
                    tracing::info!(node = self.node, fabric = %self.fabric, "attached to the fabric again");
                    let ep = Arc::new(ep);
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = ep.clone();
                    return Some(ep);
                }
                Err(e) => {
                    // The first failure and then one in ten, so a long outage is visible
                    // without flooding the log.
                    if failures % 10 == 0 {
                        tracing::warn!(node = self.node, error = %e, "cannot attach to the fabric again yet");
                    }
                    failures += 1;
                }
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(longest);
        }
        None
    }
}

/// One member's endpoint on a Data Vortex fabric.
pub struct VortexTransport {
    local: NodeId,
    peers: Vec<NodeId>,
    peer_ids: Vec<u32>,
    caps: Capabilities,
    link: Arc<Attachment>,
    inbox: Receiver<Delivery>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    rx_thread: Option<JoinHandle<()>>,
}

impl VortexTransport {
    /// Attaches to the fabric `v.fabric` as `cfg.local`. Fails with
    /// [`OpenError::Fabric`] when no fabric answers there, the id is taken or the fabric
    /// refuses it.
    pub fn open(
        cfg: &TransportConfig,
        v: &VortexConfig,
        counters: Arc<Counters>,
    ) -> Result<VortexTransport, OpenError> {
        let ep = Endpoint::open(&v.fabric, cfg.local.0).map_err(|e| OpenError::Fabric {
            fabric: v.fabric.clone(),
            reason: if e.is_in_use() {
                format!("{e}: another process is attached as node {}", cfg.local)
            } else if e.is_denied() {
                format!(
                    "{e}: node {} is not among the switch's members (`--members`), or the switch's socket belongs to another user",
                    cfg.local
                )
            } else if v.fabric.starts_with("unix:") {
                format!("{e}; is a switch running there (`weft vortex-switch PATH`)?")
            } else {
                e.to_string()
            },
        })?;
        let info = ep.info();
        let caps = Capabilities {
            reliable: info.caps.contains(Caps::RELIABLE),
            fifo_per_peer: info.caps.contains(Caps::FIFO),
            total_order: info.caps.contains(Caps::TOTAL_ORDER),
            barrier: info.caps.contains(Caps::BARRIER),
            authenticated_source: info.caps.contains(Caps::SOURCE_STAMP),
            synchronized_clock: None,
            // dv_send to oneself is delivered in the global order (dv_api.h).
            loopback: true,
            max_message: info.max_message,
        };
        let peers = cfg.peer_ids();
        let members: Vec<NodeId> = cfg.nodes.iter().map(|n| n.id).collect();
        let link = Arc::new(Attachment {
            fabric: v.fabric.clone(),
            node: cfg.local.0,
            current: RwLock::new(Arc::new(ep)),
        });
        let (tx, inbox) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let rx_thread = {
            let (link, stop, counters) = (link.clone(), stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name(format!("vortex-rx-{}", cfg.local))
                .spawn(move || receive(&link, &members, &tx, &stop, &counters))?
        };
        Ok(VortexTransport {
            local: cfg.local,
            peer_ids: peers.iter().map(|p| p.0).collect(),
            peers,
            caps,
            link,
            inbox,
            counters,
            stop,
            rx_thread: Some(rx_thread),
        })
    }

    fn sent(&self, r: Result<u64, dv_ffi::Error>, size: usize) -> Result<(), TransportError> {
        match r {
            Ok(_) => {
                Counters::bump(&self.counters.frames_sent);
                Ok(())
            }
            Err(e) if e.is_too_large() => Err(TransportError::TooLarge {
                size,
                max: self.caps.max_message,
            }),
            Err(e) if e.is_closed() => Err(TransportError::Closed),
            Err(e) => Err(TransportError::Io(std::io::Error::other(e))),
        }
    }
}

/// The receive thread: barrier after barrier, hand each closed epoch to the inbox; when
/// the fabric cuts this node off, hand over what it still delivered and attach again.
fn receive(
    link: &Attachment,
    members: &[NodeId],
    tx: &Sender<Delivery>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let mut ep = link.endpoint();
    while !stop.load(Ordering::Acquire) {
        match ep.barrier(Some(BARRIER_POLL)) {
            Ok(None) => continue,
            Ok(Some(_)) => {
                if !hand_over(&ep, members, tx, counters) {
                    return;
                }
            }
            Err(e) => {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                tracing::warn!(
                    node = link.node,
                    error = %e,
                    "cut off from the fabric (evicted after a stall, or the switch went away); attaching again"
                );
                if !hand_over(&ep, members, tx, counters) {
                    return;
                }
                match link.reattach(stop) {
                    Some(new) => ep = new,
                    None => return,
                }
            }
        }
    }
}

/// Moves the messages `ep` has received into the inbox and drops its acknowledgements;
/// false once the inbox is gone.
fn hand_over(
    ep: &Endpoint,
    members: &[NodeId],
    tx: &Sender<Delivery>,
    counters: &Counters,
) -> bool {
    while let Ok(Some(m)) = ep.recv(Some(Duration::ZERO)) {
        Counters::bump(&counters.frames_received);
        let from = NodeId(m.source);
        if !members.contains(&from) {
            Counters::bump(&counters.rejected_unknown_source);
            continue;
        }
        Counters::bump(&counters.delivered);
        let d = Delivery {
            from,
            epoch: m.epoch,
            bytes: Bytes::from(m.bytes),
        };
        if tx.send(d).is_err() {
            return false;
        }
    }
    while let Ok(Some(_ack)) = ep.poll_ack(Some(Duration::ZERO)) {}
    true
}

impl Transport for VortexTransport {
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
        if to != self.local && !self.peers.contains(&to) {
            return Err(TransportError::UnknownPeer(to));
        }
        self.caps.check_size(msg.len())?;
        self.sent(self.link.endpoint().send(to.0, &msg), msg.len())
    }

    fn broadcast(&self, msg: Bytes) -> Result<(), TransportError> {
        self.caps.check_size(msg.len())?;
        self.sent(
            self.link.endpoint().multicast(Some(&self.peer_ids), &msg),
            msg.len(),
        )
    }

    fn multicast(&self, to: &[NodeId], msg: Bytes) -> Result<(), TransportError> {
        if let Some(bad) = to
            .iter()
            .find(|n| **n != self.local && !self.peers.contains(n))
        {
            return Err(TransportError::UnknownPeer(*bad));
        }
        self.caps.check_size(msg.len())?;
        let ids: Vec<u32> = to.iter().map(|n| n.0).collect();
        self.sent(self.link.endpoint().multicast(Some(&ids), &msg), msg.len())
    }

    fn inbox(&self) -> &Receiver<Delivery> {
        &self.inbox
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

impl Drop for VortexTransport {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.rx_thread.take() {
            let _ = t.join();
        }
    }
}
