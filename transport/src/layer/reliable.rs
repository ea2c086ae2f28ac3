//! `reliable`: acknowledgement and retransmission with bounded buffers (adds `reliable`).
//!
//! Data header: `kind u8 = 0x20`, `stream u64`, `seq u64`. Ack: `kind u8 = 0x21`,
//! `stream u64` (the sender's stream being acknowledged), `incarnation u64` (the
//! receiver's), `cumulative u64` (every seq below it arrived) and a 64-bit selective-ack
//! bitmap of the seqs above it.
//!
//! Each message is delivered upward once, as soon as it arrives (ordering is `fifo`'s job,
//! so a loss does not hold up the frames behind it here). At most `window` messages per
//! peer are unacknowledged; the stack refuses a send beyond that with `WindowFull`, so
//! memory is bounded and nothing accepted is silently dropped. Small one-frame messages
//! ([`CONTROL_BYTES`] at most) may also use [`CONTROL_RESERVE`] frames past the window:
//! a backlog of bulk data (a follower catching up) must not refuse the heartbeats and
//! votes behind it, or the peer it is for takes the silence for a failure. Unacknowledged frames are
//! resent after the retransmission timeout, doubling per retry up to `max_rto`.
//!
//! Restarts: an ack carries the receiver's incarnation. When it grows, the receiver lost
//! its state; the unacknowledged frames addressed to its previous life are discarded
//! (counted), the sender starts a new stream at seq 0, and the layers above are told.
//! Acks are coalesced: one per peer per received batch, sent on `flush`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};

use super::codec::{prepend, Reader};
use super::peer_map::PeerMap;
use super::{Ctx, Layer};
use crate::{Capability, Counters, DecodeError, Dest, LayerKind, NodeId};

/// Kind byte of a data frame.
pub const DATA: u8 = 0x20;
/// Kind byte of an acknowledgement.
pub const ACK: u8 = 0x21;
/// Bytes this layer adds to a data frame.
pub const OVERHEAD: usize = 17;

/// Frames past the window that only small messages may use.
pub const CONTROL_RESERVE: usize = 64;

/// The largest message that may use the [`CONTROL_RESERVE`].
pub const CONTROL_BYTES: usize = 512;

#[derive(Debug, Clone)]
struct Pending {
    /// The frame as handed to the layer below, header included: resent as it is.
    body: Bytes,
    due: Instant,
    retries: u32,
}

#[derive(Debug, Clone)]
struct Outbound {
    stream: u64,
    next: u64,
    peer_incarnation: u64,
    pending: BTreeMap<u64, Pending>,
}

#[derive(Debug, Clone, Default)]
struct Inbound {
    stream: u64,
    cumulative: u64,
    above: BTreeSet<u64>,
    ack_due: bool,
}

/// The reliability layer of one endpoint.
pub struct Reliable {
    incarnation: u64,
    out: PeerMap<Outbound>,
    inb: PeerMap<Inbound>,
    window: usize,
    rto: Duration,
    max_rto: Duration,
}

enum Frame {
    Data {
        stream: u64,
        seq: u64,
        inner: Bytes,
    },
    Ack {
        stream: u64,
        incarnation: u64,
        cumulative: u64,
        sack: u64,
    },
}

impl Reliable {
    /// A reliability layer towards `peers` (sorted); `incarnation` identifies this life of
    /// the endpoint and must grow across restarts.
    pub fn new(
        peers: &[NodeId],
        incarnation: u64,
        window: usize,
        rto: Duration,
        max_rto: Duration,
    ) -> Reliable {
        Reliable {
            incarnation,
            out: PeerMap::new(peers, || Outbound {
                stream: incarnation,
                next: 0,
                peer_incarnation: 0,
                pending: BTreeMap::new(),
            }),
            inb: PeerMap::new(peers, Inbound::default),
            window,
            rto,
            max_rto,
        }
    }

    /// Room left in the send window to `peer` (`None` if not a peer).
    pub fn room(&self, peer: NodeId) -> Option<usize> {
        self.out
            .get(peer)
            .map(|o| self.window.saturating_sub(o.pending.len()))
    }

    /// Room left to `peer` for a small message ([`CONTROL_BYTES`] at most), which may
    /// also use the [`CONTROL_RESERVE`].
    pub fn control_room(&self, peer: NodeId) -> Option<usize> {
        self.out
            .get(peer)
            .map(|o| (self.window + CONTROL_RESERVE).saturating_sub(o.pending.len()))
    }

