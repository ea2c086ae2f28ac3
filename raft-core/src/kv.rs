//! The replicated key-value state machine (rafty's dictionary, with compare-and-set), and
//! the exactly-once sessions that make client retries safe.
//!
//! Every write carries the client's id and a sequence number. The state machine remembers,
//! per client, the last sequence number it applied and that write's result: a retried write
//! (same client, same sequence) is answered from that memory instead of being applied twice,
//! and an older one is refused as stale. Sessions travel in snapshots, so the guarantee
//! survives compaction and restarts.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::kv_map::KvMap;
use crate::types::Index;

/// A write to the dictionary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Sets `key` to `new` (or removes it if `None`) only if it holds `expected`
    /// (`None`: absent).
    Cas {
        /// The key.
        key: String,
        /// The value required now.
        expected: Option<Bytes>,
        /// The value to set.
        new: Option<Bytes>,
    },
}

/// Bytes a write command takes in the log besides its key and values, at most (the
/// client id, sequence number, variant and headers of its MessagePack encoding).
pub const KV_COMMAND_FIELDS: usize = 64;

/// A client's write as it travels in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRequest {
    /// The client's session id.
    pub client: u64,
    /// The client's sequence number for this write, starting at 1.
    pub seq: u64,
    /// The write.
    pub command: KvCommand,
}

impl KvRequest {
    /// The log encoding (MessagePack).
    pub fn encode(&self) -> Bytes {
        Bytes::from(rmp_serde::to_vec(self).expect("requests serialize"))
    }
}

/// What a write did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOutcome {
    /// A put or delete took effect; carries the previous value.
    Done {
        /// The value before the write.
        previous: Option<Bytes>,
    },
    /// A compare-and-set: whether it swapped, and the value it found.
    Cas {
        /// Whether the value was replaced.
        swapped: bool,
        /// The value found (before the swap).
        current: Option<Bytes>,
    },
    /// The request's sequence number is older than the client's last applied one: a
    /// duplicate of a write whose answer is no longer kept.
    Stale,
    /// The log entry was not a valid request (it is skipped, the log goes on).
    Invalid,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_seq: u64,
    last_outcome: Option<KvOutcome>,
}

