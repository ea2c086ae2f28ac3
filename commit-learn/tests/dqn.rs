//! The deep Q-learning learner finds protocols that both verifiers prove: the paper's
//! three-process atomic commit with either kind of targets, and non-blocking atomic commit
//! under two crashes with counterfactual ones (the default).

use std::time::Duration;

use commit_learn::dqn::{learn, LearnConfig, Targets};
use commit_learn::explicit::{verify, Verdict};
use commit_learn::model::Encoding;
use commit_learn::spec::Spec;

/// The budget of a learning test: generous, since a seeded run always takes the same
/// episodes and only the machine's speed varies.
fn budget() -> Duration {
    Duration::from_secs(
        std::env::var("WEFT_LEARN_BUDGET_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    )
}

#[test]
fn learns_a_verified_three_process_protocol() {
    paper_protocol(Targets::Counterfactual);
}

#[test]
fn learns_it_with_the_papers_temporal_difference_targets_too() {
    paper_protocol(Targets::Temporal);
}

/// Two crashes in three rounds: each state counts a round on the way to Commit.
#[test]
fn learns_non_blocking_atomic_commit_under_two_crashes() {
    let spec = Spec::Nbac { t: 2 };
    let mut cfg = LearnConfig::new(spec, 3, 1);
    cfg.anonymous = 4;
    cfg.encoding = Encoding::Symmetric { cap: 1 };
    cfg.budget = budget();
    let report = learn(&cfg, |_| {}).unwrap();
    eprintln!("{:?} in {:?}", report.progress, report.elapsed);
    assert!(report.proved, "not proved: {:?}", report.progress);
    assert_eq!(cfg.rounds, 3, "t + 1 rounds");
    assert!(matches!(
        verify(&report.machine, spec, 3).unwrap(),
        Verdict::Proved { .. }
    ));
    let (z3, _) = commit_learn::smt::verify(&report.machine, spec, 3).unwrap();
    assert!(matches!(z3, Verdict::Proved { .. }));
}

/// Zero rounds or zero-width layers are refused with an error that says so, not a panic
/// or a tensor library's message, by either kind of targets.
#[test]
fn zero_rounds_or_width_is_an_error() {
    for targets in [Targets::Counterfactual, Targets::Temporal] {
        let mut cfg = LearnConfig::new(Spec::Nbac { t: 1 }, 3, 1);
        cfg.rounds = 0;
        cfg.targets = targets;
        let err = learn(&cfg, |_| {}).unwrap_err();
        assert!(err.to_string().contains("at least one round"), "{err}");
        let mut cfg = LearnConfig::new(Spec::Nbac { t: 1 }, 3, 1);
        cfg.hidden = 0;
        cfg.targets = targets;
        let err = learn(&cfg, |_| {}).unwrap_err();
        assert!(err.to_string().contains("at least one unit"), "{err}");
    }
}

/// With as many crashes as processes, some runs consult no table entry at all (everyone
/// crashes in round 1); learning goes on through them.
#[test]
fn runs_where_everyone_crashes_are_learned_through() {
    for targets in [Targets::Counterfactual, Targets::Temporal] {
        let mut cfg = LearnConfig::new(Spec::Nbac { t: 2 }, 2, 1);
        cfg.targets = targets;
        cfg.budget = Duration::from_secs(2);
        let report = learn(&cfg, |_| {}).unwrap();
        assert!(report.progress.episode > 0);
    }
}

/// The report's progress is the last block's (its reward and ε), not placeholders.
#[test]
fn the_report_carries_the_last_blocks_figures() {
    let mut cfg = LearnConfig::new(Spec::Nbac { t: 1 }, 3, 1);
    cfg.budget = Duration::from_secs(1);
    let mut seen = Vec::new();
    let report = learn(&cfg, |p| seen.push(p.clone())).unwrap();
    assert!(seen.len() >= 3, "{} blocks in a second", seen.len() - 1);
    let block = &seen[seen.len() - 2];
    let last = &report.progress;
    assert_eq!(
        (last.episode, last.reward, last.epsilon),
        (block.episode, block.reward, block.epsilon)
    );
    assert!(last.epsilon < 1.0, "ε decays: {last:?}");
    assert_eq!(seen.last(), Some(last));
}

fn paper_protocol(targets: Targets) {
    let mut cfg = LearnConfig::new(Spec::Paper, 3, 1);
    cfg.targets = targets;
    cfg.budget = budget();
    let report = learn(&cfg, |p| {
        if p.episode % 1000 == 0 {
            eprintln!(
                "episode {} reward {:.1} eps {:.2} checks {} cex {}",
                p.episode, p.reward, p.epsilon, p.checks, p.counterexamples
            );
        }
    })
    .unwrap();
    eprintln!("{:?} in {:?}", report.progress, report.elapsed);
    assert!(
        report.proved,
        "not proved within the budget: {:?}",
        report.progress
    );
    assert!(matches!(
        verify(&report.machine, Spec::Paper, 2).unwrap(),
        Verdict::Proved { .. }
    ));
    // Z3 agrees.
    let (z3, _) = commit_learn::smt::verify(&report.machine, Spec::Paper, 2).unwrap();
    assert!(matches!(z3, Verdict::Proved { .. }));
    // Same seed, same protocol: training is reproducible.
    let again = learn(&cfg, |_| {}).unwrap();
    assert_eq!(again.machine.table, report.machine.table);
    assert_eq!(again.progress.episode, report.progress.episode);
}

/// The target, run on demand in release: `WEFT_LEARN_SEEDS=10 cargo test -p
/// commit-learn --release --test dqn -- --ignored seeds --nocapture`.
#[test]
#[ignore = "takes minutes in a debug build; a release-mode report (see the doc comment)"]
fn seeds() {
    let seeds: u64 = std::env::var("WEFT_LEARN_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut proved = 0;
    for seed in 1..=seeds {
        let mut cfg = LearnConfig::new(Spec::Paper, 3, seed);
        cfg.budget = Duration::from_secs(60);
        let r = learn(&cfg, |_| {}).unwrap();
        eprintln!(
            "seed {seed}: proved {} after {} episodes, {} checks, {:.2} s",
            r.proved,
            r.progress.episode,
            r.progress.checks,
            r.elapsed.as_secs_f64()
        );
        proved += usize::from(r.proved);
    }
    eprintln!("{proved} of {seeds} seeds proved within 60 s");
    assert!(proved * 10 >= seeds as usize * 9);
}
