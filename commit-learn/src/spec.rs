//! What a protocol must guarantee, and the failures it must guarantee it under.
//!
//! - [`Spec::Paper`]: the paper's properties P1–P5 with the paper's loss model (any message
//!   between two processes, in any round, may be lost). The appendix writes P4 and P5 per
//!   process; read literally, P5 would forbid a commit voter from aborting even when
//!   another voted abort, which contradicts the paper's own reward rules 4 and 5. weft
//!   follows the rules (and `shared/SOURCES.md`): without losses, any abort vote means every
//!   process decides abort, and all commit votes mean every process decides commit.
//! - [`Spec::Nbac`]: non-blocking atomic commit under up to `t` crashes (a crashed process's
//!   messages are lost from its crash round on, possibly only to some receivers in that
//!   round): uniform agreement, validity, and termination of every correct process within
//!   the rounds. Dolev–Reischuk–Strong: some run needs `t + 1` rounds.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{State, ABORT, COMMIT, LOCAL_ABORT, LOCAL_COMMIT};

/// A specification to verify a protocol against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Spec {
    /// P1–P5 under arbitrary message loss.
    Paper,
    /// Non-blocking atomic commit under up to `t` crash failures.
    Nbac {
        /// Crashes tolerated.
        t: usize,
    },
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spec::Paper => f.write_str("paper"),
            Spec::Nbac { t } => write!(f, "nbac(t={t})"),
        }
    }
}

/// One property of a specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Property {
    /// P1: no process reaches both Commit and Abort.
    P1NoConflict,
    /// P2: a LocalAbort process never commits.
    P2AbortVoterNeverCommits,
    /// P3: no process commits while another aborts.
    P3Agreement,
    /// P4: without losses, an abort vote makes every process decide abort.
    P4AbortWithoutLoss,
    /// P5: without losses, all-commit votes make every process decide commit.
    P5CommitWithoutLoss,
    /// NBAC: no two processes (crashed ones included) decide differently, and none decides
    /// both.
    UniformAgreement,
    /// NBAC: commit only if every process voted commit.
    CommitNeedsUnanimity,
    /// NBAC: if every process voted commit and nobody crashed, every process commits.
    CommitWithoutFailure,
    /// NBAC: every process that does not crash decides by the last round.
    Termination,
}

impl Spec {
    /// The properties this specification checks.
    pub fn properties(&self) -> &'static [Property] {
        use Property::*;
        match self {
            Spec::Paper => &[
                P1NoConflict,
                P2AbortVoterNeverCommits,
                P3Agreement,
                P4AbortWithoutLoss,
                P5CommitWithoutLoss,
            ],
            Spec::Nbac { .. } => &[
                UniformAgreement,
                CommitNeedsUnanimity,
                CommitWithoutFailure,
                Termination,
            ],
        }
    }
}

/// A process's final decision, from the states it reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Reached Commit, never Abort.
    Commit,
    /// Reached Abort, never Commit.
    Abort,
    /// Reached both.
    Conflicting,
    /// Reached neither.
    Undecided,
}

/// What happened to one process in one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Its vote (initial state).
    pub vote: State,
    /// Whether it reached Commit.
    pub committed: bool,
    /// Whether it reached Abort.
    pub aborted: bool,
    /// Whether it crashed.
    pub crashed: bool,
}

impl Outcome {
    /// The paper's FINAL_* decision.
    pub fn decision(&self) -> Decision {
        match (self.committed, self.aborted) {
            (true, false) => Decision::Commit,
            (false, true) => Decision::Abort,
            (true, true) => Decision::Conflicting,
            (false, false) => Decision::Undecided,
        }
    }
}

