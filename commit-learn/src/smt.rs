//! The Z3 verifier, as in the paper: the transition table is asserted as a function, the
//! votes and the failures are left symbolic, and Z3 is asked for a run in which some
//! property fails. UNSAT proves the table; SAT yields a counterexample, which is replayed
//! concretely (so an encoding mistake cannot produce a false counterexample).

use std::time::{Duration, Instant};

use z3::ast::{Bool, Int};
use z3::{FuncDecl, SatResult, Solver, Sort};

use crate::explicit::{Counterexample, Verdict};
use crate::model::{Encoding, Machine, ABORT, COMMIT};
use crate::run::{execute, Execution, Failures};
use crate::spec::{violated, Spec};

/// Why the SMT verifier could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmtError {
    /// Z3 answered `unknown` (a timeout or resource limit).
    #[error("z3 could not decide: {0}")]
    Unknown(String),
    /// Z3's counterexample does not replay: a bug in the encoding.
    #[error("z3's counterexample does not violate any property when replayed")]
    Inconsistent,
}

/// What the solver did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtStats {
    /// Wall time of the check.
    pub elapsed: Duration,
    /// Assertions given to the solver.
    pub assertions: usize,
}

fn int(v: i64) -> Int {
    Int::from_i64(v)
}

/// The symbolic execution of a machine: votes, failures and states as Z3 terms.
struct Symbolic {
    n: usize,
    rounds: usize,
    abort_votes: Vec<Bool>,
    lost: Vec<Vec<Vec<Bool>>>,
    crash_round: Vec<Int>,
    reach: Vec<Vec<Bool>>,
    states: Vec<Vec<Int>>,
    assertions: Vec<Bool>,
}

impl Symbolic {
    fn delivered(&self, spec: Spec, round: usize, from: usize, to: usize) -> Bool {
        match spec {
            Spec::Paper => self.lost[round - 1][from][to].not(),
            Spec::Nbac { .. } => {
                let c = &self.crash_round[from];
                let r = int(round as i64);
                Bool::or(&[
                    &c.eq(int(0)),
                    &r.lt(c),
                    &Bool::and(&[&r.eq(c), &self.reach[from][to]]),
                ])
            }
        }
    }

    fn steps(&self, spec: Spec, round: usize, p: usize) -> Bool {
        match spec {
            Spec::Paper => Bool::from_bool(true),
            Spec::Nbac { .. } => {
                let c = &self.crash_round[p];
                Bool::or(&[&c.eq(int(0)), &int(round as i64).lt(c)])
            }
        }
    }

    fn lossless(&self, spec: Spec) -> Bool {
        let mut clean = Vec::new();
        match spec {
            Spec::Paper => {
                // Messages to oneself are never lost: their bits are not part of the run.
                for r in &self.lost {
                    for (p, row) in r.iter().enumerate() {
                        for (q, l) in row.iter().enumerate() {
                            if p != q {
                                clean.push(l.not());
                            }
                        }
                    }
                }
            }
            Spec::Nbac { .. } => {
                for c in &self.crash_round {
                    clean.push(c.eq(int(0)));
                }
            }
        }
        let refs: Vec<&Bool> = clean.iter().collect();
        Bool::and(&refs)
    }
}

/// The table index of a process in `own` that received `received` (symbol per sender,
/// `lost_symbol` for nothing), as a Z3 term following [`Machine::index`].
fn index_term(m: &Machine, own: &Int, received: &[Int], lost_symbol: i64) -> Int {
    let symbols = m.states as i64 + 1;
    let inputs = match m.encoding {
        Encoding::Vector => symbols.pow(m.n as u32 - 1),
        Encoding::Symmetric { cap } => (cap as i64 + 1).pow(symbols as u32),
    };
    let input = match m.encoding {
        Encoding::Vector => received.iter().fold(int(0), |acc, s| {
            Int::add(&[&Int::mul(&[&acc, &int(symbols)]), s])
        }),
        Encoding::Symmetric { cap } => {
            let mut acc = int(0);
            for x in 0..symbols {
                let x = if x == m.states as i64 { lost_symbol } else { x };
                let ones: Vec<Int> = received
                    .iter()
                    .map(|s| s.eq(int(x)).ite(&int(1), &int(0)))
                    .collect();
                let refs: Vec<&Int> = ones.iter().collect();
                let count = Int::add(&refs);
                let capped = count.gt(int(cap as i64)).ite(&int(cap as i64), &count);
                acc = Int::add(&[&Int::mul(&[&acc, &int(cap as i64 + 1)]), &capped]);
            }
            acc
        }
    };
    Int::add(&[&Int::mul(&[own, &int(inputs)]), &input])
}

