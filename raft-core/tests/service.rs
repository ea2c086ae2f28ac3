//! The client service and the client library, end to end: three nodes over the in-process
//! `mem` transport, a TCP server per node on loopback, and clients. Every blocking step has
//! a timeout, so a failure ends the test instead of hanging it.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_raft::client::{
    Client, ClientConfig, ClientError, Connection, DistributedDict, RefreshPolicy,
};
use weft_raft::kv::KvOutcome;
use weft_raft::node::{NoStore, Node, NodeConfig, NodeHandle};
use weft_raft::service::protocol::{
    decode, encode_frame, read_frame, ClientReply, ClientRequest, Consistency, ErrorKind, Reply,
    Request, DEFAULT_MAX_FRAME, UNKNOWN_REQUEST,
};
use weft_raft::service::{serve, Server, ServerConfig};
use weft_raft::{NodeId, Persisted};
use weft_transport::{open, TransportConfig};

const WAIT: Duration = Duration::from_secs(20);

fn transport(cluster: u64, id: u32, n: u32) -> Box<dyn weft_transport::Transport> {
    open(&TransportConfig::mem(cluster, NodeId(id), n)).unwrap()
}

/// Three nodes, a server per node, each server knowing every server's address.
struct Cluster {
    // Servers first: they stop before the nodes they serve.
    servers: Vec<Server>,
    nodes: Vec<Node>,
}

impl Cluster {
    fn start(cluster: u64) -> Cluster {
        let n = 3;
        let nodes: Vec<Node> = (1..=n)
            .map(|id| {
                let mut cfg = NodeConfig::new(NodeId(id), (1..=n).map(NodeId));
                cfg.tick = Duration::from_millis(10);
                cfg.snapshot_entries = 500;
                Node::start(
                    cfg,
                    Persisted::default(),
                    Box::new(NoStore),
                    transport(cluster, id, n),
                )
                .unwrap()
            })
            .collect();
        let servers: Vec<Server> = nodes
            .iter()
            .map(|node| {
                let mut cfg = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
                cfg.cluster = Some(cluster);
                serve(cfg, node.handle()).unwrap()
            })
            .collect();
        for s in &servers {
            for (i, other) in servers.iter().enumerate() {
                s.set_peer_client(NodeId(i as u32 + 1), other.local_addr());
            }
        }
        let c = Cluster { servers, nodes };
        c.leader(); // wait for an election
        c
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(Server::local_addr).collect()
    }

    fn handle(&self, i: usize) -> NodeHandle {
        self.nodes[i].handle()
    }

    /// The index of the leader once every node agrees on it.
    fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let statuses: Vec<_> = (0..self.nodes.len())
                .filter_map(|i| self.handle(i).status())
                .collect();
            if let Some(l) = statuses.iter().find(|s| s.role == "Leader") {
                if statuses.len() == self.nodes.len()
                    && statuses.iter().all(|s| s.leader == Some(l.id))
                {
                    return l.id.0 as usize - 1;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no leader elected");
    }

    fn follower(&self) -> usize {
        (self.leader() + 1) % self.nodes.len()
    }

    fn client(&self) -> Client {
        Client::new(ClientConfig::new(self.addrs())).unwrap()
    }

    fn term(&self, i: usize) -> u64 {
        self.handle(i).status().map_or(0, |s| s.term)
    }

    /// Runs `check(leader, follower, attempt)`; a failure fails the test only if no
    /// election happened meanwhile (on a starved machine one can), else it runs again.
    fn without_elections(&self, check: impl Fn(usize, usize, u64) -> Result<(), String>) {
        for attempt in 0..5 {
            let l = self.leader();
            let term = self.term(l);
            match check(l, (l + 1) % self.nodes.len(), attempt) {
                Ok(()) => return,
                Err(e) if self.leader() == l && self.term(l) == term => panic!("{e}"),
                Err(e) => eprintln!("an election interfered ({e}); checking again"),
            }
        }
        panic!("elections kept interfering");
    }
}

/// `Err(message)` unless `got == want`.
fn same<T: PartialEq + std::fmt::Debug>(got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("got {got:?}, expected {want:?}"))
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn conn(addr: SocketAddr) -> Connection {
    Connection::connect(addr, Duration::from_secs(2), DEFAULT_MAX_FRAME).unwrap()
}

#[test]
fn put_get_cas_delete_and_get_all_round_trip() {
    let c = Cluster::start(0x5E41_0001);
    let mut cl = c.client();
    assert_eq!(cl.put("a", "1").unwrap(), None);
    assert_eq!(cl.get("a").unwrap(), Some(b("1")));
    assert_eq!(cl.put("a", "2").unwrap(), Some(b("1")));
    let swapped = cl.cas("a", Some(b("2")), Some(b("3"))).unwrap();
    assert!(swapped.swapped);
    assert_eq!(swapped.current, Some(b("2")));
    let refused = cl.cas("a", Some(b("2")), Some(b("4"))).unwrap();
    assert!(!refused.swapped);
    assert_eq!(refused.current, Some(b("3")));
    assert!(cl.cas("new", None, Some(b("n"))).unwrap().swapped);
    assert_eq!(cl.delete("a").unwrap(), Some(b("3")));
    assert_eq!(cl.get("a").unwrap(), None);
    assert_eq!(cl.delete("a").unwrap(), None);
    cl.put("b", "x").unwrap();
    cl.put("c", Bytes::from(vec![0u8, 255, 7])).unwrap();
    let all = cl.get_all().unwrap();
    let want: BTreeMap<String, Bytes> = [
        ("b".to_string(), b("x")),
        ("c".to_string(), Bytes::from(vec![0u8, 255, 7])),
        ("new".to_string(), b("n")),
    ]
    .into_iter()
    .collect();
    assert_eq!(all, want);
    assert_eq!(cl.last_seq(), 9);

    // Reads at a follower: linearizable ones see the last write at once (ReadIndex);
    // stale ones catch up.
    let follower = c.addrs()[c.follower()];
    let mut at_follower = Client::new(ClientConfig::new([follower])).unwrap();
    assert_eq!(at_follower.get("b").unwrap(), Some(b("x")));
    assert_eq!(at_follower.target(), follower, "reads are not redirected");
    let deadline = Instant::now() + WAIT;
    while at_follower.get_with("new", Consistency::Stale).unwrap() != Some(b("n")) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }

