//! The leader's view of each follower's log, and the flow control of appends to it.
//!
//! As in etcd/raft: a follower is *probed* (one append in flight, find where the logs
//! agree), then *replicated* to (appends pipelined up to `max_inflight`, `next` advanced
//! optimistically), or sent a *snapshot* when the entries it needs are compacted.

use std::collections::VecDeque;

use crate::types::Index;

/// How the leader talks to one follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Looking for the point where the logs agree; one append at a time.
    Probe {
        /// An append is in flight; wait for its answer or the next heartbeat.
        paused: bool,
    },
    /// Logs agree up to `matched`; appends are pipelined.
    Replicate,
    /// The follower needs a snapshot; `sent` bytes of it have been acknowledged.
    Snapshot {
        /// The snapshot's index.
        index: Index,
        /// Bytes acknowledged so far.
        acked: u64,
        /// A chunk is in flight.
        in_flight: bool,
    },
}

/// The leader's record of one follower.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Highest index known to match the leader's log.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    /// Flow-control mode.
    pub mode: Mode,
    /// Last index of each append in flight, oldest first.
    pub inflight: VecDeque<Index>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
}

impl Progress {
    /// A follower about which nothing is known yet: probe from `next`.
    pub fn new(next: Index) -> Progress {
        Progress {
            matched: 0,
            next,
            mode: Mode::Probe { paused: false },
            inflight: VecDeque::new(),
            recent_active: true,
        }
    }

    /// Whether another append may be sent now.
    pub fn can_send(&self, max_inflight: usize) -> bool {
        match self.mode {
            Mode::Probe { paused } => !paused,
            Mode::Replicate => self.inflight.len() < max_inflight,
            Mode::Snapshot { .. } => false,
        }
    }

    /// Records an append whose last entry is `last` (`None`: no entries, a probe).
    pub fn sent(&mut self, last: Option<Index>) {
        match self.mode {
            Mode::Probe { .. } => self.mode = Mode::Probe { paused: true },
            Mode::Replicate => {
                if let Some(last) = last {
                    self.next = last + 1;
                    self.inflight.push_back(last);
                }
            }
            Mode::Snapshot { .. } => {}
        }
    }

    /// The follower acknowledged everything up to `index`. Returns whether that was news.
    pub fn acked(&mut self, index: Index) -> bool {
        while self.inflight.front().is_some_and(|&i| i <= index) {
            self.inflight.pop_front();
        }
        if index <= self.matched {
            if let Mode::Probe { .. } = self.mode {
                self.mode = Mode::Probe { paused: false };
            }
            return false;
        }
        self.matched = index;
        self.next = self.next.max(index + 1);
        match self.mode {
            Mode::Probe { .. } => self.become_replicate(),
            Mode::Snapshot { index: snap, .. } if index >= snap => self.become_replicate(),
            _ => {}
        }
        true
    }

    /// The follower rejected an append at `rejected`; retry from `next`. Returns whether
    /// the rejection was current (stale ones are ignored).
    pub fn rejected(&mut self, rejected: Index, next: Index) -> bool {
        if let Mode::Replicate = self.mode {
            if rejected <= self.matched {
                return false;
            }
        }
        self.next = next.clamp(self.matched + 1, self.next.max(self.matched + 1));
        self.inflight.clear();
        self.mode = Mode::Probe { paused: false };
        true
    }

    /// Starts replicating right after `matched`.
    pub fn become_replicate(&mut self) {
        self.mode = Mode::Replicate;
        self.next = self.matched + 1;
        self.inflight.clear();
    }

    /// Starts sending the snapshot at `index`.
    pub fn become_snapshot(&mut self, index: Index) {
        self.mode = Mode::Snapshot {
            index,
            acked: 0,
            in_flight: false,
        };
        self.inflight.clear();
    }

    /// A heartbeat answer arrived: the follower is reachable. A paused probe or snapshot
    /// chunk may be resent; a replication window that is still full after a heartbeat
    /// round means appends were lost, so probe again from the last known match.
    pub fn heard_back(&mut self, max_inflight: usize) {
        match &mut self.mode {
            Mode::Probe { paused } => *paused = false,
            Mode::Snapshot { in_flight, .. } => *in_flight = false,
            Mode::Replicate if self.inflight.len() >= max_inflight => {
                self.mode = Mode::Probe { paused: false };
                self.next = self.matched + 1;
                self.inflight.clear();
            }
            Mode::Replicate => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_then_pipeline() {
        let mut p = Progress::new(11);
        assert!(p.can_send(4));
        p.sent(Some(10));
        assert!(!p.can_send(4), "one probe at a time");
        assert!(p.acked(10));
        assert_eq!(p.mode, Mode::Replicate);
        for last in [12, 14, 16, 18] {
            assert!(p.can_send(4));
            p.sent(Some(last));
        }
        assert!(!p.can_send(4), "window of 4 appends");
        assert_eq!(p.next, 19);
        p.acked(14);
        assert_eq!(p.inflight.len(), 2);
        assert!(p.can_send(4));
    }

    #[test]
    fn a_full_window_after_a_heartbeat_falls_back_to_probing() {
        let mut p = Progress::new(1);
        p.acked(5);
        for last in [7, 9] {
            p.sent(Some(last));
        }
        p.heard_back(2);
        assert_eq!((p.mode.clone(), p.next), (Mode::Probe { paused: false }, 6));
        assert!(p.can_send(2));
    }

    #[test]
    fn rejection_backs_off_but_never_below_match() {
        let mut p = Progress::new(1);
        p.acked(5);
        p.sent(Some(9));
        assert!(!p.rejected(4, 2), "stale rejection below match ignored");
        assert!(p.rejected(9, 3));
        assert_eq!(p.next, 6);
        assert_eq!(p.mode, Mode::Probe { paused: false });
    }
}
