//! Running a machine: one execution for given votes and failures, and the enumeration of
//! every failure pattern a specification allows.

use std::fmt;

use crate::model::{state_name, Machine, State, LOCAL_ABORT, LOCAL_COMMIT, LOST};
use crate::spec::{Outcome, Spec};

/// Which messages are lost in one execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failures {
    /// Individual messages lost: bit `((round - 1) * n + from) * n + to` set means the
    /// message from `from` to `to` in `round` is lost. Messages to oneself never are.
    Omissions(Vec<bool>),
    /// Crashes: per process, `None` or the round it crashes in and the receivers that
    /// still get its message in that round. It sends nothing afterwards and takes no
    /// further step.
    Crashes(Vec<Option<Crash>>),
}

impl Failures {
    /// Whether the message from `from` to `to` in `round` (1-based) arrives.
    pub fn delivered(&self, n: usize, round: usize, from: usize, to: usize) -> bool {
        if from == to {
            return true;
        }
        match self {
            Failures::Omissions(bits) => !bits[((round - 1) * n + from) * n + to],
            Failures::Crashes(c) => match &c[from] {
                None => true,
                Some((r, reached)) => round < *r || (round == *r && reached[to]),
            },
        }
    }

    /// Whether `p` takes its step at the end of `round`.
    pub fn steps(&self, round: usize, p: usize) -> bool {
        match self {
            Failures::Omissions(_) => true,
            Failures::Crashes(c) => c[p].as_ref().is_none_or(|(r, _)| round < *r),
        }
    }

    /// Whether `p` crashes at some point.
    pub fn crashed(&self, p: usize) -> bool {
        matches!(self, Failures::Crashes(c) if c[p].is_some())
    }

    /// Whether nothing at all is lost.
    pub fn none(&self) -> bool {
        match self {
            Failures::Omissions(bits) => !bits.iter().any(|b| *b),
            Failures::Crashes(c) => c.iter().all(Option::is_none),
        }
    }
}

/// A crash: the round it happens in, and which receivers still get that round's message.
pub type Crash = (usize, Vec<bool>);

/// One execution: the votes, the failures, and every process's state after each round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    /// Initial states.
    pub votes: Vec<State>,
    /// What was lost.
    pub failures: Failures,
    /// `states[r][p]`: the state of `p` after round `r` (round 0: its vote).
    pub states: Vec<Vec<State>>,
}

impl Execution {
    /// What each process reached.
    pub fn outcomes(&self) -> Vec<Outcome> {
        let n = self.votes.len();
        (0..n)
            .map(|p| Outcome {
                vote: self.votes[p],
                committed: self.states.iter().any(|s| s[p] == crate::model::COMMIT),
                aborted: self.states.iter().any(|s| s[p] == crate::model::ABORT),
                crashed: self.failures.crashed(p),
            })
            .collect()
    }
}

impl fmt::Display for Execution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.votes.len();
        let votes: Vec<String> = self.votes.iter().map(|v| state_name(*v)).collect();
        writeln!(f, "votes: {}", votes.join(", "))?;
        match &self.failures {
            Failures::Omissions(bits) => {
                let lost: Vec<String> = (0..bits.len())
                    .filter(|i| bits[*i])
                    .map(|i| format!("round {}: p{} -> p{}", i / (n * n) + 1, i / n % n, i % n))
                    .collect();
                writeln!(
                    f,
                    "lost messages: {}",
                    if lost.is_empty() {
                        "none".into()
                    } else {
                        lost.join("; ")
                    }
                )?;
            }
            Failures::Crashes(c) => {
                for (p, crash) in c.iter().enumerate() {
                    if let Some((r, reached)) = crash {
                        let to: Vec<String> = (0..n)
                            .filter(|q| reached[*q] && *q != p)
                            .map(|q| format!("p{q}"))
                            .collect();
                        writeln!(
                            f,
                            "p{p} crashes in round {r}, its last message reaching [{}]",
                            to.join(", ")
                        )?;
                    }
                }
            }
        }
        for (r, states) in self.states.iter().enumerate() {
            let s: Vec<String> = states.iter().map(|s| state_name(*s)).collect();
            writeln!(f, "after round {r}: {}", s.join(", "))?;
        }
        Ok(())
    }
}

/// Runs `machine` for `rounds` rounds from `votes` under `failures`.
pub fn execute(machine: &Machine, votes: &[State], failures: Failures, rounds: usize) -> Execution {
    execute_with(machine, votes, failures, rounds, |_, _| {})
}

