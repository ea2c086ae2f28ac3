//! The protocol model of "learning distributed protocols with zero knowledge": `n`
//! processes run one deterministic state machine over synchronous rounds. Each round every
//! process broadcasts its state and applies the machine to its own state and what it
//! received; a message that did not arrive is the special symbol [`LOST`].
//!
//! A machine is a transition table. Two input encodings are offered:
//! - [`Encoding::Vector`], the paper's: the states received from the others, in sender
//!   order. Its table grows with `n`.
//! - [`Encoding::Symmetric`]: how many of the others sent each state. Processes are
//!   anonymous to it, so one table means the same protocol for every `n` (the paper's open
//!   problem of extrapolating to more processes), as long as counts are capped.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A state of the machine, as an index: 0 LocalCommit, 1 LocalAbort, 2 Commit, 3 Abort,
/// then the anonymous states the learner may use.
pub type State = u8;

/// The initial state of a process that votes to commit.
pub const LOCAL_COMMIT: State = 0;
/// The initial state of a process that votes to abort.
pub const LOCAL_ABORT: State = 1;
/// The state the user named "commit".
pub const COMMIT: State = 2;
/// The state the user named "abort".
pub const ABORT: State = 3;
/// How many states have names; anonymous ones follow.
pub const NAMED: u8 = 4;
/// The input symbol of a message that was lost (one past the last state).
pub const LOST: u8 = u8::MAX;

/// How a process's input is presented to the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// Own state and the received states of the others, in sender order.
    Vector,
    /// Own state and, per symbol (each state, and lost), how many of the others sent it,
    /// capped at `cap` (a count of `cap` means "at least `cap`").
    Symmetric {
        /// The largest count distinguished.
        cap: u8,
    },
}

/// The name of a state, for reports and drawings.
pub fn state_name(s: State) -> String {
    match s {
        LOCAL_COMMIT => "LocalCommit".into(),
        LOCAL_ABORT => "LocalAbort".into(),
        COMMIT => "Commit".into(),
        ABORT => "Abort".into(),
        LOST => "Lost".into(),
        k => format!("S{}", k - NAMED),
    }
}

/// A deterministic state machine shared by every process.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Number of processes.
    pub n: usize,
    /// Number of states, named ones included.
    pub states: u8,
    /// The input encoding.
    pub encoding: Encoding,
    /// The next state for every input, indexed by [`Machine::index`].
    pub table: Vec<State>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Machine(n={}, states={}, {:?}, {} entries)",
            self.n,
            self.states,
            self.encoding,
            self.table.len()
        )
    }
}

/// Why a machine cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Fewer than 2 processes or named states missing.
    #[error("invalid model: {0}")]
    Invalid(String),
    /// The table does not match the domain.
    #[error("transition table has {got} entries, the domain has {want}")]
    TableSize {
        /// Entries given.
        got: usize,
        /// Entries the domain needs.
        want: usize,
    },
}

impl Machine {
    /// A machine whose every transition keeps the current state (a starting point).
    pub fn identity(n: usize, anonymous: u8, encoding: Encoding) -> Result<Machine, ModelError> {
        let states = NAMED
            .checked_add(anonymous)
            .filter(|s| *s < LOST)
            .ok_or_else(|| ModelError::Invalid("too many anonymous states".into()))?;
        if n < 2 {
            return Err(ModelError::Invalid("at least 2 processes".into()));
        }
        if let Encoding::Symmetric { cap } = encoding {
            if cap == 0 {
                return Err(ModelError::Invalid(
                    "a symmetric count cap of at least 1".into(),
                ));
            }
        }
        let mut m = Machine {
            n,
            states,
            encoding,
            table: Vec::new(),
        };
        let size = m.domain_size();
        m.table = (0..size).map(|i| m.own_of(i)).collect();
        Ok(m)
    }

