//! [`RcConnection`] on real verbs (libibverbs through `rdma-sys`): a device's protection
//! domain and completion channel ([`Device`]), and per peer a reliable-connected queue pair
//! with its completion queues, its registered ring and credit word, and a registered mirror
//! of the peer's ring that staged records are sent from ([`VerbsRc`]).
//!
//! Only the calls into libibverbs live here; what they carry — the ring and credit
//! protocol, selective signaling ([`SendQueue`]), the out-of-band exchange of queue pair
//! numbers, addresses and keys ([`Handshake`]) — is shared with the emulated verbs and runs
//! in CI. This file needs a NIC (or a software RDMA provider such as rxe) to execute; the
//! `#[ignore]`d tests in `tests/rdma_nic.rs` run it.
//!
//! Queue pairs follow the usual RC settings: path MTU the smaller of both ports', a GRH
//! with the configured GID index on RoCE, 7 transport retries, and infinite RNR retries, so
//! a receiver that has not re-posted receive requests yet slows the sender instead of
//! breaking the connection.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::net::SocketAddr;
use std::ptr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdma_sys::*;

use super::handshake::{Handshake, QpInfo};
use super::send_queue::{SendQueue, INLINE_MAX, SEND_DEPTH, SIGNAL_EVERY};
use super::transport::ArrivalWait;
use super::{RcConnection, RingError};
use crate::{NodeId, RdmaConfig};

/// `IBV_LINK_LAYER_ETHERNET` from `verbs.h` (a `#define` bindgen does not carry): RoCE.
const LINK_LAYER_ETHERNET: u8 = 2;
/// Receive requests kept posted per connection, unless the device allows fewer.
const RECV_DEPTH: u32 = 4096;
/// Work completions taken per `ibv_poll_cq` call.
const POLL_BATCH: usize = 32;

/// What a failed verbs call said: the call and the errno text.
fn os_error(call: &str) -> String {
    format!("{call} failed: {}", std::io::Error::last_os_error())
}

fn wc_error(wc: &ibv_wc) -> RingError {
    // SAFETY: ibv_wc_status_str returns a static NUL-terminated string for any status.
    let text = unsafe { CStr::from_ptr(ibv_wc_status_str(wc.status)) };
    RingError::Verbs(format!(
        "work request {} failed: {} (vendor error {:#x})",
        wc.wr_id,
        text.to_string_lossy(),
        wc.vendor_err
    ))
}

/// An opened RDMA device: context, protection domain, completion channel, and the port's
/// addressing. Every connection holds it, so it is closed after the last one.
pub struct Device {
    ctx: *mut ibv_context,
    pd: *mut ibv_pd,
    channel: *mut ibv_comp_channel,
    port: u8,
    gid_index: u8,
    lid: u16,
    gid: [u8; 16],
    mtu: u8,
    roce: bool,
    max_qp_wr: u32,
}

// SAFETY: libibverbs objects may be used from any thread; verbs calls are thread-safe.
unsafe impl Send for Device {}
// SAFETY: as above; Device's fields are only read after construction.
unsafe impl Sync for Device {}

