//! `weft fedavg`: a federated run on a loopback cluster, and `weft fedavg-participant`, the
//! process that takes part beside each node (see [`weft::fedavg`] for the protocol).
//!
//! The coordinator only sets the stage and watches: it trains the centralized baseline,
//! starts the nodes and one participant process per node, reads each committed global
//! model from the store and scores it on the held-out test set, and with `--crash-round`
//! kills the aggregator's node and participant with SIGKILL in the middle of a round (its
//! key published, some updates in, no model yet), then restarts them. At the end it checks
//! that every round averaged exactly one update per node, with that node's shard size as
//! weight.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use weft::fedavg::data::{self, Examples};
use weft::fedavg::record::{decode, Contribution, KeyRecord, Keys, ModelRecord, Rejection};
use weft::fedavg::round::Member;
use weft::fedavg::FedAvgConfig;
use weft::local_cluster::LocalCluster;
use weft_raft::client::Client;
use weft_transport::ClusterConfig;

use crate::cli::{FedavgArgs, FedavgParticipantArgs};

/// What `--report` writes.
#[derive(Debug, Serialize)]
struct Report {
    config: FedAvgConfig,
    /// Examples per node, node 1 first.
    shards: Vec<usize>,
    test_examples: usize,
    parameters: usize,
    seconds: f64,
    crash: Option<Crash>,
    rounds: Vec<RoundFigures>,
}

#[derive(Debug, Serialize)]
struct Crash {
    round: u64,
    node: u32,
    updates_in: usize,
    failover_ms: u128,
}

#[derive(Debug, Serialize)]
struct RoundFigures {
    round: u64,
    aggregator: u32,
    term: u64,
    contributors: Vec<Contribution>,
    rejected: Vec<Rejection>,
    accuracy: f64,
    centralized_accuracy: f64,
    seconds: f64,
}

fn participant(node: u32) -> String {
    format!("participant-{node}")
}

