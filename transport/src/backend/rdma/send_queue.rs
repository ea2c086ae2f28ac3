//! Selective signaling of a send queue, kept apart from the verbs calls so the emulated and
//! the real connection run the same bookkeeping.
//!
//! A send queue slot is free again only once the NIC reports a completion for its work
//! request or for a later one on the same queue; unsignaled requests report nothing. So one
//! request in `every` is signaled, at most `depth` are outstanding, and a sender that finds
//! the queue full reaps completions until the oldest signaled one frees room. With
//! `every ≤ depth / 2`, a full queue always holds a signaled request, so reaping cannot
//! wait forever on a healthy connection.

use std::time::{Duration, Instant};

use super::RingError;

/// Records up to this size are posted inline (copied into the work request: no local key,
/// no DMA read of the source).
pub const INLINE_MAX: usize = 64;
/// One signaled send in this many keeps the send completion queue cheap.
pub const SIGNAL_EVERY: u64 = 64;
/// Send queue slots per connection.
pub const SEND_DEPTH: u64 = 4 * SIGNAL_EVERY;
/// How long a post waits for a full send queue to drain.
pub const PATIENCE: Duration = Duration::from_millis(10);

/// The state of one send queue.
#[derive(Debug)]
pub struct SendQueue {
    depth: u64,
    every: u64,
    posted: u64,
    done: u64,
}

impl SendQueue {
    /// A queue of `depth` slots signaling one request in `every`.
    pub fn new(depth: u64, every: u64) -> SendQueue {
        assert!(
            every >= 1 && every * 2 <= depth,
            "signal interval {every} must be at most half the queue depth {depth}"
        );
        SendQueue {
            depth,
            every,
            posted: 0,
            done: 0,
        }
    }

    /// The next work request's id and whether it must be signaled, or `None` if the queue
    /// is full (reap completions, then ask again).
    pub fn reserve(&mut self) -> Option<(u64, bool)> {
        if self.posted - self.done >= self.depth {
            return None;
        }
        self.posted += 1;
        Some((self.posted, self.posted % self.every == 0))
    }

    /// The next work request, reaping completions with `reap` while the queue is full. A
    /// queue that stays full for [`PATIENCE`] means the peer's NIC is not completing the
    /// writes (it stopped, or cannot keep up): that is reported as back-pressure
    /// ([`RingError::Full`] for a record of `need` bytes) rather than spun on.
    pub fn reserve_reaping(
        &mut self,
        need: usize,
        mut reap: impl FnMut(&mut SendQueue) -> Result<(), RingError>,
    ) -> Result<(u64, bool), RingError> {
        let give_up = Instant::now() + PATIENCE;
        loop {
            match self.reserve() {
                Some(next) => return Ok(next),
                None if Instant::now() > give_up => return Err(RingError::Full { need }),
                None => reap(self)?,
            }
        }
    }

    /// A signaled completion of request `id`: it and every earlier request are done.
    pub fn completed(&mut self, id: u64) {
        debug_assert!(id <= self.posted, "completion of a request never posted");
        self.done = self.done.max(id.min(self.posted));
    }

    /// Requests posted and not known to be done.
    pub fn outstanding(&self) -> u64 {
        self.posted - self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_one_in_every_and_never_overfills() {
        let mut q = SendQueue::new(8, 4);
        let ids: Vec<_> = std::iter::from_fn(|| q.reserve()).collect();
        assert_eq!(ids.len(), 8, "depth requests fit");
        let signaled: Vec<u64> = ids.iter().filter(|(_, s)| *s).map(|(i, _)| *i).collect();
        assert_eq!(signaled, vec![4, 8]);
        assert_eq!(q.outstanding(), 8);
        // The first signaled completion frees requests 1..=4 at once.
        q.completed(4);
        assert_eq!(q.outstanding(), 4);
        assert_eq!(q.reserve(), Some((9, false)));
        // An old completion arriving late changes nothing.
        q.completed(2);
        assert_eq!(q.outstanding(), 5);
    }

    #[test]
    #[should_panic(expected = "at most half")]
    fn an_interval_that_could_deadlock_is_refused() {
        SendQueue::new(8, 5);
    }
}
