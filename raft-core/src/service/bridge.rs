//! From the node's blocking reply channels to the async connections.
//!
//! The node answers every request on a crossbeam channel. Blocking a tokio worker on it is
//! out of the question, and a `spawn_blocking` thread per request would mean a thousand
//! threads for a thousand pipelined requests. Instead one thread per server waits on all
//! pending answers at once with [`crossbeam_channel::Select`], and hands each answer to its
//! connection's (non-blocking) reply queue. Answers tend to arrive in batches (one commit
//! applies many writes), so after each wake-up the thread sweeps every pending receiver.
//!
//! Every pending answer has a deadline; past it, the connection gets `None` (a timeout)
//! and the answer, if it ever comes, is dropped. This bounds how long a connection's
//! in-flight slot can be held by a node that lost a forwarded read, say.

use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{unbounded, Receiver, Select, Sender, TryRecvError};

use crate::node::NodeError;

/// What to do with an answer: `Some(result)`, or `None` if it did not come in time.
pub(crate) type Finish<T> = Box<dyn FnOnce(Option<Result<T, NodeError>>) + Send>;

trait Waiting: Send {
    fn register<'a>(&'a self, sel: &mut Select<'a>);
    /// Completes if the answer is here (or can never come); returns whether it completed.
    fn try_complete(&mut self) -> bool;
    /// Completes with a timeout if the deadline passed; returns whether it completed.
    fn expire(&mut self, now: Instant) -> bool;
    fn deadline(&self) -> Instant;
}

struct Wait<T> {
    rx: Receiver<Result<T, NodeError>>,
    finish: Option<Finish<T>>,
    deadline: Instant,
}

impl<T: Send> Waiting for Wait<T> {
    fn register<'a>(&'a self, sel: &mut Select<'a>) {
        sel.recv(&self.rx);
    }

    fn try_complete(&mut self) -> bool {
        let result = match self.rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Disconnected) => Err(NodeError::Stopped),
        };
        if let Some(f) = self.finish.take() {
            f(Some(result));
        }
        true
    }

    fn expire(&mut self, now: Instant) -> bool {
        if now < self.deadline {
            return false;
        }
        if let Some(f) = self.finish.take() {
            f(None);
        }
        true
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// The waiting thread. Dropping the bridge stops it; answers still pending are dropped
/// (their connections are gone by then).
pub(crate) struct Bridge {
    new: Sender<Box<dyn Waiting>>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A cheap handle that registers pending answers with the bridge.
#[derive(Clone)]
pub(crate) struct BridgeHandle {
    new: Sender<Box<dyn Waiting>>,
}

impl BridgeHandle {
    /// Calls `finish` with what `rx` yields, or with `None` at `deadline`.
    pub(crate) fn wait<T: Send + 'static>(
        &self,
        rx: Receiver<Result<T, NodeError>>,
        deadline: Instant,
        finish: Finish<T>,
    ) {
        let w: Box<dyn Waiting> = Box::new(Wait {
            rx,
            finish: Some(finish),
            deadline,
        });
        if let Err(e) = self.new.send(w) {
            // The bridge stopped (server shutting down): answer "stopped" here.
            let mut w = e.into_inner();
            let _ = w.expire(w.deadline());
        }
    }
}

impl Bridge {
    pub(crate) fn start(name: String) -> std::io::Result<Bridge> {
        let (new, new_rx) = unbounded::<Box<dyn Waiting>>();
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(new_rx, stop_rx))?;
        Ok(Bridge {
            new,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub(crate) fn handle(&self) -> BridgeHandle {
        BridgeHandle {
            new: self.new.clone(),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(new: Receiver<Box<dyn Waiting>>, stop: Receiver<()>) {
    let mut pending: Vec<Box<dyn Waiting>> = Vec::new();
    loop {
        match stop.try_recv() {
            Err(TryRecvError::Empty) => {}
            _ => return,
        }
        loop {
            match new.try_recv() {
                Ok(w) => pending.push(w),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        pending.retain_mut(|w| !(w.try_complete() || w.expire(now)));
        let mut sel = Select::new();
        sel.recv(&stop);
        sel.recv(&new);
        for w in &pending {
            w.register(&mut sel);
        }
        match pending.iter().map(|w| w.deadline()).min() {
            Some(deadline) => {
                let _ = sel.ready_deadline(deadline);
            }
            None => {
                sel.ready();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn answers_timeouts_and_dead_senders_are_all_delivered() {
        let bridge = Bridge::start("bridge-test".into()).unwrap();
        let h = bridge.handle();
        let (done_tx, done_rx) = unbounded::<(u32, Option<Result<u32, NodeError>>)>();
        let far = Instant::now() + Duration::from_secs(30);
        let mut keep = Vec::new();
        for i in 0..100u32 {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let d = done_tx.clone();
            let deadline = if i == 99 {
                Instant::now() + Duration::from_millis(50)
            } else {
                far
            };
            h.wait(rx, deadline, Box::new(move |r| drop(d.send((i, r)))));
            match i {
                98 => drop(tx),
                99 => keep.push(tx),
                _ => tx.send(Ok(i)).unwrap(),
            }
        }
        let mut seen = 0;
        while seen < 100 {
            let (i, r) = done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
            match i {
                98 => assert_eq!(r, Some(Err(NodeError::Stopped))),
                99 => assert_eq!(r, None),
                _ => assert_eq!(r, Some(Ok(i))),
            }
            seen += 1;
        }
        drop(bridge);
    }
}