/// Runs `weft fedavg`.
pub fn run(args: &FedavgArgs) -> anyhow::Result<()> {
    if args.crash_round.is_some_and(|r| r == 0 || r > args.rounds) {
        bail!("--crash-round must name a round in 1..={}", args.rounds);
    }
    if args.crash_round.is_some() && args.nodes < 3 {
        bail!("--crash-round needs at least 3 nodes, so that a majority survives the crash");
    }
    let cfg = FedAvgConfig {
        nodes: args.nodes,
        rounds: args.rounds,
        seed: args.seed,
        hidden: args.hidden,
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        rotate_every: args.rotate_every,
        deadline_s: args.timeout_s,
        ..FedAvgConfig::default()
    };
    let split = data::split(&data::digits()?, cfg.seed, cfg.nodes, cfg.test_fraction)?;
    let arch = cfg.architecture();
    let shards: Vec<usize> = split.shards.iter().map(Examples::len).collect();
    println!(
        "fedavg: digits (8x8, 10 classes): {} test examples held out, shards of {shards:?} \
         training examples on nodes 1..={}",
        split.test.len(),
        cfg.nodes
    );
    println!(
        "fedavg: network 64-{}-10 ({} parameters), {} local epoch(s) per round, batch {}, \
         lr {}, leadership rotates every {} round(s)",
        cfg.hidden,
        arch.param_count(),
        cfg.epochs,
        cfg.batch,
        cfg.lr,
        cfg.rotate_every
    );
    let centralized = centralized_baseline(&cfg, &split)?;

    let dir = std::env::temp_dir().join(format!("weft-fedavg-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut cluster = LocalCluster::create(
        &dir,
        &std::env::current_exe()?,
        cfg.nodes,
        cfg.nodes,
        args.fabric,
    )?;
    let settings = dir.join("fedavg.toml");
    fs::write(&settings, toml::to_string(&cfg)?)?;
    let started = Instant::now();
    let (leader, term) = cluster.start_all(Duration::from_secs(15))?;
    println!(
        "fedavg: {} nodes up in {}, leader node {leader} (term {term}); starting a participant beside each",
        cfg.nodes,
        dir.display()
    );
    for id in 1..=cfg.nodes {
        start_participant(&mut cluster, &settings, id)?;
    }

    let mut watch = Watch {
        keys: Keys::new(&cfg.run),
        reader: cluster.client(Duration::from_secs(10))?,
        crash_round: args.crash_round,
        crash: None,
        figures: Vec::new(),
        finished: Vec::new(),
    };
    let outcome = watch.follow(
        &mut cluster,
        &cfg,
        &settings,
        &split.test,
        &centralized,
        args,
    );
    let seconds = started.elapsed().as_secs_f64();
    if let Err(e) = outcome {
        return Err(e.context(format!("logs are in {}", dir.display())));
    }
    // Every participant leaves once it has seen the last model.
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in 1..=cfg.nodes {
        while !watch.finished.contains(&id) {
            match cluster.helper_exited(&participant(id)) {
                Some(s) if s.success() => watch.finished.push(id),
                Some(s) => bail!(
                    "participant {id} failed ({s}); logs are in {}",
                    dir.display()
                ),
                None if Instant::now() > deadline => {
                    bail!(
                        "participant {id} did not finish; logs are in {}",
                        dir.display()
                    )
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    drop(cluster);

    let report = Report {
        shards: shards.clone(),
        test_examples: split.test.len(),
        parameters: arch.param_count(),
        seconds,
        crash: watch.crash,
        rounds: watch.figures,
        config: cfg,
    };
    summarize(&report)?;
    if let Some(path) = &args.report {
        fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.keep {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Test accuracy of central training on all shards together, after each round's budget:
/// as many epochs over all the data as each participant runs over its shard.
fn centralized_baseline(cfg: &FedAvgConfig, split: &data::Split) -> anyhow::Result<Vec<f64>> {
    let arch = cfg.architecture();
    let all = Examples::concat(&split.shards);
    let mut params = arch.init(cfg.seed);
    (1..=cfg.rounds)
        .map(|r| {
            params = arch.train(&params, &all, &cfg.schedule(), cfg.seed ^ r)?;
            Ok(arch.accuracy(&params, &split.test)?)
        })
        .collect()
}

fn start_participant(cluster: &mut LocalCluster, settings: &Path, id: u32) -> anyhow::Result<()> {
    let args = [
        "fedavg-participant".into(),
        "--cluster".into(),
        cluster.config().as_os_str().to_owned(),
        "--config".into(),
        settings.as_os_str().to_owned(),
        "--node".into(),
        id.to_string().into(),
    ];
    cluster.start_helper(&participant(id), &args)
}

/// The coordinator's view of the run.
struct Watch {
    keys: Keys,
    reader: Client,
    crash_round: Option<u64>,
    crash: Option<Crash>,
    figures: Vec<RoundFigures>,
    /// Participants that exited successfully.
    finished: Vec<u32>,
}

impl Watch {
    /// Prints each round as its model is committed, crashes the aggregator once if asked,
    /// and fails if a participant dies on its own or the run overruns.
    fn follow(
        &mut self,
        cluster: &mut LocalCluster,
        cfg: &FedAvgConfig,
        settings: &Path,
        test: &Examples,
        centralized: &[f64],
        args: &FedavgArgs,
    ) -> anyhow::Result<()> {
        let arch = cfg.architecture();
        let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
        let mut round_started = Instant::now();
        let mut next = 0u64;
        while next <= cfg.rounds {
            // Store errors during a failover are expected: look again.
            while let Ok(Some(bytes)) = self.reader.get(&self.keys.model(next)) {
                let rec: ModelRecord = decode("global model", &bytes)?;
                rec.check(next, arch.param_count())?;
                if next > 0 {
                    let figures = RoundFigures {
                        round: next,
                        aggregator: rec.aggregator,
                        term: rec.term,
                        accuracy: arch.accuracy(&rec.params, test)?,
                        centralized_accuracy: centralized[next as usize - 1],
                        seconds: round_started.elapsed().as_secs_f64(),
                        contributors: rec.contributors,
                        rejected: rec.rejected,
                    };
                    print_round(&figures, cfg.rounds);
                    self.figures.push(figures);
                }
                round_started = Instant::now();
                next += 1;
                if next > cfg.rounds {
                    return Ok(());
                }
            }
            if self.crash.is_none() && self.crash_round.is_some_and(|c| next >= c) {
                self.maybe_crash(cluster, cfg, settings, next)?;
            }
            for id in 1..=cfg.nodes {
                match cluster.helper_exited(&participant(id)) {
                    Some(s) if s.success() => self.finished.push(id),
                    Some(s) => bail!(
                        "participant {id} exited ({s}) in round {next}:\n{}",
                        tail(&cluster.log_of(&participant(id)))
                    ),
                    None => {}
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "round {next} of {} not committed within {} s",
                    cfg.rounds,
                    args.timeout_s
                );
            }
            let pause = if self.crash.is_none() && self.crash_round.is_some() {
                2
            } else {
                20
            };
            std::thread::sleep(Duration::from_millis(pause));
        }
        Ok(())
    }

    /// Kills the aggregator of `round` if the round is under way: its key is published by
    /// the node that leads now, and at least one update is stored.
    fn maybe_crash(
        &mut self,
        cluster: &mut LocalCluster,
        cfg: &FedAvgConfig,
        settings: &Path,
        round: u64,
    ) -> anyhow::Result<()> {
        let Ok(Some(bytes)) = self.reader.get(&self.keys.round_key(round)) else {
            return Ok(());
        };
        let Ok(key) = decode::<KeyRecord>("key record", &bytes) else {
            return Ok(());
        };
        let mut updates_in = 0;
        for id in 1..=cfg.nodes {
            if let Ok(Some(_)) = self.reader.get(&self.keys.update(round, id)) {
                updates_in += 1;
            }
        }
        let Some((leader, term)) = cluster.leader(Duration::from_millis(500)) else {
            return Ok(());
        };
        if updates_in == 0 || leader != key.aggregator || term != key.term {
            return Ok(());
        }
        if matches!(self.reader.get(&self.keys.model(round)), Ok(Some(_))) {
            return Ok(()); // finished meanwhile: try the next round
        }
        println!(
            "fedavg: killing the aggregator of round {round} mid-round: node {leader} (term {term}) \
             and its participant, with SIGKILL ({updates_in} of {} updates in)",
            cfg.nodes
        );
        cluster.kill(leader);
        cluster.kill_helper(&participant(leader));
        let killed_at = Instant::now();
        let failover = loop {
            if let Some((l, t)) = cluster.leader(Duration::from_millis(100)) {
                if l != leader {
                    let ms = killed_at.elapsed().as_millis();
                    println!("fedavg: new leader node {l} (term {t}) {ms} ms after the kill");
                    break ms;
                }
            }
            if killed_at.elapsed() > Duration::from_secs(15) {
                bail!("no new leader within 15 s of the crash");
            }
        };
        cluster.start(leader)?;
        start_participant(cluster, settings, leader)?;
        println!("fedavg: restarted node {leader} and its participant (the key died with it)");
        self.crash = Some(Crash {
            round,
            node: leader,
            updates_in,
            failover_ms: failover,
        });
        Ok(())
    }
}

fn print_round(f: &RoundFigures, rounds: u64) {
    let examples: u64 = f.contributors.iter().map(|c| c.samples).sum();
    println!(
        "round {:>3}/{rounds}  accuracy {:5.1} %  centralized {:5.1} %  aggregator node {} (term {})  \
         {} updates, {examples} examples, {} rejected  {:.2} s",
        f.round,
        100.0 * f.accuracy,
        100.0 * f.centralized_accuracy,
        f.aggregator,
        f.term,
        f.contributors.len(),
        f.rejected.len(),
        f.seconds
    );
}

/// Prints the totals and checks that every round counted each node's update exactly once
/// with its shard's size.
fn summarize(r: &Report) -> anyhow::Result<()> {
    let last = r
        .rounds
        .last()
        .ok_or_else(|| anyhow!("no round was committed"))?;
    let aggregators: Vec<String> = r.rounds.iter().map(|f| f.aggregator.to_string()).collect();
    let rejected: usize = r.rounds.iter().map(|f| f.rejected.len()).sum();
    println!();
    println!(
        "fedavg: {} rounds in {:.1} s; final accuracy {:.1} % (centralized, same budget: {:.1} %)",
        r.rounds.len(),
        r.seconds,
        100.0 * last.accuracy,
        100.0 * last.centralized_accuracy
    );
    println!("  aggregator by round: {}", aggregators.join(" "));
    for f in &r.rounds {
        let mut nodes: Vec<u32> = f.contributors.iter().map(|c| c.node).collect();
        nodes.dedup();
        let want: Vec<u32> = (1..=r.config.nodes).collect();
        let weights_ok = f
            .contributors
            .iter()
            .all(|c| r.shards.get(c.node as usize - 1) == Some(&(c.samples as usize)));
        if nodes != want || f.contributors.len() != want.len() || !weights_ok {
            bail!(
                "round {} counted {:?}, expected each of nodes {want:?} once with its shard size",
                f.round,
                f.contributors
            );
        }
    }
    println!(
        "  updates averaged: {} (each node's exactly once per round); submissions rejected: {rejected}",
        r.rounds.len() * r.config.nodes as usize
    );
    if let Some(c) = &r.crash {
        println!(
            "  crash: aggregator node {} killed in round {} with {} update(s) in; new leader after {} ms",
            c.node, c.round, c.updates_in, c.failover_ms
        );
    }
    Ok(())
}

/// The last lines of a log, for an error message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Runs `weft fedavg-participant`.
pub fn run_participant(args: &FedavgParticipantArgs) -> anyhow::Result<()> {
    let text = fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let cfg: FedAvgConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", args.config.display()))?;
    let cluster = ClusterConfig::load(&args.cluster)?;
    let own = *cluster.clients.get(&args.node).ok_or_else(|| {
        anyhow!(
            "{}: node {} has no `client` address",
            args.cluster.display(),
            args.node
        )
    })?;
    let mut member = Member::new(cfg, args.node.0, own, &cluster)?;
    member.run()?;
    Ok(())
}
