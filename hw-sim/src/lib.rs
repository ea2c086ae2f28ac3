//! `hw-sim`: software models of fabric hardware.
//!
//! This crate will hold the emulators that let CI exercise hardware-only paths: a Data
//! Vortex switch with ordered barrier delivery (exported through the C API of `dv-ffi`),
//! emulated RDMA verbs objects, and clocks with offset and drift.
//!
//! Nothing is implemented yet: the fabric-backend issues land it. The lossy, delaying
//! in-process network used for simulation today is `weft_transport`'s `mem` backend.
