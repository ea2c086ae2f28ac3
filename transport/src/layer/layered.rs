//! [`LayeredTransport`]: a [`Stack`] run over a backend, as a [`Transport`].
//!
//! Senders lock the stack only to compute frames and hand them to the backend outside the
//! lock. Received frames go through the stack in batches (one coalesced ack per peer per
//! batch) on the backend's own receive thread where the backend can divert to it
//! ([`Transport::divert`]: one thread hand-off less per message), otherwise on a pump thread
//! that takes them from the backend's inbox. The pump also ticks the stack for
//! retransmissions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::stack::{Output, Stack};
use crate::backend::inlet::Inlet;
use crate::{
    Capabilities, Counters, Delivery, Dest, NodeId, Sink, Stats, Transport, TransportError,
};

/// Frames taken off the backend per batch before acks are flushed.
const BATCH: usize = 256;

struct Shared {
    stack: Mutex<Stack>,
    backend: Box<dyn Transport>,
    /// Where delivered messages go: the inbox, or the user's sink ([`Transport::divert`]).
    deliver: Inlet,
    stop: AtomicBool,
}

impl Shared {
    fn stack(&self) -> MutexGuard<'_, Stack> {
        // A panic while holding the lock would be a bug in a layer; the stack's state is
        // still the best there is, so keep serving rather than poisoning every caller.
        self.stack.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `out`'s frames on the fabric, then hands over `delivered` followed by what
    /// `out` delivers, in the order the stack produced them. Frames first: a diverted user
    /// may take a while over the deliveries (a follower's fsync), and acks must not wait
    /// for it. A backend refusal is returned: the reliable layer, where present,
    /// retransmits; without it the fabric is lossy.
    fn emit(&self, out: Output, mut delivered: Vec<Delivery>) -> Result<(), TransportError> {
        let result = self.put_on_wire(out.wire);
        delivered.extend(out.deliver.into_iter().map(|(from, bytes)| Delivery {
            from,
            epoch: 0,
            bytes,
        }));
        // The receiver may be gone while the endpoint shuts down; nothing to do then.
        let _ = self.deliver.put(&mut delivered);
        result
    }

