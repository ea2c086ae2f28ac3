//! A linearizability checker for key-value histories (Wing & Gong's search with
//! Porcupine's memoization and per-key partitioning).
//!
//! A history is the calls and returns clients observed. It is linearizable if every
//! operation can be placed at one instant between its call and its return so that the
//! sequence of operations is legal for a single-copy key-value store. Operations whose
//! outcome the client never learned (timeouts) may take effect at any instant after their
//! call, or never. Keys are independent (P-compositionality), so each key is checked alone.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

/// A key-value operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: u64,
        /// The new value.
        value: u64,
    },
    /// Read `key`.
    Get {
        /// The key.
        key: u64,
    },
    /// Set `key` to `new` if it holds `expected` (`None`: absent).
    Cas {
        /// The key.
        key: u64,
        /// The value required.
        expected: Option<u64>,
        /// The value to set.
        new: u64,
    },
}

impl KvOp {
    /// The key the operation touches.
    pub fn key(&self) -> u64 {
        match *self {
            KvOp::Put { key, .. } | KvOp::Get { key } | KvOp::Cas { key, .. } => key,
        }
    }

    /// Applies the operation to the value of its key; returns the new value and the result.
    pub fn apply(&self, current: Option<u64>) -> (Option<u64>, KvRet) {
        match *self {
            KvOp::Put { value, .. } => (Some(value), KvRet::Done),
            KvOp::Get { .. } => (current, KvRet::Value(current)),
            KvOp::Cas { expected, new, .. } => {
                if current == expected {
                    (Some(new), KvRet::Swapped(true))
                } else {
                    (current, KvRet::Swapped(false))
                }
            }
        }
    }
}

/// What a client observed as the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvRet {
    /// A put completed.
    Done,
    /// A get returned this value.
    Value(Option<u64>),
    /// A compare-and-set did or did not swap.
    Swapped(bool),
    /// The client never learned the outcome.
    Unknown,
}

/// One operation as a client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The operation.
    pub op: KvOp,
    /// When it was called.
    pub call: u64,
    /// When it returned; ignored for [`KvRet::Unknown`].
    pub ret_at: u64,
    /// What it returned.
    pub ret: KvRet,
}

/// A history that cannot be linearized, with the key that shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("history of key {key} is not linearizable ({ops} operations){}", witness.as_ref().map(|w| format!(": {w}")).unwrap_or_default())]
pub struct Violation {
    /// The key whose history fails.
    pub key: u64,
    /// How many operations it has.
    pub ops: usize,
    /// A read that shows it on its own, when one does (see [`witness`]).
    pub witness: Option<String>,
}

/// Checks a whole history, key by key.
pub fn check(history: &[Event]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    for e in history {
        by_key.entry(e.op.key()).or_default().push(*e);
    }
    for (key, events) in by_key {
        if !check_key(&events) {
            return Err(Violation {
                key,
                ops: events.len(),
                witness: witness(&events),
            });
        }
    }
    Ok(())
}

/// Checks the history of one key.
pub fn check_key(events: &[Event]) -> bool {
    let n = events.len();
    let ret_at: Vec<u64> = events
        .iter()
        .map(|e| {
            if e.ret == KvRet::Unknown {
                u64::MAX
            } else {
                e.ret_at
            }
        })
        .collect();
    let mut search = Search {
        events,
        ret_at: &ret_at,
        seen: HashSet::new(),
        done: vec![false; n],
        known_left: events.iter().filter(|e| e.ret != KvRet::Unknown).count(),
    };
    search.run(None)
}