/// Builds the symbolic run of `m` under `spec` with the transition function `table`.
fn symbolic(
    m: &Machine,
    spec: Spec,
    rounds: usize,
    table: &FuncDecl,
    table_range: bool,
    tag: &str,
) -> Symbolic {
    let n = m.n;
    let abort_votes: Vec<Bool> = (0..n)
        .map(|p| Bool::new_const(format!("{tag}abort_vote_{p}")))
        .collect();
    let lost = (0..rounds)
        .map(|r| {
            (0..n)
                .map(|p| {
                    (0..n)
                        .map(|q| Bool::new_const(format!("{tag}lost_{}_{p}_{q}", r + 1)))
                        .collect()
                })
                .collect()
        })
        .collect();
    let crash_round: Vec<Int> = (0..n)
        .map(|p| Int::new_const(format!("{tag}crash_round_{p}")))
        .collect();
    let reach = (0..n)
        .map(|p| {
            (0..n)
                .map(|q| Bool::new_const(format!("{tag}reach_{p}_{q}")))
                .collect()
        })
        .collect();
    let mut sym = Symbolic {
        n,
        rounds,
        abort_votes,
        lost,
        crash_round,
        reach,
        states: Vec::new(),
        assertions: Vec::new(),
    };
    if let Spec::Nbac { t } = spec {
        let mut crashed = Vec::new();
        for c in &sym.crash_round {
            sym.assertions.push(c.ge(int(0)));
            sym.assertions.push(c.le(int(rounds as i64)));
            crashed.push(c.gt(int(0)).ite(&int(1), &int(0)));
        }
        let refs: Vec<&Int> = crashed.iter().collect();
        sym.assertions.push(Int::add(&refs).le(int(t as i64)));
    }
    let lost_symbol = m.states as i64;
    let votes: Vec<Int> = sym
        .abort_votes
        .iter()
        .map(|a| a.ite(&int(1), &int(0)))
        .collect();
    sym.states.push(votes);
    for round in 1..=rounds {
        let prev = sym.states[round - 1].clone();
        let mut next = Vec::with_capacity(n);
        for q in 0..n {
            let received: Vec<Int> = (0..n)
                .filter(|p| *p != q)
                .map(|p| {
                    sym.delivered(spec, round, p, q)
                        .ite(&prev[p], &int(lost_symbol))
                })
                .collect();
            let idx = index_term(m, &prev[q], &received, lost_symbol);
            let stepped = table
                .apply(&[&idx])
                .as_int()
                .expect("the table maps to integers");
            if table_range {
                sym.assertions.push(stepped.ge(int(0)));
                sym.assertions.push(stepped.lt(int(m.states as i64)));
            }
            next.push(sym.steps(spec, round, q).ite(&stepped, &prev[q]));
        }
        sym.states.push(next);
    }
    sym
}