/// Checks one run's outcomes; `lossless` says no message was lost in it.
pub fn violated(spec: Spec, outcomes: &[Outcome], lossless: bool) -> Option<Property> {
    let all_commit_votes = outcomes.iter().all(|o| o.vote == LOCAL_COMMIT);
    let any_abort_vote = outcomes.iter().any(|o| o.vote == LOCAL_ABORT);
    let someone_committed = outcomes.iter().any(|o| o.committed);
    let someone_aborted = outcomes.iter().any(|o| o.aborted);
    let all_decide = |d: Decision| outcomes.iter().all(|o| o.decision() == d);
    spec.properties().iter().copied().find(|p| {
        use Property::*;
        match p {
            P1NoConflict => outcomes.iter().any(|o| o.committed && o.aborted),
            P2AbortVoterNeverCommits => outcomes
                .iter()
                .any(|o| o.vote == LOCAL_ABORT && o.committed),
            P3Agreement | UniformAgreement => {
                (someone_committed && someone_aborted)
                    || outcomes.iter().any(|o| o.committed && o.aborted)
            }
            P4AbortWithoutLoss => lossless && any_abort_vote && !all_decide(Decision::Abort),
            P5CommitWithoutLoss => lossless && all_commit_votes && !all_decide(Decision::Commit),
            CommitNeedsUnanimity => someone_committed && !all_commit_votes,
            CommitWithoutFailure => lossless && all_commit_votes && !all_decide(Decision::Commit),
            Termination => outcomes
                .iter()
                .any(|o| !o.crashed && o.decision() == Decision::Undecided),
        }
    })
}

/// Whether `s` is a decision state.
pub fn is_decision(s: State) -> bool {
    s == COMMIT || s == ABORT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(vote: State, committed: bool, aborted: bool) -> Outcome {
        Outcome {
            vote,
            committed,
            aborted,
            crashed: false,
        }
    }

    #[test]
    fn paper_properties() {
        let c = LOCAL_COMMIT;
        let a = LOCAL_ABORT;
        assert_eq!(
            violated(Spec::Paper, &[o(c, true, true), o(c, true, false)], false),
            Some(Property::P1NoConflict)
        );
        assert_eq!(
            violated(Spec::Paper, &[o(a, true, false), o(c, true, false)], false),
            Some(Property::P2AbortVoterNeverCommits)
        );
        assert_eq!(
            violated(Spec::Paper, &[o(c, true, false), o(c, false, true)], false),
            Some(Property::P3Agreement)
        );
        assert_eq!(
            violated(Spec::Paper, &[o(a, false, true), o(c, false, false)], true),
            Some(Property::P4AbortWithoutLoss)
        );
        assert_eq!(
            violated(Spec::Paper, &[o(a, false, true), o(c, false, false)], false),
            None,
            "losses excuse indecision"
        );
        assert_eq!(
            violated(Spec::Paper, &[o(c, true, false), o(c, false, false)], true),
            Some(Property::P5CommitWithoutLoss)
        );
        assert_eq!(
            violated(Spec::Paper, &[o(c, true, false), o(c, true, false)], true),
            None
        );
    }

    #[test]
    fn nbac_properties() {
        let s = Spec::Nbac { t: 1 };
        let mut crashed = o(LOCAL_COMMIT, false, false);
        crashed.crashed = true;
        assert_eq!(
            violated(s, &[crashed.clone(), o(LOCAL_COMMIT, false, true)], false),
            None
        );
        assert_eq!(
            violated(
                s,
                &[o(LOCAL_COMMIT, false, false), o(LOCAL_COMMIT, false, true)],
                false
            ),
            Some(Property::Termination)
        );
        assert_eq!(
            violated(
                s,
                &[o(LOCAL_ABORT, false, true), o(LOCAL_COMMIT, true, false)],
                false
            ),
            Some(Property::UniformAgreement)
        );
        let mut crashed_committer = o(LOCAL_COMMIT, true, false);
        crashed_committer.crashed = true;
        assert_eq!(
            violated(s, &[crashed_committer, o(LOCAL_COMMIT, false, true)], false),
            Some(Property::UniformAgreement),
            "uniform: crashed ones count"
        );
    }
}
