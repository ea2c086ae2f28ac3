//! `fragment`: messages larger than a frame are split and reassembled (raises
//! `max_message` above the fabric's frame size; adds no other guarantee).
//!
//! Whole message: `kind u8 = 0x30` then the message. Piece: `kind u8 = 0x31`,
//! `message id u64`, `index u32`, `count u32`, then the piece. Reassembly buffers are
//! bounded in total bytes; when full, the oldest incomplete message is evicted (counted).
//! Over a lossy stack, incomplete messages also expire after `gap_timeout`; over a reliable
//! one every piece arrives, so only the byte bound applies.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{prepend, Reader};
use super::{Ctx, Layer};
use crate::{Counters, DecodeError, Dest, LayerKind, NodeId};

/// Kind byte of an unfragmented message.
pub const WHOLE: u8 = 0x30;
/// Kind byte of a piece.
pub const PIECE: u8 = 0x31;
/// Bytes of a piece header.
pub const PIECE_HEADER: usize = 17;

struct Partial {
    pieces: Vec<Option<Bytes>>,
    missing: u32,
    bytes: usize,
    started: Instant,
}

/// The fragmentation layer of one endpoint.
pub struct Fragment {
    /// Largest frame the layers below accept from this one.
    frame_limit: usize,
    max_message: usize,
    next_id: u64,
    partial: HashMap<(NodeId, u64), Partial>,
    /// Recently completed messages, so a late duplicate piece does not start a ghost.
    completed: HashSet<(NodeId, u64)>,
    completed_order: VecDeque<(NodeId, u64)>,
    buffered: usize,
    budget: usize,
    lossy_below: bool,
    timeout: Duration,
}

impl Fragment {
    /// A fragmentation layer whose frames must not exceed `frame_limit` bytes, for messages
    /// up to `max_message`. `incarnation` seeds message ids so they do not repeat across
    /// restarts.
    pub fn new(
        frame_limit: usize,
        max_message: usize,
        incarnation: u64,
        lossy_below: bool,
        timeout: Duration,
    ) -> Fragment {
        Fragment {
            frame_limit,
            max_message,
            next_id: incarnation,
            partial: HashMap::new(),
            completed: HashSet::new(),
            completed_order: VecDeque::new(),
            buffered: 0,
            budget: max_message.saturating_mul(4).max(1 << 20),
            lossy_below,
            timeout,
        }
    }

    /// Frames `len` bytes of message become: 1 if it fits whole.
    pub fn frames_for(&self, len: usize) -> usize {
        if self.fits_whole(len) {
            1
        } else {
            len.div_ceil(self.chunk())
        }
    }

    /// Whether a message of `len` bytes goes out as one frame.
    pub fn fits_whole(&self, len: usize) -> bool {
        len < self.frame_limit
    }

    fn chunk(&self) -> usize {
        self.frame_limit - PIECE_HEADER
    }

    /// Writes the one-byte whole-message header in front of `msg`.
    pub(crate) fn whole(msg: &[u8]) -> Bytes {
        prepend(1, msg, |b| b.put_u8(WHOLE))
    }

    fn remove(&mut self, key: (NodeId, u64)) -> Option<Partial> {
        let p = self.partial.remove(&key)?;
        self.buffered -= p.bytes;
        Some(p)
    }

    fn remember_completed(&mut self, key: (NodeId, u64)) {
        const REMEMBERED: usize = 1024;
        if self.completed_order.len() == REMEMBERED {
            if let Some(old) = self.completed_order.pop_front() {
                self.completed.remove(&old);
            }
        }
        self.completed.insert(key);
        self.completed_order.push_back(key);
    }

    fn evict_oldest(&mut self, counters: &Counters) {
        if let Some(key) = self
            .partial
            .iter()
            .min_by_key(|(_, p)| p.started)
            .map(|(k, _)| *k)
        {
            self.remove(key);
            Counters::bump(&counters.overflow_dropped);
        }
    }

    fn on_piece(
        &mut self,
        from: NodeId,
        frame: Bytes,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DecodeError> {
        let mut r = Reader::new(frame);
        r.u8("fragment kind")?;
        let id = r.u64("fragment id")?;
        let index = r.u32("fragment index")?;
        let count = r.u32("fragment count")?;
        let piece = r.rest();
        if count < 2 || index >= count {
            return Err(DecodeError::Invalid {
                field: "fragment index",
                reason: "index not below a count of at least 2",
            });
        }
        if count as usize > self.max_message.div_ceil(self.chunk()) {
            return Err(DecodeError::Invalid {
                field: "fragment count",
                reason: "message would exceed max_message",
            });
        }
        let key = (from, id);
        if self.completed.contains(&key) {
            Counters::bump(&ctx.counters.duplicates_dropped);
            return Ok(());
        }
        let partial = self.partial.entry(key).or_insert_with(|| Partial {
            pieces: vec![None; count as usize],
            missing: count,
            bytes: 0,
            started: ctx.now,
        });
        if partial.pieces.len() != count as usize {
            return Err(DecodeError::Invalid {
                field: "fragment count",
                reason: "differs from earlier pieces of the message",
            });
        }
        let slot = &mut partial.pieces[index as usize];
        if slot.is_some() {
            Counters::bump(&ctx.counters.duplicates_dropped);
            return Ok(());
        }
        partial.bytes += piece.len();
        partial.missing -= 1;
        self.buffered += piece.len();
        *slot = Some(piece);
        if partial.bytes > self.max_message {
            self.remove(key);
            return Err(DecodeError::Invalid {
                field: "fragment",
                reason: "reassembled message exceeds max_message",
            });
        }
        if partial.missing == 0 {
            let done = self.remove(key).expect("present");
            self.remember_completed(key);
            let mut msg = BytesMut::with_capacity(done.bytes);
            for p in done.pieces.into_iter().flatten() {
                msg.extend_from_slice(&p);
            }
            ctx.deliver_up(from, msg.freeze());
        }
        while self.buffered > self.budget {
            self.evict_oldest(ctx.counters);
        }
        Ok(())
    }
}

impl Layer for Fragment {
    fn kind(&self) -> LayerKind {
        LayerKind::Fragment
    }

