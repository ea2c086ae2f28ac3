//! Stalled and foreign members on the Data Vortex fabric: `weft node` processes attached
//! to a `weft vortex-switch` process. A follower stopped (SIGSTOP) is evicted after its
//! barrier deadline, so the leader and the other follower keep committing with short
//! latencies; when the follower is continued (SIGCONT) it attaches again under its id,
//! catches up, and does not disrupt the leader. A process that attaches under a member's
//! id and never enters a barrier is evicted the same way, and an id outside the members is
//! refused. Each test is bounded at about 20 s.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hw_sim::vortex::{DvError, Endpoint};
use weft::local_cluster::{Fabric, LocalCluster};
use weft_raft::client::Client;

fn exe() -> PathBuf {
    env!("CARGO_BIN_EXE_weft").into()
}

/// How long puts are timed with the follower stopped.
const STOPPED_FOR: Duration = Duration::from_secs(3);

/// The longest election timeout of the generated config: 15 ms ticks, elections after 10
/// to 20 ticks.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(300);

/// How long the resumed follower may take to apply what the leader had committed.
const CATCH_UP: Duration = Duration::from_secs(5);

/// The latency at quantile `q` of `samples` (sorted in place).
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// Times sequential puts for `span`; each must succeed.
fn timed_puts(client: &mut Client, prefix: &str, span: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let mut latencies = Vec::new();
    while start.elapsed() < span {
        let n = latencies.len();
        let t = Instant::now();
        client
            .put(&format!("{prefix}{}", n % 64), Bytes::from(n.to_string()))
            .unwrap_or_else(|e| panic!("put {n} failed {:?} into the run: {e}", start.elapsed()));
        latencies.push(t.elapsed());
    }
    latencies
}

#[test]
fn a_stopped_follower_does_not_stall_the_vortex_cluster_and_catches_up_when_continued() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::create(dir.path(), &exe(), 3, 3, Fabric::Vortex).unwrap();
    let (leader, _) = cluster.start_all(Duration::from_secs(15)).unwrap();
    let follower = leader % 3 + 1;
    let mut client = cluster.client(Duration::from_secs(5)).unwrap();
    // Warm up (connections, the leader's first entries) before anything is timed.
    timed_puts(&mut client, "warm", Duration::from_millis(300));

    cluster.freeze(follower, true).unwrap();
    let mut latencies = timed_puts(&mut client, "stopped", STOPPED_FOR);
    let puts = latencies.len();
    let p50 = quantile(&mut latencies, 0.50);
    let p99 = quantile(&mut latencies, 0.99);
    let max = quantile(&mut latencies, 1.0);
    eprintln!(
        "follower {follower} stopped: {puts} puts in {STOPPED_FOR:?}, p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert!(puts >= 100, "only {puts} puts committed in {STOPPED_FOR:?}");
    assert!(
        p99 < Duration::from_millis(100),
        "p99 {p99:?} with follower {follower} stopped (p50 {p50:?}, max {max:?}); logs in {}",
        dir.path().display()
    );
    let switch_log = std::fs::read_to_string(dir.path().join("switch.log")).unwrap_or_default();
    assert!(
        switch_log.contains("evicted"),
        "the switch evicted the stopped follower:\n{switch_log}"
    );

    cluster.freeze(follower, false).unwrap();
    let resumed = Instant::now();
    client
        .put("after-resume", Bytes::from_static(b"1"))
        .expect("a put right after the follower resumed");
    let first_write = resumed.elapsed();
    assert!(
        first_write < 2 * ELECTION_TIMEOUT,
        "the first write after the resume took {first_write:?}"
    );
    let (still, _) = cluster.leader(Duration::from_secs(2)).expect("a leader");
    assert_eq!(
        still, leader,
        "the resumed follower did not depose the leader"
    );

    // The follower attaches again and applies everything the leader has committed.
    let target = cluster
        .wait_caught_up(follower, CATCH_UP)
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", cluster.log(follower)));
    let caught_up = resumed.elapsed();
    eprintln!(
        "after the resume: first write in {first_write:?}, follower applied index {target} after {caught_up:?}"
    );
    let log = cluster.log(follower);
    assert!(
        log.contains("attached to the fabric again"),
        "the follower rejoined through a new attachment:\n{log}"
    );
}

/// A four-member fabric with three nodes running: the fourth id is taken by a process that
/// never enters a barrier, which the switch evicts instead of holding every epoch for it,
/// so the cluster keeps committing; an id outside the members cannot attach at all.
#[test]
fn a_silent_member_and_a_stranger_do_not_stop_the_vortex_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::create(dir.path(), &exe(), 4, 3, Fabric::Vortex).unwrap();
    for id in 1..=3 {
        cluster.start(id).unwrap();
    }
    cluster.leader(Duration::from_secs(15)).expect("a leader");
    let fabric = format!("unix:{}", dir.path().join("switch.sock").display());
    match Endpoint::open(&fabric, 9) {
        Err(DvError::Denied) => {}
        other => panic!("a stranger's attachment: {:?}", other.map(|_| ())),
    }
    let silent = Endpoint::open(&fabric, 4).expect("member 4 attaches");
    let mut client = cluster.client(Duration::from_secs(5)).unwrap();
    let mut latencies = timed_puts(&mut client, "silent", Duration::from_secs(2));
    let puts = latencies.len();
    let p99 = quantile(&mut latencies, 0.99);
    let max = quantile(&mut latencies, 1.0);
    eprintln!("a silent member attached: {puts} puts in 2 s, p99 {p99:?}, max {max:?}");
    assert!(puts >= 100, "only {puts} puts committed");
    assert!(
        p99 < Duration::from_millis(100),
        "p99 {p99:?} (max {max:?})"
    );
    assert!(
        matches!(
            silent.barrier(Some(Duration::from_millis(10))),
            Err(DvError::Closed)
        ),
        "the silent member was evicted"
    );
}
