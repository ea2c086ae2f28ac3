//! `dv-ffi`: the Data Vortex C API that weft targets, and a safe wrapper over it.
//!
//! `include/dv_api.h` states what weft needs from a Data Vortex interconnect (its vendor
//! API is not public); `build.rs` runs bindgen on it. By default the symbols come from the
//! `hw-sim` emulator; set `DV_LIB` (and `DV_LIB_DIR`) at build time to link a vendor
//! library instead. Either way every call goes through the C ABI, and all `unsafe` code of
//! the crate is in this module's wrapper: [`Endpoint`] owns the handle (closed on drop) and
//! turns status codes into [`Error`]s.
//!
//! ```no_run
//! # fn main() -> Result<(), dv_ffi::Error> {
//! let a = dv_ffi::Endpoint::open("local:doc", 1)?;
//! let b = dv_ffi::Endpoint::open("local:doc", 2)?;
//! a.send(2, b"hi")?;
//! std::thread::scope(|s| {
//!     s.spawn(|| b.barrier(None));
//!     a.barrier(None)
//! })?;
//! assert_eq!(b.recv(Some(std::time::Duration::ZERO))?.unwrap().bytes, b"hi");
//! # Ok(()) }
//! ```

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::Duration;

#[cfg(not(dv_vendor))]
use hw_sim as _;

#[allow(non_camel_case_types, non_upper_case_globals, dead_code, missing_docs)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/dv_api.rs"));
}

/// `DV_API_VERSION` of the header these bindings were generated from.
pub const API_VERSION: u32 = sys::DV_API_VERSION;

/// A failed call: which one, the `DV_E*` code and the library's description of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {message} (DV status {code})")]
pub struct Error {
    /// The C function that failed.
    pub op: &'static str,
    /// Its `DV_E*` status code.
    pub code: i32,
    /// `dv_strerror(code)`.
    pub message: String,
}

impl Error {
    fn new(op: &'static str, code: i32) -> Error {
        Error {
            op,
            code,
            message: strerror(code),
        }
    }

    /// The endpoint was closed, crashed, or lost its fabric (`DV_ECLOSED`).
    pub fn is_closed(&self) -> bool {
        self.code == sys::DV_ECLOSED
    }

    /// The node id is already attached (`DV_EINUSE`).
    pub fn is_in_use(&self) -> bool {
        self.code == sys::DV_EINUSE
    }

    /// The fabric refuses the node id: not one of its members, or no access (`DV_EACCES`).
    pub fn is_denied(&self) -> bool {
        self.code == sys::DV_EACCES
    }

    /// The message exceeds the fabric's limit (`DV_EMSGSIZE`).
    pub fn is_too_large(&self) -> bool {
        self.code == sys::DV_EMSGSIZE
    }
}

/// `dv_strerror` as an owned string.
pub fn strerror(code: i32) -> String {
    // SAFETY: dv_strerror returns a static NUL-terminated string for any code.
    unsafe { CStr::from_ptr(sys::dv_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

fn check(op: &'static str, rc: i32) -> Result<(), Error> {
    if rc == sys::DV_OK as i32 {
        Ok(())
    } else {
        Err(Error::new(op, rc))
    }
}

/// Wait-or-not results: `Ok(None)` when nothing came in time.
fn maybe<T>(op: &'static str, rc: i32, v: T) -> Result<Option<T>, Error> {
    match rc {
        sys::DV_EAGAIN | sys::DV_ETIMEDOUT => Ok(None),
        rc => check(op, rc).map(|()| Some(v)),
    }
}

fn micros(timeout: Option<Duration>) -> i64 {
    timeout.map_or(-1, |t| i64::try_from(t.as_micros()).unwrap_or(i64::MAX))
}

/// Guarantees a fabric reports (`DV_CAP_*` bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps(pub u32);

impl Caps {
    /// No loss while both ends are attached.
    pub const RELIABLE: Caps = Caps(sys::DV_CAP_RELIABLE);
    /// Per-sender order, no duplicates.
    pub const FIFO: Caps = Caps(sys::DV_CAP_FIFO);
    /// One global order per epoch at every receiver.
    pub const TOTAL_ORDER: Caps = Caps(sys::DV_CAP_TOTAL_ORDER);
    /// Epochs closed by a global barrier with synchronized delivery.
    pub const BARRIER: Caps = Caps(sys::DV_CAP_BARRIER);
    /// Source ids stamped by the fabric.
    pub const SOURCE_STAMP: Caps = Caps(sys::DV_CAP_SOURCE_STAMP);
    /// Positive acknowledgement of every message.
    pub const ACK: Caps = Caps(sys::DV_CAP_ACK);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Caps) -> bool {
        self.0 & other.0 == other.0
    }
}

/// What `dv_query` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FabricInfo {
    /// API version of the implementation.
    pub api_version: u32,
    /// Guarantees.
    pub caps: Caps,
    /// Largest message, in bytes.
    pub max_message: usize,
}

/// A delivered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sender, as stamped by the fabric.
    pub source: u32,
    /// The epoch it was delivered at the close of.
    pub epoch: u64,
    /// The message.
    pub bytes: Vec<u8>,
}

