//! [`Inlet`]: where a backend's receive thread puts what arrives — the inbox channel, or a
//! sink diverted onto that thread ([`crate::Transport::divert`]).

use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::{Receiver, Sender};

use crate::{Delivery, Sink};

/// The receive thread's end, and (cloned) the transport's end that diverts it.
#[derive(Clone)]
pub(crate) struct Inlet {
    tx: Sender<Delivery>,
    sink: Arc<Mutex<Option<Sink>>>,
}

impl Inlet {
    /// A new inlet and the inbox it fills while not diverted.
    pub fn new() -> (Inlet, Receiver<Delivery>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let inlet = Inlet {
            tx,
            sink: Arc::new(Mutex::new(None)),
        };
        (inlet, rx)
    }

    fn slot(&self) -> MutexGuard<'_, Option<Sink>> {
        // A sink that panicked left no state here worth refusing over.
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `batch` to the sink, or queues it in the inbox; the batch is left empty.
    /// Returns `false` once the inbox is gone (the transport was dropped).
    pub fn put(&self, batch: &mut Vec<Delivery>) -> bool {
        if batch.is_empty() {
            return true;
        }
        if let Some(sink) = self.slot().as_mut() {
            sink(batch);
            batch.clear();
            return true;
        }
        batch.drain(..).all(|d| self.tx.send(d).is_ok())
    }

    /// [`crate::Transport::divert`]: the slot's lock is held while a sink runs, so
    /// replacing it waits for a running call to end.
    pub fn divert(&self, sink: Option<Sink>) -> bool {
        *self.slot() = sink;
        true
    }
}