/// The formula "some property fails in this run".
fn some_violation(sym: &Symbolic, spec: Spec) -> Bool {
    let n = sym.n;
    let reached = |p: usize, s: i64| {
        let hits: Vec<Bool> = (1..=sym.rounds)
            .map(|r| sym.states[r][p].eq(int(s)))
            .collect();
        let refs: Vec<&Bool> = hits.iter().collect();
        Bool::or(&refs)
    };
    let committed: Vec<Bool> = (0..n).map(|p| reached(p, COMMIT as i64)).collect();
    let aborted: Vec<Bool> = (0..n).map(|p| reached(p, ABORT as i64)).collect();
    let any = |v: &[Bool]| Bool::or(&v.iter().collect::<Vec<_>>());
    let all = |v: &[Bool]| Bool::and(&v.iter().collect::<Vec<_>>());
    let all_commit_votes = all(&sym.abort_votes.iter().map(|a| a.not()).collect::<Vec<_>>());
    let any_abort_vote = any(&sym.abort_votes);
    let conflict = any(&(0..n)
        .map(|p| Bool::and(&[&committed[p], &aborted[p]]))
        .collect::<Vec<_>>());
    let disagreement = Bool::or(&[&Bool::and(&[&any(&committed), &any(&aborted)]), &conflict]);
    let decided_abort = all(&(0..n)
        .map(|p| Bool::and(&[&aborted[p], &committed[p].not()]))
        .collect::<Vec<_>>());
    let decided_commit = all(&(0..n)
        .map(|p| Bool::and(&[&committed[p], &aborted[p].not()]))
        .collect::<Vec<_>>());
    let lossless = sym.lossless(spec);
    let mut bad = vec![disagreement];
    match spec {
        Spec::Paper => {
            let abort_voter_commits = any(&(0..n)
                .map(|p| Bool::and(&[&sym.abort_votes[p], &committed[p]]))
                .collect::<Vec<_>>());
            bad.push(abort_voter_commits);
            bad.push(Bool::and(&[
                &lossless,
                &any_abort_vote,
                &decided_abort.not(),
            ]));
            bad.push(Bool::and(&[
                &lossless,
                &all_commit_votes,
                &decided_commit.not(),
            ]));
        }
        Spec::Nbac { .. } => {
            bad.push(Bool::and(&[&any(&committed), &all_commit_votes.not()]));
            bad.push(Bool::and(&[
                &lossless,
                &all_commit_votes,
                &decided_commit.not(),
            ]));
            let undecided_correct: Vec<Bool> = (0..n)
                .map(|p| {
                    Bool::and(&[
                        &sym.crash_round[p].eq(int(0)),
                        &committed[p].not(),
                        &aborted[p].not(),
                    ])
                })
                .collect();
            bad.push(any(&undecided_correct));
        }
    }
    any(&bad)
}

/// Reads the concrete failures out of a model.
fn failures_of(sym: &Symbolic, spec: Spec, model: &z3::Model) -> Failures {
    let n = sym.n;
    let truth = |b: &Bool| {
        model
            .eval(b, true)
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    };
    match spec {
        Spec::Paper => {
            let mut bits = vec![false; sym.rounds * n * n];
            for r in 0..sym.rounds {
                for p in 0..n {
                    for q in 0..n {
                        bits[(r * n + p) * n + q] = p != q && truth(&sym.lost[r][p][q]);
                    }
                }
            }
            Failures::Omissions(bits)
        }
        Spec::Nbac { .. } => Failures::Crashes(
            (0..n)
                .map(|p| {
                    let c = model
                        .eval(&sym.crash_round[p], true)
                        .and_then(|v| v.as_i64())
                        .unwrap_or(0);
                    (c > 0).then(|| {
                        (
                            c as usize,
                            (0..n).map(|q| q == p || truth(&sym.reach[p][q])).collect(),
                        )
                    })
                })
                .collect(),
        ),
    }
}

