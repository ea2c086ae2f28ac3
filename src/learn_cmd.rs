//! `weft learn` and `weft verify`: atomic-commit protocols, synthesized and proved.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use commit_learn::artifact::{dot, Artifact, Verification};
use commit_learn::dqn::Targets;
use commit_learn::explicit::{self, Verdict};
use commit_learn::model::{Encoding, Machine};
use commit_learn::smt::{self, SynthError};
use commit_learn::spec::Spec;

use crate::cli::{CommitArgs, LearnArgs, LearnMethod, SpecName, VerifyArgs, Vote};

fn spec_of(name: SpecName, t: usize) -> Spec {
    match name {
        SpecName::Paper => Spec::Paper,
        SpecName::Nbac => Spec::Nbac { t },
    }
}

/// Runs both verifiers where they apply and records what they said.
fn verify_both(
    m: &Machine,
    spec: Spec,
    rounds: usize,
) -> anyhow::Result<(bool, Vec<Verification>)> {
    let mut records = Vec::new();
    let mut ok = true;
    let started = Instant::now();
    match explicit::verify(m, spec, rounds) {
        Ok(v) => {
            let (result, size) = match &v {
                Verdict::Proved { runs } => ("proved".to_string(), *runs),
                Verdict::Refuted(c) => {
                    println!("explicit verifier: counterexample\n{c}");
                    ok = false;
                    (format!("{:?}", c.property), 0)
                }
            };
            records.push(Verification {
                method: "explicit".into(),
                n: m.n,
                result,
                size,
                elapsed_ms: started.elapsed().as_millis() as u64,
            });
        }
        Err(e) => println!("explicit verifier skipped: {e}"),
    }
    let (v, stats) = smt::verify(m, spec, rounds)?;
    let result = match &v {
        Verdict::Proved { .. } => "proved".to_string(),
        Verdict::Refuted(c) => {
            println!("z3: counterexample\n{c}");
            ok = false;
            format!("{:?}", c.property)
        }
    };
    records.push(Verification {
        method: "z3".into(),
        n: m.n,
        result,
        size: stats.assertions as u64,
        elapsed_ms: stats.elapsed.as_millis() as u64,
    });
    for r in &records {
        println!(
            "  n = {:<2} {:<8} {:<10} ({} {}, {} ms)",
            r.n,
            r.method,
            r.result,
            r.size,
            if r.method == "z3" {
                "assertions"
            } else {
                "runs"
            },
            r.elapsed_ms
        );
    }
    Ok((ok, records))
}

/// Writes the drawing beside the artifact, and an SVG if Graphviz is installed.
fn draw(a: &Artifact, out: &Path) -> anyhow::Result<()> {
    let entries = explicit::reachable(&a.machine, a.spec, a.rounds)
        .unwrap_or_else(|_| (0..a.machine.table.len()).collect());
    let dot_path = out.with_extension("dot");
    std::fs::write(&dot_path, dot(&a.machine, entries, 4))?;
    let svg_path = out.with_extension("svg");
    match Command::new("dot")
        .arg("-Tsvg")
        .arg(&dot_path)
        .arg("-o")
        .arg(&svg_path)
        .status()
    {
        Ok(s) if s.success() => {
            println!("drawing: {} and {}", dot_path.display(), svg_path.display())
        }
        _ => println!(
            "drawing: {} (install Graphviz, `apt-get install -y graphviz`, for the SVG)",
            dot_path.display()
        ),
    }
    Ok(())
}

/// One way to obtain a protocol, as `weft learn` and its report run it.
pub(crate) struct Recipe {
    pub spec: Spec,
    pub sizes: Vec<usize>,
    pub rounds: usize,
    pub anonymous: u8,
    pub encoding: Encoding,
    pub method: LearnMethod,
    pub seed: u64,
    pub hidden: usize,
    pub budget: Duration,
}

/// What obtaining a protocol cost.
pub(crate) struct Obtained {
    /// The verified table (set to the largest size), or `None` when none was found.
    pub machine: Option<Machine>,
    /// Why none was found.
    pub failure: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
    /// Episodes played (dqn) or candidate tables proposed (smt).
    pub steps: usize,
    /// Counterexample runs learned from.
    pub counterexamples: usize,
}

/// Learns or synthesizes a protocol; progress lines go to stderr when `verbose`.
pub(crate) fn obtain(r: &Recipe, verbose: bool) -> anyhow::Result<Obtained> {
    let started = Instant::now();
    match r.method {
        LearnMethod::Dqn | LearnMethod::DqnTd => {
            let mut cfg = commit_learn::dqn::LearnConfig::new(r.spec, r.sizes[0], r.seed);
            if let LearnMethod::DqnTd = r.method {
                cfg.targets = Targets::Temporal;
            }
            cfg.also_sizes = r.sizes[1..].to_vec();
            cfg.anonymous = r.anonymous;
            cfg.encoding = r.encoding;
            cfg.rounds = r.rounds;
            cfg.budget = r.budget;
            cfg.hidden = r.hidden;
            let report = commit_learn::dqn::learn(&cfg, |p| {
                if verbose && p.episode % 2000 == 0 {
                    eprintln!(
                        "episode {:>7}  reward {:>8.1}  epsilon {:.2}  verification attempts {}  counterexamples {}",
                        p.episode, p.reward, p.epsilon, p.checks, p.counterexamples
                    );
                }
            })?;
            Ok(Obtained {
                failure: (!report.proved)
                    .then(|| format!("not proved within {} s", r.budget.as_secs())),
                machine: report.proved.then_some(report.machine),
                elapsed: report.elapsed,
                steps: report.progress.episode,
                counterexamples: report.progress.counterexamples,
            })
        }
        LearnMethod::Smt => {
            match smt::synthesize(
                &r.sizes,
                r.anonymous,
                r.encoding,
                r.spec,
                r.rounds,
                r.budget,
            ) {
                Ok((m, stats)) => Ok(Obtained {
                    machine: Some(m),
                    failure: None,
                    elapsed: stats.elapsed,
                    steps: stats.candidates,
                    counterexamples: stats.counterexamples,
                }),
                Err(e @ (SynthError::Budget { .. } | SynthError::Impossible { .. })) => {
                    Ok(Obtained {
                        machine: None,
                        failure: Some(e.to_string()),
                        elapsed: started.elapsed(),
                        steps: 0,
                        counterexamples: 0,
                    })
                }
                Err(e) => Err(anyhow!("{e}")),
            }
        }
    }
}