impl Device {
    /// Opens `cfg.device`, checks that its port is active and reads its LID, GID and MTU.
    pub fn open(cfg: &RdmaConfig) -> Result<Arc<Device>, String> {
        let ctx = open_context(&cfg.device)?;
        // From here on, `dev`'s Drop releases whatever was created.
        let mut dev = Device {
            ctx,
            pd: ptr::null_mut(),
            channel: ptr::null_mut(),
            port: cfg.port,
            gid_index: cfg.gid_index,
            lid: 0,
            gid: [0; 16],
            mtu: 0,
            roce: false,
            max_qp_wr: 0,
        };
        // SAFETY: `ctx` is an open context; the attribute structs are plain C data that
        // the calls fill in.
        unsafe {
            let mut port: ibv_port_attr = std::mem::zeroed();
            if ___ibv_query_port(ctx, cfg.port, &mut port) != 0 {
                return Err(os_error(&format!("ibv_query_port(port {})", cfg.port)));
            }
            if port.state != ibv_port_state::IBV_PORT_ACTIVE {
                return Err(format!(
                    "port {} of {} is not active (state {}): is the link up?",
                    cfg.port, cfg.device, port.state
                ));
            }
            dev.lid = port.lid;
            dev.mtu = port.active_mtu as u8;
            dev.roce = port.link_layer == LINK_LAYER_ETHERNET;
            let mut gid: ibv_gid = std::mem::zeroed();
            if ibv_query_gid(ctx, cfg.port, i32::from(cfg.gid_index), &mut gid) != 0 {
                return Err(os_error(&format!("ibv_query_gid(index {})", cfg.gid_index)));
            }
            dev.gid = gid.raw;
            if dev.roce && dev.gid == [0; 16] {
                return Err(format!(
                    "GID index {} of {} port {} is empty; RoCE needs a configured GID \
                     (see `show_gids`) in transport.rdma.gid_index",
                    cfg.gid_index, cfg.device, cfg.port
                ));
            }
            let mut attr: ibv_device_attr = std::mem::zeroed();
            if ibv_query_device(ctx, &mut attr) != 0 {
                return Err(os_error("ibv_query_device"));
            }
            dev.max_qp_wr = attr.max_qp_wr.max(0) as u32;
            dev.pd = ibv_alloc_pd(ctx);
            if dev.pd.is_null() {
                return Err(os_error("ibv_alloc_pd"));
            }
            dev.channel = ibv_create_comp_channel(ctx);
            if dev.channel.is_null() {
                return Err(os_error("ibv_create_comp_channel"));
            }
            let fd = (*dev.channel).fd;
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(os_error("fcntl(completion channel, O_NONBLOCK)"));
            }
        }
        Ok(Arc::new(dev))
    }
}

/// Opens the device named `name`.
fn open_context(name: &str) -> Result<*mut ibv_context, String> {
    let mut n = 0;
    // SAFETY: the list is valid until ibv_free_device_list; names are NUL-terminated.
    unsafe {
        let list = ibv_get_device_list(&mut n);
        if list.is_null() {
            return Err(os_error("ibv_get_device_list"));
        }
        let found = (0..n.max(0) as usize)
            .map(|i| *list.add(i))
            .find(|&d| CStr::from_ptr(ibv_get_device_name(d)).to_bytes() == name.as_bytes());
        let ctx = found.map(|d| ibv_open_device(d));
        ibv_free_device_list(list);
        match ctx {
            None => Err(format!("RDMA device `{name}` not found")),
            Some(c) if c.is_null() => Err(os_error(&format!("ibv_open_device({name})"))),
            Some(c) => Ok(c),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: each handle was created by this Device and is released once, children
        // first; every connection using them holds an Arc and is gone by now.
        unsafe {
            if !self.channel.is_null() {
                ibv_destroy_comp_channel(self.channel);
            }
            if !self.pd.is_null() {
                ibv_dealloc_pd(self.pd);
            }
            ibv_close_device(self.ctx);
        }
    }
}

/// Page-aligned memory registered with the device. Its bytes are only touched through
/// raw pointers, since the NIC writes them behind the program's back.
struct Region {
    mr: *mut ibv_mr,
    mem: *mut u8,
    layout: std::alloc::Layout,
}

impl Region {
    fn new(dev: &Device, len: usize, access: ibv_access_flags) -> Result<Region, String> {
        let layout = std::alloc::Layout::from_size_align(len.max(8), 4096)
            .map_err(|e| format!("cannot lay out {len} bytes: {e}"))?;
        // SAFETY: the layout has a non-zero size.
        let mem = unsafe { std::alloc::alloc_zeroed(layout) };
        if mem.is_null() {
            return Err(format!("cannot allocate {len} bytes to register"));
        }
        // SAFETY: `mem` is `layout.size()` bytes owned by this Region until Drop, which
        // deregisters before freeing.
        let mr = unsafe { ibv_reg_mr(dev.pd, mem.cast(), layout.size(), access.0 as i32) };
        if mr.is_null() {
            // SAFETY: allocated above with this layout and not registered.
            unsafe { std::alloc::dealloc(mem, layout) };
            return Err(os_error(&format!("ibv_reg_mr({len} bytes)")));
        }
        Ok(Region { mr, mem, layout })
    }

    fn addr(&self) -> u64 {
        self.mem as u64
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    fn lkey(&self) -> u32 {
        // SAFETY: `mr` is valid while self is.
        unsafe { (*self.mr).lkey }
    }

    fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr).rkey }
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), RingError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(RingError::Corrupt(format!(
                "{len} bytes at {offset} are outside a region of {}",
                self.len()
            )));
        }
        Ok(())
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), RingError> {
        self.check(offset, buf.len())?;
        // SAFETY: in bounds (checked); the range holds a record whose write completed, so
        // the NIC no longer writes it until the sender gets credit for it.
        unsafe { ptr::copy_nonoverlapping(self.mem.add(offset), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, offset: usize, data: &[u8]) -> Result<(), RingError> {
        self.check(offset, data.len())?;
        // SAFETY: in bounds; the staging range of a record is not in flight (the credit
        // protocol frees it only after the peer read what was sent from it).
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.mem.add(offset), data.len()) };
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: registered and allocated in `new`, released once, deregistered first.
        unsafe {
            ibv_dereg_mr(self.mr);
            std::alloc::dealloc(self.mem, self.layout);
        }
    }
}

