//! Emulated RDMA verbs: the objects a reliable-connected (RC) data path uses, with the
//! checks a NIC makes, so the RDMA backend's ring and credit protocol runs in CI without a
//! NIC.
//!
//! Modelled: protection domains; memory regions with local/remote keys, access flags and
//! bounds; RC queue pairs with the Reset → Init → RTR → RTS state machine and the Error
//! state a failed operation moves them to; completion queues; one-sided RDMA WRITE and
//! WRITE-with-immediate (which consumes a receive the peer posted and completes on its
//! receive queue); selective signaling. Operations take effect at once and in posting
//! order, which is what RC promises per queue pair. Not modelled: timing, retries, atomics,
//! READ, SEND, shared receive queues.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a memory region allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Access {
    /// The local HCA may write it (receives).
    pub local_write: bool,
    /// Peers may RDMA WRITE into it with its rkey.
    pub remote_write: bool,
}

/// Why a verb failed, as a work-completion status or an immediate error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerbsError {
    /// The rkey names no region of the peer's protection domain, or one without remote
    /// write access (`IBV_WC_REM_ACCESS_ERR`).
    #[error("remote access error: bad rkey or no remote write permission")]
    RemoteAccess,
    /// The write falls outside the remote region (`IBV_WC_REM_ACCESS_ERR` too on hardware).
    #[error("remote access error: write outside the region's bounds")]
    OutOfBounds,
    /// The local buffer lies outside its region (`IBV_WC_LOC_PROT_ERR`).
    #[error("local protection error: buffer outside the local region")]
    LocalProtection,
    /// The peer had no receive posted for a write-with-immediate (`IBV_WC_RNR_RETRY_EXC_ERR`).
    #[error("receiver not ready: no receive posted")]
    ReceiverNotReady,
    /// The queue pair is not in a state that allows the verb.
    #[error("queue pair in state {0:?}")]
    BadState(QpState),
}

/// The RC queue pair states that matter to a data path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    /// Just created.
    Reset,
    /// Initialized; receives may be posted.
    Init,
    /// Ready to receive: connected to a remote queue pair.
    ReadyToReceive,
    /// Ready to send.
    ReadyToSend,
    /// A failed operation stopped it; nothing more is processed.
    Error,
}

static NEXT_KEY: AtomicU32 = AtomicU32::new(0x1000);

/// A protection domain: regions and queue pairs of one domain may be used together.
#[derive(Clone, Default)]
pub struct ProtectionDomain {
    regions: Arc<Mutex<Vec<MemoryRegion>>>,
}

/// A registered memory region.
#[derive(Clone)]
pub struct MemoryRegion {
    mem: Arc<Mutex<Vec<u8>>>,
    /// Key for local use in work requests.
    pub lkey: u32,
    /// Key peers present to write into it.
    pub rkey: u32,
    access: Access,
}

impl MemoryRegion {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies `buf.len()` bytes at `offset` out of the region (the CPU reading its memory).
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), VerbsError> {
        let m = self.lock();
        let src = m
            .get(offset..offset + buf.len())
            .ok_or(VerbsError::LocalProtection)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    /// Copies `data` into the region at `offset` (the CPU writing its memory).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), VerbsError> {
        let mut m = self.lock();
        let dst = m
            .get_mut(offset..offset + data.len())
            .ok_or(VerbsError::LocalProtection)?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

impl ProtectionDomain {
    /// A new, empty domain.
    pub fn new() -> ProtectionDomain {
        ProtectionDomain::default()
    }

    /// Registers `len` zeroed bytes with `access`.
    pub fn register(&self, len: usize, access: Access) -> MemoryRegion {
        let key = NEXT_KEY.fetch_add(2, Ordering::Relaxed);
        let mr = MemoryRegion {
            mem: Arc::new(Mutex::new(vec![0; len])),
            lkey: key,
            rkey: key + 1,
            access,
        };
        self.regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(mr.clone());
        mr
    }

    fn by_rkey(&self, rkey: u32) -> Option<MemoryRegion> {
        self.regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|m| m.rkey == rkey)
            .cloned()
    }
}