    /// Puts frames on the fabric. A backend refusal is logged: the reliable layer, where
    /// present, retransmits; without it the fabric is lossy and the caller is told.
    fn put_on_wire(&self, wire: Vec<(Dest, Bytes)>) -> Result<(), TransportError> {
        let mut first_err = None;
        for (dest, frame) in wire {
            let r = match dest {
                Dest::Node(n) => self.backend.send(n, frame),
                Dest::All => self.backend.broadcast(frame),
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "backend refused a frame");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Runs received frames up the stack, ticks it if `tick`, flushes it (acks for the
    /// batch), then emits the lot: frames, what the batch completed, what the tick
    /// released (a fifo layer's held messages).
    fn receive(&self, frames: impl Iterator<Item = Delivery>, tick: bool) {
        let mut out = Output::default();
        let mut delivered = Vec::new();
        {
            let mut stack = self.stack();
            let now = Instant::now();
            for d in frames {
                stack.receive(d.from, d.bytes, now, &mut out);
                // Deliveries keep the epoch of the frame that completed them.
                delivered.extend(out.deliver.drain(..).map(|(from, bytes)| Delivery {
                    from,
                    epoch: d.epoch,
                    bytes,
                }));
            }
            if tick {
                stack.tick(now, &mut out);
            }
            stack.flush(now, &mut out);
        }
        let _ = self.emit(out, delivered);
    }
}

/// A backend with software layers on top; see the [module docs](super).
pub struct LayeredTransport {
    shared: Arc<Shared>,
    inbox: Receiver<Delivery>,
    /// The stack's guarantees with and without `total_order`, which the stack has exactly
    /// while the backend has it (a `ptp` backend claims it only while clocks agree).
    ordered: Capabilities,
    unordered: Capabilities,
    local: NodeId,
    peers: Vec<NodeId>,
    counters: Arc<Counters>,
    pump: Option<JoinHandle<()>>,
}

impl LayeredTransport {
    /// Runs `stack` over `backend`; [`Transport::stats`] then shows both.
    pub fn new(backend: Box<dyn Transport>, stack: Stack) -> std::io::Result<LayeredTransport> {
        let counters = Arc::clone(&stack.counters);
        let caps = stack.capabilities().clone();
        let (ordered, unordered) = (
            Capabilities {
                total_order: true,
                ..caps.clone()
            },
            Capabilities {
                total_order: false,
                ..caps.clone()
            },
        );
        let local = backend.local();
        let peers = backend.peers().to_vec();
        let (deliver, rx) = Inlet::new();
        let shared = Arc::new(Shared {
            stack: Mutex::new(stack),
            backend,
            deliver,
            stop: AtomicBool::new(false),
        });
        // The sink holds the stack weakly: the backend it is given to belongs to the stack.
        let weak = Arc::downgrade(&shared);
        shared.backend.divert(Some(Box::new(move |batch| {
            if let Some(shared) = weak.upgrade() {
                shared.receive(batch.drain(..), false);
            }
        })));
        let pump_shared = Arc::clone(&shared);
        let pump = std::thread::Builder::new()
            .name(format!("weft-stack-{local}"))
            .spawn(move || pump(&pump_shared))?;
        Ok(LayeredTransport {
            shared,
            inbox: rx,
            ordered,
            unordered,
            local,
            peers,
            counters,
            pump: Some(pump),
        })
    }

    fn send_to(&self, dest: Dest, msg: Bytes) -> Result<(), TransportError> {
        let mut out = Output::default();
        let result = self
            .shared
            .stack()
            .send(dest, msg, Instant::now(), &mut out);
        let emitted = self.shared.emit(out, Vec::new());
        // Unreliable stacks report the backend's refusal; reliable ones will retransmit.
        match result {
            Ok(()) if !self.unordered.reliable => emitted,
            other => other,
        }
    }
}

/// Ticks the stack and runs what the backend's inbox holds (everything, for a backend that
/// does not divert; what arrived before the divert, for one that does).
fn pump(shared: &Shared) {
    let tick_every = shared.stack().tick_interval();
    let mut next_tick = Instant::now() + tick_every;
    let inbox = shared.backend.inbox();
    while !shared.stop.load(Ordering::Relaxed) {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let first = match inbox.recv_timeout(wait) {
            Ok(d) => Some(d),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let now = Instant::now();
        let tick = now >= next_tick;
        if tick {
            next_tick = now + tick_every;
        }
        shared.receive(first.into_iter().chain(inbox.try_iter().take(BATCH)), tick);
    }
}

impl Drop for LayeredTransport {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Once this returns the receive thread holds no strong reference to `shared`, so
        // the backend is dropped (and its thread joined) here, not on that thread.
        self.shared.backend.divert(None);
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
    }
}

impl Transport for LayeredTransport {
    fn local(&self) -> NodeId {
        self.local
    }

    fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// The stack's guarantees, with `total_order` exactly while the backend gives it (a
    /// `ptp` backend claims it once clocks are measured within ε, withdraws it beyond).
    fn capabilities(&self) -> &Capabilities {
        if self.shared.backend.capabilities().total_order {
            &self.ordered
        } else {
            &self.unordered
        }
    }

    fn send(&self, to: NodeId, msg: Bytes) -> Result<(), TransportError> {
        self.send_to(Dest::Node(to), msg)
    }

    fn broadcast(&self, msg: Bytes) -> Result<(), TransportError> {
        self.send_to(Dest::All, msg)
    }

    fn inbox(&self) -> &Receiver<Delivery> {
        &self.inbox
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot().over(self.shared.backend.stats())
    }

    fn clock_offsets(&self) -> Vec<crate::ClockOffset> {
        self.shared.backend.clock_offsets()
    }

    /// Runs `sink` where the stack delivers: on the backend's receive thread where the
    /// backend diverts to the stack, on the pump thread otherwise.
    fn divert(&self, sink: Option<Sink>) -> bool {
        self.shared.deliver.divert(sink)
    }
}