    /// The window size.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The stream and seq the next data frame to `peer` will carry.
    pub(crate) fn next_out(&self, peer: NodeId) -> Option<super::fifo::InOrder> {
        self.out.get(peer).map(|o| super::fifo::InOrder {
            stream: o.stream,
            seq: o.next,
        })
    }

    /// Records `body` (an already encoded frame for the layer below) as the next data frame
    /// to `peer`, for retransmission until acknowledged (the fast path's send).
    pub(crate) fn record_out(&mut self, peer: NodeId, body: Bytes, now: Instant) {
        let rto = self.rto;
        if let Some(o) = self.out.get_mut(peer) {
            let seq = o.next;
            o.next += 1;
            o.pending.insert(
                seq,
                Pending {
                    body,
                    due: now + rto,
                    retries: 0,
                },
            );
        }
    }

    /// The data frame from `peer` that would be accepted in order right now.
    pub(crate) fn expecting(&self, peer: NodeId) -> Option<super::fifo::InOrder> {
        self.inb.get(peer).map(|i| super::fifo::InOrder {
            stream: i.stream,
            seq: i.cumulative,
        })
    }

    /// Accepts the in-order frame [`Self::expecting`] named (the fast path's receive).
    pub(crate) fn accept_in_order(&mut self, peer: NodeId) {
        if let Some(i) = self.inb.get_mut(peer) {
            i.cumulative += 1;
            while i.above.remove(&i.cumulative) {
                i.cumulative += 1;
            }
            i.ack_due = true;
        }
    }

    /// Writes a data header for (`stream`, `seq`) in front of `inner`.
    pub(crate) fn data_frame(stream: u64, seq: u64, inner: &[u8]) -> Bytes {
        prepend(OVERHEAD, inner, |b| {
            b.put_u8(DATA);
            b.put_u64_le(stream);
            b.put_u64_le(seq);
        })
    }

    fn decode(frame: Bytes) -> Result<Frame, DecodeError> {
        let mut r = Reader::new(frame);
        match r.u8("reliable kind")? {
            DATA => {
                let stream = r.u64("reliable stream")?;
                let seq = r.u64("reliable seq")?;
                Ok(Frame::Data {
                    stream,
                    seq,
                    inner: r.rest(),
                })
            }
            ACK => {
                let f = Frame::Ack {
                    stream: r.u64("ack stream")?,
                    incarnation: r.u64("ack incarnation")?,
                    cumulative: r.u64("ack cumulative")?,
                    sack: r.u64("ack bitmap")?,
                };
                if !r.rest().is_empty() {
                    return Err(DecodeError::Invalid {
                        field: "ack",
                        reason: "trailing bytes",
                    });
                }
                Ok(f)
            }
            kind => Err(DecodeError::UnknownKind {
                layer: "reliable",
                kind,
            }),
        }
    }

    fn on_data(&mut self, from: NodeId, stream: u64, seq: u64, inner: Bytes, ctx: &mut Ctx<'_>) {
        let window = (self.window + CONTROL_RESERVE) as u64;
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
        inb.ack_due = true;
        if seq < inb.cumulative || inb.above.contains(&seq) {
            Counters::bump(&ctx.counters.duplicates_dropped);
            return;
        }
        if seq - inb.cumulative >= window {
            Counters::bump(&ctx.counters.overflow_dropped);
            return;
        }
        if seq == inb.cumulative {
            inb.cumulative += 1;
            while inb.above.remove(&inb.cumulative) {
                inb.cumulative += 1;
            }
        } else {
            inb.above.insert(seq);
        }
        ctx.deliver_up(from, inner);
    }

    fn on_ack(&mut self, from: NodeId, ack: (u64, u64, u64, u64), ctx: &mut Ctx<'_>) {
        let (stream, incarnation, cumulative, sack) = ack;
        let Some(o) = self.out.get_mut(from) else {
            Counters::bump(&ctx.counters.rejected_unknown_source);
            return;
        };
        if incarnation != o.peer_incarnation {
            if incarnation < o.peer_incarnation {
                return; // an ack from the peer's previous life, delayed
            }
            let restarted = o.peer_incarnation != 0;
            o.peer_incarnation = incarnation;
            if restarted {
                for _ in 0..o.pending.len() {
                    Counters::bump(&ctx.counters.discarded_on_peer_restart);
                }
                tracing::info!(peer = %from, "reliable: peer restarted, outbound stream reset");
                o.pending.clear();
                o.stream += 1;
                o.next = 0;
                ctx.peer_restarted(from);
                return;
            }
        }
        if stream != o.stream {
            return;
        }
        o.pending.retain(|&seq, _| {
            let acked = seq < cumulative
                || (seq > cumulative
                    && seq - cumulative <= 64
                    && sack >> (seq - cumulative - 1) & 1 == 1);
            !acked
        });
    }
}