/// The encoding `weft learn` arguments ask for.
fn encoding_of(args: &LearnArgs) -> Encoding {
    if args.vector {
        Encoding::Vector
    } else {
        Encoding::Symmetric { cap: args.cap }
    }
}

/// Verifies `m` with both verifiers at every size (the table is the same).
pub(crate) fn verify_sizes(
    m: &Machine,
    sizes: &[usize],
    spec: Spec,
    rounds: usize,
) -> anyhow::Result<(bool, Vec<Verification>)> {
    let mut ok = true;
    let mut records = Vec::new();
    for &n in sizes {
        let sized = if n == m.n {
            m.clone()
        } else {
            m.with_processes(n)
                .context("only symmetric protocols can change their number of processes")?
        };
        let (good, mut r) = verify_both(&sized, spec, rounds)?;
        ok &= good;
        records.append(&mut r);
    }
    Ok((ok, records))
}

/// `weft learn`.
pub fn run_learn(args: &LearnArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.report {
        return crate::learn_report::run(args, path);
    }
    let spec = spec_of(args.spec, args.t);
    let encoding = encoding_of(args);
    let rounds = args.rounds.unwrap_or(match spec {
        Spec::Paper => 2,
        Spec::Nbac { t } => t + 1,
    });
    let sizes: Vec<String> = args.n.iter().map(|n| n.to_string()).collect();
    println!(
        "learning {spec} for n = {}, {rounds} rounds, {} anonymous states, {encoding:?}",
        sizes.join(" and "),
        args.states
    );
    let recipe = Recipe {
        spec,
        sizes: args.n.clone(),
        rounds,
        anonymous: args.states,
        encoding,
        method: args.method,
        seed: args.seed,
        hidden: args.hidden,
        budget: Duration::from_secs(args.budget_s),
    };
    let got = obtain(&recipe, true)?;
    let what = match args.method {
        LearnMethod::Dqn => "deep Q-learning",
        LearnMethod::DqnTd => "deep Q-learning (TD targets)",
        LearnMethod::Smt => "z3 synthesis",
    };
    let steps = match args.method {
        LearnMethod::Dqn | LearnMethod::DqnTd => "episodes",
        LearnMethod::Smt => "candidates",
    };
    match &got.failure {
        None => println!(
            "{what}: proved after {} {steps}, {} counterexamples, {:.2} s",
            got.steps,
            got.counterexamples,
            got.elapsed.as_secs_f64()
        ),
        Some(why) => println!("{what}: {why} ({:.2} s)", got.elapsed.as_secs_f64()),
    }
    let Some(machine) = got.machine else {
        bail!(
            "no verified protocol: {}; raise --budget-s, add --states, or try another --seed",
            got.failure.unwrap_or_default()
        );
    };
    let (ok, verified) = verify_sizes(&machine, &args.n, spec, rounds)?;
    if !ok {
        bail!("the synthesized protocol failed verification (a bug: please report it)");
    }
    let artifact = Artifact {
        spec,
        rounds,
        machine,
        method: match args.method {
            LearnMethod::Smt => "smt".into(),
            learner => format!("{} (seed {})", learner.name(), args.seed),
        },
        verified,
    };
    artifact.save(&args.out)?;
    println!("saved {}", args.out.display());
    draw(&artifact, &args.out)
}

/// `weft verify`.
pub fn run_verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let a = Artifact::load(&args.protocol)?;
    let mut m = a.machine.clone();
    if let Some(n) = args.n {
        m = m.with_processes(n).with_context(|| {
            "only symmetric protocols can change their number of processes".to_string()
        })?;
    }
    let rounds = args.rounds.unwrap_or(a.rounds);
    println!(
        "verifying {} ({}): {} for n = {}, {rounds} rounds",
        args.protocol.display(),
        a.method,
        a.spec,
        m.n
    );
    let (ok, _) = verify_both(&m, a.spec, rounds)?;
    if !ok {
        bail!("the protocol does not meet {}", a.spec);
    }
    Ok(())
}

/// `weft commit`: one instance at this node, over the cluster's configured transport.
pub fn run_commit(args: &CommitArgs) -> anyhow::Result<()> {
    let a = Artifact::load(&args.protocol)?;
    let cluster = weft_transport::ClusterConfig::load(&args.target.config)?;
    let transport = weft_transport::open(&cluster.transport_for(args.target.node)?)?;
    let p = commit_learn::runtime::participate(
        &a.machine,
        a.rounds,
        transport.as_ref(),
        args.instance,
        matches!(args.vote, Vote::Commit),
        Duration::from_millis(args.round_timeout_ms),
        None,
    )?;
    let states: Vec<String> = p
        .states
        .iter()
        .map(|s| commit_learn::model::state_name(*s))
        .collect();
    println!(
        "decision: {:?} (states {}; peers missing per round {:?})",
        p.decision,
        states.join(" -> "),
        p.missing
    );
    Ok(())
}
