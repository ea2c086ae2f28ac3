//! The `udp` backend: one plain UDP socket per member, weft's [`crate::frame`] header on
//! every datagram.
//!
//! Why UDP and not TCP for intra-cluster traffic: Raft already retries and acknowledges
//! (a lost `AppendEntries` is resent on the next heartbeat, a lost vote by the next
//! election), so a stream's retransmission, head-of-line blocking and connection state
//! buy nothing and cost latency. rafty made the same choice. What UDP does not give is
//! declared honestly in [`Capabilities`]: no reliability, no per-peer order, and a source id
//! that is only the sender's claim. [`crate::open`] stacks software layers (reliable, fifo,
//! auth) on top when the caller requires those guarantees.
//!
//! The backend rejects, counts and logs (at `debug`) anything that is not a well-formed frame
//! of this cluster from a member; such datagrams never reach the inbox.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Receiver;

use crate::backend::Inlet;
use crate::frame::{self, FrameHeader, HEADER_LEN};
use crate::{
    rx_timestamp, Capabilities, Counters, DecodeError, Delivery, NodeId, OpenError, Sink, Stats,
    Transport, TransportConfig, TransportError, UdpConfig,
};

/// Largest UDP payload over IPv4 (65535 − 8 UDP − 20 IP header bytes).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// How long the receive thread blocks in `recv_from` before checking for shutdown. Bounds
/// how long dropping a [`UdpTransport`] takes.
const RX_POLL: Duration = Duration::from_millis(50);

/// Size of the receive buffer: any UDP datagram fits, so none is silently truncated even
/// when a peer is configured with a larger `max_datagram` than ours.
const RX_BUFFER: usize = 64 * 1024;

/// Datagrams read per batch at most: what arrived while the thread was busy is handed on
/// together (a diverted layer stack then acknowledges it with one ack per peer).
const RX_BATCH: usize = 256;

thread_local! {
    /// Per-thread scratch buffer for framing unicast sends, so the hot path does not
    /// allocate once the buffer has grown to the largest frame sent from this thread.
    static SEND_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Binds a UDP socket at `addr` with `buffer` bytes of kernel buffer requested each way.
/// A bind failure names the address, since that is what the user has to change.
pub(crate) fn bind(addr: SocketAddr, buffer: usize) -> Result<UdpSocket, OpenError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let named = |e: io::Error| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A refused size is not fatal: the kernel default still works, with more loss in bursts.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into()).map_err(named)?;
    tracing::debug!(
        %addr,
        requested = buffer,
        recv_buffer = socket.recv_buffer_size().ok(),
        send_buffer = socket.send_buffer_size().ok(),
        "udp socket bound"
    );
    Ok(socket.into())
}

/// A cluster member's endpoint over plain UDP.
///
/// Sends go straight to the socket from the caller's thread; a dedicated receive thread
/// (`weft-udp-rx-<id>`) validates incoming datagrams and pushes good ones into an unbounded
/// inbox, or hands them to a diverted sink ([`Transport::divert`]). Dropping the transport stops and joins that thread and closes the socket.
pub struct UdpTransport {
    local: NodeId,
    cluster: u64,
    /// Other members, ascending.
    peers: Vec<NodeId>,
    addrs: HashMap<NodeId, SocketAddr>,
    socket: UdpSocket,
    local_addr: SocketAddr,
    caps: Capabilities,
    counters: Arc<Counters>,
    inbox: Receiver<Delivery>,
    inlet: Inlet,
    shutdown: Arc<AtomicBool>,
    rx_thread: Option<JoinHandle<()>>,
}

