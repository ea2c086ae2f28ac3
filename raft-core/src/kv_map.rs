//! The key-value dictionary's map: plain hash maps in shards, each behind an `Arc`.
//!
//! Why: every replica inserts every write, and a snapshot must not stop the node while the
//! whole state is serialized. Cloning the map is one reference count per shard, so a
//! snapshot is taken in O(shards) and serialized on another thread; the first write to a
//! shard after that copies the shard (`Arc::make_mut`), later ones insert in place. Under
//! the snapshot policy (a snapshot only once the commands applied since outweigh the
//! last one) that is at most about one copied entry per write, where the persistent trie
//! used before copied a path of nodes on every write while a snapshot was being written,
//! and took half as long again per put without one (`cargo bench -p weft-bench --bench
//! kv_apply` measures a put against a plain `HashMap` insert: 398 ns against 165 ns; the
//! trie's was 604 ns).

use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Shards: a copy after a snapshot takes a 4096th of the state at a time, so the first
/// writes after a snapshot of a large state (hundreds of thousands of keys) copy a little
/// each instead of a Ready's worth of writes copying most of it.
const SHARDS: usize = 4096;

/// Keys to values, sharded by a fixed hash of the key (so the same key always lands in
/// the same shard, on every replica and after every restore).
#[derive(Clone, Debug)]
pub(crate) struct KvMap {
    shards: Vec<Arc<HashMap<String, Bytes>>>,
    len: usize,
    /// The keys' and values' bytes together.
    bytes: usize,
}

impl Default for KvMap {
    fn default() -> KvMap {
        KvMap {
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
            len: 0,
            bytes: 0,
        }
    }
}

fn shard_of(key: &str) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % SHARDS as u64) as usize
}

impl KvMap {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.shards[shard_of(key)].get(key)
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: String, value: Bytes) -> Option<Bytes> {
        let shard = Arc::make_mut(&mut self.shards[shard_of(&key)]);
        let (key_len, value_len) = (key.len(), value.len());
        let previous = shard.insert(key, value);
        match &previous {
            Some(old) => self.bytes = self.bytes - old.len() + value_len,
            None => {
                self.len += 1;
                self.bytes += key_len + value_len;
            }
        }
        previous
    }

    /// Removes `key`; returns its value. A shard is copied only if it holds the key.
    pub fn remove(&mut self, key: &str) -> Option<Bytes> {
        let slot = &mut self.shards[shard_of(key)];
        if !slot.contains_key(key) {
            return None;
        }
        let previous = Arc::make_mut(slot).remove(key);
        self.len -= 1;
        self.bytes -= key.len() + previous.as_ref().map_or(0, Bytes::len);
        previous
    }

    /// Every key and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Bytes)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The keys' and values' bytes together: what a serialized copy needs, framing aside.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl PartialEq for KvMap {
    fn eq(&self, other: &KvMap) -> bool {
        self.len == other.len && self.bytes == other.bytes && self.shards == other.shards
    }
}

impl Eq for KvMap {}

/// One map of every key, as the persistent trie wrote it: snapshots taken before the
/// change still restore.
impl Serialize for KvMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for KvMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KvMap, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = KvMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of keys to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<KvMap, A::Error> {
                let mut map = KvMap::default();
                while let Some((key, value)) = entries.next_entry::<String, Bytes>()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clone shares its shards until one side writes; each side then sees only its own
    /// writes, and the count follows inserts, replacements and removals.
    #[test]
    fn a_clone_is_independent_of_later_writes() {
        let mut map = KvMap::default();
        for k in 0..1000 {
            assert_eq!(map.insert(format!("k{k}"), Bytes::from(vec![1])), None);
        }
        let frozen = map.clone();
        assert_eq!(
            map.insert("k1".into(), Bytes::from(vec![2])),
            Some(Bytes::from(vec![1]))
        );
        assert_eq!(map.remove("k2"), Some(Bytes::from(vec![1])));
        assert_eq!(map.remove("k2"), None);
        map.insert("new".into(), Bytes::new());
        assert_eq!((map.len(), frozen.len()), (1000, 1000));
        let counted: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(
            map.bytes(),
            counted,
            "replaced, removed and new entries counted"
        );
        assert_eq!(frozen.get("k1"), Some(&Bytes::from(vec![1])));
        assert!(frozen.get("k2").is_some() && frozen.get("new").is_none());
        assert_eq!(map.get("k1"), Some(&Bytes::from(vec![2])));
        assert_ne!(map, frozen);
        assert_eq!(map.iter().count(), map.len());
    }

    /// The map serializes as one MessagePack map, the format snapshots had before, and
    /// comes back equal.
    #[test]
    fn it_serializes_as_one_map() {
        let mut map = KvMap::default();
        map.insert("a".into(), Bytes::from_static(b"x"));
        map.insert("b".into(), Bytes::from_static(b"y"));
        let bytes = rmp_serde::to_vec(&map).unwrap();
        let plain: std::collections::BTreeMap<String, Bytes> =
            rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(plain.len(), 2);
        assert_eq!(plain["b"], Bytes::from_static(b"y"));
        let as_trie = rmp_serde::to_vec(&plain).unwrap();
        let back: KvMap = rmp_serde::from_slice(&as_trie).unwrap();
        assert_eq!(back, map);
    }
}
