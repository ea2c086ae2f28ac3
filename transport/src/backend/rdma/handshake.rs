//! The out-of-band connection set-up of real RDMA: before two queue pairs can talk, each side
//! must learn the other's QP number, packet sequence number, address (LID and GID) and the
//! keys and addresses of the memory it may write. That travels over TCP between the members'
//! configured `addr`s, the way `ibv_rc_pingpong` and perftest do it, so no `rdma_cm` service
//! is needed.
//!
//! Every pair of members shares one TCP connection (the higher id dials the lower, which
//! listens), opened by [`Handshake::connect`]: it starts with a hello naming the cluster and
//! both ends, so a member of another cluster, a wrong id or a stray client is refused with
//! an error that says which. [`Handshake::exchange`] then swaps one [`QpInfo`] per pair, and
//! [`Handshake::barrier`] waits until every peer has moved its queue pairs to
//! ready-to-send, so nobody writes into a queue pair that cannot receive yet. This module
//! is plain TCP and runs in CI; only the verbs calls around it need a NIC.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::NodeId;

/// First bytes of every handshake frame.
const MAGIC: [u8; 8] = *b"WEFTRDMA";
/// Version of the frames below; a peer speaking another is refused.
const VERSION: u16 = 2;
/// Hello: magic, version, cluster id, sender, intended receiver.
const HELLO_LEN: usize = 8 + 2 + 8 + 4 + 4;
/// A [`QpInfo`] on the wire.
const INFO_LEN: usize = 8 + 2 + 4 + 4 + 2 + 16 + 8 + 4 + 8 + 8 + 4 + 1 + 4;
/// Pause between attempts to dial a peer that is not listening yet.
const REDIAL: Duration = Duration::from_millis(50);

/// Why the out-of-band set-up failed; each names the peer and what to check.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The local listening address could not be bound.
    #[error("cannot listen for the rdma handshake on {addr}: {source}")]
    Listen {
        /// The configured address of this member.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A peer did not connect, or did not answer, before the deadline.
    #[error("rdma handshake with node {peer} ({addr}) timed out after {after:?}: is it started, and is its addr right? (members connect when they open together: one restarted alone cannot rejoin running peers yet; restart them too)")]
    Timeout {
        /// The peer.
        peer: NodeId,
        /// Its configured address.
        addr: SocketAddr,
        /// The configured timeout.
        after: Duration,
    },
    /// A peer's bytes were not a valid handshake frame.
    #[error("rdma handshake with node {peer}: {reason}")]
    Protocol {
        /// The peer (or the id the connection claimed).
        peer: NodeId,
        /// What was wrong.
        reason: String,
    },
    /// The connection failed mid-handshake.
    #[error("rdma handshake with node {peer}: {source}")]
    Io {
        /// The peer.
        peer: NodeId,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// One side's description of its end of a queue pair, sent to the peer at the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpInfo {
    /// The queue pair number.
    pub qp_num: u32,
    /// The first packet sequence number it will send with.
    pub psn: u32,
    /// Its port's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Its GID (RoCE and routed InfiniBand).
    pub gid: [u8; 16],
    /// Virtual address of its ring, which the peer writes records into.
    pub ring_addr: u64,
    /// Remote key of the ring.
    pub ring_rkey: u32,
    /// Bytes in the ring.
    pub ring_len: u64,
    /// Virtual address of its credit word, which the peer writes its read position into.
    pub credit_addr: u64,
    /// Remote key of the credit word.
    pub credit_rkey: u32,
    /// Its port's active path MTU (the verbs `ibv_mtu` code); the pair uses the smaller.
    pub mtu: u8,
    /// Receive requests it keeps posted: how many records may be in flight to it.
    pub recv_depth: u32,
}

impl QpInfo {
    /// The wire form.
    pub fn encode(&self) -> [u8; INFO_LEN] {
        let mut b = [0u8; INFO_LEN];
        let mut w = Writer(&mut b, 0);
        w.put(&MAGIC);
        w.put(&VERSION.to_le_bytes());
        w.put(&self.qp_num.to_le_bytes());
        w.put(&self.psn.to_le_bytes());
        w.put(&self.lid.to_le_bytes());
        w.put(&self.gid);
        w.put(&self.ring_addr.to_le_bytes());
        w.put(&self.ring_rkey.to_le_bytes());
        w.put(&self.ring_len.to_le_bytes());
        w.put(&self.credit_addr.to_le_bytes());
        w.put(&self.credit_rkey.to_le_bytes());
        w.put(&[self.mtu]);
        w.put(&self.recv_depth.to_le_bytes());
        b
    }

    /// Parses the wire form; any other bytes are an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<QpInfo, String> {
        if b.len() != INFO_LEN {
            return Err(format!(
                "queue pair info of {} bytes, expected {INFO_LEN}",
                b.len()
            ));
        }
        let mut r = Reader(b);
        check_preamble(&mut r)?;
        let info = QpInfo {
            qp_num: r.u32(),
            psn: r.u32(),
            lid: u16::from_le_bytes(r.take()),
            gid: r.take(),
            ring_addr: r.u64(),
            ring_rkey: r.u32(),
            ring_len: r.u64(),
            credit_addr: r.u64(),
            credit_rkey: r.u32(),
            mtu: r.take::<1>()[0],
            recv_depth: r.u32(),
        };
        if info.recv_depth < 3 {
            return Err(format!(
                "{} posted receives are too few for the ring protocol (at least 3)",
                info.recv_depth
            ));
        }
        if info.ring_len == 0 || info.ring_len % 8 != 0 {
            return Err(format!(
                "ring of {} bytes is not a positive multiple of 8",
                info.ring_len
            ));
        }
        if info.psn >= 1 << 24 {
            return Err(format!(
                "packet sequence number {} exceeds 24 bits",
                info.psn
            ));
        }
        Ok(info)
    }
}

