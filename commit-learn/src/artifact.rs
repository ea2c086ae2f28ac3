//! Saved protocols: the table with everything needed to trust and reuse it (specification,
//! processes, rounds, how it was verified and what the solver reported), as JSON, plus a
//! Graphviz drawing of the state machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::{state_name, Machine};
use crate::spec::Spec;

/// How a protocol's correctness was established.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// `"explicit"` (every run enumerated) or `"z3"`.
    pub method: String,
    /// The process count verified (0 in artifacts written before several sizes were
    /// possible: the machine's own).
    #[serde(default)]
    pub n: usize,
    /// `"proved"` or the property a counterexample broke.
    pub result: String,
    /// Runs enumerated (explicit) or assertions given to the solver (z3).
    pub size: u64,
    /// Wall time in milliseconds.
    pub elapsed_ms: u64,
}

/// A protocol as saved by `weft learn` and read by `weft verify` and `weft commit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The specification it was built for.
    pub spec: Spec,
    /// Rounds it runs for.
    pub rounds: usize,
    /// The machine (processes, states, encoding, table).
    pub machine: Machine,
    /// How it was obtained (`"smt"`, `"dqn"`, `"reference"`).
    pub method: String,
    /// Verification records, one per verifier run.
    pub verified: Vec<Verification>,
}

/// Why an artifact could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a protocol artifact.
    #[error("{path}: not a protocol artifact: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Artifact {
    /// Writes the artifact as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), ArtifactError> {
        let text = serde_json::to_string_pretty(self).expect("artifacts serialize");
        std::fs::write(path, text).map_err(|source| ArtifactError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads an artifact, checking that its table fits its machine.
    pub fn load(path: &Path) -> Result<Artifact, ArtifactError> {
        let text = std::fs::read_to_string(path).map_err(|source| ArtifactError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let format = |message: String| ArtifactError::Format {
            path: path.display().to_string(),
            message,
        };
        let a: Artifact = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        let m = &a.machine;
        Machine::from_table(m.n, m.states, m.encoding, m.table.clone())
            .map_err(|e| format(e.to_string()))?;
        Ok(a)
    }
}

/// A Graphviz drawing of the machine: one node per state, one edge per (state, next
/// state) pair that some reachable input takes, labelled with up to `max_labels` of those
/// inputs. Only `entries` (the reachable ones) are drawn.
pub fn dot(
    machine: &Machine,
    entries: impl IntoIterator<Item = usize>,
    max_labels: usize,
) -> String {
    let mut edges: BTreeMap<(u8, u8), Vec<String>> = BTreeMap::new();
    for i in entries {
        let from = machine.own_of(i);
        let to = machine.table[i];
        let input = machine.describe(i);
        let condition = input
            .split_once(" receiving ")
            .map_or(input.clone(), |(_, c)| c.to_string());
        edges.entry((from, to)).or_default().push(condition);
    }
    let mut out = String::from(
        "digraph protocol {\n  rankdir=LR;\n  node [shape=circle, fontname=\"Helvetica\"];\n",
    );
    for s in 0..machine.states {
        let shape = match s {
            crate::model::COMMIT | crate::model::ABORT => "doublecircle",
            _ => "circle",
        };
        let _ = writeln!(out, "  s{s} [label=\"{}\", shape={shape}];", state_name(s));
    }
    for ((from, to), labels) in edges {
        let mut shown: Vec<String> = labels.iter().take(max_labels).cloned().collect();
        if labels.len() > max_labels {
            shown.push(format!("… {} more", labels.len() - max_labels));
        }
        let label = shown.join("\\n").replace('"', "'");
        let _ = writeln!(out, "  s{from} -> s{to} [label=\"{label}\", fontsize=9];");
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explicit::reachable;
    use crate::protocols::floodset_nbac;

    #[test]
    fn artifacts_round_trip_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifact {
            spec: Spec::Nbac { t: 1 },
            rounds: 2,
            machine: floodset_nbac(3).unwrap(),
            method: "reference".into(),
            verified: vec![],
        };
        let path = dir.path().join("p.json");
        a.save(&path).unwrap();
        assert_eq!(Artifact::load(&path).unwrap(), a);
        std::fs::write(&path, "{\"spec\": 3}").unwrap();
        assert!(matches!(
            Artifact::load(&path),
            Err(ArtifactError::Format { .. })
        ));
        let mut broken = a.clone();
        broken.machine.table.pop();
        std::fs::write(&path, serde_json::to_string(&broken).unwrap()).unwrap();
        let e = Artifact::load(&path).unwrap_err().to_string();
        assert!(e.contains("entries"), "{e}");
    }

    #[test]
    fn the_drawing_shows_the_reachable_transitions() {
        let m = floodset_nbac(3).unwrap();
        let d = dot(&m, reachable(&m, Spec::Nbac { t: 1 }, 2).unwrap(), 3);
        assert!(d.starts_with("digraph"));
        assert!(d.contains("s0 -> s4"), "LocalCommit -> Ready:\n{d}");
        assert!(d.contains("s4 -> s2"), "Ready -> Commit:\n{d}");
        assert!(d.contains("doublecircle"));
    }
}
