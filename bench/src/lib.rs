//! `weft-bench`: criterion benchmarks of weft and the helpers they share.
//!
//! Every figure weft quotes is a ratio against a baseline measured in the same run (the
//! transport's raw round trip, the full layer stack), because the machines that run these
//! benches are shared and noisy.