struct Writer<'a>(&'a mut [u8], usize);

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.0[self.1..self.1 + bytes.len()].copy_from_slice(bytes);
        self.1 += bytes.len();
    }
}

/// Reads fixed fields from a slice whose length the caller checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("split_at gave N bytes")
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

fn check_preamble(r: &mut Reader<'_>) -> Result<(), String> {
    if r.take::<8>() != MAGIC {
        return Err("not a weft rdma handshake (bad magic)".into());
    }
    let version = u16::from_le_bytes(r.take());
    if version != VERSION {
        return Err(format!(
            "handshake version {version}, this build speaks {VERSION}"
        ));
    }
    Ok(())
}

fn hello(cluster: u64, from: NodeId, to: NodeId) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    let mut w = Writer(&mut b, 0);
    w.put(&MAGIC);
    w.put(&VERSION.to_le_bytes());
    w.put(&cluster.to_le_bytes());
    w.put(&from.0.to_le_bytes());
    w.put(&to.0.to_le_bytes());
    b
}

/// Checks a hello received by `local` of cluster `cluster`; returns the sender.
fn check_hello(b: &[u8; HELLO_LEN], cluster: u64, local: NodeId) -> Result<NodeId, String> {
    let mut r = Reader(b);
    check_preamble(&mut r)?;
    let (their_cluster, from, to) = (r.u64(), NodeId(r.u32()), NodeId(r.u32()));
    if their_cluster != cluster {
        return Err(format!(
            "node {from} belongs to cluster {their_cluster}, this is cluster {cluster}"
        ));
    }
    if to != local {
        return Err(format!(
            "node {from} meant to reach node {to}, but this is node {local}: check the addrs"
        ));
    }
    Ok(from)
}

/// The TCP connections to every peer, after hellos were checked both ways.
pub struct Handshake {
    streams: BTreeMap<NodeId, TcpStream>,
    deadline: Instant,
    timeout: Duration,
    addrs: BTreeMap<NodeId, SocketAddr>,
}