/// A completed work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The request's id.
    pub wr_id: u64,
    /// `Ok`, or why it failed.
    pub status: Result<(), VerbsError>,
    /// For a receive consumed by a write-with-immediate: the immediate data.
    pub imm: Option<u32>,
    /// Bytes written (receive side of a write-with-immediate).
    pub byte_len: usize,
}

/// A completion queue.
#[derive(Clone, Default)]
pub struct CompletionQueue {
    q: Arc<Mutex<VecDeque<WorkCompletion>>>,
}

impl CompletionQueue {
    /// A new, empty queue.
    pub fn new() -> CompletionQueue {
        CompletionQueue::default()
    }

    /// Takes up to `max` completions (busy-polling: never blocks).
    pub fn poll(&self, max: usize) -> Vec<WorkCompletion> {
        let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
        let n = max.min(q.len());
        q.drain(..n).collect()
    }

    fn push(&self, wc: WorkCompletion) {
        self.q
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(wc);
    }
}

/// The local data of a write: bytes from a registered region.
#[derive(Clone, Copy, Debug)]
pub struct Local<'a> {
    /// The region (its lkey authorizes the read).
    pub mr: &'a MemoryRegion,
    /// Offset of the data in it.
    pub offset: usize,
    /// Length.
    pub len: usize,
}

/// A one-sided write to post.
#[derive(Clone, Copy, Debug)]
pub struct Write<'a> {
    /// Echoed in the completion.
    pub wr_id: u64,
    /// Bytes to write: from a region, or inline (copied at post time, no lkey needed).
    pub data: WriteData<'a>,
    /// Offset in the remote region.
    pub remote_offset: usize,
    /// Key of the remote region.
    pub rkey: u32,
    /// Write-with-immediate: also consume a posted receive at the peer and complete it
    /// with this value.
    pub imm: Option<u32>,
    /// Produce a completion on success (failures always complete).
    pub signaled: bool,
}

