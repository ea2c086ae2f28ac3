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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// One member's endpoint on a Data Vortex fabric.
pub struct VortexTransport {
    local: NodeId,
    peers: Vec<NodeId>,
    peer_ids: Vec<u32>,
    caps: Capabilities,
    ep: Arc<Endpoint>,
    inbox: Receiver<Delivery>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    rx_thread: Option<JoinHandle<()>>,
}

impl VortexTransport {
    /// Attaches to the fabric `v.fabric` as `cfg.local`. Fails with
    /// [`OpenError::Fabric`] when no fabric answers there or the id is taken.
    pub fn open(
        cfg: &TransportConfig,
        v: &VortexConfig,
        counters: Arc<Counters>,
    ) -> Result<VortexTransport, OpenError> {
        let ep = Endpoint::open(&v.fabric, cfg.local.0).map_err(|e| OpenError::Fabric {
            fabric: v.fabric.clone(),
            reason: if e.is_in_use() {
                format!("{e}: another process is attached as node {}", cfg.local)
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
        let ep = Arc::new(ep);
        let (tx, inbox) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let rx_thread = {
            let (ep, stop, counters) = (ep.clone(), stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name(format!("vortex-rx-{}", cfg.local))
                .spawn(move || receive(&ep, &members, &tx, &stop, &counters))?
        };
        Ok(VortexTransport {
            local: cfg.local,
            peer_ids: peers.iter().map(|p| p.0).collect(),
            peers,
            caps,
            ep,
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

/// The receive thread: barrier after barrier, hand each closed epoch to the inbox.
fn receive(
    ep: &Endpoint,
    members: &[NodeId],
    tx: &Sender<Delivery>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    while !stop.load(Ordering::Acquire) {
        match ep.barrier(Some(BARRIER_POLL)) {
            Ok(None) => continue,
            Ok(Some(_)) => {}
            Err(e) => {
                if !stop.load(Ordering::Acquire) {
                    tracing::error!(error = %e, "vortex endpoint lost its fabric; no more deliveries");
                }
                return;
            }
        }
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
                return;
            }
        }
        while let Ok(Some(_ack)) = ep.poll_ack(Some(Duration::ZERO)) {}
    }
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
        self.sent(self.ep.send(to.0, &msg), msg.len())
    }

    fn broadcast(&self, msg: Bytes) -> Result<(), TransportError> {
        self.caps.check_size(msg.len())?;
        self.sent(self.ep.multicast(Some(&self.peer_ids), &msg), msg.len())
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
        self.sent(self.ep.multicast(Some(&ids), &msg), msg.len())
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