/// A queue pair and its completion queues, destroyed together (queue pair first).
struct QpHandles {
    qp: *mut ibv_qp,
    send_cq: *mut ibv_cq,
    recv_cq: *mut ibv_cq,
}

// SAFETY: verbs handles may be used from any thread.
unsafe impl Send for QpHandles {}
// SAFETY: as above; the posting paths that need exclusion take a lock.
unsafe impl Sync for QpHandles {}

impl Drop for QpHandles {
    fn drop(&mut self) {
        // SAFETY: created by PendingQp::new, destroyed once, the queue pair before the
        // completion queues it uses.
        unsafe {
            if !self.qp.is_null() {
                ibv_destroy_qp(self.qp);
            }
            for cq in [self.send_cq, self.recv_cq] {
                if !cq.is_null() {
                    ibv_destroy_cq(cq);
                }
            }
        }
    }
}

/// A queue pair after `INIT` with its receives posted, waiting for the peer's [`QpInfo`].
/// Fields drop in order: handles, memory, then the device they belong to.
struct PendingQp {
    handles: QpHandles,
    ring: Region,
    credit: Region,
    inline_max: usize,
    recv_depth: u32,
    psn: u32,
    dev: Arc<Device>,
}

// SAFETY: see QpHandles; the regions are owned memory reached only through raw pointers.
unsafe impl Send for PendingQp {}

const RW: ibv_access_flags = ibv_access_flags(
    ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0,
);