    fn adds(&self) -> Option<crate::Capability> {
        None
    }

    fn down(&mut self, dest: Dest, msg: Bytes, ctx: &mut Ctx<'_>) {
        if self.fits_whole(msg.len()) {
            ctx.send_down(dest, Fragment::whole(&msg));
            return;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let count = msg.len().div_ceil(self.chunk()) as u32;
        for (index, piece) in msg.chunks(self.chunk()).enumerate() {
            ctx.send_down(
                dest,
                prepend(PIECE_HEADER, piece, |b| {
                    b.put_u8(PIECE);
                    b.put_u64_le(id);
                    b.put_u32_le(index as u32);
                    b.put_u32_le(count);
                }),
            );
        }
    }

    fn up(&mut self, from: NodeId, frame: Bytes, ctx: &mut Ctx<'_>) {
        let result = match frame.first() {
            Some(&WHOLE) => {
                ctx.deliver_up(from, frame.slice(1..));
                Ok(())
            }
            Some(&PIECE) => self.on_piece(from, frame, ctx),
            Some(&kind) => Err(DecodeError::UnknownKind {
                layer: "fragment",
                kind,
            }),
            None => Err(DecodeError::Truncated {
                field: "fragment kind",
                need: 1,
                have: 0,
            }),
        };
        if let Err(e) = result {
            Counters::bump(&ctx.counters.rejected_malformed);
            tracing::debug!(%from, error = %e, "fragment: malformed frame");
        }
    }

    fn tick(&mut self, ctx: &mut Ctx<'_>) {
        if !self.lossy_below {
            return;
        }
        let expired: Vec<_> = self
            .partial
            .iter()
            .filter(|(_, p)| ctx.now.duration_since(p.started) >= self.timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.remove(key);
            Counters::bump(&ctx.counters.gaps_skipped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: NodeId = NodeId(1);

    fn split(f: &mut Fragment, msg: &[u8], c: &Counters) -> Vec<Bytes> {
        let mut ctx = Ctx::new(Instant::now(), c);
        f.down(Dest::All, Bytes::copy_from_slice(msg), &mut ctx);
        ctx.down.into_iter().map(|(_, b)| b).collect()
    }

    fn join(f: &mut Fragment, frames: impl IntoIterator<Item = Bytes>, c: &Counters) -> Vec<Bytes> {
        let mut ctx = Ctx::new(Instant::now(), c);
        for fr in frames {
            f.up(A, fr, &mut ctx);
        }
        ctx.up.into_iter().map(|(_, m)| m).collect()
    }

    #[test]
    fn splits_and_reassembles_in_any_order() {
        let c = Counters::default();
        let mut tx = Fragment::new(64, 10_000, 1, false, Duration::from_secs(1));
        let mut rx = Fragment::new(64, 10_000, 2, false, Duration::from_secs(1));
        let msg: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut frames = split(&mut tx, &msg, &c);
        assert_eq!(frames.len(), tx.frames_for(msg.len()));
        assert!(frames.iter().all(|f| f.len() <= 64));
        frames.reverse();
        frames.push(frames[3].clone());
        assert_eq!(join(&mut rx, frames, &c), vec![Bytes::from(msg)]);
        assert_eq!(c.snapshot().duplicates_dropped, 1);
        assert_eq!(rx.buffered, 0);
        assert_eq!(
            join(&mut rx, split(&mut tx, b"small", &c), &c),
            vec![&b"small"[..]]
        );
    }

    #[test]
    fn lossy_stack_expires_incomplete_messages() {
        let c = Counters::default();
        let mut tx = Fragment::new(32, 1000, 1, true, Duration::from_millis(5));
        let mut rx = Fragment::new(32, 1000, 2, true, Duration::from_millis(5));
        let frames = split(&mut tx, &[7u8; 100], &c);
        assert!(join(&mut rx, frames[1..].to_vec(), &c).is_empty());
        let mut ctx = Ctx::new(Instant::now() + Duration::from_millis(6), &c);
        rx.tick(&mut ctx);
        assert_eq!(rx.buffered, 0);
        assert!(rx.partial.is_empty());
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let c = Counters::default();
            let mut rx = Fragment::new(32, 100, 2, true, Duration::from_millis(5));
            let mut b = bytes.clone();
            if !b.is_empty() { b[0] = PIECE; }
            let _ = join(&mut rx, [Bytes::from(bytes), Bytes::from(b)], &c);
        }
    }
}
