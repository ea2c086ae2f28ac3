//! The ring and credit protocol of one direction of a connection.
//!
//! Records are the payload padded to 8 bytes and to at least [`min_record`] (so that the
//! receiver's posted receive requests always outnumber the records in flight), written at
//! `tail mod capacity`; a record that would cross the end of the ring is preceded by a wrap record (immediate `WRAP | skip`)
//! that sends the reader back to the start. Positions are byte counts since the connection
//! began (`u64`, never wrapping), so "free space" is `capacity − (tail − head)`.

use std::sync::Arc;

use bytes::Bytes;

use super::{RcConnection, RingError};

/// Immediate flag of a wrap record; the low bits say how many bytes it skips.
const WRAP: u32 = 1 << 31;

/// The smallest record on a ring of `capacity` bytes whose receiver keeps `records`
/// receive requests posted: large enough that a full ring never holds more records than
/// there are receives (two are kept for wrap records, which may be smaller).
pub fn min_record(capacity: usize, records: usize) -> usize {
    let usable = records.saturating_sub(2).max(1);
    (capacity.div_ceil(usable).max(8) + 7) & !7
}

/// Ring bytes a record of `len` takes: padded to 8, and never less than `min`.
fn padded(len: usize, min: usize) -> usize {
    ((len + 7) & !7).max(min)
}

/// The sending half: writes records into the peer's ring while credit allows.
pub struct RingSender<C: RcConnection> {
    conn: Arc<C>,
    tail: u64,
    head: u64,
    min: usize,
}

impl<C: RcConnection> RingSender<C> {
    /// The sender of `conn`. The peer's ring capacity must be a multiple of 8.
    pub fn new(conn: Arc<C>) -> RingSender<C> {
        debug_assert_eq!(
            conn.remote_capacity() % 8,
            0,
            "ring capacity not a multiple of 8"
        );
        let min = min_record(conn.remote_capacity(), conn.remote_records());
        RingSender {
            conn,
            tail: 0,
            head: 0,
            min,
        }
    }

    /// Largest message: half the ring, so that it fits after any wrap.
    pub fn max_message(&self) -> usize {
        (self.conn.remote_capacity() / 2).min(WRAP as usize - 1)
    }

    /// Writes `msg` into the peer's ring, or says the ring is full.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), RingError> {
        let max = self.max_message();
        if msg.len() > max {
            return Err(RingError::TooLarge {
                size: msg.len(),
                max,
            });
        }
        let cap = self.conn.remote_capacity();
        let pos = (self.tail % cap as u64) as usize;
        let need = padded(msg.len(), self.min);
        let skip = if pos + need > cap { cap - pos } else { 0 };
        let total = skip + need;
        if self.tail + total as u64 - self.head > cap as u64 {
            self.head = self.conn.read_credit();
            if self.tail + total as u64 - self.head > cap as u64 {
                return Err(RingError::Full { need: total });
            }
        }
        if skip > 0 {
            self.conn.write_ring(pos, &[], WRAP | skip as u32)?;
        }
        let at = (pos + skip) % cap;
        self.conn.write_ring(at, msg, msg.len() as u32)?;
        self.tail += total as u64;
        Ok(())
    }
}

/// The receiving half: takes records in order and returns credit.
pub struct RingReceiver<C: RcConnection> {
    conn: Arc<C>,
    head: u64,
    credited: u64,
    imms: Vec<u32>,
    next: usize,
    min: usize,
}

impl<C: RcConnection> RingReceiver<C> {
    /// The receiver of `conn`.
    pub fn new(conn: Arc<C>) -> RingReceiver<C> {
        let min = min_record(conn.local_capacity(), conn.local_records());
        RingReceiver {
            conn,
            head: 0,
            credited: 0,
            imms: Vec::new(),
            next: 0,
            min,
        }
    }

    /// Asks the connection for an event on the next arrival ([`RcConnection::arm`]).
    pub fn arm(&self) -> Result<(), RingError> {
        self.conn.arm()
    }

    /// Takes up to `max` messages that have arrived, in order, calling `deliver` on each;
    /// returns how many.
    pub fn poll(&mut self, max: usize, mut deliver: impl FnMut(Bytes)) -> Result<usize, RingError> {
        if self.next == self.imms.len() {
            self.imms.clear();
            self.next = 0;
            self.conn.poll_arrivals(&mut self.imms)?;
        }
        let cap = self.conn.local_capacity();
        let mut n = 0;
        while n < max && self.next < self.imms.len() {
            let imm = self.imms[self.next];
            self.next += 1;
            let pos = (self.head % cap as u64) as usize;
            if imm & WRAP != 0 {
                let skip = (imm & !WRAP) as usize;
                if pos + skip != cap {
                    return Err(RingError::Corrupt(format!(
                        "wrap of {skip} bytes at {pos} does not end the ring of {cap}"
                    )));
                }
                self.head += skip as u64;
                continue;
            }
            let len = imm as usize;
            if pos + len > cap {
                return Err(RingError::Corrupt(format!(
                    "record of {len} bytes at {pos} crosses the end of the ring of {cap}"
                )));
            }
            // Read straight into the message handed on: one copy out of the ring.
            let mut msg = vec![0u8; len];
            self.conn.read_ring(pos, &mut msg)?;
            deliver(Bytes::from(msg));
            self.head += padded(len, self.min) as u64;
            n += 1;
        }
        // Credit goes back every quarter ring, and whenever everything that arrived has been
        // read: a sender waiting for room for a record near the ring's end (which needs the
        // skipped bytes too) would otherwise wait for credit that never comes.
        let drained = self.next == self.imms.len();
        if self.head - self.credited >= cap as u64 / 4 || (drained && self.head > self.credited) {
            match self.conn.write_credit(self.head) {
                Ok(()) => self.credited = self.head,
                // The send queue is backed up: the credit goes out with a later poll.
                Err(RingError::Full { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_never_holds_more_records_than_posted_receives() {
        for (cap, records) in [(4 << 20, 4096), (4096, 514), (1 << 20, 3), (65536, 100)] {
            let min = min_record(cap, records);
            assert_eq!(min % 8, 0);
            // Records of at least `min` bytes in a full ring, plus two wrap records.
            assert!(
                cap / min + 2 <= records,
                "cap {cap}, {records} receives: min {min}"
            );
        }
        // The emulation posts capacity / 8 + 2 receives: records keep their 8-byte floor.
        assert_eq!(min_record(4096, 4096 / 8 + 2), 8);
        assert_eq!(padded(1, 8), 8);
        assert_eq!(padded(9, 1032), 1032);
        assert_eq!(padded(2000, 1032), 2000);
    }
}