    // Exactly once through the service: the same (client, seq) twice, one effect.
    c.without_elections(|l, _, attempt| {
        let mut raw_conn = conn(c.addrs()[l]);
        let put = |value: &str| Request::Put {
            client: 0xD00D + attempt,
            seq: 1,
            key: format!("once{attempt}"),
            value: b(value),
        };
        let first = raw_conn.call(put("v1"), WAIT).unwrap();
        let again = raw_conn.call(put("v2"), WAIT).unwrap();
        same(
            &first,
            &Reply::Written {
                outcome: KvOutcome::Done { previous: None },
            },
        )?;
        same(&again, &first)?;
        same(
            c.client().get(&format!("once{attempt}")).unwrap(),
            Some(b("v1")),
        )
    });

    // Diagnostics, from any node.
    let s = cl.status().unwrap();
    assert_eq!(s.membership.voters.len(), 3);
    assert!(s.commit >= 11 && s.applied <= s.commit, "{s:?}");
    assert_eq!(s.writes_per_s.len(), 10);
    c.without_elections(|l, f, _| {
        let ls = cl.status_of(c.addrs()[l]).unwrap();
        same(ls.role.as_str(), "Leader")?;
        same(ls.voted_for, Some(ls.id))?;
        assert!(ls.writes_per_s.iter().sum::<u64>() >= 9, "{ls:?}");
        assert!(ls.reads_per_s.iter().sum::<u64>() >= 1, "{ls:?}");
        let fs = cl.status_of(c.addrs()[f]).unwrap();
        same(fs.role.as_str(), "Follower")?;
        same(fs.leader, Some(ls.id))?;
        same(fs.term, ls.term)
    });
}

#[test]
fn writes_sent_to_a_follower_are_redirected() {
    let c = Cluster::start(0x5E41_0002);
    c.without_elections(|l, f, attempt| {
        let (leader, follower) = (c.addrs()[l], c.addrs()[f]);
        let mut fc = conn(follower);
        let want = Reply::Redirect {
            leader: Some(NodeId(l as u32 + 1)),
            address: Some(leader.to_string()),
        };
        let put = Request::Put {
            client: 77,
            seq: 1,
            key: "k".into(),
            value: b("v"),
        };
        same(fc.call(put, WAIT).unwrap(), want.clone())?;
        let cas = Request::Cas {
            client: 77,
            seq: 1,
            key: "k".into(),
            expected: None,
            new: None,
        };
        same(fc.call(cas, WAIT).unwrap(), want.clone())?;
        let del = Request::Delete {
            client: 77,
            seq: 1,
            key: "k".into(),
        };
        same(fc.call(del, WAIT).unwrap(), want.clone())?;
        let config = Request::Config {
            changes: vec![weft_raft::Change::AddLearner(NodeId(9))],
        };
        same(fc.call(config, WAIT).unwrap(), want.clone())?;
        let transfer = Request::TransferLeader {
            to: NodeId(f as u32 + 1),
        };
        same(fc.call(transfer, WAIT).unwrap(), want.clone())?;

        // A client that only knows the follower follows the redirect and stays at the
        // leader.
        let mut cl = Client::new(ClientConfig::new([follower])).unwrap();
        let key = format!("k{attempt}");
        assert_eq!(cl.put(&key, "v").unwrap(), None);
        same(cl.target(), leader)?;
        same(cl.addresses(), &[follower, leader][..])?;
        assert_eq!(cl.get(&key).unwrap(), Some(b("v")));
        Ok(())
    });
}

