//! `fifo`: per-sender sequence numbers, duplicates dropped, delivery in send order (adds
//! `fifo_per_peer`).
//!
//! Header: `kind u8 = 0x10`, `stream u64`, `seq u64`. A stream is one sender's numbering
//! towards one receiver; a sender starts a new, larger stream when it restarts (its
//! incarnation) or when a layer below reports that the receiver restarted, so a receiver
//! never waits for a sequence number from a previous life.
//!
//! Out-of-order frames wait in a bounded hold-back buffer. Over a reliable fabric or layer
//! every gap fills; over a lossy one, a gap older than `gap_timeout` is skipped (counted),
//! since waiting longer would stall the sender's stream for good.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};

use super::codec::{prepend, Reader};
use super::peer_map::PeerMap;
use super::{Ctx, Layer};
use crate::{Capability, Counters, DecodeError, Dest, LayerKind, NodeId};

/// Kind byte of a fifo frame.
pub const KIND: u8 = 0x10;
/// Bytes this layer adds to every frame.
pub const OVERHEAD: usize = 17;

#[derive(Debug, Clone)]
struct Outbound {
    stream: u64,
    next: u64,
}

#[derive(Debug, Clone, Default)]
struct Inbound {
    stream: u64,
    expected: u64,
    held: BTreeMap<u64, Bytes>,
    gap_since: Option<Instant>,
}

/// The FIFO layer of one endpoint.
pub struct Fifo {
    out: PeerMap<Outbound>,
    inb: PeerMap<Inbound>,
    window: u64,
    lossy_below: bool,
    gap_timeout: Duration,
}

/// Where the receiver stands with a sender, for the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InOrder {
    pub(crate) stream: u64,
    pub(crate) seq: u64,
}

impl Fifo {
    /// A FIFO layer towards `peers` (sorted). `incarnation` starts every outbound stream,
    /// `window` bounds the hold-back buffer per peer, and `lossy_below` says that nothing
    /// below retransmits, so gaps are skipped after `gap_timeout`.
    pub fn new(
        peers: &[NodeId],
        incarnation: u64,
        window: usize,
        lossy_below: bool,
        gap_timeout: Duration,
    ) -> Fifo {
        Fifo {
            out: PeerMap::new(peers, || Outbound {
                stream: incarnation,
                next: 0,
            }),
            inb: PeerMap::new(peers, Inbound::default),
            window: window as u64,
            lossy_below,
            gap_timeout,
        }
    }

    /// The stream and sequence number the next message to `peer` will carry.
    pub(crate) fn next_out(&self, peer: NodeId) -> Option<InOrder> {
        self.out.get(peer).map(|o| InOrder {
            stream: o.stream,
            seq: o.next,
        })
    }

    /// Consumes the next sequence number to `peer` (the fast path's send).
    pub(crate) fn take_out(&mut self, peer: NodeId) {
        if let Some(o) = self.out.get_mut(peer) {
            o.next += 1;
        }
    }

    /// The frame from `peer` that would be delivered at once, if nothing is held back.
    pub(crate) fn expecting(&self, peer: NodeId) -> Option<InOrder> {
        self.inb
            .get(peer)
            .filter(|i| i.held.is_empty())
            .map(|i| InOrder {
                stream: i.stream,
                seq: i.expected,
            })
    }

    /// Accepts the in-order frame [`Self::expecting`] named (the fast path's receive).
    pub(crate) fn accept_in_order(&mut self, peer: NodeId) {
        if let Some(i) = self.inb.get_mut(peer) {
            i.expected += 1;
        }
    }

    /// Writes the header for (`stream`, `seq`) in front of `msg`.
    pub(crate) fn frame(stream: u64, seq: u64, msg: &[u8]) -> Bytes {
        prepend(OVERHEAD, msg, |b| {
            b.put_u8(KIND);
            b.put_u64_le(stream);
            b.put_u64_le(seq);
        })
    }

    fn decode(frame: Bytes) -> Result<(u64, u64, Bytes), DecodeError> {
        let mut r = Reader::new(frame);
        let kind = r.u8("fifo kind")?;
        if kind != KIND {
            return Err(DecodeError::UnknownKind {
                layer: "fifo",
                kind,
            });
        }
        let stream = r.u64("fifo stream")?;
        let seq = r.u64("fifo seq")?;
        Ok((stream, seq, r.rest()))
    }
}

impl Inbound {
    fn drain(&mut self, from: NodeId, ctx: &mut Ctx<'_>) {
        while let Some(msg) = self.held.remove(&self.expected) {
            ctx.deliver_up(from, msg);
            self.expected += 1;
        }
        self.gap_since = if self.held.is_empty() {
            None
        } else {
            Some(ctx.now)
        };
    }
}

impl Layer for Fifo {
    fn kind(&self) -> LayerKind {
        LayerKind::Fifo
    }

    fn adds(&self) -> Option<Capability> {
        Some(Capability::FifoPerPeer)
    }

    fn down(&mut self, dest: Dest, msg: Bytes, ctx: &mut Ctx<'_>) {
        // The stack expands broadcasts before per-peer layers, so `dest` is one node.
        let Dest::Node(peer) = dest else {
            ctx.send_down(dest, msg);
            return;
        };
        let Some(o) = self.out.get_mut(peer) else {
            return;
        };
        let frame = Fifo::frame(o.stream, o.next, &msg);
        o.next += 1;
        ctx.send_down(dest, frame);
    }