impl Layer for Reliable {
    fn kind(&self) -> LayerKind {
        LayerKind::Reliable
    }

    fn adds(&self) -> Option<Capability> {
        Some(Capability::Reliable)
    }

    fn down(&mut self, dest: Dest, msg: Bytes, ctx: &mut Ctx<'_>) {
        // The stack expands broadcasts before per-peer layers and checks window room.
        let Dest::Node(peer) = dest else {
            ctx.send_down(dest, msg);
            return;
        };
        let Some(o) = self.out.get(peer) else { return };
        let body = Reliable::data_frame(o.stream, o.next, &msg);
        self.record_out(peer, body.clone(), ctx.now);
        ctx.send_down(dest, body);
    }

    fn up(&mut self, from: NodeId, frame: Bytes, ctx: &mut Ctx<'_>) {
        match Reliable::decode(frame) {
            Ok(Frame::Data { stream, seq, inner }) => self.on_data(from, stream, seq, inner, ctx),
            Ok(Frame::Ack {
                stream,
                incarnation,
                cumulative,
                sack,
            }) => self.on_ack(from, (stream, incarnation, cumulative, sack), ctx),
            Err(e) => {
                Counters::bump(&ctx.counters.rejected_malformed);
                tracing::debug!(%from, error = %e, "reliable: malformed frame");
            }
        }
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) {
        let (rto, max_rto) = (self.rto, self.max_rto);
        for (peer, o) in self.out.iter_mut() {
            for p in o.pending.values_mut() {
                if p.due > ctx.now {
                    continue;
                }
                p.retries = p.retries.saturating_add(1);
                let backoff = rto.saturating_mul(1u32 << p.retries.min(16)).min(max_rto);
                p.due = ctx.now + backoff;
                Counters::bump(&ctx.counters.retransmits);
                ctx.send_down(Dest::Node(peer), p.body.clone());
            }
        }
    }