/// [`execute`], calling `used(process, entry)` for every table entry a process consults,
/// in order.
pub fn execute_with(
    machine: &Machine,
    votes: &[State],
    failures: Failures,
    rounds: usize,
    mut used: impl FnMut(usize, usize),
) -> Execution {
    let n = votes.len();
    let mut states = vec![votes.to_vec()];
    let mut others = Vec::with_capacity(n - 1);
    for round in 1..=rounds {
        let prev = &states[round - 1];
        let mut next = prev.clone();
        for q in 0..n {
            if !failures.steps(round, q) {
                continue;
            }
            others.clear();
            for p in (0..n).filter(|p| *p != q) {
                let arrives = failures.delivered(n, round, p, q);
                others.push(if arrives { prev[p] } else { LOST });
            }
            let i = machine.index(prev[q], &others);
            used(q, i);
            next[q] = machine.table[i];
        }
        states.push(next);
    }
    Execution {
        votes: votes.to_vec(),
        failures,
        states,
    }
}

/// Every vote assignment of `n` processes.
pub fn all_votes(n: usize) -> impl Iterator<Item = Vec<State>> {
    (0..1u32 << n).map(move |bits| {
        (0..n)
            .map(|p| {
                if bits >> p & 1 == 1 {
                    LOCAL_ABORT
                } else {
                    LOCAL_COMMIT
                }
            })
            .collect()
    })
}

/// Why the failure patterns cannot be enumerated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{patterns} failure patterns are too many to enumerate explicitly (limit {limit}); use the SMT verifier")]
pub struct TooMany {
    /// How many there are.
    pub patterns: u128,
    /// The limit.
    pub limit: u128,
}

/// The most failure patterns enumerated explicitly.
pub const PATTERN_LIMIT: u128 = 1 << 22;

/// Calls `visit` with every failure pattern `spec` allows for `n` processes and `rounds`
/// rounds; stops early when `visit` returns `false`.
pub fn for_each_failure(
    spec: Spec,
    n: usize,
    rounds: usize,
    mut visit: impl FnMut(Failures) -> bool,
) -> Result<(), TooMany> {
    match spec {
        Spec::Paper => {
            let links = rounds * n * (n - 1);
            let patterns = 1u128.checked_shl(links as u32).unwrap_or(u128::MAX);
            if patterns > PATTERN_LIMIT {
                return Err(TooMany {
                    patterns,
                    limit: PATTERN_LIMIT,
                });
            }
            let slots: Vec<usize> = (0..rounds * n * n).filter(|i| i / n % n != i % n).collect();
            for mask in 0..patterns as u64 {
                let mut bits = vec![false; rounds * n * n];
                for (k, slot) in slots.iter().enumerate() {
                    bits[*slot] = mask >> k & 1 == 1;
                }
                if !visit(Failures::Omissions(bits)) {
                    break;
                }
            }
        }
        Spec::Nbac { t } => {
            let per_process = 1 + rounds as u128 * (1u128 << (n - 1));
            let patterns = per_process
                .saturating_pow(t.min(n) as u32)
                .saturating_mul(1 << n.min(20));
            if patterns > PATTERN_LIMIT * 16 {
                return Err(TooMany {
                    patterns,
                    limit: PATTERN_LIMIT * 16,
                });
            }
            let mut crashes: Vec<Option<Crash>> = vec![None; n];
            let mut go_on = true;
            crash_patterns(n, rounds, t, 0, &mut crashes, &mut |c| {
                go_on = visit(Failures::Crashes(c.to_vec()));
                go_on
            });
        }
    }
    Ok(())
}

/// Recursively assigns crashes to processes `p..`, at most `budget` of them.
fn crash_patterns(
    n: usize,
    rounds: usize,
    budget: usize,
    p: usize,
    crashes: &mut Vec<Option<Crash>>,
    visit: &mut dyn FnMut(&[Option<Crash>]) -> bool,
) -> bool {
    if p == n {
        return visit(crashes);
    }
    crashes[p] = None;
    if !crash_patterns(n, rounds, budget, p + 1, crashes, visit) {
        return false;
    }
    if budget == 0 {
        return true;
    }
    let others: Vec<usize> = (0..n).filter(|q| *q != p).collect();
    for round in 1..=rounds {
        for mask in 0..1u32 << others.len() {
            let mut reached = vec![false; n];
            reached[p] = true;
            for (k, q) in others.iter().enumerate() {
                reached[*q] = mask >> k & 1 == 1;
            }
            crashes[p] = Some((round, reached));
            if !crash_patterns(n, rounds, budget - 1, p + 1, crashes, visit) {
                return false;
            }
        }
    }
    crashes[p] = None;
    true
}
