//! The key-value state machine the peers bench applies on every library, so that each one
//! does the same work per committed entry.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Distinct keys the bench cycles through: puts overwrite, so the map (and the memory a
/// long run takes) stays bounded.
pub const KEYS: u64 = 4096;

/// A put of `key` (modulo [`KEYS`]): the key as 8 little-endian bytes, then the value,
/// `len` bytes in all. A `Vec` because that is what every library's propose call can take
/// without a copy.
pub fn put_command(key: u64, len: usize) -> Vec<u8> {
    let mut c = vec![0x5a; len.max(8)];
    c[..8].copy_from_slice(&(key % KEYS).to_le_bytes());
    c
}

/// Keys to values, filled by applying [`put_command`]s.
#[derive(Debug, Default)]
pub struct KvMap(BTreeMap<u64, Bytes>);

impl KvMap {
    /// Applies a put (the value shares the command's buffer, as a log entry's payload is
    /// kept without a copy); anything too short to carry a key is ignored.
    pub fn apply(&mut self, command: &Bytes) {
        if let Some(key) = command.get(..8) {
            let key = u64::from_le_bytes(key.try_into().expect("8 bytes"));
            self.0.insert(key, command.slice(8..));
        }
    }

    /// The value a put of `key` left.
    pub fn get(&self, key: u64) -> Option<&Bytes> {
        self.0.get(&(key % KEYS))
    }
}
