//! Clocks with a stated uncertainty, for fabrics that synchronize time (PTP, time-triggered
//! Ethernet): deadline-ordered delivery ([`crate::deadline`]) is only as good as the bound
//! `ε` on how far two members' clocks may disagree.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
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

/// The system clock moved by a fixed offset, claiming `epsilon`: a member whose
/// synchronization failed, for fault tests of deadline ordering and its monitor.
#[derive(Clone, Copy, Debug)]
pub struct ShiftedClock {
    /// Nanoseconds added to the system clock.
    pub offset_ns: i64,
    /// The bound it (wrongly) claims.
    pub epsilon: Duration,
}

impl Clock for ShiftedClock {
    fn now_ns(&self) -> i64 {
        SystemClock {
            epsilon: self.epsilon,
        }
        .now_ns()
            + self.offset_ns
    }

    fn epsilon(&self) -> Duration {
        self.epsilon
    }
}

/// A PTP hardware clock (`/dev/ptpN`, the NIC's own clock that `ptp4l` disciplines and
/// that hardware receive timestamps are taken on), read with `clock_gettime` on its
/// dynamic clock id. Reading it costs a system call, but it is the clock the packets were
/// stamped with, so offsets need no conversion.
#[derive(Debug)]
pub struct PhcClock {
    /// Held, not read: the clock id is derived from this file's descriptor and is valid
    /// while it is open.
    _file: File,
    clock_id: libc::clockid_t,
    epsilon: Duration,
}

/// The dynamic clock id of an open PTP device (`FD_TO_CLOCKID` in the kernel's
/// `posix-timers.h`).
fn fd_to_clock_id(fd: i32) -> libc::clockid_t {
    ((!fd) << 3) | 3
}

impl PhcClock {
    /// Opens `device` (e.g. `/dev/ptp0`; `ethtool -T IFACE` names an interface's) with a
    /// stated bound `epsilon`. The error says whether the device is missing, forbidden, or
    /// not a clock.
    pub fn open(device: &Path, epsilon: Duration) -> Result<PhcClock, String> {
        let file = File::open(device).map_err(|e| {
            format!(
                "cannot open PTP hardware clock {}: {e} (list them with `ls /dev/ptp*`; \
                 `ethtool -T IFACE` names an interface's)",
                device.display()
            )
        })?;
        let clock = PhcClock {
            clock_id: fd_to_clock_id(file.as_raw_fd()),
            _file: file,
            epsilon,
        };
        clock.read().map_err(|e| {
            format!(
                "{} is not a PTP hardware clock: clock_gettime: {e}",
                device.display()
            )
        })?;
        Ok(clock)
    }

    fn read(&self) -> std::io::Result<i64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; the clock id stays valid while `file` is
        // open.
        if unsafe { libc::clock_gettime(self.clock_id, &mut ts) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ts.tv_sec * 1_000_000_000 + ts.tv_nsec)
    }
}

impl Clock for PhcClock {
    fn now_ns(&self) -> i64 {
        // A PHC that stops answering mid-run (device removed) reads as 0: deadlines then
        // lie in the past, so messages go the ordinary path rather than wait forever.
        self.read().unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_clock_ids_follow_the_kernel_encoding() {
        // FD_TO_CLOCKID(3) from the kernel headers: (~3 << 3) | 3.
        assert_eq!(fd_to_clock_id(3), -29);
        assert_eq!(fd_to_clock_id(0), -5);
    }

    #[test]
    fn missing_and_non_clock_devices_are_named() {
        let e = PhcClock::open(Path::new("/dev/ptp-weft-missing"), Duration::ZERO).unwrap_err();
        assert!(
            e.contains("/dev/ptp-weft-missing") && e.contains("ls /dev/ptp*"),
            "{e}"
        );
        let e = PhcClock::open(Path::new("/dev/null"), Duration::ZERO).unwrap_err();
        assert!(e.contains("not a PTP hardware clock"), "{e}");
    }

    /// Needs a PTP hardware clock: `WEFT_PHC=/dev/ptp0 cargo test -p weft-transport --
    /// --ignored phc`.
    #[test]
    #[ignore = "needs a PTP hardware clock (a NIC with one): set WEFT_PHC=/dev/ptpN"]
    fn phc_reads_advance() {
        let dev = std::env::var("WEFT_PHC").expect("set WEFT_PHC");
        let c = PhcClock::open(Path::new(&dev), Duration::from_micros(1)).unwrap();
        let a = c.now_ns();
        std::thread::sleep(Duration::from_millis(10));
        let b = c.now_ns();
        assert!(b - a >= 9_000_000, "{a} -> {b}");
    }
}