/// Verifies `m` against `spec` over `rounds` rounds with Z3.
pub fn verify(m: &Machine, spec: Spec, rounds: usize) -> Result<(Verdict, SmtStats), SmtError> {
    let started = Instant::now();
    let solver = Solver::new();
    let table = FuncDecl::new("table", &[&Sort::int()], &Sort::int());
    let mut assertions = 0;
    for (i, next) in m.table.iter().enumerate() {
        solver.assert(
            table
                .apply(&[&int(i as i64)])
                .as_int()
                .expect("int")
                .eq(int(*next as i64)),
        );
        assertions += 1;
    }
    let sym = symbolic(m, spec, rounds, &table, false, "");
    for a in &sym.assertions {
        solver.assert(a);
        assertions += 1;
    }
    solver.assert(some_violation(&sym, spec));
    assertions += 1;
    let result = solver.check();
    let stats = SmtStats {
        elapsed: started.elapsed(),
        assertions,
    };
    match result {
        SatResult::Unsat => Ok((Verdict::Proved { runs: 0 }, stats)),
        SatResult::Unknown => Err(SmtError::Unknown(
            solver.get_reason_unknown().unwrap_or_default(),
        )),
        SatResult::Sat => {
            let model = solver.get_model().ok_or(SmtError::Inconsistent)?;
            let votes: Vec<u8> = sym
                .abort_votes
                .iter()
                .map(|a| {
                    u8::from(
                        model
                            .eval(a, true)
                            .and_then(|v| v.as_bool())
                            .unwrap_or(false),
                    )
                })
                .collect();
            let failures = failures_of(&sym, spec, &model);
            let lossless = failures.none();
            let run = execute(m, &votes, failures, rounds);
            let property =
                violated(spec, &run.outcomes(), lossless).ok_or(SmtError::Inconsistent)?;
            Ok((
                Verdict::Refuted(Box::new(Counterexample { property, run })),
                stats,
            ))
        }
    }
}

/// Binds a symbolic run's votes and failures to those of a concrete run.
fn pin(sym: &Symbolic, run: &Execution) -> Vec<Bool> {
    let n = sym.n;
    let mut eqs: Vec<Bool> = (0..n)
        .map(|p| sym.abort_votes[p].eq(Bool::from_bool(run.votes[p] == crate::model::LOCAL_ABORT)))
        .collect();
    match &run.failures {
        Failures::Omissions(bits) => {
            for r in 0..sym.rounds {
                for p in 0..n {
                    for q in (0..n).filter(|q| *q != p) {
                        eqs.push(sym.lost[r][p][q].eq(Bool::from_bool(bits[(r * n + p) * n + q])));
                    }
                }
            }
        }
        Failures::Crashes(c) => {
            for (p, crash) in c.iter().enumerate() {
                match crash {
                    None => eqs.push(sym.crash_round[p].eq(int(0))),
                    Some((round, reached)) => {
                        eqs.push(sym.crash_round[p].eq(int(*round as i64)));
                        for q in (0..n).filter(|q| *q != p) {
                            eqs.push(sym.reach[p][q].eq(Bool::from_bool(reached[q])));
                        }
                    }
                }
            }
        }
    }
    eqs
}

/// What the synthesizer did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthStats {
    /// Candidate tables proposed by Z3.
    pub candidates: usize,
    /// Counterexample runs it had to learn from.
    pub counterexamples: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why synthesis stopped without a protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SynthError {
    /// No table with this many states and rounds satisfies the specification.
    #[error("no protocol with these states and rounds exists (z3: unsat after {counterexamples} counterexamples)")]
    Impossible {
        /// Counterexamples gathered before the proof of impossibility.
        counterexamples: usize,
    },
    /// The time budget ran out.
    #[error("time budget exhausted after {candidates} candidates")]
    Budget {
        /// Candidates tried.
        candidates: usize,
    },
    /// Z3 could not decide, or the model could not be built.
    #[error("{0}")]
    Solver(String),
}

