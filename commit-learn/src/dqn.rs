//! The learner: deep Q-learning by self-play, as in the paper, with a counterexample loop.
//!
//! A Q-network (three fully connected ReLU layers and a linear output, one value per next
//! state) maps a process's input to the value of each possible next state. Episodes sample
//! votes and failures and are scored with the paper's reward rules; the final reward is
//! split equally over the rounds. ε decays to 0.1 and the learning rate from 0.01 to
//! 0.001; targets come from a replay buffer and a target network. Every so often the greedy
//! table is extracted and verified; a counterexample run joins a set that self-play then
//! replays with priority, until the table is proved or the budget runs out.
//!
//! Two ways to turn an episode into targets ([`Targets`]): the paper's temporal-difference
//! targets, and counterfactual ones (the default), which learn multi-round protocols such
//! as non-blocking atomic commit under two crashes several times faster.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{linear, AdamW, Linear, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::explicit::{self, Verdict};
use crate::model::{Encoding, Machine, State, LOCAL_ABORT, LOCAL_COMMIT};
use crate::run::{all_votes, execute_with, Failures};
use crate::spec::{Decision, Outcome, Spec};

/// Settings of a learning run.
#[derive(Clone, Debug)]
pub struct LearnConfig {
    /// Processes.
    pub n: usize,
    /// More process counts the same table must be correct for (symmetric encoding only):
    /// self-play and verification cover every size, so the protocol extrapolates.
    pub also_sizes: Vec<usize>,
    /// Anonymous states.
    pub anonymous: u8,
    /// Input encoding.
    pub encoding: Encoding,
    /// Specification.
    pub spec: Spec,
    /// Rounds.
    pub rounds: usize,
    /// Seeds network initialization and self-play.
    pub seed: u64,
    /// Time budget.
    pub budget: Duration,
    /// Episodes between two verification attempts.
    pub episodes_per_check: usize,
    /// Width of the hidden layers.
    pub hidden: usize,
    /// How episodes become training targets.
    pub targets: Targets,
}

/// How the learner turns an episode into training targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Targets {
    /// The paper's: every process explores (each entry it consults is random with
    /// probability ε), earns its own reward, split over its rounds and bootstrapped
    /// through the target network. It learns, but slowly where rounds must be counted:
    /// the table is shared, so a process is also paid for what the other copies of it
    /// did (a premature commit that leaves another process blocked costs only the
    /// blocked one), and others' exploration drowns out rare penalties.
    Temporal,
    /// Counterfactual: the episode is replayed with a greedy table frozen along with the
    /// target network and, for each entry the run consults, once per possible next state
    /// with only that entry changed; each replay's team reward (mean over processes) is the target for
    /// that entry and state. Choices are compared on the same run, an outcome is
    /// credited to the entry that caused it, and nobody else's exploration blurs it, so
    /// a correct table stays correct: where the targets prefer another choice to its own,
    /// that choice keeps it correct (a test checks this for the hand-written two-crash
    /// table).
    /// Exploration changes one consulted entry with probability ε and evaluates that
    /// entry and the entries the change newly reaches, so a chain of states over several
    /// rounds is found one link at a time.
    #[default]
    Counterfactual,
}

impl LearnConfig {
    /// Defaults for a specification: 2 rounds for `paper`, `t + 1` for `nbac`.
    pub fn new(spec: Spec, n: usize, seed: u64) -> LearnConfig {
        LearnConfig {
            n,
            also_sizes: Vec::new(),
            anonymous: 1,
            encoding: Encoding::Vector,
            spec,
            rounds: match spec {
                Spec::Paper => 2,
                Spec::Nbac { t } => t + 1,
            },
            seed,
            budget: Duration::from_secs(60),
            episodes_per_check: 1500,
            hidden: 64,
            targets: Targets::default(),
        }
    }
}

/// Where learning stands, for progress output.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Episodes played.
    pub episode: usize,
    /// Mean reward per process over the last block of episodes (as played: explored
    /// runs for [`Targets::Temporal`], greedy runs for [`Targets::Counterfactual`]).
    pub reward: f32,
    /// Current exploration rate.
    pub epsilon: f32,
    /// Verification attempts so far.
    pub checks: usize,
    /// Counterexamples collected.
    pub counterexamples: usize,
}

