//! One member must not hold up the others, and only members may attach: a member that
//! never reads its socket, one that never enters the barrier, barrier timeouts while the
//! switch is backed up, a member over its queue bound, a crash over a socket, non-member
//! ids and the socket's mode. Every wait is bounded, so a regression fails instead of
//! hanging.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hw_sim::vortex::{DvError, Endpoint, Switch, SwitchConfig, SwitchServer};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// A switch listening in a temporary directory; the fields drop in order, the server
/// before its directory.
struct Served {
    server: SwitchServer,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    fn fabric(&self) -> String {
        self.server.fabric()
    }
}

fn serve(cfg: SwitchConfig) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("switch.sock");
    Served {
        server: SwitchServer::bind(&sock, cfg).unwrap(),
        sock,
        _dir: dir,
    }
}

/// A hand-made member `node` that reads its welcome and nothing after, and claims to be
/// in the barrier every millisecond (so epochs never wait on it) until `stop`. Returns a
/// handle on its socket for reading, and the thread.
fn silent_member(sock: &Path, node: u32, stop: &Arc<AtomicBool>) -> (UnixStream, JoinHandle<()>) {
    let mut s = UnixStream::connect(sock).unwrap();
    let mut hello = vec![9, 0, 0, 0, 1];
    hello.extend(1u32.to_le_bytes());
    hello.extend(node.to_le_bytes());
    s.write_all(&hello).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut welcome = [0u8; 17];
    s.read_exact(&mut welcome).unwrap();
    assert_eq!(welcome[4], 2, "the switch welcomed node {node}");
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = stop.clone();
    let spam = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            // Barrier frame; once the switch has dropped the member, writes fail.
            if w.write_all(&[1, 0, 0, 0, 5]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    (s, spam)
}

/// Runs `rounds` of multicast-to-all then barrier on each endpoint in its own thread,
/// and waits (bounded) for all of them: each reports how many messages it received from
/// the other endpoints and the members at its last close.
fn exchange(eps: Vec<Endpoint>, rounds: u32, size: usize) -> Vec<(usize, Vec<u32>)> {
    let n = eps.len();
    let ids: Vec<u32> = eps.iter().map(Endpoint::node).collect();
    let (tx, rx) = mpsc::channel();
    for ep in eps {
        let (tx, ids) = (tx.clone(), ids.clone());
        std::thread::spawn(move || {
            let payload = vec![ep.node() as u8; size];
            let mut got = 0;
            let mut members = Vec::new();
            for _ in 0..rounds {
                ep.multicast(None, &payload).unwrap();
                members = ep.barrier(WAIT).unwrap().members;
                while let Ok(m) = ep.recv(Some(Duration::ZERO)) {
                    got += usize::from(ids.contains(&m.source));
                }
            }
            let _ = tx.send((ep.node(), got, members));
        });
    }
    let mut out: Vec<(u32, usize, Vec<u32>)> = (0..n)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the members stalled: some endpoint did not finish its rounds")
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, got, m)| (got, m)).collect()
}

