//! The RDMA ring and credit protocol on emulated verbs: 1,000,000 messages of random sizes
//! among 3 peers, one of them a deliberately slow consumer. Nothing is lost or overwritten,
//! each peer's order is kept, back-pressure (not overrun) stops the senders, and remote
//! access violations surface as errors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hw_sim::verbs::{self, Access};
use weft_transport::backend::rdma::emulated::{EmulatedRc, RemoteRegion};
use weft_transport::backend::rdma::{RingError, RingReceiver, RingSender};

const RING: usize = 16 * 1024;

/// Byte `i` of message `seq` from `src`: its header, then a payload derived from both, so a
/// record overwritten by a later one is caught.
fn byte(src: u32, seq: u32, i: usize) -> u8 {
    match i {
        0..4 => src.to_le_bytes()[i],
        4..8 => seq.to_le_bytes()[i - 4],
        _ => (i as u32 ^ seq.wrapping_mul(31) ^ src) as u8,
    }
}

/// Fills `buf` with message `seq` from `src`.
fn message(buf: &mut Vec<u8>, src: u32, seq: u32) {
    buf.clear();
    buf.extend((0..size(src, seq)).map(|i| byte(src, seq, i)));
}

fn size(src: u32, seq: u32) -> usize {
    // Mostly small (inline), sometimes up to 4 KiB (staged): a cheap hash of (src, seq).
    let h = seq.wrapping_mul(2_654_435_761) ^ src.wrapping_mul(40_503);
    if h % 16 == 0 {
        8 + (h as usize >> 8) % 4096
    } else {
        8 + (h as usize >> 8) % 120
    }
}

#[test]
fn a_million_messages_among_three_peers_with_a_slow_consumer() {
    // Directions (from, to); counts sum to exactly WEFT_RING_MESSAGES (1,000,000).
    let total: u32 = std::env::var("WEFT_RING_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dirs = [(0u32, 1u32), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)];
    let counts: Vec<u32> = (0..6)
        .map(|i| total / 6 + u32::from(i < total % 6))
        .collect();
    let mut senders = Vec::new();
    let mut receivers: Vec<Vec<(u32, RingReceiver<EmulatedRc>, u32)>> =
        vec![vec![], vec![], vec![]];
    for (i, &(from, to)) in dirs.iter().enumerate() {
        let (a, b) = EmulatedRc::pair(RING);
        senders.push((from, RingSender::new(a), counts[i]));
        receivers[to as usize].push((from, RingReceiver::new(b), counts[i]));
    }
    let full_hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(300);
    std::thread::scope(|s| {
        // One sending thread per node, interleaving its two destinations.
        let mut by_node: Vec<Vec<(u32, RingSender<EmulatedRc>, u32)>> =
            vec![vec![], vec![], vec![]];
        for snd in senders {
            by_node[snd.0 as usize].push(snd);
        }
        for mut mine in by_node {
            let (full_hits, failed) = (full_hits.clone(), failed.clone());
            s.spawn(move || {
                let mut next = vec![0u32; mine.len()];
                let mut buf = Vec::new();
                while next.iter().zip(&mine).any(|(n, m)| *n < m.2) {
                    for (k, (src, snd, count)) in mine.iter_mut().enumerate() {
                        if next[k] == *count {
                            continue;
                        }
                        let seq = next[k];
                        message(&mut buf, *src, seq);
                        match snd.send(&buf) {
                            Ok(()) => next[k] += 1,
                            Err(RingError::Full { .. }) => {
                                full_hits.fetch_add(1, Ordering::Relaxed);
                                std::thread::yield_now();
                            }
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                panic!("send failed: {e}");
                            }
                        }
                        if failed.load(Ordering::Relaxed) || Instant::now() > deadline {
                            panic!("senders gave up");
                        }
                    }
                }
            });
        }
        // One receiving thread per node; node 2 (index 2) is slow: it takes at most 8
        // messages per connection and then yields its core.
        for (node, mut mine) in receivers.into_iter().enumerate() {
            let failed = failed.clone();
            s.spawn(move || {
                let slow = node == 2;
                let mut expect = vec![0u32; mine.len()];
                while expect.iter().zip(&mine).any(|(e, m)| *e < m.2) {
                    for (k, (src, rx, _)) in mine.iter_mut().enumerate() {
                        let want = &mut expect[k];
                        let got = rx
                            .poll(if slow { 8 } else { 256 }, |m| {
                                let seq = u32::from_le_bytes(m[4..8].try_into().unwrap());
                                assert_eq!(
                                    seq, *want,
                                    "order from node {src} broken at node {node}"
                                );
                                let intact = m.len() == size(*src, seq)
                                    && m.iter().enumerate().all(|(i, b)| *b == byte(*src, seq, i));
                                assert!(intact, "record {seq} from node {src} overwritten");
                                *want += 1;
                            })
                            .unwrap_or_else(|e| panic!("receive failed at node {node}: {e}"));
                        if slow && got > 0 {
                            std::thread::yield_now();
                        }
                    }
                    if failed.load(Ordering::Relaxed) || Instant::now() > deadline {
                        panic!("receiver {node} gave up");
                    }
                }
            });
        }
    });
    assert!(
        full_hits.load(Ordering::Relaxed) > 0,
        "the slow consumer never pushed back: the test did not exercise credit"
    );
}

#[test]
fn remote_access_violations_surface_as_errors() {
    let rw = Access {
        local_write: true,
        remote_write: true,
    };
    // A handshake that named the wrong rkey for the peer's ring.
    let (a, b) = verbs::connected_pair();
    let (ring, credit) = (a.pd.register(RING, rw), a.pd.register(8, rw));
    let peer_ring = b.pd.register(RING, rw);
    b.qp.post_recv(0).unwrap();
    let peer_credit = b.pd.register(8, rw);
    let wrong = RemoteRegion {
        rkey: peer_ring.rkey ^ 0x40,
        len: RING,
    };
    let credit_region = RemoteRegion {
        rkey: peer_credit.rkey,
        len: 8,
    };
    let conn = Arc::new(EmulatedRc::connect(a, ring, credit, wrong, credit_region));
    let err = RingSender::new(conn).send(b"hello").unwrap_err();
    assert!(
        matches!(err, RingError::Verbs(ref m) if m.contains("remote access")),
        "{err}"
    );

    // A handshake that overstated the ring: the write past the real end is refused.
    let (a, b) = verbs::connected_pair();
    let (ring, credit) = (a.pd.register(RING, rw), a.pd.register(8, rw));
    let small = b.pd.register(64, rw);
    for i in 0..2 {
        b.qp.post_recv(i).unwrap();
    }
    let overstated = RemoteRegion {
        rkey: small.rkey,
        len: RING,
    };
    let credit_region = RemoteRegion {
        rkey: b.pd.register(8, rw).rkey,
        len: 8,
    };
    let conn = Arc::new(EmulatedRc::connect(
        a,
        ring,
        credit,
        overstated,
        credit_region,
    ));
    let mut snd = RingSender::new(conn);
    let first = snd.send(&[1; 48]);
    assert_eq!(first, Ok(()));
    let err = snd.send(&[2; 48]).unwrap_err();
    assert!(
        matches!(err, RingError::Verbs(ref m) if m.contains("outside")),
        "{err}"
    );

    // Too large for a ring at all.
    let (a, _b) = EmulatedRc::pair(1024);
    assert!(matches!(
        RingSender::new(a).send(&[0; 600]),
        Err(RingError::TooLarge { max: 512, .. })
    ));
}
