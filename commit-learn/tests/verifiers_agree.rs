//! The Z3 verifier and the explicit-state enumerator must agree, on correct tables and on
//! broken ones; every Z3 counterexample replays concretely.

use commit_learn::explicit;
use commit_learn::model::Machine;
use commit_learn::protocols::{floodset_nbac, paper_two_round, two_crash_nbac};
use commit_learn::smt;
use commit_learn::spec::Spec;

fn proved(v: &explicit::Verdict) -> bool {
    matches!(v, explicit::Verdict::Proved { .. })
}

fn agree(m: &Machine, spec: Spec, rounds: usize) -> bool {
    let e = explicit::verify(m, spec, rounds).expect("enumerable");
    let (z, _) = smt::verify(m, spec, rounds).expect("z3 decides");
    assert_eq!(proved(&e), proved(&z), "explicit {e:?} vs z3 {z:?}");
    if let explicit::Verdict::Refuted(c) = &z {
        assert!(!c.to_string().is_empty());
    }
    proved(&e)
}

#[test]
fn agree_on_the_reference_protocols() {
    assert!(agree(&paper_two_round(3).unwrap(), Spec::Paper, 2));
    assert!(!agree(&floodset_nbac(3).unwrap(), Spec::Paper, 2));
    assert!(agree(&floodset_nbac(3).unwrap(), Spec::Nbac { t: 1 }, 2));
    assert!(agree(&floodset_nbac(4).unwrap(), Spec::Nbac { t: 1 }, 2));
    assert!(!agree(&floodset_nbac(3).unwrap(), Spec::Nbac { t: 1 }, 1));
    assert!(!agree(&floodset_nbac(4).unwrap(), Spec::Nbac { t: 2 }, 2));
    assert!(agree(&two_crash_nbac(3).unwrap(), Spec::Nbac { t: 2 }, 3));
    assert!(!agree(&two_crash_nbac(3).unwrap(), Spec::Nbac { t: 2 }, 2));
}

#[test]
fn agree_on_deliberately_broken_tables() {
    // Deterministic single-entry mutations of both reference protocols.
    let mut refuted = 0;
    for (base, spec) in [
        (paper_two_round(3).unwrap(), Spec::Paper),
        (floodset_nbac(3).unwrap(), Spec::Nbac { t: 1 }),
    ] {
        let entries: Vec<usize> = explicit::reachable(&base, spec, 2)
            .unwrap()
            .into_iter()
            .collect();
        assert!(!entries.is_empty() && entries.len() < base.table.len());
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..12 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut m = base.clone();
            let i = entries[(state % entries.len() as u64) as usize];
            m.table[i] = ((m.table[i] as u64 + 1 + state % 4) % m.states as u64) as u8;
            if !agree(&m, spec, 2) {
                refuted += 1;
            }
        }
    }
    assert!(
        refuted >= 6,
        "only {refuted} of 24 mutations of reachable entries broke a protocol"
    );
}
