//! The learner: deep Q-learning by self-play, as in the paper, with a counterexample loop.
//!
//! A Q-network (three fully connected ReLU layers and a linear output, one value per next
//! state) maps a process's input to the value of each possible next state. Episodes sample
//! votes and failures, let every process pick its next state ε-greedily each round, and
//! score each process with the paper's reward rules; the final reward is split equally over
//! the rounds and bootstrapped through a target network (TD targets), from a replay
//! buffer. ε decays to 0.1 and the learning rate from 0.01 to 0.001. Every so often the
//! greedy table is extracted and verified; a counterexample run joins a set that self-play
//! then replays with priority, until the table is proved or the budget runs out.

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
        }
    }
}

/// Where learning stands, for progress output.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Episodes played.
    pub episode: usize,
    /// Mean reward per process over the last block of episodes.
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
    // Rule 6: undecided (a correct process must decide under NBAC).
    match (me.decision(), spec) {
        (Decision::Undecided, Spec::Nbac { .. }) if !me.crashed => -200.0,
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
            if rng.gen_bool(0.6) {
                for _ in 0..rng.gen_range(1..=t.max(1)) {
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

    let mut replay: Vec<Step> = Vec::new();
    const REPLAY: usize = 50_000;
    // Counterexample runs: the size (index into `machines`), votes and failures.
    let mut counterexamples: Vec<(usize, Vec<State>, Failures)> = Vec::new();
    let mut episode = 0usize;
    let mut checks = 0usize;
    let decay_episodes = (cfg.episodes_per_check * 4) as f32;
    let votes_all: Vec<Vec<Vec<State>>> = sizes.iter().map(|n| all_votes(*n).collect()).collect();
    loop {
        // The greedy table under the current network.
        let q = online.forward(&all_inputs)?;
        let greedy: Vec<u32> = q.argmax(D::Minus1)?.to_vec1()?;
        let table: Vec<State> = greedy.iter().map(|a| *a as State).collect();
        for m in machines.iter_mut() {
            m.table.clone_from(&table);
        }
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
            let p = Progress {
                episode,
                reward: 0.0,
                epsilon: 0.1,
                checks,
                counterexamples: counterexamples.len(),
            };
            progress(&p);
            let machine = machines.into_iter().max_by_key(|m| m.n).expect("a size");
            return Ok(LearnReport {
                machine,
                proved,
                progress: p,
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
            let machine = &machines[size];
            let lossless = failures.none();
            // ε-greedy exploration: perturb the table entries this episode consults.
            let mut explored = machine.clone();
            let mut trace: Vec<Vec<usize>> = vec![Vec::new(); machine.n];
            let mut consulted = Vec::new();
            execute_with(machine, &votes, failures.clone(), cfg.rounds, |_, i| {
                consulted.push(i)
            });
            for i in &consulted {
                if rng.gen_bool(epsilon as f64) {
                    explored.table[*i] = rng.gen_range(0..machine.states);
                }
            }
            let run = execute_with(&explored, &votes, failures, cfg.rounds, |p, i| {
                trace[p].push(i)
            });
            let outcomes = run.outcomes();
            for (p, steps) in trace.iter().enumerate() {
                let r = reward(cfg.spec, &outcomes, lossless, p);
                total += r;
                scored += 1;
                let share = r / cfg.rounds as f32;
                for (k, e) in steps.iter().enumerate() {
                    let step = Step {
                        entry: *e,
                        action: explored.table[*e],
                        reward: share,
                        next: steps.get(k + 1).copied(),
                    };
                    if replay.len() < REPLAY {
                        replay.push(step);
                    } else {
                        let slot = rng.gen_range(0..REPLAY);
                        replay[slot] = step;
                    }
                }
            }
        }
        // Training: a few minibatches with TD targets from the target network.
        opt.set_learning_rate(0.01 - 0.009 * frac as f64);
        for _ in 0..4 {
            let batch: Vec<Step> = (0..256.min(replay.len()))
                .map(|_| replay[rng.gen_range(0..replay.len())])
                .collect();
            if batch.is_empty() {
                break;
            }
            let idx: Vec<u32> = batch.iter().map(|s| s.entry as u32).collect();
            let next_idx: Vec<u32> = batch.iter().map(|s| s.next.unwrap_or(0) as u32).collect();
            let has_next: Vec<f32> = batch
                .iter()
                .map(|s| if s.next.is_some() { 1.0 } else { 0.0 })
                .collect();
            let acts: Vec<u32> = batch.iter().map(|s| s.action as u32).collect();
            let rewards: Vec<f32> = batch.iter().map(|s| s.reward / 100.0).collect();
            let b = batch.len();
            let x = all_inputs.index_select(&Tensor::from_vec(idx, b, &dev)?, 0)?;
            let xn = all_inputs.index_select(&Tensor::from_vec(next_idx, b, &dev)?, 0)?;
            let future = target.forward(&xn)?.max(D::Minus1)?.detach();
            let y = (Tensor::from_vec(rewards, b, &dev)?
                + (future * Tensor::from_vec(has_next, b, &dev)?)?)?;
            let qa = online
                .forward(&x)?
                .gather(&Tensor::from_vec(acts, (b, 1), &dev)?, 1)?
                .squeeze(1)?;
            let loss = (qa - y)?.sqr()?.mean_all()?;
            opt.backward_step(&loss)?;
        }
        if episode % 500 == 0 {
            copy_to_target()?;
        }
        progress(&Progress {
            episode,
            reward: total / scored.max(1) as f32,
            epsilon,
            checks,
            counterexamples: counterexamples.len(),
        });
    }
}
