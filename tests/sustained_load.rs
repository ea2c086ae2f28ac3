//! Sustained load on a cluster with a large state: three `weft node` processes are
//! preloaded with 1000-byte values under many keys, then 64 clients overwrite them, each
//! with one put in flight, for a while. The cluster must keep its leader (no election, one
//! term), fail no request, and no node may have a pass as long as the shortest election
//! timeout (peers count silence in ticks, so such passes are what lost leaders under this
//! load). The longest pass is printed against the target of three ticks, which most runs
//! meet (27-28 ms) but not every run on a machine the clients share with three nodes.
//!
//! Bounded by default (100,000 keys, 15 s of load); `WEFT_SUSTAINED=full` runs the full
//! size (400,000 keys, 60 s).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft::local_cluster::{Fabric, LocalCluster};
use weft_raft::client::Connection;
use weft_raft::service::protocol::{ClientReply, ClientRequest, Reply, Request};

/// The target for the longest pass: three ticks of the local clusters' 15 ms.
const PASS_TARGET: Duration = Duration::from_millis(45);

/// The longest pass allowed: the shortest election timeout (ten ticks).
const LONGEST_PASS: Duration = Duration::from_millis(150);

const VALUE: usize = 1000;

/// Clients writing at once, one put in flight each.
const CLIENTS: u64 = 64;

/// Threads that drive them.
const CLIENT_THREADS: u64 = 4;

fn exe() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_weft").into()
}

/// Writes `keys` keys of [`VALUE`] bytes through pipelined connections to the leader at
/// `addr`; prints progress.
fn preload(cluster: &LocalCluster, addr: std::net::SocketAddr, keys: u64) {
    const CONNECTIONS: u64 = 8;
    const DEPTH: u64 = 64;
    let done = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'p'; VALUE]);
    let cfg = cluster
        .client(Duration::from_secs(30))
        .unwrap()
        .config()
        .clone();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (cfg, value, done) = (cfg.clone(), value.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut conn = Connection::open(addr, &cfg, Duration::from_secs(10)).unwrap();
                let mine: Vec<u64> = (0..keys).filter(|k| k % CONNECTIONS == c).collect();
                let session = 0x5057_0000 + c;
                let (mut sent, mut answered) = (0usize, 0usize);
                let send = |conn: &mut Connection, i: usize| {
                    let id = conn.next_id();
                    let body = Request::Put {
                        client: session,
                        seq: i as u64 + 1,
                        key: format!("k{}", mine[i]),
                        value: value.clone(),
                    };
                    conn.send(&ClientRequest { id, body }).unwrap();
                };
                while sent < mine.len().min(DEPTH as usize) {
                    send(&mut conn, sent);
                    sent += 1;
                }
                while answered < mine.len() {
                    let reply = conn.recv(Some(Duration::from_secs(30))).unwrap();
                    assert!(
                        matches!(reply.body, Reply::Written { .. }),
                        "preload: {:?}",
                        reply.body
                    );
                    answered += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                    if sent < mine.len() {
                        send(&mut conn, sent);
                        sent += 1;
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut next_line = started + Duration::from_secs(5);
    while !workers.iter().all(|w| w.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(5);
            eprintln!(
                "preload: {} of {keys} keys in {:?}",
                done.load(Ordering::Relaxed),
                started.elapsed()
            );
        }
    }
    for w in workers {
        w.join().unwrap();
    }
    eprintln!("preload: {keys} keys in {:?}", started.elapsed());
}

#[test]
fn a_large_state_under_sustained_load_keeps_its_leader() {
    let full = std::env::var("WEFT_SUSTAINED").is_ok_and(|v| v == "full");
    let (keys, load) = if full {
        (400_000, Duration::from_secs(60))
    } else {
        (100_000, Duration::from_secs(15))
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::create(dir.path(), &exe(), 3, 3, Fabric::Udp).unwrap();
    for id in 1..=3 {
        cluster.start(id).unwrap();
    }
    let (leader, term) = cluster
        .leader(Duration::from_secs(20))
        .expect("a leader is elected");
    preload(&cluster, cluster.client_addr(leader), keys);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let cfg = cluster
        .client(Duration::from_secs(15))
        .unwrap()
        .config()
        .clone();
    let addr = cluster.client_addr(leader);
    // 64 clients with one put in flight each, driven by a few threads: a thread per
    // client would make the load generator, not the cluster, what the scheduler waits on.
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let (cfg, stop, ok, failed) = (
                cfg.clone(),
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
            );
            std::thread::spawn(move || {
                let value = Bytes::from(vec![b'v'; VALUE]);
                let mine = CLIENTS / CLIENT_THREADS;
                let mut conns: Vec<(Connection, u64, u64)> = (0..mine)
                    .map(|i| {
                        let session = 0x10AD_0000 + t * mine + i;
                        let conn = Connection::open(addr, &cfg, Duration::from_secs(10)).unwrap();
                        (conn, session, 0)
                    })
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    for (conn, session, seq) in &mut conns {
                        *seq += 1;
                        let key = format!("k{}", (*session * 7919 + *seq * 104_729) % keys);
                        let id = conn.next_id();
                        let body = Request::Put {
                            client: *session,
                            seq: *seq,
                            key,
                            value: value.clone(),
                        };
                        conn.send(&ClientRequest { id, body }).unwrap();
                    }
                    for (conn, session, _) in &mut conns {
                        match conn.recv(Some(Duration::from_secs(15))) {
                            Ok(ClientReply {
                                body: Reply::Written { .. },
                                ..
                            }) => ok.fetch_add(1, Ordering::Relaxed),
                            other => {
                                eprintln!("client {session}: {other:?}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                }
            })
        })
        .collect();
    let began = Instant::now();
    while began.elapsed() < load {
        std::thread::sleep(Duration::from_secs(5));
        eprintln!(
            "load: {} puts, {} failed after {:?}",
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            began.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let puts = ok.load(Ordering::Relaxed);
    let rate = puts as f64 / began.elapsed().as_secs_f64();

    let probe = cluster.client(Duration::from_secs(10)).unwrap();
    let mut longest = (0, Duration::ZERO);
    for id in 1..=3 {
        let s = probe.status_of(cluster.client_addr(id)).unwrap();
        assert_eq!(
            (s.term, s.leader),
            (term, Some(weft_raft::NodeId(leader))),
            "node {id} saw an election under load:\n{}",
            notable(&cluster)
        );
        let pass = Duration::from_micros(s.longest_pass_us);
        if pass > longest.1 {
            longest = (id, pass);
        }
    }
    eprintln!(
        "sustained-load: {keys} keys, {CLIENTS} clients x {VALUE} B for {load:?}: {puts} puts ({rate:.0}/s), \
         {} failed, one leader (term {term}), longest pass {:?} (node {}; target {PASS_TARGET:?})",
        failed.load(Ordering::Relaxed),
        longest.1,
        longest.0
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
    assert!(puts > 0);
    assert!(
        longest.1 < LONGEST_PASS,
        "node {} had a pass of {:?}:\n{}",
        longest.0,
        longest.1,
        notable(&cluster)
    );
}

/// Every node's warnings and role changes, for a failure message.
fn notable(cluster: &LocalCluster) -> String {
    (1..=3)
        .flat_map(|id| {
            cluster
                .log(id)
                .lines()
                .filter(|l| {
                    l.contains("WARN")
                        || l.contains("ERROR")
                        || l.contains(" state ")
                        || l.contains("snapshot")
                })
                .map(|l| format!("node {id}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