#[test]
fn a_member_that_never_reads_does_not_hold_up_the_others() {
    let sw = serve(SwitchConfig::default());
    let eps: Vec<Endpoint> = (1..=2)
        .map(|n| Endpoint::open(&sw.fabric(), n).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (_silent, spam) = silent_member(&sw.sock, 9, &stop);
    // 300 rounds of 32 KiB to everyone: some 19 MiB for node 9, far more than its socket
    // buffers hold, and less than its queue bound, so it stays a member throughout.
    let t = Instant::now();
    let results = exchange(eps, 300, 32 << 10);
    let took = t.elapsed();
    for (got, members) in &results {
        assert_eq!(*got, 300, "every multicast of the other member arrived");
        assert_eq!(members, &vec![1, 2, 9], "the silent member stayed attached");
    }
    assert!(took < Duration::from_secs(20), "300 epochs took {took:?}");
    stop.store(true, Ordering::Relaxed);
    spam.join().unwrap();
}

#[test]
fn a_member_over_its_queue_bound_is_evicted_and_cut_off() {
    let sw = serve(SwitchConfig {
        port_queue: 1 << 20,
        ..SwitchConfig::default()
    });
    let eps: Vec<Endpoint> = (1..=2)
        .map(|n| Endpoint::open(&sw.fabric(), n).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (mut silent, spam) = silent_member(&sw.sock, 9, &stop);
    // 100 rounds of 64 KiB from two members: 12.5 MiB for node 9, beyond its 1 MiB bound.
    let results = exchange(eps, 100, 64 << 10);
    for (got, members) in &results {
        assert_eq!(*got, 100);
        assert_eq!(members, &vec![1, 2], "the member over its bound is gone");
    }
    // Its connection was cut: it reads what reached its socket, then the end.
    let mut sink = Vec::new();
    silent
        .read_to_end(&mut sink)
        .expect("the evicted member's socket ends instead of stalling");
    stop.store(true, Ordering::Relaxed);
    spam.join().unwrap();
}

/// Two endpoints keep entering the barrier while a third attached on `fabric` never does:
/// the epoch closes without it after the barrier deadline, it is cut off, and it comes
/// back by attaching again under its id.
fn a_member_that_never_enters_the_barrier_is_evicted(fabric: &str) {
    let a = Endpoint::open(fabric, 1).unwrap();
    let b = Endpoint::open(fabric, 2).unwrap();
    let idle = Endpoint::open(fabric, 3).unwrap();
    let t = Instant::now();
    let (ca, cb) = std::thread::scope(|s| {
        let hb = s.spawn(|| b.barrier(Some(Duration::from_secs(2))));
        (a.barrier(Some(Duration::from_secs(2))), hb.join().unwrap())
    });
    let took = t.elapsed();
    let (ca, cb) = (
        ca.expect("the epoch closed without the idle member"),
        cb.unwrap(),
    );
    assert_eq!(ca, cb);
    assert_eq!(ca.members, vec![1, 2], "the idle member is gone");
    // The default deadline is 100 ms, counted from the first entry into the barrier.
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_secs(1),
        "evicted after {took:?}"
    );
    assert_eq!(
        idle.barrier(Some(Duration::from_secs(1))),
        Err(DvError::Closed)
    );
    assert_eq!(idle.send(1, b"late"), Err(DvError::Closed));
    // Merely slow: it attaches again under its id and is a member at a later close.
    let back = Endpoint::open(fabric, 3).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let closes: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = [&a, &b, &back]
                .into_iter()
                .map(|e| s.spawn(move || e.barrier(WAIT).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        if closes[0].members == vec![1, 2, 3] {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never came back");
    }
}

#[test]
fn a_process_that_never_enters_the_barrier_is_evicted_and_may_attach_again() {
    let sw = serve(SwitchConfig::default());
    a_member_that_never_enters_the_barrier_is_evicted(&sw.fabric());
}

#[test]
fn an_in_process_endpoint_that_never_enters_the_barrier_is_evicted_too() {
    a_member_that_never_enters_the_barrier_is_evicted("local:switch-faults-evict");
}

/// Barrier timeouts hold while the switch is backed up: a member that never reads has
/// megabytes waiting, the caller's own sends stream out from another thread, and a
/// barrier that cannot close (a member stays out, and nothing evicts it) still returns
/// `TimedOut` within 100–300 ms of a 100 ms timeout.
#[test]
fn barrier_timeouts_hold_while_the_switch_is_backed_up() {
    let sw = serve(SwitchConfig {
        barrier_deadline: None,
        port_queue: 256 << 20,
        ..SwitchConfig::default()
    });
    let a = Arc::new(Endpoint::open(&sw.fabric(), 1).unwrap());
    let b = Arc::new(Endpoint::open(&sw.fabric(), 2).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let (_silent, spam) = silent_member(&sw.sock, 9, &stop);

    // B takes part until told to stop, then stays attached and out of the barrier.
    let b_done = Arc::new(AtomicBool::new(false));
    let b_loop = {
        let (b, b_done) = (b.clone(), b_done.clone());
        std::thread::spawn(move || {
            while !b_done.load(Ordering::Relaxed) {
                if b.barrier(WAIT).is_err() {
                    return;
                }
                while b.recv(Some(Duration::ZERO)).is_ok() {}
            }
        })
    };
    // A streams 400 × 64 KiB to everyone from one thread...
    let sender = {
        let a = a.clone();
        std::thread::spawn(move || {
            let payload = vec![1u8; 64 << 10];
            for _ in 0..400 {
                if a.multicast(None, &payload).is_err() {
                    return;
                }
            }
        })
    };
    // ...and times its barriers from another, reporting each call's outcome.
    let (tx, rx) = mpsc::channel();
    let timer = {
        let (a, b_done) = (a.clone(), b_done.clone());
        std::thread::spawn(move || {
            let timeout = Duration::from_millis(100);
            let started = Instant::now();
            // While B takes part: closes or timeouts, each within its bound.
            while started.elapsed() < Duration::from_millis(1500) {
                let t = Instant::now();
                let r = a.barrier(Some(timeout));
                while a.recv(Some(Duration::ZERO)).is_ok() {}
                if tx.send((false, r.map(|c| c.epoch), t.elapsed())).is_err() {
                    return;
                }
            }
            // B leaves the barrier for good: release its last wait, then time out.
            b_done.store(true, Ordering::Relaxed);
            while !b_loop.is_finished() {
                let _ = a.barrier(Some(Duration::from_millis(20)));
            }
            for _ in 0..5 {
                let t = Instant::now();
                let r = a.barrier(Some(timeout));
                if tx.send((true, r.map(|c| c.epoch), t.elapsed())).is_err() {
                    return;
                }
            }
        })
    };
    let mut closed = 0;
    let mut timed_out = 0;
    let mut timeouts = Vec::new();
    loop {
        let (cannot_close, r, took) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a barrier with a 100 ms timeout did not return within 5 s");
        assert!(
            took < Duration::from_millis(300),
            "a 100 ms barrier took {took:?}"
        );
        match r {
            Ok(_) => {
                assert!(!cannot_close, "an epoch closed without B");
                closed += 1;
            }
            Err(e) => {
                assert_eq!(e, DvError::TimedOut);
                assert!(
                    took >= Duration::from_millis(100),
                    "timed out early: {took:?}"
                );
                timeouts.push(took);
                if cannot_close {
                    timed_out += 1;
                }
            }
        }
        if timed_out == 5 {
            break;
        }
    }
    assert!(closed > 0, "epochs closed while B took part");
    eprintln!(
        "{closed} closes; {} timeouts of 100 ms took {:?} to {:?}",
        timeouts.len(),
        timeouts.iter().min().unwrap(),
        timeouts.iter().max().unwrap()
    );
    timer.join().unwrap();
    sender.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    spam.join().unwrap();
}

#[test]
fn only_members_attach_and_the_socket_is_private() {
    let sw = serve(SwitchConfig {
        members: Some([1, 2].into()),
        ..SwitchConfig::default()
    });
    let mode = std::fs::metadata(&sw.sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    assert_eq!(Endpoint::open(&sw.fabric(), 3).err(), Some(DvError::Denied));
    let one = Endpoint::open(&sw.fabric(), 1).unwrap();
    assert_eq!(Endpoint::open(&sw.fabric(), 1).err(), Some(DvError::InUse));
    assert_eq!(one.barrier(WAIT).unwrap().members, vec![1]);
    // The same in one process, and the C API's code for it.
    let switch = Switch::new(SwitchConfig {
        members: Some([1].into()),
        ..SwitchConfig::default()
    });
    assert_eq!(Endpoint::attach(&switch, 2).err(), Some(DvError::Denied));
    assert_eq!(DvError::Denied.code(), -11);
}

#[test]
fn a_crash_reaches_an_endpoint_over_its_socket_and_the_others_see_it_gone() {
    let sw = serve(SwitchConfig::default());
    let one = Endpoint::open(&sw.fabric(), 1).unwrap();
    let two = Endpoint::open(&sw.fabric(), 2).unwrap();
    two.multicast(None, b"last words").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The message has reached the switch once a close delivers it.
    while one.recv(Some(Duration::ZERO)).is_err() {
        assert!(Instant::now() < deadline, "node 2's message never arrived");
        std::thread::scope(|s| {
            s.spawn(|| two.barrier(WAIT).unwrap());
            one.barrier(WAIT).unwrap();
        });
    }
    assert!(sw.server.switch().crash(2));
    assert_eq!(two.barrier(WAIT), Err(DvError::Closed));
    assert_eq!(two.send(1, b"too late"), Err(DvError::Closed));
    assert_eq!(one.barrier(WAIT).unwrap().members, vec![1]);
    // Its id is free again.
    let back = Endpoint::open(&sw.fabric(), 2).unwrap();
    assert_eq!(back.node(), 2);
}