    fn flush(&mut self, ctx: &mut Ctx<'_>) {
        let incarnation = self.incarnation;
        for (peer, inb) in self.inb.iter_mut() {
            if !inb.ack_due {
                continue;
            }
            inb.ack_due = false;
            let base = inb.cumulative;
            let sack = inb
                .above
                .range(base + 1..=base + 64)
                .fold(0u64, |bits, seq| bits | 1 << (seq - base - 1));
            let ack = prepend(33, &[], |b| {
                b.put_u8(ACK);
                b.put_u64_le(inb.stream);
                b.put_u64_le(incarnation);
                b.put_u64_le(base);
                b.put_u64_le(sack);
            });
            ctx.send_down(Dest::Node(peer), ack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const MS: Duration = Duration::from_millis(1);

    fn layer(peer: NodeId, inc: u64) -> Reliable {
        Reliable::new(&[peer], inc, 4, 10 * MS, 80 * MS)
    }

    fn send(r: &mut Reliable, msg: &'static [u8], now: Instant, c: &Counters) -> Bytes {
        let mut ctx = Ctx::new(now, c);
        r.down(Dest::Node(B), Bytes::from_static(msg), &mut ctx);
        ctx.down.pop().unwrap().1
    }

    /// Feeds `frame` to `r` from `from`, then flushes; returns (delivered, frames sent).
    fn recv(
        r: &mut Reliable,
        from: NodeId,
        frame: Bytes,
        now: Instant,
        c: &Counters,
    ) -> (Vec<Bytes>, Vec<Bytes>) {
        let mut ctx = Ctx::new(now, c);
        r.up(from, frame, &mut ctx);
        r.flush(&mut ctx);
        (
            ctx.up.into_iter().map(|(_, m)| m).collect(),
            ctx.down.into_iter().map(|(_, f)| f).collect(),
        )
    }

    /// A full window leaves the reserve to small messages, and the receiver takes frames
    /// that far ahead: a heartbeat behind a backlog of bulk data still goes through.
    #[test]
    fn the_reserve_past_a_full_window_is_sent_and_taken() {
        let c = Counters::default();
        let t0 = Instant::now();
        let mut tx = layer(B, 1);
        let mut rx = layer(A, 2);
        let msgs: [&'static [u8]; 5] = [b"0", b"1", b"2", b"3", b"4"];
        let frames: Vec<Bytes> = msgs.iter().map(|m| send(&mut tx, m, t0, &c)).collect();
        assert_eq!(tx.room(B), Some(0), "a window of 4 is full");
        assert_eq!(tx.control_room(B), Some(CONTROL_RESERVE - 1));
        // The fifth frame arrives first, four past what the receiver has: taken.
        let (got, _) = recv(&mut rx, A, frames[4].clone(), t0, &c);
        assert_eq!(got, vec![&b"4"[..]]);
        assert_eq!(c.snapshot().overflow_dropped, 0);
    }

    #[test]
    fn retransmits_until_acked_with_backoff() {
        let c = Counters::default();
        let t0 = Instant::now();
        let mut tx = layer(B, 1);
        let mut rx = layer(A, 2);
        let f0 = send(&mut tx, b"m0", t0, &c);
        assert_eq!(tx.room(B), Some(3));
        let mut ctx = Ctx::new(t0 + 11 * MS, &c);
        tx.tick(&mut ctx);
        assert_eq!(ctx.down.len(), 1, "first retransmission after the rto");
        let mut ctx = Ctx::new(t0 + 22 * MS, &c);
        tx.tick(&mut ctx);
        assert!(ctx.down.is_empty(), "backed off to 2 x rto");
        let (got, acks) = recv(&mut rx, A, f0.clone(), t0, &c);
        assert_eq!(got, vec![&b"m0"[..]]);
        let (dup, acks2) = recv(&mut rx, A, f0, t0, &c);
        assert!(dup.is_empty());
        assert_eq!(acks2.len(), 1, "duplicates are re-acknowledged");
        recv(&mut tx, B, acks[0].clone(), t0, &c);
        assert_eq!(tx.room(B), Some(4));
        assert_eq!(c.snapshot().retransmits, 1);
    }

    #[test]
    fn selective_acks_free_later_frames() {
        let c = Counters::default();
        let t0 = Instant::now();
        let mut tx = layer(B, 1);
        let mut rx = layer(A, 2);
        let frames: Vec<Bytes> = [b"0", b"1", b"2"]
            .iter()
            .map(|m| send(&mut tx, *m, t0, &c))
            .collect();
        recv(&mut rx, A, frames[2].clone(), t0, &c);
        let (_, acks) = recv(&mut rx, A, frames[1].clone(), t0, &c);
        recv(&mut tx, B, acks[0].clone(), t0, &c);
        assert_eq!(
            tx.room(B),
            Some(3),
            "1 and 2 acked selectively, 0 still pending"
        );
    }

    #[test]
    fn receiver_restart_resets_the_stream() {
        let c = Counters::default();
        let t0 = Instant::now();
        let mut tx = layer(B, 1);
        let mut rx = layer(A, 2);
        let f = send(&mut tx, b"a", t0, &c);
        let (_, acks) = recv(&mut rx, A, f, t0, &c);
        recv(&mut tx, B, acks[0].clone(), t0, &c);
        let lost = send(&mut tx, b"b", t0, &c);
        // The receiver restarts with a later incarnation and knows nothing of the stream.
        let mut rx2 = layer(A, 3);
        let (got, acks) = recv(&mut rx2, A, lost, t0, &c);
        assert_eq!(
            got,
            vec![&b"b"[..]],
            "a fresh receiver takes a new sender's frames"
        );
        let mut ctx = Ctx::new(t0, &c);
        tx.up(B, acks[0].clone(), &mut ctx);
        assert_eq!(ctx.restarted, vec![B]);
        assert_eq!(c.snapshot().discarded_on_peer_restart, 1);
        let f = send(&mut tx, b"c", t0, &c);
        let (got, _) = recv(&mut rx2, A, f, t0, &c);
        assert_eq!(got, vec![&b"c"[..]], "the new stream starts at zero");
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            let c = Counters::default();
            let mut r = layer(A, 1);
            let _ = recv(&mut r, A, Bytes::from(bytes), Instant::now(), &c);
        }
    }
}
