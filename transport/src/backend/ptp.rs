//! The `ptp` backend: UDP between members whose clocks IEEE 1588 keeps within `ε`, with
//! one delivery order at every receiver and no sequencer ([`crate::deadline`]).
//!
//! A message is stamped once — deadline = send time + Δ on the local clock, sender,
//! sequence number — and the same frame goes to every recipient of a multicast, so every
//! copy has the same place in the order. The receive thread takes each datagram's kernel
//! timestamp (`SO_TIMESTAMPING`, [`crate::rx_timestamp`]; software timestamps for the
//! system clock, NIC timestamps for a PTP hardware clock), holds the message until its
//! clock passes deadline + ε, and releases held messages in (deadline, sender, sequence)
//! order. A message that arrives after its release time is delivered at once, counted in
//! `late_deliveries`, and never slotted into the order. Δ follows the measured one-way
//! delays within the configured bounds.
//!
//! Every `sync_interval_ms` the thread runs a two-way time transfer with each peer
//! ([`Exchange`]) and keeps the offsets in a [`ClockMonitor`]; an offset beyond ε withdraws
//! `total_order` from the capabilities (logged), so a guarantee the clocks cannot back is
//! never claimed. A message to the local node goes through the socket too, so it takes its
//! place in the same order.
//!
//! Like `udp`, the fabric may lose, duplicate or reorder datagrams: the `fifo` and
//! `reliable` layers stack on top as `require` asks.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;

use crate::backend::{udp, Inlet};
use crate::clock::{Clock, PhcClock, SystemClock};
use crate::deadline::{
    AdaptiveDelta, Arrival, ClockMonitor, DeadlineReceiver, DeadlineSender, Exchange, Stamp,
};
use crate::frame::{self, FrameHeader, HEADER_LEN};
use crate::rx_timestamp::{self, Source};
use crate::soft_clock::{PtpSync, SoftwareClock, SyncSettings};
use crate::{
    Capabilities, ClockOffset, Counters, Delivery, NodeId, OpenError, PtpConfig, Sink, Stats,
    Transport, TransportConfig, TransportError,
};

/// Bytes the backend adds to each message inside the frame: kind, deadline, send time,
/// sequence number.
pub const OVERHEAD: usize = 1 + 8 + 8 + 8;

const DATA: u8 = 0;
const SYNC_REQUEST: u8 = 1;
const SYNC_REPLY: u8 = 2;
/// An IEEE 1588 packet for weft's own synchronization (`clock = "software"`).
const PTP_PACKET: u8 = 3;

