//! The stack: layers composed in canonical order, driven by send, receive, tick and flush
//! events. Sans-I/O: it returns frames to put on the wire and messages to deliver, so the
//! same code runs under [`super::LayeredTransport`]'s threads and under a seeded simulation.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::auth::Auth;
use super::fifo::Fifo;
use super::fragment::{self, Fragment};
use super::reliable::{self, Reliable};
use super::{Ctx, Layer};
use crate::{
    Capabilities, ClusterKey, Counters, Dest, LayerKind, LayerTuning, NodeId, OpenError,
    TransportError,
};

/// What one event produced: frames for the fabric and messages for the application.
#[derive(Debug, Default)]
pub struct Output {
    /// Frames to hand to the backend, in order.
    pub wire: Vec<(Dest, Bytes)>,
    /// Messages to deliver, in order.
    pub deliver: Vec<(NodeId, Bytes)>,
}

pub(super) enum AnyLayer {
    Fragment(Fragment),
    Fifo(Fifo),
    Reliable(Reliable),
    Auth(Auth),
}

impl AnyLayer {
    fn as_layer(&mut self) -> &mut dyn Layer {
        match self {
            AnyLayer::Fragment(l) => l,
            AnyLayer::Fifo(l) => l,
            AnyLayer::Reliable(l) => l,
            AnyLayer::Auth(l) => l,
        }
    }
}

/// Builds a [`Stack`] for one endpoint.
#[derive(Clone, Debug)]
pub struct StackBuilder {
    local: NodeId,
    members: Vec<NodeId>,
    cluster: u64,
    layers: Vec<LayerKind>,
    native: Capabilities,
    max_message: usize,
    tuning: LayerTuning,
    key: Option<ClusterKey>,
    fast_path: bool,
    incarnation: Option<u64>,
}

impl StackBuilder {
    /// A stack of `layers` (canonical order is enforced) for `local` among `members`
    /// (every member, local included) over a fabric with `native` capabilities.
    pub fn new(
        cluster: u64,
        local: NodeId,
        members: &[NodeId],
        layers: &[LayerKind],
        native: Capabilities,
    ) -> StackBuilder {
        let mut members = members.to_vec();
        members.sort();
        members.dedup();
        StackBuilder {
            local,
            members,
            cluster,
            layers: layers.to_vec(),
            max_message: native.max_message,
            native,
            tuning: LayerTuning::default(),
            key: None,
            fast_path: true,
            incarnation: None,
        }
    }

    /// Largest message to accept; needs `fragment` if above the fabric's frame size.
    pub fn max_message(mut self, max: usize) -> Self {
        self.max_message = max;
        self
    }

