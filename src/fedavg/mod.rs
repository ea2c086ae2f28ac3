//! Federated averaging on a weft cluster, with a rotating aggregator elected by Raft
//! (rafty's application, without its single point of failure).
//!
//! Every node holds a private shard of a real data set ([`data`]: handwritten digits that
//! ship inside the `smartcore` crate) and trains a small network on it ([`model`], on
//! candle). A participant process runs beside each node ([`round`]): whichever node leads
//! the Raft cluster is the round's aggregator. It publishes a fresh X25519 public key in
//! the replicated store, the participants seal their updates to it ([`seal`]), it averages
//! what it can open (FedAvg, weighted by shard size) and commits the global model with a
//! compare-and-set, so a round is finalized once and every replica holds the result.
//! Records in the store are in [`record`]. Leadership moves on by transfer every
//! [`FedAvgConfig::rotate_every`] rounds; an aggregator that crashes takes its private key
//! with it, and the next leader publishes a new key for the unfinished round, so updates
//! sealed for the old one are refused and sealed again.

pub mod data;
pub mod model;
pub mod record;
pub mod round;
pub mod seal;

use serde::{Deserialize, Serialize};

/// The settings of one federated run, shared by the coordinator and every participant
/// (written as TOML beside the cluster config), so that everybody derives the same shards,
/// the same initial model and the same training schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedAvgConfig {
    /// Prefix of every key the run writes, so several runs can share a cluster.
    pub run: String,
    /// Participants: nodes `1..=nodes`, one shard each.
    pub nodes: u32,
    /// Rounds of federated averaging.
    pub rounds: u64,
    /// Seeds the data split, the initial model and the local shuffles (runs replay).
    pub seed: u64,
    /// Hidden units of the network (0: softmax regression).
    pub hidden: usize,
    /// Local epochs per round.
    pub epochs: usize,
    /// Minibatch size.
    pub batch: usize,
    /// SGD learning rate.
    pub lr: f64,
    /// The aggregator hands leadership to the next node after every this many rounds it
    /// finalized (0: never; a single node keeps it).
    pub rotate_every: u64,
    /// Share of the data set held out for testing (never trained on).
    pub test_fraction: f64,
    /// How often a participant looks at the store, in milliseconds.
    pub poll_ms: u64,
    /// A participant gives up (and exits with an error) after this many seconds.
    pub deadline_s: u64,
}

impl Default for FedAvgConfig {
    fn default() -> FedAvgConfig {
        FedAvgConfig {
            run: "fedavg".into(),
            nodes: 3,
            rounds: 10,
            seed: 1,
            hidden: 32,
            epochs: 1,
            batch: 16,
            lr: 0.3,
            rotate_every: 2,
            test_fraction: 0.2,
            poll_ms: 20,
            deadline_s: 300,
        }
    }
}

impl FedAvgConfig {
    /// The network these settings train.
    pub fn architecture(&self) -> model::Architecture {
        model::Architecture {
            hidden: self.hidden,
        }
    }

    /// The local training schedule.
    pub fn schedule(&self) -> model::Schedule {
        model::Schedule {
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
        }
    }
}