/// `WEFT_PTP_CLOCK_OFFSET_NS` shifts a member's software clock at start: lets tests on one
/// host (whose members would otherwise share one raw clock) show synchronization at work.
fn software_clock_offset() -> i64 {
    std::env::var("WEFT_PTP_CLOCK_OFFSET_NS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Longest the receive thread waits, so releases and time transfers stay on time.
const MAX_BLOCK: Duration = Duration::from_millis(1);
/// Shortest wait: a release due sooner is waited for this long (timer slack is about
/// 50 µs anyway).
const MIN_BLOCK: Duration = Duration::from_micros(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn micros(us: u64) -> Duration {
    Duration::from_micros(us)
}

/// A member's endpoint on a PTP-synchronized Ethernet.
pub struct PtpTransport {
    local: NodeId,
    peers: Vec<NodeId>,
    shared: Arc<Shared>,
    ordered_caps: Capabilities,
    unordered_caps: Capabilities,
    inbox: Receiver<Delivery>,
    inlet: Inlet,
    rx_thread: Option<JoinHandle<()>>,
}

/// What the sending callers and the receive thread share.
struct Shared {
    local: NodeId,
    cluster: u64,
    socket: UdpSocket,
    addrs: HashMap<NodeId, SocketAddr>,
    clock: Arc<dyn Clock>,
    stamper: Mutex<DeadlineSender>,
    delta: Mutex<AdaptiveDelta>,
    monitor: Mutex<ClockMonitor>,
    ordered: AtomicBool,
    counters: Arc<Counters>,
    shutdown: AtomicBool,
    /// weft's own PTP port, with `clock = "software"`.
    sync: Mutex<Option<Arc<PtpSync>>>,
}

impl PtpTransport {
    /// Opens the clock `ptp.clock` names and binds the local member's address.
    pub fn open(
        cfg: &TransportConfig,
        ptp: &PtpConfig,
        counters: Arc<Counters>,
    ) -> Result<PtpTransport, OpenError> {
        let epsilon = micros(ptp.epsilon_us);
        let (clock, stamps): (Arc<dyn Clock>, _) = match ptp.clock.as_str() {
            "system" => (Arc::new(SystemClock { epsilon }), Some(Source::Software)),
            "software" => {
                let soft = SoftwareClock::new(software_clock_offset(), epsilon);
                let mut t =
                    PtpTransport::with_clock(cfg, ptp, Arc::new(soft.clone()), None, counters)?;
                t.synchronize(&soft)?;
                return Ok(t);
            }
            device => {
                let phc = PhcClock::open(device.as_ref(), epsilon).map_err(|reason| {
                    OpenError::Fabric {
                        fabric: format!("ptp clock {device}"),
                        reason,
                    }
                })?;
                (Arc::new(phc), Some(Source::Hardware))
            }
        };
        PtpTransport::with_clock(cfg, ptp, clock, stamps, counters)
    }

    /// Opens on `clock` (tests pass simulated ones). Kernel timestamps of kind `stamps`
    /// are taken on the same clock as `clock`, so they stand for arrival times; `None`
    /// reads `clock` on arrival instead.
    pub fn with_clock(
        cfg: &TransportConfig,
        ptp: &PtpConfig,
        clock: Arc<dyn Clock>,
        stamps: Option<Source>,
        counters: Arc<Counters>,
    ) -> Result<PtpTransport, OpenError> {
        let addrs: HashMap<NodeId, SocketAddr> = cfg.nodes.iter().map(|n| (n.id, n.addr)).collect();
        let bind_addr = *addrs
            .get(&cfg.local)
            .ok_or(OpenError::NotAMember(cfg.local))?;
        let socket = udp::bind(bind_addr, ptp.socket_buffer)?;
        if let Some(source) = stamps {
            rx_timestamp::enable(&socket, source)?;
        }
        let epsilon = clock.epsilon();
        let delta = AdaptiveDelta::new(micros(ptp.delta_min_us), micros(ptp.delta_max_us), epsilon);
        let shared = Arc::new(Shared {
            local: cfg.local,
            cluster: cfg.cluster_id,
            socket,
            addrs,
            clock,
            stamper: Mutex::new(DeadlineSender::new(cfg.local)),
            delta: Mutex::new(delta),
            monitor: Mutex::new(ClockMonitor::new(epsilon)),
            // Claimed only once every peer's clock was measured within ε.
            ordered: AtomicBool::new(cfg.nodes.len() <= 1),
            counters,
            shutdown: AtomicBool::new(false),
            sync: Mutex::new(None),
        });
        let mut members: Vec<NodeId> = cfg.nodes.iter().map(|n| n.id).collect();
        members.sort();
        let (inlet, inbox) = Inlet::new();
        let rx = RxLoop {
            shared: shared.clone(),
            members,
            inlet: inlet.clone(),
            released: Vec::new(),
            receiver: DeadlineReceiver::new(epsilon),
            sync_every: Duration::from_millis(ptp.sync_interval_ms),
            stamps,
            max_hold_ns: (micros(ptp.delta_max_us) + epsilon).as_nanos() as i64,
        };
        let rx_thread = std::thread::Builder::new()
            .name(format!("weft-ptp-rx-{}", cfg.local))
            .spawn(move || rx.run())?;
        let unordered_caps = Capabilities {
            synchronized_clock: Some(epsilon),
            // A send to the local node goes through its own socket and deadline order.
            loopback: true,
            max_message: ptp.max_datagram - HEADER_LEN - OVERHEAD,
            ..Capabilities::default()
        };
        Ok(PtpTransport {
            local: cfg.local,
            peers: cfg.peer_ids(),
            ordered_caps: Capabilities {
                total_order: true,
                ..unordered_caps.clone()
            },
            unordered_caps,
            shared,
            inbox,
            inlet,
            rx_thread: Some(rx_thread),
        })
    }

    /// Runs weft's own PTP ([`PtpSync`]) to keep `clock` — the clock this transport was
    /// opened with — in step with the other members', its packets carried in this
    /// transport's frames.
    fn synchronize(&mut self, clock: &SoftwareClock) -> Result<(), OpenError> {
        let shared = Arc::downgrade(&self.shared);
        let peers = self.peers.clone();
        let send = Box::new(move |packet: &[u8]| {
            if let Some(s) = shared.upgrade() {
                let _ = s.send_frame(&peers, PTP_PACKET, &[], packet);
            }
        });
        let sync = PtpSync::start(self.local, clock, SyncSettings::default(), send)?;
        *lock(&self.shared.sync) = Some(Arc::new(sync));
        Ok(())
    }
}

impl Shared {
    /// Builds one frame — header, `kind`, `fields` (little-endian), `payload` — in one
    /// buffer and sends it to each of `to`, even if some sends fail; the first failure is
    /// the result.
    fn send_frame(
        &self,
        to: &[NodeId],
        kind: u8,
        fields: &[i64],
        payload: &[u8],
    ) -> Result<(), TransportError> {
        let mut frame = Vec::with_capacity(HEADER_LEN + 1 + 8 * fields.len() + payload.len());
        frame::encode_into(
            &FrameHeader::data(self.cluster, self.local),
            &[kind],
            &mut frame,
        );
        for f in fields {
            frame.extend_from_slice(&f.to_le_bytes());
        }
        frame.extend_from_slice(payload);
        let mut first_error = None;
        for id in to {
            let sent = match self.addrs.get(id) {
                Some(addr) => self
                    .socket
                    .send_to(&frame, addr)
                    .map_err(TransportError::from),
                None => Err(TransportError::UnknownPeer(*id)),
            };
            match sent {
                Ok(_) => Counters::bump(&self.counters.frames_sent),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stamps `msg` once and sends the same frame to every one of `to`.
    fn send_data(&self, to: &[NodeId], msg: &[u8]) -> Result<(), TransportError> {
        let delta = lock(&self.delta).current();
        let stamp = lock(&self.stamper).stamp(self.clock.now_ns(), delta);
        let fields = [stamp.deadline_ns, stamp.sent_ns, stamp.seq as i64];
        self.send_frame(to, DATA, &fields, msg)
    }
}

impl Transport for PtpTransport {
    fn local(&self) -> NodeId {
        self.local
    }

    fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// `total_order` while every measured clock offset is within ε.
    fn capabilities(&self) -> &Capabilities {
        if self.shared.ordered.load(Ordering::Acquire) {
            &self.ordered_caps
        } else {
            &self.unordered_caps
        }
    }

    /// Sends to a peer, or to the local node (delivered in the same order as the rest).
    fn send(&self, to: NodeId, msg: Bytes) -> Result<(), TransportError> {
        self.multicast(&[to], msg)
    }

    fn broadcast(&self, msg: Bytes) -> Result<(), TransportError> {
        self.multicast(&self.peers, msg)
    }

    /// One stamp for every recipient, so every copy has the same place in the order.
    fn multicast(&self, to: &[NodeId], msg: Bytes) -> Result<(), TransportError> {
        self.unordered_caps.check_size(msg.len())?;
        self.shared.send_data(to, &msg)
    }

    fn inbox(&self) -> &Receiver<Delivery> {
        &self.inbox
    }

    fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    fn divert(&self, sink: Option<Sink>) -> bool {
        self.inlet.divert(sink)
    }

    /// Every peer a time transfer completed with.
    fn clock_offsets(&self) -> Vec<ClockOffset> {
        let monitor = lock(&self.shared.monitor);
        self.peers
            .iter()
            .filter_map(|&peer| {
                let (offset_ns, delay_ns) = monitor.of(peer)?;
                Some(ClockOffset {
                    peer,
                    offset_ns,
                    delay_ns,
                })
            })
            .collect()
    }
}

impl Drop for PtpTransport {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        if let Some(t) = self.rx_thread.take() {
            let _ = t.join();
        }
        lock(&self.shared.sync).take();
    }
}

/// The receive thread's state.
struct RxLoop {
    shared: Arc<Shared>,
    /// Every member, the local one included (it may send to itself), ascending.
    members: Vec<NodeId>,
    inlet: Inlet,
    /// Messages released in this pass, handed on together at its end.
    released: Vec<Delivery>,
    receiver: DeadlineReceiver<Bytes>,
    sync_every: Duration,
    stamps: Option<Source>,
    /// Longest a message may be held: Δ's upper bound plus ε.
    max_hold_ns: i64,
}

/// Reads one little-endian `i64` off the front of a byte slice.
fn take_i64(b: &mut &[u8]) -> Option<i64> {
    let (head, rest) = b.split_first_chunk::<8>()?;
    *b = rest;
    Some(i64::from_le_bytes(*head))
}

/// Reads three little-endian `i64`s off the front of a byte slice.
fn take_three(b: &mut &[u8]) -> Option<[i64; 3]> {
    Some([take_i64(b)?, take_i64(b)?, take_i64(b)?])
}

impl RxLoop {
    fn run(mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut next_sync = Instant::now();
        while !self.shared.shutdown.load(Ordering::Relaxed) {
            let now = self.shared.clock.now_ns();
            let block = self
                .receiver
                .next_release_ns()
                .map_or(MAX_BLOCK, |due| {
                    Duration::from_nanos(due.saturating_sub(now).max(0) as u64)
                })
                .clamp(MIN_BLOCK, MAX_BLOCK);
            if let Err(e) = rx_timestamp::wait_readable(&self.shared.socket, block) {
                tracing::debug!(node = %self.shared.local, error = %e, "ptp wait failed");
                std::thread::sleep(MIN_BLOCK);
            }
            // Everything queued arrived before this reading: take it all before releasing,
            // or a burst left in the socket would come out behind later stamps (late).
            let now = self.shared.clock.now_ns();
            loop {
                match rx_timestamp::try_recv_from(&self.shared.socket, &mut buf) {
                    Ok(r) => {
                        let arrival = match (r.stamp, self.stamps) {
                            (Some((ns, got)), Some(want)) if got == want => ns,
                            _ => self.shared.clock.now_ns(),
                        };
                        self.handle(&buf[..r.len], r.from, arrival);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(node = %self.shared.local, error = %e, "ptp recv failed");
                        break;
                    }
                }
            }
            for (stamp, msg) in self.receiver.release(now) {
                self.deliver(stamp.sender, msg);
            }
            if !self.inlet.put(&mut self.released) {
                return;
            }
            if Instant::now() >= next_sync {
                next_sync = Instant::now() + self.sync_every;
                self.sync_request();
            }
        }
    }

    /// Starts a two-way time transfer with every peer.
    fn sync_request(&self) {
        let peers: Vec<NodeId> = self
            .members
            .iter()
            .copied()
            .filter(|m| *m != self.shared.local)
            .collect();
        let t1 = self.shared.clock.now_ns();
        if let Err(e) = self.shared.send_frame(&peers, SYNC_REQUEST, &[t1], &[]) {
            tracing::debug!(error = %e, "ptp time transfer request not sent");
        }
    }

    fn deliver(&mut self, from: NodeId, bytes: Bytes) {
        Counters::bump(&self.shared.counters.delivered);
        self.released.push(Delivery {
            from,
            epoch: 0,
            bytes,
        });
    }

    /// Handles one datagram that arrived at `arrival` (local clock).
    fn handle(&mut self, datagram: &[u8], from_addr: SocketAddr, arrival: i64) {
        let s = &self.shared;
        let Some((from, payload)) = udp::accept(
            s.cluster,
            s.local,
            &self.members,
            &s.counters,
            datagram,
            from_addr,
        ) else {
            return;
        };
        let Some((&kind, mut rest)) = payload.split_first() else {
            Counters::bump(&s.counters.rejected_malformed);
            return;
        };
        match kind {
            DATA => {
                let Some([deadline_ns, sent_ns, seq]) = take_three(&mut rest) else {
                    Counters::bump(&s.counters.rejected_malformed);
                    return;
                };
                let stamp = Stamp {
                    deadline_ns,
                    sender: from,
                    seq: seq as u64,
                    sent_ns,
                };
                if from != s.local {
                    lock(&s.delta).observe(arrival.saturating_sub(sent_ns));
                }
                let msg = Bytes::copy_from_slice(rest);
                // Without the guarantee (clocks beyond ε) holding buys nothing; and a
                // deadline further ahead than any Δ is a sender's clock fault, not a reason
                // to hold the message for as long.
                let too_far = deadline_ns > arrival.saturating_add(self.max_hold_ns);
                if !s.ordered.load(Ordering::Acquire) || too_far {
                    if too_far {
                        Counters::bump(&s.counters.late_deliveries);
                    }
                    return self.deliver(from, msg);
                }
                match self.receiver.arrive(stamp, msg, arrival) {
                    Arrival::Held => {}
                    Arrival::Late(stamp, msg) => {
                        Counters::bump(&s.counters.late_deliveries);
                        tracing::trace!(
                            ?stamp,
                            arrival,
                            "ptp message late: delivered out of order"
                        );
                        self.deliver(stamp.sender, msg)
                    }
                }
            }
            SYNC_REQUEST => {
                let Some(t1) = take_i64(&mut rest) else {
                    Counters::bump(&s.counters.rejected_malformed);
                    return;
                };
                let fields = [t1, arrival, s.clock.now_ns()];
                let _ = s.send_frame(&[from], SYNC_REPLY, &fields, &[]);
            }
            SYNC_REPLY => {
                let Some([t1, t2, t3]) = take_three(&mut rest) else {
                    Counters::bump(&s.counters.rejected_malformed);
                    return;
                };
                let x = Exchange {
                    t1,
                    t2,
                    t3,
                    t4: arrival,
                };
                let (within, measured) = {
                    let mut monitor = lock(&s.monitor);
                    (monitor.record(from, x), monitor.measured())
                };
                // Claimed only with every peer measured, and every one within ε.
                let ok = within && measured + 1 >= self.members.len();
                if s.ordered.swap(ok, Ordering::AcqRel) != ok && ok {
                    tracing::info!(peer = %from, "every peer's clock within epsilon: total_order restored");
                }
            }
            PTP_PACKET => {
                let sync = lock(&s.sync).clone();
                match sync {
                    Some(sync) => sync.receive(rest.to_vec(), arrival),
                    None => Counters::bump(&s.counters.rejected_malformed),
                }
            }
            _ => {
                Counters::bump(&s.counters.rejected_malformed);
            }
        }
    }
}
