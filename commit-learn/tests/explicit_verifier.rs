//! The explicit-state verifier against hand-written protocols: correct ones are proved,
//! broken ones refuted with a counterexample that names the property.

use commit_learn::explicit::{verify, Verdict};
use commit_learn::model::{Encoding, Machine, ABORT, COMMIT, LOCAL_ABORT, LOCAL_COMMIT, LOST};
use commit_learn::protocols::{floodset_nbac, paper_two_round, two_crash_nbac, READY};
use commit_learn::spec::{Property, Spec};

fn refuted(v: Verdict) -> Property {
    match v {
        Verdict::Refuted(c) => {
            // The counterexample must itself show the violation.
            assert!(!c.to_string().is_empty());
            c.property
        }
        Verdict::Proved { runs } => panic!("proved over {runs} runs, expected a counterexample"),
    }
}

#[test]
fn floodset_is_nbac_with_one_crash_in_two_rounds_for_three_to_five_processes() {
    for n in 3..=5 {
        let m = floodset_nbac(n).unwrap();
        match verify(&m, Spec::Nbac { t: 1 }, 2).unwrap() {
            Verdict::Proved { runs } => {
                // Every vote assignment, with no crash or one crash of any process in
                // either round reaching any subset of the others.
                let patterns = 1 + n as u64 * 2 * (1 << (n - 1));
                assert_eq!(runs, (1 << n) * patterns, "n={n}");
            }
            Verdict::Refuted(c) => panic!("n={n}: {c}"),
        }
    }
}

#[test]
fn one_round_cannot_tolerate_a_crash() {
    let m = floodset_nbac(3).unwrap();
    // A Ready process has no round left to decide in.
    let p = refuted(verify(&m, Spec::Nbac { t: 1 }, 1).unwrap());
    assert!(
        matches!(p, Property::Termination | Property::CommitWithoutFailure),
        "{p:?}"
    );
}

#[test]
fn two_rounds_cannot_tolerate_two_crashes() {
    let m = floodset_nbac(4).unwrap();
    let p = refuted(verify(&m, Spec::Nbac { t: 2 }, 2).unwrap());
    assert!(
        matches!(p, Property::UniformAgreement | Property::Termination),
        "{p:?}"
    );
}

/// Two crashes in three rounds with two anonymous states, at sizes where the table's
/// every input is reached; cut to two rounds, it has not committed yet when all voted
/// commit and nobody crashed.
#[test]
fn two_crash_nbac_holds_in_three_rounds_and_needs_them() {
    for n in 3..=4 {
        let m = two_crash_nbac(n).unwrap();
        if let Verdict::Refuted(c) = verify(&m, Spec::Nbac { t: 2 }, 3).unwrap() {
            panic!("n={n}: {c}");
        }
    }
    let p = refuted(verify(&two_crash_nbac(4).unwrap(), Spec::Nbac { t: 2 }, 2).unwrap());
    assert_eq!(p, Property::CommitWithoutFailure);
}

#[test]
fn the_paper_protocol_meets_p1_to_p5_under_arbitrary_loss() {
    let m = paper_two_round(3).unwrap();
    match verify(&m, Spec::Paper, 2).unwrap() {
        Verdict::Proved { runs } => assert_eq!(runs, 8 * 4096),
        Verdict::Refuted(c) => panic!("{c}"),
    }
}

#[test]
fn floodset_breaks_agreement_under_arbitrary_loss() {
    let m = floodset_nbac(3).unwrap();
    assert_eq!(
        refuted(verify(&m, Spec::Paper, 2).unwrap()),
        Property::P3Agreement
    );
}

#[test]
fn a_machine_that_never_decides_fails_liveness_without_loss() {
    let m = Machine::identity(3, 1, Encoding::Symmetric { cap: 2 }).unwrap();
    let p = refuted(verify(&m, Spec::Paper, 2).unwrap());
    assert!(
        matches!(
            p,
            Property::P4AbortWithoutLoss | Property::P5CommitWithoutLoss
        ),
        "{p:?}"
    );
}

#[test]
fn committing_despite_a_missing_message_is_caught() {
    let mut m = paper_two_round(3).unwrap();
    // Break one transition: a commit voter commits in round 1 although one vote is
    // missing (it may have been an abort vote).
    let i = m.index(LOCAL_COMMIT, &[LOCAL_COMMIT, LOST]);
    m.table[i] = COMMIT;
    assert_eq!(
        refuted(verify(&m, Spec::Paper, 2).unwrap()),
        Property::P3Agreement
    );
    // And an abort voter that commits is caught by P2.
    let mut m = paper_two_round(3).unwrap();
    let i = m.index(LOCAL_ABORT, &[LOCAL_COMMIT, LOCAL_COMMIT]);
    m.table[i] = COMMIT;
    assert_eq!(
        refuted(verify(&m, Spec::Paper, 2).unwrap()),
        Property::P2AbortVoterNeverCommits
    );
    // A Ready process that hears Abort and commits anyway breaks nothing reachable here:
    // the verifier only reports what can happen.
    let mut m = paper_two_round(3).unwrap();
    let i = m.index(READY, &[READY, ABORT]);
    m.table[i] = COMMIT;
    assert!(matches!(
        verify(&m, Spec::Paper, 2).unwrap(),
        Verdict::Proved { .. }
    ));
}

#[test]
fn one_symmetric_table_serves_every_process_count() {
    // Built once (covering every capped count up to 5 others), run unchanged at n = 3..=6.
    let table = floodset_nbac(6).unwrap();
    for n in 3..=6 {
        let m = table.with_processes(n).unwrap();
        assert_eq!(m.table, table.table, "the very same table");
        match verify(&m, Spec::Nbac { t: 1 }, 2).unwrap() {
            Verdict::Proved { .. } => {}
            Verdict::Refuted(c) => panic!("n={n}: {c}"),
        }
    }
    // A table built at n = 3 never saw inputs that only larger clusters produce (three
    // commit votes and a loss among four peers): it is not a protocol for n = 5.
    let small = floodset_nbac(3).unwrap().with_processes(5).unwrap();
    assert!(matches!(
        verify(&small, Spec::Nbac { t: 1 }, 2).unwrap(),
        Verdict::Refuted(_)
    ));
}

#[test]
fn too_many_patterns_is_an_error_not_a_hang() {
    let m = paper_two_round(4).unwrap();
    assert!(verify(&m, Spec::Paper, 2).is_err());
}
