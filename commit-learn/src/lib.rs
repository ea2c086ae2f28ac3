//! `commit-learn`: learning atomic-commit protocols with zero knowledge.
//!
//! This crate will hold the protocol model (n processes, one deterministic state machine,
//! synchronous rounds with lost messages), the self-play environment, deep Q-learning, the Z3
//! verifier with its counterexample loop, saved protocol artifacts, and the runtime that runs
//! a learned protocol over a [`weft_transport::Transport`].
//!
//! Nothing is implemented yet: the commit-learn issue lands it.