/// The acknowledgement of one injected message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Ticket returned by `send`/`multicast`.
    pub ticket: u64,
    /// Epoch of the delivery.
    pub epoch: u64,
    /// Recipients that took it.
    pub delivered: u32,
    /// Recipients not attached at the close.
    pub refused: u32,
}

/// An attached endpoint; dropping it calls `dv_close`.
pub struct Endpoint {
    ep: NonNull<sys::dv_endpoint>,
    info: FabricInfo,
    scratch: Mutex<Vec<u8>>,
}

// SAFETY: dv_api.h requires every call to be safe from any thread, on a shared endpoint.
unsafe impl Send for Endpoint {}
// SAFETY: as above.
unsafe impl Sync for Endpoint {}

impl Endpoint {
    /// Attaches to `fabric` as `node` (`dv_open`) and reads its guarantees (`dv_query`).
    pub fn open(fabric: &str, node: u32) -> Result<Endpoint, Error> {
        let name = CString::new(fabric).map_err(|_| Error::new("dv_open", sys::DV_EINVAL))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; `raw` is a valid out-pointer.
        check("dv_open", unsafe {
            sys::dv_open(name.as_ptr(), node, &mut raw)
        })?;
        let ep = NonNull::new(raw).ok_or_else(|| Error::new("dv_open", sys::DV_EIO))?;
        let mut i = sys::dv_fabric_info {
            api_version: 0,
            caps: 0,
            max_message: 0,
        };
        // SAFETY: `ep` is live; `i` is a valid out-pointer.
        let rc = unsafe { sys::dv_query(ep.as_ptr(), &mut i) };
        let endpoint = Endpoint {
            ep,
            info: FabricInfo {
                api_version: i.api_version,
                caps: Caps(i.caps),
                max_message: i.max_message as usize,
            },
            scratch: Mutex::new(vec![0; (i.max_message as usize).min(64 * 1024)]),
        };
        check("dv_query", rc)?;
        if i.api_version != API_VERSION {
            return Err(Error::new("dv_query", sys::DV_EVERSION));
        }
        Ok(endpoint)
    }

    /// The fabric's guarantees and limits.
    pub fn info(&self) -> FabricInfo {
        self.info
    }

    /// Injects `bytes` to `dst` (`dv_send`); returns the ticket of its acknowledgement.
    pub fn send(&self, dst: u32, bytes: &[u8]) -> Result<u64, Error> {
        let mut ticket = 0;
        // SAFETY: `ep` is live; `bytes` is valid for its length; `ticket` is writable.
        let rc = unsafe {
            sys::dv_send(
                self.ep.as_ptr(),
                dst,
                bytes.as_ptr().cast(),
                bytes.len(),
                &mut ticket,
            )
        };
        check("dv_send", rc).map(|()| ticket)
    }

    /// Injects one message to `group`, or to every other endpoint (`dv_multicast`).
    pub fn multicast(&self, group: Option<&[u32]>, bytes: &[u8]) -> Result<u64, Error> {
        let (g, n) = group.map_or((std::ptr::null(), 0), |g| (g.as_ptr(), g.len()));
        let mut ticket = 0;
        // SAFETY: `ep` is live; `g` is null or valid for `n` ids; `bytes` valid.
        let rc = unsafe {
            sys::dv_multicast(
                self.ep.as_ptr(),
                g,
                n,
                bytes.as_ptr().cast(),
                bytes.len(),
                &mut ticket,
            )
        };
        check("dv_multicast", rc).map(|()| ticket)
    }

    /// Enters the barrier and waits for the epoch to close (`dv_barrier`); `Ok(None)` when
    /// `timeout` ran out first (the endpoint stays in the barrier).
    pub fn barrier(&self, timeout: Option<Duration>) -> Result<Option<u64>, Error> {
        let mut epoch = 0;
        // SAFETY: `ep` is live; `epoch` is writable.
        let rc = unsafe { sys::dv_barrier(self.ep.as_ptr(), micros(timeout), &mut epoch) };
        maybe("dv_barrier", rc, ()).map(|o| o.map(|()| epoch))
    }

    /// The next delivered message (`dv_recv`); `Ok(None)` if none came within `timeout`
    /// (zero: poll, `None`: block).
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Option<Message>, Error> {
        let mut buf = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let mut info = sys::dv_message_info {
            source: 0,
            epoch: 0,
            length: 0,
        };
        let mut wait = micros(timeout);
        loop {
            // SAFETY: `ep` is live; `info` writable; `buf` valid for its length.
            let rc = unsafe {
                sys::dv_recv(
                    self.ep.as_ptr(),
                    &mut info,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    wait,
                )
            };
            if rc == sys::DV_ETRUNC {
                // The message waits at the head of the queue: grow and take it now.
                buf.resize(info.length, 0);
                wait = 0;
                continue;
            }
            return maybe("dv_recv", rc, ()).map(|o| {
                o.map(|()| Message {
                    source: info.source,
                    epoch: info.epoch,
                    bytes: buf[..info.length].to_vec(),
                })
            });
        }
    }