/// Sends 1000 requests on one connection before reading any reply, then reads them all;
/// every write is under its own `client` id from `base` on. Returns the ids of the
/// acknowledged puts, whose keys are `p{base + id}`.
fn pipeline(c: &Cluster, addr: SocketAddr, base: u64) -> Vec<u64> {
    let stream = raw(addr);
    let mut writer = stream.try_clone().unwrap();
    const N: u64 = 1000;
    let request = move |id: u64| -> Request {
        match id % 4 {
            // Each write its own session, so the order of arrival cannot make one stale.
            0 | 1 => Request::Put {
                client: base + id,
                seq: 1,
                key: format!("p{}", base + id),
                value: Bytes::from(id.to_string()),
            },
            2 => Request::Get {
                key: format!("p{}", base + id - 1),
                consistency: Consistency::Linearizable,
            },
            _ => Request::Get {
                key: format!("p{}", base + id - 3),
                consistency: Consistency::Stale,
            },
        }
    };
    let sender = std::thread::spawn(move || {
        // All frames go out before any reply is read.
        let mut batch = Vec::new();
        for id in 1..=N {
            batch.extend(
                encode_frame(&ClientRequest {
                    id,
                    body: request(id),
                })
                .unwrap(),
            );
        }
        writer.write_all(&batch).unwrap();
    });
    let mut reader = std::io::BufReader::new(stream);
    let mut seen = HashSet::new();
    let mut out_of_order = false;
    let mut last = 0;
    let mut written = Vec::new();
    let mut redirected = 0;
    while seen.len() < N as usize {
        let reply: ClientReply =
            decode(&read_frame(&mut reader, DEFAULT_MAX_FRAME).unwrap()).unwrap();
        assert!((1..=N).contains(&reply.id), "{reply:?}");
        assert!(seen.insert(reply.id), "answered twice: {reply:?}");
        out_of_order |= reply.id < last;
        last = reply.id;
        match (reply.id % 4, &reply.body) {
            (0 | 1, Reply::Written { outcome }) => {
                assert_eq!(outcome, &KvOutcome::Done { previous: None });
                written.push(reply.id);
            }
            (2 | 3, Reply::Value { .. }) => {}
            // Leadership moved meanwhile (a starved machine can miss heartbeats).
            (_, Reply::Redirect { .. }) => redirected += 1,
            (_, Reply::Error { kind, .. }) if kind.is_transient() => redirected += 1,
            _ => panic!("reply {reply:?} does not match its request"),
        }
    }
    if redirected > 0 {
        eprintln!("{redirected} requests met a leadership change");
    }
    sender.join().unwrap();
    // Stale reads answer at once and writes wait for a commit: replies overtake each
    // other. (Logged, not asserted: the order depends on timing.)
    eprintln!("replies came out of request order: {out_of_order}");
    // Every acknowledged put is readable afterwards.
    let mut cl = c.client();
    let all = cl.get_all().unwrap();
    for id in &written {
        assert_eq!(
            all.get(&format!("p{}", base + id)),
            Some(&Bytes::from(id.to_string()))
        );
    }
    written
}

#[test]
fn a_thousand_pipelined_requests_on_one_connection_are_all_answered() {
    let c = Cluster::start(0x5E41_0003);
    c.without_elections(|l, _, attempt| {
        let written = pipeline(&c, c.addrs()[l], 1_000_000 * (attempt + 1));
        same(written.len(), 500)
    });
    // With room for only 8 requests in flight, the server stops reading until replies go
    // out: slower, but everything is still answered.
    c.without_elections(|l, _, attempt| {
        let mut cfg = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.max_in_flight = 8;
        let narrow = serve(cfg, c.handle(l)).unwrap();
        let written = pipeline(&c, narrow.local_addr(), 100_000_000 * (attempt + 1));
        same(written.len(), 500)
    });
}