impl PendingQp {
    fn new(dev: &Arc<Device>, ring_bytes: usize) -> Result<PendingQp, String> {
        let recv_depth = RECV_DEPTH.min(dev.max_qp_wr.max(1));
        let mut p = PendingQp {
            handles: QpHandles {
                qp: ptr::null_mut(),
                send_cq: ptr::null_mut(),
                recv_cq: ptr::null_mut(),
            },
            ring: Region::new(dev, ring_bytes, RW)?,
            credit: Region::new(dev, 8, RW)?,
            inline_max: INLINE_MAX,
            recv_depth,
            psn: 0,
            dev: dev.clone(),
        };
        let h = &mut p.handles;
        // SAFETY: the device handles are valid; what is created is owned by `p.handles`,
        // whose Drop releases it if a later step fails.
        unsafe {
            h.send_cq = ibv_create_cq(
                dev.ctx,
                SEND_DEPTH as i32,
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            );
            if h.send_cq.is_null() {
                return Err(os_error("ibv_create_cq(send)"));
            }
            h.recv_cq = ibv_create_cq(dev.ctx, recv_depth as i32, ptr::null_mut(), dev.channel, 0);
            if h.recv_cq.is_null() {
                return Err(os_error("ibv_create_cq(receive)"));
            }
            // Ask for inline sends; a device that cannot inline gets staged sends only.
            for inline in [INLINE_MAX, 0] {
                let mut init: ibv_qp_init_attr = std::mem::zeroed();
                init.send_cq = h.send_cq;
                init.recv_cq = h.recv_cq;
                init.qp_type = ibv_qp_type::IBV_QPT_RC;
                init.cap = ibv_qp_cap {
                    max_send_wr: SEND_DEPTH as u32,
                    max_recv_wr: recv_depth,
                    max_send_sge: 1,
                    max_recv_sge: 1,
                    max_inline_data: inline as u32,
                };
                h.qp = ibv_create_qp(dev.pd, &mut init);
                if !h.qp.is_null() {
                    p.inline_max = init.cap.max_inline_data as usize;
                    break;
                }
            }
            if h.qp.is_null() {
                return Err(os_error("ibv_create_qp(RC)"));
            }
            // A fresh starting PSN per incarnation, so packets of an earlier connection
            // that used the same queue pair number are not taken as this one's.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            p.psn = (nanos ^ (*h.qp).qp_num.rotate_left(12)) & 0xff_ffff;
            let mut attr: ibv_qp_attr = std::mem::zeroed();
            attr.qp_state = ibv_qp_state::IBV_QPS_INIT;
            attr.port_num = dev.port;
            attr.qp_access_flags = RW.0;
            let mask = ibv_qp_attr_mask::IBV_QP_STATE
                | ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
                | ibv_qp_attr_mask::IBV_QP_PORT
                | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS;
            if ibv_modify_qp(h.qp, &mut attr, mask.0 as i32) != 0 {
                return Err(os_error("ibv_modify_qp(INIT)"));
            }
            for id in 0..u64::from(recv_depth) {
                post_recv(h.qp, id).map_err(|e| e.to_string())?;
            }
        }
        Ok(p)
    }

    fn info(&self) -> QpInfo {
        QpInfo {
            // SAFETY: `qp` is valid.
            qp_num: unsafe { (*self.handles.qp).qp_num },
            psn: self.psn,
            lid: self.dev.lid,
            gid: self.dev.gid,
            ring_addr: self.ring.addr(),
            ring_rkey: self.ring.rkey(),
            ring_len: self.ring.len() as u64,
            credit_addr: self.credit.addr(),
            credit_rkey: self.credit.rkey(),
            mtu: self.dev.mtu,
            recv_depth: self.recv_depth,
        }
    }