    /// A machine from an explicit table (checked against the domain).
    pub fn from_table(
        n: usize,
        states: u8,
        encoding: Encoding,
        table: Vec<State>,
    ) -> Result<Machine, ModelError> {
        let m = Machine {
            table: Vec::new(),
            ..Machine::identity(n, states.saturating_sub(NAMED), encoding)?
        };
        let want = m.domain_size();
        if table.len() != want {
            return Err(ModelError::TableSize {
                got: table.len(),
                want,
            });
        }
        if let Some(bad) = table.iter().find(|s| **s >= states) {
            return Err(ModelError::Invalid(format!(
                "table names state {bad}, only {states} exist"
            )));
        }
        Ok(Machine { table, ..m })
    }

    /// Symbols a message can carry: every state, and lost.
    fn symbols(&self) -> usize {
        self.states as usize + 1
    }

    fn symbol(&self, s: u8) -> usize {
        if s == LOST {
            self.states as usize
        } else {
            s as usize
        }
    }

    /// Inputs per own state.
    fn inputs(&self) -> usize {
        match self.encoding {
            Encoding::Vector => self.symbols().pow(self.n as u32 - 1),
            Encoding::Symmetric { cap } => (cap as usize + 1).pow(self.symbols() as u32),
        }
    }

    /// Number of entries of the table.
    pub fn domain_size(&self) -> usize {
        self.states as usize * self.inputs()
    }

    /// The own state of table entry `i`.
    pub fn own_of(&self, i: usize) -> State {
        (i / self.inputs()) as State
    }

    /// The table entry for a process in `own` that received `others` (the other
    /// processes' states in sender order, [`LOST`] where nothing arrived).
    pub fn index(&self, own: State, others: &[u8]) -> usize {
        let input = match self.encoding {
            Encoding::Vector => others
                .iter()
                .fold(0, |acc, s| acc * self.symbols() + self.symbol(*s)),
            Encoding::Symmetric { cap } => {
                let mut counts = vec![0usize; self.symbols()];
                for s in others {
                    counts[self.symbol(*s)] += 1;
                }
                counts.iter().fold(0, |acc, c| {
                    acc * (cap as usize + 1) + (*c).min(cap as usize)
                })
            }
        };
        own as usize * self.inputs() + input
    }

    /// The next state of a process in `own` that received `others`.
    pub fn next(&self, own: State, others: &[u8]) -> State {
        self.table[self.index(own, others)]
    }

    /// The same symmetric protocol for `n` processes (the table does not depend on `n`).
    pub fn with_processes(&self, n: usize) -> Option<Machine> {
        match self.encoding {
            Encoding::Symmetric { .. } if n >= 2 => Some(Machine { n, ..self.clone() }),
            _ => None,
        }
    }

    /// The input part of table entry `i`, most significant digit first: the symbol of
    /// each sender (vector encoding) or the capped count of each symbol (symmetric).
    fn input_digits(&self, i: usize) -> Vec<usize> {
        let (digits, base) = match self.encoding {
            Encoding::Vector => (self.n - 1, self.symbols()),
            Encoding::Symmetric { cap } => (self.symbols(), cap as usize + 1),
        };
        let mut rest = i % self.inputs();
        let mut out = vec![0; digits];
        for d in out.iter_mut().rev() {
            *d = rest % base;
            rest /= base;
        }
        out
    }

    /// The features a learner sees for table entry `i`: the own state one-hot, then the
    /// input — one one-hot per sender (vector encoding) or each symbol's capped count
    /// scaled to 0..=1 (symmetric encoding). A function of the entry alone, so the
    /// learner's view and the table can never disagree.
    pub fn features(&self, i: usize) -> Vec<f32> {
        let mut f = vec![0f32; self.states as usize];
        f[self.own_of(i) as usize] = 1.0;
        let digits = self.input_digits(i);
        match self.encoding {
            Encoding::Vector => {
                for s in digits {
                    let mut one_hot = vec![0f32; self.symbols()];
                    one_hot[s] = 1.0;
                    f.extend(one_hot);
                }
            }
            Encoding::Symmetric { cap } => f.extend(digits.iter().map(|c| *c as f32 / cap as f32)),
        }
        f
    }

