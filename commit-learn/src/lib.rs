//! `commit-learn`: learning atomic-commit protocols with zero knowledge (Hui et al.,
//! NeurIPS ML-for-Systems 2023), verifying them, and running them.
//!
//! It holds the protocol model ([`model`]: one deterministic state machine shared by
//! `n` processes in synchronous rounds, with the paper's vector encoding and a symmetric one
//! that does not depend on `n`), the specifications ([`spec`]: the paper's P1–P5 under
//! arbitrary loss, and non-blocking atomic commit under `t` crashes), executions and the
//! enumeration of failure patterns ([`run`]), the explicit-state verifier ([`explicit`]),
//! hand-written reference protocols ([`protocols`]), the Z3 verifier and synthesizer
//! ([`smt`], checked against the explicit verifier), saved protocols with drawings
//! ([`artifact`]), the deep Q-learner with counterexample feedback ([`dqn`]), and the
//! [`runtime`] that runs a saved protocol over any `weft_transport::Transport` with round
//! timeouts.

pub mod artifact;
pub mod dqn;
pub mod explicit;
pub mod model;
pub mod protocols;
pub mod run;
pub mod runtime;
pub mod smt;
pub mod spec;