    /// Moves the queue pair to ready-to-receive, then ready-to-send, toward `remote`.
    fn connect(self, remote: QpInfo) -> Result<VerbsRc, String> {
        let dev = &self.dev;
        let qp = self.handles.qp;
        // SAFETY: `qp` is valid and in INIT; the attribute structs are plain C data.
        unsafe {
            let mut attr: ibv_qp_attr = std::mem::zeroed();
            attr.qp_state = ibv_qp_state::IBV_QPS_RTR;
            attr.path_mtu = u32::from(dev.mtu.min(remote.mtu).max(1));
            attr.dest_qp_num = remote.qp_num;
            attr.rq_psn = remote.psn;
            attr.max_dest_rd_atomic = 1;
            attr.min_rnr_timer = 12;
            attr.ah_attr.dlid = remote.lid;
            attr.ah_attr.port_num = dev.port;
            if dev.roce || remote.lid == 0 {
                attr.ah_attr.is_global = 1;
                attr.ah_attr.grh.dgid.raw = remote.gid;
                attr.ah_attr.grh.sgid_index = dev.gid_index;
                // Enough for routed RoCEv2 (a hop limit of 1 dies at the first router).
                attr.ah_attr.grh.hop_limit = 64;
            }
            let mask = ibv_qp_attr_mask::IBV_QP_STATE
                | ibv_qp_attr_mask::IBV_QP_AV
                | ibv_qp_attr_mask::IBV_QP_PATH_MTU
                | ibv_qp_attr_mask::IBV_QP_DEST_QPN
                | ibv_qp_attr_mask::IBV_QP_RQ_PSN
                | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
                | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER;
            if ibv_modify_qp(qp, &mut attr, mask.0 as i32) != 0 {
                return Err(os_error("ibv_modify_qp(RTR)"));
            }
            let mut attr: ibv_qp_attr = std::mem::zeroed();
            attr.qp_state = ibv_qp_state::IBV_QPS_RTS;
            attr.timeout = 14;
            attr.retry_cnt = 7;
            attr.rnr_retry = 7;
            attr.sq_psn = self.psn;
            attr.max_rd_atomic = 1;
            let mask = ibv_qp_attr_mask::IBV_QP_STATE
                | ibv_qp_attr_mask::IBV_QP_TIMEOUT
                | ibv_qp_attr_mask::IBV_QP_RETRY_CNT
                | ibv_qp_attr_mask::IBV_QP_RNR_RETRY
                | ibv_qp_attr_mask::IBV_QP_SQ_PSN
                | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC;
            if ibv_modify_qp(qp, &mut attr, mask.0 as i32) != 0 {
                return Err(os_error("ibv_modify_qp(RTS)"));
            }
        }
        let local_only = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE;
        let staging = Region::new(dev, remote.ring_len as usize, local_only)?;
        let credit_out = Region::new(dev, 8, local_only)?;
        Ok(VerbsRc {
            posting: Mutex::new(Posting {
                staging,
                credit_out,
                queue: SendQueue::new(SEND_DEPTH, SIGNAL_EVERY),
            }),
            handles: self.handles,
            ring: self.ring,
            credit: self.credit,
            inline_max: self.inline_max,
            recv_depth: self.recv_depth,
            remote,
            _device: self.dev,
        })
    }
}

/// Posts one zero-length receive: a write-with-immediate consumes it to report its
/// immediate.
///
/// # Safety
/// `qp` must be a valid queue pair in INIT or a later state.
unsafe fn post_recv(qp: *mut ibv_qp, wr_id: u64) -> Result<(), RingError> {
    // SAFETY: `wr` lives across the call; no scatter list is needed for a zero-length
    // receive.
    unsafe {
        let mut wr: ibv_recv_wr = std::mem::zeroed();
        wr.wr_id = wr_id;
        let mut bad = ptr::null_mut();
        match ibv_post_recv(qp, &mut wr, &mut bad) {
            0 => Ok(()),
            e => Err(RingError::Verbs(format!(
                "ibv_post_recv failed: {}",
                std::io::Error::from_raw_os_error(e)
            ))),
        }
    }
}

/// What posting a send needs, under one lock: the sender and the credit writer share the
/// send queue.
struct Posting {
    staging: Region,
    credit_out: Region,
    queue: SendQueue,
}

/// One side of an RC connection on a real NIC. Fields drop in order: the queue pair and
/// its completion queues, then the registered memory, then the device.
pub struct VerbsRc {
    handles: QpHandles,
    posting: Mutex<Posting>,
    ring: Region,
    credit: Region,
    inline_max: usize,
    recv_depth: u32,
    remote: QpInfo,
    /// Held, not used: the device must outlive the queue pair and the memory.
    _device: Arc<Device>,
}

// SAFETY: verbs calls are thread-safe; the memory is reached through raw pointers, posts
// are serialized by `posting`, and the receive side is used by the one polling thread.
unsafe impl Send for VerbsRc {}
// SAFETY: as above.
unsafe impl Sync for VerbsRc {}