/// Replies are written on the answering thread while nothing is queued ahead of them;
/// a reply the socket takes only in part queues its rest for the connection's writer, and
/// later ones queue behind it. A client reads only after the socket buffers fill, and
/// asks for more while it reads (so answers come while the writer still has a queue):
/// every reply still arrives whole, once, with its own id.
#[test]
fn replies_larger_than_the_socket_buffers_arrive_whole_to_a_late_reader() {
    let c = Cluster::start(0x5E41_0009);
    let value = Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let mut cl = c.client();
    cl.put("big", value.clone()).unwrap();
    // A small receive buffer, set before connecting, so that the window stays small.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    socket.connect(&c.addrs()[c.leader()].into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let get = |id: u64| {
        let body = Request::Get {
            key: "big".into(),
            consistency: Consistency::Stale,
        };
        encode_frame(&ClientRequest { id, body }).unwrap()
    };
    const N: u64 = 80;
    for id in 1..=N / 2 {
        writer.write_all(&get(id)).unwrap();
    }
    // 12 MB of replies against a few hundred kB of buffers: the server meets a full socket.
    std::thread::sleep(Duration::from_millis(300));
    let sender = std::thread::spawn(move || {
        for id in N / 2 + 1..=N {
            writer.write_all(&get(id)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut reader = std::io::BufReader::new(stream);
    let mut seen = HashSet::new();
    while seen.len() < N as usize {
        let reply: ClientReply =
            decode(&read_frame(&mut reader, DEFAULT_MAX_FRAME).unwrap()).unwrap();
        assert!(seen.insert(reply.id), "answered twice: {}", reply.id);
        match reply.body {
            Reply::Value { value: Some(v) } => assert!(v == value, "reply {} garbled", reply.id),
            other => panic!("reply {} is {other:?}", reply.id),
        }
    }
    sender.join().unwrap();
    assert_eq!(seen, (1..=N).collect::<HashSet<_>>());
}

#[test]
fn sixteen_concurrent_clients_all_acknowledged_writes_are_readable() {
    let c = Cluster::start(0x5E41_0004);
    let addrs = c.addrs();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                let mut cl = Client::new(ClientConfig::new(addrs)).unwrap();
                let mut acked = Vec::new();
                for i in 0..200 {
                    let key = format!("c{t}-{i}");
                    let value = format!("v{t}-{i}");
                    if cl.put(&key, value.clone()).is_ok() {
                        acked.push((key, value));
                    }
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in threads {
        acked.extend(t.join().unwrap());
    }
    assert!(
        acked.len() >= 3000,
        "only {} of 3200 writes acknowledged",
        acked.len()
    );
    let mut cl = c.client();
    let all = cl.get_all().unwrap();
    for (k, v) in &acked {
        assert_eq!(all.get(k), Some(&b(v)), "acknowledged write {k} lost");
    }
    // And every node converges on the same dictionary.
    for addr in c.addrs() {
        let mut one = Client::new(ClientConfig::new([addr])).unwrap();
        assert_eq!(one.get_all().unwrap(), all);
    }
}

/// Reads what the server sends until it closes the connection (or 10 s pass).
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server neither answered nor closed: {e}"),
        }
    }
}

/// If `bytes` holds a reply, it is an error of `kind`.
fn error_reply_or_nothing(bytes: &[u8], kind: ErrorKind) {
    if bytes.is_empty() {
        return; // closed without a word: allowed
    }
    let reply: ClientReply =
        decode(&read_frame(&mut &bytes[..], DEFAULT_MAX_FRAME).unwrap()).unwrap();
    match reply.body {
        Reply::Error { kind: k, .. } if k == kind => {}
        other => panic!("expected a {kind:?} error, got {other:?}"),
    }
}

fn still_serves(addr: SocketAddr) {
    answers_diagnostic(&mut conn(addr));
}

/// The node behind `c` answers a diagnostic on it.
fn answers_diagnostic(c: &mut Connection) {
    match c.call(Request::Diagnostic, WAIT).unwrap() {
        Reply::Status { .. } => {}
        other => panic!("{other:?}"),
    }
}

/// The server reads ahead: frames split anywhere (inside the length prefix too) and
/// frames sharing one segment are each answered once, in any mix.
#[test]
fn frames_in_pieces_and_frames_sharing_a_segment_are_each_answered() {
    let c = Cluster::start(0x5E41_0012);
    let addr = c.addrs()[c.follower()];
    let frame = |id| {
        encode_frame(&ClientRequest {
            id,
            body: Request::Diagnostic,
        })
        .unwrap()
    };
    let mut s = raw(addr);
    // One frame a byte at a time, each byte its own segment.
    s.set_nodelay(true).unwrap();
    for byte in frame(1) {
        s.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    // Three frames in one write, the last one's tail held back for a moment.
    let mut three: Vec<u8> = [2, 3, 4].into_iter().flat_map(frame).collect();
    let tail = three.split_off(three.len() - 3);
    s.write_all(&three).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    s.write_all(&tail).unwrap();
    let mut reader = std::io::BufReader::new(s);
    let mut ids: Vec<u64> = (0..4)
        .map(|_| {
            let reply: ClientReply =
                decode(&read_frame(&mut reader, DEFAULT_MAX_FRAME).unwrap()).unwrap();
            assert!(matches!(reply.body, Reply::Status { .. }), "{reply:?}");
            reply.id
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4]);
}

#[test]
fn bad_input_gets_an_error_or_a_close_and_the_server_keeps_serving() {
    let c = Cluster::start(0x5E41_0005);
    let addr = c.addrs()[c.follower()];

    // Garbage bytes: the first four read as a huge length.
    let mut s = raw(addr);
    s.write_all(b"\xde\xad\xbe\xefthis is not messagepack at all")
        .unwrap();
    error_reply_or_nothing(&read_until_closed(&mut s), ErrorKind::FrameTooLarge);
    still_serves(addr);

    // An oversized length prefix, with some of its body.
    let mut s = raw(addr);
    s.write_all(&(DEFAULT_MAX_FRAME as u32 + 1).to_be_bytes())
        .unwrap();
    s.write_all(&[0u8; 1000]).unwrap();
    error_reply_or_nothing(&read_until_closed(&mut s), ErrorKind::FrameTooLarge);
    still_serves(addr);

    // A truncated frame: 100 bytes announced, 10 sent, then the client stops writing.
    let mut s = raw(addr);
    s.write_all(&100u32.to_be_bytes()).unwrap();
    s.write_all(&[0x82; 10]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(
        read_until_closed(&mut s).is_empty(),
        "no reply to half a frame"
    );
    still_serves(addr);

    // A truncated length prefix.
    let mut s = raw(addr);
    s.write_all(&[0, 0]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(read_until_closed(&mut s).is_empty());

    // Well-framed but wrong: each gets a BadRequest reply, and the connection goes on.
    let mut s = raw(addr);
    let wrong_type = encode_frame(&ClientReply {
        id: 42,
        body: Reply::TransferStarted,
    })
    .unwrap();
    let mut frames = vec![
        (wrong_type, 42),
        (encode_frame(&12345u32).unwrap(), UNKNOWN_REQUEST),
        (encode_frame(&"just a string").unwrap(), UNKNOWN_REQUEST),
        (0u32.to_be_bytes().to_vec(), UNKNOWN_REQUEST),
        (
            [&3u32.to_be_bytes()[..], &b"\xc1\xc1\xc1"[..]].concat(),
            UNKNOWN_REQUEST,
        ),
    ];
    // Random payloads (deterministic), correctly framed.
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 64) as usize;
        let payload: Vec<u8> = (0..len)
            .map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8)
            .collect();
        frames.push((
            [&(len as u32).to_be_bytes()[..], &payload[..]].concat(),
            u64::MAX,
        ));
    }
    let valid = encode_frame(&ClientRequest {
        id: 7,
        body: Request::Diagnostic,
    })
    .unwrap();
    for (frame, id) in &frames {
        s.write_all(frame).unwrap();
        let reply: ClientReply = decode(&read_frame(&mut s, DEFAULT_MAX_FRAME).unwrap()).unwrap();
        if *id != u64::MAX {
            assert_eq!(reply.id, *id);
        }
        assert!(
            matches!(
                reply.body,
                Reply::Error {
                    kind: ErrorKind::BadRequest,
                    ..
                }
            ),
            "{reply:?}"
        );
    }
    s.write_all(&valid).unwrap();
    let reply: ClientReply = decode(&read_frame(&mut s, DEFAULT_MAX_FRAME).unwrap()).unwrap();
    assert_eq!(reply.id, 7);
    assert!(matches!(reply.body, Reply::Status { .. }));

    // A client that disconnects with requests in flight does not disturb anything.
    let mut s = raw(c.addrs()[c.leader()]);
    for id in 1..=50u64 {
        let req = ClientRequest {
            id,
            body: Request::Put {
                client: 4242,
                seq: id,
                key: "gone".into(),
                value: b("x"),
            },
        };
        s.write_all(&encode_frame(&req).unwrap()).unwrap();
    }
    drop(s);

    // A server with a small maximum frame: a larger request closes the connection with an
    // error; a reply too large for a frame becomes an error reply.
    let mut cfg = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.max_frame = 1024;
    let small = serve(cfg, c.handle(c.leader())).unwrap();
    let mut cl = c.client();
    for i in 0..4 {
        cl.put(&format!("big{i}"), vec![b'x'; 500]).unwrap();
    }
    let mut sc = conn(small.local_addr());
    match sc
        .call(
            Request::GetAll {
                consistency: Consistency::Stale,
            },
            WAIT,
        )
        .unwrap()
    {
        Reply::Error {
            kind: ErrorKind::FrameTooLarge,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let mut s = raw(small.local_addr());
    let big = encode_frame(&ClientRequest {
        id: 1,
        body: Request::Put {
            client: 5,
            seq: 1,
            key: "big".into(),
            value: Bytes::from(vec![0u8; 2000]),
        },
    })
    .unwrap();
    s.write_all(&big).unwrap();
    error_reply_or_nothing(&read_until_closed(&mut s), ErrorKind::FrameTooLarge);
    still_serves(small.local_addr());
    drop(small);

    still_serves(addr);
    cl.put("after", "ok").unwrap();
    assert_eq!(cl.get("after").unwrap(), Some(b("ok")));
}

/// Two clusters side by side, each with its own value under the same key. A client that
/// names its cluster skips the other cluster's node in its address list (the mix-up a
/// port taken over by another cluster's node causes) and never reads or writes the other's
/// data; a hello for the wrong cluster gets a clear error and the connection is closed.
#[test]
fn a_client_naming_its_cluster_never_uses_another_clusters_node() {
    const A: u64 = 0x5E41_0010;
    const B: u64 = 0x5E41_0011;
    let (ours, theirs) = (Cluster::start(A), Cluster::start(B));
    theirs.client().put("k", "b").unwrap();
    let stranger = theirs.addrs()[0];
    let mut started_at_stranger = 0;
    // Clients start at a random address: go on until five started at the stranger.
    for i in 0..400 {
        if started_at_stranger == 5 {
            break;
        }
        let mut cfg = ClientConfig::new([stranger].into_iter().chain(ours.addrs()));
        cfg.cluster = Some(A);
        let mut cl = Client::new(cfg).unwrap();
        if cl.target() == stranger {
            started_at_stranger += 1;
        }
        let value = format!("a{i}");
        cl.put("k", value.clone()).unwrap();
        assert_eq!(cl.get("k").unwrap(), Some(Bytes::from(value)));
    }
    assert_eq!(
        started_at_stranger, 5,
        "clients rarely tried the stranger first"
    );
    assert_eq!(
        theirs.client().get("k").unwrap(),
        Some(b("b")),
        "cluster B untouched"
    );

    // Only the stranger: a clear error, no data.
    let mut cfg = ClientConfig::new([stranger]);
    cfg.cluster = Some(A);
    cfg.max_total = Duration::from_secs(1);
    match Client::new(cfg).unwrap().get("k") {
        Err(ClientError::GaveUp { last, .. }) => {
            assert!(last.contains("belongs to cluster"), "{last}")
        }
        other => panic!("{other:?}"),
    }

    // On the wire.
    let mut wrong = conn(stranger);
    match wrong.hello(A, WAIT) {
        Err(ClientError::WrongCluster { addr, message }) => {
            assert_eq!(addr, stranger);
            assert!(message.contains(&B.to_string()), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        wrong.call(Request::Diagnostic, WAIT).is_err(),
        "the connection is closed after a wrong hello"
    );
    let mut right = conn(stranger);
    assert_eq!(right.hello(B, WAIT).unwrap(), NodeId(1));
    assert!(matches!(
        right.call(Request::Diagnostic, WAIT).unwrap(),
        Reply::Status { .. }
    ));
}

#[test]
fn a_write_retried_after_a_timeout_reuses_its_seq() {
    // A fake server: swallows the first request, answers the second.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let (mut first, _) = listener.accept().unwrap();
        let req: ClientRequest =
            decode(&read_frame(&mut first, DEFAULT_MAX_FRAME).unwrap()).unwrap();
        seen.push(req.body.clone());
        // No answer: the client times out, reconnects and resends.
        let (mut second, _) = listener.accept().unwrap();
        let req: ClientRequest =
            decode(&read_frame(&mut second, DEFAULT_MAX_FRAME).unwrap()).unwrap();
        seen.push(req.body.clone());
        let reply = ClientReply {
            id: req.id,
            body: Reply::Written {
                outcome: KvOutcome::Done { previous: None },
            },
        };
        second.write_all(&encode_frame(&reply).unwrap()).unwrap();
        drop(first);
        seen
    });
    let mut cfg = ClientConfig::new([addr]);
    cfg.request_timeout = Duration::from_millis(200);
    cfg.max_total = Duration::from_secs(10);
    let mut cl = Client::new(cfg).unwrap();
    assert_eq!(cl.put("k", "v").unwrap(), None);
    let seen = fake.join().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], seen[1], "the retry is the very same write");
    match &seen[0] {
        Request::Put { client, seq, .. } => {
            assert_eq!(*client, cl.client_id());
            assert_eq!(*seq, 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cl.last_seq(), 1);
}

#[test]
fn distributed_dict_refresh_policies() {
    let c = Cluster::start(0x5E41_0006);
    let mut w = c.client();
    w.put("k", "1").unwrap();

    // Always: every read fetches.
    let mut d = DistributedDict::new(c.client(), RefreshPolicy::Always).unwrap();
    assert_eq!(d.get("k").unwrap(), Some(b("1")));
    w.put("k", "2").unwrap();
    assert_eq!(d.get("k").unwrap(), Some(b("2")));
    assert_eq!(d.refreshes(), 3, "one at creation, one per read");

    // Count(3): reads 1 and 2 use the copy, read 3 fetches; and again.
    let mut d = DistributedDict::new(c.client(), RefreshPolicy::Count(3)).unwrap();
    w.put("k", "3").unwrap();
    assert_eq!(d.get("k").unwrap(), Some(b("2")));
    assert_eq!(d.get("k").unwrap(), Some(b("2")));
    assert_eq!(d.refreshes(), 1);
    assert_eq!(d.get("k").unwrap(), Some(b("3")));
    assert_eq!(d.refreshes(), 2);
    w.put("k", "4").unwrap();
    assert_eq!(d.get("k").unwrap(), Some(b("3")));
    assert!(!d.contains_key("other").unwrap());
    assert_eq!(d.refreshes(), 2);
    assert_eq!(d.get("k").unwrap(), Some(b("4")));
    assert_eq!(d.refreshes(), 3);

    // Time(d): the copy serves reads until it is older than d.
    let period = Duration::from_millis(400);
    let mut d = DistributedDict::new(c.client(), RefreshPolicy::Time(period)).unwrap();
    w.put("k", "5").unwrap();
    if d.last_refresh().elapsed() < period / 2 {
        assert_eq!(d.get("k").unwrap(), Some(b("4")));
        assert_eq!(d.get("k").unwrap(), Some(b("4")));
        assert_eq!(d.refreshes(), 1);
    }
    std::thread::sleep(period + Duration::from_millis(50));
    assert_eq!(d.get("k").unwrap(), Some(b("5")));
    assert_eq!(d.refreshes(), 2);

    // Lock: a toggle. Set (the default), reads fetch; unset, reads use the copy.
    let mut d = DistributedDict::new(c.client(), RefreshPolicy::Lock { refresh: true }).unwrap();
    w.put("k", "6").unwrap();
    assert_eq!(d.get("k").unwrap(), Some(b("6")));
    d.set_refreshing(false);
    w.put("k", "7").unwrap();
    w.put("other", "x").unwrap();
    assert_eq!(d.get("k").unwrap(), Some(b("6")));
    assert_eq!(d.len().unwrap(), 1);
    let before = d.refreshes();
    assert_eq!(d.get("k").unwrap(), Some(b("6")));
    assert_eq!(d.refreshes(), before);
    // Its own writes show even with refreshing off.
    assert_eq!(d.insert("mine", "m").unwrap(), None);
    assert_eq!(d.get("mine").unwrap(), Some(b("m")));
    assert!(d
        .compare_and_set("k", Some(b("6")), Some(b("z")))
        .is_ok_and(|o| !o.swapped));
    assert_eq!(
        d.get("k").unwrap(),
        Some(b("7")),
        "a failed cas teaches the current value"
    );
    d.set_refreshing(true);
    assert_eq!(
        d.keys().unwrap(),
        vec!["k".to_string(), "mine".to_string(), "other".to_string()]
    );
    assert_eq!(d.refreshes(), before + 1);
    assert_eq!(d.remove("mine").unwrap(), Some(b("m")));
    assert_eq!(w.get("mine").unwrap(), None);
}

#[test]
fn membership_changes_and_leadership_transfer_through_the_client() {
    let c = Cluster::start(0x5E41_0007);
    let mut cl = c.client();
    cl.put("x", "1").unwrap();
    let settled = |cl: &mut Client, pred: &dyn Fn(&weft_raft::Membership) -> bool| {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = cl.status().unwrap();
            if !s.membership.is_joint() && pred(&s.membership) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "membership stuck at {:?}",
                s.membership
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // Node 4 never runs: three of four voters still make both joint majorities.
    assert!(cl.add_node(NodeId(4)).unwrap() > 0);
    // Another change while the first is in progress is retried until it is accepted.
    assert!(cl.remove_node(NodeId(4)).unwrap() > 0);
    settled(&mut cl, &|m| {
        m.voters.len() == 3 && !m.voters.contains(&NodeId(4))
    });
    assert!(cl.add_learner(NodeId(5)).unwrap() > 0);
    settled(&mut cl, &|m| m.learners.contains(&NodeId(5)));
    cl.remove_node(NodeId(5)).unwrap();
    settled(&mut cl, &|m| !m.members().contains(&NodeId(5)));
    // A change that can never be valid is refused for good, not retried.
    match cl.change_membership(vec![]) {
        Err(ClientError::Server {
            kind: ErrorKind::Refused,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }

    let target = c.follower();
    cl.transfer_leader(NodeId(target as u32 + 1)).unwrap();
    let deadline = Instant::now() + WAIT;
    while c.handle(target).status().is_none_or(|s| s.role != "Leader") {
        assert!(
            Instant::now() < deadline,
            "leadership never moved to {target}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The client finds the new leader by itself.
    cl.put("x", "2").unwrap();
    assert_eq!(cl.get("x").unwrap(), Some(b("2")));
}

/// The resident memory of this process, in bytes.
fn resident() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A write too large for the log is refused with its own error naming the limit (at the
/// service: `service.max_key` or `service.max_value`; past a service that lets it through:
/// `raft.max_entry_bytes`), nothing is appended, and the next small write commits.
#[test]
fn an_oversize_write_is_refused_naming_its_limit_and_the_next_write_commits() {
    let c = Cluster::start(0x5E_0011);
    let defaults = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut cl = c.client();
    let too_large = |r: Result<(), ClientError>, limit: &str| match r {
        Err(ClientError::Server {
            kind: ErrorKind::TooLarge,
            message,
        }) => assert!(message.contains(limit), "{message}"),
        other => panic!("expected a TooLarge error naming {limit}, got {other:?}"),
    };
    too_large(
        cl.put("v", vec![0u8; defaults.max_value + 1]).map(drop),
        "service.max_value",
    );
    too_large(
        cl.put(&"k".repeat(1 << 20), "x").map(drop),
        "service.max_key",
    );
    let half = Bytes::from(vec![0u8; defaults.max_value / 2 + 1]);
    too_large(
        cl.cas("v", Some(half.clone()), Some(half)).map(drop),
        "service.max_value",
    );
    // A service whose value limit is above the entry limit hands the write on: the node
    // refuses it instead of appending an entry no message could carry.
    let mut loose = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    loose.max_value = 3 << 20;
    let loose = serve(loose, c.handle(c.leader())).unwrap();
    let mut lc = Client::new(ClientConfig::new(vec![loose.local_addr()])).unwrap();
    too_large(
        lc.put("v", vec![0u8; (1 << 20) + 1]).map(drop),
        "raft.max_entry_bytes",
    );
    let before = c.handle(c.leader()).status().unwrap().last_index;
    cl.put("small", "ok").unwrap();
    assert_eq!(cl.get("small").unwrap(), Some(b("ok")));
    let after = c.handle(c.leader()).status().unwrap().last_index;
    assert_eq!(after, before + 1, "only the small write was appended");
}

/// A connection that stops inside a frame's 4-byte length prefix is closed once the
/// frame timeout passes, with an error; an idle connection between frames stays open.
#[test]
fn a_partial_length_prefix_is_closed_after_the_frame_timeout() {
    let c = Cluster::start(0x5E_0012);
    let mut cfg = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.frame_timeout = Duration::from_millis(300);
    let server = serve(cfg, c.handle(c.leader())).unwrap();
    let mut idle = conn(server.local_addr());
    let mut s = raw(server.local_addr());
    let started = Instant::now();
    s.write_all(&[0, 0]).unwrap();
    error_reply_or_nothing(&read_until_closed(&mut s), ErrorKind::BadRequest);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    std::thread::sleep(Duration::from_millis(400));
    answers_diagnostic(&mut idle);
}

/// Past `max_connections` a new connection is answered `Busy` and closed; once one
/// closes, a new one is served.
#[test]
fn connections_past_the_maximum_are_refused_busy() {
    let c = Cluster::start(0x5E_0013);
    let mut cfg = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.max_connections = 4;
    let server = serve(cfg, c.handle(c.leader())).unwrap();
    let mut held: Vec<Connection> = (0..4).map(|_| conn(server.local_addr())).collect();
    for h in &mut held {
        answers_diagnostic(h);
    }
    let mut extra = raw(server.local_addr());
    error_reply_or_nothing(&read_until_closed(&mut extra), ErrorKind::Busy);
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut again = conn(server.local_addr());
        match again.call(Request::Diagnostic, Duration::from_secs(2)) {
            Ok(Reply::Status { .. }) => break,
            other => assert!(Instant::now() < deadline, "never served again: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 200 connections each announce a frame of nearly 4 MiB and send 1 MiB of it, then
/// stall: the service reads no more than its buffer budget (16 MiB here) across them,
/// so the process grows by less than 64 MiB where it would take 200 MiB; a normal
/// client is served meanwhile, and the budget comes back once they close.
#[test]
fn slow_large_frames_are_held_to_the_buffer_budget() {
    let c = Cluster::start(0x5E_0014);
    let mut cfg = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.max_buffered_bytes = 16 << 20;
    let server = serve(cfg, c.handle(c.leader())).unwrap();
    let before = resident();
    let sent = 1usize << 20;
    let mut frame = ((4u32 << 20) - 16).to_be_bytes().to_vec();
    frame.resize(4 + sent, 0x55);
    let mut hostile: Vec<(TcpStream, usize)> = (0..200)
        .map(|_| {
            let s = raw(server.local_addr());
            s.set_nonblocking(true).unwrap();
            (s, 0)
        })
        .collect();
    // Send what the sockets take, round robin, for at most 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && hostile.iter().any(|(_, at)| *at < frame.len()) {
        let mut moved = false;
        for (s, at) in hostile.iter_mut().filter(|(_, at)| *at < frame.len()) {
            match s.write(&frame[*at..]) {
                Ok(n) => {
                    *at += n;
                    moved |= n > 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        if !moved {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = resident().saturating_sub(before);
    let mut cl = c.client();
    cl.put("served", "meanwhile").unwrap();
    assert!(grown < 64 << 20, "the process grew by {} MiB", grown >> 20);
    drop(hostile);
    // The budget is back: a large frame is read whole.
    let mut s = conn(server.local_addr());
    match s
        .call(
            Request::Put {
                client: 77,
                seq: 1,
                key: "large".into(),
                value: Bytes::from(vec![1u8; 512 << 10]),
            },
            WAIT,
        )
        .unwrap()
    {
        Reply::Written { .. } | Reply::Redirect { .. } => {}
        other => panic!("{other:?}"),
    }
}

/// A node that knows no leader answers `NoLeader` with its election timeout as the
/// retry hint, instead of a redirect to nobody.
#[test]
fn a_node_without_a_leader_answers_no_leader_with_a_hint() {
    let cluster = 0x5E_0015;
    // One node of three, alone: it never learns a leader.
    let mut cfg = NodeConfig::new(NodeId(1), (1..=3).map(NodeId));
    cfg.tick = Duration::from_millis(10);
    let node = Node::start(
        cfg,
        Persisted::default(),
        Box::new(NoStore),
        transport(cluster, 1, 3),
    )
    .unwrap();
    let server = serve(
        ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))),
        node.handle(),
    )
    .unwrap();
    let mut s = conn(server.local_addr());
    let put = Request::Put {
        client: 1,
        seq: 1,
        key: "k".into(),
        value: b("v"),
    };
    match s.call(put, WAIT).unwrap() {
        Reply::NoLeader { retry_after_ms } => assert_eq!(retry_after_ms, 100),
        other => panic!("{other:?}"),
    }
}