    /// A readable description of table entry `i`: own state and input.
    pub fn describe(&self, i: usize) -> String {
        let own = state_name(self.own_of(i));
        let digits = self.input_digits(i);
        match self.encoding {
            Encoding::Vector => {
                let names: Vec<String> = digits.iter().map(|s| self.symbol_name(*s)).collect();
                format!("{own} receiving [{}]", names.join(", "))
            }
            Encoding::Symmetric { cap } => {
                let parts: Vec<String> = digits
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(s, c)| {
                        let more = if *c == cap as usize { "+" } else { "" };
                        format!("{c}{more}×{}", self.symbol_name(s))
                    })
                    .collect();
                format!("{own} receiving {{{}}}", parts.join(", "))
            }
        }
    }

    fn symbol_name(&self, s: usize) -> String {
        if s == self.states as usize {
            state_name(LOST)
        } else {
            state_name(s as State)
        }
    }
}

/// One machine per process count in `sizes`, all sharing one (identity) table: what a
/// learner trains when a protocol must hold for several cluster sizes at once. Several
/// sizes need the symmetric encoding, the only one whose table does not depend on `n`.
pub fn for_sizes(
    sizes: &[usize],
    anonymous: u8,
    encoding: Encoding,
) -> Result<Vec<Machine>, ModelError> {
    if sizes.is_empty() {
        return Err(ModelError::Invalid("no process count given".into()));
    }
    if sizes.len() > 1 && encoding == Encoding::Vector {
        return Err(ModelError::Invalid(
            "one table for several process counts needs the symmetric encoding".into(),
        ));
    }
    sizes
        .iter()
        .map(|n| Machine::identity(*n, anonymous, encoding))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_and_symmetric_domains() {
        let v = Machine::identity(3, 1, Encoding::Vector).unwrap();
        assert_eq!(v.domain_size(), 5 * 6 * 6);
        let s = Machine::identity(3, 1, Encoding::Symmetric { cap: 2 }).unwrap();
        assert_eq!(s.domain_size(), 5 * 3usize.pow(6));
        assert_eq!(
            v.next(ABORT, &[LOST, COMMIT]),
            ABORT,
            "identity keeps the state"
        );
        assert_ne!(
            v.index(0, &[1, 2]),
            v.index(0, &[2, 1]),
            "vector sees the order"
        );
        assert_eq!(
            s.index(0, &[1, 2]),
            s.index(0, &[2, 1]),
            "symmetric does not"
        );
        assert_eq!(
            s.index(0, &[LOST, LOST, LOST]),
            s.with_processes(5)
                .unwrap()
                .index(0, &[LOST, LOST, LOST, LOST]),
            "counts are capped"
        );
    }

    #[test]
    fn several_sizes_need_the_symmetric_encoding() {
        let ms = for_sizes(&[3, 5], 1, Encoding::Symmetric { cap: 1 }).unwrap();
        assert_eq!(ms.iter().map(|m| m.n).collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(ms[0].table, ms[1].table, "one table");
        assert!(for_sizes(&[3, 4], 1, Encoding::Vector).is_err());
        assert!(for_sizes(&[3], 1, Encoding::Vector).is_ok());
        assert!(for_sizes(&[], 1, Encoding::Vector).is_err());
    }

    #[test]
    fn tables_are_checked() {
        assert!(matches!(
            Machine::from_table(3, 4, Encoding::Vector, vec![0; 3]),
            Err(ModelError::TableSize { .. })
        ));
        let size = Machine::identity(2, 0, Encoding::Vector)
            .unwrap()
            .domain_size();
        assert!(Machine::from_table(2, 4, Encoding::Vector, vec![9; size]).is_err());
        assert!(Machine::identity(1, 0, Encoding::Vector).is_err());
    }

    #[test]
    fn entries_describe_themselves() {
        let v = Machine::identity(3, 0, Encoding::Vector).unwrap();
        let i = v.index(LOCAL_COMMIT, &[LOST, ABORT]);
        assert_eq!(v.describe(i), "LocalCommit receiving [Lost, Abort]");
        let s = Machine::identity(3, 0, Encoding::Symmetric { cap: 2 }).unwrap();
        let i = s.index(COMMIT, &[LOST, LOST]);
        assert_eq!(s.describe(i), "Commit receiving {2+×Lost}");
    }
}
