//! Clocks with a stated uncertainty, for fabrics that synchronize time (PTP, time-triggered
//! Ethernet): deadline-ordered delivery ([`crate::deadline`]) is only as good as the bound
//! `ε` on how far two members' clocks may disagree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of time shared (within `epsilon`) by every member of a cluster.
pub trait Clock: Send + Sync {
    /// Nanoseconds since the Unix epoch on this member's clock.
    fn now_ns(&self) -> i64;

    /// Bound on how far any two members' clocks may read apart at the same instant.
    fn epsilon(&self) -> Duration;
}

/// The system clock, for hosts whose clock linuxptp (`ptp4l` + `phc2sys`) disciplines. weft
/// cannot see how well it does: `epsilon` is what the operator states (from the offsets
/// `ptp4l` reports), and the offset monitor checks it against measurements.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    /// The stated bound.
    pub epsilon: Duration,
}

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }

    fn epsilon(&self) -> Duration {
        self.epsilon
    }
}

/// A simulated host clock ([`hw_sim::clock::DriftingClock`]) with a stated bound, for tests
/// and simulations.
#[derive(Clone, Debug)]
pub struct SimulatedClock {
    /// The clock.
    pub clock: hw_sim::clock::DriftingClock,
    /// The bound the simulation claims.
    pub epsilon: Duration,
}

impl Clock for SimulatedClock {
    fn now_ns(&self) -> i64 {
        self.clock.now_ns()
    }

    fn epsilon(&self) -> Duration {
        self.epsilon
    }
}
