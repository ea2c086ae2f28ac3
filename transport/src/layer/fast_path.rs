//! The fast path: Ensemble's fast-track reconfiguration for weft's stack.
//!
//! Assumptions about the common case, stated once: the message goes to one peer, fits one
//! frame, and the sender's `fifo` and `reliable` streams agree (same stream id and next
//! seq, which holds unless a restart intervened). Then the sender writes one compressed
//! header, `TAG u8`, `stream u64`, `seq varint`, in place of the `fragment`, `fifo` and
//! `reliable` headers (35 bytes), with one copy of the payload instead of one per layer,
//! and records the frame for retransmission exactly as `reliable` would.
//!
//! The receiver takes the bypass only when its state is the common one too: the frame is
//! the next in order for both `reliable` and `fifo` and nothing is held back. It then
//! updates both layers' state as the full path would and delivers. Otherwise it expands
//! the compressed header into the full headers and hands the frame to the full stack, so
//! retransmissions, reordering and restarts are all handled by the layers themselves. The
//! property test in `tests/fast_path_equivalence.rs` checks that both stacks deliver the
//! same sequences under the same faults.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{put_varint, Reader};
use super::fifo::{Fifo, InOrder};
use super::fragment::Fragment;
use super::reliable::Reliable;
use super::stack::{Output, Stack};
use crate::{Counters, DecodeError, Dest, NodeId};

/// First byte of a compressed frame; no layer uses it as a kind.
pub const TAG: u8 = 0xFA;

impl Stack {
    /// Sends `msg` to `peer` through the bypass if the common case holds; `false` means the
    /// caller must use the full stack (nothing was changed).
    pub(super) fn fast_send(
        &mut self,
        peer: NodeId,
        msg: &Bytes,
        now: Instant,
        out: &mut Output,
    ) -> bool {
        if let Some(frag) = self.fragment() {
            if !frag.fits_whole(msg.len()) {
                return false;
            }
        }
        let fifo = self.fifo().and_then(|f| f.next_out(peer));
        let rel = self.reliable().and_then(|r| r.next_out(peer));
        let at = match (fifo, rel) {
            (Some(f), Some(r)) if f == r => f,
            (Some(f), None) => f,
            (None, Some(r)) => r,
            _ => return false,
        };
        let mut body = BytesMut::with_capacity(1 + 8 + 10 + msg.len());
        body.put_u8(TAG);
        body.put_u64_le(at.stream);
        put_varint(&mut body, at.seq);
        body.extend_from_slice(msg);
        let body = body.freeze();
        if let Some(f) = self.fifo() {
            f.take_out(peer);
        }
        if let Some(r) = self.reliable() {
            r.record_out(peer, body.clone(), now);
        }
        match self.auth_at {
            Some(auth) => self.run_down(auth, Dest::Node(peer), body, now, out),
            None => out.wire.push((Dest::Node(peer), body)),
        }
        true
    }

    /// Takes a compressed frame from `from`: delivers it directly in the common case,
    /// otherwise expands it and runs the full stack.
    pub(super) fn fast_receive(
        &mut self,
        from: NodeId,
        frame: Bytes,
        now: Instant,
        out: &mut Output,
    ) {
        let (at, payload) = match decode(frame) {
            Ok(v) => v,
            Err(e) => {
                Counters::bump(&self.counters.rejected_malformed);
                tracing::debug!(%from, error = %e, "fast path: malformed frame");
                return;
            }
        };
        // `expecting` is `None` for a stranger or a sender with frames held back: the full
        // stack sorts those out.
        let fifo_ok = self.fifo().is_none_or(|f| f.expecting(from) == Some(at));
        let rel_ok = self
            .reliable()
            .is_none_or(|r| r.expecting(from) == Some(at));
        if fifo_ok && rel_ok {
            if let Some(r) = self.reliable() {
                r.accept_in_order(from);
            }
            if let Some(f) = self.fifo() {
                f.accept_in_order(from);
            }
            Counters::bump(&self.counters.fast_path_hits);
            Counters::bump(&self.counters.delivered);
            out.deliver.push((from, payload));
        } else {
            let full = self.expand(at, &payload);
            self.run_up(self.fast_entry, from, full, now, out);
        }
    }

    /// The frame the full stack would have received for this compressed one.
    fn expand(&mut self, at: InOrder, payload: &[u8]) -> Bytes {
        let mut frame = Bytes::copy_from_slice(payload);
        if self.fragment().is_some() {
            frame = Fragment::whole(&frame);
        }
        if self.fifo().is_some() {
            frame = Fifo::frame(at.stream, at.seq, &frame);
        }
        if self.reliable().is_some() {
            frame = Reliable::data_frame(at.stream, at.seq, &frame);
        }
        frame
    }
}

fn decode(frame: Bytes) -> Result<(InOrder, Bytes), DecodeError> {
    let mut r = Reader::new(frame);
    r.u8("fast tag")?;
    let stream = r.u64("fast stream")?;
    let seq = r.varint("fast seq")?;
    Ok((InOrder { stream, seq }, r.rest()))
}
