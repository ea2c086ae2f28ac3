//! Ensemble-style software layers and the stack that composes them.
//!
//! A fabric that lacks a guarantee gets it from a small layer that adds exactly that one
//! guarantee and its own header: [`auth`] (HMAC-SHA256, authenticated source), [`reliable`]
//! (acknowledgement and retransmission), [`fifo`] (per-sender order without duplicates) and
//! [`fragment`] (messages larger than a frame). Layers are sans-I/O: they never touch a
//! socket or a clock, they consume events and emit frames through a [`Ctx`]. The [`Stack`]
//! composes them in [`crate::LayerKind::CANONICAL`] order; [`LayeredTransport`] runs a
//! stack over a backend with one pump thread.
//!
//! Modularity costs a header, an allocation and a dispatch per layer. As in Ensemble's
//! fast-track reconfiguration, the stack therefore has a precomputed bypass ([`fast_path`])
//! for the common event, an unfragmented message to one peer that arrives in order: one
//! compressed header instead of three, one copy instead of four, and a fallback to the full
//! stack whenever the receiver's state is not the common one. A property test drives the
//! same faulty traffic through both and requires identical deliveries.

pub mod auth;
mod codec;
pub mod fast_path;
pub mod fifo;
pub mod fragment;
mod layered;
mod peer_map;
pub mod reliable;
mod stack;

pub use layered::LayeredTransport;
pub use stack::{Output, Stack, StackBuilder};

use std::time::Instant;

use bytes::Bytes;

use crate::{Capability, Counters, Dest, LayerKind, NodeId};

impl LayerKind {
    /// Bytes of header the layer puts on a data frame, at most: lets the stack size
    /// fragments so that a frame still fits the fabric once every lower header is on.
    pub fn overhead(self) -> usize {
        match self {
            LayerKind::Fragment => fragment::PIECE_HEADER,
            LayerKind::Fifo => fifo::OVERHEAD,
            LayerKind::Reliable => reliable::OVERHEAD,
            LayerKind::Auth => auth::OVERHEAD,
        }
    }
}

/// Events a layer hands to its neighbours while handling one event.
///
/// `down` goes to the layer below (or the wire), `up` to the layer above (or the
/// application), `restarted` tells the layers above that a peer came back with fresh state
/// and their outbound streams to it must start over.
pub struct Ctx<'a> {
    /// The time of the event.
    pub now: Instant,
    /// Counters for what the layer drops or rejects.
    pub counters: &'a Counters,
    pub(crate) down: Vec<(Dest, Bytes)>,
    pub(crate) up: Vec<(NodeId, Bytes)>,
    pub(crate) restarted: Vec<NodeId>,
}

impl<'a> Ctx<'a> {
    /// An empty context for one event at `now`.
    pub fn new(now: Instant, counters: &'a Counters) -> Ctx<'a> {
        Ctx {
            now,
            counters,
            down: Vec::new(),
            up: Vec::new(),
            restarted: Vec::new(),
        }
    }

    /// Passes a frame to the layer below.
    pub fn send_down(&mut self, dest: Dest, frame: Bytes) {
        self.down.push((dest, frame));
    }

    /// Passes a message to the layer above.
    pub fn deliver_up(&mut self, from: NodeId, msg: Bytes) {
        self.up.push((from, msg));
    }

    /// Reports that `peer` restarted, so layers above reset their streams to it.
    pub fn peer_restarted(&mut self, peer: NodeId) {
        self.restarted.push(peer);
    }
}

/// One protocol layer: a header and a guarantee.
///
/// The stack admits a message only when every layer can take it (window room, size), so
/// `down` cannot fail; `up` counts and drops whatever it rejects.
pub trait Layer: Send {
    /// Which layer this is.
    fn kind(&self) -> LayerKind;

    /// The capability the layer adds, if it adds one (fragmentation raises the message
    /// size limit instead).
    fn adds(&self) -> Option<Capability>;

    /// A message from above, for `dest`.
    fn down(&mut self, dest: Dest, msg: Bytes, ctx: &mut Ctx<'_>);

    /// A frame from below, from `from`.
    fn up(&mut self, from: NodeId, frame: Bytes, ctx: &mut Ctx<'_>);

    /// Time passed: retransmit, give up on gaps, expire buffers.
    fn tick(&mut self, _ctx: &mut Ctx<'_>) {}

    /// The end of a batch of received frames: send what was held back to coalesce (acks).
    fn flush(&mut self, _ctx: &mut Ctx<'_>) {}

    /// A layer below found that `peer` restarted: restart the outbound stream to it.
    fn peer_restarted(&mut self, _peer: NodeId) {}
}
