//! The protocol, played on the replicated store by one participant per node.
//!
//! A [`Member`] runs beside its node and polls the store. Whenever its own node reports
//! that it leads, the member is the aggregator of the current round (the lowest round
//! without a committed model): it generates a fresh key pair, publishes the public half
//! with a compare-and-set (refusing to overwrite a key published in a later term), reads
//! the submissions into an [`Inbox`], and once every node's update is in, commits their
//! weighted average with a compare-and-set on the absent model key, so the round is
//! finalized exactly once. Every `rotate_every` rounds it then hands leadership to the next
//! node and rests while the transfer completes. Every member, the aggregator included,
//! trains on its shard from the last global model, seals the result for the published key
//! and stores it under its own node's key; when a different key appears for the round (a
//! new aggregator, after a crash), it seals the same update again. The aggregator keeps one
//! update per node, so a resubmission replaces and never adds, and a new aggregator starts
//! from the store alone: updates sealed for its predecessor's key cannot be opened and are
//! refused, with a log line, until they are resubmitted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};
use weft_raft::client::{Client, ClientConfig, ClientError};
use weft_raft::NodeId;
use weft_transport::ClusterConfig;

use super::data::{self, DataError, Examples};
use super::model::{fedavg, Architecture, ModelError};
use super::record::{
    decode, encode, Contribution, KeyRecord, Keys, ModelRecord, RecordError, Rejection, Update,
    UpdateRecord,
};
use super::seal::{fingerprint, seal, AggregatorKey, SealError};
use super::FedAvgConfig;

/// Most refusals a model record lists (the log has them all).
const MAX_REJECTIONS_KEPT: usize = 64;
/// How long an aggregator that handed leadership over stays out of aggregation, unless
/// its node stops leading first.
const HANDOVER_REST: Duration = Duration::from_secs(3);

