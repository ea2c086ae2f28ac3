//! The C ABI of `ffi/include/dv_api.h`, implemented by the emulator.
//!
//! Every function checks its pointers, never unwinds across the boundary (a panic becomes
//! `DV_EIO`), and maps [`DvError`] to the header's codes. The struct layouts mirror the
//! header's; `dv-ffi`'s bindgen layout tests and a C program compiled against the header
//! check that they agree.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use super::{DvError, Endpoint};

/// `dv_endpoint`: the opaque handle C code holds.
pub struct dv_endpoint(Endpoint);

/// `dv_fabric_info` of the header.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct dv_fabric_info {
    /// `DV_API_VERSION` of the implementation.
    pub api_version: u32,
    /// `DV_CAP_*` bits.
    pub caps: u32,
    /// Largest message, in bytes.
    pub max_message: u32,
}

/// `dv_message_info` of the header.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct dv_message_info {
    /// Sender, stamped by the switch.
    pub source: u32,
    /// Epoch of the delivery.
    pub epoch: u64,
    /// Message length in bytes.
    pub length: usize,
}

/// `dv_ack` of the header.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct dv_ack {
    /// The message's ticket.
    pub ticket: u64,
    /// Epoch of the delivery.
    pub epoch: u64,
    /// Recipients that took it.
    pub delivered: u32,
    /// Recipients not attached.
    pub refused: u32,
}

const OK: c_int = 0;

/// Runs `f`, turning errors into codes and panics into `DV_EIO`.
fn guard(f: impl FnOnce() -> Result<(), DvError>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => OK,
        Ok(Err(e)) => e.code(),
        Err(_) => DvError::Io.code(),
    }
}

fn timeout(us: i64) -> Option<Duration> {
    (us >= 0).then(|| Duration::from_micros(us as u64))
}

/// # Safety
/// `ep` must be null or a live handle from `dv_open`.
unsafe fn endpoint<'a>(ep: *const dv_endpoint) -> Result<&'a Endpoint, DvError> {
    // SAFETY: the caller passes null or a pointer dv_open returned and dv_close has not freed.
    unsafe { ep.as_ref() }.map(|e| &e.0).ok_or(DvError::Invalid)
}

/// # Safety
/// `buf` must be null with `len` 0, or valid for `len` bytes.
unsafe fn bytes<'a>(buf: *const c_void, len: usize) -> Result<&'a [u8], DvError> {
    if len == 0 {
        return Ok(&[]);
    }
    if buf.is_null() {
        return Err(DvError::Invalid);
    }
    // SAFETY: non-null and, by the contract, valid for `len` bytes.
    Ok(unsafe { std::slice::from_raw_parts(buf.cast(), len) })
}

/// Writes `v` through `p` unless `p` is null.
///
/// # Safety
/// `p` must be null or valid for a write of `T`.
unsafe fn store<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: non-null and, by the contract, valid for writes.
        unsafe { p.write(v) }
    }
}

/// The body of `dv_send` and `dv_multicast`: checks the handle and buffer, injects with
/// `f`, stores the ticket.
///
/// # Safety
/// `ep` a live handle; `buf` valid for `len` bytes; `ticket` null or valid for a write.
unsafe fn inject(
    ep: *mut dv_endpoint,
    buf: *const c_void,
    len: usize,
    ticket: *mut u64,
    f: impl FnOnce(&Endpoint, &[u8]) -> Result<u64, DvError>,
) -> c_int {
    guard(|| {
        // SAFETY: by the contract.
        let (ep, data) = unsafe { (endpoint(ep)?, bytes(buf, len)?) };
        let t = f(ep, data)?;
        // SAFETY: by the contract.
        unsafe { store(ticket, t) };
        Ok(())
    })
}

/// `dv_open` of the header.
///
/// # Safety
/// `fabric` must be a NUL-terminated string; `out` valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn dv_open(
    fabric: *const c_char,
    node: u32,
    out: *mut *mut dv_endpoint,
) -> c_int {
    guard(|| {
        if fabric.is_null() || out.is_null() {
            return Err(DvError::Invalid);
        }
        // SAFETY: non-null and NUL-terminated by the contract.
        let name = unsafe { CStr::from_ptr(fabric) }
            .to_str()
            .map_err(|_| DvError::Invalid)?;
        let ep = Endpoint::open(name, node)?;
        // SAFETY: `out` is non-null and valid for writes by the contract.
        unsafe { out.write(Box::into_raw(Box::new(dv_endpoint(ep)))) };
        Ok(())
    })
}

/// `dv_close` of the header.
///
/// # Safety
/// `ep` must be null or a live handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn dv_close(ep: *mut dv_endpoint) -> c_int {
    guard(|| {
        if !ep.is_null() {
            // SAFETY: a live handle from dv_open, freed exactly once here.
            drop(unsafe { Box::from_raw(ep) });
        }
        Ok(())
    })
}

/// `dv_query` of the header.
///
/// # Safety
/// `ep` a live handle; `info` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn dv_query(ep: *const dv_endpoint, info: *mut dv_fabric_info) -> c_int {
    guard(|| {
        // SAFETY: by the contract.
        let ep = unsafe { endpoint(ep) }?;
        if info.is_null() {
            return Err(DvError::Invalid);
        }
        let i = ep.info();
        // SAFETY: non-null, valid for writes by the contract.
        unsafe {
            store(
                info,
                dv_fabric_info {
                    api_version: i.api_version,
                    caps: i.caps,
                    max_message: i.max_message,
                },
            )
        };
        Ok(())
    })
}

