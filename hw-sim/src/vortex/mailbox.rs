//! An endpoint's side of the switch: what has been delivered to it and not yet taken.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::endpoint::{Ack, EpochClose, Received};
use super::switch::Event;
use super::DvError;

#[derive(Default)]
struct Boxed {
    rx: VecDeque<Received>,
    acks: VecDeque<Ack>,
    closed: Option<EpochClose>,
    crashed: bool,
}

/// Queues filled by the switch (directly, or by a socket reader thread) and drained by the
/// endpoint's calls; one condition variable wakes every waiter.
#[derive(Default)]
pub(crate) struct Mailbox {
    state: Mutex<Boxed>,
    cv: Condvar,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Boxed> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn apply(&self, events: Vec<Event>) {
        let mut b = self.lock();
        for e in events {
            match e {
                Event::Attached { .. } => {}
                Event::Deliver { src, epoch, bytes } => b.rx.push_back(Received {
                    source: src,
                    epoch,
                    bytes,
                }),
                Event::Ack(a) => b.acks.push_back(a),
                Event::Closed { epoch, members } => {
                    b.closed = Some(EpochClose {
                        epoch,
                        members: members.to_vec(),
                    })
                }
                Event::Crashed => b.crashed = true,
            }
        }
        drop(b);
        self.cv.notify_all();
    }

    /// The endpoint lost its switch or was crashed.
    pub(crate) fn disconnect(&self) {
        self.lock().crashed = true;
        self.cv.notify_all();
    }

    pub(crate) fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// The last epoch close seen.
    pub(crate) fn last_close(&self) -> Option<EpochClose> {
        self.lock().closed.clone()
    }

    /// Waits until `take` returns something, the endpoint is crashed (and `take` has
    /// nothing), or `timeout` (`None`: forever) runs out.
    fn wait_for<T>(
        &self,
        timeout: Option<Duration>,
        mut take: impl FnMut(&mut Boxed) -> Option<Result<T, DvError>>,
    ) -> Result<T, DvError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut b = self.lock();
        loop {
            if let Some(r) = take(&mut b) {
                return r;
            }
            if b.crashed {
                return Err(DvError::Closed);
            }
            b = match deadline {
                None => self.cv.wait(b).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(if timeout == Some(Duration::ZERO) {
                            DvError::Empty
                        } else {
                            DvError::TimedOut
                        });
                    }
                    self.cv
                        .wait_timeout(b, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// The next message, if it is at most `cap` bytes (else [`DvError::Truncated`] with the
    /// message left queued and its length returned).
    pub(crate) fn recv(
        &self,
        cap: usize,
        timeout: Option<Duration>,
    ) -> Result<Received, (DvError, usize)> {
        let mut too_big = 0;
        self.wait_for(timeout, |b| match b.rx.front() {
            Some(m) if m.bytes.len() > cap => {
                too_big = m.bytes.len();
                Some(Err(DvError::Truncated))
            }
            Some(_) => b.rx.pop_front().map(Ok),
            None => None,
        })
        .map_err(|e| (e, too_big))
    }

    pub(crate) fn poll_ack(&self, timeout: Option<Duration>) -> Result<Ack, DvError> {
        self.wait_for(timeout, |b| b.acks.pop_front().map(Ok))
    }

    /// Waits for the close of an epoch after `after` (an epoch number).
    pub(crate) fn wait_close(
        &self,
        after: u64,
        timeout: Option<Duration>,
    ) -> Result<EpochClose, DvError> {
        self.wait_for(timeout, |b| {
            b.closed
                .as_ref()
                .filter(|c| c.epoch > after)
                .map(|c| Ok(c.clone()))
        })
    }

    /// Messages waiting to be received.
    pub(crate) fn queued(&self) -> usize {
        self.lock().rx.len()
    }
}
