//! Random numbers for identities that must differ between processes and between the lives
//! of one node (client sessions, forwarded-read contexts, test ports), and for jitter. Not
//! cryptographic: nothing here needs to be unpredictable, only unlikely to repeat.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// 64 random bits from the standard library's per-process random keys (seeded by the
/// operating system), mixed with the time, the process id and a counter, so two calls
/// never return the same value by construction of their inputs.
pub fn seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// The next number of a splitmix64 sequence whose state is `state`: cheap, and good
/// enough for jitter and choices.
pub fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
