//! Election speed: kill the leader of a local cluster with SIGKILL, time until another node
//! reports itself leader of a later term, count the terms that took, restart the killed
//! node, let the cluster settle, repeat.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde::Serialize;
use weft::local_cluster::LocalCluster;

use crate::latency::{Recorder, Summary};

/// One trial.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Trial {
    /// From the kill to the first status report of a new leader, in milliseconds
    /// (failure detection by the election timeout included).
    pub downtime_ms: f64,
    /// Terms from the killed leader's to the new leader's (1 = elected in the first
    /// election).
    pub terms: u64,
}

/// All trials of one run.
#[derive(Clone, Debug, Serialize)]
pub struct ElectionResult {
    /// Cluster size.
    pub servers: u32,
    /// Each trial, in order.
    pub trials: Vec<Trial>,
    /// Distribution of the downtimes (nanoseconds).
    pub downtime: Summary,
    /// How many trials needed 1, 2, 3, ... terms.
    pub terms_histogram: Vec<u64>,
}

/// How often node statuses are polled while waiting for the new leader.
const POLL: Duration = Duration::from_millis(1);
/// How long one trial may wait for a new leader before the run fails.
const TRIAL_LIMIT: Duration = Duration::from_secs(10);

/// Runs `trials` leader kills on `cluster` (all of whose `servers` nodes are running),
/// calling `progress` after each.
pub fn run(
    cluster: &mut LocalCluster,
    servers: u32,
    trials: u32,
    progress: &mut dyn FnMut(u32, &Trial),
) -> anyhow::Result<ElectionResult> {
    let probe = cluster.client(Duration::from_secs(2))?;
    let mut out = Vec::new();
    for t in 1..=trials {
        let (old, term) = cluster
            .leader(Duration::from_secs(10))
            .ok_or_else(|| anyhow!("no leader before trial {t}"))?;
        cluster.kill(old);
        let killed = Instant::now();
        let (new, new_term) = loop {
            let found = (1..=servers)
                .filter(|id| *id != old)
                .filter_map(|id| {
                    probe
                        .status_of(cluster.client_addr(id))
                        .ok()
                        .map(|s| (id, s))
                })
                .find(|(_, s)| s.is_leader() && s.term > term);
            if let Some((id, s)) = found {
                break (id, s.term);
            }
            if killed.elapsed() > TRIAL_LIMIT {
                bail!("trial {t}: no new leader {TRIAL_LIMIT:?} after killing node {old}");
            }
            std::thread::sleep(POLL);
        };
        let trial = Trial {
            downtime_ms: killed.elapsed().as_secs_f64() * 1e3,
            terms: new_term - term,
        };
        tracing::debug!(trial = t, old, new, ?trial, "election");
        out.push(trial);
        progress(t, &trial);
        cluster.start(old)?;
        settle(cluster, old, &probe)?;
        tracing::debug!(new, "settled");
    }
    let mut rec = Recorder::new()?;
    let mut terms_histogram = Vec::new();
    for t in &out {
        rec.record(Duration::from_secs_f64(t.downtime_ms / 1e3));
        let i = t.terms.max(1) as usize - 1;
        if terms_histogram.len() <= i {
            terms_histogram.resize(i + 1, 0);
        }
        terms_histogram[i] += 1;
    }
    Ok(ElectionResult {
        servers,
        downtime: rec.summary().ok_or_else(|| anyhow!("no trial ran"))?,
        trials: out,
        terms_histogram,
    })
}

/// Waits until the restarted node `back` follows a leader, then a little longer, so the
/// next kill starts from a steady cluster.
fn settle(
    cluster: &LocalCluster,
    back: u32,
    probe: &weft_raft::client::Client,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(s) = probe.status_of(cluster.client_addr(back)) {
            if s.leader.is_some() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("restarted node {back} found no leader within 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}