/// Where a write's bytes come from.
#[derive(Clone, Copy, Debug)]
pub enum WriteData<'a> {
    /// From a registered region.
    Registered(Local<'a>),
    /// Inline in the work request.
    Inline(&'a [u8]),
}

struct QpInner {
    state: QpState,
    remote: Option<QueuePair>,
    recvs: VecDeque<u64>,
}

/// A reliable-connected queue pair.
#[derive(Clone)]
pub struct QueuePair {
    pd: ProtectionDomain,
    send_cq: CompletionQueue,
    recv_cq: CompletionQueue,
    inner: Arc<Mutex<QpInner>>,
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MemoryRegion(lkey {:#x}, rkey {:#x})",
            self.lkey, self.rkey
        )
    }
}

impl QueuePair {
    /// A queue pair of `pd` completing on `send_cq` and `recv_cq`, in `Reset`.
    pub fn new(
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
    ) -> QueuePair {
        QueuePair {
            pd: pd.clone(),
            send_cq: send_cq.clone(),
            recv_cq: recv_cq.clone(),
            inner: Arc::new(Mutex::new(QpInner {
                state: QpState::Reset,
                remote: None,
                recvs: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QpInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state.
    pub fn state(&self) -> QpState {
        self.lock().state
    }

    /// Reset → Init.
    pub fn to_init(&self) -> Result<(), VerbsError> {
        self.transition(QpState::Reset, QpState::Init, None)
    }

    /// Init → RTR, connected to `remote` (what the QP number / LID / GID exchange sets up).
    pub fn to_rtr(&self, remote: &QueuePair) -> Result<(), VerbsError> {
        self.transition(QpState::Init, QpState::ReadyToReceive, Some(remote.clone()))
    }

    /// RTR → RTS.
    pub fn to_rts(&self) -> Result<(), VerbsError> {
        self.transition(QpState::ReadyToReceive, QpState::ReadyToSend, None)
    }

    fn transition(
        &self,
        from: QpState,
        to: QpState,
        remote: Option<QueuePair>,
    ) -> Result<(), VerbsError> {
        let mut q = self.lock();
        if q.state != from {
            return Err(VerbsError::BadState(q.state));
        }
        q.state = to;
        if remote.is_some() {
            q.remote = remote;
        }
        Ok(())
    }

    /// Posts a receive for a peer's write-with-immediate (Init or later).
    pub fn post_recv(&self, wr_id: u64) -> Result<(), VerbsError> {
        let mut q = self.lock();
        match q.state {
            QpState::Init | QpState::ReadyToReceive | QpState::ReadyToSend => {
                q.recvs.push_back(wr_id);
                Ok(())
            }
            s => Err(VerbsError::BadState(s)),
        }
    }

    /// Posts a one-sided write. Errors of the operation itself come back as a failed
    /// completion and move this queue pair to `Error`, as on hardware; posting to a queue
    /// pair that is not ready to send is refused at once.
    pub fn post_write(&self, w: Write<'_>) -> Result<(), VerbsError> {
        let remote = {
            let q = self.lock();
            if q.state != QpState::ReadyToSend {
                return Err(VerbsError::BadState(q.state));
            }
            q.remote.clone().ok_or(VerbsError::BadState(q.state))?
        };
        let result = self.execute(&remote, &w);
        if let Err(e) = result {
            self.lock().state = QpState::Error;
            self.send_cq.push(WorkCompletion {
                wr_id: w.wr_id,
                status: Err(e),
                imm: None,
                byte_len: 0,
            });
        } else if w.signaled {
            self.send_cq.push(WorkCompletion {
                wr_id: w.wr_id,
                status: Ok(()),
                imm: None,
                byte_len: 0,
            });
        }
        Ok(())
    }

    fn execute(&self, remote: &QueuePair, w: &Write<'_>) -> Result<(), VerbsError> {
        let mut staged;
        let data: &[u8] = match w.data {
            WriteData::Inline(b) => b,
            WriteData::Registered(l) => {
                staged = vec![0; l.len];
                l.mr.read(l.offset, &mut staged)?;
                &staged
            }
        };
        let mr = remote.pd.by_rkey(w.rkey).ok_or(VerbsError::RemoteAccess)?;
        if !mr.access.remote_write {
            return Err(VerbsError::RemoteAccess);
        }
        if w.remote_offset + data.len() > mr.len() {
            return Err(VerbsError::OutOfBounds);
        }
        let mut r = remote.lock();
        if !matches!(r.state, QpState::ReadyToReceive | QpState::ReadyToSend) {
            return Err(VerbsError::BadState(r.state));
        }
        let recv = match w.imm {
            Some(_) => Some(r.recvs.pop_front().ok_or(VerbsError::ReceiverNotReady)?),
            None => None,
        };
        mr.write(w.remote_offset, data)
            .map_err(|_| VerbsError::OutOfBounds)?;
        drop(r);
        if let (Some(wr_id), Some(imm)) = (recv, w.imm) {
            remote.recv_cq.push(WorkCompletion {
                wr_id,
                status: Ok(()),
                imm: Some(imm),
                byte_len: data.len(),
            });
        }
        Ok(())
    }
}

/// Two queue pairs connected to each other, each with its own domain and queues: one RC
/// connection, as the out-of-band handshake would leave it.
pub fn connected_pair() -> (Endpoint, Endpoint) {
    let a = Endpoint::new();
    let b = Endpoint::new();
    for (x, y) in [(&a, &b), (&b, &a)] {
        x.qp.to_init().expect("fresh queue pair");
        x.qp.to_rtr(&y.qp).expect("initialized queue pair");
    }
    a.qp.to_rts().expect("connected queue pair");
    b.qp.to_rts().expect("connected queue pair");
    (a, b)
}

/// One side of an RC connection: its domain, queues and queue pair.
#[derive(Clone)]
pub struct Endpoint {
    /// Protection domain.
    pub pd: ProtectionDomain,
    /// Send completions.
    pub send_cq: CompletionQueue,
    /// Receive completions.
    pub recv_cq: CompletionQueue,
    /// The queue pair.
    pub qp: QueuePair,
}

impl Endpoint {
    fn new() -> Endpoint {
        let pd = ProtectionDomain::new();
        let (send_cq, recv_cq) = (CompletionQueue::new(), CompletionQueue::new());
        let qp = QueuePair::new(&pd, &send_cq, &recv_cq);
        Endpoint {
            pd,
            send_cq,
            recv_cq,
            qp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Access = Access {
        local_write: true,
        remote_write: true,
    };

    #[test]
    fn write_with_immediate_lands_and_completes_at_the_receiver() {
        let (a, b) = connected_pair();
        let ring = b.pd.register(64, RW);
        b.qp.post_recv(7).unwrap();
        a.qp.post_write(Write {
            wr_id: 1,
            data: WriteData::Inline(b"hello"),
            remote_offset: 8,
            rkey: ring.rkey,
            imm: Some(42),
            signaled: true,
        })
        .unwrap();
        let mut buf = [0u8; 5];
        ring.read(8, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(
            b.recv_cq.poll(8),
            vec![WorkCompletion {
                wr_id: 7,
                status: Ok(()),
                imm: Some(42),
                byte_len: 5
            }]
        );
        assert_eq!(a.send_cq.poll(8)[0].status, Ok(()));
    }

    fn write_status(
        a: &Endpoint,
        rkey: u32,
        offset: usize,
        imm: Option<u32>,
    ) -> Result<(), VerbsError> {
        a.qp.post_write(Write {
            wr_id: 9,
            data: WriteData::Inline(&[1; 8]),
            remote_offset: offset,
            rkey,
            imm,
            signaled: false,
        })
        .unwrap();
        a.send_cq.poll(1)[0].status
    }

    #[test]
    fn access_violations_fail_the_completion_and_the_queue_pair() {
        // A key the peer's domain does not know.
        let (a, b) = connected_pair();
        let ring = b.pd.register(16, RW);
        assert_eq!(
            write_status(&a, ring.rkey + 1000, 0, None),
            Err(VerbsError::RemoteAccess)
        );
        assert_eq!(a.qp.state(), QpState::Error);
        // A valid key of another connection's domain.
        let (a, _b) = connected_pair();
        assert_eq!(
            write_status(&a, ring.rkey, 0, None),
            Err(VerbsError::RemoteAccess)
        );
        // Past the end of the region.
        let (a, b) = connected_pair();
        let ring = b.pd.register(16, RW);
        assert_eq!(
            write_status(&a, ring.rkey, 12, None),
            Err(VerbsError::OutOfBounds)
        );
        // A region without remote write access.
        let (a, b) = connected_pair();
        let ro = b.pd.register(16, Access::default());
        assert_eq!(
            write_status(&a, ro.rkey, 0, None),
            Err(VerbsError::RemoteAccess)
        );
        // A write-with-immediate with no receive posted.
        let (a, b) = connected_pair();
        let ring = b.pd.register(16, RW);
        assert_eq!(
            write_status(&a, ring.rkey, 0, Some(1)),
            Err(VerbsError::ReceiverNotReady)
        );
        // An errored or unconnected queue pair refuses posts and transitions.
        let refused = a.qp.post_write(Write {
            wr_id: 4,
            data: WriteData::Inline(&[1]),
            remote_offset: 0,
            rkey: ring.rkey,
            imm: None,
            signaled: false,
        });
        assert_eq!(refused, Err(VerbsError::BadState(QpState::Error)));
        let fresh = Endpoint::new();
        assert_eq!(fresh.qp.to_rts(), Err(VerbsError::BadState(QpState::Reset)));
    }
}