/// The result of a learning run.
#[derive(Clone, Debug)]
pub struct LearnReport {
    /// The last table extracted (verified if `proved`).
    pub machine: Machine,
    /// Whether it was proved correct.
    pub proved: bool,
    /// The final progress.
    pub progress: Progress,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why learning could not run.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    /// The model could not be built.
    #[error("{0}")]
    Model(#[from] crate::model::ModelError),
    /// The tensor library failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The verifier cannot enumerate this size (the learner relies on it).
    #[error("{0}")]
    TooLarge(#[from] crate::run::TooMany),
}

struct QNet {
    l1: Linear,
    l2: Linear,
    l3: Linear,
    out: Linear,
}

impl QNet {
    fn new(
        vb: VarBuilder,
        inputs: usize,
        hidden: usize,
        actions: usize,
    ) -> candle_core::Result<QNet> {
        Ok(QNet {
            l1: linear(inputs, hidden, vb.pp("l1"))?,
            l2: linear(hidden, hidden, vb.pp("l2"))?,
            l3: linear(hidden, hidden, vb.pp("l3"))?,
            out: linear(hidden, actions, vb.pp("out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.l1.forward(x)?.relu()?;
        let h = self.l2.forward(&h)?.relu()?;
        let h = self.l3.forward(&h)?.relu()?;
        self.out.forward(&h)
    }
}

/// One step of one process: the table entry it consulted and the state it chose; `next`
/// is the entry it consults in the following round (if any).
#[derive(Clone, Copy)]
struct Step {
    entry: usize,
    action: State,
    reward: f32,
    next: Option<usize>,
}

/// One counterfactual target: the team's reward (already split over the rounds) had
/// `entry` chosen `action` in a replayed run.
#[derive(Clone, Copy)]
struct Counterfactual {
    entry: usize,
    action: State,
    value: f32,
}

/// A bounded experience-replay buffer: once full, a new sample replaces a random one, so
/// the buffer stays a uniform sample of recent play.
struct Replay<T> {
    samples: Vec<T>,
}

impl<T: Copy> Replay<T> {
    const CAPACITY: usize = 50_000;

    fn new() -> Replay<T> {
        Replay {
            samples: Vec::new(),
        }
    }

    fn push(&mut self, sample: T, rng: &mut ChaCha8Rng) {
        if self.samples.len() < Self::CAPACITY {
            self.samples.push(sample);
        } else {
            let slot = rng.gen_range(0..Self::CAPACITY);
            self.samples[slot] = sample;
        }
    }

    /// A minibatch of up to 256 samples drawn with replacement.
    fn batch(&self, rng: &mut ChaCha8Rng) -> Vec<T> {
        (0..256.min(self.samples.len()))
            .map(|_| self.samples[rng.gen_range(0..self.samples.len())])
            .collect()
    }
}

/// The paper's reward rules 1–6 (and their NBAC counterparts) for one process.
fn reward(spec: Spec, outcomes: &[Outcome], lossless: bool, p: usize) -> f32 {
    let me = &outcomes[p];
    let any_commit = outcomes.iter().any(|o| o.committed);
    let any_abort = outcomes.iter().any(|o| o.aborted);
    let all_commit_votes = outcomes.iter().all(|o| o.vote == LOCAL_COMMIT);
    let any_abort_vote = outcomes.iter().any(|o| o.vote == LOCAL_ABORT);
    let all = |d: Decision| outcomes.iter().all(|o| o.decision() == d);
    // Rules 1-3: conflicting, an abort voter committing, commit and abort together.
    if me.decision() == Decision::Conflicting
        || (me.vote == LOCAL_ABORT && me.committed)
        || (any_commit && any_abort)
    {
        return -2000.0;
    }
    if let Spec::Nbac { .. } = spec {
        if any_commit && !all_commit_votes {
            return -2000.0;
        }
    }
    // Rules 4-5: without losses, the right unanimous outcome.
    if lossless && any_abort_vote {
        return if all(Decision::Abort) { 100.0 } else { -2000.0 };
    }
    if lossless && all_commit_votes {
        return if all(Decision::Commit) {
            100.0
        } else {
            -2000.0
        };
    }
    // Rule 6: undecided. Under NBAC a correct process must decide (termination is one of
    // its correctness properties, so it costs what rules 1-5 charge; priced lower, a
    // learner settles for blocking wherever deciding is risky).
    match (me.decision(), spec) {
        (Decision::Undecided, Spec::Nbac { .. }) if !me.crashed => -2000.0,
        (Decision::Undecided, _) => -0.5,
        _ => 10.0,
    }
}

/// Samples failures for self-play.
fn sample_failures(spec: Spec, n: usize, rounds: usize, rng: &mut ChaCha8Rng) -> Failures {
    match spec {
        Spec::Paper => {
            let p_loss = if rng.gen_bool(0.3) {
                0.0
            } else {
                rng.gen_range(0.05..0.4)
            };
            Failures::Omissions(
                (0..rounds * n * n)
                    .map(|i| i / n % n != i % n && rng.gen_bool(p_loss))
                    .collect(),
            )
        }
        Spec::Nbac { t } => {
            let mut c = vec![None; n];
            // Crash-free runs stay common; with t = 0 they are the only ones the spec has.
            if t > 0 && rng.gen_bool(0.6) {
                for _ in 0..rng.gen_range(1..=t) {
                    let p = rng.gen_range(0..n);
                    let reached = (0..n).map(|q| q == p || rng.gen_bool(0.5)).collect();
                    c[p] = Some((rng.gen_range(1..=rounds), reached));
                }
            }
            Failures::Crashes(c)
        }
    }
}

/// Re-initializes every parameter from the seeded generator (the CPU device of the tensor
/// library cannot be seeded), uniform in ±1/√fan_in as `linear` would: runs reproduce.
fn reseed(vars: &VarMap, rng: &mut ChaCha8Rng) -> candle_core::Result<()> {
    let data = vars.data().lock().expect("var map lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let fan_in = if dims.len() == 2 { dims[1] } else { dims[0] };
        let bound = 1.0 / (fan_in as f32).sqrt();
        let count: usize = dims.iter().product();
        let values: Vec<f32> = (0..count).map(|_| rng.gen_range(-bound..bound)).collect();
        var.set(&Tensor::from_vec(values, dims.as_slice(), var.device())?)?;
    }
    Ok(())
}

/// Learns a protocol for `cfg`, calling `progress` after every block of episodes.
pub fn learn(
    cfg: &LearnConfig,
    mut progress: impl FnMut(&Progress),
) -> Result<LearnReport, LearnError> {
    // Zero rounds consult no table entry; zero-width layers make no network.
    let invalid = match (cfg.rounds, cfg.hidden) {
        (0, _) => Some("the learner needs at least one round"),
        (_, 0) => Some("the learner's hidden layers need at least one unit"),
        _ => None,
    };
    if let Some(why) = invalid {
        return Err(crate::model::ModelError::Invalid(why.into()).into());
    }
    let started = Instant::now();
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let sizes: Vec<usize> = std::iter::once(cfg.n)
        .chain(cfg.also_sizes.iter().copied())
        .collect();
    let mut machines = crate::model::for_sizes(&sizes, cfg.anonymous, cfg.encoding)?;
    let domain = machines[0].domain_size();
    let features: Vec<f32> = (0..domain).flat_map(|i| machines[0].features(i)).collect();
    let width = features.len() / domain;
    let all_inputs = Tensor::from_vec(features, (domain, width), &dev)?;
    let actions = machines[0].states as usize;

    let online_vars = VarMap::new();
    let target_vars = VarMap::new();
    let seed_tensors = |vm: &VarMap| -> candle_core::Result<QNet> {
        QNet::new(
            VarBuilder::from_varmap(vm, DType::F32, &dev),
            width,
            cfg.hidden,
            actions,
        )
    };
    let online = seed_tensors(&online_vars)?;
    reseed(&online_vars, &mut rng)?;
    let target = seed_tensors(&target_vars)?;
    let copy_to_target = || -> candle_core::Result<()> {
        let src = online_vars.data().lock().expect("var map lock");
        let dst = target_vars.data().lock().expect("var map lock");
        for (name, var) in src.iter() {
            if let Some(t) = dst.get(name) {
                t.set(var.as_tensor())?;
            }
        }
        Ok(())
    };
    copy_to_target()?;
    let mut opt = AdamW::new(
        online_vars.all_vars(),
        ParamsAdamW {
            lr: 0.01,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;

    let mut temporal = Replay::<Step>::new();
    let mut counterfactual = Replay::<Counterfactual>::new();
    // Counterexample runs: the size (index into `machines`), votes and failures.
    let mut counterexamples: Vec<(usize, Vec<State>, Failures)> = Vec::new();
    let mut episode = 0usize;
    let mut checks = 0usize;
    let decay_episodes = (cfg.episodes_per_check * 4) as f32;
    let votes_all: Vec<Vec<Vec<State>>> = sizes.iter().map(|n| all_votes(*n).collect()).collect();
    // The greedy table frozen along with the target network: what counterfactual replays
    // play. It is taken at the start of the block whose end refreshes the target, so it
    // trails the target network by that block's training.
    let mut target_table: Option<Vec<State>> = None;
    let mut last = Progress {
        episode: 0,
        reward: 0.0,
        epsilon: 1.0,
        checks: 0,
        counterexamples: 0,
    };
    loop {
        // The greedy table under the current network.
        let q = online.forward(&all_inputs)?;
        let greedy: Vec<u32> = q.argmax(D::Minus1)?.to_vec1()?;
        let table: Vec<State> = greedy.iter().map(|a| *a as State).collect();
        for m in machines.iter_mut() {
            m.table.clone_from(&table);
        }
        let target_table = target_table.get_or_insert_with(|| table.clone());
        let mut proved = false;
        if episode > 0 && episode % cfg.episodes_per_check == 0 {
            checks += 1;
            proved = true;
            for (k, m) in machines.iter().enumerate() {
                if let Verdict::Refuted(c) = explicit::verify(m, cfg.spec, cfg.rounds)? {
                    counterexamples.push((k, c.run.votes, c.run.failures));
                    proved = false;
                    break;
                }
            }
        }
        if proved || started.elapsed() > cfg.budget {
            // The last block's reward and ε, with the check that just ran.
            last.checks = checks;
            last.counterexamples = counterexamples.len();
            progress(&last);
            let machine = machines.into_iter().max_by_key(|m| m.n).expect("a size");
            return Ok(LearnReport {
                machine,
                proved,
                progress: last,
                elapsed: started.elapsed(),
            });
        }
        // A block of episodes played with the ε-greedy version of this table.
        let frac = (episode as f32 / decay_episodes).min(1.0);
        let epsilon = 1.0 - 0.9 * frac;
        let mut total = 0f32;
        let mut scored = 0usize;
        let block = 50;
        for _ in 0..block {
            episode += 1;
            let (size, votes, failures) = if !counterexamples.is_empty() && rng.gen_bool(0.3) {
                counterexamples[rng.gen_range(0..counterexamples.len())].clone()
            } else {
                // One size needs no draw, so single-size runs replay as they always did.
                let size = match machines.len() {
                    1 => 0,
                    k => rng.gen_range(0..k),
                };
                let all = &votes_all[size];
                let v = all[rng.gen_range(0..all.len())].clone();
                let n = machines[size].n;
                (size, v, sample_failures(cfg.spec, n, cfg.rounds, &mut rng))
            };
            let episode = Episode {
                spec: cfg.spec,
                rounds: cfg.rounds,
                votes: &votes,
                failures: &failures,
            };
            let (reward, processes) = match cfg.targets {
                Targets::Temporal => {
                    episode.temporal(&machines[size], epsilon, &mut temporal, &mut rng)
                }
                Targets::Counterfactual => {
                    let mut base = machines[size].clone();
                    base.table.clone_from(target_table);
                    episode.counterfactual(base, epsilon, &mut counterfactual, &mut rng)
                }
            };
            total += reward;
            scored += processes;
        }
        // Training: a few minibatches.
        opt.set_learning_rate(0.01 - 0.009 * frac as f64);
        let select = |idx: Vec<u32>| -> candle_core::Result<Tensor> {
            let b = idx.len();
            all_inputs.index_select(&Tensor::from_vec(idx, b, &dev)?, 0)
        };
        // One gradient step moving the values of (entry, action) pairs toward `y`.
        let mut fit = |entries: Vec<u32>, acts: Vec<u32>, y: Tensor| -> candle_core::Result<()> {
            let b = acts.len();
            let qa = online
                .forward(&select(entries)?)?
                .gather(&Tensor::from_vec(acts, (b, 1), &dev)?, 1)?
                .squeeze(1)?;
            opt.backward_step(&(qa - y)?.sqr()?.mean_all()?)
        };
        match cfg.targets {
            // TD targets from the target network: the split reward plus the best value
            // of the entry consulted next.
            Targets::Temporal => {
                for _ in 0..4 {
                    let batch = temporal.batch(&mut rng);
                    if batch.is_empty() {
                        break;
                    }
                    let b = batch.len();
                    let xn = select(batch.iter().map(|s| s.next.unwrap_or(0) as u32).collect())?;
                    let has_next: Vec<f32> = batch
                        .iter()
                        .map(|s| if s.next.is_some() { 1.0 } else { 0.0 })
                        .collect();
                    let rewards: Vec<f32> = batch.iter().map(|s| s.reward / 100.0).collect();
                    let future = target.forward(&xn)?.max(D::Minus1)?.detach();
                    let y = (Tensor::from_vec(rewards, b, &dev)?
                        + (future * Tensor::from_vec(has_next, b, &dev)?)?)?;
                    fit(
                        batch.iter().map(|s| s.entry as u32).collect(),
                        batch.iter().map(|s| s.action as u32).collect(),
                        y,
                    )?;
                }
            }
            // Counterfactual targets were computed by replaying with the target network's
            // table; each block yields about ten times as many as a temporal one.
            Targets::Counterfactual => {
                for _ in 0..8 {
                    let batch = counterfactual.batch(&mut rng);
                    if batch.is_empty() {
                        break;
                    }
                    let values: Vec<f32> = batch.iter().map(|s| s.value / 100.0).collect();
                    fit(
                        batch.iter().map(|s| s.entry as u32).collect(),
                        batch.iter().map(|s| s.action as u32).collect(),
                        Tensor::from_vec(values, batch.len(), &dev)?,
                    )?;
                }
            }
        }
        if episode % 500 == 0 {
            copy_to_target()?;
            target_table.clone_from(&table);
        }
        last = Progress {
            episode,
            reward: total / scored.max(1) as f32,
            epsilon,
            checks,
            counterexamples: counterexamples.len(),
        };
        progress(&last);
    }
}

/// One self-play episode: the votes and failures every replay of it shares.
struct Episode<'a> {
    spec: Spec,
    rounds: usize,
    votes: &'a [State],
    failures: &'a Failures,
}

impl Episode<'_> {
    /// Every process's reward when `machine` plays this episode, and the table entries
    /// the run consulted.
    fn play(&self, machine: &Machine) -> (Vec<f32>, Vec<Vec<usize>>) {
        let mut trace: Vec<Vec<usize>> = vec![Vec::new(); machine.n];
        let run = execute_with(
            machine,
            self.votes,
            self.failures.clone(),
            self.rounds,
            |p, i| trace[p].push(i),
        );
        let outcomes = run.outcomes();
        let lossless = self.failures.none();
        let rewards = (0..machine.n)
            .map(|p| reward(self.spec, &outcomes, lossless, p))
            .collect();
        (rewards, trace)
    }

    /// The paper's episode: each consulted entry is random with probability `epsilon`;
    /// every step of every process is stored with its process's reward split over the
    /// rounds and the entry it consults next. Returns the reward sum and the processes.
    fn temporal(
        &self,
        machine: &Machine,
        epsilon: f32,
        replay: &mut Replay<Step>,
        rng: &mut ChaCha8Rng,
    ) -> (f32, usize) {
        let mut explored = machine.clone();
        let (_, consulted) = self.play(machine);
        for i in consulted.iter().flatten() {
            if rng.gen_bool(epsilon as f64) {
                explored.table[*i] = rng.gen_range(0..machine.states);
            }
        }
        let (rewards, trace) = self.play(&explored);
        for (steps, r) in trace.iter().zip(&rewards) {
            let share = r / self.rounds as f32;
            for (k, e) in steps.iter().enumerate() {
                let step = Step {
                    entry: *e,
                    action: explored.table[*e],
                    reward: share,
                    next: steps.get(k + 1).copied(),
                };
                replay.push(step, rng);
            }
        }
        (rewards.iter().sum(), rewards.len())
    }

    /// The counterfactual episode on `base` (the table frozen with the target network): with
    /// probability `epsilon` one consulted entry is changed at random, and that entry and
    /// the ones the change newly reaches are evaluated; otherwise every consulted entry
    /// is. Evaluating an entry replays the episode once per next state with only that
    /// entry changed and stores the team reward, split over the rounds. Returns the
    /// greedy run's reward sum and the processes.
    fn counterfactual(
        &self,
        mut base: Machine,
        epsilon: f32,
        replay: &mut Replay<Counterfactual>,
        rng: &mut ChaCha8Rng,
    ) -> (f32, usize) {
        // The entries a run consulted, from the trace `play` keeps anyway.
        let consulted =
            |trace: Vec<Vec<usize>>| -> BTreeSet<usize> { trace.into_iter().flatten().collect() };
        let (rewards, trace) = self.play(&base);
        let greedy = consulted(trace);
        // A run where every process crashes in round 1 consults nothing.
        let evaluate: Vec<usize> = if !greedy.is_empty() && rng.gen_bool(epsilon as f64) {
            let changed = *greedy
                .iter()
                .nth(rng.gen_range(0..greedy.len()))
                .expect("an index below the length");
            base.table[changed] = rng.gen_range(0..base.states);
            let reached = consulted(self.play(&base).1);
            std::iter::once(changed)
                .chain(reached.difference(&greedy).copied())
                .collect()
        } else {
            greedy.into_iter().collect()
        };
        for entry in evaluate {
            let keep = base.table[entry];
            for action in 0..base.states {
                base.table[entry] = action;
                let team: f32 = self.play(&base).0.iter().sum::<f32>() / base.n as f32;
                let value = team / self.rounds as f32;
                replay.push(
                    Counterfactual {
                        entry,
                        action,
                        value,
                    },
                    rng,
                );
            }
            base.table[entry] = keep;
        }
        (rewards.iter().sum(), rewards.len())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::protocols::two_crash_nbac;
    use crate::run::for_each_failure;

    /// Self-play stays inside the specification: no crashes where none are tolerated,
    /// at most `t` otherwise, and crash-free runs among them.
    #[test]
    fn sampled_failures_crash_at_most_t_processes() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for t in 0..=2 {
            let mut crashed = [0usize; 3];
            for _ in 0..300 {
                let Failures::Crashes(c) = sample_failures(Spec::Nbac { t }, 3, t + 1, &mut rng)
                else {
                    panic!("nbac samples crashes");
                };
                let k = c.iter().filter(|p| p.is_some()).count();
                assert!(k <= t, "{k} crashes with t = {t}");
                crashed[k] += 1;
            }
            assert!(
                crashed[0] > 0 && (t == 0 || crashed[t] > 0),
                "t = {t}: {crashed:?}"
            );
        }
    }

    /// What keeps a correct table correct under counterfactual training: averaged over
    /// every run (votes and crash patterns alike), wherever the targets rank another
    /// choice above the table's own, making that change leaves the table correct (such a
    /// change lets a process decide earlier, which a correct table may leave for later).
    #[test]
    fn counterfactual_targets_never_prefer_a_change_that_breaks_a_correct_table() {
        let spec = Spec::Nbac { t: 2 };
        let m = two_crash_nbac(3).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut sums: HashMap<(usize, State), (f32, u32)> = HashMap::new();
        for votes in all_votes(3) {
            for_each_failure(spec, 3, 3, |failures| {
                let mut replay = Replay::new();
                let episode = Episode {
                    spec,
                    rounds: 3,
                    votes: &votes,
                    failures: &failures,
                };
                let (reward, processes) =
                    episode.counterfactual(m.clone(), 0.0, &mut replay, &mut rng);
                // A correct table never earns a penalty: one correct process decides (10),
                // the at most two crashed ones may not (-0.5 each).
                assert!(reward >= 9.0 && processes == 3, "{reward} over {processes}");
                for s in replay.samples {
                    let e = sums.entry((s.entry, s.action)).or_default();
                    e.0 += s.value;
                    e.1 += 1;
                }
                true
            })
            .unwrap();
        }
        let entries: BTreeSet<usize> = sums.keys().map(|(e, _)| *e).collect();
        assert!(entries.len() > 10, "{} entries consulted", entries.len());
        let mut preferred = 0;
        for e in entries {
            let mean = |a: State| sums[&(e, a)].0 / sums[&(e, a)].1 as f32;
            let own = mean(m.table[e]);
            for a in (0..m.states).filter(|a| mean(*a) > own) {
                let mut changed = m.clone();
                changed.table[e] = a;
                assert!(
                    matches!(
                        explicit::verify(&changed, spec, 3).unwrap(),
                        Verdict::Proved { .. }
                    ),
                    "{}: {} averages {}, above the table's {} ({own}), and breaks it",
                    m.describe(e),
                    crate::model::state_name(a),
                    mean(a),
                    crate::model::state_name(m.table[e]),
                );
                preferred += 1;
            }
        }
        // The table is not the only correct one: some entries can decide earlier.
        assert!(preferred > 0);
    }
}