/// The dictionary and its client sessions.
///
/// The dictionary is a hash map in shards (see [`crate::kv_map`]): every replica inserts
/// every write, and on a large map an ordered tree's string comparisons and cache misses
/// per level were most of a node's apply time (no operation needs key order;
/// [`KvStore::all`] sorts on demand). A shard grows, and rehashes, alone, so no write
/// waits for the whole state to be rehashed; a clone shares the shards, so a snapshot is
/// taken in O(shards) and serialized on another thread while the node goes on applying.
/// Snapshot bytes are not canonical across replicas, only their contents are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    map: KvMap,
    sessions: BTreeMap<u64, Session>,
    applied: Index,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// The last log index applied.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Reads one key.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.map.get(key)
    }

    /// The whole dictionary in key order (rafty's `get` of the full state): a copy, as a
    /// full-state read answers with one.
    pub fn all(&self) -> BTreeMap<String, Bytes> {
        self.map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the dictionary is empty.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Marks `index` applied without a command (empty and membership entries).
    pub fn skip(&mut self, index: Index) {
        self.applied = self.applied.max(index);
    }

    /// Applies the log entry at `index` carrying `data`; returns the client, sequence and
    /// outcome (`None` if `data` is not a request, which is skipped).
    pub fn apply(&mut self, index: Index, data: &[u8]) -> Option<(u64, u64, KvOutcome)> {
        self.applied = self.applied.max(index);
        let req: KvRequest = match rmp_serde::from_slice(data) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(index, error = %e, "log entry is not a key-value request; skipped");
                return None;
            }
        };
        let session = self.sessions.entry(req.client).or_default();
        if req.seq == session.last_seq {
            if let Some(o) = &session.last_outcome {
                return Some((req.client, req.seq, o.clone()));
            }
        }
        if req.seq <= session.last_seq {
            return Some((req.client, req.seq, KvOutcome::Stale));
        }
        let outcome = match req.command {
            KvCommand::Put { key, value } => KvOutcome::Done {
                previous: self.map.insert(key, value),
            },
            KvCommand::Delete { key } => KvOutcome::Done {
                previous: self.map.remove(&key),
            },
            KvCommand::Cas { key, expected, new } => {
                let current = self.map.get(&key).cloned();
                let swapped = current == expected;
                if swapped {
                    match new {
                        Some(v) => self.map.insert(key, v),
                        None => self.map.remove(&key),
                    };
                }
                KvOutcome::Cas { swapped, current }
            }
        };
        let session = self.sessions.entry(req.client).or_default();
        session.last_seq = req.seq;
        session.last_outcome = Some(outcome.clone());
        Some((req.client, req.seq, outcome))
    }

    /// Serializes the whole store, sessions included, for a snapshot.
    pub fn snapshot(&self) -> Bytes {
        // Sized up front: a large state is then written once instead of copied at every
        // doubling.
        let mut out = Vec::with_capacity(self.snapshot_size_bound());
        rmp_serde::encode::write(&mut out, self).expect("store serializes");
        Bytes::from(out)
    }

    /// At least the length of [`KvStore::snapshot`]: the map's keys and values with 16
    /// bytes of framing each (MessagePack needs at most 10), and each session's last
    /// outcome (which may hold a value) with 48 bytes for the rest of it.
    fn snapshot_size_bound(&self) -> usize {
        let outcomes: usize =
            self.sessions
                .values()
                .map(|s| match &s.last_outcome {
                    Some(KvOutcome::Done { previous: v })
                    | Some(KvOutcome::Cas { current: v, .. }) => v.as_ref().map_or(0, Bytes::len),
                    _ => 0,
                })
                .sum();
        self.map.bytes() + 16 * self.map.len() + outcomes + 48 * self.sessions.len() + 32
    }

    /// Restores a store from [`KvStore::snapshot`] bytes.
    pub fn restore(data: &[u8]) -> Result<KvStore, rmp_serde::decode::Error> {
        if data.is_empty() {
            return Ok(KvStore::default());
        }
        rmp_serde::from_slice(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(client: u64, seq: u64, key: &str, value: &str) -> Bytes {
        KvRequest {
            client,
            seq,
            command: KvCommand::Put {
                key: key.into(),
                value: Bytes::copy_from_slice(value.as_bytes()),
            },
        }
        .encode()
    }

    #[test]
    fn retried_writes_apply_once() {
        let mut kv = KvStore::new();
        let first = kv.apply(1, &put(7, 1, "a", "x")).unwrap();
        assert_eq!(first.2, KvOutcome::Done { previous: None });
        // The same write again (a client retry that got committed twice): same answer,
        // no second effect.
        let again = kv.apply(2, &put(7, 1, "a", "x")).unwrap();
        assert_eq!(again.2, first.2);
        kv.apply(3, &put(7, 2, "a", "y"));
        assert_eq!(kv.get("a").unwrap(), &Bytes::from_static(b"y"));
        assert_eq!(
            kv.apply(4, &put(7, 1, "a", "z")).unwrap().2,
            KvOutcome::Stale
        );
        assert_eq!(kv.get("a").unwrap(), &Bytes::from_static(b"y"));
    }

    #[test]
    fn compare_and_set_and_delete() {
        let mut kv = KvStore::new();
        let cas = |seq, expected: Option<&'static [u8]>, new: Option<&'static [u8]>| {
            KvRequest {
                client: 1,
                seq,
                command: KvCommand::Cas {
                    key: "k".into(),
                    expected: expected.map(Bytes::from_static),
                    new: new.map(Bytes::from_static),
                },
            }
            .encode()
        };
        assert!(matches!(
            kv.apply(1, &cas(1, None, Some(b"1"))).unwrap().2,
            KvOutcome::Cas { swapped: true, .. }
        ));
        assert!(matches!(
            kv.apply(2, &cas(2, None, Some(b"2"))).unwrap().2,
            KvOutcome::Cas { swapped: false, .. }
        ));
        assert!(matches!(
            kv.apply(3, &cas(3, Some(b"1"), None)).unwrap().2,
            KvOutcome::Cas { swapped: true, .. }
        ));
        assert!(kv.get("k").is_none());
        let del = KvRequest {
            client: 2,
            seq: 1,
            command: KvCommand::Delete { key: "nope".into() },
        };
        assert_eq!(
            kv.apply(4, &del.encode()).unwrap().2,
            KvOutcome::Done { previous: None }
        );
        assert_eq!(kv.applied(), 4);
    }

    /// A snapshot fits in the space reserved for it, whatever the sizes of keys, values
    /// and the values sessions keep.
    #[test]
    fn a_snapshot_fits_the_space_reserved_for_it() {
        let mut kv = KvStore::new();
        let bound = |kv: &KvStore| (kv.snapshot().len(), kv.snapshot_size_bound());
        let (len, bound_empty) = bound(&kv);
        assert!(len <= bound_empty, "{len} > {bound_empty}");
        let mut seq = 0;
        for (i, size) in [0usize, 1, 31, 32, 255, 256, 65_535, 65_536, 100_000]
            .into_iter()
            .enumerate()
        {
            let key = "k".repeat(size.min(300) + 1);
            let value = "v".repeat(size);
            for client in 1..=3 {
                seq += 1;
                kv.apply(seq, &put(client * 10 + i as u64, 1, &key, &value));
            }
            let (len, bound) = bound(&kv);
            assert!(len <= bound, "{len} > {bound} after values of {size} bytes");
        }
    }

    #[test]
    fn snapshots_carry_sessions() {
        let mut kv = KvStore::new();
        kv.apply(1, &put(3, 5, "a", "x"));
        let mut restored = KvStore::restore(&kv.snapshot()).unwrap();
        assert_eq!(restored, kv);
        assert_eq!(
            restored.apply(2, &put(3, 5, "a", "other")).unwrap().2,
            KvOutcome::Done { previous: None }
        );
        assert_eq!(
            restored.get("a").unwrap(),
            &Bytes::from_static(b"x"),
            "the retry was not re-applied"
        );
        assert!(KvStore::restore(b"garbage").is_err());
        assert!(kv.apply(9, b"not a request").is_none());
    }
}