impl UdpTransport {
    /// Binds the local member's address from `cfg.nodes` and starts the receive thread.
    ///
    /// `udp` carries the backend settings (normally the `BackendConfig::Udp` inside `cfg`,
    /// passed separately so the caller has already matched on the backend kind). Traffic
    /// and rejections are counted in `counters`, which the caller may share with the layers
    /// it stacks on top.
    ///
    /// Fails with [`OpenError::NotAMember`] if `cfg.local` is not in `cfg.nodes`,
    /// [`OpenError::Invalid`] for a duplicated member id or a `max_datagram` outside
    /// `HEADER_LEN + 1 ..= 65507`, and [`OpenError::Io`] if the socket cannot be bound or
    /// the thread cannot be spawned.
    ///
    /// `udp.socket_buffer` is requested for both directions; the kernel may grant less
    /// (capped by `net.core.rmem_max`), which is logged at `debug`.
    pub fn open(
        cfg: &TransportConfig,
        udp: &UdpConfig,
        counters: Arc<Counters>,
    ) -> Result<UdpTransport, OpenError> {
        if udp.max_datagram <= HEADER_LEN || udp.max_datagram > MAX_UDP_PAYLOAD {
            return Err(OpenError::Invalid(format!(
                "udp max_datagram {} must be between {} and {} bytes",
                udp.max_datagram,
                HEADER_LEN + 1,
                MAX_UDP_PAYLOAD
            )));
        }

        let mut addrs = HashMap::with_capacity(cfg.nodes.len());
        for node in &cfg.nodes {
            if addrs.insert(node.id, node.addr).is_some() {
                return Err(OpenError::Invalid(format!(
                    "node {} is listed more than once",
                    node.id
                )));
            }
        }
        let bind_addr = addrs
            .remove(&cfg.local)
            .ok_or(OpenError::NotAMember(cfg.local))?;
        let peers = cfg.peer_ids();

        let socket = bind(bind_addr, udp.socket_buffer)?;
        let local_addr = socket.local_addr()?;
        let rx_socket = socket.try_clone()?;
        rx_socket.set_read_timeout(Some(RX_POLL))?;

        let (inlet, inbox) = Inlet::new();
        let shutdown = Arc::new(AtomicBool::new(false));
        let receiver = RxLoop {
            socket: rx_socket,
            local: cfg.local,
            cluster: cfg.cluster_id,
            peers: peers.clone(),
            counters: Arc::clone(&counters),
            inlet: inlet.clone(),
            shutdown: Arc::clone(&shutdown),
        };
        let rx_thread = std::thread::Builder::new()
            .name(format!("weft-udp-rx-{}", cfg.local))
            .spawn(move || receiver.run())?;

        let caps = Capabilities {
            reliable: false,
            fifo_per_peer: false,
            total_order: false,
            barrier: false,
            authenticated_source: false,
            synchronized_clock: None,
            loopback: false,
            max_message: udp.max_datagram - HEADER_LEN,
        };

        Ok(UdpTransport {
            local: cfg.local,
            cluster: cfg.cluster_id,
            peers,
            addrs,
            socket,
            local_addr,
            caps,
            counters,
            inbox,
            inlet,
            shutdown,
            rx_thread: Some(rx_thread),
        })
    }

    /// The address the socket is bound to (useful when the config named port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn header(&self) -> FrameHeader {
        FrameHeader::data(self.cluster, self.local)
    }

    fn send_frame(&self, to: NodeId, addr: SocketAddr, frame: &[u8]) -> io::Result<()> {
        self.socket.send_to(frame, addr)?;
        Counters::bump(&self.counters.frames_sent);
        tracing::trace!(node = %self.local, %to, len = frame.len(), "udp frame sent");
        Ok(())
    }
}

impl Transport for UdpTransport {
    fn local(&self) -> NodeId {
        self.local
    }

    fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Frames `msg` and hands it to the kernel. `Ok` means the datagram left this socket,
    /// not that it arrived.
    fn send(&self, to: NodeId, msg: Bytes) -> Result<(), TransportError> {
        let addr = *self.addrs.get(&to).ok_or(TransportError::UnknownPeer(to))?;
        self.caps.check_size(msg.len())?;
        let header = self.header();
        SEND_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            frame::encode_into(&header, &msg, &mut buf);
            self.send_frame(to, addr, &buf)
        })?;
        Ok(())
    }

    /// Encodes `msg` once and sends it to each peer in turn (UDP has no native broadcast
    /// that would respect membership). A failure to one peer does not stop the others; the
    /// first error is returned after every peer was tried, so an `Err` here may still mean
    /// some peers received the message, which is no worse than ordinary datagram loss.
    fn broadcast(&self, msg: Bytes) -> Result<(), TransportError> {
        self.caps.check_size(msg.len())?;
        let frame = frame::encode(&self.header(), &msg);
        let mut first_err = None;
        for &peer in &self.peers {
            let Some(&addr) = self.addrs.get(&peer) else {
                continue;
            };
            if let Err(e) = self.send_frame(peer, addr, &frame) {
                tracing::debug!(node = %self.local, to = %peer, error = %e, "udp broadcast send failed");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(TransportError::Io(e)),
            None => Ok(()),
        }
    }

    fn inbox(&self) -> &Receiver<Delivery> {
        &self.inbox
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    fn divert(&self, sink: Option<Sink>) -> bool {
        self.inlet.divert(sink)
    }
}

impl Drop for UdpTransport {
    /// Stops the receive thread (it notices within its 50 ms poll) and waits for it, so its
    /// socket clone is closed and no thread outlives the transport.
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(handle) = self.rx_thread.take() {
            if handle.join().is_err() {
                tracing::warn!(node = %self.local, "udp receive thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for UdpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpTransport")
            .field("local", &self.local)
            .field("addr", &self.local_addr)
            .field("cluster", &self.cluster)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

/// State owned by the receive thread.
struct RxLoop {
    socket: UdpSocket,
    local: NodeId,
    cluster: u64,
    /// Other members, ascending (for binary search).
    peers: Vec<NodeId>,
    counters: Arc<Counters>,
    inlet: Inlet,
    shutdown: Arc<AtomicBool>,
}

impl RxLoop {
    fn run(self) {
        let mut buf = vec![0u8; RX_BUFFER];
        let mut batch = Vec::new();
        while !self.shutdown.load(Ordering::Relaxed) {
            match self.socket.recv_from(&mut buf) {
                Ok((len, from_addr)) => {
                    self.accept_into(buf.get(..len).unwrap_or(&buf), from_addr, &mut batch);
                    // What else arrived meanwhile goes with it, without blocking.
                    for _ in 1..RX_BATCH {
                        let Ok(r) = rx_timestamp::try_recv_from(&self.socket, &mut buf) else {
                            break;
                        };
                        self.accept_into(buf.get(..r.len).unwrap_or(&buf), r.from, &mut batch);
                    }
                    if !self.inlet.put(&mut batch) {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // E.g. ECONNREFUSED surfaced from an earlier ICMP error. Not fatal for a
                    // connectionless socket; pause briefly so a persistent error cannot spin.
                    tracing::debug!(node = %self.local, error = %e, "udp recv_from failed");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Validates one datagram and adds it to `batch` if it is good.
    fn accept_into(&self, datagram: &[u8], from_addr: SocketAddr, batch: &mut Vec<Delivery>) {
        let Some((from, payload)) = accept(
            self.cluster,
            self.local,
            &self.peers,
            &self.counters,
            datagram,
            from_addr,
        ) else {
            return;
        };
        // Counted before the hand-off so that whoever receives it sees the count.
        Counters::bump(&self.counters.delivered);
        batch.push(Delivery {
            from,
            epoch: 0,
            bytes: Bytes::copy_from_slice(payload),
        });
    }
}

/// Checks one datagram received by `local` of `cluster`: a well-formed frame of this
/// cluster from one of `senders` (ascending: the peers, and the local node too on a fabric
/// where it sends to itself). Returns its source and payload, or counts and logs why it
/// was rejected.
pub(crate) fn accept<'a>(
    cluster: u64,
    local: NodeId,
    senders: &[NodeId],
    counters: &Counters,
    datagram: &'a [u8],
    from_addr: SocketAddr,
) -> Option<(NodeId, &'a [u8])> {
    Counters::bump(&counters.frames_received);
    let (header, payload) = match frame::decode_for(cluster, datagram) {
        Ok(ok) => ok,
        Err(e) => {
            let counter = match e {
                DecodeError::WrongCluster { .. } => &counters.rejected_wrong_cluster,
                _ => &counters.rejected_malformed,
            };
            Counters::bump(counter);
            tracing::debug!(node = %local, %from_addr, error = %e, "udp frame rejected");
            return None;
        }
    };
    if senders.binary_search(&header.source).is_err() {
        Counters::bump(&counters.rejected_unknown_source);
        tracing::debug!(
            node = %local,
            %from_addr,
            source = %header.source,
            "udp frame rejected: source is not a peer"
        );
        return None;
    }
    Some((header.source, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendConfig, NodeSpec};
    use std::time::Instant;

    const WAIT: Duration = Duration::from_secs(3);

    fn free_addr() -> SocketAddr {
        UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("bind an ephemeral port")
    }

    /// Configs for members with the given ids, listed in the given (possibly unsorted)
    /// order, each on its own free loopback port.
    fn configs(ids: &[u32], udp: &UdpConfig) -> Vec<TransportConfig> {
        let nodes: Vec<NodeSpec> = ids
            .iter()
            .map(|&id| NodeSpec {
                id: NodeId(id),
                addr: free_addr(),
            })
            .collect();
        ids.iter()
            .map(|&id| TransportConfig {
                cluster_id: 7,
                local: NodeId(id),
                nodes: nodes.clone(),
                backend: BackendConfig::Udp(udp.clone()),
                require: vec![],
                max_message: 1 << 20,
                layers: None,
                fast_path: true,
                tuning: Default::default(),
                key: None,
            })
            .collect()
    }

    fn open_all(ids: &[u32]) -> Vec<UdpTransport> {
        let udp = UdpConfig::default();
        configs(ids, &udp)
            .iter()
            .map(|cfg| UdpTransport::open(cfg, &udp, Arc::new(Counters::default())).unwrap())
            .collect()
    }

    fn recv(t: &UdpTransport) -> Delivery {
        t.inbox()
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("node {} got nothing: {e}", t.local()))
    }

    /// Waits (bounded) until `cond` holds on `t`'s stats.
    fn wait_stats(t: &UdpTransport, cond: impl Fn(&Stats) -> bool) -> Stats {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = t.stats();
            if cond(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A diverted endpoint hands what arrives to the sink on its receive thread, never to
    /// the inbox; undiverted, the inbox gets it again.
    #[test]
    fn a_diverted_receive_thread_feeds_the_sink_until_undiverted() {
        let ts = open_all(&[1, 2]);
        let (n1, n2) = (&ts[0], &ts[1]);
        let (tx, sunk) = crossbeam_channel::unbounded();
        let on_rx_thread = std::thread::current().id();
        assert!(n2.divert(Some(Box::new(move |batch: &mut Vec<Delivery>| {
            assert_ne!(std::thread::current().id(), on_rx_thread);
            for d in batch.drain(..) {
                let _ = tx.send(d);
            }
        }))));
        for i in 0..50u8 {
            n1.send(NodeId(2), Bytes::from(vec![i])).unwrap();
        }
        let got: Vec<u8> = (0..50)
            .map(|_| sunk.recv_timeout(WAIT).expect("sunk delivery").bytes[0])
            .collect();
        assert_eq!(got, (0..50).collect::<Vec<u8>>());
        assert!(n2.inbox().try_recv().is_err(), "nothing went to the inbox");
        assert!(n2.divert(None));
        n1.send(NodeId(2), Bytes::from_static(b"after")).unwrap();
        assert_eq!(recv(n2).bytes, "after".as_bytes());
        assert!(sunk.try_recv().is_err());
    }

    #[test]
    fn three_nodes_unicast_and_broadcast() {
        // Listed out of order: peers() must still come back ascending.
        let ts = open_all(&[3, 1, 2]);
        let (n3, n1, n2) = (&ts[0], &ts[1], &ts[2]);
        assert_eq!(n1.peers(), &[NodeId(2), NodeId(3)]);
        assert_eq!(n3.peers(), &[NodeId(1), NodeId(2)]);

        n1.send(NodeId(2), Bytes::from_static(b"1->2")).unwrap();
        n2.send(NodeId(3), Bytes::from_static(b"2->3")).unwrap();
        n3.send(NodeId(1), Bytes::from_static(b"3->1")).unwrap();
        for (t, from, body) in [(n2, 1, "1->2"), (n3, 2, "2->3"), (n1, 3, "3->1")] {
            let d = recv(t);
            assert_eq!(d.from, NodeId(from));
            assert_eq!(d.epoch, 0);
            assert_eq!(d.bytes, body.as_bytes());
        }

        n2.broadcast(Bytes::from_static(b"all from 2")).unwrap();
        for t in [n1, n3] {
            let d = recv(t);
            assert_eq!(d.from, NodeId(2));
            assert_eq!(d.bytes, &b"all from 2"[..]);
        }
        // The broadcaster does not hear itself.
        assert!(n2.inbox().recv_timeout(Duration::from_millis(100)).is_err());

        // A message of exactly max_message fits in one datagram.
        let max = n1.capabilities().max_message;
        assert_eq!(max, UdpConfig::default().max_datagram - HEADER_LEN);
        let big = Bytes::from(vec![0xAB; max]);
        n1.send(NodeId(3), big.clone()).unwrap();
        assert_eq!(recv(n3).bytes, big);

        assert_eq!(n1.stats().frames_sent, 2);
        assert_eq!(n2.stats().frames_sent, 3);
        assert_eq!(n3.stats().frames_received, 3);
        assert_eq!(n3.stats().delivered, 3);
        assert_eq!(n3.stats().rejected_malformed, 0);
    }

    #[test]
    fn capabilities_are_all_false() {
        let ts = open_all(&[1, 2]);
        let caps = ts[0].capabilities();
        assert_eq!(
            *caps,
            Capabilities {
                max_message: 1472 - HEADER_LEN,
                ..Capabilities::default()
            }
        );
        assert!(caps.names().is_empty());
    }

    #[test]
    fn send_errors() {
        let ts = open_all(&[1, 2]);
        let n1 = &ts[0];
        let max = n1.capabilities().max_message;

        let too_big = Bytes::from(vec![0u8; max + 1]);
        match n1.send(NodeId(2), too_big.clone()) {
            Err(TransportError::TooLarge { size, max: m }) => {
                assert_eq!((size, m), (max + 1, max));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            n1.broadcast(too_big),
            Err(TransportError::TooLarge { .. })
        ));
        assert!(matches!(
            n1.send(NodeId(42), Bytes::from_static(b"x")),
            Err(TransportError::UnknownPeer(NodeId(42)))
        ));
        assert!(matches!(
            n1.send(NodeId(1), Bytes::from_static(b"x")),
            Err(TransportError::UnknownPeer(NodeId(1)))
        ));
        assert_eq!(n1.stats().frames_sent, 0);
    }

    #[test]
    fn rejects_wrong_cluster_unknown_source_and_garbage() {
        let udp = UdpConfig::default();
        let cfgs = configs(&[1, 2], &udp);
        let n1 = UdpTransport::open(&cfgs[0], &udp, Arc::new(Counters::default())).unwrap();
        let target = n1.local_addr();
        let raw = UdpSocket::bind("127.0.0.1:0").unwrap();

        let send = |h: FrameHeader, p: &[u8]| {
            raw.send_to(&frame::encode(&h, p), target).unwrap();
        };
        send(FrameHeader::data(8, NodeId(2)), b"other cluster");
        send(FrameHeader::data(7, NodeId(99)), b"not a member");
        send(
            FrameHeader::data(7, NodeId(1)),
            b"claims to be the receiver",
        );
        raw.send_to(b"\xde\xad\xbe\xef garbage", target).unwrap();
        raw.send_to(&[], target).unwrap();
        let mut bad_kind = frame::encode(&FrameHeader::data(7, NodeId(2)), b"k");
        bad_kind[3] = 0x7F;
        raw.send_to(&bad_kind, target).unwrap();

        // Wait for all six to be processed: the counters are bumped before anything could
        // be delivered, so once they add up nothing more is in flight.
        let s = wait_stats(&n1, |s| s.frames_received >= 6);
        assert_eq!(s.frames_received, 6);
        assert_eq!(s.rejected_wrong_cluster, 1);
        assert_eq!(s.rejected_unknown_source, 2);
        assert_eq!(s.rejected_malformed, 3);
        assert_eq!(s.delivered, 0);
        assert!(
            n1.inbox().try_recv().is_err(),
            "a rejected frame was delivered"
        );

        // The source id is only a claim: a well-formed frame naming a member is accepted
        // from any socket, which is why authenticated_source is false.
        send(FrameHeader::data(7, NodeId(2)), b"spoofed but well formed");
        let d = recv(&n1);
        assert_eq!(d.from, NodeId(2));
        assert_eq!(d.bytes, &b"spoofed but well formed"[..]);
        assert!(n1.inbox().try_recv().is_err());
    }

    #[test]
    fn open_validates_config() {
        let udp = UdpConfig::default();
        let mut cfg = configs(&[1, 2], &udp).remove(0);
        let counters = || Arc::new(Counters::default());

        for bad in [0, HEADER_LEN, MAX_UDP_PAYLOAD + 1] {
            let u = UdpConfig {
                max_datagram: bad,
                ..UdpConfig::default()
            };
            assert!(
                matches!(
                    UdpTransport::open(&cfg, &u, counters()),
                    Err(OpenError::Invalid(_))
                ),
                "max_datagram {bad} accepted"
            );
        }
        // The extremes are accepted.
        for good in [HEADER_LEN + 1, MAX_UDP_PAYLOAD] {
            let u = UdpConfig {
                max_datagram: good,
                ..UdpConfig::default()
            };
            let t = UdpTransport::open(&cfg, &u, counters()).unwrap();
            assert_eq!(t.capabilities().max_message, good - HEADER_LEN);
        }

        let mut dup = cfg.clone();
        dup.nodes.push(dup.nodes[1].clone());
        assert!(matches!(
            UdpTransport::open(&dup, &udp, counters()),
            Err(OpenError::Invalid(_))
        ));

        cfg.local = NodeId(9);
        assert!(matches!(
            UdpTransport::open(&cfg, &udp, counters()),
            Err(OpenError::NotAMember(NodeId(9)))
        ));
    }

    #[test]
    fn drop_stops_thread_and_frees_port() {
        let ts = open_all(&[1, 2]);
        let addr = ts[0].local_addr();
        let start = Instant::now();
        drop(ts);
        assert!(start.elapsed() < WAIT);
        // Both the sending socket and the receive thread's clone are closed.
        UdpSocket::bind(addr).expect("port still held after drop");
    }

    #[test]
    fn a_port_in_use_is_an_error_naming_the_address() {
        let udp = UdpConfig::default();
        let first = open_all(&[1, 2]);
        let mut cfg = configs(&[1, 2], &udp).remove(0);
        cfg.nodes[0].addr = first[0].local_addr();
        let err = UdpTransport::open(&cfg, &udp, Arc::new(Counters::default()))
            .expect_err("the port is taken");
        let text = err.to_string();
        assert!(text.contains(&first[0].local_addr().to_string()), "{text}");
    }
}
