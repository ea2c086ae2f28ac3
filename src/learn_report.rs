//! `weft learn --report FILE`: the learned-commit measurements in one command. It runs the
//! `paper` learner over 10 seeds, obtains `nbac` protocols for t = 1 and 2 at n = 3, 4, 5
//! by deep Q-learning and by Z3 synthesis (timing both and each verifier), and checks how
//! far a symmetric table learned at n = 3, or at n = 3 and 4 together, holds at larger n.
//! Each run prints a line as it ends; the whole matrix goes to a JSON file and a summary
//! table.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use commit_learn::artifact::Verification;
use commit_learn::model::Encoding;
use commit_learn::spec::Spec;
use serde::Serialize;

use crate::cli::{LearnArgs, LearnMethod};
use crate::learn_cmd::{obtain, verify_sizes, Recipe};

/// The paper's target: a verified protocol within this time, on this many seeds.
const PAPER_SECONDS: u64 = 60;
const PAPER_SEEDS: u64 = 10;

/// One learning or synthesis run and what verifying its result cost.
#[derive(Debug, Serialize)]
struct Row {
    spec: String,
    sizes: Vec<usize>,
    rounds: usize,
    anonymous_states: u8,
    encoding: String,
    method: String,
    seed: u64,
    proved: bool,
    /// Why nothing was proved (budget, impossibility, or an earlier failure at a smaller
    /// size that made this run pointless).
    failure: Option<String>,
    seconds: f64,
    /// Episodes (dqn) or candidate tables (smt).
    steps: usize,
    counterexamples: usize,
    verification: Vec<Verification>,
}

/// How far one table, obtained for `sizes`, was proved at larger process counts.
#[derive(Debug, Serialize)]
struct Extrapolation {
    spec: String,
    method: String,
    learned_at: Vec<usize>,
    /// Verifications at each larger size, up to the first failure.
    verification: Vec<Verification>,
    /// The largest process count at which both verifiers proved the table (0: none).
    largest_n_proved: usize,
}

/// Everything the report measured.
#[derive(Debug, Serialize)]
struct Report {
    budget_s: u64,
    paper_seeds_proved_within_60_s: usize,
    paper_seeds: u64,
    rows: Vec<Row>,
    extrapolations: Vec<Extrapolation>,
}

fn rounds_for(spec: Spec) -> usize {
    match spec {
        Spec::Paper => 2,
        Spec::Nbac { t } => t + 1,
    }
}

/// Anonymous states per specification: one suffices for `paper` and for one crash; two
/// crashes in three rounds need a state per round and per knowledge (all votes seen
/// commit, or not yet).
fn anonymous_for(spec: Spec) -> u8 {
    match spec {
        Spec::Nbac { t } if t >= 2 => 2 * t as u8,
        _ => 1,
    }
}

/// Runs `f` on a thread of its own: Z3 keeps one context per thread, and a fresh one
/// makes each run independent of the runs before it (its search otherwise depends on
/// everything the context saw).
fn fresh<T: Send>(f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .map_err(|_| anyhow::anyhow!("a learning run panicked"))?
    })
}

impl Row {
    /// A row for `r` that has not run (yet): nothing proved, nothing spent.
    fn of(r: &Recipe, failure: Option<String>) -> Row {
        Row {
            spec: r.spec.to_string(),
            sizes: r.sizes.clone(),
            rounds: r.rounds,
            anonymous_states: r.anonymous,
            encoding: format!("{:?}", r.encoding),
            method: r.method.name().into(),
            seed: r.seed,
            proved: false,
            failure,
            seconds: 0.0,
            steps: 0,
            counterexamples: 0,
            verification: Vec::new(),
        }
    }
}

/// An `nbac` run of the report: symmetric encoding with counts capped at 1 (presence is
/// all these protocols need), `t + 1` rounds.
fn nbac(t: usize, sizes: Vec<usize>, method: LearnMethod, args: &LearnArgs) -> Recipe {
    let spec = Spec::Nbac { t };
    Recipe {
        spec,
        sizes,
        rounds: rounds_for(spec),
        anonymous: anonymous_for(spec),
        encoding: Encoding::Symmetric { cap: 1 },
        method,
        seed: args.seed,
        hidden: args.hidden,
        budget: Duration::from_secs(args.budget_s),
    }
}

/// Runs one recipe, verifies what it found at its sizes, and prints a line.
fn measure(r: &Recipe) -> anyhow::Result<(Row, Option<commit_learn::model::Machine>)> {
    let got = fresh(|| obtain(r, false))?;
    let (proved, verification) = match &got.machine {
        Some(m) => fresh(|| verify_sizes(m, &r.sizes, r.spec, r.rounds))?,
        None => (false, Vec::new()),
    };
    let row = Row {
        proved,
        seconds: got.elapsed.as_secs_f64(),
        steps: got.steps,
        counterexamples: got.counterexamples,
        verification,
        ..Row::of(r, got.failure)
    };
    println!(
        "{} n={:?} {} (seed {}): {} in {:.1} s",
        row.spec,
        row.sizes,
        row.method,
        row.seed,
        row.failure.as_deref().unwrap_or("proved"),
        row.seconds
    );
    Ok((row, got.machine))
}

/// A row for a run not attempted because the same method failed at a smaller size.
fn skipped(r: &Recipe, why: String) -> Row {
    println!(
        "{} n={:?} {}: skipped ({why})",
        r.spec,
        r.sizes,
        r.method.name()
    );
    Row::of(r, Some(why))
}