/// `dv_send` of the header.
///
/// # Safety
/// `ep` a live handle; `buf` valid for `len` bytes; `ticket` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn dv_send(
    ep: *mut dv_endpoint,
    dst: u32,
    buf: *const c_void,
    len: usize,
    ticket: *mut u64,
) -> c_int {
    // SAFETY: the caller's contract is `inject`'s.
    unsafe { inject(ep, buf, len, ticket, |ep, data| ep.send(dst, data)) }
}

/// `dv_multicast` of the header.
///
/// # Safety
/// `ep` a live handle; `group` null or valid for `group_len` ids; `buf` valid for `len`
/// bytes; `ticket` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn dv_multicast(
    ep: *mut dv_endpoint,
    group: *const u32,
    group_len: usize,
    buf: *const c_void,
    len: usize,
    ticket: *mut u64,
) -> c_int {
    let group = if group.is_null() {
        None
    } else {
        // SAFETY: non-null and valid for `group_len` ids by the contract.
        Some(unsafe { std::slice::from_raw_parts(group, group_len) })
    };
    // SAFETY: the caller's contract is `inject`'s.
    unsafe { inject(ep, buf, len, ticket, |ep, data| ep.multicast(group, data)) }
}

/// `dv_barrier` of the header.
///
/// # Safety
/// `ep` a live handle; `epoch` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn dv_barrier(
    ep: *mut dv_endpoint,
    timeout_us: i64,
    epoch: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: by the contract.
        let ep = unsafe { endpoint(ep) }?;
        let c = ep.barrier(timeout(timeout_us))?;
        // SAFETY: by the contract.
        unsafe { store(epoch, c.epoch) };
        Ok(())
    })
}

/// `dv_recv` of the header.
///
/// # Safety
/// `ep` a live handle; `info` valid for a write; `buf` valid for `cap` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn dv_recv(
    ep: *mut dv_endpoint,
    info: *mut dv_message_info,
    buf: *mut c_void,
    cap: usize,
    timeout_us: i64,
) -> c_int {
    guard(|| {
        // SAFETY: by the contract.
        let ep = unsafe { endpoint(ep) }?;
        if info.is_null() || (buf.is_null() && cap > 0) {
            return Err(DvError::Invalid);
        }
        match ep.recv_at_most(cap, timeout(timeout_us)) {
            Ok(m) => {
                if !m.bytes.is_empty() {
                    // SAFETY: `buf` is valid for `cap` >= len bytes by the contract.
                    unsafe {
                        std::ptr::copy_nonoverlapping(m.bytes.as_ptr(), buf.cast(), m.bytes.len())
                    };
                }
                let i = dv_message_info {
                    source: m.source,
                    epoch: m.epoch,
                    length: m.bytes.len(),
                };
                // SAFETY: non-null, valid for writes by the contract.
                unsafe { store(info, i) };
                Ok(())
            }
            Err((e, len)) => {
                if e == DvError::Truncated {
                    let i = dv_message_info {
                        length: len,
                        ..Default::default()
                    };
                    // SAFETY: as above.
                    unsafe { store(info, i) };
                }
                Err(e)
            }
        }
    })
}

/// `dv_poll_ack` of the header.
///
/// # Safety
/// `ep` a live handle; `ack` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn dv_poll_ack(
    ep: *mut dv_endpoint,
    ack: *mut dv_ack,
    timeout_us: i64,
) -> c_int {
    guard(|| {
        // SAFETY: by the contract.
        let ep = unsafe { endpoint(ep) }?;
        if ack.is_null() {
            return Err(DvError::Invalid);
        }
        let a = ep.poll_ack(timeout(timeout_us))?;
        let a = dv_ack {
            ticket: a.ticket,
            epoch: a.epoch,
            delivered: a.delivered,
            refused: a.refused,
        };
        // SAFETY: non-null, valid for writes by the contract.
        unsafe { store(ack, a) };
        Ok(())
    })
}

/// `dv_members` of the header.
///
/// # Safety
/// `ep` a live handle; `nodes` valid for `cap` ids of writes; `count` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn dv_members(
    ep: *const dv_endpoint,
    nodes: *mut u32,
    cap: usize,
    count: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: by the contract.
        let ep = unsafe { endpoint(ep) }?;
        if count.is_null() || (nodes.is_null() && cap > 0) {
            return Err(DvError::Invalid);
        }
        let members = ep.members();
        // SAFETY: non-null, valid for writes by the contract.
        unsafe { store(count, members.len()) };
        if members.len() > cap {
            return Err(DvError::Truncated);
        }
        if !members.is_empty() {
            // SAFETY: `nodes` is valid for `cap` >= len ids by the contract.
            unsafe { std::ptr::copy_nonoverlapping(members.as_ptr(), nodes, members.len()) };
        }
        Ok(())
    })
}

/// `dv_strerror` of the header.
#[no_mangle]
pub extern "C" fn dv_strerror(status: c_int) -> *const c_char {
    let s: &'static CStr = match DvError::from_code(status) {
        None if status == OK => c"success",
        None => c"unknown status code",
        Some(DvError::Invalid) => c"invalid argument",
        Some(DvError::NoFabric) => c"no fabric by that name is reachable",
        Some(DvError::InUse) => c"node id already attached to the fabric",
        Some(DvError::TooLarge) => c"message larger than the fabric's maximum",
        Some(DvError::Empty) => c"nothing to receive",
        Some(DvError::TimedOut) => c"timed out",
        Some(DvError::Closed) => c"endpoint closed, crashed or cut off from the fabric",
        Some(DvError::Truncated) => c"receive buffer too small; message left queued",
        Some(DvError::Io) => c"fabric I/O error",
        Some(DvError::Version) => c"fabric implements another API version",
        Some(DvError::Denied) => c"the fabric refuses this node id (not a member, or no access)",
    };
    s.as_ptr()
}