impl VerbsRc {
    /// Posts an RDMA WRITE (with `imm` if given) of `data` to `remote_addr`/`rkey`: inline
    /// when small, otherwise from the staging mirror at `offset` (or the credit source).
    fn post(
        &self,
        remote_addr: u64,
        rkey: u32,
        data: &[u8],
        imm: Option<u32>,
        staged_at: Option<usize>,
    ) -> Result<(), RingError> {
        let mut guard = self.posting.lock().unwrap_or_else(|p| p.into_inner());
        let posting = &mut *guard;
        let (wr_id, signaled) = posting
            .queue
            .reserve_reaping(data.len(), |q| self.reap(q))?;
        let inline = data.len() <= self.inline_max;
        let mut sge = if inline {
            ibv_sge {
                addr: data.as_ptr() as u64,
                length: data.len() as u32,
                lkey: 0,
            }
        } else {
            let (region, at) = match staged_at {
                Some(at) => (&posting.staging, at),
                None => (&posting.credit_out, 0),
            };
            region.write(at, data)?;
            ibv_sge {
                addr: region.addr() + at as u64,
                length: data.len() as u32,
                lkey: region.lkey(),
            }
        };
        let mut flags = 0;
        if signaled {
            flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        if inline {
            flags |= ibv_send_flags::IBV_SEND_INLINE.0;
        }
        // SAFETY: `wr` and `sge` live across the call; inline data is copied by the post,
        // staged data stays in registered memory until the peer's credit frees it.
        let rc = unsafe {
            let mut wr: ibv_send_wr = std::mem::zeroed();
            wr.wr_id = wr_id;
            wr.sg_list = &mut sge;
            wr.num_sge = i32::from(!data.is_empty());
            wr.send_flags = flags;
            match imm {
                Some(imm) => {
                    wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                    wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
                }
                None => wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            }
            wr.wr.rdma = rdma_t { remote_addr, rkey };
            let mut bad = ptr::null_mut();
            ibv_post_send(self.handles.qp, &mut wr, &mut bad)
        };
        if rc != 0 {
            return Err(RingError::Verbs(format!(
                "ibv_post_send failed: {}",
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        self.reap(&mut posting.queue)
    }

    /// Takes send completions into `queue`; the first failure is the error.
    fn reap(&self, queue: &mut SendQueue) -> Result<(), RingError> {
        poll_cq(self.handles.send_cq, |wc| {
            if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                return Err(wc_error(wc));
            }
            queue.completed(wc.wr_id);
            Ok(())
        })
    }
}

/// Calls `each` on every completion waiting in `cq`.
fn poll_cq(
    cq: *mut ibv_cq,
    mut each: impl FnMut(&ibv_wc) -> Result<(), RingError>,
) -> Result<(), RingError> {
    loop {
        // SAFETY: an array of plain C structs for ibv_poll_cq to fill; `cq` is valid.
        let mut wcs: [ibv_wc; POLL_BATCH] = unsafe { std::mem::zeroed() };
        let n = unsafe { ibv_poll_cq(cq, POLL_BATCH as i32, wcs.as_mut_ptr()) };
        if n < 0 {
            return Err(RingError::Verbs("ibv_poll_cq failed".into()));
        }
        for wc in &wcs[..n as usize] {
            each(wc)?;
        }
        if (n as usize) < POLL_BATCH {
            return Ok(());
        }
    }
}

impl RcConnection for VerbsRc {
    fn remote_capacity(&self) -> usize {
        self.remote.ring_len as usize
    }

    fn local_capacity(&self) -> usize {
        self.ring.len()
    }

    fn remote_records(&self) -> usize {
        self.remote.recv_depth as usize
    }

    fn local_records(&self) -> usize {
        self.recv_depth as usize
    }

    fn write_ring(&self, offset: usize, data: &[u8], imm: u32) -> Result<(), RingError> {
        let addr = self.remote.ring_addr + offset as u64;
        self.post(addr, self.remote.ring_rkey, data, Some(imm), Some(offset))
    }

    fn write_credit(&self, head: u64) -> Result<(), RingError> {
        let (addr, rkey) = (self.remote.credit_addr, self.remote.credit_rkey);
        self.post(addr, rkey, &head.to_le_bytes(), None, None)
    }

    fn poll_arrivals(&self, out: &mut Vec<u32>) -> Result<(), RingError> {
        poll_cq(self.handles.recv_cq, |wc| {
            if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                return Err(wc_error(wc));
            }
            if wc.opcode != ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM {
                return Err(RingError::Corrupt(format!(
                    "receive completion with opcode {}, expected a write with immediate",
                    wc.opcode
                )));
            }
            // SAFETY: a RECV_RDMA_WITH_IMM completion carries the immediate.
            out.push(u32::from_be(unsafe {
                wc.imm_data_invalidated_rkey_union.imm_data
            }));
            // SAFETY: the queue pair is valid and connected.
            unsafe { post_recv(self.handles.qp, wc.wr_id) }
        })
    }

    fn read_ring(&self, offset: usize, buf: &mut [u8]) -> Result<(), RingError> {
        self.ring.read(offset, buf)
    }

    fn read_credit(&self) -> u64 {
        // SAFETY: the credit region is 8 aligned bytes the peer's NIC overwrites whole.
        u64::from_le(unsafe { ptr::read_volatile(self.credit.mem as *const u64) })
    }

    fn arm(&self) -> Result<(), RingError> {
        // SAFETY: the receive completion queue is valid and bound to the device's channel.
        match unsafe { ibv_req_notify_cq(self.handles.recv_cq, 0) } {
            0 => Ok(()),
            e => Err(RingError::Verbs(format!(
                "ibv_req_notify_cq failed: {}",
                std::io::Error::from_raw_os_error(e)
            ))),
        }
    }
}

/// Waits on the device's completion channel: the poller sleeps in the kernel until an
/// armed receive completion queue gets a completion (event-driven mode).
pub struct ChannelWait(Arc<Device>);

impl ArrivalWait for ChannelWait {
    fn wait(&mut self, max: Duration) {
        let channel = self.0.channel;
        // SAFETY: the channel is valid while the device is; its fd is non-blocking, so
        // the loop below takes every pending event and stops.
        unsafe {
            let mut pfd = libc::pollfd {
                fd: (*channel).fd,
                events: libc::POLLIN,
                revents: 0,
            };
            libc::poll(&mut pfd, 1, max.as_millis().min(i32::MAX as u128) as i32);
            let (mut cq, mut ctx) = (ptr::null_mut(), ptr::null_mut());
            while ibv_get_cq_event(channel, &mut cq, &mut ctx) == 0 {
                ibv_ack_cq_events(cq, 1);
            }
        }
    }
}

/// Opens `cfg.device` and connects `local` with every peer: queue pairs created, infos
/// exchanged over TCP between the members' `addrs`, queue pairs moved to ready-to-send,
/// and a barrier so nobody writes before its peer can receive.
pub fn connect_all(
    cluster: u64,
    local: NodeId,
    addrs: &BTreeMap<NodeId, SocketAddr>,
    cfg: &RdmaConfig,
) -> Result<(BTreeMap<NodeId, Arc<VerbsRc>>, ChannelWait), String> {
    let dev = Device::open(cfg)?;
    let mut pending = addrs
        .keys()
        .filter(|&&p| p != local)
        .map(|&p| Ok((p, PendingQp::new(&dev, cfg.ring_bytes)?)))
        .collect::<Result<BTreeMap<_, _>, String>>()?;
    let timeout = Duration::from_millis(cfg.handshake_timeout_ms);
    let mut hs = Handshake::connect(cluster, local, addrs, timeout).map_err(|e| e.to_string())?;
    let mine = pending.iter().map(|(&p, q)| (p, q.info())).collect();
    let theirs = hs.exchange(&mine).map_err(|e| e.to_string())?;
    let mut conns = BTreeMap::new();
    for (peer, remote) in theirs {
        let q = pending.remove(&peer).expect("an info per pending peer");
        let c = q
            .connect(remote)
            .map_err(|e| format!("connecting to node {peer}: {e}"))?;
        conns.insert(peer, Arc::new(c));
    }
    hs.barrier().map_err(|e| e.to_string())?;
    Ok((conns, ChannelWait(dev)))
}
