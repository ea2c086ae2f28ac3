//! Clocks with an offset and a drift against a shared true time, for testing what
//! synchronized-clock fabrics (PTP, time-triggered Ethernet) promise without their hardware.
//!
//! [`TrueTime`] is the reference: virtual time that a test advances by hand, so a run is
//! deterministic. Each [`DriftingClock`] reads it through its own error, as a host clock
//! disciplined to within some bound would: `offset + (1 + drift) × true time`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The reference time of a simulated system, in nanoseconds; advanced by the test.
#[derive(Debug, Default)]
pub struct TrueTime(AtomicI64);

impl TrueTime {
    /// A reference starting at `ns`.
    pub fn starting_at(ns: i64) -> Arc<TrueTime> {
        Arc::new(TrueTime(AtomicI64::new(ns)))
    }

    /// The current true time.
    pub fn now(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// Moves time forward by `ns` (never backwards).
    pub fn advance(&self, ns: i64) {
        self.0.fetch_add(ns.max(0), Ordering::AcqRel);
    }

    /// Sets time to `ns` if that is later than now.
    pub fn advance_to(&self, ns: i64) {
        self.0.fetch_max(ns, Ordering::AcqRel);
    }
}

/// A host clock that reads [`TrueTime`] with a fixed offset and a frequency error.
#[derive(Debug, Clone)]
pub struct DriftingClock {
    truth: Arc<TrueTime>,
    /// Nanoseconds this clock is ahead of true time at true time 0.
    pub offset_ns: i64,
    /// Frequency error in parts per billion (1 ppm = 1000 ppb); positive runs fast.
    pub drift_ppb: i64,
}

impl DriftingClock {
    /// A clock `offset_ns` ahead of `truth` that runs `drift_ppb` parts per billion fast.
    pub fn new(truth: Arc<TrueTime>, offset_ns: i64, drift_ppb: i64) -> DriftingClock {
        DriftingClock {
            truth,
            offset_ns,
            drift_ppb,
        }
    }

    /// What this clock reads now.
    pub fn now_ns(&self) -> i64 {
        let t = self.truth.now();
        let drift = (i128::from(t) * i128::from(self.drift_ppb) / 1_000_000_000) as i64;
        t + self.offset_ns + drift
    }

    /// How far this clock is from true time now (positive: ahead).
    pub fn error_ns(&self) -> i64 {
        self.now_ns() - self.truth.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_and_drift_accumulate_as_specified() {
        let truth = TrueTime::starting_at(0);
        let c = DriftingClock::new(truth.clone(), 500, 20_000); // +500 ns, 20 ppm fast
        assert_eq!(c.now_ns(), 500);
        truth.advance(1_000_000_000);
        assert_eq!(c.now_ns(), 1_000_000_000 + 500 + 20_000);
        assert_eq!(c.error_ns(), 20_500);
        truth.advance_to(10);
        assert_eq!(truth.now(), 1_000_000_000, "time never goes back");
    }
}
