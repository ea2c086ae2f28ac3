//! Hand-written reference protocols: known-correct tables that anchor the verifiers' tests
//! and give the learner a yardstick.

use crate::model::{
    Encoding, Machine, ModelError, State, ABORT, COMMIT, LOCAL_ABORT, LOCAL_COMMIT, LOST, NAMED,
};

/// The anonymous state "every vote seen was commit" used by every protocol here.
pub const READY: State = NAMED;

/// The second anonymous state of [`two_crash_nbac`]: Ready, and no abort heard in round 2.
pub const CONFIRMED: State = NAMED + 1;

/// Builds a symmetric machine with `anonymous` anonymous states from a rule over (own
/// state, received states of the others), for every cluster of up to `n` processes: every
/// multiset of received symbols of every size up to `n - 1` is visited.
fn symmetric(
    n: usize,
    anonymous: u8,
    rule: impl Fn(State, &[u8]) -> State,
) -> Result<Machine, ModelError> {
    let mut m = Machine::identity(n, anonymous, Encoding::Symmetric { cap: 2 })?;
    let symbols: Vec<u8> = (0..m.states).chain([LOST]).collect();
    for peers in 1..n {
        let mut others = vec![0usize; peers];
        loop {
            let received: Vec<u8> = others.iter().map(|i| symbols[*i]).collect();
            for own in 0..m.states {
                let i = m.index(own, &received);
                m.table[i] = rule(own, &received);
            }
            // Next vector, odometer style.
            let mut k = 0;
            while k < peers {
                others[k] += 1;
                if others[k] < symbols.len() {
                    break;
                }
                others[k] = 0;
                k += 1;
            }
            if k == peers {
                break;
            }
        }
    }
    Ok(m)
}

/// Two rounds of flooding for non-blocking atomic commit with one crash (t = 1, R = 2):
/// round 1, abort on any abort vote or any missing vote, else become Ready; round 2, a
/// Ready process aborts if anyone reports Abort and commits otherwise (a missing message in
/// round 2 comes from the one crash, which happened after round 1 delivered everything).
pub fn floodset_nbac(n: usize) -> Result<Machine, ModelError> {
    symmetric(n, 1, |own, received| match own {
        LOCAL_COMMIT | LOCAL_ABORT => {
            if own == LOCAL_ABORT || received.iter().any(|s| *s == LOCAL_ABORT || *s == LOST) {
                ABORT
            } else {
                READY
            }
        }
        READY => {
            if received.contains(&ABORT) {
                ABORT
            } else {
                COMMIT
            }
        }
        s => s,
    })
}

/// Three rounds for non-blocking atomic commit with two crashes (t = 2, R = 3) and only
/// two anonymous states, for any `n`. Round 1: a commit voter that heard only commit votes
/// becomes Ready; any other becomes LocalAbort, undecided, since a missing vote may come
/// from a crash the others did not see. LocalAbort decides Abort one round later: a process
/// that lives through that round was heard by everyone in it. Ready hearing LocalAbort or
/// Abort falls back to LocalAbort, otherwise becomes Confirmed; Confirmed decides Abort on
/// hearing either, otherwise Commit. Missing messages after round 1 are ignored: a process
/// that falls back in round 2 because of a crash some did not see is heard by all in round
/// 3 unless it crashes too (the second crash), and then it never decided.
pub fn two_crash_nbac(n: usize) -> Result<Machine, ModelError> {
    symmetric(n, 2, |own, received| {
        let abort_heard = received.iter().any(|s| *s == LOCAL_ABORT || *s == ABORT);
        match own {
            LOCAL_COMMIT if received.iter().all(|s| *s == LOCAL_COMMIT) => READY,
            LOCAL_COMMIT => LOCAL_ABORT,
            LOCAL_ABORT => ABORT,
            READY if abort_heard => LOCAL_ABORT,
            READY => CONFIRMED,
            CONFIRMED if abort_heard => ABORT,
            CONFIRMED => COMMIT,
            s => s,
        }
    })
}

/// Two rounds for the paper's specification under arbitrary loss: like
/// [`floodset_nbac`], but a Ready process commits only if it hears Ready from everyone in
/// round 2, and stays undecided if anything is missing (no finite protocol can do better
/// under unbounded loss; the paper's properties only demand decisions in lossless runs).
pub fn paper_two_round(n: usize) -> Result<Machine, ModelError> {
    symmetric(n, 1, |own, received| match own {
        LOCAL_COMMIT | LOCAL_ABORT => {
            if own == LOCAL_ABORT || received.contains(&LOCAL_ABORT) {
                ABORT
            } else if received.contains(&LOST) {
                own
            } else {
                READY
            }
        }
        READY => {
            if received.iter().all(|s| *s == READY) {
                COMMIT
            } else {
                READY
            }
        }
        s => s,
    })
}