/// Synthesizes a transition table directly with Z3 (the `--method smt` baseline the
/// learner is compared against), by counterexample-guided inductive synthesis: Z3 proposes
/// a table that is correct on every run seen so far; the verifier looks for a run that
/// breaks it; that run joins the set. Ends with a verified table, or with Z3 proving that
/// none exists for `anonymous` extra states and `rounds` rounds.
///
/// With several `sizes` (symmetric encoding only) one table must be correct for each of
/// these process counts: the way to a protocol that extrapolates to larger clusters. The
/// machine returned is set to the largest size.
pub fn synthesize(
    sizes: &[usize],
    anonymous: u8,
    encoding: Encoding,
    spec: Spec,
    rounds: usize,
    budget: Duration,
) -> Result<(Machine, SynthStats), SynthError> {
    let started = Instant::now();
    let mut machines = crate::model::for_sizes(sizes, anonymous, encoding)
        .map_err(|e| SynthError::Solver(e.to_string()))?;
    let solver = Solver::new();
    let table = FuncDecl::new("table", &[&Sort::int()], &Sort::int());
    // Runs to learn from, each with the index of its machine (process count).
    let mut runs: Vec<(usize, Execution)> = Vec::new();
    // Start from the failure-free runs: they carry the liveness obligations.
    for (k, m) in machines.iter().enumerate() {
        for votes in crate::run::all_votes(m.n) {
            let none = match spec {
                Spec::Paper => Failures::Omissions(vec![false; rounds * m.n * m.n]),
                Spec::Nbac { .. } => Failures::Crashes(vec![None; m.n]),
            };
            runs.push((k, execute(m, &votes, none, rounds)));
        }
    }
    let failure_free = runs.len();
    let mut added = 0;
    let mut candidates = 0;
    let mut table_values = vec![0u8; machines[0].table.len()];
    loop {
        for (k, (size, run)) in runs.iter().enumerate().skip(added) {
            let sym = symbolic(
                &machines[*size],
                spec,
                rounds,
                &table,
                true,
                &format!("r{k}_"),
            );
            for a in sym.assertions.iter().chain(pin(&sym, run).iter()) {
                solver.assert(a);
            }
            solver.assert(some_violation(&sym, spec).not());
        }
        added = runs.len();
        let Some(left) = budget.checked_sub(started.elapsed()) else {
            return Err(SynthError::Budget { candidates });
        };
        // One hard query must not outlast the budget either.
        let mut params = z3::Params::new();
        params.set_u32(
            "timeout",
            left.as_millis().clamp(1, u32::MAX as u128) as u32,
        );
        solver.set_params(&params);
        match solver.check() {
            SatResult::Unsat => {
                return Err(SynthError::Impossible {
                    counterexamples: runs.len() - failure_free,
                })
            }
            SatResult::Unknown => {
                let reason = solver.get_reason_unknown().unwrap_or_default();
                if reason.contains("timeout") || reason.contains("canceled") {
                    return Err(SynthError::Budget { candidates });
                }
                return Err(SynthError::Solver(reason));
            }
            SatResult::Sat => {}
        }
        candidates += 1;
        let model = solver
            .get_model()
            .ok_or_else(|| SynthError::Solver("no model".into()))?;
        let states = machines[0].states as i64;
        for (i, value) in table_values.iter_mut().enumerate() {
            let v = model
                .eval(&table.apply(&[&int(i as i64)]).as_int().expect("int"), true)
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            // Entries no run constrains may be anything; keep them in range.
            *value = v.rem_euclid(states) as u8;
        }
        let mut refuted = None;
        for (k, m) in machines.iter_mut().enumerate() {
            m.table.clone_from(&table_values);
            let verdict = match crate::explicit::verify(m, spec, rounds) {
                Ok(v) => v,
                Err(_) => {
                    verify(m, spec, rounds)
                        .map_err(|e| SynthError::Solver(e.to_string()))?
                        .0
                }
            };
            if let Verdict::Refuted(c) = verdict {
                refuted = Some((k, c.run));
                break;
            }
        }
        match refuted {
            None => {
                let stats = SynthStats {
                    candidates,
                    counterexamples: runs.len() - failure_free,
                    elapsed: started.elapsed(),
                };
                let largest = machines.into_iter().max_by_key(|m| m.n).expect("a size");
                return Ok((largest, stats));
            }
            Some(run) => runs.push(run),
        }
    }
}
