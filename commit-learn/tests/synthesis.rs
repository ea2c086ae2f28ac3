//! Direct synthesis with Z3 (counterexample-guided): finds verified protocols where they
//! exist, and proves that none exists where theory says so (NBAC with one crash needs two
//! rounds).

use std::time::Duration;

use commit_learn::explicit::{verify, Verdict};
use commit_learn::model::Encoding;
use commit_learn::smt::{synthesize, SynthError};
use commit_learn::spec::Spec;

const BUDGET: Duration = Duration::from_secs(120);

#[test]
fn synthesizes_a_verified_paper_protocol_for_three_processes() {
    let (m, stats) = synthesize(
        &[3],
        1,
        Encoding::Symmetric { cap: 2 },
        Spec::Paper,
        2,
        BUDGET,
    )
    .unwrap();
    assert!(matches!(
        verify(&m, Spec::Paper, 2).unwrap(),
        Verdict::Proved { .. }
    ));
    assert!(stats.candidates >= 1);
}

#[test]
fn synthesizes_nbac_with_one_crash_in_two_rounds() {
    let (m, _) = synthesize(
        &[3],
        1,
        Encoding::Symmetric { cap: 2 },
        Spec::Nbac { t: 1 },
        2,
        BUDGET,
    )
    .unwrap();
    assert!(matches!(
        verify(&m, Spec::Nbac { t: 1 }, 2).unwrap(),
        Verdict::Proved { .. }
    ));
}

#[test]
fn one_round_is_provably_not_enough_for_one_crash() {
    match synthesize(
        &[3],
        1,
        Encoding::Symmetric { cap: 2 },
        Spec::Nbac { t: 1 },
        1,
        BUDGET,
    ) {
        Err(SynthError::Impossible { .. }) => {}
        other => panic!("expected a proof of impossibility, got {other:?}"),
    }
}

/// Two crashes need three rounds and a state per round and per knowledge; Z3 finds such a
/// table at n = 3 (symmetric, counts capped at 1).
#[test]
fn synthesizes_nbac_with_two_crashes_in_three_rounds() {
    let spec = Spec::Nbac { t: 2 };
    let (m, _) = synthesize(&[3], 4, Encoding::Symmetric { cap: 1 }, spec, 3, BUDGET).unwrap();
    assert!(matches!(
        verify(&m, spec, 3).unwrap(),
        Verdict::Proved { .. }
    ));
    // Two rounds cannot be enough (Dolev–Reischuk–Strong): the same table fails there.
    assert!(matches!(verify(&m, spec, 2).unwrap(), Verdict::Refuted(_)));
}

/// Several sizes: one table that is correct for 3 and 4 processes at once.
#[test]
fn synthesizes_one_table_for_two_sizes() {
    let spec = Spec::Nbac { t: 1 };
    let (m, _) = synthesize(&[3, 4], 1, Encoding::Symmetric { cap: 1 }, spec, 2, BUDGET).unwrap();
    assert_eq!(m.n, 4, "the largest size is returned");
    for n in [3, 4, 5] {
        let sized = m.with_processes(n).unwrap();
        assert!(
            matches!(verify(&sized, spec, 2).unwrap(), Verdict::Proved { .. }),
            "n = {n}"
        );
    }
    assert!(synthesize(&[3, 4], 1, Encoding::Vector, spec, 2, BUDGET).is_err());
}
