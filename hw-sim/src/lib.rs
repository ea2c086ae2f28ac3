//! `hw-sim`: software models of fabric hardware, so that CI (which has none) exercises the
//! hardware-only paths of weft.
//!
//! - [`vortex`]: a Data Vortex switch with synchronized, totally ordered delivery at global
//!   barriers, positive acknowledgement and switch-stamped source ids, usable in one
//!   process or across processes, and exported through the C API of
//!   `ffi/include/dv_api.h` (this crate is also built as a `cdylib` and a `staticlib`).
//!
//! - [`clock`]: clocks with an offset and a drift against a shared, hand-advanced true time,
//!   for synchronized-clock fabrics (PTP).
//!
//! - [`verbs`]: emulated RDMA verbs (protection domains, memory regions with keys and
//!   bounds, RC queue pairs, completion queues, one-sided writes with immediate data).
//!
//! The lossy, delaying in-process network used for simulation is `weft_transport`'s `mem`
//! backend.

pub mod clock;
pub mod verbs;
pub mod vortex;