    /// The next acknowledgement (`dv_poll_ack`); `Ok(None)` if none came within `timeout`.
    pub fn poll_ack(&self, timeout: Option<Duration>) -> Result<Option<Ack>, Error> {
        let mut a = sys::dv_ack {
            ticket: 0,
            epoch: 0,
            delivered: 0,
            refused: 0,
        };
        // SAFETY: `ep` is live; `a` writable.
        let rc = unsafe { sys::dv_poll_ack(self.ep.as_ptr(), &mut a, micros(timeout)) };
        maybe("dv_poll_ack", rc, ()).map(|o| {
            o.map(|()| Ack {
                ticket: a.ticket,
                epoch: a.epoch,
                delivered: a.delivered,
                refused: a.refused,
            })
        })
    }

    /// Members attached at the last epoch close, ascending (`dv_members`).
    pub fn members(&self) -> Result<Vec<u32>, Error> {
        let mut nodes = vec![0u32; 16];
        loop {
            let mut count = 0;
            // SAFETY: `ep` is live; `nodes` valid for its length; `count` writable.
            let rc = unsafe {
                sys::dv_members(
                    self.ep.as_ptr(),
                    nodes.as_mut_ptr(),
                    nodes.len(),
                    &mut count,
                )
            };
            if rc == sys::DV_ETRUNC {
                nodes.resize(count, 0);
                continue;
            }
            check("dv_members", rc)?;
            nodes.truncate(count);
            return Ok(nodes);
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // SAFETY: `ep` is live and never used again.
        unsafe { sys::dv_close(self.ep.as_ptr()) };
    }
}

#[cfg(all(test, not(dv_vendor)))]
mod tests {
    use super::*;
    use hw_sim::vortex::capi;
    use std::mem::{align_of, offset_of, size_of};

    /// The emulator's `#[repr(C)]` structs have the layout bindgen read from the header.
    #[test]
    fn emulator_structs_match_the_header() {
        assert_eq!(size_of::<sys::dv_ack>(), size_of::<capi::dv_ack>());
        assert_eq!(align_of::<sys::dv_ack>(), align_of::<capi::dv_ack>());
        assert_eq!(
            offset_of!(sys::dv_ack, refused),
            offset_of!(capi::dv_ack, refused)
        );
        assert_eq!(
            size_of::<sys::dv_message_info>(),
            size_of::<capi::dv_message_info>()
        );
        assert_eq!(
            offset_of!(sys::dv_message_info, length),
            offset_of!(capi::dv_message_info, length)
        );
        assert_eq!(
            size_of::<sys::dv_fabric_info>(),
            size_of::<capi::dv_fabric_info>()
        );
        assert_eq!(
            offset_of!(sys::dv_fabric_info, max_message),
            offset_of!(capi::dv_fabric_info, max_message)
        );
    }

    #[test]
    fn errors_carry_the_library_message() {
        let e = Endpoint::open("nonsense", 1).err().unwrap();
        assert_eq!(e.code, sys::DV_EINVAL);
        assert!(e.to_string().contains("dv_open: invalid argument"), "{e}");
        assert_eq!(strerror(0), "success");
        assert!(Endpoint::open("local:a\0b", 1).is_err());
    }

    #[test]
    fn round_trip_through_the_c_abi() {
        let a = Endpoint::open("local:ffi-rt", 1).unwrap();
        let b = Endpoint::open("local:ffi-rt", 2).unwrap();
        assert!(Endpoint::open("local:ffi-rt", 2).err().unwrap().is_in_use());
        assert!(a.info().caps.contains(Caps(
            Caps::TOTAL_ORDER.0 | Caps::BARRIER.0 | Caps::SOURCE_STAMP.0
        )));
        let big = vec![7u8; 200_000]; // larger than the scratch buffer: grows it
        let t1 = a.send(2, &big).unwrap();
        let t2 = a.multicast(None, b"all").unwrap();
        let wait = Some(Duration::from_secs(10));
        let (ea, eb) = std::thread::scope(|s| {
            let h = s.spawn(|| b.barrier(wait).unwrap());
            (a.barrier(wait).unwrap(), h.join().unwrap())
        });
        assert_eq!(ea, eb);
        let m1 = b.recv(Some(Duration::ZERO)).unwrap().unwrap();
        assert_eq!((m1.source, m1.bytes.len()), (1, big.len()));
        let m2 = b.recv(Some(Duration::ZERO)).unwrap().unwrap();
        assert_eq!(&m2.bytes, b"all");
        assert_eq!(b.recv(Some(Duration::ZERO)).unwrap(), None);
        let acks: Vec<u64> = std::iter::from_fn(|| a.poll_ack(Some(Duration::ZERO)).unwrap())
            .map(|k| k.ticket)
            .collect();
        assert_eq!(acks, vec![t1, t2]);
        assert_eq!(a.members().unwrap(), vec![1, 2]);
        assert!(a
            .send(2, &vec![0; a.info().max_message + 1])
            .unwrap_err()
            .is_too_large());
    }
}