/// `weft learn --report FILE`.
pub fn run(args: &LearnArgs, path: &Path) -> anyhow::Result<()> {
    let budget = Duration::from_secs(args.budget_s);
    let mut rows = Vec::new();

    println!("paper, n = 3, deep Q-learning, seeds 1..={PAPER_SEEDS}, {PAPER_SECONDS} s each");
    let mut paper_proved = 0;
    for seed in 1..=PAPER_SEEDS {
        let (row, _) = measure(&Recipe {
            spec: Spec::Paper,
            sizes: vec![3],
            rounds: 2,
            anonymous: 1,
            encoding: Encoding::Vector,
            method: LearnMethod::Dqn,
            seed,
            hidden: args.hidden,
            budget: Duration::from_secs(PAPER_SECONDS),
        })?;
        paper_proved += usize::from(row.proved && row.seconds <= PAPER_SECONDS as f64);
        rows.push(row);
    }
    rows.push(
        measure(&Recipe {
            spec: Spec::Paper,
            sizes: vec![3],
            rounds: 2,
            anonymous: 1,
            encoding: Encoding::Vector,
            method: LearnMethod::Smt,
            seed: 0,
            hidden: args.hidden,
            budget,
        })?
        .0,
    );

    println!("nbac, t = 1 and 2, n = 3, 4, 5, each method (smt, dqn, dqn-td), {budget:?} each");
    // The tables found at n = 3, by (t, method): where extrapolation starts.
    let mut at_three = Vec::new();
    for t in [1, 2] {
        for method in [LearnMethod::Smt, LearnMethod::Dqn, LearnMethod::DqnTd] {
            let mut failed_at = None;
            for n in [3, 4, 5] {
                let recipe = nbac(t, vec![n], method, args);
                if let Some(smaller) = failed_at {
                    rows.push(skipped(&recipe, format!("not found at n = {smaller}")));
                    continue;
                }
                let (row, machine) = measure(&recipe)?;
                if !row.proved {
                    failed_at = Some(n);
                }
                if n == 3 {
                    at_three.push((t, method, machine));
                }
                rows.push(row);
            }
        }
    }

    println!(
        "extrapolation: tables learned at n = 3 (above) and at n = 3 and 4 together, proved at n = 4..={}",
        args.report_max_n
    );
    let mut extrapolations = Vec::new();
    for (t, method, machine) in at_three {
        let spec = Spec::Nbac { t };
        let recipe = nbac(t, vec![3, 4], method, args);
        let Some(machine) = machine else {
            rows.push(skipped(&recipe, "not found at n = 3".into()));
            continue;
        };
        extrapolations.push(extrapolate(
            &machine,
            spec,
            method,
            vec![3],
            args.report_max_n,
        )?);
        let (row, joint) = measure(&recipe)?;
        rows.push(row);
        if let Some(joint) = joint {
            extrapolations.push(extrapolate(
                &joint,
                spec,
                method,
                vec![3, 4],
                args.report_max_n,
            )?);
        }
    }

    let report = Report {
        budget_s: args.budget_s,
        paper_seeds_proved_within_60_s: paper_proved,
        paper_seeds: PAPER_SEEDS,
        rows,
        extrapolations,
    };
    print_summary(&report);
    std::fs::write(path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("report: {}", path.display());
    Ok(())
}

/// Verifies `machine` (learned at `learned_at`) at each larger size up to `max_n`, both
/// verifiers, until one refutes it.
fn extrapolate(
    machine: &commit_learn::model::Machine,
    spec: Spec,
    method: LearnMethod,
    learned_at: Vec<usize>,
    max_n: usize,
) -> anyhow::Result<Extrapolation> {
    let from = learned_at.iter().max().copied().unwrap_or(3);
    let mut verification = Vec::new();
    let mut largest = from;
    for n in from + 1..=max_n {
        let (ok, mut records) = fresh(|| verify_sizes(machine, &[n], spec, rounds_for(spec)))?;
        verification.append(&mut records);
        if !ok {
            println!(
                "  {spec} {} learned at n = {learned_at:?}: refuted at n = {n}",
                method.name()
            );
            break;
        }
        largest = n;
        println!(
            "  {spec} {} learned at n = {learned_at:?}: proved at n = {n}",
            method.name()
        );
    }
    Ok(Extrapolation {
        spec: spec.to_string(),
        method: method.name().into(),
        learned_at,
        verification,
        largest_n_proved: largest,
    })
}

/// The z3 verification time recorded for size `n`, in milliseconds.
fn z3_ms(v: &[Verification], n: usize) -> Option<u64> {
    v.iter()
        .find(|r| r.method == "z3" && r.n == n && r.result == "proved")
        .map(|r| r.elapsed_ms)
}

fn print_summary(r: &Report) {
    println!(
        "\npaper, n = 3: {} of {} seeds proved within {PAPER_SECONDS} s",
        r.paper_seeds_proved_within_60_s, r.paper_seeds
    );
    println!(
        "\n{:<12} {:>7} {:>6} {:>5} {:>10} {:>12}",
        "spec", "n", "method", "seed", "time (s)", "z3 proof ms"
    );
    for row in &r.rows {
        let n = *row.sizes.iter().max().unwrap_or(&0);
        let sizes: Vec<String> = row.sizes.iter().map(|s| s.to_string()).collect();
        let time = if row.proved {
            format!("{:.1}", row.seconds)
        } else {
            "-".into()
        };
        let z3 = z3_ms(&row.verification, n).map_or("-".into(), |ms| ms.to_string());
        println!(
            "{:<12} {:>7} {:>6} {:>5} {:>10} {:>12}",
            row.spec,
            sizes.join(","),
            row.method,
            row.seed,
            time,
            z3
        );
    }
    for e in &r.extrapolations {
        println!(
            "{} {} learned at n = {:?}: proved up to n = {}",
            e.spec, e.method, e.learned_at, e.largest_n_proved
        );
    }
}