    /// Timers and bounds.
    pub fn tuning(mut self, tuning: LayerTuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// The cluster key (required by `auth`).
    pub fn key(mut self, key: Option<ClusterKey>) -> Self {
        self.key = key;
        self
    }

    /// Whether to take the fast path for the common message.
    pub fn fast_path(mut self, on: bool) -> Self {
        self.fast_path = on;
        self
    }

    /// Fixes this endpoint's incarnation (it must grow across restarts). By default it is
    /// the wall-clock time in nanoseconds; simulations fix it to be reproducible.
    pub fn incarnation(mut self, incarnation: u64) -> Self {
        self.incarnation = Some(incarnation.max(1));
        self
    }

    /// Checks the combination and builds the stack.
    pub fn build(self, counters: Arc<Counters>) -> Result<Stack, OpenError> {
        let mut kinds = self.layers.clone();
        let rank = |k: &LayerKind| LayerKind::CANONICAL.iter().position(|c| c == k);
        if kinds.windows(2).any(|w| rank(&w[0]) >= rank(&w[1])) {
            return Err(OpenError::Invalid(format!(
                "layers {kinds:?} must be distinct and in the order fragment, fifo, reliable, auth"
            )));
        }
        kinds.sort_by_key(rank);
        if !self.members.contains(&self.local) {
            return Err(OpenError::NotAMember(self.local));
        }
        let peers: Vec<NodeId> = self
            .members
            .iter()
            .copied()
            .filter(|m| *m != self.local)
            .collect();
        let incarnation = self.incarnation.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                .max(1)
        });
        let t = &self.tuning;
        if t.window == 0 || t.rto.is_zero() || t.max_rto < t.rto || t.gap_timeout.is_zero() {
            return Err(OpenError::Invalid(
                "tuning needs window > 0, rto > 0, max_rto >= rto and gap_timeout > 0".into(),
            ));
        }
        let has = |k| kinds.contains(&k);
        let lossy_below = !(self.native.reliable || has(LayerKind::Reliable));
        let below_fragment: usize = kinds
            .iter()
            .filter(|k| **k != LayerKind::Fragment)
            .map(|k| k.overhead())
            .sum();
        let frame_limit = self.native.max_message.saturating_sub(below_fragment);
        let mut caps = self.native.clone();
        // The layers keep state per peer, not for the local node: no sends to self.
        caps.loopback = false;
        caps.max_message = if has(LayerKind::Fragment) {
            if frame_limit <= fragment::PIECE_HEADER + 16 {
                return Err(OpenError::Invalid(format!(
                    "frames of {} bytes leave no room for fragments under {below_fragment} bytes of headers",
                    self.native.max_message
                )));
            }
            self.max_message
        } else {
            frame_limit
        };
        if self.max_message > caps.max_message {
            return Err(OpenError::Invalid(format!(
                "max_message {} exceeds the {} bytes a frame can carry; add the fragment layer",
                self.max_message, caps.max_message
            )));
        }
        let mut layers = Vec::new();
        for kind in &kinds {
            let layer = match kind {
                LayerKind::Fragment => AnyLayer::Fragment(Fragment::new(
                    frame_limit,
                    self.max_message,
                    incarnation,
                    lossy_below,
                    t.gap_timeout,
                )),
                // The hold-back buffer covers everything the reliable layer may have
                // unacknowledged, its reserve for small messages included.
                LayerKind::Fifo => AnyLayer::Fifo(Fifo::new(
                    &peers,
                    incarnation,
                    t.window + reliable::CONTROL_RESERVE,
                    lossy_below,
                    t.gap_timeout,
                )),
                LayerKind::Reliable => AnyLayer::Reliable(Reliable::new(
                    &peers,
                    incarnation,
                    t.window,
                    t.rto,
                    t.max_rto,
                )),
                LayerKind::Auth => {
                    let key = self.key.as_ref().ok_or_else(|| {
                        OpenError::Invalid(
                            "the auth layer needs a cluster key ([security] key_file)".into(),
                        )
                    })?;
                    AnyLayer::Auth(Auth::new(
                        key,
                        self.cluster,
                        self.local,
                        self.members.clone(),
                    ))
                }
            };
            layers.push(layer);
        }
        for layer in &mut layers {
            if let Some(cap) = layer.as_layer().adds() {
                caps.add(cap);
            }
        }
        let per_peer = has(LayerKind::Fifo) || has(LayerKind::Reliable);
        let tick_every = (t.rto.min(t.gap_timeout) / 4)
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        // Compressed frames appear at the first layer above `auth` (which is always last).
        let auth_at = kinds.iter().position(|k| *k == LayerKind::Auth);
        let fast_entry = auth_at.unwrap_or(kinds.len()).saturating_sub(1);
        Ok(Stack {
            fast: self.fast_path && per_peer,
            auth_at,
            fast_entry,
            layers,
            caps,
            local: self.local,
            peers,
            counters,
            per_peer,
            tick_every,
        })
    }
}

/// A composed layer stack for one endpoint.
pub struct Stack {
    pub(super) layers: Vec<AnyLayer>,
    pub(super) fast: bool,
    /// Where `auth` sits (always at the bottom), if present.
    pub(super) auth_at: Option<usize>,
    /// The layer index where compressed frames arrive.
    pub(super) fast_entry: usize,
    caps: Capabilities,
    local: NodeId,
    peers: Vec<NodeId>,
    pub(super) counters: Arc<Counters>,
    per_peer: bool,
    tick_every: Duration,
}

impl Stack {
    /// The capabilities of the fabric plus what the layers add.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The layers, top first.
    pub fn layer_kinds(&self) -> Vec<LayerKind> {
        self.layers
            .iter()
            .map(|l| match l {
                AnyLayer::Fragment(_) => LayerKind::Fragment,
                AnyLayer::Fifo(_) => LayerKind::Fifo,
                AnyLayer::Reliable(_) => LayerKind::Reliable,
                AnyLayer::Auth(_) => LayerKind::Auth,
            })
            .collect()
    }

    /// Whether the fast path is in use.
    pub fn fast_path(&self) -> bool {
        self.fast
    }

    /// How often [`Stack::tick`] should run.
    pub fn tick_interval(&self) -> Duration {
        self.tick_every
    }

    /// This endpoint's id.
    pub fn local(&self) -> NodeId {
        self.local
    }

    /// The other members, ascending.
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    pub(super) fn fifo(&mut self) -> Option<&mut Fifo> {
        self.layers.iter_mut().find_map(|l| match l {
            AnyLayer::Fifo(f) => Some(f),
            _ => None,
        })
    }

    pub(super) fn reliable(&mut self) -> Option<&mut Reliable> {
        self.layers.iter_mut().find_map(|l| match l {
            AnyLayer::Reliable(r) => Some(r),
            _ => None,
        })
    }

    pub(super) fn fragment(&mut self) -> Option<&mut Fragment> {
        self.layers.iter_mut().find_map(|l| match l {
            AnyLayer::Fragment(f) => Some(f),
            _ => None,
        })
    }

