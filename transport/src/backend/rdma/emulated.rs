//! [`RcConnection`] on `hw-sim`'s emulated verbs: what CI runs the ring protocol on.
//!
//! Posting follows the real connection's rules: small records inline, larger ones staged in
//! a registered mirror of the peer's ring at the record's own offset (the credit protocol
//! keeps that range untouched until the record was read, so the NIC may read the staging
//! copy late), selective signaling through [`SendQueue`]. Failures always complete, and
//! the next call reports them.

use std::sync::{Arc, Mutex};

use hw_sim::verbs::{self, Access, Endpoint, Local, MemoryRegion, Write, WriteData};

use super::send_queue::{SendQueue, INLINE_MAX, SEND_DEPTH, SIGNAL_EVERY};
use super::{RcConnection, RingError};

/// A region of the peer, as the connection handshake describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteRegion {
    /// Its remote key.
    pub rkey: u32,
    /// Its length.
    pub len: usize,
}

/// One side of an emulated RC connection with its ring, credit word and send buffer.
pub struct EmulatedRc {
    ep: Endpoint,
    ring: MemoryRegion,
    credit: MemoryRegion,
    /// The mirror of the peer's ring that staged records are sent from, and the send
    /// queue's bookkeeping: posts from the sender and the credit writer take turns.
    posting: Mutex<(MemoryRegion, SendQueue)>,
    remote_ring: RemoteRegion,
    remote_credit: RemoteRegion,
}

const RW: Access = Access {
    local_write: true,
    remote_write: true,
};

fn verbs_err(e: verbs::VerbsError) -> RingError {
    RingError::Verbs(e.to_string())
}

impl EmulatedRc {
    /// Both sides of a connection whose rings hold `capacity` bytes each, keys exchanged.
    pub fn pair(capacity: usize) -> (Arc<EmulatedRc>, Arc<EmulatedRc>) {
        let (a, b) = verbs::connected_pair();
        let (ra, ca) = (a.pd.register(capacity, RW), a.pd.register(8, RW));
        let (rb, cb) = (b.pd.register(capacity, RW), b.pd.register(8, RW));
        let region = |m: &MemoryRegion| RemoteRegion {
            rkey: m.rkey,
            len: m.len(),
        };
        let (rra, rca, rrb, rcb) = (region(&ra), region(&ca), region(&rb), region(&cb));
        (
            Arc::new(EmulatedRc::connect(a, ra, ca, rrb, rcb)),
            Arc::new(EmulatedRc::connect(b, rb, cb, rra, rca)),
        )
    }

    /// One side from its connected endpoint, its own ring and credit regions, and the
    /// peer's as the handshake described them (the handshake is trusted: a wrong key or
    /// length shows up as a remote access error on the first write that uses it).
    pub fn connect(
        ep: Endpoint,
        ring: MemoryRegion,
        credit: MemoryRegion,
        remote_ring: RemoteRegion,
        remote_credit: RemoteRegion,
    ) -> EmulatedRc {
        let staging = ep.pd.register(remote_ring.len, Access::default());
        let c = EmulatedRc {
            ep,
            ring,
            credit,
            posting: Mutex::new((staging, SendQueue::new(SEND_DEPTH, SIGNAL_EVERY))),
            remote_ring,
            remote_credit,
        };
        // One receive per possible record in flight: a ring holds at most capacity / 8,
        // plus the two wrap records `ring::min_record` keeps room for.
        for i in 0..c.local_records() {
            let _ = c.ep.qp.post_recv(i as u64);
        }
        c
    }

    fn post(
        &self,
        offset: usize,
        rkey: u32,
        data: &[u8],
        imm: Option<u32>,
    ) -> Result<(), RingError> {
        let mut posting = self.posting.lock().unwrap_or_else(|p| p.into_inner());
        let (staging, queue) = &mut *posting;
        let (wr_id, signaled) = queue.reserve_reaping(data.len(), |q| self.reap(q))?;
        let write = |data| Write {
            wr_id,
            data,
            remote_offset: offset,
            rkey,
            imm,
            signaled,
        };
        let r = if data.len() <= INLINE_MAX {
            self.ep.qp.post_write(write(WriteData::Inline(data)))
        } else {
            staging.write(offset, data).map_err(verbs_err)?;
            self.ep.qp.post_write(write(WriteData::Registered(Local {
                mr: staging,
                offset,
                len: data.len(),
            })))
        };
        r.map_err(verbs_err)?;
        self.reap(queue)
    }

    /// Takes send completions into `queue`; the first failure is the error.
    fn reap(&self, queue: &mut SendQueue) -> Result<(), RingError> {
        for wc in self.ep.send_cq.poll(usize::MAX) {
            wc.status.map_err(verbs_err)?;
            queue.completed(wc.wr_id);
        }
        Ok(())
    }
}

impl RcConnection for EmulatedRc {
    fn remote_capacity(&self) -> usize {
        self.remote_ring.len
    }

    fn local_capacity(&self) -> usize {
        self.ring.len()
    }

    fn remote_records(&self) -> usize {
        self.remote_ring.len / 8 + 2
    }

    fn local_records(&self) -> usize {
        self.ring.len() / 8 + 2
    }

    fn write_ring(&self, offset: usize, data: &[u8], imm: u32) -> Result<(), RingError> {
        self.post(offset, self.remote_ring.rkey, data, Some(imm))
    }

    fn write_credit(&self, head: u64) -> Result<(), RingError> {
        self.post(0, self.remote_credit.rkey, &head.to_le_bytes(), None)
    }

    fn poll_arrivals(&self, out: &mut Vec<u32>) -> Result<(), RingError> {
        for wc in self.ep.recv_cq.poll(usize::MAX) {
            wc.status.map_err(verbs_err)?;
            let imm = wc
                .imm
                .ok_or_else(|| RingError::Corrupt("receive without immediate".into()))?;
            out.push(imm);
            self.ep.qp.post_recv(wc.wr_id).map_err(verbs_err)?;
        }
        Ok(())
    }

    fn read_ring(&self, offset: usize, buf: &mut [u8]) -> Result<(), RingError> {
        self.ring.read(offset, buf).map_err(verbs_err)
    }

    fn read_credit(&self) -> u64 {
        let mut b = [0u8; 8];
        let _ = self.credit.read(0, &mut b);
        u64::from_le_bytes(b)
    }
}