impl Handshake {
    /// Connects `local` (listening on its own entry of `addrs`) with every other member of
    /// `addrs`, within `timeout`.
    pub fn connect(
        cluster: u64,
        local: NodeId,
        addrs: &BTreeMap<NodeId, SocketAddr>,
        timeout: Duration,
    ) -> Result<Handshake, HandshakeError> {
        let deadline = Instant::now() + timeout;
        let me = addrs[&local];
        let mut hs = Handshake {
            streams: BTreeMap::new(),
            deadline,
            timeout,
            addrs: addrs.clone(),
        };
        let listener =
            TcpListener::bind(me).map_err(|source| HandshakeError::Listen { addr: me, source })?;
        for &peer in addrs.keys().filter(|&&p| p < local) {
            let s = hs.dial(peer)?;
            hs.send(peer, &s, &hello(cluster, local, peer))?;
            let mut b = [0u8; HELLO_LEN];
            hs.recv(peer, &s, &mut b)?;
            let from = check_hello(&b, cluster, local)
                .map_err(|reason| HandshakeError::Protocol { peer, reason })?;
            if from != peer {
                return Err(HandshakeError::Protocol {
                    peer,
                    reason: format!("the node at {} says it is node {from}", addrs[&peer]),
                });
            }
            hs.streams.insert(peer, s);
        }
        listener
            .set_nonblocking(true)
            .map_err(|source| HandshakeError::Listen { addr: me, source })?;
        while let Some(&waiting) = addrs
            .keys()
            .find(|&&p| p > local && !hs.streams.contains_key(&p))
        {
            let s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    hs.check_deadline(waiting)?;
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(source) => {
                    return Err(HandshakeError::Io {
                        peer: waiting,
                        source,
                    })
                }
            };
            hs.prepare(waiting, &s)?;
            let mut b = [0u8; HELLO_LEN];
            hs.recv(waiting, &s, &mut b)?;
            // A wrong cluster or a misaddressed member means a wrong config: an error. A
            // valid hello from an id that is not expected here is ignored with a warning.
            let from =
                check_hello(&b, cluster, local).map_err(|reason| HandshakeError::Protocol {
                    peer: waiting,
                    reason,
                })?;
            if from <= local || !addrs.contains_key(&from) || hs.streams.contains_key(&from) {
                tracing::warn!(claimed = %from, "rdma handshake: unexpected hello ignored");
                continue;
            }
            hs.send(from, &s, &hello(cluster, local, from))?;
            hs.streams.insert(from, s);
        }
        Ok(hs)
    }

    /// Sends each peer the info of this side's queue pair to it, and returns theirs.
    pub fn exchange(
        &mut self,
        mine: &BTreeMap<NodeId, QpInfo>,
    ) -> Result<BTreeMap<NodeId, QpInfo>, HandshakeError> {
        for (&peer, s) in &self.streams {
            self.send(peer, s, &mine[&peer].encode())?;
        }
        let mut theirs = BTreeMap::new();
        for (&peer, s) in &self.streams {
            let mut b = [0u8; INFO_LEN];
            self.recv(peer, s, &mut b)?;
            let info =
                QpInfo::decode(&b).map_err(|reason| HandshakeError::Protocol { peer, reason })?;
            theirs.insert(peer, info);
        }
        Ok(theirs)
    }

    /// Tells every peer this side is ready and waits until every peer says the same.
    pub fn barrier(&mut self) -> Result<(), HandshakeError> {
        for (&peer, s) in &self.streams {
            self.send(peer, s, b"R")?;
        }
        for (&peer, s) in &self.streams {
            let mut b = [0u8; 1];
            self.recv(peer, s, &mut b)?;
            if &b != b"R" {
                return Err(HandshakeError::Protocol {
                    peer,
                    reason: format!("expected the ready byte, got {:#04x}", b[0]),
                });
            }
        }
        Ok(())
    }

    fn dial(&self, peer: NodeId) -> Result<TcpStream, HandshakeError> {
        let addr = self.addrs[&peer];
        loop {
            let left = self.check_deadline(peer)?;
            match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))) {
                Ok(s) => {
                    self.prepare(peer, &s)?;
                    return Ok(s);
                }
                Err(_) => std::thread::sleep(REDIAL.min(left)),
            }
        }
    }

    fn prepare(&self, peer: NodeId, s: &TcpStream) -> Result<(), HandshakeError> {
        let io = |source| HandshakeError::Io { peer, source };
        s.set_nonblocking(false).map_err(io)?;
        s.set_nodelay(true).map_err(io)
    }

    /// Time left before the deadline, or the timeout error naming `peer`.
    fn check_deadline(&self, peer: NodeId) -> Result<Duration, HandshakeError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandshakeError::Timeout {
                peer,
                addr: self.addrs[&peer],
                after: self.timeout,
            });
        }
        Ok(left)
    }

    fn send(&self, peer: NodeId, mut s: &TcpStream, b: &[u8]) -> Result<(), HandshakeError> {
        s.set_write_timeout(Some(self.check_deadline(peer)?))
            .and_then(|()| s.write_all(b))
            .map_err(|e| self.failed(peer, e))
    }

    fn recv(&self, peer: NodeId, mut s: &TcpStream, b: &mut [u8]) -> Result<(), HandshakeError> {
        s.set_read_timeout(Some(self.check_deadline(peer)?))
            .and_then(|()| s.read_exact(b))
            .map_err(|e| self.failed(peer, e))
    }

    fn failed(&self, peer: NodeId, e: std::io::Error) -> HandshakeError {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => HandshakeError::Timeout {
                peer,
                addr: self.addrs[&peer],
                after: self.timeout,
            },
            _ => HandshakeError::Io { peer, source: e },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(seed: u32) -> QpInfo {
        QpInfo {
            qp_num: seed,
            psn: seed & 0xff_ffff,
            lid: seed as u16,
            gid: [seed as u8; 16],
            ring_addr: u64::from(seed) << 20,
            ring_rkey: seed ^ 0x5555,
            ring_len: 4096,
            credit_addr: u64::from(seed) << 12,
            credit_rkey: seed ^ 0xaaaa,
            mtu: 5,
            recv_depth: 4096,
        }
    }

    fn free_addrs(n: u32) -> BTreeMap<NodeId, SocketAddr> {
        // Bind to port 0 to get free ports, then release them for the handshake to bind.
        (1..=n)
            .map(|i| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                (NodeId(i), l.local_addr().unwrap())
            })
            .collect()
    }

    #[test]
    fn info_round_trips_and_bad_bytes_are_errors() {
        let i = info(0x0012_3456);
        assert_eq!(QpInfo::decode(&i.encode()).unwrap(), i);
        let mut b = i.encode();
        b[0] ^= 1;
        assert!(QpInfo::decode(&b).unwrap_err().contains("magic"));
        let mut b = i.encode();
        b[8] = 9;
        assert!(QpInfo::decode(&b).unwrap_err().contains("version"));
        assert!(QpInfo::decode(&b[..10]).unwrap_err().contains("expected"));
        let odd = QpInfo { ring_len: 12, ..i };
        assert!(QpInfo::decode(&odd.encode())
            .unwrap_err()
            .contains("multiple of 8"));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = QpInfo::decode(&b);
        }
    }

    #[test]
    fn three_members_swap_infos_pairwise_and_meet_at_the_barrier() {
        let addrs = free_addrs(3);
        let members: Vec<_> = addrs.keys().copied().collect();
        let threads: Vec<_> = members
            .iter()
            .map(|&me| {
                let addrs = addrs.clone();
                std::thread::spawn(move || {
                    let mut hs =
                        Handshake::connect(7, me, &addrs, Duration::from_secs(10)).unwrap();
                    // The info this member sends to `peer` encodes the pair (me, peer).
                    let mine = addrs
                        .keys()
                        .filter(|&&p| p != me)
                        .map(|&p| (p, info(me.0 * 100 + p.0)))
                        .collect();
                    let theirs = hs.exchange(&mine).unwrap();
                    hs.barrier().unwrap();
                    (me, theirs)
                })
            })
            .collect();
        for t in threads {
            let (me, theirs) = t.join().unwrap();
            let peers: Vec<_> = theirs.keys().copied().collect();
            assert_eq!(
                peers,
                members
                    .iter()
                    .copied()
                    .filter(|&p| p != me)
                    .collect::<Vec<_>>()
            );
            for (p, i) in theirs {
                assert_eq!(
                    i,
                    info(p.0 * 100 + me.0),
                    "node {me} got {p}'s info for the pair"
                );
            }
        }
    }

    #[test]
    fn a_member_of_another_cluster_is_refused_by_name() {
        let addrs = free_addrs(2);
        let a = {
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                Handshake::connect(1, NodeId(1), &addrs, Duration::from_secs(5)).err()
            })
        };
        // Node 2 dials node 1, which reads the hello and refuses it; node 2 sees the
        // connection closed.
        let b = Handshake::connect(2, NodeId(2), &addrs, Duration::from_secs(5)).err();
        let a = a.join().unwrap().expect("cluster mismatch");
        let text = a.to_string();
        assert!(
            text.contains("cluster 1") && text.contains("cluster 2"),
            "{text}"
        );
        assert!(b.is_some(), "node 2 fails too");
    }

    #[test]
    fn a_missing_peer_times_out_naming_it() {
        let addrs = free_addrs(2);
        let e = Handshake::connect(1, NodeId(2), &addrs, Duration::from_millis(300))
            .err()
            .expect("node 1 never starts");
        assert!(
            matches!(
                e,
                HandshakeError::Timeout {
                    peer: NodeId(1),
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains(&addrs[&NodeId(1)].to_string()),
            "{e}"
        );
    }
}
