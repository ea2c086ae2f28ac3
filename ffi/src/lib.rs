//! `dv-ffi`: the Data Vortex C API that weft targets.
//!
//! This crate will hold `include/dv_api.h` (the API weft needs from a Data Vortex
//! interconnect, written as a vendor header would be), the bindgen-generated raw bindings,
//! and a small safe wrapper. It will link the `hw-sim` emulator by default and a vendor
//! library when one is configured.
//!
//! Nothing is implemented yet: the Data Vortex issue lands it.
