//! `weft learn` and `weft verify`: atomic-commit protocols, synthesized and proved.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use commit_learn::artifact::{dot, Artifact, Verification};
use commit_learn::explicit::{self, Verdict};
use commit_learn::model::{Encoding, Machine};
use commit_learn::smt;
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
        result,
        size: stats.assertions as u64,
        elapsed_ms: stats.elapsed.as_millis() as u64,
    });
    for r in &records {
        println!(
            "  {:<8} {:<10} ({} {}, {} ms)",
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

/// `weft learn`.
pub fn run_learn(args: &LearnArgs) -> anyhow::Result<()> {
    let spec = spec_of(args.spec, args.t);
    let encoding = if args.vector {
        Encoding::Vector
    } else {
        Encoding::Symmetric { cap: args.cap }
    };
    let rounds = args.rounds.unwrap_or(match spec {
        Spec::Paper => 2,
        Spec::Nbac { t } => t + 1,
    });
    println!(
        "learning {spec} for n = {}, {rounds} rounds, {} anonymous states, {encoding:?}",
        args.n, args.states
    );
    let budget = Duration::from_secs(args.budget_s);
    let machine = match args.method {
        LearnMethod::Dqn => {
            let mut cfg = commit_learn::dqn::LearnConfig::new(spec, args.n, args.seed);
            cfg.anonymous = args.states;
            cfg.encoding = encoding;
            cfg.rounds = rounds;
            cfg.budget = budget;
            let report = commit_learn::dqn::learn(&cfg, |p| {
                if p.episode % 2000 == 0 {
                    eprintln!(
                        "episode {:>7}  reward {:>8.1}  epsilon {:.2}  verification attempts {}  counterexamples {}",
                        p.episode, p.reward, p.epsilon, p.checks, p.counterexamples
                    );
                }
            })?;
            println!(
                "deep Q-learning: {} after {} episodes, {} verification attempts, {} counterexamples, {:.2} s",
                if report.proved { "proved" } else { "NOT proved" },
                report.progress.episode,
                report.progress.checks,
                report.progress.counterexamples,
                report.elapsed.as_secs_f64()
            );
            if !report.proved {
                bail!("no verified protocol within {} s; raise --budget-s, add --states, or try another --seed", args.budget_s);
            }
            report.machine
        }
        LearnMethod::Smt => {
            let (m, stats) = smt::synthesize(args.n, args.states, encoding, spec, rounds, budget)
                .map_err(|e| anyhow!("{e}"))?;
            println!(
                "z3 synthesis: {} candidates, {} counterexamples, {:.2} s",
                stats.candidates,
                stats.counterexamples,
                stats.elapsed.as_secs_f64()
            );
            m
        }
    };
    let (ok, verified) = verify_both(&machine, spec, rounds)?;
    if !ok {
        bail!("the synthesized protocol failed verification (a bug: please report it)");
    }
    let artifact = Artifact {
        spec,
        rounds,
        machine,
        method: match args.method {
            LearnMethod::Smt => "smt".into(),
            LearnMethod::Dqn => format!("dqn (seed {})", args.seed),
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
