//! A verified protocol run as a service over the `mem` transport, with crash injection:
//! every surviving participant reaches the same decision.

use std::time::Duration;

use commit_learn::protocols::floodset_nbac;
use commit_learn::runtime::participate;
use commit_learn::spec::Decision;
use weft_transport::{open, NodeId, TransportConfig};

fn transports(cluster: u64, n: u32) -> Vec<Box<dyn weft_transport::Transport>> {
    (1..=n)
        .map(|id| open(&TransportConfig::mem(cluster, NodeId(id), n)).unwrap())
        .collect()
}

/// Runs one instance with the given votes and crash points; returns each participant's
/// decision.
fn run(cluster: u64, votes: &[bool], crash_after: &[Option<usize>]) -> Vec<Decision> {
    let m = floodset_nbac(votes.len()).unwrap();
    let ts = transports(cluster, votes.len() as u32);
    std::thread::scope(|s| {
        let handles: Vec<_> = ts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let m = &m;
                let (vote, crash) = (votes[i], crash_after[i]);
                s.spawn(move || {
                    participate(m, 2, t.as_ref(), 7, vote, Duration::from_millis(200), crash)
                        .unwrap()
                        .decision
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn unanimous_commit_commits_and_one_abort_vote_aborts() {
    assert_eq!(
        run(0xC0_0001, &[true; 3], &[None; 3]),
        vec![Decision::Commit; 3]
    );
    assert_eq!(
        run(0xC0_0002, &[true, false, true], &[None; 3]),
        vec![Decision::Abort; 3]
    );
}

#[test]
fn survivors_agree_whatever_round_a_participant_crashes_in() {
    for crash in 0..=2 {
        let d = run(
            0xC0_0010 + crash as u64,
            &[true; 3],
            &[None, None, Some(crash)],
        );
        assert_eq!(d[0], d[1], "crash after round {crash}: {d:?}");
        assert_ne!(d[0], Decision::Undecided, "survivors decide");
        if crash == 0 {
            assert_eq!(d[0], Decision::Abort, "a vote never arrived");
        }
    }
}