    /// Accepts `msg` for `dest` and appends the frames it becomes to `out`. On an error
    /// nothing was queued, except as [`TransportError::BroadcastPartial`] says.
    pub fn send(
        &mut self,
        dest: Dest,
        msg: Bytes,
        now: Instant,
        out: &mut Output,
    ) -> Result<(), TransportError> {
        self.caps.check_size(msg.len())?;
        if let Dest::Node(peer) = dest {
            if self.peers.binary_search(&peer).is_err() {
                return Err(TransportError::UnknownPeer(peer));
            }
        }
        let frames = self.fragment().map_or(1, |f| f.frames_for(msg.len()));
        let targets: Vec<Dest> = match dest {
            Dest::All if self.per_peer => self.peers.iter().map(|p| Dest::Node(*p)).collect(),
            d => vec![d],
        };
        let mut skipped = Vec::new();
        for target in targets {
            if let (Dest::Node(peer), Some(rel)) = (target, self.reliable()) {
                let room = if frames == 1 && msg.len() <= reliable::CONTROL_BYTES {
                    rel.control_room(peer)
                } else {
                    rel.room(peer)
                };
                if room.unwrap_or(0) < frames {
                    if dest == Dest::All {
                        skipped.push(peer);
                        continue;
                    }
                    return Err(TransportError::WindowFull {
                        peer,
                        limit: rel.window(),
                    });
                }
            }
            if let Dest::Node(peer) = target {
                if self.fast && self.fast_send(peer, &msg, now, out) {
                    continue;
                }
            }
            self.run_down(0, target, msg.clone(), now, out);
        }
        if skipped.is_empty() {
            Ok(())
        } else {
            Err(TransportError::BroadcastPartial { skipped })
        }
    }

    /// Takes a frame from the fabric.
    pub fn receive(&mut self, from: NodeId, frame: Bytes, now: Instant, out: &mut Output) {
        match self.layers.len() {
            0 => out.deliver.push((from, frame)),
            n => self.run_up(n - 1, from, frame, now, out),
        }
    }

    /// Lets time pass: retransmissions, skipped gaps, expired buffers.
    pub fn tick(&mut self, now: Instant, out: &mut Output) {
        for i in 0..self.layers.len() {
            let counters = Arc::clone(&self.counters);
            let mut ctx = Ctx::new(now, &counters);
            self.layers[i].as_layer().tick(&mut ctx);
            self.dispatch(i, ctx, out);
        }
    }

    /// Ends a batch of received frames: sends coalesced acknowledgements.
    pub fn flush(&mut self, now: Instant, out: &mut Output) {
        for i in 0..self.layers.len() {
            let counters = Arc::clone(&self.counters);
            let mut ctx = Ctx::new(now, &counters);
            self.layers[i].as_layer().flush(&mut ctx);
            self.dispatch(i, ctx, out);
        }
    }

    /// Hands `msg` to layer `i` going down (to the wire past the last layer).
    pub(super) fn run_down(
        &mut self,
        i: usize,
        dest: Dest,
        msg: Bytes,
        now: Instant,
        out: &mut Output,
    ) {
        if i == self.layers.len() {
            out.wire.push((dest, msg));
            return;
        }
        let counters = Arc::clone(&self.counters);
        let mut ctx = Ctx::new(now, &counters);
        self.layers[i].as_layer().down(dest, msg, &mut ctx);
        self.dispatch(i, ctx, out);
    }

    /// Hands `frame` to layer `i` going up; the fast path intercepts compressed frames at
    /// the first layer above `auth`.
    pub(super) fn run_up(
        &mut self,
        i: usize,
        from: NodeId,
        frame: Bytes,
        now: Instant,
        out: &mut Output,
    ) {
        if self.fast && i == self.fast_entry && frame.first() == Some(&super::fast_path::TAG) {
            self.fast_receive(from, frame, now, out);
            return;
        }
        let counters = Arc::clone(&self.counters);
        let mut ctx = Ctx::new(now, &counters);
        self.layers[i].as_layer().up(from, frame, &mut ctx);
        self.dispatch(i, ctx, out);
    }

    /// Routes what layer `i` emitted: restarts to the layers above, frames below, messages
    /// above (or to the application from the top layer).
    fn dispatch(&mut self, i: usize, ctx: Ctx<'_>, out: &mut Output) {
        let now = ctx.now;
        for peer in ctx.restarted {
            for layer in &mut self.layers[..i] {
                layer.as_layer().peer_restarted(peer);
            }
        }
        for (dest, frame) in ctx.down {
            self.run_down(i + 1, dest, frame, now, out);
        }
        for (from, msg) in ctx.up {
            if i == 0 {
                Counters::bump(&self.counters.delivered);
                out.deliver.push((from, msg));
            } else {
                self.run_up(i - 1, from, msg, now, out);
            }
        }
    }
}
