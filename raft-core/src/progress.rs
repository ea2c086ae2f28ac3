//! The leader's view of each follower's log, and the flow control of appends to it.
//!
//! As in etcd/raft: a follower is *probed* (one append in flight, find where the logs
//! agree), then *replicated* to (appends pipelined up to a [`Window`] of appends and
//! bytes, `next` advanced optimistically), or sent a *snapshot* when the entries it needs
//! are compacted. The byte bound (etcd/raft's `MaxInflightBytes`) keeps what one
//! acknowledgement or one opened window sends proportional to it, not to the follower's
//! lag: a follower far behind is fed a window at a time.

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

/// How much may be in flight to one follower while replicating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Appends in flight at most.
    pub appends: usize,
    /// Bytes of entries in flight at most (one append always goes when none is).
    pub bytes: usize,
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
    /// Last index and entry bytes of each append in flight, oldest first.
    pub inflight: VecDeque<(Index, usize)>,
    /// The bytes of `inflight`, summed.
    pub inflight_bytes: usize,
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
            inflight_bytes: 0,
            recent_active: true,
        }
    }

    /// Whether another append may be sent now.
    pub fn can_send(&self, window: Window) -> bool {
        match self.mode {
            Mode::Probe { paused } => !paused,
            Mode::Replicate => !self.window_full(window),
            Mode::Snapshot { .. } => false,
        }
    }

    fn window_full(&self, window: Window) -> bool {
        self.inflight.len() >= window.appends || self.inflight_bytes >= window.bytes
    }

    /// Records an append whose last entry is `last` (`None`: no entries, a probe),
    /// carrying `bytes` of entries.
    pub fn sent(&mut self, last: Option<Index>, bytes: usize) {
        match self.mode {
            Mode::Probe { .. } => self.mode = Mode::Probe { paused: true },
            Mode::Replicate => {
                if let Some(last) = last {
                    self.next = last + 1;
                    self.inflight.push_back((last, bytes));
                    self.inflight_bytes += bytes;
                }
            }
            Mode::Snapshot { .. } => {}
        }
    }

    /// Forgets every append in flight.
    fn clear_inflight(&mut self) {
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// The follower acknowledged everything up to `index`. Returns whether that was news.
    pub fn acked(&mut self, index: Index) -> bool {
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
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
        self.clear_inflight();
        self.mode = Mode::Probe { paused: false };
        true
    }

    /// Starts replicating right after `matched`.
    pub fn become_replicate(&mut self) {
        self.mode = Mode::Replicate;
        self.next = self.matched + 1;
        self.clear_inflight();
    }

    /// Starts sending the snapshot at `index`.
    pub fn become_snapshot(&mut self, index: Index) {
        self.mode = Mode::Snapshot {
            index,
            acked: 0,
            in_flight: false,
        };
        self.clear_inflight();
    }

    /// A heartbeat answer arrived: the follower is reachable. A paused probe or snapshot
    /// chunk may be resent; a replication window that is still full frees its oldest
    /// slot (as etcd/raft does), so one more append goes out. Why not probe again from
    /// the match: a follower that is merely slow (catching up a long backlog) would be
    /// sent its whole window again at every heartbeat; if appends were lost, the next
    /// append leaves a gap the follower rejects, and that rejection starts the probe.
    pub fn heard_back(&mut self, window: Window) {
        let full = self.window_full(window);
        match &mut self.mode {
            Mode::Probe { paused } => *paused = false,
            Mode::Snapshot { in_flight, .. } => *in_flight = false,
            Mode::Replicate if full => {
                if let Some((_, bytes)) = self.inflight.pop_front() {
                    self.inflight_bytes -= bytes;
                }
            }
            Mode::Replicate => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appends(n: usize) -> Window {
        Window {
            appends: n,
            bytes: usize::MAX,
        }
    }

    #[test]
    fn probe_then_pipeline() {
        let mut p = Progress::new(11);
        assert!(p.can_send(appends(4)));
        p.sent(Some(10), 0);
        assert!(!p.can_send(appends(4)), "one probe at a time");
        assert!(p.acked(10));
        assert_eq!(p.mode, Mode::Replicate);
        for last in [12, 14, 16, 18] {
            assert!(p.can_send(appends(4)));
            p.sent(Some(last), 100);
        }
        assert!(!p.can_send(appends(4)), "window of 4 appends");
        assert_eq!(p.next, 19);
        p.acked(14);
        assert_eq!((p.inflight.len(), p.inflight_bytes), (2, 200));
        assert!(p.can_send(appends(4)));
    }

    #[test]
    fn the_window_closes_at_its_bytes_too() {
        let window = Window {
            appends: 100,
            bytes: 1000,
        };
        let mut p = Progress::new(1);
        p.acked(1);
        p.sent(Some(2), 600);
        assert!(p.can_send(window));
        p.sent(Some(3), 600);
        assert!(!p.can_send(window), "1200 bytes in flight");
        p.acked(2);
        assert!(p.can_send(window));
        p.heard_back(window);
        assert_eq!(p.mode, Mode::Replicate, "not full: keeps replicating");
    }

    #[test]
    fn a_full_window_after_a_heartbeat_lets_one_more_append_go() {
        let mut p = Progress::new(1);
        p.acked(5);
        for last in [7, 9] {
            p.sent(Some(last), 10);
        }
        assert!(!p.can_send(appends(2)));
        p.heard_back(appends(2));
        assert_eq!((p.mode.clone(), p.next), (Mode::Replicate, 10));
        assert_eq!((p.inflight.len(), p.inflight_bytes), (1, 10));
        assert!(p.can_send(appends(2)));
    }

    #[test]
    fn rejection_backs_off_but_never_below_match() {
        let mut p = Progress::new(1);
        p.acked(5);
        p.sent(Some(9), 10);
        assert!(!p.rejected(4, 2), "stale rejection below match ignored");
        assert!(p.rejected(9, 3));
        assert_eq!(p.next, 6);
        assert_eq!(p.mode, Mode::Probe { paused: false });
    }
}
