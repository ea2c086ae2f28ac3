//! What a federated run keeps in the replicated store, where, and how it is encoded
//! (MessagePack with field names). Everything read back is untrusted bytes: decoding
//! returns a [`RecordError`] naming the record, and the checks here refuse records that
//! decode but do not fit (another round, a wrong shape, non-finite numbers).
//!
//! Keys, for a run named `RUN` and round `R` (zero-padded, so they sort by round):
//! - `RUN/round/R/key`: the aggregator's public key for round `R` ([`KeyRecord`]);
//! - `RUN/round/R/update/N`: node `N`'s sealed update ([`UpdateRecord`]), one key per
//!   node, so a node's update can be replaced but never counted twice;
//! - `RUN/model/R`: the global model after round `R` ([`ModelRecord`], `R = 0` the
//!   initial one), written with compare-and-set on an absent key, so once.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::seal::Sealed;

/// Why a record could not be encoded, decoded or accepted.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a valid record of this kind.
    #[error("undecodable {what}: {source}")]
    Decode {
        /// The kind of record.
        what: &'static str,
        /// The decoder's complaint.
        source: rmp_serde::decode::Error,
    },
    /// The record could not be encoded.
    #[error("unencodable {what}: {source}")]
    Encode {
        /// The kind of record.
        what: &'static str,
        /// The encoder's complaint.
        source: rmp_serde::encode::Error,
    },
    /// The record decodes but does not fit where it was found.
    #[error("{what} does not fit: {why}")]
    Mismatch {
        /// The kind of record.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

/// Names the keys of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    run: String,
}

impl Keys {
    /// The keys of the run named `run`.
    pub fn new(run: &str) -> Keys {
        Keys {
            run: run.to_string(),
        }
    }

    /// Where round `round`'s aggregator key is published.
    pub fn round_key(&self, round: u64) -> String {
        format!("{}/round/{round:06}/key", self.run)
    }

    /// Where `node` submits its sealed update for `round`; also the associated data the
    /// seal authenticates, binding the update to that round and sender.
    pub fn update(&self, round: u64, node: u32) -> String {
        format!("{}/round/{round:06}/update/{node}", self.run)
    }

    /// Where the global model after `round` is committed.
    pub fn model(&self, round: u64) -> String {
        format!("{}/model/{round:06}", self.run)
    }
}

/// The aggregator of a round and the public key updates must be sealed for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The round.
    pub round: u64,
    /// The node whose participant aggregates.
    pub aggregator: u32,
    /// The Raft term in which that node led when it published the key.
    pub term: u64,
    /// X25519 public key.
    pub public: [u8; 32],
}

/// A node's sealed update as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    /// The round.
    pub round: u64,
    /// The sender.
    pub node: u32,
    /// The sealed [`Update`].
    pub sealed: Sealed,
}

/// What a participant tells the aggregator, inside the seal: its locally trained
/// parameters and how many examples they were trained on (the FedAvg weight).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The round.
    pub round: u64,
    /// The sender.
    pub node: u32,
    /// Examples in the sender's shard.
    pub samples: u64,
    /// The parameters after local training.
    pub params: Vec<f32>,
}

/// One update that went into a global model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    /// The sender.
    pub node: u32,
    /// Its weight: examples trained on.
    pub samples: u64,
}

/// A submission the aggregator refused, kept in the model record for audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The node under whose key it was found.
    pub node: u32,
    /// Why it was refused.
    pub reason: String,
}

/// A committed global model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The round it concludes (0: the initial model).
    pub round: u64,
    /// The node whose participant aggregated it.
    pub aggregator: u32,
    /// The Raft term in which it did.
    pub term: u64,
    /// The updates averaged, one per node, in node order.
    pub contributors: Vec<Contribution>,
    /// Submissions refused during the round.
    pub rejected: Vec<Rejection>,
    /// The averaged parameters.
    pub params: Vec<f32>,
}

impl ModelRecord {
    /// Checks that the record is the model of `round` with `param_count` finite
    /// parameters.
    pub fn check(&self, round: u64, param_count: usize) -> Result<(), RecordError> {
        fits("global model", round, self.round, &self.params, param_count)
    }
}

impl Update {
    /// Checks that the update is `node`'s for `round`, trained on some examples, with
    /// `param_count` finite parameters.
    pub fn check(&self, round: u64, node: u32, param_count: usize) -> Result<(), RecordError> {
        if self.node != node {
            return mismatch(
                "update",
                format!("from node {}, found under node {node}", self.node),
            );
        }
        if self.samples == 0 {
            return mismatch("update", "trained on no example".into());
        }
        fits("update", round, self.round, &self.params, param_count)
    }
}

fn fits(
    what: &'static str,
    round: u64,
    found: u64,
    params: &[f32],
    param_count: usize,
) -> Result<(), RecordError> {
    if found != round {
        return mismatch(what, format!("of round {found}, expected round {round}"));
    }
    if params.len() != param_count {
        return mismatch(
            what,
            format!("{} parameters, the network has {param_count}", params.len()),
        );
    }
    if let Some(i) = params.iter().position(|p| !p.is_finite()) {
        return mismatch(what, format!("parameter {i} is {}", params[i]));
    }
    Ok(())
}

fn mismatch(what: &'static str, why: String) -> Result<(), RecordError> {
    Err(RecordError::Mismatch { what, why })
}

/// Encodes a record (`what` names it in errors).
pub fn encode<T: Serialize>(what: &'static str, record: &T) -> Result<Bytes, RecordError> {
    rmp_serde::to_vec_named(record)
        .map(Bytes::from)
        .map_err(|source| RecordError::Encode { what, source })
}

/// Decodes untrusted bytes as a record (`what` names it in errors).
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, RecordError> {
    rmp_serde::from_slice(bytes).map_err(|source| RecordError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_round() {
        let k = Keys::new("r");
        assert_eq!(k.round_key(3), "r/round/000003/key");
        assert_eq!(k.update(3, 2), "r/round/000003/update/2");
        assert!(k.model(9) < k.model(10));
    }

    #[test]
    fn garbage_and_misfits_are_errors_not_panics() {
        let m = ModelRecord {
            round: 2,
            aggregator: 1,
            term: 4,
            contributors: vec![Contribution {
                node: 1,
                samples: 9,
            }],
            rejected: vec![],
            params: vec![0.5; 4],
        };
        let bytes = encode("global model", &m).unwrap();
        let back: ModelRecord = decode("global model", &bytes).unwrap();
        assert_eq!(back, m);
        back.check(2, 4).unwrap();
        assert!(back.check(3, 4).is_err());
        assert!(back.check(2, 5).is_err());
        for cut in 0..bytes.len() {
            assert!(decode::<ModelRecord>("global model", &bytes[..cut]).is_err());
        }
        // Every single-byte corruption either fails to decode or is a record; never a panic.
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0xff;
            let _ = decode::<ModelRecord>("global model", &b);
        }
        let mut nan = m.clone();
        nan.params[1] = f32::NAN;
        assert!(nan.check(2, 4).is_err());
        let u = Update {
            round: 2,
            node: 3,
            samples: 0,
            params: vec![0.0; 4],
        };
        assert!(u.check(2, 3, 4).is_err(), "no examples");
        assert!(Update {
            samples: 1,
            ..u.clone()
        }
        .check(2, 3, 4)
        .is_ok());
        assert!(
            Update { samples: 1, ..u }.check(2, 1, 4).is_err(),
            "wrong node"
        );
    }
}
