//! Counters every transport keeps, so that dropped and rejected traffic is visible in
//! `weft status` and assertable in tests instead of vanishing silently.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters, shared by a backend and the layers above it.
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A point-in-time copy of [`Counters`].
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Counters {
            /// Copies every counter.
            pub fn snapshot(&self) -> Stats {
                Stats { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl Stats {
            /// These counters of a layer stack combined with those of the backend below
            /// it: sums, except `delivered`, which counts what reached the application.
            pub fn over(self, below: Stats) -> Stats {
                let mut sum = Stats { $( $name: self.$name + below.$name, )* };
                sum.delivered = self.delivered;
                sum
            }
        }
    };
}

counters! {
    /// Frames handed to the wire (including retransmissions and acks).
    frames_sent,
    /// Frames taken off the wire, before any check.
    frames_received,
    /// Messages handed up: to the application, or by a backend to the stack above it.
    delivered,
    /// Frames that failed to decode.
    rejected_malformed,
    /// Frames whose header named another cluster.
    rejected_wrong_cluster,
    /// Frames claiming a source that is not a member.
    rejected_unknown_source,
    /// Frames whose MAC did not verify.
    rejected_bad_mac,
    /// Received messages dropped as duplicates.
    duplicates_dropped,
    /// Frames dropped because a bounded buffer (reorder, reassembly) was full.
    overflow_dropped,
    /// Frames sent again by the reliable layer.
    retransmits,
    /// Gaps the FIFO layer gave up waiting for on a lossy fabric.
    gaps_skipped,
    /// Unacknowledged messages discarded because the receiver restarted.
    discarded_on_peer_restart,
    /// Frames dropped by fault injection (`mem` backend).
    fault_dropped,
    /// Frames received through the fast path.
    fast_path_hits,
    /// Messages that missed their place in the deadline order and were delivered on the
    /// ordinary path (`ptp`).
    late_deliveries,
}

impl Counters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
