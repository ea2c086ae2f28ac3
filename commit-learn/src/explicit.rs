//! The explicit-state verifier: runs the machine on every vote assignment and every failure
//! pattern the specification allows, and returns the first run that breaks a property.
//! Independent of the SMT verifier, so the two can check each other.

use std::fmt;

use crate::model::Machine;
use std::collections::BTreeSet;

use crate::run::{all_votes, execute, execute_with, for_each_failure, Execution, TooMany};
use crate::spec::{violated, Property, Spec};

/// A run that breaks a property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    /// The property broken.
    pub property: Property,
    /// The run.
    pub run: Execution,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "violates {:?}", self.property)?;
        write!(f, "{}", self.run)
    }
}

/// The verdict of a verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every run satisfies every property.
    Proved {
        /// Runs checked.
        runs: u64,
    },
    /// A run breaks a property.
    Refuted(Box<Counterexample>),
}

/// Checks `machine` against `spec` over `rounds` rounds, run by run.
pub fn verify(machine: &Machine, spec: Spec, rounds: usize) -> Result<Verdict, TooMany> {
    let mut runs = 0u64;
    let mut found = None;
    for votes in all_votes(machine.n) {
        for_each_failure(spec, machine.n, rounds, |failures| {
            runs += 1;
            let lossless = failures.none();
            let run = execute(machine, &votes, failures, rounds);
            if let Some(property) = violated(spec, &run.outcomes(), lossless) {
                found = Some(Counterexample { property, run });
                return false;
            }
            true
        })?;
        if let Some(c) = found.take() {
            return Ok(Verdict::Refuted(Box::new(c)));
        }
    }
    Ok(Verdict::Proved { runs })
}

/// The table entries some run consults: the only ones that matter for correctness (the
/// others can hold anything), and the ones a learner has to get right.
pub fn reachable(machine: &Machine, spec: Spec, rounds: usize) -> Result<BTreeSet<usize>, TooMany> {
    let mut used = BTreeSet::new();
    for votes in all_votes(machine.n) {
        for_each_failure(spec, machine.n, rounds, |failures| {
            execute_with(machine, &votes, failures, rounds, |_, i| {
                used.insert(i);
            });
            true
        })?;
    }
    Ok(used)
}