    fn up(&mut self, from: NodeId, frame: Bytes, ctx: &mut Ctx<'_>) {
        let (stream, seq, msg) = match Fifo::decode(frame) {
            Ok(v) => v,
            Err(e) => {
                Counters::bump(&ctx.counters.rejected_malformed);
                tracing::debug!(%from, error = %e, "fifo: malformed frame");
                return;
            }
        };
        let window = self.window;
        let Some(inb) = self.inb.get_mut(from) else {
            Counters::bump(&ctx.counters.rejected_unknown_source);
            return;
        };
        if stream < inb.stream {
            Counters::bump(&ctx.counters.duplicates_dropped);
            return;
        }
        if stream > inb.stream {
            *inb = Inbound {
                stream,
                ..Inbound::default()
            };
        }
        if seq < inb.expected || inb.held.contains_key(&seq) {
            Counters::bump(&ctx.counters.duplicates_dropped);
            return;
        }
        if seq == inb.expected {
            ctx.deliver_up(from, msg);
            inb.expected += 1;
            inb.drain(from, ctx);
            return;
        }
        if seq - inb.expected >= window {
            Counters::bump(&ctx.counters.overflow_dropped);
            return;
        }
        inb.held.insert(seq, msg);
        inb.gap_since.get_or_insert(ctx.now);
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) {
        if !self.lossy_below {
            return;
        }
        for (from, inb) in self.inb.iter_mut() {
            let Some(since) = inb.gap_since else { continue };
            if ctx.now.duration_since(since) < self.gap_timeout {
                continue;
            }
            if let Some((&first, _)) = inb.held.first_key_value() {
                for _ in inb.expected..first {
                    Counters::bump(&ctx.counters.gaps_skipped);
                }
                inb.expected = first;
                inb.drain(from, ctx);
            }
        }
    }

    fn peer_restarted(&mut self, peer: NodeId) {
        if let Some(o) = self.out.get_mut(peer) {
            o.stream += 1;
            o.next = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    fn deliver(f: &mut Fifo, frame: Bytes, now: Instant, c: &Counters) -> Vec<Bytes> {
        let mut ctx = Ctx::new(now, c);
        f.up(A, frame, &mut ctx);
        ctx.up.into_iter().map(|(_, m)| m).collect()
    }

    fn sent(f: &mut Fifo, msg: &'static [u8], c: &Counters) -> Bytes {
        let mut ctx = Ctx::new(Instant::now(), c);
        f.down(Dest::Node(B), Bytes::from_static(msg), &mut ctx);
        ctx.down.pop().unwrap().1
    }

    #[test]
    fn reorders_and_drops_duplicates() {
        let c = Counters::default();
        let mut tx = Fifo::new(&[B], 100, 16, false, Duration::from_millis(10));
        let mut rx = Fifo::new(&[A], 200, 16, false, Duration::from_millis(10));
        let f: Vec<Bytes> = [b"0", b"1", b"2"]
            .iter()
            .map(|m| sent(&mut tx, *m, &c))
            .collect();
        let now = Instant::now();
        assert!(deliver(&mut rx, f[2].clone(), now, &c).is_empty());
        assert!(deliver(&mut rx, f[1].clone(), now, &c).is_empty());
        let got = deliver(&mut rx, f[0].clone(), now, &c);
        assert_eq!(got, vec![&b"0"[..], &b"1"[..], &b"2"[..]]);
        assert!(deliver(&mut rx, f[1].clone(), now, &c).is_empty());
        assert_eq!(c.snapshot().duplicates_dropped, 1);
    }

    #[test]
    fn lossy_mode_skips_a_gap_after_the_timeout_only() {
        let c = Counters::default();
        let mut tx = Fifo::new(&[B], 1, 16, true, Duration::from_millis(10));
        let mut rx = Fifo::new(&[A], 1, 16, true, Duration::from_millis(10));
        let _lost = sent(&mut tx, b"0", &c);
        let one = sent(&mut tx, b"1", &c);
        let t0 = Instant::now();
        assert!(deliver(&mut rx, one, t0, &c).is_empty());
        let mut ctx = Ctx::new(t0 + Duration::from_millis(5), &c);
        rx.tick(&mut ctx);
        assert!(ctx.up.is_empty());
        let mut ctx = Ctx::new(t0 + Duration::from_millis(11), &c);
        rx.tick(&mut ctx);
        assert_eq!(ctx.up.len(), 1);
        assert_eq!(c.snapshot().gaps_skipped, 1);
    }

    #[test]
    fn a_new_stream_resets_the_receiver() {
        let c = Counters::default();
        let mut tx = Fifo::new(&[B], 5, 16, false, Duration::from_millis(10));
        let mut rx = Fifo::new(&[A], 1, 16, false, Duration::from_millis(10));
        let now = Instant::now();
        for m in [b"a", b"b"] {
            let f = sent(&mut tx, m, &c);
            assert_eq!(deliver(&mut rx, f, now, &c).len(), 1);
        }
        // The sender restarts with a later incarnation: numbering starts at zero again.
        let mut tx2 = Fifo::new(&[B], 9, 16, false, Duration::from_millis(10));
        let f = sent(&mut tx2, b"c", &c);
        assert_eq!(deliver(&mut rx, f, now, &c), vec![&b"c"[..]]);
        // A late frame of the old stream is stale.
        let old = Fifo::frame(5, 2, b"late");
        assert!(deliver(&mut rx, old, now, &c).is_empty());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let c = Counters::default();
            let mut rx = Fifo::new(&[A], 1, 8, true, Duration::from_millis(10));
            let _ = deliver(&mut rx, Bytes::from(bytes), Instant::now(), &c);
        }
    }
}