/// Why a member stopped.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// The store could not be reached (transient: the member retries).
    #[error("store: {0}")]
    Client(#[from] ClientError),
    /// A committed model record is unusable, so the run cannot go on.
    #[error("{0}")]
    Record(#[from] RecordError),
    /// Training failed.
    #[error("training: {0}")]
    Model(#[from] ModelError),
    /// The shard could not be made.
    #[error("data: {0}")]
    Data(#[from] DataError),
    /// The node is not a participant of this run.
    #[error("node {node} is not one of the run's participants 1..={nodes}")]
    NotAParticipant {
        /// The node.
        node: u32,
        /// Participants.
        nodes: u32,
    },
    /// The run did not finish in time.
    #[error("round {round} of {rounds} not finished within {secs} s")]
    Deadline {
        /// The round in progress.
        round: u64,
        /// Rounds of the run.
        rounds: u64,
        /// The deadline.
        secs: u64,
    },
}

/// Why the aggregator refused a submission.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The stored bytes are not an update record.
    #[error("{0}")]
    Undecodable(RecordError),
    /// The record names another round or sender than the key it was found under.
    #[error("misaddressed: {0}")]
    Misaddressed(String),
    /// Sealed for another aggregator's key.
    #[error("encrypted for an old aggregator ({0})")]
    StaleKey(SealError),
    /// The seal did not open.
    #[error("{0}")]
    Tampered(SealError),
    /// The opened update does not fit the round or the network.
    #[error("invalid content: {0}")]
    Invalid(RecordError),
}

/// The aggregator's view of one round's submissions, under its own key.
pub struct Inbox {
    keys: Keys,
    round: u64,
    key: AggregatorKey,
    param_count: usize,
    /// The bytes last looked at per node, so an unchanged submission is not judged again.
    seen: BTreeMap<u32, Bytes>,
    admitted: BTreeMap<u32, Update>,
    rejected: Vec<Rejection>,
}

impl Inbox {
    /// An empty inbox for `round`, opening with `key`, for a network of `param_count`
    /// parameters.
    pub fn new(keys: Keys, round: u64, key: AggregatorKey, param_count: usize) -> Inbox {
        Inbox {
            keys,
            round,
            key,
            param_count,
            seen: BTreeMap::new(),
            admitted: BTreeMap::new(),
            rejected: Vec::new(),
        }
    }

    /// The round.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// The public key submissions must be sealed for.
    pub fn public(&self) -> [u8; 32] {
        self.key.public()
    }

    /// Judges the bytes stored under `node`'s update key. An update that opens and fits
    /// is admitted, replacing any earlier one of that node; anything else is refused with
    /// a warning in the log and left out of the average. Bytes already judged are skipped
    /// (`Ok(false)`); `Ok(true)` means newly admitted.
    pub fn offer(&mut self, node: u32, bytes: &Bytes) -> Result<bool, Refusal> {
        if self.seen.get(&node) == Some(bytes) {
            return Ok(false);
        }
        self.seen.insert(node, bytes.clone());
        match self.judge(node, bytes) {
            Ok(update) => {
                debug!("round {}: admitted the update of node {node}", self.round);
                self.admitted.insert(node, update);
                Ok(true)
            }
            Err(refusal) => {
                warn!(
                    "round {}: rejected the update stored by node {node}: {refusal}; it is not averaged",
                    self.round
                );
                if self.rejected.len() < MAX_REJECTIONS_KEPT {
                    self.rejected.push(Rejection {
                        node,
                        reason: refusal.to_string(),
                    });
                }
                Err(refusal)
            }
        }
    }

    fn judge(&self, node: u32, bytes: &[u8]) -> Result<Update, Refusal> {
        let rec: UpdateRecord = decode("update record", bytes).map_err(Refusal::Undecodable)?;
        if rec.round != self.round || rec.node != node {
            return Err(Refusal::Misaddressed(format!(
                "says round {} node {}, stored as round {} node {node}",
                rec.round, rec.node, self.round
            )));
        }
        let aad = self.keys.update(self.round, node);
        let plain = self
            .key
            .open(&rec.sealed, aad.as_bytes())
            .map_err(|e| match e {
                SealError::WrongRecipient { .. } => Refusal::StaleKey(e),
                _ => Refusal::Tampered(e),
            })?;
        let update: Update = decode("update", &plain).map_err(Refusal::Invalid)?;
        update
            .check(self.round, node, self.param_count)
            .map_err(Refusal::Invalid)?;
        Ok(update)
    }

    /// The nodes whose update is admitted.
    pub fn admitted(&self) -> impl Iterator<Item = u32> + '_ {
        self.admitted.keys().copied()
    }

    /// The refusals so far (at most a bounded number).
    pub fn rejected(&self) -> &[Rejection] {
        &self.rejected
    }

    /// Once every node of `1..=nodes` has an admitted update: their FedAvg and the
    /// contributions it counts, one per node.
    pub fn average(&self, nodes: u32) -> Option<(Vec<f32>, Vec<Contribution>)> {
        if !(1..=nodes).all(|n| self.admitted.contains_key(&n)) {
            return None;
        }
        let params = fedavg(
            self.admitted
                .values()
                .map(|u| (u.samples, u.params.as_slice())),
        )?;
        let contributors = self
            .admitted
            .values()
            .map(|u| Contribution {
                node: u.node,
                samples: u.samples,
            })
            .collect();
        Some((params, contributors))
    }
}

/// An aggregator's term of office for one round.
struct Office {
    term: u64,
    inbox: Inbox,
}

/// One participant, attached to its node.
pub struct Member {
    cfg: FedAvgConfig,
    node: u32,
    keys: Keys,
    arch: Architecture,
    shard: Examples,
    /// Talks to this member's own node only: is it the leader?
    own: Client,
    /// Talks to the cluster (reads and writes go to the leader).
    kv: Client,
    /// The lowest round whose global model is not known to be committed.
    next: u64,
    /// The global model of round `next - 1`.
    global: Option<Vec<f32>>,
    /// This node's encoded update for round `next`, once trained.
    update: Option<(u64, Bytes)>,
    /// The round and key the update was last sealed for.
    sealed_for: Option<(u64, [u8; 32])>,
    office: Option<Office>,
    resting_until: Option<Instant>,
}

impl Member {
    /// The participant of `node`, whose own client address is `own`, in `cluster` (whose
    /// nodes serve clients at their `client` addresses). Derives the node's shard from the
    /// seed.
    pub fn new(
        cfg: FedAvgConfig,
        node: u32,
        own: SocketAddr,
        cluster: &ClusterConfig,
    ) -> Result<Member, RoundError> {
        if !(1..=cfg.nodes).contains(&node) {
            return Err(RoundError::NotAParticipant {
                node,
                nodes: cfg.nodes,
            });
        }
        let split = data::split(&data::digits()?, cfg.seed, cfg.nodes, cfg.test_fraction)?;
        let shard = split.shards[node as usize - 1].clone();
        let mut own_cfg = ClientConfig::new([own]);
        own_cfg.max_attempts = 1;
        own_cfg.request_timeout = Duration::from_secs(1);
        own_cfg.cluster = Some(cluster.cluster_id);
        let mut kv_cfg = ClientConfig::for_cluster(cluster);
        kv_cfg.request_timeout = Duration::from_secs(2);
        kv_cfg.max_total = Duration::from_secs(5);
        Ok(Member {
            keys: Keys::new(&cfg.run),
            arch: cfg.architecture(),
            node,
            shard,
            own: Client::new(own_cfg)?,
            kv: Client::new(kv_cfg)?,
            cfg,
            next: 0,
            global: None,
            update: None,
            sealed_for: None,
            office: None,
            resting_until: None,
        })
    }

    /// Takes part until the last round's model is committed, retrying through outages of
    /// the store, within the configured deadline.
    pub fn run(&mut self) -> Result<(), RoundError> {
        let deadline = Instant::now() + Duration::from_secs(self.cfg.deadline_s);
        info!(
            "node {}: {} training examples, taking part in {} rounds",
            self.node,
            self.shard.len(),
            self.cfg.rounds
        );
        let mut outage = false;
        loop {
            match self.step() {
                Ok(true) => return Ok(()),
                Ok(false) => outage = false,
                Err(RoundError::Client(e)) => {
                    if !outage {
                        info!("node {}: store unavailable ({e}); retrying", self.node);
                    }
                    outage = true;
                }
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(RoundError::Deadline {
                    round: self.next,
                    rounds: self.cfg.rounds,
                    secs: self.cfg.deadline_s,
                });
            }
            std::thread::sleep(Duration::from_millis(self.cfg.poll_ms));
        }
    }

    /// One look at the store; `true` once the last round is committed.
    fn step(&mut self) -> Result<bool, RoundError> {
        self.catch_up()?;
        if self.next > self.cfg.rounds {
            info!(
                "node {}: all {} rounds are committed",
                self.node, self.cfg.rounds
            );
            return Ok(true);
        }
        let status = self.own.status()?;
        if status.is_leader() {
            let resting = self.resting_until.is_some_and(|t| Instant::now() < t);
            if !resting {
                self.aggregate(status.term)?;
            }
        } else {
            self.office = None;
            self.resting_until = None;
        }
        self.contribute()?;
        Ok(false)
    }

    /// Loads every global model committed beyond the last one known.
    fn catch_up(&mut self) -> Result<(), RoundError> {
        while let Some(bytes) = self.kv.get(&self.keys.model(self.next))? {
            let rec: ModelRecord = decode("global model", &bytes)?;
            rec.check(self.next, self.arch.param_count())?;
            debug!(
                "node {}: global model of round {} committed by node {}",
                self.node, rec.round, rec.aggregator
            );
            self.global = Some(rec.params);
            self.next += 1;
        }
        Ok(())
    }

    /// The aggregator's part, while this node leads in `term`.
    fn aggregate(&mut self, term: u64) -> Result<(), RoundError> {
        let (round, node, n) = (self.next, self.node, self.cfg.nodes);
        if round == 0 {
            let init = ModelRecord {
                round: 0,
                aggregator: node,
                term,
                contributors: Vec::new(),
                rejected: Vec::new(),
                params: self.arch.init(self.cfg.seed),
            };
            let new = encode("global model", &init)?;
            if self.kv.cas(&self.keys.model(0), None, Some(new))?.swapped {
                info!("node {node} (term {term}) committed the initial model");
            }
            return Ok(());
        }
        if !matches!(&self.office, Some(o) if o.term == term && o.inbox.round() == round) {
            self.office = None;
            let name = self.keys.round_key(round);
            let current = self.kv.get(&name)?;
            let previous = current
                .as_deref()
                .and_then(|b| decode::<KeyRecord>("key record", b).ok());
            if previous.as_ref().is_some_and(|p| p.term > term) {
                return Ok(()); // a later leader already took this round over
            }
            let key = AggregatorKey::generate();
            let rec = KeyRecord {
                round,
                aggregator: node,
                term,
                public: key.public(),
            };
            let new = encode("key record", &rec)?;
            if !self.kv.cas(&name, current, Some(new))?.swapped {
                return Ok(());
            }
            let replaced = match previous {
                Some(p) => format!(
                    ", replacing key {} of node {} (term {}), which cannot be opened any more",
                    fingerprint(&p.public),
                    p.aggregator,
                    p.term
                ),
                None => String::new(),
            };
            info!(
                "round {round}: node {node} (term {term}) aggregates; published key {}{replaced}",
                fingerprint(&key.public())
            );
            let inbox = Inbox::new(self.keys.clone(), round, key, self.arch.param_count());
            self.office = Some(Office { term, inbox });
        }
        let Some(office) = self.office.as_mut() else {
            return Ok(());
        };
        for k in 1..=n {
            if let Some(bytes) = self.kv.get(&self.keys.update(round, k))? {
                // A refusal is logged and recorded by the inbox; the round waits for a
                // resubmission.
                let _ = office.inbox.offer(k, &bytes);
            }
        }
        let Some((params, contributors)) = office.inbox.average(n) else {
            return Ok(());
        };
        let rec = ModelRecord {
            round,
            aggregator: node,
            term,
            contributors,
            rejected: office.inbox.rejected().to_vec(),
            params,
        };
        let new = encode("global model", &rec)?;
        // On an error the office stays, and the next step tries the same average again.
        let swapped = self
            .kv
            .cas(&self.keys.model(round), None, Some(new))?
            .swapped;
        self.office = None;
        if !swapped {
            return Ok(()); // finalized by a predecessor that was still at it
        }
        let samples: u64 = rec.contributors.iter().map(|c| c.samples).sum();
        info!(
            "round {round}: node {node} (term {term}) committed the global model: {n} updates, \
             {samples} examples, {} submissions rejected",
            rec.rejected.len()
        );
        let every = self.cfg.rotate_every;
        if every > 0 && round % every == 0 && round < self.cfg.rounds && n > 1 {
            let successor = node % n + 1;
            match self.kv.transfer_leader(NodeId(successor)) {
                Ok(()) => {
                    info!("node {node} hands leadership (and aggregation) to node {successor}");
                    self.resting_until = Some(Instant::now() + HANDOVER_REST);
                }
                Err(e) => warn!("node {node} could not hand leadership to node {successor}: {e}"),
            }
        }
        Ok(())
    }

    /// Every member's part: train once per round, seal for the round's current key.
    fn contribute(&mut self) -> Result<(), RoundError> {
        let (round, node) = (self.next, self.node);
        let Some(global) = self.global.as_ref().filter(|_| round > 0) else {
            return Ok(());
        };
        if self.update.as_ref().is_none_or(|(r, _)| *r != round) {
            let t = Instant::now();
            let seed = self.cfg.seed ^ (u64::from(node) << 40) ^ round;
            let params = self
                .arch
                .train(global, &self.shard, &self.cfg.schedule(), seed)?;
            let update = Update {
                round,
                node,
                samples: self.shard.len() as u64,
                params,
            };
            self.update = Some((round, encode("update", &update)?));
            info!(
                "round {round}: node {node} trained on its {} examples in {} ms",
                self.shard.len(),
                t.elapsed().as_millis()
            );
        }
        let Some(bytes) = self.kv.get(&self.keys.round_key(round))? else {
            return Ok(()); // no aggregator yet
        };
        let key = match decode::<KeyRecord>("key record", &bytes) {
            Ok(k) if k.round == round => k,
            Ok(k) => {
                warn!(
                    "round {round}: the published key record names round {}",
                    k.round
                );
                return Ok(());
            }
            Err(e) => {
                warn!("round {round}: {e}");
                return Ok(());
            }
        };
        match self.sealed_for {
            Some((r, public)) if r == round && public == key.public => return Ok(()),
            Some((r, _)) if r == round => info!(
                "round {round}: node {node} sees a new aggregator key; sealing its update again"
            ),
            _ => {}
        }
        let Some((_, plain)) = &self.update else {
            return Ok(());
        };
        let aad = self.keys.update(round, node);
        let sealed = match seal(&key.public, plain, aad.as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                warn!("round {round}: cannot seal for the published key: {e}");
                return Ok(());
            }
        };
        let rec = UpdateRecord {
            round,
            node,
            sealed,
        };
        self.kv.put(&aad, encode("update record", &rec)?)?;
        self.sealed_for = Some((round, key.public));
        info!(
            "round {round}: node {node} submitted its update sealed for node {}'s key {}",
            key.aggregator,
            fingerprint(&key.public)
        );
        Ok(())
    }
}
