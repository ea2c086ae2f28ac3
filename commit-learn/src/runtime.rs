//! Running a saved protocol as an atomic-commit service over any [`Transport`].
//!
//! A participant starts in its vote, then for each round broadcasts `(instance, round,
//! state)` and collects the other participants' states for that round. A round closes when
//! every peer was heard or when the round timeout passes; a peer not heard from is the
//! `Lost` symbol, exactly as in the model, so a protocol verified against crash failures
//! keeps its guarantees as long as the timeout outlasts the network's delivery time (the
//! synchrony assumption of the model). Fabrics with barriers or synchronized clocks can
//! close rounds without timeouts; that is the fabric issues' work.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_transport::{NodeId, Transport, TransportError};

use crate::model::{Machine, State, ABORT, COMMIT, LOCAL_ABORT, LOCAL_COMMIT};
use crate::spec::Decision;

/// Why a participant could not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The transport's membership does not match the protocol's process count.
    #[error("the protocol is for {protocol} processes, the transport has {members}")]
    Size {
        /// Processes in the protocol.
        protocol: usize,
        /// Members of the transport.
        members: usize,
    },
    /// The transport refused to send.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
}

/// How one participant ran an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participation {
    /// The final decision.
    pub decision: Decision,
    /// Its state after each round (round 0: the vote).
    pub states: Vec<State>,
    /// Per round, how many peers were not heard from.
    pub missing: Vec<usize>,
}

const HEADER: usize = 8 + 2 + 1;

fn encode(instance: u64, round: u16, state: State) -> Bytes {
    let mut b = Vec::with_capacity(HEADER);
    b.extend_from_slice(&instance.to_le_bytes());
    b.extend_from_slice(&round.to_le_bytes());
    b.push(state);
    Bytes::from(b)
}

fn decode(b: &[u8]) -> Option<(u64, u16, State)> {
    if b.len() != HEADER {
        return None;
    }
    let instance = u64::from_le_bytes(b[0..8].try_into().ok()?);
    let round = u16::from_le_bytes(b[8..10].try_into().ok()?);
    Some((instance, round, b[10]))
}

/// Runs one commit instance at this participant: `commit` is its vote. `crash_after` stops
/// it (as a crash would) after that many rounds, for fault-injection tests.
pub fn participate(
    machine: &Machine,
    rounds: usize,
    transport: &dyn Transport,
    instance: u64,
    commit: bool,
    round_timeout: Duration,
    crash_after: Option<usize>,
) -> Result<Participation, RuntimeError> {
    let peers = transport.peers().to_vec();
    if peers.len() + 1 != machine.n {
        return Err(RuntimeError::Size {
            protocol: machine.n,
            members: peers.len() + 1,
        });
    }
    // Processes are ordered by node id, as the vector encoding expects.
    let mut order: Vec<NodeId> = peers.clone();
    order.push(transport.local());
    order.sort();
    let mut state = if commit { LOCAL_COMMIT } else { LOCAL_ABORT };
    let mut states = vec![state];
    let mut missing = Vec::new();
    // Messages of later rounds that arrived early.
    let mut early: HashMap<(u16, NodeId), State> = HashMap::new();
    for round in 1..=rounds {
        if crash_after.is_some_and(|c| round > c) {
            break;
        }
        let r = round as u16;
        transport.broadcast(encode(instance, r, state))?;
        let mut heard: HashMap<NodeId, State> = peers
            .iter()
            .filter_map(|p| early.remove(&(r, *p)).map(|s| (*p, s)))
            .collect();
        let deadline = Instant::now() + round_timeout;
        while heard.len() < peers.len() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let Ok(d) = transport.inbox().recv_timeout(left) else {
                break;
            };
            match decode(&d.bytes) {
                Some((i, dr, s)) if i == instance && dr == r && s < machine.states => {
                    heard.insert(d.from, s);
                }
                Some((i, dr, s)) if i == instance && dr > r && s < machine.states => {
                    early.insert((dr, d.from), s);
                }
                _ => {} // another instance, a stale round, or garbage: not ours
            }
        }
        let others: Vec<u8> = order
            .iter()
            .filter(|p| **p != transport.local())
            .map(|p| heard.get(p).copied().unwrap_or(crate::model::LOST))
            .collect();
        missing.push(peers.len() - heard.len());
        state = machine.next(state, &others);
        states.push(state);
    }
    let committed = states.contains(&COMMIT);
    let aborted = states.contains(&ABORT);
    let decision = match (committed, aborted) {
        (true, false) => Decision::Commit,
        (false, true) => Decision::Abort,
        (true, true) => Decision::Conflicting,
        (false, false) => Decision::Undecided,
    };
    Ok(Participation {
        decision,
        states,
        missing,
    })
}