/// A read of one key's history that is wrong on its face, described for a person: it
/// returned a value nobody wrote, a value whose only write was called after the read
/// returned, or a stale value (an acknowledged write of another value began after the
/// read value's write returned and ended before the read began; for an absent value, any
/// acknowledged write that ended before the read began, since no operation deletes).
/// `None` if no single read shows the violation (the search found it in a combination).
pub fn witness(events: &[Event]) -> Option<String> {
    // The value an operation may have written.
    let written = |e: &Event| match (e.op, e.ret) {
        (KvOp::Put { value, .. }, _) => Some(value),
        (KvOp::Cas { new, .. }, ret) if ret != KvRet::Swapped(false) => Some(new),
        _ => None,
    };
    let acknowledged = |e: &Event| matches!(e.ret, KvRet::Done | KvRet::Swapped(true));
    let ms = |t: u64| t as f64 / 1e6;
    let mut reads: Vec<&Event> = events
        .iter()
        .filter(|e| matches!((e.op, e.ret), (KvOp::Get { .. }, KvRet::Value(_))))
        .collect();
    reads.sort_by_key(|e| e.call);
    for r in reads {
        let KvRet::Value(v) = r.ret else { continue };
        // An acknowledged write of another value than `not`, called after `after` (if
        // given) and finished before the read began.
        let newer = |after: Option<u64>, not: Option<u64>| {
            events.iter().find(|w| {
                acknowledged(w)
                    && after.is_none_or(|a| w.call > a)
                    && w.ret_at < r.call
                    && written(w) != not
            })
        };
        let read = format!("a read called at {:.3} ms returned {v:?}", ms(r.call));
        match v {
            None => {
                if let Some(w) = newer(None, None) {
                    return Some(format!(
                        "{read}, but {:?} was acknowledged at {:.3} ms",
                        w.op,
                        ms(w.ret_at)
                    ));
                }
            }
            Some(x) => {
                let writers: Vec<&Event> =
                    events.iter().filter(|w| written(w) == Some(x)).collect();
                match writers[..] {
                    [] => return Some(format!("{read}, a value nobody wrote")),
                    [w] if w.call > r.ret_at => {
                        return Some(format!(
                            "{read}, written by {:?} called only at {:.3} ms",
                            w.op,
                            ms(w.call)
                        ))
                    }
                    [w] if w.ret != KvRet::Unknown => {
                        if let Some(w2) = newer(Some(w.ret_at), Some(x)) {
                            return Some(format!(
                                "{read}, written by {:?} (returned at {:.3} ms), but {:?} \
                                 (called at {:.3} ms) was acknowledged at {:.3} ms",
                                w.op,
                                ms(w.ret_at),
                                w2.op,
                                ms(w2.call),
                                ms(w2.ret_at)
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    None
}

struct Search<'a> {
    events: &'a [Event],
    ret_at: &'a [u64],
    seen: HashSet<(Vec<bool>, Option<u64>)>,
    done: Vec<bool>,
    known_left: usize,
}

impl Search<'_> {
    fn run(&mut self, value: Option<u64>) -> bool {
        if self.known_left == 0 {
            return true; // every observed operation is placed; the unknown ones never happened
        }
        if !self.seen.insert((self.done.clone(), value)) {
            return false;
        }
        // The next operation must be called before every remaining one returned.
        let horizon = (0..self.events.len())
            .filter(|i| !self.done[*i])
            .map(|i| self.ret_at[i])
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.events.len() {
            if self.done[i] || self.events[i].call > horizon {
                continue;
            }
            let e = self.events[i];
            let (next, ret) = e.op.apply(value);
            if e.ret != KvRet::Unknown && e.ret != ret {
                continue;
            }
            self.done[i] = true;
            let known = e.ret != KvRet::Unknown;
            if known {
                self.known_left -= 1;
            }
            if self.run(next) {
                return true;
            }
            self.done[i] = false;
            if known {
                self.known_left += 1;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: u64, value: u64, call: u64, ret_at: u64) -> Event {
        Event {
            op: KvOp::Put { key, value },
            call,
            ret_at,
            ret: KvRet::Done,
        }
    }

    fn get(key: u64, got: Option<u64>, call: u64, ret_at: u64) -> Event {
        Event {
            op: KvOp::Get { key },
            call,
            ret_at,
            ret: KvRet::Value(got),
        }
    }

    fn cas(
        key: u64,
        expected: Option<u64>,
        new: u64,
        swapped: bool,
        call: u64,
        ret_at: u64,
    ) -> Event {
        Event {
            op: KvOp::Cas { key, expected, new },
            call,
            ret_at,
            ret: KvRet::Swapped(swapped),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            put(1, 5, 0, 1),
            get(1, Some(5), 2, 3),
            cas(1, Some(5), 6, true, 4, 5),
            get(1, Some(6), 6, 7),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn stale_read_after_a_completed_write_is_rejected() {
        let h = [put(1, 1, 0, 1), put(1, 2, 2, 3), get(1, Some(1), 4, 5)];
        assert_eq!(check(&h).map_err(|v| (v.key, v.ops)), Err((1, 3)));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The write overlaps both reads: one sees the old value, one the new.
        let h = [
            put(1, 1, 0, 1),
            put(1, 2, 2, 10),
            get(1, Some(2), 3, 4),
            get(1, Some(1), 5, 6),
        ];
        assert!(
            check(&h).is_err(),
            "once a read saw 2, a later read cannot see 1"
        );
        let ok = [
            put(1, 1, 0, 1),
            put(1, 2, 2, 10),
            get(1, Some(1), 3, 4),
            get(1, Some(2), 5, 6),
        ];
        assert!(check(&ok).is_ok());
    }

    #[test]
    fn a_read_that_shows_the_violation_is_named() {
        let stale = [put(1, 1, 0, 1), put(1, 2, 2, 3), get(1, Some(1), 4, 5)];
        let w = check(&stale).unwrap_err().witness.expect("a stale read");
        assert!(
            w.contains("returned Some(1)") && w.contains("value: 2"),
            "{w}"
        );
        let lost = [put(1, 1, 0, 1), get(1, None, 4, 5)];
        let w = check(&lost).unwrap_err().witness.expect("an absent value");
        assert!(w.contains("returned None") && w.contains("value: 1"), "{w}");
        let future = [get(1, Some(3), 0, 1), put(1, 3, 2, 3)];
        let w = check(&future)
            .unwrap_err()
            .witness
            .expect("a read from the future");
        assert!(w.contains("called only at"), "{w}");
        let nobody = [get(1, Some(9), 0, 1)];
        assert!(check(&nobody)
            .unwrap_err()
            .witness
            .unwrap()
            .contains("nobody wrote"));
        // Two reads that only together contradict a write order: no single witness.
        let pair = [
            put(1, 1, 0, 1),
            put(1, 2, 2, 10),
            get(1, Some(2), 3, 4),
            get(1, Some(1), 5, 6),
        ];
        assert_eq!(check(&pair).unwrap_err().witness, None);
        // An unknown write may be the value read, at any time after its call.
        let unknown = Event {
            op: KvOp::Put { key: 1, value: 7 },
            call: 0,
            ret_at: 0,
            ret: KvRet::Unknown,
        };
        assert_eq!(
            witness(&[put(1, 1, 2, 3), unknown, get(1, Some(7), 5, 6)]),
            None
        );
    }

    #[test]
    fn value_never_written_is_rejected() {
        assert!(check(&[get(1, Some(9), 0, 1)]).is_err());
        assert!(check(&[get(1, None, 0, 1)]).is_ok());
    }

    #[test]
    fn two_successful_cas_from_the_same_value_are_rejected() {
        let h = [
            put(1, 0, 0, 1),
            cas(1, Some(0), 1, true, 2, 5),
            cas(1, Some(0), 2, true, 3, 6),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        let lost = Event {
            op: KvOp::Put { key: 1, value: 7 },
            call: 0,
            ret_at: 0,
            ret: KvRet::Unknown,
        };
        assert!(check(&[lost, get(1, Some(7), 5, 6)]).is_ok(), "took effect");
        assert!(
            check(&[lost, get(1, None, 5, 6)]).is_ok(),
            "never took effect"
        );
        // But it cannot take effect before it was called.
        let late = Event { call: 10, ..lost };
        assert!(check(&[late, get(1, Some(7), 5, 6)]).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let h = [
            put(1, 1, 0, 1),
            put(2, 2, 0, 1),
            get(2, Some(2), 2, 3),
            get(1, Some(2), 2, 3),
        ];
        assert_eq!(check(&h).map_err(|v| (v.key, v.ops)), Err((1, 2)));
    }

    #[test]
    fn a_larger_concurrent_history_stays_tractable() {
        // 40 overlapping writes and reads on one key: memoization keeps this fast.
        let mut h = Vec::new();
        for i in 0..20u64 {
            h.push(put(1, i, i * 2, i * 2 + 10));
            h.push(get(1, Some(i), i * 2 + 11, i * 2 + 12));
        }
        assert!(check(&h).is_ok());
    }
}
